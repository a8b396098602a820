//! The rules in the form the engine asks them: which way a table syncs, which columns point at which
//! tables (to follow an id that lost a unique-key clash), and who may change what.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::change::{Row, Value};
use crate::sync::engine::sql::Target;
use crate::sync::schema::identity::Identity;
pub use crate::sync::schema::rules::Direction;
use crate::sync::schema::rules::{CacheRule, Protection, Reference, Rules};
use crate::sync::schema::Schema;

/// Which side of the sync this site is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Hub,
    Center,
}

impl Role {
    /// Whether changes this site makes to a table with `direction` are sent.
    pub fn sends(self, direction: Direction) -> bool {
        match self {
            Role::Hub => matches!(direction, Direction::Both | Direction::HubToCenters),
            Role::Center => matches!(direction, Direction::Both | Direction::CentersToHub),
        }
    }
}

/// A column of a row that holds the id of a row of `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub column: String,
    pub table: String,
    /// Only in rows with these (column, value) pairs: `files.itemid` of one component's area.
    pub when: Vec<(String, String)>,
}

impl Ref {
    /// Whether `row` (all its columns, or those an update sent) is one this reference holds in. A
    /// row that lacks a deciding column (an update that did not change it) is taken to be one: an id
    /// that is nobody's alias is left as it is anyway.
    pub fn holds_in(&self, row: &Row) -> bool {
        self.when.iter().all(|(c, v)| match row.get(c) {
            Some(Value::Bytes(b)) => b == v.as_bytes(),
            Some(_) => false,
            None => true,
        })
    }
}

#[derive(Clone)]
pub struct Policy {
    rules: Rules,
    /// table → its references, the inverse of the rules' `referenced_by`.
    outgoing: HashMap<String, Vec<Ref>>,
}

impl Policy {
    pub fn new(rules: Rules) -> Policy {
        let mut outgoing: HashMap<String, Vec<Ref>> = HashMap::new();
        for rule in rules.tables.values() {
            for r in rule.referenced_by.iter().filter(|r| r.ref_column == "id") {
                outgoing.entry(r.table.clone()).or_default().push(Ref {
                    column: r.column.clone(),
                    table: rule.table.clone(),
                    when: r.when.clone(),
                });
            }
        }
        Policy { rules, outgoing }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// A table XMLDB does not know (a plugin installed after the rules were read) follows the
    /// name lists, with Moodle's `id` as its key.
    pub fn direction(&self, table: &str) -> Direction {
        match self.rules.get(table) {
            Some(rule) => rule.direction,
            None => {
                self.rules
                    .for_unknown_table(table, &[("id", "bigint")])
                    .direction
            }
        }
    }

    pub fn protection(&self, table: &str) -> Option<Protection> {
        match self.rules.get(table) {
            Some(rule) => rule.protect,
            None => {
                self.rules
                    .for_unknown_table(table, &[("id", "bigint")])
                    .protect
            }
        }
    }

    /// What applying a change to a row of `table` clears in Moodle's caches at this site.
    pub fn caches(&self, table: &str) -> Option<&CacheRule> {
        self.rules.caches(table)
    }

    /// Whether each site keeps `column` of `table` for itself (`[local_columns]`): verify does not
    /// compare it.
    pub fn is_local_column(&self, table: &str, column: &str) -> bool {
        self.rules
            .local_columns(table)
            .iter()
            .any(|c| c.name == column)
    }

    /// Whether `column` of `table` is one each site keeps that never travels: capture drops it.
    pub fn is_unsent_column(&self, table: &str, column: &str) -> bool {
        self.rules
            .local_columns(table)
            .iter()
            .any(|c| c.name == column && c.arrives_as.is_none())
    }

    /// The local columns of `table` that take one value where a row arrives, with that value.
    pub fn arriving_values(&self, table: &str) -> impl Iterator<Item = (&str, Value)> {
        self.rules.local_columns(table).iter().filter_map(|c| {
            let value = c.arrives_as.as_deref()?;
            let value = match value.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Bytes(value.as_bytes().to_vec()),
            };
            Some((c.name.as_str(), value))
        })
    }

    /// Whether `row` (an image of a row of `table`) is one each site keeps for itself.
    pub fn is_site_local(&self, table: &str, row: &Row) -> bool {
        self.rules
            .site_local(table)
            .iter()
            .any(|local| match row.get(&local.column) {
                Some(Value::Bytes(b)) => {
                    std::str::from_utf8(b).is_ok_and(|v| local.values.contains(v))
                }
                _ => false,
            })
    }

