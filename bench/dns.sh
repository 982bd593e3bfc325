#!/usr/bin/env bash
# Benchmark: queries per second and server CPU time per query of `scold dns`, NSD and
# Knot serving the same zone on this machine, each driven by dnsperf in turn.
#
#   bash bench/dns.sh                 # builds scold (release) and runs 10 s per server
#   SECONDS_PER_RUN=30 WORKERS=1 bash bench/dns.sh
#   SCOLD_BIN=/path/to/scold bash bench/dns.sh   # use an existing release binary
#
# Needs: dnsperf, nsd, knot (Debian packages dnsperf, nsd, knot).
# CPU per query = (utime + stime of the server process during the run) / answered
# queries, from /proc/PID/stat. Each server gets the same number of worker threads
# (WORKERS, default 1) so the figure compares code paths, not thread counts; dnsperf
# runs on the other core. Everything stays on 127.0.0.1 and stops after the run.
set -euo pipefail

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
WORKERS=${WORKERS:-1}
OUTSTANDING=${OUTSTANDING:-100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for tool in dnsperf:dnsperf nsd:nsd knotd:knot; do
  bin=${tool%%:*}; pkg=${tool##*:}
  command -v "$bin" >/dev/null || PATH=$PATH:/usr/sbin command -v "$bin" >/dev/null || {
    echo "error: $bin is missing: apt-get install $pkg" >&2; exit 1; }
done
export PATH=$PATH:/usr/sbin

if [[ -z "${SCOLD_BIN:-}" ]]; then
  (cd "$ROOT" && cargo build --release -p scold >&2)
  SCOLD_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/scold"
fi

WORK=$(mktemp -d /tmp/scold-dns-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket
for _ in range(100):
    u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(("127.0.0.1",0)); p=u.getsockname()[1]
    t=socket.socket(); 
    try:
        t.bind(("127.0.0.1",p)); print(p); break
    except OSError: pass'
}

# The zone: a target with its ALT set (RFC 3597 syntax, which all three servers read),
# plus filler names so lookups are not all in one tiny table.
ZONE="$WORK/example.com.zone"
{
  echo '$ORIGIN example.com.'
  echo '$TTL 300'
  echo '@ SOA ns1 hostmaster 1 3600 900 604800 60'
  echo '  NS ns1'
  echo 'ns1 A 127.0.0.1'
  echo 'www A 192.0.2.10'
  echo 'www AAAA 2001:db8::10'
  echo 'www 60 TYPE65280 \# 4 CB373966'
  echo 'www 60 TYPE65280 \# 4 CB373967'
  for i in $(seq 1 1000); do echo "h$i A 10.0.$((i / 256)).$((i % 256))"; done
} > "$ZONE"

QUERIES="$WORK/queries.txt"
{
  for i in $(seq 1 40); do
    echo "www.example.com A"
    echo "www.example.com TYPE65280"
    echo "www.example.com AAAA"
    echo "h$((i * 17)).example.com A"
    echo "nx$i.example.com A"
  done
} > "$QUERIES"

wait_up() { # port pid name
  for _ in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || { echo "error: $3 exited; log:" >&2; cat "$WORK/$3.log" >&2; exit 1; }
    if dig +time=1 +tries=1 +short -p "$1" @127.0.0.1 example.com SOA 2>/dev/null | grep -q hostmaster; then return 0; fi
    sleep 0.1
  done
  echo "error: $3 did not answer on port $1" >&2; cat "$WORK/$3.log" >&2; exit 1
}

# utime + stime of one process, in clock ticks (fields 14 and 15 of /proc/PID/stat,
# counted after the command name, which may contain blanks).
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }
cpu_ticks() { proc_ticks "$1"; }

RESULTS="$WORK/results.txt"
: > "$RESULTS"
run_bench() { # name port pid
  local name=$1 port=$2 pid=$3
  # Warm-up, then the measured run.
  dnsperf -s 127.0.0.1 -p "$port" -d "$QUERIES" -l 2 -q "$OUTSTANDING" >/dev/null 2>&1 || true
  local t0; t0=$(cpu_ticks "$pid")
  dnsperf -s 127.0.0.1 -p "$port" -d "$QUERIES" -l "$SECONDS_PER_RUN" -q "$OUTSTANDING" > "$WORK/$name.perf" 2>&1
  local t1; t1=$(cpu_ticks "$pid")
  local hz; hz=$(getconf CLK_TCK)
  local completed qps lost
  completed=$(awk '/Queries completed:/ {print $3}' "$WORK/$name.perf")
  lost=$(awk '/Queries lost:/ {print $3}' "$WORK/$name.perf")
  qps=$(awk '/Queries per second:/ {print $4}' "$WORK/$name.perf")
  local us
  us=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$completed" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  printf "%-10s %12s %10s %10s\n" "$name" "$qps" "$us" "$lost" | tee -a "$RESULTS" >&2
}

echo "zone: $(wc -l < "$ZONE") lines; $SECONDS_PER_RUN s per server; $WORKERS worker(s) each; dnsperf -q $OUTSTANDING" >&2
printf "%-10s %12s %10s %10s\n" server "queries/s" "cpu_us/q" lost >&2

# scold dns
P=$(free_port)
cat > "$WORK/scold.toml" <<EOF
listen = ["127.0.0.1:$P"]
journal = "$WORK/scold.journal"
udp_workers = $WORKERS
[[zone]]
name = "example.com"
file = "$ZONE"
[rate_limit]
responses_per_second = 0
EOF
"$SCOLD_BIN" --log warn dns --config "$WORK/scold.toml" > "$WORK/scold.log" 2>&1 &
SPID=$!; PIDS+=("$SPID")
wait_up "$P" "$SPID" scold
run_bench "scold-dns" "$P" "$SPID"
kill "$SPID"

# Knot
P=$(free_port)
mkdir -p "$WORK/knot"
cat > "$WORK/knot.conf" <<EOF
server:
    rundir: "$WORK/knot"
    listen: 127.0.0.1@$P
    udp-workers: $WORKERS
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$WORK/knot"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "$WORK"
    file: "%s.zone"
zone:
  - domain: example.com
EOF
knotd -c "$WORK/knot.conf" > "$WORK/knot.log" 2>&1 &
KPID=$!; PIDS+=("$KPID")
wait_up "$P" "$KPID" knot
run_bench "knot" "$P" "$KPID"
kill "$KPID"

# NSD (one server process; CPU is counted for the process serving queries)
P=$(free_port)
mkdir -p "$WORK/nsd"
cat > "$WORK/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$P
    port: $P
    server-count: $WORKERS
    username: ""
    chroot: ""
    zonesdir: "$WORK"
    database: ""
    zonelistfile: "$WORK/nsd/zone.list"
    xfrdfile: "$WORK/nsd/xfrd.state"
    pidfile: "$WORK/nsd/nsd.pid"
    logfile: "$WORK/nsd.log"
    verbosity: 0
    # NSD limits responses per source by default (200/s); dnsperf is one source.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: example.com
    zonefile: example.com.zone
EOF
nsd -d -c "$WORK/nsd.conf" >> "$WORK/nsd.log" 2>&1 &
NPID=$!; PIDS+=("$NPID")
wait_up "$P" "$NPID" nsd
# NSD forks: the started process becomes xfrd, its child "main" forks the servers.
# Count the CPU of the whole tree.
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
cpu_ticks() {
  local s=0 p
  for p in $1 $(descendants "$1"); do
    s=$((s + $(proc_ticks "$p")))
  done
  echo "$s"
}
run_bench "nsd" "$P" "$NPID"
kill "$NPID"

echo >&2
awk '
  { q[$1]=$2; c[$1]=$3 }
  END {
    printf "scold-dns / knot: qps x%.2f, cpu per query x%.2f\n", q["scold-dns"]/q["knot"], c["scold-dns"]/c["knot"];
    printf "scold-dns / nsd:  qps x%.2f, cpu per query x%.2f\n", q["scold-dns"]/q["nsd"], c["scold-dns"]/c["nsd"];
  }' "$RESULTS"
