#!/usr/bin/env bash
# Compare a 3-node StrataDB cluster with a 3-member etcd cluster and a durable Redis on
# this machine (same key space, 100-byte values), then measure StrataDB's write gap after
# kill -9 of the leader and probe shorter election timeouts. Run by hand, not by CTest;
# method and results in docs/benchmarks.md ("Against etcd and Redis").
#
#   tests/bench/compare.sh            # full run, ~8-10 minutes on 2 cores
#
# Needs a built tree (cmake --build build). Installs etcd-server, etcd-client,
# redis-server and redis-tools with apt-get when missing (root, Debian).
#
# Environment:
#   STRATA_BUILD              build dir (default build)
#   COMPARE_DURATION          measured seconds per throughput run (default 10)
#   COMPARE_KEYS              key space (default 100000)
#   COMPARE_GAP_KILLS         leader kills per write-gap run (default 3)
#   COMPARE_STABILITY_S       seconds of full load per election-timeout probe (default 60)
#   COMPARE_ELECTION_MS       election timeouts probed, longest first; the probe stops at
#                             the first that shows a leader change (default "1000 500 250 150")
#   COMPARE_OUT               copy the raw results (JSON, CSV, logs) to this directory
#   COMPARE_KEEP=1            keep the temp dir (data, logs) instead of removing it
#
# Everything listens on 127.0.0.1 only, on free ports below the ephemeral range. Every
# process started is tracked by PID and stopped on exit; the temp dir is removed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${STRATA_BUILD:-$root/build}
[[ $build == /* ]] || build=$root/$build
server=$build/node/stratadb-server
cli=$build/client/strata
bench=$build/client/strata-bench
dur=${COMPARE_DURATION:-10}
keys=${COMPARE_KEYS:-100000}
kills=${COMPARE_GAP_KILLS:-3}
stab_s=${COMPARE_STABILITY_S:-60}
elections=${COMPARE_ELECTION_MS:-"1000 500 250 150"}
vsize=100

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "compare: $*"; exit 1; }

for b in "$server" "$cli" "$bench"; do
    [[ -x $b ]] || die "$b not built (cmake -S . -B build && cmake --build build)"
done

# ---- Packages: only for this benchmark, so installed here, not in scripts/setup-deps ----
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v jq >/dev/null || need+=(jq)
perl -MTime::HiRes -e1 2>/dev/null || need+=(perl)
command -v cc >/dev/null || need+=(gcc)
[[ -f /usr/include/jansson.h ]] || need+=(libjansson-dev)
[[ -f /usr/include/openssl/evp.h ]] || need+=(libssl-dev)
if ((${#need[@]})); then
    log "installing ${need[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export ETCDCTL_API=3

# ---- Process tracking and cleanup ---------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/strata-compare.XXXXXX")
res=$tmp/results
mkdir -p "$res"
declare -A tracked=() # pid -> what

track() { tracked[$1]=$2; }
untrack() { unset "tracked[$1]"; }

# Stop the given pids: TERM, up to 5 s grace, then KILL; reap them.
stop_pids() {
    local p alive
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "$@"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
        untrack "$p"
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ((${#tracked[@]})) && stop_pids "${!tracked[@]}"
    if [[ -n ${COMPARE_OUT:-} ]]; then
        mkdir -p "$COMPARE_OUT"
        cp -r "$res"/. "$COMPARE_OUT"/
        for f in "$tmp"/*/*.log; do
            [[ -f $f && $f != "$res"/* ]] && cp "$f" "$COMPARE_OUT/$(basename "$(dirname "$f")")-$(basename "$f")"
        done
        log "raw results copied to $COMPARE_OUT"
    fi
    if [[ ${COMPARE_KEEP:-0} == 1 ]]; then log "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Ports: free ones on 127.0.0.1, below the ephemeral range (32768+) -------------------
# `port VAR` sets VAR (not a subshell: the ports handed out must be remembered).
declare -A taken=()
port() {
    local _port=$((20000 + RANDOM % 12000)) _used
    _used=" $(ss -Htan | awk '{n = split($4, a, ":"); printf "%s ", a[n]}') "
    while [[ -n ${taken[$_port]:-} || $_used == *" $_port "* ]]; do
        _port=$((_port + 1 > 31999 ? 20000 : _port + 1))
    done
    taken[$_port]=1
    printf -v "$1" '%s' "$_port"
}

# ---- StrataDB -----------------------------------------------------------------------------
s_ports=() s_pids=() s_dir="" s_list="" s_uri="" s_args=()

# strata_up ELECTION_MS HEARTBEAT_MS: a fresh 3-node cluster; waits for a leader.
# "default" leaves both flags out (the server's defaults: 1000 and 100).
strata_up() {
    local e=$1 h=$2 i p
    s_dir=$tmp/strata-e$e-$RANDOM
    mkdir -p "$s_dir"
    s_ports=()
    for i in 0 1 2; do
        port p
        s_ports[i]=$p
    done
    s_list=127.0.0.1:${s_ports[0]},127.0.0.1:${s_ports[1]},127.0.0.1:${s_ports[2]}
    s_uri=strata://$s_list
    s_args=(--bootstrap "$s_list")
    [[ $e == default ]] || s_args+=(--election-timeout-ms "$e" --heartbeat-timeout-ms "$h")
    for i in 0 1 2; do strata_start "$i"; done
    for _ in $(seq 100); do
        [[ -n $(strata_leader) ]] && return 0
        sleep 0.1
    done
    die "StrataDB: no leader after 10 s (logs in $s_dir)"
}

strata_start() {
    local i=$1
    "$server" --data-dir "$s_dir/node$i" --listen "127.0.0.1:${s_ports[$i]}" "${s_args[@]}" \
        >>"$s_dir/node$i.log" 2>&1 &
    s_pids[i]=$!
    track $! "stratadb-server $i"
}

strata_down() {
    stop_pids "${s_pids[@]}"
    s_pids=()
}

# The address of the leader of shard 1, which holds the branch `default` every writer
# here uses (the initial placement puts it there and the rebalancer never moves it), or
# nothing. Not the top-level "leader": that is the meta group's, whose loss stops no
# write to a shard it does not lead.
strata_leader() {
    "$cli" --uri "$s_uri" --json cluster status 2>/dev/null |
        jq -r '(.groups[] | select(.id == 1) | .leader) // empty' || true
}

# "gID=LEADER/TERM ..." for every group, as one node sees them.
strata_term() {
    "$cli" --uri "$s_uri" --json cluster status 2>/dev/null |
        jq -r '[.groups[] | "g\(.id)=\(.leader_id)/\(.term)"] | join(",")'
}

# How many raft groups a node runs (the meta group and the shards).
strata_groups() {
    "$cli" --uri "$s_uri" --json cluster status 2>/dev/null | jq -r '.groups | length'
}

sbench() { # NAME ARGS...: strata-bench --json into results/NAME.json
    local name=$1
    shift
    log "StrataDB $name"
    "$bench" --uri "$s_uri" --keys "$keys" --value-size "$vsize" --duration "$dur" --json "$@" \
        >"$res/strata-$name.json"
}

# ---- etcd ---------------------------------------------------------------------------------
e_pids=() e_client=() e_dir=""

etcd_up() {
    local i p peers=() cluster="" token=compare-$RANDOM
    e_dir=$tmp/etcd
    mkdir -p "$e_dir"
    for i in 0 1 2; do
        port p
        e_client[i]=127.0.0.1:$p
        port p
        peers[i]=127.0.0.1:$p
        cluster+="${cluster:+,}m$i=http://${peers[$i]}"
    done
    for i in 0 1 2; do
        # Defaults otherwise: WAL fsync on every commit, heartbeat 100 ms, election 1000 ms.
        etcd --name "m$i" --data-dir "$e_dir/m$i" \
            --listen-client-urls "http://${e_client[$i]}" \
            --advertise-client-urls "http://${e_client[$i]}" \
            --listen-peer-urls "http://${peers[$i]}" \
            --initial-advertise-peer-urls "http://${peers[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "$token" \
            --logger zap --log-level warn >"$e_dir/m$i.log" 2>&1 &
        e_pids[i]=$!
        track $! "etcd m$i"
    done
    for _ in $(seq 100); do
        [[ -n $(etcd_leader) ]] && return 0
        sleep 0.1
    done
    die "etcd: no leader after 10 s (logs in $e_dir)"
}

# The leader's client endpoint: `endpoint status -w simple`, 5th field "is leader".
etcd_leader() {
    etcdctl --endpoints "$(
        IFS=,
        echo "${e_client[*]}"
    )" --dial-timeout 1s endpoint status -w simple 2>/dev/null |
        awk -F', ' '$5 == "true" {print $1; exit}' || true
}

ebench() { # NAME ARGS...
    local name=$1
    shift
    log "etcd $name"
    "$tmp/etcd_load" --endpoints "$(etcd_leader)" --keys "$keys" --value-size "$vsize" \
        --duration "$dur" --json "$@" >"$res/etcd-$name.json"
}

# ---- Redis --------------------------------------------------------------------------------
r_pid="" r_port=""

redis_up() {
    port r_port
    mkdir -p "$tmp/redis"
    redis-server --bind 127.0.0.1 --port "$r_port" --dir "$tmp/redis" --appendonly yes \
        --appendfsync always --save '' --daemonize no --logfile "$tmp/redis/redis.log" &
    r_pid=$!
    track $! redis-server
    for _ in $(seq 100); do
        redis-cli -p "$r_port" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    [[ $(redis-cli -p "$r_port" config get appendfsync | tail -1) == always ]] ||
        die "redis: appendfsync is not 'always'"
}

rbench() { # NAME CLIENTS REQUESTS
    log "Redis $1"
    redis-benchmark -h 127.0.0.1 -p "$r_port" -t set,get -d "$vsize" -r "$keys" -c "$2" -n "$3" \
        --csv >"$res/redis-$1.csv"
}

# ---- Write gap after kill -9 of the leader -------------------------------------------------
# One writer: the strata REPL fed `kv put` lines by `yes` (one command at a time, so one
# closed-loop client), its "OK ..." lines timestamped by perl as they arrive. Three
# processes joined by FIFOs so that each has its own tracked PID.
w_pids=() w_acks=""

writer_start() {
    local tag=$1 value
    value=$(printf 'v%.0s' $(seq "$vsize"))
    w_acks=$res/gap-$tag.acks
    rm -f "$tmp/w.in" "$tmp/w.out"
    mkfifo "$tmp/w.in" "$tmp/w.out"
    yes "kv put key000000000000 $value" >"$tmp/w.in" 2>/dev/null &
    w_pids=($!)
    track $! "writer feed"
    "$cli" --uri "$s_uri" <"$tmp/w.in" >"$tmp/w.out" 2>"$res/gap-$tag.errors" &
    w_pids+=($!)
    track $! "writer"
    perl -MTime::HiRes=time -ne 'BEGIN { $| = 1 } printf("%.6f\n", time) if /^OK/' \
        <"$tmp/w.out" >"$w_acks" &
    w_pids+=($!)
    track $! "writer clock"
}

writer_stop() {
    stop_pids "${w_pids[@]}"
    w_pids=()
}

acks_after() { # T: number of acks later than epoch time T
    awk -v t="$1" '$1 > t {n++} END {print n + 0}' "$w_acks"
}

# gap_run TAG ELECTION_MS HEARTBEAT_MS KILLS: kill -9 the leader KILLS times under one
# writer; writes results/gap-TAG.kills (epoch time of each kill) and .acks.
gap_run() {
    local tag=$1 e=$2 h=$3 n=$4 k old old_i i t_kill t_leader new
    if [[ $e == default ]]; then
        log "write gap: default election settings, $n leader kills"
    else
        log "write gap: election ${e} ms, heartbeat ${h} ms, $n leader kills"
    fi
    strata_up "$e" "$h"
    writer_start "$tag"
    : >"$res/gap-$tag.kills"
    sleep 3
    for ((k = 1; k <= n; k++)); do
        [[ $(acks_after "$(($(date +%s) - 2))") -gt 0 ]] || die "write gap: writer is not acking"
        old=$(strata_leader)
        old_i=-1
        for i in 0 1 2; do [[ $old == "127.0.0.1:${s_ports[$i]}" ]] && old_i=$i; done
        ((old_i >= 0)) || die "write gap: leader '$old' is not one of ours"
        t_kill=$EPOCHREALTIME
        kill -KILL "${s_pids[$old_i]}"
        wait "${s_pids[$old_i]}" 2>/dev/null || true
        untrack "${s_pids[$old_i]}"
        # When a new leader is seen, polling the surviving nodes with the CLI (so late by
        # up to a poll, ~20-50 ms): the gap beyond it is the client's retry backoff.
        t_leader=""
        for _ in $(seq 600); do
            new=$(strata_leader)
            if [[ -n $new && $new != "$old" ]]; then
                t_leader=$EPOCHREALTIME
                break
            fi
            sleep 0.02
        done
        echo "$t_kill $old ${t_leader:-0}" >>"$res/gap-$tag.kills"
        # Writes must resume (and go on for a while) before the node comes back.
        for _ in $(seq 300); do
            (($(acks_after "$t_kill") >= 200)) && break
            sleep 0.1
        done
        (($(acks_after "$t_kill") > 0)) || die "write gap: no write acked 30 s after the kill"
        strata_start "$old_i" # rejoins with its data dir; catches up before the next kill
        sleep 3
    done
    writer_stop
    strata_down
}

# Per kill: the longest interval between consecutive acks from that kill to the next
# (the interval spanning the kill included); also the longest before the first kill.
gap_report() { # TAG -> lines "baseline MS" and "killN GAP ms (new leader after MS ms)"
    awk 'NR == FNR {kill[++nk] = $1; lead[nk] = $3; next}
         {t[++n] = $1}
         END {
           kill[nk + 1] = 1e18
           for (i = 2; i <= n; i++) {
             d = t[i] - t[i - 1]
             if (t[i] <= kill[1]) { if (d > base) base = d; continue }
             for (k = 1; k <= nk; k++)
               if (t[i] > kill[k] && t[i] <= kill[k + 1] && d > g[k]) g[k] = d
           }
           printf "baseline %.1f\n", base * 1000
           for (k = 1; k <= nk; k++)
             printf "kill%d %.0f ms (new leader after %.0f ms)\n", k, g[k] * 1000,
                    (lead[k] > 0 ? (lead[k] - kill[k]) * 1000 : -1)
         }' "$res/gap-$1.kills" "$res/gap-$1.acks"
}

heartbeat_for() { # ELECTION_MS -> heartbeat: the default 100, at most a fifth of it
    local e=$1
    echo $((e / 5 < 100 ? e / 5 : 100))
}

# stable ELECTION_MS: full put load for stab_s seconds; 0 when no election happened.
stability_run() {
    local e=$1 h before after rc=0
    h=$(heartbeat_for "$e")
    log "stability: election ${e} ms, heartbeat ${h} ms, ${stab_s} s of 50-client puts"
    strata_up "$e" "$h"
    sleep 1
    before=$(strata_term)
    "$bench" --uri "$s_uri" --keys "$keys" --value-size "$vsize" --mix put --clients 50 \
        --warmup 0 --duration "$stab_s" --json >"$res/stability-e$e.json"
    after=$(strata_term)
    local elections stalls groups
    # Elections after each group's first one, which made its starting leader.
    groups=$(strata_groups)
    elections=$(cat "$s_dir"/node*.log | grep -c 'elected leader in term' || true)
    elections=$((elections > groups ? elections - groups : 0))
    stalls=$(grep -ho 'loop stalled [0-9.]* ms' "$s_dir"/node*.log |
        awk '{if ($3 > m) m = $3} END {printf "%.0f", m}')
    [[ $before == "$after" ]] || rc=1
    echo "$e $h $before $after $elections ${stalls:-0} $rc" >>"$res/stability.txt"
    strata_down
    return $rc
}

# ---- Run ----------------------------------------------------------------------------------
log "building etcd_load"
cc -O2 -g -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Werror -pthread \
    -o "$tmp/etcd_load" "$root/tests/bench/etcd_load.c" -lcrypto -ljansson

started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

log "StrataDB: 3 nodes, default election settings"
strata_up default 0
sbench put-c1 --mix put --clients 1
sbench put-c50 --mix put --clients 50
sbench get-c50 --mix get --clients 50 --preload
strata_down

log "etcd: 3 members"
etcd_up
ebench put-c1 --mix put --clients 1
ebench put-c50 --mix put --clients 50
ebench get-c50 --mix get --clients 50 --preload
stop_pids "${e_pids[@]}"

log "Redis: appendonly yes, appendfsync always"
redis_up
rbench c1 1 $((dur * 4000))
rbench c50 50 $((dur * 30000))
stop_pids "$r_pid"

gap_run default default 0 "$kills"

: >"$res/stability.txt"
stable=""
for e in $elections; do
    if stability_run "$e"; then stable=$e; else break; fi
done
# The gap at the shortest stable timeout below the default; when there is none, at the
# shortest one listed, for information only (it is not a setting to use).
if [[ -n $stable && $stable != 1000 ]]; then probe=$stable; else probe=${elections##* }; fi
if [[ $probe != 1000 ]]; then gap_run "e$probe" "$probe" "$(heartbeat_for "$probe")" "$kills"; fi

# ---- Table --------------------------------------------------------------------------------
sj() { jq -r "$2" "$res/strata-$1.json"; }
ej() { jq -r "$2" "$res/etcd-$1.json"; }
rc() { # FILE TEST COLUMN: a column of redis-benchmark's CSV (rps, or ms with 2 decimals)
    awk -F, -v t="\"$2\"" -v c="$3" \
        '$1 == t {gsub(/"/, "", $c); printf(c == 2 ? "%.0f" : "%.2f", $c)}' "$res/redis-$1.csv"
}
ops() { awk -v x="$1" 'BEGIN {printf "%.0f", x}'; }
ms() { awk -v x="$1" 'BEGIN {printf "%.2f", x / 1000}'; }
lat() { # strata/etcd JSON -> "p50 / p99 ms"
    echo "$(ms "$(jq -r .latency_us.p50 "$1")") / $(ms "$(jq -r .latency_us.p99 "$1")")"
}
errs() { # strata/etcd JSON -> " (N errors)" or nothing
    local n
    n=$(jq -r 'if (.errors | type) == "object" then ([.errors[]] | add // 0) + (.unknown_outcomes // 0) else .errors end' "$1")
    if ((n > 0)); then echo " ($n errors)"; fi
}
ratio=$(awk -v a="$(sj put-c50 .throughput_ops_s)" -v b="$(ej put-c50 .throughput_ops_s)" 'BEGIN {printf "%.1f", a / b}')

{
    echo "Measured $started on $(nproc) cores ($(uname -r)), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?');"
    echo "etcd $(etcd --version | awk '/etcd Version/ {print $3}'), Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2);"
    echo "$keys keys, $vsize-byte values, ${dur} s measured after 1 s warmup (Redis: fixed request counts);"
    echo "load average (1, 5, 15 min) at the start $load_before, at the end $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| figure | StrataDB (3 nodes) | etcd (3 members) | Redis (1 node, AOF always) | target |"
    echo "|---|---|---|---|---|"
    echo "| durable puts/s, 1 client | $(ops "$(sj put-c1 .throughput_ops_s)")$(errs "$res/strata-put-c1.json") | $(ops "$(ej put-c1 .throughput_ops_s)")$(errs "$res/etcd-put-c1.json") | $(ops "$(rc c1 SET 2)") | – |"
    echo "| put p50 / p99 ms, 1 client | $(lat "$res/strata-put-c1.json") | $(lat "$res/etcd-put-c1.json") | $(rc c1 SET 5) / $(rc c1 SET 7) | p50 ≤ 1 ms |"
    echo "| durable puts/s, 50 clients | $(ops "$(sj put-c50 .throughput_ops_s)")$(errs "$res/strata-put-c50.json") | $(ops "$(ej put-c50 .throughput_ops_s)")$(errs "$res/etcd-put-c50.json") | $(ops "$(rc c50 SET 2)") | ≥ 20,000 and 10× etcd (measured: ${ratio}×) |"
    echo "| put p50 / p99 ms, 50 clients | $(lat "$res/strata-put-c50.json") | $(lat "$res/etcd-put-c50.json") | $(rc c50 SET 5) / $(rc c50 SET 7) | – |"
    echo "| linearizable gets/s, 50 clients | $(ops "$(sj get-c50 .throughput_ops_s)")$(errs "$res/strata-get-c50.json") | $(ops "$(ej get-c50 .throughput_ops_s)")$(errs "$res/etcd-get-c50.json") | $(ops "$(rc c50 GET 2)") | ≥ 30,000 |"
    echo "| get p50 / p99 ms, 50 clients | $(lat "$res/strata-get-c50.json") | $(lat "$res/etcd-get-c50.json") | $(rc c50 GET 5) / $(rc c50 GET 7) | – |"
    echo
    echo "Write gap after kill -9 of the StrataDB leader (one writer; longest interval between"
    echo "consecutive acks after each kill; 'baseline' = longest interval before the first kill):"
    echo
    echo "| election / heartbeat ms | baseline | gap per kill | target |"
    echo "|---|---|---|---|"
    for f in "$res"/gap-*.kills; do
        tag=$(basename "$f" .kills)
        tag=${tag#gap-}
        e=1000
        [[ $tag == default ]] || e=${tag#e}
        mapfile -t g < <(gap_report "$tag")
        note=" (default)"
        if [[ $tag != default ]]; then
            note=" (not probed: for information)"
            grep -q "^$e .* 1\$" "$res/stability.txt" && note=" (unstable under load: for information)"
            grep -q "^$e .* 0\$" "$res/stability.txt" && note=" (stable under load)"
        fi
        echo "| $e / $(heartbeat_for "$e")$note | ${g[0]#baseline } ms | $(printf '%s; ' "${g[@]:1}" | sed 's/kill[0-9]* //g; s/; $//') | $([[ $tag == default ]] && echo '≤ 1 s' || echo '–') |"
    done
    echo
    echo "Election-timeout probe: ${stab_s} s of 50-client puts per setting, cluster status (leader id,"
    echo "term) before and after, elections and the longest loop stall logged by the nodes:"
    echo
    echo "| election / heartbeat ms | leader/term per group before | after | elections after each group's first | longest loop stall ms | puts/s | stable |"
    echo "|---|---|---|---|---|---|---|"
    while read -r e h b a n st r; do
        echo "| $e / $h | $b | $a | $n | $st | $(ops "$(jq -r .throughput_ops_s "$res/stability-e$e.json")") | $([[ $r == 0 ]] && echo yes || echo '**no**') |"
    done <"$res/stability.txt"
    echo
    if [[ -n $stable ]]; then
        echo "Shortest election timeout without a leader change: $stable ms."
    else
        echo "No probed election timeout (${elections// /, } ms) ran ${stab_s} s of full load without a leader change."
    fi
} | tee "$res/table.md"
