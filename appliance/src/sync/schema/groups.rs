//! Columns Moodle writes together, which a merge keeps together: a discussion's `timemodified` with
//! its `usermodified`, a post's `message` with its `messageformat` and `messagetrust`. Merged column
//! by column, two sites' replies could leave "user A made the last change at user B's time", or text
//! in one format read as another.
//!
//! Derived from Moodle's naming conventions; `[groups]` in the rule files adds groups a table needs
//! beyond them or, with `none`, drops the convention's for a table.

use crate::sync::schema::Table;

/// Who changed a row, and when: a table's first column of each list forms a group.
const WHO: &[&str] = &["usermodified", "modifierid", "modifiedby"];
const WHEN: &[&str] = &["timemodified", "modified", "lastmodified"];
/// A text column `X` travels with `Xformat` (how to read it) and `Xtrust` (whether it is cleaned).
const TEXT_PARTS: &[&str] = &["format", "trust"];

/// What the rule files say of one table's groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// Groups written in addition to the convention's.
    Add(Vec<Vec<String>>),
    /// The convention does not hold for this table.
    None,
}

/// The column groups of `table`: the convention's (unless listed `none`) and the listed ones, with
/// groups that share a column joined into one. Only columns the table has are kept.
pub fn of(table: &Table, listed: Option<&Listed>) -> Vec<Vec<String>> {
    let has = |c: &str| table.fields.iter().any(|f| f.name == c);
    let mut groups: Vec<Vec<String>> = Vec::new();
    if listed != Some(&Listed::None) {
        let who = WHO.iter().find(|c| has(c));
        let when = WHEN.iter().find(|c| has(c));
        if let (Some(who), Some(when)) = (who, when) {
            groups.push(vec![who.to_string(), when.to_string()]);
        }
        for field in &table.fields {
            let parts: Vec<String> = TEXT_PARTS
                .iter()
                .map(|p| format!("{}{p}", field.name))
                .filter(|c| has(c))
                .collect();
            if !parts.is_empty() {
                groups.push([vec![field.name.clone()], parts].concat());
            }
        }
    }
    if let Some(Listed::Add(more)) = listed {
        groups.extend(
            more.iter()
                .map(|g| g.iter().filter(|c| has(c)).cloned().collect()),
        );
    }
    join_overlapping(groups)
}

/// Groups sharing a column become one, sorted, so every site derives the same groups.
fn join_overlapping(groups: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut joined: Vec<Vec<String>> = Vec::new();
    for group in groups.into_iter().filter(|g| g.len() > 1) {
        let mut merged = group;
        joined.retain(|other| {
            let overlaps = other.iter().any(|c| merged.contains(c));
            if overlaps {
                merged.extend(other.iter().cloned());
            }
            !overlaps
        });
        merged.sort();
        merged.dedup();
        joined.push(merged);
    }
    joined.sort();
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::schema::tests::moodle_450;

    fn groups(table: &str) -> Vec<Vec<String>> {
        of(&moodle_450().tables[table], None)
    }

    fn names(groups: &[Vec<String>]) -> Vec<String> {
        groups.iter().map(|g| g.join(" ")).collect()
    }

    #[test]
    fn moodles_conventions_give_the_groups_a_reply_writes() {
        assert_eq!(
            names(&groups("forum_discussions")),
            ["timemodified usermodified"]
        );
        assert_eq!(
            names(&groups("forum_posts")),
            ["message messageformat messagetrust"]
        );
        assert!(names(&groups("grade_grades")).contains(&"feedback feedbackformat".to_string()));
        assert!(groups("user_lastaccess").is_empty());
    }

    #[test]
    fn listed_groups_join_the_conventions_and_none_drops_them() {
        let schema = moodle_450();
        let table = &schema.tables["forum_discussions"];
        let add = Listed::Add(vec![vec!["timemodified".into(), "name".into()]]);
        assert_eq!(
            names(&of(table, Some(&add))),
            ["name timemodified usermodified"]
        );
        assert!(of(table, Some(&Listed::None)).is_empty());
        // A listed column the table lacks (an older Moodle) is left out, not invented.
        let odd = Listed::Add(vec![vec!["timemodified".into(), "nosuchcolumn".into()]]);
        assert_eq!(names(&of(table, Some(&odd))), ["timemodified usermodified"]);
    }
}
