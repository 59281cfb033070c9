/* The cluster-aware client (libstrata's strata://, client/net.c and client/route.c).
 *
 * client_route: 5 nodes, 3 shards, RF 3. A client given ONE seed (node 1, which hosts
 * only shard 1) creates branches spread over every shard and runs 300 puts and gets
 * across them, single and pipelined; the sum of `forwarded` over every node does not
 * move (each command went straight to its shard's leader), while a pinned client
 * (?routing=server) on the same seed does make node 1 forward. Then a client holding a
 * stale placement recovers: its branch is deleted and made again on another shard by
 * another client (MOVED), and a shard's leadership is transferred (NOT_LEADER); its next
 * commands succeed, read the right values and still cause no forward.
 *
 * client_route_unit: the routing table alone (no servers): cluster.placement answers
 * decoded or refused, the per-command decision, candidates, and URI options; and the
 * fallback against a test double that has no placement (one connection, no routes) or
 * no table yet (asked again a second later). */
#include "harness.h"
#include "placement.h"
#include "route.h"
#include "storage.h"
#include "tests.h"

#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NBR 6
#define STEADY_PUTS 150

/* Sum of `forwarded` over every running node; -1 if a node did not answer. */
static long long forwarded_sum(struct h_cluster *c)
{
    long long sum = 0;
    for (int i = 0; i < c->n; i++) {
        struct h_status st;
        if (h_status(c, i, &st))
            return -1;
        sum += (long long)st.forwarded;
    }
    return sum;
}

