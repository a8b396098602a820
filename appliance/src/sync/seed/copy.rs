//! What the hub hands a seed: the rows of what never syncs but Moodle needs (`[seed]` tables and the
//! `[site_local]` rows), over the link or into a seed stick, and for a stick every relayed row too.

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::sync::engine::change::{Row, Value};
use crate::sync::engine::policy::{Direction, Policy};
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::{from_sql, quote, Target, ID};
use crate::sync::verify::{self, HubRow};

/// Rows per copy request.
pub const COPY_ROWS: usize = 200;
/// The most rows one copy request may ask for.
const MAX_COPY_ROWS: usize = 1000;
/// Rows per page of relayed rows, and about the bytes they may hold: one page is one transaction at the
/// center, some 10 s on a 256 kbit/s link once compressed, and a few MB of a 1 GB board's memory. Each
/// page costs the hub a listing of its tables and the link a round trip: fewer, larger pages beat many.
pub const PAGE_ROWS: usize = 5000;
const PAGE_BYTES: usize = 4 << 20;

/// Rows of a table the seed copies, after `after` in id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequest {
    pub table: String,
    pub after: i64,
    pub max: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyReply {
    /// In id order, at most the number asked for: fewer means the table is done.
    pub rows: Vec<Row>,
}

/// A run of the hub's rows of one table, as a seed stick carries them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Copied {
    /// Rows of a `[seed]` table, or site-local rows: they never sync, so they have no clocks.
    PerSite { table: String, rows: Vec<Row> },
    /// Relayed rows on `columns`, with their row clocks.
    Relayed {
        table: String,
        columns: Vec<String>,
        rows: Vec<HubRow>,
    },
}

impl Copied {
    pub fn table(&self) -> &str {
        match self {
            Copied::PerSite { table, .. } | Copied::Relayed { table, .. } => table,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Copied::PerSite { rows, .. } => rows.len(),
            Copied::Relayed { rows, .. } => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rows of a `[seed]` table, or the `[site_local]` rows of a table that has them.
pub fn serve_copy(hub: &mut Site, policy: &Policy, req: &CopyRequest) -> Result<CopyReply> {
    ensure!(
        (1..=MAX_COPY_ROWS).contains(&req.max),
        "at most {MAX_COPY_ROWS} rows per copy request, not {}",
        req.max
    );
    let Some(filter) = copied_rows(policy, &req.table) else {
        bail!("{} is not copied when a center is seeded", req.table);
    };
    let target = hub.target().clone();
    let columns = columns_of(hub.conn(), &target, &req.table)?;
    if columns.is_empty() {
        // A table of a plugin the hub lacks: nothing to copy.
        return Ok(CopyReply { rows: Vec::new() });
    }
    let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let rows: Vec<mysql::Row> = hub
        .conn()
        .exec(
            format!(
                "SELECT {} FROM {} WHERE id > ? {filter} ORDER BY id LIMIT ?",
                names.join(", "),
                target.table(&req.table)
            ),
            (req.after, req.max as u64),
        )
        .with_context(|| format!("cannot read {}", req.table))?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let values = r.unwrap().into_iter().map(from_sql);
            columns.iter().cloned().zip(values).collect()
        })
        .collect();
    Ok(CopyReply { rows })
}

/// Every table a seed copies from the hub, as runs of rows in id order handed to `sink`: first the
/// per-site rows, then every relayed row with its clock. Each run is read in one snapshot.
pub fn read_all(
    hub: &mut Site,
    policy: &Policy,
    sink: &mut dyn FnMut(Copied) -> Result<()>,
) -> Result<()> {
    for table in per_site_tables(policy) {
        let mut fetch = |req: &CopyRequest| serve_copy(hub, policy, req);
        copy_pages(&table, &mut fetch, &mut |rows| {
            let table = table.clone();
            sink(Copied::PerSite { table, rows })
        })?;
    }
    let mut page = PageRequest::first(PAGE_ROWS);
    loop {
        let reply = serve_page(hub, policy, &page)?;
        page.go_past(&reply.runs);
        for run in reply.runs {
            sink(run)?;
        }
        if !reply.more {
            return Ok(());
        }
    }
}

/// A page of relayed rows with their clocks, as a seed copies them: the tables in name order from
/// `table`, that one after id `after`, as many as fit `max` rows and about 4 MiB, leaving out the
/// tables in `skip` (the hub's that the card lacks). Many tables go in one page: on a slow link each
/// request costs a round trip, and most of Moodle's tables hold a few rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub table: String,
    pub after: i64,
    pub max: usize,
    pub skip: Vec<String>,
}

