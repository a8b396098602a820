//! The sync engine's own bookkeeping, in its own database beside Moodle's on the same MariaDB, so that a
//! batch of Moodle rows and the watermark saying it was applied commit in one transaction.

use std::collections::HashMap;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::change::{Change, Value};
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::merge::RowClock;
use crate::sync::engine::sql::{placeholders, table_and_ids, IN_LIST};

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
    // Deleted rows: delete wins over any concurrent update while the tombstone is kept. The row's birth
    // stamp is kept too: a row the hub restores (a refused delete) is born again with it.
    "CREATE TABLE IF NOT EXISTS kituo_sync.tombstone (
        tbl VARCHAR(64) NOT NULL,
        row_id BIGINT NOT NULL,
        hlc BIGINT UNSIGNED NOT NULL,
        site INT UNSIGNED NOT NULL,
        deleted_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        born_hlc BIGINT UNSIGNED NOT NULL DEFAULT 0,
        born_site INT UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (tbl, row_id)
    ) ENGINE=InnoDB",
    // Sites that created the table before it kept birth stamps.
    "ALTER TABLE kituo_sync.tombstone
        ADD COLUMN IF NOT EXISTS born_hlc BIGINT UNSIGNED NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS born_site INT UNSIGNED NOT NULL DEFAULT 0",
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
        at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        KEY origin (origin, id)
    ) ENGINE=InnoDB",
    // The report reads the latest refusals per center.
    "ALTER TABLE kituo_sync.rejected ADD INDEX IF NOT EXISTS origin (origin, id)",
    // Hub only: the centers, their shared secrets, and how far each has pulled the log (what may be
    // pruned).
    "CREATE TABLE IF NOT EXISTS kituo_sync.centers (
        site INT UNSIGNED NOT NULL PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        secret VARBINARY(64) NOT NULL,
        pulled BIGINT UNSIGNED NOT NULL DEFAULT 0
    ) ENGINE=InnoDB",
    "ALTER TABLE kituo_sync.centers ADD COLUMN IF NOT EXISTS pulled BIGINT UNSIGNED NOT NULL DEFAULT 0",
    // Every stick exported or imported here, for the status page (see `stick::history`). The tables
    // keep the first version's names (`bundle`): a card rolled back by an update must find them.
    "CREATE TABLE IF NOT EXISTS kituo_sync.bundles (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        direction VARCHAR(8) NOT NULL,
        peer VARCHAR(16) NOT NULL,
        bundle VARCHAR(64) NOT NULL,
        volumes INT UNSIGNED NOT NULL,
        bytes BIGINT UNSIGNED NOT NULL,
        changes BIGINT UNSIGNED NOT NULL,
        blobs BIGINT UNSIGNED NOT NULL,
        ok TINYINT NOT NULL,
        result VARCHAR(1000) NOT NULL
    ) ENGINE=InnoDB",
    // Hub only: the blobs a stick-only center said it lacks (its next stick from the hub carries
    // them), and the center's blobs the hub took from its sticks (the next stick says so, and the
    // center stops exporting them).
    "CREATE TABLE IF NOT EXISTS kituo_sync.bundle_wants (
        center INT UNSIGNED NOT NULL,
        hash BINARY(20) NOT NULL,
        PRIMARY KEY (center, hash)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS kituo_sync.bundle_held (
        center INT UNSIGNED NOT NULL,
        hash BINARY(20) NOT NULL,
        PRIMARY KEY (center, hash)
    ) ENGINE=InnoDB",
    // Hub only: the parts of a center's batch too large for one request, one batch per center, until
    // it is whole (see `exchange::parts`).
    "CREATE TABLE IF NOT EXISTS kituo_sync.parts (
        site INT UNSIGNED NOT NULL,
        digest BINARY(32) NOT NULL,
        total INT UNSIGNED NOT NULL,
        idx INT UNSIGNED NOT NULL,
        data LONGBLOB NOT NULL,
        PRIMARY KEY (site, idx)
    ) ENGINE=InnoDB",
    // Names two rows shared, and how sync told them apart (see `clash`).
    crate::sync::engine::clash::TABLE,
    // Hub only: centers' batches stored as they came, until applied (see `inbox`).
    "CREATE TABLE IF NOT EXISTS kituo_sync.inbox (
        origin INT UNSIGNED NOT NULL,
        last_seq BIGINT UNSIGNED NOT NULL,
        data LONGBLOB NOT NULL,
        error VARCHAR(1000) NULL,
        failed_at TIMESTAMP NULL,
        PRIMARY KEY (origin, last_seq)
    ) ENGINE=InnoDB",
];

