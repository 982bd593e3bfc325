//! Live config reload of a proxy, with real `scold` processes in network namespaces.
//!
//! A client downloads a file from the target through the proxy (one TCP connection,
//! paced so it lasts several seconds) while the proxy's filter thresholds are changed
//! three times: by SIGHUP, by `scold ctl reload proxy/p1` through the coordinator, and
//! once with a broken file, by both routes. The new thresholds show in the proxy's
//! `filter_limit` metrics, the ctl answer names what applied and what waits for a
//! restart, the broken file is refused with its file and line while the running values
//! stay, and the download arrives whole over its one connection. Another test checks
//! that only an operator may ask for a reload, and that it is in the audit log; a third
//! that a target takes new detector thresholds and names what needs a restart.
//!
//! Needs root, `ip` (iproute2), `socat`, `curl`, `python3`, `sha256sum` and a built
//! binary (`cargo build -p scold`, or SCOLD_BIN=/path/to/scold).

use scold_testkit::{poll_until, Net, Signal};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::certs::ca_issue;
use common::*;

const TARGET: &str = "10.3.0.2";
const CLIENT: &str = "10.1.0.2";
/// Bytes the client downloads, and the pace it reads them at (bytes/s): about 8 s.
const SIZE: u64 = 24_000_000;
const PACE: u64 = 3_000_000;

/// a 10.1.0.2 -- 10.1.0.1 p 10.2.0.1 -- 10.2.0.2 g 10.3.0.1 -- 10.3.0.2 t; the
/// coordinator runs in p on 127.0.0.1:7800.
fn lab() -> Net {
    let lab = Net::new(
        "rl",
        &["a", "p", "g", "t"],
        &[
            ("socat", "socat"),
            ("curl", "curl"),
            ("python3", "python3"),
            ("sha256sum", "coreutils"),
            ("ping", "iputils-ping"),
        ],
    );
    lab.link("a", "p", Some("10.1.0.2/24"), Some("10.1.0.1/24"));
    lab.link("p", "g", Some("10.2.0.1/24"), Some("10.2.0.2/24"));
    lab.link("g", "t", Some("10.3.0.1/24"), Some("10.3.0.2/24"));
    lab.route("t", "default via 10.3.0.1");
    lab
}

/// The proxy's config, with the filter's `udp_pps` and the tunnel's `outer_mtu` as
/// given, and `extra` appended to `[filter]`.
struct ProxyText {
    key: String,
    gw_pub: String,
    interface: String,
    certs: String,
}

impl ProxyText {
    fn render(&self, udp_pps: u32, outer_mtu: u16, extra: &str) -> String {
        let (key, gw_pub, interface, certs) =
            (&self.key, &self.gw_pub, &self.interface, &self.certs);
        format!(
            "[tunnel]\nencap = \"wireguard\"\nlisten = \"0.0.0.0:51820\"\nprivate_key = \"{key}\"\nouter_mtu = {outer_mtu}\n\
             [control]\ncoordinator = \"127.0.0.1:7800\"\naddress = \"10.1.0.1\"\nmetrics = \"127.0.0.1:9901\"\n\
             [control.tls]\nca = \"{certs}/ca.crt\"\ncert = \"{certs}/proxy-p1.crt\"\nkey = \"{certs}/proxy-p1.key\"\n\
             [filter]\ninterface = \"{interface}\"\nnft = false\ntraceback_secs = 1\n\
             pps = 20000.0\nbytes_per_s = 50000000.0\nudp_pps = {udp_pps}.0\n{extra}\
             [[peers]]\nname = \"gw\"\naddress = \"10.2.0.2\"\nport = 51820\nencap = \"wireguard\"\npublic_key = \"{gw_pub}\"\n\
             [[routes]]\ndestination = \"{TARGET}/32\"\nvia = {{ peer = \"gw\" }}\n\
             [[sessions]]\nclient = \"{CLIENT}\"\nencap = \"udp\"\ntargets = [\"{TARGET}/32\"]\n"
        )
    }
}

