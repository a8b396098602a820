//! What travels between a center's agent and the hub over HTTP, and how both ends prove who they are.
//!
//! Every request carries the center's site number, a fresh nonce and an HMAC-SHA256 under the center's
//! own secret over the method, path, site, nonce and body digest. The hub's answer carries an HMAC under
//! the same secret bound to that request's MAC, so a center applies only batches the hub made for this
//! very request: a stolen card's secret speaks for one center only, and neither side takes changes from
//! whoever sits on the link. TLS (rustls on the agent, nginx or the hub's proxy in front) adds secrecy.

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sync::engine::change::{self, Change};
use crate::sync::exchange::hub::{Page, Receipt};

pub const PUSH: &str = "/sync/v1/push";
pub const PULL: &str = "/sync/v1/pull";
/// A part of a push too large for one request (see `parts`); a pull asks for parts with `part=`.
pub const PUSH_PART: &str = "/sync/v1/push/part";
/// `sync verify`: the hub's tables, chunk checksums and rows (bodies are MessagePack requests).
pub const VERIFY_CATALOG: &str = "/sync/v1/verify/catalog";
pub const VERIFY_SUMS: &str = "/sync/v1/verify/sums";
pub const VERIFY_ROWS: &str = "/sync/v1/verify/rows";
/// `sync seed`: the rows of what never syncs but a joining center needs (MessagePack requests).
pub const SEED_COPY: &str = "/sync/v1/seed/copy";
/// A page of relayed rows for a seed, across tables (see `seed::serve_page`); the answer is compressed.
pub const SEED_PAGE: &str = "/sync/v1/seed/page";
/// An empty authenticated answer: its signed clock header is what a center reads before it stamps
/// anything after a boot (see `engine::skew`).
pub const CLOCK: &str = "/sync/v1/clock";
/// Unauthenticated liveness, for nginx and load balancers.
pub const HEALTH: &str = "/sync/v1/health";

pub const SITE_HEADER: &str = "X-Kituo-Site";
pub const NONCE_HEADER: &str = "X-Kituo-Nonce";
pub const AUTH_HEADER: &str = "X-Kituo-Auth";
/// The hub's clock in an answer, `<unix milliseconds> <MAC>`: apart from the answer's own MAC, so that
/// a center built before it ignores it (see `engine::skew`).
pub const CLOCK_HEADER: &str = "X-Kituo-Clock";

/// Largest compressed request or response body either side reads.
pub const MAX_BODY: usize = 16 << 20;
/// Largest batch after decompression (a hostile batch must not exhaust a 1 GB board).
pub const MAX_BATCH: usize = 64 << 20;

/// A center's shared secret: 32 random bytes, written as 64 hex digits in files and the hub's table.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn generate() -> Result<Secret> {
        let mut bytes = vec![0u8; 32];
        getrandom::getrandom(&mut bytes).context("no randomness for a new secret")?;
        Ok(Secret(bytes))
    }

    pub fn from_hex(text: &str) -> Result<Secret> {
        let bytes = hex::decode(text.trim()).context("a sync secret is 64 hex digits")?;
        if bytes.len() != 32 {
            bail!(
                "a sync secret is 64 hex digits, this one has {}",
                text.trim().len()
            );
        }
        Ok(Secret(bytes))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads a secret file (64 hex digits), naming the file on error.
    pub fn read(path: &std::path::Path) -> Result<Secret> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the sync secret {}", path.display()))?;
        Secret::from_hex(&text).with_context(|| format!("in {}", path.display()))
    }

    pub(crate) fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; the error case cannot happen.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

/// What a request's MAC covers.
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// Path and query, exactly as sent.
    pub target: &'a str,
    pub site: u32,
    pub nonce: &'a str,
    pub body: &'a [u8],
}

fn request_mac(secret: &Secret, r: &RequestParts<'_>) -> Hmac<Sha256> {
    let mut mac = secret.mac();
    let head = format!(
        "kituo-request-v1\n{}\n{}\n{}\n{}\n",
        r.method, r.target, r.site, r.nonce
    );
    mac.update(head.as_bytes());
    mac.update(&Sha256::digest(r.body));
    mac
}

