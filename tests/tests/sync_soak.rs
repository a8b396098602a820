//! The soak: a hub and two centers, every site running Moodle's own SQL for real user actions at once,
//! the centers' agents (`appliance sync run`) reaching the hub (`appliance hub`) through links that
//! throttle, stall and cut, while agents and a center's MariaDB are killed with SIGKILL at random
//! moments. Seeded: the same seed draws the same faults in the same order. It ends when at least 200
//! cuts and 50 kills have happened; then the links heal and every center must verify identical to the
//! hub, with every post created present exactly once everywhere.
//!
//! `KITUO_SOAK_SEED` picks the seed (default 1); `KITUO_SOAK_CUTS` and `KITUO_SOAK_KILLS` raise the
//! thresholds for a longer run (e.g. 2000 and 500).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService,
};
use kituo_tests::bed::world;
use kituo_tests::linkem::{LinkProfile, LinkProxy};
use kituo_tests::testbed::MariaDb;
use kituo_tests::workload::{Course, PostLedger, Workload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn exe() -> &'static std::path::Path {
    kituo_tests::appliance_binary()
}

/// A link as bad as the worst centers': slow, with latency, random cuts and stalls.
fn bad_link(seed: u64) -> LinkProfile {
    LinkProfile::default()
        .rate_bps(2_000_000)
        .latency(Duration::from_millis(30))
        .seed(seed)
        .cut_mean_bytes(12_000)
        .stalls(100_000, Duration::from_secs(2))
}

/// What the chaos did.
#[derive(Debug, Default)]
struct Tally {
    explicit_cuts: u64,
    agent_kills: u64,
    db_kills: u64,
    stalls: u64,
}

/// Runs a site's users until `stop`, reconnecting when their MariaDB was killed under them.
fn users(
    mut workload: Workload,
    opts: mysql::Opts,
    stop: &AtomicBool,
    failures: &AtomicU64,
) -> Workload {
    let mut conn: Option<mysql::Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = mysql::Conn::new(opts.clone()).ok();
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let _ = mysql::prelude::Queryable::query_drop(
                conn.as_mut().expect("just connected"),
                "USE moodle",
            );
        }
        let c = conn.as_mut().expect("connected");
        if workload.step(c).is_err() {
            // A killed server, or a request that lost every retry: Moodle shows an error page and
            // the user tries again later.
            failures.fetch_add(1, Ordering::Relaxed);
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    workload
}

