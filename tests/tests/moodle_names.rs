//! The real-Moodle trial's merge cases, on real Moodle 4.5.0. The worst: while the link is cut, someone signs up as
//! `zawadi` at the hub and someone else as `zawadi` at a center, and each replies in a discussion.
//! Merged, the hub's Zawadi could no longer log in and the discussion page failed at both sites
//! ("Exporter class is missing required related data: author"). Now both accounts survive, the
//! later-born as `zawadi-2`; each logs in with their own password at both sites, the discussion shows
//! each reply with its author and its last change is the later reply's, and the renamed Zawadi has
//! one notification saying so. Then two edits of one post, in each order: the later wins everywhere.
//!
//! The actions go through Moodle's PHP API (`tests/fixtures/moodle-cli/actions.php`); sync is the
//! engine in-process over the hub's and the center's own MariaDB servers.

use std::time::Duration;

use anyhow::{ensure, Result};
use appliance::sync::engine::policy::Policy;
use appliance::sync::schema::rules::Rules;
use appliance::sync::schema::Schema;
use kituo_tests::bed::{exchange, open_site, seeded_node, DB, INCREMENT};
use kituo_tests::moodle::{self, text};
use kituo_tests::testbed::MariaDb;
use serde_json::json;

#[test]
fn two_people_given_one_login_name_at_the_hub_and_a_center_both_log_in_and_post() -> Result<()> {
    moodle::ensure_php()?;
    let dirroot = moodle::code("4.5.0")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let schema = Schema::load_moodle_dir(&dirroot)?;
    let policy = Policy::new(Rules::load(&schema, None)?);

    // The hub: Moodle's installer and a course, before the engine starts (as on the hub's machine).
    let hub_db = MariaDb::start_with(&dir.join("hub"), &MariaDb::sync_site_args(1, INCREMENT, 1))?;
    let hub = moodle::Site::new(&hub_db, DB, &dirroot, &dir.join("hubdata"))?;
    hub.install("Hub")?;
    let course = hub.act("course", &[])?;
    let (course_id, first_post) = (text(&course["course"]), text(&course["firstpost"]));
    let mut hub_site = open_site(1, &hub_db)?;

    // The center: Moodle's tables, then the hub's rows by `sync seed`.
    let mut center = seeded_node(&dir.join("center"), 2, &schema, &policy, &mut hub_site)?;
    let at_center = moodle::Site::new(&center.db, DB, &dirroot, &dir.join("centerdata"))?;

    // The link is cut: Zawadi Hub signs up at the hub and replies; a second later, another Zawadi
    // signs up at the center and replies there.
    let first = text(&hub.act("signup", &["zawadi", "Hub-pass-1", "Hub", &course_id])?);
    hub.act("reply", &[&first, &first_post, "by the hub's Zawadi"])?;
    std::thread::sleep(Duration::from_millis(1100));
    let later = text(&at_center.act("signup", &["zawadi", "Center-pass-2", "Center", &course_id])?);
    at_center.act("reply", &[&later, &first_post, "by the center's Zawadi"])?;
    ensure!(first != later, "ids come from each site's share");

    // The link is back.
    exchange(&mut center.site, 2, &mut hub_site, &policy, 3)?;

    let (first, later): (i64, i64) = (first.parse()?, later.parse()?);
    for site in [&hub, &at_center] {
        let at = &site.database;
        let login = |user: &str, pass: &str| site.act("login", &[user, pass]);
        assert_eq!(login("zawadi", "Hub-pass-1")?, json!(first), "{at}");
        assert_eq!(login("zawadi-2", "Center-pass-2")?, json!(later), "{at}");
        assert_eq!(login("zawadi", "Center-pass-2")?, json!(false), "{at}");
        let shown = site.act("discussion", &[&text(&course["discussion"])])?;
        let shown: Vec<(String, String)> = serde_json::from_value(shown)?;
        for reply in [
            ("Zawadi Hub", "by the hub's Zawadi"),
            ("Zawadi Center", "by the center's Zawadi"),
        ] {
            assert!(
                shown
                    .iter()
                    .any(|(a, m)| a == reply.0 && m.contains(reply.1)),
                "{at}: {reply:?} not in {shown:?}"
            );
        }
        assert_eq!(site.act("unread", &[&later.to_string()])?, json!(1), "{at}");
        // The discussion's last change is the later reply's: its time with its author.
        let pair = site.sql(&format!(
            "SELECT d.timemodified = p.modified AND d.usermodified = p.userid
             FROM mdl_forum_discussions d JOIN mdl_forum_posts p ON p.discussion = d.id
             WHERE d.id = {} AND p.userid = {later}",
            text(&course["discussion"])
        ))?;
        assert_eq!(
            pair.trim(),
            "1",
            "{at}: the last-modified pair is the later reply's"
        );
    }
    // Two edits of the first post with the link cut, in each order: the later edit wins at both
    // sites, although one site's edit is captured only after the other's has arrived (the trial:
    // "the center's older text at both sites").
    let sites = [("the hub", &hub), ("the center", &at_center)];
    let admin = hub.sql("SELECT id FROM mdl_user WHERE username = 'admin'")?;
    let admin = admin.trim();
    for (first, later) in [(0, 1), (1, 0)] {
        let edit = |i: usize, when: &str| {
            let text = format!("Edited {when}, at {}.", sites[i].0);
            sites[i]
                .1
                .act("edit", &[admin, &first_post, &text])
                .map(|_| text)
        };
        edit(first, "first")?;
        std::thread::sleep(Duration::from_millis(1100));
        let last = edit(later, "later")?;
        exchange(&mut center.site, 2, &mut hub_site, &policy, 2)?;
        for (name, site) in sites {
            let message = site.sql(&format!(
                "SELECT message FROM mdl_forum_posts WHERE id = {first_post}"
            ))?;
            ensure!(
                message.contains(&last),
                "{name} holds {message}, not {last}"
            );
        }
    }
    let told = hub.sql("SELECT useridto, subject FROM mdl_notifications ORDER BY id")?;
    ensure!(
        told.contains(&format!("{later}\tYour login name is now zawadi-2")),
        "{told}"
    );
    ensure!(
        told == at_center.sql("SELECT useridto, subject FROM mdl_notifications ORDER BY id")?,
        "the center holds the hub's notifications, once"
    );
    Ok(())
}
