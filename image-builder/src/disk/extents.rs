//! Files with holes: finding their data extents (SEEK_DATA / SEEK_HOLE) and copying only those, so the
//! card image stays sparse and its bmap lists exactly what the file systems wrote.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// Byte ranges `[start, end)` of `file` that hold data, in order.
pub fn data_extents(file: &File) -> Result<Vec<(u64, u64)>> {
    let len = file.metadata()?.len() as i64;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e).context("SEEK_DATA failed"),
        };
        let end = lseek(fd, start, Whence::SeekHole).context("SEEK_HOLE failed")?;
        out.push((start as u64, end as u64));
        pos = end;
    }
    Ok(out)
}

/// Copies the data extents of `from` into `to` at `offset`; `from` must fit in `limit` bytes.
pub fn copy_sparse(from: &Path, to: &Path, offset: u64, limit: u64) -> Result<()> {
    let mut src = File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    if src.metadata()?.len() > limit {
        bail!(
            "{} is larger than its partition ({limit} bytes)",
            from.display()
        );
    }
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .with_context(|| format!("cannot open {}", to.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_extents(&src)? {
        src.seek(SeekFrom::Start(start))?;
        dst.seek(SeekFrom::Start(offset + start))?;
        let mut left = end - start;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            src.read_exact(&mut buf[..n])?;
            dst.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    dst.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_data_and_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut f = File::create(&a).unwrap();
        f.set_len(1 << 22).unwrap();
        f.seek(SeekFrom::Start(1 << 21)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        drop(f);
        let b = dir.path().join("b");
        File::create(&b).unwrap().set_len(1 << 23).unwrap();
        copy_sparse(&a, &b, 4096, 1 << 22).unwrap();
        let bytes = std::fs::read(&b).unwrap();
        assert_eq!(&bytes[(1 << 21) + 4096..(1 << 21) + 8192], &[7u8; 4096][..]);
        assert!(bytes[..(1 << 21) + 4096].iter().all(|&x| x == 0));
        let extents = data_extents(&File::open(&b).unwrap()).unwrap();
        assert_eq!(extents.len(), 1, "{extents:?}");
        assert!(extents[0].0 <= (1 << 21) + 4096 && extents[0].1 >= (1 << 21) + 8192);
        assert!(
            copy_sparse(&b, &a, 0, 1 << 22).is_err(),
            "a file larger than its partition is refused"
        );
    }
}
