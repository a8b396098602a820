//! Per-table sync rules, derived from the XMLDB [`Schema`] and a small data file.
//!
//! The lists of which table travels which way are data, not code: `appliance/sync-rules.ini` (built in) and
//! an optional override file of the same format holding only a site's exceptions. The keys each table
//! needs for merging (primary key, other unique keys, the columns that refer to it) come from XMLDB.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::ini::{ConfigError, Document, Section};
use crate::sync::schema::groups::{self, Listed as ListedGroups};
use crate::sync::schema::identity::{self, Identity, SameFact};
use crate::sync::schema::references::{self, Listed as ListedReference};
use crate::sync::schema::Schema;

mod caches;
pub use caches::{CacheRule, Kind as CacheKind, LocalColumn, LocalColumns};

/// The built-in rule lists.
pub const BUILTIN: &str = include_str!("../../../sync-rules.ini");
/// Where a site keeps its exceptions.
pub const OVERRIDES_PATH: &str = "/etc/kituo/sync-overrides.ini";

/// Which way a table's changes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Both,
    HubToCenters,
    CentersToHub,
    Never,
}

impl Direction {
    pub const ALL: [Direction; 4] = [
        Direction::Both,
        Direction::HubToCenters,
        Direction::CentersToHub,
        Direction::Never,
    ];

    /// Its name in the rule files.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::HubToCenters => "hub_to_centers",
            Direction::CentersToHub => "centers_to_hub",
            Direction::Never => "never",
        }
    }

    fn from_name(s: &str) -> Option<Direction> {
        Direction::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Rows of a table that a center may not change (enforced by the hub's accept step, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Rows whose id is listed in config `siteadmins`: the administrators' accounts.
    SiteAdmins,
    /// Rows whose `userid` is listed in config `siteadmins`: what lets someone log in as an
    /// administrator (a linked OAuth 2 login).
    SiteAdminsUserid,
    /// Rows at the system context (`contextid`): a role assigned there holds over the whole site.
    SystemContext,
}

impl Protection {
    pub const ALL: [Protection; 3] = [
        Protection::SiteAdmins,
        Protection::SiteAdminsUserid,
        Protection::SystemContext,
    ];

    /// Its name in the rule files.
    pub fn name(self) -> &'static str {
        match self {
            Protection::SiteAdmins => "siteadmins",
            Protection::SiteAdminsUserid => "siteadmins_userid",
            Protection::SystemContext => "system_context",
        }
    }
}

/// Rows of a synced table that each site keeps for itself, told by one column's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRows {
    pub column: String,
    pub values: BTreeSet<String>,
    pub source: Source,
}

/// Where a rule was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// A table name, or a prefix when `prefix` is set (written with a trailing `*`).
    name: String,
    prefix: bool,
    direction: Direction,
    reason: String,
    source: Source,
}

/// One parsed rule file (the built-in one or an override file).
#[derive(Debug, Clone)]
pub struct RuleFile {
    entries: Vec<Entry>,
    default: Option<(Direction, Source)>,
    /// `None` as the protection: an override that lifts the built-in one.
    protect: BTreeMap<String, (Option<Protection>, Source)>,
    /// By table: each entry names one column and its values.
    site_local: BTreeMap<String, Vec<LocalRows>>,
    /// `[seed]`: per-site tables a joining center copies once from the hub.
    seed: Vec<Entry>,
    /// `[groups]`: columns written together, by table.
    groups: BTreeMap<String, ListedGroups>,
    /// `[references]`: by `table.column` or `*.column`.
    references: BTreeMap<String, ListedReference>,
    /// `[identities]` and `[same_facts]`.
    names: identity::Lists,
    /// `[caches]` and `[local_columns]`.
    cached: caches::Lists,
}

