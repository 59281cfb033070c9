/* State cells: set / get / init / cas / delete / list / history, counters and
 * compare-and-swap, batches, time travel and bad input. */
#include "helpers.h"

#include <stdio.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

static void test_state_set_get_roundtrip(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "{\"version\":1,\"ts\":1000,\"counter\":1}",
           "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":{\"n\":1}}");
    EXPECT(s, "{\"value\":{\"n\":1},\"counter\":1,\"version\":1,\"ts\":1000}",
           "{\"op\":\"state.get\",\"cell\":\"c\"}");
    EXPECT(s, "{\"version\":2,\"ts\":3000,\"counter\":2}",
           "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":[1,2.5,\"x\",null]}");
    EXPECT(s, "{\"value\":[1,2.5,\"x\",null],\"counter\":2,\"version\":2,\"ts\":3000}",
           "{\"op\":\"state.get\",\"cell\":\"c\"}");
    EXPECT(s, "null", "{\"op\":\"state.get\",\"cell\":\"missing\"}");
    assert_int_equal(storage_version(s), 2);
}

static void test_state_set_same_value_still_counts(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":7}");
    EXPECT(s, "{\"version\":2,\"ts\":2000,\"counter\":2}",
           "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":7}");
}

static void test_state_init_only_when_absent(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "{\"version\":1,\"ts\":1000,\"counter\":1}",
           "{\"op\":\"state.init\",\"cell\":\"c\",\"value\":\"first\"}");
    const char *msg = FAILS(s, STRATA_ALREADY_EXISTS,
                            "{\"op\":\"state.init\",\"cell\":\"c\",\"value\":\"second\"}");
    assert_non_null(strstr(msg, "'c' already exists"));
    assert_int_equal(storage_version(s), 1);
    assert_non_null(strstr(OK(s, "{\"op\":\"state.get\",\"cell\":\"c\"}"), "\"value\":\"first\""));
    /* After a delete the cell is absent again: init works and the counter restarts. */
    OK(s, "{\"op\":\"state.delete\",\"cell\":\"c\"}");
    EXPECT(s, "{\"version\":3,\"ts\":5000,\"counter\":1}",
           "{\"op\":\"state.init\",\"cell\":\"c\",\"value\":\"third\"}");
}

static void test_state_cas_success_and_failure(void **state)
{
    struct storage *s = *state;
    /* Absent counts as counter 0. */
    EXPECT(s, "{\"version\":1,\"ts\":1000,\"counter\":1}",
           "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":0,\"value\":\"a\"}");
    EXPECT(s, "{\"version\":2,\"ts\":2000,\"counter\":2}",
           "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":1,\"value\":\"b\"}");
    /* A stale counter fails, names both counters and writes nothing. */
    const char *msg =
        FAILS(s, STRATA_CONFLICT,
              "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":1,\"value\":\"x\"}");
    assert_non_null(strstr(msg, "expected counter 1"));
    assert_non_null(strstr(msg, "current counter is 2"));
    assert_int_equal(storage_version(s), 2);
    EXPECT(s, "{\"value\":\"b\",\"counter\":2,\"version\":2,\"ts\":2000}",
           "{\"op\":\"state.get\",\"cell\":\"c\"}");
    /* A future counter fails too. */
    FAILS(s, STRATA_CONFLICT,
          "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":3,\"value\":\"x\"}");
    /* On an absent cell only 0 matches. */
    msg = FAILS(s, STRATA_CONFLICT,
                "{\"op\":\"state.cas\",\"cell\":\"new\",\"expected_counter\":1,\"value\":1}");
    assert_non_null(strstr(msg, "current counter is 0"));
    EXPECT(s, "null", "{\"op\":\"state.get\",\"cell\":\"new\"}");
    assert_int_equal(storage_version(s), 2);
}

static void test_state_delete(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"state.delete\",\"cell\":\"nope\"}");
    assert_int_equal(storage_version(s), 0);
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":1}");
    EXPECT(s, "{\"version\":2,\"ts\":3000,\"deleted\":true}",
           "{\"op\":\"state.delete\",\"cell\":\"c\"}");
    EXPECT(s, "null", "{\"op\":\"state.get\",\"cell\":\"c\"}");
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"state.delete\",\"cell\":\"c\"}");
    assert_int_equal(storage_version(s), 2);
    /* set after delete starts from counter 1 again. */
    EXPECT(s, "{\"version\":3,\"ts\":6000,\"counter\":1}",
           "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":2}");
}

