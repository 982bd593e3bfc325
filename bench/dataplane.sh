#!/usr/bin/env bash
# Whole-system benchmark of the indirect route's data plane (not a test).
#
# One run, one set of network namespaces, side by side:
#   direct        client -> proxy, one veth pair
#   kernel-fwd    client -> proxy -> gateway -> target, kernel IP forwarding (no tunnel)
#   haproxy       TCP relay by HAProxy (1 thread) on the proxy, kernel forwarding behind
#   socat         TCP relay by socat on the proxy, kernel forwarding behind
#   scold-udp/ipip/wireguard   client -> proxy -> gateway -> target through scold tunnels
#   scold-nat     TCP relay by scold proxy in NAT mode (scheme 4.3), over a udp tunnel
#   wireguard-go  the user-space WireGuard peer (Debian wireguard-go, configured with wg)
#                 in the same two-hop layout: client -> proxy -> gateway -> target, the
#                 proxy forwarding between its two wireguard-go interfaces (skipped, with
#                 a note, when wireguard-go or wg is missing:
#                 apt-get install --no-install-recommends wireguard-go wireguard-tools)
# For each: TCP throughput (iperf3, one stream, with its retransmissions), the CPU the
# relaying process(es) used during it, and request/response round-trip time (1-byte TCP
# ping-pong). Prints a table and the ratios the project aims at.
# Packets per second (goal 5): a GSO sender (python, UDP_SEGMENT, 64 datagrams
# per sendmsg) in the client namespace sends what a scold client with encap "udp" sends:
# each outer datagram to the proxy's tunnel port carries a whole inner IPv4/UDP packet
# with a 64-byte payload (10.1.0.2 -> 10.4.0.2, 64 flows = 64 inner source ports). The
# client's link segments each train in software (gso_max_segs 1), so the proxy receives
# single datagrams as from a real link. A sink (UDP_GRO) bound to the gateway's tunnel
# address counts what the proxy relays; no other scold process runs. Cases: proxy without
# filter, proxy with its filter on (limits above the test's rate: the filter's cost, not
# its drops), and kernel forwarding through the proxy namespace (plain 64-byte UDP, 64
# flows = 64 source ports, same sender and sink). CPU: the proxy's engine threads, the
# whole proxy, and the machine's softirq time (the only figure kernel forwarding has).
# Engines (goal 4): the scold udp path with several TCP flows, every node on 1 and on 2
# engine threads ([tunnel] engines), with each node's engine CPU, so Gbit/s per engine
# core can be read off for a larger node.
# Flood (goal 5): an iperf3 TCP transfer through the scold udp path with the proxy's
# filter on and its XDP block list (generic), alternately without and with a flood
# (FLOOD_REPS pairs) from a namespace the proxy never admitted (f, 10.5.0.2) at FLOOD_PPS
# packets/s to the proxy's tunnel port; the filter blocks that source and XDP drops it.
# CPU is read from /proc (utime+stime, with reaped children) over the throughput run, in
# cores (1.0 = one core busy for the whole run). "relay": haproxy, socat, scold's NAT
# relay threads, or for the L3 paths scold's packet-engine threads on client, proxy and
# gateway together. "engines": the packet-engine threads behind the NAT relay. The kernel
# charges softirq work (a forwarded packet's trip through the next namespaces) to the
# process whose send triggered it, so each figure includes some of the path behind it.
#
# Needs root, iproute2, iperf3, haproxy, socat, python3, curl. Usage:
#   bench/dataplane.sh [SECONDS_PER_THROUGHPUT_RUN]      (default 5)
# SCOLD_BIN overrides the binary (default: a release build, made if missing).
set -euo pipefail
DUR=${1:-5}
RR_COUNT=${RR_COUNT:-3000}
FLOOD_PPS=${FLOOD_PPS:-300000}   # the blocked flood's rate in the flood case
FLOOD_REPS=${FLOOD_REPS:-2}      # alternating pairs of transfers without and with the flood
ENGINE_FLOWS=${ENGINE_FLOWS:-4}  # TCP flows of the engines case
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for t in ip iperf3 haproxy socat python3 curl; do
  command -v "$t" >/dev/null || { echo "missing $t (Debian: iproute2 iperf3 haproxy socat python3 curl)" >&2; exit 1; }
done
if [ -z "${SCOLD_BIN:-}" ]; then
  TD=${CARGO_TARGET_DIR:-$ROOT/target}
  (cd "$ROOT" && cargo build --release -p scold >&2)
  SCOLD_BIN=$TD/release/scold
fi
S=b$$
W=$(mktemp -d)
PIDS=()
SERVER_PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}" "${SERVER_PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for n in c p g t r f; do ip netns del $n$S 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
nsx() { local n=$1; shift; ip netns exec $n$S "$@"; }
bg() { local n=$1 log=$2; shift 2; ip netns exec $n$S "$@" >"$W/$log.log" 2>&1 & PIDS+=($!); }
stop_all() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; sleep 0.7; PIDS=(); }

