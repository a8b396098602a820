//! Apply holds plain inserts and updates back and writes them many rows per statement. The outcome
//! must be that of applying change by change: a center that takes the hub's changes as one page
//! ends identical to one that takes them one change per page (where nothing can be held), and a
//! statement the server refuses sends the batch back to the one-change-at-a-time path, whose error
//! names the change and which leaves nothing half-applied.

use anyhow::{ensure, Result};
use appliance::sync::engine::policy::Policy;
use appliance::sync::engine::store;
use appliance::sync::exchange::agent::{self, HUB_CURSOR};
use kituo_tests::bed::{world, Direct, Node, World};
use kituo_tests::workload::{Course, Workload, TWO_WAY_TABLES};
use mysql::prelude::Queryable;

/// Center `at` and the hub, reached in-process.
fn center_and_hub(w: &mut World, at: usize) -> (&mut Node, Direct<'_>, &Policy) {
    let World {
        hub,
        centers,
        policy,
        ..
    } = w;
    let node = &mut centers[at];
    let link = Direct {
        hub: &mut hub.site,
        policy,
        center: node.id,
    };
    (node, link, policy)
}

/// Pulls everything the hub has for center `at`, `max` changes per page; returns the pages.
fn pull_all(w: &mut World, at: usize, max: usize) -> Result<u64> {
    let (node, mut link, policy) = center_and_hub(w, at);
    let mut pages = 0;
    while agent::pull_once(&mut node.site, policy, &mut link, max)?.advanced {
        pages += 1;
    }
    Ok(pages)
}

fn push_all(w: &mut World, at: usize) -> Result<()> {
    let (node, mut link, policy) = center_and_hub(w, at);
    node.site.capture(policy)?;
    while agent::push_once(&mut node.site, &mut link, 200)?.acked > 0 {}
    Ok(())
}

fn same_as_hub(hub: &Node, node: &Node) -> Result<()> {
    for table in TWO_WAY_TABLES {
        ensure!(
            node.dump(table)? == hub.dump(table)?,
            "{table} differs between the hub and center {}",
            node.id
        );
    }
    Ok(())
}

#[test]
fn one_page_and_one_change_per_page_end_identical() -> Result<()> {
    let mut w = world("kituo-apply-batch", 4)?;
    let course = Course::install(&mut w.hub.sql()?, 30, 3, 20, 1_767_250_000)?;
    w.sync_all()?;

    // Centers 2 and 3 run one seed from the same state while apart: the same users' concurrent
    // enrolments, grades and first visits clash on unique keys at the hub; and every kind of action
    // runs (posts, their edits and deletes, last-access updates of rows just inserted).
    for (at, site) in [(0, 2), (1, 3)] {
        let mut workload = Workload::new(5, site, &course);
        let mut conn = w.centers[at].sql()?;
        for _ in 0..150 {
            workload.step(&mut conn)?;
        }
        push_all(&mut w, at)?;
    }
    w.hub.site.capture(&w.policy)?;

    let one_page = pull_all(&mut w, 2, 1_000_000)?;
    let one_by_one = pull_all(&mut w, 3, 1)?;
    ensure!(one_page == 1, "center 4 took {one_page} pages");
    ensure!(
        one_by_one > 500,
        "center 5 took only {one_by_one} one-change pages: too little to compare"
    );
    same_as_hub(&w.hub, &w.centers[2])?;
    same_as_hub(&w.hub, &w.centers[3])?;
    Ok(())
}

#[test]
fn a_refused_statement_falls_back_to_one_change_at_a_time_and_names_it() -> Result<()> {
    let mut w = world("kituo-apply-refused", 2)?;
    let course = Course::install(&mut w.hub.sql()?, 10, 2, 10, 1_767_250_000)?;
    w.sync_all()?;
    let mut workload = Workload::new(9, 2, &course);
    let mut conn = w.centers[0].sql()?;
    for _ in 0..40 {
        workload.step(&mut conn)?;
    }
    let marker = "a subject far longer than the receiving column allows";
    conn.query_drop(format!(
        "UPDATE mdl_forum_posts SET subject = '{marker}' WHERE id = (SELECT MAX(id) FROM mdl_forum_posts)"
    ))?;
    push_all(&mut w, 0)?;
    w.hub.site.capture(&w.policy)?;

    // Center 3's column is too narrow for one post's subject (strict mode refuses it).
    let receiver = &w.centers[1];
    receiver
        .sql()?
        .query_drop("ALTER TABLE mdl_forum_posts MODIFY subject VARCHAR(20) NOT NULL DEFAULT ''")?;
    let posts_before = receiver.dump("forum_posts")?;
    let users_before = receiver.dump("user")?;
    let cursor_before = store::get_u64(w.centers[1].site.conn(), HUB_CURSOR)?;

    let err = pull_all(&mut w, 1, 1_000_000).expect_err("the narrow column refuses the post");
    let text = format!("{err:#}");
    ensure!(
        text.contains("cannot apply change 2#") && text.contains("forum_posts"),
        "the error names the change, not a statement of many rows: {text}"
    );
    ensure!(text.contains("Data too long"), "{text}");
    let receiver = &w.centers[1];
    ensure!(
        receiver.dump("forum_posts")? == posts_before && receiver.dump("user")? == users_before,
        "nothing of the refused batch stays"
    );
    ensure!(store::get_u64(w.centers[1].site.conn(), HUB_CURSOR)? == cursor_before);

    // Widened again, the same page goes in whole.
    w.centers[1].sql()?.query_drop(
        "ALTER TABLE mdl_forum_posts MODIFY subject VARCHAR(255) NOT NULL DEFAULT ''",
    )?;
    pull_all(&mut w, 1, 1_000_000)?;
    same_as_hub(&w.hub, &w.centers[1])?;
    Ok(())
}
