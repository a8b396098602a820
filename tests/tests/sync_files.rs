//! File sync over the real transport: `appliance hub` with a dataroot and centers' agents as processes,
//! real MariaDB sites whose `files` rows travel by row sync, blobs from a Moodle course backup plus
//! generated media, and the fault-injecting proxy between them (rate cap, cuts, corruption).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use appliance::sync::files::hash::ContentHash;
use appliance::sync::files::pool::{Found, Pool};
use kituo_tests::bed::files::{
    self, assert_filedir_sound, backups_root, files_section, noise, Backup, FileRow,
};
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService, Proc,
};
use kituo_tests::bed::{world, Node, World};
use kituo_tests::linkem::{LinkProfile, LinkProxy};
use kituo_tests::testbed::{free_port, wait_for, Nut};
use mysql::prelude::Queryable;

const KIB: u64 = 1024;

fn exe() -> &'static Path {
    kituo_tests::appliance_binary()
}

/// A world whose hub serves files, each site with its dataroot.
struct Bed {
    w: World,
    hub: HubService,
    dir: PathBuf,
}

fn bed(name: &str, centers: u32) -> Result<Bed> {
    let w = world(name, centers)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe(), &w.hub, &dir)?;
    Ok(Bed { w, hub, dir })
}

impl Bed {
    fn pool(&self, site: u32) -> Result<Pool> {
        files::pool(&self.dir, site)
    }

    fn center(&self, i: usize) -> &Node {
        &self.w.centers[i]
    }

    /// Registers center `i` at the hub and gives it its database account: its secret and password
    /// files.
    fn credentials(&self, i: usize) -> Result<(PathBuf, PathBuf)> {
        let c = self.center(i);
        Ok((
            self.hub.add_center(exe(), c.id)?,
            engine_account(c, &self.dir)?,
        ))
    }

    /// A center's appliance.ini reaching the hub through `proxy`, with `[files]` `keys` and `extra`
    /// sections.
    fn config_with(
        &self,
        i: usize,
        creds: &(PathBuf, PathBuf),
        proxy: &LinkProxy,
        keys: &str,
        extra: &str,
    ) -> Result<PathBuf> {
        let c = self.center(i);
        let opts = AgentOptions::new(proxy.addr(), creds.0.clone());
        let files = files_section(&self.dir, c.id, keys)?;
        center_config(c, &self.dir, &opts, &creds.1, &format!("{extra}{files}"))
    }

    fn config(&self, i: usize, proxy: &LinkProxy, keys: &str) -> Result<PathBuf> {
        self.config_with(i, &self.credentials(i)?, proxy, keys, "")
    }

    fn agent(&self, i: usize, config: &Path) -> Result<AgentService> {
        let log = self.dir.join(format!("agent{}.log", self.center(i).id));
        AgentService::start(exe(), config, log)
    }

    fn proxy(&self, profile: LinkProfile) -> Result<LinkProxy> {
        LinkProxy::start(self.hub.addr, profile)
    }

    /// The course backup with files (Moodle's `deadlock.mbz`), installed at `node`: its blobs and rows.
    fn install_backup(&self, node: &Node) -> Result<Vec<ContentHash>> {
        let backup = Backup::unpack(
            &backups_root().join("backup/controller/tests/fixtures/deadlock.mbz"),
            &self.dir.join("backup"),
        )?;
        ensure!(
            backup.rows.len() > 20,
            "the backup has {} file rows",
            backup.rows.len()
        );
        backup.install(node, &self.pool(node.id)?)
    }

