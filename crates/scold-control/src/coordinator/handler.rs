//! The coordinator's side of every control connection: each request, already
//! authorised by role, goes to the driver.

use super::*;
use crate::store::{Batch, Health, NodeRecord};
use scold_link::channel::{Channel, Handler};
use scold_proto::control::{Refusal, RefusalReason, Reply, Request, Response};
use scold_proto::identity::Role;
use std::sync::Arc;
use tracing::warn;

/// The coordinator's side of every control connection.
pub struct CoordinatorHandler(pub Arc<Coordinator>);

fn respond(r: Result<Reply, Refusal>) -> Response {
    match r {
        Ok(reply) => Response::Ok { reply },
        Err(refusal) => Response::Refused(refusal),
    }
}

impl Handler for CoordinatorHandler {
    async fn handle(&self, from: &Channel, request: Request) -> Response {
        let c = &self.0;
        match request {
            Request::Register(info) => {
                let r = c.register(from, info);
                let role = from.peer().role;
                if let Ok(reg) = &r {
                    // Also after a coordinator restart, when every node registers again:
                    // nothing tells a node that restarted meanwhile from one that did
                    // not, and orders are idempotent.
                    c.resync_node(role, from.peer().name.clone(), reg.tunnel_changed);
                    if role == Role::Proxy {
                        c.refill(None, "proxy_back");
                    }
                }
                respond(r.map(|reg| reg.reply))
            }
            Request::Heartbeat { load, .. } => {
                if c.heartbeat(from, load) && from.peer().role == Role::Proxy {
                    c.refill(None, "proxy_back");
                }
                respond(Ok(Reply::Done))
            }
            Request::Alarm { target, summary } => {
                respond(c.alarm(&target, "alarm", &summary.to_string()))
            }
            Request::AllClear { target } => respond(c.all_clear(&target, "all_clear")),
            Request::ProxyAttacked { proxy, summary } => {
                let key = NodeRecord::key(Role::Proxy, &proxy);
                warn!(%proxy, %summary, "proxy reports a severe attack on itself; resetting it out");
                c.set_health(&mut c.lock(), &key, Health::Attacked, "reported attack");
                c.proxy_lost(&proxy, "proxy_attacked");
                respond(Ok(Reply::Done))
            }
            Request::Traceback { proxy, sources } => {
                let detail = format!(
                    "{} sources: {:?}",
                    sources.len(),
                    sources.iter().take(20).collect::<Vec<_>>()
                );
                let r = c.commit(Batch {
                    events: vec![event(&format!("proxy/{proxy}"), "traceback", detail)],
                    ..Default::default()
                });
                respond(
                    r.map(|_| Reply::Done)
                        .map_err(|e| Refusal::new(RefusalReason::Unavailable, e.to_string())),
                )
            }
            Request::Status => respond(c.status(10).map(Reply::Status)),
            Request::Proxies => {
                let proxies = c.proxy_views(&c.lock());
                respond(Ok(Reply::Proxies { proxies }))
            }
            Request::Events {
                limit,
                subject,
                kind,
            } => respond(
                c.events(
                    limit.min(10_000) as usize,
                    subject.as_deref(),
                    kind.as_deref(),
                )
                .map(|events| Reply::Events { events }),
            ),
            Request::Divert { target } => {
                respond(c.alarm(&target, "operator_divert", &from.peer().to_string()))
            }
            Request::Restore { target } => respond(c.all_clear(&target, "operator_restore")),
            Request::ReloadNode { node } => respond(c.reload_node(&node, from.peer()).await),
            Request::ProxyAdd {
                name,
                address,
                capacity_mbps,
                organisation,
            } => respond(c.proxy_add(&name, address, capacity_mbps, organisation, from.peer())),
            Request::ProxyApprove { name } => respond(c.proxy_approve(&name, from.peer())),
            Request::ProxyDrain { name } => respond(c.proxy_drain(&name, from.peer())),
            Request::ProxyRemove { name } => respond(c.proxy_remove(&name, from.peer())),
            Request::TargetAdd { config } => respond(c.target_add(config, from.peer())),
            Request::TargetRemove { name } => respond(c.target_remove(&name, from.peer())),
            Request::TargetShow { name } => respond(c.target_show(&name)),
            Request::Dataplane { .. } | Request::Notify { .. } | Request::Reload => {
                Response::Refused(Refusal::new(
                    RefusalReason::Role,
                    "the coordinator takes no data-plane orders",
                ))
            }
        }
    }

    async fn closed(&self, channel: &Channel) {
        let key = NodeRecord::key(channel.peer().role, &channel.peer().name);
        let mut world = self.0.lock();
        // Only forget the channel if it is still the current one for this node.
        if world
            .live
            .get(&key)
            .is_some_and(|c| c.remote() == channel.remote())
        {
            world.live.remove(&key);
        }
    }
}
