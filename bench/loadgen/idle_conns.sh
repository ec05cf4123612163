#!/usr/bin/env bash
# idle_conns.sh: server memory per idle connection (target of issue 7: 10 000 held, < 8 KiB each).
#
#   bench/loadgen/idle_conns.sh [COUNT]      (default 10000)
#
# Starts lagoond (ephemeral port, temp data dir, --log-level warn), warms it with a few calls so
# that lazily created state (thread arenas, the first bufferevents) is not charged to the idle
# connections, then lagoon-idle-conns opens COUNT connections, each sending the preface and
# reading SETTINGS, and reports the growth of lagoond's VmRSS per connection. Kernel socket
# structures are not in the process RSS (idle sockets hold no buffer pages).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lg_cleanup EXIT
trap 'exit 143' INT TERM # a signal ends the script (and so runs lg_cleanup), not just the step

COUNT=${1:-10000}
lg_need_build
NEED=$((COUNT + 100))
if (( $(ulimit -n) < NEED )); then
  ulimit -n "$NEED" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
(( $(ulimit -n) >= NEED )) || lg_die "need $NEED file descriptors, the hard limit is $(ulimit -Hn)"
lg_tmp
PORT=$(lg_free_port)
lg_start_lagoond "$PORT" "$TMP_DIR/lagoon" --max-connections $((COUNT + 100)) --max-connections-per-address $((COUNT + 100))
timeout 60 "$BENCH" --port "$PORT" --scenario health --connections 50 --calls 20000 --warmup 0 >/dev/null
sleep 0.5
echo "lagoond pid $LAGOOND_PID on port $PORT, $(nproc) loop threads; $COUNT idle connections:"
timeout 120 "$IDLE" --pid "$LAGOOND_PID" --port "$PORT" --count "$COUNT" --hold 1
