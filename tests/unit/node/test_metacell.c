/* node/metacell.c: the state.get / state.init / state.cas commands for the meta group's
 * cells are the bytes the node always sent (checked against the packing each caller used
 * before, and read back with msgpack-c's unpacker), and every malformed reply gets a
 * clear error instead of a wrong cell. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "metacell.h"
#include "node.h"

/* msgpack-c allocates a container's declared size up front: garbage may ask for
 * gigabytes, which ASan must answer with NULL (the decoder rejects it). */
const char *__asan_default_options(void) __attribute__((used));
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* A cell value as a caller encodes it: {"v": n, "s": "..."} */
static void encode_value(struct buf *b, uint64_t n)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, node_buf_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "v");
    msgpack_pack_uint64(&pk, n);
    node_pack_str(&pk, "s");
    node_pack_str(&pk, "a table");
}

static const char *const ops[] = {"state.cas", "state.init", "state.set"};

/* The write as node/authz.c, node/shards.c and node/move.c packed it before metacell.c:
 * the header, then the caller's encoding appended (state.set like state.init). */
static void old_write(struct buf *b, const char *cell, enum metacell_mode mode, uint64_t expected,
                      const struct buf *value)
{
    bool cas = mode == METACELL_CAS;
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, node_buf_w);
    msgpack_pack_map(&pk, cas ? 4 : 3);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, ops[mode]);
    node_pack_str(&pk, "cell");
    node_pack_str(&pk, cell);
    if (cas) {
        node_pack_str(&pk, "expected_counter");
        msgpack_pack_uint64(&pk, expected);
    }
    node_pack_str(&pk, "value");
    buf_append(b, value->data, value->len);
}

static bool str_is(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* A reply as storage/state.c packs it: {value, counter, version, ts}. */
static void get_reply(struct buf *b, uint64_t counter, const struct buf *value)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, node_buf_w);
    msgpack_pack_map(&pk, 4);
    node_pack_str(&pk, "value");
    buf_append(b, value->data, value->len);
    node_pack_str(&pk, "counter");
    msgpack_pack_uint64(&pk, counter);
    node_pack_str(&pk, "version");
    msgpack_pack_uint64(&pk, 77);
    node_pack_str(&pk, "ts");
    msgpack_pack_int64(&pk, 1234567);
}

/* ---- packing -------------------------------------------------------------------------------- */

static void test_pack_get_same_bytes(void **state)
{
    (void)state;
    /* The literal node/authz.c sent: {"op":"state.get","cell":"auth"} */
    static const uint8_t auth[] = {0x82, 0xa2, 'o',  'p', 0xa9, 's', 't', 'a',  't', 'e', '.', 'g',
                                   'e',  't',  0xa4, 'c', 'e',  'l', 'l', 0xa4, 'a', 'u', 't', 'h'};
    struct metacell_get g;
    metacell_pack_get(&g, "auth");
    assert_int_equal(g.len, sizeof auth);
    assert_memory_equal(g.bytes, auth, sizeof auth);
    /* The longest name fits, and unpacks to the map the storage expects. */
    char name[METACELL_NAME_MAX + 1];
    memset(name, 'x', METACELL_NAME_MAX);
    name[METACELL_NAME_MAX] = '\0';
    const char *names[] = {"moves", "placement", name};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        metacell_pack_get(&g, names[i]);
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        msgpack_object o;
        size_t off = 0;
        assert_int_equal(msgpack_unpack((const char *)g.bytes, g.len, &off, &z, &o),
                         MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(off, g.len);
        assert_int_equal(o.type, MSGPACK_OBJECT_MAP);
        assert_int_equal(o.via.map.size, 2);
        assert_true(str_is(node_map_get(&o, "op"), "state.get"));
        assert_true(str_is(node_map_get(&o, "cell"), names[i]));
        msgpack_zone_destroy(&z);
    }
}

