#!/usr/bin/env bash
# Smoke test of a built StrataDB image: the default command starts a single-node cluster
# as uid 10001 on a read-only root with a fresh volume; the CLI in the image writes and
# reads; /healthz and /readyz answer; SIGTERM stops it with exit 0; a new container on the
# same volume still has the data.
#
# usage: deploy/docker/smoke-test.sh IMAGE
# Environment: ENGINE (docker or podman, default: the first found), RUN_FLAGS (extra flags
# for `run`, e.g. a runtime or ulimits the host needs).
#
# The container has no network (--network none): the checks run inside it with exec, so
# nothing listens outside. Everything it creates (containers, volume) is removed on exit.
set -euo pipefail

image=${1:?usage: smoke-test.sh IMAGE}
engine=${ENGINE:-$(command -v docker >/dev/null && docker info >/dev/null 2>&1 && echo docker || echo podman)}
read -r -a run_flags <<<"${RUN_FLAGS:-}"
tag=strata-smoke-$$
vol=$tag-data
passed=0 failed=0
cids=()

cleanup() {
    local c
    for c in "${cids[@]}"; do "$engine" rm -f "$c" >/dev/null 2>&1 || true; done
    "$engine" volume rm -f "$vol" >/dev/null 2>&1 || true
    echo "$passed passed, $failed failed"
}
trap cleanup EXIT

check() { # check "what" command...
    local what=$1
    shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $what"; else failed=$((failed + 1)); echo "FAIL $what"; fi
}

in_c() { "$engine" exec "$1" "${@:2}"; } # a command inside container $1 (as its user)
cli() { in_c "$1" strata --uri strata://127.0.0.1:9876 "${@:2}"; }

wait_leader() { # wait_leader CID: bounded poll of `cluster status`
    for _ in $(seq 1 60); do
        cli "$1" cluster status 2>/dev/null | grep -q '^leader ' && return 0
        sleep 0.5
    done
    "$engine" logs "$1" 2>&1 | tail -n 20 >&2
    return 1
}

probe() { # probe CID PATH: HTTP status code of 127.0.0.1:9877/PATH, via bash's /dev/tcp
    in_c "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9877 && printf "GET %s HTTP/1.0\r\n\r\n" "$0" >&3 &&
        head -n 1 <&3 | cut -d" " -f2' "$2"
}

start() { # start: a container from the image's default command; prints its id
    "$engine" run -d --network none --read-only -v "$vol:/var/lib/stratadb" \
        "${run_flags[@]}" "$image"
}

"$engine" volume create "$vol" >/dev/null
c1=$(start)
cids+=("$c1")
check "server starts and elects itself (single node)" wait_leader "$c1"
check "runs as uid 10001" test "$(in_c "$c1" id -u)" = 10001
check "kv put with the image's CLI" cli "$c1" kv put smoke '"yes"'
check "kv get" test "$(cli "$c1" kv get smoke)" = '"yes"'
check "/healthz 200" test "$(probe "$c1" /healthz)" = 200
check "/readyz 200" test "$(probe "$c1" /readyz)" = 200
"$engine" stop -t 30 "$c1" >/dev/null
check "SIGTERM: exit 0" test "$("$engine" inspect -f '{{.State.ExitCode}}' "$c1")" = 0

c2=$(start)
cids+=("$c2")
check "a new container on the same volume starts" wait_leader "$c2"
check "the data survived" test "$(cli "$c2" kv get smoke)" = '"yes"'
"$engine" stop -t 30 "$c2" >/dev/null
check "SIGTERM: exit 0 (second container)" test "$("$engine" inspect -f '{{.State.ExitCode}}' "$c2")" = 0
((failed == 0))
