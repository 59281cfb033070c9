/* Sharding with real processes: 5 nodes, 3 shards, replication factor 3. Branches made
 * through different nodes spread over every shard; forks stay on their parent's shard;
 * any node serves any branch (forwarding); cross-shard merges are refused; kill -9 of a
 * node leaves every branch readable and writable, with no acknowledged write lost. */
#include "harness.h"
#include "tests.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#define NBR 12
#define PER 20

/* The shard of `name` in node i's cluster.placement answer (0 if absent). */
static uint32_t shard_of(struct h_cluster *c, int i, const char *name, uint64_t *epoch)
{
    struct strata *db = h_open_node(c, i, NULL);
    if (db == NULL)
        return 0;
    struct buf res;
    buf_init(&res);
    uint32_t shard = 0;
    if (h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.placement\",\"fresh\":true}") == 0) {
        struct h_obj x;
        if (h_obj_parse(&x, &res) == 0) {
            if (epoch)
                *epoch = h_map_u64(x.o, "epoch");
            const msgpack_object *t = h_map_get(x.o, "table");
            const msgpack_object *b = t ? h_map_get(t, "branches") : NULL;
            for (uint32_t k = 0; b && b->type == MSGPACK_OBJECT_ARRAY && k < b->via.array.size;
                 k++) {
                const msgpack_object *e = &b->via.array.ptr[k];
                if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size == 3 &&
                    e->via.array.ptr[0].type == MSGPACK_OBJECT_STR &&
                    e->via.array.ptr[0].via.str.size == strlen(name) &&
                    memcmp(e->via.array.ptr[0].via.str.ptr, name, strlen(name)) == 0)
                    shard = (uint32_t)e->via.array.ptr[1].via.u64;
            }
            h_obj_free(&x);
        }
    }
    buf_close(&res);
    strata_close(db);
    return shard;
}

