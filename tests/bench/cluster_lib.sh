# Shared by the sharding benchmarks (shards.sh, join.sh): local stratadb-server nodes on
# 127.0.0.1, tracked by PID and stopped on exit, and probes of their cluster state.
# Sourced, not run. The caller sets `bench_name` (prefix of the temp dir) first.
#
# Environment: STRATA_BUILD (default build), BENCH_KEEP=1 keeps the temp dir (data, logs).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${STRATA_BUILD:-$root/build}
[[ $build == /* ]] || build=$root/$build
server=$build/node/stratadb-server
bench=$build/client/strata-bench
call=$build/tests/bench/strata_call

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "$bench_name: $*"
    exit 1
}

for b in "$server" "$bench" "$call"; do
    [[ -x $b ]] || die "$b not built (cmake -S . -B build && cmake --build build)"
done
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
command -v ss >/dev/null || die "ss is needed (apt-get install iproute2)"

# ---- Process tracking and cleanup ---------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/strata-$bench_name.XXXXXX")
declare -A tracked=() # pid -> what

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
        unset "tracked[$p]"
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ((${#tracked[@]})) && stop_pids "${!tracked[@]}"
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Ports: free ones on 127.0.0.1, below the ephemeral range (32768+) -------------------
# `port VAR` sets VAR (not in a subshell: the ports handed out must be remembered).
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

# ---- Nodes --------------------------------------------------------------------------------
# c_addr[i] (i = 0-based; node id i+1), c_pid[i], c_dir: the current cluster.
c_addr=() c_pid=() c_dir="" c_list=""

# cluster_init N: a new cluster directory and N free addresses (starts nothing).
cluster_init() {
    local n=$1 i p
    c_dir=$tmp/c$RANDOM$RANDOM
    mkdir -p "$c_dir"
    c_addr=() c_pid=() c_list=""
    for ((i = 0; i < n; i++)); do
        port p
        c_addr[i]=127.0.0.1:$p
    done
}

# node_start I ARGS...: start node I on its address with the given membership flags and
# wait (at most 10 s) until it answers cluster.status.
node_start() {
    local i=$1
    shift
    "$server" --data-dir "$c_dir/node$((i + 1))" --listen "${c_addr[$i]}" "$@" \
        >>"$c_dir/node$((i + 1)).log" 2>&1 &
    c_pid[i]=$!
    tracked[$!]="stratadb-server node $((i + 1))"
    for _ in $(seq 100); do
        kill -0 "${c_pid[$i]}" 2>/dev/null ||
            die "node $((i + 1)) exited at start; log: $(tail -5 "$c_dir/node$((i + 1)).log")"
        status_of "$i" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "node $((i + 1)) does not answer on ${c_addr[$i]} after 10 s"
}

# cluster_bootstrap N ARGS...: start nodes 0..N-1 as the initial members.
cluster_bootstrap() {
    local n=$1 i
    shift
    c_list=""
    for ((i = 0; i < n; i++)); do c_list+="${c_list:+,}${c_addr[$i]}"; done
    for ((i = 0; i < n; i++)); do node_start "$i" --bootstrap "$c_list" "$@"; done
}

cluster_down() {
    local live=() p
    for p in "${c_pid[@]}"; do [[ -n ${tracked[$p]:-} ]] && live+=("$p"); done
    ((${#live[@]})) && stop_pids "${live[@]}"
    c_pid=()
    [[ ${BENCH_KEEP:-0} == 1 ]] || rm -rf "$c_dir"
}

# ---- Probes (each answered by one node: ?routing=server pins the handle to it) ----------
status_of() { "$call" "strata://${c_addr[$1]}?routing=server" '{"op":"cluster.status"}'; }

# The placement table as the meta leader has it (a linearizable read through node I).
placement_via() {
    "$call" "strata://${c_addr[$1]}?routing=server" '{"op":"cluster.placement","fresh":true}'
}

# statuses I...: the listed nodes' cluster.status as one JSON array (fails if one fails).
statuses() {
    local i out="["
    for i in "$@"; do
        out+=$(status_of "$i") || return 1
        out+=","
    done
    printf '%s]\n' "${out%,}"
}

# jq definitions over $pl (cluster.placement) and $st (array of cluster.status):
#   pref: shard id (string) -> preferred replica (first in the table)
#   rows: one {g, n, role, leader_id} per hosted shard group per node
#   spread: every shard led by its preferred replica, and every host agrees on it
#   counts(f): per active node id, how many shards f selects it in
JQ_DEFS='
def pref: $pl.table.shards | map({key: (.[0] | tostring), value: .[2][0]}) | from_entries;
def rows: [$st[] | .node_id as $n | .groups[] | select(.id > 0)
           | {g: (.id | tostring), n: $n, role, leader_id}];
def spread: pref as $p | rows as $r
  | all($p | to_entries[]; .key as $g | .value as $want
        | any($r[]; .g == $g and .n == $want and .role == "leader")
          and all($r[] | select(.g == $g); .leader_id == $want));
def active: [$pl.table.nodes[] | select(.[2] == 1) | .[0]];
def counts(f): active as $a | [$a[] as $id | [$pl.table.shards[] | f | select(. == $id)] | length];
def within_one(xs): (xs | max) - (xs | min) <= 1;
'

# Load average (1, 5, 15 min) as "a b c".
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
