//! `appliance sync export`: everything the other side has not acknowledged, as a stick.
//!
//! A center writes its outbox after the hub's last acknowledgement (`pushed`), its hub cursor, the
//! blobs it lacks, and its blobs the hub is not known to hold. The hub writes, for one center, its log
//! after what that center last said it applied (`centers.pulled`), how far it holds the center's
//! changes, and the blobs of the `files` rows it sends plus those the center said it lacks. Sticks are
//! cumulative until acknowledged: a lost stick costs nothing but the next one carries more.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::change::{self, Change, Op, Value};
use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::store;
use crate::sync::exchange::agent::{self, HUB_CURSOR, PUSHED};
use crate::sync::exchange::centers;
use crate::sync::exchange::hub;
use crate::sync::exchange::inbox;
use crate::sync::exchange::wire::{self, Secret};
use crate::sync::files::hash::ContentHash;
use crate::sync::files::inventory;
use crate::sync::files::mover;
use crate::sync::files::pool::{Found, Pool};
use crate::sync::files::settings::FileSettings;
use crate::sync::seed;
use crate::sync::stick::history::{self, StickRecord};
use crate::sync::stick::manifest::{self, Manifest, Region, HUB};
use crate::sync::stick::volume::Writer;
use crate::sync::stick::CHUNK;

/// Where and how big.
pub struct Target<'a> {
    pub dir: &'a Path,
    pub volume_size: u64,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub stick: String,
    pub volumes: Vec<std::path::PathBuf>,
    pub bytes: u64,
    pub changes: u64,
    pub blobs: u64,
}

/// Most changes and bytes in one row batch of a hub stick.
const HUB_BATCH: usize = 500;
const HUB_BATCH_BYTES: usize = 1 << 20;

fn new_stick_id() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).context("no randomness for a stick id")?;
    Ok(hex::encode(bytes))
}

fn head(from: u32, to: u32) -> Result<Manifest> {
    Ok(Manifest {
        format: manifest::FORMAT,
        stick: new_stick_id()?,
        from,
        to,
        made_at: crate::history::unix_now(),
        index: 0,
        volumes: 0,
        payload_len: 0,
        payload_sha256: String::new(),
        rows: Vec::new(),
        chunks: Region::default(),
        acked: 0,
        cursor: 0,
        wants: Vec::new(),
        held: Vec::new(),
        seed: None,
    })
}

/// A center's stick for the hub.
pub fn from_center(
    site: &mut Site,
    policy: &Policy,
    secret: Secret,
    files: Option<&FileSettings>,
    batch: usize,
    to: &Target<'_>,
) -> Result<Exported> {
    site.capture(policy)?;
    let pushed = store::get_u64(site.conn(), PUSHED)?;
    let mut m = head(site.id(), HUB)?;
    m.cursor = store::get_u64(site.conn(), HUB_CURSOR)?;

    // Blobs: what this site lacks (the hub's next stick brings it) and what the hub may lack.
    let mut sends = Vec::new();
    let pool = match files {
        Some(f) => Some(Pool::new(&f.dataroot, f.perms)?),
        None => None,
    };
    if let (Some(pool), Some(f)) = (&pool, files) {
        let target = site.target().clone();
        let at_hub = mover::load_at_hub(site.conn())?;
        let mut refs = inventory::referenced(site.conn(), &target)?;
        refs.sort_by_key(|r| f.order.rank(&r.meta, r.size));
        for r in refs {
            match pool.find(&r.hash) {
                Found::Live(_) if !at_hub.contains(&r.hash) => sends.push(r.hash),
                Found::Live(_) | Found::Trashed(_) => {}
                Found::Absent => m.wants.push(r.hash.hex()),
            }
        }
    }

    let mut w = Writer::create(to.dir, to.volume_size, m.clone(), secret)?;
    let mut after = pushed;
    let mut changes = 0;
    // A stick has room: batches up to a request's largest body (a single larger change goes alone).
    while let Some(out) = agent::prepare(site, after, batch, wire::MAX_BODY)? {
        w.add_rows(after, out.last, &out.body)?;
        changes += count_after(site, after, out.last)?;
        after = out.last;
    }
    let blobs = add_blobs(&mut w, pool.as_ref(), &sends)?;
    finish(site, w, &m, changes, blobs)
}

/// Own changes in `(after, last]`: what one outbox batch holds.
fn count_after(site: &mut Site, after: u64, last: u64) -> Result<u64> {
    let origin = site.id();
    let n: Option<u64> = site
        .conn()
        .exec_first(
            "SELECT COUNT(*) FROM kituo_sync.log WHERE origin = ? AND seq > ? AND seq <= ?",
            (origin, after, last),
        )
        .context("cannot count the outbox")?;
    Ok(n.unwrap_or(0))
}

