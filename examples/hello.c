/* hello: a complete libstrata program — put, get, fork, write on the fork, diff, merge and
 * one pipelined round of reads — against any database URI, using only the public API.
 *
 *   cc hello.c $(pkg-config --cflags --libs --static strata) -o hello
 *   ./hello                      # mem: (an empty in-process database)
 *   ./hello file:/tmp/demo       # a durable local database; run it twice
 *   ./hello strata://127.0.0.1:9876
 *
 * Commands are MessagePack maps built with msgpack-c; results are MessagePack values,
 * printed here as JSON through jansson. Exit status: 0 on success, 1 on any unexpected
 * error, 2 on bad usage. */
#include <strata/strata.h>

#include <jansson.h>
#include <msgpack.h>
#include <openssl/evp.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Building commands with msgpack-c ---------------------------------------------- */

/* One command being built: a map {"op": OP, key: value, ...}. */
struct cmd {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int failed; /* nonzero once any pack call failed (out of memory) */
};

static void cmd_init(struct cmd *c)
{
    msgpack_sbuffer_init(&c->sb);
    msgpack_packer_init(&c->pk, &c->sb, msgpack_sbuffer_write);
    c->failed = 0;
}

static void cmd_close(struct cmd *c)
{
    msgpack_sbuffer_destroy(&c->sb);
}

static void pack_str(struct cmd *c, const char *s)
{
    c->failed |= msgpack_pack_str_with_body(&c->pk, s, strlen(s));
}

/* Start a new command with `nargs` arguments after "op". */
static void cmd_begin(struct cmd *c, const char *op, uint32_t nargs)
{
    msgpack_sbuffer_clear(&c->sb);
    c->failed = 0;
    c->failed |= msgpack_pack_map(&c->pk, nargs + 1);
    pack_str(c, "op");
    pack_str(c, op);
}

static void arg_str(struct cmd *c, const char *key, const char *value)
{
    pack_str(c, key);
    pack_str(c, value);
}

static void arg_int(struct cmd *c, const char *key, int64_t value)
{
    pack_str(c, key);
    c->failed |= msgpack_pack_int64(&c->pk, value);
}

/* ---- Printing results: MessagePack -> jansson -> JSON text --------------------------- */

/* Convert one MessagePack object to a new jansson value (NULL if it has no JSON form).
 * Binary strings are shown as {"$bytes": base64}, the convention of the strata CLI. */
static json_t *to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return json_real((double)o->via.u64);
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: {
        json_t *r = json_real(o->via.f64); /* NULL for NaN and infinities */
        return r ? r : json_null();
    }
    case MSGPACK_OBJECT_STR:
        return json_stringn(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        size_t n = o->via.bin.size;
        unsigned char *b64 = malloc(4 * ((n + 2) / 3) + 1);
        if (b64 == NULL)
            return NULL;
        EVP_EncodeBlock(b64, (const unsigned char *)o->via.bin.ptr, (int)n);
        json_t *r = json_pack("{s:s}", "$bytes", (const char *)b64);
        free(b64);
        return r;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++)
            if (json_array_append_new(a, to_json(&o->via.array.ptr[i]))) {
                json_decref(a);
                a = NULL;
            }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR ||
                json_object_setn_new(m, kv->key.via.str.ptr, kv->key.via.str.size,
                                     to_json(&kv->val))) {
                json_decref(m);
                m = NULL;
            }
        }
        return m;
    }
    default: /* ext types: the engine never returns them */
        return NULL;
    }
}

/* Print "LABEL -> JSON" for a MessagePack result. Returns 0, or -1 if it does not decode. */
static int print_result(const char *label, const uint8_t *data, size_t len)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int rc = -1;
    if (msgpack_unpack_next(&u, (const char *)data, len, &off) == MSGPACK_UNPACK_SUCCESS) {
        json_t *j = to_json(&u.data);
        char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        if (text) {
            printf("%-34s -> %s\n", label, text);
            rc = 0;
        }
        free(text);
        json_decref(j);
    }
    msgpack_unpacked_destroy(&u);
    if (rc)
        printf("%-34s -> (result does not convert to JSON)\n", label);
    return rc;
}

/* Print an error the way a program should look at it: the stable code (what to branch on)
 * and the message (for humans). */
static void print_error(const char *label, int code, const struct err *e)
{
    printf("%-34s -> error %s (%d): %s\n", label, err_name(code), code, e->msg);
    if (code == STRATA_UNKNOWN_OUTCOME)
        printf("%-34s    the write may or may not have been applied: read before retrying\n", "");
}

/* ---- Running commands ---------------------------------------------------------------- */

/* Execute the command built in `c` and print its result under `label`. On success the
 * MessagePack result is left in `res` (reset first) for the caller to look into. */
static int run(struct strata *db, struct cmd *c, const char *label, struct buf *res)
{
    struct err e;
    if (c->failed) {
        printf("%-34s -> cannot build the command: out of memory\n", label);
        return STRATA_OUT_OF_MEMORY;
    }
    buf_reset(res);
    int code = strata_exec(db, (const uint8_t *)c->sb.data, c->sb.size, res, &e);
    if (code) {
        print_error(label, code, &e);
        return code;
    }
    return print_result(label, res->data, res->len) ? STRATA_PROTOCOL_ERROR : 0;
}

/* The integer under "value" in a kv.get result ({value, version, ts} or nil); 0 if the
 * key is absent or not an integer. */
