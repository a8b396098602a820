//! `appliance`: the program that runs on every Kituo card.

mod sync_cmd;
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
    /// This card's settings: the technician's local overrides on /data (kept across boots and
    /// updates), laid over center.ini and the image's defaults.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
        /// The root filesystem (a test's temporary folder).
        #[arg(long, default_value = "/", global = true)]
        root: PathBuf,
    },
    /// Read a password from standard input and print its hash for `[status] technician_password_hash`.
    HashPassword,
    /// The hub: the central side of sync, beside the university's Moodle.
    Hub {
        #[arg(long, default_value = "/etc/kituo/hub.ini")]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<HubAction>,
    },
    /// The center configuration of this card.
    Center {
        #[command(subcommand)]
        action: CenterAction,
    },
    /// The sync agent's commands.
    Sync {
        #[command(subcommand)]
        action: SyncAction,
    },
}

#[derive(Subcommand)]
enum HubAction {
    /// Serve the centers (the default).
    Serve,
    /// Register a center, or replace its secret.
    AddCenter {
        /// The center's site number (its auto-increment offset), 2 to 255.
        #[arg(long)]
        site: u32,
        #[arg(long)]
        name: String,
        /// The center's secret as the image builder made it (its secrets.ini `sync_secret`, in a file).
        #[arg(
            long,
            conflicts_with = "secret_out",
            required_unless_present = "secret_out"
        )]
        secret_from: Option<PathBuf>,
        /// Make a new secret and write it here (mode 0600) for the card's [sync] secret_file.
        #[arg(long)]
        secret_out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print appliance.ini's settings, each with where its value came from (local, center.ini,
    /// image, default).
    Show,
    /// Override a setting on this card (e.g. `power.low_charge_percent 30`) and render appliance.ini
    /// again; restart the supervisor (or reboot) to use it.
    Set { name: String, value: String },
    /// Remove a local override: center.ini's value or the default applies again.
    Unset { name: String },
}

