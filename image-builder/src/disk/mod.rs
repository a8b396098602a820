//! The card image, assembled without mounting anything: a FAT boot partition by mtools, ext4 partitions by
//! `mkfs.ext4 -d`, an MBR by sfdisk, each piece copied into place keeping its holes. Every identifier
//! (disk id, file system UUIDs, hash seeds) is derived from the build inputs, so the bytes repeat.

mod extents;
mod fat;
pub mod mbr;
pub mod room;

pub use extents::{copy_sparse, data_extents};

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::tools::run;

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub number: u32,
    pub name: &'static str,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// MBR partition type.
    pub kind: &'static str,
    pub partuuid: String,
    pub fs_uuid: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub label: &'static str,
    pub disk_id: String,
    pub size_bytes: u64,
    pub partitions: Vec<Partition>,
    /// Root slot B is not in the image: first boot makes it at the end of the card (same size as A).
    pub root_b_bytes: u64,
}

/// Identifiers derived from a seed (the build's input digest) and a purpose.
pub fn derive(seed: &str, purpose: &str) -> [u8; 16] {
    let d = Sha256::digest(format!("{seed}/{purpose}").as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn uuid(bytes: [u8; 16]) -> String {
    let mut b = bytes;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout, so tools accept it
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Layout {
    /// Boot, root A and data partitions, 1 MiB aligned, the first at 4 MiB (room for SoC bootloaders).
    pub fn new(seed: &str, boot_mib: u64, root_mib: u64, data_mib: u64) -> Self {
        let disk_id = hex::encode(&derive(seed, "disk-id")[..4]);
        let mut start = 4 * MIB;
        let mut partitions = Vec::new();
        for (number, name, mib, kind) in [
            (1, "boot", boot_mib, "c"),
            (2, "root-a", root_mib, "83"),
            (3, "data", data_mib, "83"),
        ] {
            let fs = derive(seed, name);
            let fs_uuid = if kind == "c" {
                hex::encode(&fs[..4]).to_uppercase()
            } else {
                uuid(fs)
            };
            partitions.push(Partition {
                number,
                name,
                start_bytes: start,
                size_bytes: mib * MIB,
                kind,
                partuuid: format!("{disk_id}-{number:02}"),
                fs_uuid,
            });
            start += mib * MIB;
        }
        Layout {
            label: "dos",
            disk_id,
            size_bytes: start,
            partitions,
            root_b_bytes: root_mib * MIB,
        }
    }

    pub fn part(&self, name: &str) -> &Partition {
        self.partitions
            .iter()
            .find(|p| p.name == name)
            .expect("layout has boot, root-a and data")
    }

    fn sfdisk_script(&self) -> String {
        let mut s = format!(
            "label: dos\nlabel-id: 0x{}\nunit: sectors\nsector-size: 512\n\n",
            self.disk_id
        );
        for p in &self.partitions {
            let boot = if p.kind == "c" { ", bootable" } else { "" };
            s.push_str(&format!(
                "start={}, size={}, type={}{boot}\n",
                p.start_bytes / SECTOR,
                p.size_bytes / SECTOR,
                p.kind
            ));
        }
        s
    }
}

/// A FAT32 boot partition image holding `dir`'s files.
pub fn make_boot(dir: &Path, image: &Path, part: &Partition, epoch: u64) -> Result<()> {
    fat::make(dir, image, part.size_bytes, &part.fs_uuid, epoch)
}

/// An ext4 partition image holding `dir`'s tree.
pub fn make_ext4(
    dir: &Path,
    image: &Path,
    part: &Partition,
    label: &str,
    seed: &str,
    epoch: u64,
) -> Result<()> {
    let _ = std::fs::remove_file(image);
    let hash_seed = uuid(derive(seed, &format!("{}-hash-seed", part.name)));
    run(Command::new("mkfs.ext4")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-I",
            "256",
            "-L",
            label,
            "-U",
            &part.fs_uuid,
        ])
        .arg("-E")
        .arg(format!("hash_seed={hash_seed},root_owner=0:0"))
        .arg("-d")
        .arg(dir)
        .arg(image)
        .arg(format!("{}k", part.size_bytes / 1024)))
    .with_context(|| format!("cannot make the {} file system", part.name))?;
    Ok(())
}

/// Writes the partition table and copies each partition image into place.
pub fn assemble(layout: &Layout, parts: &[(&Partition, &Path)], image: &Path) -> Result<()> {
    let _ = std::fs::remove_file(image);
    let file = std::fs::File::create(image)
        .with_context(|| format!("cannot create {}", image.display()))?;
    file.set_len(layout.size_bytes)?;
    drop(file);
    let mut cmd = Command::new("sfdisk");
    cmd.args([
        "--quiet",
        "--no-reread",
        "--no-tell-kernel",
        "--wipe",
        "never",
    ])
    .arg(image);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("could not start sfdisk")?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(layout.sfdisk_script().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "sfdisk failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (part, path) in parts {
        copy_sparse(path, image, part.start_bytes, part.size_bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_derived_from_the_seed() {
        let a = Layout::new("seed", 128, 1280, 128);
        let again = Layout::new("seed", 128, 1280, 128);
        let other = Layout::new("other", 128, 1280, 128);
        assert_eq!(a.disk_id, again.disk_id);
        assert_ne!(a.disk_id, other.disk_id);
        assert_eq!(a.part("root-a").start_bytes, (4 + 128) * MIB);
        assert_eq!(a.size_bytes, (4 + 128 + 1280 + 128) * MIB);
        assert!(a.partitions.iter().all(|p| p.start_bytes % MIB == 0));
        assert_eq!(a.part("data").partuuid, format!("{}-03", a.disk_id));
        assert!(
            a.sfdisk_script()
                .contains("start=8192, size=262144, type=c, bootable"),
            "{}",
            a.sfdisk_script()
        );
    }
}
