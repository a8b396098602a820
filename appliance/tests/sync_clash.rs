//! A unique-key clash between two rows that reach a third site in one batch (found by the workload
//! test: a student's first visit to a course recorded at the hub and at a center).

use anyhow::Result;
use appliance::sync::bed::world;
use mysql::prelude::Queryable;

#[test]
fn a_clash_inside_one_pulled_batch_keeps_the_earlier_born_row_as_everywhere_else() -> Result<()> {
    let mut w = world("kituo-sync-clash-batch", 2)?;
    // Center 2 records the first visit, and captures it (its stamp is the earlier one)...
    w.centers[0].sql()?.query_drop(
        "INSERT INTO mdl_user_lastaccess (userid, courseid, timeaccess) VALUES (3, 2, 100)",
    )?;
    w.centers[0].site.capture(&w.policy)?;
    // ...then the hub records its own for the same user and course. The hub relays its own row first
    // and center 2's (which wins at the hub) after it: center 3 gets both in one page.
    w.hub.sql()?.query_drop(
        "INSERT INTO mdl_user_lastaccess (userid, courseid, timeaccess) VALUES (3, 2, 200)",
    )?;
    w.sync_all()?;
    let rows = w.assert_same_everywhere("user_lastaccess")?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0][0].as_deref(),
        Some("'2'"),
        "center 2's row was born first and keeps its id: {rows:?}"
    );
    Ok(())
}
