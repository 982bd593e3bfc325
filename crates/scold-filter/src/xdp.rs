//! The proxy's block list in XDP: blocked IPv4 sources dropped at the interface, before
//! the kernel allocates a socket buffer, routes or runs nftables.
//!
//! One small eBPF program, assembled here (no compiler, no generated object files), looks
//! up each IPv4 packet's source address in a hash map whose values are expiry times on
//! the kernel's monotonic clock, drops the packet while the entry is live and counts the
//! drop in a per-CPU array. User space fills the map from the filter's events, exactly as
//! it fills the nftables set ([`crate::nft::NftBlocklist`]), and removes entries that
//! have expired. The program is attached with a BPF link: closing it (or the process
//! ending) detaches it, so nothing stays behind on the interface.
//!
//! Native XDP needs driver support; veth, and most NICs, also run XDP in generic mode
//! (after the socket buffer is built, still before the stack), which is what
//! [`XdpMode::Generic`] asks for. IPv6 sources, VLAN-tagged frames and anything the
//! program cannot parse pass through to nftables, which stays the fallback and holds
//! every block too.
//!
//! The kernel interface is the `bpf(2)` system call; attribute layouts follow
//! `include/uapi/linux/bpf.h`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use thiserror::Error;

use crate::firewall::FilterEvent;

#[derive(Debug, Error)]
pub enum XdpError {
    #[error("no network interface named {0:?} in this namespace")]
    NoInterface(String),
    #[error(
        "bpf({cmd}) failed: {source} (XDP needs root or CAP_BPF + CAP_NET_ADMIN and a kernel \
         with BPF links, 5.9 or newer; the nftables block list keeps working without it)"
    )]
    Syscall {
        cmd: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's verifier refused the XDP program: {source}\n{log}")]
    Verifier {
        #[source]
        source: io::Error,
        log: String,
    },
    #[error("cannot read the number of possible CPUs: {0}")]
    Cpus(String),
}

/// Where the program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (needs driver support).
    Native,
    /// After the socket buffer is built, on any interface (veth included).
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => 1 << 2,  // XDP_FLAGS_DRV_MODE
            XdpMode::Generic => 1 << 1, // XDP_FLAGS_SKB_MODE
        }
    }
}

// --- the program ------------------------------------------------------------------------

/// One eBPF instruction, as the kernel reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The 8 bytes of the instruction in host byte order.
    pub fn encode(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

// Opcode parts (uapi/linux/bpf_common.h, bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const DW: u8 = 0x18;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const MOV: u8 = 0xb0;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R10: u8 = 10;

const PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_KTIME_GET_NS: i32 = 5;
const HELPER_XDP_GET_BUFF_LEN: i32 = 188;

const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

fn mov_reg(dst: u8, src: u8) -> Insn {
    Insn::new(ALU64 | MOV | X, dst, src, 0, 0)
}
fn mov_imm(dst: u8, imm: i32) -> Insn {
    Insn::new(ALU64 | MOV | K, dst, 0, 0, imm)
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    Insn::new(ALU64 | ADD | K, dst, 0, 0, imm)
}
fn add_reg(dst: u8, src: u8) -> Insn {
    Insn::new(ALU64 | ADD | X, dst, src, 0, 0)
}
fn load(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(LDX | MEM | size, dst, src, off, 0)
}
fn store_reg(size: u8, dst: u8, off: i16, src: u8) -> Insn {
    Insn::new(STX | MEM | size, dst, src, off, 0)
}
fn store_imm(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
    Insn::new(ST | MEM | size, dst, 0, off, imm)
}
fn jump_reg(op: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(JMP | op | X, dst, src, off, 0)
}
fn jump_imm(op: u8, dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(JMP | op | K, dst, 0, off, imm)
}
fn call(helper: i32) -> Insn {
    Insn::new(JMP | CALL, 0, 0, 0, helper)
}
fn exit() -> Insn {
    Insn::new(JMP | EXIT, 0, 0, 0, 0)
}
/// `dst = map` (two instruction slots).
fn load_map(dst: u8, map_fd: RawFd) -> [Insn; 2] {
    [
        Insn::new(LD | IMM | DW, dst, PSEUDO_MAP_FD, 0, map_fd),
        Insn::new(0, 0, 0, 0, 0),
    ]
}

/// Jumps are relative; the program is built with labels and patched once it is known
/// where they land.
struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label)
    fixups: Vec<(usize, Label)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Pass,
    Drop,
}