static void test_pack_cas_and_init_same_bytes(void **state)
{
    (void)state;
    /* Counters of every MessagePack integer width. */
    static const uint64_t counters[] = {0,     1,     127,         128,         255,       256,
                                        65535, 65536, 4294967295u, 4294967296u, UINT64_MAX};
    const char *cells[] = {"auth", "moves", "placement"};
    struct buf value, got, want;
    buf_init(&value);
    buf_init(&got);
    buf_init(&want);
    for (size_t c = 0; c < sizeof cells / sizeof *cells; c++) {
        for (size_t i = 0; i < sizeof counters / sizeof *counters; i++) {
            for (int mode = METACELL_CAS; mode <= METACELL_SET; mode++) {
                bool cas = mode == METACELL_CAS;
                buf_reset(&value);
                buf_reset(&got);
                buf_reset(&want);
                encode_value(&value, counters[i]);
                old_write(&want, cells[c], mode, counters[i], &value);
                int rc = cas ? metacell_pack_cas(&got, cells[c], counters[i], value.data, value.len)
                         : mode == METACELL_INIT
                             ? metacell_pack_init(&got, cells[c], value.data, value.len)
                             : metacell_pack_set(&got, cells[c], value.data, value.len);
                assert_int_equal(rc, 0);
                assert_int_equal(got.len, want.len);
                assert_memory_equal(got.data, want.data, want.len);
                /* And it reads back as the command storage/state.c takes. */
                msgpack_zone z;
                msgpack_zone_init(&z, 256);
                msgpack_object o;
                size_t off = 0;
                assert_int_equal(msgpack_unpack((const char *)got.data, got.len, &off, &z, &o),
                                 MSGPACK_UNPACK_SUCCESS);
                assert_int_equal(o.via.map.size, cas ? 4 : 3);
                assert_true(str_is(node_map_get(&o, "op"), ops[mode]));
                assert_true(str_is(node_map_get(&o, "cell"), cells[c]));
                uint64_t e = 0;
                assert_int_equal(node_map_u64(&o, "expected_counter", &e), cas);
                assert_true(e == (cas ? counters[i] : 0));
                const msgpack_object *v = node_map_get(&o, "value");
                assert_non_null(v);
                assert_true(node_map_u64(v, "v", &e) && e == counters[i]);
                msgpack_zone_destroy(&z);
            }
        }
    }
    /* Appended after what the buffer held (shards.c reuses one buffer). */
    buf_reset(&got);
    buf_reset(&want);
    old_write(&want, "placement", METACELL_INIT, 0, &value);
    assert_int_equal(buf_append(&got, "\xc0", 1), 0);
    assert_int_equal(metacell_pack_init(&got, "placement", value.data, value.len), 0);
    assert_int_equal(got.len, 1 + want.len);
    assert_int_equal(got.data[0], 0xc0);
    assert_memory_equal(got.data + 1, want.data, want.len);
    buf_close(&value);
    buf_close(&got);
    buf_close(&want);
}

static void test_pack_out_of_memory(void **state)
{
    (void)state;
    struct buf value, got;
    buf_init(&value);
    buf_init(&got);
    encode_value(&value, 9);
    /* A fresh buffer grows once or twice: fail each growth in turn. */
    int failures = 0;
    for (long k = 1; k < 20; k++) {
        buf_close(&got);
        buf_init(&got);
        sm_fail_after(k);
        int rc = metacell_pack_cas(&got, "auth", 3, value.data, value.len);
        sm_fail_after(0);
        if (rc == 0)
            break;
        assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
        failures++;
    }
    assert_true(failures >= 1);
    buf_close(&value);
    buf_close(&got);
}

/* ---- decoding a read ---------------------------------------------------------------------- */

static void test_decode_get_present_and_absent(void **state)
{
    (void)state;
    struct buf value, reply;
    buf_init(&value);
    buf_init(&reply);
    encode_value(&value, 42);
    get_reply(&reply, 9, &value);
    struct metacell c;
    metacell_init(&c);
    struct err err;
    err_clear(&err);
    assert_int_equal(metacell_decode_get(&c, "auth", reply.data, reply.len, &err), 0);
    assert_true(c.present);
    assert_int_equal(c.counter, 9);
    assert_int_equal(c.value.len, value.len);
    assert_memory_equal(c.value.data, value.data, value.len);
    /* nil: never written; what the cell held before is gone. */
    static const uint8_t nil[] = {0xc0};
    assert_int_equal(metacell_decode_get(&c, "auth", nil, sizeof nil, &err), 0);
    assert_false(c.present);
    assert_int_equal(c.counter, 0);
    assert_int_equal(c.value.len, 0);
    metacell_close(&c);
    buf_close(&value);
    buf_close(&reply);
}

/* Each malformed reply: STRATA_INTERNAL naming the cell, and an absent, empty cell. */
static void expect_bad(const uint8_t *p, size_t len, const char *why)
{
    struct metacell c;
    metacell_init(&c);
    assert_int_equal(buf_append(&c.value, "old", 3), 0);
    c.present = true;
    c.counter = 5;
    struct err err;
    err_clear(&err);
    int rc = metacell_decode_get(&c, "moves", p, len, &err);
    if (rc != STRATA_INTERNAL)
        fail_msg("%s: got %d (%s)", why, rc, err.msg);
    assert_non_null(strstr(err.msg, "moves cell"));
    assert_false(c.present);
    assert_int_equal(c.counter, 0);
    assert_int_equal(c.value.len, 0);
    metacell_close(&c);
}

