//! A Moodle upgrade while syncing, on real Moodle: the hub upgrades 4.5.0 → 4.5.6 with Moodle's own
//! `admin/cli/upgrade.php` while a center still on 4.5.0 keeps syncing both ways; then the center
//! upgrades the same way, converges, and `sync verify` finds nothing between them.
//!
//! Between the two upgrades the center must stay a working 4.5.0 site: its database may not become
//! "newer" than its code (the versions each upgrade writes stay per site), and what the hub's new
//! columns hold (`oauth2_issuer.systememail`) waits at the center, parked, until its own upgrade has
//! made the column. Each site's engine reads the release it runs (its rules from that code).

use anyhow::{ensure, Result};
use appliance::sync::engine::policy::Policy;
use appliance::sync::engine::site::Site;
use appliance::sync::exchange::agent;
use appliance::sync::schema::rules::Rules;
use appliance::sync::schema::Schema;
use appliance::sync::verify::{verify, Options};
use kituo_tests::bed::{open_site_with, seeded_node, Direct, DB, INCREMENT};
use kituo_tests::moodle::{self, text};
use kituo_tests::testbed::MariaDb;
use serde_json::json;

/// A release's rules, as the engine of a site running that code derives them.
fn policy(dirroot: &std::path::Path) -> Result<Policy> {
    Ok(Policy::new(Rules::load(
        &Schema::load_moodle_dir(dirroot)?,
        None,
    )?))
}

/// Three exchanges of the center with the hub, each side under its own release's rules.
fn sync(center: &mut Site, at_center: &Policy, hub: &mut Site, at_hub: &Policy) -> Result<()> {
    for _ in 0..3 {
        let mut link = Direct {
            hub: &mut *hub,
            policy: at_hub,
            center: 2,
        };
        agent::sync_once(center, at_center, &mut link, 500)?;
    }
    Ok(())
}

/// The version Moodle's code of this site says it runs, as stored in its own database.
fn version(site: &moodle::Site) -> Result<String> {
    Ok(site
        .sql("SELECT value FROM mdl_config WHERE name = 'version'")?
        .trim()
        .to_owned())
}

/// Whether the site's code wants an upgrade of its database (Moodle's own check, exit code 2).
fn upgrade_pending(site: &moodle::Site) -> Result<bool> {
    let out = site.php("admin/cli/upgrade.php", &["--is-pending"])?;
    match out.status.code() {
        Some(0) => Ok(false),
        Some(2) => Ok(true),
        _ => anyhow::bail!(
            "upgrade.php --is-pending at {}: {}\n{}",
            site.database,
            out.status,
            moodle::tail(&out.stdout)
        ),
    }
}

/// What a discussion shows, through Moodle's exporters: (author, message) pairs.
fn shown(site: &moodle::Site, discussion: &str) -> Result<Vec<(String, String)>> {
    Ok(serde_json::from_value(
        site.act("discussion", &[discussion])?,
    )?)
}

