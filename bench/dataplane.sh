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
# Packets per second: small UDP datagrams (64-byte payloads, iperf3 -u -b 0, two flows)
# through kernel forwarding, the scold udp path, and the scold udp path with the proxy's
# filter on (its per-source limits set above the test's rate, so what is measured is the
# filter's cost, not its drops): packets sent and received per second, and received
# packets per engine core.
#
# CPU is read from /proc (utime+stime, with reaped children) over the throughput run, in
# cores (1.0 = one core busy for the whole run). "relay": haproxy, socat, scold's NAT
# relay threads, or for the L3 paths scold's packet-engine threads on client, proxy and
# gateway together. "engines": the packet-engine threads behind the NAT relay. The kernel
# charges softirq work (a forwarded packet's trip through the next namespaces) to the
# process whose send triggered it, so each figure includes some of the path behind it.
#
# Needs root, iproute2, iperf3, haproxy, socat, python3. Usage:
#   bench/dataplane.sh [SECONDS_PER_THROUGHPUT_RUN]      (default 5)
# SCOLD_BIN overrides the binary (default: a release build, made if missing).
set -euo pipefail
DUR=${1:-5}
RR_COUNT=${RR_COUNT:-3000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for t in ip iperf3 haproxy socat python3; do
  command -v "$t" >/dev/null || { echo "missing $t (Debian: iproute2 iperf3 haproxy socat python3)" >&2; exit 1; }
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
  for n in c p g t r; do ip netns del $n$S 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
nsx() { local n=$1; shift; ip netns exec $n$S "$@"; }
bg() { local n=$1 log=$2; shift 2; ip netns exec $n$S "$@" >"$W/$log.log" 2>&1 & PIDS+=($!); }
stop_all() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; sleep 0.7; PIDS=(); }

# Topology (the tests' one): c 10.1.0.2 - 10.1.0.1 p 10.2.0.1 - 10.2.0.2 g 10.3.0.1 - 10.3.0.2 t 10.4.0.2 - r
for n in c p g t r; do ip netns add $n$S; ip -n $n$S link set lo up; done
for ab in c:p p:g g:t t:r; do a=${ab%%:*}; b=${ab##*:}
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
EOT
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
  RESULTS+=("$name $bps $retr $relay $engines $rtt")
  printf '%-16s %8s Gbit/s %6s retr  relay %5s cores  engines %5s cores %8s us\n' \
    "$name" "$bps" "$retr" "$relay" "$engines" "$rtt" >&2
  RELAY=(); ENGINES=()
}

