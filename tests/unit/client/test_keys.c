/* libstrata's idempotency keys: the keyed bytes decode to the command plus "idem", the
 * engine accepts them and answers a resend from its table; commands that cannot take a
 * key are passed through unchanged. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "keys.h"
#include "storage.h"

#include <msgpack.h>
#include <string.h>

static const uint8_t ID[KEYS_CLIENT_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static int buf_w(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

/* {"op": "kv.put", "key": "k", "value": 1, "pad0": 0, ... "pad<extra-1>": 0}. */
static void make_put(struct buf *out, uint32_t extra)
{
    buf_reset(out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_w);
    msgpack_pack_map(&pk, 3 + extra);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, "kv.put", 6);
    msgpack_pack_str_with_body(&pk, "key", 3);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_str_with_body(&pk, "value", 5);
    msgpack_pack_int(&pk, 1);
    for (uint32_t i = 0; i < extra; i++) {
        char name[16];
        int n = snprintf(name, sizeof name, "pad%u", i);
        msgpack_pack_str_with_body(&pk, name, (size_t)n);
        msgpack_pack_int(&pk, 0);
    }
}

/* The keyed bytes are one map: the original entries in order, then idem. */
static void check_keyed(const struct buf *orig, const struct buf *keyed, uint32_t entries,
                        uint64_t seq, uint64_t ack, bool retry)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object a, b;
    size_t off = 0;
    assert_int_equal(msgpack_unpack((const char *)orig->data, orig->len, &off, &z, &a),
                     MSGPACK_UNPACK_SUCCESS);
    off = 0;
    assert_int_equal(msgpack_unpack((const char *)keyed->data, keyed->len, &off, &z, &b),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, keyed->len);
    assert_int_equal(b.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(b.via.map.size, entries + 1);
    for (uint32_t i = 0; i < entries; i++) {
        assert_true(msgpack_object_equal(a.via.map.ptr[i].key, b.via.map.ptr[i].key));
        assert_true(msgpack_object_equal(a.via.map.ptr[i].val, b.via.map.ptr[i].val));
    }
    const msgpack_object_kv *kv = &b.via.map.ptr[entries];
    assert_int_equal(kv->key.type, MSGPACK_OBJECT_STR);
    assert_memory_equal(kv->key.via.str.ptr, "idem", 4);
    assert_int_equal(kv->val.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(kv->val.via.array.size, 4);
    const msgpack_object *f = kv->val.via.array.ptr;
    assert_int_equal(f[0].type, MSGPACK_OBJECT_BIN);
    assert_int_equal(f[0].via.bin.size, KEYS_CLIENT_LEN);
    assert_memory_equal(f[0].via.bin.ptr, ID, KEYS_CLIENT_LEN);
    assert_int_equal(f[1].via.u64, seq);
    assert_int_equal(f[2].via.u64, ack);
    assert_int_equal(f[3].type, MSGPACK_OBJECT_BOOLEAN);
    assert_int_equal(f[3].via.boolean, retry);
    msgpack_zone_destroy(&z);
}

static void test_keys_wrap_fixmap_and_map16(void **state)
{
    (void)state;
    struct buf cmd, out;
    buf_init(&cmd);
    buf_init(&out);
    /* 3 entries (fixmap), 15 (fixmap that becomes a map 16), 40 (map 16). */
    static const uint32_t extras[] = {0, 12, 37};
    for (size_t i = 0; i < 3; i++) {
        make_put(&cmd, extras[i]);
        struct keys_cmd k;
        keys_inspect(cmd.data, cmd.len, &k);
        assert_true(k.ok);
        assert_false(k.has_idem);
        assert_int_equal(k.entries, 3 + extras[i]);
        assert_int_equal(keys_wrap(cmd.data, cmd.len, &k, ID, 7 + i, 5, i == 1, &out), 0);
        check_keyed(&cmd, &out, 3 + extras[i], 7 + i, 5, i == 1);
    }
    buf_close(&cmd);
    buf_close(&out);
}

static void test_keys_passthrough(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out);
    struct keys_cmd k;
    /* Not a map, trailing bytes, truncated: sent as they are (the server rejects them). */
    static const uint8_t arr[] = {0x91, 0x01};
    static const uint8_t trailing[] = {0x80, 0x00};
    static const uint8_t cut[] = {0x81, 0xa2, 'o'};
    const struct {
        const uint8_t *p;
        size_t n;
    } cases[] = {{arr, sizeof arr}, {trailing, sizeof trailing}, {cut, sizeof cut}};
    for (size_t i = 0; i < 3; i++) {
        keys_inspect(cases[i].p, cases[i].n, &k);
        assert_false(k.ok);
        assert_int_equal(keys_wrap(cases[i].p, cases[i].n, &k, ID, 1, 1, false, &out), 0);
        assert_int_equal(out.len, cases[i].n);
        assert_memory_equal(out.data, cases[i].p, cases[i].n);
    }
    /* A command with its own idem is the program's: unchanged. */
    struct buf cmd;
    buf_init(&cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, buf_w);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, "event.append", 12);
    msgpack_pack_str_with_body(&pk, "idem", 4);
    msgpack_pack_nil(&pk);
    keys_inspect(cmd.data, cmd.len, &k);
    assert_true(k.ok && k.has_idem);
    assert_int_equal(keys_wrap(cmd.data, cmd.len, &k, ID, 1, 1, true, &out), 0);
    assert_int_equal(out.len, cmd.len);
    assert_memory_equal(out.data, cmd.data, cmd.len);
    buf_close(&cmd);
    buf_close(&out);
}

/* The engine takes the keyed bytes: a resend (retry true) gets the same answer and does
 * not apply again. */
static void test_keys_engine_answers_resend_once(void **state)
{
    (void)state;
    struct storage *s;
    assert_int_equal(storage_new(NULL, &s), 0);
    struct buf cmd, keyed, r1, r2;
    buf_init(&cmd);
    buf_init(&keyed);
    buf_init(&r1);
    buf_init(&r2);
    make_put(&cmd, 0);
    struct keys_cmd k;
    keys_inspect(cmd.data, cmd.len, &k);
    struct err err;
    assert_int_equal(keys_wrap(cmd.data, cmd.len, &k, ID, 3, 3, false, &keyed), 0);
    assert_int_equal(storage_exec(s, keyed.data, keyed.len, 1000, &r1, &err), 0);
    assert_int_equal(keys_wrap(cmd.data, cmd.len, &k, ID, 3, 3, true, &keyed), 0);
    assert_int_equal(storage_exec(s, keyed.data, keyed.len, 2000, &r2, &err), 0);
    assert_int_equal(r1.len, r2.len);
    assert_memory_equal(r1.data, r2.data, r1.len);
    assert_int_equal(storage_version(s), 1);
    storage_free(s);
    buf_close(&cmd);
    buf_close(&keyed);
    buf_close(&r1);
    buf_close(&r2);
}

static void test_keys_client_ids_differ(void **state)
{
    (void)state;
    uint8_t a[KEYS_CLIENT_LEN], b[KEYS_CLIENT_LEN];
    struct err err;
    assert_int_equal(keys_client_id(a, &err), 0);
    assert_int_equal(keys_client_id(b, &err), 0);
    assert_memory_not_equal(a, b, KEYS_CLIENT_LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_wrap_fixmap_and_map16),
        cmocka_unit_test(test_keys_passthrough),
        cmocka_unit_test(test_keys_engine_answers_resend_once),
        cmocka_unit_test(test_keys_client_ids_differ),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
