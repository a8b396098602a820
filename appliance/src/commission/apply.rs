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
use crate::config::{local, Config};
use crate::ini::Document;

/// Where the flash step writes the center config (the boot partition, mounted by fstab).
pub const CENTER_FILE: &str = "boot/firmware/center.ini";
/// The last center config applied, kept root-only on the data partition (the builder puts the built-for
/// center's there): with no center.ini on the boot partition, the card renders again from it, so the
/// local overrides apply to every card.
pub const KEPT_CENTER_FILE: &str = "data/kituo/center.ini";
/// The same, relative to the data partition's root (where the builder stages it).
pub const KEPT_CENTER_ON_DATA: &str = "kituo/center.ini";
/// appliance.ini, checked as the supervisor reads it before it is written.
pub const APPLIANCE_INI: &str = "etc/kituo/appliance.ini";
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
pub struct Plan {
    center: Center,
    secrets: secrets::File,
    files: Vec<(PathBuf, String)>,
    localtime: PathBuf,
}

/// Applies `<root>/boot/firmware/center.ini` (or the kept copy of the last one) and the local overrides
/// to the root filesystem under `root` (`/` on a card).
pub fn run(root: &Path) -> Result<Outcome> {
    let record_path = root.join(RECORD_FILE);
    let previous = Record::load(&record_path).unwrap_or_default();
    let Some(source) = source(root) else {
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
    };
    let display = Path::new("/")
        .join(source.strip_prefix(root).unwrap_or(&source))
        .display()
        .to_string();
    let planned =
        local::load(&root.join(local::FILE)).and_then(|overrides| plan(root, &source, &overrides));
    let plan = match planned {
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
    let kept = root.join(KEPT_CENTER_FILE);
    let text =
        std::fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
    if source != kept && std::fs::read(&kept).ok().as_deref() != Some(text.as_slice()) {
        secrets::write_private(&kept, &text)?;
    }
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
    let sha256 = hex::encode(Sha256::digest(&text));
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

/// The center config to apply: the boot partition's, else the one applied last.
pub fn source(root: &Path) -> Option<PathBuf> {
    [CENTER_FILE, KEPT_CENTER_FILE]
        .iter()
        .map(|f| root.join(f))
        .find(|p| p.exists())
}

/// Renders the image's templates for the center config in `source`, with the local `overrides` laid
/// over its settings; nothing is written.
pub fn plan(root: &Path, source: &Path, overrides: &local::Layer) -> Result<Plan> {
    let doc = Document::load(source, SCHEMA)?;
    let mut center = Center::from_document(&doc)?;
    center.settings = local::over(&center.settings, overrides);
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
        let text = render::render(&env, &template, &context)?;
        if rel == Path::new(APPLIANCE_INI) {
            // The merged settings can clash where each layer alone was valid (a threshold from
            // center.ini against one from the overrides): refuse them here, not in the supervisor.
            Config::parse(&Path::new("/").join(&rel), &text)
                .context("the settings of center.ini and the local overrides together")?;
        }
        files.push((rel, text));
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
