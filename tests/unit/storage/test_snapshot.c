/* Snapshot and restore: round trips preserve every read, equal command sequences give
 * byte-identical snapshots (also after a restore), and corrupt or truncated input is
 * rejected with the engine left serving its previous state. */
#include "helpers.h"

#include <lz4frame.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

#define PUT(s, br, sp, key, val)                                                               \
    OK(s, "{\"op\":\"kv.put\",\"branch\":\"%s\",\"space\":\"%s\",\"key\":\"%s\",\"value\":%s}", \
       br, sp, key, val)

static const char *const SPACES[] = {"default", "s1", "s2"};
#define NSPACES 3
#define NKEYS 8

/* ---- Reading everything ------------------------------------------------------------ */

/* Append the result of one command (or its error) to the dump. */
static void dump_cmd(struct storage *s, struct buf *d, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void dump_cmd(struct storage *s, struct buf *d, const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = t_exec(s, "%s", cmd);
    buf_printf(d, "%s -> %d %s\n", cmd, rc, t_out());
}

/* Branch names from a branch.list result (names contain no quotes or escapes). */
static int parse_names(const char *json, char names[][160], int max)
{
    int n = 0;
    for (const char *p = strchr(json, '"'); p && n < max; p = strchr(p, '"')) {
        const char *e = strchr(p + 1, '"');
        snprintf(names[n++], 160, "%.*s", (int)(e - p - 1), p + 1);
        p = e + 1;
    }
    return n;
}

/* Every read the tests care about, as text: branch list and info, spaces, full scans
 * per space, counts, and per key the history and the value at every version. */
static void dump_state(struct storage *s, struct buf *d, bool per_version)
{
    buf_init(d);
    buf_printf(d, "version %llu last_ts %lld\n", (unsigned long long)storage_version(s),
               (long long)storage_last_ts(s));
    char names[64][160];
    int nb = parse_names(OK(s, "{\"op\":\"branch.list\"}"), names, 64);
    dump_cmd(s, d, "{\"op\":\"branch.list\"}");
    for (int b = 0; b < nb; b++) {
        const char *br = names[b];
        dump_cmd(s, d, "{\"op\":\"branch.info\",\"name\":\"%s\"}", br);
        dump_cmd(s, d, "{\"op\":\"space.list\",\"branch\":\"%s\"}", br);
        for (int sp = 0; sp < NSPACES; sp++) {
            dump_cmd(s, d, "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"space\":\"%s\",\"limit\":10000}",
                     br, SPACES[sp]);
            dump_cmd(s, d, "{\"op\":\"kv.count\",\"branch\":\"%s\",\"space\":\"%s\"}", br,
                     SPACES[sp]);
            for (int k = 0; k < NKEYS; k++) {
                dump_cmd(s, d,
                         "{\"op\":\"kv.history\",\"branch\":\"%s\",\"space\":\"%s\",\"key\":\"k%d\"}",
                         br, SPACES[sp], k);
                for (uint64_t v = 0; per_version && v <= storage_version(s); v++)
                    dump_cmd(s, d,
                             "{\"op\":\"kv.get\",\"branch\":\"%s\",\"space\":\"%s\",\"key\":\"k%d\","
                             "\"at_version\":%llu}",
                             br, SPACES[sp], k, (unsigned long long)v);
            }
        }
    }
}

static void assert_same_text(const struct buf *a, const struct buf *b)
{
    if (a->len == b->len && memcmp(a->data, b->data, a->len) == 0)
        return;
    size_t i = 0;
    while (i < a->len && i < b->len && a->data[i] == b->data[i])
        i++;
    size_t from = i > 200 ? i - 200 : 0;
    fprintf(stderr, "dumps differ at byte %zu:\n--- a: %.*s\n--- b: %.*s\n", i,
            (int)(a->len - from > 400 ? 400 : a->len - from), (const char *)a->data + from,
            (int)(b->len - from > 400 ? 400 : b->len - from), (const char *)b->data + from);
    fail();
}

static void restore_ok(struct storage *s, const struct buf *snap)
{
    struct err err;
    int rc = storage_restore(s, snap->data, snap->len, &err);
    if (rc != 0) {
        fprintf(stderr, "restore failed: %s: %s\n", err_name(rc), err.msg);
        fail();
    }
}

/* ---- A state that uses every feature the snapshot must carry -------------------------- */

static void build_rich_state(struct storage *s)
{
    const char *vals[] = {"1", "\"str\"", "{\"$bytes\":\"AAEC\"}", "{\"m\":[1,2.5,null]}",
                          "true", "-7", "[]", "\"\""};
    for (int k = 0; k < NKEYS; k++) {
        char key[8];
        snprintf(key, sizeof key, "k%d", k);
        PUT(s, "default", "default", key, vals[k]);
        if (k % 2)
            PUT(s, "default", "s1", key, vals[(k + 3) % NKEYS]);
    }
    OK(s, "{\"op\":\"space.create\",\"space\":\"s2\"}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"feat\"}");
    PUT(s, "feat", "default", "k0", "100");
    OK(s, "{\"op\":\"kv.delete\",\"branch\":\"feat\",\"key\":\"k1\"}");
    PUT(s, "feat", "s2", "k2", "\"in s2\"");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"feat\",\"name\":\"feat/sub\",\"at_version\":%llu}",
       (unsigned long long)storage_version(s) - 1);
    PUT(s, "feat/sub", "default", "k3", "33");
    PUT(s, "feat", "default", "k4", "44"); /* after feat/sub's fork */
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"feat\"}"); /* hidden parent of feat/sub */
    OK(s, "{\"op\":\"branch.create\",\"name\":\"empty\"}");
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":2}");
    for (int i = 0; i < 4; i++) {
        char v[8];
        snprintf(v, sizeof v, "%d", 200 + i);
        PUT(s, "default", "default", "k0", v); /* prunes k0 in default */
    }
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"feat/sub\",\"keep_for_us\":5000}");
    OK(s, "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[\"m1\",\"m2\"]}");
    OK(s, "{\"op\":\"kv.batch_put\",\"branch\":\"m1\",\"items\":[[\"k5\",5],[\"k6\",6],[\"k7\",7]]}");
    OK(s, "{\"op\":\"kv.batch_delete\",\"branch\":\"m1\",\"keys\":[\"k2\",\"k3\"]}");
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"m2\"}"); /* gone entirely (no children) */
    OK(s, "{\"op\":\"batch\",\"branch\":\"m1\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"k1\","
          "\"value\":11},{\"op\":\"kv.put\",\"key\":\"k1\",\"value\":12,\"space\":\"s2\"}]}");
    OK(s, "{\"op\":\"space.delete\",\"branch\":\"m1\",\"space\":\"s1\"}");
}

