//! `appliance sync seed`: a center joining the university takes its Moodle database from the hub
//! instead of installing a fresh one (whose admin account, configuration and course ids would clash
//! with every other site's).
//!
//! The Moodle tables must exist and be empty (first boot creates them from the card's own XMLDB with
//! `appliance sync schema-sql`). The seed then:
//! 1. reads the hub's catalog, and in one transaction points this center's hub cursor at the hub's log
//!    end as read there, and numbers its own changes after the ones the hub holds from this site (a new
//!    card for a site whose old card synced must not have its changes taken for replays);
//! 2. copies what never syncs but Moodle needs to run: the `[seed]` tables (its cron schedule, its own
//!    MNet host) and the `[site_local]` rows (the installed versions), after checking that the hub runs
//!    the release this card carries;
//! 3. copies every relayed row with `sync verify --repair`'s machinery (chunked checksums, rows and row
//!    clocks), then pulls what the hub logged meanwhile; again only if a row could not be copied (a
//!    unique key held by a row a later chunk replaces).
//!
//! One pass that copied every row it found is enough, however busy the hub: a row the walk missed or
//! read early was changed after the cursor, so its change is in the log and is pulled; a change the
//! copy already holds merges as a no-op (the copied row clocks already carry its stamps). So nothing is
//! lost or doubled whatever the hub does during the seed. A cut link, a killed process or a power cut resumes: the state `seed` is
//! `started` until the last pass, and a second run copies only what still differs.

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};

use super::agent::{self, Link};
use super::apply::{from_sql, quote, to_sql, Target, ID};
use super::change::{Row, Value};
use super::policy::{Direction, Policy};
use super::record;
use super::site::Site;
use super::store;
use super::verify::{self, CatalogRequest, Reference};

/// The sync state that says how far the seed got: `started`, then `done`.
pub const SEED_STATE: &str = "seed";
/// Rows per copy request.
pub const COPY_ROWS: usize = 200;
/// Copy passes before the seed gives up (a later run goes on where it stopped).
const PASSES: u32 = 5;

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

/// The hub as the seed sees it: verify's calls, the pull, and the copy of what never syncs.
pub trait Source: Reference + Link {
    fn copy(&mut self, req: &CopyRequest) -> Result<CopyReply>;
}

/// A run of the hub's rows of one table, as a seed bundle carries them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Copied {
    pub table: String,
    /// The columns the rows hold, in the hub's table order.
    pub columns: Vec<String>,
    pub rows: Vec<verify::HubRow>,
    /// Rows of a `[seed]` table or site-local rows (no clocks: they never sync), not relayed rows.
    pub per_site: bool,
}

// ---------------------------------------------------------------------------------------------------
// The hub's side.

/// The hub's log position now, read under the log lock so that no change can commit below it.
pub fn log_end(hub: &mut Site) -> Result<u64> {
    let mut tx = hub
        .conn()
        .start_transaction(mysql::TxOpts::default())
        .context("cannot start a transaction")?;
    store::lock_log(&mut tx)?;
    let end: Option<u64> = tx
        .query_first("SELECT COALESCE(MAX(lseq), 0) FROM kituo_sync.log")
        .context("cannot read the end of the hub's log")?;
    tx.commit().context("cannot end the transaction")?;
    Ok(end.unwrap_or(0))
}

/// Every table a seed copies from the hub, each as runs of rows in id order, handed to `sink`: first
/// the per-site rows, then every relayed row with its clock. Each run is read in one snapshot.
pub fn read_all(
    hub: &mut Site,
    policy: &Policy,
    sink: &mut dyn FnMut(Copied) -> Result<()>,
) -> Result<()> {
    let target = hub.target().clone();
    let per_site: Vec<String> = policy
        .rules()
        .tables
        .keys()
        .filter(|t| copied_rows(policy, t).is_some())
        .cloned()
        .collect();
    for table in per_site {
        let columns = columns_of(hub.conn(), &target, &table)?;
        let mut after = i64::MIN;
        loop {
            let req = CopyRequest {
                table: table.clone(),
                after,
                max: COPY_ROWS,
            };
            let rows = serve_copy(hub, policy, &req)?.rows;
            let Some(last) = rows.last().and_then(id_of) else {
                break;
            };
            let full = rows.len() == COPY_ROWS;
            let rows = rows
                .into_iter()
                .filter_map(|values| {
                    let id = id_of(&values)?;
                    Some(verify::HubRow {
                        id,
                        values,
                        clock: None,
                    })
                })
                .collect();
            sink(Copied {
                table: table.clone(),
                columns: columns.clone(),
                rows,
                per_site: true,
            })?;
            if !full {
                break;
            }
            after = last;
        }
    }
    for (table, info) in verify::tables_at(hub.conn(), &target, policy)? {
        let mut after = i64::MIN;
        loop {
            let ids: Vec<i64> = hub
                .conn()
                .exec(
                    format!(
                        "SELECT id FROM {} WHERE id > ? ORDER BY id LIMIT {}",
                        target.table(&table),
                        verify::MAX_ROWS
                    ),
                    (after,),
                )
                .with_context(|| format!("cannot read the ids of {table}"))?;
            let Some(&last) = ids.last() else {
                break;
            };
            let req = verify::RowsRequest {
                table: table.clone(),
                columns: info.columns.clone(),
                ids,
            };
            let rows = verify::serve_rows(hub, policy, &req)?.rows;
            sink(Copied {
                table: table.clone(),
                columns: info.columns.clone(),
                rows,
                per_site: false,
            })?;
            after = last;
        }
    }
    Ok(())
}

