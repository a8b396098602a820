//! A Moodle upgrade while syncing: the sites run the 4.5.0 → 4.5.5+ DDL at different times, each on
//! its own real MariaDB with the whole schema, and sync keeps going throughout. Values for columns a
//! site lacks are parked and changes for tables it lacks deferred; when the site's own upgrade has
//! created them, its next sync pass replays them (no restart, no reopen of the engine).
//!
//! The 4.5.0 → 4.5.5+ difference has added columns (`oauth2_issuer.systememail`,
//! `quizaccess_seb_quizsettings.allowcapturecamera`/`…microphone`) and an index, but no added table, and
//! its added columns are all in tables the hub authors. An upgrade often brings a plugin's upgrade
//! with it, so a small local plugin stands in for the rest: version 1 is installed everywhere, and
//! version 2 (installed with the upgrade) adds a column to its table, which syncs both ways, and adds
//! a table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use appliance::sync::engine::change::{Op, Value};
use appliance::sync::engine::policy::{Direction, Rulebook};
use appliance::sync::engine::sql::Target;
use appliance::sync::engine::store;
use appliance::sync::exchange::agent;
use appliance::sync::schema::{create_tables, upgrade, Schema};
use kituo_tests::bed::{schema_root, world, Direct, Node, World, DB, PREFIX};
use mysql::prelude::Queryable;

const NEW_VERSION: &str = "2024100705.01";

/// A local plugin's tables, version 1: field notes that teachers and learners write anywhere.
const FIELDNOTES_V1: &str = r#"<?xml version="1.0" encoding="UTF-8" ?>
<XMLDB PATH="local/fieldnotes/db" VERSION="20240101" COMMENT="Field notes">
  <TABLES>
    <TABLE NAME="local_fieldnotes" COMMENT="One note">
      <FIELDS>
        <FIELD NAME="id" TYPE="int" LENGTH="10" NOTNULL="true" SEQUENCE="true"/>
        <FIELD NAME="userid" TYPE="int" LENGTH="10" NOTNULL="true" SEQUENCE="false"/>
        <FIELD NAME="note" TYPE="text" NOTNULL="true" SEQUENCE="false"/>
        <FIELD NAME="timecreated" TYPE="int" LENGTH="10" NOTNULL="true" DEFAULT="0" SEQUENCE="false"/>
      </FIELDS>
      <KEYS>
        <KEY NAME="primary" TYPE="primary" FIELDS="id"/>
        <KEY NAME="userid" TYPE="foreign" FIELDS="userid" REFTABLE="user" REFFIELDS="id"/>
      </KEYS>
    </TABLE>
  </TABLES>
</XMLDB>
"#;

/// Version 2: a mood per note (an added column) and tags (an added table).
const FIELDNOTES_V2: &str = r#"<?xml version="1.0" encoding="UTF-8" ?>
<XMLDB PATH="local/fieldnotes/db" VERSION="20250101" COMMENT="Field notes">
  <TABLES>
    <TABLE NAME="local_fieldnotes" COMMENT="One note">
      <FIELDS>
        <FIELD NAME="id" TYPE="int" LENGTH="10" NOTNULL="true" SEQUENCE="true"/>
        <FIELD NAME="userid" TYPE="int" LENGTH="10" NOTNULL="true" SEQUENCE="false"/>
        <FIELD NAME="note" TYPE="text" NOTNULL="true" SEQUENCE="false"/>
        <FIELD NAME="timecreated" TYPE="int" LENGTH="10" NOTNULL="true" DEFAULT="0" SEQUENCE="false"/>
        <FIELD NAME="mood" TYPE="char" LENGTH="20" NOTNULL="false" SEQUENCE="false"/>
      </FIELDS>
      <KEYS>
        <KEY NAME="primary" TYPE="primary" FIELDS="id"/>
        <KEY NAME="userid" TYPE="foreign" FIELDS="userid" REFTABLE="user" REFFIELDS="id"/>
      </KEYS>
    </TABLE>
    <TABLE NAME="local_fieldnotes_tag" COMMENT="Tags of a note">
      <FIELDS>
        <FIELD NAME="id" TYPE="int" LENGTH="10" NOTNULL="true" SEQUENCE="true"/>
        <FIELD NAME="noteid" TYPE="int" LENGTH="10" NOTNULL="true" SEQUENCE="false"/>
        <FIELD NAME="tag" TYPE="char" LENGTH="40" NOTNULL="true" SEQUENCE="false"/>
      </FIELDS>
      <KEYS>
        <KEY NAME="primary" TYPE="primary" FIELDS="id"/>
        <KEY NAME="noteid" TYPE="foreign" FIELDS="noteid" REFTABLE="local_fieldnotes" REFFIELDS="id"/>
      </KEYS>
    </TABLE>
  </TABLES>
