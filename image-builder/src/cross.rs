//! Cross-building the appliance for the board's architecture. rustup cannot add targets on these machines,
//! so the build runs in an amd64 Debian trixie chroot with Debian's rustc/cargo (1.85),
//! `libstd-rust-dev:<arch>` and the gcc cross linker. The chroot is made once and cached; the binary is
//! cached under a digest of the sources it is built from.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::progress::Progress;
use crate::tools::{self, run_logged};

const CHROOT_RECIPE: &str = "cross-v1";
/// What cargo needs to build any member of the workspace.
pub const WORKSPACE: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "appliance",
    "image-builder",
    "tests",
];
const CHROOT_PACKAGES: &[&str] = &[
    "rustc",
    "cargo",
    "gcc",
    "libc6-dev",
    "ca-certificates",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "libstd-rust-dev:arm64",
    "gcc-arm-linux-gnueabihf",
    "libc6-dev-armhf-cross",
    "libstd-rust-dev:armhf",
];

/// Rust target and C cross linker of a Debian architecture.
fn target(arch: &str) -> Result<(&'static str, &'static str)> {
    match arch {
        "arm64" => Ok(("aarch64-unknown-linux-gnu", "aarch64-linux-gnu-gcc")),
        "armhf" => Ok(("armv7-unknown-linux-gnueabihf", "arm-linux-gnueabihf-gcc")),
        other => bail!("no cross target known for architecture {other}"),
    }
}

pub struct Binary {
    pub path: PathBuf,
    pub cached: bool,
}

/// The appliance binary for `arch`, built from the workspace at `workspace` unless a cached build of the
/// same sources exists (and `fresh` is not asked for).
pub fn appliance(
    cache_root: &Path,
    workspace: &Path,
    arch: &str,
    epoch: u64,
    fresh: bool,
    progress: &Progress,
) -> Result<Binary> {
    let key = source_digest(workspace)?;
    let out = cache_root
        .join("appliance")
        .join(format!("{arch}-{key}"))
        .join("appliance");
    if fresh && out.exists() {
        std::fs::remove_file(&out)?;
    }
    if out.exists() {
        return Ok(Binary {
            path: out,
            cached: true,
        });
    }
    let root = chroot(cache_root, progress)?;
    let step = progress.step(&format!("cross-build appliance ({arch})"));
    let (triple, linker) = target(arch)?;

    let src = root.join("build/src");
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    tools::copy_items(workspace, WORKSPACE, &src)?;
    let _ = std::fs::remove_dir_all(src.join("target"));
    std::fs::copy(ca_bundle()?, root.join("build/ca.crt"))?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .context("cannot copy /etc/resolv.conf")?;

    let env_triple = triple.to_uppercase().replace('-', "_");
    let script = format!(
        "set -e; cd /build/src; export CARGO_HOME=/build/cargo-home CARGO_TARGET_DIR=/build/target \
         CARGO_HTTP_CAINFO=/build/ca.crt SOURCE_DATE_EPOCH={epoch} CARGO_TARGET_{env_triple}_LINKER={linker} \
         RUSTFLAGS='--remap-path-prefix=/build/src=/kituo --remap-path-prefix=/build/cargo-home=/cargo'; \
         cargo build --release --locked -p appliance --target {triple}"
    );
    let log = cache_root
        .join("appliance")
        .join(format!("build-{arch}.log"));
    std::fs::create_dir_all(log.parent().unwrap_or(cache_root))?;
    in_chroot(&root, &script, &log).context("cross-building the appliance failed")?;

    let built = root
        .join("build/target")
        .join(triple)
        .join("release/appliance");
    std::fs::create_dir_all(out.parent().unwrap_or(cache_root))?;
    std::fs::copy(&built, &out).with_context(|| format!("cannot copy {}", built.display()))?;
    step.finish();
    Ok(Binary {
        path: out,
        cached: false,
    })
}

/// The build chroot, made by mmdebstrap on first use.
fn chroot(cache_root: &Path, progress: &Progress) -> Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(CHROOT_RECIPE);
    h.update(CHROOT_PACKAGES.join(","));
    let key = &hex::encode(h.finalize())[..12];
    let root = cache_root.join("cross").join(format!("trixie-amd64-{key}"));
    if root.join("build/.ready").exists() {
        return Ok(root);
    }
    let step = progress.step("cross toolchain chroot");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(root.parent().unwrap_or(cache_root))?;
    let log = root.with_extension("log");
    run_logged(
        Command::new("mmdebstrap")
            .args([
                "--mode=root",
                "--variant=apt",
                "--format=directory",
                "--architectures=amd64,arm64,armhf",
            ])
            .arg(format!("--include={}", CHROOT_PACKAGES.join(",")))
            .arg("trixie")
            .arg(&root)
            .arg(format!("deb {} trixie main", crate::apt::MIRROR)),
        &log,
    )
    .context("making the cross-build chroot failed")?;
    std::fs::create_dir_all(root.join("build"))?;
    std::fs::write(root.join("build/.ready"), "")?;
    step.finish();
    Ok(root)
}

fn in_chroot(root: &Path, script: &str, log: &Path) -> Result<()> {
    run_logged(
        Command::new("unshare")
            .args(["--mount", "--fork", "sh", "-c"])
            .arg(r#"mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && exec chroot "$1" /bin/sh -c "$2""#)
            .args(["sh"])
            .arg(root)
            .arg(script)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root"),
        log,
    )
}

/// crates.io traffic may pass an intercepting proxy: the chroot needs the host's CA bundle.
fn ca_bundle() -> Result<PathBuf> {
    ["CARGO_HTTP_CAINFO", "SSL_CERT_FILE", "CURL_CA_BUNDLE"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .chain([PathBuf::from("/etc/ssl/certs/ca-certificates.crt")])
        .find(|p| p.is_file())
        .context("no CA bundle found (set SSL_CERT_FILE or install ca-certificates)")
}

/// Digest of what the appliance binary is built from: its crate, the workspace manifest and lock file.
pub fn source_digest(workspace: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut files = vec![workspace.join("Cargo.toml"), workspace.join("Cargo.lock")];
    for entry in WalkDir::new(workspace.join("appliance")).sort_by_file_name() {
        let entry = entry?;
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    for file in files {
        let rel = file.strip_prefix(workspace).unwrap_or(&file);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
        h.update([0]);
    }
    Ok(hex::encode(h.finalize())[..16].to_owned())
}