fn id_of(row: &Row) -> Option<i64> {
    match row.get(ID)? {
        Value::Int(id) => Some(*id),
        Value::UInt(id) => i64::try_from(*id).ok(),
        _ => None,
    }
}

/// The rows of a `[seed]` table, or the `[site_local]` rows of a table that has them.
pub fn serve_copy(hub: &mut Site, policy: &Policy, req: &CopyRequest) -> Result<CopyReply> {
    ensure!(
        (1..=verify::MAX_ROWS * 10).contains(&req.max),
        "at most {} rows per copy request, not {}",
        verify::MAX_ROWS * 10,
        req.max
    );
    let filter = match copied_rows(policy, &req.table) {
        Some(filter) => filter,
        None => bail!("{} is not copied when a center is seeded", req.table),
    };
    let target = hub.target().clone();
    let columns = columns_of(hub.conn(), &target, &req.table)?;
    if columns.is_empty() {
        // A table of a plugin the hub lacks: nothing to copy.
        return Ok(CopyReply { rows: Vec::new() });
    }
    let rows: Vec<mysql::Row> = hub
        .conn()
        .exec(
            format!(
                "SELECT {} FROM {} WHERE id > ? {filter} ORDER BY id LIMIT ?",
                columns
                    .iter()
                    .map(|c| quote(c))
                    .collect::<Vec<_>>()
                    .join(", "),
                target.table(&req.table)
            ),
            (req.after, req.max as u64),
        )
        .with_context(|| format!("cannot read {}", req.table))?;
    let rows = rows
        .into_iter()
        .map(|r| {
            columns
                .iter()
                .cloned()
                .zip(r.unwrap().into_iter().map(from_sql))
                .collect()
        })
        .collect();
    Ok(CopyReply { rows })
}

/// The SQL condition of the rows of `table` a seed copies: all of a `[seed]` table, the site-local
/// rows of a table that has them; `None` for any other table.
fn copied_rows(policy: &Policy, table: &str) -> Option<String> {
    let rules = policy.rules();
    if rules.copied_at_seed(table) {
        return Some(String::new());
    }
    let local = rules.site_local(table)?;
    (policy.direction(table) != Direction::Never).then(|| {
        format!(
            "AND {} IN ({})",
            quote(&local.column),
            verify::local_values(local)
        )
    })
}

/// The columns of `table`, in table order; empty if there is no such table.
fn columns_of(conn: &mut impl Queryable, target: &Target, table: &str) -> Result<Vec<String>> {
    conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
         ORDER BY ORDINAL_POSITION",
        (&target.database, format!("{}{table}", target.prefix)),
    )
    .with_context(|| format!("cannot read the columns of {table}"))
}

// ---------------------------------------------------------------------------------------------------
// The center's side.

/// What a seed did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seeded {
    /// This run went on with a seed an earlier one started.
    pub resumed: bool,
    /// The seed was done before: nothing was asked of the hub.
    pub already: bool,
    /// Rows of `[seed]` tables and site-local rows copied.
    pub copied: u64,
    /// Relayed rows written by the verify passes.
    pub repaired: u64,
    pub passes: u32,
    /// Where pulling from the hub started.
    pub cursor: u64,
    /// The hub's tables this card's Moodle does not have (plugins the hub has and the card lacks).
    pub tables_only_at_hub: Vec<String>,
}

