//! The card's boot (FAT) partition, found from the partition table on the card, and a center's
//! configuration put there as `center.ini` for first boot: one image serves many centers. mtools writes
//! it in place at the partition's offset, without mounting, and reads it back from the card.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use appliance::center::Center;

use super::readback::drop_cache;
use super::target::Target;
use crate::disk::mbr;
use crate::tools::{run, which};

pub const CENTER_FILE: &str = "center.ini";

/// Checks `path` against the center schema (the error names the file, line and key) and that mtools
/// is there to write it, before the card is touched.
pub fn check_center(path: &Path) -> Result<()> {
    Center::load(path).context("refusing to flash: the center config is not valid")?;
    for tool in ["mcopy", "mtype"] {
        if which(tool).is_none() {
            bail!("refusing to flash: --center needs {tool}\nhint: apt-get install mtools");
        }
    }
    Ok(())
}

/// The primary partitions in the card's MBR.
pub fn partitions(file: &File, path: &Path) -> Result<Vec<mbr::Entry>> {
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, 0)
        .with_context(|| format!("cannot read the partition table of {}", path.display()))?;
    mbr::parse(&sector).with_context(|| format!("{} has no partition table", path.display()))
}

pub fn partition(file: &File, path: &Path) -> Result<mbr::Entry> {
    mbr::boot_partition(&partitions(file, path)?)
        .with_context(|| format!("{} has no FAT (boot) partition", path.display()))
}

/// Copies `center` onto the boot partition of the flashed card and reads it back; returns the
/// partition's number.
pub fn install_center(target: &Target, center: &Path) -> Result<u32> {
    let dev = target.path.display();
    let boot = partition(&target.file, &target.path)?;
    let drive = format!("{dev}@@{}", boot.start_bytes);
    run(mtools("mcopy")
        .args(["-o", "-i", &drive])
        .arg(center)
        .arg(format!("::/{CENTER_FILE}")))
    .with_context(|| format!("cannot copy {} onto {dev}", center.display()))?;

    // mtools wrote through the page cache: flush it to the card, then forget it, so that the
    // read-back below comes from the card.
    target
        .file
        .sync_all()
        .with_context(|| format!("cannot flush {dev}"))?;
    drop_cache(&target.file, &target.path)?;
    let back = run(mtools("mtype")
        .args(["-i", &drive])
        .arg(format!("::/{CENTER_FILE}")))
    .with_context(|| format!("cannot read {CENTER_FILE} back from {dev}"))?;
    let written =
        std::fs::read(center).with_context(|| format!("cannot read {}", center.display()))?;
    if back.stdout != written {
        bail!(
            "{CENTER_FILE} read back from partition {} of {dev} differs from {}",
            boot.number,
            center.display()
        );
    }
    Ok(boot.number)
}

fn mtools(program: &str) -> Command {
    let mut cmd = Command::new(program);
    // mtools otherwise refuses file systems whose geometry it finds odd.
    cmd.env("MTOOLS_SKIP_CHECK", "1");
    cmd
}
