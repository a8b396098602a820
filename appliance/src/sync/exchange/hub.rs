//! The hub's side of sync, beside the central Moodle: accepts each center's changes that its rules allow,
//! applies them centrally, and relays them through its log to the other centers.
//!
//! A change the rules do not allow (a table only the hub writes, or a protected row such as a site
//! administrator's account) is refused, recorded in `kituo_sync.rejected` for the report, and answered
//! with a restoring change: the hub's own state of that row, stamped by the hub's clock after the
//! refused change and appended to the hub's log like a hub edit. The offending center's merge takes it
//! (its stamp is newer), so the center's copy returns to the hub's; the other centers receive it too and
//! rewrite what they already hold. A row the center deleted comes back as an insert stamped after the
//! delete: the one kind of insert that lifts a tombstone (see `apply`). The hub writes the row clock
//! those merges produce into its own `clock`, so later merges decide alike everywhere.
//!
//! Protected rows ([protect] in the rules): the site administrators' accounts, linked OAuth 2 logins
//! of administrators (a way in without the password) and role assignments at the system context (a
//! site-wide role). Everything else a center sends to a two-way table is accepted as the center's work.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;
use serde::{Deserialize, Serialize};

use crate::sync::engine::change::{Change, Op, Row, Value};
use crate::sync::engine::clock::Hlc;
use crate::sync::engine::merge::winning_columns;
use crate::sync::engine::policy::{Direction, Policy};
use crate::sync::engine::record::HLC_SEEN;
use crate::sync::engine::record::{HLC, NEXT_SEQ};
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::{read_row, Target, ID};
use crate::sync::engine::store;
use crate::sync::engine::store::{read_clock, write_clock};
use crate::sync::exchange::notify;
use crate::sync::schema::rules::Protection;

/// Moodle's context level of the whole site.
const CONTEXT_SYSTEM: i64 = 10;

/// What the hub tells a center after a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The center's changes are applied (or refused) up to this sequence number: resend from after it.
    pub acked: u64,
    /// How many of this push the rules refused (a resent change is refused once), where the hub
    /// applies a push before answering; a hub that stores it first (`inbox`) answers 0, and the center
    /// learns of refusals from the restoring changes it pulls.
    pub rejected: u64,
    /// Why the hub cannot apply this center's oldest stored batch, if it cannot: the center's work
    /// is held until it can.
    #[serde(default)]
    pub stuck: Option<String>,
}

/// A page of the hub's log for one center.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub changes: Vec<Change>,
    /// The log position this page ends at: the center's next `after`.
    pub last: u64,
    /// More changes wait after this page.
    pub more: bool,
}

/// Whether a center may send changes to a table that syncs `direction`.
pub fn center_may_write(direction: Direction) -> bool {
    matches!(direction, Direction::Both | Direction::CentersToHub)
}

/// Whether the hub hands a change to `table` to centers.
pub fn relayed(direction: Direction) -> bool {
    matches!(direction, Direction::Both | Direction::HubToCenters)
}

/// Applies a center's batch. Changes its rules do not allow are refused, recorded and answered with
/// the hub's version of the row, never applied: a stolen or misconfigured card must not rewrite the
/// university's configuration or its administrators' accounts.
pub fn accept(
    site: &mut Site,
    policy: &Policy,
    center: u32,
    changes: &[Change],
) -> Result<Receipt> {
    check_origin(center, changes)?;
    let top = changes.iter().map(|c| c.seq).max().unwrap_or(0);
    let hub = site.id();
    let target = site.target().clone();
    let mut guard = Guard::default();
    let mut rejected = 0;
    site.apply_vetted(
        policy,
        changes,
        |tx, change| refusal(tx, policy, &target, &mut guard, change),
        |tx, applied, refused| {
            store::append_all(tx, applied)?;
            notify::tell(tx, policy, &target, hub)?;
            for (change, reason) in refused {
                reject(tx, change, reason)?;
                restore(tx, policy, &target, hub, change)?;
            }
            rejected = refused.len() as u64;
            store::set_applied(tx, center, top)
        },
    )?;
    Ok(Receipt {
        acked: store::applied(site.conn(), center)?,
        rejected,
        stuck: None,
    })
}

