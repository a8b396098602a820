//! The boot chain of a board: what goes onto the FAT boot partition (kernel, initramfs, device trees,
//! firmware, `cmdline.txt`, U-Boot's `boot.scr`) and what goes into the bootloader area before the first
//! partition (U-Boot and the SoC vendor's signed stages at the sectors the SoC's boot ROM reads).
//! Everything board-specific is data in the board config: `[boot-files]`, `[boot] needs`, `[bootloader]`.
//!
//! Boot flows: `rpi` (the firmware on the boot partition reads config.txt), `u-boot` (the boot ROM loads
//! U-Boot from the bootloader area; U-Boot runs boot.scr), `direct` (QEMU is handed kernel and initrd).

mod fetch;
mod install;
pub mod piece;
mod script;

pub use fetch::{fetch, pinned, Blob};
pub use install::install;

use std::path::Path;

use anyhow::{bail, Result};

use crate::board::Board;
use crate::disk::Layout;

/// The kernel command line: the board's, plus root slot A by PARTUUID (the MBR disk id the builder
/// writes, and the partition number), read-write.
pub fn kernel_cmdline(board: &Board, layout: &Layout) -> String {
    format!(
        "{} root=PARTUUID={} rw",
        board.cmdline,
        layout.part("root-a").partuuid
    )
}

/// Tools only some boards need, checked before anything slow starts: (command, Debian package).
pub fn required_tools(board: &Board) -> Vec<(&'static str, &'static str)> {
    let mut tools = Vec::new();
    if board.boot_method == "u-boot" {
        tools.push(("mkimage", "u-boot-tools"));
    }
    if board.bootloader.iter().any(|p| p.member.is_some()) {
        tools.push(("dpkg-deb", "dpkg"));
    }
    tools
}

/// Completes the staged boot partition `boot` once the overlays are applied: the board's boot files
/// out of the root filesystem `root`, `cmdline.txt`, the compiled U-Boot script, and then a check that
/// every file the board's firmware needs is there.
pub fn stage(board: &Board, root: &Path, boot: &Path, layout: &Layout, epoch: u64) -> Result<()> {
    crate::overlay::boot_files(board, root, boot)?;
    std::fs::write(
        boot.join("cmdline.txt"),
        format!("{}\n", kernel_cmdline(board, layout)),
    )?;
    if board.boot_method == "u-boot" {
        script::compile(boot, &board.arch, epoch)?;
    }
    check_needs(board, boot)
}

fn check_needs(board: &Board, boot: &Path) -> Result<()> {
    let missing: Vec<_> = board
        .boot_needs
        .iter()
        .filter(|f| !boot.join(f.trim_start_matches('/')).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: [boot] needs {}, but the boot partition would not have {}\nhint: add them to [boot-files] \
             or overlays/{}/boot/",
            board.file.display(),
            missing.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            board.family
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_needed_file_names_itself_and_where_to_add_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.ini"),
            "[board]\nname = b\narch = arm64\nfamily = rpi\n[boot]\nmethod = rpi\nneeds = start4.elf, dtbs/x.dtb\n",
        )
        .unwrap();
        let board = Board::load(dir.path(), "b").unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir_all(boot.join("dtbs")).unwrap();
        std::fs::write(boot.join("start4.elf"), "").unwrap();
        let e = check_needs(&board, &boot).unwrap_err().to_string();
        assert!(
            e.contains("'dtbs/x.dtb'") && !e.contains("'start4.elf'"),
            "{e}"
        );
        assert!(
            e.contains("b.ini") && e.contains("overlays/rpi/boot/"),
            "{e}"
        );
        std::fs::write(boot.join("dtbs/x.dtb"), "").unwrap();
        check_needs(&board, &boot).unwrap();
    }
}
