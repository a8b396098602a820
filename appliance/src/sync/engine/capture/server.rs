//! What the reader asks the server outside the binlog stream: where the binlog ends, which binlog files
//! still exist, and whether the settings allow capture at all.

use std::fmt;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::capture::BinlogPos;

/// Errors a caller must tell apart from a passing failure (a lost connection is retried; these are
/// not). They come wrapped in `anyhow::Error`; find them with `downcast_ref::<CaptureError>()`.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The binlog holding the next change was deleted (PURGE BINARY LOGS, `expire_logs_days`,
    /// `binlog_expire_logs_seconds`): changes after the stored position are gone.
    #[error("binlog {file} no longer exists on the server: the site must be re-seeded")]
    BinlogPurged { file: String },
    /// The stored position lies past the end of its file: the server's binlogs were reset (RESET
    /// MASTER) or the data directory was replaced since the position was taken.
    #[error(
        "binlog position {pos} is past the end of the file ({size} bytes): the server's binlogs were \
         reset; the site must be re-seeded"
    )]
    PastEnd { pos: BinlogPos, size: u64 },
    /// Binary logging is off, or a setting capture depends on is wrong.
    #[error("MariaDB is not set up for change capture: {}; set {} in the server's configuration and restart it", list(.0), fixes(.0))]
    Settings(Vec<WrongSetting>),
}

/// One server variable whose value capture cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongSetting {
    pub name: &'static str,
    /// `None` when the server does not know the variable (MariaDB older than 10.5).
    pub actual: Option<String>,
    pub needed: &'static str,
}

impl fmt::Display for WrongSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.actual {
            Some(v) => write!(f, "{} is {v} but must be {}", self.name, self.needed),
            None => write!(
                f,
                "{} is unknown to this server (MariaDB 10.5 or later is needed)",
                self.name
            ),
        }
    }
}

fn list(wrong: &[WrongSetting]) -> String {
    wrong
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn fixes(wrong: &[WrongSetting]) -> String {
    wrong
        .iter()
        .map(|w| format!("{}={}", w.name, w.needed))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The settings capture needs. Full row images with column names give every column of every row by
/// name; an uncompressed binlog is one `mysql_common` can read.
const REQUIRED: [(&str, &str); 5] = [
    ("log_bin", "ON"),
    ("binlog_format", "ROW"),
    ("binlog_row_image", "FULL"),
    ("binlog_row_metadata", "FULL"),
    ("log_bin_compress", "OFF"),
];

/// Checks the server's global settings for capture; the error names each wrong setting with the value
/// it needs. Needs no privilege.
pub fn check_settings(conn: &mut impl Queryable) -> Result<()> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
             ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'log_bin_compress')",
        )
        .context("cannot read the server's binlog settings (SHOW GLOBAL VARIABLES)")?;
    let wrong = wrong_settings(&rows);
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Settings(wrong).into())
    }
}

fn wrong_settings(actual: &[(String, String)]) -> Vec<WrongSetting> {
    REQUIRED
        .iter()
        .filter_map(|&(name, needed)| {
            let value = actual
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone());
            match &value {
                Some(v) if v.eq_ignore_ascii_case(needed) => None,
                _ => Some(WrongSetting {
                    name,
                    actual: value,
                    needed,
                }),
            }
        })
        .collect()
}

/// The end of the binlog now: where the next transaction will be written. Needs the BINLOG MONITOR
/// privilege (REPLICATION CLIENT before MariaDB 10.5).
pub fn current_end(conn: &mut impl Queryable) -> Result<BinlogPos> {
    // MariaDB (10.11 and 11.8) answers SHOW MASTER STATUS; MySQL 8.4 only knows the newer name.
    let row: Option<mysql::Row> = match conn.query_first("SHOW MASTER STATUS") {
        Ok(row) => row,
        Err(mysql::Error::MySqlError(e)) if e.code == 1064 => conn
            .query_first("SHOW BINARY LOG STATUS")
            .context("cannot read the binlog's end (SHOW BINARY LOG STATUS)")?,
        Err(e) => return Err(e).context("cannot read the binlog's end (SHOW MASTER STATUS)"),
    };
    let Some(row) = row else {
        return Err(CaptureError::Settings(vec![WrongSetting {
            name: "log_bin",
            actual: Some("OFF".into()),
            needed: "ON",
        }])
        .into());
    };
    let file: Option<String> = row.get_opt(0).and_then(|r| r.ok());
    let pos: Option<u64> = row.get_opt(1).and_then(|r| r.ok());
    match (file, pos) {
        (Some(file), Some(pos)) => Ok(BinlogPos { file, pos }),
        _ => anyhow::bail!("SHOW MASTER STATUS gave no File and Position: {row:?}"),
    }
}

/// Fails with [`CaptureError`] when `start` cannot be read from: its file was purged, or it lies past
/// the file's end. Needs BINLOG MONITOR (SHOW BINARY LOGS).
pub fn check_start(conn: &mut impl Queryable, start: &BinlogPos) -> Result<()> {
    let rows: Vec<mysql::Row> = conn
        .query("SHOW BINARY LOGS")
        .context("cannot list the server's binlogs (SHOW BINARY LOGS)")?;
    let files: Vec<(String, u64)> = rows
        .iter()
        .filter_map(|r| Some((r.get_opt(0)?.ok()?, r.get_opt(1)?.ok()?)))
        .collect();
    if files.len() != rows.len() {
        anyhow::bail!("SHOW BINARY LOGS gave rows without Log_name and File_size: {rows:?}");
    }
    let found = files
        .iter()
        .find(|(name, _)| *name == start.file)
        .map(|&(_, size)| size);
    match found {
        None => Err(CaptureError::BinlogPurged {
            file: start.file.clone(),
        }
        .into()),
        Some(size) if start.pos > size => Err(CaptureError::PastEnd {
            pos: start.clone(),
            size,
        }
        .into()),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn right_settings_pass() {
        let ok = vars(&[
            ("log_bin", "ON"),
            ("binlog_format", "ROW"),
            ("binlog_row_image", "FULL"),
            ("binlog_row_metadata", "FULL"),
            ("log_bin_compress", "OFF"),
        ]);
        assert!(wrong_settings(&ok).is_empty());
    }

    #[test]
    fn each_wrong_setting_is_named_with_the_value_it_needs() {
        let bad = vars(&[
            ("log_bin", "ON"),
            ("binlog_format", "MIXED"),
            ("binlog_row_image", "FULL"),
            ("log_bin_compress", "OFF"),
        ]);
        let err = CaptureError::Settings(wrong_settings(&bad)).to_string();
        assert!(
            err.contains("binlog_format is MIXED but must be ROW"),
            "{err}"
        );
        assert!(
            err.contains("binlog_row_metadata is unknown to this server"),
            "{err}"
        );
        assert!(
            err.contains("set binlog_format=ROW binlog_row_metadata=FULL"),
            "{err}"
        );
        assert!(!err.contains("log_bin is"), "{err}");
    }
}
