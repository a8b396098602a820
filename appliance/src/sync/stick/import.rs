//! `appliance sync import`: verifies every volume in a folder first, then applies what verified, by the
//! same paths the link uses: at the hub the inbox (the origin check, then the rules in the applier), at
//! a center the pull's apply with its hub cursor. Exactly-once rests on their watermarks, so a stick
//! imported twice, or an older one after a newer, changes nothing.
//!
//! A half-copied stick: each volume stands alone, so the complete ones are used: row batches in order
//! up to the first one whose predecessor is missing (a batch says where it starts), and every blob
//! whose chunks all arrived and whose `files` row is here. What was missing is reported, naming files.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::store;
use crate::sync::exchange::agent::{self, HUB_CURSOR, PUSHED};
use crate::sync::exchange::centers;
use crate::sync::exchange::hub::{self, Receipt};
use crate::sync::exchange::inbox;
use crate::sync::exchange::wire::{self, Secret};
use crate::sync::files::hash::ContentHash;
use crate::sync::files::inventory;
use crate::sync::files::mover;
use crate::sync::files::pool::{Found, Pool, Progress};
use crate::sync::seed;
use crate::sync::stick::history::{self, StickRecord};
use crate::sync::stick::manifest::{site_name, Manifest, HUB};
use crate::sync::stick::volume::{self, Verified};

/// How long an import waits for a running hub's inbox applier before applying itself.
const DRAIN_WAIT_SECONDS: u32 = 30;

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    pub volumes: usize,
    /// Row changes in the batches applied (some may have been applied before: they are no-ops).
    pub changes: u64,
    pub placed: Vec<ContentHash>,
    /// Volumes refused or missing, rows or blobs left out: each names its file.
    pub problems: Vec<String>,
}

/// One stick's verified volumes, by index.
struct Stick {
    head: Manifest,
    volumes: BTreeMap<u32, Verified>,
}

impl Stick {
    fn bytes(&self) -> u64 {
        self.volumes.values().map(|v| v.bytes).sum()
    }
}

/// The volumes in `dir`, each verified; those that fail are reported, not used.
fn verify_dir(
    dir: &Path,
    key: &mut dyn FnMut(&Manifest) -> Result<Secret>,
    problems: &mut Vec<String>,
) -> Result<Vec<Stick>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kvol"))
        .collect();
    paths.sort();
    ensure!(
        !paths.is_empty(),
        "{} holds no Kituo volumes (*.kvol)",
        dir.display()
    );
    let mut sticks: BTreeMap<String, Stick> = BTreeMap::new();
    let mut refused = HashSet::new();
    for path in paths {
        match volume::verify(&path, key) {
            Ok(v) => {
                let b = sticks
                    .entry(v.manifest.stick.clone())
                    .or_insert_with(|| Stick {
                        head: v.manifest.clone(),
                        volumes: BTreeMap::new(),
                    });
                b.volumes.insert(v.manifest.index, v);
            }
            Err(e) => {
                problems.push(format!("{e:#}"));
                refused.insert(path);
            }
        }
    }
    let mut sticks: Vec<Stick> = sticks.into_values().collect();
    for b in &sticks {
        for index in 1..=b.head.volumes {
            let path = dir.join(b.head.file_name(index));
            if !b.volumes.contains_key(&index) && !refused.contains(&path) {
                problems.push(format!(
                    "volume {index} of {} ({}) is missing: its part is left out",
                    b.head.volumes,
                    path.display()
                ));
            }
        }
    }
    // Oldest first: a newer stick then finds its start applied.
    sticks.sort_by_key(|b| b.head.made_at);
    Ok(sticks)
}

/// Imports, at a center, the hub's sticks in `dir`. `code_version` is the `$version` of the card's
/// Moodle code, checked against a seed's (see `seed`).
pub fn at_center(
    site: &mut Site,
    policy: &Policy,
    secret: &Secret,
    pool: Option<&Pool>,
    dir: &Path,
    code_version: Option<f64>,
) -> Result<Imported> {
    let me = site.id();
    let mut key = |m: &Manifest| -> Result<Secret> {
        ensure!(
            m.to == me,
            "it was made for site {}, and this is site {me}",
            site_name(m.to)
        );
        ensure!(
            m.from == HUB,
            "it comes from site {}, not from the hub",
            site_name(m.from)
        );
        Ok(secret.clone())
    };
    let mut out = Imported::default();
    let sticks = verify_dir(dir, &mut key, &mut out.problems)?;
    for b in &sticks {
        let before = (out.changes, out.placed.len(), out.problems.len());
        let done = match b.head.seed {
            Some(log_end) => seed_stick(site, policy, pool, b, log_end, code_version, &mut out),
            None => center_stick(site, policy, pool, b, &mut out),
        };
        if let Err(e) = done {
            out.problems.push(format!("stick {}: {e:#}", b.head.stick));
        }
        note(site, b, &out, before)?;
    }
    finish(site, dir, sticks.is_empty(), out)
}

