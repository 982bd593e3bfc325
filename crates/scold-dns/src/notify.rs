//! NOTIFY to secondaries (RFC 1996): when a zone changes (an update applied, or the
//! zones loaded at start), every secondary configured for it gets a NOTIFY signed with
//! its key, resent with back-off until it answers, so it transfers the change at once
//! instead of at its next refresh.
//!
//! A newer change to the same zone replaces a NOTIFY still being retried: the
//! secondary only needs to hear about the latest serial.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::config::Secondary;
use crate::net::{exchange, Transport};
use crate::server::Shared;
use crate::tsig::{now_secs, TsigKey, DEFAULT_FUDGE};

/// Time to wait for the first answer; doubled after each silent attempt.
pub const FIRST_WAIT: Duration = Duration::from_millis(500);
/// Attempts before giving up (about 15 s in all with [`FIRST_WAIT`]).
pub const ATTEMPTS: u32 = 5;

/// Runs until the channel closes: each message is the apex key of a zone that changed
/// (a key, not an index: a reload may add and remove zones).
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut tasks = JoinSet::new();
    let mut pending: HashMap<(usize, Vec<u8>), AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            apex = rx.recv() => {
                let Some(apex) = apex else { break };
                let cat = shared.catalog();
                // A zone removed by a reload since: nothing to tell.
                let Some(zone) = cat.find_exact(&apex).map(|zi| &cat.zones[zi]) else { continue };
                let origin = zone.data.origin.clone();
                let serial = zone.data.serial();
                let acc = shared.access();
                for (si, sec) in acc.secondaries.iter().enumerate() {
                    if !sec.notify || !sec.serves(&zone.data.apex) {
                        continue;
                    }
                    if let Some(old) = pending.remove(&(si, apex.clone())) {
                        old.abort();
                    }
                    let key = acc.keys[sec.key].clone();
                    let sh = shared.clone();
                    let sec = sec.clone();
                    let origin = origin.clone();
                    let h = tasks.spawn(async move {
                        notify_one(&sh, &sec, &key, &origin, serial).await;
                    });
                    pending.insert((si, apex.clone()), h);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                pending.retain(|_, h| !h.is_finished());
            }
        }
    }
}

/// Notifies one secondary of one zone's `serial`, retrying until it answers.
async fn notify_one(
    shared: &Shared,
    sec: &Secondary,
    key: &TsigKey,
    origin: &hickory_proto::rr::Name,
    serial: u32,
) {
    let mut wait = FIRST_WAIT;
    for attempt in 1..=ATTEMPTS {
        let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Notify);
        m.metadata.authoritative = true;
        let mut q = Query::query(origin.clone(), RecordType::SOA);
        q.set_query_class(DNSClass::IN);
        m.add_query(q);
        let signed = m
            .finalize(&key.signer(DEFAULT_FUDGE), now_secs())
            .ok()
            .flatten()
            .and_then(|v| m.to_vec().ok().map(|b| (v, b)));
        let Some((mut verifier, bytes)) = signed else {
            tracing::error!(secondary = %sec.name, zone = %origin, "cannot encode the NOTIFY");
            return;
        };
        shared.metrics.notify("sent");
        let sent = tokio::time::Instant::now();
        tracing::debug!(secondary = %sec.name, to = %sec.address, zone = %origin, serial, attempt, "NOTIFY sent");
        match exchange(sec.address, &bytes, wait, Transport::Auto).await {
            Ok(raw) => {
                let rc = Message::from_vec(&raw).map(|r| r.metadata.response_code);
                match rc {
                    Ok(ResponseCode::NoError) => match verifier.verify(&raw) {
                        Ok(_) => {
                            shared.metrics.notify("answered");
                            tracing::info!(secondary = %sec.name, to = %sec.address, zone = %origin, serial, attempt, "NOTIFY answered");
                            return;
                        }
                        Err(e) => {
                            // Not the secondary's answer, or not with its key: keep trying.
                            shared.metrics.notify("bad_signature");
                            tracing::warn!(secondary = %sec.name, to = %sec.address, zone = %origin, error = %e, "NOTIFY answer not signed with the secondary's key; ignored");
                        }
                    },
                    Ok(rc) => {
                        shared.metrics.notify("refused");
                        tracing::warn!(secondary = %sec.name, to = %sec.address, zone = %origin, serial, rcode = %rc, "NOTIFY refused by the secondary: check it knows the key and lists this server as its primary");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(secondary = %sec.name, error = %e, "unparseable NOTIFY answer");
                    }
                }
            }
            Err(e) => {
                tracing::debug!(secondary = %sec.name, to = %sec.address, attempt, error = %e, "no NOTIFY answer yet");
            }
        }
        // A refused port fails at once: still wait the whole interval before the next.
        tokio::time::sleep_until(sent + wait).await;
        wait = wait.saturating_mul(2);
    }
    shared.metrics.notify("unanswered");
    tracing::warn!(secondary = %sec.name, to = %sec.address, zone = %origin, serial, attempts = ATTEMPTS, "NOTIFY not answered; the secondary will see the change at its next refresh");
}
