//! What a link does: its profile, and the dice that decide each connection's fate.

use std::time::Duration;

use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What happens to new connections while the link is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DownMode {
    /// Reset at once: the client's connect succeeds (the proxy's kernel accepts it) and its first read or
    /// write fails with `ECONNRESET`, the closest a user-space proxy gets to a refused connection.
    #[default]
    Refuse,
    /// Held silently and forwarded once the link is up again, as a SYN retransmitted across a short outage
    /// would be; the client sees no answer meanwhile.
    Blackhole,
}

/// The link's shape and faults. Plain fields with `Default` (a perfect link), plus builder methods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkProfile {
    /// Cap on client → upstream, in bits per second; `None` is unlimited.
    pub up_bps: Option<u64>,
    /// Cap on upstream → client, in bits per second; `None` is unlimited.
    pub down_bps: Option<u64>,
    /// One-way delay added to every byte, in each direction.
    pub latency: Duration,
    /// Seeds every random decision.
    pub seed: u64,
    /// Random cuts: each connection is reset after an exponentially distributed number of bytes (both
    /// directions together) with this mean.
    pub cut_mean_bytes: Option<u64>,
    /// Random stalls: each connection stops delivering, without closing, for `stall_for` after an
    /// exponentially distributed number of bytes with this mean, again and again.
    pub stall_mean_bytes: Option<u64>,
    pub stall_for: Duration,
    /// Random refusals: the probability that a new connection is reset at once.
    pub refuse_probability: f64,
    /// Random outages: the link goes down for `outage_for` after exponentially distributed gaps with this
    /// mean (the first gap counts from the start).
    pub outage_mean_gap: Option<Duration>,
    pub outage_for: Duration,
    /// Scheduled cuts: every open connection is reset every this often ("cut every 30 s").
    pub cut_every: Option<Duration>,
    /// A scheduled outage: `(after, length)` counted from the start (or the last `set_profile`).
    pub down_window: Option<(Duration, Duration)>,
    /// What a down link does to new connections. Open connections stall while it is down.
    pub down_mode: DownMode,
    /// Corruption: one bit of the upstream → client stream is flipped every this many bytes (counted
    /// over all connections), as a faulty middlebox or radio would; TCP's own checksum lets worse through
    /// than one might think.
    pub corrupt_down_every: Option<u64>,
}

impl LinkProfile {
    /// The same cap both ways, in bits per second.
    pub fn rate_bps(self, bps: u64) -> Self {
        self.up_bps(bps).down_bps(bps)
    }
    pub fn up_bps(mut self, bps: u64) -> Self {
        self.up_bps = Some(bps);
        self
    }
    pub fn down_bps(mut self, bps: u64) -> Self {
        self.down_bps = Some(bps);
        self
    }
    pub fn latency(mut self, one_way: Duration) -> Self {
        self.latency = one_way;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn cut_mean_bytes(mut self, mean: u64) -> Self {
        self.cut_mean_bytes = Some(mean);
        self
    }
    pub fn stalls(mut self, mean_bytes: u64, length: Duration) -> Self {
        self.stall_mean_bytes = Some(mean_bytes);
        self.stall_for = length;
        self
    }
    pub fn refuse_probability(mut self, p: f64) -> Self {
        self.refuse_probability = p;
        self
    }
    pub fn outages(mut self, mean_gap: Duration, length: Duration) -> Self {
        self.outage_mean_gap = Some(mean_gap);
        self.outage_for = length;
        self
    }
    pub fn cut_every(mut self, period: Duration) -> Self {
        self.cut_every = Some(period);
        self
    }
    pub fn down_window(mut self, after: Duration, length: Duration) -> Self {
        self.down_window = Some((after, length));
        self
    }
    pub fn down_mode(mut self, mode: DownMode) -> Self {
        self.down_mode = mode;
        self
    }
    pub fn corrupt_down_every(mut self, bytes: u64) -> Self {
        self.corrupt_down_every = Some(bytes);
        self
    }

    /// Rejects values that would stop the link for good or make the dice meaningless.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.up_bps != Some(0) && self.down_bps != Some(0),
            "a link rate of 0 bit/s never delivers; use set_down(true) for a dead link"
        );
        ensure!(
            self.cut_mean_bytes != Some(0)
                && self.stall_mean_bytes != Some(0)
                && self.corrupt_down_every != Some(0),
            "mean bytes between faults must be at least 1"
        );
        ensure!(
            (0.0..=1.0).contains(&self.refuse_probability),
            "refuse_probability {} is not within 0..=1",
            self.refuse_probability
        );
        ensure!(
            self.cut_every != Some(Duration::ZERO) && self.outage_mean_gap != Some(Duration::ZERO),
            "fault periods must be longer than zero"
        );
        Ok(())
    }
}

/// What the dice decided for one new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnFate {
    /// Reset at once ([`LinkProfile::refuse_probability`]).
    pub refused: bool,
    /// Bytes (both directions) delivered before the random cut.
    pub cut_after: Option<u64>,
    /// Bytes delivered before the first random stall.
    pub stall_after: Option<u64>,
    /// Seeds the connection's own dice (its later stalls), so that they do not depend on how the
    /// connections' traffic interleaves.
    pub seed: u64,
}

/// The seeded source of every random fault. Connections and outages draw from separate streams, so each
/// stream depends only on its own sequence of events.
pub struct FaultDice {
    conns: StdRng,
    outages: StdRng,
}

impl FaultDice {
    pub fn new(seed: u64) -> FaultDice {
        FaultDice {
            conns: StdRng::seed_from_u64(seed),
            // A different, fixed derivation of the seed: the outage stream must not mirror the connection one.
            outages: StdRng::seed_from_u64(seed ^ 0x6f75_7461_6765_7321),
        }
    }

    /// The fate of the next new connection. Always draws the same number of values, so that a profile
    /// without some fault still keeps the other decisions where a profile with it would have them.
    pub fn connection(&mut self, profile: &LinkProfile) -> ConnFate {
        let refuse_roll: f64 = self.conns.gen();
        let cut = exponential(&mut self.conns, profile.cut_mean_bytes);
        let stall = exponential(&mut self.conns, profile.stall_mean_bytes);
        ConnFate {
            refused: refuse_roll < profile.refuse_probability,
            cut_after: cut,
            stall_after: stall,
            seed: self.conns.gen(),
        }
    }

    /// The gap before the next random outage.
    pub fn outage_gap(&mut self, mean: Duration) -> Duration {
        let nanos = exponential(&mut self.outages, Some(mean.as_nanos() as u64)).unwrap_or(1);
        Duration::from_nanos(nanos)
    }
}

/// An exponentially distributed whole number with the given mean, at least 1 (a fault after zero bytes
/// would fire before the connection did anything).
pub(super) fn exponential(rng: &mut StdRng, mean: Option<u64>) -> Option<u64> {
    let u: f64 = rng.gen();
    let mean = mean? as f64;
    // 1 - u is in (0, 1], so the logarithm is finite.
    Some(((-mean * (1.0 - u).ln()) as u64).max(1))
}
