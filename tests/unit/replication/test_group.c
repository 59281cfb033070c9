/* Replication groups over real raft_uv on loopback: three nodes in one process and one
 * loop. Election, replicated writes, NOT_LEADER, batching, reads. */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_group_bootstrap_elects_leader(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    double t0 = cl_now_ms();
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    printf("# leader node %d elected in %.0f ms\n", l + 1, cl_now_ms() - t0);
    int leaders = 0;
    for (int i = 0; i < 3; i++) {
        struct repl_status st;
        repl_group_status(c.nodes[i].g, &st);
        leaders += st.role == REPL_LEADER;
        assert_int_equal(st.leader_id, c.nodes[l].id);
        assert_string_equal(st.leader_address, c.nodes[l].address);
        assert_int_equal(st.nmembers, 3);
        for (size_t k = 0; k < st.nmembers; k++)
            assert_true(st.members[k].voter);
    }
    assert_int_equal(leaders, 1);
    cl_run_for(&c, 50); /* let the pump deliver the event */
    assert_int_equal(c.nodes[l].elected, 1);
    cl_teardown(&c);
}

static void test_group_host_names_resolve(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_use_names(&c);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    assert_non_null(strstr(c.nodes[l].address, "localhost:"));
    struct cl_result r;
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"n\",\"value\":1}");
    cl_wait(&c, &r, 5000);
    assert_int_equal(r.code, 0);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_run_for(&c, 50);
    assert_true(c.nodes[l].peer_up >= 2);
    cl_teardown(&c);
}

static void test_group_writes_applied_on_all(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    struct cl_result r;
    double t0 = cl_now_ms();
    int n = 200;
    for (int i = 0; i < n; i++) {
        cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"k%d\",\"value\":{\"n\":%d}}", i, i);
        cl_wait(&c, &r, 5000);
        assert_int_equal(r.code, 0);
        char want[64];
        snprintf(want, sizeof want, "\"version\":%d", i + 1);
        assert_non_null(strstr(r.json, want));
    }
    double ms = cl_now_ms() - t0;
    printf("# %d serial writes: %.3f ms each (%.0f/s)\n", n, ms / n, n * 1000.0 / ms);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(storage_version(c.nodes[i].engine), n);
    cl_teardown(&c);
}

static int follower_of(struct cluster *c, int l)
{
    return (l + 1) % 3;
}

static void test_write_on_follower_not_leader(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    int f = follower_of(&c, l);
    struct cl_result r;
    cl_write(&c, f, &r, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    assert_false(r.done); /* never from inside the submit call */
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_NOT_LEADER);
    assert_string_equal(r.leader, c.nodes[l].address);
    /* Linearizable reads on a follower: NOT_LEADER too. */
    cl_read(&c, f, false, &r, "{\"op\":\"kv.get\",\"key\":\"a\"}");
    assert_false(r.done);
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_NOT_LEADER);
    assert_string_equal(r.leader, c.nodes[l].address);
    /* Nothing was written anywhere. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(storage_version(c.nodes[i].engine), 0);
    cl_teardown(&c);
}

static void test_write_bad_input(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    c.opts.max_entry_bytes = 4096;
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    struct cl_result r;
    /* A command larger than one entry may hold. */
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"big\",\"value\":\"%s\"}", big);
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_TOO_LARGE);
    assert_non_null(strstr(r.json, "4096"));
    /* Undecodable and unknown commands never reach the log. */
    struct repl_status before, after;
    repl_group_status(c.nodes[l].g, &before);
    uint8_t junk[] = {0xc1, 0x00};
    struct cl_result r2;
    memset(&r2, 0, sizeof r2);
    repl_write(c.nodes[l].g, junk, sizeof junk, cl_done_cb(), &r2);
    r2.returned = true;
    cl_wait(&c, &r2, 2000);
    assert_int_equal(r2.code, STRATA_PROTOCOL_ERROR);
    cl_write(&c, l, &r, "{\"op\":\"kv.nope\",\"key\":\"a\"}");
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_INVALID_ARGUMENT);
    /* A write through repl_read would bypass the log: refused. */
    cl_read(&c, l, false, &r, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_INVALID_ARGUMENT);
    cl_read(&c, l, true, &r, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_INVALID_ARGUMENT);
    repl_group_status(c.nodes[l].g, &after);
    assert_int_equal(after.last_index, before.last_index);
    /* An engine error is replicated like any command and fails the same way. */
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"value\":1}");
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, STRATA_INVALID_ARGUMENT);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    assert_int_equal(storage_version(c.nodes[l].engine), 0);
    cl_teardown(&c);
}

