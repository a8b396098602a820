//! A center's side of sync: sends its logged changes to the hub and applies the hub's, each step
//! acknowledged and resumable, so a cut anywhere only means doing the step again.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::change::Change;
use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::store;
use crate::sync::exchange::hub::{Page, Receipt};
use crate::sync::exchange::wire;

/// State names: the last own change the hub acknowledged, and the hub log position applied here.
pub const PUSHED: &str = "pushed";
pub const HUB_CURSOR: &str = "hub_cursor";

/// The way to the hub (HTTP in production).
pub trait Link {
    fn push(&mut self, changes: &[Change]) -> Result<Receipt>;
    fn pull(&mut self, after: u64, max: usize) -> Result<Page>;
}

/// What one push did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pushed {
    /// How many changes the hub acknowledged.
    pub acked: u64,
    /// Why the hub cannot apply this center's changes, if it cannot (see `Receipt`).
    pub stuck: Option<String>,
}

/// Logged bytes of a batch unless told otherwise (`[sync] batch_kib`'s default).
pub const BATCH_BYTES: usize = 64 << 10;

/// Sends up to `max` unacknowledged own changes, or about [`BATCH_BYTES`] of them.
pub fn push_once(site: &mut Site, link: &mut dyn Link, max: usize) -> Result<Pushed> {
    let pushed = store::get_u64(site.conn(), PUSHED)?;
    let changes = outbox(site, pushed, max, BATCH_BYTES)?;
    if changes.is_empty() {
        return Ok(Pushed::default());
    }
    let receipt = link.push(&changes)?;
    record_receipt(site, pushed, receipt)
}

/// A batch of the outbox read and encoded ahead, while the one before it is on the link.
pub struct Outgoing {
    /// The last change in it.
    pub last: u64,
    pub body: Vec<u8>,
}

/// Reads and encodes up to `max` own changes after `after`, or about `max_bytes` of logged data (at
/// least one change, however large); `None` if there are none.
pub fn prepare(
    site: &mut Site,
    after: u64,
    max: usize,
    max_bytes: usize,
) -> Result<Option<Outgoing>> {
    let changes = outbox(site, after, max, max_bytes)?;
    let Some(last) = changes.last().map(|c| c.seq) else {
        return Ok(None);
    };
    Ok(Some(Outgoing {
        last,
        body: wire::encode_batch(&changes)?,
    }))
}

/// Own changes after `after`, in order: up to `max`, or about `max_bytes` of logged data.
fn outbox(site: &mut Site, after: u64, max: usize, max_bytes: usize) -> Result<Vec<Change>> {
    let origin = site.id();
    let rows: Vec<Vec<u8>> = site
        .conn()
        .exec(
            "SELECT data FROM kituo_sync.log WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
            (origin, after, max as u64),
        )
        .context("cannot read the outbox")?;
    let taken = store::fitting(rows.iter().map(Vec::len), max_bytes);
    rows[..taken]
        .iter()
        .map(|d| store::decode_logged(d))
        .collect()
}

/// Moves the acknowledged position to what the hub holds; `pushed` is where it was.
pub fn record_receipt(site: &mut Site, pushed: u64, receipt: Receipt) -> Result<Pushed> {
    if receipt.acked > pushed {
        store::set(site.conn(), PUSHED, &receipt.acked.to_string())?;
    }
    Ok(Pushed {
        acked: receipt.acked.saturating_sub(pushed),
        stuck: receipt.stuck,
    })
}

/// What one pull did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulled {
    /// The cursor moved: the hub had something new.
    pub advanced: bool,
    /// More is waiting after this page.
    pub more: bool,
}

/// Applies one page of the hub's log.
pub fn pull_once(
    site: &mut Site,
    policy: &Policy,
    link: &mut dyn Link,
    max: usize,
) -> Result<Pulled> {
    let after = store::get_u64(site.conn(), HUB_CURSOR)?;
    let page = link.pull(after, max)?;
    let advanced = page.last > after;
    if advanced {
        site.apply(policy, &page.changes, |tx, _| {
            store::set(tx, HUB_CURSOR, &page.last.to_string())
        })?;
    }
    Ok(Pulled {
        advanced,
        more: page.more,
    })
}

/// Own changes the hub has not acknowledged yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub changes: u64,
    /// The stamp of the oldest of them.
    pub oldest_hlc: Option<u64>,
}

pub fn backlog(site: &mut Site) -> Result<Backlog> {
    let pushed = store::get_u64(site.conn(), PUSHED)?;
    let origin = site.id();
    let row: Option<(u64, Option<u64>)> = site
        .conn()
        .exec_first(
            "SELECT COUNT(*), MIN(hlc) FROM kituo_sync.log WHERE origin = ? AND seq > ?",
            (origin, pushed),
        )
        .context("cannot count the outbox")?;
    let (changes, oldest_hlc) = row.unwrap_or((0, None));
    Ok(Backlog {
        changes,
        oldest_hlc,
    })
}

/// Drops own changes the hub has acknowledged: it holds them durably, and this outbox is on an SD card.
pub fn prune_outbox(site: &mut Site) -> Result<u64> {
    let pushed = store::get_u64(site.conn(), PUSHED)?;
    let origin = site.id();
    store::prune_log(site.conn(), "origin = ? AND seq <= ?", (origin, pushed))
}

/// Captures, pushes everything, pulls everything: one full exchange.
pub fn sync_once(
    site: &mut Site,
    policy: &Policy,
    link: &mut dyn Link,
    batch: usize,
) -> Result<()> {
    site.capture(policy)?;
    while push_once(site, link, batch)?.acked > 0 {}
    while pull_once(site, policy, link, batch)?.more {}
    Ok(())
}
