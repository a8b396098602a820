//! First-boot time under QEMU (issue 6): flash a built qemu-arm64 image onto a card file with another
//! center's center.ini, as a technician would, boot it twice (1024 MB, like a 1 GB board) and time each
//! boot from QEMU's start to `/api/status` answering 200, with where the time goes: systemd's
//! kernel/userspace split, kituo-firstboot.service and each of its steps, db-init and Moodle's install.
//! The second boot must find nothing to do; a bench that times a broken boot would be worthless, so
//! it fails instead.
//!
//! cargo bench -p kituo-tests --bench first_boot [-- --image PATH] [--runs N]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kituo_tests::*;
use serde_json::Value;

const DEFAULT_IMAGE: &str = "out/kituo-qemu-arm64-example.img.zst";
const USAGE: &str = "cargo bench -p kituo-tests --bench first_boot [-- --image PATH] [--runs N]";
/// A first boot under TCG on 2 cores takes minutes; this only catches one that hangs.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

fn main() -> Result<()> {
    let args = Args::parse()?;
    ensure_tools(&[
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("mcopy", "mtools"),
        ("ssh", "openssh-client"),
        ("curl", "curl"),
    ]);
    // Built now, so that no cargo run falls inside the timed flash.
    image_builder();
    let work = artifacts("first-boot-bench");
    let (key, public_key) = ssh_key(&work);
    let center = work.join("center.ini");
    MWANZA.write_ini(&center, &public_key)?;

    let mut runs = Vec::new();
    for n in 1..=args.runs {
        eprintln!("run {n} of {}", args.runs);
        let run =
            measure_run(&args.image, &center, &key, &work).with_context(|| format!("run {n}"))?;
        runs.push(run);
    }
    print_table(&args.image, &runs);
    Ok(())
}

struct Args {
    image: PathBuf,
    runs: usize,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut image = PathBuf::from(DEFAULT_IMAGE);
        let mut runs = 1;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--image" => image = args.next().context("--image needs a path")?.into(),
                "--runs" => {
                    runs = args
                        .next()
                        .context("--runs needs a number")?
                        .parse()
                        .context("--runs takes a whole number")?
                }
                // cargo bench passes --bench to every bench binary.
                "--bench" => {}
                other => bail!("unknown argument {other:?}; usage: {USAGE}"),
            }
        }
        ensure!(runs > 0, "--runs must be at least 1");
        // cargo runs a bench in its crate's folder (tests/), so a relative path is taken from the
        // workspace, where `out/` is.
        let image = workspace().join(image);
        ensure!(
            image.is_file(),
            "there is no image {}: build it first with\n  \
             cargo run --release -p image-builder -- build --board qemu-arm64\n\
             or name a built one (.img.zst or .img, its .bmap beside it) with --image",
            image.display()
        );
        Ok(Args { image, runs })
    }
}

/// One card: flashed, then booted twice.
struct Run {
    flash: f64,
    first: Boot,
    second: Boot,
}

/// What one boot measured, in seconds.
struct Boot {
    to_status: f64,
    /// systemd-analyze's split: up to systemd's start (the kernel and Debian's initramfs), then until
    /// the boot finished (every unit started).
    kernel: f64,
    userspace: f64,
    firstboot: f64,
    steps: Vec<(String, f64)>,
    db_init: Option<f64>,
    moodle_install: Option<f64>,
    /// What kituo-firstboot changed in this boot (/run/kituo-firstboot.actions).
    actions: String,
}

fn measure_run(image: &Path, center: &Path, key: &Path, work: &Path) -> Result<Run> {
    let card = work.join("card.img");
    new_card(&card)?;
    let started = Instant::now();
    flash_card(image, &card, center)?;
    let flash = started.elapsed().as_secs_f64();
    eprintln!("  flashed in {flash:.1} s");

    let first = measure_boot(&card, key, work).context("first boot")?;
    ensure!(
        !first.actions.trim().is_empty(),
        "the first boot changed nothing: the card was not fresh"
    );
    let second = measure_boot(&card, key, work).context("second boot")?;
    ensure!(
        second.actions.trim().is_empty(),
        "the second boot did first-boot work again:\n{}",
        second.actions
    );
    Ok(Run {
        flash,
        first,
        second,
    })
}

