//! The agent's file calls ([`BlobLink`]) over the row sync's authenticated (and throttled) HTTP link.

use anyhow::{ensure, Result};

use crate::sync::exchange::wire;
use crate::sync::files::chunk::{self, Chunk, Decoder, Seal};
use crate::sync::files::hash::ContentHash;
use crate::sync::files::protocol::{self, BlobLink, FetchRequest, Hashes, Holding, PutResult};
use crate::sync::link::http::HttpLink;

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
