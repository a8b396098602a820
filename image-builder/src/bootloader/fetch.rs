//! Getting each bootloader piece's bytes: downloaded once into the builder's cache (`<cache>/blobs/`,
//! named by sha256), or read from a local file, always checked against the sha256 the board config pins,
//! and taken out of a .deb when the piece names a member.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::piece::{Piece, Source};
use crate::board::Board;
use crate::packages::sha256_file;
use crate::tools::run;

/// A piece with the bytes it writes (after `skip` and `bytes`).
#[derive(Debug, Clone)]
pub struct Blob {
    pub piece: Piece,
    pub data: Vec<u8>,
}

/// Every piece of the board's bootloader area; fails on the first one missing, unpinned or altered.
pub fn fetch(board: &Board, cache: &Path) -> Result<Vec<Blob>> {
    board
        .bootloader
        .iter()
        .map(|piece| {
            let at = format!(
                "{}:{}: bootloader piece '{}' of board {}",
                board.file.display(),
                piece.line,
                piece.name,
                board.name
            );
            let data = bytes_of(board, piece, cache).with_context(|| at.clone())?;
            let data = cut(piece, data).with_context(|| at)?;
            Ok(Blob {
                piece: piece.clone(),
                data,
            })
        })
        .collect()
}

impl Blob {
    /// The manifest's record of this piece.
    pub fn describe(&self) -> crate::manifest::BootloaderPiece {
        use sha2::{Digest, Sha256};
        crate::manifest::BootloaderPiece {
            name: self.piece.name.clone(),
            sector: self.piece.sector,
            bytes: self.data.len() as u64,
            sha256: hex::encode(Sha256::digest(&self.data)),
        }
    }
}

fn bytes_of(board: &Board, piece: &Piece, cache: &Path) -> Result<Vec<u8>> {
    let file = match &piece.source {
        Source::Zeros => return Ok(vec![0; piece.bytes.unwrap_or(0) as usize]),
        _ if piece.sha256.is_empty() => bail!(
            "is not pinned: its sha256 is empty, so it cannot be verified ({})\n\
             hint: this is a vendor-signed blob Debian does not ship; get it from the source named in {}, \
             check it, and set source= (a local path or URL) and sha256= on that line",
            describe(&piece.source),
            board.file.display()
        ),
        source => {
            let base = board.file.parent().unwrap_or(Path::new("."));
            pinned(source, &piece.sha256, base, cache)?
        }
    };
    match &piece.member {
        Some(member) => deb_member(&file, member),
        None => std::fs::read(&file).with_context(|| format!("cannot read {}", file.display())),
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Zeros => "zeros".into(),
        Source::Url(u) | Source::Path(u) => u.clone(),
    }
}

/// The verified file behind a URL (downloaded once into `<cache>/blobs/`) or a local path (relative to
/// `base`, the folder of the config that names it). Also fetches the Moodle release.
pub fn pinned(source: &Source, sha256: &str, base: &Path, cache: &Path) -> Result<PathBuf> {
    match source {
        Source::Zeros => bail!("zeros is not a file"),
        Source::Url(url) => download(url, sha256, cache),
        Source::Path(path) => {
            let file = base.join(path);
            ensure!(
                file.is_file(),
                "the blob {} is missing\nhint: put the file there (the config's comment says where \
                 it comes from), or point source= at your copy",
                file.display()
            );
            verify(&file, sha256)?;
            Ok(file)
        }
    }
}

/// `skip` and `bytes` applied.
fn cut(piece: &Piece, mut data: Vec<u8>) -> Result<Vec<u8>> {
    let skip = usize::try_from(piece.skip)?;
    ensure!(
        skip < data.len(),
        "skip={} is past the end of the blob ({} bytes)",
        piece.skip,
        data.len()
    );
    data.drain(..skip);
    if let Some(limit) = piece.bytes {
        data.truncate(usize::try_from(limit)?);
    }
    Ok(data)
}

/// The cached copy of `url`, downloaded when missing and verified either way.
fn download(url: &str, sha256: &str, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("blobs");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(sha256);
    if !path.exists() {
        let partial = dir.join(format!("{sha256}.partial"));
        let result = run(Command::new("curl")
            .args(["-sS", "-f", "-L", "--retry", "3", "-o"])
            .arg(&partial)
            .arg(url));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&partial);
            return Err(e).with_context(|| {
                format!(
                    "cannot download {url}\nhint: put a copy with this sha256 at {}",
                    path.display()
                )
            });
        }
        verify(&partial, sha256).inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })?;
        std::fs::rename(&partial, &path)?;
    }
    verify(&path, sha256).with_context(|| {
        format!(
            "the cached {} is damaged: delete it to fetch it again",
            path.display()
        )
    })?;
    Ok(path)
}

fn verify(path: &Path, sha256: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    ensure!(
        actual == sha256,
        "{} has sha256 {actual}, but its config pins {sha256}",
        path.display()
    );
    Ok(())
}

/// One file out of a .deb, by `dpkg-deb -x` into a scratch folder (no root, no dpkg database).
fn deb_member(deb: &Path, member: &str) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()))
        .with_context(|| format!("cannot unpack {}", deb.display()))?;
    let path = dir.path().join(member.trim_start_matches('/'));
    std::fs::read(&path).with_context(|| format!("{} has no file {member}", deb.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_with(dir: &Path, line: &str) -> Board {
        let path = dir.join("b.ini");
        std::fs::write(
            &path,
            format!("[board]\nname = b\narch = arm64\nfamily = qemu\n[boot]\nmethod = direct\n[bootloader]\n{line}\n"),
        )
        .unwrap();
        Board::load(dir, "b").unwrap()
    }

    #[test]
    fn a_local_blob_is_verified_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..=255u8).cycle().take(2048).collect();
        std::fs::write(dir.path().join("fip.bin"), &blob).unwrap();
        let sha = sha256_file(&dir.path().join("fip.bin")).unwrap();
        let board = board_with(
            dir.path(),
            &format!("fip = sector=1 skip=512 bytes=1000 source=fip.bin sha256={sha}"),
        );
        let blobs = fetch(&board, dir.path()).unwrap();
        assert_eq!(blobs[0].data, blob[512..1512]);

        let board = board_with(
            dir.path(),
            &format!("fip = sector=1 source=fip.bin sha256={}", "0".repeat(64)),
        );
        let e = format!("{:#}", fetch(&board, dir.path()).unwrap_err());
        assert!(
            e.contains("b.ini:8: bootloader piece 'fip' of board b")
                && e.contains("but its config pins"),
            "{e}"
        );
    }

    #[test]
    fn missing_or_unpinned_blobs_fail_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let board = board_with(
            dir.path(),
            &format!(
                "bl1 = sector=1 source=nowhere/bl1.bin sha256={}",
                "a".repeat(64)
            ),
        );
        let e = format!("{:#}", fetch(&board, dir.path()).unwrap_err());
        assert!(
            e.contains("nowhere/bl1.bin is missing") && e.contains("hint:"),
            "{e}"
        );
        let board = board_with(
            dir.path(),
            "bl1 = sector=1 source=https://example.invalid/bl1.bin",
        );
        let e = format!("{:#}", fetch(&board, dir.path()).unwrap_err());
        assert!(
            e.contains("is not pinned") && e.contains("example.invalid") && e.contains("hint:"),
            "{e}"
        );
    }
}
