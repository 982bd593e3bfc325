//! The coordinator's durable state: target states, the node registry and the audit log.
//! Two back ends behind one interface: one redb file (one coordinator; the default), or
//! an etcd cluster shared by coordinator replicas ([`Store::etcd`]), where every commit
//! is one etcd transaction that holds only while this replica leads ([`Fence`]). Every
//! write is durable (redb: fsync; etcd: committed by a quorum) before the caller
//! acknowledges anything, so a crash loses nothing that was acknowledged.

use crate::etcd::{prefix_end, Compare, Etcd, EtcdError, Op};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use scold_proto::control::NodeInfo;
use scold_proto::identity::Role;
use scold_proto::state::TargetState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const TARGETS: TableDefinition<&str, &str> = TableDefinition::new("targets");
const NODES: TableDefinition<&str, &str> = TableDefinition::new("nodes");
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
/// Targets added with `scold ctl target add` (the config file's are not stored).
const TARGET_CONFIGS: TableDefinition<&str, &str> = TableDefinition::new("target_configs");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state database {path}: {message}; if another coordinator uses it, stop that one first"
    )]
    Open { path: String, message: String },
    #[error("state database: {0}")]
    Db(String),
    #[error("state database holds a record that does not parse ({0}); it was written by an incompatible version")]
    Corrupt(String),
    #[error("state store: {0}")]
    Etcd(#[from] EtcdError),
    #[error("state store: this coordinator no longer leads (another replica took over); it must not write")]
    Deposed,
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Registered and heard from recently.
    Up,
    /// Silent for longer than the down-after time, or never connected.
    Down,
    /// Reported a severe attack on itself (proxies, paper 4.4).
    Attacked,
    /// Its certificate was revoked (or expired) while it was connected: its connection
    /// was closed and it is chosen for nothing until it registers with a valid one.
    Revoked,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Attacked => "attacked",
            Health::Revoked => "revoked",
        }
    }
}

/// A registered node, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub role: Role,
    pub name: String,
    pub info: NodeInfo,
    pub health: Health,
    /// Unix ms of the last message from the node.
    pub last_seen_ms: Option<u64>,
    /// Unix ms until which an `Attacked` mark holds.
    #[serde(default)]
    pub attacked_until_ms: Option<u64>,
    /// A proxy's place in the pool (`scold ctl proxy`); records of older stores are
    /// members.
    #[serde(default, skip_serializing_if = "Pool::is_member")]
    pub pool: Pool,
    /// Added with `scold ctl proxy add`, not from the config file: the store is its only
    /// record, and `scold ctl proxy remove` may delete it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub runtime: bool,
}

/// Where a proxy stands in the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// May be chosen for a target's ALT set (config-file proxies, approved ones).
    #[default]
    Member,
    /// Added at run time, waiting for `scold ctl proxy approve`: chosen for nothing.
    Pending,
    /// Being taken out (`scold ctl proxy drain`): chosen for nothing, moved out of
    /// every ALT set as if it had reported an attack (paper 4.4), then removable.
    Draining,
    /// Removed (`scold ctl proxy remove`): listed nowhere and chosen for nothing, also
    /// when it connects again with its still valid certificate, until it is added again.
    Removed,
}

impl Pool {
    pub fn is_member(&self) -> bool {
        *self == Pool::Member
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Member => "member",
            Pool::Pending => "pending",
            Pool::Draining => "draining",
            Pool::Removed => "removed",
        }
    }
}

impl NodeRecord {
    pub fn key(role: Role, name: &str) -> String {
        format!("{role}/{name}")
    }
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub at_ms: u64,
    pub subject: String,
    pub event: String,
    pub detail: String,
    /// A `phase` event's new phase (absent in entries of older stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl EventRecord {
    /// The entry as `scold ctl events` and the status page show it, with its sequence
    /// number in the log.
    pub fn into_view(self, seq: u64) -> scold_proto::control::EventView {
        scold_proto::control::EventView {
            seq,
            at_ms: self.at_ms,
            subject: self.subject,
            event: self.event,
            detail: self.detail,
            phase: self.phase,
        }
    }
}

/// What one durable commit writes.
#[derive(Default)]
pub struct Batch<'a> {
    pub targets: Vec<(&'a str, &'a TargetState)>,
    pub nodes: Vec<&'a NodeRecord>,
    pub events: Vec<EventRecord>,
    /// Run-time targets' configurations to write (`Some`) or delete (`None`).
    pub target_configs: Vec<(&'a str, Option<&'a crate::config::TargetConfig>)>,
    /// Targets whose state goes (a run-time target removed).
    pub removed_targets: Vec<&'a str>,
}

