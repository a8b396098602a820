//! `appliance hub`: the hub's HTTP service. Each worker thread owns a connection to the central MariaDB
//! and serves whole requests; all state is in that database (the log, cursors, watermarks), so any number
//! of hub processes can serve behind nginx and a restart loses nothing.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::sync::engine::change;
use crate::sync::engine::clock::wall_millis;
use crate::sync::engine::follow::{follow, Gate, Pass};
use crate::sync::engine::policy::{Policy, Rulebook};
use crate::sync::engine::site::{Site, SiteConfig};
use crate::sync::engine::store;
use crate::sync::exchange::hub::{Page, Receipt};
use crate::sync::exchange::inbox;
use crate::sync::exchange::parts::{self, Cuts, PartAnswer, PushPart};
use crate::sync::exchange::wire::{self, RequestParts, Secret};
use crate::sync::exchange::{centers, hub};
use crate::sync::files;
use crate::sync::files::hash::ContentHash;
use crate::sync::files::serve::HubFiles;
use crate::sync::seed;
use crate::sync::verify;

/// Most changes and bytes a center may ask for in one page (it may ask for less).
const PAGE_MAX_CHANGES: usize = 10_000;
const PAGE_MAX_BYTES: usize = 16 << 20;
/// How long a verify call waits for another hub process's applier before answering "try again".
const SETTLE_WAIT_SECONDS: u32 = 30;

pub struct HubOptions {
    pub site: SiteConfig,
    pub listen: SocketAddr,
    pub workers: usize,
    pub capture_every: Duration,
    /// The hub's blobs, when it syncs files.
    pub files: Option<Arc<HubFiles>>,
}

