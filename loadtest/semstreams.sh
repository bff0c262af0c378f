#!/usr/bin/env bash
# Issue 19's measurements of the SemStreams dialect, in one session on this machine
# (docs/LOADTEST.md, "SemStreams: ingest and backpressure"):
#
#   ingest        PUBS edges (100) publish with acks on federated/data, each keeping
#                 WINDOW (32) publishes in flight, in vws ({"t","d","i"}) and in semstreams
#                 ({"type":"data","id","payload"}), one vws subscriber checking nothing
#                 acked is lost. The two dialects alternate for RUNS rounds (3; the order
#                 is swapped every round), each run against a fresh broker. Prints acked
#                 per broker CPU-second per run and the median of the per-round ratios
#                 semstreams / vws (issue 19's target: >= 0.9).
#   backpressure  one SemStreams edge subscribed to the data channel pushes as fast as
#                 its socket takes and reads READ_RATE frames/s (10000), plus one vws
#                 subscriber, against a broker with semstreams.on_full = "block", then
#                 "drop_newest". Prints what was sent, what came back to the edge and the
#                 subscriber, the edge's send rate in its first and last seconds, and the
#                 broker's blocked reads and drops (/metrics).
#
#   loadtest/semstreams.sh
#   RUNS=5 CASES=ingest loadtest/semstreams.sh
#   RATE=200000 CASES=ingest loadtest/semstreams.sh    # both dialects at the same load
#
# Results (reports, logs, summary.md) go under target/bench-results/, never into
# BENCHMARKS.md. Brokers run with loadtest/bench.toml (plus the [semstreams] section for
# backpressure), one shard per core, on a free loopback port. Every run is bounded by
# the harness.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=${CASES:-"ingest backpressure"}
RUNS=${RUNS:-3}
PUBS=${PUBS:-100}
WINDOW=${WINDOW:-32}
WARMUP=${WARMUP:-2}
DURATION=${DURATION:-5}
READ_RATE=${READ_RATE:-10000}
BP_DURATION=${BP_DURATION:-10}
# Publishes/s over all edges in ingest; empty = no cap (each dialect as fast as its acks
# come back). A rate both sustain compares the dialects at the same offered load.
RATE=${RATE:-}
RESULTS=${RESULTS:-$ROOT/target/bench-results/semstreams-$(date -u +%Y%m%dT%H%M%SZ)}
SC=$ROOT/target/release/shardcast
LT=$ROOT/target/release/shardcast-loadtest
CONFIG=$ROOT/loadtest/bench.toml

mkdir -p "$RESULTS"
echo "semstreams.sh: results in $RESULTS" >&2
(cd "$ROOT" && cargo build --release -p shardcast -p shardcast-loadtest)

# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"

BPID=""
ADDR=""

# start CONFIG: a fresh broker, one shard per core, on a free loopback port.
start() {
  local attempt port
  for attempt in 1 2 3; do
    port=$(free_port)
    # The last broker's log must not satisfy the wait below.
    rm -f "$RESULTS/broker.out"
    "$SC" serve --listen "127.0.0.1:$port" --config "$1" --shards 0 \
      >"$RESULTS/broker.out" 2>"$RESULTS/broker.err" &
    BPID=$!
    if wait_for "$RESULTS/broker.out" "listening on"; then
      ADDR=127.0.0.1:$port
      return 0
    fi
    stop
  done
  return 1
}

trap stop EXIT

# field FILE NAME: the first number after "NAME": in a pretty-printed report.
field() {
  grep -o "\"$2\": [-0-9.eE+]*" "$1" | head -1 | awk '{print $2}'
}

SUMMARY=$RESULTS/summary.md
{
  echo "# semstreams.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD)"
  echo
  echo "$(nproc) cores, $(uname -r); RUNS=$RUNS PUBS=$PUBS WINDOW=$WINDOW WARMUP=$WARMUP DURATION=$DURATION RATE=${RATE:-none} READ_RATE=$READ_RATE BP_DURATION=$BP_DURATION"
} >"$SUMMARY"

