/* sharding/placement: the MessagePack form and its validating decoder (including hostile
 * input: wrong types, broken order and references, every prefix, random bit flips). The
 * layout, lookups and changes: test_placement_ops.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_placement.h"

/* Under ASan a failed huge allocation aborts by default; msgpack-c allocates a
 * container's declared element count up front, so garbage may ask for gigabytes. The
 * decoder turns that NULL into PROTOCOL_ERROR, which is what these tests check. Only read
 * by ASan builds; ASAN_OPTIONS from the environment still wins. */
const char *__asan_default_options(void) __attribute__((used));
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* ---- a table spec packed with msgpack-c, for hand-made (and broken) encodings ---------- */

static int sink(void *data, const char *s, size_t len)
{
    return buf_append(data, s, len) ? -1 : 0;
}

/* Value kinds a field can be replaced by. */
enum vk { V_UINT = 1, V_NEG, V_STR, V_NIL, V_BOOL, V_FLOAT, V_ARRAY, V_MAP, V_BIN, V_EXT };
#define V_COUNT 10

struct tnode {
    uint64_t id;
    const char *addr;
    size_t alen; /* 0: strlen */
    uint64_t state;
};
struct tshard {
    uint64_t id, epoch;
    size_t n;
    uint64_t reps[PL_MAX_REPLICAS + 2];
};
struct tbranch {
    const char *name;
    size_t len; /* 0: strlen */
    uint64_t shard, epoch;
};

struct spec {
    uint64_t v, rf;
    size_t nnodes, nshards, nbranches;
    struct tnode nodes[PL_MAX_NODES + 2];
    struct tshard shards[PL_MAX_SHARDS + 2];
    struct tbranch branches[8];
    const char *wrong; /* a field path ("nodes[0].id") whose value becomes wrong_kind */
    enum vk wrong_kind;
    const char *omit;  /* a top-level key left out */
    const char *dup;   /* a top-level key written twice */
    const char *extra; /* an unknown top-level key */
    size_t node_arity; /* 0: 3 */
};

static struct spec spec;

/* Three nodes (the third draining), two shards, three branches: valid as is. */
static void spec_default(void)
{
    memset(&spec, 0, sizeof spec);
    spec.v = 1;
    spec.rf = 3;
    spec.nnodes = 3;
    spec.nodes[0] = (struct tnode){1, "127.0.0.1:7001", 0, 1};
    spec.nodes[1] = (struct tnode){2, "127.0.0.2:7001", 0, 1};
    spec.nodes[2] = (struct tnode){3, "127.0.0.3:7001", 0, 2};
    spec.nshards = 2;
    spec.shards[0] = (struct tshard){1, 1, 3, {1, 2, 3}};
    spec.shards[1] = (struct tshard){2, 5, 2, {2, 3}};
    spec.nbranches = 3;
    spec.branches[0] = (struct tbranch){"a", 0, 2, 1};
    spec.branches[1] = (struct tbranch){"default", 0, 1, 1};
    spec.branches[2] = (struct tbranch){"zz", 0, 2, 7};
}

static void pack_kind(msgpack_packer *pk, enum vk k)
{
    switch (k) {
    case V_UINT:
        msgpack_pack_uint64(pk, 7);
        break;
    case V_NEG:
        msgpack_pack_int64(pk, -3);
        break;
    case V_STR:
        msgpack_pack_str_with_body(pk, "x", 1);
        break;
    case V_NIL:
        msgpack_pack_nil(pk);
        break;
    case V_BOOL:
        msgpack_pack_true(pk);
        break;
    case V_FLOAT:
        msgpack_pack_double(pk, 1.5);
        break;
    case V_ARRAY:
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint8(pk, 1);
        break;
    case V_MAP:
        msgpack_pack_map(pk, 1);
        msgpack_pack_str_with_body(pk, "k", 1);
        msgpack_pack_uint8(pk, 1);
        break;
    case V_BIN:
        msgpack_pack_bin_with_body(pk, "ab", 2);
        break;
    case V_EXT:
        msgpack_pack_ext_with_body(pk, "ab", 2, 5);
        break;
    }
}

/* Packs the wrong value instead when `path` is the spec's wrong field. */
static bool wrong_at(msgpack_packer *pk, const char *path)
{
    if (spec.wrong == NULL || strcmp(spec.wrong, path) != 0)
        return false;
    pack_kind(pk, spec.wrong_kind);
    return true;
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str_with_body(pk, k, strlen(k));
}

