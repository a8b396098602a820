//! The Moodle release an image carries: `image-builder build --moodle release.ini` names it (a URL or a
//! local tarball, pinned by sha256). The builder fetches it through the bootloader's verified cache,
//! unpacks it into /var/www/moodle owned by root and read-only for the web server (Moodle's install
//! documentation), and adds the `overlays/moodle` layer: config.php, the first-boot database install and
//! the cron timer. Without `--moodle` the image is built as before, with a placeholder page: nothing on
//! the build machines can download Moodle, so there is no default release.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use appliance::commission::render;
use appliance::ini::{ConfigError, Document, Key, Schema, Section};
use serde::Serialize;
use walkdir::WalkDir;

use crate::bootloader::{self, piece::Source};
use crate::tools::run;

pub const SCHEMA: Schema = &[Section {
    name: "moodle",
    help: "The Moodle release built into the image.",
    free_keys: false,
    keys: &[
        Key::required("version", "the release, e.g. 4.5.3: recorded in the manifest"),
        Key::required(
            "source",
            "the release tarball as download.moodle.org serves it (one top folder, moodle/): an https URL, \
             downloaded once into the builder's cache, or a local path relative to this file",
        ),
        Key::required("sha256", "sha256 of the tarball; the build fails on any other bytes"),
    ],
}];

/// Where the code goes in the root filesystem; nginx's document root.
pub const WEB_ROOT: &str = "var/www/moodle";
/// The overlay layer applied after the board's own when a release is given.
pub const LAYER: &str = "moodle";
/// The placeholder page of an image without Moodle; Moodle's index.php takes its place.
const PLACEHOLDER: &str = "index.html";

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub version: String,
    pub sha256: String,
    #[serde(skip)]
    pub source: Source,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Release {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let doc = Document::load(path, SCHEMA)?;
        let sha256 = doc.get("moodle", "sha256").to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(doc.error("moodle", "sha256", "expected 64 hexadecimal digits"));
        }
        let source = doc.get("moodle", "source");
        let source = if source.starts_with("https://") || source.starts_with("http://") {
            Source::Url(source.to_owned())
        } else {
            Source::Path(source.to_owned())
        };
        Ok(Release {
            version: doc.get("moodle", "version").to_owned(),
            sha256,
            source,
            file: path.to_owned(),
        })
    }

    /// The verified tarball (from the cache, downloaded when missing).
    pub fn fetch(&self, cache: &Path) -> Result<PathBuf> {
        let base = self.file.parent().unwrap_or(Path::new("."));
        bootloader::pinned(&self.source, &self.sha256, base, cache)
            .with_context(|| format!("{}: the Moodle release", self.file.display()))
    }
}

/// Unpacks the release `tarball` into `root`'s web root: owned by root, directories 0755, files 0644
/// (0755 where the tarball marks them executable), so the web server can read but never change the code.
pub fn unpack(tarball: &Path, root: &Path) -> Result<()> {
    let dest = root.join(WEB_ROOT);
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    // GNU tar detects the compression; --strip-components drops the release's top folder (moodle/).
    run(Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(&dest)
        .args([
            "--strip-components=1",
            "--no-same-owner",
            "--no-same-permissions",
        ]))
    .with_context(|| format!("cannot unpack {}", tarball.display()))?;
    ensure!(
        dest.join("version.php").is_file() && dest.join("admin/cli/install_database.php").is_file(),
        "{} is not a Moodle release: it has no moodle/version.php and moodle/admin/cli/install_database.php",
        tarball.display()
    );
    read_only_for_the_web(&dest)
}

