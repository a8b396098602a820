//! One site's sync engine over its MariaDB: capture local changes into the log, and apply changes from
//! elsewhere, each in one transaction with its bookkeeping.
//!
//! Every transaction that writes the log first locks one row (`log_lock`). At the hub this makes the
//! log's sequence numbers follow commit order, so a center that pulled up to number n can never later
//! miss a smaller one; it also lets several hub processes share one database safely.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;
use mysql::{Conn, IsolationLevel, Transaction, TxOpts};

use crate::sync::engine::apply::{Applier, Tally};
use crate::sync::engine::caches::{self, Moodle};
use crate::sync::engine::capture::{self, BinlogReader, CapturedTxn};
use crate::sync::engine::change::{Change, Op};
use crate::sync::engine::policy::{Policy, Role};
use crate::sync::engine::record::{self, Recorded, Recorder, HLC_SEEN};
use crate::sync::engine::replay::{self, Replayed};
use crate::sync::engine::sql;
use crate::sync::engine::sql::Target;
use crate::sync::engine::store;

const TRIES: u32 = 5;
/// Binlog transactions read per pass.
const READ_CAP: usize = 2_000;

#[derive(Clone)]
pub struct SiteConfig {
    /// This site's number (the hub is 1); also its MariaDB server_id.
    pub site: u32,
    pub role: Role,
    pub target: Target,
    /// The engine's own account on the local MariaDB (binlog reading needs REPLICATION SLAVE).
    pub opts: mysql::Opts,
    /// The server id the binlog reader announces; must differ from every real server's.
    pub reader_id: u32,
    /// Moodle at this site, whose caches applied rows clear ([`caches`]); `None` where no Moodle
    /// runs on this database (the engine's own tests).
    pub moodle: Option<Moodle>,
}

pub struct Site {
    cfg: SiteConfig,
    conn: Conn,
}

impl Site {
    pub fn open(cfg: SiteConfig) -> Result<Site> {
        let mut conn =
            Conn::new(cfg.opts.clone()).context("cannot connect to the local MariaDB")?;
        capture::check_settings(&mut conn)?;
        store::init(&mut conn)?;
        // Changes applied here are written with skip_replication: capture skips them (no echo),
        // while a real replica of this server may still take them.
        conn.query_drop("SET SESSION skip_replication = 1")
            .context("cannot set skip_replication (the account needs BINLOG ADMIN or SUPER)")?;
        let mut site = Site { cfg, conn };
        site.start_capture_here_if_new()?;
        Ok(site)
    }

    pub fn id(&self) -> u32 {
        self.cfg.site
    }

    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Where this site's Moodle tables are.
    pub fn target(&self) -> &Target {
        &self.cfg.target
    }

    /// A new site captures from the binlog's current end: what came before is its seed.
    fn start_capture_here_if_new(&mut self) -> Result<()> {
        let mut tx = self.begin()?;
        store::lock_log(&mut tx)?;
        if record::position(&mut tx)?.is_none() {
            let end = capture::current_end(&mut tx)?;
            store::set(&mut tx, record::CAPTURE_POS, &end.to_string())?;
        }
        tx.commit()
            .context("cannot store the first capture position")
    }

