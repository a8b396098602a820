//! `appliance center apply`: at first boot, the `center.ini` that `image-builder flash --center` put on
//! the boot partition becomes this card's configuration, so one image serves many centers. Everything
//! is read, checked and rendered in memory first: a malformed or invalid file changes nothing (the card
//! keeps its current, reachable configuration) and its error is recorded for the status page. Files are
//! written only when their bytes change, so running again with the same file changes nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::center::{Center, SCHEMA};
use crate::commission::{context, render, secrets};
use crate::ini::Document;

/// Where the flash step writes the center config (the boot partition, mounted by fstab).
pub const CENTER_FILE: &str = "boot/firmware/center.ini";
/// The card's own secrets, on the data partition (they survive root slot updates).
pub const SECRETS_FILE: &str = "data/kituo/secrets.ini";
/// The same, relative to the data partition's root (where the builder stages it).
pub const SECRETS_ON_DATA: &str = "kituo/secrets.ini";
/// What the last run did, for the status page.
pub const RECORD_FILE: &str = "data/kituo/center.json";
const ZONEINFO: &str = "usr/share/zoneinfo";
const SECRETS_HEADER: &str =
    "Secrets of this card, made by `appliance center apply` or the image builder. Keep private.";

/// The record in `/data/kituo/center.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The center this card is configured for (the last valid center config).
    pub center_id: Option<String>,
    /// The center config file, as seen on the card.
    pub source: String,
    /// sha256 of the last valid center config applied.
    pub sha256: Option<String>,
    /// The files the last valid center config changed (kept while later runs change nothing).
    pub changed: Vec<String>,
    /// Why the center config on the boot partition was not applied, naming file, line and key.
    pub error: Option<String>,
}

impl Record {
    pub fn load(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// What a run did.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// No center config on the boot partition.
    NoFile,
    /// Applied: the files that changed (empty: it was applied already).
    Applied(Vec<String>),
    /// Not applied; recorded.
    Invalid(String),
}

/// The files a valid center config renders to, computed before anything is written.
struct Plan {
    center: Center,
    secrets: secrets::File,
    files: Vec<(PathBuf, String)>,
    localtime: PathBuf,
}

/// Applies `<root>/boot/firmware/center.ini` to the root filesystem under `root` (`/` on a card).
pub fn run(root: &Path) -> Result<Outcome> {
    let source = root.join(CENTER_FILE);
    let record_path = root.join(RECORD_FILE);
    let previous = Record::load(&record_path).unwrap_or_default();
    if !source.exists() {
        // Nothing to apply; but an error about a file that is gone would stay on the page for ever.
        if previous.error.is_some() {
            save_record(
                &record_path,
                &Record {
                    error: None,
                    ..previous
                },
            )?;
        }
        return Ok(Outcome::NoFile);
    }
    let display = Path::new("/").join(CENTER_FILE).display().to_string();
    let plan = match plan(root, &source) {
        Ok(plan) => plan,
        Err(e) => {
            let error = format!("{e:#}");
            let record = Record {
                source: display,
                error: Some(error.clone()),
                ..previous
            };
            save_record(&record_path, &record)?;
            return Ok(Outcome::Invalid(error));
        }
    };
    let secrets_path = root.join(SECRETS_FILE);
    if secrets::File::load(&secrets_path)? != plan.secrets {
        plan.secrets.save(&secrets_path, SECRETS_HEADER)?;
    }
    let mut changed = Vec::new();
    for (rel, text) in &plan.files {
        if render::write_if_changed(&root.join(rel), text.as_bytes())? {
            changed.push(format!("/{}", rel.display()));
        }
    }
    if set_localtime(root, &plan.localtime)? {
        changed.push("/etc/localtime".to_owned());
    }
    let sha256 = hex::encode(Sha256::digest(
        std::fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?,
    ));
    let same = previous.sha256.as_deref() == Some(sha256.as_str());
    let record = Record {
        center_id: Some(plan.center.id.clone()),
        source: display,
        changed: if changed.is_empty() && same {
            previous.changed
        } else {
            changed.clone()
        },
        sha256: Some(sha256),
        error: None,
    };
    save_record(&record_path, &record)?;
    Ok(Outcome::Applied(changed))
}

fn plan(root: &Path, source: &Path) -> Result<Plan> {
    let doc = Document::load(source, SCHEMA)?;
    let center = Center::from_document(&doc)?;
    let zone = Path::new(ZONEINFO).join(&center.timezone);
    let known = !center.timezone.is_empty()
        && !center
            .timezone
            .split('/')
            .any(|p| p.is_empty() || p == "..")
        && root.join(&zone).is_file();
    if !known {
        return Err(doc
            .error(
                "center",
                "timezone",
                format!("unknown time zone '{}'", center.timezone),
            )
            .into());
    }
    let secrets = card_secrets(&root.join(SECRETS_FILE), &center)?;
    let image_path = root.join(render::IMAGE_CONTEXT);
    let image: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&image_path)
            .with_context(|| format!("cannot read {}", image_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", image_path.display()))?;
    let context = context::merge(context::center_half(&center, &secrets.values), image);
    let env = render::environment();
    let mut files = Vec::new();
    for (template, rel) in render::templates(&root.join(render::TEMPLATES))? {
        files.push((rel, render::render(&env, &template, &context)?));
    }
    anyhow::ensure!(
        !files.is_empty(),
        "the image has no templates in /{}",
        render::TEMPLATES
    );
    Ok(Plan {
        center,
        secrets,
        files,
        localtime: Path::new("/").join(zone),
    })
}

/// The card's secrets for `center`: kept while they belong to it (the image's own, or an earlier
/// run's), fresh for another center, so cards flashed from one shared image share no secret.
fn card_secrets(path: &Path, center: &Center) -> Result<secrets::File> {
    let mut file = secrets::File::load(path)?;
    if file.center.as_deref() != Some(center.id.as_str()) {
        file = secrets::File {
            center: Some(center.id.clone()),
            ..Default::default()
        };
    }
    secrets::fill_missing(&mut file.values);
    file.take_from_config(center);
    Ok(file)
}

/// Points /etc/localtime at the zone (as Debian does: a symlink); returns whether it changed.
fn set_localtime(root: &Path, target: &Path) -> Result<bool> {
    let link = root.join("etc/localtime");
    if std::fs::read_link(&link).ok().as_deref() == Some(target) {
        return Ok(false);
    }
    let tmp = root.join("etc/.localtime.kituo-new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .with_context(|| format!("cannot point {} at {}", link.display(), target.display()))?;
    Ok(true)
}

fn save_record(path: &Path, record: &Record) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(record)? + "\n";
    render::write_if_changed(path, text.as_bytes())?;
    Ok(())
}
