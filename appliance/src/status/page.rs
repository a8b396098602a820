//! The status page: one HTML document with inline CSS and SVG, no script and no external asset (the
//! appliance is offline), readable on a 360-px phone, reloading itself.

use std::fmt::Write;

use crate::power::state::PowerState;
use crate::status::api::Snapshot;
use crate::status::{Clash, FileSyncState, FileSyncStatus, LinkState, StickRecord};

/// What the viewer may do.
pub enum Access<'a> {
    /// No technician password is configured: read-only, no login form.
    ReadOnly,
    LoggedOut {
        failed: bool,
    },
    Technician {
        csrf: &'a str,
        units: &'a [String],
    },
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3 h 12 min", "45 s".
pub fn span(seconds: u64) -> String {
    match seconds {
        s if s < 90 => format!("{s} s"),
        s if s < 5400 => format!("{} min", (s + 30) / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} days", s / 86_400),
    }
}

fn ago(now: u64, then: u64) -> String {
    if then > now {
        "just now (clock moved back)".into()
    } else {
        format!("{} ago", span(now - then))
    }
}

fn bytes(b: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let b = b as f64;
    if b >= GIB {
        format!("{:.1} GB", b / GIB)
    } else {
        format!("{:.0} MB", b / (1024.0 * 1024.0))
    }
}

const CSS: &str = "\
*{box-sizing:border-box}body{margin:0;font:16px/1.4 system-ui,sans-serif;background:#f2f4f5;color:#1b1f23}\
header{background:#1b4d3e;color:#fff;padding:10px 14px}header h1{margin:0;font-size:20px}header p{margin:2px 0 0;font-size:14px;opacity:.85}\
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(300px,100%),1fr));gap:10px;padding:10px;max-width:1200px;margin:auto}\
section{background:#fff;border-radius:8px;padding:10px 12px;box-shadow:0 1px 2px #0002}\
h2{font-size:15px;margin:0 0 6px;text-transform:uppercase;letter-spacing:.04em;color:#555}\
.big{font-size:26px;font-weight:700}.ok{color:#177245}.warn{color:#b25e00}.bad{color:#b3261e}.dim{color:#777}\
.bar{height:10px;background:#e3e6e8;border-radius:5px;overflow:hidden}.bar i{display:block;height:100%;background:#2e8b57}\
table{width:100%;border-collapse:collapse;font-size:15px}td{padding:3px 0;vertical-align:top;overflow-wrap:anywhere}td:first-child{padding-right:8px}td+td{text-align:right}\
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}.g{background:#2e8b57}.r{background:#b3261e}\
svg{width:100%;height:auto}small{font-size:13px}form{display:inline}button,input{font:inherit;padding:6px 10px;margin:3px 3px 3px 0}\
footer{text-align:center;font-size:13px;color:#666;padding:8px}";

fn state_class(s: PowerState) -> &'static str {
    match s {
        PowerState::OnMains => "ok",
        PowerState::OnBattery | PowerState::Restored => "warn",
        PowerState::LowBattery | PowerState::ShuttingDown => "bad",
        PowerState::Unknown => "dim",
    }
}

fn row(out: &mut String, label: &str, value: &str) {
    let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(label), value);
}

fn dot(ok: bool) -> &'static str {
    if ok {
        "<span class=\"dot g\"></span>"
    } else {
        "<span class=\"dot r\"></span>"
    }
}

pub fn render(s: &Snapshot, refresh_seconds: u64, access: Access<'_>) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let now = s.generated_at;
    let name = if s.center_name.is_empty() {
        &s.center_id
    } else {
        &s.center_name
    };
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{refresh_seconds}\">\
         <title>Kituo status: {n}</title><style>{CSS}</style></head><body>\
         <header><h1>{n}</h1><p>Kituo appliance &middot; site {site} &middot; {t}</p></header><main>",
        n = esc(name),
        site = s.site_id,
        t = if s.health.as_ref().is_some_and(|h| !h.clock_ok) {
            "clock not set: times may be off"
        } else {
            "refreshes by itself"
        },
    );
    center_config(&mut o, s);
    power(&mut o, s, now);
    chart(&mut o, s, now);
    services(&mut o, s);
    system(&mut o, s);
    sync(&mut o, s, now);
    update(&mut o, s);
    events(&mut o, s, now);
    actions(&mut o, &access);
    let build = s
        .build
        .get("id")
        .map(String::as_str)
        .unwrap_or("development build");
    let _ = write!(
        o,
        "</main><footer>Kituo {} &middot; build {} &middot; supervisor up {} &middot; \
         <a href=\"/api/status\">JSON</a> &middot; <a href=\"/metrics\">metrics</a></footer></body></html>",
        esc(s.version),
        esc(build),
        span(s.uptime_seconds)
    );
    o
}

