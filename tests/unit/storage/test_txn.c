/* Optimistic transactions: snapshot reads, read-set validation, blind writes. */
#include "helpers.h"

#include <string.h>

#define setup t_setup
#define teardown t_teardown

static void test_txn_commit_applies_all_ops_at_one_version(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    EXPECT(s, "{\"snapshot\":1}", "{\"op\":\"txn.begin\"}");
    EXPECT(s,
           "{\"version\":2,\"ts\":3000,\"results\":[{\"version\":2,\"ts\":3000},"
           "{\"version\":2,\"ts\":3000}]}",
           "{\"op\":\"txn.commit\",\"snapshot\":1,"
           "\"reads\":[{\"op\":\"kv.get\",\"key\":\"a\"}],"
           "\"ops\":[{\"op\":\"kv.put\",\"key\":\"a\",\"value\":2},"
           "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":3}]}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"b\"}"), "\"version\":2"));
}

static void test_txn_commit_conflicts_when_read_key_changed(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":5}"); /* v2, after snapshot 1 */
    const char *msg = FAILS(s, STRATA_CONFLICT,
                            "{\"op\":\"txn.commit\",\"snapshot\":1,"
                            "\"reads\":[{\"op\":\"kv.get\",\"key\":\"a\"}],"
                            "\"ops\":[{\"op\":\"kv.put\",\"key\":\"c\",\"value\":2}]}");
    assert_non_null(strstr(msg, "'a'"));
    EXPECT(s, "null", "{\"op\":\"kv.get\",\"key\":\"c\"}");
    assert_int_equal(storage_version(s), 2);
}

static void test_txn_blind_writes_never_conflict(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":5}");
    OK(s, "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[],"
          "\"ops\":[{\"op\":\"kv.put\",\"key\":\"a\",\"value\":9}]}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"a\"}"), "\"value\":9"));
}

static void test_txn_read_of_absent_key_conflicts_when_created(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"x\",\"value\":1}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"new\",\"value\":1,\"space\":\"sp\"}");
    /* Read in another space at snapshot 1 of a key created later in that space. */
    FAILS(s, STRATA_CONFLICT,
          "{\"op\":\"txn.commit\",\"snapshot\":1,"
          "\"reads\":[{\"op\":\"kv.exists\",\"key\":\"new\",\"space\":\"sp\"}],\"ops\":[]}");
    /* Same key name in the default space was never written: no conflict. */
    OK(s, "{\"op\":\"txn.commit\",\"snapshot\":1,"
          "\"reads\":[{\"op\":\"kv.get\",\"key\":\"new\"},"
          "{\"op\":\"kv.batch_get\",\"keys\":[\"x\"]}],\"ops\":[]}");
}

static void test_txn_on_fork_ignores_parent_changes(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    EXPECT(s, "{\"snapshot\":1}", "{\"op\":\"txn.begin\",\"branch\":\"f\"}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":2}"); /* parent only */
    OK(s, "{\"op\":\"txn.commit\",\"branch\":\"f\",\"snapshot\":1,"
          "\"reads\":[{\"op\":\"kv.get\",\"key\":\"a\"}],"
          "\"ops\":[{\"op\":\"kv.put\",\"key\":\"a\",\"value\":3}]}");
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"a\",\"branch\":\"f\"}"), "\"value\":3"));
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"a\"}"), "\"value\":2"));
}

static void test_txn_without_writes_takes_no_version(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    EXPECT(s, "{\"results\":[{\"deleted\":false}]}",
           "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[{\"op\":\"kv.get\",\"key\":\"a\"}],"
           "\"ops\":[{\"op\":\"kv.delete\",\"key\":\"nope\"}]}");
    assert_int_equal(storage_version(s), 1);
    EXPECT(s, "{\"version\":2,\"ts\":3000}", "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":1}");
    /* Conflict messages name event logs readably. */
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}}");
    const char *msg = FAILS(s, STRATA_CONFLICT,
                            "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[{\"op\":\"event.len\"}],\"ops\":[]}");
    assert_non_null(strstr(msg, "the event log in space 'default'"));
    msg = FAILS(s, STRATA_CONFLICT,
                "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[{\"op\":\"event.get\",\"seq\":1}],\"ops\":[]}");
    assert_non_null(strstr(msg, "event 1 in space"));
}

static void test_txn_bad_input(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"txn.commit\",\"ops\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"txn.commit\",\"snapshot\":99,\"ops\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"txn.commit\",\"snapshot\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[{\"op\":\"kv.put\",\"key\":\"a\"}],"
          "\"ops\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[{\"op\":\"kv.get\"}],\"ops\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"txn.commit\",\"snapshot\":1,\"ops\":[{\"op\":\"branch.create\",\"name\":\"x\"}]}");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"other\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"txn.commit\",\"snapshot\":1,"
          "\"reads\":[{\"op\":\"kv.get\",\"key\":\"a\",\"branch\":\"other\"}],\"ops\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"txn.commit\",\"snapshot\":1,"
          "\"ops\":[{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1,\"branch\":\"other\"}]}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"txn.begin\",\"branch\":\"nope\"}");
    assert_int_equal(storage_version(s), 1);
}

static void test_txn_branch_recreated_after_snapshot_conflicts(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"b\"}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":2}");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    FAILS(s, STRATA_CONFLICT,
          "{\"op\":\"txn.commit\",\"branch\":\"b\",\"snapshot\":1,\"ops\":[]}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_txn_commit_applies_all_ops_at_one_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_commit_conflicts_when_read_key_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_blind_writes_never_conflict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_read_of_absent_key_conflicts_when_created, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_on_fork_ignores_parent_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_without_writes_takes_no_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_branch_recreated_after_snapshot_conflicts, setup, teardown),
    };
    return cmocka_run_group_tests_name("storage_txn", tests, NULL, NULL);
}