/* The shard of `name` in node i's fresh cluster.placement (0 if absent). */
static uint32_t shard_of(struct h_cluster *c, int i, const char *name)
{
    struct strata *db = h_open_node(c, i, NULL);
    struct buf res;
    buf_init(&res);
    uint32_t shard = 0;
    if (db && h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.placement\",\"fresh\":true}") == 0) {
        struct h_obj x;
        if (h_obj_parse(&x, &res) == 0) {
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

/* Leader id of group g as node i sees it (0 if none). */
static uint64_t group_leader(struct h_cluster *c, int i, uint32_t g)
{
    struct h_status st;
    uint32_t old = h_status_group;
    h_status_group = g;
    int rc = h_status(c, i, &st);
    h_status_group = old;
    return rc ? 0 : st.leader_id;
}

/* kv.put then check: returns how many of `n` pipelined puts (strata_exec_many) were
 * acknowledged; the commands name branches[k % nb]. */
static int put_batch(struct strata *db, char names[][16], int nb, int from, int n)
{
    struct buf cmd[16], res[16];
    const uint8_t *ptrs[16];
    size_t lens[16];
    int codes[16], ok = 0;
    struct err errs[16];
    for (int k = 0; k < n; k++) {
        char json[160];
        int key = from + k;
        snprintf(json, sizeof json,
                 "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"k%d\",\"value\":\"v%d\"}",
                 names[key % nb], key, key);
        buf_init(&cmd[k]);
        buf_init(&res[k]);
        struct err e;
        storage_json_to_value(json, strlen(json), &cmd[k], &e);
        ptrs[k] = cmd[k].data;
        lens[k] = cmd[k].len;
    }
    if (strata_exec_many(db, ptrs, lens, (size_t)n, 0, res, codes, errs) == 0)
        for (int k = 0; k < n; k++) {
            ok += codes[k] == 0;
            if (codes[k])
                h_note("pipelined put k%d: %s %s", from + k, err_name(codes[k]), errs[k].msg);
        }
    for (int k = 0; k < n; k++) {
        buf_close(&cmd[k]);
        buf_close(&res[k]);
    }
    return ok;
}

void test_client_route(void)
{
    static struct h_cluster c;
    static const char *const extra[] = {"--shards", "3", "--replication-factor", "3", NULL};
    h_cluster_init(&c, "route", 5, extra);
    REQUIRE(h_cluster_start(&c) == 0, "5 servers started (3 shards, RF 3)");
    h_status_group = 0;
    int ml = h_wait_leader(&c, 15000, -1);
    h_status_group = 1;
    REQUIRE(ml >= 0, "the meta group has a leader every node knows");
    bool all = false;
    for (uint64_t until = h_now_ms() + 20000; !all && h_now_ms() < until; h_sleep_ms(100)) {
        all = true;
        for (uint32_t g = 1; g <= 3 && all; g++)
            all = group_leader(&c, 2, g) != 0; /* node 3 hosts every shard */
    }
    REQUIRE(all, "every shard has a leader");

    /* ---- Steady state: no forwards ---------------------------------------------------- */
    /* One seed: node 1, which hosts shard 1 only (rotating layout), so anything it does
     * not send elsewhere itself would have to be forwarded. */
    char seed[64];
    snprintf(seed, sizeof seed, "%s", c.nodes[0].addr);
    struct strata *db = h_open_nodes(NULL, seed);
    REQUIRE(db != NULL, "cluster-aware client on one seed (%s)", seed);
    static char names[NBR][16];
    int made = 0;
    for (int b = 0; b < NBR; b++) {
        snprintf(names[b], sizeof names[b], "cr-%d", b);
        struct err e;
        int rc = h_exec(db, 0, NULL, &e, "{\"op\":\"branch.create\",\"name\":\"%s\"}", names[b]);
        made += rc == 0;
        if (rc)
            h_note("create %s: %s %s", names[b], err_name(rc), e.msg);
    }
    REQUIRE(made == NBR, "%d of %d branches created through the client", made, NBR);
    int per_shard[4] = {0};
    for (int b = 0; b < NBR; b++) {
        uint32_t s = shard_of(&c, 1, names[b]);
        per_shard[s <= 3 ? s : 0]++;
    }
    CHECK(per_shard[1] > 0 && per_shard[2] > 0 && per_shard[3] > 0,
          "the branches are on every shard (%d / %d / %d)", per_shard[1], per_shard[2],
          per_shard[3]);
    /* Warm-up: one write per branch and one on "default" (the client learns the new
     * names and where each shard's leader is). */
    int warm = h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"d\",\"value\":\"dv\"}") == 0;
    for (int b = 0; b < NBR; b++)
        warm += h_exec(db, 0, NULL, NULL,
                       "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"w\",\"value\":\"w\"}",
                       names[b]) == 0;
    CHECK(warm == NBR + 1, "warm-up writes acked (%d of %d)", warm, NBR + 1);

    long long f0 = forwarded_sum(&c);
    REQUIRE(f0 >= 0, "forwarded read from every node (%lld)", f0);
    int acked = 0;
    for (int k = 0; k < STEADY_PUTS; k += 10)
        acked += put_batch(db, names, NBR, k, 10);
    CHECK(acked == STEADY_PUTS, "%d of %d pipelined puts across %d branches acked", acked,
          STEADY_PUTS, NBR);
    int right = 0;
    for (int k = 0; k < STEADY_PUTS; k++) {
        char key[16], want[16], got[32] = "";
        snprintf(key, sizeof key, "k%d", k);
        snprintf(want, sizeof want, "v%d", k);
        right += h_get_str(db, 0, names[k % NBR], key, got, sizeof got, NULL) == 0 &&
                 strcmp(got, want) == 0;
    }
    CHECK(right == STEADY_PUTS, "%d of %d values read back, one get at a time", right, STEADY_PUTS);
    char dv[16] = "";
    CHECK(h_get_str(db, 0, NULL, "d", dv, sizeof dv, NULL) == 0 && strcmp(dv, "dv") == 0,
          "a command naming no branch goes to \"default\" ('%s')", dv);
    long long f1 = forwarded_sum(&c);
    CHECK(f1 == f0, "no request was forwarded in steady state (forwarded sum %lld -> %lld)", f0,
          f1);

    /* The same seed pinned (?routing=server): node 1 must forward what it does not
     * lead — the counter does see forwards. */
    char pinned[96];
    snprintf(pinned, sizeof pinned, "%s?routing=server", seed);
    struct strata *pdb = h_open_nodes(NULL, pinned);
    int far = -1;
    for (int b = 0; b < NBR && far < 0; b++)
        if (shard_of(&c, 1, names[b]) != 1)
            far = b;
    REQUIRE(pdb != NULL && far >= 0, "pinned client, and a branch off shard 1");
    int packed = 0;
    for (int k = 0; k < 10; k++)
        packed += h_exec(pdb, 0, NULL, NULL,
                         "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"p%d\",\"value\":1}",
                         names[far], k) == 0;
    long long f2 = forwarded_sum(&c);
    CHECK(packed == 10 && f2 >= f1 + 10,
          "a pinned client's 10 puts off shard 1 were forwarded (forwarded sum %lld -> %lld)", f1,
          f2);
    strata_close(pdb);

    /* ---- A stale placement: the branch moves under the client ------------------------ */
    struct strata *other = h_open_nodes(NULL, c.nodes[3].addr);
    REQUIRE(other != NULL, "a second client (seed node 4)");
    int rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"mv\"}");
    REQUIRE(rc == 0, "branch mv created (%s)", err_name(rc));
    rc = h_exec(db, 0, NULL, NULL,
                "{\"op\":\"kv.put\",\"branch\":\"mv\",\"key\":\"x\",\"value\":\"old\"}");
    CHECK(rc == 0, "the first client wrote to mv, so its table has it (%s)", err_name(rc));
    uint32_t s_old = shard_of(&c, 1, "mv");
    /* Forks stay on their parent's shard: load mv's shard, so a new mv goes elsewhere. */
    rc = h_exec(other, 0, NULL, NULL,
                "{\"op\":\"branch.fork_many\",\"source\":\"mv\",\"names\":[\"mv-a\",\"mv-b\","
                "\"mv-c\",\"mv-d\",\"mv-e\",\"mv-f\"]}");
    CHECK(rc == 0, "six forks of mv through the other client (%s)", err_name(rc));
    rc = h_exec(other, 0, NULL, NULL, "{\"op\":\"branch.delete\",\"name\":\"mv\"}");
    CHECK(rc == 0, "the other client deleted mv (%s)", err_name(rc));
    /* Wait until node 4 (the other client's seed, where its create goes) has a table
     * without mv: a create through a node whose cache still places the name runs on
     * the old shard without assigning it again (a server-side race, not the client's). */
    bool gone = false;
    for (uint64_t until = h_now_ms() + 5000; !gone && h_now_ms() < until; h_sleep_ms(50))
        gone = shard_of(&c, 3, "mv") == 0;
    CHECK(gone, "node 4's table no longer has mv");
    rc = h_exec(other, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"mv\"}");
    CHECK(rc == 0, "and made it again (%s)", err_name(rc));
    rc = h_exec(other, 0, NULL, NULL,
                "{\"op\":\"kv.put\",\"branch\":\"mv\",\"key\":\"x\",\"value\":\"new\"}");
    CHECK(rc == 0, "and wrote x=new to it (%s)", err_name(rc));
    /* A node's answer to a fresh read can lag a moment behind the meta leader's table:
     * poll (bounded) until it names mv's new shard. */
    uint32_t s_new = 0;
    for (uint64_t until = h_now_ms() + 5000; s_new == 0 && h_now_ms() < until; h_sleep_ms(50))
        s_new = shard_of(&c, 1, "mv");
    REQUIRE(s_old != 0 && s_new != 0 && s_old != s_new, "mv moved from shard %u to shard %u", s_old,
            s_new);
    long long f3 = forwarded_sum(&c);
    char got[32] = "";
    struct err e;
    rc = h_get_str(db, 0, "mv", "x", got, sizeof got, &e);
    CHECK(rc == 0 && strcmp(got, "new") == 0,
          "the client with the old table reads the new mv: x='%s' (%s %s)", got, err_name(rc),
          e.msg);
    rc = h_exec(db, 0, NULL, &e,
                "{\"op\":\"kv.put\",\"branch\":\"mv\",\"key\":\"y\",\"value\":\"a\"}");
    CHECK(rc == 0, "and writes to it (%s %s)", err_name(rc), e.msg);
    got[0] = '\0';
    CHECK(h_get_str(other, 0, "mv", "y", got, sizeof got, NULL) == 0 && strcmp(got, "a") == 0,
          "the other client reads that write ('%s')", got);
    long long f4 = forwarded_sum(&c);
    CHECK(f4 == f3, "recovering from MOVED forwarded nothing (forwarded sum %lld -> %lld)", f3, f4);

    /* ---- A stale leader: leadership of mv's shard moves ------------------------------- */
    uint64_t before = group_leader(&c, 2, s_new);
    char tl[96];
    snprintf(tl, sizeof tl, "{\"op\":\"cluster.transfer_leader\",\"group\":%u}", s_new);
    rc = h_exec(other, 0, NULL, &e, "%s", tl);
    CHECK(rc == 0, "leadership of shard %u transferred (%s %s)", s_new, err_name(rc), e.msg);
    uint64_t after = before;
    for (uint64_t until = h_now_ms() + 10000; (after == before || after == 0) && h_now_ms() < until;
         h_sleep_ms(50))
        after = group_leader(&c, 2, s_new);
    REQUIRE(after != 0 && after != before, "shard %u leader: node %llu -> node %llu", s_new,
            (unsigned long long)before, (unsigned long long)after);
    long long f5 = forwarded_sum(&c);
    int wrote = 0, read = 0;
    for (int k = 0; k < 20; k++) {
        char key[16], want[16];
        snprintf(key, sizeof key, "t%d", k);
        snprintf(want, sizeof want, "tv%d", k);
        wrote += h_exec(db, 0, NULL, &e,
                        "{\"op\":\"kv.put\",\"branch\":\"mv\",\"key\":\"%s\",\"value\":\"%s\"}",
                        key, want) == 0;
        got[0] = '\0';
        read += h_get_str(db, 0, "mv", key, got, sizeof got, NULL) == 0 && strcmp(got, want) == 0;
    }
    CHECK(wrote == 20 && read == 20,
          "after the transfer the client wrote %d of 20 and read back %d of 20", wrote, read);
    long long f6 = forwarded_sum(&c);
    CHECK(f6 == f5, "following the new leader forwarded nothing (forwarded sum %lld -> %lld)", f5,
          f6);
    strata_close(other);
    strata_close(db);
    h_finish();
}