fn power(o: &mut String, s: &Snapshot, now: u64) {
    let p = &s.power;
    o.push_str("<section id=\"power\"><h2>Power</h2>");
    if !p.configured {
        o.push_str("<p class=\"big dim\">No UPS configured</p><p><small>Power is not watched: set <code>[power] sources</code> in appliance.ini.</small></p></section>");
        return;
    }
    let words = match p.state {
        PowerState::OnMains => "On mains power",
        PowerState::OnBattery => "On battery",
        PowerState::LowBattery => "Battery low",
        PowerState::ShuttingDown => "Shutting down",
        PowerState::Restored => "Mains back, battery recharging",
        PowerState::Unknown => "No reading yet",
    };
    let _ = write!(
        o,
        "<p class=\"big {}\">{words}</p><table>",
        state_class(p.state)
    );
    if let Some(since) = p.since {
        row(o, "Since", &esc(&ago(now, since)));
    }
    if let Some(r) = &p.reading {
        if let Some(c) = r.charge_percent {
            row(
                o,
                "Battery",
                &format!(
                    "{c:.0}%<div class=\"bar\"><i style=\"width:{:.0}%\"></i></div>",
                    c.clamp(0.0, 100.0)
                ),
            );
        }
        if let Some(t) = r.runtime_seconds {
            row(o, "Time left on battery", &format!("{} minutes", t / 60));
        }
        if let Some(v) = r.battery_volts {
            row(o, "Battery voltage", &format!("{v:.2} V"));
        }
        if let Some(c) = r.charging {
            row(o, "Charging", if c { "yes" } else { "no" });
        }
    }
    row(
        o,
        "Bulk sync",
        if p.bulk_sync_paused {
            "<span class=\"warn\">paused to save the battery</span>"
        } else {
            "allowed"
        },
    );
    for src in &p.sources {
        let state = if src.ok {
            format!("{}answering", dot(true))
        } else {
            format!("{}{}", dot(false), esc(&src.error))
        };
        row(
            o,
            "Source",
            &format!("{}<br><small>{}</small>", state, esc(&src.name)),
        );
    }
    o.push_str("</table>");
    if !p.shutdown_steps.is_empty() {
        o.push_str("<p><b>Shutdown sequence</b></p><table>");
        for st in &p.shutdown_steps {
            row(
                o,
                &st.step,
                &format!("{}{} ms {}", dot(st.ok), st.millis, esc(&st.detail)),
            );
        }
        o.push_str("</table>");
    }
    o.push_str("</section>");
}

