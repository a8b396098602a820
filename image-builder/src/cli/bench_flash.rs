//! `image-builder bench flash`: the time to flash a card image with `image-builder flash` (verification
//! on) against what people do today, `dd` of the whole image followed by reading the whole card back and
//! comparing its sha256, on the same loop device, as a table with the ratio.
//!
//! The loop device uses direct I/O on a backing file that is written in full beforehand, so both methods
//! overwrite allocated blocks on the disk, and the image's cached pages are dropped before every run, so
//! neither method reads it from memory. Runs alternate the order of the methods.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

use super::flash::bmap_beside;
use crate::bmap::Bmap;
use crate::packages::sha256_file;
use crate::tools::{run, which};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A built image (.img, its .bmap beside); default: the newest kituo-*.img in --out, else a
    /// synthetic image of a card's shape.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Where built images are looked for.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Also time the compressed image (.img.zst beside): `flash` of it against `zstdcat | dd`.
    #[arg(long)]
    pub zst: bool,
    /// Runs of each method; the table shows each and the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Size of the synthetic image, MiB.
    #[arg(long, default_value_t = 2048)]
    pub synthetic_mib: u64,
    /// Mapped part of the synthetic image, MiB.
    #[arg(long, default_value_t = 600)]
    pub synthetic_mapped_mib: u64,
    /// Folder for the loop device's backing file (and a synthetic image): needs room for both.
    #[arg(long, default_value = "/var/tmp")]
    pub scratch: PathBuf,
}

struct Method {
    name: String,
    /// ".img" or ".img.zst": each image-builder row is compared with the dd rows of its form.
    form: &'static str,
    /// For the dd rows, the program that checks the read-back's sha256.
    hasher: Option<&'static str>,
    /// Runs the method once; fails if what was written does not verify.
    run: Box<dyn Fn() -> Result<()>>,
    seconds: Vec<f64>,
}

/// coreutils' sha256sum is what people type; openssl's uses the CPU's SHA instructions, as the
/// builder's sha2 crate does, so the second baseline shows how much of the gap is the hasher.
const HASHERS: [&str; 2] = ["sha256sum", "openssl dgst -sha256 -r"];

