//! Change capture: committed row changes of the Moodle database, read from MariaDB's row binlog.
//!
//! The server must log in ROW format with full row images and column names (see
//! [`check_settings`]); the reader then connects as a replica (see [`BinlogReader`] for the grant it
//! needs) and returns whole transactions with their GTID and the binlog position just after their
//! commit. No triggers, no per-table setup: a Moodle upgrade that adds a table or a column is seen in
//! the next TABLE_MAP event.
//!
//! The binlog protocol, row decoding and TABLE_MAP metadata are the `mysql` crate's (`mysql_common`);
//! [`mariadb`] adds the few MariaDB-only pieces it lacks.

mod group;
pub mod mariadb;
mod pos;
mod reader;
mod server;
mod values;

use serde::{Deserialize, Serialize};

use crate::sync::engine::change::{Row, RowKind};

pub use pos::BinlogPos;
pub use reader::BinlogReader;
pub use server::{check_settings, check_start, current_end, CaptureError, WrongSetting};

/// One committed transaction's changes to the captured database, in binlog order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedTxn {
    /// MariaDB's GTID, `domain-server-seq` (e.g. `0-1-42`).
    pub gtid: Option<String>,
    /// Just after the commit event: resuming from here reads the next transaction.
    pub end: BinlogPos,
    /// Unix seconds of the commit event.
    pub timestamp: u32,
    pub rows: Vec<RowChange>,
}

/// One row changed. `before` is set for updates and deletes, `after` for inserts and updates; both
/// hold every column (full row image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    /// The table's name without the database (`mdl_forum_posts`).
    pub table: String,
    pub kind: RowKind,
    pub before: Option<Row>,
    pub after: Option<Row>,
}

/// The server id the engine's binlog reader announces at site `site`. A server drops an older replica
/// connection that announces the same id, and real servers use the site numbers (1 to 255), so readers
/// take ids well above them.
pub fn reader_server_id(site: u32) -> u32 {
    1_000_000 + site
}
