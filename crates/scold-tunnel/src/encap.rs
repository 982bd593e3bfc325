//! Encapsulations: how one inner IP packet becomes the payload sent to a tunnel peer and
//! back.
//!
//! The outer header is not written here: for `udp` and `wireguard` the kernel's UDP
//! socket adds it, for `ipip` the raw IP-protocol-4 socket does (so the frames are the
//! ones Linux `ip tunnel mode ipip` sends and accepts). What changes between
//! encapsulations is the transformation of the payload, which is what this trait covers:
//! identity for `udp` and `ipip`, the WireGuard transport (boringtun's noise state
//! machine) for `wireguard`. Nothing here allocates per packet.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use scold_proto::dataplane::Encap;
use std::net::IpAddr;

/// Largest outer payload the engine handles (inner MTU plus WireGuard's 32 bytes, with
/// room for jumbo links).
pub const MAX_PACKET: usize = 9216;

/// What the engine must do after one call.
#[derive(Debug)]
pub enum Action<'a> {
    /// Send these bytes to the peer (an encapsulated packet or a handshake message).
    ToPeer(&'a [u8]),
    /// An inner packet came out of the tunnel, authenticated where the encapsulation can.
    Inner(&'a [u8]),
    /// Nothing to send now (a packet queued behind a handshake, a keepalive received).
    Nothing,
    /// The datagram was refused (failed authentication, malformed); drop it silently.
    Refused(&'static str),
}

/// One direction-agnostic tunnel state with one peer.
pub trait Encapsulation: Send {
    fn kind(&self) -> Encap;

    /// Inner packet -> outer payload. `scratch` must hold `inner.len() + 32` bytes and at
    /// least 148.
    fn encapsulate<'a>(&mut self, inner: &'a [u8], scratch: &'a mut [u8]) -> Action<'a>;

    /// Outer payload from `src` -> inner packet, or a message to send back. After a
    /// `ToPeer`, call [`Encapsulation::flush`] until it returns `Nothing`: packets queued
    /// behind a handshake come out there.
    fn decapsulate<'a>(
        &mut self,
        src: IpAddr,
        payload: &'a [u8],
        scratch: &'a mut [u8],
    ) -> Action<'a>;

    /// Packets held back (behind a handshake) that can go now.
    fn flush<'a>(&mut self, _scratch: &'a mut [u8]) -> Action<'a> {
        Action::Nothing
    }

    /// Timers (handshake retries, keepalives, key rotation); call a few times a second.
    fn tick<'a>(&mut self, _scratch: &'a mut [u8]) -> Action<'a> {
        Action::Nothing
    }

    /// Starts the session again from this side now (a WireGuard handshake initiation)
    /// if it has none yet: an earlier initiation may have reached the peer before the
    /// peer knew us, and was dropped. Nothing for encapsulations without a handshake or
    /// with a session.
    fn initiate<'a>(&mut self, _scratch: &'a mut [u8]) -> Action<'a> {
        Action::Nothing
    }
}

/// `udp` and `ipip`: the payload is the inner packet itself.
#[derive(Debug, Clone, Copy)]
pub struct Plain(pub Encap);

impl Encapsulation for Plain {
    fn kind(&self) -> Encap {
        self.0
    }

    fn encapsulate<'a>(&mut self, inner: &'a [u8], _scratch: &'a mut [u8]) -> Action<'a> {
        Action::ToPeer(inner)
    }

    fn decapsulate<'a>(
        &mut self,
        _src: IpAddr,
        payload: &'a [u8],
        _scratch: &'a mut [u8],
    ) -> Action<'a> {
        match payload.first().map(|b| b >> 4) {
            Some(4) if self.0 == Encap::Ipip || self.0 == Encap::Udp => Action::Inner(payload),
            Some(6) if self.0 == Encap::Udp => Action::Inner(payload),
            _ => Action::Refused("payload is not an IP packet"),
        }
    }
}

