#!/usr/bin/env bash
# compare.sh: Lagoon against Redis and against the disk on this machine, one after the other,
# same concurrency, and the targets of issues 7 and 12.
#
#   bench/loadgen/compare.sh   (env: ROUNDS=3 DURATION=5 THREADS=2 USERS=10000 LAGOON_BUILD=build dir)
#
# Seeds a database (lagoon-bench seed: USERS users with sessions, 100 000 messages), starts
# redis-server on loopback (persistence off) and lagoond on the seeded database (durable
# commits, the default), then, ROUNDS times, one after the other:
#   echo          50 connections x 16 in flight   vs  redis GET -c 50 -P 16   (target >= 0.5x),
#                 both generators single-threaded (lagoon-bench --threads 1, redis-benchmark's default)
#   get_user      50 connections x 1              vs  redis GET -c 50         (target >= 1.0x)
#   health        50 connections x 1              (reference: the same without auth and LMDB)
#   send_message  50 connections x 1, durable     vs  5 x the disk's synchronous 4 KiB writes/s
#                                                 (dd oflag=dsync, measured in every round)
# Both load generators get THREADS threads (redis-benchmark --threads). Then:
#   p99 of get_user in an open loop at half its saturation rate (target < 1 ms; saturation = the
#   highest open-loop rate a quick sweep sustains), generator sleeping and spinning;
#   login: Auth/Login alone (the Argon2id cost), and get_user at a fixed open-loop rate without
#   and then with a login load beside it (a second lagoon-bench keeping every worker hashing);
#   list_messages: the newest page of a conversation of 1 000 and of 1 000 000 messages (two
#   more seeded databases, one lagoond each), alternating over ROUNDS (target: within 1.5x).
# Prints each figure as a median over rounds with the per-round ratios. About 5.5 minutes with
# the defaults; every step is bounded and everything started or written is removed on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lg_cleanup EXIT
trap 'exit 143' INT TERM # a signal ends the script (and so runs lg_cleanup), not just the step

DURATION=${DURATION:-5}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
USERS=${USERS:-10000}
LOGIN_CONNS=${LOGIN_CONNS:-8}   # > lagoond's 4 workers: every worker always has a login to hash
GET_RATE=${GET_RATE:-5000}      # get_user's open-loop rate beside the logins
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
echo "lagoon-bench: $THREADS threads, ${DURATION} s per run after 2 s warm-up, $ROUNDS rounds; lagoond: default threads ($(nproc)) and workers, sync=full; redis-benchmark: --threads $THREADS"

# ---- Databases ------------------------------------------------------------------------------
# Seeded offline before any server runs on them (lagoon-bench seed refuses a database that
# already has users). main: get_user, send_message, login; l1k and l1m: list_messages.
seed() { timeout 300 "$BENCH" seed "$@" 2>/dev/null | sed -n 1p; }
seed --data "$TMP_DIR/main" --users "$USERS" --messages 100000
seed --data "$TMP_DIR/l1k" --users 100 --messages 1000 --conversations 1
seed --data "$TMP_DIR/l1m" --users 100 --messages 1000000 --conversations 1
echo

# ---- Servers --------------------------------------------------------------------------------
# All run for the whole script; only one is under load at any time (an idle server sleeps in
# epoll_wait). Rounds alternate between them so that drift in the machine (other tenants of a
# shared host) hits all alike; the report gives each figure's median over the rounds.
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
lg_start_lagoond "$LPORT" "$TMP_DIR/main"
PORT_1K=$(lg_free_port)
lg_start_lagoond "$PORT_1K" "$TMP_DIR/l1k"
PORT_1M=$(lg_free_port)
lg_start_lagoond "$PORT_1M" "$TMP_DIR/l1m"

