//! `appliance sync verify`: proves that a center holds the rows the hub holds, and repairs drift from
//! the hub.
//!
//! What is compared: the tables the hub relays to centers (`both`, `hub_to_centers`) that both sites
//! have, on the columns both sites have (during a Moodle upgrade one side has more; the report names
//! them). `centers_to_hub` tables (logs) are not compared: a center keeps only its own rows of them.
//!
//! How: each table is walked in chunks of ids (chunk k holds ids `k*chunk ..= k*chunk + chunk - 1`, the
//! same at both sites). Each side sums a chunk in SQL as (row count, XOR of 64-bit row hashes), so an
//! equal chunk costs two numbers on the wire. Only a chunk whose sums differ is compared row by row (the
//! same sums over chunks of one id), and only rows that differ are ever shipped, for repair. A request
//! covers a window of chunks and answers where the next row is, so memory stays bounded whatever the
//! table's size, and long empty id ranges (ids are spread over 64 sites' shares) cost nothing.
//!
//! A row's hash is the first 64 bits of MD5 over its compared columns in name order, each written as its
//! bytes prefixed by their length (`5:hello`), NULL as a bare `N`: NULL, '' and 'NULL' hash apart,
//! text and binary columns hash by their bytes, and no value can shift into the next column.
//!
//! Repair writes the hub's version of each differing row on the site's own connection, whose
//! `skip_replication` keeps it out of capture (a repair is not echoed back), in transactions of at most
//! [`MAX_ROWS`] rows under the log lock, as apply does. It leaves alone a row with a local change the hub
//! has not acknowledged (sync settles that difference; overwriting would lose the edit: verify captures
//! first so that every committed edit is known) and a row that changed after it was compared.
//!
//! - Clocks: the hub's row clock replaces this site's (none at the hub: the row is as seeded, and this
//!   site's goes too), and this site's clock moves past every stamp copied, so that later merges here
//!   decide as the hub's do and the next local edit outranks the copied stamps at the hub as it does here.
//! - Rows the hub lacks are deleted here whether or not the hub keeps a tombstone: the hub is the
//!   reference, and a row it never accepted (an insert its rules refused) is as wrong here as one it
//!   deleted. The tombstone only matters for what comes later: copied, it buries a late change for the
//!   row here as at the hub. A restored row loses any tombstone here, or later changes to it would be
//!   buried here and applied at the hub.
//! - A restored row can clash on a unique key with a row that a later chunk repairs away; it is
//!   reported as failed, and a second run repairs it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;
use mysql::{AccessMode, IsolationLevel, Transaction, TxOpts};
use serde::{Deserialize, Serialize};

use crate::sync::engine::change::Row;
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::merge::RowClock;
use crate::sync::engine::policy::{Direction, Policy};
use crate::sync::engine::record::HLC_SEEN;
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::{from_sql, quote, to_sql, Target, ID};
use crate::sync::engine::store;
use crate::sync::engine::store::{read_clocks_of, write_clock};
use crate::sync::exchange::agent;
use crate::sync::exchange::hub::relayed;
use crate::sync::schema::rules::LocalRows;

/// Ids per chunk unless told otherwise.
pub const DEFAULT_CHUNK: u64 = 1000;
/// Chunks per sums request unless told otherwise.
pub const DEFAULT_WINDOW: u64 = 64;
/// The most chunks one sums request may cover: bounds each reply and each scan.
pub const MAX_SUMS: u64 = 10_000;
/// The largest chunk: the differing rows of one chunk are held in memory while they are repaired.
pub const MAX_CHUNK: u64 = 1_000_000;
/// The most rows one rows request may ask for, and so the rows one repair transaction writes.
pub const MAX_ROWS: usize = 100;
/// The hub's site number (see `SiteConfig`).
const HUB: u32 = 1;

#[derive(Debug, Clone)]
pub struct Options {
    /// Ids per chunk.
    pub chunk: u64,
    /// Chunks per sums request.
    pub window: u64,
    /// Write the hub's rows over the differing ones.
    pub repair: bool,
    /// Only these tables (names without the prefix); all when `None`.
    pub tables: Option<BTreeSet<String>>,
    /// Differing ids kept in the report per table (all are counted).
    pub max_listed: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            chunk: DEFAULT_CHUNK,
            window: DEFAULT_WINDOW,
            repair: false,
            tables: None,
            max_listed: 1000,
        }
    }
}

