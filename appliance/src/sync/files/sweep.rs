//! Moodle's trash semantics for files deleted elsewhere. When Moodle deletes the last file using a
//! blob, it moves the blob to trashdir (and recovers it from there if the content comes back). When a
//! `files` row is deleted by sync instead, no Moodle code runs here, so the sweep does the same move
//! for blobs no row references.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::sync::engine::site::SiteConfig;
use crate::sync::files::hash::ContentHash;
use crate::sync::files::inventory;
use crate::sync::files::pool::Pool;

/// Moves every blob in filedir that no row references and that is older than `grace` to the trash;
/// returns how many. The grace spares a blob Moodle has just written and whose row it is about to
/// insert.
pub fn sweep(pool: &Pool, referenced: &HashSet<ContentHash>, grace: Duration) -> Result<u64> {
    let now = SystemTime::now();
    let mut moved = 0;
    for (hash, modified) in pool.live_blobs()? {
        let old = now.duration_since(modified).is_ok_and(|age| age >= grace);
        if old && !referenced.contains(&hash) {
            pool.trash(&hash)?;
            moved += 1;
        }
    }
    Ok(moved)
}

const HUB_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The hub's sweep, on a thread of its own: a center's deletions reach the hub's `files` table as rows
/// too.
pub fn spawn_hub_sweeper(pool: Pool, site: SiteConfig, grace: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("hub-sweep".into())
        .spawn(move || loop {
            std::thread::sleep(HUB_SWEEP_EVERY);
            let swept = mysql::Conn::new(site.opts.clone())
                .context("cannot connect to the hub's database")
                .and_then(|mut conn| inventory::referenced_hashes(&mut conn, &site.target))
                .and_then(|referenced| sweep(&pool, &referenced, grace));
            match swept {
                Ok(0) => {}
                Ok(n) => eprintln!("hub: {n} blobs no file references moved to trashdir"),
                Err(e) => eprintln!("hub: files: sweep: {e:#}"),
            }
        })
        .context("cannot start the hub's sweep")?;
    Ok(())
}