/// A center sends only its own changes: a card must not speak for another site.
pub fn check_origin(center: u32, changes: &[Change]) -> Result<()> {
    match changes.iter().find(|c| c.origin != center) {
        Some(c) => bail!(
            "center {center} sent a change made by site {} (#{}); refused",
            c.origin,
            c.seq
        ),
        None => Ok(()),
    }
}

/// What the hub knows of its own protected rows, read once per batch.
#[derive(Default)]
struct Guard {
    admins: Option<BTreeSet<i64>>,
    system_context: Option<i64>,
    tables: BTreeMap<String, bool>,
}

impl Guard {
    /// The ids in the hub's config `siteadmins`.
    fn admins(&mut self, tx: &mut Transaction<'_>, target: &Target) -> Result<&BTreeSet<i64>> {
        if self.admins.is_none() {
            self.admins = Some(site_admins(tx, target)?);
        }
        Ok(self.admins.get_or_insert_with(BTreeSet::new))
    }

    /// The system context's id: Moodle creates it first, so 1 where the table has no row yet.
    fn system_context(&mut self, tx: &mut Transaction<'_>, target: &Target) -> Result<i64> {
        if let Some(id) = self.system_context {
            return Ok(id);
        }
        let id: Option<i64> = tx
            .exec_first(
                format!(
                    "SELECT id FROM {} WHERE contextlevel = ? ORDER BY id LIMIT 1",
                    target.table("context")
                ),
                (CONTEXT_SYSTEM,),
            )
            .context("cannot read the hub's system context")?;
        let id = id.unwrap_or(1);
        self.system_context = Some(id);
        Ok(id)
    }

    fn has_table(
        &mut self,
        tx: &mut Transaction<'_>,
        target: &Target,
        table: &str,
    ) -> Result<bool> {
        if let Some(has) = self.tables.get(table) {
            return Ok(*has);
        }
        let has = has_table(tx, target, table)?;
        self.tables.insert(table.to_owned(), has);
        Ok(has)
    }
}

fn has_table(tx: &mut Transaction<'_>, target: &Target, table: &str) -> Result<bool> {
    let n: Option<u64> = tx
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&target.database, format!("{}{table}", target.prefix)),
        )
        .context("cannot look up a table")?;
    Ok(n.unwrap_or(0) > 0)
}

/// Why the hub refuses `change`, if it does.
fn refusal(
    tx: &mut Transaction<'_>,
    policy: &Policy,
    target: &Target,
    guard: &mut Guard,
    change: &Change,
) -> Result<Option<String>> {
    let table = change.table.as_str();
    let direction = policy.direction(table);
    if !center_may_write(direction) {
        return Ok(Some(format!(
            "the rules do not let a center change {table} (it syncs {direction})"
        )));
    }
    let Some(protection) = policy.protection(table) else {
        return Ok(None);
    };
    if !guard.has_table(tx, target, table)? {
        return Ok(None);
    }
    let id = resolve(tx, table, change.id)?;
    let reason = match protection {
        Protection::SiteAdmins => guard
            .admins(tx, target)?
            .contains(&id)
            .then(|| format!("{table} {id} is a site administrator: only the hub may change it")),
        Protection::SiteAdminsUserid => {
            let current = read_row(tx, target, table, id)?;
            let admins = guard.admins(tx, target)?;
            ids_in(change, current.as_ref(), "userid")
                .into_iter()
                .find(|user| admins.contains(user))
                .map(|user| {
                    format!(
                        "{table} {id} belongs to site administrator {user}: only the hub may change it"
                    )
                })
        }
        Protection::SystemContext => {
            let current = read_row(tx, target, table, id)?;
            let system = guard.system_context(tx, target)?;
            ids_in(change, current.as_ref(), "contextid")
                .contains(&system)
                .then(|| {
                    format!("{table} {id} is at the system context: only the hub may change it")
                })
        }
    };
    Ok(reason)
}

