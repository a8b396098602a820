//! The U-Boot boot script: `boot.cmd` (rendered from the overlay's template) compiled to the legacy
//! `boot.scr` image that U-Boot's distro boot runs from the boot partition. boot.cmd stays next to it,
//! so a technician can read what the board does.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::tools::run;

pub const SOURCE: &str = "boot.cmd";
pub const COMPILED: &str = "boot.scr";

/// `mkimage -T script` of `<boot>/boot.cmd`; mkimage takes its timestamp from SOURCE_DATE_EPOCH, so
/// the bytes repeat.
pub fn compile(boot: &Path, arch: &str, epoch: u64) -> Result<()> {
    let source = boot.join(SOURCE);
    ensure!(
        source.is_file(),
        "{} is missing: a U-Boot board's overlay must provide boot/{SOURCE}.tmpl",
        source.display()
    );
    let uboot_arch = if arch == "arm64" { "arm64" } else { "arm" };
    run(Command::new("mkimage")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args([
            "-A", uboot_arch, "-O", "linux", "-T", "script", "-C", "none",
        ])
        .args(["-n", "Kituo boot script", "-d"])
        .arg(&source)
        .arg(boot.join(COMPILED)))
    .context("cannot make the U-Boot boot script")?;
    Ok(())
}
