//! Many workload-like changes fast, for the benchmarks: [`bulk_activity`] writes them to Moodle's
//! tables with multi-row statements (so capture and apply have real rows to work on), and
//! [`fill_outbox`] writes ready-made changes straight into a center's outbox, bypassing Moodle and the
//! binlog, for transport benchmarks of up to a million changes.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::{Conn, Transaction, TxOpts};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::workload::Course;
use appliance::sync::engine::change::{Change, Op, Row, Value};
use appliance::sync::engine::clock::Hlc;
use appliance::sync::engine::{record, store};

/// What a bulk writer wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Row changes committed.
    pub rows: u64,
    /// Of which in tables that sync both ways (the rest are log rows, which only go to the hub).
    pub two_way: u64,
    pub transactions: u64,
}

const MESSAGE_WORDS: &[&str] = &[
    "mvua",
    "maji",
    "evaporation",
    "cloud",
    "river",
    "condensation",
    "soil",
    "plants",
    "the",
    "and",
    "because",
    "teacher",
    "question",
    "answer",
    "season",
    "drought",
    "jua",
    "ziwa",
    "wanafunzi",
    "swali",
];

fn message(rng: &mut StdRng) -> String {
    let n = rng.gen_range(20..=90);
    let words: Vec<&str> = (0..n)
        .map(|_| MESSAGE_WORDS[rng.gen_range(0..MESSAGE_WORDS.len())])
        .collect();
    format!("<p>{}.</p>", words.join(" "))
}

/// Writes at least `rows` row changes as a busy center's Moodle would, in rounds of one transaction:
/// every student of `course` replies once (a `forum_posts` insert and its `post_created` log row),
/// their last-access times move (`user`, `user_lastaccess`), and the discussions replied to get their
/// last-post fields. Multi-row statements keep it fast; the rows are the workload's rows.
/// The course forum's discussions (id, first post); fails when there are none, or no students.
fn discussions(conn: &mut Conn, course: &Course) -> Result<Vec<(i64, i64)>> {
    let discussions: Vec<(i64, i64)> = conn
        .exec(
            "SELECT id, firstpost FROM mdl_forum_discussions WHERE forum = ? ORDER BY id",
            (course.forum,),
        )
        .context("cannot list discussions")?;
    anyhow::ensure!(
        !discussions.is_empty(),
        "the course's forum has no discussion"
    );
    anyhow::ensure!(!course.students.is_empty(), "the course has no students");
    Ok(discussions)
}

pub fn bulk_activity(
    conn: &mut Conn,
    course: &Course,
    rows: u64,
    seed: u64,
    start: i64,
) -> Result<Written> {
    let mut rng = StdRng::seed_from_u64(seed);
    let discussions = discussions(conn, course)?;
    let mut written = Written::default();
    let mut now = start;
    while written.rows < rows {
        now += 61;
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .context("cannot start a transaction")?;
        let round = round(&mut tx, course, &discussions, &mut rng, now)?;
        tx.commit().context("cannot commit bulk activity")?;
        written.rows += round.rows;
        written.two_way += round.two_way;
        written.transactions += 1;
    }
    Ok(written)
}

