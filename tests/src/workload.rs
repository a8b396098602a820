//! A seeded generator of what a Moodle site's users do, issued as the SQL Moodle 4.5 issues for each
//! action, for the sync tests, soaks and benchmarks. Nothing here runs on an appliance.
//!
//! The actions and the tables they write (each one's statements are in `workload/`, beside the Moodle
//! function they follow):
//!
//! | action | rows written |
//! |---|---|
//! | log in | `user` (lastlogin, currentlogin, lastaccess, lastip), a `user_loggedin` log row |
//! | view a page (course, forum, discussion, assignment) | `user.lastaccess` and `user_lastaccess` when older than 60 s, a `*_viewed` log row |
//! | start a discussion | `forum_posts`, `forum_discussions`, `forum_discussion_subs`, three log rows |
//! | reply | `forum_posts`, the discussion's `timemodified`/`usermodified`, the subscription, log rows |
//! | edit a post | `forum_posts`, `forum_discussions`, two log rows |
//! | delete a post (a reply without replies) | `forum_posts`, the discussion's last-post fields, a log row |
//! | submit the assignment | `assign_submission`, `assignsubmission_onlinetext`, three log rows |
//! | grade a student | `assign_grades`, `assignfeedback_comments`, `grade_grades` and `grade_grades_history` for the activity and the course total, two log rows |
//! | enrol a student | `user_enrolments`, `role_assignments`, two log rows |
//! | sign up (a login name from a small pool: two sites may give one to two people) | `user`, a log row |
//!
//! Each action is one transaction. Moodle itself autocommits most of these statements one by one and
//! writes its log rows when the request ends; the rows are the same, and a whole transaction is what
//! can simply run again when it loses a deadlock to sync's apply, or a unique key to a row sync inserted
//! meanwhile (as Moodle's user would press the button again).
//!
//! Randomness is drawn before an action looks at the database, a fixed number of draws per action, so
//! one seed gives one sequence of actions whatever the site holds; what an action then picks (which
//! discussion, which post) is read from the site at that moment, so it only refers to rows that exist
//! there, and an action with nothing to act on is skipped, not failed.
//!
//! Every forum post it creates carries a marker, `[post s<site> r<seed> n<seq>]`, in its message, kept
//! through edits; [`Workload::created`] and [`Workload::deleted`] list them so that a test can check
//! that every post created is present exactly once at every site, except those deleted.

/// Query parameters of mixed types.
macro_rules! values {
    ($($v:expr),* $(,)?) => {
        vec![$(mysql::Value::from($v)),*]
    };
}

/// Every two-way table the workload writes: what the tests compare between sites.
pub const TWO_WAY_TABLES: &[&str] = &[
    "user",
    "user_lastaccess",
    "user_enrolments",
    "role_assignments",
    "forum_discussions",
    "forum_posts",
    "forum_discussion_subs",
    "assign_submission",
    "assignsubmission_onlinetext",
    "assign_grades",
    "assignfeedback_comments",
    "grade_grades",
    "grade_grades_history",
];

mod assign;
mod bulk;
mod course;
mod event;
mod forum;
mod moodle;
mod signup;
mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::{Conn, IsolationLevel, TxOpts};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use bulk::{bulk_activity, fill_outbox, Filled, Written};
pub use course::{Course, Ctx};

/// What a user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    LogIn,
    ViewPage,
    StartDiscussion,
    Reply,
    EditPost,
    DeletePost,
    Submit,
    Grade,
    Enrol,
    SignUp,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::LogIn,
        Kind::ViewPage,
        Kind::StartDiscussion,
        Kind::Reply,
        Kind::EditPost,
        Kind::DeletePost,
        Kind::Submit,
        Kind::Grade,
        Kind::Enrol,
        Kind::SignUp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::LogIn => "log in",
            Kind::ViewPage => "view a page",
            Kind::StartDiscussion => "start a discussion",
            Kind::Reply => "reply",
            Kind::EditPost => "edit a post",
            Kind::DeletePost => "delete a post",
            Kind::Submit => "submit",
            Kind::Grade => "grade",
            Kind::Enrol => "enrol",
            Kind::SignUp => "sign up",
        }
    }
}

/// The weights [`Workload::step`] picks actions by, unless told others: a forum-heavy course where most
/// requests are page views.
pub const WEIGHTS: &[(Kind, u32)] = &[
    (Kind::LogIn, 10),
    (Kind::ViewPage, 40),
    (Kind::StartDiscussion, 4),
    (Kind::Reply, 20),
    (Kind::EditPost, 5),
    (Kind::DeletePost, 3),
    (Kind::Submit, 6),
    (Kind::Grade, 8),
    (Kind::Enrol, 2),
    (Kind::SignUp, 3),
];

