//! Moodle's caches at the site that applies rows made elsewhere.
//!
//! Moodle clears its caches (MUC) in the code that makes a change, so a setting, a capability or a
//! course edit that arrives by sync would stay invisible behind the receiving site's caches until
//! someone purged them. The receiving site clears what Moodle's own code would have cleared: the
//! `[caches]` rules say what each table's rows stand for ([`CacheKind`]), and a small PHP helper
//! built into this program clears that with Moodle's cache API.
//!
//! What is due is stored in `kituo_sync` in the same transaction as the rows, and cleared after the
//! commit; a crash or a failing helper in between leaves it due, for the next apply or sync pass.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::sync::engine::change::{Change, Op, Value};
use crate::sync::engine::policy::Policy;
use crate::sync::engine::sql::{from_sql, placeholders, quote, Target};
use crate::sync::engine::store;
use crate::sync::schema::rules::CacheKind;

/// The state name of what is due.
const DUE: &str = "caches_due";
/// The helper, run by `php` from its standard input.
const HELPER: &str = include_str!("caches.php");
/// Beyond this many ids of one kind the helper clears the kind for every id: its argument stays
/// small, and so many ids are a seed or a restore, after which everything is cold anyway.
const MAX_KEYS: usize = 200;
/// A key that stands for every key of its kind.
const ALL: &str = "*";

/// What a site has to clear: kind name -> ids (event names for events; none for config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due(BTreeMap<String, BTreeSet<String>>);

impl Due {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add(&mut self, kind: CacheKind, key: Option<String>) {
        let keys = self.0.entry(kind.name().to_owned()).or_default();
        if keys.contains(ALL) {
            return;
        }
        if let Some(key) = key {
            if keys.len() < MAX_KEYS || kind == CacheKind::Event {
                keys.insert(key);
            } else {
                *keys = BTreeSet::from([ALL.to_owned()]);
            }
        }
    }

    fn merge(&mut self, other: &Due) {
        for (kind, keys) in &other.0 {
            let mine = self.0.entry(kind.clone()).or_default();
            if mine.contains(ALL) || keys.contains(ALL) || mine.len() + keys.len() > MAX_KEYS {
                *mine = BTreeSet::from([ALL.to_owned()]);
            } else {
                mine.extend(keys.iter().cloned());
            }
        }
    }

    /// What is left of `self` once `done` was cleared.
    fn without(&self, done: &Due) -> Due {
        let mut left = BTreeMap::new();
        for (kind, keys) in &self.0 {
            let rest: BTreeSet<String> = match done.0.get(kind) {
                None => keys.clone(),
                Some(d) if d.contains(ALL) || keys == d => continue,
                Some(d) => keys.difference(d).cloned().collect(),
            };
            if !rest.is_empty() || !done.0.contains_key(kind) {
                left.insert(kind.clone(), rest);
            }
        }
        Due(left)
    }
}

/// What the changes about to be applied clear, read before they are applied (a deleted row's
/// course is gone after).
pub fn collect(
    tx: &mut impl Queryable,
    policy: &Policy,
    target: &Target,
    changes: &[Change],
) -> Result<Due> {
    let mut due = Due::default();
    // (table, column) -> the ids whose current value of the column names what to clear.
    let mut lookups: BTreeMap<(&str, &str), BTreeSet<i64>> = BTreeMap::new();
    for change in changes {
        let Some(rule) = policy.caches(&change.table) else {
            continue;
        };
        let Some(column) = rule
            .arg
            .as_deref()
            .filter(|_| rule.kind != CacheKind::Event)
        else {
            due.add(rule.kind, rule.arg.clone());
            continue;
        };
        if column == "id" {
            due.add(rule.kind, Some(change.id.to_string()));
            continue;
        }
        if let Op::Insert(row) | Op::Update(row) = &change.op {
            if let Some(key) = row.get(column).and_then(key_of) {
                due.add(rule.kind, Some(key));
            }
        }
        if !matches!(change.op, Op::Insert(_)) {
            lookups
                .entry((&change.table, column))
                .or_default()
                .insert(change.id);
        }
    }
    for ((table, column), ids) in lookups {
        let kind = policy
            .caches(table)
            .map(|r| r.kind)
            .context("a cache rule")?;
        let ids: Vec<i64> = ids.into_iter().collect();
        for chunk in ids.chunks(1_000) {
            let found: Vec<mysql::Value> = tx
                .exec(
                    format!(
                        "SELECT {} FROM {} WHERE id IN ({})",
                        quote(column),
                        target.table(table),
                        placeholders(chunk.len())
                    ),
                    chunk.to_vec(),
                )
                .with_context(|| format!("cannot read {table}.{column} for Moodle's caches"))?;
            for value in found {
                if let Some(key) = key_of(&from_sql(value)) {
                    due.add(kind, Some(key));
                }
            }
        }
    }
    Ok(due)
}

