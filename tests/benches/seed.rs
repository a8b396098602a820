//! `cargo bench -p kituo-tests --bench seed [-- --size XS]`: a center's seed as deployed (`appliance hub`
//! on loopback, `appliance sync seed` at a new card), from a real Moodle 4.5.0 hub filled by Moodle's own
//! generator (`maketestsite.php`), against `mariadb-dump | mariadb` of the same database (what central IT
//! would otherwise do), then the same seed over an emulated slow link (256 kbit/s, 300 ms each way)
//! against the time the gzip'd dump alone needs to cross it. Printed as a markdown table.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use mysql::prelude::Queryable;

use appliance::sync::schema::Schema;
use kituo_tests::bed::services::{center_config, engine_account, AgentOptions, HubService};
use kituo_tests::bed::{open_site_with, unseeded_node, Node, DB, INCREMENT};
use kituo_tests::linkem::{LinkProfile, LinkProxy};
use kituo_tests::moodle;
use kituo_tests::testbed::MariaDb;

#[derive(Parser, Debug)]
struct Options {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// The generator's site size (XS, S, M, ...).
    #[arg(long, default_value = "XS")]
    size: String,
    /// Rate of the emulated link, each way.
    #[arg(long, default_value_t = 256)]
    link_kbit: u64,
    /// One-way latency of the emulated link.
    #[arg(long, default_value_t = 300)]
    latency_ms: u64,
}

fn main() -> Result<()> {
    let o = Options::parse();
    moodle::ensure_php()?;
    let code = moodle::code("4.5.0")?;
    let tmp = tempfile::Builder::new()
        .prefix("kituo-bench-seed")
        .tempdir()?;
    let dir = tmp.path();
    let t0 = Instant::now();

    let db = MariaDb::start_with(&dir.join("hub"), &MariaDb::sync_site_args(1, INCREMENT, 1))?;
    let at_hub = moodle::Site::new(&db, DB, &code, &dir.join("hubdata"))?;
    at_hub.install("Hub")?;
    at_hub.act("config", &["tool_generator_users_password", "Bench-pass-1"])?;
    let size = format!("--size={}", o.size);
    at_hub.run(
        "admin/tool/generator/cli/maketestsite.php",
        &[&size, "--bypasscheck", "--quiet"],
    )?;
    eprintln!("[{:>4}s] hub made", t0.elapsed().as_secs());
    let engine = at_hub.engine_moodle();
    let hub = Node {
        id: 1,
        site: open_site_with(1, &db, Some(engine))?,
        db,
    };
    let rows = rows_of(&hub)?;

    let dump = time_dump(&hub, &dir.join("copy"))?;
    eprintln!(
        "[{:>4}s] dump | restore: {dump:.1} s",
        t0.elapsed().as_secs()
    );

    let exe = kituo_tests::appliance_release();
    let service = HubService::start(exe, &hub, dir)?;
    let schema = Schema::load_moodle_dir(&code)?;
    let near = seed(exe, &service, &schema, dir, 2, service.addr)?;
    eprintln!(
        "[{:>4}s] seed on loopback: {near:.1} s",
        t0.elapsed().as_secs()
    );

    let profile = LinkProfile::default()
        .rate_bps(o.link_kbit * 1000)
        .latency(Duration::from_millis(o.latency_ms));
    let proxy = LinkProxy::start(service.addr, profile)?;
    let far = seed(exe, &service, &schema, dir, 3, proxy.addr())?;
    let wire = proxy.stats();
    let gzipped = gzipped_dump(&hub)?;
    // The dump's own time on that link: its bytes at the link's rate and one round trip, the
    // least any tool that sends it could take.
    let dump_far =
        gzipped as f64 * 8.0 / (o.link_kbit as f64 * 1000.0) + 2.0 * o.latency_ms as f64 / 1000.0;

    println!("| measure | result | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| seed of a `maketestsite --size={}` hub ({rows} rows), loopback | {near:.1} s | `mariadb-dump \\| mariadb` {dump:.1} s | {:.2}x (target <= 3x) |",
        o.size,
        near / dump
    );
    println!(
        "| the same over {} kbit/s, {} ms each way | {far:.1} s ({} KiB down, {} KiB up) | the gzip'd dump ({} KiB) crossing it: {dump_far:.1} s | {:.2}x (target <= 1.5x) |",
        o.link_kbit,
        o.latency_ms,
        wire.bytes_down / 1024,
        wire.bytes_up / 1024,
        gzipped / 1024,
        far / dump_far
    );
    Ok(())
}

/// Seconds `appliance sync seed` takes at a new card for `site`, reaching the hub at `addr`.
fn seed(
    exe: &Path,
    hub: &HubService,
    schema: &Schema,
    dir: &Path,
    site: u32,
    addr: SocketAddr,
) -> Result<f64> {
    let secret = hub.add_center(exe, site)?;
    let card = unseeded_node(&dir.join(format!("card{site}")), site, schema)?;
    let password = engine_account(&card, dir)?;
    let config = center_config(&card, dir, &AgentOptions::new(addr, secret), &password, "")?;
    let started = Instant::now();
    let out = Command::new(exe)
        .args(["sync", "seed", "--config"])
        .arg(&config)
        .output()
        .context("cannot run appliance sync seed")?;
    let took = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "the seed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    Ok(took)
}

/// The bytes of the hub's Moodle as `mariadb-dump | gzip` writes them.
fn gzipped_dump(hub: &Node) -> Result<u64> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mariadb-dump --socket={} --user=root --single-transaction {DB} | gzip | wc -c",
            hub.db.socket.display()
        ))
        .output()
        .context("cannot run mariadb-dump | gzip")?;
    ensure!(out.status.success(), "mariadb-dump | gzip failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The rows of the hub's Moodle tables.
fn rows_of(hub: &Node) -> Result<u64> {
    let mut c = hub.sql()?;
    let tables: Vec<String> = c.query(format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{DB}'"
    ))?;
    let mut rows = 0;
    for t in tables {
        rows += c
            .query_first::<u64, _>(format!("SELECT COUNT(*) FROM `{t}`"))?
            .unwrap_or(0);
    }
    Ok(rows)
}

/// Seconds `mariadb-dump` of the hub's Moodle piped into `mariadb` at a fresh server take.
fn time_dump(hub: &Node, dir: &Path) -> Result<f64> {
    let copy = MariaDb::start_with(dir, &[])?;
    let socket = |db: &MariaDb| format!("--socket={}", db.socket.display());
    let status = Command::new("mariadb")
        .args([
            &socket(&copy),
            "--user=root",
            "-e",
            &format!("CREATE DATABASE {DB}"),
        ])
        .status()?;
    ensure!(status.success(), "cannot create the copy's database");
    let started = Instant::now();
    let mut dump = Command::new("mariadb-dump")
        .args([&socket(&hub.db), "--user=root", "--single-transaction", DB])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run mariadb-dump")?;
    let restore = Command::new("mariadb")
        .args([&socket(&copy), "--user=root", DB])
        .stdin(dump.stdout.take().context("no dump output")?)
        .status()
        .context("cannot run mariadb")?;
    ensure!(
        dump.wait()?.success() && restore.success(),
        "dump | restore failed"
    );
    Ok(started.elapsed().as_secs_f64())
}
