//! `cargo bench -p kituo-tests --bench files [-- --megabytes 60]`: file sync as deployed (`appliance hub` with a dataroot, a center's agent as
//! a process, real MariaDB sites), printed as a markdown table: goodput of a mixed set of files over an
//! emulated slow link cut on a schedule, bytes beyond the files' own per cut, the same set by rsync
//! (daemon mode, `--partial`, retried) through the same emulated link, and the agent's memory while it
//! moves many small files.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use appliance::sync::files::hash::ContentHash;
use appliance::sync::files::pool::{Found, Pool};
use kituo_tests::bed::files::{self, backups_root, files_section, noise, Backup, FileRow};
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService, Proc,
};
use kituo_tests::bed::{self, World};
use kituo_tests::linkem::{LinkProfile, LinkProxy};
use kituo_tests::testbed::{free_port, require, wait_for};

#[derive(clap::Parser, Debug)]
pub struct Options {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Size of the mixed set, in MB.
    #[arg(long, default_value_t = 60)]
    pub megabytes: u64,
    /// Rate of the emulated link, each way.
    #[arg(long, default_value_t = 2000)]
    pub link_kbit: u64,
    /// Every connection is cut this often.
    #[arg(long, default_value_t = 20)]
    pub cut_seconds: u64,
    /// One-way latency of the emulated link.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Small files fetched while the agent's memory is sampled; 0 skips that row.
    #[arg(long, default_value_t = 10_000)]
    pub small_files: usize,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
}

const GOODPUT_TARGET: f64 = 0.85;
const RSS_TARGET_KIB: u64 = 24 * 1024;
const CHUNK: u64 = 64 * 1024;

fn progress(t0: Instant, what: &str) {
    eprintln!("bench files: {:>6.1} s  {what}", t0.elapsed().as_secs_f64());
}

/// A hub serving files and one center, registered, with its agent's options.
struct Stage {
    w: World,
    hub: HubService,
    dir: PathBuf,
    secret: PathBuf,
    password: PathBuf,
}

impl Stage {
    fn new(name: &str) -> Result<Stage> {
        let w = bed::world(name, 1)?;
        let dir = w.dir.path().to_owned();
        let hub = HubService::start(kituo_tests::appliance_release(), &w.hub, &dir)?;
        let secret = hub.add_center(kituo_tests::appliance_release(), w.centers[0].id)?;
        let password = engine_account(&w.centers[0], &dir)?;
        Ok(Stage {
            w,
            hub,
            dir,
            secret,
            password,
        })
    }

    fn pool(&self, site: u32) -> Result<Pool> {
        files::pool(&self.dir, site)
    }

    fn agent(&self, via: &LinkProxy, keys: &str) -> Result<AgentService> {
        let center = &self.w.centers[0];
        let mut opts = AgentOptions::new(via.addr(), self.secret.clone());
        opts.timeout_seconds = 15;
        let files = files_section(&self.dir, center.id, keys)?;
        let config = center_config(center, &self.dir, &opts, &self.password, &files)?;
        AgentService::start(
            kituo_tests::appliance_release(),
            &config,
            self.dir.join("agent.log"),
        )
    }

    /// Waits until the center holds every hash; returns the time taken.
    fn wait_all(
        &self,
        hashes: &[ContentHash],
        t: Instant,
        limit: Duration,
        agent: &Proc,
    ) -> Result<Duration> {
        let pool = self.pool(self.w.centers[0].id)?;
        let done = wait_for(limit, || {
            hashes
                .iter()
                .all(|h| matches!(pool.find(h), Found::Live(_)))
                .then(|| t.elapsed())
        });
        done.with_context(|| {
            format!(
                "the center did not get every file within {limit:?}; agent log:\n{}",
                agent.log_text()
            )
        })
    }
}

