//! The workload generator at a hub and two centers, each a real MariaDB with Moodle's schema: Moodle's
//! own SQL for logins, page views, forum posts, edits, deletes, submissions, grades and enrolments, run
//! at every site at once while sync runs, must leave every two-way table identical everywhere, every
//! center's log rows at the hub, and every post created present exactly once (unless deleted).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kituo_tests::bed::{world, Node, INCREMENT};
use kituo_tests::workload::{
    fill_outbox, Action, Course, Kind, PostLedger, Workload, TWO_WAY_TABLES,
};
use mysql::prelude::Queryable;

/// Sync rounds run while the workloads run, the most steps a workload takes meanwhile, and its pause
/// between steps (so that more than one round overlaps the workloads).
const ROUNDS: usize = 3;
const MAX_STEPS: usize = 400;
const PACE: Duration = Duration::from_millis(40);

fn same_kinds(a: &[Action], b: &[Action]) -> Vec<(Kind, i64, bool)> {
    let strip = |v: &[Action]| -> Vec<(Kind, i64, bool)> {
        v.iter().map(|x| (x.kind, x.user, x.skipped)).collect()
    };
    let (a, b) = (strip(a), strip(b));
    assert_eq!(
        a, b,
        "one seed, one state: the same actions by the same users"
    );
    a
}

type Rows = Vec<Vec<Option<String>>>;

/// The logs a site wrote itself: ids of its auto-increment share.
fn own(rows: &Rows, site: u32) -> BTreeSet<Vec<Option<String>>> {
    rows.iter()
        .filter(|r| {
            r.first()
                .and_then(|id| id.as_deref())
                .and_then(|id| id.trim_matches('\'').parse::<u64>().ok())
                .is_some_and(|id| id % u64::from(INCREMENT) == u64::from(site))
        })
        .cloned()
        .collect()
}

/// As `World::assert_same_everywhere`, naming the rows that differ.
fn same_everywhere(hub: &Node, centers: &[Node], table: &str) -> Result<()> {
    let at_hub: BTreeSet<_> = hub.dump(table)?.into_iter().collect();
    for c in centers {
        let here: BTreeSet<_> = c.dump(table)?.into_iter().collect();
        let only_hub: Vec<_> = at_hub.difference(&here).collect();
        let only_here: Vec<_> = here.difference(&at_hub).collect();
        ensure!(
            only_hub.is_empty() && only_here.is_empty(),
            "{table} differs between the hub and center {}:\n only at the hub: {only_hub:?}\n only at the center: {only_here:?}",
            c.id
        );
    }
    Ok(())
}

