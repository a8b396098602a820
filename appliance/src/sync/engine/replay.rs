//! Replays what waited for this site's schema to catch up: values parked for columns it lacked and
//! changes deferred for tables it lacked, once Moodle's upgrade has created them.
//!
//! It runs after every capture (in its own transaction) and at the start of every apply (in the
//! batch's transaction, before the batch, which may carry newer changes to the same rows), so a Moodle
//! upgrade needs no restart and no signal: the first pass that finds the column or table replays the
//! waiting entries and removes them in the same commit, which makes the replay happen exactly once.
//! When nothing waits, a pass costs two small queries; while something waits for a column or table
//! that is still missing, one information_schema lookup per such table.
//!
//! Deferred changes go through the ordinary merge, oldest first, so tombstones keep a row deleted
//! meanwhile buried. Parked values carry the stamp of their write, which parking also wrote into the
//! row's clock: a later local edit or change of the column shows as a later stamp and keeps its value.

use anyhow::{Context, Result};
use mysql::Transaction;

use crate::sync::engine::apply::{Applier, Outcome};
use crate::sync::engine::change::Change;
use crate::sync::engine::policy::Policy;
use crate::sync::engine::sql::Target;
use crate::sync::engine::store;

/// Entries replayed per statement batch: bounds the memory a long-deferred table takes.
const CHUNK: usize = 500;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Parked values written.
    pub values: u64,
    /// Deferred changes applied (merged, superseded or buried like any change).
    pub changes: u64,
    /// Parked values dropped: their row is gone, or a later write of the column won.
    pub dropped: u64,
    /// Entries still waiting for a column or table this site does not have.
    pub waiting: u64,
}

/// Replays, in `tx`, every parked value whose column exists now and every deferred change whose table
/// exists now. `catch_up` records local changes (called after the rows are locked, as in apply).
pub fn replay(
    tx: &mut Transaction<'_>,
    policy: &Policy,
    target: &Target,
    site: u32,
    catch_up: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>,
) -> Result<Replayed> {
    let mut done = Replayed::default();
    let deferred_tables = store::deferred_tables(tx)?;
    let parked_tables = store::parked_tables(tx)?;
    if deferred_tables.is_empty() && parked_tables.is_empty() {
        return Ok(done);
    }
    let mut applier = Applier::new(policy, target.clone(), site);
    let mut ready = Vec::new();
    for table in deferred_tables {
        if applier.columns_now(tx, &table)?.is_some() {
            ready.push(table);
        }
    }
    // A table dropped again mid-replay defers its changes anew, under higher keys: stop before them.
    let top = store::last_deferred(tx)?;
    let mut after = 0;
    loop {
        let batch: Vec<(u64, Change)> = store::deferred(tx, &ready, after, CHUNK)?
            .into_iter()
            .filter(|(key, _)| *key <= top)
            .collect();
        let Some(last) = batch.last().map(|(key, _)| *key) else {
            break;
        };
        let changes: Vec<Change> = batch.iter().map(|(_, c)| c.clone()).collect();
        let tally = applier
            .apply(tx, &changes, catch_up)
            .context("cannot replay deferred changes")?;
        let keys: Vec<u64> = batch.iter().map(|(key, _)| *key).collect();
        store::undefer(tx, &keys)?;
        done.changes += tally
            .iter()
            .filter(|(outcome, _)| **outcome != Outcome::Deferred)
            .map(|(_, n)| n)
            .sum::<u64>();
        after = last;
    }
    for table in parked_tables {
        let Some(columns) = applier.columns_now(tx, &table)? else {
            continue;
        };
        let columns: Vec<String> = columns.into_iter().collect();
        loop {
            let values = store::parked(tx, &table, &columns, CHUNK)?;
            if values.is_empty() {
                break;
            }
            let (written, dropped) = applier
                .replay_parked(tx, &values, catch_up)
                .with_context(|| format!("cannot replay parked values of {table}"))?;
            for v in &values {
                store::unpark(tx, &v.table, v.id, &v.column)?;
            }
            done.values += written;
            done.dropped += dropped;
        }
    }
    done.waiting = store::waiting(tx)?;
    Ok(done)
}
