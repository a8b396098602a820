//! One file of a stick, self-verifying, so that each volume of a half-copied stick is judged alone:
//!
//! ```text
//! payload (row batches, then a run of blob chunks) | manifest (JSON) | tag (32) | manifest len u32 | "KBV1"
//! tag = HMAC-SHA256(center's sync secret, "kituo-bundle-v1\n" | manifest)
//! ```
//!
//! The manifest is at the end because only then are the payload's length and digest known, and a
//! truncated copy (the usual way a stick is half-copied) loses its end first: it fails at once.
//! Volumes are written as `.part` files and renamed once all are sealed (each manifest names how many
//! there are, so a missing one is noticed).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::sync::exchange::wire::{self, Secret};
use crate::sync::files::chunk::{self, Chunk, Decoder};
use crate::sync::stick::manifest::{self, Manifest, Region, RowBatch};

const MAGIC: &[u8; 4] = b"KBV1";
/// Tag, manifest length and magic.
const TAIL: u64 = 32 + 4 + 4;
/// Room kept for one more row batch's entry in the manifest.
const ENTRY: u64 = 256;
/// Largest manifest a reader accepts (volume 1 may list many wanted blobs).
const MAX_MANIFEST: u32 = 64 << 20;

struct Draft {
    part: PathBuf,
    out: BufWriter<File>,
    sha: Sha256,
    manifest: Manifest,
    /// The manifest's length as it will be written, at most (recomputed when a batch is added).
    manifest_max: u64,
}

/// Reads a blob's bytes from an offset, at most so many: its size and the bytes, `None` if it is gone
/// (as `Pool::read`).
pub type ReadBlob<'a> = dyn FnMut(u64, usize) -> Result<Option<(u64, Vec<u8>)>> + 'a;

/// Writes a stick's volumes, each at most `limit` bytes.
pub struct Writer {
    dir: PathBuf,
    limit: u64,
    head: Manifest,
    vols: Vec<Draft>,
    secret: Secret,
}

/// The manifest's length with every number at its widest.
fn widest_len(m: &Manifest) -> Result<u64> {
    let mut w = m.clone();
    w.index = u32::MAX;
    w.volumes = u32::MAX;
    w.payload_len = u64::MAX;
    w.payload_sha256 = "0".repeat(64);
    w.chunks = Region {
        offset: u64::MAX,
        len: u64::MAX,
    };
    Ok(w.to_json()?.len() as u64)
}