/// The integer values `column` has in the change and in the hub's current row: moving a row into a
/// protected state and out of it are both changes to a protected row.
fn ids_in(change: &Change, current: Option<&Row>, column: &str) -> Vec<i64> {
    let incoming = match &change.op {
        Op::Insert(row) | Op::Update(row) => row.get(column),
        Op::Delete => None,
    };
    incoming
        .into_iter()
        .chain(current.and_then(|row| row.get(column)))
        .filter_map(|v| match v {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        })
        .collect()
}

/// The id a change's row has at the hub, after unique-key merges.
fn resolve(tx: &mut Transaction<'_>, table: &str, id: i64) -> Result<i64> {
    let winner: Option<i64> = tx
        .exec_first(
            "SELECT winner FROM kituo_sync.alias WHERE tbl = ? AND loser = ?",
            (table, id),
        )
        .context("cannot read aliases")?;
    Ok(winner.unwrap_or(id))
}

fn reject(tx: &mut impl Queryable, change: &Change, reason: &str) -> Result<()> {
    tx.exec_drop(
        "INSERT INTO kituo_sync.rejected (origin, seq, tbl, row_id, reason) VALUES (?, ?, ?, ?, ?)",
        (change.origin, change.seq, &change.table, change.id, reason),
    )
    .context("cannot record a refused change")
}

/// Sends the centers the hub's state of the row a refused change touched: the hub's values of the
/// columns it updated, the whole row if it deleted the row (or inserted one under an id the hub
/// holds), a delete if it inserted a row the hub does not have. Rows the hub does not relay (per-site
/// tables, logs), rows each site keeps for itself and tables the hub lacks are left alone: the hub's
/// state is not theirs to impose.
fn restore(
    tx: &mut Transaction<'_>,
    policy: &Policy,
    target: &Target,
    hub: u32,
    refused: &Change,
) -> Result<()> {
    let table = refused.table.as_str();
    let direction = policy.direction(table);
    if !relayed(direction) || !has_table(tx, target, table)? {
        return Ok(());
    }
    let id = resolve(tx, table, refused.id)?;
    let current = read_row(tx, target, table, id)?;
    if current
        .as_ref()
        .is_some_and(|row| policy.is_site_local(table, row))
    {
        return Ok(());
    }
    let op = match (&refused.op, current) {
        (Op::Update(cols), Some(row)) => {
            let cols: Row = row
                .into_iter()
                .filter(|(name, _)| name != ID && cols.contains_key(name))
                .collect();
            if cols.is_empty() {
                return Ok(());
            }
            Op::Update(cols)
        }
        (_, Some(row)) => Op::Insert(row),
        (Op::Insert(_), None) => Op::Delete,
        // The hub has no such row to give back.
        (Op::Update(_) | Op::Delete, None) => return Ok(()),
    };
    let change = Change {
        origin: hub,
        seq: next_seq(tx)?,
        hlc: tick_after(tx, refused.hlc)?,
        table: table.to_owned(),
        id,
        op,
    };
    // The hub's own clock says what every center's will once it has merged the restoring change.
    let stamp = change.stamp();
    match &change.op {
        Op::Delete => store::bury(tx, table, id, stamp)?,
        Op::Insert(row) | Op::Update(row) if direction == Direction::Both => {
            let clock = read_clock(tx, table, id)?.unwrap_or_default();
            let (_, next) = winning_columns(&clock, stamp, row, policy.groups(table));
            write_clock(tx, table, id, &next)?;
        }
        Op::Insert(_) | Op::Update(_) => {}
    }
    store::append_all(tx, std::slice::from_ref(&change))?;
    Ok(())
}

/// A stamp of the hub's clock after `seen` and after everything the hub stamped or saw.
pub(super) fn tick_after(tx: &mut Transaction<'_>, seen: u64) -> Result<u64> {
    let last = store::get_u64(tx, HLC)?
        .max(store::get_u64(tx, HLC_SEEN)?)
        .max(seen);
    let stamp = Hlc::resume(last).tick();
    store::set(tx, HLC, &stamp.to_string())?;
    Ok(stamp)
}

/// The hub's next own sequence number, shared with what capture records (under the log lock).
pub(super) fn next_seq(tx: &mut Transaction<'_>) -> Result<u64> {
    let seq = store::get_u64(tx, NEXT_SEQ)?.max(1);
    store::set(tx, NEXT_SEQ, &(seq + 1).to_string())?;
    Ok(seq)
}

