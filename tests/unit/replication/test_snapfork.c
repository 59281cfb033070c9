/* Snapshots encoded by a forked child (replication/snapfork.c): writes go on while the
 * child encodes, and its snapshot installs on a lagging follower; a child killed
 * mid-encode fails that snapshot only and the next one succeeds; a group closed while its
 * child encodes leaves no child behind; when no child can be forked the engine is encoded
 * on the loop as before. The failpoint strata/raft/snapshot/encode (delay, crash) and
 * strata/raft/snapshot/fork make the timing deterministic (test builds, STRATA_FIU). */
#include "cluster.h"
#include "group.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef STRATA_FIU
#include <fiu-control.h>
#include <fiu.h>
#endif

#define ENCODE_POINT "strata/raft/snapshot/encode"
#define FORK_POINT "strata/raft/snapshot/fork"

static void need_failpoints(void)
{
#ifdef STRATA_FIU
    fiu_init(0);
#else
    skip(); /* the timing below needs the failpoints: cmake -DSTRATA_FIU=ON */
#endif
}

static void enable_point(const char *name, int action, uintptr_t info)
{
#ifdef STRATA_FIU
    assert_int_equal(fiu_enable(name, action, (void *)info, 0), 0);
#else
    (void)name;
    (void)action;
    (void)info;
#endif
}

static void disable_point(const char *name)
{
#ifdef STRATA_FIU
    fiu_disable(name);
#else
    (void)name;
#endif
}

static struct snapfork *snap_of(struct cluster *c, int i)
{
    return &c->nodes[i].g->snap;
}

/* A running node whose group has an encoder running, or -1. */
static int encoding_node(struct cluster *c)
{
    for (int i = 0; i < c->n; i++)
        if (c->nodes[i].g != NULL && !c->nodes[i].stopping && snap_of(c, i)->state == SF_ENCODING &&
            snap_of(c, i)->child != NULL)
            return i;
    return -1;
}

struct writer {
    struct cluster *c;
    int leader;
    int next;
};

static void write_next(struct writer *w)
{
    char key[32];
    snprintf(key, sizeof key, "w%d", w->next);
    cl_put_ok(w->c, w->leader, key, w->next++);
}

/* Writes one key at a time until some node encodes (at most max writes). */
static int write_until_encoding(struct writer *w, int max)
{
    for (int k = 0; k < max && encoding_node(w->c) < 0; k++)
        write_next(w);
    int e = encoding_node(w->c);
    if (e < 0)
        fail_msg("no snapshot encoder started within %d writes", max);
    return e;
}

/* 3 nodes snapshotting every `threshold` entries; returns the leader. */
static int start_cluster(struct cluster *c, unsigned threshold, unsigned trailing)
{
    cl_init(c, 3);
    c->opts.snapshot_threshold = threshold;
    c->opts.snapshot_trailing = trailing;
    cl_start(c, 3);
    return cl_wait_leader(c, 10000);
}

/* 3 nodes snapshotting every 32 entries, writes on the leader until a node's encoder runs,
 * held in its encode for delay_ms by the failpoint (then disabled: later ones run at full
 * speed). Returns that node. */
static int start_held_encoder(struct cluster *c, struct writer *w, uintptr_t delay_ms)
{
    *w = (struct writer){c, start_cluster(c, 32, 8), 0};
    enable_point(ENCODE_POINT, FIO_DELAY, delay_ms);
    int e = write_until_encoding(w, 200);
    disable_point(ENCODE_POINT);
    assert_true(snap_of(c, e)->last_pid > 0);
    return e;
}

static bool reaped_everywhere(void *arg)
{
    struct cluster *c = arg;
    for (int i = 0; i < c->n; i++)
        if (c->nodes[i].g != NULL && snap_of(c, i)->child != NULL)
            return false;
    return snapfork_children() == 0;
}

