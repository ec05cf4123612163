#!/bin/sh
# Installs the Debian 12 packages Lagoon needs that are not installed yet.
#   scripts/deps.sh          build and run the server
#   scripts/deps.sh --test   also the test tools (cmocka, clang for the fuzz target, curl and
#                            openssl, which tests run against the server)
#   scripts/deps.sh --bench  also what bench/compare.sh and callgrind.sh run (Redis, valgrind, gnuplot)
#                            and nginx, which bench/media compares range requests with
# Uses sudo when not root. Installs nothing when everything is present.
set -eu

pkgs="build-essential cmake pkg-config protobuf-compiler libprotobuf-dev python3-protobuf nanopb libnanopb-dev
libevent-dev liblmdb-dev libsodium-dev libjansson-dev libssl-dev help2man ffmpeg"
case "${1:-}" in
--test) pkgs="$pkgs libcmocka-dev clang libclang-rt-14-dev curl openssl" ;;
--bench) pkgs="$pkgs redis-server redis-tools valgrind gnuplot-nox nginx-light" ;;
"") ;;
*) echo "usage: scripts/deps.sh [--test|--bench]" >&2; exit 2 ;;
esac

missing=""
for p in $pkgs; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

echo "installing:$missing"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
