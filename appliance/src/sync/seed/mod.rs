//! Seeding: a center joining the university takes its Moodle database from the hub instead of
//! installing a fresh one (whose admin account, configuration and course ids would clash with every
//! other site's). Over the link with `appliance sync seed`, or from a stick or DVD that the hub wrote
//! with `appliance sync export --for N --seed` and the center reads with `appliance sync import`.
//!
//! The Moodle tables must exist and be empty (first boot creates them from the card's own XMLDB with
//! `appliance sync schema-sql`). A seed then:
//! 1. in one transaction, points this center's hub cursor at the hub's log end as the hub read it, and
//!    numbers its own changes after the ones the hub holds from this site (a new card for a site whose
//!    old card synced must not have its changes taken for replays);
//! 2. copies what never syncs but Moodle needs to run: the `[seed]` tables (its cron schedule, its own
//!    MNet host) and the `[site_local]` rows (the installed versions), after checking that the hub runs
//!    the release this card carries;
//! 3. copies every relayed row with its row clock, in pages of rows that run across the tables in name
//!    order (there is nothing to compare at an empty center), then pulls what the hub logged meanwhile.
//!
//! One pass that copied every row it found is enough, however busy the hub: a row the copy missed or
//! read early was changed after the cursor, so its change is in the log and is pulled; a change the
//! copy already holds merges as a no-op (the copied row clocks already carry its stamps). So nothing is
//! lost or doubled whatever the hub does during the seed. A cut link, a killed process, a power cut or
//! a half-copied stick resumes: the state `seed` is `started` until the copy is whole (sync waits for
//! `done`), a seed over the link goes on after the last page it wrote (`seed.at`), and copying a page
//! again writes the same rows.

mod copy;
mod write;

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;

pub use copy::{
    read_all, serve_copy, serve_page, Copied, CopyReply, CopyRequest, PageReply, PageRequest,
    COPY_ROWS, PAGE_ROWS,
};
pub use write::write_copied;

use crate::sync::engine::policy::Policy;
use crate::sync::engine::record;
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::quote;
use crate::sync::engine::store;
use crate::sync::exchange::agent::{self, Link};
use crate::sync::verify::{self, CatalogRequest, Reference};

/// The sync state that says how far the seed got: `started`, then `done`.
pub const SEED_STATE: &str = "seed";
/// The state that says the last page a seed over the link wrote: its table, a tab, its last id.
const SEED_AT: &str = "seed.at";

/// The hub as the seed sees it: its catalog, the pull, the copy of what never syncs and the pages of
/// what is relayed.
pub trait Source: Reference + Link {
    fn copy(&mut self, req: &CopyRequest) -> Result<CopyReply>;
    fn page(&mut self, req: &PageRequest) -> Result<PageReply>;
}

/// What a seed over the link did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seeded {
    /// This run went on with a seed an earlier one started.
    pub resumed: bool,
    /// The seed was done before: nothing was asked of the hub.
    pub already: bool,
    /// Rows of `[seed]` tables and site-local rows copied.
    pub copied: u64,
    /// Relayed rows copied.
    pub relayed: u64,
    /// Where pulling from the hub started.
    pub cursor: u64,
    /// The hub's tables this card's Moodle does not have (plugins the hub has and the card lacks).
    pub tables_only_at_hub: Vec<String>,
}

/// Seeds this center from the hub over the link. `code_version` is the `$version` of the Moodle code
/// on this card, when known: the hub must run the same release.
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
    for table in copy::per_site_tables(policy) {
        let mut fetch = |req: &CopyRequest| {
            hub.copy(req)
                .with_context(|| format!("cannot copy {} from the hub", req.table))
        };
        copy::copy_pages(&table, &mut fetch, &mut |rows| {
            let run = Copied::PerSite {
                table: table.clone(),
                rows,
            };
            seeded.copied += write_copied(site, policy, &run, code_version)?;
            Ok(())
        })?;
    }
    copy_relayed(site, policy, hub, &mut seeded)?;
    while agent::pull_once(site, policy, hub, 500)?.more {}
    finish(site)?;
    Ok(seeded)
}

/// Copies every relayed table the hub and this card both have, page by page, from where an earlier
/// run stopped.
fn copy_relayed<H: Source>(
    site: &mut Site,
    policy: &Policy,
    hub: &mut H,
    seeded: &mut Seeded,
) -> Result<()> {
    let theirs = hub
        .catalog(&CatalogRequest {
            pulled: seeded.cursor,
        })
        .context("cannot read the hub's catalog")?
        .tables;
    let target = site.target().clone();
    let ours = verify::tables_at(site.conn(), &target, policy)?;
    seeded.tables_only_at_hub = theirs
        .into_keys()
        .filter(|t| !ours.contains_key(t))
        .collect();
    let mut page = PageRequest {
        skip: seeded.tables_only_at_hub.clone(),
        ..PageRequest::first(PAGE_ROWS)
    };
    // Where an earlier run stopped.
    if let Some(at) = store::get(site.conn(), SEED_AT)? {
        let (table, id) = at.split_once('\t').context("bad seed.at state")?;
        page.after = id
            .parse()
            .with_context(|| format!("bad {SEED_AT} state {at:?}"))?;
        page.table = table.to_owned();
    }
    loop {
        let reply = hub
            .page(&page)
            .with_context(|| format!("cannot copy the hub's rows from {}", page.table))?;
        page.go_past(&reply.runs);
        for run in &reply.runs {
            seeded.relayed += write_copied(site, policy, run, None)?;
        }
        if !reply.runs.is_empty() {
            let at = format!("{}\t{}", page.table, page.after);
            store::set(site.conn(), SEED_AT, &at)?;
        }
        if !reply.more {
            return Ok(());
        }
    }
}

/// Starts a seed from a stick, or goes on with one; false when this center was seeded before.
pub fn begin_from_stick(site: &mut Site, log_end: u64, held: u64) -> Result<bool> {
    match store::get(site.conn(), SEED_STATE)?.as_deref() {
        Some("done") => Ok(false),
        Some(_) => Ok(true),
        None => {
            ensure_empty(site)?;
            start(site, log_end, held)?;
            Ok(true)
        }
    }
}

/// Marks the seed done: sync may start.
pub fn finish(site: &mut Site) -> Result<()> {
    store::set(site.conn(), SEED_STATE, "done")
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
