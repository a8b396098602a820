//! Applies changes made at other sites to this site's Moodle database, under the rules of [`merge`].
//!
//! A batch is applied in the caller's transaction, in three steps: lock every row the batch touches,
//! let local capture catch up (a local edit committed before the lock must have its stamp recorded
//! before we decide against it), then decide and write change by change. The caller commits the batch
//! together with its watermark.
//!
//! [`merge`]: crate::sync::engine::merge

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;

use crate::sync::engine::change::{Change, Op, Row, Value};
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::merge::{winning_columns, RowClock};
use crate::sync::engine::policy::{Direction, Policy};
use crate::sync::engine::sql::{
    is_duplicate, placeholders, quote, read_row, table_and_ids, to_sql, Target, ID, IN_LIST,
};
use crate::sync::engine::store::{self, read_clocks_of};

mod held;
mod identity;
mod parked;
mod unique;

use held::{Held, HeldWriteFailed};

/// What happened to one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Applied,
    /// Lost to newer writes on every column it touched; nothing written.
    Superseded,
    /// The row was deleted here: delete wins.
    Buried,
    /// Another row had the same unique key; the two were merged.
    Merged,
    /// Another row had the same name (an identity); both were kept, the later-born renamed.
    Renamed,
    /// An update for a row this site never had.
    Orphan,
    /// The table does not exist here yet (the sender's Moodle is newer); kept to apply after upgrade.
    Deferred,
    /// A table that never syncs.
    Ignored,
}

/// Counts of outcomes, for logs and the status page.
pub type Tally = BTreeMap<Outcome, u64>;

/// The columns and unique keys a table really has, read from information_schema: the binlog and the
/// sender may know a newer or older version of a table than this site.
#[derive(Clone)]
struct TableShape {
    columns: BTreeSet<String>,
    uniques: Vec<Vec<String>>,
}

pub struct Applier<'p> {
    policy: &'p Policy,
    target: Target,
    /// This site's number: the suffix of its own rows renamed to give way to the hub's.
    site: u32,
    /// Shapes read so far; `None` for a table this site does not have.
    catalog: HashMap<String, Option<TableShape>>,
    /// Tables with parked values: a newer write to such a column makes its parked value obsolete.
    parked: Option<BTreeSet<String>>,
    /// Whether plain inserts and updates are held and written many rows per statement.
    holding: bool,
    held: Held,
}

/// The rows of one batch, read under lock before any decision.
#[derive(Default)]
struct Prefetched {
    present: HashSet<(String, i64)>,
    clocks: HashMap<(String, i64), RowClock>,
    tombstones: HashMap<(String, i64), store::Grave>,
    aliases: HashMap<(String, i64), i64>,
    dirty: HashSet<(String, i64)>,
}

