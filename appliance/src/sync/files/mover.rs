//! The agent's file pass, run after each row exchange: reads what the local `files` rows reference,
//! recovers what it can from Moodle's trashdir, asks the hub about blobs it has not heard of, then moves
//! blobs both ways in priority order until the pass's time is up, the queue is empty, or the supervisor
//! pauses sync.
//!
//! Downloads ask for many small blobs, or a large stretch of one big blob, per request, and write each
//! chunk as it arrives, so a cut loses at most the chunk in flight and a restart resumes at the partial
//! copy's length. What the hub is known to hold is kept in `kituo_sync.files_at_hub`: a blob the hub
//! has is never sent to it again, and only blobs the hub has are asked for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use mysql::prelude::Queryable;

use crate::status::{Feed, FileSyncState, FileSyncStatus};
use crate::sync::engine::site::Site;
use crate::sync::exchange::wire::HubRefused;
use crate::sync::files::chunk::Chunk;
use crate::sync::files::hash::ContentHash;
use crate::sync::files::inventory::{self, Referenced};
use crate::sync::files::pool::{Found, Pool, Progress};
use crate::sync::files::priority::Rank;
use crate::sync::files::protocol::BlobLink;
use crate::sync::files::protocol::{FetchRequest, Hashes, Holding, PutResult, MAX_HAVE};
use crate::sync::files::settings::FileSettings;
use crate::sync::files::sweep;

/// A blob the hub lacked (to fetch) or refused (to send) is asked about again after this.
const ASK_AGAIN: Duration = Duration::from_secs(300);
/// After a local failure or a refusal, file passes rest this long (rows go on meanwhile).
const REST: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(300);
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
const RATE_WINDOW: Duration = Duration::from_secs(10);

const AT_HUB_TABLE: &str = "CREATE TABLE IF NOT EXISTS kituo_sync.files_at_hub (
    hash BINARY(20) NOT NULL PRIMARY KEY
) ENGINE=InnoDB";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Fetch,
    Send,
}

#[derive(Debug, Clone)]
struct Item {
    hash: ContentHash,
    size: u64,
    rank: Rank,
    way: Way,
}

/// Why a pass stopped early.
enum Failure {
    /// The link broke (a cut, a timeout, a corrupted chunk): the runner backs off as for rows.
    Link(anyhow::Error),
    /// Something here, or the hub turned a call down: reported, and file passes rest a while.
    Local(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Local(e)
    }
}

/// Sorts a link call's error: a refusal means the link works.
fn link_failure(e: anyhow::Error) -> Failure {
    if e.chain().any(|c| c.is::<HubRefused>()) {
        Failure::Local(e)
    } else {
        Failure::Link(e)
    }
}

/// Bytes moved over the last seconds.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn add(&mut self, bytes: u64) {
        let now = Instant::now();
        self.samples.push_back((now, bytes));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn per_second(&self) -> u64 {
        let Some((first, _)) = self.samples.front() else {
            return 0;
        };
        if first.elapsed() > RATE_WINDOW {
            return 0;
        }
        let total: u64 = self.samples.iter().map(|s| s.1).sum();
        (total as f64 / first.elapsed().as_secs_f64().max(1.0)) as u64
    }
}

pub struct Mover {
    settings: FileSettings,
    pool: Option<Pool>,
    /// Blobs the hub holds (loaded from `kituo_sync.files_at_hub` on the first pass).
    at_hub: Option<HashSet<ContentHash>>,
    /// Blobs not to ask the hub about again before the time given.
    ask_later: HashMap<ContentHash, Instant>,
    /// Bytes of this site's uploads the hub holds.
    hub_partial: HashMap<ContentHash, u64>,
    rest_until: Option<Instant>,
    last_sweep: Option<Instant>,
    /// Referenced blobs at the last pass.
    last_refs: usize,
    last_publish: Option<Instant>,
    rate: Rate,
    status: FileSyncStatus,
}

fn unix_now() -> u64 {
    crate::history::unix_now()
}

