//! `image-builder verify --device DEV IMAGE`: checks a card against its image's bmap, range by range,
//! reading from the card itself; for a technician who wonders whether a card is still good.

use std::path::PathBuf;

use anyhow::Result;

use super::flash::bmap_beside;
use crate::bmap::Bmap;
use crate::flash;
use crate::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The card (or an image file).
    #[arg(long)]
    pub device: PathBuf,
    /// The card image it was flashed with; only its bmap is read.
    pub image: PathBuf,
    /// The block map; default: the one beside the image.
    #[arg(long)]
    pub bmap: Option<PathBuf>,
    /// Leave out the boot partition: on a card flashed with --center it holds center.ini, so it
    /// differs from the image by design.
    #[arg(long)]
    pub except_boot: bool,
}

pub fn run(args: &Args, progress: &Progress) -> Result<()> {
    let bmap_path = match &args.bmap {
        Some(path) => path.clone(),
        None => bmap_beside(&args.image)?,
    };
    let bmap = Bmap::load(&bmap_path)?;
    let skip = if args.except_boot {
        let card = flash::open_for_reading(&args.device)?;
        let boot = flash::boot::partition(&card.file, &card.path)?;
        Some((boot.start_bytes, boot.start_bytes + boot.size_bytes))
    } else {
        None
    };
    let verified = flash::verify(&args.device, &bmap, skip, progress)?;
    let skipped = match verified.skipped {
        0 => String::new(),
        n => format!(" ({n} ranges in the boot partition left out)"),
    };
    eprintln!(
        "{} matches {}: {} ranges, {:.1} MiB{skipped}",
        flash::shown(&args.device),
        bmap_path.display(),
        verified.ranges,
        verified.bytes as f64 / 1048576.0
    );
    Ok(())
}
