//! The technician credential: an Argon2 hash in the config, a session cookie after login, and a per-session
//! token in every action form. Actions also require a same-origin request (Origin, when the browser sends
//! it, must name this host) and the cookie is `SameSite=Strict`: another site cannot make a technician's
//! browser press the buttons.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// A session lasts this long after login.
pub const SESSION_TTL: Duration = Duration::from_secs(3600);
/// Cookie name of the session.
pub const COOKIE: &str = "kituo_session";

/// Argon2id with 7 MiB and 5 passes: OWASP's low-memory choice, kind to a 1 GB board.
fn hasher() -> Result<Argon2<'static>> {
    let params = Params::new(7 * 1024, 5, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).context("no randomness for the salt")?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    Ok(hash.to_string())
}

/// Checks that a configured hash is a PHC string Argon2 can verify against.
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| {
        format!("not a password hash ({e}); make one with `appliance hash-password`")
    })?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!("expected an argon2 hash, got {}", parsed.algorithm));
    }
    Ok(())
}

pub fn verify(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

pub fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes).context("no randomness for a session")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

struct Session {
    csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session; returns (cookie token, form token).
    pub fn open(&self) -> Result<(String, String)> {
        let token = random_token()?;
        let csrf = random_token()?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.insert(
            token.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Ok((token, csrf))
    }

    /// The form token of a live session.
    pub fn csrf_for(&self, token: &str) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(token)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.csrf.clone())
    }

    pub fn close(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
}

/// Constant-time comparison, so a form token cannot be guessed byte by byte from timings.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session token in a `Cookie` header.
pub fn cookie_token(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// A request may act if it carries no Origin (older browsers, curl) or an Origin whose host is the one
/// it was sent to.
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    match (origin, host) {
        (None, _) => true,
        (Some(o), Some(h)) => {
            let o = o.split_once("://").map_or(o, |(_, rest)| rest);
            o.trim_end_matches('/') == h
        }
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(check_hash_format(&h).is_ok());
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "wrong"));
        assert!(check_hash_format("plaintext").is_err());
    }

    #[test]
    fn sessions_and_tokens() {
        let s = Sessions::default();
        let (token, csrf) = s.open().unwrap();
        assert_eq!(s.csrf_for(&token), Some(csrf.clone()));
        assert!(same(&csrf, &s.csrf_for(&token).unwrap()));
        assert!(!same(&csrf, "x"));
        s.close(&token);
        assert_eq!(s.csrf_for(&token), None);
        assert_eq!(cookie_token("a=b; kituo_session=xyz; c=d"), Some("xyz"));
    }

    #[test]
    fn origin_rules() {
        assert!(same_origin(None, Some("kituo.lan")));
        assert!(same_origin(Some("http://kituo.lan"), Some("kituo.lan")));
        assert!(!same_origin(Some("http://evil.example"), Some("kituo.lan")));
        assert!(!same_origin(Some("http://kituo.lan"), None));
    }
}
