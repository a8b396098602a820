//! The binlog reader: one short replication connection per poll.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use mysql::binlog::events::Event;
use mysql::binlog::BinlogChecksumAlg;
use mysql::prelude::Queryable;
use mysql::{BinlogDumpFlags, BinlogRequest, BinlogStream, Conn, Opts, OptsBuilder};

use crate::sync::engine::capture::group::Assembler;
use crate::sync::engine::capture::server::{
    check_settings, check_start, current_end, CaptureError,
};
use crate::sync::engine::capture::{BinlogPos, CapturedTxn};

/// Reads committed row changes of one database from MariaDB's binlog, as a replica would.
///
/// Each [`BinlogReader::poll`] opens a replication connection, asks for the binlog from the last
/// complete transaction on in non-blocking mode (the server ends the stream when it reaches the end),
/// and returns the complete transactions found. Between polls no connection is held, so the caller
/// can pause or stop at any time.
///
/// Rows written by a session with `SET SESSION skip_replication=1` are not returned: that is how the
/// sync engine applies other sites' changes without capturing them again.
///
/// The MariaDB account needs exactly this (and Moodle's own account nothing extra):
///
/// ```sql
/// CREATE USER 'kituo_capture'@'localhost' IDENTIFIED BY '…';
/// GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'kituo_capture'@'localhost';
/// ```
///
/// REPLICATION SLAVE (alias REPLICATION REPLICA) allows the binlog dump; BINLOG MONITOR (MariaDB 10.5+;
/// REPLICATION CLIENT is its old name and still accepted) allows SHOW MASTER STATUS and SHOW BINARY
/// LOGS. REPLICA MONITOR is not needed: the reader never asks for replica status.
pub struct BinlogReader {
    opts: Opts,
    server_id: u32,
    database: String,
    resume: BinlogPos,
}

/// Used when the caller's options set no read timeout: a non-blocking dump never waits for new
/// events, so a silent server for this long is a hung one.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// MariaDB's slave capability "GTID": without it the server rewrites its GTID events into BEGIN
/// queries and dummy events for an old replica, and the GTIDs are lost.
const MARIA_SLAVE_CAPABILITY_GTID: u8 = 4;

impl BinlogReader {
    /// Connects once to check the server (MariaDB, settings right for capture) and the start position.
    /// `start = None` starts at the current end of the binlog: only later changes are read.
    ///
    /// `reader_server_id` must differ from the server's own id and from every other replica's:
    /// MariaDB drops an older replication connection that uses the same id.
    pub fn new(
        opts: impl Into<Opts>,
        reader_server_id: u32,
        database: &str,
        start: Option<BinlogPos>,
    ) -> Result<BinlogReader> {
        let opts = with_read_timeout(opts.into());
        let mut conn = Conn::new(opts.clone()).context("cannot connect to MariaDB")?;
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .context("cannot ask the server its version")?;
        let version = version.unwrap_or_default();
        if !version.contains("MariaDB") {
            bail!(
                "the server is {version:?}, not MariaDB: sync capture reads MariaDB's binlog only"
            );
        }
        check_settings(&mut conn)?;
        let resume = match start {
            Some(start) => {
                check_start(&mut conn, &start)?;
                start
            }
            None => current_end(&mut conn)?,
        };
        Ok(BinlogReader {
            opts,
            server_id: reader_server_id,
            database: database.to_owned(),
            resume,
        })
    }

    /// Just after the last complete transaction read (including transactions returned nothing for:
    /// other databases, `skip_replication` sessions, DDL), or at the start of the file the stream
    /// rotated to. Storing this after handling a poll's transactions is what resuming needs.
    pub fn position(&self) -> &BinlogPos {
        &self.resume
    }

    /// Reads the complete transactions available now, at most `max_txns` of them (at least one is
    /// asked for even if 0 is given), and moves [`BinlogReader::position`] past them. A transaction
    /// the stream cut in the middle is not returned and the next poll starts before it. On error the
    /// position does not move: the next poll reads the same transactions again.
    pub fn poll(&mut self, max_txns: usize) -> Result<Vec<CapturedTxn>> {
        let max_txns = max_txns.max(1);
        let mut stream = open_stream(&self.opts, self.server_id, &self.resume)?;
        let mut assembler = Assembler::new(&self.database, self.resume.clone());
        let mut txns = Vec::new();
        while txns.len() < max_txns {
            let Some(event) = stream.next() else { break };
            let event = match event {
                Ok(event) => event,
                Err(e) if is_torn_tail(&e) => {
                    // A crash tore the last event of this file: the transaction it belonged to
                    // never committed (crash recovery rolls back what the binlog does not hold
                    // whole), and the restarted server writes on in a new file. Keep what was
                    // read whole, and go on from there.
                    drop(stream);
                    let next = next_file(&self.opts, &assembler.resume().file)?
                        .ok_or_else(|| stream_error(e, assembler.resume()))?;
                    self.resume = BinlogPos { file: next, pos: 4 };
                    return Ok(txns);
                }
                Err(e) => return Err(stream_error(e, assembler.resume())),
            };
            verify_checksum(&event, assembler.resume())?;
            if let Some(txn) = assembler.feed(&event, &stream)? {
                txns.push(txn);
            }
        }
        self.resume = assembler.resume().clone();
        Ok(txns)
    }
}