#[test]
fn moodle_actions_at_every_site_converge_with_every_post_once() -> Result<()> {
    let t0 = Instant::now();
    let mut w = world("kituo-sync-workload", 2)?;
    let course = Course::install(&mut w.hub.sql()?, 40, 3, 32, 1_767_250_000)?;
    w.sync_all()?;
    eprintln!(
        "world and course ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // One seed at both centers, from the same state, with sync paused: the same actions. Each
    // center's copy then reaches the other, so the centers also meet the same users' concurrent
    // enrolments, grades and first course visits (unique-key clashes) in what follows.
    let mut a = Workload::new(11, 2, &course);
    let mut b = Workload::new(11, 3, &course);
    let (mut ca, mut cb) = (w.centers[0].sql()?, w.centers[1].sql()?);
    let (mut run_a, mut run_b) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        run_a.push(a.step(&mut ca)?);
        run_b.push(b.step(&mut cb)?);
    }
    let sequence = same_kinds(&run_a, &run_b);
    let kinds: BTreeSet<Kind> = sequence.iter().map(|(k, _, _)| *k).collect();
    ensure!(kinds.len() >= 6, "60 steps drew only {kinds:?}");
    let mut other = Workload::new(12, 2, &course);
    let mut other_run = Vec::new();
    for _ in 0..20 {
        other_run.push(other.step(&mut w.centers[0].sql()?)?.kind);
    }
    ensure!(
        other_run != sequence[..20].iter().map(|x| x.0).collect::<Vec<_>>(),
        "another seed drew the same actions"
    );

    w.sync_all()?;

    // Every site at once, sync running meanwhile.
    let hub_workload = Workload::new(7, 1, &course);
    let t1 = Instant::now();
    let mut finished = Vec::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = [
            (a, ca),
            (b, cb),
            (other, w.centers[0].sql()?),
            (hub_workload, w.hub.sql()?),
        ]
        .into_iter()
        .map(|(mut workload, mut conn)| {
            let stop = &stop;
            scope.spawn(move || -> Result<(Workload, usize)> {
                let mut steps = 0;
                while steps < MAX_STEPS && !stop.load(Ordering::Relaxed) {
                    workload.step(&mut conn)?;
                    steps += 1;
                    std::thread::sleep(PACE);
                }
                Ok((workload, steps))
            })
        })
        .collect();
        let mut synced = Ok(());
        for round in 0..ROUNDS {
            let t = Instant::now();
            synced = w.sync_all().context("sync while the workloads run");
            eprintln!("sync round {round}: {:.1} s", t.elapsed().as_secs_f64());
            if synced.is_err() || handles.iter().all(|h| h.is_finished()) {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let (workload, steps) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a workload thread panicked"))??;
            eprintln!("site {}: {steps} steps while syncing", workload.site());
            finished.push(workload);
        }
        synced
    })?;
    w.sync_all()?;
    eprintln!("concurrent phase: {:.1} s", t1.elapsed().as_secs_f64());

    let mut done: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut ledger = PostLedger::default();
    for workload in &finished {
        for (k, n) in workload.done() {
            *done.entry(*k).or_default() += n;
        }
        ledger.add(workload);
        eprintln!(
            "done {:?} skipped {:?} retries {}",
            workload.done(),
            workload.skipped(),
            workload.retries()
        );
    }
    for kind in Kind::ALL {
        ensure!(
            done.get(&kind).copied().unwrap_or(0) > 0,
            "no '{}' ran: {done:?}",
            kind.name()
        );
    }
    ensure!(
        ledger.created.len() as u64 >= done[&Kind::StartDiscussion] + done[&Kind::Reply],
        "every new post has its own marker"
    );

    for table in TWO_WAY_TABLES {
        same_everywhere(&w.hub, &w.centers, table)?;
    }
    // Centers 2 and 3 run one seed: they signed up the same login names, for two people each time.
    let clashes = appliance::sync::engine::clash::recent(&mut w.hub.sql()?, 100)?;
    ensure!(
        clashes
            .iter()
            .any(|c| c.table == "user" && c.old.starts_with("newcomer")),
        "the centers' signups of one name were kept apart: {clashes:?}"
    );
    ensure!(
        ledger.uncertain.is_empty(),
        "no server died: every commit was answered"
    );
    for node in std::iter::once(&w.hub).chain(&w.centers) {
        ledger.check(node.id, &mut node.sql()?)?;
    }
    // Logs go to the hub only: it holds its own and every center's, each center only its own.
    let hub_logs = w.hub.dump("logstore_standard_log")?;
    let mut expected = own(&hub_logs, 1);
    ensure!(
        !expected.is_empty(),
        "the hub's own workload logged nothing"
    );
    for c in &w.centers {
        let rows = c.dump("logstore_standard_log")?;
        ensure!(
            own(&rows, c.id).len() == rows.len(),
            "center {} holds logs of other sites",
            c.id
        );
        ensure!(
            own(&hub_logs, c.id) == own(&rows, c.id),
            "the hub's copy of center {}'s logs differs",
            c.id
        );
        expected.extend(rows);
    }
    ensure!(
        expected.len() == hub_logs.len(),
        "the hub holds log rows no site wrote"
    );

    // The transport benchmarks' outbox filler: its changes travel and apply like captured ones.
    let posts_before = w.hub.dump("forum_posts")?.len();
    let filled = fill_outbox(&mut w.centers[1].sql()?, 3, &course, 1_000, 5)?;
    ensure!(filled.changes == 1_000 && filled.last_seq - filled.first_seq == 999);
    w.sync_all()?;
    let posts = w.hub.dump("forum_posts")?.len();
    ensure!(
        posts == posts_before + 200,
        "1,000 filled changes hold 200 posts: {posts_before} -> {posts}"
    );
    // They are in the outbox only, not in the filling center's tables: the other center matches the hub.
    for table in ["forum_posts", "forum_discussions", "user"] {
        same_everywhere(&w.hub, &w.centers[..1], table)?;
    }
    // The filling center's next post takes an id past the filled ones.
    w.centers[1].sql()?.query_drop(
        "INSERT INTO mdl_forum_posts (discussion, parent, userid, subject, message) VALUES (1, 1, 3, 'after', 'x')",
    )?;
    w.sync_all()?;
    ensure!(w.hub.dump("forum_posts")?.len() == posts + 1);
    same_everywhere(&w.hub, &w.centers[..1], "forum_posts")?;

    eprintln!(
        "posts created {}, deleted {}, log rows at the hub {}; total {:.1} s",
        ledger.created.len(),
        ledger.deleted.len(),
        hub_logs.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
