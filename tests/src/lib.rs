//! Kituo's test harness, for the tests and the benchmarks of this crate; nothing here ships on a card.
//!
//! - this module: the real builder and appliance binaries, the host's tools (installed when missing),
//!   and a QEMU virtual board reached through forwarded ports;
//! - [`testbed`]: real services on loopback (MariaDB with binlog, NUT's `upsd` with `dummy-ups`);
//! - [`supervisor`]: `appliance supervise` as a process on a test config;
//! - [`linkem`]: an emulated bad link (a TCP proxy that throttles, delays, stalls and cuts);
//! - [`bed`]: sync worlds (a hub and centers with the whole Moodle schema), the hub and agents as
//!   processes, and Moodle's files;
//! - [`workload`]: Moodle's own SQL for real actions (courses, forums, assignments, logs), and bulk
//!   changes for the benchmarks.

pub mod bed;
pub mod linkem;
pub mod supervisor;
pub use kituo_testbed as testbed;
pub mod workload;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// A center other than the one an image is built for: one image serves many centers, so a card gets its
/// own center's config when it is flashed.
pub struct CardCenter {
    pub id: &'static str,
    pub name: &'static str,
    pub timezone: &'static str,
    pub site_id: u64,
    pub ssid: &'static str,
    pub passphrase: &'static str,
    pub channel: u8,
    pub hub_url: &'static str,
    pub secret: &'static str,
}

/// The center the end-to-end tests and the first-boot bench flash their cards for.
pub const MWANZA: CardCenter = CardCenter {
    id: "mwanza",
    name: "Mwanza Learning Center",
    timezone: "Africa/Nairobi",
    site_id: 7,
    ssid: "Kituo-Mwanza",
    passphrase: "mwanza-passphrase-7",
    channel: 11,
    hub_url: "https://hub.example/mwanza",
    secret: "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed",
};

