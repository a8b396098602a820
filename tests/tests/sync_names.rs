//! Names that stand for a person or a thing ([identities] in the rules): two sites that gave one name
//! to two while cut off keep both, the later-born renamed `name-<site>` at every site; the hub tells
//! the renamed user and the administrators with a Moodle notification, once, and every site keeps the
//! clash for its status page. The real-Moodle trial had merged two people into one account.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use appliance::sync::engine::clash;
use appliance::sync::engine::policy::Policy;
use appliance::sync::schema::rules::{RuleFile, Rules};
use kituo_tests::bed::{world, World};
use mysql::prelude::Queryable;

/// What Moodle's signup writes for a user, and a post by them, at site index `at` (0: the hub).
fn sign_up_and_post(w: &mut World, at: usize, username: &str, password: &str) -> Result<i64> {
    let node = match at {
        0 => &mut w.hub,
        i => &mut w.centers[i - 1],
    };
    let mut c = node.sql()?;
    c.exec_drop(
        "INSERT INTO mdl_user (username, password, firstname, lastname, email, auth, confirmed, mnethostid)
         VALUES (?, ?, 'Zawadi', ?, ?, 'manual', 1, 1)",
        (username, password, password, format!("{password}@example.org")),
    )?;
    let id: i64 = c.query_first("SELECT LAST_INSERT_ID()")?.expect("an id");
    c.exec_drop(
        "INSERT INTO mdl_forum_posts (discussion, parent, userid, created, modified, subject, message)
         VALUES (1, 1, ?, 3000, 3000, 'Re: Photosynthesis', ?)",
        (id, format!("by {password}")),
    )?;
    node.site.capture(&w.policy)?;
    Ok(id)
}

#[test]
fn two_people_given_one_login_name_at_two_sites_stay_two_in_either_order() -> Result<()> {
    // (the site that signs up first, the site that signs up later)
    for (first, later) in [(0usize, 2usize), (2, 0)] {
        let mut w = world(&format!("kituo-sync-names-{first}"), 2)?;
        sign_up_and_post(&mut w, first, "zawadi", "first")?;
        // A second apart: the later signup is born later by its commit's stamp.
        std::thread::sleep(Duration::from_millis(1100));
        let renamed = sign_up_and_post(&mut w, later, "zawadi", "later")?;
        let later_site = if later == 0 {
            1
        } else {
            w.centers[later - 1].id
        };
        w.sync_all()?;
        w.sync_all()?;

        w.assert_same_everywhere("user")?;
        let users: Vec<(i64, String, String)> = w.hub.sql()?.query(
            "SELECT id, username, password FROM mdl_user WHERE username LIKE 'zawadi%' ORDER BY username",
        )?;
        let suffix = format!("zawadi-{later_site}");
        assert_eq!(users.len(), 2, "two people: {users:?}");
        assert_eq!(
            (users[0].1.as_str(), users[0].2.as_str()),
            ("zawadi", "first")
        );
        assert_eq!(
            (users[1].0, users[1].1.as_str(), users[1].2.as_str()),
            (renamed, suffix.as_str(), "later"),
            "the later-born is renamed with its site: {users:?}"
        );
        // Each post still names its own author, at every site.
        w.assert_same_everywhere("forum_posts")?;
        let authors: Vec<(String, String)> = w.centers[1].sql()?.query(
            "SELECT p.message, u.password FROM mdl_forum_posts p JOIN mdl_user u ON u.id = p.userid
             WHERE p.message LIKE 'by %' ORDER BY p.message",
        )?;
        assert_eq!(
            authors,
            [
                ("by first".to_string(), "first".to_string()),
                ("by later".to_string(), "later".to_string())
            ]
        );
        // Told once: the renamed user and the administrator (user 2), the same rows everywhere.
        w.assert_same_everywhere("notifications")?;
        w.assert_same_everywhere("message_popup_notifications")?;
        let told: Vec<(i64, String)> = w
            .hub
            .sql()?
            .query("SELECT useridto, subject FROM mdl_notifications ORDER BY useridto")?;
        assert_eq!(told.len(), 2, "{told:?}");
        assert_eq!(told[0].0, 2);
        assert_eq!(
            told[1],
            (renamed, format!("Your login name is now {suffix}"))
        );
        assert_eq!(w.hub.dump("message_popup_notifications")?.len(), 2);
        // Every site that settled the clash keeps it for its status page.
        for node in std::iter::once(&w.hub).chain(&w.centers) {
            let seen = clash::recent(&mut node.sql()?, 5)?;
            assert_eq!(seen.len(), 1, "site {}: {seen:?}", node.id);
            assert_eq!(
                (seen[0].old.as_str(), seen[0].new.as_str()),
                ("zawadi", suffix.as_str())
            );
            assert_eq!(seen[0].renamed, renamed);
        }
    }
    Ok(())
}

