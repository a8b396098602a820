//! `[caches]` and `[local_columns]`: what a site clears in Moodle's caches after it applies rows made
//! elsewhere, and the columns each site keeps for itself.
//!
//! Moodle clears its caches (MUC) where a change is made: `set_config` clears the config cache,
//! `assign_capability` the role's definition, `rebuild_course_cache` bumps the course's cache
//! revision. Rows sync applies bypass that code, so the receiving site clears the same things
//! itself, through Moodle's own cache API (`engine::caches`). Which table's change clears what is
//! data: `table = kind [column]: reason`, the column naming the id the kind is cleared for.

use std::collections::BTreeMap;
use std::path::Path;

use super::{is_table_name, split_reason, Rules, Source};
use crate::ini::{ConfigError, Document};

/// What a site clears, in the words of the PHP helper that clears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The site's settings (`$CFG`, `get_config`).
    Config,
    /// A role's definition, by role id.
    Role,
    /// A user's access (role assignments, enrolments) and group memberships, by user id.
    User,
    /// A course's module info and the course lists, by course id.
    Course,
    /// A course's groups, by group id.
    Group,
    /// A course's groupings, by grouping id.
    Grouping,
    /// The caches Moodle purges on one of its invalidation events, by the event's name.
    Event,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Config,
        Kind::Role,
        Kind::User,
        Kind::Course,
        Kind::Group,
        Kind::Grouping,
        Kind::Event,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Role => "role",
            Kind::User => "user",
            Kind::Course => "course",
            Kind::Group => "group",
            Kind::Grouping => "grouping",
            Kind::Event => "event",
        }
    }
}

/// What a change to a row of one table clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    pub kind: Kind,
    /// The column holding the id the kind is cleared for; the event's name for [`Kind::Event`];
    /// `None` for [`Kind::Config`].
    pub arg: Option<String>,
    pub reason: String,
    pub source: Source,
}

/// Columns of a table each site keeps for itself: never compared by verify, and either never sent
/// or written with one value wherever they arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalColumns {
    pub columns: Vec<LocalColumn>,
    pub reason: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalColumn {
    pub name: String,
    /// `column=value`: the value a row made or changed elsewhere takes here (a side effect done at
    /// the row's origin: `forum_posts.mailed = 1`); `None`: the column never travels.
    pub arrives_as: Option<String>,
}

/// `[caches]` and `[local_columns]` of one rule file, by table.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    pub caches: BTreeMap<String, CacheRule>,
    pub local_columns: BTreeMap<String, LocalColumns>,
}

pub fn parse(doc: &Document, path: &Path) -> Result<Lists, ConfigError> {
    let mut lists = Lists::default();
    for (key, value, line) in doc.free_entries("caches") {
        let source = Source {
            file: path.to_owned(),
            line,
        };
        if !is_table_name(&key) {
            return Err(doc.error("caches", &key, "expected a table name (no patterns)"));
        }
        let Some((what, reason)) = split_reason(&value) else {
            return Err(doc.error(
                "caches",
                &key,
                "say why after the kind: 'kind column: reason'",
            ));
        };
        let mut words = what.split_whitespace();
        let named = words.next().unwrap_or_default();
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == named) else {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            return Err(doc.error(
                "caches",
                &key,
                format!("unknown kind '{named}'; known kinds: {}", known.join(", ")),
            ));
        };
        let arg = words.next().map(str::to_owned);
        let wanted = match kind {
            Kind::Config => arg.is_none(),
            _ => arg.as_deref().is_some_and(is_table_name),
        };
        if !wanted || words.next().is_some() {
            let shape = match kind {
                Kind::Config => "'config' takes nothing after it",
                Kind::Event => "expected 'event NAME' (a Moodle cache invalidation event)",
                _ => "expected the kind and the column holding its id, like 'role roleid'",
            };
            return Err(doc.error("caches", &key, shape));
        }
        let rule = CacheRule {
            kind,
            arg,
            reason: reason.to_owned(),
            source,
        };
        lists.caches.insert(key, rule);
    }
    for (key, value, line) in doc.free_entries("local_columns") {
        if !is_table_name(&key) {
            return Err(doc.error("local_columns", &key, "expected a table name"));
        }
        let Some((columns, reason)) = split_reason(&value) else {
            return Err(doc.error(
                "local_columns",
                &key,
                "say why after the columns: 'a b: reason'",
            ));
        };
        let columns: Vec<LocalColumn> = columns
            .split_whitespace()
            .map(|word| match word.split_once('=') {
                Some((name, value)) => LocalColumn {
                    name: name.to_owned(),
                    arrives_as: Some(value.to_owned()),
                },
                None => LocalColumn {
                    name: word.to_owned(),
                    arrives_as: None,
                },
            })
            .collect();
        let bad = |c: &LocalColumn| {
            !is_table_name(&c.name)
                || c.name == "id"
                || c.arrives_as.as_ref().is_some_and(String::is_empty)
        };
        if columns.is_empty() || columns.iter().any(bad) {
            return Err(doc.error(
                "local_columns",
                &key,
                "expected column names other than id, each alone or as column=value",
            ));
        }
        let local = LocalColumns {
            columns,
            reason: reason.to_owned(),
            source: Source {
                file: path.to_owned(),
                line,
            },
        };
        lists.local_columns.insert(key, local);
    }
    Ok(lists)
}

/// `[caches]` entries in force, by table.
pub type CacheEntries<'r> = Vec<(&'r str, &'r CacheRule)>;
/// `[local_columns]` entries in force, by table.
pub type LocalEntries<'r> = Vec<(&'r str, &'r LocalColumns)>;

impl Rules {
    /// What a change to a row of `table` clears at the site that applies it (the override file's
    /// entry for the table replaces the built-in one).
    pub fn caches(&self, table: &str) -> Option<&CacheRule> {
        self.files().find_map(|f| f.cached.caches.get(table))
    }

    /// The columns of `table` each site keeps for itself.
    pub fn local_columns(&self, table: &str) -> &[LocalColumn] {
        self.files()
            .find_map(|f| f.cached.local_columns.get(table))
            .map_or(&[], |l| l.columns.as_slice())
    }

    /// Every `[caches]` and `[local_columns]` entry in force, for the rules test.
    pub fn cache_lists(&self) -> (CacheEntries<'_>, LocalEntries<'_>) {
        let mut caches = BTreeMap::new();
        let mut local = BTreeMap::new();
        for file in self.files().collect::<Vec<_>>().into_iter().rev() {
            caches.extend(file.cached.caches.iter().map(|(t, r)| (t.as_str(), r)));
            local.extend(
                file.cached
                    .local_columns
                    .iter()
                    .map(|(t, l)| (t.as_str(), l)),
            );
        }
        (caches.into_iter().collect(), local.into_iter().collect())
    }
}
