//! The FAT boot partition, written with mtools: no mount, and with SOURCE_DATE_EPOCH plus files copied
//! one by one in sorted order the image repeats byte for byte.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use walkdir::WalkDir;

use crate::tools::run;

pub fn make(dir: &Path, image: &Path, size_bytes: u64, volume_id: &str, epoch: u64) -> Result<()> {
    let _ = std::fs::remove_file(image);
    run(Command::new("mkfs.vfat")
        .args([
            "--invariant",
            "-F",
            "32",
            "-n",
            "KITUO-BOOT",
            "-i",
            volume_id,
            "-C",
        ])
        .arg(image)
        .arg((size_bytes / 1024).to_string()))
    .context("cannot make the boot file system")?;
    let mtools = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(image);
        cmd
    };
    for entry in WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        let rel = entry
            .path()
            .strip_prefix(dir)?
            .to_string_lossy()
            .into_owned();
        if entry.file_type().is_dir() {
            run(mtools("mmd").arg(format!("::/{rel}")))?;
        } else {
            // -m keeps the (clamped) modification time instead of the current time.
            run(mtools("mcopy")
                .arg("-m")
                .arg(entry.path())
                .arg(format!("::/{rel}")))?;
        }
    }
    Ok(())
}
