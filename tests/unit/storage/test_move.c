/* Branch moves, the shard side: export/import between two engines (copy in chunks,
 * deltas, the fence), idempotent replays, the markers, and bad input of every kind. */
#include "helpers.h"

#include <msgpack.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Raw commands and results --------------------------------------------------------- */

struct res {
    msgpack_unpacked u;
    const msgpack_object *o;
    struct buf raw;
};

static int64_t clock_us = 1000000;

/* Run a msgpack command; on success *r holds the decoded result (res_free it). */
static int run_mp(struct storage *s, const struct buf *cmd, struct res *r, struct err *e)
{
    struct err local;
    if (e == NULL)
        e = &local;
    buf_init(&r->raw);
    msgpack_unpacked_init(&r->u);
    r->o = NULL;
    clock_us += 1000;
    int rc = storage_exec(s, cmd->data, cmd->len, clock_us, &r->raw, e);
    if (rc == 0) {
        size_t off = 0;
        assert_int_equal(msgpack_unpack_next(&r->u, (const char *)r->raw.data, r->raw.len, &off),
                         MSGPACK_UNPACK_SUCCESS);
        r->o = &r->u.data;
    }
    return rc;
}

static void res_free(struct res *r)
{
    msgpack_unpacked_destroy(&r->u);
    buf_close(&r->raw);
}