static int64_t get_int_value(const struct buf *res)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int64_t v = 0;
    if (msgpack_unpack_next(&u, (const char *)res->data, res->len, &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < u.data.via.map.size; i++) {
            const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
            if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 5 &&
                memcmp(kv->key.via.str.ptr, "value", 5) == 0 &&
                (kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                 kv->val.type == MSGPACK_OBJECT_NEGATIVE_INTEGER))
                v = kv->val.via.i64;
        }
    }
    msgpack_unpacked_destroy(&u);
    return v;
}

/* Three reads sent together with strata_exec_many (one round trip to a server). Each has
 * its own outcome; the third names a branch that does not exist, and its
 * BRANCH_NOT_FOUND is the expected answer. */
static int pipelined_reads(struct strata *db, const char *feature)
{
    const char *branches[3] = {"default", feature, "no-such-branch"};
    struct cmd c[3];
    const uint8_t *cmds[3];
    size_t lens[3];
    struct buf results[3];
    int codes[3];
    struct err errs[3];
    int rc = 0;
    for (int i = 0; i < 3; i++) {
        cmd_init(&c[i]);
        cmd_begin(&c[i], "kv.get", 2);
        arg_str(&c[i], "branch", branches[i]);
        arg_str(&c[i], "key", "greeting");
        if (c[i].failed)
            rc = STRATA_OUT_OF_MEMORY;
        cmds[i] = (const uint8_t *)c[i].sb.data;
        lens[i] = c[i].sb.size;
        buf_init(&results[i]);
    }
    if (rc == 0)
        rc = strata_exec_many(db, cmds, lens, 3, 0, results, codes, errs);
    for (int i = 0; rc == 0 && i < 3; i++) {
        char label[64];
        snprintf(label, sizeof label, "kv.get greeting @%s", branches[i]);
        if (codes[i] == 0) {
            if (print_result(label, results[i].data, results[i].len))
                rc = STRATA_PROTOCOL_ERROR;
        } else {
            print_error(label, codes[i], &errs[i]);
            if (!(i == 2 && codes[i] == STRATA_BRANCH_NOT_FOUND))
                rc = codes[i];
        }
    }
    if (rc == STRATA_OUT_OF_MEMORY)
        printf("pipelined reads: out of memory\n");
    for (int i = 0; i < 3; i++) {
        buf_close(&results[i]);
        cmd_close(&c[i]);
    }
    return rc;
}

static int demo(struct strata *db)
{
    struct cmd c;
    struct buf res;
    char feature[32], greeting[64];
    int rc;
    cmd_init(&c);
    buf_init(&res);

    /* A counter that survives restarts of a durable database: 0 on an empty one. */
    cmd_begin(&c, "kv.get", 1);
    arg_str(&c, "key", "runs");
    if ((rc = run(db, &c, "kv.get runs", &res)))
        goto out;
    int64_t runs = get_int_value(&res) + 1;

    cmd_begin(&c, "kv.put", 2);
    arg_str(&c, "key", "runs");
    arg_int(&c, "value", runs);
    if ((rc = run(db, &c, "kv.put runs", &res)))
        goto out;

    cmd_begin(&c, "kv.put", 2);
    arg_str(&c, "key", "greeting");
    arg_str(&c, "value", "hello, world");
    if ((rc = run(db, &c, "kv.put greeting", &res)))
        goto out;

    cmd_begin(&c, "kv.get", 1);
    arg_str(&c, "key", "greeting");
    if ((rc = run(db, &c, "kv.get greeting", &res)))
        goto out;

    /* One branch per run, so a second run against the same database forks anew. */
    snprintf(feature, sizeof feature, "feature-%" PRId64, runs);
    cmd_begin(&c, "branch.fork", 2);
    arg_str(&c, "source", "default");
    arg_str(&c, "name", feature);
    if ((rc = run(db, &c, "branch.fork default -> feature", &res)))
        goto out;

    snprintf(greeting, sizeof greeting, "hello from %s", feature);
    cmd_begin(&c, "kv.put", 3);
    arg_str(&c, "branch", feature);
    arg_str(&c, "key", "greeting");
    arg_str(&c, "value", greeting);
    if ((rc = run(db, &c, "kv.put greeting @feature", &res)))
        goto out;

    cmd_begin(&c, "branch.diff", 2);
    arg_str(&c, "a", "default");
    arg_str(&c, "b", feature);
    if ((rc = run(db, &c, "branch.diff default feature", &res)))
        goto out;

    cmd_begin(&c, "branch.merge", 2);
    arg_str(&c, "source", feature);
    arg_str(&c, "target", "default");
    if ((rc = run(db, &c, "branch.merge feature -> default", &res)))
        goto out;

    rc = pipelined_reads(db, feature);
out:
    buf_close(&res);
    cmd_close(&c);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 2) {
        fprintf(stderr, "usage: %s [URI]   (default mem:)\n", argv[0]);
        return 2;
    }
    const char *uri = argc == 2 ? argv[1] : "mem:";
    /* libstrata logs to stderr, process-wide; a file: database logs its Raft start and
     * stop at INFO. Keep warnings and errors only. */
    log_set_level(LOG_WARN);
    struct strata *db;
    struct err e;
    int rc = strata_open(uri, &db, &e);
    if (rc) {
        printf("open %s: error %s (%d): %s\n", uri, err_name(rc), rc, e.msg);
        return 1;
    }
    printf("opened %s\n", uri);
    rc = demo(db);
    strata_close(db);
    printf(rc ? "failed\n" : "done\n");
    return rc ? 1 : 0;
}
