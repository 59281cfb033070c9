/* libstrata against fake servers on 127.0.0.1 (threads speaking the wire protocol): a
 * write is keyed, and resent after a lost answer, only while every open connection's
 * WELCOME lists "idem" (docs/protocol.md §4); a forgotten outcome reaches the program as
 * UNKNOWN_OUTCOME. A fake server scripts the features of the WELCOME on each connection
 * it accepts and what it does with each write, may answer cluster.placement with a
 * table (so the client routes), and records every write it saw. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "placement.h"
#include "proto.h"
#include "strata.h"

#include <arpa/inet.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 4
#define MAX_WRITES 8
#define IDLE_MS 1500 /* the fake server stops after this long without a connection or frame */

enum act { ACT_DROP, ACT_OK, ACT_NOT_LEADER, ACT_FORGOTTEN };

struct seen {
    int conn;   /* index of the connection it came on */
    bool keyed; /* carried "idem" */
    uint64_t seq;
    bool retry;
};

struct fake {
    int lfd;
    uint16_t port;
    uint32_t features[MAX_CONNS]; /* WELCOME features of the i-th connection */
    enum act act[MAX_WRITES];     /* what it does with the i-th write */
    const struct buf *placement;  /* the cluster.placement answer, NULL: nil */
    int nconn;
    struct seen w[MAX_WRITES];
    int nwrites;
    int bad; /* something the fake could not parse */
    pthread_t th;
};

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    for (uint32_t i = 0; m->type == MSGPACK_OBJECT_MAP && i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

/* Record the write q carries; returns false if the command is not a kv.put. */
static bool record(struct fake *fk, int conn, const struct proto_request *q)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    bool put = false;
    if (msgpack_unpack((const char *)q->cmd, q->cmd_len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *op = map_get(&o, "op"), *idem = map_get(&o, "idem");
        put = op && op->type == MSGPACK_OBJECT_STR && op->via.str.size == 6 &&
              memcmp(op->via.str.ptr, "kv.put", 6) == 0;
        if (put && fk->nwrites < MAX_WRITES) {
            struct seen *s = &fk->w[fk->nwrites++];
            *s = (struct seen){.conn = conn};
            if (idem != NULL) {
                if (idem->type != MSGPACK_OBJECT_ARRAY || idem->via.array.size != 4 ||
                    idem->via.array.ptr[3].type != MSGPACK_OBJECT_BOOLEAN)
                    fk->bad++;
                else {
                    s->keyed = true;
                    s->seq = idem->via.array.ptr[1].via.u64;
                    s->retry = idem->via.array.ptr[3].via.boolean;
                }
            }
        }
    }
    msgpack_zone_destroy(&z);
    return put;
}

static void send_buf(int fd, const struct buf *b)
{
    size_t done = 0;
    while (done < b->len) {
        ssize_t w = send(fd, b->data + done, b->len - done, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        done += (size_t)w;
    }
}

/* One connection: HELLO -> WELCOME, then every request answered per the script. */
static void serve(struct fake *fk, int fd, int conn)
{
    struct proto_reader rd;
    proto_reader_init(&rd, PROTO_MAX_FRAME_DEFAULT);
    bool open = true;
    while (open) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, IDLE_MS) <= 0)
            break;
        uint8_t tmp[4096];
        ssize_t got = recv(fd, tmp, sizeof tmp, 0);
        if (got <= 0 || proto_reader_feed(&rd, tmp, (size_t)got))
            break;
        struct proto_frame f;
        struct err e;
        while (open && proto_reader_next(&rd, &f, &e) == 1) {
            struct buf out;
            buf_init(&out);
            if (f.kind == PROTO_HELLO) {
                struct proto_welcome w = {PROTO_VERSION, 1, "fake", 4, 0, NULL, 0};
                proto_welcome_append_features(&out, &w, fk->features[conn]);
            } else if (f.kind == PROTO_REQUEST) {
                struct proto_request q;
                if (proto_request_decode(&f, &q, &e) != 0) {
                    fk->bad++;
                    open = false;
                } else if (!record(fk, conn, &q)) {
                    const struct buf *pl = fk->placement;
                    proto_response_ok_append(&out, q.id, pl ? pl->data : NULL, pl ? pl->len : 0);
                } else if (fk->act[fk->nwrites - 1] == ACT_DROP) {
                    open = false; /* the answer is lost */
                } else if (fk->act[fk->nwrites - 1] == ACT_OK) {
                    proto_response_ok_append(&out, q.id, NULL, 0);
                } else if (fk->act[fk->nwrites - 1] == ACT_NOT_LEADER) {
                    proto_response_err_append(&out, q.id, STRATA_NOT_LEADER, "not the leader",
                                              NULL);
                } else {
                    proto_response_err_append(&out, q.id, STRATA_OUTCOME_FORGOTTEN,
                                              "seq 1 is no longer remembered", NULL);
                }
            }
            send_buf(fd, &out);
            buf_close(&out);
        }
    }
    proto_reader_close(&rd);
    close(fd);
}

