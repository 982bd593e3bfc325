#!/usr/bin/env bash
# Benchmark: coordinator replicas on etcd against one coordinator on redb, side by side
# in one run: a divert's latency (by the coordinator's own audit log, from "diverting" to
# "diverted") with each store, and the time from kill -9 of the leading replica to the
# first order its standby sends. Real `scold coordinator`, `scold dns`, `scold ctl`
# processes and a real etcd (Debian etcd-server) on 127.0.0.1; nodes answer orders in
# the test process. Median and worst over RUNS repetitions (default 5).
#
#   bash bench/replicas.sh
#   RUNS=10 bash bench/replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "error: etcd is missing: apt-get install etcd-server" >&2; exit 1; }
command -v dig >/dev/null || { echo "error: dig is missing: apt-get install bind9-dnsutils" >&2; exit 1; }
RUNS=${RUNS:-5} cargo test --release -p scold --test coordinator_e2e bench_replicas -- \
  --ignored --nocapture --test-threads=1 2>&1 | grep -E '^(runs|divert|leader)'
