/* The disk watchdog and the repair of torn open segments: a group short of free space
 * refuses writes at once with the reason and hands its leadership away; an open segment
 * cut by a torn write is zero-extended before raft_uv loads it (docs/reliability.md). */
#include "cluster.h"
#include "faultio.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* More than any filesystem has free: the free-space check always fails. */
#define HUGE_RESERVE (UINT64_C(1) << 62)

static long long file_size(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static void make_file(const char *dir, const char *name, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (size_t i = 0; i < len; i++)
        fputc(0x40 + (int)(i % 26), f);
    fclose(f);
}

static void test_faultio_repair_extends_only_short_open_segments(void **state)
{
    (void)state;
    char dir[] = "/tmp/strata-test-repair.XXXXXX";
    assert_non_null(mkdtemp(dir));
    const uint64_t seg = 64 * 1024;
    make_file(dir, "open-1", 3790);                           /* cut by a torn write */
    make_file(dir, "open-2", (size_t)seg);                    /* whole */
    make_file(dir, "open-3x", 100);                           /* not a segment name */
    make_file(dir, "0000000000000002-0000000000000031", 200); /* closed: sized to fit */
    make_file(dir, "metadata1", 32);
    char sub[600];
    snprintf(sub, sizeof sub, "%s/open-4", dir); /* a directory with a segment's name */
    assert_int_equal(mkdir(sub, 0700), 0);
    make_file(dir, "open-5", 0); /* empty: raft_uv removes it itself */

    struct err err;
    err_clear(&err);
    assert_int_equal(faultio_repair(dir, seg, 7, &err), 0);
    assert_int_equal(file_size(dir, "open-1"), (long long)seg);
    assert_int_equal(file_size(dir, "open-2"), (long long)seg);
    assert_int_equal(file_size(dir, "open-3x"), 100);
    assert_int_equal(file_size(dir, "0000000000000002-0000000000000031"), 200);
    assert_int_equal(file_size(dir, "metadata1"), 32);
    assert_int_equal(file_size(dir, "open-5"), 0);

    /* The data is kept and only zeros follow it. */
    char path[600];
    snprintf(path, sizeof path, "%s/open-1", dir);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    for (size_t i = 0; i < seg; i++) {
        int ch = fgetc(f);
        int want = i < 3790 ? 0x40 + (int)(i % 26) : 0;
        if (ch != want)
            fail_msg("byte %zu of the repaired segment is %d, want %d", i, ch, want);
    }
    fclose(f);

    /* A second pass has nothing to do; a missing directory is not an error. */
    assert_int_equal(faultio_repair(dir, seg, 7, &err), 0);
    char gone[600];
    snprintf(gone, sizeof gone, "%s/nothing-here", dir);
    assert_int_equal(faultio_repair(gone, seg, 7, &err), 0);

    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

struct fault_wait {
    struct cluster *c;
    int i;
};

static bool disk_fault_seen(void *arg)
{
    struct fault_wait *w = arg;
    struct repl_status st;
    repl_group_status(w->c->nodes[w->i].g, &st);
    return st.disk_fault;
}

/* A single voter cannot hand leadership away: it keeps leading and refuses writes with
 * the reason, at once, while reads go on. */
static void test_low_space_single_node_refuses_writes(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 1);
    c.opts.disk_reserve_bytes = HUGE_RESERVE;
    cl_start(&c, 1);
    assert_int_equal(cl_wait_leader(&c, 10000), 0);
    struct fault_wait w = {&c, 0};
    cl_run_until(&c, disk_fault_seen, &w, 5000, "the disk fault");
    struct repl_status st;
    repl_group_status(c.nodes[0].g, &st);
    assert_true(st.disk_fault);
    assert_non_null(strstr(st.disk_error, "disk full on node 1 (group 7)"));
    assert_true(st.disk_free_bytes > 0);

    struct cl_result r;
    double t0 = cl_now_ms();
    cl_write(&c, 0, &r, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1}");
    cl_wait(&c, &r, 5000);
    double took = cl_now_ms() - t0;
    assert_int_equal(r.code, STRATA_UNAVAILABLE);
    assert_non_null(strstr(r.json, "disk full on node 1"));
    assert_non_null(strstr(r.json, "writes are refused here"));
    assert_true(took < 1000); /* fails fast instead of hanging */
    printf("# refused in %.1f ms: %s\n", took, r.json);

    cl_read(&c, 0, false, &r, "{\"op\":\"kv.get\",\"key\":\"k\"}");
    cl_wait(&c, &r, 5000);
    assert_int_equal(r.code, 0);
    cl_teardown(&c);
}

struct elected_wait {
    struct cl_node *nd;
    int before;
};

static bool elected_again(void *arg)
{
    struct elected_wait *w = arg;
    return w->nd->elected > w->before;
}

struct other_wait {
    struct cluster *c;
    int not ;
};

static bool led_by_other(void *arg)
{
    struct other_wait *w = arg;
    int l = cl_leader_of(w->c);
    return l >= 0 && l != w->not ;
}

/* A leader short of space hands its leadership to a healthy voter, also after being
 * made leader on purpose; the group keeps taking writes through the others. */
static void test_low_space_leader_hands_leadership_away(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    c.opts.disk_reserve_bytes = HUGE_RESERVE;
    cl_open(&c, 0, 3); /* node 1: "full" */
    c.opts.disk_reserve_bytes = 0;
    cl_open(&c, 1, 3);
    cl_open(&c, 2, 3);
    struct fault_wait w = {&c, 0};
    cl_run_until(&c, disk_fault_seen, &w, 10000, "node 1's disk fault");
    int l = cl_wait_leader(&c, 10000);
    for (int k = 0; k < 5; k++) {
        struct cl_result r;
        cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"a%d\",\"value\":%d}", k, k);
        cl_wait(&c, &r, 10000);
        assert_int_equal(r.code, 0);
    }
    cl_wait_caught_up(&c, 10000);

    /* Make node 1 lead: it must give the leadership back within an election timeout. */
    int elected = c.nodes[0].elected;
    if (l == 0) {
        elected--; /* it already leads */
    } else {
        struct cl_result t;
        memset(&t, 0, sizeof t);
        repl_transfer(c.nodes[l].g, c.nodes[0].id, cl_done_cb(), &t);
        t.returned = true;
        cl_wait(&c, &t, 10000);
        printf("# transfer to node 1: %s %s\n", err_name(t.code), t.code ? t.json : "");
    }
    struct elected_wait ew = {&c.nodes[0], elected};
    cl_run_until(&c, elected_again, &ew, 10000, "node 1 elected");
    double t0 = cl_now_ms();
    struct other_wait ow = {&c, 0};
    cl_run_until(&c, led_by_other, &ow, 5000, "node 1 handing its leadership away");
    printf("# node 1 (low space) handed leadership away %.0f ms after its election\n",
           cl_now_ms() - t0);
    l = cl_wait_leader(&c, 10000);
    assert_int_not_equal(l, 0);

    struct cl_result r;
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":2}");
    cl_wait(&c, &r, 10000);
    assert_int_equal(r.code, 0);
    /* A follower answers NOT_LEADER, as before: its disk is not asked. */
    cl_write(&c, 0, &r, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":3}");
    cl_wait(&c, &r, 10000);
    assert_int_equal(r.code, STRATA_NOT_LEADER);
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