static void *fake_main(void *arg)
{
    struct fake *fk = arg;
    while (fk->nconn < MAX_CONNS) {
        struct pollfd p = {fk->lfd, POLLIN, 0};
        if (poll(&p, 1, IDLE_MS) <= 0)
            break; /* no further connection: the client is done */
        int fd = accept(fk->lfd, NULL, NULL);
        if (fd < 0)
            break;
        serve(fk, fd, fk->nconn++);
    }
    return NULL;
}

static void fake_start(struct fake *fk)
{
    fk->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fk->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fk->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fk->lfd, 4), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(fk->lfd, (struct sockaddr *)&a, &al), 0);
    fk->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&fk->th, NULL, fake_main, fk), 0);
}

static void fake_stop(struct fake *fk)
{
    pthread_join(fk->th, NULL);
    close(fk->lfd);
    assert_int_equal(fk->bad, 0);
}

/* {"op": "kv.put", "key": "k", "value": 1} */
static const uint8_t PUT[] = {0x83, 0xa2, 'o', 'p',  0xa6, 'k',  'v', '.', 'p', 'u', 't', 0xa3,
                              'k',  'e',  'y', 0xa1, 'k',  0xa5, 'v', 'a', 'l', 'u', 'e', 0x01};

/* Run PUT through a strata:// handle (URI options after routing=server: `opts`) against
 * the fake; its code and message. */
static int put_once(struct fake *fk, const char *opts, struct err *e)
{
    char uri[128];
    snprintf(uri, sizeof uri, "strata://127.0.0.1:%u?routing=server%s", fk->port, opts);
    struct strata *db;
    assert_int_equal(strata_open(uri, &db, e), 0);
    strata_set_timeouts(db, 4000, 1000);
    struct buf res;
    buf_init(&res);
    int rc = strata_exec(db, PUT, sizeof PUT, &res, e);
    strata_close(db);
    buf_close(&res);
    return rc;
}

static bool has(const struct err *e, const char *needle)
{
    if (strstr(e->msg, needle) == NULL) {
        print_error("message '%s' lacks '%s'\n", e->msg, needle);
        return false;
    }
    return true;
}

/* A server without the feature (an older one): no key, and a lost answer is not resent. */
static void test_net_old_server_no_keys_no_resend(void **state)
{
    (void)state;
    struct fake fk = {.features = {0, 0}, .act = {ACT_DROP, ACT_OK}};
    fake_start(&fk);
    struct err e;
    assert_int_equal(put_once(&fk, "", &e), STRATA_UNKNOWN_OUTCOME);
    fake_stop(&fk);
    assert_int_equal(fk.nwrites, 1);
    assert_false(fk.w[0].keyed);
}

