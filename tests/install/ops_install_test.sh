#!/bin/sh
# cmake --install's service files and lagoond --check-config:
#   ops_install_test.sh BUILD_DIR
# Installs into a temporary DESTDIR; checks lagoond.service (its hardening, systemd-analyze
# verify when systemd is there), the environment file (mode 0600, and that lagoond accepts it),
# the three man pages, and --check-config on good and bad settings.
set -eu
build=$1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lagoon-ops-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

DESTDIR=$tmp/root cmake --install "$build" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "cmake --install"; }
unit=$(find "$tmp/root" -name lagoond.service)
env=$(find "$tmp/root" -name lagoond.env)
[ -f "$unit" ] || fail "no lagoond.service installed"
[ -f "$env" ] || fail "no lagoond.env installed"
for want in "User=lagoon" "DynamicUser=yes" "StateDirectory=lagoon" "Environment=LAGOON_DATA=/var/lib/lagoon" \
  "NoNewPrivileges=yes" "ProtectSystem=strict" "ProtectHome=yes" "PrivateTmp=yes" "CapabilityBoundingSet=" \
  "ExecStartPre=.*/lagoond --check-config" "EnvironmentFile=-/.*/lagoon/lagoond.env"; do
  grep -q "^$want" "$unit" || fail "lagoond.service lacks $want"
done
[ "$(stat -c %a "$env")" = 600 ] || fail "lagoond.env is not mode 600"
for page in man8/lagoond.8 man8/lagoon-admin.8 man1/lagoonctl.1; do
  f=$(find "$tmp/root" -path "*/$page")
  [ -s "$f" ] || fail "no $page"
  grep -q '^\.SH NAME' "$f" || fail "$page has no NAME section"
done
grep -q -- 'check\\-config\|check-config' "$(find "$tmp/root" -path '*/man8/lagoond.8')" || fail "lagoond.8 lacks --check-config"

bin=$(find "$tmp/root" -path '*/bin/lagoond')
[ -x "$bin" ] || fail "no lagoond installed"
if command -v systemd-analyze >/dev/null 2>&1; then
  # The unit as installed, pointed at the DESTDIR binary.
  sed "s#=/[^ ]*/bin/lagoond#=$bin#" "$unit" >"$tmp/lagoond.service"
  systemd-analyze verify --man=no "$tmp/lagoond.service" >"$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log"; fail "systemd-analyze verify"; }
fi

# --check-config: the installed environment file as systemd would read it, on a data dir of ours.
mkdir "$tmp/data"
(set -a; . "$env"; LAGOON_DATA=$tmp/data "$bin" --check-config) >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "check-config refused the installed lagoond.env"; }
grep -q "configuration OK" "$tmp/out" || fail "check-config did not say OK"
check_bad() { # expected message, then the command's arguments
  want=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then fail "check-config accepted: $*"; fi
  grep -q "$want" "$tmp/out" || { cat "$tmp/out"; fail "check-config: no '$want' for: $*"; }
}
: >"$tmp/file"
check_bad "is not a directory" "$bin" --check-config --data "$tmp/file/x"
check_bad "max-frame-size" "$bin" --check-config --max-frame-size 1
check_bad "must exceed max-frame-size" env LAGOON_MAX_FRAME_SIZE=1048576 LAGOON_MAX_CONNECTION_MEMORY=262144 "$bin" --check-config --data "$tmp/data"
check_bad "admin-listen" "$bin" --check-config --data "$tmp/data" --admin-listen localhost:9100
check_bad "same address" "$bin" --check-config --data "$tmp/data" --listen 127.0.0.1:7500 --admin-listen 7500
"$bin" --check-config --data "$tmp/new/a" >/dev/null || fail "check-config refused a data dir it could create"
[ ! -e "$tmp/new" ] || fail "check-config created the data directory"
echo "ok"
