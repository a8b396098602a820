//! Turns transactions captured from this site's binlog into logged changes, stamped and numbered, with
//! the row clocks the merge needs, in the caller's transaction together with the new capture position.

use anyhow::{Context, Result};
use mysql::Transaction;

use std::collections::BTreeSet;

use mysql::prelude::Queryable;

use crate::sync::engine::capture::{BinlogPos, CapturedTxn, RowChange};
use crate::sync::engine::change::{changed_columns, Change, Op, Row, RowKind, Value};
use crate::sync::engine::clock::{commit_millis, wall_millis, Hlc, Stamp};
use crate::sync::engine::merge::RowClock;
use crate::sync::engine::policy::{Direction, Policy, Role};
use crate::sync::engine::skew;
use crate::sync::engine::sql::{quote, Target, ID};
use crate::sync::engine::store;
use crate::sync::engine::store::{read_clock, write_clock};

/// State names in `kituo_sync.state`.
pub const CAPTURE_POS: &str = "capture_pos";
pub const HLC: &str = "hlc";
/// The highest stamp seen from elsewhere: the clock resumes after it (kept apart from the recorder's
/// own `hlc` row so that capture and apply never wait for each other's lock).
pub const HLC_SEEN: &str = "hlc_seen";
pub const NEXT_SEQ: &str = "next_seq";

/// What recording did with the captured rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub changes: u64,
    /// Rows of tables this site does not send (volatile, or owned by the other side).
    pub kept_local: u64,
    /// Updates that rewrote a row with the values it had.
    pub unchanged: u64,
    /// Last stamp handed out.
    pub last_hlc: u64,
}

pub struct Recorder<'p> {
    site: u32,
    role: Role,
    policy: &'p Policy,
    target: &'p Target,
}

