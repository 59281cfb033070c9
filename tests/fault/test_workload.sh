#!/usr/bin/env bash
# strata_workload refuses bad usage and bad histories with a clear message and exit 2,
# and a refused `final` leaves the history file as it was. No server is needed: every
# case fails before any network I/O.
set -uo pipefail
WL=${1:?usage: test_workload.sh STRATA_WORKLOAD}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0

# expect CODE PATTERN -- ARGS...: exit status CODE and stderr matching PATTERN.
expect() {
    local code=$1 pattern=$2
    shift 3
    local err rc
    err=$("$WL" "$@" 2>&1 >/dev/null)
    rc=$?
    if ((rc == code)) && grep -qE "$pattern" <<<"$err"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: strata_workload $*: exit $rc (want $code), stderr: $err"
    fi
}

expect 2 'usage' -- 
expect 2 'unknown subcommand' -- bogus --uri mem:
expect 2 "bad value '0' for --threads" -- run --uri strata://127.0.0.1:1 --history "$TMP/h" --threads 0
expect 2 "bad value 'x' for --duration" -- run --uri strata://127.0.0.1:1 --history "$TMP/h" --duration x
expect 2 "bad value '99' for --branches" -- run --uri strata://127.0.0.1:1 --history "$TMP/h" --branches 99
expect 2 "bad value 'maybe' for --merges" -- run --uri strata://127.0.0.1:1 --history "$TMP/h" --merges maybe
expect 2 'run needs --uri and --history' -- run --uri strata://127.0.0.1:1
expect 2 'compare needs --nodes and --history' -- compare --history "$TMP/h"
expect 2 'unexpected argument' -- probe --uri strata://127.0.0.1:1 extra
expect 2 'cannot open' -- probe --uri 'strata://127.0.0.1:99999'
expect 2 'cannot read' -- final --uri strata://127.0.0.1:1 --history "$TMP/missing"

# Malformed histories: refused before anything is appended.
printf '{"t":1,"proc":0,"type":"invoke","f":"read","branch":"default","key":"k0-0","value":null}\nnot json\n' >"$TMP/bad1"
printf '{"t":1,"proc":0,"type":"invoke","branch":"default","key":"k0-0"}\n' >"$TMP/bad2"
printf '[1,2]\n' >"$TMP/bad3"
for f in bad1 bad2 bad3; do
    cp "$TMP/$f" "$TMP/$f.orig"
    expect 2 "$f:[12]: (not a history line|operation line without)" -- final --uri strata://127.0.0.1:1 --history "$TMP/$f"
    if cmp -s "$TMP/$f" "$TMP/$f.orig"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: a refused final changed $f"
    fi
done

# `now` prints the history clock: a number that does not go backwards.
a=$("$WL" now) b=$("$WL" now)
if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] && ((b >= a)); then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    echo "FAIL: strata_workload now printed '$a' then '$b'"
fi

echo "$passed passed, $failed failed"
((failed == 0))
