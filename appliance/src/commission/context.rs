//! The variables overlay templates see (documented in overlays/README.md), in two halves: the center
//! half comes from the center config and the center's secrets; the image half (board, boot, build,
//! disk) is fixed when the image is built and travels in the image as `/usr/share/kituo/image.json`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::center::Center;
use crate::config::local;

/// The center half: `center`, `network`, `wifi`, `sync`, `access`, `secrets`, and `settings`: every
/// key of the card's own appliance.ini sections ([`local::SCHEMA`]), the center's value or the default.
pub fn center_half(center: &Center, secrets: &BTreeMap<String, String>) -> Value {
    let secret = |name: &str| secrets.get(name).cloned().unwrap_or_default();
    // Values written in the center config win over generated ones: people need to know the
    // passphrase, and the hub must know the sync secret.
    let passphrase = center
        .passphrase
        .clone()
        .unwrap_or_else(|| secret("wifi_passphrase"));
    let sync_secret = center
        .sync_secret
        .clone()
        .unwrap_or_else(|| secret("sync_secret"));
    json!({
        "center": { "id": center.id, "name": center.name, "timezone": center.timezone },
        "network": {
            "hostname": center.hostname, "domain": center.domain,
            "ap_address": format!("{}/{}", center.ap_ip, center.ap_prefix), "ap_ip": center.ap_ip.to_string(),
            "ap_prefix": center.ap_prefix.to_string(), "ap_netmask": center.ap_netmask().to_string(),
            "ap_subnet": center.ap_subnet(), "dhcp_start": center.dhcp_start.to_string(), "dhcp_end": center.dhcp_end.to_string(),
        },
        "wifi": { "ssid": center.ssid, "passphrase": passphrase, "country": center.country, "channel": center.channel.to_string() },
        "sync": {
            "hub_url": center.hub_url, "site_id": center.site_id.to_string(),
            "auto_increment_increment": center.auto_increment_increment.to_string(),
            "auto_increment_offset": center.site_id.to_string(), "moodle": center.moodle,
        },
        "access": { "ssh_authorized_keys": center.ssh_authorized_keys },
        "secrets": {
            "moodle_db_password": secret("moodle_db_password"),
            "kituo_db_password": secret("kituo_db_password"),
            "moodle_admin_password": secret("moodle_admin_password"),
            "sync_secret": sync_secret,
            "nut_password": secret("nut_password"),
        },
        "settings": local::complete(&center.settings),
    })
}

/// The full context: both halves' top-level variables side by side.
pub fn merge(center_half: Value, image_half: Value) -> Value {
    let mut all = Map::new();
    for half in [center_half, image_half] {
        if let Value::Object(vars) = half {
            all.extend(vars);
        }
    }
    Value::Object(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ini::Document;
    use std::path::Path;

    fn center(extra: &str) -> Center {
        let text = format!(
            "[center]\nid = dsm\nname = Dar\n[wifi]\nssid = K\n[sync]\nhub_url = https://hub\nsite_id = 3\n{extra}"
        );
        let doc = Document::parse(Path::new("center.ini"), &text, crate::center::SCHEMA).unwrap();
        Center::from_document(&doc).unwrap()
    }

    #[test]
    fn config_values_win_over_generated_secrets() {
        let secrets: BTreeMap<String, String> = [
            ("wifi_passphrase", "generated-pass"),
            ("sync_secret", "generated-sync"),
            ("kituo_db_password", "kdb"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let plain = center_half(&center(""), &secrets);
        assert_eq!(plain["wifi"]["passphrase"], "generated-pass");
        assert_eq!(plain["secrets"]["sync_secret"], "generated-sync");
        assert_eq!(plain["secrets"]["kituo_db_password"], "kdb");
        assert_eq!(plain["sync"]["auto_increment_offset"], "3");
        let hex = "ab".repeat(32);
        let given = center_half(&center(&format!("secret = {hex}\n")), &secrets);
        assert_eq!(given["secrets"]["sync_secret"], hex.as_str());
        assert_eq!(plain["settings"]["power"]["sources"], "");
        let ups = center_half(&center("[power]\nsources = nut\n"), &secrets);
        assert_eq!(ups["settings"]["power"]["sources"], "nut");
        assert_eq!(ups["settings"]["nut"]["driver"], "usbhid-ups");
    }

    #[test]
    fn merge_keeps_both_halves() {
        let all = merge(
            json!({"center": {"id": "a"}}),
            json!({"board": {"name": "b"}}),
        );
        assert_eq!(all["center"]["id"], "a");
        assert_eq!(all["board"]["name"], "b");
    }
}
