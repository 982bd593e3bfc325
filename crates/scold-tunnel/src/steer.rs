//! Steering of tunnel datagrams to engine threads: a classic BPF program for a
//! `SO_REUSEPORT` group (`SO_ATTACH_REUSEPORT_CBPF`).
//!
//! Why: the kernel spreads a reuseport group by the outer 4-tuple, and one tunnel is
//! one 4-tuple (a proxy and its gateway talk from port to port), so without help a
//! whole tunnel lands on one engine thread however many flows it carries. The program
//! runs when the kernel picks the socket, with the packet's data starting at the UDP
//! payload; for the `udp` encapsulation that is the inner IP packet, so it hashes the
//! inner addresses, and the ports of a TCP/UDP packet that is not a later fragment,
//! and returns a socket index: each inner flow stays on one thread (no reordering)
//! and the flows spread over all of them. Anything else (WireGuard messages, whose
//! first byte is a message type, or a packet too short) gets an index past the end,
//! which makes the kernel fall back to its own 4-tuple hash: a WireGuard peer stays on
//! one thread, whose session state it needs in order anyway.

//!
//! The kernel runs the program once per arriving skb, and a UDP GSO send arrives as one
//! skb carrying many datagrams, all delivered to the socket its first one picks. So the
//! hash is cut to one of [`BUCKETS`] buckets first, the socket is the bucket modulo the
//! group's size, and a sender keeps each GSO run within one bucket ([`bucket`], used by
//! the send batch): whatever the receiver's engine count, a flow's datagrams always
//! reach the same socket, in order.

use std::io;

/// Buckets of inner flows; a node can spread its tunnels over this many engines at most.
pub const BUCKETS: u32 = 16;

/// The bucket of a datagram that is not a plain inner IP packet (WireGuard, handshakes),
/// which the program leaves to the kernel's own hash.
pub const NO_BUCKET: u8 = u8::MAX;