fn round(
    tx: &mut Transaction<'_>,
    course: &Course,
    discussions: &[(i64, i64)],
    rng: &mut StdRng,
    now: i64,
) -> Result<Written> {
    let students = &course.students;
    let mut posts = Vec::with_capacity(students.len());
    let mut touched = std::collections::BTreeMap::new();
    for &user in students {
        let (discussion, first) = discussions[rng.gen_range(0..discussions.len())];
        let text = message(rng);
        let words = text.split_whitespace().count() as i64;
        posts.push((discussion, first, user, text, words));
        touched.insert(discussion, user);
    }
    let mut sql = String::from(
        "INSERT INTO mdl_forum_posts (discussion, parent, userid, created, modified, mailed, subject, message,
             messageformat, messagetrust, attachment, totalscore, mailnow, deleted, privatereplyto, wordcount,
             charcount) VALUES ",
    );
    let mut params: Vec<mysql::Value> = Vec::new();
    for (i, (discussion, first, user, text, words)) in posts.iter().enumerate() {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str("(?, ?, ?, ?, ?, 0, 'Re: Photosynthesis', ?, 1, 0, '', 0, 0, 0, 0, ?, ?)");
        params.extend([
            (*discussion).into(),
            (*first).into(),
            (*user).into(),
            now.into(),
            now.into(),
            text.as_str().into(),
            (*words).into(),
            (text.len() as i64).into(),
        ]);
    }
    tx.exec_drop(&sql, params).context("cannot insert posts")?;
    let first_post = tx.last_insert_id().context("no id for the posts")?;

    let mut sql = String::from(
        "INSERT INTO mdl_logstore_standard_log (eventname, component, action, target, objecttable, objectid, crud,
             edulevel, contextid, contextlevel, contextinstanceid, userid, courseid, relateduserid, anonymous,
             other, timecreated, origin, ip, realuserid) VALUES ",
    );
    let mut params: Vec<mysql::Value> = Vec::new();
    let increment: u64 = tx
        .query_first("SELECT @@auto_increment_increment")
        .context("cannot read auto_increment_increment")?
        .unwrap_or(1);
    for (i, (discussion, _, user, _, _)) in posts.iter().enumerate() {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str(
            "('\\\\mod_forum\\\\event\\\\post_created', 'mod_forum', 'created', 'post', 'forum_posts', ?, 'c', 2,
              ?, 70, ?, ?, ?, NULL, 0, ?, ?, 'web', ?, NULL)",
        );
        let other = format!(
            "{{\"discussionid\":{discussion},\"forumid\":{},\"forumtype\":\"general\"}}",
            course.forum
        );
        params.extend([
            (first_post + i as u64 * increment).into(),
            course.forum_context.id.into(),
            course.forum_context.instance.into(),
            (*user).into(),
            course.id.into(),
            other.into(),
            now.into(),
            format!("10.2.{}.{}", (user / 250) % 250, user % 250 + 1).into(),
        ]);
    }
    tx.exec_drop(&sql, params)
        .context("cannot insert log rows")?;

    let ids = students
        .iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",");
    tx.exec_drop(
        format!(
            "UPDATE mdl_user SET lastaccess = ? + id % 50, lastip = CONCAT('10.2.0.', id % 250) WHERE id IN ({ids})"
        ),
        (now,),
    )
    .context("cannot update last access")?;
    let users = tx.affected_rows();
    let mut sql =
        String::from("INSERT INTO mdl_user_lastaccess (userid, courseid, timeaccess) VALUES ");
    for (i, user) in students.iter().enumerate() {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str(&format!("({user}, {}, {})", course.id, now + user % 50));
    }
    sql.push_str(" ON DUPLICATE KEY UPDATE timeaccess = VALUES(timeaccess)");
    tx.query_drop(&sql)
        .context("cannot update course last access")?;
    for (discussion, user) in &touched {
        tx.exec_drop(
            "UPDATE mdl_forum_discussions SET timemodified = ?, usermodified = ? WHERE id = ?",
            (now, user, discussion),
        )
        .context("cannot update a discussion")?;
    }
    let n = students.len() as u64;
    let two_way = n + users + n + touched.len() as u64;
    Ok(Written {
        rows: two_way + n,
        two_way,
        transactions: 1,
    })
}

/// What [`fill_outbox`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filled {
    pub changes: u64,
    /// The sequence numbers given, inclusive.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Bytes of the changes as logged (MessagePack, before the wire's zstd).
    pub logged_bytes: u64,
}

/// Changes per multi-row INSERT and per transaction.
const FILL_STATEMENT: usize = 1_000;
const FILL_TRANSACTION: usize = 20_000;

