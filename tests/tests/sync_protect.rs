//! The hub refuses what a center may not change (a site administrator's account, a role at the system
//! context, the hub's own tables), reports it, and answers with the hub's version of the row, which
//! puts the offending center back in step. Real MariaDB servers with the whole Moodle 4.5 schema.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use appliance::sync::engine::change::{Change, Op, Row, Value};
use appliance::sync::engine::store;
use appliance::sync::exchange::hub;
use kituo_tests::bed::{world, Node, World};
use mysql::prelude::Queryable;

fn text(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

fn now_stamp() -> u64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    millis << 16
}

type UserRow = (i64, String, String, String, String);

fn user(node: &Node, id: i64) -> Result<Option<UserRow>> {
    Ok(node.sql()?.exec_first(
        "SELECT id, username, password, email, firstname FROM mdl_user WHERE id = ?",
        (id,),
    )?)
}

/// A row's clock as the merge keeps it: born, and the stamps of columns written since.
fn clock(node: &Node, table: &str, id: i64) -> Result<Option<(u64, u32, Vec<u8>)>> {
    Ok(node.sql()?.exec_first(
        "SELECT born_hlc, born_site, cols FROM kituo_sync.clock WHERE tbl = ? AND row_id = ?",
        (table, id),
    )?)
}

/// Settings by name (the seed's config rows got each site's own auto-increment id).
fn settings(node: &Node) -> Result<Vec<(String, String)>> {
    Ok(node
        .sql()?
        .query("SELECT name, value FROM mdl_config ORDER BY name")?)
}

fn same(w: &World, tables: &[&str]) -> Result<()> {
    for table in tables {
        w.assert_same_everywhere(table)?;
    }
    for c in &w.centers {
        ensure!(
            settings(c)? == settings(&w.hub)?,
            "config differs at center {}",
            c.id
        );
    }
    Ok(())
}

const TABLES: &[&str] = &[
    "user",
    "forum_posts",
    "role_assignments",
    "auth_oauth2_linked_login",
];

