//! `appliance center apply` against a temporary root holding what the image builder puts in an image:
//! the real overlay templates (installed and rendered for the built-in example center with the same
//! library code the builder uses), the image half of the context, and the image's secrets on /data.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use appliance::center::Center;
use appliance::commission::{apply, context, render, secrets};
use serde_json::json;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const HOSTAPD: &str = "etc/hostapd/kituo.conf";
const MARIADB: &str = "etc/mysql/mariadb.conf.d/60-kituo.cnf";
const APPLIANCE_INI: &str = "etc/kituo/appliance.ini";
const SYNC_SECRET: &str = "etc/kituo/secrets/sync-secret";

/// A center for another site, valid, with its own SSID, site number, hub and time zone.
const DSM: &str = "[center]\nid = dsm\nname = Dar Center\ntimezone = Europe/Paris\n\
                   [wifi]\nssid = Kituo-Dar\npassphrase = dar-passphrase\n\
                   [sync]\nhub_url = https://hub.dsm.example\nsite_id = 7\n";

/// What the builder makes for the example center, as a root filesystem under a temporary folder.
fn image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    render::install_templates(&[Path::new(REPO).join("overlays/common/rootfs")], root).unwrap();
    let image_half = json!({
        "board": { "name": "qemu-arm64", "description": "QEMU", "arch": "arm64", "family": "qemu",
                   "ram_mib": "1024", "console": "ttyAMA0" },
        "boot": { "cmdline": "console=ttyAMA0", "dtb": "" },
        "build": { "version": "0.1.0", "id": "0123456789ab", "source_date_epoch": "1700000000" },
        "moodle": { "version": "" },
        "disk": { "id": "0x12345678", "boot_partuuid": "12345678-01", "root_a_partuuid": "12345678-02",
                  "data_partuuid": "12345678-03", "root_b_partuuid": "12345678-04", "root_b_mib": "1024" },
    });
    std::fs::write(root.join(render::IMAGE_CONTEXT), image_half.to_string()).unwrap();
    let center = Center::load(&Path::new(REPO).join("board-configs/example-center.ini")).unwrap();
    let mut card = secrets::File {
        center: Some(center.id.clone()),
        ..Default::default()
    };
    secrets::fill_missing(&mut card.values);
    std::fs::create_dir_all(root.join("data/kituo")).unwrap();
    card.save(&root.join(apply::SECRETS_FILE), "image").unwrap();
    let ctx = context::merge(context::center_half(&center, &card.values), image_half);
    let env = render::environment();
    for (template, rel) in render::templates(&root.join(render::TEMPLATES)).unwrap() {
        let dest = root.join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, render::render(&env, &template, &ctx).unwrap()).unwrap();
    }
    // customize.sh's modes for files holding secrets.
    for secret in [HOSTAPD, SYNC_SECRET] {
        std::fs::set_permissions(root.join(secret), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    for zone in ["Africa/Dar_es_Salaam", "Europe/Paris"] {
        let file = root.join("usr/share/zoneinfo").join(zone);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, zone).unwrap();
    }
    std::os::unix::fs::symlink(
        "/usr/share/zoneinfo/Africa/Dar_es_Salaam",
        root.join("etc/localtime"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("boot/firmware")).unwrap();
    dir
}

fn apply(root: &Path) -> Output {
    let out = Command::new(kituo_tests::appliance_binary())
        .args(["center", "apply", "--root"])
        .arg(root)
        .output()
        .expect("run appliance");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file and link under `root`: content or target, mode and modification time.
type Snapshot = BTreeMap<PathBuf, (Vec<u8>, u32, i64, i64)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut all = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            let key = path.strip_prefix(root).unwrap().to_path_buf();
            all.insert(key, (bytes, meta.mode(), meta.mtime(), meta.mtime_nsec()));
        }
    }
    all
}

