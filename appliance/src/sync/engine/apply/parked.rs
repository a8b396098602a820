//! Parked values: what the apply step keeps for columns this site does not have yet, and writes once
//! Moodle's upgrade has added them (driven by [`replay`](crate::sync::engine::replay)).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use mysql::Transaction;

use crate::sync::engine::apply::{Applier, Prefetched};
use crate::sync::engine::change::{Change, Op, Row};
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::store;

impl Applier<'_> {
    /// Keeps aside values of columns this site's table does not have (yet), and returns the rest.
    pub(super) fn park_unknown(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        id: i64,
        stamp: Stamp,
        mut row: Row,
    ) -> Result<Row> {
        let mut shape = self.shape(tx, table)?.context("table vanished")?;
        if row.keys().any(|c| !shape.columns.contains(c)) {
            shape = self.refresh(tx, table)?.context("table vanished")?;
        }
        let unknown: Vec<String> = row
            .keys()
            .filter(|c| !shape.columns.contains(*c))
            .cloned()
            .collect();
        for column in unknown {
            if let Some(value) = row.remove(&column) {
                store::park(tx, table, id, &column, stamp, &value)?;
                if let Some(parked) = self.parked.as_mut() {
                    parked.insert(table.to_owned());
                }
            }
        }
        Ok(row)
    }

    pub(super) fn has_parked(&mut self, tx: &mut Transaction<'_>, table: &str) -> Result<bool> {
        if self.parked.is_none() {
            self.parked = Some(store::parked_tables(tx)?.into_iter().collect());
        }
        Ok(self.parked.as_ref().is_some_and(|p| p.contains(table)))
    }

    /// The columns `table` has now, read afresh (Moodle's upgrade may just have changed it); `None`
    /// when this site has no such table.
    pub fn columns_now(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
    ) -> Result<Option<BTreeSet<String>>> {
        Ok(self.refresh(tx, table)?.map(|shape| shape.columns))
    }

    /// Writes values parked while this site lacked their columns, now that it has them. A value is
    /// written only when no later write of its column is known here: parking recorded the value's
    /// stamp in the row's clock, so a local edit or a newer change since then shows as a later stamp.
    /// Values of rows deleted meanwhile (or never here) are dropped. Returns (written, dropped).
    pub fn replay_parked(
        &mut self,
        tx: &mut Transaction<'_>,
        values: &[store::Parked],
        catch_up: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>,
    ) -> Result<(u64, u64)> {
        let probes: Vec<Change> = values
            .iter()
            .map(|p| Change {
                origin: p.stamp.site,
                seq: 0,
                hlc: p.stamp.hlc,
                table: p.table.clone(),
                id: p.id,
                op: Op::Delete,
            })
            .collect();
        let mut pre = Prefetched::default();
        self.lock_rows(tx, &probes, &mut pre)?;
        catch_up(tx).context("cannot record local changes before replaying parked values")?;
        self.read_clocks(tx, &probes, &mut pre)?;
        let (mut written, mut dropped) = (0, 0);
        let mut rows: BTreeMap<(String, i64), Row> = BTreeMap::new();
        for p in values {
            let key = (p.table.clone(), pre.resolve(&p.table, p.id));
            if pre.tombstones.contains_key(&key) || !pre.present.contains(&key) {
                dropped += 1;
                continue;
            }
            let clock = pre.clocks.entry(key.clone()).or_default();
            let last = clock.column(&p.column);
            if p.stamp < last {
                dropped += 1;
                continue;
            }
            if p.stamp > last {
                clock.cols.insert(p.column.clone(), p.stamp);
                pre.dirty.insert(key.clone());
            }
            rows.entry(key)
                .or_default()
                .insert(p.column.clone(), p.value.clone());
            written += 1;
        }
        for ((table, id), cols) in &rows {
            self.write_columns(tx, table, *id, cols)
                .with_context(|| format!("cannot write parked values of {table} id {id}"))?;
        }
        self.write_clocks(tx, &pre)?;
        Ok((written, dropped))
    }
}
