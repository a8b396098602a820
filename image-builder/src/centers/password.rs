//! A password asked at the terminal without echo (twice, so a typo is caught), or read as one line
//! from a pipe (scripts, tests).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, LocalFlags, SetArg};

/// Shortest password accepted, as `appliance hash-password`.
const MIN_LEN: usize = 8;

pub fn ask(what: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = unechoed(&format!("{what}: "))?;
        if unechoed(&format!("{what} again: "))? != first {
            bail!("the two passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.chars().count() < MIN_LEN {
        bail!("use a password of at least {MIN_LEN} characters");
    }
    Ok(password)
}

/// One line from the terminal with echo off; echo comes back even when reading fails.
fn unechoed(prompt: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("cannot turn echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    termios::tcsetattr(&stdin, SetArg::TCSANOW, &saved).context("cannot turn echo on")?;
    eprintln!();
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
