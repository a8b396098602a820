//! `appliance config set|unset|show`: the technician's local overrides of the card's settings, and the
//! settings the supervisor reads with where each came from. A change is checked together with
//! center.ini before the override file is written, then rendered into appliance.ini at once.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::apply::{self, Outcome, CENTER_FILE};
use super::secrets;
use crate::center;
use crate::config::{self, local};
use crate::ini::Document;

/// Sets `section.key` to `value` (`None`: removes the override) in the card's local overrides under
/// `root`, and renders the card's files again.
pub fn set(root: &Path, name: &str, value: Option<&str>) -> Result<Outcome> {
    let (section, key) = split_name(name)?;
    let path = root.join(local::FILE);
    let mut layer = local::load(&path)?;
    match value {
        Some(value) => {
            layer
                .entry(section.to_owned())
                .or_default()
                .insert(key.to_owned(), value.trim().to_owned());
        }
        None => {
            if let Some(keys) = layer.get_mut(section) {
                keys.remove(key);
            }
        }
    }
    let text = local::to_text(&path, &layer)?;
    let Some(source) = apply::source(root) else {
        bail!("this card has no center config (/{CENTER_FILE}): nothing to lay the override over");
    };
    apply::plan(root, &source, &layer).context("refusing the override: nothing was changed")?;
    secrets::write_private(&path, text.as_bytes())?;
    apply::run(root)
}

/// `power.low_charge_percent` as (`power`, `low_charge_percent`), a key the overrides may hold.
fn split_name(name: &str) -> Result<(&str, &str)> {
    let known = || {
        let mut all = Vec::new();
        for s in local::SCHEMA {
            all.extend(s.keys.iter().map(|k| format!("{}.{}", s.name, k.name)));
        }
        all.join(", ")
    };
    let Some((section, key)) = name.split_once('.') else {
        bail!("name a setting as section.key, e.g. power.low_charge_percent");
    };
    let declared = local::SCHEMA
        .iter()
        .find(|s| s.name == section)
        .is_some_and(|s| s.keys.iter().any(|k| k.name == key));
    if !declared {
        bail!(
            "'{name}' cannot be overridden on the card; these can: {}",
            known()
        );
    }
    Ok((section, key))
}

/// Every setting of appliance.ini under `root`, with where its value came from: `local` (the card's
/// overrides), `center.ini`, `image` (the image's appliance.ini) or `default`.
pub fn show(root: &Path) -> Result<String> {
    let ini = root.join(apply::APPLIANCE_INI);
    let doc = Document::load(&ini, config::SCHEMA)?;
    let overrides = local::load(&root.join(local::FILE))?;
    let center = match apply::source(root) {
        Some(source) => local::given(&Document::load(&source, center::SCHEMA)?),
        None => local::Layer::new(),
    };
    let mut out = String::new();
    for section in config::SCHEMA {
        let written = doc.free_entries(section.name);
        let _ = writeln!(out, "[{}]", section.name);
        for key in section.keys {
            let value = doc.get(section.name, key.name);
            let from = |layer: &local::Layer| layer.get(section.name)?.get(key.name).cloned();
            let origin = match (from(&overrides), from(&center)) {
                (Some(v), _) => layered("local", &v, value),
                (None, Some(v)) => layered("center.ini", &v, value),
                _ if written.iter().any(|(k, _, _)| k == key.name) => "image".to_owned(),
                _ => "default".to_owned(),
            };
            let _ = writeln!(out, "{} = {value}    ; {origin}", key.name);
        }
    }
    Ok(out)
}

/// The origin of a layered value, and whether appliance.ini holds it yet.
fn layered(origin: &str, wanted: &str, rendered: &str) -> String {
    if wanted == rendered {
        origin.to_owned()
    } else {
        format!("{origin} says '{wanted}': not applied yet (`appliance center apply`)")
    }
}
