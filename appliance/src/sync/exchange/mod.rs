//! The exchange: what passes between a center and the hub, whether a link or a stick carries it.
//!
//! - [`wire`]: batches, pages and receipts as bytes, and the MACs that prove who sent them.
//! - [`agent`]: a center's side: its outbox in batches, receipts, pulling the hub's log page by page.
//! - [`hub`]: the hub's side: accepting a center's changes under the rules, its log, the centers'
//!   and the centers' cursors.
//! - [`centers`]: the hub's registry of centers and their secrets.
//! - [`inbox`]: the hub's store of received batches, applied in order by one applier.
//! - [`parts`]: a batch or page too large for one request, sent in parts.
//! - [`notify`]: the hub's notifications to the people whose names clashed.

pub mod agent;
pub mod centers;
pub mod hub;
pub mod inbox;
pub mod notify;
pub mod parts;
pub mod wire;
