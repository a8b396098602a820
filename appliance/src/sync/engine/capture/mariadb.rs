//! The parts of MariaDB's binlog that `mysql_common` does not parse: MariaDB's own event type codes,
//! the `skip_replication` header flag, and the GTID event body. Everything else (header, checksums,
//! TABLE_MAP with its optional metadata, rows events) is the crate's.

use anyhow::{bail, Result};

/// MariaDB event type codes (sql/log_event.h). `mysql_common` reports these as unknown types, which is
/// fine for the ones we only skip; GTID is decoded here.
pub const ANNOTATE_ROWS_EVENT: u8 = 160;
pub const BINLOG_CHECKPOINT_EVENT: u8 = 161;
pub const GTID_EVENT: u8 = 162;
pub const GTID_LIST_EVENT: u8 = 163;
pub const START_ENCRYPTION_EVENT: u8 = 164;
/// Compressed query and rows events (`log_bin_compress=ON`): first and last code. The crate cannot
/// inflate them, so the settings check refuses that option and the reader stops on one.
pub const FIRST_COMPRESSED_EVENT: u8 = 165;
pub const LAST_COMPRESSED_EVENT: u8 = 171;

/// Header flag MariaDB sets on every event written by a session with `SET SESSION skip_replication=1`
/// (LOG_EVENT_SKIP_REPLICATION_F). `mysql_common`'s `EventFlags` drops unknown bits, so read the raw
/// flags.
pub const SKIP_REPLICATION_F: u16 = 0x8000;

/// Flags of the GTID event body (flags2).
const FL_STANDALONE: u8 = 1;
const FL_PREPARED_XA: u8 = 64;

/// A MariaDB GTID event: the start of an event group (a transaction, or one DDL statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidEvent {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
    flags2: u8,
}

impl GtidEvent {
    /// Decodes the event body (after the 19-byte header, checksum already cut): seq_no (8 bytes LE),
    /// domain_id (4 bytes LE), flags2 (1 byte), then fields we do not need. The server id is the
    /// header's.
    pub fn parse(body: &[u8], server: u32) -> Result<GtidEvent> {
        if body.len() < 13 {
            bail!(
                "MariaDB GTID event too short ({} bytes, at least 13 expected)",
                body.len()
            );
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&body[0..8]);
        let mut domain = [0u8; 4];
        domain.copy_from_slice(&body[8..12]);
        Ok(GtidEvent {
            domain: u32::from_le_bytes(domain),
            server,
            seq: u64::from_le_bytes(seq),
            flags2: body[12],
        })
    }

    /// A standalone group is one statement (DDL) without BEGIN/COMMIT: it ends with that statement.
    pub fn standalone(&self) -> bool {
        self.flags2 & FL_STANDALONE != 0
    }

    /// The first half of an XA transaction (`XA PREPARE`), which ends without a commit.
    pub fn prepared_xa(&self) -> bool {
        self.flags2 & FL_PREPARED_XA != 0
    }
}

impl std::fmt::Display for GtidEvent {
    /// MariaDB's own notation, `domain-server-seq`, as in `@@gtid_binlog_pos`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_body_is_decoded_in_mariadb_notation() {
        // seq 258, domain 3, flags2 = standalone, then six bytes of padding.
        let mut body = vec![];
        body.extend_from_slice(&258u64.to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.push(FL_STANDALONE);
        body.extend_from_slice(&[0; 6]);
        let g = GtidEvent::parse(&body, 17).unwrap();
        assert_eq!(g.to_string(), "3-17-258");
        assert!(g.standalone());
        assert!(!g.prepared_xa());

        body[12] = 0x0c; // transactional, allow parallel: an ordinary transaction
        let g = GtidEvent::parse(&body, 17).unwrap();
        assert!(!g.standalone());
    }

    #[test]
    fn short_gtid_body_is_an_error() {
        let err = GtidEvent::parse(&[0; 12], 1).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }
}
