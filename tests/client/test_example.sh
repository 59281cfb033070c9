#!/usr/bin/env bash
# The installed client library works from outside the source tree: `cmake --install` into
# a temporary prefix (then moved, to prove the pkg-config file is relocatable), compile
# examples/hello.c with nothing but `pkg-config --cflags --libs --static strata`, and run
# it against mem:, file:DIR twice (the second run sees the first run's data) and, when a
# server binary is given, a live one-node stratadb-server twice. Every output line is
# compared with the expected one (timestamps normalized to T).
#
# usage: test_example.sh CMAKE BUILD_DIR EXAMPLE_C LIBDIR CC "EXTRA_CFLAGS" [SERVER]
#   LIBDIR: CMAKE_INSTALL_LIBDIR (where strata.pc lands under the prefix);
#   EXTRA_CFLAGS: e.g. the sanitizer flags the library was built with ("" for none).
set -euo pipefail

CMAKE=${1:?usage: test_example.sh CMAKE BUILD_DIR EXAMPLE_C LIBDIR CC EXTRA_CFLAGS [SERVER]}
BUILD=${2:?missing BUILD_DIR}
EXAMPLE=${3:?missing EXAMPLE_C}
LIBDIR=${4:?missing LIBDIR}
CC=${5:?missing CC}
EXTRA_CFLAGS=${6-}
SERVER=${7-}

RUN_TIMEOUT=30 # seconds for one run of the example

tmp=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
die() {
    echo "FAIL: $*" >&2
    exit 1
}

# ---- install, relocate, compile ---------------------------------------------------------

"$CMAKE" --install "$BUILD" --prefix "$tmp/stage" >"$tmp/install.log" 2>&1 ||
    die "cmake --install failed: $(cat "$tmp/install.log")"
mv "$tmp/stage" "$tmp/prefix"
prefix=$tmp/prefix
for f in include/strata/strata.h include/strata/common.h "$LIBDIR/libstrata.a" \
    "$LIBDIR/pkgconfig/strata.pc"; do
    [[ -f $prefix/$f ]] || die "not installed: $f"
done

export PKG_CONFIG_PATH=$prefix/$LIBDIR/pkgconfig
pcdir=$(pkg-config --variable=pcfiledir strata) || die "pkg-config cannot find strata"
[[ $pcdir == "$PKG_CONFIG_PATH" ]] || die "pkg-config found another strata.pc: $pcdir"
flags=$(pkg-config --cflags --libs --static strata)
[[ $flags == *"-I$prefix/"* && $flags == *"-L$prefix/"* ]] ||
    die "pkg-config flags do not point into the moved prefix: $flags"

# A copy outside the tree, so nothing but the installed headers can be found.
cp "$EXAMPLE" "$tmp/hello.c"
# shellcheck disable=SC2086 # word splitting of the flag lists is intended
"$CC" -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Werror $EXTRA_CFLAGS \
    "$tmp/hello.c" $flags -o "$tmp/hello" >"$tmp/cc.log" 2>&1 ||
    die "compiling the example against the installed library failed: $(cat "$tmp/cc.log")"

# ---- expected output ----------------------------------------------------------------------

# expected URI RUN: the lines of the N-th run of hello against one database (RUN 1 on an
# empty one). Each run writes 4 versions: runs, greeting, greeting on the fork, the merge.
expected() {
    local uri=$1 n=$2 b=$(( ($2 - 1) * 4 )) prev="null"
    ((n > 1)) && prev="{\"value\":$((n - 1)),\"version\":$((b - 3)),\"ts\":T}"
    local f="feature-$n"
    cat <<EOF
opened $uri
kv.get runs                        -> $prev
kv.put runs                        -> {"version":$((b + 1)),"ts":T}
kv.put greeting                    -> {"version":$((b + 2)),"ts":T}
kv.get greeting                    -> {"value":"hello, world","version":$((b + 2)),"ts":T}
branch.fork default -> feature     -> {"name":"$f","version":$((b + 2)),"fork_version":$((b + 2))}
kv.put greeting @feature           -> {"version":$((b + 3)),"ts":T}
branch.diff default feature        -> {"changes":[{"kind":"kv","space":"default","key":"greeting","a":"hello, world","b":"hello from $f"}],"count":1,"truncated":false}
branch.merge feature -> default    -> {"version":$((b + 4)),"ts":T,"merged":true,"changes":1,"conflicts":[]}
kv.get greeting @default           -> {"value":"hello from $f","version":$((b + 4)),"ts":T}
kv.get greeting @$f         -> {"value":"hello from $f","version":$((b + 3)),"ts":T}
kv.get greeting @no-such-branch    -> error BRANCH_NOT_FOUND (7): branch 'no-such-branch' not found
done
EOF
}

