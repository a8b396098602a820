//! The names sync found shared by two people or things, and how it told them apart: kept at every site
//! that settled one, for its status page, and at the hub for the notifications it sends.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};

/// One settled clash: row `renamed` of `table` had the name row `kept` has, and is now called `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clash {
    pub table: String,
    pub column: String,
    pub kept: i64,
    pub renamed: i64,
    pub old: String,
    pub new: String,
    /// The site the renamed row was made at (its suffix).
    pub site: u32,
    /// When this site settled it, in Unix seconds (0 while being recorded).
    pub at: u64,
}

pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS kituo_sync.clash (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        tbl VARCHAR(64) NOT NULL,
        col VARCHAR(64) NOT NULL,
        kept BIGINT NOT NULL,
        renamed BIGINT NOT NULL,
        old VARCHAR(1000) NOT NULL,
        new VARCHAR(1000) NOT NULL,
        site INT UNSIGNED NOT NULL,
        at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        notified TINYINT NOT NULL DEFAULT 0,
        KEY notified (notified)
    ) ENGINE=InnoDB";

pub fn record(tx: &mut impl Queryable, clash: &Clash) -> Result<()> {
    tx.exec_drop(
        "INSERT INTO kituo_sync.clash (tbl, col, kept, renamed, old, new, site)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            &clash.table,
            &clash.column,
            clash.kept,
            clash.renamed,
            &clash.old,
            &clash.new,
            clash.site,
        ),
    )
    .context("cannot record a name clash")
}

/// The newest `n` clashes settled here, newest first.
pub fn recent(conn: &mut impl Queryable, n: usize) -> Result<Vec<Clash>> {
    let sql = format!("SELECT {COLUMNS} FROM kituo_sync.clash ORDER BY id DESC LIMIT {n}");
    Ok(read(conn, &sql)?.into_iter().map(|(_, c)| c).collect())
}

/// The clashes nobody has been told of yet, oldest first, with their record ids; locked until the
/// caller's transaction ends.
pub fn untold(conn: &mut impl Queryable) -> Result<Vec<(u64, Clash)>> {
    let sql =
        format!("SELECT {COLUMNS} FROM kituo_sync.clash WHERE notified = 0 ORDER BY id FOR UPDATE");
    read(conn, &sql)
}

pub fn mark_told(conn: &mut impl Queryable, id: u64) -> Result<()> {
    conn.exec_drop(
        "UPDATE kituo_sync.clash SET notified = 1 WHERE id = ?",
        (id,),
    )
    .context("cannot mark a clash notified")
}

const COLUMNS: &str = "id, tbl, col, kept, renamed, old, new, site, UNIX_TIMESTAMP(at)";

/// A row of [`COLUMNS`].
type Stored = (u64, String, String, i64, i64, String, String, u32, u64);

fn read(conn: &mut impl Queryable, sql: &str) -> Result<Vec<(u64, Clash)>> {
    let rows: Vec<Stored> = conn.query(sql).context("cannot read the name clashes")?;
    Ok(rows
        .into_iter()
        .map(|(id, table, column, kept, renamed, old, new, site, at)| {
            let clash = Clash {
                table,
                column,
                kept,
                renamed,
                old,
                new,
                site,
                at,
            };
            (id, clash)
        })
        .collect())
}
