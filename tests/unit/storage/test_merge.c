/* Branch diff (two-way, three-way) and merge (strict, source_wins) on KV and state data;
 * JSON per-path and event-log merges are covered in test_json.c / test_event.c. */
#include "helpers.h"

#include <stdio.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

#define PUT(s, br, k, v)                                                                           \
    OK(s, "{\"op\":\"kv.put\",\"branch\":\"" br "\",\"key\":\"" k "\",\"value\":" v "}")
#define DEL(s, br, k) OK(s, "{\"op\":\"kv.delete\",\"branch\":\"" br "\",\"key\":\"" k "\"}")
#define FORK(s, src, dst)                                                                          \
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"" src "\",\"name\":\"" dst "\"}")

static void expect_kv(struct storage *s, const char *br, const char *k, const char *v)
{
    const char *got = OK(s, "{\"op\":\"kv.get\",\"branch\":\"%s\",\"key\":\"%s\"}", br, k);
    if (strcmp(v, "null") == 0) {
        assert_string_equal(got, "null");
    } else {
        char want[128];
        snprintf(want, sizeof want, "{\"value\":%s,", v);
        if (strncmp(got, want, strlen(want)) != 0) {
            fprintf(stderr, "%s/%s: want %s got %s\n", br, k, v, got);
            fail();
        }
    }
}

static void test_diff_two_way_fork(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    PUT(s, "default", "b", "2");
    FORK(s, "default", "f");
    PUT(s, "f", "a", "10");
    DEL(s, "f", "b");
    PUT(s, "f", "c", "3");
    PUT(s, "default", "d", "4");
    EXPECT(s,
           "{\"changes\":["
           "{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"a\",\"a\":1,\"b\":10},"
           "{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"b\",\"a\":2,\"b\":null},"
           "{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"c\",\"a\":null,\"b\":3},"
           "{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"d\",\"a\":4,\"b\":null}],"
           "\"count\":4,\"truncated\":false}",
           "{\"op\":\"branch.diff\",\"a\":\"default\",\"b\":\"f\"}");
    /* Identical branches: no changes. */
    FORK(s, "f", "g");
    EXPECT(s, "{\"changes\":[],\"count\":0,\"truncated\":false}",
           "{\"op\":\"branch.diff\",\"a\":\"f\",\"b\":\"g\"}");
    /* Limit. */
    EXPECT(s,
           "{\"changes\":[{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"a\",\"a\":1,\"b\":10}],"
           "\"count\":1,\"truncated\":true}",
           "{\"op\":\"branch.diff\",\"a\":\"default\",\"b\":\"f\",\"limit\":1}");
}

static void test_diff_siblings_and_unrelated(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    FORK(s, "default", "x");
    PUT(s, "default", "a", "2"); /* between the two forks */
    FORK(s, "default", "y");
    PUT(s, "x", "k", "1");
    EXPECT(s,
           "{\"changes\":["
           "{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"a\",\"a\":1,\"b\":2},"
           "{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"k\",\"a\":1,\"b\":null}],"
           "\"count\":2,\"truncated\":false}",
           "{\"op\":\"branch.diff\",\"a\":\"x\",\"b\":\"y\"}");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"u\"}");
    PUT(s, "u", "a", "2");
    PUT(s, "u", "z", "9");
    EXPECT(
        s,
        "{\"changes\":[{\"kind\":\"kv\",\"space\":\"default\",\"key\":\"z\",\"a\":null,\"b\":9}],"
        "\"count\":1,\"truncated\":false}",
        "{\"op\":\"branch.diff\",\"a\":\"default\",\"b\":\"u\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.diff\",\"a\":\"default\",\"b\":\"nope\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.diff\",\"a\":\"default\"}");
}

