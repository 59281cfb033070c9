#!/usr/bin/env bash
# Write pause clients see while a branch moves between shards (docs/sharding.md "Branch
# moves"): 5 local servers (3 shards, RF 3), 8 client threads each writing and reading
# one branch in a closed loop, and ROUNDS moves of that branch back and forth.
# Prints, from the clients: write latency before any move and during the moves, and the
# longest write of each move window (a move's window, from cluster.move_branch to
# "done", also holds the copy and the 1 s grace, so it catches unrelated stalls too);
# from the servers' logs: the fence-to-cut-over time of each move.
#
#   tests/bench/move_pause.sh [ROUNDS]      (default 30; STRATA_BUILD, default build)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${STRATA_BUILD:-$root/build}
rounds=${1:-30}
out=$(mktemp)
trap 'rm -f "$out"; [[ -n ${dir:-} && -d $dir ]] && rm -rf "$dir"' EXIT
STRATA_INTEG_KEEP=1 STRATA_MOVE_ROUNDS=$rounds "$build/tests/integration/strata_integ" \
    move_bench >"$out" 2>&1 || { cat "$out"; exit 1; }
grep -E 'FIGURES|passed|FAIL' "$out"
dir=$(grep -o '/tmp/strata-integ-[A-Za-z0-9]*' "$out" | head -1)
grep -ho 'cut over to shard [0-9]*, [0-9]* ms after the fence' "$dir"/*.log |
    awk '{print $(NF-4)}' | sort -n |
    awk '{a[NR] = $1}
         END {
             if (NR == 0) exit
             i = int(NR * 0.99); if (i < 1) i = 1
             printf "fence to cut-over (servers, %d moves): p50 %d ms, p99 %d ms, max %d ms\n",
                    NR, a[int((NR + 1) / 2)], a[i], a[NR]
         }'
