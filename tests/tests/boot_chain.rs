//! Every board's boot chain, without hardware and without a full build: `image-builder boot-area` makes
//! the partition table, the bootloader area and the FAT boot partition from a small root filesystem tree,
//! with the same code as `build`. The tree holds Debian's real raspi-firmware and stand-ins for the kernel,
//! initramfs and device trees; U-Boot is Debian's real build, downloaded with apt-get. The vendor-signed
//! stages Debian cannot ship (Exynos BL1/BL2/TZSW, Amlogic's FIP) are fake blobs of plausible size: the
//! test proves where bytes land, not that a board boots.

use std::path::{Path, PathBuf};
use std::process::Command;

use kituo_tests::*;

const SECTOR: usize = 512;
const FIRST_PARTITION: usize = 4 << 20;

/// Tests run in parallel threads; apt and the download cache are taken by one at a time.
static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The tools this test and the builder's boot-area need (Debian packages).
fn tools() {
    let _apt = APT.lock().unwrap_or_else(|e| e.into_inner());
    ensure_tools(&[
        ("mkimage", "u-boot-tools"),
        ("dumpimage", "u-boot-tools"),
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("dpkg-deb", "dpkg"),
    ]);
}

/// Downloads cache for this test, kept between runs.
fn deb_cache() -> PathBuf {
    let dir = workspace().join("target/boot-chain-debs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `package` for `arch` from Debian trixie, fetched with apt-get (a private apt root, so the host's own
/// apt configuration is untouched) unless it is already in the cache.
fn debian_deb(package: &str, arch: &str) -> PathBuf {
    let _apt = APT.lock().unwrap_or_else(|e| e.into_inner());
    let cache = deb_cache();
    let find = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
            })
    };
    if let Some(deb) = find() {
        return deb;
    }
    let root = cache.join(format!("apt-{arch}"));
    for sub in [
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(
        root.join("etc/apt/sources.list"),
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main contrib non-free-firmware\n",
    )
    .unwrap();
    let apt = |args: &[&str]| {
        let d = root.display();
        run(Command::new("apt-get")
            .args([
                "-q",
                "-o",
                &format!("Dir={d}"),
                "-o",
                &format!("Dir::State::status={d}/var/lib/dpkg/status"),
            ])
            .args([
                "-o",
                &format!("APT::Architecture={arch}"),
                "-o",
                &format!("APT::Architectures::={arch}"),
            ])
            .args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            ])
            .args(args)
            .current_dir(&cache));
    };
    apt(&["update"]);
    apt(&["download", package]);
    find().unwrap_or_else(|| {
        panic!(
            "apt-get download {package} left no .deb in {}",
            cache.display()
        )
    })
}

fn deb_file(deb: &Path, member: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    std::fs::read(dir.path().join(member.trim_start_matches('/'))).unwrap()
}

/// Deterministic filler bytes, different per name, standing in for a signed blob.
fn fake_blob(name: &str, len: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..len as u32)
        .map(|i| (seed.wrapping_add(i.wrapping_mul(2_654_435_761)) >> 13) as u8)
        .collect()
}

struct Case {
    work: PathBuf,
    configs: PathBuf,
    rootfs: PathBuf,
    board: String,
}

impl Case {
    /// A scratch copy of board-configs/ (so blobs and pins can be added) and an empty root tree.
    fn new(board: &str, test: &str) -> Case {
        let work = artifacts(&format!("boot-chain/{test}"));
        let configs = work.join("board-configs");
        std::fs::create_dir_all(&configs).unwrap();
        for entry in std::fs::read_dir(workspace().join("board-configs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "ini") {
                std::fs::copy(&path, configs.join(path.file_name().unwrap())).unwrap();
            }
        }
        let rootfs = work.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        Case {
            work,
            configs,
            rootfs,
            board: board.to_owned(),
        }
    }

    fn ini(&self) -> PathBuf {
        self.configs.join(format!("{}.ini", self.board))
    }

    fn ini_text(&self) -> String {
        std::fs::read_to_string(self.ini()).unwrap()
    }

    /// Puts `bytes` at the board config's `source=blobs/...` path and pins its sha256 there.
    fn add_blob(&self, rel: &str, bytes: &[u8]) {
        let path = self.configs.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let sha = sha256(&path);
        let text = self.ini_text().replace(
            &format!("source={rel} sha256=\n"),
            &format!("source={rel} sha256={sha}\n"),
        );
        assert!(
            text.contains(&sha),
            "{} names no unpinned source={rel}",
            self.ini().display()
        );
        std::fs::write(self.ini(), text).unwrap();
    }

