//! Operator requests that act on the running system rather than on a target's phase:
//! `scold ctl reload NODE` forwards a reload order over the node's own control channel
//! and answers with the node's report. Every such request is an audit event, with who
//! asked and what came of it.

use super::*;
use scold_link::channel::ChannelError;
use scold_proto::control::{RefusalReason, ReloadReport};
use scold_proto::identity::Identity;

/// How long a node may take to read and apply its config file (under `scold ctl`'s
/// default 10 s, so the operator hears why rather than a time-out).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(8);

impl Coordinator {
    /// The connected node `node` names: `role/name`, or a bare name that only one
    /// connected node has.
    fn connected_node(&self, node: &str) -> Result<(String, Channel), Refusal> {
        let world = self.lock();
        if let Some(c) = world.live.get(node) {
            return Ok((node.to_string(), c.clone()));
        }
        let suffix = format!("/{node}");
        let found: Vec<(&String, &Channel)> = world
            .live
            .iter()
            .filter(|(k, _)| !node.contains('/') && k.ends_with(&suffix))
            .collect();
        match found.as_slice() {
            [(k, c)] => Ok(((*k).clone(), (*c).clone())),
            [] => {
                let mut known: Vec<&String> = world.live.keys().collect();
                known.sort();
                Err(Refusal::new(
                    RefusalReason::Unknown,
                    format!(
                        "no node {node:?} is connected; connected now: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ))
            }
            many => Err(Refusal::new(
                RefusalReason::BadRequest,
                format!(
                    "{node:?} names several nodes ({}); write role/name",
                    many.iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// `scold ctl reload NODE`: the node re-reads its config file and says what it
    /// applied and what waits for a restart; a file it cannot use is refused with the
    /// file and line, and the node keeps running on the old one.
    pub(super) async fn reload_node(&self, node: &str, by: &Identity) -> Result<Reply, Refusal> {
        let (key, channel) = self.connected_node(node)?;
        let outcome = channel.request(Request::Reload, RELOAD_TIMEOUT).await;
        let (detail, result) = match outcome {
            Ok(Reply::Reloaded(report)) => (
                format!("by {by}: {report}"),
                Ok(Reply::Reloaded(ReloadReport {
                    node: if report.node.is_empty() {
                        key.clone()
                    } else {
                        report.node.clone()
                    },
                    ..report
                })),
            ),
            Ok(other) => (
                format!("by {by}: unexpected answer {other:?}"),
                Err(Refusal::new(
                    RefusalReason::Unavailable,
                    format!("{key} answered the reload with {other:?}"),
                )),
            ),
            Err(ChannelError::Failed { message, .. }) => (
                format!("by {by}: refused, running config kept: {message}"),
                Err(Refusal::new(
                    RefusalReason::BadRequest,
                    format!("{key} kept its running config: {message}"),
                )),
            ),
            Err(ChannelError::Refused { refusal, .. }) => (
                format!("by {by}: refused: {}", refusal.message),
                Err(Refusal::new(
                    refusal.reason,
                    format!("{key}: {}", refusal.message),
                )),
            ),
            Err(e) => (
                format!("by {by}: no answer: {e}"),
                Err(Refusal::new(
                    RefusalReason::Unavailable,
                    format!("{key} did not answer the reload: {e}"),
                )),
            ),
        };
        if let Err(e) = self.commit(Batch {
            events: vec![event(&key, "reload", detail)],
            ..Default::default()
        }) {
            warn!(error = %e, node = %key, "cannot record the reload in the audit log");
        }
        result
    }
}