/// Boots the card, times it to the status page, collects systemd's and the journal's timings once
/// the boot has finished, and powers it off cleanly (the next boot must find a clean card).
fn measure_boot(card: &Path, key: &Path, work: &Path) -> Result<Boot> {
    let mut vm = Vm::boot(card, key, work)?;
    let status = vm.wait_http("/api/status", BOOT_TIMEOUT)?;
    let to_status = vm.started.elapsed().as_secs_f64();
    eprintln!("  /api/status answered after {to_status:.1} s");
    check_center(&status)?;

    wait_until_booted(&vm)?;
    let (kernel, userspace) = boot_split(&vm)?;
    let firstboot = unit_duration(&vm, "kituo-firstboot.service")?
        .context("there is no kituo-firstboot.service")?;
    let journal = vm.ssh("journalctl -b -o short-monotonic -u kituo-firstboot.service")?;
    let boot = Boot {
        to_status,
        kernel,
        userspace,
        firstboot,
        steps: firstboot_steps(&journal)?,
        db_init: unit_duration(&vm, "kituo-db-init.service")?,
        moodle_install: unit_duration(&vm, "kituo-moodle-install.service")?,
        actions: vm.ssh("cat /run/kituo-firstboot.actions")?,
    };
    vm.shutdown()?;
    Ok(boot)
}

/// The status page is the flashed center's, not the image's: first boot applied the card's center.ini.
fn check_center(status: &str) -> Result<()> {
    let status: Value = serde_json::from_str(status).context("/api/status is not JSON")?;
    ensure!(
        status["center_id"] == MWANZA.id && status["center_config"]["error"].is_null(),
        "the status page does not name the flashed center {}: {status}",
        MWANZA.id
    );
    Ok(())
}

