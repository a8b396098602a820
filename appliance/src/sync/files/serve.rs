//! The hub's side of the file calls: answers `have`, `fetch` and `put` from its own dataroot. Stateless
//! besides the files on disk, so any number of hub workers (and processes) serve at once.

use anyhow::Result;

use crate::sync::exchange::wire::{self, Secret};
use crate::sync::files::chunk::{self, Chunk, Seal};
use crate::sync::files::hash::ContentHash;
use crate::sync::files::pool::{Found, Pool, Progress};
use crate::sync::files::protocol::{self, FetchRequest, Hashes, Holding, PutResult};

/// A call the hub turns down, with the HTTP status.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl std::fmt::Display) -> Refused {
    Refused {
        status: 400,
        message: message.to_string(),
    }
}

fn failed(e: anyhow::Error) -> Refused {
    eprintln!("hub: files: {e:#}");
    Refused {
        status: 500,
        message: format!("{e:#}"),
    }
}

pub struct HubFiles {
    pool: Pool,
}

/// The tag of a center's partial uploads at the hub: one copy per center, so two centers sending the
/// same blob never write into each other's.
fn upload_tag(center: u32) -> String {
    format!(".from{center}")
}

impl HubFiles {
    pub fn new(pool: Pool) -> HubFiles {
        HubFiles { pool }
    }

    /// Answers one file call from `center`. `referenced` says whether the hub's Moodle references a
    /// hash (uploads of anything else are refused).
    pub fn answer(
        &self,
        path: &str,
        center: u32,
        key: &Secret,
        body: &[u8],
        referenced: &mut dyn FnMut(&ContentHash) -> Result<bool>,
    ) -> Result<Vec<u8>, Refused> {
        match path {
            protocol::HAVE => {
                let hashes: Hashes = wire::decode(body).map_err(bad)?;
                if hashes.len() > protocol::MAX_HAVE {
                    return Err(bad(format!(
                        "at most {} hashes per call",
                        protocol::MAX_HAVE
                    )));
                }
                let holding: Vec<Holding> = hashes
                    .decode()
                    .map_err(bad)?
                    .iter()
                    .map(|h| self.holding(h, center))
                    .collect();
                wire::encode(&holding).map_err(failed)
            }
            protocol::FETCH => {
                let req: FetchRequest = wire::decode(body).map_err(bad)?;
                self.fetch(&req).map_err(failed)
            }
            protocol::PUT => {
                let chunks = chunk::decode(body, Seal::Keyed(key)).map_err(bad)?;
                let results = self.put(center, chunks, referenced)?;
                wire::encode(&results).map_err(failed)
            }
            _ => Err(Refused {
                status: 404,
                message: format!("no such file call: {path}"),
            }),
        }
    }

    fn holding(&self, hash: &ContentHash, center: u32) -> Holding {
        match self.pool.find(hash) {
            Found::Live(size) => Holding::Live(size),
            // A trashed blob still serves a center that has a row for it; Moodle recovers it here
            // when a file references it again.
            Found::Trashed(p) => {
                std::fs::metadata(p).map_or(Holding::Absent, |m| Holding::Live(m.len()))
            }
            Found::Absent => match self.pool.part_len(hash, &upload_tag(center)) {
                0 => Holding::Absent,
                n => Holding::Partial(n),
            },
        }
    }

