//! `image-builder`: turns a board config and a center config into a reproducible Kituo card image.

mod apt;
mod binfmt;
mod bmap;
mod board;
mod bootloader;
mod centers;
mod cli;
mod cross;
mod disk;
mod flash;
mod lockfile;
mod manifest;
mod moodle;
mod overlay;
mod packages;
mod progress;
mod rootfs;
mod secrets;
mod tools;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where inputs, caches and state live; shared by every subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Paths {
    /// The Kituo source tree (board-configs/, overlays/, image-builder/locks/).
    #[arg(long, env = "KITUO_WORKSPACE", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    pub workspace: PathBuf,
    /// Board configs folder (default: <workspace>/board-configs).
    #[arg(long)]
    pub board_configs: Option<PathBuf>,
    /// Overlays folder (default: <workspace>/overlays).
    #[arg(long)]
    pub overlays: Option<PathBuf>,
    /// Cache of downloaded packages, root filesystems, the cross toolchain and binaries.
    #[arg(long, env = "KITUO_CACHE", default_value = "/var/cache/kituo")]
    pub cache: PathBuf,
    /// Builder state: each center's generated secrets.
    #[arg(long, env = "KITUO_STATE", default_value = "/var/lib/kituo-builder")]
    pub state: PathBuf,
}

impl Paths {
    pub fn board_configs(&self) -> PathBuf {
        self.board_configs
            .clone()
            .unwrap_or_else(|| self.workspace.join("board-configs"))
    }
    pub fn overlays(&self) -> PathBuf {
        self.overlays
            .clone()
            .unwrap_or_else(|| self.workspace.join("overlays"))
    }
    pub fn locks(&self) -> PathBuf {
        self.workspace.join("image-builder/locks")
    }
}

#[derive(Parser)]
#[command(version, about = "Build reproducible Kituo card images")]
struct Cli {
    /// No progress output.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a card image.
    Build(cli::build::Args),
    /// Time cold and warm builds and report image sizes, as a table.
    Bench(cli::bench::Args),
    /// Only the partition table, bootloader area and boot partition of a card, from an unpacked root
    /// filesystem: checks a board's boot chain without a full build.
    BootArea(cli::boot_area::Args),
    /// Write an image to a card: only the mapped blocks, read back from the card and verified.
    Flash(cli::flash::Args),
    /// Check a card against an image's bmap, reporting the first range that differs.
    Verify(cli::verify::Args),
    /// Make a new center config (fresh secrets, a free site_id), or check one.
    Center {
        #[command(subcommand)]
        command: cli::center::Command,
    },
    /// Refresh the package locks from the Debian mirror.
    Lock(cli::lock::Args),
    /// Check that every tool the builder needs is installed.
    CheckTools,
    /// Print the documented keys of a board config or a center config.
    ConfigHelp {
        #[arg(value_parser = ["board", "center"])]
        kind: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let progress = progress::Progress::new(cli.quiet);
    let result = match cli.command {
        Command::Build(args) => cli::build::run(&args, &progress).map(|out| {
            let m = &out.manifest;
            println!("{}", out.image.display());
            eprintln!(
                "built {} (build {}): {} MiB, {} MiB mapped, {} MiB compressed, sha256 {}",
                m.name,
                m.build_id,
                m.image.size_bytes >> 20,
                m.image.mapped_bytes >> 20,
                m.image.compressed_bytes >> 20,
                m.image.sha256
            );
        }),
        Command::Bench(args) => cli::bench::run_bench(&args),
        Command::BootArea(args) => cli::boot_area::run(&args, &progress),
        Command::Flash(args) => cli::flash::run(&args, &progress),
        Command::Verify(args) => cli::verify::run(&args, &progress),
        Command::Center { command } => cli::center::run(&command),
        Command::Lock(args) => cli::lock::run(&args, &progress),
        Command::CheckTools => tools::check_required().map(|()| eprintln!("all tools present")),
        Command::ConfigHelp { kind } => {
            let schema = if kind == "board" {
                board::SCHEMA
            } else {
                appliance::center::SCHEMA
            };
            print!("{}", appliance::ini::describe(schema));
            Ok(())
        }
    };
    if let Err(e) = result {
        // User errors end with a message (and a hint), not a backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
