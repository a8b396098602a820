//! A unique-key clash between two rows that reach a third site in one batch (found by the workload
//! test: a student's first visit to a course recorded at the hub and at a center).

use anyhow::Result;
use appliance::sync::exchange::agent;
use kituo_tests::bed::{world, Direct};
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

#[test]
fn a_reference_to_a_merged_row_arriving_in_a_later_batch_follows_the_winner() -> Result<()> {
    let mut w = world("kituo-sync-clash-ref", 2)?;
    // Center 3 grades the student first...
    w.centers[1].sql()?.query_drop(
        "INSERT INTO mdl_assign_grades (assignment, userid, timecreated, timemodified, grader, grade, attemptnumber)
         VALUES (1, 3, 10, 10, 2, 50, 0)",
    )?;
    w.centers[1].site.capture(&w.policy)?;
    // ...then center 2 grades the same student, with a feedback comment on its grade row.
    let mut c = w.centers[0].sql()?;
    let mut tx = c.start_transaction(mysql::TxOpts::default())?;
    tx.query_drop(
        "INSERT INTO mdl_assign_grades (assignment, userid, timecreated, timemodified, grader, grade, attemptnumber)
         VALUES (1, 3, 20, 20, 2, 70, 0)",
    )?;
    tx.query_drop(
        "INSERT INTO mdl_assignfeedback_comments (assignment, grade, commenttext, commentformat)
         VALUES (1, LAST_INSERT_ID(), 'Good work', 1)",
    )?;
    tx.commit()?;
    // One change per page: center 3 merges center 2's grade into its own in one batch and gets the
    // comment naming the losing id in the next.
    for _ in 0..2 {
        w.hub.site.capture(&w.policy)?;
        for c in &mut w.centers {
            let mut link = Direct {
                hub: &mut w.hub.site,
                policy: &w.policy,
                center: c.id,
            };
            agent::sync_once(&mut c.site, &w.policy, &mut link, 1)?;
        }
    }
    let grades = w.assert_same_everywhere("assign_grades")?;
    assert_eq!(grades.len(), 1, "{grades:?}");
    let comments = w.assert_same_everywhere("assignfeedback_comments")?;
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(
        comments[0][2], grades[0][0],
        "the comment names the surviving grade: {comments:?} {grades:?}"
    );
    Ok(())
}

#[test]
fn a_row_written_after_a_merge_naming_the_losing_row_points_at_the_winner_everywhere() -> Result<()>
{
    let mut w = world("kituo-sync-clash-stale", 2)?;
    // Center 3 grades the student first; center 2 grades the same student after.
    w.centers[1].sql()?.query_drop(
        "INSERT INTO mdl_assign_grades (assignment, userid, timecreated, timemodified, grader, grade, attemptnumber)
         VALUES (1, 3, 10, 10, 2, 50, 0)",
    )?;
    w.centers[1].site.capture(&w.policy)?;
    let mut c = w.centers[0].sql()?;
    c.query_drop(
        "INSERT INTO mdl_assign_grades (assignment, userid, timecreated, timemodified, grader, grade, attemptnumber)
         VALUES (1, 3, 20, 20, 2, 70, 0)",
    )?;
    let loser: i64 = c.query_first("SELECT LAST_INSERT_ID()")?.expect("an id");
    w.sync_all()?;
    let grades = w.assert_same_everywhere("assign_grades")?;
    assert_eq!(grades.len(), 1, "{grades:?}");
    assert_ne!(
        grades[0][0].as_deref(),
        Some(format!("'{loser}'").as_str()),
        "center 3's grade was born first and wins: {grades:?}"
    );
    // The teacher at center 2 posts the feedback form opened before the merge: it names the grade
    // row center 2 created, which no longer exists.
    c.query_drop(format!(
        "INSERT INTO mdl_assignfeedback_comments (assignment, grade, commenttext, commentformat)
         VALUES (1, {loser}, 'Well argued', 1)"
    ))?;
    w.sync_all()?;
    let comments = w.assert_same_everywhere("assignfeedback_comments")?;
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(
        comments[0][2], grades[0][0],
        "every site's comment names the surviving grade: {comments:?} {grades:?}"
    );
    Ok(())
}

/// `files.itemid` names a row of the table the file's component and area choose: a file uploaded to
/// a submission that lost a clash follows the surviving submission, and a file of another component
/// that has the same number stays where it is.
#[test]
fn a_file_of_a_merged_submission_follows_the_winner_and_no_other_file_moves() -> Result<()> {
    let mut w = world("kituo-sync-clash-files", 2)?;
    let submission =
        "INSERT INTO mdl_assign_submission (assignment, userid, timecreated, timemodified, status,
                          groupid, attemptnumber, latest) VALUES (1, 3, 10, 10, 'new', 0, 0, 1)";
    // Center 3 opens the student's submission first...
    w.centers[1].sql()?.query_drop(submission)?;
    w.centers[1].site.capture(&w.policy)?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // ...then center 2 does, and the student uploads a file to it; a forum attachment there
    // happens to carry the same number.
    let mut c = w.centers[0].sql()?;
    c.query_drop(submission)?;
    let loser: i64 = c.query_first("SELECT LAST_INSERT_ID()")?.expect("an id");
    for (component, area, hash) in [
        ("assignsubmission_file", "submission_files", "a"),
        ("mod_forum", "attachment", "b"),
    ] {
        c.exec_drop(
            "INSERT INTO mdl_files (contenthash, pathnamehash, contextid, component, filearea, itemid,
                 filepath, filename, userid, filesize, mimetype, status, timecreated, timemodified)
             VALUES (?, ?, 30, ?, ?, ?, '/', 'essay.pdf', 3, 10, 'application/pdf', 0, 20, 20)",
            (hash.repeat(40), hash.repeat(40), component, area, loser),
        )?;
    }
    w.centers[0].site.capture(&w.policy)?;
    w.sync_all()?;
    w.sync_all()?;
    let submissions = w.assert_same_everywhere("assign_submission")?;
    assert_eq!(submissions.len(), 1, "{submissions:?}");
    let winner = submissions[0][0].clone().expect("an id");
    assert_ne!(winner, format!("'{loser}'"), "center 3's was born first");
    w.assert_same_everywhere("files")?;
    let files: Vec<(String, i64)> = w
        .hub
        .sql()?
        .query("SELECT component, itemid FROM mdl_files ORDER BY component")?;
    assert_eq!(
        files,
        [
            (
                "assignsubmission_file".to_string(),
                winner.trim_matches('\'').parse()?
            ),
            ("mod_forum".to_string(), loser)
        ]
    );
    Ok(())
}
