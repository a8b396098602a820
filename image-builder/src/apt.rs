//! Package resolution with the host's apt against a private root for the target architecture: no chroot
//! and no emulation, so `image-builder lock` takes seconds. apt resolves what `mmdebstrap --variant=apt`
//! installs (the Essential set, apt, and the requested packages with their dependencies).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::lockfile::Locked;
use crate::tools::run;

pub const MIRROR: &str = "http://deb.debian.org/debian";
pub const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
pub const COMPONENTS: &str = "main non-free-firmware";
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The apt sources of an image of `suite`; also what the image itself uses afterwards.
pub fn sources_list(suite: &str) -> String {
    format!(
        "deb {MIRROR} {suite} {COMPONENTS}\ndeb {MIRROR} {suite}-updates {COMPONENTS}\ndeb {SECURITY_MIRROR} {suite}-security {COMPONENTS}\n"
    )
}

pub struct AptRoot {
    dir: PathBuf,
    arch: String,
}

impl AptRoot {
    /// Makes an empty apt root in `dir` for `arch` and downloads the package lists of `suite`.
    pub fn create(dir: &Path, suite: &str, arch: &str) -> Result<Self> {
        for sub in [
            "etc/apt/sources.list.d",
            "etc/apt/preferences.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("var/lib/dpkg/status"), "")?;
        let sources =
            sources_list(suite).replace("deb http", &format!("deb [signed-by={KEYRING}] http"));
        std::fs::write(dir.join("etc/apt/sources.list"), sources)?;
        let root = AptRoot {
            dir: dir.to_owned(),
            arch: arch.to_owned(),
        };
        if let Err(e) = run(root.apt("apt-get").arg("update")) {
            // A mirror caught mid-sync (or a stale proxy) can break the small update suites; the main
            // suite is what every package needs, so go on with a warning when only the others failed.
            let message = format!("{e:#}");
            let failed: Vec<_> = message
                .lines()
                .filter(|l| l.starts_with("E: Failed to fetch"))
                .collect();
            let main_failed = failed
                .iter()
                .any(|l| l.contains(&format!("/dists/{suite}/")));
            if failed.is_empty() || main_failed {
                return Err(e).context("cannot download the package lists");
            }
            eprintln!("warning: some package lists of {arch} could not be downloaded; resolving without them:");
            for line in failed {
                eprintln!("  {line}");
            }
        }
        Ok(root)
    }

    fn apt(&self, program: &str) -> Command {
        let d = self.dir.display();
        let mut cmd = Command::new(program);
        cmd.args([
            "-q",
            "-o",
            &format!("Dir={d}"),
            "-o",
            &format!("Dir::State::status={d}/var/lib/dpkg/status"),
        ])
        .args([
            "-o",
            &format!("APT::Architecture={}", self.arch),
            "-o",
            &format!("APT::Architectures::={}", self.arch),
        ])
        .args([
            "-o",
            "Debug::NoLocking=1",
            "-o",
            "APT::Install-Recommends=false",
            "-o",
            "Acquire::Retries=3",
        ])
        .args([
            "-o",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
        ]);
        cmd
    }

    /// Resolves the Essential set, apt and `packages` with all dependencies to exact files.
    pub fn resolve(&self, packages: &[String]) -> Result<Vec<Locked>> {
        let out = run(self
            .apt("apt-get")
            .args(["install", "--print-uris", "-y", "?essential", "apt"])
            .args(packages))
        .context("apt cannot resolve the package set")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let uris: BTreeMap<(String, String), String> = text
            .lines()
            .filter_map(|l| l.strip_prefix('\''))
            .filter_map(|l| {
                let (url, rest) = l.split_once('\'')?;
                let file = rest.split_whitespace().next()?.replace("%3a", ":");
                let (name, rest) = file.split_once('_')?;
                let (version, _) = rest.rsplit_once('_')?;
                Some(((name.to_owned(), version.to_owned()), url.to_owned()))
            })
            .collect();
        if uris.is_empty() {
            bail!(
                "apt resolved no packages: {}",
                text.lines().last().unwrap_or_default()
            );
        }
        let wanted: Vec<_> = uris.keys().map(|(n, v)| format!("{n}={v}")).collect();
        let out = run(self.apt("apt-cache").arg("show").args(&wanted))?;
        let stanzas = parse_stanzas(&String::from_utf8_lossy(&out.stdout));
        uris.into_iter()
            .map(|((name, version), url)| {
                let s = stanzas
                    .iter()
                    .find(|s| s.get("Package") == Some(&name) && s.get("Version") == Some(&version))
                    .with_context(|| format!("apt-cache has no record of {name} {version}"))?;
                let field = |k: &str| {
                    s.get(k)
                        .cloned()
                        .with_context(|| format!("{name} {version} has no {k}"))
                };
                Ok(Locked {
                    arch: field("Architecture")?,
                    size: field("Size")?.parse()?,
                    sha256: field("SHA256")?,
                    name,
                    version,
                    url,
                })
            })
            .collect()
    }
}

/// Debian control stanzas (blank-line separated `Key: value` blocks; continuation lines dropped).
pub fn parse_stanzas(text: &str) -> Vec<BTreeMap<String, String>> {
    text.split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.starts_with(' '))
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_parse() {
        let s = parse_stanzas(
            "Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\nVersion: 2:3\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[1]["Version"], "2:3");
        assert_eq!(s[0]["Description"], "x");
    }
}
