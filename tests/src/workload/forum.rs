//! The forum's actions: `mod/forum/post.php` starting, replying to, editing and deleting posts.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::Transaction;
use serde_json::json;

use crate::workload::event::{log, Event, LEVEL_OTHER, LEVEL_PARTICIPATING};
use crate::workload::markers_in;
use crate::workload::moodle::{access, last_id, pick, present, student, Done, Scene, FORMAT_HTML};
use crate::workload::text::{counts, Text};

/// `$CFG->maxeditingtime`: authors may edit their posts for 30 minutes; teachers at any time.
const MAX_EDITING_TIME: i64 = 1800;

/// `\mod_forum\subscriptions::FORUM_DISCUSSION_UNSUBSCRIBED`.
const DISCUSSION_UNSUBSCRIBED: i64 = -1;

/// `forum_add_discussion()`, the subscription `forum_post_subscription()` makes, and the events.
pub(super) fn start_discussion(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let Some(user) = student(tx, s)? else {
        return Ok(Done::skip(0));
    };
    access(tx, s, user)?;
    let mut text = Text::new(s.draw.text);
    let name = text.title();
    let message = format!("<p>{} {}</p>", s.marker, text.sentences(20, 120));
    let post = insert_post(tx, s, 0, 0, user, &name, &message)?;
    // file_save_draft_area_files() hands the message back and Moodle writes it again.
    set_message(tx, post, &message)?;
    tx.exec_drop(
        "INSERT INTO mdl_forum_discussions (course, forum, name, firstpost, userid, groupid, assessed,
             timemodified, usermodified, timestart, timeend, pinned, timelocked)
         VALUES (?, ?, ?, ?, ?, -1, 0, ?, ?, 0, 0, 0, 0)",
        (s.course.id, s.course.forum, &name, post, user, s.now, user),
    )
    .context("cannot create the discussion")?;
    let discussion = last_id(tx, "discussion")?;
    tx.exec_drop(
        "UPDATE mdl_forum_posts SET discussion = ? WHERE id = ?",
        (discussion, post),
    )
    .context("cannot link the first post")?;
    log(
        tx,
        s,
        uploaded(s, user, post, &message, discussion, "forum_add_discussion"),
    )?;
    log(
        tx,
        s,
        Event {
            other: Some(json!({ "forumid": s.course.forum })),
            ..Event::forum(
                s,
                user,
                "\\mod_forum\\event\\discussion_created",
                "created",
                "discussion",
                "c",
            )
            .object("forum_discussions", discussion)
        },
    )?;
    subscribe(tx, s, user, discussion)?;
    Ok(Done {
        created: true,
        ..Done::did(user, post)
    })
}

/// `forum_add_new_post()`, the subscription and the events of `mod/forum/post.php`.
pub(super) fn reply(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let Some(user) = student(tx, s)? else {
        return Ok(Done::skip(0));
    };
    let Some(discussion) = pick(&discussions(tx, s)?, s.draw.pick) else {
        return Ok(Done::skip(user));
    };
    let posts: Vec<i64> = tx
        .exec(
            "SELECT id FROM mdl_forum_posts WHERE discussion = ? AND deleted = 0 ORDER BY id",
            (discussion,),
        )
        .context("cannot list posts")?;
    // The post replied to must exist here until this commits: sync may be deleting it.
    let Some((parent, parent_subject)) = present::<String>(
        tx,
        &posts,
        s.draw.aux,
        "SELECT subject FROM mdl_forum_posts WHERE id = ? LOCK IN SHARE MODE",
    )?
    else {
        return Ok(Done::skip(user));
    };
    access(tx, s, user)?;
    let subject = if parent_subject.starts_with("Re: ") {
        parent_subject
    } else {
        format!("Re: {parent_subject}")
    };
    let mut text = Text::new(s.draw.text);
    let message = format!("<p>{} {}</p>", s.marker, text.sentences(10, 90));
    let post = insert_post(tx, s, discussion, parent, user, &subject, &message)?;
    set_message(tx, post, &message)?;
    tx.exec_drop(
        "UPDATE mdl_forum_discussions SET timemodified = ? WHERE id = ?",
        (s.now, discussion),
    )
    .context("cannot update the discussion")?;
    tx.exec_drop(
        "UPDATE mdl_forum_discussions SET usermodified = ? WHERE id = ?",
        (user, discussion),
    )
    .context("cannot update the discussion")?;
    log(
        tx,
        s,
        uploaded(s, user, post, &message, discussion, "forum_add_new_post"),
    )?;
    log(
        tx,
        s,
        Event {
            other: Some(post_other(s, discussion)),
            ..Event::forum(
                s,
                user,
                "\\mod_forum\\event\\post_created",
                "created",
                "post",
                "c",
            )
            .object("forum_posts", post)
        },
    )?;
    subscribe(tx, s, user, discussion)?;
    Ok(Done {
        created: true,
        ..Done::did(user, post)
    })
}

