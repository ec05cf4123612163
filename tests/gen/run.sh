#!/bin/sh
# The generator's checks of (lagoon.v1.table) declarations, through protoc as the build runs it:
#   cases/bad_*.proto must each fail, with an error naming the file, the message (second line,
#   "// message: NAME") and what is wrong (first line, "// expect: TEXT");
#   cases/good_*.proto must each pass, generating every "// has: LINE" into its tables header.
# usage: run.sh PROTOC PLUGIN IDL_DIR CASES_DIR
set -u
protoc=$1 plugin=$2 idl=$3 cases=$4
out=$(mktemp -d "${TMPDIR:-/tmp}/lagoon-gen-XXXXXX") || exit 1
trap 'rm -rf "$out"' EXIT
passed=0 failed=0

fail() {
    echo "FAIL $1: $2"
    failed=$((failed + 1))
}

gen() { # gen FILE: runs protoc with protoc-gen-lagoon on FILE (relative to cases), output in $out
    rm -rf "$out"/* && "$protoc" -I "$idl" -I "$cases" --plugin=protoc-gen-lagoon="$plugin" \
        --lagoon_out=options="$cases:$out" "$1" 2>"$out.err"
}

for f in "$cases"/bad_*.proto; do
    name=${f##*/}
    expect=$(sed -n '1s|^// expect: ||p' "$f")
    msg=$(sed -n '2s|^// message: ||p' "$f")
    if [ -z "$expect" ] || [ -z "$msg" ]; then
        fail "$name" "no '// expect:' and '// message:' lines"
        continue
    fi
    if gen "$name"; then
        fail "$name" "protoc-gen-lagoon accepted it"
    elif ! grep -qF -- "$name: lagoon.gentest.v1.$msg" "$out.err"; then
        fail "$name" "the error does not name $name and lagoon.gentest.v1.$msg: $(cat "$out.err")"
    elif ! grep -qF -- "$expect" "$out.err"; then
        fail "$name" "the error does not say \"$expect\": $(cat "$out.err")"
    else
        passed=$((passed + 1))
    fi
done

for f in "$cases"/good_*.proto; do
    name=${f##*/}
    if ! gen "$name"; then
        fail "$name" "refused: $(cat "$out.err")"
        continue
    fi
    ok=1
    # Each "has:" line, read without a subshell so that a miss is counted.
    sed -n 's|^// has: ||p' "$f" >"$out.has"
    while IFS= read -r line; do
        if ! grep -qxF -- "$line" "$out/lagoon_gentest_tables.h"; then
            fail "$name" "lagoon_gentest_tables.h lacks: $line"
            ok=0
        fi
    done <"$out.has"
    [ -s "$out.has" ] || { fail "$name" "no '// has:' lines"; ok=0; }
    [ "$ok" = 1 ] && passed=$((passed + 1))
done

rm -f "$out.err" "$out.has"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