static void test_diff_three_way_status(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "same", "0");
    PUT(s, "default", "src", "0");
    PUT(s, "default", "dst", "0");
    PUT(s, "default", "both", "0");
    PUT(s, "default", "conf", "0");
    FORK(s, "default", "f");
    PUT(s, "f", "src", "1");
    PUT(s, "default", "dst", "1");
    PUT(s, "f", "both", "1");
    PUT(s, "default", "both", "1");
    PUT(s, "f", "conf", "1");
    PUT(s, "default", "conf", "2");
    const char *out =
        OK(s, "{\"op\":\"branch.diff\",\"a\":\"f\",\"b\":\"default\",\"three_way\":true}");
    assert_non_null(
        strstr(out, "\"key\":\"src\",\"a\":1,\"b\":0,\"base\":0,\"status\":\"a_only\""));
    assert_non_null(
        strstr(out, "\"key\":\"dst\",\"a\":0,\"b\":1,\"base\":0,\"status\":\"b_only\""));
    assert_non_null(
        strstr(out, "\"key\":\"both\",\"a\":1,\"b\":1,\"base\":0,\"status\":\"both_same\""));
    assert_non_null(
        strstr(out, "\"key\":\"conf\",\"a\":1,\"b\":2,\"base\":0,\"status\":\"conflict\""));
    assert_null(strstr(out, "\"key\":\"same\""));
    assert_non_null(strstr(out, "\"base\":{\"branch\":\"default\",\"version\":5}"));
}

static void test_merge_fork_into_parent(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    PUT(s, "default", "b", "2");
    PUT(s, "default", "keep", "0");
    FORK(s, "default", "f");
    PUT(s, "f", "a", "10");
    DEL(s, "f", "b");
    PUT(s, "f", "c", "3");
    PUT(s, "default", "keep", "5"); /* target-only change survives */
    uint64_t before = storage_version(s);
    /* 7 writes (the fork takes no version) and 8 commands before: version 8, ts 9000. */
    EXPECT(s, "{\"version\":8,\"ts\":9000,\"merged\":true,\"changes\":3,\"conflicts\":[]}",
           "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    assert_int_equal(storage_version(s), before + 1);
    expect_kv(s, "default", "a", "10");
    expect_kv(s, "default", "b", "null");
    expect_kv(s, "default", "c", "3");
    expect_kv(s, "default", "keep", "5");
    /* The merge is one version: all three keys carry it. */
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.get\",\"key\":\"c\"}"), "\"version\":8"));
    /* Merging again with no new source changes changes nothing but the merge record. */
    EXPECT(s, "{\"version\":9,\"ts\":15000,\"merged\":true,\"changes\":0,\"conflicts\":[]}",
           "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
}

static void test_merge_changes_count_no_space_registration(void **state)
{
    struct storage *s = *state;
    /* The parent never wrote, so the fork's first put also registers the space there;
     * a registration is not a key change (it used to count as one). */
    FORK(s, "default", "f");
    PUT(s, "f", "a", "1");
    PUT(s, "f", "b", "2");
    const char *r = OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    assert_non_null(strstr(r, "\"changes\":2,"));
    expect_kv(s, "default", "a", "1");
    expect_kv(s, "default", "b", "2");
}

static void test_merge_strict_conflict_writes_nothing(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    FORK(s, "default", "f");
    PUT(s, "f", "a", "2");
    PUT(s, "f", "x", "1");
    PUT(s, "default", "a", "3");
    uint64_t v = storage_version(s);
    const char *msg = FAILS(s, STRATA_CONFLICT,
                            "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    assert_non_null(strstr(msg, "1 conflict: kv:default/a"));
    assert_int_equal(storage_version(s), v);
    expect_kv(s, "default", "a", "3");
    expect_kv(s, "default", "x", "null");
    /* source_wins resolves it. */
    EXPECT(s,
           "{\"version\":5,\"ts\":9000,\"merged\":true,\"changes\":2,"
           "\"conflicts\":[\"kv:default/a\"]}",
           "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\",\"strategy\":\"source_"
           "wins\"}");
    expect_kv(s, "default", "a", "2");
    expect_kv(s, "default", "x", "1");
}

static void test_merge_base_moves_after_merge(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    FORK(s, "default", "f");
    PUT(s, "f", "a", "2");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    /* Target changes a afterwards; source changes another key only. Without the merge
     * record as base, a (2 on f vs 5 on default, base 1) would be a false conflict. */
    PUT(s, "default", "a", "5");
    PUT(s, "f", "b", "7");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    expect_kv(s, "default", "a", "5");
    expect_kv(s, "default", "b", "7");
}

static void test_merge_parent_into_child_and_siblings(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    FORK(s, "default", "f");
    FORK(s, "default", "g");
    PUT(s, "default", "p", "1");
    PUT(s, "f", "fa", "1");
    PUT(s, "g", "ga", "1");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"default\",\"target\":\"f\"}");
    expect_kv(s, "f", "p", "1");
    expect_kv(s, "f", "fa", "1");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"g\",\"target\":\"f\"}");
    expect_kv(s, "f", "ga", "1");
    expect_kv(s, "f", "p", "1");
    expect_kv(s, "g", "fa", "null");
}