#define NCONC 1000

static void test_concurrent_writes_batched(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    struct cl_result *rs = calloc(NCONC, sizeof *rs);
    assert_non_null(rs);
    struct repl_status before, after;
    cl_run_for(&c, 100); /* the initial barrier has committed */
    repl_group_status(c.nodes[l].g, &before);
    double t0 = cl_now_ms();
    for (int i = 0; i < NCONC; i++)
        cl_write(&c, l, &rs[i], "{\"op\":\"kv.put\",\"key\":\"w%04d\",\"value\":%d}", i, i);
    for (int i = 0; i < NCONC; i++) {
        cl_wait(&c, &rs[i], 20000);
        assert_int_equal(rs[i].code, 0);
    }
    double ms = cl_now_ms() - t0;
    repl_group_status(c.nodes[l].g, &after);
    uint64_t entries = after.last_index - before.last_index;
    printf("# %d concurrent writes: %.1f ms (%.0f writes/s) in %llu log entries\n", NCONC, ms,
           NCONC * 1000.0 / ms, (unsigned long long)entries);
    assert_true(entries < NCONC / 4);
    /* Each write got its own version, in submission order. */
    for (int i = 0; i < NCONC; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"version\":%d,", i + 1);
        assert_non_null(strstr(rs[i].json, want));
    }
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    free(rs);
    cl_teardown(&c);
}

/* Closed loop: 100 clients, each issuing its next write when the previous completes.
 * With at most two entries in flight, writes accumulate while entries commit. */
struct client {
    struct cluster *c;
    int leader, id, left, errors;
    int *completed;
};

static void client_next(struct client *cl);

static void client_done(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                        const char *leader)
{
    struct client *cl = arg;
    (void)result;
    (void)len;
    (void)leader;
    if (code != 0) {
        fprintf(stderr, "client %d: %s: %s\n", cl->id, err_name(code), message);
        cl->errors++;
    }
    (*cl->completed)++;
    client_next(cl);
}

static void client_next(struct client *cl)
{
    if (cl->left == 0)
        return;
    cl->left--;
    struct buf cmd;
    cl_cmd(&cmd, "{\"op\":\"kv.put\",\"key\":\"c%d-%d\",\"value\":%d}", cl->id, cl->left, cl->left);
    repl_write(cl->c->nodes[cl->leader].g, cmd.data, cmd.len, client_done, cl);
    buf_close(&cmd);
}

static int completed_target;
static bool all_completed(void *arg)
{
    return *(int *)arg >= completed_target;
}

static void test_pipelined_writes_batched(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    cl_run_for(&c, 100);
    enum { NCLIENTS = 100, PER = 30 };
    struct client cls[NCLIENTS];
    int completed = 0;
    struct repl_status before, after;
    repl_group_status(c.nodes[l].g, &before);
    double t0 = cl_now_ms();
    for (int i = 0; i < NCLIENTS; i++) {
        cls[i] = (struct client){&c, l, i, PER, 0, &completed};
        client_next(&cls[i]);
    }
    completed_target = NCLIENTS * PER;
    cl_run_until(&c, all_completed, &completed, 60000, "all pipelined writes");
    double ms = cl_now_ms() - t0;
    repl_group_status(c.nodes[l].g, &after);
    uint64_t entries = after.last_index - before.last_index;
    printf("# %d clients x %d writes: %.0f writes/s, %llu entries (%.1f writes/entry)\n", NCLIENTS,
           PER, completed_target * 1000.0 / ms, (unsigned long long)entries,
           (double)completed_target / (double)entries);
    for (int i = 0; i < NCLIENTS; i++)
        assert_int_equal(cls[i].errors, 0);
    assert_true(entries < (uint64_t)completed_target / 10);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    assert_int_equal(storage_version(c.nodes[l].engine), completed_target);
    cl_teardown(&c);
}

