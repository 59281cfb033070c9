#!/usr/bin/env bash
# End-to-end test of the strata CLI: one-shot exit codes and piped REPL sessions over every
# command group, comparing each command's output lines with the expected ones.
#
# usage: test_cli.sh PATH/TO/strata
#
# A REPL session runs the binary with stdin/stdout on FIFOs (stderr merged into stdout), so
# each command's output is read and checked before the next is sent, and values printed
# by one command (timestamps, counters) can be used in later ones. `t CMD LINE...` sends
# CMD and expects exactly these output lines; a LINE starting with "~" is a bash glob
# pattern (escape a literal [ as \[). Timestamps are normalized to T before comparing
# (ts=T, "ts":T). The first mismatch in a session stops that session; every session runs.
set -euo pipefail

STRATA=${1:?usage: test_cli.sh PATH/TO/strata}
[[ -x $STRATA ]] || { echo "test_cli: $STRATA is not an executable" >&2; exit 2; }

READ_TIMEOUT=10 # seconds to wait for one output line
SESSION_TIMEOUT=60

tmp=$(mktemp -d)
pid=""
cleanup() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

failed=()     # names of failed checks
session=""    # current session name
broken=0      # 1 once the current session has mismatched
last_cmd=""

fail() {
    echo "FAIL [$session] $*" >&2
    failed+=("$session")
    broken=1
}

normalize() {
    sed -E 's/(^| )ts=[0-9]+/\1ts=T/g; s/"(created_)?ts":( ?)[0-9]+/"\1ts":\2T/g' <<<"$1"
}

matches() { # matches ACTUAL EXPECTED
    if [[ ${2:0:1} == "~" ]]; then
        # shellcheck disable=SC2053
        [[ $1 == ${2:1} ]]
    else
        [[ $1 == "$2" ]]
    fi
}

# ---- REPL sessions --------------------------------------------------------------------

begin() { # begin NAME [GLOBAL FLAGS...]
    session=$1
    shift
    broken=0
    last_cmd="(session start)"
    rm -f "$tmp/in" "$tmp/out"
    mkfifo "$tmp/in" "$tmp/out"
    timeout "$SESSION_TIMEOUT" "$STRATA" "$@" <"$tmp/in" >"$tmp/out" 2>&1 &
    pid=$!
    exec {to_repl}>"$tmp/in" {from_repl}<"$tmp/out"
}

# Read one line of output into $line (normalized). Returns 1 at EOF or timeout.
next_line() {
    local raw
    if ! IFS= read -r -t "$READ_TIMEOUT" raw <&"$from_repl"; then
        return 1
    fi
    line_raw=$raw
    line=$(normalize "$raw")
}

t() { # t CMD [EXPECTED LINE...]
    local cmd=$1
    shift
    ((broken)) && return 0
    last_cmd=$cmd
    printf '%s\n' "$cmd" >&"$to_repl"
    local want
    for want in "$@"; do
        if ! next_line; then
            fail "after '$cmd': expected line '$want', got no output (EOF or ${READ_TIMEOUT}s timeout)"
            return 0
        fi
        if ! matches "$line" "$want"; then
            fail "after '$cmd':"$'\n'"    expected: $want"$'\n'"    actual:   $line"
            return 0
        fi
    done
}

# Send CMD and print its single output line, not normalized (for capturing values);
# nothing on failure.
capture() {
    ((broken)) && return 0
    last_cmd=$1
    printf '%s\n' "$1" >&"$to_repl"
    if next_line; then printf '%s\n' "$line_raw"; fi
}