static void test_snapshot_roundtrip_preserves_every_read(void **state)
{
    struct storage *s = *state;
    build_rich_state(s);
    struct buf before, after, snap, snap2;
    dump_state(s, &before, true);
    t_snapshot(s, &snap);
    struct storage *r;
    assert_int_equal(storage_new(NULL, &r), 0);
    OK(r, "{\"op\":\"kv.put\",\"key\":\"junk\",\"value\":1}"); /* replaced by the restore */
    restore_ok(r, &snap);
    dump_state(r, &after, true);
    assert_same_text(&before, &after);
    /* The dump must have covered the interesting cases. */
    assert_non_null(strstr((char *)before.data, "\"parent\":\"feat\",\"parent_deleted\":true"));
    assert_non_null(strstr((char *)before.data, "HISTORY_UNAVAILABLE"));
    assert_non_null(strstr((char *)before.data, "\"keep_for_us\":5000"));
    assert_non_null(strstr((char *)before.data, "{\"$bytes\":\"AAEC\"}"));
    assert_null(strstr((char *)before.data, "junk"));
    t_snapshot(r, &snap2);
    assert_int_equal(snap.len, snap2.len);
    assert_memory_equal(snap.data, snap2.data, snap.len);
    buf_close(&before);
    buf_close(&after);
    buf_close(&snap);
    buf_close(&snap2);
    storage_free(r);
}

/* ---- Determinism ---------------------------------------------------------------------- */

/* The engines a workload runs on, in lockstep. */
struct fleet {
    struct storage *e[3];
    int n;
};

/* Run one command on every engine of the fleet at the same timestamp; the results
 * (or errors) must match exactly. */