const SECTIONS: &[Section] = &[
    Section {
        name: "defaults",
        keys: &[],
        free_keys: true,
        help: "direction = for tables no list names",
    },
    Section {
        name: "protect",
        keys: &[],
        free_keys: true,
        help: "table = siteadmins | siteadmins_userid | system_context | none",
    },
    Section {
        name: "site_local",
        keys: &[],
        free_keys: true,
        help: "table.column = values of the rows each site keeps for itself",
    },
    Section {
        name: "both",
        keys: &[],
        free_keys: true,
        help: "tables edited at every site",
    },
    Section {
        name: "hub_to_centers",
        keys: &[],
        free_keys: true,
        help: "tables authored at the hub",
    },
    Section {
        name: "centers_to_hub",
        keys: &[],
        free_keys: true,
        help: "logs",
    },
    Section {
        name: "never",
        keys: &[],
        free_keys: true,
        help: "volatile or per-site tables",
    },
    Section {
        name: "seed",
        keys: &[],
        free_keys: true,
        help: "per-site tables a joining center copies once from the hub",
    },
    Section {
        name: "groups",
        keys: &[],
        free_keys: true,
        help: "table = columns written together (groups split by ';'), or none: reason",
    },
    Section {
        name: "references",
        keys: &[],
        free_keys: true,
        help: "table.column or *.column = the table whose ids it holds, or none: reason",
    },
    Section {
        name: "identities",
        keys: &[],
        free_keys: true,
        help: "table.column = scope columns (or -): reason: a name two rows may not share",
    },
    Section {
        name: "same_facts",
        keys: &[],
        free_keys: true,
        help: "table = reason: its unique keys say the same fact twice",
    },
    Section {
        name: "caches",
        keys: &[],
        free_keys: true,
        help: "table = kind column: reason: what applying a change to its rows clears in Moodle",
    },
    Section {
        name: "local_columns",
        keys: &[],
        free_keys: true,
        help: "table = columns: reason: columns each site keeps for itself",
    },
];

impl RuleFile {
    pub fn builtin() -> Result<RuleFile, ConfigError> {
        RuleFile::parse(Path::new("appliance/sync-rules.ini"), BUILTIN)
    }

