//! The power sections of appliance.ini (`[power]` and each source's wiring) and their reading. The
//! same sections are keys of center.ini and of the card's local overrides, so one reader checks all
//! three and names the file and line of a bad value.

use std::path::PathBuf;
use std::time::Duration;

use crate::ini::{ConfigError, Document, Key, Section};
use crate::power::state::Thresholds;

pub const POWER: Section = Section {
    name: "power",
    help: "Power and UPS watch: which sources to read and when to shut down.",
    free_keys: false,
    keys: &[
        Key::optional(
            "sources",
            "",
            "comma-separated sources: nut, sysfs, x728 (Geekworm X728/X1200), waveshare (INA219 UPS HAT), \
             gpio (Linux GPIO line); empty: no UPS, power is not watched",
        ),
        Key::optional("poll_seconds", "2", "how often the sources are read, 1 to 60"),
        Key::optional("debounce_seconds", "5", "a change between mains and battery must last this long"),
        Key::optional(
            "low_debounce_seconds",
            "2",
            "low-battery readings must be seen this far apart to shut down (clean ones between do not reset it)",
        ),
        Key::optional(
            "low_clear_seconds",
            "60",
            "a low-battery reading is forgotten after this long without another (the battery recovered)",
        ),
        Key::optional(
            "restore_seconds",
            "60",
            "mains must be back this long before bulk sync resumes",
        ),
        Key::optional("low_charge_percent", "20", "on battery at or below this charge: shut down"),
        Key::optional(
            "resume_charge_percent",
            "50",
            "after a cut, bulk sync resumes once the battery is back to this charge",
        ),
        Key::optional(
            "low_runtime_seconds",
            "180",
            "on battery with at most this runtime left (when the source knows it): shut down",
        ),
        Key::optional(
            "history_file",
            "/data/kituo/power-history.json",
            "where transitions and the 24-hour chart survive restarts; empty: memory only",
        ),
        Key::optional("history_events", "500", "transitions kept, oldest dropped first"),
        Key::optional("sample_seconds", "300", "interval of the battery chart's samples"),
        Key::optional(
            "persist_seconds",
            "3600",
            "chart samples are written at most this often (transitions at once): SD cards wear out",
        ),
    ],
};

pub const NUT: Section = Section {
    name: "nut",
    help: "Network UPS Tools: the upsd server of a USB or serial UPS (source 'nut').",
    free_keys: false,
    keys: &[
        Key::optional("address", "127.0.0.1:3493", "upsd's host:port"),
        Key::optional("ups", "ups", "the UPS's name in ups.conf"),
        Key::optional(
            "driver",
            "usbhid-ups",
            "on a card: the NUT driver ups.conf names for it (usbhid-ups for most USB UPSes, blazer_ser, \
             nutdrv_qx, ...: see NUT's hardware list)",
        ),
        Key::optional(
            "port",
            "auto",
            "on a card: the driver's port (auto for USB; /dev/ttyUSB0 for a serial UPS)",
        ),
        Key::optional("username", "", "upsd.users login; empty: none (reading needs none)"),
        Key::optional("password", "", "password of that login"),
        Key::optional(
            "dead_seconds",
            "15",
            "a UPS silent this long that was last on battery counts as low battery (as upsmon's DEADTIME)",
        ),
    ],
};

pub const SYSFS: Section = Section {
    name: "sysfs",
    help: "Linux power_supply class (source 'sysfs').",
    free_keys: false,
    keys: &[Key::optional(
        "root",
        "/sys/class/power_supply",
        "folder with one folder per supply (type, online, capacity, status)",
    )],
};

pub const X728: Section = Section {
    name: "x728",
    help: "Geekworm X728/X1200-style HAT: MAX17040/48 fuel gauge on I2C, mains sensor on a GPIO (source 'x728').",
    free_keys: false,
    keys: &[
        Key::optional("i2c_bus", "1", "I2C bus number (/dev/i2c-N)"),
        Key::optional("address", "0x36", "fuel gauge I2C address"),
        Key::optional("mains_gpio", "6", "BCM number of the mains-present pin; empty: no mains sensor"),
        Key::optional(
            "mains_high_means_present",
            "no",
            "yes if the pin is high while mains is present (the X728 drives it high on power loss)",
        ),
    ],
};

