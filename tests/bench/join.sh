#!/usr/bin/env bash
# Time for a node join to rebalance: a local 3-node cluster with 9 shards (RF 3) and
# 1,000 branches; a 4th node starts with --join, and the clock runs from its start until
# the rebalancer is done. Run by hand, not by CTest; figures and method in
# docs/benchmarks.md ("Sharding").
#
#   tests/bench/join.sh               # 3 runs, ~1.5 minutes on 2 cores
#
# "Done" (the figure), checked every 0.25 s:
#   - the table (cluster.placement {"fresh":true}, the meta leader's copy) lists 4 active
#     nodes, each within one replica and within one preferred leadership of the others
#     (27 replicas: 7/7/7/6; 9 preferred leaderships: 3/2/2/2), and
#   - every node's cluster.status lists each shard group the table gives it, with a
#     known leader.
# Also printed: when, after that, every shard is led by its preferred replica and every
# group's voters are exactly the table's replicas (as each shard's leader sees them).
# Replicas a node no longer holds are retired 10 s after the table drops them; that
# fixed delay is not waited for.
#
# Needs a built tree (stratadb-server, strata-bench, strata_call) and jq. Environment:
#   STRATA_BUILD        build dir (default build)
#   JOIN_RUNS           runs, each on a fresh cluster (default 3)
#   JOIN_BRANCHES       branches created before the join (default 1000)
#   JOIN_SHARDS         shards (default 9)
#   BENCH_KEEP=1        keep the temp dir (data, logs)
# Everything listens on 127.0.0.1 only, on free ports; every server started is tracked by
# PID and stopped on exit, and the temp dir is removed.
set -euo pipefail

bench_name=join
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"

runs=${JOIN_RUNS:-3}
nbr=${JOIN_BRANCHES:-1000}
shards=${JOIN_SHARDS:-9}
[[ $runs =~ ^[1-9][0-9]*$ && $nbr =~ ^[0-9]+$ && $shards =~ ^[1-9][0-9]*$ ]] ||
    die "JOIN_RUNS, JOIN_BRANCHES and JOIN_SHARDS must be positive integers"

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

# The brief's "done" over $pl and $st (statuses of all 4 nodes).
JQ_DONE="$JQ_DEFS"'
  (active | length) == 4 and ($pl.table.nodes | length) == 4
  and within_one(counts(.[2][])) and within_one(counts(.[2][0]))
  and (rows as $r | all($pl.table.shards[]; (.[0] | tostring) as $g
        | all(.[2][]; . as $id | any($r[]; .g == $g and .n == $id and .leader_id != 0))))'
# Settled: also every shard led by its preferred replica, and its voters (as the leader
# sees them) are exactly the table's replicas.
JQ_SETTLED="$JQ_DONE"' and spread
  and all($pl.table.shards[]; .[0] as $g | (.[2] | sort) as $want
        | [$st[] | .groups[] | select(.id == $g and .role == "leader")
           | [.members[] | select(.voter) | .id] | sort] == [$want])'

printf '%-4s %9s %11s %11s  %-22s %-22s %s\n' run 'create s' 'done s' 'settled s' \
    'replicas per node' 'preferred per node' 'load before -> after'
done_all=() settled_all=()
for ((r = 1; r <= runs; r++)); do
    cluster_init 4
    # Nodes 1-3 form the cluster; node 4 joins later.
    c_list="${c_addr[0]},${c_addr[1]},${c_addr[2]}"
    for i in 0 1 2; do node_start "$i" --bootstrap "$c_list" --shards "$shards" \
        --replication-factor 3; done
    ok=0
    for _ in $(seq 120); do
        if pl=$(placement_via 0 2>/dev/null) && st=$(statuses 0 1 2 2>/dev/null) &&
            jq -en --argjson pl "$pl" --argjson st "$st" "$JQ_DEFS spread" >/dev/null; then
            ok=1
            break
        fi
        sleep 0.5
    done
    ((ok)) || die "run $r: the 3 nodes never had every shard led by its preferred replica"

    # The branches: strata-bench creates them pipelined (64 branch.create per round
    # trip) before a token 0.1 s run of puts.
    t0=$(now_ms)
    "$bench" --uri "strata://$c_list" --branches "$nbr" --clients 1 --mix put --keys 1 \
        --duration 0.1 --warmup 0 --json >/dev/null || die "run $r: creating $nbr branches failed"
    create_ms=$(($(now_ms) - t0))
    have=$(placement_via 0 | jq '[.table.branches[] | select(.[0] | startswith("bench-"))] | length')
    ((have == nbr)) || die "run $r: the table places $have bench-* branches, expected $nbr"

    l0=$(loadavg)
    t0=$(now_ms)
    node_start 3 --join "$c_list" --node-id 4
    done_ms="" settled_ms=""
    while (($(now_ms) - t0 < 180000)); do
        if pl=$(placement_via 0 2>/dev/null) && st=$(statuses 0 1 2 3 2>/dev/null); then
            if [[ -z $done_ms ]] && jq -en --argjson pl "$pl" --argjson st "$st" "$JQ_DONE" >/dev/null; then
                done_ms=$(($(now_ms) - t0))
                reps=$(jq -c --argjson pl "$pl" -n "$JQ_DEFS counts(.[2][])")
                prefs=$(jq -c --argjson pl "$pl" -n "$JQ_DEFS counts(.[2][0])")
            fi
            if [[ -n $done_ms ]] && jq -en --argjson pl "$pl" --argjson st "$st" "$JQ_SETTLED" >/dev/null; then
                settled_ms=$(($(now_ms) - t0))
                break
            fi
        fi
        sleep 0.25
    done
    l1=$(loadavg)
    [[ -n $done_ms ]] || die "run $r: not rebalanced 180 s after node 4 started; table: $pl"
    [[ -n $settled_ms ]] || die "run $r: rebalanced after $done_ms ms, but leaders/voters never settled"
    done_all+=("$done_ms") settled_all+=("$settled_ms")
    printf '%-4s %9.1f %11.1f %11.1f  %-22s %-22s %s -> %s\n' "$r" \
        "$(secs "$create_ms")" "$(secs "$done_ms")" "$(secs "$settled_ms")" "$reps" "$prefs" \
        "$l0" "$l1"
    cluster_down
done

sorted() { printf '%s\n' "$@" | sort -n; }
mid() { sorted "$@" | sed -n "$((($# + 1) / 2))p"; }
echo
echo "join of a 4th node, $shards shards, $nbr branches, $runs runs:" \
    "done median $(secs "$(mid "${done_all[@]}")") s" \
    "(range $(secs "$(sorted "${done_all[@]}" | head -1)")–$(secs "$(sorted "${done_all[@]}" | tail -1)") s)," \
    "settled median $(secs "$(mid "${settled_all[@]}")") s" \
    "(range $(secs "$(sorted "${settled_all[@]}" | head -1)")–$(secs "$(sorted "${settled_all[@]}" | tail -1)") s)"
