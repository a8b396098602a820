//! Row sync between a hub and two centers, each a real MariaDB with binlog and the whole Moodle 4.5
//! schema, exchanging changes through the hub's relay log. The link here is in-process (the HTTP
//! transport and the fault proxy come with the agent service); what is tested is capture, merge,
//! relay and apply against real servers.

use std::path::Path;

use anyhow::{Context, Result};
use appliance::sync::agent::{self, Link};
use appliance::sync::apply::Target;
use appliance::sync::change::Change;
use appliance::sync::hub::{self, Page, Receipt};
use appliance::sync::policy::{Policy, Role};
use appliance::sync::rules::Rules;
use appliance::sync::schema::{create_table, Schema};
use appliance::sync::site::{Site, SiteConfig};
use appliance::testbed::MariaDb;
use mysql::prelude::Queryable;

const SCHEMA: &str = "/work/shared/moodle-schema/4.5.0";
const HUB: u32 = 1;
const DB: &str = "moodle";

struct Node {
    id: u32,
    db: MariaDb,
    site: Site,
}

impl Node {
    fn sql(&self) -> Result<mysql::Conn> {
        let mut c = mysql::Conn::new(self.db.opts()).context("connect")?;
        c.query_drop(format!("USE {DB}"))?;
        Ok(c)
    }
}

struct World {
    _dir: tempfile::TempDir,
    policy: Policy,
    hub: Node,
    centers: Vec<Node>,
}

/// The same seed at every site: one course with a forum, one discussion with its first post, three
/// users, a grade item.
const SEED: &[&str] = &[
    "INSERT INTO mdl_user (id, username, firstname, lastname, email, auth, confirmed, mnethostid, lastaccess)
     VALUES (2, 'admin', 'Admin', 'User', 'a@example.org', 'manual', 1, 1, 0),
            (3, 'amina', 'Amina', 'Juma', 'amina@example.org', 'manual', 1, 1, 0),
            (4, 'baraka', 'Baraka', 'Mushi', 'baraka@example.org', 'manual', 1, 1, 0)",
    "INSERT INTO mdl_course (id, category, fullname, shortname, summary) VALUES (2, 1, 'Biology', 'BIO', '')",
    "INSERT INTO mdl_forum (id, course, type, name, intro) VALUES (1, 2, 'general', 'Questions', '')",
    "INSERT INTO mdl_forum_discussions (id, course, forum, name, firstpost, userid, timemodified, usermodified)
     VALUES (1, 2, 1, 'Photosynthesis', 1, 2, 1000, 2)",
    "INSERT INTO mdl_forum_posts (id, discussion, parent, userid, created, modified, subject, message)
     VALUES (1, 1, 0, 2, 1000, 1000, 'Photosynthesis', 'Ask here.')",
    "INSERT INTO mdl_grade_items (id, courseid, itemname, itemtype, itemmodule, iteminstance, grademax)
     VALUES (1, 2, 'Essay', 'mod', 'assign', 1, 100)",
];

fn world(dir_name: &str) -> Result<World> {
    let dir = tempfile::Builder::new().prefix(dir_name).tempdir()?;
    let schema = Schema::load_moodle_dir(Path::new(SCHEMA))?;
    let mut nodes = Vec::new();
    for id in [HUB, 2, 3] {
        let db = MariaDb::start_with(
            &dir.path().join(format!("site{id}")),
            &MariaDb::sync_site_args(id, 64, id),
        )?;
        let mut c = mysql::Conn::new(db.opts())?;
        c.query_drop(format!(
            "CREATE DATABASE {DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))?;
        c.query_drop(format!("USE {DB}"))?;
        for table in schema.tables.values() {
            c.query_drop(create_table(table, "mdl_"))
                .with_context(|| format!("create {}", table.name))?;
        }
        for sql in SEED {
            c.query_drop(*sql).with_context(|| sql.to_string())?;
        }
        let role = if id == HUB { Role::Hub } else { Role::Center };
        let site = Site::open(SiteConfig {
            site: id,
            role,
            target: Target {
                database: DB.into(),
                prefix: "mdl_".into(),
            },
            opts: db.opts(),
            reader_id: 1000 + id,
        })?;
        nodes.push(Node { id, db, site });
    }
    let policy = Policy::new(Rules::load(&schema, None)?);
    let hub = nodes.remove(0);
    Ok(World {
        _dir: dir,
        policy,
        hub,
        centers: nodes,
    })
}

/// The hub, reached in-process.
struct Direct<'a> {
    hub: &'a mut Site,
    policy: &'a Policy,
    center: u32,
}

impl Link for Direct<'_> {
    fn push(&mut self, changes: &[Change]) -> Result<Receipt> {
        hub::accept(self.hub, self.policy, self.center, changes)
    }
    fn pull(&mut self, after: u64, max: usize) -> Result<Page> {
        self.hub.capture(self.policy)?;
        hub::page(self.hub, self.policy, self.center, after, max)
    }
}

