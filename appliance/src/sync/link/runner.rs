//! The sync agent as a service: exchanges with the hub for as long as the appliance runs, inside
//! `appliance supervise` or alone (`appliance sync run`).
//!
//! Every step is acknowledged and resumable (see [`crate::sync::exchange::agent`]), so the loop's only job on a failure
//! is to wait and try again: a growing, jittered wait, so that thirty centers coming back after a hub
//! outage do not all knock at once. Batches shrink after failures and grow back after successes, so a
//! link that cuts often still moves whole batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rand::Rng;

use crate::power::BulkSyncGate;
use crate::status::{Clash, Feed, LinkState, StickRecord, SyncStatus};
use crate::sync::engine::follow::{follow, Gate, Pass};
use crate::sync::engine::policy::{Role, Rulebook};
use crate::sync::engine::site::{Site, SiteConfig};
use crate::sync::engine::skew::{self, Skew};
use crate::sync::engine::store;
use crate::sync::engine::{clash, clock};
use crate::sync::exchange::agent::{self, Outgoing};
use crate::sync::exchange::wire::{self, Secret};
use crate::sync::files::mover::Mover;
use crate::sync::link::http::{HttpLink, LinkOptions, Traffic};
use crate::sync::link::settings::AgentSettings;
use crate::sync::seed;
use crate::sync::stick;
use crate::sync::verify;

/// How the supervisor steers the agent.
#[derive(Clone, Default)]
pub struct Controls {
    /// Closed while on battery: the agent pauses.
    pub gate: BulkSyncGate,
    /// Set while the supervisor shuts the appliance down (cleared if power returns): the agent starts
    /// no new request.
    pub hold: Arc<AtomicBool>,
    /// Where the status page reads the agent's state; `None` when run alone.
    pub feed: Option<Feed>,
}

impl Controls {
    /// True when the agent should not start another request.
    fn interrupted(&self) -> bool {
        self.hold.load(Ordering::Relaxed) || !self.gate.is_open()
    }
}

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const MIN_BATCH: usize = 10;
/// Sticks the status page lists.
const STICKS_SHOWN: usize = 5;

pub struct Runner {
    settings: AgentSettings,
    site_cfg: SiteConfig,
    rules: Rulebook,
    link: HttpLink,
    controls: Controls,
    /// Open while the database answers; reopened after a database error.
    site: Option<Site>,
    status: SyncStatus,
    failures: u32,
    batch: usize,
    /// The hub's word that it cannot apply this center's changes (shown until it can).
    hub_stuck: Option<String>,
    /// File sync, when `[files] dataroot` is set.
    files: Option<Mover>,
    /// The stick history last shown.
    sticks: Vec<StickRecord>,
    /// The name clashes last shown.
    clashes: Vec<Clash>,
    /// The batch whose push failed, and the position it follows.
    unsent: Option<(u64, Outgoing)>,
}

impl Runner {
    pub fn new(settings: AgentSettings, site_id: u32, controls: Controls) -> Result<Runner> {
        let rules = settings.moodle.rulebook()?;
        let secret = Secret::read(&settings.secret_file)?;
        let site_cfg = settings.moodle.site_config(site_id, Role::Center)?;
        let link = HttpLink::new(LinkOptions {
            hub_url: settings.hub_url.clone(),
            site: site_id,
            secret,
            timeout: settings.timeout,
            rate_limit: settings.rate_limit,
            page_bytes: settings.batch_bytes,
            ca_file: settings.ca_file.clone(),
        })?;
        Ok(Runner {
            files: settings.files.clone().map(Mover::new),
            batch: settings.batch_changes,
            settings,
            site_cfg,
            rules,
            link,
            controls,
            site: None,
            status: not_started(None),
            failures: 0,
            hub_stuck: None,
            sticks: Vec::new(),
            clashes: Vec::new(),
            unsent: None,
        })
    }

    pub fn traffic(&self) -> Traffic {
        self.link.traffic()
    }

