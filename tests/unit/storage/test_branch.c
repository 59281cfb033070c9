/* Branch commands: create / list / info / delete, O(1) forks and their read-through
 * semantics, fork_many, deep fork chains (materialization), and retention. */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

/* ---- Local read helpers ------------------------------------------------------------ */

/* Assert that kv.get of `key` in `branch` (with optional extra JSON args such as
 * ",\"at_version\":3") shows `val` (JSON text) or is absent (val NULL). */
static void get_is(struct storage *s, const char *file, int line, const char *branch,
                   const char *key, const char *extra, const char *val)
{
    const char *got =
        t_ok(s, file, line, "{\"op\":\"kv.get\",\"branch\":\"%s\",\"key\":\"%s\"%s}", branch, key,
             extra);
    char want[512];
    if (val == NULL)
        snprintf(want, sizeof want, "null");
    else
        snprintf(want, sizeof want, "{\"value\":%s,\"version\":", val);
    if (strncmp(got, want, strlen(want)) != 0 || (val == NULL && strcmp(got, "null") != 0)) {
        fprintf(stderr, "%s:%d: kv.get %s/%s%s: expected %s..., got %s\n", file, line, branch,
                key, extra, want, got);
        fail();
    }
}
#define GET_IS(s, br, key, val) get_is(s, __FILE__, __LINE__, br, key, "", val)
#define GET_AT(s, br, key, ver, val)                                                          \
    do {                                                                                      \
        char at_[64];                                                                         \
        snprintf(at_, sizeof at_, ",\"at_version\":%llu", (unsigned long long)(ver));         \
        get_is(s, __FILE__, __LINE__, br, key, at_, val);                                     \
    } while (0)

#define PUT(s, br, key, val)                                                                   \
    OK(s, "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"%s\",\"value\":%s}", br, key, val)
#define DEL(s, br, key) OK(s, "{\"op\":\"kv.delete\",\"branch\":\"%s\",\"key\":\"%s\"}", br, key)
#define FORK(s, src, name)                                                                     \
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"%s\",\"name\":\"%s\"}", src, name)

/* Integer field `"name":N` of a JSON object text, or -1. */
static long long json_int(const char *json, const char *name)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", name);
    const char *p = strstr(json, pat);
    return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

/* ---- create / list / info --------------------------------------------------------- */

static void test_branch_create_valid_names(void **state)
{
    struct storage *s = *state;
    char longest[129];
    memset(longest, 'n', 128);
    longest[128] = 0;
    const char *names[] = {"a", "feature/x-1.2", "A_b", "x.y", "9lives", "a/b/c", "z--", longest};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *r = OK(s, "{\"op\":\"branch.create\",\"name\":\"%s\"}", names[i]);
        char want[300];
        snprintf(want, sizeof want, "{\"name\":\"%s\",\"version\":0,\"fork_version\":null}",
                 names[i]);
        assert_string_equal(r, want);
    }
    /* A created branch is empty: it does not see default's data. */
    PUT(s, "default", "k", "1");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"fresh\"}");
    GET_IS(s, "fresh", "k", NULL);
    EXPECT(s, "0", "{\"op\":\"kv.count\",\"branch\":\"fresh\"}");
    PUT(s, "fresh", "k", "2");
    GET_IS(s, "default", "k", "1");
    GET_IS(s, "fresh", "k", "2");
}

static void test_branch_create_invalid_names(void **state)
{
    struct storage *s = *state;
    char toolong[130];
    memset(toolong, 'n', 129);
    toolong[129] = 0;
    const char *bad[] = {"\"\"", "\".x\"", "\"/x\"", "\"-x\"", "\"a b\"", "\"a\\u00fcb\"",
                         "\"a:b\"", "\"a\\u0000b\"", "7", "null", "[\"a\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.create\",\"name\":%s}", bad[i]);
    const char *msg =
        FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.create\",\"name\":\"%s\"}", toolong);
    assert_non_null(strstr(msg, "invalid branch name"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.create\"}");
    assert_non_null(strstr(msg, "'name'"));
    EXPECT(s, "[\"default\"]", "{\"op\":\"branch.list\"}");
    assert_int_equal(storage_version(s), 0);
}

