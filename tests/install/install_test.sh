#!/bin/sh
# The README's path from the outside: cmake --install into a temporary prefix, then build
# programs against the installed headers and libraries found through pkg-config alone:
#   - client_example.c (both clients' headers, pb_release from lagoon.h, a failed connect);
#   - the C program of the README's "Using the C client", cut out of README.md here, so the
#     README and this test cannot drift apart; it runs against the installed lagoond;
# the README's quick tour with the installed lagoonctl against it;
# and the installed lagoon-admin beside that running lagoond (--help, a refused create-admin,
# verify), then create-admin once lagoond has stopped.
#   install_test.sh BUILD_DIR SOURCE_DIR "EXTRA_CFLAGS"
set -eu
build="$1"; src="$2"; extra="${3:-}"
tmp="$(mktemp -d)"
daemon=""
cleanup() {
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

prefix="$tmp/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
pc="$(find "$prefix" -name lagoon.pc -printf '%h')"
export PKG_CONFIG_PATH="$pc"
test -x "$prefix/bin/lagoond" || fail "lagoond not installed"
test -x "$prefix/bin/lagoon-admin" || fail "lagoon-admin not installed"
# Test-only messages (idl/lagoon/test) are not part of the installed API.
if find "$prefix/include" -path '*lagoon/test*' | grep -q .; then fail "test-only headers installed"; fi
if grep -rlq 'lagoon/test/\|lagoon_test_' "$prefix/include"; then fail "installed headers name test-only messages"; fi

# shellcheck disable=SC2046,SC2086
cc -std=c11 -Wall -Wextra -Werror $extra "$src/tests/install/client_example.c" -o "$tmp/client" \
  $(pkg-config --cflags --libs lagoon lagoon-async)
# Port 1 on loopback: nothing listens there.
"$tmp/client" 1 || fail "client_example"

# The README's program: the first ```c block after its "## Using the C client" heading.
awk '/^## Using the C client/ { sec = 1 } sec && /^```c$/ { on = 1; next } on && /^```$/ { exit } on' \
  "$src/README.md" >"$tmp/health.c"
grep -q '^int main' "$tmp/health.c" || fail "no C program found in README.md's 'Using the C client'"
# Built as its first line says, with warnings as errors on top.
# shellcheck disable=SC2046,SC2086
cc -std=c11 -Wall -Wextra -Werror $extra "$tmp/health.c" $(pkg-config --cflags --libs lagoon) -o "$tmp/health"

# The installed lagoond on a free port (it logs the one it got) and its own data directory.
data="$tmp/data"
# The log exists before the loop below reads it: the background shell may open it only later,
# and a sed that cannot read it would end this script (set -e).
: >"$tmp/lagoond.log"
"$prefix/bin/lagoond" --listen 127.0.0.1:0 --data "$data" --threads 1 2>>"$tmp/lagoond.log" &
daemon=$!
port=""
i=0
while [ $i -lt 200 ] && [ -z "$port" ]; do   # up to 20 s
  port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/lagoond.log")"
  kill -0 "$daemon" 2>/dev/null || fail "lagoond exited: $(cat "$tmp/lagoond.log")"
  [ -n "$port" ] || sleep 0.1
  i=$((i + 1))
done
[ -n "$port" ] || fail "lagoond did not start: $(cat "$tmp/lagoond.log")"

out="$("$tmp/health" "$port")" || fail "README program: $out"
echo "$out" | grep -q '^lagoond [0-9][0-9.]*: serving, up [0-9]* ms, 1 connection(s)$' \
  || fail "README program printed: $out"

# The README's quick tour, cut out of README.md, with the installed lagoonctl (the password on
# standard input, for login) and its own credentials directory.
test -x "$prefix/bin/lagoonctl" || fail "lagoonctl not installed"
sed -n '/^## A quick tour/,/^```$/p' "$src/README.md" | sed -n '/^```sh$/,/^```$/p' | sed '1d;$d' >"$tmp/tour.body"
grep -q 'lagoonctl login' "$tmp/tour.body" || fail "no quick tour in README.md"
{ echo "lagoonctl() { \"$prefix/bin/lagoonctl\" \"\$@\"; }"; grep -v '^alias ' "$tmp/tour.body"; } >"$tmp/tour.sh"
echo 'a long passphrase' | LAGOON_ADDR="127.0.0.1:$port" XDG_CONFIG_HOME="$tmp/config" sh -e "$tmp/tour.sh" \
  >"$tmp/tour.out" 2>&1 || fail "README quick tour: $(cat "$tmp/tour.out")"
grep -q 'lagoon.v1.Messages/Send' "$tmp/tour.out" || fail "README quick tour, list: $(cat "$tmp/tour.out")"
grep -q 'signed in at 127.0.0.1' "$tmp/tour.out" || fail "README quick tour, login: $(cat "$tmp/tour.out")"
[ "$(grep -c '"username": "ann"' "$tmp/tour.out")" -eq 2 ] || fail "README quick tour: $(cat "$tmp/tour.out")"

admin="$prefix/bin/lagoon-admin"
"$admin" --help >"$tmp/help" 2>/dev/null || fail "lagoon-admin --help exits non-zero"
grep -q 'create-admin --data DIR' "$tmp/help" || fail "lagoon-admin --help: $(cat "$tmp/help")"
# create-admin refuses to write behind the running server's back; reading is allowed.
st=0
echo 'an admin passphrase' | "$admin" create-admin --data "$data" --email root@example.com \
  --username root >"$tmp/refused" 2>&1 || st=$?
[ "$st" -eq 1 ] || fail "create-admin beside lagoond: status $st: $(cat "$tmp/refused")"
grep -q "lagoond (pid $daemon) is running on $data; stop it first" "$tmp/refused" \
  || fail "create-admin beside lagoond said: $(cat "$tmp/refused")"
"$admin" verify --data "$data" >"$tmp/verify" 2>&1 || fail "verify beside lagoond: $(cat "$tmp/verify")"

# SIGTERM drains and exits 0; then create-admin may write.
kill -TERM "$daemon"
st=0
wait "$daemon" || st=$?
daemon=""
[ "$st" -eq 0 ] || fail "lagoond exited $st after SIGTERM: $(cat "$tmp/lagoond.log")"
echo 'an admin passphrase' | "$admin" create-admin --data "$data" --email root@example.com \
  --username root >"$tmp/created" 2>&1 || fail "create-admin: $(cat "$tmp/created")"
grep -q 'administrator root created' "$tmp/created" || fail "create-admin said: $(cat "$tmp/created")"
echo "1 passed, 0 failed"
