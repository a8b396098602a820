//! `/etc/kituo/appliance.ini`: the supervisor's own settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::health;
use crate::ini::{ConfigError, Document, Key, Schema, Section};
use crate::power::shutdown::{Cmd, Plan};
use crate::power::state::Thresholds;
use crate::sync::link::settings::AgentSettings;

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
            Key::optional(
                "refresh_seconds",
                "30",
                "how often the page reloads itself in the technician's browser, 5 to 3600",
            ),
            Key::optional(
                "technician_password_hash",
                "",
                "Argon2 hash of the technician password (make one with `appliance hash-password`); empty: \
                 the page is read-only and offers no actions",
            ),
            Key::optional("reboot_command", "systemctl reboot", "command the 'reboot' action runs"),
        ],
    },
    Section {
        name: "power",
        help: "Power and UPS watch: which sources to read and when to shut down.",
        free_keys: false,
        keys: &[
            Key::optional(
                "sources",
                "",
                "comma-separated sources: nut, sysfs, x728 (Geekworm X728/X1200), waveshare (INA219 UPS HAT), \
                 gpio (Linux GPIO line); empty: no UPS, power is not watched",
            ),
            Key::optional("poll_seconds", "2", "how often the sources are read, 1 to 60"),
            Key::optional("debounce_seconds", "5", "a change between mains and battery must last this long"),
            Key::optional(
                "low_debounce_seconds",
                "2",
                "low-battery readings must be seen this far apart to shut down (clean ones between do not reset it)",
            ),
            Key::optional(
                "low_clear_seconds",
                "60",
                "a low-battery reading is forgotten after this long without another (the battery recovered)",
            ),
            Key::optional(
                "restore_seconds",
                "60",
                "mains must be back this long before bulk sync resumes",
            ),
            Key::optional("low_charge_percent", "20", "on battery at or below this charge: shut down"),
            Key::optional(
                "resume_charge_percent",
                "50",
                "after a cut, bulk sync resumes once the battery is back to this charge",
            ),
            Key::optional(
                "low_runtime_seconds",
                "180",
                "on battery with at most this runtime left (when the source knows it): shut down",
            ),
            Key::optional(
                "history_file",
                "/data/kituo/power-history.json",
                "where transitions and the 24-hour chart survive restarts; empty: memory only",
            ),
            Key::optional("history_events", "500", "transitions kept, oldest dropped first"),
            Key::optional("sample_seconds", "300", "interval of the battery chart's samples"),
            Key::optional(
                "persist_seconds",
                "3600",
                "chart samples are written at most this often (transitions at once): SD cards wear out",
            ),
        ],
    },
    Section {
        name: "nut",
        help: "Network UPS Tools: the upsd server of a USB or serial UPS (source 'nut').",
        free_keys: false,
        keys: &[
            Key::optional("address", "127.0.0.1:3493", "upsd's host:port"),
            Key::optional("ups", "ups", "the UPS's name in ups.conf"),
            Key::optional("username", "", "upsd.users login; empty: none (reading needs none)"),
            Key::optional("password", "", "password of that login"),
            Key::optional(
                "dead_seconds",
                "15",
                "a UPS silent this long that was last on battery counts as low battery (as upsmon's DEADTIME)",
            ),
        ],
    },
    Section {
        name: "sysfs",
        help: "Linux power_supply class (source 'sysfs').",
        free_keys: false,
        keys: &[Key::optional(
            "root",
            "/sys/class/power_supply",
            "folder with one folder per supply (type, online, capacity, status)",
        )],
    },
    Section {
        name: "x728",
        help: "Geekworm X728/X1200-style HAT: MAX17040/48 fuel gauge on I2C, mains sensor on a GPIO (source 'x728').",
        free_keys: false,
        keys: &[
            Key::optional("i2c_bus", "1", "I2C bus number (/dev/i2c-N)"),
            Key::optional("address", "0x36", "fuel gauge I2C address"),
            Key::optional("mains_gpio", "6", "BCM number of the mains-present pin; empty: no mains sensor"),
            Key::optional(
                "mains_high_means_present",
                "no",
                "yes if the pin is high while mains is present (the X728 drives it high on power loss)",
            ),
        ],
    },
    Section {
        name: "waveshare",
        help: "Waveshare UPS HAT: INA219 on the battery line, charge estimated from voltage (source 'waveshare').",
        free_keys: false,
        keys: &[
            Key::optional("i2c_bus", "1", "I2C bus number (/dev/i2c-N)"),
            Key::optional("address", "0x42", "INA219 I2C address (0x42 or 0x43 by board)"),
            Key::optional("cells", "2", "Li-ion cells in series (2 on the UPS HAT, 1 on the UPS HAT (C))"),
        ],
    },
    Section {
        name: "gpio",
        help: "A mains-present line on the Linux GPIO character device, e.g. on Odroid boards (source 'gpio').",
        free_keys: false,
        keys: &[
            Key::optional("chip", "/dev/gpiochip0", "GPIO chip device"),
            Key::optional("line", "0", "line offset on that chip"),
            Key::optional("active_low", "no", "yes if the line is low while mains is present"),
        ],
    },
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

