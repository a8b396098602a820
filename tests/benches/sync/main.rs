//! `cargo bench -p kituo-tests --bench sync [-- --transport-only]`: the sync engine on real MariaDB servers (a hub and two centers from
//! `sync::bed`), printed as a markdown table: capture and apply rates, and the bytes one simulated day
//! of a 200-student center puts on the wire against seed 000's `moodlesync` (a compressed mysqldump,
//! updated with rsync's delta transfer).
//!
//! The transport's own rows (HTTP push and pull of a large outbox) can start from
//! [`kituo_tests::workload::fill_outbox`], which fills a center's outbox with up to a million
//! realistic changes in seconds, and [`Canned`], a link that serves pages read beforehand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;

use appliance::sync::engine::change::{self, Change};
use appliance::sync::engine::store;
use appliance::sync::exchange::agent::{self, Link};
use appliance::sync::exchange::hub::{self, Page, Receipt};
use day::Day;
use kituo_tests::bed::{self, Direct, Node, World};
use kituo_tests::workload::{bulk_activity, Course};

mod day;
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
    let d = day::simulate(&mut w, &course, o, work.path(), t0)?;
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
