//! The hub's inbox on a real MariaDB: a center's batch is held, acknowledged, applied after; a batch
//! the hub cannot apply holds only its own center, says why in every receipt, and goes in once the
//! hub is fixed.

use std::time::Duration;

use anyhow::Result;
use appliance::sync::engine::change::Change;
use appliance::sync::engine::policy::Direction;
use appliance::sync::exchange::agent;
use appliance::sync::exchange::{inbox, wire};
use kituo_tests::bed::{world, Node};
use mysql::prelude::Queryable;

/// A center's outbox as the agent sends it: the encoded batch, and its changes.
fn outbox(node: &mut Node) -> Result<(Vec<u8>, Vec<Change>)> {
    let batch = agent::prepare(&mut node.site, 0, 100, agent::BATCH_BYTES)?
        .expect("the center has changes");
    let changes = wire::decode_batch(&batch.body)?;
    Ok((batch.body, changes))
}

fn hub_values(w: &mut kituo_tests::bed::World) -> Result<Vec<String>> {
    Ok(w.hub
        .sql()?
        .query("SELECT value FROM mdl_user_preferences WHERE userid = 3 ORDER BY value")?)
}

#[test]
fn a_batch_the_hub_cannot_apply_holds_only_its_center_and_goes_in_once_fixed() -> Result<()> {
    let mut w = world("kituo-sync-inbox", 2)?;
    assert_eq!(w.policy.direction("user_preferences"), Direction::Both);
    // The hub's column is narrower than the centers' (a schema drift): center 2's value cannot go in.
    w.hub
        .sql()?
        .query_drop("ALTER TABLE mdl_user_preferences MODIFY value VARCHAR(10) NOT NULL")?;
    let long = "a value longer than the hub takes";
    w.centers[0].sql()?.exec_drop(
        "INSERT INTO mdl_user_preferences (userid, name, value) VALUES (3, 'theme', ?)",
        (long,),
    )?;
    w.centers[1].sql()?.query_drop(
        "INSERT INTO mdl_user_preferences (userid, name, value) VALUES (3, 'lang', 'sw')",
    )?;
    for c in &mut w.centers {
        c.site.capture(&w.policy)?;
    }
    let (center2, center3) = (w.centers[0].id, w.centers[1].id);
    let (body2, changes2) = outbox(&mut w.centers[0])?;
    let (body3, changes3) = outbox(&mut w.centers[1])?;

    // Held and acknowledged at once, before anything is applied.
    let receipt = inbox::receive(&mut w.hub.site, center2, &body2, &changes2)?.expect("room");
    assert_eq!(receipt.acked, changes2.last().map_or(0, |c| c.seq));
    assert_eq!(receipt.stuck, None);
    assert!(hub_values(&mut w)?.is_empty(), "nothing applied yet");
    inbox::receive(&mut w.hub.site, center3, &body3, &changes3)?.expect("room");

    // Center 2's batch fails; center 3's goes in all the same.
    let applied = inbox::drain(&mut w.hub.site, &w.policy, None, 0)?;
    assert_eq!(applied, 1, "only center 3's batch applies");
    assert_eq!(hub_values(&mut w)?, vec!["sw".to_owned()]);
    assert_eq!(inbox::waiting(w.hub.site.conn(), center2)?, 1);

    // Center 2's next push (a retry of the same batch) is told why its work is held.
    let again = inbox::receive(&mut w.hub.site, center2, &body2, &changes2)?.expect("room");
    assert_eq!(again.acked, receipt.acked, "nothing stored twice");
    let why = again.stuck.expect("the receipt says why the batch is held");
    assert!(why.contains("value"), "{why}");
    assert_eq!(inbox::waiting(w.hub.site.conn(), center2)?, 1);

    // Fixed at the hub: the held batch is tried again after its wait and goes in, once.
    w.hub
        .sql()?
        .query_drop("ALTER TABLE mdl_user_preferences MODIFY value VARCHAR(1333) NOT NULL")?;
    assert_eq!(
        inbox::drain(&mut w.hub.site, &w.policy, None, 0)?,
        0,
        "it waits"
    );
    std::thread::sleep(Duration::from_secs(inbox::RETRY_SECONDS + 1));
    assert_eq!(inbox::drain(&mut w.hub.site, &w.policy, None, 0)?, 1);
    assert_eq!(hub_values(&mut w)?, vec![long.to_owned(), "sw".to_owned()]);
    assert_eq!(inbox::waiting(w.hub.site.conn(), center2)?, 0);
    let after = inbox::receive(&mut w.hub.site, center2, &body2, &changes2)?.expect("room");
    assert_eq!((after.acked, after.stuck), (receipt.acked, None));
    assert_eq!(inbox::drain(&mut w.hub.site, &w.policy, None, 0)?, 0);
    assert_eq!(
        hub_values(&mut w)?.len(),
        2,
        "a replayed batch applies nothing"
    );
    Ok(())
}
