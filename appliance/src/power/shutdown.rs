//! The low-battery shutdown sequence: stop sync, stop the web stack, shut MariaDB down and confirm its
//! process is gone, flush filesystems, power off. Every step has a timeout and is logged with its outcome.
//!
//! Until MariaDB is asked to stop, power coming back cancels the sequence and the steps already done are
//! undone (sync and web started again). Stopping the database is the point of no return: a half-stopped
//! database is worse than a box that goes down and comes back.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// An external command, given as words (no shell: what is configured is what runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd(pub Vec<String>);

impl Cmd {
    /// Splits a configured command line on whitespace; empty means "no command".
    pub fn parse(line: &str) -> Option<Cmd> {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        (!words.is_empty()).then_some(Cmd(words))
    }

    /// Runs to completion within `timeout`, and says exactly how it failed: could not start, killed at the
    /// timeout, or exited non-zero (with the code).
    pub fn run(&self, timeout: Duration) -> Result<()> {
        let (program, args) = self.0.split_first().context("empty command")?;
        let line = self.0.join(" ");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start '{line}'"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for '{line}'"))?
            {
                if status.success() {
                    return Ok(());
                }
                match status.code() {
                    Some(code) => bail!("'{line}' exited with code {code}"),
                    None => bail!("'{line}' was killed by a signal ({status})"),
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "'{line}' did not finish within {} s and was killed",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the sequence does; built from the `[shutdown]` section.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Wait this long (cancellable) before stopping anything: on a UPS with minutes to spare, a short cut
    /// that ends does not take the web down.
    pub grace: Duration,
    pub stop_sync: Option<Cmd>,
    pub start_sync: Option<Cmd>,
    pub stop_web: Option<Cmd>,
    pub start_web: Option<Cmd>,
    pub web_timeout: Duration,
    pub stop_database: Option<Cmd>,
    /// MariaDB's pid file: its process must be gone before the filesystems are flushed.
    pub database_pid_file: PathBuf,
    pub database_timeout: Duration,
    pub poweroff: Option<Cmd>,
    pub poweroff_timeout: Duration,
    /// Where each step is also announced (the kernel log, so the card's console shows it): a technician
    /// at the console sees why the card is going down and that the database stopped first.
    pub console: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: String,
    pub ok: bool,
    pub detail: String,
    pub millis: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Cancelled,
    PoweredOff,
}

#[derive(Debug, Default)]
struct Phase {
    cancelled: bool,
    committed: bool,
}

/// Shared between the running sequence and the power watch.
#[derive(Debug, Default)]
pub struct Control {
    phase: Mutex<Phase>,
    steps: Mutex<Vec<StepRecord>>,
    console: Option<PathBuf>,
}

impl Control {
    pub fn new(console: Option<PathBuf>) -> Self {
        Control {
            console,
            ..Control::default()
        }
    }

    /// Asks the sequence to stop and undo; false when it has already passed the point of no return.
    pub fn try_cancel(&self) -> bool {
        let Ok(mut p) = self.phase.lock() else {
            return false;
        };
        if !p.committed {
            p.cancelled = true;
        }
        !p.committed
    }

    fn try_commit(&self) -> bool {
        let Ok(mut p) = self.phase.lock() else {
            return true;
        };
        if !p.cancelled {
            p.committed = true;
        }
        !p.cancelled
    }

    fn cancelled(&self) -> bool {
        self.phase.lock().map(|p| p.cancelled).unwrap_or(false)
    }

    pub fn committed(&self) -> bool {
        self.phase.lock().map(|p| p.committed).unwrap_or(false)
    }

    /// The steps run so far, for the status page and the log.
    pub fn steps(&self) -> Vec<StepRecord> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn record(&self, step: &str, started: Instant, result: &Result<String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d.clone()),
            Err(e) => (false, format!("{e:#}")),
        };
        let line = format!(
            "shutdown: {step}: {} ({} ms){}",
            if ok { "done" } else { "FAILED" },
            started.elapsed().as_millis(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        eprintln!("{line}");
        if let Some(console) = &self.console {
            // Best effort: the journal has the line already. "<4>" is the kernel's warning level, which
            // the console prints even at a quiet log level.
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(console)
                .and_then(|mut f| f.write_all(format!("<4>kituo: {line}\n").as_bytes()));
        }
        if let Ok(mut s) = self.steps.lock() {
            s.push(StepRecord {
                step: step.to_owned(),
                ok,
                detail,
                millis: started.elapsed().as_millis() as u64,
            });
        }
    }
}

fn run_step(ctl: &Control, name: &str, cmd: &Option<Cmd>, timeout: Duration) -> bool {
    let Some(cmd) = cmd else {
        return true;
    };
    let started = Instant::now();
    let result = cmd.run(timeout).map(|()| String::new());
    let ok = result.is_ok();
    ctl.record(name, started, &result);
    ok
}

/// Runs the sequence on this thread. Returns `Cancelled` when power came back in time (after undoing what
/// was done), `PoweredOff` once the poweroff command has been run (whether or not it succeeded: there is
/// nothing better left to do; its failure is logged).
pub fn run(plan: &Plan, ctl: &Control) -> Outcome {
    let mut undo: Vec<(&str, &Option<Cmd>, Duration)> = Vec::new();
    let cancel_now = |undo: &mut Vec<(&str, &Option<Cmd>, Duration)>| {
        while let Some((name, cmd, timeout)) = undo.pop() {
            run_step(ctl, name, cmd, timeout);
        }
        ctl.record(
            "cancelled: power is back",
            Instant::now(),
            &Ok(String::new()),
        );
        Outcome::Cancelled
    };

    let grace_end = Instant::now() + plan.grace;
    while Instant::now() < grace_end {
        if ctl.cancelled() {
            return cancel_now(&mut undo);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let steps = [
        (
            "stop sync",
            &plan.stop_sync,
            ("start sync", &plan.start_sync),
        ),
        (
            "stop web and PHP",
            &plan.stop_web,
            ("start web and PHP", &plan.start_web),
        ),
    ];
    for (name, cmd, (undo_name, undo_cmd)) in steps {
        if ctl.cancelled() {
            return cancel_now(&mut undo);
        }
        run_step(ctl, name, cmd, plan.web_timeout);
        undo.push((undo_name, undo_cmd, plan.web_timeout));
    }
    if !ctl.try_commit() {
        return cancel_now(&mut undo);
    }

    let started = Instant::now();
    let result = stop_database(plan);
    ctl.record("stop MariaDB", started, &result);

    let started = Instant::now();
    nix::unistd::sync();
    ctl.record("flush filesystems", started, &Ok(String::new()));

    run_step(ctl, "power off", &plan.poweroff, plan.poweroff_timeout);
    Outcome::PoweredOff
}

/// Stops MariaDB and waits until its process is gone: a stop command that returns early (or a unit that
/// is not there) must not let the box power off under a running database.
fn stop_database(plan: &Plan) -> Result<String> {
    let pid = std::fs::read_to_string(&plan.database_pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(cmd) = &plan.stop_database {
        cmd.run(plan.database_timeout)?;
    }
    let Some(pid) = pid else {
        return Ok(format!(
            "no pid in {}: MariaDB was not running",
            plan.database_pid_file.display()
        ));
    };
    let deadline = Instant::now() + plan.database_timeout;
    let pid = nix::unistd::Pid::from_raw(pid);
    while alive(pid) {
        if Instant::now() >= deadline {
            bail!(
                "MariaDB (pid {pid}) is still running {} s after the stop command",
                plan.database_timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!("pid {pid} has exited"))
}

/// A process exists and has not exited. A zombie has exited: it only waits for its parent to reap it
/// (systemd does at once; a test harness may not).
fn alive(pid: nix::unistd::Pid) -> bool {
    if nix::sys::signal::kill(pid, None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may itself hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_failures_are_told_apart() {
        let e = Cmd::parse("/nonexistent/tool")
            .unwrap()
            .run(Duration::from_secs(1))
            .unwrap_err();
        assert!(format!("{e:#}").contains("could not start"), "{e:#}");
        let e = Cmd::parse("false")
            .unwrap()
            .run(Duration::from_secs(5))
            .unwrap_err();
        assert!(e.to_string().contains("exited with code 1"), "{e}");
        let e = Cmd::parse("sleep 5")
            .unwrap()
            .run(Duration::from_millis(200))
            .unwrap_err();
        assert!(e.to_string().contains("was killed"), "{e}");
        assert_eq!(Cmd::parse("   "), None);
    }

    #[test]
    fn zombies_count_as_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!alive(pid), "an exited, unreaped child is not alive");
        child.wait().unwrap();
        assert!(alive(nix::unistd::Pid::this()));
    }
}