fn center_stick(
    site: &mut Site,
    policy: &Policy,
    pool: Option<&Pool>,
    b: &Stick,
    out: &mut Imported,
) -> Result<()> {
    // What the hub holds of ours: the outbox may drop it (never moves back).
    let acked = b
        .volumes
        .values()
        .map(|v| v.manifest.acked)
        .max()
        .unwrap_or(0);
    let pushed = store::get_u64(site.conn(), PUSHED)?;
    agent::record_receipt(
        site,
        pushed,
        Receipt {
            acked,
            rejected: 0,
            stuck: None,
        },
    )?;
    // Held at the hub: the outbox on the SD card may drop them, as after a push.
    agent::prune_outbox(site)?;
    // What the hub holds of our blobs: not exported again.
    let at_hub: Vec<ContentHash> = b
        .volumes
        .get(&1)
        .map(|first| {
            first
                .manifest
                .held
                .iter()
                .filter_map(|h| ContentHash::parse(h).ok())
                .collect()
        })
        .unwrap_or_default();
    'volumes: for v in b.volumes.values() {
        out.volumes += 1;
        for batch in &v.manifest.rows {
            let cursor = store::get_u64(site.conn(), HUB_CURSOR)?;
            if batch.last <= cursor {
                continue;
            }
            if batch.after > cursor {
                out.problems.push(gap(v, cursor, batch.after));
                break 'volumes;
            }
            let changes = wire::decode_batch(&v.read_rows(batch)?)
                .with_context(|| format!("in {}", v.path.display()))?;
            site.apply(policy, &changes, |tx, _| {
                // Only forward: an import racing the agent's pull must not move it back.
                if batch.last > store::get_u64(tx, HUB_CURSOR)? {
                    store::set(tx, HUB_CURSOR, &batch.last.to_string())?;
                }
                Ok(())
            })?;
            out.changes += changes.len() as u64;
        }
    }
    place_hubs_blobs(site, pool, b, at_hub, out)
}

/// Places the blobs of a stick from the hub, and remembers that the hub holds them and `at_hub`.
fn place_hubs_blobs(
    site: &mut Site,
    pool: Option<&Pool>,
    b: &Stick,
    mut at_hub: Vec<ContentHash>,
    out: &mut Imported,
) -> Result<()> {
    if let Some(pool) = pool {
        let target = site.target().clone();
        let mut referenced = |h: &ContentHash| inventory::is_referenced(site.conn(), &target, h);
        // The hub holds every blob it sticks.
        at_hub.extend(place_blobs(b, pool, ".stick", &mut referenced, out)?.seen);
    }
    mover::load_at_hub(site.conn())?;
    mover::remember_at_hub(site.conn(), &at_hub)?;
    Ok(())
}

/// A seed from the hub for a center joining the university (see `seed`): its rows are written whole
/// at every import (copying is idempotent, so a half-copied stick's rows are simply written again with
/// the rest), and the seed is done, and sync may start, once every volume arrived.
fn seed_stick(
    site: &mut Site,
    policy: &Policy,
    pool: Option<&Pool>,
    b: &Stick,
    log_end: u64,
    code_version: Option<f64>,
    out: &mut Imported,
) -> Result<()> {
    let acked = b.volumes.values().map(|v| v.manifest.acked).max();
    if !seed::begin_from_stick(site, log_end, acked.unwrap_or(0))? {
        out.problems.push(format!(
            "stick {}: this center was seeded before: its rows are left out",
            b.head.stick
        ));
        return place_hubs_blobs(site, pool, b, Vec::new(), out);
    }
    let mut next = 0;
    let mut complete = b.volumes.len() == b.head.volumes as usize;
    'volumes: for v in b.volumes.values() {
        out.volumes += 1;
        for batch in &v.manifest.rows {
            if batch.after != next {
                out.problems.push(gap(v, next, batch.after));
                complete = false;
                break 'volumes;
            }
            let copied: seed::Copied = wire::decode(&v.read_rows(batch)?)
                .with_context(|| format!("in {}", v.path.display()))?;
            out.changes += seed::write_copied(site, policy, &copied, code_version)?;
            next = batch.last;
        }
    }
    if complete {
        seed::finish(site)?;
    } else {
        out.problems.push(format!(
            "stick {}: the seed is not complete; import it again with the missing volumes",
            b.head.stick
        ));
    }
    place_hubs_blobs(site, pool, b, Vec::new(), out)
}

