#!/usr/bin/env bash
# strata-bench --branches, the option the sharding benchmark (shards.sh) depends on:
#   - mem: with --preload, every worker's branch is filled (no get misses) and the report
#     says how many branches;
#   - bad usage exits 2 naming the flag (with --branch, out of range, not a number);
#   - a local 3-node cluster with 3 shards: --branches 6 with 6 clients creates
#     bench-0..5, the table spreads them over the 3 shards, each worker writes its own
#     branch (each holds keys, `default` none), and a second run over the existing
#     branches works (BRANCH_EXISTS ignored).
# About 10-20 s on 2 cores. Needs jq (else skipped: exit 77).
#
# usage: test_branches.sh BUILD_DIR
set -euo pipefail

export STRATA_BUILD=${1:?usage: test_branches.sh BUILD_DIR}
if ! command -v jq >/dev/null 2>&1; then
    echo "test_branches: SKIP: jq is needed" >&2
    exit 77
fi
bench_name=test-branches
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"

failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=$((failed + 1))
}
expect() { # NAME JSON EXPR
    jq -e "$3" >/dev/null <<<"$2" || fail "$1: '$3' does not hold on: $2"
}

# ---- mem: -------------------------------------------------------------------------------
out=$("$bench" --uri mem: --json --mix get --branches 3 --clients 4 --connections 2 --keys 50 \
    --preload --duration 0.3 --warmup 0.1) || fail "mem: run failed"
expect mem "$out" '.branches == 3 and .branch_prefix == "bench-" and .branch == null'
expect mem "$out" '.ok > 0 and .get_misses == 0 and .errors == {}'
out=$("$bench" --uri mem: --json --mix put --duration 0.2 --warmup 0) || fail "mem: default run failed"
expect mem-default "$out" '.branches == 1 and (has("branch_prefix") | not)'
out=$("$bench" --uri mem: --mix put --branches 2 --duration 0.2 --warmup 0) ||
    fail "mem: human run failed"
grep -q '^branches    2: bench-0..bench-1, worker i on bench-(i mod 2)$' <<<"$out" ||
    fail "mem: human report does not name the branches: $out"

# ---- bad usage --------------------------------------------------------------------------
usage() { # WANT_STDERR ARGS...
    local want=$1 rc=0 err
    shift
    err=$("$bench" --uri mem: "$@" 2>&1 >/dev/null) || rc=$?
    [[ $rc == 2 && $err == "$want" ]] || fail "usage $*: exit $rc, stderr '$err', expected 2 and '$want'"
}
usage "strata-bench: --branches: names its own branches: drop --branch" --branches 2 --branch x
usage "strata-bench: --branches '100001': expected an integer in 0..100000" --branches 100001
usage "strata-bench: --branches 'many': expected an integer in 0..100000" --branches many
usage "strata-bench: --branches: needs a value" --branches

# ---- a 3-node, 3-shard cluster ------------------------------------------------------------
cluster_init 3
cluster_bootstrap 3 --shards 3 --replication-factor 3 --election-timeout-ms 300 \
    --heartbeat-timeout-ms 50
run_cluster() {
    "$bench" --uri "strata://$c_list" --json --mix put --branches 6 --clients 6 --keys 1000 \
        --duration 1 --warmup 0.2
}
out=""
for _ in $(seq 20); do # the first creates need a meta leader: retry for up to ~10 s
    out=$(run_cluster 2>/dev/null) && break
    sleep 0.5
done
[[ -n $out ]] || fail "cluster: strata-bench --branches 6 never succeeded"
expect cluster "$out" '.branches == 6 and .ok > 0 and .errors == {} and .unknown_outcomes == 0'
pl=$(placement_via 0)
expect table "$pl" '[.table.branches[] | select(.[0] | test("^bench-[0-5]$"))] | length == 6'
expect table "$pl" '[.table.branches[] | select(.[0] | startswith("bench-")) | .[1]]
                    | group_by(.) | map(length) == [2, 2, 2]'
for b in 0 1 2 3 4 5; do
    n=$("$call" "strata://$c_list" "{\"op\":\"kv.count\",\"branch\":\"bench-$b\"}") ||
        fail "kv.count on bench-$b failed"
    [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || fail "bench-$b holds '$n' keys, expected some"
done
n=$("$call" "strata://$c_list" '{"op":"kv.count"}') || fail "kv.count on default failed"
[[ $n == 0 ]] || fail "the default branch holds '$n' keys, expected none"
out=$(run_cluster) || fail "cluster: second run over the existing branches failed"
expect cluster-again "$out" '.ok > 0 and .errors == {}'
cluster_down

if ((failed)); then
    echo "test_branches: $failed failure(s)" >&2
    exit 1
fi
echo "test_branches: ok"
