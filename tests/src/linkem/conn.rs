//! One forwarded connection: its two directions, their faults, and how it ends.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::socket::{setsockopt, sockopt};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::bucket::Dir;
use super::profile::{exponential, ConnFate};
use super::{bump, lock, spawn, Shared, CONNECT_TIMEOUT, READ_BUF, TICK, WRITE_TIMEOUT};

/// Closes with a reset rather than a FIN, as a link failure looks to the peer.
pub(super) fn reset(stream: &TcpStream) {
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
pub(super) fn open(shared: Arc<Shared>, client: TcpStream, fate: ConnFate, held: bool) {
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
pub(super) struct Conn {
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
pub(super) struct ConnDice {
    pub(super) rng: StdRng,
    pub(super) cut_left: Option<u64>,
    pub(super) stall_left: Option<u64>,
    pub(super) stall_mean: Option<u64>,
    pub(super) stall_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Cut,
    Stall(Duration),
}

impl ConnDice {
    /// How many of `want` bytes may pass before the next fault, and the fault that follows them.
    pub(super) fn spend(&mut self, want: u64) -> (u64, Option<Fault>) {
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

pub(super) enum Chunk {
    Data(Vec<u8>, Instant),
    Eof,
}

impl Conn {
    /// Registers the connection and starts its threads.
    pub(super) fn start(
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

    pub(super) fn source(&self, dir: Dir) -> &TcpStream {
        match dir {
            Dir::Up => &self.client,
            Dir::Down => &self.server,
        }
    }

    pub(super) fn sink(&self, dir: Dir) -> &TcpStream {
        match dir {
            Dir::Up => &self.server,
            Dir::Down => &self.client,
        }
    }

    pub(super) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Resets both sides. Returns false when the connection was already cut. `SO_LINGER 0` makes the final
    /// close send RST; `shutdown(Read)` wakes the blocked readers without sending anything, so the peers see
    /// the reset and no orderly FIN first.
    pub(super) fn abort(&self) -> bool {
        if self.cut.swap(true, Ordering::SeqCst) {
            return false;
        }
        reset(&self.client);
        reset(&self.server);
        true
    }

    pub(super) fn stall(&self, length: Duration) {
        let until = Instant::now() + length;
        let mut s = lock(&self.stall_until);
        *s = Some(s.map_or(until, |u| u.max(until)));
        bump(&self.shared.counters.stalls);
    }

    /// Sleeps until `t`, in ticks; false as soon as the connection is cut.
    pub(super) fn pause_until(&self, t: Instant) -> bool {
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
    pub(super) fn wait_open(&self) -> bool {
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
    pub(super) fn read_side(&self, dir: Dir, tx: Sender<Chunk>) {
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
    pub(super) fn write_side(&self, dir: Dir, rx: Receiver<Chunk>) {
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
    pub(super) fn deliver(&self, dir: Dir, bytes: &[u8], due: Instant) -> bool {
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
    pub(super) fn corrupt<'a>(&self, dir: Dir, slice: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
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
    pub(super) fn write_all(&self, mut sink: &TcpStream, mut buf: &[u8]) -> bool {
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
