/* mp_scan (common/mpscan.c) against msgpack-c: it must accept exactly what msgpack-c
 * unpacks, end where msgpack-c ends, and refuse declared counts the input cannot hold. */
#include "common.h"

#include <msgpack.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static int unpack(const uint8_t *p, size_t len, size_t *off)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    *off = 0;
    int r = msgpack_unpack((const char *)p, len, off, &z, &o);
    msgpack_zone_destroy(&z);
    return r;
}

/* Every MessagePack type and width, nested, packed by msgpack-c itself. */
static void pack_all(msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    static char big[70000];
    memset(big, 'x', sizeof big);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_map(&pk, 17); /* 8 str:bin pairs, 4 + 12 + 2 scalars */
    const size_t lens[] = {0, 5, 31, 32, 255, 256, 65535, 65536};
    for (size_t i = 0; i < 8; i++) {
        msgpack_pack_str_with_body(&pk, big, lens[i]);
        msgpack_pack_bin_with_body(&pk, big, lens[i]);
    }
    msgpack_pack_nil(&pk);
    msgpack_pack_true(&pk);
    msgpack_pack_false(&pk);
    msgpack_pack_float(&pk, 1.5f);
    const int64_t ints[] = {0, 127, 128, 255, 256, 65536, INT64_MAX, -1, -33, -129, -40000,
                            INT64_MIN};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        msgpack_pack_int64(&pk, ints[i]);
    msgpack_pack_double(&pk, 2.25);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    const size_t exts[] = {1, 2, 4, 8, 16, 3, 300, 70000};
    msgpack_pack_array(&pk, 8 + 15);
    for (size_t i = 0; i < 8; i++) {
        msgpack_pack_ext_with_body(&pk, big, exts[i], 7);
    }
    for (int i = 0; i < 15; i++)
        msgpack_pack_array(&pk, 0);
    msgpack_pack_map(&pk, 0); /* the outer array's third element */
}