/// The mixed set at the hub: a course backup's files, documents from 20 kB to 2 MB, and two lectures;
/// returns the hashes and their bytes.
fn mixed_set(s: &Stage, megabytes: u64, seed: u64) -> Result<(Vec<ContentHash>, u64)> {
    use rand::{Rng, SeedableRng};
    let hub = &s.w.hub;
    let pool = s.pool(hub.id)?;
    let backup = Backup::unpack(
        &backups_root().join("backup/controller/tests/fixtures/deadlock.mbz"),
        &s.dir.join("backup"),
    )?;
    let mut hashes = backup.install(hub, &pool)?;
    let total = megabytes * 1_000_000;
    let video = total * 2 / 10;
    let mut rows = Vec::new();
    for (i, size) in [video, video].iter().enumerate() {
        let data = noise(*size as usize, seed + i as u64);
        rows.push((
            FileRow::new(
                "mod_resource",
                "content",
                &format!("lecture{i}.mp4"),
                "video/mp4",
                &data,
            ),
            data,
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut documents = 0;
    let mut n = 0;
    while documents < total - 2 * video {
        // Log-uniform from 20 kB to 2 MB: many small, a few large.
        let size = (20_000.0 * 100f64.powf(rng.gen::<f64>())) as u64;
        let data = noise(size as usize, seed + 100 + n);
        let (component, area, mime) = if n % 3 == 0 {
            ("mod_forum", "attachment", "image/jpeg")
        } else {
            ("mod_resource", "content", "application/pdf")
        };
        rows.push((
            FileRow::new(component, area, &format!("doc{n}"), mime, &data),
            data,
        ));
        documents += size;
        n += 1;
    }
    for (row, data) in &rows {
        hashes.push(files::add_file(hub, &pool, row, data)?);
    }
    let bytes = hashes
        .iter()
        .map(|h| std::fs::metadata(pool.live_path(h)).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    Ok((hashes, bytes))
}

struct Goodput {
    files: usize,
    bytes: u64,
    seconds: f64,
    down: u64,
    cuts: u64,
}

impl Goodput {
    fn fraction(&self, link_kbit: u64) -> f64 {
        self.bytes as f64 * 8.0 / (link_kbit as f64 * 1000.0 * self.seconds)
    }
}

fn link(o: &Options) -> LinkProfile {
    LinkProfile::default()
        .rate_bps(o.link_kbit * 1000)
        .latency(Duration::from_millis(o.latency_ms))
        .cut_every(Duration::from_secs(o.cut_seconds))
        .seed(o.seed)
}

/// The time limit for moving `bytes` over the link: four times the ideal, plus a minute.
fn limit(o: &Options, bytes: u64) -> Duration {
    Duration::from_secs(60 + 4 * bytes * 8 / (o.link_kbit * 1000))
}

fn kituo(s: &Stage, hashes: &[ContentHash], bytes: u64, o: &Options) -> Result<Goodput> {
    let proxy = LinkProxy::start(s.hub.addr, link(o))?;
    let t = Instant::now();
    let agent = s.agent(&proxy, "")?;
    let took = s.wait_all(hashes, t, limit(o, bytes), &agent.proc)?;
    let stats = proxy.stats();
    Ok(Goodput {
        files: hashes.len(),
        bytes,
        seconds: took.as_secs_f64(),
        down: stats.bytes_down,
        cuts: stats.cuts,
    })
}

/// rsync in daemon mode serving the hub's filedir, pulled by a client through the same link, again
/// and again (`--partial`) until a run ends well, as a script on the card would do it.
fn rsync(s: &Stage, bytes: u64, o: &Options) -> Result<(Goodput, u32)> {
    let program = require("rsync", "rsync")?;
    let port = free_port()?;
    let conf = s.dir.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "port = {port}\naddress = 127.0.0.1\nuse chroot = false\npid file = {}\n[filedir]\npath = {}\nread only = true\n",
            s.dir.join("rsyncd.pid").display(),
            s.pool(1)?.filedir().display()
        ),
    )?;
    let daemon = Command::new(&program)
        .args(["--daemon", "--no-detach", "--config"])
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the rsync daemon")?;
    let _daemon = Kill(daemon);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).ok()
    })
    .context("the rsync daemon did not listen")?;
    let proxy = LinkProxy::start(addr, link(o))?;
    let dest = s.dir.join("rsync-dest");
    std::fs::create_dir_all(&dest)?;
    let t = Instant::now();
    let mut runs = 0;
    loop {
        runs += 1;
        let status = Command::new(&program)
            .args(["-a", "--partial", "--timeout=30"])
            .arg(format!("rsync://{}/filedir/", proxy.addr()))
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run rsync")?;
        if status.success() {
            break;
        }
        if t.elapsed() > limit(o, bytes) {
            bail!(
                "rsync did not finish within {:?} ({runs} runs)",
                limit(o, bytes)
            );
        }
        // What a retry loop in a script would wait.
        std::thread::sleep(Duration::from_secs(1));
    }
    let stats = proxy.stats();
    Ok((
        Goodput {
            files: 0,
            bytes,
            seconds: t.elapsed().as_secs_f64(),
            down: stats.bytes_down,
            cuts: stats.cuts,
        },
        runs,
    ))
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The agent's largest RSS while it fetches `count` small files (1 to 8 kB) over an unlimited link.
fn memory(count: usize, seed: u64, t0: Instant) -> Result<(u64, f64)> {
    use rand::{Rng, SeedableRng};
    let s = Stage::new("kituo-bench-files-memory")?;
    let pool = s.pool(s.w.hub.id)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(count);
    let mut hashes = Vec::with_capacity(count);
    for n in 0..count {
        let data = noise(rng.gen_range(1_000..8_000), seed + n as u64);
        let row = FileRow::new(
            "mod_forum",
            "attachment",
            &format!("small{n}.png"),
            "image/png",
            &data,
        );
        hashes.push(files::add_blob(&pool, &data)?);
        rows.push(row);
    }
    files::insert_rows(&s.w.hub, &rows)?;
    progress(t0, &format!("{count} small files at the hub"));
    let proxy = LinkProxy::start(s.hub.addr, LinkProfile::default())?;
    let t = Instant::now();
    let agent = s.agent(&proxy, "")?;
    let pid = agent.proc.pid();
    let center = s.pool(s.w.centers[0].id)?;
    let mut max = 0;
    let limit = Duration::from_secs(600);
    loop {
        max = max.max(rss_kib(pid).unwrap_or(0));
        // The last blob of the list is among the last asked for: check it first, then all.
        let last = hashes
            .last()
            .is_none_or(|h| matches!(center.find(h), Found::Live(_)));
        if last
            && hashes
                .iter()
                .all(|h| matches!(center.find(h), Found::Live(_)))
        {
            break;
        }
        if t.elapsed() > limit {
            bail!(
                "the small files did not arrive within {limit:?}: {}",
                agent.proc.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((max, t.elapsed().as_secs_f64()))
}

fn run(o: &Options) -> Result<()> {
    let command: Vec<String> = std::env::args().collect();
    let t0 = Instant::now();
    let s = Stage::new("kituo-bench-files")?;
    let (hashes, bytes) = mixed_set(&s, o.megabytes, o.seed)?;
    progress(
        t0,
        &format!("{} files, {bytes} bytes at the hub", hashes.len()),
    );
    let k = kituo(&s, &hashes, bytes, o)?;
    progress(t0, "kituo done");
    let (r, runs) = rsync(&s, bytes, o)?;
    progress(t0, "rsync done");
    let memory = if o.small_files > 0 {
        Some(memory(o.small_files, o.seed, t0)?)
    } else {
        None
    };
    progress(t0, "memory done");

    let ok = |b: bool| if b { "yes" } else { "NO" };
    let (kf, rf) = (k.fraction(o.link_kbit), r.fraction(o.link_kbit));
    let extra_per_cut = k.down.saturating_sub(k.bytes) / k.cuts.max(1);
    println!("`{}`", command.join(" "));
    println!();
    println!(
        "Link: {} kbit/s each way, {} ms one way, every connection cut every {} s. Set: {} files, {:.1} MB \
         (a Moodle course backup's files, documents of 20 kB to 2 MB, two lectures of {:.1} MB).",
        o.link_kbit,
        o.latency_ms,
        o.cut_seconds,
        k.files,
        bytes as f64 / 1e6,
        o.megabytes as f64 * 0.2
    );
    println!();
    println!("| measure | result | target | met |");
    println!("|---|---|---|---|");
    println!(
        "| kituo goodput (file bytes placed / link capacity over the transfer) | {:.1} % ({:.0} s, {} cuts) | >= 85 % | {} |",
        kf * 100.0,
        k.seconds,
        k.cuts,
        ok(kf >= GOODPUT_TARGET)
    );
    println!(
        "| bytes down beyond the files' own, per cut (resent + headers + rows) | {:.1} KiB ({} B over {} cuts) | <= one chunk ({} KiB) | {} |",
        extra_per_cut as f64 / 1024.0,
        k.down.saturating_sub(k.bytes),
        k.cuts,
        CHUNK / 1024,
        ok(extra_per_cut <= CHUNK)
    );
    println!(
        "| rsync -a --partial (daemon, retried after 1 s) goodput | {:.1} % ({:.0} s, {runs} runs, {} cuts) | - | - |",
        rf * 100.0,
        r.seconds,
        r.cuts
    );
    println!(
        "| rsync bytes down beyond the files' own | {} B | - | - |",
        r.down.saturating_sub(r.bytes)
    );
    println!(
        "| kituo / rsync goodput | {:.2} | > 1 | {} |",
        kf / rf,
        ok(kf > rf)
    );
    if let Some((rss, secs)) = memory {
        println!(
            "| agent RSS, max while fetching {} small files (1-8 kB, unlimited link; {:.0} s) | {:.1} MB | <= 24 MB | {} |",
            o.small_files,
            secs,
            rss as f64 / 1024.0,
            ok(rss <= RSS_TARGET_KIB)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    use clap::Parser;
    run(&Options::parse())
}
