#!/usr/bin/env bash
# What history (SPEC §9) costs, in one session on this machine (BENCHMARKS.md, "History"):
#
#   ab      fan-out at 1M deliveries/s (compare.sh's fanout-1m: 1000 subscribers, 1000
#           publishes/s) against three brokers, interleaved: the commit before history
#           ("before", built in a git worktree), this tree without a history rule
#           ("after"), and this tree with a [[history]] rule matching the fan-out topic
#           ("history"). Prints the per-round ratios after/before and history/after.
#   replay  the harness's replay scenario: 10,000 publications delivered live to N
#           subscribers of a history channel, then N late joiners replaying all of them
#           (N = 1000, then 100). Frames per write and broker CPU per delivery, replay
#           against live, in the same run.
#   memory  broker RSS per retained publication: N publications through POST
#           /api/publish to a channel that keeps them, against the same number to one
#           that does not; then what a vws and a gows joiner replaying them add (each
#           stored publication keeps the frame rendered for each dialect).
#
#   loadtest/history.sh                                # all three, 5/3/3 runs
#   CASES=ab RUNS=3 loadtest/history.sh
#   SC=/path/to/shardcast SC_BEFORE=/path/to/old/shardcast CASES=ab loadtest/history.sh
#
# SC (default: target/release/shardcast, built here) is the broker under test; SC_BEFORE
# skips building BEFORE (default a8dd02c, the commit before history) in a worktree. Every
# run starts a fresh broker with loadtest/bench.toml (plus loadtest/history.toml where
# history is on). Loopback only; every run is bounded by the harness or a timeout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=${CASES:-"ab replay memory"}
RUNS=${RUNS:-}
BEFORE=${BEFORE:-a8dd02c}
MEM_N=${MEM_N:-100000}
MEM_PAYLOADS=${MEM_PAYLOADS:-"256 2048"}
RESULTS=${RESULTS:-$ROOT/target/bench-results/history-$(date -u +%Y%m%dT%H%M%SZ)}
LT=$ROOT/target/release/shardcast-loadtest
CONFIG=$ROOT/loadtest/bench.toml
HCONFIG=$RESULTS/bench-history.toml

mkdir -p "$RESULTS"
echo "history.sh: results in $RESULTS" >&2
cat "$CONFIG" "$ROOT/loadtest/history.toml" >"$HCONFIG"
if [ -z "${SC:-}" ]; then
  (cd "$ROOT" && cargo build --release -p shardcast -p shardcast-loadtest)
  SC=$ROOT/target/release/shardcast
else
  (cd "$ROOT" && cargo build --release -p shardcast-loadtest)
fi

# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"

# The broker before history, built from its own worktree (removed again if made here).
before_binary() {
  if [ -n "${SC_BEFORE:-}" ]; then echo "$SC_BEFORE"; return; fi
  local dir=${BEFORE_DIR:-/tmp/sc-before} target=${BEFORE_TARGET:-/tmp/sc-before-target} made=""
  if [ ! -d "$dir" ]; then
    git -C "$ROOT" worktree add --detach "$dir" "$BEFORE" >&2
    made=1
  fi
  (cd "$dir" && CARGO_TARGET_DIR=$target cargo build --release -p shardcast --bin shardcast) >&2
  cp "$target/release/shardcast" "$RESULTS/shardcast-$BEFORE"
  if [ -n "$made" ]; then git -C "$ROOT" worktree remove --force "$dir" >&2; fi
  echo "$RESULTS/shardcast-$BEFORE"
}

BPID=""
ADDR=""

# start BINARY CONFIG: a fresh broker, one shard per core.
start() {
  "$1" serve --listen 127.0.0.1:0 --config "$2" --shards 0 \
    >"$RESULTS/broker.out" 2>"$RESULTS/broker.err" &
  BPID=$!
  wait_for "$RESULTS/broker.out" "listening on"
  ADDR=$(grep -o '127\.0\.0\.1:[0-9]*' "$RESULTS/broker.out" | head -1)
}

trap stop EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$BPID/status"; }

