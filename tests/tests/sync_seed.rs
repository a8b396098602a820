//! A center joining the university: `appliance sync schema-sql` and `appliance sync seed` fill a new
//! card's empty Moodle database from `appliance hub` over HTTP, while the hub's Moodle goes on writing.
//! Afterwards the center verifies identical, holds the per-site rows Moodle needs (its cron schedule,
//! the installed versions) but nothing the hub keeps for itself, sends its own work, and a new card for a
//! site whose old card synced has its changes taken, not dropped as replays. A center out of the link's
//! reach is seeded the same way from a stick (`sync export --for N --seed`, `sync import`), files and all,
//! even when the stick was half-copied the first time.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use appliance::sync::engine::change::Change;
use appliance::sync::exchange::agent::Link;
use appliance::sync::exchange::hub::{Page, Receipt};
use appliance::sync::files::pool::Found;
use appliance::sync::seed::{self, CopyReply, CopyRequest, PageReply, PageRequest, Source};
use appliance::sync::verify::{
    Catalog, CatalogRequest, Reference, RowsReply, RowsRequest, SumsReply, SumsRequest,
};
use kituo_tests::bed::files::{self, backups_root, files_section, Backup};
use kituo_tests::bed::services::{center_config, engine_account, AgentOptions, HubService};
use kituo_tests::bed::{bare_node, reply, unseeded_node, world, Direct, Node, World};
use kituo_tests::workload::TWO_WAY_TABLES;
use mysql::prelude::Queryable;

fn appliance(args: &[&str], config: &Path) -> Result<Output> {
    Command::new(kituo_tests::appliance_binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .context("cannot run appliance")
}

fn ok(out: Output) -> Result<String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "appliance failed:\n{text}");
    Ok(text)
}

/// The hub's own rows that never travel by sync: a seed copies the first four kinds, never the last.
const HUB_INSTALL: &[&str] = &[
    "INSERT INTO mdl_config (id, name, value) VALUES (2, 'version', '2024100700'),
            (3, 'release', '4.5 (Build: 20241007)')",
    "INSERT INTO mdl_config_plugins (id, plugin, name, value) VALUES (1, 'mod_forum', 'version', '2024100700'),
            (2, 'mod_forum', 'maxbytes', '512000')",
    "INSERT INTO mdl_task_scheduled (id, component, classname, minute, hour, day, month, dayofweek)
     VALUES (1, 'moodle', '\\\\core\\\\task\\\\session_cleanup_task', '*', '*', '*', '*', '*'),
            (2, 'mod_forum', '\\\\mod_forum\\\\task\\\\cron_task', '*/5', '*', '*', '*', '*')",
    "INSERT INTO mdl_mnet_host (id, wwwroot, ip_address, name, public_key) VALUES
            (1, 'https://moodle.example.ac.tz', '', 'Hub', ''), (2, '', '', 'All Hosts', '')",
    "INSERT INTO mdl_sessions (id, sid, userid, timecreated, timemodified) VALUES (1, 'hub-session', 2, 0, 0)",
];

/// Makes `node`'s Moodle tables as first boot does: `schema-sql` piped into the server as root.
fn create_tables(node: &Node, config: &Path) -> Result<()> {
    let sql = ok(Command::new(kituo_tests::appliance_binary())
        .args(["sync", "schema-sql", "--config"])
        .arg(config)
        .stderr(Stdio::inherit())
        .output()?)?;
    let mut client = Command::new("mariadb")
        .arg(format!("--socket={}", node.db.socket.display()))
        .args(["--user=root", "moodle"])
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run the mariadb client")?;
    use std::io::Write;
    client
        .stdin
        .take()
        .context("no stdin")?
        .write_all(sql.as_bytes())?;
    ensure!(client.wait()?.success(), "the schema SQL failed");
    Ok(())
}

fn count(node: &Node, sql: &str) -> Result<u64> {
    Ok(node.sql()?.query_first(sql)?.unwrap_or(0))
}

/// The rows of `table` at `a` and `b` are the same.
fn same(a: &Node, b: &Node, table: &str) -> Result<()> {
    ensure!(
        a.dump(table)? == b.dump(table)?,
        "{table} differs between site {} and site {}",
        a.id,
        b.id
    );
    Ok(())
}

