//! The manifest written beside every image: what is inside and where it came from.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::apt::parse_stanzas;
use crate::disk::Layout;
use crate::lockfile::Lock;

#[derive(Debug, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub name: String,
    pub build_id: String,
    pub board: String,
    pub arch: String,
    pub center_id: String,
    /// sha256 of the center config file as given.
    pub center_config_sha256: String,
    pub source_date_epoch: u64,
    pub lock: LockInfo,
    pub appliance: Appliance,
    pub image: ImageInfo,
    pub partition_table: Layout,
    /// What the bootloader area holds (boards booting through U-Boot); left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootloader: Vec<BootloaderPiece>,
    /// The Moodle release in /var/www/moodle; left out for an image without Moodle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moodle: Option<crate::moodle::Release>,
    pub packages: Vec<Package>,
}

#[derive(Debug, Serialize)]
pub struct BootloaderPiece {
    pub name: String,
    pub sector: u64,
    pub bytes: u64,
    /// sha256 of the bytes written (not of the source file or .deb).
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct LockInfo {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Appliance {
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct ImageInfo {
    pub file: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub mapped_bytes: u64,
    pub compressed_file: String,
    pub compressed_bytes: u64,
}

/// The packages dpkg says are installed in `root`, each with the sha256 of its locked .deb.
pub fn installed_packages(root: &Path, lock: &Lock) -> Result<Vec<Package>> {
    let status = root.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&status)
        .with_context(|| format!("cannot read {}", status.display()))?;
    let mut out = Vec::new();
    for s in parse_stanzas(&text) {
        if !s.get("Status").is_some_and(|st| st.ends_with(" installed")) {
            continue;
        }
        let name = s.get("Package").cloned().unwrap_or_default();
        let version = s.get("Version").cloned().unwrap_or_default();
        let locked = lock
            .packages
            .get(&name)
            .filter(|l| l.version == version)
            .with_context(|| {
                format!(
                    "{name} {version} is installed but not in the lock {}",
                    lock.path.display()
                )
            })?;
        out.push(Package {
            arch: locked.arch.clone(),
            sha256: locked.sha256.clone(),
            name,
            version,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
