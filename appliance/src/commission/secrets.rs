//! Per-center secrets (database passwords, the Wi-Fi passphrase when the center config leaves it empty,
//! the sync secret with the hub): generated at random, never a default, kept root-only (0600). The
//! builder keeps them per center in its state directory; a card keeps its own in `/data/kituo`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::distributions::{Alphanumeric, DistString};

use crate::center::Center;

/// The secrets every center has, and their length.
pub const NAMES: &[(&str, usize)] = &[
    ("moodle_db_password", 32),
    ("kituo_db_password", 32),
    // Moodle's `admin` account, set by the first-boot install (kituo-moodle-install).
    ("moodle_admin_password", 24),
    ("wifi_passphrase", 20),
    // The center's sync secret with the hub: 32 random bytes as hex, the form `appliance` reads.
    ("sync_secret", 64),
    // upsd's one user (upsd.users), for NUT's own tools; reading the UPS needs no login.
    ("nut_password", 24),
];

/// A fresh value for the secret `name`, of its usual length (`center new` uses it for the Wi-Fi passphrase).
pub fn fresh(name: &str) -> Option<String> {
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, len)| generate(n, *len))
}

fn generate(name: &str, len: usize) -> String {
    if name.ends_with("_secret") {
        let mut bytes = vec![0u8; len / 2];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        hex::encode(bytes)
    } else {
        Alphanumeric.sample_string(&mut rand::rngs::OsRng, len)
    }
}

/// Generates every secret that is missing or too short to be one (a file from an older version);
/// returns whether anything was added.
pub fn fill_missing(values: &mut BTreeMap<String, String>) -> bool {
    let mut changed = false;
    for (name, len) in NAMES {
        if values.get(*name).is_none_or(|v| v.len() < 8) {
            values.insert((*name).to_owned(), generate(name, *len));
            changed = true;
        }
    }
    changed
}

/// A secrets file: `[secrets]` name = value, and on a card `[card] center` = the center they belong to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct File {
    pub center: Option<String>,
    pub values: BTreeMap<String, String>,
}

impl File {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let ini = ini::Ini::load_from_file(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let values = ini
            .section(Some("secrets"))
            .map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let center = ini
            .section(Some("card"))
            .and_then(|s| s.get("center"))
            .map(str::to_owned);
        Ok(Self { center, values })
    }

    /// Takes the secrets the center config itself holds: the hub's registered sync secret wins over a
    /// generated one.
    pub fn take_from_config(&mut self, center: &Center) {
        if let Some(secret) = &center.sync_secret {
            self.values.insert("sync_secret".into(), secret.clone());
        }
    }

    pub fn to_text(&self, header: &str) -> Result<String> {
        let mut text = format!("; {header}\n");
        if let Some(center) = &self.center {
            text.push_str(&format!("[card]\ncenter = {center}\n"));
        }
        text.push_str("[secrets]\n");
        for (k, v) in &self.values {
            if v.contains('\n') {
                bail!("secret {k} holds a line break");
            }
            text.push_str(&format!("{k} = {v}\n"));
        }
        Ok(text)
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, path: &Path, header: &str) -> Result<()> {
        write_private(path, self.to_text(header)?.as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file created 0600, then renamed over it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn every_secret_generated_distinct_and_of_its_length() {
        let mut values = BTreeMap::new();
        assert!(fill_missing(&mut values));
        assert!(!fill_missing(&mut values));
        for (name, len) in NAMES {
            assert_eq!(values[*name].len(), *len, "{name}");
        }
        assert!(hex::decode(&values["sync_secret"]).is_ok());
        assert_ne!(values["moodle_db_password"], values["kituo_db_password"]);
        assert_eq!(fresh("wifi_passphrase").map(|p| p.len()), Some(20));
        assert_ne!(fresh("wifi_passphrase"), fresh("wifi_passphrase"));
        assert!(fresh("no_such_secret").is_none());
    }

    #[test]
    fn file_round_trips_with_its_center_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.ini");
        let mut file = File {
            center: Some("dsm".into()),
            ..Default::default()
        };
        fill_missing(&mut file.values);
        file.save(&path, "test").unwrap();
        assert_eq!(File::load(&path).unwrap(), file);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            File::load(&dir.path().join("none")).unwrap(),
            File::default()
        );
    }
}