/* ---- The routing table alone ------------------------------------------------------------ */

static int pack_w(void *data, const char *p, size_t n)
{
    return buf_append(data, p, n) ? -1 : 0;
}

/* A cluster.placement answer {epoch, table, leaders} for table `p`; leader_of_1 is shard
 * 1's leader address ("" for none). */
static void answer(struct buf *out, const struct placement *p, uint64_t epoch,
                   const char *leader_of_1)
{
    struct buf t;
    buf_init(&t);
    buf_reset(out);
    placement_encode(p, &t);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pack_w);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "epoch", 5);
    msgpack_pack_uint64(&pk, epoch);
    msgpack_pack_str_with_body(&pk, "table", 5);
    buf_append(out, t.data, t.len);
    msgpack_pack_str_with_body(&pk, "leaders", 7);
    if (leader_of_1[0]) {
        msgpack_pack_array(&pk, 1);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint32(&pk, 1);
        msgpack_pack_str_with_body(&pk, leader_of_1, strlen(leader_of_1));
    } else {
        msgpack_pack_array(&pk, 0);
    }
    buf_close(&t);
}

static void decide(const struct routing *r, const char *json, const char *sess,
                   struct route_pick *out)
{
    struct buf b;
    buf_init(&b);
    struct err e;
    if (storage_json_to_value(json, strlen(json), &b, &e) == 0)
        routing_decide(r, b.data, b.len, sess, out);
    else
        memset(out, 0, sizeof *out);
    buf_close(&b);
}