pub fn sign_request(secret: &Secret, r: &RequestParts<'_>) -> String {
    hex::encode(request_mac(secret, r).finalize().into_bytes())
}

/// Checks a request's MAC in constant time.
pub fn verify_request(secret: &Secret, r: &RequestParts<'_>, auth: &str) -> bool {
    let Ok(tag) = hex::decode(auth) else {
        return false;
    };
    request_mac(secret, r).verify_slice(&tag).is_ok()
}

fn response_mac(secret: &Secret, request_auth: &str, status: u16, body: &[u8]) -> Hmac<Sha256> {
    response_mac_of_digest(secret, request_auth, status, &Sha256::digest(body))
}

fn response_mac_of_digest(
    secret: &Secret,
    request_auth: &str,
    status: u16,
    body_digest: &[u8],
) -> Hmac<Sha256> {
    let mut mac = secret.mac();
    mac.update(format!("kituo-response-v1\n{request_auth}\n{status}\n").as_bytes());
    mac.update(body_digest);
    mac
}

pub fn sign_response(secret: &Secret, request_auth: &str, status: u16, body: &[u8]) -> String {
    hex::encode(
        response_mac(secret, request_auth, status, body)
            .finalize()
            .into_bytes(),
    )
}

pub fn verify_response(
    secret: &Secret,
    request_auth: &str,
    status: u16,
    body: &[u8],
    auth: &str,
) -> bool {
    let Ok(tag) = hex::decode(auth) else {
        return false;
    };
    response_mac(secret, request_auth, status, body)
        .verify_slice(&tag)
        .is_ok()
}

/// [`verify_response`] for an answer read as a stream: `body_digest` is the SHA-256 of its body.
pub fn verify_response_digest(
    secret: &Secret,
    request_auth: &str,
    status: u16,
    body_digest: &[u8],
    auth: &str,
) -> bool {
    let Ok(tag) = hex::decode(auth) else {
        return false;
    };
    response_mac_of_digest(secret, request_auth, status, body_digest)
        .verify_slice(&tag)
        .is_ok()
}

fn clock_mac(secret: &Secret, request_auth: &str, millis: u64) -> Hmac<Sha256> {
    let mut mac = secret.mac();
    mac.update(format!("kituo-clock-v1\n{request_auth}\n{millis}\n").as_bytes());
    mac
}

/// The hub's clock for the answer to the request signed `request_auth`.
pub fn sign_clock(secret: &Secret, request_auth: &str, millis: u64) -> String {
    let mac = clock_mac(secret, request_auth, millis)
        .finalize()
        .into_bytes();
    format!("{millis} {}", hex::encode(mac))
}

/// The hub's clock from a [`CLOCK_HEADER`], if it is there and its MAC holds: a clock from anyone
/// else would let the link move this center's stamps.
pub fn verify_clock(secret: &Secret, request_auth: &str, header: &str) -> Option<u64> {
    let (millis, tag) = header.split_once(' ')?;
    let millis: u64 = millis.parse().ok()?;
    let tag = hex::decode(tag).ok()?;
    clock_mac(secret, request_auth, millis)
        .verify_slice(&tag)
        .is_ok()
        .then_some(millis)
}

/// A fresh nonce per request: 16 random bytes in hex.
pub fn nonce() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).context("no randomness for a nonce")?;
    Ok(hex::encode(bytes))
}

/// A page as it travels: the changes stay in their compressed batch form.
#[derive(Serialize, Deserialize)]
struct WirePage {
    last: u64,
    more: bool,
    #[serde(with = "serde_bytes")]
    batch: Vec<u8>,
}

pub fn encode_page(page: &Page) -> Result<Vec<u8>> {
    encode_page_batch(page.last, page.more, change::encode(&page.changes)?)
}

