//! Rows and values as they travel between sites.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One column value. Moodle's XMLDB types map onto these: int (signed integers), number (DECIMAL, kept
/// as its exact text), float (DOUBLE), char/text (bytes in the column's charset) and binary (bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Double(f64),
    Decimal(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Column name to value. Ordered, so that a row has one encoding.
pub type Row = BTreeMap<String, Value>;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowKind {
    Insert,
    Update,
    Delete,
}