/// Moodle keeps a group's name unique in its course in its forms, not with an index: the engine
/// checks it itself.
#[test]
fn a_group_name_given_at_two_centers_in_one_course_makes_two_groups() -> Result<()> {
    let mut w = world("kituo-sync-names-group", 2)?;
    for (i, center) in w.centers.iter_mut().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        center.sql()?.query_drop(
            "INSERT INTO mdl_groups (courseid, name, description, timecreated, timemodified)
             VALUES (2, 'Team A', '', 5000, 5000)",
        )?;
        center.site.capture(&w.policy)?;
    }
    w.sync_all()?;
    w.sync_all()?;
    w.assert_same_everywhere("groups")?;
    let names: Vec<String> = w
        .hub
        .sql()?
        .query("SELECT name FROM mdl_groups WHERE courseid = 2 ORDER BY name")?;
    assert_eq!(names, ["Team A", "Team A-3"]);
    Ok(())
}

/// A rename at a center to a name the hub has just given a new user: the older row keeps the name.
#[test]
fn renaming_a_user_to_a_name_another_site_just_gave_keeps_both() -> Result<()> {
    let mut w = world("kituo-sync-names-update", 2)?;
    w.hub.sql()?.query_drop(
        "INSERT INTO mdl_user (username, firstname, lastname, email, auth, confirmed, mnethostid)
         VALUES ('asha', 'Asha', 'New', 'asha@example.org', 'manual', 1, 1)",
    )?;
    w.hub.site.capture(&w.policy)?;
    w.centers[0]
        .sql()?
        .query_drop("UPDATE mdl_user SET username = 'asha' WHERE id = 3")?;
    w.centers[0].site.capture(&w.policy)?;
    w.sync_all()?;
    w.sync_all()?;
    w.assert_same_everywhere("user")?;
    let names: Vec<(i64, String)> = w
        .hub
        .sql()?
        .query("SELECT id, username FROM mdl_user WHERE username LIKE 'asha%' ORDER BY id")?;
    assert_eq!(names.len(), 2, "{names:?}");
    // User 3 was seeded before sync began: born first, it keeps the name it was given.
    assert_eq!(names[0], (3, "asha".to_string()));
    assert_eq!(names[1].1, "asha-1");
    Ok(())
}

/// Courses are the hub's (hub_to_centers): a course a center made for itself gives way when the hub
/// makes one with the same short name, and is renamed with the center's number there.
#[test]
fn a_centers_own_course_gives_its_short_name_to_the_hubs() -> Result<()> {
    let mut w = world("kituo-sync-names-course", 1)?;
    w.centers[0].sql()?.query_drop(
        "INSERT INTO mdl_course (category, fullname, shortname, summary) VALUES (1, 'Local chemistry', 'CHEM', '')",
    )?;
    w.centers[0].site.capture(&w.policy)?;
    w.hub.sql()?.query_drop(
        "INSERT INTO mdl_course (category, fullname, shortname, summary) VALUES (1, 'Chemistry', 'CHEM', '')",
    )?;
    w.sync_all()?;
    let at_center: Vec<(String, String)> = w.centers[0].sql()?.query(
        "SELECT fullname, shortname FROM mdl_course WHERE shortname LIKE 'CHEM%' ORDER BY shortname",
    )?;
    assert_eq!(
        at_center,
        [
            ("Chemistry".to_string(), "CHEM".to_string()),
            ("Local chemistry".to_string(), "CHEM-2".to_string())
        ]
    );
    let at_hub: Vec<String> = w
        .hub
        .sql()?
        .query("SELECT shortname FROM mdl_course WHERE shortname LIKE 'CHEM%'")?;
    assert_eq!(at_hub, ["CHEM"], "the center's own course stays there");
    Ok(())
}

/// A university whose centers make courses too (`[both] course` in the site's override file): two
/// centers that give one short name to two courses keep both.
#[test]
fn a_course_short_name_given_at_two_centers_makes_two_courses_where_courses_sync_both_ways(
) -> Result<()> {
    let mut w = world("kituo-sync-names-courses", 2)?;
    let overrides = RuleFile::parse(
        Path::new("/etc/kituo/sync-overrides.ini"),
        "[both]\ncourse = centers make their own courses\n",
    )?;
    w.policy = Policy::new(Rules::derive(
        &w.schema,
        RuleFile::builtin()?,
        Some(overrides),
    ));
    for (i, center) in w.centers.iter_mut().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        center.sql()?.exec_drop(
            "INSERT INTO mdl_course (category, fullname, shortname, summary) VALUES (1, ?, 'PHY101', '')",
            (format!("Physics at center {}", center.id),),
        )?;
        center.site.capture(&w.policy)?;
    }
    w.sync_all()?;
    w.sync_all()?;
    w.assert_same_everywhere("course")?;
    let courses: Vec<(String, String)> = w.hub.sql()?.query(
        "SELECT shortname, fullname FROM mdl_course WHERE shortname LIKE 'PHY101%' ORDER BY shortname",
    )?;
    assert_eq!(
        courses,
        [
            ("PHY101".to_string(), "Physics at center 2".to_string()),
            ("PHY101-3".to_string(), "Physics at center 3".to_string())
        ]
    );
    Ok(())
}