    /// A stand-in for each [boot-files] glob that the tree does not match yet: '*' in a folder becomes a
    /// version, in the file name nothing.
    fn fake_boot_files(&self) {
        let text = self.ini_text();
        let section = text
            .split("[boot-files]")
            .nth(1)
            .unwrap()
            .split("\n[")
            .next()
            .unwrap();
        for line in section
            .lines()
            .filter(|l| !l.starts_with(';') && l.contains('='))
        {
            let glob = line.split_once('=').unwrap().1.trim();
            if glob.ends_with("/*") {
                continue; // a whole folder: real files (raspi-firmware) go there
            }
            let (dir, file) = glob.rsplit_once('/').unwrap();
            let path = format!(
                "{}/{}",
                dir.replace('*', "6.12.0-test"),
                file.replace('*', "")
            );
            let dest = self.rootfs.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(&dest, format!("stand-in for {glob}\n")).unwrap();
        }
    }

    fn boot_area(&self) -> std::process::Output {
        Command::new(image_builder())
            .args(["boot-area", "--quiet", "--board", &self.board, "--rootfs"])
            .arg(&self.rootfs)
            .arg("--out")
            .arg(self.image())
            .arg("--board-configs")
            .arg(&self.configs)
            .arg("--cache")
            .arg(self.work.join("cache"))
            .arg("--state")
            .arg(self.work.join("state"))
            .output()
            .expect("run image-builder")
    }

    fn build(&self) -> Card {
        let out = self.boot_area();
        assert!(
            out.status.success(),
            "boot-area {} failed:\n{}",
            self.board,
            String::from_utf8_lossy(&out.stderr)
        );
        Card::read(&self.image(), &self.work)
    }

    fn image(&self) -> PathBuf {
        self.work.join("card.img")
    }

    /// Seeds the builder's blob cache with a .deb fetched by apt-get, checking it is the one the board
    /// config pins (a newer Debian point release would need the pin refreshed).
    fn seed_deb_cache(&self, deb: &Path) -> String {
        let sha = sha256(deb);
        assert!(
            self.ini_text().contains(&format!("sha256={sha} member=")),
            "{} does not pin {} (sha256 {sha}): Debian has moved on, update the pin",
            self.ini().display(),
            deb.display()
        );
        let blobs = self.work.join("cache/blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::copy(deb, blobs.join(&sha)).unwrap();
        sha
    }
}

/// The first 4 MiB of a card image and its FAT boot partition's files.
struct Card {
    head: Vec<u8>,
    image: PathBuf,
    scratch: PathBuf,
}

impl Card {
    fn read(image: &Path, work: &Path) -> Card {
        use std::io::Read;
        let mut head = vec![0u8; FIRST_PARTITION];
        std::fs::File::open(image)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        Card {
            head,
            image: image.to_owned(),
            scratch: work.to_owned(),
        }
    }

    /// (type, start sector, sectors) of the primary partitions, after checking the MBR signature.
    fn partitions(&self) -> Vec<(u8, u32, u32)> {
        assert_eq!(self.head[510..512], [0x55, 0xaa], "MBR signature");
        self.head[446..510]
            .chunks_exact(16)
            .map(|e| {
                (
                    e[4],
                    u32::from_le_bytes(e[8..12].try_into().unwrap()),
                    u32::from_le_bytes(e[12..16].try_into().unwrap()),
                )
            })
            .filter(|&(kind, _, _)| kind != 0)
            .collect()
    }

    fn disk_id(&self) -> String {
        format!(
            "{:08x}",
            u32::from_le_bytes(self.head[440..444].try_into().unwrap())
        )
    }

    /// A file of the FAT boot partition (partition 1), read with mtools.
    fn file(&self, name: &str) -> Vec<u8> {
        let start = self.partitions()[0].1 as usize * SECTOR;
        let out = self.scratch.join("extracted");
        let _ = std::fs::remove_file(&out);
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{start}", self.image.display()))
            .arg(format!("::/{name}"))
            .arg(&out));
        std::fs::read(&out).unwrap()
    }

    fn text(&self, name: &str) -> String {
        String::from_utf8(self.file(name)).unwrap()
    }

