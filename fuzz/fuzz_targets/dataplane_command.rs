//! Data-plane orders as a node receives them: JSON inside a control `Dataplane`
//! request, and the node's JSON reply as the coordinator reads it.
//!
//! Properties:
//! - decoding never panics; a decoded command re-encodes to JSON that decodes to an
//!   equal command, directly and through `serde_json::Value` (the form the control
//!   message carries it in);
//! - `validate` never panics, and a WireGuard key it accepts is refused or accepted by
//!   the tunnel layer without a panic;
//! - prefixes in any text form parse back from their display form and contain their
//!   own address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scold_proto::dataplane::{Command, Prefix, Reply};

fn check_command(data: &[u8]) {
    let Ok(cmd) = serde_json::from_slice::<Command>(data) else {
        return;
    };
    let _ = cmd.kind();
    let text = serde_json::to_vec(&cmd).expect("commands serialise");
    let back: Command = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("re-encoded command does not decode: {e}\n{cmd:?}"));
    assert_eq!(back, cmd, "command changed in a round trip");

    let value: serde_json::Value = serde_json::from_slice(data).expect("valid JSON");
    let via_value: Command = serde_json::from_value(value)
        .unwrap_or_else(|e| panic!("command decodes from bytes but not from a Value: {e}"));
    assert_eq!(via_value, cmd, "Value path disagrees with the byte path");

    if cmd.validate().is_ok() {
        let key = match &cmd {
            Command::AddPeer(p) => p.public_key.as_ref(),
            Command::AddSession(s) => s.public_key.as_ref(),
            _ => None,
        };
        if let Some(k) = key {
            assert!(k.looks_valid());
            let _ = scold_tunnel::keys::public_key(&k.0, "fuzz");
        }
    }
}

fn check_reply(data: &[u8]) {
    let Ok(r) = serde_json::from_slice::<Reply>(data) else {
        return;
    };
    let text = serde_json::to_vec(&r).expect("replies serialise");
    let back: Reply = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("re-encoded reply does not decode: {e}\n{r:?}"));
    assert_eq!(back, r, "reply changed in a round trip");
}

fn check_prefix(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if s.len() > 64 {
        return;
    }
    let Ok(p) = s.parse::<Prefix>() else { return };
    let shown = p.to_string();
    let again: Prefix = shown
        .parse()
        .unwrap_or_else(|e| panic!("{shown:?} (from {s:?}) does not parse: {e}"));
    assert_eq!(again, p);
    assert!(p.contains(p.addr()), "{p} does not contain its own address");
    let max = if p.addr().is_ipv4() { 32 } else { 128 };
    assert!(p.len() <= max);
    assert_eq!(p.is_host(), p.len() == max);
}

fuzz_target!(|data: &[u8]| {
    check_command(data);
    check_reply(data);
    check_prefix(data);
});
