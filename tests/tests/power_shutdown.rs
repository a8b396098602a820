//! The power watch against real parts: NUT's upsd with the dummy-ups driver, a private MariaDB, and
//! recorder scripts standing in for systemctl.

use kituo_tests::supervisor as common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{base_config, port, state, Supervisor};
use kituo_tests::testbed::{recorder, wait_for, MariaDb, Nut};

const OL: &str = "ups.status: OL\nbattery.charge: 100\nbattery.runtime: 2400\n";
const OB: &str = "ups.status: OB DISCHRG\nbattery.charge: 80\nbattery.runtime: 1500\n";
const OB_LB: &str = "ups.status: OB DISCHRG LB\nbattery.charge: 30\nbattery.runtime: 400\n";
const OB_19: &str = "ups.status: OB DISCHRG\nbattery.charge: 19\nbattery.runtime: 1500\n";
const OB_21: &str = "ups.status: OB DISCHRG\nbattery.charge: 21\nbattery.runtime: 1500\n";

fn power_config(dir: &Path, nut: &Nut, db: &MariaDb, grace: u64) -> String {
    let p = port();
    let (web_stop, _) = recorder(dir, "stop-web").unwrap();
    let (web_start, _) = recorder(dir, "start-web").unwrap();
    let (sync_stop, _) = recorder(dir, "stop-sync").unwrap();
    let (poweroff, _) = recorder(dir, "poweroff").unwrap();
    format!(
        "{}[power]\nsources = nut\npoll_seconds = 1\ndebounce_seconds = 1\nlow_debounce_seconds = 1\nrestore_seconds = 1\n\
         history_file = {}\n[nut]\naddress = {}\nups = ups\ndead_seconds = 3\n\
         [shutdown]\ngrace_seconds = {grace}\nstop_sync = {}\nstart_sync =\nstop_web = {}\nstart_web = {}\n\
         stop_database = {}\ndatabase_pid_file = {}\ndatabase_timeout_seconds = 30\npoweroff = {}\n\
         console = {}\n",
        base_config(dir, p),
        dir.join("history.json").display(),
        nut.address(),
        sync_stop.display(),
        web_stop.display(),
        web_start.display(),
        db.stop_command(),
        db.pid_file.display(),
        poweroff.display(),
        dir.join("console").display(),
    )
}

/// A supervisor watching its own upsd (dummy-ups, reading `ups` at first) and stopping its own MariaDB,
/// recorder scripts standing in for the rest; `edit` may change its appliance.ini. In drop order last to
/// first: the supervisor stops before the database, the folder goes last.
fn start(
    ups: &str,
    grace: u64,
    edit: impl FnOnce(&Path, &MariaDb, String) -> String,
) -> (tempfile::TempDir, Nut, MariaDb, Supervisor) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let nut = Nut::start(&dir.join("nut"), ups).expect("upsd with dummy-ups");
    let db = MariaDb::start(&dir.join("db")).expect("MariaDB");
    let cfg = edit(dir, &db, power_config(dir, &nut, &db, grace));
    let sup = Supervisor::start(dir, &cfg);
    (tmp, nut, db, sup)
}

fn as_is(_: &Path, _: &MariaDb, cfg: String) -> String {
    cfg
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_owned()
}