/// Certificates, the coordinator (in p), gateway, proxy p1 and the client, started;
/// waits until the client reaches the target. Returns the proxy's config file and the
/// writer of its text.
fn start(lab: &mut Net) -> (PathBuf, ProxyText) {
    ca_issue(
        lab,
        "ca",
        "certs",
        &[
            ("coordinator", "main"),
            ("operator", "admin"),
            ("proxy", "p1"),
            ("client", "site1"),
        ],
    );
    let certs = lab.p("certs");
    let coordinator = lab.write(
        "coordinator.toml",
        &format!(
            "[coordinator]\nlisten = \"127.0.0.1:7800\"\nstate = \"{}\"\nheartbeat_ms = 200\n\
             [tls]\nca = \"{certs}/ca.crt\"\ncert = \"{certs}/coordinator-main.crt\"\nkey = \"{certs}/coordinator-main.key\"\n\
             [[proxy]]\nname = \"p1\"\naddress = \"10.1.0.1\"\ncapacity_mbps = 1000\norganisation = \"org-p1\"\n",
            lab.p("coordinator.redb")
        ),
    );
    let (proxy_key, proxy_pub) = keypair();
    let (gw_key, gw_pub) = keypair();
    let gw = wireguard_gateway(lab, &gw_key, &proxy_pub);
    let text = ProxyText {
        key: proxy_key,
        gw_pub,
        interface: lab.dev("pa"),
        certs: certs.clone(),
    };
    let proxy = lab.write("proxy.toml", &text.render(10_000, 1500, ""));
    let client = lab.write(
        "client.toml",
        &format!(
            "source = \"{CLIENT}\"\ntun_name = \"sa{}\"\n\
             [tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:0\"\n\
             [[peers]]\nname = \"proxy\"\naddress = \"10.1.0.1\"\nport = 51820\nencap = \"udp\"\n\
             [[routes]]\ndestination = \"{TARGET}/32\"\nvia = {{ peer = \"proxy\" }}\n",
            lab.suffix()
        ),
    );
    lab.scold("p", "coordinator", "coordinator", &coordinator);
    lab.wait_log("coordinator", "coordinator listening", 20);
    lab.scold("g", "gateway", "gateway", &gw);
    lab.scold("p", "proxy", "proxy", &proxy);
    lab.scold("a", "client", "client", &client);
    lab.wait_log("proxy", "proxy running", 20);
    let end = Instant::now() + Duration::from_secs(20);
    while !lab
        .exec("a", &format!("ping -n -q -c 1 -W 1 {TARGET}"))
        .status
        .success()
    {
        assert!(
            Instant::now() < end,
            "no ping through the proxy in 20 s\n{}",
            lab.logs()
        );
    }
    // The proxy is linked: its registration is in the coordinator's audit log.
    let linked = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        ctl(lab, "operator-admin", "--json proxies")
            .0
            .contains("\"up\"")
    });
    assert!(
        linked,
        "p1 never came up at the coordinator\n{}",
        lab.logs()
    );
    (proxy, text)
}

/// `scold ctl ARGS` in p with certificate `cert` (e.g. `operator-admin`): (stdout,
/// stderr, success).
fn ctl(lab: &Net, cert: &str, args: &str) -> (String, String, bool) {
    let certs = lab.p("certs");
    let o = lab.scold_cli(
        "p",
        &format!(
            "ctl --coordinator 127.0.0.1:7800 --ca {certs}/ca.crt --cert {certs}/{cert}.crt --key {certs}/{cert}.key {args}"
        ),
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.success(),
    )
}

/// One `scold_filter_limit` gauge of the proxy, e.g. `udp_pps`.
fn limit(lab: &Net, name: &str) -> Option<f64> {
    let text = String::from_utf8_lossy(
        &lab.exec("p", "curl -s -m 5 http://127.0.0.1:9901/metrics")
            .stdout,
    )
    .into_owned();
    let sample = format!("scold_filter_limit{{limit=\"{name}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_limit(lab: &Net, name: &str, want: f64) {
    let mut seen = None;
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        seen = limit(lab, name);
        seen == Some(want)
    });
    assert!(
        ok,
        "filter_limit {name} is {seen:?}, not {want}\n{}",
        lab.log("proxy")
    );
}

