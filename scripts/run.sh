#!/bin/sh
# Installs what is missing, builds, and starts lagoond on its embedded default:
# data under ./var, listening on 127.0.0.1:7420. Extra arguments go to lagoond (--help).
# Besides lagoond it builds what the README uses next: build/handlers/lagoon-admin,
# build/clients/lagoonctl and the client libraries, so that `cmake --install build` has everything it installs (the targets
# of every install() rule; the benchmarks and tests are left out).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLAGOON_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target lagoond lagoon-admin lagoonctl lagoon lagoon_async
exec build/handlers/lagoond "$@"
