//! `cargo bench -p kituo-tests --bench sync [-- --transport-only]`: the sync engine on real MariaDB servers (a hub and two centers from
//! `sync::bed`), printed as a markdown table: capture and apply rates, and the bytes one simulated day
//! of a 200-student center puts on the wire against seed 000's `moodlesync` (a compressed mysqldump,
//! updated with rsync's delta transfer).
//!
//! The transport's own rows (HTTP push and pull of a large outbox) can start from
//! [`kituo_tests::workload::fill_outbox`], which fills a center's outbox with up to a million
//! realistic changes in seconds, and [`Canned`], a link that serves pages read beforehand.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use appliance::sync::engine::change::{self, Change, Op, Row, Value};
use appliance::sync::engine::policy::Policy;
use appliance::sync::engine::sql::{quote, to_sql, ID};
use appliance::sync::engine::store;
use appliance::sync::exchange::agent::{self, Link};
use appliance::sync::exchange::hub::{self, Page, Receipt};
use kituo_tests::bed::{self, Direct, Node, World};
use kituo_tests::testbed::require;
use kituo_tests::workload::{bulk_activity, Course, Kind, Workload};

mod link;

#[derive(clap::Parser, Debug)]
pub struct Options {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Changes in the page a center applies for the apply rate.
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// Enrolled students at the center of the simulated day.
    #[arg(long, default_value_t = 200)]
    pub students: usize,
    /// Changes per batch the agent pushes and pulls.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Days of history in the center's database before the measured day (yesterday's rows,
    /// copied): what the moodlesync baseline ships every day.
    #[arg(long = "history-days", default_value_t = HISTORY_DAYS)]
    pub history: usize,
    /// Seed of the day's workload.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Seconds of pushing over the emulated 256 kbit/s link cut every 30 s; 0 skips the goodput
    /// and agent-memory rows.
    #[arg(long, default_value_t = 120)]
    pub goodput_seconds: u64,
    /// Changes in the outbox while the agent's memory is sampled.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Only the goodput and agent-memory rows.
    #[arg(long)]
    pub transport_only: bool,
}

const TEACHERS: usize = 4;
/// Students enrolled during each of the two days.
const NEW_STUDENTS: usize = 10;
/// Days of history the center's database holds by default before the measured day.
pub const HISTORY_DAYS: usize = 120;
/// 2026-03-02 08:00 in Dar es Salaam (UTC+3): the measured day's first login (the day before is
/// "yesterday", whose rows also make the history).
const DAY_START: i64 = 1_772_427_600;
const APPLY_TARGET: f64 = 5_000.0;
const RATIO_TARGET: f64 = 100.0;

/// The hub's log served from memory: pages read beforehand, so that a pull times only the center.
pub struct Canned {
    pub pages: VecDeque<Page>,
}

impl Link for Canned {
    fn push(&mut self, _changes: &[Change]) -> Result<Receipt> {
        bail!("a canned link only serves pulls")
    }
    fn pull(&mut self, _after: u64, _max: usize) -> Result<Page> {
        self.pages
            .pop_front()
            .context("the canned link has no more pages")
    }
}

/// Reads every page the hub has for `center` after its cursor, `max` changes each.
pub fn read_pages(w: &mut World, center: u32, max: usize) -> Result<Vec<Page>> {
    w.hub.site.capture(&w.policy)?;
    let node = w
        .centers
        .iter_mut()
        .find(|c| c.id == center)
        .context("no such center")?;
    let mut after = store::get_u64(node.site.conn(), agent::HUB_CURSOR)?;
    let mut pages = Vec::new();
    loop {
        let page = hub::page(&mut w.hub.site, &w.policy, center, after, max, usize::MAX)?;
        let more = page.more;
        after = page.last;
        pages.push(page);
        if !more {
            return Ok(pages);
        }
    }
}

