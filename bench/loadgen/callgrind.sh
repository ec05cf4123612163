#!/usr/bin/env bash
# callgrind.sh: instructions the server executes per call, a figure that does not depend on how
# busy the machine is, so regressions show up across runs.
#
#   bench/loadgen/callgrind.sh [CALLS]     (default 20000; env SCENARIOS="echo health get_user",
#                                           also send_message, list_messages, login)
#
# Every run gets a fresh database seeded by lagoon-bench seed (1 000 users with sessions,
# 10 000 messages, 5 000 of them in user0-user1), so that the scenarios acting as users work.
# For each scenario, lagoond runs under valgrind --tool=callgrind (1 loop thread, 1 worker)
# twice: an idle baseline (start, one connection attempt, SIGTERM) and a run serving CALLS
# calls from lagoon-bench (1 connection, 16 in flight). Instructions per call =
# (Ir of the run - Ir of the baseline) / CALLS, so start-up and shutdown are not counted.
# The top functions of the run (self cost) follow. About a minute per scenario (login: use a
# few hundred CALLS; each is an Argon2id hash).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lg_cleanup EXIT
trap 'exit 143' INT TERM # a signal ends the script (and so runs lg_cleanup), not just the step

CALLS=${1:-20000}
SCENARIOS=${SCENARIOS:-"echo health get_user"}
lg_need_build
lg_need_cmd valgrind valgrind
lg_need_cmd callgrind_annotate valgrind
lg_tmp

# Runs lagoond under callgrind; with a scenario, serves CALLS calls of it. Prints the total Ir.
cg_run() { # name scenario|-
  local name=$1 scenario=$2 port out
  port=$(lg_free_port)
  out="$TMP_DIR/callgrind.$name"
  "$BENCH" seed --data "$TMP_DIR/data.$name" --users 1000 --messages 10000 --conversations 100 >/dev/null 2>&1 ||
    lg_die "cannot seed $TMP_DIR/data.$name"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$LAGOOND" --listen "127.0.0.1:$port" \
    --data "$TMP_DIR/data.$name" --log-level warn --threads 1 --workers 1 --debug-methods >"$TMP_DIR/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  if [[ $scenario != - ]]; then
    timeout 600 "$BENCH" --port "$port" --scenario "$scenario" --calls "$CALLS" --connections 1 --depth 16 \
      --warmup 0 --json --data "$TMP_DIR/data.$name" >"$TMP_DIR/$name.json"
  fi
  lg_stop "$pid"
  [[ -s $out ]] || lg_die "no callgrind output for $name: $(tail -5 "$TMP_DIR/$name.log")"
  awk '/^summary:/{print $2} /^totals:/{t=$2} END{}' "$out" | head -1
}

echo "callgrind: lagoond --threads 1 --workers 1, $CALLS calls per scenario, 1 connection x 16 in flight"
BASE=$(cg_run idle -)
printf '%-13s %16s\n' "idle" "$BASE Ir (start-up, one connection attempt, drain)"
for sc in $SCENARIOS; do
  if ! "$BENCH" --list | awk '{print $1, $NF}' | grep -q "^$sc " ; then
    echo "$sc: unknown scenario"; continue
  fi
  IR=$(cg_run "$sc" "$sc")
  OK=$(lg_json ok <"$TMP_DIR/$sc.json")
  PER=$(( (IR - BASE) / (OK > 0 ? OK : 1) ))
  printf '%-13s %16s Ir, %s calls ok: %s instructions per call\n' "$sc" "$IR" "$OK" "$PER"
  echo "  top functions by self cost (whole run):"
  callgrind_annotate --inclusive=no "$TMP_DIR/callgrind.$sc" 2>/dev/null >"$TMP_DIR/$sc.annotate" || true
  awk 'found && NF>1 && n++<12 {print "    " $0} /file:function/{found=1}' "$TMP_DIR/$sc.annotate"
  echo "  callers of memset (inclusive Ir; none listed if memset is negligible):"
  callgrind_annotate --tree=caller --inclusive=yes "$TMP_DIR/callgrind.$sc" 2>/dev/null >"$TMP_DIR/$sc.tree" || true
  grep -B6 -E '^ *[0-9,]+ .*\* .*memset' "$TMP_DIR/$sc.tree" | grep -E '<' | head -6 | sed 's/^/    /' || true
  [[ -n ${KEEP:-} ]] && cp "$TMP_DIR/callgrind.$sc" "$KEEP.$sc" || true
done
