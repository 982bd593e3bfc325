//! The admission exchange of scheme 4.1: bytes from the other end of an admission
//! connection, cut into arbitrary read sizes, through the edge decoder and the message
//! codec, read as a proxy reads them (`ClientMessage`) and as a client agent reads them
//! (`ProxyMessage`).
//!
//! Properties:
//! - the messages, and the error that ends the stream, do not depend on how the bytes
//!   were split into reads; the decoder never holds more than one frame's worth of bytes
//!   while it waits (the edge limit is enforced before buffering);
//! - every decoded message re-encodes to a frame that decodes to an equal message, and
//!   the encoding is stable; a pong that does not drain carries no `draining` field and a
//!   drain notice that does not drain no reason (what proxies that predate them send);
//! - a request `validate` accepts names 1 to `MAX_TARGETS` unicast targets and a key
//!   exactly when it asks for WireGuard; the proxy's `plan_admit` never panics, and an
//!   admission it plans and commits leaves the client admitted to every target asked;
//!   a refused one changes nothing;
//! - an answer `check_admitted` accepts has its tunnel address in the ALT set, the asked
//!   encapsulation, the client's own address and every asked target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scold_proto::admission::{
    check_admitted, Admissions, AdmitRequest, ClientMessage, ProxyMessage, ProxyOffer, MAX_REASON,
    MAX_TARGETS,
};
use scold_proto::dataplane::{Encap, PublicKey};
use std::net::IpAddr;

#[path = "common/edge.rs"]
mod edge;
use edge::{decode, round_trip, HEADER};

fn offer() -> ProxyOffer {
    ProxyOffer {
        encaps: vec![Encap::Udp, Encap::Wireguard],
        tunnel_address: None,
        port: Some(51820),
        public_key: Some(PublicKey(format!("{}=", "P".repeat(43)))),
        outer_mtu: 1500,
        relay_mtu: 1440,
        allow: vec!["10.0.0.0/8".parse().expect("prefix")],
        max_clients: 4,
        max_clients_per_prefix: 4,
        engines: 2,
    }
}

fn client() -> IpAddr {
    "192.0.2.7".parse().expect("address")
}

fn alt() -> Vec<IpAddr> {
    vec![
        "192.0.2.1".parse().expect("address"),
        "2001:db8::1".parse().expect("address"),
    ]
}

fn check_request(req: &AdmitRequest) {
    if req.validate().is_ok() {
        assert!(!req.targets.is_empty() && req.targets.len() <= MAX_TARGETS);
        assert!(req
            .targets
            .iter()
            .all(|t| !t.is_unspecified() && !t.is_multicast() && !t.is_loopback()));
        assert_eq!(
            req.public_key.is_some(),
            req.encap == Encap::Wireguard,
            "{req:?}"
        );
        assert_ne!(req.port, Some(0));
    }
    let mut a = Admissions::default();
    match a.plan_admit(client(), 1, alt()[0], req, &offer()) {
        Ok((plan, answer)) => {
            assert!(req.validate().is_ok(), "planned an invalid request {req:?}");
            assert!(req.targets.iter().all(|t| answer.targets.contains(t)));
            assert_eq!(answer.client, client());
            a.commit(plan);
            let admitted = a.targets(client());
            assert!(req.targets.iter().all(|t| admitted.contains(t)));
            // Asking again changes nothing.
            let (again, _) = a
                .plan_admit(client(), 1, alt()[0], req, &offer())
                .expect("the same request is admitted again");
            a.commit(again);
            assert_eq!(a.targets(client()), admitted);
        }
        Err(_) => assert!(a.is_empty(), "a refusal changed the proxy's bookkeeping"),
    }
}

fn check_client(m: &ClientMessage) {
    round_trip(m);
    if let ClientMessage::Admit(req) = m {
        check_request(req);
    }
}

fn check_proxy(m: &ProxyMessage) {
    let wire = round_trip(m);
    let body = &wire[HEADER + 1..];
    match m {
        ProxyMessage::Pong { draining, .. } => {
            let has = body.windows(10).any(|w| w == b"\"draining\"");
            assert_eq!(has, *draining, "pong with draining {draining}: {m:?}");
        }
        ProxyMessage::Draining { draining, reason } => {
            if !draining && reason.is_none() {
                assert!(!body.windows(8).any(|w| w == b"\"reason\""));
            }
            if let Some(r) = reason {
                let cut = scold_proto::admission::Drain::because(r);
                assert!(cut.reason.as_ref().map_or(0, String::len) <= MAX_REASON);
                assert!(r.starts_with(cut.reason.as_deref().unwrap_or_default()));
            }
        }
        ProxyMessage::Admitted(a) => {
            for encap in Encap::ALL {
                let req = AdmitRequest {
                    targets: a.targets.iter().take(2).copied().collect(),
                    encap,
                    public_key: None,
                    port: None,
                    engines: None,
                };
                if check_admitted(a, &req, &alt(), client()).is_ok() {
                    assert!(alt().contains(&a.tunnel_address));
                    assert_eq!(a.encap, encap);
                    assert_eq!(a.client, client());
                    assert!(req.targets.iter().all(|t| a.targets.contains(t)));
                    assert!((576..=9000).contains(&a.inner_mtu));
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: how many split sizes follow; then the sizes; then the stream.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    // As a proxy reads what a client sends.
    let (msgs, err) = decode::<ClientMessage>(stream, sizes);
    let (whole, whole_err) = decode::<ClientMessage>(stream, &[]);
    assert_eq!(msgs, whole, "client messages depend on the read sizes");
    assert_eq!(err, whole_err, "stream error depends on the read sizes");
    msgs.iter().for_each(check_client);

    // As a client agent reads what a proxy sends.
    let (msgs, err) = decode::<ProxyMessage>(stream, sizes);
    let (whole, whole_err) = decode::<ProxyMessage>(stream, &[]);
    assert_eq!(msgs, whole, "proxy messages depend on the read sizes");
    assert_eq!(err, whole_err, "stream error depends on the read sizes");
    msgs.iter().for_each(check_proxy);

    // Bodies also arrive unframed in tests and tools: try the whole stream as one.
    if let Ok(m) = serde_json::from_slice::<ClientMessage>(stream) {
        check_client(&m);
    }
    if let Ok(m) = serde_json::from_slice::<ProxyMessage>(stream) {
        check_proxy(&m);
    }
});