pub struct Store {
    backend: Backend,
    /// Audit events kept; older ones are removed as new ones come.
    keep_events: u64,
}

enum Backend {
    Redb(Database),
    Etcd(EtcdStore),
}

/// A leader's claim that every write must still hold: the leader key, as this replica
/// created it. A write from a replica whose key is gone (lease lapsed, another leads) is
/// refused by etcd itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

struct EtcdStore {
    etcd: Etcd,
    /// Every key of this consortium's coordinator starts with it (`/scold/`).
    prefix: Vec<u8>,
    fence: Option<Fence>,
}

/// Width of an event's sequence number in its etcd key, so keys sort as numbers.
const SEQ_WIDTH: usize = 20;
/// Tries of a commit that lost a race for the event counter (only one leader writes;
/// a race means a deposed one, which the fence then stops).
const COMMIT_TRIES: usize = 5;
/// Events read per request when the audit log is paged through.
const EVENT_PAGE: i64 = 500;

impl EtcdStore {
    fn key(&self, parts: &[&str]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(parts.join("/").as_bytes());
        k
    }

    fn event_key(&self, seq: u64) -> Vec<u8> {
        self.key(&["events", &format!("{seq:0SEQ_WIDTH$}")])
    }

    fn commit(&self, batch: &Batch<'_>, keep: u64) -> Result<Vec<u64>, StoreError> {
        let seq_key = self.key(&["meta", "event_seq"]);
        for _ in 0..COMMIT_TRIES {
            let (last, seq_rev) = match self.etcd.get(&seq_key)? {
                Some(kv) => (
                    String::from_utf8_lossy(&kv.value)
                        .parse::<u64>()
                        .map_err(|e| StoreError::Corrupt(format!("event counter: {e}")))?,
                    kv.mod_revision,
                ),
                None => (0, 0),
            };
            let mut ops = Vec::new();
            for (name, state) in &batch.targets {
                ops.push(Op::Put {
                    key: self.key(&["targets", name]),
                    value: serde_json::to_vec(state).map_err(db)?,
                    lease: 0,
                });
            }
            for node in &batch.nodes {
                ops.push(Op::Put {
                    key: self.key(&["nodes", &NodeRecord::key(node.role, &node.name)]),
                    value: serde_json::to_vec(node).map_err(db)?,
                    lease: 0,
                });
            }
            for name in &batch.removed_targets {
                ops.push(Op::Delete {
                    key: self.key(&["targets", name]),
                    range_end: Vec::new(),
                });
            }
            for (name, cfg) in &batch.target_configs {
                let key = self.key(&["target_configs", name]);
                ops.push(match cfg {
                    Some(c) => Op::Put {
                        key,
                        value: serde_json::to_vec(c).map_err(db)?,
                        lease: 0,
                    },
                    None => Op::Delete {
                        key,
                        range_end: Vec::new(),
                    },
                });
            }
            let first = last + 1;
            let mut seqs = Vec::with_capacity(batch.events.len());
            for (seq, ev) in (first..).zip(&batch.events) {
                ops.push(Op::Put {
                    key: self.event_key(seq),
                    value: serde_json::to_vec(ev).map_err(db)?,
                    lease: 0,
                });
                seqs.push(seq);
            }
            let newest = last + batch.events.len() as u64;
            if !batch.events.is_empty() {
                ops.push(Op::Put {
                    key: seq_key.clone(),
                    value: newest.to_string().into_bytes(),
                    lease: 0,
                });
                // Bounded retention, as in the redb store: events below the cut go.
                let cut = (newest + 1).saturating_sub(keep);
                if cut > 1 {
                    ops.push(Op::Delete {
                        key: self.event_key(0),
                        range_end: self.event_key(cut),
                    });
                }
            }
            if ops.is_empty() {
                return Ok(seqs);
            }
            let mut compare = vec![Compare::ModRevision(seq_key.clone(), seq_rev)];
            if let Some(f) = &self.fence {
                compare.push(Compare::CreateRevision(f.key.clone(), f.create_revision));
            }
            let r = self.etcd.txn(&compare, &ops, &[])?;
            if r.succeeded {
                return Ok(seqs);
            }
            if let Some(f) = &self.fence {
                let holds = self
                    .etcd
                    .get(&f.key)?
                    .is_some_and(|kv| kv.create_revision == f.create_revision);
                if !holds {
                    return Err(StoreError::Deposed);
                }
            }
        }
        Err(StoreError::Db(
            "another writer kept changing the audit log's counter; is a second coordinator \
             writing without leading?"
                .into(),
        ))
    }