    /// The chunks asked for, whole blobs in order from their offsets, until the budget is spent.
    /// Blobs the hub does not hold are left out (the center learns it from `have`).
    fn fetch(&self, req: &FetchRequest) -> Result<Vec<u8>> {
        let hashes = req.hashes.decode()?;
        anyhow::ensure!(hashes.len() == req.offsets.len(), "one offset per hash");
        let chunk = (req.chunk as usize).clamp(1, chunk::MAX_CHUNK);
        let mut budget = req.budget.min(protocol::MAX_FETCH);
        let mut out = Vec::new();
        for (hash, &start) in hashes.iter().zip(&req.offsets) {
            let mut offset = start;
            while budget > 0 {
                let max = chunk.min(budget as usize);
                let Some((total, data)) = self.pool.read(hash, offset, max)? else {
                    break;
                };
                if data.is_empty() && offset > 0 {
                    break;
                }
                budget -= data.len() as u64;
                let c = Chunk {
                    hash: *hash,
                    total,
                    offset,
                    data,
                };
                offset += c.data.len() as u64;
                c.encode_into(&mut out);
                if offset >= total {
                    break;
                }
            }
            if budget == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Keeps the whole, correctly sealed chunks of an upload whose request could not be authenticated
    /// (the link cut it: its MAC covers the whole body); returns how many were written. Each chunk's
    /// seal proves `center` sent it, and a replayed chunk writes the same bytes again.
    pub fn salvage(
        &self,
        center: u32,
        key: &Secret,
        body: &[u8],
        referenced: &mut dyn FnMut(&ContentHash) -> Result<bool>,
    ) -> usize {
        let (chunks, _) = chunk::decode_prefix(body, Seal::Keyed(key));
        let results = self.put(center, chunks, referenced).unwrap_or_default();
        results
            .iter()
            .filter(|r| matches!(r, PutResult::Held(_) | PutResult::Placed))
            .count()
    }

    fn put(
        &self,
        center: u32,
        chunks: Vec<Chunk>,
        referenced: &mut dyn FnMut(&ContentHash) -> Result<bool>,
    ) -> Result<Vec<PutResult>, Refused> {
        let tag = upload_tag(center);
        let mut results = Vec::with_capacity(chunks.len());
        for c in chunks {
            let result = if let Found::Live(_) = self.pool.find(&c.hash) {
                // Another center (or Moodle) placed it meanwhile: nothing more to send.
                PutResult::Placed
            } else if !referenced(&c.hash).map_err(failed)? {
                PutResult::Refused(format!(
                    "no file at the hub references {}; send its row first",
                    c.hash
                ))
            } else {
                match self.pool.write(&c, &tag) {
                    Ok(Progress::Partial(n)) => PutResult::Held(n),
                    Ok(Progress::Placed) => PutResult::Placed,
                    Err(e) => PutResult::Refused(format!("{e:#}")),
                }
            };
            results.push(result);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::files::pool::Perms;

    fn upload(data: &[u8], size: usize) -> Vec<Chunk> {
        (0..data.len())
            .step_by(size)
            .map(|offset| Chunk {
                hash: ContentHash::of(data),
                total: data.len() as u64,
                offset: offset as u64,
                data: data[offset..(offset + size).min(data.len())].to_vec(),
            })
            .collect()
    }

    #[test]
    fn a_cut_upload_keeps_its_whole_sealed_chunks_and_nothing_unsealed() {
        let dir = tempfile::tempdir().unwrap();
        let files = HubFiles::new(Pool::new(dir.path(), Perms::default()).unwrap());
        let (key, other) = (Secret::generate().unwrap(), Secret::generate().unwrap());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13) as u8).collect();
        let hash = ContentHash::of(&data);
        let chunks = upload(&data, 4000);
        let cut = chunks[0].frame_len() + chunks[1].frame_len() + 100;
        let mut yes = |_: &ContentHash| Ok(true);

        // Sealed by someone else, or only checksummed: nothing is kept.
        let forged = chunk::encode(&chunks, Seal::Keyed(&other));
        assert_eq!(files.salvage(2, &key, &forged[..cut], &mut yes), 0);
        let plain = chunk::encode(&chunks, Seal::Checksum);
        assert_eq!(files.salvage(2, &key, &plain[..cut], &mut yes), 0);
        assert_eq!(files.holding(&hash, 2), Holding::Absent);

        // The center's own, cut in the third chunk: the two whole ones are kept, for center 2 only.
        let sealed = chunk::encode(&chunks, Seal::Keyed(&key));
        assert_eq!(files.salvage(2, &key, &sealed[..cut], &mut yes), 2);
        assert_eq!(files.holding(&hash, 2), Holding::Partial(8000));
        assert_eq!(files.holding(&hash, 3), Holding::Absent);

        // The resumed call sends the rest, through the authenticated path.
        let rest = chunk::encode(&chunks[2..], Seal::Keyed(&key));
        let answer = files
            .answer(protocol::PUT, 2, &key, &rest, &mut yes)
            .unwrap_or_else(|r| panic!("{}", r.message));
        let results: Vec<PutResult> = wire::decode(&answer).unwrap();
        assert_eq!(results, vec![PutResult::Placed]);
        assert_eq!(files.holding(&hash, 2), Holding::Live(10_000));
    }
}