/// 24 hours in a 288 x 100 box: one x unit per 5 minutes. The charge is a line; time on battery is shaded.
fn chart(o: &mut String, s: &Snapshot, now: u64) {
    o.push_str("<section id=\"chart\"><h2>Power, last 24 hours</h2>");
    if s.chart.is_empty() {
        o.push_str("<p class=\"dim\">No samples yet.</p></section>");
        return;
    }
    let start = now.saturating_sub(crate::history::CHART_SECONDS);
    let x = |at: u64| (at.saturating_sub(start) as f64 / 300.0).min(288.0);
    o.push_str("<svg viewBox=\"-2 -4 300 118\" role=\"img\" aria-label=\"battery charge and power cuts over 24 hours\">\
        <rect x=\"0\" y=\"0\" width=\"288\" height=\"100\" fill=\"#f7f9fa\" stroke=\"#ccc\"/>\
        <line x1=\"0\" y1=\"50\" x2=\"288\" y2=\"50\" stroke=\"#ddd\"/>");
    // One shaded band per stretch on battery, not one per sample: the page stays small.
    let mut band: Option<u64> = None;
    for (i, p) in s.chart.iter().enumerate() {
        let on_battery = p.on_mains == Some(false);
        let next = s.chart.get(i + 1).map_or(now, |n| n.at);
        match (on_battery, band) {
            (true, None) => band = Some(p.at),
            (false, Some(from)) => {
                shade(o, x(from), x(p.at));
                band = None;
            }
            _ => {}
        }
        if on_battery && i + 1 == s.chart.len() {
            if let Some(from) = band {
                shade(o, x(from), x(next));
            }
        }
    }
    let points: Vec<String> = s
        .chart
        .iter()
        .filter_map(|p| {
            p.charge_percent.map(|c| {
                format!(
                    "{:.1},{:.1}",
                    x(p.at),
                    100.0 - f64::from(c.clamp(0.0, 100.0))
                )
            })
        })
        .collect();
    if !points.is_empty() {
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"#1b4d3e\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    o.push_str("<text x=\"0\" y=\"112\" font-size=\"9\">24 h ago</text><text x=\"288\" y=\"112\" font-size=\"9\" text-anchor=\"end\">now</text>\
        <text x=\"3\" y=\"9\" font-size=\"8\" fill=\"#777\">100%</text><text x=\"3\" y=\"48\" font-size=\"8\" fill=\"#777\">50%</text></svg>\
        <p><small>Line: battery charge. Shaded: running on battery.</small></p></section>");
}

fn shade(o: &mut String, from: f64, to: f64) {
    let _ = write!(
        o,
        "<rect x=\"{from:.1}\" y=\"0\" width=\"{:.1}\" height=\"100\" fill=\"#f4b400\" opacity=\".35\"/>",
        (to - from).max(0.5)
    );
}

fn services(o: &mut String, s: &Snapshot) {
    o.push_str("<section id=\"services\"><h2>Services</h2>");
    let Some(h) = &s.health else {
        o.push_str("<p class=\"dim\">First check still running.</p></section>");
        return;
    };
    if h.services.is_empty() {
        o.push_str("<p class=\"dim\">No service probes configured.</p>");
    }
    o.push_str("<table>");
    for c in &h.services {
        let mut v = format!(
            "{}{}",
            dot(c.ok),
            if c.ok { "working" } else { "NOT working" }
        );
        if !c.ok {
            let _ = write!(v, "<br><small>{}</small>", esc(&c.detail));
        }
        if c.restarts > 0 {
            let _ = write!(v, "<br><small>restarted {} times</small>", c.restarts);
        }
        row(o, &c.name, &v);
    }
    o.push_str("</table></section>");
}

fn system(o: &mut String, s: &Snapshot) {
    o.push_str("<section id=\"system\"><h2>System</h2>");
    let Some(h) = &s.health else {
        o.push_str("<p class=\"dim\">First check still running.</p></section>");
        return;
    };
    o.push_str("<table>");
    for d in &h.disks {
        let used = 100
            - (d.free_bytes * 100)
                .checked_div(d.total_bytes)
                .unwrap_or(100);
        row(
            o,
            &format!("Disk {}", d.path),
            &format!("<span class=\"{}\">{} free of {}</span><div class=\"bar\"><i style=\"width:{used}%\"></i></div>", if d.ok { "ok" } else { "bad" }, bytes(d.free_bytes), bytes(d.total_bytes)),
        );
    }
    if let Some(t) = h.temperature_celsius {
        let class = if t >= 80.0 {
            "bad"
        } else if t >= 70.0 {
            "warn"
        } else {
            "ok"
        };
        row(
            o,
            "Temperature",
            &format!("<span class=\"{class}\">{t:.0} &deg;C</span>"),
        );
    }
    if let Some(flags) = &h.throttling {
        let v = if flags.is_empty() {
            "<span class=\"ok\">none</span>".to_owned()
        } else {
            format!("<span class=\"bad\">{}</span>", esc(&flags.join(", ")))
        };
        row(o, "Power supply warnings", &v);
    }
    row(
        o,
        "Clock",
        &format!(
            "<span class=\"{}\">{}</span>",
            if h.clock_ok { "ok" } else { "warn" },
            esc(&h.clock)
        ),
    );
    row(
        o,
        "Load (1/5/15 min)",
        &format!("{:.2} / {:.2} / {:.2}", h.load[0], h.load[1], h.load[2]),
    );
    row(
        o,
        "Memory free",
        &format!(
            "{} of {}",
            bytes(h.memory_available_bytes),
            bytes(h.memory_total_bytes)
        ),
    );
    row(o, "Up for", &span(h.uptime_seconds));
    row(o, "Version", &esc(s.version));
    o.push_str("</table></section>");
}