# redis-benchmark runs by count: sized for about DURATION seconds at this machine's rates.
redis_rps() { # args: extra redis-benchmark flags
  timeout 120 redis-benchmark -h 127.0.0.1 -p "$RPORT" -t get -c 50 --threads "$THREADS" --csv "$@" 2>/dev/null |
    awk -F'"' '$2=="GET"{print $4}'
}
# The same single-threaded, as redis-benchmark runs without --threads: for echo against -P 16.
redis_rps_1t() {
  timeout 120 redis-benchmark -h 127.0.0.1 -p "$RPORT" -t get -c 50 --csv "$@" 2>/dev/null |
    awk -F'"' '$2=="GET"{print $4}'
}
bench_t() { # args: generator threads, then lagoon-bench flags
  local t=$1
  shift
  timeout 300 "$BENCH" --port "$LPORT" --threads "$t" --warmup 2 --duration "$DURATION" --json "$@"
}
bench() { bench_t "$THREADS" "$@"; }
# The disk: 4 KiB writes, each synchronous (O_DSYNC), in the directory of the databases.
disk_sync_rate() { lg_disk_sync_rate; }

redis_rps -n 300000 -P 16 >/dev/null # warm-up: Redis gets one too
R_P16=() R_P1=() ECHO=() GET=() HEALTH=() SEND=() SYNC=()
for round in $(seq "$ROUNDS"); do
  R_P16+=("$(redis_rps_1t -n $((DURATION * 900000)) -P 16)")
  ECHO+=("$(bench_t 1 --scenario echo --connections 50 --depth 16 --payload 16)")
  R_P1+=("$(redis_rps -n $((DURATION * 100000)))")
  GET+=("$(bench --scenario get_user --data "$TMP_DIR/main" --connections 50 --depth 1)")
  HEALTH+=("$(bench --scenario health --connections 50 --depth 1)")
  SYNC+=("$(disk_sync_rate)")
  SEND+=("$(bench --scenario send_message --data "$TMP_DIR/main" --connections 50 --depth 1)")
  echo "round $round: redis GET -P 16 ${R_P16[-1]}/s, echo $(lg_json throughput <<<"${ECHO[-1]}")/s," \
    "redis GET ${R_P1[-1]}/s, get_user $(lg_json throughput <<<"${GET[-1]}")/s," \
    "health $(lg_json throughput <<<"${HEALTH[-1]}")/s, disk ${SYNC[-1]} sync writes/s," \
    "send_message $(lg_json throughput <<<"${SEND[-1]}")/s"
done

# p99 at half of get_user's saturation rate: the highest open-loop rate it sustains (a coarse
# sweep, 2 s per step, up to the first step that misses its rate or whose p99 passes 100 ms).
timeout 600 "$BENCH" --port "$LPORT" --threads "$THREADS" --warmup 1 --duration 2 --json --scenario get_user \
  --data "$TMP_DIR/main" --connections 50 --sweep 10000:10000:1000000 --out "$TMP_DIR/sweep.dat" >/dev/null
SAT=$(awk '!/^#/{n++; rate[n]=$1} END{print (n > 1 ? rate[n-1] : rate[1])}' "$TMP_DIR/sweep.dat")
HALF=$((SAT / 2))
HALF_JSON=$(bench --scenario get_user --data "$TMP_DIR/main" --connections 50 --rate "$HALF")
# Spinning costs a core per generator thread: one thread, so the server keeps the other core.
HALF_SPIN_JSON=$(timeout 300 "$BENCH" --port "$LPORT" --threads 1 --warmup 2 --duration "$DURATION" --json \
  --scenario get_user --data "$TMP_DIR/main" --connections 50 --rate "$HALF" --spin)

# ---- Logins ---------------------------------------------------------------------------------
# get_user at GET_RATE/s (open loop, 1 thread) on a quiet server; then Auth/Login alone,
# LOGIN_CONNS connections with one login each in flight (closed loop): the Argon2id cost; then
# the get_user run again with that login load beside it (a second lagoon-bench keeping every
# worker hashing, started 1 s earlier and ending later): do other calls stay fast?
get_rate() { timeout 300 "$BENCH" --port "$LPORT" --threads 1 --warmup 2 --duration "$DURATION" --json \
  --scenario get_user --data "$TMP_DIR/main" --connections 50 --rate "$GET_RATE"; }
