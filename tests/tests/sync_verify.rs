//! `sync verify` between a center and the hub, each a real MariaDB with the whole Moodle 4.5 schema
//! (`sync::bed`): a synced world checks identical, drift made behind the engine's back is listed row by
//! row with its kind, repair from the hub makes the center identical, and sync goes on converging on
//! the repaired rows.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Context, Result};
use appliance::sync::exchange::agent;
use appliance::sync::verify::{
    row_hash_sql, verify, Catalog, CatalogRequest, Kind, Options, Reference, Report, RowsReply,
    RowsRequest, SumsReply, SumsRequest,
};
use kituo_tests::bed::{world, Direct, Node, World};
use kituo_tests::testbed::MariaDb;
use mysql::prelude::Queryable;

/// The hub, with a Moodle user editing the center just before the hub's rows arrive for repair.
struct EditDuringRepair<'a> {
    hub: Direct<'a>,
    moodle: mysql::Conn,
    edit: Option<&'static str>,
}

impl Reference for EditDuringRepair<'_> {
    fn catalog(&mut self, req: &CatalogRequest) -> Result<Catalog> {
        self.hub.catalog(req)
    }
    fn sums(&mut self, req: &SumsRequest) -> Result<SumsReply> {
        self.hub.sums(req)
    }
    fn rows(&mut self, req: &RowsRequest) -> Result<RowsReply> {
        if let Some(sql) = self.edit.take() {
            self.moodle.query_drop(sql)?;
        }
        self.hub.rows(req)
    }
}

fn verify_center(w: &mut World, center: usize, opts: &Options) -> Result<Report> {
    let node = &mut w.centers[center];
    let mut hub = Direct {
        hub: &mut w.hub.site,
        policy: &w.policy,
        center: node.id,
    };
    let started = Instant::now();
    let report = verify(&mut node.site, &w.policy, &mut hub, opts)?;
    println!(
        "verify of site {} took {:.2?}:\n{report}",
        node.id,
        started.elapsed()
    );
    Ok(report)
}

/// Writes that the binlog does not carry, so capture never sees them: drift, not a change.
fn behind_the_engines_back(node: &Node, statements: &[&str]) -> Result<()> {
    let mut c = node.sql()?;
    c.query_drop("SET SESSION sql_log_bin = 0")?;
    for sql in statements {
        c.query_drop(*sql).with_context(|| sql.to_string())?;
    }
    Ok(())
}

fn differences(report: &Report) -> BTreeSet<(String, i64, Kind)> {
    report
        .differences()
        .map(|(table, d)| (table.to_owned(), d.id, d.kind))
        .collect()
}

fn expect(list: &[(&str, i64, Kind)]) -> BTreeSet<(String, i64, Kind)> {
    list.iter()
        .map(|(t, id, kind)| (t.to_string(), *id, *kind))
        .collect()
}

fn text(node: &Node, sql: &str) -> Result<Option<String>> {
    Ok(node.sql()?.query_first(sql)?)
}

fn clock(node: &Node, table: &str, id: i64) -> Result<Option<(u64, u32, Vec<u8>)>> {
    Ok(node.sql()?.exec_first(
        "SELECT born_hlc, born_site, cols FROM kituo_sync.clock WHERE tbl = ? AND row_id = ?",
        (table, id),
    )?)
}

/// `n` posts with dense ids, so that a chunk holds many rows.
fn many_posts(node: &Node, first: i64, n: i64) -> Result<()> {
    let values: Vec<String> = (first..first + n)
        .map(|id| {
            format!("({id}, 1, 1, 2, 1000, 1000, 'Re: Photosynthesis', 'post {id}', '', 1, 1, 5)")
        })
        .collect();
    node.sql()?.query_drop(format!(
        "INSERT INTO mdl_forum_posts (id, discussion, parent, userid, created, modified, subject,
                                      message, attachment, messageformat, wordcount, charcount)
         VALUES {}",
        values.join(", ")
    ))?;
    Ok(())
}