impl<'p> Applier<'p> {
    pub fn new(policy: &'p Policy, target: Target, site: u32) -> Applier<'p> {
        Applier {
            policy,
            target,
            site,
            catalog: HashMap::new(),
            parked: None,
            holding: false,
            held: Held::default(),
        }
    }

    /// Applies `changes` in order inside `tx`. `catch_up` records local changes committed so far; it is
    /// called after the batch's rows are locked.
    ///
    /// Plain inserts and updates are written many rows per statement. Should the server refuse one
    /// of those statements, the batch is applied again from a savepoint one change at a time.
    pub fn apply(
        &mut self,
        tx: &mut Transaction<'_>,
        changes: &[Change],
        catch_up: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>,
    ) -> Result<Tally> {
        tx.query_drop("SAVEPOINT kituo_apply")
            .context("cannot set a savepoint")?;
        self.holding = true;
        let held = self.apply_in_order(tx, changes, catch_up);
        self.holding = false;
        match held {
            Err(e) if e.downcast_ref::<HeldWriteFailed>().is_some() => {
                eprintln!("sync: applying the batch again one change at a time: {e:#}");
                tx.query_drop("ROLLBACK TO SAVEPOINT kituo_apply")
                    .context("cannot roll back to the savepoint")?;
                self.held = Held::default();
                self.parked = None;
                self.apply_in_order(tx, changes, catch_up)
            }
            other => other,
        }
    }

    fn apply_in_order(
        &mut self,
        tx: &mut Transaction<'_>,
        changes: &[Change],
        catch_up: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>,
    ) -> Result<Tally> {
        let mut pre = Prefetched::default();
        self.lock_rows(tx, changes, &mut pre)?;
        catch_up(tx).context("cannot record local changes before applying")?;
        self.read_clocks(tx, changes, &mut pre)?;
        let mut tally = Tally::new();
        for change in changes {
            let outcome = self
                .apply_one(tx, change, &mut pre, catch_up)
                .with_context(|| {
                    format!(
                        "cannot apply change {}#{} ({:?} {} id {})",
                        change.origin,
                        change.seq,
                        change.kind(),
                        change.table,
                        change.id
                    )
                })?;
            *tally.entry(outcome).or_default() += 1;
        }
        self.write_held(tx)?;
        self.write_clocks(tx, &pre)?;
        Ok(tally)
    }

    fn write_held_if_full(&mut self, tx: &mut Transaction<'_>) -> Result<()> {
        if self.held.is_full() {
            self.held.write(tx, &self.target)?;
        }
        Ok(())
    }

    /// Writes what is held, before a step that reads or writes Moodle's tables directly.
    fn write_held(&mut self, tx: &mut Transaction<'_>) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.held.write(tx, &self.target)
    }

    fn shape(&mut self, tx: &mut Transaction<'_>, table: &str) -> Result<Option<TableShape>> {
        if let Some(shape) = self.catalog.get(table) {
            return Ok(shape.clone());
        }
        let shape = read_shape(tx, &self.target, table)?;
        self.catalog.insert(table.to_owned(), shape.clone());
        Ok(shape)
    }

    /// Forgets what it knew of a table's columns, after a change named one it had not seen.
    fn refresh(&mut self, tx: &mut Transaction<'_>, table: &str) -> Result<Option<TableShape>> {
        self.catalog.remove(table);
        self.shape(tx, table)
    }

    fn lock_rows(
        &mut self,
        tx: &mut Transaction<'_>,
        changes: &[Change],
        pre: &mut Prefetched,
    ) -> Result<()> {
        // Most tables never had a row merged away: their ids need no alias lookup.
        let aliased: Vec<String> = tx
            .query("SELECT DISTINCT tbl FROM kituo_sync.alias")
            .context("cannot read the aliased tables")?;
        let mut ids: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
        for c in changes {
            ids.entry(&c.table).or_default().insert(c.id);
        }
        for (table, ids) in ids {
            let aliases = match aliased.iter().any(|t| t == table) {
                true => read_aliases(tx, table, &ids)?,
                false => HashMap::new(),
            };
            let mut wanted: BTreeSet<i64> = ids.clone();
            wanted.extend(aliases.values());
            for (loser, winner) in aliases {
                pre.aliases.insert((table.to_owned(), loser), winner);
            }
            if self.shape(tx, table)?.is_none() {
                continue;
            }
            for chunk in wanted.iter().copied().collect::<Vec<_>>().chunks(IN_LIST) {
                let sql = format!(
                    "SELECT id FROM {} WHERE id IN ({}) FOR UPDATE",
                    self.target.table(table),
                    placeholders(chunk.len())
                );
                let found: Vec<i64> = tx
                    .exec(sql, chunk.to_vec())
                    .with_context(|| format!("cannot lock rows of {table}"))?;
                pre.present
                    .extend(found.into_iter().map(|id| (table.to_owned(), id)));
            }
        }
        // A column may name a row that lost a clash in an earlier batch (the row and the rows that
        // point at it can arrive in different pages): its alias must be known to remap it.
        let mut refs: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for c in changes {
            let row = match &c.op {
                Op::Insert(row) | Op::Update(row) => row,
                Op::Delete => continue,
            };
            let held = self.policy.references(&c.table).iter();
            for r in held.filter(|r| aliased.contains(&r.table) && r.holds_in(row)) {
                if let Some(Value::Int(v)) = row.get(&r.column) {
                    refs.entry(r.table.clone()).or_default().insert(*v);
                }
            }
        }
        for (table, ids) in &refs {
            for (loser, winner) in read_aliases(tx, table, ids)? {
                pre.aliases.insert((table.clone(), loser), winner);
            }
        }
        Ok(())
    }

    /// Reads the clocks and tombstones of every row the batch touches, a few hundred rows per query.
    fn read_clocks(
        &mut self,
        tx: &mut Transaction<'_>,
        changes: &[Change],
        pre: &mut Prefetched,
    ) -> Result<()> {
        let mut keys: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
        for c in changes {
            keys.entry(&c.table)
                .or_default()
                .insert(pre.resolve(&c.table, c.id));
        }
        for (table, ids) in keys {
            let ids: Vec<i64> = ids.into_iter().collect();
            for (id, clock) in read_clocks_of(tx, table, &ids)? {
                pre.clocks.insert((table.to_owned(), id), clock);
            }
            for chunk in ids.chunks(IN_LIST) {
                let graves: Vec<(i64, u64, u32, u64, u32)> = tx
                    .exec(
                        format!(
                            "SELECT row_id, hlc, site, born_hlc, born_site FROM kituo_sync.tombstone
                             WHERE tbl = ? AND row_id IN ({})",
                            placeholders(chunk.len())
                        ),
                        table_and_ids(table, chunk),
                    )
                    .context("cannot read tombstones")?;
                for (id, hlc, site, born_hlc, born_site) in graves {
                    let grave = store::Grave {
                        deleted: Stamp::new(hlc, site),
                        born: Stamp::new(born_hlc, born_site),
                    };
                    pre.tombstones.insert((table.to_owned(), id), grave);
                }
            }
        }
        Ok(())
    }

    fn apply_one(
        &mut self,
        tx: &mut Transaction<'_>,
        change: &Change,
        pre: &mut Prefetched,
        catch_up: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>,
    ) -> Result<Outcome> {
        let table = change.table.as_str();
        let direction = self.policy.direction(table);
        if direction == Direction::Never {
            return Ok(Outcome::Ignored);
        }
        if self.shape(tx, table)?.is_none() {
            store::defer(tx, change)?;
            return Ok(Outcome::Deferred);
        }
        let id = pre.resolve(table, change.id);
        let key = (table.to_owned(), id);
        let stamp = change.stamp();
        if let Some(grave) = pre.tombstones.get(&key).copied() {
            return match &change.op {
                // Only the hub re-creates a deleted row, stamped after the delete (it refused it);
                // an older insert (a replay, a deferred change) stays buried.
                Op::Insert(row) if stamp > grave.deleted => {
                    self.restore(tx, table, id, stamp, grave, row, pre, catch_up)
                }
                _ => Ok(Outcome::Buried),
            };
        }
        match &change.op {
            Op::Delete => {
                if pre.present.remove(&key) {
                    self.delete_row(tx, table, id).context("delete failed")?;
                }
                let born = pre.clocks.get(&key).map_or(Stamp::ORIGIN, |c| c.born);
                store::bury_born(tx, table, id, stamp, born)?;
                pre.tombstones.insert(
                    key.clone(),
                    store::Grave {
                        deleted: stamp,
                        born,
                    },
                );
                pre.clocks.remove(&key);
                pre.dirty.remove(&key);
                Ok(Outcome::Applied)
            }
            Op::Update(cols) => {
                if !pre.present.contains(&key) {
                    return Ok(Outcome::Orphan);
                }
                let cols = self.remap_references(table, cols, pre);
                self.update(tx, table, id, stamp, &cols, pre)
            }
            Op::Insert(row) => {
                let mut row = self.remap_references(table, row, pre);
                row.insert(ID.to_owned(), Value::Int(id));
                if pre.present.contains(&key) {
                    // Seen before by another path (a repaired row): its columns merge as edits.
                    return self.update(tx, table, id, stamp, &row, pre);
                }
                self.insert(tx, table, id, stamp, row, pre, catch_up)
            }
        }
    }

    fn update(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        id: i64,
        stamp: Stamp,
        cols: &Row,
        pre: &mut Prefetched,
    ) -> Result<Outcome> {
        let key = (table.to_owned(), id);
        let clock = pre.clocks.get(&key).cloned().unwrap_or_default();
        let (mut won, next) = winning_columns(&clock, stamp, cols, self.policy.groups(table));
        won.remove(ID);
        if won.is_empty() {
            return Ok(Outcome::Superseded);
        }
        let mut won = self.park_unknown(tx, table, id, stamp, won)?;
        let mut outcome = Outcome::Applied;
        if self.names_anything(table, &won) {
            self.write_held(tx)?;
            let mut row = read_row(tx, &self.target, table, id)?.context("the row vanished")?;
            row.extend(won.clone());
            let (settled, clashed) =
                self.settle_names(tx, table, id, clock.born, row.clone(), pre)?;
            // A rename of this row is written with the update (not stamped: every site makes it).
            for (column, name) in settled.into_iter().filter(|(c, v)| row.get(c) != Some(v)) {
                won.insert(column, name);
            }
            if clashed {
                outcome = Outcome::Renamed;
            }
        }
        if self.has_parked(tx, table)? {
            for column in won.keys() {
                store::unpark_older(tx, table, id, column, stamp)?;
            }
        }
        self.write_columns(tx, table, id, &won)?;
        pre.clocks.insert(key.clone(), next);
        pre.dirty.insert(key);
        Ok(outcome)
    }

    fn write_columns(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        id: i64,
        cols: &Row,
    ) -> Result<()> {
        if cols.is_empty() {
            return Ok(());
        }
        if self.holding {
            self.held.update(table, id, cols);
            return self.write_held_if_full(tx);
        }
        let sets: Vec<String> = cols.keys().map(|c| format!("{} = ?", quote(c))).collect();
        let mut params: Vec<mysql::Value> = cols.values().map(to_sql).collect();
        params.push(mysql::Value::Int(id));
        tx.exec_drop(
            format!(
                "UPDATE {} SET {} WHERE id = ?",
                self.target.table(table),
                sets.join(", ")
            ),
            params,
        )
        .context("update failed")
    }

    /// Re-creates a row deleted here that the hub restored because it refused the delete. The row is
    /// born again with the birth stamp it had and every column written at `stamp`: the clock that
    /// the sites which kept the row reach by merging the same insert as an update.
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        id: i64,
        stamp: Stamp,
        grave: store::Grave,
        row: &Row,
        pre: &mut Prefetched,
        catch_up: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>,
    ) -> Result<Outcome> {
        let key = (table.to_owned(), id);
        store::unbury(tx, table, id)?;
        pre.tombstones.remove(&key);
        let mut row = self.remap_references(table, row, pre);
        row.insert(ID.to_owned(), Value::Int(id));
        if pre.present.contains(&key) {
            return self.update(tx, table, id, stamp, &row, pre);
        }
        let outcome = self.insert(tx, table, id, stamp, row.clone(), pre, catch_up)?;
        if matches!(outcome, Outcome::Applied | Outcome::Renamed) {
            let born = RowClock::born(grave.born);
            let (_, clock) = winning_columns(&born, stamp, &row, self.policy.groups(table));
            pre.clocks.insert(key, clock);
        }
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        id: i64,
        stamp: Stamp,
        row: Row,
        pre: &mut Prefetched,
        catch_up: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>,
    ) -> Result<Outcome> {
        let key = (table.to_owned(), id);
        let row = self.park_unknown(tx, table, id, stamp, row)?;
        // Without a unique key besides the id, or a name, the insert cannot clash: it can wait to go
        // with others.
        let named = !self.policy.identities(table).is_empty();
        if self.holding && !named && self.shape(tx, table)?.is_some_and(|s| s.uniques.is_empty()) {
            self.held.insert(table, id, row);
            pre.present.insert(key.clone());
            pre.clocks.insert(key.clone(), RowClock::born(stamp));
            pre.dirty.insert(key);
            self.write_held_if_full(tx)?;
            return Ok(Outcome::Applied);
        }
        // Written first, so that a duplicate below is this row's own.
        self.write_held(tx)?;
        let (row, clashed) = match named {
            true => self.settle_names(tx, table, id, stamp, row, pre)?,
            false => (row, false),
        };
        match self.insert_row(tx, table, &row) {
            Ok(()) => {
                pre.present.insert(key.clone());
                pre.clocks.insert(key.clone(), RowClock::born(stamp));
                pre.dirty.insert(key);
                Ok(if clashed {
                    Outcome::Renamed
                } else {
                    Outcome::Applied
                })
            }
            Err(e) if is_duplicate(&e) => {
                // The clashing row may be a local insert not yet recorded: record it first, so its
                // birth stamp is known (it is committed, or our insert would wait for it).
                catch_up(tx)?;
                self.resolve_clash(tx, table, id, stamp, row, pre)
            }
            Err(e) => Err(e).context("insert failed"),
        }
    }

