//! `scold ca`: create the consortium CA, issue node certificates, revoke them, show what
//! was issued.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use scold_proto::identity::{Identity, Role};

use crate::ca::{self, Ca, CaInit, RevokeTarget, Validity};

/// Manage the consortium certificate authority: one CA signs the certificate of every
/// SCOLD daemon; a certificate names the node's role and name (SAN URI
/// scold://<role>/<name>). Copy ca.crt and crl.pem to every node; re-copy crl.pem after
/// each revocation (daemons re-read it without restarting).
#[derive(Args, Debug, Clone)]
pub struct CaArgs {
    /// CA directory (holds ca.key, ca.crt, index.json, crl.pem).
    #[arg(
        long,
        global = true,
        env = "SCOLD_CA_DIR",
        default_value = "./scold-ca"
    )]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CaCommand {
    /// Create the CA key, the self-signed CA certificate and an empty CRL.
    Init(InitArgs),
    /// Issue a node certificate (TLS server and client) naming ROLE and NAME.
    Issue(IssueArgs),
    /// Revoke certificates and rewrite the CRL.
    Revoke(RevokeArgs),
    /// Print the CA and the table of issued certificates with their status.
    Show(ShowArgs),
    /// Re-sign the CRL with a new next-update date (run before the current one passes).
    Crl(CrlArgs),
}

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Organisation name written in the CA's subject (the consortium's name).
    #[arg(long, default_value = "SCOLD consortium")]
    pub org: String,
    /// Lifetime of the CA certificate in days.
    #[arg(long, default_value_t = ca::DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Replace an existing CA in DIR. Every certificate the old CA issued stops working.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone)]
