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
# For each: TCP throughput (iperf3, one stream) and request/response round-trip time
# (1-byte TCP ping-pong). Prints a table and the ratios the project aims at.
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
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
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

RESULTS=()
measure() { # name ns host port_iperf port_rr
  local name=$1 ns=$2 host=$3 pi=$4 pr=$5 bps rtt
  bps=$(nsx "$ns" timeout $((DUR + 20)) iperf3 -c "$host" -p "$pi" -t "$DUR" -J 2>/dev/null \
        | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' || echo 0)
  rtt=$(nsx "$ns" timeout 60 python3 "$W/rr.py" client "$host" "$pr" "$RR_COUNT" 2>/dev/null || echo nan)
  RESULTS+=("$name $bps $rtt")
  printf '%-16s %8s Gbit/s %8s us\n' "$name" "$bps" "$rtt" >&2
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
measure haproxy c 10.1.0.1 5301 7301
stop_all
bg p socat1 socat TCP4-LISTEN:5401,fork,reuseaddr TCP4:10.4.0.2:5201
bg p socat2 socat TCP4-LISTEN:7401,fork,reuseaddr,nodelay TCP4:10.4.0.2:7001,nodelay
sleep 0.5
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

run_scold() { # encap nat(0/1)
  local e=$1 nat=$2
  { echo "lan_interface = \"gt$S\""; tun "$e" 0.0.0.0:51820 "$KG"; peer proxy 10.2.0.1 "" "$e" "$KPP"; } >"$W/g.toml"
  { tun "$e" 0.0.0.0:51820 "$KP"; peer gw 10.2.0.2 51820 "$e" "$KGP"
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
  bg g gateway "$SCOLD_BIN" gateway -c "$W/g.toml"
  bg p proxy "$SCOLD_BIN" proxy -c "$W/p.toml"
  bg t target "$SCOLD_BIN" target -c "$W/t.toml"
  [ "$nat" = 1 ] || bg c client "$SCOLD_BIN" client -c "$W/c.toml"
  sleep 1
  nsx c ping -c 2 -W 2 10.4.0.2 >/dev/null 2>&1 || true
}

for e in udp ipip wireguard; do
  run_scold $e 0
  measure scold-$e c 10.4.0.2 5201 7001
  stop_all
done
run_scold udp 1
measure scold-nat c 10.1.0.1 5501 7501
stop_all

printf '\n%-16s %14s %12s\n' path "TCP Gbit/s" "RTT us"
for r in "${RESULTS[@]}"; do set -- $r; printf '%-16s %14s %12s\n' "$1" "$2" "$3"; done
python3 - "${RESULTS[@]}" <<'EOP'
import sys
r = {a.split()[0]: (float(a.split()[1]), a.split()[2]) for a in sys.argv[1:]}
d = r["direct"][0] or 1
print("\nratios to the direct path (goal: udp/ipip >= 0.25):")
for k in ("kernel-fwd", "scold-udp", "scold-ipip", "scold-wireguard"):
    print("  %-16s %.2f" % (k, r[k][0] / d))
h = r["haproxy"][0] or 1
print("NAT relay vs HAProxy (goal >= 1.0): %.2f; socat vs HAProxy: %.2f" % (r["scold-nat"][0] / h, r["socat"][0] / h))
EOP
