//! `image-builder center new` and `center check`, run as the real binary in temp folders: fresh secrets,
//! a free site_id, taken ids and a full range refused, malformed files named by line and key.

use std::path::Path;
use std::process::Command;

use appliance::center::Center;
use kituo_tests::*;

/// Runs `image-builder center ARGS` (for `new`: with its state and board configs in `dir`); (success, stdout, stderr).
fn center(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(image_builder());
    command.arg("center").args(args);
    if args[0] == "new" {
        command
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--board-configs")
            .arg(dir.join("boards"));
    }
    let out = command.output().expect("run image-builder");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn new_center(dir: &Path, id: &str) -> (bool, String, String) {
    let out = dir.join(format!("{id}.ini"));
    center(
        dir,
        &[
            "new",
            "--id",
            id,
            "--name",
            &format!("Center {id}"),
            "--hub-url",
            "https://hub.example/kituo",
            "--channel",
            "11",
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

#[test]
fn new_twice_gives_fresh_secrets_and_the_next_free_site() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("boards")).unwrap();
    let (ok, stdout, stderr) = new_center(dir.path(), "dsm");
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), dir.path().join("dsm.ini").to_str().unwrap());
    let (ok, _, stderr) = new_center(dir.path(), "mza");
    assert!(ok, "{stderr}");

    let a = Center::load(&dir.path().join("dsm.ini")).expect("loads with the center schema");
    let b = Center::load(&dir.path().join("mza.ini")).expect("loads with the center schema");
    assert_eq!(
        (a.site_id, b.site_id),
        (2, 3),
        "the second takes the next free site_id"
    );
    assert_eq!((a.channel, a.auto_increment_increment), (11, 64));
    let (pa, pb) = (a.passphrase.unwrap(), b.passphrase.unwrap());
    assert_ne!(pa, pb, "each center gets its own passphrase");
    assert!(pa.len() >= 16, "{pa}");

    // The other secrets stay with the builder; the passphrase and the sync secret there are the
    // config's, so a card of a shared image gets the secret the hub registers.
    let secrets =
        std::fs::read_to_string(dir.path().join("state/centers/dsm/secrets.ini")).unwrap();
    assert!(
        secrets.contains(&format!("wifi_passphrase = {pa}\n")),
        "{secrets}"
    );
    let sync = a.sync_secret.expect("center new writes [sync] secret");
    assert_eq!(sync.len(), 64);
    assert_ne!(Some(sync.clone()), b.sync_secret);
    assert!(
        secrets.contains(&format!("sync_secret = {sync}\n")),
        "{secrets}"
    );
    assert!(!secrets.contains("db_password = \n"), "{secrets}");
    let config = std::fs::read_to_string(dir.path().join("dsm.ini")).unwrap();
    assert!(!config.contains("db_password"), "{config}");

    // A taken id is refused, and nothing is written.
    let out = dir.path().join("again.ini");
    let (ok, _, stderr) = center(
        dir.path(),
        &[
            "new",
            "--id",
            "dsm",
            "--name",
            "X",
            "--hub-url",
            "https://h",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("error: center id 'dsm' exists:"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// `--technician-password-prompt` stores the password's Argon2 hash in center.ini, never the password.
#[test]
fn technician_password_is_kept_as_its_hash_only() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("boards")).unwrap();
    let run = |id: &str, password: &str| {
        let mut child = Command::new(image_builder())
            .args([
                "center",
                "new",
                "--id",
                id,
                "--name",
                "T",
                "--hub-url",
                "https://hub.example",
            ])
            .arg("--technician-password-prompt")
            .arg("--out")
            .arg(dir.path().join(format!("{id}.ini")))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--board-configs")
            .arg(dir.path().join("boards"))
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run image-builder");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let out = run("tech", "field-tech-42");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("tech.ini")).unwrap();
    assert!(!text.contains("field-tech-42"), "{text}");
    let center = Center::load(&dir.path().join("tech.ini")).unwrap();
    let hash = &center.settings["status"]["technician_password_hash"];
    assert!(
        appliance::status::auth::verify(hash, "field-tech-42"),
        "{hash}"
    );
    assert!(!appliance::status::auth::verify(hash, "field-tech-43"));

    let out = run("short", "short");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8"));
    assert!(!dir.path().join("short.ini").exists(), "nothing written");
}

#[test]
fn a_full_range_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("centers");
    std::fs::create_dir(&taken).unwrap();
    let example =
        std::fs::read_to_string(workspace().join("board-configs/example-center.ini")).unwrap();
    // With a step of 8, sites 2 to 7 are all a fleet can have.
    for site in 2..8 {
        let text = example
            .replace("id = example", &format!("id = c{site}"))
            .replace("site_id = 2", &format!("site_id = {site}"))
            .replace(
                "auto_increment_increment = 64",
                "auto_increment_increment = 8",
            );
        std::fs::write(taken.join(format!("c{site}.ini")), text).unwrap();
    }
    let out = dir.path().join("new.ini");
    let (ok, _, stderr) = center(
        dir.path(),
        &[
            "new",
            "--id",
            "new",
            "--name",
            "New",
            "--hub-url",
            "https://h",
            "--dir",
            taken.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(
        stderr
            .contains("error: no free site_id: all of 2 to 7 are taken by the 6 center configs in"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(!out.exists());
    assert!(
        !dir.path().join("state/centers/new").exists(),
        "no secrets made"
    );

    // Freeing one site makes it the one chosen.
    std::fs::remove_file(taken.join("c5.ini")).unwrap();
    let (ok, _, stderr) = center(
        dir.path(),
        &[
            "new",
            "--id",
            "new",
            "--name",
            "New",
            "--hub-url",
            "https://h",
            "--dir",
            taken.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let c = Center::load(&out).unwrap();
    assert_eq!((c.site_id, c.auto_increment_increment), (5, 8));
}

#[test]
fn check_names_line_and_key_of_a_malformed_file() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(workspace().join("board-configs/example-center.ini")).unwrap();
    let file = dir.path().join("center.ini");
    let line_of =
        |text: &str, prefix: &str| text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;

    std::fs::write(&file, &example).unwrap();
    let (ok, stdout, stderr) = center(dir.path(), &["check", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("center 'example'"), "{stdout}");

    let bad = example.replace("channel = 6", "channel = 14");
    std::fs::write(&file, &bad).unwrap();
    let (ok, _, stderr) = center(dir.path(), &["check", file.to_str().unwrap()]);
    assert!(!ok);
    let expected = format!(
        "center.ini:{}: key 'channel' in section [wifi]: expected a whole number from 1 to 13, got 14",
        line_of(&bad, "channel")
    );
    assert!(
        stderr.contains(&expected),
        "expected `{expected}` in:\n{stderr}"
    );

    let unknown = example.replace("country = TZ", "contry = TZ");
    std::fs::write(&file, &unknown).unwrap();
    let (ok, _, stderr) = center(dir.path(), &["check", file.to_str().unwrap()]);
    assert!(!ok);
    let expected = format!(
        "center.ini:{}: invalid key 'contry' in section [wifi]",
        line_of(&unknown, "contry")
    );
    assert!(
        stderr.contains(&expected),
        "expected `{expected}` in:\n{stderr}"
    );
}
