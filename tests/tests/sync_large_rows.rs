//! A row larger than any batch travels both ways over a link that cuts: `appliance hub` and two
//! centers' agents as processes, HTTP through the fault-injecting proxy, posts of 20 MB (Moodle's page
//! content, question text and H5P JSON reach that). Such a batch or page goes in parts of the batch
//! size; a cut costs a part, not the row.

use std::time::Duration;

use anyhow::{ensure, Result};
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService,
};
use kituo_tests::bed::{reply, world};
use kituo_tests::linkem::{LinkProfile, LinkProxy};
use mysql::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The batch size, and so the part size: larger than the default 64 KiB to keep a debug build quick.
const BATCH_KIB: usize = 1024;

/// Bytes of a large post: above every limit a request has (the batch size, 16 MiB a body).
const LARGE: usize = 20 << 20;

/// Text that compresses no better than hex does (half): about 10 MB on the wire.
fn text(seed: u64) -> String {
    let mut bytes = vec![0u8; LARGE / 2];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    hex::encode(bytes)
}

#[test]
fn twenty_megabyte_posts_travel_both_ways_over_a_cutting_link() -> Result<()> {
    let exe = kituo_tests::appliance_binary();
    let w = world("kituo-sync-large", 2)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe, &w.hub, &dir)?;
    let mut proxies = Vec::new();
    let mut agents = Vec::new();
    for c in &w.centers {
        let secret = hub.add_center(exe, c.id)?;
        let proxy = LinkProxy::start(
            hub.addr,
            LinkProfile::default()
                .seed(u64::from(c.id))
                .cut_mean_bytes(3_000_000),
        )?;
        let password = engine_account(c, &dir)?;
        let mut opts = AgentOptions::new(proxy.addr(), secret);
        opts.interval_seconds = 1;
        opts.backoff_max_seconds = 1;
        opts.batch_kib = BATCH_KIB;
        opts.timeout_seconds = 30;
        let config = center_config(c, &dir, &opts, &password, "")?;
        let log = dir.join(format!("agent{}.log", c.id));
        agents.push(AgentService::start(exe, &config, log)?);
        proxies.push(proxy);
    }

    // A large post at center 2 with small ones after it, and one at the hub.
    reply(&w.centers[0], 3, &text(2), 20_000)?;
    reply(&w.centers[0], 3, "after the large one", 20_001)?;
    reply(&w.hub, 2, &text(1), 20_002)?;

    let started = std::time::Instant::now();
    if let Err(e) = w.wait_converged(&["forum_posts"], Duration::from_secs(600)) {
        for a in &agents {
            eprintln!("--- {}\n{}", a.proc.log.display(), a.proc.log_text());
        }
        eprintln!("--- hub\n{}", hub.proc.log_text());
        return Err(e);
    }
    eprintln!("converged in {:?}", started.elapsed());
    let sums: Vec<(u64, u64, String)> = w.centers[1].sql()?.query(
        "SELECT id, LENGTH(message), MD5(message) FROM mdl_forum_posts WHERE LENGTH(message) > 1000",
    )?;
    ensure!(
        sums.len() == 2 && sums.iter().all(|(_, len, _)| *len as usize == LARGE),
        "center 3 holds both large posts whole: {sums:?}"
    );

    // Each post crossed about once: a cut resends at most the part it cut, never the whole row.
    let part = BATCH_KIB << 10;
    let compressed = LARGE / 2 + LARGE / 20;
    let (to_hub, to_center) = (proxies[0].stats(), proxies[1].stats());
    ensure!(
        to_hub.cuts + to_center.cuts >= 4,
        "the links were cut ({} and {} times)",
        to_hub.cuts,
        to_center.cuts
    );
    let bound = compressed + (to_hub.cuts as usize + 2) * part;
    ensure!(
        (to_hub.bytes_up as usize) < bound,
        "center 2 sent {} bytes for a post of about {compressed} compressed, with {} cuts",
        to_hub.bytes_up,
        to_hub.cuts
    );
    let bound = 2 * compressed + (to_center.cuts as usize + 2) * part;
    ensure!(
        (to_center.bytes_down as usize) < bound,
        "center 3 received {} bytes for two posts of about {compressed} compressed, with {} cuts",
        to_center.bytes_down,
        to_center.cuts
    );
    let parts: u64 = w
        .hub
        .sql()?
        .query_first("SELECT COUNT(*) FROM kituo_sync.parts")?
        .unwrap_or(1);
    ensure!(parts == 0, "the hub still keeps {parts} parts");
    Ok(())
}