#[derive(Subcommand)]
enum CenterAction {
    /// Apply the center.ini on the boot partition (first boot): render the image's templates for that
    /// center, writing only files that change; print each changed file. A missing file does nothing; an
    /// invalid one changes nothing and is recorded for the status page (exit 0: boot goes on).
    Apply {
        /// The root filesystem to configure (a test's temporary folder).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum SyncAction {
    /// Run the agent in the foreground (`appliance supervise` runs it too when [sync] hub_url is set).
    Run {
        #[arg(long, default_value = "/etc/kituo/appliance.ini")]
        config: PathBuf,
    },
    /// Compare every synced table with the hub by chunk checksums, list the differing rows, and with
    /// --repair copy the hub's rows over them.
    Verify {
        #[arg(long, default_value = "/etc/kituo/appliance.ini")]
        config: PathBuf,
        #[arg(long)]
        repair: bool,
        /// Ids per checksum chunk.
        #[arg(long, default_value_t = 1000)]
        chunk: u64,
        /// Only these tables (comma-separated, without Moodle's prefix).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
    },
    /// At a center joining the university: fill its empty Moodle database from the hub (the tables
    /// must exist: see schema-sql); resumes after a cut, does nothing once done.
    Seed {
        #[arg(long, default_value = "/etc/kituo/appliance.ini")]
        config: PathBuf,
    },
    /// Print the SQL that creates Moodle's tables from the XMLDB of [moodle] dirroot (tables that
    /// exist are left alone), for a database `sync seed` then fills.
    SchemaSql {
        #[arg(long, default_value = "/etc/kituo/appliance.ini")]
        config: PathBuf,
    },
    /// Write everything the other side has not acknowledged (row changes and files) as a signed
    /// stick: volumes for a USB stick or DVD; at the hub, with --for, a stick for one center.
    Export {
        /// The folder to write the volumes in (e.g. the mounted stick).
        #[arg(long)]
        to: PathBuf,
        /// Largest volume, for the medium: 4.7G (a DVD), 700M, 2GiB; default one volume.
        #[arg(long)]
        volume_size: Option<String>,
        /// At the hub: the center's site number the stick is for.
        #[arg(long = "for")]
        center: Option<u32>,
        /// With --for: a seed for a center joining the university (the hub's whole Moodle and its
        /// files, for `sync import` into the card's empty database), instead of the log since its last.
        #[arg(long, requires = "center")]
        seed: bool,
        /// Default /etc/kituo/appliance.ini, or /etc/kituo/hub.ini with --for.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the names sync found given to two people or things (two accounts with one login name,
    /// two groups with one name in a course) and how it told them apart, newest first.
    Clashes {
        /// At the hub.
        #[arg(long)]
        hub: bool,
        /// Default /etc/kituo/appliance.ini, or /etc/kituo/hub.ini with --hub.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Verify, then apply, the sticks in a folder (every volume is checked before anything is
    /// applied; importing twice changes nothing).
    Import {
        dir: PathBuf,
        /// Import at the hub (the centers' sticks).
        #[arg(long)]
        hub: bool,
        /// Default /etc/kituo/appliance.ini, or /etc/kituo/hub.ini with --hub.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn hub_ini() -> PathBuf {
    PathBuf::from("/etc/kituo/hub.ini")
}

fn appliance_ini() -> PathBuf {
    PathBuf::from("/etc/kituo/appliance.ini")
}

fn main() {
    if let Err(e) = run() {
        eprintln!("appliance: {e:#}");
        std::process::exit(1);
    }
}

fn center_apply(root: &std::path::Path) -> Result<()> {
    report(appliance::commission::apply::run(root)?);
    Ok(())
}

fn config_action(root: &std::path::Path, action: ConfigAction) -> Result<()> {
    use appliance::commission::overrides;
    let outcome = match action {
        ConfigAction::Show => {
            print!("{}", overrides::show(root)?);
            return Ok(());
        }
        ConfigAction::Set { name, value } => overrides::set(root, &name, Some(&value))?,
        ConfigAction::Unset { name } => overrides::set(root, &name, None)?,
    };
    report(outcome);
    eprintln!(
        "config: restart the supervisor to use it: systemctl restart kituo-supervisor.service"
    );
    Ok(())
}

fn report(outcome: appliance::commission::apply::Outcome) {
    use appliance::commission::apply::{Outcome, CENTER_FILE};
    match outcome {
        Outcome::NoFile => eprintln!("center: no /{CENTER_FILE}: nothing to apply"),
        Outcome::Invalid(error) => {
            eprintln!("center: ERROR: not applied, the card keeps its configuration: {error}")
        }
        Outcome::Applied(changed) => {
            eprintln!("center: applied, {} files changed", changed.len());
            for file in changed {
                println!("{file}");
            }
        }
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
        Command::Config { action, root } => config_action(&root, action),
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
        Command::Hub { config, action } => match action.unwrap_or(HubAction::Serve) {
            HubAction::Serve => sync_cmd::serve_hub(&config),
            HubAction::AddCenter {
                site,
                name,
                secret_from,
                secret_out,
            } => {
                let source = match (&secret_from, &secret_out) {
                    (Some(from), _) => sync_cmd::SecretSource::From(from),
                    (None, Some(to)) => sync_cmd::SecretSource::NewTo(to),
                    (None, None) => anyhow::bail!("give --secret-from or --secret-out"),
                };
                sync_cmd::add_center(&config, site, &name, source)
            }
        },
        Command::Center {
            action: CenterAction::Apply { root },
        } => center_apply(&root),
        Command::Sync { action } => match action {
            SyncAction::Run { config } => sync_cmd::run_agent(&config),
            SyncAction::Verify {
                config,
                repair,
                chunk,
                tables,
            } => {
                let opts = appliance::sync::verify::Options {
                    repair,
                    chunk,
                    tables: (!tables.is_empty()).then(|| tables.into_iter().collect()),
                    ..Default::default()
                };
                sync_cmd::verify(&config, &opts)
            }
            SyncAction::Seed { config } => sync_cmd::seed(&config),
            SyncAction::SchemaSql { config } => sync_cmd::schema_sql(&config),
            SyncAction::Export {
                to,
                volume_size,
                center,
                seed,
                config,
            } => {
                let to = sync_cmd::ExportTo {
                    dir: &to,
                    volume_size: volume_size.as_deref(),
                };
                match center {
                    Some(c) => sync_cmd::export_hub(&config.unwrap_or_else(hub_ini), c, seed, &to),
                    None => sync_cmd::export_center(&config.unwrap_or_else(appliance_ini), &to),
                }
            }
            SyncAction::Clashes { hub, config } => match hub {
                true => sync_cmd::clashes_hub(&config.unwrap_or_else(hub_ini)),
                false => sync_cmd::clashes_center(&config.unwrap_or_else(appliance_ini)),
            },
            SyncAction::Import { dir, hub, config } => {
                if hub {
                    sync_cmd::import_hub(&config.unwrap_or_else(hub_ini), &dir)
                } else {
                    sync_cmd::import_center(&config.unwrap_or_else(appliance_ini), &dir)
                }
            }
        },
    }
}