#[test]
fn a_synced_world_is_identical_and_repair_keeps_local_edits() -> Result<()> {
    let mut w = world("kituo-verify-fresh", 1)?;
    w.centers[0]
        .sql()?
        .query_drop("UPDATE mdl_forum_posts SET message = 'edited at the center' WHERE id = 1")?;
    w.hub
        .sql()?
        .query_drop("UPDATE mdl_course SET fullname = 'Biology I' WHERE id = 2")?;
    // Each site's own Moodle version rows ([site_local]) differ by design and are not compared.
    for (node, version) in [(&w.hub, "2024100705.05"), (&w.centers[0], "2024100700.00")] {
        node.sql()?.exec_drop(
            "INSERT INTO mdl_config (name, value) VALUES ('version', ?)",
            (version,),
        )?;
    }
    w.sync_all()?;

    let report = verify_center(&mut w, 0, &Options::default())?;
    assert!(report.identical(), "{report}");
    assert!(
        report.tables.len() > 100,
        "only {} tables checked",
        report.tables.len()
    );
    for table in ["forum_posts", "user", "course", "config", "grade_items"] {
        assert!(report.table(table).is_some(), "{table} was not checked");
    }
    for table in ["logstore_standard_log", "log", "sessions", "cache_flags"] {
        assert!(
            report.table(table).is_none(),
            "{table} is not relayed and must not be checked"
        );
    }
    let posts = report.table("forum_posts").context("forum_posts")?;
    assert_eq!(
        (posts.rows_here, posts.rows_at_hub, posts.chunks),
        (1, 1, 1)
    );
    assert_eq!(report.table("user").map(|t| t.rows_here), Some(3));
    assert!(report.tables_only_here.is_empty() && report.tables_only_at_hub.is_empty());
    assert_eq!((report.backlog, report.unpulled), (0, 0));

    // A Moodle edit the center has not sent yet (not even captured): a difference, counted as backlog,
    // that repair must not overwrite.
    w.centers[0]
        .sql()?
        .query_drop("UPDATE mdl_forum_posts SET subject = 'not sent yet' WHERE id = 1")?;
    let opts = Options {
        repair: true,
        ..Options::default()
    };
    let report = verify_center(&mut w, 0, &opts)?;
    assert_eq!(
        differences(&report),
        expect(&[("forum_posts", 1, Kind::Different)])
    );
    assert_eq!(report.backlog, 1, "{report}");
    let repair = &report.table("forum_posts").context("forum_posts")?.repair;
    assert_eq!((repair.repaired, repair.pending), (0, 1), "{report}");
    assert_eq!(
        text(
            &w.centers[0],
            "SELECT subject FROM mdl_forum_posts WHERE id = 1"
        )?
        .as_deref(),
        Some("not sent yet")
    );

    w.sync_all()?;
    assert!(verify_center(&mut w, 0, &Options::default())?.identical());
    assert_eq!(
        text(&w.hub, "SELECT subject FROM mdl_forum_posts WHERE id = 1")?.as_deref(),
        Some("not sent yet")
    );

    // Drift, and a Moodle edit of the same row after it was compared: repair leaves the row alone.
    behind_the_engines_back(
        &w.centers[0],
        &["UPDATE mdl_forum_posts SET message = 'drift' WHERE id = 1"],
    )?;
    let center = &mut w.centers[0];
    let mut hub = EditDuringRepair {
        moodle: center.sql()?,
        hub: Direct {
            hub: &mut w.hub.site,
            policy: &w.policy,
            center: center.id,
        },
        edit: Some("UPDATE mdl_forum_posts SET subject = 'edited during repair' WHERE id = 1"),
    };
    let report = verify(&mut center.site, &w.policy, &mut hub, &opts)?;
    println!("{report}");
    assert_eq!(
        differences(&report),
        expect(&[("forum_posts", 1, Kind::Different)])
    );
    let repair = &report.table("forum_posts").context("forum_posts")?.repair;
    assert_eq!((repair.repaired, repair.moved), (0, 1), "{report}");
    let post = "SELECT CONCAT(subject, ' / ', message) FROM mdl_forum_posts WHERE id = 1";
    assert_eq!(
        text(&w.centers[0], post)?.as_deref(),
        Some("edited during repair / drift")
    );
    // The edit travels; the drift stays until repaired.
    w.sync_all()?;
    let report = verify_center(&mut w, 0, &opts)?;
    assert_eq!(report.repaired(), 1, "{report}");
    assert!(verify_center(&mut w, 0, &Options::default())?.identical());
    w.assert_same_everywhere("forum_posts")?;
    assert_eq!(
        text(&w.hub, post)?.as_deref(),
        Some("edited during repair / edited at the center")
    );
    Ok(())
}