/// One action as it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: Kind,
    /// Who did it (0 when nobody could).
    pub user: i64,
    /// The row acted on or created: post, discussion, grade, enrolment.
    pub target: Option<i64>,
    /// Nothing to act on at this site (no post to reply to, everyone enrolled): nothing written.
    pub skipped: bool,
}

/// The random numbers of one action, drawn before it reads anything, so that a retry repeats it.
#[derive(Debug, Clone, Copy)]
struct Draw {
    actor: u64,
    pick: u64,
    aux: u64,
    text: u64,
}

const TRIES: u32 = 10;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_DUP_ENTRY: u16 = 1062;

/// Users of one site acting in one course, driven by a seed.
pub struct Workload {
    rng: StdRng,
    seed: u64,
    site: u32,
    course: Course,
    weights: Vec<(Kind, u32)>,
    /// Moodle's `time()`: simulated, so that a seed gives the same rows.
    clock: i64,
    posts: u64,
    created: Vec<String>,
    deleted: Vec<String>,
    /// Posts created or deleted by a transaction whose commit got no answer.
    uncertain: Vec<String>,
    done: BTreeMap<Kind, u64>,
    skipped: BTreeMap<Kind, u64>,
    retries: u64,
}

impl Workload {
    pub fn new(seed: u64, site: u32, course: &Course) -> Workload {
        Workload {
            rng: StdRng::seed_from_u64(seed),
            seed,
            site,
            course: course.clone(),
            weights: WEIGHTS.to_vec(),
            clock: course.installed_at + 60,
            posts: 0,
            created: Vec::new(),
            deleted: Vec::new(),
            uncertain: Vec::new(),
            done: BTreeMap::new(),
            skipped: BTreeMap::new(),
            retries: 0,
        }
    }

    pub fn with_weights(mut self, weights: &[(Kind, u32)]) -> Workload {
        self.weights = weights.to_vec();
        self
    }

    /// Sets Moodle's clock (Unix seconds) for the actions that follow.
    pub fn set_clock(&mut self, unix: i64) {
        self.clock = unix;
    }

    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Moves the clock on by 1-90 s, picks an action by the weights and runs it.
    pub fn step(&mut self, conn: &mut Conn) -> Result<Action> {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        anyhow::ensure!(total > 0, "the workload's weights are all zero");
        let mut roll = self.rng.gen_range(0..total);
        let mut kind = self.weights[0].0;
        for (k, w) in &self.weights {
            if roll < *w {
                kind = *k;
                break;
            }
            roll -= w;
        }
        self.clock += self.rng.gen_range(1..=90);
        self.perform(conn, kind, None, None)
    }

    /// Runs one action at the current clock. `actor` and `subject` choose who acts and, for grading
    /// and enrolling, whom; left `None`, they are drawn.
    pub fn perform(
        &mut self,
        conn: &mut Conn,
        kind: Kind,
        actor: Option<i64>,
        subject: Option<i64>,
    ) -> Result<Action> {
        let draw = Draw {
            actor: self.rng.gen(),
            pick: self.rng.gen(),
            aux: self.rng.gen(),
            text: self.rng.gen(),
        };
        let marker = marker(self.site, self.seed, self.posts + 1);
        let scene = moodle::Scene {
            course: &self.course,
            site: self.site,
            now: self.clock,
            draw,
            marker: &marker,
            actor,
            subject,
        };
        let mut attempt = 0;
        let done = loop {
            let mut pending: Option<moodle::Done> = None;
            let result = (|| {
                let opts =
                    TxOpts::default().set_isolation_level(Some(IsolationLevel::ReadCommitted));
                let mut tx = conn
                    .start_transaction(opts)
                    .context("cannot start a transaction")?;
                let done = moodle::run(&mut tx, &scene, kind)?;
                pending = Some(done.clone());
                tx.commit().context("cannot commit")?;
                Ok(done)
            })();
            if result.as_ref().is_err_and(|e| !is_retriable(e)) {
                if let Some(done) = pending {
                    // The commit was sent and its answer lost (the server died): the action may or
                    // may not have happened. Its marker is never reused.
                    self.posts += u64::from(done.created);
                    if done.created {
                        self.uncertain.push(marker.clone());
                    }
                    self.uncertain.extend(done.deleted);
                }
            }
            match result {
                Ok(done) => break done,
                Err(e) if attempt + 1 < TRIES && is_retriable(&e) => {
                    attempt += 1;
                    self.retries += 1;
                    std::thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "workload action '{}' at site {} failed",
                        kind.name(),
                        self.site
                    )))
                }
            }
        };
        if done.created {
            self.posts += 1;
            self.created.push(marker);
        }
        self.deleted.extend(done.deleted);
        let counts = if done.skipped {
            &mut self.skipped
        } else {
            &mut self.done
        };
        *counts.entry(kind).or_default() += 1;
        Ok(Action {
            kind,
            user: done.user,
            target: done.target,
            skipped: done.skipped,
        })
    }

    pub fn site(&self) -> u32 {
        self.site
    }

    /// Markers of the posts this workload created, in order.
    pub fn created(&self) -> &[String] {
        &self.created
    }

    /// Markers of the posts this workload deleted (some may have been created elsewhere).
    pub fn deleted(&self) -> &[String] {
        &self.deleted
    }

    /// Markers of posts whose creation or deletion may or may not have happened: the server died
    /// between the commit and its answer.
    pub fn uncertain(&self) -> &[String] {
        &self.uncertain
    }

    /// Actions run, by kind.
    pub fn done(&self) -> &BTreeMap<Kind, u64> {
        &self.done
    }

    /// Actions skipped for want of something to act on, by kind.
    pub fn skipped(&self) -> &BTreeMap<Kind, u64> {
        &self.skipped
    }

    /// Transactions run again after a deadlock, lock wait or unique-key race.
    pub fn retries(&self) -> u64 {
        self.retries
    }
}