fn key_of(value: &Value) -> Option<String> {
    match value {
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        _ => None,
    }
}

/// Adds `due` to what is stored as due, in the caller's transaction.
pub fn add_due(tx: &mut impl Queryable, due: &Due) -> Result<()> {
    if due.is_empty() {
        return Ok(());
    }
    let mut stored = stored(tx)?;
    stored.merge(due);
    store::set(tx, DUE, &serde_json::to_string(&stored)?)
}

fn stored(conn: &mut impl Queryable) -> Result<Due> {
    match store::get(conn, DUE)? {
        Some(text) if !text.is_empty() => {
            serde_json::from_str(&text).context("the stored cache invalidations are unreadable")
        }
        _ => Ok(Due::default()),
    }
}

/// How this site runs Moodle's PHP.
#[derive(Debug, Clone)]
pub struct Moodle {
    /// Moodle's code (its config.php names the site).
    pub dirroot: PathBuf,
    /// The user Moodle's data folder belongs to, when this program runs as another (root on the
    /// card): cache files the helper writes must stay the web server's.
    pub user: Option<String>,
    /// What the helper's environment adds (the tests' config.php reads its site from it).
    pub env: Vec<(String, String)>,
}

impl Moodle {
    /// Clears `due` through Moodle's cache API.
    pub fn clear(&self, due: &Due) -> Result<()> {
        let mut cmd = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "php"]);
                c
            }
            None => Command::new("php"),
        };
        let mut child = cmd
            .arg("--")
            .arg(&self.dirroot)
            .arg(serde_json::to_string(due)?)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run php to clear Moodle's caches")?;
        child
            .stdin
            .take()
            .context("php's standard input")?
            .write_all(HELPER.as_bytes())
            .context("cannot hand php the cache helper")?;
        let out = child.wait_with_output().context("php")?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = said.lines().collect();
            bail!(
                "clearing Moodle's caches failed ({}): {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                lines[lines.len().saturating_sub(8)..].join(" | ")
            );
        }
        Ok(())
    }
}

/// Clears what is due through `moodle`, then forgets what was cleared (what a concurrent apply added
/// meanwhile stays due).
pub fn flush(conn: &mut mysql::Conn, moodle: &Moodle) -> Result<()> {
    let due = stored(conn)?;
    if due.is_empty() {
        return Ok(());
    }
    moodle.clear(&due)?;
    let mut tx = conn
        .start_transaction(mysql::TxOpts::default())
        .context("cannot start a transaction")?;
    store::lock_log(&mut tx)?;
    let left = stored(&mut tx)?.without(&due);
    let text = if left.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&left)?
    };
    store::set(&mut tx, DUE, &text)?;
    tx.commit().context("cannot forget the cleared caches")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(pairs: &[(&str, &[&str])]) -> Due {
        Due(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect())
    }

    #[test]
    fn what_was_cleared_is_forgotten_and_what_came_meanwhile_stays() {
        let stored = due(&[("config", &[]), ("course", &["2", "3"]), ("role", &["5"])]);
        let done = due(&[("config", &[]), ("course", &["2"])]);
        assert_eq!(
            stored.without(&done),
            due(&[("course", &["3"]), ("role", &["5"])])
        );
        assert!(stored.without(&stored).is_empty());
        assert!(due(&[("course", &["4"])])
            .without(&due(&[("course", &["*"])]))
            .is_empty());
    }

    #[test]
    fn too_many_ids_clear_the_kind_for_all() {
        let mut d = Due::default();
        // Past the limit, and more after it: the kind stays cleared for all.
        for id in 0..MAX_KEYS + 5 {
            d.add(CacheKind::Course, Some(id.to_string()));
        }
        assert_eq!(d, due(&[("course", &["*"])]));
        let mut m = due(&[("user", &["1"])]);
        m.merge(&due(&[("user", &["*"])]));
        assert_eq!(m, due(&[("user", &["*"])]));
    }
}
