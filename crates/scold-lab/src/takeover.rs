//! Replicated control plane (`scold lab --coordinators N`, N > 1): under attack, once
//! the divert is done and before the proxy failover, the leading coordinator replica
//! is killed (SIGKILL) and the takeover by a standby is measured; the failover and the
//! restore that follow run under the new leader, and the report says so.
//!
//! Who leads is read from etcd (the leader key the replicas campaign for, see
//! `scold_control::coordinator::lead`), not guessed from logs. Three moments are timed
//! from the kill:
//!
//! - the new leader key: a standby won the lead once the dead leader's lease lapsed;
//! - the first `scold ctl status` answered: the new leader serves. Standby replicas do
//!   not listen and the killed one is gone, so any answer comes from the new leader.
//!   This is the takeover figure: when an operator (and any node) can use the
//!   coordinator again;
//! - the gateway, every proxy and the target linked to the new leader again: each
//!   logs "registered with the coordinator" with the new leader's address. (The
//!   status's node health is no proof: it is shared state in etcd, written while the
//!   old leader ran.) The failover by reset and the all-clear need these links.
//!
//! With replicas TargetDNS is a hidden primary and ClientDNS asks its secondary (Knot);
//! [`check_secondary`] shows, from the secondary's answers and the primary's log, that
//! the divert's ALT records reached the secondary by NOTIFY and incremental transfer,
//! and from packet counters in ClientDNS's namespace that its lookups went to the
//! secondary and none to the hidden primary.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dnsq;
use crate::error::LabError;
use crate::fig8::{self, Fig8};
use crate::progress::Progress;
use crate::report::{fmt_seconds, fmt_summary, Metric, Results, Summary};
use crate::roles::{self, Roles};

/// The coordinator takeover of a replicated run: who led, who took over, when (seconds
/// from the kill -9 of the leader), and what ran under the new leader.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Takeover {
    /// Coordinator replicas, and the etcd members they share.
    pub replicas: usize,
    pub etcd_members: usize,
    /// The leader's etcd lease, seconds.
    pub lease_secs: u64,
    /// The replica that led (and was killed), and the one that took over.
    pub before: String,
    pub after: String,
    /// Kill -> the new leader key in etcd.
    pub elected_seconds: f64,
    /// Kill -> the first `scold ctl status` the new leader answered: the takeover.
    pub serving_seconds: f64,
    /// Kill -> the gateway, every proxy and the target registered with the new leader.
    pub nodes_back_seconds: f64,
    /// TargetDNS's secondary, checked after the divert.
    pub secondary: DnsSecondary,
    /// Proxy failovers that completed after the takeover, of those asked for.
    pub failovers_after: usize,
    pub failovers_asked: usize,
    /// Whether the restore completed (under the new leader).
    pub restore_after: bool,
}

/// TargetDNS's secondary after the divert: the ALT records it answers, and what the
/// hidden primary's log shows it sent it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DnsSecondary {
    pub alt: Vec<std::net::IpAddr>,
    pub notifies_answered: usize,
    pub incremental_transfers: usize,
    pub full_transfers: usize,
    /// Packets ClientDNS sent to port 53 of the secondary and of the hidden primary
    /// (nftables counters in its namespace, from the roles' start to the check).
    #[serde(default)]
    pub clientdns_to_secondary: u64,
    #[serde(default)]
    pub clientdns_to_primary: u64,
}

impl DnsSecondary {
    /// Counts, in `scold dns`'s log, the NOTIFY the secondary `name` answered and the
    /// transfers it was answered (IXFR answered incrementally, and AXFR).
    pub fn from_primary_log(log: &str, name: &str, alt: Vec<std::net::IpAddr>) -> DnsSecondary {
        let mine = format!("secondary={name} ");
        let count = |what: &dyn Fn(&str) -> bool| {
            log.lines().filter(|l| l.contains(&mine) && what(l)).count()
        };
        DnsSecondary {
            alt,
            notifies_answered: count(&|l| l.contains("NOTIFY answered")),
            incremental_transfers: count(&|l| {
                l.contains(" IXFR") && l.contains("answer=\"incremental\"")
            }),
            full_transfers: count(&|l| l.contains(" AXFR")),
            ..DnsSecondary::default()
        }
    }
}