    /// Adds a generated file at `node` (as Moodle's upload does); returns its hash.
    fn add(
        &self,
        node: &Node,
        area: (&str, &str),
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<ContentHash> {
        let row = FileRow::new(area.0, area.1, name, mime, data);
        files::add_file(node, &self.pool(node.id)?, &row, data)
    }
}

/// Waits until every hash is live in `pool`, or fails naming how many are missing (and the logs).
fn wait_live(pool: &Pool, hashes: &[ContentHash], timeout: Duration, logs: &[&Proc]) -> Result<()> {
    let done = wait_for(timeout, || {
        hashes
            .iter()
            .all(|h| matches!(pool.find(h), Found::Live(_)))
            .then_some(())
    });
    if done.is_none() {
        let missing = hashes
            .iter()
            .filter(|h| !matches!(pool.find(h), Found::Live(_)))
            .count();
        for p in logs {
            eprintln!("--- {}\n{}", p.log.display(), p.log_text());
        }
        anyhow::bail!(
            "{missing} of {} blobs did not arrive within {timeout:?}",
            hashes.len()
        );
    }
    Ok(())
}

fn part_len(pool: &Pool, hash: &ContentHash) -> u64 {
    pool.part_len(hash, "")
}

/// Every upload call is cut before it ends (a 256 KiB call needs about a second of this link, which is
/// cut every 0.6 s): the request's MAC never checks, so without the hub keeping each call's whole
/// sealed chunks the submission would never arrive.
#[test]
fn an_upload_cut_in_every_call_still_arrives_by_its_sealed_chunks() -> Result<()> {
    let b = bed("kituo-files-upcut", 1)?;
    let essay = b.add(
        b.center(0),
        ("assignsubmission_file", "submission_files"),
        "thesis.pdf",
        "application/pdf",
        &noise(1_200_000, 9),
    )?;
    let link = LinkProfile::default()
        .rate_bps(2_000_000)
        .latency(Duration::from_millis(10))
        .cut_every(Duration::from_millis(600));
    let proxy = b.proxy(link)?;
    let keys = "chunk_kib = 64\nrequest_kib = 512\nupload_kib = 256\npass_seconds = 2\n";
    let agent = b.agent(0, &b.config(0, &proxy, keys)?)?;
    wait_live(
        &b.pool(1)?,
        &[essay],
        Duration::from_secs(120),
        &[&agent.proc, &b.hub.proc],
    )?;
    let kept = b
        .hub
        .proc
        .log_text()
        .matches("whole chunks of a cut upload")
        .count();
    let stats = proxy.stats();
    eprintln!(
        "cuts {}, calls salvaged {kept}, {} bytes up",
        stats.cuts, stats.bytes_up
    );
    ensure!(kept >= 3, "the hub kept chunks of only {kept} cut calls");
    // Each cut costs the chunk it fell in and the small calls of the pass it ended (have, rows).
    let bound = 1_200_000 + stats.cuts * (96 * KIB) + 128 * KIB;
    ensure!(
        stats.bytes_up <= bound,
        "{} bytes went up for a 1.2 MB file over {} cuts (at most {bound})",
        stats.bytes_up,
        stats.cuts
    );
    assert_filedir_sound(&b.pool(1)?)?;
    Ok(())
}

#[test]
fn blobs_cross_a_cutting_link_both_ways_and_an_agent_restart_resending_at_most_a_chunk_per_cut(
) -> Result<()> {
    let t0 = Instant::now();
    let b = bed("kituo-files-cuts", 2)?;
    eprintln!("{:?}: bed up", t0.elapsed());
    // At the hub: a course backup's files and a lecture; at each center: a student's submission.
    let mut from_hub = b.install_backup(&b.w.hub)?;
    let lecture = noise(1_500_000, 1);
    from_hub.push(b.add(
        &b.w.hub,
        ("mod_resource", "content"),
        "lecture.mp4",
        "video/mp4",
        &lecture,
    )?);
    from_hub.push(b.add(
        &b.w.hub,
        ("mod_resource", "content"),
        "slides.pdf",
        "application/pdf",
        &noise(600_000, 2),
    )?);
    let area = ("assignsubmission_file", "submission_files");
    let essays = [
        b.add(
            b.center(0),
            area,
            "essay2.pdf",
            "application/pdf",
            &noise(700_000, 3),
        )?,
        b.add(
            b.center(1),
            area,
            "essay3.pdf",
            "application/pdf",
            &noise(700_000, 4),
        )?,
    ];

    // Center 2's link is clean, center 3's is cut every 1.5 s: the difference in traffic is what the
    // cuts made resend.
    let chunk = 64 * KIB;
    let upload = 256 * KIB;
    let keys = "chunk_kib = 64\nrequest_kib = 512\nupload_kib = 256\npass_seconds = 5\n";
    let link = LinkProfile::default()
        .rate_bps(2_000_000)
        .latency(Duration::from_millis(10));
    let clean = b.proxy(link.clone())?;
    let cutting = b.proxy(link.cut_every(Duration::from_millis(1500)))?;
    let agent2 = b.agent(0, &b.config(0, &clean, keys)?)?;
    let mut agent3 = b.agent(1, &b.config(1, &cutting, keys)?)?;

    // Center 3's agent is killed in the middle of the lecture, and started again.
    let pool3 = b.pool(3)?;
    let lecture_hash = ContentHash::of(&lecture);
    let mid = wait_for(Duration::from_secs(60), || {
        (part_len(&pool3, &lecture_hash) >= 256 * KIB).then_some(())
    });
    ensure!(
        mid.is_some(),
        "the lecture never got under way: {}",
        agent3.proc.log_text()
    );
    agent3.restart(exe())?;
    eprintln!("{:?}: agent 3 restarted", t0.elapsed());
    let held = part_len(&pool3, &lecture_hash);

    let hub_pool = b.pool(1)?;
    let timeout = Duration::from_secs(90);
    wait_live(&b.pool(2)?, &from_hub, timeout, &[&agent2.proc])?;
    wait_live(&pool3, &from_hub, timeout, &[&agent3.proc])?;
    wait_live(
        &hub_pool,
        &essays,
        timeout,
        &[&agent2.proc, &agent3.proc, &b.hub.proc],
    )?;
    ensure!(held > 0, "the partial copy survived the kill");
    eprintln!("{:?}: all arrived", t0.elapsed());

    // Everything placed is whole, with Moodle's modes, and no partial copy is left behind.
    for site in 1..=3 {
        let pool = b.pool(site)?;
        let n = assert_filedir_sound(&pool)?;
        ensure!(n >= from_hub.len(), "site {site} holds {n} blobs");
    }
    let mode = |p: &Path| -> Result<u32> {
        use std::os::unix::fs::PermissionsExt;
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777)
    };
    let placed = pool3.live_path(&lecture_hash);
    ensure!(mode(&placed)? == 0o666, "blob mode {:o}", mode(&placed)?);
    ensure!(mode(placed.parent().context("no dir")?)? == 0o2777);
    ensure!(mode(&hub_pool.live_path(&essays[1]))? == 0o666);

