/* Replication under change: leader stop and failover, restart from the data dir,
 * snapshots with log truncation and install on a wiped follower, membership, transfer,
 * loss of quorum, and stop with requests in flight. */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void write_ok(struct cluster *c, int i, const char *key, int v)
{
    struct cl_result r;
    cl_write(c, i, &r, "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":%d}", key, v);
    cl_wait(c, &r, 10000);
    if (r.code != 0)
        fail_msg("write %s on node %d: %s: %s", key, i + 1, err_name(r.code), r.json);
}

static void write_many(struct cluster *c, int i, const char *prefix, int n)
{
    for (int k = 0; k < n; k++) {
        char key[64];
        snprintf(key, sizeof key, "%s%d", prefix, k);
        write_ok(c, i, key, k);
    }
}

struct new_leader {
    struct cluster *c;
    int old;
};

static bool other_leader(void *arg)
{
    struct new_leader *nl = arg;
    int l = cl_leader_of(nl->c);
    return l >= 0 && l != nl->old;
}

static bool peer_down_seen(void *arg)
{
    return ((struct cl_node *)arg)->peer_down > 0;
}

static void test_stop_leader_failover(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    write_many(&c, l, "a", 20);
    /* Graceful stop hands leadership over before closing. */
    double t0 = cl_now_ms();
    cl_stop(&c, l);
    double stop_ms = cl_now_ms() - t0;
    struct new_leader nl = {&c, l};
    cl_run_until(&c, other_leader, &nl, 10000, "a new leader");
    int l2 = cl_wait_leader(&c, 10000);
    printf("# leader stop with hand-off: %.0f ms, new leader known after %.0f ms\n", stop_ms,
           cl_now_ms() - t0);
    assert_int_not_equal(l2, l);
    write_many(&c, l2, "b", 20);
    /* The stopped node's port goes away as with a dead process: the new leader cannot
     * reach it and reports it down, once. */
    cl_unlisten(&c, l);
    cl_run_until(&c, peer_down_seen, &c.nodes[l2], 5000, "PEER_DOWN for the stopped node");
    assert_int_equal(c.nodes[l2].peer_down, 1);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 2);
    assert_int_equal(storage_version(c.nodes[l2].engine), 40);
    cl_teardown(&c);
}

static void test_restart_catches_up(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    int f = (l + 1) % 3;
    write_many(&c, l, "a", 10);
    cl_wait_caught_up(&c, 5000);
    cl_stop(&c, f);
    write_many(&c, l, "b", 30);
    /* Same data dir, fresh engine, same command line (bootstrap is a no-op now). */
    cl_open(&c, f, 3);
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    assert_int_equal(storage_version(c.nodes[f].engine), 40);
    /* The whole cluster restarts from disk. */
    for (int i = 0; i < 3; i++)
        cl_stop(&c, i);
    cl_start(&c, 3);
    l = cl_wait_leader(&c, 10000);
    write_ok(&c, l, "after", 1);
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    assert_int_equal(storage_version(c.nodes[l].engine), 41);
    cl_teardown(&c);
}

static bool snapshot_installed(void *arg)
{
    return ((struct cl_node *)arg)->snapshots_installed > 0;
}

