//! `appliance supervise`: starts the power watch, the health checks and the status server, and keeps
//! systemd's watchdog fed only while the power watch is alive (a stuck power loop is the one failure that
//! can cost the database, so it is the one that gets the process restarted).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config::{Config, PowerConfig, SourceKind};
use crate::health::Health;
use crate::history::{unix_now, History};
use crate::power::shutdown::{self, Control, Outcome, Plan};
use crate::power::state::{Action, Machine, PowerState};
use crate::power::{self, gpio, hat, nut, sysfs, BulkSyncGate, PowerSource, Reading};
use crate::status::api::Identity;
use crate::status::server::Site;
use crate::status::{PowerView, Shared, SourceStatus};
use crate::sync::link::runner;

/// A source whose hardware may not be there yet (I2C bus not enabled, HAT not seated): it is opened on
/// first use and again after every failure to open.
struct Reopen<F> {
    name: String,
    open: F,
    source: Option<Box<dyn PowerSource>>,
}

impl<F: FnMut() -> Result<Box<dyn PowerSource>> + Send> PowerSource for Reopen<F> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read(&mut self) -> Result<Reading> {
        if self.source.is_none() {
            self.source = Some((self.open)()?);
        }
        match &mut self.source {
            Some(s) => s.read(),
            None => anyhow::bail!("not open"),
        }
    }
}

fn reopen<F>(name: String, open: F) -> Box<dyn PowerSource>
where
    F: FnMut() -> Result<Box<dyn PowerSource>> + Send + 'static,
{
    Box::new(Reopen {
        name,
        open,
        source: None,
    })
}

pub fn build_sources(cfg: &PowerConfig) -> Vec<Box<dyn PowerSource>> {
    cfg.sources
        .iter()
        .map(|kind| -> Box<dyn PowerSource> {
            match kind {
                SourceKind::Nut => {
                    let mut n = nut::Nut::new(&cfg.nut.address, &cfg.nut.ups, cfg.nut.dead);
                    n.login = cfg.nut.login.clone();
                    Box::new(n)
                }
                SourceKind::Sysfs => Box::new(sysfs::Sysfs {
                    root: cfg.sysfs_root.clone(),
                }),
                SourceKind::X728 => {
                    let c = cfg.x728.clone();
                    reopen(format!("x728@{:#04x}", c.address), move || {
                        let mains = match c.mains_gpio {
                            Some(pin) => {
                                Some(hat::RppalPin::open(pin, c.mains_high_means_present)?)
                            }
                            None => None,
                        };
                        Ok(Box::new(hat::FuelGaugeHat {
                            registers: hat::RppalI2c::open(c.i2c_bus)?,
                            address: c.address,
                            mains,
                        }))
                    })
                }
                SourceKind::Waveshare => {
                    let c = cfg.waveshare.clone();
                    reopen(format!("waveshare@{:#04x}", c.address), move || {
                        Ok(Box::new(hat::Ina219Hat {
                            registers: hat::RppalI2c::open(c.i2c_bus)?,
                            address: c.address,
                            cells: c.cells,
                        }))
                    })
                }
                SourceKind::Gpio => Box::new(gpio::GpioLine::new(
                    cfg.gpio.chip.clone(),
                    cfg.gpio.line,
                    cfg.gpio.active_low,
                )),
            }
        })
        .collect()
}

/// The power watch: reads the sources, steps the state machine, acts, records.
pub struct PowerWatch {
    sources: Vec<Box<dyn PowerSource>>,
    machine: Machine,
    history: History,
    gate: BulkSyncGate,
    shared: Shared,
    plan: Plan,
    control: Option<Arc<Control>>,
    since: Option<u64>,
}

impl PowerWatch {
    pub fn new(cfg: &PowerConfig, plan: Plan, shared: Shared, gate: BulkSyncGate) -> Self {
        let history = History::open(
            cfg.history_file.clone(),
            cfg.history_events,
            cfg.sample_every,
            cfg.persist_every,
        );
        let since = history.events().next_back().map(|e| e.at);
        PowerWatch {
            sources: build_sources(cfg),
            machine: Machine::new(cfg.thresholds.clone()),
            history,
            gate,
            shared,
            plan,
            control: None,
            since,
        }
    }

    /// True while a shutdown sequence runs (the health checks must not restart what it stops).
    pub fn shutting_down(&self) -> bool {
        self.machine.state() == PowerState::ShuttingDown
    }