static void pack_value(msgpack_packer *pk, const char *key)
{
    char path[64];
    if (wrong_at(pk, key))
        return;
    if (strcmp(key, "v") == 0) {
        msgpack_pack_uint64(pk, spec.v);
    } else if (strcmp(key, "rf") == 0) {
        msgpack_pack_uint64(pk, spec.rf);
    } else if (strcmp(key, "nodes") == 0) {
        msgpack_pack_array(pk, spec.nnodes);
        for (size_t i = 0; i < spec.nnodes; i++) {
            const struct tnode *n = &spec.nodes[i];
            snprintf(path, sizeof path, "nodes[%zu]", i);
            if (wrong_at(pk, path))
                continue;
            size_t arity = spec.node_arity ? spec.node_arity : 3;
            msgpack_pack_array(pk, arity);
            snprintf(path, sizeof path, "nodes[%zu].id", i);
            if (!wrong_at(pk, path))
                msgpack_pack_uint64(pk, n->id);
            if (arity < 2)
                continue;
            snprintf(path, sizeof path, "nodes[%zu].address", i);
            if (!wrong_at(pk, path))
                msgpack_pack_str_with_body(pk, n->addr, n->alen ? n->alen : strlen(n->addr));
            if (arity < 3)
                continue;
            snprintf(path, sizeof path, "nodes[%zu].state", i);
            if (!wrong_at(pk, path))
                msgpack_pack_uint64(pk, n->state);
            for (size_t k = 3; k < arity; k++)
                msgpack_pack_uint8(pk, 0);
        }
    } else if (strcmp(key, "shards") == 0) {
        msgpack_pack_array(pk, spec.nshards);
        for (size_t i = 0; i < spec.nshards; i++) {
            const struct tshard *s = &spec.shards[i];
            snprintf(path, sizeof path, "shards[%zu]", i);
            if (wrong_at(pk, path))
                continue;
            msgpack_pack_array(pk, 3);
            snprintf(path, sizeof path, "shards[%zu].id", i);
            if (!wrong_at(pk, path))
                msgpack_pack_uint64(pk, s->id);
            snprintf(path, sizeof path, "shards[%zu].epoch", i);
            if (!wrong_at(pk, path))
                msgpack_pack_uint64(pk, s->epoch);
            snprintf(path, sizeof path, "shards[%zu].replicas", i);
            if (wrong_at(pk, path))
                continue;
            msgpack_pack_array(pk, s->n);
            for (size_t r = 0; r < s->n; r++) {
                snprintf(path, sizeof path, "shards[%zu].replicas[%zu]", i, r);
                if (!wrong_at(pk, path))
                    msgpack_pack_uint64(pk, s->reps[r]);
            }
        }
    } else if (strcmp(key, "branches") == 0) {
        msgpack_pack_array(pk, spec.nbranches);
        for (size_t i = 0; i < spec.nbranches; i++) {
            const struct tbranch *b = &spec.branches[i];
            snprintf(path, sizeof path, "branches[%zu]", i);
            if (wrong_at(pk, path))
                continue;
            msgpack_pack_array(pk, 3);
            snprintf(path, sizeof path, "branches[%zu].name", i);
            if (!wrong_at(pk, path))
                msgpack_pack_str_with_body(pk, b->name, b->len ? b->len : strlen(b->name));
            snprintf(path, sizeof path, "branches[%zu].shard", i);
            if (!wrong_at(pk, path))
                msgpack_pack_uint64(pk, b->shard);
            snprintf(path, sizeof path, "branches[%zu].epoch", i);
            if (!wrong_at(pk, path))
                msgpack_pack_uint64(pk, b->epoch);
        }
    } else {
        msgpack_pack_uint8(pk, 1); /* the extra key's value */
    }
}

static void pack_spec(struct buf *b)
{
    static const char *const keys[] = {"v", "rf", "nodes", "shards", "branches"};
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, sink);
    if (wrong_at(&pk, "root"))
        return;
    size_t n = 5 - (spec.omit != NULL) + (spec.dup != NULL) + (spec.extra != NULL);
    msgpack_pack_map(&pk, n);
    /* Keys in an unusual order: the decoder must not depend on the encoder's order. */
    for (int i = 4; i >= 0; i--) {
        if (spec.omit != NULL && strcmp(spec.omit, keys[i]) == 0)
            continue;
        pack_key(&pk, keys[i]);
        pack_value(&pk, keys[i]);
        if (spec.dup != NULL && strcmp(spec.dup, keys[i]) == 0) {
            pack_key(&pk, keys[i]);
            pack_value(&pk, keys[i]);
        }
    }
    if (spec.extra != NULL) {
        pack_key(&pk, spec.extra);
        pack_value(&pk, spec.extra);
    }
}

/* Decode the current spec: 0 and a valid table, or the error (and an empty table). */
static int decode_spec(struct placement *p, struct err *e)
{
    struct buf b;
    buf_init(&b);
    pack_spec(&b);
    int rc = placement_decode(p, b.data, b.len, e);
    buf_close(&b);
    if (rc == 0)
        assert_valid(p);
    else
        assert_true(is_empty(p));
    return rc;
}

static void expect_spec_error(const char *needle)
{
    struct placement p;
    struct err e;
    placement_init(&p);
    expect_error(decode_spec(&p, &e), &e, STRATA_PROTOCOL_ERROR, needle);
    placement_free(&p);
}

/* ---- encode / decode -------------------------------------------------------------------- */

static void test_encode_exact_bytes(void **state)
{
    (void)state;
    /* One node, one shard: the whole encoding, byte for byte (the documented form). */
    struct pl_node m;
    memset(&m, 0, sizeof m);
    m.id = 1;
    strcpy(m.address, "h:1");
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(placement_initial(&p, &m, 1, 1, 3, &e), 0);
    struct buf b;
    buf_init(&b);
    assert_int_equal(placement_encode(&p, &b), 0);
    /* clang-format off */
    const uint8_t want[] = {
        0x85,                                            /* map of 5 */
        0xa1, 'v', 0x01,                                 /* "v": 1 */
        0xa2, 'r', 'f', 0x03,                            /* "rf": 3 */
        0xa5, 'n', 'o', 'd', 'e', 's',                   /* "nodes": */
        0x91, 0x93, 0x01, 0xa3, 'h', ':', '1', 0x01,     /*   [[1, "h:1", 1]] */
        0xa6, 's', 'h', 'a', 'r', 'd', 's',              /* "shards": */
        0x91, 0x93, 0x01, 0x01, 0x91, 0x01,              /*   [[1, 1, [1]]] */
        0xa8, 'b', 'r', 'a', 'n', 'c', 'h', 'e', 's',    /* "branches": */
        0x91, 0x93, 0xa7, 'd', 'e', 'f', 'a', 'u', 'l', 't', 0x01, 0x01, /* [["default", 1, 1]] */
    };
    /* clang-format on */
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    buf_close(&b);
    placement_free(&p);
}