static void test_branch_create_duplicate_is_branch_exists(void **state)
{
    struct storage *s = *state;
    FAILS(s, STRATA_BRANCH_EXISTS, "{\"op\":\"branch.create\",\"name\":\"default\"}");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    PUT(s, "b", "k", "1");
    const char *msg = FAILS(s, STRATA_BRANCH_EXISTS, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    assert_non_null(strstr(msg, "'b'"));
    FAILS(s, STRATA_BRANCH_EXISTS, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"b\"}");
    /* The existing branch is untouched. */
    GET_IS(s, "b", "k", "1");
    EXPECT(s, "[\"b\",\"default\"]", "{\"op\":\"branch.list\"}");
}

static void test_branch_list_sorted(void **state)
{
    struct storage *s = *state;
    const char *names[] = {"zeta", "alpha", "Beta", "alpha/2", "alpha.1", "m", "_u", "0"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        OK(s, "{\"op\":\"branch.create\",\"name\":\"%s\"}", names[i]);
    /* Byte order: digits < upper case < '_' < lower case; '.' < '/'. */
    EXPECT(s, "[\"0\",\"Beta\",\"_u\",\"alpha\",\"alpha.1\",\"alpha/2\",\"default\",\"m\",\"zeta\"]",
           "{\"op\":\"branch.list\"}");
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"alpha\"}");
    FORK(s, "m", "alpha");
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"m\"}");
    EXPECT(s, "[\"0\",\"Beta\",\"_u\",\"alpha\",\"alpha.1\",\"alpha/2\",\"default\",\"zeta\"]",
           "{\"op\":\"branch.list\"}");
}

static void test_branch_info_fields(void **state)
{
    struct storage *s = *state;
    EXPECT(s,
           "{\"name\":\"default\",\"id\":1,\"parent\":null,\"parent_deleted\":false,"
           "\"fork_version\":0,\"created_version\":0,\"created_ts\":0,\"depth\":0,"
           "\"own_keys\":0,\"writes\":0,\"retention\":{\"keep_last\":0,\"keep_for_us\":0}}",
           "{\"op\":\"branch.info\",\"name\":\"default\"}");
    PUT(s, "default", "a", "1");        /* v1 ts 2000 */
    PUT(s, "default", "b", "1");        /* v2 ts 3000 */
    PUT(s, "default", "a", "2");        /* v3 ts 4000 */
    FORK(s, "default", "child");        /* ts 5000 */
    PUT(s, "child", "c", "1");          /* v4 ts 6000 */
    PUT(s, "child", "c", "2");          /* v5 ts 7000 */
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"child\",\"keep_last\":3,"
          "\"keep_for_us\":500}");
    /* own_keys counts the branch's own entries: only c (the space registry key is
     * inherited from the parent). */
    EXPECT(s,
           "{\"name\":\"child\",\"id\":2,\"parent\":\"default\",\"parent_deleted\":false,"
           "\"fork_version\":3,\"created_version\":3,\"created_ts\":5000,\"depth\":1,"
           "\"own_keys\":1,\"writes\":2,\"retention\":{\"keep_last\":3,\"keep_for_us\":500}}",
           "{\"op\":\"branch.info\",\"name\":\"child\"}");
    EXPECT(s, "{\"name\":\"other\",\"version\":5,\"fork_version\":3}",
           "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"other\",\"at_version\":3}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.info\",\"name\":\"nope\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.info\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.info\",\"name\":3}");
}

/* ---- delete ------------------------------------------------------------------------ */

static void test_branch_delete_default_refused(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "k", "1");
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.delete\",\"name\":\"default\"}");
    assert_non_null(strstr(msg, "default"));
    GET_IS(s, "default", "k", "1");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.delete\",\"name\":\"nope\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.delete\"}");
    EXPECT(s, "[\"default\"]", "{\"op\":\"branch.list\"}");
}

static void test_branch_delete_name_reusable(void **state)
{
    struct storage *s = *state;
    FORK(s, "default", "b");
    PUT(s, "b", "k", "1");
    long long old_id = json_int(OK(s, "{\"op\":\"branch.info\",\"name\":\"b\"}"), "id");
    EXPECT(s, "true", "{\"op\":\"branch.delete\",\"name\":\"b\"}");
    EXPECT(s, "[\"default\"]", "{\"op\":\"branch.list\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"kv.get\",\"branch\":\"b\",\"key\":\"k\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.delete\",\"name\":\"b\"}");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    long long new_id = json_int(OK(s, "{\"op\":\"branch.info\",\"name\":\"b\"}"), "id");
    assert_true(new_id > old_id);
    GET_IS(s, "b", "k", NULL); /* a new, empty branch: nothing of the old one */
    EXPECT(s, "[]", "{\"op\":\"kv.history\",\"branch\":\"b\",\"key\":\"k\"}");
}