    fn delete_row(&mut self, tx: &mut Transaction<'_>, table: &str, id: i64) -> Result<()> {
        self.write_held(tx)?;
        tx.exec_drop(
            format!("DELETE FROM {} WHERE id = ?", self.target.table(table)),
            (id,),
        )
        .map_err(anyhow::Error::from)
    }

    /// Inserts one row now; the caller has written what is held.
    fn insert_row(&self, tx: &mut Transaction<'_>, table: &str, row: &Row) -> Result<()> {
        let names: Vec<String> = row.keys().map(|c| quote(c)).collect();
        let params: Vec<mysql::Value> = row.values().map(to_sql).collect();
        tx.exec_drop(
            format!(
                "INSERT INTO {} ({}) VALUES ({})",
                self.target.table(table),
                names.join(", "),
                placeholders(names.len())
            ),
            params,
        )
        .map_err(anyhow::Error::from)
    }

    /// Replaces ids that lost a clash by their winners in columns that reference other tables.
    fn remap_references(&self, table: &str, row: &Row, pre: &Prefetched) -> Row {
        let mut row = row.clone();
        if pre.aliases.is_empty() {
            return row;
        }
        for r in self.policy.references(table) {
            let Some(Value::Int(v)) = row.get(&r.column).cloned() else {
                continue;
            };
            if !r.holds_in(&row) {
                continue;
            }
            if let Some(winner) = pre.aliases.get(&(r.table.clone(), v)) {
                row.insert(r.column.clone(), Value::Int(*winner));
            }
        }
        row
    }

