//! MariaDB DDL from XMLDB, following the conventions of Moodle's own `mysql_sql_generator`, so a database
//! we create (tests, benches) looks like one Moodle's installer created:
//!
//! - int LENGTH → TINYINT (≤2), SMALLINT (≤4), MEDIUMINT (≤6), INT (≤9) or BIGINT, with the length as
//!   display width; number → DECIMAL(l,d); float → DOUBLE, or FLOAT(l,d) when it has fewer than 6
//!   decimals, as Moodle does; char → VARCHAR(l); text → LONGTEXT; binary → LONGBLOB.
//! - the sequence field is AUTO_INCREMENT and the PRIMARY KEY; NOT NULL char fields without a default get
//!   DEFAULT ''; text and binary fields never get a default (MySQL does not allow one).
//! - no FOREIGN KEY constraints, as in Moodle: keys of TYPE unique and foreign-unique become unique
//!   indexes, TYPE foreign a plain index, after the table's own INDEXes; every index is named by Moodle's
//!   rule (`mdl_` + 4 letters of each table-name part + `_` + 3 letters of each field, cut to 30
//!   characters with the suffix `_ix` or `_uix`), de-duplicated as Moodle does across the whole install
//!   (a name given before gets a counter), so the tables are named in the installer's order
//!   ([`Schema::order`]).
//! - the indexes plugins' install steps add with SQL of their own ([`INSTALL_STEPS`]).
//! - InnoDB, utf8mb4 with utf8mb4_unicode_ci, ROW_FORMAT=Compressed, as Moodle's installer chooses on
//!   MariaDB with a file per table (the default, and the card's setting).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::sync::schema::{Field, FieldKind, KeyKind, Schema, Table};

/// Moodle keeps index names within 30 characters on every database.
const NAMES_MAX_LENGTH: usize = 30;

/// An index as it exists in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalIndex {
    pub name: String,
    pub fields: Vec<String>,
    pub unique: bool,
    pub fulltext: bool,
}

/// Indexes that plugins' `db/install.php` add on MySQL with SQL of their own: table, name (without the
/// prefix), fields.
pub const INSTALL_STEPS: &[(&str, &str, &[&str])] = &[(
    // search/engine/simpledb/db/install.php: the simple search engine's FULLTEXT index.
    "search_simpledb_index",
    "search_simpledb_index_index",
    &["title", "content", "description1", "description2"],
)];

/// The column type, e.g. `BIGINT(10)`.
pub fn type_sql(field: &Field) -> String {
    match field.kind {
        FieldKind::Int => {
            let len = field.length.filter(|&l| l > 0).unwrap_or(10);
            let name = match len {
                0..=2 => "TINYINT",
                3..=4 => "SMALLINT",
                5..=6 => "MEDIUMINT",
                7..=9 => "INT",
                _ => "BIGINT",
            };
            format!("{name}({len})")
        }
        FieldKind::Number => match (field.length.filter(|&l| l > 0), field.decimals) {
            (Some(l), Some(d)) if d > 0 => format!("DECIMAL({l},{d})"),
            (Some(l), _) => format!("DECIMAL({l})"),
            (None, _) => "DECIMAL".into(),
        },
        FieldKind::Float => {
            let decimals = field.decimals.filter(|&d| d > 0);
            let name = if decimals.is_some_and(|d| d < 6) {
                "FLOAT"
            } else {
                "DOUBLE"
            };
            match field.length.filter(|&l| l > 0) {
                Some(l) => format!("{name}({l},{})", decimals.unwrap_or(0)),
                None => name.into(),
            }
        }
        FieldKind::Char => format!(
            "VARCHAR({})",
            field.length.filter(|&l| l > 0).unwrap_or(255)
        ),
        FieldKind::Text => "LONGTEXT".into(),
        FieldKind::Binary => "LONGBLOB".into(),
    }
}

/// The whole column definition, e.g. `` `course` BIGINT(10) NOT NULL DEFAULT 0 ``.
pub fn column_sql(field: &Field) -> String {
    let mut sql = format!("`{}` {}", field.name, type_sql(field));
    if field.not_null {
        sql.push_str(" NOT NULL");
    }
    let default = match (&field.default, field.kind) {
        _ if field.sequence => None,
        (_, FieldKind::Text | FieldKind::Binary) => None,
        (Some(d), FieldKind::Char) => Some(quote(d)),
        (Some(d), _) => Some(d.clone()),
        (None, FieldKind::Char) if field.not_null => Some("''".into()),
        (None, _) => None,
    };
    if let Some(d) = default {
        sql.push_str(" DEFAULT ");
        sql.push_str(&d);
    }
    if field.sequence {
        sql.push_str(" AUTO_INCREMENT");
    }
    sql
}

