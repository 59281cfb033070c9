#!/usr/bin/env bash
# "Pods on one machine": runs the StatefulSet of deploy/k8s as the kubelet would, without
# Kubernetes, and checks that the cluster forms, serves, survives a pod restart on its
# volume, takes a joining pod (scale-out) and lets it go (scale-in), and that the probes
# answer as the manifests expect.
#
# usage: pods.sh K8S_DIR PATH/TO/stratadb-server PATH/TO/strata   (as root)
#
# Layout. The whole test runs in a new network, mount and PID namespace (unshare): only
# loopback, each pod on its own address 127.0.0.(10+ordinal); a private hosts file,
# bind-mounted over /etc/hosts, resolves the headless Service's pod names
# (stratadb-N.stratadb-peers.NS.svc.cluster.local) as cluster DNS would. Each pod then
# gets its own mount namespace with a container-like root: a read-only tmpfs holding the
# host's /usr read-only, the two binaries at /usr/local/bin (where the image has them),
# /etc with the hosts file and the image's passwd entry, /proc, /dev nodes, and the pod's
# volumes at their mountPaths (its claim data-stratadb-N, a directory under the test's
# temp dir that outlives the pod; the Secret's files). The container's command, args and
# environment come from the StatefulSet (podspec.mjs), run under chroot + setpriv with
# the pod's runAsUser/runAsGroup/fsGroup, no new privileges and no capabilities.
#
# Cleanup: the namespaces die with their processes. Every pod is tracked by PID and killed
# on any exit path; the inner shell is PID 1 of the PID namespace, so if it dies every pod
# dies with it, and the outer shell's death kills it (pdeathsig). The temp dir is removed
# (kept with STRATA_DEPLOY_KEEP=1).
#
# STRATA_POD_IMAGE_ROOT=DIR runs the pods on a built image's filesystem instead (e.g. the
# path `podman image mount IMAGE` prints), under a private overlay: the image's binaries,
# libraries and user (the CLI argument is still the test's own client).
set -euo pipefail

NS=strata-test            # the Kubernetes namespace the pods believe they are in
STS=stratadb              # the StatefulSet
FORM_TIMEOUT=60           # seconds for a cluster to form / a member to catch up
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"

log() { printf 'pods: %s\n' "$*" >&2; }
die() { printf 'pods: ERROR: %s\n' "$*" >&2; exit 1; }

