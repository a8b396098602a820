//! What travels between a center and the hub during verify (and a seed's copy).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::sync::engine::change::{Row, Value};
use crate::sync::engine::clock::Stamp;
use crate::sync::engine::merge::RowClock;

/// The hub as verify sees it (HTTP in production, in-process in tests).
pub trait Reference {
    /// The tables the hub relays, with their columns.
    fn catalog(&mut self, req: &CatalogRequest) -> Result<Catalog>;
    fn sums(&mut self, req: &SumsRequest) -> Result<SumsReply>;
    fn rows(&mut self, req: &RowsRequest) -> Result<RowsReply>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRequest {
    /// The hub log position the center has applied (its cursor).
    pub pulled: u64,
}

/// The hub's relayed tables (names without the prefix) that have an integer `id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub tables: Tables,
    /// Relayed changes by other sites in the hub's log after the center's cursor: not yet pulled.
    pub unpulled: u64,
    /// The hub's log position as the catalog was read: where a center seeded now starts pulling.
    #[serde(default)]
    pub log_end: u64,
    /// How far the hub holds the center's own changes: a center seeded again (a new card for the
    /// same site) numbers its changes after them, or the hub would take them for replays.
    #[serde(default)]
    pub held: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// In table order.
    pub columns: Vec<String>,
    /// The smallest id, if the table has rows: where the walk starts.
    pub first: Option<i64>,
}

/// Sums of the chunks of `chunk` ids that hold ids `lo..=last`, over `columns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumsRequest {
    pub table: String,
    pub columns: Vec<String>,
    pub chunk: u64,
    pub lo: i64,
    pub last: i64,
}

/// One chunk's sums; empty chunks are not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sum {
    /// The chunk's number: its ids are `chunk * size ..`; with chunks of one id, the id itself.
    pub chunk: i64,
    pub rows: u64,
    /// XOR of the rows' hashes; with chunks of one id, the row's hash.
    pub hash: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumsReply {
    /// By chunk number.
    pub sums: Vec<Sum>,
    /// The smallest id after `last`: where the next window starts.
    pub next: Option<i64>,
}

/// The hub's rows with these ids (at most [`MAX_ROWS`]), on `columns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsRequest {
    pub table: String,
    pub columns: Vec<String>,
    pub ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubRow {
    pub id: i64,
    pub values: Row,
    /// Who wrote each column last; `None` for a row sync has not touched since the seed (or a table
    /// without clocks).
    pub clock: Option<RowClock>,
}

impl HubRow {
    /// About what the row weighs in memory and on the wire, to bound a page of them.
    pub fn size(&self) -> usize {
        let value = |v: &Value| match v {
            Value::Bytes(b) => b.len(),
            Value::Decimal(d) => d.len(),
            _ => 8,
        };
        self.values.iter().map(|(c, v)| c.len() + value(v)).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: i64,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowsReply {
    pub rows: Vec<HubRow>,
    /// For requested ids the hub does not have: the tombstones it keeps.
    pub tombstones: Vec<Tombstone>,
}

pub(crate) type Tables = BTreeMap<String, TableInfo>;