    pub fn load(path: &Path) -> Result<RuleFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        RuleFile::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<RuleFile, ConfigError> {
        let doc = Document::parse(path, text, SECTIONS)?;
        let at = |line: usize, message: String| ConfigError {
            file: path.to_owned(),
            line: Some(line),
            message,
        };
        let mut file = RuleFile {
            entries: Vec::new(),
            default: None,
            protect: BTreeMap::new(),
            site_local: BTreeMap::new(),
            seed: Vec::new(),
            groups: BTreeMap::new(),
            references: BTreeMap::new(),
            names: identity::parse(&doc, path)?,
            cached: caches::parse(&doc, path)?,
        };
        for (key, value, line) in doc.free_entries("defaults") {
            if key != "direction" {
                return Err(at(
                    line,
                    format!(
                        "invalid key '{key}' in section [defaults]; the only key is 'direction'"
                    ),
                ));
            }
            let direction = Direction::from_name(&value).ok_or_else(|| {
                doc.error(
                    "defaults",
                    &key,
                    format!(
                        "expected both, hub_to_centers, centers_to_hub or never, got '{value}'"
                    ),
                )
            })?;
            let source = Source {
                file: path.to_owned(),
                line,
            };
            file.default = Some((direction, source));
        }
        for (key, value, line) in doc.free_entries("protect") {
            if !is_table_name(&key) {
                return Err(doc.error("protect", &key, "expected a table name (no patterns)"));
            }
            let protection = match Protection::ALL.into_iter().find(|p| p.name() == value) {
                Some(p) => Some(p),
                None if value == "none" => None,
                None => {
                    return Err(doc.error(
                        "protect",
                        &key,
                        format!(
                            "expected siteadmins, siteadmins_userid, system_context or none, got '{value}'"
                        ),
                    ))
                }
            };
            let source = Source {
                file: path.to_owned(),
                line,
            };
            file.protect.insert(key, (protection, source));
        }
        for (key, value, line) in doc.free_entries("site_local") {
            let parts = key.split_once('.');
            let Some((table, column)) = parts.filter(|(t, c)| is_table_name(t) && is_table_name(c))
            else {
                return Err(doc.error(
                    "site_local",
                    &key,
                    "expected table.column (like config.name)",
                ));
            };
            let values: BTreeSet<String> = value
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect();
            if values.is_empty() {
                return Err(doc.error(
                    "site_local",
                    &key,
                    "list the column values of the rows each site keeps",
                ));
            }
            let given = file.site_local.entry(table.to_owned()).or_default();
            if given.iter().any(|g| g.column == column) {
                return Err(doc.error("site_local", &key, format!("'{key}' is given twice")));
            }
            let rows = LocalRows {
                column: column.to_owned(),
                values,
                source: Source {
                    file: path.to_owned(),
                    line,
                },
            };
            given.push(rows);
        }
        for (key, value, _) in doc.free_entries("groups") {
            if !is_table_name(&key) {
                return Err(doc.error("groups", &key, "expected a table name (no patterns)"));
            }
            let Some((columns, _reason)) = split_reason(&value) else {
                return Err(doc.error("groups", &key, "say why after the columns: 'a b: reason'"));
            };
            let listed = if columns == "none" {
                ListedGroups::None
            } else {
                let groups: Vec<Vec<String>> = columns
                    .split(';')
                    .map(|g| g.split_whitespace().map(str::to_owned).collect())
                    .collect();
                if groups
                    .iter()
                    .any(|g: &Vec<String>| g.len() < 2 || !g.iter().all(|c| is_table_name(c)))
                {
                    return Err(doc.error(
                        "groups",
                        &key,
                        "expected groups of two or more column names split by ';', or none",
                    ));
                }
                ListedGroups::Add(groups)
            };
            file.groups.insert(key, listed);
        }
        for (key, value, line) in doc.free_entries("references") {
            let listed = parse_reference(
                &key,
                &value,
                Source {
                    file: path.to_owned(),
                    line,
                },
            )
            .map_err(|m| doc.error("references", &key, m))?;
            file.references.insert(key, listed);
        }
        let lists = Direction::ALL
            .into_iter()
            .map(|d| (d.name(), d, false))
            .chain([("seed", Direction::Never, true)]);
        for (section, direction, seed) in lists {
            let list = if seed {
                &mut file.seed
            } else {
                &mut file.entries
            };
            for (key, value, line) in doc.free_entries(section) {
                let (name, prefix) = match key.strip_suffix('*') {
                    Some(p) => (p.to_owned(), true),
                    None => (key.clone(), false),
                };
                if !is_table_name(&name) {
                    return Err(doc.error(
                        section,
                        &key,
                        "expected a table name, or a prefix ending in '*' (like cache_*)",
                    ));
                }
                if value.is_empty() {
                    return Err(doc.error(
                        section,
                        &key,
                        "say why after '=': the reason is kept with the rule",
                    ));
                }
                if let Some(first) = list.iter().find(|e| e.name == name && e.prefix == prefix) {
                    let first_section = if seed {
                        section
                    } else {
                        first.direction.name()
                    };
                    return Err(at(
                        line,
                        format!(
                            "key '{key}' in section [{section}]: '{key}' is already in [{first_section}] on line {}",
                            first.source.line
                        ),
                    ));
                }
                list.push(Entry {
                    name,
                    prefix,
                    direction,
                    reason: value,
                    source: Source {
                        file: path.to_owned(),
                        line,
                    },
                });
            }
        }
        Ok(file)
    }

    /// The entry for `table`: its own name first, else the longest matching prefix.
    fn lookup(&self, table: &str) -> Option<&Entry> {
        find_entry(&self.entries, table)
    }
}