impl Mover {
    pub fn new(settings: FileSettings) -> Mover {
        Mover {
            settings,
            pool: None,
            at_hub: None,
            ask_later: HashMap::new(),
            hub_partial: HashMap::new(),
            rest_until: None,
            last_sweep: None,
            last_refs: 0,
            last_publish: None,
            rate: Rate::default(),
            status: FileSyncStatus {
                state: FileSyncState::Idle,
                fetch_pending: 0,
                fetch_bytes: 0,
                send_pending: 0,
                send_bytes: 0,
                oldest: None,
                waiting_for_window: 0,
                rate_bytes_per_second: 0,
                moved_files: 0,
                moved_bytes: 0,
                restored_from_trash: 0,
                trashed: 0,
                last_success: None,
                last_error: None,
            },
        }
    }

    /// One pass, at most `[files] pass_seconds` long; true if a blob moved. A broken link is returned
    /// as an error (the runner backs off as it does for rows; a database error makes it reconnect);
    /// anything else is reported in the status and tried again after a rest.
    pub fn pass(
        &mut self,
        site: &mut Site,
        link: &mut dyn BlobLink,
        stop: &dyn Fn() -> bool,
        feed: Option<&Feed>,
    ) -> Result<bool> {
        if self.rest_until.is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        let deadline = Instant::now() + self.settings.pass;
        let outcome = self.run(site, link, stop, feed, deadline);
        let result = match outcome {
            Ok(moved) => {
                self.status.state = if stop() {
                    FileSyncState::PausedOnBattery
                } else if moved {
                    FileSyncState::Moving
                } else {
                    FileSyncState::Idle
                };
                self.status.last_success = Some(unix_now());
                Ok(moved)
            }
            Err(Failure::Link(e)) => {
                self.failed(&e);
                Err(e)
            }
            Err(Failure::Local(e)) => {
                self.failed(&e);
                eprintln!("files: {e:#}");
                let database = e.chain().any(|c| c.is::<mysql::Error>());
                if database {
                    Err(e)
                } else {
                    self.rest_until = Some(Instant::now() + REST);
                    Ok(false)
                }
            }
        };
        self.publish(feed, true);
        result
    }

    /// Shows the pause while the supervisor holds sync (on battery).
    pub fn paused(&mut self, feed: Option<&Feed>) {
        if self.status.state != FileSyncState::PausedOnBattery {
            self.status.state = FileSyncState::PausedOnBattery;
            self.publish(feed, true);
        }
    }

    fn failed(&mut self, e: &anyhow::Error) {
        self.status.state = FileSyncState::Failing;
        self.status.last_error = Some(format!("{e:#}"));
    }

    fn publish(&mut self, feed: Option<&Feed>, now: bool) {
        let due = self
            .last_publish
            .is_none_or(|t| t.elapsed() >= PUBLISH_EVERY);
        if let (Some(feed), true) = (feed, now || due) {
            self.status.rate_bytes_per_second = self.rate.per_second();
            feed.set_files(self.status.clone());
            self.last_publish = Some(Instant::now());
        }
    }

