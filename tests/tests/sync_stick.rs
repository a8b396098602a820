//! Sneakernet sticks with real parts: real MariaDB sites, `appliance hub` serving, and the real
//! `appliance sync export|import` commands writing and reading volumes in folders that stand for USB
//! sticks. Content from a Moodle course backup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use appliance::sync::exchange::wire::Secret;
use appliance::sync::files::hash::ContentHash;
use appliance::sync::files::pool::{Found, Pool};
use appliance::sync::stick::{history, volume};
use kituo_tests::bed::files::{self, backups_root, files_section, noise, Backup, FileRow};
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService,
};
use kituo_tests::bed::{world, Node, World};
use kituo_tests::testbed::wait_for;
use mysql::prelude::Queryable;

fn exe() -> &'static Path {
    kituo_tests::appliance_binary()
}

struct Bed {
    w: World,
    hub: HubService,
    dir: PathBuf,
}

fn bed(name: &str) -> Result<Bed> {
    let w = world(name, 2)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe(), &w.hub, &dir)?;
    Ok(Bed { w, hub, dir })
}

/// What one run of the binary said.
struct Ran {
    ok: bool,
    stderr: String,
    stdout: String,
}

fn run(args: &[&str]) -> Result<Ran> {
    let t = Instant::now();
    let out = Command::new(exe())
        .args(args)
        .output()
        .context("cannot run appliance")?;
    eprintln!("appliance {} {}: {:?}", args[0], args[1], t.elapsed());
    Ok(Ran {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn ok(args: &[&str]) -> Result<Ran> {
    let r = run(args)?;
    ensure!(r.ok, "appliance {args:?} failed:\n{}", r.stderr);
    Ok(r)
}

impl Bed {
    fn center(&self, i: usize) -> &Node {
        &self.w.centers[i]
    }

    fn pool(&self, site: u32) -> Result<Pool> {
        files::pool(&self.dir, site)
    }

    /// Center `i`'s appliance.ini: registered at the hub (or, if not, with a secret of its own), with
    /// `[files]`, reaching the hub directly (used only where an agent runs).
    fn config(&self, i: usize, register: bool, batch: usize) -> Result<PathBuf> {
        let c = self.center(i);
        let secret = if register {
            self.hub.add_center(exe(), c.id)?
        } else {
            let file = self.dir.join(format!("site{}-own-secret", c.id));
            std::fs::write(&file, Secret::generate()?.to_hex())?;
            file
        };
        let password = engine_account(c, &self.dir)?;
        let mut opts = AgentOptions::new(self.hub.addr, secret);
        opts.batch_changes = batch;
        let files = files_section(&self.dir, c.id, "pass_seconds = 5\n")?;
        center_config(c, &self.dir, &opts, &password, &files)
    }

    fn hub_ini(&self) -> String {
        self.hub.config.to_string_lossy().into_owned()
    }

    fn stick(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn add(&self, node: &Node, name: &str, data: &[u8]) -> Result<ContentHash> {
        let row = FileRow::new(
            "assignsubmission_file",
            "submission_files",
            name,
            "application/pdf",
            data,
        );
        files::add_file(node, &self.pool(node.id)?, &row, data)
    }

    fn install_backup(&self, node: &Node) -> Result<Vec<ContentHash>> {
        let backup = Backup::unpack(
            &backups_root().join("backup/controller/tests/fixtures/deadlock.mbz"),
            &self.dir.join("backup"),
        )?;
        backup.install(node, &self.pool(node.id)?)
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn export(config: &Path, to: &Path, size: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut args = vec!["sync", "export", "--config"];
    let (config, to) = (s(config), s(to));
    args.extend([config.as_str(), "--to", to.as_str()]);
    if let Some(size) = size {
        args.extend(["--volume-size", size]);
    }
    Ok(ok(&args)?.stdout.lines().map(PathBuf::from).collect())
}

fn export_for(b: &Bed, center: u32, to: &Path) -> Result<Vec<PathBuf>> {
    let (c, to) = (center.to_string(), s(to));
    let ran = ok(&[
        "sync",
        "export",
        "--config",
        &b.hub_ini(),
        "--for",
        &c,
        "--to",
        &to,
    ])?;
    Ok(ran.stdout.lines().map(PathBuf::from).collect())
}

fn import_hub(b: &Bed, dir: &Path) -> Result<Ran> {
    run(&["sync", "import", "--hub", "--config", &b.hub_ini(), &s(dir)])
}

fn import_center(config: &Path, dir: &Path) -> Result<Ran> {
    run(&["sync", "import", "--config", &s(config), &s(dir)])
}

fn count(node: &Node, sql: &str) -> Result<u64> {
    Ok(node.sql()?.query_first(sql)?.unwrap_or(0))
}

fn live(pool: &Pool, hash: &ContentHash) -> bool {
    matches!(pool.find(hash), Found::Live(_))
}

/// A copy of a stick's folder, with `edit` applied to its volumes (sorted by name).
fn copy_stick(from: &Path, to: &Path, edit: impl Fn(usize, &Path) -> Result<()>) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(from)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let copy = to.join(f.file_name().context("no name")?);
        std::fs::copy(f, &copy)?;
        edit(i, &copy)?;
    }
    Ok(())
}

fn flip_byte(path: &Path, at: usize) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes)?;
    Ok(())
}

fn truncate(path: &Path, keep: f64) -> Result<()> {
    let len = std::fs::metadata(path)?.len();
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len((len as f64 * keep) as u64)?;
    Ok(())
}

/// The hub's state a refused import must leave alone.
type HubState = (Vec<Vec<Option<String>>>, u64, u64);

fn hub_state(b: &Bed) -> Result<HubState> {
    Ok((
        b.w.hub.dump("forum_posts")?,
        count(&b.w.hub, "SELECT COUNT(*) FROM mdl_files")?,
        count(&b.w.hub, "SELECT COUNT(*) FROM kituo_sync.log")?,
    ))
}

#[test]
fn damaged_forged_and_foreign_sticks_apply_nothing_and_twice_or_late_changes_nothing() -> Result<()>
{
    let t0 = Instant::now();
    let b = bed("kituo-stick-refused")?;
    eprintln!("{:?}: bed up", t0.elapsed());
    let c2 = b.config(0, true, 500)?;
    // Center 3 is not registered at the hub: its sticks come from an unknown site.
    let c3 = b.config(1, false, 500)?;
    let now = appliance::history::unix_now();
    kituo_tests::bed::reply(b.center(0), 3, "posted at center 2, carried by stick", now)?;
    let essay = noise(150_000, 7);
    let essay_hash = b.add(b.center(0), "essay2.pdf", &essay)?;
    kituo_tests::bed::reply(b.center(1), 4, "posted at unregistered center 3", now)?;

    let good = b.stick("good");
    let vols = export(&c2, &good, None)?;
    ensure!(vols.len() == 1, "one volume by default: {vols:?}");
    let hub_pool = b.pool(1)?;
    let before = hub_state(&b)?;

    // Each refused with an error naming the file and the reason; nothing applied.
    let len = std::fs::metadata(&vols[0])?.len() as usize;
    let flipped = b.stick("flipped");
    copy_stick(&good, &flipped, |_, p| flip_byte(p, len / 3))?;
    let truncated = b.stick("truncated");
    copy_stick(&good, &truncated, |_, p| truncate(p, 0.6))?;
    // Signed by center 2's name with another key.
    let forged_cfg = b.dir.join("forged.ini");
    let forged_secret = b.dir.join("forged-secret");
    std::fs::write(&forged_secret, Secret::generate()?.to_hex())?;
    let text = std::fs::read_to_string(&c2)?;
    let secret_line = text
        .lines()
        .find(|l| l.starts_with("secret_file"))
        .context("no secret_file")?;
    std::fs::write(
        &forged_cfg,
        text.replace(
            secret_line,
            &format!("secret_file = {}", forged_secret.display()),
        ),
    )?;
    let forged = b.stick("forged");
    export(&forged_cfg, &forged, None)?;
    let unknown = b.stick("unknown");
    export(&c3, &unknown, None)?;
    let cases = [
        (&flipped, "does not match the digest"),
        (&truncated, "truncated"),
        (&forged, "signature does not verify"),
        (&unknown, "not a center registered at this hub"),
    ];
    for (stick, why) in cases {
        let r = import_hub(&b, stick)?;
        eprint!("{}", r.stderr);
        ensure!(!r.ok, "{} was accepted: {}", stick.display(), r.stderr);
        ensure!(
            r.stderr.contains(&format!("{}/kituo-", s(stick)))
                && r.stderr.contains(".kvol")
                && r.stderr.contains(why),
            "{}: expected the volume's file and '{why}' in: {}",
            stick.display(),
            r.stderr
        );
        ensure!(
            hub_state(&b)? == before,
            "{} changed the hub",
            stick.display()
        );
        ensure!(
            !live(&hub_pool, &essay_hash),
            "{} placed a blob",
            stick.display()
        );
    }
    eprintln!("{:?}: refusals checked", t0.elapsed());

    // The good stick applies; a second import changes nothing.
    let r = import_hub(&b, &good)?;
    ensure!(r.ok, "the good stick was refused: {}", r.stderr);
    ensure!(
        live(&hub_pool, &essay_hash),
        "the essay was not placed at the hub"
    );
    let posts: u64 = count(
        &b.w.hub,
        "SELECT COUNT(*) FROM mdl_forum_posts WHERE message = 'posted at center 2, carried by stick'",
    )?;
    ensure!(
        posts == 1,
        "the hub holds {posts} copies of center 2's post"
    );
    let after = hub_state(&b)?;
    ensure!(after != before, "the good stick changed nothing");
    let r = import_hub(&b, &good)?;
    ensure!(r.ok, "a second import failed: {}", r.stderr);
    ensure!(
        hub_state(&b)? == after,
        "importing the same stick twice changed the hub"
    );

    // Hub to center 2: an old stick does not roll the center back.
    let set = |v: &str| -> Result<()> {
        b.w.hub
            .sql()?
            .exec_drop("UPDATE mdl_forum_posts SET message = ? WHERE id = 1", (v,))?;
        Ok(())
    };
    let message = |n: &Node| -> Result<String> {
        Ok(n.sql()?
            .query_first("SELECT message FROM mdl_forum_posts WHERE id = 1")?
            .unwrap_or_default())
    };
    set("first version")?;
    let (old, new) = (b.stick("hub-old"), b.stick("hub-new"));
    export_for(&b, 2, &old)?;
    set("second version")?;
    export_for(&b, 2, &new)?;
    // A stick for center 2 is refused at center 3.
    let r = import_center(&c3, &new)?;
    ensure!(
        !r.ok && r.stderr.contains("made for site 2"),
        "center 3 took center 2's stick: {}",
        r.stderr
    );
    ensure!(message(b.center(1))? == "Ask here.", "center 3 changed");
    let r = import_center(&c2, &new)?;
    ensure!(r.ok, "center 2 refused the hub's stick: {}", r.stderr);
    ensure!(message(b.center(0))? == "second version");
    let r = import_center(&c2, &old)?;
    ensure!(r.ok, "the old stick failed: {}", r.stderr);
    ensure!(
        message(b.center(0))? == "second version",
        "the old stick rolled center 2 back to {:?}",
        message(b.center(0))?
    );
    // The hub's stick acknowledged center 2's changes: its outbox dropped them.
    let pushed = count(
        b.center(0),
        "SELECT CAST(value AS UNSIGNED) FROM kituo_sync.state WHERE name = 'pushed'",
    )?;
    let outbox = count(
        b.center(0),
        "SELECT COUNT(*) FROM kituo_sync.log WHERE origin = 2",
    )?;
    ensure!(
        pushed > 0 && outbox == 0,
        "pushed {pushed}, {outbox} changes in the outbox"
    );

    // The history shows each export and import, refusals included.
    let hub_history = history::recent(&mut b.w.hub.sql()?, 20)?;
    ensure!(
        hub_history
            .iter()
            .any(|h| h.direction == "import" && !h.ok && h.result.contains("truncated")),
        "no refused import in the hub's history: {hub_history:?}"
    );
    let c2_history = history::recent(&mut b.center(0).sql()?, 20)?;
    ensure!(
        c2_history
            .iter()
            .filter(|h| h.direction == "import" && h.ok && h.peer == "hub")
            .count()
            == 2
            && c2_history.iter().any(|h| h.direction == "export"),
        "center 2's history: {c2_history:?}"
    );

    // And center 2's status page lists them: its supervisor's sync thread reads the history.
    let port = kituo_tests::testbed::free_port()?;
    let status = format!(
        "[status]\nlisten = 127.0.0.1:{port}\nbuild_info = {}\n\
         [health]\ninterval_seconds = 5\nweb_url =\nfpm_ping_url =\nmariadb_socket =\n\
         hostapd_control =\npartitions = /\nrestart_command =\n[power]\nsources =\nhistory_file =\n",
        b.dir.join("none.ini").display()
    );
    let text = std::fs::read_to_string(&c2)?;
    let supervised = b.dir.join("supervised2.ini");
    std::fs::write(
        &supervised,
        text.replacen("[sync]", &format!("{status}[sync]"), 1),
    )?;
    let log = b.dir.join("supervisor2.log");
    let mut supervisor = kituo_tests::bed::services::Proc {
        child: Command::new(exe())
            .args(["supervise", "--config"])
            .arg(&supervised)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
        log,
    };
    let shown = wait_for(Duration::from_secs(30), || {
        let body = ureq::get(&format!("http://127.0.0.1:{port}/api/status"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let list = v["sticks"].as_array()?.clone();
        (list.len() >= 3).then_some(list)
    });
    let shown = shown
        .with_context(|| format!("the status page lists no sticks: {}", supervisor.log_text()))?;
    ensure!(
        shown[0]["direction"] == "import" && shown[0]["peer"] == "hub" && shown[0]["ok"] == true,
        "the newest stick shown: {}",
        shown[0]
    );
    supervisor.kill();
    eprintln!("{:?}: done", t0.elapsed());
    Ok(())
}

#[test]
fn a_stick_only_center_and_a_linked_center_converge_with_the_hub_even_after_a_half_copied_stick(
) -> Result<()> {
    let t0 = Instant::now();
    let b = bed("kituo-stick-mixed")?;
    let from_hub = b.install_backup(&b.w.hub)?;
    let c2 = b.config(0, true, 500)?;
    // Small batches, so that center 3's rows span volumes.
    let c3 = b.config(1, true, 10)?;
    let mut agent2 = AgentService::start(exe(), &c2, b.dir.join("agent2.log"))?;
    let essay2 = b.add(b.center(0), "essay2.pdf", &noise(300_000, 2))?;

    let note3 = b.add(b.center(1), "note3.pdf", &noise(10_000, 3))?;
    let essay3 = b.add(b.center(1), "essay3.pdf", &noise(400_000, 4))?;
    let now = appliance::history::unix_now();
    for i in 0..40 {
        let text = format!("c3-{i}-{}", hex::encode(noise(8000, 100 + i)));
        kituo_tests::bed::reply(b.center(1), 4, &text, now)?;
    }
    let stick = b.stick("c3-stick");
    let vols = export(&c3, &stick, Some("160K"))?;
    ensure!(vols.len() >= 5, "only {} volumes", vols.len());
    for v in &vols {
        ensure!(
            std::fs::metadata(v)?.len() <= 160_000,
            "{} is too big",
            v.display()
        );
    }
    eprintln!(
        "{:?}: center 3 exported {} volumes",
        t0.elapsed(),
        vols.len()
    );

    // Half copied: volume 2 missing, the last one cut short. What each volume holds, read with
    // center 3's key: rows in volumes 1 and 2, the small note in neither 2 nor the last, the essay's
    // end in the last.
    let n = vols.len();
    let key = Secret::read(&b.dir.join("site3-secret"))?;
    let mut holds = Vec::new();
    for v in &vols {
        let v = volume::verify(v, &mut |_| Ok(key.clone()))?;
        let mut blobs = Vec::new();
        v.chunks(&mut |c| {
            blobs.push(c.hash);
            Ok(())
        })?;
        holds.push((v.manifest.rows.len(), blobs));
    }
    ensure!(
        holds[0].0 > 0 && holds[1].0 > 0,
        "rows do not span volumes 1 and 2: {holds:?}"
    );
    ensure!(
        !holds[1].1.contains(&note3)
            && !holds[n - 1].1.contains(&note3)
            && holds.iter().any(|h| h.1.contains(&note3))
            && holds[n - 1].1.contains(&essay3),
        "the files do not lie as this test needs: {holds:?}"
    );
    let half = b.stick("c3-half");
    copy_stick(&stick, &half, |i, p| match i {
        1 => Ok(std::fs::remove_file(p)?),
        i if i == n - 1 => truncate(p, 0.5),
        _ => Ok(()),
    })?;
    let r = import_hub(&b, &half)?;
    eprintln!("half-copied stick:\n{}", r.stderr);
    ensure!(!r.ok, "a half-copied stick passed silently: {}", r.stderr);
    ensure!(
        r.stderr.contains(&format!("volume 2 of {n}"))
            && r.stderr
                .contains(&s(&half.join(vols[n - 1].file_name().context("name")?))),
        "the missing and the truncated volume are not named: {}",
        r.stderr
    );
    let c3_posts = "SELECT COUNT(*) FROM mdl_forum_posts WHERE message LIKE 'c3-%'";
    let got = count(&b.w.hub, c3_posts)?;
    ensure!(
        got > 0 && got < 40,
        "{got} of center 3's 40 posts came from the half copy: rows up to the gap expected"
    );
    let hub_pool = b.pool(1)?;
    ensure!(
        live(&hub_pool, &note3),
        "a complete file was not placed from the half copy"
    );
    ensure!(!live(&hub_pool, &essay3), "a file cut short was placed");

    let r = import_hub(&b, &stick)?;
    ensure!(r.ok, "the whole stick was refused: {}", r.stderr);
    ensure!(
        count(&b.w.hub, c3_posts)? == 40,
        "not all of center 3's posts arrived"
    );
    ensure!(live(&hub_pool, &essay3), "the essay did not arrive");
    eprintln!("{:?}: center 3's stick imported at the hub", t0.elapsed());

    // Center 2 gets center 3's work by its link; the hub gets center 2's essay. The agent may have
    // asked for the essay while only the half copy was in, and asks again about a blob the hub
    // lacked only after five minutes: a restart forgets that.
    agent2.restart(exe())?;
    let pool2 = b.pool(2)?;
    let arrived = wait_for(Duration::from_secs(90), || {
        (live(&pool2, &essay3) && live(&pool2, &note3) && live(&hub_pool, &essay2)).then_some(())
    });
    ensure!(
        arrived.is_some(),
        "the link did not carry the files (at center 2: essay3 {}, note3 {}; at the hub: essay2 {}): {}",
        live(&pool2, &essay3),
        live(&pool2, &note3),
        live(&hub_pool, &essay2),
        agent2.proc.log_text()
    );

    // Two round trips by stick bring center 3 level: the hub's stick, then its answer and the next.
    for round in 0..2 {
        let to3 = b.stick(&format!("to3-{round}"));
        export_for(&b, 3, &to3)?;
        let r = import_center(&c3, &to3)?;
        ensure!(r.ok, "center 3 refused the hub's stick: {}", r.stderr);
        let from3 = b.stick(&format!("from3-{round}"));
        export(&c3, &from3, Some("4.7G"))?;
        let r = import_hub(&b, &from3)?;
        ensure!(r.ok, "the hub refused center 3's stick: {}", r.stderr);
    }
    let pool3 = b.pool(3)?;
    for h in from_hub.iter().chain([&essay2]) {
        ensure!(live(&pool3, h), "center 3 lacks {h}");
    }
    b.w.wait_converged(
        &["forum_posts", "forum_discussions", "files"],
        Duration::from_secs(60),
    )?;
    for site in 1..=3 {
        let n = files::assert_filedir_sound(&b.pool(site)?)?;
        ensure!(n >= from_hub.len() + 3, "site {site} holds {n} blobs");
    }
    // The first stick again, now old: nothing changes at the hub.
    let posts = b.w.hub.dump("forum_posts")?;
    let r = import_hub(&b, &stick)?;
    ensure!(r.ok, "the old stick failed: {}", r.stderr);
    ensure!(
        b.w.hub.dump("forum_posts")? == posts,
        "the old stick changed the hub"
    );
    // Nothing left to send: center 3's last stick carried no changes and no files.
    let last = b.stick("c3-last");
    export(&c3, &last, None)?;
    let c3_history = history::recent(&mut b.center(1).sql()?, 1)?;
    ensure!(
        c3_history[0].direction == "export"
            && c3_history[0].changes == 0
            && c3_history[0].blobs == 0,
        "center 3 still exports: {:?}",
        c3_history[0]
    );
    eprintln!("{:?}: converged", t0.elapsed());
    Ok(())
}