ingest() {
  local rate=()
  [ -n "$RATE" ] && rate=(--rate "$RATE")
  local cmd="shardcast-loadtest run ingest --pubs $PUBS --window $WINDOW --warmup $WARMUP --duration $DURATION ${rate[*]+${rate[*]} }--pub-dialect D --url URL --pid PID"
  {
    echo
    echo "## ingest: acked data per broker CPU-second"
    echo
    echo "\`$cmd\`"
    echo
    echo "A run is clean when its \`--check\` passes: everything acked, nothing lost, no subscriber"
    echo "closed (a subscriber closed as a slow consumer takes its fan-out work off the broker,"
    echo "which flatters that run). Rounds with an unclean run get no ratio and are left out of"
    echo "the median."
    echo
    echo "| round | vws acked/s | vws acked/CPU-s | semstreams acked/s | semstreams acked/CPU-s | ratio | lost (vws, semstreams) | clean (vws, semstreams) |"
    echo "|---|---|---|---|---|---|---|---|"
  } >>"$SUMMARY"
  local ratios=()
  local -A clean
  for r in $(seq "$RUNS"); do
    local order="vws semstreams"
    [ $((r % 2)) = 0 ] && order="semstreams vws"
    for d in $order; do
      start "$CONFIG"
      echo "semstreams.sh: ingest $d #$r ($ADDR)" >&2
      clean[$d]=yes
      "$LT" run ingest --url "ws://$ADDR/ws" --pid "$BPID" --pub-dialect "$d" --pubs "$PUBS" \
        --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION" ${rate[@]+"${rate[@]}"} \
        --label "ingest $d #$r" \
        --quiet --check --json "$RESULTS/ingest.$d.$r.json" | tee -a "$RESULTS/ingest.log" >&2 ||
        clean[$d]=no
      stop
    done
    local v=$RESULTS/ingest.vws.$r.json s=$RESULTS/ingest.semstreams.$r.json
    local vc sc ratio
    vc=$(field "$v" acked_per_broker_cpu_s)
    sc=$(field "$s" acked_per_broker_cpu_s)
    ratio=$(awk -v a="${sc:-0}" -v b="${vc:-0}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')
    if [ "${clean[vws]}${clean[semstreams]}" = yesyes ] && [ "$ratio" != "-" ]; then
      ratios+=("$ratio")
    else
      ratio="($ratio, excluded)"
    fi
    printf '| %s | %.0f | %.0f | %.0f | %.0f | %s | %s, %s | %s, %s |\n' "$r" \
      "$(field "$v" acked_per_s)" "${vc:-0}" "$(field "$s" acked_per_s)" "${sc:-0}" "$ratio" \
      "$(field "$v" lost)" "$(field "$s" lost)" "${clean[vws]}" "${clean[semstreams]}" >>"$SUMMARY"
  done
  local median
  median=$(printf '%s\n' "${ratios[@]+"${ratios[@]}"}" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  {
    echo
    echo "Median ratio semstreams / vws of acked per broker CPU-second over the ${#ratios[@]} clean"
    echo "rounds of $RUNS: **$median** (target >= 0.9)."
  } >>"$SUMMARY"
}

backpressure() {
  {
    echo
    echo "## backpressure: one SemStreams edge pushing, reading $READ_RATE frames/s"
    echo
    echo "\`shardcast-loadtest run backpressure --read-rate $READ_RATE --duration $BP_DURATION --url URL --pid PID --broker-stats ADDR\`"
  } >>"$SUMMARY"
  for mode in block drop_newest; do
    local config=$RESULTS/bench-$mode.toml
    cat "$CONFIG" >"$config"
    printf '\n[semstreams]\non_full = "%s"\n' "$mode" >>"$config"
    start "$config"
    echo "semstreams.sh: backpressure $mode ($ADDR)" >&2
    "$LT" run backpressure --url "ws://$ADDR/ws" --pid "$BPID" --broker-stats "$ADDR" \
      --read-rate "$READ_RATE" --duration "$BP_DURATION" --label "backpressure $mode" \
      --quiet --json "$RESULTS/backpressure.$mode.json" >"$RESULTS/backpressure.$mode.log" || true
    stop
    cat "$RESULTS/backpressure.$mode.log" >&2
    {
      echo
      echo "### on_full = \"$mode\""
      echo
      echo '```'
      grep -E '^ +(answers|subscribers|edge|send rate|broker|second|closed|error|first nack)  ' \
        "$RESULTS/backpressure.$mode.log" || true
      echo '```'
    } >>"$SUMMARY"
  done
}

for c in $CASES; do
  case "$c" in
    ingest) ingest ;;
    backpressure) backpressure ;;
    *) echo "semstreams.sh: unknown case $c" >&2; exit 2 ;;
  esac
done

cat "$SUMMARY"
echo "semstreams.sh: wrote $SUMMARY" >&2
