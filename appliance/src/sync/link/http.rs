//! The agent's way to the hub: authenticated HTTP(S) requests (ureq, rustls), under a bandwidth cap.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::sync::engine::change::Change;
use crate::sync::engine::skew::{self, Skew};
use crate::sync::exchange::agent::Link;
use crate::sync::exchange::hub::{Page, Receipt};
use crate::sync::exchange::parts::{self, Cut, Part, PartAnswer, PushPart};
use crate::sync::exchange::wire::{self, HubRefused, RequestParts, Secret};
use crate::sync::seed;
use crate::sync::verify::{
    Catalog, CatalogRequest, Reference, RowsReply, RowsRequest, SumsReply, SumsRequest,
};

pub struct LinkOptions {
    /// The hub's base URL, without a trailing '/'.
    pub hub_url: String,
    pub site: u32,
    pub secret: Secret,
    /// A request silent this long fails (the link counts as cut).
    pub timeout: Duration,
    /// Bytes per second; `None`: no cap.
    pub rate_limit: Option<u64>,
    /// Largest page to ask for, in logged bytes, and the largest request or answer: a batch or a page
    /// beyond it travels in parts of this size.
    pub page_bytes: usize,
    /// PEM certificates to trust for an https hub instead of the public roots (a university's own
    /// CA); `None`: the public web's roots.
    pub ca_file: Option<PathBuf>,
}

/// Bytes moved over the link so far, both ways, bodies only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    pub received: u64,
}

pub struct HttpLink {
    agent: ureq::Agent,
    opts: LinkOptions,
    throttle: Option<Throttle>,
    traffic: Traffic,
    /// The parts of a page that came before a cut, and the position it follows.
    pulling: Option<(u64, Vec<Part>)>,
    /// The most certain reading of the hub's clock so far.
    skew: Option<Skew>,
}

