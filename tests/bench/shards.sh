#!/usr/bin/env bash
# Aggregate durable puts/s of a local 3-node cluster with 1, 3 and 9 shards (RF 3), 64
# clients, leaders spread over the nodes: for each run a fresh cluster, wait until every
# shard is led by its preferred replica (the leader spreading, docs/sharding.md), then
# strata-bench through the cluster-aware client with 3 branches per shard. Run by hand,
# not by CTest; figures and method in docs/benchmarks.md ("Sharding").
#
#   tests/bench/shards.sh             # S = 1 3 9, 3 runs each, interleaved: ~6 minutes
#   tests/bench/shards.sh 3 9         # only these shard counts
#
# Needs a built tree (cmake --build build: stratadb-server, strata-bench, strata_call)
# and jq. Environment:
#   STRATA_BUILD            build dir (default build)
#   SHARDS_RUNS             runs per shard count (default 3); the runs go S=1,3,9,1,3,9,…
#                           so a change in the machine's load hits every S alike
#   SHARDS_CLIENTS          strata-bench --clients (default 64)
#   SHARDS_PER_SHARD        branches per shard: --branches = this × S (default 3)
#   SHARDS_DURATION         measured seconds (default 10)
#   SHARDS_WARMUP           warmup seconds (default 2)
#   SHARDS_KEYS             key space per branch (default 100000; 100-byte values)
#   SHARDS_OUT              copy every run's strata-bench JSON to this directory
#   BENCH_KEEP=1            keep the temp dir (data, logs)
#
# Prints one line per run (puts/s, p50, p99 in ms, errors, commands forwarded by the
# nodes during the run, load average before and after) and a summary table (median and
# range per shard count) in Markdown. Everything listens on 127.0.0.1 only, on free
# ports; every server started is tracked by PID and stopped on exit, and the temp dir is
# removed.
set -euo pipefail

bench_name=shards
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"

shard_counts=("$@")
((${#shard_counts[@]})) || shard_counts=(1 3 9)
runs=${SHARDS_RUNS:-3}
clients=${SHARDS_CLIENTS:-64}
per_shard=${SHARDS_PER_SHARD:-3}
dur=${SHARDS_DURATION:-10}
warm=${SHARDS_WARMUP:-2}
keys=${SHARDS_KEYS:-100000}
for s in "${shard_counts[@]}"; do
    [[ $s =~ ^[1-9][0-9]*$ ]] || die "shard count '$s' is not a positive integer"
done
[[ -z ${SHARDS_OUT:-} ]] || mkdir -p "$SHARDS_OUT"

# wait_spread S: until every shard has a leader that is its preferred replica, every node
# agrees, and the table places every branch (at most 60 s). Prints the seconds waited.
wait_spread() {
    local s=$1 t0=$SECONDS pl st
    while ((SECONDS - t0 < 60)); do
        if pl=$(placement_via 0 2>/dev/null) && st=$(statuses 0 1 2 2>/dev/null) &&
            jq -en --argjson pl "$pl" --argjson st "$st" --argjson s "$s" \
                "$JQ_DEFS"' ($pl.table.shards | length) == $s and spread' >/dev/null; then
            echo $((SECONDS - t0))
            return 0
        fi
        sleep 0.5
    done
    die "S=$s: shards not all led by their preferred replica after 60 s: $st"
}

# Sum of `forwarded` over the three nodes.
forwarded() { statuses 0 1 2 | jq '[.[].forwarded] | add'; }

declare -A got=() # "S run" -> "puts p50_ms p99_ms"
printf '%-4s %-4s %10s %8s %8s %7s %9s  %s\n' S run 'puts/s' 'p50 ms' 'p99 ms' errors \
    forwarded 'load before -> after'
for ((r = 1; r <= runs; r++)); do
    for s in "${shard_counts[@]}"; do
        cluster_init 3
        cluster_bootstrap 3 --shards "$s" --replication-factor 3
        waited=$(wait_spread "$s")
        nbr=$((per_shard * s))
        f0=$(forwarded)
        l0=$(loadavg)
        out=$("$bench" --uri "strata://$c_list" --clients "$clients" --mix put \
            --branches "$nbr" --keys "$keys" --value-size 100 --duration "$dur" \
            --warmup "$warm" --json)
        l1=$(loadavg)
        f1=$(forwarded)
        layout=$(placement_via 0 | jq -c '[.table.branches[] | select(.[0] | startswith("bench-"))
                                          | .[1]] | group_by(.) | map(length)')
        [[ -z ${SHARDS_OUT:-} ]] || printf '%s\n' "$out" >"$SHARDS_OUT/shards-S$s-run$r.json"
        read -r puts p50 p99 errs < <(jq -r '[(.throughput_ops_s | round),
            (.latency_us.p50 / 1000 * 100 | round / 100), (.latency_us.p99 / 1000 * 100 | round / 100),
            (([.errors[]] | add // 0) + .unknown_outcomes)] | @tsv' <<<"$out")
        got["$s $r"]="$puts $p50 $p99"
        printf '%-4s %-4s %10s %8s %8s %7s %9s  %s -> %s  (branches per shard %s, spread after %s s)\n' \
            "$s" "$r" "$puts" "$p50" "$p99" "$errs" "$((f1 - f0))" "$l0" "$l1" "$layout" "$waited"
        cluster_down
    done
done

# Median and range per shard count (the middle value of the sorted runs; with an even
# number of runs, the lower middle one).
echo
echo "| shards | branches | durable puts/s, median (range) | p50 ms | p99 ms | runs |"
echo "|---|---|---|---|---|---|"
for s in "${shard_counts[@]}"; do
    cols=()
    for k in 1 2 3; do
        vals=$(for ((r = 1; r <= runs; r++)); do cut -d' ' -f"$k" <<<"${got["$s $r"]}"; done | sort -g)
        n=$(wc -l <<<"$vals")
        med=$(sed -n "$(((n + 1) / 2))p" <<<"$vals")
        cols+=("$med ($(head -1 <<<"$vals")–$(tail -1 <<<"$vals"))")
    done
    echo "| $s | $((per_shard * s)) | ${cols[0]} | ${cols[1]} | ${cols[2]} | $runs |"
done
