//! The one TOML loader: a syntax error, an unknown key or a missing key names the file,
//! the line and the command that prints a valid example.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A config file that cannot be used: which file, where, what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}{}", file.display(), line.map(|l| format!(" (line {l})")).unwrap_or_default(), hint_text(hint))]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The line the problem is on, where the parser knows it.
    pub line: Option<usize>,
    /// Key and problem.
    pub message: String,
    /// What to do, e.g. the command that prints a commented example.
    pub hint: String,
}

fn hint_text(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    }
}

impl ConfigError {
    /// An error found after parsing (a value out of range, two keys that contradict).
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            message: message.into(),
            hint: String::new(),
        }
    }

    /// Adds what the operator can do about it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }
}

fn example_hint(example: &str) -> String {
    if example.is_empty() {
        String::new()
    } else {
        format!("`{example}` prints a commented example")
    }
}

/// Reads and parses `path`. `example` is the command that prints a valid file (for
/// example `scold proxy --example-config`); it goes into every error.
pub fn load<T: DeserializeOwned>(path: &Path, example: &str) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read the config file: {e}"),
        hint: if example.is_empty() {
            "pass an existing file".into()
        } else {
            format!("create one with `{example} > {}`", path.display())
        },
    })?;
    parse(&text, path, example)
}

/// Parses config text; `path` names the file in errors.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    example: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start.min(text.len()));
        // Lines before the span's start, plus its own (`lines()` would miss a span that
        // starts a line: an unknown key's span is the key).
        let line = start.map(|s| text[..s].matches('\n').count() + 1);
        // The parser's message names the key only for some errors; the line it is on
        // names it for the rest (e.g. a value of the wrong type).
        let quoted = line
            .and_then(|l| text.lines().nth(l - 1))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 120)
            .map(|t| format!("`{t}`: "))
            .unwrap_or_default();
        ConfigError {
            file: path.to_path_buf(),
            line,
            message: format!("{quoted}{}", e.message()),
            hint: example_hint(example),
        }
    })
}

/// A path from a config file: relative paths are taken from the config file's folder, so
/// a config and the files it names can move together.
pub fn resolve(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        listen: std::net::SocketAddr,
    }

    #[test]
    fn errors_name_file_line_key_and_fix() {
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
        assert!(e.contains("line 2"), "{e}");
        let e = parse::<Sample>("", p, "x").unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn missing_file_says_how_to_make_one() {
        let e = load::<Sample>(
            Path::new("/nonexistent/scold.toml"),
            "scold x --example-config",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/scold.toml"), "{e}");
        assert!(
            e.contains("scold x --example-config > /nonexistent/scold.toml"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let f = Path::new("/etc/scold/proxy.toml");
        assert_eq!(
            resolve(f, Path::new("ca.pem")),
            Path::new("/etc/scold/ca.pem")
        );
        assert_eq!(resolve(f, Path::new("/x/ca.pem")), Path::new("/x/ca.pem"));
        assert_eq!(resolve(Path::new("p.toml"), Path::new("k")), Path::new("k"));
    }
}
