//! Linux `power_supply` class (`/sys/class/power_supply/*`): mains adapters report `online`, batteries
//! `capacity`, `status`, `capacity_level` and sometimes `time_to_empty_now`. Boards whose UPS has a kernel
//! driver (and laptops used as test benches) show up here.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::power::{PowerSource, Reading};

pub struct Sysfs {
    /// The folder holding one folder per supply, normally `/sys/class/power_supply`.
    pub root: PathBuf,
}

fn attr(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_owned())
}

impl PowerSource for Sysfs {
    fn name(&self) -> String {
        format!("sysfs:{}", self.root.display())
    }

    fn read(&mut self) -> Result<Reading> {
        let mut reading = Reading {
            source: self.name(),
            ..Reading::default()
        };
        let mut entries: Vec<_> = fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let mut any = false;
        for dir in entries {
            match attr(&dir, "type").as_deref() {
                Some("Mains") | Some("USB") | Some("UPS") => {
                    if let Some(online) = attr(&dir, "online") {
                        any = true;
                        let online = online == "1";
                        reading.on_mains = Some(reading.on_mains.unwrap_or(false) || online);
                    }
                }
                Some("Battery") => {
                    any = true;
                    if let Some(c) = attr(&dir, "capacity").and_then(|c| c.parse::<f32>().ok()) {
                        reading.charge_percent = Some(c);
                    }
                    let status = attr(&dir, "status").unwrap_or_default();
                    reading.charging = Some(status == "Charging" || status == "Full");
                    // A battery that discharges says the box runs from it, even with no adapter entry.
                    if status == "Discharging" && reading.on_mains.is_none() {
                        reading.on_mains = Some(false);
                    }
                    if attr(&dir, "capacity_level").as_deref() == Some("Critical") {
                        reading.low_battery = true;
                    }
                    if let Some(t) = attr(&dir, "time_to_empty_now").and_then(|t| t.parse().ok()) {
                        reading.runtime_seconds = Some(t);
                    }
                    if let Some(uv) = attr(&dir, "voltage_now").and_then(|v| v.parse::<f32>().ok())
                    {
                        reading.battery_volts = Some(uv / 1e6);
                    }
                }
                _ => {}
            }
        }
        if !any {
            anyhow::bail!(
                "no mains adapter or battery under {} (wrong [sysfs] root?)",
                self.root.display()
            );
        }
        Ok(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, attrs: &[(&str, &str)]) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        for (k, v) in attrs {
            fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn reads_a_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        supply(root, "AC", &[("type", "Mains"), ("online", "1")]);
        supply(
            root,
            "BAT0",
            &[
                ("type", "Battery"),
                ("capacity", "87"),
                ("status", "Charging"),
                ("capacity_level", "Normal"),
                ("voltage_now", "12600000"),
            ],
        );
        let mut s = Sysfs {
            root: root.to_owned(),
        };
        let r = s.read().unwrap();
        assert_eq!(r.on_mains, Some(true));
        assert_eq!(r.charge_percent, Some(87.0));
        assert_eq!(r.charging, Some(true));
        assert!(!r.low_battery);
        assert_eq!(r.battery_volts, Some(12.6));

        supply(root, "AC", &[("online", "0")]);
        supply(
            root,
            "BAT0",
            &[
                ("capacity", "4"),
                ("status", "Discharging"),
                ("capacity_level", "Critical"),
                ("time_to_empty_now", "120"),
            ],
        );
        let r = s.read().unwrap();
        assert_eq!(r.on_mains, Some(false));
        assert!(r.low_battery);
        assert_eq!(r.runtime_seconds, Some(120));
    }

    #[test]
    fn empty_tree_is_an_error_naming_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Sysfs {
            root: tmp.path().to_owned(),
        };
        let e = s.read().unwrap_err().to_string();
        assert!(e.contains(&tmp.path().display().to_string()), "{e}");
    }
}