/// `wireguard`: boringtun's noise state machine with one peer.
pub struct WireGuard {
    tunn: Box<Tunn>,
}

impl WireGuard {
    /// `index` must be unique among this node's peers (it tags the session indices).
    pub fn new(
        private: StaticSecret,
        peer_public: PublicKey,
        keepalive_secs: Option<u16>,
        index: u32,
    ) -> Self {
        let tunn = Tunn::new(private, peer_public, None, keepalive_secs, index, None);
        WireGuard {
            tunn: Box::new(tunn),
        }
    }

    fn map<'a>(r: TunnResult<'a>) -> Action<'a> {
        match r {
            TunnResult::Done => Action::Nothing,
            TunnResult::Err(_) => Action::Refused("wireguard: not authenticated"),
            TunnResult::WriteToNetwork(b) => Action::ToPeer(b),
            TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => {
                if b.is_empty() {
                    // An authenticated keepalive.
                    Action::Nothing
                } else {
                    Action::Inner(b)
                }
            }
        }
    }
}

impl Encapsulation for WireGuard {
    fn kind(&self) -> Encap {
        Encap::Wireguard
    }

    fn encapsulate<'a>(&mut self, inner: &'a [u8], scratch: &'a mut [u8]) -> Action<'a> {
        Self::map(self.tunn.encapsulate(inner, scratch))
    }

