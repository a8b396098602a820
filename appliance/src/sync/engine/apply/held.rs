//! Writes held back during a batch and sent many rows per statement. Applying one statement per
//! change was bound by round trips to MariaDB (the client waited on the socket 77% of the time), not
//! by the work of either side.
//!
//! Only writes that nothing else in the batch can observe are held: inserts into tables with no
//! unique key besides the primary key (so they cannot clash), and column updates of rows that exist.
//! Every other step that touches Moodle's tables first writes out what is held, so it sees the rows
//! as they would be after applying one change at a time.

use std::collections::HashMap;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;

use crate::sync::engine::change::{Row, Value};
use crate::sync::engine::sql::{placeholders, quote, to_sql, Target, ID};

/// A held write the server refused. The batch is applied again one change at a time, which gives
/// the exact outcome (a clash resolved, say) or an error that names the change.
#[derive(Debug, thiserror::Error)]
#[error("a statement writing many rows at once failed")]
pub struct HeldWriteFailed;

/// Rows per statement: a few hundred already make the round trip negligible.
const MAX_ROWS: usize = 500;
/// Rows held at most before they are written.
const HELD_ROWS: usize = 10 * MAX_ROWS;
/// The protocol's limit on placeholders per prepared statement is 65,535.
const MAX_PARAMS: usize = 60_000;
/// Well below the 16 MiB `max_allowed_packet` of a stock MariaDB (Moodle's posts can be large).
const MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
pub(super) struct Held {
    inserts: Vec<(String, Row)>,
    /// Where each held insert is in `inserts`, so that a later update of its row folds into it.
    inserted: HashMap<(String, i64), usize>,
    updates: Vec<(String, i64, Row)>,
    updated: HashMap<(String, i64), usize>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty()
    }

    /// Enough rows held to write them out: a large page then needs no second copy of all its rows.
    pub fn is_full(&self) -> bool {
        self.inserts.len() + self.updates.len() >= HELD_ROWS
    }

    pub fn insert(&mut self, table: &str, id: i64, row: Row) {
        self.inserted
            .insert((table.to_owned(), id), self.inserts.len());
        self.inserts.push((table.to_owned(), row));
    }

    /// Holds new values for columns of a row that exists or whose insert is held.
    pub fn update(&mut self, table: &str, id: i64, cols: &Row) {
        let key = (table.to_owned(), id);
        let target = if let Some(&at) = self.inserted.get(&key) {
            &mut self.inserts[at].1
        } else if let Some(&at) = self.updated.get(&key) {
            &mut self.updates[at].2
        } else {
            self.updated.insert(key, self.updates.len());
            self.updates.push((table.to_owned(), id, Row::new()));
            &mut self.updates.last_mut().expect("just pushed").2
        };
        target.extend(cols.iter().map(|(c, v)| (c.clone(), v.clone())));
    }

    /// Writes everything held and forgets it. Held inserts and updates touch different rows, so
    /// their order does not matter.
    pub fn write(&mut self, tx: &mut Transaction<'_>, target: &Target) -> Result<()> {
        let held = std::mem::take(self);
        for (table, rows) in group(held.inserts.into_iter().map(|(t, row)| (t, None, row))) {
            for chunk in chunks(&rows) {
                insert_rows(tx, target, &table, chunk)?;
            }
        }
        let updates = held
            .updates
            .into_iter()
            .map(|(t, id, row)| (t, Some(id), row));
        for (table, rows) in group(updates) {
            for chunk in chunks(&rows) {
                update_rows(tx, target, &table, chunk)?;
            }
        }
        Ok(())
    }
}

/// The rows of one table with the same columns, in the order they came.
type Group = (String, Vec<(Option<i64>, Row)>);

fn group(rows: impl Iterator<Item = (String, Option<i64>, Row)>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<(String, Vec<String>), usize> = HashMap::new();
    for (table, id, row) in rows {
        let key = (table.clone(), row.keys().cloned().collect());
        let at = *index.entry(key).or_insert_with(|| {
            groups.push((table, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push((id, row));
    }
    groups
}

/// Splits rows into statements by row count, placeholders and bytes.
fn chunks(rows: &[(Option<i64>, Row)]) -> Vec<&[(Option<i64>, Row)]> {
    let mut out = Vec::new();
    let (mut start, mut params, mut bytes) = (0, 0, 0);
    for (i, (_, row)) in rows.iter().enumerate() {
        let (p, b) = (2 * row.len() + 1, row.values().map(size).sum::<usize>());
        if i > start && (i - start == MAX_ROWS || params + p > MAX_PARAMS || bytes + b > MAX_BYTES)
        {
            out.push(&rows[start..i]);
            (start, params, bytes) = (i, 0, 0);
        }
        params += p;
        bytes += b;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

fn size(v: &Value) -> usize {
    match v {
        Value::Bytes(b) => b.len(),
        Value::Decimal(s) => s.len(),
        _ => 8,
    }
}

fn insert_rows(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &str,
    rows: &[(Option<i64>, Row)],
) -> Result<()> {
    let Some((_, first)) = rows.first() else {
        return Ok(());
    };
    let names: Vec<String> = first.keys().map(|c| quote(c)).collect();
    let tuple = format!("({})", placeholders(names.len()));
    let params: Vec<mysql::Value> = rows
        .iter()
        .flat_map(|(_, row)| row.values().map(to_sql))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        target.table(table),
        names.join(", "),
        vec![tuple; rows.len()].join(", ")
    );
    run(tx, sql, params).with_context(|| format!("cannot insert {} rows into {table}", rows.len()))
}

/// One UPDATE for many rows: `SET c = CASE id WHEN ? THEN ? … END` for each column.
fn update_rows(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &str,
    rows: &[(Option<i64>, Row)],
) -> Result<()> {
    let Some((_, first)) = rows.first() else {
        return Ok(());
    };
    let ids: Vec<i64> = rows.iter().filter_map(|(id, _)| *id).collect();
    let mut sets = Vec::new();
    let mut params: Vec<mysql::Value> = Vec::new();
    for column in first.keys() {
        sets.push(format!(
            "{} = CASE {} {} END",
            quote(column),
            quote(ID),
            vec!["WHEN ? THEN ?"; ids.len()].join(" ")
        ));
        for (id, row) in rows {
            params.push(mysql::Value::Int(id.unwrap_or_default()));
            params.push(row.get(column).map_or(mysql::Value::NULL, to_sql));
        }
    }
    params.extend(ids.iter().map(|id| mysql::Value::Int(*id)));
    let sql = format!(
        "UPDATE {} SET {} WHERE {} IN ({})",
        target.table(table),
        sets.join(", "),
        quote(ID),
        placeholders(ids.len())
    );
    run(tx, sql, params).with_context(|| format!("cannot update {} rows of {table}", rows.len()))
}

/// Runs one statement; a refusal by the server (not a lost lock, which retries the whole batch)
/// is marked [`HeldWriteFailed`].
fn run(tx: &mut Transaction<'_>, sql: String, params: Vec<mysql::Value>) -> Result<()> {
    tx.exec_drop(sql, params).map_err(|e| {
        let refused = matches!(&e, mysql::Error::MySqlError(m) if !crate::sync::engine::sql::is_lock_error_code(m.code));
        let e = anyhow::Error::new(e);
        if refused {
            e.context(HeldWriteFailed)
        } else {
            e
        }
    })
}