# ---- ab: fan-out before history, after it without a rule, after it with one ----------
case_ab() {
  local runs=${RUNS:-5} sc_before targets=(before after history)
  sc_before=$(before_binary)
  local args=(fanout --subs 1000 --rate 1000)
  for r in $(seq "$runs"); do
    # Rotate the order each round, so no target always goes first.
    for k in 0 1 2; do
      local t=${targets[$(((k + r) % 3))]}
      case "$t" in
        before) start "$sc_before" "$CONFIG" ;;
        after) start "$SC" "$CONFIG" ;;
        history) start "$SC" "$HCONFIG" ;;
      esac
      echo "history.sh: ab $t #$r ($ADDR)" >&2
      "$LT" run "${args[@]}" --url "ws://$ADDR/ws" --pid "$BPID" --broker-stats "$ADDR" \
        --label "$t #$r" --quiet --json "$RESULTS/ab.$t.$r.json" | tee -a "$RESULTS/ab.log" >&2 || true
      stop
    done
  done
  {
    echo "### fanout-1m: before history ($BEFORE), after without a rule, after with history on bench/0"
    echo
    echo "\`shardcast-loadtest run ${args[*]} --url URL --pid PID --broker-stats ADDR\`"
    echo
    "$LT" summarize "$RESULTS"/ab.*.json
    echo
    echo "Ratios within each round (deliveries per broker CPU-second; p99):"
    echo
    echo "| round | after / before | history / after | p99 before / after / history ms |"
    echo "|---|---:|---:|---|"
    for r in $(seq "$runs"); do
      local b a h
      b=$(jq '.broker.deliveries_per_cpu_s // 0' "$RESULTS/ab.before.$r.json")
      a=$(jq '.broker.deliveries_per_cpu_s // 0' "$RESULTS/ab.after.$r.json")
      h=$(jq '.broker.deliveries_per_cpu_s // 0' "$RESULTS/ab.history.$r.json")
      printf '| %s | %s | %s | %s / %s / %s |\n' "$r" \
        "$(awk -v x="$a" -v y="$b" 'BEGIN { printf "%.3f", (y > 0 ? x / y : 0) }')" \
        "$(awk -v x="$h" -v y="$a" 'BEGIN { printf "%.3f", (y > 0 ? x / y : 0) }')" \
        "$(jq '.latency_ms.p99 * 100 | round / 100' "$RESULTS/ab.before.$r.json")" \
        "$(jq '.latency_ms.p99 * 100 | round / 100' "$RESULTS/ab.after.$r.json")" \
        "$(jq '.latency_ms.p99 * 100 | round / 100' "$RESULTS/ab.history.$r.json")"
    done
  } >"$RESULTS/ab.md"
}

# ---- replay: live fan-out filling a history channel, then late joiners ----------------
case_replay() {
  local runs=${RUNS:-3}
  for joiners in 1000 100; do
    local name=replay-$joiners
    local args=(replay --subs "$joiners" --fill 10000 --rate 1000 --topic-prefix replay)
    for r in $(seq "$runs"); do
      start "$SC" "$HCONFIG"
      echo "history.sh: $name #$r ($ADDR)" >&2
      "$LT" run "${args[@]}" --url "ws://$ADDR/ws" --pid "$BPID" --broker-stats "$ADDR" \
        --label "$name #$r" --quiet --json "$RESULTS/$name.$r.json" | tee -a "$RESULTS/replay.log" >&2 || true
      stop
    done
    {
      echo "### $name"
      echo
      echo "\`shardcast-loadtest run ${args[*]} --url URL --pid PID --broker-stats ADDR\`"
      echo
      "$LT" summarize "$RESULTS/$name".*.json
      echo
    } >>"$RESULTS/replay.md"
  done
}

# ---- memory: RSS per retained publication -----------------------------------------------
# batch_file CHANNEL PAYLOAD COUNT: a POST /api/publish body of COUNT publications whose
# data is a JSON object of PAYLOAD bytes.
batch_file() {
  local f=$RESULTS/batch-${1//\//_}-$2-$3.json
  awk -v ch="$1" -v p="$2" -v n="$3" 'BEGIN {
    pad = ""; for (i = 0; i < p - 8; i++) pad = pad "x"
    printf "["
    for (i = 0; i < n; i++) printf "%s{\"channel\":\"%s\",\"data\":{\"x\":\"%s\"}}", (i ? "," : ""), ch, pad
    printf "]"
  }' >"$f"
  echo "$f"
}