static void test_snapshot_rebuilds_wiped_follower(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    c.opts.snapshot_threshold = 32;
    c.opts.snapshot_trailing = 8;
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    int f = (l + 2) % 3;
    write_many(&c, l, "k", 150);
    cl_wait_caught_up(&c, 5000);
    cl_run_for(&c, 100);
    struct repl_status st;
    repl_group_status(c.nodes[l].g, &st);
    printf("# leader: last index %llu, snapshot index %llu, %d snapshots (%s)\n",
           (unsigned long long)st.last_index, (unsigned long long)st.snapshot_index,
           c.nodes[l].snapshots_taken, c.nodes[l].snapshot_detail);
    assert_true(c.nodes[l].snapshots_taken >= 3);
    assert_true(st.snapshot_index > st.last_index - 64);
    /* Disk loss: the follower comes back empty and without bootstrap. The leader
     * still remembers the old replica's match index (raft assumes disks survive): the
     * install completes once the leader's snapshot is past that index, which the
     * writes below ensure. (Without them the follower waits in snapshot state; the
     * safe procedure for a lost disk is remove + add, see the corrupt-snapshot test.) */
    cl_stop(&c, f);
    cl_wipe(&c, f);
    write_many(&c, l, "m", 40);
    cl_open(&c, f, 0);
    cl_run_until(&c, snapshot_installed, &c.nodes[f], 15000, "snapshot install on the follower");
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    assert_int_equal(storage_version(c.nodes[f].engine), 190);
    /* It serves as a full member: it can lead. */
    struct cl_result r;
    memset(&r, 0, sizeof r);
    repl_transfer(c.nodes[l].g, c.nodes[f].id, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 10000);
    assert_int_equal(r.code, 0);
    assert_int_equal(cl_wait_leader(&c, 5000), f);
    write_ok(&c, f, "led", 1);
    cl_teardown(&c);
}

static void test_member_add_remove(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 4);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    write_many(&c, l, "a", 20);
    /* Node 4 starts empty and joins. */
    cl_open(&c, 3, 0);
    struct repl_member m;
    memset(&m, 0, sizeof m);
    m.id = c.nodes[3].id;
    snprintf(m.address, sizeof m.address, "%s", c.nodes[3].address);
    struct cl_result r;
    memset(&r, 0, sizeof r);
    repl_member_add(c.nodes[l].g, &m, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 20000);
    if (r.code != 0)
        fail_msg("add: %s: %s", err_name(r.code), r.json);
    struct repl_status st;
    repl_group_status(c.nodes[l].g, &st);
    assert_int_equal(st.nmembers, 4);
    for (size_t k = 0; k < st.nmembers; k++)
        assert_true(st.members[k].voter);
    write_many(&c, l, "b", 5);
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 4);
    /* Adding it again is idempotent. */
    memset(&r, 0, sizeof r);
    repl_member_add(c.nodes[l].g, &m, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 5000);
    assert_int_equal(r.code, 0);
    /* Bad requests. */
    struct repl_member bad;
    memset(&bad, 0, sizeof bad);
    memset(&r, 0, sizeof r);
    repl_member_add(c.nodes[l].g, &bad, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 5000);
    assert_int_equal(r.code, STRATA_INVALID_ARGUMENT);
    memset(&r, 0, sizeof r);
    repl_member_remove(c.nodes[l].g, 99, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 5000);
    assert_int_not_equal(r.code, 0);
    int f = (l + 1) % 3;
    memset(&r, 0, sizeof r);
    repl_member_remove(c.nodes[f].g, 4, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 5000);
    assert_int_equal(r.code, STRATA_NOT_LEADER);
    assert_string_equal(r.leader, c.nodes[l].address);
    /* Remove it again. */
    memset(&r, 0, sizeof r);
    repl_member_remove(c.nodes[l].g, 4, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 10000);
    assert_int_equal(r.code, 0);
    repl_group_status(c.nodes[l].g, &st);
    assert_int_equal(st.nmembers, 3);
    cl_stop(&c, 3);
    write_many(&c, l, "c", 5);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

