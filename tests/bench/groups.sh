#!/usr/bin/env bash
# Many Raft groups per node: does their election, heartbeat and snapshot work starve the
# event loop? For each shard count S (default "1 16 64") start 3 local nodes with
# --shards S --replication-factor 3 (so every node hosts S shard groups + the meta
# group), and report:
#   ready_s    seconds from start until every shard has a leader (cluster.status)
#   cpu_idle   CPU used per node while idle, in % of one core (over IDLE seconds)
#   lag        the loop-lag histogram (strata_loop_lag_seconds, a 100 ms timer's
#              lateness): share of samples later than 10 ms and than 50 ms, while idle
#              and then under load (strata-bench puts on branch "default")
# usage: tests/bench/groups.sh [--build DIR] [--shards "1 16 64"] [--idle S] [--load S]
# Needs the build (stratadb-server, strata, strata-bench) and curl. Ports are chosen
# free on 127.0.0.1; every process is killed by PID on exit.
set -euo pipefail
BUILD=build
SHARDS="1 16 64"
IDLE=20
LOAD=10
while (($#)); do
    case $1 in
    --build) BUILD=$2; shift 2 ;;
    --shards) SHARDS=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --load) LOAD=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--shards LIST] [--idle S] [--load S]" >&2; exit 2 ;;
    esac
done
SERVER=$BUILD/node/stratadb-server
CLI=$BUILD/client/strata
BENCH=$BUILD/client/strata-bench
for b in "$SERVER" "$CLI" "$BENCH"; do [[ -x $b ]] || { echo "missing $b" >&2; exit 2; }; done

tmp=$(mktemp -d -t strata-groups.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# lag_share FILE1 FILE2 BOUND: share of loop-lag samples above BOUND seconds between two
# /metrics snapshots (summed over the nodes' files).
lag_share() {
    python3 - "$1" "$2" "$3" <<'EOF'
import sys, re
def read(path):
    le, count = {}, 0.0
    for line in open(path):
        m = re.match(r'strata_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            le[m.group(1)] = le.get(m.group(1), 0.0) + float(m.group(2))
        m = re.match(r'strata_loop_lag_seconds_count (\S+)', line)
        if m:
            count += float(m.group(1))
    return le, count
a, ca = read(sys.argv[1]); b, cb = read(sys.argv[2])
bound = sys.argv[3]
n = cb - ca
under = b.get(bound, 0.0) - a.get(bound, 0.0)
print("%.4f" % ((n - under) / n if n > 0 else float("nan")))
EOF
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "shards ready_s cpu_idle_%core lag>10ms_idle lag>50ms_idle lag>10ms_load lag>50ms_load puts/s"
for S in $SHARDS; do
    ports=() https=() list=""
    for i in 1 2 3; do
        ports+=("$(free_port)")
        https+=("$(free_port)")
        list+="${list:+,}127.0.0.1:${ports[-1]}"
    done
    pids=()
    t0=$(date +%s.%N)
    for i in 0 1 2; do
        "$SERVER" --data-dir "$tmp/s$S-n$i" --listen "127.0.0.1:${ports[$i]}" \
            --bootstrap "$list" --shards "$S" --replication-factor 3 \
            --http "127.0.0.1:${https[$i]}" >"$tmp/s$S-n$i.log" 2>&1 &
        pids+=($!)
    done
    # Every group on node 1 (it hosts all of them) knows a leader.
    ready=""
    for _ in $(seq 1 600); do
        if out=$("$CLI" --uri "strata://127.0.0.1:${ports[0]}" --json cluster status 2>/dev/null) &&
            [[ $(jq '[.groups[] | select(.leader_id == 0)] | length' <<<"$out") == 0 ]] &&
            [[ $(jq '.groups | length' <<<"$out") == $((S + 1)) ]]; then
            ready=$(python3 -c "import time; print('%.1f' % (time.time() - $t0))")
            break
        fi
        sleep 0.2
    done
    [[ -n $ready ]] || { echo "shards $S: no leader for every group in 120 s" >&2; exit 1; }
    sleep 3 # leaders spread to their preferred replicas
    for i in 0 1 2; do curl -s "http://127.0.0.1:${https[$i]}/metrics"; done >"$tmp/m0"
    c0=0; for p in "${pids[@]}"; do c0=$((c0 + $(cpu_ticks "$p"))); done
    sleep "$IDLE"
    c1=0; for p in "${pids[@]}"; do c1=$((c1 + $(cpu_ticks "$p"))); done
    for i in 0 1 2; do curl -s "http://127.0.0.1:${https[$i]}/metrics"; done >"$tmp/m1"
    hz=$(getconf CLK_TCK)
    cpu=$(python3 -c "print('%.1f' % (($c1 - $c0) / $hz / $IDLE / 3 * 100))")
    idle10=$(lag_share "$tmp/m0" "$tmp/m1" 0.01)
    idle50=$(lag_share "$tmp/m0" "$tmp/m1" 0.05)
    "$BENCH" --uri "strata://$list" --clients 16 --mix put --keys 10000 \
        --duration "$LOAD" --warmup 1 --json >"$tmp/bench.json" 2>/dev/null || true
    for i in 0 1 2; do curl -s "http://127.0.0.1:${https[$i]}/metrics"; done >"$tmp/m2"
    load10=$(lag_share "$tmp/m1" "$tmp/m2" 0.01)
    load50=$(lag_share "$tmp/m1" "$tmp/m2" 0.05)
    puts=$(jq -r '.throughput_ops_s // "?" | if type == "number" then floor else . end' "$tmp/bench.json" 2>/dev/null || echo "?")
    echo "$S $ready $cpu $idle10 $idle50 $load10 $load50 $puts"
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
done
