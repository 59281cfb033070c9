/* Integration-test harness, client side: libstrata handles on nodes or the whole
 * cluster, commands as JSON text, result decoding, cluster.status, and bulk data
 * writes and checks. See harness.h. */
#include "harness.h"

#include "storage.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Client helpers ------------------------------------------------------------------- */

struct strata *h_open_nodes(const char *key, const char *addrs)
{
    char uri[1024];
    snprintf(uri, sizeof uri, "strata://%s%s%s", key ? key : "", key ? "@" : "", addrs);
    struct strata *db = NULL;
    struct err e;
    err_clear(&e);
    if (strata_open(uri, &db, &e)) {
        fprintf(stderr, "harness: strata_open %s: %s\n", uri, e.msg);
        return NULL;
    }
    return db;
}

struct strata *h_open_node(const struct h_cluster *c, int i, const char *key)
{
    /* Pinned: every command goes to node i, which routes it (forwarding when needed). */
    char addr[64];
    snprintf(addr, sizeof addr, "%s?routing=server", c->nodes[i].addr);
    return h_open_nodes(key, addr);
}

struct strata *h_open_cluster(const struct h_cluster *c, const char *key)
{
    return h_open_nodes(key, c->members);
}

int h_exec(struct strata *db, unsigned flags, struct buf *res, struct err *e, const char *fmt, ...)
{
    char *json = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&json, fmt, ap);
    va_end(ap);
    struct err local;
    if (e == NULL)
        e = &local;
    err_clear(e);
    if (n < 0)
        return err_set(e, STRATA_OUT_OF_MEMORY, "out of memory");
    struct buf cmd, scratch;
    buf_init(&cmd);
    buf_init(&scratch);
    int rc = storage_json_to_value(json, (size_t)n, &cmd, e);
    if (rc == 0)
        rc = strata_exec_flags(db, cmd.data, cmd.len, flags, res ? res : &scratch, e);
    buf_close(&cmd);
    buf_close(&scratch);
    free(json);
    return rc;
}

int h_obj_parse(struct h_obj *x, const struct buf *b)
{
    msgpack_unpacked_init(&x->u);
    size_t off = 0;
    if (b->len == 0 ||
        msgpack_unpack_next(&x->u, (const char *)b->data, b->len, &off) != MSGPACK_UNPACK_SUCCESS) {
        msgpack_unpacked_destroy(&x->u);
        x->o = NULL;
        return STRATA_PROTOCOL_ERROR;
    }
    x->o = &x->u.data;
    return 0;
}

void h_obj_free(struct h_obj *x)
{
    if (x->o)
        msgpack_unpacked_destroy(&x->u);
    x->o = NULL;
}