/// The bucket [`program`] puts a plain inner IP packet into (see the module text), or
/// [`NO_BUCKET`].
pub fn bucket(inner: &[u8]) -> u8 {
    let word = |at: usize| -> Option<u32> {
        inner
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ports = |proto: u8, at: usize| -> u32 {
        if proto == 6 || proto == 17 {
            word(at).unwrap_or(0)
        } else {
            0
        }
    };
    let Some(&first) = inner.first() else {
        return NO_BUCKET;
    };
    let key = match first & 0xf0 {
        0x40 => {
            let (Some(s), Some(d)) = (word(12), word(16)) else {
                return NO_BUCKET;
            };
            let later_fragment = u16::from_be_bytes([inner[6], inner[7]]) & 0x1fff != 0;
            let ihl = usize::from(first & 0x0f) * 4;
            s ^ d
                ^ if later_fragment {
                    0
                } else {
                    ports(inner[9], ihl)
                }
        }
        0x60 => {
            let (Some(s), Some(d)) = (word(20), word(36)) else {
                return NO_BUCKET;
            };
            s ^ d ^ ports(inner[6], 40)
        }
        _ => return NO_BUCKET,
    };
    (key.wrapping_mul(MIX) >> 28) as u8
}

/// The multiplier that spreads the key's bits into the top four.
const MIX: u32 = 0x9e37_79b1;
use std::os::fd::RawFd;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const MSH: u16 = 0xa0;
const K: u16 = 0x00;
const X: u16 = 0x08;
const A: u16 = 0x10;
const AND: u16 = 0x50;
const RSH: u16 = 0x70;
const MUL: u16 = 0x20;
const MOD: u16 = 0x90;
const XOR: u16 = 0xa0;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JSET: u16 = 0x40;
const TAX: u16 = 0x00;

/// One line of the program: a label, a plain instruction, or a jump to labels (an
/// unconditional jump uses `t`). Offsets are worked out by [`assemble`].
enum Line {
    Label(&'static str),
    Op(u16, u32),
    Jump(u16, u32, &'static str, &'static str),
}
use Line::{Jump, Label, Op};

/// "Not mine": an index no socket has, so the kernel uses its own hash.
const FALLBACK: u32 = u32::MAX;

fn assemble(lines: &[Line]) -> Vec<libc::sock_filter> {
    let mut at = std::collections::HashMap::new();
    let mut n = 0usize;
    for l in lines {
        match l {
            Label(name) => {
                at.insert(*name, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    for l in lines {
        let here = out.len();
        let off = |name: &str| -> u32 {
            let to = at[name];
            assert!(to > here, "cBPF jumps go forward only");
            (to - here - 1) as u32
        };
        match *l {
            Label(_) => {}
            Op(code, k) => out.push(libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            }),
            Jump(code, _, t, _) if code == JMP | JA => out.push(libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k: off(t),
            }),
            Jump(code, k, t, f) => out.push(libc::sock_filter {
                code,
                jt: off(t) as u8,
                jf: off(f) as u8,
                k,
            }),
        }
    }
    out
}

/// The program for a group of `n` sockets (`2 <= n <= BUCKETS`).
pub fn program(n: u32) -> Vec<libc::sock_filter> {
    assemble(&[
        Op(LD | B | ABS, 0), // the version nibble
        Op(ALU | AND | K, 0xf0),
        Jump(JMP | JEQ | K, 0x40, "v4", "not4"),
        Label("v4"),
        Op(LD | W | ABS, 12), // M[0] = source ^ destination
        Op(MISC | TAX, 0),
        Op(LD | W | ABS, 16),
        Op(ALU | XOR | X, 0),
        Op(ST, 0),
        Op(LD | B | ABS, 9), // the ports only for TCP and UDP ...
        Jump(JMP | JEQ | K, 6, "ports4", "udp4"),
        Label("udp4"),
        Jump(JMP | JEQ | K, 17, "ports4", "mix"),
        Label("ports4"),
        Op(LD | H | ABS, 6), // ... in a first (or only) fragment
        Jump(JMP | JSET | K, 0x1fff, "mix", "p4"),
        Label("p4"),
        Op(LDX | B | MSH, 0), // X = header length
        Op(LD | W | IND, 0),  // both ports
        Jump(JMP | JA, 0, "fold", "fold"),
        Label("not4"),
        Jump(JMP | JEQ | K, 0x60, "v6", "fallback"),
        Label("v6"),
        Op(LD | W | ABS, 20), // low words of source and destination
        Op(MISC | TAX, 0),
        Op(LD | W | ABS, 36),
        Op(ALU | XOR | X, 0),
        Op(ST, 0),
        Op(LD | B | ABS, 6), // next header
        Jump(JMP | JEQ | K, 6, "ports6", "udp6"),
        Label("udp6"),
        Jump(JMP | JEQ | K, 17, "ports6", "mix"),
        Label("ports6"),
        Op(LD | W | ABS, 40),
        Label("fold"),
        Op(MISC | TAX, 0), // M[0] ^= ports
        Op(LD | MEM, 0),
        Op(ALU | XOR | X, 0),
        Op(ST, 0),
        Label("mix"),
        Op(LD | MEM, 0),
        Op(ALU | MUL | K, MIX),
        Op(ALU | RSH | K, 28), // the bucket (BUCKETS = 16) ...
        Op(ALU | MOD | K, n),  // ... and its socket
        Op(RET | A, 0),
        Label("fallback"),
        Op(RET | K, FALLBACK),
    ])
}

/// Attaches [`program`] to the reuseport group of `fd` (`n` sockets).
pub fn attach(fd: RawFd, n: u32) -> io::Result<()> {
    let prog = program(n);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: u8, sport: u16, proto: u8, frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 1, 0, src]);
        p[16..20].copy_from_slice(&[10, 4, 0, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p
    }

    /// Buckets follow the inner flow: ports count for TCP and UDP in a first fragment
    /// only; what is not an IP packet has none; the flows of one host pair spread.
    #[test]
    fn buckets_follow_the_inner_flow() {
        assert_eq!(bucket(&[]), NO_BUCKET);
        assert_eq!(bucket(&[0x01, 0, 0, 0, 1, 2, 3, 4]), NO_BUCKET, "WireGuard");
        assert_eq!(bucket(&v4(2, 1, 17, 0)[..19]), NO_BUCKET, "too short");
        let spread: std::collections::HashSet<u8> = (0..64)
            .map(|port| bucket(&v4(2, 40000 + port, 6, 0)))
            .collect();
        assert!(
            spread.len() >= 12,
            "64 flows fell into {} buckets",
            spread.len()
        );
        assert!(spread.iter().all(|&b| u32::from(b) < BUCKETS));
        // Later fragments carry no ports: only the addresses count, as for ICMP.
        assert_eq!(bucket(&v4(2, 1, 17, 185)), bucket(&v4(2, 9, 1, 0)));
        assert_ne!(bucket(&v4(2, 1, 17, 0x2000)), NO_BUCKET, "a first fragment");
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        assert_ne!(bucket(&v6), NO_BUCKET);
    }

    /// The program assembles within cBPF's limits, ends every path in a return, and
    /// jumps only forward.
    #[test]
    fn program_is_well_formed() {
        let p = program(4);
        assert!(p.len() < 64);
        assert_eq!(p.last().unwrap().code, RET | K);
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == JMP && ins.code != JMP | JA {
                assert!(i + 1 + usize::from(ins.jt) < p.len());
                assert!(i + 1 + usize::from(ins.jf) < p.len());
            }
        }
    }
}