/// One `[references]` entry: `table.column` (or `*.column`) = `table: reason` or `none: reason`; or
/// `table.column/v1/v2` = `table by c1 c2: reason`, for the rows whose columns c1, c2 are v1, v2.
fn parse_reference(key: &str, value: &str, source: Source) -> Result<ListedReference, String> {
    let mut parts = key.split('/');
    let name = parts.next().unwrap_or_default();
    let values: Vec<&str> = parts.collect();
    let valid = name
        .split_once('.')
        .is_some_and(|(t, c)| (t == "*" || is_table_name(t)) && is_table_name(c));
    if !valid || values.iter().any(|v| v.is_empty()) {
        return Err("expected table.column or *.column (like files.itemid), then /values".into());
    }
    let Some((head, reason)) = split_reason(value) else {
        return Err("expected 'table: reason' or 'none: reason'".into());
    };
    let mut words = head.split_whitespace();
    let target = words.next().filter(|t| is_table_name(t));
    let by: Vec<&str> = match words.next() {
        Some("by") => words.collect(),
        None => Vec::new(),
        Some(_) => return Err("expected 'table: reason' or 'table by columns: reason'".into()),
    };
    let Some(target) = target else {
        return Err("expected 'table: reason' or 'none: reason'".into());
    };
    if by.len() != values.len() || !by.iter().all(|c| is_table_name(c)) {
        return Err(format!(
            "the key gives {} values after '/', and 'by' names {} columns",
            values.len(),
            by.len()
        ));
    }
    Ok(ListedReference {
        target: (target != "none").then(|| target.to_owned()),
        when: by
            .into_iter()
            .zip(values)
            .map(|(c, v)| (c.to_owned(), v.to_owned()))
            .collect(),
        reason: reason.to_owned(),
        source,
    })
}

/// `head: reason` with both parts present.
fn split_reason(value: &str) -> Option<(&str, &str)> {
    let (head, reason) = value.split_once(':')?;
    let (head, reason) = (head.trim(), reason.trim());
    (!head.is_empty() && !reason.is_empty()).then_some((head, reason))
}

fn find_entry<'e>(entries: &'e [Entry], table: &str) -> Option<&'e Entry> {
    entries
        .iter()
        .find(|e| !e.prefix && e.name == table)
        .or_else(|| {
            entries
                .iter()
                .filter(|e| e.prefix && table.starts_with(&e.name))
                .max_by_key(|e| e.name.len())
        })
}

/// Moodle table names: lower-case letters, digits and underscores.
fn is_table_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A column that refers to a table's rows (from an XMLDB foreign key, a naming convention or a list).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    pub table: String,
    pub column: String,
    /// The referred column, nearly always `id`.
    pub ref_column: String,
    /// Only in the rows with these (column, value) pairs (`files.itemid` of one component's area).
    pub when: Vec<(String, String)>,
}

/// Everything the sync engine needs to know about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRule {
    pub table: String,
    pub direction: Direction,
    /// Why: the rule's text and where it was written, or the reason it was forced.
    pub reason: String,
    pub source: Option<Source>,
    /// The single integer primary key column (`None` only for `Never` tables).
    pub primary_key: Option<String>,
    /// Unique column sets other than the primary key: rows two sites created independently that clash
    /// on one of these are merged.
    pub unique_keys: Vec<Vec<String>>,
    /// Columns of other tables that hold this table's ids: what to remap when rows merge.
    pub referenced_by: Vec<Reference>,
    /// Columns Moodle writes together, which win or lose a merge as one ([`groups`]).
    pub column_groups: Vec<Vec<String>>,
    /// Names two rows may not share ([`identity`]): a clash keeps both rows.
    pub identities: Vec<Identity>,
    /// Why the table's other unique keys merge a clash, if a list says.
    pub same_fact: Option<SameFact>,
    pub protect: Option<Protection>,
}

/// Rule counts per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub both: usize,
    pub hub_to_centers: usize,
    pub centers_to_hub: usize,
    pub never: usize,
}