impl HttpLink {
    pub fn new(opts: LinkOptions) -> Result<HttpLink> {
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(opts.timeout.min(Duration::from_secs(15)))
            .timeout_read(opts.timeout)
            .timeout_write(opts.timeout);
        if let Some(file) = &opts.ca_file {
            builder = builder.tls_config(Arc::new(tls_trusting(file)?));
        }
        Ok(HttpLink {
            agent: builder.build(),
            throttle: opts.rate_limit.map(Throttle::new),
            opts,
            traffic: Traffic::default(),
            pulling: None,
            skew: None,
        })
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The most certain reading of the hub's clock this link has made, if any answer carried one.
    pub fn skew(&self) -> Option<&Skew> {
        self.skew.as_ref()
    }

    /// One authenticated exchange; the answer's body once its MAC checks out.
    /// The center's secret, which also seals its uploaded chunks.
    pub fn secret(&self) -> &Secret {
        &self.opts.secret
    }

    pub fn call(&mut self, method: &str, target: &str, body: &[u8]) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.call_streamed(method, target, body, &mut |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        Ok(data)
    }

    /// One authenticated exchange whose answer goes to `sink` piece by piece as it arrives, so that a
    /// large answer needs no buffer and a cut keeps what came before it. The MAC covers the whole answer
    /// and is checked at its end: until this returns Ok, a sink may keep only what it can check itself
    /// (file chunks carry checksums, and a blob is placed only once its sha1 matches).
    pub fn call_streamed(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let nonce = wire::nonce()?;
        let parts = RequestParts {
            method,
            target,
            site: self.opts.site,
            nonce: &nonce,
            body,
        };
        let auth = wire::sign_request(&self.opts.secret, &parts);
        if let Some(t) = self.throttle.as_mut() {
            t.spend(body.len());
        }
        self.traffic.sent += body.len() as u64;
        let url = format!("{}{target}", self.opts.hub_url);
        let request = self
            .agent
            .request(method, &url)
            .set(wire::SITE_HEADER, &self.opts.site.to_string())
            .set(wire::NONCE_HEADER, &nonce)
            .set(wire::AUTH_HEADER, &auth);
        let sent = skew::boot_millis()?;
        let response = match request.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(HubRefused {
                    code,
                    text: text.chars().take(300).collect(),
                }
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot reach the hub at {url}")),
        };
        let status = response.status();
        self.read_clock(&response, &auth, sent)?;
        let mac = response.header(wire::AUTH_HEADER).unwrap_or("").to_owned();
        let digest = self.read_body(response.into_reader(), sink)?;
        if !wire::verify_response_digest(&self.opts.secret, &auth, status, &digest, &mac) {
            bail!("the hub's answer failed authentication (wrong secret, or something on the link altered it)");
        }
        Ok(())
    }

    /// Keeps the hub's clock from an answer whose round trip began at `sent`, when it is more certain
    /// than the reading kept.
    fn read_clock(&mut self, response: &ureq::Response, auth: &str, sent: u64) -> Result<()> {
        let answered = skew::boot_millis()?;
        let header = response.header(wire::CLOCK_HEADER).unwrap_or("");
        let Some(hub) = wire::verify_clock(&self.opts.secret, auth, header) else {
            return Ok(());
        };
        let sample = Skew::sample(hub, sent, answered)?;
        self.skew = Some(match self.skew.take() {
            Some(kept) => kept.better(sample),
            None => sample,
        });
        Ok(())
    }

    /// Pushes a batch encoded beforehand (see `agent::prepare`); one larger than a batch may be (a
    /// single large row) goes in parts.
    pub fn push_encoded(&mut self, body: &[u8], last: u64) -> Result<Receipt> {
        if body.len() <= self.opts.page_bytes {
            let answer = self.call("POST", wire::PUSH, body)?;
            return wire::decode_receipt(&answer);
        }
        let cut = Cut::new(body, self.opts.page_bytes)?;
        let mut next = 0;
        // The hub answers each part with how many it holds: after a cut or a restart (it still holds
        // them) the batch goes on from there. Bounded, in case a hub never moves on.
        for _ in 0..2 * cut.of + 2 {
            let part = cut.part(body, next)?;
            let answer: PartAnswer = self.exchange(wire::PUSH_PART, &PushPart { last, part })?;
            if let Some(receipt) = answer.receipt {
                return Ok(receipt);
            }
            ensure!(
                answer.held < cut.of,
                "the hub holds every part of a batch but gave no receipt"
            );
            next = answer.held;
        }
        bail!(
            "the hub does not keep the parts of a {}-byte batch",
            body.len()
        )
    }

    /// One page, asked for in parts: a page too large for one answer comes a part at a time, and the
    /// parts that came before a cut are kept for the next try at the same position.
    fn pull_parts(&mut self, after: u64, max: usize, got: &mut Vec<Part>) -> Result<Page> {
        let mut asked = 0u32;
        loop {
            asked += 1;
            let target = format!(
                "{}?after={after}&max={max}&bytes={}&part={}",
                wire::PULL,
                self.opts.page_bytes,
                got.len()
            );
            let answer = self.call("GET", &target, &[])?;
            let Ok(part) = wire::decode::<Part>(&answer) else {
                // A hub that predates parts answers with the whole page.
                return wire::decode_page(&answer);
            };
            ensure!(asked <= 2 * part.of + 2, "the hub's page never came whole");
            let belongs = got
                .first()
                .is_none_or(|f| f.digest == part.digest && f.of == part.of);
            if !belongs || part.index as usize != got.len() {
                // The page is not the one begun (the hub's log moved on): begin again.
                ensure!(
                    !got.is_empty(),
                    "the hub sent part {} for part 0",
                    part.index
                );
                got.clear();
                continue;
            }
            got.push(part);
            if got.len() == got[0].of as usize {
                let body = parts::join(got);
                got.clear();
                return wire::decode_page(&body?);
            }
        }
    }

    /// POSTs a MessagePack request, decodes the reply.
    fn exchange<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
        &mut self,
        target: &str,
        request: &Q,
    ) -> Result<A> {
        let body = wire::encode(request)?;
        let answer = self.call("POST", target, &body)?;
        wire::decode(&answer)
    }