static void test_encode_appends_and_out_of_memory(void **state)
{
    (void)state;
    struct placement p;
    make_three(&p);
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "xy", 2), 0);
    assert_int_equal(placement_encode(&p, &b), 0);
    assert_memory_equal(b.data, "xy", 2);
    struct placement q;
    struct err e;
    placement_init(&q);
    assert_int_equal(placement_decode(&q, b.data + 2, b.len - 2, &e), 0);
    assert_tables_equal(&p, &q);

    /* A failed encode leaves the buffer as it was. */
    struct buf c;
    buf_init(&c);
    sm_fail_after(1);
    assert_int_equal(placement_encode(&p, &c), STRATA_OUT_OF_MEMORY);
    sm_fail_after(0);
    assert_int_equal(c.len, 0);
    size_t before = b.len;
    for (long k = 1; k < 4; k++) {
        struct buf d;
        buf_init(&d);
        assert_int_equal(buf_reserve(&d, 1), 0);
        sm_fail_after(k);
        int rc = placement_encode(&p, &d);
        sm_fail_after(0);
        assert_true(rc == 0 || rc == STRATA_OUT_OF_MEMORY);
        if (rc)
            assert_int_equal(d.len, 0);
        buf_close(&d);
    }
    assert_int_equal(b.len, before);
    buf_close(&c);
    buf_close(&b);
    placement_free(&q);
    placement_free(&p);
}

static void test_decode_roundtrip_after_changes(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_add_node(&p, 7, "127.0.0.7:7000", &e), 0);
    assert_int_equal(placement_drain_node(&p, 2, &e), 0);
    const uint64_t reps[] = {7, 1, 3};
    assert_int_equal(placement_set_replicas(&p, 2, reps, 3, &e), 0);
    assert_int_equal(placement_assign(&p, "zeta", 4, 3, &e), 0);
    assert_int_equal(placement_assign(&p, "alpha", 5, 2, &e), 0);
    assert_int_equal(placement_assign(&p, "\xff\x01", 2, 2, &e), 0);
    assert_int_equal(placement_move(&p, "alpha", 5, 3, &e), 0);
    assert_valid(&p);
    assert_roundtrip(&p);

    /* Decode never keeps the caller's epoch: it is not part of the value. */
    struct buf b;
    buf_init(&b);
    assert_int_equal(placement_encode(&p, &b), 0);
    struct placement q;
    make_three(&q);
    q.epoch = 42;
    assert_int_equal(placement_decode(&q, b.data, b.len, &e), 0);
    assert_int_equal(q.epoch, 0);
    assert_tables_equal(&p, &q);
    /* Re-encoding the decoded table gives the same bytes. */
    struct buf c;
    buf_init(&c);
    assert_int_equal(placement_encode(&q, &c), 0);
    assert_int_equal(b.len, c.len);
    assert_memory_equal(b.data, c.data, b.len);
    buf_close(&c);
    buf_close(&b);
    placement_free(&q);
    placement_free(&p);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_decode_roundtrip_100k_branches(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    struct pl_node m[5];
    for (int i = 0; i < 5; i++)
        set_member(&m[i], (uint64_t)i + 1);
    placement_init(&p);
    assert_int_equal(placement_initial(&p, m, 5, 16, 3, &e), 0);
    char name[32];
    /* In name order, so each assign appends; round robin over the shards. */
    for (int i = 0; i < 100000; i++) {
        int n = snprintf(name, sizeof name, "b%06d", i);
        assert_int_equal(placement_assign(&p, name, (size_t)n, 1 + (uint32_t)(i + 1) % 16, &e), 0);
    }
    assert_int_equal(p.nbranches, 100001);
    size_t counts[PL_MAX_SHARDS];
    placement_branch_counts(&p, counts);
    for (size_t i = 0; i < p.nshards; i++) /* 100001 branches over 16 shards, evenly */
        assert_true(counts[i] == 6250 || counts[i] == 6251);
    assert_int_equal(placement_least_loaded(&p), 2); /* shard 1 has the extra "default" */
    assert_int_equal(placement_move(&p, "b050000", 7, 16, &e), 0);

    struct buf b;
    buf_init(&b);
    double t0 = now_s();
    assert_int_equal(placement_encode(&p, &b), 0);
    double t1 = now_s();
    struct placement q;
    placement_init(&q);
    assert_int_equal(placement_decode(&q, b.data, b.len, &e), 0);
    double t2 = now_s();
    assert_tables_equal(&p, &q);
    assert_valid(&q);
    print_message("100001 branches: %zu bytes, encode %.1f ms, decode %.1f ms\n", b.len,
                  (t1 - t0) * 1e3, (t2 - t1) * 1e3);
    const struct pl_branch *br = placement_branch(&q, "b050000", 7);
    assert_non_null(br);
    assert_int_equal(br->shard, 16);
    assert_int_equal(br->epoch, 2);
    buf_close(&b);
    placement_free(&q);
    placement_free(&p);
}