pub const WAVESHARE: Section = Section {
    name: "waveshare",
    help: "Waveshare UPS HAT: INA219 on the battery line, charge estimated from voltage (source 'waveshare').",
    free_keys: false,
    keys: &[
        Key::optional("i2c_bus", "1", "I2C bus number (/dev/i2c-N)"),
        Key::optional("address", "0x42", "INA219 I2C address (0x42 or 0x43 by board)"),
        Key::optional("cells", "2", "Li-ion cells in series (2 on the UPS HAT, 1 on the UPS HAT (C))"),
    ],
};

pub const GPIO: Section = Section {
    name: "gpio",
    help: "A mains-present line on the Linux GPIO character device, e.g. on Odroid boards (source 'gpio').",
    free_keys: false,
    keys: &[
        Key::optional("chip", "/dev/gpiochip0", "GPIO chip device"),
        Key::optional("line", "0", "line offset on that chip"),
        Key::optional("active_low", "no", "yes if the line is low while mains is present"),
    ],
};

/// Which power source a `[power] sources` word names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Nut,
    Sysfs,
    X728,
    Waveshare,
    Gpio,
}

#[derive(Debug, Clone)]
pub struct NutConfig {
    pub address: String,
    pub ups: String,
    pub login: Option<(String, String)>,
    pub dead: Duration,
}

#[derive(Debug, Clone)]
pub struct X728Config {
    pub i2c_bus: u8,
    pub address: u8,
    pub mains_gpio: Option<u8>,
    pub mains_high_means_present: bool,
}

#[derive(Debug, Clone)]
pub struct WaveshareConfig {
    pub i2c_bus: u8,
    pub address: u8,
    pub cells: u8,
}

#[derive(Debug, Clone)]
pub struct GpioConfig {
    pub chip: PathBuf,
    pub line: u32,
    pub active_low: bool,
}

#[derive(Debug, Clone)]
pub struct PowerConfig {
    pub sources: Vec<SourceKind>,
    pub poll: Duration,
    pub thresholds: Thresholds,
    pub history_file: Option<PathBuf>,
    pub history_events: usize,
    pub sample_every: Duration,
    pub persist_every: Duration,
    pub nut: NutConfig,
    pub sysfs_root: PathBuf,
    pub x728: X728Config,
    pub waveshare: WaveshareConfig,
    pub gpio: GpioConfig,
}

