//! Strict INI documents: every section and key is declared in a schema (with its default and help text),
//! unknown ones are rejected, and every error names the file, the line and the key.
//!
//! `rust-ini` does the parsing; it does not keep line numbers for keys, so a small scan of the text finds
//! them for the error messages.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One key a section may hold.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    /// `None`: the key must be given.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

impl Key {
    pub const fn required(name: &'static str, help: &'static str) -> Self {
        Key {
            name,
            default: None,
            help,
        }
    }
    pub const fn optional(name: &'static str, default: &'static str, help: &'static str) -> Self {
        Key {
            name,
            default: Some(default),
            help,
        }
    }
}

/// One section of a schema. A section with `free_keys` takes any key name (e.g. a file list).
#[derive(Debug, Clone, Copy)]
pub struct Section {
    pub name: &'static str,
    pub keys: &'static [Key],
    pub free_keys: bool,
    pub help: &'static str,
}

pub type Schema = &'static [Section];

/// An error in a configuration file, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    line: usize,
}

/// A parsed and schema-checked INI document.
#[derive(Debug, Clone)]
pub struct Document {
    file: PathBuf,
    schema: Schema,
    sections: BTreeMap<String, (usize, BTreeMap<String, Entry>)>,
}

impl Document {
    pub fn load(path: &Path, schema: Schema) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text, schema)
    }

    pub fn parse(path: &Path, text: &str, schema: Schema) -> Result<Self, ConfigError> {
        // Windows editors (Notepad) start a UTF-8 file with a byte order mark; center.ini is edited anywhere.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let err = |line: Option<usize>, message: String| ConfigError {
            file: path.to_owned(),
            line,
            message,
        };
        // Values are taken literally: a passphrase may hold quotes or backslashes.
        let options = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..Default::default()
        };
        // rust-ini reads a line without '=' as the start of a key that runs on to the next line's '=':
        // catch such lines first, and name them.
        if let Some((line, message)) = first_malformed_line(text) {
            return Err(err(Some(line), message));
        }
        let parsed = ini::Ini::load_from_str_opt(text, options)
            .map_err(|e| err(Some(e.line), e.msg.to_string()))?;
        let lines = locate_keys(text);

        let mut sections = BTreeMap::new();
        for (name, props) in parsed.iter() {
            let Some(name) = name else {
                if let Some((key, _)) = props.iter().next() {
                    let line = lines.get(&(String::new(), key.to_owned())).map(|l| l[0]);
                    return Err(err(
                        line,
                        format!("key '{key}' stands before any [section]"),
                    ));
                }
                continue;
            };
            let header = lines
                .get(&(name.to_owned(), String::new()))
                .map_or(0, |l| l[0]);
            let Some(spec) = schema.iter().find(|s| s.name == name) else {
                let known: Vec<_> = schema.iter().map(|s| format!("[{}]", s.name)).collect();
                return Err(err(
                    Some(header),
                    format!(
                        "unknown section [{name}]; known sections: {}",
                        known.join(", ")
                    ),
                ));
            };
            if sections.contains_key(name) {
                return Err(err(
                    Some(header),
                    format!("section [{name}] is given twice"),
                ));
            }
            let mut entries = BTreeMap::new();
            for (key, value) in props.iter() {
                let at = lines
                    .get(&(name.to_owned(), key.to_owned()))
                    .cloned()
                    .unwrap_or_default();
                let line = at.first().copied();
                if !spec.free_keys && !spec.keys.iter().any(|k| k.name == key) {
                    return Err(err(
                        line,
                        format!("invalid key '{key}' in section [{name}]"),
                    ));
                }
                if at.len() > 1 {
                    return Err(err(
                        Some(at[1]),
                        format!(
                            "key '{key}' in section [{name}] is given twice (first on line {})",
                            at[0]
                        ),
                    ));
                }
                entries.insert(
                    key.to_owned(),
                    Entry {
                        value: value.trim().to_owned(),
                        line: line.unwrap_or(header),
                    },
                );
            }
            sections.insert(name.to_owned(), (header, entries));
        }

        let doc = Document {
            file: path.to_owned(),
            schema,
            sections,
        };
        for spec in schema {
            for key in spec.keys.iter().filter(|k| k.default.is_none()) {
                if doc
                    .entry(spec.name, key.name)
                    .is_none_or(|e| e.value.is_empty())
                {
                    let line = doc
                        .entry(spec.name, key.name)
                        .map(|e| e.line)
                        .or(doc.header(spec.name));
                    return Err(err(
                        line,
                        format!(
                            "section [{}] needs key '{}' ({})",
                            spec.name, key.name, key.help
                        ),
                    ));
                }
            }
        }
        Ok(doc)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    fn entry(&self, section: &str, key: &str) -> Option<&Entry> {
        self.sections
            .get(section)
            .and_then(|(_, keys)| keys.get(key))
    }

    fn header(&self, section: &str) -> Option<usize> {
        self.sections.get(section).map(|(line, _)| *line)
    }

    /// An error about `key` in `section`, pointing at its line (or the section's, or none).
    pub fn error(&self, section: &str, key: &str, message: impl fmt::Display) -> ConfigError {
        let line = self
            .entry(section, key)
            .map(|e| e.line)
            .or(self.header(section));
        ConfigError {
            file: self.file.clone(),
            line,
            message: format!("key '{key}' in section [{section}]: {message}"),
        }
    }

    /// The value of a declared key, or its default.
    pub fn get(&self, section: &str, key: &str) -> &str {
        if let Some(entry) = self.entry(section, key) {
            return &entry.value;
        }
        self.schema
            .iter()
            .find(|s| s.name == section)
            .and_then(|s| s.keys.iter().find(|k| k.name == key))
            .and_then(|k| k.default)
            .unwrap_or_else(|| panic!("schema has no key [{section}] {key}: a programming error"))
    }

    /// A value parsed as `T`, with an error naming the line when it does not parse.
    pub fn parse_as<T: FromStr>(
        &self,
        section: &str,
        key: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let value = self.get(section, key);
        value
            .parse()
            .map_err(|_| self.error(section, key, format!("expected {expected}, got '{value}'")))
    }

    /// An integer within `range`.
    pub fn int_in(
        &self,
        section: &str,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        let n: u64 = self.parse_as(section, key, &expected)?;
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(self.error(section, key, format!("expected {expected}, got {n}")))
        }
    }

    /// One of a fixed set of words.
    pub fn one_of(
        &self,
        section: &str,
        key: &str,
        choices: &[&str],
    ) -> Result<String, ConfigError> {
        let value = self.get(section, key);
        if choices.contains(&value) {
            Ok(value.to_owned())
        } else {
            Err(self.error(
                section,
                key,
                format!("expected one of {}, got '{value}'", choices.join(", ")),
            ))
        }
    }

    /// A comma-separated list; empty items are dropped.
    pub fn list(&self, section: &str, key: &str) -> Vec<String> {
        split_list(self.get(section, key))
    }

    /// Every key and value of a free-keyed section, with their lines, in file order.
    pub fn free_entries(&self, section: &str) -> Vec<(String, String, usize)> {
        let mut out: Vec<_> = self
            .sections
            .get(section)
            .map(|(_, keys)| {
                keys.iter()
                    .map(|(k, e)| (k.clone(), e.value.clone(), e.line))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|(_, _, line)| *line);
        out
    }

    /// Every value with defaults filled in, as section -> key -> value (for templates and digests).
    pub fn to_map(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for spec in self.schema {
            let mut keys: BTreeMap<String, String> = spec
                .keys
                .iter()
                .map(|k| (k.name.to_owned(), self.get(spec.name, k.name).to_owned()))
                .collect();
            if spec.free_keys {
                keys.extend(
                    self.free_entries(spec.name)
                        .into_iter()
                        .map(|(k, v, _)| (k, v)),
                );
            }
            out.insert(spec.name.to_owned(), keys);
        }
        out
    }
}

pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Lines of every `[section]` header (key "") and `key = value` line, by (section, key); 1-based.
fn locate_keys(text: &str) -> BTreeMap<(String, String), Vec<usize>> {
    let mut out: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            section = rest.split(']').next().unwrap_or_default().trim().to_owned();
            out.entry((section.clone(), String::new()))
                .or_default()
                .push(i + 1);
        } else if let Some((key, _)) = line.split_once(['=', ':']) {
            out.entry((section.clone(), key.trim().to_owned()))
                .or_default()
                .push(i + 1);
        }
    }
    out
}

fn first_malformed_line(text: &str) -> Option<(usize, String)> {
    text.lines().enumerate().find_map(|(i, raw)| {
        let line = raw.trim();
        let fine = line.is_empty()
            || line.starts_with(';')
            || line.starts_with('#')
            || (line.starts_with('[') && line.ends_with(']'))
            || (!line.starts_with('[') && line.contains(['=', ':']));
        (!fine).then(|| {
            (
                i + 1,
                format!("expected '[section]' or 'key = value', got '{line}'"),
            )
        })
    })
}

/// Renders a schema as an annotated example file: the documentation of every key.
pub fn describe(schema: Schema) -> String {
    let mut out = String::new();
    for section in schema {
        out.push_str(&format!("[{}]\n; {}\n", section.name, section.help));
        for key in section.keys {
            out.push_str(&format!("; {}\n", key.help));
            match key.default {
                Some(default) => out.push_str(&format!("{} = {}\n", key.name, default)),
                None => out.push_str(&format!("{} = (required)\n", key.name)),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: Schema = &[
        Section {
            name: "wifi",
            keys: &[
                Key::required("ssid", "network name"),
                Key::optional("channel", "6", "2.4 GHz channel"),
            ],
            free_keys: false,
            help: "access point",
        },
        Section {
            name: "files",
            keys: &[],
            free_keys: true,
            help: "free",
        },
    ];

    fn parse(text: &str) -> Result<Document, ConfigError> {
        Document::parse(Path::new("c.ini"), text, SCHEMA)
    }

    #[test]
    fn reads_values_and_defaults() {
        let doc = parse("[wifi]\nssid = Kituo\n").unwrap();
        assert_eq!(doc.get("wifi", "ssid"), "Kituo");
        assert_eq!(doc.int_in("wifi", "channel", 1..=13).unwrap(), 6);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("; comment\n[wifi]\nssid = a\nchanel = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.ini:4: invalid key 'chanel' in section [wifi]"
        );
    }

    #[test]
    fn unknown_section_is_rejected() {
        let e = parse("[wifi]\nssid=a\n\n[wfi]\nx=1\n").unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("unknown section [wfi]"), "{e}");
    }

    #[test]
    fn missing_required_key_points_at_section() {
        let e = parse("\n[wifi]\nchannel = 3\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("needs key 'ssid'"), "{e}");
    }

    #[test]
    fn bad_value_names_line_and_expectation() {
        let doc = parse("[wifi]\nssid = a\nchannel = 99\n").unwrap();
        let e = doc.int_in("wifi", "channel", 1..=13).unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.ini:3: key 'channel' in section [wifi]: expected a whole number from 1 to 13, got 99"
        );
        let doc = parse("[wifi]\nssid = a\nchannel = six\n").unwrap();
        assert!(doc
            .int_in("wifi", "channel", 1..=13)
            .unwrap_err()
            .to_string()
            .contains("got 'six'"));
    }

    #[test]
    fn duplicate_key_is_rejected() {
        let e = parse("[wifi]\nssid = a\nssid = b\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("given twice (first on line 2)"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("[wifi]\nssid = a\n[broken\nchannel = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.ini:3: expected '[section]' or 'key = value', got '[broken'"
        );
        let e = parse("[wifi]\njust words\nssid = a\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn free_sections_keep_file_order() {
        let doc = parse("[wifi]\nssid=a\n[files]\nz = 1\na = 2\n").unwrap();
        let keys: Vec<_> = doc
            .free_entries("files")
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
        assert_eq!(keys, ["z", "a"]);
    }
}