</XMLDB>
"#;

/// The tables the upgrade touches, compared across sites at the end.
const TOUCHED: &[&str] = &[
    "forum_posts",
    "forum_discussions",
    "oauth2_issuer",
    "quizaccess_seb_quizsettings",
    "local_fieldnotes",
    "local_fieldnotes_tag",
];

/// The Moodle code at each site (its XMLDB files), and the rules the engine derives from it.
struct Moodle {
    old: Schema,
    new: Schema,
    new_dir: PathBuf,
    /// One code folder per site: index 0 is the hub's.
    code: Vec<PathBuf>,
    books: Vec<Rulebook>,
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A Moodle code tree: the release's XMLDB files and the plugin's.
fn code_tree(dir: &Path, release: &str, plugin: &str) -> Result<PathBuf> {
    copy_tree(&schema_root().join(release), dir)?;
    let db = dir.join("local/fieldnotes/db");
    std::fs::create_dir_all(&db)?;
    std::fs::write(db.join("install.xml"), plugin)?;
    Ok(dir.to_owned())
}

fn node(w: &World, site: usize) -> &Node {
    if site == 0 {
        &w.hub
    } else {
        &w.centers[site - 1]
    }
}

fn node_mut(w: &mut World, site: usize) -> &mut Node {
    if site == 0 {
        &mut w.hub
    } else {
        &mut w.centers[site - 1]
    }
}

fn target() -> Target {
    Target {
        database: DB.into(),
        prefix: PREFIX.into(),
    }
}

impl Moodle {
    /// Every site on 4.5.0 with version 1 of the plugin installed, its versions recorded as Moodle's
    /// installer does (with the same ids everywhere: a center is a copy of the hub).
    fn install(w: &mut World) -> Result<Moodle> {
        let root = w.dir.path().to_owned();
        let old_dir = code_tree(&root.join("moodle-4.5.0"), "4.5.0", FIELDNOTES_V1)?;
        let new_dir = code_tree(&root.join("moodle-4.5.5plus"), "4.5.5plus", FIELDNOTES_V2)?;
        let old = Schema::load_moodle_dir(&old_dir)?;
        let new = Schema::load_moodle_dir(&new_dir)?;
        let (_, plugin) = create_tables(&old, PREFIX)
            .into_iter()
            .find(|(name, _)| name == "local_fieldnotes")
            .context("plugin table")?;
        let mut code = Vec::new();
        let mut books = Vec::new();
        for site in 0..=w.centers.len() {
            let dir = root.join(format!("code{site}"));
            copy_tree(&old_dir, &dir)?;
            let n = node_mut(w, site);
            let mut c = n.sql()?;
            c.query_drop(&plugin)?;
            c.query_drop(
                "INSERT INTO mdl_config (id, name, value) VALUES
                     (9001, 'version', '2024100700.00'), (9002, 'allversionshash', 'a450')",
            )?;
            c.query_drop(
                "INSERT INTO mdl_config_plugins (id, plugin, name, value)
                 VALUES (9001, 'local_fieldnotes', 'version', '2024010100')",
            )?;
            books.push(Rulebook::open(n.site.conn(), &target(), &dir, None)?);
            code.push(dir);
        }
        Ok(Moodle {
            old,
            new,
            new_dir,
            code,
            books,
        })
    }

