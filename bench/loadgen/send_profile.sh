#!/usr/bin/env bash
# send_profile.sh: where durable Messages/Send's time goes at 50 connections x 1, against the
# disk's synchronous 4 KiB write rate measured in the same round.
#
#   bench/loadgen/send_profile.sh   (env: ROUNDS=2 DURATION=5 USERS=10000 LAGOON_BUILD=build dir)
#
# Seeds a database as compare.sh does, starts lagoond on it (durable commits), and each round
# measures dd oflag=dsync, then send_message with `perf trace -s` on lagoond for 3 s of the
# run: commits (fdatasync calls of the store's writer), Sends per commit, pages written per
# commit (pwrite64 + writev calls: LMDB writes each dirty page, or run of pages, once), and the
# writer's time in fdatasync and in those writes. Then the same run on a second database with
# --sync none: what the writer reaches with no flush at all. Needs perf (linux-perf) for the
# commit figures; without it, prints the rates only.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lg_cleanup EXIT
trap 'exit 143' INT TERM

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
USERS=${USERS:-10000}
lg_need_build
lg_need_cmd python3 python3
HAVE_PERF=0
command -v perf >/dev/null && perf trace -s -o /dev/null -- true >/dev/null 2>&1 && HAVE_PERF=1
lg_tmp

seed() { timeout 300 "$BENCH" seed --data "$1" --users "$USERS" --messages 100000 2>/dev/null | sed -n 1p; }
# send PORT DATA PID LABEL: one send_message run, traced 3 s from 1 s after the warm-up.
send() {
  local port=$1 data=$2 pid=$3 label=$4 tr=$TMP_DIR/trace.txt json disk tracer=""
  disk=$(lg_disk_sync_rate)
  rm -f "$tr"
  if ((HAVE_PERF)); then
    (sleep 3; timeout -s INT 3 perf trace -s -p "$pid" -o "$tr" >/dev/null 2>&1 || true) &
    tracer=$!
  fi
  json=$(timeout 300 "$BENCH" --port "$port" --threads 2 --warmup 2 --duration "$DURATION" --json \
    --scenario send_message --data "$data" --connections 50 --depth 1)
  [[ -n $tracer ]] && wait "$tracer"
  python3 - "$label" "$disk" "$tr" "$json" <<'PY'
import json, os, re, sys
label, disk, tr, j = sys.argv[1], float(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
t = j["throughput"]
print(f"{label}: send_message {t:,.0f}/s, disk {disk:,.0f} sync writes/s = {t / disk:.2f}x; "
      f"p50 {j['latency_us']['p50'] / 1000:.1f} ms, errors {j['errors']}")
if not os.path.exists(tr):
    sys.exit(0)
# perf trace -s: per thread, "syscall calls errors total(ms) ...". The writer is the thread
# that calls fdatasync (with --sync none: the one that writes pages).
threads, cur = {}, None
for line in open(tr):
    m = re.match(r"\s*\S+ \((\d+)\), \d+ events", line)
    if m:
        cur = threads.setdefault(m.group(1), {})
        continue
    f = line.split()
    if cur is not None and len(f) >= 4 and f[1].isdigit():
        cur[f[0]] = (int(f[1]), float(f[3]))
w = max(threads.values(), key=lambda d: (d.get("fdatasync", (0, 0))[0], d.get("pwrite64", (0, 0))[0]), default={})
syncs, sync_ms = w.get("fdatasync", (0, 0.0))
writes = w.get("pwrite64", (0, 0.0))[0] + w.get("writev", (0, 0.0))[0]
write_ms = w.get("pwrite64", (0, 0.0))[1] + w.get("writev", (0, 0.0))[1] + w.get("lseek", (0, 0.0))[1]
secs = 3.0
print(f"  writer over {secs:.0f} s: {syncs} commits ({syncs / secs:.0f}/s, {t * secs / syncs if syncs else 0:.0f} Sends each), "
      f"{writes / syncs if syncs else writes / secs:.0f} page writes per {'commit' if syncs else 's'} "
      f"({writes / (t * secs):.1f} per Send); in fdatasync {sync_ms / secs / 10:.0f} % of the time "
      f"({sync_ms / syncs if syncs else 0:.1f} ms each), in page writes {write_ms / secs / 10:.0f} %")
PY
}

seed "$TMP_DIR/main"
seed "$TMP_DIR/nosync" >/dev/null
PORT=$(lg_free_port)
lg_start_lagoond "$PORT" "$TMP_DIR/main"
MAIN_PID=$LAGOOND_PID
PORT_NS=$(lg_free_port)
lg_start_lagoond "$PORT_NS" "$TMP_DIR/nosync" --sync none
NS_PID=$LAGOOND_PID
for round in $(seq "$ROUNDS"); do
  send "$PORT" "$TMP_DIR/main" "$MAIN_PID" "round $round, sync=full"
  send "$PORT_NS" "$TMP_DIR/nosync" "$NS_PID" "round $round, sync=none"
done