/// A string literal for MariaDB (default sql_mode: backslash escapes are active).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Moodle's `getNameForObject`: the names given so far in one install, and the last counter of each
/// name's base, which the next name with that base starts after.
#[derive(Debug, Default)]
pub struct Names {
    used: HashSet<String>,
    previous: HashMap<String, usize>,
}

impl Names {
    /// The name of an index on `fields` of `table` (see the module comment).
    pub fn give(&mut self, prefix: &str, table: &str, fields: &[String], suffix: &str) -> String {
        let base = name_base(prefix, table, fields);
        let mut counter = self.previous.get(&base).map_or(1, |c| c + 1);
        let mut name = with_suffix(&base, counter, suffix);
        while self.used.contains(&name) {
            counter += 1;
            name = with_suffix(&base, counter, suffix);
        }
        self.used.insert(name.clone());
        self.previous.insert(base, counter);
        name
    }
}

fn name_base(prefix: &str, table: &str, fields: &[String]) -> String {
    let mut name: String = prefix.to_owned();
    name.extend(table.split('_').map(|part| cut(part.trim(), 4)));
    name.push('_');
    name.extend(fields.iter().map(|f| cut(f.trim(), 3)));
    name.trim().to_owned()
}

fn cut(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

fn with_suffix(base: &str, counter: usize, suffix: &str) -> String {
    let room = NAMES_MAX_LENGTH - suffix.len() - 1;
    if counter <= 1 {
        format!("{}_{suffix}", cut(base, room))
    } else {
        let c = counter.to_string();
        format!("{}{c}_{suffix}", cut(base, room.saturating_sub(c.len())))
    }
}

/// Every index of every table as Moodle's installer makes them, by table name: the tables in install
/// order, each with its INDEXes, then one per unique, foreign-unique and foreign key, then what install
/// steps add.
pub fn install_indexes(schema: &Schema, prefix: &str) -> BTreeMap<String, Vec<PhysicalIndex>> {
    let mut names = Names::default();
    let mut all = BTreeMap::new();
    for table in schema.order.iter().filter_map(|n| schema.tables.get(n)) {
        let mut indexes = physical_indexes(table, prefix, &mut names);
        for (_, name, fields) in INSTALL_STEPS.iter().filter(|s| s.0 == table.name) {
            indexes.push(PhysicalIndex {
                name: format!("{prefix}{name}"),
                fields: fields.iter().map(|f| f.to_string()).collect(),
                unique: false,
                fulltext: true,
            });
        }
        all.insert(table.name.clone(), indexes);
    }
    all
}

/// One table's indexes from XMLDB, named by `names` (Moodle creates an index for each declaration,
/// even one on the same fields as another).
fn physical_indexes(table: &Table, prefix: &str, names: &mut Names) -> Vec<PhysicalIndex> {
    let wanted = table
        .indexes
        .iter()
        .map(|i| (i.fields.clone(), i.unique))
        .chain(table.keys.iter().filter_map(|k| match k.kind {
            KeyKind::Primary => None,
            KeyKind::Unique | KeyKind::ForeignUnique => Some((k.fields.clone(), true)),
            KeyKind::Foreign => Some((k.fields.clone(), false)),
        }));
    wanted
        .map(|(fields, unique)| {
            let suffix = if unique { "uix" } else { "ix" };
            PhysicalIndex {
                name: names.give(prefix, &table.name, &fields, suffix),
                fields,
                unique,
                fulltext: false,
            }
        })
        .collect()
}

fn index_sql(index: &PhysicalIndex) -> String {
    let fields: Vec<String> = index.fields.iter().map(|f| format!("`{f}`")).collect();
    let kind = match (index.unique, index.fulltext) {
        (_, true) => "FULLTEXT ",
        (true, false) => "UNIQUE ",
        (false, false) => "",
    };
    format!("{kind}INDEX `{}` ({})", index.name, fields.join(", "))
}

fn table_comment(table: &Table) -> String {
    // Moodle's MySQL generator keeps the first 60 characters.
    quote(&table.comment.chars().take(60).collect::<String>())
}

/// One `CREATE TABLE` statement with its indexes (from [`install_indexes`]) inline: one round trip per
/// table.
pub fn create_table(table: &Table, indexes: &[PhysicalIndex], prefix: &str) -> String {
    let mut parts: Vec<String> = table.fields.iter().map(column_sql).collect();
    let pk: Vec<String> = table.primary_key.iter().map(|f| format!("`{f}`")).collect();
    parts.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    parts.extend(indexes.iter().map(index_sql));
    format!(
        "CREATE TABLE `{prefix}{}` (\n    {}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci ROW_FORMAT=Compressed COMMENT={}",
        table.name,
        parts.join(",\n    "),
        table_comment(table)
    )
}

/// Every table's name and `CREATE TABLE`, in the installer's order.
pub fn create_tables(schema: &Schema, prefix: &str) -> Vec<(String, String)> {
    let indexes = install_indexes(schema, prefix);
    schema
        .order
        .iter()
        .filter_map(|name| {
            let table = schema.tables.get(name)?;
            let sql = create_table(table, indexes.get(name).map_or(&[], Vec::as_slice), prefix);
            Some((name.clone(), sql))
        })
        .collect()
}

/// The statements that take a database holding `from` to `to`: new tables are created, dropped ones
/// dropped, and each changed table gets one `ALTER TABLE` (dropped indexes, dropped, added and changed
/// columns, renamed and added indexes). Columns are added after their predecessor in `to`, so the column
/// order matches a fresh install; reordering of columns that did not change is not done.
pub fn upgrade(from: &Schema, to: &Schema, prefix: &str) -> Vec<String> {
    let (old_ix, new_ix) = (install_indexes(from, prefix), install_indexes(to, prefix));
    let of = |all: &BTreeMap<String, Vec<PhysicalIndex>>, name: &str| -> Vec<PhysicalIndex> {
        all.get(name).cloned().unwrap_or_default()
    };
    let mut out = Vec::new();
    for (name, new) in &to.tables {
        match from.tables.get(name) {
            None => out.push(create_table(new, &of(&new_ix, name), prefix)),
            Some(old) => {
                let clauses = alter_clauses(old, new, &of(&old_ix, name), &of(&new_ix, name));
                if !clauses.is_empty() {
                    out.push(format!(
                        "ALTER TABLE `{prefix}{name}`\n    {}",
                        clauses.join(",\n    ")
                    ));
                }
            }
        }
    }
    for name in from.tables.keys().filter(|n| !to.tables.contains_key(*n)) {
        out.push(format!("DROP TABLE `{prefix}{name}`"));
    }
    out
}

fn alter_clauses(
    old: &Table,
    new: &Table,
    old_ix: &[PhysicalIndex],
    new_ix: &[PhysicalIndex],
) -> Vec<String> {
    let same = |a: &PhysicalIndex, b: &PhysicalIndex| {
        a.fields == b.fields && a.unique == b.unique && a.fulltext == b.fulltext
    };
    let mut clauses = Vec::new();
    for ix in old_ix.iter().filter(|o| !new_ix.iter().any(|n| same(o, n))) {
        clauses.push(format!("DROP INDEX `{}`", ix.name));
    }
    let pk_changed = old.primary_key != new.primary_key;
    if pk_changed {
        clauses.push("DROP PRIMARY KEY".into());
    }
    for f in old.fields.iter().filter(|f| new.field(&f.name).is_none()) {
        clauses.push(format!("DROP COLUMN `{}`", f.name));
    }
    for (i, f) in new.fields.iter().enumerate() {
        let position = match i {
            0 => "FIRST".to_owned(),
            _ => format!("AFTER `{}`", new.fields[i - 1].name),
        };
        match old.field(&f.name) {
            None => clauses.push(format!("ADD COLUMN {} {position}", column_sql(f))),
            Some(o) if column_sql(o) != column_sql(f) => {
                clauses.push(format!("MODIFY COLUMN {}", column_sql(f)))
            }
            Some(_) => {}
        }
    }
    if pk_changed {
        let pk: Vec<String> = new.primary_key.iter().map(|f| format!("`{f}`")).collect();
        clauses.push(format!("ADD PRIMARY KEY ({})", pk.join(", ")));
    }
    for n in new_ix {
        match old_ix.iter().find(|o| same(o, n)) {
            Some(o) if o.name != n.name => {
                clauses.push(format!("RENAME INDEX `{}` TO `{}`", o.name, n.name))
            }
            Some(_) => {}
            None => clauses.push(format!("ADD {}", index_sql(n))),
        }
    }
    if table_comment(old) != table_comment(new) {
        clauses.push(format!("COMMENT={}", table_comment(new)));
    }
    clauses
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::sync::schema::tests::{moodle_450, MOODLE_455};

    fn field(kind: FieldKind, length: Option<u32>, decimals: Option<u32>) -> Field {
        Field {
            name: "f".into(),
            kind,
            length,
            decimals,
            not_null: false,
            sequence: false,
            default: None,
        }
    }

    #[test]
    fn types_follow_moodles_mysql_generator() {
        let int = |l| type_sql(&field(FieldKind::Int, Some(l), None));
        let got: Vec<String> = [1, 2, 3, 4, 5, 6, 7, 9, 10, 20]
            .into_iter()
            .map(int)
            .collect();
        assert_eq!(
            got,
            [
                "TINYINT(1)",
                "TINYINT(2)",
                "SMALLINT(3)",
                "SMALLINT(4)",
                "MEDIUMINT(5)",
                "MEDIUMINT(6)",
                "INT(7)",
                "INT(9)",
                "BIGINT(10)",
                "BIGINT(20)"
            ]
        );
        assert_eq!(type_sql(&field(FieldKind::Int, None, None)), "BIGINT(10)");
        assert_eq!(
            type_sql(&field(FieldKind::Number, Some(10), Some(5))),
            "DECIMAL(10,5)"
        );
        assert_eq!(type_sql(&field(FieldKind::Float, None, None)), "DOUBLE");
        assert_eq!(
            type_sql(&field(FieldKind::Float, Some(11), Some(4))),
            "FLOAT(11,4)"
        );
        assert_eq!(
            type_sql(&field(FieldKind::Float, Some(20), Some(10))),
            "DOUBLE(20,10)"
        );
        assert_eq!(
            type_sql(&field(FieldKind::Char, Some(100), None)),
            "VARCHAR(100)"
        );
        assert_eq!(type_sql(&field(FieldKind::Text, None, None)), "LONGTEXT");
        assert_eq!(type_sql(&field(FieldKind::Binary, None, None)), "LONGBLOB");
    }

    #[test]
    fn defaults_follow_moodle() {
        let mut f = field(FieldKind::Char, Some(10), None);
        f.not_null = true;
        assert_eq!(column_sql(&f), "`f` VARCHAR(10) NOT NULL DEFAULT ''");
        f.default = Some("it's \\".into());
        assert_eq!(
            column_sql(&f),
            "`f` VARCHAR(10) NOT NULL DEFAULT 'it''s \\\\'"
        );
        let mut t = field(FieldKind::Text, None, None);
        t.default = Some("x".into());
        assert_eq!(column_sql(&t), "`f` LONGTEXT");
        let mut id = field(FieldKind::Int, Some(10), None);
        id.not_null = true;
        id.sequence = true;
        assert_eq!(column_sql(&id), "`f` BIGINT(10) NOT NULL AUTO_INCREMENT");
    }

    #[test]
    fn forum_posts_table_and_index_names() {
        let s = moodle_450();
        let t = s.table("forum_posts").expect("forum_posts");
        let all = install_indexes(&s, "mdl_");
        let ix = &all["forum_posts"];
        let names: Vec<&str> = ix.iter().map(|i| i.name.as_str()).collect();
        // Moodle's own names on a MySQL install: INDEXes first, then the foreign keys.
        assert!(names.contains(&"mdl_forupost_use_ix"), "{names:?}");
        assert!(names.contains(&"mdl_forupost_dis_ix"), "{names:?}");
        assert!(names.contains(&"mdl_forupost_par_ix"), "{names:?}");
        let sql = create_table(t, ix, "mdl_");
        assert!(
            sql.starts_with(
                "CREATE TABLE `mdl_forum_posts` (\n    `id` BIGINT(10) NOT NULL AUTO_INCREMENT,"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("`subject` VARCHAR(255) NOT NULL DEFAULT ''"),
            "{sql}"
        );
        assert!(sql.contains("`wordcount` BIGINT(20),"), "{sql}");
        assert!(sql.contains("PRIMARY KEY (`id`)"), "{sql}");
        assert!(sql.ends_with("ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci ROW_FORMAT=Compressed COMMENT='All posts are stored in this table'"), "{sql}");
        assert!(!sql.contains("FOREIGN KEY"), "{sql}");
        let gg = &all["grade_grades"];
        assert!(
            gg.iter()
                .any(|i| i.name == "mdl_gradgrad_useite_uix" && i.unique),
            "{gg:?}"
        );
    }

    #[test]
    fn index_names_are_short_and_unique_across_the_install() {
        let s = moodle_450();
        let all = install_indexes(&s, "mdl_");
        let mut names = BTreeSet::new();
        for ix in all.values().flatten() {
            assert!(names.insert(ix.name.as_str()), "{} twice", ix.name);
            assert!(ix.name.len() <= 30 || ix.fulltext, "{}", ix.name);
        }
        assert!(names.len() > 1000, "{} indexes", names.len());
        // Two tables whose names abbreviate alike: the later one's index takes a counter.
        assert!(names.contains("mdl_feedcomp_fee_ix") && names.contains("mdl_feedcomp_fee2_ix"));
    }

    #[test]
    fn names_count_on_from_the_last_counter_of_their_base() {
        let mut n = Names::default();
        let f = |s: &str| vec![s.to_owned()];
        assert_eq!(n.give("mdl_", "a_b", &f("course"), "ix"), "mdl_ab_cou_ix");
        assert_eq!(n.give("mdl_", "a_b", &f("course"), "ix"), "mdl_ab_cou2_ix");
        // The same base with another suffix starts after the base's counter too, as in Moodle.
        assert_eq!(
            n.give("mdl_", "a_b", &f("course"), "uix"),
            "mdl_ab_cou3_uix"
        );
    }

    #[test]
    fn upgrade_450_to_455plus() {
        let from = moodle_450();
        let to = Schema::load_moodle_dir(Path::new(MOODLE_455)).expect("4.5.5+");
        assert!(upgrade(&from, &from, "mdl_").is_empty());
        let sql = upgrade(&from, &to, "mdl_");
        assert_eq!(
            sql,
            [
                "ALTER TABLE `mdl_course_sections`\n    ADD INDEX `mdl_coursect_comite_ix` (`component`, `itemid`)",
                "ALTER TABLE `mdl_oauth2_issuer`\n    ADD COLUMN `systememail` VARCHAR(100) AFTER `loginpagename`",
                "ALTER TABLE `mdl_quizaccess_seb_quizsettings`\n    ADD COLUMN `allowcapturecamera` TINYINT(1) AFTER `muteonstartup`,\n    ADD COLUMN `allowcapturemicrophone` TINYINT(1) AFTER `allowcapturecamera`",
            ]
        );
        // And back: the index and columns go again.
        let down = upgrade(&to, &from, "mdl_");
        assert_eq!(down.len(), 3);
        assert!(
            down[0].contains("DROP INDEX `mdl_coursect_comite_ix`"),
            "{down:?}"
        );
        assert!(down[1].contains("DROP COLUMN `systememail`"), "{down:?}");
    }

    #[test]
    fn upgrade_creates_drops_and_modifies() {
        let from = moodle_450();
        let mut to = from.clone();
        let mut t = to.tables.remove("forum_posts").expect("forum_posts");
        t.name = "forum_posts2".into();
        to.tables.insert(t.name.clone(), t);
        let d = to
            .tables
            .get_mut("forum_discussions")
            .expect("forum_discussions");
        d.fields.iter_mut().for_each(|f| {
            if f.name == "name" {
                f.length = Some(333);
            }
        });
        d.primary_key = vec!["id".into()];
        let sql = upgrade(&from, &to, "mdl_");
        assert_eq!(sql.len(), 3, "{sql:?}");
        assert_eq!(
            sql[0],
            "ALTER TABLE `mdl_forum_discussions`\n    MODIFY COLUMN `name` VARCHAR(333) NOT NULL DEFAULT ''"
        );
        assert!(
            sql[1].starts_with("CREATE TABLE `mdl_forum_posts2`"),
            "{}",
            sql[1]
        );
        assert_eq!(sql[2], "DROP TABLE `mdl_forum_posts`");
    }
}
