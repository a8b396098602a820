//! Service health: functional probes of the web stack, PHP, the database and the access point; disk,
//! temperature, under-voltage and clock; load and memory. A failed service is restarted through systemd,
//! with a growing pause between attempts so a service that cannot start does not thrash the card.

pub mod probes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::power::shutdown::Cmd;

/// One service probe: what to ask, and which unit to restart when it fails.
#[derive(Debug, Clone)]
pub enum Probe {
    Http { url: String },
    MariaDb { client: String, socket: PathBuf },
    Hostapd { control: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub probe: Probe,
    /// Empty: report only.
    pub unit: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub services: Vec<Service>,
    pub partitions: Vec<PathBuf>,
    pub min_free_percent: u8,
    pub restart: Option<Cmd>,
    /// Failed probes in a row before a restart: under load one probe can time out while the service
    /// is fine, and restarting it then cuts off every user's request in flight.
    pub failures_before_restart: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub sys_root: PathBuf,
    pub timesync_flag: PathBuf,
    /// The image's SOURCE_DATE_EPOCH: a clock earlier than this is certainly wrong.
    pub build_epoch: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub unit: String,
    /// Restarts the supervisor has made since it started.
    pub restarts: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub path: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checked_at: u64,
    pub services: Vec<Check>,
    pub disks: Vec<Disk>,
    pub temperature_celsius: Option<f32>,
    /// `None` where the board does not expose the flags.
    pub throttling: Option<Vec<String>>,
    pub clock_ok: bool,
    pub clock: String,
    pub load: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub uptime_seconds: u64,
}

#[derive(Default)]
struct Backoff {
    /// Failed probes since the last success.
    failed_in_row: u32,
    /// Restarts since the last success: the exponent of the pause.
    failures: u32,
    restarts: u32,
    next_try: Option<Instant>,
}

pub struct Health {
    settings: Settings,
    backoff: HashMap<String, Backoff>,
    system: sysinfo::System,
}

impl Health {
    pub fn new(settings: Settings) -> Self {
        Health {
            settings,
            backoff: HashMap::new(),
            system: sysinfo::System::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// Runs every probe once; restarts failed units unless `may_restart` is false (during a shutdown the
    /// supervisor stops these services on purpose).
    pub fn check(&mut self, may_restart: bool) -> Report {
        let timeout = Duration::from_secs(5);
        let s = &self.settings;
        let mut services = Vec::new();
        for svc in &s.services {
            let result = match &svc.probe {
                Probe::Http { url } => probes::http_ok(url, timeout),
                Probe::MariaDb { client, socket } => {
                    probes::mariadb_select1(client, socket, timeout)
                }
                Probe::Hostapd { control } => probes::hostapd_ping(control, timeout),
            };
            let b = self.backoff.entry(svc.name.clone()).or_default();
            let (ok, mut detail) = match result {
                Ok(d) => {
                    b.failed_in_row = 0;
                    b.failures = 0;
                    b.next_try = None;
                    (true, d)
                }
                Err(e) => {
                    b.failed_in_row += 1;
                    (false, format!("{e:#}"))
                }
            };
            // Restarting hostapd cannot help while its radio is missing (no Wi-Fi adapter, a board
            // without one): say so instead of restarting in a loop.
            let radio_missing = match &svc.probe {
                Probe::Hostapd { control } => control
                    .file_name()
                    .is_some_and(|ifname| !Path::new("/sys/class/net").join(ifname).exists()),
                _ => false,
            };
            if !ok && radio_missing {
                detail = "no Wi-Fi radio: the access point's interface is absent".to_owned();
            }
            let dead = b.failed_in_row >= s.failures_before_restart;
            if !ok && dead && !radio_missing && may_restart && !svc.unit.is_empty() {
                if let Some(restart) = &s.restart {
                    if b.next_try.is_none_or(|t| Instant::now() >= t) {
                        let wait = s
                            .backoff
                            .saturating_mul(1 << b.failures.min(10))
                            .min(s.backoff_max);
                        b.failures += 1;
                        b.restarts += 1;
                        b.next_try = Some(Instant::now() + wait);
                        match probes::restart_unit(restart, &svc.unit, Duration::from_secs(90)) {
                            Ok(()) => detail.push_str(&format!("; restarted {}", svc.unit)),
                            Err(e) => detail.push_str(&format!("; restart failed: {e:#}")),
                        }
                        eprintln!(
                            "health: {} failed: {detail}; next restart in {} s at the earliest",
                            svc.name,
                            wait.as_secs()
                        );
                    }
                }
            }
            services.push(Check {
                name: svc.name.clone(),
                ok,
                detail,
                unit: svc.unit.clone(),
                restarts: b.restarts,
            });
        }
        let disks = s
            .partitions
            .iter()
            .filter_map(|p| {
                let (free, total) = probes::disk_space(p).ok()?;
                let ok = total == 0 || free * 100 / total >= u64::from(s.min_free_percent);
                Some(Disk {
                    path: p.display().to_string(),
                    free_bytes: free,
                    total_bytes: total,
                    ok,
                })
            })
            .collect();
        let now = crate::history::unix_now();
        let (clock_ok, clock) = probes::clock_state(now, s.build_epoch, &s.timesync_flag);
        self.system.refresh_memory();
        let load = sysinfo::System::load_average();
        Report {
            checked_at: now,
            services,
            disks,
            temperature_celsius: probes::max_temperature(&s.sys_root.join("class/thermal")),
            throttling: probes::throttling(&s.sys_root)
                .map(|v| v.into_iter().map(str::to_owned).collect()),
            clock_ok,
            clock,
            load: [load.one, load.five, load.fifteen],
            memory_total_bytes: self.system.total_memory(),
            memory_available_bytes: self.system.available_memory(),
            uptime_seconds: sysinfo::System::uptime(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_service_is_restarted_with_backoff_but_not_during_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (script, record) = kituo_testbed::recorder(dir.path(), "systemctl").unwrap();
        let closed = kituo_testbed::free_port().unwrap();
        let settings = Settings {
            interval: Duration::from_secs(5),
            services: vec![Service {
                name: "web".into(),
                probe: Probe::Http {
                    url: format!("http://127.0.0.1:{closed}/"),
                },
                unit: "nginx.service".into(),
            }],
            partitions: vec![PathBuf::from("/")],
            min_free_percent: 0,
            restart: Cmd::parse(&format!("{} restart", script.display())),
            failures_before_restart: 3,
            backoff: Duration::from_millis(400),
            backoff_max: Duration::from_secs(60),
            sys_root: dir.path().into(),
            timesync_flag: dir.path().join("none"),
            build_epoch: None,
        };
        let mut h = Health::new(settings);
        let calls = || {
            std::fs::read_to_string(&record)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let r = h.check(false);
        assert!(!r.services[0].ok);
        assert_eq!(calls(), 0, "no restarts while shutting down");
        let r = h.check(true);
        assert!(!r.services[0].ok);
        assert_eq!(calls(), 0, "two failed probes are not yet a dead service");
        let r = h.check(true);
        assert_eq!(calls(), 1);
        assert!(
            r.services[0].detail.contains("restarted nginx.service"),
            "{}",
            r.services[0].detail
        );
        assert_eq!(
            std::fs::read_to_string(&record).unwrap().trim(),
            "systemctl restart nginx.service"
        );
        h.check(true);
        assert_eq!(calls(), 1, "second failure waits for the backoff");
        std::thread::sleep(Duration::from_millis(450));
        h.check(true);
        assert_eq!(calls(), 2);
        h.check(true);
        std::thread::sleep(Duration::from_millis(450));
        h.check(true);
        assert_eq!(calls(), 2, "the pause has doubled to 800 ms");
        let r = h.check(true);
        assert_eq!(r.services[0].restarts, 2);
        assert_eq!(r.disks.len(), 1);
        assert!(r.memory_total_bytes > 0 && r.uptime_seconds > 0);
    }
}