/// The changes after log position `after` that `center` has not seen: everything relayed, except its own,
/// up to `max` changes or about `max_bytes` of logged data (at least one change), whichever comes first.
pub fn page(
    site: &mut Site,
    policy: &Policy,
    center: u32,
    after: u64,
    max: usize,
    max_bytes: usize,
) -> Result<Page> {
    let rows: Vec<(u64, Vec<u8>)> = site
        .conn()
        .exec(
            "SELECT lseq, data FROM kituo_sync.log WHERE lseq > ? AND origin <> ? ORDER BY lseq LIMIT ?",
            (after, center, max as u64 + 1),
        )
        .context("cannot read the hub's log")?;
    let taken = store::fitting(rows.iter().take(max).map(|(_, data)| data.len()), max_bytes);
    let mut last = after;
    let mut changes = Vec::new();
    for (lseq, data) in &rows[..taken] {
        last = *lseq;
        let change = store::decode_logged(data)?;
        if relayed(policy.direction(&change.table)) {
            changes.push(change);
        }
    }
    Ok(Page {
        changes,
        last,
        more: rows.len() > taken,
    })
}

/// Records that `center` has everything up to log position `pulled` (its next pull starts after it).
pub fn note_pulled(site: &mut Site, center: u32, pulled: u64) -> Result<()> {
    site.conn()
        .exec_drop(
            "UPDATE kituo_sync.centers SET pulled = GREATEST(pulled, ?) WHERE site = ?",
            (pulled, center),
        )
        .context("cannot record a center's position")
}

/// Drops the log rows every registered center has pulled; returns how many. A center never seen yet
/// holds everything back.
pub fn prune(site: &mut Site) -> Result<u64> {
    let floor: Option<Option<u64>> = site
        .conn()
        .query_first("SELECT MIN(pulled) FROM kituo_sync.centers")
        .context("cannot read the centers' positions")?;
    match floor.flatten() {
        Some(upto) if upto > 0 => store::prune_log(site.conn(), "lseq <= ?", (upto,)),
        _ => Ok(0),
    }
}

/// One refused change, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub seq: u64,
    pub table: String,
    pub id: i64,
    pub reason: String,
    /// When the hub refused it, in Unix seconds.
    pub at: u64,
}

/// A center's refused changes: how many, and the latest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejections {
    pub center: u32,
    pub count: u64,
    /// Newest first.
    pub latest: Vec<Rejection>,
}

/// The refused changes of every center that had any, with up to `latest` of the newest each: what the
/// hub's status page shows.
pub fn rejections(conn: &mut impl Queryable, latest: usize) -> Result<Vec<Rejections>> {
    let counts: Vec<(u32, u64)> = conn
        .query("SELECT origin, COUNT(*) FROM kituo_sync.rejected GROUP BY origin ORDER BY origin")
        .context("cannot count refused changes")?;
    let mut out = Vec::with_capacity(counts.len());
    for (center, count) in counts {
        let rows: Vec<(u64, String, i64, String, u64)> = conn
            .exec(
                "SELECT seq, tbl, row_id, reason, UNIX_TIMESTAMP(at) FROM kituo_sync.rejected
                 WHERE origin = ? ORDER BY id DESC LIMIT ?",
                (center, latest as u64),
            )
            .with_context(|| format!("cannot read the refused changes of center {center}"))?;
        let latest = rows
            .into_iter()
            .map(|(seq, table, id, reason, at)| Rejection {
                seq,
                table,
                id,
                reason,
                at,
            })
            .collect();
        out.push(Rejections {
            center,
            count,
            latest,
        });
    }
    Ok(out)
}

/// The ids in the hub's config `siteadmins`.
pub(super) fn site_admins(tx: &mut Transaction<'_>, target: &Target) -> Result<BTreeSet<i64>> {
    let value: Option<String> = tx
        .query_first(format!(
            "SELECT value FROM {} WHERE name = 'siteadmins'",
            target.table("config")
        ))
        .context("cannot read the hub's siteadmins")?;
    Ok(value
        .unwrap_or_default()
        .split(',')
        .filter_map(|id| id.trim().parse().ok())
        .collect())
}

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
