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
# With TARGETS the cluster runs also keep history on the fan-out topic (bench/…, one
# [[history]] rule): "cluster" has none, "cluster-memory" keeps it in each node's memory,
# "cluster-jetstream" in a JetStream stream (nats-server -js, a fresh store directory per
# run). The "pub" shape is 10 subscribers on one topic, 4 publishers at PUB_RATE
# publishes/s (default 20,000): what one history channel accepts through the cluster.
# After each jetstream run the shardcast_jetstream_* counters of both nodes are recorded.
#
#   loadtest/cluster.sh                          # 3 runs of each shape
#   RUNS=5 SHAPES="topics" loadtest/cluster.sh
#   TARGETS="cluster cluster-memory cluster-jetstream" SHAPES="pub fanout-1000" \
#     DURATION=5 loadtest/cluster.sh             # issue 21: history none/memory/jetstream
#
# Needs nats-server (Debian: /usr/sbin/nats-server). Loopback only; bounded by the harness.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
SHAPES=${SHAPES:-"fanout-200 fanout-1000 topics"}
DURATION=${DURATION:-10}
TARGETS=${TARGETS:-"single cluster"}
PUB_RATE=${PUB_RATE:-20000}
RESULTS=${RESULTS:-$ROOT/target/bench-results/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
SC=$ROOT/target/release/shardcast
LT=$ROOT/target/release/shardcast-loadtest
CONFIG=$ROOT/loadtest/bench.toml
NATS=${NATS:-$(command -v nats-server || echo /usr/sbin/nats-server)}

mkdir -p "$RESULTS"
# The history targets' config: bench.toml and one rule keeping the harness's topics.
HCONFIG=$RESULTS/history.toml
cat "$CONFIG" - >"$HCONFIG" <<'TOML'

[history]
max_bytes = 1073741824

[[history.rules]]
prefix = "bench/"
size = 100000
bytes = 268435456
ttl = "1h"
TOML
(cd "$ROOT" && cargo build --release -p shardcast -p shardcast-loadtest)
[ -x "$NATS" ] || { echo "cluster.sh: nats-server not found (apt-get install nats-server)" >&2; exit 1; }

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"

# node NAME PORT [NATS_URL [HISTORY]]: a shardcast node; sets LAST_PID. HISTORY is
# memory or jetstream (cluster.history, with the history rule) or empty (no rule).
node() {
  local log=$RESULTS/$1.log config=$CONFIG
  [ -n "${4:-}" ] && config=$HCONFIG
  SHARDCAST_CLUSTER__NATS_URL=${3:-} SHARDCAST_CLUSTER__NODE_ID=$1 \
    SHARDCAST_CLUSTER__HISTORY=${4:-memory} \
    "$SC" serve --config "$config" --listen "127.0.0.1:$2" >"$log" 2>&1 &
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

js_up() { # port: until the node's JetStream stream is in place (shardcast_jetstream_up 1)
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$1/metrics" | grep -q '^shardcast_jetstream_up 1' && return 0
    sleep 0.1
  done
  echo "cluster.sh: node on $1 never had its JetStream stream" >&2
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
    pub) shape=(--subs 10 --topics 1 --pubs 4 --rate "$PUB_RATE") ;;
    *) echo "cluster.sh: unknown shape $2" >&2; exit 1 ;;
  esac
  local common=("${shape[@]}" --duration "$DURATION" --quiet --label "$label" --json "$json")
  case "$1" in
    single)
      node single 18090
      # `fanout` with explicit counts is the same engine as many-topics.
      "$LT" run fanout --url ws://127.0.0.1:18090/ws --pid "$LAST_PID" "${common[@]}"
      ;;
    cluster | cluster-memory | cluster-jetstream)
      local history=${1#cluster} js=()
      history=${history#-}
      if [ "$history" = jetstream ]; then
        rm -rf "$RESULTS/js-store"
        js=(-js -sd "$RESULTS/js-store")
      fi
      "$NATS" -a 127.0.0.1 -p 14222 "${js[@]}" >"$RESULTS/nats.log" 2>&1 &
      local nats=$!
      PIDS+=("$nats")
      wait_for "$RESULTS/nats.log" "Server is ready"
      node a 18091 nats://127.0.0.1:14222 "$history"
      local a=$LAST_PID
      node b 18092 nats://127.0.0.1:14222 "$history"
      local b=$LAST_PID
      ready 18091 && ready 18092
      # /readyz does not wait for the stream (a node stays ready without JetStream).
      [ "$history" = jetstream ] && js_up 18091 && js_up 18092
      "$LT" run cluster --url ws://127.0.0.1:18092/ws --pub-url ws://127.0.0.1:18091/ws \
        --pid "$b" "${common[@]}"
      # The harness measures node B (the receiver). Node A and nats-server also work for
      # every publication: their CPU over the whole run (set-up included) goes beside it.
      printf '%s\tnode A %s s\tnats-server %s s\n' "$label" "$(cpu_s "$a")" \
        "$(cpu_s "$nats")" | tee -a "$RESULTS/other-cpu.tsv"
      if [ "$history" = jetstream ]; then
        # What each node's JetStream task did (A appends, B reads what it lacks).
        for port in 18091 18092; do
          printf '%s\tnode %s\t%s\n' "$label" "$port" "$(curl -fs "http://127.0.0.1:$port/metrics" |
            awk '/^shardcast_jetstream_[a-z_]*_total/ {
              sub(/^shardcast_jetstream_/, ""); sub(/_total/, ""); printf "%s=%s ", $1, $2 }')"
        done | tee -a "$RESULTS/jetstream.tsv"
      fi
      ;;
  esac
  cleanup
}

read -ra targets <<<"$TARGETS"
for shape in $SHAPES; do
  for i in $(seq "$RUNS"); do
    # Interleaved: run i starts at target i-1 (mod the count) and goes round.
    n=${#targets[@]}
    for j in $(seq 0 $((n - 1))); do
      run "${targets[$(((i - 1 + j) % n))]}" "$shape" "$i"
    done
  done
done
"$LT" summarize "$RESULTS"/*.json | tee "$RESULTS/summary.md"
echo "CPU of the other cluster processes (whole run):"
cat "$RESULTS/other-cpu.tsv"
if [ -f "$RESULTS/jetstream.tsv" ]; then
  echo "JetStream counters of the nodes (whole run):"
  cat "$RESULTS/jetstream.tsv"
fi
