//! The proxy pool changed while the system runs (`scold ctl proxy add|approve|drain|
//! remove`), with the whole system linked in network namespaces (scheme 4.1).
//!
//! A proxy added at run time waits for approval, and its pool state survives a restart
//! of the coordinator; every change is in the audit log with the operator who made it;
//! nobody but an operator may make one. Draining the proxy a client agent uses moves the
//! agent to the other proxy of the ALT set (the paper's 4.4 path, without an attack)
//! before the proxy can be removed; a proxy of the coordinator's config file is removed
//! by deleting its entry and reloading the coordinator.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `socat`, `getent` (libc-bin),
//! `sha256sum` and a built binary (`cargo build -p scold`, or SCOLD_BIN).

use std::time::Duration;

mod common;
use common::consortium::{
    chosen_proxy, client_asks_agent, consortium, start_linked, ConsortiumNet, Linked,
};
use scold_testkit::{poll_until, Net};

/// The pool state of `name` as `scold ctl --json proxies` reports it; None if unknown.
fn pool_of(net: &Net, name: &str) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_str(&net.ctl("--json proxies")).expect("proxies JSON");
    v["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["pool"].as_str().unwrap_or_default().to_string())
}

#[test]
fn the_pool_changes_at_run_time_and_a_drain_moves_clients_before_removal() {
    let mut net: Net = consortium(true, &[("getent", "libc-bin")]);
    client_asks_agent(&mut net);
    start_linked(&mut net, &Linked::SCHEME_41);

    // Only an operator changes the pool and the targets.
    let mail = net.write(
        "mail.toml",
        "[[target]]\nname = \"mail\"\nfqdn = \"mail.example.net.\"\nzone = \"example.net.\"\n\
         addresses = [\"10.4.0.3\"]\ngateways = [\"gw1\"]\nscheme = \"4.1\"\nttl = 1\n\
         [target.dns]\nserver = \"127.0.0.1:5353\"\n\
         key = \"hmac-sha256:coordinator:c2NvbGQtY29udHJvbC10ZXN0LXNlY3JldC0wMTIzNDU=\"\n",
    );
    for cert in ["client-site1", "proxy-p1", "target-web"] {
        for args in [
            "proxy drain p1".to_string(),
            format!("target add --file {}", mail.display()),
            "target remove web".to_string(),
        ] {
            let (_, err, ok) = net.ctl_as(cert, &args);
            assert!(!ok, "{cert} was allowed {args}");
            assert!(
                err.contains("refused") && err.contains("Role"),
                "{cert} {args}: {err}"
            );
        }
    }

    // A target added at run time, checked like the file's; a broken file is named.
    let broken = net.write(
        "broken.toml",
        "name = \"x\"\nfqdn = \"x.example.net.\"\nzoen = 1\n",
    );
    let (_, err, ok) = net.ctl_as(
        "operator-admin",
        &format!("target add --file {}", broken.display()),
    );
    assert!(
        !ok && err.contains(&format!("{} (line 3)", broken.display())),
        "{err}"
    );
    net.ctl(&format!("target add --file {}", mail.display()));
    let (_, err, ok) = net.ctl_as(
        "operator-admin",
        &format!("target add --file {}", mail.display()),
    );
    assert!(!ok && err.contains("exists already"), "{err}");
    let (_, err, ok) = net.ctl_as("operator-admin", "target remove web");
    assert!(!ok && err.contains("config file"), "{err}");
    assert_eq!(pool_of(&net, "p1").as_deref(), Some("member"));

    // Added at run time: pending, then approved; kept across a coordinator restart.
    net.ctl("proxy add p3 --address 10.5.0.77 --organisation org-p3 --capacity-mbps 500");
    assert_eq!(pool_of(&net, "p3").as_deref(), Some("pending"));
    let (_, err, ok) = net.ctl_as("operator-admin", "proxy add p3 --address 10.5.0.78");
    assert!(
        !ok && err.contains("already"),
        "a second add with another address: {err}"
    );
    let (_, err, ok) = net.ctl_as("operator-admin", "proxy remove p1");
    assert!(
        !ok && err.contains("config file"),
        "a config-file proxy was removable at run time: {err}"
    );
    net.ctl("proxy approve p3");
    net.stop("coordinator");
    net.scold(
        "k",
        "coordinator2",
        "coordinator",
        net.path("coordinator.toml"),
    );
    net.wait_log("coordinator2", "coordinator listening", 20);
    assert_eq!(
        pool_of(&net, "p3").as_deref(),
        Some("member"),
        "the approval did not survive a restart"
    );
    let shown = net.ctl("target show mail");
    assert!(
        shown.contains("added at run time: true")
            && shown.contains("mail.example.net.")
            && shown.contains("normal"),
        "the run-time target did not survive a restart:\n{shown}"
    );
    net.ctl("target remove mail");
    let (_, err, ok) = net.ctl_as("operator-admin", "target show mail");
    assert!(!ok && err.contains("no target mail"), "{err}");
    let events = net.ctl("events --subject mail --limit 10");
    assert!(
        events.contains("target_added") && events.contains("target_removed"),
        "{events}"
    );
    net.ctl("proxy drain p3");
    net.ctl("proxy remove p3");
    assert_eq!(
        pool_of(&net, "p3"),
        None,
        "p3 is still listed after removal"
    );
    let events = net.ctl("events --subject proxy/p3 --limit 50");
    for what in [
        "proxy_added",
        "proxy_approved",
        "proxy_draining",
        "proxy_removed",
    ] {
        assert!(
            events.contains(what),
            "no {what} in the audit log:\n{events}"
        );
    }
    assert!(events.contains("operator/admin"), "{events}");
    net.wait_nodes_up();

    // A client agent's route through one proxy of the ALT set.
    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 40);
    let first = net.wait_indirect_route();
    let (used, used_addr, other, other_addr) = match first.as_str() {
        "10.1.0.1" => ("p1", "10.1.0.1", "p2", "10.5.0.1"),
        "10.5.0.1" => ("p2", "10.5.0.1", "p1", "10.1.0.1"),
        x => panic!("the agent chose {x}, which is no proxy of the ALT set"),
    };

    // Drain the proxy in use: the target keeps only the other one, and the agent moves.
    net.ctl(&format!("proxy drain {used}"));
    assert_eq!(pool_of(&net, used).as_deref(), Some("draining"));
    net.wait_phase("diverted", &[other], 40);
    let moved = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        chosen_proxy(&net.log("client")).as_deref() == Some(other_addr)
    });
    assert!(
        moved,
        "the agent did not move from {used_addr} to {other_addr}:\n{}",
        net.log("client")
    );
    net.wait_ping();
    net.fetch("after-drain.bin");

    // A config-file proxy goes by deleting its entry and reloading the coordinator.
    let (_, err, ok) = net.ctl_as("operator-admin", &format!("proxy remove {used}"));
    assert!(!ok && err.contains("config file"), "{err}");
    let file = net.path("coordinator.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let entry = format!("[[proxy]]\nname = \"{used}\"\n");
    let start = text.find(&entry).expect("the proxy's entry");
    let end = text[start + entry.len()..]
        .find("[[proxy]]")
        .map(|i| start + entry.len() + i)
        .unwrap_or(text.len());
    std::fs::write(&file, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let report = net.ctl("reload coordinator");
    assert!(
        report.contains("applied:       proxy"),
        "the coordinator did not apply its [[proxy]] change live:\n{report}"
    );
    net.ctl(&format!("proxy remove {used}"));
    assert_eq!(pool_of(&net, used), None);
    // The other proxy kept serving throughout.
    net.wait_phase("diverted", &[other], 5);
    net.fetch("after-remove.bin");
}
