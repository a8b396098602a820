//! Hybrid logical clock: wall time when it can be trusted, a counter when it cannot.
//!
//! The boards have no RTC and may boot with a clock days behind (fake-hwclock) until NTP or the hub sets
//! it. A stamp is `milliseconds << 16 | counter`: it never goes backwards on one site (the last value is
//! persisted), it moves past every stamp the site has seen from elsewhere, and it stays close to real
//! time whenever some site's clock is right. Ties between sites are broken by site id in [`Stamp`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const COUNTER_BITS: u32 = 16;

/// A clock value together with the site that produced it: the total order every merge decision uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Stamp {
    pub hlc: u64,
    pub site: u32,
}

impl Stamp {
    /// The stamp of data that existed before sync began (a seeded database): older than any edit.
    pub const ORIGIN: Stamp = Stamp { hlc: 0, site: 0 };

    pub fn new(hlc: u64, site: u32) -> Stamp {
        Stamp { hlc, site }
    }
}

/// One site's clock. Not shared between threads: the sync engine owns it.
#[derive(Debug, Clone)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that continues after `last` (the value persisted before a restart, or 0).
    pub fn resume(last: u64) -> Hlc {
        Hlc { last }
    }

    /// The next stamp value for a local change made now.
    pub fn tick(&mut self) -> u64 {
        self.tick_at(wall_millis())
    }

    /// The next stamp value for a local change committed at `millis` (see [`commit_millis`]).
    pub fn tick_at(&mut self, millis: u64) -> u64 {
        let physical = millis << COUNTER_BITS;
        self.last = if physical > self.last {
            physical
        } else {
            self.last + 1
        };
        self.last
    }

    /// Moves the clock past a value seen from another site, so that local edits made after seeing it
    /// order after it.
    pub fn observe(&mut self, seen: u64) {
        self.last = self.last.max(seen);
    }

    /// The last value handed out or observed; persist it.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// When a local change was written, in the hub's time: the second its commit carries in the binlog
/// (MariaDB's clock, which is this site's), refined to the millisecond by the capture's own clock
/// when capture follows within that second, then moved by `offset_ms` (the hub's clock minus this
/// site's, see [`crate::sync::engine::skew`]). Stamping by commit, not by capture, is what lets a
/// change captured late (agent stopped, link down, capture behind) still lose to a later write.
pub fn commit_millis(commit_secs: u32, now_millis: u64, offset_ms: i64) -> u64 {
    let commit = u64::from(commit_secs) * 1000;
    let local = now_millis.clamp(commit, commit + 999);
    local.saturating_add_signed(offset_ms)
}

/// Milliseconds of a stamp value, for display ("how old is the backlog").
pub fn millis_of(hlc: u64) -> u64 {
    hlc >> COUNTER_BITS
}

pub fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_wall_time_when_it_moves_forward() {
        let mut c = Hlc::resume(0);
        let a = c.tick_at(1_000);
        let b = c.tick_at(2_000);
        assert_eq!(millis_of(a), 1_000);
        assert_eq!(millis_of(b), 2_000);
    }

    #[test]
    fn never_goes_backwards_when_the_wall_clock_does() {
        let mut c = Hlc::resume(0);
        let a = c.tick_at(5_000);
        let b = c.tick_at(1_000); // a board that booted with an old clock
        let d = c.tick_at(1_000);
        assert!(a < b && b < d);
        assert_eq!(millis_of(d), 5_000);
    }

    #[test]
    fn orders_after_what_it_has_seen() {
        let mut c = Hlc::resume(0);
        c.tick_at(1_000);
        let remote = 9_000 << COUNTER_BITS;
        c.observe(remote);
        assert!(c.tick_at(1_000) > remote);
    }

    #[test]
    fn resumes_after_the_persisted_value() {
        let mut c = Hlc::resume(77 << COUNTER_BITS);
        assert!(c.tick_at(10) > 77 << COUNTER_BITS);
    }

    #[test]
    fn a_commit_is_placed_by_its_own_second_and_the_hubs_clock() {
        // Captured at once: the capture's millisecond within the commit's second.
        assert_eq!(commit_millis(100, 100_250, 0), 100_250);
        // Captured an hour later: still the commit's second, not the capture's.
        assert_eq!(commit_millis(100, 3_700_000, 0), 100_999);
        // A capture clock behind the commit's second (the clock stepped back): the commit's second.
        assert_eq!(commit_millis(100, 50_000, 0), 100_000);
        // A site an hour behind the hub: moved forward by the offset.
        assert_eq!(commit_millis(100, 100_250, 3_600_000), 3_700_250);
        // One a year ahead: moved back.
        let year = 365 * 86_400_000;
        assert_eq!(
            commit_millis(40_000_000, 40_000_000_100, -year),
            40_000_000_100 - year as u64
        );
    }

    #[test]
    fn a_late_capture_does_not_reorder_a_sites_edits() {
        // Two commits at 100 s and 101 s, captured together at 500 s: still 100 s and 101 s.
        let mut c = Hlc::resume(0);
        let a = c.tick_at(commit_millis(100, 500_000, 0));
        let b = c.tick_at(commit_millis(101, 500_000, 0));
        assert!(a < b);
        assert_eq!(millis_of(b), 101_999);
    }

    #[test]
    fn stamps_order_by_clock_then_site() {
        assert!(Stamp::new(5, 9) < Stamp::new(6, 2));
        assert!(Stamp::new(5, 2) < Stamp::new(5, 9));
        assert!(Stamp::ORIGIN < Stamp::new(1, 1));
    }
}
