//! Sync settings: the `[sync]` and `[moodle]` sections of a center's `appliance.ini`, and the hub's own
//! `hub.ini` (`[hub]` and the same `[moodle]`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::ini::{ConfigError, Document, Key, Section};
use crate::sync::engine::caches::Moodle;
use crate::sync::engine::capture;
use crate::sync::engine::policy::{Policy, Role, Rulebook};
use crate::sync::engine::site::SiteConfig;
use crate::sync::engine::sql::Target;
use crate::sync::files;
use crate::sync::files::pool::Perms;
use crate::sync::files::settings::FileSettings;
use crate::sync::schema::rules::Rules;
use crate::sync::schema::Schema as MoodleSchema;

/// Where Moodle's data and code are, and how the engine reaches the local MariaDB.
pub const MOODLE_SECTION: Section = Section {
    name: "moodle",
    help: "The local Moodle the sync engine works on: its database and its code (for the XMLDB schema).",
    free_keys: false,
    keys: &[
        Key::optional("database", "moodle", "Moodle's database"),
        Key::optional("prefix", "mdl_", "Moodle's table prefix ($CFG->prefix)"),
        Key::optional("socket", "/run/mysqld/mysqld.sock", "the local MariaDB's socket (never TCP)"),
        Key::optional("user", "kituo", "the sync engine's MariaDB account"),
        Key::optional(
            "password_file",
            "/etc/kituo/secrets/kituo-db-password",
            "file holding that account's password; empty: socket authentication",
        ),
        Key::optional(
            "dirroot",
            "/var/www/moodle",
            "Moodle's code: every db/install.xml under it gives the schema and the sync rules",
        ),
        Key::optional(
            "php_user",
            "www-data",
            "the user Moodle's PHP runs as: the helper that clears Moodle's caches after sync applied \
             rows runs as this user when this program runs as root",
        ),
        Key::optional(
            "rules_file",
            "",
            "a sync-rules override file (only the exceptions to the built-in rules); empty: none",
        ),
        Key::optional(
            "ready_file",
            "",
            "a file first boot writes once Moodle's database is installed or seeded from the hub; sync \
             waits for it, so that an install's own rows never reach the hub; empty: no wait",
        ),
    ],
};

pub const SYNC_SECTION: Section = Section {
    name: "sync",
    help: "Row sync with the university's hub. Runs inside `appliance supervise`, or alone with \
           `appliance sync run`.",
    free_keys: false,
    keys: &[
        Key::optional(
            "hub_url",
            "",
            "the hub's base URL, e.g. https://moodle.example.ac.tz/kituo; empty: sync is off",
        ),
        Key::optional(
            "secret_file",
            "/etc/kituo/secrets/sync-secret",
            "this center's shared secret with the hub (64 hex digits; `appliance hub add-center` makes it)",
        ),
        Key::optional(
            "ca_file",
            "",
            "PEM certificates to trust for an https hub_url signed by the university's own CA; empty: \
             the public web's roots",
        ),
        Key::optional("interval_seconds", "30", "pause between exchanges when nothing is waiting, 1 to 3600"),
        Key::optional(
            "capture_ms",
            "500",
            "how often the center records its Moodle's new changes, link or no link, 100 to 60000",
        ),
        Key::optional("batch_changes", "500", "most changes in one request, 10 to 10000"),
        Key::optional(
            "batch_kib",
            "64",
            "largest page the hub sends, in KiB before compression, 4 to 16384: small pages lose little on a cut",
        ),
        Key::optional(
            "rate_limit_kbit",
            "0",
            "cap on the agent's traffic in kbit/s, so Moodle's users keep part of a slow link; 0: no cap",
        ),
        Key::optional("timeout_seconds", "30", "a request silent this long counts as a cut, 5 to 600"),
        Key::optional("backoff_max_seconds", "300", "longest wait between failed attempts, 1 to 86400"),
    ],
};