# ---- Pod mode: inside a pod's own mount namespace, build its root and exec the container.
if [[ ${1:-} == --pod ]]; then
    spec=$2 root=$3 server=$4 cli=$5 podtmp=$6
    j() { jq -r "$1" "$spec"; }
    image=${STRATA_POD_IMAGE_ROOT:-}
    if [[ -n $image ]]; then
        # The image's own filesystem (e.g. `podman image mount`), under a private overlay so
        # that mount points never touch the image.
        ovl="$podtmp/overlay-$(j .pod)"
        rm -rf "$ovl"
        mkdir -p "$ovl/upper" "$ovl/work"
        mount -t overlay overlay -o "lowerdir=$image,upperdir=$ovl/upper,workdir=$ovl/work" "$root"
        mount -t tmpfs -o mode=0755 tmpfs "$root/dev"
    else
        mount -t tmpfs -o mode=0755 tmpfs "$root"
        # Debian's merged /usr: /bin, /lib... are links into /usr, as in the image.
        for d in bin sbin lib lib64 lib32 libx32; do
            if [[ -L /$d ]]; then ln -s "$(readlink "/$d")" "$root/$d"
            elif [[ -d /$d ]]; then mkdir "$root/$d"; mount --rbind "/$d" "$root/$d"; mount -o remount,bind,ro "$root/$d"; fi
        done
        mkdir -p "$root/usr" "$root/etc" "$root/proc" "$root/dev" "$root/tmp" "$root/var/lib" "$root/run"
        mount --rbind /usr "$root/usr"
        mount -o remount,bind,ro "$root/usr"
        # The image's /usr/local/bin: just the server and the CLI.
        mount -t tmpfs -o mode=0755 tmpfs "$root/usr/local/bin"
        touch "$root/usr/local/bin/stratadb-server" "$root/usr/local/bin/strata"
        mount --bind "$server" "$root/usr/local/bin/stratadb-server"
        mount --bind "$cli" "$root/usr/local/bin/strata"
        mount -o remount,ro "$root/usr/local/bin"
        for f in nsswitch.conf host.conf gai.conf ld.so.cache; do
            [[ -f /etc/$f ]] && cp "/etc/$f" "$root/etc/$f"
        done
        touch "$root/etc/hosts"
    fi
    mount --bind /etc/hosts "$root/etc/hosts" # the private hosts file (cluster DNS)
    uid=$(j '.runAsUser // 0') gid=$(j '.runAsGroup // 0') fsg=$(j '.fsGroup // empty')
    if [[ -z $image ]]; then # the image's user, as deploy/docker/Dockerfile creates it
        printf 'root:x:0:0:root:/root:/bin/sh\nstratadb:x:%s:%s::/var/lib/stratadb:/usr/sbin/nologin\n' "$uid" "$gid" >"$root/etc/passwd"
        printf 'root:x:0:\nstratadb:x:%s:\n' "$gid" >"$root/etc/group"
    fi
    for d in null zero random urandom; do
        touch "$root/dev/$d"
        mount --bind "/dev/$d" "$root/dev/$d"
    done
    mount -t proc proc "$root/proc"
    # Volumes, as the kubelet mounts them (fsGroup: group-owned, setgid, group-writable).
    n=$(jq '.mounts | length' "$spec")
    for ((i = 0; i < n; i++)); do
        path=$(j ".mounts[$i].path") kind=$(j ".mounts[$i].kind")
        case $kind in
        claim)
            src="$podtmp/volumes/$(j ".mounts[$i].claim")"
            if [[ ! -d $src ]]; then
                mkdir -p "$src"
                [[ -n $fsg ]] && chgrp "$fsg" "$src" && chmod 2775 "$src"
            fi
            ;;
        files)
            src="$podtmp/files-$(j .pod)-$i"
            rm -rf "$src"
            mkdir -p "$src"
            mode=$(printf '%o' "$(j ".mounts[$i].mode")")
            while IFS= read -r -d '' name; do
                jq -j --arg k "$name" '.mounts['"$i"'].files[$k]' "$spec" >"$src/$name"
                chmod "$mode" "$src/$name"
                [[ -n $fsg ]] && chgrp "$fsg" "$src/$name"
            done < <(jq -j ".mounts[$i].files | keys[] | . + \"\u0000\"" "$spec")
            ;;
        emptyDir)
            src="$podtmp/empty-$(j .pod)-$i"
            mkdir -p "$src"
            [[ -n $fsg ]] && chgrp "$fsg" "$src" && chmod 2777 "$src"
            ;;
        *) die "mount kind $kind not emulated" ;;
        esac
        mkdir -p "$root$path"
        mount --bind "$src" "$root$path"
        [[ $(j ".mounts[$i].readOnly") == true ]] && mount -o remount,bind,ro "$root$path"
    done
    [[ $(j .readOnlyRoot) == true ]] && mount -o remount,ro "$root"
    mapfile -d '' envs < <(jq -j '.env | to_entries[] | "\(.key)=\(.value)\u0000"' "$spec")
    mapfile -d '' argv < <(jq -j '.argv[] | . + "\u0000"' "$spec")
    groups=$gid${fsg:+,$fsg}
    # exec keeps this PID: the harness's PID for the pod becomes the container's process.
    exec chroot "$root" setpriv --reuid "$uid" --regid "$gid" --groups "$groups" \
        --no-new-privs --bounding-set -all --inh-caps -all -- env -i "${envs[@]}" "${argv[@]}"