    // Resent bytes: what center 3's link carried beyond center 2's, against what can be in flight at
    // a cut (the restart counts as one): a blob chunk, and a page of the row sync that shares the
    // link (the agent pulls pages of up to 64 KiB; since capture runs continuously, row pages are
    // still moving while blobs do). A little slack covers the extra polls of the longer run.
    std::thread::sleep(Duration::from_secs(2));
    let (s2, s3) = (clean.stats(), cutting.stats());
    let cuts = s3.cuts + 1;
    ensure!(s3.cuts >= 4, "the link was cut only {} times", s3.cuts);
    let resent_down = s3.bytes_down.saturating_sub(s2.bytes_down);
    let resent_up = s3.bytes_up.saturating_sub(s2.bytes_up);
    eprintln!(
        "cuts {cuts}: resent {resent_down} bytes down (clean {} total), {resent_up} up (clean {} total)",
        s2.bytes_down, s2.bytes_up
    );
    if std::env::var_os("KITUO_SHOW_LOGS").is_some() {
        eprintln!("{}", agent3.proc.log_text());
    }
    let slack = 48 * KIB;
    let page = 64 * KIB;
    ensure!(
        resent_down <= cuts * (chunk + page + 4 * KIB) + slack,
        "{resent_down} bytes resent down over {cuts} cuts, more than a {chunk}-byte chunk and a \
         {page}-byte page each"
    );
    // Uploads are sealed chunk by chunk: the hub keeps the whole ones of a cut call, so a cut costs
    // one chunk up too, not the whole call.
    ensure!(
        resent_up <= cuts * (chunk + 4 * KIB) + slack,
        "{resent_up} bytes resent up over {cuts} cuts, more than a {chunk}-byte chunk each (calls of {upload})"
    );

    // A blob present is never sent again: more passes move nothing but their small questions.
    let before = cutting.stats();
    std::thread::sleep(Duration::from_secs(4));
    let after = cutting.stats();
    ensure!(
        after.bytes_down - before.bytes_down < 16 * KIB
            && after.bytes_up - before.bytes_up < 16 * KIB,
        "idle passes moved {} bytes down, {} up",
        after.bytes_down - before.bytes_down,
        after.bytes_up - before.bytes_up
    );
    let known: u64 = b
        .center(1)
        .sql()?
        .query_first("SELECT COUNT(*) FROM kituo_sync.files_at_hub")?
        .unwrap_or(0);
    ensure!(
        known as usize > from_hub.len(),
        "center 3 knows {known} blobs at the hub"
    );
    Ok(())
}