impl World {
    /// Every center exchanges with the hub, twice, so that what one center sent reaches the other.
    fn sync_all(&mut self) -> Result<()> {
        for _ in 0..2 {
            self.hub.site.capture(&self.policy)?;
            for c in &mut self.centers {
                let mut link = Direct {
                    hub: &mut self.hub.site,
                    policy: &self.policy,
                    center: c.id,
                };
                agent::sync_once(&mut c.site, &self.policy, &mut link, 100)?;
            }
        }
        Ok(())
    }
}

/// A table's rows, ordered by id, as text: what "identical at every site" compares.
fn dump(node: &Node, table: &str) -> Result<Vec<Vec<Option<String>>>> {
    let mut c = node.sql()?;
    let rows: Vec<mysql::Row> = c.query(format!("SELECT * FROM mdl_{table} ORDER BY id"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql::Value::NULL => None,
                    v => Some(v.as_sql(true)),
                })
                .collect()
        })
        .collect())
}

fn assert_same_everywhere(w: &World, table: &str) -> Result<Vec<Vec<Option<String>>>> {
    let hub = dump(&w.hub, table)?;
    for c in &w.centers {
        assert_eq!(
            dump(c, table)?,
            hub,
            "{table} differs between the hub and center {}",
            c.id
        );
    }
    Ok(hub)
}

/// What Moodle does when a user replies in a discussion (forum_add_new_post and its event).
fn reply(node: &Node, user: u32, text: &str, now: u64) -> Result<u64> {
    let mut c = node.sql()?;
    let mut tx = c.start_transaction(mysql::TxOpts::default())?;
    tx.exec_drop(
        "INSERT INTO mdl_forum_posts (discussion, parent, userid, created, modified, subject, message,
                                      messageformat, wordcount, charcount)
         VALUES (1, 1, ?, ?, ?, 'Re: Photosynthesis', ?, 1, 3, ?)",
        (user, now, now, text, text.len()),
    )?;
    let post = tx.last_insert_id().context("no post id")?;
    tx.exec_drop(
        "UPDATE mdl_forum_discussions SET timemodified = ?, usermodified = ? WHERE id = 1",
        (now, user),
    )?;
    tx.exec_drop(
        "INSERT INTO mdl_logstore_standard_log (eventname, component, action, target, objecttable,
             objectid, crud, edulevel, contextid, contextlevel, contextinstanceid, userid, courseid,
             anonymous, timecreated, origin)
         VALUES ('\\\\mod_forum\\\\event\\\\post_created', 'mod_forum', 'created', 'post', 'forum_posts',
                 ?, 'c', 2, 30, 70, 5, ?, 2, 0, ?, 'web')",
        (post, user, now),
    )?;
    tx.commit()?;
    Ok(post)
}

#[test]
fn thesis_forum_case_both_replies_survive_and_the_discussion_converges() -> Result<()> {
    let mut w = world("kituo-sync-forum")?;
    // The link is down: both centers reply to the same thread (thesis figures 15-19).
    let a = reply(&w.centers[0], 3, "Chlorophyll absorbs light.", 2000)?;
    let b = reply(&w.centers[1], 4, "It makes glucose.", 2001)?;
    assert_ne!(a, b, "ids come from different auto-increment shares");
    w.sync_all()?;

    let posts = assert_same_everywhere(&w, "forum_posts")?;
    assert_eq!(
        posts.len(),
        3,
        "first post and both replies, each once: {posts:?}"
    );
    let discussions = assert_same_everywhere(&w, "forum_discussions")?;
    assert_eq!(discussions.len(), 1);
    // Both centers set timemodified/usermodified; the later stamp wins everywhere.
    let logs_at_hub = dump(&w.hub, "logstore_standard_log")?;
    assert_eq!(logs_at_hub.len(), 2, "the hub collects both centers' logs");
    assert_eq!(
        dump(&w.centers[0], "logstore_standard_log")?.len(),
        1,
        "logs go to the hub only"
    );
    Ok(())
}

