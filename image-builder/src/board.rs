//! Board configs (`board-configs/<board>.ini`): architecture, kernel/firmware/bootloader packages, how the
//! board boots, which files go onto the boot partition, and the partition sizes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use appliance::ini::{ConfigError, Document, Key, Schema, Section};
use serde::Serialize;

use crate::bootloader::piece::Piece;

pub const SCHEMA: Schema = &[
    Section {
        name: "board",
        help: "What the board is.",
        free_keys: false,
        keys: &[
            Key::required("name", "board name; must match the file name"),
            Key::optional("description", "", "one line for people"),
            Key::required("arch", "Debian architecture: arm64 or armhf"),
            Key::required(
                "family",
                "overlay family applied after overlays/common: qemu, rpi, odroid-exynos, odroid-amlogic",
            ),
            Key::optional("ram_mib", "1024", "memory of the smallest variant, MiB: services are sized for it"),
            Key::optional("console", "ttyS0", "serial console device"),
        ],
    },
    Section {
        name: "packages",
        help: "Board-specific Debian packages, comma-separated.",
        free_keys: false,
        keys: &[
            Key::optional("kernel", "", "kernel packages"),
            Key::optional("firmware", "", "firmware packages"),
            Key::optional("bootloader", "", "bootloader packages"),
        ],
    },
    Section {
        name: "boot",
        help: "How the board starts the kernel.",
        free_keys: false,
        keys: &[
            Key::required("method", "direct (QEMU -kernel), rpi (firmware + config.txt), u-boot (U-Boot runs boot.scr, compiled from the overlay's boot.cmd)"),
            Key::optional("cmdline", "rootwait", "kernel command line; the builder adds root="),
            Key::optional(
                "needs",
                "",
                "files the board's firmware or bootloader needs on the boot partition, comma-separated; the build fails when one is missing",
            ),
            Key::optional(
                "dtb",
                "",
                "u-boot: device tree (under dtbs/ on the boot partition) boot.scr loads when U-Boot does not name one in ${fdtfile}",
            ),
        ],
    },
    Section {
        name: "boot-files",
        help: "Files copied onto the boot partition: destination = glob in the root filesystem.",
        free_keys: true,
        keys: &[],
    },
    Section {
        name: "bootloader",
        help: "Pieces written before the first partition, where the SoC's boot ROM reads them: \
               name = sector=N source=URL|path|zeros sha256=HEX [member=/file/in/deb] [skip=BYTES] [bytes=N].",
        free_keys: true,
        keys: &[],
    },
    Section {
        name: "partitions",
        help: "Partition sizes in MiB.",
        free_keys: false,
        keys: &[
            Key::optional("boot_mib", "128", "FAT boot partition"),
            Key::optional("root_mib", "2048", "each root slot (A in the image, B made on first boot)"),
            Key::optional("data_mib", "128", "data partition in the image; grown to fill the card on first boot"),
        ],
    },
];

pub const ARCHES: &[&str] = &["arm64", "armhf"];
pub const FAMILIES: &[&str] = &["qemu", "rpi", "odroid-exynos", "odroid-amlogic"];