    /// Every record under `part/`, each with its name (the rest of its key).
    fn all(&self, part: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let from = self.key(&[part, ""]);
        Ok(self
            .etcd
            .range(&from, &prefix_end(&from), 0, false)?
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key[from.len()..]).into_owned(),
                    kv.value,
                )
            })
            .collect())
    }

    fn targets(&self) -> Result<BTreeMap<String, TargetState>, StoreError> {
        self.all("targets")?
            .into_iter()
            .map(|(name, v)| {
                let state = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("target {name}: {e}")))?;
                Ok((name, state))
            })
            .collect()
    }

    fn target_configs(&self) -> Result<BTreeMap<String, crate::config::TargetConfig>, StoreError> {
        self.all("target_configs")?
            .into_iter()
            .map(|(name, v)| {
                let c = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("target config {name}: {e}")))?;
                Ok((name, c))
            })
            .collect()
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.all("nodes")?
            .into_iter()
            .map(|(name, v)| {
                serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("node {name}: {e}")))
            })
            .collect()
    }

    fn events_where(
        &self,
        limit: usize,
        keep: &dyn Fn(&EventRecord) -> bool,
    ) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        let from = self.key(&["events", ""]);
        let mut end = prefix_end(&from);
        let mut out = Vec::with_capacity(limit.min(1024));
        'pages: loop {
            let page = self.etcd.range(&from, &end, EVENT_PAGE, true)?;
            let Some(last) = page.last() else { break };
            end = last.key.clone();
            for kv in &page {
                if out.len() >= limit {
                    break 'pages;
                }
                let seq_text = String::from_utf8_lossy(&kv.key[from.len()..]).to_string();
                let seq: u64 = seq_text
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("event key {seq_text:?}: {e}")))?;
                let ev: EventRecord = serde_json::from_slice(&kv.value)
                    .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
                if keep(&ev) {
                    out.push((seq, ev));
                }
            }
            if (page.len() as i64) < EVENT_PAGE {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }
}