#[test]
fn seeded_soak_with_cuts_and_kills_ends_identical_with_every_post_once() -> Result<()> {
    let seed = env_u64("KITUO_SOAK_SEED", 1);
    let want_cuts = env_u64("KITUO_SOAK_CUTS", 200);
    let want_kills = env_u64("KITUO_SOAK_KILLS", 50);
    let t0 = Instant::now();
    let mut w = world("kituo-sync-soak", 2)?;
    let course = Course::install(&mut w.hub.sql()?, 40, 3, 32, 1_767_250_000)?;
    w.sync_all()?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe(), &w.hub, &dir)?;
    let mut proxies = Vec::new();
    let mut agents = Vec::new();
    let mut configs = Vec::new();
    for c in &w.centers {
        let secret = hub.add_center(exe(), c.id)?;
        let proxy = LinkProxy::start(hub.addr, bad_link(seed * 100 + u64::from(c.id)))?;
        let password = engine_account(c, &dir)?;
        let mut opts = AgentOptions::new(proxy.addr(), secret);
        // A stall longer than this counts as a cut: the agent gives up and reconnects.
        opts.timeout_seconds = 5;
        // Retry within a second: the chaos cuts each new connection it sees, so the backoff sets
        // how fast cuts can come.
        opts.backoff_max_seconds = 1;
        opts.batch_changes = 200;
        let config = center_config(c, &dir, &opts, &password, "")?;
        agents.push(AgentService::start(
            exe(),
            &config,
            dir.join(format!("agent{}.log", c.id)),
        )?);
        configs.push(config);
        proxies.push(proxy);
    }
    eprintln!(
        "soak: seed {seed}, ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let stop = AtomicBool::new(false);
    let failures = AtomicU64::new(0);
    let site_opts: Vec<(u32, mysql::Opts)> = std::iter::once(&w.hub)
        .chain(&w.centers)
        .map(|n| (n.id, n.db.opts()))
        .collect();
    let mut dbs: Vec<&mut MariaDb> = w.centers.iter_mut().map(|c| &mut c.db).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let cuts = |proxies: &[LinkProxy]| proxies.iter().map(|p| p.stats().cuts).sum::<u64>();
    let chaos_start = Instant::now();
    let workloads: Vec<Workload> = std::thread::scope(|scope| -> Result<Vec<Workload>> {
        let threads: Vec<_> = site_opts
            .iter()
            .map(|(site, opts)| {
                let workload = Workload::new(seed * 10 + u64::from(*site), *site, &course);
                let (stop, failures, opts) = (&stop, &failures, opts.clone());
                scope.spawn(move || users(workload, opts, stop, failures))
            })
            .collect();
        let chaos = (|| -> Result<()> {
            loop {
                let need_cuts = cuts(&proxies) < want_cuts;
                let need_kills = tally.agent_kills + tally.db_kills < want_kills;
                if !need_cuts && !need_kills {
                    return Ok(());
                }
                ensure!(
                    chaos_start.elapsed() < Duration::from_secs(900),
                    "the chaos did not reach its counts in 15 minutes: {tally:?}, {} cuts",
                    cuts(&proxies)
                );
                std::thread::sleep(Duration::from_millis(rng.gen_range(100..400)));
                let i = rng.gen_range(0..agents.len());
                // Once a count is reached the chaos spends its time on the other.
                let roll = match (need_cuts, need_kills) {
                    (true, true) => rng.gen_range(0..100),
                    (true, false) => rng.gen_range(0..50),
                    _ => rng.gen_range(50..88),
                };
                match roll {
                    0..=39 => {
                        // A cut where a request is under way; the other link if this one is idle.
                        if proxies[i].cut_all() == 0 {
                            proxies[(i + 1) % proxies.len()].cut_all();
                        }
                        tally.explicit_cuts += 1;
                    }
                    40..=49 => {
                        proxies[i].stall_all(Duration::from_millis(rng.gen_range(500..3000)));
                        tally.stalls += 1;
                    }
                    50..=74 => {
                        agents[i].proc.kill();
                        std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
                        agents[i].restart(exe())?;
                        tally.agent_kills += 1;
                    }
                    _ => {
                        dbs[i].kill();
                        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
                        dbs[i]
                            .restart()
                            .context("restart a killed center's MariaDB")?;
                        tally.db_kills += 1;
                    }
                }
            }
        })();
        stop.store(true, Ordering::Relaxed);
        let mut finished = Vec::new();
        for t in threads {
            finished.push(
                t.join()
                    .map_err(|_| anyhow::anyhow!("a workload thread panicked"))?,
            );
        }
        chaos.map(|_| finished)
    })?;
    let total_cuts = cuts(&proxies);
    eprintln!(
        "soak: chaos over in {:.1} s: {tally:?}, {total_cuts} cuts in all, {} failed user requests",
        chaos_start.elapsed().as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    ensure!(total_cuts >= want_cuts, "only {total_cuts} cuts");
    ensure!(tally.agent_kills + tally.db_kills >= want_kills);
    ensure!(tally.agent_kills > 0 && tally.db_kills > 0, "{tally:?}");

    // The links heal; every center must come level with the hub and verify identical.
    for p in &proxies {
        p.set_profile(LinkProfile::default())?;
    }
    for a in &mut agents {
        if !a.is_running() {
            a.restart(exe())?;
        }
    }
    let settled = Instant::now();
    for config in &configs {
        verify_until_identical(config, Duration::from_secs(180)).inspect_err(|_| {
            for a in &agents {
                eprintln!("--- {}\n{}", a.proc.log.display(), tail(&a.proc.log_text()));
            }
            eprintln!("--- hub\n{}", tail(&hub.proc.log_text()));
        })?;
    }
    eprintln!(
        "soak: identical {:.1} s after the chaos",
        settled.elapsed().as_secs_f64()
    );

    let mut ledger = PostLedger::default();
    for workload in &workloads {
        ledger.add(workload);
    }
    ensure!(
        ledger.created.len() >= 20,
        "only {} posts were created",
        ledger.created.len()
    );
    for node in std::iter::once(&w.hub).chain(&w.centers) {
        ledger.check(node.id, &mut node.sql()?)?;
    }
    eprintln!(
        "soak: {} posts created, {} deleted, {} uncertain, total {:.1} s",
        ledger.created.len(),
        ledger.deleted.len(),
        ledger.uncertain.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `appliance sync verify` until it reports the center identical to the hub.
fn verify_until_identical(config: &std::path::Path, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let out = std::process::Command::new(kituo_tests::appliance_binary())
            .args(["sync", "verify", "--config"])
            .arg(config)
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let identical =
            out.status.success() && said.contains(": identical") && !said.contains("not yet");
        if identical {
            return Ok(());
        }
        if Instant::now() >= end {
            anyhow::bail!(
                "{} never verified identical; last report:\n{said}{}",
                config.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
