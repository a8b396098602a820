//! Sneakernet: what the link would carry, written to a USB stick or DVD as signed volumes and applied on the
//! other side by the same paths the link uses, so exactly-once rests on the same watermarks.
//!
//! ```text
//! center --export--> stick --import at the hub-->  inbox (origin + rules check) -> apply; blobs -> pool
//! hub --export --for C--> stick --import at C--->  pull apply (hub cursor) ;      blobs -> pool
//! ```
//!
//! - [`manifest`]: what a volume says of itself, and its HMAC under the center's sync secret.
//! - [`volume`]: one file of a stick: payload, then the signed manifest; written and verified.
//! - [`export`], [`import`]: the two commands, for a center and for the hub.
//! - [`history`]: every export and import, for the status page.
//!
//! A stick is split into volumes sized for the medium; each volume is verified on its own, so a
//! half-copied stick still gives its complete volumes: row batches in order up to the first gap, and
//! every blob whose chunks all arrived.

pub mod export;
pub mod history;
pub mod import;
pub mod manifest;
pub mod volume;

use anyhow::{bail, Context, Result};

/// The chunk size blobs travel in inside a stick (the HTTP link's default too).
pub const CHUNK: usize = 64 * 1024;

/// The smallest volume: a chunk, a row batch and the manifest must fit.
pub const MIN_VOLUME: u64 = 128 * 1024;

/// Parses a medium's size: a number with an optional unit, `K`, `M`, `G`, `T` in powers of 1000 (as
/// media are labelled: a "4.7G" DVD holds 4.7e9 bytes) or `Ki`, `Mi`, `Gi`, `Ti` in powers of 1024; a
/// trailing `B` is allowed.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => bail!("'{text}': unknown unit '{other}' (use K, M, G, T or Ki, Mi, Gi, Ti)"),
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("'{text}' is not a size such as 4.7G or 700M"))?;
    let bytes = (n * factor).floor();
    // NaN and negatives fail this too.
    if bytes.is_nan() || bytes < MIN_VOLUME as f64 {
        bail!("a volume of '{text}' is too small: at least {MIN_VOLUME} bytes");
    }
    Ok(if bytes >= u64::MAX as f64 {
        u64::MAX
    } else {
        bytes as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_media_are_labelled() {
        assert_eq!(parse_size("4.7G").unwrap(), 4_700_000_000);
        assert_eq!(parse_size("700M").unwrap(), 700_000_000);
        assert_eq!(parse_size("700MiB").unwrap(), 700 * 1024 * 1024);
        assert_eq!(parse_size("200k").unwrap(), 200_000);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "G", "4.7X", "12", "-5M", "1.2.3M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