#[test]
fn a_chunk_corrupted_on_the_wire_is_refetched_and_nothing_wrong_lands_in_filedir() -> Result<()> {
    let b = bed("kituo-files-corrupt", 1)?;
    let mut from_hub = b.install_backup(&b.w.hub)?;
    from_hub.push(b.add(
        &b.w.hub,
        ("mod_resource", "content"),
        "talk.mp4",
        "video/mp4",
        &noise(1_200_000, 5),
    )?);
    // One flipped bit every 200 kB coming down, whatever it hits.
    let proxy = b.proxy(
        LinkProfile::default()
            .rate_bps(8_000_000)
            .corrupt_down_every(200_000),
    )?;
    let keys = "chunk_kib = 32\nrequest_kib = 256\npass_seconds = 5\n";
    let agent = b.agent(0, &b.config(0, &proxy, keys)?)?;
    let pool = b.pool(2)?;
    wait_live(&pool, &from_hub, Duration::from_secs(90), &[&agent.proc])?;
    assert_filedir_sound(&pool)?;
    let stats = proxy.stats();
    ensure!(
        stats.corrupted >= 5,
        "only {} bits were flipped",
        stats.corrupted
    );
    let log = agent.proc.log_text();
    ensure!(
        log.contains("is corrupt") || log.contains("failed authentication"),
        "no corruption was caught: {log}"
    );
    // Caught chunk by chunk: no corrupted byte reached a partial copy (the sha1 of the whole would
    // have caught it last, and thrown the copy away).
    ensure!(!log.contains("failed its sha1"), "{log}");
    Ok(())
}

#[test]
fn trashed_blobs_are_recovered_not_fetched_and_deleted_files_go_to_the_trash() -> Result<()> {
    let b = bed("kituo-files-trash", 1)?;
    let reading = noise(1_000_000, 6);
    let kept = b.add(
        &b.w.hub,
        ("mod_resource", "content"),
        "reading.pdf",
        "application/pdf",
        &reading,
    )?;
    let doomed = b.add(
        &b.w.hub,
        ("mod_forum", "attachment"),
        "old.png",
        "image/png",
        &noise(200_000, 7),
    )?;
    // The center once had the reading, and Moodle moved it to its trash when a teacher deleted it.
    let pool = b.pool(2)?;
    let trashed = kept.pool_path(pool.trashdir());
    std::fs::create_dir_all(trashed.parent().context("no dir")?)?;
    std::fs::write(&trashed, &reading)?;

    let proxy = b.proxy(LinkProfile::default())?;
    let agent = b.agent(0, &b.config(0, &proxy, "trash_after_minutes = 1\n")?)?;
    wait_live(
        &pool,
        &[kept, doomed],
        Duration::from_secs(60),
        &[&agent.proc],
    )?;
    ensure!(!trashed.exists(), "the reading is still in the trash");
    let down = proxy.stats().bytes_down;
    ensure!(
        down < 600_000,
        "{down} bytes came down: the reading was fetched, not recovered"
    );

    // The hub's teacher deletes the forum attachment: its row goes, and at the center its blob goes
    // to the trash as Moodle would move it. (Its write time is set back past the grace Moodle's own
    // uploads get.)
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(pool.live_path(&doomed))?
        .set_modified(old)?;
    b.w.hub.sql()?.exec_drop(
        "DELETE FROM mdl_files WHERE contenthash = ?",
        (doomed.hex(),),
    )?;
    let gone = wait_for(Duration::from_secs(60), || {
        matches!(pool.find(&doomed), Found::Trashed(_)).then_some(())
    });
    ensure!(
        gone.is_some(),
        "the deleted file's blob was not trashed: {}",
        agent.proc.log_text()
    );
    ensure!(matches!(pool.find(&kept), Found::Live(_)));
    Ok(())
}

const ON_MAINS: &str = "ups.status: OL\nbattery.charge: 100\nbattery.runtime: 2400\n";
const ON_BATTERY: &str = "ups.status: OB DISCHRG\nbattery.charge: 90\nbattery.runtime: 2000\n";

