//! File sync: the blobs of Moodle's filedir, named by the sha1 of their content, moved between a center
//! and the hub for the `files` rows that row sync carries.
//!
//! ```text
//! center (agent, after each row exchange)                     hub (`appliance hub`)
//!   inventory: files rows -> hashes  ──have──────────────►  serve: which it holds (pool)
//!   pool: trash -> filedir (recover) ◄─fetch: chunk run───  pool.read
//!   pool: .part + chunk -> filedir   ──put: chunk run─────►  pool.write -> .part -> filedir
//! ```
//!
//! - [`hash`]: content hashes and Moodle's `<h[0:2]>/<h[2:4]>/<hash>` layout.
//! - [`chunk`]: the checked chunk frames the blobs travel in (over HTTP now, in sticks later).
//! - [`pool`]: a site's filedir, trashdir and partial copies; the atomic, verified placing of a blob.
//! - [`inventory`]: what the `files` table references.
//! - [`priority`], [`window`]: the order blobs move in, and when bulk ones may.
//! - [`protocol`], [`serve`]: the calls (the [`protocol::BlobLink`] the agent makes them through, over
//!   HTTP in [`crate::sync::link::files`]), and the hub's answers.
//! - [`mover`]: the agent's pass; [`sweep`]: Moodle's trash semantics for rows deleted by sync.
//! - [`settings`]: `[files]` in appliance.ini and the hub's keys.

pub mod chunk;
pub mod hash;
pub mod inventory;
pub mod mover;
pub mod pool;
pub mod priority;
pub mod protocol;
pub mod serve;
pub mod settings;
pub mod sweep;
pub mod window;
