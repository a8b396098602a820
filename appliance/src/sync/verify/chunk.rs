//! Chunk arithmetic. Chunk numbers are `FLOOR(id / chunk)` in SQL and `div_euclid` here: equal for every
//! id, negative ones included.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::protocol::Sum;
use super::report::Kind;

/// A differing row found, with its hash here when compared (to notice a change before repairing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found {
    pub(super) id: i64,
    pub(super) kind: Kind,
    pub(super) here: Option<u64>,
}

pub(super) fn chunk_of(id: i64, chunk: u64) -> i64 {
    clamp(i128::from(id).div_euclid(i128::from(chunk)))
}

/// The first and last id of chunk number `k`.
pub(super) fn chunk_ids(k: i64, chunk: u64) -> (i64, i64) {
    let lo = i128::from(k) * i128::from(chunk);
    (clamp(lo), clamp(lo + i128::from(chunk) - 1))
}

/// The id range of `chunks` chunks from the one holding `start`.
pub(super) fn window(start: i64, chunk: u64, chunks: u64) -> (i64, i64) {
    let k = chunk_of(start, chunk);
    let last_k = clamp(i128::from(k) + i128::from(chunks) - 1);
    (chunk_ids(k, chunk).0, chunk_ids(last_k, chunk).1)
}

pub(super) fn clamp(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

pub(super) fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where the walk goes after a window ending at `last`: the nearer of both sides' next rows, unless
/// that is past `end`.
pub(super) fn advance(
    last: i64,
    end: i64,
    ours: Option<i64>,
    theirs: Option<i64>,
) -> Result<Option<i64>> {
    if last >= end {
        return Ok(None);
    }
    match earliest(ours, theirs) {
        Some(next) if next <= last => bail!("the walk would not move past id {last}"),
        Some(next) if next <= end => Ok(Some(next)),
        _ => Ok(None),
    }
}

/// Both sides' sums by chunk.
pub(super) fn pair_sums<'s>(
    ours: &'s [Sum],
    theirs: &'s [Sum],
) -> BTreeMap<i64, (Option<&'s Sum>, Option<&'s Sum>)> {
    let mut paired: BTreeMap<i64, (Option<&Sum>, Option<&Sum>)> = BTreeMap::new();
    for s in ours {
        paired.entry(s.chunk).or_default().0 = Some(s);
    }
    for s in theirs {
        paired.entry(s.chunk).or_default().1 = Some(s);
    }
    paired
}

pub(super) fn mismatched(ours: &[Sum], theirs: &[Sum]) -> Vec<i64> {
    pair_sums(ours, theirs)
        .into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, _)| k)
        .collect()
}

/// With chunks of one id: the rows that differ and how.
pub(super) fn row_differences(ours: &[Sum], theirs: &[Sum]) -> Vec<Found> {
    pair_sums(ours, theirs)
        .into_iter()
        .filter_map(|(id, pair)| {
            let kind = match pair {
                (None, Some(_)) => Kind::Missing,
                (Some(_), None) => Kind::Extra,
                (Some(a), Some(b)) if a != b => Kind::Different,
                _ => return None,
            };
            Some(Found {
                id,
                kind,
                here: pair.0.map(|s| s.hash),
            })
        })
        .collect()
}