#[test]
fn low_battery_stops_mariadb_cleanly_then_powers_off() {
    let (tmp, nut, mut db, sup) = start(OL, 0, as_is);
    let dir = tmp.path();

    sup.wait("on mains", Duration::from_secs(15), |s| {
        state(s) == "on_mains"
    });

    nut.set(OB).unwrap();
    let s = sup.wait("on battery", Duration::from_secs(15), |s| {
        state(s) == "on_battery"
    });
    assert_eq!(s["power"]["bulk_sync_paused"], true, "{s}");
    assert_eq!(s["power"]["reading"]["charge_percent"], 80.0);
    assert!(db.select1(), "MariaDB keeps serving on battery");

    nut.set(OB_LB).unwrap();
    let lb_written = Instant::now();
    let poweroff_record = dir.join("poweroff.called");
    let called = wait_for(Duration::from_secs(30), || {
        poweroff_record.exists().then_some(())
    });
    assert!(
        called.is_some(),
        "poweroff was not called; log:\n{}",
        sup.log_text()
    );
    let elapsed = lb_written.elapsed();
    assert!(
        elapsed < Duration::from_secs(15),
        "LB to poweroff took {elapsed:?}"
    );

    assert!(
        db.wait_exit(Duration::from_secs(5)),
        "mariadbd still running after poweroff was called"
    );
    let log = db.error_log_text();
    assert!(
        log.contains("Shutdown complete"),
        "MariaDB's error log:\n{log}"
    );
    for step in ["stop-sync.called", "stop-web.called"] {
        assert!(dir.join(step).exists(), "{step} missing");
    }
    assert!(!dir.join("start-web.called").exists());

    let s = sup.wait("all shutdown steps shown", Duration::from_secs(5), |s| {
        state(s) == "shutting_down"
            && s["power"]["shutdown_steps"]
                .as_array()
                .is_some_and(|a| a.len() == 5)
    });
    let steps: Vec<&str> = s["power"]["shutdown_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "stop sync",
            "stop web and PHP",
            "stop MariaDB",
            "flush filesystems",
            "power off"
        ],
        "{s}"
    );
    let history: Vec<&str> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["on mains", "on battery", "low battery", "shutting down"]
    );
    // The console (the kernel log on a card) shows each step, the database stopped before the power.
    let console = std::fs::read_to_string(dir.join("console")).unwrap();
    let at = |step: &str| {
        console
            .find(&format!("<4>kituo: shutdown: {step}: done"))
            .unwrap_or_else(|| panic!("no '{step}' on the console:\n{console}"))
    };
    assert!(at("stop MariaDB") < at("power off"), "{console}");
    // The transitions are on disk already: a restart after the power cut shows them.
    let stored = std::fs::read_to_string(dir.join("history.json")).unwrap();
    assert!(stored.contains("shutting down"), "{stored}");

    // A clean stop means no crash recovery on the next start.
    let before = log.len();
    db.restart().expect("MariaDB starts again");
    let restart_log = db.error_log_text()[before..].to_owned();
    assert!(
        !restart_log.to_lowercase().contains("crash recovery"),
        "{restart_log}"
    );
    assert!(
        restart_log.contains("ready for connections"),
        "{restart_log}"
    );
    eprintln!("LB -> poweroff: {elapsed:?}");
}

#[test]
fn power_back_before_the_point_of_no_return_cancels() {
    let (tmp, nut, db, sup) = start(OB, 6, as_is);
    let dir = tmp.path();
    sup.wait("on battery", Duration::from_secs(15), |s| {
        state(s) == "on_battery"
    });

    nut.set(OB_LB).unwrap();
    sup.wait("shutting down", Duration::from_secs(15), |s| {
        state(s) == "shutting_down"
    });
    nut.set(OL).unwrap();
    let s = sup.wait("restored", Duration::from_secs(15), |s| {
        state(s) == "restored" || state(s) == "on_mains"
    });
    // The sequence sees the cancel at its next check (the grace period polls every 100 ms).
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !dir.join("poweroff.called").exists(),
        "powered off despite mains: {s}"
    );
    assert!(
        !dir.join("stop-web.called").exists(),
        "the web was stopped during the grace period"
    );
    assert!(db.select1(), "MariaDB must still run");
    let s = sup.status();
    let steps = s["power"]["shutdown_steps"].to_string();
    assert!(steps.contains("cancelled"), "{steps}");
    let history: Vec<&str> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    let at = history
        .iter()
        .position(|h| *h == "low battery")
        .expect("low battery recorded");
    assert_eq!(
        &history[at..at + 3],
        ["low battery", "shutting down", "mains restored"],
        "{history:?}"
    );
    // Bulk sync stays paused until the battery is back to 50 % and mains has held.
    sup.wait(
        "on mains and bulk sync resumed",
        Duration::from_secs(15),
        |s| state(s) == "on_mains" && s["power"]["bulk_sync_paused"] == false,
    );
}

#[test]
fn cancel_after_web_stopped_starts_it_again() {
    // A web stop that takes 4 s leaves time for mains to come back before the database step.
    let (tmp, nut, db, sup) = start(OB, 0, |dir, _, cfg| {
        let slow = script(
            &dir.join("slow-stop-web"),
            &format!(
                "echo stop >> '{}'\nsleep 4",
                dir.join("stop-web.called").display()
            ),
        );
        cfg.replace(
            &format!("stop_web = {}", dir.join("stop-web").display()),
            &format!("stop_web = {}", slow.display()),
        )
    });
    let dir = tmp.path();
    sup.wait("on battery", Duration::from_secs(15), |s| {
        state(s) == "on_battery"
    });
    nut.set(OB_LB).unwrap();
    let seen = wait_for(Duration::from_secs(15), || {
        dir.join("stop-web.called").exists().then_some(())
    });
    assert!(seen.is_some(), "web stop never ran:\n{}", sup.log_text());
    nut.set(OL).unwrap();
    let started = wait_for(Duration::from_secs(15), || {
        dir.join("start-web.called").exists().then_some(())
    });
    assert!(
        started.is_some(),
        "web was not started again:\n{}",
        sup.log_text()
    );
    assert!(!dir.join("poweroff.called").exists());
    assert!(db.select1(), "MariaDB must still run");
}

