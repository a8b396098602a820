//! Cards without RTC boot with a wrong clock: one center runs an hour behind, another a year ahead
//! (MariaDB and the agent both under libfaketime, as everything on a card shares its clock). Their
//! changes must still be stamped in the hub's time, so that of two edits of one post the later one
//! wins at every site, whichever site made it and however late its agent captured it.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use appliance::sync::engine::clock::{millis_of, wall_millis, Stamp};
use appliance::sync::engine::{record, store};
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService,
};
use kituo_tests::bed::{world, Node, World};
use kituo_tests::testbed::faked_clock;
use mysql::prelude::Queryable;

/// The centers' clocks, in libfaketime's words and in seconds.
const CLOCKS: &[(&str, i64)] = &[("-1h", -3600), ("+365d", 365 * 86400)];
/// More than the binlog's one-second resolution, so that "later" is later at every site.
const APART: Duration = Duration::from_millis(1500);

fn edit(node: &Node, text: &str) -> Result<()> {
    node.sql()?.exec_drop(
        "UPDATE mdl_forum_posts SET message = ?, modified = UNIX_TIMESTAMP() WHERE id = 1",
        (text,),
    )?;
    Ok(())
}

fn message_everywhere(w: &World) -> Result<String> {
    w.wait_converged(&["forum_posts"], Duration::from_secs(60))?;
    let mut c = w.hub.sql()?;
    c.query_first("SELECT message FROM mdl_forum_posts WHERE id = 1")?
        .context("the seeded post is gone")
}

/// Who wrote the post's message last, by the hub's row clock.
fn message_stamp(w: &World) -> Result<Stamp> {
    let clock = store::read_clock(&mut w.hub.sql()?, "forum_posts", 1)?;
    Ok(clock
        .context("the hub has no clock for the post")?
        .column("message"))
}

/// The highest stamp a site has handed out or seen, in milliseconds.
fn clock_of(node: &Node) -> Result<u64> {
    Ok(millis_of(store::get_u64(&mut node.sql()?, record::HLC)?))
}

#[test]
fn the_later_edit_wins_when_a_cards_clock_is_an_hour_behind_or_a_year_ahead() -> Result<()> {
    let exe = kituo_tests::appliance_binary();
    let mut w = world("kituo-sync-clock", 2)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe, &w.hub, &dir)?;
    let mut agents = Vec::new();
    for (c, (offset, secs)) in w.centers.iter_mut().zip(CLOCKS) {
        let env = faked_clock(offset)?;
        c.db.restart_with_env(env.clone())?;
        c.reopen()?;
        // The fake must hold, or this test proves nothing.
        let now: i64 = c
            .sql()?
            .query_first("SELECT UNIX_TIMESTAMP()")?
            .unwrap_or(0);
        let off = now - (wall_millis() / 1000) as i64 - secs;
        ensure!(
            off.abs() < 60,
            "center {}'s MariaDB is not {offset} ({off} s off)",
            c.id
        );
        let secret = hub.add_center(exe, c.id)?;
        let password = engine_account(c, &dir)?;
        let config = center_config(c, &dir, &AgentOptions::new(hub.addr, secret), &password, "")?;
        let log = dir.join(format!("agent{}.log", c.id));
        agents.push(AgentService::start_with_env(exe, &config, log, env)?);
    }

    for (i, agent) in agents.iter_mut().enumerate() {
        let center = &w.centers[i];
        let name = format!("center {} ({})", center.id, CLOCKS[i].0);
        // The agent stopped: its edits wait in the binlog and are captured late.
        agent.proc.kill();
        edit(&w.hub, &format!("hub, before {name}"))?;
        std::thread::sleep(APART);
        let made = wall_millis();
        let later = format!("{name}, after the hub");
        edit(center, &later)?;
        std::thread::sleep(APART);
        agent.restart(exe)?;
        let got = message_everywhere(&w)?;
        ensure!(
            got == later,
            "{name}'s later edit lost: every site has {got:?}"
        );
        let stamp = message_stamp(&w)?;
        ensure!(
            stamp.site == center.id,
            "the winner is stamped by site {}",
            stamp.site
        );
        let skew = millis_of(stamp.hlc) as i64 - made as i64;
        ensure!(
            (-1000..2000).contains(&skew),
            "{name}'s edit is stamped {skew} ms from when it was made, not in the hub's time"
        );

        agent.proc.kill();
        edit(center, &format!("{name}, before the hub"))?;
        std::thread::sleep(APART);
        let later = format!("hub, after {name}");
        edit(&w.hub, &later)?;
        agent.restart(exe)?;
        let got = message_everywhere(&w)?;
        ensure!(
            got == later,
            "the hub's later edit lost to {name}: every site has {got:?}"
        );

        // Running, both ways at once: the center captures within its period, the hub within its own.
        edit(center, &format!("{name}, running"))?;
        std::thread::sleep(APART);
        let later = format!("hub, after {name} running");
        edit(&w.hub, &later)?;
        let got = message_everywhere(&w)?;
        ensure!(
            got == later,
            "the hub's later edit lost to running {name}: {got:?}"
        );
    }

    // Nothing was ever stamped by the clock a year ahead: it would win every clash for a year.
    let ahead = wall_millis() + 60_000;
    for node in std::iter::once(&w.hub).chain(&w.centers) {
        let last = clock_of(node)?;
        ensure!(last > 0, "site {} stamped nothing", node.id);
        ensure!(
            last < ahead,
            "site {}'s clock went to {last}, ahead of the hub's",
            node.id
        );
    }
    for a in &mut agents {
        ensure!(
            a.is_running(),
            "an agent died; its log:\n{}",
            a.proc.log_text()
        );
    }
    drop(hub);
    Ok(())
}