# Topology (the tests' one): c 10.1.0.2 - 10.1.0.1 p 10.2.0.1 - 10.2.0.2 g 10.3.0.1 - 10.3.0.2 t 10.4.0.2 - r
# and the flooder f 10.5.0.2 - 10.5.0.1 p on a second link of the proxy.
for n in c p g t r f; do ip netns add $n$S; ip -n $n$S link set lo up; done
for ab in c:p p:g g:t t:r f:p; do a=${ab%%:*}; b=${ab##*:}
  ip link add $a$b$S type veth peer name $b$a$S
  ip link set $a$b$S netns $a$S; ip link set $b$a$S netns $b$S; done
while read -r n d a; do ip -n $n$S addr add $a dev $d$S; ip -n $n$S link set $d$S up; done <<EOT
c cp 10.1.0.2/24
p pc 10.1.0.1/24
p pg 10.2.0.1/24
g gp 10.2.0.2/24
g gt 10.3.0.1/24
t tg 10.3.0.2/24
t tr 10.4.0.2/24
r rt 10.4.0.1/24
f fp 10.5.0.2/24
p pf 10.5.0.1/24
EOT
# The flood leaves f as single datagrams, as from a real link (see pps.py).
ip -n f$S link set fp$S gso_max_segs 1
ip -n t$S route add default via 10.4.0.1
ip -n g$S route add 10.4.0.0/24 via 10.3.0.2

cat >"$W/rr.py" <<'EOP'
import socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(8)
    while True:
        c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            b = c.recv(1)
            if not b: break
            c.sendall(b)
        c.close()
else:
    n = int(sys.argv[4])
    c = socket.create_connection((host, port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(200): c.sendall(b"x"); c.recv(1)
    t0 = time.perf_counter()
    for _ in range(n): c.sendall(b"x"); c.recv(1)
    print("%.1f" % ((time.perf_counter() - t0) / n * 1e6))
EOP

# The pps sender and sink. "send" writes trains of 64 equal-sized datagrams per sendmsg
# (UDP_SEGMENT, so the kernel cuts them: a sender faster than the path), from one bound
# source port (encap: the whole inner packet as payload, as a scold udp client sends it;
# plain: the 64-byte payload alone, one socket per flow), until SECONDS or MAXCOUNT, at
# most RATE datagrams/s (0: as fast as it can); prints "sent seconds errors". "sink" counts
# datagrams (UDP_GRO: a train counts as its datagrams) until 1 s of silence after the
# first or MAX_SECONDS; prints "received first-to-last-seconds socket-drops". Both add
# their own CPU seconds.
cat >"$W/pps.py" <<'EOP'
import os, socket, struct, sys, time
UDP_SEGMENT, UDP_GRO, SO_RCVBUFFORCE = 103, 104, 33

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def inner(src, dst, sport, dport, payload):
    # The complete inner IPv4/UDP packet a scold client with encap "udp" carries.
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    ulen = 8 + len(payload)
    c = csum(s + d + struct.pack("!BBH", 0, 17, ulen) + struct.pack("!HHHH", sport, dport, ulen, 0) + payload) or 0xffff
    udp = struct.pack("!HHHH", sport, dport, ulen, c) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + udp

def send(a):
    # send DST PORT SRC SRCPORT encap|plain FLOWS SECONDS MAXCOUNT RATE [INNER_SRC INNER_DST]
    dst, port, src, sport, mode = a[0], int(a[1]), a[2], int(a[3]), a[4]
    flows, secs, maxcount, rate = int(a[5]), float(a[6]), int(a[7]), float(a[8])
    seg_n = 64
    payload = bytes(range(64))
    if mode == "encap":
        isrc, idst = a[9], a[10]
        dgrams = [inner(isrc, idst, 20000 + i, 9, payload) for i in range(flows)]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind((src, sport))
        socks = [s]
        # Trains of seg_n datagrams cycling through the flows.
        ntr = max(1, flows // seg_n)
        trains = [b"".join(dgrams[(t * seg_n + k) % flows] for k in range(seg_n)) for t in range(ntr)]
        plan = [(s, trains[t]) for t in range(ntr)]
    else:
        # Plain UDP, one socket (source port) per flow, the same 64-byte payload.
        socks = []
        for i in range(flows):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, sport + i)); socks.append(s)
        dgrams = [payload]
        plan = [(s, payload * seg_n) for s in socks]
    seg = len(dgrams[0])
    cmsg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))]
    addr = (dst, port)
    sent = errors = i = 0
    t0 = time.perf_counter(); deadline = t0 + secs
    np = len(plan)
    while sent < maxcount:
        now = time.perf_counter()
        if now >= deadline: break
        if rate > 0 and sent > rate * (now - t0):
            time.sleep(min(0.001, sent / rate - (now - t0))); continue
        sk, buf = plan[i % np]; i += 1
        try:
            sk.sendmsg([buf], cmsg, 0, addr); sent += seg_n
        except OSError:
            errors += 1
            if errors > 100000: break
    el = time.perf_counter() - t0
    t = os.times()
    print("%d %.6f %d %.3f" % (sent, el, errors, t.user + t.system))

