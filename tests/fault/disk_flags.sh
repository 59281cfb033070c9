#!/usr/bin/env bash
# The disk watchdog's flags: bad values are refused with a clear message (exit 2), and a
# one-node server whose reserve exceeds the free space refuses a write at once with
# UNAVAILABLE and the reason, serves reads, and stops cleanly. No root needed.
# usage: disk_flags.sh SERVER CLI
set -uo pipefail

SERVER=${1:?usage: disk_flags.sh SERVER CLI}
CLI=${2:?usage: disk_flags.sh SERVER CLI}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-disk-flags.XXXXXX") || exit 2
PID=0
FAILS=0

cleanup() {
    if ((PID > 0)); then
        kill -KILL "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

check() { # description, then the command that must succeed
    local what=$1
    shift
    if "$@"; then
        echo "ok: $what"
    else
        echo "FAIL: $what"
        FAILS=$((FAILS + 1))
    fi
}

refused() { # expected message, then the flags
    local want=$1 out rc
    shift
    out=$(timeout 10 "$SERVER" --data-dir "$WORK/never" --bootstrap 127.0.0.1:1 "$@" 2>&1)
    rc=$?
    [[ $rc == 2 && $out == *"$want"* && ! -e $WORK/never ]] ||
        { echo "  exit $rc, output: $out"; return 1; }
}

check "--disk-reserve-mb -1 is refused" refused "needs a non-negative integer" --disk-reserve-mb -1
check "--disk-reserve-mb 12x is refused" refused "needs a non-negative integer" --disk-reserve-mb 12x
check "--disk-reserve-mb above 1 PiB is refused" refused "must be at most" --disk-reserve-mb 1073741825
check "--disk-stall-ms above an hour is refused" refused "must be at most" --disk-stall-ms 3600001
check "--disk-stall-ms without a value is refused" refused "needs a value" --disk-stall-ms

# A reserve larger than any disk: the only voter keeps leading and refuses writes.
started=0
for _ in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 40000))
    "$SERVER" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --bootstrap "127.0.0.1:$PORT" \
        --shards 1 --disk-reserve-mb 1073741824 --disk-stall-ms 0 >"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 50); do
        if grep -q "listening on" "$WORK/server.log"; then
            started=1
            break
        fi
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    ((started)) && break
    kill -KILL "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
    PID=0
    rm -rf "$WORK/data"
done
if ((!started)); then
    echo "FAIL: the server did not start: $(tail -n 3 "$WORK/server.log")"
    exit 1
fi

# The meta group refuses writes too, so no placement table is ever written: the routing
# client's probe must get the disk error at once (not wait for a table) and fall back.
URI="strata://127.0.0.1:$PORT"
refuses_write() {
    local out
    out=$(timeout 15 "$CLI" --uri "$URI" kv put k v 2>&1)
    [[ $? != 0 && $out == *UNAVAILABLE* && $out == *"disk full on node 1"* ]] || {
        echo "  output: $out"
        return 1
    }
}
# The watchdog's first check comes with the first raft tick after the groups start; the
# client retries UNAVAILABLE until its own timeout, so allow a few attempts.
ok=0
for _ in $(seq 20); do
    if refuses_write >/dev/null 2>&1; then
        ok=1
        break
    fi
    sleep 0.25
done
check "a write is refused with UNAVAILABLE and 'disk full on node 1'" test "$ok" = 1
check "reads are served" bash -c "timeout 10 '$CLI' --uri '$URI' kv get k >/dev/null"
check "cluster status names the fault" bash -c \
    "timeout 10 '$CLI' --uri '$URI' --json cluster status | grep -q 'disk full on node 1'"
check "the fault is logged once per group" \
    test "$(grep -c 'ERROR group 1: disk full on node 1' "$WORK/server.log")" = 1
kill -TERM "$PID"
wait "$PID"
rc=$?
PID=0
check "the server exits 0 on SIGTERM" test "$rc" = 0

((FAILS == 0)) && echo "disk_flags: all passed" && exit 0
echo "disk_flags: $FAILS failed"
exit 1