pub const HUB_SCHEMA: crate::ini::Schema = &[
    Section {
        name: "hub",
        help: "The hub: the central side of sync, beside the university's Moodle (`appliance hub`).",
        free_keys: false,
        keys: &[
            Key::optional(
                "listen",
                "127.0.0.1:8470",
                "address the hub listens on; put nginx (TLS) in front of it, and run several hubs if needed",
            ),
            Key::optional("site_id", "1", "the hub's site number (its MariaDB server_id)"),
            Key::optional("workers", "4", "requests served at once, each with its own MariaDB connection"),
            Key::optional(
                "capture_ms",
                "1000",
                "how often the hub records its own Moodle's changes for the centers, 100 to 60000",
            ),
            Key::optional(
                "dataroot",
                "",
                "the university Moodle's $CFG->dataroot: centers fetch blobs from its filedir and send \
                 theirs into it; empty: the hub does not sync files",
            ),
            files::settings::DIRECTORY_PERMISSIONS,
            files::settings::FILE_PERMISSIONS,
            files::settings::TRASH_AFTER,
        ],
    },
    MOODLE_SECTION,
];

/// The `[moodle]` section, read.
#[derive(Debug, Clone)]
pub struct MoodleSettings {
    pub target: Target,
    pub socket: PathBuf,
    pub user: String,
    pub password_file: Option<PathBuf>,
    pub dirroot: PathBuf,
    pub php_user: String,
    pub rules_file: Option<PathBuf>,
    pub ready_file: Option<PathBuf>,
}

impl MoodleSettings {
    pub fn read(doc: &Document) -> Result<MoodleSettings, ConfigError> {
        let s = "moodle";
        let name = |key: &str| -> Result<String, ConfigError> {
            let v = doc.get(s, key);
            let ok = v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if ok && (key == "prefix" || !v.is_empty()) {
                Ok(v.to_owned())
            } else {
                Err(doc.error(s, key, "expected letters, digits and '_' only"))
            }
        };
        let path = |key: &str| {
            let v = doc.get(s, key);
            (!v.is_empty()).then(|| PathBuf::from(v))
        };
        Ok(MoodleSettings {
            target: Target {
                database: name("database")?,
                prefix: name("prefix")?,
            },
            socket: doc.get(s, "socket").into(),
            user: doc.get(s, "user").to_owned(),
            password_file: path("password_file"),
            dirroot: doc.get(s, "dirroot").into(),
            php_user: doc.get(s, "php_user").to_owned(),
            rules_file: path("rules_file"),
            ready_file: path("ready_file"),
        })
    }

    /// Connection options for the engine's account, over the socket.
    pub fn opts(&self) -> Result<mysql::Opts> {
        let password = match &self.password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the password file {}", file.display()))?
                    .trim_end()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(mysql::OptsBuilder::new()
            .socket(Some(self.socket.to_string_lossy()))
            .user(Some(self.user.clone()))
            .pass(password)
            .into())
    }

    /// The rules for this Moodle: its XMLDB schema, the built-in lists and the override file, derived
    /// again whenever Moodle's upgrade changed its installed versions.
    pub fn rulebook(&self) -> Result<Rulebook> {
        let schema = MoodleSchema::load_moodle_dir(&self.dirroot).with_context(|| {
            format!(
                "cannot read Moodle's schema under {}",
                self.dirroot.display()
            )
        })?;
        let policy = Policy::new(Rules::load(&schema, self.rules_file.as_deref())?);
        Ok(Rulebook::from_policy(
            policy,
            &self.target,
            &self.dirroot,
            self.rules_file.as_deref(),
        ))
    }

    pub fn site_config(&self, site: u32, role: Role) -> Result<SiteConfig> {
        Ok(SiteConfig {
            site,
            role,
            target: self.target.clone(),
            opts: self.opts()?,
            reader_id: capture::reader_server_id(site),
            moodle: self.moodle(),
        })
    }

