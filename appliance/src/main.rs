//! `appliance`: the program that runs on every Kituo card.

mod bench;
mod bench_sync;
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
    /// Measure the supervisor: memory, idle CPU, page latency, page weight, low battery to power-off
    /// (`appliance bench sync` measures the sync engine instead).
    Bench {
        /// Seconds of idle measurement.
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
        #[command(subcommand)]
        what: Option<BenchWhat>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Measure sync on a hub and two centers (real MariaDB servers): capture and apply rates, and a
    /// simulated day's bytes on the wire against a gzip'd mysqldump updated with rsync.
    Sync {
        /// Changes in the page a center applies for the apply rate.
        #[arg(long, default_value_t = 50_000)]
        rows: u64,
        /// Enrolled students at the center of the simulated day.
        #[arg(long, default_value_t = 200)]
        students: usize,
        /// Changes per batch the agent pushes and pulls.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Days of history in the center's database before the measured day (yesterday's rows,
        /// copied): what the moodlesync baseline ships every day.
        #[arg(long, default_value_t = bench_sync::HISTORY_DAYS)]
        history_days: usize,
        /// Seed of the day's workload.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
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
        Command::Bench { idle_seconds, what } => match what {
            None => bench::run(idle_seconds),
            Some(BenchWhat::Sync {
                rows,
                students,
                batch,
                history_days,
                seed,
            }) => bench_sync::run(&bench_sync::Options {
                rows,
                students,
                batch,
                history: history_days,
                seed,
            }),
        },
    }
}
