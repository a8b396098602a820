//! `image-builder boot-area`: only the part of a card the board's boot chain lives in (the partition
//! table, the bootloader area and the FAT boot partition), from an unpacked root filesystem tree, with
//! the same code `build` uses. It checks a board's boot chain in seconds instead of a full build; the
//! root and data partitions are left empty.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::build::{load_configs, template_context};
use crate::disk::{self, Layout};
use crate::lockfile::Lock;
use crate::progress::Progress;
use crate::secrets::Secrets;
use crate::{bootloader, overlay, tools, Paths};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Board name (a file in the board-configs folder) or a path to a board INI.
    #[arg(long)]
    pub board: String,
    /// A root filesystem tree holding what the board's [boot-files] name (kernel, device trees, firmware).
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Center config INI; default: the example center in board-configs/.
    #[arg(long)]
    pub center: Option<PathBuf>,
    /// The image file to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(args: &Args, progress: &Progress) -> Result<()> {
    let paths = &args.paths;
    let (board, _, center) = load_configs(paths, &args.board, args.center.as_deref())?;
    tools::check_installed(&[
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
    ])?;
    tools::check_installed(&bootloader::required_tools(&board))?;
    let epoch =
        Lock::load(&Lock::path_for(&paths.locks(), "trixie", &board.arch))?.source_date_epoch;
    // disk::assemble replaces the output file: never a device node or anything but a plain file.
    if let Ok(meta) = std::fs::symlink_metadata(&args.out) {
        anyhow::ensure!(
            meta.is_file(),
            "{} exists and is not a plain file: boot-area writes image files only",
            args.out.display()
        );
    }
    let blobs = bootloader::fetch(&board, &paths.cache)?;
    let secrets = Secrets::for_center(&paths.state, &center.id)?;

    let step = progress.step("boot area");
    let seed = format!("boot-area/{}/{}", board.name, center.id);
    let layout = Layout::new(&seed, board.boot_mib, board.root_mib, board.data_mib);
    let context = template_context(&board, &center, &secrets, &layout, None, "boot-area", epoch);
    let work = tempfile::tempdir()?;
    let (scratch_root, boot) = (work.path().join("root"), work.path().join("boot"));
    std::fs::create_dir_all(&scratch_root)?;
    std::fs::create_dir_all(&boot)?;
    // Overlays' rootfs/ files land in a scratch tree: the given root filesystem is only read.
    overlay::apply(
        &overlay::layers(&paths.overlays(), &board),
        &context,
        &scratch_root,
        &boot,
    )?;
    bootloader::stage(&board, &args.rootfs, &boot, &layout, epoch)?;
    overlay::clamp_mtimes(&boot, epoch)?;
    let boot_img = work.path().join("boot.vfat");
    disk::make_boot(&boot, &boot_img, layout.part("boot"), epoch)?;
    disk::assemble(&layout, &[(layout.part("boot"), &boot_img)], &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    bootloader::install(&blobs, &args.out)?;
    step.finish();
    Ok(())
}
