//! A real etcd cluster on loopback for the tests of coordinator replicas: Debian's
//! `etcd` (package `etcd-server`), one process per member, each with its own data
//! folder, stopped by PID and removed when dropped.

use crate::{free_port, require_tool, wait_tcp_port, Proc};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// A running etcd cluster.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    proc: Option<Proc>,
}

impl EtcdCluster {
    /// Starts `n` members (1 or 3 make sense) and waits until each serves clients.
    pub fn start(n: usize) -> EtcdCluster {
        require_tool("etcd", "etcd-server");
        let dir = tempfile::tempdir().expect("a temporary folder for etcd");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: SocketAddr::from(([127, 0, 0, 1], free_port())),
                peer: SocketAddr::from(([127, 0, 0, 1], free_port())),
                proc: None,
            })
            .collect();
        let cluster: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let cluster = cluster.join(",");
        for m in &mut members {
            m.proc = Some(spawn(dir.path(), m, &cluster, "new"));
        }
        let c = EtcdCluster { dir, members };
        for m in &c.members {
            assert!(
                wait_tcp_port(m.client, Duration::from_secs(20)),
                "etcd member {} did not serve clients at {} within 20 s (log in {})",
                m.name,
                m.client,
                c.dir.path().display()
            );
        }
        c
    }

    /// The client addresses of every member.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }
}

fn spawn(dir: &std::path::Path, m: &Member, cluster: &str, state: &str) -> Proc {
    let data = dir.join(&m.name);
    let mut cmd = Command::new("etcd");
    cmd.arg("--name")
        .arg(&m.name)
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen-client-urls")
        .arg(format!("http://{}", m.client))
        .arg("--advertise-client-urls")
        .arg(format!("http://{}", m.client))
        .arg("--listen-peer-urls")
        .arg(format!("http://{}", m.peer))
        .arg("--initial-advertise-peer-urls")
        .arg(format!("http://{}", m.peer))
        .arg("--initial-cluster")
        .arg(cluster)
        .arg("--initial-cluster-state")
        .arg(state)
        // Small timings: the tests measure takeovers in seconds.
        .arg("--heartbeat-interval")
        .arg("50")
        .arg("--election-timeout")
        .arg("500")
        .arg("--log-level")
        .arg("warn");
    Proc::spawn(
        &format!("etcd {}", m.name),
        &mut cmd,
        &dir.join(format!("{}.log", m.name)),
    )
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            drop(m.proc.take());
        }
        let _ = &self.dir;
    }
}
