//! `appliance`: the program that runs on every Kituo card.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use appliance::config::Config;

#[derive(Parser)]
#[command(version, about = "Kituo appliance: supervisor, status and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the supervisor (the systemd service).
    Supervise {
        #[arg(long, default_value = "/etc/kituo/appliance.ini")]
        config: PathBuf,
    },
    /// Print the documented settings of appliance.ini.
    ConfigHelp,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Supervise { config } => {
            let config = Config::load(&config)?;
            start_watchdog();
            appliance::status::serve(&config, || {
                // Not under systemd (e.g. a test run) is fine: there is nobody to tell.
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            })
            .context("status server stopped")
        }
        Command::ConfigHelp => {
            print!("{}", appliance::ini::describe(appliance::config::SCHEMA));
            Ok(())
        }
    }
}

/// Pings systemd's watchdog at half its interval while the process lives.
fn start_watchdog() {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let interval = std::time::Duration::from_micros(usec / 2);
        std::thread::spawn(move || loop {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            std::thread::sleep(interval);
        });
    }
}
