//! The center configuration: who a regional center is (id, Wi-Fi, hub, site number). The image builder
//! reads it to make a card; the appliance reads the same file format.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Serialize;

use crate::config::{local, power};
use crate::ini::{split_list, ConfigError, Document, Key, Schema, Section};

pub const SCHEMA: Schema = &[
    Section {
        name: "center",
        help: "Who this regional center is.",
        free_keys: false,
        keys: &[
            Key::required(
                "id",
                "short identifier: lower-case letters, digits and '-'; names the image and its secrets",
            ),
            Key::required("name", "human-readable name, shown on the status page"),
            Key::optional("timezone", "UTC", "IANA time zone of the center"),
        ],
    },
    Section {
        name: "network",
        help: "Addresses on the appliance's own access point.",
        free_keys: false,
        keys: &[
            Key::optional("hostname", "kituo", "host name of the appliance"),
            Key::optional("domain", "kituo.lan", "DNS domain served on the access point"),
            Key::optional("ap_address", "10.42.0.1/24", "address of the appliance on the access point, with prefix"),
            Key::optional("dhcp_start", "10.42.0.50", "first address handed out by DHCP"),
            Key::optional("dhcp_end", "10.42.0.250", "last address handed out by DHCP"),
        ],
    },
    Section {
        name: "wifi",
        help: "The access point.",
        free_keys: false,
        keys: &[
            Key::required("ssid", "network name, 1 to 32 bytes"),
            Key::optional(
                "passphrase",
                "",
                "WPA2 passphrase, 8 to 63 printable characters; empty: generated per center by the builder",
            ),
            Key::optional("country", "TZ", "ISO 3166 country code: sets the legal channels"),
            Key::optional("channel", "6", "2.4 GHz channel, 1 to 13"),
        ],
    },
    Section {
        name: "sync",
        help: "Synchronisation with the central hub.",
        free_keys: false,
        keys: &[
            Key::required("hub_url", "URL of the central hub"),
            Key::required("site_id", "this site's number, 2 to 63 (the hub is 1); also MariaDB's server_id"),
            Key::optional("auto_increment_increment", "64", "shared by all sites: step between auto-increment ids"),
            Key::optional(
                "secret",
                "",
                "the center's sync secret as registered at the hub, 64 hex digits; empty: the card keeps its own or generates one",
            ),
            Key::optional(
                "moodle",
                "seed",
                "how first boot makes Moodle's database on a card that carries Moodle: seed (copied from the hub: \
                 a center joining the university) or install (a fresh Moodle: a demo, or a center on its own)",
            ),
        ],
    },
    Section {
        name: "access",
        help: "Who may log in.",
        free_keys: false,
        keys: &[Key::optional(
            "ssh_authorized_keys",
            "",
            "SSH public keys allowed to log in as root, separated by ','",
        )],
    },
    // The card's own settings: appliance.ini's sections of the same names (`appliance config-help`),
    // laid over the image's defaults. A key left out keeps the image's value.
    local::STATUS,
    power::POWER,
    power::NUT,
    power::SYSFS,
    power::X728,
    power::WAVESHARE,
    power::GPIO,
];

/// A checked center configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Center {
    pub id: String,
    pub name: String,
    pub timezone: String,
    pub hostname: String,
    pub domain: String,
    pub ap_ip: Ipv4Addr,
    pub ap_prefix: u8,
    pub dhcp_start: Ipv4Addr,
    pub dhcp_end: Ipv4Addr,
    pub ssid: String,
    /// `None`: the builder generates one and keeps it with the center's secrets.
    pub passphrase: Option<String>,
    pub country: String,
    pub channel: u8,
    pub hub_url: String,
    pub site_id: u8,
    pub auto_increment_increment: u8,
    /// `None`: the builder (or the card) generates one and keeps it with the center's secrets.
    pub sync_secret: Option<String>,
    /// `seed` or `install`: how first boot makes Moodle's database.
    pub moodle: String,
    pub ssh_authorized_keys: Vec<String>,
    /// The appliance.ini settings this center gives its card (`[status]`, `[power]` and the power
    /// sources' sections); `center apply` lays the card's local overrides over them.
    pub settings: local::Layer,
}

