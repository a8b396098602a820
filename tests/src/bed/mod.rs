//! A hub and centers for the sync tests and benchmarks: each site a real MariaDB with binlog, Moodle's
//! whole schema and the same seed, as a university's sites look once a center is commissioned from the
//! hub. Nothing here runs on an appliance.

pub mod files;
pub mod services;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::testbed::MariaDb;
use appliance::sync::engine::change::Change;
use appliance::sync::engine::policy::{Policy, Role};
use appliance::sync::engine::site::{Site, SiteConfig};
use appliance::sync::engine::sql::Target;
use appliance::sync::exchange::agent::{self, Link};
use appliance::sync::exchange::hub::{self, Page, Receipt};
use appliance::sync::schema::rules::Rules;
use appliance::sync::schema::{create_tables, Schema};
use appliance::sync::verify::{
    self, Catalog, CatalogRequest, Reference, RowsReply, RowsRequest, SumsReply, SumsRequest,
};

pub const HUB: u32 = 1;
pub const DB: &str = "moodle";
pub const PREFIX: &str = "mdl_";
/// Every site's share of the auto-increment ids: up to 64 sites.
pub const INCREMENT: u32 = 64;

/// The folder of Moodle schemas (`4.5.0/`, `4.5.5plus/`): `$KITUO_MOODLE_SCHEMA`, else the project's
/// shared folder beside the checkout, else `/work/shared/moodle-schema`.
pub fn schema_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KITUO_MOODLE_SCHEMA") {
        return dir.into();
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/moodle-schema");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared/moodle-schema")
}

/// The same seed at every site: one course with a forum, one discussion with its first post, three
/// users, a grade item.
pub const SEED: &[&str] = &[
    "INSERT INTO mdl_user (id, username, firstname, lastname, email, auth, confirmed, mnethostid, lastaccess)
     VALUES (2, 'admin', 'Admin', 'User', 'a@example.org', 'manual', 1, 1, 0),
            (3, 'amina', 'Amina', 'Juma', 'amina@example.org', 'manual', 1, 1, 0),
            (4, 'baraka', 'Baraka', 'Mushi', 'baraka@example.org', 'manual', 1, 1, 0)",
    // An explicit id, as every seeded row has: a center is commissioned from the hub's copy, so its
    // ids are the hub's (an auto-increment id would take each site's own offset).
    "INSERT INTO mdl_config (id, name, value) VALUES (1, 'siteadmins', '2')",
    "INSERT INTO mdl_course (id, category, fullname, shortname, summary) VALUES (2, 1, 'Biology', 'BIO', '')",
    "INSERT INTO mdl_forum (id, course, type, name, intro) VALUES (1, 2, 'general', 'Questions', '')",
    "INSERT INTO mdl_forum_discussions (id, course, forum, name, firstpost, userid, timemodified, usermodified)
     VALUES (1, 2, 1, 'Photosynthesis', 1, 2, 1000, 2)",
    "INSERT INTO mdl_forum_posts (id, discussion, parent, userid, created, modified, subject, message)
     VALUES (1, 1, 0, 2, 1000, 1000, 'Photosynthesis', 'Ask here.')",
    "INSERT INTO mdl_grade_items (id, courseid, itemname, itemtype, itemmodule, iteminstance, grademax)
     VALUES (1, 2, 'Essay', 'mod', 'assign', 1, 100)",
];

/// One site: its server and its sync engine.
pub struct Node {
    pub id: u32,
    pub db: MariaDb,
    pub site: Site,
}

impl Node {
    /// A connection as Moodle has one: its database selected, binlogged like any Moodle write.
    pub fn sql(&self) -> Result<mysql::Conn> {
        let mut c = mysql::Conn::new(self.db.opts()).context("cannot connect to the site")?;
        c.query_drop(format!("USE {DB}"))?;
        Ok(c)
    }

