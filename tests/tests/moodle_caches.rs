//! Moodle's caches after sync, on real Moodle 4.5.0. Moodle clears its caches where a change is made;
//! the trial found a center still serving the hub's old settings, a capability the hub had prohibited
//! and old activity names until someone purged its caches. Now the site that applies rows clears what
//! Moodle's own code would have cleared there, and every check below reads through Moodle's API, its
//! caches included, without a purge: settings, a new setting, a prohibited capability, a renamed forum,
//! a new group and its member, at the center; and a group made at the center, at the hub. Each site's
//! course cache revision stays its own, and `sync verify` finds nothing between them.

use anyhow::{ensure, Result};
use appliance::sync::engine::policy::Policy;
use appliance::sync::engine::site::Site;
use appliance::sync::schema::rules::Rules;
use appliance::sync::schema::Schema;
use appliance::sync::verify::{verify, Options};
use kituo_tests::bed::{exchange, open_site_with, seeded_node, Direct, DB, INCREMENT};
use kituo_tests::moodle::{self, text};
use kituo_tests::testbed::MariaDb;
use serde_json::json;

fn sync(center: &mut Site, hub: &mut Site, policy: &Policy) -> Result<()> {
    exchange(center, 2, hub, policy, 2)
}

#[test]
fn what_one_site_changes_is_seen_at_the_other_without_a_purge() -> Result<()> {
    moodle::ensure_php()?;
    let dirroot = moodle::code("4.5.0")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let schema = Schema::load_moodle_dir(&dirroot)?;
    let policy = Policy::new(Rules::load(&schema, None)?);

    let hub_db = MariaDb::start_with(&dir.join("hub"), &MariaDb::sync_site_args(1, INCREMENT, 1))?;
    let hub = moodle::Site::new(&hub_db, DB, &dirroot, &dir.join("hubdata"))?;
    hub.install("Hub")?;
    let course = text(&hub.act("course", &[])?["course"]);
    let student = text(&hub.act("signup", &["amani", "Student-pass-1", "Amani", &course])?);
    let mut hub_site = open_site_with(1, &hub_db, Some(hub.engine_moodle()))?;

    let mut center = seeded_node(&dir.join("center"), 2, &schema, &policy, &mut hub_site)?;
    let at_center = moodle::Site::new(&center.db, DB, &dirroot, &dir.join("centerdata"))?;

    // The center's caches, filled as its pages fill them.
    let reply = "mod/forum:replypost";
    assert_eq!(at_center.act("config", &["maxeditingtime"])?, json!("1800"));
    assert_eq!(
        at_center.act("can", &[&student, reply, &course])?,
        json!(true)
    );
    assert_eq!(at_center.act("forums", &[&course])?, json!(["Questions"]));
    let none = json!({"course": [], "mine": []});
    assert_eq!(at_center.act("groups", &[&course, &student])?, none);

    // What the trial saw, with an engine that leaves Moodle's caches alone: the row arrives, and
    // the center's Moodle still shows the old setting.
    hub.act("config", &["maxeditingtime", "600"])?;
    sync(&mut center.site, &mut hub_site, &policy)?;
    let row = at_center.sql("SELECT value FROM mdl_config WHERE name = 'maxeditingtime'")?;
    assert_eq!(row.trim(), "600");
    assert_eq!(at_center.act("config", &["maxeditingtime"])?, json!("1800"));

    // The engine as the card runs it: what it applies clears what Moodle would have cleared.
    center.site = open_site_with(2, &center.db, Some(at_center.engine_moodle()))?;
    hub.act("config", &["maxeditingtime", "900"])?;
    hub.act("config", &["kituo_fresh", "yes"])?;
    hub.act("prohibit", &["student", reply])?;
    hub.act("rename_forum", &[&course, "Questions and answers"])?;
    hub.act("group", &[&course, "Lab A", &student])?;
    assert_eq!(
        hub.act("groups", &[&course, &student])?,
        json!({"course": ["Lab A"], "mine": ["Lab A"]})
    );
    sync(&mut center.site, &mut hub_site, &policy)?;
    assert_eq!(at_center.act("config", &["maxeditingtime"])?, json!("900"));
    assert_eq!(at_center.act("config", &["kituo_fresh"])?, json!("yes"));
    assert_eq!(
        at_center.act("can", &[&student, reply, &course])?,
        json!(false)
    );
    assert_eq!(
        at_center.act("forums", &[&course])?,
        json!(["Questions and answers"])
    );
    assert_eq!(
        at_center.act("groups", &[&course, &student])?,
        json!({"course": ["Lab A"], "mine": ["Lab A"]})
    );

    // And the other way: a group made at the center, seen at the hub behind its filled caches.
    at_center.act("group", &[&course, "Lab B", &student])?;
    sync(&mut center.site, &mut hub_site, &policy)?;
    assert_eq!(
        hub.act("groups", &[&course, &student])?,
        json!({"course": ["Lab A", "Lab B"], "mine": ["Lab A", "Lab B"]})
    );

    // Each site rebuilt the course's module info itself, under its own revision; nothing of it
    // travelled, and nothing differs.
    let revision = "SELECT cacherev FROM mdl_course WHERE id = ";
    let (at_hub, here) = (
        hub.sql(&format!("{revision}{course}"))?,
        at_center.sql(&format!("{revision}{course}"))?,
    );
    ensure!(
        at_hub.trim() != "0" && here.trim() != "0",
        "both sites rebuilt the course: {at_hub} {here}"
    );
    let mut reference = Direct {
        hub: &mut hub_site,
        policy: &policy,
        center: 2,
    };
    let report = verify(
        &mut center.site,
        &policy,
        &mut reference,
        &Options::default(),
    )?;
    ensure!(report.identical(), "the sites differ:\n{report}");
    Ok(())
}
