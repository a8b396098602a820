//! What the host is using: mounted file systems and active swap, and the block devices under them (whole
//! disks, partitions, device-mapper and RAID layers), so that a flash never overwrites them. The kernel's
//! own refusal (opening with O_EXCL) comes on top; this check runs first so the error can say why.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::stat::{major, minor};

/// A block device number, major and minor.
pub type DevNum = (u64, u64);

/// Something the host does with a block device.
#[derive(Debug, Clone)]
struct Use {
    dev: DevNum,
    /// How it reads after "it": "is mounted at /home", "holds the host's root file system (/)".
    what: String,
}

/// A block device reached from the one to be written, and the way there.
struct Reached {
    dev: DevNum,
    path: Vec<Step>,
}

#[derive(Clone)]
enum Step {
    Partition(String),
    /// A device built on the one before (device-mapper, RAID), as `holders/` in /sys lists them.
    Holder(String),
}

/// "it", "its partition sda1", "dm-0, which is built on its partition sda2,".
fn describe(path: &[Step]) -> String {
    match path.split_last() {
        None => "it".to_owned(),
        Some((Step::Partition(name), [])) => format!("its partition {name}"),
        Some((Step::Partition(name), rest)) => format!("partition {name} of {}", describe(rest)),
        Some((Step::Holder(name), rest)) => {
            let under = describe(rest);
            format!("{name}, which is built on {},", under.trim_end_matches(','))
        }
    }
}

pub struct Host {
    sys: PathBuf,
    uses: Vec<Use>,
}

impl Host {
    /// The running host: its mount table, swap list and /sys.
    pub fn scan() -> Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        Ok(Self::new(Path::new("/sys"), &mountinfo, &swaps))
    }

    fn new(sys: &Path, mountinfo: &str, swaps: &str) -> Self {
        let mut uses = mounts(mountinfo);
        uses.extend(active_swaps(swaps));
        Host {
            sys: sys.to_owned(),
            uses,
        }
    }

    /// Why `dev` must not be written, if it must not.
    pub fn refusal(&self, dev: DevNum) -> Result<Option<String>> {
        let node = self.node(dev)?;
        if node.join("partition").exists() {
            let disk = node
                .parent()
                .and_then(Path::file_name)
                .map(|n| format!("/dev/{}", n.to_string_lossy()))
                .unwrap_or_else(|| "the whole disk".to_owned());
            return Ok(Some(format!(
                "it is a partition; a card image holds its own partition table, so write {disk}"
            )));
        }
        let reached = self.reach(&node);
        for u in &self.uses {
            if let Some(r) = reached.iter().find(|r| r.dev == u.dev) {
                return Ok(Some(format!("{} {}", describe(&r.path), u.what)));
            }
        }
        let holder = reached.iter().find_map(|r| match r.path.last() {
            Some(Step::Holder(name)) => Some(name),
            _ => None,
        });
        Ok(holder.map(|name| {
            format!("it is in use by {name} (device-mapper, RAID or another layer built on it)")
        }))
    }

    /// The device's folder in /sys.
    fn node(&self, (maj, min): DevNum) -> Result<PathBuf> {
        let link = self.sys.join(format!("dev/block/{maj}:{min}"));
        link.canonicalize()
            .with_context(|| format!("block device {maj}:{min} is not in {}", link.display()))
    }

    /// The device itself, its partitions, and whatever is built on any of them (device-mapper, RAID),
    /// and so on up: writing the device destroys all of those.
    fn reach(&self, node: &Path) -> Vec<Reached> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![(node.to_owned(), Vec::new())];
        while let Some((dir, path)) = todo.pop() {
            if !seen.insert(dir.clone()) {
                continue;
            }
            let name = |d: &Path| {
                d.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            };
            for child in entries(&dir).filter(|d| d.join("partition").is_file()) {
                let mut p = path.clone();
                p.push(Step::Partition(name(&child)));
                todo.push((child, p));
            }
            let holders = entries(&dir.join("holders")).filter_map(|l| l.canonicalize().ok());
            for holder in holders {
                let mut p = path.clone();
                p.push(Step::Holder(name(&holder)));
                todo.push((holder, p));
            }
            if let Some(dev) = read_devnum(&dir.join("dev")) {
                out.push(Reached { dev, path });
            }
        }
        out
    }
}

/// Every mounted file system's device: the number in the mount table, and the source's when it is a
/// device node (btrfs and others show an anonymous number there).
fn mounts(mountinfo: &str) -> Vec<Use> {
    let mut uses = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(numbers), Some(point), Some(source)) =
            (fields.get(2), fields.get(4), fields.get(sep + 2))
        else {
            continue;
        };
        let point = unescape(point);
        let what = if point == "/" {
            "holds the host's root file system (/)".to_owned()
        } else {
            format!("is mounted at {point}")
        };
        let mut devs: Vec<DevNum> = parse_devnum(numbers).into_iter().collect();
        devs.extend(device_node(&unescape(source)));
        for dev in devs.into_iter().filter(|(maj, _)| *maj != 0) {
            uses.push(Use {
                dev,
                what: what.clone(),
            });
        }
    }
    // The root first, so a disk holding it is reported as such rather than by some other mount.
    uses.sort_by_key(|u| !u.what.contains("root file system"));
    uses
}

