//! `[[target]]` changes taken by a coordinator reload (SIGHUP or `scold ctl reload
//! coordinator`), with the whole system linked in network namespaces (scheme 4.1).
//!
//! A broken file changes nothing and is named with its line; a normal target takes new
//! gateways and addresses; a target dropped from the file goes and comes back when its
//! entry does, and a divert of it then runs on the real nodes and carries a client's
//! traffic. While it is diverted, a new DNS server list applies but a new scheme is
//! refused and named, and dropping it from the file is refused: it stays diverted and
//! carries traffic, and once restored, a reload removes it. A run-time target the file
//! comes to list is the file's from then on, and does not outlive its removal from it.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `socat`, `getent` (libc-bin),
//! `sha256sum` and a built binary (`cargo build -p scold`, or SCOLD_BIN).

use std::time::Duration;

mod common;
use common::consortium::{client_asks_agent, consortium, start_linked, ConsortiumNet, Linked};
use scold_testkit::{poll_until, Net, Signal};

/// The names of the targets `scold ctl status` lists, with their phases.
fn targets(net: &Net) -> Vec<(String, String)> {
    net.status()["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["name"].as_str().unwrap_or_default().to_string(),
                        t["phase"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// SIGHUP to the coordinator, then waits until the targets are `want`.
fn hangup_until(net: &mut Net, want: &[(&str, &str)]) {
    net.signal("coordinator", Signal::Hup);
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        targets(net)
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_str()))
            .eq(want.iter().copied())
    });
    assert!(
        ok,
        "after SIGHUP the targets are {:?}, not {want:?}\n{}",
        targets(net),
        net.log("coordinator")
    );
}

/// The client's lookup of the target's name sets its route up; then a ping and a fetch
/// go through it.
fn client_reaches_the_target(net: &Net, fetch: &str) {
    net.wait_indirect_route();
    net.fetch(fetch);
}