    /// A table's rows ordered by id, as SQL literals: what "identical at every site" compares (the
    /// columns each site keeps for itself, `[local_columns]`, left out).
    pub fn dump(&self, table: &str) -> Result<Vec<Vec<Option<String>>>> {
        static RULES: std::sync::OnceLock<appliance::sync::schema::rules::Rules> =
            std::sync::OnceLock::new();
        let rules = RULES.get_or_init(|| {
            use appliance::sync::schema::{rules, Schema};
            let builtin = rules::RuleFile::builtin().expect("the built-in rules parse");
            rules::Rules::derive(&Schema::default(), builtin, None)
        });
        let local = rules.local_columns(table);
        let rows: Vec<mysql::Row> = self
            .sql()?
            .query(format!("SELECT * FROM {PREFIX}{table} ORDER BY id"))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let shared: Vec<bool> = r
                    .columns_ref()
                    .iter()
                    .map(|c| !local.iter().any(|l| l.name == c.name_str()))
                    .collect();
                r.unwrap()
                    .into_iter()
                    .zip(shared)
                    .filter(|(_, shared)| *shared)
                    .map(|(v, _)| match v {
                        mysql::Value::NULL => None,
                        v => Some(v.as_sql(true)),
                    })
                    .collect()
            })
            .collect())
    }

    /// Opens the sync engine again, e.g. after the server restarted.
    pub fn reopen(&mut self) -> Result<()> {
        self.site = open_site(self.id, &self.db)?;
        Ok(())
    }
}

pub struct World {
    /// Removed when the world is dropped.
    pub dir: tempfile::TempDir,
    pub schema: Schema,
    pub policy: Policy,
    pub hub: Node,
    pub centers: Vec<Node>,
}

/// Starts the hub (site 1) and `centers` centers (sites 2, 3, ...), each with the Moodle 4.5.0 schema
/// and [`SEED`].
pub fn world(name: &str, centers: u32) -> Result<World> {
    let dir = tempfile::Builder::new().prefix(name).tempdir()?;
    let schema = Schema::load_moodle_dir(&schema_root().join("4.5.0"))?;
    let mut nodes = Vec::new();
    for id in HUB..=HUB + centers {
        nodes.push(node(dir.path(), id, &schema)?);
    }
    let policy = Policy::new(Rules::load(&schema, None)?);
    let hub = nodes.remove(0);
    Ok(World {
        dir,
        schema,
        policy,
        hub,
        centers: nodes,
    })
}

/// One site's server with the schema and seed, and its engine open after them (the seed is what
/// the site was commissioned with, not a change).
pub fn node(dir: &Path, id: u32, schema: &Schema) -> Result<Node> {
    let db = empty_database(&dir.join(format!("site{id}")), id)?;
    let mut c = mysql::Conn::new(db.opts())?;
    c.query_drop(format!("USE {DB}"))?;
    for (name, sql) in create_tables(schema, PREFIX) {
        c.query_drop(sql)
            .with_context(|| format!("cannot create {name}"))?;
    }
    for sql in SEED {
        c.query_drop(*sql).with_context(|| sql.to_string())?;
    }
    let site = open_site(id, &db)?;
    Ok(Node { id, db, site })
}

/// A site's server in `dir` with an empty Moodle database (a card before its first boot's install or
/// seed), and its engine open.
pub fn bare_node(dir: &Path, id: u32) -> Result<Node> {
    let db = empty_database(dir, id)?;
    let site = open_site(id, &db)?;
    Ok(Node { id, db, site })
}

/// A center commissioned from a live hub: its server, Moodle's tables, then the hub's rows by
/// `sync seed` (as `appliance sync schema-sql` and `appliance sync seed` do on a card).
pub fn seeded_node(
    dir: &Path,
    id: u32,
    schema: &Schema,
    policy: &Policy,
    hub: &mut Site,
) -> Result<Node> {
    let mut node = unseeded_node(dir, id, schema)?;
    let mut link = Direct {
        hub,
        policy,
        center: id,
    };
    appliance::sync::seed::seed(&mut node.site, policy, &mut link, None)?;
    Ok(node)
}

/// A new card for site `id`: Moodle's tables, empty, waiting for its seed.
pub fn unseeded_node(dir: &Path, id: u32, schema: &Schema) -> Result<Node> {
    let node = bare_node(dir, id)?;
    let mut c = node.sql()?;
    for (name, sql) in create_tables(schema, PREFIX) {
        c.query_drop(sql)
            .with_context(|| format!("cannot create {name}"))?;
    }
    Ok(node)
}

/// `rounds` exchanges of center `id` with the hub, in-process, as its agent runs them.
pub fn exchange(
    center: &mut Site,
    id: u32,
    hub: &mut Site,
    policy: &Policy,
    rounds: usize,
) -> Result<()> {
    for _ in 0..rounds {
        let mut link = Direct {
            hub: &mut *hub,
            policy,
            center: id,
        };
        agent::sync_once(center, policy, &mut link, 500)?;
    }
    Ok(())
}

