//! The center's side: walks each table's chunks against the hub's and finds the rows that differ.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;
use mysql::{IsolationLevel, Transaction, TxOpts};

use super::chunk::{
    advance, chunk_ids, chunk_of, earliest, mismatched, row_differences, window, Found,
};
use super::protocol::{HubRow, RowsReply, RowsRequest, SumsReply, SumsRequest, TableInfo};
use super::repair::{clock_past, Restore};
use super::report::{Repair, TableReport};
use super::sums::{lock_hashes, sums_at};
use super::{Options, Reference, MAX_ROWS, MAX_SUMS};
use crate::sync::engine::change::Value;
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::placeholders;
use crate::sync::engine::sql::Target;
use crate::sync::engine::store;
use crate::sync::exchange::agent;

pub(super) struct Checker<'a> {
    pub(super) site: &'a mut Site,
    pub(super) policy: &'a Policy,
    pub(super) hub: &'a mut dyn Reference,
    pub(super) opts: &'a Options,
    pub(super) target: Target,
}

/// A table as compared: its name and the columns both sites have, in name order.
pub(super) struct Compared {
    pub(super) name: String,
    pub(super) columns: Vec<String>,
    /// The local columns a copied row takes here, with their values (see `Policy::arriving_values`).
    pub(super) arriving: Vec<(String, Value)>,
}

impl Compared {
    pub(super) fn new(policy: &Policy, name: &str, columns: Vec<String>) -> Compared {
        let arriving = policy.arriving_values(name);
        Compared {
            name: name.to_owned(),
            columns,
            arriving: arriving.map(|(c, v)| (c.to_owned(), v)).collect(),
        }
    }
}

impl Checker<'_> {
    pub(super) fn compare_table(
        &mut self,
        name: &str,
        here: &TableInfo,
        there: &TableInfo,
    ) -> Result<TableReport> {
        let ours: BTreeSet<&String> = here.columns.iter().collect();
        let theirs: BTreeSet<&String> = there.columns.iter().collect();
        let columns = ours.intersection(&theirs).map(|c| (*c).clone()).collect();
        let table = Compared::new(self.policy, name, columns);
        let mut report = TableReport {
            table: name.to_owned(),
            direction: self.policy.direction(name),
            columns: table.columns.len(),
            columns_only_here: ours.difference(&theirs).map(|c| (*c).clone()).collect(),
            columns_only_at_hub: theirs.difference(&ours).map(|c| (*c).clone()).collect(),
            ..TableReport::default()
        };
        let Some(mut start) = earliest(here.first, there.first) else {
            return Ok(report);
        };
        loop {
            let (lo, last) = window(start, self.opts.chunk, self.opts.window);
            let (ours, theirs) = self.both_sums(&table, self.opts.chunk, lo, last)?;
            report.count(&ours.sums, &theirs.sums);
            for chunk in mismatched(&ours.sums, &theirs.sums) {
                report.differing_chunks += 1;
                let found = self.rows_of_chunk(&table, chunk)?;
                report.note(&found, self.opts.max_listed);
                if self.opts.repair {
                    self.repair(&table, &found, &mut report.repair)?;
                }
            }
            match advance(last, i64::MAX, ours.next, theirs.next)? {
                Some(next) => start = next,
                None => return Ok(report),
            }
        }
    }

    /// The rows of one chunk that differ, by id.
    pub(super) fn rows_of_chunk(&mut self, table: &Compared, chunk: i64) -> Result<Vec<Found>> {
        let (lo, end) = chunk_ids(chunk, self.opts.chunk);
        let mut found = Vec::new();
        let mut start = lo;
        loop {
            let (lo, last) = window(start, 1, MAX_SUMS);
            let last = last.min(end);
            let (ours, theirs) = self.both_sums(table, 1, lo, last)?;
            found.extend(row_differences(&ours.sums, &theirs.sums));
            match advance(last, end, ours.next, theirs.next)? {
                Some(next) => start = next,
                None => return Ok(found),
            }
        }
    }

    pub(super) fn both_sums(
        &mut self,
        table: &Compared,
        chunk: u64,
        lo: i64,
        last: i64,
    ) -> Result<(SumsReply, SumsReply)> {
        let req = SumsRequest {
            table: table.name.clone(),
            columns: table.columns.clone(),
            chunk,
            lo,
            last,
        };
        let ours = sums_at(self.site.conn(), &self.target, self.policy, &req)?;
        let theirs = self
            .hub
            .sums(&req)
            .with_context(|| format!("the hub did not sum ids {lo}..={last}"))?;
        check_reply(&req, &theirs)?;
        Ok((ours, theirs))
    }

    /// Writes the hub's version of the rows found, batch by batch; a batch that fails (say on a unique
    /// key still held by a row repaired later) is retried row by row, and what still fails is reported.
    pub(super) fn repair(
        &mut self,
        table: &Compared,
        found: &[Found],
        out: &mut Repair,
    ) -> Result<()> {
        if found.is_empty() {
            return Ok(());
        }
        // A local edit committed before the comparison must be in the outbox now, or the pending check
        // below could not keep it.
        self.site
            .capture(self.policy)
            .context("cannot record local changes before repairing")?;
        for batch in found.chunks(MAX_ROWS) {
            let req = RowsRequest {
                table: table.name.clone(),
                columns: table.columns.clone(),
                ids: batch.iter().map(|f| f.id).collect(),
            };
            let reply = self
                .hub
                .rows(&req)
                .context("the hub did not send its rows")?;
            check_rows(&req, &reply)?;
            match self.write(table, batch, &reply) {
                Ok(done) => out.add(done),
                Err(_) if batch.len() > 1 => {
                    for one in batch {
                        match self.write(table, std::slice::from_ref(one), &reply) {
                            Ok(done) => out.add(done),
                            Err(e) => out.failed.push((one.id, format!("{e:#}"))),
                        }
                    }
                }
                Err(e) => out.failed.push((batch[0].id, format!("{e:#}"))),
            }
        }
        Ok(())
    }

    /// One transaction, under the log lock like every apply: rows with unacknowledged local changes or
    /// changed since compared are left alone; the rest take the hub's values, clocks and tombstones.
    pub(super) fn write(
        &mut self,
        table: &Compared,
        batch: &[Found],
        reply: &RowsReply,
    ) -> Result<Repair> {
        let origin = self.site.id();
        let target = self.target.clone();
        let ids: Vec<i64> = batch.iter().map(|f| f.id).collect();
        let rows: HashMap<i64, &HubRow> = reply.rows.iter().map(|r| (r.id, r)).collect();
        let tombs: HashMap<i64, Stamp> = reply.tombstones.iter().map(|t| (t.id, t.stamp)).collect();
        let opts = TxOpts::default().set_isolation_level(Some(IsolationLevel::ReadCommitted));
        let mut tx = self
            .site
            .conn()
            .start_transaction(opts)
            .context("cannot start a transaction")?;
        store::lock_log(&mut tx)?;
        let pending = pending_ids(&mut tx, origin, &table.name, &ids)?;
        let now = lock_hashes(&mut tx, &target, &table.name, &table.columns, &ids)?;
        let mut done = Repair::default();
        let mut seen = 0;
        for found in batch {
            if pending.contains(&found.id) {
                done.pending += 1;
                continue;
            }
            if now.get(&found.id).copied() != found.here {
                done.moved += 1;
                continue;
            }
            let hub = Restore {
                row: rows.get(&found.id).copied(),
                tombstone: tombs.get(&found.id).copied(),
            };
            let present = now.contains_key(&found.id);
            let stamp = hub
                .write(&mut tx, &target, table, found.id, present)
                .with_context(|| format!("cannot repair {} id {}", table.name, found.id))?;
            seen = seen.max(stamp);
            done.repaired += 1;
        }
        clock_past(&mut tx, seen)?;
        tx.commit().context("cannot commit the repair")?;
        Ok(done)
    }
}

