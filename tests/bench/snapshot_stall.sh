#!/usr/bin/env bash
# How long a Raft snapshot stalls a node's event loop under write load: 3 local nodes
# (default election settings) take 50-client puts on 100k keys of 100 bytes — every
# version retained, so each snapshot is larger than the last, the setup of the 44 MB case
# in docs/benchmarks.md — and every snapshot the nodes log is listed: bytes, the loop's
# stall, the child's encode time and the memory copied on write. The loop-lag histogram
# (/metrics, a 100 ms timer's lateness) says how late the loop ran meanwhile.
#
#   tests/bench/snapshot_stall.sh [--duration S] [--sync] [--election MS]
#
# --election MS runs the nodes with that election timeout (heartbeat min(100, MS/5)) and
# counts the elections beyond each group's first (a stalled loop loses leadership).
# --sync encodes every snapshot on the loop, as before the forked encoder (needs a build
# with -DSTRATA_FIU=ON: the failpoint strata/raft/snapshot/fork makes every fork fail).
# Needs the build (stratadb-server, strata-bench, strata_call), curl, jq, ss. Ports are
# chosen free on 127.0.0.1; every process is stopped by PID on exit.
set -euo pipefail
bench_name=snapstall
duration=60
sync=0
election=()
while (($#)); do
    case $1 in
    --duration) duration=$2; shift 2 ;;
    --sync) sync=1; shift ;;
    --election)
        election=(--election-timeout-ms "$2" --heartbeat-timeout-ms "$(($2 / 5 < 100 ? $2 / 5 : 100))")
        shift 2
        ;;
    *) echo "usage: $0 [--duration S] [--sync] [--election MS]" >&2; exit 2 ;;
    esac
done
# shellcheck source=tests/bench/cluster_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"
command -v curl >/dev/null || die "curl is needed"

cluster_init 3
https=()
for i in 0 1 2; do
    port p
    https[i]=127.0.0.1:$p
done
if ((sync)); then
    export STRATA_FIU_ENABLE="enable name=strata/raft/snapshot/fork,failnum=1"
fi
# node_start takes the extra flags; each node gets its own --http.
c_list="${c_addr[0]},${c_addr[1]},${c_addr[2]}"
for i in 0 1 2; do
    node_start "$i" --bootstrap "$c_list" --http "${https[$i]}" ${election[@]+"${election[@]}"}
done
unset STRATA_FIU_ENABLE

metrics() { for i in 0 1 2; do curl -s "http://${https[$i]}/metrics"; done; }
metrics >"$tmp/m0"
log "load: 50 clients, puts on 100000 keys, ${duration} s ($([[ $sync == 1 ]] && echo "encode on the loop" || echo "forked encoder"))"
"$bench" --uri "strata://$c_list" --mix put --clients 50 --keys 100000 --value-size 100 \
    --warmup 0 --duration "$duration" --json >"$tmp/bench.json"
metrics >"$tmp/m1"
rss=$(for i in 0 1 2; do awk '/VmHWM/ {print $2}' "/proc/${c_pid[$i]}/status"; done |
    sort -n | tail -1)

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(loadavg), $(nproc) cores"
echo "# puts/s: $(jq -r '.throughput_ops_s' "$tmp/bench.json" | head -1)"
echo "# peak RSS of a node: $((rss / 1024)) MiB"
echo "# election timeout: ${election[1]:-default (1000)} ms; elections beyond each group's first: $(
    cat "$c_dir"/node*.log | sed -n -E 's/.*group ([0-9]+): node [0-9]+ elected leader in term.*/\1/p' |
        awk '{n++; g[$1] = 1} END {for (k in g) d++; print n - d}')"
echo "# node  index  bytes  loop_stall_ms  encode_ms  cow_MiB"
for i in 0 1 2; do
    grep -h 'snapshot at index' "$c_dir/node$((i + 1)).log" | sed -E -n \
        's/.*snapshot at index ([0-9]+), ([0-9]+) bytes, loop stalled ([0-9.]+) ms(.*)/\1 \2 \3 \4/p' |
        while read -r idx bytes stall rest; do
            enc=$(sed -E -n 's/.*encoded in ([0-9.]+) ms.*/\1/p' <<<"$rest")
            cow=$(sed -E -n 's/.* ([0-9.]+) MiB copied on write.*/\1/p' <<<"$rest")
            echo "$((i + 1)) $idx $bytes $stall ${enc:-$stall} ${cow:--}"
        done
done | sort -k2,2n -k1,1n | tee "$tmp/snaps.txt"
awk '{ if ($4 > s) s = $4; if ($5 > e) e = $5; if ($3 > b) b = $3; n++ }
     END { printf "# %d snapshots; largest %.1f MB; longest loop stall %.1f ms; longest encode %.1f ms\n",
           n, b / 1e6, s, e }' "$tmp/snaps.txt"
python3 - "$tmp/m0" "$tmp/m1" <<'EOF'
import re, sys
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
a, ca = read(sys.argv[1])
b, cb = read(sys.argv[2])
n = cb - ca
over = lambda bound: n - (b.get(bound, 0.0) - a.get(bound, 0.0))
print("# loop-lag samples (3 nodes): %d; later than 50 ms: %d, 250 ms: %d, 1 s: %d"
      % (n, over("0.05"), over("0.25"), over("1")))
EOF