static void test_decode_spec_default_is_valid(void **state)
{
    (void)state;
    spec_default();
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(decode_spec(&p, &e), 0);
    assert_int_equal(p.rf, 3);
    assert_int_equal(p.nnodes, 3);
    assert_int_equal(placement_node(&p, 3)->state, PL_NODE_DRAINING);
    assert_int_equal(placement_shard(&p, 2)->epoch, 5);
    assert_int_equal(placement_branch(&p, "zz", 2)->epoch, 7);
    placement_free(&p);
}

/* Every field replaced by every value of another type. */
static void test_decode_wrong_types_every_field(void **state)
{
    (void)state;
    struct {
        const char *path;
        enum vk right;
        const char *needle;
    } fields[] = {
        {"root", V_MAP, "must be a map"},
        {"v", V_UINT, "v "},
        {"rf", V_UINT, "rf "},
        {"nodes", V_ARRAY, "nodes"},
        {"nodes[1]", 0, "nodes[1]"},
        {"nodes[1].id", V_UINT, "nodes[1].id"},
        {"nodes[1].address", V_STR, "nodes[1].address"},
        {"nodes[1].state", V_UINT, "nodes[1].state"},
        {"shards", V_ARRAY, "shards"},
        {"shards[1]", 0, "shards[1]"},
        {"shards[1].id", V_UINT, "shards[1].id"},
        {"shards[1].epoch", V_UINT, "shards[1].epoch"},
        {"shards[1].replicas", V_ARRAY, "shards[1].replicas"},
        {"shards[1].replicas[0]", V_UINT, "shards[1].replicas[0]"},
        {"branches", V_ARRAY, "branches"},
        {"branches[1]", 0, "branches[1]"},
        {"branches[1].name", V_STR, "branches[1].name"},
        {"branches[1].shard", V_UINT, "branches[1].shard"},
        {"branches[1].epoch", V_UINT, "branches[1].epoch"},
    };
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        for (int k = 1; k <= V_COUNT; k++) {
            if ((enum vk)k == fields[f].right)
                continue;
            spec_default();
            spec.wrong = fields[f].path;
            spec.wrong_kind = (enum vk)k;
            struct placement p;
            struct err e;
            placement_init(&p);
            int rc = decode_spec(&p, &e);
            if (rc != STRATA_PROTOCOL_ERROR || strstr(e.msg, fields[f].needle) == NULL)
                fail_msg("%s as kind %d: rc %d, \"%s\"", fields[f].path, k, rc, e.msg);
            placement_free(&p);
        }
    }
}

static void test_decode_bad_map_keys(void **state)
{
    (void)state;
    static const char *const keys[] = {"v", "rf", "nodes", "shards", "branches"};
    for (int i = 0; i < 5; i++) {
        spec_default();
        spec.omit = keys[i];
        expect_spec_error("is missing");
        spec_default();
        spec.dup = keys[i];
        expect_spec_error("appears twice");
    }
    spec_default();
    spec.extra = "future";
    expect_spec_error("unknown key 'future'");

    /* A key that is not a string. */
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, sink);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, 1);
    struct placement p;
    struct err e;
    placement_init(&p);
    expect_error(placement_decode(&p, b.data, b.len, &e), &e, STRATA_PROTOCOL_ERROR,
                 "must be a string");
    buf_close(&b);
    placement_free(&p);
}

static void test_decode_bad_version_and_rf(void **state)
{
    (void)state;
    const uint64_t versions[] = {0, 2, UINT64_MAX};
    for (int i = 0; i < 3; i++) {
        spec_default();
        spec.v = versions[i];
        expect_spec_error("v ");
    }
    const uint64_t rfs[] = {0, PL_MAX_REPLICAS + 1, 1ull << 32};
    for (int i = 0; i < 3; i++) {
        spec_default();
        spec.rf = rfs[i];
        expect_spec_error("rf ");
    }
}

static void test_decode_bad_nodes(void **state)
{
    (void)state;
    spec_default();
    spec.nodes[1].id = 0;
    expect_spec_error("nodes[1].id 0 is out of range");
    spec_default();
    spec.nodes[1].id = 1;
    expect_spec_error("nodes[1].id 1 is a duplicate");
    spec_default();
    spec.nodes[0].id = 5; /* 5, 2, 3 */
    expect_spec_error("nodes[1].id 2 is out of order");
    spec_default();
    spec.nodes[2].addr = "";
    expect_spec_error("nodes[2].address must be 1..255 bytes");
    static char longaddr[PL_ADDRESS_MAX + 2];
    memset(longaddr, 'a', PL_ADDRESS_MAX + 1);
    spec_default();
    spec.nodes[2].addr = longaddr;
    expect_spec_error("nodes[2].address must be 1..255 bytes (got 256)");
    spec_default();
    spec.nodes[2].addr = "a\0b";
    spec.nodes[2].alen = 3;
    expect_spec_error("nodes[2].address must not contain a NUL");
    spec_default();
    spec.nodes[2].addr = spec.nodes[0].addr;
    expect_spec_error("nodes[2].address 127.0.0.1:7001 is also nodes[0]'s");
    const uint64_t states[] = {0, 3, 1ull << 40};
    for (int i = 0; i < 3; i++) {
        spec_default();
        spec.nodes[0].state = states[i];
        expect_spec_error("nodes[0].state");
    }
    spec_default();
    spec.node_arity = 2;
    expect_spec_error("nodes[0] must have 3 elements (got 2)");
    spec_default();
    spec.node_arity = 4;
    expect_spec_error("nodes[0] must have 3 elements (got 4)");

    /* 255 bytes is the limit, not an error. */
    longaddr[PL_ADDRESS_MAX] = '\0';
    spec_default();
    spec.nodes[2].addr = longaddr;
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(decode_spec(&p, &e), 0);
    assert_int_equal(strlen(placement_node(&p, 3)->address), PL_ADDRESS_MAX);
    placement_free(&p);
}

