//! Running foreign-architecture programs (mmdebstrap's maintainer scripts, customize.sh) needs qemu-user
//! registered with binfmt_misc. systemd is not PID 1 on every build machine, so register by hand.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::tools::run;

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// The binfmt_misc entry and systemd binfmt.d file for a Debian architecture.
fn entry(arch: &str) -> Result<&'static str> {
    match arch {
        "arm64" => Ok("qemu-aarch64"),
        "armhf" => Ok("qemu-arm"),
        "amd64" => Ok(""),
        other => bail!("no qemu-user emulation known for architecture {other}"),
    }
}

pub fn ensure(arch: &str) -> Result<()> {
    let name = entry(arch)?;
    if name.is_empty() || Path::new(BINFMT).join(name).exists() {
        return Ok(());
    }
    if !Path::new(BINFMT).join("register").exists() {
        run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT]))?;
    }
    let conf = format!("/usr/lib/binfmt.d/{name}.conf");
    if !Path::new(&conf).exists() {
        bail!("{conf} is missing\nhint: apt-get install -t bookworm-backports qemu-user-static");
    }
    run(Command::new("/usr/lib/systemd/systemd-binfmt").arg(&conf))?;
    if !Path::new(BINFMT).join(name).exists() {
        bail!("registering {name} with binfmt_misc did not take effect");
    }
    Ok(())
}
