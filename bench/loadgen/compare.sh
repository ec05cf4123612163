#!/usr/bin/env bash
# compare.sh: Lagoon against Redis on this machine, one after the other, same concurrency.
#
#   bench/loadgen/compare.sh     (env: ROUNDS=3 DURATION=5 THREADS=2 LAGOON_BUILD=build dir)
#
# Starts redis-server on loopback (persistence off, ephemeral port) and lagoond (ephemeral port,
# temp data dir, --log-level warn), then, ROUNDS times, one after the other: redis-benchmark GET
# and lagoon-bench at the same concurrency. Prints each Lagoon figure (median over rounds) with
# its ratio to Redis's and the targets of issue 7. Both load generators get THREADS threads
# (redis-benchmark --threads), since one client thread cannot saturate either server here:
#   echo    50 connections x 16 in flight   vs  redis GET -c 50 -P 16   (target >= 0.5x)
#   health  50 connections x 1              vs  redis GET -c 50         (target >= 0.8x; stands
#                                               in for get_user until it exists)
#   p99 of health in an open loop at half its saturation rate (target < 1 ms; saturation = the
#   highest open-loop rate a quick sweep sustains), generator sleeping between calls and spinning
#   the disk's synchronous 4 KiB writes per second (dd oflag=dsync), for send_message's target
#   (>= 5x that) once send_message exists.
# Takes about 30 s per round plus 30 s; every step is bounded and everything started is stopped on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lg_cleanup EXIT INT TERM

DURATION=${DURATION:-5}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
lg_need_build
lg_need_cmd redis-server redis-server
lg_need_cmd redis-benchmark redis-tools
lg_need_cmd python3 python3
lg_tmp

# Other work on the machine skews every figure: say how busy it was before and after.
busy() { # percent of all cores busy over one second
  local a b
  a=($(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)); sleep 1
  b=($(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat))
  echo $(( 100 * (b[0] - a[0]) / (b[0] - a[0] + b[1] - a[1] + 1) ))
}
echo "machine busy before the run: $(busy) % of all cores (anything above a few % skews the figures)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "lagoon-bench: $THREADS threads, ${DURATION} s per run after 2 s warm-up, $ROUNDS rounds; lagoond: default threads ($(nproc)); redis-benchmark: --threads $THREADS"
echo