void test_shards(void)
{
    static struct h_cluster c;
    static const char *const extra[] = {"--shards", "3", "--replication-factor", "3", NULL};
    h_cluster_init(&c, "shards", 5, extra);
    REQUIRE(h_cluster_start(&c) == 0, "5 servers started (3 shards, RF 3)");
    /* Every node hosts the meta group (it has up to 5 voters); shard groups only 3. */
    h_status_group = 0;
    int ml = h_wait_leader(&c, 15000, -1);
    h_status_group = 1;
    REQUIRE(ml >= 0, "the meta group has a leader every node knows");
    /* And every shard a leader (node 3 hosts all three in the rotating layout). */
    bool all = false;
    for (uint64_t until = h_now_ms() + 20000; !all && h_now_ms() < until; h_sleep_ms(100)) {
        all = true;
        for (uint32_t g = 1; g <= 3 && all; g++) {
            struct h_status st;
            h_status_group = g;
            all = h_status(&c, 2, &st) == 0 && st.leader_id != 0;
        }
        h_status_group = 1;
    }
    CHECK(all, "every shard has a leader");

    /* Branches created through every node in turn. */
    char names[NBR][16];
    int made = 0;
    for (int b = 0; b < NBR; b++) {
        snprintf(names[b], sizeof names[b], "br-%d", b);
        struct strata *db = h_open_node(&c, b % 5, NULL);
        struct err e;
        int rc = db ? h_exec(db, 0, NULL, &e, "{\"op\":\"branch.create\",\"name\":\"%s\"}",
                             names[b])
                    : STRATA_INTERNAL;
        made += rc == 0;
        if (rc)
            h_note("create %s via node %d: %s %s", names[b], b % 5 + 1, err_name(rc), e.msg);
        strata_close(db);
    }
    CHECK(made == NBR, "%d of %d branches created, each through another node", made, NBR);
    int per_shard[4] = {0};
    for (int b = 0; b < NBR; b++) {
        uint32_t s = shard_of(&c, 0, names[b], NULL);
        if (s >= 1 && s <= 3)
            per_shard[s]++;
    }
    CHECK(per_shard[1] > 0 && per_shard[2] > 0 && per_shard[3] > 0 &&
              per_shard[1] + per_shard[2] + per_shard[3] == NBR,
          "branches spread over all shards (%d / %d / %d)", per_shard[1], per_shard[2],
          per_shard[3]);

    /* Any node lists them all, once each. */
    struct strata *db = h_open_node(&c, 4, NULL);
    REQUIRE(db != NULL, "client on node 5");
    struct buf res;
    buf_init(&res);
    struct err le;
    err_clear(&le);
    int rc = h_exec(db, 0, &res, &le, "{\"op\":\"branch.list\"}");
    size_t listed = 0;
    struct h_obj x;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        listed = x.o->type == MSGPACK_OBJECT_ARRAY ? x.o->via.array.size : 0;
        h_obj_free(&x);
    }
    CHECK(rc == 0 && listed == NBR + 1, "branch.list through node 5: %zu names (want %d) %s %s",
          listed, NBR + 1, err_name(rc), le.msg);
    buf_close(&res);

    /* A fork goes to its parent's shard; merging across shards is refused clearly. */
    rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.fork\",\"source\":\"br-0\",\"name\":\"br-0-f\"}");
    CHECK(rc == 0, "fork br-0 -> br-0-f (%s)", err_name(rc));
    uint32_t s0 = shard_of(&c, 1, "br-0", NULL), sf = shard_of(&c, 2, "br-0-f", NULL);
    CHECK(s0 != 0 && s0 == sf, "the fork is on its parent's shard (%u, %u)", s0, sf);
    int other = -1;
    for (int b = 1; b < NBR && other < 0; b++)
        if (shard_of(&c, 0, names[b], NULL) != s0)
            other = b;
    struct err e;
    rc = other < 0 ? -1
                   : h_exec(db, 0, NULL, &e,
                            "{\"op\":\"branch.merge\",\"source\":\"br-0\",\"target\":\"%s\"}",
                            names[other]);
    CHECK(rc == STRATA_INVALID_ARGUMENT && strstr(e.msg, "different shards") != NULL,
          "a merge across shards is INVALID_ARGUMENT naming the shards (%s)",
          rc > 0 ? e.msg : "no other shard");
    rc = h_exec(db, 0, NULL, &e, "{\"op\":\"kv.get\",\"branch\":\"nope\",\"key\":\"k\"}");
    CHECK(rc == STRATA_BRANCH_NOT_FOUND, "an unknown branch is BRANCH_NOT_FOUND (%s)",
          err_name(rc));
    strata_close(db);

    /* Writes to every branch through every node. */
    db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "cluster client");
    int acked = 0;
    for (int b = 0; b < NBR; b++)
        for (int k = 0; k < PER; k++)
            acked += h_exec(db, 0, NULL, NULL,
                            "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"k%d\",\"value\":\"v%d\"}",
                            names[b], k, k) == 0;
    CHECK(acked == NBR * PER, "%d of %d writes acked", acked, NBR * PER);

    /* kill -9 of node 1: a replica of shards 1 and 3 (the rotating layout), meta member. */
    h_node_kill9(&c, 0);
    int readable = 0, writable = 0;
    uint64_t until = h_now_ms() + 30000;
    for (int b = 0; b < NBR; b++) {
        for (int k = 0; k < PER; k++) {
            char key[16], out[32];
            snprintf(key, sizeof key, "k%d", k);
            int r;
            do {
                r = h_get_str(db, 0, names[b], key, out, sizeof out, NULL);
            } while (r != 0 && r != STRATA_NOT_FOUND && h_now_ms() < until);
            char want[16];
            snprintf(want, sizeof want, "v%d", k);
            readable += r == 0 && strcmp(out, want) == 0;
        }
        int w;
        do {
            w = h_exec(db, 0, NULL, NULL,
                       "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"after\",\"value\":1}",
                       names[b]);
        } while (w != 0 && h_now_ms() < until);
        writable += w == 0;
    }
    CHECK(readable == NBR * PER, "after kill -9 of node 1: %d of %d acked writes read back",
          readable, NBR * PER);
    CHECK(writable == NBR, "every branch writable again (%d of %d)", writable, NBR);
    strata_close(db);
    h_finish();
}
