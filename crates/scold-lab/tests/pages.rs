//! The lab's two pages as a person sees them, in headless Chromium (Debian `chromium`),
//! on one real `scold lab` run: the coordinator's status page, open in a browser inside
//! the coordinator's namespace from before the divert, shows the target diverted within
//! a second of the coordinator's audit event; and the run's `report.html` renders with
//! its tables and its timeline chart, attack, divert, failover and restore marked.

mod common;

use common::*;
use scold_testkit::browser::{self, Browser};
use scold_testkit::{require_root, require_tool, scold_bin, wait_for, Netns, Proc};
use std::process::Command;
use std::time::{Duration, Instant};

/// The status page in the lab (settings::STATUS_PAGE_PORT, loopback of the
/// coordinator's namespace).
const PAGE: &str = "http://127.0.0.1:7880/";

/// The coordinator's own view, from inside its namespace.
fn status(ns: &str) -> Option<serde_json::Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "3"])
        .arg(format!("{PAGE}api/status"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// What the page shows of the lab's target: its phase and when the page first showed
/// it (the browser's clock, Unix ms).
fn shown(b: &mut Browser) -> Option<(String, u64)> {
    let v = b.eval(
        "(() => { const t = document.getElementById('target-target'); \
         return t ? { phase: t.dataset.phase, seen: Number(t.dataset.phaseSeenMs) } : null })()",
    );
    Some((v["phase"].as_str()?.to_string(), v["seen"].as_u64()?))
}

#[test]
fn the_status_page_shows_the_divert_live_and_the_report_renders() {
    require_root();
    browser::require_chromium();
    require_tool("curl", "curl");
    let out = tempfile::tempdir().unwrap();
    let routes_before = host_lab_routes();
    let mut lab = Proc::spawn(
        "scold lab",
        Command::new(scold_bin())
            .args(SHORT_RUN)
            .args(["--failover-reps", "1", "--quiet", "--out"])
            .arg(out.path()),
        &out.path().join("lab.log"),
    );
    let pid = lab.pid();
    let ns = format!("scoldlab-{pid}-0-coordinator");

    // The page, open before the operator's alarm.
    assert!(
        wait_for(Duration::from_secs(90), || status(&ns).is_some()),
        "the lab's status page never answered in {ns}:\n{}",
        lab.log_tail()
    );
    let mut page = Browser::open(&ns, PAGE, &out.path().join("chromium.log"));
    let mut first = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            first = shown(&mut page);
            first.is_some()
        }),
        "the page never showed the target"
    );
    let (phase, _) = first.unwrap();
    assert_eq!(
        phase, "normal",
        "the page opened after the divert had begun: the lab was faster than the browser"
    );

    // The divert, as the page shows it.
    let mut seen = None;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        if let Some((p, at)) = shown(&mut page) {
            if p == "diverted" {
                seen = Some(at);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let seen =
        seen.unwrap_or_else(|| panic!("the page never showed \"diverted\":\n{}", lab.log_tail()));
    // ... and as the coordinator recorded it.
    let view = status(&ns).expect("the coordinator's view");
    // The divert the page showed: the last entry into "diverted" before it did (a poll
    // that missed a short first divert catches the next one).
    let divert_ms = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e["subject"] == "target" && e["phase"] == "diverted")
        .filter_map(|e| e["at_ms"].as_u64())
        .filter(|at| *at <= seen + 50)
        .max()
        .expect("a phase event into \"diverted\" in the audit log");
    let lag = seen as i64 - divert_ms as i64;
    eprintln!("divert: audit log {divert_ms}, page {seen}: {lag} ms");
    assert!(
        (-50..=1000).contains(&lag),
        "the page showed the divert {lag} ms after the coordinator's audit event"
    );

    // The rest of what the operator reads there: the ALT set, the divert on the
    // timeline, and the proxies with the load their heartbeats report.
    let alt = page.eval("document.querySelector('#target-target .alt').textContent");
    assert!(
        alt.as_str().is_some_and(|a| a.contains("proxy")),
        "ALT set shown: {alt}"
    );
    let marks = page.eval("document.querySelectorAll('#target-target .mark-divert').length");
    assert!(marks.as_u64() >= Some(1), "no divert mark on the timeline");
    let mut clients = serde_json::Value::Null;
    let loaded = wait_for(Duration::from_secs(15), || {
        clients = page.eval(
            "Array.from(document.querySelectorAll('#proxies tbody tr')).map(r => \
             [r.dataset.health, r.querySelector('.clients') && r.querySelector('.clients').textContent])",
        );
        clients.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r[0] == "up" && r[1].as_str().and_then(|c| c.parse::<u64>().ok()) >= Some(1)
            })
        })
    });
    assert!(loaded, "no proxy showed admitted clients: {clients}");
    let status_png = out.path().join("status.png");
    let size = page.screenshot(&status_png);
    assert!(
        size > 20_000,
        "the screenshot of the status page is {size} bytes"
    );
    drop(page);

    // The run goes on to its end.
    assert!(
        wait_for(Duration::from_secs(240), || !lab.alive()),
        "the lab did not finish:\n{}",
        lab.log_tail()
    );
    let st = lab.child().wait().unwrap();
    assert!(st.success(), "scold lab failed:\n{}", lab.log_text());
    assert!(
        namespaces_of_pid(pid).is_empty(),
        "{:?}",
        namespaces_of_pid(pid)
    );
    assert_eq!(host_lab_routes(), routes_before);

    // report.html, rendered.
    let html = out.path().join("report.html");
    assert!(html.is_file(), "report.html not written");
    let shot = Netns::new("report");
    let url = format!("file://{}", html.display());
    let dom = browser::dump_dom(shot.name(), &url);
    for t in [
        "Table 1",
        "Table 2",
        "Table 3",
        "Table 4",
        "Further timings",
    ] {
        assert!(
            dom.contains(&format!("<caption>{t}")),
            "{t} missing from the page"
        );
    }
    assert!(dom.contains("<th scope=\"row\">ping RTT</th>"));
    assert!(
        dom.contains("class=\"paper\""),
        "the paper's figures are set apart"
    );
    assert!(dom.contains("<svg class=\"timeline\""), "no timeline chart");
    for kind in [
        "attack",
        "alarm",
        "divert",
        "failover",
        "attack_end",
        "restore",
    ] {
        assert!(
            dom.contains(&format!("class=\"mark mark-{kind}\"")),
            "no {kind} mark on the timeline"
        );
    }
    // The clients received something, drawn above the axis.
    let polygon = dom
        .split("<polygon class=\"throughput\" points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .expect("the throughput line");
    let ys: Vec<f64> = polygon
        .split_whitespace()
        .filter_map(|p| p.split_once(',')?.1.parse().ok())
        .collect();
    let base = ys.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        ys.iter().any(|y| *y < base - 20.0),
        "the throughput line never leaves the axis"
    );
    let png = out.path().join("report.png");
    browser::screenshot(shot.name(), &url, &png, 1200, 2000);
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "the screenshot of report.html is {size} bytes"
    );
    if let Ok(keep) = std::env::var("SCOLD_KEEP_PAGES") {
        let _ = std::fs::copy(&png, std::path::Path::new(&keep).join("report.png"));
        let _ = std::fs::copy(&html, std::path::Path::new(&keep).join("report.html"));
        let _ = std::fs::copy(&status_png, std::path::Path::new(&keep).join("status.png"));
        let _ = std::fs::copy(
            out.path().join("results.json"),
            std::path::Path::new(&keep).join("results.json"),
        );
    }
}
