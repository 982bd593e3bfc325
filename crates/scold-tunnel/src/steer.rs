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

use std::io;
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
            Jump(code, _, t, _) if code == JMP | JA => {
                out.push(libc::sock_filter {
                    code,
                    jt: 0,
                    jf: 0,
                    k: off(t),
                })
            }
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

/// The program for a group of `n` sockets (`n >= 2`).
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
        Op(ALU | MUL | K, 0x9e37_79b1),
        Op(ALU | RSH | K, 16),
        Op(ALU | MOD | K, n),
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
