//! The builder's own package cache: every locked .deb, downloaded once and checked against the lock's
//! sha256, then served to mmdebstrap as a local repository that holds exactly the locked versions.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::lockfile::{Lock, Locked};
use crate::progress::Progress;
use crate::tools::run;

pub struct PackageCache {
    dir: PathBuf,
}

impl PackageCache {
    pub fn new(cache_root: &Path) -> Result<Self> {
        let dir = cache_root.join("debs");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(PackageCache { dir })
    }

    fn path(&self, p: &Locked) -> PathBuf {
        self.dir.join(p.file_name())
    }

    /// Downloads what is missing; fails clearly when the mirror no longer serves a locked version.
    pub fn fetch(&self, lock: &Lock, progress: &Progress) -> Result<()> {
        let missing: Vec<_> = lock
            .packages
            .values()
            .filter(|p| !self.path(p).exists())
            .collect();
        let bar = progress.bar("download packages", missing.iter().map(|p| p.size).sum());
        for p in missing {
            let partial = self.dir.join(format!("{}.partial", p.file_name()));
            let out = Command::new("curl")
                .args(["-sS", "-f", "-L", "--retry", "3", "-o"])
                .arg(&partial)
                .arg(&p.url)
                .output()
                .context("could not start curl")?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&partial);
                bail!(
                    "the mirror no longer serves {} {} ({}): {}\nhint: keep the builder's package cache ({}), or refresh the lock with `image-builder lock`",
                    p.name,
                    p.version,
                    p.url,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.dir.display()
                );
            }
            verify(&partial, p)?;
            std::fs::rename(&partial, self.path(p))?;
            bar.inc(p.size);
        }
        bar.finish();
        Ok(())
    }

    /// A repository directory holding exactly `lock`'s packages (hard links into the cache), with the
    /// index files apt needs. Its Release says `suite`, which mmdebstrap uses to find the Essential set.
    pub fn repository(&self, lock: &Lock, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        for p in lock.packages.values() {
            let cached = self.path(p);
            verify(&cached, p).with_context(|| {
                format!(
                    "cached {} is damaged: delete it to fetch it again",
                    cached.display()
                )
            })?;
            std::fs::hard_link(&cached, dir.join(p.file_name()))
                .or_else(|_| std::fs::copy(&cached, dir.join(p.file_name())).map(|_| ()))?;
        }
        // SHA256 only: mmdebstrap's eatmydata hook reads the hash apt prints and expects SHA256.
        let only_sha256 = [
            "-o",
            "APT::FTPArchive::MD5=false",
            "-o",
            "APT::FTPArchive::SHA1=false",
            "-o",
            "APT::FTPArchive::SHA512=false",
        ];
        let packages = run(Command::new("apt-ftparchive")
            .args(only_sha256)
            .arg("packages")
            .arg(".")
            .current_dir(dir))?;
        std::fs::write(dir.join("Packages"), &packages.stdout)?;
        let release = run(Command::new("apt-ftparchive")
            .args(only_sha256)
            .args([
                "-o",
                &format!("APT::FTPArchive::Release::Suite={}", lock.suite),
            ])
            .args([
                "-o",
                &format!("APT::FTPArchive::Release::Codename={}", lock.suite),
            ])
            .args(["release", "."])
            .current_dir(dir))?;
        std::fs::write(dir.join("Release"), &release.stdout)?;
        Ok(())
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn verify(path: &Path, p: &Locked) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != p.sha256 {
        bail!(
            "{} has sha256 {actual}, but the lock says {} for {} {}",
            path.display(),
            p.sha256,
            p.name,
            p.version
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn lock_of(p: Locked) -> Lock {
        let mut packages = BTreeMap::new();
        packages.insert(p.name.clone(), p);
        Lock {
            suite: "trixie".into(),
            arch: "arm64".into(),
            source_date_epoch: 1,
            packages,
            path: "t.lock".into(),
        }
    }

    fn gone() -> Locked {
        Locked {
            name: "kituo-gone".into(),
            version: "1.0-1".into(),
            arch: "arm64".into(),
            size: 10,
            sha256: "0".repeat(64),
            url: format!(
                "{}/pool/main/k/kituo-gone/kituo-gone_1.0-1_arm64.deb",
                crate::apt::MIRROR
            ),
        }
    }

    #[test]
    fn a_version_the_mirror_dropped_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackageCache::new(dir.path()).unwrap();
        let e = cache
            .fetch(&lock_of(gone()), &Progress::new(true))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the mirror no longer serves kituo-gone 1.0-1"),
            "{e}"
        );
        assert!(
            e.contains("image-builder lock"),
            "the error says what to do: {e}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("debs")).unwrap().count(),
            0,
            "no partial file is left"
        );
    }

    #[test]
    fn a_damaged_cached_package_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackageCache::new(dir.path()).unwrap();
        let p = gone();
        std::fs::write(
            dir.path().join("debs").join(p.file_name()),
            b"not the locked bytes",
        )
        .unwrap();
        let e = format!(
            "{:#}",
            cache
                .repository(&lock_of(p), &dir.path().join("repo"))
                .unwrap_err()
        );
        assert!(
            e.contains("is damaged") && e.contains("but the lock says"),
            "{e}"
        );
    }
}