const msgpack_object *h_map_get(const msgpack_object *m, const char *key)
{
    size_t n = strlen(key);
    if (m == NULL || m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

uint64_t h_map_u64(const msgpack_object *m, const char *key)
{
    const msgpack_object *v = h_map_get(m, key);
    return v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : 0;
}

void h_map_str(const msgpack_object *m, const char *key, char *out, size_t cap)
{
    const msgpack_object *v = h_map_get(m, key);
    if (v && v->type == MSGPACK_OBJECT_STR)
        snprintf(out, cap, "%.*s", (int)v->via.str.size, v->via.str.ptr);
    else if (cap)
        out[0] = '\0';
}

int h_get_str(struct strata *db, unsigned flags, const char *branch, const char *key, char *out,
              size_t cap, struct err *e)
{
    struct buf res;
    buf_init(&res);
    int rc = branch ? h_exec(db, flags, &res, e,
                             "{\"op\":\"kv.get\",\"branch\":\"%s\",\"key\":\"%s\"}", branch, key)
                    : h_exec(db, flags, &res, e, "{\"op\":\"kv.get\",\"key\":\"%s\"}", key);
    if (rc == 0) {
        struct h_obj x;
        if (h_obj_parse(&x, &res)) {
            rc = STRATA_PROTOCOL_ERROR;
        } else {
            const msgpack_object *v = h_map_get(x.o, "value");
            if (x.o->type == MSGPACK_OBJECT_NIL)
                rc = STRATA_NOT_FOUND;
            else if (v == NULL || v->type != MSGPACK_OBJECT_STR)
                rc = STRATA_WRONG_TYPE;
            else
                snprintf(out, cap, "%.*s", (int)v->via.str.size, v->via.str.ptr);
            h_obj_free(&x);
        }
    }
    buf_close(&res);
    return rc;
}

static const char *status_key;

void h_set_status_key(const char *key)
{
    status_key = key;
}

uint32_t h_status_group = 1;

int h_status(const struct h_cluster *c, int i, struct h_status *st)
{
    memset(st, 0, sizeof *st);
    struct strata *db = h_open_node(c, i, status_key);
    if (db == NULL)
        return STRATA_INTERNAL;
    struct buf res;
    buf_init(&res);
    int rc = h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.status\"}");
    strata_close(db);
    if (rc == 0) {
        struct h_obj x;
        if (h_obj_parse(&x, &res) == 0) {
            st->node_id = h_map_u64(x.o, "node_id");
            st->leader_id = h_map_u64(x.o, "leader_id");
            st->term = h_map_u64(x.o, "term");
            st->commit_index = h_map_u64(x.o, "commit_index");
            st->applied_index = h_map_u64(x.o, "applied_index");
            st->last_index = h_map_u64(x.o, "last_index");
            st->forwarded = h_map_u64(x.o, "forwarded");
            h_map_str(x.o, "role", st->role, sizeof st->role);
            h_map_str(x.o, "leader", st->leader, sizeof st->leader);
            const msgpack_object *m = h_map_get(x.o, "members");
            st->nmembers = m && m->type == MSGPACK_OBJECT_ARRAY ? m->via.array.size : 0;
            /* The group that owns the default branch (shard 1), where these tests'
             * writes go, overrides the meta group's figures above. */
            const msgpack_object *gs = h_map_get(x.o, "groups");
            for (uint32_t k = 0; gs && gs->type == MSGPACK_OBJECT_ARRAY && k < gs->via.array.size;
                 k++) {
                const msgpack_object *g = &gs->via.array.ptr[k];
                if (h_map_u64(g, "id") != h_status_group)
                    continue;
                st->leader_id = h_map_u64(g, "leader_id");
                st->term = h_map_u64(g, "term");
                st->commit_index = h_map_u64(g, "commit_index");
                st->applied_index = h_map_u64(g, "applied_index");
                st->last_index = h_map_u64(g, "last_index");
                h_map_str(g, "role", st->role, sizeof st->role);
                h_map_str(g, "leader", st->leader, sizeof st->leader);
                m = h_map_get(g, "members");
                st->nmembers = m && m->type == MSGPACK_OBJECT_ARRAY ? m->via.array.size : 0;
            }
            h_obj_free(&x);
        } else {
            rc = STRATA_PROTOCOL_ERROR;
        }
    }
    buf_close(&res);
    return rc;
}

int h_wait_leader(struct h_cluster *c, unsigned ms, int exclude)
{
    uint64_t deadline = h_now_ms() + ms;
    do {
        int leader = -1;
        struct h_status st[H_MAX_NODES];
        bool ok = true;
        for (int i = 0; i < c->n && ok; i++) {
            if (i == exclude || c->nodes[i].pid == 0)
                continue;
            ok = h_status(c, i, &st[i]) == 0;
            if (ok && strcmp(st[i].role, "leader") == 0)
                leader = i;
        }
        if (ok && leader >= 0) {
            for (int i = 0; i < c->n && ok; i++)
                if (i != exclude && c->nodes[i].pid != 0)
                    ok = st[i].leader_id == c->nodes[leader].id;
            if (ok)
                return leader;
        }
        h_sleep_ms(20);
    } while (h_now_ms() < deadline);
    return -1;
}

/* ---- Data checks ---------------------------------------------------------------------- */

void h_kv_fill(struct h_kv *kv, size_t n, const char *prefix)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(kv[i].key, sizeof kv[i].key, "%s-%zu", prefix, i);
        snprintf(kv[i].value, sizeof kv[i].value, "%s-value-%zu", prefix, i);
    }
}

#define CHECK_CHUNK 250