/* Run a command given as JSON text. */
static int run(struct storage *s, struct res *r, struct err *e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int run(struct storage *s, struct res *r, struct err *e, const char *fmt, ...)
{
    static char json[1 << 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    struct buf cmd;
    buf_init(&cmd);
    struct err pe;
    assert_int_equal(storage_json_to_value(json, strlen(json), &cmd, &pe), 0);
    struct res tmp;
    int rc = run_mp(s, &cmd, r ? r : &tmp, e);
    if (r == NULL)
        res_free(&tmp);
    buf_close(&cmd);
    return rc;
}

static const msgpack_object *get(const msgpack_object *m, const char *k)
{
    if (m == NULL || m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (m->via.map.ptr[i].key.type == MSGPACK_OBJECT_STR &&
            m->via.map.ptr[i].key.via.str.size == strlen(k) &&
            memcmp(m->via.map.ptr[i].key.via.str.ptr, k, strlen(k)) == 0)
            return &m->via.map.ptr[i].val;
    return NULL;
}

static uint64_t get_u64(const msgpack_object *m, const char *k)
{
    const msgpack_object *o = get(m, k);
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    return o->via.u64;
}

static bool get_bool(const msgpack_object *m, const char *k)
{
    const msgpack_object *o = get(m, k);
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_BOOLEAN);
    return o->via.boolean;
}

/* ---- A little driver, as node/move.c runs it ----------------------------------------- */

struct export_out {
    struct buf blob;
    bool last, fenced;
    uint32_t records;
};

static int export_chunk(struct storage *src, const struct buf *cmd, struct export_out *out,
                        struct err *e)
{
    struct res r;
    int rc = run_mp(src, cmd, &r, e);
    buf_init(&out->blob);
    if (rc == 0) {
        const msgpack_object *b = get(r.o, "blob");
        assert_non_null(b);
        assert_int_equal(b->type, MSGPACK_OBJECT_BIN);
        buf_append(&out->blob, b->via.bin.ptr, b->via.bin.size);
        out->last = get_bool(r.o, "last");
        out->fenced = get_bool(r.o, "fenced");
        out->records = (uint32_t)get_u64(r.o, "records");
        res_free(&r);
    }
    return rc;
}

static int bw(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* The move.import command {name, source_shard, move_id, blob}. */
static void import_cmd(struct buf *cmd, const char *name, uint32_t shard, uint64_t id,
                       const uint8_t *blob, size_t len)
{
    buf_init(cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, bw);
    msgpack_pack_map(&pk, 5);
    pk_str(&pk, "op");
    pk_str(&pk, "move.import");
    pk_str(&pk, "name");
    pk_str(&pk, name);
    pk_str(&pk, "source_shard");
    msgpack_pack_uint32(&pk, shard);
    pk_str(&pk, "move_id");
    msgpack_pack_uint64(&pk, id);
    pk_str(&pk, "blob");
    msgpack_pack_bin(&pk, len);
    msgpack_pack_bin_body(&pk, blob, len);
}

/* Run move.import; *r (when non-NULL and 0) holds the result. */
static int import_blob(struct storage *dst, const char *name, uint32_t shard, uint64_t id,
                       const uint8_t *blob, size_t len, struct res *r, struct err *e)
{
    struct buf cmd;
    import_cmd(&cmd, name, shard, id, blob, len);
    struct res tmp;
    int rc = run_mp(dst, &cmd, r ? r : &tmp, e);
    if (r == NULL)
        res_free(&tmp);
    buf_close(&cmd);
    return rc;
}

/* The target's import marker (move.status), decoded into the export arguments of the
 * next chunk. Returns false when the target holds no copy. */
struct position {
    bool has, complete, has_log, done;
    uint64_t at, ver, log_pos;
    uint8_t key[2200];
    size_t klen;
};

static bool target_position(struct storage *dst, const char *name, struct position *p)
{
    struct res r;
    assert_int_equal(run(dst, &r, NULL, "{\"op\":\"move.status\",\"name\":\"%s\"}", name), 0);
    memset(p, 0, sizeof *p);
    const msgpack_object *im = get(r.o, "import");
    bool found = im && im->type == MSGPACK_OBJECT_MAP;
    if (found) {
        p->at = get_u64(im, "copy_at");
        p->complete = get_bool(im, "copy_complete");
        const msgpack_object *cp = get(im, "copy_pos"), *lp = get(im, "log_pos"),
                             *st = get(im, "state");
        if (cp && cp->type == MSGPACK_OBJECT_ARRAY) {
            p->has = true;
            p->klen = cp->via.array.ptr[0].via.bin.size;
            memcpy(p->key, cp->via.array.ptr[0].via.bin.ptr, p->klen);
            p->ver = cp->via.array.ptr[1].via.u64;
        }
        p->has_log = lp && lp->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
        p->log_pos = p->has_log ? lp->via.u64 : 0;
        p->done = st && st->via.str.size == 4 && memcmp(st->via.str.ptr, "done", 4) == 0;
    }
    res_free(&r);
    return found;
}

/* The export command for the next chunk the target needs. */
static void next_export(struct buf *cmd, const char *name, const struct position *p, bool found,
                        uint32_t max)
{
    buf_init(cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, bw);
    bool copy = !found || !p->complete;
    msgpack_pack_map(&pk, 4 + (copy ? (found ? 1 : 0) + (p->has ? 2 : 0) : 1));
    pk_str(&pk, "op");
    pk_str(&pk, "move.export");
    pk_str(&pk, "name");
    pk_str(&pk, name);
    pk_str(&pk, "mode");
    pk_str(&pk, copy ? "copy" : "delta");
    pk_str(&pk, "max_bytes");
    msgpack_pack_uint32(&pk, max);
    if (copy) {
        if (found) {
            pk_str(&pk, "at");
            msgpack_pack_uint64(&pk, p->at);
        }
        if (p->has) {
            pk_str(&pk, "after_key");
            msgpack_pack_bin(&pk, p->klen);
            msgpack_pack_bin_body(&pk, p->key, p->klen);
            pk_str(&pk, "after_ver");
            msgpack_pack_uint64(&pk, p->ver);
        }
    } else if (p->has_log) {
        pk_str(&pk, "from_pos");
        msgpack_pack_uint64(&pk, p->log_pos);
    } else {
        pk_str(&pk, "since");
        msgpack_pack_uint64(&pk, p->at);
    }
}

/* One step: export what the target needs next and import it. Returns the export's
 * `last`; *records gets its record count. With `twice`, every import is replayed and
 * must be a no-op. */
static bool step(struct storage *src, struct storage *dst, const char *name, uint64_t id,
                 uint32_t max, bool twice, uint32_t *records)
{
    struct position p;
    bool found = target_position(dst, name, &p);
    struct buf cmd;
    next_export(&cmd, name, &p, found, max);
    struct export_out ex;
    struct err e;
    int rc = export_chunk(src, &cmd, &ex, &e);
    if (rc)
        fprintf(stderr, "export: %s: %s\n", err_name(rc), e.msg);
    assert_int_equal(rc, 0);
    struct res r;
    rc = import_blob(dst, name, 7, id, ex.blob.data, ex.blob.len, &r, &e);
    if (rc)
        fprintf(stderr, "import: %s: %s\n", err_name(rc), e.msg);
    assert_int_equal(rc, 0);
    assert_true(get_bool(r.o, "applied"));
    res_free(&r);
    if (twice) {
        struct buf before, after;
        t_snapshot(dst, &before);
        assert_int_equal(import_blob(dst, name, 7, id, ex.blob.data, ex.blob.len, &r, NULL), 0);
        assert_false(get_bool(r.o, "applied"));
        res_free(&r);
        t_snapshot(dst, &after);
        assert_true(before.len == after.len && memcmp(before.data, after.data, before.len) == 0);
        buf_close(&before);
        buf_close(&after);
    }
    if (records)
        *records = ex.records;
    bool last = ex.last;
    buf_close(&ex.blob);
    buf_close(&cmd);
    return last;
}

/* Copy until complete, then deltas until the target is level with the source. */
static void copy_all(struct storage *src, struct storage *dst, const char *name, uint64_t id,
                     uint32_t max, bool twice, int *chunks)
{
    int n = 0;
    struct position p;
    while (!target_position(dst, name, &p) || !p.complete) {
        step(src, dst, name, id, max, twice, NULL);
        assert_true(++n < 100000);
    }
    if (chunks)
        *chunks = n;
}

static void catch_up(struct storage *src, struct storage *dst, const char *name, uint64_t id,
                     uint32_t max)
{
    for (int n = 0; !step(src, dst, name, id, max, false, NULL); n++)
        assert_true(n < 100000);
}

/* ---- Comparing two branches ------------------------------------------------------------ */

/* The JSON text of a command's result (or the error name). */
static void result_text(struct storage *s, char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void result_text(struct storage *s, char *out, size_t cap, const char *fmt, ...)
{
    char json[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    struct res r;
    struct err e;
    int rc = run(s, &r, &e, "%s", json);
    if (rc) {
        snprintf(out, cap, "%s", err_name(rc));
        return;
    }
    struct buf j;
    buf_init(&j);
    storage_value_to_json(r.raw.data, r.raw.len, &j, false);
    snprintf(out, cap, "%.*s", (int)j.len, (const char *)j.data);
    buf_close(&j);
    res_free(&r);
}

/* Both engines answer `fmt` identically. */
#define SAME(a, b, ...)                                                                            \
    do {                                                                                           \
        static char ra_[1 << 16], rb_[1 << 16];                                                    \
        result_text(a, ra_, sizeof ra_, __VA_ARGS__);                                              \
        result_text(b, rb_, sizeof rb_, __VA_ARGS__);                                              \
        if (strcmp(ra_, rb_) != 0) {                                                               \
            fprintf(stderr, "differ:\n  source: %s\n  target: %s\n", ra_, rb_);                    \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

/* A whole-lineage export of both sides at their heads: equal records = equal chains. */
static void same_chains(struct storage *src, struct storage *dst, const char *name)
{
    struct buf a, b;
    for (int side = 0; side < 2; side++) {
        struct storage *s = side ? dst : src;
        struct res r;
        assert_int_equal(run(s, &r, NULL,
                             "{\"op\":\"move.export\",\"name\":\"%s\",\"mode\":\"copy\","
                             "\"max_bytes\":3145728}",
                             name),
                         0);
        assert_true(get_bool(r.o, "last"));
        const msgpack_object *bl = get(r.o, "blob");
        /* The records array follows the header; compare from the records on. */
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        size_t off = 0;
        assert_int_equal(msgpack_unpack_next(&u, bl->via.bin.ptr + 12, bl->via.bin.size - 44, &off),
                         MSGPACK_UNPACK_SUCCESS);
        struct buf *out = side ? &b : &a;
        buf_init(out);
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, bw);
        msgpack_pack_object(&pk, u.data.via.array.ptr[1]);
        msgpack_unpacked_destroy(&u);
        res_free(&r);
    }
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    buf_close(&a);
    buf_close(&b);
}

static struct storage *engine(void)
{
    struct storage *s;
    assert_int_equal(storage_new(NULL, &s), 0);
    return s;
}

/* Every primitive, several versions, deletes, a second space. */
static void fill(struct storage *s, const char *br, int rounds, int base)
{
    for (int i = 0; i < rounds; i++) {
        int v = base + i;
        assert_int_equal(run(s, NULL, NULL,
                             "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"k%d\",\"value\":%d}",
                             br, v % 7, v),
                         0);
        assert_int_equal(run(s, NULL, NULL,
                             "{\"op\":\"kv.put\",\"branch\":\"%s\",\"space\":\"sp\",\"key\":\"a\","
                             "\"value\":\"%d\"}",
                             br, v),
                         0);
        assert_int_equal(run(s, NULL, NULL,
                             "{\"op\":\"json.set\",\"branch\":\"%s\",\"key\":\"doc\",\"path\":\"$\","
                             "\"value\":{\"n\":%d,\"l\":[%d]}}",
                             br, v, v),
                         0);
        assert_int_equal(run(s, NULL, NULL,
                             "{\"op\":\"event.append\",\"branch\":\"%s\",\"type\":\"t\","
                             "\"payload\":{\"i\":%d}}",
                             br, v),
                         0);
        assert_int_equal(run(s, NULL, NULL,
                             "{\"op\":\"state.set\",\"branch\":\"%s\",\"cell\":\"c\",\"value\":%d}",
                             br, v),
                         0);
        if (v % 5 == 4)
            assert_int_equal(run(s, NULL, NULL,
                                 "{\"op\":\"kv.delete\",\"branch\":\"%s\",\"key\":\"k%d\"}", br,
                                 (v + 3) % 7),
                             0);
    }
}

/* Reads of every kind, at the head and at old versions, agree on both engines. */
static void same_reads(struct storage *a, struct storage *b, const char *br, uint64_t upto)
{
    for (int k = 0; k < 7; k++)
        SAME(a, b, "{\"op\":\"kv.history\",\"branch\":\"%s\",\"key\":\"k%d\"}", br, k);
    SAME(a, b, "{\"op\":\"kv.history\",\"branch\":\"%s\",\"space\":\"sp\",\"key\":\"a\"}", br);
    SAME(a, b, "{\"op\":\"json.history\",\"branch\":\"%s\",\"key\":\"doc\"}", br);
    SAME(a, b, "{\"op\":\"state.history\",\"branch\":\"%s\",\"cell\":\"c\"}", br);
    SAME(a, b, "{\"op\":\"event.range\",\"branch\":\"%s\",\"limit\":10000}", br);
    SAME(a, b, "{\"op\":\"event.verify_chain\",\"branch\":\"%s\"}", br);
    SAME(a, b, "{\"op\":\"space.list\",\"branch\":\"%s\"}", br);
    SAME(a, b, "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"limit\":1000}", br);
    SAME(a, b, "{\"op\":\"vector.list_collections\",\"branch\":\"%s\"}", br);
    for (uint64_t v = 1; v <= upto; v += 3) {
        SAME(a, b, "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"at_version\":%llu}", br,
             (unsigned long long)v);
        SAME(a, b, "{\"op\":\"json.get\",\"branch\":\"%s\",\"key\":\"doc\",\"at_version\":%llu}",
             br, (unsigned long long)v);
    }
}

/* ---- Tests ------------------------------------------------------------------------------ */

static void test_move_copy_delta_fence_roundtrip(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    assert_int_equal(run(src, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"b\"}"), 0);
    /* Unrelated writes on the target: its counter is ahead of, or behind, the source's. */
    for (int i = 0; i < 40; i++)
        assert_int_equal(run(dst, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":%d}", i),
                         0);
    fill(src, "b", 30, 0);
    assert_int_equal(run(src, NULL, NULL,
                         "{\"op\":\"vector.create_collection\",\"branch\":\"b\",\"collection\":"
                         "\"vc\",\"dimension\":3,\"metric\":\"cosine\"}"),
                     0);
    assert_int_equal(run(src, NULL, NULL,
                         "{\"op\":\"vector.upsert\",\"branch\":\"b\",\"collection\":\"vc\","
                         "\"key\":\"v1\",\"vector\":[1,0,0],\"metadata\":{\"m\":1}}"),
                     0);
    /* A value bigger than a chunk travels alone. */
    static char big[9000];
    memset(big, 'z', sizeof big - 1);
    assert_int_equal(run(src, NULL, NULL,
                         "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"big\",\"value\":\"%s\"}", big),
                     0);
    int chunks = 0;
    copy_all(src, dst, "b", 5, 4096, true, &chunks);
    assert_true(chunks > 3); /* small chunks: the copy took several, one key split */
    /* While importing, the target's copy refuses ordinary commands. */
    assert_int_equal(run(dst, NULL, NULL, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k1\"}"),
                     STRATA_UNAVAILABLE);
    /* Writes go on at the source; deltas catch up. */
    fill(src, "b", 20, 100);
    catch_up(src, dst, "b", 5, 4096);
    fill(src, "b", 5, 200);
    /* The fence: writes refused with MOVED naming the target, reads still served. */
    struct res r;
    assert_int_equal(run(src, &r, NULL,
                         "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":5}"),
                     0);
    uint64_t fence_ver = get_u64(r.o, "fence_version");
    res_free(&r);
    assert_int_equal(fence_ver, storage_version(src));
    struct err e;
    assert_int_equal(run(src, NULL, &e, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"z\",\"value\":1}"),
                     STRATA_MOVED);
    assert_non_null(strstr(e.msg, "shard 3"));
    assert_int_equal(run(src, NULL, NULL, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k1\"}"), 0);
    catch_up(src, dst, "b", 5, 4096);
    struct position p;
    assert_true(target_position(dst, "b", &p));
    assert_true(p.done);
    /* The copy is exact: chains, reads at the head and at every old version. */
    same_chains(src, dst, "b");
    same_reads(src, dst, "b", storage_version(src));
    SAME(src, dst, "{\"op\":\"vector.query\",\"branch\":\"b\",\"collection\":\"vc\",\"vector\":[1,0,0],\"k\":3}");
    /* Versions go on above every version the branch had. */
    assert_true(storage_version(dst) >= fence_ver);
    assert_int_equal(run(dst, &r, NULL, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k1\",\"value\":\"after\"}"),
                     0);
    assert_true(get_u64(r.o, "version") > fence_ver);
    res_free(&r);
    /* The target's other branch is untouched. */
    assert_int_equal(run(dst, &r, NULL, "{\"op\":\"kv.get\",\"key\":\"x\"}"), 0);
    assert_int_equal(get_u64(r.o, "value"), 39);
    res_free(&r);
    storage_free(src);
    storage_free(dst);
}

static void test_move_fence_seal_release(void **state)
{
    (void)state;
    struct storage *s = engine();
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"b\"}"), 0);
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1}"), 0);
    /* Before the fence: seal and release need it. */
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"move.seal\",\"name\":\"b\",\"move_id\":3}"),
                     STRATA_CONFLICT);
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"move.release\",\"name\":\"b\",\"move_id\":3}"),
                     STRATA_CONFLICT);
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":3}"), 0);
    /* A retry is fine, another move is not. */
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":3}"), 0);
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":4}"),
                     STRATA_CONFLICT);
    /* Every kind of write names the branch somewhere: all refused, nothing changed. */
    uint64_t v = storage_version(s);
    const char *writes[] = {
        "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":2}",
        "{\"op\":\"batch\",\"branch\":\"b\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"k\",\"value\":2}]}",
        "{\"op\":\"txn.commit\",\"branch\":\"b\",\"snapshot\":1,\"reads\":[],\"ops\":[{\"op\":\"kv.put\",\"key\":\"q\",\"value\":2}]}",
        "{\"op\":\"branch.fork\",\"source\":\"b\",\"name\":\"c\"}",
        "{\"op\":\"branch.delete\",\"name\":\"b\"}",
        "{\"op\":\"branch.set_retention\",\"name\":\"b\",\"keep_last\":1}",
        "{\"op\":\"branch.merge\",\"source\":\"default\",\"target\":\"b\"}",
        "{\"op\":\"space.create\",\"branch\":\"b\",\"space\":\"x\"}",
    };
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        struct err e;
        int rc = run(s, NULL, &e, "%s", writes[i]);
        if (rc != STRATA_MOVED)
            fprintf(stderr, "%s: %s %s\n", writes[i], err_name(rc), e.msg);
        assert_int_equal(rc, STRATA_MOVED);
    }
    assert_int_equal(storage_version(s), v);
    EXPECT(s, "[\"b\",\"default\"]", "{\"op\":\"branch.list\"}");
    /* Reads still served; other branches unaffected. */
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k\"}"),
                           "\"value\":1,\"version\":1,"));
    OK(s, "{\"op\":\"kv.put\",\"key\":\"other\",\"value\":1}");
    /* Sealed: reads refused too. */
    OK(s, "{\"op\":\"move.seal\",\"name\":\"b\",\"move_id\":3}");
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k\"}"), STRATA_MOVED);
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"branch.info\",\"name\":\"b\"}"), STRATA_MOVED);
    /* But move.* still works on it (the final export reads it). */
    OK(s, "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"delta\",\"since\":0}");
    assert_int_equal(run(s, NULL, NULL, "{\"op\":\"move.unfence\",\"name\":\"b\",\"move_id\":4}"),
                     STRATA_CONFLICT);
    EXPECT(s, "true", "{\"op\":\"move.release\",\"name\":\"b\",\"move_id\":3}");
    EXPECT(s, "false", "{\"op\":\"move.release\",\"name\":\"b\",\"move_id\":3}");
    EXPECT(s, "[\"default\"]", "{\"op\":\"branch.list\"}");
    /* The name is free again. */
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    storage_free(s);
}