/* A server that lists "idem": keyed, and resent with the same key after a lost answer. */
static void test_net_idem_server_keys_and_resends(void **state)
{
    (void)state;
    struct fake fk = {.features = {PROTO_FEAT_IDEM, PROTO_FEAT_IDEM}, .act = {ACT_DROP, ACT_OK}};
    fake_start(&fk);
    struct err e;
    assert_int_equal(put_once(&fk, "", &e), 0);
    fake_stop(&fk);
    assert_int_equal(fk.nwrites, 2);
    assert_true(fk.w[0].keyed && fk.w[1].keyed);
    assert_int_equal(fk.w[0].conn, 0);
    assert_int_equal(fk.w[1].conn, 1);
    assert_true(fk.w[0].seq == fk.w[1].seq && fk.w[0].seq >= 1);
    assert_false(fk.w[0].retry);
    assert_true(fk.w[1].retry);
}

/* Keyed, answer lost, and the node reached next does not list "idem" (a node of an older
 * version, e.g. a rollback): the write is not resent there. */
static void test_net_no_resend_to_server_without_idem(void **state)
{
    (void)state;
    struct fake fk = {.features = {PROTO_FEAT_IDEM, 0}, .act = {ACT_DROP, ACT_OK}};
    fake_start(&fk);
    struct err e;
    assert_int_equal(put_once(&fk, "", &e), STRATA_UNKNOWN_OUTCOME);
    assert_true(has(&e, "not resent"));
    fake_stop(&fk);
    assert_int_equal(fk.nconn, 2); /* it reconnected, then held the write back */
    assert_int_equal(fk.nwrites, 1);
}

/* Keyed, refused without running (NOT_LEADER), then the next node lacks "idem": nothing
 * ran, so the write goes again — without its key. */
static void test_net_not_run_write_goes_bare_to_server_without_idem(void **state)
{
    (void)state;
    struct fake fk = {.features = {PROTO_FEAT_IDEM, 0}, .act = {ACT_NOT_LEADER, ACT_OK}};
    fake_start(&fk);
    struct err e;
    assert_int_equal(put_once(&fk, "", &e), 0);
    fake_stop(&fk);
    assert_int_equal(fk.nwrites, 2);
    assert_true(fk.w[0].keyed);
    assert_false(fk.w[1].keyed);
}

/* The resend's outcome is forgotten by the server: the program gets UNKNOWN_OUTCOME. */
static void test_net_forgotten_outcome_is_unknown_outcome(void **state)
{
    (void)state;
    struct fake fk = {.features = {PROTO_FEAT_IDEM, PROTO_FEAT_IDEM},
                      .act = {ACT_DROP, ACT_FORGOTTEN}};
    fake_start(&fk);
    struct err e;
    assert_int_equal(put_once(&fk, "", &e), STRATA_UNKNOWN_OUTCOME);
    assert_true(has(&e, "no longer remembers the outcome of this resent write"));
    assert_true(has(&e, "seq 1 is no longer remembered"));
    fake_stop(&fk);
    assert_int_equal(fk.nwrites, 2);
    assert_true(fk.w[1].keyed && fk.w[1].retry);
}

/* With ?idempotency=off nothing changes whatever the server lists. */
static void test_net_idempotency_off_ignores_features(void **state)
{
    (void)state;
    struct fake fk = {.features = {PROTO_FEAT_IDEM, PROTO_FEAT_IDEM}, .act = {ACT_DROP, ACT_OK}};
    fake_start(&fk);
    struct err e;
    assert_int_equal(put_once(&fk, "&idempotency=off", &e), STRATA_UNKNOWN_OUTCOME);
    fake_stop(&fk);
    assert_int_equal(fk.nwrites, 1);
    assert_false(fk.w[0].keyed);
}