/// Applies pages at a center through `agent::pull_once`; returns changes applied and the time.
pub fn apply_pages(
    w: &mut World,
    center: u32,
    pages: Vec<Page>,
    max: usize,
) -> Result<(u64, Duration)> {
    let changes = pages.iter().map(|p| p.changes.len() as u64).sum();
    let node = w
        .centers
        .iter_mut()
        .find(|c| c.id == center)
        .context("no such center")?;
    let mut link = Canned {
        pages: pages.into(),
    };
    let t = Instant::now();
    while !link.pages.is_empty() {
        agent::pull_once(&mut node.site, &w.policy, &mut link, max)?;
    }
    Ok((changes, t.elapsed()))
}

/// Pushes a center's whole outbox to the hub in batches; returns changes acknowledged and the time.
pub fn push_all(w: &mut World, center: usize, batch: usize) -> Result<(u64, Duration)> {
    let node = &mut w.centers[center];
    let mut link = Direct {
        hub: &mut w.hub.site,
        policy: &w.policy,
        center: node.id,
    };
    let t = Instant::now();
    let mut acked = 0;
    loop {
        let n = agent::push_once(&mut node.site, &mut link, batch)?.acked;
        if n == 0 {
            return Ok((acked, t.elapsed()));
        }
        acked += n;
    }
}

/// A center's unpushed outbox, and its bytes as the agent sends it: batches of `batch`, encoded.
fn outbox(node: &mut Node, batch: usize) -> Result<(Vec<Change>, u64)> {
    let pushed = store::get_u64(node.site.conn(), agent::PUSHED)?;
    let id = node.id;
    let rows: Vec<Vec<u8>> = node
        .site
        .conn()
        .exec(
            "SELECT data FROM kituo_sync.log WHERE origin = ? AND seq > ? ORDER BY seq",
            (id, pushed),
        )
        .context("cannot read the outbox")?;
    let changes = rows
        .iter()
        .map(|d| store::decode_logged(d))
        .collect::<Result<Vec<_>>>()?;
    let mut bytes = 0;
    for chunk in changes.chunks(batch.max(1)) {
        bytes += change::encode(chunk)?.len() as u64;
    }
    Ok((changes, bytes))
}

fn page_bytes(pages: &[Page]) -> Result<u64> {
    let mut bytes = 0;
    for p in pages.iter().filter(|p| !p.changes.is_empty()) {
        bytes += change::encode(&p.changes)?.len() as u64;
    }
    Ok(bytes)
}

struct Planned {
    at: i64,
    kind: Kind,
    actor: Option<i64>,
    subject: Option<i64>,
}

/// One user's visit: `acts` a few minutes apart from `start`. Edits are left to the workload, which
/// picks the post and lets its author or a teacher edit it.
fn session(
    plan: &mut Vec<Planned>,
    rng: &mut StdRng,
    start: i64,
    user: i64,
    acts: &[(Kind, Option<i64>)],
) {
    let mut t = start;
    for (kind, subject) in acts {
        plan.push(Planned {
            at: t,
            kind: *kind,
            actor: if *kind == Kind::EditPost {
                None
            } else {
                Some(user)
            },
            subject: *subject,
        });
        t += rng.gen_range(30..=240);
    }
}

