//! The course the workload acts in, set up at the hub as an administrator would (roles, module
//! registry, a forum and an assignment with their contexts and grade items, a manual enrolment method,
//! students and teachers), then carried to the centers by sync itself.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::{Conn, Transaction, TxOpts};

/// A context row: what Moodle's log rows and role assignments point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub id: i64,
    /// CONTEXT_SYSTEM 10, CONTEXT_COURSE 50, CONTEXT_MODULE 70.
    pub level: i64,
    pub instance: i64,
}

/// Ids of the course's rows, the same at every site once synced.
#[derive(Debug, Clone)]
pub struct Course {
    pub id: i64,
    pub system: Ctx,
    pub context: Ctx,
    pub forum: i64,
    pub forum_context: Ctx,
    pub assign: i64,
    pub assign_context: Ctx,
    /// The assignment's grade item and the course total's.
    pub grade_item: i64,
    pub course_item: i64,
    /// The manual enrolment method.
    pub enrol: i64,
    pub student_role: i64,
    pub teacher_role: i64,
    /// Sorted; the first `enrolled` at install are enrolled, the rest wait for the enrol action.
    pub students: Vec<i64>,
    pub teachers: Vec<i64>,
    /// Moodle's clock at install.
    pub installed_at: i64,
}

const FIRST: &[&str] = &[
    "Amina", "Baraka", "Neema", "Juma", "Zawadi", "Daudi", "Rehema", "Hamisi", "Upendo", "Salim",
    "Imani", "Faraji", "Mwajuma", "Bakari", "Halima", "Tumaini", "Asha", "Elia", "Pendo", "Yusufu",
];
const LAST: &[&str] = &[
    "Mushi", "Mollel", "Kimaro", "Swai", "Massawe", "Lyimo", "Mrema", "Shirima", "Temba", "Urio",
    "Ngowi", "Kweka", "Minja", "Tarimo", "Msuya",
];

impl Course {
    /// Sets up the course at the hub, in the seeded forum's course (see `bed::SEED`): `students`
    /// students of whom `enrolled` are enrolled, and `teachers` editing teachers, enrolled.
    pub fn install(
        conn: &mut Conn,
        students: usize,
        teachers: usize,
        enrolled: usize,
        now: i64,
    ) -> Result<Course> {
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .context("cannot start a transaction")?;
        let course = install(&mut tx, students, teachers, enrolled, now)?;
        tx.commit().context("cannot commit the course")?;
        Ok(course)
    }
}

fn id_of(tx: &Transaction<'_>, what: &str) -> Result<i64> {
    let id = tx
        .last_insert_id()
        .with_context(|| format!("no id for the new {what}"))?;
    i64::try_from(id).with_context(|| format!("id of {what} out of range"))
}

fn insert(
    tx: &mut Transaction<'_>,
    what: &str,
    sql: &str,
    params: Vec<mysql::Value>,
) -> Result<i64> {
    tx.exec_drop(sql, params)
        .with_context(|| format!("cannot create the {what}"))?;
    id_of(tx, what)
}

fn context(
    tx: &mut Transaction<'_>,
    level: i64,
    instance: i64,
    parent: Option<&str>,
) -> Result<(Ctx, String)> {
    let depth = parent.map_or(1, |p| p.matches('/').count() as i64 + 1);
    let id = insert(
        tx,
        "context",
        "INSERT INTO mdl_context (contextlevel, instanceid, path, depth, locked) VALUES (?, ?, NULL, ?, 0)",
        vec![level.into(), instance.into(), depth.into()],
    )?;
    let path = format!("{}/{id}", parent.unwrap_or(""));
    tx.exec_drop("UPDATE mdl_context SET path = ? WHERE id = ?", (&path, id))
        .context("cannot set a context path")?;
    Ok((
        Ctx {
            id,
            level,
            instance,
        },
        path,
    ))
}

