/* Integration tests of a 3-node cluster of real servers: replication with stale reads
 * on every node, kill -9 of the leader under a writing client, a killed follower that
 * restarts from its data dir, and SIGTERM's leadership hand-off. */
#include "harness.h"
#include "storage.h"
#include "tests.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- 1. Writes through the leader and through a follower reach every node ---------- */

void test_replicate(void)
{
    struct h_cluster c;
    h_cluster_init(&c, "replicate", 3, NULL);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started");
    int L = h_wait_leader(&c, 10000, -1);
    REQUIRE(L >= 0, "a leader is elected and known to every node");
    int F = (L + 1) % 3;
    h_note("leader is node %d, writing through it and through follower node %d", L + 1, F + 1);

    static struct h_kv via_leader[100], via_follower[100], all[200];
    h_kv_fill(via_leader, 100, "via-leader");
    h_kv_fill(via_follower, 100, "via-follower");

    struct strata *dl = h_open_node(&c, L, NULL);
    REQUIRE(dl != NULL, "client on the leader opened");
    CHECK(h_put_all(dl, NULL, via_leader, 100, 16) == 100, "100 writes through the leader acked");
    strata_close(dl);

    struct h_status before, after;
    REQUIRE(h_status(&c, F, &before) == 0, "follower status read");
    CHECK(strcmp(before.role, "follower") == 0, "node %d is a follower (role %s)", F + 1,
          before.role);
    struct strata *df = h_open_node(&c, F, NULL);
    REQUIRE(df != NULL, "client on the follower opened");
    CHECK(h_put_all(df, NULL, via_follower, 100, 16) == 100,
          "100 writes through the follower acked");
    /* The handle stayed on the follower, which relayed every write to the leader. */
    struct buf res;
    buf_init(&res);
    struct h_obj x;
    if (CHECK(h_exec(df, 0, &res, NULL, "{\"op\":\"cluster.status\"}") == 0 &&
                  h_obj_parse(&x, &res) == 0,
              "cluster.status on the follower's connection")) {
        CHECK(h_map_u64(x.o, "node_id") == c.nodes[F].id,
              "the client's connection is to the follower itself");
        h_obj_free(&x);
    }
    buf_close(&res);
    strata_close(df);
    REQUIRE(h_status(&c, F, &after) == 0, "follower status read again");
    CHECK(after.forwarded >= before.forwarded + 100,
          "the follower forwarded the 100 writes to the leader (forwarded %llu -> %llu)",
          (unsigned long long)before.forwarded, (unsigned long long)after.forwarded);

    memcpy(all, via_leader, sizeof via_leader);
    memcpy(all + 100, via_follower, sizeof via_follower);
    for (int i = 0; i < 3; i++) {
        long left = h_expect_on_node(&c, i, all, 200, 5000);
        CHECK(left == 0, "node %d serves all 200 values with stale reads (%ld missing/wrong)",
              i + 1, left);
    }
    /* A linearizable read through a follower is forwarded and sees the latest write. */
    struct strata *db = h_open_node(&c, F, NULL);
    char v[64] = "";
    CHECK(db && h_get_str(db, 0, NULL, "via-follower-99", v, sizeof v, NULL) == 0 &&
              strcmp(v, "via-follower-value-99") == 0,
          "linearizable read through the follower sees the last write ('%s')", v);
    strata_close(db);
}

/* ---- 2. kill -9 the leader under a writing client ---------------------------------- */

struct rec {
    struct h_kv kv;
    int code;
};

struct writer {
    const struct h_cluster *c;
    atomic_bool stop;
    atomic_size_t acked, issued;
    struct rec *recs;
    size_t cap;
};

