//! Live config reload, the same for every daemon: SIGHUP, or a reload order that came
//! over the control channel (`scold ctl reload NODE`), makes the daemon read its config
//! file again. A file that does not load (syntax, unknown key, bad value) changes
//! nothing: the running config stays and the answer names the file and the line. A file
//! that loads is compared with the running config key by key: keys the daemon can apply
//! while running (its `live` list) are handed to it, every other changed key is named
//! in the answer as waiting for a restart and keeps its running value until then.
//!
//! Keys are dotted paths into the file (`filter.pps`, `admission.connections`); a live
//! pattern covers the key itself and everything under it. Arrays of tables (`[[peers]]`)
//! compare as one key.

use scold_proto::control::ReloadReport;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// The outcome of one reload: what changed, or why the file was not taken.
pub type Outcome = Result<ReloadReport, String>;

/// One request to reload, and where its answer goes (none for SIGHUP: the log is the
/// answer).
pub struct ReloadRequest {
    /// What asked: `SIGHUP`, `coordinator`.
    pub origin: &'static str,
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// Asks the daemon's reload task to reload; cheap to clone.
#[derive(Clone)]
pub struct ReloadSender(mpsc::Sender<ReloadRequest>);

pub type ReloadReceiver = mpsc::Receiver<ReloadRequest>;

/// The channel between whoever asks (signal, control channel) and the reload task.
pub fn channel() -> (ReloadSender, ReloadReceiver) {
    let (tx, rx) = mpsc::channel(4);
    (ReloadSender(tx), rx)
}

impl ReloadSender {
    /// Reloads and waits for the outcome.
    pub async fn request(&self, origin: &'static str) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(ReloadRequest {
                origin,
                reply: Some(tx),
            })
            .await
            .map_err(|_| "this daemon is stopping; it reloads nothing".to_string())?;
        rx.await
            .map_err(|_| "the reload task stopped before answering".to_string())?
    }
}

/// Turns every SIGHUP into a reload request. Installs the handler at once, so a SIGHUP
/// from then on no longer ends the process (the signal's default action). Must be
/// called inside a Tokio runtime.
pub fn on_hangup(tx: ReloadSender) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config file");
            let req = ReloadRequest {
                origin: "SIGHUP",
                reply: None,
            };
            if tx.0.send(req).await.is_err() {
                return;
            }
        }
    }))
}

/// The running config as a tree of keys, to compare a new file with.
pub struct Running {
    value: Value,
    live: &'static [&'static str],
}

/// What a new file changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Changed keys the daemon applies now.
    pub live: Vec<String>,
    /// Changed keys that wait for a restart.
    pub restart: Vec<String>,
    new: Value,
}

fn tree<T: Serialize>(cfg: &T) -> Value {
    // Config types serialise to plain trees (strings, numbers, tables); a failure here
    // would be a bug in a config type, and comparing against Null then names every key.
    serde_json::to_value(cfg).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot compare config files: serialising failed");
        Value::Null
    })
}

impl Running {
    /// `live`: the key patterns this daemon applies while running.
    pub fn new<T: Serialize>(cfg: &T, live: &'static [&'static str]) -> Running {
        Running {
            value: tree(cfg),
            live,
        }
    }

    /// Which keys of `new` differ from the running config, split by whether they
    /// apply live.
    pub fn compare<T: Serialize>(&self, new: &T) -> Plan {
        let new = tree(new);
        let mut changed = Vec::new();
        diff(&self.value, &new, &mut String::new(), &mut changed);
        let (live, restart) = changed
            .into_iter()
            .partition(|k| self.live.iter().any(|p| covers(p, k)));
        Plan { live, restart, new }
    }

    /// Takes the live keys of an applied plan as running; the rest keep their running
    /// value, so the next reload still names them.
    pub fn adopt(&mut self, plan: &Plan) {
        for key in &plan.live {
            let v = lookup(&plan.new, key).cloned().unwrap_or(Value::Null);
            set(&mut self.value, key, v);
        }
    }
}

/// `pattern` is `key` or one of its parents.
fn covers(pattern: &str, key: &str) -> bool {
    key == pattern
        || key
            .strip_prefix(pattern)
            .is_some_and(|rest| rest.starts_with('.'))
}

fn diff(a: &Value, b: &Value, path: &mut String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    path,
                    out,
                );
                path.truncate(len);
            }
        }
        _ if a != b => out.push(if path.is_empty() {
            "(whole file)".into()
        } else {
            path.clone()
        }),
        _ => {}
    }
}

fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(v, |v, k| v.get(k))
}

fn set(v: &mut Value, key: &str, new: Value) {
    let mut cur = v;
    let parts: Vec<&str> = key.split('.').collect();
    for k in &parts[..parts.len() - 1] {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        cur = cur
            .as_object_mut()
            .expect("made an object above")
            .entry(k.to_string())
            .or_insert(Value::Null);
    }
    if !cur.is_object() {
        *cur = Value::Object(Default::default());
    }
    cur.as_object_mut()
        .expect("made an object above")
        .insert(parts[parts.len() - 1].to_string(), new);
}

/// What a daemon made of a reload, when it decides key by key ([`serve_reporting`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys now in force (they replace the plan's live keys in the answer).
    pub applied: Vec<String>,
    /// Changes the daemon would apply live but not now, each as `key: why`; the
    /// running value stays.
    pub refused: Vec<String>,
}

/// Serves reload requests until the channel closes: loads `file` with `load`, compares
/// it with `running`, hands a config with live changes to `apply` (with the keys), and
/// answers with what applied and what waits for a restart. `node` names the daemon in
/// answers and logs (`proxy/p1`, `dns`).
pub async fn serve<T: Serialize>(
    node: String,
    file: PathBuf,
    running: Running,
    requests: ReloadReceiver,
    load: impl Fn(&Path) -> Result<T, String>,
    mut apply: impl AsyncFnMut(T, Vec<String>) -> Result<(), String>,
) {
    serve_reporting(
        node,
        file,
        running,
        requests,
        load,
        async move |new: T, keys: Vec<String>| {
            if !keys.is_empty() {
                apply(new, keys.clone()).await?;
            }
            Ok(Applied {
                applied: keys,
                refused: Vec::new(),
            })
        },
    )
    .await
}