#[test]
fn concurrent_edits_merge_by_column_and_delete_wins() -> Result<()> {
    let mut w = world("kituo-sync-merge")?;
    // Two centers edit different columns of the same post: both edits survive.
    w.centers[0]
        .sql()?
        .query_drop("UPDATE mdl_forum_posts SET subject = 'Edited at A' WHERE id = 1")?;
    w.centers[1]
        .sql()?
        .query_drop("UPDATE mdl_forum_posts SET message = 'Edited at B' WHERE id = 1")?;
    // And the same column of the user row: one value wins everywhere.
    w.centers[0]
        .sql()?
        .query_drop("UPDATE mdl_user SET lastaccess = 111 WHERE id = 3")?;
    w.centers[1]
        .sql()?
        .query_drop("UPDATE mdl_user SET lastaccess = 222 WHERE id = 3")?;
    w.sync_all()?;
    let posts = assert_same_everywhere(&w, "forum_posts")?;
    let text = format!("{posts:?}");
    assert!(
        text.contains("Edited at A") && text.contains("Edited at B"),
        "{text}"
    );
    assert_same_everywhere(&w, "user")?;

    // Update against delete: the delete wins wherever it arrives.
    let post = reply(&w.centers[0], 3, "to be removed", 3000)?;
    w.sync_all()?;
    w.centers[0]
        .sql()?
        .exec_drop("DELETE FROM mdl_forum_posts WHERE id = ?", (post,))?;
    w.centers[1].sql()?.exec_drop(
        "UPDATE mdl_forum_posts SET message = 'late edit' WHERE id = ?",
        (post,),
    )?;
    w.sync_all()?;
    let posts = assert_same_everywhere(&w, "forum_posts")?;
    assert!(!format!("{posts:?}").contains("late edit"));
    assert_eq!(posts.len(), 1);
    Ok(())
}

#[test]
fn a_grade_created_at_two_centers_merges_into_one_row() -> Result<()> {
    let mut w = world("kituo-sync-clash")?;
    for (i, c) in w.centers.iter().enumerate() {
        c.sql()?.exec_drop(
            "INSERT INTO mdl_grade_grades (itemid, userid, rawgrade, finalgrade, timecreated, timemodified)
             VALUES (1, 3, ?, ?, 5000, 5000)",
            (60 + i as u32, 60 + i as u32),
        )?;
    }
    w.sync_all()?;
    let grades = assert_same_everywhere(&w, "grade_grades")?;
    assert_eq!(grades.len(), 1, "one grade per item and user: {grades:?}");
    Ok(())
}

#[test]
fn replaying_a_batch_changes_nothing() -> Result<()> {
    let mut w = world("kituo-sync-replay")?;
    reply(&w.centers[0], 3, "once", 4000)?;
    w.centers[0].site.capture(&w.policy)?;
    let mut link = Direct {
        hub: &mut w.hub.site,
        policy: &w.policy,
        center: 2,
    };
    let mut conn = mysql::Conn::new(w.centers[0].db.opts())?;
    let rows: Vec<Vec<u8>> = conn.query("SELECT data FROM kituo_sync.log ORDER BY seq")?;
    let changes: Vec<Change> = rows
        .iter()
        .map(|d| appliance::sync::store::decode_logged(d))
        .collect::<Result<_>>()?;
    assert!(!changes.is_empty());
    let first = link.push(&changes)?;
    let second = link.push(&changes)?;
    assert_eq!(first.acked, second.acked);
    let posts = dump(&w.hub, "forum_posts")?;
    assert_eq!(posts.len(), 2, "the reply arrived once: {posts:?}");
    Ok(())
}
