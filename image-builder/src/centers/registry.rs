//! The centers the builder can see: every center config in a set of folders (`*.ini` that hold a
//! `[center]` section, and `<folder>/<id>/center.ini`, the layout of the builder's state), with the id and
//! site number each one takes. `center new` picks a free site number from it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use appliance::center::Center;

use crate::secrets::Secrets;

/// The `auto_increment_increment` of a new center when no other center is known (the schema's default).
pub const DEFAULT_INCREMENT: u8 = 64;

/// The hub's site number; centers start after it.
pub const HUB_SITE: u8 = 1;

/// One center config found in a folder.
#[derive(Debug, Clone)]
pub struct Known {
    pub path: PathBuf,
    pub center: Center,
}

/// Every center config in `dirs` (missing folders are empty). A file that starts a `[center]` section
/// but does not load is an error: its site number is unknown, so none could be called free.
pub fn scan(dirs: &[PathBuf]) -> Result<Vec<Known>> {
    let mut found = Vec::new();
    for dir in dirs {
        for path in candidates(dir)? {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if !text.lines().any(|l| l.trim() == "[center]") {
                continue; // a board config, or another INI
            }
            let center = Center::load(&path).with_context(|| {
                format!(
                    "{} looks like a center config but is not valid; fix it or move it out of {} \
                     (its site_id must be known before another can be called free)",
                    path.display(),
                    dir.display()
                )
            })?;
            found.push(Known { path, center });
        }
    }
    Ok(found)
}

/// `dir/*.ini` and `dir/*/center.ini`, sorted.
fn candidates(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.is_dir() {
            let inner = path.join("center.ini");
            if inner.is_file() {
                paths.push(inner);
            }
        } else if path.extension().is_some_and(|e| e == "ini") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The step between auto-increment ids that every known center shares (the default when none is known).
pub fn shared_increment(known: &[Known]) -> Result<u8> {
    let Some(first) = known.first() else {
        return Ok(DEFAULT_INCREMENT);
    };
    let increment = first.center.auto_increment_increment;
    if let Some(other) = known
        .iter()
        .find(|k| k.center.auto_increment_increment != increment)
    {
        bail!(
            "the centers disagree on auto_increment_increment: {} in {}, {} in {}; every site must use \
             the same step, so fix one of them first",
            increment,
            first.path.display(),
            other.center.auto_increment_increment,
            other.path.display()
        );
    }
    Ok(increment)
}

/// The lowest site number in 2..increment that is not `taken` (1 is the hub).
pub fn free_site_id(taken: &BTreeSet<u8>, increment: u8) -> Option<u8> {
    (HUB_SITE + 1..increment).find(|site| !taken.contains(site))
}

/// Keeps a copy of a center's config beside its secrets (`<state>/centers/<id>/center.ini`), so that
/// `center new` knows its site_id; `build` and `center new` call it. Replaces an older copy.
pub fn record(state_dir: &Path, id: &str, text: &str) -> Result<PathBuf> {
    let path = Secrets::dir(state_dir, id).join("center.ini");
    appliance::commission::secrets::write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// Centers whose secrets the builder holds without a copy of their config (built before copies were
/// kept): their site_ids are unknown.
pub fn unrecorded(state_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("centers")) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !e.path().join("center.ini").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// The config that already uses `id`, if any.
pub fn with_id<'a>(known: &'a [Known], id: &str) -> Option<&'a Known> {
    known.iter().find(|k| k.center.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn center(id: &str, site: u8, increment: u8) -> String {
        format!(
            "[center]\nid = {id}\nname = N\n[wifi]\nssid = S\n[sync]\nhub_url = https://hub\n\
             site_id = {site}\nauto_increment_increment = {increment}\n"
        )
    }

    #[test]
    fn free_site_skips_the_hub_and_taken_ones() {
        let taken: BTreeSet<u8> = [2, 3, 5].into();
        assert_eq!(free_site_id(&taken, 64), Some(4));
        assert_eq!(free_site_id(&BTreeSet::new(), 64), Some(2));
        let full: BTreeSet<u8> = (2..8).collect();
        assert_eq!(free_site_id(&full, 8), None);
        assert_eq!(free_site_id(&BTreeSet::new(), 2), None);
    }

    #[test]
    fn scan_finds_flat_and_state_layouts_and_skips_board_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ini"), center("a", 2, 64)).unwrap();
        std::fs::write(dir.path().join("rpi.ini"), "[board]\nname = rpi\n").unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/center.ini"), center("b", 7, 64)).unwrap();
        std::fs::create_dir(dir.path().join("secrets-only")).unwrap();
        let known = scan(&[dir.path().to_owned(), dir.path().join("missing")]).unwrap();
        let ids: Vec<_> = known
            .iter()
            .map(|k| (k.center.id.as_str(), k.center.site_id))
            .collect();
        assert_eq!(ids, [("a", 2), ("b", 7)]);
        assert!(with_id(&known, "b").is_some());
        assert_eq!(shared_increment(&known).unwrap(), 64);
    }

    #[test]
    fn a_broken_center_config_stops_the_scan_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = center("a", 2, 64).replace("site_id = 2", "site_id = x");
        std::fs::write(dir.path().join("a.ini"), bad).unwrap();
        let e = format!("{:#}", scan(&[dir.path().to_owned()]).unwrap_err());
        assert!(e.contains("a.ini:8: key 'site_id'"), "{e}");
    }

    #[test]
    fn recorded_centers_are_found_in_the_state() {
        let state = tempfile::tempdir().unwrap();
        Secrets::for_center(state.path(), "old").unwrap();
        Secrets::for_center(state.path(), "new").unwrap();
        assert_eq!(unrecorded(state.path()), ["new", "old"]);
        record(state.path(), "new", &center("new", 9, 64)).unwrap();
        record(state.path(), "new", &center("new", 4, 64)).unwrap();
        assert_eq!(unrecorded(state.path()), ["old"]);
        let known = scan(&[state.path().join("centers")]).unwrap();
        assert_eq!(known.len(), 1);
        assert_eq!(known[0].center.site_id, 4, "the latest copy counts");
    }

    #[test]
    fn disagreeing_increments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ini"), center("a", 2, 64)).unwrap();
        std::fs::write(dir.path().join("b.ini"), center("b", 3, 32)).unwrap();
        let known = scan(&[dir.path().to_owned()]).unwrap();
        let e = shared_increment(&known).unwrap_err().to_string();
        assert!(e.contains("disagree on auto_increment_increment"), "{e}");
    }
}