static void test_branch_delete_parent_children_keep_data(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"branch.create\",\"name\":\"p\"}");
    PUT(s, "p", "a", "1");
    PUT(s, "p", "b", "1");
    PUT(s, "p", "a", "2");
    FORK(s, "p", "c1");
    FORK(s, "p", "c2");
    PUT(s, "c1", "c", "3");
    FORK(s, "c1", "g");
    PUT(s, "p", "a", "99"); /* after the forks: invisible to children */
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"p\"}");
    EXPECT(s, "[\"c1\",\"c2\",\"default\",\"g\"]", "{\"op\":\"branch.list\"}");
    const char *info = OK(s, "{\"op\":\"branch.info\",\"name\":\"c1\"}");
    assert_non_null(strstr(info, "\"parent\":\"p\",\"parent_deleted\":true"));
    for (int i = 0; i < 2; i++) {
        const char *c = i ? "c2" : "c1";
        GET_IS(s, c, "a", "2");
        GET_IS(s, c, "b", "1");
        GET_AT(s, c, "a", 1, "1");
    }
    GET_IS(s, "g", "a", "2");
    GET_IS(s, "g", "c", "3");
    EXPECT(s, "{\"keys\":[\"a\",\"b\",\"c\"],\"cursor\":null}", "{\"op\":\"kv.list\",\"branch\":\"g\"}");
    EXPECT(s, "2", "{\"op\":\"kv.count\",\"branch\":\"c2\"}");
    const char *h = OK(s, "{\"op\":\"kv.history\",\"branch\":\"c2\",\"key\":\"a\"}");
    assert_non_null(strstr(h, "{\"value\":2,\"deleted\":false,\"version\":3,"));
    assert_non_null(strstr(h, "{\"value\":1,\"deleted\":false,\"version\":1,"));
    assert_null(strstr(h, "99"));

    /* Reusing the name does not disturb the children's lineage. */
    OK(s, "{\"op\":\"branch.create\",\"name\":\"p\"}");
    PUT(s, "p", "a", "\"new\"");
    GET_IS(s, "c1", "a", "2");
    info = OK(s, "{\"op\":\"branch.info\",\"name\":\"c2\"}");
    assert_non_null(strstr(info, "\"parent_deleted\":true"));

    /* Deleting a middle branch: the grandchild still reads through both hidden levels. */
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"c1\"}");
    GET_IS(s, "g", "a", "2");
    GET_IS(s, "g", "c", "3");
    PUT(s, "g", "a", "7");
    GET_IS(s, "g", "a", "7");
    GET_IS(s, "c2", "a", "2");
    /* Dropping the last children frees the hidden branches; the live ones are intact. */
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"g\"}");
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"c2\"}");
    EXPECT(s, "[\"default\",\"p\"]", "{\"op\":\"branch.list\"}");
    GET_IS(s, "p", "a", "\"new\"");
}

/* ---- fork -------------------------------------------------------------------------- */

static void test_branch_fork_isolation(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    PUT(s, "default", "b", "1");
    uint64_t at_fork = storage_version(s);
    const char *r = FORK(s, "default", "c");
    char want[128];
    snprintf(want, sizeof want, "{\"name\":\"c\",\"version\":%llu,\"fork_version\":%llu}",
             (unsigned long long)at_fork, (unsigned long long)at_fork);
    assert_string_equal(r, want);
    /* O(1): the fork copies nothing; the child has no keys of its own yet. */
    const char *info = OK(s, "{\"op\":\"branch.info\",\"name\":\"c\"}");
    assert_int_equal(json_int(info, "own_keys"), 0);
    assert_int_equal(json_int(info, "writes"), 0);
    assert_int_equal(json_int(info, "depth"), 1);
    /* Child sees the parent as of the fork. */
    GET_IS(s, "c", "a", "1");
    GET_IS(s, "c", "b", "1");
    /* Later parent writes are invisible to the child... */
    PUT(s, "default", "a", "2");
    PUT(s, "default", "new", "1");
    DEL(s, "default", "b");
    GET_IS(s, "c", "a", "1");
    GET_IS(s, "c", "new", NULL);
    GET_IS(s, "c", "b", "1");
    /* ...and child writes invisible to the parent. */
    PUT(s, "c", "a", "3");
    PUT(s, "c", "only", "1");
    GET_IS(s, "default", "a", "2");
    GET_IS(s, "default", "only", NULL);
    GET_IS(s, "c", "a", "3");
    /* A fork reads nothing written after it even with at_version at the head. */
    GET_AT(s, "c", "new", storage_version(s), NULL);
}

static void test_branch_fork_delete_shadows_parent(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    FORK(s, "default", "c");
    EXPECT(s, "true", "{\"op\":\"kv.exists\",\"branch\":\"c\",\"key\":\"a\"}");
    const char *r = DEL(s, "c", "a");
    assert_non_null(strstr(r, "\"deleted\":true"));
    GET_IS(s, "c", "a", NULL);
    GET_IS(s, "default", "a", "1");
    /* Deleting again in the child: already gone, no write. */
    uint64_t v = storage_version(s);
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"kv.delete\",\"branch\":\"c\",\"key\":\"a\"}");
    assert_int_equal(storage_version(s), v);
    /* The tombstone also shadows for the child's own children. */
    FORK(s, "c", "g");
    GET_IS(s, "g", "a", NULL);
    PUT(s, "g", "a", "5");
    GET_IS(s, "g", "a", "5");
    GET_IS(s, "c", "a", NULL);
    /* History in the child: its tombstone, then the inherited version. */
    const char *h = OK(s, "{\"op\":\"kv.history\",\"branch\":\"c\",\"key\":\"a\"}");
    assert_non_null(strstr(h, "[{\"value\":null,\"deleted\":true,"));
    assert_non_null(strstr(h, "},{\"value\":1,\"deleted\":false,\"version\":1,"));
}

