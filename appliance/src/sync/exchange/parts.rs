//! Bodies too large for one request. A batch or a page is bounded by bytes, but always holds at least
//! one change, and Moodle's rows reach tens of megabytes (page content, question text, H5P JSON, a
//! log's `other`). Such a body travels in parts, each its own request of at most the batch size, so a
//! 256 kbit/s link that cuts every few minutes still moves it a part at a time, and a cut costs one part.
//!
//! Every part names the whole body's SHA-256, its place and the number of parts. The receiver keeps
//! the parts of one body in order and uses the body only once it is whole and its digest matches.
//! - A push: the hub keeps a center's parts in `kituo_sync.parts` (one body per center; a new one
//!   replaces an unfinished one) and answers each with how many it holds, so an agent that restarts,
//!   or a link that cut, goes on from there.
//! - A pull: the hub cuts the page it would have sent, made again for each part request (the same
//!   rows make the same bytes), and the agent keeps the parts until the page is whole.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sync::exchange::hub::Receipt;
use crate::sync::exchange::wire::{MAX_BATCH, MAX_BODY};

/// The smallest part: bounds how many parts one body may have.
pub const MIN_PART: usize = 4 << 10;
/// The largest part: a part and its framing fit a request.
pub const MAX_PART: usize = MAX_BODY / 2;

/// One part of a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// 0-based.
    pub index: u32,
    pub of: u32,
    /// The SHA-256 of the whole body.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// One part of a push, with the last change of its batch: a hub that holds that change already (its
/// answer to the last part was lost) answers at once rather than taking the parts again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPart {
    pub last: u64,
    pub part: Part,
}

/// The hub's answer to one part of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartAnswer {
    /// Parts of this body the hub holds: the next one it takes.
    pub held: u32,
    /// Once it holds them all: the receipt for the whole batch.
    pub receipt: Option<Receipt>,
}

/// How a body is cut: parts of `size` bytes (the last may be shorter).
#[derive(Debug, Clone)]
pub struct Cut {
    pub digest: Vec<u8>,
    pub size: usize,
    pub of: u32,
}

impl Cut {
    pub fn new(body: &[u8], size: usize) -> Result<Cut> {
        let size = size.clamp(MIN_PART, MAX_PART);
        let of = body.len().div_ceil(size).max(1);
        Ok(Cut {
            digest: Sha256::digest(body).to_vec(),
            size,
            of: u32::try_from(of).context("a body in too many parts")?,
        })
    }

    /// Part `index` of `body`, the body this cut was made of.
    pub fn part(&self, body: &[u8], index: u32) -> Result<Part> {
        ensure!(
            index < self.of,
            "part {index} asked of a body in {} parts",
            self.of
        );
        let start = index as usize * self.size;
        Ok(Part {
            index,
            of: self.of,
            digest: self.digest.clone(),
            bytes: body[start..(start + self.size).min(body.len())].to_vec(),
        })
    }
}

/// A body cut, and the body.
pub type CutBody = Arc<(Cut, Vec<u8>)>;

/// The hub's last pages cut in parts, so that each part after the first is a slice of the page made
/// once: decoding and compressing a 20 MB row again for every part costs seconds on a small hub.
#[derive(Default)]
pub struct Cuts {
    recent: Mutex<VecDeque<(CutKey, CutBody)>>,
}

/// A page cut in parts is the same bytes for the same center, position and size: its size, not the
/// count asked for, ended it (an agent that asks for fewer after a cut still gets the page begun).
pub type CutKey = (u32, u64, usize);

/// Pages kept: a few centers pulling large rows at once.
const CUTS_KEPT: usize = 4;

impl Cuts {
    pub fn get(&self, key: CutKey) -> Option<CutBody> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, b)| b.clone())
    }

    pub fn keep(&self, key: CutKey, body: CutBody) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|(k, _)| *k != key);
        if recent.len() == CUTS_KEPT {
            recent.pop_front();
        }
        recent.push_back((key, body));
    }
}

/// Joins parts received in order into the body, if its digest matches.
pub fn join(parts: &[Part]) -> Result<Vec<u8>> {
    let Some(first) = parts.first() else {
        bail!("no parts to join");
    };
    ensure!(
        parts.len() == first.of as usize
            && parts.iter().enumerate().all(|(i, p)| p.index as usize == i
                && p.of == first.of
                && p.digest == first.digest),
        "the parts of a body do not belong together"
    );
    let body: Vec<u8> = parts.iter().flat_map(|p| p.bytes.iter().copied()).collect();
    ensure!(
        Sha256::digest(&body).as_slice() == first.digest.as_slice(),
        "a body joined from {} parts does not match its digest",
        first.of
    );
    Ok(body)
}

