//! Two-way sync of Moodle's database between the centers and the hub.
//!
//! Changes are captured from MariaDB's row binlog (no triggers, no per-table setup), the rules for each
//! table come from Moodle's own XMLDB schema, and concurrent edits merge column by column under a hybrid
//! logical clock, so every site ends with the same bytes.
//!
//! The rooms, each depending only on the ones above it:
//!
//! - [`schema`]: Moodle's tables as XMLDB declares them, the DDL made from them, and the rules
//!   (`sync-rules.ini`) that say which way each table syncs.
//! - [`engine`]: one site's database: capture from the binlog, record with clocks, merge, apply, and
//!   the store (`kituo_sync`) that holds the log, the watermarks and the row clocks.
//! - [`exchange`]: what passes between a center and the hub, whatever carries it: batches and pages on
//!   the wire, the center's push and pull ([`exchange::agent`]), the hub's accept, log and registry
//!   ([`exchange::hub`]) and its inbox.
//! - the tools around them: [`verify`] (compare and repair against the hub), [`seed`] (a joining
//!   center takes the hub's Moodle), [`files`] (Moodle's blobs), [`stick`] (the exchange on a USB stick
//!   or DVD).
//! - [`link`]: HTTP carrying all of that: the agent's client and its loop, the hub's server, and their
//!   settings.

pub mod engine;
pub mod exchange;
pub mod files;
pub mod link;
pub mod schema;
pub mod seed;
pub mod stick;
pub mod verify;