static void test_branch_fork_list_count_scan_through_chain(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.batch_put\",\"items\":[[\"a\",1],[\"b\",1],[\"c\",1],[\"d\",1],"
          "[\"x:1\",1],[\"x:2\",1]]}");
    FORK(s, "default", "c1");
    PUT(s, "default", "f", "1"); /* after the fork */
    DEL(s, "default", "a");
    PUT(s, "c1", "b", "2");
    DEL(s, "c1", "c");
    PUT(s, "c1", "e", "2");
    DEL(s, "c1", "x:1");
    FORK(s, "c1", "c2");
    PUT(s, "c1", "zz", "2"); /* after the second fork */
    DEL(s, "c2", "b");
    PUT(s, "c2", "c", "3"); /* resurrect over c1's tombstone */
    PUT(s, "c2", "x:3", "3");
    DEL(s, "c2", "d");

    EXPECT(s, "{\"keys\":[\"b\",\"c\",\"d\",\"f\",\"x:1\",\"x:2\"],\"cursor\":null}",
           "{\"op\":\"kv.list\"}");
    EXPECT(s, "{\"keys\":[\"a\",\"b\",\"d\",\"e\",\"x:2\",\"zz\"],\"cursor\":null}",
           "{\"op\":\"kv.list\",\"branch\":\"c1\"}");
    EXPECT(s, "{\"keys\":[\"a\",\"c\",\"e\",\"x:2\",\"x:3\"],\"cursor\":null}",
           "{\"op\":\"kv.list\",\"branch\":\"c2\"}");
    EXPECT(s, "{\"items\":[[\"a\",1],[\"c\",3],[\"e\",2],[\"x:2\",1],[\"x:3\",3]],\"cursor\":null}",
           "{\"op\":\"kv.scan\",\"branch\":\"c2\"}");
    EXPECT(s, "{\"items\":[[\"a\",1],[\"b\",2],[\"d\",1]],\"cursor\":\"d\"}",
           "{\"op\":\"kv.scan\",\"branch\":\"c1\",\"limit\":3}");
    EXPECT(s, "{\"items\":[[\"e\",2],[\"x:2\",1],[\"zz\",2]],\"cursor\":null}",
           "{\"op\":\"kv.scan\",\"branch\":\"c1\",\"limit\":3,\"cursor\":\"d\"}");
    /* Pagination across levels: every page boundary falls on a different level. */
    EXPECT(s, "{\"keys\":[\"a\"],\"cursor\":\"a\"}", "{\"op\":\"kv.list\",\"branch\":\"c2\",\"limit\":1}");
    EXPECT(s, "{\"keys\":[\"c\"],\"cursor\":\"c\"}",
           "{\"op\":\"kv.list\",\"branch\":\"c2\",\"limit\":1,\"cursor\":\"a\"}");
    EXPECT(s, "{\"keys\":[\"e\"],\"cursor\":\"e\"}",
           "{\"op\":\"kv.list\",\"branch\":\"c2\",\"limit\":1,\"cursor\":\"c\"}");
    EXPECT(s, "{\"keys\":[\"x:2\",\"x:3\"],\"cursor\":null}",
           "{\"op\":\"kv.list\",\"branch\":\"c2\",\"limit\":2,\"cursor\":\"e\"}");
    EXPECT(s, "5", "{\"op\":\"kv.count\",\"branch\":\"c2\"}");
    EXPECT(s, "6", "{\"op\":\"kv.count\",\"branch\":\"c1\"}");
    EXPECT(s, "2", "{\"op\":\"kv.count\",\"branch\":\"c2\",\"prefix\":\"x:\"}");
    EXPECT(s, "1", "{\"op\":\"kv.count\",\"branch\":\"c1\",\"prefix\":\"x:\"}");
    EXPECT(s, "{\"keys\":[\"x:2\",\"x:3\"],\"cursor\":null}",
           "{\"op\":\"kv.list\",\"branch\":\"c2\",\"prefix\":\"x:\"}");
    /* Time travel in a child before its own writes reads the inherited state. */
    uint64_t v_c2_fork = (uint64_t)json_int(OK(s, "{\"op\":\"branch.info\",\"name\":\"c2\"}"),
                                            "fork_version");
    char cmd[160];
    snprintf(cmd, sizeof cmd, "{\"op\":\"kv.list\",\"branch\":\"c2\",\"at_version\":%llu}",
             (unsigned long long)v_c2_fork);
    EXPECT(s, "{\"keys\":[\"a\",\"b\",\"d\",\"e\",\"x:2\"],\"cursor\":null}", "%s", cmd);
}

