//! The XMLDB reader: one `install.xml` into [`Table`]s.
//!
//! Event-based (not serde) so that every error can name the line, and so that unknown structure inside a
//! table is rejected while unknown siblings of `<TABLES>` (old `<STATEMENTS>` blocks, anything a later
//! Moodle adds at that level) are skipped: what the sync engine relies on is named explicitly.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::sync::schema::{Field, FieldKind, ForeignKey, Index, Key, KeyKind, Table};

/// Parses one XMLDB file. `path` is only used in error messages (and as the tables' `file`).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Table>> {
    Parser {
        path,
        text,
        component: String::new(),
        tables: Vec::new(),
        current: None,
        seen: std::cell::Cell::new((0, 1)),
    }
    .run()
}

struct Parser<'a> {
    path: &'a Path,
    text: &'a str,
    component: String,
    tables: Vec<Table>,
    current: Option<(Table, usize)>,
    /// (byte position, its line) of the last `line_at`.
    seen: std::cell::Cell<(usize, usize)>,
}

impl Parser<'_> {
    /// The 1-based line of byte `pos`. Positions mostly grow, so the count continues from the last one
    /// (counting from the start every time is quadratic on lib/db/install.xml's 400 KB).
    fn line_at(&self, pos: u64) -> usize {
        let end = usize::try_from(pos)
            .unwrap_or(usize::MAX)
            .min(self.text.len());
        let (from, base) = match self.seen.get() {
            (p, l) if p <= end => (p, l),
            _ => (0, 1),
        };
        let line = base
            + self.text.as_bytes()[from..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
        self.seen.set((end, line));
        line
    }

    fn err(&self, line: usize, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}:{}: {}", self.path.display(), line, message)
    }

    fn run(mut self) -> Result<Vec<Table>> {
        let mut reader = Reader::from_str(self.text);
        reader.config_mut().trim_text(true);
        let mut stack: Vec<String> = Vec::new();
        let mut seen_root = false;
        loop {
            let event = match reader.read_event() {
                Ok(e) => e,
                Err(e) => {
                    let line = self.line_at(reader.error_position());
                    return Err(self.err(line, format!("malformed XML: {e}")));
                }
            };
            let line = self.line_at(reader.buffer_position());
            match event {
                Event::Start(e) | Event::Empty(e) if stack.is_empty() && seen_root => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    return Err(self.err(line, format!("a second root element <{name}>")));
                }
                Event::Start(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let parent = stack.last().map(String::as_str);
                    if self.element(parent, &name, &e, line)? {
                        seen_root = true;
                        stack.push(name);
                    } else {
                        // An unknown sibling of <TABLES>: skip its whole subtree.
                        reader
                            .read_to_end(e.name())
                            .map_err(|err| self.err(line, format!("malformed XML: {err}")))?;
                    }
                }
                Event::Empty(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let parent = stack.last().map(String::as_str);
                    self.element(parent, &name, &e, line)?;
                    seen_root = true;
                    if name == "TABLE" {
                        self.finish_table()?;
                    }
                }
                Event::End(e) => {
                    stack.pop();
                    if e.name().as_ref() == b"TABLE" {
                        self.finish_table()?;
                    }
                }
                Event::Text(t) if !t.iter().all(u8::is_ascii_whitespace) => {
                    return Err(self.err(line, "unexpected text between elements"));
                }
                Event::Eof => break,
                // Declarations, comments, processing instructions, CDATA and doctypes carry nothing here.
                _ => {}
            }
        }
        if let Some(open) = stack.last() {
            let line = self.line_at(self.text.len() as u64);
            return Err(self.err(line, format!("the file ends inside <{open}>")));
        }
        if !seen_root {
            bail!(
                "{}: not an XMLDB file (no <XMLDB> element)",
                self.path.display()
            );
        }
        Ok(self.tables)
    }

    /// Handles an opening (or empty) element. Returns false for an element to be skipped.
    fn element(
        &mut self,
        parent: Option<&str>,
        name: &str,
        e: &BytesStart,
        line: usize,
    ) -> Result<bool> {
        let attrs = self.attributes(e, line)?;
        match (parent, name) {
            (None, "XMLDB") => {
                self.component = attrs.get("PATH").cloned().unwrap_or_default();
            }
            (None, other) => {
                return Err(self.err(
                    line,
                    format!("not an XMLDB file: the root element is <{other}>, not <XMLDB>"),
                ))
            }
            (Some("XMLDB"), "TABLES") => {}
            (Some("XMLDB"), _) => return Ok(false),
            (Some("TABLES"), "TABLE") => {
                let table_name = self.required(&attrs, "NAME", "TABLE", line)?;
                if !is_identifier(&table_name) {
                    return Err(self.err(line, format!("bad table name '{table_name}'")));
                }
                let table = Table {
                    name: table_name,
                    component: self.component.clone(),
                    file: self.path.to_owned(),
                    comment: attrs.get("COMMENT").cloned().unwrap_or_default(),
                    fields: Vec::new(),
                    primary_key: Vec::new(),
                    unique_keys: Vec::new(),
                    indexes: Vec::new(),
                    foreign_keys: Vec::new(),
                    keys: Vec::new(),
                };
                self.current = Some((table, line));
            }
            (Some("TABLE"), "FIELDS" | "KEYS" | "INDEXES") => {}
            (Some("FIELDS"), "FIELD") => {
                let field = self.field(&attrs, line)?;
                let (table, _) = self.table_mut(line)?;
                if table.field(&field.name).is_some() {
                    let msg = format!("table '{}': field '{}' twice", table.name, field.name);
                    return Err(self.err(line, msg));
                }
                table.fields.push(field);
            }
            (Some("KEYS"), "KEY") => self.key(&attrs, line)?,
            (Some("INDEXES"), "INDEX") => {
                let index = Index {
                    name: self.required(&attrs, "NAME", "INDEX", line)?,
                    fields: self.field_list(&attrs, "FIELDS", "INDEX", line)?,
                    unique: self.flag(&attrs, "UNIQUE", line)?,
                };
                let (table, _) = self.table_mut(line)?;
                if index.unique {
                    table.unique_keys.push(index.fields.clone());
                }
                table.indexes.push(index);
            }
            (Some(parent), other) => {
                return Err(self.err(line, format!("unexpected <{other}> inside <{parent}>")))
            }
        }
        Ok(true)
    }

    fn table_mut(&mut self, line: usize) -> Result<&mut (Table, usize)> {
        let path = self.path.display().to_string();
        self.current
            .as_mut()
            .ok_or_else(|| anyhow!("{path}:{line}: element outside a <TABLE>"))
    }

    fn field(&self, attrs: &BTreeMap<String, String>, line: usize) -> Result<Field> {
        let name = self.required(attrs, "NAME", "FIELD", line)?;
        let what = |m: String| self.err(line, format!("field '{name}': {m}"));
        if !is_identifier(&name) {
            return Err(what("bad field name".into()));
        }
        let type_name = self.required(attrs, "TYPE", "FIELD", line)?;
        let kind = FieldKind::parse(&type_name).ok_or_else(|| {
            what(format!(
                "unknown TYPE '{type_name}' (expected int, number, float, char, text or binary)"
            ))
        })?;
        let number = |key: &str| -> Result<Option<u32>> {
            match attrs.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| what(format!("{key}=\"{v}\" is not a whole number"))),
            }
        };
        let default = attrs.get("DEFAULT").cloned();
        if let Some(d) = &default {
            // Numeric defaults go into the DDL unquoted: accept only plain numbers.
            let ok = match kind {
                FieldKind::Int => d.parse::<i64>().is_ok(),
                FieldKind::Number | FieldKind::Float => {
                    d.parse::<f64>().is_ok()
                        && d.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
                }
                _ => true,
            };
            if !ok {
                return Err(what(format!(
                    "DEFAULT=\"{d}\" is not a number, as TYPE '{type_name}' needs"
                )));
            }
        }
        Ok(Field {
            length: number("LENGTH")?,
            decimals: number("DECIMALS")?,
            not_null: self.flag(attrs, "NOTNULL", line)?,
            sequence: self.flag(attrs, "SEQUENCE", line)?,
            default,
            kind,
            name,
        })
    }

    fn key(&mut self, attrs: &BTreeMap<String, String>, line: usize) -> Result<()> {
        let name = self.required(attrs, "NAME", "KEY", line)?;
        let type_name = self.required(attrs, "TYPE", "KEY", line)?;
        let kind = match type_name.as_str() {
            "primary" => KeyKind::Primary,
            "unique" => KeyKind::Unique,
            "foreign" => KeyKind::Foreign,
            "foreign-unique" => KeyKind::ForeignUnique,
            other => {
                return Err(self.err(
                    line,
                    format!("key '{name}': unknown TYPE '{other}' (expected primary, unique, foreign or foreign-unique)"),
                ))
            }
        };
        let fields = self.field_list(attrs, "FIELDS", "KEY", line)?;
        let foreign = if matches!(kind, KeyKind::Foreign | KeyKind::ForeignUnique) {
            let ref_table = self.required(attrs, "REFTABLE", "KEY", line)?;
            let ref_fields = self.field_list(attrs, "REFFIELDS", "KEY", line)?;
            if ref_fields.len() != fields.len() {
                return Err(self.err(
                    line,
                    format!(
                        "key '{name}': {} FIELDS but {} REFFIELDS",
                        fields.len(),
                        ref_fields.len()
                    ),
                ));
            }
            Some(ForeignKey {
                name: name.clone(),
                fields: fields.clone(),
                ref_table,
                ref_fields,
                unique: kind == KeyKind::ForeignUnique,
            })
        } else {
            None
        };
        let (table, _) = self.table_mut(line)?;
        match kind {
            KeyKind::Primary => {
                if !table.primary_key.is_empty() {
                    let msg = format!("table '{}': a second primary key '{name}'", table.name);
                    return Err(self.err(line, msg));
                }
                table.primary_key = fields.clone();
            }
            KeyKind::Unique | KeyKind::ForeignUnique => table.unique_keys.push(fields.clone()),
            KeyKind::Foreign => {}
        }
        table.foreign_keys.extend(foreign);
        table.keys.push(Key { name, kind, fields });
        Ok(())
    }

    /// Checks a completed table: every key and index names its own fields, one primary key, and a
    /// sequence only on that key.
    fn finish_table(&mut self) -> Result<()> {
        let Some((mut table, line)) = self.current.take() else {
            return Ok(());
        };
        // One list per unique column set, in declaration order (a key and an index may repeat each other).
        let mut seen = Vec::new();
        table.unique_keys.retain(|k| {
            let fresh = !seen.contains(k);
            seen.push(k.clone());
            fresh
        });
        let fail = |m: String| self.err(line, format!("table '{}': {m}", table.name));
        if table.fields.is_empty() {
            return Err(fail("no fields".into()));
        }
        if table.primary_key.is_empty() {
            return Err(fail("no primary key".into()));
        }
        let lists = table
            .keys
            .iter()
            .map(|k| (&k.name, &k.fields))
            .chain(table.indexes.iter().map(|i| (&i.name, &i.fields)));
        for (what, fields) in lists {
            if let Some(missing) = fields.iter().find(|f| table.field(f).is_none()) {
                return Err(fail(format!(
                    "key or index '{what}' names unknown field '{missing}'"
                )));
            }
        }
        for f in table.fields.iter().filter(|f| f.sequence) {
            if table.primary_key != [f.name.clone()] {
                return Err(fail(format!(
                    "field '{}' is a SEQUENCE but not the whole primary key",
                    f.name
                )));
            }
        }
        if self.tables.iter().any(|t| t.name == table.name) {
            return Err(fail("defined twice in this file".into()));
        }
        self.tables.push(table);
        Ok(())
    }

    fn attributes(&self, e: &BytesStart, line: usize) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for attr in e.attributes() {
            let attr = attr.map_err(|err| self.err(line, format!("bad attribute: {err}")))?;
            let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
            let value = attr
                .unescape_value()
                .map_err(|err| self.err(line, format!("bad value of {key}: {err}")))?;
            out.insert(key, value.into_owned());
        }
        Ok(out)
    }

    fn required(
        &self,
        attrs: &BTreeMap<String, String>,
        key: &str,
        element: &str,
        line: usize,
    ) -> Result<String> {
        match attrs.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(v) => Ok(v.to_owned()),
            None => Err(self.err(line, format!("<{element}> needs attribute {key}"))),
        }
    }

    fn flag(&self, attrs: &BTreeMap<String, String>, key: &str, line: usize) -> Result<bool> {
        match attrs.get(key).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(self.err(
                line,
                format!("{key}=\"{other}\": expected \"true\" or \"false\""),
            )),
        }
    }

    fn field_list(
        &self,
        attrs: &BTreeMap<String, String>,
        key: &str,
        element: &str,
        line: usize,
    ) -> Result<Vec<String>> {
        let list: Vec<String> = self
            .required(attrs, key, element, line)?
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        if list.iter().any(|f| !is_identifier(f)) {
            return Err(self.err(
                line,
                format!("{key}=\"{}\" is not a list of field names", list.join(",")),
            ));
        }
        Ok(list)
    }
}

/// Table and field names go into DDL quoted with backticks; XMLDB allows only these characters anyway.
fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