#[test]
fn target_entries_change_by_reload_as_each_targets_phase_allows() {
    let mut net: Net = consortium(true, &[("getent", "libc-bin")]);
    client_asks_agent(&mut net);
    start_linked(&mut net, &Linked::SCHEME_41);
    let file = net.path("coordinator.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    let (head, rest) = original.split_at(original.find("[[target]]").expect("a target"));
    let cut = rest
        .find("# The consortium binds")
        .expect("the proxies' comment");
    let (web, proxies) = rest.split_at(cut);
    let write = |text: String| std::fs::write(&file, text).unwrap();

    // A broken file (with a change that would apply) changes nothing, and says where.
    let bad = web
        .replace("gateways = [\"gw1\"]", "gateways = [\"gw1\", \"gw2\"]")
        .replace("ttl = 1\n", "ttl = \"one\"\n");
    let bad_line =
        head.lines().count() + bad.lines().position(|l| l.starts_with("ttl")).unwrap() + 1;
    write(format!("{head}{bad}{proxies}"));
    let (_, err, ok) = net.ctl_as("operator-admin", "reload coordinator");
    assert!(
        !ok && err.contains("coordinator.toml") && err.contains(&format!("line {bad_line}")),
        "a broken file was not refused with its line {bad_line}: {err}"
    );
    net.signal("coordinator", Signal::Hup);
    net.wait_log("coordinator", "config reload refused", 10);
    let shown = net.ctl("target show web");
    assert!(
        shown.contains("gateways = [\"gw1\"]") && shown.contains("ttl = 1\n"),
        "the broken file changed the target:\n{shown}"
    );

    // A normal target takes its new gateways and addresses at once.
    let changed = web
        .replace("gateways = [\"gw1\"]", "gateways = [\"gw1\", \"gw2\"]")
        .replace(
            "addresses = [\"10.4.0.2\"]",
            "addresses = [\"10.4.0.2\", \"10.4.0.9\"]",
        );
    write(format!("{head}{changed}{proxies}"));
    let report = net.ctl("reload coordinator");
    assert!(
        report.contains("target.web.addresses") && report.contains("target.web.gateways"),
        "{report}"
    );
    assert!(!report.contains("refused:"), "{report}");
    let shown = net.ctl("target show web");
    assert!(
        shown.contains("\"gw2\"") && shown.contains("10.4.0.9") && shown.contains("normal"),
        "{shown}"
    );

    // Gone from the file in its normal phase: forgotten; back in it: driven again.
    write(format!("{head}{proxies}"));
    hangup_until(&mut net, &[]);
    let (_, err, ok) = net.ctl_as("operator-admin", "target show web");
    assert!(!ok && err.contains("no target web"), "{err}");
    write(original.clone());
    hangup_until(&mut net, &[("web", "normal")]);
    let shown = net.ctl("target show web");
    assert!(
        shown.contains("added at run time: false")
            && shown.contains("gateways = [\"gw1\"]")
            && !shown.contains("10.4.0.9"),
        "{shown}"
    );
    let events = net.ctl("events --subject web --limit 50");
    for what in ["target_config", "target_removed", "target_added"] {
        assert!(
            events.contains(what),
            "no {what} in the audit log:\n{events}"
        );
    }

    // The target the file brought back is diverted by the real nodes and carries traffic.
    net.wait_nodes_up();
    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 40);
    client_reaches_the_target(&net, "diverted.bin");

    // Diverted: a new list of DNS servers applies; a new scheme is refused and named.
    let rescheme = web.replace("scheme = \"4.1\"", "scheme = \"4.2\"").replace(
        "server = \"127.0.0.1:5353\"",
        "servers = [\"127.0.0.1:5353\", \"127.0.0.1:5354\"]",
    );
    write(format!("{head}{rescheme}{proxies}"));
    let report = net.ctl("reload coordinator");
    let refused: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("refused:"))
        .collect();
    assert!(
        report.contains("target.web.dns.server")
            && matches!(refused.as_slice(), [r] if r.contains("target.web.scheme: web is diverted") && r.contains("scold ctl restore web")),
        "{report}"
    );
    let shown = net.ctl("target show web");
    assert!(
        shown.contains("scheme = \"4.1\"") && shown.contains("127.0.0.1:5354"),
        "{shown}"
    );
    net.wait_phase("diverted", &["p1", "p2"], 5);
    net.wait_ping();

    // Diverted: dropping it from the file is refused; it stays diverted and carries traffic.
    write(format!("{head}{proxies}"));
    let report = net.ctl("reload coordinator");
    assert!(
        report.lines().any(|l| l.starts_with("refused:")
            && l.contains("target.web: web is diverted")
            && l.contains("restore it first")),
        "{report}"
    );
    net.wait_phase("diverted", &["p1", "p2"], 5);
    client_reaches_the_target(&net, "kept.bin");
    let events = net.ctl("events --subject web --limit 80");
    assert!(events.contains("target_config_refused"), "{events}");

    // Restored, the next reload removes it.
    net.ctl("restore web");
    net.wait_phase("normal", &[], 40);
    let report = net.ctl("reload coordinator");
    assert!(
        report.contains("target.web (removed)") && !report.contains("refused:"),
        "{report}"
    );
    assert!(targets(&net).is_empty(), "{:?}", targets(&net));

    // A run-time target that the file then lists is the file's: its store entry goes,
    // so once the file drops it, a restart does not bring it back.
    let mail =
        "[[target]]\nname = \"mail\"\nfqdn = \"mail.example.net.\"\nzone = \"example.net.\"\n\
         addresses = [\"10.4.0.3\"]\ngateways = [\"gw1\"]\nscheme = \"4.1\"\nttl = 1\n\
         [target.dns]\nserver = \"127.0.0.1:5353\"\n\
         key = \"hmac-sha256:coordinator:c2NvbGQtY29udHJvbC10ZXN0LXNlY3JldC0wMTIzNDU=\"\n";
    let added = net.write("mail.toml", mail);
    net.ctl(&format!("target add --file {}", added.display()));
    assert!(net
        .ctl("target show mail")
        .contains("added at run time: true"));
    write(format!(
        "{head}{}{proxies}",
        mail.replace("ttl = 1", "ttl = 2")
    ));
    let report = net.ctl("reload coordinator");
    assert!(report.contains("target.mail.ttl"), "{report}");
    let shown = net.ctl("target show mail");
    assert!(
        shown.contains("added at run time: false") && shown.contains("ttl = 2"),
        "{shown}"
    );
    write(format!("{head}{proxies}"));
    let report = net.ctl("reload coordinator");
    assert!(report.contains("target.mail (removed)"), "{report}");
    net.stop("coordinator");
    net.scold("k", "coordinator2", "coordinator", &file);
    net.wait_log("coordinator2", "coordinator listening", 20);
    assert!(
        targets(&net).is_empty(),
        "a target the file dropped came back from the store: {:?}",
        targets(&net)
    );
}
