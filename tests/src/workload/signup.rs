//! Email-based self-registration (`auth_plugin_email::user_signup()` → `user_create_user()`), with a
//! login name drawn from a small pool: two sites the link has not joined yet can give one name to two
//! people, which sync must keep apart ([identities] in the rules).

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;
use serde_json::json;

use super::event::{log, Event, LEVEL_OTHER};
use super::moodle::{last_id, Done, Scene};

/// Login names the signups draw from.
const NAMES: u64 = 8;

pub(super) fn sign_up(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let username = format!("newcomer{:02}", s.draw.pick % NAMES);
    // The signup form refuses a name taken here; another site's may not have arrived yet.
    let taken: Option<i64> = tx
        .exec_first(
            "SELECT id FROM mdl_user WHERE mnethostid = 1 AND username = ?",
            (&username,),
        )
        .context("cannot check the login name")?;
    if taken.is_some() {
        return Ok(Done::skip(0));
    }
    tx.exec_drop(
        "INSERT INTO mdl_user (auth, confirmed, mnethostid, username, password, idnumber, firstname, lastname,
             email, city, country, lang, timezone, timecreated, timemodified, description, descriptionformat)
         VALUES ('email', 1, 1, ?, ?, '', 'New', ?, ?, 'Dodoma', 'TZ', 'en', '99', ?, ?, '', 1)",
        (
            &username,
            format!("$2y$10${:053}", s.draw.aux % 1_000_000),
            format!("Site {}", s.site),
            format!("{username}.s{}@learners.example.org", s.site),
            s.now,
            s.now,
        ),
    )
    .context("cannot create the user")?;
    let user = last_id(tx, "user")?;
    log(
        tx,
        s,
        Event {
            name: "\\core\\event\\user_created",
            component: "core",
            action: "created",
            target: "user",
            table: Some("user"),
            object: Some(user),
            crud: "c",
            level: LEVEL_OTHER,
            ctx: s.course.system,
            user: 0,
            related: Some(user),
            other: Some(json!({ "username": username })),
        },
    )?;
    // Nobody is logged in to sign up: the action has no actor, only the account it made.
    Ok(Done::did(0, user))
}