static void test_decode_oversized_arrays(void **state)
{
    (void)state;
    static char addrs[PL_MAX_NODES + 1][32];
    spec_default();
    spec.nnodes = PL_MAX_NODES + 1;
    for (int i = 0; i <= PL_MAX_NODES; i++) {
        snprintf(addrs[i], sizeof addrs[i], "10.0.0.%d:1", i);
        spec.nodes[i] = (struct tnode){(uint64_t)i + 1, addrs[i], 0, 1};
    }
    expect_spec_error("nodes has 65 elements (at most 64)");
    /* Exactly 64 decodes. */
    spec.nnodes = PL_MAX_NODES;
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(decode_spec(&p, &e), 0);
    assert_int_equal(p.nnodes, PL_MAX_NODES);

    spec_default();
    spec.nshards = PL_MAX_SHARDS + 1;
    for (int i = 0; i <= PL_MAX_SHARDS; i++)
        spec.shards[i] = (struct tshard){(uint64_t)i + 1, 1, 1, {1}};
    expect_spec_error("shards has 257 elements (at most 256)");
    spec.nshards = PL_MAX_SHARDS;
    assert_int_equal(decode_spec(&p, &e), 0);
    assert_int_equal(p.nshards, PL_MAX_SHARDS);

    spec_default();
    spec.nnodes = 9;
    for (int i = 0; i < 9; i++)
        spec.nodes[i] = (struct tnode){(uint64_t)i + 1, addrs[i], 0, 1};
    spec.shards[1].n = PL_MAX_REPLICAS + 1;
    for (int i = 0; i < PL_MAX_REPLICAS + 1; i++)
        spec.shards[1].reps[i] = (uint64_t)i + 1;
    expect_spec_error("shards[1].replicas has 8 elements (at most 7)");
    spec.shards[1].n = PL_MAX_REPLICAS;
    assert_int_equal(decode_spec(&p, &e), 0);
    assert_int_equal(placement_shard(&p, 2)->nreplicas, PL_MAX_REPLICAS);
    placement_free(&p);
}

static void test_decode_bad_shards(void **state)
{
    (void)state;
    spec_default();
    spec.shards[0].id = 0;
    expect_spec_error("shards[0].id 0 is out of range");
    spec_default();
    spec.shards[1].id = PL_MAX_SHARDS + 1;
    expect_spec_error("shards[1].id 257 is out of range");
    spec_default();
    spec.shards[1].id = 1;
    expect_spec_error("shards[1].id 1 is a duplicate");
    spec_default();
    spec.shards[0].id = 3; /* 3, 2 */
    expect_spec_error("shards[1].id 2 is out of order");
    spec_default();
    spec.shards[1].epoch = 0;
    expect_spec_error("shards[1].epoch 0 is out of range");
    spec_default();
    spec.shards[1].n = 0;
    expect_spec_error("shard 2 has no replicas");
    spec_default();
    spec.shards[1].reps[1] = 9;
    expect_spec_error("shards[1].replicas[1]: node 9 is not in nodes");
    spec_default();
    spec.shards[1].reps[1] = 0;
    expect_spec_error("shards[1].replicas[1] 0 is out of range");
    spec_default();
    spec.shards[0].reps[2] = 1;
    expect_spec_error("shards[0].replicas[2]: node 1 is listed twice");
}

static void test_decode_bad_branches(void **state)
{
    (void)state;
    static char longname[PL_MAX_BRANCH_NAME + 2];
    memset(longname, 'z', PL_MAX_BRANCH_NAME + 1);
    spec_default();
    spec.branches[2].name = longname;
    expect_spec_error("branches[2].name must be 1..128 bytes (got 129)");
    spec_default();
    spec.branches[0].name = "";
    expect_spec_error("branches[0].name must be 1..128 bytes (got 0)");
    spec_default();
    spec.branches[2].name = "z\0z";
    spec.branches[2].len = 3;
    expect_spec_error("branches[2].name must not contain a NUL");
    spec_default();
    spec.branches[2].name = "default";
    expect_spec_error("branches[2].name 'default' is a duplicate");
    spec_default();
    spec.branches[0].name = "e"; /* "e" > "default" */
    expect_spec_error("branches[1].name 'default' is out of order");
    spec_default();
    spec.branches[0].name = "ab"; /* shorter first: "ab" then "a" is out of order */
    spec.branches[1] = (struct tbranch){"a", 0, 2, 1};
    spec.branches[2] = (struct tbranch){"default", 0, 1, 1};
    expect_spec_error("branches[1].name 'a' is out of order");
    spec_default();
    spec.branches[2].shard = 3;
    expect_spec_error("branches[2] ('zz'): shard 3 is not in shards");
    spec_default();
    spec.branches[2].shard = 1ull << 32; /* would alias shard 0 if truncated */
    expect_spec_error("branches[2].shard 4294967296 is out of range");
    spec_default();
    spec.branches[2].shard = (1ull << 32) + 1; /* would alias shard 1 if truncated */
    expect_spec_error("branches[2].shard");
    spec_default();
    spec.branches[0].epoch = 0;
    expect_spec_error("branches[0].epoch 0 is out of range");
    spec_default();
    spec.branches[1].name = "dflt";
    expect_spec_error("branch 'default' is missing");
    spec_default();
    spec.nbranches = 0;
    expect_spec_error("branch 'default' is missing");
    spec_default();
    spec.branches[1].shard = 2;
    expect_spec_error("'default' is on shard 2");

    /* 128 bytes and a prefix before its extension are fine. */
    longname[PL_MAX_BRANCH_NAME] = '\0';
    spec_default();
    spec.branches[0].name = "a";
    spec.branches[1] = (struct tbranch){"ab", 0, 2, 1};
    spec.branches[2] = (struct tbranch){"default", 0, 1, 1};
    spec.branches[3] = (struct tbranch){longname, 0, 1, 1};
    spec.nbranches = 4;
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(decode_spec(&p, &e), 0);
    assert_non_null(placement_branch(&p, longname, PL_MAX_BRANCH_NAME));
    placement_free(&p);
}