    /// What upgrading Moodle does at one site: new code, then the upgrade's DDL, then the versions.
    fn upgrade(&mut self, w: &World, site: usize) -> Result<()> {
        std::fs::remove_dir_all(&self.code[site])?;
        copy_tree(&self.new_dir, &self.code[site])?;
        let mut c = node(w, site).sql()?;
        for sql in upgrade(&self.old, &self.new, PREFIX) {
            c.query_drop(&sql)
                .with_context(|| format!("site {site}: {sql}"))?;
        }
        c.exec_drop(
            "UPDATE mdl_config SET value = ? WHERE name = 'version'",
            (NEW_VERSION,),
        )?;
        c.query_drop("UPDATE mdl_config SET value = 'a455' WHERE name = 'allversionshash'")?;
        c.query_drop(
            "UPDATE mdl_config_plugins SET value = '2025010100'
             WHERE plugin = 'local_fieldnotes' AND name = 'version'",
        )?;
        Ok(())
    }

    /// Sync passes as the agents and the hub run them, each site under its own rules (read again when
    /// its Moodle was upgraded), twice so that what one center sent reaches the other.
    fn sync(&mut self, w: &mut World) -> Result<()> {
        for (site, book) in self.books.iter_mut().enumerate() {
            book.refresh(node_mut(w, site).site.conn())?;
        }
        let (hub_book, center_books) = self.books.split_first().context("no hub")?;
        for _ in 0..2 {
            w.hub.site.capture(hub_book.policy())?;
            for (c, book) in w.centers.iter_mut().zip(center_books) {
                let mut link = Direct {
                    hub: &mut w.hub.site,
                    policy: hub_book.policy(),
                    center: c.id,
                };
                agent::sync_once(&mut c.site, book.policy(), &mut link, 100)?;
            }
        }
        Ok(())
    }
}

fn reply(node: &Node, user: u32, text: &str) -> Result<u64> {
    let mut c = node.sql()?;
    c.exec_drop(
        "INSERT INTO mdl_forum_posts (discussion, parent, userid, created, modified, subject, message)
         VALUES (1, 1, ?, 2000, 2000, 'Re: Photosynthesis', ?)",
        (user, text),
    )?;
    Ok(c.last_insert_id())
}

fn note(node: &Node, user: u32, text: &str) -> Result<u64> {
    let mut c = node.sql()?;
    c.exec_drop(
        "INSERT INTO mdl_local_fieldnotes (userid, note, timecreated) VALUES (?, ?, 3000)",
        (user, text),
    )?;
    Ok(c.last_insert_id())
}

fn scalar(node: &Node, sql: &str) -> Result<Option<String>> {
    let v: Option<Option<String>> = node.sql()?.query_first(sql)?;
    Ok(v.flatten())
}

fn count(node: &Node, sql: &str) -> Result<u64> {
    let n: Option<u64> = node.sql()?.query_first(sql)?;
    Ok(n.unwrap_or(0))
}

/// Parked values and deferred changes kept at a site.
fn waiting(node: &Node) -> Result<(u64, u64)> {
    Ok((
        count(node, "SELECT COUNT(*) FROM kituo_sync.parked")?,
        count(node, "SELECT COUNT(*) FROM kituo_sync.deferred")?,
    ))
}

fn has_column(node: &Node, table: &str, column: &str) -> Result<bool> {
    Ok(count(
        node,
        &format!(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{DB}'
             AND TABLE_NAME = '{PREFIX}{table}' AND COLUMN_NAME = '{column}'"
        ),
    )? == 1)
}

fn same_everywhere(w: &World, tables: &[&str]) -> Result<()> {
    for table in tables {
        w.assert_same_everywhere(table)?;
    }
    Ok(())
}

/// Settings by name (the seed's config rows got each site's own auto-increment id).
fn settings(node: &Node) -> Result<Vec<(String, String, String)>> {
    Ok(node.sql()?.query(
        "SELECT '', name, value FROM mdl_config
         UNION ALL SELECT plugin, name, value FROM mdl_config_plugins ORDER BY 1, 2",
    )?)
}

/// A quiz's Safe Exam Browser settings, as the hub's teachers make them.
fn seb_settings(node: &Node, quiz: u32) -> Result<u64> {
    let mut c = node.sql()?;
    c.exec_drop(
        "INSERT INTO mdl_quizaccess_seb_quizsettings (quizid, cmid, templateid, requiresafeexambrowser)
         VALUES (?, ?, 0, 1)",
        (quiz, quiz + 100),
    )?;
    Ok(c.last_insert_id())
}

fn step(started: &Instant, what: &str) {
    eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
}

/// Nothing waits anywhere, the touched tables are identical and every center has the hub's settings.
fn assert_all_level(w: &World) -> Result<()> {
    for site in 0..=2 {
        assert_eq!(waiting(node(w, site))?, (0, 0), "site {site}");
    }
    same_everywhere(w, TOUCHED)?;
    for c in &w.centers {
        assert_eq!(
            settings(c)?,
            settings(&w.hub)?,
            "settings at center {}",
            c.id
        );
    }
    Ok(())
}

#[test]
fn the_hub_upgrades_first_and_each_center_catches_up_on_its_own_pass() -> Result<()> {
    let started = Instant::now();
    let mut w = world("kituo-upgrade-hub", 2)?;
    let mut m = Moodle::install(&mut w)?;
    step(&started, "three sites on 4.5.0");

    // Before: notes and quiz settings exist everywhere.
    let n1 = note(&w.centers[0], 3, "Leaves turn to the light.")?;
    let q1 = seb_settings(&w.hub, 1)?;
    let q2 = seb_settings(&w.hub, 2)?;
    m.sync(&mut w)?;
    same_everywhere(&w, &["local_fieldnotes", "quizaccess_seb_quizsettings"])?;

    // The hub upgrades, then its people use what is new.
    m.upgrade(&w, 0)?;
    m.sync(&mut w)?;
    let mut hub = w.hub.sql()?;
    hub.query_drop(
        "INSERT INTO mdl_oauth2_issuer (timecreated, timemodified, usermodified, name, image, baseurl,
             clientid, clientsecret, loginscopes, loginscopesoffline, loginparams, loginparamsoffline,
             alloweddomains, sortorder, systememail)
         VALUES (5000, 5000, 2, 'University mail', '', 'https://mail.uni.example', 'kituo', 's3cret',
                 'openid', 'openid offline', '', '', '', 0, 'noreply@uni.example')",
    )?;
    hub.exec_drop(
        "UPDATE mdl_quizaccess_seb_quizsettings SET allowcapturecamera = 1 WHERE id IN (?, ?)",
        (q1, q2),
    )?;
    // Settings whose new value waits at the centers, then removed: the value must not bring it back.
    hub.exec_drop(
        "DELETE FROM mdl_quizaccess_seb_quizsettings WHERE id = ?",
        (q2,),
    )?;
    hub.exec_drop(
        "UPDATE mdl_local_fieldnotes SET mood = 'curious' WHERE id = ?",
        (n1,),
    )?;
    let n2 = note(&w.hub, 2, "Bring hand lenses on Friday.")?;
    hub.exec_drop(
        "UPDATE mdl_local_fieldnotes SET mood = 'busy' WHERE id = ?",
        (n2,),
    )?;
    hub.exec_drop(
        "INSERT INTO mdl_local_fieldnotes_tag (noteid, tag) VALUES (?, 'botany'), (?, 'light'), (?, 'gone')",
        (n1, n1, n1),
    )?;
    hub.query_drop("UPDATE mdl_local_fieldnotes_tag SET tag = 'plants' WHERE tag = 'botany'")?;
    hub.query_drop("DELETE FROM mdl_local_fieldnotes_tag WHERE tag = 'gone'")?;
    // The centers, still on 4.5.0, go on with their own work.
    reply(&w.centers[0], 3, "A: chlorophyll is green.")?;
    reply(&w.centers[1], 4, "B: it needs water too.")?;
    m.sync(&mut w)?;
    step(&started, "hub upgraded, centers on 4.5.0 synced");