/* move.fence with `seal` and a delta position: one command fences, seals and answers the
 * final delta, whose import completes the copy; a retry answers the same; bad positions
 * are refused and leave the branch unfenced. */
static void test_move_fence_seal_and_export_in_one(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    fill(src, "b", 10, 0);
    copy_all(src, dst, "b", 9, 4096, false, NULL);
    catch_up(src, dst, "b", 9, 4096);
    fill(src, "b", 3, 300); /* written after the last catch-up round */
    struct position p;
    assert_true(target_position(dst, "b", &p) && p.complete && p.has_log && !p.done);
    /* Bad positions: refused, nothing fenced. */
    uint64_t v = storage_version(src);
    FAILS(src, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":9,\"seal\":true,"
          "\"from_pos\":%llu,\"since\":1}", (unsigned long long)p.log_pos);
    FAILS(src, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":9,\"seal\":true,"
          "\"from_pos\":999999}");
    FAILS(src, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":9,\"seal\":true,"
          "\"from_pos\":%llu,\"max_bytes\":10}", (unsigned long long)p.log_pos);
    FAILS(src, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":9,\"seal\":1}");
    assert_int_equal(storage_version(src), v);
    OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k0\",\"value\":\"still open\"}");
    /* The fence, sealed, with the delta since the target's log position. */
    struct res r;
    assert_int_equal(run(src, &r, NULL,
                         "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":9,"
                         "\"seal\":true,\"from_pos\":%llu}",
                         (unsigned long long)p.log_pos),
                     0);
    const msgpack_object *st = get(r.o, "state"), *ex = get(r.o, "export");
    assert_true(st && st->type == MSGPACK_OBJECT_STR && st->via.str.size == 6 &&
                memcmp(st->via.str.ptr, "sealed", 6) == 0);
    assert_int_equal(get_u64(r.o, "fence_version"), storage_version(src));
    assert_non_null(ex);
    assert_true(get_bool(ex, "last") && get_bool(ex, "fenced"));
    assert_true(get_u64(ex, "records") >= 4); /* fill's 3 rounds and the put */
    const msgpack_object *blob = get(ex, "blob");
    assert_true(blob && blob->type == MSGPACK_OBJECT_BIN);
    struct buf b1;
    buf_init(&b1);
    buf_append(&b1, blob->via.bin.ptr, blob->via.bin.size);
    res_free(&r);
    /* Writes and reads refused at once. */
    FAILS(src, STRATA_MOVED, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"z\",\"value\":1}");
    FAILS(src, STRATA_MOVED, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k0\"}");
    /* A retry answers the same delta and changes nothing. */
    v = storage_version(src);
    assert_int_equal(run(src, &r, NULL,
                         "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":9,"
                         "\"seal\":true,\"from_pos\":%llu}",
                         (unsigned long long)p.log_pos),
                     0);
    blob = get(get(r.o, "export"), "blob");
    assert_true(blob && blob->via.bin.size == b1.len &&
                memcmp(blob->via.bin.ptr, b1.data, b1.len) == 0);
    res_free(&r);
    assert_int_equal(storage_version(src), v);
    /* Its import completes the copy: the target serves the branch, exactly as it was. */
    assert_int_equal(import_blob(dst, "b", 7, 9, b1.data, b1.len, NULL, NULL), 0);
    assert_true(target_position(dst, "b", &p) && p.done);
    same_chains(src, dst, "b");
    assert_non_null(strstr(OK(dst, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k0\"}"),
                           "still open"));
    /* A plain fence of an older driver on a sealed branch does not unseal it. */
    OK(src, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":3,\"move_id\":9}");
    FAILS(src, STRATA_MOVED, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k0\"}");
    buf_close(&b1);
    storage_free(src);
    storage_free(dst);
}

