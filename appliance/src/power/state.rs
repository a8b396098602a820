//! The power state machine. Pure: it takes merged readings with their time and returns transitions, each
//! with the action the supervisor must take; it never sleeps or touches the system, so its timing rules
//! (debounce, hysteresis) are tested with made-up clocks.
//!
//! ```text
//!            mains lost for `debounce`             low for `low_debounce`
//!  on mains ───────────────────────────► on battery ────────────────────► low battery ─► shutting down
//!     ▲                                   ▲    │ mains back for `debounce`                   │
//!     │ charge >= resume % and            │    ▼                                             │ mains back for
//!     │ mains held for `restore`          └─ restored ◄──────────────────────────────────────┘ `debounce`, before
//!     └───────────────────────────────────────┘                                              the point of no return
//! ```
//!
//! Low battery is latched: a sagging battery under load sets the UPS's LB flag, or dips below the charge
//! threshold, for a second at a time, and a rule that wanted the condition unbroken for `low_debounce`
//! would run the card until the battery died. So a low reading is remembered; the shutdown starts once
//! low readings have been seen `low_debounce` apart, however many clean ones came between. One false
//! reading alone never shuts down (it has no second one), and it is forgotten once no low reading has come
//! for `low_clear` or mains has been back for `debounce`: a battery that has clearly recovered, or a cut
//! that is over. A flag that flickers cannot stay clear for `low_clear`, so it stands.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::power::Reading;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// No reading yet (or no source configured).
    Unknown,
    OnMains,
    OnBattery,
    LowBattery,
    ShuttingDown,
    /// Mains is back after a cut; bulk sync waits until the battery has recovered.
    Restored,
}

impl PowerState {
    pub fn words(self) -> &'static str {
        match self {
            PowerState::Unknown => "unknown",
            PowerState::OnMains => "on mains",
            PowerState::OnBattery => "on battery",
            PowerState::LowBattery => "low battery",
            PowerState::ShuttingDown => "shutting down",
            PowerState::Restored => "mains restored",
        }
    }
}

/// What the supervisor must do on a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    PauseBulkSync,
    ResumeBulkSync,
    StartShutdown,
    CancelShutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub from: PowerState,
    pub to: PowerState,
    pub reason: String,
    pub action: Action,
}

/// The configurable rules.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// On battery at or below this charge counts as low battery.
    pub low_charge_percent: f32,
    /// After a cut, bulk sync resumes only once the charge is back to this (hysteresis: a flickering
    /// supply does not start and stop the uplink every minute).
    pub resume_charge_percent: f32,
    /// On battery with at most this runtime left counts as low battery.
    pub low_runtime_seconds: u64,
    /// A change between mains and battery must last this long to count (brown-outs, relay chatter).
    pub debounce: Duration,
    /// Low readings must be seen this far apart to count (one bad gauge reading must not power the box
    /// off); readings without it in between do not reset it.
    pub low_debounce: Duration,
    /// A low reading is forgotten after this long without another (the battery has recovered).
    pub low_clear: Duration,
    /// Mains must be back this long before the box counts as on mains again.
    pub restore: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            low_charge_percent: 20.0,
            resume_charge_percent: 50.0,
            low_runtime_seconds: 180,
            debounce: Duration::from_secs(5),
            low_debounce: Duration::from_secs(2),
            low_clear: Duration::from_secs(60),
            restore: Duration::from_secs(60),
        }
    }
}

/// The low readings seen since the last clean stretch: the first, the latest, and why the latest was low.
#[derive(Debug, Clone)]
struct Low {
    first: Instant,
    last: Instant,
    why: String,
}

pub struct Machine {
    pub thresholds: Thresholds,
    state: PowerState,
    /// When the raw reading started to disagree with / confirm each condition.
    battery_since: Option<Instant>,
    mains_since: Option<Instant>,
    /// Low readings remembered (see the module's text).
    low: Option<Low>,
    /// The shutdown has passed its point of no return: mains coming back changes nothing.
    committed: bool,
}

impl Machine {
    pub fn new(thresholds: Thresholds) -> Self {
        Machine {
            thresholds,
            state: PowerState::Unknown,
            battery_since: None,
            mains_since: None,
            low: None,
            committed: false,
        }
    }

    pub fn state(&self) -> PowerState {
        self.state
    }

    /// The shutdown sequence calls this (through the supervisor) when it passes its point of no return.
    pub fn commit_shutdown(&mut self) {
        self.committed = true;
    }