void test_client_route_unit(void)
{
    struct pl_node nodes[3] = {{1, "127.0.0.1:7001", PL_NODE_ACTIVE},
                               {2, "127.0.0.1:7002", PL_NODE_ACTIVE},
                               {3, "127.0.0.1:7003", PL_NODE_ACTIVE}};
    struct placement p;
    placement_init(&p);
    struct err e;
    REQUIRE(placement_initial(&p, nodes, 3, 3, 2, &e) == 0, "a 3-node, 3-shard table (%s)", e.msg);
    REQUIRE(placement_assign(&p, "a", 1, 2, &e) == 0 && placement_assign(&p, "b", 1, 3, &e) == 0 &&
                placement_assign(&p, "c", 1, 3, &e) == 0,
            "branches a on 2, b and c on 3");
    struct routing *r = routing_new();
    REQUIRE(r != NULL, "routing_new");
    struct buf ans;
    buf_init(&ans);
    answer(&ans, &p, 7, "127.0.0.1:7002");
    err_clear(&e);
    int urc = routing_update(r, ans.data, ans.len, &e);
    CHECK(urc == 0 && r->pl.epoch == 7 && r->pl.nbranches == 4,
          "an answer is adopted: epoch %llu, %zu branches (%s)", (unsigned long long)r->pl.epoch,
          r->pl.nbranches, e.msg);
    CHECK(r->leader[1] == 2, "shard 1's leader hint is node 2 (%llu)",
          (unsigned long long)r->leader[1]);

    struct route_pick pk;
    decide(r, "{\"op\":\"kv.get\",\"branch\":\"a\",\"key\":\"k\"}", "", &pk);
    CHECK(pk.kind == ROUTE_SHARD && pk.shard == 2, "kv.get on a -> shard 2 (%d, %u)", pk.kind,
          pk.shard);
    decide(r, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1}", "", &pk);
    CHECK(pk.kind == ROUTE_SHARD && pk.shard == 1, "no branch -> default -> shard 1 (%u)",
          pk.shard);
    decide(r, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1}", "b", &pk);
    CHECK(pk.kind == ROUTE_SHARD && pk.shard == 3, "no branch, session branch b -> shard 3 (%u)",
          pk.shard);
    decide(r, "{\"op\":\"branch.merge\",\"source\":\"b\",\"target\":\"c\"}", "", &pk);
    CHECK(pk.kind == ROUTE_SHARD && pk.shard == 3, "merge b -> c -> shard 3 (%u)", pk.shard);
    decide(r, "{\"op\":\"branch.merge\",\"source\":\"a\",\"target\":\"c\"}", "", &pk);
    CHECK(pk.kind == ROUTE_HOME && !pk.unknown,
          "a merge across shards goes home: the server refuses it");
    decide(r, "{\"op\":\"branch.fork\",\"source\":\"a\",\"name\":\"new\"}", "", &pk);
    CHECK(pk.kind == ROUTE_SHARD && pk.shard == 2 && pk.names_change,
          "a fork goes to its source's shard and changes names (%u)", pk.shard);
    decide(r, "{\"op\":\"branch.create\",\"name\":\"z\"}", "", &pk);
    CHECK(pk.kind == ROUTE_HOME && pk.names_change, "a create goes home");
    decide(r, "{\"op\":\"branch.list\"}", "", &pk);
    CHECK(pk.kind == ROUTE_HOME, "a listing goes home");
    decide(r, "{\"op\":\"cluster.status\"}", "", &pk);
    CHECK(pk.kind == ROUTE_HOME, "cluster.* goes home");
    decide(r, "{\"op\":\"session.use\",\"branch\":\"b\"}", "", &pk);
    CHECK(pk.kind == ROUTE_HOME && pk.session_use, "session.use goes home and is noticed");
    decide(r, "{\"op\":\"kv.get\",\"branch\":\"nope\",\"key\":\"k\"}", "", &pk);
    CHECK(pk.kind == ROUTE_HOME && pk.unknown, "an unknown branch goes home, marked unknown");
    decide(r, "{\"op\":\"kv.get\",\"branch\":7,\"key\":\"k\"}", "", &pk);
    CHECK(pk.kind == ROUTE_HOME, "a bad 'branch' goes home (the server says why)");
    static const uint8_t not_map[] = {0x93, 1, 2, 3};
    routing_decide(r, not_map, sizeof not_map, "", &pk);
    CHECK(pk.kind == ROUTE_HOME, "a command that is not a map goes home");
    routing_decide(NULL, ans.data, 0, "", &pk);
    CHECK(pk.kind == ROUTE_HOME, "an empty command with no table goes home");

    char sb[129] = "x", ss[65] = "";
    struct buf su;
    buf_init(&su);
    const char *sj = "{\"op\":\"session.use\",\"space\":\"s1\"}";
    storage_json_to_value(sj, strlen(sj), &su, &e);
    routing_session_args(su.data, su.len, sb, sizeof sb, ss, sizeof ss);
    CHECK(strcmp(sb, "x") == 0 && strcmp(ss, "s1") == 0,
          "session.use {space} keeps the branch and sets the space ('%s', '%s')", sb, ss);
    buf_close(&su);

    uint64_t ids[8];
    size_t k = routing_candidates(r, 1, false, 0, ids, 8);
    CHECK(k == 2 && ids[0] == 2 && ids[1] == 1,
          "shard 1 candidates: the leader first, then the replicas (%zu: %llu, %llu)", k,
          (unsigned long long)ids[0], (unsigned long long)(k > 1 ? ids[1] : 0));
    k = routing_candidates(r, 1, true, 1, ids, 8);
    CHECK(k == 2 && ids[0] == 1, "a stale read prefers the near replica (%llu)",
          (unsigned long long)ids[0]);
    k = routing_candidates(r, 1, true, 3, ids, 8);
    CHECK(k == 2 && ids[0] == 2, "but not a near node that has no copy (%llu)",
          (unsigned long long)ids[0]);
    CHECK(routing_candidates(r, 9, false, 0, ids, 8) == 0, "an unknown shard has no candidates");
    CHECK(routing_set_leader(r, 3, "127.0.0.1:7001", 14) && r->leader[3] == 1,
          "a NOT_LEADER hint naming a node of the table is kept");
    CHECK(!routing_set_leader(r, 3, "127.0.0.9:1", 11) && r->leader[3] == 0,
          "one naming an unknown address is not");

    /* Bad and old answers change nothing. */
    answer(&ans, &p, 5, "");
    CHECK(routing_update(r, ans.data, ans.len, &e) == 0 && r->pl.epoch == 7,
          "an older epoch is ignored (still %llu)", (unsigned long long)r->pl.epoch);
    static const uint8_t garbage[] = {0xc1, 0x00};
    CHECK(routing_update(r, garbage, sizeof garbage, &e) == STRATA_PROTOCOL_ERROR &&
              r->pl.epoch == 7,
          "garbage is PROTOCOL_ERROR (%s)", e.msg);
    struct buf nil;
    buf_init(&nil);
    const char *nj = "{\"epoch\":9,\"table\":null,\"leaders\":[]}";
    storage_json_to_value(nj, strlen(nj), &nil, &e);
    CHECK(routing_update(r, nil.data, nil.len, &e) == STRATA_UNAVAILABLE && r->pl.epoch == 7,
          "no table yet is UNAVAILABLE (%s)", e.msg);
    buf_reset(&nil);
    const char *bj = "{\"epoch\":9,\"table\":{\"v\":1},\"leaders\":[]}";
    storage_json_to_value(bj, strlen(bj), &nil, &e);
    CHECK(routing_update(r, nil.data, nil.len, &e) == STRATA_PROTOCOL_ERROR && r->pl.epoch == 7 &&
              r->pl.nbranches == 4,
          "a table that does not decode is PROTOCOL_ERROR naming the field (%s)", e.msg);
    buf_close(&nil);
    buf_close(&ans);
    routing_free(r);
    placement_free(&p);

    /* URI options. */
    static const char *const good[] = {"strata://h:1?routing=server",
                                       "strata://h:1/?routing=client",
                                       "strata://k@h:1,h:2?routing=server&routing=client"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct strata *db = NULL;
        CHECK(strata_open(good[i], &db, &e) == 0, "%s opens", good[i]);
        strata_close(db);
    }
    static const char *const bad[] = {"strata://h:1?routing=maybe", "strata://h:1?x",
                                      "strata://h:1/db?routing=server", "strata://h:1?&"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct strata *db = NULL;
        int rc = strata_open(bad[i], &db, &e);
        CHECK(rc == STRATA_INVALID_ARGUMENT, "%s is INVALID_ARGUMENT (%s)", bad[i], e.msg);
        if (rc == 0)
            strata_close(db);
    }
}

