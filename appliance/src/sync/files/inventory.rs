//! What a site's Moodle references: every content hash in its `files` table, with what the rows say
//! about it (size, component, file area, mime type, when the first was created).

use std::collections::HashSet;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::sql::Target;
use crate::sync::files::hash::{ContentHash, EMPTY};
use crate::sync::files::priority::Meta;

/// A blob some `files` row references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referenced {
    pub hash: ContentHash,
    pub size: u64,
    pub meta: Meta,
    /// Unix time the oldest row referencing it was created: how long the file has been wanted.
    pub since: u64,
}

fn files_table(target: &Target) -> String {
    format!("`{}`.`{}files`", target.database, target.prefix)
}

/// One entry per referenced hash, except the empty file's (Moodle needs no blob for it). Rows whose
/// hash is not in Moodle's form are skipped: no file name is ever made from one.
pub fn referenced(conn: &mut impl Queryable, target: &Target) -> Result<Vec<Referenced>> {
    let sql = format!(
        "SELECT contenthash, MAX(filesize), MIN(component), MIN(filearea), \
                MIN(COALESCE(mimetype, '')), MIN(timecreated) \
         FROM {} GROUP BY contenthash",
        files_table(target)
    );
    let mut out = Vec::new();
    let rows = conn
        .query_iter(sql)
        .context("cannot read Moodle's files table")?;
    for row in rows {
        let row = row.context("cannot read Moodle's files table")?;
        let (hash, size, component, filearea, mimetype, since): (
            String,
            Option<i64>,
            String,
            String,
            String,
            Option<i64>,
        ) = mysql::from_row_opt(row).context("an unexpected row in Moodle's files table")?;
        let Ok(hash) = ContentHash::parse(&hash) else {
            continue;
        };
        if hash == EMPTY {
            continue;
        }
        out.push(Referenced {
            hash,
            size: size.unwrap_or(0).max(0) as u64,
            meta: Meta {
                component,
                filearea,
                mimetype,
            },
            since: since.unwrap_or(0).max(0) as u64,
        });
    }
    Ok(out)
}

/// The referenced hashes alone (for the trash sweep).
pub fn referenced_hashes(
    conn: &mut impl Queryable,
    target: &Target,
) -> Result<HashSet<ContentHash>> {
    Ok(referenced(conn, target)?
        .into_iter()
        .map(|r| r.hash)
        .collect())
}

/// Whether any `files` row references `hash` (the hub takes uploads of referenced blobs only, so a
/// center cannot fill its disk with anything else).
pub fn is_referenced(
    conn: &mut impl Queryable,
    target: &Target,
    hash: &ContentHash,
) -> Result<bool> {
    let found: Option<u8> = conn
        .exec_first(
            format!(
                "SELECT 1 FROM {} WHERE contenthash = ? LIMIT 1",
                files_table(target)
            ),
            (hash.hex(),),
        )
        .context("cannot read Moodle's files table")?;
    Ok(found.is_some())
}
