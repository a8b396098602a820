//! The sync engine's own bookkeeping, in its own database beside Moodle's on the same MariaDB, so that a
//! batch of Moodle rows and the watermark saying it was applied commit in one transaction.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use super::change::{Change, Value};
use super::hlc::Stamp;

/// The database that holds the bookkeeping. Its own changes are never captured.
pub const DB: &str = "kituo_sync";

const TABLES: &[&str] = &[
    // Named values: capture position, clock, sequence counters, cursors.
    "CREATE TABLE IF NOT EXISTS kituo_sync.state (
        name VARCHAR(64) NOT NULL PRIMARY KEY,
        value VARCHAR(255) NOT NULL
    ) ENGINE=InnoDB",
    // Changes made here (a center's outbox) or, at the hub, every accepted change in relay order.
    // `lseq` is only ever allocated under the hub's log lock, so its order is commit order.
    "CREATE TABLE IF NOT EXISTS kituo_sync.log (
        lseq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        origin INT UNSIGNED NOT NULL,
        seq BIGINT UNSIGNED NOT NULL,
        hlc BIGINT UNSIGNED NOT NULL,
        tbl VARCHAR(64) NOT NULL,
        row_id BIGINT NOT NULL,
        data LONGBLOB NOT NULL,
        UNIQUE KEY origin_seq (origin, seq)
    ) ENGINE=InnoDB",
    // Per origin, the last change applied here: what makes a replayed batch a no-op.
    "CREATE TABLE IF NOT EXISTS kituo_sync.applied (
        origin INT UNSIGNED NOT NULL PRIMARY KEY,
        seq BIGINT UNSIGNED NOT NULL
    ) ENGINE=InnoDB",
    // Who wrote each column last, for rows of two-way tables that sync has touched.
    "CREATE TABLE IF NOT EXISTS kituo_sync.clock (
        tbl VARCHAR(64) NOT NULL,
        row_id BIGINT NOT NULL,
        born_hlc BIGINT UNSIGNED NOT NULL,
        born_site INT UNSIGNED NOT NULL,
        cols BLOB NOT NULL,
        PRIMARY KEY (tbl, row_id)
    ) ENGINE=InnoDB",
    // Deleted rows: delete wins over any concurrent update while the tombstone is kept.
    "CREATE TABLE IF NOT EXISTS kituo_sync.tombstone (
        tbl VARCHAR(64) NOT NULL,
        row_id BIGINT NOT NULL,
        hlc BIGINT UNSIGNED NOT NULL,
        site INT UNSIGNED NOT NULL,
        deleted_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (tbl, row_id)
    ) ENGINE=InnoDB",
    // Ids that lost a unique-key clash, and the id that won: later changes naming the loser are
    // redirected.
    "CREATE TABLE IF NOT EXISTS kituo_sync.alias (
        tbl VARCHAR(64) NOT NULL,
        loser BIGINT NOT NULL,
        winner BIGINT NOT NULL,
        PRIMARY KEY (tbl, loser)
    ) ENGINE=InnoDB",
    // Column values for columns this site does not have yet (the sender's Moodle was upgraded first).
    "CREATE TABLE IF NOT EXISTS kituo_sync.parked (
        tbl VARCHAR(64) NOT NULL,
        row_id BIGINT NOT NULL,
        col VARCHAR(64) NOT NULL,
        hlc BIGINT UNSIGNED NOT NULL,
        site INT UNSIGNED NOT NULL,
        value LONGBLOB NOT NULL,
        PRIMARY KEY (tbl, row_id, col)
    ) ENGINE=InnoDB",
    // Whole changes for tables this site does not have yet.
    "CREATE TABLE IF NOT EXISTS kituo_sync.deferred (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        tbl VARCHAR(64) NOT NULL,
        data LONGBLOB NOT NULL,
        KEY tbl (tbl)
    ) ENGINE=InnoDB",
    // Changes the hub refused, kept for the report.
    "CREATE TABLE IF NOT EXISTS kituo_sync.rejected (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        origin INT UNSIGNED NOT NULL,
        seq BIGINT UNSIGNED NOT NULL,
        tbl VARCHAR(64) NOT NULL,
        row_id BIGINT NOT NULL,
        reason VARCHAR(255) NOT NULL,
        at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
    ) ENGINE=InnoDB",
    // Hub only: the centers, their shared secrets, and how far each has pulled the log (what may be
    // pruned).
    "CREATE TABLE IF NOT EXISTS kituo_sync.centers (
        site INT UNSIGNED NOT NULL PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        secret VARBINARY(64) NOT NULL,
        pulled BIGINT UNSIGNED NOT NULL DEFAULT 0
    ) ENGINE=InnoDB",
    "ALTER TABLE kituo_sync.centers ADD COLUMN IF NOT EXISTS pulled BIGINT UNSIGNED NOT NULL DEFAULT 0",
];

