//! The statements of each workload action, in the order Moodle 4.5 issues them; each function names
//! the Moodle code it follows ([`forum`] and [`assign`] hold those of the two activities). Reads that
//! only feed a page (capability checks, caches) are left out; statements that would touch no row here
//! (ratings, files and read-tracking of a post, which this workload never creates) are left out too,
//! as they leave nothing in the binlog.
//!
//! [`forum`]: crate::workload::forum
//! [`assign`]: crate::workload::assign

use anyhow::{Context, Result};
use mysql::prelude::{FromRow, Queryable};
use mysql::Transaction;
use serde_json::json;

use crate::workload::event::{log, Event, LEVEL_OTHER};
use crate::workload::{assign, forum, Course, Draw, Kind};

/// Moodle's LASTACCESS_UPDATE_SECS: last-access times are written at most once a minute.
const LASTACCESS_UPDATE_SECS: i64 = 60;
/// A message's `messageformat`: the editor's HTML.
pub(super) const FORMAT_HTML: i64 = 1;
const ER_DUP_ENTRY: u16 = 1062;

/// What one action runs with.
pub(super) struct Scene<'a> {
    pub course: &'a Course,
    pub site: u32,
    /// Moodle's `time()`.
    pub now: i64,
    pub draw: Draw,
    /// The marker a post created by this action carries.
    pub marker: &'a str,
    pub actor: Option<i64>,
    pub subject: Option<i64>,
}

/// What one action did.
#[derive(Debug, Clone, Default)]
pub(super) struct Done {
    pub user: i64,
    pub target: Option<i64>,
    /// It created a post carrying the scene's marker.
    pub created: bool,
    /// Markers of the posts it deleted.
    pub deleted: Vec<String>,
    pub skipped: bool,
}

impl Done {
    pub(super) fn skip(user: i64) -> Done {
        Done {
            user,
            skipped: true,
            ..Done::default()
        }
    }

    pub(super) fn did(user: i64, target: i64) -> Done {
        Done {
            user,
            target: Some(target),
            ..Done::default()
        }
    }
}

pub(super) fn run(tx: &mut Transaction<'_>, s: &Scene<'_>, kind: Kind) -> Result<Done> {
    match kind {
        Kind::LogIn => log_in(tx, s),
        Kind::ViewPage => view(tx, s),
        Kind::StartDiscussion => forum::start_discussion(tx, s),
        Kind::Reply => forum::reply(tx, s),
        Kind::EditPost => forum::edit(tx, s),
        Kind::DeletePost => forum::delete(tx, s),
        Kind::Submit => assign::submit(tx, s),
        Kind::Grade => assign::grade(tx, s),
        Kind::Enrol => enrol(tx, s),
        Kind::SignUp => super::signup::sign_up(tx, s),
    }
}

/// `update_user_login_times()` and the `user_loggedin` event (`complete_user_login()`).
fn log_in(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let user = match s.actor {
        Some(u) => Some(u),
        None => {
            let mut people = enrolled_students(tx, s)?;
            people.extend(&s.course.teachers);
            pick(&people, s.draw.actor)
        }
    };
    let Some(user) = user else {
        return Ok(Done::skip(0));
    };
    let row: Option<(String, i64)> = tx
        .exec_first(
            "SELECT username, firstaccess FROM mdl_user WHERE id = ? AND deleted = 0",
            (user,),
        )
        .context("cannot read the user")?;
    let Some((username, firstaccess)) = row else {
        return Ok(Done::skip(user));
    };
    let ip = ip(s, user);
    if firstaccess == 0 {
        tx.exec_drop(
            "UPDATE mdl_user SET firstaccess = ?, lastlogin = currentlogin, currentlogin = ?, lastaccess = ?,
                 lastip = ? WHERE id = ?",
            (s.now, s.now, s.now, &ip, user),
        )
    } else {
        tx.exec_drop(
            "UPDATE mdl_user SET lastlogin = currentlogin, currentlogin = ?, lastaccess = ?, lastip = ?
             WHERE id = ?",
            (s.now, s.now, &ip, user),
        )
    }
    .context("cannot update login times")?;
    log(
        tx,
        s,
        Event {
            name: "\\core\\event\\user_loggedin",
            component: "core",
            action: "loggedin",
            target: "user",
            table: Some("user"),
            object: Some(user),
            crud: "r",
            level: LEVEL_OTHER,
            ctx: s.course.system,
            user,
            related: None,
            other: Some(json!({ "username": username })),
        },
    )?;
    Ok(Done::did(user, user))
}