impl PowerConfig {
    /// Reads the power sections of any document whose schema holds them.
    pub fn read(doc: &Document) -> Result<Self, ConfigError> {
        let mut sources = Vec::new();
        for word in doc.list("power", "sources") {
            let kind = match word.as_str() {
                "nut" => SourceKind::Nut,
                "sysfs" => SourceKind::Sysfs,
                "x728" => SourceKind::X728,
                "waveshare" => SourceKind::Waveshare,
                "gpio" => SourceKind::Gpio,
                other => {
                    return Err(doc.error(
                        "power",
                        "sources",
                        format!(
                            "unknown source '{other}'; known: nut, sysfs, x728, waveshare, gpio"
                        ),
                    ))
                }
            };
            if !sources.contains(&kind) {
                sources.push(kind);
            }
        }
        let thresholds = Thresholds {
            low_charge_percent: percent(doc, "power", "low_charge_percent")?,
            resume_charge_percent: percent(doc, "power", "resume_charge_percent")?,
            low_runtime_seconds: doc.int_in("power", "low_runtime_seconds", 0..=86_400)?,
            debounce: secs(doc, "power", "debounce_seconds", 0..=600)?,
            low_debounce: secs(doc, "power", "low_debounce_seconds", 0..=600)?,
            low_clear: secs(doc, "power", "low_clear_seconds", 1..=3600)?,
            restore: secs(doc, "power", "restore_seconds", 0..=86_400)?,
        };
        if thresholds.resume_charge_percent < thresholds.low_charge_percent {
            return Err(doc.error(
                "power",
                "resume_charge_percent",
                "must not be below low_charge_percent",
            ));
        }
        if thresholds.low_clear <= thresholds.low_debounce {
            // Otherwise a flag that flickers slower than low_clear would be forgotten between flickers.
            return Err(doc.error(
                "power",
                "low_clear_seconds",
                "must be above low_debounce_seconds",
            ));
        }
        let user = doc.get("nut", "username");
        // The card's ups.conf is rendered from these three.
        word(doc, "nut", "ups", |c| {
            c.is_ascii_alphanumeric() || "_-.".contains(c)
        })?;
        word(doc, "nut", "driver", |c| {
            c.is_ascii_alphanumeric() || "_-".contains(c)
        })?;
        word(doc, "nut", "port", |c| {
            c.is_ascii_graphic() && !"\"\\#=".contains(c)
        })?;
        Ok(PowerConfig {
            sources,
            poll: secs(doc, "power", "poll_seconds", 1..=60)?,
            thresholds,
            history_file: path_or_none(doc, "power", "history_file"),
            history_events: doc.int_in("power", "history_events", 10..=100_000)? as usize,
            sample_every: secs(doc, "power", "sample_seconds", 10..=3600)?,
            persist_every: secs(doc, "power", "persist_seconds", 0..=86_400)?,
            nut: NutConfig {
                address: doc.get("nut", "address").to_owned(),
                ups: doc.get("nut", "ups").to_owned(),
                login: (!user.is_empty())
                    .then(|| (user.to_owned(), doc.get("nut", "password").to_owned())),
                dead: secs(doc, "nut", "dead_seconds", 1..=3600)?,
            },
            sysfs_root: doc.get("sysfs", "root").into(),
            x728: X728Config {
                i2c_bus: doc.int_in("x728", "i2c_bus", 0..=255)? as u8,
                address: i2c_address(doc, "x728", "address")?,
                mains_gpio: match doc.get("x728", "mains_gpio") {
                    "" => None,
                    _ => Some(doc.int_in("x728", "mains_gpio", 0..=53)? as u8),
                },
                mains_high_means_present: boolean(doc, "x728", "mains_high_means_present")?,
            },
            waveshare: WaveshareConfig {
                i2c_bus: doc.int_in("waveshare", "i2c_bus", 0..=255)? as u8,
                address: i2c_address(doc, "waveshare", "address")?,
                cells: doc.int_in("waveshare", "cells", 1..=4)? as u8,
            },
            gpio: GpioConfig {
                chip: doc.get("gpio", "chip").into(),
                line: doc.int_in("gpio", "line", 0..=1023)? as u32,
                active_low: boolean(doc, "gpio", "active_low")?,
            },
        })
    }
}

pub(super) fn secs(
    doc: &Document,
    section: &str,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(doc.int_in(section, key, range)?))
}

/// `yes`/`no` (also true/false, on/off, 1/0).
pub fn boolean(doc: &Document, section: &str, key: &str) -> Result<bool, ConfigError> {
    match doc.get(section, key).to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        other => Err(doc.error(section, key, format!("expected yes or no, got '{other}'"))),
    }
}

/// An I2C address, `0x36` or `54`, within the 7-bit range.
fn i2c_address(doc: &Document, section: &str, key: &str) -> Result<u8, ConfigError> {
    let v = doc.get(section, key);
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    n.filter(|n| (0x03..=0x77).contains(n)).ok_or_else(|| {
        doc.error(
            section,
            key,
            format!("expected a 7-bit I2C address like 0x36, got '{v}'"),
        )
    })
}

fn percent(doc: &Document, section: &str, key: &str) -> Result<f32, ConfigError> {
    Ok(doc.int_in(section, key, 0..=100)? as f32)
}

/// A value of one or more characters that `allowed` accepts.
fn word(
    doc: &Document,
    section: &str,
    key: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ConfigError> {
    let v = doc.get(section, key);
    if v.is_empty() || !v.chars().all(allowed) {
        return Err(doc.error(section, key, format!("not a valid name: '{v}'")));
    }
    Ok(())
}

pub(super) fn path_or_none(doc: &Document, section: &str, key: &str) -> Option<PathBuf> {
    let v = doc.get(section, key);
    (!v.is_empty()).then(|| PathBuf::from(v))
}
