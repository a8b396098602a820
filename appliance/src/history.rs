//! The power history: every state transition (bounded) and a battery/mains sample every few minutes for
//! the 24-hour chart. Kept in memory and written to one JSON file, replaced atomically, only on transitions
//! and at most once per `persist_every` for samples: an SD card wears out with every write.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::power::state::Transition;
use crate::power::Reading;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds (the clock may have been wrong at the time: these boards have no RTC).
    pub at: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at: u64,
    pub on_mains: Option<bool>,
    pub charge_percent: Option<f32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    events: VecDeque<Event>,
    samples: VecDeque<Sample>,
}

pub struct History {
    path: Option<PathBuf>,
    max_events: usize,
    sample_every: Duration,
    persist_every: Duration,
    data: Stored,
    last_persist: Option<Instant>,
    dirty: bool,
}

/// 24 hours of samples.
pub const CHART_SECONDS: u64 = 24 * 3600;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl History {
    /// Loads the history file if there is one. A damaged file is set aside (`.bad`) rather than stopping
    /// the supervisor: the history is useful, not vital.
    pub fn open(
        path: Option<PathBuf>,
        max_events: usize,
        sample_every: Duration,
        persist_every: Duration,
    ) -> Self {
        let data = path.as_deref().map(load).unwrap_or_default();
        History {
            path,
            max_events,
            sample_every,
            persist_every,
            data,
            last_persist: None,
            dirty: false,
        }
    }

    pub fn events(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.data.events.iter()
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.data.samples.iter()
    }

    pub fn record(&mut self, t: &Transition, at: u64) {
        self.data.events.push_back(Event {
            at,
            from: t.from.words().to_owned(),
            to: t.to.words().to_owned(),
            reason: t.reason.clone(),
        });
        while self.data.events.len() > self.max_events {
            self.data.events.pop_front();
        }
        self.dirty = true;
        // Transitions are rare and are what a technician asks about after a cut: write them at once.
        self.persist();
    }

    /// Adds a chart sample if the last one is older than the sampling interval.
    pub fn sample(&mut self, r: &Reading, at: u64) {
        let due =
            self.data.samples.back().is_none_or(|s| {
                at.saturating_sub(s.at) >= self.sample_every.as_secs() || at < s.at
            });
        if !due {
            return;
        }
        self.data.samples.push_back(Sample {
            at,
            on_mains: r.on_mains,
            charge_percent: r.charge_percent,
        });
        while self
            .data
            .samples
            .front()
            .is_some_and(|s| at.saturating_sub(s.at) > CHART_SECONDS)
        {
            self.data.samples.pop_front();
        }
        self.dirty = true;
        if self
            .last_persist
            .is_none_or(|t| t.elapsed() >= self.persist_every)
        {
            self.persist();
        }
    }

    /// Writes the file if anything changed since the last write.
    pub fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(path) = &self.path else {
            return;
        };
        match write_atomic(path, &self.data) {
            Ok(()) => {
                self.dirty = false;
                self.last_persist = Some(Instant::now());
            }
            Err(e) => eprintln!("history: {e:#}"),
        }
    }
}

fn load(path: &Path) -> Stored {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Stored::default(),
    };
    match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            let bad = path.with_extension("bad");
            eprintln!(
                "history: {} is damaged ({e}); kept as {} and starting afresh",
                path.display(),
                bad.display()
            );
            let _ = std::fs::rename(path, bad);
            Stored::default()
        }
    }
}

fn write_atomic(path: &Path, data: &Stored) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(data)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&body)?;
        // Without this a power cut right after the rename can leave an empty file behind.
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::state::{Action, PowerState};

    fn transition(to: PowerState) -> Transition {
        Transition {
            from: PowerState::OnMains,
            to,
            reason: "test".into(),
            action: Action::None,
        }
    }

    #[test]
    fn bounded_survives_restart_and_samples_sparingly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("power-history.json");
        let hour = Duration::from_secs(3600);
        let mut h = History::open(Some(path.clone()), 3, Duration::from_secs(300), hour);
        for i in 0..5 {
            h.record(&transition(PowerState::OnBattery), 1000 + i);
        }
        assert_eq!(h.events().count(), 3);
        let r = Reading {
            on_mains: Some(true),
            charge_percent: Some(90.0),
            ..Reading::default()
        };
        h.sample(&r, 2000);
        h.sample(&r, 2100); // too soon: dropped
        h.sample(&r, 2300);
        assert_eq!(h.samples().count(), 2);
        // The last sample is not on disk yet (written at most hourly); a final persist writes it.
        let reopened = History::open(Some(path.clone()), 3, Duration::from_secs(300), hour);
        assert_eq!(reopened.events().count(), 3);
        assert_eq!(reopened.events().next().unwrap().at, 1002);
        h.persist();
        let reopened = History::open(Some(path.clone()), 3, Duration::from_secs(300), hour);
        assert_eq!(reopened.samples().count(), 2);
        // Older than 24 h drops out.
        h.sample(&r, 2300 + CHART_SECONDS + 1);
        assert_eq!(h.samples().count(), 1);
    }

    #[test]
    fn damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.json");
        std::fs::write(&path, "{not json").unwrap();
        let h = History::open(
            Some(path.clone()),
            10,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(h.events().count(), 0);
        assert!(path.with_extension("bad").exists());
    }
}
