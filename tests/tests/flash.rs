//! `image-builder flash` and `verify` against real loop devices: only the mapped blocks reach the card,
//! the card is read back, center.ini lands on the boot partition, and every refusal (bad center config,
//! corrupt image, mounted device, the host's own disk, too small a device, a plain file) comes before a
//! byte is written. The test image is made here (sfdisk, mkfs.vfat, mtools, bmaptool), small enough
//! that the whole file runs in seconds.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kituo_tests::*;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
/// The boot partition's offset in the test image.
const BOOT: u64 = MIB;
const CMDLINE: &str = "console=ttyAMA0 root=PARTUUID=kituo-test\n";

fn tools() {
    ensure_tools(&[
        ("losetup", "mount"),
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mcopy", "mtools"),
        ("bmaptool", "bmap-tools"),
        ("zstd", "zstd"),
    ]);
}

/// A small card image as the builder lays one out: MBR, a FAT boot partition holding cmdline.txt, and a
/// second partition with data in a few places and holes between; its bmap made by bmaptool itself.
struct TestImage {
    dir: TempDir,
    img: PathBuf,
    zst: PathBuf,
    size: u64,
    /// Mapped byte ranges `[start, end)`, from the bmap.
    mapped: Vec<(u64, u64)>,
}

impl TestImage {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("kituo-test-flash.img");
        let size = 40 * MIB;
        File::create(&img).unwrap().set_len(size).unwrap();
        sfdisk(
            &img,
            "label: dos\nstart=2048, size=32768, type=c, bootable\nstart=34816, type=83\n",
        );
        run(Command::new("mkfs.vfat")
            .args(["--offset", "2048", "-n", "TESTBOOT"])
            .arg(&img)
            .arg("16384"));
        let cmdline = dir.path().join("cmdline.txt");
        std::fs::write(&cmdline, CMDLINE).unwrap();
        run(mtools("mcopy")
            .arg("-i")
            .arg(drive(&img))
            .arg(&cmdline)
            .arg("::/cmdline.txt"));
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        for (at, len) in [
            (18 * MIB, 300_000),
            (25 * MIB + 4096, 12_288),
            (39 * MIB, MIB),
        ] {
            f.write_all_at(&noise(at, len), at).unwrap();
        }
        drop(f);
        let bmap = dir.path().join("kituo-test-flash.bmap");
        run(Command::new("bmaptool")
            .args(["-q", "create", "-o"])
            .arg(&bmap)
            .arg(&img));
        let zst = img.with_extension("img.zst");
        run(Command::new("zstd")
            .args(["-q", "-f"])
            .arg(&img)
            .arg("-o")
            .arg(&zst));
        let mapped = bmap_ranges(&std::fs::read_to_string(&bmap).unwrap(), size);
        assert!(
            mapped.len() >= 4,
            "the test image has several ranges: {mapped:?}"
        );
        TestImage {
            dir,
            img,
            zst,
            size,
            mapped,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.img).unwrap()
    }

    /// The unmapped byte ranges up to `end`.
    fn holes(&self, end: u64) -> Vec<(u64, u64)> {
        let mut holes = Vec::new();
        let mut pos = 0;
        for &(start, stop) in &self.mapped {
            if start > pos {
                holes.push((pos, start));
            }
            pos = stop;
        }
        holes.push((pos, end));
        holes
    }
}

/// A loop device over a file in a temp folder, first filled with a pattern that no image holds, so
/// that untouched blocks are recognisable. Detached (and unmounted) on drop.
struct Card {
    _dir: TempDir,
    backing: PathBuf,
    dev: PathBuf,
    mount: Option<PathBuf>,
}

impl Card {
    fn new(size: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("card");
        std::fs::write(&backing, pattern(0, size)).unwrap();
        Self::attach(dir, backing)
    }