static void test_move_fence_refuses_forks_default_and_aborted_moves(void **state)
{
    (void)state;
    struct storage *s = engine();
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"b\",\"name\":\"c\"}");
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                            "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":1}");
    assert_non_null(strstr(msg, "forks"));
    /* A deleted child still reading through it counts too. */
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"c\",\"name\":\"d\"}");
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"c\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":1}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"move.fence\",\"name\":\"c\",\"to_shard\":2,\"move_id\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.fence\",\"name\":\"default\",\"to_shard\":2,\"move_id\":1}");
    /* Bad arguments. */
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":0,\"move_id\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":2}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":2,\"move_id\":0}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":\"2\",\"move_id\":1}");
    /* Unfence gives the branch back and refuses a late fence of that move. */
    OK(s, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":2,\"move_id\":6}");
    FAILS(s, STRATA_MOVED, "{\"op\":\"kv.put\",\"branch\":\"d\",\"key\":\"k\",\"value\":1}");
    EXPECT(s, "true", "{\"op\":\"move.unfence\",\"name\":\"d\",\"move_id\":6}");
    EXPECT(s, "false", "{\"op\":\"move.unfence\",\"name\":\"d\",\"move_id\":6}");
    OK(s, "{\"op\":\"kv.put\",\"branch\":\"d\",\"key\":\"k\",\"value\":1}");
    FAILS(s, STRATA_CONFLICT, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":2,\"move_id\":6}");
    FAILS(s, STRATA_CONFLICT, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":2,\"move_id\":5}");
    OK(s, "{\"op\":\"move.fence\",\"name\":\"d\",\"to_shard\":2,\"move_id\":7}");
    /* An unfence ahead of its fence blocks that fence. */
    EXPECT(s, "true", "{\"op\":\"move.unfence\",\"name\":\"b\",\"move_id\":9}");
    FAILS(s, STRATA_CONFLICT, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":9}");
    EXPECT(s, "false", "{\"op\":\"move.unfence\",\"name\":\"nope\",\"move_id\":9}");
    storage_free(s);
}

/* A fork moves materialized: the same reads and history, no parent on the target. */
static void test_move_fork_materialized(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    OK(src, "{\"op\":\"branch.create\",\"name\":\"p\"}");
    fill(src, "p", 12, 0);
    OK(src, "{\"op\":\"branch.fork\",\"source\":\"p\",\"name\":\"f\"}");
    fill(src, "p", 6, 50); /* after the fork: not visible in f */
    fill(src, "f", 9, 80);
    OK(src, "{\"op\":\"branch.fork\",\"source\":\"f\",\"name\":\"g\",\"at_version\":%llu}",
       (unsigned long long)storage_version(src) - 7);
    fill(src, "g", 4, 300);
    copy_all(src, dst, "g", 2, 4096, false, NULL);
    catch_up(src, dst, "g", 2, 4096);
    same_chains(src, dst, "g");
    const char *info = OK(dst, "{\"op\":\"move.status\",\"name\":\"g\"}");
    assert_non_null(strstr(info, "\"state\":\"importing\""));
    OK(src, "{\"op\":\"move.fence\",\"name\":\"g\",\"to_shard\":2,\"move_id\":2}");
    catch_up(src, dst, "g", 2, 4096);
    same_reads(src, dst, "g", storage_version(src));
    info = OK(dst, "{\"op\":\"branch.info\",\"name\":\"g\"}");
    assert_non_null(strstr(info, "\"parent\":null"));
    /* Diff and merge with a fork made on the target work from the imported history. */
    OK(dst, "{\"op\":\"branch.fork\",\"source\":\"g\",\"name\":\"h\"}");
    OK(dst, "{\"op\":\"kv.put\",\"branch\":\"h\",\"key\":\"k1\",\"value\":\"h\"}");
    OK(dst, "{\"op\":\"branch.merge\",\"source\":\"h\",\"target\":\"g\"}");
    const char *got = OK(dst, "{\"op\":\"kv.get\",\"branch\":\"g\",\"key\":\"k1\"}");
    assert_non_null(strstr(got, "\"value\":\"h\""));
    storage_free(src);
    storage_free(dst);
}

/* Versions pruned on the source between the copy and a delta are pruned on the target
 * too: the same reads answer HISTORY_UNAVAILABLE on both. */
static void test_move_retention_gaps_follow_the_source(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    OK(src, "{\"op\":\"branch.set_retention\",\"name\":\"b\",\"keep_last\":2}");
    for (int i = 0; i < 6; i++)
        OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"r\",\"value\":%d}", i);
    OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"quiet\",\"value\":1}");
    copy_all(src, dst, "b", 1, 4096, false, NULL);
    for (int i = 6; i < 12; i++)
        OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"r\",\"value\":%d}", i);
    catch_up(src, dst, "b", 1, 4096);
    OK(src, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":1}");
    catch_up(src, dst, "b", 1, 4096);
    same_chains(src, dst, "b");
    for (uint64_t v = 1; v <= storage_version(src); v++) {
        SAME(src, dst, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"r\",\"at_version\":%llu}",
             (unsigned long long)v);
        SAME(src, dst, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"quiet\",\"at_version\":%llu}",
             (unsigned long long)v);
    }
    SAME(src, dst, "{\"op\":\"kv.history\",\"branch\":\"b\",\"key\":\"r\"}");
    SAME(src, dst, "{\"op\":\"kv.count\",\"branch\":\"b\"}");
    storage_free(src);
    storage_free(dst);
}

