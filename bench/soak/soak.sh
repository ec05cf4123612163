#!/usr/bin/env bash
# soak.sh: lagoond under thousands of hostile connections beside real users, for a bounded time
# (the soak of issue 10; results in docs/PERFORMANCE.md, "Soak").
#
#   bench/soak/soak.sh [--short] [lagoon-soak options...]
#
# Seeds a fresh database (lagoon-bench seed: SOAK_USERS users, default 2000, with 20 000
# messages), starts lagoond on it (ephemeral port on 127.0.0.1, temp data dir next to the build,
# --log-level warn, --debug-methods when this lagoond has the flag, plus $SOAK_LAGOOND_FLAGS),
# raises the file descriptor limit to the hard limit for both, and runs lagoon-soak: a baseline
# of real users alone, then --seconds (default 180) of --connections (default 3000) hostile
# connections with the real users going on, then the real users alone again after every hostile
# connection closed. lagoon-soak prints lagoond's RSS timeline and the report; this script then
# checks that lagoond is still alive, stops it with SIGTERM and reports its exit status and what
# its log holds.
#
# --short: 20 s of load with 300 hostile connections (a few minutes less than the real thing;
# options after it still apply, the last of a repeated option wins). The binaries come from
# $LAGOON_BUILD (default build-bench); lagoon-soak --help lists its options.
#
# Exit status: 0 lagoond survived and answered real calls in every phase and stopped cleanly;
# 1 otherwise (a crash, a phase without one successful real call, a bad exit on SIGTERM).
set -euo pipefail
# shellcheck source=../loadgen/lib.sh
source "$(dirname "$0")/../loadgen/lib.sh"
trap lg_cleanup EXIT
trap 'exit 143' INT TERM # a signal ends the script (and so runs lg_cleanup), not just the step

SOAK=$BUILD_DIR/bench/soak/lagoon-soak
# Hostile connections come from 127.0.0.2-17 (--sources 16: under 200 per address at the
# default 3000), so that lagoond's per-address cap (256) lets them in and the soak measures
# thousands of held connections; the real users connect from 127.0.0.1. --sources 0 sends
# everything from 127.0.0.1 and shows the cap at work instead.
args=(--sources 16)
if [[ ${1:-} == --short ]]; then
  shift
  args+=(--seconds 20 --connections 300 --cancel-conns 4 --baseline 5 --after 8 --interval 2)
fi
args+=("$@")
# The phases' lengths, for the outer bound (lagoon-soak stops by itself; this is a backstop).
secs=180 base=15 after=20 cycles=1
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  case ${args[i]} in
    --seconds) secs=${args[i + 1]} ;;
    --baseline) base=${args[i + 1]} ;;
    --after) after=${args[i + 1]} ;;
    --cycles) cycles=${args[i + 1]} ;;
  esac
done

lg_need_build
[[ -x $SOAK ]] || lg_die "$SOAK missing: cmake --build $BUILD_DIR --target lagoon-soak"
# Every connection is a descriptor on both sides: take what the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "soak: ulimit -n $(ulimit -n) (soak and lagoond each), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

lg_tmp
DATA=$TMP_DIR/lagoon
"$BENCH" seed --data "$DATA" --users "${SOAK_USERS:-2000}" --messages 20000 2>/dev/null | sed -n 1p

flags=()
# (Read whole, not piped into grep -q: with pipefail, grep leaving early fails the pipe.)
help=$("$LAGOOND" --help 2>&1 || true)
if [[ $help == *--debug-methods* ]]; then
  flags+=(--debug-methods)
else
  args=(--no-debug "${args[@]}")
  echo "soak: this lagoond has no --debug-methods: hostile kinds that need Debug are replaced"
fi
# shellcheck disable=SC2206 # extra flags are words on purpose
flags+=(${SOAK_LAGOOND_FLAGS:-})
PORT=$(lg_free_port)
lg_start_lagoond "$PORT" "$DATA" "${flags[@]}"
# The source the binaries were built from, if it is a git checkout ("-dirty": with uncommitted
# changes, which a shared working tree may hold).
build="unknown (not a git checkout)"
if [[ $(git -C "$REPO_DIR" rev-parse --show-toplevel 2>/dev/null) == "$REPO_DIR" ]]; then
  build=$(git -C "$REPO_DIR" describe --always --dirty)
fi
echo "soak: lagoond pid $LAGOOND_PID on 127.0.0.1:$PORT, flags: ${flags[*]:-none}; source $build"

rc=0
timeout $((base + cycles * (secs + after) + 120)) "$SOAK" --pid "$LAGOOND_PID" --port "$PORT" \
  --tokens "$DATA/bench-tokens.txt" "${args[@]}" || rc=$?

state=$(awk '/^State:/ {print $2}' "/proc/$LAGOOND_PID/status" 2>/dev/null || echo gone)
if [[ $state == gone || $state == Z || $state == X ]]; then
  echo "soak: lagoond is NOT running at the end (state $state): a crash"
  rc=1
  wait "$LAGOOND_PID" 2>/dev/null && st=0 || st=$?
  echo "soak: lagoond exit status $st"
else
  # SIGTERM: it drains (GOAWAY, calls in flight up to 10 s) and exits; bounded wait, then KILL.
  kill -TERM "$LAGOOND_PID"
  for _ in $(seq 300); do [[ $(awk '/^State:/ {print $2}' "/proc/$LAGOOND_PID/status" 2>/dev/null) == Z ]] && break; kill -0 "$LAGOOND_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$LAGOOND_PID" 2>/dev/null || true
  wait "$LAGOOND_PID" 2>/dev/null && st=0 || st=$?
  echo "soak: lagoond stopped by SIGTERM, exit status $st"
  ((st == 0)) || rc=1
fi
PIDS=()

LOG=$DATA.log
echo "soak: lagoond log: $(wc -l <"$LOG") lines, $(du -h "$LOG" | cut -f1); most frequent (timestamps and numbers folded):"
sed -E 's/^[0-9TZ:.+ -]+//; s/[0-9]+/N/g' "$LOG" | sort | uniq -c | sort -rn | head -8 | sed 's/^/  /'
if grep -qE 'AddressSanitizer|runtime error|Segmentation|double free|corrupted|Aborted' "$LOG"; then
  echo "soak: the log shows a crash:"
  grep -E 'AddressSanitizer|runtime error|Segmentation|double free|corrupted|Aborted' "$LOG" | head -5
  rc=1
fi
[[ -n ${SOAK_KEEP_LOG:-} ]] && cp "$LOG" "$SOAK_KEEP_LOG"
if ((rc == 0)); then echo "soak: PASS"; else echo "soak: FAIL"; fi
exit "$rc"