/// Asserts that nothing under the root changed but the `expected` files; names the files that did.
fn assert_unchanged(root: &Path, before: &Snapshot, expected: &[&str]) {
    let after = snapshot(root);
    let keys: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
    let changed: Vec<_> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .filter(|k| !expected.iter().any(|e| Path::new(e) == k.as_path()))
        .collect();
    assert!(changed.is_empty(), "changed: {changed:?}");
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

fn record(root: &Path) -> apply::Record {
    apply::Record::load(&root.join(apply::RECORD_FILE)).expect("center.json")
}

#[test]
fn no_center_file_changes_nothing() {
    let dir = image();
    let before = snapshot(dir.path());
    let out = apply(dir.path());
    assert!(out.stdout.is_empty());
    assert_unchanged(dir.path(), &before, &[]);
}

#[test]
fn valid_center_is_applied_once() {
    let dir = image();
    let root = dir.path();
    let image_secrets = secrets::File::load(&root.join(apply::SECRETS_FILE)).unwrap();
    assert!(read(root, HOSTAPD).contains("ssid=Kituo-Example\n"));
    std::fs::write(root.join(apply::CENTER_FILE), DSM).unwrap();

    let out = apply(root);
    let changed = String::from_utf8(out.stdout).unwrap();
    for file in [HOSTAPD, MARIADB, APPLIANCE_INI, "etc/localtime"] {
        assert!(
            changed.contains(&format!("/{file}\n")),
            "{file} not in {changed}"
        );
    }
    let hostapd = read(root, HOSTAPD);
    assert!(hostapd.contains("ssid=Kituo-Dar\n"), "{hostapd}");
    assert!(
        hostapd.contains("wpa_passphrase=dar-passphrase\n"),
        "{hostapd}"
    );
    let mariadb = read(root, MARIADB);
    assert!(
        mariadb.contains("server_id               = 7\n"),
        "{mariadb}"
    );
    assert!(
        mariadb.contains("auto_increment_offset   = 7\n"),
        "{mariadb}"
    );
    let ini = read(root, APPLIANCE_INI);
    assert!(
        ini.contains("site_id = 7\n") && ini.contains("center_id = dsm\n"),
        "{ini}"
    );
    assert!(ini.contains("hub_url = https://hub.dsm.example\n"), "{ini}");
    assert_eq!(read(root, "etc/timezone"), "Europe/Paris\n");
    // No UPS named: an empty ups.conf, so NUT's units do not start (ConditionFileNotEmpty).
    assert_eq!(read(root, "etc/nut/ups.conf"), "");
    assert_eq!(
        read(root, "etc/nut/nut.conf").lines().last(),
        Some("MODE=none")
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Paris")
    );
    // The secret files keep the mode customize.sh gave them.
    for secret in [HOSTAPD, SYNC_SECRET] {
        let mode = std::fs::metadata(root.join(secret)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }

    // Another center than the image's: its own fresh secrets, never the image's, kept private.
    let card = secrets::File::load(&root.join(apply::SECRETS_FILE)).unwrap();
    assert_eq!(card.center.as_deref(), Some("dsm"));
    for (name, len) in secrets::NAMES {
        assert_eq!(card.values[*name].len(), *len, "{name}");
        assert_ne!(card.values[*name], image_secrets.values[*name], "{name}");
    }
    let mode = std::fs::metadata(root.join(apply::SECRETS_FILE))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        read(root, SYNC_SECRET),
        format!("{}\n", card.values["sync_secret"])
    );
    assert_eq!(
        read(root, "etc/kituo/secrets/kituo-db-password"),
        format!("{}\n", card.values["kituo_db_password"])
    );
    let first = record(root);
    assert_eq!(first.center_id.as_deref(), Some("dsm"));
    assert_eq!(first.error, None);
    assert!(first.changed.contains(&format!("/{HOSTAPD}")), "{first:?}");

    // Second boot with the same file: same bytes, same times, nothing printed.
    let before = snapshot(root);
    let again = apply(root);
    assert!(
        again.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_unchanged(root, &before, &[]);
}

#[test]
fn invalid_center_changes_nothing_and_is_recorded() {
    let dir = image();
    let root = dir.path();
    // Line 10: a site number above auto_increment_increment - 1.
    let bad = DSM.replace("site_id = 7", "site_id = 99");
    assert_eq!(bad.lines().nth(9), Some("site_id = 99"));
    std::fs::write(root.join(apply::CENTER_FILE), &bad).unwrap();
    let before = snapshot(root);
    let out = apply(root);
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR"), "{stderr}");
    let rec = record(root);
    let error = rec.error.clone().unwrap_or_default();
    assert!(error.contains("center.ini:10:"), "{error}");
    assert!(error.contains("'site_id'"), "{error}");
    assert_eq!(rec.center_id, None);
    assert!(!before.contains_key(Path::new(apply::RECORD_FILE)));
    assert_unchanged(root, &before, &[apply::RECORD_FILE]);

    // Not INI at all, and an unknown time zone: also refused, naming the line.
    std::fs::write(
        root.join(apply::CENTER_FILE),
        "[center]\nthis is not a key\n",
    )
    .unwrap();
    apply(root);
    let error = record(root).error.unwrap_or_default();
    assert!(error.contains("center.ini:2"), "{error}");
    let unknown_zone = DSM.replace("Europe/Paris", "Mars/Olympus");
    std::fs::write(root.join(apply::CENTER_FILE), unknown_zone).unwrap();
    apply(root);
    let error = record(root).error.unwrap_or_default();
    assert!(
        error.contains("center.ini:4:") && error.contains("'timezone'"),
        "{error}"
    );
    assert_unchanged(root, &before, &[apply::RECORD_FILE, apply::CENTER_FILE]);

    // Removed: nothing applied, and the page no longer shows an error about a file that is gone.
    std::fs::remove_file(root.join(apply::CENTER_FILE)).unwrap();
    apply(root);
    assert_eq!(record(root).error, None);
    assert_unchanged(root, &before, &[apply::RECORD_FILE, apply::CENTER_FILE]);

    // Fixed: applied, and the error is gone.
    std::fs::write(root.join(apply::CENTER_FILE), DSM).unwrap();
    apply(root);
    let rec = record(root);
    assert_eq!((rec.center_id.as_deref(), rec.error), (Some("dsm"), None));
    assert!(read(root, HOSTAPD).contains("ssid=Kituo-Dar\n"));

    // A bad UPS key on a card that runs: refused naming its line and key, and the card keeps all it
    // has (Wi-Fi, SSH, the kept center.ini), so it stays reachable to fix it.
    let applied = snapshot(root);
    let line = DSM.lines().count() + 2;
    let bad_ups = format!("{DSM}[power]\nsources = nut, solar\n");
    std::fs::write(root.join(apply::CENTER_FILE), bad_ups).unwrap();
    apply(root);
    let error = record(root).error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "center.ini:{line}: key 'sources' in section [power]"
        )) && error.contains("solar"),
        "{error}"
    );
    assert_unchanged(root, &applied, &[apply::RECORD_FILE, apply::CENTER_FILE]);
}

