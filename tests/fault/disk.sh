#!/usr/bin/env bash
# Disk faults on a 3-node StrataDB cluster under a recorded workload (README.md beside
# this file, and docs/reliability.md "Disk faults"):
#   full  node 3's data dir is a small tmpfs: filled below the watchdog's reserve, then
#         completely; node 3 reports "disk full", hands leadership away, the other two
#         keep serving; the filler goes, node 3 catches up; a restart finds no damage.
#   eio   (test builds with failpoints) log writes of the leader of the data group fail
#         with EIO before reaching the disk, then after it (the fsync failing): the leader
#         reports a disk error, hands leadership away, recovers when the fault ends.
#   torn  a follower is killed and the tail of its open log segment garbled; another's
#         cut in the middle of a write; (with failpoints) a third tears its own last write
#         and crashes. Each restarts, drops the torn entries and catches up.
#   install (failpoints) a follower far behind restarts and its snapshot install fails:
#         it reports that only a restart helps, and the restart heals it.
#   crash (failpoints) nodes kill themselves before and after applying an entry and
#         before answering a write; each restarts and catches up.
#   save  (failpoints) a node's own snapshot write fails: reported, then cleared.
# Then: the workload's acknowledged writes are all there (final reads), every replica's
# state digest is equal (compare), the history is linearizable (lincheck), and every
# server exits 0 on SIGTERM.
#
# usage: disk.sh [--build DIR] [--server PATH] [--workload PATH] [--cli PATH]
#                [--checker PATH|none] [--fiu auto|0|1] [--phases "full eio torn install crash save"]
#                [--seed N] [--out DIR] [--keep]
# Exit: 0 pass, 1 a check failed, 2 harness or setup error, 77 skipped (not root, no
# mount or network namespace, a tool missing).
set -uo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/../.." && pwd)

BUILD="$ROOT/build"
SERVER="" WORKLOAD="" CLI="" CHECKER="" FIU=auto PHASES="full eio torn install crash save" SEED="" OUT="" KEEP=0
ADDRS=(127.0.0.11 127.0.0.12 127.0.0.13)
PORT=9876
TMPFS_MB=96      # node 3's whole disk: two groups preallocate ~48 MiB of segments
RESERVE_MB=16    # --disk-reserve-mb: below this free, node 3 refuses writes
STALL_MS=1500    # --disk-stall-ms
# Snapshots every 2048 entries: a replica whose acknowledged tail was torn away waits
# for the leader's next snapshot past it (raft 0.22.1 keeps its match index), so this
# keeps catch-up within seconds; it also puts snapshot writes on the full disk.

die_usage() { echo "disk.sh: $*" >&2; exit 2; }

while (($#)); do
    case $1 in
    --build) BUILD=${2:?}; shift 2 ;;
    --server) SERVER=${2:?}; shift 2 ;;
    --workload) WORKLOAD=${2:?}; shift 2 ;;
    --cli) CLI=${2:?}; shift 2 ;;
    --checker) CHECKER=${2:?}; shift 2 ;;
    --fiu) FIU=${2:?}; shift 2 ;;
    --phases) PHASES=${2:?}; shift 2 ;;
    --seed) SEED=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$SELF"; exit 0 ;;
    *) die_usage "unknown argument '$1' (see --help)" ;;
    esac
done
: "${SERVER:=$BUILD/node/stratadb-server}"
: "${WORKLOAD:=$BUILD/tests/fault/strata_workload}"
: "${CLI:=$BUILD/client/strata}"
: "${CHECKER:=$BUILD/tests/tools/lincheck}"
[[ -z $SEED ]] && SEED=${STRATA_FAULT_SEED:-$(( (RANDOM << 15 | RANDOM) % 1000000 ))}
[[ $SEED =~ ^[0-9]+$ ]] || die_usage "--seed must be a number"
for f in "$SERVER" "$WORKLOAD" "$CLI"; do
    [[ -x $f ]] || die_usage "not an executable: $f"