fn install(
    tx: &mut Transaction<'_>,
    n_students: usize,
    n_teachers: usize,
    enrolled: usize,
    now: i64,
) -> Result<Course> {
    let (forum, course): (i64, i64) = tx
        .query_first("SELECT id, course FROM mdl_forum ORDER BY id LIMIT 1")
        .context("cannot read the seeded forum")?
        .context("the site has no forum: install the course on a seeded site")?;
    let module = |tx: &mut Transaction<'_>, name: &str| {
        insert(
            tx,
            "module",
            "INSERT INTO mdl_modules (name, cron, lastcron, search, visible) VALUES (?, 0, 0, '', 1)",
            vec![name.into()],
        )
    };
    let forum_module = module(tx, "forum")?;
    let assign_module = module(tx, "assign")?;
    let role = |tx: &mut Transaction<'_>, short: &str, sortorder: i64| {
        insert(
            tx,
            "role",
            "INSERT INTO mdl_role (name, shortname, description, sortorder, archetype) VALUES ('', ?, '', ?, ?)",
            vec![short.into(), sortorder.into(), short.into()],
        )
    };
    let teacher_role = role(tx, "editingteacher", 3)?;
    let student_role = role(tx, "student", 5)?;

    let assign = insert(
        tx,
        "assignment",
        "INSERT INTO mdl_assign (course, name, intro, introformat, alwaysshowdescription, submissiondrafts,
             sendnotifications, sendlatenotifications, duedate, allowsubmissionsfromdate, grade, timemodified,
             gradingduedate, attemptreopenmethod, maxattempts, sendstudentnotifications)
         VALUES (?, 'Essay: the water cycle', '<p>Explain the water cycle in 300 words.</p>', 1, 1, 0, 0, 0,
                 ?, ?, 100, ?, ?, 'untilpass', -1, 1)",
        vec![
            course.into(),
            (now + 7 * 86_400).into(),
            now.into(),
            now.into(),
            (now + 14 * 86_400).into(),
        ],
    )?;
    let cm = |tx: &mut Transaction<'_>, module: i64, instance: i64| {
        insert(
            tx,
            "course module",
            "INSERT INTO mdl_course_modules (course, module, instance, section, added, visible, visibleoncoursepage,
                 visibleold, completion, downloadcontent)
             VALUES (?, ?, ?, 0, ?, 1, 1, 1, 1, 1)",
            vec![course.into(), module.into(), instance.into(), now.into()],
        )
    };
    let forum_cm = cm(tx, forum_module, forum)?;
    let assign_cm = cm(tx, assign_module, assign)?;
    let (system, system_path) = context(tx, 10, 0, None)?;
    let (course_ctx, course_path) = context(tx, 50, course, Some(&system_path))?;
    let (forum_context, _) = context(tx, 70, forum_cm, Some(&course_path))?;
    let (assign_context, _) = context(tx, 70, assign_cm, Some(&course_path))?;

    let existing: Option<i64> = tx
        .exec_first(
            "SELECT id FROM mdl_grade_items WHERE itemtype = 'mod' AND itemmodule = 'assign' AND iteminstance = ?",
            (assign,),
        )
        .context("cannot read grade items")?;
    let grade_item = match existing {
        Some(id) => id,
        None => insert(
            tx,
            "grade item",
            "INSERT INTO mdl_grade_items (courseid, itemname, itemtype, itemmodule, iteminstance, itemnumber,
                 grademax, grademin, sortorder, timecreated, timemodified)
             VALUES (?, 'Essay: the water cycle', 'mod', 'assign', ?, 0, 100, 0, 2, ?, ?)",
            vec![course.into(), assign.into(), now.into(), now.into()],
        )?,
    };
    let course_item = insert(
        tx,
        "course total",
        "INSERT INTO mdl_grade_items (courseid, itemtype, iteminstance, grademax, grademin, sortorder,
             timecreated, timemodified)
         VALUES (?, 'course', ?, 100, 0, 1, ?, ?)",
        vec![course.into(), course.into(), now.into(), now.into()],
    )?;
    let enrol = insert(
        tx,
        "enrolment method",
        "INSERT INTO mdl_enrol (enrol, status, courseid, sortorder, roleid, expirythreshold, timecreated,
             timemodified)
         VALUES ('manual', 0, ?, 0, ?, 86400, ?, ?)",
        vec![course.into(), student_role.into(), now.into(), now.into()],
    )?;

    let user = |tx: &mut Transaction<'_>, username: String, n: usize| {
        let first = FIRST[n % FIRST.len()];
        let last = LAST[(n / FIRST.len()) % LAST.len()];
        insert(
            tx,
            "user",
            "INSERT INTO mdl_user (auth, confirmed, mnethostid, username, password, idnumber, firstname, lastname,
                 email, city, country, lang, timezone, timecreated, timemodified, description, descriptionformat)
             VALUES ('manual', 1, 1, ?, ?, '', ?, ?, ?, 'Dodoma', 'TZ', 'en', '99', ?, ?, '', 1)",
            vec![
                username.as_str().into(),
                // A bcrypt hash's shape: Moodle stores one per user.
                format!("$2y$10${:053}", n).into(),
                first.into(),
                last.into(),
                format!("{username}@learners.example.org").into(),
                now.into(),
                now.into(),
            ],
        )
    };
    let mut students = Vec::with_capacity(n_students);
    for n in 0..n_students {
        students.push(user(tx, format!("s{n:05}"), n)?);
    }
    let mut teachers = Vec::with_capacity(n_teachers);
    for n in 0..n_teachers {
        teachers.push(user(tx, format!("t{n:03}"), n + 7)?);
    }
    let admin = 2;
    for (userid, roleid) in students
        .iter()
        .take(enrolled)
        .map(|u| (*u, student_role))
        .chain(teachers.iter().map(|t| (*t, teacher_role)))
    {
        tx.exec_drop(
            "INSERT INTO mdl_user_enrolments (status, enrolid, userid, timestart, timeend, modifierid, timecreated,
                 timemodified)
             VALUES (0, ?, ?, ?, 0, ?, ?, ?)",
            (enrol, userid, now, admin, now, now),
        )
        .context("cannot enrol a user")?;
        tx.exec_drop(
            "INSERT INTO mdl_role_assignments (roleid, contextid, userid, timemodified, modifierid, component,
                 itemid, sortorder)
             VALUES (?, ?, ?, ?, ?, '', 0, 0)",
            (roleid, course_ctx.id, userid, now, admin),
        )
        .context("cannot assign a role")?;
    }
    students.sort_unstable();
    teachers.sort_unstable();
    Ok(Course {
        id: course,
        system,
        context: course_ctx,
        forum,
        forum_context,
        assign,
        assign_context,
        grade_item,
        course_item,
        enrol,
        student_role,
        teacher_role,
        students,
        teachers,
        installed_at: now,
    })
}