impl Writer {
    /// `head` gives the stick's fields (ids, sites, state, volume 1's lists); the rest is filled in.
    pub fn create(dir: &Path, limit: u64, head: Manifest, secret: Secret) -> Result<Writer> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut w = Writer {
            dir: dir.to_owned(),
            limit,
            head,
            vols: Vec::new(),
            secret,
        };
        w.next_volume()?;
        Ok(w)
    }

    fn next_volume(&mut self) -> Result<()> {
        let index = self.vols.len() as u32 + 1;
        let mut manifest = self.head.clone();
        manifest.index = index;
        if index > 1 {
            manifest.wants.clear();
            manifest.held.clear();
        }
        let part = self.dir.join(format!(
            "kituo-{}-to-{}-{}-{index:03}.part",
            manifest::site_name(manifest.from),
            manifest::site_name(manifest.to),
            manifest.stick
        ));
        let file =
            File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
        let manifest_max = widest_len(&manifest)?;
        ensure!(
            manifest_max + TAIL + ENTRY + chunk::HEADER as u64 + 1024 < self.limit,
            "a volume of {} bytes cannot even hold its manifest ({manifest_max} bytes); use a larger \
             --volume-size",
            self.limit
        );
        self.vols.push(Draft {
            part,
            out: BufWriter::with_capacity(1 << 20, file),
            sha: Sha256::new(),
            manifest,
            manifest_max,
        });
        Ok(())
    }

    fn current(&mut self) -> &mut Draft {
        self.vols.last_mut().expect("created with one volume")
    }

    /// Payload bytes the current volume still has room for, keeping room for one more manifest entry.
    fn room(&mut self) -> u64 {
        let limit = self.limit;
        let d = self.current();
        limit.saturating_sub(d.manifest.payload_len + d.manifest_max + TAIL + ENTRY)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let d = self.current();
        d.out
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", d.part.display()))?;
        d.sha.update(bytes);
        d.manifest.payload_len += bytes.len() as u64;
        Ok(())
    }

    /// Adds a batch of row changes (encoded as on the link). Batches come before any blob.
    pub fn add_rows(&mut self, after: u64, last: u64, body: &[u8]) -> Result<()> {
        ensure!(
            body.len() <= wire::MAX_BATCH,
            "a batch of {} bytes is larger than a stick takes",
            body.len()
        );
        if self.room() < body.len() as u64 {
            if self.current().manifest.payload_len == 0 {
                bail!(
                    "a batch of {} bytes does not fit in a volume of {} bytes; use a larger \
                     --volume-size",
                    body.len(),
                    self.limit
                );
            }
            self.next_volume()?;
        }
        ensure!(
            self.current().manifest.chunks.len == 0,
            "row batches go before blobs in a stick"
        );
        let offset = self.current().manifest.payload_len;
        self.write(body)?;
        let d = self.current();
        d.manifest.rows.push(RowBatch {
            after,
            last,
            offset,
            len: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body)),
        });
        d.manifest_max = widest_len(&d.manifest)?;
        Ok(())
    }

    /// Adds a whole blob in chunks of at most `chunk` bytes, starting a new volume where one is full;
    /// `read(offset, max)` gives the blob's size and bytes from `offset` (`None`: it is gone).
    /// Returns false if the blob was gone.
    pub fn add_blob(
        &mut self,
        hash: crate::sync::files::hash::ContentHash,
        chunk_size: usize,
        read: &mut ReadBlob<'_>,
    ) -> Result<bool> {
        let mut offset = 0;
        loop {
            let mut room = self.room().saturating_sub(chunk::HEADER as u64);
            if room < 1024 {
                self.next_volume()?;
                room = self.room().saturating_sub(chunk::HEADER as u64);
            }
            let max = (chunk_size as u64).min(room) as usize;
            let Some((total, data)) = read(offset, max)? else {
                ensure!(offset == 0, "blob {hash} changed while it was exported");
                return Ok(false);
            };
            let c = Chunk {
                hash,
                total,
                offset,
                data,
            };
            if self.current().manifest.chunks.len == 0 {
                let at = self.current().manifest.payload_len;
                self.current().manifest.chunks.offset = at;
            }
            let mut frame = Vec::with_capacity(c.frame_len());
            c.encode_into(&mut frame);
            self.write(&frame)?;
            self.current().manifest.chunks.len += frame.len() as u64;
            offset += c.data.len() as u64;
            if offset >= total {
                return Ok(true);
            }
            ensure!(!c.data.is_empty(), "blob {hash} ended early while exported");
        }
    }

    /// Seals every volume (manifest, tag) and gives it its final name; returns the paths and bytes.
    pub fn finish(self) -> Result<(Vec<PathBuf>, u64)> {
        let volumes = self.vols.len() as u32;
        let mut paths = Vec::new();
        let mut bytes = 0;
        for d in self.vols {
            let mut m = d.manifest;
            m.volumes = volumes;
            m.payload_sha256 = hex::encode(d.sha.finalize());
            let json = m.to_json()?;
            let mut out = d.out;
            out.write_all(&json)?;
            out.write_all(&manifest::sign(&self.secret, &json))?;
            out.write_all(&(json.len() as u32).to_be_bytes())?;
            out.write_all(MAGIC)?;
            let file = out
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("cannot write {}", d.part.display()))?;
            // On a stick pulled right after the command returns, a volume must be whole or absent.
            file.sync_all()
                .with_context(|| format!("cannot sync {}", d.part.display()))?;
            bytes += file.metadata()?.len();
            let path = self.dir.join(m.file_name(m.index));
            std::fs::rename(&d.part, &path)
                .with_context(|| format!("cannot rename {}", d.part.display()))?;
            paths.push(path);
        }
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok((paths, bytes))
    }
}

/// A volume whose tag and payload digest check out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub bytes: u64,
}

