//! The test bed's hub and agents as real processes (`appliance hub`, `appliance sync run`), with the
//! engine's own MariaDB account and files as on a card, so tests and benchmarks can cut their links and
//! kill them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;

use crate::bed::{schema_root, Node, DB, PREFIX};
use crate::testbed::{free_port, wait_for};

/// The engine's account and the grants it needs, as the image's db-init gives them: Moodle's rows, its
/// own bookkeeping database, reading the binlog (REPLICATION SLAVE, BINLOG MONITOR) and writing with
/// `skip_replication` (BINLOG ADMIN).
pub const ENGINE_GRANTS: &[&str] = &[
    "GRANT SELECT, INSERT, UPDATE, DELETE ON moodle.* TO 'kituo'@'localhost'",
    "GRANT ALL PRIVILEGES ON kituo_sync.* TO 'kituo'@'localhost'",
    "GRANT REPLICATION SLAVE, BINLOG MONITOR, BINLOG ADMIN ON *.* TO 'kituo'@'localhost'",
];

/// Creates the engine's account at `node` with a fresh password; returns the password file.
pub fn engine_account(node: &Node, dir: &Path) -> Result<PathBuf> {
    let password = appliance::sync::exchange::wire::nonce()?;
    let mut c = mysql::Conn::new(node.db.opts())?;
    c.query_drop("SET SESSION sql_log_bin = 0")?;
    // CREATE USER takes no placeholders; the password is hex digits only.
    c.query_drop(format!(
        "CREATE USER IF NOT EXISTS 'kituo'@'localhost' IDENTIFIED BY '{password}'"
    ))?;
    for grant in ENGINE_GRANTS {
        c.query_drop(*grant).with_context(|| grant.to_string())?;
    }
    let file = dir.join(format!("site{}-db-password", node.id));
    std::fs::write(&file, format!("{password}\n"))?;
    Ok(file)
}