impl Summary {
    pub fn total(&self) -> usize {
        self.both + self.hub_to_centers + self.centers_to_hub + self.never
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tables: both {}, hub_to_centers {}, centers_to_hub {}, never {}",
            self.total(),
            self.both,
            self.hub_to_centers,
            self.centers_to_hub,
            self.never
        )
    }
}

/// The rules of every table of a schema, and the lists for tables found later.
#[derive(Debug, Clone)]
pub struct Rules {
    pub tables: BTreeMap<String, TableRule>,
    builtin: RuleFile,
    overrides: Option<RuleFile>,
}

impl Rules {
    /// The built-in lists plus the override file at `overrides`, if that file exists.
    pub fn load(schema: &Schema, overrides: Option<&Path>) -> Result<Rules> {
        let builtin = RuleFile::builtin().context("the built-in sync rules are broken")?;
        let overrides = match overrides {
            Some(path) if path.exists() => Some(RuleFile::load(path)?),
            _ => None,
        };
        Ok(Rules::derive(schema, builtin, overrides))
    }

    pub fn derive(schema: &Schema, builtin: RuleFile, overrides: Option<RuleFile>) -> Rules {
        let mut rules = Rules {
            tables: BTreeMap::new(),
            builtin,
            overrides,
        };
        let mut referenced_by: BTreeMap<String, Vec<Reference>> = BTreeMap::new();
        for v in rules.references(schema) {
            if let Some(target) = v.target {
                referenced_by.entry(target).or_default().push(Reference {
                    table: v.table,
                    column: v.column,
                    ref_column: "id".into(),
                    when: v.when,
                });
            }
        }
        for table in schema.tables.values() {
            let pk = table.single_int_primary_key();
            let mut rule = rules.by_lists(&table.name, pk);
            rule.unique_keys = table
                .unique_keys
                .iter()
                .filter(|k| **k != table.primary_key)
                .cloned()
                .collect();
            let mut refs = referenced_by.remove(&table.name).unwrap_or_default();
            refs.sort();
            refs.dedup();
            rule.referenced_by = refs;
            rule.column_groups = groups::of(table, rules.listed_groups(&table.name));
            let has = |c: &str| table.fields.iter().any(|f| f.name == c);
            rule.identities = rules
                .identities(&table.name)
                .into_iter()
                .filter(|i| i.key().into_iter().all(has))
                .collect();
            rule.same_fact = rules
                .files()
                .find_map(|f| f.names.same_facts.get(&table.name))
                .cloned();
            rules.tables.insert(table.name.clone(), rule);
        }
        rules
    }

    /// Every integer column of `schema` and whether it is followed as a reference, with why.
    pub fn references(&self, schema: &Schema) -> Vec<references::Verdict> {
        let listed = |table: &str, column: &str| {
            self.files().find_map(|f| {
                f.references
                    .get(&format!("{table}.{column}"))
                    .or_else(|| f.references.get(&format!("*.{column}")))
            })
        };
        let chosen = |table: &str, column: &str| {
            let prefix = format!("{table}.{column}/");
            let mut keys: BTreeSet<&str> = BTreeSet::new();
            let mut out = Vec::new();
            for file in self.files() {
                for (key, l) in file.references.range(prefix.clone()..) {
                    if !key.starts_with(&prefix) {
                        break;
                    }
                    // An override file's entry for the same rows replaces the built-in one.
                    if keys.insert(key) {
                        out.push(l);
                    }
                }
            }
            out
        };
        references::classify(schema, listed, chosen)
    }

    /// The identities listed for `table`: an override file's entry for a column replaces the
    /// built-in one.
    fn identities(&self, table: &str) -> Vec<Identity> {
        let mut out: Vec<Identity> = Vec::new();
        for file in self.overrides.iter().chain([&self.builtin]) {
            for i in file.names.identities.iter().filter(|i| i.table == table) {
                if !out.iter().any(|o| o.column == i.column) {
                    out.push(i.clone());
                }
            }
        }
        out
    }