static void test_branch_fork_at_version(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1"); /* v1 */
    PUT(s, "default", "b", "1"); /* v2 */
    PUT(s, "default", "a", "2"); /* v3 */
    DEL(s, "default", "b");      /* v4 */
    EXPECT(s, "{\"name\":\"at2\",\"version\":4,\"fork_version\":2}",
           "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"at2\",\"at_version\":2}");
    GET_IS(s, "at2", "a", "1");
    GET_IS(s, "at2", "b", "1");
    EXPECT(s, "{\"keys\":[\"a\",\"b\"],\"cursor\":null}", "{\"op\":\"kv.list\",\"branch\":\"at2\"}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"at0\",\"at_version\":0}");
    EXPECT(s, "0", "{\"op\":\"kv.count\",\"branch\":\"at0\"}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"at4\",\"at_version\":4}");
    GET_IS(s, "at4", "a", "2");
    GET_IS(s, "at4", "b", NULL);
    /* A fork of a fork at a version before the middle branch existed reads the lineage. */
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"at4\",\"name\":\"at4_1\",\"at_version\":1}");
    GET_IS(s, "at4_1", "a", "1");
    GET_IS(s, "at4_1", "b", NULL);
    /* The future is refused, naming the argument; nothing is created. */
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                            "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\","
                            "\"at_version\":5}");
    assert_non_null(strstr(msg, "at_version"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\",\"at_version\":-1}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\",\"at_version\":\"1\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.fork\",\"source\":\"nope\",\"name\":\"f\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\".f\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.fork\",\"name\":\"f\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"kv.get\",\"branch\":\"f\",\"key\":\"a\"}");
    assert_int_equal(storage_version(s), 4);
}

static void test_branch_fork_many_all_or_nothing(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    PUT(s, "default", "a", "2");
    EXPECT(s,
           "[{\"name\":\"m1\",\"version\":2,\"fork_version\":1},"
           "{\"name\":\"m2\",\"version\":2,\"fork_version\":1}]",
           "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[\"m1\",\"m2\"],"
           "\"at_version\":1}");
    GET_IS(s, "m1", "a", "1");
    GET_IS(s, "m2", "a", "1");
    PUT(s, "m1", "a", "3");
    GET_IS(s, "m2", "a", "1");
    const char *list = "[\"default\",\"m1\",\"m2\"]";
    /* One bad name, a duplicate in the list, or an existing name: nothing is created. */
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[\"n1\",\"bad name\"]}");
    EXPECT(s, list, "{\"op\":\"branch.list\"}");
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                            "{\"op\":\"branch.fork_many\",\"source\":\"default\","
                            "\"names\":[\"n1\",\"n2\",\"n1\"]}");
    assert_non_null(strstr(msg, "duplicate"));
    EXPECT(s, list, "{\"op\":\"branch.list\"}");
    FAILS(s, STRATA_BRANCH_EXISTS,
          "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[\"n1\",\"m2\"]}");
    EXPECT(s, list, "{\"op\":\"branch.list\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[\"n1\",3]}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":\"n1\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.fork_many\",\"source\":\"default\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.fork_many\",\"source\":\"default\",\"names\":[\"n1\"],\"at_version\":99}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.fork_many\",\"source\":\"zz\",\"names\":[\"n1\"]}");
    EXPECT(s, list, "{\"op\":\"branch.list\"}");
    assert_int_equal(storage_version(s), 3);
}

/* Fork 40 levels deep; every level writes its own key, overwrites a shared key and
 * deletes an inherited one. Level L must see exactly its lineage. */
#define DEEP 40

static void check_level(struct storage *s, const char *name, int level)
{
    char key[16], val[16], list[1024] = "{\"keys\":[";
    int count = 0;
    /* k<i> is written at level i and deleted at level i + 2. */
    for (int i = 0; i <= DEEP; i++) {
        snprintf(key, sizeof key, "k%02d", i);
        snprintf(val, sizeof val, "%d", i);
        bool visible = i <= level && !(i + 2 <= level);
        GET_IS(s, name, key, visible ? val : NULL);
        if (visible) {
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"",
                     count ? "," : "", key);
            count++;
        }
    }
    snprintf(list + strlen(list), sizeof list - strlen(list), ",\"shared\"],\"cursor\":null}");
    snprintf(val, sizeof val, "%d", level);
    GET_IS(s, name, "shared", val);
    count++;
    EXPECT(s, list, "{\"op\":\"kv.list\",\"branch\":\"%s\"}", name);
    char want[64];
    snprintf(want, sizeof want, "%d", count);
    EXPECT(s, want, "{\"op\":\"kv.count\",\"branch\":\"%s\"}", name);
    snprintf(want, sizeof want, "{\"items\":[[\"shared\",%d]],\"cursor\":null}", level);
    EXPECT(s, want, "{\"op\":\"kv.scan\",\"branch\":\"%s\",\"prefix\":\"sh\"}", name);
}