    /// Runs for as long as the process does.
    pub fn run(&mut self) -> ! {
        if let Err(e) = self.follow() {
            // Exchanges still capture first: only the stamps of a late capture suffer.
            eprintln!("sync: cannot record changes continuously: {e:#}");
        }
        loop {
            if self.held() {
                self.pause(Duration::from_secs(1));
                continue;
            }
            if !self.controls.gate.is_open() {
                self.status.link = LinkState::PausedOnBattery;
                self.publish();
                if let Some(files) = self.files.as_mut() {
                    files.paused(self.controls.feed.as_ref());
                }
                self.pause(Duration::from_secs(1));
                continue;
            }
            if let Some(waiting) = self.moodle_not_ready() {
                // Not a failure: no backoff, so that sync starts as soon as the database is made.
                self.status.last_error = Some(waiting);
                self.publish();
                self.pause(Duration::from_secs(5));
                continue;
            }
            match self.exchange().and_then(|moved| self.move_files(moved)) {
                Ok(moved) => {
                    self.succeeded();
                    if !moved {
                        self.pause(self.settings.interval);
                    }
                }
                Err(e) => {
                    let wait = self.failed(&e);
                    self.pause(wait);
                }
            }
        }
    }

    /// Records this center's changes continuously, on a thread of its own, whatever the link does;
    /// waits while the appliance shuts down and until Moodle's database is made.
    fn follow(&self) -> Result<()> {
        let (cfg, rules) = (self.site_cfg.clone(), self.settings.moodle.rulebook()?);
        let (hold, every) = (self.controls.hold.clone(), self.settings.capture_every);
        let ready_file = self.settings.moodle.ready_file.clone();
        let gate = move || {
            let made = ready_file.as_ref().is_none_or(|f| f.exists());
            match hold.load(Ordering::Relaxed) || !made {
                true => Gate::Wait,
                false => Gate::Capture,
            }
        };
        std::thread::Builder::new()
            .name("sync-capture".into())
            .spawn(move || follow(cfg, rules, every, "sync", gate, CenterPass))
            .context("cannot start the capture thread")?;
        Ok(())
    }

    fn held(&self) -> bool {
        self.controls.hold.load(Ordering::Relaxed)
    }

    fn interrupted(&self) -> bool {
        self.controls.interrupted()
    }

    /// Captures, then pushes and pulls until both sides are level; true if anything moved.
    pub fn exchange(&mut self) -> Result<bool> {
        if let Some(waiting) = self.moodle_not_ready() {
            anyhow::bail!(waiting);
        }
        let mut site = match self.site.take() {
            Some(site) => site,
            None => Site::open(self.site_cfg.clone())?,
        };
        self.publish_history(&mut site);
        let moved = self.exchange_with(&mut site);
        // Kept even after an error: `failed` drops it if the database was the trouble.
        self.site = Some(site);
        moved
    }

    /// Why sync must wait for first boot's install or seed of Moodle's database, if it must: a site
    /// opened before the install ends would capture the install's rows (the admin account, the
    /// configuration) and send them to the hub as this center's changes.
    fn moodle_not_ready(&self) -> Option<String> {
        let file = self.settings.moodle.ready_file.as_ref()?;
        (!file.exists()).then(|| {
            format!(
                "waiting for Moodle's database to be installed or seeded on first boot ({} does not exist yet)",
                file.display()
            )
        })
    }

    fn exchange_with(&mut self, site: &mut Site) -> Result<bool> {
        if let Some(state) = store::get(site.conn(), seed::SEED_STATE)? {
            anyhow::ensure!(
                state == "done",
                "the Moodle database is being seeded from the hub (`appliance sync seed`): sync starts when it is done"
            );
        }
        if self.rules.refresh(site.conn())? {
            eprintln!(
                "sync: Moodle was upgraded ({}): rules derived again",
                self.rules.version()
            );
        }
        if self.link.skew().is_none() {
            self.read_hub_clock(site)?;
        }
        site.capture(self.rules.policy())?;
        let mut moved = self.push_all(site)?;
        loop {
            if self.controls.interrupted() {
                return Ok(moved);
            }
            let step = agent::pull_once(site, self.rules.policy(), &mut self.link, self.batch)?;
            moved |= step.advanced;
            self.batch = (self.batch * 2).min(self.settings.batch_changes);
            if !step.more {
                break;
            }
        }
        agent::prune_outbox(site)?;
        self.keep_skew(site)?;
        let backlog = agent::backlog(site)?;
        self.status.backlog_changes = backlog.changes;
        self.status.backlog_oldest = backlog.oldest_hlc.map(|h| clock::millis_of(h) / 1000);
        Ok(moved)
    }

