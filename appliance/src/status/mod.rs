//! The technician's view: one self-contained HTML page (`/status`), a JSON API (`/api/status`) and
//! Prometheus metrics (`/metrics`), served by tiny_http on loopback and proxied by nginx.
//!
//! Everything shown comes from [`Shared`], which the power watch and the health checks write and the
//! server only reads. Work that lives elsewhere (sync, updates) reports through a [`Feed`]: a part nobody
//! feeds is shown as "not configured yet".

pub mod api;
pub mod auth;
pub mod metrics;
pub mod page;
pub mod server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::health::Report;
use crate::history::{Event, Sample};
use crate::power::shutdown::StepRecord;
use crate::power::state::PowerState;
use crate::power::Reading;
pub use crate::sync::engine::clash::Clash;

pub use server::serve;

/// The power watch's view.
#[derive(Debug, Clone, Serialize)]
pub struct PowerView {
    /// False when `[power] sources` is empty.
    pub configured: bool,
    pub state: PowerState,
    /// Plain words for `state`.
    pub state_words: &'static str,
    /// Unix time of the last transition.
    pub since: Option<u64>,
    /// The merged reading of all sources.
    pub reading: Option<Reading>,
    pub sources: Vec<SourceStatus>,
    pub bulk_sync_paused: bool,
    /// Steps of the running (or last) shutdown sequence.
    pub shutdown_steps: Vec<StepRecord>,
}

impl Default for PowerView {
    fn default() -> Self {
        PowerView {
            configured: false,
            state: PowerState::Unknown,
            state_words: PowerState::Unknown.words(),
            since: None,
            reading: None,
            sources: Vec::new(),
            bulk_sync_paused: false,
            shutdown_steps: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub ok: bool,
    /// The last error, when `ok` is false.
    pub error: String,
}

/// State of the uplink to the central hub, as the sync agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Up,
    Down,
    /// Bulk transfers wait for mains (see [`crate::power::BulkSyncGate`]).
    PausedOnBattery,
}

/// What the sync agent reports (fed with [`Feed::set_sync`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub link: LinkState,
    /// Unix time of the last batch both sides committed.
    pub last_success: Option<u64>,
    /// Local changes not yet acknowledged by the hub.
    pub backlog_changes: u64,
    /// Unix time of the oldest change in the backlog.
    pub backlog_oldest: Option<u64>,
    /// File blobs waiting to be sent, and their size.
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    /// The most recent error, cleared on success.
    pub last_error: Option<String>,
    /// The hub's clock minus this card's, in milliseconds, once measured since the card booted.
    pub clock_offset_ms: Option<i64>,
}

/// What file sync is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileSyncState {
    /// Nothing to move (or only bulk files outside their window).
    Idle,
    Moving,
    /// Stopped while on battery (see [`crate::power::BulkSyncGate`]).
    PausedOnBattery,
    /// The last attempt failed; see `last_error`.
    Failing,
}

/// What file sync reports (fed with [`Feed::set_files`]): blobs of Moodle's filedir moving between this
/// site and the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSyncStatus {
    pub state: FileSyncState,
    /// Blobs this site's files reference but lacks, and their bytes.
    pub fetch_pending: u64,
    pub fetch_bytes: u64,
    /// This site's blobs the hub lacks, and their bytes.
    pub send_pending: u64,
    pub send_bytes: u64,
    /// Unix time the oldest pending file was created.
    pub oldest: Option<u64>,
    /// Pending bulk files waiting for `[files] bulk_window`.
    pub waiting_for_window: u64,
    /// Bytes per second moved over the last seconds of transfer.
    pub rate_bytes_per_second: u64,
    /// Since the agent started: blobs placed here or at the hub, their bytes, and blobs recovered
    /// from or moved to Moodle's trashdir.
    pub moved_files: u64,
    pub moved_bytes: u64,
    pub restored_from_trash: u64,
    pub trashed: u64,
    /// Unix time of the last pass that ended without an error.
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
}