/// Seeds this center from the hub. `code_version` is the `$version` of the Moodle code on this card,
/// when known: the hub must run the same release.
pub fn seed<H: Source>(
    site: &mut Site,
    policy: &Policy,
    hub: &mut H,
    code_version: Option<f64>,
) -> Result<Seeded> {
    ensure!(
        site.id() != 1,
        "the hub is not seeded: a seed copies the hub's Moodle to a center"
    );
    let mut seeded = Seeded::default();
    match store::get(site.conn(), SEED_STATE)?.as_deref() {
        Some("done") => {
            seeded.already = true;
            return Ok(seeded);
        }
        Some(_) => seeded.resumed = true,
        None => {
            ensure_empty(site)?;
            let catalog = hub
                .catalog(&CatalogRequest { pulled: 0 })
                .context("cannot read the hub's catalog")?;
            start(site, catalog.log_end, catalog.held)?;
        }
    }
    seeded.cursor = store::get_u64(site.conn(), agent::HUB_CURSOR)?;
    seeded.copied = copy_per_site_rows(site, policy, hub, code_version)?;
    let opts = verify::Options {
        repair: true,
        ..verify::Options::default()
    };
    loop {
        seeded.passes += 1;
        let report =
            verify::verify(site, policy, hub, &opts).context("cannot copy the hub's rows")?;
        seeded.repaired += report.repaired();
        seeded.tables_only_at_hub = report.tables_only_at_hub.clone();
        pull_all(site, policy, hub)?;
        if report.repaired_all() {
            break;
        }
        if seeded.passes >= PASSES {
            bail!(
                "rows could still not be copied after {PASSES} passes; run the seed again:\n{report}"
            );
        }
    }
    finish(site)?;
    Ok(seeded)
}

/// Refuses a database that holds any Moodle row: a seed must never overwrite a center's own work.
fn ensure_empty(site: &mut Site) -> Result<()> {
    let target = site.target().clone();
    let tables: Vec<String> = site
        .conn()
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES
             WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME LIKE ?",
            (&target.database, format!("{}%", target.prefix)),
        )
        .context("cannot list Moodle's tables")?;
    ensure!(
        !tables.is_empty(),
        "database {} has no Moodle tables: create them first (`appliance sync schema-sql`)",
        target.database
    );
    for table in tables {
        let any: Option<u8> = site
            .conn()
            .query_first(format!(
                "SELECT 1 FROM {}.{} LIMIT 1",
                quote(&target.database),
                quote(&table)
            ))
            .with_context(|| format!("cannot read {table}"))?;
        if any.is_some() {
            bail!(
                "{table} already holds rows: a seed copies the hub's Moodle into an empty database \
                 only, and never over a center's own"
            );
        }
    }
    Ok(())
}

/// Points the cursor and this site's change numbers where the hub is, and marks the seed started.
fn start(site: &mut Site, log_end: u64, held: u64) -> Result<()> {
    let mut tx = site
        .conn()
        .start_transaction(mysql::TxOpts::default())
        .context("cannot start a transaction")?;
    store::lock_log(&mut tx)?;
    store::set(&mut tx, agent::HUB_CURSOR, &log_end.to_string())?;
    store::set(&mut tx, agent::PUSHED, &held.to_string())?;
    store::set(&mut tx, record::NEXT_SEQ, &(held + 1).to_string())?;
    store::set(&mut tx, SEED_STATE, "started")?;
    tx.commit().context("cannot record the start of the seed")
}

/// Copies the `[seed]` tables and the site-local rows; returns the rows written.
fn copy_per_site_rows<H: Source>(
    site: &mut Site,
    policy: &Policy,
    hub: &mut H,
    code_version: Option<f64>,
) -> Result<u64> {
    let tables: Vec<String> = policy
        .rules()
        .tables
        .keys()
        .filter(|t| copied_rows(policy, t).is_some())
        .cloned()
        .collect();
    let mut copied = 0;
    for table in tables {
        let mut after = i64::MIN;
        loop {
            let reply = hub
                .copy(&CopyRequest {
                    table: table.clone(),
                    after,
                    max: COPY_ROWS,
                })
                .with_context(|| format!("cannot copy {table} from the hub"))?;
            if table == "config" {
                check_release(&reply.rows, code_version)?;
            }
            copied += write_rows(site, &table, &reply.rows)?;
            match reply.rows.last().and_then(id_of) {
                Some(id) if reply.rows.len() == COPY_ROWS => after = id,
                _ => break,
            }
        }
    }
    Ok(copied)
}

/// A card whose Moodle code is another release than the hub's would run the hub's database with the
/// wrong code: refused before anything is written.
fn check_release(rows: &[Row], code_version: Option<f64>) -> Result<()> {
    let Some(ours) = code_version else {
        return Ok(());
    };
    let theirs = rows
        .iter()
        .find(|r| matches!(r.get("name"), Some(Value::Bytes(n)) if n == b"version"))
        .and_then(|r| match r.get("value") {
            Some(Value::Bytes(v)) => std::str::from_utf8(v).ok()?.trim().parse::<f64>().ok(),
            _ => None,
        });
    match theirs {
        Some(theirs) if (theirs - ours).abs() < 0.005 => Ok(()),
        Some(theirs) => bail!(
            "the hub runs Moodle version {theirs}, this card carries {ours}: build the card with the \
             hub's release (image-builder build --moodle)"
        ),
        None => Ok(()),
    }
}