static void test_merge_bad_input(void **state)
{
    struct storage *s = *state;
    FORK(s, "default", "f");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"u\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"f\"}");
    FAILS(
        s, STRATA_INVALID_ARGUMENT,
        "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\",\"strategy\":\"ours\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND,
          "{\"op\":\"branch.merge\",\"source\":\"nope\",\"target\":\"default\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.merge\",\"source\":\"u\",\"target\":\"default\"}");
}

static void test_merge_state_and_spaces(void **state)
{
    struct storage *s = *state;
    FORK(s, "default", "f");
    OK(s, "{\"op\":\"kv.put\",\"branch\":\"f\",\"space\":\"newsp\",\"key\":\"k\",\"value\":1}");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    EXPECT(s, "[\"default\",\"newsp\"]", "{\"op\":\"space.list\"}");
    assert_non_null(
        strstr(OK(s, "{\"op\":\"kv.get\",\"space\":\"newsp\",\"key\":\"k\"}"), "\"value\":1"));
}

static void test_merge_cost_independent_of_branch_size(void **state)
{
    /* A fork of a large branch with few changes: the merge reads only changed keys.
     * Checked structurally: the diff reports exactly the changed keys. */
    struct storage *s = *state;
    for (int i = 0; i < 2000; i += 100) {
        char items[8192];
        size_t n = 0;
        for (int j = i; j < i + 100; j++)
            n += (size_t)snprintf(items + n, sizeof items - n, "%s[\"k%05d\",%d]", j > i ? "," : "",
                                  j, j);
        OK(s, "{\"op\":\"kv.batch_put\",\"items\":[%s]}", items);
    }
    FORK(s, "default", "f");
    PUT(s, "f", "k00007", "-1");
    const char *out = OK(s, "{\"op\":\"branch.diff\",\"a\":\"default\",\"b\":\"f\"}");
    assert_non_null(strstr(out, "\"count\":1"));
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    expect_kv(s, "default", "k00007", "-1");
}

static void test_merge_json_per_path(void **state)
{
    struct storage *s = *state;
    OK(s,
       "{\"op\":\"json.set\",\"key\":\"doc\",\"path\":\"$\",\"value\":{\"a\":1,\"b\":1,\"c\":1}}");
    FORK(s, "default", "f");
    OK(s, "{\"op\":\"json.set\",\"branch\":\"f\",\"key\":\"doc\",\"path\":\"$.a\",\"value\":2}");
    OK(s, "{\"op\":\"json.set\",\"key\":\"doc\",\"path\":\"$.b\",\"value\":3}");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    EXPECT(s, "{\"a\":2,\"b\":3,\"c\":1}", "{\"op\":\"json.get\",\"key\":\"doc\"}");
    /* Same path changed differently on both sides: a conflict naming doc and path. */
    OK(s, "{\"op\":\"json.set\",\"branch\":\"f\",\"key\":\"doc\",\"path\":\"$.c\",\"value\":5}");
    OK(s, "{\"op\":\"json.set\",\"key\":\"doc\",\"path\":\"$.c\",\"value\":6}");
    const char *msg = FAILS(s, STRATA_CONFLICT,
                            "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    assert_non_null(strstr(msg, "json:default/doc $.c"));
    EXPECT(s, "{\"a\":2,\"b\":3,\"c\":6}", "{\"op\":\"json.get\",\"key\":\"doc\"}");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\",\"strategy\":\"source_"
          "wins\"}");
    EXPECT(s, "{\"a\":2,\"b\":3,\"c\":5}", "{\"op\":\"json.get\",\"key\":\"doc\"}");
}