/// Waits until every unit has started (systemd's boot is finished) and none failed. SSH may start a
/// moment after the status page, so the first attempts may not get in.
fn wait_until_booted(vm: &Vm) -> Result<()> {
    let started = Instant::now();
    let state = loop {
        match vm.ssh("timeout 600 systemctl is-system-running --wait || true") {
            Ok(state) => break state,
            Err(e) if started.elapsed() > Duration::from_secs(120) => {
                return Err(e.context("no SSH login within 120 s of the status page"))
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    if state.trim() != "running" {
        bail!(
            "the boot ended {}; failed units:\n{}",
            state.trim(),
            vm.ssh("systemctl --failed --no-legend --plain")?
        );
    }
    Ok(())
}

/// The split `systemd-analyze` prints, from the same manager properties it reads (microseconds since
/// the kernel started, no format to parse): kernel (and initramfs) until systemd started, then
/// userspace until the boot finished.
fn boot_split(vm: &Vm) -> Result<(f64, f64)> {
    let props =
        vm.ssh("systemctl show -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic")?;
    let userspace_start = property(&props, "UserspaceTimestampMonotonic")?;
    let finish = property(&props, "FinishTimestampMonotonic")?;
    ensure!(
        finish > userspace_start,
        "systemd's boot is not finished:\n{props}"
    );
    Ok((seconds(userspace_start), seconds(finish - userspace_start)))
}

/// How long `unit`'s main process ran in this boot, or None if the image has no such unit.
fn unit_duration(vm: &Vm, unit: &str) -> Result<Option<f64>> {
    let props = vm.ssh(&format!(
        "systemctl show -p LoadState -p ExecMainStartTimestampMonotonic \
         -p ExecMainExitTimestampMonotonic {unit}"
    ))?;
    if props.contains("LoadState=not-found") {
        return Ok(None);
    }
    let start = property(&props, "ExecMainStartTimestampMonotonic")?;
    let exit = property(&props, "ExecMainExitTimestampMonotonic")?;
    ensure!(
        start > 0 && exit >= start,
        "{unit} did not run to its end in this boot:\n{props}"
    );
    Ok(Some(seconds(exit - start)))
}

fn property(props: &str, name: &str) -> Result<u64> {
    props
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .with_context(|| format!("systemctl show gave no {name}:\n{props}"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number:\n{props}"))
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// Each step's time, from the script's "firstboot: step X" and "firstboot: step X: ok" lines, in the
/// order the steps ran. A failed step fails the bench.
fn firstboot_steps(journal: &str) -> Result<Vec<(String, f64)>> {
    let mut steps = Vec::new();
    let mut running: Option<(&str, f64)> = None;
    for line in journal.lines() {
        let Some((_, step)) = line.split_once("firstboot: step ") else {
            continue;
        };
        let at = monotonic(line)?;
        match step.split_once(": ") {
            None => running = Some((step, at)),
            Some((name, "ok")) => match running.take() {
                Some((started, since)) if started == name => {
                    steps.push((name.to_owned(), at - since))
                }
                _ => bail!("step {name} ended but did not start:\n{journal}"),
            },
            Some((name, outcome)) => bail!("first-boot step {name}: {outcome}:\n{journal}"),
        }
    }
    ensure!(
        !steps.is_empty(),
        "no first-boot steps in the journal:\n{journal}"
    );
    Ok(steps)
}

/// The seconds since boot of a `journalctl -o short-monotonic` line: "[   12.345678] host unit: …".
fn monotonic(line: &str) -> Result<f64> {
    line.strip_prefix('[')
        .and_then(|l| l.split_once(']'))
        .and_then(|(at, _)| at.trim().parse().ok())
        .with_context(|| format!("no monotonic timestamp in the journal line {line:?}"))
}

/// The table for issue 6: medians over the runs, first and second boot side by side.
fn print_table(image: &Path, runs: &[Run]) {
    let boot_row = |label: &str, f: &dyn Fn(&Boot) -> Option<f64>| {
        let first = median(runs.iter().filter_map(|r| f(&r.first)));
        let second = median(runs.iter().filter_map(|r| f(&r.second)));
        (label.to_owned(), first, second)
    };
    let mut rows = vec![
        (
            "flash (image-builder flash, verified)".to_owned(),
            median(runs.iter().map(|r| r.flash)),
            None,
        ),
        boot_row("QEMU start to /api/status 200", &|b| Some(b.to_status)),
        boot_row("kernel + initramfs (systemd-analyze)", &|b| Some(b.kernel)),
        boot_row("userspace until booted (systemd-analyze)", &|b| {
            Some(b.userspace)
        }),
        boot_row("kituo-firstboot.service", &|b| Some(b.firstboot)),
    ];
    for (step, _) in &runs[0].first.steps {
        let of = |b: &Boot| b.steps.iter().find(|(s, _)| s == step).map(|(_, t)| *t);
        rows.push(boot_row(&format!("  step {step}"), &of));
    }
    rows.push(boot_row("kituo-db-init.service", &|b| b.db_init));
    rows.push(boot_row("kituo-moodle-install.service", &|b| {
        b.moodle_install
    }));
    rows.retain(|(_, first, second)| first.is_some() || second.is_some());

    let plural = if runs.len() == 1 { "" } else { "s" };
    println!(
        "\nFirst boot under QEMU (TCG, 2 vCPUs, 1024 MB) of {}, flashed for center {}; median of {} run{plural}\n",
        image.display(),
        MWANZA.id,
        runs.len()
    );
    let width = rows.iter().map(|(l, _, _)| l.len()).max().unwrap_or(0);
    let cell = |v: Option<f64>| v.map(|s| format!("{s:.1} s")).unwrap_or_default();
    println!("| {:width$} | first boot | second boot |", "measure");
    println!("|{}|-----------:|------------:|", "-".repeat(width + 2));
    for (label, first, second) in &rows {
        println!(
            "| {label:width$} | {:>10} | {:>11} |",
            cell(*first),
            cell(*second)
        );
    }
    let first = median(runs.iter().map(|r| r.first.to_status));
    let second = median(runs.iter().map(|r| r.second.to_status));
    if let (Some(first), Some(second)) = (first, second) {
        println!(
            "\ntime to /api/status, first boot / second boot: {:.2}",
            first / second
        );
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}
