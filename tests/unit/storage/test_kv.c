/* KV primitive, values, versions and time travel. */
#include "helpers.h"

#include <stdio.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

static void test_kv_put_get_roundtrip(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "{\"version\":1,\"ts\":1000}", "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":\"x\"}");
    EXPECT(s, "{\"value\":\"x\",\"version\":1,\"ts\":1000}", "{\"op\":\"kv.get\",\"key\":\"a\"}");
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"missing\"}");
    assert_int_equal(storage_version(s), 1);
}

static void test_kv_put_all_value_types(void **state)
{
    struct storage *s = *state;
    const char *vals[] = {"null", "true", "false", "0", "-9223372036854775808",
                          "9223372036854775807", "1.5", "\"\"", "{\"$bytes\":\"AAEC\"}",
                          "[1,[2,[3]]]", "{\"a\":{\"b\":[1.0,\"c\"]}}"};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        OK(s, "{\"op\":\"kv.put\",\"key\":\"k%zu\",\"value\":%s}", i, vals[i]);
        const char *got = OK(s, "{\"op\":\"kv.get\",\"key\":\"k%zu\"}", i);
        char want[256];
        snprintf(want, sizeof want, "{\"value\":%s,", vals[i]);
        assert_non_null(strstr(got, want));
    }
}

static void test_kv_int_and_float_are_distinct(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"i\",\"value\":1}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"f\",\"value\":1.0}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"i\"}"), "\"value\":1,"));
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"f\"}"), "\"value\":1.0,"));
}

static void test_kv_bad_input(void **state)
{
    struct storage *s = *state;
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":\"\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":5,\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":\"a\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.nope\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"noop\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "[1,2]");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"kv.get\",\"branch\":\"nope\",\"key\":\"a\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.get\",\"space\":\"Bad Space\",\"key\":\"a\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1,\"at_version\":1}");
    /* Nothing above wrote anything. */
    assert_int_equal(storage_version(s), 0);
}

static void test_kv_limits(void **state)
{
    struct storage_config cfg;
    storage_config_default(&cfg);
    cfg.max_value_bytes = 100;
    cfg.max_depth = 3;
    struct storage *s;
    assert_int_equal(storage_new(&cfg, &s), 0);
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":\"%s\"}", big);
    assert_non_null(strstr(msg, "limit of 100 bytes"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":[[[[1]]]]}");
    assert_non_null(strstr(msg, "nesting"));
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":[[1]]}");
    char key[1100];
    memset(key, 'k', 1025);
    key[1025] = 0;
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":1}", key);
    assert_non_null(strstr(msg, "key limit"));
    key[1024] = 0;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":1}", key);
    storage_free(s);
}

static void test_kv_nesting_and_utf8_limits(void **state)
{
    struct storage *s = *state;
    /* 24 levels are allowed, 25 are not (msgpack-c decodes 32: docs/architecture.md). */
    char v[200] = "", close[200] = "";
    for (int i = 0; i < 23; i++) {
        strcat(v, "[");
        strcat(close, "]");
    }
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":%s1%s}", v, close);
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":[%s1%s]}", v, close);
    assert_non_null(strstr(msg, "nesting exceeds the limit of 24"));
    /* Deeper than the decoder can go: still a clear INVALID_ARGUMENT. */
    char deep[100] = "", deepc[100] = "";
    for (int i = 0; i < 40; i++) {
        strcat(deep, "[");
        strcat(deepc, "]");
    }
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":%s1%s}", deep, deepc);
    assert_non_null(strstr(msg, "32 levels"));
    assert_int_equal(storage_version(s), 1);
    /* Keys must be UTF-8; an op name with a NUL byte is just an unknown command. */
    struct buf res;
    buf_init(&res);
    struct err err;
    const uint8_t badkey[] = {0x83, 0xa2, 'o', 'p', 0xa6, 'k', 'v', '.', 'p', 'u', 't',
                              0xa3, 'k', 'e', 'y', 0xa2, 0xc3, 0x28,
                              0xa5, 'v', 'a', 'l', 'u', 'e', 0x01};
    assert_int_equal(storage_exec(s, badkey, sizeof badkey, 1, &res, &err), STRATA_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, "UTF-8"));
    const uint8_t nulop[] = {0x81, 0xa2, 'o', 'p', 0xa6, 'k', 'v', '.', 'g', 0x00, 't'};
    assert_int_equal(storage_exec(s, nulop, sizeof nulop, 1, &res, &err), STRATA_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, "unknown command"));
    assert_int_equal(res.len, 0);
    buf_close(&res);
}

/* The hash index grows incrementally (old table drained 128 slots per insert): every
 * key must stay readable through many growths, and no table may leak (ASan run). */
