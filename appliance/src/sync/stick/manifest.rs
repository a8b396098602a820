//! What a volume says of itself, and how it is signed.
//!
//! The signature is an HMAC-SHA256 under the center's own sync secret, in both directions: the hub
//! already authenticates centers by exactly that secret (provisioned in the image, registered with
//! `appliance hub add-center`), so a stick needs no new key, and a stolen card's secret speaks for its
//! own center only, as on the link. The manifest names the stick, both sites, the volume's place in
//! the stick and the SHA-256 of its payload, so the tag covers every byte of the volume.

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::sync::exchange::wire::Secret;

pub const FORMAT: u32 = 1;

/// The hub as a manifest names it, whatever its site number: a center need not know it.
pub const HUB: u32 = 0;

/// A site as file names and messages show it.
pub fn site_name(site: u32) -> String {
    if site == HUB {
        "hub".into()
    } else {
        site.to_string()
    }
}

/// One batch of row changes in the payload: the sender's changes after `after` up to `last` (a
/// center's own sequence numbers, or the hub's log positions), encoded as on the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowBatch {
    pub after: u64,
    pub last: u64,
    pub offset: u64,
    pub len: u64,
    /// SHA-256 of the batch, checked again when it is read for applying.
    pub sha256: String,
}

/// The run of blob chunks in the payload (chunk frames, see `files::chunk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Random, the same in every volume of one stick. Named `bundle` on the medium, as the first
    /// sticks were written: older cards still read it, and a card rolled back still reads newer ones.
    #[serde(rename = "bundle")]
    pub stick: String,
    pub from: u32,
    pub to: u32,
    /// Unix seconds at export.
    pub made_at: u64,
    /// 1-based.
    pub index: u32,
    pub volumes: u32,
    pub payload_len: u64,
    pub payload_sha256: String,
    pub rows: Vec<RowBatch>,
    pub chunks: Region,
    /// From the hub: how far it holds the center's changes (the center's outbox may drop them).
    pub acked: u64,
    /// From a center: how far it has applied the hub's log (the hub may prune up to it).
    pub cursor: u64,
    /// From a center, in volume 1: blobs its Moodle references but it lacks.
    pub wants: Vec<String>,
    /// From the hub, in volume 1: the center's blobs it holds from earlier sticks.
    pub held: Vec<String>,
    /// From the hub, a seed for a joining center: the hub's log position when the copy began. The row
    /// batches then hold the hub's rows (`seed::Copied`), numbered from 0, not changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Manifest {
    /// A volume's file name: sortable, and derivable from any sibling's manifest, so a missing volume
    /// can be named.
    pub fn file_name(&self, index: u32) -> String {
        format!(
            "kituo-{}-to-{}-{}-{:03}of{:03}.kvol",
            site_name(self.from),
            site_name(self.to),
            self.stick,
            index,
            self.volumes
        )
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).context("cannot encode a manifest")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Manifest> {
        serde_json::from_slice(bytes).context("the manifest does not parse")
    }
}

fn mac(secret: &Secret, manifest: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"kituo-bundle-v1\n");
    mac.update(manifest);
    mac
}

pub fn sign(secret: &Secret, manifest: &[u8]) -> [u8; 32] {
    mac(secret, manifest).finalize().into_bytes().into()
}

/// Checks a tag in constant time.
pub fn verify(secret: &Secret, manifest: &[u8], tag: &[u8]) -> bool {
    mac(secret, manifest).verify_slice(tag).is_ok()
}
