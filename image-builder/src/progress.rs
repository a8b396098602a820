//! Progress on long steps: a spinner or bar on a terminal, and one line per finished step in logs (CI),
//! with the time each step took (the bench reads those lines).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Default)]
pub struct Progress {
    quiet: bool,
}

pub struct Step {
    name: String,
    bar: ProgressBar,
    started: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress { quiet }
    }

    /// A step whose length is unknown: a spinner with the elapsed time.
    pub fn step(&self, name: &str) -> Step {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        self.wrap(name, bar)
    }

    /// A step of `total` bytes.
    pub fn bar(&self, name: &str, total: u64) -> Step {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(name.to_owned());
        self.wrap(name, bar)
    }

    /// Reports a step that a cache answered.
    pub fn cached(&self, name: &str) {
        if !self.quiet {
            eprintln!("step {name:<28} {:>7.1}s  cached", 0.0);
        }
    }

    fn wrap(&self, name: &str, bar: ProgressBar) -> Step {
        if self.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Step {
            name: name.to_owned(),
            bar,
            started: Instant::now(),
            quiet: self.quiet,
        }
    }
}

impl Step {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn finish(self) {
        self.finish_with("done");
    }

    pub fn finish_with(self, outcome: &str) {
        self.bar.finish_and_clear();
        if !self.quiet {
            eprintln!(
                "step {:<28} {:>7.1}s  {outcome}",
                self.name,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