static void all(struct fleet *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void all(struct fleet *f, const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int64_t ts = t_last_ts();
    char first[8192];
    int rc0 = 0;
    for (int i = 0; i < f->n; i++) {
        t_set_ts(ts);
        int rc = t_exec(f->e[i], "%s", cmd);
        if (i == 0) {
            rc0 = rc;
            snprintf(first, sizeof first, "%s", t_out());
        } else if (rc != rc0 || strcmp(first, t_out()) != 0) {
            fprintf(stderr, "engines diverge on %s:\n  0: %d %s\n  %d: %d %s\n", cmd, rc0, first,
                    i, rc, t_out());
            fail();
        }
    }
}

/* Step i of a fixed pseudo-random mixed workload. */
static void workload_step(struct fleet *f, uint32_t *rng, int i)
{
    *rng ^= *rng << 13;
    *rng ^= *rng >> 17;
    *rng ^= *rng << 5;
    uint32_t r = *rng;
    static const char *const br[] = {"default", "w1", "w2", "w3"};
    const char *b1 = br[r % 4], *sp = SPACES[(r >> 4) % NSPACES];
    int k = (int)((r >> 8) % NKEYS);
    switch ((r >> 12) % 10) {
    case 0:
    case 1:
    case 2:
        all(f, "{\"op\":\"kv.put\",\"branch\":\"%s\",\"space\":\"%s\",\"key\":\"k%d\",\"value\":%d}",
            b1, sp, k, i);
        break;
    case 3:
        all(f, "{\"op\":\"kv.delete\",\"branch\":\"%s\",\"space\":\"%s\",\"key\":\"k%d\"}", b1, sp,
            k);
        break;
    case 4:
        all(f,
            "{\"op\":\"kv.batch_put\",\"branch\":\"%s\",\"space\":\"%s\",\"items\":[[\"k%d\",%d],"
            "[\"k%d\",\"v%d\"]]}",
            b1, sp, k, i, (k + 1) % NKEYS, i);
        break;
    case 5:
        /* Replace a branch by a fork of another one at a past version; when the deleted
         * one has children it stays hidden behind them. */
        all(f, "{\"op\":\"branch.delete\",\"name\":\"%s\"}", b1);
        all(f, "{\"op\":\"branch.fork\",\"source\":\"%s\",\"name\":\"%s\",\"at_version\":%llu}",
            br[(r >> 20) % 4], b1, (unsigned long long)(storage_version(f->e[0]) / 2));
        break;
    case 6:
        all(f, "{\"op\":\"branch.set_retention\",\"name\":\"%s\",\"keep_last\":%u}", b1,
            (r >> 20) % 4);
        break;
    case 7:
        all(f, "{\"op\":\"branch.prune\",\"name\":\"%s\"}", b1);
        break;
    case 8:
        all(f, "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"space\":\"%s\"}", b1, sp);
        break;
    default:
        all(f, "{\"op\":\"kv.batch_delete\",\"branch\":\"%s\",\"space\":\"%s\",\"keys\":[\"k%d\","
               "\"k%d\"]}",
            b1, sp, k, (k + 3) % NKEYS);
        break;
    }
}

static void assert_same_snapshot(struct storage *a, struct storage *b)
{
    struct buf sa, sb;
    t_snapshot(a, &sa);
    t_snapshot(b, &sb);
    assert_int_equal(sa.len, sb.len);
    assert_memory_equal(sa.data, sb.data, sa.len);
    buf_close(&sa);
    buf_close(&sb);
}

static void test_snapshot_deterministic_across_engines_and_restore(void **state)
{
    struct storage *a = *state, *b, *c;
    assert_int_equal(storage_new(NULL, &b), 0);
    assert_int_equal(storage_new(NULL, &c), 0);
    struct fleet f = {{a, b}, 2};
    all(&f, "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[\"w1\",\"w2\"]}");
    all(&f, "{\"op\":\"branch.create\",\"name\":\"w3\"}");
    uint32_t rng = 0x9e3779b9u;
    for (int i = 0; i < 400; i++)
        workload_step(&f, &rng, i);
    assert_same_snapshot(a, b);

    /* Restore a's snapshot into c (which had state of its own); from then on the three
     * engines must stay indistinguishable. */
    OK(c, "{\"op\":\"kv.put\",\"key\":\"other\",\"value\":1}");
    struct buf snap;
    t_snapshot(a, &snap);
    restore_ok(c, &snap);
    buf_close(&snap);
    assert_same_snapshot(a, c);
    f = (struct fleet){{a, b, c}, 3};
    for (int i = 400; i < 800; i++)
        workload_step(&f, &rng, i);
    assert_same_snapshot(a, b);
    assert_same_snapshot(a, c);
    storage_free(b);
    storage_free(c);
}

static void test_snapshot_empty_engine_roundtrip(void **state)
{
    struct storage *s = *state, *r;
    struct buf snap;
    t_snapshot(s, &snap);
    assert_int_equal(storage_new(NULL, &r), 0);
    restore_ok(r, &snap);
    EXPECT(r, "[\"default\"]", "{\"op\":\"branch.list\"}");
    assert_int_equal(storage_version(r), 0);
    assert_same_snapshot(s, r);
    buf_close(&snap);
    storage_free(r);
}

/* ---- Corrupt input ----------------------------------------------------------------------- */

/* The engine the corrupt inputs are thrown at: small, distinctive state. */
static void build_victim(struct storage *v)
{
    OK(v, "{\"op\":\"kv.put\",\"key\":\"victim\",\"value\":\"still here\"}");
    OK(v, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"vb\"}");
    OK(v, "{\"op\":\"kv.put\",\"branch\":\"vb\",\"key\":\"x\",\"value\":1}");
}

static void check_victim(struct storage *v, const struct buf *snap_before)
{
    struct buf now;
    t_snapshot(v, &now);
    assert_int_equal(now.len, snap_before->len);
    assert_memory_equal(now.data, snap_before->data, now.len);
    buf_close(&now);
    assert_non_null(strstr(OK(v, "{\"op\":\"kv.get\",\"key\":\"victim\"}"), "still here"));
}

/* A small snapshot of a different state, to be corrupted. */
static void small_snapshot(struct buf *snap)
{
    struct storage *src;
    assert_int_equal(storage_new(NULL, &src), 0);
    OK(src, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    OK(src, "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":\"two\"}");
    OK(src, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"c\"}");
    OK(src, "{\"op\":\"kv.delete\",\"branch\":\"c\",\"key\":\"a\"}");
    t_snapshot(src, snap);
    storage_free(src);
}

static int restore_code(struct storage *s, const uint8_t *data, size_t len)
{
    struct err err;
    err_clear(&err);
    int rc = storage_restore(s, data, len, &err);
    if (rc != 0)
        assert_true(strlen(err.msg) > 0);
    return rc;
}

static void test_restore_rejects_every_truncation(void **state)
{
    struct storage *v = *state;
    build_victim(v);
    struct buf before, snap;
    t_snapshot(v, &before);
    small_snapshot(&snap);
    for (size_t n = 0; n < snap.len; n++) {
        uint8_t *copy = malloc(n ? n : 1); /* exact size: overreads are caught by ASan */
        memcpy(copy, snap.data, n);
        int rc = restore_code(v, copy, n);
        free(copy);
        if (rc != STRATA_INVALID_ARGUMENT) {
            fprintf(stderr, "prefix of %zu/%zu bytes: got %s\n", n, snap.len, err_name(rc));
            fail();
        }
    }
    check_victim(v, &before);
    /* The whole thing restores. */
    restore_ok(v, &snap);
    EXPECT(v, "null", "{\"op\":\"kv.get\",\"key\":\"victim\"}");
    buf_close(&before);
    buf_close(&snap);
}

static void test_restore_rejects_byte_flips(void **state)
{
    struct storage *v = *state;
    build_victim(v);
    struct buf before, snap;
    t_snapshot(v, &before);
    small_snapshot(&snap);
    static const uint8_t masks[] = {0x01, 0x10, 0x80, 0xff};
    for (size_t i = 0; i < snap.len; i++) {
        for (size_t m = 0; m < sizeof masks; m++) {
            snap.data[i] ^= masks[m];
            int rc = restore_code(v, snap.data, snap.len);
            snap.data[i] ^= masks[m];
            if (rc != STRATA_INVALID_ARGUMENT) {
                fprintf(stderr, "flip 0x%02x at %zu/%zu: got %s\n", masks[m], i, snap.len,
                        err_name(rc));
                fail();
            }
        }
    }
    check_victim(v, &before);
    buf_close(&before);
    buf_close(&snap);
}

static void test_restore_rejects_bad_header_trailing_and_empty(void **state)
{
    struct storage *v = *state;
    build_victim(v);
    struct buf before, snap;
    t_snapshot(v, &before);
    small_snapshot(&snap);
    struct err err;

    assert_int_equal(storage_restore(v, NULL, 0, &err), STRATA_INVALID_ARGUMENT);
    assert_int_equal(storage_restore(v, snap.data, 0, &err), STRATA_INVALID_ARGUMENT);

    snap.data[0] = 'X';
    assert_int_equal(storage_restore(v, snap.data, snap.len, &err), STRATA_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, "magic"));
    snap.data[0] = 'S';

    for (uint32_t fmt = 0; fmt < 4; fmt++) {
        if (fmt == 1)
            continue;
        uint8_t save[4];
        memcpy(save, snap.data + 8, 4);
        snap.data[8] = (uint8_t)(fmt >> 24);
        snap.data[9] = (uint8_t)(fmt >> 16);
        snap.data[10] = (uint8_t)(fmt >> 8);
        snap.data[11] = (uint8_t)fmt;
        assert_int_equal(storage_restore(v, snap.data, snap.len, &err), STRATA_INVALID_ARGUMENT);
        assert_non_null(strstr(err.msg, "format"));
        memcpy(snap.data + 8, save, 4);
    }

    /* Trailing garbage after a complete frame, and a second complete frame. */
    size_t len = snap.len;
    buf_append(&snap, "garbage", 7);
    assert_int_equal(storage_restore(v, snap.data, snap.len, &err), STRATA_INVALID_ARGUMENT);
    snap.len = len;
    uint8_t *frame = malloc(len - 12);
    memcpy(frame, snap.data + 12, len - 12);
    buf_append(&snap, frame, len - 12);
    free(frame);
    assert_int_equal(storage_restore(v, snap.data, snap.len, &err), STRATA_INVALID_ARGUMENT);
    snap.len = len;
    buf_append_u8(&snap, 0);
    assert_int_equal(storage_restore(v, snap.data, snap.len, &err), STRATA_INVALID_ARGUMENT);
    snap.len = len;

    check_victim(v, &before);
    restore_ok(v, &snap);
    buf_close(&before);
    buf_close(&snap);
}

/* ---- Well-framed but semantically corrupt streams ------------------------------------- */

/* Decompress a snapshot's LZ4 frame into its raw msgpack stream. */
static void unframe(const struct buf *snap, struct buf *raw)
{
    LZ4F_dctx *dctx;
    assert_false(LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION)));
    buf_init(raw);
    const uint8_t *in = snap->data + 12;
    size_t left = snap->len - 12, hint = 1;
    while (left > 0 && hint != 0) {
        assert_int_equal(buf_reserve(raw, 1 << 16), 0);
        size_t outsz = raw->cap - raw->len, insz = left;
        hint = LZ4F_decompress(dctx, raw->data + raw->len, &outsz, in, &insz, NULL);
        assert_false(LZ4F_isError(hint));
        raw->len += outsz;
        in += insz;
        left -= insz;
    }
    LZ4F_freeDecompressionContext(dctx);
}

