//! Functional probes: each asks a service to do its job (serve a page, answer a ping, run a query) rather
//! than asking systemd whether a process exists.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::power::shutdown::Cmd;

/// `GET` over HTTP/1.0; succeeds on a 2xx status. Only `http://host[:port]/path` URLs (loopback probes).
pub fn http_ok(url: &str, timeout: Duration) -> Result<String> {
    let (code, _) = http_get(url, timeout, 4096)?;
    if !(200..300).contains(&code) {
        bail!("HTTP {code}");
    }
    Ok(format!("HTTP {code}"))
}

/// `GET` over HTTP/1.0: the status code and up to `limit` bytes of body.
pub fn http_get(url: &str, timeout: Duration, limit: u64) -> Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("'{url}' is not an http:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr_text = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let addr = addr_text
        .to_socket_addrs()
        .with_context(|| format!("bad address in '{url}'"))?
        .next()
        .with_context(|| format!("'{host}' resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: kituo\r\n\r\n"
    )?;
    let mut raw = Vec::with_capacity(4096);
    s.take(limit + 4096).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status_line = text.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP reply: '{status_line}'"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// `SELECT 1` over MariaDB's socket with the command-line client (root is let in by unix_socket auth).
pub fn mariadb_select1(client: &str, socket: &Path, timeout: Duration) -> Result<String> {
    let out = run_capture(
        &[
            client,
            "--no-defaults",
            "--protocol=socket",
            &format!("--socket={}", socket.display()),
            "--connect-timeout=3",
            "-N",
            "-B",
            "-e",
            "SELECT 1",
        ],
        timeout,
    )?;
    if out.trim() != "1" {
        bail!("SELECT 1 returned '{}'", out.trim());
    }
    Ok("SELECT 1 answered".into())
}

fn run_capture(argv: &[&str], timeout: Duration) -> Result<String> {
    let (program, args) = argv.split_first().context("empty command")?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {program}"))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = child.stdout.take() {
                o.read_to_string(&mut out)?;
            }
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err)?;
            }
            if !status.success() {
                bail!("{program} failed ({status}): {}", err.trim());
            }
            return Ok(out);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} did not answer within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// hostapd's control interface answers `PING` with `PONG`.
pub fn hostapd_ping(control: &Path, timeout: Duration) -> Result<String> {
    let dir = std::env::temp_dir();
    let local = dir.join(format!("kituo-hostapd-{}", std::process::id()));
    let _ = std::fs::remove_file(&local);
    let sock = UnixDatagram::bind(&local).context("cannot bind a local control socket")?;
    let result = (|| {
        sock.set_read_timeout(Some(timeout))?;
        sock.connect(control)
            .with_context(|| format!("cannot reach hostapd at {}", control.display()))?;
        sock.send(b"PING")?;
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).context("hostapd did not answer")?;
        if &buf[..n] != b"PONG\n" && &buf[..n] != b"PONG" {
            bail!(
                "hostapd answered '{}'",
                String::from_utf8_lossy(&buf[..n]).trim()
            );
        }
        Ok("PONG".to_owned())
    })();
    let _ = std::fs::remove_file(&local);
    result
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path)
        .with_context(|| format!("cannot stat filesystem of {}", path.display()))?;
    let frag = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}

/// The hottest thermal zone, in degrees Celsius.
pub fn max_temperature(thermal_root: &Path) -> Option<f32> {
    let entries = std::fs::read_dir(thermal_root).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<f32>().ok())
        .map(|m| m / 1000.0)
        .reduce(f32::max)
}

/// Raspberry Pi firmware flags (`get_throttled`): what is wrong now and what has happened since boot.
pub fn decode_throttled(bits: u32) -> Vec<&'static str> {
    const FLAGS: [(u32, &str); 8] = [
        (0, "under-voltage now"),
        (1, "ARM frequency capped now"),
        (2, "throttled now"),
        (3, "soft temperature limit now"),
        (16, "under-voltage has occurred"),
        (17, "frequency capping has occurred"),
        (18, "throttling has occurred"),
        (19, "soft temperature limit has occurred"),
    ];
    FLAGS
        .iter()
        .filter(|(bit, _)| bits & (1 << bit) != 0)
        .map(|(_, s)| *s)
        .collect()
}