    fn run(
        &mut self,
        site: &mut Site,
        link: &mut dyn BlobLink,
        stop: &dyn Fn() -> bool,
        feed: Option<&Feed>,
        deadline: Instant,
    ) -> Result<bool, Failure> {
        if self.pool.is_none() {
            self.pool = Some(Pool::new(&self.settings.dataroot, self.settings.perms)?);
        }
        if self.at_hub.is_none() {
            self.at_hub = Some(load_at_hub(site.conn())?);
        }
        // Cleared here rather than at the end: a refusal met during this pass stays on the page.
        self.status.last_error = None;
        let target = site.target().clone();
        let refs = inventory::referenced(site.conn(), &target)?;
        let mut queue = self.plan(&refs)?;
        self.sweep(&refs)?;
        self.ask_hub(site, link, &mut queue)?;
        self.count(&refs, &queue);
        self.publish(feed, true);

        let mut moved = false;
        let mut cuts = 0;
        while !queue.is_empty() && Instant::now() < deadline && !stop() {
            let step = match queue[0].way {
                Way::Fetch => self.fetch_some(link, &mut queue),
                Way::Send => self.send_some(site, link, &mut queue),
            };
            match step {
                Ok(()) => {
                    moved = true;
                    cuts = 0;
                }
                // A cut is routine on these links: try again at once, from the durable length (twice:
                // the first try may meet a pooled connection the same cut killed); a third failure in
                // a row goes to the runner's backoff.
                Err(Failure::Link(e)) if cuts < 2 => {
                    eprintln!("files: {e:#}; resuming");
                    cuts += 1;
                }
                Err(e) => return Err(e),
            }
            self.publish(feed, false);
        }
        Ok(moved)
    }

    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("opened at the start of the pass")
    }

    fn at_hub(&mut self) -> &mut HashSet<ContentHash> {
        self.at_hub
            .as_mut()
            .expect("loaded at the start of the pass")
    }

    /// Sorts every referenced blob: live here (to send if the hub may lack it), trashed (recovered, as
    /// Moodle would), or absent (to fetch). Bulk blobs outside their window are left for later.
    fn plan(&mut self, refs: &[Referenced]) -> Result<Vec<Item>> {
        let mut queue = Vec::new();
        for r in refs {
            let way = match self.pool().find(&r.hash) {
                Found::Live(_) => Way::Send,
                Found::Trashed(path) => {
                    if self.pool().restore(&r.hash, &path, r.size)? {
                        self.status.restored_from_trash += 1;
                        Way::Send
                    } else {
                        Way::Fetch
                    }
                }
                Found::Absent => Way::Fetch,
            };
            if way == Way::Send && self.at_hub().contains(&r.hash) {
                continue;
            }
            if !self.settings.may_move(r.size) {
                continue;
            }
            queue.push(Item {
                hash: r.hash,
                size: r.size,
                rank: self.settings.order.rank(&r.meta, r.size),
                way,
            });
        }
        queue.sort_by_key(|i| i.rank);
        Ok(queue)
    }

    /// Moves blobs no row references any more to the trash, now and then.
    fn sweep(&mut self, refs: &[Referenced]) -> Result<()> {
        let Some(grace) = self.settings.trash_after else {
            return Ok(());
        };
        // Deletions shrink the referenced set: sweep then, and now and then anyway.
        let shrank = refs.len() < self.last_refs;
        self.last_refs = refs.len();
        if !shrank && self.last_sweep.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return Ok(());
        }
        self.last_sweep = Some(Instant::now());
        let referenced: HashSet<ContentHash> = refs.iter().map(|r| r.hash).collect();
        self.status.trashed += sweep::sweep(self.pool(), &referenced, grace)?;
        Ok(())
    }

    /// Asks the hub about the queued blobs it has not told us about: drops what it holds from the
    /// sends (and remembers it), and the fetches it cannot serve yet.
    fn ask_hub(
        &mut self,
        site: &mut Site,
        link: &mut dyn BlobLink,
        queue: &mut Vec<Item>,
    ) -> Result<(), Failure> {
        let now = Instant::now();
        self.ask_later.retain(|_, t| *t > now);
        let unknown: Vec<ContentHash> = queue
            .iter()
            .filter(|i| !self.ask_later.contains_key(&i.hash))
            .filter(|i| !self.at_hub.as_ref().is_some_and(|s| s.contains(&i.hash)))
            .map(|i| i.hash)
            .collect();
        let mut live = Vec::new();
        let mut lacking = HashSet::new();
        for batch in unknown.chunks(MAX_HAVE) {
            let holding = link.have(batch).map_err(link_failure)?;
            for (hash, h) in batch.iter().zip(holding) {
                match h {
                    Holding::Live(_) => live.push(*hash),
                    Holding::Partial(n) => {
                        self.hub_partial.insert(*hash, n);
                        lacking.insert(*hash);
                    }
                    Holding::Absent => {
                        self.hub_partial.remove(hash);
                        lacking.insert(*hash);
                    }
                }
            }
        }
        remember_at_hub(site.conn(), &live)?;
        self.at_hub().extend(live.iter().copied());
        let (at_hub, later) = (
            self.at_hub
                .as_ref()
                .expect("loaded at the start of the pass"),
            &mut self.ask_later,
        );
        queue.retain(|i| match i.way {
            Way::Send => !at_hub.contains(&i.hash) && !later.contains_key(&i.hash),
            Way::Fetch => at_hub.contains(&i.hash),
        });
        // A blob we need that the hub lacks: another center has not sent it yet.
        let sending: HashSet<ContentHash> = queue
            .iter()
            .filter(|i| i.way == Way::Send)
            .map(|i| i.hash)
            .collect();
        for hash in lacking.difference(&sending) {
            later.insert(*hash, now + ASK_AGAIN);
        }
        Ok(())
    }

    /// The status counts: what is referenced and missing here, what the hub may lack.
    fn count(&mut self, refs: &[Referenced], queue: &[Item]) {
        let s = &mut self.status;
        (s.fetch_pending, s.fetch_bytes, s.send_pending, s.send_bytes) = (0, 0, 0, 0);
        s.waiting_for_window = 0;
        s.oldest = None;
        let queued: HashMap<ContentHash, Way> = queue.iter().map(|i| (i.hash, i.way)).collect();
        let pool = self.pool.as_ref().expect("opened at the start of the pass");
        let at_hub = self
            .at_hub
            .as_ref()
            .expect("loaded at the start of the pass");
        for r in refs {
            let missing = !matches!(pool.find(&r.hash), Found::Live(_));
            let pending = if missing {
                s.fetch_pending += 1;
                s.fetch_bytes += r.size;
                true
            } else if !at_hub.contains(&r.hash) {
                s.send_pending += 1;
                s.send_bytes += r.size;
                true
            } else {
                false
            };
            if pending {
                s.oldest = Some(s.oldest.map_or(r.since, |o| o.min(r.since)));
                if !queued.contains_key(&r.hash) && !self.settings.may_move(r.size) {
                    s.waiting_for_window += 1;
                }
            }
        }
    }

    /// Marks a blob done in the status.
    fn done(&mut self, way: Way, size: u64) {
        let s = &mut self.status;
        s.moved_files += 1;
        let (n, bytes) = match way {
            Way::Fetch => (&mut s.fetch_pending, &mut s.fetch_bytes),
            Way::Send => (&mut s.send_pending, &mut s.send_bytes),
        };
        *n = n.saturating_sub(1);
        *bytes = bytes.saturating_sub(size);
    }

    /// One download request: the first queued blobs that are fetched, as many as fill a request, each
    /// from what its partial copy holds; chunks are written as they arrive.
    fn fetch_some(
        &mut self,
        link: &mut dyn BlobLink,
        queue: &mut Vec<Item>,
    ) -> Result<(), Failure> {
        let budget = self.settings.request_bytes as u64;
        let mut asked: Vec<(ContentHash, u64)> = Vec::new();
        let mut want = 0;
        for item in queue.iter().take_while(|i| i.way == Way::Fetch) {
            if want >= budget {
                break;
            }
            let held = self.pool().part_len(&item.hash, "");
            want += item.size.saturating_sub(held);
            asked.push((item.hash, held));
        }
        let req = FetchRequest {
            hashes: Hashes::new(&asked.iter().map(|a| a.0).collect::<Vec<_>>()),
            offsets: asked.iter().map(|a| a.1).collect(),
            chunk: self.settings.chunk_bytes as u32,
            budget,
        };
        let mut placed = Vec::new();
        let mut got: HashSet<ContentHash> = HashSet::new();
        let mut local: Option<(ContentHash, anyhow::Error)> = None;
        let mut received = 0;
        let fetched = link.fetch(&req, &mut |chunk: Chunk| {
            if !asked.iter().any(|a| a.0 == chunk.hash) {
                return Err(anyhow!(
                    "the hub sent {}, which was not asked for",
                    chunk.hash
                ));
            }
            let len = chunk.data.len() as u64;
            let pool = self.pool.as_ref().expect("opened at the start of the pass");
            match pool.write(&chunk, "") {
                Ok(progress) => {
                    got.insert(chunk.hash);
                    received += len;
                    self.rate.add(len);
                    self.status.moved_bytes += len;
                    if progress == Progress::Placed {
                        placed.push(chunk.hash);
                    }
                    Ok(())
                }
                Err(e) => {
                    let stop = anyhow!("stopped: {e:#}");
                    local = Some((chunk.hash, e));
                    Err(stop)
                }
            }
        });
        for hash in &placed {
            if let Some(at) = queue.iter().position(|i| i.hash == *hash) {
                let item = queue.remove(at);
                self.done(Way::Fetch, item.size);
            }
        }
        if let Some((hash, e)) = local {
            // Not written here (a full disk, or a blob that failed its sha1 and is fetched again from
            // the start): the others go first.
            queue.retain(|i| i.hash != hash);
            self.ask_later.insert(hash, Instant::now() + ASK_AGAIN);
            return Err(Failure::Local(e));
        }
        fetched.map_err(link_failure)?;
        if received < budget {
            // A blob the answer left out although there was room: the hub no longer holds it.
            for (hash, _) in asked.iter().filter(|a| !got.contains(&a.0)) {
                queue.retain(|i| i.hash != *hash);
                self.at_hub().remove(hash);
                self.ask_later.insert(*hash, Instant::now() + ASK_AGAIN);
            }
        }
        Ok(())
    }

    /// One upload request: the first queued blobs to send, from what the hub holds of each, up to
    /// `[files] upload_kib`, in chunks of `chunk_kib`. Each chunk is sealed with this center's secret,
    /// so the hub keeps the whole ones of a request the link cut.
    fn send_some(
        &mut self,
        site: &mut Site,
        link: &mut dyn BlobLink,
        queue: &mut Vec<Item>,
    ) -> Result<(), Failure> {
        let budget = self.settings.upload_bytes;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut size = 0;
        let mut gone = Vec::new();
        for item in queue.iter().take_while(|i| i.way == Way::Send) {
            if size >= budget {
                break;
            }
            let mut offset = self.hub_partial.get(&item.hash).copied().unwrap_or(0);
            while size < budget {
                let max = self.settings.chunk_bytes.min(budget - size);
                let Some((total, data)) = self.pool().read(&item.hash, offset, max)? else {
                    // Moodle deleted it meanwhile.
                    gone.push(item.hash);
                    break;
                };
                size += data.len();
                let end = offset + data.len() as u64;
                chunks.push(Chunk {
                    hash: item.hash,
                    total,
                    offset,
                    data,
                });
                if end >= total {
                    break;
                }
                offset = end;
            }
        }
        queue.retain(|i| !gone.contains(&i.hash));
        if chunks.is_empty() {
            return Ok(());
        }
        let results = link.put(&chunks).map_err(link_failure)?;
        let mut placed = Vec::new();
        for (c, result) in chunks.iter().zip(results) {
            match result {
                PutResult::Held(n) => {
                    self.hub_partial.insert(c.hash, n);
                    self.status.moved_bytes += c.data.len() as u64;
                    self.rate.add(c.data.len() as u64);
                }
                PutResult::Placed => {
                    self.hub_partial.remove(&c.hash);
                    self.status.moved_bytes += c.data.len() as u64;
                    self.rate.add(c.data.len() as u64);
                    placed.push(c.hash);
                }
                PutResult::Refused(why) => {
                    // Most often its row has not reached the hub yet; the hub's `have` says where
                    // to resume next time.
                    self.hub_partial.remove(&c.hash);
                    self.ask_later
                        .insert(c.hash, Instant::now() + ASK_AGAIN.min(REST));
                    queue.retain(|i| i.hash != c.hash);
                    self.status.last_error = Some(format!("the hub refused {}: {why}", c.hash));
                }
            }
        }
        remember_at_hub(site.conn(), &placed)?;
        for hash in placed {
            self.at_hub().insert(hash);
            if let Some(at) = queue.iter().position(|i| i.hash == hash) {
                let item = queue.remove(at);
                self.done(Way::Send, item.size);
            }
        }
        Ok(())
    }
}

pub fn load_at_hub(conn: &mut mysql::Conn) -> Result<HashSet<ContentHash>> {
    conn.query_drop(AT_HUB_TABLE)
        .context("cannot create kituo_sync.files_at_hub")?;
    let rows: Vec<Vec<u8>> = conn
        .query("SELECT hash FROM kituo_sync.files_at_hub")
        .context("cannot read kituo_sync.files_at_hub")?;
    rows.iter().map(|r| ContentHash::from_slice(r)).collect()
}

pub fn remember_at_hub(conn: &mut mysql::Conn, hashes: &[ContentHash]) -> Result<()> {
    for batch in hashes.chunks(1000) {
        let marks = vec!["(?)"; batch.len()].join(",");
        let params: Vec<mysql::Value> = batch.iter().map(|h| h.0.to_vec().into()).collect();
        conn.exec_drop(
            format!("INSERT IGNORE INTO kituo_sync.files_at_hub (hash) VALUES {marks}"),
            params,
        )
        .context("cannot write kituo_sync.files_at_hub")?;
    }
    Ok(())
}