/// Creates the bookkeeping database if needed; safe to run on every start.
pub fn init(conn: &mut impl Queryable) -> Result<()> {
    conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {DB}"))
        .context("cannot create the sync database")?;
    for sql in TABLES {
        conn.query_drop(*sql)
            .with_context(|| format!("cannot create sync table: {}", first_line(sql)))?;
    }
    conn.query_drop("INSERT IGNORE INTO kituo_sync.state (name, value) VALUES ('log_lock', '')")
        .context("cannot create the log lock")
}

/// Serialises every transaction that appends to the log, until it commits (see `site`).
pub fn lock_log(conn: &mut impl Queryable) -> Result<()> {
    conn.query_drop("SELECT value FROM kituo_sync.state WHERE name = 'log_lock' FOR UPDATE")
        .context("cannot take the log lock")
}

fn first_line(sql: &str) -> &str {
    sql.lines().next().unwrap_or(sql)
}

pub fn get(conn: &mut impl Queryable, name: &str) -> Result<Option<String>> {
    conn.exec_first("SELECT value FROM kituo_sync.state WHERE name = ?", (name,))
        .with_context(|| format!("cannot read sync state {name}"))
}

pub fn get_u64(conn: &mut impl Queryable, name: &str) -> Result<u64> {
    match get(conn, name)? {
        None => Ok(0),
        Some(v) => v
            .parse()
            .with_context(|| format!("sync state {name} is not a number: {v:?}")),
    }
}

pub fn set(conn: &mut impl Queryable, name: &str, value: &str) -> Result<()> {
    conn.exec_drop(
        "INSERT INTO kituo_sync.state (name, value) VALUES (?, ?)
         ON DUPLICATE KEY UPDATE value = VALUES(value)",
        (name, value),
    )
    .with_context(|| format!("cannot write sync state {name}"))
}

/// The last change from `origin` applied here.
pub fn applied(conn: &mut impl Queryable, origin: u32) -> Result<u64> {
    let seq: Option<u64> = conn
        .exec_first(
            "SELECT seq FROM kituo_sync.applied WHERE origin = ?",
            (origin,),
        )
        .context("cannot read the applied watermark")?;
    Ok(seq.unwrap_or(0))
}

pub fn set_applied(conn: &mut impl Queryable, origin: u32, seq: u64) -> Result<()> {
    conn.exec_drop(
        "INSERT INTO kituo_sync.applied (origin, seq) VALUES (?, ?)
         ON DUPLICATE KEY UPDATE seq = GREATEST(seq, VALUES(seq))",
        (origin, seq),
    )
    .context("cannot write the applied watermark")
}

/// Appends a change to the log; returns its log sequence number.
pub fn append(tx: &mut mysql::Transaction<'_>, change: &Change) -> Result<u64> {
    let data = rmp_serde::to_vec(change).context("cannot encode a change for the log")?;
    tx.exec_drop(
        "INSERT INTO kituo_sync.log (origin, seq, hlc, tbl, row_id, data) VALUES (?, ?, ?, ?, ?, ?)",
        (
            change.origin,
            change.seq,
            change.hlc,
            &change.table,
            change.id,
            data,
        ),
    )
    .with_context(|| {
        format!(
            "cannot log change {}#{} ({} {})",
            change.origin, change.seq, change.table, change.id
        )
    })?;
    tx.last_insert_id()
        .context("the log did not return its sequence number")
}