/// Reads a volume's manifest and checks it: its tag under the key `key` gives for its sites (which may
/// refuse: a stick for another site, or from an unknown one), then every payload byte against the
/// digest. Nothing of a volume is used before this passes.
pub fn verify(path: &Path, key: &mut dyn FnMut(&Manifest) -> Result<Secret>) -> Result<Verified> {
    let name = path.display();
    let mut f = File::open(path).with_context(|| format!("cannot open {name}"))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot read {name}"))?
        .len();
    let truncated = || format!("{name} is truncated or not a Kituo volume (it has no trailer)");
    ensure!(len >= TAIL, "{}", truncated());
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::Start(len - 8))?;
    f.read_exact(&mut tail)
        .with_context(|| format!("cannot read {name}"))?;
    ensure!(&tail[4..] == MAGIC, "{}", truncated());
    let manifest_len = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
    ensure!(
        manifest_len <= MAX_MANIFEST && u64::from(manifest_len) + TAIL <= len,
        "{name} is damaged: its trailer gives a manifest of {manifest_len} bytes"
    );
    let payload_len = len - TAIL - u64::from(manifest_len);
    let mut json = vec![0u8; manifest_len as usize];
    let mut tag = [0u8; 32];
    f.seek(SeekFrom::Start(payload_len))?;
    f.read_exact(&mut json)
        .with_context(|| format!("cannot read {name}"))?;
    f.read_exact(&mut tag)
        .with_context(|| format!("cannot read {name}"))?;
    let manifest = Manifest::from_json(&json)
        .with_context(|| format!("{name} is damaged: its manifest does not parse"))?;
    let secret = key(&manifest).with_context(|| format!("{name} is refused"))?;
    ensure!(
        manifest::verify(&secret, &json, &tag),
        "{name}: the signature does not verify: the volume is damaged, or it was not signed with \
         site {}'s key",
        manifest::site_name(manifest.from)
    );
    ensure!(
        manifest.format == manifest::FORMAT,
        "{name} has stick format {}; this appliance reads {}",
        manifest.format,
        manifest::FORMAT
    );
    ensure!(
        manifest.payload_len == payload_len,
        "{name} is damaged: {payload_len} payload bytes where its manifest says {}",
        manifest.payload_len
    );
    f.seek(SeekFrom::Start(0))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = payload_len;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n])
            .with_context(|| format!("cannot read {name}"))?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    ensure!(
        hex::encode(sha.finalize()) == manifest.payload_sha256,
        "{name} is damaged: its content does not match the digest its signed manifest gives"
    );
    Ok(Verified {
        path: path.to_owned(),
        manifest,
        bytes: len,
    })
}

impl Verified {
    /// A row batch's bytes, checked again against the manifest (the stick may change under us).
    pub fn read_rows(&self, batch: &RowBatch) -> Result<Vec<u8>> {
        let name = self.path.display();
        ensure!(
            batch.len <= wire::MAX_BATCH as u64
                && batch.offset.saturating_add(batch.len) <= self.manifest.payload_len,
            "{name}: a row batch lies outside the payload"
        );
        let mut f = File::open(&self.path).with_context(|| format!("cannot open {name}"))?;
        f.seek(SeekFrom::Start(batch.offset))?;
        let mut body = vec![0u8; batch.len as usize];
        f.read_exact(&mut body)
            .with_context(|| format!("cannot read {name}"))?;
        ensure!(
            hex::encode(Sha256::digest(&body)) == batch.sha256,
            "{name} changed since it was verified (a row batch does not match its digest)"
        );
        Ok(body)
    }