struct Card {
    node: Node,
    config: std::path::PathBuf,
}

/// A new card for `site`: an empty database, the engine's account, an appliance.ini for the hub with
/// `extra` sections.
fn new_card(w: &World, hub: &HubService, site: u32, secret: &Path, extra: &str) -> Result<Card> {
    let dir = w.dir.path().join(format!("card{site}"));
    let node = bare_node(&dir, site)?;
    let password = engine_account(&node, &dir)?;
    let opts = AgentOptions::new(hub.addr, secret.to_owned());
    let config = center_config(&node, &dir, &opts, &password, extra)?;
    Ok(Card { node, config })
}

/// The hub's own rows that never sync, and a history of posts from the hub and from center 2.
fn university(name: &str) -> Result<World> {
    let mut w = world(name, 1)?;
    {
        let mut hub = w.hub.sql()?;
        for sql in HUB_INSTALL {
            hub.query_drop(*sql).with_context(|| sql.to_string())?;
        }
    }
    for i in 0..20 {
        reply(&w.hub, 3, &format!("hub post {i}"), 2000 + i)?;
        reply(&w.centers[0], 4, &format!("center 2 post {i}"), 2000 + i)?;
    }
    w.sync_all()?;
    Ok(w)
}

#[test]
fn a_new_center_is_seeded_from_the_hub_while_the_hub_writes() -> Result<()> {
    let mut w = university("kituo-sync-seed")?;
    let exe = kituo_tests::appliance_binary();
    let hub = HubService::start(exe, &w.hub, w.dir.path())?;
    let secret3 = hub.add_center(exe, 3)?;
    let card = new_card(&w, &hub, 3, &secret3, "")?;

    // A seed needs the tables first, and never writes over a database with rows.
    let e = ok(appliance(&["sync", "seed"], &card.config)?).unwrap_err();
    assert!(format!("{e:#}").contains("no Moodle tables"), "{e:#}");
    create_tables(&card.node, &card.config)?;

    // The hub's Moodle keeps writing while the card copies it.
    let writing = AtomicBool::new(true);
    let seeded = std::thread::scope(|s| -> Result<String> {
        let writer = s.spawn(|| -> Result<u64> {
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                reply(&w.hub, 2, &format!("during the seed {n}"), 3000 + n)?;
                n += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
            Ok(n)
        });
        let out = appliance(&["sync", "seed"], &card.config);
        writing.store(false, Ordering::Relaxed);
        let written = writer.join().expect("the writer panicked")?;
        println!("{written} posts written at the hub during the seed");
        ok(out?)
    })?;
    println!("{seeded}");
    assert!(seeded.contains("relayed rows"), "{seeded}");

    // Sync waits for first boot's record that the database is made ([moodle] is the file's last
    // section), and goes once it is there.
    let ready = w.dir.path().join("moodle-installed");
    let mut ini = std::fs::read_to_string(&card.config)?;
    ini.push_str(&format!("ready_file = {}\n", ready.display()));
    std::fs::write(&card.config, ini)?;
    let e = ok(appliance(&["sync", "verify"], &card.config)?).unwrap_err();
    assert!(
        format!("{e:#}").contains("waiting for Moodle's database"),
        "{e:#}"
    );
    std::fs::write(&ready, "2026-11-22T00:00:00Z\n")?;

    // Sync from where the seed left: everything the hub wrote meanwhile arrives, once.
    let verified = ok(appliance(&["sync", "verify"], &card.config)?)?;
    assert!(verified.contains("identical"), "{verified}");
    w.hub.site.capture(&w.policy)?;
    for table in TWO_WAY_TABLES
        .iter()
        .chain(&["config", "task_scheduled", "mnet_host"])
    {
        same(&w.hub, &card.node, table)?;
    }
    let once = "SELECT COUNT(*) FROM (SELECT message FROM mdl_forum_posts GROUP BY message
                HAVING COUNT(*) > 1) d";
    assert_eq!(count(&card.node, once)?, 0, "a post arrived twice");
    // Per-site rows: the versions were copied, the hub's other plugin setting came by sync; the hub's
    // sessions and logs stay at the hub.
    assert_eq!(
        count(&card.node, "SELECT COUNT(*) FROM mdl_config_plugins")?,
        2
    );
    assert_eq!(count(&card.node, "SELECT COUNT(*) FROM mdl_sessions")?, 0);
    assert_eq!(
        count(&card.node, "SELECT COUNT(*) FROM mdl_logstore_standard_log")?,
        0
    );

    // A second run has nothing to do.
    let again = ok(appliance(&["sync", "seed"], &card.config)?)?;
    assert!(again.contains("nothing to do"), "{again}");

    // The center's own work reaches the hub.
    reply(&card.node, 3, "written at the new center", 5000)?;
    ok(appliance(&["sync", "verify"], &card.config)?)?;
    let arrived =
        "SELECT COUNT(*) FROM mdl_forum_posts WHERE message = 'written at the new center'";
    assert_eq!(count(&w.hub, arrived)?, 1);

    // A database with Moodle's rows is never seeded over (center 2's, which has its own work).
    let secret2 = hub.add_center(exe, 2)?;
    let password2 = engine_account(&w.centers[0], w.dir.path())?;
    let opts2 = AgentOptions::new(hub.addr, secret2.clone());
    let config2 = center_config(&w.centers[0], w.dir.path(), &opts2, &password2, "")?;
    let e = ok(appliance(&["sync", "seed"], &config2)?).unwrap_err();
    assert!(format!("{e:#}").contains("already holds rows"), "{e:#}");

    // A new card for site 2 (the old one died): its changes are numbered after the ones the hub holds
    // from the old card, so the hub takes them.
    let card2 = new_card(&w, &hub, 2, &secret2, "")?;
    create_tables(&card2.node, &card2.config)?;
    ok(appliance(&["sync", "seed"], &card2.config)?)?;
    reply(&card2.node, 4, "written on the new card of site 2", 6000)?;
    let verified = ok(appliance(&["sync", "verify"], &card2.config)?)?;
    assert!(verified.contains("identical"), "{verified}");
    let arrived =
        "SELECT COUNT(*) FROM mdl_forum_posts WHERE message = 'written on the new card of site 2'";
    assert_eq!(
        count(&w.hub, arrived)?,
        1,
        "the hub took the new card's post for a replay"
    );
    Ok(())
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn a_new_center_is_seeded_from_a_stick_even_one_half_copied_at_first() -> Result<()> {
    let mut w = university("kituo-seed-stick")?;
    let exe = kituo_tests::appliance_binary();
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe, &w.hub, &dir)?;
    // The university's files: a real course backup's blobs in the hub's dataroot.
    let backup = Backup::unpack(
        &backups_root().join("backup/controller/tests/fixtures/deadlock.mbz"),
        &dir.join("backup"),
    )?;
    let blobs = backup.install(&w.hub, &files::pool(&dir, 1)?)?;
    w.hub.site.capture(&w.policy)?;
    let secret = hub.add_center(exe, 3)?;
    let card = new_card(&w, &hub, 3, &secret, &files_section(&dir, 3, "")?)?;
    create_tables(&card.node, &card.config)?;

    let stick = dir.join("stick");
    let hub_ini = s(&hub.config);
    let exported = ok(Command::new(kituo_tests::appliance_binary())
        .args([
            "sync", "export", "--config", &hub_ini, "--for", "3", "--seed",
        ])
        .args(["--volume-size", "160K", "--to", &s(&stick)])
        .output()?)?;
    let mut volumes: Vec<_> = std::fs::read_dir(&stick)?.collect::<Result<Vec<_>, _>>()?;
    volumes.sort_by_key(|e| e.file_name());
    ensure!(volumes.len() >= 3, "expected several volumes:\n{exported}");

    // The first stick lacks its last volume: what came is written, the seed is not done, and sync
    // waits for it.
    let half = dir.join("half");
    std::fs::create_dir_all(&half)?;
    for v in &volumes[..volumes.len() - 1] {
        std::fs::copy(v.path(), half.join(v.file_name()))?;
    }
    let e = ok(appliance(&["sync", "import", &s(&half)], &card.config)?).unwrap_err();
    assert!(
        format!("{e:#}").contains("the seed is not complete"),
        "{e:#}"
    );
    let e = ok(appliance(&["sync", "verify"], &card.config)?).unwrap_err();
    assert!(format!("{e:#}").contains("being seeded"), "{e:#}");

    // The whole stick: done. The rows are the hub's, its files are here, and sync goes on from the
    // seed's log position (the verify exchanges first).
    ok(appliance(&["sync", "import", &s(&stick)], &card.config)?)?;
    let verified = ok(appliance(&["sync", "verify"], &card.config)?)?;
    assert!(verified.contains("identical"), "{verified}");
    for table in TWO_WAY_TABLES
        .iter()
        .chain(&["config", "files", "task_scheduled", "mnet_host"])
    {
        same(&w.hub, &card.node, table)?;
    }
    let pool = files::pool(&dir, 3)?;
    for hash in &blobs {
        assert!(
            matches!(pool.find(hash), Found::Live(_)),
            "blob {hash:?} is missing at the seeded center"
        );
    }
    files::assert_filedir_sound(&pool)?;
    assert_eq!(count(&card.node, "SELECT COUNT(*) FROM mdl_sessions")?, 0);

    // The same stick again: the seed is not redone over the center's rows.
    let e = ok(appliance(&["sync", "import", &s(&stick)], &card.config)?).unwrap_err();
    assert!(format!("{e:#}").contains("seeded before"), "{e:#}");
    Ok(())
}

