//! The builder's command line on bad input: every error names the file, the line and the key, and nothing
//! is built or downloaded.

use std::path::Path;
use std::process::Command;

use kituo_tests::*;

fn build_with(board_dir: &Path, center: &Path, state: &Path) -> (bool, String) {
    let out = Command::new(image_builder())
        .args(["build", "--board", "qemu-arm64", "--center"])
        .arg(center)
        .arg("--board-configs")
        .arg(board_dir)
        .arg("--state")
        .arg(state)
        .arg("--out")
        .arg(state.join("out"))
        .arg("--cache")
        .arg(state.join("cache"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_configs_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let boards = dir.path().join("boards");
    std::fs::create_dir_all(&boards).unwrap();
    let real_board =
        std::fs::read_to_string(workspace().join("board-configs/qemu-arm64.ini")).unwrap();
    let real_center =
        std::fs::read_to_string(workspace().join("board-configs/example-center.ini")).unwrap();
    let center = dir.path().join("center.ini");
    let line_of =
        |text: &str, prefix: &str| text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;

    // A misspelt key in the board config.
    let board = real_board.replace("ram_mib = 1024", "ram_mb = 1024");
    std::fs::write(boards.join("qemu-arm64.ini"), &board).unwrap();
    std::fs::write(&center, &real_center).unwrap();
    let (ok, err) = build_with(&boards, &center, dir.path());
    assert!(!ok);
    let expected = format!(
        "qemu-arm64.ini:{}: invalid key 'ram_mb' in section [board]",
        line_of(&board, "ram_mb")
    );
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");

    // A bad value in the center config.
    std::fs::write(boards.join("qemu-arm64.ini"), &real_board).unwrap();
    let bad_center = real_center.replace("channel = 6", "channel = 14");
    std::fs::write(&center, &bad_center).unwrap();
    let (ok, err) = build_with(&boards, &center, dir.path());
    assert!(!ok);
    let expected = format!(
        "center.ini:{}: key 'channel' in section [wifi]: expected a whole number from 1 to 13, got 14",
        line_of(&bad_center, "channel")
    );
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");

    // A line that is not INI at all.
    let broken = real_center.replace("[wifi]", "[wifi]\nssid Kituo");
    std::fs::write(&center, &broken).unwrap();
    let (ok, err) = build_with(&boards, &center, dir.path());
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "center.ini:{}: expected '[section]' or 'key = value', got 'ssid Kituo'",
            line_of(&broken, "ssid Kituo")
        )),
        "{err}"
    );

    assert!(
        !dir.path().join("out").exists(),
        "nothing may be built from a bad config"
    );
    assert!(
        !dir.path().join("centers").exists(),
        "no secrets are made for a bad config"
    );
}

#[test]
fn config_help_documents_every_key() {
    let out = run(Command::new(image_builder()).args(["config-help", "center"]));
    let text = stdout(&out);
    for key in [
        "id =",
        "ssid =",
        "passphrase =",
        "hub_url =",
        "site_id =",
        "auto_increment_increment =",
        "ssh_authorized_keys =",
    ] {
        assert!(text.contains(key), "config-help lacks {key}:\n{text}");
    }
}