/// Writes copied rows as they are (skip_replication, as every write of the engine): they are the
/// hub's, not changes made here.
fn write_rows(site: &mut Site, table: &str, rows: &[Row]) -> Result<u64> {
    let target = site.target().clone();
    let ours = columns_of(site.conn(), &target, table)?;
    for row in rows {
        let (names, values): (Vec<String>, Vec<mysql::Value>) = row
            .iter()
            .filter(|(c, _)| ours.contains(c))
            .map(|(c, v)| (quote(c), to_sql(v)))
            .unzip();
        site.conn()
            .exec_drop(
                format!(
                    "REPLACE INTO {} ({}) VALUES ({})",
                    target.table(table),
                    names.join(", "),
                    vec!["?"; names.len()].join(", ")
                ),
                values,
            )
            .with_context(|| format!("cannot write a row of {table}"))?;
    }
    Ok(rows.len() as u64)
}

/// Starts a seed from a bundle, or goes on with one: `None` when this center was seeded before.
pub fn begin_from_bundle(site: &mut Site, log_end: u64, held: u64) -> Result<Option<()>> {
    match store::get(site.conn(), SEED_STATE)?.as_deref() {
        Some("done") => Ok(None),
        Some(_) => Ok(Some(())),
        None => {
            ensure_empty(site)?;
            start(site, log_end, held)?;
            Ok(Some(()))
        }
    }
}

/// Writes one run of the hub's rows from a seed bundle; returns the rows written. Columns or tables
/// this card's Moodle lacks are left out (plugins the hub has and the card does not).
pub fn write_copied(site: &mut Site, copied: &Copied, code_version: Option<f64>) -> Result<u64> {
    let target = site.target().clone();
    let ours = columns_of(site.conn(), &target, &copied.table)?;
    if ours.is_empty() {
        return Ok(0);
    }
    if copied.per_site {
        let rows: Vec<Row> = copied.rows.iter().map(|r| r.values.clone()).collect();
        if copied.table == "config" {
            check_release(&rows, code_version)?;
        }
        return write_rows(site, &copied.table, &rows);
    }
    let columns: Vec<String> = copied
        .columns
        .iter()
        .filter(|c| ours.contains(c))
        .cloned()
        .collect();
    verify::copy_rows(site, &copied.table, &columns, &copied.rows)?;
    Ok(copied.rows.len() as u64)
}

/// Marks the seed done: sync may start.
pub fn finish(site: &mut Site) -> Result<()> {
    store::set(site.conn(), SEED_STATE, "done")
}

/// Applies the hub's log up to its end.
fn pull_all(site: &mut Site, policy: &Policy, hub: &mut dyn Link) -> Result<()> {
    while agent::pull_once(site, policy, hub, 500)?.more {}
    Ok(())
}

/// `$version` from a Moodle code tree's version.php, if it has one.
pub fn code_version(dirroot: &std::path::Path) -> Result<Option<f64>> {
    let file = dirroot.join("version.php");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let version = text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("$version")?.trim_start();
        let value = rest.strip_prefix('=')?.split(';').next()?.trim();
        value.parse::<f64>().ok()
    });
    version
        .map(Some)
        .with_context(|| format!("{}: no `$version = ...;` line", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, value: &str) -> Row {
        Row::from([
            ("name".to_owned(), Value::Bytes(name.into())),
            ("value".to_owned(), Value::Bytes(value.into())),
        ])
    }

    #[test]
    fn the_hubs_release_must_be_the_cards() {
        let rows = [config("release", "4.5"), config("version", "2024100700")];
        assert!(check_release(&rows, Some(2024100700.00)).is_ok());
        assert!(check_release(&rows, None).is_ok());
        let e = check_release(&rows, Some(2024100705.01)).unwrap_err();
        assert!(format!("{e}").contains("2024100700"), "{e}");
    }

    #[test]
    fn the_code_version_comes_from_version_php() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(code_version(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join("version.php"),
            "<?php\n$version  = 2024100700.00;              // YYYYMMDD\n$release = '4.5';\n",
        )
        .unwrap();
        assert_eq!(code_version(dir.path()).unwrap(), Some(2024100700.0));
        std::fs::write(dir.path().join("version.php"), "<?php\n$release = '4.5';\n").unwrap();
        assert!(code_version(dir.path()).is_err());
    }
}
