//! What the data-path daemons share: the `[tunnel]` config section, config loading with
//! errors that name the file, the key and the fix, the command channel type, shutdown.

pub mod control;
pub mod cookie;
pub mod daemon;
pub mod tunnel_metrics;
pub mod wire;

use anyhow::Context as _;
use scold_proto::dataplane::{Command, Encap, Reply};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// One command and where its reply goes. The control plane feeds these; the static
/// entries of a config file go through the same path at start-up.
pub type CommandRequest = (Command, oneshot::Sender<Reply>);
pub type CommandReceiver = mpsc::Receiver<CommandRequest>;

fn default_outer_mtu() -> u16 {
    1500
}

fn default_engines() -> usize {
    1
}

fn default_encap() -> Encap {
    Encap::Wireguard
}

/// `[tunnel]`: the node's end of its tunnels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// UDP socket for `udp` and `wireguard` tunnels.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Open the raw IP-protocol-4 socket for `ipip` tunnels.
    #[serde(default)]
    pub ipip: bool,
    /// Local address the ipip socket is bound to (default: all).
    #[serde(default)]
    pub ipip_bind: Option<Ipv4Addr>,
    /// WireGuard private key (base64); or `private_key_file`.
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// MTU of the outer path.
    #[serde(default = "default_outer_mtu")]
    pub outer_mtu: u16,
    /// The encapsulation whose overhead sets the TUN device's MTU.
    #[serde(default = "default_encap")]
    pub encap: Encap,
    /// TUN MTU; default: `outer_mtu` minus the overhead of `encap`.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Packet-engine threads: one UDP socket of a reuseport group and one TUN queue
    /// each, inner flows spread over them.
    #[serde(default = "default_engines")]
    pub engines: usize,
}

impl Default for TunnelSection {
    fn default() -> Self {
        TunnelSection {
            listen: None,
            ipip: false,
            ipip_bind: None,
            private_key: None,
            private_key_file: None,
            outer_mtu: default_outer_mtu(),
            encap: default_encap(),
            mtu: None,
            engines: default_engines(),
        }
    }
}

impl TunnelSection {
    pub fn inner_mtu(&self) -> u16 {
        self.mtu
            .unwrap_or_else(|| self.encap.inner_mtu(self.outer_mtu))
    }

    /// The private key from the config or its file.
    pub fn private_key(&self, file: &Path) -> anyhow::Result<Option<String>> {
        match (&self.private_key, &self.private_key_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "config file {}: tunnel.private_key and tunnel.private_key_file are both set; keep one",
                file.display()
            ),
            (Some(k), None) => Ok(Some(k.trim().to_string())),
            (None, Some(p)) => {
                let k = std::fs::read_to_string(p).with_context(|| {
                    format!(
                        "config file {}: cannot read tunnel.private_key_file {}",
                        file.display(),
                        p.display()
                    )
                })?;
                Ok(Some(k.trim().to_string()))
            }
            (None, None) => Ok(None),
        }
    }

    pub fn check(&self, file: &Path) -> anyhow::Result<()> {
        if !(576..=9000).contains(&self.outer_mtu) {
            anyhow::bail!(
                "config file {}: tunnel.outer_mtu = {} is outside 576..=9000",
                file.display(),
                self.outer_mtu
            );
        }
        if let Some(m) = self.mtu {
            if m < 576 || m > self.encap.inner_mtu(self.outer_mtu) {
                anyhow::bail!(
                    "config file {}: tunnel.mtu = {m} must be between 576 and {} (outer_mtu minus the {} overhead), or left out",
                    file.display(),
                    self.encap.inner_mtu(self.outer_mtu),
                    self.encap
                );
            }
        }
        if !(1..=scold_tunnel::engine::MAX_ENGINES).contains(&self.engines) {
            anyhow::bail!(
                "config file {}: tunnel.engines = {} is outside 1..={}; give about one per core the node can spare for packets",
                file.display(),
                self.engines,
                scold_tunnel::engine::MAX_ENGINES
            );
        }
        if let Some(k) = self.private_key(file)? {
            scold_tunnel::keys::decode_key(&k, "tunnel.private_key")
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", file.display()))?;
        }
        Ok(())
    }
}

/// Prints a fresh WireGuard key pair for a config file.
pub fn print_genkey() -> anyhow::Result<()> {
    let private = scold_tunnel::keys::generate_private()?;
    let public = scold_tunnel::keys::public_of(&private)?;
    println!("private_key = \"{private}\"\n# public key (give it to the peers): {public}");
    Ok(())
}

/// A daemon that carries out data-plane commands.
pub trait Node {
    fn apply(&mut self, cmd: Command) -> impl std::future::Future<Output = Reply> + Send;
}

/// Applies the static entries of a config file, failing with the entry's place.
pub async fn apply_static<N: Node>(
    file: &Path,
    entries: Vec<(String, Command)>,
    node: &mut N,
) -> anyhow::Result<()> {
    for (place, cmd) in entries {
        if let Err(e) = cmd.validate() {
            anyhow::bail!("config file {}: {place}: {e}", file.display());
        }
        match node.apply(cmd).await {
            Reply::Refused { code, message } => anyhow::bail!(
                "config file {}: {place}: refused ({code:?}): {message}",
                file.display()
            ),
            _ => tracing::debug!(entry = %place, "applied"),
        }
    }
    Ok(())
}

/// Carries out commands from the control plane until `shutdown`.
pub async fn command_loop<N: Node>(
    node: &mut N,
    commands: &mut CommandReceiver,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            c = commands.recv(), if open => match c {
                Some((cmd, reply)) => {
                    let kind = cmd.kind();
                    let r = node.apply(cmd).await;
                    log_reply(kind, &r);
                    let _ = reply.send(r);
                }
                // The control plane went away; keep forwarding until told to stop.
                None => open = false,
            },
        }
    }
}

/// Logs a command's outcome.
pub fn log_reply(kind: &str, reply: &Reply) {
    match reply {
        Reply::Refused { code, message } => {
            tracing::warn!(command = kind, ?code, %message, "command refused")
        }
        Reply::Done { changed } => tracing::info!(command = kind, changed, "command applied"),
        Reply::Stats(_) => {}
    }
}

/// A sysctl under /proc/sys set for the daemon's lifetime and put back on restore.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// Sets `key` (dotted, e.g. `net.ipv4.ip_forward`) to `value`; None if it already was.
    pub fn set(key: &str, value: &str) -> anyhow::Result<Option<Sysctl>> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read sysctl {key}"))?
            .trim()
            .to_string();
        if old == value {
            return Ok(None);
        }
        std::fs::write(&path, value)
            .with_context(|| format!("cannot set sysctl {key}={value} (are we root?)"))?;
        tracing::info!(%key, %value, previous = %old, "sysctl set");
        Ok(Some(Sysctl { path, old }))
    }

    pub fn restore(self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot restore sysctl");
        }
    }
}
