//! Which unique keys name a person or a thing, and which say "the same fact twice".
//!
//! Two sites cut off from each other can each create a row with the same unique key. For a grade of
//! one user for one item, or a user's last access to a course, that is one fact recorded twice: the
//! rows merge (the earlier-born keeps its id). For a login name, a course's short name or a group's
//! name in its course it is two people or two things that happen to share a name: merging them gave
//! one person the other's password. Both rows are kept, and the later-born is renamed.
//!
//! Both lists are data in the rule files: `[identities]` (`table.column = scope columns: reason`, the
//! column is the one renamed, unique within the scope; `-` for no scope) and `[same_facts]`
//! (`table = reason`: every unique key of the table that is not an identity). Moodle enforces some
//! identities in its code, not in an index (`course.shortname`, a group's name): those are checked by
//! the engine itself.

use std::collections::BTreeMap;
use std::path::Path;

use crate::ini::{ConfigError, Document};
use crate::sync::schema::rules::Source;

/// A column whose value names one person or thing within its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub table: String,
    /// The column renamed when two rows clash.
    pub column: String,
    /// The columns within whose values the name is unique (`mnethostid` for a username).
    pub scope: Vec<String>,
    pub reason: String,
    pub source: Source,
}

impl Identity {
    /// The scope's columns and the name's, as a unique key lists them.
    pub fn key(&self) -> Vec<&str> {
        self.scope
            .iter()
            .map(String::as_str)
            .chain([self.column.as_str()])
            .collect()
    }

    /// Whether `columns` (a unique key) is this identity's, in any order.
    pub fn is_key(&self, columns: &[String]) -> bool {
        let mut mine = self.key();
        let mut theirs: Vec<&str> = columns.iter().map(String::as_str).collect();
        mine.sort_unstable();
        theirs.sort_unstable();
        mine == theirs
    }
}

/// A table whose unique keys, other than its identities, each say the same fact twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SameFact {
    pub reason: String,
    pub source: Source,
}

/// `[identities]` and `[same_facts]` of one rule file.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    pub identities: Vec<Identity>,
    pub same_facts: BTreeMap<String, SameFact>,
}

/// Reads `[identities]` and `[same_facts]` of a rule file.
pub fn parse(doc: &Document, path: &Path) -> Result<Lists, ConfigError> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut identities = Vec::new();
    for (key, value, line) in doc.free_entries("identities") {
        let Some((table, column)) = key
            .split_once('.')
            .filter(|(t, c)| name_ok(t) && name_ok(c))
        else {
            return Err(doc.error(
                "identities",
                &key,
                "expected table.column (like user.username)",
            ));
        };
        let parsed = value
            .split_once(':')
            .map(|(scope, reason)| (scope.trim(), reason.trim()));
        let Some((scope, reason)) = parsed.filter(|(s, r)| !s.is_empty() && !r.is_empty()) else {
            return Err(doc.error(
                "identities",
                &key,
                "expected 'scope columns: reason' ('-' for no scope)",
            ));
        };
        let scope: Vec<String> = match scope {
            "-" => Vec::new(),
            s => s.split_whitespace().map(str::to_owned).collect(),
        };
        if !scope.iter().all(|c| name_ok(c)) || scope.iter().any(|c| c == column) {
            return Err(doc.error(
                "identities",
                &key,
                "the scope is column names other than the renamed one",
            ));
        }
        identities.push(Identity {
            table: table.to_owned(),
            column: column.to_owned(),
            scope,
            reason: reason.to_owned(),
            source: Source {
                file: path.to_owned(),
                line,
            },
        });
    }
    let mut same_facts = BTreeMap::new();
    for (key, value, line) in doc.free_entries("same_facts") {
        if !name_ok(&key) {
            return Err(doc.error("same_facts", &key, "expected a table name (no patterns)"));
        }
        if value.is_empty() {
            return Err(doc.error("same_facts", &key, "say why after '='"));
        }
        let source = Source {
            file: path.to_owned(),
            line,
        };
        let fact = SameFact {
            reason: value,
            source,
        };
        same_facts.insert(key, fact);
    }
    Ok(Lists {
        identities,
        same_facts,
    })
}
