//! External tools: which ones the builder needs (and which Debian package has each), and running them with
//! every way of failing reported on its own: could not start, killed by a signal, non-zero exit.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Command -> Debian package providing it.
pub const REQUIRED: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("apt-get", "apt"),
    ("apt-ftparchive", "apt-utils"),
    ("curl", "curl"),
    ("tar", "tar"),
    ("chroot", "coreutils"),
    ("unshare", "util-linux"),
    ("sfdisk", "fdisk"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("qemu-aarch64-static", "qemu-user-static"),
    ("qemu-arm-static", "qemu-user-static"),
    ("cargo", "cargo (or rustup)"),
];

/// Fails with one message listing every missing tool and the packages to install.
pub fn check_required() -> Result<()> {
    check_installed(REQUIRED)?;
    check_mkfs_reproducible()?;
    Ok(())
}

/// Fails with one message listing every missing command of `tools` and the packages to install.
pub fn check_installed(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<_> = tools
        .iter()
        .filter(|(cmd, _)| which(cmd).is_none())
        .collect();
    if !missing.is_empty() {
        let cmds: Vec<_> = missing
            .iter()
            .map(|(c, p)| format!("{c} (package {p})"))
            .collect();
        let mut pkgs: Vec<_> = missing.iter().map(|(_, p)| *p).collect();
        pkgs.dedup();
        bail!(
            "missing tools: {}\nhint: apt-get install -t bookworm-backports {} (README.md, 'Build an image')",
            cmds.join(", "),
            pkgs.join(" ")
        );
    }
    Ok(())
}

/// mkfs.ext4 honours SOURCE_DATE_EPOCH only from e2fsprogs 1.47.1 on; older ones give different bytes each run.
fn check_mkfs_reproducible() -> Result<()> {
    let out = Command::new("mke2fs")
        .arg("-V")
        .output()
        .context("cannot run mke2fs -V")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.split_whitespace().nth(1).unwrap_or_default();
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    if parts.len() >= 3 && (parts[0], parts[1], parts[2]) < (1, 47, 1) {
        bail!("e2fsprogs {version} ignores SOURCE_DATE_EPOCH, so images would differ between builds\nhint: apt-get install -t bookworm-backports e2fsprogs");
    }
    Ok(())
}

/// Copies `items` (files or folders) of `from` into `to` with `cp -a`: timestamps are kept, so cargo
/// rebuilds only what changed.
pub fn copy_items(from: &Path, items: &[&str], to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for item in items {
        run(Command::new("cp").arg("-a").arg(from.join(item)).arg(to))?;
    }
    Ok(())
}

pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
}

/// Runs a command, returning its output; the error names the program and says how it failed, with the
/// end of its error output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let program = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {program}"))?;
    check(&program, &output)?;
    Ok(output)
}

/// Like `run`, but the command's output goes to a log file (long, chatty tools like mmdebstrap); the
/// error quotes the log's last lines.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let program = describe(cmd);
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("could not start {program}"))?;
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<_> = text.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => bail!(
            "{program} failed with exit code {code}; last lines of {}:\n{}",
            log.display(),
            tail()
        ),
        None => bail!(
            "{program} was killed by a signal; last lines of {}:\n{}",
            log.display(),
            tail()
        ),
    }
}

fn check(program: &str, output: &Output) -> Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<_> = stderr.lines().rev().take(10).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    match output.status.code() {
        Some(0) => Ok(()),
        Some(code) => bail!("{program} failed with exit code {code}:\n{tail}"),
        None => bail!("{program} was killed by a signal:\n{tail}"),
    }
}

fn describe(cmd: &Command) -> String {
    let args: Vec<_> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect();
    let mut text = args.join(" ");
    if text.len() > 160 {
        text.truncate(157);
        text.push_str("...");
    }
    format!("`{text}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart() {
        let e = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit code 3") && e.contains("broken"), "{e}");
        let e = run(Command::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed by a signal"), "{e}");
        let e = format!(
            "{:#}",
            run(&mut Command::new("/nonexistent/tool")).unwrap_err()
        );
        assert!(e.contains("could not start"), "{e}");
    }
}