static void test_kv_many_keys_survive_index_growth(void **state)
{
    struct storage *s = *state;
    char items[64 * 40];
    for (int base = 0; base < 20000; base += 64) {
        size_t n = 0;
        for (int j = base; j < base + 64; j++)
            n += (size_t)snprintf(items + n, sizeof items - n, "%s[\"key%06d\",%d]",
                                  j > base ? "," : "", j, j);
        OK(s, "{\"op\":\"kv.batch_put\",\"items\":[%s]}", items);
        /* Read back keys from every earlier batch while tables are being drained. */
        int probe = (base * 7919) % (base + 64);
        char want[64];
        snprintf(want, sizeof want, "{\"value\":%d,", probe);
        const char *got = OK(s, "{\"op\":\"kv.get\",\"key\":\"key%06d\"}", probe);
        assert_int_equal(strncmp(got, want, strlen(want)), 0);
    }
    for (int j = 0; j < 20032; j += 997) {
        char want[64];
        snprintf(want, sizeof want, "{\"value\":%d,", j);
        const char *got = OK(s, "{\"op\":\"kv.get\",\"key\":\"key%06d\"}", j);
        assert_int_equal(strncmp(got, want, strlen(want)), 0);
    }
    EXPECT(s, "20032", "{\"op\":\"kv.count\"}");
}

static void test_kv_raw_msgpack_rejections(void **state)
{
    struct storage *s = *state;
    struct buf res;
    buf_init(&res);
    struct err err;
    /* Truncated msgpack. */
    const uint8_t trunc[] = {0x82, 0xa2, 'o', 'p'};
    assert_int_equal(storage_exec(s, trunc, sizeof trunc, 1, &res, &err), STRATA_PROTOCOL_ERROR);
    /* uint64 above INT64_MAX as a value. */
    const uint8_t big[] = {0x83, 0xa2, 'o', 'p', 0xa6, 'k', 'v', '.', 'p', 'u', 't',
                           0xa3, 'k', 'e', 'y', 0xa1, 'a', 0xa5, 'v', 'a', 'l', 'u', 'e',
                           0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(storage_exec(s, big, sizeof big, 1, &res, &err), STRATA_INVALID_ARGUMENT);
    /* Invalid UTF-8 in a string value. */
    const uint8_t utf[] = {0x83, 0xa2, 'o', 'p', 0xa6, 'k', 'v', '.', 'p', 'u', 't',
                           0xa3, 'k', 'e', 'y', 0xa1, 'a', 0xa5, 'v', 'a', 'l', 'u', 'e',
                           0xa2, 0xc3, 0x28};
    assert_int_equal(storage_exec(s, utf, sizeof utf, 1, &res, &err), STRATA_INVALID_ARGUMENT);
    /* An ext value. */
    const uint8_t ext[] = {0x83, 0xa2, 'o', 'p', 0xa6, 'k', 'v', '.', 'p', 'u', 't',
                           0xa3, 'k', 'e', 'y', 0xa1, 'a', 0xa5, 'v', 'a', 'l', 'u', 'e',
                           0xd4, 0x01, 0x00};
    assert_int_equal(storage_exec(s, ext, sizeof ext, 1, &res, &err), STRATA_INVALID_ARGUMENT);
    assert_int_equal(res.len, 0);
    assert_int_equal(storage_version(s), 0);
    buf_close(&res);
}

static void test_kv_time_travel(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}"); /* v1 ts 1000 */
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":2}"); /* v2 ts 2000 */
    OK(s, "{\"op\":\"kv.delete\",\"key\":\"a\"}");           /* v3 ts 3000 */
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":4}"); /* v4 ts 4000 */
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"a\",\"at_version\":0}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"a\",\"at_version\":1}"), "\"value\":1,"));
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"a\",\"at_version\":2}"), "\"value\":2,"));
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"a\",\"at_version\":3}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"a\",\"as_of\":2500}"), "\"value\":2,"));
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"a\",\"as_of\":999}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"a\"}"), "\"value\":4,"));
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.get\",\"key\":\"a\",\"as_of\":1,\"at_version\":1}");
    EXPECT(s,
           "[{\"value\":4,\"deleted\":false,\"version\":4,\"ts\":4000},"
           "{\"value\":null,\"deleted\":true,\"version\":3,\"ts\":3000},"
           "{\"value\":2,\"deleted\":false,\"version\":2,\"ts\":2000},"
           "{\"value\":1,\"deleted\":false,\"version\":1,\"ts\":1000}]",
           "{\"op\":\"kv.history\",\"key\":\"a\"}");
}

static void test_kv_timestamps_never_go_back(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    t_set_ts(0); /* the caller's clock steps back */
    EXPECT(s, "{\"version\":2,\"ts\":1001}", "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":2}");
}

static void test_kv_delete_absent_writes_nothing(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"kv.delete\",\"key\":\"nope\"}");
    assert_int_equal(storage_version(s), 0);
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    EXPECT(s, "{\"version\":2,\"ts\":3000,\"deleted\":true}", "{\"op\":\"kv.delete\",\"key\":\"a\"}");
    EXPECT(s, "false", "{\"op\":\"kv.exists\",\"key\":\"a\"}");
}

