//! A blob's name: the sha1 of its content, as Moodle writes it in `files.contenthash` and uses as the
//! file name in its pool.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha1::{Digest, Sha1};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 20]);

/// sha1 of no bytes. Moodle's directory entries and empty files carry it, and Moodle treats it as always
/// readable without a file in the pool, so it is never transferred.
pub const EMPTY: ContentHash = ContentHash([
    0xda, 0x39, 0xa3, 0xee, 0x5e, 0x6b, 0x4b, 0x0d, 0x32, 0x55, 0xbf, 0xef, 0x95, 0x60, 0x18, 0x90,
    0xaf, 0xd8, 0x07, 0x09,
]);

impl ContentHash {
    /// Parses 40 hex digits; Moodle writes them lowercase, and only that form names a pool file.
    pub fn parse(text: &str) -> Result<ContentHash> {
        if text.len() != 40 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("'{text}' is not a content hash (40 lowercase hex digits)");
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(text, &mut bytes).context("not hex")?;
        Ok(ContentHash(bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<ContentHash> {
        let bytes: [u8; 20] = bytes
            .try_into()
            .with_context(|| format!("a content hash has 20 bytes, not {}", bytes.len()))?;
        Ok(ContentHash(bytes))
    }

    pub fn of(data: &[u8]) -> ContentHash {
        ContentHash(Sha1::digest(data).into())
    }

    /// The sha1 of a file's content, read in pieces (a video does not fit in a board's memory).
    pub fn of_file(path: &Path) -> Result<ContentHash> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut sha = Sha1::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                return Ok(ContentHash(sha.finalize().into()));
            }
            sha.update(&buf[..n]);
        }
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `<h[0:2]>/<h[2:4]>/<hash>` under a pool root, as Moodle's `get_contentpath_from_hash`.
    pub fn pool_path(&self, root: &Path) -> PathBuf {
        let h = self.hex();
        root.join(&h[0..2]).join(&h[2..4]).join(h)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_only_in_moodles_form_and_lay_out_like_moodle() {
        assert_eq!(ContentHash::of(b""), EMPTY);
        let h = ContentHash::parse("a644edcd00a8528c5953b3b310d797c1ef3f2f1d").unwrap();
        assert_eq!(h.hex(), "a644edcd00a8528c5953b3b310d797c1ef3f2f1d");
        assert_eq!(
            h.pool_path(Path::new("/d/filedir")),
            Path::new("/d/filedir/a6/44/a644edcd00a8528c5953b3b310d797c1ef3f2f1d")
        );
        for bad in [
            "A644EDCD00A8528C5953B3B310D797C1EF3F2F1D",
            "a644",
            "../../etc/passwd",
            "",
        ] {
            assert!(ContentHash::parse(bad).is_err(), "{bad}");
        }
    }
}
