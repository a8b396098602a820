//! Change capture against a real MariaDB started by each test (ROW binlog, full images, column names).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Condvar, Mutex};

use appliance::sync::engine::capture::{
    check_settings, current_end, BinlogPos, BinlogReader, CaptureError, CapturedTxn, RowChange,
};
use appliance::sync::engine::change::{Row, RowKind, Value};
use kituo_tests::testbed::MariaDb;
use mysql::prelude::Queryable;
use mysql::Conn;

/// This site's server id; the reader uses another one, as a replica must.
const SERVER_ID: u32 = 1;
const READER_ID: u32 = 9001;

/// At most this many servers at once: the machine has two cores and other builds.
const MAX_SERVERS: usize = 3;
static SERVERS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct Slot;

impl Slot {
    fn take() -> Slot {
        let (count, freed) = &SERVERS;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_SERVERS {
            n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (count, freed) = &SERVERS;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// A MariaDB with databases `moodle` (captured) and `other`, auto-increment 10 with offset 1 (ids 1,
/// 11, 21…) as a site's image sets it. Fields drop in order: server, then its folder, then the slot.
struct Site {
    db: MariaDb,
    _dir: tempfile::TempDir,
    _slot: Slot,
}

const FORUM_POSTS: &str = "CREATE TABLE mdl_forum_posts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    discussion BIGINT NOT NULL DEFAULT 0,
    userid BIGINT NOT NULL,
    subject VARCHAR(255) NOT NULL,
    message LONGTEXT NOT NULL,
    rating DECIMAL(10,5),
    score DOUBLE,
    ratio FLOAT,
    views INT UNSIGNED NOT NULL,
    big BIGINT UNSIGNED,
    tiny TINYINT NOT NULL,
    attachment LONGBLOB,
    created BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci";

const USER: &str = "CREATE TABLE mdl_user (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(100) NOT NULL,
    deleted TINYINT(1) NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

const LOG: &str = "CREATE TABLE mdl_logstore_standard_log (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    n BIGINT NOT NULL
) ENGINE=InnoDB";

impl Site {
    fn start() -> Site {
        let slot = Slot::take();
        let dir = tempfile::tempdir().expect("temp dir");
        let db = MariaDb::start_with(dir.path(), &MariaDb::sync_site_args(SERVER_ID, 10, 1))
            .expect("MariaDB starts");
        let site = Site {
            db,
            _dir: dir,
            _slot: slot,
        };
        let mut c = Conn::new(site.db.opts()).expect("connect as root");
        for sql in [
            "CREATE DATABASE moodle CHARACTER SET utf8mb4",
            "CREATE DATABASE other",
            "USE moodle",
            FORUM_POSTS,
            USER,
            LOG,
            "CREATE TABLE other.mdl_user LIKE moodle.mdl_user",
        ] {
            c.query_drop(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        site
    }

    /// Root in database `moodle`.
    fn root(&self) -> Conn {
        let opts = mysql::OptsBuilder::from_opts(self.db.opts()).db_name(Some("moodle"));
        Conn::new(opts).expect("connect as root")
    }

    fn reader(&self, start: Option<BinlogPos>) -> BinlogReader {
        BinlogReader::new(self.db.opts(), READER_ID, "moodle", start).expect("reader")
    }
}

/// Polls in small batches until nothing is left.
fn read_all(reader: &mut BinlogReader) -> Vec<CapturedTxn> {
    let mut all = Vec::new();
    loop {
        let batch = reader.poll(7).expect("poll");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn row(pairs: &[(&str, Value)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn text(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

fn id_of(change: &RowChange) -> i64 {
    let image = change.after.as_ref().or(change.before.as_ref());
    match image.and_then(|r| r.get("id")) {
        Some(Value::Int(id)) => *id,
        other => panic!("row without an integer id: {other:?} in {change:?}"),
    }
}

/// Shows both sides column by column when two rows differ.
fn assert_row(actual: &Option<Row>, expected: &Row, what: &str) {
    let Some(actual) = actual else {
        panic!("{what}: no row image, expected {expected:?}")
    };
    for (k, v) in expected {
        assert_eq!(actual.get(k), Some(v), "{what}: column {k}");
    }
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(extra.is_empty(), "{what}: unexpected columns {extra:?}");
}

#[test]
fn inserts_updates_and_deletes_carry_exact_rows() {
    let site = Site::start();
    let mut reader = site.reader(None);
    let mut c = site.root();
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let subject = "Karibu 🎓 shule — ü";
    c.exec_drop(
        "INSERT INTO mdl_forum_posts (discussion, userid, subject, message, rating, score, ratio, views, \
         big, tiny, attachment, created) VALUES (5, -3, ?, ?, '-12.345', 3.141592653589793, 0.5, \
         4294967295, 18446744073709551615, -128, ?, 1700000000)",
        (subject, "Line 1\nLine 2", blob.clone()),
    )
    .unwrap();
    c.query_drop(
        "INSERT INTO mdl_forum_posts (userid, subject, message, views, tiny) VALUES (7, '', '', 0, 0)",
    )
    .unwrap();
    c.query_drop(
        "UPDATE mdl_forum_posts SET subject = 'Edited', rating = 0.00001, attachment = NULL WHERE id = 1",
    )
    .unwrap();
    c.query_drop("DELETE FROM mdl_forum_posts WHERE id = 11")
        .unwrap();

    let txns = read_all(&mut reader);
    assert_eq!(txns.len(), 4, "{txns:#?}");
    for t in &txns {
        assert_eq!(t.rows.len(), 1, "{t:#?}");
        assert!(t.rows.iter().all(|r| r.table == "mdl_forum_posts"));
    }

    let first = row(&[
        ("id", Value::Int(1)),
        ("discussion", Value::Int(5)),
        ("userid", Value::Int(-3)),
        ("subject", text(subject)),
        ("message", text("Line 1\nLine 2")),
        ("rating", Value::Decimal("-12.34500".into())),
        ("score", Value::Double(std::f64::consts::PI)),
        ("ratio", Value::Double(0.5)),
        ("views", Value::UInt(4_294_967_295)),
        ("big", Value::UInt(u64::MAX)),
        ("tiny", Value::Int(-128)),
        ("attachment", Value::Bytes(blob)),
        ("created", Value::Int(1_700_000_000)),
    ]);
    let second = row(&[
        ("id", Value::Int(11)),
        ("discussion", Value::Int(0)),
        ("userid", Value::Int(7)),
        ("subject", text("")),
        ("message", text("")),
        ("rating", Value::Null),
        ("score", Value::Null),
        ("ratio", Value::Null),
        ("views", Value::UInt(0)),
        ("big", Value::Null),
        ("tiny", Value::Int(0)),
        ("attachment", Value::Null),
        ("created", Value::Int(0)),
    ]);
    let mut edited = first.clone();
    edited.insert("subject".into(), text("Edited"));
    edited.insert("rating".into(), Value::Decimal("0.00001".into()));
    edited.insert("attachment".into(), Value::Null);

    let [insert1, insert2, update, delete] = [0, 1, 2, 3].map(|i| &txns[i].rows[0]);
    assert_eq!(insert1.kind, RowKind::Insert);
    assert_eq!(insert1.before, None);
    assert_row(&insert1.after, &first, "first insert");
    assert_eq!(insert2.kind, RowKind::Insert);
    assert_row(&insert2.after, &second, "second insert");
    assert_eq!(update.kind, RowKind::Update);
    assert_row(&update.before, &first, "update before");
    assert_row(&update.after, &edited, "update after");
    assert_eq!(delete.kind, RowKind::Delete);
    assert_row(&delete.before, &second, "delete before");
    assert_eq!(delete.after, None);

    // GTIDs are MariaDB's (domain 0, this server), rising; ends rise within the file.
    let seqs: Vec<u64> = txns
        .iter()
        .map(|t| {
            let gtid = t
                .gtid
                .as_deref()
                .expect("every MariaDB transaction has a GTID");
            let seq = gtid
                .strip_prefix("0-1-")
                .unwrap_or_else(|| panic!("GTID {gtid} not from domain 0, server 1"));
            seq.parse().expect("sequence number")
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(txns.windows(2).all(|w| w[0].end.pos < w[1].end.pos));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(txns
        .iter()
        .all(|t| u64::from(t.timestamp).abs_diff(now) < 300));
    // The reader ends where the server's binlog ends.
    assert_eq!(reader.position(), &current_end(&mut c).unwrap());
}

#[test]
fn a_transaction_is_one_txn_and_rollbacks_and_other_databases_are_not_seen() {
    let site = Site::start();
    let mut reader = site.reader(None);
    let mut c = site.root();
    c.query_drop("BEGIN").unwrap();
    c.query_drop("INSERT INTO mdl_user (username) VALUES ('amina')")
        .unwrap();
    c.query_drop(
        "INSERT INTO mdl_forum_posts (userid, subject, message, views, tiny) VALUES (1, 'a', 'b', 1, 1)",
    )
    .unwrap();
    c.query_drop("INSERT INTO other.mdl_user (username) VALUES ('elsewhere')")
        .unwrap();
    c.query_drop("UPDATE mdl_user SET deleted = 1 WHERE username = 'amina'")
        .unwrap();
    c.query_drop("COMMIT").unwrap();

    c.query_drop("BEGIN").unwrap();
    c.query_drop("INSERT INTO mdl_user (username) VALUES ('ghost')")
        .unwrap();
    c.query_drop("ROLLBACK").unwrap();

    c.query_drop("INSERT INTO other.mdl_user (username) VALUES ('only-other')")
        .unwrap();
    c.query_drop("INSERT INTO mdl_user (username) VALUES ('baraka')")
        .unwrap();

    let txns = read_all(&mut reader);
    assert_eq!(txns.len(), 2, "{txns:#?}");
    let summary: Vec<(String, RowKind)> = txns[0]
        .rows
        .iter()
        .map(|r| (r.table.clone(), r.kind))
        .collect();
    assert_eq!(
        summary,
        [
            ("mdl_user".to_string(), RowKind::Insert),
            ("mdl_forum_posts".to_string(), RowKind::Insert),
            ("mdl_user".to_string(), RowKind::Update),
        ]
    );
    let update = &txns[0].rows[2];
    assert_eq!(
        update.after.as_ref().and_then(|r| r.get("deleted")),
        Some(&Value::Int(1))
    );
    assert_eq!(txns[1].rows.len(), 1);
    assert_eq!(
        txns[1].rows[0]
            .after
            .as_ref()
            .and_then(|r| r.get("username")),
        Some(&text("baraka"))
    );
    let everything = format!("{txns:?}");
    assert!(!everything.contains("ghost") && !everything.contains("other"));
    // The other database's rows were written: the filter, not a failed write, left them out.
    let others: Vec<String> = c.query("SELECT username FROM other.mdl_user").unwrap();
    assert_eq!(others, ["elsewhere", "only-other"]);
}

#[test]
fn rows_written_with_skip_replication_are_not_captured() {
    let site = Site::start();
    let mut reader = site.reader(None);
    let mut applier = site.root();
    let mut user = site.root();
    applier
        .query_drop("SET SESSION skip_replication = 1")
        .unwrap();
    applier.query_drop("BEGIN").unwrap();
    user.query_drop("BEGIN").unwrap();
    applier
        .query_drop("INSERT INTO mdl_user (username) VALUES ('applied-1')")
        .unwrap();
    user.query_drop("INSERT INTO mdl_user (username) VALUES ('local-1')")
        .unwrap();
    applier
        .query_drop("INSERT INTO mdl_user (username) VALUES ('applied-2')")
        .unwrap();
    applier.query_drop("COMMIT").unwrap();
    user.query_drop("UPDATE mdl_user SET deleted = 1 WHERE username = 'local-1'")
        .unwrap();
    user.query_drop("COMMIT").unwrap();
    applier
        .query_drop("UPDATE mdl_user SET deleted = 2 WHERE username = 'local-1'")
        .unwrap();
    user.query_drop("INSERT INTO mdl_user (username) VALUES ('local-2')")
        .unwrap();

    let txns = read_all(&mut reader);
    let seen: Vec<(RowKind, Value)> = txns
        .iter()
        .flat_map(|t| &t.rows)
        .map(|r| {
            let image = r.after.as_ref().expect("after image");
            (r.kind, image["username"].clone())
        })
        .collect();
    assert_eq!(
        seen,
        [
            (RowKind::Insert, text("local-1")),
            (RowKind::Update, text("local-1")),
            (RowKind::Insert, text("local-2")),
        ]
    );
    // The applier's rows are in the table: they were written, just not captured.
    let all: Vec<(String, i64)> = user
        .query("SELECT username, deleted FROM mdl_user ORDER BY id")
        .unwrap();
    assert_eq!(
        all,
        [
            ("applied-1".to_string(), 0),
            ("local-1".to_string(), 2),
            ("applied-2".to_string(), 0),
            ("local-2".to_string(), 0),
        ]
    );
    // Skipped transactions still move the position: nothing is left to read.
    assert_eq!(reader.position(), &current_end(&mut user).unwrap());
}

fn insert_users(c: &mut Conn, names: &[&str]) {
    for name in names {
        c.exec_drop("INSERT INTO mdl_user (username) VALUES (?)", (name,))
            .unwrap();
    }
}

fn usernames(txns: &[CapturedTxn]) -> Vec<String> {
    txns.iter()
        .flat_map(|t| &t.rows)
        .map(|r| {
            let image = r.after.as_ref().or(r.before.as_ref()).expect("an image");
            match &image["username"] {
                Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("username {other:?}"),
            }
        })
        .collect()
}

#[test]
fn resuming_from_a_stored_position_across_rotations_returns_exactly_the_rest() {
    let site = Site::start();
    let mut c = site.root();
    let start = current_end(&mut c).unwrap();
    let mut first = site.reader(Some(start.clone()));
    insert_users(&mut c, &["u1", "u2", "u3", "u4", "u5"]);

    // The cap holds, and the position sits just after the last transaction returned.
    let batch = first.poll(2).unwrap();
    assert_eq!(usernames(&batch), ["u1", "u2"]);
    assert_eq!(first.position(), &batch[1].end);
    let stored = first.position().to_string();

    insert_users(&mut c, &["u6", "u7"]);
    c.query_drop("FLUSH BINARY LOGS").unwrap();
    insert_users(&mut c, &["u8"]);
    c.query_drop("FLUSH BINARY LOGS").unwrap();
    c.query_drop("UPDATE mdl_user SET deleted = 1 WHERE username = 'u3'")
        .unwrap();
    let end = current_end(&mut c).unwrap();
    assert_ne!(end.file, start.file, "FLUSH BINARY LOGS rotated");

    let stored: BinlogPos = stored.parse().unwrap();
    let mut second = site.reader(Some(stored));
    let rest = read_all(&mut second);
    assert_eq!(
        usernames(&rest),
        ["u3", "u4", "u5", "u6", "u7", "u8", "u3"],
        "{rest:#?}"
    );
    assert_eq!(rest.last().map(|t| t.rows[0].kind), Some(RowKind::Update));
    // Ends name the file each transaction was committed in.
    let files: BTreeSet<&str> = rest.iter().map(|t| t.end.file.as_str()).collect();
    assert_eq!(files.len(), 3, "{files:?}");
    // Caught up: at the end taken above, or past it if MariaDB wrote a binlog checkpoint since.
    assert_eq!(second.position().file, end.file);
    assert!(
        second.position().pos >= end.pos,
        "{} < {end}",
        second.position()
    );

    // Resuming from any returned end gives the transactions after it and nothing else.
    let from_u7 = rest[4].end.clone();
    let tail = read_all(&mut site.reader(Some(from_u7)));
    assert_eq!(usernames(&tail), ["u8", "u3"]);
    // And the first reader, polled on, agrees with the second.
    assert_eq!(usernames(&read_all(&mut first)), usernames(&rest));
}

#[test]
fn a_sigkill_mid_stream_loses_and_duplicates_nothing() {
    let mut site = Site::start();
    let opts = site.db.opts();
    let mut reader = site.reader(None);
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let writer = {
        let acked = Arc::clone(&acked);
        let opts = mysql::OptsBuilder::from_opts(opts).db_name(Some("moodle"));
        std::thread::spawn(move || {
            let mut c = Conn::new(opts).expect("writer connects");
            for n in 0.. {
                let done = c
                    .exec_drop("INSERT INTO mdl_logstore_standard_log (n) VALUES (?)", (n,))
                    .and_then(|()| c.query_first::<i64, _>("SELECT LAST_INSERT_ID()"));
                match done {
                    Ok(Some(id)) => acked.lock().unwrap().push(id),
                    _ => return,
                }
            }
        })
    };

    // Read while the writer writes, storing the position after each batch as the agent would.
    let mut captured = Vec::new();
    let mut stored = reader.position().clone();
    while acked.lock().unwrap().len() < 400 {
        let batch = reader.poll(50).unwrap();
        captured.extend(batch.iter().flat_map(|t| t.rows.iter().map(id_of)));
        stored = reader.position().clone();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !captured.is_empty(),
        "some changes were read before the kill"
    );
    site.db.kill();
    writer.join().expect("writer thread");
    let acked = acked.lock().unwrap().clone();

    site.db.restart().expect("MariaDB restarts after SIGKILL");
    let mut resumed = site.reader(Some(stored));
    let after: Vec<i64> = read_all(&mut resumed)
        .iter()
        .flat_map(|t| t.rows.iter().map(id_of))
        .collect();
    captured.extend(after);

    let unique: HashSet<i64> = captured.iter().copied().collect();
    assert_eq!(unique.len(), captured.len(), "a change was captured twice");
    let in_table: HashSet<i64> = site
        .root()
        .query("SELECT id FROM mdl_logstore_standard_log")
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        unique, in_table,
        "captured ids differ from the rows that survived"
    );
    let lost: Vec<_> = acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged commits not captured: {lost:?}"
    );
    assert!(acked.len() >= 400);
}

#[test]
fn a_binlog_torn_by_a_crash_is_read_up_to_the_tear_then_from_the_next_file() {
    let mut site = Site::start();
    let mut c = site.root();
    let start = current_end(&mut c).unwrap();
    insert_users(&mut c, &["before", "torn"]);
    let end = current_end(&mut c).unwrap();
    drop(c);
    site.db.kill();
    // As if the power failed while the last transaction's events were being written: its commit
    // (XID) event is cut in half.
    let file = site.db.dir.join("data").join(&end.file);
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(len, end.pos, "the binlog ends where the server said");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    site.db
        .restart()
        .expect("MariaDB restarts on a torn binlog");
    let mut c = site.root();
    insert_users(&mut c, &["after"]);
    assert_ne!(current_end(&mut c).unwrap().file, end.file, "a new file");

    let mut reader = site.reader(Some(start));
    let txns = read_all(&mut reader);
    assert_eq!(usernames(&txns), ["before", "after"], "{txns:#?}");
}

#[test]
fn a_column_added_by_alter_table_appears_by_name() {
    let site = Site::start();
    let mut reader = site.reader(None);
    let mut c = site.root();
    insert_users(&mut c, &["before"]);
    c.query_drop("ALTER TABLE mdl_user ADD COLUMN email VARCHAR(100) NOT NULL DEFAULT 'x@y'")
        .unwrap();
    insert_users(&mut c, &["after"]);
    c.query_drop("UPDATE mdl_user SET email = 'b@c' WHERE username = 'before'")
        .unwrap();

    let txns = read_all(&mut reader);
    let rows: Vec<&RowChange> = txns.iter().flat_map(|t| &t.rows).collect();
    assert_eq!(
        rows.len(),
        3,
        "the ALTER itself is no row change: {txns:#?}"
    );
    let columns = |r: &Row| r.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        columns(rows[0].after.as_ref().unwrap()),
        ["deleted", "id", "username"]
    );
    assert_eq!(
        rows[1].after.as_ref().unwrap().get("email"),
        Some(&text("x@y"))
    );
    assert_eq!(
        rows[2].before.as_ref().unwrap().get("email"),
        Some(&text("x@y"))
    );
    assert_eq!(
        rows[2].after.as_ref().unwrap().get("email"),
        Some(&text("b@c"))
    );
    assert_eq!(
        rows[2].after.as_ref().unwrap().get("username"),
        Some(&text("before"))
    );
}

/// PURGE BINARY LOGS leaves a file alone (with a warning) until MariaDB's binlog checkpoint says
/// InnoDB no longer needs it for crash recovery, which happens shortly after the rotation: retry.
fn purge_to(c: &mut Conn, to: &str, gone: &str) {
    let purged = kituo_tests::testbed::wait_for(std::time::Duration::from_secs(30), || {
        c.query_drop(format!("PURGE BINARY LOGS TO '{to}'")).ok()?;
        let files: Vec<mysql::Row> = c.query("SHOW BINARY LOGS").ok()?;
        let names: Vec<String> = files.iter().filter_map(|r| r.get(0)).collect();
        (!names.iter().any(|n| n == gone)).then_some(())
    });
    assert!(purged.is_some(), "{gone} was not purged within 30 s");
}

#[test]
fn a_purged_start_file_is_a_clear_error() {
    let site = Site::start();
    let mut c = site.root();
    let mut reader = site.reader(None);
    insert_users(&mut c, &["one"]);
    assert_eq!(read_all(&mut reader).len(), 1);
    let stored = reader.position().clone();
    insert_users(&mut c, &["two"]);
    c.query_drop("FLUSH BINARY LOGS").unwrap();
    c.query_drop("FLUSH BINARY LOGS").unwrap();
    let end = current_end(&mut c).unwrap();
    purge_to(&mut c, &end.file, &stored.file);

    let expected = format!(
        "binlog {} no longer exists on the server: the site must be re-seeded",
        stored.file
    );
    let err = BinlogReader::new(site.db.opts(), READER_ID, "moodle", Some(stored.clone()))
        .err()
        .expect("a purged start is refused");
    assert_eq!(err.to_string(), expected);
    assert!(matches!(
        err.downcast_ref::<CaptureError>(),
        Some(CaptureError::BinlogPurged { file }) if *file == stored.file
    ));
    // A reader that was already running learns it on its next poll, and stays where it was.
    let err = reader.poll(10).unwrap_err();
    assert_eq!(err.to_string(), expected);
    assert_eq!(reader.position(), &stored);

    // A position past the end of an existing file (binlogs reset) is refused as well.
    let past = BinlogPos::new(end.file.clone(), end.pos + 1_000_000);
    let err = BinlogReader::new(site.db.opts(), READER_ID, "moodle", Some(past))
        .err()
        .expect("a position past the end is refused");
    assert!(
        matches!(
            err.downcast_ref::<CaptureError>(),
            Some(CaptureError::PastEnd { .. })
        ),
        "{err:#}"
    );
}

#[test]
fn wrong_settings_are_named_and_the_documented_grant_is_enough() {
    let site = Site::start();
    let mut c = site.root();
    check_settings(&mut c).expect("the site's settings are right");

    c.query_drop("SET GLOBAL binlog_format = 'MIXED'").unwrap();
    c.query_drop("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
        .unwrap();
    let err = check_settings(&mut c).unwrap_err().to_string();
    assert!(
        err.contains("binlog_format is MIXED but must be ROW"),
        "{err}"
    );
    assert!(
        err.contains("binlog_row_metadata is MINIMAL but must be FULL"),
        "{err}"
    );
    assert!(!err.contains("binlog_row_image"), "{err}");
    let err = BinlogReader::new(site.db.opts(), READER_ID, "moodle", None)
        .err()
        .expect("a reader refuses wrong settings");
    assert!(
        matches!(err.downcast_ref::<CaptureError>(), Some(CaptureError::Settings(w)) if w.len() == 2),
        "{err:#}"
    );
    c.query_drop("SET GLOBAL binlog_format = 'ROW'").unwrap();
    c.query_drop("SET GLOBAL binlog_row_metadata = 'FULL'")
        .unwrap();

    // The grant documented on BinlogReader, and nothing more.
    c.query_drop("CREATE USER 'kituo_capture'@'localhost' IDENTIFIED BY 'capture-pw'")
        .unwrap();
    c.query_drop("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'kituo_capture'@'localhost'")
        .unwrap();
    let capture_opts = mysql::OptsBuilder::from_opts(site.db.opts())
        .user(Some("kituo_capture"))
        .pass(Some("capture-pw"));
    let mut reader = BinlogReader::new(capture_opts.clone(), READER_ID, "moodle", None)
        .expect("the capture account can start a reader");
    insert_users(&mut c, &["granted"]);
    assert_eq!(usernames(&reader.poll(10).unwrap()), ["granted"]);
    let mut capture_conn = Conn::new(capture_opts).unwrap();
    assert_eq!(&current_end(&mut capture_conn).unwrap(), reader.position());
    // And it is not more than needed: the account reads no table.
    assert!(capture_conn
        .query_drop("SELECT * FROM moodle.mdl_user")
        .is_err());
}

#[test]
fn other_column_types_convert_as_documented() {
    let site = Site::start();
    let mut c = site.root();
    c.query_drop(
        "CREATE TABLE mdl_misc (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            d DATE, dt DATETIME(6), t TIME, ts TIMESTAMP NULL, y YEAR,
            after_year INT UNSIGNED, b BIT(12), e ENUM('red', 'green'), s SET('a', 'b', 'c'),
            j JSON, small SMALLINT UNSIGNED, medium MEDIUMINT, medium2 MEDIUMINT, small2 SMALLINT, u UUID, c CHAR(3), bin BINARY(4)
        ) ENGINE=InnoDB",
    )
    .unwrap();
    let mut reader = site.reader(None);
    c.query_drop("SET time_zone = '+00:00'").unwrap();
    c.query_drop(
        "INSERT INTO mdl_misc (d, dt, t, ts, y, after_year, b, e, s, j, small, medium, medium2, small2, u, c, bin) VALUES \
         ('2024-02-29', '2024-02-29 13:05:09.000500', '-26:03:04', '2023-11-14 22:13:20', 2031, \
         4000000000, b'101000000001', 'green', 'a,c', '{\"k\": [1, 2]}', 65535, -8388608, -1, -32768, \
         '123e4567-e89b-12d3-a456-426614174000', 'ab  ', 0x61620000)",
    )
    .unwrap();
    let txns = read_all(&mut reader);
    assert_eq!(txns.len(), 1, "{txns:#?}");
    let expected = row(&[
        ("id", Value::Int(1)),
        ("d", text("2024-02-29")),
        ("dt", text("2024-02-29 13:05:09.000500")),
        ("t", text("-26:03:04")),
        ("ts", text("1700000000")),
        ("y", Value::UInt(2031)),
        ("after_year", Value::UInt(4_000_000_000)),
        ("b", Value::UInt(0b1010_0000_0001)),
        ("e", Value::UInt(2)),
        ("s", Value::UInt(0b101)),
        ("j", text("{\"k\": [1, 2]}")),
        ("small", Value::UInt(65535)),
        ("medium", Value::Int(-8_388_608)),
        ("medium2", Value::Int(-1)),
        ("small2", Value::Int(-32768)),
        // CHAR drops trailing spaces, as SELECT does; BINARY keeps its trailing zero bytes.
        ("c", text("ab")),
        ("bin", Value::Bytes(vec![0x61, 0x62, 0, 0])),
    ]);
    let after = &txns[0].rows[0].after;
    // UUID is 16 bytes in MariaDB's storage order, which may differ from the text's; the binlog cut
    // this one's trailing zero byte and it must be back.
    let uuid = after.as_ref().and_then(|r| r.get("u")).cloned();
    let stored: Vec<u8> = c
        .query_first("SELECT CAST(u AS BINARY(16)) FROM mdl_misc")
        .unwrap()
        .unwrap();
    assert_eq!(stored.len(), 16);
    assert_eq!(stored.last(), Some(&0));
    assert_eq!(uuid, Some(Value::Bytes(stored)));
    let mut without_uuid = after.clone();
    if let Some(r) = without_uuid.as_mut() {
        r.remove("u");
    }
    assert_row(&without_uuid, &expected, "misc types");
}