/// The takeover section of the report.
pub fn render(t: &Takeover, r: &Results) -> String {
    let median = |m: Metric| match r.summary(m) {
        Summary::NotMeasured => "not measured".to_string(),
        s => fmt_summary(&s),
    };
    let mut out = format!(
        "Coordinator takeover under attack ({} replicas on a {}-member etcd, lease {} s)\n",
        t.replicas, t.etcd_members, t.lease_secs
    );
    let _ = writeln!(
        out,
        "  leader before: {} (kill -9 after the divert, before the proxy failover)\n  \
         leader after:  {}\n  \
         takeover: kill -9 -> first `scold ctl status` answered by the new leader: {}\n  \
         (kill -9 -> new leader key in etcd {}; -> gateway, proxies and target registered \
         with it {})",
        t.before,
        t.after,
        fmt_seconds(t.serving_seconds),
        fmt_seconds(t.elected_seconds),
        fmt_seconds(t.nodes_back_seconds)
    );
    let _ =
        writeln!(
        out,
        "  under the new leader: proxy failover {} of {} completed (median {}); restore {} ({})",
        t.failovers_after,
        t.failovers_asked,
        median(Metric::Failover),
        if t.restore_after { "completed" } else { "NOT completed" },
        median(Metric::Restore)
    );
    let _ = writeln!(
        out,
        "  TargetDNS: hidden primary updated by the coordinator; ClientDNS sent {} packets to \
         the secondary (Knot) and {} to the hidden primary; the secondary answered ALT {:?} \
         after the divert; the primary's log: {} NOTIFY answered, {} IXFR answered \
         incrementally, {} AXFR to it",
        t.secondary.clientdns_to_secondary,
        t.secondary.clientdns_to_primary,
        t.secondary.alt,
        t.secondary.notifies_answered,
        t.secondary.incremental_transfers,
        t.secondary.full_transfers
    );
    out
}

/// Steps the progress display counts for the takeover.
pub const STEPS: usize = 4;

/// Longest wait from the kill for each of the takeover's moments.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(30);