/// Appends `n` (up to millions) realistic changes to this site's outbox (`kituo_sync.log`) as if
/// capture had recorded them: the center's next sequence numbers and clock stamps, in multi-row
/// INSERTs, about 20-60 s per million here. The mix repeats a reply's five row changes: a
/// `forum_posts` insert, its discussion's `timemodified`/`usermodified`, the poster's
/// `user.lastaccess`/`lastip`, the poster's `user.lastlogin`/`currentlogin`, and the `post_created`
/// `logstore_standard_log` insert.
///
/// Inserted rows get ids of this site's auto-increment share above every existing one, and the
/// tables' AUTO_INCREMENT is moved past them, so Moodle here never reuses one; updates name the
/// course's students and discussions, which exist everywhere. Moodle's own tables and the row clocks
/// are left alone: this is load for the transport (push, the hub's accept, relay and a center's pull),
/// not a state the center's Moodle shows.
pub fn fill_outbox(
    conn: &mut Conn,
    site: u32,
    course: &Course,
    n: u64,
    seed: u64,
) -> Result<Filled> {
    let mut rng = StdRng::seed_from_u64(seed);
    let discussions = discussions(conn, course)?;
    let (increment, offset): (i64, i64) = conn
        .query_first("SELECT @@auto_increment_increment, @@auto_increment_offset")
        .context("cannot read the auto-increment share")?
        .context("no auto-increment settings")?;
    let next_id = |conn: &mut Conn, table: &str| -> Result<i64> {
        // MAX of an empty table is NULL: the outer Option is the row, the inner the value.
        let max: Option<Option<i64>> = conn
            .query_first(format!("SELECT MAX(id) FROM mdl_{table}"))
            .with_context(|| format!("cannot read the largest id of {table}"))?;
        let above = max.flatten().unwrap_or(0) + 1;
        // The first id of this site's share at or above `above`.
        Ok(above + (offset - above).rem_euclid(increment))
    };
    let mut post_id = next_id(conn, "forum_posts")?;
    let mut log_id = next_id(conn, "logstore_standard_log")?;
    let mut filled = Filled::default();
    let now = course.installed_at + 86_400;
    while filled.changes < n {
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .context("cannot start a transaction")?;
        store::lock_log(&mut tx)?;
        let mut hlc = Hlc::resume(
            store::get_u64(&mut tx, record::HLC)?.max(store::get_u64(&mut tx, record::HLC_SEEN)?),
        );
        let mut seq = store::get_u64(&mut tx, record::NEXT_SEQ)?.max(1);
        if filled.first_seq == 0 {
            filled.first_seq = seq;
        }
        let batch = (n - filled.changes).min(FILL_TRANSACTION as u64) as usize;
        let mut changes = Vec::with_capacity(batch);
        while changes.len() < batch {
            let user = course.students[rng.gen_range(0..course.students.len())];
            let (discussion, first) = discussions[rng.gen_range(0..discussions.len())];
            let t = now + changes.len() as i64;
            let ops = [
                (
                    "forum_posts",
                    post_id,
                    Op::Insert(post_row(post_id, discussion, first, user, t, &mut rng)),
                ),
                (
                    "forum_discussions",
                    discussion,
                    Op::Update(row(&[
                        ("timemodified", int(t)),
                        ("usermodified", int(user)),
                    ])),
                ),
                (
                    "user",
                    user,
                    Op::Update(row(&[
                        ("lastaccess", int(t)),
                        ("lastip", text(&format!("10.{site}.0.{}", user % 250))),
                    ])),
                ),
                (
                    "user",
                    user,
                    Op::Update(row(&[
                        ("lastlogin", int(t - 3600)),
                        ("currentlogin", int(t)),
                    ])),
                ),
                (
                    "logstore_standard_log",
                    log_id,
                    Op::Insert(log_row(log_id, course, post_id, discussion, user, t, site)),
                ),
            ];
            post_id += increment;
            log_id += increment;
            for (table, id, op) in ops {
                if changes.len() == batch {
                    break;
                }
                changes.push(Change {
                    origin: site,
                    seq,
                    hlc: hlc.tick(),
                    table: table.to_owned(),
                    id,
                    op,
                });
                seq += 1;
            }
        }
        for chunk in changes.chunks(FILL_STATEMENT) {
            filled.logged_bytes += append_all(&mut tx, chunk)?;
        }
        store::set(&mut tx, record::HLC, &hlc.last().to_string())?;
        store::set(&mut tx, record::NEXT_SEQ, &seq.to_string())?;
        tx.commit().context("cannot commit the outbox")?;
        filled.changes += changes.len() as u64;
        filled.last_seq = seq - 1;
    }
    for (table, next) in [("forum_posts", post_id), ("logstore_standard_log", log_id)] {
        conn.query_drop(format!("ALTER TABLE mdl_{table} AUTO_INCREMENT = {next}"))
            .with_context(|| format!("cannot move {table}'s AUTO_INCREMENT past the filled ids"))?;
    }
    Ok(filled)
}