/// Which power source a `[power] sources` word names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Nut,
    Sysfs,
    X728,
    Waveshare,
    Gpio,
}

#[derive(Debug, Clone)]
pub struct NutConfig {
    pub address: String,
    pub ups: String,
    pub login: Option<(String, String)>,
    pub dead: Duration,
}

#[derive(Debug, Clone)]
pub struct X728Config {
    pub i2c_bus: u8,
    pub address: u8,
    pub mains_gpio: Option<u8>,
    pub mains_high_means_present: bool,
}

#[derive(Debug, Clone)]
pub struct WaveshareConfig {
    pub i2c_bus: u8,
    pub address: u8,
    pub cells: u8,
}

#[derive(Debug, Clone)]
pub struct GpioConfig {
    pub chip: PathBuf,
    pub line: u32,
    pub active_low: bool,
}

#[derive(Debug, Clone)]
pub struct PowerConfig {
    pub sources: Vec<SourceKind>,
    pub poll: Duration,
    pub thresholds: Thresholds,
    pub history_file: Option<PathBuf>,
    pub history_events: usize,
    pub sample_every: Duration,
    pub persist_every: Duration,
    pub nut: NutConfig,
    pub sysfs_root: PathBuf,
    pub x728: X728Config,
    pub waveshare: WaveshareConfig,
    pub gpio: GpioConfig,
}

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

fn secs(
    doc: &Document,
    section: &str,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(doc.int_in(section, key, range)?))
}

/// `yes`/`no` (also true/false, on/off, 1/0).
pub fn boolean(doc: &Document, section: &str, key: &str) -> Result<bool, ConfigError> {
    match doc.get(section, key).to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        other => Err(doc.error(section, key, format!("expected yes or no, got '{other}'"))),
    }
}

/// An I2C address, `0x36` or `54`, within the 7-bit range.
fn i2c_address(doc: &Document, section: &str, key: &str) -> Result<u8, ConfigError> {
    let v = doc.get(section, key);
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    n.filter(|n| (0x03..=0x77).contains(n)).ok_or_else(|| {
        doc.error(
            section,
            key,
            format!("expected a 7-bit I2C address like 0x36, got '{v}'"),
        )
    })
}

fn percent(doc: &Document, section: &str, key: &str) -> Result<f32, ConfigError> {
    Ok(doc.int_in(section, key, 0..=100)? as f32)
}