fi

# ---- Outer mode: check the tools, create the namespaces, run the inner mode in them. -----
if [[ ${1:-} != --inner ]]; then
    k8s=${1:?usage: pods.sh K8S_DIR PATH/TO/stratadb-server PATH/TO/strata}
    server=${2:?usage: pods.sh K8S_DIR PATH/TO/stratadb-server PATH/TO/strata}
    cli=${3:?usage: pods.sh K8S_DIR PATH/TO/stratadb-server PATH/TO/strata}
    ((EUID == 0)) || die "needs root (namespaces, mounts, chroot)"
    for t in unshare nsenter setpriv chroot jq node curl ip; do
        command -v "$t" >/dev/null || die "$t not found (scripts/setup-deps installs the test tools)"
    done
    [[ -x $server && -x $cli ]] || die "$server or $cli is not an executable"
    tmp=$(mktemp -d -t strata-pods.XXXXXX)
    chmod 0755 "$tmp"
    inner=""
    cleanup() {
        local rc=$?
        if [[ -n $inner ]] && kill -0 "$inner" 2>/dev/null; then
            kill -TERM "$inner" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$inner" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$inner" 2>/dev/null || true
        fi
        if [[ -n ${STRATA_DEPLOY_KEEP:-} ]]; then log "kept $tmp"; else rm -rf "$tmp"; fi
        exit "$rc"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    # pdeathsig: unshare dies with this shell; --kill-child: the inner shell dies with
    # unshare; the inner shell is PID 1 of the new PID namespace, so the pods die with it.
    setpriv --pdeathsig KILL unshare --net --mount --pid --fork --kill-child --mount-proc \
        --propagation private -- bash "$self" --inner "$tmp" "$(cd "$k8s" && pwd)" \
        "$(readlink -f "$server")" "$(readlink -f "$cli")" &
    inner=$!
    set +e
    wait "$inner"
    rc=$?
    set -e
    inner=""
    exit "$rc"
fi

# ---- Inner mode: PID 1 of the test's namespaces. -----------------------------------------
tmp=$2 k8s=$3 server=$4 cli=$5
declare -A pid=()
passed=0 failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
check() { # check "what" command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
require() { # like check, but the steps after it make no sense without it: stop here
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what (required: stopping)"; exit 1; fi
}

stop_all_now() {
    local o
    for o in "${!pid[@]}"; do kill -KILL "${pid[$o]}" 2>/dev/null || true; done
    for o in "${!pid[@]}"; do wait "${pid[$o]}" 2>/dev/null || true; done
}
finish() {
    local rc=$?
    stop_all_now
    if ((failed > 0 || rc != 0)); then
        for f in "$tmp"/stratadb-*.log; do
            [[ -f $f ]] || continue
            echo "---- last lines of $(basename "$f")"
            tail -n 25 "$f"
        done
    fi
    echo "$passed passed, $failed failed"
    ((failed == 0 && rc == 0)) || exit 1
}
trap finish EXIT
trap 'exit 130' INT TERM

ip link set lo up

ip_of() { echo "127.0.0.$((10 + $1))"; }
fqdn() { echo "$STS-$1.$STS-peers.$NS.svc.cluster.local"; }

# Cluster DNS for the headless Service: every pod name the test may start.
{
    echo "127.0.0.1 localhost"
    for o in 0 1 2 3; do echo "$(ip_of "$o") $(fqdn "$o") $STS-$o.$STS-peers.$NS.svc $STS-$o"; done
} >"$tmp/hosts"
mount --bind "$tmp/hosts" /etc/hosts
require "pod names resolve through the private hosts file" \
    test "$(getent hosts "$(fqdn 1)" | awk '{print $1}')" = "$(ip_of 1)"

# The container specs, as the kubelet would build them from the manifests.
for o in 0 1 2 3; do
    node "$here/podspec.mjs" "$k8s" "$STS" "$o" "$(ip_of "$o")" "$NS" >"$tmp/pod-$o.json" ||
        die "podspec for pod $o failed"
done
replicas=$(jq .replicas "$tmp/pod-0.json")
initial=$(jq -r '.env.STRATA_INITIAL_MEMBERS' "$tmp/pod-0.json")
check "the StatefulSet runs 3 replicas and 3 initial members" test "$replicas/$initial" = 3/3
strata_port=$(jq .ports.strata "$tmp/pod-0.json")
grace=$(jq .grace "$tmp/pod-0.json")
# A joining pod authenticates with the first key of the Secret's file; so does the test.
key=$(jq -r '.mounts[] | select(.kind == "files") | .files["api-keys"]' "$tmp/pod-0.json" |
    awk '!/^[[:space:]]*(#|$)/{print $1; exit}')
[[ -n $key ]] || die "no API key in the Secret"

# A server without --http (the HTTP endpoint not merged yet): the pods run it through a
# wrapper that drops that one flag, and the probe checks are skipped, loudly.
server_help=("$server" --help)
if [[ -n ${STRATA_POD_IMAGE_ROOT:-} ]]; then
    log "pods run on the image filesystem $STRATA_POD_IMAGE_ROOT"
    server_help=(chroot "$STRATA_POD_IMAGE_ROOT" /usr/local/bin/stratadb-server --help)
fi
"${server_help[@]}" 2>&1 | grep -q -- '--http' ||
    die "this stratadb-server has no --http, which the StatefulSet's command passes"

start_pod() { # start_pod ORDINAL
    local o=$1 root="$tmp/root-$1"
    mkdir -p "$root"
    unshare --mount --propagation private -- bash "$self" --pod "$tmp/pod-$o.json" "$root" \
        "$server" "$cli" "$tmp" >>"$tmp/$STS-$o.log" 2>&1 &
    pid[$o]=$!
    log "started pod $STS-$o (pid ${pid[$o]}, $(ip_of "$o"))"
}

# Graceful stop as the kubelet does it: preStop in the container, then SIGTERM, SIGKILL
# after the grace period. Sets stop_rc to the container's exit status.
stop_pod() { # stop_pod ORDINAL
    local o=$1 p=${pid[$1]} spec="$tmp/pod-$1.json" t0=$SECONDS
    mapfile -d '' prestop < <(jq -j '(.preStop // [])[] | . + "\u0000"' "$spec")
    if ((${#prestop[@]})); then
        local uid gid
        uid=$(jq '.runAsUser // 0' "$spec") gid=$(jq '.runAsGroup // 0' "$spec")
        timeout "$grace" nsenter --target "$p" --mount --root --wd -- setpriv --reuid "$uid" \
            --regid "$gid" --clear-groups --no-new-privs -- "${prestop[@]}" ||
            fail "preStop of pod $o failed"
    fi
    kill -TERM "$p" 2>/dev/null || true
    local left=$((grace - (SECONDS - t0)))
    for _ in $(seq 1 $((left * 10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    set +e
    wait "$p"
    stop_rc=$?
    set -e
    unset "pid[$o]"
    log "stopped pod $STS-$o: exit $stop_rc after $((SECONDS - t0)) s"
}

cli_at() { # cli_at ORDINAL ARGS... : the CLI against one pod's advertised address
    local o=$1
    shift
    timeout 20 "$cli" --uri "strata://$key@$(fqdn "$o"):$strata_port" "$@"
}
status_of() { cli_at "$1" --json cluster status 2>/dev/null; }
remove_node() { # remove_node ORDINAL ID: drains first (replicas are copied): give it time
    # (60 s was not always enough while other suites loaded the machine); on failure show
    # what the rebalancer was doing.
    timeout 170 "$cli" --uri "strata://$key@$(fqdn "$1"):$strata_port" cluster remove-node \
        "$2" 150000 && return 0
    grep -h "rebalance:" "$tmp"/*.log | tail -20 >&2
    return 1
}

# Wait until pod ORDINAL sees a leader and exactly the voters VOTERS (e.g. "1,2,3").
wait_members() { # wait_members ORDINAL VOTERS
    local deadline=$((SECONDS + FORM_TIMEOUT)) s
    while ((SECONDS < deadline)); do
        if s=$(status_of "$1") &&
            [[ $(jq -r '[.members[] | select(.voter) | .id] | sort | map(tostring) | join(",")' <<<"$s") == "$2" ]] &&
            [[ $(jq -r '[.members[] | select(.voter | not)] | length' <<<"$s") == 0 ]] &&
            [[ $(jq -r '.leader_id // 0' <<<"$s") != 0 ]]; then
            return 0
        fi
        sleep 0.5
    done
    echo "pod $1 status: ${s:-none}" >&2
    return 1
}

http_code() { # http_code ORDINAL PROBE: the probe's HTTP status, 000 for no answer
    local spec="$tmp/pod-$1.json" path port
    path=$(jq -r ".probes.$2.path" "$spec") port=$(jq -r ".probes.$2.port" "$spec")
    curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$(ip_of "$1"):$port$path" || true
}
wait_log() { # wait_log ORDINAL TEXT: the joiner logs after the leader already shows it
    local deadline=$((SECONDS + FORM_TIMEOUT))
    while ((SECONDS < deadline)); do
        grep -q "$2" "$tmp/$STS-$1.log" && return 0
        sleep 0.2
    done
    return 1
}
wait_http() { # wait_http ORDINAL PROBE CODE
    local deadline=$((SECONDS + FORM_TIMEOUT)) c=""
    while ((SECONDS < deadline)); do
        c=$(http_code "$1" "$2")
        [[ $c == "$3" ]] && return 0
        sleep 0.5
    done
    echo "pod $1 $2 probe: got $c, want $3" >&2
    return 1
}

# ---- 1. A new cluster: pod 0 alone cannot form it (safe bootstrap) and is not ready. -----
start_pod 0
check "pod 0 alone: /healthz answers 200 (live)" wait_http 0 liveness 200
code=$(http_code 0 readiness)
check "pod 0 alone: /readyz is not 200 while no majority of initial members answered (got $code)" \
    test "$code" != 200 -a "$code" != 000
start_pod 1
start_pod 2
require "pods 0-2 form a cluster of voters 1,2,3" wait_members 0 1,2,3
check "pod 2 sees the same members" wait_members 2 1,2,3
check "pod 0 advertises its stable DNS name" \
    test "$(status_of 0 | jq -r .address)" = "$(fqdn 0):$strata_port"
for o in 0 1 2; do
    check "pod $o: /readyz 200 once the cluster formed" wait_http "$o" readiness 200
    check "pod $o: /healthz 200" wait_http "$o" liveness 200
done

# ---- 2. It serves: writes through every pod (followers forward by DNS name), reads back. -
for o in 0 1 2; do
    check "kv put through pod $o" cli_at "$o" kv put "k8s-$o" "\"v$o\""
done
for o in 0 1 2; do
    check "kv get through pod $(((o + 1) % 3)) sees pod $o's write" \
        test "$(cli_at $(((o + 1) % 3)) kv get "k8s-$o")" = '"v'$o'"'
done

# ---- 3. Pod 1 restarts on its volume (same command line). ----------------------------
ident_before=$(cat "$tmp/volumes/data-$STS-1/data/node")
stop_pod 1
check "pod 1 exits 0 on preStop + SIGTERM" test "$stop_rc" = 0
check "a write while pod 1 is down" cli_at 0 kv put during-restart '"kept"'
target=$(status_of 0 | jq .commit_index)
start_pod 1
check "restarted pod 1 keeps its identity ($ident_before)" \
    test "$(cat "$tmp/volumes/data-$STS-1/data/node")" = "$ident_before"
check "restarted pod 1 did not bootstrap again (one 'new data dir' line in its log)" \
    test "$(grep -c 'new data dir' "$tmp/$STS-1.log")" = 1
caught_up() {
    local deadline=$((SECONDS + FORM_TIMEOUT))
    while ((SECONDS < deadline)); do
        (($(status_of 1 | jq '.applied_index // 0') >= target)) && return 0
        sleep 0.5
    done
    return 1
}
require "restarted pod 1 applies the write it missed (index $target)" caught_up
check "cluster still 1,2,3 after the restart" wait_members 1 1,2,3
check "kv get through restarted pod 1" test "$(cli_at 1 kv get during-restart)" = '"kept"'
check "restarted pod 1: /readyz 200" wait_http 1 readiness 200

# ---- 4. Scale-out: pod 3 (ordinal >= initial members) joins. -------------------------
start_pod 3
require "pod 3 joins: voters 1,2,3,4" wait_members 0 1,2,3,4
check "pod 3 sees the 4 voters" wait_members 3 1,2,3,4
check "pod 3 joined (log)" wait_log 3 'joined the cluster as node 4'
check "kv get through pod 3" test "$(cli_at 3 kv get k8s-0)" = '"v0"'
check "kv put through pod 3" cli_at 3 kv put from-pod-3 '"4"'
check "pod 3: /readyz 200 after joining" wait_http 3 readiness 200
check "pod 3: /healthz 200" wait_http 3 liveness 200

# ---- 5. Scale-in as documented: remove the member, then stop the pod. -----------------
check "strata cluster remove-node 4" remove_node 0 4
require "voters back to 1,2,3" wait_members 0 1,2,3
stop_pod 3
check "pod 3 exits 0 after removal" test "$stop_rc" = 0
check "kv get after scale-in" test "$(cli_at 2 kv get from-pod-3)" = '"4"'

# ---- 6. Lost volume (README.md): pod 2 refuses, is removed, and joins again. -----------
stop_pod 2
check "pod 2 exits 0 before its volume is lost" test "$stop_rc" = 0
rm -rf "$tmp/volumes/data-$STS-2" # the claim is gone; a new, empty one is provisioned
start_pod 2
wait_exit() { # wait_exit ORDINAL SECONDS: the pod ends by itself; sets exit_rc
    local o=$1 p=${pid[$1]}
    for _ in $(seq 1 $(($2 * 10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && return 1
    set +e
    wait "$p"
    exit_rc=$?
    set -e
    unset "pid[$o]"
}
require "pod 2 on an empty volume stops by itself (safe bootstrap)" wait_exit 2 30
check "... with exit 2 (CrashLoopBackOff on Kubernetes)" test "$exit_rc" = 2
check "... and says to remove node 3" grep -q 'remove-node 3' "$tmp/$STS-2.log"
check "strata cluster remove-node 3" remove_node 0 3
require "voters 1,2" wait_members 0 1,2
# kubectl patch configmap stratadb-config ... STRATA_INITIAL_CLUSTER_STATE=existing
node "$here/podspec.mjs" "$k8s" "$STS" 2 "$(ip_of 2)" "$NS" \
    stratadb-config STRATA_INITIAL_CLUSTER_STATE=existing >"$tmp/pod-2.json"
start_pod 2
require "pod 2 joins again as node 3: voters 1,2,3" wait_members 0 1,2,3
check "pod 2 joined (log)" wait_log 2 'joined the cluster as node 3'
check "kv get through re-added pod 2" test "$(cli_at 2 kv get during-restart)" = '"kept"'

# ---- 7. Every pod stops cleanly. -----------------------------------------------------
for o in 0 1 2; do
    stop_pod "$o"
    check "pod $o exits 0 on preStop + SIGTERM" test "$stop_rc" = 0
done