impl PageRequest {
    /// The first page of a seed.
    pub fn first(max: usize) -> PageRequest {
        PageRequest {
            table: String::new(),
            after: i64::MIN,
            max,
            skip: Vec::new(),
        }
    }

    /// Moves past the rows of `runs`, so that this asks for what follows them.
    pub fn go_past(&mut self, runs: &[Copied]) {
        let last = runs.iter().rev().find_map(|run| match run {
            Copied::Relayed { table, rows, .. } => rows.last().map(|r| (table, r.id)),
            Copied::PerSite { .. } => None,
        });
        if let Some((table, id)) = last {
            self.table.clone_from(table);
            self.after = id;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageReply {
    /// `Copied::Relayed` runs, one per table, in name and id order.
    pub runs: Vec<Copied>,
    /// Rows after these remain.
    pub more: bool,
}

/// A page of relayed rows (see [`PageRequest`]).
pub fn serve_page(hub: &mut Site, policy: &Policy, req: &PageRequest) -> Result<PageReply> {
    ensure!(
        (1..=PAGE_ROWS).contains(&req.max),
        "at most {PAGE_ROWS} rows per page, not {}",
        req.max
    );
    let target = hub.target().clone();
    let tables = verify::tables_at(hub.conn(), &target, policy)?;
    let (mut rows_left, mut bytes_left) = (req.max, PAGE_BYTES);
    let mut runs = Vec::new();
    for (table, info) in tables.range(req.table.clone()..) {
        if info.first.is_none() || req.skip.contains(table) {
            continue;
        }
        let after = if *table == req.table {
            req.after
        } else {
            i64::MIN
        };
        let (rows, more) = verify::serve_page(
            hub,
            policy,
            (table, &info.columns, after),
            rows_left,
            bytes_left,
        )?;
        rows_left -= rows.len();
        bytes_left = bytes_left.saturating_sub(rows.iter().map(HubRow::size).sum());
        if !rows.is_empty() {
            runs.push(Copied::Relayed {
                table: table.clone(),
                columns: info.columns.clone(),
                rows,
            });
        }
        if more || rows_left == 0 || bytes_left == 0 {
            return Ok(PageReply { runs, more: true });
        }
    }
    Ok(PageReply { runs, more: false })
}

/// The tables whose rows are copied by `serve_copy`, in name order.
pub(super) fn per_site_tables(policy: &Policy) -> Vec<String> {
    policy
        .rules()
        .tables
        .keys()
        .filter(|t| copied_rows(policy, t).is_some())
        .cloned()
        .collect()
}

/// Pages through the rows a seed copies of `table` (see `serve_copy`), handing each page to `sink`.
pub(super) fn copy_pages(
    table: &str,
    fetch: &mut dyn FnMut(&CopyRequest) -> Result<CopyReply>,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let mut after = i64::MIN;
    loop {
        let req = CopyRequest {
            table: table.to_owned(),
            after,
            max: COPY_ROWS,
        };
        let rows = fetch(&req)?.rows;
        let full = rows.len() == COPY_ROWS;
        let last = rows.last().and_then(id_of);
        if !rows.is_empty() {
            sink(rows)?;
        }
        match last {
            Some(id) if full => after = id,
            _ => return Ok(()),
        }
    }
}

fn id_of(row: &Row) -> Option<i64> {
    match row.get(ID)? {
        Value::Int(id) => Some(*id),
        Value::UInt(id) => i64::try_from(*id).ok(),
        _ => None,
    }
}

/// The SQL condition of the rows of `table` a seed copies: all of a `[seed]` table, the site-local
/// rows of a table that has them; `None` for any other table.
fn copied_rows(policy: &Policy, table: &str) -> Option<String> {
    let rules = policy.rules();
    if rules.copied_at_seed(table) {
        return Some(String::new());
    }
    let local = rules.site_local(table);
    let any: Vec<String> = local
        .iter()
        .map(|l| format!("{} IN ({})", quote(&l.column), verify::local_values(l)))
        .collect();
    (!any.is_empty() && policy.direction(table) != Direction::Never)
        .then(|| format!("AND ({})", any.join(" OR ")))
}

/// The columns of `table`, in table order; empty if there is no such table.
pub(super) fn columns_of(
    conn: &mut impl Queryable,
    target: &Target,
    table: &str,
) -> Result<Vec<String>> {
    conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
         ORDER BY ORDINAL_POSITION",
        (&target.database, format!("{}{table}", target.prefix)),
    )
    .with_context(|| format!("cannot read the columns of {table}"))
}