/// Ids of `table` with own changes in the outbox the hub has not acknowledged.
pub(super) fn pending_ids(
    tx: &mut Transaction<'_>,
    origin: u32,
    table: &str,
    ids: &[i64],
) -> Result<HashSet<i64>> {
    let pushed = store::get_u64(tx, agent::PUSHED)?;
    let mut params: Vec<mysql::Value> = vec![origin.into(), pushed.into(), table.into()];
    params.extend(ids.iter().map(|id| mysql::Value::Int(*id)));
    let found: Vec<i64> = tx
        .exec(
            format!(
                "SELECT DISTINCT row_id FROM kituo_sync.log
                 WHERE origin = ? AND seq > ? AND tbl = ? AND row_id IN ({})",
                placeholders(ids.len())
            ),
            params,
        )
        .context("cannot read the outbox")?;
    Ok(found.into_iter().collect())
}

/// A reply that strays outside its request would make the walk loop or skip rows.
pub(super) fn check_reply(req: &SumsRequest, reply: &SumsReply) -> Result<()> {
    let (first, last) = (chunk_of(req.lo, req.chunk), chunk_of(req.last, req.chunk));
    let ordered = reply.sums.windows(2).all(|w| w[0].chunk < w[1].chunk);
    let inside = reply.sums.iter().all(|s| (first..=last).contains(&s.chunk));
    ensure!(
        ordered && inside,
        "the hub's sums for ids {}..={} are out of order or range",
        req.lo,
        req.last
    );
    if let Some(next) = reply.next {
        ensure!(
            next > req.last,
            "the hub's next id {next} is inside the window"
        );
    }
    Ok(())
}

pub(super) fn check_rows(req: &RowsRequest, reply: &RowsReply) -> Result<()> {
    let asked: HashSet<i64> = req.ids.iter().copied().collect();
    let stray = reply
        .rows
        .iter()
        .map(|r| r.id)
        .chain(reply.tombstones.iter().map(|t| t.id))
        .find(|id| !asked.contains(id));
    match stray {
        Some(id) => bail!(
            "the hub sent row {id} of {}, which was not asked for",
            req.table
        ),
        None => Ok(()),
    }
}