static int buf_w(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

/* Routed: node 1 (the seed, lists "idem") leads shard 1 and its branch "default"; node 2
 * (lists nothing: an older node) leads shard 2 and its branch "b". A write to node 1 is
 * keyed while only node 1 is connected; once a write to "b" opened a connection to node
 * 2, writes to node 1 go bare too, and one whose answer is lost is not resent. */
static void test_net_routed_keys_stop_once_any_connection_lacks_idem(void **state)
{
    (void)state;
    struct fake n1 = {.features = {PROTO_FEAT_IDEM, PROTO_FEAT_IDEM},
                      .act = {ACT_OK, ACT_DROP, ACT_OK}};
    struct fake n2 = {.act = {ACT_OK}};
    fake_start(&n1);
    fake_start(&n2);
    struct pl_node nodes[2] = {{1, "", PL_NODE_ACTIVE}, {2, "", PL_NODE_ACTIVE}};
    snprintf(nodes[0].address, sizeof nodes[0].address, "127.0.0.1:%u", n1.port);
    snprintf(nodes[1].address, sizeof nodes[1].address, "127.0.0.1:%u", n2.port);
    struct placement p;
    placement_init(&p);
    struct err e;
    assert_int_equal(placement_initial(&p, nodes, 2, 2, 1, &e), 0);
    assert_int_equal(placement_assign(&p, "b", 1, 2, &e), 0);
    struct buf table, answer;
    buf_init(&table);
    buf_init(&answer);
    assert_int_equal(placement_encode(&p, &table), 0);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &answer, buf_w);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "epoch", 5);
    msgpack_pack_uint64(&pk, 3);
    msgpack_pack_str_with_body(&pk, "table", 5);
    buf_append(&answer, table.data, table.len);
    msgpack_pack_str_with_body(&pk, "leaders", 7);
    msgpack_pack_array(&pk, 0);
    n1.placement = n2.placement = &answer;

    char uri[96];
    snprintf(uri, sizeof uri, "strata://127.0.0.1:%u", n1.port);
    struct strata *db;
    assert_int_equal(strata_open(uri, &db, &e), 0);
    strata_set_timeouts(db, 4000, 1000);
    /* {"op": "kv.put", "key": "k", "value": 1, "branch": "b"} */
    static const uint8_t put_b[] = {0x84, 0xa2, 'o',  'p', 0xa6, 'k', 'v',  '.', 'p', 'u',  't',
                                    0xa3, 'k',  'e',  'y', 0xa1, 'k', 0xa5, 'v', 'a', 'l',  'u',
                                    'e',  0x01, 0xa6, 'b', 'r',  'a', 'n',  'c', 'h', 0xa1, 'b'};
    struct buf res;
    buf_init(&res);
    assert_int_equal(strata_exec(db, PUT, sizeof PUT, &res, &e), 0);
    assert_int_equal(strata_exec(db, put_b, sizeof put_b, &res, &e), 0);
    assert_int_equal(strata_exec(db, PUT, sizeof PUT, &res, &e), STRATA_UNKNOWN_OUTCOME);
    strata_close(db);
    buf_close(&res);
    fake_stop(&n1);
    fake_stop(&n2);
    assert_int_equal(n1.nwrites, 2); /* the lost one was not resent */
    assert_true(n1.w[0].keyed);
    assert_false(n1.w[1].keyed);
    assert_int_equal(n2.nwrites, 1);
    assert_false(n2.w[0].keyed);
    buf_close(&table);
    buf_close(&answer);
    placement_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_net_old_server_no_keys_no_resend),
        cmocka_unit_test(test_net_idem_server_keys_and_resends),
        cmocka_unit_test(test_net_no_resend_to_server_without_idem),
        cmocka_unit_test(test_net_not_run_write_goes_bare_to_server_without_idem),
        cmocka_unit_test(test_net_forgotten_outcome_is_unknown_outcome),
        cmocka_unit_test(test_net_idempotency_off_ignores_features),
        cmocka_unit_test(test_net_routed_keys_stop_once_any_connection_lacks_idem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
