//! The agent's file calls to the hub, over the row sync's authenticated (and throttled) HTTP link.

use anyhow::{ensure, Result};

use super::chunk::{self, Chunk, Decoder, Seal};
use super::hash::ContentHash;
use super::protocol::{self, FetchRequest, Hashes, Holding, PutResult};
use crate::sync::http_link::HttpLink;
use crate::sync::wire;

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

impl BlobLink for HttpLink {
    fn have(&mut self, hashes: &[ContentHash]) -> Result<Vec<Holding>> {
        let body = wire::encode(&Hashes::new(hashes))?;
        let holding: Vec<Holding> = wire::decode(&self.call("POST", protocol::HAVE, &body)?)?;
        ensure!(
            holding.len() == hashes.len(),
            "the hub answered for {} of {} blobs",
            holding.len(),
            hashes.len()
        );
        Ok(holding)
    }

    fn fetch(
        &mut self,
        req: &FetchRequest,
        on_chunk: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        let body = wire::encode(req)?;
        let mut decoder = Decoder::default();
        self.call_streamed("POST", protocol::FETCH, &body, &mut |piece| {
            decoder.feed(piece, on_chunk)
        })?;
        ensure!(
            decoder.pending() == 0,
            "the hub's answer ends in the middle of a chunk"
        );
        Ok(())
    }

    fn put(&mut self, chunks: &[Chunk]) -> Result<Vec<PutResult>> {
        let body = chunk::encode(chunks, Seal::Keyed(self.secret()));
        let results: Vec<PutResult> = wire::decode(&self.call("POST", protocol::PUT, &body)?)?;
        ensure!(
            results.len() == chunks.len(),
            "the hub answered for {} of {} chunks",
            results.len(),
            chunks.len()
        );
        Ok(results)
    }
}
