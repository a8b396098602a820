//! Every stick exported or imported at a site, kept in `kituo_sync.bundles` (the command and the
//! agent are different processes; the database is what both reach), shown on the status page.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

pub use crate::status::StickRecord;

/// Records one export or import. `result` is cut to the column's width.
pub fn record(conn: &mut impl Queryable, r: &StickRecord) -> Result<()> {
    let result: String = r.result.chars().take(1000).collect();
    conn.exec_drop(
        "INSERT INTO kituo_sync.bundles
             (direction, peer, bundle, volumes, bytes, changes, blobs, ok, result)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            &r.direction,
            &r.peer,
            &r.stick,
            r.volumes,
            r.bytes,
            r.changes,
            r.blobs,
            r.ok,
            result,
        ),
    )
    .context("cannot record the stick in kituo_sync.bundles")
}

/// The newest `n` records, newest first.
pub fn recent(conn: &mut impl Queryable, n: usize) -> Result<Vec<StickRecord>> {
    type Row = (
        u64,
        String,
        String,
        String,
        u32,
        u64,
        u64,
        u64,
        bool,
        String,
    );
    let rows: Vec<Row> = conn
        .exec(
            "SELECT UNIX_TIMESTAMP(at), direction, peer, bundle, volumes, bytes, changes, blobs, ok,
                    result
             FROM kituo_sync.bundles ORDER BY id DESC LIMIT ?",
            (n as u64,),
        )
        .context("cannot read kituo_sync.bundles")?;
    Ok(rows
        .into_iter()
        .map(
            |(at, direction, peer, stick, volumes, bytes, changes, blobs, ok, result)| {
                StickRecord {
                    at,
                    direction,
                    peer,
                    stick,
                    volumes,
                    bytes,
                    changes,
                    blobs,
                    ok,
                    result,
                }
            },
        )
        .collect())
}