static void test_branch_fork_deep_chain(void **state)
{
    struct storage *s = *state;
    char name[DEEP + 1][16];
    snprintf(name[0], sizeof name[0], "default");
    PUT(s, "default", "k00", "0");
    PUT(s, "default", "shared", "0");
    for (int l = 1; l <= DEEP; l++) {
        snprintf(name[l], sizeof name[l], "lvl%02d", l);
        FORK(s, name[l - 1], name[l]);
        char key[16], val[16];
        snprintf(key, sizeof key, "k%02d", l);
        snprintf(val, sizeof val, "%d", l);
        PUT(s, name[l], key, val);
        PUT(s, name[l], "shared", val);
        if (l >= 2) {
            snprintf(key, sizeof key, "k%02d", l - 2);
            DEL(s, name[l], key);
        }
    }
    struct storage_config cfg;
    storage_config_default(&cfg);
    for (int l = 0; l <= DEEP; l++) {
        check_level(s, name[l], l);
        const char *info = OK(s, "{\"op\":\"branch.info\",\"name\":\"%s\"}", name[l]);
        long long depth = json_int(info, "depth");
        /* Past max_fork_depth the fork is materialized and the count restarts. */
        int want = l <= cfg.max_fork_depth ? l : l - (cfg.max_fork_depth + 1);
        assert_int_equal(depth, want);
    }
    /* Writes in the middle of the chain do not leak down or up. */
    PUT(s, name[20], "shared", "\"mid\"");
    check_level(s, name[21], 21);
    check_level(s, name[DEEP], DEEP);
    check_level(s, name[19], 19);
    /* Deleting every intermediate branch keeps the deepest one intact. */
    for (int l = 1; l < DEEP; l++)
        OK(s, "{\"op\":\"branch.delete\",\"name\":\"%s\"}", name[l]);
    check_level(s, name[DEEP], DEEP);
}

/* A materialized (flattened) deep fork must answer time-travel reads like an ordinary
 * fork does: a read below the fork point sees the lineage's older value. */
static void test_branch_fork_deep_time_travel_below_fork_point(void **state)
{
    struct storage *s = *state;
    struct storage_config cfg;
    storage_config_default(&cfg);
    OK(s, "{\"op\":\"kv.batch_put\",\"items\":[[\"k\",1],[\"gone\",1]]}");
    uint64_t v1 = storage_version(s);
    PUT(s, "default", "k", "2");
    DEL(s, "default", "gone");
    char prev[16] = "default", cur[16];
    for (int l = 1; l <= cfg.max_fork_depth + 1; l++) {
        snprintf(cur, sizeof cur, "d%02d", l);
        FORK(s, prev, cur);
        memcpy(prev, cur, sizeof prev);
    }
    /* The last one was materialized. */
    assert_int_equal(json_int(OK(s, "{\"op\":\"branch.info\",\"name\":\"%s\"}", cur), "depth"), 0);
    GET_IS(s, "d01", "k", "2");
    GET_AT(s, "d01", "k", v1, "1"); /* an ordinary fork reads its lineage at v1 */
    GET_IS(s, cur, "k", "2");
    GET_AT(s, cur, "k", v1, "1"); /* so must the materialized one */
    /* History through the lineage: both versions, like the ordinary fork's. */
    char want[512];
    snprintf(want, sizeof want, "%s", OK(s, "{\"op\":\"kv.history\",\"branch\":\"d01\",\"key\":\"k\"}"));
    assert_non_null(strstr(want, "\"value\":1,"));
    EXPECT(s, want, "{\"op\":\"kv.history\",\"branch\":\"%s\",\"key\":\"k\"}", cur);
    /* A key deleted before the fork point existed earlier: visible at v1. */
    GET_AT(s, cur, "gone", v1, "1");
}

/* ---- retention ------------------------------------------------------------------------ */

static int count_versions(const char *history)
{
    int n = 0;
    for (const char *p = history; (p = strstr(p, "\"version\":")) != NULL; p++)
        n++;
    return n;
}

static void test_branch_retention_keep_last(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "other", "0"); /* v1: a key written once is never pruned */
    for (int i = 1; i <= 5; i++)
        PUT(s, "default", "k", i == 3 ? "null" : "1"); /* v2..v6 */
    DEL(s, "default", "k");                              /* v7 */
    PUT(s, "default", "k", "7");                         /* v8 */
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":2}");
    /* Setting a policy prunes nothing by itself. */
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"k\"}")), 7);
    GET_AT(s, "default", "k", 2, "1");
    /* The next write of k applies the policy to k only. */
    PUT(s, "default", "k", "9"); /* v9 */
    EXPECT(s,
           "[{\"value\":9,\"deleted\":false,\"version\":9,\"ts\":12000},"
           "{\"value\":7,\"deleted\":false,\"version\":8,\"ts\":8000}]",
           "{\"op\":\"kv.history\",\"key\":\"k\"}");
    GET_AT(s, "default", "k", 8, "7");
    const char *msg =
        FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":7}");
    assert_non_null(strstr(msg, "pruned"));
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":3}");
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"as_of\":5000}");
    GET_AT(s, "default", "other", 1, "0");
    GET_AT(s, "default", "other", 5, "0");
    PUT(s, "default", "k", "10");
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"k\"}")), 2);
    /* keep_last 1 keeps the head only. */
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":1}");
    PUT(s, "default", "k", "11");
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"k\"}")), 1);
    GET_IS(s, "default", "k", "11");
    const char *info = OK(s, "{\"op\":\"branch.info\",\"name\":\"default\"}");
    assert_non_null(strstr(info, "\"retention\":{\"keep_last\":1,\"keep_for_us\":0}"));
}

