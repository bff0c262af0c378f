#!/usr/bin/env bash
# Measures shardcast against the uWebSockets.js peer (loadtest/peers/uws) with the same
# harness and the same settings, one broker at a time on this machine, and writes the
# per-run tables, medians and latency plots into BENCHMARKS.md (between the
# "compare.sh" markers; the hand-written analysis around them is kept).
#
#   loadtest/compare.sh                    # every case, 3 runs per target
#   RUNS=5 CASES="fanout-1m idle" loadtest/compare.sh
#
# Each run starts a fresh broker, so memory and state do not carry over. Targets are
# interleaved (shardcast first in odd runs, the peer first in even runs) so a noisy
# neighbour hurts both alike. Loopback only; every run is bounded by the harness.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The peer: the vws broker on uWebSockets.js in this repository (PEER= names another
# directory with a server.js that takes PORT and logs "listening on" to stderr).
PEER=${PEER:-$ROOT/loadtest/peers/uws}
RUNS=${RUNS:-3}
CASES=${CASES:-"fanout-1m fanout-4m many-topics idle fanin slow slow-baseline churn shards"}
OUT=${OUT:-$ROOT/BENCHMARKS.md}
PLOTS=${PLOTS:-$ROOT/docs/bench}
RESULTS=${RESULTS:-$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
SC=$ROOT/target/release/shardcast
LT=$ROOT/target/release/shardcast-loadtest
CONFIG=$ROOT/loadtest/bench.toml

mkdir -p "$RESULTS" "$PLOTS"
echo "compare.sh: results in $RESULTS" >&2
(cd "$ROOT" && cargo build --release -p shardcast -p shardcast-loadtest)
if [ ! -d "$PEER/node_modules/uWebSockets.js" ]; then
  # From the npm registry only; the binaries are prebuilt, so no install script runs.
  (cd "$PEER" && npm ci --ignore-scripts --no-audit --no-fund)
fi
# Stops here, with the reason, unless the native uWebSockets.js addon loads (never a
# JavaScript fallback). (A peer given in PEER= without --check is trusted to check.)
if grep -q -- "--check" "$PEER/server.js"; then
  (cd "$PEER" && node server.js --check) >&2
fi

BPID=""
URL=""

# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"

# start TARGET: shardcast (one shard per core), shardcast-1shard, or uws.
start() {
  case "$1" in
    shardcast | shardcast-1shard | shardcast-5ms)
      local shards=0 env=${BROKER_ENV:-}
      [ "$1" = shardcast-1shard ] && shards=1
      # The same broker holding flushes 5 ms at most: the latency/CPU trade-off.
      [ "$1" = shardcast-5ms ] && env="SHARDCAST_SERVER__WRITE_COALESCE=5ms $env"
      # The last run's log must not satisfy the wait below.
      rm -f "$RESULTS/broker.out"
      env $env "$SC" serve --listen 127.0.0.1:0 --config "$CONFIG" --shards "$shards" \
        >"$RESULTS/broker.out" 2>"$RESULTS/broker.err" &
      BPID=$!
      wait_for "$RESULTS/broker.out" "listening on"
      URL="ws://$(grep -o '127\.0\.0\.1:[0-9]*' "$RESULTS/broker.out" | head -1)/ws"
      ;;
    uws)
      local port attempt
      for attempt in 1 2 3; do
        port=$(free_port)
        rm -f "$RESULTS/broker.err"
        (cd "$PEER" && PORT=$port exec node server.js) >"$RESULTS/broker.out" 2>"$RESULTS/broker.err" &
        BPID=$!
        if wait_for "$RESULTS/broker.err" "listening on"; then break; fi
        stop
        [ "$attempt" = 3 ] && return 1
      done
      URL="ws://127.0.0.1:$port/ws"
      ;;
    *) echo "compare.sh: unknown target $1" >&2; return 1 ;;
  esac
}

trap stop EXIT

