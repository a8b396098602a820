//! `/etc/kituo/appliance.ini`: the supervisor's own settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::health;
use crate::ini::{ConfigError, Document, Key, Schema, Section};
use crate::power::shutdown::{Cmd, Plan};
use crate::sync::link::settings::AgentSettings;

pub mod local;
pub mod power;

pub use power::{
    boolean, GpioConfig, NutConfig, PowerConfig, SourceKind, WaveshareConfig, X728Config,
};
use power::{path_or_none, secs};

pub const SCHEMA: Schema = &[
    Section {
        name: "site",
        help: "Which center this appliance serves (written by the image builder from the center config).",
        free_keys: false,
        keys: &[
            Key::required("center_id", "the center's short identifier"),
            Key::optional("center_name", "", "the center's name, shown on the status page"),
            Key::required("site_id", "the site number, 1 to 255"),
        ],
    },
    Section {
        name: "status",
        help: "The status page, its JSON API and metrics.",
        free_keys: false,
        keys: &[
            Key::optional("listen", "127.0.0.1:8080", "address the status server listens on (nginx proxies it)"),
            Key::optional(
                "build_info",
                "/etc/kituo/build.ini",
                "file the image builder writes with the build's identity",
            ),
            Key::optional(
                "center_record",
                "/data/kituo/center.json",
                "what `appliance center apply` did with the boot partition's center.ini at first boot (an \
                 error there is shown on the page)",
            ),
            local::REFRESH_SECONDS,
            local::TECHNICIAN_PASSWORD_HASH,
            Key::optional("reboot_command", "systemctl reboot", "command the 'reboot' action runs"),
        ],
    },
    power::POWER,
    power::NUT,
    power::SYSFS,
    power::X728,
    power::WAVESHARE,
    power::GPIO,
    Section {
        name: "shutdown",
        help: "The low-battery shutdown sequence. Commands are split on spaces and run without a shell; \
               empty skips the step.",
        free_keys: false,
        keys: &[
            Key::optional(
                "grace_seconds",
                "0",
                "wait this long (power back cancels) before stopping anything",
            ),
            Key::optional("stop_sync", "systemctl stop kituo-sync.service", "stops the sync agent"),
            Key::optional("start_sync", "systemctl start kituo-sync.service", "undoes stop_sync on cancel"),
            Key::optional(
                "stop_web",
                "systemctl stop nginx.service php8.4-fpm.service",
                "stops the web server and PHP",
            ),
            Key::optional(
                "start_web",
                "systemctl start php8.4-fpm.service nginx.service",
                "undoes stop_web on cancel",
            ),
            Key::optional("web_timeout_seconds", "30", "time limit of each sync and web step"),
            Key::optional(
                "stop_database",
                "systemctl stop mariadb.service",
                "stops MariaDB cleanly (the point of no return)",
            ),
            Key::optional(
                "database_pid_file",
                "/run/mysqld/mysqld.pid",
                "MariaDB's pid file: its process must be gone before power-off",
            ),
            Key::optional("database_timeout_seconds", "60", "time limit for MariaDB to stop"),
            Key::optional("poweroff", "systemctl poweroff", "the last step"),
            Key::optional("poweroff_timeout_seconds", "60", "time limit of the poweroff command"),
            Key::optional(
                "console",
                "/dev/kmsg",
                "each step is also written here, so the console shows it; empty: the journal only",
            ),
        ],
    },
    Section {
        name: "health",
        help: "Service probes, restarts and system facts. An empty probe setting turns that probe off.",
        free_keys: false,
        keys: &[
            Key::optional("interval_seconds", "30", "how often the probes run, 5 to 3600"),
            Key::optional("web_url", "http://127.0.0.1/", "a page nginx must serve"),
            Key::optional("web_unit", "nginx.service", "unit restarted when web_url fails"),
            Key::optional("fpm_ping_url", "http://127.0.0.1/fpm-ping", "PHP-FPM's ping through nginx"),
            Key::optional("fpm_unit", "php8.4-fpm.service", "unit restarted when the ping fails"),
            Key::optional("mariadb_socket", "/run/mysqld/mysqld.sock", "socket for the SELECT 1 probe"),
            Key::optional("mariadb_client", "mariadb", "command-line client that runs it"),
            Key::optional("mariadb_unit", "mariadb.service", "unit restarted when SELECT 1 fails"),
            Key::optional("hostapd_control", "/run/hostapd/wlan0", "hostapd's control socket (PING)"),
            Key::optional("hostapd_unit", "kituo-hostapd.service", "unit restarted when hostapd is silent"),
            Key::optional("partitions", "/, /data, /boot/firmware", "mount points whose free space is shown"),
            Key::optional("min_free_percent", "10", "less free space than this is a warning"),
            Key::optional(
                "restart_command",
                "systemctl restart",
                "prefix of the restart command (the unit is appended); empty: never restart",
            ),
            Key::optional(
                "failures_before_restart",
                "3",
                "failed probes in a row before a restart, 1 to 100: one slow answer is not a dead service",
            ),
            Key::optional("backoff_seconds", "30", "pause after the first restart; doubles each time"),
            Key::optional("backoff_max_seconds", "1800", "longest pause between restarts"),
            Key::optional("sys_root", "/sys", "sysfs, for thermal zones and Raspberry Pi throttling flags"),
            Key::optional(
                "timesync_flag",
                "/run/systemd/timesync/synchronized",
                "exists once systemd-timesyncd has set the clock",
            ),
        ],
    },
    crate::sync::link::settings::SYNC_SECTION,
    crate::sync::link::settings::MOODLE_SECTION,
    crate::sync::files::settings::FILES_SECTION,
];

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub center_id: String,
    pub center_name: String,
    pub site_id: u8,
    pub listen: SocketAddr,
    pub build_info: PathBuf,
    pub center_record: PathBuf,
    pub refresh_seconds: u64,
    pub technician_password_hash: Option<String>,
    pub reboot_command: Option<Cmd>,
    pub power: PowerConfig,
    pub shutdown: Plan,
    pub health: HealthTemplate,
    /// `None`: no hub configured, sync is off.
    pub sync: Option<AgentSettings>,
}

