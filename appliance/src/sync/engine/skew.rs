//! How far this site's clock is from the hub's, so that a center's changes are stamped in the hub's
//! time however wrong its own clock is.
//!
//! The boards have no RTC: a card boots with the last time fake-hwclock saved (behind by however long
//! the power was off), or with whatever a technician typed. The hub's clock is the reference (it runs
//! at headquarters, on NTP). Every answer from the hub carries its clock under the center's MAC; the
//! agent times the round trip on CLOCK_BOOTTIME and keeps the sample with the smallest uncertainty as
//! "hub time minus boot time". That survives the wall clock being stepped (fake-hwclock, a technician,
//! NTP) because boot time never steps; a new boot needs a new sample. The offset at any moment is then
//! that base plus boot time minus wall time.
//!
//! Until the first answer of a boot the offset is unknown, so a center does not capture: its changes
//! wait in the binlog with their commit times, and are stamped once the hub has been read (the first
//! exchange of a process asks for the clock before it captures). Only where that cannot happen are
//! changes stamped by the card's own clock: a stick written before the link ever answered, or a card
//! cut off for a day since it booted (the binlog must not expire under the follower). A clock behind
//! then loses clashes it should win (a change still orders after everything the card has seen and its
//! own earlier changes, see [`crate::sync::engine::clock`]); one ahead wins them. A clock stepped
//! between a commit and its capture moves that commit's stamp by the step.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use nix::time::{clock_gettime, ClockId};
use serde::{Deserialize, Serialize};

use crate::sync::engine::clock::wall_millis;
use crate::sync::engine::store;

/// The state row that holds the current boot's best sample.
pub const SKEW: &str = "skew";

/// How fast a kept sample loses trust: a board's crystal drifts up to about 100 ppm.
const DRIFT_PPM: u64 = 100;

/// One measurement of the hub's clock against this boot's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skew {
    /// The kernel's boot id: a sample is worth nothing after a reboot.
    pub boot: String,
    /// The hub's time minus CLOCK_BOOTTIME, in milliseconds.
    pub base_ms: i64,
    /// Half the round trip it was measured over: the hub's clock was read somewhere inside it.
    pub error_ms: u64,
    /// CLOCK_BOOTTIME when it was measured.
    pub taken_ms: u64,
}

impl Skew {
    /// A sample from one exchange: `sent_ms` and `answered_ms` are [`boot_millis`] around it, `hub_ms`
    /// the hub's clock in its answer.
    pub fn sample(hub_ms: u64, sent_ms: u64, answered_ms: u64) -> Result<Skew> {
        let middle = sent_ms + answered_ms.saturating_sub(sent_ms) / 2;
        Ok(Skew {
            boot: boot_id()?,
            base_ms: hub_ms as i64 - middle as i64,
            error_ms: answered_ms.saturating_sub(sent_ms) / 2,
            taken_ms: answered_ms,
        })
    }

    /// The hub's clock minus this site's wall clock now, if the sample is from this boot.
    pub fn offset_ms(&self) -> Option<i64> {
        if boot_id().ok()? != self.boot {
            return None;
        }
        Some(self.base_ms + boot_millis().ok()? as i64 - wall_millis() as i64)
    }

    /// How far off the sample may be now: its round trip, plus drift since it was taken.
    fn uncertainty_ms(&self, now_ms: u64) -> u64 {
        self.error_ms + now_ms.saturating_sub(self.taken_ms) * DRIFT_PPM / 1_000_000
    }

    /// Keeps whichever of the two samples is the more certain now.
    pub fn better(self, other: Skew) -> Skew {
        let now = boot_millis().unwrap_or(0);
        if self.boot != other.boot || other.uncertainty_ms(now) < self.uncertainty_ms(now) {
            other
        } else {
            self
        }
    }

    /// The sample stored for this site, if any (from this boot or an earlier one).
    pub fn read(conn: &mut impl Queryable) -> Result<Option<Skew>> {
        store::get(conn, SKEW)?
            .map(|text| serde_json::from_str(&text).context("the stored clock skew is malformed"))
            .transpose()
    }

    pub fn write(&self, conn: &mut impl Queryable) -> Result<()> {
        let text = serde_json::to_string(self).context("cannot encode the clock skew")?;
        store::set(conn, SKEW, &text)
    }
}

/// The offset to stamp this site's changes with now: the stored sample's, or 0 without one from this
/// boot (the hub, or a center that has not reached it since it booted).
pub fn current_offset(conn: &mut impl Queryable) -> Result<i64> {
    Ok(Skew::read(conn)?.and_then(|s| s.offset_ms()).unwrap_or(0))
}

/// CLOCK_BOOTTIME in milliseconds: never stepped, and counts the time suspended.
pub fn boot_millis() -> Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_BOOTTIME).context("cannot read CLOCK_BOOTTIME")?;
    Ok(t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
}

fn boot_id() -> Result<String> {
    let path = "/proc/sys/kernel/random/boot_id";
    let id = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    Ok(id.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_the_hubs_clock_minus_ours() {
        // A hub an hour ahead of this machine, answering in the middle of a 200 ms round trip.
        let sent = boot_millis().unwrap();
        let hub = wall_millis() + 3_600_000 + 100;
        let s = Skew::sample(hub, sent, sent + 200).unwrap();
        assert_eq!(s.error_ms, 100);
        let offset = s.offset_ms().expect("a sample of this boot");
        assert!((offset - 3_600_000).abs() < 1_000, "{offset}");
    }

    #[test]
    fn a_sample_from_another_boot_gives_no_offset() {
        let mut s = Skew::sample(wall_millis(), 0, 10).unwrap();
        s.boot = "another boot".into();
        assert_eq!(s.offset_ms(), None);
    }

    #[test]
    fn the_more_certain_sample_is_kept() {
        let now = boot_millis().unwrap();
        let slow = Skew::sample(1_000_000, now, now + 4_000).unwrap();
        let quick = Skew::sample(1_000_000, now, now + 40).unwrap();
        assert_eq!(slow.clone().better(quick.clone()), quick);
        assert_eq!(quick.clone().better(slow.clone()), quick);
        // A new boot's sample replaces an old boot's, however certain.
        let mut old = quick.clone();
        old.boot = "before the reboot".into();
        assert_eq!(old.better(slow.clone()), slow);
    }
}
