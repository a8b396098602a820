//! The report: what differs, by table and kind, and what repair did.

use std::fmt;

use super::chunk::pair_sums;
use super::chunk::Found;
use super::protocol::Sum;
use crate::sync::engine::policy::Direction;

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
    pub(super) fn label(self) -> &'static str {
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
    pub(super) fn add(&mut self, other: Repair) {
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

    pub(super) fn count(&mut self, ours: &[Sum], theirs: &[Sum]) {
        self.rows_here += ours.iter().map(|s| s.rows).sum::<u64>();
        self.rows_at_hub += theirs.iter().map(|s| s.rows).sum::<u64>();
        self.chunks += pair_sums(ours, theirs).len() as u64;
    }

    pub(super) fn note(&mut self, found: &[Found], max_listed: usize) {
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
pub(super) const SHOWN: usize = 12;

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
pub(super) fn write_table(
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

pub(super) fn repair_summary(r: &Repair) -> String {
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

pub(super) fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub(super) fn list(f: &mut fmt::Formatter<'_>, what: &str, names: &[String]) -> fmt::Result {
    if names.is_empty() {
        return Ok(());
    }
    writeln!(f, "  {what}: {}", names.join(", "))
}

pub(super) fn none_or(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
