//! One simulated day of a 200-student center: what its people do, what sync puts on the wire for it,
//! and what a nightly mysqldump updated by rsync would have sent instead.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use appliance::sync::engine::change::{Change, Op, Row, Value};
use appliance::sync::engine::policy::{Policy, Ref};
use appliance::sync::engine::sql::{quote, to_sql, ID};
use kituo_tests::bed::{self, Node, World};
use kituo_tests::testbed::require;
use kituo_tests::workload::{Course, Kind, Workload};
use mysql::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    apply_pages, outbox, page_bytes, progress, push_all, read_pages, Options, DAY_START,
    NEW_STUDENTS,
};

pub(super) struct Planned {
    at: i64,
    kind: Kind,
    actor: Option<i64>,
    subject: Option<i64>,
}

/// One user's visit: `acts` a few minutes apart from `start`. Edits are left to the workload, which
/// picks the post and lets its author or a teacher edit it.
pub(super) fn session(
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
pub(super) fn plan_center(
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
pub(super) fn plan_hub(course: &Course, day: i64) -> Vec<Planned> {
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

pub(super) fn run_plan(
    node: &Node,
    workload: &mut Workload,
    plan: &[Planned],
) -> Result<BTreeMap<Kind, u64>> {
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
pub(super) fn dump(node: &Node, dir: &Path, name: &str) -> Result<(u64, u64)> {
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
pub(super) fn rsync_delta(old: &Path, new: &Path, work: &Path) -> Result<u64> {
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

pub(super) struct Day {
    pub(super) actions: BTreeMap<Kind, u64>,
    pub(super) hub_actions: u64,
    pub(super) history_rows: u64,
    /// The gzip'd dump after yesterday, before the history was copied in.
    pub(super) base_dump: u64,
    pub(super) captured: u64,
    pub(super) capture_time: Duration,
    pub(super) pushed: u64,
    pub(super) push_bytes: u64,
    pub(super) pulled: u64,
    pub(super) pull_bytes: u64,
    /// gzip and gzip --rsyncable sizes, at the start and the end of the day.
    pub(super) dumps: [(u64, u64); 2],
    pub(super) rsync: [u64; 2],
    pub(super) run_time: Duration,
}

/// One day at the center (and the hub's part): run, captured, pushed and pulled; returns the actions
/// run, the center's changes, and the bytes and changes of the push and the pull.
pub(super) struct Exchanged {
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

pub(super) fn live_day(
    w: &mut World,
    course: &Course,
    o: &Options,
    day: i64,
    nth: u64,
) -> Result<Exchanged> {
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
pub(super) fn simulate(
    w: &mut World,
    course: &Course,
    o: &Options,
    work: &Path,
    t0: Instant,
) -> Result<Day> {
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
pub(super) fn seed_history(
    node: &Node,
    policy: &Policy,
    changes: &[Change],
    days: usize,
) -> Result<u64> {
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
    let references: BTreeMap<&str, &[Ref]> = by_table
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
                    .find(|r| r.column == column && r.when.is_empty())
                    .map(|r| r.table.as_str())
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
