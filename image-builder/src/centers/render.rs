//! A new center config in the layout of `board-configs/example-center.ini`: the same sections, keys and
//! comments, with this center's values, checked against the center schema before it is written.

use std::path::Path;

use anyhow::{bail, Context, Result};
use appliance::center::{Center, SCHEMA};
use appliance::ini::Document;

/// The documented example; its first comment paragraph is replaced by `HEADER`.
const TEMPLATE: &str = include_str!("../../../board-configs/example-center.ini");

const HEADER: &str = "\
; Center config, made by `image-builder center new`. Edit it on any computer; check it with
; `image-builder center check FILE`. Every key is documented here; unknown keys are rejected.
";

/// `(section, key, value)` triples to set; every other key keeps the example's value.
pub type Values<'a> = [(&'a str, &'a str, String)];

/// The text of a center config holding `values`, and the center it describes. `path` only names the file
/// in error messages.
pub fn center_ini(path: &Path, values: &Values) -> Result<(String, Center)> {
    for (section, key, value) in values {
        if value.chars().any(char::is_control) || value.trim() != value {
            bail!("[{section}] {key}: the value must be one line without leading or trailing blanks, got {value:?}");
        }
    }
    let mut text = String::from(HEADER);
    let mut used = vec![false; values.len()];
    let mut section = "";
    let body = TEMPLATE
        .split_once("\n\n")
        .map_or(TEMPLATE, |(_, rest)| rest);
    text.push('\n');
    for line in body.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name;
        }
        let key = trimmed
            .split_once('=')
            .filter(|_| !trimmed.starts_with(';'))
            .map(|(k, _)| k.trim());
        match key.and_then(|k| {
            values
                .iter()
                .position(|(s, name, _)| *s == section && *name == k)
        }) {
            Some(i) => {
                used[i] = true;
                let (_, name, value) = &values[i];
                text.push_str(&format!("{name} = {value}\n"));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        bail!(
            "example-center.ini has no key '{}' in section [{}] to fill in",
            values[i].1,
            values[i].0
        );
    }
    let doc = Document::parse(path, &text, SCHEMA)?;
    let center = Center::from_document(&doc)?;
    for (section, key, value) in values {
        if doc.get(section, key) != value {
            bail!("[{section}] {key}: the value {value:?} does not survive being written as INI");
        }
    }
    Ok((text, center))
}

/// Writes `text` to a new file (never over an existing one), readable by its owner only: it holds the
/// Wi-Fi passphrase.
pub fn write_new(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(channel: &str) -> Vec<(&'static str, &'static str, String)> {
        vec![
            ("center", "id", "dsm".into()),
            ("center", "name", "Dar es Salaam".into()),
            ("wifi", "passphrase", "abcdefghij0123456789".into()),
            ("wifi", "channel", channel.into()),
            ("sync", "site_id", "5".into()),
        ]
    }

    #[test]
    fn keeps_the_examples_layout_and_comments() {
        let (text, center) = center_ini(Path::new("dsm.ini"), &values("11")).unwrap();
        assert_eq!(
            (center.id.as_str(), center.site_id, center.channel),
            ("dsm", 5, 11)
        );
        assert_eq!(center.passphrase.as_deref(), Some("abcdefghij0123456789"));
        assert_eq!(
            center.ssid, "Kituo-Example",
            "untouched keys keep the example's value"
        );
        assert!(text.starts_with("; Center config, made by `image-builder center new`"));
        let comments = |t: &str| t.lines().filter(|l| l.starts_with(';')).count();
        assert_eq!(comments(&text), comments(TEMPLATE));
        assert_eq!(text.lines().count(), TEMPLATE.lines().count());
        assert!(text.contains("; This site's number, from 2"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = center_ini(Path::new("dsm.ini"), &values("14"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dsm.ini:") && e.contains("key 'channel' in section [wifi]"),
            "{e}"
        );
        let mut v = values("6");
        v[1].2 = "two\nlines".into();
        let e = center_ini(Path::new("dsm.ini"), &v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[center] name: the value must be one line"),
            "{e}"
        );
        let mut v = values("6");
        v.push(("wifi", "no_such_key", "x".into()));
        assert!(center_ini(Path::new("dsm.ini"), &v).is_err());
    }

    #[test]
    fn write_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ini");
        write_new(&path, "a").unwrap();
        let e = format!("{:#}", write_new(&path, "b").unwrap_err());
        assert!(e.contains("cannot create"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a");
    }
}