pub struct IssueArgs {
    /// Role the node plays: coordinator, proxy, gateway, target, client, dns, resolver or
    /// operator.
    #[arg(long)]
    pub role: Role,
    /// Node name: 1-63 characters of a-z, 0-9, '-', '_' and '.'.
    #[arg(long)]
    pub name: String,
    /// IP address to add as a SAN (repeatable). For a proxy it binds the addresses the
    /// coordinator may list it under in ALT (unless the coordinator's [[proxy]] table
    /// names its address); client agents also check that a proxy they connect to is
    /// named by its certificate when it names any.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<IpAddr>,
    /// DNS name to add as a SAN (repeatable), as for --ip.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Lifetime of the certificate in days.
    #[arg(long, default_value_t = ca::DEFAULT_CERT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Directory to write <role>-<name>.crt, <role>-<name>.key (mode 0600) and ca.crt
    /// into [default: DIR/issued].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["serial", "role"]))]
pub struct RevokeArgs {
    /// Serial number in hex as `scold ca show` prints it (':' separators allowed).
    #[arg(long, conflicts_with_all = ["role", "name"])]
    pub serial: Option<String>,
    /// Revoke every valid certificate of this role and --name.
    #[arg(long, requires = "name")]
    pub role: Option<Role>,
    /// Node name, with --role.
    #[arg(long, requires = "role")]
    pub name: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// Print JSON (CA details and every certificate) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CrlArgs {
    /// Days until the CRL's next-update date.
    #[arg(long, default_value_t = ca::DEFAULT_CRL_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

pub async fn run(args: CaArgs) -> anyhow::Result<()> {
    let out = execute(&args)?;
    print!("{out}");
    Ok(())
}

/// Runs one `scold ca` command and returns what it prints.
pub fn execute(args: &CaArgs) -> anyhow::Result<String> {
    let dir = &args.dir;
    match &args.command {
        CaCommand::Init(a) => init(dir, a),
        CaCommand::Issue(a) => issue(dir, a),
        CaCommand::Revoke(a) => revoke(dir, a),
        CaCommand::Show(a) => show(dir, a),
        CaCommand::Crl(a) => {
            let mut ca = Ca::open(dir)?;
            let path = ca
                .write_crl(a.days)
                .with_context(|| format!("re-signing the CRL of {}", dir.display()))?;
            Ok(format!(
                "wrote {} (next update in {} days); copy it to every node\n",
                path.display(),
                a.days
            ))
        }
    }
}

fn init(dir: &Path, a: &InitArgs) -> anyhow::Result<String> {
    let ca = Ca::init(
        dir,
        &CaInit {
            org: a.org.clone(),
            days: a.days,
            force: a.force,
        },
    )?;
    let info = ca.info()?;
    Ok(format!(
        "created CA {}\n  key  {}\n  cert {}\n  crl  {}\nnext: scold ca --dir {} issue --role ROLE --name NAME\n",
        info.subject,
        dir.join(ca::CA_KEY).display(),
        ca.cert_path().display(),
        ca.crl_path().display(),
        dir.display()
    ))
}

fn issue(dir: &Path, a: &IssueArgs) -> anyhow::Result<String> {
    let id = Identity::new(a.role, a.name.clone())?;
    let mut ca = Ca::open(dir)?;
    let out = a.out.clone().unwrap_or_else(|| dir.join("issued"));
    let p = ca
        .issue(&id, &a.ips, &a.dns, Validity::days(a.days), &out)
        .with_context(|| format!("issuing a certificate for {id}"))?;
    Ok(format!(
        "issued {} serial {}\n  cert {}\n  key  {}\n  ca   {}\n  crl  {}\n",
        id.to_uri(),
        p.serial,
        p.cert.display(),
        p.key.display(),
        p.ca_cert.display(),
        p.crl.display()
    ))
}

fn revoke(dir: &Path, a: &RevokeArgs) -> anyhow::Result<String> {
    let target = match (&a.serial, a.role, &a.name) {
        (Some(s), _, _) => RevokeTarget::Serial(s.clone()),
        (None, Some(role), Some(name)) => {
            RevokeTarget::Identity(Identity::new(role, name.clone())?)
        }
        _ => anyhow::bail!("say what to revoke: --serial HEX, or --role ROLE --name NAME"),
    };
    let mut ca = Ca::open(dir)?;
    let revoked = ca.revoke(&target)?;
    let mut out = String::new();
    if revoked.is_empty() {
        out.push_str("already revoked; CRL rewritten\n");
    }
    for e in &revoked {
        out.push_str(&format!(
            "revoked {} serial {}\n",
            e.identity.to_uri(),
            e.serial
        ));
    }
    out.push_str(&format!(
        "wrote {}; copy it to every node (daemons re-read it)\n",
        ca.crl_path().display()
    ));
    Ok(out)
}

fn show(dir: &Path, a: &ShowArgs) -> anyhow::Result<String> {
    let ca = Ca::open(dir)?;
    let info = ca.info()?;
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap_or(t)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    if a.json {
        let certs: Vec<serde_json::Value> = ca
            .entries()
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["status"] = e.status(now).as_str().into();
                v
            })
            .collect();
        let v = serde_json::json!({ "ca": info, "certificates": certs });
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut out = format!(
        "CA       {}\nsubject  {}\nvalid    {} .. {}\nCRL      {} (number {})\n\n",
        dir.display(),
        info.subject,
        fmt(info.not_before),
        fmt(info.not_after),
        ca.crl_path().display(),
        info.crl_number
    );
    out.push_str(&format!(
        "{:<32}  {:<36}  {:<20}  {}\n",
        "SERIAL", "IDENTITY", "NOT AFTER", "STATUS"
    ));
    for e in ca.entries() {
        out.push_str(&format!(
            "{:<32}  {:<36}  {:<20}  {}\n",
            e.serial,
            e.identity.to_uri(),
            fmt(e.not_after),
            e.status(now).as_str()
        ));
    }
    if ca.entries().is_empty() {
        out.push_str("(no certificates issued yet)\n");
    }
    Ok(out)
}
