#!/usr/bin/env bash
# A pull link's cost, in one session (BENCHMARKS.md, "Upstream links and the Rust client
# (issue 20)"): two broker processes, "cloud" and "edge", the edge pulling `bench/#` from
# the cloud over an `[[upstream]]` link. The harness's publishers always publish on the
# cloud; its subscribers connect either to the cloud directly ("direct") or to the edge
# ("link"), so every delivery of a "link" run crossed one hop more. Both processes run in
# both cases (the cloud serves the link's subscription either way). Runs are interleaved,
# alternating which goes first; each starts fresh processes.
#
# Shapes: "fanout-R" is 1000 subscribers on one topic, one publisher at R publishes/s
# (R x 1000 deliveries/s; R publications/s cross the link); "topics" is 2000 subscribers
# over 1000 topics, 4 publishers at 4000 publishes/s (each publication crosses the link and
# reaches 2 subscribers).
#
#   loadtest/federation.sh                         # 3 runs of each shape
#   RUNS=5 SHAPES="fanout-200" loadtest/federation.sh
#
# Prints the harness's table and medians, then per round the ratio link/direct of
# deliveries/s and the added p50/p99 latency of the hop. Loopback only; bounded by the
# harness and by timeouts.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
SHAPES=${SHAPES:-"fanout-200 fanout-1000 topics"}
DURATION=${DURATION:-10}
RESULTS=${RESULTS:-$ROOT/target/bench-results/federation-$(date -u +%Y%m%dT%H%M%SZ)}
SC=$ROOT/target/release/shardcast
LT=$ROOT/target/release/shardcast-loadtest
CONFIG=$ROOT/loadtest/bench.toml
CLOUD_PORT=${CLOUD_PORT:-18093}
EDGE_PORT=${EDGE_PORT:-18094}

mkdir -p "$RESULTS"
echo "federation.sh: results in $RESULTS" >&2
(cd "$ROOT" && cargo build --release -p shardcast -p shardcast-loadtest)

# The edge: bench.toml plus one pull link.
EDGE_CONFIG=$RESULTS/edge.toml
{
  cat "$CONFIG"
  printf '\n[[upstream]]\nname = "cloud"\nurl = "ws://127.0.0.1:%s/ws"\nmode = "pull"\npatterns = ["bench/#"]\ninitial_interval = "50ms"\nmax_interval = "500ms"\n' "$CLOUD_PORT"
} >"$EDGE_CONFIG"

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"

# node NAME PORT CONFIG: a broker; sets LAST_PID.
node() {
  local log=$RESULTS/$1.log
  "$SC" serve --config "$3" --listen "127.0.0.1:$2" >"$log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  wait_for "$log" "listening on"
}

# linked: until the edge's /healthz says its link is connected (at most 10 s).
linked() {
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$EDGE_PORT/healthz" | jq -e '.details.links[0].connected == true' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "federation.sh: the edge's link never connected" >&2
  return 1
}

cpu_s() { # pid: utime+stime in seconds since the process started
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}

run() { # target shape run
  local label="$1 $2 #$3" json=$RESULTS/$1-$2.$3.json shape
  case "$2" in
    fanout-*) shape=(--subs 1000 --topics 1 --pubs 1 --rate "${2#fanout-}") ;;
    topics) shape=(--subs 2000 --topics 1000 --pubs 4 --rate 4000) ;;
    *) echo "federation.sh: unknown shape $2" >&2; exit 1 ;;
  esac
  node cloud "$CLOUD_PORT" "$CONFIG"
  local cloud=$LAST_PID
  node edge "$EDGE_PORT" "$EDGE_CONFIG"
  local edge=$LAST_PID
  linked
  local sub_port=$CLOUD_PORT measured=$cloud other=$edge
  if [ "$1" = link ]; then sub_port=$EDGE_PORT measured=$edge other=$cloud; fi
  echo "federation.sh: $label" >&2
  "$LT" run cluster --url "ws://127.0.0.1:$sub_port/ws" --pub-url "ws://127.0.0.1:$CLOUD_PORT/ws" \
    --pid "$measured" "${shape[@]}" --duration "$DURATION" --quiet --label "$label" \
    --json "$json" | tee -a "$RESULTS/runs.log" >&2 || true
  # The harness measures the subscribers' broker; the other one's CPU (whole run) beside it.
  printf '%s\tother broker %s s\tforwarded by the link %s\n' "$label" "$(cpu_s "$other")" \
    "$(curl -fs "http://127.0.0.1:$EDGE_PORT/healthz" | jq '.details.links[0].forwarded')" \
    | tee -a "$RESULTS/other-cpu.tsv" >&2
  cleanup
}

for shape in $SHAPES; do
  for i in $(seq "$RUNS"); do
    if ((i % 2)); then run direct "$shape" "$i"; run link "$shape" "$i"
    else run link "$shape" "$i"; run direct "$shape" "$i"; fi
  done
done
{
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  "$LT" summarize "$RESULTS"/*.json
  echo
  echo "Per round, link against direct (same shape, consecutive runs):"
  echo
  echo "| shape | round | deliveries/s link / direct | lost direct / link | p50 ms direct / link / added | p99 ms direct / link / added |"
  echo "|---|---|---:|---|---|---|"
  for shape in $SHAPES; do
    for i in $(seq "$RUNS"); do
      d=$RESULTS/direct-$shape.$i.json
      l=$RESULTS/link-$shape.$i.json
      [ -f "$d" ] && [ -f "$l" ] || continue
      jq -rn --arg s "$shape" --arg i "$i" --slurpfile d "$d" --slurpfile l "$l" '
        def r2: . * 100 | round / 100;
        ($d[0]) as $d | ($l[0]) as $l |
        "| \($s) | \($i) | \(if $d.deliveries_per_s > 0 then ($l.deliveries_per_s / $d.deliveries_per_s * 1000 | round / 1000) else "n/a" end) | \($d.lost) / \($l.lost) | \($d.latency_ms.p50 | r2) / \($l.latency_ms.p50 | r2) / \(($l.latency_ms.p50 - $d.latency_ms.p50) | r2) | \($d.latency_ms.p99 | r2) / \($l.latency_ms.p99 | r2) / \(($l.latency_ms.p99 - $d.latency_ms.p99) | r2) |"'
    done
  done
  echo
  echo "Other broker's CPU (whole run) and what the link forwarded:"
  echo
  sed 's/^/    /' "$RESULTS/other-cpu.tsv"
} | tee "$RESULTS/summary.md"
