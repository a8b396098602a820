//! What the engine needs to know of each table, drawn from the rules and the XMLDB foreign keys: which way
//! it syncs, and which columns point at which tables (to follow an id that lost a unique-key clash).

use std::collections::HashMap;

pub use super::rules::Direction;

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

/// A single-column foreign key: `table.column` holds ids of `ref_table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub table: String,
    pub column: String,
    pub ref_table: String,
}

pub struct Policy {
    directions: HashMap<String, Direction>,
    /// For tables the rules do not list (a plugin installed after the rules were read).
    fallback: Box<dyn Fn(&str) -> Direction + Send + Sync>,
    outgoing: HashMap<String, Vec<(String, String)>>,
    incoming: HashMap<String, Vec<(String, String)>>,
}

impl Policy {
    pub fn new(
        directions: impl IntoIterator<Item = (String, Direction)>,
        references: impl IntoIterator<Item = Reference>,
        fallback: impl Fn(&str) -> Direction + Send + Sync + 'static,
    ) -> Policy {
        let mut outgoing: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut incoming: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for r in references {
            outgoing
                .entry(r.table.clone())
                .or_default()
                .push((r.column.clone(), r.ref_table.clone()));
            incoming
                .entry(r.ref_table)
                .or_default()
                .push((r.table, r.column));
        }
        Policy {
            directions: directions.into_iter().collect(),
            fallback: Box::new(fallback),
            outgoing,
            incoming,
        }
    }

    pub fn direction(&self, table: &str) -> Direction {
        self.directions
            .get(table)
            .copied()
            .unwrap_or_else(|| (self.fallback)(table))
    }

    /// (column, referenced table) pairs of `table`.
    pub fn references(&self, table: &str) -> Vec<(String, String)> {
        self.outgoing.get(table).cloned().unwrap_or_default()
    }

    /// (table, column) pairs that hold ids of `table`.
    pub fn referenced_by(&self, table: &str) -> Vec<(String, String)> {
        self.incoming.get(table).cloned().unwrap_or_default()
    }
}
