#!/usr/bin/env bash
# strata_delayer: bad usage is refused with a message (no root needed); then, in a private
# network namespace, a one-node server on 127.0.0.12 is asked for its status without and
# with every packet to and from it queued to the delayer (50 ms each way): the call must
# take at least the delays it crosses, and packets must pass again (bypass) once the
# delayer is stopped. Exit 0 pass, 1 fail, 77 skipped (no root, no namespaces, no NFQUEUE).
#
# usage: test_delayer.sh DELAYER SERVER CLI
set -uo pipefail
DELAYER=${1:?delayer} SERVER=${2:?server} CLI=${3:?cli}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
fails=0
check() { # check NAME COMMAND...: run it, report
    if "${@:2}"; then echo "ok - $1"; else echo "FAIL - $1"; fails=$((fails + 1)); fi
}
refused() { # refused TEXT ARGS...: exit 2 and TEXT in the message
    local err rc
    err=$("$DELAYER" "${@:2}" 2>&1 >/dev/null)
    rc=$?
    [[ $rc == 2 && $err == *"$1"* ]] || { echo "  exit $rc: $err"; return 1; }
}

if [[ ${STRATA_DELAYER_NETNS:-} != 1 ]]; then
    check "no arguments refused" refused "--queue and --delay-ms are required"
    check "no delay refused" refused "--queue and --delay-ms are required" --queue 3
    check "bad queue refused" refused "for --queue" --queue 70000 --delay-ms 5
    check "negative delay refused" refused "for --delay-ms" --queue 3 --delay-ms -5
    check "delay past 60 s refused" refused "for --delay-ms" --queue 3 --delay-ms 60001
    check "text jitter refused" refused "for --jitter-ms" --queue 3 --delay-ms 5 --jitter-ms x
    check "max-held 0 refused" refused "for --max-held" --queue 3 --delay-ms 5 --max-held 0
    check "stray argument refused" refused "unexpected argument" --queue 3 --delay-ms 5 extra
    check "unknown option refused" refused "usage" --queue 3 --delay-ms 5 --bogus 1
    if ((EUID != 0)) || ! unshare -n -- sh -c 'ip link set lo up && iptables -A OUTPUT -d 127.0.0.12 -j NFQUEUE --queue-num 7 --queue-bypass' 2>/dev/null; then
        echo "test_delayer: SKIP the delay check: needs root, a network namespace and NFQUEUE ($fails failed so far)"
        ((fails == 0)) || exit 1
        exit 77
    fi
    ((fails == 0)) || exit 1
    STRATA_DELAYER_NETNS=1 exec unshare -n -- bash "$SELF" "$@"
fi

# ---- Inside the namespace ----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-delayer.XXXXXX") || exit 2
SPID=0 DPID=0
cleanup() {
    ((DPID > 0)) && kill -KILL "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
    ((SPID > 0)) && kill -KILL "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
    rm -rf "$WORK" # the namespace and its rules go with this process
}
trap cleanup EXIT
ip link set lo up || exit 2
ADDR=127.0.0.12:9876
setpriv --pdeathsig KILL "$SERVER" --data-dir "$WORK/data" --listen "$ADDR" --bootstrap "$ADDR" \
    >"$WORK/server.log" 2>&1 &
SPID=$!
status_ms() { # one status call (a new connection: handshake + request), in ms; "" on failure
    local t0 t1
    t0=$(date +%s%N)
    timeout 10 "$CLI" --uri "strata://$ADDR" --json cluster status >/dev/null 2>&1 || return 1
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}
ready=0
for _ in $(seq 100); do
    if timeout 3 "$CLI" --uri "strata://$ADDR" --json cluster status 2>/dev/null | grep -q '"role":"leader"'; then
        ready=1
        break
    fi
    sleep 0.1
done
((ready)) || { echo "FAIL - the server did not start: $(tail -3 "$WORK/server.log")"; exit 1; }

base=$(status_ms) || { echo "FAIL - status call without delay"; exit 1; }
echo "status call without delay: ${base} ms"
"$DELAYER" --queue 7 --delay-ms 50 --ready "$WORK/ready" >"$WORK/stats.json" 2>"$WORK/delayer.log" &
DPID=$!
for _ in $(seq 50); do [[ -s $WORK/ready ]] && break; sleep 0.1; done
check "delayer bound its queue" test -s "$WORK/ready"
iptables -A OUTPUT -d 127.0.0.12 -j NFQUEUE --queue-num 7 --queue-bypass &&
    iptables -A OUTPUT -s 127.0.0.12 -j NFQUEUE --queue-num 7 --queue-bypass || exit 2
# Handshake and one request/answer: at least two round trips, 4 x 50 ms one way.
delayed=$(status_ms) || { echo "FAIL - status call under delay"; exit 1; }
echo "status call with 50 ms each way: ${delayed} ms"
check "the delayed call takes at least 200 ms" test "$delayed" -ge 200
kill -TERM "$DPID"
wait "$DPID"
rc=$?
DPID=0
echo "delayer: $(cat "$WORK/stats.json")"
check "delayer exits 0 on SIGTERM" test "$rc" = 0
check "delayer held packets for at least 50 ms each" \
    jq -e '.released > 0 and .held_ms_min >= 50 and .lost_notifications == 0' "$WORK/stats.json" >/dev/null
# The rules stay, the delayer is gone: --queue-bypass lets packets through (without it
# they would be dropped and the call would time out).
after=$(status_ms) || { echo "FAIL - status call after the delayer stopped (no bypass?)"; exit 1; }
echo "ok - status call with the rules but no delayer answered: ${after} ms"
((fails == 0)) || exit 1
exit 0