# publish_n CHANNEL PAYLOAD N: N publications in batches under the API's limits (1000
# items, 1 MiB body).
publish_n() {
  local per=$((900000 / ($2 + 64)))
  [ "$per" -gt 1000 ] && per=1000
  local f left=$3
  f=$(batch_file "$1" "$2" "$per")
  while [ "$left" -gt 0 ]; do
    if [ "$left" -lt "$per" ]; then f=$(batch_file "$1" "$2" "$left"); per=$left; fi
    curl -fsS --max-time 30 -H 'Content-Type: application/json' --data-binary "@$f" \
      "http://$ADDR/api/publish" >/dev/null
    left=$((left - per))
  done
}

# settle: let the shards' periodic mi_collect give freed pages back before reading RSS.
settle() { sleep 1.5; }

case_memory() {
  local runs=${RUNS:-3} n=$MEM_N
  printf 'payload\trun\tn\trss_base_kib\trss_retained_kib\trss_vws_kib\trss_gows_kib\tretained\tretained_bytes\tstore_B\tvws_B\tgows_B\n' >"$RESULTS/memory.tsv"
  for p in $MEM_PAYLOADS; do
    for r in $(seq "$runs"); do
      start "$SC" "$HCONFIG"
      echo "history.sh: memory ${p} B #$r ($ADDR)" >&2
      # The same traffic to a channel without history first: what publishing itself
      # leaves resident (HTTP buffers, allocator pages) is in the baseline.
      publish_n plain/0 "$p" "$n"
      settle
      local base retained vws gows stats
      base=$(rss_kib)
      publish_n mem/0 "$p" "$n"
      settle
      retained=$(rss_kib)
      stats=$(curl -fsS --max-time 10 "http://$ADDR/api/stats")
      # One joiner per dialect replays the channel: its publications now keep a frame
      # rendered for that dialect.
      local replay=(replay --fill 0 --subs 1 --topic-prefix mem --url "ws://$ADDR/ws" --quiet --check)
      "$LT" run "${replay[@]}" >>"$RESULTS/memory.log"
      settle
      vws=$(rss_kib)
      "$LT" run "${replay[@]}" --dialect gows >>"$RESULTS/memory.log"
      settle
      gows=$(rss_kib)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$r" "$n" "$base" "$retained" "$vws" "$gows" \
        "$(jq .history.retained <<<"$stats")" "$(jq .history.retained_bytes <<<"$stats")" \
        "$(awk -v a="$base" -v b="$retained" -v n="$n" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')" \
        "$(awk -v a="$retained" -v b="$vws" -v n="$n" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')" \
        "$(awk -v a="$vws" -v b="$gows" -v n="$n" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')" \
        | tee -a "$RESULTS/memory.tsv" >&2
      stop
    done
  done
  {
    echo "### memory per retained publication ($n per run)"
    echo
    echo "| payload B | run | RSS base KiB | + retained KiB | + vws frames KiB | + gows frames KiB | store B/pub | vws frame B/pub | gows frame B/pub | counted B/pub |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 { printf "| %s | #%s | %s | %s | %s | %s | %s | %s | %s | %.0f |\n", $1, $2, $4, $5, $6, $7, $10, $11, $12, $9 / $8 }' "$RESULTS/memory.tsv"
    for p in $MEM_PAYLOADS; do
      awk -F'\t' -v p="$p" '
        function med(a, n,   i, j, t) {
          for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
          return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        NR > 1 && $1 == p { k++; s[k] = $10; v[k] = $11; g[k] = $12; c[k] = $9 / $8 }
        END { printf "| **%s median of %d** | | | | | | %.0f | %.0f | %.0f | %.0f |\n", p, k, med(s, k), med(v, k), med(g, k), med(c, k) }
      ' "$RESULTS/memory.tsv"
    done
  } >"$RESULTS/memory.md"
}

for c in $CASES; do
  case "$c" in
    ab) case_ab ;;
    replay) case_replay ;;
    memory) case_memory ;;
    *) echo "history.sh: unknown case $c" >&2; exit 2 ;;
  esac
done
for c in $CASES; do cat "$RESULTS/$c.md"; echo; done | tee "$RESULTS/summary.md"
echo "history.sh: summary in $RESULTS/summary.md" >&2