/// Whether `e` came from the database (whose connection may be dead) rather than from the data.
pub fn is_database_error(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<mysql::Error>().is_some())
}

/// Whether `e` is the connection failing (the server gone or restarting), not the server refusing one
/// statement: the first is everybody's trouble, the second one batch's.
pub fn is_connection_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<mysql::Error>(),
            Some(
                mysql::Error::IoError(_)
                    | mysql::Error::DriverError(_)
                    | mysql::Error::CodecError(_)
            )
        )
    })
}

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
/// Appends changes to the log in their order, a few hundred per statement (the hub appends whole
/// batches, capture whole transactions).
pub fn append_all(tx: &mut mysql::Transaction<'_>, changes: &[Change]) -> Result<()> {
    let data = changes
        .iter()
        .map(|c| rmp_serde::to_vec(c).context("cannot encode a change for the log"))
        .collect::<Result<Vec<_>>>()?;
    let mut start = 0;
    while start < changes.len() {
        // Statements of at most 200 changes and about 4 MiB, well below MariaDB's max_allowed_packet;
        // a larger change goes alone.
        let mut end = start + 1;
        let mut bytes = data[start].len();
        while end < changes.len() && end - start < 200 && bytes + data[end].len() <= 4 << 20 {
            bytes += data[end].len();
            end += 1;
        }
        append(tx, &changes[start..end], &data[start..end])?;
        start = end;
    }
    Ok(())
}

fn append(tx: &mut mysql::Transaction<'_>, changes: &[Change], data: &[Vec<u8>]) -> Result<()> {
    let mut params: Vec<mysql::Value> = Vec::with_capacity(changes.len() * 6);
    for (change, data) in changes.iter().zip(data) {
        params.extend([
            change.origin.into(),
            change.seq.into(),
            change.hlc.into(),
            change.table.as_str().into(),
            change.id.into(),
            data.as_slice().into(),
        ]);
    }
    let rows = vec!["(?, ?, ?, ?, ?, ?)"; changes.len()].join(", ");
    tx.exec_drop(
        format!("INSERT INTO kituo_sync.log (origin, seq, hlc, tbl, row_id, data) VALUES {rows}"),
        params,
    )
    .with_context(|| {
        format!(
            "cannot log changes {}#{}..",
            changes[0].origin, changes[0].seq
        )
    })
}

/// How many of the logged changes of `sizes` (in log order) one batch or page takes: as many as fit in
/// `max_bytes`, and at least one however large (a larger one travels in parts).
pub fn fitting(sizes: impl IntoIterator<Item = usize>, max_bytes: usize) -> usize {
    let mut bytes = 0;
    let mut taken = 0;
    for size in sizes {
        if taken > 0 && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        taken += 1;
    }
    taken
}

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

/// Decodes a change stored by [`append_all`].
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

/// A deleted row's tombstone: when it was deleted, and when it had been born.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grave {
    pub deleted: Stamp,
    pub born: Stamp,
}

pub fn grave(conn: &mut impl Queryable, table: &str, id: i64) -> Result<Option<Grave>> {
    let row: Option<(u64, u32, u64, u32)> = conn
        .exec_first(
            "SELECT hlc, site, born_hlc, born_site FROM kituo_sync.tombstone WHERE tbl = ? AND row_id = ?",
            (table, id),
        )
        .context("cannot read tombstones")?;
    Ok(row.map(|(hlc, site, born_hlc, born_site)| Grave {
        deleted: Stamp::new(hlc, site),
        born: Stamp::new(born_hlc, born_site),
    }))
}

/// Buries a row, keeping the birth stamp its clock holds (or the origin, without one).
pub fn bury(conn: &mut impl Queryable, table: &str, id: i64, stamp: Stamp) -> Result<()> {
    let born: Option<(u64, u32)> = conn
        .exec_first(
            "SELECT born_hlc, born_site FROM kituo_sync.clock WHERE tbl = ? AND row_id = ?",
            (table, id),
        )
        .context("cannot read a row clock")?;
    let born = born.map_or(Stamp::ORIGIN, |(hlc, site)| Stamp::new(hlc, site));
    bury_born(conn, table, id, stamp, born)
}