fn status(port: u16) -> Option<serde_json::Value> {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/api/status"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// `HH:MM-HH:MM` from `from` to `to` minutes after now, local time.
fn window(from: i64, to: i64) -> String {
    let now = i64::from(appliance::sync::files::window::local_minute_of_day());
    let at = |m: i64| {
        let m = (now + m).rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    format!("{}-{}", at(from), at(to))
}

#[test]
fn files_move_in_priority_order_bulk_waits_for_its_window_and_the_battery_pauses_them() -> Result<()>
{
    let b = bed("kituo-files-order", 1)?;
    let hub = &b.w.hub;
    let each = 150_000;
    // Added in the reverse of the order they should arrive in.
    let lecture = b.add(
        hub,
        ("mod_resource", "content"),
        "lecture.mp4",
        "video/mp4",
        &noise(2_000_000, 8),
    )?;
    let forum = b.add(
        hub,
        ("mod_forum", "attachment"),
        "photo.png",
        "image/png",
        &noise(each, 9),
    )?;
    let slides = b.add(
        hub,
        ("mod_resource", "content"),
        "slides.pdf",
        "application/pdf",
        &noise(each, 10),
    )?;
    let summary = b.add(
        hub,
        ("course", "summary"),
        "map.png",
        "image/png",
        &noise(each, 11),
    )?;

    let nut = Nut::start(&b.dir.join("nut"), ON_MAINS)?;
    let port = free_port()?;
    let proxy = b.proxy(LinkProfile::default().rate_bps(2_000_000))?;
    let creds = b.credentials(0)?;
    let supervisor = |keys: &str| -> Result<Proc> {
        let extra = format!(
            "[status]\nlisten = 127.0.0.1:{port}\nbuild_info = {}\n\
             [health]\ninterval_seconds = 5\nweb_url =\nfpm_ping_url =\nmariadb_socket =\n\
             hostapd_control =\npartitions = /\nrestart_command =\n\
             [power]\nsources = nut\npoll_seconds = 1\ndebounce_seconds = 1\nrestore_seconds = 1\n\
             history_file =\n[nut]\naddress = {}\nups = ups\n",
            b.dir.join("none.ini").display(),
            nut.address()
        );
        let config = b.config_with(0, &creds, &proxy, keys, &extra)?;
        let log = b.dir.join("supervisor2.log");
        let child = std::process::Command::new(kituo_tests::appliance_binary())
            .args(["supervise", "--config"])
            .arg(&config)
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            )
            .spawn()?;
        Ok(Proc { child, log })
    };
    // One blob per request, so the order they arrive in is the order they were asked for; the
    // lecture is bulk, and its window is closed.
    let keys = "request_kib = 64\nchunk_kib = 16\nbulk_kib = 1024\npass_seconds = 5\n";
    let mut sup = supervisor(&format!("{keys}bulk_window = {}\n", window(120, 180)))?;

    let pool = b.pool(2)?;
    let wanted = [summary, slides, forum];
    let mut arrived: Vec<ContentHash> = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while arrived.len() < wanted.len() && Instant::now() < end {
        for h in &wanted {
            if !arrived.contains(h) && matches!(pool.find(h), Found::Live(_)) {
                arrived.push(*h);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        arrived == wanted,
        "arrival order {arrived:?}, wanted {wanted:?}: {}",
        sup.log_text()
    );
    let waiting = wait_for(Duration::from_secs(20), || {
        status(port)
            .filter(|s| s["files"]["waiting_for_window"] == 1 && s["files"]["fetch_pending"] == 1)
    });
    ensure!(
        waiting.is_some(),
        "status: {:?}",
        status(port).map(|s| s["files"].clone())
    );
    ensure!(
        pool.part_len(&lecture, "") == 0,
        "the lecture moved outside its window"
    );

    // The window opens (a new config); the lecture starts, then the UPS goes on battery.
    sup.kill();
    sup = supervisor(&format!("{keys}bulk_window = {}\n", window(-60, 60)))?;
    let started = wait_for(Duration::from_secs(60), || {
        (pool.part_len(&lecture, "") >= 200 * KIB).then_some(())
    });
    ensure!(
        started.is_some(),
        "the lecture did not start: {}",
        sup.log_text()
    );
    nut.set(ON_BATTERY)?;
    let paused = wait_for(Duration::from_secs(30), || {
        status(port).filter(|s| s["files"]["state"] == "paused_on_battery")
    });
    ensure!(
        paused.is_some(),
        "status: {:?}",
        status(port).map(|s| s["files"].clone())
    );
    std::thread::sleep(Duration::from_millis(500));
    let (held, down) = (pool.part_len(&lecture, ""), proxy.stats().bytes_down);
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        pool.part_len(&lecture, "") == held && proxy.stats().bytes_down - down < 4 * KIB,
        "files moved on battery: {held} -> {} bytes held",
        pool.part_len(&lecture, "")
    );
    ensure!(held < 2_000_000, "the lecture finished before the pause");

    nut.set(ON_MAINS)?;
    wait_live(&pool, &[lecture], Duration::from_secs(60), &[&sup])?;
    let done = wait_for(Duration::from_secs(20), || {
        status(port).filter(|s| {
            s["files"]["fetch_pending"] == 0 && s["files"]["moved_files"].as_u64() >= Some(1)
        })
    });
    let s = status(port).map(|s| s["files"].clone());
    ensure!(done.is_some(), "status: {s:?}");
    assert_filedir_sound(&pool)?;
    Ok(())
}
