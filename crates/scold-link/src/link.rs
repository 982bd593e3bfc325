//! A node's link to the coordinator: connect, register, heartbeat, reconnect with
//! backoff, and serve the coordinator's orders through the node's [`Handler`].

use crate::channel::{self, Channel, ChannelError, Handler};
use scold_metrics::Metrics;
use scold_pki::TlsIdentity;
use scold_proto::control::{NodeInfo, NodeLoad, Reply, Request};
use scold_proto::identity::Role;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// With replicas, a round of refused connections usually means a takeover in progress
/// (a lease of a few seconds): retry sooner, so the new leader hears from its nodes
/// soon after it listens. A refused connect costs a replica nothing.
const MAX_BACKOFF_REPLICAS: Duration = Duration::from_millis(500);

/// A running link to the coordinator. Cheap to clone.
#[derive(Clone)]
pub struct CoordinatorLink {
    current: watch::Receiver<Option<Channel>>,
    /// What the next heartbeat reports the node carries; the node's own tasks set it.
    load: Arc<std::sync::Mutex<Option<NodeLoad>>>,
}

impl CoordinatorLink {
    /// Starts the connect/register/heartbeat loop in the background. It stops when
    /// `shutdown` flips to true.
    pub fn start<H: Handler>(
        coordinator: SocketAddr,
        info: NodeInfo,
        tls: Arc<TlsIdentity>,
        handler: Arc<H>,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> CoordinatorLink {
        Self::start_any(vec![coordinator], info, tls, handler, metrics, shutdown)
    }

    /// [`CoordinatorLink::start`] with every replica's address: the link goes to the one
    /// that answers (standby replicas do not listen), tries the next at once when one
    /// fails, and backs off only after a round in which none answered.
    pub fn start_any<H: Handler>(
        coordinators: Vec<SocketAddr>,
        info: NodeInfo,
        tls: Arc<TlsIdentity>,
        handler: Arc<H>,
        metrics: Metrics,
        mut shutdown: watch::Receiver<bool>,
    ) -> CoordinatorLink {
        assert!(
            !coordinators.is_empty(),
            "a link needs a coordinator address"
        );
        let max_backoff = if coordinators.len() > 1 {
            MAX_BACKOFF_REPLICAS
        } else {
            MAX_BACKOFF
        };
        let (tx, rx) = watch::channel(None);
        let load: Arc<std::sync::Mutex<Option<NodeLoad>>> = Default::default();
        let reported = load.clone();
        tokio::spawn(async move {
            let mut backoff = MIN_BACKOFF;
            let mut next = 0usize;
            let mut failed_in_round = 0usize;
            loop {
                let coordinator = coordinators[next % coordinators.len()];
                let attempt = async {
                    let ch = channel::connect(
                        coordinator,
                        &tls,
                        &[Role::Coordinator],
                        handler.clone(),
                        metrics.clone(),
                    )
                    .await?;
                    let reply = ch
                        .request(Request::Register(info.clone()), channel::REQUEST_TIMEOUT)
                        .await?;
                    let every = match reply {
                        Reply::Registered { heartbeat_ms } => {
                            Duration::from_millis(heartbeat_ms.max(50))
                        }
                        _ => Duration::from_secs(1),
                    };
                    Ok::<_, ChannelError>((ch, every))
                };
                let (ch, every) = tokio::select! {
                    r = attempt => match r {
                        Ok(x) => x,
                        Err(e) => {
                            next += 1;
                            failed_in_round += 1;
                            if failed_in_round < coordinators.len() {
                                // Another replica may lead: try it at once.
                                info!(%coordinator, error = %e, "cannot reach this coordinator replica; trying the next");
                                continue;
                            }
                            failed_in_round = 0;
                            warn!(%coordinator, error = %e, retry_in = ?backoff, "cannot reach the coordinator");
                            tokio::select! {
                                _ = tokio::time::sleep(jitter(backoff)) => {},
                                _ = scold_daemon::until_set(&mut shutdown) => return,
                            }
                            backoff = (backoff * 2).min(max_backoff);
                            continue;
                        }
                    },
                    _ = scold_daemon::until_set(&mut shutdown) => return,
                };
                info!(%coordinator, peer = %ch.peer(), "registered with the coordinator");
                backoff = MIN_BACKOFF;
                failed_in_round = 0;
                let _ = tx.send(Some(ch.clone()));
                let mut seq = 0u64;
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            seq += 1;
                            let load = *reported.lock().unwrap_or_else(|e| e.into_inner());
                            if let Err(e) = ch.request(Request::Heartbeat { seq, load }, every * 3).await {
                                warn!(error = %e, "heartbeat failed; reconnecting");
                                break;
                            }
                        }
                        _ = ch.wait_closed() => {
                            warn!("coordinator connection closed; reconnecting");
                            break;
                        }
                        _ = scold_daemon::until_set(&mut shutdown) => return,
                    }
                }
                let _ = tx.send(None);
            }
        });
        CoordinatorLink { current: rx, load }
    }

    /// Changes what the following heartbeats report the node carries (`f` edits the
    /// figures last set; each task of the node keeps its own fields).
    pub fn report_load(&self, f: impl FnOnce(&mut NodeLoad)) {
        let mut load = self.load.lock().unwrap_or_else(|e| e.into_inner());
        f(load.get_or_insert_with(NodeLoad::default));
    }

    pub fn connected(&self) -> bool {
        self.current
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }

    /// Sends a request to the coordinator, waiting up to `timeout` for a connection
    /// and the answer together.
    pub async fn request(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.current.clone();
        let ch = tokio::time::timeout_at(deadline, async {
            loop {
                if let Some(ch) = rx.borrow_and_update().clone().filter(|c| !c.is_closed()) {
                    return Ok(ch);
                }
                if rx.changed().await.is_err() {
                    return Err(ChannelError::Closed("coordinator".into()));
                }
            }
        })
        .await
        .map_err(|_| ChannelError::Timeout {
            peer: "coordinator".into(),
            kind: request.kind(),
            timeout,
        })??;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        ch.request(request, left.max(Duration::from_millis(1)))
            .await
    }
}

/// Spreads reconnects of many nodes after a coordinator restart.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random::<f64>() * 0.5 + 0.75;
    d.mul_f64(f)
}
