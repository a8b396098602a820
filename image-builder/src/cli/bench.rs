//! `image-builder bench`: how long builds take with cold and warm caches, and how large the outputs are,
//! printed as a table. The baseline is what people do today: writing the whole raw image (`dd`), so the
//! sizes are also given as a ratio to it.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::build;
use crate::progress::Progress;
use crate::tools;
use crate::Paths;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Another bench instead of the build times.
    #[command(subcommand)]
    pub what: Option<What>,
    #[arg(long, default_value = "qemu-arm64")]
    pub board: String,
    /// Also time a cold build with an empty cache (downloads, root filesystem, toolchain: 15+ minutes).
    #[arg(long)]
    pub cold: bool,
    #[command(flatten)]
    pub paths: Paths,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// Time `image-builder flash` (verification on) against dd of the whole image, on a loop device.
    Flash(super::bench_flash::Args),
}

struct Row {
    what: String,
    seconds: f64,
    sha256: String,
}

pub fn run_bench(args: &Args) -> Result<()> {
    if let Some(What::Flash(flash)) = &args.what {
        return super::bench_flash::run_bench(flash);
    }
    let scratch = tempfile::Builder::new()
        .prefix("kituo-bench-")
        .tempdir_in(&args.paths.cache)?;
    let progress = Progress::new(false);
    let mut rows = Vec::new();
    let mut timed = |what: &str, paths: &Paths, out: &Path| -> Result<build::Outputs> {
        let args = build::Args {
            board: args.board.clone(),
            center: None,
            moodle: None,
            out: out.to_owned(),
            fresh: false,
            paths: paths.clone(),
        };
        let started = Instant::now();
        let outputs =
            build::run(&args, &progress).with_context(|| format!("bench build '{what}' failed"))?;
        rows.push(Row {
            what: what.to_owned(),
            seconds: started.elapsed().as_secs_f64(),
            sha256: outputs.manifest.image.sha256.clone(),
        });
        Ok(outputs)
    };

    if args.cold {
        let cold = Paths {
            cache: scratch.path().join("cold-cache"),
            ..args.paths.clone()
        };
        timed(
            "cold build (empty cache)",
            &cold,
            &scratch.path().join("cold"),
        )?;
    }
    timed(
        "warm-up (fills the cache if needed)",
        &args.paths,
        &scratch.path().join("warm"),
    )?;
    let outputs = timed(
        "rebuild, unchanged inputs",
        &args.paths,
        &scratch.path().join("unchanged"),
    )?;

    // A copy of the sources with one change in the appliance crate: only the cross build and the
    // per-image steps run again.
    let copy = scratch.path().join("workspace");
    tools::copy_items(&args.paths.workspace, crate::cross::WORKSPACE, &copy)?;
    tools::copy_items(&args.paths.workspace, &["overlays", "board-configs"], &copy)?;
    let lib = copy.join("appliance/src/lib.rs");
    let mut text = std::fs::read_to_string(&lib)?;
    text.push_str(&format!("\n// bench change {}\n", std::process::id()));
    std::fs::write(&lib, text)?;
    let changed = Paths {
        workspace: copy,
        ..args.paths.clone()
    };
    timed(
        "rebuild, appliance code changed",
        &changed,
        &scratch.path().join("appliance"),
    )?;

    let m = &outputs.manifest.image;
    // Same inputs must give the same image whatever the cache held: the sha256 column shows it.
    println!("\n| build ({}) | seconds | image sha256 |", args.board);
    println!("|---|---:|---|");
    for row in &rows {
        println!(
            "| {} | {:.1} | {}… |",
            row.what,
            row.seconds,
            &row.sha256[..16]
        );
    }
    let raw = m.size_bytes as f64;
    println!("\n| output | MiB | vs raw image (dd writes all of it) |");
    println!("|---|---:|---:|");
    println!("| raw image (.img) | {:.0} | 1.00 |", raw / 1048576.0);
    println!(
        "| bmap-mapped blocks (what bmaptool writes) | {:.0} | {:.2} |",
        m.mapped_bytes as f64 / 1048576.0,
        m.mapped_bytes as f64 / raw
    );
    println!(
        "| compressed (.img.zst) | {:.0} | {:.2} |",
        m.compressed_bytes as f64 / 1048576.0,
        m.compressed_bytes as f64 / raw
    );
    Ok(())
}
