#!/bin/sh
# Installs what is missing, builds, and starts lagoond on its embedded default:
# data under ./var, listening on 127.0.0.1:7420. Extra arguments go to lagoond (--help).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLAGOON_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target lagoond
exec build/rpc/lagoond "$@"
