#!/usr/bin/env bash
# Cross-node delivery through NATS against a single node, in one session: the harness's
# `cluster` scenario (publishers on node A, subscribers on node B, one nats-server
# between them) and the same shape on one standalone node. Runs are interleaved; each
# starts fresh processes. Prints the per-run table and medians.
#
# Shapes: "fanout-R" is 1000 subscribers on one topic, one publisher at R publishes/s
# (R x 1000 deliveries/s, few NATS messages); "topics" is 2000 subscribers over 1000
# topics, 4 publishers at 20,000 publishes/s (every publication crosses NATS).
#
#   loadtest/cluster.sh                          # 3 runs of each shape
#   RUNS=5 SHAPES="topics" loadtest/cluster.sh
#
# Needs nats-server (Debian: /usr/sbin/nats-server). Loopback only; bounded by the harness.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
SHAPES=${SHAPES:-"fanout-200 fanout-1000 topics"}
DURATION=${DURATION:-10}
RESULTS=${RESULTS:-$ROOT/target/bench-results/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
SC=$ROOT/target/release/shardcast
LT=$ROOT/target/release/shardcast-loadtest
CONFIG=$ROOT/loadtest/bench.toml
NATS=${NATS:-$(command -v nats-server || echo /usr/sbin/nats-server)}

mkdir -p "$RESULTS"
(cd "$ROOT" && cargo build --release -p shardcast -p shardcast-loadtest)
[ -x "$NATS" ] || { echo "cluster.sh: nats-server not found (apt-get install nats-server)" >&2; exit 1; }

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"

# node NAME PORT [NATS_URL]: a shardcast node; sets LAST_PID.
node() {
  local log=$RESULTS/$1.log
  SHARDCAST_CLUSTER__NATS_URL=${3:-} SHARDCAST_CLUSTER__NODE_ID=$1 \
    "$SC" serve --config "$CONFIG" --listen "127.0.0.1:$2" >"$log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  wait_for "$log" "listening on"
}

ready() { # port: until /readyz says 200 (the NATS link is up)
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "cluster.sh: node on $1 never became ready" >&2
  return 1
}

cpu_s() { # pid: utime+stime in seconds since the process started
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}

run() { # target shape run
  local label="$1 $2 #$3" json=$RESULTS/$1-$2.$3.json shape
  case "$2" in
    fanout-*) shape=(--subs 1000 --topics 1 --pubs 1 --rate "${2#fanout-}") ;;
    topics) shape=(--subs 2000 --topics 1000 --pubs 4 --rate 20000) ;;
    *) echo "cluster.sh: unknown shape $2" >&2; exit 1 ;;
  esac
  local common=("${shape[@]}" --duration "$DURATION" --quiet --label "$label" --json "$json")
  case "$1" in
    single)
      node single 18090
      # `fanout` with explicit counts is the same engine as many-topics.
      "$LT" run fanout --url ws://127.0.0.1:18090/ws --pid "$LAST_PID" "${common[@]}"
      ;;
    cluster)
      "$NATS" -a 127.0.0.1 -p 14222 >"$RESULTS/nats.log" 2>&1 &
      local nats=$!
      PIDS+=("$nats")
      wait_for "$RESULTS/nats.log" "Server is ready"
      node a 18091 nats://127.0.0.1:14222
      local a=$LAST_PID
      node b 18092 nats://127.0.0.1:14222
      local b=$LAST_PID
      ready 18091 && ready 18092
      "$LT" run cluster --url ws://127.0.0.1:18092/ws --pub-url ws://127.0.0.1:18091/ws \
        --pid "$b" "${common[@]}"
      # The harness measures node B (the receiver). Node A and nats-server also work for
      # every publication: their CPU over the whole run (set-up included) goes beside it.
      printf '%s\tnode A %s s\tnats-server %s s\n' "$label" "$(cpu_s "$a")" \
        "$(cpu_s "$nats")" | tee -a "$RESULTS/other-cpu.tsv"
      ;;
  esac
  cleanup
}

for shape in $SHAPES; do
  for i in $(seq "$RUNS"); do
    if ((i % 2)); then run single "$shape" "$i"; run cluster "$shape" "$i"
    else run cluster "$shape" "$i"; run single "$shape" "$i"; fi
  done
done
"$LT" summarize "$RESULTS"/*.json | tee "$RESULTS/summary.md"
echo "CPU of the other cluster processes (whole run):"
cat "$RESULTS/other-cpu.tsv"