static void test_merge_reports_every_conflict(void **state)
{
    struct storage *s = *state;
    OK(s,
       "{\"op\":\"json.set\",\"key\":\"doc\",\"path\":\"$\",\"value\":{\"a\":1,\"b\":1,\"c\":1}}");
    PUT(s, "default", "k", "0");
    FORK(s, "default", "f");
    OK(s, "{\"op\":\"json.set\",\"branch\":\"f\",\"key\":\"doc\",\"path\":\"$\",\"value\":{\"a\":2,"
          "\"b\":2,\"c\":2}}");
    OK(s,
       "{\"op\":\"json.set\",\"key\":\"doc\",\"path\":\"$\",\"value\":{\"a\":3,\"b\":3,\"c\":1}}");
    PUT(s, "f", "k", "1");
    PUT(s, "default", "k", "2");
    const char *msg = FAILS(s, STRATA_CONFLICT,
                            "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    assert_non_null(
        strstr(msg, "3 conflicts: json:default/doc $.a, json:default/doc $.b, kv:default/k"));
    EXPECT(s, "{\"a\":3,\"b\":3,\"c\":1}", "{\"op\":\"json.get\",\"key\":\"doc\"}");
    const char *out = OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\","
                            "\"strategy\":\"source_wins\"}");
    assert_non_null(strstr(
        out, "\"conflicts\":[\"json:default/doc $.a\",\"json:default/doc $.b\",\"kv:default/k\"]"));
    /* The non-conflicting path c came over too. */
    EXPECT(s, "{\"a\":2,\"b\":2,\"c\":2}", "{\"op\":\"json.get\",\"key\":\"doc\"}");
}

static void test_merge_event_logs(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"i\":1}}");
    FORK(s, "default", "f");
    OK(s, "{\"op\":\"event.append\",\"branch\":\"f\",\"type\":\"t\",\"payload\":{\"i\":2}}");
    OK(s, "{\"op\":\"event.append\",\"branch\":\"f\",\"type\":\"t\",\"payload\":{\"i\":3}}");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    EXPECT(s, "3", "{\"op\":\"event.len\"}");
    EXPECT(s, "{\"ok\":true,\"len\":3,\"first_bad_seq\":null}", "{\"op\":\"event.verify_chain\"}");
    /* Again: only the new source event comes over (the merge record is the base). */
    OK(s, "{\"op\":\"event.append\",\"branch\":\"f\",\"type\":\"t\",\"payload\":{\"i\":4}}");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    EXPECT(s, "4", "{\"op\":\"event.len\"}");
    /* Both sides append: strict refuses and writes nothing; source_wins appends after. */
    OK(s, "{\"op\":\"event.append\",\"branch\":\"f\",\"type\":\"t\",\"payload\":{\"i\":5}}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"i\":50}}");
    const char *msg = FAILS(s, STRATA_CONFLICT,
                            "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\"}");
    assert_non_null(strstr(msg, "events:default"));
    EXPECT(s, "5", "{\"op\":\"event.len\"}");
    OK(s, "{\"op\":\"branch.merge\",\"source\":\"f\",\"target\":\"default\",\"strategy\":\"source_"
          "wins\"}");
    EXPECT(s, "6", "{\"op\":\"event.len\"}");
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":6}"), "\"payload\":{\"i\":5}"));
    EXPECT(s, "{\"ok\":true,\"len\":6,\"first_bad_seq\":null}", "{\"op\":\"event.verify_chain\"}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_diff_two_way_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_diff_siblings_and_unrelated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_diff_three_way_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_changes_count_no_space_registration, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_merge_fork_into_parent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_strict_conflict_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_base_moves_after_merge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_parent_into_child_and_siblings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_state_and_spaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_cost_independent_of_branch_size, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_merge_json_per_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_event_logs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_reports_every_conflict, setup, teardown),
    };
    return cmocka_run_group_tests_name("storage_merge", tests, NULL, NULL);
}