done
[[ $CHECKER == none || -x $CHECKER ]] || die_usage "no checker at $CHECKER (or give --checker none)"
for p in $PHASES; do
    [[ " full eio torn install crash save " == *" $p "* ]] ||
        die_usage "unknown phase '$p' (full, eio, torn, install, crash, save)"
done
case $FIU in
auto) grep -qa 'strata/raft/append/before' "$SERVER" && FIU=1 || FIU=0 ;;
0 | 1 | ON | OFF | on | off) [[ $FIU == 1 || $FIU == ON || $FIU == on ]] && FIU=1 || FIU=0 ;;
*) die_usage "--fiu must be auto, 0 or 1" ;;
esac

# ---- Skip where the faults cannot be made ---------------------------------------------------
if [[ ${STRATA_DISK_NS:-} != 1 ]]; then
    if ((EUID != 0)); then
        echo "disk.sh: SKIP: needs root (mount and network namespaces, tmpfs)"
        exit 77
    fi
    tools=(unshare ip setpriv jq fallocate perl mount umount)
    ((FIU)) && tools+=(fiu-ctrl)
    for tool in "${tools[@]}"; do
        command -v "$tool" >/dev/null || { echo "disk.sh: SKIP: '$tool' is not installed"; exit 77; }
    done
    probe_dir=$(mktemp -d "${TMPDIR:-/tmp}/strata-disk-probe.XXXXXX") || exit 2
    if ! unshare -n -m --propagation private -- sh -c \
        "ip link set lo up && mount -t tmpfs -o size=1m tmpfs '$probe_dir' && umount '$probe_dir'" 2>/dev/null; then
        rmdir "$probe_dir"
        echo "disk.sh: SKIP: cannot create a mount and network namespace with a tmpfs here"
        exit 77
    fi
    rmdir "$probe_dir"
    # Everything below runs in private namespaces: the tmpfs and the fixed addresses are
    # this test's alone and vanish with it.
    export STRATA_DISK_NS=1
    exec unshare -n -m --propagation private -- bash "$SELF" --server "$SERVER" \
        --workload "$WORKLOAD" --cli "$CLI" --checker "$CHECKER" --fiu "$FIU" \
        --phases "$PHASES" --seed "$SEED" ${OUT:+--out "$OUT"} $( ((KEEP)) && echo --keep)
fi

# ---- State and cleanup ------------------------------------------------------------------------
RANDOM=$SEED
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-disk.XXXXXX") || exit 2
[[ -n $OUT ]] || OUT="$WORK/out"
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
HIST="$OUT/history.jsonl"
LOG="$OUT/disk.log"
: >"$LOG"
declare -a PIDS=(0 0 0)
WL_PID=0
MOUNTED=0
FAILS=()
MEMBERS=$(printf '%s:'"$PORT"',' "${ADDRS[@]}")
MEMBERS=${MEMBERS%,}
T0=$SECONDS