    fn attach(dir: TempDir, backing: PathBuf) -> Self {
        let out = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing));
        let card = Card {
            _dir: dir,
            backing,
            dev: PathBuf::from(stdout(&out).trim()),
            mount: None,
        };
        assert!(
            card.dev.to_string_lossy().starts_with("/dev/loop"),
            "{:?}",
            card.dev
        );
        card
    }

    /// What the card holds, read through the device.
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.dev).unwrap()
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        if let Some(point) = &self.mount {
            let _ = Command::new("umount").arg(point).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn image_builder_cmd(args: &[&str], paths: &[&Path]) -> (bool, String) {
    let out = Command::new(image_builder())
        .arg("--quiet")
        .args(args)
        .args(paths)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn flash(card: &Path, image: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["flash", "--device", card.to_str().unwrap()];
    args.extend_from_slice(extra);
    image_builder_cmd(&args, &[image])
}

fn verify(card: &Path, image: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["verify", "--device", card.to_str().unwrap()];
    args.extend_from_slice(extra);
    image_builder_cmd(&args, &[image])
}

fn assert_same_over(what: &str, card: &[u8], image: &[u8], ranges: &[(u64, u64)]) {
    for &(start, end) in ranges {
        let (s, e) = (start as usize, end as usize);
        if let Some(i) = (s..e).find(|&i| card[i] != image[i]) {
            panic!(
                "{what}: byte {i} (in {start}..{end}) is {:#04x} on the card, {:#04x} in the image",
                card[i], image[i]
            );
        }
    }
}

fn assert_untouched(card: &[u8], ranges: &[(u64, u64)]) {
    for &(start, end) in ranges {
        let expected = pattern(start, end - start);
        if let Some(i) = (0..expected.len()).find(|&i| card[start as usize + i] != expected[i]) {
            panic!(
                "byte {} (unmapped, in {start}..{end}) was written: it is {:#04x}, the pattern {:#04x}",
                start as usize + i,
                card[start as usize + i],
                expected[i]
            );
        }
    }
}

#[test]
fn writes_only_the_mapped_blocks_and_verifies_them() {
    tools();
    let image = TestImage::new();
    let card = Card::new(48 * MIB);
    let (ok, err) = flash(&card.dev, &image.img, &[]);
    assert!(ok, "flash failed:\n{err}");

    let bytes = card.bytes();
    assert_same_over("mapped", &bytes, &image.bytes(), &image.mapped);
    assert_untouched(&bytes, &image.holes(48 * MIB));
    let (ok, err) = verify(&card.dev, &image.img, &[]);
    assert!(ok && err.contains("matches"), "verify failed:\n{err}");
}

#[test]
fn flashes_a_compressed_image_and_puts_center_ini_on_the_boot_partition() {
    tools();
    let image = TestImage::new();
    let card = Card::new(40 * MIB);
    let center = image.dir.path().join("center.ini");
    let text = std::fs::read_to_string(workspace().join("board-configs/example-center.ini"))
        .unwrap()
        .replace("id = example", "id = test-flash");
    std::fs::write(&center, &text).unwrap();

    let (ok, err) = flash(
        &card.dev,
        &image.zst,
        &["--center", center.to_str().unwrap()],
    );
    assert!(ok, "flash failed:\n{err}");
    assert!(err.contains("copied to partition 1"), "{err}");
    assert_eq!(mtype(&card.dev, "center.ini"), text);
    assert_eq!(
        mtype(&card.dev, "cmdline.txt"),
        CMDLINE,
        "the boot partition's own files are kept"
    );

    // center.ini changed the boot partition after the flash verified it: verify says where, and
    // checks the rest when told to leave the boot partition out.
    let bytes = card.bytes();
    let beyond_boot: Vec<_> = image
        .mapped
        .iter()
        .copied()
        .filter(|r| r.0 >= 17 * MIB)
        .collect();
    assert_same_over("mapped, after boot", &bytes, &image.bytes(), &beyond_boot);
    let (ok, err) = verify(&card.dev, &image.zst, &[]);
    assert!(!ok && err.contains("the boot partition"), "{err}");
    let (ok, err) = verify(&card.dev, &image.zst, &["--except-boot"]);
    assert!(ok && err.contains("left out"), "{err}");
}

#[test]
fn a_malformed_center_config_is_refused_before_the_card_is_touched() {
    tools();
    let image = TestImage::new();
    let card = Card::new(48 * MIB);
    let center = image.dir.path().join("center.ini");
    let text = std::fs::read_to_string(workspace().join("board-configs/example-center.ini"))
        .unwrap()
        .replace("channel = 6", "channel = 6\ncolour = blue");
    std::fs::write(&center, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;

    let (ok, err) = flash(
        &card.dev,
        &image.img,
        &["--center", center.to_str().unwrap()],
    );
    assert!(!ok, "a bad center config was accepted");
    let expected = format!("center.ini:{line}: invalid key 'colour' in section [wifi]");
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");
    assert_untouched(&card.bytes(), &[(0, 48 * MIB)]);
}

#[test]
fn verify_names_the_range_of_a_corrupted_block_and_a_corrupt_image_is_refused() {
    tools();
    let image = TestImage::new();
    let card = Card::new(48 * MIB);
    let (ok, err) = flash(&card.dev, &image.img, &[]);
    assert!(ok, "flash failed:\n{err}");

    // Verify must read the card, not the page cache: with every block cached (and kept so by an open
    // descriptor: the kernel drops a block device's cache at its last close), flip a byte of the last
    // range in the loop device's backing file, behind the cache.
    let mut holder = File::open(&card.dev).unwrap();
    std::io::Read::read_to_end(&mut holder, &mut Vec::new()).unwrap();
    let flip = |file: &Path, at: u64| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .unwrap();
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[!byte[0]], at).unwrap();
        f.sync_all().unwrap();
    };
    let n = image.mapped.len();
    let expect_range = |err: &str, index: usize| {
        let (start, _) = image.mapped[index - 1];
        for expected in [
            format!("range {index} of {n} (blocks {}-", start / 4096),
            format!("offset {start:#x}"),
            "in partition 2".to_owned(),
        ] {
            assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");
        }
    };
    let (start, end) = image.mapped[n - 1];
    let last_at = start + (end - start) / 2;
    flip(&card.backing, last_at);
    let (ok, err) = verify(&card.dev, &image.img, &[]);
    assert!(
        !ok,
        "verify read the page cache and missed a flipped byte at {last_at}"
    );
    expect_range(&err, n);

    // A byte flipped through the block device in an earlier range: verify names that one, the first.
    let (start, end) = image.mapped[n - 3];
    flip(&card.dev, start + (end - start) / 3);
    let (ok, err) = verify(&card.dev, &image.img, &[]);
    assert!(!ok, "verify missed a byte flipped through the device");
    expect_range(&err, n - 2);

    // The same flip in the image itself: the flash refuses it, naming the range.
    flip(&image.img, last_at);
    let (ok, err) = flash(&card.dev, &image.img, &[]);
    assert!(!ok, "a corrupt image was flashed");
    let expected = format!("the image does not match its bmap in range {n} of {n}");
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");
}

#[test]
fn a_mounted_device_is_refused() {
    tools();
    let image = TestImage::new();
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("ext4");
    File::create(&backing).unwrap().set_len(48 * MIB).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&backing));
    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let mut card = Card::attach(tempfile::tempdir().unwrap(), backing);
    run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(&card.dev)
        .arg(&point));
    card.mount = Some(point.clone());
    let before = card.bytes();

    let (ok, err) = flash(&card.dev, &image.img, &[]);
    assert!(!ok, "a mounted device was flashed");
    let expected = format!(
        "refusing to write {}: it is mounted at {}",
        card.dev.display(),
        point.display()
    );
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");
    assert!(card.bytes() == before, "the mounted device was changed");
    drop(card);
    drop(dir);
}

