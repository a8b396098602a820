//! The hub tells the people concerned of every name clash, in Moodle's way: a notification (the bell
//! in Moodle's header) to the renamed user, if a user was renamed, and to every site administrator.
//!
//! Only the hub writes them: every center's rows reach it, so it settles every clash, and the
//! notifications it writes travel to the centers as its own changes, once (each site settling the
//! clash and notifying by itself would tell everyone once per site). They are written in the
//! transaction that applied the clashing batch, like the hub's restoring changes.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;

use crate::sync::engine::change::{Change, Op, Row};
use crate::sync::engine::clash::{self, Clash};
use crate::sync::engine::merge::RowClock;
use crate::sync::engine::policy::{Direction, Policy};
use crate::sync::engine::sql::{read_row, Target};
use crate::sync::engine::store;
use crate::sync::exchange::hub::{next_seq, site_admins, tick_after};

/// Moodle's no-reply user (`core_user::NOREPLY_USER`): notifications from the system come from it.
const NOREPLY_USER: i64 = -10;

/// Notifies of every clash not yet told; returns how many notifications it wrote.
pub fn tell(tx: &mut Transaction<'_>, policy: &Policy, target: &Target, hub: u32) -> Result<u64> {
    let untold = clash::untold(tx)?;
    if untold.is_empty() {
        return Ok(0);
    }
    let admins = site_admins(tx, target)?;
    let mut written = 0;
    for (id, clash) in untold {
        let mut to: Vec<(i64, String, String)> = admins
            .iter()
            .map(|admin| {
                let (subject, text) = for_admins(&clash);
                (*admin, subject, text)
            })
            .collect();
        if clash.table == "user" && !admins.contains(&clash.renamed) {
            let (subject, text) = for_the_renamed(&clash);
            to.push((clash.renamed, subject, text));
        }
        for (user, subject, text) in to {
            notify(tx, policy, target, hub, user, &subject, &text)?;
            written += 1;
        }
        clash::mark_told(tx, id)?;
    }
    Ok(written)
}

fn for_the_renamed(clash: &Clash) -> (String, String) {
    (
        format!("Your login name is now {}", clash.new),
        format!(
            "Two accounts were made with the login name '{}' at two sites of the university while \
             they could not reach each other. Both accounts are kept: the one made first keeps \
             '{}', and yours is now '{}'. Your password has not changed.",
            clash.old, clash.old, clash.new
        ),
    )
}

fn for_admins(clash: &Clash) -> (String, String) {
    (
        format!("Sync kept two {} rows named '{}'", clash.table, clash.old),
        format!(
            "Two {} rows were given the {} '{}' at two sites while they could not reach each other. \
             Both are kept: row {} keeps the name, and row {} (made at site {}) is now '{}' at every \
             site.",
            clash.table, clash.column, clash.old, clash.kept, clash.renamed, clash.site, clash.new
        ),
    )
}

/// Writes one notification and its popup row, and logs both as the hub's own changes.
fn notify(
    tx: &mut Transaction<'_>,
    policy: &Policy,
    target: &Target,
    hub: u32,
    user: i64,
    subject: &str,
    text: &str,
) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    tx.exec_drop(
        format!(
            "INSERT INTO {} (useridfrom, useridto, subject, fullmessage, fullmessageformat,
                 fullmessagehtml, smallmessage, component, eventtype, timecreated)
             VALUES (?, ?, ?, ?, 2, ?, ?, 'moodle', 'notices', ?)",
            target.table("notifications")
        ),
        (NOREPLY_USER, user, subject, text, html(text), subject, now),
    )
    .context("cannot write a notification")?;
    let notification = last_id(tx)?;
    tx.exec_drop(
        format!(
            "INSERT INTO {} (notificationid) VALUES (?)",
            target.table("message_popup_notifications")
        ),
        (notification,),
    )
    .context("cannot write a popup notification")?;
    let popup = last_id(tx)?;
    for (table, id) in [
        ("notifications", notification),
        ("message_popup_notifications", popup),
    ] {
        let row: Row = read_row(tx, target, table, id)?.context("a notification vanished")?;
        log_insert(tx, policy, hub, table, id, row)?;
    }
    Ok(())
}

fn log_insert(
    tx: &mut Transaction<'_>,
    policy: &Policy,
    hub: u32,
    table: &str,
    id: i64,
    row: Row,
) -> Result<()> {
    let change = Change {
        origin: hub,
        seq: next_seq(tx)?,
        hlc: tick_after(tx, 0)?,
        table: table.to_owned(),
        id,
        op: Op::Insert(row),
    };
    if policy.direction(table) == Direction::Both {
        store::write_clock(tx, table, id, &RowClock::born(change.stamp()))?;
    }
    store::append_all(tx, std::slice::from_ref(&change))
}

fn html(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<p>{escaped}</p>")
}

fn last_id(tx: &mut Transaction<'_>) -> Result<i64> {
    let id: Option<i64> = tx
        .query_first("SELECT LAST_INSERT_ID()")
        .context("cannot read an inserted id")?;
    id.context("no id was inserted")
}
