/* node/auth.c: the key file, the access table's MessagePack form and its validating
 * decoder (wrong types, repeated entries, every prefix, bit flips, out of memory), rights
 * checks on patterns, and every table change with the errors it can return — always
 * leaving the table unchanged on error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node.h"

/* msgpack-c allocates a container's declared size up front: garbage may ask for
 * gigabytes, which ASan must answer with NULL (the decoder rejects it). */
const char *__asan_default_options(void) __attribute__((used));
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* Write `text` to a temporary key file; the path goes to out (unlink it after). */
static void key_file(const char *text, char out[64])
{
    snprintf(out, 64, "/tmp/strata-test-auth-XXXXXX");
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
}

static int load(const char *text, struct auth *a, struct err *e)
{
    char path[64];
    key_file(text, path);
    int rc = auth_load(path, a, e);
    unlink(path);
    return rc;
}

/* A table from key-file text (must be valid). */
static void table_of(const char *text, struct authz_table *t)
{
    struct auth a;
    struct err e;
    assert_int_equal(load(text, &a, &e), 0);
    authz_table_init(t);
    assert_int_equal(authz_table_from_file(t, &a, &e), 0);
    auth_free(&a);
}

static void encode(const struct authz_table *t, struct buf *b)
{
    buf_init(b);
    assert_int_equal(authz_table_encode(t, b), 0);
}