/* The pid was this process's child and has been reaped: waitpid has nothing left. */
static void assert_reaped(pid_t pid)
{
    int status;
    errno = 0;
    assert_int_equal(waitpid(pid, &status, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

static bool child_gone(void *arg)
{
    struct cl_node *nd = arg;
    return nd->g->snap.child == NULL;
}

/* raft_uv has written a snapshot past `index` (the put completes after the encode). */
struct snap_past {
    struct cl_node *nd;
    uint64_t index;
};

static bool snapshot_past(void *arg)
{
    struct snap_past *sp = arg;
    struct repl_status st;
    repl_group_status(sp->nd->g, &st);
    return st.snapshot_index > sp->index;
}

static bool snapshot_installed(void *arg)
{
    return ((struct cl_node *)arg)->snapshots_installed > 0;
}

/* Writes go on while the leader's child encodes (held 1.5 s by the failpoint, so a loop
 * blocked by the encode would show as a 1.5 s gap between acks), and the snapshot it
 * produced installs on a follower that missed the truncated log. */
static void test_snapfork_writes_continue_and_snapshot_installs(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip(); /* sanitizer builds never fork an encoder (snapfork.c: libasan is not fork-safe) */
#endif
    need_failpoints();
    struct cluster c;
    int l = start_cluster(&c, 64, 16);
    int f = (l + 1) % 3;
    struct writer w = {&c, l, 0};
    for (int k = 0; k < 20; k++)
        cl_put_ok(&c, l, "early", k);
    cl_wait_caught_up(&c, 5000);
    cl_stop(&c, f); /* lags from here on */

    enable_point(ENCODE_POINT, FIO_DELAY, 1500);
    uint64_t encoded_before = snap_of(&c, l)->encoded_total;
    struct repl_status st0;
    repl_group_status(c.nodes[l].g, &st0);
    /* Until the leader's own encoder runs (a follower's may come first). */
    for (int k = 0; k < 400 && snap_of(&c, l)->state != SF_ENCODING; k++)
        write_next(&w);
    assert_int_equal(snap_of(&c, l)->state, SF_ENCODING);
    pid_t pid = snap_of(&c, l)->last_pid;
    assert_true(pid > 0);
    disable_point(ENCODE_POINT); /* later snapshots run at full speed */

    /* Serial writes while it encodes: each is a commit on a majority and an apply on the
     * loop the snapshot started from. */
    int during = 0;
    double gap_max = 0, last = cl_now_ms(), t0 = last;
    while (snap_of(&c, l)->state == SF_ENCODING) {
        if (cl_now_ms() - t0 > 20000)
            fail_msg("the encode did not finish in 20 s");
        write_next(&w);
        double now = cl_now_ms();
        if (now - last > gap_max)
            gap_max = now - last;
        last = now;
        during++;
    }
    struct snapfork *sf = snap_of(&c, l);
    printf("# %d writes acked while pid %ld encoded (%.0f ms), longest gap between acks "
           "%.1f ms; snapshot: %s\n",
           during, (long)pid, cl_now_ms() - t0, gap_max, c.nodes[l].snapshot_detail);
    assert_true(during >= 10);
    assert_true(gap_max < 1000.0); /* the encode (>= 1.5 s) did not block the loop */
    /* The held one, and perhaps already the next (its log is past the threshold). */
    assert_true(sf->encoded_total >= encoded_before + 1);
    assert_int_equal(sf->sync_total, 0);
    assert_true(sf->last_stall_ns < 1500u * 1000000u);

    /* Enough entries past the snapshot for raft to drop the follower's part of the log. */
    for (int k = 0; k < 150; k++)
        write_next(&w);
    cl_run_until(&c, reaped_everywhere, &c, 10000, "every encoder reaped");
    assert_reaped(pid);
    struct repl_status st;
    repl_group_status(c.nodes[l].g, &st);
    printf("# leader: snapshot index %llu -> %llu, last index %llu\n",
           (unsigned long long)st0.snapshot_index, (unsigned long long)st.snapshot_index,
           (unsigned long long)st.last_index);
    assert_true(st.snapshot_index > st0.snapshot_index);

    cl_open(&c, f, 3); /* same data dir: behind the leader's first kept entry */
    cl_run_until(&c, snapshot_installed, &c.nodes[f], 15000, "snapshot install on the follower");
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    assert_int_equal(storage_version(c.nodes[f].engine), (uint64_t)(20 + w.next));
    cl_teardown(&c);
}

/* A child killed by PID in the middle of its encode: that snapshot fails (raft keeps its
 * log, nothing partial is written), the group carries on, and after the back-off the next
 * snapshot succeeds. Then the same with the child's own failure (EIO at the failpoint),
 * and with a child that stops making progress (killed by the group). */
static void test_snapfork_killed_child_fails_then_next_succeeds(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip(); /* sanitizer builds never fork an encoder (snapfork.c: libasan is not fork-safe) */
#endif
    need_failpoints();
    struct cluster c;
    struct writer w;
    int e = start_held_encoder(&c, &w, 10000);
    struct snapfork *sf = snap_of(&c, e);
    pid_t pid = sf->last_pid;
    struct repl_status st0;
    repl_group_status(c.nodes[e].g, &st0);
    uint64_t failed0 = sf->failed_total, encoded0 = sf->encoded_total;
    assert_int_equal(kill(pid, SIGKILL), 0);
    cl_run_until(&c, child_gone, &c.nodes[e], 10000, "the killed encoder reaped");
    assert_reaped(pid);
    assert_int_equal(sf->failed_total, failed0 + 1);
    assert_int_equal(sf->encoded_total, encoded0);
    assert_int_not_equal(sf->state, SF_ENCODING);
    struct repl_status st1;
    repl_group_status(c.nodes[e].g, &st1);
    assert_int_equal(st1.snapshot_index, st0.snapshot_index); /* nothing was put */

    /* The group goes on; after the 1 s back-off its next snapshot succeeds. */
    double t0 = cl_now_ms();
    while (sf->encoded_total == encoded0) {
        if (cl_now_ms() - t0 > 20000)
            fail_msg("no snapshot succeeded in 20 s after the killed one");
        write_next(&w);
        cl_run_for(&c, 5);
    }
    cl_run_until(&c, child_gone, &c.nodes[e], 10000, "the encoder reaped");
    struct snap_past sp = {&c.nodes[e], st0.snapshot_index};
    cl_run_until(&c, snapshot_past, &sp, 10000, "the snapshot written by raft_uv");
    struct repl_status st2;
    repl_group_status(c.nodes[e].g, &st2);
    printf("# node %d: encoder %ld killed, snapshot index stayed %llu; next one after %.0f ms "
           "at %llu (%s)\n",
           e + 1, (long)pid, (unsigned long long)st1.snapshot_index, cl_now_ms() - t0,
           (unsigned long long)st2.snapshot_index, c.nodes[e].snapshot_detail);
    assert_true(st2.snapshot_index > st0.snapshot_index);
    assert_int_equal(sf->failures_in_row, 0);

    /* The child's own failure (EIO while writing its output) goes the same way. */
    uint64_t failed1 = sf->failed_total, encoded1 = sf->encoded_total;
    for (int i = 0; i < c.n; i++)
        snap_of(&c, i)->retry_after_ns = 0;
    enable_point(ENCODE_POINT, FIO_EIO, 0);
    t0 = cl_now_ms();
    while (sf->failed_total == failed1) {
        if (cl_now_ms() - t0 > 20000)
            fail_msg("no failed encode in 20 s with EIO at " ENCODE_POINT);
        write_next(&w);
    }
    disable_point(ENCODE_POINT);
    assert_int_equal(sf->encoded_total, encoded1);
    while (sf->encoded_total == encoded1) {
        if (cl_now_ms() - t0 > 30000) {
            struct repl_status sx;
            repl_group_status(c.nodes[e].g, &sx);
            fail_msg("no snapshot succeeded after the EIO one (node %d: state %d, child %s, "
                     "%u children in the process, failures in a row %u, busy %llu, retry in "
                     "%lld ms, raft snapshot taking %d, commit %llu, snapshot index %llu, "
                     "faultio held %u)",
                     e + 1, (int)sf->state, sf->child ? "yes" : "no", snapfork_children(),
                     sf->failures_in_row, (unsigned long long)sf->busy_total,
                     (long long)((int64_t)(sf->retry_after_ns - clock_mono_ns()) / 1000000),
                     (int)c.nodes[e].g->raft.legacy.snapshot_taking,
                     (unsigned long long)sx.commit_index, (unsigned long long)sx.snapshot_index,
                     c.nodes[e].g->fio.held);
        }
        write_next(&w);
        cl_run_for(&c, 5);
    }

    /* A child that stops making progress (asleep in its encode here) is killed as stuck:
     * on every node, since any may hold the two encoder slots. */
    uint64_t failed2[CL_MAX];
    for (int i = 0; i < c.n; i++) {
        snap_of(&c, i)->stuck_after_ms = 300;
        snap_of(&c, i)->retry_after_ns = 0;
        failed2[i] = snap_of(&c, i)->failed_total;
    }
    enable_point(ENCODE_POINT, FIO_DELAY, 10000);
    t0 = cl_now_ms();
    int s = -1;
    while (s < 0) {
        if (cl_now_ms() - t0 > 8000)
            fail_msg("a stuck encoder was not killed in 8 s");
        write_next(&w);
        for (int i = 0; i < c.n && s < 0; i++)
            if (snap_of(&c, i)->failed_total > failed2[i])
                s = i;
    }
    disable_point(ENCODE_POINT);
    pid_t stuck = snap_of(&c, s)->last_pid;
    cl_run_until(&c, child_gone, &c.nodes[s], 10000, "the stuck encoder reaped");
    assert_reaped(stuck);
    printf("# node %d: a stuck encoder (pid %ld) was killed after %.0f ms\n", s + 1, (long)stuck,
           cl_now_ms() - t0);
    cl_wait_caught_up(&c, 10000);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

/* Stopping a group whose child encodes (for 10 s, by the failpoint) kills and reaps that
 * child by PID: the stop is quick and no child is left. */
static void test_snapfork_close_while_encoding_leaves_no_child(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip(); /* sanitizer builds never fork an encoder (snapfork.c: libasan is not fork-safe) */
#endif
    need_failpoints();
    struct cluster c;
    struct writer w;
    int e = start_held_encoder(&c, &w, 10000);
    pid_t pid = snap_of(&c, e)->last_pid;
    assert_int_equal(kill(pid, 0), 0); /* alive, asleep in its encode */
    /* It offers itself to the OOM killer before the node (first thing it does: wait a
     * little for it). */
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/oom_score_adj", (long)pid);
    int adj = 0;
    for (int tries = 0; tries < 200 && adj != 1000; tries++) {
        char text[16] = "";
        FILE *fp = fopen(path, "r");
        assert_non_null(fp);
        assert_non_null(fgets(text, sizeof text, fp));
        fclose(fp);
        adj = atoi(text);
        if (adj != 1000)
            usleep(10000);
    }
    assert_int_equal(adj, 1000);
    double t0 = cl_now_ms();
    cl_stop(&c, e);
    double stop_ms = cl_now_ms() - t0;
    printf("# node %d stopped in %.0f ms while pid %ld encoded\n", e + 1, stop_ms, (long)pid);
    assert_true(stop_ms < 5000.0);
    assert_reaped(pid);
    errno = 0;
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    /* The others' encoders (if any) are bounded by the failpoint's 10 s too; close all. */
    cl_teardown(&c);
    assert_int_equal(snapfork_children(), 0);
}

/* No child can be forked: the engine is encoded on the loop, as before, and every
 * replica still ends with the same state. */
static void test_snapfork_fork_failure_encodes_on_the_loop(void **state)
{
    (void)state;
    need_failpoints();
    struct cluster c;
    int l = start_cluster(&c, 32, 8);
    enable_point(FORK_POINT, FIO_EIO, 0);
    for (int k = 0; k < 100; k++)
        cl_put_ok(&c, l, "k", k);
    cl_wait_caught_up(&c, 5000);
    disable_point(FORK_POINT);
    struct snapfork *sf = snap_of(&c, l);
    printf("# fork refused: %llu snapshots encoded on the loop, %llu by a child (%s)\n",
           (unsigned long long)sf->sync_total, (unsigned long long)sf->encoded_total,
           c.nodes[l].snapshot_detail);
    assert_true(sf->sync_total >= 2);
    assert_int_equal(sf->encoded_total, 0);
    assert_true(c.nodes[l].snapshots_taken >= 2);
    assert_int_equal(snapfork_children(), 0);
    assert_int_equal(cl_assert_same_state(&c), 3);
    cl_teardown(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_snapfork_writes_continue_and_snapshot_installs,
                                  cl_fixture_teardown),
        cmocka_unit_test_teardown(test_snapfork_killed_child_fails_then_next_succeeds,
                                  cl_fixture_teardown),
        cmocka_unit_test_teardown(test_snapfork_close_while_encoding_leaves_no_child,
                                  cl_fixture_teardown),
        cmocka_unit_test_teardown(test_snapfork_fork_failure_encodes_on_the_loop,
                                  cl_fixture_teardown),
    };
    if (getenv("CL_ONLY") != NULL)
        cmocka_set_test_filter(getenv("CL_ONLY"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