static void test_transfer_to_follower(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    int to = (l + 2) % 3;
    write_many(&c, l, "a", 5);
    struct cl_result r;
    memset(&r, 0, sizeof r);
    double t0 = cl_now_ms();
    repl_transfer(c.nodes[l].g, c.nodes[to].id, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 10000);
    assert_int_equal(r.code, 0);
    printf("# transfer: %.1f ms\n", cl_now_ms() - t0);
    assert_int_equal(cl_wait_leader(&c, 5000), to);
    cl_run_for(&c, 50);
    assert_true(c.nodes[l].lost >= 1);
    assert_true(c.nodes[to].elected >= 1);
    write_many(&c, to, "b", 5);
    /* To itself: refused. */
    memset(&r, 0, sizeof r);
    repl_transfer(c.nodes[to].g, c.nodes[to].id, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 5000);
    assert_int_equal(r.code, STRATA_INVALID_ARGUMENT);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

static void test_lost_quorum_unknown_outcome(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    write_ok(&c, l, "a", 1);
    for (int i = 0; i < 3; i++)
        if (i != l)
            cl_stop(&c, i);
    /* Appended, never committed: the leader steps down and the outcome is unknown. */
    struct cl_result r;
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":2}");
    cl_wait(&c, &r, 10000);
    assert_int_equal(r.code, STRATA_UNKNOWN_OUTCOME);
    cl_run_for(&c, 50);
    assert_true(c.nodes[l].lost >= 1);
    /* No leader now: writes and linearizable reads are NOT_LEADER, stale reads work. */
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":3}");
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_NOT_LEADER);
    cl_read(&c, l, true, &r, "{\"op\":\"kv.get\",\"key\":\"a\"}");
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, 0);
    /* The followers come back: the group recovers and the unknown write is settled
     * one way or the other, identically everywhere. */
    for (int i = 0; i < 3; i++)
        if (i != l)
            cl_open(&c, i, 3);
    int l2 = cl_wait_leader(&c, 15000);
    write_ok(&c, l2, "d", 4);
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

static void test_stop_with_requests_in_flight(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    cl_run_for(&c, 100);
    enum { N = 300 };
    struct cl_result *rs = calloc(N, sizeof *rs);
    for (int i = 0; i < N; i++) {
        if (i % 3 == 2)
            cl_read(&c, l, false, &rs[i], "{\"op\":\"kv.get\",\"key\":\"k%d\"}", i - 1);
        else
            cl_write(&c, l, &rs[i], "{\"op\":\"kv.put\",\"key\":\"k%d\",\"value\":%d}", i, i);
        if (i == N / 2)
            cl_run_for(&c, 1); /* half of them reach raft */
    }
    c.nodes[l].stopping = true;
    struct cl_result late;
    repl_group_stop(c.nodes[l].g, NULL, NULL);
    cl_write(&c, l, &late, "{\"op\":\"kv.put\",\"key\":\"late\",\"value\":1}");
    cl_wait(&c, &late, 5000);
    assert_int_equal(late.code, STRATA_UNAVAILABLE);
    int ok = 0, unavailable = 0, other = 0;
    for (int i = 0; i < N; i++) {
        cl_wait(&c, &rs[i], 10000);
        if (rs[i].code == 0)
            ok++;
        else if (rs[i].code == STRATA_UNAVAILABLE)
            unavailable++;
        else if (rs[i].code == STRATA_UNKNOWN_OUTCOME || rs[i].code == STRATA_NOT_LEADER)
            other++;
        else
            fail_msg("request %d: unexpected %s: %s", i, err_name(rs[i].code), rs[i].json);
    }
    printf("# stop with %d requests: %d ok, %d unavailable, %d unknown/not-leader\n", N, ok,
           unavailable, other);
    assert_true(ok > 0);
    assert_true(unavailable > 0);
    /* Stopped nodes are not waited on by the harness: mark it gone. */
    c.nodes[l].g = NULL;
    c.nodes[l].stopping = false;
    int l2 = cl_wait_leader(&c, 10000);
    write_ok(&c, l2, "after", 1);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 2);
    free(rs);
    cl_teardown(&c);
}