/// The marker of the `seq`-th post created by the workload with `seed` at `site`.
pub fn marker(site: u32, seed: u64, seq: u64) -> String {
    format!("[post s{site} r{seed} n{seq}]")
}

/// The post markers in a message.
pub fn markers_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("[post s") {
        let tail = &rest[start..];
        match tail.find(']') {
            Some(end) => {
                found.push(tail[..=end].to_owned());
                rest = &tail[end + 1..];
            }
            None => break,
        }
    }
    found
}

/// How many times each marker occurs in the site's forum posts.
pub fn marker_counts(conn: &mut Conn) -> Result<BTreeMap<String, u64>> {
    let messages: Vec<Vec<u8>> = conn
        .query("SELECT message FROM mdl_forum_posts WHERE message LIKE '%[post s%'")
        .context("cannot read forum posts")?;
    let mut counts = BTreeMap::new();
    for m in messages {
        for marker in markers_in(&String::from_utf8_lossy(&m)) {
            *counts.entry(marker).or_default() += 1;
        }
    }
    Ok(counts)
}

/// What the workloads did to posts, from their records.
#[derive(Debug, Clone, Default)]
pub struct PostLedger {
    pub created: BTreeSet<String>,
    pub deleted: BTreeSet<String>,
    pub uncertain: BTreeSet<String>,
}

impl PostLedger {
    pub fn add(&mut self, workload: &Workload) {
        self.created.extend(workload.created().iter().cloned());
        self.deleted.extend(workload.deleted().iter().cloned());
        self.uncertain.extend(workload.uncertain().iter().cloned());
    }

    /// Checks a site's posts against the ledger: every post created and not deleted is there exactly
    /// once, no deleted one is, no post is there twice, and none is there that no workload made.
    /// Posts of uncertain commits may be there once or not at all.
    pub fn check(&self, site: u32, conn: &mut Conn) -> Result<()> {
        let counts = marker_counts(conn)?;
        for marker in self.created.difference(&self.deleted) {
            let n = counts.get(marker).copied().unwrap_or(0);
            let ok = n == 1 || (n == 0 && self.uncertain.contains(marker));
            anyhow::ensure!(
                ok,
                "site {site}: post {marker} is there {n} times, not once"
            );
        }
        for marker in self.deleted.difference(&self.uncertain) {
            anyhow::ensure!(
                !counts.contains_key(marker),
                "site {site}: deleted post {marker} is still there"
            );
        }
        for (marker, n) in &counts {
            anyhow::ensure!(*n == 1, "site {site}: post {marker} is there {n} times");
            anyhow::ensure!(
                self.created.contains(marker) || self.uncertain.contains(marker),
                "site {site}: post {marker} was never created by a workload"
            );
        }
        Ok(())
    }
}

fn is_retriable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<mysql::Error>(),
            Some(mysql::Error::MySqlError(m))
                if m.code == ER_LOCK_DEADLOCK || m.code == ER_LOCK_WAIT_TIMEOUT || m.code == ER_DUP_ENTRY
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_and_do_not_prefix_each_other() {
        let a = marker(2, 7, 1);
        let b = marker(2, 7, 17);
        assert!(!b.contains(&a));
        let text = format!("<p>{a} hello {b}</p> [post s broken");
        assert_eq!(markers_in(&text), vec![a, b]);
    }
}