static void test_kv_list_prefix_cursor(void **state)
{
    struct storage *s = *state;
    for (int i = 0; i < 25; i++)
        OK(s, "{\"op\":\"kv.put\",\"key\":\"user:%02d\",\"value\":%d}", i, i);
    OK(s, "{\"op\":\"kv.put\",\"key\":\"other\",\"value\":0}");
    OK(s, "{\"op\":\"kv.delete\",\"key\":\"user:03\"}");
    EXPECT(s, "{\"keys\":[\"user:00\",\"user:01\",\"user:02\",\"user:04\"],\"cursor\":\"user:04\"}",
           "{\"op\":\"kv.list\",\"prefix\":\"user:\",\"limit\":4}");
    EXPECT(s, "{\"keys\":[\"user:05\",\"user:06\"],\"cursor\":\"user:06\"}",
           "{\"op\":\"kv.list\",\"prefix\":\"user:\",\"limit\":2,\"cursor\":\"user:04\"}");
    EXPECT(s, "{\"keys\":[\"user:23\",\"user:24\"],\"cursor\":null}",
           "{\"op\":\"kv.list\",\"prefix\":\"user:\",\"limit\":5,\"cursor\":\"user:22\"}");
    EXPECT(s, "24", "{\"op\":\"kv.count\",\"prefix\":\"user:\"}");
    EXPECT(s, "25", "{\"op\":\"kv.count\"}");
    EXPECT(s, "{\"items\":[[\"user:00\",0],[\"user:01\",1]],\"cursor\":\"user:01\"}",
           "{\"op\":\"kv.scan\",\"prefix\":\"user:\",\"limit\":2}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.list\",\"limit\":0}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.list\",\"limit\":100000}");
}

static void test_kv_batch_ops_are_one_version(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "{\"version\":1,\"ts\":1000,\"count\":3}",
           "{\"op\":\"kv.batch_put\",\"items\":[[\"a\",1],[\"b\",2],[\"c\",3]]}");
    EXPECT(s, "[{\"value\":1,\"version\":1,\"ts\":1000},null]",
           "{\"op\":\"kv.batch_get\",\"keys\":[\"a\",\"zz\"]}");
    EXPECT(s, "{\"version\":2,\"ts\":3000,\"deleted\":2}",
           "{\"op\":\"kv.batch_delete\",\"keys\":[\"a\",\"b\",\"nope\"]}");
    EXPECT(s, "{\"count\":0}", "{\"op\":\"kv.batch_put\",\"items\":[]}");
    assert_int_equal(storage_version(s), 2);
    /* One bad item rejects the whole batch. */
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"kv.batch_put\",\"items\":[[\"x\",1],[\"\",2]]}");
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"x\"}");
}

static void test_batch_command_atomic(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "[{\"version\":1,\"ts\":1000},{\"version\":1,\"ts\":1000}]",
           "{\"op\":\"batch\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1},"
           "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":2,\"space\":\"other\"}]}");
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"b\"}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"b\",\"space\":\"other\"}"), "\"value\":2"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"batch\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1},"
          "{\"op\":\"kv.get\",\"key\":\"a\"}]}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"batch\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1},"
          "{\"op\":\"kv.put\",\"key\":\"\",\"value\":1}]}");
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"c\"}");
    assert_int_equal(storage_version(s), 1);
}

static void test_spaces(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "[\"default\"]", "{\"op\":\"space.list\"}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1,\"space\":\"s1\"}");
    EXPECT(s, "{\"version\":2,\"ts\":3000,\"created\":true}", "{\"op\":\"space.create\",\"space\":\"s0\"}");
    EXPECT(s, "{\"created\":false}", "{\"op\":\"space.create\",\"space\":\"s0\"}");
    EXPECT(s, "[\"default\",\"s0\",\"s1\"]", "{\"op\":\"space.list\"}");
    OK(s, "{\"op\":\"space.delete\",\"space\":\"s1\"}");
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"a\",\"space\":\"s1\"}");
    EXPECT(s, "[\"default\",\"s0\"]", "{\"op\":\"space.list\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"space.delete\",\"space\":\"default\"}");
    FAILS(s, STRATA_NOT_FOUND, "{\"op\":\"space.delete\",\"space\":\"nope\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"space.create\",\"space\":\"9x\"}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kv_put_get_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_put_all_value_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_int_and_float_are_distinct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_raw_msgpack_rejections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_nesting_and_utf8_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_many_keys_survive_index_growth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_time_travel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_timestamps_never_go_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_delete_absent_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_list_prefix_cursor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_batch_ops_are_one_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_command_atomic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spaces, setup, teardown),
    };
    return cmocka_run_group_tests_name("storage_kv", tests, NULL, NULL);
}
