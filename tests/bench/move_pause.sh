#!/usr/bin/env bash
# Write pause clients see while a branch moves between shards (docs/sharding.md "Branch
# moves"): 5 local servers (3 shards, RF 3), 8 client threads each writing and reading
# one branch in a closed loop, and ROUNDS moves of that branch back and forth.
# Prints, from the clients: write latency before any move and during the moves, the
# longest write of each move window (a move's window, from cluster.move_branch to
# "done", also holds the copy and the 1 s grace, so it catches unrelated stalls too),
# and how long a command took from the first MOVED it met to its answer; from the
# servers' logs: the fence-to-cut-over time of each move and its steps (the fence
# command, the final copy, waiting for the seal, the table change), and the chunks of
# each phase (count per move, the longest export and import round trip of each move,
# as the driver saw them).
#
#   tests/bench/move_pause.sh [ROUNDS]      (default 30; STRATA_BUILD, default build;
#                                            STRATA_MOVE_SLOW=MS prints writes slower
#                                            than MS; KEEP=DIR keeps the logs in DIR)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${STRATA_BUILD:-$root/build}
rounds=${1:-30}
out=$(mktemp)
trap 'rm -f "$out"; [[ -n ${dir:-} && -d $dir ]] && rm -rf "$dir"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
STRATA_INTEG_KEEP=1 STRATA_MOVE_TRACE=1 STRATA_MOVE_ROUNDS=$rounds \
    "$build/tests/integration/strata_integ" move_bench >"$out" 2>&1 || { cat "$out"; exit 1; }
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E 'FIGURES|passed|FAIL|slow write' "$out" || true
dir=$(grep -o '/tmp/strata-integ-[A-Za-z0-9]*' "$out" | head -1)
if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP" && cp "$out" "$KEEP/client.log" && cp "$dir"/*.log "$KEEP/"
fi
# p50 / p99 / max of the numbers on stdin, with a label (and a unit: default " ms").
stats() {
    sort -n | awk -v label="$1" -v u="${2- ms}" '{a[NR] = $1}
        END {
            if (NR == 0) exit
            i = int(NR * 0.99); if (i < 1) i = 1
            printf "%s (%d): p50 %d%s, p99 %d%s, max %d%s\n", label, NR,
                   a[int((NR + 1) / 2)], u, a[i], u, a[NR], u
        }'
}
grep -ho 'cut over to shard [0-9]*, [0-9]* ms after the fence' "$dir"/*.log |
    awk '{print $(NF-4)}' | stats "fence to cut-over (servers, moves)"
steps=$(grep -ho 'pause steps: .*' "$dir"/*.log || true)
if [[ -n $steps ]]; then
    for s in fence 'final copy' waiting table; do
        sed -n "s/.*[:,] $s \([0-9]*\) ms.*/\1/p" <<<"$steps" | stats "  step: $s"
    done
fi
grep -ho 'answered [0-9]* ms after the first MOVED' "$out" | awk '{print $2}' |
    stats "first MOVED to answer (client commands)"
{ grep -ho 'failed [0-9]* ms after the first MOVED' "$out" || true; } | awk '{print $2}' |
    stats "first MOVED to failure (client commands)"
# The driver's chunk lines: "<phase> chunks: N, B bytes, R records; export T ms (longest
# L), import T ms (longest L)", one per phase of each move.
for ph in copying catching_up fenced; do
    lines=$(grep -ho "$ph chunks: .*" "$dir"/*.log || true)
    [[ -z $lines ]] && continue
    sed -n 's/.*chunks: \([0-9]*\),.*/\1/p' <<<"$lines" | stats "$ph: chunks per move" ""
    sed -n 's/.* \([0-9]*\) bytes,.*/\1/p' <<<"$lines" | awk '{print int($1 / 1024)}' |
        stats "  data per move" " KiB"
    sed -n 's/.*export [0-9]* ms (longest \([0-9]*\)).*/\1/p' <<<"$lines" |
        stats "  longest export round trip of a move"
    sed -n 's/.*import [0-9]* ms (longest \([0-9]*\)).*/\1/p' <<<"$lines" |
        stats "  longest import round trip of a move"
done