static void test_mp_scan_agrees_on_every_type(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_all(&sb);
    const uint8_t *p = (const uint8_t *)sb.data;
    struct mp_scan s;
    size_t off;
    assert_int_equal(mp_scan(p, sb.size, 0, &s), MP_SCAN_OK);
    assert_int_equal(unpack(p, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(s.end, off);
    assert_int_equal(s.end, sb.size);
    /* Every strict prefix is cut short for both (checked at a stride: the value is
     * ~600 KB). */
    for (size_t n = 0; n < sb.size; n += n < 4096 ? 1 : 997) {
        int rc = mp_scan(p, n, 0, &s);
        assert_true(rc == MP_SCAN_TRUNCATED || rc == MP_SCAN_TOO_MANY);
        assert_int_equal(unpack(p, n, &off), MSGPACK_UNPACK_CONTINUE);
    }
    /* Trailing bytes: the value ends where msgpack-c says. */
    uint8_t two[] = {0x92, 0x01, 0xa1, 'x', 0xc0, 0xc0};
    assert_int_equal(mp_scan(two, sizeof two, 0, &s), MP_SCAN_OK);
    assert_int_equal(s.end, 4);
    assert_int_equal(mp_scan(two, sizeof two, 4, &s), MP_SCAN_OK);
    assert_int_equal(s.end, 5);
    msgpack_sbuffer_destroy(&sb);
}

static void test_mp_scan_huge_declared_counts(void **state)
{
    (void)state;
    struct mp_scan s;
    const uint8_t a32[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(mp_scan(a32, sizeof a32, 0, &s), MP_SCAN_TOO_MANY);
    assert_int_equal(s.count, 0xffffffffu);
    assert_int_equal(s.room, 0);
    assert_int_equal(s.at, 0);
    /* A map entry takes two bytes: 2 entries need 4, 3 bytes follow. */
    const uint8_t m[] = {0x81, 0xa1, 'k', 0x82, 0x01, 0x02, 0x03};
    assert_int_equal(mp_scan(m, sizeof m, 0, &s), MP_SCAN_TOO_MANY);
    assert_int_equal(s.at, 3);
    assert_int_equal(s.count, 2);
    assert_int_equal(s.room, 3);
    /* A header whose own length bytes are missing. */
    const uint8_t cut[] = {0xdf, 0x00, 0x00};
    assert_int_equal(mp_scan(cut, sizeof cut, 0, &s), MP_SCAN_TRUNCATED);
    const uint8_t str[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    assert_int_equal(mp_scan(str, sizeof str, 0, &s), MP_SCAN_TRUNCATED);
    const uint8_t c1[] = {0x91, 0xc1};
    assert_int_equal(mp_scan(c1, sizeof c1, 0, &s), MP_SCAN_BAD_BYTE);
    assert_int_equal(s.at, 1);
    size_t off;
    assert_int_equal(unpack(c1, sizeof c1, &off), MSGPACK_UNPACK_PARSE_ERROR);
    assert_int_equal(mp_scan(c1, sizeof c1, 2, &s), MP_SCAN_TRUNCATED);
}

/* msgpack-c refuses a container header while 32 are open, empty or not. */
static void test_mp_scan_nesting_limit_matches_msgpack(void **state)
{
    (void)state;
    for (int depth = 30; depth <= 34; depth++) {
        for (int empty = 0; empty < 2; empty++) {
            uint8_t b[40];
            size_t n = 0;
            for (int i = 0; i < depth - 1; i++)
                b[n++] = 0x91;
            b[n++] = empty ? 0x90 : 0x91;
            if (!empty)
                b[n++] = 0x01;
            struct mp_scan s;
            size_t off;
            int rc = mp_scan(b, n, 0, &s);
            int ur = unpack(b, n, &off);
            if (ur == MSGPACK_UNPACK_SUCCESS) {
                assert_int_equal(rc, MP_SCAN_OK);
                assert_int_equal(s.end, n);
            } else {
                assert_int_equal(ur, MSGPACK_UNPACK_NOMEM_ERROR);
                assert_int_equal(rc, MP_SCAN_TOO_DEEP);
            }
            assert_int_equal(rc == MP_SCAN_OK, depth <= 32);
        }
    }
}

static uint64_t rng = 88172645463325252ull;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Random short inputs biased to headers: whatever mp_scan accepts msgpack-c unpacks to
 * the same end; whatever it refuses (but for counts, where msgpack-c is not asked)
 * msgpack-c refuses too. */
static void test_mp_scan_agrees_on_random_input(void **state)
{
    (void)state;
    static const uint8_t picks[] = {0x00, 0x7f, 0x80, 0x81, 0x82, 0x90, 0x91, 0x93, 0xa0, 0xa2,
                                    0xc0, 0xc1, 0xc2, 0xc4, 0xc5, 0xc7, 0xca, 0xcb, 0xcc, 0xcf,
                                    0xd0, 0xd4, 0xd8, 0xd9, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
                                    0x01, 0x02};
    unsigned ok = 0, refused = 0;
    for (int iter = 0; iter < 200000; iter++) {
        uint8_t b[24];
        size_t n = 1 + next_rand() % sizeof b;
        for (size_t i = 0; i < n; i++)
            b[i] = (next_rand() & 3) ? picks[next_rand() % sizeof picks] : (uint8_t)next_rand();
        struct mp_scan s;
        int rc = mp_scan(b, n, 0, &s);
        if (rc == MP_SCAN_TOO_MANY)
            continue;
        size_t off;
        int ur = unpack(b, n, &off);
        if (rc == MP_SCAN_OK) {
            ok++;
            assert_true(ur == MSGPACK_UNPACK_SUCCESS || ur == MSGPACK_UNPACK_EXTRA_BYTES);
            assert_int_equal(off, s.end);
        } else {
            refused++;
            assert_true(ur != MSGPACK_UNPACK_SUCCESS && ur != MSGPACK_UNPACK_EXTRA_BYTES);
        }
    }
    /* Both outcomes were exercised. */
    assert_true(ok > 1000 && refused > 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mp_scan_agrees_on_every_type),
        cmocka_unit_test(test_mp_scan_huge_declared_counts),
        cmocka_unit_test(test_mp_scan_nesting_limit_matches_msgpack),
        cmocka_unit_test(test_mp_scan_agrees_on_random_input),
    };
    return cmocka_run_group_tests_name("mpscan", tests, NULL, NULL);
}
