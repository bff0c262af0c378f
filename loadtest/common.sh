# Shell helpers shared by the loadtest scripts; sourced, not run.

# wait_for FILE PATTERN: until PATTERN appears in FILE (a process's log), at most 10 s.
wait_for() {
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): process did not start; see $1" >&2
  return 1
}

# A port below the ephemeral range (so no client socket of the harness holds it) that
# nothing listens on.
free_port() {
  local p low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  while :; do
    p=$((10000 + RANDOM % (low - 10000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# stop: ends the broker the script started last ($BPID), if any.
stop() {
  if [ -n "${BPID:-}" ]; then
    kill "$BPID" 2>/dev/null || true
    wait "$BPID" 2>/dev/null || true
  fi
  BPID=""
}