/// One sneakernet stick exported or imported here (see `sync::stick::history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StickRecord {
    /// Unix seconds.
    pub at: u64,
    /// `export` or `import`.
    pub direction: String,
    /// The other side: `hub` or a center's site number.
    pub peer: String,
    pub stick: String,
    /// Volumes written, or volumes used on import.
    pub volumes: u32,
    pub bytes: u64,
    /// Row changes written, or applied.
    pub changes: u64,
    /// Blobs written, or placed.
    pub blobs: u64,
    pub ok: bool,
    /// In words: what was done, or what was refused and why.
    pub result: String,
}

/// What the update client reports (fed with [`Feed::set_update`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The root slot running now, `A` or `B`.
    pub active_slot: String,
    /// The version installed in the other slot waiting for its trial boot or commit, if any.
    pub pending: Option<String>,
    /// The outcome of the last install or trial boot, in words.
    pub last_result: Option<String>,
}

/// Everything the page shows, as last written.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub power: PowerView,
    pub health: Option<Report>,
    pub events: Vec<Event>,
    pub samples: Vec<Sample>,
    pub sync: Option<SyncStatus>,
    pub files: Option<FileSyncStatus>,
    /// Recent sticks, newest first.
    pub sticks: Vec<StickRecord>,
    /// Recent names two people or things shared, newest first.
    pub clashes: Vec<Clash>,
    pub update: Option<UpdateStatus>,
}

/// The live state shared by the supervisor's threads.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    live: Arc<RwLock<Live>>,
    sync_now: Arc<AtomicBool>,
    /// Bumped on every write, so the server can reuse a page rendered from the same data.
    generation: Arc<AtomicU64>,
}

impl Shared {
    pub fn read(&self) -> RwLockReadGuard<'_, Live> {
        // A writer that panicked left consistent-enough data: showing it beats showing nothing.
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, Live> {
        let guard = self.live.write().unwrap_or_else(|p| p.into_inner());
        // Bumped while holding the lock: a reader that sees the new number cannot read the old data.
        self.generation.fetch_add(1, Ordering::Release);
        guard
    }
    /// Changes whenever the live data may have changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    /// The handle the sync and update work use to report.
    pub fn feed(&self) -> Feed {
        Feed {
            shared: self.clone(),
        }
    }
    pub(crate) fn request_sync_now(&self) {
        self.sync_now.store(true, Ordering::Relaxed);
    }
}

/// How the sync agent and the update client report to the status page. Cheap to clone; every call
/// replaces what the page shows for that part.
///
/// ```
/// use appliance::status::{LinkState, Shared, SyncStatus};
/// let shared = Shared::default();
/// let feed = shared.feed();
/// feed.set_sync(SyncStatus {
///     link: LinkState::Up, last_success: Some(1_790_000_000), backlog_changes: 12,
///     backlog_oldest: None, backlog_files: 0, backlog_bytes: 0, last_error: None,
///     clock_offset_ms: None,
/// });
/// assert!(!feed.take_sync_now_request());
/// ```
#[derive(Debug, Clone)]
pub struct Feed {
    shared: Shared,
}

impl Feed {
    pub fn set_sync(&self, status: SyncStatus) {
        self.shared.write().sync = Some(status);
    }
    pub fn set_files(&self, status: FileSyncStatus) {
        self.shared.write().files = Some(status);
    }
    pub fn set_sticks(&self, recent: Vec<StickRecord>) {
        self.shared.write().sticks = recent;
    }
    pub fn set_clashes(&self, recent: Vec<Clash>) {
        self.shared.write().clashes = recent;
    }
    pub fn set_update(&self, status: UpdateStatus) {
        self.shared.write().update = Some(status);
    }
    /// True once after a technician pressed "sync now"; the sync agent polls this.
    pub fn take_sync_now_request(&self) -> bool {
        self.shared.sync_now.swap(false, Ordering::Relaxed)
    }
}
