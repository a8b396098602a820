//! Overlays: layers of files applied to the unpacked root filesystem in a fixed order (common, board
//! family, board), `.tmpl` files rendered from the center and board configs, then each layer's
//! `customize.sh` run inside the root filesystem.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use appliance::commission::render;
use minijinja::Environment;
use serde_json::Value;
use walkdir::WalkDir;

use crate::board::Board;
use crate::tools::run;

/// The layer directories of a board, in the order they apply; missing ones are skipped.
pub fn layers(overlays: &Path, board: &Board) -> Vec<PathBuf> {
    [
        overlays.join("common"),
        overlays.join(&board.family),
        overlays.join(&board.name),
    ]
    .into_iter()
    .filter(|p| p.is_dir())
    .collect()
}

pub fn package_lists(layers: &[PathBuf]) -> Vec<PathBuf> {
    layers.iter().map(|l| l.join("packages.list")).collect()
}

/// Copies every layer's `rootfs/` into `root` and `boot/` into `boot`, rendering templates.
pub fn apply(layers: &[PathBuf], context: &Value, root: &Path, boot: &Path) -> Result<()> {
    let env = render::environment();
    for layer in layers {
        copy_tree(&env, context, &layer.join("rootfs"), root)?;
        copy_tree(&env, context, &layer.join("boot"), boot)?;
    }
    Ok(())
}

fn copy_tree(env: &Environment, context: &Value, from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    for entry in WalkDir::new(from).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        let rel = entry.path().strip_prefix(from)?;
        let kind = entry.file_type();
        let mut dest = to.join(rel);
        if kind.is_dir() {
            if !dest.exists() {
                std::fs::create_dir_all(&dest)?;
            }
            continue;
        }
        if dest.symlink_metadata().is_ok() && (kind.is_symlink() || dest.is_symlink()) {
            std::fs::remove_file(&dest)?;
        }
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
            continue;
        }
        let mode = entry.metadata()?.permissions().mode() & 0o755;
        if let Some(name) = rel.to_str().and_then(|n| n.strip_suffix(".tmpl")) {
            dest = to.join(name);
            let text = render::render(env, entry.path(), context)?;
            std::fs::write(&dest, text)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode | 0o644))?;
    }
    Ok(())
}

/// Runs each layer's `customize.sh` inside `root` (under qemu-user for a foreign architecture), with
/// /proc mounted in a private mount namespace so nothing stays mounted afterwards.
pub fn customize(layers: &[PathBuf], root: &Path, source_date_epoch: u64) -> Result<()> {
    for layer in layers {
        let script = layer.join("customize.sh");
        if !script.exists() {
            continue;
        }
        let inside = root.join("kituo-customize.sh");
        std::fs::copy(&script, &inside)?;
        let result = run(Command::new("unshare")
            .args([
                "--mount",
                "--fork",
                "sh",
                "-c",
                r#"mount -t proc proc "$1/proc" && exec chroot "$1" /bin/sh -eu /kituo-customize.sh"#,
                "sh",
            ])
            .arg(root)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string()));
        std::fs::remove_file(&inside)?;
        result.with_context(|| format!("{} failed", script.display()))?;
    }
    Ok(())
}

/// Copies the board's boot files out of the root filesystem onto the boot partition's staging folder.
pub fn boot_files(board: &Board, root: &Path, boot: &Path) -> Result<()> {
    for file in &board.boot_files {
        let pattern = format!("{}{}", root.display(), file.source);
        let matches: Vec<PathBuf> = glob::glob(&pattern)?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        let at = format!(
            "{}:{}: boot file '{}'",
            board.file.display(),
            file.line,
            file.dest
        );
        if file.dest.ends_with('/') {
            if matches.is_empty() {
                bail!(
                    "{at}: nothing in the root filesystem matches {}",
                    file.source
                );
            }
            let dir = boot.join(file.dest.trim_start_matches('/'));
            std::fs::create_dir_all(&dir)?;
            for m in &matches {
                std::fs::copy(m, dir.join(m.file_name().unwrap_or_default()))?;
            }
        } else {
            let [one] = &matches[..] else {
                bail!(
                    "{at}: expected exactly one file matching {}, found {}",
                    file.source,
                    matches.len()
                );
            };
            let dest = boot.join(&file.dest);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(one, dest)?;
        }
    }
    Ok(())
}

/// Sets every timestamp newer than `epoch` to `epoch`, so file systems built from the tree repeat.
pub fn clamp_mtimes(dir: &Path, epoch: u64) -> Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(epoch as i64, 0);
    for entry in WalkDir::new(dir) {
        let entry = entry?;
        let meta = entry.metadata()?;
        let mtime = std::os::unix::fs::MetadataExt::mtime(&meta);
        if mtime > epoch as i64 || std::os::unix::fs::MetadataExt::atime(&meta) > epoch as i64 {
            utimensat(None, entry.path(), &t, &t, UtimensatFlags::NoFollowSymlink)
                .with_context(|| format!("cannot set the time of {}", entry.path().display()))?;
        }
    }
    Ok(())
}
