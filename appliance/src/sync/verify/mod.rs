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

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};

use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::store;
use crate::sync::exchange::agent;

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

mod check;
mod chunk;
mod protocol;
mod repair;
mod report;
mod serve;
mod sums;
#[cfg(test)]
mod tests;

use check::Checker;
pub use protocol::*;
pub(crate) use repair::copy_rows;
pub use report::*;
pub use serve::*;
pub use sums::row_hash_sql;
pub(crate) use sums::{local_values, tables_at};

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
