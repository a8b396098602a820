//! A piece of a blob as it travels: over HTTP (a fetch answer or an upload is a run of chunks) and, later,
//! in sneakernet bundles (a blob pack is the same run in a file). Each chunk carries its own checksum, so
//! a corrupted one is rejected before a byte of it is written, and a run cut anywhere still yields every
//! chunk before the cut.
//!
//! ```text
//! "KBC1" | hash (20) | total u64 | offset u64 | len u32 | sum (32) | data (len)      integers big-endian
//! sum = sha256("kituo-chunk-v1" | hash | total | offset | len | data)
//! ```
//!
//! The sum covers the header too: a flipped bit in an offset would otherwise write good data in the wrong
//! place. It is a checksum, not a signature: over HTTP the response MAC (and TLS) authenticate, in a
//! bundle the signed manifest does, and the blob's sha1 is checked before it is placed in any case.

use anyhow::{bail, ensure, Result};
use sha2::{Digest, Sha256};

use super::hash::ContentHash;

const MAGIC: &[u8; 4] = b"KBC1";
pub const HEADER: usize = 4 + 20 + 8 + 8 + 4 + 32;
/// Largest chunk either side accepts.
pub const MAX_CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub hash: ContentHash,
    /// The whole blob's size.
    pub total: u64,
    pub offset: u64,
    pub data: Vec<u8>,
}

fn sum(hash: &ContentHash, total: u64, offset: u64, data: &[u8]) -> [u8; 32] {
    let mut s = Sha256::new();
    s.update(b"kituo-chunk-v1");
    s.update(hash.0);
    s.update(total.to_be_bytes());
    s.update(offset.to_be_bytes());
    s.update((data.len() as u32).to_be_bytes());
    s.update(data);
    s.finalize().into()
}

impl Chunk {
    /// Whether this chunk completes its blob.
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.total
    }

    /// Appends the chunk's frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER + self.data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.total.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&sum(&self.hash, self.total, self.offset, &self.data));
        out.extend_from_slice(&self.data);
    }

    pub fn frame_len(&self) -> usize {
        HEADER + self.data.len()
    }
}

/// Encodes a run of chunks.
pub fn encode(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(Chunk::frame_len).sum());
    for c in chunks {
        c.encode_into(&mut out);
    }
    out
}

/// Decodes a run of chunks from a stream fed in pieces of any size; holds at most one chunk.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Decoder {
    /// Takes the next bytes of the run; hands each complete, checked chunk to `on_chunk` in order. A
    /// chunk whose sum does not match is an error, and nothing of it reaches `on_chunk`.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        on_chunk: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        loop {
            // Copy only what completes the frame in hand, so the buffer never holds more than one.
            let want = self.frame_len()?.unwrap_or(HEADER);
            let take = want.saturating_sub(self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            match self.frame_len()? {
                Some(len) if self.buf.len() == len => {
                    let chunk = self.take_chunk()?;
                    on_chunk(chunk)?;
                }
                _ if bytes.is_empty() => return Ok(()),
                _ => {}
            }
        }
    }

    /// Bytes of an incomplete chunk held: not zero at the end of a run means it was cut short.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The length of the frame in the buffer, once its header is in.
    fn frame_len(&self) -> Result<Option<usize>> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        ensure!(
            &self.buf[..4] == MAGIC,
            "not a chunk (the run is out of step or not a blob stream)"
        );
        let (total, offset) = (be_u64(&self.buf[24..]), be_u64(&self.buf[32..]));
        let len = u32::from_be_bytes([self.buf[40], self.buf[41], self.buf[42], self.buf[43]]);
        let len = len as usize;
        ensure!(
            len <= MAX_CHUNK,
            "a chunk of {len} bytes is larger than allowed"
        );
        ensure!(
            offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= total),
            "a chunk at {offset} of {len} bytes lies beyond its blob's {total} bytes"
        );
        Ok(Some(HEADER + len))
    }

    fn take_chunk(&mut self) -> Result<Chunk> {
        let hash = ContentHash::from_slice(&self.buf[4..24])?;
        let (total, offset) = (be_u64(&self.buf[24..]), be_u64(&self.buf[32..]));
        let data = self.buf[HEADER..].to_vec();
        let good = sum(&hash, total, offset, &data)[..] == self.buf[44..76];
        self.buf.clear();
        if !good {
            bail!("a chunk of {hash} at offset {offset} is corrupt (its checksum does not match); it is dropped");
        }
        Ok(Chunk {
            hash,
            total,
            offset,
            data,
        })
    }
}

/// Decodes a whole run held in memory (an upload's body).
pub fn decode(bytes: &[u8]) -> Result<Vec<Chunk>> {
    let mut out = Vec::new();
    let mut d = Decoder::default();
    d.feed(bytes, &mut |c| {
        out.push(c);
        Ok(())
    })?;
    ensure!(
        d.pending() == 0,
        "the run of chunks ends in the middle of one"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks() -> Vec<Chunk> {
        let a = vec![7u8; 1000];
        vec![
            Chunk {
                hash: ContentHash::of(&a),
                total: 1000,
                offset: 0,
                data: a[..600].to_vec(),
            },
            Chunk {
                hash: ContentHash::of(&a),
                total: 1000,
                offset: 600,
                data: a[600..].to_vec(),
            },
            Chunk {
                hash: ContentHash::of(b"x"),
                total: 1,
                offset: 0,
                data: b"x".to_vec(),
            },
        ]
    }

    #[test]
    fn a_run_decodes_from_pieces_of_any_size() {
        let run = encode(&chunks());
        for piece in [1, 7, 76, 100, 4096] {
            let mut got = Vec::new();
            let mut d = Decoder::default();
            for p in run.chunks(piece) {
                d.feed(p, &mut |c| {
                    got.push(c);
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(got, chunks(), "pieces of {piece}");
            assert_eq!(d.pending(), 0);
        }
        assert!(chunks()[1].is_last() && !chunks()[0].is_last());
    }

    #[test]
    fn a_flipped_byte_anywhere_is_caught_and_earlier_chunks_survive() {
        let run = encode(&chunks());
        let second = chunks()[0].frame_len();
        for at in [second + 5, second + 30, second + HEADER + 3] {
            let mut bad = run.clone();
            bad[at] ^= 0x20;
            let mut got = Vec::new();
            let r = Decoder::default().feed(&bad, &mut |c| {
                got.push(c);
                Ok(())
            });
            assert!(r.is_err(), "flip at {at}");
            assert_eq!(got, chunks()[..1], "flip at {at}");
        }
        // Cut short: the complete chunks come out, the rest is reported pending.
        let mut d = Decoder::default();
        let mut n = 0;
        d.feed(&run[..run.len() - 1], &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, d.pending() > 0), (2, true));
        assert!(decode(&run[..run.len() - 1]).is_err());
    }
}