fn path_or_none(doc: &Document, section: &str, key: &str) -> Option<PathBuf> {
    let v = doc.get(section, key);
    (!v.is_empty()).then(|| PathBuf::from(v))
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let doc = Document::load(path, SCHEMA)?;
        let mut sources = Vec::new();
        for word in doc.list("power", "sources") {
            let kind = match word.as_str() {
                "nut" => SourceKind::Nut,
                "sysfs" => SourceKind::Sysfs,
                "x728" => SourceKind::X728,
                "waveshare" => SourceKind::Waveshare,
                "gpio" => SourceKind::Gpio,
                other => {
                    return Err(doc.error(
                        "power",
                        "sources",
                        format!(
                            "unknown source '{other}'; known: nut, sysfs, x728, waveshare, gpio"
                        ),
                    ))
                }
            };
            if !sources.contains(&kind) {
                sources.push(kind);
            }
        }
        let thresholds = Thresholds {
            low_charge_percent: percent(&doc, "power", "low_charge_percent")?,
            resume_charge_percent: percent(&doc, "power", "resume_charge_percent")?,
            low_runtime_seconds: doc.int_in("power", "low_runtime_seconds", 0..=86_400)?,
            debounce: secs(&doc, "power", "debounce_seconds", 0..=600)?,
            low_debounce: secs(&doc, "power", "low_debounce_seconds", 0..=600)?,
            low_clear: secs(&doc, "power", "low_clear_seconds", 1..=3600)?,
            restore: secs(&doc, "power", "restore_seconds", 0..=86_400)?,
        };
        if thresholds.resume_charge_percent < thresholds.low_charge_percent {
            return Err(doc.error(
                "power",
                "resume_charge_percent",
                "must not be below low_charge_percent",
            ));
        }
        if thresholds.low_clear <= thresholds.low_debounce {
            // Otherwise a flag that flickers slower than low_clear would be forgotten between flickers.
            return Err(doc.error(
                "power",
                "low_clear_seconds",
                "must be above low_debounce_seconds",
            ));
        }
        let user = doc.get("nut", "username");
        let power = PowerConfig {
            sources,
            poll: secs(&doc, "power", "poll_seconds", 1..=60)?,
            thresholds,
            history_file: path_or_none(&doc, "power", "history_file"),
            history_events: doc.int_in("power", "history_events", 10..=100_000)? as usize,
            sample_every: secs(&doc, "power", "sample_seconds", 10..=3600)?,
            persist_every: secs(&doc, "power", "persist_seconds", 0..=86_400)?,
            nut: NutConfig {
                address: doc.get("nut", "address").to_owned(),
                ups: doc.get("nut", "ups").to_owned(),
                login: (!user.is_empty())
                    .then(|| (user.to_owned(), doc.get("nut", "password").to_owned())),
                dead: secs(&doc, "nut", "dead_seconds", 1..=3600)?,
            },
            sysfs_root: doc.get("sysfs", "root").into(),
            x728: X728Config {
                i2c_bus: doc.int_in("x728", "i2c_bus", 0..=255)? as u8,
                address: i2c_address(&doc, "x728", "address")?,
                mains_gpio: match doc.get("x728", "mains_gpio") {
                    "" => None,
                    _ => Some(doc.int_in("x728", "mains_gpio", 0..=53)? as u8),
                },
                mains_high_means_present: boolean(&doc, "x728", "mains_high_means_present")?,
            },
            waveshare: WaveshareConfig {
                i2c_bus: doc.int_in("waveshare", "i2c_bus", 0..=255)? as u8,
                address: i2c_address(&doc, "waveshare", "address")?,
                cells: doc.int_in("waveshare", "cells", 1..=4)? as u8,
            },
            gpio: GpioConfig {
                chip: doc.get("gpio", "chip").into(),
                line: doc.int_in("gpio", "line", 0..=1023)? as u32,
                active_low: boolean(&doc, "gpio", "active_low")?,
            },
        };
        let cmd = |key: &str| Cmd::parse(doc.get("shutdown", key));
        let shutdown = Plan {
            grace: secs(&doc, "shutdown", "grace_seconds", 0..=3600)?,
            stop_sync: cmd("stop_sync"),
            start_sync: cmd("start_sync"),
            stop_web: cmd("stop_web"),
            start_web: cmd("start_web"),
            web_timeout: secs(&doc, "shutdown", "web_timeout_seconds", 1..=600)?,
            stop_database: cmd("stop_database"),
            database_pid_file: doc.get("shutdown", "database_pid_file").into(),
            database_timeout: secs(&doc, "shutdown", "database_timeout_seconds", 1..=600)?,
            poweroff: cmd("poweroff"),
            poweroff_timeout: secs(&doc, "shutdown", "poweroff_timeout_seconds", 1..=600)?,
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
            path_or_none(&doc, h, "mariadb_socket").map(|socket| health::Probe::MariaDb {
                client: doc.get(h, "mariadb_client").to_owned(),
                socket,
            }),
            "mariadb_unit",
        );
        add(
            "Wi-Fi access point",
            path_or_none(&doc, h, "hostapd_control")
                .map(|control| health::Probe::Hostapd { control }),
            "hostapd_unit",
        );
        let health = health::Settings {
            interval: secs(&doc, h, "interval_seconds", 5..=3600)?,
            services,
            partitions: doc
                .list(h, "partitions")
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            min_free_percent: doc.int_in(h, "min_free_percent", 0..=100)? as u8,
            restart: Cmd::parse(doc.get(h, "restart_command")),
            backoff: secs(&doc, h, "backoff_seconds", 1..=86_400)?,
            backoff_max: secs(&doc, h, "backoff_max_seconds", 1..=86_400)?,
            sys_root: doc.get(h, "sys_root").into(),
            timesync_flag: doc.get(h, "timesync_flag").into(),
            build_epoch: None,
        };
        let hash = doc.get("status", "technician_password_hash");
        if !hash.is_empty() {
            crate::status::auth::check_hash_format(hash)
                .map_err(|e| doc.error("status", "technician_password_hash", e))?;
        }
        Ok(Config {
            file: path.to_owned(),
            center_id: doc.get("site", "center_id").to_owned(),
            center_name: doc.get("site", "center_name").to_owned(),
            site_id: doc.int_in("site", "site_id", 1..=255)? as u8,
            listen: doc.parse_as("status", "listen", "an address:port like 127.0.0.1:8080")?,
            build_info: doc.get("status", "build_info").into(),
            center_record: doc.get("status", "center_record").into(),
            refresh_seconds: doc.int_in("status", "refresh_seconds", 5..=3600)?,
            technician_password_hash: (!hash.is_empty()).then(|| hash.to_owned()),
            reboot_command: Cmd::parse(doc.get("status", "reboot_command")),
            power,
            shutdown,
            health: HealthTemplate(health),
            sync: AgentSettings::read(&doc)?,
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
