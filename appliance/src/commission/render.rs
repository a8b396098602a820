//! Overlay templates (`*.tmpl`): the engine both the builder and the card render them with, the copy
//! of the root filesystem's templates kept in the image for first boot, and writing a rendered file
//! only when its bytes change.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Where the image keeps its root filesystem templates, at their path plus `.tmpl`.
pub const TEMPLATES: &str = "usr/share/kituo/templates";
/// The image half of the template context.
pub const IMAGE_CONTEXT: &str = "usr/share/kituo/image.json";
pub const SUFFIX: &str = ".tmpl";

/// Strict: an unknown variable is an error, never an empty string in a config file.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

pub fn render(env: &Environment, template: &Path, context: &Value) -> Result<String> {
    let source = std::fs::read_to_string(template)
        .with_context(|| format!("cannot read template {}", template.display()))?;
    env.render_str(&source, context)
        .with_context(|| format!("cannot render template {}", template.display()))
}

/// The templates under `dir`, sorted, as (template file, path relative to `dir` without the suffix).
pub fn templates(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut found = Vec::new();
    collect(dir, dir, &mut found)?;
    found.sort();
    Ok(found)
}

fn collect(base: &Path, dir: &Path, found: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let kind = std::fs::symlink_metadata(&path)?.file_type();
        if kind.is_dir() {
            collect(base, &path, found)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(base)?;
            if let Some(name) = rel.to_str().and_then(|n| n.strip_suffix(SUFFIX)) {
                found.push((path.clone(), PathBuf::from(name)));
            }
        }
    }
    Ok(())
}

/// Copies the templates of every layer's root filesystem folder (later layers win) into the image's
/// template folder under `root`, so first boot can render them again for another center.
pub fn install_templates(rootfs_layers: &[PathBuf], root: &Path) -> Result<()> {
    for layer in rootfs_layers {
        for (template, rel) in templates(layer)? {
            let dest = root
                .join(TEMPLATES)
                .join(format!("{}{SUFFIX}", rel.display()));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::copy(&template, &dest)
                .with_context(|| format!("cannot copy {}", template.display()))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes` unless it holds them already; returns whether it wrote. The new file
/// keeps the old one's owner and mode (customize.sh set them: secrets are 0600), and replaces it
/// atomically, so a power cut leaves the old file or the new one.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    let old = std::fs::metadata(path).ok();
    if old.is_some() && std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(false);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.kituo-new"));
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Some(old) = &old {
        std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))
            .with_context(|| format!("cannot give {} its owner", tmp.display()))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_variables_fail() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.tmpl");
        std::fs::write(&t, "x={{ wifi.ssid }}\n").unwrap();
        let env = environment();
        assert_eq!(
            render(&env, &t, &json!({"wifi": {"ssid": "K"}})).unwrap(),
            "x=K\n"
        );
        let e = render(&env, &t, &json!({})).unwrap_err();
        assert!(format!("{e:#}").contains("a.tmpl"), "{e:#}");
    }

    #[test]
    fn installed_templates_keep_their_paths_and_later_layers_win() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, root) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("root"),
        );
        for (layer, text) in [(&a, "a"), (&b, "b")] {
            std::fs::create_dir_all(layer.join("etc/x")).unwrap();
            std::fs::write(layer.join("etc/x/f.conf.tmpl"), text).unwrap();
            std::fs::write(layer.join("etc/x/plain"), text).unwrap();
        }
        std::fs::write(a.join("etc/only-a.tmpl"), "A").unwrap();
        install_templates(&[a, b], &root).unwrap();
        let found = templates(&root.join(TEMPLATES)).unwrap();
        let rels: Vec<_> = found.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(
            rels,
            [PathBuf::from("etc/only-a"), PathBuf::from("etc/x/f.conf")]
        );
        assert_eq!(std::fs::read_to_string(&found[1].0).unwrap(), "b");
    }

    #[test]
    fn writes_only_changes_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(write_if_changed(&path, b"new").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!write_if_changed(&path, b"new").unwrap());
        let fresh = dir.path().join("fresh");
        assert!(write_if_changed(&fresh, b"x").unwrap());
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
    }
}
