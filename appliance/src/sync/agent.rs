//! A center's side of sync: sends its logged changes to the hub and applies the hub's, each step
//! acknowledged and resumable, so a cut anywhere only means doing the step again.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use super::change::Change;
use super::hub::{Page, Receipt};
use super::policy::Policy;
use super::site::Site;
use super::store;

/// State names: the last own change the hub acknowledged, and the hub log position applied here.
pub const PUSHED: &str = "pushed";
pub const HUB_CURSOR: &str = "hub_cursor";

/// The way to the hub (HTTP in production).
pub trait Link {
    fn push(&mut self, changes: &[Change]) -> Result<Receipt>;
    fn pull(&mut self, after: u64, max: usize) -> Result<Page>;
}

/// Sends up to `max` unacknowledged own changes; returns how many the hub acknowledged.
pub fn push_once(site: &mut Site, link: &mut dyn Link, max: usize) -> Result<u64> {
    let pushed = store::get_u64(site.conn(), PUSHED)?;
    let origin = site.id();
    let rows: Vec<Vec<u8>> = site
        .conn()
        .exec(
            "SELECT data FROM kituo_sync.log WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
            (origin, pushed, max as u64),
        )
        .context("cannot read the outbox")?;
    if rows.is_empty() {
        return Ok(0);
    }
    let changes = rows
        .iter()
        .map(|d| store::decode_logged(d))
        .collect::<Result<Vec<_>>>()?;
    let receipt = link.push(&changes)?;
    let acked = receipt.acked.saturating_sub(pushed);
    if receipt.acked > pushed {
        store::set(site.conn(), PUSHED, &receipt.acked.to_string())?;
    }
    Ok(acked)
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
    while push_once(site, link, batch)? > 0 {}
    while pull_once(site, policy, link, batch)?.more {}
    Ok(())
}