static void test_entry_bound_splits_batches(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    c.opts.max_entry_bytes = 4096;
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    cl_run_for(&c, 100);
    char val[1001];
    memset(val, 'v', 1000);
    val[1000] = '\0';
    struct repl_status before, after;
    repl_group_status(c.nodes[l].g, &before);
    struct cl_result rs[40];
    for (int i = 0; i < 40; i++)
        cl_write(&c, l, &rs[i], "{\"op\":\"kv.put\",\"key\":\"b%d\",\"value\":\"%s\"}", i, val);
    for (int i = 0; i < 40; i++) {
        cl_wait(&c, &rs[i], 10000);
        assert_int_equal(rs[i].code, 0);
    }
    repl_group_status(c.nodes[l].g, &after);
    /* About 1 KiB per command: at most three fit in a 4 KiB entry. */
    assert_true(after.last_index - before.last_index >= 14);
    cl_wait_caught_up(&c, 5000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

static void test_large_value_replicates(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    size_t n = 3u << 20;
    char *json = malloc(n + 100);
    char *big = malloc(n + 1);
    memset(big, 'z', n);
    big[n] = '\0';
    snprintf(json, n + 100, "{\"op\":\"kv.put\",\"key\":\"big\",\"value\":\"%s\"}", big);
    struct buf cmd;
    buf_init(&cmd);
    struct err err;
    assert_int_equal(storage_json_to_value(json, strlen(json), &cmd, &err), 0);
    struct cl_result r;
    memset(&r, 0, sizeof r);
    double t0 = cl_now_ms();
    repl_write(c.nodes[l].g, cmd.data, cmd.len, cl_done_cb(), &r);
    r.returned = true;
    cl_wait(&c, &r, 20000);
    assert_int_equal(r.code, 0);
    printf("# 3 MiB write: %.1f ms\n", cl_now_ms() - t0);
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    buf_close(&cmd);
    free(json);
    free(big);
    cl_teardown(&c);
}

static void test_linearizable_read_sees_latest_write(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    struct cl_result w, r;
    double tsum = 0;
    int n = 50;
    for (int i = 0; i < n; i++) {
        cl_write(&c, l, &w, "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":%d}", i);
        cl_wait(&c, &w, 5000);
        assert_int_equal(w.code, 0);
        double t0 = cl_now_ms();
        cl_read(&c, l, false, &r, "{\"op\":\"kv.get\",\"key\":\"x\"}");
        assert_false(r.done);
        cl_wait(&c, &r, 5000);
        tsum += cl_now_ms() - t0;
        assert_int_equal(r.code, 0);
        char want[64];
        snprintf(want, sizeof want, "{\"value\":%d,", i);
        if (strstr(r.json, want) != r.json)
            fail_msg("read %s, expected value %d", r.json, i);
    }
    printf("# linearizable read (barrier) latency: %.3f ms avg\n", tsum / n);
    /* Many reads at once share barriers. */
    struct repl_status before, after;
    repl_group_status(c.nodes[l].g, &before);
    struct cl_result rs[100];
    for (int i = 0; i < 100; i++)
        cl_read(&c, l, false, &rs[i], "{\"op\":\"kv.get\",\"key\":\"x\"}");
    for (int i = 0; i < 100; i++) {
        cl_wait(&c, &rs[i], 5000);
        assert_int_equal(rs[i].code, 0);
    }
    repl_group_status(c.nodes[l].g, &after);
    assert_true(after.last_index - before.last_index <= 2);
    cl_teardown(&c);
}

static bool applied_on(void *arg)
{
    struct cl_node *nd = arg;
    return storage_version(nd->engine) >= 1;
}

static void test_stale_read_on_follower(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    cl_start(&c, 3);
    int l = cl_wait_leader(&c, 10000);
    int f = follower_of(&c, l);
    struct cl_result r;
    cl_read(&c, f, true, &r, "{\"op\":\"kv.get\",\"key\":\"s\"}");
    assert_false(r.done);
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, 0);
    assert_string_equal(r.json, "null");
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"s\",\"value\":\"hello\"}");
    cl_wait(&c, &r, 5000);
    assert_int_equal(r.code, 0);
    cl_run_until(&c, applied_on, &c.nodes[f], 5000, "the follower applies the write");
    cl_read(&c, f, true, &r, "{\"op\":\"kv.get\",\"key\":\"s\"}");
    cl_wait(&c, &r, 2000);
    assert_int_equal(r.code, 0);
    assert_non_null(strstr(r.json, "\"value\":\"hello\""));
    cl_teardown(&c);
}