    /// Reads the hub's clock before the first capture of this process, so that what waited in the
    /// binlog is stamped in the hub's time (a hub that cannot answer would not take the push either).
    fn read_hub_clock(&mut self, site: &mut Site) -> Result<()> {
        self.link
            .call("GET", wire::CLOCK, &[])
            .context("cannot read the hub's clock")?;
        self.keep_skew(site)
    }

    /// Stores the link's reading of the hub's clock when it is new or more certain, for every process
    /// that records this site's changes, and shows the offset.
    fn keep_skew(&mut self, site: &mut Site) -> Result<()> {
        let Some(read) = self.link.skew() else {
            return Ok(());
        };
        let kept = Skew::read(site.conn())?;
        let best = match kept.clone() {
            Some(kept) => kept.better(read.clone()),
            None => read.clone(),
        };
        if kept.as_ref() != Some(&best) {
            best.write(site.conn())?;
        }
        self.status.clock_offset_ms = best.offset_ms();
        Ok(())
    }

    /// Sends the outbox until the hub holds it all, reading and encoding each batch while the one
    /// before it is on the link (zstd is slow on a Pi, and a link left idle is goodput lost); true if
    /// anything moved.
    fn push_all(&mut self, site: &mut Site) -> Result<bool> {
        let mut pushed = store::get_u64(site.conn(), agent::PUSHED)?;
        let mut next = match self.unsent.take() {
            Some((after, batch)) if after == pushed => Some(batch),
            _ => agent::prepare(site, pushed, self.batch, self.settings.batch_bytes)?,
        };
        let mut moved = false;
        while let Some(batch) = next.take() {
            if self.controls.interrupted() {
                break;
            }
            let (link, body) = (&mut self.link, &batch.body);
            let (size, bytes) = (self.batch, self.settings.batch_bytes);
            let (receipt, ahead) = std::thread::scope(|scope| {
                let sending = scope.spawn(move || link.push_encoded(body, batch.last));
                let ahead = agent::prepare(site, batch.last, size, bytes);
                (sending.join(), ahead)
            });
            let receipt =
                match receipt.map_err(|_| anyhow::anyhow!("the sending thread panicked"))? {
                    Ok(receipt) => receipt,
                    Err(e) => {
                        // Kept for the next try: a batch of one large row takes seconds to encode.
                        self.unsent = Some((pushed, batch));
                        return Err(e);
                    }
                };
            let acked = receipt.acked;
            let done = agent::record_receipt(site, pushed, receipt)?;
            self.hub_stuck = done.stuck;
            if done.acked == 0 {
                break;
            }
            moved = true;
            self.batch = (self.batch * 2).min(self.settings.batch_changes);
            next = if acked == batch.last {
                ahead?
            } else {
                agent::prepare(site, acked, self.batch, self.settings.batch_bytes)?
            };
            pushed = acked;
        }
        Ok(moved)
    }

    /// Moves file blobs, after the rows: the hub takes a blob only once its `files` row is there.
    fn move_files(&mut self, rows_moved: bool) -> Result<bool> {
        let (Some(files), Some(site)) = (self.files.as_mut(), self.site.as_mut()) else {
            return Ok(rows_moved);
        };
        let controls = &self.controls;
        let moved = files.pass(
            site,
            &mut self.link,
            &|| controls.interrupted(),
            controls.feed.as_ref(),
        )?;
        Ok(rows_moved || moved)
    }

    /// Seeds this center's empty Moodle database from the hub (see [`seed`]).
    pub fn seed(&mut self) -> Result<seed::Seeded> {
        let mut site = Site::open(self.site_cfg.clone())?;
        let version = seed::code_version(&self.settings.moodle.dirroot)?;
        seed::seed(&mut site, self.rules.policy(), &mut self.link, version)
    }

    /// Exchanges once, then compares this site with the hub (and repairs it when asked).
    pub fn verify(&mut self, opts: &verify::Options) -> Result<verify::Report> {
        self.exchange()?;
        let site = self.site.as_mut().expect("opened by the exchange");
        verify::verify(site, self.rules.policy(), &mut self.link, opts)
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.status.link = LinkState::Up;
        self.status.last_success = Some(unix_now());
        self.status.last_error = self
            .hub_stuck
            .as_ref()
            .map(|why| format!("the hub holds this center's changes: {why}"));
        self.publish();
    }

