//! `cargo bench -p kituo-tests --bench capture_lag [-- --seconds 60]`: how long a center's change waits
//! between its commit and its capture (the moment it is stamped and in the outbox), with the agent as
//! deployed (`appliance sync run` against `appliance hub`, real MariaDB sites), printed as a markdown
//! table: at idle and under a writer that replies as fast as MariaDB lets it, with the continuous
//! capture (`[sync] capture_ms`, 500 by default) against capture at exchanges only, as before it
//! (`interval_seconds` 30, the follower slowed to its longest period).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService,
};
use kituo_tests::bed::{self, Node};
use kituo_tests::testbed::wait_for;

#[derive(clap::Parser, Debug)]
pub struct Options {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Seconds of probes in each row.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Probe posts written per second.
    #[arg(long, default_value_t = 5)]
    pub probes_per_second: u64,
}

const TARGET_P99_MS: f64 = 1000.0;

/// One row: how the agent runs and whether a writer loads the site.
struct Case {
    name: &'static str,
    interval_seconds: u64,
    capture_ms: u64,
    loaded: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "continuous (500 ms), idle",
        interval_seconds: 30,
        capture_ms: 500,
        loaded: false,
    },
    Case {
        name: "continuous (500 ms), writer at full speed",
        interval_seconds: 30,
        capture_ms: 500,
        loaded: true,
    },
    Case {
        name: "at exchanges only (every 30 s), idle",
        interval_seconds: 30,
        capture_ms: 60_000,
        loaded: false,
    },
];

struct Measured {
    lags_ms: Vec<f64>,
    writes_per_second: f64,
}

fn main() -> Result<()> {
    use clap::Parser;
    let o = Options::parse();
    println!("| capture | probes | p50 ms | p99 ms | max ms | load (replies/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut p99s = Vec::new();
    for case in CASES {
        let m = measure(&o, case).with_context(|| case.name)?;
        let mut lags = m.lags_ms;
        lags.sort_by(f64::total_cmp);
        let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            case.name,
            lags.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            m.writes_per_second
        );
        p99s.push(at(0.99));
    }
    println!(
        "\np99 target {TARGET_P99_MS:.0} ms: idle {}, loaded {}; exchanges only / continuous at p99: {:.0}x",
        verdict(p99s[0]),
        verdict(p99s[1]),
        p99s[2] / p99s[0]
    );
    Ok(())
}

fn verdict(p99: f64) -> &'static str {
    if p99 < TARGET_P99_MS {
        "met"
    } else {
        "MISSED"
    }
}

fn measure(o: &Options, case: &Case) -> Result<Measured> {
    let exe = kituo_tests::appliance_release();
    let w = bed::world("kituo-bench-lag", 1)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe, &w.hub, &dir)?;
    let center = &w.centers[0];
    let secret = hub.add_center(exe, center.id)?;
    let password = engine_account(center, &dir)?;
    let mut opts = AgentOptions::new(hub.addr, secret);
    opts.interval_seconds = case.interval_seconds;
    let config = center_config(center, &dir, &opts, &password, "")?;
    let text = std::fs::read_to_string(&config)?;
    let text = text.replace(
        "[sync]\n",
        &format!("[sync]\ncapture_ms = {}\n", case.capture_ms),
    );
    std::fs::write(&config, text)?;
    let mut agent = AgentService::start(exe, &config, dir.join("agent.log"))?;
    // The first exchange reads the hub's clock; the follower captures only after it.
    let first = bed::reply(center, 3, "before the probes", 1000)? as i64;
    let seen = wait_for(Duration::from_secs(60), || {
        captured_after(center, first - 1)
            .ok()
            .filter(|v| !v.is_empty())
    });
    seen.context("the agent never captured; see agent.log")?;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = case.loaded.then(|| {
        let (stop, written, opts) = (stop.clone(), written.clone(), center.db.opts());
        std::thread::spawn(move || -> Result<()> {
            let mut conn = moodle(opts)?;
            while !stop.load(Ordering::Relaxed) {
                bed::reply_on(&mut conn, 4, "load", 2000)?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    });
    let probes: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let prober = {
        let (stop, probes, opts) = (stop.clone(), probes.clone(), center.db.opts());
        let every = Duration::from_millis(1000 / o.probes_per_second.max(1));
        std::thread::spawn(move || -> Result<()> {
            let mut conn = moodle(opts)?;
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                let id = bed::reply_on(&mut conn, 3, "probe", 3000)? as i64;
                probes
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert(id, at);
                std::thread::sleep(every.saturating_sub(at.elapsed()));
            }
            Ok(())
        })
    };

    let started = Instant::now();
    let mut lags = Vec::new();
    let mut last = first;
    // Probes still uncaptured when the writing stops are waited for, up to two exchanges.
    let end = started + Duration::from_secs(o.seconds);
    let give_up = end + Duration::from_secs(2 * case.interval_seconds + 5);
    while Instant::now() < give_up {
        if Instant::now() >= end {
            stop.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        let fresh = captured_after(center, last)?;
        let mut table = probes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for id in fresh {
            last = last.max(id);
            if let Some(at) = table.remove(&id) {
                lags.push(now.duration_since(at).as_secs_f64() * 1000.0);
            }
        }
        if stop.load(Ordering::Relaxed) && table.is_empty() {
            break;
        }
        drop(table);
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    prober
        .join()
        .map_err(|_| anyhow::anyhow!("the prober panicked"))??;
    if let Some(w) = writer {
        w.join()
            .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    }
    anyhow::ensure!(
        agent.is_running(),
        "the agent died:\n{}",
        agent.proc.log_text()
    );
    anyhow::ensure!(!lags.is_empty(), "no probe was captured");
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Measured {
        lags_ms: lags,
        writes_per_second: written.load(Ordering::Relaxed) as f64 / elapsed,
    })
}

/// Posts the engine has stamped (their row clocks exist) with ids above `after`.
fn captured_after(node: &Node, after: i64) -> Result<Vec<i64>> {
    let mut c = node.sql()?;
    Ok(c.exec(
        "SELECT row_id FROM kituo_sync.clock WHERE tbl = 'forum_posts' AND row_id > ?",
        (after,),
    )?)
}

/// A connection as Moodle has one, for a thread of its own.
fn moodle(opts: mysql::Opts) -> Result<mysql::Conn> {
    let mut c = mysql::Conn::new(opts).context("cannot connect to the center")?;
    c.query_drop(format!("USE {}", bed::DB))?;
    Ok(c)
}
