#!/usr/bin/env bash
# Proxy filter benchmark (not a test; needs root).
#
# What it measures: while one source floods the proxy with UDP and a client
# pushes a transfer through the same proxy, how many flood packets per second
# the proxy drops, where (user space or kernel), what the relay's CPU pays for
# it, and whether the client's transfer completes. Three set-ups, same run:
#
#   userspace   relay + scold Filter only (every flood packet reaches the socket)
#   user+nft    relay + scold Filter, blocks mirrored into the nftables set
#   nft-limit   peer: relay without filter, a plain nftables per-source
#               rate-limit rule (update @set { ip saddr limit rate over ... } drop)
#
# Topology (namespaces made here, removed on exit):
#   O (client 10.99.1.2, attacker 10.99.1.3) --veth-- P (proxy 10.99.1.1 | 10.99.2.1) --veth-- T (sink 10.99.2.2)
#
# Every flood is bounded in time (timeout) and every sender in count.
# Env: FLOOD_SECS (6), LEGIT_PKTS (20000), LEGIT_PPS (4000), PEER_LIMIT_PPS (10000).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FLOOD_SECS=${FLOOD_SECS:-6}
LEGIT_PKTS=${LEGIT_PKTS:-20000}
LEGIT_PPS=${LEGIT_PPS:-4000}
PEER_LIMIT_PPS=${PEER_LIMIT_PPS:-10000}
RUN_SECS=$((FLOOD_SECS + 4))

need() { command -v "$1" >/dev/null || { echo "missing $1: install the Debian package $2" >&2; exit 1; }; }
need ip iproute2; need nft nftables; need hping3 hping3; need python3 python3
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build -q --release -p scold-filter --example udp_relay)
RELAY=$TARGET_DIR/release/examples/udp_relay

ID=sfb$$
O=$ID-o; P=$ID-p; T=$ID-t
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for n in $O $P $T; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

for n in $O $P $T; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add o0 netns $O type veth peer name po netns $P
ip link add pt netns $P type veth peer name t0 netns $T
ip -n $O addr add 10.99.1.2/24 dev o0; ip -n $O addr add 10.99.1.3/24 dev o0
ip -n $P addr add 10.99.1.1/24 dev po; ip -n $P addr add 10.99.2.1/24 dev pt
ip -n $T addr add 10.99.2.2/24 dev t0
for x in "$O o0" "$P po" "$P pt" "$T t0"; do set -- $x; ip -n "$1" link set "$2" up; done
ip netns exec $O ping -c1 -W2 10.99.1.1 >/dev/null
ip netns exec $P ping -c1 -W2 10.99.2.2 >/dev/null

SINK='
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("10.99.2.2", 7000)); s.settimeout(0.5)
n = 0; end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        # Only the 1200-byte datagrams of the client count; flood packets the
        # relay let through are 36 bytes.
        if len(s.recv(2048)) == 1200: n += 1
    except socket.timeout: pass
print(n)
'
LEGIT='
import socket, sys, time
count, pps = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.99.1.2", 0))
data = b"x" * 1200; t0 = time.time()
for i in range(count):
    s.sendto(data, ("10.99.1.1", 7000))
    lag = t0 + (i + 1) / pps - time.time()
    if lag > 0: time.sleep(lag)
print("%.3f" % (time.time() - t0))
'

rx() { ip netns exec $P cat /sys/class/net/po/statistics/rx_packets; }

run_case() {
    local name=$1 relay_flags=$2 peer=$3
    if [ "$peer" = yes ]; then
        ip netns exec $P nft -f - <<EOF
add table inet peer
add set inet peer m { type ipv4_addr; flags dynamic,timeout; timeout 10s; size 65535; }
add chain inet peer pre { type filter hook prerouting priority -300; policy accept; }
add rule inet peer pre udp dport 7000 update @m { ip saddr limit rate over $PEER_LIMIT_PPS/second } counter drop
EOF
    fi
    local d; d=$(mktemp -d)
    ip netns exec $T python3 -c "$SINK" $((RUN_SECS + 1)) >"$d/sink" & local sink=$!; PIDS+=($sink)
    # shellcheck disable=SC2086
    ip netns exec $P "$RELAY" 10.99.1.1:7000 10.99.2.2:7000 $RUN_SECS $relay_flags >"$d/relay" 2>"$d/alerts" & local relay=$!; PIDS+=($relay)
    sleep 0.5
    local rx0; rx0=$(rx)
    ip netns exec $O timeout -s INT "$FLOOD_SECS" hping3 --udp -p 7000 -a 10.99.1.3 -d 36 --flood -q 10.99.1.1 >"$d/flood" 2>&1 & local flood=$!; PIDS+=($flood)
    sleep 0.5
    local legit_secs; legit_secs=$(ip netns exec $O python3 -c "$LEGIT" "$LEGIT_PKTS" "$LEGIT_PPS")
    wait $flood || true
    local rx1; rx1=$(rx)
    wait $relay; wait $sink
    local kdrop=0
    if [ "$peer" = yes ]; then
        kdrop=$(ip netns exec $P nft -j list chain inet peer pre | python3 -c '
import json, sys
print(sum(e["counter"]["packets"] for o in json.load(sys.stdin)["nftables"] if "rule" in o for e in o["rule"]["expr"] if "counter" in e))')
        ip netns exec $P nft delete table inet peer
    fi
    python3 - "$name" "$d" "$rx0" "$rx1" "$kdrop" "$legit_secs" "$FLOOD_SECS" "$LEGIT_PKTS" <<'EOF'
import json, sys
name, d, rx0, rx1, kdrop, legit_secs, flood_secs, legit_pkts = sys.argv[1:]
r = json.loads(open(d + "/relay").read())
sink = int(open(d + "/sink").read())
kernel = int(kdrop) + r.get("dropped_kernel", 0)
offered = int(rx1) - int(rx0)   # packets that reached the proxy's link (kernel drops included)
fs = float(flood_secs)
print("%-10s  offered %8.0f pkt/s  dropped: user %8.0f/s kernel %8.0f/s  relay cpu %5.2f s  legit %5d/%d delivered in %s s" % (
    name, offered / fs, r["dropped_user"] / fs, kernel / fs, r["cpu_secs"], sink, int(legit_pkts), legit_secs))
EOF
    rm -rf "$d"
}

echo "flood ${FLOOD_SECS}s (hping3 --flood, one source) + legit ${LEGIT_PKTS} x 1200 B at ${LEGIT_PPS} pkt/s"
run_case userspace "" no
run_case user+nft "--nft" no
run_case nft-limit "--no-filter" yes