def sink(a):
    # sink BIND PORT MAX_SECONDS: counts datagrams until 1 s of silence after the first
    host, port, maxs = a[0], int(a[1]), float(a[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    s.bind((host, port))
    buf = bytearray(65536)
    n = 0; drops = 0; t_first = t_last = None
    end = time.time() + maxs
    s.settimeout(maxs)
    while True:
        try:
            ln, anc, fl, _ = s.recvmsg_into([buf], 256)
        except socket.timeout:
            break
        now = time.perf_counter()
        if t_first is None:
            t_first = now
            s.settimeout(1.0)
        t_last = now
        seg = 0
        for lvl, typ, data in anc:
            if lvl == socket.SOL_UDP and typ == UDP_GRO: seg = struct.unpack("H", data[:2])[0] if len(data) == 2 else struct.unpack("i", data[:4])[0]
        n += (ln + seg - 1) // seg if seg else 1
        if time.time() > end: break
    dur = (t_last - t_first) if t_first is not None else 0.0
    # Datagrams the socket dropped because this reader fell behind (also after its last read).
    want = ":%04X" % port
    for line in open("/proc/net/udp").read().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(want): drops = int(f[-1])
    t = os.times()
    print("%d %.6f %d %.3f" % (n, dur, drops, t.user + t.system))

{"send": send, "sink": sink}[sys.argv[1]](sys.argv[2:])
EOP

# CPU ticks of a set of threads: "PID" (whole process with reaped children),
# "PID:NAME" (its threads named NAME), "PID:-NAME" (its threads not named NAME).
ticks() {
  local t=0 spec p name f c v
  for spec in "$@"; do
    p=${spec%%:*}; name=""; [ -n "$p" ] || continue
    [ "$spec" != "$p" ] && name=${spec#*:}
    if [ -z "$name" ]; then
      [ -r /proc/$p/stat ] && t=$((t + $(sed 's/.*) //' /proc/$p/stat | awk '{print $12+$13+$14+$15}')))
      continue
    fi
    for f in /proc/$p/task/*/stat; do
      [ -r "$f" ] || continue
      c=$(sed 's/^[0-9]* (\(.*\)) .*/\1/' "$f"); v=$(sed 's/.*) //' "$f" | awk '{print $12+$13}')
      if [ "${name#-}" != "$name" ]; then [ "$c" != "${name#-}" ] && t=$((t + v))
      else [ "$c" = "$name" ] && t=$((t + v)); fi
    done
  done
  echo $t
}
HZ=$(getconf CLK_TCK)
RESULTS=()
RELAY=(); ENGINES=()   # thread specs (see ticks) charged to the path measured next
measure() { # name ns host port_iperf port_rr
  local name=$1 ns=$2 host=$3 pi=$4 pr=$5 out bps retr rtt r0 e0 r1 e1 t0 t1 relay engines
  r0=$(ticks "${RELAY[@]:-}"); e0=$(ticks "${ENGINES[@]:-}"); t0=$(date +%s.%N)
  out=$(nsx "$ns" timeout $((DUR + 20)) iperf3 -c "$host" -p "$pi" -t "$DUR" -J 2>/dev/null \
        | python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; print("%.2f %d" % (e["sum_received"]["bits_per_second"]/1e9, e["sum_sent"].get("retransmits", 0)))' || echo "0 0")
  sleep 0.3   # let a forked relay child exit and be reaped, so its CPU is counted
  r1=$(ticks "${RELAY[@]:-}"); e1=$(ticks "${ENGINES[@]:-}"); t1=$(date +%s.%N)
  read -r bps retr <<<"$out"
  relay=$(python3 -c "print('%.2f' % (($r1 - $r0) / $HZ / ($t1 - $t0)) if ${#RELAY[@]} else '-')")
  engines=$(python3 -c "print('%.2f' % (($e1 - $e0) / $HZ / ($t1 - $t0)) if ${#ENGINES[@]} else '-')")
  # Median of five runs: one run is easily caught by a burst of other work on the machine.
  rtt=$(for _ in 1 2 3 4 5; do
          nsx "$ns" timeout 60 python3 "$W/rr.py" client "$host" "$pr" $((RR_COUNT / 5)) 2>/dev/null || echo nan
        done | python3 -c 'import sys, statistics; v = sorted(float(x) for x in sys.stdin.read().split()); print("%.1f" % statistics.median(v))')
  RESULTS+=("tcp $name gbps=$bps retr=$retr relay=$relay engines=$engines rtt=$rtt")
  printf '%-16s %8s Gbit/s %6s retr  relay %5s cores  engines %5s cores %8s us\n' \
    "$name" "$bps" "$retr" "$relay" "$engines" "$rtt" >&2
  RELAY=(); ENGINES=()
}

# One record per measurement in RESULTS: "KIND NAME key=value ...", read by the summary.
# Softirq ticks of the whole machine (/proc/stat): where the kernel's forwarding and
# socket delivery run, in whichever process's context triggered them.
softirq() { awk '/^cpu /{print $8}' /proc/stat; }
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }   # all CPUs, not idle
udp_drops() { # ns port: datagrams that socket's queue dropped
  nsx "$1" cat /proc/net/udp | awk -v p=":$(printf '%04X' "$2")" '$2 ~ p"$" {d += $NF} END {print d + 0}'
}
measure_pps() { # name ns dst mode(encap|plain): DUR s of 64-byte packets from ns to the sink on g
  local name=$1 ns=$2 dst=$3 mode=$4 seg0 sink sent sdur serr scpu recv rdur rdrop rcpu e0 e1 p0 p1 q0 q1 pd0 pd1 x0 x1 f0 f1
  seg0=$(ip -d -n "$ns$S" link show "${ns}p$S" | grep -o 'gso_max_segs [0-9]*' | cut -d' ' -f2)
  ip -n "$ns$S" link set "${ns}p$S" gso_max_segs 1   # single datagrams on the wire
  nsx g timeout $((DUR + 30)) python3 "$W/pps.py" sink 10.2.0.2 51820 $((DUR + 20)) >"$W/sink.out" 2>&1 &
  sink=$!; PIDS+=("$sink")
  sleep 0.5
  pd0=$(udp_drops p 51820)
  # The proxy's own counts, to check the sink against (0 without a proxy).
  x0=$(metric 'scold_tunnel_tx_packets_total{peer="gw",encap="udp"}'); f0=$(metric scold_filter_passed_total)
  e0=$(ticks "${ENGINES[@]:-}"); p0=$(ticks "${RELAY[@]:-}"); q0=$(softirq)
  read -r sent sdur serr scpu < <(nsx "$ns" timeout $((DUR + 20)) python3 "$W/pps.py" send "$dst" 51820 10.1.0.2 40000 \
      "$mode" 64 "$DUR" $((DUR * 5000000)) 0 10.1.0.2 10.4.0.2 || echo "0 1 0 0")
  sleep 0.2   # the proxy's last batches
  e1=$(ticks "${ENGINES[@]:-}"); p1=$(ticks "${RELAY[@]:-}"); q1=$(softirq)
  pd1=$(udp_drops p 51820)
  wait "$sink" || true   # it ends 1 s after the last datagram: the proxy's metrics are current
  read -r recv rdur rdrop rcpu <"$W/sink.out" || { recv=0; rdur=0; rdrop=0; rcpu=0; }
  x1=$(metric 'scold_tunnel_tx_packets_total{peer="gw",encap="udp"}'); f1=$(metric scold_filter_passed_total)
  ip -n "$ns$S" link set "${ns}p$S" gso_max_segs "$seg0"
  RESULTS+=("pps $name sent=$sent secs=$sdur recv=$recv rsecs=$rdur sinkdrop=$rdrop proxydrop=$((pd1 - pd0)) engine_ticks=$([ ${#ENGINES[@]} -gt 0 ] && echo $((e1 - e0)) || echo -) proxy_ticks=$([ ${#RELAY[@]} -gt 0 ] && echo $((p1 - p0)) || echo -) softirq_ticks=$((q1 - q0)) sender_cpu=${scpu:-0} sink_cpu=${rcpu:-0} hz=$HZ")
  printf '%-16s pps: sent %s in %ss, sink %s (+%s dropped at its socket) in %ss, proxy socket dropped %s, proxy relayed %s, its filter passed %s\n' \
    "$name" "$sent" "$sdur" "$recv" "$rdrop" "$rdur" "$((pd1 - pd0))" \
    "$(python3 -c "print(int(float('$x1') - float('$x0')))")" "$(python3 -c "print(int(float('$f1') - float('$f0')))")" >&2
  ENGINES=(); RELAY=()
}

metric() { # name: a counter from the proxy's Prometheus endpoint (0 when not reachable)
  { nsx p curl -s --max-time 2 http://127.0.0.1:9801/metrics 2>/dev/null || true; } | awk -v m="$1" '$1 == m {print $2; f=1} END {if (!f) print 0}'
}
measure_flood() { # name rate: iperf3 TCP through the scold udp path, a flood from f at rate pps (0: none)
  local name=$1 rate=$2 bps e0 e1 p0 p1 q0 q1 b0 b1 t0 t1 x0 x1 fpid="" fsent=0 fsecs=0 ferr fcpu=-
  x0=$(metric scold_filter_xdp_dropped_total)
  if [ "$rate" != 0 ]; then
    nsx f timeout $((DUR + 20)) python3 "$W/pps.py" send 10.5.0.1 51820 10.5.0.2 40000 encap 64 $((DUR + 3)) \
      $((rate * (DUR + 3))) "$rate" 10.5.0.2 10.4.0.2 >"$W/flood.out" 2>&1 &
    fpid=$!; PIDS+=("$fpid")
    sleep 1.5   # the filter blocks the source within its first second
  fi
  e0=$(ticks "${ENGINES[@]}"); p0=$(ticks "${RELAY[@]}"); q0=$(softirq); b0=$(busy); t0=$(date +%s.%N)
  bps=$(nsx c timeout $((DUR + 20)) iperf3 -c 10.4.0.2 -p 5201 -t "$DUR" -J 2>/dev/null \
        | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' || echo 0)
  e1=$(ticks "${ENGINES[@]}"); p1=$(ticks "${RELAY[@]}"); q1=$(softirq); b1=$(busy); t1=$(date +%s.%N)
  if [ -n "$fpid" ]; then
    wait "$fpid" || true
    read -r fsent fsecs ferr fcpu <"$W/flood.out" || { fsent=0; fsecs=0; fcpu=-; }
  fi
  sleep 1.5   # the proxy hands its filter counters to the metrics once a second
  x1=$(metric scold_filter_xdp_dropped_total)
  RESULTS+=("flood $name gbps=$bps flood_sent=${fsent:-0} xdp_dropped=$(python3 -c "print(int(float('$x1') - float('$x0')))") engine_ticks=$((e1 - e0)) proxy_ticks=$((p1 - p0)) softirq_ticks=$((q1 - q0)) busy_ticks=$((b1 - b0)) flood_secs=$fsecs flood_cpu=${fcpu:--} secs=$(python3 -c "print('%.3f' % ($t1 - $t0))") hz=$HZ")
  printf '%-16s %8s Gbit/s, flood sent %s, XDP dropped %s\n' "$name" "$bps" "${fsent:-0}" "$(python3 -c "print(int(float('$x1') - float('$x0')))")" >&2
  ENGINES=(); RELAY=()
}

# Servers on the target (and one on the proxy for the direct path).
bg t iperf-t iperf3 -s -B 10.4.0.2 -p 5201
bg t rr-t python3 "$W/rr.py" server 10.4.0.2 7001
bg p iperf-p iperf3 -s -B 10.1.0.1 -p 5201
bg p rr-p python3 "$W/rr.py" server 10.1.0.1 7001
SERVER_PIDS=("${PIDS[@]}"); PIDS=()
sleep 0.5

measure direct c 10.1.0.1 5201 7001

# Kernel forwarding along the same path, and the two relay peers on top of it.
nsx p sysctl -qw net.ipv4.ip_forward=1; nsx g sysctl -qw net.ipv4.ip_forward=1
ip -n c$S route add 10.4.0.0/24 via 10.1.0.1
ip -n p$S route add 10.4.0.0/24 via 10.2.0.2
ip -n g$S route add 10.1.0.0/24 via 10.2.0.1
ip -n t$S route add 10.1.0.0/24 via 10.3.0.1
ip -n t$S route add 10.2.0.0/24 via 10.3.0.1
measure kernel-fwd c 10.4.0.2 5201 7001
# Packets per second through the proxy namespace's kernel forwarding to the sink on g.
ip -n c$S route add 10.2.0.0/24 via 10.1.0.1
measure_pps kernel-fwd c 10.2.0.2 plain
ip -n c$S route del 10.2.0.0/24 via 10.1.0.1
cat >"$W/haproxy.cfg" <<EOH
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen iperf
  bind 10.1.0.1:5301
  server t 10.4.0.2:5201
listen rr
  bind 10.1.0.1:7301
  server t 10.4.0.2:7001
EOH
bg p haproxy haproxy -f "$W/haproxy.cfg" -db
sleep 0.5
RELAY=("${PIDS[-1]}")
measure haproxy c 10.1.0.1 5301 7301
stop_all
bg p socat1 socat TCP4-LISTEN:5401,fork,reuseaddr TCP4:10.4.0.2:5201
bg p socat2 socat TCP4-LISTEN:7401,fork,reuseaddr,nodelay TCP4:10.4.0.2:7001,nodelay
sleep 0.5
RELAY=("${PIDS[-2]}")
measure socat c 10.1.0.1 5401 7401
stop_all
ip -n c$S route del 10.4.0.0/24 via 10.1.0.1
ip -n p$S route del 10.4.0.0/24 via 10.2.0.2
ip -n t$S route del 10.1.0.0/24 via 10.3.0.1
nsx p sysctl -qw net.ipv4.ip_forward=0

keypair() { "$SCOLD_BIN" proxy --genkey | python3 -c 'import sys; l=sys.stdin.read().split("\n"); print(l[0].split("\"")[1], l[1].split(": ")[1])'; }
read -r KP KPP < <(keypair); read -r KG KGP < <(keypair); read -r KC KCP < <(keypair)
tun() { local e=$1 l=$2 k=$3; echo "[tunnel]"; echo "engines = ${ENGINES_N:-1}"; echo "encap = \"$e\""; echo "listen = \"$l\"";
  [ "$e" = ipip ] && echo "ipip = true"; [ "$e" = wireguard ] && echo "private_key = \"$k\""; true; }
peer() { local name=$1 a=$2 port=$3 e=$4 pub=$5; echo "[[peers]]"; echo "engines = ${ENGINES_N:-1}"; echo "name = \"$name\""; echo "address = \"$a\""; echo "encap = \"$e\"";
  [ -n "$port" ] && [ "$e" != ipip ] && echo "port = $port"; [ "$e" = wireguard ] && echo "public_key = \"$pub\""; true; }

# filter: "" (none), "limits" (limits above any test's rate: its cost, not its drops),
# "flood" (default per-source UDP limit, so a flooder gets blocked; XDP block list on the
# flooder's link). roles: "all", or "proxy" alone (the pps sender and sink stand in for
# client and gateway).
run_scold() { # encap nat(0/1) [filter] [roles]
  local e=$1 nat=$2 filter=${3:-} roles=${4:-all}
  { echo "lan_interface = \"gt$S\""; tun "$e" 0.0.0.0:51820 "$KG"; peer proxy 10.2.0.1 "" "$e" "$KPP"; } >"$W/g.toml"
  { tun "$e" 0.0.0.0:51820 "$KP"
    printf '[control]\nmetrics = "127.0.0.1:9801"\n'
    [ "$filter" = limits ] && printf '[filter]\ninterface = "pc%s"\npps = 1e9\nbytes_per_s = 1e12\nudp_pps = 1e9\nnew_source_pps = 0\n' "$S"
    [ "$filter" = flood ] && printf '[filter]\ninterface = "pf%s"\nxdp = "generic"\npps = 1e9\nbytes_per_s = 1e12\nnew_source_pps = 0\n' "$S"
    peer gw 10.2.0.2 51820 "$e" "$KGP"
    printf '[[routes]]\ndestination = "10.4.0.2/32"\nvia = { peer = "gw" }\n'
    printf '[[sessions]]\nclient = "10.1.0.2"\nencap = "%s"\ntargets = ["10.4.0.2/32"]\n' "$e"
    [ "$e" = wireguard ] && echo "public_key = \"$KCP\""
    if [ "$nat" = 1 ]; then
      printf '[nat]\nsource = "100.64.0.1"\n'
      printf '[[nat_services]]\nprotocol = "tcp"\nlisten = "10.1.0.1:5501"\ntarget = "10.4.0.2:5201"\n'
      printf '[[nat_services]]\nprotocol = "tcp"\nlisten = "10.1.0.1:7501"\ntarget = "10.4.0.2:7001"\n'
    fi; true; } >"$W/p.toml"
  printf 'source = "10.4.0.2"\n[[routes]]\ndestination = "10.1.0.2/32"\nvia = { gateway = "10.3.0.1" }\n[[routes]]\ndestination = "100.64.0.1/32"\nvia = { gateway = "10.3.0.1" }\n' >"$W/t.toml"
  { echo 'source = "10.1.0.2"'; tun "$e" 0.0.0.0:0 "$KC"; peer proxy 10.1.0.1 51820 "$e" "$KPP"
    printf '[[routes]]\ndestination = "10.4.0.2/32"\nvia = { peer = "proxy" }\n'; } >"$W/c.toml"
  bg p proxy "$SCOLD_BIN" proxy -c "$W/p.toml"; PID_P=${PIDS[-1]}
  PID_C=""; PID_G=""
  if [ "$roles" = proxy ]; then sleep 1; return; fi
  bg g gateway "$SCOLD_BIN" gateway -c "$W/g.toml"; PID_G=${PIDS[-1]}
  bg t target "$SCOLD_BIN" target -c "$W/t.toml"
  [ "$nat" = 1 ] || { bg c client "$SCOLD_BIN" client -c "$W/c.toml"; PID_C=${PIDS[-1]}; }
  sleep 1
  nsx c ping -c 2 -W 2 10.4.0.2 >/dev/null 2>&1 || true
}

for e in udp ipip wireguard; do
  run_scold $e 0
  RELAY=("$PID_C:scold-engine" "$PID_P:scold-engine" "$PID_G:scold-engine")
  measure scold-$e c 10.4.0.2 5201 7001
  stop_all
done
# Packets per second through the proxy alone: the sender plays the client, the sink the
# gateway. ENGINES: the proxy's engine threads; RELAY: the whole proxy (its filter's
# watcher thread included).
for f in "" limits; do
  run_scold udp 0 "$f" proxy
  ENGINES=("$PID_P:scold-engine"); RELAY=("$PID_P")
  measure_pps "proxy-udp${f:++filter}" c 10.1.0.1 encap
  stop_all
done
# A legitimate transfer through the whole udp path while the proxy drops a blocked flood.
run_scold udp 0 flood
# Alternating, so neither case always runs first after start-up; one transfer of DUR
# seconds moves by tens of percent on this machine.
for i in $(seq "$FLOOD_REPS"); do
  ENGINES=("$PID_P:scold-engine"); RELAY=("$PID_P")
  measure_flood "no-flood/$i" 0
  ENGINES=("$PID_P:scold-engine"); RELAY=("$PID_P")
  measure_flood "flood/$i" "$FLOOD_PPS"
done
nsx p nft list table inet scold 2>/dev/null | grep -q 10.5.0.2 \
  && echo "flood source 10.5.0.2 is in the proxy's nftables block set" >&2 \
  || echo "flood source 10.5.0.2 is NOT in the proxy's block set (see $W/proxy.log)" >&2
stop_all
run_scold udp 1
RELAY=("$PID_P:-scold-engine"); ENGINES=("$PID_P:scold-engine" "$PID_G:scold-engine")
measure scold-nat c 10.1.0.1 5501 7501
stop_all

# Engines (goal 4): the scold udp path with ENGINE_FLOWS TCP flows (iperf3 -P), every
# node on 1, then 2 engine threads, twice each, alternating; the CPU of each node's
# engine threads. udp tunnels spread over the engines by inner flow.
measure_engines() { # name n
  local name=$1 n=$2 c0 p0 g0 c1 p1 g1 t0 t1 bps
  c0=$(ticks "$PID_C:scold-engine"); p0=$(ticks "$PID_P:scold-engine"); g0=$(ticks "$PID_G:scold-engine"); t0=$(date +%s.%N)
  bps=$(nsx c timeout $((DUR + 20)) iperf3 -c 10.4.0.2 -p 5201 -P "$ENGINE_FLOWS" -t "$DUR" -J 2>/dev/null \
        | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' || echo 0)
  c1=$(ticks "$PID_C:scold-engine"); p1=$(ticks "$PID_P:scold-engine"); g1=$(ticks "$PID_G:scold-engine"); t1=$(date +%s.%N)
  RESULTS+=("engines $name n=$n gbps=$bps client_ticks=$((c1 - c0)) proxy_ticks=$((p1 - p0)) gateway_ticks=$((g1 - g0)) secs=$(python3 -c "print('%.3f' % ($t1 - $t0))") hz=$HZ")
  printf '%-16s %8s Gbit/s with %s engine(s) per node, %s flows\n' "$name" "$bps" "$n" "$ENGINE_FLOWS" >&2
}
for rep in 1 2; do
  for n in 1 2; do
    ENGINES_N=$n run_scold udp 0
    measure_engines "udp-e$n/$rep" "$n"
    stop_all
  done
done

# The user-space WireGuard peer in the same layout. Inner addresses 10.9.0.0/24 (the
# client's tunnel address), so a route into a tunnel never covers the outer addresses.
if command -v wireguard-go >/dev/null && command -v wg >/dev/null; then
  wgo() { # ns ifname private-key listen-port [wg set peer arguments...]
    local n=$1 i=$2 k=$3 lp=$4; shift 4
    bg "$n" "wgo-$i" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$i"
    WGO_PIDS+=("${PIDS[-1]}")
    for _ in $(seq 50); do ip -n "$n$S" link show "$i" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "$k" >"$W/$i.key"
    nsx "$n" wg set "$i" private-key "$W/$i.key" listen-port "$lp" "$@"
    ip -n "$n$S" link set "$i" up
  }
  WGO_PIDS=()
  nsx p sysctl -qw net.ipv4.ip_forward=1
  wgo c wc$S "$KC" 0 peer "$KPP" endpoint 10.1.0.1:51830 allowed-ips 10.4.0.0/24
  wgo p wpc$S "$KP" 51830 peer "$KCP" allowed-ips 10.9.0.2/32
  wgo p wpg$S "$KP" 51831 peer "$KGP" endpoint 10.2.0.2:51830 allowed-ips 10.4.0.0/24
  wgo g wg$S "$KG" 51830 peer "$KPP" endpoint 10.2.0.1:51831 allowed-ips 10.9.0.0/24
  ip -n c$S addr add 10.9.0.2/32 dev wc$S
  ip -n c$S route add 10.4.0.2/32 dev wc$S src 10.9.0.2
  ip -n p$S route add 10.9.0.2/32 dev wpc$S
  ip -n p$S route add 10.4.0.2/32 dev wpg$S
  ip -n g$S route add 10.9.0.0/24 dev wg$S
  ip -n t$S route add 10.9.0.0/24 via 10.3.0.1
  nsx c ping -c 2 -W 2 10.4.0.2 >/dev/null 2>&1 || echo "wireguard-go: no ping through the tunnels yet" >&2
  RELAY=("${WGO_PIDS[@]}")
  measure wireguard-go c 10.4.0.2 5201 7001
  stop_all
  ip -n t$S route del 10.9.0.0/24 via 10.3.0.1 2>/dev/null || true
  nsx p sysctl -qw net.ipv4.ip_forward=0
else
  echo "wireguard-go or wg missing: apt-get install --no-install-recommends wireguard-go wireguard-tools; skipping that peer" >&2
fi

# One summary over every record of this run: the tables, then each speed goal (listed in
# docs/dataplane.md, "Benchmark") with
# its ratio from this run. A new kind of measurement adds a record and its lines here.
python3 - "${RESULTS[@]}" <<'EOP'
import math, sys
recs = {}
for a in sys.argv[1:]:
    f = a.split()
    d = {}
    for kv in f[2:]:
        k, v = kv.split("=", 1)
        try:
            d[k] = float(v)
        except ValueError:
            d[k] = None
    recs.setdefault(f[0], {})[f[1]] = d
tcp, pps, flood = recs.get("tcp", {}), recs.get("pps", {}), recs.get("flood", {})
engines = recs.get("engines", {})
nan = float("nan")
def div(a, b):
    try:
        return a / b if a is not None and b else nan
    except TypeError:
        return nan
def fmt(v, f="%.2f"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f % v

print("\n%-16s %10s %6s %8s %9s %8s %8s" % ("path", "Gbit/s", "retr", "RTT us", "relay", "Gb/core", "engines"))
for n, r in tcp.items():
    print("%-16s %10s %6s %8s %9s %8s %8s" % (n, fmt(r["gbps"]), fmt(r["retr"], "%d"), fmt(r["rtt"], "%.1f"),
          fmt(r["relay"]), fmt(div(r["gbps"], r["relay"]), "%.1f"), fmt(r["engines"])))

def cores(r, k, secs):
    return div(r[k] / r["hz"], secs) if r.get(k) is not None else nan
def delivered(r):  # datagrams that reached the sink's socket, per second
    return div(r["recv"] + r["sinkdrop"], r["rsecs"])
print("\npackets per second, 64-byte UDP payloads, 64 flows (cores over the sender's %s s)" % fmt(next(iter(pps.values()), {}).get("secs"), "%.0f"))
print("%-18s %10s %10s %9s %9s %8s %8s %8s %8s %8s %9s %9s" % ("path", "sent/s", "at sink/s", "sinkdrop", "proxydrop",
      "engines", "proxy", "softirq", "sender", "sink", "Mpps/eng", "Mpps/sirq"))
for n, r in pps.items():
    print("%-18s %10.0f %10.0f %9d %9d %8s %8s %8s %8s %8s %9s %9s" % (
        n, div(r["sent"], r["secs"]), delivered(r), r["sinkdrop"], r["proxydrop"],
        fmt(cores(r, "engine_ticks", r["secs"])), fmt(cores(r, "proxy_ticks", r["secs"])),
        fmt(cores(r, "softirq_ticks", r["secs"])), fmt(div(r["sender_cpu"], r["secs"])),
        fmt(div(r["sink_cpu"], r["rsecs"])),
        fmt(div(delivered(r) * r["rsecs"] / 1e6, (r["engine_ticks"] or 0) / r["hz"])),
        fmt(div(delivered(r) * r["rsecs"] / 1e6, r["softirq_ticks"] / r["hz"]))))
print("(cores: engines = the proxy's engine threads, proxy = the whole proxy process, softirq = the"
      " machine's softirq time, sender/sink = the test's own; Mpps per engine core and per softirq core"
      " count the datagrams delivered to the sink's socket)")

if flood:
    print("\nlegitimate TCP transfer (scold udp path, filter + XDP generic) and a blocked flood")
    print("%-12s %8s %12s %12s %8s %8s %8s %8s %8s" % ("case", "Gbit/s", "flood sent", "XDP dropped", "engines", "proxy", "softirq", "flooder", "machine"))
    for n, r in flood.items():
        print("%-12s %8s %12d %12d %8s %8s %8s %8s %8s" % (n, fmt(r["gbps"]), r["flood_sent"], r["xdp_dropped"],
              fmt(cores(r, "engine_ticks", r["secs"])), fmt(cores(r, "proxy_ticks", r["secs"])),
              fmt(cores(r, "softirq_ticks", r["secs"])), fmt(div(r["flood_cpu"], r["flood_secs"])),
              fmt(cores(r, "busy_ticks", r["secs"]))))
    print("(cores: engines and proxy as above, flooder = the flood's sender, machine = all CPUs' busy time)")

eng = {}
if engines:
    print("\nengine threads per node, scold udp path, several TCP flows (cores: each node's engine threads)")
    print("%-12s %8s %8s %8s %8s %8s %14s %14s" % ("case", "Gbit/s", "client", "proxy", "gateway", "all", "Gb/proxy-core", "Gb/engine-core"))
    for n, r in engines.items():
        c, p, gw = (div(r[k] / r["hz"], r["secs"]) for k in ("client_ticks", "proxy_ticks", "gateway_ticks"))
        print("%-12s %8s %8s %8s %8s %8s %14s %14s" % (n, fmt(r["gbps"]), fmt(c), fmt(p), fmt(gw), fmt(c + p + gw),
              fmt(div(r["gbps"], p), "%.1f"), fmt(div(r["gbps"], c + p + gw), "%.1f")))
        e = eng.setdefault(int(r["n"]), {"gbps": [], "proxy": [], "all": []})
        e["gbps"].append(r["gbps"]); e["proxy"].append(p); e["all"].append(c + p + gw)

print("\nspeed goals, ratios from this run:")
def goal(text, v, ok):
    if v is None or math.isnan(v):
        print("  %-74s %7s  not measured" % (text, "-"))
    else:
        print("  %-74s %7.2f  %s" % (text, v, "met" if ok(v) else "NOT met"))
def g(d, n, k):
    return d.get(n, {}).get(k)
h, nat = tcp.get("haproxy", {}), tcp.get("scold-nat", {})
goal("1  NAT relay throughput / HAProxy's (>= 1)", div(nat.get("gbps"), h.get("gbps")), lambda v: v >= 1)
nat_cores = (nat.get("relay") or 0) + (nat.get("engines") or 0) if nat.get("relay") is not None else None
goal("1  NAT Gbit/s per core (relay + engine threads) / HAProxy's per core (>= 1)",
     div(div(nat.get("gbps"), nat_cores), div(h.get("gbps"), h.get("relay"))), lambda v: v >= 1)
def added(n):
    try:
        return tcp[n]["rtt"] - tcp["kernel-fwd"]["rtt"]
    except (KeyError, TypeError):
        return nan
for n in ("scold-udp", "scold-ipip", "scold-wireguard", "scold-nat"):
    goal("2  %s added RTT / HAProxy's (%s / %s us; <= 2)" % (n, fmt(added(n), "%.0f"), fmt(added("haproxy"), "%.0f")),
         div(added(n), added("haproxy")) if added("haproxy") > 0 else nan, lambda v: v <= 2)
k = g(tcp, "kernel-fwd", "gbps")
goal("3  udp / kernel forwarding throughput (>= 0.4)", div(g(tcp, "scold-udp", "gbps"), k), lambda v: v >= 0.4)
goal("3  wireguard / kernel forwarding throughput (>= 0.25)", div(g(tcp, "scold-wireguard", "gbps"), k), lambda v: v >= 0.25)
goal("3  ipip / udp throughput (>= 1)", div(g(tcp, "scold-ipip", "gbps"), g(tcp, "scold-udp", "gbps")), lambda v: v >= 1)
if 1 in eng and 2 in eng:
    m = {n: {k: sum(v) / len(v) for k, v in e.items()} for n, e in eng.items()}
    goal("4  udp path, 2 engines per node / 1 engine: throughput (means)", div(m[2]["gbps"], m[1]["gbps"]), lambda v: v >= 1)
    print("     Gbit/s per engine core (client+proxy+gateway): 1 engine %s, 2 engines %s; per proxy engine core: %s, %s" % (
          fmt(div(m[1]["gbps"], m[1]["all"]), "%.1f"), fmt(div(m[2]["gbps"], m[2]["all"]), "%.1f"),
          fmt(div(m[1]["gbps"], m[1]["proxy"]), "%.1f"), fmt(div(m[2]["gbps"], m[2]["proxy"]), "%.1f")))
pf, kf = pps.get("proxy-udp+filter"), pps.get("kernel-fwd")
if pf:
    goal("5  proxy with filter: received Mpps per engine core (>= 1)",
         div(delivered(pf) * pf["rsecs"] / 1e6, (pf["engine_ticks"] or 0) / pf["hz"]), lambda v: v >= 1)
    if kf:
        print("     beside kernel forwarding: received/s %.2f x kernel forwarding's; per core %.2f x (kernel: per softirq core)" % (
              div(delivered(pf), delivered(kf)),
              div(div(delivered(pf) * pf["rsecs"], (pf["engine_ticks"] or 0) / pf["hz"]),
                  div(delivered(kf) * kf["rsecs"], kf["softirq_ticks"] / kf["hz"]))))
def mean_gbps(prefix):
    v = [r["gbps"] for n, r in flood.items() if n.split("/")[0] == prefix]
    return sum(v) / len(v) if v else nan
goal("5  legitimate throughput under a blocked flood / without, means (>= 0.90)",
     div(mean_gbps("flood"), mean_gbps("no-flood")), lambda v: v >= 0.9)

if tcp.get("wireguard-go", {}).get("gbps"):
    wg, sw = tcp["wireguard-go"], tcp["scold-wireguard"]
    print("\nscold wireguard vs wireguard-go, same layout: throughput %.2f; per core: scold %s Gbit/s (client+proxy+gateway engines), wireguard-go %s (its four processes)"
          % (div(sw["gbps"], wg["gbps"]), fmt(div(sw["gbps"], sw["relay"])), fmt(div(wg["gbps"], wg["relay"]))))
if "socat" in tcp:
    print("socat vs HAProxy throughput: %.2f" % div(tcp["socat"]["gbps"], h.get("gbps")))
EOP