/* Every node short of space (one volume under all): each node waits longer before each
 * hand-off of the same fault, so the group soon stops electing, and whoever leads
 * refuses writes at once. */
static void test_low_space_everywhere_bounded_handoffs(void **state)
{
    (void)state;
    struct cluster c;
    cl_init(&c, 3);
    c.opts.disk_reserve_bytes = HUGE_RESERVE;
    cl_start(&c, 3);
    cl_wait_leader(&c, 10000);
    int counts[3] = {0, 0, 0};
    for (int s = 0; s < 3; s++) {
        int before = 0, after = 0;
        for (int i = 0; i < 3; i++)
            before += c.nodes[i].elected;
        cl_run_for(&c, 2000);
        for (int i = 0; i < 3; i++)
            after += c.nodes[i].elected;
        counts[s] = after - before;
    }
    printf("# all disks full: elections per 2 s: %d, %d, %d (election timeout %u ms)\n", counts[0],
           counts[1], counts[2], c.opts.election_timeout_ms);
    /* Back-off from half an election timeout, doubling per node: after 4 s at most one
     * hand-off per node in 2 s. */
    assert_true(counts[2] <= 3);
    assert_true(counts[2] <= counts[0]);
    int l = cl_wait_leader(&c, 10000);
    struct cl_result r;
    cl_write(&c, l, &r, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":4}");
    cl_wait(&c, &r, 5000);
    assert_true(r.code == STRATA_UNAVAILABLE || r.code == STRATA_NOT_LEADER);
    cl_teardown(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_faultio_repair_extends_only_short_open_segments),
        cmocka_unit_test_teardown(test_low_space_single_node_refuses_writes, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_low_space_leader_hands_leadership_away, cl_fixture_teardown),
        cmocka_unit_test_teardown(test_low_space_everywhere_bounded_handoffs, cl_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