/* The copy of `name` read at version `at` into dst in one chunk. */
static void copy_one_chunk(struct storage *src, struct storage *dst, const char *name, uint64_t id,
                           uint64_t at)
{
    struct res r;
    assert_int_equal(run(src, &r, NULL,
                         "{\"op\":\"move.export\",\"name\":\"%s\",\"mode\":\"copy\",\"at\":%llu,"
                         "\"max_bytes\":3145728}",
                         name, (unsigned long long)at),
                     0);
    assert_true(get_bool(r.o, "last"));
    const msgpack_object *bl = get(r.o, "blob");
    assert_int_equal(import_blob(dst, name, 7, id, (const uint8_t *)bl->via.bin.ptr,
                                 bl->via.bin.size, NULL, NULL),
                     0);
    res_free(&r);
}

static void same_snapshot(struct storage *a, struct storage *b)
{
    struct buf x, y;
    t_snapshot(a, &x);
    t_snapshot(b, &y);
    assert_int_equal(x.len, y.len);
    assert_memory_equal(x.data, y.data, x.len);
    buf_close(&x);
    buf_close(&y);
}

/* Each copy chunk merges its versions into the target's change log (no chunk walks the
 * whole branch): a copy in many 4 KiB chunks — long histories crossed by chunks, a key
 * pruned on the source between two chunks, a fork whose first chunks hold only what it
 * reads through — leaves the target byte for byte as a copy in one chunk does. */
static void test_move_chunked_copy_equals_one_chunk(void **state)
{
    (void)state;
    static char big[1500];
    memset(big, 'v', sizeof big - 1);
    for (int kind = 0; kind < 2; kind++) {
        struct storage *src = engine(), *dst = engine(), *one = engine();
        const char *name = kind == 0 ? "b" : "g";
        uint64_t rv[3] = {0, 0, 0};
        if (kind == 0) {
            OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
            OK(src, "{\"op\":\"branch.set_retention\",\"name\":\"b\",\"keep_last\":3}");
            fill(src, "b", 60, 0);
            for (int i = 0; i < 3; i++) {
                OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"r\",\"value\":\"%d%s\"}", i,
                   big);
                rv[i] = storage_version(src); /* a version names one write: r's */
            }
        } else {
            OK(src, "{\"op\":\"branch.create\",\"name\":\"p\"}");
            fill(src, "p", 40, 0);
            OK(src, "{\"op\":\"branch.fork\",\"source\":\"p\",\"name\":\"g\"}");
            fill(src, "p", 5, 100);
            fill(src, "g", 20, 200);
        }
        step(src, dst, name, 4, 4096, true, NULL);
        int steps = 1;
        struct position p;
        assert_true(target_position(dst, name, &p));
        uint64_t at = p.at;
        if (kind == 0) {
            /* Copy up to inside r (its three big versions never fit one chunk), then two
             * writes prune the versions of r copied already: the next chunk's first r
             * carries a gap reaching below them, and the target drops them. */
            for (; p.ver != rv[0] && p.ver != rv[1]; steps++) {
                assert_true(steps < 1000);
                assert_false(step(src, dst, name, 4, 4096, true, NULL));
                assert_true(target_position(dst, name, &p));
            }
            for (int i = 3; i < 5; i++)
                OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"r\",\"value\":%d}", i);
        }
        int chunks = 0;
        copy_all(src, dst, name, 4, 4096, true, &chunks);
        assert_true(steps + chunks > 3);
        copy_one_chunk(src, one, name, 4, at);
        same_snapshot(dst, one);
        SAME(dst, one, "{\"op\":\"move.status\",\"name\":\"%s\"}", name);
        /* ... and goes on from there exactly as the one-chunk copy does. */
        OK(src, "{\"op\":\"move.fence\",\"name\":\"%s\",\"to_shard\":2,\"move_id\":4}", name);
        catch_up(src, dst, name, 4, 4096);
        catch_up(src, one, name, 4, 3145728);
        same_reads(src, dst, name, storage_version(src));
        same_reads(dst, one, name, storage_version(src));
        storage_free(src);
        storage_free(dst);
        storage_free(one);
    }
}

/* The markers are state like any other: a snapshot of the target mid-import restores
 * to the same bytes, and the import goes on from the restored engine. */
