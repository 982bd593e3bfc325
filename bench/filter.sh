#!/usr/bin/env bash
# Proxy filter benchmark (not a test; needs root).
#
# What it measures: a real `scold proxy` relays a legitimate client's UDP stream
# to the target while an admitted session floods through its tunnel; how many
# flood packets per second the proxy drops, where (user space on the relay path,
# or the kernel), what the proxy process's CPU pays, how many flood packets reach
# the target, and how much of the legitimate stream arrives. Four set-ups, same run:
#
#   none        proxy without [filter]: what a flood does unchecked
#   userspace   [filter] with nft = false: every flood packet reaches the engine
#   user+nft    [filter] with nft = true: blocks mirrored into the nftables set
#   xdp-skb     [filter] with nft = true and xdp = "generic": blocked IPv4 sources
#               dropped by the XDP program at the proxy's link, in front of the set
#   xdp-drv     the same with xdp = "native" (veth runs XDP in its own NAPI poll)
#   nft-limit   peer: proxy without [filter], a plain nftables per-source
#               rate-limit rule on the tunnel port
#               (update @set { ip saddr limit rate over ... } drop)
#
# The flood is hping3 (--flood, UDP to the tunnel port from the flooding
# session's address, each datagram carrying an inner IPv4/UDP packet to the
# target: a tunnelled flood at the rate hping3 reaches, not limited by a client
# engine). The legitimate client is a `scold client` whose TUN carries a paced
# Python UDP sender (1200-byte datagrams).
#
# Topology (namespaces made here, removed on exit):
#   O (client B 10.99.1.2 + flooder A 10.99.1.3) --veth-- P (proxy 10.99.1.1 | 10.99.2.1)
#     --veth-- G (gateway 10.99.2.2 | 10.99.3.1) --veth-- T (target 10.99.3.2)
# Tunnels are udp everywhere, so the figures are about the filter, not the cipher.
#
# Every flood is bounded in time (timeout) and every sender in count.
# Env: SCOLD_BIN (default: release build under CARGO_TARGET_DIR or ./target),
#      FLOOD_SECS (6), LEGIT_PKTS (20000), LEGIT_PPS (4000), PEER_LIMIT_PPS (10000).
# The filter runs with its default limits (udp_pps 10000, the legitimate stream's
# 4000 pkt/s stays under them) and a 60 s block, so one block covers the flood;
# the peer's per-source limit is the same 10000 pkt/s.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FLOOD_SECS=${FLOOD_SECS:-6}
LEGIT_PKTS=${LEGIT_PKTS:-20000}
LEGIT_PPS=${LEGIT_PPS:-4000}
PEER_LIMIT_PPS=${PEER_LIMIT_PPS:-10000}

need() { command -v "$1" >/dev/null || { echo "missing $1: install the Debian package $2" >&2; exit 1; }; }
need ip iproute2; need nft nftables; need hping3 hping3; need python3 python3; need curl curl
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SCOLD=${SCOLD_BIN:-$TARGET_DIR/release/scold}
[ -x "$SCOLD" ] || { echo "no scold binary at $SCOLD: cargo build --release -p scold (or set SCOLD_BIN)" >&2; exit 1; }

ID=sfb$$
O=$ID-o; P=$ID-p; G=$ID-g; T=$ID-t
D=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for n in $O $P $G $T; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$D"
}
trap cleanup EXIT

for n in $O $P $G $T; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add o0 netns $O type veth peer name po netns $P
ip link add pg netns $P type veth peer name gp netns $G
ip link add gt netns $G type veth peer name tg netns $T
ip -n $O addr add 10.99.1.2/24 dev o0; ip -n $O addr add 10.99.1.3/24 dev o0
ip -n $P addr add 10.99.1.1/24 dev po; ip -n $P addr add 10.99.2.1/24 dev pg
ip -n $G addr add 10.99.2.2/24 dev gp; ip -n $G addr add 10.99.3.1/24 dev gt
ip -n $T addr add 10.99.3.2/24 dev tg
for x in "$O o0" "$P po" "$P pg" "$G gp" "$G gt" "$T tg"; do set -- $x; ip -n "$1" link set "$2" up; done
ip -n $T route add default via 10.99.3.1
ip netns exec $T nft -f - <<'EOF'
table inet count {
    chain input {
        type filter hook input priority 0; policy accept;
        udp dport 9 counter
    }
}
EOF