    /// Why this reading alone says the battery is low, naming the cause.
    fn is_low(&self, r: &Reading) -> Option<String> {
        if r.forced_shutdown {
            return Some("the UPS ordered a forced shutdown (FSD)".into());
        }
        if r.silent {
            return Some("the UPS went silent past its dead-time while on battery".into());
        }
        if r.low_battery {
            return Some("the UPS's low-battery flag (LB) is set".into());
        }
        if r.on_mains == Some(false) {
            if let Some(c) = r
                .charge_percent
                .filter(|c| *c <= self.thresholds.low_charge_percent)
            {
                return Some(format!(
                    "charge {c:.0}% is at or below {:.0}%",
                    self.thresholds.low_charge_percent
                ));
            }
            if let Some(t) = r
                .runtime_seconds
                .filter(|t| *t <= self.thresholds.low_runtime_seconds)
            {
                return Some(format!(
                    "runtime {t} s is at or below {} s",
                    self.thresholds.low_runtime_seconds
                ));
            }
        }
        None
    }

    /// Remembers this reading's low condition, forgets it after a clean stretch or a mains return, and
    /// says why the battery counts as low if it does (see the module's text).
    fn latch_low(&mut self, r: &Reading, now: Instant, mains_held: bool) -> Option<String> {
        let t = &self.thresholds;
        match self.is_low(r) {
            Some(why) => {
                let first = self.low.as_ref().map_or(now, |l| l.first);
                self.low = Some(Low {
                    first,
                    last: now,
                    why,
                });
            }
            None => {
                if mains_held
                    || self
                        .low
                        .as_ref()
                        .is_some_and(|l| now.duration_since(l.last) >= t.low_clear)
                {
                    self.low = None;
                }
            }
        }
        let low = self.low.as_ref()?;
        (low.last.duration_since(low.first) >= t.low_debounce).then(|| low.why.clone())
    }

    fn go(&mut self, out: &mut Vec<Transition>, to: PowerState, reason: String, action: Action) {
        out.push(Transition {
            from: self.state,
            to,
            reason,
            action,
        });
        self.state = to;
    }

