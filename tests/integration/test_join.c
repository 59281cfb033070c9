/* Joining is idempotent for the joining process and only for it: a 4th node joins a
 * 3-node cluster with --join; cluster.add_member sent again with that process's join
 * token (its earlier attempt was applied: what a retry after an error answer sees) is a
 * success that changes nothing, while another token, another address under the same id,
 * no token, or a malformed token are refused. Then the node loses its data directory
 * and starts again under its old id: it is still refused and exits 2 (Raft assumes a
 * voter's log survives). docs/operations.md "Adding a node". */
#include "harness.h"
#include "tests.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The join token node i logged ("... (join token HEX)"); "" if none yet. */
static void logged_token(const struct h_cluster *c, int i, char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen(c->nodes[i].log, "r");
    if (f == NULL)
        return;
    char line[2048];
    const char *tag = "(join token ";
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, tag);
        if (p == NULL)
            continue;
        p += strlen(tag);
        size_t n = strspn(p, "0123456789abcdef");
        if (n < cap)
            snprintf(out, cap, "%.*s", (int)n, p);
    }
    fclose(f);
}

/* The table's epoch and whether it lists node `id` at `addr`, from a fresh read. */
static int table_epoch(struct h_cluster *c, uint64_t id, const char *addr, uint64_t *epoch,
                       bool *listed)
{
    struct strata *db = h_open_node(c, 0, NULL);
    if (db == NULL)
        return -1;
    struct buf res;
    buf_init(&res);
    int rc = h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.placement\",\"fresh\":true}");
    struct h_obj x;
    *listed = false;
    if (rc == 0 && (rc = h_obj_parse(&x, &res)) == 0) {
        *epoch = h_map_u64(x.o, "epoch");
        const msgpack_object *t = h_map_get(x.o, "table");
        const msgpack_object *nodes = t ? h_map_get(t, "nodes") : NULL;
        for (uint32_t k = 0;
             nodes && nodes->type == MSGPACK_OBJECT_ARRAY && k < nodes->via.array.size; k++) {
            const msgpack_object *e = &nodes->via.array.ptr[k];
            if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size >= 2 &&
                e->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                e->via.array.ptr[0].via.u64 == id &&
                e->via.array.ptr[1].type == MSGPACK_OBJECT_STR &&
                e->via.array.ptr[1].via.str.size == strlen(addr) &&
                memcmp(e->via.array.ptr[1].via.str.ptr, addr, strlen(addr)) == 0)
                *listed = true;
        }
        h_obj_free(&x);
    }
    buf_close(&res);
    strata_close(db);
    return rc;
}

/* cluster.add_member {id, address, join_token?} through node 0 (forwarded to the meta
 * leader). Returns the code; *again tells whether the answer says "already a member". */
static int add_member(struct h_cluster *c, uint64_t id, const char *addr, const char *token,
                      bool *again, char *msg, size_t cap)
{
    struct strata *db = h_open_node(c, 0, NULL);
    if (db == NULL)
        return -1;
    struct buf res;
    buf_init(&res);
    struct err e;
    err_clear(&e);
    int rc = h_exec(db, 0, &res, &e,
                    "{\"op\":\"cluster.add_member\",\"id\":%llu,\"address\":\"%s\"%s%s%s}",
                    (unsigned long long)id, addr, token ? ",\"join_token\":\"" : "",
                    token ? token : "", token ? "\"" : "");
    *again = false;
    struct h_obj x;
    if (rc == 0 && res.len && h_obj_parse(&x, &res) == 0) {
        const msgpack_object *v = h_map_get(x.o, "already_member");
        *again = v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
        h_obj_free(&x);
    }
    snprintf(msg, cap, "%s", e.msg);
    buf_close(&res);
    strata_close(db);
    return rc;
}