static void test_branch_retention_keep_for(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_for_us\":2500}");
    /* v1..v5 at ts 2000, 3000, 4000, 5000, 6000 */
    for (int i = 1; i <= 5; i++) {
        char v[8];
        snprintf(v, sizeof v, "%d", i);
        PUT(s, "default", "k", v);
    }
    /* At the last write (now = 6000) a version is kept while the version that replaced
     * it is newer than 6000 - 2500 = 3500: v2 (replaced at 4000), v3, v4; not v1. */
    EXPECT(s,
           "[{\"value\":5,\"deleted\":false,\"version\":5,\"ts\":6000},"
           "{\"value\":4,\"deleted\":false,\"version\":4,\"ts\":5000},"
           "{\"value\":3,\"deleted\":false,\"version\":3,\"ts\":4000},"
           "{\"value\":2,\"deleted\":false,\"version\":2,\"ts\":3000}]",
           "{\"op\":\"kv.history\",\"key\":\"k\"}");
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"as_of\":2500}");
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":1}");
    get_is(s, __FILE__, __LINE__, "default", "k", ",\"as_of\":3500", "2");
    /* branch.prune applies the policy with the command's time as "now": at 7000 the
     * window starts at 4500, so v2 (replaced at 4000) goes. */
    t_set_ts(6000);
    OK(s, "{\"op\":\"branch.prune\",\"name\":\"default\"}");
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"k\"}")), 3);
    GET_AT(s, "default", "k", 3, "3");
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":2}");
    /* Much later every version but the head is outside the window. */
    t_set_ts(100000);
    OK(s, "{\"op\":\"branch.prune\",\"name\":\"default\"}");
    EXPECT(s, "[{\"value\":5,\"deleted\":false,\"version\":5,\"ts\":6000}]",
           "{\"op\":\"kv.history\",\"key\":\"k\"}");
    GET_IS(s, "default", "k", "5");
}

static void test_branch_prune_applies_policy_to_whole_branch(void **state)
{
    struct storage *s = *state;
    for (int i = 0; i < 4; i++) {
        PUT(s, "default", "a", "1");
        PUT(s, "default", "b", "2");
        PUT(s, "default", "c", "3");
    }
    DEL(s, "default", "c");
    FORK(s, "default", "other");
    PUT(s, "other", "a", "9");
    PUT(s, "other", "a", "10");
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":2}");
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"other\",\"keep_last\":1}");
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"a\"}")), 4);
    EXPECT(s, "true", "{\"op\":\"branch.prune\",\"name\":\"default\"}");
    /* default: a and b keep 2 each; c keeps its tombstone and the value under it. The
     * fork pins the versions visible at its fork point (the heads: nothing extra). */
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"a\"}")), 2);
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"b\"}")), 2);
    assert_non_null(strstr(OK(s, "{\"op\":\"kv.history\",\"key\":\"c\"}"),
                           "[{\"value\":null,\"deleted\":true,"));
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"c\"}")), 2);
    GET_IS(s, "default", "c", NULL);
    /* The other branch is untouched by default's prune (its own writes pruned it). */
    const char *h = OK(s, "{\"op\":\"kv.history\",\"branch\":\"other\",\"key\":\"a\"}");
    assert_non_null(strstr(h, "[{\"value\":10,"));
    GET_IS(s, "other", "b", "2");
    GET_IS(s, "other", "c", NULL);
    EXPECT(s, "{\"keys\":[\"a\",\"b\"],\"cursor\":null}", "{\"op\":\"kv.list\",\"branch\":\"other\"}");
}