pub fn run_bench(args: &Args) -> Result<()> {
    for tool in ["losetup", "dd", "sha256sum", "openssl", "zstdcat"] {
        ensure!(which(tool).is_some(), "bench flash needs {tool}");
    }
    let scratch = tempfile::Builder::new()
        .prefix("kituo-bench-flash-")
        .tempdir_in(&args.scratch)
        .with_context(|| format!("cannot make a folder in {}", args.scratch.display()))?;
    let image = match &args.image {
        Some(image) => image.clone(),
        None => match newest_built_image(&args.out) {
            Some(image) => image,
            None => synthetic_image(scratch.path(), args)?,
        },
    };
    let bmap = Bmap::load(&bmap_beside(&image)?)?;
    let sha256 = image_sha256(&image)?;
    eprintln!("bench flash: {}", image.display());

    let backing = scratch.path().join("card");
    fill(&backing, bmap.image_size)?;
    let card = LoopDevice::attach(&backing)?;
    let dev = card.dev.clone();

    let zst = image.with_file_name(format!(
        "{}.zst",
        image.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut forms = vec![(".img", image.clone())];
    if args.zst {
        ensure!(zst.is_file(), "--zst: there is no {}", zst.display());
        forms.push((".img.zst", zst.clone()));
    }
    let mut methods = Vec::new();
    for (form, file) in &forms {
        for hasher in HASHERS {
            methods.push(dd_method(
                form,
                file,
                hasher,
                &dev,
                &sha256,
                bmap.image_size,
            ));
        }
        methods.push(flash_method(form, file, &dev));
    }

    for run in 0..args.runs {
        // Alternate the order, so that neither method always follows the other.
        let mut order: Vec<usize> = (0..methods.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            for file in [&image, &zst] {
                forget_cached(file);
            }
            let started = Instant::now();
            (methods[i].run)().with_context(|| format!("bench run of '{}'", methods[i].name))?;
            let seconds = started.elapsed().as_secs_f64();
            eprintln!("run {}: {:<62} {seconds:>6.1}s", run + 1, methods[i].name);
            methods[i].seconds.push(seconds);
        }
    }
    drop(card);
    print_table(&image, &bmap, &methods, args.runs);
    Ok(())
}

fn dd_method(
    form: &'static str,
    file: &Path,
    hasher: &'static str,
    dev: &Path,
    sha256: &str,
    size: u64,
) -> Method {
    let (name, write) = if form == ".img" {
        (
            format!("dd bs=4M conv=fsync, whole card read back | {hasher}"),
            format!(
                "dd if='{}' of='{}' bs=4M conv=fsync status=none",
                file.display(),
                dev.display()
            ),
        )
    } else {
        (
            format!("zstdcat | dd bs=4M conv=fsync, whole card read back | {hasher}"),
            format!(
                "zstdcat -q '{}' | dd of='{}' bs=4M iflag=fullblock conv=fsync status=none",
                file.display(),
                dev.display()
            ),
        )
    };
    // The read-back bypasses the page cache, as flash's does.
    let script = format!(
        "set -e; {write}; dd if='{}' bs=4M iflag=direct,count_bytes count={size} status=none | {hasher}",
        dev.display()
    );
    let expected = sha256.to_owned();
    Method {
        name: name.replace('|', "\\|"),
        form,
        hasher: Some(hasher),
        run: Box::new(move || {
            let out = run(Command::new("sh").args(["-c", &script]))?;
            let actual = String::from_utf8_lossy(&out.stdout);
            let actual = actual.split_whitespace().next().unwrap_or_default();
            ensure!(
                actual == expected,
                "the card's sha256 is {actual}, the image's {expected}"
            );
            Ok(())
        }),
        seconds: Vec::new(),
    }
}

fn flash_method(form: &'static str, image: &Path, dev: &Path) -> Method {
    let (image, dev) = (image.to_owned(), dev.to_owned());
    Method {
        name: format!("image-builder flash {form} (mapped blocks, each read back, sha2)"),
        form,
        hasher: None,
        run: Box::new(move || {
            let exe = std::env::current_exe().context("cannot find image-builder's own path")?;
            run(Command::new(exe)
                .args(["--quiet", "flash", "--device"])
                .arg(&dev)
                .arg(&image))?;
            Ok(())
        }),
        seconds: Vec::new(),
    }
}

fn print_table(image: &Path, bmap: &Bmap, methods: &[Method], runs: usize) {
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "\n{}: {:.0} MiB image, {:.0} MiB mapped ({:.0}%); loop device with direct I/O, verification on\n",
        image.display(),
        mib(bmap.image_size),
        mib(bmap.mapped_bytes()),
        100.0 * bmap.mapped_bytes() as f64 / bmap.image_size as f64
    );
    let runs_header: String = (1..=runs).map(|r| format!(" run {r} s |")).collect();
    let ratio_headers: String = HASHERS
        .iter()
        .map(|h| format!(" vs dd + {} |", h.split(' ').next().unwrap_or(h)))
        .collect();
    println!("| method |{runs_header} median s |{ratio_headers}");
    println!("|---|{}", "---:|".repeat(runs + 1 + HASHERS.len()));
    let baseline = |form: &str, hasher: &str| {
        methods
            .iter()
            .find(|m| m.form == form && m.hasher == Some(hasher))
            .map_or(f64::NAN, |m| median(&m.seconds))
    };
    for m in methods {
        let median = median(&m.seconds);
        let cells: String = m.seconds.iter().map(|s| format!(" {s:.1} |")).collect();
        let ratios: String = HASHERS
            .iter()
            .map(|h| format!(" {:.2} |", median / baseline(m.form, h)))
            .collect();
        println!("| {} |{cells} {median:.1} |{ratios}", m.name);
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The newest `kituo-*.img` with a bmap beside it, as `image-builder build --out` leaves them.
fn newest_built_image(out: &Path) -> Option<PathBuf> {
    let pattern = out.join("kituo-*.img");
    glob::glob(&pattern.to_string_lossy())
        .ok()?
        .filter_map(|p| p.ok())
        .filter(|p| bmap_beside(p).is_ok())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// The builder's `.img.sha256` when there is one, else computed now (outside the timed runs).
fn image_sha256(image: &Path) -> Result<String> {
    let beside = image.with_file_name(format!(
        "{}.sha256",
        image.file_name().unwrap_or_default().to_string_lossy()
    ));
    match std::fs::read_to_string(&beside) {
        Ok(text) => Ok(text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()),
        Err(_) => sha256_file(image),
    }
}

/// A sparse image shaped like a card: a partition table, then `synthetic_mapped_mib` of data in 24
/// runs spread over `synthetic_mib`, holes between; data that does not compress to nothing.
fn synthetic_image(dir: &Path, args: &Args) -> Result<PathBuf> {
    const RUNS: u64 = 24;
    let image = dir.join("kituo-synthetic-bench.img");
    let size = args.synthetic_mib << 20;
    let run_len = ((args.synthetic_mapped_mib << 20) / RUNS) & !4095;
    ensure!(
        run_len * RUNS < size,
        "the mapped part must be smaller than the image"
    );
    eprintln!(
        "bench flash: no built image in {}; making a synthetic one ({} MiB, {} MiB mapped)",
        args.out.display(),
        args.synthetic_mib,
        args.synthetic_mapped_mib
    );
    let file = std::fs::File::create(&image)
        .with_context(|| format!("cannot create {}", image.display()))?;
    file.set_len(size)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = |buf: &mut [u8]| {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
    };
    let mut buf = vec![0u8; 4 << 20];
    noise(&mut buf[..4096]);
    file.write_all_at(&buf[..4096], 0)?;
    for i in 0..RUNS {
        let mut pos = ((4 << 20) + i * ((size - (4 << 20)) / RUNS)) & !4095;
        let end = pos + run_len;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            noise(&mut buf[..n]);
            file.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
    }
    file.sync_all()?;
    drop(file);
    let bmap = Bmap::of_image(&image)?;
    std::fs::write(image.with_extension("bmap"), bmap.to_xml()?)?;
    if args.zst {
        run(Command::new("zstd")
            .args(["-q", "-3", "-T0", "-f"])
            .arg(&image))?;
    }
    Ok(image)
}

/// Writes `size` bytes of zeros, so that the timed runs overwrite allocated blocks.
fn fill(path: &Path, size: u64) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let zeros = vec![0u8; 4 << 20];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)
            .with_context(|| format!("cannot write {}", path.display()))?;
        pos += n as u64;
    }
    file.sync_all()?;
    forget_cached(path);
    Ok(())
}

/// Drops a file's clean cached pages, so the next run reads it from the disk.
fn forget_cached(path: &Path) {
    if let Ok(file) = std::fs::File::open(path) {
        let _ = posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
}

/// A loop device of our own, detached on drop.
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    fn attach(backing: &Path) -> Result<Self> {
        let out = run(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(backing))?;
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !dev.to_string_lossy().starts_with("/dev/loop") {
            bail!("losetup gave '{}', not a loop device", dev.display());
        }
        Ok(LoopDevice { dev })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}