    /// Feeds one merged reading taken at `now`.
    pub fn step(&mut self, r: &Reading, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        let t = self.thresholds.clone();
        let held = |since: &mut Option<Instant>, cond: bool, d: Duration| -> bool {
            if !cond {
                *since = None;
                return false;
            }
            now.duration_since(*since.get_or_insert(now)) >= d
        };
        let on_battery = r.on_mains == Some(false);
        let battery_held = held(&mut self.battery_since, on_battery, t.debounce);
        let mains_held = held(&mut self.mains_since, r.on_mains == Some(true), t.debounce);
        let low = self.latch_low(r, now, mains_held);
        let restore_held = self
            .mains_since
            .is_some_and(|s| now.duration_since(s) >= t.restore);
        let charge_ok = r
            .charge_percent
            .is_none_or(|c| c >= t.resume_charge_percent);

        match self.state {
            PowerState::Unknown => {
                // The first reading decides without waiting: at boot the box may already be on battery.
                if let Some(why) = low {
                    self.go(&mut out, PowerState::LowBattery, why, Action::None);
                    self.go(
                        &mut out,
                        PowerState::ShuttingDown,
                        "low battery".into(),
                        Action::StartShutdown,
                    );
                } else if on_battery {
                    self.go(
                        &mut out,
                        PowerState::OnBattery,
                        "running from the battery".into(),
                        Action::PauseBulkSync,
                    );
                } else if r.on_mains == Some(true) {
                    self.go(
                        &mut out,
                        PowerState::OnMains,
                        "mains present".into(),
                        Action::None,
                    );
                }
            }
            PowerState::OnMains | PowerState::Restored | PowerState::OnBattery => {
                if let Some(why) = low {
                    if self.state != PowerState::OnBattery {
                        self.go(
                            &mut out,
                            PowerState::OnBattery,
                            "mains lost".into(),
                            Action::PauseBulkSync,
                        );
                    }
                    self.go(&mut out, PowerState::LowBattery, why, Action::None);
                    self.go(
                        &mut out,
                        PowerState::ShuttingDown,
                        "low battery".into(),
                        Action::StartShutdown,
                    );
                } else if self.state == PowerState::OnBattery {
                    if mains_held {
                        self.go(
                            &mut out,
                            PowerState::Restored,
                            "mains is back".into(),
                            Action::None,
                        );
                    }
                } else if battery_held {
                    let action = if self.state == PowerState::OnMains {
                        Action::PauseBulkSync
                    } else {
                        // Restored never resumed bulk sync: it is still paused.
                        Action::None
                    };
                    self.go(&mut out, PowerState::OnBattery, "mains lost".into(), action);
                } else if self.state == PowerState::Restored && restore_held && charge_ok {
                    self.go(
                        &mut out,
                        PowerState::OnMains,
                        "mains steady and battery recharged".into(),
                        Action::ResumeBulkSync,
                    );
                }
            }
            PowerState::LowBattery | PowerState::ShuttingDown => {
                if mains_held && !self.committed {
                    self.go(
                        &mut out,
                        PowerState::Restored,
                        "mains is back before the point of no return".into(),
                        Action::CancelShutdown,
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(on_mains: bool, charge: f32, lb: bool) -> Reading {
        Reading {
            source: "t".into(),
            on_mains: Some(on_mains),
            low_battery: lb,
            charge_percent: Some(charge),
            ..Reading::default()
        }
    }

    struct Clock(Instant);
    impl Clock {
        fn at(&self, s: u64) -> Instant {
            self.0 + Duration::from_secs(s)
        }
    }

    fn states(ts: &[Transition]) -> Vec<PowerState> {
        ts.iter().map(|t| t.to).collect()
    }

    #[test]
    fn short_blip_is_ignored_and_real_cut_pauses_sync() {
        let c = Clock(Instant::now());
        let mut m = Machine::new(Thresholds::default());
        assert_eq!(
            states(&m.step(&reading(true, 100.0, false), c.at(0))),
            [PowerState::OnMains]
        );
        assert!(m.step(&reading(false, 99.0, false), c.at(2)).is_empty());
        assert!(m.step(&reading(true, 99.0, false), c.at(4)).is_empty());
        assert!(m.step(&reading(false, 99.0, false), c.at(6)).is_empty());
        let t = m.step(&reading(false, 98.0, false), c.at(11));
        assert_eq!(states(&t), [PowerState::OnBattery]);
        assert_eq!(t[0].action, Action::PauseBulkSync);
    }

    #[test]
    fn low_battery_shuts_down_and_mains_cancels_before_commit() {
        let c = Clock(Instant::now());
        let mut m = Machine::new(Thresholds::default());
        m.step(&reading(false, 60.0, false), c.at(0));
        assert_eq!(m.state(), PowerState::OnBattery);
        assert!(m.step(&reading(false, 30.0, true), c.at(10)).is_empty());
        let t = m.step(&reading(false, 30.0, true), c.at(12));
        assert_eq!(
            states(&t),
            [PowerState::LowBattery, PowerState::ShuttingDown]
        );
        assert_eq!(t[1].action, Action::StartShutdown);
        assert!(m.step(&reading(true, 30.0, false), c.at(13)).is_empty());
        let t = m.step(&reading(true, 30.0, false), c.at(18));
        assert_eq!(states(&t), [PowerState::Restored]);
        assert_eq!(t[0].action, Action::CancelShutdown);
        // Hysteresis: mains steady for long, but bulk sync waits for the charge to reach 50 %.
        assert!(m.step(&reading(true, 40.0, false), c.at(100)).is_empty());
        let t = m.step(&reading(true, 55.0, false), c.at(130));
        assert_eq!(states(&t), [PowerState::OnMains]);
        assert_eq!(t[0].action, Action::ResumeBulkSync);
    }

    #[test]
    fn committed_shutdown_ignores_mains() {
        let c = Clock(Instant::now());
        let mut m = Machine::new(Thresholds::default());
        m.step(&reading(false, 10.0, false), c.at(0));
        let t = m.step(&reading(false, 10.0, false), c.at(3));
        assert_eq!(
            states(&t),
            [PowerState::LowBattery, PowerState::ShuttingDown]
        );
        m.commit_shutdown();
        assert!(m.step(&reading(true, 10.0, false), c.at(10)).is_empty());
        assert!(m.step(&reading(true, 10.0, false), c.at(30)).is_empty());
        assert_eq!(m.state(), PowerState::ShuttingDown);
    }

    #[test]
    fn runtime_threshold_and_charge_on_mains() {
        let c = Clock(Instant::now());
        let mut m = Machine::new(Thresholds::default());
        // A low charge on mains is charging, not an emergency.
        m.step(&reading(true, 5.0, false), c.at(0));
        assert!(m.step(&reading(true, 5.0, false), c.at(10)).is_empty());
        let mut r = reading(false, 80.0, false);
        r.runtime_seconds = Some(120);
        m.step(&r, c.at(20));
        let t = m.step(&r, c.at(26));
        assert_eq!(
            states(&t),
            [
                PowerState::OnBattery,
                PowerState::LowBattery,
                PowerState::ShuttingDown
            ]
        );
        assert!(t[1].reason.contains("runtime 120 s"), "{}", t[1].reason);
    }

    /// Feeds readings one second apart from `from`; returns the transitions with the second each came.
    fn feed(m: &mut Machine, c: &Clock, from: u64, rs: &[Reading]) -> Vec<(u64, Transition)> {
        let mut out = Vec::new();
        for (i, r) in rs.iter().enumerate() {
            let at = from + i as u64;
            out.extend(m.step(r, c.at(at)).into_iter().map(|t| (at, t)));
        }
        out
    }

    fn on_battery(c: &Clock) -> Machine {
        let mut m = Machine::new(Thresholds::default());
        m.step(&reading(false, 60.0, false), c.at(0));
        assert_eq!(m.state(), PowerState::OnBattery);
        m
    }

    #[test]
    fn a_low_battery_flag_that_flickers_every_second_still_shuts_down() {
        let c = Clock(Instant::now());
        let mut m = on_battery(&c);
        let flicker: Vec<Reading> = (0..10).map(|i| reading(false, 60.0, i % 2 == 0)).collect();
        let t = feed(&mut m, &c, 10, &flicker);
        let (at, low) = &t[0];
        assert_eq!(low.to, PowerState::LowBattery);
        assert_eq!(*at, 12, "the second LB, low_debounce after the first");
        assert!(low.reason.contains("(LB)"), "{}", low.reason);
        assert_eq!(t[1].1.action, Action::StartShutdown);
    }

    #[test]
    fn a_charge_bouncing_around_the_threshold_still_shuts_down() {
        let c = Clock(Instant::now());
        let mut m = on_battery(&c);
        let bounce: Vec<Reading> = (0..10)
            .map(|i| reading(false, if i % 2 == 0 { 19.0 } else { 21.0 }, false))
            .collect();
        let t = feed(&mut m, &c, 10, &bounce);
        assert_eq!(t[0].0, 12);
        assert!(t[0].1.reason.contains("charge 19%"), "{}", t[0].1.reason);
    }

    #[test]
    fn one_false_reading_never_shuts_down_and_is_forgotten() {
        let c = Clock(Instant::now());
        let mut m = on_battery(&c);
        let mut rs = vec![reading(false, 60.0, true)];
        rs.extend((0..70).map(|_| reading(false, 60.0, false)));
        // Another lone false reading after the first was forgotten (60 s clean).
        rs.push(reading(false, 60.0, true));
        rs.extend((0..5).map(|_| reading(false, 60.0, false)));
        assert!(feed(&mut m, &c, 10, &rs).is_empty());
        assert_eq!(m.state(), PowerState::OnBattery);
    }

    #[test]
    fn mains_back_forgets_a_low_reading() {
        let c = Clock(Instant::now());
        let mut m = on_battery(&c);
        let mut rs = vec![reading(false, 60.0, true)];
        rs.extend((0..6).map(|_| reading(true, 60.0, false)));
        rs.extend((0..6).map(|_| reading(false, 60.0, false)));
        rs.push(reading(false, 60.0, true));
        let t = feed(&mut m, &c, 10, &rs);
        assert_eq!(
            t.iter().map(|(_, t)| t.to).collect::<Vec<_>>(),
            [PowerState::Restored, PowerState::OnBattery]
        );
    }

    #[test]
    fn a_silent_ups_is_named_as_silent() {
        let c = Clock(Instant::now());
        let mut m = on_battery(&c);
        let silent = Reading {
            source: "t".into(),
            on_mains: Some(false),
            silent: true,
            ..Reading::default()
        };
        let t = feed(&mut m, &c, 10, &[silent.clone(), silent.clone(), silent]);
        assert!(t[0].1.reason.contains("silent"), "{}", t[0].1.reason);
        assert_eq!(t[1].1.to, PowerState::ShuttingDown);
    }
}