#[test]
fn image_center_keeps_the_image_secrets_and_a_given_sync_secret_wins() {
    let dir = image();
    let root = dir.path();
    let image_secrets = secrets::File::load(&root.join(apply::SECRETS_FILE)).unwrap();
    let hex = "5a".repeat(32);
    let example = std::fs::read_to_string(Path::new(REPO).join("board-configs/example-center.ini"))
        .unwrap()
        .replace("secret =\n", &format!("secret = {hex}\n"));
    std::fs::write(root.join(apply::CENTER_FILE), example).unwrap();
    let out = apply(root);
    let changed = String::from_utf8(out.stdout).unwrap();
    // Only the sync secret differs from what the image holds for its own center.
    assert_eq!(changed, format!("/{SYNC_SECRET}\n"));
    assert_eq!(read(root, SYNC_SECRET), format!("{hex}\n"));
    let card = secrets::File::load(&root.join(apply::SECRETS_FILE)).unwrap();
    for name in ["moodle_db_password", "kituo_db_password", "wifi_passphrase"] {
        assert_eq!(card.values[name], image_secrets.values[name], "{name}");
    }
    assert_eq!(card.values["sync_secret"], hex);
}

fn appliance(root: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(kituo_tests::appliance_binary())
        .args(args)
        .arg("--root")
        .arg(root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run appliance");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn hash(password: &str) -> String {
    let out = Command::new(kituo_tests::appliance_binary())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(password.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The card's own settings: center.ini's UPS, thresholds and technician password reach appliance.ini;
/// the technician's local override (`appliance config set`) is checked with them, survives a changed
/// center.ini and a boot without one, and `config show` says where every value came from.
#[test]
fn center_settings_and_local_overrides_are_layered() {
    let dir = image();
    let root = dir.path();
    let technician = hash("field-tech-42");
    let center = format!(
        "{DSM}[power]\nsources = nut\nlow_charge_percent = 25\n[nut]\ndriver = blazer_ser\n\
         port = /dev/ttyUSB0\n[status]\ntechnician_password_hash = {technician}\n"
    );
    std::fs::write(root.join(apply::CENTER_FILE), &center).unwrap();
    apply(root);
    let ini = read(root, APPLIANCE_INI);
    for line in [
        "sources = nut\n",
        "low_charge_percent = 25\n",
        "driver = blazer_ser\n",
        "port = /dev/ttyUSB0\n",
        "listen = 127.0.0.1:8080\n",
    ] {
        assert!(ini.contains(line), "{line} missing:\n{ini}");
    }
    // NUT's files for that UPS: upsd on loopback, the card's own password.
    let ups = read(root, "etc/nut/ups.conf");
    assert!(
        ups.contains("[ups]\n    driver = blazer_ser\n    port = /dev/ttyUSB0\n"),
        "{ups}"
    );
    assert_eq!(
        read(root, "etc/nut/nut.conf").lines().last(),
        Some("MODE=standalone")
    );
    assert_eq!(
        read(root, "etc/nut/upsd.conf").lines().last(),
        Some("LISTEN 127.0.0.1 3493")
    );
    let card = secrets::File::load(&root.join(apply::SECRETS_FILE)).unwrap();
    let users = read(root, "etc/nut/upsd.users");
    assert!(
        users.contains(&format!("password = {}\n", card.values["nut_password"])),
        "{users}"
    );
    let config = appliance::config::Config::load(&root.join(APPLIANCE_INI)).unwrap();
    assert_eq!(
        config.technician_password_hash.as_deref(),
        Some(technician.as_str())
    );
    assert_eq!(config.power.sources, [appliance::config::SourceKind::Nut]);
    // The center config is kept root-only on /data, for boots without one on the boot partition.
    let kept = root.join(apply::KEPT_CENTER_FILE);
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), center);
    assert_eq!(std::fs::metadata(&kept).unwrap().mode() & 0o777, 0o600);

    let set = appliance(
        root,
        &["config", "set", "power.low_charge_percent", "35"],
        "",
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(read(root, APPLIANCE_INI).contains("low_charge_percent = 35\n"));
    let overrides = root.join(appliance::config::local::FILE);
    let written = std::fs::read_to_string(&overrides).unwrap();

    // Refused before anything is written: a clash with the other thresholds, a key the center does
    // not own, a value that is not one.
    for (name, value, says) in [
        ("power.low_debounce_seconds", "90", "low_clear_seconds"),
        ("status.listen", "0.0.0.0:80", "cannot be overridden"),
        ("power.poll_seconds", "fast", "poll_seconds"),
    ] {
        let before = snapshot(root);
        let out = appliance(root, &["config", "set", name, value], "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} = {value} was accepted");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert_unchanged(root, &before, &[]);
    }
    assert_eq!(std::fs::read_to_string(&overrides).unwrap(), written);

    // A changed center.ini applies its change and keeps the override.
    let changed = center
        .replace("low_charge_percent = 25", "low_charge_percent = 28")
        .replace(
            "passphrase = dar-passphrase\n",
            "passphrase = dar-passphrase\nchannel = 11\n",
        );
    std::fs::write(root.join(apply::CENTER_FILE), &changed).unwrap();
    apply(root);
    assert!(read(root, HOSTAPD).contains("channel=11\n"));
    let ini = read(root, APPLIANCE_INI);
    assert!(ini.contains("low_charge_percent = 35\n"), "{ini}");
    assert!(ini.contains("sources = nut\n"), "{ini}");
    let before = snapshot(root);
    assert!(
        apply(root).stdout.is_empty(),
        "the same files render the same"
    );
    assert_unchanged(root, &before, &[]);

    let show = appliance(root, &["config", "show"], "");
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let show = String::from_utf8(show.stdout).unwrap();
    for line in [
        "low_charge_percent = 35    ; local\n",
        "sources = nut    ; center.ini\n",
        "listen = 127.0.0.1:8080    ; image\n",
        "grace_seconds = 0    ; default\n",
    ] {
        assert!(show.contains(line), "{line} missing:\n{show}");
    }

    // Without a center.ini on the boot partition the kept one is rendered: removing the override
    // brings center.ini's value back.
    std::fs::remove_file(root.join(apply::CENTER_FILE)).unwrap();
    let unset = appliance(root, &["config", "unset", "power.low_charge_percent"], "");
    assert!(
        unset.status.success(),
        "{}",
        String::from_utf8_lossy(&unset.stderr)
    );
    let ini = read(root, APPLIANCE_INI);
    assert!(ini.contains("low_charge_percent = 28\n"), "{ini}");
    assert!(read(root, HOSTAPD).contains("channel=11\n"));
}
