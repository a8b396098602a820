//! The `db/install.xml` files of a Moodle code tree in the order Moodle's installer reads them: core's
//! first, then every plugin type in `core_component`'s order (lib/components.json, then the subplugin
//! types that mod, editor, tool and local plugins declare in `db/subplugins.json`), each type's plugins
//! by name. The order matters because Moodle names indexes across the whole install (a name already
//! taken gets a counter), so only this order gives the index names Moodle's installer gives.
//!
//! Only real plugin folders count: a `db/install.xml` under `tests/` (a fixture) is no plugin.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Folders `core_component` never takes for plugins.
const IGNORED: &[&str] = &[
    "CVS",
    "_vti_cnf",
    "amd",
    "classes",
    "db",
    "fonts",
    "lang",
    "pix",
    "simpletest",
    "templates",
    "tests",
    "yui",
];

/// Plugin types whose plugins may declare subplugin types (local's come last).
const WITH_SUBPLUGINS: &[&str] = &["mod", "editor", "tool"];

/// A JSON object's entries in the order written (Moodle's PHP reads them so).
#[derive(Default)]
struct Ordered(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[derive(Deserialize)]
struct Components {
    plugintypes: Ordered,
    #[serde(default)]
    subsystems: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Subplugins {
    #[serde(default)]
    plugintypes: Ordered,
}

/// The install files under `dir` in Moodle's install order, relative to `dir`; `None` when `dir` is not
/// a Moodle code tree (no lib/components.json: e.g. a folder holding only the XMLDB files).
pub fn install_files(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let components_file = dir.join("lib/components.json");
    if !components_file.is_file() {
        return Ok(None);
    }
    let components: Components = read_json(&components_file)?;
    let mut types = components.plugintypes.0;
    for owner in WITH_SUBPLUGINS.iter().chain(["local"].iter()) {
        let Some(owner_dir) = folder_of(&types, owner) else {
            continue;
        };
        for plugin in plugins(dir, owner, &owner_dir)? {
            let declared = dir
                .join(&owner_dir)
                .join(&plugin)
                .join("db/subplugins.json");
            if !declared.is_file() {
                continue;
            }
            let subplugins: Subplugins = read_json(&declared)?;
            for (subtype, subdir) in subplugins.plugintypes.0 {
                let valid = subtype.starts_with(|c: char| c.is_ascii_lowercase())
                    && subtype
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
                let taken = types.iter().any(|(t, _)| *t == subtype)
                    || components.subsystems.contains_key(&subtype);
                if valid && !taken && dir.join(&subdir).is_dir() {
                    types.push((subtype, subdir));
                }
            }
        }
    }
    let mut files = vec![PathBuf::from("lib/db/install.xml")];
    for (kind, folder) in &types {
        for plugin in plugins(dir, kind, folder)? {
            let file = Path::new(folder).join(plugin).join("db/install.xml");
            if dir.join(&file).is_file() {
                files.push(file);
            }
        }
    }
    Ok(Some(files))
}

fn folder_of(types: &[(String, String)], kind: &str) -> Option<String> {
    types
        .iter()
        .find(|(t, _)| t == kind)
        .map(|(_, d)| d.clone())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not Moodle's JSON", path.display()))
}

/// The plugins of type `kind` in `folder` (relative to `dir`), sorted by name, as `core_component`
/// finds them: sub-folders with a valid plugin name.
fn plugins(dir: &Path, kind: &str, folder: &str) -> Result<Vec<String>> {
    let full = dir.join(folder);
    let Ok(entries) = std::fs::read_dir(&full) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", full.display()))?;
        if !entry.path().is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // auth/db is a plugin despite its name.
        let ignored = IGNORED.contains(&name.as_str()) && !(kind == "auth" && name == "db");
        if !ignored && valid_name(kind, &name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `core_component::is_valid_plugin_name`: activity modules take no underscores; other plugins may, but
/// not two in a row, and end in a letter or digit.
fn valid_name(kind: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let starts = name.starts_with(|c: char| c.is_ascii_lowercase());
    if kind == "mod" {
        return starts && name.chars().all(word);
    }
    starts
        && name.len() >= 2
        && name.chars().all(|c| word(c) || c == '_')
        && !name.contains("__")
        && name.ends_with(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_follow_core_component() {
        assert!(valid_name("mod", "forum"));
        assert!(!valid_name("mod", "forum_x"));
        assert!(valid_name("tool", "log_x"));
        assert!(!valid_name("tool", "log__x"));
        assert!(!valid_name("tool", "log_"));
        assert!(!valid_name("tool", "Log"));
        assert!(!valid_name("block", "a"));
    }

    #[test]
    fn order_is_core_then_types_then_subplugin_types() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |rel: &str, text: &str| {
            let p = d.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "lib/components.json",
            r#"{"plugintypes": {"qtype": "question/type", "mod": "mod", "block": "blocks"},
                "subsystems": {"grades": "grade"}}"#,
        );
        write("lib/db/install.xml", "");
        write("mod/zoo/db/install.xml", "");
        write("mod/assign/db/install.xml", "");
        write(
            "mod/assign/db/subplugins.json",
            r#"{"plugintypes": {"assignsubmission": "mod/assign/submission", "grades": "mod/assign/x"}}"#,
        );
        write("mod/assign/submission/file/db/install.xml", "");
        write("mod/assign/tests/fixtures/db/install.xml", "");
        write("blocks/html/db/install.xml", "");
        write("question/type/essay/db/install.xml", "");
        let files = install_files(d).unwrap().unwrap();
        let files: Vec<_> = files.iter().map(|f| f.to_str().unwrap()).collect();
        assert_eq!(
            files,
            [
                "lib/db/install.xml",
                "question/type/essay/db/install.xml",
                "mod/assign/db/install.xml",
                "mod/zoo/db/install.xml",
                "blocks/html/db/install.xml",
                "mod/assign/submission/file/db/install.xml",
            ]
        );
        assert!(install_files(&d.join("lib")).unwrap().is_none());
    }
}
