//! `/api/status`: the JSON document behind the page, the metrics and `appliance status`.
//!
//! Fields: `version`, `center_id`, `center_name`, `site_id`, `build` (the build-info file's `[build]`
//! keys, e.g. `build.id`), `center_config` (what first boot did with the boot partition's center.ini:
//! `center_id`, `source`, `sha256`, `changed` files, `error` naming file, line and key; null without one), `uptime_seconds` (of the supervisor), `generated_at` (unix seconds), `power`
//! (state, reading, sources, bulk_sync_paused, shutdown_steps), `health` (services, disks, temperature,
//! throttling, clock, load, memory, uptime; null before the first check), `sync`, `files` and `update`
//! (null until their work reports; `sticks`: recent USB/DVD sticks, newest first; `clashes`: recent names two people or things were given, and what the later-born is called now; `sync.backlog_files`/`backlog_bytes` are `files.send_pending`/`send_bytes`), `history` (recent power transitions, newest last), `chart` (24 h of samples).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::commission::apply::Record;
use crate::health::Report;
use crate::history::{Event, Sample};
use crate::status::{
    Clash, FileSyncStatus, Live, PowerView, StickRecord, SyncStatus, UpdateStatus,
};

/// Recent transitions included in the document.
pub const RECENT_EVENTS: usize = 20;

/// The document `/api/status` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub center_id: String,
    pub center_name: String,
    pub site_id: u8,
    pub build: BTreeMap<String, String>,
    /// What first boot did with the boot partition's center.ini; null when it never had one.
    pub center_config: Option<Record>,
    pub uptime_seconds: u64,
    pub generated_at: u64,
    pub power: PowerView,
    pub health: Option<Report>,
    pub sync: Option<SyncStatus>,
    pub files: Option<FileSyncStatus>,
    /// Recent sneakernet sticks, newest first.
    pub sticks: Vec<StickRecord>,
    /// Recent names sync found given to two people or things, newest first.
    pub clashes: Vec<Clash>,
    pub update: Option<UpdateStatus>,
    pub history: Vec<Event>,
    pub chart: Vec<Sample>,
}

/// What does not change while the supervisor runs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub center_id: String,
    pub center_name: String,
    pub site_id: u8,
    pub build: BTreeMap<String, String>,
    pub center_config: Option<Record>,
}

pub fn snapshot(id: &Identity, live: &Live, uptime_seconds: u64) -> Snapshot {
    let skip = live.events.len().saturating_sub(RECENT_EVENTS);
    Snapshot {
        version: crate::VERSION,
        center_id: id.center_id.clone(),
        center_name: id.center_name.clone(),
        site_id: id.site_id,
        build: id.build.clone(),
        center_config: id.center_config.clone(),
        uptime_seconds,
        generated_at: crate::history::unix_now(),
        power: live.power.clone(),
        health: live.health.clone(),
        sync: live.sync.clone().map(|mut y| {
            // The row agent knows nothing of files: what waits to be sent comes from file sync.
            if let Some(f) = &live.files {
                y.backlog_files = f.send_pending;
                y.backlog_bytes = f.send_bytes;
            }
            y
        }),
        files: live.files.clone(),
        sticks: live.sticks.clone(),
        clashes: live.clashes.clone(),
        update: live.update.clone(),
        history: live.events[skip..].to_vec(),
        chart: live.samples.clone(),
    }
}
