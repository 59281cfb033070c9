/* Integration tests of members that lose their data dir: a follower wiped while the
 * cluster moved on is rebuilt from the leader's snapshot, and — the safety question — a
 * wiped member that had acknowledged writes must not help elect a leader lacking them. */
#include "harness.h"
#include "tests.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- 4. A wiped follower is rebuilt by snapshot install ----------------------------- */

void test_snapshot_install(void)
{
    static const char *const extra[] = {"--snapshot-threshold", "64", "--snapshot-trailing", "32",
                                        NULL};
    struct h_cluster c;
    h_cluster_init(&c, "snapshot", 3, extra);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started (snapshot threshold 64, trailing 32)");
    int L = h_wait_leader(&c, 10000, -1);
    REQUIRE(L >= 0, "a leader is elected");
    int F = (L + 1) % 3;

    static struct h_kv early[50], bulk[3000];
    h_kv_fill(early, 50, "early");
    h_kv_fill(bulk, 3000, "bulk");
    struct strata *db = h_open_node(&c, L, NULL);
    REQUIRE(db != NULL, "client on the leader opened");
    CHECK(h_put_all(db, NULL, early, 50, 8) == 50, "50 writes acked");
    CHECK(h_expect_on_node(&c, F, early, 50, 5000) == 0, "follower node %d has them", F + 1);

    h_node_signal(&c, F, SIGTERM);
    int st = h_node_wait_exit(&c, F, 10000);
    CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "follower node %d stopped by SIGTERM, exit 0 (0x%x)", F + 1, st);

    /* Small pipelined batches: each becomes its own log entry or two, so the log passes
     * the snapshot threshold many times over. */
    uint64_t t0 = h_now_ms();
    CHECK(h_put_all(db, NULL, bulk, 3000, 16) == 3000, "3000 writes acked with the follower down");
    h_note("3000 writes in %llu ms", (unsigned long long)(h_now_ms() - t0));
    strata_close(db);
    struct h_status ls;
    REQUIRE(h_status(&c, L, &ls) == 0, "leader status read");
    h_note("leader: last index %llu, commit index %llu", (unsigned long long)ls.last_index,
           (unsigned long long)ls.commit_index);
    CHECK(h_log_count(&c, L, "snapshot at index") >= 1, "the leader took snapshots (%d in its log)",
          h_log_count(&c, L, "snapshot at index"));

    REQUIRE(h_remove_tree(c.nodes[F].dir) == 0 && access(c.nodes[F].dir, F_OK) != 0,
            "follower's data dir wiped");
    /* A member that lost its disk must not come back under its old id (see
     * test_wiped_member): the documented procedure is remove it, then join as a new id. */
    db = h_open_node(&c, L, NULL);
    REQUIRE(db != NULL, "client on the leader reopened");
    int rrc = h_exec(db, 0, NULL, NULL, "{\"op\":\"cluster.remove_member\",\"id\":%llu}",
                     (unsigned long long)c.nodes[F].id);
    CHECK(rrc == 0, "the old member %llu removed (%s)", (unsigned long long)c.nodes[F].id,
          err_name(rrc));
    strata_close(db);
    uint64_t old_id = c.nodes[F].id;
    c.nodes[F].join = c.nodes[L].addr;
    c.nodes[F].join_id = 10 + old_id;
    c.nodes[F].id = c.nodes[F].join_id;
    REQUIRE(h_node_start(&c, F) == 0, "the wiped node started with --join and node id %llu",
            (unsigned long long)c.nodes[F].id);
    /* Reads on a node that does not host the shard yet would be forwarded: first wait
     * until its own replica of shard 1 (the default branch's) has caught up. */
    struct h_status fs;
    uint64_t until = h_now_ms() + 20000;
    bool caught_up = false;
    while (!caught_up && h_now_ms() < until) {
        caught_up = h_status(&c, F, &fs) == 0 && strcmp(fs.role, "follower") == 0 &&
                    fs.applied_index >= ls.commit_index;
        if (!caught_up)
            h_sleep_ms(100);
    }
    CHECK(caught_up, "the new node's replica of shard 1 applied the leader's commit index %llu "
          "(role %s, applied %llu)", (unsigned long long)ls.commit_index, fs.role,
          (unsigned long long)fs.applied_index);
    long left = h_expect_on_node(&c, F, bulk, 3000, 20000);
    CHECK(left == 0, "the wiped follower serves all 3000 writes it never saw (%ld missing/wrong)",
          left);
    CHECK(h_expect_on_node(&c, F, early, 50, 2000) == 0, "and the 50 from before");
    CHECK(h_log_count(&c, F, "snapshot restored") >= 1 &&
              h_log_count(&c, F, "snapshot installed") >= 1,
          "it was rebuilt by a snapshot from the leader");
    /* The shard's leadership may have moved on to its preferred replica meanwhile
     * (docs/sharding.md "Leaders spread"): compare with the leader the nodes agree on now. */
    int L2 = h_wait_leader(&c, 5000, -1);
    int rc = h_status(&c, F, &fs); /* before CHECK: its arguments print fs */
    CHECK(L2 >= 0 && L2 != F && rc == 0 && strcmp(fs.role, "follower") == 0 &&
              fs.leader_id == c.nodes[L2].id && fs.nmembers == 3,
          "it follows the leader in a 3-member configuration (role %s, leader %llu, %zu members)",
          fs.role, (unsigned long long)fs.leader_id, fs.nmembers);

    /* New writes reach it through the normal log after the snapshot. */
    db = h_open_cluster(&c, NULL);
    static struct h_kv late[20];
    h_kv_fill(late, 20, "late");
    CHECK(db && h_put_all(db, NULL, late, 20, 8) == 20, "20 more writes acked");
    strata_close(db);
    CHECK(h_expect_on_node(&c, F, late, 20, 5000) == 0, "the rebuilt follower applies them");
}

