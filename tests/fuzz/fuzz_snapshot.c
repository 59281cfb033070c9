/* libFuzzer target for storage_restore: a snapshot arrives from another node (Raft
 * InstallSnapshot) and must be validated completely before it replaces the engine.
 *
 * A snapshot is "STRASNAP" + be32 format + an LZ4 frame with block and content checksums
 * around a msgpack stream. Mutated bytes almost never pass the checksums, so each input
 * is tried two ways: as a whole snapshot (the header and LZ4 framing are the attack
 * surface), and as the decompressed msgpack stream, which the target wraps in a valid
 * header and checksummed LZ4 frame itself (the engine's record validation is the attack
 * surface). The seed corpus holds both forms of a few real snapshots.
 *
 * Checked: a failed restore has a code and message and leaves the engine as it was (still
 * empty, byte for byte; when both forms of an input are refused, both went into the same
 * engine and one snapshot checks it); a successful restore yields an engine that snapshots, restores
 * into a second engine, and snapshots again to the same bytes, and that answers reads
 * over every primitive without crashing.
 *
 * Built with -DFUZZ_GEN (by gcc, as fuzz_gen_snapshot) the same file writes the seed
 * corpus tests/fuzz/corpus/snapshot/. Usage: fuzz_gen_snapshot DIR */
#include "fuzz_input.h"
#include "storage.h"

#include <lz4frame.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "CHECK failed: %s (line %d)\n", #cond, __LINE__);                      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define SNAP_HEADER 12 /* "STRASNAP" + be32 format (storage/snapshot.c) */

static void exec_json(struct storage *s, const char *json, int64_t ts, bool must_succeed)
{
    struct buf cmd, res;
    struct err e;
    buf_init(&cmd);
    buf_init(&res);
    CHECK(storage_json_to_value(json, strlen(json), &cmd, &e) == 0);
    int rc = storage_exec(s, (const uint8_t *)cmd.data, cmd.len, ts, &res, &e);
    if (must_succeed && rc != 0) {
        fprintf(stderr, "%s failed: %s\n", json, e.msg);
        abort();
    }
    CHECK(rc != 0 || res.len > 0);
    CHECK(rc == 0 || (e.code == rc && e.msg[0] != '\0'));
    buf_close(&cmd);
    buf_close(&res);
}

/* Reads over every primitive of a restored engine: whatever restore accepted must be
 * usable, not just storable. */
static const char *const probes[] = {
    "{\"op\":\"branch.list\"}",
    "{\"op\":\"kv.scan\"}",
    "{\"op\":\"kv.history\",\"key\":\"a\"}",
    "{\"op\":\"json.get\",\"key\":\"plan\"}",
    "{\"op\":\"event.range\"}",
    "{\"op\":\"event.verify_chain\"}",
    "{\"op\":\"state.list\"}",
    "{\"op\":\"vector.list_collections\"}",
    "{\"op\":\"vector.query\",\"collection\":\"docs\",\"vector\":[1,0,0],\"k\":3}",
    "{\"op\":\"branch.diff\",\"a\":\"default\",\"b\":\"exp\"}",
    "{\"op\":\"kv.put\",\"key\":\"after\",\"value\":1}",
};

static void snapshot(struct storage *s, struct buf *out)
{
    struct err e;
    buf_reset(out);
    if (storage_snapshot_buf(s, out, &e) != 0) {
        fprintf(stderr, "snapshot failed: %s\n", e.msg);
        abort();
    }
}

/* A restore into s; a refusal must carry its code and message. */
static int restore(struct storage *s, const uint8_t *snap, size_t len)
{
    struct err e;
    memset(&e, 0, sizeof e);
    int rc = storage_restore(s, snap, len, &e);
    if (rc != 0)
        CHECK(rc > 0 && rc < STRATA_CODE_COUNT && e.code == rc && e.msg[0] != '\0');
    return rc;
}

/* The engine is still empty, byte for byte. */
static void check_empty(struct storage *s, const struct buf *empty, struct buf *b)
{
    snapshot(s, b);
    CHECK(b->len == empty->len && memcmp(b->data, empty->data, b->len) == 0);
}

