//! The card to write: a block device that nothing on the host uses and that is large enough, or, when
//! asked for, a regular file. Every refusal names the device and the reason, before a byte is written.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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
    let refuse =
        |why: String| -> Result<Target> { bail!("refusing to write {}: {why}", shown(path)) };
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot find {}", path.display()))?;
    let kind = meta.file_type();
    if kind.is_file() {
        if !allow_file {
            return refuse(
                "it is a regular file, not a block device (pass --allow-file to write an image file)"
                    .to_owned(),
            );
        }
        if std::fs::metadata(image).is_ok_and(|i| i.dev() == meta.dev() && i.ino() == meta.ino()) {
            return refuse("it is the image itself".to_owned());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        // Like bmaptool: a file target grows to hold the image (its unmapped part stays a hole).
        if meta.len() < image_size {
            file.set_len(image_size)
                .with_context(|| format!("cannot extend {}", path.display()))?;
        }
        return Ok(Target {
            path: path.to_owned(),
            file,
            size: meta.len().max(image_size),
        });
    }
    if !kind.is_block_device() {
        return refuse("it is neither a block device nor a regular file".to_owned());
    }
    let dev = (major(meta.rdev()), minor(meta.rdev()));
    if let Some(why) = Host::scan()?.refusal(dev)? {
        return refuse(why);
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
            return refuse(
                "the kernel reports it busy (mounted, or claimed by another program)".to_owned(),
            )
        }
        other => other.with_context(|| format!("cannot open {} for writing", path.display()))?,
    };
    let size = device_size(&file, path)?;
    if size < image_size {
        return refuse(format!(
            "it holds {} bytes ({} MiB), less than the image's {} bytes ({} MiB)",
            size,
            size >> 20,
            image_size,
            image_size.div_ceil(1 << 20)
        ));
    }
    Ok(Target {
        path: path.to_owned(),
        file,
        size,
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
