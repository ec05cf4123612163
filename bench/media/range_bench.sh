#!/usr/bin/env bash
# range_bench.sh: range-request throughput of lagoond's media listener against nginx serving the
# same file from the same disk, with the same client (media-bench load), in alternating rounds.
#
#   bench/media/range_bench.sh    (env: LAGOON_BUILD build dir, default build-bench; MIB file size,
#                                  default 256; ROUNDS 3; SECONDS_PER 5; CONNS 8; RANGE_KIB 256)
#
# nginx (Debian's nginx-light: scripts/deps.sh --bench) runs unprivileged from a config in a
# temporary directory: one worker (the media listener is one thread), sendfile on, access log
# off, keep-alive without a request limit. The file is read once before the first round so both
# serve it from the page cache. Prints each round and the medians with their ratio.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${LAGOON_BUILD:-$repo/build-bench}
mib=${MIB:-256}
rounds=${ROUNDS:-3}
secs=${SECONDS_PER:-5}
conns=${CONNS:-8}
range=${RANGE_KIB:-256}
nginx=${NGINX:-/usr/sbin/nginx}
bench=$build/bench/media/media-bench
[ -x "$bench" ] || { echo "build $bench first (cmake --build $build --target media-bench)" >&2; exit 2; }
[ -x "$nginx" ] || { echo "no nginx at $nginx: scripts/deps.sh --bench" >&2; exit 2; }

tmp=$(mktemp -d /tmp/lagoon-range-bench-XXXXXX)
fifo=$tmp/in
mkfifo "$fifo"
cleanup() {
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  [ -n "${serve_pid:-}" ] && wait "$serve_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

"$bench" serve --data "$tmp/data" --mib "$mib" <"$fifo" >"$tmp/serve.out" &
serve_pid=$!
exec 3>"$fifo"
for _ in $(seq 1 600); do grep -q '^rel ' "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^url //p' "$tmp/serve.out")
file=$(sed -n 's/^file //p' "$tmp/serve.out")
rel=$(sed -n 's/^rel //p' "$tmp/serve.out")
[ -n "$url" ] || { echo "media-bench serve did not start" >&2; cat "$tmp/serve.out" >&2; exit 1; }
size=$(stat -c %s "$file")
cat "$file" >/dev/null

nport=$(( 20000 + RANDOM % 20000 ))
# As root nginx's worker would switch to nobody, who cannot read the data directory (0700).
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
cat >"$tmp/nginx.conf" <<CONF
$user_line
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 60;
  client_body_temp_path $tmp/ngx_body;
  proxy_temp_path $tmp/ngx_proxy;
  fastcgi_temp_path $tmp/ngx_fcgi;
  uwsgi_temp_path $tmp/ngx_uwsgi;
  scgi_temp_path $tmp/ngx_scgi;
  server {
    listen 127.0.0.1:$nport;
    location /media/ { alias $tmp/data/media/; default_type video/mp4; }
  }
}
CONF
"$nginx" -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off;' 2>"$tmp/nginx.start" &
nginx_pid=$!
sleep 0.5
nurl="http://127.0.0.1:$nport/media/$rel"
curl -sf -o /dev/null -r 0-0 "$nurl" || { echo "nginx does not serve $nurl" >&2; cat "$tmp/nginx.start" "$tmp/nginx.err" >&2; exit 1; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); file ${mib} MiB, ${range} KiB ranges, $conns connections, ${secs} s per run"
lag=(); ngx=()
for r in $(seq 1 "$rounds"); do
  l=$("$bench" load --url "$url" --size "$size" --conns "$conns" --seconds "$secs" --range "$range")
  n=$("$bench" load --url "$nurl" --size "$size" --conns "$conns" --seconds "$secs" --range "$range")
  echo "round $r lagoon: $l"
  echo "round $r nginx:  $n"
  lag+=("$(echo "$l" | awk '{print $4}')"); ngx+=("$(echo "$n" | awk '{print $4}')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ml=$(median "${lag[@]}"); mn=$(median "${ngx[@]}")
echo "median MiB/s: lagoon $ml, nginx $mn, ratio $(awk -v a="$ml" -v b="$mn" 'BEGIN {printf "%.2f", a/b}')"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