GET_QUIET_JSON=$(get_rate)
LOGIN_JSON=$(bench --scenario login --data "$TMP_DIR/main" --connections "$LOGIN_CONNS" --threads 1)
timeout 300 "$BENCH" --port "$LPORT" --threads 1 --warmup 1 --duration $((DURATION + 3)) --json --scenario login \
  --data "$TMP_DIR/main" --connections "$LOGIN_CONNS" >"$TMP_DIR/login_bg.json" &
LOGIN_BG=$!
PIDS+=("$LOGIN_BG") # stopped on exit if the script is interrupted
GET_BUSY_JSON=$(get_rate)
wait "$LOGIN_BG" || lg_die "the background login load failed: $(cat "$TMP_DIR/login_bg.json")"
KEEP=(); for p in "${PIDS[@]}"; do [[ $p == "$LOGIN_BG" ]] || KEEP+=("$p"); done; PIDS=("${KEEP[@]}")
LOGIN_BG_JSON=$(cat "$TMP_DIR/login_bg.json")

# ---- list_messages at 1 000 and 1 000 000 ---------------------------------------------------
L1K=() L1M=() L1K1=() L1M1=()
for round in $(seq "$ROUNDS"); do
  for size in 1k 1m; do
    port=$([[ $size == 1k ]] && echo "$PORT_1K" || echo "$PORT_1M")
    data="$TMP_DIR/l$size"
    loaded=$(timeout 300 "$BENCH" --port "$port" --threads "$THREADS" --warmup 2 --duration "$DURATION" --json \
      --scenario list_messages --data "$data" --connections 50)
    single=$(timeout 300 "$BENCH" --port "$port" --threads 1 --warmup 1 --duration 3 --json \
      --scenario list_messages --data "$data" --connections 1)
    if [[ $size == 1k ]]; then L1K+=("$loaded"); L1K1+=("$single"); else L1M+=("$loaded"); L1M1+=("$single"); fi
  done
  echo "round $round: list_messages 50 x 1: 1k $(lg_json throughput <<<"${L1K[-1]}")/s, 1M $(lg_json throughput <<<"${L1M[-1]}")/s;" \
    "1 x 1 p50: 1k $(lg_json latency_us p50 <<<"${L1K1[-1]}") us, 1M $(lg_json latency_us p50 <<<"${L1M1[-1]}") us"
done

# ---- Report ---------------------------------------------------------------------------------
echo "machine busy after the run: $(busy) %"
echo
{
  printf '%s\n' "${R_P16[*]}" "${R_P1[*]}" "${SYNC[*]}" "$SAT"
  for name in ECHO GET HEALTH SEND L1K L1M L1K1 L1M1; do
    declare -n arr=$name
    printf '%s\n' "${arr[@]}"
  done
  printf '%s\n' "$HALF_JSON" "$HALF_SPIN_JSON" "$LOGIN_JSON" "$GET_QUIET_JSON" "$GET_BUSY_JSON" "$LOGIN_BG_JSON"
} >"$TMP_DIR/results.txt"
python3 - "$TMP_DIR/results.txt" <<'PY'
import json, sys, statistics as st
lines = open(sys.argv[1]).read().splitlines()
r16 = [float(x) for x in lines[0].split()]
r1 = [float(x) for x in lines[1].split()]
sync = [float(x) for x in lines[2].split()]
sat = float(lines[3])
n = len(r16)
pos = 4
def take(k):
    global pos
    out = [json.loads(l) for l in lines[pos:pos + k]]
    pos += k
    return out
echo, get, health, send, l1k, l1m, l1k1, l1m1 = (take(n) for _ in range(8))
half, half_spin, login, get_quiet, get_busy, login_bg = take(6)

def med(runs, *path):
    vals = []
    for j in runs:
        for key in path:
            j = j[key]
        vals.append(j)
    return st.median(vals)