/// A site's server in `dir`, as the image sets it up for sync, with an empty Moodle database.
fn empty_database(dir: &Path, id: u32) -> Result<MariaDb> {
    let db = MariaDb::start_with(dir, &MariaDb::sync_site_args(id, INCREMENT, id))?;
    mysql::Conn::new(db.opts())?.query_drop(format!(
        "CREATE DATABASE {DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))?;
    Ok(db)
}

/// The engine over `db`, as site `id` (the hub is 1).
pub fn open_site(id: u32, db: &MariaDb) -> Result<Site> {
    open_site_with(id, db, None)
}

/// [`open_site`] with a real Moodle on the database, whose caches applied rows clear.
pub fn open_site_with(
    id: u32,
    db: &MariaDb,
    moodle: Option<appliance::sync::engine::caches::Moodle>,
) -> Result<Site> {
    let role = if id == HUB { Role::Hub } else { Role::Center };
    Site::open(SiteConfig {
        site: id,
        role,
        target: Target {
            database: DB.into(),
            prefix: PREFIX.into(),
        },
        opts: db.opts(),
        reader_id: 1000 + id,
        moodle,
    })
}

/// What Moodle does when a user replies in a discussion (forum_add_new_post and its event).
pub fn reply(node: &Node, user: u32, text: &str, now: u64) -> Result<u64> {
    // Like a user pressing the button again when the request lost a deadlock to sync's apply.
    appliance::sync::engine::site::retry(|| reply_once(node, user, text, now))
}

fn reply_once(node: &Node, user: u32, text: &str, now: u64) -> Result<u64> {
    reply_on(&mut node.sql()?, user, text, now)
}

/// [`reply`] on a connection of the caller's (one with Moodle's database selected), once.
pub fn reply_on(c: &mut mysql::Conn, user: u32, text: &str, now: u64) -> Result<u64> {
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

/// The hub, reached in-process.
pub struct Direct<'a> {
    pub hub: &'a mut Site,
    pub policy: &'a Policy,
    pub center: u32,
}

impl Link for Direct<'_> {
    fn push(&mut self, changes: &[Change]) -> Result<Receipt> {
        hub::accept(self.hub, self.policy, self.center, changes)
    }
    fn pull(&mut self, after: u64, max: usize) -> Result<Page> {
        self.hub.capture(self.policy)?;
        hub::page(self.hub, self.policy, self.center, after, max, usize::MAX)
    }
}

impl Reference for Direct<'_> {
    fn catalog(&mut self, req: &CatalogRequest) -> Result<Catalog> {
        verify::serve_catalog(self.hub, self.policy, self.center, req)
    }
    fn sums(&mut self, req: &SumsRequest) -> Result<SumsReply> {
        verify::serve_sums(self.hub, self.policy, req)
    }
    fn rows(&mut self, req: &RowsRequest) -> Result<RowsReply> {
        verify::serve_rows(self.hub, self.policy, req)
    }
}

impl appliance::sync::seed::Source for Direct<'_> {
    fn copy(
        &mut self,
        req: &appliance::sync::seed::CopyRequest,
    ) -> Result<appliance::sync::seed::CopyReply> {
        appliance::sync::seed::serve_copy(self.hub, self.policy, req)
    }
    fn page(
        &mut self,
        req: &appliance::sync::seed::PageRequest,
    ) -> Result<appliance::sync::seed::PageReply> {
        appliance::sync::seed::serve_page(self.hub, self.policy, req)
    }
}

impl World {
    /// Every center exchanges with the hub, twice, so that what one center sent reaches the other.
    pub fn sync_all(&mut self) -> Result<()> {
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

    /// Waits until every center's `tables` equal the hub's, or fails naming the first that differs.
    pub fn wait_converged(&self, tables: &[&str], timeout: std::time::Duration) -> Result<()> {
        let end = std::time::Instant::now() + timeout;
        loop {
            let last = tables
                .iter()
                .try_for_each(|t| self.assert_same_everywhere(t).map(|_| ()));
            match last {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() >= end => {
                    return Err(e.context(format!("no convergence within {timeout:?}")))
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        }
    }

    /// Fails naming the first site whose `table` differs from the hub's; returns the hub's rows.
    pub fn assert_same_everywhere(&self, table: &str) -> Result<Vec<Vec<Option<String>>>> {
        let hub = self.hub.dump(table)?;
        for c in &self.centers {
            anyhow::ensure!(
                c.dump(table)? == hub,
                "{table} differs between the hub and center {}",
                c.id
            );
        }
        Ok(hub)
    }
}