impl Asm {
    fn op(&mut self, i: Insn) {
        self.insns.push(i);
    }
    fn to(&mut self, i: Insn, label: Label) {
        self.fixups.push((self.insns.len(), label));
        self.insns.push(i);
    }
    /// `r0 = bpf_map_lookup_elem(map, r10 + key_off)`: the key is already on the stack.
    fn lookup(&mut self, map: RawFd, key_off: i32) {
        for i in load_map(R1, map) {
            self.op(i);
        }
        self.op(mov_reg(R2, R10));
        self.op(add_imm(R2, key_off));
        self.op(call(HELPER_MAP_LOOKUP));
    }
    fn finish(mut self, labels: &[(Label, usize)]) -> Vec<Insn> {
        for (at, label) in self.fixups {
            let target = labels
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(_, t)| *t)
                .expect("every label is placed");
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// The block-list program: IPv4 source in `blocked` with an expiry in the future ->
/// count in `stats` (packets at 0, bytes at 8) and drop; anything else passes.
pub fn blocklist_program(blocked: RawFd, stats: RawFd) -> Vec<Insn> {
    let mut a = Asm {
        insns: Vec::with_capacity(40),
        fixups: Vec::new(),
    };
    a.op(mov_reg(R6, R1)); // r6 = ctx
    a.op(load(W, R2, R6, 0)); // r2 = ctx->data
    a.op(load(W, R3, R6, 4)); // r3 = ctx->data_end
    a.op(mov_reg(R4, R2));
    a.op(add_imm(R4, 34)); // Ethernet (14) + IPv4 header up to the source address (20)
    a.to(jump_reg(JGT, R4, R3, 0), Label::Pass);
    a.op(load(H, R4, R2, 12)); // EtherType, network order
    a.to(
        jump_imm(
            JNE,
            R4,
            i32::from(u16::from_ne_bytes(0x0800u16.to_be_bytes())),
            0,
        ),
        Label::Pass,
    );
    a.op(load(W, R4, R2, 26)); // IPv4 source address
    a.op(store_reg(W, R10, -4, R4)); // key on the stack
    a.lookup(blocked, -4);
    a.to(jump_imm(JEQ, R0, 0, 0), Label::Pass);
    a.op(load(DW, R8, R0, 0)); // r8 = expiry (ns, CLOCK_MONOTONIC)
    a.op(call(HELPER_KTIME_GET_NS));
    a.to(jump_reg(JGT, R0, R8, 0), Label::Pass); // expired: user space removes it
    a.op(mov_reg(R1, R6));
    a.op(call(HELPER_XDP_GET_BUFF_LEN));
    a.op(mov_reg(R7, R0)); // r7 = packet length
    a.op(store_imm(W, R10, -8, 0)); // stats key 0
    a.lookup(stats, -8);
    a.to(jump_imm(JEQ, R0, 0, 0), Label::Drop);
    a.op(load(DW, R1, R0, 0));
    a.op(add_imm(R1, 1));
    a.op(store_reg(DW, R0, 0, R1));
    a.op(load(DW, R1, R0, 8));
    a.op(add_reg(R1, R7));
    a.op(store_reg(DW, R0, 8, R1));
    let drop = a.insns.len();
    a.op(mov_imm(R0, XDP_DROP));
    a.op(exit());
    let pass = a.insns.len();
    a.op(mov_imm(R0, XDP_PASS));
    a.op(exit());
    a.finish(&[(Label::Drop, drop), (Label::Pass, pass)])
}

// --- the system call ----------------------------------------------------------------------

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const MAP_TYPE_HASH: u32 = 1;
const MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const PROG_TYPE_XDP: u32 = 6;
const ATTACH_TYPE_XDP: u32 = 37;

/// A `union bpf_attr`, zeroed, written field by field at the offsets of the uapi header.
struct Attr([u64; 16]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 16])
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: a [u64; 16] is 128 initialised bytes, suitably aligned for u8.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), 128) }
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.bytes()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.bytes()[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, off: usize, name: &str) -> &mut Attr {
        let n = name.len().min(15);
        self.bytes()[off..off + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attribute is 128 valid bytes that outlive the call; every pointer
        // written into it points at memory the caller keeps alive across the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                std::mem::size_of::<Attr>(),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
    fn call_fd(&mut self, cmd: libc::c_long) -> io::Result<OwnedFd> {
        let fd = self.call(cmd)?;
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

fn syscall_err(cmd: &'static str) -> impl FnOnce(io::Error) -> XdpError {
    move |source| XdpError::Syscall { cmd, source }
}

fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    entries: u32,
    name: &str,
) -> Result<OwnedFd, XdpError> {
    Attr::new()
        .u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, entries)
        .name(28, name)
        .call_fd(BPF_MAP_CREATE)
        .map_err(syscall_err("BPF_MAP_CREATE"))
}

fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64)
        .call(BPF_MAP_UPDATE_ELEM)
        .map(drop)
}

fn map_delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    match Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .call(BPF_MAP_DELETE_ELEM)
    {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(drop),
    }
}

fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    match Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_mut_ptr() as u64)
        .call(BPF_MAP_LOOKUP_ELEM)
    {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        r => r.map(|_| true),
    }
}

/// The key after `key` (the first key for `None`), or `None` at the end.
fn map_next_key(map: &OwnedFd, key: Option<&[u8; 4]>) -> io::Result<Option<[u8; 4]>> {
    let mut next = [0u8; 4];
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(16, next.as_mut_ptr() as u64);
    if let Some(k) = key {
        a.u64(8, k.as_ptr() as u64);
    }
    match a.call(BPF_MAP_GET_NEXT_KEY) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        r => r.map(|_| Some(next)),
    }
}

/// The number of possible CPUs: the stride of a per-CPU map's values.
fn possible_cpus() -> Result<usize, XdpError> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| XdpError::Cpus(e.to_string()))?;
    parse_cpu_list(s.trim()).ok_or_else(|| XdpError::Cpus(format!("unreadable list {s:?}")))
}

/// `0-3,5` -> 6 (the kernel's CPU list format).
pub fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        max = Some(max.map_or(last, |m: usize| m.max(last)));
    }
    max.map(|m| m + 1)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Packets and bytes dropped by the program since it was attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpDrops {
    pub packets: u64,
    pub bytes: u64,
}

/// The block-list program attached to one interface, and its maps.
#[derive(Debug)]
pub struct XdpBlocklist {
    interface: String,
    mode: XdpMode,
    blocked: OwnedFd,
    stats: OwnedFd,
    cpus: usize,
    // Kept open: closing the link detaches the program.
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl XdpBlocklist {
    /// Loads the program and attaches it to `interface` (in the calling thread's network
    /// namespace), with room for `max_entries` blocked sources.
    pub fn attach(interface: &str, mode: XdpMode, max_entries: u32) -> Result<Self, XdpError> {
        let cname = std::ffi::CString::new(interface)
            .map_err(|_| XdpError::NoInterface(interface.to_string()))?;
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(XdpError::NoInterface(interface.to_string()));
        }
        let cpus = possible_cpus()?;
        let blocked = create_map(MAP_TYPE_HASH, 4, 8, max_entries.max(1), "scold_blocked4")?;
        let stats = create_map(MAP_TYPE_PERCPU_ARRAY, 4, 16, 1, "scold_xdp_stats")?;
        let insns: Vec<u8> = blocklist_program(blocked.as_raw_fd(), stats.as_raw_fd())
            .into_iter()
            .flat_map(Insn::encode)
            .collect();
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut load = Attr::new();
        load.u32(0, PROG_TYPE_XDP)
            .u32(4, (insns.len() / 8) as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .name(48, "scold_blocklist")
            .u32(68, ATTACH_TYPE_XDP);
        let prog = match load.call_fd(BPF_PROG_LOAD) {
            Ok(p) => p,
            Err(source) if source.raw_os_error() == Some(libc::EACCES) => {
                // Load again with the verifier's log to say why.
                let mut again = Attr::new();
                again
                    .u32(0, PROG_TYPE_XDP)
                    .u32(4, (insns.len() / 8) as u32)
                    .u64(8, insns.as_ptr() as u64)
                    .u64(16, license.as_ptr() as u64)
                    .u32(24, 1)
                    .u32(28, log.len() as u32)
                    .u64(32, log.as_mut_ptr() as u64)
                    .u32(68, ATTACH_TYPE_XDP);
                let _ = again.call(BPF_PROG_LOAD);
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                return Err(XdpError::Verifier {
                    source,
                    log: String::from_utf8_lossy(&log[..end]).into_owned(),
                });
            }
            Err(e) => return Err(syscall_err("BPF_PROG_LOAD")(e)),
        };
        let link = Attr::new()
            .u32(0, prog.as_raw_fd() as u32)
            .u32(4, ifindex)
            .u32(8, ATTACH_TYPE_XDP)
            .u32(12, mode.flags())
            .call_fd(BPF_LINK_CREATE)
            .map_err(syscall_err("BPF_LINK_CREATE (attach XDP)"))?;
        tracing::info!(interface, ?mode, "XDP block list attached");
        Ok(XdpBlocklist {
            interface: interface.to_string(),
            mode,
            blocked,
            stats,
            cpus,
            _prog: prog,
            _link: link,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Blocks `src` for `dur`. IPv6 sources are left to nftables (returns `false`).
    pub fn block(&self, src: IpAddr, dur: Duration) -> Result<bool, XdpError> {
        let IpAddr::V4(a) = src else {
            return Ok(false);
        };
        let expiry = monotonic_ns().saturating_add(dur.as_nanos().min(u64::MAX as u128) as u64);
        map_update(&self.blocked, &a.octets(), &expiry.to_ne_bytes())
            .map_err(syscall_err("BPF_MAP_UPDATE_ELEM"))?;
        Ok(true)
    }

    /// Lifts a block; not an error if there was none.
    pub fn unblock(&self, src: IpAddr) -> Result<(), XdpError> {
        if let IpAddr::V4(a) = src {
            map_delete(&self.blocked, &a.octets()).map_err(syscall_err("BPF_MAP_DELETE_ELEM"))?;
        }
        Ok(())
    }

    /// Mirrors the filter's events, as [`crate::nft::NftBlocklist::apply_events`] does.
    pub fn apply_events<'e>(
        &self,
        events: impl IntoIterator<Item = &'e FilterEvent>,
    ) -> Result<(), XdpError> {
        for e in events {
            match e {
                FilterEvent::Blocked { src, duration, .. } => {
                    self.block(*src, *duration)?;
                }
                FilterEvent::Expired { src, .. } => self.unblock(*src)?,
            }
        }
        Ok(())
    }

    /// The sources blocked now, with the time left.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Duration)>, XdpError> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        let mut key: Option<[u8; 4]> = None;
        while let Some(k) = map_next_key(&self.blocked, key.as_ref())
            .map_err(syscall_err("BPF_MAP_GET_NEXT_KEY"))?
        {
            let mut v = [0u8; 8];
            if map_lookup(&self.blocked, &k, &mut v).map_err(syscall_err("BPF_MAP_LOOKUP_ELEM"))? {
                let expiry = u64::from_ne_bytes(v);
                if expiry > now {
                    out.push((Ipv4Addr::from(k), Duration::from_nanos(expiry - now)));
                }
            }
            key = Some(k);
        }
        Ok(out)
    }

    /// Removes entries whose time is up (the program already lets their packets pass);
    /// returns how many.
    pub fn sweep(&self) -> Result<usize, XdpError> {
        let now = monotonic_ns();
        let mut stale = Vec::new();
        let mut key: Option<[u8; 4]> = None;
        while let Some(k) = map_next_key(&self.blocked, key.as_ref())
            .map_err(syscall_err("BPF_MAP_GET_NEXT_KEY"))?
        {
            let mut v = [0u8; 8];
            if map_lookup(&self.blocked, &k, &mut v).map_err(syscall_err("BPF_MAP_LOOKUP_ELEM"))?
                && u64::from_ne_bytes(v) <= now
            {
                stale.push(k);
            }
            key = Some(k);
        }
        for k in &stale {
            map_delete(&self.blocked, k).map_err(syscall_err("BPF_MAP_DELETE_ELEM"))?;
        }
        Ok(stale.len())
    }

    /// Drops so far, summed over every CPU.
    pub fn drops(&self) -> Result<XdpDrops, XdpError> {
        let mut v = vec![0u8; 16 * self.cpus];
        map_lookup(&self.stats, &0u32.to_ne_bytes(), &mut v)
            .map_err(syscall_err("BPF_MAP_LOOKUP_ELEM"))?;
        let mut d = XdpDrops::default();
        for cpu in v.chunks_exact(16) {
            d.packets += u64::from_ne_bytes(cpu[0..8].try_into().expect("8 bytes"));
            d.bytes += u64::from_ne_bytes(cpu[8..16].try_into().expect("8 bytes"));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_pass_and_drop() {
        let p = blocklist_program(3, 4);
        let pass = p.len() - 2;
        let drop = p.len() - 4;
        assert_eq!(p[pass], mov_imm(R0, XDP_PASS));
        assert_eq!(p[drop], mov_imm(R0, XDP_DROP));
        let mut jumps = 0;
        for (i, insn) in p.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if class == JMP && op != CALL && op != EXIT {
                jumps += 1;
                let to = (i as i64 + 1 + i64::from(insn.off)) as usize;
                assert!(to == pass || to == drop, "jump at {i} lands on {to}");
            }
        }
        assert_eq!(jumps, 5);
    }

    #[test]
    fn every_program_ends_in_exit_and_loads_both_maps() {
        let p = blocklist_program(7, 9);
        assert_eq!(p.last().copied(), Some(exit()));
        let maps: Vec<i32> = p
            .iter()
            .filter(|i| i.code == LD | IMM | DW)
            .map(|i| {
                assert_eq!(i.src, PSEUDO_MAP_FD);
                i.imm
            })
            .collect();
        assert_eq!(maps, vec![7, 9]);
    }

    #[test]
    fn instructions_encode_registers_in_nibbles() {
        let b = store_reg(W, R10, -4, R4).encode();
        assert_eq!(b[0], STX | MEM | W);
        assert_eq!(b[1], 0x4a);
        assert_eq!(i16::from_ne_bytes([b[2], b[3]]), -4);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,5"), Some(6));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
