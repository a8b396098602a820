//! Moodle's events as `logstore_standard_log` rows.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;

use crate::workload::moodle::{ip, Scene};
use crate::workload::Ctx;

/// `\core\event\base::LEVEL_*`: an event's educational level.
pub(super) const LEVEL_OTHER: i64 = 0;
pub(super) const LEVEL_TEACHING: i64 = 1;
pub(super) const LEVEL_PARTICIPATING: i64 = 2;

/// One `logstore_standard_log` row as `\logstore_standard\log\store` writes an event.
pub(super) struct Event<'a> {
    pub(super) name: &'a str,
    pub(super) component: &'a str,
    pub(super) action: &'a str,
    pub(super) target: &'a str,
    pub(super) table: Option<&'a str>,
    pub(super) object: Option<i64>,
    pub(super) crud: &'a str,
    pub(super) level: i64,
    pub(super) ctx: Ctx,
    pub(super) user: i64,
    pub(super) related: Option<i64>,
    pub(super) other: Option<serde_json::Value>,
}

impl<'a> Event<'a> {
    pub(super) fn viewed(name: &'a str, component: &'a str, target: &'a str) -> Event<'a> {
        Event {
            name,
            component,
            action: "viewed",
            target,
            table: None,
            object: None,
            crud: "r",
            level: LEVEL_PARTICIPATING,
            ctx: Ctx {
                id: 0,
                level: 0,
                instance: 0,
            },
            user: 0,
            related: None,
            other: None,
        }
    }

    pub(super) fn on(self, table: &'a str, object: i64, ctx: Ctx) -> Event<'a> {
        Event {
            table: Some(table),
            object: Some(object),
            ctx,
            ..self
        }
    }

    pub(super) fn object(self, table: &'a str, object: i64) -> Event<'a> {
        Event {
            table: Some(table),
            object: Some(object),
            ..self
        }
    }

    /// A `\mod_forum\event\*` event in the forum's context.
    pub(super) fn forum(
        s: &Scene<'_>,
        user: i64,
        name: &'a str,
        action: &'a str,
        target: &'a str,
        crud: &'a str,
    ) -> Event<'a> {
        Event {
            name,
            component: "mod_forum",
            action,
            target,
            table: None,
            object: None,
            crud,
            level: LEVEL_PARTICIPATING,
            ctx: s.course.forum_context,
            user,
            related: None,
            other: None,
        }
    }
}

pub(super) fn log(tx: &mut Transaction<'_>, s: &Scene<'_>, e: Event<'_>) -> Result<()> {
    let course = if e.ctx.level == 10 { 0 } else { s.course.id };
    // logstore_standard's JSON format (its default): `other` is always written, null as "null".
    let other = e
        .other
        .as_ref()
        .map_or_else(|| "null".to_owned(), |o| o.to_string());
    tx.exec_drop(
        "INSERT INTO mdl_logstore_standard_log (eventname, component, action, target, objecttable, objectid, crud,
             edulevel, contextid, contextlevel, contextinstanceid, userid, courseid, relateduserid, anonymous,
             other, timecreated, origin, ip, realuserid)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 'web', ?, NULL)",
        values![
            e.name,
            e.component,
            e.action,
            e.target,
            e.table,
            e.object,
            e.crud,
            e.level,
            e.ctx.id,
            e.ctx.level,
            e.ctx.instance,
            e.user,
            course,
            e.related,
            other,
            s.now,
            ip(s, e.user),
        ],
    )
    .with_context(|| format!("cannot log {}", e.name))
}