/* ---- A server without placement: a test double on 127.0.0.1 ------------------------------- */

struct fake {
    int lfd, port;
    int placement_code; /* the answer to cluster.placement */
    atomic_bool stop;
    atomic_int conns, placements, requests, routed, flagged;
    pthread_t th;
};

/* One client connection: HELLO -> WELCOME, then every REQUEST answered (ok nil, or
 * placement_code for cluster.placement), until the client closes or stop. */
static void fake_serve(struct fake *fk, int fd)
{
    struct proto_reader rd;
    proto_reader_init(&rd, PROTO_MAX_FRAME_DEFAULT);
    while (!atomic_load(&fk->stop)) {
        struct proto_frame f;
        int r = h_raw_next_frame(fd, &rd, &f, 100);
        if (r < 0)
            break;
        if (r == 0) {
            uint8_t b;
            ssize_t p = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (p == 0)
                break; /* closed */
            continue;
        }
        struct buf out;
        buf_init(&out);
        if (f.kind == PROTO_HELLO) {
            struct proto_welcome w = {PROTO_VERSION, 1, "fake", 4, 0, NULL, 0};
            proto_welcome_append(&out, &w);
        } else if (f.kind == PROTO_REQUEST) {
            struct proto_request q;
            struct err e;
            if (proto_request_decode(&f, &q, &e) == 0) {
                atomic_fetch_add(&fk->requests, 1);
                atomic_fetch_add(&fk->routed, q.route.set);
                atomic_fetch_add(&fk->flagged, (q.flags & PROTO_REQ_FORWARDED) != 0);
                if (memmem(q.cmd, q.cmd_len, "cluster.placement", 17)) {
                    atomic_fetch_add(&fk->placements, 1);
                    proto_response_err_append(&out, q.id, fk->placement_code,
                                              fk->placement_code == STRATA_UNAVAILABLE
                                                  ? "the placement table is not known yet"
                                                  : "unknown cluster command",
                                              NULL);
                } else {
                    static const uint8_t nil = 0xc0;
                    proto_response_ok_append(&out, q.id, &nil, 1);
                }
            }
        }
        int rc = out.len ? h_raw_send(fd, out.data, out.len) : 0;
        buf_close(&out);
        if (rc)
            break;
    }
    proto_reader_close(&rd);
    close(fd);
}

