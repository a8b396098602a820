//! Moodle's first-boot install, without a card: a private MariaDB, Debian's PHP with mysqli, the stand-in
//! Moodle (tests/fixtures/moodle-standin, NOT Moodle) unpacked from its release tarball, and the image's
//! own templates (db-init, config.php, moodle-install) rendered by the code the builder and first boot
//! use. The scripts run as on the card (root; PHP as www-data through runuser, as the units do), pointed
//! at the test's server, folders and socket by their KITUO_* variables. A center joining the university
//! is seeded from a real `appliance hub` serving a card installed the same way.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use appliance::center::Center;
use appliance::commission::{context, render, secrets};
use kituo_tests::testbed::{require, MariaDb};
use kituo_tests::{appliance_binary, free_port, moodle_standin_release, run, workspace};
use serde_json::json;

struct Card {
    // Stopped before its folder goes (fields drop in order).
    db: MariaDb,
    dir: PathBuf,
    moodle: PathBuf,
    state: PathBuf,
    install: PathBuf,
    /// The appliance.ini the seed reads (written by the seed test).
    config: PathBuf,
    secrets: BTreeMap<String, String>,
    _tmp: tempfile::TempDir,
}

impl Card {
    fn query(&self, sql: &str) -> String {
        let out = run(Command::new("mariadb")
            .arg(format!("--socket={}", self.db.socket.display()))
            .args([
                "--protocol=socket",
                "--user=root",
                "--batch",
                "--skip-column-names",
                "-e",
                sql,
            ]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The install script as kituo-moodle-install.service runs it; its output is kept in a file.
    fn install(&self, name: &str) -> (Output, String) {
        let out = Command::new(&self.install)
            .env("KITUO_MOODLE_DIR", &self.moodle)
            .env("KITUO_STATE_DIR", &self.state)
            .env("KITUO_DB_SOCKET", &self.db.socket)
            .env("KITUO_CONFIG", &self.config)
            .env("KITUO_APPLIANCE", appliance_binary())
            .output()
            .expect("run moodle-install");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(self.dir.join(format!("{name}.log")), &text).expect("write log");
        (out, text)
    }

    /// The sync engine's password (made by db-init) in a file, for an appliance.ini or hub.ini.
    fn engine_password(&self) -> PathBuf {
        let file = self.dir.join("kituo-db-password");
        std::fs::write(&file, &self.secrets["kituo_db_password"]).unwrap();
        file
    }

    /// This card's appliance.ini as site `site` of the hub at `hub_url`, for the seed.
    fn write_config(&self, site: u8, hub_url: &str, secret: &Path) {
        std::fs::write(
            &self.config,
            format!(
                "[site]\ncenter_id = joining\nsite_id = {site}\n[sync]\nhub_url = {hub_url}\n\
                 secret_file = {}\n[moodle]\nsocket = {}\npassword_file = {}\ndirroot = {}\n",
                secret.display(),
                self.db.socket.display(),
                self.engine_password().display(),
                self.moodle.display()
            ),
        )
        .unwrap();
    }

    /// A PHP entry point as www-data, as kituo-moodle-cron.service (User=www-data) and PHP-FPM run them.
    fn php(&self, script: &str) -> String {
        let out = run(Command::new("runuser")
            .args(["-u", "www-data", "--", "php"])
            .arg(self.moodle.join(script)));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn ensure_php_mysqli() {
    require("php", "php-cli").expect("php-cli");
    let loaded = |_: ()| {
        Command::new("php")
            .args(["-r", "exit(extension_loaded('mysqli') ? 0 : 1);"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !loaded(()) {
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "php-mysql",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"));
    }
    assert!(
        loaded(()),
        "PHP's mysqli is needed: install Debian package php-mysql"
    );
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Renders an image template from `overlays/<layer>/rootfs/<rel>.tmpl` for the example center.
fn render_template(layer: &str, rel: &str, context: &serde_json::Value) -> String {
    let path = workspace()
        .join("overlays")
        .join(layer)
        .join("rootfs")
        .join(format!("{rel}{}", render::SUFFIX));
    render::render(&render::environment(), &path, context).expect("render")
}

/// An image script rendered into `dir` under its own name, root only (as customize.sh sets it).
fn script(dir: &Path, layer: &str, rel: &str, context: &serde_json::Value) -> PathBuf {
    let path = dir.join(Path::new(rel).file_name().expect("a file name"));
    std::fs::write(&path, render_template(layer, rel, context)).unwrap();
    chmod(&path, 0o700);
    path
}

/// The example center's card, as site `site` (its MariaDB as the image sets it up for sync), making
/// Moodle's database as `moodle` says (`install` or `seed`).
fn card(site: u8, moodle: &str) -> Card {
    ensure_php_mysqli();
    require("runuser", "util-linux").expect("runuser");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    // www-data must reach the socket and the code, as on the card.
    chmod(&dir, 0o755);
    let site_args = MariaDb::sync_site_args(site.into(), 64, site.into());
    let db = MariaDb::start_with(&dir.join("db"), &site_args).expect("start MariaDB");
    chmod(&db.dir, 0o755);

    let mut center =
        Center::load(&workspace().join("board-configs/example-center.ini")).expect("center");
    center.site_id = site;
    center.moodle = moodle.to_owned();
    let mut values = BTreeMap::new();
    secrets::fill_missing(&mut values);
    // The three templates use the center half only: an empty image half keeps that checked (strict).
    let context = context::merge(context::center_half(&center, &values), json!({}));

    // db-init, as kituo-db-init.service runs it before the install.
    let db_init = script(&dir, "common", "usr/lib/kituo/db-init", &context);
    run(Command::new(&db_init).env("KITUO_DB_SOCKET", &db.socket));

    // The release as the builder unpacks it (tar, top folder stripped), root-owned and read-only.
    let (tarball, _) = moodle_standin_release(&dir);
    let moodle = dir.join("www/moodle");
    std::fs::create_dir_all(&moodle).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&moodle)
        .args([
            "--strip-components=1",
            "--no-same-owner",
            "--no-same-permissions",
        ]));
    chmod(&dir.join("www"), 0o755);

    // config.php from the real template; only the socket and dataroot move into the test's folder.
    let dataroot = dir.join("moodledata");
    std::fs::create_dir_all(&dataroot).unwrap();
    run(Command::new("chown")
        .arg("www-data:www-data")
        .arg(&dataroot));
    chmod(&dataroot, 0o770);
    let mut config = render_template("moodle", "var/www/moodle/config.php", &context);
    for (card_value, here) in [
        ("'/run/mysqld/mysqld.sock'", &db.socket),
        ("'/data/moodledata'", &dataroot),
    ] {
        assert!(
            config.contains(card_value),
            "{card_value} missing from config.php:\n{config}"
        );
        config = config.replace(card_value, &format!("'{}'", here.display()));
    }
    std::fs::write(moodle.join("config.php"), config).unwrap();
    run(Command::new("chown")
        .arg("root:www-data")
        .arg(moodle.join("config.php")));
    chmod(&moodle.join("config.php"), 0o640);

    let install = script(&dir, "moodle", "usr/lib/kituo/moodle-install", &context);
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    Card {
        db,
        config: dir.join("appliance.ini"),
        dir,
        moodle,
        state,
        install,
        secrets: values,
        _tmp: tmp,
    }
}

#[test]
fn first_boot_installs_moodle_once_and_recovers_a_cut_install() {
    let card = card(2, "install");
    let (done, started) = (
        card.state.join("moodle-installed"),
        card.state.join("moodle-install.started"),
    );

    let (out, log) = card.install("first");
    assert!(out.status.success(), "{log}");
    assert!(log.contains("installed Moodle version 2024100700"), "{log}");
    assert!(done.exists() && !started.exists(), "{log}");
    assert_eq!(
        card.query("SELECT value FROM moodle.mdl_config WHERE name = 'version'"),
        "2024100700"
    );
    assert_eq!(
        card.query("SELECT fullname FROM moodle.mdl_course WHERE id = 1"),
        "Example Regional Center"
    );
    assert_eq!(
        card.query("SELECT shortname FROM moodle.mdl_course WHERE id = 1"),
        "example"
    );
    assert_eq!(
        card.query("SELECT email FROM moodle.mdl_user WHERE username = 'admin'"),
        "admin@kituo.kituo.lan"
    );
    // The admin password reached the installer (by the environment, not the command line).
    let hash = card.query("SELECT password FROM moodle.mdl_user WHERE username = 'admin'");
    let check = format!(
        "exit(password_verify('{}', '{hash}') ? 0 : 1);",
        card.secrets["moodle_admin_password"]
    );
    assert!(
        Command::new("php")
            .args(["-r", &check])
            .status()
            .is_ok_and(|s| s.success()),
        "the admin password is not the card's"
    );
    let site = card.query("SELECT value FROM moodle.mdl_config WHERE name = 'siteidentifier'");
    assert!(card
        .php("index.php")
        .contains("<h1>Example Regional Center</h1>"));

    // wwwroot: the access point's name, or the address the LAN reached the appliance by; nothing else.
    for (host, wwwroot) in [
        ("kituo.kituo.lan", "http://kituo.kituo.lan"),
        ("192.168.1.20", "http://192.168.1.20"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("evil.example", "http://kituo.kituo.lan"),
        ("10.0.0.1/x", "http://kituo.kituo.lan"),
    ] {
        let php = format!(
            "$_SERVER['HTTP_HOST'] = '{host}'; require '{}/config.php'; echo $CFG->wwwroot;",
            card.moodle.display()
        );
        let out = run(Command::new("runuser").args(["-u", "www-data", "--", "php", "-r", &php]));
        assert_eq!(
            (host, String::from_utf8_lossy(&out.stdout).trim()),
            (host, wwwroot)
        );
    }

    // Second boot: nothing happens.
    let (out, log) = card.install("second");
    assert!(
        out.status.success() && log.contains("nothing to do"),
        "{log}"
    );
    assert_eq!(
        card.query("SELECT value FROM moodle.mdl_config WHERE name = 'siteidentifier'"),
        site
    );

    // Cron, as the timer's service runs it.
    assert!(card
        .php("admin/cli/cron.php")
        .contains("Cron run completed"));
    let lastcron = card.query("SELECT value FROM moodle.mdl_config WHERE name = 'lastcron'");
    assert!(
        lastcron.parse::<u64>().is_ok_and(|t| t > 1_700_000_000),
        "{lastcron}"
    );

    // A power cut mid-install: the start is recorded, the end is not, some tables exist. The next boot
    // drops them and installs again (a new site identifier shows it was redone).
    std::fs::remove_file(&done).unwrap();
    std::fs::write(&started, "2026-11-22T00:00:00Z\n").unwrap();
    card.query("DROP TABLE moodle.mdl_user");
    let (out, log) = card.install("after-cut");
    assert!(
        out.status.success() && log.contains("did not finish"),
        "{log}"
    );
    assert!(done.exists() && !started.exists(), "{log}");
    assert_eq!(card.query("SELECT COUNT(*) FROM moodle.mdl_user"), "2");
    assert_ne!(
        card.query("SELECT value FROM moodle.mdl_config WHERE name = 'siteidentifier'"),
        site
    );

    // Tables this appliance never started installing (a seeded or foreign database, or a lost record):
    // refused, and nothing is dropped.
    std::fs::remove_file(&done).unwrap();
    let (out, log) = card.install("foreign");
    assert!(
        !out.status.success() && log.contains("it is left alone"),
        "{log}"
    );
    assert_eq!(card.query("SELECT COUNT(*) FROM moodle.mdl_user"), "2");
    assert!(!done.exists() && !started.exists());
}

/// `appliance hub` serving a card's Moodle; killed when dropped.
struct Hub {
    child: std::process::Child,
    url: String,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    fn start(card: &Card) -> Hub {
        let port = free_port();
        let config = card.dir.join("hub.ini");
        std::fs::write(
            &config,
            format!(
                "[hub]\nlisten = 127.0.0.1:{port}\nsite_id = 1\ncapture_ms = 200\n\
                 [moodle]\nsocket = {}\npassword_file = {}\ndirroot = {}\n",
                card.db.socket.display(),
                card.engine_password().display(),
                card.moodle.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(card.dir.join("hub.log")).unwrap();
        let child = Command::new(appliance_binary())
            .args(["hub", "--config"])
            .arg(&config)
            .stderr(log)
            .spawn()
            .expect("start appliance hub");
        let hub = Hub {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let health = format!("{}/sync/v1/health", hub.url);
        let up = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            Command::new("curl")
                .args(["-sf", &health])
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            up,
            "the hub did not start:\n{}",
            std::fs::read_to_string(card.dir.join("hub.log")).unwrap_or_default()
        );
        hub
    }

    /// Registers site `site` with the hub; returns its secret file.
    fn add_center(&self, card: &Card, site: u8) -> PathBuf {
        let secret = card.dir.join(format!("site{site}-secret"));
        run(Command::new(appliance_binary())
            .args(["hub", "--config"])
            .arg(card.dir.join("hub.ini"))
            .args([
                "add-center",
                "--site",
                &site.to_string(),
                "--name",
                "Joining",
            ])
            .arg("--secret-out")
            .arg(&secret));
        secret
    }
}

#[test]
fn a_joining_center_is_seeded_from_the_hub_on_first_boot() {
    // The university: a Moodle installed by its installer, served by the hub.
    let university = card(1, "install");
    let (out, log) = university.install("hub-install");
    assert!(out.status.success(), "{log}");
    let hub = Hub::start(&university);

    // The new center: the same image, center.ini says seed.
    let center = card(3, "seed");
    let secret = hub.add_center(&university, 3);
    center.write_config(3, &hub.url, &secret);

    let (out, log) = center.install("seed");
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("seeded Moodle version 2024100700 from the hub"),
        "{log}"
    );
    assert!(center.state.join("moodle-installed").exists(), "{log}");
    // The university's site, not a new one: its identifier, front page, administrator.
    for sql in [
        "SELECT value FROM moodle.mdl_config WHERE name = 'siteidentifier'",
        "SELECT fullname FROM moodle.mdl_course WHERE id = 1",
        "SELECT CONCAT(id, ' ', username, ' ', password) FROM moodle.mdl_user ORDER BY id",
    ] {
        assert_eq!(center.query(sql), university.query(sql), "{sql}");
    }
    assert!(center
        .php("index.php")
        .contains("<h1>Example Regional Center</h1>"));
    assert!(center
        .php("admin/cli/cron.php")
        .contains("Cron run completed"));

    // The next boot finds it made.
    let (out, log) = center.install("seed-again");
    assert!(
        out.status.success() && log.contains("nothing to do"),
        "{log}"
    );

    // A hub that cannot be reached (the link is down on first boot): the unit fails, records no end,
    // and is retried; nothing is left half-made that a retry could not finish.
    let cut = card(4, "seed");
    cut.write_config(4, "http://127.0.0.1:9", &secret);
    let (out, log) = cut.install("unreachable");
    assert!(
        !out.status.success() && log.contains("the seed from the hub failed"),
        "{log}"
    );
    assert!(!cut.state.join("moodle-installed").exists());
    assert!(cut.state.join("moodle-install.started").exists());
}