#[test]
fn drift_is_listed_by_kind_and_repaired_from_the_hub_and_sync_goes_on() -> Result<()> {
    let mut w = world("kituo-verify-drift", 2)?;
    many_posts(&w.hub, 10_001, 3000)?;
    w.hub.sql()?.query_drop(
        "INSERT INTO mdl_user (id, username, firstname, lastname, email, auth, confirmed, mnethostid)
         VALUES (65, 'zawadi', 'Zawadi', 'Okello', 'z@example.org', 'manual', 1, 1)",
    )?;
    w.hub
        .sql()?
        .query_drop("DELETE FROM mdl_forum_posts WHERE id = 12000")?;
    w.sync_all()?;
    let small = Options {
        chunk: 500,
        window: 4,
        ..Options::default()
    };
    let report = verify_center(&mut w, 0, &small)?;
    assert!(report.identical(), "{report}");
    let posts = report.table("forum_posts").context("forum_posts")?;
    // Chunk 0 (the seed post) and chunks 20..=26 (ids 10001..=13000), walked 4 chunks a request.
    assert_eq!((posts.rows_here, posts.chunks), (3000, 8));

    behind_the_engines_back(
        &w.centers[0],
        &[
            "UPDATE mdl_forum_posts SET message = 'tampered' WHERE id = 10500",
            "DELETE FROM mdl_forum_posts WHERE id = 11700",
            "INSERT INTO mdl_forum_posts (id, discussion, parent, userid, subject, message, attachment)
             VALUES (20002, 1, 1, 3, 'stray', 'never synced', '')",
            // Deleted at the hub and here; back here only.
            "INSERT INTO mdl_forum_posts (id, discussion, parent, userid, subject, message, attachment)
             VALUES (12000, 1, 1, 3, 'undead', 'deleted everywhere', '')",
            // NULL at the hub: '' and the text 'NULL' are other values.
            "UPDATE mdl_user SET middlename = '' WHERE id = 3",
            "UPDATE mdl_user SET middlename = 'NULL' WHERE id = 4",
            // The hub's user 65 under another id here: restoring 65 clashes on the unique username
            // until the stray row (a later chunk) is gone.
            "DELETE FROM mdl_user WHERE id = 65",
            "INSERT INTO mdl_user (id, username, firstname, lastname, email, auth, confirmed, mnethostid)
             VALUES (20066, 'zawadi', 'Zawadi', 'Okello', 'z@example.org', 'manual', 1, 1)",
            // A hub_to_centers table.
            "UPDATE mdl_course SET fullname = 'Tampered' WHERE id = 2",
            // A centers_to_hub table: the hub holds other centers' logs, so it is not compared.
            "INSERT INTO mdl_logstore_standard_log (eventname, component, action, target, crud, edulevel,
                 contextid, contextlevel, contextinstanceid, userid, anonymous, timecreated)
             VALUES ('x', 'core', 'viewed', 'course', 'r', 2, 1, 50, 2, 3, 0, 1000)",
        ],
    )?;

    let report = verify_center(&mut w, 0, &small)?;
    let drift = expect(&[
        ("forum_posts", 10500, Kind::Different),
        ("forum_posts", 11700, Kind::Missing),
        ("forum_posts", 12000, Kind::Extra),
        ("forum_posts", 20002, Kind::Extra),
        ("user", 3, Kind::Different),
        ("user", 4, Kind::Different),
        ("user", 65, Kind::Missing),
        ("user", 20066, Kind::Extra),
        ("course", 2, Kind::Different),
    ]);
    assert_eq!(differences(&report), drift, "{report}");
    assert_eq!(report.differing(), 9);
    let posts = report.table("forum_posts").context("forum_posts")?;
    assert_eq!((posts.rows_here, posts.rows_at_hub), (3001, 3000));
    assert_eq!(
        posts.differing_chunks, 4,
        "chunks 21, 23, 24 and 40: {report}"
    );
    assert_eq!(posts.repair.repaired, 0, "nothing repaired unless asked");
    assert!(verify_center(&mut w, 1, &small)?.identical());

    let repair = Options {
        repair: true,
        ..small.clone()
    };
    let report = verify_center(&mut w, 0, &repair)?;
    assert_eq!(differences(&report), drift);
    assert_eq!(report.repaired(), 8, "{report}");
    let users = &report.table("user").context("user")?.repair;
    assert_eq!(users.failed.len(), 1, "{report}");
    assert_eq!(users.failed[0].0, 65);
    assert!(users.failed[0].1.contains("Duplicate entry"), "{report}");
    // Running repair again finishes it.
    let report = verify_center(&mut w, 0, &repair)?;
    assert_eq!(differences(&report), expect(&[("user", 65, Kind::Missing)]));
    assert_eq!(report.repaired(), 1, "{report}");

    let report = verify_center(&mut w, 0, &small)?;
    assert!(report.identical(), "{report}");
    for table in ["forum_posts", "user", "course"] {
        w.assert_same_everywhere(table)?;
    }
    // The repair was not captured: nothing to send back.
    w.centers[0].site.capture(&w.policy)?;
    assert_eq!(agent::backlog(&mut w.centers[0].site)?.changes, 0);
    // The repaired rows carry the hub's clocks, and the re-deleted post its tombstone.
    for id in [10500, 11700] {
        assert_eq!(
            clock(&w.centers[0], "forum_posts", id)?,
            clock(&w.hub, "forum_posts", id)?
        );
        assert!(clock(&w.hub, "forum_posts", id)?.is_some());
    }
    let buried: Option<u64> = w.centers[0].sql()?.query_first(
        "SELECT COUNT(*) FROM kituo_sync.tombstone WHERE tbl = 'forum_posts' AND row_id = 12000",
    )?;
    assert_eq!(buried, Some(1));

    // Moodle goes on: edits at the repaired center, the hub and the other center on repaired rows.
    w.centers[0].sql()?.query_drop(
        "UPDATE mdl_forum_posts SET message = 'edited at A after repair' WHERE id = 10500",
    )?;
    w.centers[0].sql()?.query_drop(
        "UPDATE mdl_forum_posts SET subject = 'restored, edited at A' WHERE id = 11700",
    )?;
    w.hub
        .sql()?
        .query_drop("UPDATE mdl_forum_posts SET subject = 'edited at the hub' WHERE id = 10500")?;
    w.hub
        .sql()?
        .query_drop("UPDATE mdl_course SET fullname = 'Biology II' WHERE id = 2")?;
    w.centers[1]
        .sql()?
        .query_drop("UPDATE mdl_forum_posts SET message = 'edited at B' WHERE id = 11700")?;
    w.centers[1]
        .sql()?
        .query_drop("UPDATE mdl_user SET middlename = 'Neema' WHERE id = 3")?;
    w.sync_all()?;

    for table in ["forum_posts", "user", "course"] {
        w.assert_same_everywhere(table)?;
    }
    let row = |id: i64| -> Result<Option<(String, String)>> {
        Ok(w.hub.sql()?.exec_first(
            "SELECT subject, message FROM mdl_forum_posts WHERE id = ?",
            (id,),
        )?)
    };
    assert_eq!(
        row(10500)?,
        Some((
            "edited at the hub".into(),
            "edited at A after repair".into()
        ))
    );
    assert_eq!(
        row(11700)?,
        Some(("restored, edited at A".into(), "edited at B".into()))
    );
    assert_eq!(
        text(
            &w.centers[0],
            "SELECT fullname FROM mdl_course WHERE id = 2"
        )?
        .as_deref(),
        Some("Biology II")
    );
    assert_eq!(
        text(
            &w.centers[0],
            "SELECT middlename FROM mdl_user WHERE id = 3"
        )?
        .as_deref(),
        Some("Neema")
    );
    assert!(verify_center(&mut w, 0, &small)?.identical());
    assert!(verify_center(&mut w, 1, &small)?.identical());
    Ok(())
}

