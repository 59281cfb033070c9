/* Idempotent retries on a 3-node cluster of real servers: a write is applied and its
 * answer lost on the way back — a relay between the client and a follower swallows the
 * RESPONSE frame and drops the connection, once alone and once after kill -9 of the
 * leader — and libstrata's resend, with the same idempotency key, is applied exactly
 * once and returns the remembered answer byte for byte. Without keys the same loss ends
 * UNKNOWN_OUTCOME (so the relay really loses answers), and so does it when the relay strips
 * the "features" of the servers' WELCOME — the client then takes them for servers older
 * than keys, sends none and resends nothing. Last, the old leader restarts and replays its
 * log: every replica's engine digest, which covers the table, is equal. */
#include "harness.h"
#include "storage.h"
#include "tests.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- A relay that can lose one answer ---------------------------------------------------- */

/* One connection at a time, client <-> target. Server-to-client bytes are cut into
 * frames; while `armed`, the first RESPONSE is kept (not forwarded), `swallowed` is set,
 * and the relay waits for `release` (bounded) before closing both sides. With `strip`,
 * a WELCOME goes on without its "features" (what a server older than them sends).
 * Client-to-server requests are counted, and those whose command carries "idem". */
struct relay {
    int lfd, port, target;
    pthread_t th;
    atomic_bool stop, armed, swallowed, release, strip;
    atomic_uint server_features; /* of the last WELCOME from the server */
    atomic_int requests, keyed;
    struct buf kept; /* the swallowed response's result bytes */
    int kept_code;
};

