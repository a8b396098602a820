//! The center's side: writes the hub's version of differing rows, clocks and tombstones included.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::{Transaction, TxOpts};

use super::check::Compared;
use super::protocol::HubRow;
use super::sums::lock_hashes;
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::merge::RowClock;
use crate::sync::engine::policy::Policy;
use crate::sync::engine::record::HLC_SEEN;
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::{placeholders, quote, to_sql, Target, ID, IN_LIST};
use crate::sync::engine::store;
use crate::sync::engine::store::write_clock;

/// Writes the hub's rows of `table` (as `serve_rows` reads them, on `columns`) in one transaction,
/// with their row clocks, whether or not they are here: how a seed from a stick copies the hub.
pub(crate) fn copy_rows(
    site: &mut Site,
    policy: &Policy,
    table: &str,
    columns: &[String],
    rows: &[HubRow],
) -> Result<()> {
    let target = site.target().clone();
    let table = Compared::new(policy, table, columns.to_vec());
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut tx = site
        .conn()
        .start_transaction(TxOpts::default())
        .context("cannot start a transaction")?;
    store::lock_log(&mut tx)?;
    let here = lock_hashes(&mut tx, &target, &table.name, &table.columns, &ids)?;
    let (new, present): (Vec<&HubRow>, Vec<&HubRow>) =
        rows.iter().partition(|r| !here.contains_key(&r.id));
    // The rows new here (at a seed, all of them) go in many per statement; a copy that runs again
    // after a cut writes the few it already holds one by one.
    let mut seen = insert_new(&mut tx, &target, &table, &new)?;
    for row in present {
        let hub = Restore {
            row: Some(row),
            tombstone: None,
        };
        let stamp = hub
            .write(&mut tx, &target, &table, row.id, true)
            .with_context(|| format!("cannot copy {} id {}", table.name, row.id))?;
        seen = seen.max(stamp);
    }
    clock_past(&mut tx, seen)?;
    tx.commit().context("cannot commit the copied rows")
}

/// Inserts rows that are not here, with their clocks; returns the highest stamp copied.
fn insert_new(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &Compared,
    rows: &[&HubRow],
) -> Result<u64> {
    let Some(first) = rows.first() else {
        return Ok(0);
    };
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    store::forget_rows(tx, &table.name, &ids)?;
    let names: Vec<String> = arriving_values(table, first)?
        .iter()
        .map(|(c, _)| quote(c))
        .collect();
    // Under the server's limit of 65,535 parameters per statement.
    let per_statement = (60_000 / names.len().max(1)).clamp(1, IN_LIST);
    for chunk in rows.chunks(per_statement) {
        let mut params = Vec::with_capacity(chunk.len() * names.len());
        for row in chunk {
            params.extend(arriving_values(table, row)?.into_iter().map(|(_, v)| v));
        }
        let one = format!("({})", placeholders(names.len()));
        tx.exec_drop(
            format!(
                "INSERT INTO {} ({}) VALUES {}",
                target.table(&table.name),
                names.join(", "),
                vec![one; chunk.len()].join(", ")
            ),
            params,
        )
        .with_context(|| format!("cannot copy rows of {}", table.name))?;
    }
    let clocks: Vec<(&str, i64, &RowClock)> = rows
        .iter()
        .filter_map(|r| Some((table.name.as_str(), r.id, r.clock.as_ref()?)))
        .collect();
    store::write_clocks(tx, &clocks)?;
    Ok(clocks.iter().map(|(_, _, c)| highest(c)).max().unwrap_or(0))
}

/// The highest stamp a row clock holds.
fn highest(clock: &RowClock) -> u64 {
    clock
        .cols
        .values()
        .fold(clock.born.hlc, |m, s| m.max(s.hlc))
}

/// Local edits from now on must be stamped after every copied stamp (`seen`), or they would lose to
/// the hub's clock when merged there while winning here.
pub(super) fn clock_past(tx: &mut Transaction<'_>, seen: u64) -> Result<()> {
    if seen > store::get_u64(tx, HLC_SEEN)? {
        store::set(tx, HLC_SEEN, &seen.to_string())?;
    }
    Ok(())
}