    w.assert_same_everywhere("forum_posts")?;
    assert_eq!(w.hub.dump("forum_posts")?.len(), 3);
    for c in &w.centers {
        ensure!(!has_column(c, "oauth2_issuer", "systememail")?);
        let (parked, deferred) = waiting(c)?;
        // systememail; allowcapturecamera of q1 and q2; mood of n1 and n2; 3 inserts, 1 update and 1
        // delete of tags.
        assert_eq!((parked, deferred), (5, 5), "at center {}", c.id);
        // Moodle's version rows stay each site's own: the hub's upgrade did not travel.
        assert_eq!(
            scalar(c, "SELECT value FROM mdl_config WHERE name = 'version'")?.as_deref(),
            Some("2024100700.00")
        );
        assert_eq!(
            count(c, "SELECT COUNT(*) FROM mdl_quizaccess_seb_quizsettings")?,
            1
        );
    }
    let issuers = w.assert_same_everywhere("oauth2_issuer");
    ensure!(issuers.is_err(), "the hub has a column the centers lack");

    // Center A upgrades. Before its next pass its Moodle already writes the new column of n1, and
    // adds a note with the old shape just before the DDL (one capture pass reads both).
    let n3 = note(&w.centers[0], 3, "Written before the upgrade.")?;
    m.upgrade(&w, 1)?;
    let a = &w.centers[0];
    a.sql()?.exec_drop(
        "UPDATE mdl_local_fieldnotes SET mood = 'proud' WHERE id = ?",
        (n1,),
    )?;
    reply(&w.centers[1], 4, "B: still on 4.5.0.")?;
    m.sync(&mut w)?;
    step(&started, "center A upgraded and synced");

