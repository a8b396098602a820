use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::Config;

/// What `/api/status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub center_id: String,
    pub center_name: String,
    pub site_id: u8,
    /// The image's identity from the build-info file (build id, board, ...), empty when absent.
    pub build: BTreeMap<String, String>,
    pub uptime_seconds: u64,
}

/// Serves until the process ends; calls `ready` once the socket is bound.
pub fn serve(config: &Config, ready: impl FnOnce()) -> Result<()> {
    let server = tiny_http::Server::http(config.listen)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    ready();
    let started = Instant::now();
    let build = read_build_info(config);
    for request in server.incoming_requests() {
        let response = match request.url() {
            "/api/status" => {
                let snapshot = Snapshot {
                    version: crate::VERSION,
                    center_id: config.center_id.clone(),
                    center_name: config.center_name.clone(),
                    site_id: config.site_id,
                    build: build.clone(),
                    uptime_seconds: started.elapsed().as_secs(),
                };
                json_response(&snapshot)?
            }
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        // A client that went away is not the server's problem.
        let _ = request.respond(response);
    }
    Ok(())
}

fn json_response(value: &impl Serialize) -> Result<tiny_http::Response<std::io::Cursor<Vec<u8>>>> {
    let body = serde_json::to_vec_pretty(value)?;
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
        .map_err(|()| anyhow::anyhow!("bad header"))?;
    Ok(tiny_http::Response::from_data(body).with_header(header))
}

/// The build-info file is `key = value` lines under `[build]`; a missing file is not an error (a
/// development run has none).
fn read_build_info(config: &Config) -> BTreeMap<String, String> {
    let Ok(ini) = ini::Ini::load_from_file(&config.build_info) else {
        return BTreeMap::new();
    };
    ini.section(Some("build"))
        .map(|props| {
            props
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}