    /// The references the rows of `table` hold.
    pub fn references(&self, table: &str) -> &[Ref] {
        self.outgoing.get(table).map_or(&[], Vec::as_slice)
    }

    /// Columns of `table` that Moodle writes together and that win or lose a merge as one.
    pub fn groups(&self, table: &str) -> &[Vec<String>] {
        self.rules
            .get(table)
            .map_or(&[], |rule| rule.column_groups.as_slice())
    }

    /// The names rows of `table` may not share ([`crate::sync::schema::identity`]).
    pub fn identities(&self, table: &str) -> &[Identity] {
        self.rules
            .get(table)
            .map_or(&[], |rule| rule.identities.as_slice())
    }

    /// The columns of other tables that hold ids of `table`.
    pub fn referenced_by(&self, table: &str) -> Vec<&Reference> {
        self.rules.get(table).map_or_else(Vec::new, |rule| {
            rule.referenced_by
                .iter()
                .filter(|r| r.ref_column == "id")
                .collect()
        })
    }
}

/// The rules of the Moodle installed beside this site, derived again once Moodle's upgrade has run.
///
/// Moodle records every upgrade or plugin installation in its config (`version` for the core,
/// `allversionshash` over every plugin's version) after the DDL is done, so a change of those rows is
/// the moment to read the XMLDB files again: new tables get their keys and references from there
/// instead of the lists' fallback. Until then, and if the new files cannot be read, a table the
/// rules do not know follows the lists ([`Policy::direction`]) and its unique keys are read from the
/// database by the apply step, so nothing waits for the reload.
pub struct Rulebook {
    moodle_dir: PathBuf,
    overrides: Option<PathBuf>,
    target: Target,
    /// `None` until first read: the rules were derived from the code as it is now.
    version: Option<String>,
    policy: Policy,
}

impl Rulebook {
    /// Reads the rules for the Moodle in `moodle_dir` (its code, with every plugin's `db/install.xml`)
    /// whose database is `target`.
    pub fn open(
        conn: &mut impl Queryable,
        target: &Target,
        moodle_dir: &Path,
        overrides: Option<&Path>,
    ) -> Result<Rulebook> {
        let version = installed_version(conn, target)?;
        let policy = derive(moodle_dir, overrides)?;
        Ok(Rulebook {
            moodle_dir: moodle_dir.to_owned(),
            overrides: overrides.map(Path::to_owned),
            target: target.clone(),
            version: Some(version),
            policy,
        })
    }

    /// Starts from rules just derived from `moodle_dir`; the installed versions are read at the first
    /// [`Rulebook::refresh`].
    pub fn from_policy(
        policy: Policy,
        target: &Target,
        moodle_dir: &Path,
        overrides: Option<&Path>,
    ) -> Rulebook {
        Rulebook {
            moodle_dir: moodle_dir.to_owned(),
            overrides: overrides.map(Path::to_owned),
            target: target.clone(),
            version: None,
            policy,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Moodle's installed versions as last read, e.g. `allversionshash=… version=2024100705.01`.
    pub fn version(&self) -> &str {
        self.version.as_deref().unwrap_or_default()
    }

    /// Derives the rules again if Moodle's installed versions changed since they were read; returns
    /// whether it did. On an error the rules in use stay, and the next call tries again.
    pub fn refresh(&mut self, conn: &mut impl Queryable) -> Result<bool> {
        let version = installed_version(conn, &self.target)?;
        if self.version.is_none() {
            self.version = Some(version);
            return Ok(false);
        }
        if self.version.as_ref() == Some(&version) {
            return Ok(false);
        }
        self.policy = derive(&self.moodle_dir, self.overrides.as_deref())
            .with_context(|| format!("Moodle's versions changed to {version}"))?;
        self.version = Some(version);
        Ok(true)
    }
}

fn derive(moodle_dir: &Path, overrides: Option<&Path>) -> Result<Policy> {
    let schema = Schema::load_moodle_dir(moodle_dir)?;
    Ok(Policy::new(Rules::load(&schema, overrides)?))
}

fn installed_version(conn: &mut impl Queryable, target: &Target) -> Result<String> {
    let rows: Vec<(String, String)> = conn
        .query(format!(
            "SELECT name, value FROM {} WHERE name IN ('version', 'allversionshash') ORDER BY name",
            target.table("config")
        ))
        .context("cannot read Moodle's installed version")?;
    Ok(rows
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" "))
}