#[test]
fn thresholds_change_live_while_a_download_runs_and_a_broken_file_changes_nothing() {
    let mut lab = lab();
    let (proxy_file, text) = start(&mut lab);
    wait_limit(&lab, "udp_pps", 10_000.0);

    // The target serves one connection only (no fork): a reconnect would find nobody.
    let src = lab.path("src.bin");
    let dst = lab.path("dst.bin");
    scold_testkit::must(&format!("head -c {SIZE} /dev/urandom > {}", src.display()));
    lab.spawn(
        "t",
        "source",
        &[
            "timeout",
            "90",
            "socat",
            "-u",
            &format!("FILE:{}", src.display()),
            "TCP4-LISTEN:5001,reuseaddr",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let reader = lab.write("reader.py", PACED_READER);
    lab.spawn(
        "a",
        "download",
        &[
            "timeout",
            "90",
            "python3",
            &reader.display().to_string(),
            &dst.display().to_string(),
            &PACE.to_string(),
            "10.3.0.2",
            "5001",
            "30",
        ],
    );
    let size = || std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
    let going = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        size() > 2_000_000
    });
    assert!(going, "the download did not get going\n{}", lab.logs());

    // 1. SIGHUP: new thresholds in force, the download goes on.
    std::fs::write(&proxy_file, text.render(5_000, 1500, "block_secs = 7\n")).unwrap();
    lab.signal("proxy", Signal::Hup);
    wait_limit(&lab, "udp_pps", 5_000.0);
    wait_limit(&lab, "block_secs", 7.0);
    lab.wait_log("proxy", "config reloaded", 10);
    assert!(lab.running("proxy"), "SIGHUP ended the proxy");

    // 2. `scold ctl reload`, with a key that needs a restart among the changes.
    std::fs::write(&proxy_file, text.render(4_000, 1400, "block_secs = 7\n")).unwrap();
    let (out, err, ok) = ctl(&lab, "operator-admin", "--json reload proxy/p1");
    assert!(ok, "ctl reload failed: {err}\n{}", lab.logs());
    let report: serde_json::Value = serde_json::from_str(&out).expect("reload JSON");
    let list = |k: &str| -> Vec<String> {
        report[k]
            .as_array()
            .unwrap_or_else(|| panic!("no {k} in {report}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(list("applied"), ["filter.udp_pps"], "{report}");
    assert_eq!(list("needs_restart"), ["tunnel.outer_mtu"], "{report}");
    assert_eq!(report["node"], "proxy/p1", "{report}");
    wait_limit(&lab, "udp_pps", 4_000.0);

    // 3. A broken file, by both routes: refused with file and line, nothing changes.
    let broken = text.render(3_000, 1400, "block_secs = 7\nudp_ppz = 1.0\n");
    let line = broken
        .lines()
        .position(|l| l.starts_with("udp_ppz"))
        .unwrap()
        + 1;
    std::fs::write(&proxy_file, &broken).unwrap();
    let (_, err, ok) = ctl(&lab, "operator-admin", "reload p1");
    assert!(!ok, "a broken config was accepted");
    let place = format!("{} (line {line})", proxy_file.display());
    assert!(
        err.contains(&place) && err.contains("udp_ppz") && err.contains("kept its running config"),
        "the refusal does not say where ({place}): {err}"
    );
    lab.signal("proxy", Signal::Hup);
    lab.wait_log("proxy", "config reload refused", 10);
    assert!(
        lab.log("proxy").contains(&place),
        "the proxy's log does not say where the file is broken ({place})\n{}",
        lab.log("proxy")
    );
    assert_eq!(
        limit(&lab, "udp_pps"),
        Some(4_000.0),
        "a broken file changed a limit"
    );
    assert!(lab.running("proxy"), "a broken file ended the proxy");
    assert!(
        lab.running("download"),
        "the download ended before the reloads were done: the test proved nothing ({} bytes)",
        size()
    );

    // The download completes over its one connection, whole.
    let status = lab.wait_exit("download", 60);
    assert!(
        status.is_some_and(|s| s.success()),
        "the download failed: {status:?}\n{}\n{}",
        lab.log("download"),
        lab.logs()
    );
    assert_eq!(
        lab.log("download").trim(),
        SIZE.to_string(),
        "the download got a different number of bytes"
    );
    assert_eq!(sha256(&src), sha256(&dst), "the download arrived damaged");
    // The proxy's session and tunnel were never set up again.
    let log = lab.log("proxy");
    assert_eq!(
        log.matches("proxy running").count(),
        1,
        "the proxy started over\n{log}"
    );

    // Each reload through the coordinator is in the audit log, with who asked.
    let (events, err, ok) = ctl(&lab, "operator-admin", "events --kind reload");
    assert!(ok, "ctl events: {err}");
    assert!(
        events.contains("proxy/p1") && events.contains("operator/admin") && events.contains("line"),
        "the reloads are not in the audit log:\n{events}"
    );
}

#[test]
fn only_an_operator_may_ask_a_node_to_reload() {
    let mut lab = lab();
    start(&mut lab);
    // A client's (and a proxy's) certificate is refused by role.
    for cert in ["client-site1", "proxy-p1"] {
        let (_, err, ok) = ctl(&lab, cert, "reload proxy/p1");
        assert!(!ok, "{cert} asked for a reload and got it");
        assert!(
            err.contains("refused") && err.contains("Role"),
            "{cert}: not a role refusal: {err}"
        );
    }
    // An unknown node is named as such, with who is connected.
    let (_, err, ok) = ctl(&lab, "operator-admin", "reload proxy/p9");
    assert!(!ok);
    assert!(err.contains("proxy/p1"), "{err}");
    assert!(!lab.log("proxy").contains("config reloaded"));
    // The operator may, and an unchanged file applies nothing.
    let (out, err, ok) = ctl(&lab, "operator-admin", "reload proxy/p1");
    assert!(ok, "{err}");
    assert!(
        out.contains("applied:       -") && out.contains("needs restart: -"),
        "{out}"
    );

    // The coordinator itself: a new [[proxy]] entry applies at once, a changed
    // heartbeat waits for a restart, and a broken file is refused with its line.
    let file = lab.path("coordinator.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let more = format!(
        "{}\n[[proxy]]\nname = \"p2\"\naddress = \"10.1.0.9\"\norganisation = \"org-p2\"\n",
        text.replace("heartbeat_ms = 200", "heartbeat_ms = 300")
    );
    std::fs::write(&file, &more).unwrap();
    let (out, err, ok) = ctl(&lab, "operator-admin", "--json reload coordinator");
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["applied"], serde_json::json!(["proxy"]), "{report}");
    assert_eq!(
        report["needs_restart"],
        serde_json::json!(["coordinator.heartbeat_ms"]),
        "{report}"
    );
    let (proxies, _, _) = ctl(&lab, "operator-admin", "proxies");
    assert!(
        proxies.contains("p2") && proxies.contains("10.1.0.9"),
        "{proxies}"
    );
    std::fs::write(&file, format!("{more}[[proxy]]\nnmae = \"p3\"\n")).unwrap();
    let line = more.lines().count() + 2;
    let (_, err, ok) = ctl(&lab, "operator-admin", "reload coordinator");
    assert!(!ok, "a broken coordinator config was taken");
    assert!(
        err.contains(&format!("{} (line {line})", file.display())),
        "the refusal does not name line {line}: {err}"
    );
    assert!(lab.running("coordinator"));
}

#[test]
fn a_target_takes_new_detector_thresholds_and_names_what_needs_a_restart() {
    let mut lab = Net::new("rt", &["t", "r"], &[]);
    lab.link("t", "r", Some("10.4.0.2/24"), Some("10.4.0.1/24"));
    let dev = lab.dev("tr");
    let text = |factor: &str, interval: u32| {
        format!(
            "[detect]\ninterface = \"{dev}\"\ninterval_ms = {interval}\nalarm_factor = {factor}\nhold_down_ms = 5000\n"
        )
    };
    let file = lab.write("target.toml", &text("4.0", 100));
    lab.scold("t", "target", "target", &file);
    lab.wait_log("target", "watching the main link for attacks", 20);
    std::fs::write(&file, text("8.0", 200)).unwrap();
    lab.signal("target", Signal::Hup);
    lab.wait_log("target", "config reloaded", 10);
    let log = lab.log("target");
    let line = log
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_default();
    assert!(
        line.contains("applied=[\"detect.alarm_factor\"]")
            && line.contains("needs_restart=[\"detect.interval_ms\"]"),
        "{line}"
    );
    assert!(
        log.contains("attack detection: new thresholds in force"),
        "{log}"
    );
    assert!(lab.running("target"), "SIGHUP ended the target");
}
