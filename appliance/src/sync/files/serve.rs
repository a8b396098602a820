//! The hub's side of the file calls: answers `have`, `fetch` and `put` from its own dataroot. Stateless
//! besides the files on disk, so any number of hub workers (and processes) serve at once.

use anyhow::Result;

use super::chunk::{self, Chunk};
use super::hash::ContentHash;
use super::pool::{Found, Pool, Progress};
use super::protocol::{self, FetchRequest, Hashes, Holding, PutResult};
use crate::sync::wire;

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
                let chunks = chunk::decode(body).map_err(bad)?;
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
