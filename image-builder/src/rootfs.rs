//! The base root filesystem: Debian by mmdebstrap from the locked packages, as a tarball cached under a
//! key of everything that goes into it (lock, package set, the hooks below). Per-center and per-board
//! files come later (overlays), so changing a center does not rebuild this.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::apt::sources_list;
use crate::board::Board;
use crate::lockfile::Lock;
use crate::packages::PackageCache;
use crate::progress::Progress;
use crate::tools::{run, run_logged};

/// Bump when the hooks or options below change: it is part of the cache key.
const RECIPE_VERSION: &str = "rootfs-v2-eatmydata";

/// Locked for the build's sake, not installed: dpkg runs under eatmydata while the image is made (its
/// fsyncs are most of the build time on a disk), and the hook takes it out again.
pub const BUILD_ONLY: &[&str] = &["eatmydata", "libeatmydata1"];
const EATMYDATA_HOOKS: &str = "/usr/share/mmdebstrap/hooks/eatmydata";

/// Files no image needs; they are about a third of a root filesystem's size.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];

/// Package-installed state that would differ between two builds, removed so tarballs are identical;
/// first boot creates each again (SSH host keys, MariaDB's datadir on the data partition).
fn customize_hooks(suite: &str) -> Vec<String> {
    vec![
        r#"rm -f "$1"/etc/ssh/ssh_host_*"#.to_owned(),
        r#"if [ -d "$1"/var/lib/mysql ]; then find "$1"/var/lib/mysql -mindepth 1 -delete; fi"#
            .to_owned(),
        // Removed rather than rewritten: rewriting keeps the mode of the host's file (DESIGN.md).
        r#"rm -f "$1"/etc/hostname"#.to_owned(),
        r#"rm -f "$1"/etc/apt/sources.list.d/*"#.to_owned(),
        format!(
            r#"printf '%s' '{}' > "$1"/etc/apt/sources.list"#,
            sources_list(suite)
        ),
    ]
}

pub struct BaseRootfs {
    pub tarball: PathBuf,
    pub key: String,
    pub cached: bool,
}

/// The package set of the base root filesystem of `arch`: the union over every board of that architecture
/// (`boards` plus the one being built), so all of them share one cached base and differ only in their
/// overlays and boot files. A few MB of another board's firmware is far cheaper than 20 minutes of
/// qemu-user per board.
pub fn arch_package_set(overlays: &Path, boards: &[Board], arch: &str) -> Result<Vec<String>> {
    let mut set = Vec::new();
    for board in boards.iter().filter(|b| b.arch == arch) {
        let layers = crate::overlay::layers(overlays, board);
        set.extend(package_set(
            &crate::overlay::package_lists(&layers),
            &board.packages,
        )?);
    }
    set.sort();
    set.dedup();
    Ok(set)
}

/// The sorted, de-duplicated package set of an image.
pub fn package_set(lists: &[PathBuf], extra: &[String]) -> Result<Vec<String>> {
    let mut set: Vec<String> = extra.to_vec();
    for list in lists.iter().filter(|l| l.exists()) {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("cannot read {}", list.display()))?;
        set.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim())
                .flat_map(str::split_whitespace)
                .map(str::to_owned),
        );
    }
    set.sort();
    set.dedup();
    Ok(set)
}

fn cache_key(lock: &Lock, packages: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [
        RECIPE_VERSION,
        &lock.digest(),
        &lock.arch,
        &packages.join(" "),
        &customize_hooks(&lock.suite).join("\n"),
        &DPKG_EXCLUDES.join(" "),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..16].to_owned()
}

/// Returns the cached tarball for this lock and package set, building it when missing (or when `fresh`).
pub fn base(
    cache_root: &Path,
    lock: &Lock,
    packages: &[String],
    fresh: bool,
    progress: &Progress,
) -> Result<BaseRootfs> {
    let key = cache_key(lock, packages);
    let dir = cache_root.join("rootfs");
    std::fs::create_dir_all(&dir)?;
    let tarball = dir.join(format!("{}-{}-{key}.tar", lock.suite, lock.arch));
    if fresh && tarball.exists() {
        std::fs::remove_file(&tarball)?;
    }
    if tarball.exists() {
        return Ok(BaseRootfs {
            tarball,
            key,
            cached: true,
        });
    }
    if let Some(p) = packages
        .iter()
        .find(|p| !lock.packages.contains_key(p.as_str()))
    {
        anyhow::bail!(
            "package {p} is not in the lock {}\nhint: run `image-builder lock` after changing package lists",
            lock.path.display()
        );
    }

    let debs = PackageCache::new(cache_root)?;
    debs.fetch(lock, progress)?;
    let repo = cache_root.join("repo").join(&key);
    debs.repository(lock, &repo)?;
    crate::binfmt::ensure(&lock.arch)?;

    let step = progress.step("root filesystem (mmdebstrap)");
    let partial = tarball.with_extension("tar.partial");
    let log = tarball.with_extension("log");
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", lock.source_date_epoch.to_string())
        .args(["--mode=root", "--variant=apt", "--format=tar"])
        .arg(format!("--architectures={}", lock.arch))
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!("--hook-dir={EATMYDATA_HOOKS}"));
    for opt in DPKG_EXCLUDES {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    for hook in customize_hooks(&lock.suite) {
        cmd.arg(format!("--customize-hook={hook}"));
    }
    // copy:// makes apt copy the .debs into the chroot's cache, where dpkg (inside) can read them.
    cmd.arg(&lock.suite)
        .arg(&partial)
        .arg(format!("deb [trusted=yes] copy://{} ./", repo.display()));
    let result = run_logged(&mut cmd, &log);
    let _ = std::fs::remove_dir_all(&repo);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.context("building the root filesystem failed")?;
    std::fs::rename(&partial, &tarball)?;
    step.finish();
    Ok(BaseRootfs {
        tarball,
        key,
        cached: false,
    })
}

/// Unpacks a root filesystem tarball into an empty directory, keeping owners, modes and xattrs.
pub fn unpack(tarball: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tarball)
        .arg("-C")
        .arg(dir))?;
    Ok(())
}