static void assert_same(const struct authz_table *x, const struct authz_table *y)
{
    struct buf a, b;
    encode(x, &a);
    encode(y, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    buf_close(&a);
    buf_close(&b);
}

static void assert_roundtrip(const struct authz_table *t)
{
    struct buf b;
    encode(t, &b);
    struct authz_table d;
    authz_table_init(&d);
    struct err e;
    assert_int_equal(authz_table_decode(&d, b.data, b.len, &e), 0);
    assert_same(t, &d);
    authz_table_free(&d);
    buf_close(&b);
}

/* Parse a JSON command (the engine's JSON -> MessagePack converter) into a change. */
static int parse(const char *json, struct authz_change *c, struct err *e)
{
    struct buf b;
    buf_init(&b);
    assert_int_equal(storage_json_to_value(json, strlen(json), &b, e), 0);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    assert_int_equal(msgpack_unpack((const char *)b.data, b.len, &off, &z, &o),
                     MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *op = node_map_get(&o, "op");
    char name[32] = "";
    if (op && op->type == MSGPACK_OBJECT_STR && op->via.str.size < sizeof name)
        memcpy(name, op->via.str.ptr, op->via.str.size);
    int rc = authz_change_parse(c, name, &o, e);
    msgpack_zone_destroy(&z);
    buf_close(&b);
    return rc;
}

/* Apply a JSON command to t; returns the code, *changed set. */
static int apply(struct authz_table *t, const char *json, bool *changed, struct err *e)
{
    struct authz_change c;
    int rc = parse(json, &c, e);
    if (rc)
        return rc;
    rc = authz_table_apply(t, &c, changed, e);
    authz_change_free(&c);
    return rc;
}

/* Apply, expecting an error code; the table must be byte-for-byte unchanged. */
static void apply_fails(struct authz_table *t, const char *json, int want, const char *msg_part)
{
    struct buf before;
    encode(t, &before);
    bool changed = true;
    struct err e;
    err_clear(&e);
    int rc = apply(t, json, &changed, &e);
    if (rc != want)
        fail_msg("%s: got %s (%s), want %s", json, err_name(rc), e.msg, err_name(want));
    assert_false(changed && rc == 0);
    if (msg_part && strstr(e.msg, msg_part) == NULL)
        fail_msg("%s: message '%s' lacks '%s'", json, e.msg, msg_part);
    struct buf after;
    encode(t, &after);
    assert_int_equal(before.len, after.len);
    assert_memory_equal(before.data, after.data, before.len);
    buf_close(&before);
    buf_close(&after);
}

static const struct authz_entry *named(const struct authz_table *t, const char *name)
{
    return authz_table_named(t, name, strlen(name));
}

static enum authz_perm right(const struct authz_table *t, const char *key, const char *branch)
{
    const struct authz_entry *e = named(t, key);
    assert_non_null(e);
    return authz_entry_right(e, branch, strlen(branch));
}

static const char demo[] = "# comment line\n"
                           "root-secret   rw    *\n"
                           "reader-secret r     *            reader\n"
                           "agent-secret  rw    agent-*,tmp-* agent\n"
                           "boss-secret   admin team/*        boss   # trailing comment\n";

/* ---- the key file -------------------------------------------------------------------------- */

static void test_auth_load_modes_names_and_comments(void **state)
{
    (void)state;
    struct auth a;
    struct err e;
    assert_int_equal(load(demo, &a, &e), 0);
    assert_int_equal(a.nkeys, 4);
    assert_string_equal(a.keys[0].key, "root-secret");
    assert_true(a.keys[0].write && !a.keys[0].admin && a.keys[0].name == NULL);
    assert_string_equal(a.keys[1].name, "reader");
    assert_false(a.keys[1].write);
    assert_int_equal(a.keys[2].npatterns, 2);
    assert_string_equal(a.keys[2].patterns[1], "tmp-*");
    assert_true(a.keys[3].admin && a.keys[3].write);
    assert_non_null(auth_find(&a, "agent-secret", 12));
    assert_null(auth_find(&a, "agent-secre", 11));
    auth_free(&a);
}

static void test_auth_load_bad_lines(void **state)
{
    (void)state;
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"k x *\n", "expected"},
        {"k rw\n", "expected"},
        {"k rw * name extra\n", "expected"},
        {"k rw a,,b\n", "bad pattern list"},
        {"k rw * bad/name\n", "invalid key name"},
        {"k rw *\nk r *\n", "duplicate key"},
        {"# nothing\n\n", "holds no keys"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct auth a = {(void *)1, 7};
        struct err e;
        assert_int_equal(load(bad[i].text, &a, &e), STRATA_INVALID_ARGUMENT);
        assert_non_null(strstr(e.msg, bad[i].msg));
        assert_null(a.keys);
        assert_int_equal(a.nkeys, 0);
    }
    struct auth a;
    struct err e;
    assert_int_equal(auth_load("/nonexistent/keys", &a, &e), STRATA_INVALID_ARGUMENT);
}

static void test_table_from_file_maps_modes(void **state)
{
    (void)state;
    struct authz_table t;
    table_of(demo, &t);
    assert_int_equal(t.nkeys, 4);
    assert_int_equal(t.version, 0);
    /* Generated names for keys without a NAME column, by line order. */
    assert_string_equal(t.keys[0].name, "key-1");
    assert_true(t.keys[0].node);
    assert_false(t.keys[1].node);
    /* rw on '*' first = admin (what it allowed before the table); rw = write; r = read. */
    assert_true(authz_entry_cluster_admin(&t.keys[0]));
    assert_int_equal(right(&t, "key-1", "anything"), AUTHZ_ADMIN);
    assert_int_equal(right(&t, "reader", "main"), AUTHZ_READ);
    assert_int_equal(right(&t, "agent", "agent-7"), AUTHZ_WRITE);
    assert_int_equal(right(&t, "agent", "tmp-x"), AUTHZ_WRITE);
    assert_int_equal(right(&t, "agent", "main"), AUTHZ_NONE);
    assert_false(authz_entry_cluster_admin(named(&t, "agent")));
    /* admin on a narrower pattern: admin rights there, no cluster admin. */
    assert_int_equal(right(&t, "boss", "team/a"), AUTHZ_ADMIN);
    assert_false(authz_entry_cluster_admin(named(&t, "boss")));
    /* Digests are SHA-256 of the key (FIPS 180-2 test vector for "abc"). */
    uint8_t d[AUTHZ_DIGEST_LEN];
    authz_digest("abc", 3, d);
    static const uint8_t abc[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                  0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                  0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    assert_memory_equal(d, abc, sizeof abc);
    authz_digest("agent-secret", 12, d);
    assert_ptr_equal(authz_table_find(&t, d), named(&t, "agent"));
    authz_digest("agent-secreT", 12, d);
    assert_null(authz_table_find(&t, d));
    /* No key is kept in clear: the encoded table does not contain any secret. */
    struct buf b;
    encode(&t, &b);
    assert_null(memmem(b.data, b.len, "secret", 6));
    buf_close(&b);
    authz_table_free(&t);
    /* The first key is the nodes' only if it can do a node's work (admin on '*'). */
    table_of("weak-first-key r *\nroot-key rw *\n", &t);
    assert_false(t.keys[0].node);
    assert_false(t.keys[1].node);
    assert_true(authz_entry_cluster_admin(&t.keys[1]));
    authz_table_free(&t);
    /* Two keys named alike. */
    struct auth a;
    struct err e;
    assert_int_equal(load("a0 rw * x\nb0 r * x\n", &a, &e), 0);
    authz_table_init(&t);
    assert_int_equal(authz_table_from_file(&t, &a, &e), STRATA_INVALID_ARGUMENT);
    assert_int_equal(t.nkeys, 0);
    auth_free(&a);
}

/* ---- checks -------------------------------------------------------------------------------- */

static void test_check_read_write_admin_on_patterns(void **state)
{
    (void)state;
    struct authz_table t;
    table_of(demo, &t);
    struct err e;
    const struct authz_entry *agent = named(&t, "agent"), *reader = named(&t, "reader"),
                             *boss = named(&t, "boss"), *root = named(&t, "key-1");
    const char *two[] = {"agent-1", "tmp-2"};
    size_t two_l[] = {7, 5};
    assert_int_equal(authz_entry_check(agent, AUTHZ_WRITE, two, two_l, 2, &e), 0);
    assert_int_equal(authz_entry_check(agent, AUTHZ_READ, two, two_l, 2, &e), 0);
    const char *mixed[] = {"agent-1", "main"};
    size_t mixed_l[] = {7, 4};
    assert_int_equal(authz_entry_check(agent, AUTHZ_READ, mixed, mixed_l, 2, &e),
                     STRATA_PERMISSION_DENIED);
    assert_non_null(strstr(e.msg, "'agent' has no read access to branch 'main'"));
    assert_int_equal(authz_entry_check(reader, AUTHZ_WRITE, two, two_l, 1, &e),
                     STRATA_PERMISSION_DENIED);
    assert_non_null(strstr(e.msg, "may only read"));
    /* admin >= write >= read on its patterns. */
    const char *tb[] = {"team/x"};
    size_t tb_l[] = {6};
    assert_int_equal(authz_entry_check(boss, AUTHZ_WRITE, tb, tb_l, 1, &e), 0);
    assert_int_equal(authz_entry_check(boss, AUTHZ_READ, tb, tb_l, 1, &e), 0);
    assert_int_equal(authz_entry_check(boss, AUTHZ_READ, two, two_l, 1, &e),
                     STRATA_PERMISSION_DENIED);
    /* Cluster admin: admin on the literal '*' only. */
    assert_int_equal(authz_entry_check(root, AUTHZ_ADMIN, NULL, NULL, 0, &e), 0);
    assert_int_equal(authz_entry_check(boss, AUTHZ_ADMIN, NULL, NULL, 0, &e),
                     STRATA_PERMISSION_DENIED);
    assert_non_null(strstr(e.msg, "admin grant on '*'"));
    assert_int_equal(authz_entry_check(reader, AUTHZ_NONE, NULL, NULL, 0, &e), 0);
    /* A name too long for any branch, or with a NUL inside, gets no rights: a cut copy
     * could match what the whole name does not. */
    char longname[600];
    memset(longname, 'a', sizeof longname);
    memcpy(longname, "agent-", 6);
    const char *ln[] = {longname, "agent-1\0x"};
    size_t ln_l[] = {sizeof longname, 9};
    assert_int_equal(authz_entry_right(agent, ln[0], ln_l[0]), AUTHZ_NONE);
    assert_int_equal(authz_entry_right(agent, ln[0], 300), AUTHZ_WRITE);
    assert_int_equal(authz_entry_check(agent, AUTHZ_READ, ln, ln_l, 1, &e),
                     STRATA_PERMISSION_DENIED);
    assert_int_equal(authz_entry_check(agent, AUTHZ_READ, ln + 1, ln_l + 1, 1, &e),
                     STRATA_PERMISSION_DENIED);
    authz_table_free(&t);
}

/* ---- codec --------------------------------------------------------------------------------- */

static void test_encode_decode_roundtrip(void **state)
{
    (void)state;
    struct authz_table t;
    table_of(demo, &t);
    assert_roundtrip(&t);
    /* Empty table. */
    struct authz_table empty;
    authz_table_init(&empty);
    assert_roundtrip(&empty);
    /* Many keys. */
    struct authz_table big;
    authz_table_init(&big);
    bool changed;
    struct err e;
    assert_int_equal(apply(&big,
                           "{\"op\":\"auth.add\",\"name\":\"k0\",\"key\":\"k0-0123456789abcdef\","
                           "\"perm\":\"admin\",\"patterns\":[\"*\"]}",
                           &changed, &e),
                     0);
    for (int i = 1; i < 1000; i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"op\":\"auth.add\",\"name\":\"k%d\",\"key\":\"key-%d-0123456789abcdef\","
                 "\"grants\":[{\"perm\":\"read\",\"patterns\":[\"*\"]},{\"perm\":\"write\","
                 "\"patterns\":[\"a-%d-*\",\"b/*\"]}]}",
                 i, i, i);
        assert_int_equal(apply(&big, json, &changed, &e), 0);
    }
    assert_int_equal(big.nkeys, 1000);
    assert_roundtrip(&big);
    /* Decoding keeps the caller's version (it is the cell's counter, not in the bytes). */
    struct buf b;
    encode(&t, &b);
    struct authz_table d;
    authz_table_init(&d);
    d.version = 42;
    assert_int_equal(authz_table_decode(&d, b.data, b.len, &e), 0);
    assert_int_equal(d.version, 42);
    assert_int_equal(d.nkeys, 4);
    buf_close(&b);
    authz_table_free(&d);
    authz_table_free(&big);
    authz_table_free(&t);
}

/* Build a table map from parts; NULL `key` leaves that entry field out. */
static void pack_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    msgpack_pack_str(pk, strlen(k));
    msgpack_pack_str_body(pk, k, strlen(k));
    msgpack_pack_str(pk, strlen(v));
    msgpack_pack_str_body(pk, v, strlen(v));
}