#define WRITER_BATCH 8

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct strata *db = h_open_cluster(w->c, NULL);
    if (db == NULL)
        return NULL;
    size_t n = 0;
    while (!atomic_load(&w->stop) && n + WRITER_BATCH <= w->cap) {
        struct buf cmds[WRITER_BATCH], results[WRITER_BATCH];
        const uint8_t *ptrs[WRITER_BATCH];
        size_t lens[WRITER_BATCH];
        int codes[WRITER_BATCH];
        struct err errs[WRITER_BATCH];
        for (size_t i = 0; i < WRITER_BATCH; i++) {
            struct rec *r = &w->recs[n + i];
            snprintf(r->kv.key, sizeof r->kv.key, "w-%zu", n + i);
            snprintf(r->kv.value, sizeof r->kv.value, "value-%zu-%d", n + i, rand() % 1000000);
            char json[256];
            int l =
                snprintf(json, sizeof json, "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":\"%s\"}",
                         r->kv.key, r->kv.value);
            buf_init(&cmds[i]);
            buf_init(&results[i]);
            struct err e;
            storage_json_to_value(json, (size_t)l, &cmds[i], &e);
            ptrs[i] = cmds[i].data;
            lens[i] = cmds[i].len;
        }
        int rc = strata_exec_many(db, ptrs, lens, WRITER_BATCH, 0, results, codes, errs);
        for (size_t i = 0; i < WRITER_BATCH; i++) {
            w->recs[n + i].code = rc ? rc : codes[i];
            if (w->recs[n + i].code == 0)
                atomic_fetch_add(&w->acked, 1);
            buf_close(&cmds[i]);
            buf_close(&results[i]);
        }
        n += WRITER_BATCH;
        atomic_store(&w->issued, n);
    }
    strata_close(db);
    return NULL;
}

static bool wait_acked(struct writer *w, size_t target, unsigned ms)
{
    uint64_t deadline = h_now_ms() + ms;
    while (atomic_load(&w->acked) < target) {
        if (h_now_ms() >= deadline || atomic_load(&w->issued) + WRITER_BATCH > w->cap)
            return false;
        h_sleep_ms(5);
    }
    return true;
}

void test_failover(void)
{
    struct h_cluster c;
    h_cluster_init(&c, "failover", 3, NULL);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started");
    REQUIRE(h_wait_leader(&c, 10000, -1) >= 0, "a leader is elected");

    static struct rec recs[40000];
    static struct writer w;
    w.c = &c;
    w.recs = recs;
    w.cap = sizeof recs / sizeof recs[0];
    atomic_store(&w.stop, false);
    pthread_t th;
    srand((unsigned)getpid());
    REQUIRE(pthread_create(&th, NULL, writer_main, &w) == 0, "writer thread started");
    CHECK(wait_acked(&w, 300, 10000), "writer got 300 acks before the first crash");

    /* Two rounds: kill -9 the leader under load, see a new one elected and writes go on,
     * bring the dead node back (from its data dir) so the next round has a quorum. */
    for (int round = 1; round <= 2; round++) {
        int L = h_wait_leader(&c, 10000, -1);
        struct h_status st0;
        if (!CHECK(L >= 0 && h_status(&c, L, &st0) == 0, "round %d: the leader is known", round))
            break;
        size_t at_kill = atomic_load(&w.acked);
        uint64_t t0 = h_now_ms();
        h_node_kill9(&c, L);
        h_note("round %d: killed leader node %d (kill -9) after %zu acked writes", round, L + 1,
               at_kill);
        int L2 = h_wait_leader(&c, 10000, L);
        uint64_t elected_ms = h_now_ms() - t0;
        CHECK(L2 >= 0 && L2 != L,
              "round %d: a new leader is elected (node %d, %llu ms after the "
              "kill)",
              round, L2 + 1, (unsigned long long)elected_ms);
        struct h_status st1;
        if (L2 >= 0 && h_status(&c, L2, &st1) == 0)
            CHECK(st1.term > st0.term, "round %d: the new leader's term %llu is above the old %llu",
                  round, (unsigned long long)st1.term, (unsigned long long)st0.term);
        bool resumed = wait_acked(&w, atomic_load(&w.acked) + 300, 15000);
        CHECK(resumed,
              "round %d: writes continue after the failover (acked %zu at the kill, %zu "
              "now)",
              round, at_kill, atomic_load(&w.acked));
        if (!CHECK(h_node_start(&c, L) == 0, "round %d: the old leader restarted", round))
            break;
        int L3 = h_wait_leader(&c, 10000, -1);
        /* The restarted node must not take leadership by disrupting the group; leadership
         * may move only when the new leader hands it to the shard's preferred replica
         * (docs/sharding.md "Leaders spread"). */
        CHECK(L3 == L2 || (L3 >= 0 && L2 >= 0 &&
                           h_log_count(&c, L2, "handing leadership to its preferred replica") > 0),
              "round %d: the restarted node follows the new leader (leader %d)", round, L3 + 1);
    }
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);

    size_t issued = atomic_load(&w.issued);
    static struct h_kv acked[40000], unknown[40000], failed[40000];
    size_t na = 0, nu = 0, nf = 0;
    for (size_t i = 0; i < issued; i++) {
        if (recs[i].code == 0)
            acked[na++] = recs[i].kv;
        else if (recs[i].code == STRATA_UNKNOWN_OUTCOME)
            unknown[nu++] = recs[i].kv;
        else
            failed[nf++] = recs[i].kv;
    }
    h_note("writer: %zu issued, %zu acked, %zu unknown outcome, %zu failed", issued, na, nu, nf);
    for (size_t i = 0, shown = 0; i < issued && shown < 5; i++)
        if (recs[i].code != 0 && recs[i].code != STRATA_UNKNOWN_OUTCOME) {
            h_note("  %s failed with %s", recs[i].kv.key, err_name(recs[i].code));
            shown++;
        }

    struct strata *db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "verification client opened");
    size_t absent, wrong;
    int rc = h_batch_check(db, 0, NULL, acked, na, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0,
          "every acknowledged write is present with its value (%zu acked: %zu lost, %zu wrong; "
          "read %s)",
          na, absent, wrong, err_name(rc));
    rc = h_batch_check(db, 0, NULL, unknown, nu, &absent, &wrong);
    CHECK(rc == 0 && wrong == 0,
          "unknown-outcome writes are absent or hold their own value (%zu: %zu present, %zu "
          "wrong)",
          nu, nu - absent - wrong, wrong);
    rc = h_batch_check(db, 0, NULL, failed, nf, &absent, &wrong);
    CHECK(rc == 0 && absent == nf,
          "writes that failed with a definite error were not applied (%zu: %zu present)", nf,
          nf - absent);
    strata_close(db);
    /* Every replica, the two crashed leaders included, converges on the same history. */
    for (int i = 0; i < 3; i++) {
        long left = h_expect_on_node(&c, i, acked, na, 15000);
        CHECK(left == 0, "node %d holds every acknowledged write (%ld missing/wrong)", i + 1, left);
    }
}