    fn decapsulate<'a>(
        &mut self,
        src: IpAddr,
        payload: &'a [u8],
        scratch: &'a mut [u8],
    ) -> Action<'a> {
        if payload.is_empty() {
            // boringtun reads an empty datagram as "flush the queue".
            return Action::Refused("empty datagram");
        }
        Self::map(self.tunn.decapsulate(Some(src), payload, scratch))
    }

    fn flush<'a>(&mut self, scratch: &'a mut [u8]) -> Action<'a> {
        Self::map(self.tunn.decapsulate(None, &[], scratch))
    }

    fn initiate<'a>(&mut self, scratch: &'a mut [u8]) -> Action<'a> {
        if self.tunn.time_since_last_handshake().is_some() {
            return Action::Nothing;
        }
        // Forced: without it boringtun waits out its 5 s rekey time-out after the
        // initiation that was dropped.
        match self.tunn.format_handshake_initiation(scratch, true) {
            TunnResult::Err(_) => Action::Nothing,
            other => Self::map(other),
        }
    }

    fn tick<'a>(&mut self, scratch: &'a mut [u8]) -> Action<'a> {
        match self.tunn.update_timers(scratch) {
            // Expired sessions and failed handshakes are the timers' business.
            TunnResult::Err(_) => Action::Nothing,
            other => Self::map(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn v4_packet(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p
    }

    #[test]
    fn plain_is_identity_and_refuses_non_ip() {
        let mut e = Plain(Encap::Udp);
        let pkt = v4_packet(100);
        let mut s = [0u8; 256];
        assert!(matches!(e.encapsulate(&pkt, &mut s), Action::ToPeer(b) if b == &pkt[..]));
        let src = "10.0.0.1".parse().unwrap();
        assert!(matches!(e.decapsulate(src, &pkt, &mut s), Action::Inner(b) if b == &pkt[..]));
        assert!(matches!(
            e.decapsulate(src, &[0x00, 1, 2], &mut s),
            Action::Refused(_)
        ));
        assert!(matches!(
            e.decapsulate(src, &[], &mut s),
            Action::Refused(_)
        ));
        let mut ipip = Plain(Encap::Ipip);
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        assert!(matches!(
            ipip.decapsulate(src, &v6, &mut s),
            Action::Refused(_)
        ));
    }

    /// Two WireGuard ends in memory: handshake, a packet each way, garbage refused.
    #[test]
    fn wireguard_pair_in_memory() {
        let a_priv = keys::generate_private().unwrap();
        let b_priv = keys::generate_private().unwrap();
        let a_pub = keys::public_of(&a_priv).unwrap();
        let b_pub = keys::public_of(&b_priv).unwrap();
        let mut a = WireGuard::new(
            keys::private_key(&a_priv, "a").unwrap(),
            keys::public_key(&b_pub, "b").unwrap(),
            None,
            1,
        );
        let mut b = WireGuard::new(
            keys::private_key(&b_priv, "b").unwrap(),
            keys::public_key(&a_pub, "a").unwrap(),
            None,
            2,
        );
        let src = "192.0.2.1".parse().unwrap();
        let pkt = v4_packet(1400);
        let mut sa = vec![0u8; MAX_PACKET];
        let mut sb = vec![0u8; MAX_PACKET];

        // a queues the packet and sends a handshake initiation.
        let init = match a.encapsulate(&pkt, &mut sa) {
            Action::ToPeer(b) => b.to_vec(),
            other => panic!("expected handshake init, got {other:?}"),
        };
        let resp = match b.decapsulate(src, &init, &mut sb) {
            Action::ToPeer(r) => r.to_vec(),
            other => panic!("expected handshake response, got {other:?}"),
        };
        // a completes the handshake; its queued packet comes out of flush.
        let mut sent = Vec::new();
        match a.decapsulate(src, &resp, &mut sa) {
            Action::ToPeer(k) => sent.push(k.to_vec()),
            Action::Nothing => {}
            other => panic!("unexpected {other:?}"),
        }
        loop {
            match a.flush(&mut sa) {
                Action::ToPeer(k) => sent.push(k.to_vec()),
                Action::Nothing => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut got = None;
        for d in &sent {
            if let Action::Inner(i) = b.decapsulate(src, d, &mut sb) {
                got = Some(i.to_vec());
            }
        }
        assert_eq!(got.as_deref(), Some(&pkt[..]));

        // b answers; a decrypts.
        let reply = v4_packet(60);
        let enc = match b.encapsulate(&reply, &mut sb) {
            Action::ToPeer(e) => e.to_vec(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(enc.len(), reply.len() + 32);
        assert!(matches!(a.decapsulate(src, &enc, &mut sa), Action::Inner(i) if i == &reply[..]));

        // Tampered and random datagrams get no answer.
        let mut bad = enc.clone();
        bad[40] ^= 1;
        assert!(matches!(
            a.decapsulate(src, &bad, &mut sa),
            Action::Refused(_)
        ));
        for junk in [&[1u8; 148][..], &[4u8; 32][..], &[0xff; 3][..]] {
            assert!(matches!(
                a.decapsulate(src, junk, &mut sa),
                Action::Refused(_) | Action::Nothing
            ));
        }
    }

    /// A stranger's handshake (unknown key) gets no answer of any kind.
    #[test]
    fn wireguard_silent_to_unknown_key() {
        let gw = keys::generate_private().unwrap();
        let proxy = keys::generate_private().unwrap();
        let stranger = keys::generate_private().unwrap();
        let gw_pub = keys::public_of(&gw).unwrap();
        let mut gw_side = WireGuard::new(
            keys::private_key(&gw, "gw").unwrap(),
            keys::public_key(&keys::public_of(&proxy).unwrap(), "p").unwrap(),
            None,
            1,
        );
        let mut attacker = WireGuard::new(
            keys::private_key(&stranger, "s").unwrap(),
            keys::public_key(&gw_pub, "gw").unwrap(),
            None,
            9,
        );
        let mut s1 = vec![0u8; MAX_PACKET];
        let mut s2 = vec![0u8; MAX_PACKET];
        let init = match attacker.encapsulate(&v4_packet(40), &mut s1) {
            Action::ToPeer(b) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        let r = gw_side.decapsulate("192.0.2.66".parse().unwrap(), &init, &mut s2);
        assert!(matches!(r, Action::Refused(_)), "{r:?}");
    }
}