/// Audit events a store keeps unless told otherwise.
pub const DEFAULT_KEEP_EVENTS: u64 = 100_000;

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        }
        let database = Database::create(path).map_err(|e| open_err(&e))?;
        // Create the tables so readers never meet a missing one.
        let tx = database.begin_write().map_err(db_err)?;
        tx.open_table(TARGETS).map_err(db)?;
        tx.open_table(NODES).map_err(db)?;
        tx.open_table(EVENTS).map_err(db)?;
        tx.open_table(TARGET_CONFIGS).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Store {
            backend: Backend::Redb(database),
            keep_events: DEFAULT_KEEP_EVENTS,
        })
    }

    /// The state shared by coordinator replicas in etcd, under `prefix` (e.g.
    /// `/scold/`). With `fence`, every write holds only while that leader key is the one
    /// this replica created: a deposed leader writes nothing.
    pub fn etcd(etcd: Etcd, prefix: &str, fence: Option<Fence>) -> Result<Self, StoreError> {
        let store = EtcdStore {
            etcd,
            prefix: prefix.as_bytes().to_vec(),
            fence,
        };
        // Reachable, and the counter (if any) readable.
        store.etcd.get(&store.key(&["meta", "event_seq"]))?;
        Ok(Store {
            backend: Backend::Etcd(store),
            keep_events: DEFAULT_KEEP_EVENTS,
        })
    }

    /// Keeps at most `n` audit events (at least one).
    pub fn keep_events(mut self, n: u64) -> Self {
        self.keep_events = n.max(1);
        self
    }

    /// Writes everything in `batch` in one transaction, durable when this returns.
    /// Returns the sequence numbers given to the events.
    pub fn commit(&self, batch: Batch<'_>) -> Result<Vec<u64>, StoreError> {
        let database = match &self.backend {
            Backend::Redb(d) => d,
            Backend::Etcd(e) => return e.commit(&batch, self.keep_events),
        };
        let tx = database.begin_write().map_err(db_err)?;
        let mut seqs = Vec::with_capacity(batch.events.len());
        {
            let mut targets = tx.open_table(TARGETS).map_err(db)?;
            for (name, state) in &batch.targets {
                let json = serde_json::to_string(state).map_err(db)?;
                targets.insert(*name, json.as_str()).map_err(db)?;
            }
            let mut nodes = tx.open_table(NODES).map_err(db)?;
            for node in &batch.nodes {
                let json = serde_json::to_string(node).map_err(db)?;
                nodes
                    .insert(
                        NodeRecord::key(node.role, &node.name).as_str(),
                        json.as_str(),
                    )
                    .map_err(db)?;
            }
            for name in &batch.removed_targets {
                targets.remove(*name).map_err(db)?;
            }
            let mut configs = tx.open_table(TARGET_CONFIGS).map_err(db)?;
            for (name, cfg) in &batch.target_configs {
                match cfg {
                    Some(c) => {
                        let json = serde_json::to_string(c).map_err(db)?;
                        configs.insert(*name, json.as_str()).map_err(db)?;
                    }
                    None => {
                        configs.remove(*name).map_err(db)?;
                    }
                }
            }
            let mut events = tx.open_table(EVENTS).map_err(db)?;
            let first = match events.last().map_err(db)? {
                Some((k, _)) => k.value() + 1,
                None => 1,
            };
            for (seq, ev) in (first..).zip(&batch.events) {
                let json = serde_json::to_string(ev).map_err(db)?;
                events.insert(seq, json.as_str()).map_err(db)?;
                seqs.push(seq);
            }
            // Bounded retention: the oldest events go once more than `keep_events` are
            // held, so the log cannot grow without end.
            let newest = first + batch.events.len() as u64;
            let cut = newest.saturating_sub(self.keep_events);
            loop {
                let oldest = match events.first().map_err(db)? {
                    Some((k, _)) if k.value() < cut => k.value(),
                    _ => break,
                };
                events.remove(oldest).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(seqs)
    }

    pub fn targets(&self) -> Result<BTreeMap<String, TargetState>, StoreError> {
        let database = match &self.backend {
            Backend::Redb(d) => d,
            Backend::Etcd(e) => return e.targets(),
        };
        let tx = database.begin_read().map_err(db_err)?;
        let table = tx.open_table(TARGETS).map_err(db)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let state = serde_json::from_str(v.value())
                .map_err(|e| StoreError::Corrupt(format!("target {}: {e}", k.value())))?;
            out.insert(k.value().to_string(), state);
        }
        Ok(out)
    }

    /// Targets added at run time (`scold ctl target add`), by name.
    pub fn target_configs(
        &self,
    ) -> Result<BTreeMap<String, crate::config::TargetConfig>, StoreError> {
        let database = match &self.backend {
            Backend::Redb(d) => d,
            Backend::Etcd(e) => return e.target_configs(),
        };
        let tx = database.begin_read().map_err(db_err)?;
        let table = tx.open_table(TARGET_CONFIGS).map_err(db)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let c = serde_json::from_str(v.value())
                .map_err(|e| StoreError::Corrupt(format!("target config {}: {e}", k.value())))?;
            out.insert(k.value().to_string(), c);
        }
        Ok(out)
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let database = match &self.backend {
            Backend::Redb(d) => d,
            Backend::Etcd(e) => return e.nodes(),
        };
        let tx = database.begin_read().map_err(db_err)?;
        let table = tx.open_table(NODES).map_err(db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push(
                serde_json::from_str(v.value())
                    .map_err(|e| StoreError::Corrupt(format!("node {}: {e}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// The newest `limit` audit events, oldest first.
    pub fn events(&self, limit: usize) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.events_where(limit, |_| true)
    }

    /// The newest `limit` audit events that `keep` selects, oldest first.
    pub fn events_where(
        &self,
        limit: usize,
        keep: impl Fn(&EventRecord) -> bool,
    ) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        let database = match &self.backend {
            Backend::Redb(d) => d,
            Backend::Etcd(e) => return e.events_where(limit, &keep),
        };
        let tx = database.begin_read().map_err(db_err)?;
        let table = tx.open_table(EVENTS).map_err(db)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for row in table.iter().map_err(db)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(db)?;
            let ev: EventRecord = serde_json::from_str(v.value())
                .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", k.value())))?;
            if keep(&ev) {
                out.push((k.value(), ev));
            }
        }
        out.reverse();
        Ok(out)
    }
}

fn db_err(e: redb::TransactionError) -> StoreError {
    db(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::write(&path, b"this is not a database").unwrap();
        let e = Store::open(&path)
            .err()
            .expect("garbage accepted")
            .to_string();
        assert!(e.contains("state.redb"), "{e}");
    }

    #[test]
    fn node_records_of_older_stores_are_pool_members_from_the_config() {
        let old =
            r#"{"role":"proxy","name":"p1","info":{"version":""},"health":"up","last_seen_ms":5}"#;
        let rec: NodeRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.pool, Pool::Member);
        assert!(!rec.runtime);
        // And a member from the config file is written as before.
        let again = serde_json::to_string(&rec).unwrap();
        assert!(
            !again.contains("pool") && !again.contains("runtime"),
            "{again}"
        );
    }
}
