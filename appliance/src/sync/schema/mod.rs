//! Moodle's own schema knowledge: every plugin's `db/install.xml` (XMLDB) read into one [`Schema`], and the
//! MariaDB DDL we generate from it ([`ddl`]).
//!
//! The sync engine needs, per table, the primary key, the unique keys (to merge rows two sites created
//! independently) and the foreign keys (to remap ids when such rows merge). Moodle declares all of that in
//! XMLDB, so the rules are derived from it instead of being written table by table.

pub mod ddl;
pub mod groups;
pub mod identity;
pub mod plugins;
pub mod references;
pub mod rules;
pub mod xmldb;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Every table of one Moodle installation, by name without the site's prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
    /// The `install.xml` files read, relative to the Moodle directory, in the order Moodle's installer
    /// reads them (see [`plugins`]; sorted by path for a folder of XMLDB files only).
    pub files: Vec<PathBuf>,
    /// Table names in the order the installer creates them: the files' order, then each file's.
    pub order: Vec<String>,
}

/// One XMLDB table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    /// The XMLDB `PATH` of the file that defines it, e.g. `mod/forum/db`.
    pub component: String,
    /// That file, relative to the Moodle directory (or as given).
    pub file: PathBuf,
    pub comment: String,
    pub fields: Vec<Field>,
    pub primary_key: Vec<String>,
    /// From KEY TYPE="unique"/"foreign-unique" and INDEX UNIQUE="true", in file order (keys first).
    pub unique_keys: Vec<Vec<String>>,
    /// The INDEX elements only; keys become indexes in [`ddl::install_indexes`].
    pub indexes: Vec<Index>,
    /// KEY TYPE="foreign" and "foreign-unique".
    pub foreign_keys: Vec<ForeignKey>,
    /// KEY TYPE="unique" (needed by the DDL, which turns them into unique indexes in key order).
    pub keys: Vec<Key>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Int,
    Number,
    Float,
    Char,
    Text,
    Binary,
}

impl FieldKind {
    pub fn parse(s: &str) -> Option<FieldKind> {
        Some(match s {
            "int" => FieldKind::Int,
            "number" => FieldKind::Number,
            "float" => FieldKind::Float,
            "char" => FieldKind::Char,
            "text" => FieldKind::Text,
            "binary" => FieldKind::Binary,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    pub length: Option<u32>,
    pub decimals: Option<u32>,
    pub not_null: bool,
    pub sequence: bool,
    /// As written in XMLDB (checked to be a number for numeric kinds).
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub name: String,
    pub fields: Vec<String>,
    pub unique: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Primary,
    Unique,
    Foreign,
    ForeignUnique,
}

/// A KEY element as declared, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub kind: KeyKind,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    pub fields: Vec<String>,
    pub ref_table: String,
    pub ref_fields: Vec<String>,
    pub unique: bool,
}

impl Table {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The primary key column when it is a single integer column: the only shape the sync engine's id
    /// handling (per-site auto-increment offsets) works with.
    pub fn single_int_primary_key(&self) -> Option<&str> {
        match self.primary_key.as_slice() {
            [only] => self
                .field(only)
                .filter(|f| f.kind == FieldKind::Int)
                .map(|f| f.name.as_str()),
            _ => None,
        }
    }
}

impl Schema {
    /// Reads every `db/install.xml` below a Moodle directory (the source tree or an installed copy).
    pub fn load_moodle_dir(dir: &Path) -> Result<Schema> {
        let files = match plugins::install_files(dir)? {
            Some(files) => files,
            None => {
                let mut files = Vec::new();
                find_install_files(dir, dir, &mut files).with_context(|| {
                    format!("cannot list the XMLDB files under {}", dir.display())
                })?;
                files.sort();
                files
            }
        };
        if files.is_empty() {
            bail!(
                "no db/install.xml below {}: is this a Moodle directory?",
                dir.display()
            );
        }
        let mut schema = Schema::default();
        for rel in files {
            let path = dir.join(&rel);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let tables = xmldb::parse(&path, &text)?;
            schema.add_file(rel, tables)?;
        }
        Ok(schema)
    }

    /// Adds the tables of one parsed file (its `file` fields are set to `rel`).
    pub fn add_file(&mut self, rel: PathBuf, tables: Vec<Table>) -> Result<()> {
        for mut table in tables {
            if let Some(other) = self.tables.get(&table.name) {
                bail!(
                    "table '{}' is defined twice: in {} and in {}",
                    table.name,
                    other.file.display(),
                    rel.display()
                );
            }
            table.file = rel.clone();
            self.order.push(table.name.clone());
            self.tables.insert(table.name.clone(), table);
        }
        self.files.push(rel);
        Ok(())
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }
}

/// Collects `…/db/install.xml` paths relative to `root`. Symlinked folders are not followed (no loops), and
/// folders that never hold plugins (VCS data, JavaScript dependencies, tests with their fixtures) are
/// skipped.
fn find_install_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        let name = entry.file_name();
        let path = entry.path();
        if kind.is_dir() {
            if name == ".git" || name == "node_modules" || name == "tests" {
                continue;
            }
            find_install_files(root, &path, out)?;
        } else if kind.is_file()
            && name == "install.xml"
            && dir.file_name().is_some_and(|d| d == "db")
        {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_owned();
            out.push(rel);
        }
    }
    Ok(())
}