/* ---- 3. A killed follower restarts from its data dir and catches up ---------------- */

void test_follower_restart(void)
{
    struct h_cluster c;
    h_cluster_init(&c, "restart", 3, NULL);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started");
    int L = h_wait_leader(&c, 10000, -1);
    REQUIRE(L >= 0, "a leader is elected");
    int F = (L + 2) % 3;
    static struct h_kv first[100], second[400];
    h_kv_fill(first, 100, "before-crash");
    h_kv_fill(second, 400, "while-down");
    /* The client's seed list starts with F, so its (idle) connection is to F when F
     * dies: the next writes must go elsewhere and be acknowledged, not end with an
     * unknown outcome on a connection the server had already closed. */
    char seeds[H_MAX_NODES * 32];
    snprintf(seeds, sizeof seeds, "%s,%s,%s", c.nodes[F].addr, c.nodes[(F + 1) % 3].addr,
             c.nodes[(F + 2) % 3].addr);
    struct strata *db = h_open_nodes(NULL, seeds);
    REQUIRE(db != NULL, "client opened");
    CHECK(h_put_all(db, NULL, first, 100, 16) == 100, "100 writes acked");
    CHECK(h_expect_on_node(&c, F, first, 100, 5000) == 0, "follower node %d has them", F + 1);

    h_node_kill9(&c, F);
    h_note("killed follower node %d (kill -9), the node the client is connected to", F + 1);
    CHECK(h_put_all(db, NULL, second, 400, 32) == 400,
          "400 writes acked while it is down (none lost to the dead idle connection)");
    char v[64] = "";
    CHECK(h_get_str(db, 0, NULL, "while-down-399", v, sizeof v, NULL) == 0 &&
              strcmp(v, "while-down-value-399") == 0,
          "the last write is readable from the leader");
    strata_close(db);

    REQUIRE(h_node_start(&c, F) == 0, "follower restarted with the same command line");
    CHECK(h_log_count(&c, F, "already holds raft state; bootstrap skipped") == 1,
          "the restart reused the data dir (bootstrap skipped)");
    long left = h_expect_on_node(&c, F, second, 400, 10000);
    CHECK(left == 0, "the restarted follower serves the writes it missed (%ld missing/wrong)",
          left);
    CHECK(h_expect_on_node(&c, F, first, 100, 2000) == 0, "and the writes from before its crash");
    struct h_status st;
    int rc = h_status(&c, F, &st); /* before CHECK: its arguments print st */
    CHECK(rc == 0 && strcmp(st.role, "follower") == 0 && st.leader_id == c.nodes[L].id,
          "it follows the same leader (role %s, leader %llu)", st.role,
          (unsigned long long)st.leader_id);
}

