//! The hub's side of sync, beside the central Moodle: accepts each center's changes that its rules allow,
//! applies them centrally, and relays them through its log to the other centers.

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};

use super::change::Change;
use super::policy::{Direction, Policy};
use super::site::Site;
use super::store;

/// What the hub tells a center after a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The center's changes are applied (or refused) up to this sequence number: resend from after it.
    pub acked: u64,
    /// How many of this push the rules refused.
    pub rejected: u64,
}

/// A page of the hub's log for one center.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub changes: Vec<Change>,
    /// The log position this page ends at: the center's next `after`.
    pub last: u64,
    /// More changes wait after this page.
    pub more: bool,
}

/// Whether a center may send changes to a table that syncs `direction`.
pub fn center_may_write(direction: Direction) -> bool {
    matches!(direction, Direction::Both | Direction::CentersToHub)
}

/// Whether the hub hands a change to `table` to centers.
pub fn relayed(direction: Direction) -> bool {
    matches!(direction, Direction::Both | Direction::HubToCenters)
}

/// Applies a center's batch. Changes its rules do not allow are refused and recorded, never applied:
/// a stolen or misconfigured card must not rewrite the university's configuration.
pub fn accept(
    site: &mut Site,
    policy: &Policy,
    center: u32,
    changes: &[Change],
) -> Result<Receipt> {
    if let Some(c) = changes.iter().find(|c| c.origin != center) {
        bail!(
            "center {center} sent a change made by site {} (#{}); refused",
            c.origin,
            c.seq
        );
    }
    let (allowed, refused): (Vec<Change>, Vec<Change>) = changes
        .iter()
        .cloned()
        .partition(|c| center_may_write(policy.direction(&c.table)));
    let top = changes.iter().map(|c| c.seq).max().unwrap_or(0);
    let already = store::applied(site.conn(), center)?;
    site.apply(policy, &allowed, |tx, fresh| {
        for change in fresh {
            store::append(tx, change)?;
        }
        for change in refused.iter().filter(|c| c.seq > already) {
            reject(
                tx,
                change,
                "the rules do not let a center change this table",
            )?;
        }
        store::set_applied(tx, center, top)
    })?;
    Ok(Receipt {
        acked: store::applied(site.conn(), center)?,
        rejected: refused.len() as u64,
    })
}

fn reject(tx: &mut impl Queryable, change: &Change, reason: &str) -> Result<()> {
    tx.exec_drop(
        "INSERT INTO kituo_sync.rejected (origin, seq, tbl, row_id, reason) VALUES (?, ?, ?, ?, ?)",
        (change.origin, change.seq, &change.table, change.id, reason),
    )
    .context("cannot record a refused change")
}

/// The changes after log position `after` that `center` has not seen: everything relayed, except its own,
/// up to `max` changes or about `max_bytes` of logged data (at least one change), whichever comes first.
pub fn page(
    site: &mut Site,
    policy: &Policy,
    center: u32,
    after: u64,
    max: usize,
    max_bytes: usize,
) -> Result<Page> {
    let rows: Vec<(u64, Vec<u8>)> = site
        .conn()
        .exec(
            "SELECT lseq, data FROM kituo_sync.log WHERE lseq > ? AND origin <> ? ORDER BY lseq LIMIT ?",
            (after, center, max as u64 + 1),
        )
        .context("cannot read the hub's log")?;
    let mut last = after;
    let mut bytes = 0;
    let mut taken = 0;
    let mut changes = Vec::new();
    for (lseq, data) in rows.iter().take(max) {
        if taken > 0 && bytes + data.len() > max_bytes {
            break;
        }
        taken += 1;
        bytes += data.len();
        last = *lseq;
        let change = store::decode_logged(data)?;
        if relayed(policy.direction(&change.table)) {
            changes.push(change);
        }
    }
    Ok(Page {
        changes,
        last,
        more: rows.len() > taken,
    })
}

/// Records that `center` has everything up to log position `pulled` (its next pull starts after it).
pub fn note_pulled(site: &mut Site, center: u32, pulled: u64) -> Result<()> {
    site.conn()
        .exec_drop(
            "UPDATE kituo_sync.centers SET pulled = GREATEST(pulled, ?) WHERE site = ?",
            (pulled, center),
        )
        .context("cannot record a center's position")
}

/// Drops the log rows every registered center has pulled; returns how many. A center never seen yet
/// holds everything back.
pub fn prune(site: &mut Site) -> Result<u64> {
    let floor: Option<Option<u64>> = site
        .conn()
        .query_first("SELECT MIN(pulled) FROM kituo_sync.centers")
        .context("cannot read the centers' positions")?;
    match floor.flatten() {
        Some(upto) if upto > 0 => store::prune_log(site.conn(), "lseq <= ?", (upto,)),
        _ => Ok(0),
    }
}
