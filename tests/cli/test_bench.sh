#!/usr/bin/env bash
# End-to-end test of strata-bench against mem:: the human and --json reports parse and
# show work done, outcome counts match what the run must produce (preloaded gets hit,
# gets of a huge key space miss, lock-step transactions on 2 keys conflict, oversized
# values fail by code), a run where every op fails exits non-zero, an unreachable or
# unsupported server ends promptly with an error, and bad usage exits 2 naming the flag.
# Each run lasts well under a second.
#
# usage: test_bench.sh PATH/TO/strata-bench
set -euo pipefail

BENCH=${1:?usage: test_bench.sh PATH/TO/strata-bench}
[[ -x $BENCH ]] || { echo "test_bench: $BENCH is not an executable" >&2; exit 2; }

# JSON checks use jq; without it the test reports itself skipped (exit 77, ctest "Skipped").
if ! command -v jq >/dev/null 2>&1; then
    echo "test_bench: SKIP: jq is needed to check the --json output" >&2
    exit 77
fi
jcheck() { jq -e "$2" >/dev/null <<<"$1"; }

failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=$((failed + 1))
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run() { # run NAME EXPECTED_STATUS ARGS... : output in $out, stderr in $err
    local name=$1 want=$2 rc=0
    shift 2
    timeout 60 "$BENCH" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
    if [[ $rc != "$want" ]]; then
        fail "$name: exit status $rc, expected $want (stderr: $err)"
        return 1
    fi
}

jexpect() { # jexpect NAME EXPR: EXPR must hold on $out
    jcheck "$out" "$2" || fail "$1: '$2' does not hold on: $out"
}

SHORT=(--uri mem: --duration 0.4 --warmup 0.1)

# ---- human output ------------------------------------------------------------------------
if run human 0 "${SHORT[@]}" --mix mixed; then
    thr=$(awk '$1 == "throughput" {print $2}' <<<"$out")
    ok=$(awk '$1 == "outcomes" {print $3}' <<<"$out")
    p50=$(awk '$1 == "latency" {print $4}' <<<"$out")
    max=$(awk '$1 == "latency" {print $12}' <<<"$out")
    [[ $thr =~ ^[0-9]+$ && $thr -gt 0 ]] || fail "human: throughput '$thr' is not > 0: $out"
    [[ $ok =~ ^[0-9]+$ && $ok -gt 0 ]] || fail "human: ok count '$ok' is not > 0: $out"
    [[ $p50 =~ ^[0-9.]+$ && $max =~ ^[0-9.]+$ ]] || fail "human: no p50/max latency: $out"
    grep -q '^  get ' <<<"$out" || fail "human: mixed run has no get latency line: $out"
    grep -q '^  put ' <<<"$out" || fail "human: mixed run has no put latency line: $out"
    grep -q 'errors 0$' <<<"$out" || fail "human: errors reported: $out"
fi

if run human-branch 0 "${SHORT[@]}" --mix put --clients 2 --branch exp; then
    grep -q 'branch exp' <<<"$out" || fail "human-branch: branch not shown: $out"
    grep -q 'independent in-process engines' <<<"$out" ||
        fail "human-branch: 2 mem: connections not flagged as independent engines: $out"
fi

# ---- JSON output -------------------------------------------------------------------------
if run json-preload 0 "${SHORT[@]}" --json --clients 2 --pipeline 4 --keys 1000 --preload \
    --stale; then
    jexpect json-preload '.ok > 0 and .throughput_ops_s > 0 and .ops == .ok'
    jexpect json-preload '.get_misses == 0 and .by_kind.get.ok > 0 and .by_kind.put.ok > 0'
    jexpect json-preload '.by_kind.get.ok + .by_kind.put.ok == .ok'
    jexpect json-preload '.latency_us.count == .ok'
    jexpect json-preload '.latency_us.p50 <= .latency_us.p99 and .latency_us.p99 <= .latency_us.max'
    jexpect json-preload '.latency_us.p50 > 0'
    jexpect json-preload '.errors == {} and .conflicts == 0 and .unknown_outcomes == 0'
    jexpect json-preload '.clients == 2 and .connections == 2 and .independent_engines == true'
    jexpect json-preload '.window_s >= 0.4'
fi

# Keys drawn from 10^12 without a preload: every get finds nothing.
if run json-miss 0 "${SHORT[@]}" --json --mix get --keys 1000000000000; then
    jexpect json-miss '.ok > 0 and .get_misses == .ok'
fi

# 8 transactions in lock step over 2 keys: all read the same snapshot, so at most 2 commit
# per round and the rest must conflict.
if run json-txn 0 "${SHORT[@]}" --json --mix txn --pipeline 8 --keys 2; then
    jexpect json-txn '.ok > 0 and .conflicts > 0 and .ok + .conflicts == .ops'
    jexpect json-txn '.conflicts >= 3 * .ok'
    jexpect json-txn '.by_kind.txn.count == .ops'
fi

# Workers sharing one engine through one handle.
if run json-shared 0 "${SHORT[@]}" --json --mix txn --clients 3 --connections 1; then
    jexpect json-shared '.ok > 0 and .connections == 1 and .independent_engines == false'
fi

# ---- failures ------------------------------------------------------------------------------
# Every put is over the engine's 16 MiB value limit: reported by code, exit 1.
if run all-fail 1 --uri mem: --duration 0.3 --warmup 0 --json --mix put \
    --value-size 16777217; then
    jexpect all-fail '.ok == 0 and .ops > 0 and .errors.INVALID_ARGUMENT == .ops'
    jexpect all-fail '.error_messages.INVALID_ARGUMENT | test("exceeds the limit")'
    grep -q 'no operation succeeded' <<<"$err" || fail "all-fail: no stderr summary: $err"
fi

# Nothing listens on port 1: the run must end (client timeouts) with an error, not hang.
if run no-server 1 --uri strata://127.0.0.1:1 --duration 0.3 --warmup 0; then
    [[ -n $err ]] || fail "no-server: nothing on stderr"
fi

run bad-uri 1 --uri nope: --duration 0.2 && { grep -q "cannot open 'nope:'" <<<"$err" ||
    fail "bad-uri: message does not name the URI: $err"; }
run bad-branch 1 --uri mem: --branch 'bad name' --duration 0.2 &&
    { grep -q 'cannot create branch' <<<"$err" || fail "bad-branch: $err"; }

# ---- bad usage -----------------------------------------------------------------------------
usage_case() { # usage_case PATTERN ARGS...
    local pat=$1
    shift
    run "usage $*" 2 "$@" && { grep -q -- "$pat" <<<"$err" || fail "usage $*: stderr '$err'"; }
}
usage_case "--clients '0'" --clients 0
usage_case "--pipeline: needs a value" --pipeline
usage_case "--mix 'foo'" --mix foo
usage_case "--get-ratio '1.5'" --get-ratio 1.5
usage_case "applies to --mix mixed" --mix put --get-ratio 0.3
usage_case "--connections '3'" --clients 2 --connections 3
usage_case "--keys '0'" --keys 0
usage_case "--duration '0'" --duration 0
usage_case "--stale" --mix txn --stale
usage_case "unknown option '--bogus'" --bogus 1

if ((failed)); then
    echo "test_bench: $failed check(s) failed" >&2
    exit 1
fi
echo "test_bench: all checks passed"