/// Decodes a change stored by [`append`].
/// Deletes log rows matching `filter` (a condition on `lseq`, `origin`, `seq` with `args`), a slice at
/// a time so that no transaction grows large; returns how many went.
pub fn prune_log(
    conn: &mut mysql::Conn,
    filter: &str,
    args: impl Into<mysql::Params> + Clone,
) -> Result<u64> {
    let sql = format!("DELETE FROM kituo_sync.log WHERE {filter} LIMIT 10000");
    let mut total = 0;
    loop {
        conn.exec_drop(&sql, args.clone())
            .context("cannot prune the log")?;
        let n = conn.affected_rows();
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}

pub fn decode_logged(data: &[u8]) -> Result<Change> {
    rmp_serde::from_slice(data).context("a logged change does not decode")
}

/// The tombstone of a row, if it was deleted.
pub fn tombstone(conn: &mut impl Queryable, table: &str, id: i64) -> Result<Option<Stamp>> {
    let row: Option<(u64, u32)> = conn
        .exec_first(
            "SELECT hlc, site FROM kituo_sync.tombstone WHERE tbl = ? AND row_id = ?",
            (table, id),
        )
        .context("cannot read tombstones")?;
    Ok(row.map(|(hlc, site)| Stamp::new(hlc, site)))
}

pub fn bury(conn: &mut impl Queryable, table: &str, id: i64, stamp: Stamp) -> Result<()> {
    conn.exec_drop(
        "INSERT INTO kituo_sync.tombstone (tbl, row_id, hlc, site) VALUES (?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE hlc = LEAST(hlc, VALUES(hlc))",
        (table, id, stamp.hlc, stamp.site),
    )
    .context("cannot write a tombstone")?;
    drop_clock(conn, table, id)
}

/// Drops tombstones older than `days`; a change for such a row arriving later would be applied.
pub fn prune_tombstones(conn: &mut mysql::Conn, days: u32) -> Result<u64> {
    conn.exec_drop(
        "DELETE FROM kituo_sync.tombstone WHERE deleted_at < NOW() - INTERVAL ? DAY",
        (days,),
    )
    .context("cannot prune tombstones")?;
    Ok(conn.affected_rows())
}

pub fn drop_clock(conn: &mut impl Queryable, table: &str, id: i64) -> Result<()> {
    conn.exec_drop(
        "DELETE FROM kituo_sync.clock WHERE tbl = ? AND row_id = ?",
        (table, id),
    )
    .context("cannot drop a row clock")
}

pub fn add_alias(conn: &mut impl Queryable, table: &str, loser: i64, winner: i64) -> Result<()> {
    // An alias of a loser's loser points straight at the final winner.
    conn.exec_drop(
        "UPDATE kituo_sync.alias SET winner = ? WHERE tbl = ? AND winner = ?",
        (winner, table, loser),
    )
    .context("cannot update aliases")?;
    conn.exec_drop(
        "INSERT INTO kituo_sync.alias (tbl, loser, winner) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE winner = VALUES(winner)",
        (table, loser, winner),
    )
    .context("cannot record an alias")
}

/// Keeps the value of a column this site does not have yet (replayed when the column appears).
pub fn park(
    conn: &mut impl Queryable,
    table: &str,
    id: i64,
    column: &str,
    stamp: Stamp,
    value: &Value,
) -> Result<()> {
    let value = rmp_serde::to_vec(value).context("cannot encode a parked value")?;
    conn.exec_drop(
        "INSERT INTO kituo_sync.parked (tbl, row_id, col, hlc, site, value) VALUES (?, ?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE
             value = IF((VALUES(hlc), VALUES(site)) > (hlc, site), VALUES(value), value),
             site = IF((VALUES(hlc), VALUES(site)) > (hlc, site), VALUES(site), site),
             hlc = GREATEST(hlc, VALUES(hlc))",
        (table, id, column, stamp.hlc, stamp.site, value),
    )
    .context("cannot park a column value")
}

/// Keeps a change for a table this site does not have yet.
pub fn defer(conn: &mut impl Queryable, change: &Change) -> Result<()> {
    let data = rmp_serde::to_vec(change).context("cannot encode a deferred change")?;
    conn.exec_drop(
        "INSERT INTO kituo_sync.deferred (tbl, data) VALUES (?, ?)",
        (&change.table, data),
    )
    .context("cannot defer a change")
}