fn read_only_for_the_web(dir: &Path) -> Result<()> {
    for entry in WalkDir::new(dir) {
        let entry = entry?;
        let path = entry.path();
        let meta = entry
            .path()
            .symlink_metadata()
            .with_context(|| format!("cannot read {}", path.display()))?;
        std::os::unix::fs::lchown(path, Some(0), Some(0))
            .with_context(|| format!("cannot chown {}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    Ok(())
}

/// Removes the placeholder page, and its template so first boot does not write it again.
pub fn drop_placeholder(root: &Path) -> Result<()> {
    let page = root.join(WEB_ROOT).join(PLACEHOLDER);
    let template = root
        .join(render::TEMPLATES)
        .join(WEB_ROOT)
        .join(format!("{PLACEHOLDER}{}", render::SUFFIX));
    for path in [page, template] {
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn release_ini(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("moodle.ini");
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn a_release_names_its_source_and_pin() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        let path = release_ini(
            dir.path(),
            &format!("[moodle]\nversion = 4.5.3\nsource = https://download.moodle.org/x.tgz\nsha256 = {sha}\n"),
        );
        let r = Release::load(&path).unwrap();
        assert_eq!(r.version, "4.5.3");
        assert_eq!(
            r.source,
            Source::Url("https://download.moodle.org/x.tgz".into())
        );
        let path = release_ini(
            dir.path(),
            &format!("[moodle]\nversion = 4.5.3\nsource = moodle.tgz\nsha256 = {sha}\n"),
        );
        assert_eq!(
            Release::load(&path).unwrap().source,
            Source::Path("moodle.tgz".into())
        );
    }

    #[test]
    fn a_bad_release_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = release_ini(
            dir.path(),
            "[moodle]\nversion = 4.5.3\nsource = m.tgz\nsha256 = 1234\n",
        );
        let e = Release::load(&path).unwrap_err().to_string();
        assert!(e.contains("moodle.ini:4") && e.contains("sha256"), "{e}");
        let path = release_ini(
            dir.path(),
            &format!(
                "[moodle]\nversion = 4.5.3\nsource = m.tgz\nsha256 = {}\nurl = x\n",
                "a".repeat(64)
            ),
        );
        let e = Release::load(&path).unwrap_err().to_string();
        assert!(e.contains("moodle.ini:5") && e.contains("url"), "{e}");
        let path = release_ini(dir.path(), "[moodle]\nversion = 4.5.3\n");
        let e = Release::load(&path).unwrap_err().to_string();
        assert!(e.contains("source"), "{e}");
    }

    #[test]
    fn a_tampered_tarball_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.tgz"), b"not moodle").unwrap();
        let path = release_ini(
            dir.path(),
            &format!(
                "[moodle]\nversion = 4.5.3\nsource = m.tgz\nsha256 = {}\n",
                "a".repeat(64)
            ),
        );
        let e = format!(
            "{:#}",
            Release::load(&path).unwrap().fetch(dir.path()).unwrap_err()
        );
        assert!(
            e.contains("moodle.ini: the Moodle release") && e.contains("pins"),
            "{e}"
        );
    }

    /// A tarball with careless modes (world-writable files and folders, an executable script) comes out
    /// root-owned, 0755/0644, executables kept executable, with the top folder stripped.
    #[test]
    fn unpack_makes_the_code_read_only_for_the_web_server() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src/moodle");
        std::fs::create_dir_all(src.join("admin/cli")).unwrap();
        for (file, mode) in [
            ("version.php", 0o666),
            ("admin/cli/install_database.php", 0o664),
            ("admin/cli/run.sh", 0o777),
        ] {
            std::fs::write(src.join(file), "<?php\n").unwrap();
            std::fs::set_permissions(src.join(file), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::fs::set_permissions(src.join("admin"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let tarball = dir.path().join("moodle.tgz");
        run(Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path().join("src"))
            .arg("--owner=1234")
            .arg("--group=1234")
            .arg("moodle"))
        .unwrap();
        let root = dir.path().join("root");
        unpack(&tarball, &root).unwrap();
        let web = root.join(WEB_ROOT);
        for (rel, want) in [
            ("", 0o755),
            ("admin", 0o755),
            ("admin/cli", 0o755),
            ("version.php", 0o644),
            ("admin/cli/install_database.php", 0o644),
            ("admin/cli/run.sh", 0o755),
        ] {
            let meta = std::fs::metadata(web.join(rel)).unwrap();
            assert_eq!((rel, meta.mode() & 0o7777), (rel, want));
            assert_eq!((rel, meta.uid(), meta.gid()), (rel, 0, 0));
        }
        assert!(!web.join("moodle").exists());

        // Not a Moodle release: refused.
        let other = dir.path().join("other.tgz");
        run(Command::new("tar")
            .arg("-czf")
            .arg(&other)
            .arg("-C")
            .arg(dir.path())
            .arg("root"))
        .unwrap();
        let e = format!("{:#}", unpack(&other, &dir.path().join("r2")).unwrap_err());
        assert!(e.contains("is not a Moodle release"), "{e}");
    }

    #[test]
    fn the_placeholder_page_and_its_template_go() {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join(WEB_ROOT).join("index.html");
        let template = dir
            .path()
            .join(render::TEMPLATES)
            .join(WEB_ROOT)
            .join("index.html.tmpl");
        let health = dir.path().join(WEB_ROOT).join("kituo-health.php");
        for f in [&page, &template, &health] {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, "x").unwrap();
        }
        drop_placeholder(dir.path()).unwrap();
        assert!(!page.exists() && !template.exists() && health.exists());
    }
}
