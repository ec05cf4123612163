#!/bin/sh
# Installs what is missing, then builds and runs every test twice: a normal build and an
# AddressSanitizer + UndefinedBehaviorSanitizer build; the race tests with ThreadSanitizer; then the fuzz target for a bounded
# number of runs (clang). Exits non-zero if anything fails.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh --test
jobs="$(nproc)"

echo "== normal build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLAGOON_TESTS=ON >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure

echo "== ASan + UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLAGOON_SANITIZE=ON -DLAGOON_TESTS=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure

echo "== ThreadSanitizer build: the race tests"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DLAGOON_TSAN=ON -DLAGOON_TESTS=ON >/dev/null
cmake --build build-tsan -j"$jobs" --target test_races
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build-tsan -R '^test_races$' --output-on-failure

echo "== fuzz (bounded)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DLAGOON_FUZZ=ON -DLAGOON_TESTS=ON >/dev/null
# fuzz_frame: frames and message coding; fuzz_requests: every request message decoder (its seed
# corpus is written by fuzz_request_seeds, run by ctest first). Bounded runs: about 30 s in all.
cmake --build build-fuzz -j"$jobs" --target fuzz_frame fuzz_requests fuzz_request_seeds
ctest --test-dir build-fuzz -R '^fuzz_' --output-on-failure
