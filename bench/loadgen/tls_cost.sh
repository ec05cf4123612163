#!/usr/bin/env bash
# What TLS costs the echo benchmark: two lagoonds on the same build, one plain and one with
# --tls-cert/--tls-key (a CA and a certificate for 127.0.0.1 made here with the openssl command
# line), and alternating rounds of lagoon-bench echo against each (--cacert for the TLS one),
# so that the machine's drift over time falls on both sides alike. Only one server is loaded
# at a time.
#
#   LAGOON_BUILD=build-rv-tls bench/loadgen/tls_cost.sh [ROUNDS] [SECONDS]
#
# Prints one line per round and the medians; exit 1 if a server or the generator fails.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lg_cleanup EXIT
ROUNDS=${1:-5}
SECONDS_PER_ROUND=${2:-5}
CONNS=${CONNS:-50}
DEPTH=${DEPTH:-16}
for b in "$LAGOOND" "$BENCH"; do [[ -x $b ]] || lg_die "$b missing (set LAGOON_BUILD)"; done
lg_need_cmd openssl openssl
lg_tmp
(
  cd "$TMP_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj /CN=bench-CA 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr \
    -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' >srv.ext
  openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 \
    -extfile srv.ext 2>/dev/null
) || lg_die "openssl could not make the certificates"
plain=$(lg_free_port)
lg_start_lagoond "$plain" "$TMP_DIR/plain"
plain_pid=$LAGOOND_PID
tls=$(lg_free_port)
lg_start_lagoond "$tls" "$TMP_DIR/tls" --tls-cert "$TMP_DIR/srv.pem" --tls-key "$TMP_DIR/srv.key"
tls_pid=$LAGOOND_PID
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # a server's CPU time so far, in clock ticks

# PORT PID [flags]: prints calls/s, the p50 latency in µs and the server's CPU µs per call
# (its CPU time over the round, warm-up included, over the round's calls at that rate).
run() {
  local port=$1 pid=$2 c0 c1
  shift 2
  c0=$(cpu "$pid")
  "$BENCH" --scenario echo --port "$port" --connections "$CONNS" --depth "$DEPTH" --threads 1 \
    --duration "$SECONDS_PER_ROUND" --warmup 1 --json "$@" >"$TMP_DIR/round.json"
  c1=$(cpu "$pid")
  python3 - "$(lg_json throughput <"$TMP_DIR/round.json")" "$(lg_json latency_us p50 <"$TMP_DIR/round.json")" \
    "$c0" "$c1" "$hz" "$SECONDS_PER_ROUND" <<'PY'
import sys
rate, p50, c0, c1, hz, secs = (float(x) for x in sys.argv[1:])
print(f"{rate:.0f} {p50:.0f} {(c1 - c0) / hz / (rate * (secs + 1)) * 1e6:.2f}")
PY
}

off=() on=() coff=() con=()
for r in $(seq "$ROUNDS"); do
  read -r a la ca <<<"$(run "$plain" "$plain_pid")"
  read -r b lb cb <<<"$(run "$tls" "$tls_pid" --cacert "$TMP_DIR/ca.pem")"
  off+=("$a") on+=("$b") coff+=("$ca") con+=("$cb")
  printf 'round %d  plain %8.0f/s p50 %6s us %5s us CPU/call   TLS %8.0f/s p50 %6s us %5s us CPU/call\n' \
    "$r" "$a" "$la" "$ca" "$b" "$lb" "$cb"
done
python3 - "${off[*]}" "${on[*]}" "${coff[*]}" "${con[*]}" <<'PY'
import statistics, sys
off, on, coff, con = ([float(x) for x in a.split()] for a in sys.argv[1:])
ratios = [b / a for a, b in zip(off, on)]
m = statistics.median
print(f"median plain {m(off):.0f}/s, TLS {m(on):.0f}/s; median per-round ratio TLS/plain {m(ratios):.3f}; "
      f"server CPU per call: plain {m(coff):.2f} us, TLS {m(con):.2f} us")
PY