#[test]
fn the_host_disk_a_small_device_and_a_plain_file_are_refused() {
    tools();
    let image = TestImage::new();

    // An image that maps nothing: were the check ever broken, this flash would still write no byte to
    // the host's disk.
    let empty = image.dir.path().join("empty.img");
    File::create(&empty).unwrap().set_len(4 * MIB).unwrap();
    run(Command::new("bmaptool")
        .args(["-q", "create", "-o"])
        .arg(image.dir.path().join("empty.bmap"))
        .arg(&empty));
    let root = root_disk();
    let (ok, err) = flash(&root, &empty, &[]);
    assert!(!ok, "the host's root disk {} was accepted", root.display());
    assert!(
        err.contains(&format!("refusing to write {}", root.display()))
            && err.contains("the host's root file system"),
        "{err}"
    );

    let small = Card::new(8 * MIB);
    let (ok, err) = flash(&small.dev, &image.img, &[]);
    assert!(!ok, "a device smaller than the image was accepted");
    assert!(err.contains("less than the image's"), "{err}");
    assert_untouched(&small.bytes(), &[(0, 8 * MIB)]);

    let file = image.dir.path().join("card.img");
    std::fs::write(&file, pattern(0, 48 * MIB)).unwrap();
    let (ok, err) = flash(&file, &image.img, &[]);
    assert!(!ok && err.contains("it is a regular file"), "{err}");
    assert_untouched(&std::fs::read(&file).unwrap(), &[(0, 48 * MIB)]);
    let (ok, err) = flash(&file, &image.img, &["--allow-file"]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&file).unwrap();
    assert_same_over("mapped", &bytes, &image.bytes(), &image.mapped);
    assert_untouched(&bytes, &image.holes(48 * MIB));

    // A file that is not there yet is made, as large as the image.
    let new = image.dir.path().join("new.img");
    let (ok, err) = flash(&new, &image.zst, &["--allow-file"]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::metadata(&new).unwrap().len(), image.size);
    let bytes = std::fs::read(&new).unwrap();
    assert_same_over("mapped", &bytes, &image.bytes(), &image.mapped);
}

