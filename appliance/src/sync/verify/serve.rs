//! The hub's side: pure functions of its database, behind whatever transport.

use std::collections::{BTreeSet, HashSet};

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;
use mysql::{AccessMode, IsolationLevel, Transaction, TxOpts};

use super::chunk::chunk_of;
use super::protocol::{
    Catalog, CatalogRequest, HubRow, RowsReply, RowsRequest, SumsReply, SumsRequest,
};
use super::sums::{read_rows, read_tombstones, sums_at, tables_at};
use super::{MAX_CHUNK, MAX_ROWS, MAX_SUMS};
use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::{Target, ID};
use crate::sync::engine::store::read_clocks_of;
use crate::sync::exchange::hub::relayed;

/// The catalog as `center` sees it.
pub fn serve_catalog(
    hub: &mut Site,
    policy: &Policy,
    center: u32,
    req: &CatalogRequest,
) -> Result<Catalog> {
    let target = hub.target().clone();
    let log_end = crate::sync::exchange::hub::log_end(hub)?;
    let tables = tables_at(hub.conn(), &target, policy)?;
    let unpulled = unpulled(hub.conn(), policy, center, req.pulled)?;
    let held = crate::sync::exchange::inbox::received(hub.conn(), center)?;
    Ok(Catalog {
        tables,
        unpulled,
        log_end,
        held,
    })
}

/// Counts what `hub::page` would hand `center` after `pulled`.
pub(super) fn unpulled(
    conn: &mut impl Queryable,
    policy: &Policy,
    center: u32,
    pulled: u64,
) -> Result<u64> {
    let waiting: Vec<(String, u64)> = conn
        .exec(
            "SELECT tbl, COUNT(*) FROM kituo_sync.log WHERE lseq > ? AND origin <> ? GROUP BY tbl",
            (pulled, center),
        )
        .context("cannot count the changes not yet pulled")?;
    Ok(waiting
        .into_iter()
        .filter(|(table, _)| relayed(policy.direction(table)))
        .map(|(_, n)| n)
        .sum())
}

pub fn serve_sums(hub: &mut Site, policy: &Policy, req: &SumsRequest) -> Result<SumsReply> {
    check_window(req)?;
    let target = hub.target().clone();
    check_table(hub.conn(), &target, policy, &req.table, &req.columns)?;
    sums_at(hub.conn(), &target, policy, req)
}

/// The rows, their clocks and the tombstones of the missing ones, read in one snapshot so that a row
/// and its clock belong together.
pub fn serve_rows(hub: &mut Site, policy: &Policy, req: &RowsRequest) -> Result<RowsReply> {
    ensure!(
        req.ids.len() <= MAX_ROWS,
        "at most {MAX_ROWS} rows per request, not {}",
        req.ids.len()
    );
    let target = hub.target().clone();
    check_table(hub.conn(), &target, policy, &req.table, &req.columns)?;
    let mut tx = snapshot(hub)?;
    let reply = rows_in(&mut tx, &target, &req.table, &req.columns, &req.ids)?;
    tx.commit().context("cannot end the snapshot")?;
    Ok(reply)
}

/// The rows of `table` after id `after` on `columns`, in id order, with their clocks: at most `max`
/// rows, and fewer once they pass `bytes` (at least one); true when rows after them remain. How a seed
/// copies the hub: an empty center has nothing to compare.
pub fn serve_page(
    hub: &mut Site,
    policy: &Policy,
    (table, columns, after): (&str, &[String], i64),
    max: usize,
    bytes: usize,
) -> Result<(Vec<HubRow>, bool)> {
    let target = hub.target().clone();
    check_table(hub.conn(), &target, policy, table, columns)?;
    let mut tx = snapshot(hub)?;
    let ids: Vec<i64> = tx
        .exec(
            format!(
                "SELECT id FROM {} WHERE id > ? ORDER BY id LIMIT {max}",
                target.table(table)
            ),
            (after,),
        )
        .with_context(|| format!("cannot read the ids of {table}"))?;
    let mut rows = rows_in(&mut tx, &target, table, columns, &ids)?.rows;
    tx.commit().context("cannot end the snapshot")?;
    let mut more = ids.len() == max;
    let mut size = 0;
    if let Some(cut) = rows.iter().position(|r| {
        size += r.size();
        size > bytes
    }) {
        more |= cut + 1 < rows.len();
        rows.truncate(cut + 1);
    }
    Ok((rows, more))
}

/// A read-only snapshot of the hub's database.
fn snapshot(hub: &mut Site) -> Result<Transaction<'_>> {
    let snapshot = TxOpts::default()
        .set_isolation_level(Some(IsolationLevel::RepeatableRead))
        .set_with_consistent_snapshot(true)
        .set_access_mode(Some(AccessMode::ReadOnly));
    hub.conn()
        .start_transaction(snapshot)
        .context("cannot start a snapshot")
}

fn rows_in(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &str,
    columns: &[String],
    ids: &[i64],
) -> Result<RowsReply> {
    let rows = read_rows(tx, target, table, columns, ids)?;
    let present: HashSet<i64> = rows.iter().map(|(id, _)| *id).collect();
    let present_ids: Vec<i64> = present.iter().copied().collect();
    let mut clocks = read_clocks_of(tx, table, &present_ids)?;
    let gone: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    let tombstones = read_tombstones(tx, table, &gone)?;
    let rows = rows
        .into_iter()
        .map(|(id, values)| HubRow {
            id,
            values,
            clock: clocks.remove(&id),
        })
        .collect();
    Ok(RowsReply { rows, tombstones })
}

pub(super) fn check_window(req: &SumsRequest) -> Result<()> {
    ensure!(
        (1..=MAX_CHUNK).contains(&req.chunk),
        "chunk size {} out of range",
        req.chunk
    );
    ensure!(
        req.lo <= req.last,
        "empty id range {}..={}",
        req.lo,
        req.last
    );
    let chunks =
        i128::from(chunk_of(req.last, req.chunk)) - i128::from(chunk_of(req.lo, req.chunk));
    ensure!(
        chunks < i128::from(MAX_SUMS),
        "at most {MAX_SUMS} chunks per request, not {}",
        chunks + 1
    );
    Ok(())
}

/// Only relayed tables are served, and names reach SQL only once the catalog has them.
pub(super) fn check_table(
    conn: &mut impl Queryable,
    target: &Target,
    policy: &Policy,
    table: &str,
    columns: &[String],
) -> Result<()> {
    ensure!(
        relayed(policy.direction(table)),
        "{table} is not relayed to centers ({}): not served",
        policy.direction(table)
    );
    let name = format!("{}{table}", target.prefix);
    let have: BTreeSet<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&target.database, &name),
        )
        .with_context(|| format!("cannot read the columns of {name}"))?
        .into_iter()
        .collect();
    ensure!(!have.is_empty(), "no table {table} here");
    ensure!(have.contains(ID), "{table} has no id column");
    ensure!(!columns.is_empty(), "no columns asked of {table}");
    if let Some(c) = columns.iter().find(|c| !have.contains(*c)) {
        bail!("{table} has no column {c}");
    }
    Ok(())
}