/* Snapshot stall with a larger state: 50k keys of 100 bytes. */
static void test_snapshot_stall_measured(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    c.opts.snapshot_threshold = 400;
    c.opts.snapshot_trailing = 100;
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    enum { N = 50000, WINDOW = 500 };
    char val[101];
    memset(val, 'q', 100);
    val[100] = '\0';
    struct cl_result *rs = calloc(WINDOW, sizeof *rs);
    for (int base = 0; base < N; base += WINDOW) {
        for (int i = 0; i < WINDOW; i++)
            cl_write(&c, l, &rs[i], "{\"op\":\"kv.put\",\"key\":\"key%06d\",\"value\":\"%s\"}",
                     base + i, val);
        for (int i = 0; i < WINDOW; i++) {
            cl_wait(&c, &rs[i], 20000);
            assert_int_equal(rs[i].code, 0);
        }
        /* One entry per window: small entries so the threshold is reached. */
        for (int k = 0; k < 4; k++)
            write_ok(&c, l, "tick", base + k);
    }
    cl_wait_caught_up(&c, 10000);
    cl_run_for(&c, 100);
    printf("# %d keys: %d snapshots on the leader, last: %s\n", N, c.nodes[l].snapshots_taken,
           c.nodes[l].snapshot_detail);
    assert_true(c.nodes[l].snapshots_taken >= 1);
    assert_int_equal(cl_assert_same_state(&c), 3);
    free(rs);
    cl_teardown(&c);
}

static void corrupt_snapshots(const char *dir)
{
    char cmd[1024];
    /* Flip bytes in the middle of every snapshot data file. */
    snprintf(cmd, sizeof cmd,
             "for f in %s/snapshot-*; do case $f in *.meta) ;; *) "
             "printf 'XXXXXXXX' | dd of=$f bs=1 seek=64 conv=notrunc 2>/dev/null;; esac; done",
             dir);
    assert_int_equal(system(cmd), 0);
}

static void test_corrupt_snapshot_on_restart_fails_cleanly(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    c.opts.snapshot_threshold = 16;
    c.opts.snapshot_trailing = 4;
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    int f = (l + 1) % 3;
    write_many(&c, l, "k", 40);
    cl_wait_caught_up(&c, 5000);
    cl_run_for(&c, 200);
    assert_true(c.nodes[f].snapshots_taken >= 1);
    cl_stop(&c, f);
    corrupt_snapshots(c.nodes[f].dir);
    /* Open succeeds; start refuses the corrupt state with an error, never a crash. */
    struct cl_node *nd = &c.nodes[f];
    storage_free(nd->engine);
    assert_int_equal(storage_new(NULL, &nd->engine), 0);
    struct repl_options o = c.opts;
    o.node_id = nd->id;
    o.address = nd->address;
    o.data_dir = nd->dir;
    struct err err;
    err_clear(&err);
    assert_int_equal(repl_group_open(&c.loop, &o, nd->engine, NULL, NULL, &nd->g, &err), 0);
    int rc = repl_group_start(nd->g, &err);
    printf("# corrupt snapshot: start -> %s: %s\n", err_name(rc), err.msg);
    assert_int_not_equal(rc, 0);
    assert_int_equal(storage_version(nd->engine), 0);
    cl_stop(&c, f);
    /* Replace the disk the safe way: the lost replica leaves the configuration and
     * rejoins empty (the leader's progress for it starts over), then catches up by
     * snapshot install. */
    struct cl_result r;
    memset(&r, 0, sizeof r);
    repl_member_remove(c.nodes[l].g, c.nodes[f].id, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 10000);
    assert_int_equal(r.code, 0);
    cl_wipe(&c, f);
    cl_open(&c, f, 0);
    struct repl_member m;
    memset(&m, 0, sizeof m);
    m.id = c.nodes[f].id;
    snprintf(m.address, sizeof m.address, "%s", c.nodes[f].address);
    memset(&r, 0, sizeof r);
    repl_member_add(c.nodes[l].g, &m, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 20000);
    if (r.code != 0)
        fail_msg("re-add: %s: %s", err_name(r.code), r.json);
    cl_run_until(&c, snapshot_installed, &c.nodes[f], 15000, "snapshot install on the new disk");
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_stop_leader_failover, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_restart_catches_up, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_snapshot_rebuilds_wiped_follower, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_member_add_remove, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_transfer_to_follower, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_lost_quorum_unknown_outcome, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_stop_with_requests_in_flight, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_snapshot_stall_measured, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_corrupt_snapshot_on_restart_fails_cleanly,
                                  cl_fixture_teardown),
    };
    if (getenv("CL_ONLY") != NULL)
        cmocka_set_test_filter(getenv("CL_ONLY"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