cat >"$D/gateway.toml" <<EOF
lan_interface = "gt"
tun_name = "sgb"
[tunnel]
encap = "udp"
listen = "0.0.0.0:51820"
[[peers]]
name = "proxy-1"
address = "10.99.2.1"
encap = "udp"
EOF
cat >"$D/client.toml" <<EOF
source = "10.99.1.2"
tun_name = "scb"
[tunnel]
encap = "udp"
listen = "0.0.0.0:0"
[[peers]]
name = "proxy"
address = "10.99.1.1"
port = 51820
encap = "udp"
[[routes]]
destination = "10.99.3.2/32"
via = { peer = "proxy" }
EOF
proxy_config() { # $1: filter section or empty
    cat <<EOF
[tunnel]
encap = "udp"
listen = "0.0.0.0:51820"
[control]
metrics = "127.0.0.1:9901"
$1
[[peers]]
name = "gw"
address = "10.99.2.2"
port = 51820
encap = "udp"
[[routes]]
destination = "10.99.3.2/32"
via = { peer = "gw" }
[[sessions]]
client = "10.99.1.2"
encap = "udp"
targets = ["10.99.3.2/32"]
[[sessions]]
client = "10.99.1.3"
encap = "udp"
targets = ["10.99.3.2/32"]
EOF
}
FILTER='[filter]
interface = "po"
alerts = "'$D'/alerts.jsonl"
block_secs = 60'

# The flood's datagram payload: a 64-byte inner IPv4/UDP packet 10.99.1.3 -> 10.99.3.2:9.
python3 - "$D/inner.bin" <<'EOF'
import struct, sys
payload = b"f" * 36
udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                  bytes([10, 99, 1, 3]), bytes([10, 99, 3, 2]))
s = sum(struct.unpack("!10H", hdr)); s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16)
hdr = hdr[:10] + struct.pack("!H", ~s & 0xffff) + hdr[12:]
open(sys.argv[1], "wb").write(hdr + udp)
EOF
INNER_LEN=$(stat -c %s "$D/inner.bin")

SINK='
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("10.99.3.2", 7000)); s.settimeout(0.5)
n = 0; end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        if len(s.recv(2048)) == 1200: n += 1
    except socket.timeout: pass
print(n)
'
LEGIT='
import socket, sys, time
count, pps = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
data = b"x" * 1200; t0 = time.time()
for i in range(count):
    try: s.sendto(data, ("10.99.3.2", 7000))
    except OSError: pass
    lag = t0 + (i + 1) / pps - time.time()
    if lag > 0: time.sleep(lag)
print("%.3f" % (time.time() - t0))
'

rx() { ip netns exec $P cat /sys/class/net/po/statistics/rx_packets; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of the packet engine thread alone (the rest is the watcher, tokio, logging).
engine_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        [ "$(cat "$t/comm")" = scold-engine ] && awk '{print $14 + $15}' "$t/stat" && return
    done
    echo 0
}
# Kernel time of the whole machine (system + irq + softirq, all CPUs), in ticks: the
# flood's trip through the kernel, hping3's sending included (the same in every case),
# and the drop, wherever it happens.
kernel_ticks() { awk '/^cpu / {print $4 + $7 + $8}' /proc/stat; }
rcvbuf_errors() { ip netns exec $P awk '/^Udp:/ {n++; if (n == 2) print $6}' /proc/net/snmp; }
target_count() {
    ip netns exec $T nft -j list chain inet count input | python3 -c '
import json, sys
print(sum(e["counter"]["packets"] for o in json.load(sys.stdin)["nftables"] if "rule" in o for e in o["rule"]["expr"] if "counter" in e))'
}
metric() { # name: value from the proxy metrics, 0 if absent
    ip netns exec $P curl -s -m 3 http://127.0.0.1:9901/metrics | awk -v m="$1" '$1 == m {print $2; f=1} END {if (!f) print 0}'
}

ip netns exec $G "$SCOLD" gateway --config "$D/gateway.toml" >"$D/gateway.log" 2>&1 & PIDS+=($!)
ip netns exec $O "$SCOLD" client --config "$D/client.toml" >"$D/client.log" 2>&1 & PIDS+=($!)