/* Frame a raw stream the way the engine does: magic, format, checksummed LZ4 frame. */
static void reframe(const uint8_t *raw, size_t len, struct buf *out)
{
    LZ4F_preferences_t prefs;
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.blockChecksumFlag = LZ4F_blockChecksumEnabled;
    prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
    buf_init(out);
    buf_append(out, "STRASNAP", 8);
    buf_append_be32(out, 1);
    size_t bound = LZ4F_compressFrameBound(len, &prefs);
    assert_int_equal(buf_reserve(out, bound), 0);
    size_t n = LZ4F_compressFrame(out->data + out->len, bound, raw, len, &prefs);
    assert_false(LZ4F_isError(n));
    out->len += n;
}

static int pack_to_buf(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

/* The stream's top-level objects, editable before re-packing. */
struct stream {
    msgpack_zone zone;
    msgpack_object obj[256];
    int n;
};

static void stream_parse(const struct buf *raw, struct stream *st)
{
    msgpack_zone_init(&st->zone, 4096);
    st->n = 0;
    size_t off = 0;
    while (off < raw->len) {
        assert_true(st->n < 256);
        msgpack_unpack_return r = msgpack_unpack((const char *)raw->data, raw->len, &off,
                                                 &st->zone, &st->obj[st->n]);
        assert_true(r == MSGPACK_UNPACK_SUCCESS || r == MSGPACK_UNPACK_EXTRA_BYTES);
        st->n++;
    }
}

static void stream_pack(const struct stream *st, struct buf *raw)
{
    buf_init(raw);
    msgpack_packer pk;
    msgpack_packer_init(&pk, raw, pack_to_buf);
    for (int i = 0; i < st->n; i++)
        msgpack_pack_object(&pk, st->obj[i]);
}

/* Index of the top-level object that is the header of the branch named `name`. */
static int find_branch(const struct stream *st, const char *name)
{
    for (int i = 1; i < st->n; i++) {
        const msgpack_object *o = &st->obj[i];
        if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 12 &&
            o->via.array.ptr[1].type == MSGPACK_OBJECT_STR &&
            o->via.array.ptr[1].via.str.size == strlen(name) &&
            memcmp(o->via.array.ptr[1].via.str.ptr, name, strlen(name)) == 0)
            return i;
    }
    fail_msg("branch %s not in stream", name);
    return -1;
}