static void guard_expired(uv_timer_t *t)
{
    *(bool *)t->data = true;
    uv_stop(t->loop);
}

static void test_group_open_bad_options(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct storage *s;
    assert_int_equal(storage_new(NULL, &s), 0);
    char dir[] = "/tmp/strata-repl-opt-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct repl_options base;
    repl_options_default(&base);
    base.node_id = 1;
    base.address = "127.0.0.1:9";
    base.data_dir = dir;
    struct {
        const char *what;
        struct repl_options o;
    } cases[9];
    int n = 0;
    cases[n].what = "node_id";
    cases[n].o = base;
    cases[n++].o.node_id = 0;
    cases[n].what = "host:port";
    cases[n].o = base;
    cases[n++].o.address = "nohostport";
    cases[n].what = "address";
    cases[n].o = base;
    cases[n++].o.address = NULL;
    cases[n].what = "data_dir";
    cases[n].o = base;
    cases[n++].o.data_dir = NULL;
    cases[n].what = "heartbeat";
    cases[n].o = base;
    cases[n++].o.heartbeat_timeout_ms = 2000;
    cases[n].what = "snapshot_threshold";
    cases[n].o = base;
    cases[n++].o.snapshot_threshold = 0;
    cases[n].what = "snapshot_trailing"; /* 0 is how raft marks an install */
    cases[n].o = base;
    cases[n++].o.snapshot_trailing = 0;
    cases[n].what = "max_entry_bytes";
    cases[n].o = base;
    cases[n++].o.max_entry_bytes = 10;
    cases[n].what = "bind_host";
    cases[n].o = base;
    cases[n++].o.bind_host = "not-an-ip";
    for (int i = 0; i < n; i++) {
        struct repl_group *g = NULL;
        struct err err;
        err_clear(&err);
        int rc = repl_group_open(&loop, &cases[i].o, s, NULL, NULL, &g, &err);
        assert_int_equal(rc, STRATA_INVALID_ARGUMENT);
        assert_null(g);
        if (strstr(err.msg, cases[i].what) == NULL)
            fail_msg("message \"%s\" does not name %s", err.msg, cases[i].what);
    }
    /* Opened but never started: stops cleanly; bootstrap refuses bad members. */
    struct repl_group *g = NULL;
    struct err err;
    assert_int_equal(repl_group_open(&loop, &base, s, NULL, NULL, &g, &err), 0);
    struct repl_member m[2];
    memset(m, 0, sizeof m);
    m[0].id = 2;
    snprintf(m[0].address, sizeof m[0].address, "127.0.0.1:10");
    assert_int_equal(repl_group_bootstrap(g, m, 1, &err), STRATA_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, "not among the members"));
    assert_int_equal(repl_group_bootstrap(g, m, 0, &err), STRATA_INVALID_ARGUMENT);
    struct cl_result r;
    memset(&r, 0, sizeof r);
    repl_write(g, (const uint8_t *)"\x80", 1, cl_done_cb(), &r);
    r.returned = true;
    repl_group_stop(g, NULL, NULL);
    /* Bounded: an unreferenced timer does not keep the loop alive but stops a hang. */
    uv_timer_t guard;
    bool expired = false;
    uv_timer_init(&loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, guard_expired, 10000, 0);
    uv_unref((uv_handle_t *)&guard);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_false(expired);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(r.done);
    assert_int_equal(r.code, STRATA_UNAVAILABLE);
    assert_int_equal(uv_loop_close(&loop), 0);
    storage_free(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_group_bootstrap_elects_leader, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_group_host_names_resolve, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_group_writes_applied_on_all, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_write_on_follower_not_leader, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_write_bad_input, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_concurrent_writes_batched, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_pipelined_writes_batched, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_entry_bound_splits_batches, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_large_value_replicates, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_linearizable_read_sees_latest_write, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_stale_read_on_follower, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_group_open_bad_options, cl_fixture_teardown),
    };
    if (getenv("CL_ONLY") != NULL)
        cmocka_set_test_filter(getenv("CL_ONLY"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
