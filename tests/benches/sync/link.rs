//! The rows of `appliance bench sync` that need the transport as deployed: the hub (`appliance hub`) and
//! a center's agent (`appliance sync run`) as processes, a center's outbox filled with realistic
//! changes, and the emulated link between them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use appliance::sync::engine::{change, store};
use appliance::sync::exchange::agent::PUSHED;
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService,
};
use kituo_tests::bed::{self, World};
use kituo_tests::linkem::{LinkProfile, LinkProxy};
use kituo_tests::workload;

/// Goodput of the agent pushing its backlog over a slow link that is cut on a schedule.
pub struct Goodput {
    pub link_bps: u64,
    pub cut_every: Duration,
    pub seconds: f64,
    pub acked: u64,
    /// Wire bytes of the acknowledged changes (zstd batches of the agent's size).
    pub useful_bytes: u64,
    pub cuts: u64,
}

impl Goodput {
    pub fn fraction(&self) -> f64 {
        self.useful_bytes as f64 * 8.0 / (self.link_bps as f64 * self.seconds)
    }
}

/// The agent's memory while it works through a large backlog.
pub struct Memory {
    pub backlog: u64,
    pub max_rss_kib: u64,
    pub acked: u64,
    pub seconds: f64,
}

/// A hub and one center whose outbox holds `changes` changes, and the agent's options.
fn stage(
    name: &str,
    changes: u64,
    seed: u64,
) -> Result<(World, HubService, PathBuf, AgentOptions)> {
    let mut w = bed::world(name, 1)?;
    let course = workload::Course::install(&mut w.hub.sql()?, 40, 3, 32, 1_772_427_600)?;
    w.sync_all()?;
    let center = &w.centers[0];
    workload::fill_outbox(&mut center.sql()?, center.id, &course, changes, seed)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(kituo_tests::appliance_release(), &w.hub, &dir)?;
    let secret = hub.add_center(kituo_tests::appliance_release(), center.id)?;
    let password = engine_account(center, &dir)?;
    let opts = AgentOptions::new(hub.addr, secret);
    Ok((w, hub, password, opts))
}

/// Wire bytes per change: the outbox encoded in batches of `batch`, as the agent sends it.
fn wire_bytes_per_change(w: &World, batch: usize) -> Result<f64> {
    let mut conn = w.centers[0].sql()?;
    let rows: Vec<Vec<u8>> = conn.query("SELECT data FROM kituo_sync.log ORDER BY seq")?;
    let mut bytes = 0usize;
    for chunk in rows.chunks(batch) {
        let changes = chunk
            .iter()
            .map(|d| store::decode_logged(d))
            .collect::<Result<Vec<_>>>()?;
        bytes += change::encode(&changes)?.len();
    }
    Ok(bytes as f64 / rows.len().max(1) as f64)
}

fn acked(w: &World) -> Result<u64> {
    store::get_u64(&mut w.centers[0].sql()?, PUSHED)
}

/// Pushes a backlog of `changes` through a `link_bps` link cut every `cut_every`, for `seconds`.
pub fn goodput(
    link_bps: u64,
    cut_every: Duration,
    seconds: u64,
    changes: u64,
    seed: u64,
) -> Result<Goodput> {
    let (w, hub, password, mut opts) = stage("kituo-bench-goodput", changes, seed)?;
    opts.batch_changes = 500;
    opts.timeout_seconds = 10;
    let per_change = wire_bytes_per_change(&w, opts.batch_changes)?;
    let proxy = LinkProxy::start(
        hub.addr,
        LinkProfile::default()
            .rate_bps(link_bps)
            .cut_every(cut_every)
            .seed(seed),
    )?;
    opts.hub = proxy.addr();
    let dir = w.dir.path().to_owned();
    let config = center_config(&w.centers[0], &dir, &opts, &password, "")?;
    let start = Instant::now();
    let _agent = AgentService::start(
        kituo_tests::appliance_release(),
        &config,
        dir.join("agent.log"),
    )?;
    std::thread::sleep(Duration::from_secs(seconds));
    let done = acked(&w)?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Goodput {
        link_bps,
        cut_every,
        seconds,
        acked: done,
        useful_bytes: (done as f64 * per_change) as u64,
        cuts: proxy.stats().cuts,
    })
}

/// Starts the agent on a backlog of `changes` and samples its resident memory for `seconds`.
pub fn memory(changes: u64, seconds: u64, seed: u64) -> Result<Memory> {
    let (w, _hub, password, opts) = stage("kituo-bench-memory", changes, seed)?;
    let dir = w.dir.path().to_owned();
    let config = center_config(&w.centers[0], &dir, &opts, &password, "")?;
    let start = Instant::now();
    let agent = AgentService::start(
        kituo_tests::appliance_release(),
        &config,
        dir.join("agent.log"),
    )?;
    let pid = agent.proc.pid();
    let mut max_rss_kib = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        max_rss_kib = max_rss_kib.max(rss_kib(pid)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Memory {
        backlog: changes,
        max_rss_kib,
        acked: acked(&w)?,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("the agent is gone")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