#[test]
fn the_row_hash_tells_null_empty_text_and_bytes_apart() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kituo-verify-hash")
        .tempdir()?;
    let db = MariaDb::start(dir.path())?;
    let mut c = mysql::Conn::new(db.opts())?;
    c.query_drop("CREATE DATABASE h CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")?;
    c.query_drop(
        "CREATE TABLE h.t (id BIGINT PRIMARY KEY, a VARCHAR(20) NULL, b VARBINARY(20) NULL, n DECIMAL(10,5) NULL)",
    )?;
    c.query_drop(
        "INSERT INTO h.t VALUES
            (1, NULL, NULL, NULL), (2, '', NULL, NULL), (3, 'NULL', NULL, NULL), (4, 'N', NULL, NULL),
            (5, NULL, '', NULL), (6, '', '', NULL), (7, 'a', 'b', NULL), (8, 'a,1:b', NULL, NULL),
            (9, 'ab', '', NULL), (10, NULL, x'00', NULL), (11, NULL, x'0000', NULL),
            (12, NULL, x'ff', NULL), (13, NULL, NULL, 0), (14, NULL, NULL, 1.5), (15, 'é', NULL, NULL)",
    )?;
    let columns: Vec<String> = ["a", "b", "n"].iter().map(|c| c.to_string()).collect();
    let hashes: Vec<(i64, u64)> = c.query(format!(
        "SELECT id, {} FROM h.t ORDER BY id",
        row_hash_sql(&columns)
    ))?;
    let distinct: BTreeSet<u64> = hashes.iter().map(|(_, h)| *h).collect();
    assert_eq!(distinct.len(), 15, "{hashes:?}");

    // The same values give the same hash whatever the column's type: text by its bytes, in a
    // binary column or a text one.
    c.query_drop("CREATE TABLE h.u (id BIGINT PRIMARY KEY, a VARBINARY(20) NULL, b TEXT NULL, n VARCHAR(20))")?;
    c.query_drop("INSERT INTO h.u VALUES (7, 'a', 'b', NULL), (15, x'c3a9', NULL, NULL), (14, NULL, NULL, '1.50000')")?;
    let again: Vec<(i64, u64)> = c.query(format!(
        "SELECT id, {} FROM h.u ORDER BY id",
        row_hash_sql(&columns)
    ))?;
    for (id, hash) in again {
        assert!(hashes.contains(&(id, hash)), "row {id} hashes differently");
    }
    Ok(())
}