impl Options {
    fn check(&self) -> Result<()> {
        ensure!(
            (1..=MAX_CHUNK).contains(&self.chunk),
            "the chunk size must be between 1 and {MAX_CHUNK} ids, not {}",
            self.chunk
        );
        ensure!(
            (1..=MAX_SUMS).contains(&self.window),
            "the window must be between 1 and {MAX_SUMS} chunks, not {}",
            self.window
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// What travels between a center and the hub.

/// The hub as verify sees it (HTTP in production, in-process in tests).
pub trait Reference {
    /// The tables the hub relays, with their columns.
    fn catalog(&mut self, req: &CatalogRequest) -> Result<Catalog>;
    fn sums(&mut self, req: &SumsRequest) -> Result<SumsReply>;
    fn rows(&mut self, req: &RowsRequest) -> Result<RowsReply>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRequest {
    /// The hub log position the center has applied (its cursor).
    pub pulled: u64,
}

/// The hub's relayed tables (names without the prefix) that have an integer `id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub tables: Tables,
    /// Relayed changes by other sites in the hub's log after the center's cursor: not yet pulled.
    pub unpulled: u64,
    /// The hub's log position as the catalog was read: where a center seeded now starts pulling.
    #[serde(default)]
    pub log_end: u64,
    /// How far the hub holds the center's own changes: a center seeded again (a new card for the
    /// same site) numbers its changes after them, or the hub would take them for replays.
    #[serde(default)]
    pub held: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// In table order.
    pub columns: Vec<String>,
    /// The smallest id, if the table has rows: where the walk starts.
    pub first: Option<i64>,
}

/// Sums of the chunks of `chunk` ids that hold ids `lo..=last`, over `columns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumsRequest {
    pub table: String,
    pub columns: Vec<String>,
    pub chunk: u64,
    pub lo: i64,
    pub last: i64,
}

/// One chunk's sums; empty chunks are not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sum {
    /// The chunk's number: its ids are `chunk * size ..`; with chunks of one id, the id itself.
    pub chunk: i64,
    pub rows: u64,
    /// XOR of the rows' hashes; with chunks of one id, the row's hash.
    pub hash: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumsReply {
    /// By chunk number.
    pub sums: Vec<Sum>,
    /// The smallest id after `last`: where the next window starts.
    pub next: Option<i64>,
}

/// The hub's rows with these ids (at most [`MAX_ROWS`]), on `columns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsRequest {
    pub table: String,
    pub columns: Vec<String>,
    pub ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubRow {
    pub id: i64,
    pub values: Row,
    /// Who wrote each column last; `None` for a row sync has not touched since the seed (or a table
    /// without clocks).
    pub clock: Option<RowClock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: i64,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowsReply {
    pub rows: Vec<HubRow>,
    /// For requested ids the hub does not have: the tombstones it keeps.
    pub tombstones: Vec<Tombstone>,
}

// ---------------------------------------------------------------------------------------------------
// The hub's side: pure functions of its database, behind whatever transport.

/// The catalog as `center` sees it.
pub fn serve_catalog(
    hub: &mut Site,
    policy: &Policy,
    center: u32,
    req: &CatalogRequest,
) -> Result<Catalog> {
    let target = hub.target().clone();
    let log_end = crate::sync::exchange::hub::log_end(hub)?;
    let tables = tables_at(hub.conn(), &target, policy)?;
    let unpulled = unpulled(hub.conn(), policy, center, req.pulled)?;
    let held = crate::sync::exchange::inbox::received(hub.conn(), center)?;
    Ok(Catalog {
        tables,
        unpulled,
        log_end,
        held,
    })
}

/// Counts what `hub::page` would hand `center` after `pulled`.
fn unpulled(conn: &mut impl Queryable, policy: &Policy, center: u32, pulled: u64) -> Result<u64> {
    let waiting: Vec<(String, u64)> = conn
        .exec(
            "SELECT tbl, COUNT(*) FROM kituo_sync.log WHERE lseq > ? AND origin <> ? GROUP BY tbl",
            (pulled, center),
        )
        .context("cannot count the changes not yet pulled")?;
    Ok(waiting
        .into_iter()
        .filter(|(table, _)| relayed(policy.direction(table)))
        .map(|(_, n)| n)
        .sum())
}

pub fn serve_sums(hub: &mut Site, policy: &Policy, req: &SumsRequest) -> Result<SumsReply> {
    check_window(req)?;
    let target = hub.target().clone();
    check_table(hub.conn(), &target, policy, &req.table, &req.columns)?;
    sums_at(hub.conn(), &target, policy, req)
}

/// The rows, their clocks and the tombstones of the missing ones, read in one snapshot so that a row
/// and its clock belong together.
pub fn serve_rows(hub: &mut Site, policy: &Policy, req: &RowsRequest) -> Result<RowsReply> {
    ensure!(
        req.ids.len() <= MAX_ROWS,
        "at most {MAX_ROWS} rows per request, not {}",
        req.ids.len()
    );
    let target = hub.target().clone();
    check_table(hub.conn(), &target, policy, &req.table, &req.columns)?;
    let snapshot = TxOpts::default()
        .set_isolation_level(Some(IsolationLevel::RepeatableRead))
        .set_with_consistent_snapshot(true)
        .set_access_mode(Some(AccessMode::ReadOnly));
    let mut tx = hub
        .conn()
        .start_transaction(snapshot)
        .context("cannot start a snapshot")?;
    let rows = read_rows(&mut tx, &target, &req.table, &req.columns, &req.ids)?;
    let present: HashSet<i64> = rows.iter().map(|(id, _)| *id).collect();
    let present_ids: Vec<i64> = present.iter().copied().collect();
    let mut clocks = read_clocks_of(&mut tx, &req.table, &present_ids)?;
    let gone: Vec<i64> = req
        .ids
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    let tombstones = read_tombstones(&mut tx, &req.table, &gone)?;
    tx.commit().context("cannot end the snapshot")?;
    let rows = rows
        .into_iter()
        .map(|(id, values)| HubRow {
            id,
            values,
            clock: clocks.remove(&id),
        })
        .collect();
    Ok(RowsReply { rows, tombstones })
}

fn check_window(req: &SumsRequest) -> Result<()> {
    ensure!(
        (1..=MAX_CHUNK).contains(&req.chunk),
        "chunk size {} out of range",
        req.chunk
    );
    ensure!(
        req.lo <= req.last,
        "empty id range {}..={}",
        req.lo,
        req.last
    );
    let chunks =
        i128::from(chunk_of(req.last, req.chunk)) - i128::from(chunk_of(req.lo, req.chunk));
    ensure!(
        chunks < i128::from(MAX_SUMS),
        "at most {MAX_SUMS} chunks per request, not {}",
        chunks + 1
    );
    Ok(())
}

/// Only relayed tables are served, and names reach SQL only once the catalog has them.
fn check_table(
    conn: &mut impl Queryable,
    target: &Target,
    policy: &Policy,
    table: &str,
    columns: &[String],
) -> Result<()> {
    ensure!(
        relayed(policy.direction(table)),
        "{table} is not relayed to centers ({}): not served",
        policy.direction(table)
    );
    let name = format!("{}{table}", target.prefix);
    let have: BTreeSet<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&target.database, &name),
        )
        .with_context(|| format!("cannot read the columns of {name}"))?
        .into_iter()
        .collect();
    ensure!(!have.is_empty(), "no table {table} here");
    ensure!(have.contains(ID), "{table} has no id column");
    ensure!(!columns.is_empty(), "no columns asked of {table}");
    if let Some(c) = columns.iter().find(|c| !have.contains(*c)) {
        bail!("{table} has no column {c}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// SQL both sides run, so that both compute the same numbers.

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
        shape.0.push(column);
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

fn is_integer(data_type: &str) -> bool {
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
fn shared_rows(policy: &Policy, table: &str) -> String {
    match policy.rules().site_local(table) {
        Some(local) if !local.values.is_empty() => format!(
            "AND ({col} IS NULL OR {col} NOT IN ({}))",
            local_values(local),
            col = quote(&local.column)
        ),
        _ => String::new(),
    }
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

fn sums_at(
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
fn lock_hashes(
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

fn read_rows(
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

fn read_tombstones(tx: &mut Transaction<'_>, table: &str, ids: &[i64]) -> Result<Vec<Tombstone>> {
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

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

// ---------------------------------------------------------------------------------------------------
// The center's side.

/// Compares this center with the hub and, if asked, repairs what differs. Capturing and a full sync
/// beforehand are the caller's part: what is still in flight shows as differences (the report counts it).
pub fn verify(
    site: &mut Site,
    policy: &Policy,
    hub: &mut dyn Reference,
    opts: &Options,
) -> Result<Report> {
    opts.check()?;
    ensure!(
        site.id() != HUB,
        "verify runs at a center: it compares the center with the hub"
    );
    let target = site.target().clone();
    if opts.repair {
        // So that the backlog counts every local edit committed before verify began.
        site.capture(policy)
            .context("cannot record local changes before verifying")?;
    }
    let backlog = agent::backlog(site)?.changes;
    let pulled = store::get_u64(site.conn(), agent::HUB_CURSOR)?;
    let theirs = hub
        .catalog(&CatalogRequest { pulled })
        .context("cannot read the hub's tables")?;
    let ours = tables_at(site.conn(), &target, policy)?;
    let mut report = Report {
        site: site.id(),
        chunk: opts.chunk,
        tables: Vec::new(),
        tables_only_here: Vec::new(),
        tables_only_at_hub: Vec::new(),
        backlog,
        unpulled: theirs.unpulled,
        repair: opts.repair,
    };
    let pairs = pair_tables(&ours, &theirs.tables, opts, &mut report)?;
    let mut checker = Checker {
        site,
        policy,
        hub,
        opts,
        target,
    };
    for (name, here, there) in pairs {
        let table = checker
            .compare_table(name, here, there)
            .with_context(|| format!("cannot verify {name}"))?;
        report.tables.push(table);
    }
    Ok(report)
}

pub(crate) type Tables = BTreeMap<String, TableInfo>;
type Pair<'c> = (&'c str, &'c TableInfo, &'c TableInfo);

/// The tables both sites have, in name order; the others go to the report.
fn pair_tables<'c>(
    ours: &'c Tables,
    theirs: &'c Tables,
    opts: &Options,
    report: &mut Report,
) -> Result<Vec<Pair<'c>>> {
    let wanted = |name: &str| opts.tables.as_ref().is_none_or(|t| t.contains(name));
    if let Some(names) = &opts.tables {
        if let Some(name) = names
            .iter()
            .find(|n| !ours.contains_key(*n) && !theirs.contains_key(*n))
        {
            bail!("{name} is not a table the hub relays to centers");
        }
    }
    let mut pairs = Vec::new();
    for (name, here) in ours {
        match theirs.get(name) {
            Some(there) if wanted(name) => pairs.push((name.as_str(), here, there)),
            Some(_) => {}
            None if wanted(name) => report.tables_only_here.push(name.clone()),
            None => {}
        }
    }
    report.tables_only_at_hub = theirs
        .keys()
        .filter(|n| !ours.contains_key(*n) && wanted(n))
        .cloned()
        .collect();
    Ok(pairs)
}

struct Checker<'a> {
    site: &'a mut Site,
    policy: &'a Policy,
    hub: &'a mut dyn Reference,
    opts: &'a Options,
    target: Target,
}

/// A table as compared: its name and the columns both sites have, in name order.
struct Compared {
    name: String,
    columns: Vec<String>,
}

/// A differing row found, with its hash here when compared (to notice a change before repairing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    id: i64,
    kind: Kind,
    here: Option<u64>,
}

impl Checker<'_> {
    fn compare_table(
        &mut self,
        name: &str,
        here: &TableInfo,
        there: &TableInfo,
    ) -> Result<TableReport> {
        let ours: BTreeSet<&String> = here.columns.iter().collect();
        let theirs: BTreeSet<&String> = there.columns.iter().collect();
        let table = Compared {
            name: name.to_owned(),
            columns: ours.intersection(&theirs).map(|c| (*c).clone()).collect(),
        };
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
    fn rows_of_chunk(&mut self, table: &Compared, chunk: i64) -> Result<Vec<Found>> {
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

    fn both_sums(
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
    fn repair(&mut self, table: &Compared, found: &[Found], out: &mut Repair) -> Result<()> {
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
    fn write(&mut self, table: &Compared, batch: &[Found], reply: &RowsReply) -> Result<Repair> {
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
fn pending_ids(
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

/// Writes the hub's rows of `table` (as `serve_rows` reads them, on `columns`) in one transaction,
/// with their row clocks, whether or not they are here: how a seed from a bundle copies the hub.
pub(crate) fn copy_rows(
    site: &mut Site,
    table: &str,
    columns: &[String],
    rows: &[HubRow],
) -> Result<()> {
    let target = site.target().clone();
    let table = Compared {
        name: table.to_owned(),
        columns: columns.to_vec(),
    };
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut tx = site
        .conn()
        .start_transaction(TxOpts::default())
        .context("cannot start a transaction")?;
    store::lock_log(&mut tx)?;
    let here = lock_hashes(&mut tx, &target, &table.name, &table.columns, &ids)?;
    let mut seen = 0;
    for row in rows {
        let hub = Restore {
            row: Some(row),
            tombstone: None,
        };
        let stamp = hub
            .write(&mut tx, &target, &table, row.id, here.contains_key(&row.id))
            .with_context(|| format!("cannot copy {} id {}", table.name, row.id))?;
        seen = seen.max(stamp);
    }
    clock_past(&mut tx, seen)?;
    tx.commit().context("cannot commit the copied rows")
}

/// Local edits from now on must be stamped after every copied stamp (`seen`), or they would lose to
/// the hub's clock when merged there while winning here.
fn clock_past(tx: &mut Transaction<'_>, seen: u64) -> Result<()> {
    if seen > store::get_u64(tx, HLC_SEEN)? {
        store::set(tx, HLC_SEEN, &seen.to_string())?;
    }
    Ok(())
}

/// The hub's state of one row.
struct Restore<'r> {
    row: Option<&'r HubRow>,
    tombstone: Option<Stamp>,
}

impl Restore<'_> {
    /// Makes the row here what it is at the hub; returns the highest stamp copied.
    fn write(
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
                Ok(clock
                    .cols
                    .values()
                    .fold(clock.born.hlc, |m, s| m.max(s.hlc)))
            }
            None => {
                store::drop_clock(tx, name, id)?;
                Ok(0)
            }
        }
    }
}

fn values_of<'r>(
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

fn update_row(
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

fn insert_row(
    tx: &mut Transaction<'_>,
    target: &Target,
    table: &Compared,
    row: &HubRow,
) -> Result<()> {
    let values = values_of(table, row, "")?;
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

/// A reply that strays outside its request would make the walk loop or skip rows.
fn check_reply(req: &SumsRequest, reply: &SumsReply) -> Result<()> {
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

fn check_rows(req: &RowsRequest, reply: &RowsReply) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------------
// Chunk arithmetic. Chunk numbers are `FLOOR(id / chunk)` in SQL and `div_euclid` here: equal for every
// id, negative ones included.

fn chunk_of(id: i64, chunk: u64) -> i64 {
    clamp(i128::from(id).div_euclid(i128::from(chunk)))
}

/// The first and last id of chunk number `k`.
fn chunk_ids(k: i64, chunk: u64) -> (i64, i64) {
    let lo = i128::from(k) * i128::from(chunk);
    (clamp(lo), clamp(lo + i128::from(chunk) - 1))
}

/// The id range of `chunks` chunks from the one holding `start`.
fn window(start: i64, chunk: u64, chunks: u64) -> (i64, i64) {
    let k = chunk_of(start, chunk);
    let last_k = clamp(i128::from(k) + i128::from(chunks) - 1);
    (chunk_ids(k, chunk).0, chunk_ids(last_k, chunk).1)
}

fn clamp(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where the walk goes after a window ending at `last`: the nearer of both sides' next rows, unless
/// that is past `end`.
fn advance(last: i64, end: i64, ours: Option<i64>, theirs: Option<i64>) -> Result<Option<i64>> {
    if last >= end {
        return Ok(None);
    }
    match earliest(ours, theirs) {
        Some(next) if next <= last => bail!("the walk would not move past id {last}"),
        Some(next) if next <= end => Ok(Some(next)),
        _ => Ok(None),
    }
}

/// Both sides' sums by chunk.
fn pair_sums<'s>(
    ours: &'s [Sum],
    theirs: &'s [Sum],
) -> BTreeMap<i64, (Option<&'s Sum>, Option<&'s Sum>)> {
    let mut paired: BTreeMap<i64, (Option<&Sum>, Option<&Sum>)> = BTreeMap::new();
    for s in ours {
        paired.entry(s.chunk).or_default().0 = Some(s);
    }
    for s in theirs {
        paired.entry(s.chunk).or_default().1 = Some(s);
    }
    paired
}

fn mismatched(ours: &[Sum], theirs: &[Sum]) -> Vec<i64> {
    pair_sums(ours, theirs)
        .into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, _)| k)
        .collect()
}

/// With chunks of one id: the rows that differ and how.
fn row_differences(ours: &[Sum], theirs: &[Sum]) -> Vec<Found> {
    pair_sums(ours, theirs)
        .into_iter()
        .filter_map(|(id, pair)| {
            let kind = match pair {
                (None, Some(_)) => Kind::Missing,
                (Some(_), None) => Kind::Extra,
                (Some(a), Some(b)) if a != b => Kind::Different,
                _ => return None,
            };
            Some(Found {
                id,
                kind,
                here: pair.0.map(|s| s.hash),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// The report.

/// How a row differs, seen from the center.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The hub has the row, this site does not.
    Missing,
    /// This site has a row the hub does not.
    Extra,
    /// Both have it, with different values.
    Different,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Missing => "missing here",
            Kind::Extra => "extra here",
            Kind::Different => "different",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difference {
    pub id: i64,
    pub kind: Kind,
}

/// What repair did to one table's differing rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    pub repaired: u64,
    /// Left alone: a local change the hub has not acknowledged yet (sync settles these).
    pub pending: u64,
    /// Left alone: the row changed here after it was compared.
    pub moved: u64,
    /// Rows whose repair failed, with why (e.g. a unique key held by a row repaired later: run again).
    pub failed: Vec<(i64, String)>,
}

impl Repair {
    fn add(&mut self, other: Repair) {
        self.repaired += other.repaired;
        self.pending += other.pending;
        self.moved += other.moved;
        self.failed.extend(other.failed);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub direction: Direction,
    /// Columns compared.
    pub columns: usize,
    /// Columns not compared because only one site has them (a Moodle upgrade in progress).
    pub columns_only_here: Vec<String>,
    pub columns_only_at_hub: Vec<String>,
    pub rows_here: u64,
    pub rows_at_hub: u64,
    /// Non-empty chunks at either site.
    pub chunks: u64,
    pub differing_chunks: u64,
    /// Rows that differ, all counted.
    pub differing: u64,
    /// The first differing rows, by id within chunk order (up to `Options::max_listed`).
    pub differences: Vec<Difference>,
    pub repair: Repair,
}

impl Default for TableReport {
    fn default() -> TableReport {
        TableReport {
            table: String::new(),
            direction: Direction::Both,
            columns: 0,
            columns_only_here: Vec::new(),
            columns_only_at_hub: Vec::new(),
            rows_here: 0,
            rows_at_hub: 0,
            chunks: 0,
            differing_chunks: 0,
            differing: 0,
            differences: Vec::new(),
            repair: Repair::default(),
        }
    }
}

impl TableReport {
    pub fn identical(&self) -> bool {
        self.differing == 0
    }

    fn count(&mut self, ours: &[Sum], theirs: &[Sum]) {
        self.rows_here += ours.iter().map(|s| s.rows).sum::<u64>();
        self.rows_at_hub += theirs.iter().map(|s| s.rows).sum::<u64>();
        self.chunks += pair_sums(ours, theirs).len() as u64;
    }

    fn note(&mut self, found: &[Found], max_listed: usize) {
        self.differing += found.len() as u64;
        let room = max_listed.saturating_sub(self.differences.len());
        self.differences
            .extend(found.iter().take(room).map(|f| Difference {
                id: f.id,
                kind: f.kind,
            }));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub site: u32,
    pub chunk: u64,
    /// Every table compared, in name order.
    pub tables: Vec<TableReport>,
    /// Relayed tables only one site has (not compared).
    pub tables_only_here: Vec<String>,
    pub tables_only_at_hub: Vec<String>,
    /// Local changes the hub has not acknowledged: their rows are expected to differ.
    pub backlog: u64,
    /// Hub log entries after this site's cursor: their rows are expected to differ too.
    pub unpulled: u64,
    /// Whether repair was asked for.
    pub repair: bool,
}

impl Report {
    /// No compared row differs (tables only one site has are listed apart).
    pub fn identical(&self) -> bool {
        self.tables.iter().all(TableReport::identical)
    }

    pub fn table(&self, name: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == name)
    }

    pub fn chunks(&self) -> u64 {
        self.tables.iter().map(|t| t.chunks).sum()
    }

    pub fn differing(&self) -> u64 {
        self.tables.iter().map(|t| t.differing).sum()
    }

    pub fn repaired(&self) -> u64 {
        self.tables.iter().map(|t| t.repair.repaired).sum()
    }

    /// Every differing row was repaired: none failed or was left alone.
    pub fn repaired_all(&self) -> bool {
        self.tables.iter().all(|t| {
            let r = &t.repair;
            r.pending == 0 && r.moved == 0 && r.failed.is_empty()
        })
    }

    /// Every listed difference with its table.
    pub fn differences(&self) -> impl Iterator<Item = (&str, Difference)> + '_ {
        self.tables
            .iter()
            .flat_map(|t| t.differences.iter().map(move |d| (t.table.as_str(), *d)))
    }
}

/// Ids shown per kind and table in the text report.
const SHOWN: usize = 12;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let differing: Vec<&TableReport> = self.tables.iter().filter(|t| !t.identical()).collect();
        let verdict = if differing.is_empty() {
            "identical".to_owned()
        } else {
            format!(
                "differing: {} in {}",
                count(self.differing(), "row"),
                count(differing.len() as u64, "table")
            )
        };
        writeln!(
            f,
            "site {} against the hub: {} compared in {} of {} ids: {verdict}",
            self.site,
            count(self.tables.len() as u64, "table"),
            count(self.chunks(), "chunk"),
            self.chunk,
        )?;
        if self.backlog > 0 {
            writeln!(
                f,
                "  {} not yet acknowledged by the hub: their rows differ until sent",
                count(self.backlog, "local change")
            )?;
        }
        if self.unpulled > 0 {
            writeln!(
                f,
                "  {} at the hub not yet pulled: their rows differ until pulled",
                count(self.unpulled, "change")
            )?;
        }
        list(
            f,
            "tables only at the hub, not compared",
            &self.tables_only_at_hub,
        )?;
        list(f, "tables only here, not compared", &self.tables_only_here)?;
        for t in &self.tables {
            if !t.columns_only_here.is_empty() || !t.columns_only_at_hub.is_empty() {
                writeln!(
                    f,
                    "  {}: compared on the {} columns both have; only at the hub: {}; only here: {}",
                    t.table,
                    t.columns,
                    none_or(&t.columns_only_at_hub),
                    none_or(&t.columns_only_here)
                )?;
            }
        }
        let width = differing.iter().map(|t| t.table.len()).max().unwrap_or(0);
        for t in differing {
            write_table(f, t, width, self.repair)?;
        }
        Ok(())
    }
}

/// One line per differing table (ids by kind), and what repair did under it.
fn write_table(
    f: &mut fmt::Formatter<'_>,
    t: &TableReport,
    width: usize,
    repair: bool,
) -> fmt::Result {
    let mut parts = Vec::new();
    for kind in [Kind::Missing, Kind::Extra, Kind::Different] {
        let ids: Vec<i64> = t
            .differences
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let mut shown: Vec<String> = ids.iter().take(SHOWN).map(i64::to_string).collect();
        if ids.len() > SHOWN {
            shown.push(format!("and {} more", ids.len() - SHOWN));
        }
        parts.push(format!("{}: {}", kind.label(), shown.join(" ")));
    }
    let unlisted = t.differing - t.differences.len() as u64;
    if unlisted > 0 {
        parts.push(format!("{unlisted} more not listed"));
    }
    writeln!(
        f,
        "  {:<width$}  {:<14}  {:<14}  {:>9}  {}",
        t.table,
        t.direction.name(),
        format!("{}/{} chunks", t.differing_chunks, t.chunks),
        count(t.differing, "row"),
        parts.join("  ")
    )?;
    if repair {
        writeln!(f, "  {:<width$}  {}", "", repair_summary(&t.repair))?;
        for (id, why) in t.repair.failed.iter().take(SHOWN) {
            writeln!(f, "  {:<width$}    id {id}: {why}", "")?;
        }
    }
    Ok(())
}

fn repair_summary(r: &Repair) -> String {
    let mut parts = vec![format!("repaired {}", r.repaired)];
    if r.pending > 0 {
        parts.push(format!(
            "kept {} with local changes not yet sent",
            r.pending
        ));
    }
    if r.moved > 0 {
        parts.push(format!("kept {} changed here meanwhile", r.moved));
    }
    if !r.failed.is_empty() {
        parts.push(format!(
            "{} failed (run repair again: a row repaired later may have been in the way)",
            r.failed.len()
        ));
    }
    parts.join(", ")
}

fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn list(f: &mut fmt::Formatter<'_>, what: &str, names: &[String]) -> fmt::Result {
    if names.is_empty() {
        return Ok(());
    }
    writeln!(f, "  {what}: {}", names.join(", "))
}

fn none_or(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(chunk: i64, rows: u64, hash: u64) -> Sum {
        Sum { chunk, rows, hash }
    }

    #[test]
    fn chunks_match_sql_floor_division_for_every_id() {
        assert_eq!(chunk_of(0, 1000), 0);
        assert_eq!(chunk_of(999, 1000), 0);
        assert_eq!(chunk_of(1000, 1000), 1);
        assert_eq!(chunk_of(-1, 1000), -1);
        assert_eq!(chunk_ids(-1, 1000), (-1000, -1));
        assert_eq!(chunk_ids(3, 1000), (3000, 3999));
        assert_eq!(chunk_of(i64::MAX, 1), i64::MAX);
        assert_eq!(
            chunk_ids(i64::MAX, 2),
            (i64::MAX, i64::MAX),
            "clamped, not wrapped"
        );
    }

    #[test]
    fn windows_start_on_a_chunk_boundary_and_end_at_the_id_limit() {
        assert_eq!(window(1234, 100, 4), (1200, 1599));
        assert_eq!(window(7, 1, 3), (7, 9));
        assert_eq!(
            window(i64::MAX - 5, 1000, 64),
            (i64::MAX - 5 - (i64::MAX - 5) % 1000, i64::MAX)
        );
    }

    #[test]
    fn the_walk_goes_to_the_nearer_next_row_and_stops_at_its_end() -> Result<()> {
        assert_eq!(advance(99, i64::MAX, Some(500), Some(300))?, Some(300));
        assert_eq!(advance(99, i64::MAX, None, Some(300))?, Some(300));
        assert_eq!(advance(99, i64::MAX, None, None)?, None);
        assert_eq!(advance(99, 199, Some(250), None)?, None, "past the chunk");
        assert_eq!(advance(i64::MAX, i64::MAX, Some(5), None)?, None);
        assert!(
            advance(99, i64::MAX, Some(50), None).is_err(),
            "a next row inside the window"
        );
        Ok(())
    }

    #[test]
    fn differing_chunks_and_rows_are_told_apart_by_kind() {
        let ours = [sum(1, 2, 7), sum(2, 1, 5), sum(4, 1, 1)];
        let theirs = [sum(1, 2, 7), sum(2, 1, 6), sum(3, 1, 1)];
        assert_eq!(mismatched(&ours, &theirs), vec![2, 3, 4]);
        let found = row_differences(&ours, &theirs);
        let kinds: Vec<(i64, Kind, Option<u64>)> =
            found.iter().map(|f| (f.id, f.kind, f.here)).collect();
        assert_eq!(
            kinds,
            vec![
                (2, Kind::Different, Some(5)),
                (3, Kind::Missing, None),
                (4, Kind::Extra, Some(1)),
            ]
        );
    }

    #[test]
    fn a_stray_reply_is_refused() {
        let req = SumsRequest {
            table: "forum_posts".into(),
            columns: vec!["id".into()],
            chunk: 100,
            lo: 1000,
            last: 1999,
        };
        let ok = SumsReply {
            sums: vec![sum(10, 1, 1), sum(19, 1, 1)],
            next: Some(2000),
        };
        assert!(check_reply(&req, &ok).is_ok());
        let outside = SumsReply {
            sums: vec![sum(20, 1, 1)],
            next: None,
        };
        assert!(check_reply(&req, &outside).is_err());
        let backwards = SumsReply {
            sums: vec![],
            next: Some(1500),
        };
        assert!(check_reply(&req, &backwards).is_err());
    }

    #[test]
    fn oversized_windows_are_refused() {
        let mut req = SumsRequest {
            table: "t".into(),
            columns: vec!["id".into()],
            chunk: 1,
            lo: 0,
            last: MAX_SUMS as i64 - 1,
        };
        assert!(check_window(&req).is_ok());
        req.last += 1;
        assert!(check_window(&req).is_err());
        req.chunk = 0;
        assert!(check_window(&req).is_err());
    }

    #[test]
    fn the_row_hash_quotes_names_and_marks_null() {
        let sql = row_hash_sql(&["id".into(), "we`ird".into()]);
        assert!(sql.contains("CAST(`we``ird` AS BINARY)"), "{sql}");
        assert!(sql.contains("'N')"), "{sql}");
    }

    #[test]
    fn the_text_report_lists_ids_by_kind() {
        let mut t = TableReport {
            table: "forum_posts".into(),
            chunks: 7,
            differing_chunks: 2,
            ..TableReport::default()
        };
        t.note(
            &[
                Found {
                    id: 11700,
                    kind: Kind::Missing,
                    here: None,
                },
                Found {
                    id: 20002,
                    kind: Kind::Extra,
                    here: Some(1),
                },
                Found {
                    id: 10500,
                    kind: Kind::Different,
                    here: Some(2),
                },
            ],
            2,
        );
        t.repair.repaired = 3;
        let report = Report {
            site: 2,
            chunk: 500,
            tables: vec![t],
            tables_only_here: vec![],
            tables_only_at_hub: vec!["newtable".into()],
            backlog: 1,
            unpulled: 0,
            repair: true,
        };
        let text = report.to_string();
        assert!(text.contains("differing: 3 rows in 1 table"), "{text}");
        assert!(
            text.contains("missing here: 11700  extra here: 20002  1 more not listed"),
            "{text}"
        );
        assert!(text.contains("repaired 3"), "{text}");
        assert!(
            text.contains("tables only at the hub, not compared: newtable"),
            "{text}"
        );
        assert!(
            text.contains("1 local change not yet acknowledged"),
            "{text}"
        );
        assert!(!report.identical());
    }
}