#[test]
fn a_center_cannot_take_over_the_admin_account_and_is_put_back_in_step() -> Result<()> {
    let started = Instant::now();
    let mut w = world("kituo-protect", 2)?;
    // The system context, made by Moodle's installer at the hub.
    w.hub.sql()?.query_drop(
        "INSERT INTO mdl_context (id, contextlevel, instanceid, path, depth) VALUES (1, 10, 0, '/1', 1)",
    )?;
    w.sync_all()?;
    let admin = user(&w.hub, 2)?;
    let hub_settings = settings(&w.hub)?;
    eprintln!("{:>6.1} s  world ready", started.elapsed().as_secs_f64());

    // A stolen card at center A: the admin's password and email, a site-wide manager role, the
    // attacker's OAuth 2 account linked to the admin; and ordinary work made at the same time.
    let a = &w.centers[0];
    let mut c = a.sql()?;
    c.query_drop(
        "UPDATE mdl_user SET password = '$2y$10$stolen', email = 'evil@example.org' WHERE id = 2",
    )?;
    c.query_drop("UPDATE mdl_user SET firstname = 'Amina K.' WHERE id = 3")?;
    c.query_drop("UPDATE mdl_forum_posts SET message = 'Edited at A' WHERE id = 1")?;
    c.query_drop(
        "INSERT INTO mdl_role_assignments (roleid, contextid, userid, timemodified, modifierid, component)
         VALUES (1, 1, 4, 6000, 4, ''), (5, 30, 4, 6000, 3, '')",
    )?;
    c.query_drop(
        "INSERT INTO mdl_auth_oauth2_linked_login (timecreated, timemodified, usermodified, userid,
             issuerid, username, email, confirmtoken)
         VALUES (6000, 6000, 2, 2, 1, 'mallory', 'mallory@mail.example', '')",
    )?;
    // A forged push for a hub-only table, from a card that is not even one of ours.
    let siteadmins: i64 = w
        .hub
        .sql()?
        .query_first("SELECT id FROM mdl_config WHERE name = 'siteadmins'")?
        .unwrap_or(0);
    let forged = vec![
        Change {
            origin: 9,
            seq: 1,
            hlc: now_stamp(),
            table: "config".into(),
            id: siteadmins,
            op: Op::Update(Row::from([("value".to_string(), text("2,4"))])),
        },
        Change {
            origin: 9,
            seq: 2,
            hlc: now_stamp(),
            table: "config".into(),
            id: 7777,
            op: Op::Insert(Row::from([
                ("id".to_string(), Value::Int(7777)),
                ("name".to_string(), text("forged")),
                ("value".to_string(), text("1")),
            ])),
        },
    ];
    let receipt = hub::accept(&mut w.hub.site, &w.policy, 9, &forged)?;
    assert_eq!((receipt.acked, receipt.rejected), (2, 2));
    // The hub answered each with its own state, stamped after the forged change.
    let restoring: Vec<Vec<u8>> = w.hub.sql()?.query(
        "SELECT data FROM kituo_sync.log WHERE origin = 1 AND tbl = 'config' ORDER BY lseq",
    )?;
    let restoring: Vec<Change> = restoring
        .iter()
        .map(|d| store::decode_logged(d))
        .collect::<Result<_>>()?;
    assert_eq!(restoring.len(), 2, "{restoring:#?}");
    assert_eq!(
        restoring[0].op,
        Op::Update(Row::from([("value".to_string(), text("2"))]))
    );
    assert_eq!((&restoring[1].op, restoring[1].id), (&Op::Delete, 7777));
    for (r, f) in restoring.iter().zip(&forged) {
        assert!(r.hlc > f.hlc && r.id == f.id, "{r:?} after {f:?}");
    }
    let again = hub::accept(&mut w.hub.site, &w.policy, 9, &forged)?;
    assert_eq!(
        (again.acked, again.rejected),
        (2, 0),
        "a resend is refused once"
    );
    w.sync_all()?;
    eprintln!(
        "{:>6.1} s  refused, restored, synced",
        started.elapsed().as_secs_f64()
    );

    // The hub kept its state, and every site holds it again.
    assert_eq!(user(&w.hub, 2)?, admin);
    assert_eq!(settings(&w.hub)?, hub_settings);
    assert_eq!(user(&w.centers[0], 2)?, admin, "A's admin row is back");
    let amina = user(&w.hub, 3)?.map(|u| u.4);
    assert_eq!(amina.as_deref(), Some("Amina K."));
    let posts = w.hub.dump("forum_posts")?;
    ensure!(format!("{posts:?}").contains("Edited at A"), "{posts:?}");
    let system_roles: u64 = w
        .centers
        .iter()
        .chain([&w.hub])
        .map(|n| -> Result<u64> {
            let n: Option<u64> = n
                .sql()?
                .query_first("SELECT COUNT(*) FROM mdl_role_assignments WHERE contextid = 1")?;
            Ok(n.unwrap_or(0))
        })
        .sum::<Result<u64>>()?;
    assert_eq!(system_roles, 0, "the system role is gone everywhere");
    assert_eq!(w.hub.dump("role_assignments")?.len(), 1, "the course role");
    assert!(w.hub.dump("auth_oauth2_linked_login")?.is_empty());
    same(&w, TABLES)?;
    // The restoring change left the same clock everywhere: later merges decide alike.
    let hub_clock = clock(&w.hub, "user", 2)?;
    ensure!(hub_clock.is_some());
    for c in &w.centers {
        assert_eq!(clock(c, "user", 2)?, hub_clock, "at center {}", c.id);
    }

    // The report.
    let report = hub::rejections(w.hub.site.conn(), 10)?;
    let centers: Vec<(u32, u64)> = report.iter().map(|r| (r.center, r.count)).collect();
    assert_eq!(centers, [(2, 3), (9, 2)]);
    let reasons: Vec<String> = report[0]
        .latest
        .iter()
        .map(|r| format!("{} {}: {}", r.table, r.id, r.reason))
        .collect();
    for want in [
        "user 2 is a site administrator",
        "is at the system context",
        "belongs to site administrator 2",
    ] {
        ensure!(
            reasons.iter().any(|r| r.contains(want)),
            "{want:?} not in {reasons:#?}"
        );
    }
    ensure!(
        report[1]
            .latest
            .iter()
            .all(|r| r.table == "config" && r.reason.contains("hub_to_centers")),
        "{:#?}",
        report[1]
    );

    // Center B deletes the admin: the hub gives the row back, and B takes it over its tombstone.
    w.centers[1]
        .sql()?
        .query_drop("DELETE FROM mdl_user WHERE id = 2")?;
    w.sync_all()?;
    assert_eq!(user(&w.centers[1], 2)?, admin, "B's admin row is back");
    let graves: Option<u64> = w.centers[1].sql()?.query_first(
        "SELECT COUNT(*) FROM kituo_sync.tombstone WHERE tbl = 'user' AND row_id = 2",
    )?;
    assert_eq!(graves, Some(0));
    same(&w, TABLES)?;
    let hub_clock = clock(&w.hub, "user", 2)?;
    for c in &w.centers {
        assert_eq!(clock(c, "user", 2)?, hub_clock, "at center {}", c.id);
    }
    let report = hub::rejections(w.hub.site.conn(), 1)?;
    let centers: Vec<(u32, u64)> = report.iter().map(|r| (r.center, r.count)).collect();
    assert_eq!(centers, [(2, 3), (3, 1), (9, 2)]);
    let b = &report[1].latest;
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].table.as_str(), b[0].id), ("user", 2));
    eprintln!("{:>6.1} s  done", started.elapsed().as_secs_f64());
    Ok(())
}