# check NAME WANT_EXIT WANT_FILE ARGS...: run the example, compare exit status and stdout.
check() {
    local name=$1 want_rc=$2 want=$3 rc=0
    shift 3
    timeout "$RUN_TIMEOUT" "$tmp/hello" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    sed -E 's/"ts":[0-9]+/"ts":T/g' "$tmp/out" >"$tmp/out.norm"
    if ((rc != want_rc)); then
        fail "$name: exit $rc, expected $want_rc; stderr: $(cat "$tmp/err")"
    fi
    if ! diff -u "$want" "$tmp/out.norm" >"$tmp/diff"; then
        fail "$name: output differs:"
        cat "$tmp/diff" >&2
    else
        echo "ok: $name"
    fi
}

# mem: (the default when no URI is given, and named)
expected mem: 1 >"$tmp/want"
check "mem: (default)" 0 "$tmp/want"
check "mem:" 0 "$tmp/want" mem:

# file:DIR twice: the second run reads the first run's counter and continues its versions.
expected "file:$tmp/db" 1 >"$tmp/want"
check "file: first run" 0 "$tmp/want" "file:$tmp/db"
expected "file:$tmp/db" 2 >"$tmp/want"
check "file: second run" 0 "$tmp/want" "file:$tmp/db"

# Errors: a bad URI fails at open; nothing listening fails at the first command, bounded.
printf '%s\n' "open redis://x: error INVALID_ARGUMENT (2): unknown URI 'redis://x': expected mem:, file:DIR or strata://HOST[:PORT]" >"$tmp/want"
check "bad URI" 1 "$tmp/want" redis://x
printf '%s\n' "opened strata://127.0.0.1:1" \
    "kv.get runs                        -> error UNAVAILABLE (10): cannot connect to 127.0.0.1:1" \
    failed >"$tmp/want"
check "no server" 1 "$tmp/want" strata://127.0.0.1:1
printf 'usage: %s [URI]   (default mem:)\n' "$tmp/hello" >"$tmp/want"
timeout "$RUN_TIMEOUT" "$tmp/hello" a b >"$tmp/out" 2>"$tmp/err" && fail "usage: exit 0"
diff -u "$tmp/want" "$tmp/err" >&2 || fail "usage: wrong message"

# ---- a live server ------------------------------------------------------------------------

if [[ -n $SERVER ]]; then
    [[ -x $SERVER ]] || die "$SERVER is not an executable"
    port=""
    for _ in 1 2 3 4 5; do # a random port; another try if it is taken
        p=$((20000 + RANDOM % 30000))
        "$SERVER" --data-dir "$tmp/node" --listen "127.0.0.1:$p" --bootstrap "127.0.0.1:$p" \
            >"$tmp/server.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 1 100); do
            grep -q "elected leader" "$tmp/server.log" && { port=$p; break; }
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        [[ -n $port ]] && break
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
        rm -rf "$tmp/node"
    done
    [[ -n $port ]] || die "no stratadb-server came up: $(tail -5 "$tmp/server.log")"
    uri="strata://127.0.0.1:$port"
    expected "$uri" 1 >"$tmp/want"
    check "server first run" 0 "$tmp/want" "$uri"
    expected "$uri" 2 >"$tmp/want"
    check "server second run" 0 "$tmp/want" "$uri"
fi

if ((failures)); then
    echo "test_example: $failures check(s) failed" >&2
    exit 1
fi
echo "test_example: all checks passed"
