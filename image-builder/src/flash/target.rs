//! The card to write: a block device that nothing on the host uses and that is large enough, or, when
//! asked for, a regular file. Every refusal names the device and the reason, before a byte is written.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{major, minor};

use super::usage::Host;

pub struct Target {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
}

/// Opens `path` for writing an image of `image_size` bytes, after checking it is safe to.
pub fn open_for_flash(
    path: &Path,
    image_size: u64,
    allow_file: bool,
    image: &Path,
) -> Result<Target> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound && allow_file => {
            open_file(path, image_size, image)
        }
        Err(e) => Err(e).with_context(|| format!("cannot find {}", path.display())),
        Ok(meta) if meta.file_type().is_block_device() => {
            open_block_device(path, &meta, image_size)
        }
        Ok(meta) if meta.is_file() && allow_file => open_file(path, image_size, image),
        Ok(meta) if meta.is_file() => Err(refusal(
            path,
            "it is a regular file, not a block device (pass --allow-file to write an image file)",
        )),
        Ok(_) => Err(refusal(
            path,
            "it is neither a block device nor a regular file",
        )),
    }
}

fn refusal(path: &Path, why: &str) -> anyhow::Error {
    anyhow!("refusing to write {}: {why}", shown(path))
}

fn open_block_device(path: &Path, meta: &Metadata, image_size: u64) -> Result<Target> {
    let dev = (major(meta.rdev()), minor(meta.rdev()));
    if let Some(why) = Host::scan()?.refusal(dev)? {
        return Err(refusal(path, &why));
    }
    // O_EXCL on a block device: the kernel refuses while anything mounts or claims it, and keeps others
    // from mounting it until the flash is done.
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(OFlag::O_EXCL.bits())
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {
            return Err(refusal(
                path,
                "the kernel reports it busy (mounted, or claimed by another program)",
            ))
        }
        other => other.with_context(|| format!("cannot open {} for writing", path.display()))?,
    };
    let size = device_size(&file, path)?;
    if size < image_size {
        return Err(refusal(
            path,
            &format!(
                "it holds {size} bytes ({} MiB), less than the image's {image_size} bytes ({} MiB)",
                size >> 20,
                image_size.div_ceil(1 << 20)
            ),
        ));
    }
    Ok(Target {
        path: path.to_owned(),
        file,
        size,
    })
}

/// Like bmaptool: a file target is made if missing, and grows to hold the image (the unmapped part
/// stays a hole).
fn open_file(path: &Path, image_size: u64, image: &Path) -> Result<Target> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    let meta = file.metadata()?;
    if std::fs::metadata(image).is_ok_and(|i| i.dev() == meta.dev() && i.ino() == meta.ino()) {
        return Err(refusal(path, "it is the image itself"));
    }
    if meta.len() < image_size {
        file.set_len(image_size)
            .with_context(|| format!("cannot extend {}", path.display()))?;
    }
    Ok(Target {
        path: path.to_owned(),
        file,
        size: meta.len().max(image_size),
    })
}

/// Opens a card (or image file) for reading it back.
pub fn open_for_reading(path: &Path) -> Result<Target> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = device_size(&file, path)?;
    Ok(Target {
        path: path.to_owned(),
        file,
        size,
    })
}

/// A block device's length is where seeking to its end lands; a file's is its length either way.
fn device_size(file: &File, path: &Path) -> Result<u64> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .with_context(|| format!("cannot find the size of {}", path.display()))
}

/// The path as given, and where it leads when it is a link (`/dev/disk/by-id/…` -> `/dev/sdb`).
pub fn shown(path: &Path) -> String {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match path.canonicalize() {
        Ok(real) if is_link => format!("{} ({})", path.display(), real.display()),
        _ => path.display().to_string(),
    }
}
