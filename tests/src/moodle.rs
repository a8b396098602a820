//! Real Moodle for the tests: a release from `../shared/moodle-release/` unpacked once per checkout,
//! Debian's PHP with the extensions Moodle needs, and sites on a test's own MariaDB installed by Moodle's
//! own installer. One code tree serves every site of a test: its config.php takes the database, socket
//! and data folder from the environment each PHP run is given.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::testbed::MariaDb;
use crate::workspace;

/// PHP modules Moodle 4.5's installer requires (php -m names), and the Debian packages that bring them.
const MODULES: &[&str] = &[
    "mysqli",
    "curl",
    "gd",
    "intl",
    "mbstring",
    "dom",
    "SimpleXML",
    "xmlreader",
    "zip",
    "soap",
    "sodium",
];
const PACKAGES: &[&str] = &[
    "php-cli",
    "php-mysql",
    "php-curl",
    "php-gd",
    "php-intl",
    "php-mbstring",
    "php-xml",
    "php-zip",
    "php-soap",
];

/// The folder of Moodle releases: `$KITUO_MOODLE_RELEASES`, else the shared folder beside the project,
/// else `/work/shared/moodle-release`.
pub fn releases() -> PathBuf {
    if let Some(dir) = std::env::var_os("KITUO_MOODLE_RELEASES") {
        return dir.into();
    }
    let beside = workspace().join("../shared/moodle-release");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared/moodle-release")
}

/// Installs PHP and the extensions Moodle needs when one is missing.
pub fn ensure_php() -> Result<()> {
    let loaded = Command::new("php")
        .arg("-m")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let missing = MODULES
        .iter()
        .any(|m| !loaded.lines().any(|l| l.trim() == *m));
    if !missing {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", PACKAGES.join(" "));
    }
    Ok(())
}

