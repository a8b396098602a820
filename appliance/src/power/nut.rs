//! Network UPS Tools: a client of `upsd`'s line protocol (TCP 3493), for USB and serial UPSes that NUT's
//! drivers handle. One `LIST VAR` per poll; the connection is kept open and remade after any error.
//!
//! Like `upsmon`, a UPS that has not answered for longer than the dead-time, and was last seen on battery,
//! is taken to be at low battery: its battery may be dying while the driver or the link is gone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::power::{PowerSource, Reading};

pub struct Nut {
    /// `host:port` of upsd.
    pub address: String,
    /// The UPS's name in upsd (`[name]` in ups.conf).
    pub ups: String,
    /// Optional credentials (`upsd.users`); reading variables needs none.
    pub login: Option<(String, String)>,
    pub dead_time: Duration,
    pub io_timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    last_ok: Option<(Instant, bool)>,
}

impl Nut {
    pub fn new(address: &str, ups: &str, dead_time: Duration) -> Self {
        Nut {
            address: address.to_owned(),
            ups: ups.to_owned(),
            login: None,
            dead_time,
            io_timeout: Duration::from_secs(3),
            conn: None,
            last_ok: None,
        }
    }

    fn connect(&self) -> Result<BufReader<TcpStream>> {
        let addr = self
            .address
            .to_socket_addrs()
            .with_context(|| format!("bad upsd address '{}'", self.address))?
            .next()
            .with_context(|| format!("'{}' resolves to nothing", self.address))?;
        let stream = TcpStream::connect_timeout(&addr, self.io_timeout)
            .with_context(|| format!("cannot connect to upsd at {}", self.address))?;
        stream.set_read_timeout(Some(self.io_timeout))?;
        stream.set_write_timeout(Some(self.io_timeout))?;
        let mut conn = BufReader::new(stream);
        if let Some((user, pass)) = &self.login {
            for line in [format!("USERNAME {user}"), format!("PASSWORD {pass}")] {
                let reply = request_line(&mut conn, &line)?;
                if reply != "OK" {
                    bail!("upsd refused the login: {reply}");
                }
            }
        }
        Ok(conn)
    }

    fn list_vars(&mut self) -> Result<BTreeMap<String, String>> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let Some(conn) = self.conn.as_mut() else {
            bail!("not connected");
        };
        let result = list_vars(conn, &self.ups);
        if result.is_err() {
            // The stream may hold half a reply: start over next time.
            self.conn = None;
        }
        result
    }
}

fn request_line(conn: &mut BufReader<TcpStream>, line: &str) -> Result<String> {
    conn.get_mut().write_all(format!("{line}\n").as_bytes())?;
    read_line(conn)
}

fn read_line(conn: &mut BufReader<TcpStream>) -> Result<String> {
    let mut reply = String::new();
    if conn.read_line(&mut reply)? == 0 {
        bail!("upsd closed the connection");
    }
    Ok(reply.trim_end().to_owned())
}

fn list_vars(conn: &mut BufReader<TcpStream>, ups: &str) -> Result<BTreeMap<String, String>> {
    let first = request_line(conn, &format!("LIST VAR {ups}"))?;
    if let Some(err) = first.strip_prefix("ERR ") {
        bail!("upsd: {err} (UPS '{ups}')");
    }
    if first != format!("BEGIN LIST VAR {ups}") {
        bail!("unexpected reply from upsd: {first}");
    }
    let mut vars = BTreeMap::new();
    loop {
        let line = read_line(conn)?;
        if line.starts_with("END LIST VAR") {
            return Ok(vars);
        }
        if let Some((name, value)) = parse_var(&line) {
            vars.insert(name, value);
        }
    }
}

/// Parses `VAR <ups> <name> "<value>"`, with upsd's backslash escapes.
pub fn parse_var(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("VAR ")?;
    let (_ups, rest) = rest.split_once(' ')?;
    let (name, quoted) = rest.split_once(' ')?;
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            value.extend(chars.next());
        } else {
            value.push(c);
        }
    }
    Some((name.to_owned(), value))
}

/// Turns upsd's variables into a reading: `ups.status` flags OL, OB, LB, FSD, CHRG.
pub fn reading_from_vars(source: String, vars: &BTreeMap<String, String>) -> Reading {
    let status = vars.get("ups.status").map(String::as_str).unwrap_or("");
    let flags: Vec<&str> = status.split_whitespace().collect();
    let has = |f: &str| flags.contains(&f);
    let on_mains = if has("OL") {
        Some(true)
    } else if has("OB") {
        Some(false)
    } else {
        None
    };
    Reading {
        source,
        on_mains,
        low_battery: has("LB"),
        silent: false,
        forced_shutdown: has("FSD"),
        charging: Some(has("CHRG")),
        charge_percent: vars.get("battery.charge").and_then(|v| v.parse().ok()),
        runtime_seconds: vars
            .get("battery.runtime")
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v.max(0.0) as u64),
        battery_volts: vars.get("battery.voltage").and_then(|v| v.parse().ok()),
    }
}

impl PowerSource for Nut {
    fn name(&self) -> String {
        format!("nut:{}@{}", self.ups, self.address)
    }

    fn read(&mut self) -> Result<Reading> {
        match self.list_vars() {
            Ok(vars) => {
                let reading = reading_from_vars(self.name(), &vars);
                // upsd answers but the driver may be gone: a UPS with no status is silent too.
                if let Some(on_mains) = reading.on_mains {
                    self.last_ok = Some((Instant::now(), on_mains));
                    return Ok(reading);
                }
                self.silent(anyhow::anyhow!(
                    "UPS '{}' reports no OL/OB status",
                    self.ups
                ))
            }
            Err(e) => self.silent(e),
        }
    }
}

impl Nut {
    fn silent(&self, error: anyhow::Error) -> Result<Reading> {
        match self.last_ok {
            Some((at, false)) if at.elapsed() >= self.dead_time => Ok(Reading {
                source: self.name(),
                on_mains: Some(false),
                silent: true,
                ..Reading::default()
            }),
            _ => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vars_with_escapes() {
        assert_eq!(
            parse_var(r#"VAR ups ups.status "OB LB""#),
            Some(("ups.status".into(), "OB LB".into()))
        );
        assert_eq!(
            parse_var(r#"VAR ups device.model "A \"big\" one\\""#),
            Some(("device.model".into(), r#"A "big" one\"#.into()))
        );
        assert_eq!(parse_var("BEGIN LIST VAR ups"), None);
    }

    #[test]
    fn flags_become_a_reading() {
        let vars = BTreeMap::from([
            ("ups.status".to_owned(), "OB LB".to_owned()),
            ("battery.charge".to_owned(), "9".to_owned()),
            ("battery.runtime".to_owned(), "95".to_owned()),
        ]);
        let r = reading_from_vars("n".into(), &vars);
        assert_eq!(r.on_mains, Some(false));
        assert!(r.low_battery);
        assert_eq!(r.charge_percent, Some(9.0));
        assert_eq!(r.runtime_seconds, Some(95));
        let vars = BTreeMap::from([("ups.status".to_owned(), "OL CHRG".to_owned())]);
        let r = reading_from_vars("n".into(), &vars);
        assert_eq!((r.on_mains, r.charging), (Some(true), Some(true)));
    }
}
