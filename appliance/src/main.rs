//! `appliance`: the program that runs on every Kituo card.

mod bench;
mod terminal;

use std::io::BufRead;
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
    /// Run the supervisor (the systemd service): power watch, health checks, status page.
    Supervise {
        #[arg(long, default_value = "/etc/kituo/appliance.ini")]
        config: PathBuf,
    },
    /// Show the running supervisor's status in the terminal.
    Status {
        #[arg(long, default_value = "/etc/kituo/appliance.ini")]
        config: PathBuf,
        /// Print the raw JSON of /api/status.
        #[arg(long)]
        json: bool,
    },
    /// Print the documented settings of appliance.ini (an annotated example file).
    ConfigHelp,
    /// Read a password from standard input and print its hash for `[status] technician_password_hash`.
    HashPassword,
    /// Measure the supervisor: memory, idle CPU, page latency, page weight, low battery to power-off.
    Bench {
        /// Seconds of idle measurement.
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("appliance: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Supervise { config } => {
            let config = Config::load(&config)?;
            appliance::supervisor::run(config).context("supervisor stopped")
        }
        Command::Status { config, json } => {
            let config = Config::load(&config)?;
            terminal::show(&config, json)
        }
        Command::ConfigHelp => {
            print!("{}", appliance::ini::describe(appliance::config::SCHEMA));
            Ok(())
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                password.len() >= 8,
                "use a password of at least 8 characters"
            );
            println!("{}", appliance::status::auth::hash_password(password)?);
            Ok(())
        }
        Command::Bench { idle_seconds } => bench::run(idle_seconds),
    }
}