    /// Records the failure and returns how long to wait: full jitter over an exponential ceiling.
    fn failed(&mut self, e: &anyhow::Error) -> Duration {
        if store::is_database_error(e) {
            // The connection may be dead (MariaDB restarted): reopen next time.
            self.site = None;
        } else {
            self.batch = (self.batch / 2).max(MIN_BATCH);
        }
        self.failures = self.failures.saturating_add(1);
        self.status.link = LinkState::Down;
        self.status.last_error = Some(format!("{e:#}"));
        self.publish();
        eprintln!("sync: {e:#}");
        let ceiling = BACKOFF_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.settings.backoff_max);
        ceiling.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Shows the sticks exported and imported here (by `appliance sync export|import`, another
    /// process: the history is in the database) and the name clashes settled here, when they changed.
    fn publish_history(&mut self, site: &mut Site) {
        let Some(feed) = &self.controls.feed else {
            return;
        };
        match stick::history::recent(site.conn(), STICKS_SHOWN) {
            Ok(recent) if recent != self.sticks => {
                feed.set_sticks(recent.clone());
                self.sticks = recent;
            }
            Ok(_) => {}
            Err(e) => eprintln!("sync: {e:#}"),
        }
        match clash::recent(site.conn(), STICKS_SHOWN) {
            Ok(recent) if recent != self.clashes => {
                feed.set_clashes(recent.clone());
                self.clashes = recent;
            }
            Ok(_) => {}
            Err(e) => eprintln!("sync: {e:#}"),
        }
    }

    fn publish(&self) {
        if let Some(feed) = &self.controls.feed {
            feed.set_sync(self.status.clone());
        }
    }

    /// Sleeps up to `total`, waking early when the hold or the gate changes, or for a "sync now" from
    /// the page.
    fn pause(&self, total: Duration) {
        let was = self.interrupted();
        let end = Instant::now() + total;
        while Instant::now() < end {
            if self.interrupted() != was {
                return;
            }
            if let Some(feed) = &self.controls.feed {
                if feed.take_sync_now_request() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// How long after a boot a center's follower waits for the hub's clock before it stamps by its own:
/// well inside the binlog's 14 days, so a link down for days loses nothing.
const CLOCK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A center's follower captures once a seed is done (until then the database is the hub's copy being
/// written, and the seed numbers this site's changes) and once this boot has read the hub's clock: a
/// card without RTC may have booted a year ahead, and a change stamped by that clock would win every
/// clash for a year. Commit times wait in the binlog, so a late capture stamps them as well.
struct CenterPass;

impl Pass for CenterPass {
    fn ready(&mut self, site: &mut Site) -> Result<bool> {
        let state = store::get(site.conn(), seed::SEED_STATE)?;
        if state.is_some_and(|s| s != "done") {
            return Ok(false);
        }
        let read = Skew::read(site.conn())?
            .and_then(|s| s.offset_ms())
            .is_some();
        Ok(read || skew::boot_millis()? > CLOCK_WAIT.as_millis() as u64)
    }
}

/// The status before the first exchange.
fn not_started(last_error: Option<String>) -> SyncStatus {
    SyncStatus {
        link: LinkState::Down,
        last_success: None,
        backlog_changes: 0,
        backlog_oldest: None,
        backlog_files: 0,
        backlog_bytes: 0,
        last_error,
        clock_offset_ms: None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts the agent on its own thread (the supervisor's way). A setup error (no secret file, no Moodle
/// code) is shown on the status page and retried, so fixing the file needs no restart.
pub fn spawn(settings: AgentSettings, site_id: u32, controls: Controls) -> Result<()> {
    std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || loop {
            match Runner::new(settings.clone(), site_id, controls.clone()) {
                Ok(mut runner) => runner.run(),
                Err(e) => {
                    eprintln!("sync: cannot start: {e:#}");
                    if let Some(feed) = &controls.feed {
                        feed.set_sync(not_started(Some(format!("cannot start: {e:#}"))));
                    }
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
        })
        .context("cannot start the sync thread")?;
    Ok(())
}