#[derive(Debug, Clone, Serialize)]
pub struct BootFile {
    /// Path on the boot partition; ending in '/' means "into this directory".
    pub dest: String,
    /// Absolute glob in the root filesystem.
    pub source: String,
    #[serde(skip)]
    pub line: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub name: String,
    pub description: String,
    pub arch: String,
    pub family: String,
    pub ram_mib: u64,
    pub console: String,
    pub packages: Vec<String>,
    pub boot_method: String,
    pub cmdline: String,
    pub boot_files: Vec<BootFile>,
    /// Files that must be on the boot partition once it is staged.
    pub boot_needs: Vec<String>,
    /// Fallback device tree for boot.scr, relative to dtbs/.
    pub dtb: String,
    /// The bootloader area, in config order.
    pub bootloader: Vec<Piece>,
    pub boot_mib: u64,
    pub root_mib: u64,
    pub data_mib: u64,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Board {
    /// Loads `board-configs/<name>.ini` (or a path to an INI file).
    pub fn load(configs: &Path, name_or_path: &str) -> Result<Self, ConfigError> {
        let path = if name_or_path.ends_with(".ini") {
            PathBuf::from(name_or_path)
        } else {
            configs.join(format!("{name_or_path}.ini"))
        };
        let doc = Document::load(&path, SCHEMA)?;
        let name = doc.get("board", "name").to_owned();
        if path.file_stem().and_then(|s| s.to_str()) != Some(name.as_str()) {
            return Err(doc.error(
                "board",
                "name",
                format!("'{name}' does not match the file name {}", path.display()),
            ));
        }
        let mut packages = Vec::new();
        for key in ["kernel", "firmware", "bootloader"] {
            packages.extend(doc.list("packages", key));
        }
        let boot_files = doc
            .free_entries("boot-files")
            .into_iter()
            .map(|(dest, source, line)| {
                if !source.starts_with('/') || dest.contains("..") {
                    return Err(doc.error(
                        "boot-files",
                        &dest,
                        "expected: destination = /absolute/glob",
                    ));
                }
                Ok(BootFile { dest, source, line })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bootloader = doc
            .free_entries("bootloader")
            .into_iter()
            .map(|(name, value, line)| {
                Piece::parse(&name, &value, line).map_err(|m| doc.error("bootloader", &name, m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Board {
            description: doc.get("board", "description").to_owned(),
            arch: doc.one_of("board", "arch", ARCHES)?,
            family: doc.one_of("board", "family", FAMILIES)?,
            ram_mib: doc.int_in("board", "ram_mib", 256..=65536)?,
            console: doc.get("board", "console").to_owned(),
            packages,
            boot_method: doc.one_of("boot", "method", &["direct", "rpi", "u-boot"])?,
            cmdline: doc.get("boot", "cmdline").to_owned(),
            boot_files,
            boot_needs: doc.list("boot", "needs"),
            dtb: doc.get("boot", "dtb").to_owned(),
            bootloader,
            boot_mib: doc.int_in("partitions", "boot_mib", 64..=2048)?,
            root_mib: doc.int_in("partitions", "root_mib", 512..=16384)?,
            data_mib: doc.int_in("partitions", "data_mib", 32..=16384)?,
            file: path,
            name,
        })
    }

    /// Every board config in the directory, sorted by name.
    pub fn all(configs: &Path) -> Result<Vec<Board>> {
        let mut boards = Vec::new();
        for entry in std::fs::read_dir(configs)? {
            let path = entry?.path();
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if path.extension().is_some_and(|e| e == "ini") && !stem.ends_with("center") {
                boards.push(Board::load(configs, &path.to_string_lossy())?);
            }
        }
        boards.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(boards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs")
    }

    #[test]
    fn every_board_in_the_repository_loads() {
        let boards = Board::all(&configs()).unwrap();
        let names: Vec<_> = boards.iter().map(|b| b.name.as_str()).collect();
        for expected in [
            "qemu-arm64",
            "rpi2",
            "rpi3",
            "rpi4",
            "rpi5",
            "odroid-u3",
            "odroid-xu4",
            "odroid-c2",
            "odroid-c4",
            "odroid-n2",
        ] {
            assert!(
                names.contains(&expected),
                "missing board {expected}: {names:?}"
            );
        }
        let rpi2 = boards.iter().find(|b| b.name == "rpi2").unwrap();
        assert_eq!(rpi2.arch, "armhf");
    }

    #[test]
    fn malformed_board_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(configs().join("qemu-arm64.ini"))
            .unwrap()
            .replace("arch = arm64", "arch = riscv");
        let path = dir.path().join("qemu-arm64.ini");
        std::fs::write(&path, &text).unwrap();
        let e = Board::load(dir.path(), "qemu-arm64").unwrap_err();
        let line = text.lines().position(|l| l.starts_with("arch =")).unwrap() + 1;
        assert_eq!(e.line, Some(line));
        assert!(
            e.to_string().contains("qemu-arm64.ini") && e.message.contains("'arch'"),
            "{e}"
        );
    }

    #[test]
    fn incomplete_board_names_the_missing_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.ini"),
            "[board]\nname = x\narch = arm64\n[boot]\nmethod = direct\n",
        )
        .unwrap();
        let e = Board::load(dir.path(), "x").unwrap_err();
        assert!(e.message.contains("needs key 'family'"), "{e}");
        assert_eq!(e.line, Some(1));
    }
}
