//! `image-builder lock`: resolve every board's package set against the Debian mirror and write one lock
//! file per architecture (the union over that architecture's boards).

use std::collections::BTreeMap;

use anyhow::Result;

use crate::apt::AptRoot;
use crate::board::{Board, ARCHES};
use crate::lockfile::Lock;
use crate::progress::Progress;
use crate::{rootfs, Paths};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this architecture (default: every architecture a board uses).
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(args: &Args, progress: &Progress) -> Result<()> {
    let paths = &args.paths;
    let boards = Board::all(&paths.board_configs())?;
    let suite = "trixie";
    for arch in ARCHES
        .iter()
        .filter(|a| args.arch.as_deref().is_none_or(|x| x == **a))
    {
        let step = progress.step(&format!("lock {suite}-{arch}"));
        let work = tempfile::tempdir()?;
        let apt = AptRoot::create(work.path(), suite, arch)?;
        let mut set = rootfs::arch_package_set(&paths.overlays(), &boards, arch)?;
        // Not installed: mmdebstrap's eatmydata hook unpacks it for the build only.
        set.extend(rootfs::BUILD_ONLY.iter().map(|p| (*p).to_owned()));
        let packages: BTreeMap<_, _> = apt
            .resolve(&set)?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let path = Lock::path_for(&paths.locks(), suite, arch);
        let previous = Lock::load(&path).ok();
        // Keep the old epoch when nothing changed, so an unchanged lock stays byte-identical.
        let source_date_epoch = match &previous {
            Some(prev) if prev.packages == packages => prev.source_date_epoch,
            _ => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
        };
        let lock = Lock {
            suite: suite.to_owned(),
            arch: (*arch).to_owned(),
            source_date_epoch,
            packages,
            path,
        };
        std::fs::create_dir_all(paths.locks())?;
        lock.save()?;
        step.finish_with(&format!(
            "{} packages -> {}",
            lock.packages.len(),
            lock.path.display()
        ));
    }
    Ok(())
}
