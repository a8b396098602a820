//! The settings one center gives its card: the status page's and the power watch's. They are keys of
//! center.ini (central IT, before the card leaves) and of a local override file on the data partition
//! (the technician, on the card), with the same names as in appliance.ini. `appliance center apply`
//! renders appliance.ini from the image's defaults, then center.ini, then the local overrides, so a boot
//! or an update that renders again keeps both.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::power::{self, PowerConfig};
use crate::ini::{ConfigError, Document, Key, Schema, Section};

pub const TECHNICIAN_PASSWORD_HASH: Key = Key::optional(
    "technician_password_hash",
    "",
    "Argon2 hash of the technician password (make one with `appliance hash-password`); empty: \
     the page is read-only and offers no actions",
);
pub const REFRESH_SECONDS: Key = Key::optional(
    "refresh_seconds",
    "30",
    "how often the page reloads itself in the technician's browser, 5 to 3600",
);

/// The status page's settings a center may give; where it listens and what it runs stay the image's.
pub const STATUS: Section = Section {
    name: "status",
    help: "The status page.",
    free_keys: false,
    keys: &[TECHNICIAN_PASSWORD_HASH, REFRESH_SECONDS],
};

/// The sections a center.ini and the local overrides may hold.
pub const SCHEMA: Schema = &[
    STATUS,
    power::POWER,
    power::NUT,
    power::SYSFS,
    power::X728,
    power::WAVESHARE,
    power::GPIO,
];

/// The card's local overrides, relative to its root: on /data, which no boot and no update writes.
pub const FILE: &str = "data/kituo/appliance.local.ini";

/// Settings as section -> key -> value.
pub type Layer = BTreeMap<String, BTreeMap<String, String>>;

/// Checks the settings of any document whose schema holds [`SCHEMA`]'s sections (center.ini, the
/// local file, appliance.ini), with what is not given at its default: errors name the file and line.
pub fn check(doc: &Document) -> Result<(), ConfigError> {
    PowerConfig::read(doc)?;
    technician_hash(doc)?;
    doc.int_in("status", "refresh_seconds", 5..=3600)?;
    Ok(())
}

/// `[status] technician_password_hash`, checked: `None` when empty.
pub fn technician_hash(doc: &Document) -> Result<Option<String>, ConfigError> {
    let key = TECHNICIAN_PASSWORD_HASH.name;
    let hash = doc.get("status", key);
    if hash.is_empty() {
        return Ok(None);
    }
    crate::status::auth::check_hash_format(hash).map_err(|e| doc.error("status", key, e))?;
    Ok(Some(hash.to_owned()))
}

/// The keys of [`SCHEMA`]'s sections that `doc` gives (defaults left out).
pub fn given(doc: &Document) -> Layer {
    let mut layer = Layer::new();
    for section in SCHEMA {
        let keys: BTreeMap<_, _> = doc
            .free_entries(section.name)
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect();
        if !keys.is_empty() {
            layer.insert(section.name.to_owned(), keys);
        }
    }
    layer
}

/// `top` laid over `base`.
pub fn over(base: &Layer, top: &Layer) -> Layer {
    let mut out = base.clone();
    for (section, keys) in top {
        out.entry(section.clone())
            .or_default()
            .extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// Every key of [`SCHEMA`]: its default, or what `given` says.
pub fn complete(given: &Layer) -> Layer {
    let defaults = SCHEMA
        .iter()
        .map(|s| {
            let keys = s.keys.iter().map(|k| {
                let value = k.default.unwrap_or_default();
                (k.name.to_owned(), value.to_owned())
            });
            (s.name.to_owned(), keys.collect())
        })
        .collect();
    over(&defaults, given)
}

/// The local overrides in `path`, checked; a missing file is an empty one.
pub fn load(path: &Path) -> Result<Layer> {
    if !path.exists() {
        return Ok(Layer::new());
    }
    let doc = Document::load(path, SCHEMA)?;
    check(&doc)?;
    Ok(given(&doc))
}

/// The text of a local override file holding `layer`, checked as it will be read.
pub fn to_text(path: &Path, layer: &Layer) -> Result<String> {
    let mut text = String::from(
        "; Local overrides of this card (`appliance config set`): laid over center.ini when\n\
         ; appliance.ini is rendered. Keys as in appliance.ini; `appliance config-help` lists them.\n",
    );
    for (section, keys) in layer.iter().filter(|(_, keys)| !keys.is_empty()) {
        text.push_str(&format!("[{section}]\n"));
        for (key, value) in keys {
            anyhow::ensure!(
                !value.contains(['\n', '\r']),
                "[{section}] {key}: a value is one line"
            );
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    let doc = Document::parse(path, &text, SCHEMA)?;
    check(&doc).with_context(|| format!("refusing to write {}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Document, ConfigError> {
        let doc = Document::parse(Path::new("local.ini"), text, SCHEMA)?;
        check(&doc)?;
        Ok(doc)
    }

    #[test]
    fn later_layers_win_and_defaults_fill_the_rest() {
        let center = given(&parse("[power]\nsources = nut\nlow_charge_percent = 30\n").unwrap());
        let local = given(&parse("[power]\nlow_charge_percent = 40\n").unwrap());
        let all = complete(&over(&center, &local));
        assert_eq!(all["power"]["sources"], "nut");
        assert_eq!(all["power"]["low_charge_percent"], "40");
        assert_eq!(all["power"]["poll_seconds"], "2");
        assert_eq!(all["nut"]["driver"], "usbhid-ups");
        assert_eq!(all["status"]["technician_password_hash"], "");
        assert!(!given(&parse("").unwrap()).contains_key("power"));
    }

    #[test]
    fn bad_values_name_their_line() {
        let e = parse("[power]\nsources = nut\nlow_charge_percent = 120\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("'low_charge_percent'"), "{e}");
        let e = parse("[nut]\ndriver = usbhid-ups\nport = /dev/x\"y\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("[status]\ntechnician_password_hash = plain\n").unwrap_err();
        assert!(e.message.contains("technician_password_hash"), "{e}");
        // Where it listens is the image's, not the center's.
        let e = parse("[status]\nlisten = 0.0.0.0:80\n").unwrap_err();
        assert!(e.message.contains("invalid key 'listen'"), "{e}");
    }

    #[test]
    fn written_file_reads_back_and_refuses_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.local.ini");
        let mut layer = Layer::new();
        layer
            .entry("power".into())
            .or_default()
            .insert("low_charge_percent".into(), "35".into());
        std::fs::write(&path, to_text(&path, &layer).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), layer);
        assert!(load(&dir.path().join("none")).unwrap().is_empty());
        layer
            .get_mut("power")
            .unwrap()
            .insert("poll_seconds".into(), "0".into());
        assert!(to_text(&path, &layer).is_err());
    }
}