static void test_branch_retention_keeps_version_pinned_by_fork(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "k", "1"); /* v1 */
    PUT(s, "default", "k", "2"); /* v2 */
    FORK(s, "default", "c");     /* fork point 2 */
    PUT(s, "default", "k", "3"); /* v3 */
    PUT(s, "default", "k", "4"); /* v4 */
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":1}");
    PUT(s, "default", "k", "5"); /* v5: prunes v4, v3, v1 but not v2 */
    GET_IS(s, "c", "k", "2");
    GET_AT(s, "c", "k", 2, "2");
    GET_AT(s, "default", "k", 2, "2");
    GET_IS(s, "default", "k", "5");
    EXPECT(s, "{\"keys\":[\"k\"],\"cursor\":null}", "{\"op\":\"kv.list\",\"branch\":\"c\"}");
    EXPECT(s, "1", "{\"op\":\"kv.count\",\"branch\":\"c\"}");
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":1}");
    /* History shows only retained versions. */
    const char *h = OK(s, "{\"op\":\"kv.history\",\"key\":\"k\"}");
    assert_int_equal(count_versions(h), 2);
    assert_non_null(strstr(h, "\"value\":5,"));
    assert_non_null(strstr(h, "\"value\":2,"));
    /* Once the child is gone the pin is released by the next prune. */
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"c\"}");
    OK(s, "{\"op\":\"branch.prune\",\"name\":\"default\"}");
    assert_int_equal(count_versions(OK(s, "{\"op\":\"kv.history\",\"key\":\"k\"}")), 1);
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":2}");
}

/* A key the parent creates after a fork and whose older versions are then pruned never
 * existed for the child: the child reads it as absent, and lists/counts still work. */
static void test_branch_retention_parent_key_born_after_fork(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "a", "1");
    FORK(s, "default", "c");
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":1}");
    PUT(s, "default", "late", "1");
    PUT(s, "default", "late", "2"); /* prunes late@1, which the child never saw */
    GET_IS(s, "default", "late", "2");
    GET_IS(s, "c", "late", NULL);
    GET_IS(s, "c", "a", "1");
    EXPECT(s, "{\"keys\":[\"a\"],\"cursor\":null}", "{\"op\":\"kv.list\",\"branch\":\"c\"}");
    EXPECT(s, "1", "{\"op\":\"kv.count\",\"branch\":\"c\"}");
}

/* Pruning around a pinned version must not make a time-travel read return the pinned
 * (older) version for a point where a pruned (newer) one was current. */
static void test_branch_retention_no_stale_read_across_pruned_gap(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "k", "1"); /* v1 */
    PUT(s, "default", "k", "2"); /* v2 */
    FORK(s, "default", "c");     /* pins v2 */
    PUT(s, "default", "k", "3"); /* v3 */
    PUT(s, "default", "k", "4"); /* v4 */
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":1}");
    PUT(s, "default", "k", "5"); /* v5: chain becomes [5, 2] */
    GET_AT(s, "default", "k", 2, "2");
    /* At v3 and v4 the value was 3 and 4; those are gone: the answer is unavailable, not
     * the older value 2. */
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":3}");
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"at_version\":4}");
    FAILS(s, STRATA_HISTORY_UNAVAILABLE, "{\"op\":\"kv.get\",\"key\":\"k\",\"as_of\":6500}");
}

/* A grandchild forked from a child at a version before the child's own fork point reads
 * the grandparent at that older version: retention in the grandparent must keep it. */
static void test_branch_retention_pins_grandchild_fork_point(void **state)
{
    struct storage *s = *state;
    PUT(s, "default", "k", "1"); /* v1 */
    PUT(s, "default", "k", "2"); /* v2 */
    FORK(s, "default", "c");     /* fork point 2 */
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"c\",\"name\":\"g\",\"at_version\":1}");
    GET_IS(s, "g", "k", "1");
    OK(s, "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":1}");
    PUT(s, "default", "k", "3"); /* v3 */
    GET_IS(s, "c", "k", "2");
    GET_IS(s, "g", "k", "1");
}
static void test_branch_retention_bad_args(void **state)
{
    struct storage *s = *state;
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_for_us\":-1}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":-1}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"branch.set_retention\",\"name\":\"default\",\"keep_last\":\"2\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.set_retention\",\"name\":\"x\",\"keep_last\":2}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.set_retention\",\"keep_last\":2}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.prune\",\"name\":\"x\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"branch.prune\"}");
    const char *info = OK(s, "{\"op\":\"branch.info\",\"name\":\"default\"}");
    assert_non_null(strstr(info, "\"retention\":{\"keep_last\":0,\"keep_for_us\":0}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_branch_create_valid_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_create_invalid_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_create_duplicate_is_branch_exists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_list_sorted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_info_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_delete_default_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_delete_name_reusable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_delete_parent_children_keep_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_fork_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_fork_delete_shadows_parent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_fork_list_count_scan_through_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_fork_at_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_fork_many_all_or_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_fork_deep_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_fork_deep_time_travel_below_fork_point, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_retention_keep_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_retention_keep_for, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_retention_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_prune_applies_policy_to_whole_branch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_retention_keeps_version_pinned_by_fork, setup, teardown),
        /* The next three fail on the current engine: reported retention bugs. */
        cmocka_unit_test_setup_teardown(test_branch_retention_parent_key_born_after_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_retention_no_stale_read_across_pruned_gap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_branch_retention_pins_grandchild_fork_point, setup, teardown),
    };
    return cmocka_run_group_tests_name("storage_branch", tests, NULL, NULL);
}
