//! Link time: a token bucket per direction.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{lock, READ_BUF, UNCAPPED_QUEUE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// client → upstream
    Up = 0,
    /// upstream → client
    Down = 1,
}

/// A token bucket in bytes, shared by all connections of one direction. Takers go into debt and sleep it
/// off, which books link time in order: the long-run rate is exact however late the sleepers wake.
pub(super) struct Bucket {
    state: Mutex<BucketState>,
}

pub(super) struct BucketState {
    /// Bytes per second; `None` is unlimited.
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

/// The burst: 20 ms of traffic, but at least one Ethernet frame.
pub(super) fn burst_bytes(rate: f64) -> f64 {
    (rate / 50.0).max(1500.0)
}

impl Bucket {
    pub(super) fn new(bps: Option<u64>) -> Bucket {
        let rate = bps.map(|b| b as f64 / 8.0);
        Bucket {
            state: Mutex::new(BucketState {
                rate,
                tokens: rate.map_or(0.0, burst_bytes),
                last: Instant::now(),
            }),
        }
    }

    pub(super) fn set_rate(&self, bps: Option<u64>) {
        let mut s = lock(&self.state);
        s.rate = bps.map(|b| b as f64 / 8.0);
        if let Some(rate) = s.rate {
            s.tokens = s.tokens.min(burst_bytes(rate));
        }
    }

    /// Books `n` bytes of link time; returns when they may go out.
    pub(super) fn reserve(&self, n: usize, now: Instant) -> Instant {
        let mut s = lock(&self.state);
        let Some(rate) = s.rate else { return now };
        let earned = now.saturating_duration_since(s.last).as_secs_f64() * rate;
        s.tokens = (s.tokens + earned).min(burst_bytes(rate));
        s.last = s.last.max(now);
        s.tokens -= n as f64;
        if s.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-s.tokens / rate)
        }
    }

    /// The most a writer sends at once: 10 ms of traffic, so that a slow link trickles rather than bursts.
    pub(super) fn slice(&self) -> usize {
        match lock(&self.state).rate {
            Some(rate) => ((rate / 100.0) as usize).clamp(256, READ_BUF),
            None => READ_BUF,
        }
    }

    /// How much a direction may queue inside the proxy: what the link carries during the latency plus
    /// 200 ms, at least 16 KiB. Without a bound, a fast source would fill the proxy with seconds of data
    /// that a cut then throws away, unlike a real link whose buffers are small.
    pub(super) fn queue_limit(&self, latency: Duration) -> usize {
        match lock(&self.state).rate {
            Some(rate) => ((rate * (latency.as_secs_f64() + 0.2)) as usize).max(16 * 1024),
            None => UNCAPPED_QUEUE,
        }
    }
}
