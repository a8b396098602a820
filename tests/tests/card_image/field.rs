//! The card in the field: a USB UPS through the card's own NUT (dummy-ups reading a file on the boot
//! partition stands in for the UPS: the driver is the only part that differs), the technician's login
//! and actions through nginx as a phone would use them, a local override that outlives reboots, and a
//! power cut that ends in a clean shutdown.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kituo_tests::*;
use serde_json::Value;

pub const TECHNICIAN_PASSWORD: &str = "field-technician-7";
/// The file dummy-ups reads, on the boot partition so the test can rewrite it while the card is off.
pub const UPS_FILE: &str = "ups.dev";
pub const ON_MAINS: &str = "ups.status: OL\nbattery.charge: 100\nbattery.runtime: 3600\n";
const ON_BATTERY: &str = "ups.status: OB DISCHRG\nbattery.charge: 80\nbattery.runtime: 1500\n";
const LOW_BATTERY: &str = "ups.status: OB DISCHRG LB\nbattery.charge: 30\nbattery.runtime: 400\n";

/// Adds the UPS and the technician password to a center.ini, as central IT would for this center.
pub fn add_ups_and_password(center_ini: &Path) {
    let hash = appliance::status::auth::hash_password(TECHNICIAN_PASSWORD).unwrap();
    let mut text = std::fs::read_to_string(center_ini).unwrap();
    text.push_str(&format!(
        "[status]\ntechnician_password_hash = {hash}\n\
         [power]\nsources = nut\n\
         [nut]\ndriver = dummy-ups\nport = /boot/firmware/{UPS_FILE}\n"
    ));
    std::fs::write(center_ini, text).unwrap();
}

/// Waits until the status API shows the power state `want` read from the card's NUT.
pub fn check_ups(vm: &Vm, want: &str) -> Value {
    let started = Instant::now();
    loop {
        let status: Value = vm
            .http_get("/api/status")
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        let power = &status["power"];
        if power["state"] == want && power["sources"][0]["ok"] == true {
            assert_eq!(power["configured"], true, "{power}");
            assert!(
                power["sources"][0]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("nut")),
                "{power}"
            );
            return status;
        }
        // The driver starts with upsd; NUT retries a driver every 15 s.
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the UPS is not shown {want}: {power}\n{}",
            vm.ssh("systemctl status 'nut-*' --no-pager -l | tail -30; cat /etc/nut/ups.conf")
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The technician logs in through nginx (the port a phone uses) and restarts PHP from the page.
pub fn check_technician_action(vm: &Vm, work: &Path) {
    let jar = work.join("cookies.txt");
    let _ = std::fs::remove_file(&jar);
    let origin = format!("http://127.0.0.1:{}", vm.http);
    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-c"])
            .arg(&jar)
            .arg("-b")
            .arg(&jar)
            .args(["-H", &format!("Origin: {origin}")])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wrong = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{redirect_url}",
        "--data-urlencode",
        "password=not-the-password",
        &format!("{origin}/status/login"),
    ]);
    assert!(wrong.ends_with("/status?login=failed"), "{wrong}");
    curl(&[
        "--data-urlencode",
        &format!("password={TECHNICIAN_PASSWORD}"),
        &format!("{origin}/status/login"),
    ]);
    let page = curl(&[&format!("{origin}/status")]);
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no action form after logging in:\n{page}"))
        .to_owned();
    let unit = "php8.4-fpm.service";
    let invocation = || {
        vm.ssh(&format!("systemctl show -P InvocationID {unit}"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let before = invocation();
    let answer = curl(&[
        "-w",
        "%{http_code} %{redirect_url}",
        "--data-urlencode",
        &format!("csrf={csrf}"),
        "--data-urlencode",
        &format!("action=restart:{unit}"),
        &format!("{origin}/status/action"),
    ]);
    assert!(
        answer.starts_with("303 ") && answer.ends_with("/status"),
        "{answer}"
    );
    let started = Instant::now();
    while invocation() == before || invocation().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the page's restart did not restart {unit}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Without the session's token the same form is refused.
    let refused = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "--data-urlencode",
        "csrf=forged",
        "--data-urlencode",
        &format!("action=restart:{unit}"),
        &format!("{origin}/status/action"),
    ]);
    assert_eq!(refused, "403");
}

/// The technician lowers the shutdown threshold on this card only; center.ini's UPS stays.
pub fn set_override(vm: &Vm) {
    vm.ssh("appliance config set power.low_charge_percent 35")
        .unwrap();
    check_settings(vm);
}

/// The override and the center's settings, each from where it was set.
pub fn check_settings(vm: &Vm) {
    let show = vm
        .ssh("appliance config show; grep -E '^(low_charge_percent|driver) ' /etc/kituo/appliance.ini")
        .unwrap();
    for expected in [
        "low_charge_percent = 35    ; local\n",
        "driver = dummy-ups    ; center.ini\n",
        "sources = nut    ; center.ini\n",
        "low_charge_percent = 35\n",
        "driver = dummy-ups\n",
    ] {
        assert!(show.contains(expected), "{expected:?} missing:\n{show}");
    }
}

/// Mains fails, then the battery runs low: the card shuts itself down, MariaDB first. Returns the
/// console of that boot.
pub fn cut_power(mut vm: Vm) -> String {
    let write = |text: &str| {
        vm.ssh(&format!("printf '{text}' > /boot/firmware/{UPS_FILE}"))
            .unwrap();
    };
    write(ON_BATTERY);
    check_ups(&vm, "on_battery");
    write(LOW_BATTERY);
    vm.wait_poweroff(Duration::from_secs(180))
        .expect("the card powers itself off on low battery");
    let console = std::fs::read_to_string(&vm.console).unwrap();
    let at = |line: &str| {
        console
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} is not on the console:\n{console}"))
    };
    let database = at("kituo: shutdown: stop MariaDB: done");
    assert!(at("kituo: shutdown: stop web and PHP: done") < database);
    assert!(database < at("reboot: Power down"), "{console}");
    console
}

/// The card boots again on mains with its database as it was: no crash recovery, the same site, the
/// cut in its power history.
pub fn check_after_the_cut(vm: &Vm) {
    let mariadb = vm.ssh("journalctl -b -o cat -u mariadb.service").unwrap();
    assert!(
        !mariadb.to_lowercase().contains("crash recovery"),
        "{mariadb}"
    );
    let status = check_ups(vm, "on_mains");
    let history: Vec<&str> = status["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["to"].as_str()).collect())
        .unwrap_or_default();
    let cut = history
        .windows(3)
        .any(|w| w == ["on battery", "low battery", "shutting down"]);
    assert!(cut, "{history:?}");
    check_settings(vm);
}