    /// Hands each blob chunk, checked, to `on_chunk` in order.
    pub fn chunks(&self, on_chunk: &mut dyn FnMut(Chunk) -> Result<()>) -> Result<()> {
        let name = self.path.display();
        let region = self.manifest.chunks;
        if region.len == 0 {
            return Ok(());
        }
        ensure!(
            region.offset.saturating_add(region.len) <= self.manifest.payload_len,
            "{name}: the blob chunks lie outside the payload"
        );
        let mut f = File::open(&self.path).with_context(|| format!("cannot open {name}"))?;
        f.seek(SeekFrom::Start(region.offset))?;
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = region.len;
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            f.read_exact(&mut buf[..n])
                .with_context(|| format!("cannot read {name}"))?;
            decoder
                .feed(&buf[..n], on_chunk)
                .with_context(|| format!("in {name}"))?;
            left -= n as u64;
        }
        ensure!(
            decoder.pending() == 0,
            "{name}: the blob chunks end in the middle of one"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::files::hash::ContentHash;

    fn head() -> Manifest {
        Manifest {
            format: manifest::FORMAT,
            stick: "00aa".into(),
            from: 3,
            to: manifest::HUB,
            made_at: 1,
            index: 0,
            volumes: 0,
            payload_len: 0,
            payload_sha256: String::new(),
            rows: Vec::new(),
            chunks: Region::default(),
            acked: 0,
            cursor: 7,
            wants: vec!["ab".repeat(20)],
            held: Vec::new(),
            seed: None,
        }
    }

    /// Writes rows and a blob spanning volumes; returns the volumes, the blob and the secret.
    fn stick(dir: &Path) -> (Vec<PathBuf>, Vec<u8>, Secret) {
        let secret = Secret::generate().unwrap();
        let mut w = Writer::create(dir, 200_000, head(), secret.clone()).unwrap();
        w.add_rows(0, 5, &[1u8; 90_000]).unwrap();
        w.add_rows(5, 9, &[2u8; 90_000]).unwrap();
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let hash = ContentHash::of(&blob);
        let mut read = |offset: u64, max: usize| -> Result<Option<(u64, Vec<u8>)>> {
            let end = (offset as usize + max).min(blob.len());
            Ok(Some((
                blob.len() as u64,
                blob[offset as usize..end].to_vec(),
            )))
        };
        assert!(w.add_blob(hash, 64 * 1024, &mut read).unwrap());
        let (paths, _) = w.finish().unwrap();
        (paths, blob, secret)
    }

    #[test]
    fn volumes_fit_their_size_verify_alone_and_refuse_any_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, blob, secret) = stick(dir.path());
        assert!(paths.len() >= 3, "{} volumes", paths.len());
        let mut key = |_: &Manifest| Ok(secret.clone());
        let mut data = Vec::new();
        let mut rows = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            assert!(std::fs::metadata(p).unwrap().len() <= 200_000);
            let v = verify(p, &mut key).unwrap();
            assert_eq!(v.manifest.index as usize, i + 1);
            assert_eq!(v.manifest.volumes as usize, paths.len());
            assert_eq!(v.manifest.wants.len(), usize::from(i == 0));
            assert_eq!(
                p.file_name().unwrap().to_str().unwrap(),
                v.manifest.file_name(v.manifest.index)
            );
            for b in &v.manifest.rows {
                rows.push((b.after, b.last, v.read_rows(b).unwrap().len()));
            }
            v.chunks(&mut |c| {
                assert_eq!(c.offset as usize, data.len());
                data.extend_from_slice(&c.data);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(rows, vec![(0, 5, 90_000), (5, 9, 90_000)]);
        assert!(data == blob, "the blob comes back whole");

        let last = paths.last().unwrap();
        let good = std::fs::read(last).unwrap();
        let try_with = |bytes: &[u8]| {
            std::fs::write(last, bytes).unwrap();
            let e = verify(last, &mut |_| Ok(secret.clone())).unwrap_err();
            format!("{e:#}")
        };
        for at in [10, good.len() - 60, good.len() - 20, good.len() - 2] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let e = try_with(&bad);
            assert!(e.contains(&last.display().to_string()), "flip at {at}: {e}");
        }
        let e = try_with(&good[..good.len() - 1000]);
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(last, &good).unwrap();
        let other = Secret::generate().unwrap();
        let e = format!(
            "{:#}",
            verify(last, &mut |_| Ok(other.clone())).unwrap_err()
        );
        assert!(e.contains("signature does not verify"), "{e}");
        let e = format!(
            "{:#}",
            verify(last, &mut |_| anyhow::bail!("from an unknown site")).unwrap_err()
        );
        assert!(e.contains("unknown site") && e.contains("refused"), "{e}");
    }
}