/// A page whose changes are encoded already (`change::encode`).
pub fn encode_page_batch(last: u64, more: bool, batch: Vec<u8>) -> Result<Vec<u8>> {
    rmp_serde::to_vec(&WirePage { last, more, batch }).context("cannot encode a page")
}

pub fn decode_page(bytes: &[u8]) -> Result<Page> {
    let wire: WirePage = rmp_serde::from_slice(bytes).context("the hub's page does not decode")?;
    Ok(Page {
        changes: change::decode(&wire.batch, MAX_BATCH)?,
        last: wire.last,
        more: wire.more,
    })
}

pub fn encode_receipt(receipt: &Receipt) -> Result<Vec<u8>> {
    rmp_serde::to_vec(receipt).context("cannot encode a receipt")
}

pub fn decode_receipt(bytes: &[u8]) -> Result<Receipt> {
    rmp_serde::from_slice(bytes).context("the hub's receipt does not decode")
}

/// A verify request or reply.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec(value).context("cannot encode a message")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).context("a message does not decode")
}

/// A MessagePack answer compressed with zstd, for the answers that carry a database's rows (level 3:
/// a seed has the hub compress all of its Moodle).
pub fn encode_packed<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    zstd::bulk::compress(&encode(value)?, 3).context("cannot compress a message")
}

pub fn decode_packed<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let packed = zstd::bulk::decompress(bytes, MAX_BATCH)
        .context("a compressed message is corrupt or too large")?;
    decode(&packed)
}

pub fn encode_batch(changes: &[Change]) -> Result<Vec<u8>> {
    change::encode(changes)
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Change>> {
    change::decode(bytes, MAX_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(body: &[u8]) -> RequestParts<'_> {
        RequestParts {
            method: "POST",
            target: PUSH,
            site: 2,
            nonce: "00ff",
            body,
        }
    }

    #[test]
    fn a_mac_holds_only_for_the_same_secret_site_and_body() {
        let secret = Secret::generate().unwrap();
        let other = Secret::generate().unwrap();
        let auth = sign_request(&secret, &parts(b"batch"));
        assert!(verify_request(&secret, &parts(b"batch"), &auth));
        assert!(!verify_request(&other, &parts(b"batch"), &auth));
        assert!(!verify_request(&secret, &parts(b"batcH"), &auth));
        let mut as_site_3 = parts(b"batch");
        as_site_3.site = 3;
        assert!(!verify_request(&secret, &as_site_3, &auth));
        assert!(!verify_request(&secret, &parts(b"batch"), "not hex"));

        let answer = sign_response(&secret, &auth, 200, b"page");
        assert!(verify_response(&secret, &auth, 200, b"page", &answer));
        assert!(!verify_response(
            &secret,
            "another request",
            200,
            b"page",
            &answer
        ));
        assert!(!verify_response(&secret, &auth, 200, b"pagE", &answer));

        let clock = sign_clock(&secret, &auth, 1_700_000_000_123);
        assert_eq!(
            verify_clock(&secret, &auth, &clock),
            Some(1_700_000_000_123)
        );
        assert_eq!(verify_clock(&other, &auth, &clock), None);
        assert_eq!(verify_clock(&secret, "another request", &clock), None);
        let moved = clock.replacen("1700000000123", "1700000000124", 1);
        assert_eq!(verify_clock(&secret, &auth, &moved), None);
        assert_eq!(verify_clock(&secret, &auth, "garbage"), None);
    }

    #[test]
    fn secrets_are_64_hex_digits() {
        let s = Secret::generate().unwrap();
        assert_eq!(
            Secret::from_hex(&s.to_hex()).unwrap().as_bytes(),
            s.as_bytes()
        );
        assert!(Secret::from_hex("abcd").is_err());
        assert!(Secret::from_hex(&"zz".repeat(32)).is_err());
    }
}

/// The hub was reached and turned the request down (an HTTP error status): the link works.
#[derive(Debug, thiserror::Error)]
#[error("the hub answered {code}: {text}")]
pub struct HubRefused {
    pub code: u16,
    pub text: String,
}
