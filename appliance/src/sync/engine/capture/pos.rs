//! A place in the server's binlog: file name and byte offset.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// A position in the binlog, `binlog.000042:1234`. The reader hands out positions that sit just after
/// a transaction's commit event (or at the start of a file), so resuming from one never starts inside
/// a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BinlogPos {
    pub file: String,
    pub pos: u64,
}

impl BinlogPos {
    pub fn new(file: impl Into<String>, pos: u64) -> BinlogPos {
        BinlogPos {
            file: file.into(),
            pos,
        }
    }
}

impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

impl FromStr for BinlogPos {
    type Err = anyhow::Error;

    /// Parses `file:pos`. The split is at the last colon, so a file name with a colon still works.
    fn from_str(s: &str) -> anyhow::Result<BinlogPos> {
        let Some((file, pos)) = s.rsplit_once(':') else {
            bail!("binlog position {s:?} is not of the form FILE:OFFSET (e.g. binlog.000001:4)");
        };
        if file.is_empty() {
            bail!("binlog position {s:?} has no file name (expected e.g. binlog.000001:4)");
        }
        let pos = pos
            .parse::<u64>()
            .with_context(|| format!("binlog position {s:?}: offset {pos:?} is not a number"))?;
        Ok(BinlogPos::new(file, pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let p = BinlogPos::new("binlog.000007", 1234);
        assert_eq!(p.to_string(), "binlog.000007:1234");
        assert_eq!("binlog.000007:1234".parse::<BinlogPos>().unwrap(), p);
        // The last colon splits, so odd file names survive.
        let odd: BinlogPos = "a:b.000001:4".parse().unwrap();
        assert_eq!(odd, BinlogPos::new("a:b.000001", 4));
    }

    #[test]
    fn bad_positions_are_refused_with_the_input_named() {
        for bad in ["binlog.000001", ":4", "binlog.000001:x", "binlog.000001:-1"] {
            let err = bad.parse::<BinlogPos>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn serde_keeps_both_fields() {
        let p = BinlogPos::new("binlog.000002", 4);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"file":"binlog.000002","pos":4}"#);
        assert_eq!(serde_json::from_str::<BinlogPos>(&json).unwrap(), p);
    }
}