#[test]
fn the_hub_upgrades_while_a_center_on_the_old_release_syncs_then_the_center_catches_up(
) -> Result<()> {
    moodle::ensure_php()?;
    let (old, new) = (moodle::code("4.5.0")?, moodle::code("4.5.6")?);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let old_schema = Schema::load_moodle_dir(&old)?;
    let (old_rules, new_rules) = (policy(&old)?, policy(&new)?);

    let hub_db = MariaDb::start_with(&dir.join("hub"), &MariaDb::sync_site_args(1, INCREMENT, 1))?;
    let hub = moodle::Site::new(&hub_db, DB, &old, &dir.join("hubdata"))?;
    hub.install("Hub")?;
    let course = hub.act("course", &[])?;
    let (course_id, first_post) = (text(&course["course"]), text(&course["firstpost"]));
    let discussion = text(&course["discussion"]);
    let student = text(&hub.act("signup", &["amani", "Student-pass-1", "Amani", &course_id])?);
    let admin = hub.sql("SELECT id FROM mdl_user WHERE username = 'admin'")?;
    let admin = admin.trim().to_owned();
    let mut hub_site = open_site_with(1, &hub_db, Some(hub.engine_moodle()))?;

    let mut center = seeded_node(
        &dir.join("center"),
        2,
        &old_schema,
        &old_rules,
        &mut hub_site,
    )?;
    let at_center = moodle::Site::new(&center.db, DB, &old, &dir.join("centerdata"))?;
    center.site = open_site_with(2, &center.db, Some(at_center.engine_moodle()))?;
    let old_version = version(&at_center)?;
    let functions = "SELECT COUNT(*) FROM mdl_external_services_functions";
    assert_eq!(
        at_center.sql(functions)?,
        hub.sql(functions)?,
        "the seed copied the built-in web services' functions"
    );

    // Central IT upgrades the hub's code and runs Moodle's upgrade; the hub's engine runs the new
    // code from then on.
    let hub = hub.with_code(&new);
    ensure!(upgrade_pending(&hub)?, "4.5.6's code sees a 4.5.0 database");
    hub.upgrade()?;
    let new_version = version(&hub)?;
    ensure!(new_version != old_version, "the upgrade wrote its version");
    hub_site = open_site_with(1, &hub_db, Some(hub.engine_moodle()))?;

    // Work at both sites while they run different releases: a reply at each, and at the hub an
    // OAuth 2 service with a system account's address (a column 4.5.0 does not have).
    hub.act("reply", &[&admin, &first_post, "from the upgraded hub"])?;
    let issuer = text(&hub.act("issuer", &["Kituo accounts", "kituo@example.org"])?);
    at_center.act(
        "reply",
        &[&student, &first_post, "from the center on 4.5.0"],
    )?;
    sync(&mut center.site, &old_rules, &mut hub_site, &new_rules)?;

    // The center is still a sound 4.5.0 site with everything both sites wrote.
    assert_eq!(version(&at_center)?, old_version, "the center's version");
    ensure!(
        !upgrade_pending(&at_center)?,
        "4.5.0's code at the center wants no upgrade"
    );
    assert_eq!(
        at_center.act("login", &["amani", "Student-pass-1"])?,
        json!(student.parse::<i64>()?)
    );
    for site in [&hub, &at_center] {
        let shown = shown(site, &discussion)?;
        for message in ["from the upgraded hub", "from the center on 4.5.0"] {
            ensure!(
                shown.iter().any(|(_, m)| m.contains(message)),
                "{}: {message:?} not in {shown:?}",
                site.database
            );
        }
    }
    let named = at_center.sql(&format!(
        "SELECT name FROM mdl_oauth2_issuer WHERE id = {issuer}"
    ))?;
    assert_eq!(
        named.trim(),
        "Kituo accounts",
        "the issuer, without the new column"
    );

    // The center's turn: the same upgrade there, and its engine on the new code.
    let at_center = at_center.with_code(&new);
    at_center.upgrade()?;
    center.site = open_site_with(2, &center.db, Some(at_center.engine_moodle()))?;
    at_center.act(
        "reply",
        &[&student, &first_post, "from the center on 4.5.6"],
    )?;
    sync(&mut center.site, &new_rules, &mut hub_site, &new_rules)?;

    assert_eq!(version(&at_center)?, new_version);
    ensure!(!upgrade_pending(&at_center)?, "the center is upgraded");
    let email = "SELECT systememail FROM mdl_oauth2_issuer WHERE id = ";
    assert_eq!(
        at_center.sql(&format!("{email}{issuer}"))?.trim(),
        "kituo@example.org",
        "the parked value, replayed once the column exists"
    );
    ensure!(
        shown(&hub, &discussion)?
            .iter()
            .any(|(_, m)| m.contains("from the center on 4.5.6")),
        "the upgraded center's reply reached the hub"
    );
    // The center's upgrade gave the settings that show only once an OAuth 2 service exists their
    // defaults; the hub's ran before its service did, so there they wait on the admin's "New
    // settings" page. Until the admin saves it they are the center's own; then the hub's win.
    let setting = "SELECT id FROM mdl_config WHERE name = 'smtpoauthservice'";
    ensure!(
        hub.sql(setting)?.trim().is_empty() && !at_center.sql(setting)?.trim().is_empty(),
        "only the center's upgrade wrote the new setting"
    );
    ensure!(
        hub.act("new_settings", &[])?.as_u64() >= Some(2),
        "the hub's admin saved the new settings"
    );
    sync(&mut center.site, &new_rules, &mut hub_site, &new_rules)?;
    assert_eq!(at_center.sql(setting)?, hub.sql(setting)?, "the hub's row");
    let mut reference = Direct {
        hub: &mut hub_site,
        policy: &new_rules,
        center: 2,
    };
    let report = verify(
        &mut center.site,
        &new_rules,
        &mut reference,
        &Options::default(),
    )?;
    ensure!(report.identical(), "the sites differ:\n{report}");
    Ok(())
}