/// The hub in-process, behind a link that drops after `pages` pages of 10 rows.
struct Dropping<'a> {
    hub: Direct<'a>,
    pages: usize,
}

impl Link for Dropping<'_> {
    fn push(&mut self, changes: &[Change]) -> Result<Receipt> {
        self.hub.push(changes)
    }
    fn pull(&mut self, after: u64, max: usize) -> Result<Page> {
        self.hub.pull(after, max)
    }
}

impl Reference for Dropping<'_> {
    fn catalog(&mut self, req: &CatalogRequest) -> Result<Catalog> {
        self.hub.catalog(req)
    }
    fn sums(&mut self, req: &SumsRequest) -> Result<SumsReply> {
        self.hub.sums(req)
    }
    fn rows(&mut self, req: &RowsRequest) -> Result<RowsReply> {
        self.hub.rows(req)
    }
}

impl Source for Dropping<'_> {
    fn copy(&mut self, req: &CopyRequest) -> Result<CopyReply> {
        self.hub.copy(req)
    }
    fn page(&mut self, req: &PageRequest) -> Result<PageReply> {
        ensure!(self.pages > 0, "the link dropped");
        // Small pages, so that the cut comes in the middle of the hub's rows.
        let small = PageRequest {
            max: 10,
            ..req.clone()
        };
        let reply = self.hub.page(&small)?;
        if !reply.runs.is_empty() {
            self.pages -= 1;
        }
        Ok(reply)
    }
}