/// Reads the throttling flags where the board exposes them: the firmware's `get_throttled` file, or the
/// `rpi_volt` hwmon's under-voltage alarm (Debian's kernel). `None` on other boards.
pub fn throttling(sys_root: &Path) -> Option<Vec<&'static str>> {
    let fw = sys_root.join("devices/platform/soc/soc:firmware/get_throttled");
    if let Ok(text) = std::fs::read_to_string(fw) {
        let bits = u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()?;
        return Some(decode_throttled(bits));
    }
    for e in std::fs::read_dir(sys_root.join("class/hwmon"))
        .ok()?
        .flatten()
    {
        if std::fs::read_to_string(e.path().join("name")).ok()?.trim() == "rpi_volt" {
            let alarm = std::fs::read_to_string(e.path().join("in0_lcrit_alarm")).ok()?;
            return Some(if alarm.trim() == "1" {
                vec!["under-voltage now"]
            } else {
                vec![]
            });
        }
    }
    None
}

/// Clock state on a board without a real-time clock.
pub fn clock_state(now_unix: u64, build_epoch: Option<u64>, synced_flag: &Path) -> (bool, String) {
    if let Some(epoch) = build_epoch.filter(|e| now_unix < *e) {
        return (
            false,
            format!("wrong: earlier than the image's build ({epoch}); no network time yet"),
        );
    }
    if synced_flag.exists() {
        (true, "synchronized with network time".into())
    } else {
        (
            false,
            "not synchronized since boot (no network time); may be off".into(),
        )
    }
}

/// Runs `restart` (e.g. `systemctl restart`) for one unit.
pub fn restart_unit(restart: &Cmd, unit: &str, timeout: Duration) -> Result<()> {
    let mut words = restart.0.clone();
    words.push(unit.to_owned());
    Cmd(words).run(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_bits() {
        assert_eq!(
            decode_throttled(0x50005),
            [
                "under-voltage now",
                "throttled now",
                "under-voltage has occurred",
                "throttling has occurred"
            ]
        );
        assert!(decode_throttled(0).is_empty());
    }

    #[test]
    fn fake_sys_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let zone = tmp.path().join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("temp"), "48312\n").unwrap();
        let zone1 = tmp.path().join("class/thermal/thermal_zone1");
        std::fs::create_dir_all(&zone1).unwrap();
        std::fs::write(zone1.join("temp"), "51000\n").unwrap();
        assert_eq!(
            max_temperature(&tmp.path().join("class/thermal")),
            Some(51.0)
        );
        assert_eq!(throttling(tmp.path()), None);
        let fw = tmp.path().join("devices/platform/soc/soc:firmware");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("get_throttled"), "50000\n").unwrap();
        assert_eq!(
            throttling(tmp.path()),
            Some(vec![
                "under-voltage has occurred",
                "throttling has occurred"
            ])
        );
    }

    #[test]
    fn clock() {
        let tmp = tempfile::tempdir().unwrap();
        let flag = tmp.path().join("synchronized");
        assert!(!clock_state(100, Some(200), &flag).0);
        assert!(clock_state(300, Some(200), &flag)
            .1
            .contains("not synchronized"));
        std::fs::write(&flag, "").unwrap();
        assert!(clock_state(300, Some(200), &flag).0);
    }

    #[test]
    fn http_probe_reports_status() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let t = std::thread::spawn(move || {
            for (i, r) in server.incoming_requests().take(2).enumerate() {
                let code = if i == 0 { 200 } else { 502 };
                r.respond(tiny_http::Response::empty(code)).unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/fpm-ping");
        assert_eq!(http_ok(&url, Duration::from_secs(2)).unwrap(), "HTTP 200");
        assert_eq!(
            http_ok(&url, Duration::from_secs(2))
                .unwrap_err()
                .to_string(),
            "HTTP 502"
        );
        t.join().unwrap();
    }
}
