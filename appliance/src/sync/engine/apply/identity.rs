//! Keeps both rows when two sites gave one name to two people or things ([`identity`]): the later-born
//! row is renamed `name-<site>`, the same way at every site that holds both, and the clash is recorded
//! for the status page and, at the hub, for the notifications ([`clash`]).
//!
//! Every site decides from the same inputs (the two rows' birth stamps), so no rename is sent: each
//! site makes it itself, as it makes the merges of [`merge`].
//!
//! [`identity`]: crate::sync::schema::identity
//! [`clash`]: crate::sync::engine::clash
//! [`merge`]: crate::sync::engine::merge

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;

use super::{Applier, Prefetched};
use crate::sync::engine::change::{Row, Value};
use crate::sync::engine::clash::{self, Clash};
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::merge::{clash_winner, ClashWinner};
use crate::sync::engine::policy::Direction;
use crate::sync::engine::sql::{quote, to_sql};
use crate::sync::engine::store::read_clock;
use crate::sync::schema::identity::Identity;

impl Applier<'_> {
    /// Whether writing `cols` to a row of `table` can make it share a name with another row.
    pub(super) fn names_anything(&self, table: &str, cols: &Row) -> bool {
        self.policy
            .identities(table)
            .iter()
            .any(|i| i.key().iter().any(|c| cols.contains_key(*c)))
    }

    /// Settles, before `row` is written as row `id` of `table` (born `born`), every other row that
    /// shares one of its names: whichever of the two was born later is renamed. Returns the row to
    /// write (renamed, if it is the later) and whether anything clashed.
    pub(super) fn settle_names(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        id: i64,
        born: Stamp,
        mut row: Row,
        pre: &Prefetched,
    ) -> Result<(Row, bool)> {
        let mut clashed = false;
        // A center's own rows of a table the hub owns give way to the hub's.
        let hub_owned = self.policy.direction(table) == Direction::HubToCenters;
        for identity in self.policy.identities(table).to_vec() {
            for other in self.sharing(tx, &identity, id, &row)? {
                clashed = true;
                let other_born = match pre.clocks.get(&(table.to_owned(), other)) {
                    Some(clock) => clock.born,
                    None => read_clock(tx, table, other)?.map_or(Stamp::ORIGIN, |c| c.born),
                };
                let this_later =
                    !hub_owned && clash_winner(other_born, born) == ClashWinner::Existing;
                if this_later {
                    let name = self.free_name(tx, &identity, &row, born.site)?;
                    self.record(tx, &identity, other, id, &row, &name, born.site)?;
                    row.insert(identity.column.clone(), name);
                    // Renamed: no other row shares the new name.
                    break;
                }
                let site = if hub_owned {
                    self.site
                } else {
                    other_born.site
                };
                let name = self.free_name(tx, &identity, &row, site)?;
                tx.exec_drop(
                    format!(
                        "UPDATE {} SET {} = ? WHERE id = ?",
                        self.target.table(table),
                        quote(&identity.column)
                    ),
                    (to_sql(&name), other),
                )
                .with_context(|| format!("cannot rename {table} id {other}"))?;
                self.record(tx, &identity, id, other, &row, &name, site)?;
            }
        }
        Ok((row, clashed))
    }

    /// The other rows with `row`'s name in its scope. An empty name names nobody (Moodle's
    /// `idnumber` is empty unless set), and NULL never clashes.
    fn sharing(
        &self,
        tx: &mut Transaction<'_>,
        identity: &Identity,
        id: i64,
        row: &Row,
    ) -> Result<Vec<i64>> {
        let mut params = Vec::new();
        for column in identity.key() {
            match row.get(column) {
                None | Some(Value::Null) => return Ok(Vec::new()),
                Some(Value::Bytes(b)) if b.is_empty() => return Ok(Vec::new()),
                Some(v) => params.push(to_sql(v)),
            }
        }
        params.push(mysql::Value::Int(id));
        let cond: Vec<String> = identity
            .key()
            .iter()
            .map(|c| format!("{} = ?", quote(c)))
            .collect();
        tx.exec(
            format!(
                "SELECT id FROM {} WHERE {} AND id <> ? ORDER BY id FOR UPDATE",
                self.target.table(&identity.table),
                cond.join(" AND ")
            ),
            params,
        )
        .with_context(|| format!("cannot look up names in {}", identity.table))
    }

    /// `name-<site>`, or `name-<site>-2` and on if that is taken too, cut to fit the column.
    fn free_name(
        &self,
        tx: &mut Transaction<'_>,
        identity: &Identity,
        row: &Row,
        site: u32,
    ) -> Result<Value> {
        let name = match row.get(&identity.column) {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::Int(i)) => i.to_string(),
            other => anyhow::bail!("cannot rename the value {other:?}"),
        };
        let width = column_width(tx, &self.target, identity)?;
        for n in 1..1000 {
            let suffix = match n {
                1 => format!("-{site}"),
                n => format!("-{site}-{n}"),
            };
            let keep = width.saturating_sub(suffix.chars().count());
            let candidate: String = name.chars().take(keep).chain(suffix.chars()).collect();
            let mut probe = row.clone();
            probe.insert(
                identity.column.clone(),
                Value::Bytes(candidate.clone().into()),
            );
            if self.sharing(tx, identity, i64::MIN, &probe)?.is_empty() {
                return Ok(Value::Bytes(candidate.into()));
            }
        }
        anyhow::bail!("no free name for '{name}' in {}", identity.table)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        tx: &mut Transaction<'_>,
        identity: &Identity,
        kept: i64,
        renamed: i64,
        row: &Row,
        name: &Value,
        site: u32,
    ) -> Result<()> {
        let text = |v: Option<&Value>| match v {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::Int(i)) => i.to_string(),
            _ => String::new(),
        };
        clash::record(
            tx,
            &Clash {
                table: identity.table.clone(),
                column: identity.column.clone(),
                kept,
                renamed,
                old: text(row.get(&identity.column)),
                new: text(Some(name)),
                site,
                at: 0,
            },
        )
    }
}

/// How many characters the name column holds (Moodle's username: 100).
fn column_width(
    tx: &mut Transaction<'_>,
    target: &crate::sync::engine::sql::Target,
    identity: &Identity,
) -> Result<usize> {
    let width: Option<Option<u64>> = tx
        .exec_first(
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            (
                &target.database,
                format!("{}{}", target.prefix, identity.table),
                &identity.column,
            ),
        )
        .context("cannot read a column's width")?;
    Ok(width.flatten().map_or(255, |w| w.min(1000) as usize))
}