enum mutation {
    MUT_NONE,
    MUT_MORE_BRANCHES,
    MUT_HEADER_VERSION_TOO_LOW,
    MUT_HEADER_NEGATIVE_VERSION,
    MUT_UNKNOWN_PARENT,
    MUT_DUPLICATE_LIVE_NAME,
    MUT_DUPLICATE_ID,
    MUT_KEYS_OUT_OF_ORDER,
    MUT_VERSIONS_OUT_OF_ORDER,
    MUT_VALUE_NOT_BIN,
    MUT_EMPTY_CHAIN,
    MUT_LOG_UNKNOWN_KEY,
    MUT_LOG_VERSION_TOO_HIGH,
    MUT_NO_END,
    MUT_AFTER_END,
    MUT_DEFAULT_DELETED,
    MUT_EMPTY_BRANCH_NAME,
    MUT_FEWER_ENTRIES,
    MUT_HUGE_LOG_COUNT, /* keep last: the current engine trusts this count (reported) */
    MUT_COUNT
};

/* What restore must say about each mutation. */
static const char *const mutation_reason[MUT_COUNT] = {
    [MUT_NONE] = "",
    [MUT_MORE_BRANCHES] = "branch header",
    [MUT_HEADER_VERSION_TOO_LOW] = "version order",
    [MUT_HEADER_NEGATIVE_VERSION] = "header fields",
    [MUT_UNKNOWN_PARENT] = "branch parent",
    [MUT_DUPLICATE_LIVE_NAME] = "duplicate branch name",
    [MUT_DUPLICATE_ID] = "branch id",
    [MUT_KEYS_OUT_OF_ORDER] = "keys out of order",
    [MUT_VERSIONS_OUT_OF_ORDER] = "version order",
    [MUT_VALUE_NOT_BIN] = "version value",
    [MUT_EMPTY_CHAIN] = "entry fields",
    [MUT_LOG_UNKNOWN_KEY] = "change log key",
    [MUT_LOG_VERSION_TOO_HIGH] = "change log record",
    [MUT_NO_END] = "missing end marker",
    [MUT_AFTER_END] = "trailing data",
    [MUT_DEFAULT_DELETED] = "no default branch",
    [MUT_EMPTY_BRANCH_NAME] = "branch fields",
    [MUT_FEWER_ENTRIES] = "change log",
    [MUT_HUGE_LOG_COUNT] = "change log",
};