/// A page of the course (`require_login()` → `user_accesstime_log()`, then the page's `*_viewed` event).
pub(super) fn view(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let user = match s.actor {
        Some(u) => Some(u),
        None => {
            let mut people = enrolled_students(tx, s)?;
            people.extend(&s.course.teachers);
            pick(&people, s.draw.actor)
        }
    };
    let Some(user) = user else {
        return Ok(Done::skip(0));
    };
    access(tx, s, user)?;
    let c = s.course;
    let discussion = if s.draw.aux % 4 == 2 {
        pick(&forum::discussions(tx, s)?, s.draw.pick)
    } else {
        None
    };
    let (event, target) = match (s.draw.aux % 4, discussion) {
        (1, _) => (
            Event::viewed(
                "\\mod_forum\\event\\course_module_viewed",
                "mod_forum",
                "course_module",
            )
            .on("forum", c.forum, c.forum_context),
            c.forum,
        ),
        (2, Some(d)) => (
            Event::viewed(
                "\\mod_forum\\event\\discussion_viewed",
                "mod_forum",
                "discussion",
            )
            .on("forum_discussions", d, c.forum_context),
            d,
        ),
        (3, _) => (
            Event::viewed(
                "\\mod_assign\\event\\course_module_viewed",
                "mod_assign",
                "course_module",
            )
            .on("assign", c.assign, c.assign_context),
            c.assign,
        ),
        _ => (
            Event {
                ctx: c.context,
                ..Event::viewed("\\core\\event\\course_viewed", "core", "course")
            },
            c.id,
        ),
    };
    log(tx, s, Event { user, ..event })?;
    Ok(Done::did(user, target))
}

/// `enrol_plugin::enrol_user()` of enrol_manual (roles not protected: `role_assign()` with no
/// component), as a teacher does it from the participants page.
pub(super) fn enrol(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let Some(teacher) = s.actor.or_else(|| pick(&s.course.teachers, s.draw.actor)) else {
        return Ok(Done::skip(0));
    };
    let enrolled: Vec<i64> = tx
        .exec(
            "SELECT userid FROM mdl_user_enrolments WHERE enrolid = ? ORDER BY userid",
            (s.course.enrol,),
        )
        .context("cannot list enrolments")?;
    let waiting: Vec<i64> = s
        .course
        .students
        .iter()
        .copied()
        .filter(|u| enrolled.binary_search(u).is_err())
        .collect();
    let user = match s.subject {
        Some(u) if enrolled.binary_search(&u).is_err() => Some(u),
        Some(_) => None,
        None => pick(&waiting, s.draw.pick),
    };
    let Some(user) = user else {
        return Ok(Done::skip(teacher));
    };
    access(tx, s, teacher)?;
    let midnight = s.now - s.now.rem_euclid(86_400);
    tx.exec_drop(
        "INSERT INTO mdl_user_enrolments (status, enrolid, userid, timestart, timeend, modifierid, timecreated,
             timemodified)
         VALUES (0, ?, ?, ?, 0, ?, ?, ?)",
        (s.course.enrol, user, midnight, teacher, s.now, s.now),
    )
    .context("cannot enrol")?;
    let enrolment = last_id(tx, "enrolment")?;
    log(
        tx,
        s,
        Event {
            name: "\\core\\event\\user_enrolment_created",
            component: "core",
            action: "created",
            target: "user_enrolment",
            table: Some("user_enrolments"),
            object: Some(enrolment),
            crud: "c",
            level: LEVEL_OTHER,
            ctx: s.course.context,
            user: teacher,
            related: Some(user),
            other: Some(json!({ "enrol": "manual" })),
        },
    )?;
    let role = s.course.student_role;
    let assigned: Option<i64> = tx
        .exec_first(
            "SELECT id FROM mdl_role_assignments WHERE roleid = ? AND contextid = ? AND userid = ?
             AND component = '' AND itemid = 0",
            (role, s.course.context.id, user),
        )
        .context("cannot read role assignments")?;
    if assigned.is_none() {
        tx.exec_drop(
            "INSERT INTO mdl_role_assignments (roleid, contextid, userid, timemodified, modifierid, component,
                 itemid, sortorder)
             VALUES (?, ?, ?, ?, ?, '', 0, 0)",
            (role, s.course.context.id, user, s.now, teacher),
        )
        .context("cannot assign the role")?;
        let ra = last_id(tx, "role assignment")?;
        log(
            tx,
            s,
            Event {
                name: "\\core\\event\\role_assigned",
                component: "core",
                action: "assigned",
                target: "role",
                table: Some("role"),
                object: Some(role),
                crud: "c",
                level: LEVEL_OTHER,
                ctx: s.course.context,
                user: teacher,
                related: Some(user),
                other: Some(json!({ "id": ra, "component": "", "itemid": 0 })),
            },
        )?;
    }
    Ok(Done::did(teacher, enrolment))
}