static int relay_listen(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 8) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl)) {
        close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Relay one connection until either side closes, or a swallowed answer is released. */
static void relay_one(struct relay *r, int cfd)
{
    int sfd = h_raw_connect(r->target);
    if (sfd < 0)
        return;
    struct proto_reader rd, up;
    proto_reader_init(&rd, PROTO_MAX_FRAME_DEFAULT);
    proto_reader_init(&up, PROTO_MAX_FRAME_DEFAULT);
    uint8_t b[65536];
    bool holding = false;
    uint64_t hold_deadline = 0;
    while (!atomic_load(&r->stop)) {
        if (holding && (atomic_load(&r->release) || h_now_ms() > hold_deadline))
            break;
        struct pollfd p[2] = {{cfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        int pr = poll(p, 2, 50);
        if (pr < 0 && errno != EINTR)
            break;
        if (pr <= 0)
            continue;
        if (p[0].revents) {
            ssize_t n = recv(cfd, b, sizeof b, 0);
            if (n <= 0 || h_raw_send(sfd, b, (size_t)n) || proto_reader_feed(&up, b, (size_t)n))
                break;
            struct proto_frame f;
            struct err e;
            while (proto_reader_next(&up, &f, &e) == 1) {
                struct proto_request q;
                if (f.kind != PROTO_REQUEST || proto_request_decode(&f, &q, &e) != 0)
                    continue;
                atomic_fetch_add(&r->requests, 1);
                /* The key "idem" (fixstr a4) in the command map. */
                for (size_t i = 0; i + 5 <= q.cmd_len; i++)
                    if (memcmp(q.cmd + i, "\xa4idem", 5) == 0) {
                        atomic_fetch_add(&r->keyed, 1);
                        break;
                    }
            }
        }
        if (p[1].revents) {
            ssize_t n = recv(sfd, b, sizeof b, 0);
            if (n <= 0 || proto_reader_feed(&rd, b, (size_t)n))
                break;
            struct proto_frame f;
            struct err e;
            int fr;
            bool bad = false;
            while ((fr = proto_reader_next(&rd, &f, &e)) == 1) {
                if (f.kind == PROTO_RESPONSE && atomic_load(&r->armed) && !holding) {
                    msgpack_zone z;
                    msgpack_zone_init(&z, 256);
                    struct proto_response resp;
                    if (proto_response_decode(&f, &z, &resp, &e) == 0) {
                        r->kept_code = resp.code;
                        buf_reset(&r->kept);
                        if (resp.code == 0)
                            buf_append(&r->kept, resp.result, resp.result_len);
                    }
                    msgpack_zone_destroy(&z);
                    atomic_store(&r->armed, false);
                    atomic_store(&r->swallowed, true);
                    holding = true;
                    hold_deadline = h_now_ms() + 30000;
                    continue;
                }
                struct buf out;
                buf_init(&out);
                if (f.kind == PROTO_WELCOME) {
                    msgpack_zone z;
                    msgpack_zone_init(&z, 256);
                    struct proto_welcome w;
                    uint32_t feats = 0;
                    bad = proto_welcome_decode_features(&f, &z, &w, &feats, &e) != 0;
                    atomic_store(&r->server_features, feats);
                    if (!bad && atomic_load(&r->strip))
                        bad = proto_welcome_append(&out, &w) || h_raw_send(cfd, out.data, out.len);
                    msgpack_zone_destroy(&z);
                    if (bad || atomic_load(&r->strip)) {
                        buf_close(&out);
                        if (bad)
                            break;
                        continue;
                    }
                }
                bad = proto_frame_append(&out, f.kind, f.body, f.len) ||
                      h_raw_send(cfd, out.data, out.len);
                buf_close(&out);
                if (bad)
                    break;
            }
            if (bad || fr < 0 || fr > 1)
                break;
        }
    }
    proto_reader_close(&rd);
    proto_reader_close(&up);
    close(sfd);
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    while (!atomic_load(&r->stop)) {
        struct pollfd p = {r->lfd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int cfd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0)
            continue;
        relay_one(r, cfd);
        close(cfd);
    }
    return NULL;
}

static int relay_start(struct relay *r, int target)
{
    memset(r, 0, sizeof *r);
    buf_init(&r->kept);
    r->target = target;
    r->lfd = relay_listen(&r->port);
    if (r->lfd < 0)
        return -1;
    if (pthread_create(&r->th, NULL, relay_main, r)) {
        close(r->lfd);
        return -1;
    }
    return 0;
}

static void relay_stop(struct relay *r)
{
    atomic_store(&r->stop, true);
    pthread_join(r->th, NULL);
    close(r->lfd);
    buf_close(&r->kept);
}

/* ---- A write whose answer is lost ------------------------------------------------------ */

struct call {
    struct strata *db;
    const char *json;
    int code;
    struct err err;
    struct buf res;
};

static void *call_main(void *arg)
{
    struct call *k = arg;
    k->code = h_exec(k->db, 0, &k->res, &k->err, "%s", k->json);
    return NULL;
}

/* Run `json` through `db` (connected via the relay) with the relay armed; when the
 * answer is swallowed, kill nodes `kill` and `kill2` (-1: none), then let the relay drop
 * the connection. Returns false if the answer never reached the relay. */
static bool lose_answer(struct h_cluster *c, struct relay *r, struct call *k, int kill, int kill2)
{
    atomic_store(&r->swallowed, false);
    atomic_store(&r->release, false);
    atomic_store(&r->armed, true);
    pthread_t th;
    buf_init(&k->res);
    if (pthread_create(&th, NULL, call_main, k))
        return false;
    uint64_t until = h_now_ms() + 15000;
    while (!atomic_load(&r->swallowed) && h_now_ms() < until)
        h_sleep_ms(5);
    bool ok = atomic_load(&r->swallowed);
    if (ok && kill >= 0)
        h_node_kill9(c, kill);
    if (ok && kill2 >= 0)
        h_node_kill9(c, kill2);
    atomic_store(&r->armed, false);
    atomic_store(&r->release, true);
    pthread_join(th, NULL);
    return ok;
}

static struct strata *open_via(const struct relay *r, const char *opts)
{
    char addr[96];
    snprintf(addr, sizeof addr, "127.0.0.1:%d?routing=server%s", r->port, opts);
    struct strata *db = h_open_nodes(NULL, addr);
    if (db)
        strata_set_timeouts(db, 30000, 2000);
    return db;
}

static uint64_t event_len(struct strata *db)
{
    struct buf res;
    buf_init(&res);
    uint64_t n = UINT64_MAX;
    struct h_obj x;
    if (h_exec(db, 0, &res, NULL, "{\"op\":\"event.len\"}") == 0 && h_obj_parse(&x, &res) == 0) {
        if (x.o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            n = x.o->via.u64;
        h_obj_free(&x);
    }
    buf_close(&res);
    return n;
}

/* state.get of `cell`: its counter (UINT64_MAX when the read fails) and value. */
static uint64_t cell_counter(struct strata *db, const char *cell, uint64_t *value)
{
    struct buf res;
    buf_init(&res);
    uint64_t n = UINT64_MAX;
    struct h_obj x;
    if (h_exec(db, 0, &res, NULL, "{\"op\":\"state.get\",\"cell\":\"%s\"}", cell) == 0 &&
        h_obj_parse(&x, &res) == 0) {
        n = h_map_u64(x.o, "counter");
        *value = h_map_u64(x.o, "value");
        h_obj_free(&x);
    }
    buf_close(&res);
    return n;
}

/* Group 1's digest and applied index on node i (cluster.status {digest: true}). */
static int group_digest(const struct h_cluster *c, int i, char *hex, size_t cap, uint64_t *applied)
{
    struct strata *db = h_open_node(c, i, NULL);
    if (db == NULL)
        return -1;
    struct buf res;
    buf_init(&res);
    int rc = h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.status\",\"digest\":true}");
    strata_close(db);
    struct h_obj x;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        rc = -1;
        const msgpack_object *g = h_map_get(x.o, "groups");
        for (uint32_t k = 0; g && g->type == MSGPACK_OBJECT_ARRAY && k < g->via.array.size; k++) {
            const msgpack_object *e = &g->via.array.ptr[k];
            if (h_map_u64(e, "id") != 1)
                continue;
            h_map_str(e, "digest", hex, cap);
            *applied = h_map_u64(e, "applied_index");
            rc = hex[0] ? 0 : -1;
        }
        h_obj_free(&x);
    }
    buf_close(&res);
    return rc;
}

void test_idem(void)
{
    struct h_cluster c;
    h_cluster_init(&c, "idem", 3, NULL);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started");
    int L = h_wait_leader(&c, 15000, -1);
    REQUIRE(L >= 0, "a leader is elected");
    int F = (L + 1) % 3;
    struct relay r;
    REQUIRE(relay_start(&r, c.nodes[F].port) == 0, "relay to follower node %d", F + 1);
    h_note("leader node %d; the client reaches follower node %d through a relay on port %d", L + 1,
           F + 1, r.port);

    /* 1. Without keys the relay's loss is visible: UNKNOWN_OUTCOME. */
    struct strata *plain = open_via(&r, "&idempotency=off");
    REQUIRE(plain != NULL, "keyless handle opened");
    REQUIRE(h_exec(plain, 0, NULL, NULL, "{\"op\":\"state.set\",\"cell\":\"n\",\"value\":0}") == 0,
            "warm-up write through the relay");
    struct call k = {.db = plain,
                     .json = "{\"op\":\"event.append\",\"type\":\"x\",\"payload\":{}}"};
    REQUIRE(lose_answer(&c, &r, &k, -1, -1), "the relay swallowed the keyless write's answer");
    CHECK(k.code == STRATA_UNKNOWN_OUTCOME, "keyless write whose answer was lost: %s (%s)",
          err_name(k.code), k.err.msg);
    CHECK(event_len(plain) == 1, "it was applied (once, never resent)");
    buf_close(&k.res);
    strata_close(plain);

    /* 1b. The same loss through a relay that strips the WELCOME's features: libstrata
     * (keys on, the default) takes the nodes for older servers, sends the write without a
     * key and does not resend it. */
    atomic_store(&r.strip, true);
    struct strata *stripped = open_via(&r, "");
    REQUIRE(stripped != NULL, "keyed handle opened through the stripping relay");
    REQUIRE(h_exec(stripped, 0, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"w\",\"value\":1}") == 0,
            "warm-up write through the stripping relay");
    CHECK(atomic_load(&r.server_features) == PROTO_FEAT_IDEM,
          "the server's WELCOME lists idem (features %u)", atomic_load(&r.server_features));
    atomic_store(&r.requests, 0);
    atomic_store(&r.keyed, 0);
    k = (struct call){.db = stripped, .json = "{\"op\":\"state.set\",\"cell\":\"s\",\"value\":7}"};
    REQUIRE(lose_answer(&c, &r, &k, -1, -1), "the relay swallowed the write's answer");
    CHECK(k.code == STRATA_UNKNOWN_OUTCOME, "write to a server without idem, answer lost: %s (%s)",
          err_name(k.code), k.err.msg);
    CHECK(atomic_load(&r.requests) == 1 && atomic_load(&r.keyed) == 0,
          "sent once, without a key (%d requests, %d keyed)", atomic_load(&r.requests),
          atomic_load(&r.keyed));
    buf_close(&k.res);
    uint64_t value = 0, counter = cell_counter(stripped, "s", &value);
    CHECK(counter == 1 && value == 7, "applied once, never resent (counter %llu)",
          (unsigned long long)counter);
    strata_close(stripped);
    atomic_store(&r.strip, false);

    /* 2. With keys (the default): the answer is lost, the connection dropped; the resend
     * gets the remembered answer. */
    struct strata *db = open_via(&r, "");
    REQUIRE(db != NULL, "keyed handle opened");
    REQUIRE(h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"warm\",\"value\":1}") == 0,
            "warm-up write through the relay");
    k = (struct call){.db = db,
                      .json = "{\"op\":\"event.append\",\"type\":\"x\",\"payload\":{\"n\":2}}"};
    REQUIRE(lose_answer(&c, &r, &k, -1, -1), "the relay swallowed the keyed write's answer");
    CHECK(k.code == 0, "keyed write after a lost answer: %s (%s)", err_name(k.code), k.err.msg);
    CHECK(r.kept_code == 0 && k.res.len == r.kept.len &&
              memcmp(k.res.data, r.kept.data, k.res.len) == 0,
          "the resend's answer is the lost one, byte for byte (%zu and %zu bytes)", k.res.len,
          r.kept.len);
    CHECK(event_len(db) == 2, "applied exactly once: 2 events in all");
    buf_close(&k.res);

    /* 3. A compare-and-set whose answer is lost while the leader is killed: the resend
     * reaches the new leader, which answers from the replicated table. Applied twice, it
     * would fail with CONFLICT. A new handle: the old one went straight to the leader
     * it learned after the dropped connection, around the relay. */
    strata_close(db);
    db = open_via(&r, "");
    REQUIRE(db != NULL, "second keyed handle opened");
    REQUIRE(event_len(db) == 2, "first command of the new handle, through the relay");
    k = (struct call){.db = db,
                      .json = "{\"op\":\"state.cas\",\"cell\":\"n\",\"expected_counter\":1,"
                              "\"value\":1}"};
    REQUIRE(lose_answer(&c, &r, &k, L, -1), "the cas's answer swallowed, leader node %d killed",
            L + 1);
    CHECK(k.code == 0, "cas after a lost answer and a leader change: %s (%s)", err_name(k.code),
          k.err.msg);
    CHECK(r.kept_code == 0 && k.res.len == r.kept.len &&
              memcmp(k.res.data, r.kept.data, k.res.len) == 0,
          "the new leader's answer is the lost one, byte for byte");
    counter = cell_counter(db, "n", &value);
    CHECK(counter == 2 && value == 1, "the cas applied once: counter 2, value 1 (counter %llu)",
          (unsigned long long)counter);
    buf_close(&k.res);
    CHECK(event_len(db) == 2, "still 2 events");
    strata_close(db);
    relay_stop(&r);

    /* 4. The old leader restarts and replays its log: every replica holds the same table
     * (the digest covers it). */
    REQUIRE(h_node_start(&c, L) == 0, "node %d restarted", L + 1);
    char d[3][80];
    bool same = false;
    uint64_t until = h_now_ms() + 30000;
    while (!same && h_now_ms() < until) {
        uint64_t ap[3] = {0, 1, 2};
        same = true;
        for (int i = 0; i < 3 && same; i++)
            same = group_digest(&c, i, d[i], sizeof d[i], &ap[i]) == 0;
        same = same && ap[0] == ap[1] && ap[1] == ap[2] && strcmp(d[0], d[1]) == 0 &&
               strcmp(d[1], d[2]) == 0;
        if (!same)
            h_sleep_ms(100);
    }
    CHECK(same, "equal engine digests on the 3 nodes after the restart (%s %s %s)", d[0], d[1],
          d[2]);

    /* 5. The answer is lost and the quorum with it (the other two nodes killed): the
     * resends get no real answer within the budget, so the write ends UNKNOWN_OUTCOME —
     * never NOT_LEADER or UNAVAILABLE, which would claim it did not run. */
    REQUIRE(relay_start(&r, c.nodes[F].port) == 0, "relay to node %d again", F + 1);
    db = open_via(&r, "");
    REQUIRE(db != NULL, "third keyed handle opened");
    strata_set_timeouts(db, 3000, 500);
    REQUIRE(event_len(db) == 2, "first command of the third handle, through the relay");
    k = (struct call){.db = db, .json = "{\"op\":\"event.append\",\"type\":\"x\",\"payload\":{}}"};
    int other = 3 - L - F; /* the third node */
    REQUIRE(lose_answer(&c, &r, &k, L, other), "answer swallowed, nodes %d and %d killed", L + 1,
            other + 1);
    CHECK(k.code == STRATA_UNKNOWN_OUTCOME && strstr(k.err.msg, "lost") != NULL,
          "no quorum for the resends: %s (%s)", err_name(k.code), k.err.msg);
    buf_close(&k.res);
    strata_close(db);
    relay_stop(&r);
}