static void *fake_main(void *arg)
{
    struct fake *fk = arg;
    while (!atomic_load(&fk->stop)) {
        struct pollfd p = {fk->lfd, POLLIN, 0};
        if (poll(&p, 1, 100) != 1)
            continue;
        int fd = accept(fk->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&fk->conns, 1);
        fake_serve(fk, fd);
    }
    return NULL;
}

static int fake_start(struct fake *fk, int placement_code)
{
    memset(fk, 0, sizeof *fk);
    fk->placement_code = placement_code;
    fk->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (fk->lfd < 0 || bind(fk->lfd, (struct sockaddr *)&sa, sizeof sa) || listen(fk->lfd, 8) ||
        getsockname(fk->lfd, (struct sockaddr *)&sa, &sl)) {
        if (fk->lfd >= 0)
            close(fk->lfd);
        return -1;
    }
    fk->port = ntohs(sa.sin_port);
    if (pthread_create(&fk->th, NULL, fake_main, fk)) {
        close(fk->lfd);
        return -1;
    }
    return 0;
}

static void fake_stop(struct fake *fk)
{
    atomic_store(&fk->stop, true);
    pthread_join(fk->th, NULL);
    close(fk->lfd);
}

/* Five puts on branches that would be on different shards, single and pipelined. */
static int five_puts(struct strata *db)
{
    int ok = 0;
    for (int k = 0; k < 2; k++)
        ok += h_exec(db, 0, NULL, NULL,
                     "{\"op\":\"kv.put\",\"branch\":\"b%d\",\"key\":\"k\",\"value\":1}", k) == 0;
    static char names[3][16] = {"b2", "b3", "b4"};
    return ok + put_batch(db, names, 3, 0, 3);
}

