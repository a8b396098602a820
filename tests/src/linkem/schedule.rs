//! The clock of the scheduled and random link-wide faults.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use super::profile::LinkProfile;
use super::{lock, Shared, TICK};

/// The clock of the scheduled and random link-wide faults: `cut_every`, `down_window`, outages.
pub(super) fn schedule_loop(shared: Arc<Shared>) {
    let mut version = u64::MAX;
    let mut plan = Plan::default();
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let current = shared.profile_version.load(Ordering::SeqCst);
        if current != version {
            version = current;
            plan = Plan::new(lock(&shared.profile).clone(), now, &shared);
        }
        plan.tick(now, &shared);
        thread::sleep(TICK);
    }
}

/// The schedule of one profile, counted from when it was set.
#[derive(Default)]
pub(super) struct Plan {
    profile: LinkProfile,
    epoch: Option<Instant>,
    next_cut: Option<Instant>,
    next_outage: Option<Instant>,
    outage_until: Option<Instant>,
}

impl Plan {
    pub(super) fn new(profile: LinkProfile, now: Instant, shared: &Shared) -> Plan {
        let next_cut = profile.cut_every.map(|every| now + every);
        let next_outage = profile
            .outage_mean_gap
            .map(|mean| now + lock(&shared.dice).outage_gap(mean));
        Plan {
            profile,
            epoch: Some(now),
            next_cut,
            next_outage,
            outage_until: None,
        }
    }

    pub(super) fn tick(&mut self, now: Instant, shared: &Shared) {
        if let (Some(at), Some(every)) = (self.next_cut, self.profile.cut_every) {
            if now >= at {
                shared.cut_all();
                // Keep the period's phase, unless the clock fell a whole period behind.
                self.next_cut = Some((at + every).max(now));
            }
        }
        if let (Some(at), Some(mean)) = (self.next_outage, self.profile.outage_mean_gap) {
            if now >= at {
                let until = now + self.profile.outage_for;
                self.outage_until = Some(until);
                self.next_outage = Some(until + lock(&shared.dice).outage_gap(mean));
            }
        }
        let in_window = match (self.epoch, self.profile.down_window) {
            (Some(epoch), Some((after, length))) => {
                now >= epoch + after && now < epoch + after + length
            }
            _ => false,
        };
        let in_outage = self.outage_until.is_some_and(|u| now < u);
        shared
            .scheduled_down
            .store(in_window || in_outage, Ordering::SeqCst);
    }
}
