//! A link emulator for the tests and `appliance bench`: a TCP proxy that makes a loopback connection look
//! like a center's link (a bandwidth cap, latency, cuts, stalls, the link going down). The kernel of the
//! build machines has no `tc netem`, so the faults are made in user space. Like [`crate::testbed`], this is
//! test and bench tooling: nothing here is used by the supervisor itself.
//!
//! ```text
//! client ──► LinkProxy (127.0.0.1:free port) ──► upstream (the hub, a test server)
//!            up: client → upstream, down: upstream → client
//! ```
//!
//! Each direction of a connection has a reader thread (reads as fast as the source writes, stamps each
//! chunk with its due time `now + latency`) and a writer thread (waits for the due time, for stalls and for
//! the link to be up, then for link time from the direction's token bucket, and writes). The buckets are
//! shared by all connections of a direction, as one physical link is.
//!
//! Random faults come from a [`FaultDice`] seeded by [`LinkProfile::seed`]: every new connection draws its
//! fate (refused or not, after how many bytes it is cut, after how many bytes it first stalls) in the order
//! connections arrive, so the same sequence of connections and bytes meets the same faults on every run;
//! only timing differs.
//!
//! A cut is a real reset: both sockets get `SO_LINGER 0` and are closed, so both peers see
//! `ECONNRESET` (or an early EOF) in the middle of their transfer.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use bucket::{Bucket, Dir};
use conn::{open, reset, Conn};
use schedule::schedule_loop;

/// How often sleeping threads look at cuts, stalls and the link state: the reaction time of the emulator.
const TICK: Duration = Duration::from_millis(5);
const READ_BUF: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Writers block at most this long before looking at the cut flag again (a peer that does not read would
/// otherwise keep a cut connection's writer stuck).
const WRITE_TIMEOUT: Duration = Duration::from_millis(50);
const THREAD_STACK: usize = 256 * 1024;
/// Bytes queued in the proxy per direction when the link has no cap.
const UNCAPPED_QUEUE: usize = 1 << 20;
/// The decision log keeps this many fates, enough for any test, bounded for long benches.
const FATE_LOG: usize = 100_000;

mod bucket;
mod conn;
mod profile;
mod schedule;
#[cfg(test)]
mod tests;

pub use profile::{ConnFate, DownMode, FaultDice, LinkProfile};

/// Counters since the start, for goodput and for asserting that faults really happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Bytes delivered client → upstream.
    pub bytes_up: u64,
    /// Bytes delivered upstream → client.
    pub bytes_down: u64,
    /// Connections the listener accepted, whatever became of them.
    pub connections: u64,
    /// Connections reset at once (link down in [`DownMode::Refuse`], or a random refusal).
    pub refused: u64,
    /// Connections held while the link was down in [`DownMode::Blackhole`].
    pub blackholed: u64,
    /// Connections whose upstream could not be reached.
    pub upstream_errors: u64,
    /// Connections reset by a fault (random, scheduled or `cut_all`); not resets passed on from a peer.
    pub cuts: u64,
    /// Stalls of one connection (random, or one per connection in `stall_all`).
    pub stalls: u64,
    /// Bits flipped ([`LinkProfile::corrupt_down_every`]).
    pub corrupted: u64,
    /// Connections being forwarded now.
    pub open: usize,
}

#[derive(Default)]
struct Counters {
    bytes: [AtomicU64; 2],
    connections: AtomicU64,
    refused: AtomicU64,
    blackholed: AtomicU64,
    upstream_errors: AtomicU64,
    cuts: AtomicU64,
    stalls: AtomicU64,
    corrupted: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Locks, ignoring poison: a panicking test thread must not take the proxy down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    upstream: SocketAddr,
    profile: Mutex<LinkProfile>,
    /// Bumped by `set_profile`, so the scheduler restarts its clock.
    profile_version: AtomicU64,
    latency_ns: AtomicU64,
    /// `corrupt_down_every`, 0 for none: read on every slice.
    corrupt_every: AtomicU64,
    /// Bytes sent down so far, for the corruption period.
    corrupt_pos: AtomicU64,
    dice: Mutex<FaultDice>,
    buckets: [Bucket; 2],
    manual_down: AtomicBool,
    scheduled_down: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, Weak<Conn>>>,
    next_id: AtomicU64,
    counters: Counters,
    fates: Mutex<Vec<ConnFate>>,
}

impl Shared {
    fn is_down(&self) -> bool {
        self.manual_down.load(Ordering::SeqCst) || self.scheduled_down.load(Ordering::SeqCst)
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed))
    }

    /// The connections being forwarded. Collected under the lock and used after it: dropping the last
    /// reference to a connection takes the same lock.
    fn open_conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    fn cut_all(&self) -> usize {
        let cut = self.open_conns().iter().filter(|c| c.abort()).count();
        self.counters.cuts.fetch_add(cut as u64, Ordering::Relaxed);
        cut
    }
}

