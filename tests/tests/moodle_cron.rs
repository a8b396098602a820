//! Cron at every site, on real Moodle 4.5.0: a hub and two centers, each with a subscriber of one
//! forum who subscribed there and a reply written there. The trial found every recipient notified of
//! each post once per site that held it, half of the mails linking to the other site. Now a post's
//! notifications are sent by the site where it was written; it arrives everywhere else as mailed, and
//! the notifications travel like any other row: each subscriber has one per post, at every site.
//! Then Moodle's whole cron runs at a center, and `sync verify` still finds nothing between it and
//! the hub: what cron keeps per site stays per site.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use appliance::sync::engine::policy::Policy;
use appliance::sync::engine::site::Site;
use appliance::sync::schema::rules::Rules;
use appliance::sync::schema::Schema;
use appliance::sync::verify::{verify, Options};
use kituo_tests::bed::{exchange, open_site_with, seeded_node, Direct, Node, DB, INCREMENT};
use kituo_tests::moodle::{self, text};
use kituo_tests::testbed::MariaDb;

/// Every center exchanges with the hub, twice round, so that each has what the others sent.
fn sync_all(hub: &mut Site, centers: &mut [(u32, Site)], policy: &Policy) -> Result<()> {
    for _ in 0..2 {
        for (id, center) in centers.iter_mut() {
            exchange(center, *id, hub, policy, 1)?;
        }
    }
    Ok(())
}

/// The forum notifications a site holds: (recipient, post) -> how many.
fn notified(site: &moodle::Site) -> Result<BTreeMap<(String, String), u32>> {
    let rows = site.sql(
        "SELECT useridto, SUBSTRING_INDEX(contexturl, '#p', -1), COUNT(*) FROM mdl_notifications
         WHERE component = 'mod_forum' AND eventtype = 'posts' GROUP BY 1, 2",
    )?;
    let mut out = BTreeMap::new();
    for line in rows.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if let [user, post, n] = cols[..] {
            out.insert((user.to_owned(), post.to_owned()), n.parse()?);
        }
    }
    Ok(out)
}

#[test]
fn each_post_is_notified_once_and_a_center_running_cron_stays_identical() -> Result<()> {
    moodle::ensure_php()?;
    let dirroot = moodle::code("4.5.0")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let schema = Schema::load_moodle_dir(&dirroot)?;
    let policy = Policy::new(Rules::load(&schema, None)?);

    let hub_db = MariaDb::start_with(&dir.join("hub"), &MariaDb::sync_site_args(1, INCREMENT, 1))?;
    let hub = moodle::Site::new(&hub_db, DB, &dirroot, &dir.join("hubdata"))?;
    hub.install("Hub")?;
    // Posts are sent as soon as cron sees them, not after the 30 minutes' editing time.
    hub.act("config", &["maxeditingtime", "0"])?;
    let course = hub.act("course", &[])?;
    let (course_id, forum) = (text(&course["course"]), text(&course["forum"]));
    let first_post = text(&course["firstpost"]);
    let mut people = Vec::new();
    for name in ["Baraka", "Neema", "Juma"] {
        let login = name.to_lowercase();
        let id = hub.act("signup", &[&login, "Student-pass-1", name, &course_id])?;
        people.push(text(&id));
    }
    let mut hub_site = open_site_with(1, &hub_db, Some(hub.engine_moodle()))?;

    // The centers' servers, then their Moodle and their engines (which borrow nothing of them).
    let mut dbs = Vec::new();
    for id in [2, 3] {
        let center = dir.join(format!("center{id}"));
        let Node { db, .. } = seeded_node(&center, id, &schema, &policy, &mut hub_site)?;
        dbs.push((id, db));
    }
    let mut at = Vec::new();
    let mut centers = Vec::new();
    for (id, db) in &dbs {
        let site = moodle::Site::new(db, DB, &dirroot, &dir.join(format!("center{id}data")))?;
        centers.push((*id, open_site_with(*id, db, Some(site.engine_moodle()))?));
        at.push(site);
    }
    let sites = [&hub, &at[0], &at[1]];

    // Each person subscribes at their own site, then replies there.
    for (person, site) in people.iter().zip(sites) {
        site.act("subscribe", &[person, &forum])?;
    }
    sync_all(&mut hub_site, &mut centers, &policy)?;
    let mut posts = vec![first_post.clone()];
    for (person, site) in people.iter().zip(sites) {
        let at = &site.database;
        let made = site.act("reply", &[person, &first_post, &format!("written at {at}")])?;
        posts.push(text(&made));
    }
    sync_all(&mut hub_site, &mut centers, &policy)?;

    // Every site's cron, as its timer runs it: the forum's task queues one task per recipient.
    std::thread::sleep(Duration::from_millis(1100));
    for site in sites {
        site.run(
            "admin/cli/scheduled_task.php",
            &[r"--execute=\mod_forum\task\cron_task"],
        )?;
        site.run("admin/cli/adhoc_task.php", &["--execute"])?;
    }
    sync_all(&mut hub_site, &mut centers, &policy)?;

    // One notification per post for each subscriber (their own posts included, as Moodle does),
    // at every site.
    let mut want = BTreeMap::new();
    for person in &people {
        for post in &posts {
            want.insert((person.clone(), post.clone()), 1);
        }
    }
    for site in sites {
        let got = notified(site)?;
        ensure!(
            got == want,
            "{}: notifications (recipient, post) -> count:\n{got:?}\nwanted\n{want:?}",
            site.database
        );
    }

    // Moodle's whole cron at a center, then its changes to the hub: nothing differs.
    // (Without its default three minutes of waiting for more work.)
    at[0].run("admin/cli/cron.php", &["--keep-alive=0"])?;
    sync_all(&mut hub_site, &mut centers, &policy)?;
    for ((id, center), site) in centers.iter_mut().zip(&at) {
        let mut reference = Direct {
            hub: &mut hub_site,
            policy: &policy,
            center: *id,
        };
        let report = verify(center, &policy, &mut reference, &Options::default())?;
        if !report.identical() {
            // The settings the center made itself: what its cron wrote.
            let own = format!(
                "SELECT 'core', name, value FROM mdl_config WHERE id % {INCREMENT} = {id} UNION ALL
                 SELECT plugin, name, value FROM mdl_config_plugins WHERE id % {INCREMENT} = {id}"
            );
            let own = site.sql(&own)?;
            bail!("center {id} differs from the hub:\n{report}\nits own settings:\n{own}");
        }
    }
    Ok(())
}
