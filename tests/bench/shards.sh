#!/usr/bin/env bash
# Aggregate durable puts/s of a local 3-node cluster with 1, 3 and 9 shards (RF 3), 64
# clients, leaders spread over the nodes: for each run a fresh cluster, wait until every
# shard is led by its preferred replica (the leader spreading, docs/sharding.md), then
# strata-bench through the cluster-aware client with 3 branches per shard. Run by hand,
# not by CTest; figures and method in docs/benchmarks.md ("Sharding").
#
#   tests/bench/shards.sh             # S = 1 3 9, 3 runs each, interleaved: ~4.5 minutes
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
#   SHARDS_FORWARD          rounds (default 2) per 3-shard cluster, before its throughput
#                           run, of one client's puts on `default` (shard 1, led by node
#                           1): sent by the cluster-aware client with node 2 as its seed
#                           (direct to node 1), and pinned to node 2 with ?routing=server
#                           (node 2 forwards each); 4 s + 1 s warmup each, the order
#                           alternating by round; the nodes' `forwarded` counters are read
#                           around each; 0 skips it
#   SHARDS_PERF             1 (default when `perf stat` works): count the three servers'
#                           Raft log writes (io_submit and pwritev2 system calls: libraft
#                           writes its log with RWF_DSYNC) during the measured window, and
#                           print entries per log write = 3 × puts / writes (how many puts
#                           one durable write carries, per node); 0 skips it
#   SHARDS_OUT              copy every run's strata-bench JSON to this directory
#   BENCH_KEEP=1            keep the temp dir (data, logs)
#
# Prints one line per run (puts/s, p50 and p99 in ms, errors, commands the nodes forwarded
# during the measured command — its N branch.create calls go through the seed node and
# count, the puts should not —, puts per log write, load average before and after) and a
# summary table (median and range per shard count) in Markdown. Everything listens on 127.0.0.1 only, on free
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
fwd=${SHARDS_FORWARD:-2}
[[ $fwd =~ ^[0-9]+$ ]] || die "SHARDS_FORWARD must be a number of rounds"
perf_on=${SHARDS_PERF:-1}
perf_events=syscalls:sys_enter_io_submit,syscalls:sys_enter_pwritev2
if [[ $perf_on == 1 ]] && ! perf stat -e "$perf_events" -o /dev/null -- true 2>/dev/null; then
    log "perf stat cannot count system calls here: no log-write counts"
    perf_on=0
fi
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

# one_client KIND URI: one client's puts through URI; appends "KIND p50_us p99_us
# forwarded" (forwarded: the nodes' counter moved by this much) to $tmp/lat.
one_client() {
    local f0 out
    f0=$(forwarded)
    out=$("$bench" --uri "$2" --mix put --keys 10000 --duration 4 --warmup 1 --json)
    jq -r --arg k "$1" --argjson f "$(($(forwarded) - f0))" \
        '"\($k) \(.latency_us.p50 | round) \(.latency_us.p99 | round) \($f)"' <<<"$out" >>"$tmp/lat"
}

declare -A got=() # "S run" -> "puts p50_ms p99_ms"
lat_load=()
: >"$tmp/lat"
printf '%-4s %-4s %10s %8s %8s %7s %9s %9s  %s\n' S run 'puts/s' 'p50 ms' 'p99 ms' errors \
    forwarded 'per write' 'load before -> after'
