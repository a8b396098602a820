//! The package lock: every .deb an image may contain, with version, size, sha256 and where it came from.
//! A build installs exactly these files (served from the builder's own package cache), so it repeats
//! even after the mirror has moved on; `image-builder lock` refreshes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Locked {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub size: u64,
    pub sha256: String,
    pub url: String,
}

impl Locked {
    /// The file name apt and dpkg use, with the epoch's ':' encoded.
    pub fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub suite: String,
    pub arch: String,
    pub source_date_epoch: u64,
    /// Keyed by package name: a lock holds one version of each.
    pub packages: BTreeMap<String, Locked>,
    pub path: PathBuf,
}

const HEADER: &str =
    "# Kituo package lock, written by `image-builder lock`: do not edit by hand.\n";

impl Lock {
    pub fn path_for(locks_dir: &Path, suite: &str, arch: &str) -> PathBuf {
        locks_dir.join(format!("{suite}-{arch}.lock"))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the package lock {}\nhint: run `image-builder lock`",
                path.display()
            )
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut fields = BTreeMap::new();
        let mut packages = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), i + 1);
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((key, value)) = line.split_once(": ") {
                fields.insert(key.to_owned(), value.trim().to_owned());
                continue;
            }
            let cols: Vec<_> = line.split_whitespace().collect();
            let [name, version, arch, size, sha256, url] = cols[..] else {
                bail!(
                    "{}: expected 'name version arch size sha256 url', got '{line}'",
                    at()
                );
            };
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("{}: '{sha256}' is not a sha256", at());
            }
            let size = size
                .parse()
                .with_context(|| format!("{}: bad size '{size}'", at()))?;
            let locked = Locked {
                name: name.into(),
                version: version.into(),
                arch: arch.into(),
                size,
                sha256: sha256.into(),
                url: url.into(),
            };
            if packages.insert(name.to_owned(), locked).is_some() {
                bail!("{}: package {name} is locked twice", at());
            }
        }
        let field = |key: &str| {
            fields
                .get(key)
                .cloned()
                .with_context(|| format!("{}: missing header '{key}: ...'", path.display()))
        };
        Ok(Lock {
            suite: field("suite")?,
            arch: field("arch")?,
            source_date_epoch: field("source-date-epoch")?
                .parse()
                .with_context(|| format!("{}: bad source-date-epoch", path.display()))?,
            packages,
            path: path.to_owned(),
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::from(HEADER);
        let _ = writeln!(
            out,
            "suite: {}\narch: {}\nsource-date-epoch: {}",
            self.suite, self.arch, self.source_date_epoch
        );
        out.push_str("# name version arch size sha256 url\n");
        for p in self.packages.values() {
            let _ = writeln!(
                out,
                "{} {} {} {} {} {}",
                p.name, p.version, p.arch, p.size, p.sha256, p.url
            );
        }
        out
    }

    pub fn save(&self) -> Result<()> {
        std::fs::write(&self.path, self.render())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// A digest of the lock's content: the cache key of everything built from these packages.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.render().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        let mut packages = BTreeMap::new();
        packages.insert(
            "wpasupplicant".to_owned(),
            Locked {
                name: "wpasupplicant".into(),
                version: "2:2.10-24".into(),
                arch: "arm64".into(),
                size: 1311872,
                sha256: "a".repeat(64),
                url: "http://deb.debian.org/debian/pool/main/w/wpa/wpasupplicant_2.10-24_arm64.deb"
                    .into(),
            },
        );
        Lock {
            suite: "trixie".into(),
            arch: "arm64".into(),
            source_date_epoch: 1_760_000_000,
            packages,
            path: "x.lock".into(),
        }
    }

    #[test]
    fn round_trips() {
        let lock = sample();
        assert_eq!(
            Lock::parse(Path::new("x.lock"), &lock.render()).unwrap(),
            lock
        );
        assert_eq!(
            lock.packages["wpasupplicant"].file_name(),
            "wpasupplicant_2%3a2.10-24_arm64.deb"
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let text = sample().render().replace(&"a".repeat(64), "nothex");
        let e = Lock::parse(Path::new("x.lock"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.lock:6:") && e.contains("not a sha256"),
            "{e}"
        );
    }
}