pub use ddl::{create_tables, upgrade};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const MOODLE_450: &str = "/work/shared/moodle-schema/4.5.0";
    pub const MOODLE_455: &str = "/work/shared/moodle-schema/4.5.5plus";

    pub fn moodle_450() -> Schema {
        match Schema::load_moodle_dir(Path::new(MOODLE_450)) {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        }
    }

    const ONE_TABLE: &str = r#"<?xml version="1.0" encoding="UTF-8" ?>
<XMLDB PATH="mod/demo/db" VERSION="1">
  <TABLES>
    <TABLE NAME="demo" COMMENT="a &quot;demo&quot;">
      <FIELDS>
        <FIELD NAME="id" TYPE="int" LENGTH="10" NOTNULL="true" SEQUENCE="true"/>
        <FIELD NAME="name" TYPE="char" LENGTH="40" NOTNULL="true" DEFAULT="it's" SEQUENCE="false"/>
      </FIELDS>
      <KEYS>
        <KEY NAME="primary" TYPE="primary" FIELDS="id"/>
      </KEYS>
    </TABLE>
  </TABLES>
</XMLDB>
"#;

    fn parse(text: &str) -> Result<Vec<Table>> {
        xmldb::parse(Path::new("mod/demo/db/install.xml"), text)
    }

    #[test]
    fn moodle_450_has_86_files_and_494_tables() {
        let s = moodle_450();
        assert_eq!(s.files.len(), 86);
        assert_eq!(s.tables.len(), 494);
        assert!(s.files.contains(&PathBuf::from("lib/db/install.xml")));
        let core = s
            .tables
            .values()
            .filter(|t| t.component == "lib/db")
            .count();
        assert_eq!(core, 254, "the README counts 254 core tables");
        // Every Moodle table has an integer id primary key (what the per-site offsets rely on).
        for t in s.tables.values() {
            assert_eq!(t.single_int_primary_key(), Some("id"), "{}", t.name);
        }
    }

    #[test]
    fn forum_posts_fields_and_keys() {
        let s = moodle_450();
        let t = s.table("forum_posts").expect("forum_posts");
        assert_eq!(t.component, "mod/forum/db");
        assert_eq!(t.file, PathBuf::from("mod/forum/db/install.xml"));
        assert_eq!(t.fields.len(), 18);
        let id = t.field("id").expect("id");
        assert!(id.sequence && id.not_null && id.kind == FieldKind::Int && id.length == Some(10));
        let subject = t.field("subject").expect("subject");
        assert_eq!((subject.kind, subject.length), (FieldKind::Char, Some(255)));
        assert_eq!(subject.default, None);
        let message = t.field("message").expect("message");
        assert_eq!(message.kind, FieldKind::Text);
        let wordcount = t.field("wordcount").expect("wordcount");
        assert!(!wordcount.not_null);
        assert_eq!(
            t.field("mailed").and_then(|f| f.default.clone()),
            Some("0".into())
        );
        assert_eq!(t.primary_key, ["id"]);
        let fks: Vec<(Vec<String>, &str)> = t
            .foreign_keys
            .iter()
            .map(|k| (k.fields.clone(), k.ref_table.as_str()))
            .collect();
        assert_eq!(
            fks,
            [
                (vec!["discussion".to_string()], "forum_discussions"),
                (vec!["parent".to_string()], "forum_posts"),
            ]
        );
        assert!(t.unique_keys.is_empty());
        assert!(t
            .indexes
            .iter()
            .any(|i| i.fields == ["userid"] && !i.unique));
    }

    #[test]
    fn grade_grades_is_unique_per_item_and_user() {
        let s = moodle_450();
        let t = s.table("grade_grades").expect("grade_grades");
        let mut keys: Vec<Vec<String>> = t.unique_keys.clone();
        for k in &mut keys {
            k.sort();
        }
        assert_eq!(keys, [vec!["itemid".to_string(), "userid".to_string()]]);
        // Unique INDEXes count too: context is unique on (contextlevel, instanceid).
        let context = s.table("context").expect("context");
        assert!(context
            .unique_keys
            .contains(&vec!["contextlevel".to_string(), "instanceid".to_string()]));
    }

    #[test]
    fn entities_and_defaults_are_read() {
        let tables = parse(ONE_TABLE).expect("parses");
        assert_eq!(tables[0].comment, "a \"demo\"");
        assert_eq!(tables[0].fields[1].default.as_deref(), Some("it's"));
    }

    #[test]
    fn malformed_xml_names_file_and_line() {
        let broken = ONE_TABLE.replace("</FIELDS>", "</FIELDZ>");
        let e = format!("{:#}", parse(&broken).unwrap_err());
        assert!(
            e.starts_with("mod/demo/db/install.xml:8: malformed XML"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_type_names_file_line_and_field() {
        let bad = ONE_TABLE.replace("TYPE=\"char\"", "TYPE=\"datetime\"");
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert_eq!(
            e,
            "mod/demo/db/install.xml:7: field 'name': unknown TYPE 'datetime' (expected int, number, float, char, text or binary)"
        );
    }

    #[test]
    fn structural_errors_are_named() {
        let cases = [
            (
                ONE_TABLE.replace(
                    " NAME=\"primary\" TYPE=\"primary\" FIELDS=\"id\"",
                    " NAME=\"primary\" TYPE=\"primary\" FIELDS=\"nid\"",
                ),
                "names unknown field 'nid'",
            ),
            (
                ONE_TABLE.replace("<KEY NAME=\"primary\" TYPE=\"primary\" FIELDS=\"id\"/>", ""),
                "no primary key",
            ),
            (
                ONE_TABLE.replace("NOTNULL=\"true\" DEFAULT=\"it's\"", "NOTNULL=\"yes\""),
                "NOTNULL=\"yes\"",
            ),
            (
                ONE_TABLE.replace(
                    "TYPE=\"int\" LENGTH=\"10\" NOTNULL=\"true\" SEQUENCE=\"true\"",
                    "TYPE=\"int\" LENGTH=\"10\" DEFAULT=\"x\" SEQUENCE=\"true\"",
                ),
                "DEFAULT=\"x\" is not a number",
            ),
            (
                ONE_TABLE.replace("<FIELDS>", "<FIELDS><BOGUS/>"),
                "unexpected <BOGUS> inside <FIELDS>",
            ),
            ("<nope/>".to_string(), "not an XMLDB file"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(
                e.contains(want) && e.starts_with("mod/demo/db/install.xml"),
                "{e}"
            );
        }
    }

    #[test]
    fn load_names_the_bad_file_and_a_table_defined_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["mod/a/db", "mod/b/db"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
            std::fs::write(dir.path().join(sub).join("install.xml"), ONE_TABLE).expect("write");
        }
        let e = format!("{:#}", Schema::load_moodle_dir(dir.path()).unwrap_err());
        assert_eq!(
            e,
            "table 'demo' is defined twice: in mod/a/db/install.xml and in mod/b/db/install.xml"
        );
        std::fs::write(dir.path().join("mod/b/db/install.xml"), "<XMLDB><TABLES>").expect("write");
        let e = format!("{:#}", Schema::load_moodle_dir(dir.path()).unwrap_err());
        assert!(
            e.contains("mod/b/db/install.xml:1: the file ends inside <TABLES>"),
            "{e}"
        );
        let empty = tempfile::tempdir().expect("tempdir");
        let e = format!("{:#}", Schema::load_moodle_dir(empty.path()).unwrap_err());
        assert!(e.contains("no db/install.xml"), "{e}");
    }
}