impl CardCenter {
    /// Writes its center.ini to `path`, with `public_key` allowed to log in as root. Its hub does not
    /// exist: a card with Moodle installs it instead of seeding it from the hub.
    pub fn write_ini(&self, path: &Path, public_key: &str) -> Result<()> {
        let ini = format!(
            "[center]\nid = {}\nname = {}\ntimezone = {}\n\
             [wifi]\nssid = {}\npassphrase = {}\ncountry = TZ\nchannel = {}\n\
             [sync]\nhub_url = {}\nsite_id = {}\nsecret = {}\n\
             moodle = install\n\
             [access]\nssh_authorized_keys = {public_key}\n",
            self.id,
            self.name,
            self.timezone,
            self.ssid,
            self.passphrase,
            self.channel,
            self.hub_url,
            self.site_id,
            self.secret,
        );
        std::fs::write(path, ini).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The size of the card files the tests flash: larger than any image, so first boot has room to grow
/// /data and make root slot B.
pub const CARD_SIZE: u64 = 6 << 30;

/// Makes `card` a fresh, empty card file of CARD_SIZE bytes (sparse: it costs only what is written).
pub fn new_card(card: &Path) -> Result<()> {
    let _ = std::fs::remove_file(card);
    std::fs::File::create(card)
        .and_then(|f| f.set_len(CARD_SIZE))
        .with_context(|| format!("cannot make the card file {}", card.display()))
}

/// Flashes `image` (`.img` or `.img.zst`, its `.bmap` beside it) onto the card file with `center` as its
/// center.ini, as a technician would: `image-builder flash`, which also reads the card back to verify it.
pub fn flash_card(image: &Path, card: &Path, center: &Path) -> Result<()> {
    try_run(
        Command::new(image_builder())
            .args(["flash", "--allow-file", "--device"])
            .arg(card)
            .arg("--center")
            .arg(center)
            .arg(image),
    )
    .with_context(|| format!("cannot flash {} onto {}", image.display(), card.display()))?;
    Ok(())
}

/// A booted qemu-arm64 image: HTTP and SSH forwarded to loopback ports.
pub struct Vm {
    child: Child,
    /// When QEMU was started: time to a service answering is measured from here.
    pub started: Instant,
    pub http: u16,
    pub ssh: u16,
    key: PathBuf,
    pub console: PathBuf,
}

impl Vm {
    /// Boots `image` with the kernel, initrd and command line from its own boot partition.
    pub fn boot(image: &Path, key: &Path, work: &Path) -> Result<Vm> {
        let boot_offset = 4 * 1024 * 1024;
        for file in ["vmlinuz", "initrd.img", "cmdline.txt"] {
            run(Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-o")
                .arg("-i")
                .arg(format!("{}@@{boot_offset}", image.display()))
                .arg(format!("::/{file}"))
                .arg(work.join(file)));
        }
        let cmdline = std::fs::read_to_string(work.join("cmdline.txt"))?
            .trim()
            .to_owned();
        let (http, ssh) = (free_port(), free_port());
        let console = work.join("console.log");
        let started = Instant::now();
        let child = Command::new("qemu-system-aarch64")
            .args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a72",
                "-m",
                "1024",
                "-smp",
                "2",
                "-nographic",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(work.join("vmlinuz"))
            .arg("-initrd")
            .arg(work.join("initrd.img"))
            .args(["-append", &cmdline])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", image.display()))
            .args([
                "-device",
                "virtio-rng-pci",
                "-device",
                "virtio-net-pci,netdev=n",
            ])
            .arg("-netdev")
            .arg(format!(
                "user,id=n,hostfwd=tcp:127.0.0.1:{http}-:80,hostfwd=tcp:127.0.0.1:{ssh}-:22"
            ))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-monitor", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start qemu-system-aarch64")?;
        Ok(Vm {
            child,
            started,
            http,
            ssh,
            key: key.to_owned(),
            console,
        })
    }

    /// Waits until `path` answers 200 through the forwarded HTTP port, and returns the body.
    pub fn wait_http(&mut self, path: &str, timeout: Duration) -> Result<String> {
        let started = Instant::now();
        loop {
            if let Ok(body) = self.http_get(path) {
                return Ok(body);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before {path} answered; console:\n{}",
                    self.console_tail()
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "{path} did not answer within {timeout:?}; console:\n{}",
                    self.console_tail()
                );
            }
            // Every second: the first-boot bench reads the time to the first answer from this loop.
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    pub fn http_get(&self, path: &str) -> Result<String> {
        let out = Command::new("curl")
            .args(["-sS", "-f", "--max-time", "20"])
            .arg(format!("http://127.0.0.1:{}{path}", self.http))
            .output()?;
        if !out.status.success() {
            bail!(
                "GET {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ssh_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["-o", "ConnectTimeout=20", "-p", &self.ssh.to_string()]);
        cmd
    }

    /// Runs a shell command as root in the VM with the test's key; returns stdout, failing on non-zero exit.
    pub fn ssh(&self, script: &str) -> Result<String> {
        let out = self
            .ssh_command()
            .args(["-o", "BatchMode=yes", "-i"])
            .arg(&self.key)
            .arg("root@127.0.0.1")
            .arg(script)
            .output()?;
        if !out.status.success() {
            bail!(
                "ssh `{script}` failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Tries to log in with a password only; returns ssh's error output.
    pub fn ssh_password_attempt(&self) -> Result<(bool, String)> {
        let out = self
            .ssh_command()
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
            ])
            .arg("root@127.0.0.1")
            .arg("true")
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<_> = text.lines().rev().take(60).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Powers the VM off cleanly (waits for QEMU to exit), killing it if that takes too long.
    pub fn shutdown(mut self) -> Result<()> {
        let _ = self.ssh("systemctl poweroff");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!(
            "the VM did not power off within 120 s; console:\n{}",
            self.console_tail()
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