void test_client_route_fallback(void)
{
    struct fake fk;
    REQUIRE(fake_start(&fk, STRATA_INVALID_ARGUMENT) == 0, "test double listening");
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", fk.port);
    struct strata *db = h_open_nodes(NULL, addr);
    REQUIRE(db != NULL, "client on the test double");
    int ok = five_puts(db);
    ok += five_puts(db);
    strata_close(db);
    fake_stop(&fk);
    CHECK(ok == 10, "a server without cluster.placement serves every command (%d of 10)", ok);
    CHECK(atomic_load(&fk.placements) == 1, "the placement was asked once (%d)",
          atomic_load(&fk.placements));
    CHECK(atomic_load(&fk.conns) == 1, "over one connection (%d)", atomic_load(&fk.conns));
    CHECK(atomic_load(&fk.routed) == 0 && atomic_load(&fk.flagged) == 0,
          "no request carried a route or the FORWARDED flag (%d, %d)", atomic_load(&fk.routed),
          atomic_load(&fk.flagged));

    /* No table yet (a starting cluster): commands still run, the table is asked again
     * only after a second. */
    REQUIRE(fake_start(&fk, STRATA_UNAVAILABLE) == 0, "test double listening again");
    snprintf(addr, sizeof addr, "127.0.0.1:%d", fk.port);
    db = h_open_nodes(NULL, addr);
    REQUIRE(db != NULL, "client on the test double");
    ok = five_puts(db);
    int asked = atomic_load(&fk.placements);
    h_sleep_ms(1100);
    ok += five_puts(db);
    strata_close(db);
    fake_stop(&fk);
    CHECK(ok == 10, "with no table yet every command is still served (%d of 10)", ok);
    CHECK(asked == 1 && atomic_load(&fk.placements) == 2,
          "the placement was asked once at first and once more after a second (%d, %d)", asked,
          atomic_load(&fk.placements));
    CHECK(atomic_load(&fk.routed) == 0, "and nothing was routed (%d)", atomic_load(&fk.routed));
}
