//! The product test: build the qemu-arm64 card image with the real builder, check its outputs with the
//! real tools (bmaptool, zstd), flash it with `image-builder flash` onto a card file together with the
//! center.ini of another center (one image serves many centers), boot it under QEMU (TCG) and check from
//! outside what a center relies on: that first boot applied that center.ini, the web stack, the database
//! settings the sync engine needs, the supervisor, first boot, SSH, and the Wi-Fi access point on a
//! virtual radio, and Moodle: the stand-in release (tests/fixtures/moodle-standin, not Moodle) built in
//! with `--moodle`, installed into MariaDB on first boot, its cron on a timer. A second boot changes
//! nothing. The card's UPS (NUT, named in center.ini) is watched, the technician's page works, a local
//! override outlives reboots, and a power cut ends in a clean shutdown and a third boot with its data.

#[path = "card_image/field.rs"]
mod field;

use std::process::Command;
use std::time::Duration;

use kituo_tests::*;
use serde_json::Value;

/// The center the image is built for.
const SSID: &str = "Kituo-Test";
const PASSPHRASE: &str = "test-passphrase-42";

/// The center whose center.ini the card gets when it is flashed.
const CARD: CardCenter = MWANZA;

#[test]
fn qemu_arm64_image_builds_boots_and_serves() {
    ensure_host();
    let work = artifacts("card-image");
    let (key, public_key) = ssh_key(&work);
    let center = work.join("center.ini");
    std::fs::write(
        &center,
        format!(
            "[center]\nid = testcenter\nname = Test Center\ntimezone = Africa/Dar_es_Salaam\n\
             [wifi]\nssid = {SSID}\npassphrase = {PASSPHRASE}\ncountry = TZ\nchannel = 6\n\
             [sync]\nhub_url = https://hub.example/kituo\nsite_id = 5\nmoodle = install\n\
             [access]\nssh_authorized_keys = {public_key}\n"
        ),
    )
    .unwrap();

    let out_dir = work.join("out");
    let (_, moodle_release) = moodle_standin_release(&work);
    run(Command::new(image_builder())
        .args(["build", "--board", "qemu-arm64", "--center"])
        .arg(&center)
        .arg("--moodle")
        .arg(&moodle_release)
        .arg("--out")
        .arg(&out_dir)
        .arg("--state")
        .arg(work.join("state"))
        .arg("--cache")
        .arg(cache_dir()));
    let name = "kituo-qemu-arm64-testcenter";
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join(format!("{name}.manifest.json"))).unwrap(),
    )
    .unwrap();

    check_outputs(&out_dir, name, &manifest);

    // A card larger than the image, so first boot has room to grow /data and make root slot B, flashed
    // from the compressed image with another center's config on its boot partition.
    let card_center = work.join("card-center.ini");
    CARD.write_ini(&card_center, &public_key).unwrap();
    field::add_ups_and_password(&card_center);
    let disk = work.join("card.img");
    new_card(&disk).unwrap();
    flash_card(
        &out_dir.join(format!("{name}.img.zst")),
        &disk,
        &card_center,
    )
    .unwrap();
    put_boot_file(&disk, field::UPS_FILE, field::ON_MAINS).unwrap();

    let mut vm = Vm::boot(&disk, &key, &work).expect("QEMU starts");
    let status = vm
        .wait_http("/api/status", Duration::from_secs(900))
        .expect("the status endpoint answers");
    let status: Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(
        status["version"], manifest["appliance"]["version"],
        "{status}"
    );
    assert_eq!(status["build"]["id"], manifest["build_id"], "{status}");
    assert_eq!(status["build"]["built_for"], "testcenter", "{status}");
    check_center_applied(&vm, &status);

    check_web_and_database(&mut vm);
    let site = check_moodle(&vm);
    check_first_boot_and_services(&vm);
    check_ssh_refuses_passwords(&vm);
    check_access_point(&vm);
    field::check_ups(&vm, "on_mains");
    field::check_technician_action(&vm, &work);
    field::set_override(&vm);
    vm.shutdown().expect("clean power-off");

    // The second boot finds everything done: no first-boot step changes anything.
    let mut vm = Vm::boot(&disk, &key, &work).expect("QEMU starts again");
    let status = vm
        .wait_http("/api/status", Duration::from_secs(900))
        .expect("the status endpoint answers after a reboot");
    let status: Value = serde_json::from_str(&status).expect("status is JSON");
    check_center_applied(&vm, &status);
    let install = vm
        .ssh("journalctl -b -o cat -u kituo-moodle-install.service")
        .unwrap();
    assert!(install.contains("nothing to do"), "{install}");
    assert_eq!(
        check_moodle(&vm),
        site,
        "the second boot installed Moodle again"
    );
    let again = vm
        .ssh("systemctl is-active kituo-firstboot.service; wc -c < /run/kituo-firstboot.actions")
        .unwrap();
    assert_eq!(
        again.split_whitespace().collect::<Vec<_>>(),
        ["active", "0"],
        "the second boot changed something:\n{again}\n{}",
        vm.ssh("cat /run/kituo-firstboot.actions")
            .unwrap_or_default()
    );
    field::check_settings(&vm);
    field::check_ups(&vm, "on_mains");
    field::cut_power(vm);

    // The power is back (the UPS says so) and the card is switched on again.
    put_boot_file(&disk, field::UPS_FILE, field::ON_MAINS).unwrap();
    let mut vm = Vm::boot(&disk, &key, &work).expect("QEMU starts after the cut");
    vm.wait_http("/api/status", Duration::from_secs(900))
        .expect("the status endpoint answers after the cut");
    assert_eq!(check_moodle(&vm), site, "Moodle's data after the cut");
    field::check_after_the_cut(&vm);
    vm.shutdown().expect("clean power-off after the cut");
}