/// Kills the leading replica and measures the takeover; the record goes into
/// `results.takeover` (the failover and restore after it are filled in by
/// [`finish`] once they ran). Fails the run when no standby takes over.
pub fn run(
    lab: &Fig8,
    roles: &mut Roles,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    let secondary = check_secondary(lab, roles)?;
    progress.step(
        "TargetDNS secondary",
        &format!(
            "{} answers ALT {:?} for {} (ClientDNS sent it {} packets, the hidden primary \
             {}); the hidden primary's log: {} NOTIFY answered, {} incremental transfers to it",
            fig8::DNS_SECONDARY,
            secondary.alt,
            roles::TARGET_FQDN,
            secondary.clientdns_to_secondary,
            secondary.clientdns_to_primary,
            secondary.notifies_answered,
            secondary.incremental_transfers
        ),
    );

    let before = roles
        .leading_coordinator()?
        .ok_or_else(|| LabError::Protocol {
            peer: "etcd".into(),
            reason: "no coordinator replica holds the lead before the kill".into(),
        })?;
    roles.kill_daemon(&before)?;
    let killed = Instant::now();
    progress.step(
        "leader killed",
        &format!("kill -9 of the leading replica {before} (by its etcd leader key)"),
    );

    // A standby takes the lead once the dead leader's lease lapses.
    let mut elected = None;
    let mut after = None;
    while killed.elapsed() < TAKEOVER_LIMIT {
        if let Ok(Some(who)) = roles.leading_coordinator() {
            if who != before {
                elected = Some(killed.elapsed().as_secs_f64());
                after = Some(who);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(after) = after else {
        return Err(LabError::Timeout {
            what: format!(
                "a standby coordinator replica to take the lead after {before} was killed"
            ),
            secs: TAKEOVER_LIMIT.as_secs_f64(),
        });
    };
    // The new leader serves: the first status it answers.
    let mut serving = None;
    while killed.elapsed() < TAKEOVER_LIMIT {
        if roles.ctl(&["status"]).is_ok() {
            serving = Some(killed.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(serving) = serving else {
        return Err(LabError::Timeout {
            what: format!("the new leading replica {after} to answer `scold ctl status`"),
            secs: TAKEOVER_LIMIT.as_secs_f64(),
        });
    };
    progress.step(
        "takeover",
        &format!(
            "{after} leads {} after the kill (lease {} s), answers `scold ctl status` after {}",
            fmt_seconds(elected.unwrap_or_default()),
            roles::LEASE_SECS,
            fmt_seconds(serving)
        ),
    );
    // The failover by reset and the all-clear need the nodes linked to it.
    let proxies = lab.proxies().len();
    let mut nodes: Vec<String> = vec![fig8::ALT_GW.into(), "target-control".into()];
    nodes.extend(lab.proxies());
    let registered = format!(
        "coordinator={}:{}",
        fig8::address_of(&after).expect("a replica of the plan"),
        roles::COORDINATOR_PORT
    );
    let linked = |label: &str| {
        roles
            .log_of(label)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|t| {
                t.lines().any(|l| {
                    l.contains("registered with the coordinator") && l.contains(&registered)
                })
            })
    };
    let mut back = None;
    while killed.elapsed() < TAKEOVER_LIMIT {
        if nodes.iter().all(|n| linked(n)) {
            back = Some(killed.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(back) = back else {
        let missing: Vec<&String> = nodes.iter().filter(|n| !linked(n)).collect();
        return Err(LabError::Timeout {
            what: format!(
                "{missing:?} to register with the new leading replica {after} (their logs show \
                 no \"registered with the coordinator {registered}\")"
            ),
            secs: TAKEOVER_LIMIT.as_secs_f64(),
        });
    };
    progress.step(
        "nodes at the new leader",
        &format!(
            "gateway, {proxies} proxies and the target registered with {after} {} after the kill",
            fmt_seconds(back)
        ),
    );
    results.takeover = Some(Takeover {
        replicas: roles.coordinators().len(),
        etcd_members: fig8::ETCD_MEMBERS,
        lease_secs: roles::LEASE_SECS,
        before,
        after,
        elected_seconds: elected.unwrap_or_default(),
        serving_seconds: serving,
        nodes_back_seconds: back,
        secondary,
        failovers_after: 0,
        failovers_asked: 0,
        restore_after: false,
    });
    Ok(())
}

/// After the run: how many failovers and whether the restore completed under the new
/// leader (every one of them ran after the takeover).
pub fn finish(results: &mut Results, failovers_asked: u32) {
    use crate::report::Outcome;
    let ok = |m: Metric| {
        results
            .samples
            .iter()
            .filter(|s| s.metric == m && matches!(s.outcome, Outcome::Ok { .. }))
            .count()
    };
    let failovers = ok(Metric::Failover);
    let restore = ok(Metric::Restore) > 0;
    if let Some(t) = &mut results.takeover {
        t.failovers_after = failovers;
        t.failovers_asked = failovers_asked as usize;
        t.restore_after = restore;
    }
}

/// The divert's ALT records at TargetDNS's secondary (asked from ClientDNS's
/// namespace, as ClientDNS asks it), and what the hidden primary's log says it sent
/// the secondary: NOTIFY answered, incremental (IXFR) and full (AXFR) transfers. Fails
/// when the secondary has no ALT records or no incremental transfer reached it.
pub fn check_secondary(lab: &Fig8, roles: &Roles) -> Result<DnsSecondary, LabError> {
    let server: SocketAddr = (
        fig8::address_of(fig8::DNS_SECONDARY).expect("in the plan"),
        53,
    )
        .into();
    let deadline = Instant::now() + Duration::from_secs(roles::DNS_TTL as u64);
    let alt = loop {
        let a = lab.run_in(fig8::CLIENT_DNS, || {
            dnsq::query(
                server,
                &format!("{}.", roles::TARGET_FQDN),
                scold_dns::alt::DEFAULT_ALT_TYPE,
                Duration::from_millis(500),
            )
        })?;
        if let Ok(a) = a {
            if !a.alt.is_empty() {
                break a.alt;
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Protocol {
                peer: format!("TargetDNS's secondary {server}"),
                reason: format!(
                    "no ALT records for {} after the divert: the hidden primary's change did \
                     not reach it (see logs/targetdns.log and logs/targetdns2.log)",
                    roles::TARGET_FQDN
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = roles
        .log_of("targetdns")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut secondary = DnsSecondary::from_primary_log(&log, fig8::DNS_SECONDARY, alt);
    (
        secondary.clientdns_to_secondary,
        secondary.clientdns_to_primary,
    ) = roles.dns_upstream_queries()?;
    if secondary.clientdns_to_secondary == 0 || secondary.clientdns_to_primary > 0 {
        return Err(LabError::Protocol {
            peer: "ClientDNS".into(),
            reason: format!(
                "it sent {} packets to TargetDNS's secondary and {} to the hidden primary: \
                 its lookups should go to the secondary alone",
                secondary.clientdns_to_secondary, secondary.clientdns_to_primary
            ),
        });
    }
    if secondary.incremental_transfers == 0 || secondary.notifies_answered == 0 {
        return Err(LabError::Protocol {
            peer: format!("TargetDNS's secondary {server}"),
            reason: format!(
                "the hidden primary's log shows {} NOTIFY answered and {} incremental \
                 transfers to {}: the change did not go by NOTIFY and IXFR",
                secondary.notifies_answered,
                secondary.incremental_transfers,
                fig8::DNS_SECONDARY
            ),
        });
    }
    Ok(secondary)
}

#[cfg(test)]
mod tests {
    use super::DnsSecondary;

    #[test]
    fn the_primarys_log_shows_notify_and_incremental_transfers_to_the_secondary() {
        // As `scold dns` logs them (NO_COLOR), with another secondary's lines mixed in.
        let log = "\
2026-12-06T08:19:43.195383Z  INFO scold_dns::server: AXFR src=198.18.10.2:47044 secondary=targetdns2 zone=target.test. serial=1
2026-12-06T08:19:43.334678Z  INFO scold_dns::notify: NOTIFY answered secondary=targetdns2 to=198.18.10.2:53 zone=target.test. serial=1 attempt=2
2026-12-06T08:19:46.768369Z  INFO scold_dns::server: IXFR src=198.18.10.2:55462 secondary=targetdns2 zone=target.test. client_serial=1 serial=2 answer=\"incremental\"
2026-12-06T08:19:46.768369Z  INFO scold_dns::server: IXFR src=198.18.10.2:55462 secondary=targetdns2 zone=target.test. client_serial=0 serial=2 answer=\"whole zone\"
2026-12-06T08:19:46.900000Z  INFO scold_dns::server: IXFR src=198.18.99.2:1 secondary=targetdns22 zone=target.test. client_serial=1 serial=2 answer=\"incremental\"
2026-12-06T08:19:47.610260Z  INFO scold_dns::notify: NOTIFY answered secondary=other to=198.18.9.2:53 zone=target.test. serial=3 attempt=1
";
        let s = DnsSecondary::from_primary_log(log, "targetdns2", vec![]);
        assert_eq!(s.notifies_answered, 1);
        assert_eq!(s.incremental_transfers, 1);
        assert_eq!(s.full_transfers, 1);
        let none = DnsSecondary::from_primary_log("", "targetdns2", vec![]);
        assert_eq!(none.incremental_transfers, 0);
    }
}