/// The `[health]` settings; the build epoch is filled in at start from the build-info file.
#[derive(Debug, Clone)]
pub struct HealthTemplate(pub health::Settings);

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::read(&Document::load(path, SCHEMA)?)
    }

    /// `text` as if read from `path` (a file about to be written).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::read(&Document::parse(path, text, SCHEMA)?)
    }

    fn read(doc: &Document) -> Result<Self, ConfigError> {
        let path = doc.file();
        let power = PowerConfig::read(doc)?;
        let cmd = |key: &str| Cmd::parse(doc.get("shutdown", key));
        let shutdown = Plan {
            grace: secs(doc, "shutdown", "grace_seconds", 0..=3600)?,
            stop_sync: cmd("stop_sync"),
            start_sync: cmd("start_sync"),
            stop_web: cmd("stop_web"),
            start_web: cmd("start_web"),
            web_timeout: secs(doc, "shutdown", "web_timeout_seconds", 1..=600)?,
            stop_database: cmd("stop_database"),
            database_pid_file: doc.get("shutdown", "database_pid_file").into(),
            database_timeout: secs(doc, "shutdown", "database_timeout_seconds", 1..=600)?,
            poweroff: cmd("poweroff"),
            poweroff_timeout: secs(doc, "shutdown", "poweroff_timeout_seconds", 1..=600)?,
            console: path_or_none(doc, "shutdown", "console"),
        };
        let h = "health";
        let mut services = Vec::new();
        let mut add = |name: &str, probe: Option<health::Probe>, unit_key: &str| {
            if let Some(probe) = probe {
                services.push(health::Service {
                    name: name.to_owned(),
                    probe,
                    unit: doc.get(h, unit_key).to_owned(),
                });
            }
        };
        let url = |key: &str| {
            let v = doc.get(h, key);
            (!v.is_empty()).then(|| health::Probe::Http { url: v.to_owned() })
        };
        add("web (nginx)", url("web_url"), "web_unit");
        add("PHP-FPM", url("fpm_ping_url"), "fpm_unit");
        add(
            "MariaDB",
            path_or_none(doc, h, "mariadb_socket").map(|socket| health::Probe::MariaDb {
                client: doc.get(h, "mariadb_client").to_owned(),
                socket,
            }),
            "mariadb_unit",
        );
        add(
            "Wi-Fi access point",
            path_or_none(doc, h, "hostapd_control")
                .map(|control| health::Probe::Hostapd { control }),
            "hostapd_unit",
        );
        let health = health::Settings {
            interval: secs(doc, h, "interval_seconds", 5..=3600)?,
            services,
            partitions: doc
                .list(h, "partitions")
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            min_free_percent: doc.int_in(h, "min_free_percent", 0..=100)? as u8,
            restart: Cmd::parse(doc.get(h, "restart_command")),
            failures_before_restart: doc.int_in(h, "failures_before_restart", 1..=100)? as u32,
            backoff: secs(doc, h, "backoff_seconds", 1..=86_400)?,
            backoff_max: secs(doc, h, "backoff_max_seconds", 1..=86_400)?,
            sys_root: doc.get(h, "sys_root").into(),
            timesync_flag: doc.get(h, "timesync_flag").into(),
            build_epoch: None,
        };
        let technician_password_hash = local::technician_hash(doc)?;
        Ok(Config {
            file: path.to_owned(),
            center_id: doc.get("site", "center_id").to_owned(),
            center_name: doc.get("site", "center_name").to_owned(),
            site_id: doc.int_in("site", "site_id", 1..=255)? as u8,
            listen: doc.parse_as("status", "listen", "an address:port like 127.0.0.1:8080")?,
            build_info: doc.get("status", "build_info").into(),
            center_record: doc.get("status", "center_record").into(),
            refresh_seconds: doc.int_in("status", "refresh_seconds", 5..=3600)?,
            technician_password_hash,
            reboot_command: Cmd::parse(doc.get("status", "reboot_command")),
            power,
            shutdown,
            health: HealthTemplate(health),
            sync: AgentSettings::read(doc)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_listen_address_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.ini");
        std::fs::write(
            &path,
            "[site]\ncenter_id = x\nsite_id = 2\n[status]\nlisten = localhost\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(
            e.to_string().contains("key 'listen' in section [status]"),
            "{e}"
        );
    }
}