    pub fn poll_once(&mut self) {
        let now = Instant::now();
        let mut readings = Vec::new();
        let mut statuses = Vec::new();
        for s in &mut self.sources {
            match s.read() {
                Ok(r) => {
                    statuses.push(SourceStatus {
                        name: s.name(),
                        ok: true,
                        error: String::new(),
                    });
                    readings.push(r);
                }
                Err(e) => statuses.push(SourceStatus {
                    name: s.name(),
                    ok: false,
                    error: format!("{e:#}"),
                }),
            }
        }
        if let Some(ctl) = &self.control {
            if ctl.committed() {
                self.machine.commit_shutdown();
            }
        }
        let merged = (!readings.is_empty()).then(|| power::merge(&readings));
        if let Some(r) = &merged {
            for t in self.machine.step(r, now) {
                eprintln!(
                    "power: {} -> {}: {}",
                    t.from.words(),
                    t.to.words(),
                    t.reason
                );
                self.since = Some(unix_now());
                self.history.record(&t, unix_now());
                self.act(t.action);
            }
            self.history.sample(r, unix_now());
        }
        let view = PowerView {
            configured: !self.sources.is_empty(),
            state: self.machine.state(),
            state_words: self.machine.state().words(),
            since: self.since,
            reading: merged,
            sources: statuses,
            bulk_sync_paused: !self.gate.is_open(),
            shutdown_steps: self.control.as_ref().map(|c| c.steps()).unwrap_or_default(),
        };
        let events: Vec<_> = self.history.events().cloned().collect();
        let samples: Vec<_> = self.history.samples().cloned().collect();
        let mut live = self.shared.write();
        live.power = view;
        live.events = events;
        live.samples = samples;
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::None => {}
            Action::PauseBulkSync => self.gate.set_paused(true),
            Action::ResumeBulkSync => self.gate.set_paused(false),
            Action::StartShutdown => {
                self.gate.set_paused(true);
                // Samples not yet written would be lost with the power.
                self.history.persist();
                let ctl = Arc::new(Control::new(self.plan.console.clone()));
                self.control = Some(ctl.clone());
                let plan = self.plan.clone();
                std::thread::spawn(move || {
                    // After PoweredOff there is nothing left to do but wait for the power to go.
                    let outcome: Outcome = shutdown::run(&plan, &ctl);
                    eprintln!("shutdown: sequence ended: {outcome:?}");
                });
            }
            Action::CancelShutdown => {
                if let Some(ctl) = &self.control {
                    if !ctl.try_cancel() {
                        eprintln!(
                            "power: mains is back, but the shutdown is past its point of no return"
                        );
                        self.machine.commit_shutdown();
                    }
                }
            }
        }
    }
}

/// Runs the supervisor until the process is stopped.
pub fn run(config: Config) -> Result<()> {
    let build = read_build_info(&config.build_info);
    let mut health_settings = config.health.0.clone();
    health_settings.build_epoch = build.get("source_date_epoch").and_then(|e| e.parse().ok());
    let shared = Shared::default();
    let gate = BulkSyncGate::new();
    let heartbeat = Arc::new(AtomicU64::new(unix_now()));

    let shutting_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(sync) = config.sync.clone() {
        let controls = runner::Controls {
            gate: gate.clone(),
            // The shutdown sequence begins by stopping sync: no batch should be cut by the power-off.
            hold: shutting_down.clone(),
            feed: Some(shared.feed()),
        };
        runner::spawn(sync, u32::from(config.site_id), controls)?;
    }
    let mut watch = PowerWatch::new(&config.power, config.shutdown.clone(), shared.clone(), gate);
    {
        let (poll, beat, flag) = (config.power.poll, heartbeat.clone(), shutting_down.clone());
        std::thread::Builder::new()
            .name("power".into())
            .spawn(move || loop {
                watch.poll_once();
                flag.store(watch.shutting_down(), Ordering::Relaxed);
                beat.store(unix_now(), Ordering::Relaxed);
                std::thread::sleep(poll);
            })?;
    }
    let units: Vec<String> = health_settings
        .services
        .iter()
        .map(|s| s.unit.clone())
        .filter(|u| !u.is_empty())
        .collect();
    let restart = health_settings.restart.clone();
    {
        let mut health = Health::new(health_settings);
        let (shared, flag) = (shared.clone(), shutting_down.clone());
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || loop {
                let report = health.check(!flag.load(Ordering::Relaxed));
                shared.write().health = Some(report);
                std::thread::sleep(health.interval());
            })?;
    }
    start_watchdog(heartbeat, config.power.poll);

    let site = Arc::new(Site {
        identity: Identity {
            center_id: config.center_id.clone(),
            center_name: config.center_name.clone(),
            site_id: config.site_id,
            build,
            center_config: crate::commission::apply::Record::load(&config.center_record),
        },
        refresh_seconds: config.refresh_seconds,
        password_hash: config.technician_password_hash.clone(),
        units,
        restart,
        reboot: config.reboot_command.clone(),
        shared,
        sessions: Default::default(),
        started: Instant::now(),
        page_cache: Default::default(),
    });
    crate::status::serve(config.listen, site, || {
        // Not under systemd (e.g. a test run) is fine: there is nobody to tell.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    })
}

/// Pings systemd's watchdog at half its interval while the power loop has run recently.
fn start_watchdog(heartbeat: Arc<AtomicU64>, poll: Duration) {
    let mut usec = 0;
    if !(sd_notify::watchdog_enabled(false, &mut usec) && usec > 0) {
        return;
    }
    let interval = Duration::from_micros(usec / 2);
    let stale = poll.as_secs() * 3 + 10;
    std::thread::spawn(move || loop {
        if unix_now().saturating_sub(heartbeat.load(Ordering::Relaxed)) <= stale {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            eprintln!("supervisor: the power loop is stuck; letting the watchdog restart us");
        }
        std::thread::sleep(interval);
    });
}

/// The build-info file is `key = value` lines under `[build]`; a missing file is not an error (a
/// development run has none).
pub fn read_build_info(path: &std::path::Path) -> BTreeMap<String, String> {
    let Ok(ini) = ini::Ini::load_from_file(path) else {
        return BTreeMap::new();
    };
    ini.section(Some("build"))
        .map(|props| {
            props
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}
