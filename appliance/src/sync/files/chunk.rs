//! A piece of a blob as it travels: over HTTP (a fetch answer or an upload is a run of chunks) and, later,
//! in sneakernet sticks (a blob pack is the same run in a file). Each chunk carries its own checksum, so
//! a corrupted one is rejected before a byte of it is written, and a run cut anywhere still yields every
//! chunk before the cut.
//!
//! ```text
//! "KBC1" | hash (20) | total u64 | offset u64 | len u32 | sum (32) | data (len)      integers big-endian
//! sum = sha256("kituo-chunk-v1" | hash | total | offset | len | data)
//! ```
//!
//! The sum covers the header too: a flipped bit in an offset would otherwise write good data in the wrong
//! place. In a fetch answer and a stick it is a checksum, not a signature: the response MAC (and TLS),
//! or the signed manifest, authenticate the whole; and the blob's sha1 is checked before it is placed in
//! any case. An upload's chunks are sealed instead: the sum is an HMAC under the center's secret
//! ([`Seal::Keyed`]), so the hub can keep every whole chunk of an upload the link cut, whose request
//! MAC it can never check, and a cut costs at most the chunk it fell in.

use anyhow::{bail, ensure, Result};
use hmac::Mac;
use sha2::{Digest, Sha256};

use crate::sync::exchange::wire::Secret;
use crate::sync::files::hash::ContentHash;

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

/// What a chunk's sum is: a checksum anyone can make, or an HMAC only a holder of the key can.
#[derive(Clone, Copy)]
pub enum Seal<'a> {
    Checksum,
    Keyed(&'a Secret),
}

impl Seal<'_> {
    fn sum(self, hash: &ContentHash, total: u64, offset: u64, data: &[u8]) -> [u8; 32] {
        match self {
            Seal::Checksum => {
                let mut s = Sha256::new();
                feed(&mut s, hash, total, offset, data);
                s.finalize().into()
            }
            Seal::Keyed(secret) => {
                let mut m = secret.mac();
                feed(&mut m, hash, total, offset, data);
                m.finalize().into_bytes().into()
            }
        }
    }

    fn verify(self, hash: &ContentHash, total: u64, offset: u64, data: &[u8], sum: &[u8]) -> bool {
        match self {
            Seal::Checksum => self.sum(hash, total, offset, data)[..] == *sum,
            Seal::Keyed(secret) => {
                let mut m = secret.mac();
                feed(&mut m, hash, total, offset, data);
                m.verify_slice(sum).is_ok()
            }
        }
    }
}

fn feed(
    d: &mut impl sha2::digest::Update,
    hash: &ContentHash,
    total: u64,
    offset: u64,
    data: &[u8],
) {
    d.update(b"kituo-chunk-v1");
    d.update(&hash.0);
    d.update(&total.to_be_bytes());
    d.update(&offset.to_be_bytes());
    d.update(&(data.len() as u32).to_be_bytes());
    d.update(data);
}

impl Chunk {
    /// Whether this chunk completes its blob.
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.total
    }

    /// Appends the chunk's frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_sealed_into(out, Seal::Checksum);
    }

    pub fn encode_sealed_into(&self, out: &mut Vec<u8>, seal: Seal<'_>) {
        out.reserve(HEADER + self.data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.total.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&seal.sum(&self.hash, self.total, self.offset, &self.data));
        out.extend_from_slice(&self.data);
    }

    pub fn frame_len(&self) -> usize {
        HEADER + self.data.len()
    }
}

/// Encodes a run of chunks.
pub fn encode(chunks: &[Chunk], seal: Seal<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(Chunk::frame_len).sum());
    for c in chunks {
        c.encode_sealed_into(&mut out, seal);
    }
    out
}

/// Decodes a run of chunks from a stream fed in pieces of any size; holds at most one chunk.
pub struct Decoder<'a> {
    buf: Vec<u8>,
    seal: Seal<'a>,
}

impl Default for Decoder<'_> {
    fn default() -> Self {
        Decoder::new(Seal::Checksum)
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl<'a> Decoder<'a> {
    pub fn new(seal: Seal<'a>) -> Decoder<'a> {
        Decoder {
            buf: Vec::new(),
            seal,
        }
    }

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
        let good = self
            .seal
            .verify(&hash, total, offset, &data, &self.buf[44..76]);
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
pub fn decode(bytes: &[u8], seal: Seal<'_>) -> Result<Vec<Chunk>> {
    let (chunks, whole) = decode_prefix(bytes, seal);
    whole?;
    Ok(chunks)
}

/// The chunks of a run up to the first one that is cut short or fails its sum, and why the run does
/// not decode whole (if it does not).
pub fn decode_prefix(bytes: &[u8], seal: Seal<'_>) -> (Vec<Chunk>, Result<()>) {
    let mut out = Vec::new();
    let mut d = Decoder::new(seal);
    let fed = d.feed(bytes, &mut |c| {
        out.push(c);
        Ok(())
    });
    let whole = fed.and_then(|()| {
        ensure!(
            d.pending() == 0,
            "the run of chunks ends in the middle of one"
        );
        Ok(())
    });
    (out, whole)
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
        let run = encode(&chunks(), Seal::Checksum);
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
        let run = encode(&chunks(), Seal::Checksum);
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
        assert!(decode(&run[..run.len() - 1], Seal::Checksum).is_err());
    }

    #[test]
    fn sealed_chunks_need_the_key_and_a_cut_run_keeps_its_whole_chunks() {
        let key = Secret::generate().unwrap();
        let other = Secret::generate().unwrap();
        let run = encode(&chunks(), Seal::Keyed(&key));
        assert_eq!(decode(&run, Seal::Keyed(&key)).unwrap(), chunks());
        assert!(decode(&run, Seal::Keyed(&other)).is_err(), "another key");
        assert!(
            decode(&run, Seal::Checksum).is_err(),
            "a checksum is no seal"
        );
        let forged = encode(&chunks(), Seal::Checksum);
        assert!(
            decode(&forged, Seal::Keyed(&key)).is_err(),
            "a checksum-only run"
        );
        // Cut in the middle of the second chunk: the first is kept, and the run says why it stops.
        let cut = chunks()[0].frame_len() + 10;
        let (kept, whole) = decode_prefix(&run[..cut], Seal::Keyed(&key));
        assert_eq!(kept, chunks()[..1]);
        assert!(whole.is_err());
    }
}