#[test]
fn silent_ups_on_battery_counts_as_low_battery() {
    let (tmp, nut, mut db, sup) = start(OB, 0, as_is);
    let dir = tmp.path();
    sup.wait("on battery", Duration::from_secs(15), |s| {
        state(s) == "on_battery"
    });
    nut.stop_upsd();
    let s = sup.wait("source error shown", Duration::from_secs(10), |s| {
        s["power"]["sources"][0]["ok"] == false || state(s) == "shutting_down"
    });
    eprintln!("{}", s["power"]["sources"]);
    let called = wait_for(Duration::from_secs(20), || {
        dir.join("poweroff.called").exists().then_some(())
    });
    assert!(
        called.is_some(),
        "no poweroff after the dead-time; log:\n{}",
        sup.log_text()
    );
    assert!(db.wait_exit(Duration::from_secs(5)));
    assert!(db.error_log_text().contains("Shutdown complete"));
    let why = low_reason(&sup.status());
    assert!(why.contains("silent"), "{why}");
}

/// The reason recorded for the move to "low battery".
fn low_reason(s: &serde_json::Value) -> String {
    s["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "low battery")
        .map(|e| e["reason"].to_string())
        .unwrap_or_else(|| panic!("no low battery in the history: {}", s["history"]))
}

/// On battery, the UPS reads `low` for one second, then `clean` for two, over and over, as a sagging
/// battery under load does; the card must still shut down cleanly. Returns the status afterwards.
fn flicker_until_poweroff(low: &str, clean: &str) -> serde_json::Value {
    let (tmp, nut, mut db, sup) = start(OB, 0, as_is);
    let dir = tmp.path();
    sup.wait("on battery", Duration::from_secs(15), |s| {
        state(s) == "on_battery"
    });
    let stop = AtomicBool::new(false);
    let called = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                nut.set(low).unwrap();
                std::thread::sleep(Duration::from_secs(1));
                nut.set(clean).unwrap();
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let called = wait_for(Duration::from_secs(40), || {
            dir.join("poweroff.called").exists().then_some(())
        });
        stop.store(true, Ordering::SeqCst);
        called
    });
    assert!(
        called.is_some(),
        "a flickering low battery never shut the card down; log:\n{}",
        sup.log_text()
    );
    assert!(db.wait_exit(Duration::from_secs(5)));
    assert!(db.error_log_text().contains("Shutdown complete"));
    sup.status()
}

#[test]
fn a_low_battery_flag_that_comes_and_goes_still_shuts_down() {
    let s = flicker_until_poweroff(OB_LB, OB);
    let why = low_reason(&s);
    assert!(why.contains("(LB)"), "{why}");
}

#[test]
fn a_charge_bouncing_around_the_threshold_still_shuts_down() {
    let s = flicker_until_poweroff(OB_19, OB_21);
    let why = low_reason(&s);
    assert!(why.contains("charge 19%"), "{why}");
}

#[test]
fn mains_back_past_the_point_of_no_return_still_finishes_the_shutdown() {
    // A slow MariaDB stop, so that mains comes back while it runs.
    let (tmp, nut, mut db, sup) = start(OB, 0, |dir, db, cfg| {
        let stop = db.stop_command();
        let slow = script(&dir.join("slow-stop"), &format!("sleep 6\nexec {stop}"));
        cfg.replace(&stop, &slow.display().to_string())
    });
    let dir = tmp.path();
    sup.wait("on battery", Duration::from_secs(15), |s| {
        state(s) == "on_battery"
    });
    nut.set(OB_LB).unwrap();
    sup.wait("web stopped", Duration::from_secs(20), |s| {
        s["power"]["shutdown_steps"]
            .to_string()
            .contains("stop web and PHP")
    });
    nut.set(OL).unwrap();
    // Mains is seen while MariaDB stops, and changes nothing: the card stays shutting down.
    let s = sup.wait("mains seen", Duration::from_secs(10), |s| {
        s["power"]["reading"]["on_mains"] == true
    });
    assert!(
        !dir.join("poweroff.called").exists(),
        "mains was seen only after the stop; make the stop slower"
    );
    assert_eq!(state(&s), "shutting_down", "{s}");
    let called = wait_for(Duration::from_secs(30), || {
        dir.join("poweroff.called").exists().then_some(())
    });
    assert!(called.is_some(), "no poweroff; log:\n{}", sup.log_text());
    assert_eq!(state(&sup.status()), "shutting_down");
    assert!(!dir.join("start-web.called").exists(), "web started again");
    assert!(db.wait_exit(Duration::from_secs(5)));
    assert!(db.error_log_text().contains("Shutdown complete"));
}
