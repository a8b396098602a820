//! SQL both sides run, so that both compute the same numbers.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;

use super::protocol::{Sum, SumsReply, SumsRequest, TableInfo, Tables, Tombstone};
use crate::sync::engine::change::Row;
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::policy::Policy;
use crate::sync::engine::sql::placeholders;
use crate::sync::engine::sql::{from_sql, quote, Target, ID};
use crate::sync::exchange::hub::relayed;
use crate::sync::schema::rules::LocalRows;

pub(crate) fn tables_at(
    conn: &mut impl Queryable,
    target: &Target,
    policy: &Policy,
) -> Result<Tables> {
    let found: Vec<(String, String, String)> = conn
        .exec(
            "SELECT c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE FROM information_schema.COLUMNS c
             JOIN information_schema.TABLES t
               ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
             WHERE c.TABLE_SCHEMA = ? AND t.TABLE_TYPE = 'BASE TABLE'
             ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
            (&target.database,),
        )
        .context("cannot list the tables")?;
    let mut shapes: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
    for (name, column, data_type) in found {
        let Some(table) = name.strip_prefix(&target.prefix) else {
            continue;
        };
        if !relayed(policy.direction(table)) {
            continue;
        }
        let shape = shapes.entry(table.to_owned()).or_default();
        if column == ID && is_integer(&data_type) {
            shape.1 = true;
        }
        // Each site's own value: not a difference.
        if !policy.is_local_column(table, &column) {
            shape.0.push(column);
        }
    }
    let mut tables = BTreeMap::new();
    for (table, (columns, integer_id)) in shapes {
        if !integer_id {
            continue;
        }
        let first: Option<Option<i64>> = conn
            .query_first(format!("SELECT MIN(id) FROM {}", target.table(&table)))
            .with_context(|| format!("cannot read the first id of {table}"))?;
        let first = first.flatten();
        tables.insert(table, TableInfo { columns, first });
    }
    Ok(tables)
}

pub(super) fn is_integer(data_type: &str) -> bool {
    matches!(
        data_type.to_ascii_lowercase().as_str(),
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
    )
}

/// The SQL expression of a row's hash over `columns` (see the module's notes).
pub fn row_hash_sql(columns: &[String]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| {
            let bytes = format!("CAST({} AS BINARY)", quote(c));
            format!("IFNULL(CONCAT(LENGTH({bytes}), ':', {bytes}), 'N')")
        })
        .collect();
    format!(
        "CAST(CONV(LEFT(MD5(CONCAT_WS(',', {})), 16), 16, 10) AS UNSIGNED)",
        fields.join(", ")
    )
}

/// The SQL condition that leaves out the rows each site keeps for itself (`[site_local]`, e.g.
/// Moodle's version numbers in `config`): they differ by design.
pub(super) fn shared_rows(policy: &Policy, table: &str) -> String {
    let rules = policy.rules().site_local(table).iter();
    rules
        .filter(|local| !local.values.is_empty())
        .map(|local| {
            format!(
                " AND ({col} IS NULL OR {col} NOT IN ({}))",
                local_values(local),
                col = quote(&local.column)
            )
        })
        .collect()
}

/// The values that tell a table's site-local rows, as an SQL list.
pub(crate) fn local_values(local: &LocalRows) -> String {
    let values: Vec<String> = local
        .values
        .iter()
        .map(|v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    values.join(", ")
}

pub(super) fn sums_at(
    conn: &mut impl Queryable,
    target: &Target,
    policy: &Policy,
    req: &SumsRequest,
) -> Result<SumsReply> {
    let table = target.table(&req.table);
    let shared = shared_rows(policy, &req.table);
    // The chunk size is a checked number: written into the SQL so that both sides group by the very
    // same integer expression.
    let sums: Vec<(i64, u64, u64)> = conn
        .exec(
            format!(
                "SELECT CAST(FLOOR(id / {chunk}) AS SIGNED) AS k, COUNT(*), BIT_XOR({hash})
                 FROM {table} WHERE id BETWEEN ? AND ? {shared} GROUP BY k ORDER BY k",
                chunk = req.chunk,
                hash = row_hash_sql(&req.columns),
            ),
            (req.lo, req.last),
        )
        .with_context(|| format!("cannot sum {} ids {}..={}", req.table, req.lo, req.last))?;
    let next = if req.last == i64::MAX {
        None
    } else {
        let next: Option<Option<i64>> = conn
            .exec_first(
                format!("SELECT MIN(id) FROM {table} WHERE id > ?"),
                (req.last,),
            )
            .with_context(|| format!("cannot find the next id of {}", req.table))?;
        next.flatten()
    };
    Ok(SumsReply {
        sums: sums
            .into_iter()
            .map(|(chunk, rows, hash)| Sum { chunk, rows, hash })
            .collect(),
        next,
    })
}

/// Row hashes by id, locking the rows until the transaction ends.
pub(super) fn lock_hashes(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &str,
    columns: &[String],
    ids: &[i64],
) -> Result<HashMap<i64, u64>> {
    let found: Vec<(i64, u64)> = tx
        .exec(
            format!(
                "SELECT id, {} FROM {} WHERE id IN ({}) FOR UPDATE",
                row_hash_sql(columns),
                target.table(table),
                placeholders(ids.len())
            ),
            ids.to_vec(),
        )
        .with_context(|| format!("cannot lock rows of {table}"))?;
    Ok(found.into_iter().collect())
}

pub(super) fn read_rows(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &str,
    columns: &[String],
    ids: &[i64],
) -> Result<Vec<(i64, Row)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let rows: Vec<mysql::Row> = tx
        .exec(
            format!(
                "SELECT id, {} FROM {} WHERE id IN ({}) ORDER BY id",
                names.join(", "),
                target.table(table),
                placeholders(ids.len())
            ),
            ids.to_vec(),
        )
        .with_context(|| format!("cannot read rows of {table}"))?;
    rows.into_iter()
        .map(|row| {
            let mut values = row.unwrap().into_iter();
            let id = values.next().context("a row came back without its id")?;
            let id: i64 = mysql::from_value_opt(id).context("an id is not an integer")?;
            let row: Row = columns.iter().cloned().zip(values.map(from_sql)).collect();
            Ok((id, row))
        })
        .collect()
}

pub(super) fn read_tombstones(
    tx: &mut Transaction<'_>,
    table: &str,
    ids: &[i64],
) -> Result<Vec<Tombstone>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut params: Vec<mysql::Value> = vec![table.into()];
    params.extend(ids.iter().map(|id| mysql::Value::Int(*id)));
    let found: Vec<(i64, u64, u32)> = tx
        .exec(
            format!(
                "SELECT row_id, hlc, site FROM kituo_sync.tombstone WHERE tbl = ? AND row_id IN ({})",
                placeholders(ids.len())
            ),
            params,
        )
        .context("cannot read tombstones")?;
    Ok(found
        .into_iter()
        .map(|(id, hlc, site)| Tombstone {
            id,
            stamp: Stamp::new(hlc, site),
        })
        .collect())
}