    let a = &w.centers[0];
    assert_eq!(waiting(a)?, (0, 0), "A replayed everything");
    assert!(
        m.books[1].version().contains(NEW_VERSION),
        "{}",
        m.books[1].version()
    );
    let tag_rule = m.books[1].policy().rules().get("local_fieldnotes_tag");
    assert_eq!(tag_rule.map(|r| r.direction), Some(Direction::Both));
    assert_eq!(
        scalar(
            a,
            "SELECT systememail FROM mdl_oauth2_issuer WHERE name = 'University mail'"
        )?
        .as_deref(),
        Some("noreply@uni.example")
    );
    assert_eq!(
        scalar(
            a,
            &format!(
                "SELECT allowcapturecamera FROM mdl_quizaccess_seb_quizsettings WHERE id = {q1}"
            )
        )?
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        count(a, "SELECT COUNT(*) FROM mdl_quizaccess_seb_quizsettings")?,
        1,
        "the parked value of deleted settings did not bring them back"
    );
    // The hub's older mood of n1 lost to A's newer edit; n2's arrived.
    for site in [&w.hub, a] {
        assert_eq!(
            scalar(
                site,
                &format!("SELECT mood FROM mdl_local_fieldnotes WHERE id = {n1}")
            )?
            .as_deref(),
            Some("proud"),
            "at site {}",
            site.id
        );
        assert_eq!(
            scalar(
                site,
                &format!("SELECT mood FROM mdl_local_fieldnotes WHERE id = {n2}")
            )?
            .as_deref(),
            Some("busy")
        );
        assert_eq!(
            count(
                site,
                &format!(
                    "SELECT COUNT(*) FROM mdl_local_fieldnotes WHERE id = {n3} AND mood IS NULL"
                )
            )?,
            1
        );
    }
    let tags: Vec<String> = a
        .sql()?
        .query("SELECT tag FROM mdl_local_fieldnotes_tag ORDER BY tag")?;
    assert_eq!(tags, ["light", "plants"]);
    same_everywhere(&w, &["forum_posts", "forum_discussions"])?;
    assert_eq!(w.hub.dump("forum_posts")?.len(), 4);
    for table in [
        "local_fieldnotes_tag",
        "oauth2_issuer",
        "quizaccess_seb_quizsettings",
        "local_fieldnotes",
    ] {
        ensure!(
            w.hub.dump(table)? == a.dump(table)?,
            "{table} differs between the hub and A"
        );
    }
    // B, still old, keeps the newer mood of n1 parked.
    let b = &w.centers[1];
    assert_eq!(waiting(b)?, (5, 5));

    // B upgrades last.
    m.upgrade(&w, 2)?;
    m.sync(&mut w)?;
    step(&started, "center B upgraded and synced");
    assert_all_level(&w)?;
    let before: Vec<_> = TOUCHED
        .iter()
        .map(|t| w.hub.dump(t))
        .collect::<Result<_>>()?;
    // Replayed once: another round changes nothing.
    m.sync(&mut w)?;
    let after: Vec<_> = TOUCHED
        .iter()
        .map(|t| w.hub.dump(t))
        .collect::<Result<_>>()?;
    assert_eq!(before, after);
    same_everywhere(&w, TOUCHED)?;
    for c in &w.centers {
        assert_eq!(
            settings(c)?,
            settings(&w.hub)?,
            "settings at center {}",
            c.id
        );
    }