fn gap(v: &Verified, have: u64, starts: u64) -> String {
    format!(
        "{}: its row batches start after #{starts}, but only up to #{have} is here: the rest waits \
         for the missing volume",
        v.path.display()
    )
}

/// Imports, at the hub, the centers' sticks in `dir`.
pub fn at_hub(
    site: &mut Site,
    policy: &Policy,
    pool: Option<&Pool>,
    dir: &Path,
) -> Result<Imported> {
    let mut secrets: BTreeMap<u32, Secret> = BTreeMap::new();
    let mut lookup = |m: &Manifest| -> Result<Secret> {
        ensure!(
            m.to == HUB,
            "it was made for site {}, not for the hub",
            site_name(m.to)
        );
        if let Some(s) = secrets.get(&m.from) {
            return Ok(s.clone());
        }
        let secret = centers::center_secret(site.conn(), m.from)?.with_context(|| {
            format!(
                "it comes from site {}, which is not a center registered at this hub",
                site_name(m.from)
            )
        })?;
        secrets.insert(m.from, secret.clone());
        Ok(secret)
    };
    let mut out = Imported::default();
    let sticks = verify_dir(dir, &mut lookup, &mut out.problems)?;
    for b in &sticks {
        let before = (out.changes, out.placed.len(), out.problems.len());
        if let Err(e) = hub_stick(site, policy, pool, b, &mut out) {
            out.problems.push(format!("stick {}: {e:#}", b.head.stick));
        }
        note(site, b, &out, before)?;
    }
    finish(site, dir, sticks.is_empty(), out)
}

fn hub_stick(
    site: &mut Site,
    policy: &Policy,
    pool: Option<&Pool>,
    b: &Stick,
    out: &mut Imported,
) -> Result<()> {
    let center = b.head.from;
    'volumes: for v in b.volumes.values() {
        out.volumes += 1;
        for batch in &v.manifest.rows {
            let received = inbox::received(site.conn(), center)?;
            if batch.last <= received {
                continue;
            }
            if batch.after > received {
                out.problems.push(gap(v, received, batch.after));
                break 'volumes;
            }
            let body = v.read_rows(batch)?;
            let changes =
                wire::decode_batch(&body).with_context(|| format!("in {}", v.path.display()))?;
            // Stored as a pushed batch, then applied by the inbox's applier: the origin is checked
            // here and the rules there, exactly as for the link.
            while inbox::receive(site, center, &body, &changes)?.is_none() {
                if inbox::drain(site, policy, Some(center), DRAIN_WAIT_SECONDS)? == 0 {
                    bail!("{}", inbox::FULL);
                }
            }
            inbox::drain(site, policy, Some(center), DRAIN_WAIT_SECONDS)?;
            out.changes += changes.len() as u64;
        }
    }
    inbox::drain(site, policy, Some(center), DRAIN_WAIT_SECONDS)?;
    if inbox::waiting(site.conn(), center)? > 0 {
        let why = inbox::stuck(site.conn(), center)?.unwrap_or_else(|| "not applied yet".into());
        out.problems.push(format!(
            "the hub holds center {center}'s changes it cannot apply yet: {why}"
        ));
    }
    let cursor = b
        .volumes
        .values()
        .map(|v| v.manifest.cursor)
        .max()
        .unwrap_or(0);
    hub::note_pulled(site, center, cursor)?;
    if let Some(first) = b.volumes.get(&1) {
        let wants: Vec<ContentHash> = first
            .manifest
            .wants
            .iter()
            .filter_map(|h| ContentHash::parse(h).ok())
            .collect();
        replace_wants(site.conn(), center, &wants)?;
    }
    if let Some(pool) = pool {
        let target = site.target().clone();
        let mut referenced = |h: &ContentHash| inventory::is_referenced(site.conn(), &target, h);
        let before = out.placed.len();
        let blobs = place_blobs(b, pool, &format!(".stick{center}"), &mut referenced, out)?;
        let mut held = blobs.present;
        held.extend(out.placed[before..].iter().copied());
        mark_held(site.conn(), center, &held)?;
    }
    Ok(())
}

fn replace_wants(conn: &mut mysql::Conn, center: u32, wants: &[ContentHash]) -> Result<()> {
    conn.exec_drop(
        "DELETE FROM kituo_sync.bundle_wants WHERE center = ?",
        (center,),
    )
    .context("cannot update kituo_sync.bundle_wants")?;
    insert_hashes(conn, "bundle_wants", center, wants)
}