/* An accepted snapshot: the engine snapshots, restores into a second engine, snapshots
 * again to the same bytes, and answers reads over every primitive. */
static void check_accepted(struct storage *s, struct buf *b1, struct buf *b2)
{
    struct storage *s2;
    struct err e;
    snapshot(s, b1);
    CHECK(storage_new(NULL, &s2) == 0);
    if (storage_restore(s2, (const uint8_t *)b1->data, b1->len, &e) != 0) {
        fprintf(stderr, "re-snapshot of an accepted snapshot does not restore: %s\n", e.msg);
        abort();
    }
    snapshot(s2, b2);
    CHECK(b1->len == b2->len && memcmp(b1->data, b2->data, b1->len) == 0);
    storage_free(s2);
    int64_t ts = storage_last_ts(s);
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        exec_json(s, probes[i], ts + 1, false);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The harness's snapshot buffers live across inputs (reset, not freed) so their
     * growth is not paid again on every input; the engines are all freed per input. */
    static struct buf empty, b1, b2;
    if (empty.data == NULL) {
        struct storage *s;
        CHECK(storage_new(NULL, &s) == 0);
        snapshot(s, &empty);
        storage_free(s);
    }
    /* The input as a whole snapshot. */
    struct storage *s;
    CHECK(storage_new(NULL, &s) == 0);
    int rc1 = restore(s, data, size);
    if (rc1 == 0) {
        check_accepted(s, &b1, &b2);
        storage_free(s);
        CHECK(storage_new(NULL, &s) == 0);
    }

    /* The input as the msgpack stream inside a snapshot, with declared container counts
     * kept to what the input can hold (fuzz_input.h; the 1-GiB case is
     * tests/fuzz/crashes/snapshot-map32-1gib.stream). */
    uint8_t *stream = fuzz_input_copy(data, size);
    CHECK(stream != NULL);
    LZ4F_preferences_t prefs;
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.blockChecksumFlag = LZ4F_blockChecksumEnabled;
    prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
    size_t cap = SNAP_HEADER + LZ4F_compressFrameBound(size, &prefs);
    uint8_t *snap = malloc(cap);
    CHECK(snap != NULL);
    memcpy(snap, empty.data, SNAP_HEADER);
    /* A stream holding an idempotency table section is format 2 (docs/storage.md). */
    if (size >= 4 && memmem(stream, size, "IDEM", 4) != NULL)
        snap[SNAP_HEADER - 1] = 2;
    size_t n = LZ4F_compressFrame(snap + SNAP_HEADER, cap - SNAP_HEADER, stream, size, &prefs);
    CHECK(!LZ4F_isError(n));
    /* When the whole-snapshot form was refused, the stream form goes into the same
     * engine: if it is refused too, one snapshot shows that neither refusal changed the
     * engine (the snapshot is most of the cost of an input). */
    int rc2 = restore(s, snap, SNAP_HEADER + n);
    if (rc2 != 0) {
        check_empty(s, &empty, &b1);
    } else {
        check_accepted(s, &b1, &b2);
        if (rc1 != 0) {
            /* The refusal of the whole form was not checked yet: replay it alone. */
            struct storage *s3;
            CHECK(storage_new(NULL, &s3) == 0);
            CHECK(restore(s3, data, size) == rc1);
            check_empty(s3, &empty, &b1);
            storage_free(s3);
        }
    }
    storage_free(s);
    free(snap);
    free(stream);
    return 0;
}

