//! A small client of etcd's v3 API, through the JSON gateway every etcd server serves on
//! its client port (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`, ...): what
//! coordinator replicas need to share their state and elect a leader, without a gRPC
//! stack. Blocking (std sockets, a deadline on every call), like the redb store it sits
//! beside; one kept-alive HTTP/1.1 connection, moved to the next endpoint when one
//! fails.
//!
//! Keys and values travel base64-encoded; int64 fields come back as strings (both forms
//! are read). Nothing here knows what the keys mean: see [`crate::store`].

use crate::http::Exchange;
use data_encoding::BASE64;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd {endpoints}: no endpoint answered: {last}")]
    Unreachable { endpoints: String, last: String },
    #[error("etcd {endpoint}: {path} answered HTTP {status}: {message}")]
    Refused {
        endpoint: SocketAddr,
        path: String,
        status: u16,
        message: String,
    },
    #[error("etcd {endpoint}: {path}: the answer does not parse: {message}")]
    BadAnswer {
        endpoint: SocketAddr,
        path: String,
        message: String,
    },
}

/// One key and its value, with etcd's revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key was created at this revision (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
    /// The key was last modified at this revision (0: the key does not exist).
    ModRevision(Vec<u8>, i64),
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Deletes `[key, range_end)`; an empty `range_end` deletes `key` alone.
    Delete {
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct TxnResult {
    /// Whether every compare held (and the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// The keys the `Get`s of the branch that ran found.
    pub got: Vec<Kv>,
}

/// The end of the range of every key that starts with `prefix` (etcd's prefix rule).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn b64(b: &[u8]) -> String {
    BASE64.encode(b)
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| BASE64.decode(s.as_bytes()).ok())
        .unwrap_or_default()
}

fn kvs(v: &Value) -> Vec<Kv> {
    v.get("kvs")
        .and_then(|k| k.as_array())
        .map(|a| {
            a.iter()
                .map(|kv| Kv {
                    key: unb64(&kv["key"]),
                    value: unb64(&kv["value"]),
                    create_revision: int(&kv["create_revision"]),
                    mod_revision: int(&kv["mod_revision"]),
                    lease: int(&kv["lease"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A client of one etcd cluster.
pub struct Etcd {
    endpoints: Vec<SocketAddr>,
    timeout: Duration,
    /// The open connection and the index of its endpoint.
    conn: Mutex<Option<(usize, TcpStream)>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Etcd {
    /// A client of the cluster whose members serve clients at `endpoints`; every call
    /// gives up after `timeout`.
    pub fn new(endpoints: Vec<SocketAddr>, timeout: Duration) -> Etcd {
        Etcd {
            endpoints,
            timeout,
            conn: Mutex::new(None),
        }
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    fn shown(&self) -> String {
        let v: Vec<String> = self.endpoints.iter().map(|e| e.to_string()).collect();
        v.join(",")
    }

    /// `POST path body` to the current endpoint, or to the next ones in turn when it
    /// fails at the connection level. An HTTP error answer is not retried elsewhere.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let deadline = Instant::now() + self.timeout;
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let start = guard.as_ref().map_or(0, |(i, _)| *i);
        let mut last = String::from("no endpoint configured");
        for k in 0..self.endpoints.len() * 2 {
            let i = (start + k) % self.endpoints.len();
            let endpoint = self.endpoints[i];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let stream = match guard.take() {
                Some((j, s)) if j == i => s,
                _ => match TcpStream::connect_timeout(&endpoint, left) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        s
                    }
                    Err(e) => {
                        last = format!("{endpoint}: {e}");
                        continue;
                    }
                },
            };
            let text = body.to_string();
            match crate::http::post(
                &stream,
                &endpoint.to_string(),
                path,
                &[],
                text.as_bytes(),
                deadline,
            ) {
                Ok(Exchange::Answer(status, text, keep)) => {
                    // A streamed answer (keepalive) may carry several JSON messages: the
                    // first is the answer to our one request.
                    let text = first_json(&text);
                    if keep {
                        *guard = Some((i, stream));
                    }
                    if status != 200 {
                        let message = serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|v| {
                                v.get("message")
                                    .or_else(|| v.get("error"))
                                    .and_then(|m| m.as_str())
                                    .map(str::to_string)
                            })
                            .unwrap_or(text);
                        return Err(EtcdError::Refused {
                            endpoint,
                            path: path.into(),
                            status,
                            message,
                        });
                    }
                    return serde_json::from_str(&text).map_err(|e| EtcdError::BadAnswer {
                        endpoint,
                        path: path.into(),
                        message: e.to_string(),
                    });
                }
                Ok(Exchange::Broken(why)) | Err(why) => {
                    // A kept connection the server closed meanwhile is tried again once
                    // on a fresh one (k goes on to the same index next round).
                    last = format!("{endpoint}: {why}");
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.shown(),
            last,
        })
    }

    /// The key `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({ "key": b64(key) }))?;
        Ok(kvs(&v).into_iter().next())
    }

    /// Every key in `[key, range_end)`, in key order (descending when asked), at most
    /// `limit` of them (0: all).
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        limit: i64,
        descending: bool,
    ) -> Result<Vec<Kv>, EtcdError> {
        let mut body = json!({ "key": b64(key), "range_end": b64(range_end), "limit": limit });
        if descending {
            body["sort_order"] = json!("DESCEND");
            body["sort_target"] = json!("KEY");
        }
        let v = self.call("/v3/kv/range", &body)?;
        Ok(kvs(&v))
    }

    /// Runs `success` if every compare holds, `failure` otherwise, atomically.
    pub fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, EtcdError> {
        let cmp: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::CreateRevision(k, r) => json!({
                    "key": b64(k), "target": "CREATE", "result": "EQUAL",
                    "create_revision": r.to_string()
                }),
                Compare::ModRevision(k, r) => json!({
                    "key": b64(k), "target": "MOD", "result": "EQUAL",
                    "mod_revision": r.to_string()
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|o| match o {
                    Op::Put { key, value, lease } => json!({"request_put": {
                        "key": b64(key), "value": b64(value), "lease": lease.to_string()
                    }}),
                    Op::Delete { key, range_end } => json!({"request_delete_range": {
                        "key": b64(key), "range_end": b64(range_end)
                    }}),
                    Op::Get { key } => json!({"request_range": { "key": b64(key) }}),
                })
                .collect()
        };
        let v = self.call(
            "/v3/kv/txn",
            &json!({ "compare": cmp, "success": ops(success), "failure": ops(failure) }),
        )?;
        let got = v
            .get("responses")
            .and_then(|r| r.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.get("response_range"))
                    .flat_map(kvs)
                    .collect()
            })
            .unwrap_or_default();
        Ok(TxnResult {
            succeeded: v
                .get("succeeded")
                .and_then(|s| s.as_bool())
                .unwrap_or(false),
            revision: int(&v["header"]["revision"]),
            got,
        })
    }

    /// A lease of `ttl_secs`; its id.
    pub fn lease_grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl_secs.to_string() }))?;
        Ok(int(&v["ID"]))
    }

    /// Renews lease `id`; the seconds it now has left, 0 when it no longer exists.
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// Ends lease `id` now; the keys attached to it go with it.
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))?;
        Ok(())
    }
}

/// The first JSON value of `text` (as text), or `text` itself.
fn first_json(text: &str) -> String {
    match serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()
    {
        Some(Ok(v)) => v.to_string(),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/scold/"), b"/scold0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn int64_fields_read_as_strings_or_numbers() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(42)), 42);
        assert_eq!(int(&json!(null)), 0);
    }
}
