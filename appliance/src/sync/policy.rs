//! The rules in the form the engine asks them: which way a table syncs, which columns point at which
//! tables (to follow an id that lost a unique-key clash), and who may change what.

use std::collections::HashMap;

pub use super::rules::Direction;
use super::rules::{Protection, Rules};

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

pub struct Policy {
    rules: Rules,
    /// table → (column, referenced table), the inverse of the rules' `referenced_by`.
    outgoing: HashMap<String, Vec<(String, String)>>,
}

impl Policy {
    pub fn new(rules: Rules) -> Policy {
        let mut outgoing: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for rule in rules.tables.values() {
            for r in rule.referenced_by.iter().filter(|r| r.ref_column == "id") {
                outgoing
                    .entry(r.table.clone())
                    .or_default()
                    .push((r.column.clone(), rule.table.clone()));
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
        self.rules.get(table).and_then(|r| r.protect)
    }

    /// (column, referenced table) pairs of `table`.
    pub fn references(&self, table: &str) -> Vec<(String, String)> {
        self.outgoing.get(table).cloned().unwrap_or_default()
    }

    /// (table, column) pairs that hold ids of `table`.
    pub fn referenced_by(&self, table: &str) -> Vec<(String, String)> {
        self.rules
            .get(table)
            .map(|rule| {
                rule.referenced_by
                    .iter()
                    .filter(|r| r.ref_column == "id")
                    .map(|r| (r.table.clone(), r.column.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