#ifdef FUZZ_GEN
/* Small engines whose snapshots seed the corpus; each entry is a NULL-terminated list. */
static const char *const kv_only[] = {
    "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}",
    "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":2}",
    "{\"op\":\"kv.delete\",\"key\":\"a\"}",
    "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":{\"$bytes\":\"AAEC\"}}",
    NULL,
};
static const char *const everything[] = {
    "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}",
    "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"exp\"}",
    "{\"op\":\"kv.put\",\"branch\":\"exp\",\"key\":\"a\",\"value\":2}",
    "{\"op\":\"event.append\",\"type\":\"click\",\"payload\":{\"x\":1}}",
    "{\"op\":\"event.append\",\"type\":\"view\",\"payload\":{\"page\":\"home\"}}",
    "{\"op\":\"json.set\",\"key\":\"plan\",\"path\":\"$\",\"value\":{\"title\":\"Q3\","
    "\"tags\":[\"a\"]}}",
    "{\"op\":\"state.init\",\"cell\":\"lock\",\"value\":\"free\"}",
    "{\"op\":\"vector.create_collection\",\"collection\":\"docs\",\"dimension\":3,"
    "\"metric\":\"cosine\"}",
    "{\"op\":\"vector.upsert\",\"collection\":\"docs\",\"key\":\"a\",\"vector\":[1,0,0],"
    "\"metadata\":{\"n\":1}}",
    "{\"op\":\"space.create\",\"space\":\"logs\"}",
    NULL,
};
static const char *const retention[] = {
    "{\"op\":\"branch.create\",\"name\":\"scratch\"}",
    "{\"op\":\"kv.put\",\"branch\":\"scratch\",\"key\":\"k\",\"value\":1}",
    "{\"op\":\"kv.put\",\"branch\":\"scratch\",\"key\":\"k\",\"value\":2}",
    "{\"op\":\"branch.set_retention\",\"name\":\"scratch\",\"keep_last\":1}",
    "{\"op\":\"branch.fork\",\"source\":\"scratch\",\"name\":\"child\"}",
    NULL,
};

/* Keyed writes: the snapshot carries the idempotency table (format 2). */
static const char *const idem[] = {
    "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1,\"idem\":[{\"$bytes\":"
    "\"AAECAwQFBgcICQoLDA0ODw==\"},1,1,false]}",
    "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{},\"idem\":[{\"$bytes\":"
    "\"AAECAwQFBgcICQoLDA0ODw==\"},2,1,false]}",
    "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":2,\"idem\":[{\"$bytes\":"
    "\"EBESExQVFhcYGRobHB0eHw==\"},7,5,false]}",
    NULL,
};

static int save(const char *dir, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

/* Writes NAME.snap (the snapshot) and NAME.stream (the msgpack inside it). */
static int seed(const char *dir, const char *name, const char *const *cmds)
{
    struct storage *s;
    CHECK(storage_new(NULL, &s) == 0);
    int64_t ts = 1700000000000000;
    for (size_t i = 0; cmds[i] != NULL; i++)
        exec_json(s, cmds[i], ts += 1000, true);
    struct buf snap, raw;
    buf_init(&snap);
    buf_init(&raw);
    snapshot(s, &snap);
    storage_free(s);

    LZ4F_dctx *dctx;
    CHECK(!LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION)));
    const uint8_t *in = (const uint8_t *)snap.data + SNAP_HEADER;
    size_t left = snap.len - SNAP_HEADER, hint = 1;
    while (left > 0 && hint != 0) {
        CHECK(buf_reserve(&raw, 64 * 1024) == 0);
        size_t outsz = raw.cap - raw.len, insz = left;
        hint = LZ4F_decompress(dctx, raw.data + raw.len, &outsz, in, &insz, NULL);
        CHECK(!LZ4F_isError(hint));
        raw.len += outsz;
        in += insz;
        left -= insz;
    }
    LZ4F_freeDecompressionContext(dctx);

    char file[256];
    snprintf(file, sizeof file, "%s.snap", name);
    int bad = save(dir, file, snap.data, snap.len);
    snprintf(file, sizeof file, "%s.stream", name);
    bad |= save(dir, file, raw.data, raw.len);
    buf_close(&snap);
    buf_close(&raw);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    static const char *const none[] = {NULL};
    int bad = seed(argv[1], "empty", none);
    bad |= seed(argv[1], "kv_only", kv_only);
    bad |= seed(argv[1], "everything", everything);
    bad |= seed(argv[1], "idem", idem);
    bad |= seed(argv[1], "retention", retention);
    return bad;
}
#endif