impl<'p> Recorder<'p> {
    pub fn new(site: u32, role: Role, policy: &'p Policy, target: &'p Target) -> Recorder<'p> {
        Recorder {
            site,
            role,
            policy,
            target,
        }
    }

    /// Logs the changes of `txns` and moves the capture position to `end` (the reader's position after
    /// them, which also passes transactions that produced no rows here). The clock and sequence
    /// counter are read and written in `tx`, so a rolled-back transaction leaves no trace.
    pub fn record(
        &self,
        tx: &mut Transaction<'_>,
        txns: &[CapturedTxn],
        end: &BinlogPos,
    ) -> Result<Recorded> {
        let mut done = Recorded::default();
        let mut hlc = Hlc::resume(store::get_u64(tx, HLC)?.max(store::get_u64(tx, HLC_SEEN)?));
        let mut next_seq = store::get_u64(tx, NEXT_SEQ)?.max(1);
        let mut logged = Vec::new();
        let mut merged = MergedAway::read(tx)?;
        let offset = skew::current_offset(tx)?;
        let now = wall_millis();
        for txn in txns {
            let written = commit_millis(txn.timestamp, now, offset);
            for row in &txn.rows {
                let Some(mut change) = self.change_of(row, &mut done)? else {
                    continue;
                };
                self.point_at_winners(tx, &mut merged, &mut change)?;
                let change = Change {
                    origin: self.site,
                    seq: next_seq,
                    hlc: hlc.tick_at(written),
                    ..change
                };
                next_seq += 1;
                self.keep_clock(tx, &change)?;
                logged.push(change);
                done.changes += 1;
            }
        }
        store::append_all(tx, &logged)?;
        done.last_hlc = hlc.last();
        store::set(tx, HLC, &hlc.last().to_string())?;
        store::set(tx, NEXT_SEQ, &next_seq.to_string())?;
        store::set(tx, CAPTURE_POS, &end.to_string())?;
        Ok(done)
    }

    /// The change a captured row makes, without its stamp and number; None when it is not sent.
    fn change_of(&self, row: &RowChange, done: &mut Recorded) -> Result<Option<Change>> {
        let Some(table) = row.table.strip_prefix(&self.target.prefix) else {
            done.kept_local += 1;
            return Ok(None);
        };
        if !self.role.sends(self.policy.direction(table)) {
            done.kept_local += 1;
            return Ok(None);
        }
        let image = row
            .after
            .as_ref()
            .or(row.before.as_ref())
            .context("a captured row has no image")?;
        if row
            .before
            .iter()
            .chain(&row.after)
            .any(|r| self.policy.is_site_local(table, r))
        {
            done.kept_local += 1;
            return Ok(None);
        }
        let id = match image.get(ID) {
            Some(Value::Int(i)) => *i,
            Some(Value::UInt(u)) => i64::try_from(*u).context("id out of range")?,
            _ => {
                done.kept_local += 1;
                return Ok(None);
            }
        };
        let op = match (row.kind, &row.before, &row.after) {
            (RowKind::Insert, _, Some(after)) => Op::Insert(after.clone()),
            (RowKind::Delete, _, _) => Op::Delete,
            (RowKind::Update, Some(before), Some(after)) => {
                let mut cols = changed_columns(before, after);
                cols.retain(|column, _| !self.policy.is_unsent_column(table, column));
                if cols.is_empty() {
                    done.unchanged += 1;
                    return Ok(None);
                }
                with_groups(&mut cols, after, self.policy.groups(table));
                Op::Update(cols)
            }
            _ => anyhow::bail!(
                "captured {:?} of {} without its images",
                row.kind,
                row.table
            ),
        };
        Ok(Some(Change {
            origin: self.site,
            seq: 0,
            hlc: 0,
            table: table.to_owned(),
            id,
            op,
        }))
    }

    /// A row written here may name a row that sync merged into another since Moodle read its id (a
    /// form posted minutes after a unique-key clash was resolved, say). Every other site redirects
    /// that reference to the winner when it applies the change; this site must too, or it alone
    /// keeps pointing at a row that no longer exists. The fix is written here without being captured:
    /// the change already carries it.
    fn point_at_winners(
        &self,
        tx: &mut Transaction<'_>,
        merged: &mut MergedAway,
        change: &mut Change,
    ) -> Result<()> {
        let (Op::Insert(row) | Op::Update(row)) = &mut change.op else {
            return Ok(());
        };
        for r in self.policy.references(&change.table) {
            let Some(Value::Int(loser)) = row.get(&r.column).cloned() else {
                continue;
            };
            if !r.holds_in(row) {
                continue;
            }
            let Some(winner) = merged.winner(tx, &r.table, loser)? else {
                continue;
            };
            let column = &r.column;
            row.insert(column.clone(), Value::Int(winner));
            tx.exec_drop(
                format!(
                    "UPDATE {} SET {} = ? WHERE id = ? AND {} = ?",
                    self.target.table(&change.table),
                    quote(column),
                    quote(column)
                ),
                (winner, change.id, loser),
            )
            .with_context(|| format!("cannot point {}.{column} at row {winner}", change.table))?;
        }
        Ok(())
    }

    /// Row clocks exist for two-way tables only: elsewhere one side owns the rows.
    fn keep_clock(&self, tx: &mut Transaction<'_>, change: &Change) -> Result<()> {
        if self.policy.direction(&change.table) != Direction::Both {
            return Ok(());
        }
        let stamp = change.stamp();
        match &change.op {
            Op::Insert(_) => write_clock(tx, &change.table, change.id, &RowClock::born(stamp)),
            Op::Delete => store::bury(tx, &change.table, change.id, stamp),
            Op::Update(cols) => {
                let mut clock = read_clock(tx, &change.table, change.id)?
                    .unwrap_or_else(|| RowClock::born(Stamp::ORIGIN));
                clock.cols.extend(cols.keys().map(|c| (c.clone(), stamp)));
                write_clock(tx, &change.table, change.id, &clock)
            }
        }
    }
}

/// Widens an update to the whole of every column group it touches: a reply that leaves
/// `usermodified` as it was still wrote it together with `timemodified`, and the two must win or lose
/// as one at every site.
fn with_groups(cols: &mut Row, after: &Row, groups: &[Vec<String>]) {
    for group in groups {
        if !group.iter().any(|c| cols.contains_key(c)) {
            continue;
        }
        for column in group {
            if let Some(value) = after.get(column) {
                cols.entry(column.clone()).or_insert_with(|| value.clone());
            }
        }
    }
}

/// The tables with rows that lost a unique-key clash here, read once per recording: most have none,
/// and those need no lookup.
struct MergedAway {
    tables: BTreeSet<String>,
}

impl MergedAway {
    fn read(tx: &mut Transaction<'_>) -> Result<MergedAway> {
        let tables: Vec<String> = tx
            .query("SELECT DISTINCT tbl FROM kituo_sync.alias")
            .context("cannot read the aliased tables")?;
        Ok(MergedAway {
            tables: tables.into_iter().collect(),
        })
    }

    fn winner(&mut self, tx: &mut Transaction<'_>, table: &str, id: i64) -> Result<Option<i64>> {
        if !self.tables.contains(table) {
            return Ok(None);
        }
        tx.exec_first(
            "SELECT winner FROM kituo_sync.alias WHERE tbl = ? AND loser = ?",
            (table, id),
        )
        .context("cannot read an alias")
    }
}

/// The stored capture position, if capture has started.
pub fn position(tx: &mut impl mysql::prelude::Queryable) -> Result<Option<BinlogPos>> {
    store::get(tx, CAPTURE_POS)?
        .map(|p| p.parse().context("stored capture position is malformed"))
        .transpose()
}
