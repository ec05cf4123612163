#!/usr/bin/env bash
# What scraping /metrics costs the echo benchmark: one lagoond with --admin-listen, and
# alternating rounds of lagoon-bench echo without and with a scraper that GETs /metrics every
# SCRAPE_S seconds (curl), so that the machine's drift over time falls on both sides alike.
#
#   LAGOON_BUILD=build-ops bench/loadgen/metrics_cost.sh [ROUNDS] [SECONDS]
#
# Prints one line per round and the medians; exit 1 if the server or the generator fails.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lg_cleanup EXIT
ROUNDS=${1:-5}
SECONDS_PER_ROUND=${2:-5}
SCRAPE_S=${SCRAPE_S:-1}
CONNS=${CONNS:-50}
DEPTH=${DEPTH:-16}
for b in "$LAGOOND" "$BENCH"; do [[ -x $b ]] || lg_die "$b missing (set LAGOON_BUILD)"; done
lg_need_cmd curl curl
lg_tmp
port=$(lg_free_port)
admin=$(lg_free_port)
lg_start_lagoond "$port" "$TMP_DIR/data" --admin-listen "127.0.0.1:$admin"
lg_wait_port "$admin" || lg_die "admin listener did not start"

run() { # prints calls/s
  "$BENCH" --scenario echo --port "$port" --connections "$CONNS" --depth "$DEPTH" --threads 1 \
    --duration "$SECONDS_PER_ROUND" --warmup 1 --json | lg_json throughput
}

off=() on=() scrapes=0
for r in $(seq "$ROUNDS"); do
  a=$(run)
  # The scraper: bounded by the round's length (warm-up included) plus one.
  (
    for _ in $(seq $(((SECONDS_PER_ROUND + 2) / SCRAPE_S + 1))); do
      curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$admin/metrics" || true
      sleep "$SCRAPE_S"
    done
  ) &
  scraper=$!
  b=$(run)
  kill "$scraper" 2>/dev/null || true
  wait "$scraper" 2>/dev/null || true
  off+=("$a") on+=("$b")
  printf 'round %d  without %10.0f  with scrapes %10.0f  (%+.2f %%)\n' "$r" "$a" "$b" \
    "$(python3 -c "print(($b/$a-1)*100)")"
done
size=$(curl -s "http://127.0.0.1:$admin/metrics" | wc -c)
# The direct measure, immune to the machine's noise: lagoond's CPU time (utime + stime, in
# clock ticks) for SCRAPES scrapes of an idle server, and for one round of echo load.
cpu() { awk '{print $14 + $15}' "/proc/$LAGOOND_PID/stat"; }
SCRAPES=${SCRAPES:-500}
c0=$(cpu)
for _ in $(seq "$SCRAPES"); do curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$admin/metrics"; done
c1=$(cpu)
run >/dev/null
c2=$(cpu)
hz=$(getconf CLK_TCK)
python3 - "$c0" "$c1" "$c2" "$hz" "$SCRAPES" "$SECONDS_PER_ROUND" "$SCRAPE_S" <<'PY'
import sys
c0, c1, c2, hz, n, secs, every = (float(x) for x in sys.argv[1:])
per_scrape = (c1 - c0) / hz / n
load = (c2 - c1) / hz / (secs + 1)  # the round's warm-up is loaded too
print(f"lagoond CPU: {per_scrape*1e3:.3f} ms per scrape ({n:.0f} scrapes), {load:.2f} cores under echo load; "
      f"one scrape every {every:g} s = {per_scrape/every/load*100:.3f} % of the server's CPU under load")
PY
python3 - "${off[*]}" "${on[*]}" "$size" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
ratios = [b / a for a, b in zip(off, on)]
print(f"median without {statistics.median(off):.0f}/s, with {statistics.median(on):.0f}/s; "
      f"median per-round ratio {statistics.median(ratios):.4f} ({(statistics.median(ratios)-1)*100:+.2f} %); "
      f"page {sys.argv[3]} bytes")
PY
