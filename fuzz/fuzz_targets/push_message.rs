//! Scheme 4.2's push exchange: bytes from the other end of a push connection, cut into
//! arbitrary read sizes, through the edge decoder and the message codec, read as a
//! client agent reads them (`PushRequest`) and as a proxy reads the answer
//! (`PushAnswer`); then the agent's checks of an offer.
//!
//! Properties:
//! - the messages, and the error that ends the stream, do not depend on how the bytes
//!   were split into reads; the decoder never holds more than one frame's worth of bytes
//!   while it waits;
//! - every decoded message re-encodes to a frame that decodes to an equal message, and
//!   the encoding is stable;
//! - an offer `RouteOffer::validate` accepts has 1 to `MAX_PUSH_TARGETS` unicast
//!   targets, none of them its tunnel address, an inner MTU in 576..=9000, a valid key
//!   when it offers WireGuard and a port when it offers a UDP encapsulation;
//! - `judge` accepts exactly when the ALT set holds both the address the proxy connected
//!   from and its tunnel address, and the proxy carries the agent's encapsulation; it
//!   refuses with `not_in_alt_set` or `unsupported_encap` otherwise;
//! - `name_key` gives a lowercase absolute name and is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scold_proto::dataplane::{Encap, MAX_PUSH_TARGETS};
use scold_proto::push::{judge, name_key, PushAnswer, PushRefusal, PushRequest, RouteOffer};
use std::net::IpAddr;

#[path = "common/edge.rs"]
mod edge;
use edge::{decode, round_trip};

fn check_offer(offer: &RouteOffer, pick: u8) {
    if offer.validate().is_ok() {
        assert!(!offer.targets.is_empty() && offer.targets.len() <= MAX_PUSH_TARGETS);
        assert!(offer
            .targets
            .iter()
            .all(|t| !t.is_unspecified() && !t.is_multicast() && !t.is_loopback()));
        assert!(!offer.targets.contains(&offer.tunnel_address));
        assert!((576..=9000).contains(&offer.inner_mtu));
        if offer.encaps.contains(&Encap::Wireguard) {
            assert!(offer.public_key.as_ref().is_some_and(|k| k.looks_valid()));
        }
        if offer.encaps.iter().any(|e| e.uses_udp()) {
            assert!(offer.port.is_some_and(|p| p != 0));
        }
    }
    // The ALT set the agent looked up, the address the proxy connected from and the
    // agent's encapsulation, chosen by `pick` so every branch is reached.
    let elsewhere: IpAddr = "203.0.113.66".parse().expect("address");
    let from = match (pick >> 2) % 3 {
        0 => offer.tunnel_address,
        1 => offer.targets.first().copied().unwrap_or(elsewhere),
        _ => elsewhere,
    };
    let mut alts = Vec::new();
    if pick & 1 != 0 {
        alts.push(offer.tunnel_address);
    }
    if pick & 2 != 0 && !alts.contains(&from) {
        alts.push(from);
    }
    let encap = Encap::ALL[usize::from(pick >> 4) % Encap::ALL.len()];
    let fits = !alts.is_empty()
        && alts.contains(&from)
        && alts.contains(&offer.tunnel_address)
        && offer.encaps.contains(&encap);
    match judge(offer, from, &alts, encap) {
        Ok(()) => assert!(
            fits,
            "accepted {offer:?} from {from} with {alts:?} and {encap}"
        ),
        Err(PushAnswer::Refused { code, .. }) => {
            assert!(!fits, "refused ({code:?}) a fitting offer {offer:?}");
            let expected = if alts.contains(&from) && alts.contains(&offer.tunnel_address) {
                PushRefusal::UnsupportedEncap
            } else {
                PushRefusal::NotInAltSet
            };
            assert_eq!(code, expected);
        }
        Err(other) => panic!("judge answered {other:?}"),
    }
    let key = name_key(&offer.fqdn);
    assert!(key.ends_with('.'));
    assert_eq!(key, key.to_ascii_lowercase());
    assert_eq!(name_key(&key), key, "name_key is not idempotent");
}

fn check_request(m: &PushRequest, pick: u8) {
    round_trip(m);
    match m {
        PushRequest::Push(offer) => check_offer(offer, pick),
        PushRequest::Withdraw { fqdn } => {
            let key = name_key(fqdn);
            assert_eq!(name_key(&key), key);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: how many split sizes follow; then the sizes; then one byte that picks
    // the ALT set and encapsulation `judge` sees; then the stream.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, rest) = rest.split_at(n);
    let Some((&pick, stream)) = rest.split_first() else {
        return;
    };

    let (msgs, err) = decode::<PushRequest>(stream, sizes);
    let (whole, whole_err) = decode::<PushRequest>(stream, &[]);
    assert_eq!(msgs, whole, "requests depend on the read sizes");
    assert_eq!(err, whole_err, "stream error depends on the read sizes");
    msgs.iter().for_each(|m| check_request(m, pick));

    let (answers, err) = decode::<PushAnswer>(stream, sizes);
    let (whole, whole_err) = decode::<PushAnswer>(stream, &[]);
    assert_eq!(answers, whole, "answers depend on the read sizes");
    assert_eq!(err, whole_err, "stream error depends on the read sizes");
    for a in &answers {
        round_trip(a);
    }

    if let Ok(m) = serde_json::from_slice::<PushRequest>(stream) {
        check_request(&m, pick);
    }
    if let Ok(m) = serde_json::from_slice::<PushAnswer>(stream) {
        round_trip(&m);
    }
});
