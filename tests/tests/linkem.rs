//! The link emulator against real TCP servers started here: an echo server, a source of a known byte
//! pattern and a counting sink.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kituo_tests::linkem::{DownMode, LinkProfile, LinkProxy};
use kituo_tests::testbed::wait_for;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Tests that measure time or load the CPU run one at a time: the machine has two cores and the harness
/// runs tests in parallel.
fn timing() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server on a free port that hands each connection to `handler` on a thread of its own.
fn server(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let h = handler.clone();
            thread::spawn(move || h(stream));
        }
    });
    Ok(addr)
}

fn echo_server() -> Result<SocketAddr> {
    server(|mut s| {
        let mut r = match s.try_clone() {
            Ok(r) => r,
            Err(_) => return,
        };
        let _ = std::io::copy(&mut r, &mut s);
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// The byte at offset `i` of every source stream.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Sends `total` bytes of the pattern (forever when `None`), then closes.
fn source_server(total: Option<u64>) -> Result<SocketAddr> {
    server(move |mut s| {
        let block: Vec<u8> = (0..251 * 64).map(pattern).collect();
        let mut sent = 0u64;
        while total.is_none_or(|t| sent < t) {
            let n = total.map_or(block.len() as u64, |t| (t - sent).min(block.len() as u64));
            if s.write_all(&block[..n as usize]).is_err() {
                return;
            }
            sent += n;
        }
    })
}

/// Counts every byte received, over all connections.
fn sink_server(count: Arc<AtomicU64>) -> Result<SocketAddr> {
    server(move |mut s| {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    })
}

/// How a read loop ended.
struct Received {
    data: Vec<u8>,
    /// Read failed (a reset) rather than reaching EOF.
    error: bool,
}

fn read_all(mut s: &TcpStream) -> Received {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Received { data, error: false },
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Received { data, error: true },
        }
    }
}

fn connect(proxy: &LinkProxy) -> Result<TcpStream> {
    let s = TcpStream::connect(proxy.addr()).context("connect to the proxy")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Bits per second through `count` over `window`, after `warmup` (which hides the bucket's first burst and
/// connection set-up).
fn measure_bps(count: &AtomicU64, warmup: Duration, window: Duration) -> f64 {
    thread::sleep(warmup);
    let start = count.load(Ordering::Relaxed);
    let t = Instant::now();
    thread::sleep(window);
    let bytes = count.load(Ordering::Relaxed) - start;
    bytes as f64 * 8.0 / t.elapsed().as_secs_f64()
}

#[test]
fn forwards_byte_exact_both_ways_over_many_connections() -> Result<()> {
    let _serial = timing();
    const CONNS: usize = 16;
    const EACH: usize = 10 * 1024 * 1024 / CONNS;
    let proxy = LinkProxy::start(echo_server()?, LinkProfile::default())?;
    let clients: Vec<_> = (0..CONNS)
        .map(|i| {
            let stream = connect(&proxy)?;
            Ok(thread::spawn(move || -> Result<()> {
                let mut data = vec![0u8; EACH];
                StdRng::seed_from_u64(i as u64).fill_bytes(&mut data);
                let mut w = stream.try_clone()?;
                let sent = data.clone();
                let writer = thread::spawn(move || {
                    w.write_all(&sent)?;
                    w.shutdown(Shutdown::Write)
                });
                let got = read_all(&stream);
                writer
                    .join()
                    .map_err(|_| anyhow::anyhow!("writer panicked"))??;
                ensure!(!got.error, "connection {i} failed");
                ensure!(got.data == data, "connection {i}: echo differs");
                Ok(())
            }))
        })
        .collect::<Result<_>>()?;
    for c in clients {
        c.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    let stats = proxy.stats();
    assert_eq!(stats.bytes_up, (CONNS * EACH) as u64);
    assert_eq!(stats.bytes_down, (CONNS * EACH) as u64);
    assert_eq!((stats.connections, stats.cuts), (CONNS as u64, 0));
    Ok(())
}

#[test]
fn bandwidth_cap_holds_both_ways() -> Result<()> {
    let _serial = timing();
    // Down at 256 kbit/s, one connection reading an endless source.
    let proxy = LinkProxy::start(
        source_server(None)?,
        LinkProfile::default().down_bps(256_000),
    )?;
    let count = Arc::new(AtomicU64::new(0));
    let stream = connect(&proxy)?;
    let c = count.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = (&stream).read(&mut buf) {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let down = measure_bps(&count, Duration::from_millis(300), Duration::from_secs(2));
    drop(proxy);

    // Up at 2 Mbit/s, shared by four connections writing as fast as they can.
    let received = Arc::new(AtomicU64::new(0));
    let proxy = LinkProxy::start(
        sink_server(received.clone())?,
        LinkProfile::default().up_bps(2_000_000),
    )?;
    for _ in 0..4 {
        let mut s = connect(&proxy)?;
        thread::spawn(move || {
            let block = vec![7u8; 16 * 1024];
            while s.write_all(&block).is_ok() {}
        });
    }
    let up = measure_bps(
        &received,
        Duration::from_millis(300),
        Duration::from_secs(2),
    );
    eprintln!(
        "measured: down {down:.0} bit/s at a 256 kbit/s cap, up {up:.0} bit/s at a 2 Mbit/s cap"
    );
    assert!(
        (230_400.0..281_600.0).contains(&down),
        "256 kbit/s link carried {down:.0} bit/s"
    );
    assert!(
        (1_800_000.0..2_200_000.0).contains(&up),
        "2 Mbit/s link carried {up:.0} bit/s over 4 connections"
    );
    Ok(())
}

#[test]
fn latency_adds_to_every_round_trip() -> Result<()> {
    let _serial = timing();
    let proxy = LinkProxy::start(
        echo_server()?,
        LinkProfile::default().latency(Duration::from_millis(100)),
    )?;
    let mut s = connect(&proxy)?;
    let mut buf = [0u8; 100];
    for round in 0..5u8 {
        let t = Instant::now();
        s.write_all(&[round; 100])?;
        s.read_exact(&mut buf)?;
        let rtt = t.elapsed();
        assert_eq!(buf, [round; 100]);
        assert!(
            rtt >= Duration::from_millis(200) && rtt < Duration::from_millis(400),
            "round trip {round} took {rtt:?} over a 100 ms link"
        );
    }
    Ok(())
}

#[test]
fn cut_all_breaks_open_transfers_mid_stream() -> Result<()> {
    const TOTAL: u64 = 50 * 1024 * 1024;
    let proxy = LinkProxy::start(
        source_server(Some(TOTAL))?,
        LinkProfile::default().down_bps(2_000_000),
    )?;
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let s = connect(&proxy)?;
            Ok(thread::spawn(move || read_all(&s)))
        })
        .collect::<Result<_>>()?;
    let open = wait_for(Duration::from_secs(5), || {
        (proxy.stats().open == 6 && proxy.stats().bytes_down > 6 * 4096).then_some(())
    });
    ensure!(
        open.is_some(),
        "transfers did not start: {:?}",
        proxy.stats()
    );
    let t = Instant::now();
    assert_eq!(proxy.cut_all(), 6);
    for c in clients {
        let got = c.join().map_err(|_| anyhow::anyhow!("client panicked"))?;
        assert!(
            !got.data.is_empty() && (got.data.len() as u64) < TOTAL,
            "{} bytes",
            got.data.len()
        );
        assert!(got.error, "a cut is a reset, not an orderly end");
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "cut took {:?}",
        t.elapsed()
    );
    let stats = proxy.stats();
    assert_eq!(stats.cuts, 6);
    assert!(
        wait_for(Duration::from_secs(2), || (proxy.stats().open == 0)
            .then_some(()))
        .is_some()
    );
    Ok(())
}

/// Sequential downloads through a link with random cuts: what the proxy delivered, per connection.
fn random_cut_run(seed: u64, upstream: SocketAddr) -> Result<(LinkProxy, Vec<Received>)> {
    let proxy = LinkProxy::start(
        upstream,
        LinkProfile::default().seed(seed).cut_mean_bytes(32 * 1024),
    )?;
    let runs = (0..40)
        .map(|_| Ok(read_all(&connect(&proxy)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok((proxy, runs))
}

#[test]
fn random_cuts_break_transfers_and_repeat_with_the_seed() -> Result<()> {
    const TOTAL: u64 = 256 * 1024;
    let upstream = source_server(Some(TOTAL))?;
    let (first, runs) = random_cut_run(11, upstream)?;
    let fates = first.fates();
    assert_eq!(fates.len(), runs.len());
    let mut expected_bytes = 0;
    let mut expected_cuts = 0;
    for (fate, got) in fates.iter().zip(&runs) {
        let cut_after = fate.cut_after.context("every fate has a cut")?;
        let len = got.data.len() as u64;
        assert!(
            got.data
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(i as u64)),
            "what arrives is a prefix of what was sent"
        );
        if cut_after < TOTAL {
            expected_cuts += 1;
            assert!(
                got.error && len <= cut_after,
                "cut after {cut_after}: got {len}, error {}",
                got.error
            );
        } else {
            assert!(!got.error && len == TOTAL);
        }
        expected_bytes += cut_after.min(TOTAL);
    }
    let stats = first.stats();
    assert!(expected_cuts >= 35, "{expected_cuts} of 40 cut");
    assert_eq!(stats.cuts, expected_cuts);
    assert_eq!(
        stats.bytes_down, expected_bytes,
        "cuts fall exactly where the dice said"
    );

    // The same events with the same seed meet the same faults; another seed meets others.
    let (second, _) = random_cut_run(11, upstream)?;
    assert_eq!(second.fates(), fates);
    assert_eq!(second.stats().bytes_down, stats.bytes_down);
    assert_eq!(second.stats().cuts, stats.cuts);
    let (other, _) = random_cut_run(12, upstream)?;
    assert_ne!(other.fates(), fates);
    Ok(())
}

#[test]
fn random_refusals_and_stalls() -> Result<()> {
    let profile = LinkProfile::default()
        .seed(5)
        .refuse_probability(0.3)
        .stalls(64 * 1024, Duration::from_millis(20));
    let proxy = LinkProxy::start(echo_server()?, profile)?;
    let mut failed = 0;
    for _ in 0..40 {
        let mut s = connect(&proxy)?;
        let mut buf = [0u8; 4];
        let ok = s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping";
        failed += u64::from(!ok);
    }
    let refused = proxy.fates().iter().filter(|f| f.refused).count() as u64;
    assert!(
        (4..=24).contains(&refused),
        "{refused} of 40 refused at p = 0.3"
    );
    assert_eq!(failed, refused);
    assert_eq!(proxy.stats().refused, refused);

    // A 512 KiB echo through a connection that stalls every 64 KiB on average: slower, never lossy.
    let s = loop {
        let s = connect(&proxy)?;
        if proxy.fates().last().is_some_and(|f| !f.refused) {
            break s;
        }
    };
    let mut data = vec![0u8; 512 * 1024];
    StdRng::seed_from_u64(9).fill_bytes(&mut data);
    let mut w = s.try_clone()?;
    let sent = data.clone();
    let writer =
        thread::spawn(move || w.write_all(&sent).and_then(|_| w.shutdown(Shutdown::Write)));
    let got = read_all(&s);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    assert!(
        !got.error && got.data == data,
        "stalls lost or changed data"
    );
    let stalls = proxy.stats().stalls;
    assert!(stalls >= 5, "{stalls} stalls over 1 MiB both ways");
    Ok(())
}

#[test]
fn cut_every_cuts_open_connections_on_schedule() -> Result<()> {
    let proxy = LinkProxy::start(
        source_server(None)?,
        LinkProfile::default()
            .down_bps(1_000_000)
            .cut_every(Duration::from_millis(100)),
    )?;
    let end = Instant::now() + Duration::from_millis(1050);
    let mut broken = 0;
    while Instant::now() < end {
        let s = connect(&proxy)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let got = read_all(&s);
        ensure!(!got.data.is_empty(), "nothing arrived between two cuts");
        broken += u64::from(got.error);
    }
    let cuts = proxy.stats().cuts;
    assert!(
        (8..=11).contains(&cuts),
        "{cuts} cuts in 1 s at one per 100 ms"
    );
    assert!(
        broken >= 8 && broken <= cuts,
        "client saw {broken} resets of {cuts}"
    );
    Ok(())
}

fn echo_once(proxy: &LinkProxy, timeout: Duration) -> Result<bool> {
    let mut s = connect(proxy)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 5];
    Ok(s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello")
}

#[test]
fn link_down_refuses_then_recovers() -> Result<()> {
    let proxy = LinkProxy::start(echo_server()?, LinkProfile::default())?;
    let mut open = connect(&proxy)?;
    open.set_read_timeout(Some(Duration::from_millis(300)))?;
    assert!(echo_once(&proxy, Duration::from_secs(2))?);

    proxy.set_down(true);
    assert!(proxy.is_down());
    assert!(
        !echo_once(&proxy, Duration::from_secs(2))?,
        "a down link answered"
    );
    assert_eq!(proxy.stats().refused, 1);
    // An open connection stalls while the link is down, and carries on after.
    open.write_all(b"still there?")?;
    let mut buf = [0u8; 12];
    let err = open
        .read_exact(&mut buf)
        .err()
        .context("an open connection answered over a down link")?;
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );

    proxy.set_down(false);
    open.set_read_timeout(Some(Duration::from_secs(2)))?;
    open.read_exact(&mut buf)?;
    assert_eq!(&buf, b"still there?");
    assert!(echo_once(&proxy, Duration::from_secs(2))?, "no recovery");
    assert_eq!(proxy.stats().cuts, 0);
    Ok(())
}

#[test]
fn link_down_blackholes_then_forwards() -> Result<()> {
    let proxy = LinkProxy::start(
        echo_server()?,
        LinkProfile::default().down_mode(DownMode::Blackhole),
    )?;
    proxy.set_down(true);
    let mut s = connect(&proxy)?;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    s.write_all(b"anyone?")?;
    let mut buf = [0u8; 7];
    assert!(
        s.read_exact(&mut buf).is_err(),
        "a blackholed connection answered"
    );
    assert_eq!(proxy.stats().blackholed, 1);
    proxy.set_down(false);
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"anyone?");
    Ok(())
}

#[test]
fn scheduled_down_window() -> Result<()> {
    let proxy = LinkProxy::start(
        echo_server()?,
        LinkProfile::default().down_window(Duration::ZERO, Duration::from_millis(400)),
    )?;
    assert!(wait_for(Duration::from_secs(1), || proxy.is_down().then_some(())).is_some());
    assert!(
        !echo_once(&proxy, Duration::from_secs(2))?,
        "answered inside the window"
    );
    assert!(wait_for(Duration::from_secs(2), || (!proxy.is_down()).then_some(())).is_some());
    assert!(
        echo_once(&proxy, Duration::from_secs(2))?,
        "no answer after the window"
    );
    assert_eq!(proxy.stats().refused, 1);
    Ok(())
}

#[test]
fn stall_pauses_delivery_then_resumes_without_loss() -> Result<()> {
    let _serial = timing();
    const TOTAL: u64 = 1024 * 1024;
    let proxy = LinkProxy::start(
        source_server(Some(TOTAL))?,
        LinkProfile::default().down_bps(8_000_000),
    )?;
    let mut s = connect(&proxy)?;
    let reader = thread::spawn(move || {
        let (mut data, mut gap, mut last) = (Vec::new(), Duration::ZERO, Instant::now());
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            gap = gap.max(last.elapsed());
            last = Instant::now();
            data.extend_from_slice(&buf[..n]);
        }
        (data, gap)
    });
    thread::sleep(Duration::from_millis(300));
    assert_eq!(proxy.stall_all(Duration::from_millis(500)), 1);
    let (data, gap) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    assert_eq!(data.len() as u64, TOTAL);
    assert!(data
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i as u64)));
    assert!(gap >= Duration::from_millis(450), "longest pause {gap:?}");
    assert_eq!((proxy.stats().stalls, proxy.stats().cuts), (1, 0));
    Ok(())
}

#[test]
fn drop_resets_connections_and_closes_the_listener() -> Result<()> {
    let proxy = LinkProxy::start(
        source_server(None)?,
        LinkProfile::default().down_bps(1_000_000),
    )?;
    let addr = proxy.addr();
    let s = connect(&proxy)?;
    let reader = thread::spawn(move || read_all(&s));
    thread::sleep(Duration::from_millis(100));
    drop(proxy);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    assert!(got.error && !got.data.is_empty());
    assert!(TcpStream::connect(addr).is_err(), "listener still open");
    Ok(())
}