/// The hub's state of one row.
pub(super) struct Restore<'r> {
    pub(super) row: Option<&'r HubRow>,
    pub(super) tombstone: Option<Stamp>,
}

impl Restore<'_> {
    /// Makes the row here what it is at the hub; returns the highest stamp copied.
    pub(super) fn write(
        &self,
        tx: &mut Transaction<'_>,
        target: &Target,
        table: &Compared,
        id: i64,
        present: bool,
    ) -> Result<u64> {
        let name = table.name.as_str();
        let Some(row) = self.row else {
            // Gone at the hub: whether deleted there (tombstone) or never accepted there, the hub's
            // answer is no row. Its tombstone is copied so that a late change for the row is buried
            // here as there; without one there is nothing to copy and the row's clock simply goes.
            if present {
                tx.exec_drop(
                    format!("DELETE FROM {} WHERE id = ?", target.table(name)),
                    (id,),
                )
                .context("delete failed")?;
            }
            return match self.tombstone {
                Some(stamp) => {
                    store::bury(tx, name, id, stamp)?;
                    Ok(stamp.hlc)
                }
                None => {
                    store::drop_clock(tx, name, id)?;
                    Ok(0)
                }
            };
        };
        if present {
            update_row(tx, target, table, row)?;
        } else {
            insert_row(tx, target, table, row)?;
        }
        // The hub keeps the row: a tombstone here would bury every later change to it.
        tx.exec_drop(
            "DELETE FROM kituo_sync.tombstone WHERE tbl = ? AND row_id = ?",
            (name, id),
        )
        .context("cannot drop a tombstone")?;
        match &row.clock {
            Some(clock) => {
                write_clock(tx, name, id, clock)?;
                Ok(highest(clock))
            }
            None => {
                store::drop_clock(tx, name, id)?;
                Ok(0)
            }
        }
    }
}

pub(super) fn values_of<'r>(
    table: &Compared,
    row: &'r HubRow,
    skip: &str,
) -> Result<Vec<(&'r str, mysql::Value)>> {
    table
        .columns
        .iter()
        .filter(|c| c.as_str() != skip)
        .map(|c| {
            let (name, value) = row
                .values
                .get_key_value(c)
                .with_context(|| format!("the hub's row {} lacks column {c}", row.id))?;
            Ok((name.as_str(), to_sql(value)))
        })
        .collect()
}

/// A row's values as it is inserted here: the hub's, and the local columns' arriving values (a copied
/// row arrives like an applied one: a forum post mailed at its origin).
fn arriving_values<'r>(
    table: &'r Compared,
    row: &'r HubRow,
) -> Result<Vec<(&'r str, mysql::Value)>> {
    let mut values = values_of(table, row, "")?;
    values.extend(table.arriving.iter().map(|(c, v)| (c.as_str(), to_sql(v))));
    Ok(values)
}

pub(super) fn update_row(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &Compared,
    row: &HubRow,
) -> Result<()> {
    let values = values_of(table, row, ID)?;
    if values.is_empty() {
        return Ok(());
    }
    let sets: Vec<String> = values
        .iter()
        .map(|(c, _)| format!("{} = ?", quote(c)))
        .collect();
    let mut params: Vec<mysql::Value> = values.into_iter().map(|(_, v)| v).collect();
    params.push(mysql::Value::Int(row.id));
    tx.exec_drop(
        format!(
            "UPDATE {} SET {} WHERE id = ?",
            target.table(&table.name),
            sets.join(", ")
        ),
        params,
    )
    .context("update failed")
}

pub(super) fn insert_row(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &Compared,
    row: &HubRow,
) -> Result<()> {
    let values = arriving_values(table, row)?;
    let names: Vec<String> = values.iter().map(|(c, _)| quote(c)).collect();
    let params: Vec<mysql::Value> = values.into_iter().map(|(_, v)| v).collect();
    tx.exec_drop(
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            target.table(&table.name),
            names.join(", "),
            placeholders(names.len())
        ),
        params,
    )
    .context("insert failed")
}