static void test_decode_not_one_value(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    struct buf b;
    buf_init(&b);
    assert_int_equal(placement_encode(&p, &b), 0);
    size_t n = b.len;
    assert_int_equal(buf_append(&b, "\xc0", 1), 0);
    expect_error(placement_decode(&p, b.data, b.len, &e), &e, STRATA_PROTOCOL_ERROR,
                 "1 trailing bytes");
    assert_true(is_empty(&p));
    expect_error(placement_decode(&p, b.data, 0, &e), &e, STRATA_PROTOCOL_ERROR, "empty");
    expect_error(placement_decode(&p, NULL, 0, &e), &e, STRATA_PROTOCOL_ERROR, "empty");
    expect_error(placement_decode(&p, (const uint8_t *)"\xc1", 1, &e), &e, STRATA_PROTOCOL_ERROR,
                 "not valid MessagePack");
    assert_int_equal(placement_decode(&p, b.data, n, &e), 0);
    buf_close(&b);
    placement_free(&p);
}

static void test_decode_huge_declared_count(void **state)
{
    (void)state;
    /* array32 / map32 headers claiming far more entries than the input holds: msgpack-c
     * would allocate for them up front; the framing walk refuses them first, naming the
     * count. */
    const char *inputs[] = {"\xdf\xff\xff\xff\xff", "\xdd\xff\xff\xff\xff", "\xdd\x01\x00\x00\x00",
                            "\x85\xa5nodes\xdd\xff\xff\xff\xff"};
    const size_t lens[] = {5, 5, 5, 12};
    struct placement p;
    struct err e;
    placement_init(&p);
    for (size_t i = 0; i < 4; i++) {
        int rc = placement_decode(&p, (const uint8_t *)inputs[i], lens[i], &e);
        assert_int_equal(rc, STRATA_PROTOCOL_ERROR);
        assert_non_null(strstr(e.msg, "elements, 0 bytes follow"));
        assert_true(is_empty(&p));
    }
}

static void test_decode_every_prefix_fails(void **state)
{
    (void)state;
    spec_default();
    struct buf b;
    buf_init(&b);
    pack_spec(&b);
    struct placement p;
    struct err e;
    placement_init(&p);
    for (size_t n = 0; n < b.len; n++) {
        /* A private copy of exactly n bytes so ASan sees any read past the end. */
        uint8_t *c = malloc(n ? n : 1);
        assert_non_null(c);
        memcpy(c, b.data, n);
        int rc = placement_decode(&p, c, n, &e);
        if (rc != STRATA_PROTOCOL_ERROR)
            fail_msg("prefix of %zu/%zu bytes: rc %d", n, b.len, rc);
        assert_true(is_empty(&p));
        free(c);
    }
    assert_int_equal(placement_decode(&p, b.data, b.len, &e), 0);
    buf_close(&b);
    placement_free(&p);
}

/* msgpack-c allocates a container's declared element count before reading any element:
 * a 32-bit count (0xdd array32, 0xdf map32) in random bytes can ask for gigabytes, which
 * ASan spends seconds on. Those bytes become the 16-bit forms here; the huge-count path
 * has its own test (test_decode_huge_declared_count). */
static void tame_container_headers(uint8_t *c, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (c[i] == 0xdd || c[i] == 0xdf)
            c[i] -= 1;
}