/* ---- 7. SIGTERM hands leadership away before the leader exits ---------------------- */

void test_sigterm_handoff(void)
{
    struct h_cluster c;
    h_cluster_init(&c, "sigterm", 3, NULL);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started");
    int L = h_wait_leader(&c, 10000, -1);
    REQUIRE(L >= 0, "a leader is elected");
    static struct h_kv kv[50];
    h_kv_fill(kv, 50, "pre-term");
    struct strata *db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "client opened");
    CHECK(h_put_all(db, NULL, kv, 50, 16) == 50, "50 writes acked");
    strata_close(db);
    /* Let heartbeats settle so every follower is current (a transfer needs a caught-up
     * target). */
    h_sleep_ms(3 * H_HEARTBEAT_MS);

    uint64_t t0 = h_now_ms();
    h_node_signal(&c, L, SIGTERM);
    /* Poll the two others directly: who leads, as fast as the loopback allows. */
    int L2 = -1;
    uint64_t dt = 0;
    while (h_now_ms() - t0 < 5000 && L2 < 0) {
        for (int i = 0; i < 3 && L2 < 0; i++) {
            struct h_status st;
            if (i != L && h_status(&c, i, &st) == 0 && strcmp(st.role, "leader") == 0) {
                L2 = i;
                dt = h_now_ms() - t0;
            }
        }
        if (L2 < 0)
            h_sleep_ms(2);
    }
    CHECK(L2 >= 0, "another node became leader after SIGTERM (node %d)", L2 + 1);
    CHECK(L2 >= 0 && dt <= H_ELECTION_MS,
          "the new leader was in place %llu ms after SIGTERM (at most one election timeout, "
          "%d ms)",
          (unsigned long long)dt, H_ELECTION_MS);
    int st = h_node_wait_exit(&c, L, 10000);
    CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the old leader exited with status 0 (wait status 0x%x)", st);
    CHECK(h_log_count(&c, L, "received SIGTERM") == 1, "its log records the SIGTERM");
    CHECK(h_log_count(&c, L, "lost leadership") >= 1, "its log records losing leadership");
    CHECK(h_log_count(&c, L, "group 1: leadership handed to") == 1,
          "its log says it transferred leadership");
    CHECK(h_log_count(&c, L, "hand-off did not finish") == 0 &&
              h_log_count(&c, L, "no leadership hand-off") == 0 &&
              h_log_count(&c, L, "did not complete") == 0,
          "no failed or skipped hand-off in its log");

    int L3 = h_wait_leader(&c, 5000, L);
    CHECK(L3 == L2, "the remaining nodes agree on the new leader");
    db = h_open_cluster(&c, NULL);
    char v[64] = "";
    CHECK(db && h_exec(db, 0, NULL, NULL,
                       "{\"op\":\"kv.put\",\"key\":\"after-term\",\"value\":\"ok\"}") == 0,
          "writes work after the hand-off");
    CHECK(db && h_get_str(db, 0, NULL, "pre-term-49", v, sizeof v, NULL) == 0 &&
              strcmp(v, "pre-term-value-49") == 0,
          "data written before the hand-off is there");
    strata_close(db);
}