/// Checks a part as a center sent it, before anything is stored.
fn check(part: &Part) -> Result<()> {
    ensure!(part.of >= 2, "a body in one part is sent whole");
    ensure!(part.index < part.of, "part {} of {}", part.index, part.of);
    ensure!(part.digest.len() == 32, "a part's digest is a SHA-256");
    ensure!(
        !part.bytes.is_empty() && part.bytes.len() <= MAX_PART,
        "a part of {} bytes",
        part.bytes.len()
    );
    ensure!(
        part.of as usize <= MAX_BATCH.div_ceil(MIN_PART),
        "a body in {} parts is larger than a batch may be",
        part.of
    );
    Ok(())
}

/// Keeps `part` of a push from `center` if it is the next one of its body; answers how many parts of
/// that body are held. A part of another body drops the center's unfinished one.
pub fn hold(conn: &mut impl Queryable, center: u32, part: &Part) -> Result<u32> {
    check(part)?;
    conn.exec_drop(
        "DELETE FROM kituo_sync.parts WHERE site = ? AND (digest <> ? OR total <> ?)",
        (center, &part.digest, part.of),
    )
    .context("cannot drop an unfinished body")?;
    let (held, bytes): (u32, u64) = conn
        .exec_first(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM kituo_sync.parts WHERE site = ?",
            (center,),
        )
        .context("cannot count the parts held")?
        .unwrap_or((0, 0));
    if part.index != held {
        return Ok(held);
    }
    ensure!(
        bytes as usize + part.bytes.len() <= MAX_BATCH,
        "a body in parts is larger than a batch may be ({} bytes)",
        MAX_BATCH
    );
    conn.exec_drop(
        "INSERT IGNORE INTO kituo_sync.parts (site, digest, total, idx, data) VALUES (?, ?, ?, ?, ?)",
        (center, &part.digest, part.of, part.index, &part.bytes),
    )
    .context("cannot keep a part")?;
    Ok(held + 1)
}

/// The body whose parts `center` sent, once all are held and its digest matches.
pub fn whole(conn: &mut impl Queryable, center: u32) -> Result<Vec<u8>> {
    let rows: Vec<(u32, u32, Vec<u8>, Vec<u8>)> = conn
        .exec(
            "SELECT idx, total, digest, data FROM kituo_sync.parts WHERE site = ? ORDER BY idx",
            (center,),
        )
        .context("cannot read the parts held")?;
    let parts: Vec<Part> = rows
        .into_iter()
        .map(|(index, of, digest, bytes)| Part {
            index,
            of,
            digest,
            bytes,
        })
        .collect();
    join(&parts)
}

/// Drops `center`'s parts once their body is in.
pub fn clear(conn: &mut impl Queryable, center: u32) -> Result<()> {
    conn.exec_drop("DELETE FROM kituo_sync.parts WHERE site = ?", (center,))
        .context("cannot drop the parts of a body")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn all(body: &[u8], size: usize) -> Vec<Part> {
        let cut = Cut::new(body, size).unwrap();
        (0..cut.of).map(|i| cut.part(body, i).unwrap()).collect()
    }

    #[test]
    fn a_body_cut_in_parts_joins_to_itself() {
        let b = body(10 * MIN_PART + 5);
        let parts = all(&b, MIN_PART);
        assert_eq!(parts.len(), 11);
        assert_eq!(parts[10].bytes.len(), 5);
        assert_eq!(join(&parts).unwrap(), b);
        assert_eq!(
            all(&b[..100], MIN_PART).len(),
            1,
            "a small body is one part"
        );
        assert!(Cut::new(&b, MIN_PART).unwrap().part(&b, 11).is_err());
    }

    #[test]
    fn parts_out_of_order_missing_or_altered_are_refused() {
        let b = body(3 * MIN_PART);
        let parts = all(&b, MIN_PART);
        assert!(join(&parts[..2]).is_err(), "missing");
        let mut swapped = parts.clone();
        swapped.swap(0, 1);
        assert!(join(&swapped).is_err(), "out of order");
        let mut altered = parts.clone();
        altered[1].bytes[0] ^= 1;
        assert!(join(&altered).is_err(), "altered");
        let mut foreign = parts;
        foreign[2] = all(&body(3 * MIN_PART + 1), MIN_PART).remove(2);
        assert!(join(&foreign).is_err(), "of another body");
    }

    #[test]
    fn a_center_cannot_send_parts_beyond_a_batch() {
        let mut p = all(&body(2 * MIN_PART), MIN_PART).remove(0);
        assert!(check(&p).is_ok());
        p.of = u32::MAX;
        assert!(check(&p).is_err());
        p.of = 1;
        assert!(check(&p).is_err());
        p.of = 2;
        p.bytes = vec![0; MAX_PART + 1];
        assert!(check(&p).is_err());
    }
}