for ((r = 1; r <= runs; r++)); do
    for s in "${shard_counts[@]}"; do
        cluster_init 3
        cluster_bootstrap 3 --shards "$s" --replication-factor 3
        waited=$(wait_spread "$s")
        nbr=$((per_shard * s))
        if ((fwd > 0)) && [[ $s == 3 ]]; then
            # Shard 1 (the default branch) is led by its preferred replica, node 1.
            for ((k = 0; k < fwd; k++)); do
                if (((r + k) % 2)); then
                    one_client direct "strata://${c_addr[1]}"
                    one_client forwarded "strata://${c_addr[1]}?routing=server"
                else
                    one_client forwarded "strata://${c_addr[1]}?routing=server"
                    one_client direct "strata://${c_addr[1]}"
                fi
                lat_load+=("$(loadavg)")
            done
        fi
        # Create the branches first (a token run), so the measured command's setup is
        # one quick round of BRANCH_EXISTS answers.
        "$bench" --uri "strata://$c_list" --branches "$nbr" --clients 1 --mix put --keys 1 \
            --duration 0.1 --warmup 0 --json >/dev/null || die "S=$s: creating $nbr branches failed"
        f0=$(forwarded)
        l0=$(loadavg)
        perf_pid=""
        if [[ $perf_on == 1 ]]; then
            rm -f "$tmp/perf.txt"
            (
                sleep "$warm"
                exec perf stat -x, -e "$perf_events" -p "$(IFS=,; echo "${c_pid[*]}")" \
                    -o "$tmp/perf.txt" -- sleep "$dur"
            ) &
            perf_pid=$!
            tracked[$perf_pid]="perf stat"
        fi
        out=$("$bench" --uri "strata://$c_list" --clients "$clients" --mix put \
            --branches "$nbr" --keys "$keys" --value-size 100 --duration "$dur" \
            --warmup "$warm" --json)
        l1=$(loadavg)
        f1=$(forwarded)
        batch=-
        if [[ -n $perf_pid ]]; then
            wait "$perf_pid" || true
            unset "tracked[$perf_pid]"
            writes=$(awk -F, '$3 ~ /^syscalls:/ { n += $1 } END { print n + 0 }' "$tmp/perf.txt" 2>/dev/null || echo 0)
            ((writes > 0)) && batch=$(jq -r --argjson w "$writes" '3 * .ok / $w * 10 | round / 10' <<<"$out")
        fi
        layout=$(placement_via 0 | jq -c '[.table.branches[] | select(.[0] | startswith("bench-"))
                                          | .[1]] | group_by(.) | map(length)')
        [[ -z ${SHARDS_OUT:-} ]] || printf '%s\n' "$out" >"$SHARDS_OUT/shards-S$s-run$r.json"
        read -r puts p50 p99 errs < <(jq -r '[(.throughput_ops_s | round),
            (.latency_us.p50 / 1000 * 100 | round / 100), (.latency_us.p99 / 1000 * 100 | round / 100),
            (([.errors[]] | add // 0) + .unknown_outcomes)] | @tsv' <<<"$out")
        got["$s $r"]="$puts $p50 $p99 $batch"
        printf '%-4s %-4s %10s %8s %8s %7s %9s %9s  %s -> %s  (branches per shard %s, spread after %s s)\n' \
            "$s" "$r" "$puts" "$p50" "$p99" "$errs" "$((f1 - f0))" "$batch" "$l0" "$l1" "$layout" "$waited"
        cluster_down
    done
done

# Median and range per shard count (the middle value of the sorted runs; with an even
# number of runs, the lower middle one).
echo
echo "| shards | branches | durable puts/s, median (range) | p50 ms | p99 ms | puts per log write | runs |"
echo "|---|---|---|---|---|---|---|"
for s in "${shard_counts[@]}"; do
    cols=()
    for k in 1 2 3 4; do
        vals=$(for ((r = 1; r <= runs; r++)); do cut -d' ' -f"$k" <<<"${got["$s $r"]}"; done | sort -g)
        n=$(wc -l <<<"$vals")
        med=$(sed -n "$(((n + 1) / 2))p" <<<"$vals")
        cols+=("$med ($(head -1 <<<"$vals")–$(tail -1 <<<"$vals"))")
    done
    echo "| $s | $((per_shard * s)) | ${cols[0]} | ${cols[1]} | ${cols[2]} | ${cols[3]} | $runs |"
done
if [[ -s $tmp/lat ]]; then
    echo
    echo "One client, 3 shards, puts on default (shard 1, led by node 1), seed node 2;"
    echo "each line: p50 µs, p99 µs, commands the nodes forwarded meanwhile:"
    awk '{ printf "  %-9s p50 %5d  p99 %6d  forwarded %d\n", $1, $2, $3, $4 }' "$tmp/lat"
    echo "  load averages: ${lat_load[*]}"
    # Medians, and in how many rounds the direct p50 was the lower one (pairs in order).
    awk '$1 == "direct" { d[nd++] = $2; dp[nd - 1] = $3 }
         $1 == "forwarded" { f[nf++] = $2; fp[nf - 1] = $3 }
         function med(a, n,   i, j, t) {
             for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
             return a[int((n - 1) / 2)] }
         END { for (i = 0; i < nd && i < nf; i++) lower += d[i] < f[i]
               printf "  p50 median: direct %d µs (%d rounds), forwarded %d µs: forwarded/direct = %.2f; direct lower in %d of %d rounds\n",
                   md = med(d, nd), nd, mf = med(f, nf), mf / md, lower, (nd < nf ? nd : nf)
               printf "  p99 median: direct %d µs, forwarded %d µs\n", med(dp, nd), med(fp, nf) }' "$tmp/lat"
fi