impl Center {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_document(&Document::load(path, SCHEMA)?)
    }

    pub fn from_document(doc: &Document) -> Result<Self, ConfigError> {
        let id = doc.get("center", "id").to_owned();
        if !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || id.starts_with('-')
        {
            return Err(doc.error(
                "center",
                "id",
                format!("use lower-case letters, digits and '-', got '{id}'"),
            ));
        }
        let hostname = doc.get("network", "hostname").to_owned();
        if hostname.is_empty()
            || !hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(doc.error("network", "hostname", "use letters, digits and '-'"));
        }
        // Templates put the domain into PHP and shell strings (config.php, moodle-install).
        let domain = doc.get("network", "domain");
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(doc.error("network", "domain", "use letters, digits, '-' and '.'"));
        }
        let (ap_ip, ap_prefix) = parse_cidr(doc)?;
        let dhcp_start: Ipv4Addr = doc.parse_as("network", "dhcp_start", "an IPv4 address")?;
        let dhcp_end: Ipv4Addr = doc.parse_as("network", "dhcp_end", "an IPv4 address")?;
        let same_subnet = |a: Ipv4Addr| {
            u32::from(a) & netmask(ap_prefix) == u32::from(ap_ip) & netmask(ap_prefix)
        };
        if !same_subnet(dhcp_start) || !same_subnet(dhcp_end) || dhcp_start > dhcp_end {
            return Err(doc.error(
                "network",
                "dhcp_end",
                "the DHCP range must lie, in order, in the ap_address subnet",
            ));
        }
        let ssid = doc.get("wifi", "ssid").to_owned();
        if ssid.len() > 32 {
            return Err(doc.error("wifi", "ssid", "at most 32 bytes"));
        }
        let passphrase = Some(doc.get("wifi", "passphrase").to_owned()).filter(|p| !p.is_empty());
        if passphrase.as_ref().is_some_and(|p| {
            !(8..=63).contains(&p.len()) || !p.chars().all(|c| (' '..='~').contains(&c))
        }) {
            return Err(doc.error(
                "wifi",
                "passphrase",
                "WPA2 needs 8 to 63 printable ASCII characters",
            ));
        }
        let country = doc.get("wifi", "country").to_owned();
        if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(doc.error(
                "wifi",
                "country",
                format!("expected a two-letter upper-case code, got '{country}'"),
            ));
        }
        let hub_url = doc.get("sync", "hub_url").to_owned();
        if !(hub_url.starts_with("https://") || hub_url.starts_with("http://")) {
            return Err(doc.error("sync", "hub_url", "expected an http:// or https:// URL"));
        }
        let auto_increment_increment =
            doc.int_in("sync", "auto_increment_increment", 2..=255)? as u8;
        let site_id = doc.int_in(
            "sync",
            "site_id",
            2..=u64::from(auto_increment_increment) - 1,
        )? as u8;
        let sync_secret = Some(doc.get("sync", "secret").to_owned()).filter(|s| !s.is_empty());
        if sync_secret
            .as_ref()
            .is_some_and(|s| s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(doc.error("sync", "secret", "expected 64 hexadecimal digits"));
        }
        let moodle = doc.get("sync", "moodle").to_owned();
        if !["seed", "install"].contains(&moodle.as_str()) {
            return Err(doc.error(
                "sync",
                "moodle",
                format!("expected seed or install, got '{moodle}'"),
            ));
        }
        let ssh_authorized_keys = split_list(doc.get("access", "ssh_authorized_keys"));
        if let Some(bad) = ssh_authorized_keys
            .iter()
            .find(|k| !k.starts_with("ssh-") && !k.starts_with("ecdsa-"))
        {
            return Err(doc.error(
                "access",
                "ssh_authorized_keys",
                format!("not an SSH public key: '{bad}'"),
            ));
        }
        local::check(doc)?;
        Ok(Center {
            settings: local::given(doc),
            id,
            name: doc.get("center", "name").to_owned(),
            timezone: doc.get("center", "timezone").to_owned(),
            hostname,
            domain: doc.get("network", "domain").to_owned(),
            ap_ip,
            ap_prefix,
            dhcp_start,
            dhcp_end,
            ssid,
            passphrase,
            country,
            channel: doc.int_in("wifi", "channel", 1..=13)? as u8,
            hub_url,
            site_id,
            auto_increment_increment,
            sync_secret,
            moodle,
            ssh_authorized_keys,
        })
    }

    pub fn ap_netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(netmask(self.ap_prefix))
    }

    pub fn ap_subnet(&self) -> String {
        format!(
            "{}/{}",
            Ipv4Addr::from(u32::from(self.ap_ip) & netmask(self.ap_prefix)),
            self.ap_prefix
        )
    }
}