/// Buries a row whose birth stamp the caller knows (its clock may not be written yet).
pub fn bury_born(
    conn: &mut impl Queryable,
    table: &str,
    id: i64,
    stamp: Stamp,
    born: Stamp,
) -> Result<()> {
    // The first delete is the one every site keeps (site before hlc: both read the old values).
    conn.exec_drop(
        "INSERT INTO kituo_sync.tombstone (tbl, row_id, hlc, site, born_hlc, born_site)
         VALUES (?, ?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE
             site = IF((VALUES(hlc), VALUES(site)) < (hlc, site), VALUES(site), site),
             hlc = LEAST(hlc, VALUES(hlc))",
        (table, id, stamp.hlc, stamp.site, born.hlc, born.site),
    )
    .context("cannot write a tombstone")?;
    drop_clock(conn, table, id)
}

/// Lifts a tombstone: the hub restored the row.
pub fn unbury(conn: &mut impl Queryable, table: &str, id: i64) -> Result<()> {
    conn.exec_drop(
        "DELETE FROM kituo_sync.tombstone WHERE tbl = ? AND row_id = ?",
        (table, id),
    )
    .context("cannot lift a tombstone")
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

/// The tables that parked values wait for.
pub fn parked_tables(conn: &mut impl Queryable) -> Result<Vec<String>> {
    conn.query("SELECT DISTINCT tbl FROM kituo_sync.parked ORDER BY tbl")
        .context("cannot list parked values")
}

/// The tables that deferred changes wait for.
pub fn deferred_tables(conn: &mut impl Queryable) -> Result<Vec<String>> {
    conn.query("SELECT DISTINCT tbl FROM kituo_sync.deferred ORDER BY tbl")
        .context("cannot list deferred changes")
}

/// A column value kept for a column this site did not have, with the stamp of the write.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub table: String,
    pub id: i64,
    pub column: String,
    pub stamp: Stamp,
    pub value: Value,
}

/// Up to `max` parked values of `table` for the given columns, by row.
pub fn parked(
    conn: &mut impl Queryable,
    table: &str,
    columns: &[String],
    max: usize,
) -> Result<Vec<Parked>> {
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let mut params: Vec<mysql::Value> = vec![table.into()];
    params.extend(columns.iter().map(|c| mysql::Value::from(c.as_str())));
    params.push((max as u64).into());
    let rows: Vec<(i64, String, u64, u32, Vec<u8>)> = conn
        .exec(
            format!(
                "SELECT row_id, col, hlc, site, value FROM kituo_sync.parked
                 WHERE tbl = ? AND col IN ({}) ORDER BY row_id, col LIMIT ?",
                vec!["?"; columns.len()].join(", ")
            ),
            params,
        )
        .with_context(|| format!("cannot read the parked values of {table}"))?;
    rows.into_iter()
        .map(|(id, column, hlc, site, value)| {
            Ok(Parked {
                table: table.to_owned(),
                id,
                column,
                stamp: Stamp::new(hlc, site),
                value: rmp_serde::from_slice(&value).context("a parked value does not decode")?,
            })
        })
        .collect()
}

pub fn unpark(conn: &mut impl Queryable, table: &str, id: i64, column: &str) -> Result<()> {
    conn.exec_drop(
        "DELETE FROM kituo_sync.parked WHERE tbl = ? AND row_id = ? AND col = ?",
        (table, id, column),
    )
    .context("cannot remove a parked value")
}

/// Forgets parked values that a write stamped `stamp` to the same column has made obsolete.
pub fn unpark_older(
    conn: &mut impl Queryable,
    table: &str,
    id: i64,
    column: &str,
    stamp: Stamp,
) -> Result<()> {
    conn.exec_drop(
        "DELETE FROM kituo_sync.parked
         WHERE tbl = ? AND row_id = ? AND col = ? AND (hlc, site) <= (?, ?)",
        (table, id, column, stamp.hlc, stamp.site),
    )
    .context("cannot remove a parked value")
}

/// Up to `max` deferred changes for `tables` kept after key `after`, oldest first, with their keys.
pub fn deferred(
    conn: &mut impl Queryable,
    tables: &[String],
    after: u64,
    max: usize,
) -> Result<Vec<(u64, Change)>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let mut params: Vec<mysql::Value> = tables.iter().map(|t| t.as_str().into()).collect();
    params.push(after.into());
    params.push((max as u64).into());
    let rows: Vec<(u64, Vec<u8>)> = conn
        .exec(
            format!(
                "SELECT id, data FROM kituo_sync.deferred WHERE tbl IN ({}) AND id > ?
                 ORDER BY id LIMIT ?",
                vec!["?"; tables.len()].join(", ")
            ),
            params,
        )
        .context("cannot read deferred changes")?;
    rows.into_iter()
        .map(|(key, data)| {
            let change =
                rmp_serde::from_slice(&data).context("a deferred change does not decode")?;
            Ok((key, change))
        })
        .collect()
}

