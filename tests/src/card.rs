//! A card and the virtual board it boots in: the centers the tests flash, `image-builder flash` onto a
//! card file, files put on its boot partition as a technician would, and QEMU (TCG) with HTTP and SSH
//! forwarded to loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, image_builder, run, try_run};

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

/// The size of the card files the tests flash, an 8 GB card: with two 2 GiB root slots, first boot
/// still has room to grow /data past 3 GiB and make root slot B.
pub const CARD_SIZE: u64 = 8 << 30;

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

/// Where the boot partition (FAT) starts on the qemu-arm64 image.
const BOOT_OFFSET: u64 = 4 * 1024 * 1024;

/// Writes `text` to the card's boot partition as `name`, as a technician with a card reader would.
pub fn put_boot_file(card: &Path, name: &str, text: &str) -> Result<()> {
    let local = card.with_extension(format!("boot-{name}"));
    std::fs::write(&local, text).with_context(|| format!("cannot write {}", local.display()))?;
    try_run(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@{BOOT_OFFSET}", card.display()))
            .arg(&local)
            .arg(format!("::/{name}")),
    )?;
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
        for file in ["vmlinuz", "initrd.img", "cmdline.txt"] {
            run(Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-o")
                .arg("-i")
                .arg(format!("{}@@{BOOT_OFFSET}", image.display()))
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
        self.wait_poweroff(Duration::from_secs(120))
    }

    /// Waits for the card to power itself off (QEMU exits: it runs with -no-reboot).
    pub fn wait_poweroff(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!(
            "the VM did not power off within {timeout:?}; console:\n{}",
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