fn mark_held(conn: &mut mysql::Conn, center: u32, hashes: &[ContentHash]) -> Result<()> {
    insert_hashes(conn, "bundle_held", center, hashes)
}

fn insert_hashes(
    conn: &mut mysql::Conn,
    table: &str,
    center: u32,
    hashes: &[ContentHash],
) -> Result<()> {
    for batch in hashes.chunks(1000) {
        let marks = vec!["(?, ?)"; batch.len()].join(",");
        let params: Vec<mysql::Value> = batch
            .iter()
            .flat_map(|h| [center.into(), h.0.to_vec().into()])
            .collect();
        conn.exec_drop(
            format!("INSERT IGNORE INTO kituo_sync.{table} (center, hash) VALUES {marks}"),
            params,
        )
        .with_context(|| format!("cannot write kituo_sync.{table}"))?;
    }
    Ok(())
}

/// Places the stick's blobs that this site's `files` rows reference and it lacks, chunk by chunk
/// through the pool (sha1 checked, placed atomically). A blob cut by a missing volume stays a partial
/// copy and is reported; the next stick completes it.
fn place_blobs(
    b: &Stick,
    pool: &Pool,
    tag: &str,
    referenced: &mut dyn FnMut(&ContentHash) -> Result<bool>,
    out: &mut Imported,
) -> Result<Blobs> {
    let mut present = Vec::new();
    let mut skip: HashSet<ContentHash> = HashSet::new();
    let mut writing: HashSet<ContentHash> = HashSet::new();
    for v in b.volumes.values() {
        let mut problems = Vec::new();
        let read = v.chunks(&mut |c| {
            if skip.contains(&c.hash) {
                return Ok(());
            }
            if writing.insert(c.hash) {
                if matches!(pool.find(&c.hash), Found::Live(_)) {
                    present.push(c.hash);
                    skip.insert(c.hash);
                    return Ok(());
                }
                if !referenced(&c.hash)? {
                    // Its row did not come (a gap, or the rules refused it): not taken.
                    skip.insert(c.hash);
                    return Ok(());
                }
            }
            match pool.write(&c, tag) {
                Ok(Progress::Placed) => {
                    out.placed.push(c.hash);
                    skip.insert(c.hash);
                }
                Ok(Progress::Partial(_)) => {}
                Err(e) => {
                    problems.push(format!("{}: file {}: {e:#}", v.path.display(), c.hash));
                    skip.insert(c.hash);
                }
            }
            Ok(())
        });
        if let Err(e) = read {
            out.problems.push(format!("{e:#}"));
        }
        out.problems.extend(problems);
    }
    for hash in &writing {
        if !skip.contains(hash) {
            out.problems.push(format!(
                "file {hash} is incomplete in this copy (a volume is missing); its part is kept"
            ));
        }
    }
    Ok(Blobs {
        present,
        seen: writing.into_iter().collect(),
    })
}

/// The blobs of a stick: those this site held already, and every one it carried.
struct Blobs {
    present: Vec<ContentHash>,
    seen: Vec<ContentHash>,
}

/// Records one stick's import in the history.
fn note(site: &mut Site, b: &Stick, out: &Imported, before: (u64, usize, usize)) -> Result<()> {
    let problems = &out.problems[before.2..];
    let (changes, blobs) = (out.changes - before.0, (out.placed.len() - before.1) as u64);
    let mut result = format!(
        "applied {changes} changes, placed {blobs} files from {} of {} volumes",
        b.volumes.len(),
        b.head.volumes
    );
    for p in problems {
        result.push_str("; ");
        result.push_str(p);
    }
    history::record(
        site.conn(),
        &StickRecord {
            at: crate::history::unix_now(),
            direction: "import".into(),
            peer: site_name(b.head.from),
            stick: b.head.stick.clone(),
            volumes: b.volumes.len() as u32,
            bytes: b.bytes(),
            changes,
            blobs,
            ok: problems.is_empty(),
            result,
        },
    )
}

/// Records a refusal that left no stick to apply; returns the outcome.
fn finish(site: &mut Site, dir: &Path, none: bool, out: Imported) -> Result<Imported> {
    if none {
        history::record(
            site.conn(),
            &StickRecord {
                at: crate::history::unix_now(),
                direction: "import".into(),
                peer: "?".into(),
                stick: String::new(),
                volumes: 0,
                bytes: 0,
                changes: 0,
                blobs: 0,
                ok: false,
                result: format!(
                    "nothing applied from {}: {}",
                    dir.display(),
                    out.problems.join("; ")
                ),
            },
        )?;
    }
    Ok(out)
}