/// The key the next deferred change will be kept under is above this one.
pub fn last_deferred(conn: &mut impl Queryable) -> Result<u64> {
    let top: Option<Option<u64>> = conn
        .query_first("SELECT MAX(id) FROM kituo_sync.deferred")
        .context("cannot read deferred changes")?;
    Ok(top.flatten().unwrap_or(0))
}

pub fn undefer(conn: &mut impl Queryable, keys: &[u64]) -> Result<()> {
    for chunk in keys.chunks(500) {
        conn.exec_drop(
            format!(
                "DELETE FROM kituo_sync.deferred WHERE id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            ),
            chunk.to_vec(),
        )
        .context("cannot remove replayed deferred changes")?;
    }
    Ok(())
}

/// Parked values and deferred changes kept here.
pub fn waiting(conn: &mut impl Queryable) -> Result<u64> {
    let n: Option<u64> = conn
        .query_first(
            "SELECT (SELECT COUNT(*) FROM kituo_sync.parked) + (SELECT COUNT(*) FROM kituo_sync.deferred)",
        )
        .context("cannot count parked values and deferred changes")?;
    Ok(n.unwrap_or(0))
}

/// The row clocks of `ids` in `table` that exist, a few hundred per query.
pub fn read_clocks_of(
    tx: &mut impl Queryable,
    table: &str,
    ids: &[i64],
) -> Result<HashMap<i64, RowClock>> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(IN_LIST) {
        let rows: Vec<(i64, u64, u32, Vec<u8>)> = tx
            .exec(
                format!(
                    "SELECT row_id, born_hlc, born_site, cols FROM kituo_sync.clock
                     WHERE tbl = ? AND row_id IN ({})",
                    placeholders(chunk.len())
                ),
                table_and_ids(table, chunk),
            )
            .context("cannot read row clocks")?;
        for (id, hlc, site, cols) in rows {
            found.insert(id, RowClock::decode(Stamp::new(hlc, site), &cols)?);
        }
    }
    Ok(found)
}

pub fn read_clock(tx: &mut impl Queryable, table: &str, id: i64) -> Result<Option<RowClock>> {
    let row: Option<(u64, u32, Vec<u8>)> = tx
        .exec_first(
            "SELECT born_hlc, born_site, cols FROM kituo_sync.clock WHERE tbl = ? AND row_id = ?",
            (table, id),
        )
        .context("cannot read a row clock")?;
    row.map(|(hlc, site, cols)| RowClock::decode(Stamp::new(hlc, site), &cols))
        .transpose()
}

/// Writes many row clocks, a few hundred per statement, in the order given (sorted by the caller
/// where two writers could lock them in another order).
pub fn write_clocks(tx: &mut impl Queryable, clocks: &[(&str, i64, &RowClock)]) -> Result<()> {
    for chunk in clocks.chunks(IN_LIST) {
        let mut params: Vec<mysql::Value> = Vec::with_capacity(chunk.len() * 5);
        for (table, id, clock) in chunk {
            params.extend([
                (*table).into(),
                mysql::Value::Int(*id),
                clock.born.hlc.into(),
                clock.born.site.into(),
                clock.encode_cols()?.into(),
            ]);
        }
        tx.exec_drop(
            format!(
                "INSERT INTO kituo_sync.clock (tbl, row_id, born_hlc, born_site, cols) VALUES {}
                 ON DUPLICATE KEY UPDATE born_hlc = VALUES(born_hlc), born_site = VALUES(born_site),
                                         cols = VALUES(cols)",
                vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            ),
            params,
        )
        .context("cannot write row clocks")?;
    }
    Ok(())
}

/// Drops the clocks and tombstones of rows of `table`, a few hundred per statement.
pub fn forget_rows(tx: &mut impl Queryable, table: &str, ids: &[i64]) -> Result<()> {
    for chunk in ids.chunks(IN_LIST) {
        for what in ["clock", "tombstone"] {
            tx.exec_drop(
                format!(
                    "DELETE FROM kituo_sync.{what} WHERE tbl = ? AND row_id IN ({})",
                    placeholders(chunk.len())
                ),
                table_and_ids(table, chunk),
            )
            .with_context(|| format!("cannot drop the {what}s of rows of {table}"))?;
        }
    }
    Ok(())
}

pub fn write_clock(tx: &mut impl Queryable, table: &str, id: i64, clock: &RowClock) -> Result<()> {
    write_clocks(tx, &[(table, id, clock)])
}
