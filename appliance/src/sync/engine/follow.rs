//! Records a site's own Moodle changes continuously, on a thread beside Moodle, at the hub and at every
//! center alike: a change is logged within a capture period of its commit whether the link is up,
//! down or paused, so its stamp ([`crate::sync::engine::clock::commit_millis`]) is taken while the
//! clock that wrote its commit time is still the one the stamp corrects.

use std::time::Duration;

use anyhow::Result;

use crate::sync::engine::policy::Rulebook;
use crate::sync::engine::site::{Site, SiteConfig};

/// What the follower does at its next pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Capture,
    /// Waits a period (the appliance is shutting down: MariaDB is going away).
    Wait,
    Stop,
}

/// What a follower does around each capture.
pub trait Pass {
    /// Whether to capture now; false waits a period (a center being seeded).
    fn ready(&mut self, _site: &mut Site) -> Result<bool> {
        Ok(true)
    }

    /// After a capture, told whether Moodle was upgraded since the pass before (its rules are derived
    /// again first).
    fn then(&mut self, _site: &mut Site, _rules: &Rulebook, _upgraded: bool) -> Result<()> {
        Ok(())
    }
}

/// Captures every `every` until `gate` says stop, with `pass` around each capture. A failure is printed
/// under `who` and the site opened again at the next pass (MariaDB may have restarted).
pub fn follow(
    cfg: SiteConfig,
    mut rules: Rulebook,
    every: Duration,
    who: &str,
    gate: impl Fn() -> Gate,
    mut then: impl Pass,
) {
    let mut site: Option<Site> = None;
    loop {
        match gate() {
            Gate::Stop => return,
            Gate::Wait => {}
            Gate::Capture => {
                let done = match site.as_mut() {
                    Some(s) => pass(s, &mut rules, who, &mut then),
                    None => Site::open(cfg.clone()).map(|s| site = Some(s)),
                };
                if let Err(e) = done {
                    eprintln!("{who}: capture: {e:#}");
                    site = None;
                }
            }
        }
        sleep_unless(every, || gate() == Gate::Stop);
    }
}

fn pass(site: &mut Site, rules: &mut Rulebook, who: &str, then: &mut impl Pass) -> Result<()> {
    if !then.ready(site)? {
        return Ok(());
    }
    let upgraded = rules.refresh(site.conn())?;
    if upgraded {
        eprintln!(
            "{who}: Moodle was upgraded ({}): rules derived again",
            rules.version()
        );
    }
    site.capture(rules.policy())?;
    then.then(site, rules, upgraded)
}

/// Sleeps `total`, in short naps so that `stop` is noticed quickly.
pub fn sleep_unless(total: Duration, stop: impl Fn() -> bool) {
    let step = Duration::from_millis(50);
    let mut left = total;
    while !stop() && !left.is_zero() {
        let nap = left.min(step);
        std::thread::sleep(nap);
        left -= nap;
    }
}
