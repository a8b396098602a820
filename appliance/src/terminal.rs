//! `appliance status`: the status page's facts as plain text, read from the running supervisor.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use appliance::config::Config;
use appliance::health::probes::http_get;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn show(config: &Config, json: bool) -> Result<()> {
    let url = format!("http://{}/api/status", config.listen);
    let (code, body) = http_get(&url, Duration::from_secs(5), 1 << 20)
        .with_context(|| format!("is the supervisor running? (asked {url})"))?;
    if code != 200 {
        bail!("{url} answered HTTP {code}");
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let s: Value = serde_json::from_str(&body).context("the supervisor's answer is not JSON")?;
    println!(
        "Kituo {} - {} (site {}), build {}",
        text(&s["version"]),
        text(&s["center_name"]),
        s["site_id"],
        text(&s["build"]["id"])
    );
    let p = &s["power"];
    if p["configured"] == Value::Bool(true) {
        let r = &p["reading"];
        let charge = r["charge_percent"]
            .as_f64()
            .map_or("-".into(), |c| format!("{c:.0}%"));
        let left = r["runtime_seconds"]
            .as_u64()
            .map_or(String::new(), |t| format!(", {} min left", t / 60));
        let paused = p["bulk_sync_paused"] == Value::Bool(true);
        println!(
            "Power:    {}; battery {charge}{left}; bulk sync {}",
            text(&p["state_words"]),
            if paused { "paused" } else { "allowed" }
        );
        for src in p["sources"].as_array().into_iter().flatten() {
            if src["ok"] != Value::Bool(true) {
                println!(
                    "          source {}: {}",
                    text(&src["name"]),
                    text(&src["error"])
                );
            }
        }
    } else {
        println!("Power:    no UPS configured");
    }
    match s["health"].as_object() {
        None => println!("Health:   first check still running"),
        Some(h) => {
            for c in h
                .get("services")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ok = c["ok"] == Value::Bool(true);
                println!(
                    "Service:  {:<22} {}",
                    text(&c["name"]),
                    if ok {
                        "working".to_owned()
                    } else {
                        format!("NOT working: {}", text(&c["detail"]))
                    }
                );
            }
            for d in h
                .get("disks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let free = d["free_bytes"].as_u64().unwrap_or(0) >> 20;
                let total = d["total_bytes"].as_u64().unwrap_or(0) >> 20;
                println!(
                    "Disk:     {:<22} {free} MB free of {total} MB",
                    text(&d["path"])
                );
            }
            if let Some(t) = h.get("temperature_celsius").and_then(Value::as_f64) {
                println!("Temp:     {t:.0} C");
            }
            println!("Clock:    {}", h.get("clock").map(text).unwrap_or_default());
        }
    }
    match s["sync"].as_object() {
        None => println!("Sync:     not configured yet"),
        Some(y) => println!(
            "Sync:     link {}, backlog {} changes, last success {}",
            text(&y["link"]),
            text(&y["backlog_changes"]),
            text(&y["last_success"])
        ),
    }
    if let Some(b) = s["sticks"].as_array().and_then(|all| all.first()) {
        println!(
            "Stick:    last {} {} {} (at {}): {}",
            text(&b["direction"]),
            if b["direction"] == "export" {
                "for"
            } else {
                "from"
            },
            text(&b["peer"]),
            text(&b["at"]),
            text(&b["result"])
        );
    }
    match s["update"].as_object() {
        None => println!("Update:   not configured yet"),
        Some(u) => println!(
            "Update:   slot {}, pending {}",
            text(&u["active_slot"]),
            text(&u["pending"])
        ),
    }
    Ok(())
}