fn moodle_section(node: &Node, password_file: &Path) -> String {
    format!(
        "[moodle]\ndatabase = {DB}\nprefix = {PREFIX}\nsocket = {}\nuser = kituo\npassword_file = {}\n\
         dirroot = {}\n",
        node.db.socket.display(),
        password_file.display(),
        schema_root().join("4.5.0").display()
    )
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `exe args`, its stderr appended to `log` (a killed process's log stays readable after
    /// its restart).
    fn spawn(exe: &Path, args: &[&str], log: PathBuf) -> Result<Proc> {
        Self::spawn_with_env(exe, args, log, &[])
    }

    fn spawn_with_env(
        exe: &Path,
        args: &[&str],
        log: PathBuf,
        env: &[(String, String)],
    ) -> Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(exe)
            .args(args)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        Ok(Proc { child, log })
    }

    /// SIGKILL, as a power cut or the OOM killer would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `appliance hub` serving the bed's hub.
pub struct HubService {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub config: PathBuf,
    dir: PathBuf,
}

impl HubService {
    pub fn start(exe: &Path, hub: &Node, dir: &Path) -> Result<HubService> {
        let password = engine_account(hub, dir)?;
        let port = free_port()?;
        let config = dir.join("hub.ini");
        std::fs::write(
            &config,
            format!(
                "[hub]\nlisten = 127.0.0.1:{port}\nsite_id = {}\nworkers = 3\ncapture_ms = 200\n\
                 dataroot = {}\n{}",
                hub.id,
                crate::bed::files::dataroot(dir, hub.id)?.display(),
                moodle_section(hub, &password)
            ),
        )?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut service = HubService {
            proc: Proc::spawn(
                exe,
                &["hub", "--config", &config.to_string_lossy()],
                dir.join("hub.log"),
            )?,
            addr,
            config,
            dir: dir.to_owned(),
        };
        service.wait_ready()?;
        Ok(service)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let url = format!(
            "http://{}{}",
            self.addr,
            appliance::sync::exchange::wire::HEALTH
        );
        let up = wait_for(Duration::from_secs(30), || ureq::get(&url).call().ok());
        if up.is_none() {
            bail!("the hub did not answer; its log:\n{}", self.proc.log_text());
        }
        Ok(())
    }

    /// Kills the hub and starts it again on the same port.
    pub fn restart(&mut self, exe: &Path) -> Result<()> {
        self.proc.kill();
        self.proc = Proc::spawn(
            exe,
            &["hub", "--config", &self.config.to_string_lossy()],
            self.dir.join("hub.log"),
        )?;
        self.wait_ready()
    }

    /// Registers `center`; returns its secret file.
    pub fn add_center(&self, exe: &Path, center: u32) -> Result<PathBuf> {
        let secret = self.dir.join(format!("site{center}-secret"));
        let out = Command::new(exe)
            .args(["hub", "--config"])
            .arg(&self.config)
            .args(["add-center", "--site", &center.to_string(), "--name"])
            .arg(format!("Center {center}"))
            .arg("--secret-out")
            .arg(&secret)
            .output()?;
        if !out.status.success() {
            bail!(
                "add-center failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(secret)
    }
}

/// How an agent reaches the hub and how it behaves.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub hub: SocketAddr,
    pub secret_file: PathBuf,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
    pub backoff_max_seconds: u64,
    pub batch_changes: usize,
    pub batch_kib: usize,
    pub rate_limit_kbit: u64,
    /// Reach the hub by https, trusting this CA (PEM).
    pub tls_ca: Option<PathBuf>,
}

impl AgentOptions {
    pub fn new(hub: SocketAddr, secret_file: PathBuf) -> AgentOptions {
        AgentOptions {
            hub,
            secret_file,
            interval_seconds: 1,
            timeout_seconds: 5,
            backoff_max_seconds: 2,
            batch_changes: 500,
            batch_kib: 64,
            rate_limit_kbit: 0,
            tls_ca: None,
        }
    }
}

/// Writes a center's `appliance.ini` with `[sync]` and `[moodle]`; `extra` adds sections (e.g.
/// `[status]` for a supervisor).
pub fn center_config(
    node: &Node,
    dir: &Path,
    opts: &AgentOptions,
    password_file: &Path,
    extra: &str,
) -> Result<PathBuf> {
    let path = dir.join(format!("site{}-appliance.ini", node.id));
    std::fs::write(
        &path,
        format!(
            "[site]\ncenter_id = center{id}\nsite_id = {id}\n{extra}\
             [sync]\nhub_url = {scheme}://{hub}\nca_file = {ca}\nsecret_file = {secret}\n\
             interval_seconds = {interval}\n\
             timeout_seconds = {timeout}\nbackoff_max_seconds = {backoff}\nbatch_changes = {batch}\n\
             batch_kib = {kib}\nrate_limit_kbit = {kbit}\n{moodle}",
            id = node.id,
            hub = opts.hub,
            scheme = if opts.tls_ca.is_some() { "https" } else { "http" },
            ca = opts.tls_ca.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            secret = opts.secret_file.display(),
            interval = opts.interval_seconds,
            timeout = opts.timeout_seconds,
            backoff = opts.backoff_max_seconds,
            batch = opts.batch_changes,
            kib = opts.batch_kib,
            kbit = opts.rate_limit_kbit,
            moodle = moodle_section(node, password_file),
        ),
    )?;
    Ok(path)
}

/// `appliance sync run` for one center.
pub struct AgentService {
    pub proc: Proc,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl AgentService {
    pub fn start(exe: &Path, config: &Path, log: PathBuf) -> Result<AgentService> {
        Self::start_with_env(exe, config, log, Vec::new())
    }

    /// Starts the agent with `env` added to its environment (e.g. a clock moved by libfaketime).
    pub fn start_with_env(
        exe: &Path,
        config: &Path,
        log: PathBuf,
        env: Vec<(String, String)>,
    ) -> Result<AgentService> {
        Ok(AgentService {
            proc: Self::spawn(exe, config, &log, &env)?,
            config: config.to_owned(),
            log,
            env,
        })
    }

    fn spawn(exe: &Path, config: &Path, log: &Path, env: &[(String, String)]) -> Result<Proc> {
        Proc::spawn_with_env(
            exe,
            &["sync", "run", "--config", &config.to_string_lossy()],
            log.to_owned(),
            env,
        )
    }

    /// SIGKILL and start again.
    pub fn restart(&mut self, exe: &Path) -> Result<()> {
        self.proc.kill();
        self.proc = Self::spawn(exe, &self.config, &self.log, &self.env)?;
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }
}