# ---- Servers --------------------------------------------------------------------------------
# Both run for the whole script; only one is under load at any time (an idle server sleeps in
# epoll_wait). Rounds alternate between them so that drift in the machine (other tenants of a
# shared host) hits both alike; the report gives each figure's median over the rounds.
RPORT=$(lg_free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --logfile "$TMP_DIR/redis.log" --dir "$TMP_DIR" &
PIDS+=("$!")
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$RPORT" ping >/dev/null || lg_die "redis-server did not start"
# The key redis-benchmark GETs (key:__rand_int__ is key:000000000000 without -r), 3 bytes as
# its default -d; echo sends a comparable 16-byte payload.
redis-cli -p "$RPORT" set key:000000000000 xxx >/dev/null
LPORT=$(lg_free_port)
lg_start_lagoond "$LPORT" "$TMP_DIR/lagoon"

# redis-benchmark runs by count: sized for about DURATION seconds at this machine's rates.
redis_rps() { # args: extra redis-benchmark flags
  timeout 120 redis-benchmark -h 127.0.0.1 -p "$RPORT" -t get -c 50 --threads "$THREADS" --csv "$@" 2>/dev/null |
    awk -F'"' '$2=="GET"{print $4}'
}
bench() { timeout 300 "$BENCH" --port "$LPORT" --threads "$THREADS" --warmup 2 --duration "$DURATION" --json "$@"; }

redis_rps -n 300000 -P 16 >/dev/null # warm-up: Redis gets one too
R_P16=() R_P1=() ECHO=() HEALTH=()
for round in $(seq "$ROUNDS"); do
  R_P16+=("$(redis_rps -n $((DURATION * 900000)) -P 16)")
  ECHO+=("$(bench --scenario echo --connections 50 --depth 16 --payload 16)")
  R_P1+=("$(redis_rps -n $((DURATION * 100000)))")
  HEALTH+=("$(bench --scenario health --connections 50 --depth 1)")
  echo "round $round: redis GET -P 16 ${R_P16[-1]}/s, echo $(lg_json throughput <<<"${ECHO[-1]}")/s," \
    "redis GET ${R_P1[-1]}/s, health $(lg_json throughput <<<"${HEALTH[-1]}")/s"
done
# p99 at half of health's saturation rate: the highest open-loop rate it sustains (a coarse
# sweep, 2 s per step, up to the first step that misses its rate or whose p99 passes 100 ms).
timeout 600 "$BENCH" --port "$LPORT" --threads "$THREADS" --warmup 1 --duration 2 --json --scenario health \
  --connections 50 --sweep 20000:20000:1000000 --out "$TMP_DIR/sweep.dat" >/dev/null
SAT=$(awk '!/^#/{n++; rate[n]=$1} END{print (n > 1 ? rate[n-1] : rate[1])}' "$TMP_DIR/sweep.dat")
HALF=$((SAT / 2))
HALF_JSON=$(bench --scenario health --connections 50 --rate "$HALF")
# Spinning costs a core per generator thread: one thread, so the server keeps the other core.
HALF_SPIN_JSON=$(timeout 300 "$BENCH" --port "$LPORT" --threads 1 --warmup 2 --duration "$DURATION" --json \
  --scenario health --connections 50 --rate "$HALF" --spin)

# ---- The disk -------------------------------------------------------------------------------
# 4 KiB writes, each synchronous (O_DSYNC): what one durable commit at a time can reach. Bounded
# by count and by timeout.
DD_OUT=$(LC_ALL=C timeout 60 dd if=/dev/zero of="$TMP_DIR/sync.dat" bs=4096 count=2000 oflag=dsync 2>&1 | tail -1)
DD_S=$(sed -E 's/.* copied, ([0-9.]+) s.*/\1/' <<<"$DD_OUT")
SYNC_RATE=$(python3 -c "print(int(2000/$DD_S))")

# ---- Report ---------------------------------------------------------------------------------
echo "machine busy after the run: $(busy) %"
echo
{
  printf '%s\n' "${R_P16[*]}" "${R_P1[*]}" "$SYNC_RATE"
  printf '%s\n' "${ECHO[@]}"
  printf '%s\n' "${HEALTH[@]}"
  printf '%s\n' "$HALF_JSON" "$HALF_SPIN_JSON" "$SAT"
} >"$TMP_DIR/results.txt"
python3 - "$TMP_DIR/results.txt" <<'PY'
import json, sys, statistics as st
lines = open(sys.argv[1]).read().splitlines()
r16 = [float(x) for x in lines[0].split()]
r1 = [float(x) for x in lines[1].split()]
sync = float(lines[2])
n = len(r16)
echo = [json.loads(l) for l in lines[3:3 + n]]
health = [json.loads(l) for l in lines[3 + n:3 + 2 * n]]
half, half_spin = (json.loads(l) for l in lines[3 + 2 * n:5 + 2 * n])
sat = float(lines[5 + 2 * n])

def med(runs, *path):
    vals = []
    for j in runs:
        for key in path:
            j = j[key]
        vals.append(j)
    return st.median(vals)

def row(name, runs, redis_name, redis, target):
    lagoon = med(runs, "throughput")
    ratio = lagoon / st.median(redis)
    verdict = "met" if ratio >= target else "MISSED"
    print(f"{name:34s} {lagoon:10,.0f}/s  {redis_name:16s} {st.median(redis):10,.0f}/s  {ratio:5.2f}x  (target >= {target}x: {verdict})")
    per = ", ".join(f"{j['throughput'] / r:.2f}" for j, r in zip(runs, redis))
    print(f"{'':34s} ratio per round: {per}")

print(f"medians of {n} rounds")
print(f"{'lagoon':34s} {'calls':>12s}  {'redis':16s} {'requests':>12s}")
row("echo 50 conns x 16 in flight", echo, "GET -c 50 -P 16", r16, 0.5)
row("health 50 conns x 1 (for get_user)", health, "GET -c 50", r1, 0.8)
for name, runs in (("echo", echo), ("health", health)):
    q = "  ".join(f"{p} {med(runs, 'latency_us', p):.0f}" for p in ("p50", "p90", "p99", "p99.9", "max"))
    print(f"  {name:6s} latency us (medians): {q}; errors {sum(j['errors'] for j in runs)}")
print(f"health saturation (open loop, 50 conns, highest rate sustained in a 2 s-step sweep): {sat:,.0f}/s")
for label, j in (("", half), (", 1 generator thread spinning", half_spin)):
    l = j["latency_us"]
    verdict = "met" if l["p99"] < 1000 else "MISSED"
    print(f"health open loop at half saturation ({j['rate']:.0f}/s, 50 conns{label}): achieved {j['throughput']:.0f}/s, "
          f"p50 {l['p50']:.0f} us, p99 {l['p99']:.0f} us (target < 1000 us: {verdict}), "
          f"generator's send lag p99 {j['send_lag_us']['p99']:.0f} us")
print(f"disk: {sync:,.0f} synchronous 4 KiB writes/s -> send_message target >= {5 * sync:,.0f}/s "
      "(send_message: not available until the Messages service exists)")
PY
