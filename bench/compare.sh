#!/usr/bin/env bash
# compare.sh: every performance target of docs/PERFORMANCE.md against Redis, in one command.
#
#   bench/compare.sh     (env as for bench/loadgen/compare.sh: ROUNDS, DURATION, THREADS, USERS,
#                         LAGOON_BUILD = build dir, default build-bench)
#
# Installs what is missing (scripts/deps.sh --bench: Redis, valgrind, gnuplot besides the build
# dependencies), brings an optimised build (RelWithDebInfo) up to date, then runs
# bench/loadgen/compare.sh. About 6 minutes once built.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${LAGOON_BUILD:-$repo/build-bench}
"$repo/scripts/deps.sh" --bench
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
LAGOON_BUILD=$build exec "$repo/bench/loadgen/compare.sh" "$@"