static int buf_w(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

static void test_decode_rejects_bad_tables(void **state)
{
    (void)state;
    /* Each case: a JSON table (bytes as JSON strings: the converter has no bin, so the
     * digest is patched in below where the case needs a valid one). */
    static const struct {
        const char *json;
        const char *msg;
    } bad[] = {
        {"[]", "not a map"},
        {"{\"keys\":[]}", "'v' must be 1"},
        {"{\"v\":2,\"keys\":[]}", "'v' must be 1"},
        {"{\"v\":\"1\",\"keys\":[]}", "'v' must be 1"},
        {"{\"v\":1}", "'keys' must be"},
        {"{\"v\":1,\"keys\":{}}", "'keys' must be"},
        {"{\"v\":1,\"keys\":[1]}", "key 0 is not a map"},
        {"{\"v\":1,\"keys\":[{\"digest\":1,\"grants\":[]}]}", "'name'"},
        {"{\"v\":1,\"keys\":[{\"name\":\"a b\",\"grants\":[]}]}", "'name'"},
        {"{\"v\":1,\"keys\":[{\"name\":\"a\",\"digest\":\"short\",\"grants\":[]}]}", "'digest'"},
    };
    struct authz_table t;
    authz_table_init(&t);
    struct err e;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct buf b;
        buf_init(&b);
        assert_int_equal(storage_json_to_value(bad[i].json, strlen(bad[i].json), &b, &e), 0);
        t.version = 9;
        int rc = authz_table_decode(&t, b.data, b.len, &e);
        if (rc != STRATA_PROTOCOL_ERROR || strstr(e.msg, bad[i].msg) == NULL)
            fail_msg("%s: %s %s", bad[i].json, err_name(rc), e.msg);
        assert_int_equal(t.nkeys, 0);
        assert_int_equal(t.version, 9);
        buf_close(&b);
    }
    /* Entries with a valid digest and one bad field each. */
    static const struct {
        const char *node;   /* "t", "f", "x" (not a bool) or NULL */
        const char *grants; /* JSON of the grants array */
        int twice;          /* 1: the same entry twice; 2: twice, names differ */
        const char *msg;
    } ents[] = {
        {NULL, "{}", 0, "'grants'"},
        {NULL,
         "[{\"perm\":\"read\",\"patterns\":[\"*\"]},{\"perm\":\"write\",\"patterns\":[\"*\"]},"
         "{\"perm\":\"admin\",\"patterns\":[\"*\"]},{\"perm\":\"read\",\"patterns\":[\"*\"]}]",
         0, "'grants'"},
        {NULL, "[1]", 0, "not a map"},
        {NULL, "[{\"perm\":\"root\",\"patterns\":[\"*\"]}]", 0, "unknown permission"},
        {NULL, "[{\"perm\":7,\"patterns\":[\"*\"]}]", 0, "'perm'"},
        {NULL, "[{\"patterns\":[\"*\"]}]", 0, "'perm'"},
        {NULL, "[{\"perm\":\"read\"}]", 0, "'patterns'"},
        {NULL, "[{\"perm\":\"read\",\"patterns\":[]}]", 0, "'patterns'"},
        {NULL, "[{\"perm\":\"read\",\"patterns\":[\"\"]}]", 0, "not a valid pattern"},
        {NULL, "[{\"perm\":\"read\",\"patterns\":[\"a,b\"]}]", 0, "not a valid pattern"},
        {NULL, "[{\"perm\":\"read\",\"patterns\":[\"a b\"]}]", 0, "not a valid pattern"},
        {NULL, "[{\"perm\":\"read\",\"patterns\":[3]}]", 0, "not a valid pattern"},
        {NULL, "[{\"perm\":\"read\",\"patterns\":[\"a\",\"a\"]}]", 0, "repeated"},
        {NULL,
         "[{\"perm\":\"read\",\"patterns\":[\"a\"]},{\"perm\":\"read\",\"patterns\":[\"b\"]}]", 0,
         "two grants"},
        {"x", "[]", 0, "'node'"},
        {"t", "[{\"perm\":\"write\",\"patterns\":[\"*\"]}]", 0, "nodes' key"},
        {NULL, "[]", 1, "the name is repeated"},
        {NULL, "[]", 2, "the digest is repeated"},
    };
    for (size_t i = 0; i < sizeof ents / sizeof ents[0]; i++) {
        struct buf b;
        buf_init(&b);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, buf_w);
        msgpack_pack_map(&pk, 2);
        msgpack_pack_str(&pk, 1);
        msgpack_pack_str_body(&pk, "v", 1);
        msgpack_pack_uint32(&pk, 1);
        msgpack_pack_str(&pk, 4);
        msgpack_pack_str_body(&pk, "keys", 4);
        int copies = ents[i].twice ? 2 : 1;
        msgpack_pack_array(&pk, (size_t)copies);
        for (int k = 0; k < copies; k++) {
            msgpack_pack_map(&pk, ents[i].node ? 4 : 3);
            pack_kv_str(&pk, "name", ents[i].twice == 2 && k == 1 ? "m" : "n");
            msgpack_pack_str(&pk, 6);
            msgpack_pack_str_body(&pk, "digest", 6);
            uint8_t d[32];
            memset(d, 0xab, sizeof d);
            msgpack_pack_bin(&pk, 32);
            msgpack_pack_bin_body(&pk, d, 32);
            if (ents[i].node) {
                msgpack_pack_str(&pk, 4);
                msgpack_pack_str_body(&pk, "node", 4);
                if (ents[i].node[0] == 'x')
                    msgpack_pack_uint32(&pk, 1);
                else if (ents[i].node[0] == 't')
                    msgpack_pack_true(&pk);
                else
                    msgpack_pack_false(&pk);
            }
            msgpack_pack_str(&pk, 6);
            msgpack_pack_str_body(&pk, "grants", 6);
            struct buf g;
            buf_init(&g);
            assert_int_equal(storage_json_to_value(ents[i].grants, strlen(ents[i].grants), &g, &e),
                             0);
            assert_int_equal(buf_append(&b, g.data, g.len), 0);
            buf_close(&g);
        }
        int rc = authz_table_decode(&t, b.data, b.len, &e);
        if (rc != STRATA_PROTOCOL_ERROR || strstr(e.msg, ents[i].msg) == NULL)
            fail_msg("entry case %zu: %s %s", i, err_name(rc), e.msg);
        assert_int_equal(t.nkeys, 0);
        buf_close(&b);
    }
    struct authz_table ok;
    table_of("same-secret-0 rw * a\n", &ok);
    struct buf b;
    encode(&ok, &b);
    authz_table_free(&ok);
    /* Trailing bytes after the value. */
    assert_int_equal(buf_append(&b, "\xc0", 1), 0);
    assert_int_equal(authz_table_decode(&t, b.data, b.len, &e), STRATA_PROTOCOL_ERROR);
    assert_non_null(strstr(e.msg, "exactly one"));
    buf_close(&b);
    authz_table_free(&t);
}