/* Apply one corruption to the stream of small_snapshot(): header, default (entries a, b,
 * space key; log), c (entry a; log). */
static void mutate(struct stream *st, enum mutation m)
{
    msgpack_object *hdr = st->obj[0].via.array.ptr;
    int def = find_branch(st, "default"), c = find_branch(st, "c");
    msgpack_object *dh = st->obj[def].via.array.ptr, *ch = st->obj[c].via.array.ptr;
    switch (m) {
    case MUT_NONE:
        break;
    case MUT_MORE_BRANCHES:
        hdr[3].via.u64++;
        break;
    case MUT_HEADER_VERSION_TOO_LOW:
        hdr[0].via.u64 = 1;
        break;
    case MUT_HEADER_NEGATIVE_VERSION:
        hdr[0].type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        hdr[0].via.i64 = -1;
        break;
    case MUT_UNKNOWN_PARENT:
        ch[3].via.u64 = 99;
        break;
    case MUT_DUPLICATE_LIVE_NAME:
        ch[1] = dh[1];
        break;
    case MUT_DUPLICATE_ID:
        ch[0] = dh[0];
        break;
    case MUT_KEYS_OUT_OF_ORDER: {
        msgpack_object t = st->obj[def + 1];
        st->obj[def + 1] = st->obj[def + 2];
        st->obj[def + 2] = t;
        break;
    }
    case MUT_VERSIONS_OUT_OF_ORDER: {
        /* c's entry a has [tombstone]; give it a second, newer-numbered older version. */
        msgpack_object *e = st->obj[c + 1].via.array.ptr;
        msgpack_object *chain = &e[2];
        msgpack_object *two = msgpack_zone_malloc(&st->zone, 2 * sizeof *two);
        two[0] = chain->via.array.ptr[0];
        two[1] = chain->via.array.ptr[0];
        chain->via.array.ptr = two;
        chain->via.array.size = 2;
        break;
    }
    case MUT_VALUE_NOT_BIN: {
        msgpack_object *v = st->obj[def + 1].via.array.ptr[2].via.array.ptr[0].via.array.ptr;
        v[2].type = MSGPACK_OBJECT_STR;
        v[2].via.str.ptr = "x";
        v[2].via.str.size = 1;
        break;
    }
    case MUT_EMPTY_CHAIN:
        st->obj[def + 1].via.array.ptr[2].via.array.size = 0;
        break;
    case MUT_LOG_UNKNOWN_KEY: {
        msgpack_object *rec = st->obj[c - 1].via.array.ptr; /* default's last log record */
        rec[1].via.bin.ptr = "nope";
        rec[1].via.bin.size = 4;
        break;
    }
    case MUT_LOG_VERSION_TOO_HIGH:
        st->obj[c - 1].via.array.ptr[0].via.u64 = 1000;
        break;
    case MUT_NO_END:
        st->n--;
        break;
    case MUT_AFTER_END:
        st->obj[st->n] = st->obj[st->n - 1];
        st->n++;
        break;
    case MUT_DEFAULT_DELETED:
        dh[2].via.boolean = true;
        break;
    case MUT_EMPTY_BRANCH_NAME:
        ch[1].via.str.size = 0;
        break;
    case MUT_FEWER_ENTRIES:
        dh[10].via.u64--; /* entry count */
        break;
    case MUT_HUGE_LOG_COUNT:
        /* A 40-byte change log cannot hold 2^36 records: this is corruption, not a
         * reason to try a terabyte allocation. */
        dh[11].via.u64 = (uint64_t)1 << 36; /* change-log count */
        break;
    case MUT_COUNT:
        break;
    }
}

