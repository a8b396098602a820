//! Two rows created at two sites with the same unique key that says one fact (a grade of one user for
//! one item): the earlier-born keeps its id everywhere, the other id becomes its alias, every
//! reference to it is moved, and the later row's newer columns merge in ([`merge`]).
//!
//! [`merge`]: crate::sync::engine::merge

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;

use super::{Applier, Outcome, Prefetched};
use crate::sync::engine::change::{Row, Value};
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::merge::{clash_winner, merge_rows, ClashWinner, RowClock};
use crate::sync::engine::policy::Direction;
use crate::sync::engine::sql::{quote, read_row, to_sql, ID};
use crate::sync::engine::store::{self, read_clock};

impl Applier<'_> {
    /// Two sites created a row with the same unique key (say a grade for one item and one user). The
    /// earlier-born row keeps its id everywhere; the other id becomes an alias, its references are
    /// moved, and its column values merge in.
    pub(super) fn resolve_clash(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        id: i64,
        stamp: Stamp,
        row: Row,
        pre: &mut Prefetched,
    ) -> Result<Outcome> {
        let Some(existing) = self.find_clash(tx, table, &row)? else {
            bail!("duplicate key, but no row with the same unique key was found");
        };
        let existing_key = (table.to_owned(), existing);
        // A row this batch inserted has its clock only in memory until the batch ends; without it
        // the row would look born at the origin of time and win every clash here, unlike elsewhere.
        let existing_clock = match pre.clocks.get(&existing_key) {
            Some(clock) => clock.clone(),
            None => read_clock(tx, table, existing)?.unwrap_or_default(),
        };
        let incoming_clock = RowClock::born(stamp);
        let hub_owned = self.policy.direction(table) == Direction::HubToCenters;
        let winner = if hub_owned {
            ClashWinner::Incoming
        } else {
            clash_winner(existing_clock.born, stamp)
        };
        match winner {
            ClashWinner::Existing => {
                store::add_alias(tx, table, id, existing)?;
                pre.aliases.insert((table.to_owned(), id), existing);
                pre.present.insert(existing_key.clone());
                pre.clocks.insert(existing_key, existing_clock);
                self.update(tx, table, existing, stamp, &row, pre)?;
            }
            ClashWinner::Incoming => {
                let old = read_row(tx, &self.target, table, existing)?
                    .context("the clashing row vanished")?;
                self.delete_row(tx, table, existing)
                    .context("cannot remove the row that lost a clash")?;
                let (merged, clock) = if hub_owned {
                    (row.clone(), incoming_clock)
                } else {
                    merge_rows(
                        (&row, &incoming_clock),
                        (&old, &existing_clock),
                        &[ID],
                        self.policy.groups(table),
                    )
                };
                self.insert_row(tx, table, &merged)
                    .context("cannot insert the row that won a clash")?;
                self.move_references(tx, table, existing, id)?;
                store::add_alias(tx, table, existing, id)?;
                store::drop_clock(tx, table, existing)?;
                pre.aliases.insert(existing_key.clone(), id);
                pre.present.remove(&existing_key);
                pre.clocks.remove(&existing_key);
                pre.dirty.remove(&existing_key);
                let key = (table.to_owned(), id);
                pre.present.insert(key.clone());
                pre.clocks.insert(key.clone(), clock);
                pre.dirty.insert(key);
            }
        }
        Ok(Outcome::Merged)
    }

    fn find_clash(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        row: &Row,
    ) -> Result<Option<i64>> {
        let shape = self.shape(tx, table)?.context("table vanished")?;
        for unique in &shape.uniques {
            let values: Option<Vec<&Value>> = unique.iter().map(|c| row.get(c)).collect();
            // NULLs never clash in a unique index.
            let Some(values) = values.filter(|v| !v.contains(&&Value::Null)) else {
                continue;
            };
            let cond: Vec<String> = unique.iter().map(|c| format!("{} = ?", quote(c))).collect();
            let found: Option<i64> = tx
                .exec_first(
                    format!(
                        "SELECT id FROM {} WHERE {} FOR UPDATE",
                        self.target.table(table),
                        cond.join(" AND ")
                    ),
                    values.into_iter().map(to_sql).collect::<Vec<_>>(),
                )
                .context("cannot look up a unique key")?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Points every reference to `from` (through XMLDB foreign keys) at `to`. Every site makes the same
    /// move itself, so these writes are not sent anywhere.
    fn move_references(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        from: i64,
        to: i64,
    ) -> Result<()> {
        for r in self.policy.referenced_by(table) {
            if self.shape(tx, &r.table)?.is_none() {
                continue;
            }
            let mut sql = format!(
                "UPDATE {} SET {} = ? WHERE {} = ?",
                self.target.table(&r.table),
                quote(&r.column),
                quote(&r.column)
            );
            let mut params = vec![mysql::Value::Int(to), mysql::Value::Int(from)];
            for (column, value) in &r.when {
                sql.push_str(&format!(" AND {} = ?", quote(column)));
                params.push(value.as_str().into());
            }
            tx.exec_drop(sql, params)
                .with_context(|| format!("cannot move references {}.{}", r.table, r.column))?;
        }
        Ok(())
    }
}