static void test_decode_every_prefix_and_bit_flips(void **state)
{
    (void)state;
    struct authz_table src;
    table_of(demo, &src);
    struct buf b;
    encode(&src, &b);
    struct authz_table t;
    authz_table_init(&t);
    struct err e;
    for (size_t len = 0; len < b.len; len++) {
        assert_int_equal(authz_table_decode(&t, b.data, len, &e), STRATA_PROTOCOL_ERROR);
        assert_int_equal(t.nkeys, 0);
    }
    uint8_t *c = malloc(b.len);
    assert_non_null(c);
    rng_state = 0x9e3779b97f4a7c15ull;
    int accepted = 0;
    for (int it = 0; it < 30000; it++) {
        memcpy(c, b.data, b.len);
        for (int k = 0, flips = 1 + (int)(rnd() % 3); k < flips; k++) {
            uint64_t r = rnd();
            c[(r >> 3) % b.len] ^= (uint8_t)(1u << (r & 7));
        }
        for (size_t i = 0; i < b.len; i++) /* 32-bit container sizes: slow under ASan */
            if (c[i] == 0xdd || c[i] == 0xdf)
                c[i] -= 1;
        int rc = authz_table_decode(&t, c, b.len, &e);
        if (rc == 0) {
            accepted++;
            assert_roundtrip(&t); /* whatever decodes is a valid table */
        } else {
            assert_int_equal(rc, STRATA_PROTOCOL_ERROR);
            assert_int_equal(t.nkeys, 0);
        }
    }
    assert_true(accepted > 0); /* flips inside a digest or a name keep it valid */
    free(c);
    buf_close(&b);
    authz_table_free(&t);
    authz_table_free(&src);
}