    fn listed_groups(&self, table: &str) -> Option<&ListedGroups> {
        self.files().find_map(|f| f.groups.get(table))
    }

    /// The override file first, then the built-in one.
    fn files(&self) -> impl Iterator<Item = &RuleFile> {
        self.overrides.iter().chain([&self.builtin])
    }

    pub fn get(&self, table: &str) -> Option<&TableRule> {
        self.tables.get(table)
    }

    /// The rows of `table` that each site keeps for itself although the table syncs, each rule
    /// naming one column's values (the override file's entries for the table replace the built-in
    /// ones).
    pub fn site_local(&self, table: &str) -> &[LocalRows] {
        self.files()
            .find_map(|f| f.site_local.get(table))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether a joining center copies `table` from the hub when it is seeded (`[seed]`): a table
    /// that never syncs, but without whose rows Moodle does not run (its cron schedule, its own MNet
    /// host). Each site then keeps its copy for itself.
    pub fn copied_at_seed(&self, table: &str) -> bool {
        let listed = self
            .overrides
            .iter()
            .chain([&self.builtin])
            .any(|f| find_entry(&f.seed, table).is_some());
        listed
            && self
                .get(table)
                .is_none_or(|r| r.direction == Direction::Never)
    }

    /// The rule for a table the database has but XMLDB does not (yet): the lists decide the direction;
    /// `primary_key` is the table's primary key from information_schema as (column, DATA_TYPE) pairs.
    /// Nothing is known about its unique keys or references.
    pub fn for_unknown_table(&self, name: &str, primary_key: &[(&str, &str)]) -> TableRule {
        let pk = match primary_key {
            [(column, data_type)]
                if matches!(
                    data_type.to_ascii_lowercase().as_str(),
                    "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
                ) =>
            {
                Some(*column)
            }
            _ => None,
        };
        let mut rule = self.by_lists(name, pk);
        if rule.direction != Direction::Never {
            rule.reason
                .push_str(" (table not in XMLDB: no unique keys or references known)");
        }
        rule
    }

    fn by_lists(&self, table: &str, pk: Option<&str>) -> TableRule {
        let protect = self
            .overrides
            .iter()
            .chain([&self.builtin])
            .find_map(|f| f.protect.get(table))
            .and_then(|(p, _)| *p);
        let mut rule = TableRule {
            table: table.to_owned(),
            direction: Direction::Never,
            reason: String::new(),
            source: None,
            primary_key: pk.map(str::to_owned),
            unique_keys: Vec::new(),
            referenced_by: Vec::new(),
            column_groups: Vec::new(),
            identities: Vec::new(),
            same_fact: None,
            protect,
        };
        if pk.is_none() {
            rule.reason =
                "no single-column integer primary key: rows cannot be told apart across sites"
                    .into();
            return rule;
        }
        let entry = self
            .overrides
            .iter()
            .chain([&self.builtin])
            .find_map(|f| f.lookup(table));
        match entry {
            Some(e) => {
                rule.direction = e.direction;
                let key = if e.prefix {
                    format!("{}*", e.name)
                } else {
                    e.name.clone()
                };
                rule.reason = format!("[{}] {key}: {}", e.direction, e.reason);
                rule.source = Some(e.source.clone());
            }
            None => {
                let (direction, source) = self
                    .overrides
                    .as_ref()
                    .and_then(|f| f.default.clone())
                    .or_else(|| self.builtin.default.clone())
                    .unwrap_or((
                        Direction::Both,
                        Source {
                            file: PathBuf::from("(program default)"),
                            line: 0,
                        },
                    ));
                rule.direction = direction;
                rule.reason =
                    format!("[defaults] direction = {direction}: no list names this table");
                rule.source = Some(source);
            }
        }
        rule
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for rule in self.tables.values() {
            match rule.direction {
                Direction::Both => s.both += 1,
                Direction::HubToCenters => s.hub_to_centers += 1,
                Direction::CentersToHub => s.centers_to_hub += 1,
                Direction::Never => s.never += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
