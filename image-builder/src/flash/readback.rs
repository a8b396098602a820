//! Reading a card back from the card itself, not from the page cache that still holds what was just
//! written: with O_DIRECT (aligned buffers, aligned offsets) where the device or file system allows it,
//! else after dropping the cached pages.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{posix_fadvise, OFlag, PosixFadviseAdvice};
use sha2::{Digest, Sha256};

/// Covers the logical block size of any card reader and of 4 KiB-sector disks.
const ALIGN: usize = 4096;

pub struct DeviceReader {
    path: PathBuf,
    file: File,
    pub direct: bool,
    storage: Vec<u8>,
    offset: usize,
}

impl DeviceReader {
    pub fn open(path: &Path, chunk: usize) -> Result<Self> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_DIRECT.bits())
            .open(path);
        let (file, direct) = match direct {
            Ok(file) => (file, true),
            // tmpfs and some other file systems refuse O_DIRECT: drop the cache instead.
            Err(_) => {
                let file =
                    File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                drop_cache(&file, path)?;
                (file, false)
            }
        };
        let storage = vec![0u8; chunk + ALIGN];
        let offset = storage.as_ptr().align_offset(ALIGN);
        Ok(DeviceReader {
            path: path.to_owned(),
            file,
            direct,
            storage,
            offset,
        })
    }

    /// The sha256 of bytes `[start, end)`; `start` is block aligned (bmap ranges are), and `tick` hears
    /// of every chunk read.
    pub fn sha256(&mut self, start: u64, end: u64, tick: &dyn Fn(u64)) -> Result<String> {
        let chunk = self.storage.len() - ALIGN;
        let mut hasher = Sha256::new();
        let mut pos = start;
        while pos < end {
            let want = (end - pos).min(chunk as u64) as usize;
            let got = self.read_at(pos, want.next_multiple_of(ALIGN))?;
            if got < want {
                anyhow::bail!(
                    "{} ends at byte {}, before the image does",
                    self.path.display(),
                    pos + got as u64
                );
            }
            hasher.update(&self.storage[self.offset..self.offset + want]);
            tick(want as u64);
            pos += want as u64;
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Reads up to `len` bytes at `pos` into the aligned buffer; fewer only at the end of the device.
    fn read_at(&mut self, pos: u64, len: usize) -> Result<usize> {
        let buf = &mut self.storage[self.offset..self.offset + len];
        let mut got = 0;
        while got < len {
            match self.file.read_at(&mut buf[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot read {} at byte {}", self.path.display(), pos)
                    })
                }
            }
        }
        Ok(got)
    }
}

/// Writes back and forgets the cached pages of `file`, so the next read goes to the device.
pub fn drop_cache(file: &File, path: &Path) -> Result<()> {
    posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .with_context(|| format!("cannot drop the cached pages of {}", path.display()))
}
