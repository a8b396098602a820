//! appliance.ini: the example file, the image's template, and errors that name file, line and key.

use std::process::Command;

use appliance::center::Center;
use appliance::commission::{context, render};
use appliance::config::Config;

fn appliance(args: &[&str]) -> std::process::Output {
    Command::new(kituo_tests::appliance_binary())
        .args(args)
        .output()
        .expect("run appliance")
}

#[test]
fn example_file_matches_config_help() {
    let out = appliance(&["config-help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../appliance/appliance.ini.example"
    ))
    .unwrap();
    assert!(
        help == example,
        "appliance.ini.example is stale: regenerate it with `appliance config-help > appliance/appliance.ini.example`"
    );
}

#[test]
fn image_template_renders_to_a_valid_config() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let template = repo.join("overlays/common/rootfs/etc/kituo/appliance.ini.tmpl");
    let center = Center::load(&repo.join("board-configs/example-center.ini")).unwrap();
    let mut secrets = std::collections::BTreeMap::new();
    appliance::commission::secrets::fill_missing(&mut secrets);
    let env = render::environment();
    for (family, moodle) in [("rpi", "4.5.0"), ("odroid-amlogic", "")] {
        let image = serde_json::json!({
            "board": { "family": family },
            "moodle": { "version": moodle },
        });
        let ctx = context::merge(context::center_half(&center, &secrets), image);
        let text = render::render(&env, &template, &ctx).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.ini");
        std::fs::write(&path, &text).unwrap();
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.center_id, center.id);
        assert_eq!(c.site_id, center.site_id);
        assert!(c.power.sources.is_empty(), "no UPS until commissioning");
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.health.0.services.len(), 4);
        let sync = c.sync.as_ref().expect("the image's agent syncs");
        assert_eq!(sync.hub_url, center.hub_url);
        assert_eq!(sync.moodle.user, "kituo");
        // With Moodle in the image, sync waits for first boot to make its database.
        assert_eq!(
            sync.moodle.ready_file.is_some(),
            !moodle.is_empty(),
            "{family}: {:?}",
            sync.moodle.ready_file
        );
    }
}

fn load_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("appliance.ini");
    std::fs::write(&path, text).unwrap();
    let out = appliance(&["supervise", "--config", path.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a bad config must stop the supervisor"
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let prefix = format!("appliance: {}:", path.display());
    assert!(
        err.starts_with(&prefix),
        "error should start with the file: {err}"
    );
    err.trim().trim_start_matches(&prefix).to_owned()
}

const SITE: &str = "[site]\ncenter_id = x\nsite_id = 2\n";

#[test]
fn malformed_configs_name_file_line_and_key() {
    let cases = [
        (format!("{SITE}[power]\nsources = nut, ups-hat\n"), "5: key 'sources' in section [power]: unknown source 'ups-hat'"),
        (format!("{SITE}[power]\npoll_seconds = 0\n"), "5: key 'poll_seconds' in section [power]: expected a whole number from 1 to 60, got 0"),
        (format!("{SITE}[power]\nlow_charge_percent = 60\nresume_charge_percent = 40\n"), "6: key 'resume_charge_percent' in section [power]: must not be below low_charge_percent"),
        (format!("{SITE}[x728]\naddress = 0x99\n"), "5: key 'address' in section [x728]: expected a 7-bit I2C address like 0x36, got '0x99'"),
        (format!("{SITE}[gpio]\nactive_low = maybe\n"), "5: key 'active_low' in section [gpio]: expected yes or no, got 'maybe'"),
        (format!("{SITE}[nut]\ndeadtime = 5\n"), "5: invalid key 'deadtime' in section [nut]"),
        (format!("{SITE}[status]\ntechnician_password_hash = hunter2\n"), "5: key 'technician_password_hash' in section [status]: not a password hash"),
        (format!("{SITE}[shutdown]\ngrace_seconds = soon\n"), "5: key 'grace_seconds' in section [shutdown]: expected a whole number from 0 to 3600, got 'soon'"),
        (format!("{SITE}[upsd]\nport = 1\n"), "4: unknown section [upsd]"),
    ];
    for (text, expected) in cases {
        let err = load_error(&text);
        assert!(
            err.starts_with(expected),
            "expected '{expected}', got '{err}'"
        );
    }
}

#[test]
fn hash_password_output_is_accepted_by_the_config() {
    use std::io::Write;
    let mut child = Command::new(kituo_tests::appliance_binary())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"field-tech-2026\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ini");
    std::fs::write(
        &path,
        format!("{SITE}[status]\ntechnician_password_hash = {}", hash.trim()),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert!(appliance::status::auth::verify(
        c.technician_password_hash.as_deref().unwrap(),
        "field-tech-2026"
    ));
}
