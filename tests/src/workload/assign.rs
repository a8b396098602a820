//! The assignment's actions: a student submits online text, a teacher grades it in the grader, and
//! the gradebook follows.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;
use serde_json::json;

use crate::workload::event::{log, Event, LEVEL_PARTICIPATING, LEVEL_TEACHING};
use crate::workload::moodle::{
    access, enrolled_students, last_id, pick, student, Done, Scene, FORMAT_HTML,
};
use crate::workload::text::{counts, Text};

/// `assign::save_submission()` with the online text plugin and drafts off: the submission is
/// created if needed, its text saved, and it is submitted at once.
pub(super) fn submit(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let Some(user) = student(tx, s)? else {
        return Ok(Done::skip(0));
    };
    access(tx, s, user)?;
    let assign = s.course.assign;
    let found: Option<i64> = tx
        .exec_first(
            "SELECT id FROM mdl_assign_submission WHERE assignment = ? AND userid = ? AND groupid = 0
             AND attemptnumber = 0",
            (assign, user),
        )
        .context("cannot read the submission")?;
    let submission = match found {
        Some(id) => id,
        None => {
            tx.exec_drop(
                "INSERT INTO mdl_assign_submission (assignment, userid, timecreated, timemodified, timestarted,
                     status, groupid, attemptnumber, latest)
                 VALUES (?, ?, ?, ?, NULL, 'new', 0, 0, 1)",
                (assign, user, s.now, s.now),
            )
            .context("cannot create the submission")?;
            last_id(tx, "submission")?
        }
    };
    let mut text = Text::new(s.draw.text);
    let essay = format!("<p>{}</p>", text.sentences(150, 300));
    let (words, _) = counts(&essay);
    let online: Option<i64> = tx
        .exec_first(
            "SELECT id FROM mdl_assignsubmission_onlinetext WHERE submission = ?",
            (submission,),
        )
        .context("cannot read the online text")?;
    let (online, event, action, crud) = match online {
        Some(id) => {
            tx.exec_drop(
                "UPDATE mdl_assignsubmission_onlinetext SET onlinetext = ?, onlineformat = ? WHERE id = ?",
                (&essay, FORMAT_HTML, id),
            )
            .context("cannot save the online text")?;
            (id, "submission_updated", "updated", "u")
        }
        None => {
            tx.exec_drop(
                "INSERT INTO mdl_assignsubmission_onlinetext (assignment, submission, onlinetext, onlineformat)
                 VALUES (?, ?, ?, ?)",
                (assign, submission, &essay, FORMAT_HTML),
            )
            .context("cannot save the online text")?;
            (
                last_id(tx, "online text")?,
                "submission_created",
                "created",
                "c",
            )
        }
    };
    let ctx = s.course.assign_context;
    log(
        tx,
        s,
        Event {
            name: "\\assignsubmission_onlinetext\\event\\assessable_uploaded",
            component: "assignsubmission_onlinetext",
            action: "uploaded",
            target: "assessable",
            table: Some("assign_submission"),
            object: Some(submission),
            crud: "c",
            level: LEVEL_PARTICIPATING,
            ctx,
            user,
            related: None,
            other: Some(json!({ "content": essay, "pathnamehashes": [] })),
        },
    )?;
    log(
        tx,
        s,
        Event {
            name: &format!("\\assignsubmission_onlinetext\\event\\{event}"),
            component: "assignsubmission_onlinetext",
            action,
            target: "submission",
            table: Some("assignsubmission_onlinetext"),
            object: Some(online),
            crud,
            level: LEVEL_PARTICIPATING,
            ctx,
            user,
            related: None,
            other: Some(json!({
                "submissionid": submission, "submissionattempt": 0,
                "submissionstatus": "submitted", "onlinetextwordcount": words
            })),
        },
    )?;
    tx.exec_drop(
        "UPDATE mdl_assign_submission SET timemodified = ?, status = 'submitted' WHERE id = ?",
        (s.now, submission),
    )
    .context("cannot submit")?;
    log(
        tx,
        s,
        Event {
            name: "\\mod_assign\\event\\assessable_submitted",
            component: "mod_assign",
            action: "submitted",
            target: "assessable",
            table: Some("assign_submission"),
            object: Some(submission),
            crud: "u",
            level: LEVEL_PARTICIPATING,
            ctx,
            user,
            related: None,
            other: Some(json!({ "submission_editable": true })),
        },
    )?;
    Ok(Done::did(user, submission))
}

