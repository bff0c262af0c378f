# Shell helpers shared by compare.sh and cluster.sh; sourced, not run.

# wait_for FILE PATTERN: until PATTERN appears in FILE (a process's log), at most 10 s.
wait_for() {
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): process did not start; see $1" >&2
  return 1
}