# run_case NAME "TARGET…" HARNESS-ARGS…: RUNS runs per target, interleaved.
run_case() {
  local name=$1 targets=$2
  shift 2
  local cmd="shardcast-loadtest run $*"
  [ -n "${BROKER_ENV:-}" ] && cmd="$cmd  (shardcast with $BROKER_ENV)"
  {
    echo
    echo "### $name"
    echo
    echo "\`$cmd --url URL --pid PID\`"
    echo
  } >"$RESULTS/$name.md"
  for r in $(seq "$RUNS"); do
    local order=$targets
    if [ $((r % 2)) = 0 ]; then order=$(echo "$targets" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}'); fi
    for t in $order; do
      start "$t"
      echo "compare.sh: $name $t #$r ($URL)" >&2
      # shardcast also reports frames per write from its /api/stats.
      local hostport=${URL#ws://}
      local stats=()
      case "$t" in shardcast*) stats=(--broker-stats "${hostport%%/*}") ;; esac
      "$LT" run "$@" --url "$URL" --pid "$BPID" --label "$t #$r" --quiet ${stats[@]+"${stats[@]}"} \
        --json "$RESULTS/$name.$t.$r.json" | tee -a "$RESULTS/$name.log" >&2 || true
      stop
    done
  done
  "$LT" summarize "$RESULTS/$name".*.json >>"$RESULTS/$name.md"
  "$LT" plot --out "$PLOTS/$name.svg" --title "$name: delivery latency" "$RESULTS/$name".*.json
  printf '\n![%s latency](docs/bench/%s.svg)\n' "$name" "$name" >>"$RESULTS/$name.md"
}

for c in $CASES; do
  case "$c" in
    fanout-1m) run_case "$c" "shardcast shardcast-5ms uws" fanout --subs 1000 --rate 1000 ;;
    fanout-4m) run_case "$c" "shardcast uws" fanout --subs 1000 --rate 4000 ;;
    # One shard too: the peer is one thread, and at this load the hand-off between two
    # shards costs more than the second core gives (BENCHMARKS.md, "What limits each miss").
    many-topics) run_case "$c" "shardcast shardcast-1shard uws" many-topics --subs 2000 --topics 1000 --pubs 4 --rate 20000 ;;
    # Two harness threads, so the generator is not what limits the setup rate.
    idle) run_case "$c" "shardcast uws" idle --subs 19000 --duration 2 --threads 2 ;;
    fanin) run_case "$c" "shardcast uws" fanin --subs 10 --pubs 500 --rate 20000 ;;
    slow) run_case "$c" "shardcast uws" slow --subs 500 --slow 1 --rate 1000 --payload 1024 ;;
    slow-baseline) run_case "$c" "shardcast uws" slow --subs 500 --slow 0 --rate 1000 --payload 1024 ;;
    churn) run_case "$c" "shardcast uws" churn --subs 500 --rate 200 --churn 200 ;;
    # Fan-in past what one shard can take: every publish is read, decoded and routed on
    # its own, while the harness writes and reads in big batches, so the broker (not the
    # generator) is the limit. Deliveries/s of one shard vs one per core.
    shards) run_case "$c" "shardcast-1shard shardcast" fanin --subs 2 --pubs 4 --rate 1000000 --payload 64 ;;
    *) echo "compare.sh: unknown case $c" >&2; exit 2 ;;
  esac
done

# Splice the generated section into BENCHMARKS.md.
{
  echo "<!-- compare.sh:begin -->"
  echo "## Measured runs"
  echo
  echo "Generated by \`loadtest/compare.sh\` on $(date -u +%Y-%m-%d) at commit $(git -C "$ROOT" rev-parse --short HEAD)"
  echo "($(nproc) cores, $(uname -r), RUNS=$RUNS). Broker CPU is utime+stime over the measured"
  echo "window; the harness shares the same cores, so its CPU is shown beside the broker's."
  echo "shardcast runs with \`loadtest/bench.toml\`."
  for c in $CASES; do cat "$RESULTS/$c.md"; done
  echo
  echo "<!-- compare.sh:end -->"
} >"$RESULTS/generated.md"
if [ -f "$OUT" ] && grep -q "compare.sh:begin" "$OUT"; then
  awk -v gen="$RESULTS/generated.md" '
    /<!-- compare.sh:begin -->/ { while ((getline line < gen) > 0) print line; skip = 1; next }
    /<!-- compare.sh:end -->/ { skip = 0; next }
    !skip { print }' "$OUT" >"$OUT.tmp"
  mv "$OUT.tmp" "$OUT"
else
  cat "$RESULTS/generated.md" >>"$OUT"
fi
echo "compare.sh: wrote $OUT" >&2