    fn assert_at(&self, sector: usize, expected: &[u8], what: &str) {
        let at = sector * SECTOR;
        assert!(
            self.head[at..at + expected.len()] == *expected,
            "{what}: the {} bytes at sector {sector} are not the blob's",
            expected.len()
        );
    }

    /// The table the builder writes: boot (FAT32 LBA), root A and data, the first at 4 MiB, behind
    /// everything the bootloader area holds; and the kernel's root= is root A of this very disk.
    fn assert_table(&self, bootloader_end: usize) {
        let parts = self.partitions();
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0].0, 0x0c, "boot partition type");
        // U-Boot's distro boot scans the partitions flagged bootable first.
        assert_eq!(self.head[446], 0x80, "boot partition flagged bootable");
        assert_eq!(parts[0].1 as usize * SECTOR, FIRST_PARTITION);
        assert!(
            parts
                .iter()
                .all(|p| p.1 as usize * SECTOR >= bootloader_end),
            "a partition starts inside the bootloader area (ends at {bootloader_end}): {parts:?}"
        );
        assert!(
            parts.windows(2).all(|w| w[0].1 + w[0].2 <= w[1].1),
            "{parts:?}"
        );
        let cmdline = self.text("cmdline.txt");
        assert!(
            cmdline.contains(&format!("root=PARTUUID={}-02 rw", self.disk_id())),
            "cmdline.txt {cmdline:?} does not name partition 2 of disk {}",
            self.disk_id()
        );
    }

    /// boot.scr is a U-Boot script image for `arch` whose payload is the boot.cmd next to it, and boot.cmd
    /// boots with the same command line as cmdline.txt.
    fn assert_boot_script(&self, arch: &str, boot_command: &str) {
        let scr = self.scratch.join("boot.scr");
        std::fs::write(&scr, self.file("boot.scr")).unwrap();
        let listing = stdout(&run(Command::new("mkimage").arg("-l").arg(&scr)));
        assert!(
            listing.contains("Script") && listing.contains(arch),
            "mkimage -l boot.scr:\n{listing}"
        );
        let payload = self.scratch.join("boot.scr.payload");
        run(Command::new("dumpimage")
            .args(["-T", "script", "-p", "0", "-o"])
            .arg(&payload)
            .arg(&scr));
        let cmd = self.text("boot.cmd");
        assert!(
            listing.contains(&format!("Image 0: {} Bytes", cmd.len())),
            "boot.scr's script is not boot.cmd's size:\n{listing}"
        );
        // dumpimage 2023.01 keeps the script's length table (big-endian length, zero word) in front.
        let payload = std::fs::read(&payload).unwrap();
        let table = [&(cmd.len() as u32).to_be_bytes()[..], &[0; 4]].concat();
        let script = payload.strip_prefix(&table[..]).unwrap_or(&payload);
        assert_eq!(
            String::from_utf8_lossy(script),
            cmd,
            "boot.scr does not hold boot.cmd"
        );
        let cmdline = self.text("cmdline.txt");
        assert!(
            cmd.contains(&format!("setenv bootargs \"{}\"", cmdline.trim_end())),
            "boot.cmd:\n{cmd}\ncmdline.txt: {cmdline}"
        );
        for line in ["} vmlinuz", "} initrd.img", "dtbs/${fdtfile}", boot_command] {
            assert!(cmd.contains(line), "boot.cmd lacks {line:?}:\n{cmd}");
        }
    }
}

/// (piece name, sector, source path under board-configs/, size) of the Hardkernel blobs for each board.
fn exynos(
    board: &str,
    member: &str,
    blobs: &[(&str, usize, &str, usize)],
    env_sector: usize,
    dtb: &str,
    console: &str,
) {
    tools();
    let case = Case::new(board, board);
    let deb = debian_deb("u-boot-exynos-binaries", "armhf");
    case.seed_deb_cache(&deb);
    let uboot = deb_file(&deb, member);
    for (name, _, rel, len) in blobs {
        case.add_blob(rel, &fake_blob(name, *len));
    }
    case.fake_boot_files();
    let card = case.build();

    for (name, sector, rel, len) in blobs {
        card.assert_at(*sector, &fake_blob(name, *len), rel);
    }
    card.assert_at(63, &uboot, member);
    assert!(
        63 * SECTOR + uboot.len() <= 2111 * SECTOR,
        "U-Boot reaches into TZSW"
    );
    assert!(
        card.head[..440].iter().all(|&b| b == 0),
        "Exynos writes nothing into sector 0"
    );
    let env = env_sector * SECTOR;
    assert!(
        card.head[env..env + 16384].iter().all(|&b| b == 0),
        "U-Boot environment cleared"
    );
    card.assert_table(env + 16384);
    card.assert_boot_script(
        "ARM Linux",
        "bootz ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr_r}",
    );
    let cmd = card.text("boot.cmd");
    assert!(cmd.contains(&format!("setenv fdtfile {dtb}")), "{cmd}");
    assert!(card
        .text("cmdline.txt")
        .starts_with(&format!("console={console},115200n8 ")));
    assert!(card.text(&format!("dtbs/{dtb}")).starts_with("stand-in"));
    assert!(card.text("vmlinuz").starts_with("stand-in"));
}