/// A proxy that forwards to `upstream` through an emulated link. Dropping it resets every connection and
/// closes the listener.
pub struct LinkProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl LinkProxy {
    /// Listens on 127.0.0.1 on a free port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr, profile: LinkProfile) -> Result<LinkProxy> {
        profile.validate()?;
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        // Polled rather than blocking, so that drop can stop the accept loop without a wake-up connection.
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            upstream,
            latency_ns: AtomicU64::new(profile.latency.as_nanos() as u64),
            corrupt_every: AtomicU64::new(profile.corrupt_down_every.unwrap_or(0)),
            corrupt_pos: AtomicU64::new(0),
            dice: Mutex::new(FaultDice::new(profile.seed)),
            buckets: [Bucket::new(profile.up_bps), Bucket::new(profile.down_bps)],
            profile: Mutex::new(profile),
            profile_version: AtomicU64::new(0),
            manual_down: AtomicBool::new(false),
            scheduled_down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            counters: Counters::default(),
            fates: Mutex::new(Vec::new()),
        });
        let mut proxy = LinkProxy {
            addr,
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let s = shared.clone();
        proxy
            .threads
            .push(spawn("linkem-accept", move || accept_loop(s, listener))?);
        proxy
            .threads
            .push(spawn("linkem-clock", move || schedule_loop(shared))?);
        Ok(proxy)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Takes the link down (new connections are refused or held, open ones stall) or brings it back. A
    /// scheduled or random outage still applies while it lasts.
    pub fn set_down(&self, down: bool) {
        self.shared.manual_down.store(down, Ordering::SeqCst);
    }

    /// Whether the link is down now, by hand or by the profile.
    pub fn is_down(&self) -> bool {
        self.shared.is_down()
    }

    /// Resets every open connection; returns how many (each counts as a cut).
    pub fn cut_all(&self) -> usize {
        self.shared.cut_all()
    }

    /// Stops delivery on every open connection for `length` without closing it; returns how many (each
    /// counts as a stall).
    pub fn stall_all(&self, length: Duration) -> usize {
        let conns = self.shared.open_conns();
        conns.iter().for_each(|c| c.stall(length));
        conns.len()
    }

    /// Replaces the profile. Rates and latency apply at once to everything; the dice restart from the new
    /// seed and the schedule (`cut_every`, `down_window`, outages) from now; open connections keep the
    /// random cuts and stalls they drew when they started.
    pub fn set_profile(&self, profile: LinkProfile) -> Result<()> {
        profile.validate()?;
        let s = &self.shared;
        s.buckets[Dir::Up as usize].set_rate(profile.up_bps);
        s.buckets[Dir::Down as usize].set_rate(profile.down_bps);
        s.latency_ns
            .store(profile.latency.as_nanos() as u64, Ordering::Relaxed);
        s.corrupt_every
            .store(profile.corrupt_down_every.unwrap_or(0), Ordering::Relaxed);
        *lock(&s.dice) = FaultDice::new(profile.seed);
        *lock(&s.profile) = profile;
        s.profile_version.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn profile(&self) -> LinkProfile {
        lock(&self.shared.profile).clone()
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            bytes_up: get(&c.bytes[Dir::Up as usize]),
            bytes_down: get(&c.bytes[Dir::Down as usize]),
            connections: get(&c.connections),
            refused: get(&c.refused),
            blackholed: get(&c.blackholed),
            upstream_errors: get(&c.upstream_errors),
            cuts: get(&c.cuts),
            stalls: get(&c.stalls),
            corrupted: get(&c.corrupted),
            open: self.shared.open_conns().len(),
        }
    }

    /// The fates drawn for the connections so far, in the order they arrived (the first 100 000).
    pub fn fates(&self) -> Vec<ConnFate> {
        lock(&self.shared.fates).clone()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // The accept loop and the clock look at `stop` every tick; joining them closes the listener.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Connection threads end within a tick or a write timeout once reset; wait for them, boundedly,
        // so that a test's next proxy does not compete with this one's leftovers. Threads still
        // connecting upstream see `stop` when they are done and only hold shared counters meanwhile.
        for c in self.shared.open_conns() {
            c.abort();
        }
        let end = Instant::now() + Duration::from_secs(2);
        while !lock(&self.shared.conns).is_empty() && Instant::now() < end {
            thread::sleep(TICK);
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .with_context(|| format!("cannot start thread {name}"))
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => admit(&shared, client),
            // WouldBlock when idle; EMFILE and the like are worth another try after a pause as well.
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Decides a new connection's fate, then refuses it or hands it to a thread of its own.
fn admit(shared: &Arc<Shared>, client: TcpStream) {
    bump(&shared.counters.connections);
    let (fate, mode) = {
        let profile = lock(&shared.profile);
        (lock(&shared.dice).connection(&profile), profile.down_mode)
    };
    {
        let mut log = lock(&shared.fates);
        if log.len() < FATE_LOG {
            log.push(fate);
        }
    }
    let down = shared.is_down();
    if fate.refused || (down && mode == DownMode::Refuse) {
        bump(&shared.counters.refused);
        reset(&client);
        return;
    }
    let held = down && mode == DownMode::Blackhole;
    let s = shared.clone();
    if spawn("linkem-open", move || open(s, client, fate, held)).is_err() {
        bump(&shared.counters.upstream_errors);
    }
}
