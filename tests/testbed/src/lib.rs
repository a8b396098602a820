//! Real services for the tests and the benchmarks: NUT's `upsd` with the `dummy-ups` driver, and a
//! private MariaDB, each in its own temporary folder on a free port or socket. Nothing here is used by the
//! supervisor itself.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Makes sure `program` exists, installing Debian `package` with apt-get when it does not. Fails with a
/// message naming the package when that is not possible: the tests never skip.
pub fn require(program: &str, package: &str) -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        if program.starts_with('/') {
            return Path::new(program).exists().then(|| PathBuf::from(program));
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .map(|d| d.join(program))
                .find(|p| p.exists())
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("testbed: {program} is missing; installing Debian package {package}");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match (status, find()) {
        (_, Some(p)) => Ok(p),
        (Ok(s), None) => bail!("{program} is needed: `apt-get install {package}` failed ({s}); install it and run again"),
        (Err(e), None) => bail!("{program} is needed and apt-get could not run ({e}): install Debian package {package}"),
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `upsd` serving one `dummy-ups` UPS named `ups`, whose variables come from a `.dev` file the test
/// rewrites.
pub struct Nut {
    pub dir: PathBuf,
    pub port: u16,
}

impl Nut {
    /// Starts the driver and upsd with the given `.dev` content (`ups.status: OL` lines).
    pub fn start(dir: &Path, dev: &str) -> Result<Nut> {
        let driver = require("/lib/nut/dummy-ups", "nut-server")?;
        let upsd = require("/lib/nut/upsd", "nut-server")?;
        require("upsc", "nut-client")?;
        let port = free_port()?;
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        let nut = Nut {
            dir: dir.to_owned(),
            port,
        };
        nut.set(dev)?;
        std::fs::write(dir.join("nut.conf"), "MODE=standalone\n")?;
        // dummy-loop re-reads the file every poll: a rewrite within the same second is still seen.
        std::fs::write(
            dir.join("ups.conf"),
            format!("[ups]\ndriver = dummy-ups\nport = {}\nmode = dummy-loop\npollinterval = 1\ndesc = \"test\"\n", dir.join("ups.dev").display()),
        )?;
        std::fs::write(dir.join("upsd.conf"), format!("LISTEN 127.0.0.1 {port}\n"))?;
        std::fs::write(dir.join("upsd.users"), "")?;
        for (program, args) in [
            (&driver, &["-a", "ups", "-u", "root"][..]),
            (&upsd, &["-u", "root"][..]),
        ] {
            let out = Command::new(program)
                .args(args)
                .env("NUT_CONFPATH", dir)
                .env("NUT_STATEPATH", &state)
                .env("NUT_ALTPIDPATH", &state)
                .output()
                .with_context(|| format!("cannot start {}", program.display()))?;
            if !out.status.success() {
                bail!(
                    "{} failed ({}): {}",
                    program.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let ready = wait_for(Duration::from_secs(15), || {
            let out = Command::new("upsc")
                .arg(format!("ups@127.0.0.1:{port}"))
                .arg("ups.status")
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
        if ready.is_none() {
            bail!(
                "upsd on port {port} did not serve the dummy UPS within 15 s (see {})",
                dir.display()
            );
        }
        Ok(nut)
    }

    /// Replaces the driver's data file (atomically, so the driver never reads half a file).
    pub fn set(&self, dev: &str) -> Result<()> {
        let tmp = self.dir.join("ups.dev.tmp");
        std::fs::write(&tmp, dev)?;
        std::fs::rename(&tmp, self.dir.join("ups.dev"))?;
        Ok(())
    }

    /// Stops upsd only (the UPS goes silent).
    pub fn stop_upsd(&self) {
        kill_pid_file(&self.dir.join("state/upsd.pid"));
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn kill_pid_file(path: &Path) {
    if let Some(pid) = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

impl Drop for Nut {
    fn drop(&mut self) {
        self.stop_upsd();
        kill_pid_file(&self.dir.join("state/dummy-ups-ups.pid"));
    }
}

/// The environment that runs a program with its clock moved by `offset` (libfaketime's relative form,
/// e.g. `-1h`, `+365d`) and its monotonic clocks left alone: a board that booted with a wrong time.
pub fn faked_clock(offset: &str) -> Result<Vec<(String, String)>> {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    require(lib, "libfaketime")?;
    Ok(vec![
        ("LD_PRELOAD".into(), lib.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

/// A private MariaDB server on a socket (no TCP), with its own datadir and error log.
pub struct MariaDb {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub error_log: PathBuf,
    /// Server options beyond the fixed ones, e.g. `--log-bin` (see [`MariaDb::sync_site_args`]).
    extra_args: Vec<String>,
    /// Variables set for the server at its next start (e.g. libfaketime's, see [`faked_clock`]).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl MariaDb {
    pub fn start(dir: &Path) -> Result<MariaDb> {
        Self::start_with(dir, &[])
    }

    /// The options the image gives a site's MariaDB for sync (binlog in ROW format with full images and
    /// column names, a server id, and this site's share of the auto-increment ids).
    pub fn sync_site_args(server_id: u32, increment: u32, offset: u32) -> Vec<String> {
        vec![
            "--log-bin=binlog".into(),
            "--binlog-format=ROW".into(),
            "--binlog-row-image=FULL".into(),
            "--binlog-row-metadata=FULL".into(),
            // As on the appliance: a power cut must not lose the binlog tail of a committed change.
            "--sync-binlog=1".into(),
            format!("--server-id={server_id}"),
            format!("--auto-increment-increment={increment}"),
            format!("--auto-increment-offset={offset}"),
        ]
    }

    /// Starts a server with `extra_args` added to the fixed options (socket only, small buffers).
    pub fn start_with(dir: &Path, extra_args: &[String]) -> Result<MariaDb> {
        require("mariadbd", "mariadb-server")?;
        require("mariadb-install-db", "mariadb-server")?;
        require("mariadb", "mariadb-client")?;
        let data = dir.join("data");
        // A temp folder of its own: servers installed side by side in /tmp were seen failing on each
        // other's (or a cleaner's) vanished temp tables.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        if !data.join("mysql").exists() {
            let out = Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ])
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .output()
                .context("cannot run mariadb-install-db")?;
            if !out.status.success() {
                bail!(
                    "mariadb-install-db failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let mut db = MariaDb {
            dir: dir.to_owned(),
            socket: dir.join("mysqld.sock"),
            pid_file: dir.join("mysqld.pid"),
            error_log: dir.join("error.log"),
            extra_args: extra_args.to_vec(),
            env: Vec::new(),
            child: None,
        };
        db.spawn()?;
        Ok(db)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--pid-file={}", self.pid_file.display()))
            .arg(format!("--log-error={}", self.error_log.display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .args([
                "--skip-networking",
                "--user=root",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=8M",
                // As on the card (60-kituo.cnf): Moodle's rows reach tens of megabytes.
                "--max-allowed-packet=64M",
            ])
            .args(&self.extra_args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start mariadbd")?;
        self.child = Some(child);
        let ok = wait_for(Duration::from_secs(60), || self.select1().then_some(()));
        if ok.is_none() {
            bail!(
                "MariaDB did not answer within 60 s; see {}",
                self.error_log.display()
            );
        }
        Ok(())
    }

    /// Stops the server cleanly and starts it again with `env` added to its environment.
    pub fn restart_with_env(&mut self, env: Vec<(String, String)>) -> Result<()> {
        let out = Command::new("sh")
            .args(["-c", &self.stop_command()])
            .output()
            .context("cannot run mariadb-admin")?;
        if !out.status.success() || !self.wait_exit(Duration::from_secs(60)) {
            bail!(
                "MariaDB did not stop: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.env = env;
        self.spawn()
    }

    /// Starts the server again after it was stopped.
    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    /// Connection options for the `mysql` crate: root over the socket (socket authentication).
    pub fn opts(&self) -> mysql::Opts {
        mysql::OptsBuilder::new()
            .socket(Some(self.socket.to_string_lossy()))
            .user(Some("root"))
            .into()
    }

    /// Stops the server at once, as a power cut would (SIGKILL, no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn select1(&self) -> bool {
        Command::new("mariadb")
            .args([
                "--no-defaults",
                "--protocol=socket",
                "-N",
                "-B",
                "-e",
                "SELECT 1",
            ])
            .arg(format!("--socket={}", self.socket.display()))
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1")
    }

    /// The command that stops it cleanly, as `[shutdown] stop_database` takes it.
    pub fn stop_command(&self) -> String {
        format!(
            "mariadb-admin --no-defaults --socket={} shutdown",
            self.socket.display()
        )
    }

    /// Waits for the server process to exit; true if it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let done = wait_for(timeout, || child.try_wait().ok().flatten()).is_some();
        if done {
            self.child = None;
        }
        done
    }

    pub fn error_log_text(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stand-in for `systemctl poweroff` and friends: a script that appends its name and arguments to a
/// record file and exits 0.
pub fn recorder(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(name);
    let record = dir.join(format!("{name}.called"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n", record.display()),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok((script, record))
}