    fn begin(&mut self) -> Result<Transaction<'_>> {
        let opts = TxOpts::default().set_isolation_level(Some(IsolationLevel::ReadCommitted));
        self.conn
            .start_transaction(opts)
            .context("cannot start a transaction")
    }

    /// Records every local change committed so far, then replays what waited for a schema change
    /// that has happened since (see [`replay`]); returns what it recorded. The replay commits apart:
    /// if it fails, what was recorded stays recorded.
    pub fn capture(&mut self, policy: &Policy) -> Result<Recorded> {
        let cfg = self.cfg.clone();
        let done = retry(|| {
            let mut tx = self.begin()?;
            store::lock_log(&mut tx)?;
            let done = catch_up(&cfg, policy, &mut tx)?;
            tx.commit().context("cannot commit captured changes")?;
            Ok(done)
        })?;
        self.replay(policy)
            .context("cannot replay what waited for a schema change")?;
        Ok(done)
    }

    /// Replays parked values and deferred changes whose columns and tables exist now.
    pub fn replay(&mut self, policy: &Policy) -> Result<Replayed> {
        let cfg = self.cfg.clone();
        retry(|| {
            let mut tx = self.begin()?;
            store::lock_log(&mut tx)?;
            let mut catch = |tx: &mut Transaction<'_>| catch_up(&cfg, policy, tx).map(|_| ());
            let done = replay::replay(&mut tx, policy, &cfg.target, cfg.site, &mut catch)?;
            tx.commit().context("cannot commit the replay")?;
            Ok(done)
        })
    }

    /// Applies changes from elsewhere, skipping any already applied, and runs `finish` in the same
    /// transaction (to move a cursor or log relayed changes) before committing.
    pub fn apply(
        &mut self,
        policy: &Policy,
        changes: &[Change],
        mut finish: impl FnMut(&mut Transaction<'_>, &[Change]) -> Result<()>,
    ) -> Result<Tally> {
        self.apply_vetted(
            policy,
            changes,
            |_, _| Ok(None),
            |tx, applied, _| finish(tx, applied),
        )
    }

    /// As [`Site::apply`], but `vet` sees each change not applied yet first and may refuse it by
    /// saying why; refused changes count as applied for the watermark (a resend is not refused
    /// twice) and reach `finish` apart, with their reasons.
    pub fn apply_vetted(
        &mut self,
        policy: &Policy,
        changes: &[Change],
        mut vet: impl FnMut(&mut Transaction<'_>, &Change) -> Result<Option<String>>,
        mut finish: impl FnMut(&mut Transaction<'_>, &[Change], &[(Change, String)]) -> Result<()>,
    ) -> Result<Tally> {
        let cfg = self.cfg.clone();
        let tally = retry(|| {
            let mut tx = self.begin()?;
            store::lock_log(&mut tx)?;
            let fresh = unapplied(&mut tx, changes)?;
            let mut allowed = Vec::with_capacity(fresh.len());
            let mut refused = Vec::new();
            for change in &fresh {
                match vet(&mut tx, change)? {
                    None => allowed.push(change.clone()),
                    Some(reason) => refused.push((change.clone(), reason)),
                }
            }
            localize(policy, &mut allowed);
            if cfg.moodle.is_some() {
                let due = caches::collect(&mut tx, policy, &cfg.target, &allowed)?;
                caches::add_due(&mut tx, &due)?;
            }
            let mut catch = |tx: &mut Transaction<'_>| catch_up(&cfg, policy, tx).map(|_| ());
            // What waited for a schema change goes first: this batch may carry newer changes to it.
            replay::replay(&mut tx, policy, &cfg.target, cfg.site, &mut catch)?;
            let mut applier = Applier::new(policy, cfg.target.clone(), cfg.site);
            let tally = applier.apply(&mut tx, &allowed, &mut catch)?;
            mark_applied(&mut tx, &fresh)?;
            finish(&mut tx, &allowed, &refused)?;
            tx.commit().context("cannot commit the applied batch")?;
            Ok(tally)
        })?;
        self.clear_caches();
        Ok(tally)
    }

    /// Clears in Moodle's caches what applied rows made due, if Moodle runs here; what fails stays
    /// due for the next call (the rows are committed: a stale cache is no reason to fail sync).
    pub fn clear_caches(&mut self) {
        let Some(moodle) = &self.cfg.moodle else {
            return;
        };
        if let Err(e) = caches::flush(&mut self.conn, moodle) {
            eprintln!("site {}: {e:#}", self.cfg.site);
        }
    }
}

/// Each site keeps its `[local_columns]` for itself: an update that carries an unsent one (from a
/// site that sent it before the rule existed) does not overwrite this site's, and one that arrives
/// as a value is written with that value.
fn localize(policy: &Policy, changes: &mut Vec<Change>) {
    changes.retain_mut(|Change { table, op, .. }| {
        let update = matches!(op, Op::Update(_));
        let (Op::Insert(row) | Op::Update(row)) = op else {
            return true;
        };
        if update {
            row.retain(|column, _| !policy.is_unsent_column(table, column));
        }
        for (column, value) in policy.arriving_values(table) {
            if !update || row.contains_key(column) {
                row.insert(column.to_owned(), value);
            }
        }
        !row.is_empty()
    });
}

/// Reads the binlog from the stored position to its end and records it, in `tx`.
fn catch_up(cfg: &SiteConfig, policy: &Policy, tx: &mut Transaction<'_>) -> Result<Recorded> {
    let start = record::position(tx)?;
    // Opening a replication stream costs two connections; apply asks for a catch-up before every
    // unique-key clash, and mostly nothing was committed since the last one.
    if start.is_some() && start == Some(capture::current_end(tx)?) {
        return Ok(Recorded::default());
    }
    let mut reader =
        BinlogReader::new(cfg.opts.clone(), cfg.reader_id, &cfg.target.database, start)?;
    let recorder = Recorder::new(cfg.site, cfg.role, policy, &cfg.target);
    let mut total = Recorded::default();
    loop {
        let txns: Vec<CapturedTxn> = reader.poll(READ_CAP)?;
        let done = recorder.record(tx, &txns, reader.position())?;
        total.changes += done.changes;
        total.kept_local += done.kept_local;
        total.unchanged += done.unchanged;
        total.last_hlc = total.last_hlc.max(done.last_hlc);
        if txns.len() < READ_CAP {
            return Ok(total);
        }
    }
}

/// The changes not yet applied here, by each origin's watermark (locked until commit).
fn unapplied(tx: &mut Transaction<'_>, changes: &[Change]) -> Result<Vec<Change>> {
    let mut marks: BTreeMap<u32, u64> = BTreeMap::new();
    for c in changes {
        if let std::collections::btree_map::Entry::Vacant(e) = marks.entry(c.origin) {
            let seq: Option<u64> = tx
                .exec_first(
                    "SELECT seq FROM kituo_sync.applied WHERE origin = ? FOR UPDATE",
                    (c.origin,),
                )
                .context("cannot read the applied watermark")?;
            e.insert(seq.unwrap_or(0));
        }
    }
    let mut fresh = Vec::new();
    for c in changes {
        let mark = marks.entry(c.origin).or_default();
        if c.seq > *mark {
            *mark = c.seq;
            fresh.push(c.clone());
        }
    }
    Ok(fresh)
}

fn mark_applied(tx: &mut Transaction<'_>, changes: &[Change]) -> Result<()> {
    let mut top: BTreeMap<u32, u64> = BTreeMap::new();
    let mut seen = 0;
    for c in changes {
        let t = top.entry(c.origin).or_default();
        *t = (*t).max(c.seq);
        seen = seen.max(c.hlc);
    }
    for (origin, seq) in top {
        store::set_applied(tx, origin, seq)?;
    }
    if seen > store::get_u64(tx, HLC_SEEN)? {
        store::set(tx, HLC_SEEN, &seen.to_string())?;
    }
    Ok(())
}

/// Runs `f` again when MariaDB chose it as a deadlock victim or a lock wait timed out (Moodle's own
/// transactions may hold the rows); other errors pass through.
pub fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if attempt + 1 < TRIES && is_lock_conflict(&e) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            other => return other,
        }
    }
}

fn is_lock_conflict(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<mysql::Error>(),
            Some(mysql::Error::MySqlError(m)) if sql::is_lock_error_code(m.code)
        )
    })
}