run_case() {
    local name=$1 filter=$2 peer=$3
    proxy_config "$filter" >"$D/proxy.toml"
    if [ "$peer" = yes ]; then
        ip netns exec $P nft -f - <<EOF
add table inet peer
add set inet peer m { type ipv4_addr; flags dynamic,timeout; timeout 10s; size 65535; }
add chain inet peer pre { type filter hook prerouting priority -300; policy accept; }
add rule inet peer pre udp dport 51820 update @m { ip saddr limit rate over $PEER_LIMIT_PPS/second } counter drop
EOF
    fi
    ip netns exec $P "$SCOLD" proxy --config "$D/proxy.toml" >"$D/proxy-$name.log" 2>&1 & local proxy=$!; PIDS+=($proxy)
    local ok=0
    for _ in $(seq 50); do
        if ip netns exec $O ping -c1 -W1 10.99.3.2 >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ $ok = 1 ] || { echo "$name: no path through the proxy"; cat "$D/proxy-$name.log"; exit 1; }
    local tc0; tc0=$(target_count)
    local se0; se0=$(rcvbuf_errors)
    local run=$((FLOOD_SECS + LEGIT_PKTS / LEGIT_PPS + 3))
    ip netns exec $T python3 -c "$SINK" "$run" >"$D/sink" & local sink=$!; PIDS+=($sink)
    sleep 0.3
    local rx0; rx0=$(rx)
    local cpu0; cpu0=$(cpu_ticks $proxy)
    local eng0; eng0=$(engine_ticks $proxy)
    local k0; k0=$(kernel_ticks)
    ip netns exec $O timeout -s INT "$FLOOD_SECS" hping3 --udp -p 51820 -s 40000 -k -a 10.99.1.3 \
        -E "$D/inner.bin" -d "$INNER_LEN" --flood -q 10.99.1.1 >"$D/flood" 2>&1 & local flood=$!; PIDS+=($flood)
    sleep 0.5
    local legit_secs; legit_secs=$(ip netns exec $O python3 -c "$LEGIT" "$LEGIT_PKTS" "$LEGIT_PPS")
    wait $flood || true
    local k1; k1=$(kernel_ticks)
    local rx1; rx1=$(rx)
    local cpu1; cpu1=$(cpu_ticks $proxy)
    local eng1; eng1=$(engine_ticks $proxy)
    wait $sink
    local se1; se1=$(rcvbuf_errors)
    local tc1; tc1=$(target_count)
    local user; user=$(metric scold_filter_relay_dropped_total)
    local xdp; xdp=$(metric scold_filter_xdp_dropped_total)
    local kernel=0
    if [ "$peer" = yes ]; then
        kernel=$(ip netns exec $P nft -j list chain inet peer pre | python3 -c '
import json, sys
print(sum(e["counter"]["packets"] for o in json.load(sys.stdin)["nftables"] if "rule" in o for e in o["rule"]["expr"] if "counter" in e))')
        ip netns exec $P nft delete table inet peer
    elif ip netns exec $P nft list table inet scold >/dev/null 2>&1; then
        kernel=$(ip netns exec $P nft -j list chain inet scold prerouting | python3 -c '
import json, sys
print(sum(e["counter"]["packets"] for o in json.load(sys.stdin)["nftables"] if "rule" in o for e in o["rule"]["expr"] if "counter" in e))')
    fi
    kill -TERM $proxy; wait $proxy || true
    python3 - "$name" "$rx0" "$rx1" "$user" "$kernel" "$xdp" "$((k1 - k0))" "$((se1 - se0))" "$((tc1 - tc0))" "$((cpu1 - cpu0))" "$((eng1 - eng0))" \
        "$(getconf CLK_TCK)" "$(cat "$D/sink")" "$legit_secs" "$FLOOD_SECS" "$LEGIT_PKTS" <<'EOF'
import sys
(name, rx0, rx1, user, kernel, xdp, kticks, sockdrop, reached, ticks, eticks, hz, sink, legit_secs, fs, lp) = sys.argv[1:]
fs = float(fs)
# The veth counts a frame in rx before generic XDP sees it, so rx covers every offered
# packet in every case.
offered = (int(rx1) - int(rx0) - int(sink)) / fs
print("%-10s offered %8.0f/s  dropped: user %8.0f/s nft %8.0f/s xdp %8.0f/s socket-overflow %8.0f/s  "
      "flood at target %7.0f/s  proxy cpu %5.2f s (engine %5.2f s)  kernel %4.0f ns/pkt  legit %5d/%s in %s s" % (
    name, offered, float(user) / fs, int(kernel) / fs, float(xdp) / fs, int(sockdrop) / fs, int(reached) / fs,
    int(ticks) / int(hz), int(eticks) / int(hz),
    int(kticks) / int(hz) * 1e9 / max(1.0, (int(rx1) - int(rx0)) * 1.0),
    int(sink), lp, legit_secs))
EOF
    sleep 1
}

echo "flood ${FLOOD_SECS}s (hping3 --flood, tunnelled, one admitted session) + legit ${LEGIT_PKTS} x 1200 B at ${LEGIT_PPS} pkt/s through scold client"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
run_case none "" no
run_case userspace "$FILTER
nft = false" no
run_case user+nft "$FILTER
nft = true" no
run_case xdp-skb "$FILTER
nft = true
xdp = \"generic\"" no
run_case xdp-drv "$FILTER
nft = true
xdp = \"native\"" no
run_case nft-limit "" yes
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