static void test_decode_get_malformed(void **state)
{
    (void)state;
    struct buf value, reply, b;
    buf_init(&value);
    buf_init(&reply);
    buf_init(&b);
    encode_value(&value, 42);
    get_reply(&reply, 9, &value);
    expect_bad(NULL, 0, "no bytes");
    /* Every strict prefix is incomplete. */
    for (size_t n = 1; n < reply.len; n++)
        expect_bad(reply.data, n, "a prefix");
    /* A second object after the reply. */
    assert_int_equal(buf_append(&b, reply.data, reply.len), 0);
    assert_int_equal(buf_append(&b, "\xc0", 1), 0);
    expect_bad(b.data, b.len, "trailing bytes");
    /* Not a map. */
    static const uint8_t arr[] = {0x92, 0x01, 0x02}, str[] = {0xa1, 'x'}, bad[] = {0xc1};
    expect_bad(arr, sizeof arr, "an array");
    expect_bad(str, sizeof str, "a string");
    expect_bad(bad, sizeof bad, "a reserved byte");
    /* Maps without a value, without a counter, with a counter of the wrong type. */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    node_pack_str(&pk, "counter");
    msgpack_pack_uint64(&pk, 3);
    expect_bad(b.data, b.len, "no value");
    buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    node_pack_str(&pk, "value");
    msgpack_pack_nil(&pk);
    expect_bad(b.data, b.len, "no counter");
    buf_reset(&b);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "value");
    msgpack_pack_nil(&pk);
    node_pack_str(&pk, "counter");
    msgpack_pack_int64(&pk, -1);
    expect_bad(b.data, b.len, "a negative counter");
    buf_reset(&b);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "value");
    msgpack_pack_nil(&pk);
    node_pack_str(&pk, "counter");
    node_pack_str(&pk, "7");
    expect_bad(b.data, b.len, "a string counter");
    buf_close(&value);
    buf_close(&reply);
    buf_close(&b);
}

/* ---- decoding a write's answer --------------------------------------------------------------- */

static void test_decode_write(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    /* storage/state.c's answer to a write: {version, ts, counter} */
    msgpack_pack_map(&pk, 3);
    node_pack_str(&pk, "version");
    msgpack_pack_uint64(&pk, 12);
    node_pack_str(&pk, "ts");
    msgpack_pack_int64(&pk, 99);
    node_pack_str(&pk, "counter");
    msgpack_pack_uint64(&pk, 6);
    struct err err;
    err_clear(&err);
    uint64_t counter = 0;
    assert_int_equal(metacell_decode_write("auth", 0, b.data, b.len, NULL, &counter, &err), 0);
    assert_int_equal(counter, 6);
    /* Lost the race: CONFLICT (cas) and ALREADY_EXISTS (init) are one outcome. */
    counter = 0;
    const char *msg = "state cell 'auth': expected counter 5 but the current counter is 7";
    assert_int_equal(metacell_decode_write("auth", STRATA_CONFLICT, NULL, 0, msg, &counter, &err),
                     STRATA_CONFLICT);
    assert_string_equal(err.msg, msg);
    assert_int_equal(counter, 0);
    assert_int_equal(
        metacell_decode_write("auth", STRATA_ALREADY_EXISTS, NULL, 0, NULL, &counter, &err),
        STRATA_CONFLICT);
    assert_true(err.msg[0] != '\0');
    /* Other failures keep their code and message (or get the code's text). */
    assert_int_equal(
        metacell_decode_write("auth", STRATA_NOT_LEADER, NULL, 0, "node 2 leads", &counter, &err),
        STRATA_NOT_LEADER);
    assert_string_equal(err.msg, "node 2 leads");
    assert_int_equal(
        metacell_decode_write("auth", STRATA_UNAVAILABLE, NULL, 0, NULL, &counter, &err),
        STRATA_UNAVAILABLE);
    assert_string_equal(err.msg, err_message(STRATA_UNAVAILABLE));
    /* Success without a counter, or undecodable: a clear INTERNAL error. */
    buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    node_pack_str(&pk, "version");
    msgpack_pack_uint64(&pk, 12);
    assert_int_equal(metacell_decode_write("auth", 0, b.data, b.len, NULL, &counter, &err),
                     STRATA_INTERNAL);
    assert_non_null(strstr(err.msg, "auth cell"));
    static const uint8_t junk[] = {0x83, 0xa1};
    assert_int_equal(metacell_decode_write("auth", 0, junk, sizeof junk, NULL, &counter, &err),
                     STRATA_INTERNAL);
    assert_int_equal(metacell_decode_write("auth", 0, NULL, 0, NULL, &counter, &err),
                     STRATA_INTERNAL);
    assert_int_equal(counter, 0);
    buf_close(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_get_same_bytes),
        cmocka_unit_test(test_pack_cas_and_init_same_bytes),
        cmocka_unit_test(test_pack_out_of_memory),
        cmocka_unit_test(test_decode_get_present_and_absent),
        cmocka_unit_test(test_decode_get_malformed),
        cmocka_unit_test(test_decode_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
