//! The monitoring shipped in `packaging/`: Prometheus alert rules that `promtool` accepts
//! and whose unit tests pass, and a Grafana dashboard whose every series is one the
//! daemons register.

use scold_testkit::require_tool;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool(args: &[&str]) {
    let promtool = require_tool("promtool", "prometheus");
    let out = Command::new(promtool)
        .args(args)
        .current_dir(root().join("packaging/prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    promtool(&["check", "rules", "scold-rules.yml"]);
}

#[test]
fn alert_rules_unit_tests_pass() {
    promtool(&["test", "rules", "scold-rules.test.yml"]);
}

/// Every `scold_*` name in `text`, without the suffixes Prometheus adds to counters and
/// histograms: what a daemon passes to `register`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("scold_") {
        let tail = &rest[i + "scold_".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_total", "_bucket", "_count", "_sum"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        names.insert(name.to_string());
        rest = &tail[end..];
    }
    names
}

fn sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
}

/// A renamed metric leaves a dashboard panel or an alert silently empty: each name they
/// use must be registered somewhere in the daemons' code.
#[test]
fn dashboard_and_rules_use_registered_metrics() {
    let dashboard = std::fs::read_to_string(root().join("packaging/grafana/scold.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let exprs: Vec<&str> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 10, "dashboard queries: {exprs:?}");
    let rules =
        std::fs::read_to_string(root().join("packaging/prometheus/scold-rules.yml")).unwrap();
    let mut code = String::new();
    for krate in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            sources(&src, &mut code);
        }
    }
    let used: BTreeSet<String> = metric_names(&exprs.join("\n"))
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(used.contains("tunnel_rx_bytes"), "{used:?}");
    for name in &used {
        assert!(
            code.contains(&format!("\"{name}\"")),
            "scold_{name} is used by the dashboard or the alert rules but no daemon registers it"
        );
    }
}