/// A teacher grades a student in the grader: `assign::get_user_grade(create)`, `update_grade()`, the
/// feedback comment, then the gradebook (`grade_item::update_raw_grade()` with its history row, and
/// `grade_regrade_final_grades()` for the course total).
pub(super) fn grade(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let Some(teacher) = s.actor.or_else(|| pick(&s.course.teachers, s.draw.actor)) else {
        return Ok(Done::skip(0));
    };
    let student = match s.subject {
        Some(u) => Some(u),
        None => pick(&enrolled_students(tx, s)?, s.draw.pick),
    };
    let Some(student) = student else {
        return Ok(Done::skip(teacher));
    };
    access(tx, s, teacher)?;
    let assign = s.course.assign;
    let submitted: Option<i64> = tx
        .exec_first(
            "SELECT timemodified FROM mdl_assign_submission WHERE assignment = ? AND userid = ?
             AND attemptnumber = 0",
            (assign, student),
        )
        .context("cannot read the submission")?;
    let found: Option<(i64, i64)> = tx
        .exec_first(
            "SELECT id, timecreated FROM mdl_assign_grades WHERE assignment = ? AND userid = ?
             AND attemptnumber = 0",
            (assign, student),
        )
        .context("cannot read the grade")?;
    let (grade_id, created) = match found {
        Some(g) => g,
        None => {
            tx.exec_drop(
                "INSERT INTO mdl_assign_grades (assignment, userid, timecreated, timemodified, grader, grade,
                     attemptnumber)
                 VALUES (?, ?, ?, ?, -1, -1, 0)",
                (assign, student, s.now, submitted.unwrap_or(s.now)),
            )
            .context("cannot create the grade")?;
            (last_id(tx, "grade")?, s.now)
        }
    };
    let value = format!("{}.00000", 40 + s.draw.aux % 61);
    tx.exec_drop(
        "UPDATE mdl_assign_grades SET assignment = ?, userid = ?, timecreated = ?, timemodified = ?, grader = ?,
             grade = ?, attemptnumber = 0
         WHERE id = ?",
        (assign, student, created, s.now, teacher, &value, grade_id),
    )
    .context("cannot update the grade")?;
    let mut text = Text::new(s.draw.text);
    let feedback = format!("<p>{}</p>", text.sentences(8, 40));
    let comment: Option<i64> = tx
        .exec_first(
            "SELECT id FROM mdl_assignfeedback_comments WHERE grade = ?",
            (grade_id,),
        )
        .context("cannot read the feedback")?;
    match comment {
        Some(id) => tx.exec_drop(
            "UPDATE mdl_assignfeedback_comments SET commenttext = ?, commentformat = ? WHERE id = ?",
            (&feedback, FORMAT_HTML, id),
        ),
        None => tx.exec_drop(
            "INSERT INTO mdl_assignfeedback_comments (assignment, grade, commenttext, commentformat)
             VALUES (?, ?, ?, ?)",
            (assign, grade_id, &feedback, FORMAT_HTML),
        ),
    }
    .context("cannot save the feedback")?;
    let activity = write_grade(
        tx,
        s,
        &GradeWrite {
            item: s.course.grade_item,
            user: student,
            raw: Some(&value),
            finalgrade: &value,
            feedback: Some(&feedback),
            usermodified: Some(teacher),
            source: "mod/assign",
            loggeduser: teacher,
            timecreated: submitted,
        },
    )?;
    if let Some(gg) = activity {
        write_grade(
            tx,
            s,
            &GradeWrite {
                item: s.course.course_item,
                user: student,
                raw: None,
                finalgrade: &value,
                feedback: None,
                usermodified: None,
                source: "aggregation",
                loggeduser: teacher,
                timecreated: None,
            },
        )?;
        tx.exec_drop(
            "UPDATE mdl_grade_grades SET aggregationstatus = 'used', aggregationweight = 1.00000
             WHERE id = ? AND aggregationstatus <> 'used'",
            (gg,),
        )
        .context("cannot mark the grade as aggregated")?;
        log(
            tx,
            s,
            Event {
                name: "\\core\\event\\user_graded",
                component: "core",
                action: "graded",
                target: "user",
                table: Some("grade_grades"),
                object: Some(gg),
                crud: "u",
                level: LEVEL_TEACHING,
                ctx: s.course.context,
                user: teacher,
                related: Some(student),
                other: Some(json!({
                    "itemid": s.course.grade_item, "overridden": false, "finalgrade": value
                })),
            },
        )?;
    }
    log(
        tx,
        s,
        Event {
            name: "\\mod_assign\\event\\submission_graded",
            component: "mod_assign",
            action: "graded",
            target: "submission",
            table: Some("assign_grades"),
            object: Some(grade_id),
            crud: "u",
            level: LEVEL_TEACHING,
            ctx: s.course.assign_context,
            user: teacher,
            related: Some(student),
            other: None,
        },
    )?;
    Ok(Done::did(teacher, grade_id))
}