fn sync(o: &mut String, s: &Snapshot, now: u64) {
    o.push_str("<section id=\"sync\"><h2>Link and sync</h2>");
    let Some(y) = &s.sync else {
        o.push_str("<p class=\"dim\">Sync: not configured yet.</p></section>");
        return;
    };
    let link = match y.link {
        LinkState::Up => "<span class=\"ok\">up</span>",
        LinkState::Down => "<span class=\"bad\">down</span>",
        LinkState::PausedOnBattery => "<span class=\"warn\">paused on battery</span>",
    };
    o.push_str("<table>");
    row(o, "Link to the hub", link);
    row(
        o,
        "Last sync",
        &y.last_success.map_or("never".into(), |t| esc(&ago(now, t))),
    );
    let mut backlog = format!("{} changes", y.backlog_changes);
    if let Some(t) = y.backlog_oldest {
        let _ = write!(backlog, ", oldest {}", esc(&ago(now, t)));
    }
    if y.backlog_files > 0 {
        let _ = write!(
            backlog,
            "; {} files ({})",
            y.backlog_files,
            bytes(y.backlog_bytes)
        );
    }
    row(o, "Waiting to send", &backlog);
    row(o, "Card clock", &clock(y.clock_offset_ms));
    if let Some(e) = &y.last_error {
        row(
            o,
            "Last error",
            &format!("<span class=\"bad\">{}</span>", esc(e)),
        );
    }
    if let Some(f) = &s.files {
        files(o, f, now);
    }
    for b in s.sticks.iter().take(5) {
        stick(o, b, now);
    }
    for c in s.clashes.iter().take(5) {
        clash(o, c, now);
    }
    o.push_str("</table></section>");
}

/// How far the card's clock is from the hub's: sync stamps changes in the hub's time either way, but
/// Moodle shows the card's.
fn clock(offset_ms: Option<i64>) -> String {
    let Some(ms) = offset_ms else {
        return "<span class=\"dim\">not checked against the hub since boot</span>".into();
    };
    let secs = ms.unsigned_abs() / 1000;
    match (secs, ms > 0) {
        (0..=2, _) => "<span class=\"ok\">right</span>".into(),
        (_, true) => format!("<span class=\"warn\">{} behind the hub</span>", span(secs)),
        (_, false) => format!(
            "<span class=\"warn\">{} ahead of the hub</span>",
            span(secs)
        ),
    }
}

/// One line of stick history.
fn stick(o: &mut String, b: &StickRecord, now: u64) {
    let (way, peer) = if b.direction == "export" {
        ("Stick out", format!("for {}", b.peer))
    } else {
        ("Stick in", format!("from {}", b.peer))
    };
    let class = if b.ok { "ok" } else { "bad" };
    row(
        o,
        way,
        &format!(
            "{}, {peer}, {}: <span class=\"{class}\">{}</span>",
            esc(&ago(now, b.at)),
            bytes(b.bytes),
            esc(&b.result)
        ),
    );
}

/// A name two sites gave to two people or things: a technician may need to tell the person.
fn clash(o: &mut String, c: &Clash, now: u64) {
    row(
        o,
        "Name clash",
        &format!(
            "{}: two {} rows named &lsquo;{}&rsquo;; the one made at site {} (id {}) is now \
             <span class=\"warn\">&lsquo;{}&rsquo;</span>",
            esc(&ago(now, c.at)),
            esc(&c.table),
            esc(&c.old),
            c.site,
            c.renamed,
            esc(&c.new)
        ),
    );
}

