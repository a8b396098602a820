//! The file calls between a center's agent and the hub, on the same authenticated HTTP as rows (the
//! request and response MACs of [`crate::sync::exchange::wire`]).
//!
//! - `have`: which of these blobs does the hub hold, and how much of this center's upload of each.
//! - `fetch`: chunks of these blobs from these offsets, up to a byte budget, as a run of
//!   [`crate::sync::files::chunk`] frames the agent writes as they arrive.
//! - `put`: a run of chunks of this center's blobs; the hub writes them to its partial copies and places
//!   each blob once it is complete and its sha1 checks.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::sync::files::chunk::Chunk;

use crate::sync::files::hash::ContentHash;

pub const PREFIX: &str = "/sync/v1/files/";
pub const HAVE: &str = "/sync/v1/files/have";
pub const FETCH: &str = "/sync/v1/files/fetch";
pub const PUT: &str = "/sync/v1/files/put";

/// Most hashes in one `have`.
pub const MAX_HAVE: usize = 20_000;
/// Most data bytes the hub puts in one fetch answer.
pub const MAX_FETCH: u64 = 8 << 20;

/// Hashes travel as 20 raw bytes each, back to back: 10,000 of them are 200 KB, not 800.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hashes(#[serde(with = "serde_bytes")] Vec<u8>);

impl Hashes {
    pub fn new(hashes: &[ContentHash]) -> Hashes {
        Hashes(hashes.iter().flat_map(|h| h.0).collect())
    }

    pub fn decode(&self) -> Result<Vec<ContentHash>> {
        ensure!(self.0.len() % 20 == 0, "a hash list is 20 bytes per hash");
        self.0.chunks(20).map(ContentHash::from_slice).collect()
    }

    pub fn len(&self) -> usize {
        self.0.len() / 20
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the hub holds of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holding {
    Absent,
    /// Bytes of this center's upload it holds (resume there).
    Partial(u64),
    /// The whole blob, this many bytes.
    Live(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Blobs in the order wanted, each from the offset the center holds.
    pub hashes: Hashes,
    pub offsets: Vec<u64>,
    /// Data bytes per chunk.
    pub chunk: u32,
    /// Data bytes in the whole answer.
    pub budget: u64,
}

/// The hub's word on one uploaded chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutResult {
    /// Bytes of the blob the hub now holds.
    Held(u64),
    /// Complete, checked and in the hub's filedir.
    Placed,
    /// Not written, and why (e.g. where to resume).
    Refused(String),
}

/// The agent's file calls to the hub; [`crate::sync::link::files`] makes them over HTTP.
pub trait BlobLink {
    /// What the hub holds of each blob, in the same order.
    fn have(&mut self, hashes: &[ContentHash]) -> Result<Vec<Holding>>;
    /// The hub's chunks for `req`, each handed to `on_chunk` once it has arrived whole and checked. A
    /// cut or a corrupted chunk ends the call with an error after the chunks before it.
    fn fetch(
        &mut self,
        req: &FetchRequest,
        on_chunk: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()>;
    /// Sends chunks, each sealed with this center's secret (the hub keeps the whole ones of a cut
    /// call); the hub's word on each, in order.
    fn put(&mut self, chunks: &[Chunk]) -> Result<Vec<PutResult>>;
}