    // A deferred insert of a row deleted meanwhile (its table appeared between one pass's replay and
    // the batch that brought the delete) stays buried.
    let logged: Vec<Vec<u8>> = w.hub.sql()?.query(
        "SELECT data FROM kituo_sync.log WHERE tbl = 'local_fieldnotes_tag' ORDER BY lseq",
    )?;
    let gone = logged
        .iter()
        .map(|d| store::decode_logged(d))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .find(|c| matches!(&c.op, Op::Insert(row) if row.get("tag") == Some(&Value::Bytes(b"gone".to_vec()))))
        .context("the insert of the deleted tag")?;
    store::defer(w.centers[0].site.conn(), &gone)?;
    m.sync(&mut w)?;
    assert_eq!(waiting(&w.centers[0])?, (0, 0));
    same_everywhere(&w, TOUCHED)?;
    assert_eq!(w.hub.dump("local_fieldnotes_tag")?.len(), 2);
    step(&started, "all sites on 4.5.5+ and identical");
    Ok(())
}

#[test]
fn a_center_upgrades_first_and_the_hub_relays_what_it_cannot_apply_yet() -> Result<()> {
    let started = Instant::now();
    let mut w = world("kituo-upgrade-center", 2)?;
    let mut m = Moodle::install(&mut w)?;
    let n1 = note(&w.hub, 2, "Field trip on Monday.")?;
    m.sync(&mut w)?;
    step(&started, "three sites on 4.5.0");

    // Center A upgrades first and writes what is new.
    m.upgrade(&w, 1)?;
    let a = &w.centers[0];
    let mut ca = a.sql()?;
    ca.exec_drop(
        "UPDATE mdl_local_fieldnotes SET mood = 'excited' WHERE id = ?",
        (n1,),
    )?;
    let n2 = note(a, 3, "Saw a chameleon.")?;
    ca.exec_drop(
        "UPDATE mdl_local_fieldnotes SET mood = 'amazed' WHERE id = ?",
        (n2,),
    )?;
    ca.exec_drop(
        "INSERT INTO mdl_local_fieldnotes_tag (noteid, tag) VALUES (?, 'reptiles'), (?, 'trip')",
        (n2, n1),
    )?;
    reply(a, 3, "A: upgraded and posting.")?;
    reply(&w.centers[1], 4, "B: old and posting.")?;
    m.sync(&mut w)?;
    step(&started, "center A upgraded and synced");

    same_everywhere(&w, &["forum_posts", "forum_discussions"])?;
    // The hub and B keep what they cannot apply yet; the hub relayed A's changes whole.
    for site in [&w.hub, &w.centers[1]] {
        assert_eq!(
            waiting(site)?,
            (2, 2),
            "mood of n1 and n2, two tags, at site {}",
            site.id
        );
        assert_eq!(
            count(
                site,
                &format!("SELECT COUNT(*) FROM mdl_local_fieldnotes WHERE id = {n2}")
            )?,
            1
        );
    }

    // The hub upgrades; its Moodle writes the mood of n1 before the next pass: newer than A's.
    m.upgrade(&w, 0)?;
    w.hub.sql()?.exec_drop(
        "UPDATE mdl_local_fieldnotes SET mood = 'ready' WHERE id = ?",
        (n1,),
    )?;
    m.sync(&mut w)?;
    step(&started, "hub upgraded and synced");
    assert_eq!(waiting(&w.hub)?, (0, 0));
    for site in [&w.hub, &w.centers[0]] {
        assert_eq!(
            scalar(
                site,
                &format!("SELECT mood FROM mdl_local_fieldnotes WHERE id = {n1}")
            )?
            .as_deref(),
            Some("ready"),
            "the hub's newer edit wins at site {}",
            site.id
        );
        assert_eq!(
            scalar(
                site,
                &format!("SELECT mood FROM mdl_local_fieldnotes WHERE id = {n2}")
            )?
            .as_deref(),
            Some("amazed")
        );
        assert_eq!(
            count(site, "SELECT COUNT(*) FROM mdl_local_fieldnotes_tag")?,
            2
        );
    }

    m.upgrade(&w, 2)?;
    m.sync(&mut w)?;
    assert_all_level(&w)?;
    step(&started, "all sites on 4.5.5+ and identical");
    Ok(())
}