/// A running hub service; stops its threads when dropped.
pub struct HubServer {
    server: Arc<Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HubServer {
    pub fn start(opts: HubOptions, rules: Rulebook) -> Result<HubServer> {
        let policy: SharedPolicy = Arc::new(RwLock::new(Arc::new(rules.policy().clone())));
        // Opening a site first checks the binlog settings and creates the bookkeeping tables: a
        // misconfigured server fails here, at start, with the reason.
        drop(Site::open(opts.site.clone())?);
        let server = Server::from_listener(listen(opts.listen)?, None)
            .map_err(|e| anyhow!("cannot listen on {}: {e}", opts.listen))?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("the hub listens on an IP address")?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (wake, woken) = mpsc::sync_channel(1);
        let cuts = Arc::new(Cuts::default());
        for n in 0..opts.workers.max(1) {
            let worker = Worker {
                cfg: opts.site.clone(),
                site: None,
                policy: policy.clone(),
                wake: wake.clone(),
                files: opts.files.clone(),
                cuts: cuts.clone(),
            };
            let (server, stop) = (server.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("hub-{n}"))
                    .spawn(move || worker.serve(&server, &stop))?,
            );
        }
        let (cfg, shared, stop2) = (opts.site.clone(), policy.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("hub-inbox".into())
                .spawn(move || inbox_loop(cfg, &shared, &woken, &stop2))?,
        );
        let (cfg, every, stop2) = (opts.site.clone(), opts.capture_every, stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("hub-capture".into())
                .spawn(move || capture_loop(cfg, rules, &policy, every, &stop2))?,
        );
        Ok(HubServer {
            server,
            addr,
            stop,
            threads,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process is stopped.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Records the hub's own Moodle changes for the centers, continually, so pulls need not wait for it.
fn capture_loop(
    cfg: SiteConfig,
    rules: Rulebook,
    shared: &SharedPolicy,
    every: Duration,
    stop: &AtomicBool,
) {
    let gate = || match stop.load(Ordering::Relaxed) {
        true => Gate::Stop,
        false => Gate::Capture,
    };
    let pass = HubPass {
        shared,
        last_prune: Instant::now(),
    };
    follow(cfg, rules, every, "hub", gate, pass);
}

/// Hands the workers new rules after a Moodle upgrade; now and then drops the log every center has
/// pulled.
struct HubPass<'a> {
    shared: &'a SharedPolicy,
    last_prune: Instant,
}

impl Pass for HubPass<'_> {
    fn then(&mut self, site: &mut Site, rules: &Rulebook, upgraded: bool) -> Result<()> {
        if upgraded {
            *self.shared.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(rules.policy().clone());
        }
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            hub::prune(site)?;
        }
        Ok(())
    }
}

/// Applies the centers' stored batches as they come (a worker calls after storing one), and every
/// second in case another hub process stored them.
fn inbox_loop(cfg: SiteConfig, shared: &SharedPolicy, woken: &Receiver<()>, stop: &AtomicBool) {
    let mut site: Option<Site> = None;
    while !stop.load(Ordering::Relaxed) {
        let policy = shared.read().unwrap_or_else(|p| p.into_inner()).clone();
        let done = match site.as_mut() {
            Some(s) => inbox::drain(s, &policy, None, 0),
            None => Site::open(cfg.clone()).map(|s| {
                site = Some(s);
                0
            }),
        };
        match done {
            // A full round: more may wait.
            Ok(n) if n >= inbox::MAX_PER_DRAIN => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("hub: inbox: {e:#}");
                site = None;
            }
        }
        match woken.recv_timeout(Duration::from_secs(1)) {
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

struct Worker {
    cfg: SiteConfig,
    /// Opened on first use and dropped after a database error, so a restarted MariaDB is reconnected.
    site: Option<Site>,
    policy: SharedPolicy,
    /// Calls the inbox applier.
    wake: SyncSender<()>,
    files: Option<Arc<HubFiles>>,
    /// Pages being pulled in parts, shared by the workers.
    cuts: Arc<Cuts>,
}

/// The rules in force, replaced whole when Moodle is upgraded.
type SharedPolicy = Arc<RwLock<Arc<Policy>>>;

impl Worker {
    fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// An answer other than 200, with a message for the center's log.
struct Refusal {
    status: u16,
    message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

impl Worker {
    fn serve(mut self, server: &Server, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let Ok(request) = server.recv() else { break };
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.answer(request);
        }
    }

    fn answer(&mut self, mut request: Request) {
        let target = request.url().to_owned();
        if target == wire::HEALTH {
            let _ = request.respond(Response::from_string("ok"));
            return;
        }
        let method = request.method().clone();
        let (site, nonce, auth) = (
            header(&request, wire::SITE_HEADER),
            header(&request, wire::NONCE_HEADER),
            header(&request, wire::AUTH_HEADER),
        );
        let mut body = Vec::new();
        let read = request
            .as_reader()
            .take(wire::MAX_BODY as u64 + 1)
            .read_to_end(&mut body);
        let claimed = site.clone();
        let outcome = match read {
            Err(e) => Err(refuse(400, format!("cannot read the request: {e}"))),
            Ok(_) if body.len() > wire::MAX_BODY => Err(refuse(413, "request too large")),
            Ok(_) => self.authenticate(&method, &target, site, nonce, auth.clone(), &body),
        };
        if outcome.is_err() && target == files::protocol::PUT {
            self.salvage_upload(claimed.as_deref(), &body);
        }
        let response = match outcome {
            Err(r) => text_response(r),
            Ok((center, secret)) => {
                let auth = auth.unwrap_or_default();
                match self.dispatch(&method, &target, center, &secret, &body) {
                    Ok(data) => signed(&secret, &auth, 200, data),
                    Err(r) => {
                        let status = r.status;
                        signed(&secret, &auth, status, r.message.into_bytes())
                    }
                }
            }
        };
        let _ = request.respond(response);
    }

    fn site(&mut self) -> Result<&mut Site, Refusal> {
        if self.site.is_none() {
            let site = Site::open(self.cfg.clone()).map_err(|e| {
                eprintln!("hub: cannot open the central database: {e:#}");
                refuse(503, "the hub's database is unavailable; try again later")
            })?;
            self.site = Some(site);
        }
        Ok(self.site.as_mut().expect("just opened"))
    }

    /// The center named in the request, if its MAC is right under that center's secret.
    fn authenticate(
        &mut self,
        method: &Method,
        target: &str,
        site: Option<String>,
        nonce: Option<String>,
        auth: Option<String>,
        body: &[u8],
    ) -> Result<(u32, Secret), Refusal> {
        // One message for every failure: a prober learns nothing about which centers exist.
        let denied = || refuse(401, "authentication failed");
        let (Some(site), Some(nonce), Some(auth)) = (site, nonce, auth) else {
            return Err(denied());
        };
        let center: u32 = site.trim().parse().map_err(|_| denied())?;
        let secret = self.secret_of(center)?.ok_or_else(denied)?;
        let parts = RequestParts {
            method: method.as_str(),
            target,
            site: center,
            nonce: &nonce,
            body,
        };
        if wire::verify_request(&secret, &parts, &auth) {
            Ok((center, secret))
        } else {
            eprintln!("hub: a request claiming center {center} failed authentication");
            Err(denied())
        }
    }

    fn secret_of(&mut self, center: u32) -> Result<Option<Secret>, Refusal> {
        let found = centers::center_secret(self.site()?.conn(), center);
        found.map_err(|e| self.database_failed(e))
    }

    /// Stores a center's pushed batch for the applier.
    fn receive(&mut self, center: u32, body: &[u8]) -> Result<Receipt, Refusal> {
        let changes = wire::decode_batch(body).map_err(|e| refuse(400, format!("{e:#}")))?;
        let receipt = inbox::receive(self.site()?, center, body, &changes)
            .map_err(|e| self.failed(e))?
            .ok_or_else(|| refuse(503, inbox::FULL))?;
        // The applier may be asleep; a full channel means it is already called.
        let _ = self.wake.try_send(());
        Ok(receipt)
    }

    /// Keeps one part of a batch too large for one request; with the last, receives the batch.
    fn receive_part(&mut self, center: u32, body: &[u8]) -> Result<PartAnswer, Refusal> {
        let PushPart { last, part } =
            wire::decode(body).map_err(|e| refuse(400, format!("{e:#}")))?;
        let received = inbox::received(self.site()?.conn(), center).map_err(|e| self.failed(e))?;
        if received >= last {
            let receipt =
                inbox::receipt(self.site()?.conn(), center).map_err(|e| self.failed(e))?;
            return Ok(PartAnswer {
                held: part.of,
                receipt: Some(receipt),
            });
        }
        let held = parts::hold(self.site()?.conn(), center, &part).map_err(|e| self.failed(e))?;
        if held < part.of {
            return Ok(PartAnswer {
                held,
                receipt: None,
            });
        }
        let whole = match parts::whole(self.site()?.conn(), center) {
            Ok(whole) => whole,
            Err(e) => {
                // A body that does not match its digest is of no use: the center sends it again.
                parts::clear(self.site()?.conn(), center).map_err(|e| self.failed(e))?;
                return Err(self.failed(e));
            }
        };
        let receipt = self.receive(center, &whole)?;
        parts::clear(self.site()?.conn(), center).map_err(|e| self.failed(e))?;
        Ok(PartAnswer {
            held,
            receipt: Some(receipt),
        })
    }

    /// A page of the hub's log for `center`; with `part=`, one part of it (a page too large for one
    /// answer travels in parts of `bytes`).
    fn serve_page(&mut self, center: u32, query: &str) -> Result<Vec<u8>, Refusal> {
        let after = query_u64(query, "after")?.unwrap_or(0);
        let max = (query_u64(query, "max")?.unwrap_or(500) as usize).clamp(1, PAGE_MAX_CHANGES);
        let bytes =
            (query_u64(query, "bytes")?.unwrap_or(64 << 10) as usize).clamp(1, PAGE_MAX_BYTES);
        let Some(index) = query_u64(query, "part")? else {
            // An agent that predates parts takes the page whole.
            let page = self.page(center, after, max, bytes)?;
            return wire::encode_page(&page).map_err(|e| self.failed(e));
        };
        let index = u32::try_from(index).map_err(|_| refuse(400, "no such part"))?;
        let key = (center, after, bytes);
        if let Some(cut) = self.cuts.get(key) {
            return self.answer_part(index, &cut);
        }
        let page = self.page(center, after, max, bytes)?;
        let batch = change::encode(&page.changes).map_err(|e| self.failed(e))?;
        let body = wire::encode_page_batch(page.last, page.more, batch.clone())
            .map_err(|e| self.failed(e))?;
        if body.len() <= bytes.min(parts::MAX_PART) {
            let cut = parts::Cut::new(&body, body.len()).map_err(|e| self.failed(e))?;
            return self.answer_part(index, &(cut, body));
        }
        // Every part is cut from the same bytes, kept: `more` would change as the log grows.
        let body = wire::encode_page_batch(page.last, true, batch).map_err(|e| self.failed(e))?;
        let cut = parts::Cut::new(&body, bytes).map_err(|e| self.failed(e))?;
        let cut = Arc::new((cut, body));
        self.cuts.keep(key, cut.clone());
        self.answer_part(index, &cut)
    }

    fn page(&mut self, center: u32, after: u64, max: usize, bytes: usize) -> Result<Page, Refusal> {
        let policy = self.policy();
        let page = hub::page(self.site()?, &policy, center, after, max, bytes)
            .map_err(|e| self.failed(e))?;
        // Asking for what follows `after` says everything up to it is applied there.
        hub::note_pulled(self.site()?, center, after).map_err(|e| self.failed(e))?;
        Ok(page)
    }

    /// Part `index` of a page.
    fn answer_part(&mut self, index: u32, cut: &(parts::Cut, Vec<u8>)) -> Result<Vec<u8>, Refusal> {
        let (cut, body) = cut;
        let part = cut
            .part(body, index)
            .map_err(|e| refuse(400, format!("{e:#}")))?;
        wire::encode(&part).map_err(|e| self.failed(e))
    }

    fn dispatch(
        &mut self,
        method: &Method,
        target: &str,
        center: u32,
        secret: &Secret,
        body: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        match (method, path) {
            (Method::Post, wire::PUSH) => {
                let receipt = self.receive(center, body)?;
                wire::encode_receipt(&receipt).map_err(|e| self.failed(e))
            }
            (Method::Post, wire::PUSH_PART) => {
                let answer = self.receive_part(center, body)?;
                wire::encode(&answer).map_err(|e| self.failed(e))
            }
            (Method::Get, wire::PULL) => self.serve_page(center, query),
            (Method::Get, wire::CLOCK) => Ok(Vec::new()),
            (Method::Post, wire::VERIFY_CATALOG) => {
                let req = wire::decode(body).map_err(|e| refuse(400, format!("{e:#}")))?;
                self.settle(center)?;
                self.run_verify(|site, policy| verify::serve_catalog(site, policy, center, &req))
            }
            (Method::Post, wire::VERIFY_SUMS) => {
                let req = wire::decode(body).map_err(|e| refuse(400, format!("{e:#}")))?;
                self.run_verify(|site, policy| verify::serve_sums(site, policy, &req))
            }
            (Method::Post, wire::VERIFY_ROWS) => {
                let req = wire::decode(body).map_err(|e| refuse(400, format!("{e:#}")))?;
                self.run_verify(|site, policy| verify::serve_rows(site, policy, &req))
            }
            (Method::Post, wire::SEED_COPY) => {
                let req = wire::decode(body).map_err(|e| refuse(400, format!("{e:#}")))?;
                self.run_verify(|site, policy| seed::serve_copy(site, policy, &req))
            }
            (Method::Post, wire::SEED_PAGE) => {
                let req = wire::decode(body).map_err(|e| refuse(400, format!("{e:#}")))?;
                let policy = self.policy();
                let reply = seed::serve_page(self.site()?, &policy, &req);
                reply
                    .and_then(|r| wire::encode_packed(&r))
                    .map_err(|e| self.failed(e))
            }
            (Method::Post, p) if p.starts_with(files::protocol::PREFIX) => {
                self.serve_files(p, center, secret, body)
            }
            _ => Err(refuse(404, format!("no such sync call: {method} {path}"))),
        }
    }

    /// Applies what `center` has waiting in the inbox, so that a comparison sees its changes.
    fn settle(&mut self, center: u32) -> Result<(), Refusal> {
        let policy = self.policy();
        let site = self.site()?;
        let settled = inbox::drain(site, &policy, Some(center), SETTLE_WAIT_SECONDS)
            .and_then(|_| inbox::waiting(site.conn(), center))
            .map_err(|e| self.failed(e))?;
        if settled > 0 {
            return Err(refuse(503, inbox::FULL));
        }
        Ok(())
    }

    /// A file call, answered from the hub's dataroot; uploads only of blobs its Moodle references.
    fn serve_files(
        &mut self,
        path: &str,
        center: u32,
        secret: &Secret,
        body: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let files = self.files.clone().ok_or_else(|| {
            refuse(
                404,
                "this hub does not sync files ([hub] dataroot is empty)",
            )
        })?;
        files
            .answer(path, center, secret, body, &mut |h| self.is_referenced(h))
            .map_err(|r| refuse(r.status, r.message))
    }

    /// An upload the link cut fails authentication (its MAC covers the whole body), but each whole
    /// chunk in it is sealed by the center that sent it: keep those, so the center resumes after them.
    fn salvage_upload(&mut self, claimed: Option<&str>, body: &[u8]) {
        let Some(files) = self.files.clone() else {
            return;
        };
        let Some(center) = claimed.and_then(|s| s.trim().parse::<u32>().ok()) else {
            return;
        };
        let Ok(Some(secret)) = self.secret_of(center) else {
            return;
        };
        let kept = files.salvage(center, &secret, body, &mut |h| self.is_referenced(h));
        if kept > 0 {
            eprintln!("hub: kept {kept} whole chunks of a cut upload from center {center}");
        }
    }

    /// Whether the hub's Moodle has a file with this content (uploads of anything else are refused).
    fn is_referenced(&mut self, hash: &ContentHash) -> Result<bool> {
        let site = self.site().map_err(|r| anyhow!(r.message))?;
        let target = site.target().clone();
        files::inventory::is_referenced(site.conn(), &target, hash)
    }

    /// Runs a verify or seed call (reads of the hub's rows) on this worker's site; encodes the reply.
    fn run_verify<T: serde::Serialize>(
        &mut self,
        call: impl FnOnce(&mut Site, &Policy) -> Result<T>,
    ) -> Result<Vec<u8>, Refusal> {
        let policy = self.policy();
        let reply = call(self.site()?, &policy).map_err(|e| self.failed(e))?;
        wire::encode(&reply).map_err(|e| self.failed(e))
    }

    /// A refusal for an engine error: a center's fault (bad data) is 400 with the reason, anything
    /// with the database drops the connection so the next request reconnects.
    fn failed(&mut self, e: anyhow::Error) -> Refusal {
        if store::is_database_error(&e) {
            self.database_failed(e)
        } else {
            refuse(400, format!("{e:#}"))
        }
    }

    fn database_failed(&mut self, e: anyhow::Error) -> Refusal {
        eprintln!("hub: database error: {e:#}");
        self.site = None;
        refuse(503, "the hub's database failed; try again")
    }
}

/// The hub's socket, with Nagle's algorithm off: tiny_http writes an answer's head and body apart,
/// and a small body held back until the center's delayed ACK cost each request some 40 ms. Linux
/// hands the option on to every accepted connection.
fn listen(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true)
        .context("cannot turn off Nagle's algorithm on the hub's socket")?;
    Ok(listener)
}

fn header(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_owned())
}

fn query_u64(query: &str, key: &str) -> Result<Option<u64>, Refusal> {
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
            return v
                .parse()
                .map(Some)
                .map_err(|_| refuse(400, format!("query parameter {key} is not a number")));
        }
    }
    Ok(None)
}

fn text_response(r: Refusal) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(r.message).with_status_code(r.status)
}

fn signed(
    secret: &Secret,
    request_auth: &str,
    status: u16,
    body: Vec<u8>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let mac = wire::sign_response(secret, request_auth, status, &body);
    let clock = wire::sign_clock(secret, request_auth, wall_millis());
    let mut response = Response::from_data(body).with_status_code(status);
    for (name, value) in [(wire::AUTH_HEADER, mac), (wire::CLOCK_HEADER, clock)] {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    response
}
