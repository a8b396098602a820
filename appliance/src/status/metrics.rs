//! `/metrics` in Prometheus' text exposition format.

use std::fmt::Write;

use crate::power::state::PowerState;
use crate::status::api::Snapshot;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(o: &mut String, name: &str, help: &str) {
    let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n");
}

pub fn render(s: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    gauge(
        &mut o,
        "kituo_build_info",
        "Version and build of the running appliance.",
    );
    let _ = writeln!(
        o,
        "kituo_build_info{{version=\"{}\",build=\"{}\",center=\"{}\"}} 1",
        label(s.version),
        label(s.build.get("id").map(String::as_str).unwrap_or("")),
        label(&s.center_id)
    );
    gauge(
        &mut o,
        "kituo_power_state",
        "1 for the current power state.",
    );
    for st in [
        PowerState::Unknown,
        PowerState::OnMains,
        PowerState::OnBattery,
        PowerState::LowBattery,
        PowerState::ShuttingDown,
        PowerState::Restored,
    ] {
        let _ = writeln!(
            o,
            "kituo_power_state{{state=\"{}\"}} {}",
            st.words().replace(' ', "_"),
            u8::from(s.power.state == st)
        );
    }
    gauge(
        &mut o,
        "kituo_bulk_sync_paused",
        "1 while bulk sync waits for mains.",
    );
    let _ = writeln!(
        o,
        "kituo_bulk_sync_paused {}",
        u8::from(s.power.bulk_sync_paused)
    );
    if let Some(r) = &s.power.reading {
        if let Some(m) = r.on_mains {
            gauge(&mut o, "kituo_power_on_mains", "1 on mains, 0 on battery.");
            let _ = writeln!(o, "kituo_power_on_mains {}", u8::from(m));
        }
        if let Some(c) = r.charge_percent {
            gauge(&mut o, "kituo_battery_charge_percent", "Battery charge.");
            let _ = writeln!(o, "kituo_battery_charge_percent {c}");
        }
        if let Some(t) = r.runtime_seconds {
            gauge(
                &mut o,
                "kituo_battery_runtime_seconds",
                "Estimated runtime on battery.",
            );
            let _ = writeln!(o, "kituo_battery_runtime_seconds {t}");
        }
    }
    if let Some(h) = &s.health {
        gauge(
            &mut o,
            "kituo_service_up",
            "1 when the service's functional probe passes.",
        );
        for c in &h.services {
            let _ = writeln!(
                o,
                "kituo_service_up{{service=\"{}\"}} {}",
                label(&c.name),
                u8::from(c.ok)
            );
        }
        let _ = write!(o, "# HELP kituo_service_restarts_total Restarts made by the supervisor.\n# TYPE kituo_service_restarts_total counter\n");
        for c in &h.services {
            let _ = writeln!(
                o,
                "kituo_service_restarts_total{{service=\"{}\"}} {}",
                label(&c.name),
                c.restarts
            );
        }
        gauge(
            &mut o,
            "kituo_disk_free_bytes",
            "Free bytes per mount point.",
        );
        for d in &h.disks {
            let _ = writeln!(
                o,
                "kituo_disk_free_bytes{{path=\"{}\"}} {}",
                label(&d.path),
                d.free_bytes
            );
        }
        gauge(&mut o, "kituo_disk_size_bytes", "Size per mount point.");
        for d in &h.disks {
            let _ = writeln!(
                o,
                "kituo_disk_size_bytes{{path=\"{}\"}} {}",
                label(&d.path),
                d.total_bytes
            );
        }
        if let Some(t) = h.temperature_celsius {
            gauge(&mut o, "kituo_temperature_celsius", "Hottest thermal zone.");
            let _ = writeln!(o, "kituo_temperature_celsius {t}");
        }
        gauge(
            &mut o,
            "kituo_clock_ok",
            "1 when the clock is synchronized.",
        );
        let _ = writeln!(o, "kituo_clock_ok {}", u8::from(h.clock_ok));
        gauge(&mut o, "kituo_load1", "Load average over one minute.");
        let _ = writeln!(o, "kituo_load1 {}", h.load[0]);
        gauge(&mut o, "kituo_memory_available_bytes", "Available memory.");
        let _ = writeln!(
            o,
            "kituo_memory_available_bytes {}",
            h.memory_available_bytes
        );
        gauge(&mut o, "kituo_uptime_seconds", "Seconds since boot.");
        let _ = writeln!(o, "kituo_uptime_seconds {}", h.uptime_seconds);
    }
    if let Some(y) = &s.sync {
        gauge(
            &mut o,
            "kituo_sync_backlog_changes",
            "Local changes not yet acknowledged by the hub.",
        );
        let _ = writeln!(o, "kituo_sync_backlog_changes {}", y.backlog_changes);
        if let Some(t) = y.last_success {
            gauge(
                &mut o,
                "kituo_sync_last_success_timestamp_seconds",
                "Last successful sync.",
            );
            let _ = writeln!(o, "kituo_sync_last_success_timestamp_seconds {t}");
        }
    }
    if let Some(f) = &s.files {
        for (name, help, value) in [
            (
                "kituo_files_fetch_pending",
                "Referenced blobs this site lacks.",
                f.fetch_pending,
            ),
            (
                "kituo_files_fetch_pending_bytes",
                "Their bytes.",
                f.fetch_bytes,
            ),
            (
                "kituo_files_send_pending",
                "This site's blobs the hub lacks.",
                f.send_pending,
            ),
            (
                "kituo_files_send_pending_bytes",
                "Their bytes.",
                f.send_bytes,
            ),
            (
                "kituo_files_rate_bytes_per_second",
                "Recent file transfer rate.",
                f.rate_bytes_per_second,
            ),
        ] {
            gauge(&mut o, name, help);
            let _ = writeln!(o, "{name} {value}");
        }
    }
    o
}
