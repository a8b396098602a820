//! The engine: one site's Moodle database and its bookkeeping, the same code at a center and at the hub.
//!
//! - [`capture`]: committed row changes read from MariaDB's row binlog.
//! - [`record`]: captured transactions turned into logged changes, stamped by the [`clock`] at their
//!   commit (in the hub's time: [`skew`]) and numbered, with the row clocks [`merge`] needs; [`follow`]
//!   records continuously beside Moodle.
//! - [`apply`]: changes from elsewhere merged into this site's rows; [`replay`] what waited for a
//!   Moodle upgrade; [`clash`]: the names two people or things shared, and how they were told apart.
//! - [`store`]: the `kituo_sync` database (log, state, watermarks, row clocks, tombstones).
//! - [`policy`]: the rules as the engine asks them; [`site`]: the engine over one database;
//!   [`change`]: rows and values as they travel; [`sql`]: names and values as MariaDB takes them.

pub mod apply;
pub mod caches;
pub mod capture;
pub mod change;
pub mod clash;
pub mod clock;
pub mod follow;
pub mod merge;
pub mod policy;
pub mod record;
pub mod replay;
pub mod site;
pub mod skew;
pub mod sql;
pub mod store;