/* Throw mutations [from, to) of small_snapshot()'s stream at a victim engine: each is
 * rejected as corrupt, for the expected reason, and the victim keeps its state. */
static void check_mutations(struct storage *v, int from, int to)
{
    build_victim(v);
    struct buf before, snap, raw;
    t_snapshot(v, &before);
    small_snapshot(&snap);
    unframe(&snap, &raw);
    for (int m = from; m < to; m++) {
        struct stream st;
        stream_parse(&raw, &st);
        /* Shape: header, default + 3 entries + 3 log records, c + 1 entry + 1 log, "END". */
        assert_int_equal(st.n, 12);
        mutate(&st, (enum mutation)m);
        struct buf raw2, framed;
        stream_pack(&st, &raw2);
        reframe(raw2.data, raw2.len, &framed);
        struct err err;
        int rc = storage_restore(v, framed.data, framed.len, &err);
        if (m == MUT_NONE) {
            /* The re-framed, unmodified stream is accepted: the harness itself is sound. */
            assert_int_equal(rc, 0);
            EXPECT(v, "null", "{\"op\":\"kv.get\",\"branch\":\"c\",\"key\":\"a\"}");
            EXPECT(v, "{\"keys\":[\"a\",\"b\"],\"cursor\":null}", "{\"op\":\"kv.list\"}");
            restore_ok(v, &before);
        } else if (rc != STRATA_INVALID_ARGUMENT) {
            fprintf(stderr, "mutation %d: got %s (%s)\n", m, err_name(rc), err.msg);
            fail();
        } else if (strstr(err.msg, "corrupt snapshot") == NULL ||
                   strstr(err.msg, mutation_reason[m]) == NULL) {
            fprintf(stderr, "mutation %d: expected '%s', got '%s'\n", m, mutation_reason[m],
                    err.msg);
            fail();
        }
        buf_close(&raw2);
        buf_close(&framed);
        msgpack_zone_destroy(&st.zone);
        check_victim(v, &before);
    }
    buf_close(&raw);
    buf_close(&before);
    buf_close(&snap);
}

static void test_restore_rejects_corrupt_stream_contents(void **state)
{
    check_mutations(*state, MUT_NONE, MUT_HUGE_LOG_COUNT);
}

/* A count in the stream must not drive an allocation larger than the stream could
 * hold. Fails on the current engine (OUT_OF_MEMORY after a 1 TiB malloc attempt). */
static void test_restore_rejects_huge_log_count(void **state)
{
    check_mutations(*state, MUT_HUGE_LOG_COUNT, MUT_COUNT);
}

/* ---- Chunked output ------------------------------------------------------------------- */

struct chunk_sink {
    int calls, fail_at;
    struct buf out;
};

static int chunk_write(void *arg, const void *chunk, size_t len)
{
    struct chunk_sink *k = arg;
    if (++k->calls == k->fail_at)
        return STRATA_UNAVAILABLE;
    assert_true(len > 0);
    return buf_append(&k->out, chunk, len);
}