static void test_move_snapshot_keeps_markers(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    fill(src, "b", 25, 0);
    step(src, dst, "b", 3, 4096, false, NULL);
    step(src, dst, "b", 3, 4096, false, NULL);
    struct buf a, b;
    t_snapshot(dst, &a);
    struct storage *r = engine();
    struct err e;
    assert_int_equal(storage_restore(r, a.data, a.len, &e), 0);
    t_snapshot(r, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    SAME(dst, r, "{\"op\":\"move.status\",\"name\":\"b\"}");
    copy_all(src, r, "b", 3, 4096, false, NULL);
    OK(src, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":3}");
    catch_up(src, r, "b", 3, 4096);
    same_reads(src, r, "b", storage_version(src));
    buf_close(&a);
    buf_close(&b);
    /* A fenced source round-trips too. */
    t_snapshot(src, &a);
    struct storage *r2 = engine();
    assert_int_equal(storage_restore(r2, a.data, a.len, &e), 0);
    FAILS(r2, STRATA_MOVED, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1}");
    buf_close(&a);
    storage_free(r2);
    storage_free(r);
    storage_free(src);
    storage_free(dst);
}

/* move.abort drops a partial copy, nothing else; a newer move replaces an older one's
 * leftover; a live branch of the same name is never overwritten. */
static void test_move_abort_and_leftovers(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    fill(src, "b", 20, 0);
    step(src, dst, "b", 4, 4096, false, NULL);
    EXPECT(dst, "false", "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":3}");
    EXPECT(dst, "true", "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":4}");
    EXPECT(dst, "false", "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":4}");
    EXPECT(dst, "[\"default\"]", "{\"op\":\"branch.list\"}");
    /* Move 4's leftover is replaced by move 8's first chunk; move 4's later chunks are
     * then refused. */
    step(src, dst, "b", 4, 4096, false, NULL);
    struct buf cmd;
    struct position none = {0};
    next_export(&cmd, "b", &none, false, 4096);
    struct export_out first;
    assert_int_equal(export_chunk(src, &cmd, &first, NULL), 0);
    buf_close(&cmd);
    assert_int_equal(import_blob(dst, "b", 7, 8, first.blob.data, first.blob.len, NULL, NULL), 0);
    const char *st = OK(dst, "{\"op\":\"move.status\",\"name\":\"b\"}");
    assert_non_null(strstr(st, "\"move_id\":8"));
    struct err e;
    assert_int_equal(import_blob(dst, "b", 7, 4, first.blob.data, first.blob.len, NULL, &e),
                     STRATA_CONFLICT);
    copy_all(src, dst, "b", 8, 4096, false, NULL);
    OK(src, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":8}");
    catch_up(src, dst, "b", 8, 4096);
    /* Done: abort refuses, another move's first chunk meets a live branch. */
    FAILS(dst, STRATA_CONFLICT, "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":8}");
    assert_int_equal(import_blob(dst, "b", 7, 9, first.blob.data, first.blob.len, NULL, &e),
                     STRATA_BRANCH_EXISTS);
    /* The driver's abort (before any cut-over) may drop even a complete copy, but only
     * its own move's. */
    FAILS(dst, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":8,\"force\":1}");
    EXPECT(dst, "false", "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":9,\"force\":true}");
    EXPECT(dst, "true", "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":8,\"force\":true}");
    EXPECT(dst, "[\"default\"]", "{\"op\":\"branch.list\"}");
    /* A plain branch of the name on the target: never touched. */
    struct storage *other = engine();
    OK(other, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    assert_int_equal(import_blob(other, "b", 7, 8, first.blob.data, first.blob.len, NULL, &e),
                     STRATA_BRANCH_EXISTS);
    EXPECT(other, "false", "{\"op\":\"move.abort\",\"name\":\"b\",\"move_id\":8}");
    EXPECT(other, "[\"b\",\"default\"]", "{\"op\":\"branch.list\"}");
    buf_close(&first.blob);
    storage_free(other);
    storage_free(src);
    storage_free(dst);
}

/* ---- Bad input ------------------------------------------------------------------------- */

/* A blob from parts, with a correct checksum (so the checks behind it are reached). */
/* A blob of format 1 [header, records], or of format 2 with idem_json as the third
 * element (the idempotency section) when it is not NULL. */
static void make_blob_idem(struct buf *out, const char *header_json, const char *records_json,
                           const char *idem_json)
{
    struct buf h, r, d;
    buf_init(&h);
    buf_init(&r);
    buf_init(&d);
    struct err e;
    assert_int_equal(storage_json_to_value(header_json, strlen(header_json), &h, &e), 0);
    assert_int_equal(storage_json_to_value(records_json, strlen(records_json), &r, &e), 0);
    if (idem_json)
        assert_int_equal(storage_json_to_value(idem_json, strlen(idem_json), &d, &e), 0);
    buf_init(out);
    buf_append(out, "STRAMOVE", 8);
    buf_append_be32(out, idem_json ? 2 : 1);
    buf_append_u8(out, idem_json ? 0x93 : 0x92); /* fixarray of 3 or 2 */
    buf_append(out, h.data, h.len);
    buf_append(out, r.data, r.len);
    buf_append(out, d.data, d.len);
    buf_reserve(out, 32);
    unsigned int n = 0;
    EVP_Digest(out->data, out->len, out->data + out->len, &n, EVP_sha256(), NULL);
    out->len += 32;
    buf_close(&h);
    buf_close(&r);
    buf_close(&d);
}

static void make_blob(struct buf *out, const char *header_json, const char *records_json)
{
    make_blob_idem(out, header_json, records_json, NULL);
}

#define HDR(mode, from, to, since, last)                                                          \
    "{\"branch\":\"b\",\"branch_id\":2,\"mode\":\"" mode "\",\"at\":50,\"from\":" from            \
    ",\"to\":" to ",\"since\":" since ",\"last\":" last ",\"fence\":0,\"floor\":0,"              \
    "\"created_ver\":0,\"created_ts\":0,\"keep_last\":0,\"keep_for_us\":0}"

/* "k" in space default, as an internal key: 07 'default' 'k' 'a'. */
#define KEY_A "{\"$bytes\":\"B2RlZmF1bHRrYQ==\"}"
#define KEY_B "{\"$bytes\":\"B2RlZmF1bHRrYg==\"}"
#define VAL_1 "{\"$bytes\":\"AQ==\"}"

static void expect_refused(struct storage *dst, const uint8_t *blob, size_t len, int code,
                           const char *needle)
{
    struct buf before, after;
    t_snapshot(dst, &before);
    struct err e;
    err_clear(&e);
    int rc = import_blob(dst, "b", 7, 5, blob, len, NULL, &e);
    if (rc != code || (needle && strstr(e.msg, needle) == NULL))
        fprintf(stderr, "want %s '%s', got %s '%s'\n", err_name(code), needle ? needle : "",
                err_name(rc), e.msg);
    assert_int_equal(rc, code);
    if (needle)
        assert_non_null(strstr(e.msg, needle));
    t_snapshot(dst, &after);
    assert_true(before.len == after.len && memcmp(before.data, after.data, before.len) == 0);
    buf_close(&before);
    buf_close(&after);
}

static void expect_blob_refused(struct storage *dst, const char *hdr, const char *recs, int code,
                                const char *needle)
{
    struct buf b;
    make_blob(&b, hdr, recs);
    expect_refused(dst, b.data, b.len, code, needle);
    buf_close(&b);
}

static void test_move_import_bad_input(void **state)
{
    (void)state;
    struct storage *dst = engine();
    /* A good first chunk, to corrupt in every way. */
    struct buf good;
    make_blob(&good, HDR("copy", "null", "[" KEY_A ",3]", "null", "false"),
              "[[" KEY_A ",3,10," VAL_1 "]]");
    for (size_t i = 0; i < good.len; i += 7) {
        good.data[i] ^= 0x20;
        expect_refused(dst, good.data, good.len, STRATA_INVALID_ARGUMENT, NULL);
        good.data[i] ^= 0x20;
    }
    for (size_t cut = 0; cut < good.len; cut += 5)
        expect_refused(dst, good.data, cut, STRATA_INVALID_ARGUMENT, NULL);
    good.data[11] = 3; /* format 3 */
    expect_refused(dst, good.data, good.len, STRATA_INVALID_ARGUMENT, "format 3");
    good.data[11] = 1;
    good.data[0] = 'X';
    expect_refused(dst, good.data, good.len, STRATA_INVALID_ARGUMENT, "magic");
    good.data[0] = 'S';
    /* Arguments. */
    struct err e;
    assert_int_equal(import_blob(dst, "b", 0, 5, good.data, good.len, NULL, &e), STRATA_INVALID_ARGUMENT);
    assert_int_equal(import_blob(dst, "b", 7, 0, good.data, good.len, NULL, &e), STRATA_INVALID_ARGUMENT);
    assert_int_equal(import_blob(dst, ".bad", 7, 5, good.data, good.len, NULL, &e), STRATA_INVALID_ARGUMENT);
    assert_int_equal(import_blob(dst, "c", 7, 5, good.data, good.len, NULL, &e), STRATA_INVALID_ARGUMENT);
    assert_non_null(strstr(e.msg, "another branch"));
    FAILS(dst, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.import\",\"name\":\"b\",\"source_shard\":1,\"move_id\":1,\"blob\":\"text\"}");
    FAILS(dst, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.import\",\"name\":\"b\",\"source_shard\":1,\"move_id\":1}");
    /* Checksummed but wrong inside. */
    expect_blob_refused(dst, "{\"branch\":\"b\"}", "[]", STRATA_INVALID_ARGUMENT, "header");
    expect_blob_refused(dst, HDR("copy", "null", "null", "null", "true") , "{}",
                        STRATA_INVALID_ARGUMENT, "body");
    expect_blob_refused(dst, HDR("swap", "null", "null", "null", "true"), "[]",
                        STRATA_INVALID_ARGUMENT, "mode");
    expect_blob_refused(dst, HDR("copy", "[" KEY_B ",1]", "[" KEY_A ",1]", "null", "true"), "[]",
                        STRATA_INVALID_ARGUMENT, "positions");
    expect_blob_refused(dst, HDR("delta", "5", "3", "null", "true"), "[]",
                        STRATA_INVALID_ARGUMENT, "positions");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",0,10," VAL_1 "]]", STRATA_INVALID_ARGUMENT, "version 0");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",60,10," VAL_1 "]]", STRATA_INVALID_ARGUMENT, "above");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",3,10," VAL_1 ",3,5]]", STRATA_INVALID_ARGUMENT, "gap");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",3,10,{\"$bytes\":\"wQ==\"}]]", STRATA_INVALID_ARGUMENT,
                        "MessagePack");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",3,10,{\"$bytes\":\"AQI=\"}]]", STRATA_INVALID_ARGUMENT,
                        "MessagePack");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",3,10,1]]", STRATA_INVALID_ARGUMENT, "type");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",3]]", STRATA_INVALID_ARGUMENT, "record");
    /* Keys: merge records, markers and malformed keys never travel. */
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[{\"$bytes\":\"AE0AAAAAAAAAAQ==\"},3,10," VAL_1 "]]",
                        STRATA_INVALID_ARGUMENT, "key");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[{\"$bytes\":\"AEk=\"},3,10," VAL_1 "]]", STRATA_INVALID_ARGUMENT, "key");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[{\"$bytes\":\"B0RFRkFVTFRrYQ==\"},3,10," VAL_1 "]]",
                        STRATA_INVALID_ARGUMENT, "key");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[{\"$bytes\":\"B2RlZmF1bHRaYQ==\"},3,10," VAL_1 "]]",
                        STRATA_INVALID_ARGUMENT, "key");
    /* Order: one key's versions must grow. */
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",4,10," VAL_1 "],[" KEY_A ",3,10," VAL_1 "]]",
                        STRATA_INVALID_ARGUMENT, "out of order");
    expect_blob_refused(dst, HDR("copy", "null", "[" KEY_A ",3]", "null", "true"),
                        "[[" KEY_A ",3,10," VAL_1 "],[" KEY_A ",5,10," VAL_1 ",2,1]]",
                        STRATA_INVALID_ARGUMENT, "out of order");
    /* Sequence: a later chunk, or a delta, before the first. */
    expect_blob_refused(dst, HDR("copy", "[" KEY_A ",3]", "[" KEY_B ",3]", "null", "true"), "[]",
                        STRATA_CONFLICT, "first chunk");
    expect_blob_refused(dst, HDR("delta", "0", "0", "50", "true"), "[]", STRATA_CONFLICT,
                        "first chunk");
    /* Now a good copy; then deltas out of order and out of sequence. */
    struct res r;
    assert_int_equal(import_blob(dst, "b", 7, 5, good.data, good.len, &r, &e), 0);
    assert_true(get_bool(r.o, "applied"));
    res_free(&r);
    expect_blob_refused(dst, HDR("copy", "[" KEY_B ",3]", "[" KEY_B ",4]", "null", "true"), "[]",
                        STRATA_CONFLICT, "out of order");
    expect_blob_refused(dst, HDR("delta", "0", "0", "50", "true"), "[]", STRATA_CONFLICT,
                        "before the copy");
    struct buf last;
    make_blob(&last, HDR("copy", "[" KEY_A ",3]", "[" KEY_A ",3]", "null", "true"), "[]");
    assert_int_equal(import_blob(dst, "b", 7, 5, last.data, last.len, NULL, &e), 0);
    buf_close(&last);
    expect_blob_refused(dst, HDR("delta", "0", "1", "49", "false"), "[]", STRATA_CONFLICT,
                        "after the copy");
    expect_blob_refused(dst, HDR("delta", "0", "2", "50", "false"),
                        "[[" KEY_B ",9,10," VAL_1 "],[" KEY_A ",8,10," VAL_1 "]]",
                        STRATA_INVALID_ARGUMENT, "delta versions out of order");
    expect_blob_refused(dst, HDR("delta", "0", "2", "50", "false"),
                        "[[" KEY_A ",3,10," VAL_1 "]]", STRATA_INVALID_ARGUMENT, "out of order");
    struct buf d1;
    make_blob(&d1, HDR("delta", "0", "2", "50", "false"),
              "[[" KEY_B ",8,10," VAL_1 "],[" KEY_A ",9,10," VAL_1 "]]");
    assert_int_equal(import_blob(dst, "b", 7, 5, d1.data, d1.len, NULL, &e), 0);
    assert_int_equal(import_blob(dst, "b", 7, 5, d1.data, d1.len, &r, &e), 0);
    assert_false(get_bool(r.o, "applied"));
    res_free(&r);
    buf_close(&d1);
    expect_blob_refused(dst, HDR("delta", "3", "4", "null", "false"), "[]", STRATA_CONFLICT,
                        "out of order");
    const char *st = OK(dst, "{\"op\":\"move.status\",\"name\":\"b\"}");
    assert_non_null(strstr(st, "\"log_pos\":2"));
    assert_non_null(strstr(st, "\"state\":\"importing\""));
    buf_close(&good);
    storage_free(dst);
}

static void test_move_export_bad_input(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    OK(s, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"move.export\",\"name\":\"nope\",\"mode\":\"copy\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.export\",\"name\":\"b\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"all\"}");
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                            "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"copy\",\"max_bytes\":10}");
    assert_non_null(strstr(msg, "max_bytes"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"copy\",\"max_bytes\":4000000000}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"copy\",\"at\":99}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"copy\",\"after_key\":\"k\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"delta\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"delta\",\"since\":0,\"from_pos\":0}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"delta\",\"from_pos\":5}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.export\",\"name\":\"b\",\"mode\":\"delta\",\"since\":-1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.status\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.release\",\"name\":\"b\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"move.abort\",\"name\":7,\"move_id\":1}");
    EXPECT(s, "{\"exists\":false,\"version\":1}", "{\"op\":\"move.status\",\"name\":\"x\"}");
}

/* Out of memory anywhere in an import changes nothing; a retry then succeeds. */
/* The last chunk of a fenced branch carries the idempotency table's answers for it: a
 * retry that reaches the target is answered there, byte for byte, and not applied again.
 * A malformed section is refused whole. */
#define MV_CA "AAECAwQFBgcICQoLDA0ODw=="
#define MV_CB "EBESExQVFhcYGRobHB0eHw=="
#define MV_IDEM(c, seq, retry) "\"idem\":[{\"$bytes\":\"" c "\"}," #seq ",1," #retry "]"
static void test_move_carries_idempotency_answers(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    fill(src, "b", 3, 0);
    OK(dst, "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":1," MV_IDEM(MV_CB, 9, false) "}");
    copy_all(src, dst, "b", 4, 1u << 20, false, NULL);
#define MV_W0(r) "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1," MV_IDEM(MV_CA, 1, r) "}"
#define MV_W1(r) "{\"op\":\"event.append\",\"branch\":\"b\",\"type\":\"t\",\"payload\":{}," MV_IDEM(MV_CA, 2, r) "}"
#define MV_W2(r) "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"j\",\"value\":1," MV_IDEM(MV_CB, 3, r) "}"
    static const char *const writes[] = {MV_W0(false), MV_W1(false), MV_W2(false)};
    static const char *const retries[] = {MV_W0(true), MV_W1(true), MV_W2(true)};
    char first[3][256];
    for (int i = 0; i < 3; i++)
        result_text(src, first[i], sizeof first[i], "%s", writes[i]);
    /* An answer for another branch stays behind. */
    OK(src, "{\"op\":\"kv.put\",\"key\":\"d\",\"value\":1," MV_IDEM(MV_CA, 4, false) "}");
    OK(src, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":4}");
    catch_up(src, dst, "b", 4, 1u << 20);
    struct position p;
    assert_true(target_position(dst, "b", &p) && p.done);
    uint64_t ver = storage_version(dst);
    for (int i = 0; i < 3; i++) {
        char again[256];
        result_text(dst, again, sizeof again, "%s", retries[i]);
        assert_string_equal(again, first[i]);
    }
    assert_int_equal(storage_version(dst), ver);
    char len[64], src_len[64];
    result_text(dst, len, sizeof len, "{\"op\":\"event.len\",\"branch\":\"b\"}");
    result_text(src, src_len, sizeof src_len, "{\"op\":\"event.len\",\"branch\":\"b\"}");
    assert_string_equal(len, src_len); /* the append is not applied again */
    /* The target's own client keeps its answer too (the floors merged, nothing lost). */
    OK(dst, "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":2," MV_IDEM(MV_CB, 9, true) "}");
    result_text(dst, len, sizeof len, "{\"op\":\"kv.get\",\"key\":\"x\"}");
    assert_non_null(strstr(len, "\"value\":1"));
    /* The section is in the target's snapshot, so in every replica's state. */
    struct storage *r = engine();
    struct buf snap;
    t_snapshot(dst, &snap);
    struct err e;
    assert_int_equal(storage_restore(r, snap.data, snap.len, &e), 0);
    char again[256];
    result_text(r, again, sizeof again, "%s", retries[1]);
    assert_string_equal(again, first[1]);
    buf_close(&snap);
    storage_free(r);
    storage_free(src);
    storage_free(dst);

    /* Bad sections, on a first chunk that would otherwise be applied. */
    struct storage *d2 = engine();
    static const char *const bad[] = {
        "1", "[0]", "[-1,[]]", "[0,{}]", "[0,[1]]",
        "[0,[[{\"$bytes\":\"AAEC\"},0,0,[]]]]",
        "[0,[[{\"$bytes\":\"" MV_CA "\"},0,0,[[0,{\"$bytes\":\"wA==\"}]]]]]",
        "[0,[[{\"$bytes\":\"" MV_CA "\"},5,0,[[5,{\"$bytes\":\"wA==\"}]]]]]",
        "[0,[[{\"$bytes\":\"" MV_CA "\"},0,0,[[2,\"x\"]]]]]",
        "[0,[[{\"$bytes\":\"" MV_CB "\"},0,0,[]],[{\"$bytes\":\"" MV_CA "\"},0,0,[]]]]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct buf b;
        make_blob_idem(&b, HDR("copy", "null", "[" KEY_A ",3]", "null", "false"),
                       "[[" KEY_A ",3,1," VAL_1 "]]", bad[i]);
        expect_refused(d2, b.data, b.len, STRATA_INVALID_ARGUMENT, "idempotency section");
        buf_close(&b);
    }
    /* A well-formed one is taken. */
    struct buf b;
    make_blob_idem(&b, HDR("copy", "null", "[" KEY_A ",3]", "null", "false"),
                   "[[" KEY_A ",3,1," VAL_1 "]]",
                   "[0,[[{\"$bytes\":\"" MV_CA "\"},0,0,[[2,{\"$bytes\":\"wA==\"}]]]]]");
    struct res rr;
    assert_int_equal(import_blob(d2, "b", 7, 5, b.data, b.len, &rr, &e), 0);
    res_free(&rr);
    buf_close(&b);
    storage_free(d2);
}

/* The source had dropped a client whole (its answers with it): a resend to the moved
 * branch that the target cannot answer is refused there, not applied a second time,
 * even from a client the target knows. First attempts and remembered answers work. */
static void test_move_lossy_source_refuses_unknown_resends(void **state)
{
    (void)state;
    struct storage_config cfg;
    storage_config_default(&cfg);
    cfg.idem_clients = 1;
    struct storage *src, *dst = engine();
    assert_int_equal(storage_new(&cfg, &src), 0);
    OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1," MV_IDEM(MV_CA, 1, false) "}");
    /* A second client: the table holds one, so CA (and its answer for b) is dropped. */
    OK(src, "{\"op\":\"kv.put\",\"key\":\"d\",\"value\":1," MV_IDEM(MV_CB, 1, false) "}");
    /* The target knows CA from a write of its own. */
    OK(dst, "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":1," MV_IDEM(MV_CA, 9, false) "}");
    copy_all(src, dst, "b", 6, 1u << 20, false, NULL);
    OK(src, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":6}");
    catch_up(src, dst, "b", 6, 1u << 20);
    struct err e;
    assert_int_equal(run(dst, NULL, &e,
                         "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1,"
                         MV_IDEM(MV_CA, 1, true) "}"),
                     STRATA_OUTCOME_FORGOTTEN);
    assert_non_null(strstr(e.msg, "dropped client records"));
    char v[256];
    result_text(dst, v, sizeof v, "{\"op\":\"kv.history\",\"branch\":\"b\",\"key\":\"k\"}");
    assert_null(strstr(v, "},{")); /* still one version */
    /* A first attempt runs; its resend gets the remembered answer. */
    char first[256], again[256];
    result_text(dst, first, sizeof first,
                "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":2," MV_IDEM(MV_CA, 10, false) "}");
    result_text(dst, again, sizeof again,
                "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":2," MV_IDEM(MV_CA, 10, true) "}");
    assert_non_null(strstr(first, "\"version\""));
    assert_string_equal(first, again);
    /* The flag is in the marker, so in snapshots. */
    struct storage *r = engine();
    struct buf snap;
    t_snapshot(dst, &snap);
    assert_int_equal(storage_restore(r, snap.data, snap.len, &e), 0);
    assert_int_equal(run(r, NULL, &e,
                         "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1,"
                         MV_IDEM(MV_CA, 1, true) "}"),
                     STRATA_OUTCOME_FORGOTTEN);
    buf_close(&snap);
    storage_free(r);
    storage_free(src);
    storage_free(dst);
}

static void test_move_import_out_of_memory(void **state)
{
    (void)state;
    struct storage *src = engine(), *dst = engine();
    OK(src, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    fill(src, "b", 8, 0);
    for (int phase = 0; phase < 2; phase++) {
        struct position p;
        bool found = target_position(dst, "b", &p);
        struct buf cmd;
        next_export(&cmd, "b", &p, found, 1u << 20);
        struct export_out ex;
        assert_int_equal(export_chunk(src, &cmd, &ex, NULL), 0);
        buf_close(&cmd);
        struct buf icmd, res;
        import_cmd(&icmd, "b", 7, 1, ex.blob.data, ex.blob.len);
        buf_init(&res);
        int rc = STRATA_OUT_OF_MEMORY;
        long n;
        for (n = 1; rc == STRATA_OUT_OF_MEMORY && n < 5000; n++) {
            struct buf before, after;
            t_snapshot(dst, &before);
            struct err e;
            sm_fail_after(n);
            rc = storage_exec(dst, icmd.data, icmd.len, 5000000 + n, &res, &e);
            sm_fail_after(0);
            if (rc && rc != STRATA_OUT_OF_MEMORY)
                fprintf(stderr, "at allocation %ld: %s %s\n", n, err_name(rc), e.msg);
            if (rc == STRATA_OUT_OF_MEMORY) {
                assert_int_equal(res.len, 0);
                t_snapshot(dst, &after);
                if (before.len != after.len || memcmp(before.data, after.data, before.len))
                    fprintf(stderr, "phase %d allocation %ld: %s\n", phase, n, e.msg);
                assert_true(before.len == after.len &&
                            memcmp(before.data, after.data, before.len) == 0);
                buf_close(&after);
            }
            buf_close(&before);
        }
        buf_close(&icmd);
        buf_close(&res);
        assert_int_equal(rc, 0);
        assert_true(n > 3); /* allocations did fail on the way */
        buf_close(&ex.blob);
        if (phase == 0) {
            fill(src, "b", 4, 50);
            /* A keyed write: the fenced chunk carries an idempotency section too. */
            OK(src, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"i\",\"value\":1,"
                    "\"idem\":[{\"$bytes\":\"AAECAwQFBgcICQoLDA0ODw==\"},1,1,false]}");
            OK(src, "{\"op\":\"move.fence\",\"name\":\"b\",\"to_shard\":2,\"move_id\":1}");
        }
    }
    same_reads(src, dst, "b", storage_version(src));
    storage_free(src);
    storage_free(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_move_copy_delta_fence_roundtrip),
        cmocka_unit_test(test_move_fence_seal_release),
        cmocka_unit_test(test_move_fence_seal_and_export_in_one),
        cmocka_unit_test(test_move_fence_refuses_forks_default_and_aborted_moves),
        cmocka_unit_test(test_move_fork_materialized),
        cmocka_unit_test(test_move_retention_gaps_follow_the_source),
        cmocka_unit_test(test_move_chunked_copy_equals_one_chunk),
        cmocka_unit_test(test_move_snapshot_keeps_markers),
        cmocka_unit_test(test_move_abort_and_leftovers),
        cmocka_unit_test(test_move_import_bad_input),
        cmocka_unit_test_setup_teardown(test_move_export_bad_input, t_setup, t_teardown),
        cmocka_unit_test(test_move_import_out_of_memory),
        cmocka_unit_test(test_move_carries_idempotency_answers),
        cmocka_unit_test(test_move_lossy_source_refuses_unknown_resends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