def row(name, runs, other_name, other, target, unit="/s"):
    lagoon = med(runs, "throughput")
    ratio = lagoon / st.median(other)
    verdict = "met" if ratio >= target else "MISSED"
    print(f"{name:34s} {lagoon:10,.0f}/s  {other_name:18s} {st.median(other):10,.0f}{unit}  {ratio:5.2f}x  (target >= {target}x: {verdict})")
    per = ", ".join(f"{j['throughput'] / r:.2f}" for j, r in zip(runs, other))
    print(f"{'':34s} ratio per round: {per}")

def lat(j):
    l = j["latency_us"]
    return "  ".join(f"{p} {l[p]:.0f}" for p in ("p50", "p90", "p99", "p99.9", "max"))

print(f"medians of {n} rounds")
print(f"{'lagoon':34s} {'calls':>12s}  {'compared with':18s} {'rate':>12s}")
row("echo 50x16, 1-thread generators", echo, "redis GET -P 16", r16, 0.5)
row("get_user 50 conns x 1", get, "redis GET", r1, 1.0)
print(f"{'health 50 conns x 1 (reference)':34s} {med(health, 'throughput'):10,.0f}/s")
row("send_message 50 conns x 1, durable", send, "disk sync writes", sync, 5.0)
for name, runs in (("echo", echo), ("get_user", get), ("health", health), ("send_message", send)):
    q = "  ".join(f"{p} {med(runs, 'latency_us', p):.0f}" for p in ("p50", "p90", "p99", "p99.9", "max"))
    print(f"  {name:12s} latency us (medians): {q}; errors {sum(j['errors'] for j in runs)}")
print(f"get_user saturation (open loop, 50 conns, highest rate sustained in a 2 s-step sweep): {sat:,.0f}/s")
for label, j in (("", half), (", 1 generator thread spinning", half_spin)):
    l = j["latency_us"]
    verdict = "met" if l["p99"] < 1000 else "MISSED"
    print(f"get_user open loop at half saturation ({j['rate']:.0f}/s, 50 conns{label}): achieved {j['throughput']:.0f}/s, "
          f"p50 {l['p50']:.0f} us, p99 {l['p99']:.0f} us (target < 1000 us: {verdict}), "
          f"generator's send lag p99 {j['send_lag_us']['p99']:.0f} us")
print()
print(f"login alone ({login['connections']} conns x 1): {login['throughput']:.1f} logins/s, latency us {lat(login)}; errors {login['errors']}")
for label, j in (("alone:        ", get_quiet), ("beside logins:", get_busy)):
    print(f"get_user at {j['rate']:.0f}/s open loop, {label} achieved {j['throughput']:.0f}/s, latency us {lat(j)}; "
          f"errors {j['errors']}; generator's send lag p99 {j['send_lag_us']['p99']:.0f} us")
print(f"  the login load meanwhile: {login_bg['throughput']:.1f} logins/s, latency us {lat(login_bg)}; errors {login_bg['errors']}")
print()
for label, a, b, key in (("50 conns x 1, throughput", l1k, l1m, "throughput"),):
    ka, kb = med(a, key), med(b, key)
    print(f"list_messages {label}: 1 000 messages {ka:,.0f}/s, 1 000 000 messages {kb:,.0f}/s "
          f"(1M takes {ka / kb:.2f}x the time per call; target <= 1.5x: {'met' if ka / kb <= 1.5 else 'MISSED'})")
    print(f"  latency us (medians) 1k: " + "  ".join(f"{p} {med(a, 'latency_us', p):.0f}" for p in ("p50", "p99")) +
          "; 1M: " + "  ".join(f"{p} {med(b, 'latency_us', p):.0f}" for p in ("p50", "p99")) +
          f"; errors {sum(j['errors'] for j in a + b)}")
pa, pb = med(l1k1, "latency_us", "p50"), med(l1m1, "latency_us", "p50")
print(f"list_messages 1 conn x 1, p50 latency: 1 000 messages {pa:.0f} us, 1 000 000 messages {pb:.0f} us "
      f"({pb / pa:.2f}x; target <= 1.5x: {'met' if pb / pa <= 1.5 else 'MISSED'})")
PY