struct GradeWrite<'a> {
    item: i64,
    user: i64,
    raw: Option<&'a str>,
    finalgrade: &'a str,
    feedback: Option<&'a str>,
    usermodified: Option<i64>,
    source: &'a str,
    loggeduser: i64,
    timecreated: Option<i64>,
}

/// `grade_grade::insert()` / `update()` when the grade changed, each with its history row; returns the
/// grade's id when it was written.
fn write_grade(tx: &mut Transaction<'_>, s: &Scene<'_>, g: &GradeWrite<'_>) -> Result<Option<i64>> {
    type Found = (i64, Option<String>, Option<String>, Option<String>);
    let found: Option<Found> = tx
        .exec_first(
            "SELECT id, rawgrade, finalgrade, feedback FROM mdl_grade_grades WHERE itemid = ? AND userid = ?",
            (g.item, g.user),
        )
        .context("cannot read the gradebook")?;
    let feedbackformat = if g.feedback.is_some() { FORMAT_HTML } else { 0 };
    let (id, action) = match found {
        None => {
            tx.exec_drop(
                "INSERT INTO mdl_grade_grades (itemid, userid, rawgrade, rawgrademax, rawgrademin, rawscaleid,
                     usermodified, finalgrade, hidden, locked, locktime, exported, overridden, excluded, feedback,
                     feedbackformat, information, informationformat, timecreated, timemodified,
                     aggregationstatus, aggregationweight)
                 VALUES (?, ?, ?, 100, 0, NULL, ?, ?, 0, 0, 0, 0, 0, 0, ?, ?, NULL, 0, ?, ?, 'unknown', NULL)",
                (
                    g.item,
                    g.user,
                    g.raw,
                    g.usermodified,
                    g.finalgrade,
                    g.feedback,
                    feedbackformat,
                    g.timecreated,
                    s.now,
                ),
            )
            .context("cannot insert the grade")?;
            (last_id(tx, "gradebook grade")?, 1)
        }
        Some((id, raw, finalgrade, feedback)) => {
            let same = same_number(raw.as_deref(), g.raw)
                && same_number(finalgrade.as_deref(), Some(g.finalgrade))
                && feedback.as_deref() == g.feedback;
            if same {
                return Ok(None);
            }
            tx.exec_drop(
                "UPDATE mdl_grade_grades SET rawgrade = ?, rawgrademax = 100, rawgrademin = 0, usermodified = ?,
                     finalgrade = ?, feedback = ?, feedbackformat = ?, timecreated = ?, timemodified = ?
                 WHERE id = ?",
                (
                    g.raw,
                    g.usermodified,
                    g.finalgrade,
                    g.feedback,
                    feedbackformat,
                    g.timecreated,
                    s.now,
                    id,
                ),
            )
            .context("cannot update the grade")?;
            (id, 2)
        }
    };
    tx.exec_drop(
        "INSERT INTO mdl_grade_grades_history (action, oldid, source, timemodified, loggeduser, itemid, userid,
             rawgrade, rawgrademax, rawgrademin, rawscaleid, usermodified, finalgrade, hidden, locked, locktime,
             exported, overridden, excluded, feedback, feedbackformat, information, informationformat)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 100, 0, NULL, ?, ?, 0, 0, 0, 0, 0, 0, ?, ?, NULL, 0)",
        values![
            action,
            id,
            g.source,
            s.now,
            g.loggeduser,
            g.item,
            g.user,
            g.raw,
            g.usermodified,
            g.finalgrade,
            g.feedback,
            feedbackformat,
        ],
    )
    .context("cannot write the grade history")?;
    Ok(Some(id))
}

fn same_number(a: Option<&str>, b: Option<&str>) -> bool {
    let parse = |v: Option<&str>| v.and_then(|t| t.trim().parse::<f64>().ok());
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-5,
        (None, None) => true,
        _ => false,
    }
}