/// First boot applied the card's center.ini: who the card is, its hub and its sync secret.
fn check_center_applied(vm: &Vm, status: &Value) {
    assert_eq!(status["center_id"], CARD.id, "{status}");
    assert_eq!(status["site_id"], CARD.site_id, "{status}");
    let applied = &status["center_config"];
    assert_eq!(applied["center_id"], CARD.id, "{status}");
    assert_eq!(applied["error"], Value::Null, "{status}");
    let files = vm
        .ssh(
            "grep '^hub_url' /etc/kituo/appliance.ini; cat /etc/kituo/secrets/sync-secret; echo; \
             grep -E '^(ssid|channel)=' /etc/hostapd/kituo.conf; readlink /etc/localtime",
        )
        .unwrap();
    for expected in [
        format!("hub_url = {}", CARD.hub_url),
        CARD.secret.to_owned(),
        format!("ssid={}", CARD.ssid),
        format!("channel={}", CARD.channel),
        CARD.timezone.to_owned(),
    ] {
        assert!(files.contains(&expected), "{expected} missing:\n{files}");
    }
}

/// The image's companions: checksum, bmap (checked by bmaptool itself), compressed image, manifest.
fn check_outputs(out: &std::path::Path, name: &str, manifest: &Value) {
    let image = out.join(format!("{name}.img"));
    let sha = sha256(&image);
    let stated = std::fs::read_to_string(out.join(format!("{name}.img.sha256"))).unwrap();
    assert_eq!(stated, format!("{sha}  {name}.img\n"));
    assert_eq!(manifest["image"]["sha256"], sha.as_str());

    let copy = out.join("bmap-copy.img");
    run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(out.join(format!("{name}.bmap")))
        .arg(&image)
        .arg(&copy));
    assert_eq!(
        sha256(&copy),
        sha,
        "bmaptool's copy of the mapped blocks is the image"
    );
    std::fs::remove_file(&copy).unwrap();

    let unpacked = out.join("unzstd.img");
    run(Command::new("zstd")
        .args(["-q", "-d", "-o"])
        .arg(&unpacked)
        .arg(out.join(format!("{name}.img.zst"))));
    assert_eq!(sha256(&unpacked), sha);
    std::fs::remove_file(&unpacked).unwrap();

    let packages = manifest["packages"].as_array().expect("package list");
    let names: Vec<_> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for wanted in [
        "nginx",
        "mariadb-server",
        "php8.4-fpm",
        "hostapd",
        "dnsmasq",
        "nftables",
        "openssh-server",
        "linux-image-arm64",
    ] {
        assert!(names.contains(&wanted), "manifest lacks {wanted}");
    }
    assert!(packages
        .iter()
        .all(|p| p["sha256"].as_str().is_some_and(|s| s.len() == 64) && p["version"].is_string()));
    assert_eq!(
        manifest["partition_table"]["partitions"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        manifest["appliance"]["sha256"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(
        manifest["center_config_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(manifest["moodle"]["version"], "4.5.0-standin");
    assert_eq!(
        manifest["moodle"]["sha256"].as_str().map(str::len),
        Some(64)
    );
}

/// nginx -> PHP-FPM -> MariaDB over its socket, with the settings the sync engine needs.
fn check_web_and_database(vm: &mut Vm) {
    // PHP-FPM starts after the database users exist and Moodle's install, which on first boot is a while
    // after the supervisor.
    let health = vm
        .wait_http("/kituo-health.php", Duration::from_secs(600))
        .expect("health page");
    // Moodle's front page (the stand-in's prints the site name from the database: the install used the
    // card's center.ini).
    let page = vm.http_get("/").expect("front page");
    assert!(page.contains(&format!("<h1>{}</h1>", CARD.name)), "{page}");
    let health: Value = serde_json::from_str(&health).expect("JSON");
    let db = &health["db"];
    assert_eq!(db["ok"], true, "{health}");
    assert_eq!(db["log_bin"], "ON", "{health}");
    assert_eq!(db["binlog_format"], "ROW", "{health}");
    assert_eq!(db["binlog_row_image"], "FULL", "{health}");
    assert_eq!(db["auto_increment_increment"], 64, "{health}");
    assert_eq!(db["auto_increment_offset"], CARD.site_id, "{health}");
    assert_eq!(db["server_id"], CARD.site_id, "{health}");
    assert_eq!(db["skip_networking"], "ON", "{health}");
    // The supervisor runs the sync agent: it waits for Moodle's install, then with Moodle's schema in
    // place gets as far as the hub, which does not exist (hub.example), so it reports a connection
    // error, not a missing schema.
    let reached = format!("cannot reach the hub at {}", CARD.hub_url);
    let mut status = Value::Null;
    for _ in 0..60 {
        status =
            serde_json::from_str(&vm.http_get("/api/status").expect("status API")).expect("JSON");
        if status["sync"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&reached))
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let sync_error = status["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(
        sync_error.contains(&reached) && !sync_error.contains("install.xml"),
        "{status}"
    );
    let missing: Vec<_> = health["extensions"]
        .as_object()
        .expect("extensions")
        .iter()
        .filter(|(_, loaded)| **loaded != Value::Bool(true))
        .map(|(name, _)| name.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "PHP extensions Moodle needs are missing: {missing:?}"
    );
}

/// Moodle on the card: installed by first boot, its code read-only for the web server, config.php
/// private to it, cron running on its timer. Returns the site's identifier (made by the install).
fn check_moodle(vm: &Vm) -> String {
    let out = vm
        .ssh(
            r#"set -eu
q() { mariadb --protocol=socket -N -B -e "SELECT value FROM moodle.mdl_config WHERE name = '$1'"; }
echo "version=$(q version)"
echo "site=$(q siteidentifier)"
test -s /data/kituo/moodle-installed && echo installed-recorded
test ! -e /data/kituo/moodle-install.started && echo no-cut-install
echo "install=$(systemctl is-active kituo-moodle-install.service)"
echo "timer=$(systemctl is-active kituo-moodle-cron.timer)"
# The timer fires every minute: wait for a run.
for i in $(seq 150); do [ -n "$(q lastcron)" ] && break; sleep 1; done
echo "lastcron=$(q lastcron)"
stat -c 'config=%a %U:%G' /var/www/moodle/config.php
test ! -e /var/www/moodle/index.html && echo no-placeholder
# Nothing under the web root is writable by www-data: not owned by it, not group/other-writable.
echo "writable=$(find /var/www/moodle \( ! -user root -o -perm /022 \) -print | head -5 | tr '
' ' ')"
runuser -u www-data -- sh -c 'touch /var/www/moodle/x 2>/dev/null && echo www-data-wrote || echo www-data-cannot-write'
"#,
        )
        .unwrap();
    for expected in [
        "version=2024100700
",
        "installed-recorded
",
        "no-cut-install
",
        "install=active
",
        "timer=active
",
        "config=640 root:www-data
",
        "no-placeholder
",
        "writable=
",
        "www-data-cannot-write
",
    ] {
        assert!(
            out.contains(expected),
            "{expected:?} missing:
{out}"
        );
    }
    let lastcron = out
        .lines()
        .find_map(|l| l.strip_prefix("lastcron="))
        .unwrap_or_default();
    assert!(
        lastcron.parse::<u64>().is_ok(),
        "cron did not run:
{out}"
    );
    let page = vm.http_get("/index.php").expect("Moodle's index.php");
    assert!(page.contains(&format!("<h1>{}</h1>", CARD.name)), "{page}");
    let site = out
        .lines()
        .find_map(|l| l.strip_prefix("site="))
        .unwrap_or_default();
    assert_eq!(site.len(), 32, "{out}");
    site.to_owned()
}

fn check_first_boot_and_services(vm: &Vm) {
    // /data grew into the card and root slot B exists at its end, as large as slot A.
    let sizes = vm
        .ssh("lsblk -b -n -o NAME,SIZE /dev/vda; df -B1 --output=size /data | tail -1")
        .unwrap();
    let size_of = |part: &str| -> u64 {
        sizes
            .lines()
            .find(|l| l.contains(part))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        size_of("vda3") > 3 << 30,
        "data partition not grown:\n{sizes}"
    );
    assert_eq!(
        size_of("vda4"),
        size_of("vda2"),
        "root slot B must match slot A:\n{sizes}"
    );
    let data_fs: u64 = sizes
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        data_fs > 3 << 30,
        "the /data file system was not grown:\n{sizes}"
    );
    vm.ssh("test -s /data/kituo/firstboot.done && test -d /data/mysql/mysql && test -s /etc/ssh/ssh_host_ed25519_key")
        .unwrap();

    // The sync engine's account can do what the agent does (binlog, skip_replication, its bookkeeping
    // database), with the card's own password, and its secrets are root's only.
    let engine = vm
        .ssh(
            "stat -c '%a %U %n' /etc/kituo/secrets /etc/kituo/secrets/*; \
             mariadb --protocol=socket -u kituo -p\"$(cat /etc/kituo/secrets/kituo-db-password)\" -N -B -e \
             'SET SESSION skip_replication = 1; CREATE DATABASE IF NOT EXISTS kituo_sync; SHOW MASTER STATUS' \
             && echo engine-ok",
        )
        .unwrap();
    assert!(engine.contains("engine-ok"), "{engine}");
    assert!(engine.contains("700 root /etc/kituo/secrets\n"), "{engine}");
    assert!(
        engine.contains("600 root /etc/kituo/secrets/sync-secret"),
        "{engine}"
    );
    assert!(
        engine.contains("600 root /etc/kituo/secrets/kituo-db-password"),
        "{engine}"
    );

    let failed = vm
        .ssh("systemctl list-units --state=failed --no-legend --plain")
        .unwrap();
    assert!(failed.trim().is_empty(), "failed units:\n{failed}");
    // MariaDB listens on its socket only; nothing but ssh, http, DNS and DHCP listens on the network.
    let listening = vm.ssh("ss -H -ltnup").unwrap();
    assert!(
        !listening.contains("mariadb") && !listening.contains(":3306"),
        "{listening}"
    );
    for line in listening.lines() {
        let local = line.split_whitespace().nth(4).unwrap_or_default();
        let port = local.rsplit(':').next().unwrap_or_default();
        let loopback = local.starts_with("127.") || local.starts_with("[::1]");
        assert!(
            // 68: the uplink's DHCP client; 53 and 67 answer on the access point only (nftables).
            loopback || ["22", "80", "53", "67", "68"].contains(&port),
            "unexpected listener: {line}"
        );
    }
}

fn check_ssh_refuses_passwords(vm: &Vm) {
    let (ok, stderr) = vm.ssh_password_attempt().unwrap();
    assert!(!ok, "a password login must not succeed");
    assert!(
        stderr.contains("Permission denied (publickey)"),
        "the server must offer public keys only: {stderr}"
    );
}

/// hostapd on one mac80211_hwsim radio; a client on the other, in its own network namespace, joins with
/// the center's passphrase, gets a DHCP lease from dnsmasq, resolves the appliance's name and fetches the
/// page over that Wi-Fi link.
fn check_access_point(vm: &Vm) {
    let (ssid, passphrase) = (CARD.ssid, CARD.passphrase);
    let script = format!(
        r#"set -eu
modprobe mac80211_hwsim radios=2
for i in $(seq 90); do [ -S /run/hostapd/wlan0 ] && break; sleep 1; done
hostapd_cli -p /run/hostapd -i wlan0 status | grep '^state='
ip netns add sta
iw phy "$(basename "$(readlink -f /sys/class/net/wlan1/phy80211)")" set netns name sta
ip netns exec sta ip link set wlan1 up
printf 'network={{\n ssid="{ssid}"\n psk="{passphrase}"\n key_mgmt=WPA-PSK\n}}\n' > /run/sta.conf
ip netns exec sta wpa_supplicant -B -i wlan1 -c /run/sta.conf -P /run/sta.pid >/dev/null
for i in $(seq 60); do ip netns exec sta iw dev wlan1 link | grep -q Connected && break; sleep 1; done
ip netns exec sta iw dev wlan1 link | grep -E 'Connected|SSID'
# /run is noexec, so no lease script: read the address udhcpc was offered and configure it.
lease=$(ip netns exec sta busybox udhcpc -i wlan1 -n -q -f -t 20 -s /bin/true 2>&1 | sed -n 's/.*lease of \([0-9.]*\) obtained from.*/\1/p')
echo "client address: $lease"
ip netns exec sta ip addr add "$lease/24" dev wlan1
ip netns exec sta busybox nslookup kituo.kituo.lan 10.42.0.1 | grep -A1 '^Name:'
ip netns exec sta busybox wget -q -O - http://10.42.0.1/
"#
    );
    let out = vm.ssh(&script).unwrap_or_else(|e| {
        let why = vm
            .ssh(
                "journalctl -b -o cat -u kituo-supervisor.service | grep 'health:' | tail -5; \
                 tail -5 /var/log/nginx/error.log; journalctl -b -o cat -u php8.4-fpm.service | tail -5",
            )
            .unwrap_or_default();
        panic!("access point check failed: {e}\nthe card's logs:\n{why}")
    });
    assert!(out.contains("state=ENABLED"), "hostapd is not up:\n{out}");
    assert!(
        out.contains(&format!("SSID: {ssid}")),
        "client did not associate:\n{out}"
    );
    assert!(
        out.contains("client address: 10.42.0."),
        "no DHCP lease on the AP subnet:\n{out}"
    );
    assert!(
        out.contains("kituo.kituo.lan\nAddress: 10.42.0.1"),
        "the appliance's name did not resolve:\n{out}"
    );
    assert!(
        out.contains(CARD.name),
        "the page did not load over Wi-Fi:\n{out}"
    );
}