#[test]
fn a_seed_cut_midway_goes_on_after_the_last_page_it_wrote() -> Result<()> {
    let mut w = university("kituo-seed-cut")?;
    let mut card = unseeded_node(&w.dir.path().join("card3"), 3, &w.schema)?;
    let mut cut = Dropping {
        hub: Direct {
            hub: &mut w.hub.site,
            policy: &w.policy,
            center: 3,
        },
        pages: 3,
    };
    let e = seed::seed(&mut card.site, &w.policy, &mut cut, None).unwrap_err();
    assert!(format!("{e:#}").contains("the link dropped"), "{e:#}");
    let at: Option<String> = card
        .sql()?
        .query_first("SELECT value FROM kituo_sync.state WHERE name = 'seed.at'")?;
    ensure!(
        at.is_some(),
        "the pages before the cut were written and recorded"
    );

    // Again over a sound link: it goes on where it stopped, and copies no row twice.
    let mut link = cut.hub;
    let again = seed::seed(&mut card.site, &w.policy, &mut link, None)?;
    assert!(again.resumed);
    let mut whole = unseeded_node(&w.dir.path().join("card4"), 4, &w.schema)?;
    let mut link = Direct {
        hub: &mut w.hub.site,
        policy: &w.policy,
        center: 4,
    };
    let all = seed::seed(&mut whole.site, &w.policy, &mut link, None)?;
    ensure!(
        again.relayed < all.relayed,
        "the second run copied {} rows of {}: it started over",
        again.relayed,
        all.relayed
    );
    for table in TWO_WAY_TABLES.iter().chain(&["config", "course"]) {
        same(&whole, &card, table)?;
    }
    Ok(())
}