#[test]
fn odroid_u3_exynos_4412() {
    exynos(
        "odroid-u3",
        "/usr/lib/u-boot/odroid/u-boot.bin",
        &[
            ("bl1", 1, "blobs/odroid-u3/bl1.HardKernel", 15 * 1024),
            ("bl2", 31, "blobs/odroid-u3/bl2.HardKernel", 14 * 1024),
            ("tzsw", 2111, "blobs/odroid-u3/tzsw.HardKernel", 156 * 1024),
        ],
        2560,
        "exynos4412-odroidu3.dtb",
        "ttySAC1",
    );
}

#[test]
fn odroid_xu4_exynos_5422() {
    exynos(
        "odroid-xu4",
        "/usr/lib/u-boot/odroid-xu3/u-boot.bin",
        &[
            ("bl1", 1, "blobs/odroid-xu4/bl1.bin.hardkernel", 15 * 1024),
            (
                "bl2",
                31,
                "blobs/odroid-xu4/bl2.bin.hardkernel.1mb_uboot",
                14 * 1024,
            ),
            (
                "tzsw",
                2111,
                "blobs/odroid-xu4/tzsw.bin.hardkernel",
                256 * 1024,
            ),
        ],
        6272,
        "exynos5422-odroidxu4.dtb",
        "ttySAC2",
    );
}

/// A stand-in FIP image laid out like amlogic-boot-fip's u-boot.bin.sd.bin: a first sector whose first
/// 440 bytes are boot code, signed stages, then U-Boot (Debian's real one where Debian has it).
fn amlogic(board: &str, debian_member: Option<&str>, dtb: &str) {
    tools();
    let case = Case::new(board, board);
    let uboot = match debian_member {
        Some(member) => deb_file(&debian_deb("u-boot-amlogic-binaries", "arm64"), member),
        None => fake_blob("mainline u-boot for the C4", 700 * 1024),
    };
    let mut fip = fake_blob("fip boot sector and signed stages", 96 * SECTOR + 64 * 1024);
    fip.extend_from_slice(&uboot);
    // The same file backs both pieces (boot code and the rest): add_blob pins both lines.
    case.add_blob(&format!("blobs/{board}/u-boot.bin.sd.bin"), &fip);
    case.fake_boot_files();
    let card = case.build();

    card.assert_at(0, &fip[..440], "FIP boot code");
    card.assert_at(1, &fip[SECTOR..], "FIP from its second sector");
    let uboot_sector = fip.len() / SECTOR - uboot.len() / SECTOR;
    card.assert_at(uboot_sector, &uboot, "U-Boot inside the FIP");
    assert_ne!(
        card.head[440..446],
        fip[440..446],
        "the FIP's own bytes 440.. must not replace the disk signature"
    );
    card.assert_table(fip.len());
    card.assert_boot_script(
        "AArch64 Linux",
        "booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr_r}",
    );
    assert!(card
        .text("boot.cmd")
        .contains(&format!("setenv fdtfile {dtb}")));
    assert!(card.text(&format!("dtbs/{dtb}")).starts_with("stand-in"));
    assert!(card
        .text("cmdline.txt")
        .starts_with("console=ttyAML0,115200n8 "));
}

#[test]
fn odroid_c2_amlogic_s905() {
    amlogic(
        "odroid-c2",
        Some("/usr/lib/u-boot/odroid-c2/u-boot.bin"),
        "amlogic/meson-gxbb-odroidc2.dtb",
    );
}