static void test_decode_random_bit_flips_never_crash(void **state)
{
    (void)state;
    struct placement src;
    struct err e;
    make_three(&src);
    assert_int_equal(placement_assign(&src, "alpha", 5, 2, &e), 0);
    assert_int_equal(placement_assign(&src, "beta", 4, 3, &e), 0);
    struct buf b;
    buf_init(&b);
    assert_int_equal(placement_encode(&src, &b), 0);
    uint8_t *c = malloc(b.len);
    assert_non_null(c);
    struct placement p;
    placement_init(&p);
    rng_state = 0x9e3779b97f4a7c15ull;
    int accepted = 0;
    for (int it = 0; it < 50000; it++) {
        memcpy(c, b.data, b.len);
        int flips = 1 + (int)(rnd() % 3);
        for (int k = 0; k < flips; k++) {
            uint64_t r = rnd();
            c[(r >> 3) % b.len] ^= (uint8_t)(1u << (r & 7));
        }
        tame_container_headers(c, b.len);
        size_t len = b.len;
        if (rnd() % 8 == 0) /* sometimes also cut it short */
            len = (size_t)(rnd() % b.len);
        int rc = placement_decode(&p, c, len, &e);
        if (rc == 0) {
            /* Whatever decodes is a valid table that survives a round trip. */
            accepted++;
            assert_valid(&p);
            assert_roundtrip(&p);
        } else {
            assert_int_equal(rc, STRATA_PROTOCOL_ERROR);
            assert_true(e.msg[0] != '\0');
            assert_true(is_empty(&p));
        }
    }
    /* Flips inside a name or an epoch keep the table valid: some must be accepted, or
     * the test is not exercising the success path. */
    assert_true(accepted > 0);
    print_message("bit flips: %d of 50000 inputs decoded\n", accepted);
    /* Pure garbage too. */
    for (int it = 0; it < 20000; it++) {
        size_t len = (size_t)(rnd() % 64);
        for (size_t i = 0; i < len; i++)
            c[i] = (uint8_t)rnd();
        tame_container_headers(c, len);
        int rc = placement_decode(&p, c, len, &e);
        assert_true(rc == STRATA_PROTOCOL_ERROR || rc == 0);
    }
    free(c);
    buf_close(&b);
    placement_free(&p);
    placement_free(&src);
}

static void test_decode_out_of_memory(void **state)
{
    (void)state;
    struct placement src;
    struct err e;
    make_three(&src);
    assert_int_equal(placement_assign(&src, "alpha", 5, 2, &e), 0);
    struct buf b;
    buf_init(&b);
    assert_int_equal(placement_encode(&src, &b), 0);
    struct placement p;
    placement_init(&p);
    /* Allocation k fails, for every k the decode makes: OUT_OF_MEMORY and an empty table,
     * never a partial one. */
    int failures = 0;
    for (long k = 1; k < 10; k++) {
        sm_fail_after(k);
        int rc = placement_decode(&p, b.data, b.len, &e);
        sm_fail_after(0);
        if (rc == 0) {
            assert_tables_equal(&src, &p);
            break;
        }
        failures++;
        expect_error(rc, &e, STRATA_OUT_OF_MEMORY, "memory");
        assert_true(is_empty(&p));
    }
    assert_int_equal(failures, 3); /* the array and two names */
    buf_close(&b);
    placement_free(&p);
    placement_free(&src);
}

/* ---- lookups and changes that need hand-made tables ------------------------------- */

static void test_least_loaded_ties_and_counts(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    placement_init(&p);
    assert_int_equal(placement_least_loaded(&p), 0);

    make_three(&p);
    size_t counts[PL_MAX_SHARDS];
    placement_branch_counts(&p, counts);
    assert_int_equal(counts[0], 1); /* default */
    assert_int_equal(counts[1], 0);
    assert_int_equal(counts[2], 0);
    assert_int_equal(placement_least_loaded(&p), 2); /* 2 and 3 tie: lowest id */
    assert_int_equal(placement_assign(&p, "x", 1, 2, &e), 0);
    assert_int_equal(placement_least_loaded(&p), 3);
    assert_int_equal(placement_assign(&p, "y", 1, 3, &e), 0);
    assert_int_equal(placement_least_loaded(&p), 1); /* all at 1: lowest id */
    assert_int_equal(placement_assign(&p, "z", 1, 1, &e), 0);
    assert_int_equal(placement_assign(&p, "w", 1, 1, &e), 0);
    assert_int_equal(placement_least_loaded(&p), 2);
    assert_int_equal(placement_move(&p, "x", 1, 3, &e), 0);
    placement_branch_counts(&p, counts);
    assert_int_equal(counts[0], 3);
    assert_int_equal(counts[1], 0);
    assert_int_equal(counts[2], 2);
    assert_int_equal(placement_least_loaded(&p), 2);
    assert_int_equal(placement_unassign(&p, "z", 1, &e), 0);
    assert_int_equal(placement_unassign(&p, "w", 1, &e), 0);
    assert_int_equal(placement_assign(&p, "v", 1, 2, &e), 0);
    assert_int_equal(placement_assign(&p, "u", 1, 2, &e), 0);
    assert_int_equal(placement_assign(&p, "t", 1, 2, &e), 0);
    /* 1, 3, 2 */
    assert_int_equal(placement_least_loaded(&p), 1);
    placement_free(&p);

    /* Ids with gaps (a decoded table): ties still go to the lowest id. */
    spec_default();
    spec.shards[0].id = 1;
    spec.shards[1] = (struct tshard){200, 1, 1, {1}};
    spec.shards[2] = (struct tshard){256, 1, 1, {2}};
    spec.nshards = 3;
    spec.branches[0].shard = 256;
    spec.branches[2].shard = 256;
    placement_init(&p);
    assert_int_equal(decode_spec(&p, &e), 0);
    assert_int_equal(placement_least_loaded(&p), 200);
    placement_branch_counts(&p, counts);
    assert_int_equal(counts[0], 1);
    assert_int_equal(counts[1], 0);
    assert_int_equal(counts[2], 2);
    placement_free(&p);
}