static void test_snapshot_write_failure_midway(void **state)
{
    struct storage *s = *state;
    /* Enough data for several compressed chunks. */
    for (int i = 0; i < 40; i++) {
        char items[64 * 1024];
        size_t n = (size_t)snprintf(items, sizeof items, "{\"op\":\"kv.batch_put\",\"items\":[");
        for (int j = 0; j < 100; j++)
            n += (size_t)snprintf(items + n, sizeof items - n, "%s[\"key%05d\",\"%d-%0200d\"]",
                                  j ? "," : "", i * 100 + j, i * 7 + j, j);
        snprintf(items + n, sizeof items - n, "]}");
        OK(s, "%s", items);
    }
    struct chunk_sink ok = {0, 0, {0}};
    buf_init(&ok.out);
    struct err err;
    assert_int_equal(storage_snapshot(s, chunk_write, &ok, &err), 0);
    assert_true(ok.calls >= 4);
    struct buf whole;
    t_snapshot(s, &whole);
    assert_int_equal(whole.len, ok.out.len);
    assert_memory_equal(whole.data, ok.out.data, whole.len);
    for (int f = 1; f <= ok.calls; f++) {
        struct chunk_sink k = {0, f, {0}};
        buf_init(&k.out);
        err_clear(&err);
        assert_int_equal(storage_snapshot(s, chunk_write, &k, &err), STRATA_UNAVAILABLE);
        assert_int_equal(k.calls, f); /* nothing written after the failure */
        assert_true(strlen(err.msg) > 0);
        buf_close(&k.out);
    }
    /* The engine is unaffected and snapshots the same bytes again. */
    struct buf again;
    t_snapshot(s, &again);
    assert_int_equal(again.len, whole.len);
    assert_memory_equal(again.data, whole.data, whole.len);
    buf_close(&again);
    buf_close(&whole);
    buf_close(&ok.out);
}

/* ---- Large state ----------------------------------------------------------------------- */

static void test_snapshot_large_state_roundtrip(void **state)
{
    struct storage *s = *state;
    static const char *const br[] = {"default", "b1", "b2", "b3", "b4"};
    enum { PER_BRANCH = 10000, BATCH = 500 };
    static char cmd[BATCH * 64 + 128];
    for (int b = 0; b < 5; b++) {
        if (b > 0)
            OK(s, "{\"op\":\"branch.create\",\"name\":\"%s\"}", br[b]);
        for (int i = 0; i < PER_BRANCH; i += BATCH) {
            size_t n = (size_t)snprintf(cmd, sizeof cmd,
                                        "{\"op\":\"kv.batch_put\",\"branch\":\"%s\",\"items\":[",
                                        br[b]);
            for (int j = i; j < i + BATCH; j++)
                n += (size_t)snprintf(cmd + n, sizeof cmd - n, "%s[\"k%06d\",%d]", j > i ? "," : "",
                                      j, j * (b + 1));
            snprintf(cmd + n, sizeof cmd - n, "]}");
            OK(s, "%s", cmd);
        }
    }
    OK(s, "{\"op\":\"kv.delete\",\"branch\":\"b2\",\"key\":\"k000007\"}");
    struct buf snap;
    t_snapshot(s, &snap);
    struct storage *r;
    assert_int_equal(storage_new(NULL, &r), 0);
    restore_ok(r, &snap);
    assert_same_snapshot(s, r);
    for (int b = 0; b < 5; b++) {
        EXPECT(r, b == 2 ? "9999" : "10000", "{\"op\":\"kv.count\",\"branch\":\"%s\"}", br[b]);
        /* Page through everything in both engines and compare each page. */
        char cursor[32] = "";
        for (int page = 0; page < 3; page++) {
            char q[256];
            if (page == 0)
                snprintf(q, sizeof q, "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"limit\":4000}", br[b]);
            else
                snprintf(q, sizeof q,
                         "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"limit\":4000,\"cursor\":\"%s\"}",
                         br[b], cursor);
            char *want = strdup(OK(s, "%s", q));
            const char *got = OK(r, "%s", q);
            assert_string_equal(got, want);
            const char *c = strstr(want, "\"cursor\":\"");
            if (c)
                snprintf(cursor, sizeof cursor, "%.7s", c + 10);
            free(want);
        }
    }
    char want[64];
    snprintf(want, sizeof want, "{\"value\":%d,", 4321 * 5);
    assert_non_null(strstr(OK(r, "{\"op\":\"kv.get\",\"branch\":\"b4\",\"key\":\"k004321\"}"), want));
    buf_close(&snap);
    storage_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot_roundtrip_preserves_every_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_deterministic_across_engines_and_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_empty_engine_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_rejects_every_truncation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_rejects_byte_flips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_rejects_bad_header_trailing_and_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_rejects_corrupt_stream_contents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_write_failure_midway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_large_state_roundtrip, setup, teardown),
        /* Last: under ASan the engine's 1 TiB allocation attempt aborts the process. */
        cmocka_unit_test_setup_teardown(test_restore_rejects_huge_log_count, setup, teardown),
    };
    return cmocka_run_group_tests_name("storage_snapshot", tests, NULL, NULL);
}
