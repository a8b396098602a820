//! The hub's inbox: a center's batch is stored as it came and acknowledged at once, then applied in
//! order by one applier. Acknowledging only after applying kept a slow link idle while the hub worked
//! (stop and wait: 62% of a 256 kbit/s link); a stored batch is as durable as an applied one, so the
//! center may drop it from its outbox just the same.
//!
//! Batches are applied per center in the order of their last change. A batch that overlaps one
//! applied before (a retry after a cut, with a smaller batch) costs nothing: the applied watermark
//! makes its old changes no-ops. A batch that cannot be applied (a bug, or a center's bad data) stays
//! at the head of that center's queue with its error, which every push answer repeats, while the
//! other centers go on.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::change::Change;
use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::store;
use crate::sync::exchange::hub::{self, Receipt};
use crate::sync::exchange::wire;

/// Most batches a center may have waiting; beyond, pushes are refused until the hub catches up, so a
/// fast center cannot fill the hub's disk.
pub const MAX_WAITING: u64 = 256;

/// How long a batch that failed waits before it is tried again.
pub const RETRY_SECONDS: u64 = 10;

/// Most batches one drain applies before it returns (the applier calls again at once if more wait).
pub const MAX_PER_DRAIN: usize = 64;

/// The lock that makes one applier at a time across every hub process sharing the database.
const APPLIER_LOCK: &str = "kituo_sync.inbox";

/// What a push is answered when the center's queue is full.
pub const FULL: &str = "the hub is still applying this center's earlier batches; try again later";

/// Stores a center's batch (`body` as it came, `changes` decoded from it) unless it holds nothing new;
/// answers with how far the center's changes are stored, or `None` when the queue is full.
pub fn receive(
    site: &mut Site,
    center: u32,
    body: &[u8],
    changes: &[Change],
) -> Result<Option<Receipt>> {
    hub::check_origin(center, changes)?;
    let received = received(site.conn(), center)?;
    let last = changes.iter().map(|c| c.seq).max().unwrap_or(0);
    if last > received {
        if waiting(site.conn(), center)? >= MAX_WAITING {
            return Ok(None);
        }
        // A concurrent retry of the same batch stores it once.
        site.conn()
            .exec_drop(
                "INSERT IGNORE INTO kituo_sync.inbox (origin, last_seq, data) VALUES (?, ?, ?)",
                (center, last, body),
            )
            .context("cannot store the batch")?;
    }
    Ok(Some(Receipt {
        acked: received.max(last),
        rejected: 0,
        stuck: stuck(site.conn(), center)?,
    }))
}

/// The answer to a push that brings nothing new.
pub fn receipt(conn: &mut impl Queryable, center: u32) -> Result<Receipt> {
    Ok(Receipt {
        acked: received(conn, center)?,
        rejected: 0,
        stuck: stuck(conn, center)?,
    })
}

/// How far `center`'s changes are held here, applied or waiting.
pub fn received(conn: &mut impl Queryable, center: u32) -> Result<u64> {
    let waiting: Option<Option<u64>> = conn
        .exec_first(
            "SELECT MAX(last_seq) FROM kituo_sync.inbox WHERE origin = ?",
            (center,),
        )
        .context("cannot read the inbox")?;
    Ok(waiting
        .flatten()
        .unwrap_or(0)
        .max(store::applied(conn, center)?))
}

pub fn waiting(conn: &mut impl Queryable, center: u32) -> Result<u64> {
    let n: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM kituo_sync.inbox WHERE origin = ?",
            (center,),
        )
        .context("cannot count the inbox")?;
    Ok(n.unwrap_or(0))
}

/// The error that holds `center`'s queue, if one does.
pub fn stuck(conn: &mut impl Queryable, center: u32) -> Result<Option<String>> {
    let error: Option<Option<String>> = conn
        .exec_first(
            "SELECT error FROM kituo_sync.inbox WHERE origin = ? ORDER BY last_seq LIMIT 1",
            (center,),
        )
        .context("cannot read the inbox")?;
    Ok(error.flatten())
}

/// Applies what waits, for one center or for all, unless another applier holds the lock for longer
/// than `wait_seconds`; returns how many batches were applied.
pub fn drain(
    site: &mut Site,
    policy: &Policy,
    center: Option<u32>,
    wait_seconds: u32,
) -> Result<usize> {
    let locked: Option<Option<i64>> = site
        .conn()
        .exec_first("SELECT GET_LOCK(?, ?)", (APPLIER_LOCK, wait_seconds))
        .context("cannot take the inbox lock")?;
    if locked.flatten() != Some(1) {
        return Ok(0);
    }
    let applied = apply_waiting(site, policy, center);
    let released = site
        .conn()
        .exec_drop("DO RELEASE_LOCK(?)", (APPLIER_LOCK,))
        .context("cannot release the inbox lock");
    let applied = applied?;
    released?;
    Ok(applied)
}

/// Round by round, each center's oldest batch, so that one center's backlog does not hold the others.
/// A batch that failed is tried again `RETRY_SECONDS` later (the rules may have been derived again, or
/// the hub's schema fixed, since).
fn apply_waiting(site: &mut Site, policy: &Policy, center: Option<u32>) -> Result<usize> {
    let mut applied = 0;
    let mut held = Vec::new();
    loop {
        let heads: Vec<(u32, u64, Vec<u8>)> = site
            .conn()
            .exec(
                "SELECT i.origin, i.last_seq, i.data FROM kituo_sync.inbox i
                 JOIN (SELECT origin, MIN(last_seq) AS first FROM kituo_sync.inbox GROUP BY origin) h
                   ON h.origin = i.origin AND h.first = i.last_seq
                 WHERE i.error IS NULL OR i.failed_at < NOW() - INTERVAL ? SECOND",
                (RETRY_SECONDS,),
            )
            .context("cannot read the inbox")?;
        let heads: Vec<_> = heads
            .into_iter()
            .filter(|(origin, ..)| center.is_none_or(|c| c == *origin) && !held.contains(origin))
            .collect();
        // Bounded, so that a busy hub still picks up new rules between rounds.
        if heads.is_empty() || applied >= MAX_PER_DRAIN {
            return Ok(applied);
        }
        for (origin, last, data) in heads {
            match apply_one(site, policy, origin, &data) {
                Ok(()) => applied += 1,
                Err(e) if store::is_connection_error(&e) => return Err(e),
                Err(e) => {
                    let error = format!("batch ending at #{last}: {e:#}");
                    eprintln!("hub: cannot apply center {origin}'s {error}");
                    site.conn()
                        .exec_drop(
                            "UPDATE kituo_sync.inbox SET error = LEFT(?, 1000), failed_at = NOW()
                             WHERE origin = ? AND last_seq = ?",
                            (&error, origin, last),
                        )
                        .context("cannot record the inbox error")?;
                    held.push(origin);
                }
            }
        }
    }
}

/// Applies one stored batch, then drops every stored batch it leaves nothing new in. The drop is not in
/// the apply's transaction, and needs not be: a batch applied again is a no-op.
fn apply_one(site: &mut Site, policy: &Policy, center: u32, data: &[u8]) -> Result<()> {
    let changes = wire::decode_batch(data)?;
    let receipt = hub::accept(site, policy, center, &changes)?;
    site.conn()
        .exec_drop(
            "DELETE FROM kituo_sync.inbox WHERE origin = ? AND last_seq <= ?",
            (center, receipt.acked),
        )
        .context("cannot drop applied batches from the inbox")
}
