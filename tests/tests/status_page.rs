//! The status page in headless Chromium (Debian's `chromium`) at phone and desktop sizes, its JSON API and
//! metrics, and the technician login with its cross-site protections. Power comes from a fake sysfs tree.

use kituo_tests::supervisor as common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use appliance::health::probes::http_get;
use appliance::history::unix_now;
use common::{base_config_with, port, state, Supervisor};
use kituo_tests::testbed::require;

const PASSWORD: &str = "field-tech-2026";

fn fake_sysfs(root: &Path, online: &str, capacity: &str, status: &str) {
    for (name, attrs) in [
        ("AC", vec![("type", "Mains"), ("online", online)]),
        (
            "BAT0",
            vec![
                ("type", "Battery"),
                ("capacity", capacity),
                ("status", status),
                ("capacity_level", "Normal"),
                ("time_to_empty_now", "2700"),
            ],
        ),
    ] {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in attrs {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
    }
}

/// A day of history: mains with two cuts, the last one still going.
fn seed_history(path: &Path) {
    let now = unix_now();
    let mut samples = Vec::new();
    let mut charge: f32 = 100.0;
    for i in (0..288u64).rev() {
        let at = now - i * 300;
        let on_battery = (200..230).contains(&(288 - i)) || i < 6;
        charge = if on_battery {
            (charge - 1.5).max(10.0)
        } else {
            (charge + 0.8).min(100.0)
        };
        samples
            .push(serde_json::json!({"at": at, "on_mains": !on_battery, "charge_percent": charge}));
    }
    let events = serde_json::json!([
        {"at": now - 88 * 300, "from": "on mains", "to": "on battery", "reason": "mains lost"},
        {"at": now - 58 * 300, "from": "on battery", "to": "mains restored", "reason": "mains is back"},
        {"at": now - 40 * 300, "from": "mains restored", "to": "on mains", "reason": "mains steady and battery recharged"},
    ]);
    std::fs::write(
        path,
        serde_json::json!({"events": events, "samples": samples}).to_string(),
    )
    .unwrap();
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("e2e/status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn chromium(profile: &Path, size: &str, extra: &[String], url: &str) -> std::process::Output {
    let chromium =
        require("chromium", "chromium").expect("chromium is needed for the status page test");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={size}"))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn start(dir: &Path, with_password: bool) -> Supervisor {
    let sysfs = dir.join("power_supply");
    fake_sysfs(&sysfs, "0", "64", "Discharging");
    seed_history(&dir.join("history.json"));
    let hash = if with_password {
        appliance::status::auth::hash_password(PASSWORD).unwrap()
    } else {
        String::new()
    };
    let p = port();
    let cfg = format!(
        "{}[power]\nsources = sysfs\npoll_seconds = 1\ndebounce_seconds = 1\n\
         history_file = {}\n[sysfs]\nroot = {}\n[shutdown]\nconsole =\npoweroff =\nstop_web =\nstop_sync =\nstop_database =\n",
        base_config_with(dir, p, &format!("technician_password_hash = {hash}\n")),
        dir.join("history.json").display(),
        sysfs.display()
    );
    Supervisor::start(dir, &cfg)
}

#[test]
fn page_renders_in_chromium_at_phone_and_desktop_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sup = start(dir, true);
    sup.wait("on battery with health", Duration::from_secs(20), |s| {
        state(s) == "on_battery" && !s["health"].is_null()
    });

    let (code, html) = http_get(&sup.url("/status"), Duration::from_secs(5), 1 << 20).unwrap();
    assert_eq!(code, 200);
    assert!(html.len() < 50 * 1024, "page weighs {} bytes", html.len());
    for external in [
        "src=\"http",
        "href=\"http",
        "<script",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(
            !html.contains(external),
            "page must be self-contained, found {external}"
        );
    }

    let out = artifacts();
    let url = sup.url("/status");
    let dom = String::from_utf8(
        chromium(
            &dir.join("profile-dom"),
            "360,740",
            &["--dump-dom".into()],
            &url,
        )
        .stdout,
    )
    .unwrap();
    std::fs::write(out.join("dom.html"), &dom).unwrap();
    for text in [
        "Testville Learning Center",
        "On battery",
        "64%",
        "45 minutes",
        "paused to save the battery",
        "Power, last 24 hours",
        "Sync: not configured yet",
        "Updates: not configured yet",
        "Disk /",
        "not synchronized",
        "on mains \u{2192} on battery",
        "test-build-42",
        "Log in",
    ] {
        assert!(dom.contains(text), "the page does not say '{text}':\n{dom}");
    }
    assert!(dom.contains("<polyline"), "the chart has a charge line");
    for (size, name) in [
        ("360,740", "phone-360x740.png"),
        ("1280,800", "desktop-1280x800.png"),
    ] {
        let shot = out.join(name);
        let _ = std::fs::remove_file(&shot);
        chromium(
            &dir.join(format!("profile-{name}")),
            size,
            &[format!("--screenshot={}", shot.display())],
            &url,
        );
        let png = std::fs::read(&shot).expect("screenshot written");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name} looks empty ({} bytes)",
            png.len()
        );
    }

    // Mains comes back: the page follows.
    fake_sysfs(&dir.join("power_supply"), "1", "64", "Charging");
    sup.wait("restored", Duration::from_secs(10), |s| {
        state(s) == "restored"
    });
    let (_, html) = http_get(&url, Duration::from_secs(5), 1 << 20).unwrap();
    assert!(html.contains("Mains back, battery recharging"));

    let (code, metrics) = http_get(&sup.url("/metrics"), Duration::from_secs(5), 1 << 20).unwrap();
    assert_eq!(code, 200);
    for line in [
        "kituo_power_state{state=\"mains_restored\"} 1",
        "kituo_battery_charge_percent 64",
        "kituo_bulk_sync_paused 1",
        "kituo_build_info{version=\"0.1.0\",build=\"test-build-42\",center=\"testville\"} 1",
    ] {
        assert!(metrics.contains(line), "metrics lack '{line}':\n{metrics}");
    }
    let s = sup.status();
    assert_eq!(s["build"]["id"], "test-build-42");
    assert_eq!(s["center_id"], "testville");
    assert_eq!(s["site_id"], 7);
    assert!(s["version"].is_string());
    assert!(s["sync"].is_null() && s["update"].is_null());
    let samples = s["chart"].as_array().unwrap().len();
    assert!(
        (288..=289).contains(&samples),
        "a day of samples, got {samples}"
    );

    // `appliance status` shows the same in a terminal.
    let cli = Command::new(kituo_tests::appliance_binary())
        .args(["status", "--config"])
        .arg(dir.join("appliance.ini"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    for want in [
        "Testville Learning Center",
        "mains restored",
        "battery 64%",
        "Sync:     not configured yet",
        "Disk:     /",
    ] {
        assert!(
            text.contains(want),
            "appliance status lacks '{want}':\n{text}"
        );
    }
}

/// A raw HTTP/1.0 request: status code, headers and body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn technician_actions_need_login_and_same_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let sup = start(tmp.path(), true);
    let p = sup.port;

    let (code, _, _) = request(p, "POST", "/status/action", &[], "action=sync-now&csrf=x");
    assert_eq!(code, 403, "no session");

    let (code, head, _) = request(p, "POST", "/status/login", &[], "password=wrong");
    assert_eq!(code, 303);
    assert_eq!(header(&head, "Location"), Some("/status?login=failed"));
    let (_, _, page) = request(p, "GET", "/status?login=failed", &[], "");
    assert!(page.contains("Wrong password."));

    let (code, _, _) = request(
        p,
        "POST",
        "/status/login",
        &[("Origin", "http://evil.example")],
        &format!("password={PASSWORD}"),
    );
    assert_eq!(code, 403, "cross-site login");

    let (code, head, _) = request(
        p,
        "POST",
        "/status/login",
        &[],
        &format!("password={PASSWORD}"),
    );
    assert_eq!(code, 303);
    let cookie_header = header(&head, "Set-Cookie").expect("a session cookie");
    assert!(
        cookie_header.contains("HttpOnly") && cookie_header.contains("SameSite=Strict"),
        "{cookie_header}"
    );
    let cookie = cookie_header.split(';').next().unwrap().to_owned();

    let (_, _, page) = request(p, "GET", "/status", &[("Cookie", &cookie)], "");
    assert!(
        page.contains("Technician actions") && page.contains("Sync now"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    let (code, _, _) = request(
        p,
        "POST",
        "/status/action",
        &[("Cookie", &cookie)],
        "action=sync-now&csrf=forged",
    );
    assert_eq!(code, 403, "wrong form token");
    let (code, _, _) = request(
        p,
        "POST",
        "/status/action",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        &format!("action=sync-now&csrf={csrf}"),
    );
    assert_eq!(code, 403, "cross-site action");
    let (code, _, _) = request(
        p,
        "POST",
        "/status/action",
        &[
            ("Cookie", &cookie),
            ("Origin", &format!("http://127.0.0.1:{p}")),
        ],
        &format!("action=sync-now&csrf={csrf}"),
    );
    assert_eq!(code, 303, "a real action");
    let (code, _, _) = request(
        p,
        "POST",
        "/status/action",
        &[("Cookie", &cookie)],
        &format!("action=restart%3Aevil.service&csrf={csrf}"),
    );
    assert_eq!(code, 400, "only known units");
    let (code, _, _) = request(
        p,
        "POST",
        "/status/action",
        &[("Cookie", &cookie)],
        &format!("action=logout&csrf={csrf}"),
    );
    assert_eq!(code, 303);
    let (code, _, _) = request(
        p,
        "POST",
        "/status/action",
        &[("Cookie", &cookie)],
        &format!("action=sync-now&csrf={csrf}"),
    );
    assert_eq!(code, 403, "logged out");
}

#[test]
fn read_only_without_a_password() {
    let tmp = tempfile::tempdir().unwrap();
    let sup = start(tmp.path(), false);
    let (_, _, page) = request(sup.port, "GET", "/status", &[], "");
    assert!(
        !page.contains("Log in") && !page.contains("<form"),
        "{page}"
    );
    let (code, _, _) = request(sup.port, "POST", "/status/login", &[], "password=x");
    assert_eq!(code, 403);
}
