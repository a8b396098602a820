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
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::socket::{setsockopt, sockopt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
fn exponential(rng: &mut StdRng, mean: Option<u64>) -> Option<u64> {
    let u: f64 = rng.gen();
    let mean = mean? as f64;
    // 1 - u is in (0, 1], so the logarithm is finite.
    Some(((-mean * (1.0 - u).ln()) as u64).max(1))
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// client → upstream
    Up = 0,
    /// upstream → client
    Down = 1,
}

/// A token bucket in bytes, shared by all connections of one direction. Takers go into debt and sleep it
/// off, which books link time in order: the long-run rate is exact however late the sleepers wake.
struct Bucket {
    state: Mutex<BucketState>,
}

struct BucketState {
    /// Bytes per second; `None` is unlimited.
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

/// The burst: 20 ms of traffic, but at least one Ethernet frame.
fn burst_bytes(rate: f64) -> f64 {
    (rate / 50.0).max(1500.0)
}

impl Bucket {
    fn new(bps: Option<u64>) -> Bucket {
        let rate = bps.map(|b| b as f64 / 8.0);
        Bucket {
            state: Mutex::new(BucketState {
                rate,
                tokens: rate.map_or(0.0, burst_bytes),
                last: Instant::now(),
            }),
        }
    }

    fn set_rate(&self, bps: Option<u64>) {
        let mut s = lock(&self.state);
        s.rate = bps.map(|b| b as f64 / 8.0);
        if let Some(rate) = s.rate {
            s.tokens = s.tokens.min(burst_bytes(rate));
        }
    }

    /// Books `n` bytes of link time; returns when they may go out.
    fn reserve(&self, n: usize, now: Instant) -> Instant {
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
    fn slice(&self) -> usize {
        match lock(&self.state).rate {
            Some(rate) => ((rate / 100.0) as usize).clamp(256, READ_BUF),
            None => READ_BUF,
        }
    }

    /// How much a direction may queue inside the proxy: what the link carries during the latency plus
    /// 200 ms, at least 16 KiB. Without a bound, a fast source would fill the proxy with seconds of data
    /// that a cut then throws away, unlike a real link whose buffers are small.
    fn queue_limit(&self, latency: Duration) -> usize {
        match lock(&self.state).rate {
            Some(rate) => ((rate * (latency.as_secs_f64() + 0.2)) as usize).max(16 * 1024),
            None => UNCAPPED_QUEUE,
        }
    }
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

/// Closes with a reset rather than a FIN, as a link failure looks to the peer.
fn reset(stream: &TcpStream) {
    let _ = setsockopt(
        stream,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    let _ = stream.shutdown(Shutdown::Read);
}

/// Holds the connection while the link is down (`held`: blackhole), connects upstream and starts
/// forwarding. Whatever fails resets the client, as an unreachable far end would look.
fn open(shared: Arc<Shared>, client: TcpStream, fate: ConnFate, held: bool) {
    if held {
        bump(&shared.counters.blackholed);
        while shared.is_down() && !shared.stop.load(Ordering::SeqCst) {
            thread::sleep(TICK);
        }
    }
    let Ok(server) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        bump(&shared.counters.upstream_errors);
        reset(&client);
        return;
    };
    if shared.stop.load(Ordering::SeqCst) {
        reset(&client);
        reset(&server);
        return;
    }
    if Conn::start(shared.clone(), &client, &server, fate).is_err() {
        bump(&shared.counters.upstream_errors);
        reset(&client);
        reset(&server);
    }
}

/// One forwarded connection, shared by its four threads. Dropped (and both sockets closed) when the last
/// of them ends.
struct Conn {
    id: u64,
    shared: Arc<Shared>,
    client: TcpStream,
    server: TcpStream,
    cut: AtomicBool,
    stall_until: Mutex<Option<Instant>>,
    dice: Mutex<ConnDice>,
    /// Bytes read but not yet delivered, per direction.
    queued: [AtomicUsize; 2],
}

/// The connection's remaining byte budgets before its next random faults.
struct ConnDice {
    rng: StdRng,
    cut_left: Option<u64>,
    stall_left: Option<u64>,
    stall_mean: Option<u64>,
    stall_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Stall(Duration),
}

impl ConnDice {
    /// How many of `want` bytes may pass before the next fault, and the fault that follows them.
    fn spend(&mut self, want: u64) -> (u64, Option<Fault>) {
        let n = [Some(want), self.cut_left, self.stall_left]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(want);
        let hit = |left: &mut Option<u64>| match left {
            Some(l) => {
                *l -= n;
                *l == 0
            }
            None => false,
        };
        let cut = hit(&mut self.cut_left);
        let stall = hit(&mut self.stall_left);
        if stall {
            self.stall_left = exponential(&mut self.rng, self.stall_mean);
        }
        let fault = if cut {
            Some(Fault::Cut)
        } else if stall {
            Some(Fault::Stall(self.stall_for))
        } else {
            None
        };
        (n, fault)
    }
}

enum Chunk {
    Data(Vec<u8>, Instant),
    Eof,
}

impl Conn {
    /// Registers the connection and starts its threads.
    fn start(
        shared: Arc<Shared>,
        client: &TcpStream,
        server: &TcpStream,
        fate: ConnFate,
    ) -> Result<()> {
        for s in [client, server] {
            // The listener is non-blocking; the accepted socket must not be.
            s.set_nonblocking(false)?;
            // The emulator does its own pacing; Nagle would add delays of its own to small writes.
            s.set_nodelay(true)?;
            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
        }
        let (stall_mean, stall_for) = {
            let p = lock(&shared.profile);
            (p.stall_mean_bytes, p.stall_for)
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            shared: shared.clone(),
            // Clones of the same sockets: the caller keeps its handles to reset them if starting fails.
            client: client.try_clone()?,
            server: server.try_clone()?,
            cut: AtomicBool::new(false),
            stall_until: Mutex::new(None),
            dice: Mutex::new(ConnDice {
                rng: StdRng::seed_from_u64(fate.seed),
                cut_left: fate.cut_after,
                stall_left: fate.stall_after,
                stall_mean,
                stall_for,
            }),
            queued: [AtomicUsize::new(0), AtomicUsize::new(0)],
        });
        lock(&shared.conns).insert(id, Arc::downgrade(&conn));
        for dir in [Dir::Up, Dir::Down] {
            let (tx, rx) = mpsc::channel();
            let (r, w) = (conn.clone(), conn.clone());
            let started = spawn("linkem-read", move || r.read_side(dir, tx))
                .and_then(|_| spawn("linkem-write", move || w.write_side(dir, rx)));
            if let Err(e) = started {
                conn.abort();
                return Err(e);
            }
        }
        Ok(())
    }

    fn source(&self, dir: Dir) -> &TcpStream {
        match dir {
            Dir::Up => &self.client,
            Dir::Down => &self.server,
        }
    }

    fn sink(&self, dir: Dir) -> &TcpStream {
        match dir {
            Dir::Up => &self.server,
            Dir::Down => &self.client,
        }
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Resets both sides. Returns false when the connection was already cut. `SO_LINGER 0` makes the final
    /// close send RST; `shutdown(Read)` wakes the blocked readers without sending anything, so the peers see
    /// the reset and no orderly FIN first.
    fn abort(&self) -> bool {
        if self.cut.swap(true, Ordering::SeqCst) {
            return false;
        }
        reset(&self.client);
        reset(&self.server);
        true
    }

    fn stall(&self, length: Duration) {
        let until = Instant::now() + length;
        let mut s = lock(&self.stall_until);
        *s = Some(s.map_or(until, |u| u.max(until)));
        bump(&self.shared.counters.stalls);
    }

    /// Sleeps until `t`, in ticks; false as soon as the connection is cut.
    fn pause_until(&self, t: Instant) -> bool {
        loop {
            if self.is_cut() {
                return false;
            }
            let now = Instant::now();
            if now >= t {
                return true;
            }
            thread::sleep((t - now).min(TICK));
        }
    }

    /// Waits while the connection is stalled or the link is down; false when cut meanwhile.
    fn wait_open(&self) -> bool {
        loop {
            if self.is_cut() {
                return false;
            }
            let stalled = lock(&self.stall_until).is_some_and(|u| Instant::now() < u);
            if !stalled && !self.shared.is_down() {
                return true;
            }
            thread::sleep(TICK);
        }
    }

    /// Reads as the source writes, up to the direction's queue limit, and stamps each chunk with the time it
    /// reaches the other end of the link.
    fn read_side(&self, dir: Dir, tx: Sender<Chunk>) {
        let mut src = self.source(dir);
        let bucket = &self.shared.buckets[dir as usize];
        let queued = &self.queued[dir as usize];
        let mut buf = vec![0u8; READ_BUF];
        loop {
            while queued.load(Ordering::SeqCst) >= bucket.queue_limit(self.shared.latency()) {
                if self.is_cut() {
                    return;
                }
                thread::sleep(TICK);
            }
            match src.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Chunk::Eof);
                    return;
                }
                Ok(n) => {
                    let due = Instant::now() + self.shared.latency();
                    queued.fetch_add(n, Ordering::SeqCst);
                    if tx.send(Chunk::Data(buf[..n].to_vec(), due)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The peer reset or vanished: pass the reset on to the other side.
                Err(_) => {
                    self.abort();
                    return;
                }
            }
        }
    }

    /// Delivers the chunks in order; passes an orderly end (FIN) on as one.
    fn write_side(&self, dir: Dir, rx: Receiver<Chunk>) {
        while let Ok(chunk) = rx.recv() {
            match chunk {
                Chunk::Eof => {
                    if !self.is_cut() {
                        let _ = self.sink(dir).shutdown(Shutdown::Write);
                    }
                    return;
                }
                Chunk::Data(bytes, due) => {
                    let delivered = self.deliver(dir, &bytes, due);
                    self.queued[dir as usize].fetch_sub(bytes.len(), Ordering::SeqCst);
                    if !delivered {
                        return;
                    }
                }
            }
        }
    }

    /// One chunk across the link: after its latency, in slices paced by the bucket, stopping for stalls and
    /// outages, and cut where the dice said. False when the connection is gone.
    fn deliver(&self, dir: Dir, bytes: &[u8], due: Instant) -> bool {
        if !self.pause_until(due) {
            return false;
        }
        let bucket = &self.shared.buckets[dir as usize];
        let mut rest = bytes;
        while !rest.is_empty() {
            if !self.wait_open() {
                return false;
            }
            let want = rest.len().min(bucket.slice()) as u64;
            let (n, fault) = lock(&self.dice).spend(want);
            let n = n as usize;
            if !self.pause_until(bucket.reserve(n, Instant::now())) {
                return false;
            }
            let slice = self.corrupt(dir, &rest[..n]);
            if !self.write_all(self.sink(dir), &slice) {
                return false;
            }
            self.shared.counters.bytes[dir as usize].fetch_add(n as u64, Ordering::Relaxed);
            rest = &rest[n..];
            match fault {
                Some(Fault::Cut) => {
                    if self.abort() {
                        bump(&self.shared.counters.cuts);
                    }
                    return false;
                }
                Some(Fault::Stall(length)) => self.stall(length),
                None => {}
            }
        }
        true
    }

    /// The slice as it leaves the link: with one bit flipped where the corruption period falls inside
    /// it.
    fn corrupt<'a>(&self, dir: Dir, slice: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let every = self.shared.corrupt_every.load(Ordering::Relaxed);
        if dir != Dir::Down || every == 0 {
            return std::borrow::Cow::Borrowed(slice);
        }
        let sent = self
            .shared
            .corrupt_pos
            .fetch_add(slice.len() as u64, Ordering::Relaxed);
        let next = (sent / every + 1) * every;
        if next > sent + slice.len() as u64 {
            return std::borrow::Cow::Borrowed(slice);
        }
        let mut bad = slice.to_vec();
        bad[(next - sent - 1) as usize] ^= 0x10;
        bump(&self.shared.counters.corrupted);
        std::borrow::Cow::Owned(bad)
    }

    /// `write_all` that gives up when the connection is cut (the write timeout bounds each wait).
    fn write_all(&self, mut sink: &TcpStream, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            if self.is_cut() {
                return false;
            }
            match sink.write(buf) {
                Ok(0) => {
                    self.abort();
                    return false;
                }
                Ok(n) => buf = &buf[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    self.abort();
                    return false;
                }
            }
        }
        true
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
    }
}

/// The clock of the scheduled and random link-wide faults: `cut_every`, `down_window`, outages.
fn schedule_loop(shared: Arc<Shared>) {
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
struct Plan {
    profile: LinkProfile,
    epoch: Option<Instant>,
    next_cut: Option<Instant>,
    next_outage: Option<Instant>,
    outage_until: Option<Instant>,
}

impl Plan {
    fn new(profile: LinkProfile, now: Instant, shared: &Shared) -> Plan {
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

    fn tick(&mut self, now: Instant, shared: &Shared) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_fates_and_outages() {
        let profile = LinkProfile::default()
            .seed(42)
            .cut_mean_bytes(100_000)
            .stalls(50_000, Duration::from_secs(1))
            .refuse_probability(0.1);
        let draw = |seed: u64| {
            let mut dice = FaultDice::new(seed);
            let fates: Vec<ConnFate> = (0..1000).map(|_| dice.connection(&profile)).collect();
            let gaps: Vec<Duration> = (0..100)
                .map(|_| dice.outage_gap(Duration::from_secs(30)))
                .collect();
            (fates, gaps)
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42).0, draw(43).0);
        assert_ne!(draw(42).1, draw(43).1);
    }

    #[test]
    fn dice_follow_the_profile() {
        let profile = LinkProfile::default()
            .cut_mean_bytes(100_000)
            .refuse_probability(0.2);
        let mut dice = FaultDice::new(7);
        let fates: Vec<ConnFate> = (0..20_000).map(|_| dice.connection(&profile)).collect();
        let refused = fates.iter().filter(|f| f.refused).count() as f64 / fates.len() as f64;
        assert!((0.18..0.22).contains(&refused), "refused share {refused}");
        let mean =
            fates.iter().filter_map(|f| f.cut_after).sum::<u64>() as f64 / fates.len() as f64;
        assert!((95_000.0..105_000.0).contains(&mean), "mean cut {mean}");
        assert!(fates.iter().all(|f| f.stall_after.is_none()));
    }

    #[test]
    fn a_missing_fault_does_not_shift_the_others() {
        let with = LinkProfile::default()
            .cut_mean_bytes(1000)
            .refuse_probability(0.5);
        let without = with.clone().stalls(500, Duration::from_millis(10));
        let (mut a, mut b) = (FaultDice::new(1), FaultDice::new(1));
        for _ in 0..100 {
            let (fa, fb) = (a.connection(&with), b.connection(&without));
            assert_eq!(
                (fa.refused, fa.cut_after, fa.seed),
                (fb.refused, fb.cut_after, fb.seed)
            );
        }
    }

    #[test]
    fn spend_stops_exactly_at_the_faults() {
        let mut d = ConnDice {
            rng: StdRng::seed_from_u64(0),
            cut_left: Some(2500),
            stall_left: Some(1000),
            stall_mean: Some(1_000_000),
            stall_for: Duration::from_millis(3),
        };
        assert_eq!(d.spend(600), (600, None));
        assert_eq!(
            d.spend(600),
            (400, Some(Fault::Stall(Duration::from_millis(3))))
        );
        assert!(d.stall_left.is_some_and(|l| l > 1500), "redrawn");
        assert_eq!(d.spend(1000), (1000, None));
        assert_eq!(d.spend(1000), (500, Some(Fault::Cut)));
    }

    #[test]
    fn bucket_books_link_time_in_order() {
        let bucket = Bucket::new(Some(800_000)); // 100 000 bytes/s, 2000-byte burst
        let t0 = Instant::now();
        assert_eq!(bucket.reserve(2000, t0), t0, "the burst goes at once");
        let ms = |t: Instant| (t - t0).as_secs_f64() * 1000.0;
        let later = ms(bucket.reserve(10_000, t0));
        assert!((99.9..100.1).contains(&later), "{later} ms");
        let after = ms(bucket.reserve(10_000, t0));
        assert!((199.9..200.1).contains(&after), "queued behind: {after} ms");
        assert_eq!(bucket.slice(), 1000);
        assert_eq!(Bucket::new(None).reserve(1 << 30, t0), t0);
    }

    #[test]
    fn profile_validation() {
        assert!(LinkProfile::default().rate_bps(0).validate().is_err());
        assert!(LinkProfile::default()
            .refuse_probability(1.5)
            .validate()
            .is_err());
        assert!(LinkProfile::default()
            .cut_every(Duration::ZERO)
            .validate()
            .is_err());
        assert!(LinkProfile::default()
            .rate_bps(256_000)
            .latency(Duration::from_millis(300))
            .cut_every(Duration::from_secs(30))
            .validate()
            .is_ok());
    }
}