    /// Writes the clocks the batch changed, a few hundred per statement, in key order (so that two
    /// appliers lock them in the same order).
    fn write_clocks(&self, tx: &mut Transaction<'_>, pre: &Prefetched) -> Result<()> {
        let mut dirty: Vec<(&(String, i64), &RowClock)> = pre
            .dirty
            .iter()
            .filter(|key| self.policy.direction(&key.0) == Direction::Both)
            .filter_map(|key| pre.clocks.get(key).map(|clock| (key, clock)))
            .collect();
        dirty.sort_by(|a, b| a.0.cmp(b.0));
        let clocks: Vec<(&str, i64, &RowClock)> = dirty
            .into_iter()
            .map(|((table, id), clock)| (table.as_str(), *id, clock))
            .collect();
        store::write_clocks(tx, &clocks)
    }
}

impl Prefetched {
    fn resolve(&self, table: &str, id: i64) -> i64 {
        self.aliases
            .get(&(table.to_owned(), id))
            .copied()
            .unwrap_or(id)
    }
}

fn read_shape(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &str,
) -> Result<Option<TableShape>> {
    let name = format!("{}{table}", target.prefix);
    let columns: Vec<String> = tx
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&target.database, &name),
        )
        .with_context(|| format!("cannot read the columns of {name}"))?;
    if columns.is_empty() {
        return Ok(None);
    }
    let parts: Vec<(String, String)> = tx
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY'
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (&target.database, &name),
        )
        .with_context(|| format!("cannot read the unique keys of {name}"))?;
    let mut uniques: Vec<(String, Vec<String>)> = Vec::new();
    for (index, column) in parts {
        match uniques.last_mut() {
            Some((name, cols)) if *name == index => cols.push(column),
            _ => uniques.push((index, vec![column])),
        }
    }
    Ok(Some(TableShape {
        columns: columns.into_iter().collect(),
        uniques: uniques.into_iter().map(|(_, cols)| cols).collect(),
    }))
}

fn read_aliases(
    tx: &mut Transaction<'_>,
    table: &str,
    ids: &BTreeSet<i64>,
) -> Result<HashMap<i64, i64>> {
    let mut found = HashMap::new();
    for chunk in ids.iter().copied().collect::<Vec<_>>().chunks(IN_LIST) {
        let rows: Vec<(i64, i64)> = tx
            .exec(
                format!(
                    "SELECT loser, winner FROM kituo_sync.alias WHERE tbl = ? AND loser IN ({})",
                    placeholders(chunk.len())
                ),
                table_and_ids(table, chunk),
            )
            .context("cannot read aliases")?;
        found.extend(rows);
    }
    Ok(found)
}