/// `forum_update_post()` as `mod/forum/post.php?edit=` calls it, by the author within the editing
/// time, else by a teacher.
pub(super) fn edit(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let posts = forum_posts(tx, s, false)?;
    let Some((post, (discussion, parent, author, created, message))) =
        present::<(i64, i64, i64, i64, String)>(
            tx,
            &posts,
            s.draw.pick,
            "SELECT discussion, parent, userid, created, message FROM mdl_forum_posts WHERE id = ? FOR UPDATE",
        )?
    else {
        return Ok(Done::skip(0));
    };
    let own = s.course.students.binary_search(&author).is_ok()
        || s.course.teachers.binary_search(&author).is_ok();
    let editor = match s.actor {
        Some(a) => a,
        None if own && s.now - created < MAX_EDITING_TIME => author,
        None => match pick(&s.course.teachers, s.draw.actor) {
            Some(t) => t,
            None => return Ok(Done::skip(0)),
        },
    };
    access(tx, s, editor)?;
    let mut text = Text::new(s.draw.text);
    let kept = markers_in(&message).join(" ");
    let message = format!("<p>{kept} {} (edited)</p>", text.sentences(10, 90));
    let (words, chars) = counts(&message);
    tx.exec_drop(
        "UPDATE mdl_forum_posts SET message = ?, messageformat = ?, modified = ?, wordcount = ?, charcount = ?
         WHERE id = ?",
        (&message, FORMAT_HTML, s.now, words, chars, post),
    )
    .context("cannot update the post")?;
    set_message(tx, post, &message)?;
    // The discussion's last-modified fields name the post's author, not its editor.
    tx.exec_drop(
        "UPDATE mdl_forum_discussions SET timemodified = ?, usermodified = ? WHERE id = ?",
        (s.now, author, discussion),
    )
    .context("cannot update the discussion")?;
    if parent == 0 {
        tx.exec_drop(
            "UPDATE mdl_forum_discussions SET timestart = 0, timeend = 0 WHERE id = ?",
            (discussion,),
        )
        .context("cannot update the discussion")?;
    }
    log(
        tx,
        s,
        uploaded(s, editor, post, &message, discussion, "forum_update_post"),
    )?;
    log(
        tx,
        s,
        Event {
            related: Some(author),
            other: Some(post_other(s, discussion)),
            ..Event::forum(
                s,
                editor,
                "\\mod_forum\\event\\post_updated",
                "updated",
                "post",
                "u",
            )
            .object("forum_posts", post)
        },
    )?;
    Ok(Done::did(editor, post))
}