note() {
    echo "[$((SECONDS - T0))s] $*" >>"$LOG"
    echo "disk.sh: [$((SECONDS - T0))s] $*"
}
fail() {
    FAILS+=("$*")
    note "FAIL: $*"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((WL_PID > 0)); then
        kill -KILL "$WL_PID" 2>/dev/null
        wait "$WL_PID" 2>/dev/null
    fi
    for i in 0 1 2; do
        if ((PIDS[i] > 0)); then
            kill -KILL "${PIDS[i]}" 2>/dev/null
            wait "${PIDS[i]}" 2>/dev/null
        fi
    done
    ((MOUNTED)) && umount "$WORK/data/n3" 2>/dev/null
    rm -rf "$WORK/data"
    if ((KEEP == 0 && rc == 0)) && [[ $OUT == "$WORK/out" ]]; then
        rm -rf "$WORK"
    elif [[ $OUT == "$WORK/out" ]]; then
        echo "disk.sh: artifacts kept in $OUT"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "disk.sh: interrupted" >&2; exit 2' INT TERM

ip link set lo up || { echo "disk.sh: cannot bring up lo" >&2; exit 2; }

# In the background and waited for, so a signal to this script is handled at once.
sleep_s() {
    sleep "$1" &
    wait $!
}

# ---- Nodes ---------------------------------------------------------------------------------------
mkdir -p "$WORK/data/n1" "$WORK/data/n2" "$WORK/data/n3" || exit 2
if ! mount -t tmpfs -o size=${TMPFS_MB}m tmpfs "$WORK/data/n3"; then
    echo "disk.sh: cannot mount a tmpfs on node 3's data dir" >&2
    exit 2
fi
MOUNTED=1

start_node() { # node index, failpoint commands to apply at start (optional)
    local i=$1
    echo "---- start [$((SECONDS - T0))s]" >>"$OUT/node$((i + 1)).log"
    # STRATA_FIU_FIFO: the server opens the control pipes ($WORK/fiu-PID.in/.out) that
    # fiu-ctrl talks to (like fiu-run's preload, which a sanitizer build cannot take).
    STRATA_FIU_FIFO="$WORK/fiu" STRATA_FIU_ENABLE="${2:-}" setpriv --pdeathsig KILL "$SERVER" --data-dir "$WORK/data/n$((i + 1))" \
        --listen "${ADDRS[i]}:$PORT" --bootstrap "$MEMBERS" --shards 1 \
        --election-timeout-ms 300 --heartbeat-timeout-ms 50 \
        --snapshot-threshold 2048 --snapshot-trailing 512 \
        --disk-reserve-mb "$RESERVE_MB" --disk-stall-ms "$STALL_MS" \
        >>"$OUT/node$((i + 1)).log" 2>&1 &
    PIDS[i]=$!
}

kill_node() {
    kill -KILL "${PIDS[$1]}" 2>/dev/null
    wait "${PIDS[$1]}" 2>/dev/null
    PIDS[$1]=0
}

status_of() { # cluster.status of node $1 as JSON ("" when it does not answer)
    timeout 3 "$CLI" --uri "strata://${ADDRS[$1]}:$PORT" --json cluster status 2>/dev/null
}
# jq over node $1's status; prints nothing when it does not answer.
sq() { local st; st=$(status_of "$1") && [[ -n $st ]] && jq -r "$2" <<<"$st" 2>/dev/null; }
group_field() { sq "$1" ".groups[] | select(.id == $2) | .$3"; }

# The index of the node leading group $1 (agreed by a node that leads it), -1 if none.
leader_of() {
    for i in 0 1 2; do
        ((PIDS[i] > 0)) || continue
        [[ $(group_field "$i" "$1" role) == leader ]] && { echo "$i"; return; }
    done
    echo -1
}

now_ms() { local t=${EPOCHREALTIME/./}; echo $((10#$t / 1000)); }

# Wait until the command in the other arguments succeeds: at most $1 s of wall time and
# 300 tries, polling every 200 ms. Returns 0 when it did.
wait_for() {
    local deadline=$(($(now_ms) + $1 * 1000)) n=0
    shift
    while ((n++ < 300)); do
        "$@" && return 0
        (($(now_ms) < deadline)) || return 1
        sleep_s 0.2
    done
    return 1
}

leads_nothing() { [[ $(sq "$1" '[.groups[] | select(.role == "leader")] | length') == 0 ]]; }
all_disk_errors_match() { # every group of node $1 reports an error matching $2
    local n
    n=$(status_of "$1" | jq --arg re "$2" '[.groups[] | select(.disk_error | test($re) | not)] | length' 2>/dev/null)
    [[ $n == 0 ]]
}
disk_error_of() { group_field "$1" "$2" disk_error; }
no_disk_error() { [[ $(status_of "$1" | jq '[.groups[] | select(.disk_error != "")] | length' 2>/dev/null) == 0 ]]; }
applied_at_least() { # node $1 has applied group $2 up to index $3
    local a
    a=$(group_field "$1" "$2" applied_index)
    [[ $a =~ ^[0-9]+$ ]] && ((a >= $3))
}
# Wait at most $3 s until node $1 has applied group $2 as far as its leader had committed
# when the wait began (the leader keeps committing under the workload).
wait_caught_up() {
    local target="" l
    wait_for "$3" eval 'l=$(leader_of '"$2"'); ((l >= 0)) && target=$(group_field $l '"$2"' commit_index) && [[ $target =~ ^[0-9]+$ ]]' ||
        return 1
    wait_for "$3" applied_at_least "$1" "$2" "$target"
}
alive() { ((PIDS[$1] > 0)) && kill -0 "${PIDS[$1]}" 2>/dev/null; }
up() { alive "$1" && [[ -n $(status_of "$1") ]]; }

probe() { # a write and its read back, through any node
    setpriv --pdeathsig KILL "$WORKLOAD" probe --uri "strata://$MEMBERS" --within-ms "$(($1 * 1000))" \
        >>"$OUT/probe.json" 2>>"$OUT/workload.log"
}

log_size() { wc -l <"$OUT/node$(($1 + 1)).log"; }
# How many ERROR lines of node $1's log after line $2 say $3: the clear error must be
# logged once per group and fault, not on every check.
error_lines() {
    awk -v from="$2" -v pat="$3" 'NR > from && index($0, " ERROR ") && index($0, pat) { n++ }
                                  END { print n + 0 }' "$OUT/node$(($1 + 1)).log"
}

fiu_ctl() { # node $1, remote-control command $2 (fiu-ctrl prints errors, exits 0)
    local out
    out=$(timeout 5 fiu-ctrl -f "$WORK/fiu" -c "$2" "${PIDS[$1]}" 2>&1)
    if (($? != 0)) || [[ -n $out ]]; then
        fail "fiu-ctrl '$2' on node$(($1 + 1)): ${out:-timed out}"
        return 1
    fi
    note "node$(($1 + 1)): fiu $2"
}

# The open segment of group $2 on node $1 holding the last write, and where its data ends
# (raft preallocates segments with zeros). Prints "PATH END"; nothing if none.
last_segment() {
    local best="" best_n=-1 f n end
    for f in "$WORK/data/n$(($1 + 1))/raft-$2"/open-*; do
        [[ -f $f ]] || continue
        n=${f##*/open-}
        end=$(perl -e 'open(my $f, "<", $ARGV[0]) or exit 1; binmode $f; local $/;
                       my $d = <$f>; $d =~ s/\0+\z//; print length $d' "$f") || continue
        ((end > 8 && n > best_n)) && { best="$f $end"; best_n=$n; }
    done
    [[ -n $best ]] && echo "$best"
}

# ---- The run --------------------------------------------------------------------------------------
note "seed $SEED phases '$PHASES' failpoints $FIU server $SERVER"
for i in 0 1 2; do start_node "$i"; done
wait_for 20 eval '(( $(leader_of 1) >= 0 && $(leader_of 0) >= 0 ))' ||
    { note "no leaders within 20 s"; exit 2; }
note "leaders: group 0 node$(($(leader_of 0) + 1)), group 1 node$(($(leader_of 1) + 1))"

setpriv --pdeathsig KILL "$WORKLOAD" run --uri "strata://$MEMBERS" --history "$HIST" --duration 300 \
    --threads 2 --seed "$SEED" --nodes "$MEMBERS" >"$OUT/workload.json" 2>"$OUT/workload.log" &
WL_PID=$!
sleep_s 1

phase_full() {
    local filler="$WORK/data/n3/filler" avail from
    # Node 3 leads the meta group, so the fault has a leadership to hand away.
    wait_for 5 eval '[[ $(group_field 2 0 role) == leader ]] || { timeout 3 "$CLI" --uri "strata://$MEMBERS" cluster transfer-leader 3 >/dev/null 2>&1; false; }' ||
        fail "full: node3 did not take the meta group's leadership"
    avail=$(df -B1 --output=avail "$WORK/data/n3" | tail -n 1)
    from=$(log_size 2)
    fallocate -l $((avail - 4 * 1024 * 1024)) "$filler" || { fail "full: fallocate failed"; return; }
    note "full: node3's disk filled to 4 MiB free (reserve ${RESERVE_MB} MiB)"
    wait_for 6 all_disk_errors_match 2 "^disk full on node 3 " ||
        fail "full: node3 does not report 'disk full' on every group: $(status_of 2 | jq -c '[.groups[] | .disk_error]')"
    wait_for 6 leads_nothing 2 || fail "full: node3 still leads a group"
    note "full: node3 reports: $(disk_error_of 2 0)"
    probe 10 || fail "full: no write served by the other two nodes"
    for g in 0 1; do
        local n
        n=$(error_lines 2 "$from" "group $g: disk full on node 3")
        ((n == 1)) || fail "full: node3 logged the disk-full error of group $g $n times (want once)"
    done
    # Now completely full: node 3 cannot append at all; the others go on.
    avail=$(df -B1 --output=avail "$WORK/data/n3" | tail -n 1)
    ((avail > 0)) && fallocate -l "$avail" "$filler.2"
    note "full: node3's disk completely full ($(df -B1 --output=avail "$WORK/data/n3" | tail -n 1 | tr -d ' ') bytes free)"
    sleep_s 2
    probe 10 || fail "full: no write served while node3's disk is completely full"
    rm -f "$filler" "$filler.2"
    note "full: filler removed"
    wait_for 12 no_disk_error 2 || fail "full: node3 still reports a disk fault 12 s after space returned: $(status_of 2 | jq -c '[.groups[] | .disk_error]')"
    wait_caught_up 2 1 12 || fail "full: node3 did not catch up within 12 s"
    note "full: node3 recovered and caught up (applied $(group_field 2 1 applied_index))"
    kill_node 2
    start_node 2
    note "full: node3 restarted"
    wait_for 10 up 2 && wait_caught_up 2 1 10 || fail "full: node3 did not come back after the restart"
}

# Failpoint $1 with action $2 (failinfo $3) on the leader of the data group until
# disabled: it must report "$4 on node N", hand the leadership away, and recover.
phase_eio_at() {
    local point=$1 act=$2 info=$3 expect=$4 l from what
    what="$point,failnum=$act${info:+,failinfo=$info}"
    l=$(leader_of 1)
    ((l >= 0)) || { fail "eio: no leader of group 1"; return; }
    from=$(log_size "$l")
    fiu_ctl "$l" "enable name=$what" || return
    wait_for 6 eval '[[ $(disk_error_of '"$l"' 1) == "$expect on node $((l + 1)) "* ]]' ||
        fail "eio($what): node$((l + 1)) does not report '$expect': '$(disk_error_of "$l" 1)'"
    wait_for 6 eval '(( $(leader_of 1) >= 0 && $(leader_of 1) != '"$l"' ))' ||
        fail "eio($what): node$((l + 1)) kept the leadership of group 1"
    note "eio($what): group 1 now led by node$(($(leader_of 1) + 1)); node$((l + 1)) reports: $(disk_error_of "$l" 1)"
    probe 10 || fail "eio($what): no write served while node$((l + 1))'s log writes fail"
    sleep_s 1 # the workload runs against the fault
    local n
    n=$(error_lines "$l" "$from" "group 1: $expect on node $((l + 1))")
    ((n == 1)) || fail "eio($what): node$((l + 1)) logged the fault of group 1 $n times (want once)"
    fiu_ctl "$l" "disable name=$point" || return
    wait_for 8 no_disk_error "$l" || fail "eio($what): node$((l + 1)) still reports a fault 8 s after the failpoint was disabled"
    wait_caught_up "$l" 1 10 || fail "eio($what): node$((l + 1)) did not catch up"
}

phase_eio() {
    if ((FIU == 0)); then
        note "eio: SKIPPED (server built without failpoints: cmake -DSTRATA_FIU=ON)"
        return
    fi
    # The write never reaches the disk; then it is written but its sync fails; then the
    # disk takes 5 s per write (longer than --disk-stall-ms; and than the checks below,
    # which must see one fault, not the next write's).
    phase_eio_at strata/raft/append/before 1 "" "disk error"
    phase_eio_at strata/raft/append/after 1 "" "disk error"
    phase_eio_at strata/raft/append/before 4 5000 "disk stalled"
}

# A follower of group 1 other than the nodes in $@ (-1 if none).
follower_except() {
    local l
    l=$(leader_of 1)
    for i in 0 1 2; do
        ((i != l)) || continue
        [[ " $* " == *" $i "* ]] && continue
        echo "$i"
        return
    done
    echo -1
}

# Kill node $1, damage the tail of its last open segment of group 1 ($2: garble|cut),
# restart it and wait until it has caught up.
torn_restart() {
    local f=$1 how=$2 seg="" end tries=0
    # A snapshot closes the open segment: right after one, none may hold data yet.
    while ((tries++ < 3)); do
        kill_node "$f"
        read -r seg end < <(last_segment "$f" 1)
        [[ -n ${seg:-} ]] && break
        note "torn($how): node$((f + 1)) has no open segment with data yet; again in 1 s"
        start_node "$f"
        wait_for 10 up "$f"
        sleep_s 1
    done
    if [[ -z ${seg:-} ]]; then
        fail "torn($how): node$((f + 1)) had no open segment with data in 3 tries"
        start_node "$f"
        return
    fi
    if [[ $how == garble ]]; then
        # 48 bytes of 0xff over the end of the last batch: its checksum fails.
        perl -e 'print "\xff" x 48' | dd of="$seg" bs=1 seek=$((end - 48)) conv=notrunc status=none
        note "torn(garble): node$((f + 1)) killed, bytes $((end - 48))..$end of ${seg##*/} garbled"
    else
        # The file ends in the middle of the last batch.
        truncate -s $((end - 20)) "$seg"
        note "torn(cut): node$((f + 1)) killed, ${seg##*/} cut to $((end - 20)) bytes"
    fi
    start_node "$f"
    wait_for 10 up "$f" || { fail "torn($how): node$((f + 1)) did not start: $(tail -n 3 "$OUT/node$((f + 1)).log")"; return; }
    wait_caught_up "$f" 1 20 || fail "torn($how): node$((f + 1)) did not catch up"
    note "torn($how): node$((f + 1)) restarted and caught up (applied $(group_field "$f" 1 applied_index))"
}

phase_torn() {
    local f1 f2 f3
    f1=$(follower_except)
    ((f1 >= 0)) || { fail "torn: no follower"; return; }
    torn_restart "$f1" garble
    f2=$(follower_except "$f1")
    ((f2 >= 0)) || f2=$f1
    torn_restart "$f2" cut
    grep -q "was cut to" "$OUT/node$((f2 + 1)).log" || fail "torn(cut): node$((f2 + 1)) did not repair the cut segment"
    if ((FIU)); then
        f3=$(follower_except)
        ((f3 >= 0)) || { fail "torn: no follower"; return; }
        fiu_ctl "$f3" "enable name=strata/raft/append/after,failnum=5" || return
        if wait_for 8 eval '! alive '"$f3"; then
            wait "${PIDS[f3]}" 2>/dev/null
            PIDS[f3]=0
            grep -q "tore the last write" "$OUT/node$((f3 + 1)).log" ||
                fail "torn(failpoint): node$((f3 + 1)) died without tearing its write"
            start_node "$f3"
            note "torn(failpoint): node$((f3 + 1)) tore its last write and crashed; restarted"
            wait_for 10 up "$f3" && wait_caught_up "$f3" 1 20 ||
                fail "torn(failpoint): node$((f3 + 1)) did not come back"
        else
            fail "torn(failpoint): node$((f3 + 1)) did not tear a write within 8 s"
            fiu_ctl "$f3" "disable name=strata/raft/append/after"
        fi
    fi
}

# A follower that fell behind the leader's snapshots restarts and its snapshot install
# fails: raft 0.22.1 then waits for that install forever, so the watchdog must say
# "restart the node" (and it stays so after the failpoint is gone); the restart heals.
phase_install() {
    if ((FIU == 0)); then
        note "install: SKIPPED (server built without failpoints)"
        return
    fi
    local f target a
    f=$(follower_except)
    ((f >= 0)) || { fail "install: no follower"; return; }
    a=$(group_field "$f" 1 applied_index)
    kill_node "$f"
    # Far enough behind that only a snapshot can catch it up (threshold 2048, trailing 512).
    target=$((${a:-0} + 3000))
    wait_for 15 eval 'l=$(leader_of 1); ((l >= 0)) && applied_at_least $l 1 '"$target" ||
        { fail "install: the leader did not get $target entries ahead"; start_node "$f"; return; }
    start_node "$f" "enable name=strata/raft/snapshot/install/before,failnum=1"
    note "install: node$((f + 1)) restarted behind the leader's snapshot, its install failing"
    wait_for 8 eval '[[ $(disk_error_of '"$f"' 1) == "snapshot install failed on node $((f + 1)) "*"restart the node" ]]' ||
        fail "install: node$((f + 1)) does not report the failed install: '$(disk_error_of "$f" 1)'"
    fiu_ctl "$f" "disable name=strata/raft/snapshot/install/before"
    sleep_s 1
    [[ $(disk_error_of "$f" 1) == "snapshot install failed"* ]] ||
        fail "install: node$((f + 1))'s fault cleared without a restart: raft waits for the failed install"
    note "install: node$((f + 1)) reports: $(disk_error_of "$f" 1)"
    kill_node "$f"
    start_node "$f"
    wait_for 10 up "$f" && wait_caught_up "$f" 1 15 && no_disk_error "$f" ||
        fail "install: node$((f + 1)) did not catch up after the restart"
    note "install: node$((f + 1)) restarted and caught up (applied $(group_field "$f" 1 applied_index))"
}

# Crashes at the points with no I/O to fail (failnum 3: SIGKILL): before and after
# applying an entry, before a write is answered. Each node restarts and catches up; the
# final checks find every acknowledged write.
phase_crash() {
    if ((FIU == 0)); then
        note "crash: SKIPPED (server built without failpoints)"
        return
    fi
    local point n
    for point in strata/fsm/apply/before strata/fsm/apply/after strata/reply/before; do
        n=$(leader_of 1)
        [[ $point == strata/fsm/apply/after ]] && n=$(follower_except)
        ((n >= 0)) || { fail "crash($point): no node to crash"; continue; }
        fiu_ctl "$n" "enable name=$point,failnum=3" || continue
        if wait_for 8 eval '! alive '"$n"; then
            wait "${PIDS[n]}" 2>/dev/null
            PIDS[n]=0
            grep -q "failpoint $point: crash" "$OUT/node$((n + 1)).log" ||
                fail "crash($point): node$((n + 1)) died but not at the failpoint"
            start_node "$n"
            wait_for 10 up "$n" && wait_caught_up "$n" 1 20 ||
                fail "crash($point): node$((n + 1)) did not come back"
            note "crash($point): node$((n + 1)) crashed there, restarted and caught up"
        else
            fail "crash($point): node$((n + 1)) did not reach the failpoint within 8 s"
            fiu_ctl "$n" "disable name=$point"
        fi
    done
}

# The node's own snapshot cannot be written (EIO at strata/raft/snapshot/save/before):
# reported as a disk error until a later write succeeds after the point is disabled.
phase_save() {
    if ((FIU == 0)); then
        note "save: SKIPPED (server built without failpoints)"
        return
    fi
    local n
    n=$(follower_except)
    ((n >= 0)) || { fail "save: no follower"; return; }
    fiu_ctl "$n" "enable name=strata/raft/snapshot/save/before,failnum=1" || return
    wait_for 10 eval '[[ $(disk_error_of '"$n"' 1) == *"snapshot write failed"* ]]' ||
        fail "save: node$((n + 1)) does not report its failed snapshot: '$(disk_error_of "$n" 1)'"
    note "save: node$((n + 1)) reports: $(disk_error_of "$n" 1)"
    fiu_ctl "$n" "disable name=strata/raft/snapshot/save/before"
    wait_for 8 no_disk_error "$n" || fail "save: node$((n + 1)) still reports a fault 8 s after"
}

for p in $PHASES; do
    "phase_$p"
    for i in 0 1 2; do
        if ((PIDS[i] > 0)) && ! kill -0 "${PIDS[i]}" 2>/dev/null; then
            wait "${PIDS[i]}" 2>/dev/null
            fail "$p: node$((i + 1)) died by itself (wait status $?); see node$((i + 1)).log"
            PIDS[i]=0
            start_node "$i"
        fi
    done
done

# ---- Checks ----------------------------------------------------------------------------------------
sleep_s 1
kill -TERM "$WL_PID"
if ! wait_for 15 eval '! kill -0 '"$WL_PID"' 2>/dev/null'; then
    fail "workload did not stop within 15 s of SIGTERM"
    kill -KILL "$WL_PID"
fi
wait "$WL_PID"
rc=$?
WL_PID=0
note "workload exit $rc: $(cat "$OUT/workload.json" 2>/dev/null)"
((rc == 0)) || fail "workload: an operation got an error a correct server never returns, or it failed (workload.log)"

setpriv --pdeathsig KILL "$WORKLOAD" final --uri "strata://$MEMBERS" --history "$HIST" --within-ms 15000 \
    >"$OUT/final.json" 2>>"$OUT/workload.log" ||
    fail "final reads: an acknowledged write is missing or reads failed (workload.log)"
setpriv --pdeathsig KILL "$WORKLOAD" compare --nodes "$MEMBERS" --history "$HIST" --within-ms 15000 \
    >"$OUT/compare.json" 2>>"$OUT/workload.log" ||
    fail "replicas differ or did not converge (workload.log)"
note "compare: $(cat "$OUT/compare.json" 2>/dev/null)"
if [[ $CHECKER != none ]]; then
    timeout 300 "$CHECKER" "$HIST" >"$OUT/checker.txt" 2>&1
    rc=$?
    note "checker exit $rc: $(tail -n 1 "$OUT/checker.txt")"
    ((rc == 0)) || fail "checker: the history is not linearizable or undecided (checker.txt)"
fi

for i in 0 1 2; do ((PIDS[i] > 0)) && kill -TERM "${PIDS[i]}"; done
for i in 0 1 2; do
    ((PIDS[i] > 0)) || continue
    if wait_for 10 eval '! kill -0 '"${PIDS[i]}"' 2>/dev/null'; then
        wait "${PIDS[i]}"
        st=$?
        ((st == 0)) || fail "node$((i + 1)) exited $st on SIGTERM"
    else
        fail "node$((i + 1)) did not exit within 10 s of SIGTERM"
    fi
    PIDS[i]=0
    if grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$OUT/node$((i + 1)).log"; then
        fail "node$((i + 1)) log holds a sanitizer report"
    fi
    # The wrapper's own account of requests it still held at close.
    if grep -q 'disk requests still pending' "$OUT/node$((i + 1)).log"; then
        fail "node$((i + 1)): raft_uv closed with disk requests still pending"
    fi
done

if ((${#FAILS[@]} == 0)); then
    note "PASS in $((SECONDS - T0)) s"
    exit 0
fi
note "FAILED: ${#FAILS[@]} check(s)"
exit 1
