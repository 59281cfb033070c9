#!/usr/bin/env bash
# How long a snapshot install and the freeing of a large engine stall a node's event loop:
# 3 local nodes take 50-client puts on 100k keys of 100 bytes (every version kept: the
# setup of snapshot_stall.sh), then node 3 is stopped (its engines are freed), wiped,
# removed and joined again as node 13, so the shard's leader installs its snapshot on it;
# finally every node is stopped. Listed from the nodes' logs: each restore (bytes, the
# loop's stall, where and how long the decode ran), each engine free of 10 ms or more
# (where, how long), and every "event loop was blocked" / "hand-off did not finish" line.
#
#   tests/bench/restore_stall.sh [--duration S] [--sync]
#
# --sync decodes installs and frees engines on the loop, as before (needs a build with
# -DSTRATA_FIU=ON: the failpoints strata/raft/snapshot/prepare and strata/engine/free).
# Needs the build (stratadb-server, strata-bench, strata_call), curl, jq, ss. Ports are
# chosen free on 127.0.0.1; every process is stopped by PID on exit.
set -euo pipefail
bench_name=restorestall
duration=40
sync=0
while (($#)); do
    case $1 in
    --duration) duration=$2; shift 2 ;;
    --sync) sync=1; shift ;;
    *) echo "usage: $0 [--duration S] [--sync]" >&2; exit 2 ;;
    esac
done
# shellcheck source=tests/bench/cluster_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"

if ((sync)); then
    export STRATA_FIU_ENABLE="enable name=strata/raft/snapshot/prepare,failnum=1;enable name=strata/engine/free,failnum=1"
fi
cluster_init 3
https=()
for i in 0 1 2; do
    port p
    https[i]=127.0.0.1:$p
done
c_list="${c_addr[0]},${c_addr[1]},${c_addr[2]}"
# Each node gets its own --http: its loop-lag timer logs "event loop was blocked".
for i in 0 1 2; do node_start "$i" --bootstrap "$c_list" --http "${https[$i]}"; done

log "load: 50 clients, puts on 100000 keys, ${duration} s"
"$bench" --uri "strata://$c_list" --mix put --clients 50 --keys 100000 --value-size 100 \
    --warmup 0 --duration "$duration" --json >"$tmp/bench.json"

# Stop a node by PID and wait (at most 60 s) for it to exit; prints the seconds it took.
stop_node() {
    local i=$1 pid=${c_pid[$1]} t0
    t0=$(date +%s.%N)
    kill -TERM "$pid"
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "node $((i + 1)) still running 60 s after SIGTERM"
    wait "$pid" 2>/dev/null || true
    unset "tracked[$pid]"
    echo "$(date +%s.%N) - $t0" | bc
}

log "stop node 3 (its engines are freed)"
s3=$(stop_node 2)
mv "$c_dir/node3.log" "$tmp/stop3.log"
rm -rf "$c_dir/node3"
"$call" "strata://${c_addr[0]}" '{"op":"cluster.remove_member","id":3}' >/dev/null
log "node 3 wiped, removed, joins as node 13: the shard's snapshot is installed"
node_start 2 --join "${c_addr[0]}" --node-id 13 --http "${https[2]}"
for _ in $(seq 1200); do
    grep -q 'snapshot restored' "$c_dir/node3.log" 2>/dev/null && break
    sleep 0.1
done
sleep 5 # every group installed or caught up
cp "$c_dir/node3.log" "$tmp/join3.log"
log "stop every node"
stops=()
for i in 0 1 2; do stops[i]=$(stop_node "$i"); done

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(loadavg), $(nproc) cores;" \
    "$([[ $sync == 1 ]] && echo "decode and frees on the loop (--sync)" || echo "decode and frees off the loop")"
echo "# puts/s: $(jq -r '.throughput_ops_s' "$tmp/bench.json" | head -1)"
echo "## node 3 stopped in ${s3} s:"
grep -h -E 'freed (on|off) the loop|event loop was blocked|hand-off did not finish' "$tmp/stop3.log" |
    sed 's/^/  /' || true
echo "## node 13 joined (installs):"
grep -h -E 'snapshot restored|decoded off the loop|freed (on|off) the loop|event loop was blocked' \
    "$tmp/join3.log" | sed 's/^/  /' || true
echo "## final stop of every node: ${stops[*]} s"
for i in 0 1 2; do
    skip=0
    ((i == 2)) && skip=$(wc -l <"$tmp/join3.log")
    tail -n "+$((skip + 1))" "$c_dir/node$((i + 1)).log" |
        grep -E 'freed (on|off) the loop|event loop was blocked|hand-off did not finish' |
        sed "s/^/  node $((i + 1)): /" || true
done