static void test_state_list_and_prefix(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"state.set\",\"cell\":\"job:2\",\"value\":1}");
    OK(s, "{\"op\":\"state.set\",\"cell\":\"job:1\",\"value\":1}");
    OK(s, "{\"op\":\"state.set\",\"cell\":\"lock\",\"value\":1}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"job:9\",\"value\":1}"); /* another primitive */
    OK(s, "{\"op\":\"state.set\",\"cell\":\"other\",\"value\":1,\"space\":\"s2\"}");
    EXPECT(s, "{\"keys\":[\"job:1\",\"job:2\",\"lock\"],\"cursor\":null}",
           "{\"op\":\"state.list\"}");
    EXPECT(s, "{\"keys\":[\"job:1\"],\"cursor\":\"job:1\"}",
           "{\"op\":\"state.list\",\"prefix\":\"job:\",\"limit\":1}");
    EXPECT(s, "{\"keys\":[\"other\"],\"cursor\":null}", "{\"op\":\"state.list\",\"space\":\"s2\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.list\",\"limit\":0}");
}

static void test_state_history(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":\"a\"}");
    OK(s, "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":1,\"value\":\"b\"}");
    OK(s, "{\"op\":\"state.delete\",\"cell\":\"c\"}");
    EXPECT(s,
           "[{\"value\":null,\"deleted\":true,\"version\":3,\"ts\":3000},"
           "{\"value\":\"b\",\"counter\":2,\"deleted\":false,\"version\":2,\"ts\":2000},"
           "{\"value\":\"a\",\"counter\":1,\"deleted\":false,\"version\":1,\"ts\":1000}]",
           "{\"op\":\"state.history\",\"cell\":\"c\"}");
    EXPECT(s, "[{\"value\":\"b\",\"counter\":2,\"deleted\":false,\"version\":2,\"ts\":2000}]",
           "{\"op\":\"state.history\",\"cell\":\"c\",\"at_version\":2,\"limit\":1}");
    EXPECT(s, "[]", "{\"op\":\"state.history\",\"cell\":\"none\"}");
}

static void test_state_time_travel(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":1}"); /* v1 ts 1000 */
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":2}"); /* v2 ts 2000 */
    OK(s, "{\"op\":\"state.delete\",\"cell\":\"c\"}");          /* v3 ts 3000 */
    EXPECT(s, "null", "{\"op\":\"state.get\",\"cell\":\"c\",\"at_version\":0}");
    EXPECT(s, "{\"value\":1,\"counter\":1,\"version\":1,\"ts\":1000}",
           "{\"op\":\"state.get\",\"cell\":\"c\",\"at_version\":1}");
    EXPECT(s, "{\"value\":2,\"counter\":2,\"version\":2,\"ts\":2000}",
           "{\"op\":\"state.get\",\"cell\":\"c\",\"as_of\":2500}");
    EXPECT(s, "null", "{\"op\":\"state.get\",\"cell\":\"c\"}");
    EXPECT(s, "{\"keys\":[\"c\"],\"cursor\":null}", "{\"op\":\"state.list\",\"at_version\":2}");
    EXPECT(s, "{\"keys\":[],\"cursor\":null}", "{\"op\":\"state.list\"}");
}

static void test_state_batch_chains_counters(void **state)
{
    struct storage *s = *state;
    /* Later ops of a batch see the earlier ones' staged writes. */
    EXPECT(s,
           "[{\"version\":1,\"ts\":1000,\"counter\":1},{\"version\":1,\"ts\":1000,\"counter\":2},"
           "{\"version\":1,\"ts\":1000,\"counter\":3}]",
           "{\"op\":\"batch\",\"ops\":[{\"op\":\"state.init\",\"cell\":\"c\",\"value\":0},"
           "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":1,\"value\":1},"
           "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":2}]}");
    EXPECT(s, "{\"value\":2,\"counter\":3,\"version\":1,\"ts\":1000}",
           "{\"op\":\"state.get\",\"cell\":\"c\"}");
    /* A failing CAS inside a batch rejects the whole batch. */
    const char *msg =
        FAILS(s, STRATA_CONFLICT,
              "{\"op\":\"batch\",\"ops\":[{\"op\":\"state.set\",\"cell\":\"d\",\"value\":1},"
              "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":1,\"value\":9}]}");
    assert_non_null(strstr(msg, "op 1:"));
    EXPECT(s, "null", "{\"op\":\"state.get\",\"cell\":\"d\"}");
    /* delete then init in one batch: the cell is absent for the init. */
    EXPECT(
        s,
        "[{\"version\":2,\"ts\":5000,\"deleted\":true},{\"version\":2,\"ts\":5000,\"counter\":1}]",
        "{\"op\":\"batch\",\"ops\":[{\"op\":\"state.delete\",\"cell\":\"c\"},"
        "{\"op\":\"state.init\",\"cell\":\"c\",\"value\":\"again\"}]}");
    assert_int_equal(storage_version(s), 2);
}