/// The whole disk under the host's root file system, as /dev/NAME.
fn root_disk() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a root mount");
    let numbers = line.split(' ').nth(2).unwrap();
    let node = Path::new("/sys/dev/block")
        .join(numbers)
        .canonicalize()
        .unwrap_or_else(|e| panic!("the root file system ({line}) is not on a block device: {e}"));
    let disk = if node.join("partition").exists() {
        node.parent().unwrap().to_owned()
    } else {
        node
    };
    Path::new("/dev").join(disk.file_name().unwrap())
}

fn sfdisk(image: &Path, script: &str) {
    use std::io::Write;
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
}

fn mtools(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("MTOOLS_SKIP_CHECK", "1");
    cmd
}

/// The boot partition of an image or card, as mtools names it.
fn drive(path: &Path) -> String {
    format!("{}@@{BOOT}", path.display())
}

fn mtype(card: &Path, name: &str) -> String {
    stdout(&run(mtools("mtype")
        .arg("-i")
        .arg(drive(card))
        .arg(format!("::/{name}"))))
}

/// Bytes that repeat with a period no file system structure has.
fn pattern(start: u64, len: u64) -> Vec<u8> {
    (start..start + len)
        .map(|i| (i % 251) as u8 ^ 0x5a)
        .collect()
}

/// Data for the image (different from the pattern, and not compressible to nothing).
fn noise(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The mapped byte ranges a bmap lists (a few lines of string handling; the builder's parser is the
/// thing under test, so it is not used here).
fn bmap_ranges(xml: &str, size: u64) -> Vec<(u64, u64)> {
    xml.lines()
        .filter(|l| l.contains("<Range"))
        .map(|l| {
            let text = l
                .split('>')
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .trim();
            let (first, last) = text.split_once('-').unwrap_or((text, text));
            let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
            (first * 4096, ((last + 1) * 4096).min(size))
        })
        .collect()
}
