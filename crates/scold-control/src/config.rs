//! Reading a daemon's TOML file, with errors that name the file, the key and the fix.

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The `[tls]` table every control-plane daemon has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The consortium CA certificate.
    pub ca: PathBuf,
    /// This node's certificate, issued by `scold ca issue`.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The CA's revocation list; re-read while running.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

impl TlsConfig {
    /// Paths relative to the config file's folder are resolved against it, so a config
    /// and its certificates can move together.
    pub fn resolve(&self, base: &Path) -> scold_pki::TlsPaths {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        scold_pki::TlsPaths {
            ca_cert: abs(&self.ca),
            cert: abs(&self.cert),
            key: abs(&self.key),
            crl: self.crl.as_deref().map(abs),
        }
    }

    /// Loads the TLS material, naming the config file on error.
    pub fn load(&self, config_file: &Path) -> anyhow::Result<scold_pki::TlsIdentity> {
        let base = config_file.parent().unwrap_or(Path::new("."));
        scold_pki::TlsIdentity::load(&self.resolve(base)).with_context(|| {
            format!(
                "{}: [tls] cannot be loaded; check the paths, or issue a certificate with `scold ca issue`",
                config_file.display()
            )
        })
    }
}

/// Parses a TOML file into `T`. A syntax error or an unknown/missing key names the file,
/// the key and what to do; `example` is the subcommand that prints a valid file.
pub fn load<T: DeserializeOwned>(path: &Path, example: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read config file {}; create one with `{example} > {}`",
            path.display(),
            path.display()
        )
    })?;
    parse(&text, path, example)
}

pub fn parse<T: DeserializeOwned>(text: &str, path: &Path, example: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| {
        let place = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!(" (line {line})")
            })
            .unwrap_or_default();
        anyhow!(
            "{}{place}: {}; `{example}` prints a commented example",
            path.display(),
            e.message()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        listen: std::net::SocketAddr,
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let p = Path::new("/etc/scold/x.toml");
        let e = parse::<Sample>("listen = \"nope\"\n", p, "scold x --example-config")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/scold/x.toml"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        assert!(e.contains("--example-config"), "{e}");
        let e = parse::<Sample>("listen = \"127.0.0.1:1\"\nlisen = 1\n", p, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = parse::<Sample>("", p, "x").unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
    }
}