/// A non-blocking binlog dump from `from`, on a new connection.
fn open_stream(opts: &Opts, server_id: u32, from: &BinlogPos) -> Result<BinlogStream> {
    let mut conn = Conn::new(opts.clone()).context("cannot connect to MariaDB")?;
    check_start(&mut conn, from)?;
    conn.query_drop(format!(
        "SET @mariadb_slave_capability={MARIA_SLAVE_CAPABILITY_GTID}"
    ))
    .context("cannot announce the replica's capabilities")?;
    // COM_BINLOG_DUMP carries a 32-bit offset; MariaDB's binlogs stop at max_binlog_size (1 GiB).
    let pos = u32::try_from(from.pos)
        .with_context(|| format!("binlog offset {from} does not fit 32 bits"))?;
    let request = BinlogRequest::new(server_id)
        .with_filename(from.file.as_bytes())
        .with_pos(pos)
        .with_flags(BinlogDumpFlags::BINLOG_DUMP_NON_BLOCK);
    conn.get_binlog_stream(request)
        .with_context(|| format!("cannot start reading the binlog at {from}"))
}

fn with_read_timeout(opts: Opts) -> Opts {
    if opts.get_read_timeout().is_some() {
        return opts;
    }
    OptsBuilder::from_opts(opts)
        .read_timeout(Some(READ_TIMEOUT))
        .into()
}

/// The dump thread's error for a file that ends inside an event.
fn is_torn_tail(e: &mysql::Error) -> bool {
    matches!(e, mysql::Error::MySqlError(server)
        if server.code == 1236 && server.message.contains("truncated in the middle of event"))
}

/// The binlog file after `file`, if the server has one (it starts a new one on every start).
fn next_file(opts: &Opts, file: &str) -> Result<Option<String>> {
    let mut conn = Conn::new(opts.clone()).context("cannot connect to MariaDB")?;
    let names: Vec<String> = conn
        .query("SHOW BINARY LOGS")
        .context("cannot list the server's binlogs (SHOW BINARY LOGS)")?
        .into_iter()
        .filter_map(|r: mysql::Row| r.get_opt(0)?.ok())
        .collect();
    Ok(names
        .iter()
        .skip_while(|n| n.as_str() != file)
        .nth(1)
        .cloned())
}

/// The server reports a missing binlog (purged while we read, or a hole) as error 1236.
fn stream_error(e: mysql::Error, near: &BinlogPos) -> anyhow::Error {
    if let mysql::Error::MySqlError(ref server) = e {
        if server.code == 1236 && server.message.contains("Could not find first log file") {
            return CaptureError::BinlogPurged {
                file: near.file.clone(),
            }
            .into();
        }
    }
    anyhow::Error::new(e).context(format!("reading the binlog after {near}"))
}

/// `mysql_common` splits the CRC32 off each event but does not compare it: do it here, so a damaged
/// event is an error rather than wrong data.
fn verify_checksum(event: &Event, near: &BinlogPos) -> Result<()> {
    let alg = event.footer().get_checksum_alg();
    match alg {
        Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32)) => {
            if let Some(stored) = event.checksum() {
                let computed = event.calc_checksum(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32);
                if u32::from_le_bytes(stored) != computed {
                    bail!(
                        "binlog event of type {} after {near} fails its CRC32 check",
                        event.header().event_type_raw()
                    );
                }
            }
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => bail!("binlog after {near} uses an unknown checksum ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kituo_testbed::MariaDb;

    /// Feeds the assembler every prefix of a real transaction's events, as a connection cut after
    /// each event would: nothing comes out and the position stays put until the commit is read.
    #[test]
    fn a_stream_cut_inside_a_transaction_returns_nothing_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = MariaDb::start_with(dir.path(), &MariaDb::sync_site_args(1, 1, 1)).unwrap();
        let mut c = Conn::new(db.opts()).unwrap();
        c.query_drop("CREATE DATABASE moodle").unwrap();
        c.query_drop("CREATE TABLE moodle.mdl_config (id BIGINT PRIMARY KEY, value TEXT)")
            .unwrap();
        let start = current_end(&mut c).unwrap();
        c.query_drop("BEGIN").unwrap();
        for id in 1..=3 {
            c.query_drop(format!(
                "INSERT INTO moodle.mdl_config VALUES ({id}, 'v{id}')"
            ))
            .unwrap();
        }
        c.query_drop("COMMIT").unwrap();

        let mut stream = open_stream(&db.opts(), 77, &start).unwrap();
        let events: Vec<Event> = stream.by_ref().map(|e| e.unwrap()).collect();
        let commit = events
            .iter()
            .position(|e| e.header().event_type_raw() == 16)
            .expect("an XID event");
        assert!(commit >= 4, "GTID, TABLE_MAP and rows come before the XID");
        for cut in 0..=commit {
            let mut assembler = Assembler::new("moodle", start.clone());
            for event in &events[..cut] {
                assert_eq!(
                    assembler.feed(event, &stream).unwrap(),
                    None,
                    "cut at {cut}"
                );
            }
            assert_eq!(assembler.resume(), &start, "cut at {cut}");
        }
        let mut assembler = Assembler::new("moodle", start.clone());
        let txns: Vec<CapturedTxn> = events
            .iter()
            .filter_map(|e| assembler.feed(e, &stream).unwrap())
            .collect();
        assert_eq!(txns.len(), 1);
        assert_eq!(txns[0].rows.len(), 3);
        assert_eq!(assembler.resume(), &txns[0].end);
        assert_eq!(txns[0].end, current_end(&mut c).unwrap());
    }
}