static void test_move_success_and_errors(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_assign(&p, "a", 1, 2, &e), 0);
    assert_int_equal(placement_move(&p, "a", 1, 3, &e), 0);
    assert_int_equal(placement_branch(&p, "a", 1)->shard, 3);
    assert_int_equal(placement_branch(&p, "a", 1)->epoch, 2);
    assert_int_equal(placement_move(&p, "a", 1, 1, &e), 0);
    assert_int_equal(placement_branch(&p, "a", 1)->epoch, 3);
    expect_error(placement_move(&p, "a", 1, 1, &e), &e, STRATA_INVALID_ARGUMENT,
                 "already on shard 1");
    expect_error(placement_move(&p, "b", 1, 2, &e), &e, STRATA_NOT_FOUND, "'b'");
    expect_error(placement_move(&p, "a", 1, 9, &e), &e, STRATA_INVALID_ARGUMENT,
                 "shard 9 does not exist");
    expect_error(placement_move(&p, "default", 7, 2, &e), &e, STRATA_INVALID_ARGUMENT, "shard 1");
    expect_error(placement_move(&p, "", 0, 2, &e), &e, STRATA_INVALID_ARGUMENT, "1..128");
    assert_int_equal(placement_branch(&p, "a", 1)->epoch, 3);
    assert_valid(&p);

    /* An epoch at its maximum cannot be bumped (it would wrap below every cached one). */
    spec_default();
    spec.branches[0].epoch = UINT64_MAX;
    assert_int_equal(decode_spec(&p, &e), 0);
    expect_error(placement_move(&p, "a", 1, 1, &e), &e, STRATA_INVALID_ARGUMENT, "epoch");
    assert_int_equal(placement_branch(&p, "a", 1)->shard, 2);
    placement_free(&p);
}

static void test_set_replicas_success_and_errors(void **state)
{
    (void)state;
    struct placement p;
    struct err e;
    make_three(&p);
    assert_int_equal(placement_add_node(&p, 4, "h:4", &e), 0);
    const uint64_t four[] = {4, 1, 2, 3};
    assert_int_equal(placement_set_replicas(&p, 2, four, 4, &e), 0);
    const struct pl_shard *s = placement_shard(&p, 2);
    assert_int_equal(s->nreplicas, 4);
    assert_memory_equal(s->replicas, four, sizeof four);
    assert_int_equal(s->epoch, 2);
    assert_int_equal(placement_set_replicas(&p, 2, four, 4, &e), 0); /* same set, new epoch */
    assert_int_equal(s->epoch, 3);

    const uint64_t unknown[] = {1, 8};
    const uint64_t dup[] = {1, 2, 1};
    const uint64_t eight[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    expect_error(placement_set_replicas(&p, 5, four, 1, &e), &e, STRATA_NOT_FOUND, "shard 5");
    expect_error(placement_set_replicas(&p, 2, four, 0, &e), &e, STRATA_INVALID_ARGUMENT, "1..7");
    expect_error(placement_set_replicas(&p, 2, eight, 8, &e), &e, STRATA_INVALID_ARGUMENT, "got 8");
    expect_error(placement_set_replicas(&p, 2, unknown, 2, &e), &e, STRATA_INVALID_ARGUMENT,
                 "node 8 is not in the table");
    expect_error(placement_set_replicas(&p, 2, dup, 3, &e), &e, STRATA_INVALID_ARGUMENT,
                 "node 1 is listed twice");
    /* A draining node keeps a replica it has, and gains none. */
    assert_int_equal(placement_drain_node(&p, 4, &e), 0);
    const uint64_t keep[] = {1, 4};
    assert_int_equal(placement_set_replicas(&p, 2, keep, 2, &e), 0);
    expect_error(placement_set_replicas(&p, 3, keep, 2, &e), &e, STRATA_INVALID_ARGUMENT,
                 "node 4 is draining");
    assert_int_equal(s->epoch, 4);
    assert_int_equal(s->nreplicas, 2);
    assert_int_equal(placement_shard(&p, 3)->epoch, 1);
    assert_valid(&p);
    assert_roundtrip(&p);

    spec_default();
    spec.shards[1].epoch = UINT64_MAX;
    assert_int_equal(decode_spec(&p, &e), 0);
    expect_error(placement_set_replicas(&p, 2, keep, 1, &e), &e, STRATA_INVALID_ARGUMENT, "epoch");
    assert_int_equal(placement_shard(&p, 2)->nreplicas, 2);
    placement_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_exact_bytes),
        cmocka_unit_test(test_encode_appends_and_out_of_memory),
        cmocka_unit_test(test_decode_roundtrip_after_changes),
        cmocka_unit_test(test_decode_roundtrip_100k_branches),
        cmocka_unit_test(test_decode_spec_default_is_valid),
        cmocka_unit_test(test_decode_wrong_types_every_field),
        cmocka_unit_test(test_decode_bad_map_keys),
        cmocka_unit_test(test_decode_bad_version_and_rf),
        cmocka_unit_test(test_decode_bad_nodes),
        cmocka_unit_test(test_decode_oversized_arrays),
        cmocka_unit_test(test_decode_bad_shards),
        cmocka_unit_test(test_decode_bad_branches),
        cmocka_unit_test(test_decode_not_one_value),
        cmocka_unit_test(test_decode_huge_declared_count),
        cmocka_unit_test(test_decode_every_prefix_fails),
        cmocka_unit_test(test_decode_random_bit_flips_never_crash),
        cmocka_unit_test(test_decode_out_of_memory),
        cmocka_unit_test(test_least_loaded_ties_and_counts),
        cmocka_unit_test(test_move_success_and_errors),
        cmocka_unit_test(test_set_replicas_success_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
