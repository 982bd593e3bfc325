//! Which coordinator replica leads: an etcd key on a lease (`<prefix>leader`), created
//! only if absent. The replica that created it leads until its lease lapses; the others
//! stand by, polling the key, and the first to create it after the lapse leads next.
//! The key's create revision is the leadership's epoch: it grows with every new leader,
//! and the leader's store writes hold only while the key is still the one it created
//! ([`crate::store::Fence`]).
//!
//! A leader renews its lease a few times per lease period; when it cannot (etcd lost,
//! or the lease gone), it gives up the lead before the lease can lapse, so two replicas
//! never act at once. Blocking calls (the etcd client is blocking): run them off the
//! async workers.

use crate::etcd::{Compare, Etcd, EtcdError, Op};
use crate::store::Fence;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How often a standby replica looks whether the lead is free.
pub const STANDBY_POLL: Duration = Duration::from_millis(200);

/// This replica's lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub fence: Fence,
    pub lease: i64,
    /// The leadership epoch: the leader key's create revision.
    pub epoch: i64,
}

/// The leader key under `prefix`.
pub fn leader_key(prefix: &str) -> Vec<u8> {
    format!("{prefix}leader").into_bytes()
}

/// Who leads now (the value its leader wrote), if anyone.
pub fn leader(etcd: &Etcd, prefix: &str) -> Result<Option<String>, EtcdError> {
    Ok(etcd
        .get(&leader_key(prefix))?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Blocks until this replica leads (`me` is what it writes in the key: its identity and
/// address, for the others' logs), or until `stop` is set (then `None`). etcd being
/// unreachable is waited out, logged at most every few seconds.
pub fn campaign(
    etcd: &Etcd,
    prefix: &str,
    me: &str,
    lease_secs: u64,
    stop: &AtomicBool,
) -> Option<Leadership> {
    let key = leader_key(prefix);
    let mut told: Option<String> = None;
    let mut last_error: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match try_lead(etcd, &key, me, lease_secs) {
            Ok(Ok(l)) => return Some(l),
            Ok(Err(holder)) => {
                if told.as_deref() != Some(holder.as_str()) {
                    info!(leader = %holder, "standing by: another coordinator replica leads");
                    told = Some(holder);
                }
            }
            Err(e) => {
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    warn!(error = %e, "standing by: cannot reach etcd to see who leads");
                    last_error = Some(Instant::now());
                }
            }
        }
        std::thread::sleep(STANDBY_POLL);
    }
    None
}

/// One try: `Ok(Ok(lead))`, or `Ok(Err(holder))` when another replica leads.
fn try_lead(
    etcd: &Etcd,
    key: &[u8],
    me: &str,
    lease_secs: u64,
) -> Result<Result<Leadership, String>, EtcdError> {
    if let Some(kv) = etcd.get(key)? {
        return Ok(Err(String::from_utf8_lossy(&kv.value).into_owned()));
    }
    let lease = etcd.lease_grant(lease_secs as i64)?;
    let r = etcd.txn(
        &[Compare::CreateRevision(key.to_vec(), 0)],
        &[Op::Put {
            key: key.to_vec(),
            value: me.as_bytes().to_vec(),
            lease,
        }],
        &[Op::Get { key: key.to_vec() }],
    )?;
    if r.succeeded {
        return Ok(Ok(Leadership {
            fence: Fence {
                key: key.to_vec(),
                create_revision: r.revision,
            },
            lease,
            epoch: r.revision,
        }));
    }
    let _ = etcd.lease_revoke(lease);
    let holder = r
        .got
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .unwrap_or_else(|| "another replica".into());
    Ok(Err(holder))
}

/// How often a leader renews its lease, for a lease of `lease_secs`.
pub fn renew_every(lease_secs: u64) -> Duration {
    Duration::from_millis(lease_secs * 1000 / 4).max(Duration::from_millis(200))
}

/// How long after its last renewal a leader that cannot renew gives up the lead: well
/// before the lease itself can lapse and another replica take over.
pub fn give_up_after(lease_secs: u64) -> Duration {
    Duration::from_millis(lease_secs * 1000 * 2 / 3)
}

/// Keeps the lead: renews `lead`'s lease every [`renew_every`] until `stop` is set
/// (returns true) or the lead is lost (returns false: the lease is gone, or it could
/// not be renewed for [`give_up_after`]).
pub fn keep(etcd: &Etcd, lead: &Leadership, lease_secs: u64, stop: &AtomicBool) -> bool {
    let mut renewed = Instant::now();
    let every = renew_every(lease_secs);
    let limit = give_up_after(lease_secs);
    loop {
        let next = renewed + every;
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20).min(every));
        }
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        match etcd.lease_keepalive(lead.lease) {
            Ok(ttl) if ttl > 0 => renewed = Instant::now(),
            Ok(_) => {
                warn!(
                    epoch = lead.epoch,
                    "the lead's lease is gone (etcd expired it)"
                );
                return false;
            }
            Err(e) => {
                warn!(error = %e, "cannot renew the lead's lease");
                if renewed.elapsed() >= limit {
                    return false;
                }
                // Not a tight loop on a refused connection.
                std::thread::sleep((every / 4).max(Duration::from_millis(50)));
            }
        }
    }
}
