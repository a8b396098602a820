//! Kituo's test harness, for the tests and the benchmarks of this crate; nothing here ships on a card.
//!
//! - this module: the real builder and appliance binaries, the host's tools (installed when missing);
//! - [`card`]: the centers a card is flashed for, flashing, and the QEMU virtual board it boots in,
//!   reached through forwarded ports;
//! - [`testbed`]: real services on loopback (MariaDB with binlog, NUT's `upsd` with `dummy-ups`);
//! - [`supervisor`]: `appliance supervise` as a process on a test config;
//! - [`linkem`]: an emulated bad link (a TCP proxy that throttles, delays, stalls and cuts);
//! - [`moodle`]: real Moodle (a release's code, Debian's PHP, sites installed by Moodle's installer);
//! - [`bed`]: sync worlds (a hub and centers with the whole Moodle schema), the hub and agents as
//!   processes, and Moodle's files;
//! - [`workload`]: Moodle's own SQL for real actions (courses, forums, assignments, logs), and bulk
//!   changes for the benchmarks.

pub mod bed;
pub mod card;
pub use card::*;
pub mod linkem;
pub mod moodle;
pub mod supervisor;
pub use kituo_testbed as testbed;
pub mod workload;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace exists")
}

/// Installs whatever the builder and these tests need that is missing (Debian packages only).
pub fn ensure_host() {
    let out = Command::new(workspace().join("image-builder/scripts/host-setup"))
        .output()
        .expect("run host-setup");
    assert!(
        out.status.success(),
        "host-setup failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs the Debian packages of the `(command, package)` pairs whose command is missing; lighter than
/// `ensure_host` for tests that need a few tools only.
pub fn ensure_tools(tools: &[(&str, &str)]) {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {cmd}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    run(Command::new("apt-get").args(["update", "-q"]));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
}

/// The release build of the image builder, built on the first call; later calls (a timed flash in a
/// bench) return at once.
pub fn image_builder() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_build(
                &["--release", "-p", "image-builder"],
                "release/image-builder",
            )
        })
        .clone()
}

/// The debug build of the appliance program, built on the first call, for tests that run it on the
/// host.
pub fn appliance_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo_build(
            &["-p", "appliance", "--bin", "appliance"],
            "debug/appliance",
        )
    })
}

/// The release build of the appliance program, for the benchmarks (which measure what ships).
pub fn appliance_release() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo_build(
            &["--release", "-p", "appliance", "--bin", "appliance"],
            "release/appliance",
        )
    })
}

/// Runs `cargo build -q args` in the workspace; returns `target/<binary>`.
fn cargo_build(args: &[&str], binary: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q"])
        .args(args)
        .current_dir(workspace())
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build {args:?} failed");
    workspace().join("target").join(binary)
}

/// The builder's cache, shared with ordinary builds so that CI reuses downloaded packages and chroots.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KITUO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kituo"))
}

/// A folder for this test's outputs under target/, kept after the run for inspection.
pub fn artifacts(name: &str) -> PathBuf {
    let dir = workspace().join("target/e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create artifacts folder");
    dir
}

/// Runs a command and returns its output, panicking with the command's stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    try_run(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs a command and returns its output, or an error with the command's output when it fails.
pub fn try_run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The stand-in Moodle (tests/fixtures/moodle-standin: NOT Moodle, its layout and entry points) packed as
/// a release tarball with one top folder `moodle/`, like download.moodle.org's, and the release INI
/// `image-builder build --moodle` reads for it. Returns (tarball, release INI).
pub fn moodle_standin_release(dir: &Path) -> (PathBuf, PathBuf) {
    let tarball = dir.join("moodle-standin.tgz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(workspace().join("tests/fixtures"))
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--transform=s,^moodle-standin,moodle,",
            "moodle-standin",
        ]));
    let ini = dir.join("moodle-standin.ini");
    std::fs::write(
        &ini,
        format!(
            "; The test stand-in, not Moodle (tests/fixtures/moodle-standin).\n[moodle]\nversion = 4.5.0-standin\nsource = {}\nsha256 = {}\n",
            tarball.display(),
            sha256(&tarball)
        ),
    )
    .expect("write the release INI");
    (tarball, ini)
}

/// An SSH key pair for logging in to a test image.
pub fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kituo-test", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_owned())
}