void test_join_retry(void)
{
    static struct h_cluster c;
    /* One shard with 3 replicas: already even with a 4th node, so the rebalancer has no
     * step to take after the join and the table holds still. */
    static const char *const extra[] = {"--shards", "1", "--replication-factor", "3", NULL};
    h_cluster_init(&c, "join", 4, extra);
    /* Nodes 1-3 form the cluster (the last of the 4 addresses cut off); node 4 joins. */
    char *last = strrchr(c.members, ',');
    REQUIRE(last != NULL, "a 4-node member list");
    *last = '\0';
    c.n = 3;
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started (1 shard, RF 3)");
    h_status_group = 0;
    REQUIRE(h_wait_leader(&c, 20000, -1) >= 0, "the meta group has a leader");

    c.n = 4;
    c.nodes[3].join = c.nodes[0].addr;
    c.nodes[3].join_id = 4;
    REQUIRE(h_node_start(&c, 3) == 0, "node 4 started with --join");
    uint64_t until = h_now_ms() + 30000;
    while (h_log_count(&c, 3, "joined the cluster as node 4") == 0 && h_now_ms() < until)
        h_sleep_ms(100);
    REQUIRE(h_log_count(&c, 3, "joined the cluster as node 4") == 1, "node 4 joined once");
    char token[80];
    logged_token(&c, 3, token, sizeof token);
    REQUIRE(strlen(token) == 32, "node 4 logged its 32-digit join token (%s)", token);

    /* Wait until the table lists node 4 and holds still for 3 s. */
    uint64_t epoch = 0, e2 = 0;
    bool listed = false, settled = false;
    for (until = h_now_ms() + 60000; !settled && h_now_ms() < until;) {
        if (table_epoch(&c, 4, c.nodes[3].addr, &epoch, &listed) != 0) {
            h_sleep_ms(200);
            continue;
        }
        h_sleep_ms(3000);
        settled = table_epoch(&c, 4, c.nodes[3].addr, &e2, &listed) == 0 && e2 == epoch;
    }
    REQUIRE(settled && listed, "the table lists node 4 at %s and holds still (epoch %llu)",
            c.nodes[3].addr, (unsigned long long)epoch);
    struct h_status ms0, ms1;
    REQUIRE(h_status(&c, 0, &ms0) == 0, "meta group status read");

    /* The same join again (what a retry after an error answer sends): a success. */
    bool again = false;
    char msg[512];
    int rc = add_member(&c, 4, c.nodes[3].addr, token, &again, msg, sizeof msg);
    CHECK(rc == 0 && again,
          "a retry of node 4's join is a success saying 'already a member' "
          "(%s: %s, already_member %d)",
          err_name(rc), msg, again);
    rc = add_member(&c, 4, c.nodes[3].addr, token, &again, msg, sizeof msg);
    CHECK(rc == 0 && again, "and again (%s: %s)", err_name(rc), msg);
    /* ... and changes nothing (read before CHECK: its arguments print the figures). */
    rc = table_epoch(&c, 4, c.nodes[3].addr, &e2, &listed);
    CHECK(rc == 0 && e2 == epoch && listed, "the table is unchanged (epoch %llu -> %llu)",
          (unsigned long long)epoch, (unsigned long long)e2);
    rc = h_status(&c, 0, &ms1);
    CHECK(rc == 0 && ms1.nmembers == ms0.nmembers && ms1.nmembers == 4,
          "the meta group still has 4 members (%zu -> %zu)", ms0.nmembers, ms1.nmembers);

    /* Anyone else under id 4 is refused. */
    rc = add_member(&c, 4, c.nodes[3].addr, "0123456789abcdef0123456789abcdef", &again, msg,
                    sizeof msg);
    CHECK(rc == STRATA_ALREADY_EXISTS, "another process's token is refused (%s: %s)", err_name(rc),
          msg);
    rc = add_member(&c, 4, "127.0.0.1:1", token, &again, msg, sizeof msg);
    CHECK(rc == STRATA_ALREADY_EXISTS && strstr(msg, c.nodes[3].addr) != NULL,
          "another address under id 4 is refused, naming the member's (%s: %s)", err_name(rc), msg);
    rc = add_member(&c, 4, c.nodes[3].addr, NULL, &again, msg, sizeof msg);
    CHECK(rc == STRATA_ALREADY_EXISTS, "without a token, as before, refused (%s: %s)", err_name(rc),
          msg);
    rc = add_member(&c, 4, c.nodes[3].addr, "NOT-HEX", &again, msg, sizeof msg);
    CHECK(rc == STRATA_INVALID_ARGUMENT && strstr(msg, "join_token") != NULL,
          "a malformed token is a clear error (%s: %s)", err_name(rc), msg);
    rc = table_epoch(&c, 4, c.nodes[3].addr, &e2, &listed);
    CHECK(rc == 0 && e2 == epoch, "none of them changed the table (epoch %llu)",
          (unsigned long long)e2);

    /* Node 4 loses its data directory and comes back under id 4: refused, exit 2. */
    h_node_kill9(&c, 3);
    REQUIRE(h_remove_tree(c.nodes[3].dir) == 0 && access(c.nodes[3].dir, F_OK) != 0,
            "node 4's data dir wiped");
    h_node_start(&c, 3); /* it may exit before or after it listens */
    int st = h_node_wait_exit(&c, 3, 30000);
    CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 2,
          "the wiped node 4 asking to join under its old id exits 2 (wait status 0x%x)", st);
    CHECK(h_log_count(&c, 3, "already a member but this data dir is new") >= 1,
          "and says why in its log");
}