PPS=()
measure_pps() { # name ns host port: 64-byte UDP payloads, two flows, for DUR seconds
  local name=$1 ns=$2 host=$3 p=$4 out sent recv r0 r1 t0 t1 cores
  r0=$(ticks "${RELAY[@]:-}"); t0=$(date +%s.%N)
  out=$(nsx "$ns" timeout $((DUR + 20)) iperf3 -c "$host" -p "$p" -u -l 64 -b 0 -P 2 -t "$DUR" -J 2>/dev/null \
        | python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; s=e["sum_sent"]; r=e["sum_received"]; print("%.0f %.0f" % (s["packets"]/s["seconds"], r["bytes"]/64/r["seconds"]))' || echo "0 0")
  r1=$(ticks "${RELAY[@]:-}"); t1=$(date +%s.%N)
  read -r sent recv <<<"$out"
  cores=$(python3 -c "print('%.2f' % (($r1 - $r0) / $HZ / ($t1 - $t0)) if ${#RELAY[@]} else '-')")
  PPS+=("$name $sent $recv $cores")
  printf '%-16s pps: sent %9s/s received %9s/s  engines %5s cores\n' "$name" "$sent" "$recv" "$cores" >&2
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
measure_pps kernel-fwd c 10.4.0.2 5201
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
tun() { local e=$1 l=$2 k=$3; echo "[tunnel]"; echo "encap = \"$e\""; echo "listen = \"$l\"";
  [ "$e" = ipip ] && echo "ipip = true"; [ "$e" = wireguard ] && echo "private_key = \"$k\""; true; }
peer() { local name=$1 a=$2 port=$3 e=$4 pub=$5; echo "[[peers]]"; echo "name = \"$name\""; echo "address = \"$a\""; echo "encap = \"$e\"";
  [ -n "$port" ] && [ "$e" != ipip ] && echo "port = $port"; [ "$e" = wireguard ] && echo "public_key = \"$pub\""; true; }

run_scold() { # encap nat(0/1) [filter]
  local e=$1 nat=$2 filter=${3:-}
  { echo "lan_interface = \"gt$S\""; tun "$e" 0.0.0.0:51820 "$KG"; peer proxy 10.2.0.1 "" "$e" "$KPP"; } >"$W/g.toml"
  { tun "$e" 0.0.0.0:51820 "$KP"
    [ -n "$filter" ] && printf '[filter]\ninterface = "pc%s"\npps = 1e9\nbytes_per_s = 1e12\nudp_pps = 1e9\nnew_source_pps = 0\n' "$S"
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
  bg g gateway "$SCOLD_BIN" gateway -c "$W/g.toml"; PID_G=${PIDS[-1]}
  bg p proxy "$SCOLD_BIN" proxy -c "$W/p.toml"; PID_P=${PIDS[-1]}
  bg t target "$SCOLD_BIN" target -c "$W/t.toml"
  PID_C=""; [ "$nat" = 1 ] || { bg c client "$SCOLD_BIN" client -c "$W/c.toml"; PID_C=${PIDS[-1]}; }
  sleep 1
  nsx c ping -c 2 -W 2 10.4.0.2 >/dev/null 2>&1 || true
}

for e in udp ipip wireguard; do
  run_scold $e 0
  RELAY=("$PID_C:scold-engine" "$PID_P:scold-engine" "$PID_G:scold-engine")
  measure scold-$e c 10.4.0.2 5201 7001
  if [ "$e" = udp ]; then
    RELAY=("$PID_C:scold-engine" "$PID_P:scold-engine" "$PID_G:scold-engine")
    measure_pps scold-udp c 10.4.0.2 5201
  fi
  stop_all
done
run_scold udp 0 filter
RELAY=("$PID_C:scold-engine" "$PID_P:scold-engine" "$PID_G:scold-engine")
measure_pps scold-udp+filter c 10.4.0.2 5201
stop_all
run_scold udp 1
RELAY=("$PID_P:-scold-engine"); ENGINES=("$PID_P:scold-engine" "$PID_G:scold-engine")
measure scold-nat c 10.1.0.1 5501 7501
stop_all

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

printf '\n%-18s %12s %12s %8s %14s\n' "pps (64 B UDP)" "sent/s" "received/s" engines "Mpps/engine-core"
for r in "${PPS[@]}"; do set -- $r
  per=$(python3 -c "import sys; r, c = sys.argv[1:]; print('%.2f' % (float(r) / 1e6 / float(c)) if c not in ('-', '0.00') else '-')" "$3" "$4")
  printf '%-18s %12s %12s %8s %14s\n' "$1" "$2" "$3" "$4" "$per"; done
python3 - "${PPS[@]}" <<'EOP'
import sys
r = {a.split()[0]: float(a.split()[2]) for a in sys.argv[1:]}
k = r.get("kernel-fwd") or 1
print("received packets/s vs kernel forwarding: " + ", ".join("%s %.2f" % (n, v / k) for n, v in r.items() if n != "kernel-fwd"))
EOP

printf '\n%-16s %10s %6s %8s %9s %8s %8s\n' path "Gbit/s" retr "RTT us" "relay" "Gb/core" engines
for r in "${RESULTS[@]}"; do set -- $r
  per=$(python3 -c "import sys; t, c = sys.argv[1:]; print('%.1f' % (float(t) / float(c)) if c not in ('-', '0.00') else '-')" "$2" "$4")
  printf '%-16s %10s %6s %8s %9s %8s %8s\n' "$1" "$2" "$3" "$6" "$4" "$per" "$5"; done
python3 - "${RESULTS[@]}" <<'EOP'
import sys
r = {}
for a in sys.argv[1:]:
    f = a.split()
    r[f[0]] = (float(f[1]), f[3], f[5])
d = r["direct"][0] or 1
print("\nratios to the direct path (goal: udp/ipip >= 0.25):")
for k in ("kernel-fwd", "scold-udp", "scold-ipip", "scold-wireguard"):
    print("  %-16s %.2f" % (k, r[k][0] / d))
h = r["haproxy"][0] or 1
print("NAT relay vs HAProxy (goal >= 1.0): throughput %.2f; socat vs HAProxy: %.2f" % (r["scold-nat"][0] / h, r["socat"][0] / h))
try:
    per = lambda k: r[k][0] / float(r[k][1])
    print("  per relay core: scold-nat %.1f Gbit/s, HAProxy %.1f Gbit/s (ratio %.2f)"
          % (per("scold-nat"), per("haproxy"), per("scold-nat") / per("haproxy")))
except (ValueError, ZeroDivisionError):
    pass
def added(k):
    try:
        return float(r[k][2]) - float(r["kernel-fwd"][2])
    except ValueError:
        return float("nan")
print("round-trip time added over kernel forwarding (us): " + ", ".join(
    "%s %.0f" % (k, added(k)) for k in ("haproxy", "socat", "scold-udp", "scold-ipip", "scold-wireguard", "scold-nat", "wireguard-go") if k in r))
if "wireguard-go" in r and r["wireguard-go"][0]:
    g = r["wireguard-go"]
    print("scold wireguard vs wireguard-go, same layout: throughput %.2f" % (r["scold-wireguard"][0] / g[0]))
    try:
        print("  per core: scold wireguard %.2f Gbit/s (client+proxy+gateway engines), wireguard-go %.2f Gbit/s (its four processes)"
              % (r["scold-wireguard"][0] / float(r["scold-wireguard"][1]), g[0] / float(g[1])))
    except (ValueError, ZeroDivisionError):
        pass
EOP