/// [`serve`] for a daemon that compares some keys itself against what runs (the
/// coordinator's targets, whose phase decides what may change): `apply` gets every
/// file that loads, also one without changed live keys (a change it refused before may
/// apply now), and says what it applied and what it refused.
pub async fn serve_reporting<T: Serialize>(
    node: String,
    file: PathBuf,
    mut running: Running,
    mut requests: ReloadReceiver,
    load: impl Fn(&Path) -> Result<T, String>,
    mut apply: impl AsyncFnMut(T, Vec<String>) -> Result<Applied, String>,
) {
    while let Some(req) = requests.recv().await {
        let outcome = async {
            let new = load(&file)?;
            let plan = running.compare(&new);
            let done = apply(new, plan.live.clone()).await?;
            running.adopt(&plan);
            Ok(ReloadReport {
                node: node.clone(),
                file: file.display().to_string(),
                applied: done.applied,
                needs_restart: plan.restart,
                refused: done.refused,
            })
        }
        .await;
        match &outcome {
            Ok(r) => tracing::info!(
                origin = req.origin,
                file = %file.display(),
                applied = ?r.applied,
                needs_restart = ?r.needs_restart,
                refused = ?r.refused,
                "config reloaded"
            ),
            Err(e) => tracing::error!(
                origin = req.origin,
                "config reload refused, the running config stays: {e}"
            ),
        }
        if let Some(reply) = req.reply {
            let _ = reply.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize, Clone)]
    struct Filter {
        interface: String,
        pps: f64,
        limits: Limits,
    }
    #[derive(Serialize, Clone)]
    struct Limits {
        per_source: u32,
        total: u32,
    }
    #[derive(Serialize, Clone)]
    struct Cfg {
        listen: String,
        filter: Option<Filter>,
        peers: Vec<String>,
    }

    fn cfg() -> Cfg {
        Cfg {
            listen: "0.0.0.0:1".into(),
            filter: Some(Filter {
                interface: "eth0".into(),
                pps: 10.0,
                limits: Limits {
                    per_source: 1,
                    total: 2,
                },
            }),
            peers: vec!["a".into()],
        }
    }

    const LIVE: &[&str] = &["filter.pps", "filter.limits"];

    #[test]
    fn changed_keys_are_split_into_live_and_restart() {
        let r = Running::new(&cfg(), LIVE);
        assert_eq!(r.compare(&cfg()).live, Vec::<String>::new());
        let mut n = cfg();
        let f = n.filter.as_mut().unwrap();
        f.pps = 20.0;
        f.limits.total = 9;
        f.interface = "eth1".into();
        n.peers.push("b".into());
        let p = r.compare(&n);
        assert_eq!(p.live, ["filter.limits.total", "filter.pps"]);
        assert_eq!(p.restart, ["filter.interface", "peers"]);
        // A pattern is not a prefix of another key's name.
        assert!(!covers("filter.pps", "filter.pps_max"));
    }

    #[test]
    fn a_section_that_appears_is_not_live_under_its_keys() {
        let mut old = cfg();
        old.filter = None;
        let p = Running::new(&old, LIVE).compare(&cfg());
        assert!(p.live.is_empty(), "{p:?}");
        assert_eq!(p.restart, ["filter"]);
    }

    #[test]
    fn adopted_keys_are_running_and_the_rest_still_differ() {
        let mut r = Running::new(&cfg(), LIVE);
        let mut n = cfg();
        n.filter.as_mut().unwrap().pps = 20.0;
        n.listen = "0.0.0.0:2".into();
        let p = r.compare(&n);
        r.adopt(&p);
        let again = r.compare(&n);
        assert!(again.live.is_empty(), "{again:?}");
        assert_eq!(again.restart, ["listen"]);
    }

    #[tokio::test]
    async fn a_file_that_does_not_load_changes_nothing_and_says_where() {
        let dir = std::env::temp_dir().join(format!("scold-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.toml");
        std::fs::write(&file, "pps = 10.0\n").unwrap();
        #[derive(serde::Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        struct X {
            pps: f64,
        }
        let load = |p: &Path| crate::load::<X>(p, "x").map_err(|e| e.to_string());
        let running = Running::new(&load(&file).unwrap(), &["pps"]);
        let (tx, rx) = channel();
        let applied = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = applied.clone();
        let task = tokio::spawn(serve(
            "x".into(),
            file.clone(),
            running,
            rx,
            load,
            async move |x: X, keys| {
                seen.lock().unwrap().push((x.pps, keys));
                Ok(())
            },
        ));
        std::fs::write(&file, "pps = 10.0\nppz = 1\n").unwrap();
        let e = tx.request("test").await.unwrap_err();
        assert!(e.contains("x.toml") && e.contains("line 2"), "{e}");
        std::fs::write(&file, "pps = 30.0\n").unwrap();
        let r = tx.request("test").await.unwrap();
        assert_eq!(r.applied, ["pps"]);
        assert!(r.needs_restart.is_empty());
        assert_eq!(*applied.lock().unwrap(), [(30.0, vec!["pps".to_string()])]);
        // Unchanged now: nothing to apply.
        let r = tx.request("test").await.unwrap();
        assert!(r.applied.is_empty());
        drop(tx);
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_daemon_that_decides_itself_is_asked_at_every_reload_and_its_word_is_the_answer() {
        let dir = std::env::temp_dir().join(format!("scold-reload-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("y.toml");
        std::fs::write(&file, "pps = 10.0\nport = 1\n").unwrap();
        #[derive(serde::Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        struct Y {
            pps: f64,
            port: u16,
        }
        let load = |p: &Path| crate::load::<Y>(p, "y").map_err(|e| e.to_string());
        let running = Running::new(&load(&file).unwrap(), &["pps"]);
        let (tx, rx) = channel();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let task = tokio::spawn(serve_reporting(
            "y".into(),
            file.clone(),
            running,
            rx,
            load,
            async move |y: Y, keys: Vec<String>| {
                seen.lock().unwrap().push(keys.clone());
                // Refuses what it cannot take now, whatever the file's comparison said.
                Ok(Applied {
                    applied: vec![format!("pps.as.{}", y.pps)],
                    refused: vec!["pps.other: not now".into()],
                })
            },
        ));
        std::fs::write(&file, "pps = 20.0\nport = 2\n").unwrap();
        let r = tx.request("test").await.unwrap();
        assert_eq!(r.applied, ["pps.as.20"]);
        assert_eq!(r.refused, ["pps.other: not now"]);
        assert_eq!(r.needs_restart, ["port"]);
        assert!(r.to_string().contains("refused: pps.other: not now"), "{r}");
        // Unchanged file: still asked (a change refused before may apply now).
        let r = tx.request("test").await.unwrap();
        assert_eq!(r.applied, ["pps.as.20"]);
        // A broken file: not asked, nothing changes.
        std::fs::write(&file, "pps = \n").unwrap();
        let e = tx.request("test").await.unwrap_err();
        assert!(e.contains("y.toml") && e.contains("line 1"), "{e}");
        assert_eq!(
            *calls.lock().unwrap(),
            [vec!["pps".to_string()], Vec::<String>::new()]
        );
        drop(tx);
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
