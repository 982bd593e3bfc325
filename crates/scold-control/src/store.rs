//! The coordinator's durable state: target states, the node registry and the audit log,
//! in one redb file. Every write commits with immediate durability (fsync) before the
//! caller acknowledges anything, so a crash loses nothing that was acknowledged.

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

/// What one durable commit writes.
#[derive(Default)]
pub struct Batch<'a> {
    pub targets: Vec<(&'a str, &'a TargetState)>,
    pub nodes: Vec<&'a NodeRecord>,
    pub events: Vec<EventRecord>,
}

pub struct Store {
    db: Database,
    /// Audit events kept; older ones are removed as new ones come.
    keep_events: u64,
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
        tx.commit().map_err(db)?;
        Ok(Store {
            db: database,
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
        let tx = self.db.begin_write().map_err(db_err)?;
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
        let tx = self.db.begin_read().map_err(db_err)?;
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

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
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
        let tx = self.db.begin_read().map_err(db_err)?;
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
    use scold_proto::state::Event;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut st = TargetState::default();
        st.apply(
            1,
            Event::Alarm {
                proxies: vec!["p1".into()],
            },
        );
        let node = NodeRecord {
            role: Role::Proxy,
            name: "p1".into(),
            info: NodeInfo::default(),
            health: Health::Up,
            last_seen_ms: Some(5),
            attacked_until_ms: None,
        };
        {
            let s = Store::open(&path).unwrap();
            let seqs = s
                .commit(Batch {
                    targets: vec![("web", &st)],
                    nodes: vec![&node],
                    events: (0..3)
                        .map(|i| EventRecord {
                            at_ms: i,
                            subject: "web".into(),
                            event: "alarm".into(),
                            detail: format!("#{i}"),
                            phase: None,
                        })
                        .collect(),
                })
                .unwrap();
            assert_eq!(seqs, vec![1, 2, 3]);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.targets().unwrap().get("web"), Some(&st));
        assert_eq!(s.nodes().unwrap(), vec![node]);
        let ev = s.events(2).unwrap();
        assert_eq!(ev.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![2, 3]);
        let seqs = s
            .commit(Batch {
                events: vec![EventRecord {
                    at_ms: 9,
                    subject: "x".into(),
                    event: "y".into(),
                    detail: String::new(),
                    phase: Some("diverted".into()),
                }],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(seqs, vec![4]);
    }

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
    fn the_audit_log_keeps_its_newest_events_and_filters_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.redb"))
            .unwrap()
            .keep_events(10);
        for i in 0..25u64 {
            let ev = EventRecord {
                at_ms: i,
                subject: if i % 2 == 0 { "web" } else { "proxy/p1" }.into(),
                event: if i % 3 == 0 { "phase" } else { "registered" }.into(),
                detail: format!("#{i}"),
                phase: None,
            };
            s.commit(Batch {
                events: vec![ev],
                ..Default::default()
            })
            .unwrap();
        }
        let all = s.events(1000).unwrap();
        assert_eq!(all.len(), 10, "{all:?}");
        assert_eq!(all.first().unwrap().1.detail, "#15");
        assert_eq!(all.last().unwrap().1.detail, "#24");
        assert_eq!(all.last().unwrap().0, 25, "sequence numbers go on");
        let web_phases = s
            .events_where(1000, |e| e.subject == "web" && e.event == "phase")
            .unwrap();
        let details: Vec<&str> = web_phases.iter().map(|(_, e)| e.detail.as_str()).collect();
        assert_eq!(details, ["#18", "#24"]);
        let newest_two = s.events_where(2, |e| e.subject == "proxy/p1").unwrap();
        let details: Vec<&str> = newest_two.iter().map(|(_, e)| e.detail.as_str()).collect();
        assert_eq!(details, ["#21", "#23"]);
    }
}