    /// Moodle's PHP at this site, if its code is installed with a config.php (a hub or a card; not
    /// a schema-only checkout).
    fn moodle(&self) -> Option<Moodle> {
        if !self.dirroot.join("config.php").is_file() {
            return None;
        }
        let as_root = nix::unistd::geteuid().is_root();
        Some(Moodle {
            dirroot: self.dirroot.clone(),
            user: (as_root && !self.php_user.is_empty()).then(|| self.php_user.clone()),
            env: Vec::new(),
        })
    }
}

/// The `[sync]` section, read: `None` when `hub_url` is empty.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub hub_url: String,
    pub secret_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub interval: Duration,
    /// How often local changes are recorded (continuously, beside the exchanges).
    pub capture_every: Duration,
    pub batch_changes: usize,
    pub batch_bytes: usize,
    /// Bytes per second; `None`: no cap.
    pub rate_limit: Option<u64>,
    pub timeout: Duration,
    pub backoff_max: Duration,
    pub moodle: MoodleSettings,
    /// `None`: files are not synced.
    pub files: Option<FileSettings>,
}

impl AgentSettings {
    pub fn read(doc: &Document) -> Result<Option<AgentSettings>, ConfigError> {
        let s = "sync";
        let hub_url = doc.get(s, "hub_url").trim_end_matches('/').to_owned();
        if hub_url.is_empty() {
            return Ok(None);
        }
        if !(hub_url.starts_with("http://") || hub_url.starts_with("https://")) {
            return Err(doc.error(s, "hub_url", "expected an http:// or https:// URL"));
        }
        let secs = |key: &str, range| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(doc.int_in(s, key, range)?))
        };
        let kbit = doc.int_in(s, "rate_limit_kbit", 0..=10_000_000)?;
        Ok(Some(AgentSettings {
            hub_url,
            secret_file: doc.get(s, "secret_file").into(),
            ca_file: Some(doc.get(s, "ca_file"))
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            interval: secs("interval_seconds", 1..=3600)?,
            capture_every: Duration::from_millis(doc.int_in(s, "capture_ms", 100..=60_000)?),
            batch_changes: doc.int_in(s, "batch_changes", 10..=10_000)? as usize,
            batch_bytes: doc.int_in(s, "batch_kib", 4..=16_384)? as usize * 1024,
            rate_limit: (kbit > 0).then_some(kbit * 1000 / 8),
            timeout: secs("timeout_seconds", 5..=600)?,
            backoff_max: secs("backoff_max_seconds", 1..=86_400)?,
            moodle: MoodleSettings::read(doc)?,
            files: FileSettings::read(doc)?,
        }))
    }
}

/// `hub.ini`, read.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub listen: SocketAddr,
    pub site_id: u32,
    pub workers: usize,
    pub capture_every: Duration,
    pub moodle: MoodleSettings,
    /// Where the hub's Moodle keeps its files; `None`: files are not synced.
    pub dataroot: Option<PathBuf>,
    pub perms: Perms,
    pub trash_after: Option<Duration>,
}

impl HubSettings {
    pub fn load(path: &Path) -> Result<HubSettings, ConfigError> {
        let doc = Document::load(path, HUB_SCHEMA)?;
        let s = "hub";
        Ok(HubSettings {
            listen: doc.parse_as(s, "listen", "an address:port like 127.0.0.1:8470")?,
            site_id: doc.int_in(s, "site_id", 1..=255)? as u32,
            workers: doc.int_in(s, "workers", 1..=64)? as usize,
            capture_every: Duration::from_millis(doc.int_in(s, "capture_ms", 100..=60_000)?),
            moodle: MoodleSettings::read(&doc)?,
            dataroot: Some(doc.get(s, "dataroot"))
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            perms: files::settings::perms(&doc, s)?,
            trash_after: files::settings::trash_after(&doc, s)?,
        })
    }
}