static void test_decode_and_encode_out_of_memory(void **state)
{
    (void)state;
    struct authz_table src;
    table_of(demo, &src);
    struct buf b;
    encode(&src, &b);
    struct authz_table t;
    authz_table_init(&t);
    struct err e;
    int failures = 0;
    for (long k = 1; k < 200; k++) {
        sm_fail_after(k);
        int rc = authz_table_decode(&t, b.data, b.len, &e);
        sm_fail_after(0);
        if (rc == 0) {
            assert_same(&t, &src);
            break;
        }
        failures++;
        assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
        assert_int_equal(t.nkeys, 0);
    }
    assert_true(failures > 3);
    /* Encoding into a buffer that cannot grow leaves it as it was. */
    struct buf out;
    buf_init(&out);
    assert_int_equal(buf_append(&out, "xy", 2), 0);
    sm_fail_after(1);
    int rc = authz_table_encode(&src, &out);
    sm_fail_after(0);
    assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
    assert_int_equal(out.len, 2);
    buf_close(&out);
    /* Copy under failure: dst empty, no leak (ASan). */
    for (long k = 1; k < 40; k++) {
        sm_fail_after(k);
        rc = authz_table_copy(&t, &src);
        sm_fail_after(0);
        if (rc == 0) {
            assert_same(&t, &src);
            break;
        }
        assert_int_equal(t.nkeys, 0);
    }
    buf_close(&b);
    authz_table_free(&t);
    authz_table_free(&src);
}