/// File sync's rows, in the sync table.
fn files(o: &mut String, f: &FileSyncStatus, now: u64) {
    let state = match f.state {
        FileSyncState::Idle => "<span class=\"ok\">idle</span>",
        FileSyncState::Moving => "<span class=\"ok\">moving</span>",
        FileSyncState::PausedOnBattery => "<span class=\"warn\">paused on battery</span>",
        FileSyncState::Failing => "<span class=\"bad\">failing</span>",
    };
    row(o, "Files", state);
    let mut fetch = format!("{} files ({})", f.fetch_pending, bytes(f.fetch_bytes));
    if let Some(t) = f.oldest.filter(|_| f.fetch_pending + f.send_pending > 0) {
        let _ = write!(fetch, ", oldest added {}", esc(&ago(now, t)));
    }
    if f.waiting_for_window > 0 {
        let _ = write!(
            fetch,
            "; {} large ones wait for the night window",
            f.waiting_for_window
        );
    }
    row(o, "Files to fetch", &fetch);
    row(
        o,
        "Files to send",
        &format!("{} files ({})", f.send_pending, bytes(f.send_bytes)),
    );
    row(
        o,
        "File transfer rate",
        &format!(
            "{} kbit/s; {} moved since start",
            f.rate_bytes_per_second * 8 / 1000,
            bytes(f.moved_bytes)
        ),
    );
    if let Some(e) = &f.last_error {
        row(
            o,
            "Last file error",
            &format!("<span class=\"bad\">{}</span>", esc(e)),
        );
    }
}

/// Shown only when the boot partition's center.ini was not applied: the technician must fix the file.
fn center_config(o: &mut String, s: &Snapshot) {
    let Some(error) = s.center_config.as_ref().and_then(|c| c.error.as_deref()) else {
        return;
    };
    let _ = write!(
        o,
        "<section id=\"center-config\"><h2>Center config</h2><p><span class=\"bad\">center.ini was not \
         applied; the card keeps its configuration:</span> {}</p><p class=\"dim\">Fix the file on the boot \
         partition (any computer can edit it) and restart the card.</p></section>",
        esc(error)
    );
}

fn update(o: &mut String, s: &Snapshot) {
    o.push_str("<section id=\"update\"><h2>Software update</h2>");
    let Some(u) = &s.update else {
        o.push_str("<p class=\"dim\">Updates: not configured yet.</p></section>");
        return;
    };
    o.push_str("<table>");
    row(o, "Running from slot", &esc(&u.active_slot));
    row(
        o,
        "Waiting to apply",
        &u.pending.as_deref().map_or("nothing".into(), esc),
    );
    if let Some(r) = &u.last_result {
        row(o, "Last update", &esc(r));
    }
    o.push_str("</table></section>");
}

fn events(o: &mut String, s: &Snapshot, now: u64) {
    if s.history.is_empty() {
        return;
    }
    o.push_str("<section id=\"events\"><h2>Power events</h2><table>");
    for e in s.history.iter().rev().take(10) {
        row(
            o,
            &format!("{} \u{2192} {}", e.from, e.to),
            &format!(
                "{}<br><small>{}</small>",
                esc(&ago(now, e.at)),
                esc(&e.reason)
            ),
        );
    }
    o.push_str("</table></section>");
}