/// The center's day: every student logs in twice (08:00-16:00), views five pages, replies three times
/// and submits the essay; one in five starts a discussion and one in ten edits a post. Each teacher
/// logs in in the morning (views, five replies, enrols the day's new students) and in the afternoon
/// (views, grades a quarter of the class, deletes a post or two).
fn plan_center(
    course: &Course,
    enrolled: &[i64],
    pending: &[i64],
    day: i64,
    rng: &mut StdRng,
) -> Vec<Planned> {
    let mut plan = Vec::new();
    for (i, &s) in enrolled.iter().enumerate() {
        let mut times = [
            day + rng.gen_range(0..8 * 3600),
            day + rng.gen_range(0..8 * 3600),
        ];
        times.sort_unstable();
        let mut first = vec![
            (Kind::LogIn, None),
            (Kind::ViewPage, None),
            (Kind::ViewPage, None),
        ];
        if i % 5 == 0 {
            first.push((Kind::StartDiscussion, None));
        }
        first.extend([
            (Kind::Reply, None),
            (Kind::Reply, None),
            (Kind::Submit, None),
        ]);
        session(&mut plan, rng, times[0], s, &first);
        let mut second = vec![
            (Kind::LogIn, None),
            (Kind::ViewPage, None),
            (Kind::ViewPage, None),
        ];
        second.push((Kind::Reply, None));
        if i % 10 == 0 {
            second.push((Kind::EditPost, None));
        }
        second.push((Kind::ViewPage, None));
        session(&mut plan, rng, times[1], s, &second);
    }
    let per = enrolled.len().div_ceil(course.teachers.len().max(1));
    for (t, &teacher) in course.teachers.iter().enumerate() {
        let mut morning = vec![(Kind::LogIn, None)];
        morning.extend(std::iter::repeat_n((Kind::ViewPage, None), 5));
        morning.extend(
            pending
                .iter()
                .skip(t)
                .step_by(course.teachers.len())
                .map(|p| (Kind::Enrol, Some(*p))),
        );
        morning.extend(std::iter::repeat_n((Kind::Reply, None), 5));
        let start = day + 3600 + rng.gen_range(0..3600);
        session(&mut plan, rng, start, teacher, &morning);
        let mut afternoon = vec![(Kind::LogIn, None)];
        afternoon.extend(std::iter::repeat_n((Kind::ViewPage, None), 5));
        afternoon.extend(
            enrolled
                .iter()
                .skip(t * per)
                .take(per)
                .map(|s| (Kind::Grade, Some(*s))),
        );
        afternoon.extend(std::iter::repeat_n((Kind::DeletePost, None), 1 + t % 2));
        let start = day + 7 * 3600 + rng.gen_range(0..1800);
        session(&mut plan, rng, start, teacher, &afternoon);
    }
    plan.sort_by_key(|p| p.at);
    plan
}

/// The hub's part of the day: a tutor at headquarters opens a discussion and tutors reply ten times.
fn plan_hub(course: &Course, day: i64) -> Vec<Planned> {
    let mut plan = Vec::new();
    let Some(&first) = course.teachers.first() else {
        return plan;
    };
    plan.push(Planned {
        at: day + 2 * 3600,
        kind: Kind::StartDiscussion,
        actor: Some(first),
        subject: None,
    });
    for i in 0..10 {
        plan.push(Planned {
            at: day + 3 * 3600 + i * 1200,
            kind: Kind::Reply,
            actor: course
                .teachers
                .get(i as usize % course.teachers.len())
                .copied(),
            subject: None,
        });
    }
    plan
}

fn run_plan(node: &Node, workload: &mut Workload, plan: &[Planned]) -> Result<BTreeMap<Kind, u64>> {
    let mut conn = node.sql()?;
    let mut done = BTreeMap::new();
    for p in plan {
        workload.set_clock(p.at);
        let action = workload.perform(&mut conn, p.kind, p.actor, p.subject)?;
        if !action.skipped {
            *done.entry(p.kind).or_default() += 1;
        }
    }
    Ok(done)
}

/// A site's Moodle database dumped as `moodlesync backup` does (mysqldump, then gzip), and also with
/// `gzip --rsyncable`; returns the two files' sizes.
fn dump(node: &Node, dir: &Path, name: &str) -> Result<(u64, u64)> {
    let dumper = require("mariadb-dump", "mariadb-client")?;
    require("gzip", "gzip")?;
    let sql = dir.join(format!("{name}.sql"));
    let script = format!(
        "set -e; '{dumper}' --no-defaults --socket='{socket}' -u root --single-transaction --skip-dump-date {db} > '{sql}'; \
         gzip -c '{sql}' > '{sql}.gz'; gzip --rsyncable -c '{sql}' > '{sql}.rsyncable.gz'; rm '{sql}'",
        dumper = dumper.display(),
        socket = node.db.socket.display(),
        db = bed::DB,
        sql = sql.display(),
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .context("cannot run mariadb-dump and gzip")?;
    if !out.status.success() {
        bail!(
            "mariadb-dump or gzip failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let size = |suffix: &str| -> Result<u64> {
        let path = dir.join(format!("{name}.sql{suffix}"));
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("no dump at {}", path.display()))?
            .len())
    };
    Ok((size(".gz")?, size(".rsyncable.gz")?))
}