/* ---- changes ------------------------------------------------------------------------------- */

static void test_change_parse_bad_input(void **state)
{
    (void)state;
    static const struct {
        const char *json, *msg;
    } bad[] = {
        {"{\"op\":\"auth.add\",\"perm\":\"read\",\"patterns\":[\"*\"]}", "missing argument 'name'"},
        {"{\"op\":\"auth.add\",\"name\":7,\"perm\":\"read\",\"patterns\":[\"*\"]}",
         "'name' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a/b\",\"perm\":\"read\",\"patterns\":[\"*\"]}",
         "invalid key name"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"superuser\",\"patterns\":[\"*\"]}",
         "unknown permission 'superuser'"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"none\",\"patterns\":[\"*\"]}",
         "unknown permission 'none'"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"patterns\":[\"*\"]}", "missing argument 'perm'"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"read\"}", "'patterns' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"read\",\"patterns\":[]}",
         "'patterns' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"read\",\"patterns\":[\"\"]}",
         "empty pattern"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"read\",\"patterns\":\"*\"}",
         "'patterns' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"read\",\"patterns\":[1]}", "not a string"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"read\",\"patterns\":[\"a,b\"]}",
         "invalid pattern"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"key\":\"short\",\"perm\":\"read\",\"patterns\":[\"*"
         "\"]}",
         "argument 'key' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"key\":\"has space 0123456789\",\"perm\":\"read\","
         "\"patterns\":[\"*\"]}",
         "argument 'key' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"key\":\"0123456789abcdefgh\",\"generate\":true,"
         "\"perm\":\"read\",\"patterns\":[\"*\"]}",
         "not both"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"generate\":1,\"perm\":\"read\",\"patterns\":[\"*\"]"
         "}",
         "'generate' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"generate\":false,\"perm\":\"read\",\"patterns\":["
         "\"*\"]}",
         "give 'key', or 'generate': true"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"grants\":[],\"perm\":\"read\"}", "not both"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"grants\":[]}", "'grants' must be"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"grants\":[1]}", "grant 0 is not"},
        {"{\"op\":\"auth.add\",\"name\":\"a\",\"grants\":[{\"perm\":\"x\",\"patterns\":[\"*\"]}]}",
         "unknown permission"},
        {"{\"op\":\"auth.grant\",\"name\":\"a\",\"perm\":\"write\"}", "'patterns' must be"},
        {"{\"op\":\"auth.grant\",\"name\":\"a\",\"patterns\":[\"x\"]}", "missing argument 'perm'"},
        {"{\"op\":\"auth.revoke\",\"name\":\"a\"}", "needs 'perm', 'patterns' or both"},
        {"{\"op\":\"auth.revoke\",\"name\":\"a\",\"perm\":\"owner\"}", "unknown permission"},
        {"{\"op\":\"auth.revoke\",\"name\":\"a\",\"patterns\":[]}", "'patterns' must be"},
        {"{\"op\":\"auth.remove\"}", "missing argument 'name'"},
        {"{\"op\":\"auth.list\",\"name\":\"a\"}", "changes nothing"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct authz_change c;
        struct err e;
        err_clear(&e);
        int rc = parse(bad[i].json, &c, &e);
        if (rc != STRATA_INVALID_ARGUMENT || strstr(e.msg, bad[i].msg) == NULL)
            fail_msg("%s: %s '%s' (want '%s')", bad[i].json, err_name(rc), e.msg, bad[i].msg);
        assert_null(c.grants);
    }
    /* Good ones. */
    struct authz_change c;
    struct err e;
    assert_int_equal(
        parse("{\"op\":\"auth.add\",\"name\":\"a\",\"perm\":\"read\",\"patterns\":[\"*\"]}", &c,
              &e),
        0);
    assert_true(c.generate);
    authz_change_free(&c);
    assert_int_equal(
        parse("{\"op\":\"auth.revoke\",\"name\":\"a\",\"patterns\":[\"x\",\"x\"]}", &c, &e), 0);
    assert_int_equal(c.grants[0].perm, AUTHZ_NONE);
    assert_int_equal(c.grants[0].npatterns, 1); /* deduplicated */
    authz_change_free(&c);
}

static void test_apply_add_grant_revoke_remove(void **state)
{
    (void)state;
    struct authz_table t;
    table_of(demo, &t);
    bool changed;
    struct err e;
    /* add with a given key: its digest is stored, the key is findable by it */
    assert_int_equal(apply(&t,
                           "{\"op\":\"auth.add\",\"name\":\"ci\",\"key\":\"ci-key-0123456789\","
                           "\"grants\":[{\"perm\":\"read\",\"patterns\":[\"*\"]},"
                           "{\"perm\":\"write\",\"patterns\":[\"ci-*\"]}]}",
                           &changed, &e),
                     0);
    assert_true(changed);
    uint8_t d[AUTHZ_DIGEST_LEN];
    authz_digest("ci-key-0123456789", 17, d);
    assert_ptr_equal(authz_table_find(&t, d), named(&t, "ci"));
    assert_int_equal(right(&t, "ci", "main"), AUTHZ_READ);
    assert_int_equal(right(&t, "ci", "ci-7"), AUTHZ_WRITE);
    /* grant more; a repeated grant changes nothing */
    assert_int_equal(apply(&t,
                           "{\"op\":\"auth.grant\",\"name\":\"ci\",\"perm\":\"write\","
                           "\"patterns\":[\"main\"]}",
                           &changed, &e),
                     0);
    assert_true(changed);
    assert_int_equal(right(&t, "ci", "main"), AUTHZ_WRITE);
    assert_int_equal(apply(&t,
                           "{\"op\":\"auth.grant\",\"name\":\"ci\",\"perm\":\"write\","
                           "\"patterns\":[\"main\"]}",
                           &changed, &e),
                     0);
    assert_false(changed);
    /* revoke exactly what was granted */
    assert_int_equal(apply(&t,
                           "{\"op\":\"auth.revoke\",\"name\":\"ci\",\"perm\":\"write\","
                           "\"patterns\":[\"main\"]}",
                           &changed, &e),
                     0);
    assert_true(changed);
    assert_int_equal(right(&t, "ci", "main"), AUTHZ_READ);
    /* revoke a whole permission */
    assert_int_equal(
        apply(&t, "{\"op\":\"auth.revoke\",\"name\":\"ci\",\"perm\":\"write\"}", &changed, &e), 0);
    assert_int_equal(right(&t, "ci", "ci-1"), AUTHZ_READ);
    assert_int_equal(named(&t, "ci")->ngrants, 1);
    /* revoke a pattern from whichever permission holds it */
    assert_int_equal(
        apply(&t, "{\"op\":\"auth.revoke\",\"name\":\"ci\",\"patterns\":[\"*\"]}", &changed, &e),
        0);
    assert_int_equal(right(&t, "ci", "main"), AUTHZ_NONE);
    assert_int_equal(named(&t, "ci")->ngrants, 0);
    assert_roundtrip(&t);
    /* remove */
    assert_int_equal(apply(&t, "{\"op\":\"auth.remove\",\"name\":\"ci\"}", &changed, &e), 0);
    assert_null(named(&t, "ci"));
    assert_null(authz_table_find(&t, d));
    assert_int_equal(t.nkeys, 4);
    /* a second admin on '*' lets the first non-node admin go */
    assert_int_equal(apply(&t,
                           "{\"op\":\"auth.grant\",\"name\":\"boss\",\"perm\":\"admin\","
                           "\"patterns\":[\"*\"]}",
                           &changed, &e),
                     0);
    assert_true(authz_entry_cluster_admin(named(&t, "boss")));
    assert_int_equal(apply(&t, "{\"op\":\"auth.remove\",\"name\":\"boss\"}", &changed, &e), 0);
    authz_table_free(&t);
}

static void test_apply_errors_change_nothing(void **state)
{
    (void)state;
    struct authz_table t;
    table_of(demo, &t);
    apply_fails(&t,
                "{\"op\":\"auth.add\",\"name\":\"agent\",\"key\":\"another-key-0123456\","
                "\"perm\":\"read\",\"patterns\":[\"*\"]}",
                STRATA_ALREADY_EXISTS, "named 'agent' exists");
    /* The same secret under a new name (the file's key is agent-secret: 12 chars, so use
     * one added through the API). */
    bool changed;
    struct err e;
    assert_int_equal(apply(&t,
                           "{\"op\":\"auth.add\",\"name\":\"x1\",\"key\":\"dup-key-0123456789\","
                           "\"perm\":\"read\",\"patterns\":[\"*\"]}",
                           &changed, &e),
                     0);
    apply_fails(&t,
                "{\"op\":\"auth.add\",\"name\":\"x2\",\"key\":\"dup-key-0123456789\","
                "\"perm\":\"read\",\"patterns\":[\"*\"]}",
                STRATA_ALREADY_EXISTS, "already in the table (as 'x1')");
    apply_fails(&t,
                "{\"op\":\"auth.grant\",\"name\":\"ghost\",\"perm\":\"read\",\"patterns\":[\"*\"]}",
                STRATA_NOT_FOUND, "no API key is named 'ghost'");
    apply_fails(&t, "{\"op\":\"auth.remove\",\"name\":\"ghost\"}", STRATA_NOT_FOUND, "ghost");
    /* revoking something not granted: an error, and nothing else is revoked either */
    apply_fails(&t,
                "{\"op\":\"auth.revoke\",\"name\":\"agent\",\"perm\":\"write\","
                "\"patterns\":[\"agent-*\",\"typo-*\"]}",
                STRATA_NOT_FOUND, "no write grant on 'typo-*'");
    apply_fails(&t, "{\"op\":\"auth.revoke\",\"name\":\"agent\",\"perm\":\"admin\"}",
                STRATA_NOT_FOUND, "no admin grant");
    apply_fails(
        &t, "{\"op\":\"auth.revoke\",\"name\":\"reader\",\"perm\":\"read\",\"patterns\":[\"x\"]}",
        STRATA_NOT_FOUND, "no read grant on 'x'");
    /* the nodes' key stays, and stays admin on '*' */
    apply_fails(&t, "{\"op\":\"auth.remove\",\"name\":\"key-1\"}", STRATA_INVALID_ARGUMENT,
                "nodes' own key");
    apply_fails(&t, "{\"op\":\"auth.revoke\",\"name\":\"key-1\",\"perm\":\"admin\"}",
                STRATA_INVALID_ARGUMENT, "keeps admin on '*'");
    assert_int_equal(right(&t, "agent", "agent-1"), AUTHZ_WRITE);
    authz_table_free(&t);

    /* Without a nodes' key: the last admin on '*' cannot go. */
    authz_table_init(&t);
    assert_int_equal(apply(&t,
                           "{\"op\":\"auth.add\",\"name\":\"only\",\"key\":\"only-admin-0123456\","
                           "\"perm\":\"admin\",\"patterns\":[\"*\",\"x\"]}",
                           &changed, &e),
                     0);
    apply_fails(&t, "{\"op\":\"auth.remove\",\"name\":\"only\"}", STRATA_INVALID_ARGUMENT,
                "no API key with admin on '*'");
    apply_fails(&t, "{\"op\":\"auth.revoke\",\"name\":\"only\",\"patterns\":[\"*\"]}",
                STRATA_INVALID_ARGUMENT, "no API key with admin on '*'");
    assert_int_equal(
        apply(&t, "{\"op\":\"auth.revoke\",\"name\":\"only\",\"patterns\":[\"x\"]}", &changed, &e),
        0);
    authz_table_free(&t);
}

static void test_apply_out_of_memory_changes_nothing(void **state)
{
    (void)state;
    static const char *const ops[] = {
        "{\"op\":\"auth.add\",\"name\":\"n\",\"key\":\"n-key-0123456789ab\","
        "\"grants\":[{\"perm\":\"read\",\"patterns\":[\"*\"]},{\"perm\":\"write\",\"patterns\":["
        "\"n-*\"]}]}",
        "{\"op\":\"auth.grant\",\"name\":\"agent\",\"perm\":\"read\",\"patterns\":[\"main\","
        "\"dev\"]}",
        "{\"op\":\"auth.revoke\",\"name\":\"agent\",\"perm\":\"write\",\"patterns\":[\"tmp-*\"]}",
        "{\"op\":\"auth.remove\",\"name\":\"agent\"}",
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        struct authz_change c;
        struct err e;
        assert_int_equal(parse(ops[i], &c, &e), 0);
        int failures = 0;
        for (long k = 1; k < 400; k++) {
            struct authz_table t;
            table_of(demo, &t);
            struct buf before;
            encode(&t, &before);
            bool changed = true;
            sm_fail_after(k);
            int rc = authz_table_apply(&t, &c, &changed, &e);
            sm_fail_after(0);
            if (rc == 0) {
                assert_true(changed);
                authz_table_free(&t);
                buf_close(&before);
                break;
            }
            failures++;
            assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
            assert_false(changed);
            struct buf after;
            encode(&t, &after);
            assert_int_equal(before.len, after.len);
            assert_memory_equal(before.data, after.data, before.len);
            buf_close(&after);
            buf_close(&before);
            authz_table_free(&t);
        }
        assert_true(failures > 0);
        authz_change_free(&c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_load_modes_names_and_comments),
        cmocka_unit_test(test_auth_load_bad_lines),
        cmocka_unit_test(test_table_from_file_maps_modes),
        cmocka_unit_test(test_check_read_write_admin_on_patterns),
        cmocka_unit_test(test_encode_decode_roundtrip),
        cmocka_unit_test(test_decode_rejects_bad_tables),
        cmocka_unit_test(test_decode_every_prefix_and_bit_flips),
        cmocka_unit_test(test_decode_and_encode_out_of_memory),
        cmocka_unit_test(test_change_parse_bad_input),
        cmocka_unit_test(test_apply_add_grant_revoke_remove),
        cmocka_unit_test(test_apply_errors_change_nothing),
        cmocka_unit_test(test_apply_out_of_memory_changes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