/// `forum_delete_post()` of a reply that has no replies, by a teacher, then
/// `forum_discussion_update_last_post()`.
pub(super) fn delete(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Done> {
    let Some(teacher) = s.actor.or_else(|| pick(&s.course.teachers, s.draw.actor)) else {
        return Ok(Done::skip(0));
    };
    let leaves = forum_posts(tx, s, true)?;
    let Some((post, (discussion, author, message))) = present::<(i64, i64, String)>(
        tx,
        &leaves,
        s.draw.pick,
        "SELECT discussion, userid, message FROM mdl_forum_posts WHERE id = ? FOR UPDATE",
    )?
    else {
        return Ok(Done::skip(teacher));
    };
    access(tx, s, teacher)?;
    tx.exec_drop("DELETE FROM mdl_forum_posts WHERE id = ?", (post,))
        .context("cannot delete the post")?;
    let last: Option<(i64, i64)> = tx
        .exec_first(
            "SELECT userid, modified FROM mdl_forum_posts WHERE discussion = ? ORDER BY modified DESC, id DESC
             LIMIT 1",
            (discussion,),
        )
        .context("cannot find the discussion's last post")?;
    if let Some((userid, modified)) = last {
        tx.exec_drop(
            "UPDATE mdl_forum_discussions SET usermodified = ?, timemodified = ? WHERE id = ?",
            (userid, modified, discussion),
        )
        .context("cannot update the discussion")?;
    }
    log(
        tx,
        s,
        Event {
            related: Some(author),
            other: Some(post_other(s, discussion)),
            ..Event::forum(
                s,
                teacher,
                "\\mod_forum\\event\\post_deleted",
                "deleted",
                "post",
                "d",
            )
            .object("forum_posts", post)
        },
    )?;
    Ok(Done {
        deleted: markers_in(&message),
        ..Done::did(teacher, post)
    })
}

/// `\mod_forum\subscriptions::subscribe_user_to_discussion()`, which posting calls when the user's
/// "subscribe to this discussion" box is ticked (the default, `autosubscribe`).
fn subscribe(tx: &mut Transaction<'_>, s: &Scene<'_>, user: i64, discussion: i64) -> Result<()> {
    let found: Option<(i64, i64)> = tx
        .exec_first(
            "SELECT id, preference FROM mdl_forum_discussion_subs WHERE userid = ? AND discussion = ?",
            (user, discussion),
        )
        .context("cannot read the subscription")?;
    let id = match found {
        Some((_, preference)) if preference != DISCUSSION_UNSUBSCRIBED => return Ok(()),
        Some((id, _)) => {
            tx.exec_drop(
                "UPDATE mdl_forum_discussion_subs SET preference = ? WHERE id = ?",
                (s.now, id),
            )
            .context("cannot subscribe")?;
            id
        }
        None => {
            tx.exec_drop(
                "INSERT INTO mdl_forum_discussion_subs (forum, userid, discussion, preference) VALUES (?, ?, ?, ?)",
                (s.course.forum, user, discussion, s.now),
            )
            .context("cannot subscribe")?;
            last_id(tx, "subscription")?
        }
    };
    log(
        tx,
        s,
        Event {
            level: LEVEL_OTHER,
            related: Some(user),
            other: Some(json!({ "forumid": s.course.forum, "discussion": discussion })),
            ..Event::forum(
                s,
                user,
                "\\mod_forum\\event\\discussion_subscription_created",
                "created",
                "discussion_subscription",
                "c",
            )
            .object("forum_discussion_subs", id)
        },
    )
}

fn insert_post(
    tx: &mut Transaction<'_>,
    s: &Scene<'_>,
    discussion: i64,
    parent: i64,
    user: i64,
    subject: &str,
    message: &str,
) -> Result<i64> {
    let (words, chars) = counts(message);
    tx.exec_drop(
        "INSERT INTO mdl_forum_posts (discussion, parent, userid, created, modified, mailed, subject, message,
             messageformat, messagetrust, attachment, totalscore, mailnow, deleted, privatereplyto, wordcount,
             charcount)
         VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, 0, '', 0, 0, 0, 0, ?, ?)",
        values![
            discussion,
            parent,
            user,
            s.now,
            s.now,
            subject,
            message,
            FORMAT_HTML,
            words,
            chars,
        ],
    )
    .context("cannot insert the post")?;
    last_id(tx, "post")
}

fn set_message(tx: &mut Transaction<'_>, post: i64, message: &str) -> Result<()> {
    tx.exec_drop(
        "UPDATE mdl_forum_posts SET message = ? WHERE id = ?",
        (message, post),
    )
    .context("cannot save the message")
}

pub(super) fn discussions(tx: &mut Transaction<'_>, s: &Scene<'_>) -> Result<Vec<i64>> {
    tx.exec(
        "SELECT id FROM mdl_forum_discussions WHERE forum = ? ORDER BY id",
        (s.course.forum,),
    )
    .context("cannot list discussions")
}

/// The forum's posts in id order; with `leaves`, only replies nobody has replied to.
pub(super) fn forum_posts(
    tx: &mut Transaction<'_>,
    s: &Scene<'_>,
    leaves: bool,
) -> Result<Vec<i64>> {
    let sql = if leaves {
        "SELECT p.id FROM mdl_forum_posts p JOIN mdl_forum_discussions d ON d.id = p.discussion
         WHERE d.forum = ? AND p.parent <> 0 AND p.deleted = 0
           AND NOT EXISTS (SELECT 1 FROM mdl_forum_posts c WHERE c.parent = p.id)
         ORDER BY p.id"
    } else {
        "SELECT p.id FROM mdl_forum_posts p JOIN mdl_forum_discussions d ON d.id = p.discussion
         WHERE d.forum = ? AND p.deleted = 0 ORDER BY p.id"
    };
    tx.exec(sql, (s.course.forum,))
        .context("cannot list forum posts")
}

fn post_other(s: &Scene<'_>, discussion: i64) -> serde_json::Value {
    json!({ "discussionid": discussion, "forumid": s.course.forum, "forumtype": "general" })
}

/// `forum_trigger_content_uploaded_event()`: the plagiarism hook's event carries the whole message.
pub(super) fn uploaded<'a>(
    s: &Scene<'_>,
    user: i64,
    post: i64,
    message: &str,
    discussion: i64,
    from: &str,
) -> Event<'a> {
    Event {
        name: "\\mod_forum\\event\\assessable_uploaded",
        component: "mod_forum",
        action: "uploaded",
        target: "assessable",
        table: Some("forum_posts"),
        object: Some(post),
        crud: "c",
        level: LEVEL_PARTICIPATING,
        ctx: s.course.forum_context,
        user,
        related: None,
        other: Some(json!({
            "content": message, "pathnamehashes": [], "discussionid": discussion, "triggeredfrom": from
        })),
    }
}