end() {
    if ((broken == 0)); then
        printf 'quit\n' >&"$to_repl"
        local extra=()
        while next_line; do extra+=("$line"); done
        if ((${#extra[@]})); then
            fail "unexpected output after '$last_cmd': $(printf '\n    %s' "${extra[@]}")"
        fi
    fi
    exec {to_repl}>&- {from_repl}<&-
    local rc=0
    if ((broken)); then kill "$pid" 2>/dev/null || true; fi
    wait "$pid" || rc=$?
    pid=""
    if ((broken == 0 && rc != 0)); then fail "REPL exited with status $rc"; fi
    ((broken)) || echo "ok   [$session]"
}

# ---- One-shot commands ----------------------------------------------------------------

oneshot() { # oneshot WANT_RC WANT_STDOUT WANT_STDERR ARGS... (exact text, ts normalized)
    local want_rc=$1 want_out=$2 want_err=$3
    shift 3
    local rc=0
    timeout 20 "$STRATA" "$@" >"$tmp/o" 2>"$tmp/e" || rc=$?
    local out err
    out=$(normalize "$(cat "$tmp/o")")
    err=$(normalize "$(cat "$tmp/e")")
    if [[ $rc != "$want_rc" ]]; then
        fail "strata $*: exit status $rc, expected $want_rc (stderr: $err)"
    elif ! matches "$out" "$want_out"; then
        fail "strata $*: stdout"$'\n'"    expected: $want_out"$'\n'"    actual:   $out"
    elif ! matches "$err" "$want_err"; then
        fail "strata $*: stderr"$'\n'"    expected: $want_err"$'\n'"    actual:   $err"
    fi
}

session=oneshot
broken=0
oneshot 0 "OK version=1" "" kv put a 1
oneshot 0 '{"version":1,"ts":T}' "" --json kv put a '{"b": [1, 2]}'
oneshot 0 "(nil)" "" --uri mem: --branch default --space s1 kv get a
oneshot 2 "" "error: INVALID_ARGUMENT: unknown group 'nosuch' (kv, json, event, state, vector, branch, space, txn; try 'help')" nosuch verb
oneshot 2 "" "~error: INVALID_ARGUMENT: unknown command 'kv frob'"$'\n'"  strata kv put KEY VALUE*" kv frob
oneshot 2 "" "error: INVALID_ARGUMENT: missing VALUE"$'\n'"usage: strata kv put KEY VALUE" kv put a
oneshot 2 "" "error: INVALID_ARGUMENT: unexpected argument 'c'"$'\n'"usage: strata kv put KEY VALUE" kv put a b c
oneshot 2 "" "~error: INVALID_ARGUMENT: unknown option '--bogus' for 'kv get'"$'\n'"usage: *" kv get a --bogus
oneshot 2 "" "error: INVALID_ARGUMENT: SEQ must be a non-negative integer, got 'x'"$'\n'"usage: strata event get SEQ [--at-version V] [--as-of TS]" event get x
oneshot 2 "" "~error: INVALID_ARGUMENT: PAYLOAD is not valid JSON (invalid JSON at line 1 column *"$'\n'"usage: strata event append TYPE PAYLOAD" event append click notjson
oneshot 2 "" "error: INVALID_ARGUMENT: 'txn begin' is only available in the REPL"$'\n'"usage: strata txn begin" txn begin
oneshot 2 "" "error: INVALID_ARGUMENT: unknown global flag '--nope' (try 'help')" --nope kv get a
oneshot 1 "" "error: BRANCH_NOT_FOUND: branch 'nope' not found" --branch nope kv get a
oneshot 1 "" "error: INVALID_ARGUMENT: invalid space name 'Bad': must match [a-z][a-z0-9_-]{0,63}" --space Bad kv get a
oneshot 1 "" "error: INVALID_ARGUMENT: argument 'key' must not be empty" kv get ''
# backup: usage, offline verify of a hand-made backup (good, corrupt, truncated, no
# manifest), and create against a database that is not a cluster (nothing left behind).
bk="$tmp/bk"
mkdir -p "$bk"
printf 'STRASNAP-not-checked-by-verify' >"$bk/group-1.snap"
sha=$(sha256sum "$bk/group-1.snap" | cut -d' ' -f1)
cat >"$bk/manifest.json" <<JSON
{"format": "stratadb-backup", "format_version": 1, "shards": 1, "placement_epoch": 1,
 "created_at": "2024-01-01T00:00:00Z", "created_at_us": 1,
 "groups": [{"group": 1, "role": "shard", "file": "group-1.snap", "bytes": 30,
             "sha256": "$sha", "raft_index": 3, "version": 2, "last_ts": 1}],
 "branches": [{"name": "default", "shard": 1}]}
JSON
usage_bk="usage: strata --uri strata://HOST:PORT[,...] backup create DIR"$'\n'"       strata --uri strata://HOST:PORT[,...] backup restore DIR"$'\n'"       strata backup verify DIR"
oneshot 2 "" "$usage_bk" backup frob "$bk"
oneshot 2 "" "$usage_bk" backup verify
oneshot 0 "OK $bk: 1 groups, 1 branches, 30 bytes, every SHA-256 matches" "" backup verify "$bk"
printf 'x' | dd of="$bk/group-1.snap" bs=1 seek=3 conv=notrunc status=none
oneshot 1 "" "error: INVALID_ARGUMENT: $bk/group-1.snap does not match its SHA-256 in the manifest (corrupt)" backup verify "$bk"
truncate -s 10 "$bk/group-1.snap"
oneshot 1 "" "error: INVALID_ARGUMENT: $bk/group-1.snap is 10 bytes, the manifest says 30 (truncated?)" backup verify "$bk"
sed -i 's/"format_version": 1/"format_version": 2/' "$bk/manifest.json"
oneshot 1 "" "error: INVALID_ARGUMENT: $bk/manifest.json: unsupported backup format version 2 (this strata reads 1)" backup verify "$bk"
rm "$bk/manifest.json"
oneshot 1 "" "~error: INVALID_ARGUMENT: $bk/manifest.json: unable to open*" backup verify "$bk"
oneshot 1 "" "error: INVALID_ARGUMENT: reading the placement table: unknown command 'cluster.placement'" backup create "$tmp/bk-new"
[[ ! -e $tmp/bk-new ]] || fail "backup create left $tmp/bk-new behind"
# file:DIR is durable: a value written by one process is read by the next.
oneshot 0 "OK version=1" "" --uri "file:$tmp/db" kv put a 1
oneshot 0 "1" "" --uri "file:$tmp/db" kv get a
oneshot 0 "OK version=2" "" --uri "file:$tmp/db" kv put a 2
oneshot 0 '[{"value":2,"deleted":false,"version":2,"ts":T},{"value":1,"deleted":false,"version":1,"ts":T}]' "" --uri "file:$tmp/db" --json kv history a
oneshot 1 "" "error: INVALID_ARGUMENT: URI 'file:' names no directory: expected file:DIR" --uri file: kv get a
# strata:// with nothing listening: a clear UNAVAILABLE after bounded retries.
oneshot 1 "" "~error: UNAVAILABLE: cannot connect to 127.0.0.1:1*" --uri strata://127.0.0.1:1 kv get a
oneshot 1 "" "error: INVALID_ARGUMENT: URI 'strata://h:x' has a bad host 'h:x': expected HOST or HOST:PORT" --uri strata://h:x kv get a
oneshot 1 "" "error: INVALID_ARGUMENT: unknown URI 'redis://x': expected mem:, file:DIR or strata://HOST[:PORT]" --uri redis://x kv get a
oneshot 0 "~usage: strata *  strata kv put KEY VALUE*  strata txn abort*" "" help
oneshot 0 "~  strata vector create COLL DIM METRIC*" "" help vector
((broken)) || echo "ok   [oneshot]"

# ---- kv: values, quoting, listing, time travel -----------------------------------------

begin kv
t "kv put a 1" "OK version=1"
t "kv put b 'hello world'" "OK version=2"
t "kv put c '{\"x\": [1, 2.5, \"s\"], \"y\": null}'" "OK version=3"
t 'kv put d "say \"hi\""' "OK version=4"
t "kv put e '\"123\"'" "OK version=5"
t "kv get a" "1"
t "kv get b" '"hello world"'
t "kv get c" '{"x":[1,2.5,"s"],"y":null}'
t "kv get d" '"say \"hi\""'
t "kv get e" '"123"'
t "kv get missing" "(nil)"
t "--json kv get a" '{"value":1,"version":1,"ts":T}'
t "kv put a 2" "OK version=6"
t "kv history a" "version=6 ts=T 2" "version=1 ts=T 1"
t "kv get a --at-version 5" "1"
t "kv get a --at-version=6" "2"
t "kv exists a" "true"
t "kv exists zz" "false"
t "kv count" "5"
t "kv count --prefix b" "1"
t "kv list" a b c d e
t "kv list --limit 2" a b "(more: --cursor b)"
t "kv list --limit 2 --cursor b" c d "(more: --cursor d)"
t "kv scan --prefix c" $'c\t{"x":[1,2.5,"s"],"y":null}'
t "kv delete a" "OK version=7 deleted=true"
t "kv delete a" "OK deleted=false"
t "kv get a" "(nil)"
t "kv history a" "version=7 ts=T (deleted)" "version=6 ts=T 2" "version=1 ts=T 1"
t "kv get a --at-version 6" "2"
t "kv get a --at-version abc" "error: INVALID_ARGUMENT: --at-version must be a non-negative integer, got 'abc'" \
    "usage: strata kv get KEY [--at-version V] [--as-of TS]"
t "kv get a --at-version 1 --as-of 5" "error: INVALID_ARGUMENT: give at_version or as_of, not both"
t "kv put a 1 --at-version 1" "~error: INVALID_ARGUMENT: unknown option '--at-version' for 'kv put'" "~usage: *"
end

# as-of: read a key at the timestamp of its first write, and before it.
begin kv-as-of
t "kv put k old" "OK version=1"
raw_ts=$(capture "--json kv history k" | sed -nE 's/.*"version":1,"ts":([0-9]+).*/\1/p')
t "kv put k new" "OK version=2"
t "kv get k" '"new"'
if ((broken)); then
    :
elif [[ -n $raw_ts ]]; then
    t "kv get k --as-of $raw_ts" '"old"'
    t "kv get k --as-of $((raw_ts - 1000000000))" "(nil)"
else
    fail "could not read a timestamp from '--json kv history k'"
fi
end

# ---- REPL mechanics --------------------------------------------------------------------

begin repl
t "# a comment, then a blank line"
t ""
t "help kv" "~  strata kv put KEY VALUE*" "~      store VALUE under KEY" "~  strata kv get KEY*" \
    "~      value of KEY" "~  strata kv delete KEY*" "~      delete KEY" "~  strata kv exists*" \
    "~      true if*" "~  strata kv list*" "~      keys*" "~  strata kv scan*" "~      keys and*" \
    "~  strata kv count*" "~      number*" "~  strata kv history*" "~      versions*"
t "kv put 'a key' \"two words\"" "OK version=1"
t "kv list" "a key"
t "kv put x 'it\\'s'" "OK version=2"
t "kv get x" "\"it's\""
t "kv put y a\\ b" "OK version=3"
t "kv get y" '"a b"'
t "kv put z 'unterminated" "error: INVALID_ARGUMENT: unterminated ' quote"
t "kv get 'a key'" '"two words"'
t "--json kv get 'a key'" '{"value":"two words","version":1,"ts":T}'
t "--space other kv list"
t "kv get" "error: INVALID_ARGUMENT: missing KEY" "usage: strata kv get KEY [--at-version V] [--as-of TS]"
t "frob" "error: INVALID_ARGUMENT: unknown group 'frob' (kv, json, event, state, vector, branch, space, txn; try 'help')"
t "--uri mem: kv get x" "error: INVALID_ARGUMENT: --uri can only be given when starting strata"
t "txn commit" "error: INVALID_ARGUMENT: no transaction is open (txn begin first)"
t "txn abort" "error: INVALID_ARGUMENT: no transaction is open"
t "kv get x" "\"it's\""
end

# Empty strings, top-level and nested.
begin empty-string
t "kv put e ''" "OK version=1"
t "kv get e" '""'
t "kv put l '[\"\", \"x\"]'" "OK version=2"
t "kv get l" '["","x"]'
end

# The prompt appears only when stdin is a terminal (util-linux `script` gives it one).
session=tty
broken=0
if command -v script >/dev/null 2>&1; then
    tty_out=$(printf 'kv put a 1\nkv get a\n' |
        timeout 20 script -qec "$(printf '%q' "$STRATA")" /dev/null 2>&1 | tr -d '\r') || true
    for want in "strata[default/default]> OK version=1" "strata[default/default]> 1"; do
        if ! grep -qxF -- "$want" <<<"$tty_out"; then
            fail "on a terminal, expected the line '$want' in:"$'\n'"$tty_out"
            break
        fi
    done
    ((broken)) || echo "ok   [tty]"
else
    echo "skip [tty] (no 'script' command)"
fi

begin repl-json --json
t "kv put a '[1, {\"b\": true}]'" '{"version":1,"ts":T}'
t "kv get a" '{"value":[1,{"b":true}],"version":1,"ts":T}'
t "kv list" '{"keys":["a"],"cursor":null}'
t "branch list" '["default"]'
end

begin repl-flags --branch default --space sp
t "kv put a 1" "OK version=1"
t "space list" default sp
t "--space default kv get a" "(nil)"
t "kv get a" "1"
end

# ---- branch: fork, isolation, info, retention, use, delete ------------------------------

begin branch
t "kv put k base" "OK version=1"
t "branch create empty" '~OK version=1 name="empty" fork_version=null'
t "branch fork default feat" '~OK version=1 name="feat" fork_version=1'
t "branch fork default feat" "error: BRANCH_EXISTS: branch 'feat' already exists"
t "branch list" default empty feat
t "--branch feat kv get k" '"base"'
t "--branch empty kv get k" "(nil)"
t "branch use feat" "OK"
t "kv put k changed" "OK version=2"
t "kv get k" '"changed"'
t "branch use default" "OK"
t "kv get k" '"base"'
t "branch use nope" "error: BRANCH_NOT_FOUND: branch 'nope' not found"
t "kv get k" '"base"'
t "kv put k v3" "OK version=3"
t "branch fork default old --at-version 1" '~OK version=3 name="old" fork_version=1'
t "--branch old kv get k" '"base"'
t "branch fork-many default m1 m2" '{"name":"m1","version":3,"fork_version":3}' '{"name":"m2","version":3,"fork_version":3}'
t "--branch m2 kv get k" '"v3"'
t "--json branch info feat" '~{"name":"feat","id":*,"parent":"default","parent_deleted":false,"fork_version":1,"created_version":1,"created_ts":T,"depth":1,"own_keys":1,"writes":1,"retention":{"keep_last":0,"keep_for_us":0}}'
t "branch info empty" "{" '  "name": "empty",' '~  "id": *,' '  "parent": null,' \
    '  "parent_deleted": false,' '  "fork_version": 0,' '  "created_version": 1,' \
    '  "created_ts": T,' '  "depth": 0,' '  "own_keys": 0,' '  "writes": 0,' '  "retention": {' \
    '    "keep_last": 0,' '    "keep_for_us": 0' '  }' '}'
# Retention on a branch no fork reads through (fork points are never pruned).
t "branch create r" '~OK version=3 name="r" fork_version=null'
t "--branch r kv put k r1" "OK version=4"
t "--branch r kv put k r2" "OK version=5"
t "--branch r kv put k r3" "OK version=6"
t "branch retention r --keep-last 2" "OK"
t "branch prune r" "OK"
t "--branch r kv history k" 'version=6 ts=T "r3"' 'version=5 ts=T "r2"'
t "--branch r kv get k --at-version 4" "~error: HISTORY_UNAVAILABLE: *"
t "--json branch info r" '~*"retention":{"keep_last":2,"keep_for_us":0}}'
t "branch retention default --keep-last x" "error: INVALID_ARGUMENT: --keep-last must be a non-negative integer, got 'x'" "~usage: strata branch retention NAME*"
t "branch delete m1" "OK"
t "branch delete default" "error: INVALID_ARGUMENT: the default branch cannot be deleted"
t "branch list" default empty feat m2 old r
t "branch create 'bad name'" "~error: INVALID_ARGUMENT: invalid branch name 'bad name'*"
end

# ---- space: create, use, list, isolation, delete ----------------------------------------

begin space
t "space create logs" "OK version=1 created=true"
t "space list" default logs
t "space use logs" "OK"
t "kv put a 1" "OK version=2"
t "kv list" a
t "space use default" "OK"
t "kv list"
t "kv get a" "(nil)"
t "--space logs kv get a" "1"
t "space use Bad" "error: INVALID_ARGUMENT: invalid space name 'Bad': must match [a-z][a-z0-9_-]{0,63}"
t "space delete logs" "OK version=3 deleted_keys=1"
t "space list" default
t "--space logs kv get a" "(nil)"
t "space delete default" "error: INVALID_ARGUMENT: the default space cannot be deleted"
end

# ---- json documents (ops json.*) ---------------------------------------------------------

begin json
t "json set doc '\$' '{\"a\": 1, \"b\": [1, 2]}'" "OK version=1"
t "json get doc" '{"a":1,"b":[1,2]}'
t "json get doc '\$.b[1]'" "2"
t "json set doc '\$.a' 5" "OK version=2"
t "json set doc '\$.c' hello" "OK version=3"
t "json get doc" '{"a":5,"b":[1,2],"c":"hello"}'
t "json delete doc '\$.b'" "~OK version=4*"
t "json get doc" '{"a":5,"c":"hello"}'
t "json get doc --at-version 1" '{"a":1,"b":[1,2]}'
t "json list" doc
t "json history doc" "~version=4 ts=T *" "~version=3 ts=T *" "~version=2 ts=T *" "~version=1 ts=T *"
t "json get nope" "(nil)"
t "json set doc 'no-dollar' 1" "~error: INVALID_ARGUMENT: *"
t "json delete doc" "~OK version=5*"
t "json get doc" "(nil)"
end

# ---- events (ops event.*) ---------------------------------------------------------------

begin event
t "event append click '{\"x\": 1}'" "~OK version=1*"
t "event append view '{\"x\": 2}'" "~OK version=2*"
t "event append click '{\"x\": 3}'" "~OK version=3*"
t "event len" "3"
t "--json event get 1" '~{*"type":"click"*"payload":{"x":1}*}'
t "event get 9" "~*"
t "event range" '~*"type":"click"*' '~*"type":"view"*' '~*"type":"click"*'
t "event range --type view" '~*"payload":{"x":2}*'
t "event range --backward --limit 1" '~*"payload":{"x":3}*' "(more: --cursor 2)"
t "event range --start 1 --end 2" '~*"payload":{"x":1}*' '~*"payload":{"x":2}*'
t "event types" click view
t "--json event verify" "~*true*"
t "event len --at-version 1" "1"
t "event append click 'not json'" "~error: INVALID_ARGUMENT: PAYLOAD is not valid JSON*" "usage: strata event append TYPE PAYLOAD"
end

# ---- state cells (ops state.*) ----------------------------------------------------------

begin state
t "state init lock free" "~OK version=1*"
t "state init lock again" "~error: *"
ctr=$(capture "state get lock" | sed -nE 's/^"free" \(counter ([0-9]+)\)$/\1/p')
if ((!broken)) && [[ -z $ctr ]]; then fail "'state get lock' did not print '\"free\" (counter N)'"; fi
t "state cas lock $ctr taken" "~OK version=2*"
t "state cas lock $ctr stolen" "~error: CONFLICT: *"
t "state get lock" "~\"taken\" (counter *)"
t "state set mode 3" "~OK version=3*"
t "state get mode" "~3 (counter *)"
t "state list" lock mode
t "state history lock" '~version=2 ts=T "taken"*' '~version=1 ts=T "free"*'
t "state delete mode" "~OK version=4*"
t "state get mode" "(nil)"
t "state cas lock x y" "error: INVALID_ARGUMENT: EXPECTED_COUNTER must be a non-negative integer, got 'x'" "usage: strata state cas CELL EXPECTED_COUNTER VALUE"
end

# ---- vectors (ops vector.*) ---------------------------------------------------------------

begin vector
t "vector create emb 3 cosine" "~OK*"
t "vector collections" '{"name":"emb","dimension":3,"metric":"cosine","count":0}'
t "vector upsert emb a '[1, 0, 0]' '{\"tag\": \"x\"}'" "~OK version=2*"
t "vector upsert emb b '[0, 1, 0]' '{\"tag\": \"y\"}'" "~OK version=3*"
t "vector upsert emb c '[0, 0, 1]'" "~OK version=4*"
t "vector query emb '[1, 0.1, 0]' 2" '~*"a"*' '~*"b"*'
t "vector query emb '[0.1, 1, 0]' 3 '{\"tag\": \"x\"}'" '~*"a"*'
t "--json vector get emb a" '~*"tag":"x"*'
t "vector get emb zz" "(nil)"
t "vector delete emb b" "~OK*"
t "vector query emb '[0, 1, 0]' 3" '~*"*' '~*"*'
t "vector upsert emb d '[1, 2]'" "~error: INVALID_ARGUMENT: *"
t "vector upsert emb d 'nope'" "~error: INVALID_ARGUMENT: VECTOR is not valid JSON*" "~usage: strata vector upsert COLL KEY VECTOR \[METADATA\]"
t "vector drop emb" "~OK*"
t "vector collections"
end

# ---- branch diff and merge (ops branch.diff, branch.merge) --------------------------------

begin merge
t "kv put shared 1" "OK version=1"
t "branch fork default f" '~OK version=1 name="f" fork_version=1'
t "--branch f kv put added yes" "OK version=2"
t "--branch f kv put shared 2" "OK version=3"
t "--json branch diff default f" '~*"added"*' 
t "branch merge f default" "~OK version=4*"
t "kv get added" '"yes"'
t "kv get shared" "2"
t "kv put shared 10" "OK version=5"
t "--branch f kv put shared 20" "OK version=6"
t "branch merge f default" "~*CONFLICT*"
t "kv get shared" "10"
t "branch merge f default --strategy source_wins" "~OK version=7*"
t "kv get shared" "20"
t "branch merge f default --strategy" "error: INVALID_ARGUMENT: option --strategy needs a value (strict|source_wins)" "~usage: strata branch merge *"
end

# ---- transactions (ops txn.begin, txn.commit) --------------------------------------------

begin txn
t "kv put x 1" "OK version=1"
t "txn begin" "OK snapshot=1"
t "txn begin" "error: INVALID_ARGUMENT: a transaction is already open (txn commit or txn abort first)"
t "kv get x" "1"
t "kv put y 2" "queued"
t "kv put x 3" "queued"
t "kv get y" "(nil)"
t "branch create nope" "error: INVALID_ARGUMENT: 'branch create' cannot run inside a transaction (txn commit or txn abort first, or prefix it with --no-txn)"
t "branch use default" "error: INVALID_ARGUMENT: cannot switch branches inside a transaction (txn commit or txn abort first)"
t "kv get x --at-version 1" "error: INVALID_ARGUMENT: --at-version/--as-of cannot be used inside a transaction (reads are at its snapshot 1)"
t "txn commit" "~OK version=2*"
t "kv get y" "2"
t "kv get x" "3"
# A conflict: x is read in the transaction, then written outside it before the commit.
t "txn begin" "OK snapshot=2"
t "kv get x" "3"
t "--no-txn kv put x 4" "OK version=3"
t "kv put x 5" "queued"
t "txn commit" "~error: CONFLICT: *"
t "kv get x" "4"
t "txn commit" "error: INVALID_ARGUMENT: no transaction is open (txn begin first)"
# Blind writes (keys not read) do not conflict.
t "txn begin" "OK snapshot=3"
t "kv put w 1" "queued"
t "--no-txn kv put w 0" "OK version=4"
t "txn commit" "~OK version=5*"
t "kv get w" "1"
t "txn begin" "OK snapshot=5"
t "kv put z 1" "queued"
t "txn abort" "OK"
t "kv get z" "(nil)"
end

if ((${#failed[@]})); then
    echo "test_cli: FAILED sessions: $(printf '%s\n' "${failed[@]}" | sort -u | tr '\n' ' ')" >&2
    exit 1
fi
echo "test_cli: all sessions passed"
