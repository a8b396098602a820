//! `image-builder flash --device DEV IMAGE`: writes only the mapped blocks of a card image (plain or
//! zstd-compressed) to a card, reads them back from the card to verify them, and optionally puts a
//! center's configuration on the boot partition. Everything that could refuse the flash (bmap, center
//! config, device checks) is checked before the first byte is written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bmap::Bmap;
use crate::flash::{self, boot, Source};
use crate::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The card: a whole block device such as /dev/sdX or /dev/mmcblk0 (not a partition).
    #[arg(long)]
    pub device: PathBuf,
    /// The card image: kituo-<board>-<center>.img or .img.zst.
    pub image: PathBuf,
    /// The block map; default: kituo-<board>-<center>.bmap beside the image.
    #[arg(long)]
    pub bmap: Option<PathBuf>,
    /// A center config to put on the boot partition as center.ini (checked before anything is written).
    #[arg(long)]
    pub center: Option<PathBuf>,
    /// Allow --device to be a regular file (an image file to write into; tests use it).
    #[arg(long)]
    pub allow_file: bool,
}

pub fn run(args: &Args, progress: &Progress) -> Result<()> {
    let bmap_path = match &args.bmap {
        Some(path) => path.clone(),
        None => bmap_beside(&args.image)?,
    };
    let bmap = Bmap::load(&bmap_path)?;
    if let Some(center) = &args.center {
        boot::check_center(center)?;
    }
    let mut source = Source::open(&args.image, bmap.image_size)?;
    let target =
        flash::open_for_flash(&args.device, bmap.image_size, args.allow_file, &args.image)?;

    flash::write(&mut source, &bmap, &target, progress)?;
    let verified = flash::verify(&target.path, &bmap, None, progress)?;
    let center = match &args.center {
        Some(center) => {
            let step = progress.step(&format!("write {}", boot::CENTER_FILE));
            let partition = boot::install_center(&target, center)?;
            step.finish();
            format!(
                "; {} copied to partition {partition} and read back",
                center.display()
            )
        }
        None => String::new(),
    };
    eprintln!(
        "flashed {} to {}: {:.1} MiB in {} ranges of a {:.1} MiB image, verified by reading back{}{center}",
        args.image.display(),
        flash::shown(&target.path),
        verified.bytes as f64 / 1048576.0,
        verified.ranges,
        bmap.image_size as f64 / 1048576.0,
        if verified.direct { " (O_DIRECT)" } else { "" },
    );
    Ok(())
}

/// `kituo-rpi4-example.bmap` for `kituo-rpi4-example.img` or `.img.zst`, as the builder names them;
/// `<image>.bmap` as bmaptool names them.
pub fn bmap_beside(image: &Path) -> Result<PathBuf> {
    let name = image
        .file_name()
        .with_context(|| format!("{} is not a file name", image.display()))?
        .to_string_lossy();
    let stem = name.strip_suffix(".zst").unwrap_or(&name);
    let stem = stem.strip_suffix(".img").unwrap_or(stem);
    let candidates = [
        image.with_file_name(format!("{stem}.bmap")),
        image.with_file_name(format!("{name}.bmap")),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "no bmap beside {} (looked for {} and {})\nhint: pass --bmap FILE",
        image.display(),
        candidates[0].display(),
        candidates[1].display()
    )
}