/// Active swap: a partition by its number, a swap file by the file system holding it.
fn active_swaps(swaps: &str) -> Vec<Use> {
    swaps
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let name = unescape(name);
            let meta = std::fs::metadata(&name).ok()?;
            let dev = if meta.file_type().is_block_device() {
                meta.rdev()
            } else {
                meta.dev()
            };
            Some(Use {
                dev: (major(dev), minor(dev)),
                what: format!("is in use as swap ({name})"),
            })
        })
        .collect()
}

fn device_node(source: &str) -> Option<DevNum> {
    if !source.starts_with('/') {
        return None;
    }
    let meta = std::fs::metadata(source).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| (major(meta.rdev()), minor(meta.rdev())))
}

/// The entries of a /sys folder, sorted; none if it is missing. Partitions are folders in their disk's
/// folder, holders are links in `holders/`.
fn entries(dir: &Path) -> impl Iterator<Item = PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    paths.into_iter()
}

fn read_devnum(path: &Path) -> Option<DevNum> {
    parse_devnum(std::fs::read_to_string(path).ok()?.trim())
}

fn parse_devnum(text: &str) -> Option<DevNum> {
    let (maj, min) = text.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// The kernel writes spaces and other odd characters in these tables as octal escapes (`\040`).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A /sys with disk sda (sda1, and sda2 under device-mapper dm-0), disk sdb, and disk sdc held by md0.
    fn fake_sys(root: &Path) -> PathBuf {
        let sys = root.join("sys");
        let block = sys.join("devices/block");
        let dev = |dir: &Path, number: &str| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("dev"), format!("{number}\n")).unwrap();
        };
        for (path, number) in [
            ("sda", "8:0"),
            ("sda/sda1", "8:1"),
            ("sda/sda2", "8:2"),
            ("sdb", "8:16"),
            ("sdc", "8:32"),
            ("dm-0", "254:0"),
            ("md0", "9:0"),
        ] {
            dev(&block.join(path), number);
        }
        for part in ["sda/sda1", "sda/sda2"] {
            std::fs::write(block.join(part).join("partition"), "1\n").unwrap();
        }
        for (under, holder) in [("sda/sda2", "dm-0"), ("sdc", "md0")] {
            let holders = block.join(under).join("holders");
            std::fs::create_dir_all(&holders).unwrap();
            symlink(block.join(holder), holders.join(holder)).unwrap();
        }
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        for (number, path) in [
            ("8:0", "sda"),
            ("8:1", "sda/sda1"),
            ("8:16", "sdb"),
            ("8:32", "sdc"),
        ] {
            symlink(block.join(path), sys.join("dev/block").join(number)).unwrap();
        }
        sys
    }

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
31 27 254:0 / /srv/my\\040data rw,relatime - ext4 /dev/mapper/vg-data rw
";

    #[test]
    fn refuses_disks_under_mounts_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(&fake_sys(dir.path()), MOUNTINFO, "");
        let why = |dev| host.refusal(dev).unwrap().unwrap_or_default();

        let sda = why((8, 0));
        assert!(
            sda.contains("its partition sda1") && sda.contains("host's root file system"),
            "{sda}"
        );
        assert!(why((8, 1)).contains("is a partition"), "{}", why((8, 1)));
        assert!(why((8, 1)).contains("/dev/sda"), "{}", why((8, 1)));
        let sdc = why((8, 32));
        assert!(sdc.contains("in use by md0"), "{sdc}");
        assert_eq!(host.refusal((8, 16)).unwrap(), None, "sdb is free");

        // Without the root mount, sda is still refused for dm-0, mounted through sda2.
        let without_root: String = MOUNTINFO
            .lines()
            .filter(|l| !l.contains(" / / "))
            .map(|l| format!("{l}\n"))
            .collect();
        let host = Host::new(&fake_sys(&dir.path().join("2")), &without_root, "");
        let sda = host.refusal((8, 0)).unwrap().unwrap_or_default();
        assert!(
            sda.contains("dm-0, which is built on its partition sda2, is mounted at /srv/my data"),
            "{sda}"
        );
    }

    #[test]
    fn mount_table_escapes_and_root_order() {
        let uses = mounts(MOUNTINFO);
        assert_eq!(uses[0].dev, (8, 1));
        assert!(uses[0].what.contains("root"));
        assert!(
            uses.iter().all(|u| u.dev.0 != 0),
            "virtual file systems are left out"
        );
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
    }
}
