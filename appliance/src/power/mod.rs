//! Power and UPS: the sources that say whether mains is present and how much battery is left, the state
//! machine that turns their readings into decisions, and the shutdown sequence that keeps the database safe.
//!
//! ```text
//!  nut (upsd TCP) ─┐
//!  sysfs ──────────┤ Reading  ┌──────────────┐ Action ┌─────────────────────┐
//!  hat (I2C/GPIO) ─┼─────────►│ state machine├───────►│ BulkSyncGate        │
//!  gpio (cdev) ────┘ merged   └──────┬───────┘        │ shutdown sequence   │
//!                                    │ transitions    └─────────────────────┘
//!                                    ▼
//!                                 history (bounded, persisted sparingly)
//! ```

pub mod gpio;
pub mod hat;
pub mod nut;
pub mod shutdown;
pub mod state;
pub mod sysfs;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

/// What one source says at one moment. `None` means the source cannot tell (e.g. a fuel gauge without a
/// mains sensor).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reading {
    /// The source that produced it, e.g. `nut:ups@127.0.0.1:3493`.
    pub source: String,
    /// Mains present.
    pub on_mains: Option<bool>,
    /// The source itself says the battery is low (NUT `LB`, sysfs `capacity_level = Critical`).
    pub low_battery: bool,
    /// A NUT UPS silent past its dead-time, last seen on battery: as upsmon does, treated like low battery.
    pub silent: bool,
    /// The UPS has been told to shut down (NUT `FSD`): treated like low battery.
    pub forced_shutdown: bool,
    pub charging: Option<bool>,
    pub charge_percent: Option<f32>,
    pub runtime_seconds: Option<u64>,
    pub battery_volts: Option<f32>,
}

/// A power source behind one interface, whatever the hardware.
pub trait PowerSource: Send {
    /// A short name for logs and the status page.
    fn name(&self) -> String;
    /// Reads the current state. An error means the source could not be reached this time; the caller keeps
    /// polling (sources reconnect on their own).
    fn read(&mut self) -> anyhow::Result<Reading>;
}

/// Combines the readings of several sources into one: the box is on battery if any source that can tell
/// says so, low if any says low, and the lowest charge and runtime win (the pessimist keeps the data safe).
pub fn merge(readings: &[Reading]) -> Reading {
    let mut out = Reading {
        source: readings
            .iter()
            .map(|r| r.source.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        ..Reading::default()
    };
    for r in readings {
        out.on_mains = match (out.on_mains, r.on_mains) {
            (Some(a), Some(b)) => Some(a && b),
            (a, b) => a.or(b),
        };
        out.low_battery |= r.low_battery;
        out.silent |= r.silent;
        out.forced_shutdown |= r.forced_shutdown;
        out.charging = out.charging.or(r.charging);
        out.charge_percent = min_opt(out.charge_percent, r.charge_percent);
        out.runtime_seconds = match (out.runtime_seconds, r.runtime_seconds) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        out.battery_volts = out.battery_volts.or(r.battery_volts);
    }
    out
}

fn min_opt(a: Option<f32>, b: Option<f32>) -> Option<f32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Tells the sync engine whether bulk transfers (file blobs, large batches) may run. The power watch closes
/// it while the box is on battery, so the UPS's minutes go to serving learners, not to the uplink; small
/// control traffic (heartbeats, credential rotation) should go on regardless.
///
/// Cheap to clone and to check: the sync engine calls [`BulkSyncGate::is_open`] before each bulk chunk.
#[derive(Debug, Clone, Default)]
pub struct BulkSyncGate {
    paused: Arc<AtomicBool>,
}

impl BulkSyncGate {
    pub fn new() -> Self {
        Self::default()
    }
    /// True when bulk transfers may run.
    pub fn is_open(&self) -> bool {
        !self.paused.load(Ordering::Relaxed)
    }
    /// Called by the power watch only.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_pessimistic() {
        let a = Reading {
            source: "a".into(),
            on_mains: Some(true),
            charge_percent: Some(80.0),
            ..Default::default()
        };
        let b = Reading {
            source: "b".into(),
            on_mains: Some(false),
            charge_percent: Some(40.0),
            runtime_seconds: Some(600),
            ..Default::default()
        };
        let c = Reading {
            source: "c".into(),
            ..Default::default()
        };
        let m = merge(&[a, b, c]);
        assert_eq!(m.on_mains, Some(false));
        assert_eq!(m.charge_percent, Some(40.0));
        assert_eq!(m.runtime_seconds, Some(600));
        assert_eq!(m.source, "a+b+c");
    }

    #[test]
    fn gate_opens_and_closes() {
        let gate = BulkSyncGate::new();
        let seen_by_sync = gate.clone();
        assert!(seen_by_sync.is_open());
        gate.set_paused(true);
        assert!(!seen_by_sync.is_open());
    }
}