fn actions(o: &mut String, access: &Access<'_>) {
    match access {
        Access::ReadOnly => {}
        Access::LoggedOut { failed } => {
            o.push_str("<section id=\"login\"><h2>Technician</h2>");
            if *failed {
                o.push_str("<p class=\"bad\">Wrong password.</p>");
            }
            o.push_str("<form method=\"post\" action=\"/status/login\"><input type=\"password\" name=\"password\" \
                autocomplete=\"current-password\" placeholder=\"password\" required><button>Log in</button></form></section>");
        }
        Access::Technician { csrf, units } => {
            o.push_str("<section id=\"actions\"><h2>Technician actions</h2>");
            let button = |o: &mut String, action: &str, label: &str| {
                let _ = write!(
                    o,
                    "<form method=\"post\" action=\"/status/action\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <input type=\"hidden\" name=\"action\" value=\"{}\"><button>{}</button></form>",
                    esc(csrf),
                    esc(action),
                    esc(label)
                );
            };
            button(o, "sync-now", "Sync now");
            for u in units.iter() {
                button(o, &format!("restart:{u}"), &format!("Restart {u}"));
            }
            button(o, "reboot", "Reboot");
            button(o, "logout", "Log out");
            o.push_str("</section>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::status::api::{snapshot, Identity};
    use crate::status::{
        FileSyncState, FileSyncStatus, LinkState, Shared, StickRecord, SyncStatus, UpdateStatus,
    };

    #[test]
    fn fed_sync_and_update_are_shown() {
        let shared = Shared::default();
        let feed = shared.feed();
        let now = crate::history::unix_now();
        feed.set_sync(SyncStatus {
            link: LinkState::Down,
            last_success: Some(now - 7200),
            backlog_changes: 1234,
            backlog_oldest: Some(now - 7300),
            backlog_files: 0,
            backlog_bytes: 0,
            last_error: Some("hub unreachable: <timeout>".into()),
            clock_offset_ms: Some(3_600_000),
        });
        feed.set_files(FileSyncStatus {
            state: FileSyncState::Moving,
            fetch_pending: 12,
            fetch_bytes: 40 << 20,
            send_pending: 3,
            send_bytes: 5 << 20,
            oldest: Some(now - 7300),
            waiting_for_window: 2,
            rate_bytes_per_second: 250_000,
            moved_files: 1,
            moved_bytes: 1 << 20,
            restored_from_trash: 0,
            trashed: 0,
            last_success: None,
            last_error: Some("the hub answered 503".into()),
        });
        feed.set_sticks(vec![StickRecord {
            at: now - 600,
            direction: "import".into(),
            peer: "hub".into(),
            stick: "ab12".into(),
            volumes: 2,
            bytes: 3 << 20,
            changes: 40,
            blobs: 2,
            ok: false,
            result: "applied 40 changes; volume 2 of 3 is missing".into(),
        }]);
        feed.set_clashes(vec![Clash {
            table: "user".into(),
            column: "username".into(),
            kept: 70,
            renamed: 131,
            old: "zawadi".into(),
            new: "zawadi-3".into(),
            site: 3,
            at: now - 120,
        }]);
        feed.set_update(UpdateStatus {
            active_slot: "B".into(),
            pending: Some("0.2.0".into()),
            last_result: None,
        });
        let id = Identity {
            center_id: "x".into(),
            center_name: String::new(),
            site_id: 3,
            build: Default::default(),
            center_config: Some(crate::commission::apply::Record {
                error: Some(
                    "/boot/firmware/center.ini:9: key 'site_id' in section [sync]: <99>".into(),
                ),
                ..Default::default()
            }),
        };
        let html = render(&snapshot(&id, &shared.read(), 5), 30, Access::ReadOnly);
        for text in [
            "<span class=\"bad\">down</span>",
            "2 h 0 min ago",
            "1234 changes, oldest 2 h 1 min ago; 3 files (5 MB)",
            "hub unreachable: &lt;timeout&gt;",
            "Card clock</td><td><span class=\"warn\">60 min behind the hub",
            "Running from slot</td><td>B",
            "0.2.0",
            "No UPS configured",
            "12 files (40 MB), oldest added 2 h 1 min ago; 2 large ones wait",
            "Last file error</td><td><span class=\"bad\">the hub answered 503",
            "Stick in</td><td>10 min ago, from hub, 3 MB: <span class=\"bad\">applied 40 changes; volume 2 of 3 is missing",
            "center.ini was not applied",
            "Name clash</td><td>2 min ago: two user rows named &lsquo;zawadi&rsquo;; the one made at site 3 (id 131) is now <span class=\"warn\">&lsquo;zawadi-3&rsquo;",
            "/boot/firmware/center.ini:9: key &#39;site_id&#39; in section [sync]: &lt;99&gt;",
        ] {
            assert!(html.contains(text), "missing {text}: {html}");
        }
        assert!(!html.contains("not configured yet"));
    }

    #[test]
    fn spans_and_escaping() {
        assert_eq!(span(45), "45 s");
        assert_eq!(span(600), "10 min");
        assert_eq!(span(3 * 3600 + 12 * 60), "3 h 12 min");
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