#[test]
fn odroid_n2_amlogic_s922x() {
    amlogic(
        "odroid-n2",
        Some("/usr/lib/u-boot/odroid-n2/u-boot.bin"),
        "amlogic/meson-g12b-odroid-n2.dtb",
    );
}

#[test]
fn odroid_c4_amlogic_s905x3() {
    // Debian builds no U-Boot for the C4: the whole FIP is a stand-in.
    amlogic("odroid-c4", None, "amlogic/meson-sm1-odroid-c4.dtb");
}

/// Raspberry Pi: nothing in the bootloader area; the firmware Debian ships, config.txt and cmdline.txt
/// as each model's firmware reads them.
fn rpi(board: &str, arm64: bool, firmware: &[&str], dtbs: &[&str], console: &str) {
    tools();
    let case = Case::new(board, board);
    let deb = debian_deb("raspi-firmware", "arm64");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&case.rootfs));
    case.fake_boot_files();
    let card = case.build();

    assert!(
        card.head[..440]
            .iter()
            .chain(&card.head[SECTOR..])
            .all(|&b| b == 0),
        "a Raspberry Pi card has no bootloader bytes"
    );
    card.assert_table(SECTOR);
    for name in firmware {
        let real = std::fs::read(case.rootfs.join("usr/lib/raspi-firmware").join(name)).unwrap();
        assert!(
            card.file(name) == real,
            "{name} on the boot partition is not Debian's"
        );
    }
    for dtb in dtbs {
        assert!(card.text(dtb).starts_with("stand-in"), "{dtb}");
    }
    let config = card.text("config.txt");
    let lines: Vec<&str> = config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        lines.contains(&"arm_64bit=1"),
        arm64,
        "arm_64bit in config.txt:\n{config}"
    );
    for line in [
        "kernel=vmlinuz",
        "initramfs initrd.img followkernel",
        "upstream_kernel=1",
        "enable_uart=1",
    ] {
        assert!(lines.contains(&line), "config.txt lacks {line}:\n{config}");
    }
    assert!(
        card.text("vmlinuz").starts_with("stand-in")
            && card.text("initrd.img").starts_with("stand-in")
    );
    let cmdline = card.text("cmdline.txt");
    assert!(
        cmdline.starts_with(&format!("console={console},115200 console=tty1 ")),
        "{cmdline}"
    );
    assert_eq!(
        cmdline.lines().count(),
        1,
        "the firmware reads one line: {cmdline:?}"
    );
}

#[test]
fn rpi2_bcm2836() {
    rpi(
        "rpi2",
        false,
        &["bootcode.bin", "start.elf", "fixup.dat"],
        &["bcm2836-rpi-2-b.dtb"],
        "ttyAMA0",
    );
}

#[test]
fn rpi3_bcm2837() {
    rpi(
        "rpi3",
        true,
        &["bootcode.bin", "start.elf", "fixup.dat"],
        &["bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb"],
        "ttyS1",
    );
}

#[test]
fn rpi4_bcm2711() {
    rpi(
        "rpi4",
        true,
        &["start4.elf", "fixup4.dat"],
        &["bcm2711-rpi-4-b.dtb"],
        "ttyS1",
    );
}

#[test]
fn rpi5_bcm2712() {
    rpi("rpi5", true, &[], &["bcm2712-rpi-5-b.dtb"], "ttyAMA10");
}

#[test]
fn missing_or_altered_blobs_stop_with_a_hint() {
    tools();
    let case = Case::new("odroid-u3", "unpinned-blobs");
    case.fake_boot_files();
    // As shipped: Hardkernel's blobs are not pinned, because they cannot be fetched and checked here.
    let out = case.boot_area();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bootloader piece 'bl1' of board odroid-u3")
            && err.contains("is not pinned")
            && err.contains("hint:"),
        "{err}"
    );
    assert!(
        !case.image().exists(),
        "nothing is written before the blobs are there"
    );

    case.add_blob(
        "blobs/odroid-u3/bl1.HardKernel",
        &fake_blob("bl1", 15 * 1024),
    );
    std::fs::write(
        case.configs.join("blobs/odroid-u3/bl1.HardKernel"),
        b"altered",
    )
    .unwrap();
    let err = String::from_utf8_lossy(&case.boot_area().stderr).into_owned();
    assert!(
        err.contains("bl1.HardKernel has sha256") && err.contains("but its config pins"),
        "{err}"
    );
}