/// Bytes rsync's delta transfer moves to turn `old` into `new` (both ways: block checksums and
/// literal data), from `--stats`.
fn rsync_delta(old: &Path, new: &Path, work: &Path) -> Result<u64> {
    let rsync = require("rsync", "rsync")?;
    let (src, dst) = (work.join("new"), work.join("old"));
    for d in [&src, &dst] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(new, src.join("moodle.sql.gz"))
        .with_context(|| format!("cannot copy {}", new.display()))?;
    std::fs::copy(old, dst.join("moodle.sql.gz"))
        .with_context(|| format!("cannot copy {}", old.display()))?;
    let out = Command::new(&rsync)
        .args(["--no-whole-file", "--stats", "-a"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .context("cannot run rsync")?;
    if !out.status.success() {
        bail!(
            "rsync failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let stat = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().replace(',', ""))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .with_context(|| format!("rsync --stats printed no '{name}': {text}"))
    };
    Ok(stat("Total bytes sent:")? + stat("Total bytes received:")?)
}

struct Day {
    actions: BTreeMap<Kind, u64>,
    hub_actions: u64,
    history_rows: u64,
    /// The gzip'd dump after yesterday, before the history was copied in.
    base_dump: u64,
    captured: u64,
    capture_time: Duration,
    pushed: u64,
    push_bytes: u64,
    pulled: u64,
    pull_bytes: u64,
    /// gzip and gzip --rsyncable sizes, at the start and the end of the day.
    dumps: [(u64, u64); 2],
    rsync: [u64; 2],
    run_time: Duration,
}

/// One day at the center (and the hub's part): run, captured, pushed and pulled; returns the actions
/// run, the center's changes, and the bytes and changes of the push and the pull.
struct Exchanged {
    actions: BTreeMap<Kind, u64>,
    hub_actions: u64,
    run_time: Duration,
    captured: u64,
    capture_time: Duration,
    logged: Vec<Change>,
    push_bytes: u64,
    pulled: u64,
    pull_bytes: u64,
}

fn live_day(w: &mut World, course: &Course, o: &Options, day: i64, nth: u64) -> Result<Exchanged> {
    let mut rng = StdRng::seed_from_u64(o.seed + nth);
    let enrolled = &course.students[..o.students.min(course.students.len())];
    let pending: Vec<i64> = course
        .students
        .iter()
        .skip(enrolled.len() + nth as usize * NEW_STUDENTS)
        .take(NEW_STUDENTS)
        .copied()
        .collect();
    let t = Instant::now();
    let center = &w.centers[0];
    let mut workload = Workload::new(o.seed + nth, center.id, course);
    let plan = plan_center(course, enrolled, &pending, day, &mut rng);
    let actions = run_plan(center, &mut workload, &plan)?;
    let mut hub_workload = Workload::new(o.seed + nth + 100, bed::HUB, course);
    let hub_actions = run_plan(&w.hub, &mut hub_workload, &plan_hub(course, day))?
        .values()
        .sum();
    let run_time = t.elapsed();

    let t = Instant::now();
    let captured = w.centers[0].site.capture(&w.policy)?.changes;
    let capture_time = t.elapsed();
    let (logged, push_bytes) = outbox(&mut w.centers[0], o.batch)?;
    push_all(w, 0, o.batch)?;
    let pages = read_pages(w, w.centers[0].id, o.batch)?;
    let pull_bytes = page_bytes(&pages)?;
    let (pulled, _) = apply_pages(w, w.centers[0].id, pages, o.batch)?;
    Ok(Exchanged {
        actions,
        hub_actions,
        run_time,
        captured,
        capture_time,
        logged,
        push_bytes,
        pulled,
        pull_bytes,
    })
}

/// Yesterday at the center, its inserts copied as `o.history` earlier days, then the measured day,
/// with the center's database dumped before and after it as moodlesync would.
fn day(w: &mut World, course: &Course, o: &Options, work: &Path, t0: Instant) -> Result<Day> {
    let yesterday = live_day(w, course, o, DAY_START - 86_400, 0)?;
    progress(t0, "yesterday run and exchanged");
    let base = dump(&w.centers[0], work, "base")?.0;
    let history_rows = seed_history(&w.centers[0], &w.policy, &yesterday.logged, o.history)?;
    progress(t0, &format!("{} days of history copied", o.history));
    let mut dumps = [(0, 0); 2];
    dumps[0] = dump(&w.centers[0], work, "start")?;
    progress(t0, "start-of-day dumps made");
    let today = live_day(w, course, o, DAY_START, 1)?;
    progress(t0, "the day run and exchanged");
    dumps[1] = dump(&w.centers[0], work, "end")?;
    let rsync = [
        rsync_delta(
            &work.join("start.sql.gz"),
            &work.join("end.sql.gz"),
            &work.join("rsync"),
        )?,
        rsync_delta(
            &work.join("start.sql.rsyncable.gz"),
            &work.join("end.sql.rsyncable.gz"),
            &work.join("rsync-rsyncable"),
        )?,
    ];
    progress(t0, "end-of-day dumps made and rsync'd");
    Ok(Day {
        actions: today.actions,
        hub_actions: today.hub_actions,
        history_rows,
        base_dump: base,
        captured: today.captured,
        capture_time: today.capture_time,
        pushed: today.logged.len() as u64,
        push_bytes: today.push_bytes,
        pulled: today.pulled,
        pull_bytes: today.pull_bytes,
        dumps,
        rsync,
        run_time: today.run_time,
    })
}

/// Copies the rows yesterday's `changes` created, as they stood at the end of the day, `days` times,
/// with fresh ids of the site's share and references among the copied rows following them, and
/// without the binlog (sync never sees them): the history a center's database holds, in the mix of
/// rows a real day writes. Rows one per user and course (last access, grades, enrolments) are kept
/// once (`INSERT IGNORE` on their unique keys), as in a real history.
fn seed_history(node: &Node, policy: &Policy, changes: &[Change], days: usize) -> Result<u64> {
    let mut rows: BTreeMap<(&str, i64), Row> = BTreeMap::new();
    for c in changes {
        let key = (c.table.as_str(), c.id);
        match &c.op {
            Op::Insert(row) => {
                rows.insert(key, row.clone());
            }
            Op::Update(cols) => {
                if let Some(row) = rows.get_mut(&key) {
                    row.extend(cols.clone());
                }
            }
            Op::Delete => {
                rows.remove(&key);
            }
        }
    }
    let mut by_table: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for ((table, _), row) in &rows {
        by_table.entry(table).or_default().push(row);
    }
    let mut conn = node.sql()?;
    conn.query_drop("SET SESSION sql_log_bin = 0")
        .context("cannot write without the binlog")?;
    let (increment, offset): (i64, i64) = conn
        .query_first("SELECT @@auto_increment_increment, @@auto_increment_offset")?
        .context("no auto-increment settings")?;
    let mut next: BTreeMap<&str, i64> = BTreeMap::new();
    for table in by_table.keys() {
        let max: Option<Option<i64>> =
            conn.query_first(format!("SELECT MAX(id) FROM {}{table}", bed::PREFIX))?;
        let above = max.flatten().unwrap_or(0) + 1;
        next.insert(table, above + (offset - above).rem_euclid(increment));
    }
    let references: BTreeMap<&str, Vec<(String, String)>> = by_table
        .keys()
        .map(|t| (*t, policy.references(t)))
        .collect();
    let mut written = 0;
    for _ in 0..days {
        // This copy's ids, so that its posts name its discussions and its replies its posts.
        let mut ids: BTreeMap<(&str, i64), i64> = BTreeMap::new();
        for (table, old) in rows.keys() {
            let id = next.entry(table).or_default();
            ids.insert((table, *old), *id);
            *id += increment;
        }
        let renumber = |table: &str, column: &str, value: &Value| -> mysql::Value {
            let target = if column == ID {
                Some(table)
            } else {
                references[table]
                    .iter()
                    .find(|(c, _)| c == column)
                    .map(|(_, t)| t.as_str())
            };
            match (target, value) {
                (Some(t), Value::Int(v)) => ids
                    .get(&(t, *v))
                    .map_or_else(|| to_sql(value), |new| mysql::Value::Int(*new)),
                _ => to_sql(value),
            }
        };
        let mut tx = conn.start_transaction(mysql::TxOpts::default())?;
        for (table, rows) in &by_table {
            let Some(first) = rows.first() else { continue };
            let columns: Vec<&String> = first.keys().collect();
            for chunk in rows.chunks(500) {
                let one = format!("({})", vec!["?"; columns.len()].join(", "));
                let sql = format!(
                    "INSERT IGNORE INTO {}{table} ({}) VALUES {}",
                    bed::PREFIX,
                    columns
                        .iter()
                        .map(|c| quote(c))
                        .collect::<Vec<_>>()
                        .join(", "),
                    vec![one; chunk.len()].join(", ")
                );
                let mut params = Vec::with_capacity(chunk.len() * columns.len());
                for row in chunk {
                    for c in &columns {
                        params.push(
                            row.get(*c)
                                .map_or(mysql::Value::NULL, |v| renumber(table, c, v)),
                        );
                    }
                }
                tx.exec_drop(sql, params)
                    .with_context(|| format!("cannot copy history into {table}"))?;
                written += tx.affected_rows();
            }
        }
        tx.commit()?;
    }
    Ok(written)
}

struct Rates {
    committed: u64,
    captured: u64,
    capture: Duration,
    accepted: u64,
    accept: Duration,
    page: u64,
    read: Duration,
    applied: u64,
    apply: Duration,
    /// Statements the center's server ran meanwhile: apply is bound by round trips.
    statements: u64,
}

/// Bulk Moodle-shaped changes at center 3, captured, pushed to the hub, and pulled by center 2 as one
/// page of about `rows` changes (the two-way ones: log rows stay at the hub).
fn rates(w: &mut World, course: &Course, o: &Options, t0: Instant) -> Result<Rates> {
    let written = bulk_activity(
        &mut w.centers[1].sql()?,
        course,
        o.rows + o.rows / 3,
        o.seed,
        DAY_START + 86_400,
    )?;
    progress(t0, "bulk changes committed");
    let t = Instant::now();
    let captured = w.centers[1].site.capture(&w.policy)?.changes;
    let capture = t.elapsed();
    let (accepted, accept) = push_all(w, 1, o.batch)?;
    progress(t0, "bulk changes captured and pushed");
    let t = Instant::now();
    let pages = read_pages(w, w.centers[0].id, o.rows as usize + o.rows as usize / 2)?;
    let read = t.elapsed();
    let page = pages.first().map_or(0, |p| p.changes.len() as u64);
    let before = statements(&mut w.centers[0].sql()?)?;
    let (applied, apply) = apply_pages(w, w.centers[0].id, pages, o.rows as usize * 2)?;
    let statements = statements(&mut w.centers[0].sql()?)?.saturating_sub(before);
    Ok(Rates {
        committed: written.rows,
        captured,
        capture,
        accepted,
        accept,
        page,
        read,
        applied,
        apply,
        statements,
    })
}

fn progress(t0: Instant, what: &str) {
    eprintln!("bench sync: {what} at {:.1} s", t0.elapsed().as_secs_f64());
}

fn per_second(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn kb(bytes: u64) -> String {
    format!("{:.1} KB", bytes as f64 / 1024.0)
}

fn run(o: &Options) -> Result<()> {
    let command: Vec<String> = std::env::args().collect();
    let t0 = Instant::now();
    let mut rows = if o.transport_only {
        Vec::new()
    } else {
        engine_rows(o, t0)?
    };
    if o.goodput_seconds > 0 {
        rows.extend(transport_rows(o, t0)?);
    }
    rows.push(row(
        "bench time".into(),
        format!("{:.1} s", t0.elapsed().as_secs_f64()),
        None,
    ));
    println!("`{}`", command.join(" "));
    println!();
    println!("| measure | result | target | met |");
    println!("|---|---|---|---|");
    for (measure, result, target) in rows {
        let (target, met) = match target {
            Some((t, m)) => (t, if m { "yes" } else { "NO" }.to_owned()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!("| {measure} | {result} | {target} | {met} |");
    }
    Ok(())
}

/// The engine's rows: capture and apply rates, and the simulated day's bytes against moodlesync.
fn engine_rows(o: &Options, t0: Instant) -> Result<Vec<TableRow>> {
    let work = tempfile::Builder::new()
        .prefix("kituo-bench-sync")
        .tempdir()?;
    let mut w = bed::world("kituo-bench-sync-world", 2)?;
    let world_time = t0.elapsed();
    let course = {
        let mut hub = w.hub.sql()?;
        Course::install(
            &mut hub,
            o.students + 2 * NEW_STUDENTS,
            TEACHERS,
            o.students,
            DAY_START - 2 * 86_400,
        )?
    };
    w.sync_all()?;
    progress(t0, "sites and course ready");
    let d = day(&mut w, &course, o, work.path(), t0)?;
    let r = rates(&mut w, &course, o, t0)?;

    let actions: u64 = d.actions.values().sum();
    let ours = d.push_bytes + d.pull_bytes;
    let ratio = |baseline: u64| baseline as f64 / ours.max(1) as f64;
    let apply_rate = per_second(r.applied, r.apply);
    let rows = [
        row(
            format!("capture: {} Moodle-shaped row changes committed at a center (replies, their post_created log rows, user and course last access, discussions), then `Site::capture`", r.committed),
            format!("{:.0} rows/s ({} rows in {:.2} s)", per_second(r.captured, r.capture), r.captured, r.capture.as_secs_f64()),
            None,
        ),
        row(
            format!("hub accept: that outbox pushed by `agent::push_once` in batches of {} (in-process link)", o.batch),
            format!("{:.0} rows/s ({} in {:.2} s)", per_second(r.accepted, r.accept), r.accepted, r.accept.as_secs_f64()),
            None,
        ),
        row(
            format!("apply at a center: one page of {} changes from the hub (post inserts, user and course last-access and discussion updates) through `agent::pull_once`", r.page),
            format!("{apply_rate:.0} rows/s ({} in {:.2} s, {:.2} statements per change; reading the page at the hub: {:.2} s)", r.applied, r.apply.as_secs_f64(), r.statements as f64 / r.applied.max(1) as f64, r.read.as_secs_f64()),
            Some((format!(">= {APPLY_TARGET:.0} rows/s"), apply_rate >= APPLY_TARGET)),
        ),
        row(
            format!("one day at a {}-student, {TEACHERS}-teacher center: actions (and {} at the hub)", o.students, d.hub_actions),
            format!("{actions} in {:.1} s: {}", d.run_time.as_secs_f64(), d.actions.iter().map(|(k, n)| format!("{} {n}", k.name())).collect::<Vec<_>>().join(", ")),
            None,
        ),
        row(
            "the day's row changes captured at the center".into(),
            format!("{} ({:.0} rows/s)", d.captured, per_second(d.captured, d.capture_time)),
            None,
        ),
        row(
            format!("wire, push: {} changes in batches of {} (`change::encode`: MessagePack and zstd)", d.pushed, o.batch),
            kb(d.push_bytes),
            None,
        ),
        row(
            format!("wire, pull: {} changes (the hub's part of the day)", d.pulled),
            kb(d.pull_bytes),
            None,
        ),
        row(
            format!("the center's database before the day: {} days of history (yesterday's rows copied, {} rows)", o.history, d.history_rows),
            format!("gzip'd dump {} at the start, {} at the end of the day", kb(d.dumps[0].0), kb(d.dumps[1].0)),
            None,
        ),
        row(
            "moodlesync: the gzip'd mysqldump updated by `rsync --no-whole-file` (bytes sent + received)".into(),
            kb(d.rsync[0]),
            None,
        ),
        row(
            format!("ratio: moodlesync bytes / sync bytes (push + pull: {})", kb(ours)),
            format!("{:.0}x", ratio(d.rsync[0])),
            Some((format!(">= {RATIO_TARGET:.0}x"), ratio(d.rsync[0]) >= RATIO_TARGET)),
        ),
        row(
            "estimate: days of this center's history at which moodlesync (whose plain gzip'd dump rsync moves almost whole) moves 100x sync's bytes".into(),
            break_even(&d, o.history, ours),
            None,
        ),
        row(
            format!("the same with `gzip --rsyncable` dumps ({} / {}; rsync moved {})", kb(d.dumps[0].1), kb(d.dumps[1].1), kb(d.rsync[1])),
            format!("{:.0}x", ratio(d.rsync[1])),
            None,
        ),
    ];
    let mut rows = rows.to_vec();
    rows.push(row(
        "starting 3 MariaDB servers with Moodle's schema".into(),
        format!("{:.1} s", world_time.as_secs_f64()),
        None,
    ));
    Ok(rows)
}

/// The transport's rows: goodput over the emulated link, and the agent's memory with a large outbox.
fn transport_rows(o: &Options, t0: Instant) -> Result<Vec<TableRow>> {
    let g = link::goodput(
        256_000,
        Duration::from_secs(30),
        o.goodput_seconds,
        // More than the link can move in the window: it must stay busy to the end.
        250_000,
        o.seed,
    )?;
    progress(t0, "goodput measured");
    let m = link::memory(o.backlog, 30, o.seed)?;
    progress(t0, "agent memory measured");
    let fraction = g.fraction();
    Ok(vec![
        row(
            format!(
                "goodput: `appliance sync run` pushing its backlog to `appliance hub` over an emulated {} kbit/s link cut every {} s, for {:.0} s ({} cuts): acknowledged changes' wire bytes / link capacity",
                g.link_bps / 1000, g.cut_every.as_secs(), g.seconds, g.cuts
            ),
            format!("{:.0}% ({} changes, {})", fraction * 100.0, g.acked, kb(g.useful_bytes)),
            Some((">= 80%".into(), fraction >= 0.8)),
        ),
        row(
            format!(
                "agent memory: `appliance sync run` with {} changes in its outbox, highest RSS over {:.0} s (it pushed {} meanwhile)",
                m.backlog, m.seconds, m.acked
            ),
            format!("{:.1} MB", m.max_rss_kib as f64 / 1024.0),
            Some(("<= 24 MB".into(), m.max_rss_kib <= 24 * 1024)),
        ),
    ])
}

/// Days of history at which the plain dump, which rsync moves whole, is `RATIO_TARGET` times the
/// day's sync bytes, from the dump's growth per day of history copied in (straight-line: every day
/// of history is a copy of a real day).
fn break_even(d: &Day, history: usize, ours: u64) -> String {
    if history == 0 {
        return "- (no history copied)".into();
    }
    let per_day = d.dumps[0].0.saturating_sub(d.base_dump) as f64 / history as f64;
    if per_day <= 0.0 {
        return "-".into();
    }
    // The base dump holds the schema, the course and one day.
    let days = (RATIO_TARGET * ours as f64 - d.base_dump as f64) / per_day + 1.0;
    format!(
        "about {days:.0} days (each day of history adds {} to the gzip'd dump; {} with one day)",
        kb(per_day as u64),
        kb(d.base_dump)
    )
}

type TableRow = (String, String, Option<(String, bool)>);

fn row(measure: String, result: String, target: Option<(String, bool)>) -> TableRow {
    (measure, result, target)
}

/// Statements a server has run since it started (its `Questions` counter).
fn statements(c: &mut mysql::Conn) -> Result<u64> {
    let row: Option<(String, u64)> = c
        .query_first("SHOW GLOBAL STATUS LIKE 'Questions'")
        .context("cannot read the server's statement count")?;
    Ok(row.map_or(0, |(_, n)| n))
}

fn main() -> Result<()> {
    use clap::Parser;
    run(&Options::parse())
}