/// Moodle `version`'s code, unpacked under target/moodle/ on first use, with the tests' config.php.
pub fn code(version: &str) -> Result<PathBuf> {
    let tarball = releases().join(format!("moodle-{version}.tgz"));
    let into = workspace().join("target/moodle").join(version);
    let dirroot = into.join("moodle");
    if !dirroot.join("version.php").is_file() {
        if !tarball.is_file() {
            bail!(
                "no Moodle release at {} (set KITUO_MOODLE_RELEASES)",
                tarball.display()
            );
        }
        let _ = std::fs::remove_dir_all(&into);
        std::fs::create_dir_all(&into)?;
        let out = Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&into)
            .output()
            .context("cannot run tar")?;
        if !out.status.success() {
            bail!(
                "cannot unpack {}: {}",
                tarball.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    std::fs::write(dirroot.join("config.php"), CONFIG)?;
    Ok(dirroot)
}

/// config.php for the tests: each PHP run names its site in the environment.
const CONFIG: &str = r#"<?php
unset($CFG);
global $CFG;
$CFG = new stdClass();
$CFG->dbtype    = 'mariadb';
$CFG->dblibrary = 'native';
$CFG->dbhost    = 'localhost';
$CFG->dbname    = getenv('KITUO_MOODLE_DB');
$CFG->dbuser    = 'root';
$CFG->dbpass    = '';
$CFG->prefix    = 'mdl_';
$CFG->dboptions = ['dbsocket' => getenv('KITUO_MOODLE_SOCKET'), 'dbcollation' => 'utf8mb4_unicode_ci'];
$CFG->wwwroot   = getenv('KITUO_MOODLE_WWWROOT') ?: 'http://localhost';
$CFG->dataroot  = getenv('KITUO_MOODLE_DATA');
$CFG->directorypermissions = 02777;
// Notifications are counted in the database; no test sends mail.
$CFG->noemailever = true;
require_once(__DIR__ . '/lib/setup.php');
"#;

/// One Moodle site: a database on a test's server and its data folder, run with the shared code.
pub struct Site<'a> {
    pub db: &'a MariaDb,
    pub database: String,
    pub dirroot: PathBuf,
    pub dataroot: PathBuf,
}

impl<'a> Site<'a> {
    /// An empty site: its database made as Moodle wants it (utf8mb4), its data folder.
    pub fn new(db: &'a MariaDb, database: &str, dirroot: &Path, dataroot: &Path) -> Result<Self> {
        std::fs::create_dir_all(dataroot)?;
        let site = Site {
            db,
            database: database.to_owned(),
            dirroot: dirroot.to_owned(),
            dataroot: dataroot.to_owned(),
        };
        mariadb(
            db,
            None,
            &format!(
                "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ),
        )?;
        Ok(site)
    }

    /// What names this site to the shared code's config.php.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("KITUO_MOODLE_DIRROOT".into(), path(&self.dirroot)),
            ("KITUO_MOODLE_DB".into(), self.database.clone()),
            ("KITUO_MOODLE_SOCKET".into(), path(&self.db.socket)),
            ("KITUO_MOODLE_DATA".into(), path(&self.dataroot)),
        ]
    }

    /// How the sync engine at this site runs its Moodle (to clear its caches).
    pub fn engine_moodle(&self) -> appliance::sync::engine::caches::Moodle {
        appliance::sync::engine::caches::Moodle {
            dirroot: self.dirroot.clone(),
            user: None,
            env: self.env(),
        }
    }

    /// Runs one of Moodle's PHP scripts (relative to its code) for this site.
    pub fn php(&self, script: &str, args: &[&str]) -> Result<Output> {
        Command::new("php")
            // Moodle's environment check wants this; Debian's CLI default is 1000.
            .args(["-d", "max_input_vars=5000"])
            .arg(self.dirroot.join(script))
            .args(args)
            .envs(self.env())
            .output()
            .with_context(|| format!("cannot run php {script}"))
    }

    /// Does what a person does in Moodle, through Moodle's PHP API
    /// (`tests/fixtures/moodle-cli/actions.php ACTION ARGS`); returns what it printed, as JSON.
    pub fn act(&self, action: &str, args: &[&str]) -> Result<serde_json::Value> {
        let script = crate::workspace().join("tests/fixtures/moodle-cli/actions.php");
        let script = script.to_string_lossy();
        let out = self.php(&script, &[&[action], args].concat())?;
        let said = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{action} {args:?} at {} failed ({}):\n{}{}",
                self.database,
                out.status,
                tail(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_str(said.trim())
            .with_context(|| format!("{action} {args:?} printed no JSON: {}", tail(&out.stdout)))
    }

    /// Runs one of Moodle's CLI scripts for this site and fails on its failure, with what it said.
    pub fn run(&self, script: &str, args: &[&str]) -> Result<()> {
        let out = self.php(script, args)?;
        if !out.status.success() {
            bail!(
                "{script} at {} failed ({}):\n{}{}",
                self.database,
                out.status,
                tail(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Moodle's own installer, as central IT installs the hub.
    pub fn install(&self, fullname: &str) -> Result<()> {
        self.run(
            "admin/cli/install_database.php",
            &[
                "--agree-license",
                "--lang=en",
                &format!("--fullname={fullname}"),
                "--shortname=site",
                "--adminuser=admin",
                "--adminpass=Admin-pass-1",
                "--adminemail=admin@example.org",
            ],
        )
    }

    /// This site's database upgraded to its code's release by Moodle's own upgrade, as central IT
    /// upgrades the hub (and an update upgrades a card).
    pub fn upgrade(&self) -> Result<()> {
        self.run("admin/cli/upgrade.php", &["--non-interactive"])
    }

    /// The same site run with another release's code (its database and data folder as they are).
    pub fn with_code(&self, dirroot: &Path) -> Site<'a> {
        Site {
            db: self.db,
            database: self.database.clone(),
            dirroot: dirroot.to_owned(),
            dataroot: self.dataroot.clone(),
        }
    }

    /// Runs SQL as root on this site's database; returns the rows, tab-separated.
    pub fn sql(&self, sql: &str) -> Result<String> {
        mariadb(self.db, Some(&self.database), sql)
    }
}

fn mariadb(db: &MariaDb, database: Option<&str>, sql: &str) -> Result<String> {
    // On stdin: a whole schema is more than an argument may hold.
    let mut child = Command::new("mariadb")
        .arg(format!("--socket={}", db.socket.display()))
        .args([
            "--protocol=socket",
            "--user=root",
            "--batch",
            "--skip-column-names",
        ])
        .args(database)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run mariadb")?;
    let mut stdin = child.stdin.take().context("mariadb's stdin")?;
    let text = sql.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().context("mariadb")?;
    let _ = writer.join();
    if !out.status.success() {
        let shown: String = sql.chars().take(300).collect();
        bail!("{shown}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An action's printed value as text: ids print as numbers, names as strings.
pub fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The last lines of a long output (an installer prints thousands).
pub fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