int h_batch_check(struct strata *db, unsigned flags, const char *branch, const struct h_kv *kv,
                  size_t n, size_t *absent, size_t *wrong)
{
    *absent = *wrong = 0;
    int rc = 0;
    for (size_t at = 0; at < n && rc == 0; at += CHECK_CHUNK) {
        size_t cnt = n - at < CHECK_CHUNK ? n - at : CHECK_CHUNK;
        struct buf json, res;
        buf_init(&json);
        buf_init(&res);
        buf_printf(&json, "{\"op\":\"kv.batch_get\"");
        if (branch)
            buf_printf(&json, ",\"branch\":\"%s\"", branch);
        buf_printf(&json, ",\"keys\":[");
        for (size_t i = 0; i < cnt; i++)
            buf_printf(&json, "%s\"%s\"", i ? "," : "", kv[at + i].key);
        buf_printf(&json, "]}");
        rc = h_exec(db, flags, &res, NULL, "%.*s", (int)json.len, (const char *)json.data);
        struct h_obj x;
        if (rc == 0 && h_obj_parse(&x, &res) == 0) {
            if (x.o->type != MSGPACK_OBJECT_ARRAY || x.o->via.array.size != cnt) {
                rc = STRATA_PROTOCOL_ERROR;
            } else {
                for (size_t i = 0; i < cnt; i++) {
                    const msgpack_object *r = &x.o->via.array.ptr[i];
                    const msgpack_object *v = h_map_get(r, "value");
                    size_t vl = strlen(kv[at + i].value);
                    if (r->type == MSGPACK_OBJECT_NIL)
                        (*absent)++;
                    else if (v == NULL || v->type != MSGPACK_OBJECT_STR || v->via.str.size != vl ||
                             memcmp(v->via.str.ptr, kv[at + i].value, vl) != 0)
                        (*wrong)++;
                }
            }
            h_obj_free(&x);
        } else if (rc == 0) {
            rc = STRATA_PROTOCOL_ERROR;
        }
        buf_close(&json);
        buf_close(&res);
    }
    return rc;
}

long h_expect_on_node(const struct h_cluster *c, int i, const struct h_kv *kv, size_t n,
                      unsigned ms)
{
    uint64_t deadline = h_now_ms() + ms;
    long left = -1;
    do {
        /* A fresh handle per round: its first connection goes to node i, the only seed. */
        struct strata *db = h_open_node(c, i, NULL);
        if (db == NULL)
            return -1;
        size_t absent, wrong;
        int rc = h_batch_check(db, STRATA_EXEC_STALE, NULL, kv, n, &absent, &wrong);
        /* Prove the answers came from node i: the same connection reports its node id. */
        struct buf res;
        buf_init(&res);
        if (rc == 0)
            rc = h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.status\"}");
        struct h_obj x;
        if (rc == 0 && h_obj_parse(&x, &res) == 0) {
            if (h_map_u64(x.o, "node_id") == c->nodes[i].id)
                left = (long)(absent + wrong);
            h_obj_free(&x);
        }
        buf_close(&res);
        strata_close(db);
        if (left == 0)
            return 0;
        h_sleep_ms(50);
    } while (h_now_ms() < deadline);
    return left;
}

size_t h_put_all(struct strata *db, const char *branch, const struct h_kv *kv, size_t n, size_t per)
{
    size_t acked = 0;
    enum { MAXPER = 64 };
    if (per == 0 || per > MAXPER)
        per = MAXPER;
    for (size_t at = 0; at < n; at += per) {
        size_t cnt = n - at < per ? n - at : per;
        struct buf cmds[MAXPER], results[MAXPER];
        const uint8_t *ptrs[MAXPER];
        size_t lens[MAXPER];
        int codes[MAXPER];
        struct err errs[MAXPER];
        for (size_t i = 0; i < cnt; i++) {
            char json[256];
            int l = branch ? snprintf(json, sizeof json,
                                      "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"%s\","
                                      "\"value\":\"%s\"}",
                                      branch, kv[at + i].key, kv[at + i].value)
                           : snprintf(json, sizeof json,
                                      "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":\"%s\"}",
                                      kv[at + i].key, kv[at + i].value);
            buf_init(&cmds[i]);
            buf_init(&results[i]);
            struct err e;
            storage_json_to_value(json, (size_t)l, &cmds[i], &e);
            ptrs[i] = cmds[i].data;
            lens[i] = cmds[i].len;
        }
        if (strata_exec_many(db, ptrs, lens, cnt, 0, results, codes, errs) == 0) {
            for (size_t i = 0; i < cnt; i++) {
                if (codes[i] == 0)
                    acked++;
                else if (at + i - acked < 5) /* the first few failures, for diagnosis */
                    h_note("put %s: %s: %s", kv[at + i].key, err_name(codes[i]), errs[i].msg);
            }
        }
        for (size_t i = 0; i < cnt; i++) {
            buf_close(&cmds[i]);
            buf_close(&results[i]);
        }
    }
    return acked;
}