/// The hub's stick for `center`.
pub fn for_center(
    site: &mut Site,
    policy: &Policy,
    center: u32,
    pool: Option<&Pool>,
    to: &Target<'_>,
) -> Result<Exported> {
    let (mut m, secret) = hub_head(site, policy, center)?;
    let pulled: Option<u64> = site
        .conn()
        .exec_first(
            "SELECT pulled FROM kituo_sync.centers WHERE site = ?",
            (center,),
        )
        .context("cannot read the center's position")?;
    m.held = hashes_of(site.conn(), "bundle_held", center)?
        .iter()
        .map(ContentHash::hex)
        .collect();
    let mut w = Writer::create(to.dir, to.volume_size, m.clone(), secret)?;

    let mut after = pulled.unwrap_or(0);
    let mut changes = 0;
    let mut wanted: BTreeSet<ContentHash> = hashes_of(site.conn(), "bundle_wants", center)?
        .into_iter()
        .collect();
    loop {
        let page = hub::page(site, policy, center, after, HUB_BATCH, HUB_BATCH_BYTES)?;
        if page.last == after {
            break;
        }
        wanted.extend(page.changes.iter().filter_map(file_blob));
        w.add_rows(after, page.last, &change::encode(&page.changes)?)?;
        changes += page.changes.len() as u64;
        after = page.last;
        if !page.more {
            break;
        }
    }
    let blobs = add_blobs(&mut w, pool, &smallest_first(pool, wanted))?;
    finish(site, w, &m, changes, blobs)
}

/// The hub's seed for a center joining the university (`sync seed` by stick or DVD): the rows the link's
/// seed would copy, read after the log end it names, and the blobs of every `files` row.
pub fn seed_for_center(
    site: &mut Site,
    policy: &Policy,
    center: u32,
    pool: Option<&Pool>,
    to: &Target<'_>,
) -> Result<Exported> {
    let (mut m, secret) = hub_head(site, policy, center)?;
    m.seed = Some(hub::log_end(site)?);
    let mut w = Writer::create(to.dir, to.volume_size, m.clone(), secret)?;
    let (mut batches, mut copied_rows) = (0, 0);
    let mut wanted = BTreeSet::new();
    seed::read_all(site, policy, &mut |copied| {
        if let seed::Copied::Relayed { table, rows, .. } = &copied {
            if table == "files" {
                wanted.extend(rows.iter().filter_map(|r| row_blob(&r.values)));
            }
        }
        copied_rows += copied.len() as u64;
        w.add_rows(batches, batches + 1, &wire::encode(&copied)?)?;
        batches += 1;
        Ok(())
    })?;
    let blobs = add_blobs(&mut w, pool, &smallest_first(pool, wanted))?;
    finish(site, w, &m, copied_rows, blobs)
}

/// The head of the hub's stick for `center`, with how far the hub holds its changes, and the secret
/// it is signed with. The hub's own changes are recorded first, so the stick has them.
fn hub_head(site: &mut Site, policy: &Policy, center: u32) -> Result<(Manifest, Secret)> {
    let secret = centers::center_secret(site.conn(), center)?.with_context(|| {
        format!("site {center} is not a center registered at this hub (appliance hub add-center)")
    })?;
    site.capture(policy)?;
    let mut m = head(HUB, center)?;
    m.acked = inbox::received(site.conn(), center)?;
    Ok((m, secret))
}

/// Small first, as the link does: a stick cut short still brings the most files.
fn smallest_first(pool: Option<&Pool>, wanted: BTreeSet<ContentHash>) -> Vec<ContentHash> {
    let Some(pool) = pool else {
        return Vec::new();
    };
    let mut sends: Vec<(u64, ContentHash)> = wanted
        .into_iter()
        .filter_map(|hash| match pool.find(&hash) {
            Found::Live(size) => Some((size, hash)),
            _ => None,
        })
        .collect();
    sends.sort();
    sends.into_iter().map(|(_, h)| h).collect()
}

/// The blob a `files` row change references, if any.
fn file_blob(c: &Change) -> Option<ContentHash> {
    if c.table != "files" {
        return None;
    }
    let (Op::Insert(row) | Op::Update(row)) = &c.op else {
        return None;
    };
    row_blob(row)
}

/// The blob a `files` row references.
fn row_blob(row: &crate::sync::engine::change::Row) -> Option<ContentHash> {
    match row.get("contenthash")? {
        Value::Bytes(b) => ContentHash::parse(std::str::from_utf8(b).ok()?).ok(),
        _ => None,
    }
}

fn hashes_of(conn: &mut impl Queryable, table: &str, center: u32) -> Result<Vec<ContentHash>> {
    let rows: Vec<Vec<u8>> = conn
        .exec(
            format!("SELECT hash FROM kituo_sync.{table} WHERE center = ? ORDER BY hash"),
            (center,),
        )
        .with_context(|| format!("cannot read kituo_sync.{table}"))?;
    rows.iter().map(|r| ContentHash::from_slice(r)).collect()
}

fn add_blobs(w: &mut Writer, pool: Option<&Pool>, hashes: &[ContentHash]) -> Result<u64> {
    let Some(pool) = pool else {
        return Ok(0);
    };
    let mut n = 0;
    for hash in hashes {
        let mut read = |offset, max| pool.read(hash, offset, max);
        if w.add_blob(*hash, CHUNK, &mut read)? {
            n += 1;
        }
    }
    Ok(n)
}

fn finish(site: &mut Site, w: Writer, m: &Manifest, changes: u64, blobs: u64) -> Result<Exported> {
    let (volumes, bytes) = w.finish()?;
    history::record(
        site.conn(),
        &StickRecord {
            at: crate::history::unix_now(),
            direction: "export".into(),
            peer: manifest::site_name(m.to),
            stick: m.stick.clone(),
            volumes: volumes.len() as u32,
            bytes,
            changes,
            blobs,
            ok: true,
            result: format!(
                "{changes} changes and {blobs} files in {} volumes",
                volumes.len()
            ),
        },
    )?;
    Ok(Exported {
        stick: m.stick.clone(),
        volumes,
        bytes,
        changes,
        blobs,
    })
}
