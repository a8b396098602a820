//! Same inputs, same bytes, for the whole chain: locked packages -> mmdebstrap root filesystem ->
//! cross-built appliance -> overlays and customize.sh -> boot, root and data file systems -> card image.
//! Two builds in different folders, each remaking the root filesystem and the appliance (`--fresh`), must
//! give byte-identical images. A reduced package set keeps it quick; every stage still runs.

use std::path::Path;
use std::process::Command;

use kituo_tests::*;

const PACKAGES: &str =
    "# Reduced set for the reproducibility test.\nsystemd\nsystemd-sysv\nudev\nkmod\n";
const CUSTOMIZE: &str =
    "#!/bin/sh\nset -eu\necho \'u mysql - \"MariaDB\"\' | systemd-sysusers -\nsystemctl enable systemd-networkd.service\n\
                         chmod 0600 /etc/kituo/center.txt\n";
const TEMPLATE: &str =
    "center {{ center.id }} on {{ board.name }}, site {{ sync.site_id }}, disk {{ disk.id }}\n";
const BOARD: &str =
    "[board]\nname = repro-arm64\narch = arm64\nfamily = qemu\n[boot]\nmethod = direct\n\
                     cmdline = console=ttyAMA0\n[boot-files]\nos-release = /etc/os-release\n\
                     [partitions]\nboot_mib = 64\nroot_mib = 600\ndata_mib = 32\n";

fn test_inputs(dir: &Path) {
    let common = dir.join("overlays/common");
    std::fs::create_dir_all(common.join("rootfs/etc/kituo")).unwrap();
    std::fs::create_dir_all(common.join("boot")).unwrap();
    std::fs::write(common.join("packages.list"), PACKAGES).unwrap();
    std::fs::write(common.join("customize.sh"), CUSTOMIZE).unwrap();
    std::fs::write(common.join("rootfs/etc/kituo/center.txt.tmpl"), TEMPLATE).unwrap();
    std::fs::write(common.join("boot/README.txt.tmpl"), TEMPLATE).unwrap();
    std::fs::create_dir_all(dir.join("boards")).unwrap();
    std::fs::write(dir.join("boards/repro-arm64.ini"), BOARD).unwrap();
}

fn build(builder: &Path, inputs: &Path, out: &Path, state: &Path) {
    run(Command::new(builder)
        .current_dir(out.parent().unwrap())
        .args(["build", "--fresh", "--board", "repro-arm64"])
        .arg("--board-configs")
        .arg(inputs.join("boards"))
        .arg("--overlays")
        .arg(inputs.join("overlays"))
        .arg("--center")
        .arg(workspace().join("board-configs/example-center.ini"))
        .arg("--out")
        .arg(out)
        .arg("--state")
        .arg(state)
        .arg("--cache")
        .arg(cache_dir()));
}

#[test]
fn two_fresh_builds_in_different_folders_are_byte_identical() {
    ensure_host();
    let builder = image_builder();
    let work = artifacts("reproducible");
    let inputs = work.join("inputs");
    test_inputs(&inputs);
    let state = work.join("state");
    let (a, b) = (work.join("first/out"), work.join("second/elsewhere/out"));
    for out in [&a, &b] {
        std::fs::create_dir_all(out).unwrap();
        build(&builder, &inputs, out, &state);
    }

    let name = "kituo-repro-arm64-example";
    for suffix in [".img", ".bmap", ".manifest.json", ".img.sha256"] {
        let (x, y) = (
            a.join(format!("{name}{suffix}")),
            b.join(format!("{name}{suffix}")),
        );
        assert!(x.exists() && y.exists(), "{name}{suffix} missing");
        assert_eq!(
            sha256(&x),
            sha256(&y),
            "{name}{suffix} differs between the two builds"
        );
    }
    // The image holds what the stages put there (so the comparison above is of real content).
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.join(format!("{name}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let names: Vec<_> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"systemd") && !names.contains(&"nginx"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"eatmydata"),
        "build-only packages must not stay in the image"
    );
    let listing = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-b")
        .arg("-i")
        .arg(format!(
            "{}@@{}",
            a.join(format!("{name}.img")).display(),
            4 << 20
        ))
        .arg("::/"));
    let listing = stdout(&listing).to_lowercase();
    assert!(
        listing.contains("os-release")
            && listing.contains("cmdline.txt")
            && listing.contains("readme.txt"),
        "{listing}"
    );
}
