# Shared by compare.sh, callgrind.sh, idle_conns.sh and send_profile.sh: finding binaries, free ports, starting
# and always stopping the servers they start. Source it; it defines functions only.

LOADGEN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LOADGEN_DIR/../.." && pwd)
BUILD_DIR=${LAGOON_BUILD:-$REPO_DIR/build-bench}
# Absolute: the temporary directories live under it and are handed to servers that change
# their working directory (redis-server --dir), so a relative LAGOON_BUILD=build would break.
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$PWD/$BUILD_DIR
LAGOOND=$BUILD_DIR/handlers/lagoond
# A build of a commit from before lagoond moved to handlers/ (a baseline) has it in rpc/.
[[ -x $LAGOOND || ! -x $BUILD_DIR/rpc/lagoond ]] || LAGOOND=$BUILD_DIR/rpc/lagoond
BENCH=$BUILD_DIR/bench/loadgen/lagoon-bench
IDLE=$BUILD_DIR/bench/loadgen/lagoon-idle-conns

PIDS=()   # every server we start, killed on exit
TMP_DIR=""

lg_die() { echo "$(basename "$0"): $*" >&2; exit 1; }

lg_need_build() {
  for b in "$LAGOOND" "$BENCH" "$IDLE"; do
    [[ -x $b ]] || lg_die "$b missing: cmake -S $REPO_DIR -B $BUILD_DIR -DCMAKE_BUILD_TYPE=RelWithDebInfo && make -C $BUILD_DIR -j2 (or set LAGOON_BUILD)"
  done
}

lg_need_cmd() {
  command -v "$1" >/dev/null || lg_die "$1 not found: apt-get install -y $2"
}

# A temp dir on the same disk as the build (not a tmpfs), removed on exit.
lg_tmp() {
  TMP_DIR=$(mktemp -d "${LAGOON_BENCH_TMP:-$BUILD_DIR}/bench.XXXXXX")
}

lg_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Bounded wait (10 s), then KILL: a script must never leave a server behind.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  PIDS=()
  [[ -n $TMP_DIR && -d $TMP_DIR ]] && rm -rf "$TMP_DIR"
  return 0
}

# Stops one server we started (SIGTERM, bounded wait, SIGKILL) and forgets it.
lg_stop() {
  local pid=$1 keep=() p
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# A TCP port free on 127.0.0.1 right now (the kernel picks it; a race with another process
# is possible but harmless: the server would fail to start and the script stops).
lg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (at most 10 s) until something accepts connections on port.
lg_wait_port() {
  local port=$1
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# lg_start_lagoond PORT DATADIR [extra lagoond flags...]: sets LAGOOND_PID.
lg_start_lagoond() {
  local port=$1 data=$2
  shift 2
  mkdir -p "$data"
  "$LAGOOND" --listen "127.0.0.1:$port" --data "$data" --log-level warn --debug-methods "$@" >"$data.log" 2>&1 &
  LAGOOND_PID=$!
  PIDS+=("$LAGOOND_PID")
  lg_wait_port "$port" || lg_die "lagoond did not start: $(cat "$data.log")"
}

# A field of lagoon-bench's --json output: lg_json FIELD [SUBFIELD] < json
lg_json() {
  python3 -c 'import json,sys; d=json.load(sys.stdin); [d:=d[k] for k in sys.argv[1:]]; print(d)' "$@"
}

# The disk's synchronous 4 KiB writes per second (dd oflag=dsync, 1 000 writes) in TMP_DIR: what
# one durable commit at a time can reach. Bounded by count and by timeout.
lg_disk_sync_rate() {
  local out s
  out=$(LC_ALL=C timeout 60 dd if=/dev/zero of="$TMP_DIR/sync.dat" bs=4096 count=1000 oflag=dsync 2>&1 | tail -1)
  rm -f "$TMP_DIR/sync.dat"
  s=$(sed -E 's/.* copied, ([0-9.]+) s.*/\1/' <<<"$out")
  python3 -c "print(int(1000/$s))"
}
