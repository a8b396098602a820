//! Helpers shared by the integration tests: run the real `appliance` binary on a config in a temp dir and
//! read its JSON API.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::testbed::{free_port, wait_for};
use appliance::health::probes::http_get;
use serde_json::Value;

pub struct Supervisor {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// `[site]` and `[status]` for a test, on a free port; health probes that need the image's services off.
pub fn base_config(dir: &Path, port: u16) -> String {
    base_config_with(dir, port, "")
}

/// The same, with more `[status]` lines.
pub fn base_config_with(dir: &Path, port: u16, status_extra: &str) -> String {
    format!(
        "[site]\ncenter_id = testville\ncenter_name = Testville Learning Center\nsite_id = 7\n\
         [status]\nlisten = 127.0.0.1:{port}\nbuild_info = {}\nrefresh_seconds = 10\n{status_extra}\
         [health]\ninterval_seconds = 5\nweb_url =\nfpm_ping_url =\nmariadb_socket =\nhostapd_control =\n\
         partitions = /\nrestart_command =\ntimesync_flag = {}\n",
        dir.join("build.ini").display(),
        dir.join("synchronized").display()
    )
}

impl Supervisor {
    pub fn start(dir: &Path, config: &str) -> Supervisor {
        Self::start_on(dir, config, None)
    }

    /// Writes `config` (which must listen on `port`) and starts `appliance supervise`.
    pub fn start_on(dir: &Path, config: &str, port: Option<u16>) -> Supervisor {
        std::fs::write(
            dir.join("build.ini"),
            "[build]\nid = test-build-42\nversion = 0.1.0\nsource_date_epoch = 1700000000\n",
        )
        .unwrap();
        let path = dir.join("appliance.ini");
        std::fs::write(&path, config).unwrap();
        let port = port.unwrap_or_else(|| {
            config
                .lines()
                .find_map(|l| l.strip_prefix("listen = 127.0.0.1:"))
                .and_then(|p| p.trim().parse().ok())
                .expect("config has a listen line")
        });
        let log = dir.join("supervisor.log");
        let child = Command::new(crate::appliance_binary())
            .args(["supervise", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the supervisor");
        let s = Supervisor { child, port, log };
        if wait_for(Duration::from_secs(20), || s.status_opt()).is_none() {
            panic!("the supervisor did not answer; its log:\n{}", s.log_text());
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn status_opt(&self) -> Option<Value> {
        let (code, body) =
            http_get(&self.url("/api/status"), Duration::from_secs(5), 1 << 20).ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    pub fn status(&self) -> Value {
        self.status_opt().expect("status answers")
    }

    /// Waits until `pred` holds on the JSON status, or fails with the last status and the log.
    pub fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let found = wait_for(timeout, || self.status_opt().filter(|s| pred(s)));
        match found {
            Some(v) => v,
            None => panic!(
                "timed out waiting for {what}; last status:\n{}\nsupervisor log:\n{}",
                serde_json::to_string_pretty(&self.status_opt()).unwrap_or_default(),
                self.log_text()
            ),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn port() -> u16 {
    free_port().unwrap()
}

pub fn state(s: &Value) -> &str {
    s["power"]["state"].as_str().unwrap_or("")
}