/// One multi-row INSERT of logged changes; returns their logged size.
fn append_all(tx: &mut Transaction<'_>, changes: &[Change]) -> Result<u64> {
    let mut sql =
        String::from("INSERT INTO kituo_sync.log (origin, seq, hlc, tbl, row_id, data) VALUES ");
    let mut params: Vec<mysql::Value> = Vec::with_capacity(changes.len() * 6);
    let mut bytes = 0;
    for (i, c) in changes.iter().enumerate() {
        sql.push_str(if i == 0 {
            "(?, ?, ?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?, ?, ?)"
        });
        let data = rmp_serde::to_vec(c).context("cannot encode a change for the log")?;
        bytes += data.len() as u64;
        params.extend([
            c.origin.into(),
            c.seq.into(),
            c.hlc.into(),
            c.table.as_str().into(),
            c.id.into(),
            data.into(),
        ]);
    }
    tx.exec_drop(sql, params)
        .context("cannot fill the outbox")?;
    Ok(bytes)
}

fn int(v: i64) -> Value {
    Value::Int(v)
}

fn text(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

fn row(pairs: &[(&str, Value)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A whole `forum_posts` row, as capture reads it from the binlog.
fn post_row(id: i64, discussion: i64, parent: i64, user: i64, t: i64, rng: &mut StdRng) -> Row {
    let message = message(rng);
    let words = message.split_whitespace().count() as i64;
    row(&[
        ("id", int(id)),
        ("discussion", int(discussion)),
        ("parent", int(parent)),
        ("userid", int(user)),
        ("created", int(t)),
        ("modified", int(t)),
        ("mailed", int(0)),
        ("subject", text("Re: Photosynthesis")),
        ("message", text(&message)),
        ("messageformat", int(1)),
        ("messagetrust", int(0)),
        ("attachment", text("")),
        ("totalscore", int(0)),
        ("mailnow", int(0)),
        ("deleted", int(0)),
        ("privatereplyto", int(0)),
        ("wordcount", int(words)),
        ("charcount", int(message.len() as i64)),
    ])
}

/// A whole `logstore_standard_log` row of a `post_created` event.
fn log_row(
    id: i64,
    course: &Course,
    post: i64,
    discussion: i64,
    user: i64,
    t: i64,
    site: u32,
) -> Row {
    row(&[
        ("id", int(id)),
        ("eventname", text("\\mod_forum\\event\\post_created")),
        ("component", text("mod_forum")),
        ("action", text("created")),
        ("target", text("post")),
        ("objecttable", text("forum_posts")),
        ("objectid", int(post)),
        ("crud", text("c")),
        ("edulevel", int(2)),
        ("contextid", int(course.forum_context.id)),
        ("contextlevel", int(70)),
        ("contextinstanceid", int(course.forum_context.instance)),
        ("userid", int(user)),
        ("courseid", int(course.id)),
        ("relateduserid", Value::Null),
        ("anonymous", int(0)),
        (
            "other",
            text(&format!(
                "{{\"discussionid\":{discussion},\"forumid\":{},\"forumtype\":\"general\"}}",
                course.forum
            )),
        ),
        ("timecreated", int(t)),
        ("origin", text("web")),
        ("ip", text(&format!("10.{site}.0.{}", user % 250))),
        ("realuserid", Value::Null),
    ])
}