/// `user_accesstime_log($courseid)`: the site and course last-access times, at most once a minute.
pub(super) fn access(tx: &mut Transaction<'_>, s: &Scene<'_>, user: i64) -> Result<()> {
    let last: Option<i64> = tx
        .exec_first("SELECT lastaccess FROM mdl_user WHERE id = ?", (user,))
        .context("cannot read the user's last access")?;
    if last.is_some_and(|t| s.now - t > LASTACCESS_UPDATE_SECS) {
        tx.exec_drop(
            "UPDATE mdl_user SET lastip = ?, lastaccess = ? WHERE id = ?",
            (ip(s, user), s.now, user),
        )
        .context("cannot update the user's last access")?;
    }
    let seen: Option<i64> = tx
        .exec_first(
            "SELECT timeaccess FROM mdl_user_lastaccess WHERE userid = ? AND courseid = ?",
            (user, s.course.id),
        )
        .context("cannot read the course last access")?;
    match seen {
        None => {
            let inserted = tx.exec_drop(
                "INSERT INTO mdl_user_lastaccess (userid, courseid, timeaccess) VALUES (?, ?, ?)",
                (user, s.course.id, s.now),
            );
            match inserted {
                // As Moodle: another writer (here sync) inserted it meanwhile; its time stands.
                Err(mysql::Error::MySqlError(e)) if e.code == ER_DUP_ENTRY => Ok(()),
                other => other.context("cannot record the course last access"),
            }
        }
        Some(t) if s.now - t < LASTACCESS_UPDATE_SECS => Ok(()),
        Some(_) => tx
            .exec_drop(
                "UPDATE mdl_user_lastaccess SET timeaccess = ? WHERE userid = ? AND courseid = ?",
                (s.now, user, s.course.id),
            )
            .context("cannot update the course last access"),
    }
}

pub(super) fn last_id(tx: &Transaction<'_>, what: &str) -> Result<i64> {
    let id = tx
        .last_insert_id()
        .with_context(|| format!("no id for the new {what}"))?;
    i64::try_from(id).with_context(|| format!("the new {what}'s id is out of range"))
}

/// Enrolled, active students of the course at this site, in id order.
pub(super) fn enrolled_students(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Vec<i64>> {
    let ids: Vec<i64> = tx
        .exec(
            "SELECT userid FROM mdl_user_enrolments WHERE enrolid = ? AND status = 0 ORDER BY userid",
            (s.course.enrol,),
        )
        .context("cannot list enrolled users")?;
    Ok(ids
        .into_iter()
        .filter(|u| s.course.students.binary_search(u).is_ok())
        .collect())
}

pub(super) fn student(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Option<i64>> {
    match s.actor {
        Some(a) => Ok(Some(a)),
        None => Ok(pick(&enrolled_students(tx, s)?, s.draw.actor)),
    }
}

pub(super) fn pick<T: Copy>(items: &[T], draw: u64) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    items.get((draw % items.len() as u64) as usize).copied()
}

/// Takes the drawn candidate, or the next ones if it vanished (deleted by sync since it was listed),
/// with `sql` (one `?`, the id; it should lock the row) returning the row's fields.
pub(super) fn present<T: FromRow>(
    tx: &mut Transaction<'_>,
    candidates: &[i64],
    draw: u64,
    sql: &str,
) -> Result<Option<(i64, T)>> {
    if candidates.is_empty() {
        return Ok(None);
    }
    let start = (draw % candidates.len() as u64) as usize;
    for i in 0..candidates.len().min(3) {
        let id = candidates[(start + i) % candidates.len()];
        let row: Option<T> = tx.exec_first(sql, (id,)).context("cannot read a row")?;
        if let Some(row) = row {
            return Ok(Some((id, row)));
        }
    }
    Ok(None)
}

/// The address a learner's device has on the center's Wi-Fi.
pub(super) fn ip(s: &Scene<'_>, user: i64) -> String {
    format!(
        "10.{}.{}.{}",
        s.site % 256,
        (user / 250) % 250,
        user % 250 + 1
    )
}