static void test_state_branches_and_spaces_are_separate(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":\"main\"}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    EXPECT(s, "{\"value\":\"main\",\"counter\":1,\"version\":1,\"ts\":1000}",
           "{\"op\":\"state.get\",\"cell\":\"c\",\"branch\":\"f\"}");
    EXPECT(s, "{\"version\":2,\"ts\":4000,\"counter\":2}",
           "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":1,\"value\":\"fork\","
           "\"branch\":\"f\"}");
    assert_non_null(strstr(OK(s, "{\"op\":\"state.get\",\"cell\":\"c\"}"), "\"value\":\"main\""));
    EXPECT(s, "null", "{\"op\":\"state.get\",\"cell\":\"c\",\"space\":\"other\"}");
    EXPECT(s, "{\"version\":3,\"ts\":7000,\"counter\":1}",
           "{\"op\":\"state.init\",\"cell\":\"c\",\"value\":1,\"space\":\"other\"}");
}

static void test_state_bad_input(void **state)
{
    struct storage *s = *state;
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.set\",\"value\":1}");
    assert_non_null(strstr(msg, "'cell'"));
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.set\",\"cell\":\"\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.set\",\"cell\":3,\"value\":1}");
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.set\",\"cell\":\"c\"}");
    assert_non_null(strstr(msg, "'value'"));
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.init\",\"cell\":\"c\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.init\",\"value\":1}");
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.cas\",\"cell\":\"c\",\"value\":1}");
    assert_non_null(strstr(msg, "'expected_counter'"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":-1,\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":\"0\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":0}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.get\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.get\",\"cell\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.delete\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.history\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"state.get\",\"cell\":\"c\",\"branch\":\"nope\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND,
          "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":1,\"branch\":\"nope\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":1,\"at_version\":0}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":1,\"space\":\"Bad\"}");
    char key[1100];
    memset(key, 'k', 1025);
    key[1025] = 0;
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.set\",\"cell\":\"%s\",\"value\":1}",
                key);
    assert_non_null(strstr(msg, "key limit"));
    assert_int_equal(storage_version(s), 0);
}

static void test_state_value_limits(void **state)
{
    (void)state;
    struct storage_config cfg;
    storage_config_default(&cfg);
    cfg.max_value_bytes = 64;
    cfg.max_depth = 2;
    struct storage *s;
    assert_int_equal(storage_new(&cfg, &s), 0);
    char big[100];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    const char *msg =
        FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":\"%s\"}", big);
    assert_non_null(strstr(msg, "limit of 64 bytes"));
    msg =
        FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"state.init\",\"cell\":\"c\",\"value\":[[1]]}");
    assert_non_null(strstr(msg, "nesting"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":0,\"value\":\"%s\"}", big);
    assert_int_equal(storage_version(s), 0);
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":[1]}");
    storage_free(s);
}

/* Every allocation failure inside a CAS is OUT_OF_MEMORY and changes nothing. */
static void test_state_cas_out_of_memory_changes_nothing(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":1}");
    const char *json = "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":1,"
                       "\"value\":{\"big\":[1,2,3]}}";
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    struct err err;
    assert_int_equal(storage_json_to_value(json, strlen(json), &cmd, &err), 0);
    int rc = STRATA_OUT_OF_MEMORY;
    long n;
    for (n = 1; n < 500 && rc; n++) {
        sm_fail_after(n);
        rc = storage_exec(s, cmd.data, cmd.len, 10000 + n, &res, &err);
        sm_fail_after(0);
        if (rc) {
            assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
            assert_int_equal(storage_version(s), 1);
        }
    }
    assert_int_equal(rc, 0);
    assert_true(n > 2);
    buf_close(&cmd);
    buf_close(&res);
    assert_non_null(strstr(OK(s, "{\"op\":\"state.get\",\"cell\":\"c\"}"),
                           "{\"value\":{\"big\":[1,2,3]},\"counter\":2,\"version\":2,"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_state_set_get_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_set_same_value_still_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_init_only_when_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_cas_success_and_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_list_and_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_time_travel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_batch_chains_counters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_branches_and_spaces_are_separate, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_state_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_value_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_cas_out_of_memory_changes_nothing, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("storage_state", tests, NULL, NULL);
}