    /// Hands the answer's body to `sink` as it arrives; returns its SHA-256 (for the MAC).
    fn read_body(
        &mut self,
        reader: impl Read,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Vec<u8>> {
        let mut reader = reader.take(wire::MAX_BODY as u64 + 1);
        let mut digest = Sha256::new();
        let mut len = 0;
        let mut chunk = [0u8; 8192];
        loop {
            let n = reader
                .read(&mut chunk)
                .context("the link broke while reading the hub's answer")?;
            if n == 0 {
                break;
            }
            len += n;
            if len > wire::MAX_BODY {
                bail!("the hub's answer is larger than {} bytes", wire::MAX_BODY);
            }
            self.traffic.received += n as u64;
            if let Some(t) = self.throttle.as_mut() {
                t.spend(n);
            }
            digest.update(&chunk[..n]);
            sink(&chunk[..n])?;
        }
        Ok(digest.finalize().to_vec())
    }
}

impl Link for HttpLink {
    fn push(&mut self, changes: &[Change]) -> Result<Receipt> {
        let last = changes.iter().map(|c| c.seq).max().unwrap_or(0);
        self.push_encoded(&wire::encode_batch(changes)?, last)
    }

    fn pull(&mut self, after: u64, max: usize) -> Result<Page> {
        let mut got = match self.pulling.take() {
            Some((at, got)) if at == after => got,
            _ => Vec::new(),
        };
        let page = self.pull_parts(after, max, &mut got);
        // What came before a cut is kept; a hub that refused (say, a part its page no longer has)
        // starts the page over.
        let refused = page
            .as_ref()
            .is_err_and(|e| e.downcast_ref::<HubRefused>().is_some());
        if !got.is_empty() && !refused {
            self.pulling = Some((after, got));
        }
        page
    }
}

/// A TLS client that trusts only the certificates in `file` (PEM).
fn tls_trusting(file: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .with_context(|| format!("cannot read the CA file {}", file.display()))?;
    for cert in certs {
        let cert =
            cert.with_context(|| format!("{} holds a broken certificate", file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{} holds a certificate rustls refuses", file.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", file.display());
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `sync verify` over the same link.
impl Reference for HttpLink {
    fn catalog(&mut self, req: &CatalogRequest) -> Result<Catalog> {
        self.exchange(wire::VERIFY_CATALOG, req)
    }
    fn sums(&mut self, req: &SumsRequest) -> Result<SumsReply> {
        self.exchange(wire::VERIFY_SUMS, req)
    }
    fn rows(&mut self, req: &RowsRequest) -> Result<RowsReply> {
        self.exchange(wire::VERIFY_ROWS, req)
    }
}

/// `sync seed` over the same link.
impl seed::Source for HttpLink {
    fn copy(&mut self, req: &seed::CopyRequest) -> Result<seed::CopyReply> {
        self.exchange(wire::SEED_COPY, req)
    }
    fn page(&mut self, req: &seed::PageRequest) -> Result<seed::PageReply> {
        let answer = self.call("POST", wire::SEED_PAGE, &wire::encode(req)?)?;
        wire::decode_packed(&answer)
    }
}

/// A token bucket over wall time: spending more than the rate allows sleeps until the average is back
/// under it. A short burst is allowed so that small requests are not delayed at all.
struct Throttle {
    bytes_per_second: u64,
    /// When the bucket is empty again (in the past: it is full).
    free_at: Instant,
}

const BURST: Duration = Duration::from_millis(250);

impl Throttle {
    fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bytes_per_second: bytes_per_second.max(1),
            free_at: Instant::now(),
        }
    }

    fn spend(&mut self, bytes: usize) {
        let now = Instant::now();
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let full = now.checked_sub(BURST).unwrap_or(now);
        self.free_at = self.free_at.max(full) + cost;
        if self.free_at > now {
            std::thread::sleep(self.free_at - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_holds_the_average_rate() {
        let mut t = Throttle::new(100_000);
        let start = Instant::now();
        for _ in 0..50 {
            t.spend(2_000);
        }
        // 100 kB at 100 kB/s, less the allowed burst.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(700), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
}
