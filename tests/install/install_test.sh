#!/bin/sh
# cmake --install into a temporary prefix, then build and run a program against the
# installed headers and libraries found through pkg-config alone.
#   install_test.sh BUILD_DIR SOURCE_DIR "EXTRA_CFLAGS"
set -eu
build="$1"; src="$2"; extra="${3:-}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
pc="$(find "$tmp/prefix" -name lagoon.pc -printf '%h')"
export PKG_CONFIG_PATH="$pc"
# shellcheck disable=SC2046,SC2086
cc -std=c11 -Wall -Wextra -Werror $extra "$src/tests/install/client_example.c" -o "$tmp/client" \
  $(pkg-config --cflags --libs lagoon lagoon-async)
test -f "$tmp/prefix/bin/lagoond"
# Port 1 on loopback: nothing listens there.
"$tmp/client" 1
echo "1 passed, 0 failed"