/* ---- Safety: a member that lost its disk must not elect a leader missing acked writes --
 *
 * Raft's safety rests on every voter's log and vote being durable. Scenario (3 nodes,
 * leader L, followers A and B):
 *   1. A crashes; L commits writes W with B (a majority): W is acknowledged.
 *   2. L and B crash; B's disk is lost (data dir wiped).
 *   3. A restarts (its log lacks W) and B restarts with the same command line.
 *   4. L restarts later.
 * The acknowledged writes W must survive. If B re-bootstraps an empty log, A's log looks
 * more up to date than B's, B votes for A, A leads without W, and when L returns its
 * copy of W is overwritten: acknowledged writes are lost. A safe server either refuses to
 * start B with an empty dir as a member of an existing cluster, or keeps B from voting
 * until it has caught up. */

void test_wiped_member(void)
{
    struct h_cluster c;
    h_cluster_init(&c, "wiped", 3, NULL);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started");
    int L = h_wait_leader(&c, 10000, -1);
    REQUIRE(L >= 0, "a leader is elected");
    int A = (L + 1) % 3, B = (L + 2) % 3;

    static struct h_kv base[20], acked[200];
    h_kv_fill(base, 20, "base");
    h_kv_fill(acked, 200, "acked");
    struct strata *db = h_open_node(&c, L, NULL);
    REQUIRE(db != NULL, "client on the leader opened");
    CHECK(h_put_all(db, NULL, base, 20, 8) == 20, "20 writes acked with all 3 nodes up");
    CHECK(h_expect_on_node(&c, A, base, 20, 5000) == 0, "node %d (A) has them", A + 1);

    h_node_kill9(&c, A);
    CHECK(h_put_all(db, NULL, acked, 200, 16) == 200,
          "200 writes acked by leader %d with only B (node %d) following", L + 1, B + 1);
    strata_close(db);
    CHECK(h_expect_on_node(&c, B, acked, 200, 5000) == 0, "B has applied all 200");

    h_node_kill9(&c, L);
    h_node_kill9(&c, B);
    REQUIRE(h_remove_tree(c.nodes[B].dir) == 0, "B's data dir wiped (disk lost)");
    h_note("killed L (node %d) and B (node %d); restarting A (node %d) and the wiped B", L + 1,
           B + 1, A + 1);

    REQUIRE(h_node_start(&c, A) == 0, "A restarted from its data dir");
    /* A new data dir whose cluster already exists must not vote under its old id: the
     * server probes the other initial members, sees A's data and refuses (exit 2). */
    (void)h_node_start(&c, B);
    int st = h_node_wait_exit(&c, B, 5000);
    CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 2,
          "the wiped B refuses to start under its old id (wait status 0x%x)", st);
    CHECK(h_log_count(&c, B, "lost its data") == 1, "B's log says why and what to do");
    int early = h_wait_leader(&c, 3000, L);
    if (early >= 0) {
        h_note("node %d became leader while L was down", early + 1);
        /* Let the new leader commit in its term before L returns. */
        struct strata *d2 = h_open_node(&c, early, NULL);
        if (d2 && h_exec(d2, 0, NULL, NULL,
                         "{\"op\":\"kv.put\",\"key\":\"after-amnesia\",\"value\":\"x\"}") == 0)
            h_note("a write committed in the new leader's term");
        strata_close(d2);
    } else {
        h_note("no leader while L was down");
    }

    REQUIRE(h_node_start(&c, L) == 0, "L restarted from its data dir");
    int leader = h_wait_leader(&c, 10000, -1);
    REQUIRE(leader >= 0, "the cluster has a leader again (node %d)", leader + 1);
    db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "verification client opened");
    size_t absent = 0, wrong = 0;
    int rc = h_batch_check(db, 0, NULL, acked, 200, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0,
          "no acknowledged write is lost after a member lost its disk (200 acked: %zu lost, %zu "
          "wrong; read %s)",
          absent, wrong, err_name(rc));
    rc = h_batch_check(db, 0, NULL, base, 20, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0, "the 20 earlier writes are there (%zu lost)",
          absent);
    strata_close(db);
}
