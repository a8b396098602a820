//! Which integer columns hold another row's id: what the engine follows when two rows merge and one id
//! becomes an alias of the other. A reference it missed would keep the lost id, an orphan.
//!
//! XMLDB declares some references as foreign keys; Moodle leaves most undeclared (`forum_posts.userid`
//! has only an index). Those are found by Moodle's naming conventions (`userid`, `courseid`: a table's
//! name and `id`; `course`, `forum`: a table's name; `useridfrom`, `usermodified`: a user) and
//! `[references]` in the rule files names the exceptions, each with its reason: a column the
//! conventions read wrong, one they cannot read, one whose table depends on another column of the row
//! (`files.itemid` by component).

use std::collections::BTreeSet;

use crate::sync::schema::rules::Source;
use crate::sync::schema::{FieldKind, Schema, Table};

/// What a rule file says of one column (`table.column`, or `*.column` for every table), or of one
/// column in the rows whose other columns have given values (`files.itemid/assignsubmission_file/
/// submission_files = assign_submission by component filearea: ...`): a reference whose table
/// another column chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The table whose ids the column holds; `None`: no table's (a number, a remote id, or a
    /// reference whose table another column chooses and no entry names).
    pub target: Option<String>,
    /// (column, value) pairs a row must have for the entry to hold; empty for every row.
    pub when: Vec<(String, String)>,
    pub reason: String,
    pub source: Source,
}

/// How one integer column is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub table: String,
    pub column: String,
    /// The table whose `id` it holds, if it is followed as a reference.
    pub target: Option<String>,
    /// In the rows with these (column, value) pairs only.
    pub when: Vec<(String, String)>,
    pub why: String,
}

/// Columns that name a user without the word `userid`.
const USER: &[&str] = &["usermodified", "modifierid", "modifiedby"];

/// Every integer column of `schema` besides the tables' own ids, with whether it refers to a table
/// and why; `listed` returns a rule file's entry for (table, column), `chosen` its entries for the
/// rows whose other columns choose the table.
pub fn classify<'l>(
    schema: &Schema,
    listed: impl Fn(&str, &str) -> Option<&'l Listed>,
    chosen: impl Fn(&str, &str) -> Vec<&'l Listed>,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    for table in schema.tables.values() {
        let declared = declared(table);
        for field in table.fields.iter().filter(|f| f.kind == FieldKind::Int) {
            let column = field.name.as_str();
            if table.primary_key == [column] {
                continue;
            }
            let (target, why) = match declared.iter().find(|(c, _, _)| c == column) {
                Some((_, target, key)) => (Some(target.clone()), format!("XMLDB key {key}")),
                None => match listed(&table.name, column) {
                    Some(l) => (l.target.clone(), format!("{}: {}", l.source, l.reason)),
                    None => by_convention(schema, column),
                },
            };
            out.push(Verdict {
                table: table.name.clone(),
                column: column.to_owned(),
                target,
                when: Vec::new(),
                why,
            });
            out.extend(chosen(&table.name, column).into_iter().map(|l| Verdict {
                table: table.name.clone(),
                column: column.to_owned(),
                target: l.target.clone(),
                when: l.when.clone(),
                why: format!("{}: {}", l.source, l.reason),
            }));
        }
    }
    out
}

/// An id column no convention or list explains: the rule files must say what it holds.
pub const UNEXPLAINED: &str = "an id of what? say so in [references]";

/// (column, referenced table, key name) of the foreign keys XMLDB declares on `id`.
fn declared(table: &Table) -> Vec<(String, String, String)> {
    table
        .foreign_keys
        .iter()
        .flat_map(|fk| {
            fk.fields
                .iter()
                .zip(&fk.ref_fields)
                .filter(|(_, r)| *r == "id")
                .map(|(c, _)| (c.clone(), fk.ref_table.clone(), fk.name.clone()))
        })
        .collect()
}

fn by_convention(schema: &Schema, column: &str) -> (Option<String>, String) {
    let is_table = |name: &str| schema.tables.contains_key(name);
    if USER.contains(&column) || column.ends_with("userid") || column.starts_with("userid") {
        return (Some("user".into()), "names a user".into());
    }
    if let Some(base) = column.strip_suffix("id").filter(|b| is_table(b)) {
        return (Some(base.into()), format!("a table's name ({base}) and id"));
    }
    if is_table(column) {
        return (Some(column.into()), "a table's name".into());
    }
    if column.ends_with("id") {
        return (None, UNEXPLAINED.into());
    }
    (
        None,
        "not a reference: no convention or list names it (a time, count, flag, order or value)"
            .into(),
    )
}

/// The tables named as targets that `schema` does not have (a listing written for another Moodle).
pub fn missing_targets(schema: &Schema, verdicts: &[Verdict]) -> BTreeSet<String> {
    verdicts
        .iter()
        .filter_map(|v| v.target.clone())
        .filter(|t| !schema.tables.contains_key(t))
        .collect()
}