fn netmask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn parse_cidr(doc: &Document) -> Result<(Ipv4Addr, u8), ConfigError> {
    let value = doc.get("network", "ap_address");
    let bad = || {
        doc.error(
            "network",
            "ap_address",
            format!("expected an address with prefix like 10.42.0.1/24, got '{value}'"),
        )
    };
    let (ip, prefix) = value.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(bad());
    }
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[center]\nid = dsm\nname = Dar\n[wifi]\nssid = K\npassphrase = 12345678\n\
                        [sync]\nhub_url = https://hub\nsite_id = 3\n";

    fn parse(text: &str) -> Result<Center, ConfigError> {
        Center::from_document(&Document::parse(Path::new("center.ini"), text, SCHEMA)?)
    }

    #[test]
    fn good_center_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.ap_ip, Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(c.ap_subnet(), "10.42.0.0/24");
        assert_eq!(c.ap_netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            (c.site_id, c.auto_increment_increment, c.channel),
            (3, 64, 6)
        );
    }

    #[test]
    fn short_passphrase_names_its_line() {
        let e = parse(&GOOD.replace("12345678", "1234")).unwrap_err();
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("'passphrase'"), "{e}");
    }

    /// The domain goes into config.php's and moodle-install's quoted strings.
    #[test]
    fn domain_is_a_plain_dns_name() {
        let with = |domain: &str| parse(&format!("{GOOD}[network]\ndomain = {domain}\n"));
        assert_eq!(with("school.ac.tz").unwrap().domain, "school.ac.tz");
        let e = with("x';rm -rf /").unwrap_err();
        assert_eq!(e.line, Some(11));
        assert!(e.message.contains("'domain'"), "{e}");
    }

    #[test]
    fn site_id_must_fit_the_increment() {
        let e = parse(&GOOD.replace("site_id = 3", "site_id = 64")).unwrap_err();
        assert!(e.message.contains("from 2 to 63"), "{e}");
    }

    #[test]
    fn sync_secret_must_be_64_hex_digits() {
        let with = |secret: &str| parse(&format!("{GOOD}secret = {secret}\n"));
        let e = with("abc").unwrap_err();
        assert_eq!(e.line, Some(10));
        assert!(e.message.contains("'secret'"), "{e}");
        assert!(with(&"g".repeat(64)).is_err());
        assert_eq!(
            with(&"a1".repeat(32)).unwrap().sync_secret,
            Some("a1".repeat(32))
        );
        assert_eq!(parse(GOOD).unwrap().sync_secret, None);
    }

    #[test]
    fn file_edited_on_windows_reads_the_same() {
        let windows = format!("\u{feff}{}", GOOD.replace('\n', "\r\n"));
        let c = parse(&windows).unwrap();
        assert_eq!(
            (c.id.as_str(), c.ssid.as_str(), c.hub_url.as_str()),
            ("dsm", "K", "https://hub")
        );
        assert_eq!(c.passphrase.as_deref(), Some("12345678"));
    }

    /// The card's settings in center.ini are checked as appliance.ini's: a bad UPS key names its line.
    #[test]
    fn ups_settings_are_checked_where_they_are_written() {
        let c = parse(&format!(
            "{GOOD}[power]\nsources = nut\n[nut]\ndriver = blazer_ser\nport = /dev/ttyUSB0\n"
        ))
        .unwrap();
        assert_eq!(c.settings["power"]["sources"], "nut");
        assert_eq!(c.settings["nut"]["port"], "/dev/ttyUSB0");
        assert!(!c.settings["nut"].contains_key("ups"), "only what is given");
        let e = parse(&format!("{GOOD}[power]\nsources = nut, solar\n")).unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        assert!(
            e.message.contains("'sources'") && e.message.contains("solar"),
            "{e}"
        );
        let e = parse(&format!("{GOOD}[nut]\nupsname = x\n")).unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.message.contains("invalid key 'upsname'"), "{e}");
    }

    /// center.ini holds every section the card's local overrides may: the same settings, two places.
    #[test]
    fn center_holds_the_local_sections() {
        let names = |s: Schema| s.iter().map(|s| s.name).collect::<Vec<_>>();
        assert!(names(SCHEMA).ends_with(&names(local::SCHEMA)));
    }

    #[test]
    fn example_center_in_the_repository_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs/example-center.ini");
        let c = Center::load(&path).unwrap();
        assert_eq!(c.id, "example");
    }
}
