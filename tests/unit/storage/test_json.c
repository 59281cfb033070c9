/* JSON document primitive: paths, edits, time travel, batches, limits, three-way merge. */
#include "helpers.h"

#include "internal.h"

#include <stdio.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

#define SET(s, key, path, value)                                                                   \
    OK(s, "{\"op\":\"json.set\",\"key\":\"%s\",\"path\":\"%s\",\"value\":%s}", key, path, value)
#define GET(s, expect, key, path)                                                                  \
    EXPECT(s, expect, "{\"op\":\"json.get\",\"key\":\"%s\",\"path\":\"%s\"}", key, path)

static void test_json_set_get_root(void **state)
{
    struct storage *s = *state;
    EXPECT(
        s, "{\"version\":1,\"ts\":1000}",
        "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$\",\"value\":{\"a\":1,\"b\":[true,null]}}");
    GET(s, "{\"a\":1,\"b\":[true,null]}", "d", "$");
    /* path defaults to $ for reads */
    EXPECT(s, "{\"a\":1,\"b\":[true,null]}", "{\"op\":\"json.get\",\"key\":\"d\"}");
    /* Setting $ replaces the whole document, whatever its type. */
    SET(s, "d", "$", "\"scalar\"");
    GET(s, "\"scalar\"", "d", "$");
    EXPECT(s, "null", "{\"op\":\"json.get\",\"key\":\"missing\"}");
    assert_int_equal(storage_version(s), 2);
}

static void test_json_set_nested_creates_objects(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$.a.b.c", "1");
    GET(s, "{\"a\":{\"b\":{\"c\":1}}}", "d", "$");
    SET(s, "d", "$.a.x", "\"y\"");
    GET(s, "{\"b\":{\"c\":1},\"x\":\"y\"}", "d", "$.a");
    SET(s, "d", "$.a.b.c", "{\"deep\":[1]}"); /* replace an existing member */
    GET(s, "[1]", "d", "$.a.b.c.deep");
    /* Quoted names address any key, including ones that need quoting. */
    SET(s, "d", "$[\\\"with space\\\"][\\\"\\\"]", "2");
    GET(s, "2", "d", "$[\\\"with space\\\"][\\\"\\\"]");
    GET(s, "null", "d", "$[\\\"with space\\\"].x");
    GET(s, "1", "d", "$[\\\"a\\\"].b[\\\"c\\\"].deep[0]");
    /* Escaped quote and backslash inside a quoted name. */
    SET(s, "d", "$[\\\"q\\\\\\\"b\\\\\\\\\\\"]", "3");
    GET(s, "3", "d", "$[\\\"q\\\\\\\"b\\\\\\\\\\\"]");
    assert_non_null(strstr(OK(s, "{\"op\":\"json.get\",\"key\":\"d\"}"), "\"q\\\"b\\\\\":3"));
    /* Names with dashes, digits and UTF-8 need no quotes. */
    SET(s, "e", "$.x-1.\xc3\xa9t\xc3\xa9", "true");
    GET(s, "{\"x-1\":{\"\xc3\xa9t\xc3\xa9\":true}}", "e", "$");
}

static void test_json_array_index_get_set_append(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"l\":[1,2],\"m\":[[0]]}");
    GET(s, "1", "d", "$.l[0]");
    GET(s, "2", "d", "$.l[1]");
    GET(s, "null", "d", "$.l[2]");
    SET(s, "d", "$.l[1]", "5");
    SET(s, "d", "$.l[2]", "3"); /* index == length appends */
    GET(s, "[1,5,3]", "d", "$.l");
    SET(s, "d", "$.m[0][1]", "{\"k\":1}");
    SET(s, "d", "$.m[0][1].k", "2");
    GET(s, "[[0,{\"k\":2}]]", "d", "$.m");
    SET(s, "r", "$", "[]");
    SET(s, "r", "$[0]", "\"first\"");
    GET(s, "[\"first\"]", "r", "$");
    uint64_t v = storage_version(s);
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                            "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.l[4]\",\"value\":0}");
    assert_non_null(strstr(msg, "'$.l' has length 3"));
    /* Only the last segment may append. */
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.l[3].x\",\"value\":0}");
    /* Arrays are never created on the way. */
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.new[0]\",\"value\":0}");
    assert_non_null(strstr(msg, "'$.new' does not exist"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"json.set\",\"key\":\"nodoc\",\"path\":\"$[0]\",\"value\":0}");
    assert_int_equal(storage_version(s), v);
    GET(s, "[1,5,3]", "d", "$.l");
}

static void test_json_get_missing_is_null(void **state)
{
    struct storage *s = *state;
    GET(s, "null", "nodoc", "$.a.b");
    SET(s, "d", "$", "{\"a\":{\"b\":null},\"l\":[]}");
    GET(s, "null", "d", "$.x");
    GET(s, "null", "d", "$.a.x.y");
    GET(s, "null", "d", "$.l[0]");
    GET(s, "null", "d", "$.l[0].z");
    GET(s, "null", "d", "$.a.b"); /* a stored null reads as null too */
}

static void test_json_wrong_type_traversal(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"a\":5,\"l\":[1],\"n\":null}");
    const char *msg = FAILS(s, STRATA_WRONG_TYPE,
                            "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.a.b\",\"value\":1}");
    assert_non_null(strstr(msg, "path '$.a.b': '$.a' is a number, not an object"));
    msg = FAILS(s, STRATA_WRONG_TYPE,
                "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.l.x\",\"value\":1}");
    assert_non_null(strstr(msg, "'$.l' is an array, not an object"));
    msg = FAILS(s, STRATA_WRONG_TYPE,
                "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$[0]\",\"value\":1}");
    assert_non_null(strstr(msg, "'$' is an object, not an array"));
    FAILS(s, STRATA_WRONG_TYPE,
          "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.n.x\",\"value\":1}");
    FAILS(s, STRATA_WRONG_TYPE, "{\"op\":\"json.get\",\"key\":\"d\",\"path\":\"$.a[0]\"}");
    FAILS(s, STRATA_WRONG_TYPE, "{\"op\":\"json.get\",\"key\":\"d\",\"path\":\"$.l[0].x\"}");
    FAILS(s, STRATA_WRONG_TYPE, "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.a.b\"}");
    FAILS(s, STRATA_WRONG_TYPE, "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.l.b\"}");
    assert_int_equal(storage_version(s), 1);
    GET(s, "{\"a\":5,\"l\":[1],\"n\":null}", "d", "$");
}

static void test_json_malformed_paths(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"a\":{\"b\":1}}");
    const char *bad[] = {"a.b",
                         "$.",
                         "$[x]",
                         "$[",
                         "$..a",
                         "",
                         "$a",
                         "$.a.",
                         "$[01]",
                         "$[-1]",
                         "$[1",
                         "$[4294967296]",
                         "$ .a",
                         "$.a b",
                         "$[\\\"a]",
                         "$[\\\"a\\\"",
                         "$[\\\"a\\\\x\\\"]",
                         "$.a[]",
                         "$$",
                         "$.a\\\"b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *msg =
            FAILS(s, STRATA_INVALID_ARGUMENT,
                  "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"%s\",\"value\":1}", bad[i]);
        assert_non_null(strstr(msg, "invalid path"));
        FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.get\",\"key\":\"d\",\"path\":\"%s\"}",
              bad[i]);
        FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"%s\"}",
              bad[i]);
    }
    /* Other bad arguments. */
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.set\",\"key\":\"d\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.set\",\"path\":\"$\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"json.set\",\"key\":\"\",\"path\":\"$\",\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.set\",\"key\":\"d\",\"path\":7,\"value\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.get\",\"key\":\"d\",\"path\":[]}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.get\",\"path\":\"$\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.delete\",\"key\":3}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"json.history\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$\",\"value\":1,\"at_version\":1}");
    /* A path longer than the nesting limit (24 segments) cannot address anything. */
    char deep[2 * 30 + 2] = "$";
    for (int i = 0; i < 25; i++)
        strcat(deep, ".a");
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                            "{\"op\":\"json.get\",\"key\":\"d\",\"path\":\"%s\"}", deep);
    assert_non_null(strstr(msg, "more than 24 segments"));
    assert_int_equal(storage_version(s), 1);
    GET(s, "{\"a\":{\"b\":1}}", "d", "$");
}

static void test_json_delete_member_element_doc(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"a\":1,\"b\":{\"c\":2,\"d\":3},\"l\":[10,20,30]}"); /* v1 */
    EXPECT(s, "{\"version\":2,\"ts\":2000,\"deleted\":true}",
           "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.b.c\"}");
    GET(s, "{\"a\":1,\"b\":{\"d\":3},\"l\":[10,20,30]}", "d", "$");
    EXPECT(s, "{\"version\":3,\"ts\":4000,\"deleted\":true}",
           "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.l[1]\"}");
    GET(s, "[10,30]", "d", "$.l");
    /* Absent members, elements and documents: nothing written. */
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.zz\"}");
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.l[2]\"}");
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.x.y\"}");
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"json.delete\",\"key\":\"nodoc\"}");
    EXPECT(s, "{\"deleted\":false}", "{\"op\":\"json.delete\",\"key\":\"nodoc\",\"path\":\"$.a\"}");
    assert_int_equal(storage_version(s), 3);
    /* The whole document: path $ or no path. */
    EXPECT(s, "{\"version\":4,\"ts\":11000,\"deleted\":true}",
           "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$\"}");
    GET(s, "null", "d", "$");
    SET(s, "d", "$.a", "1");
    GET(s, "{\"a\":1}", "d", "$"); /* recreated from scratch */
    assert_non_null(strstr(OK(s, "{\"op\":\"json.delete\",\"key\":\"d\"}"), "\"deleted\":true"));
    GET(s, "null", "d", "$");
    /* Deleting the last member leaves an empty object, not an absent document. */
    SET(s, "e", "$.only", "1");
    OK(s, "{\"op\":\"json.delete\",\"key\":\"e\",\"path\":\"$.only\"}");
    GET(s, "{}", "e", "$");
}

static void test_json_time_travel(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"a\":1}");                                    /* v1 ts 1000 */
    SET(s, "d", "$.b", "2");                                          /* v2 ts 2000 */
    OK(s, "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.a\"}"); /* v3 ts 3000 */
    OK(s, "{\"op\":\"json.delete\",\"key\":\"d\"}");                  /* v4 ts 4000 */
    EXPECT(s, "null", "{\"op\":\"json.get\",\"key\":\"d\",\"at_version\":0}");
    EXPECT(s, "{\"a\":1}", "{\"op\":\"json.get\",\"key\":\"d\",\"at_version\":1}");
    EXPECT(s, "{\"a\":1,\"b\":2}", "{\"op\":\"json.get\",\"key\":\"d\",\"at_version\":2}");
    EXPECT(s, "1", "{\"op\":\"json.get\",\"key\":\"d\",\"path\":\"$.a\",\"at_version\":2}");
    EXPECT(s, "null", "{\"op\":\"json.get\",\"key\":\"d\",\"path\":\"$.a\",\"at_version\":3}");
    EXPECT(s, "{\"b\":2}", "{\"op\":\"json.get\",\"key\":\"d\",\"as_of\":3500}");
    EXPECT(s, "{\"a\":1}", "{\"op\":\"json.get\",\"key\":\"d\",\"as_of\":1999}");
    EXPECT(s, "null", "{\"op\":\"json.get\",\"key\":\"d\",\"as_of\":999}");
    EXPECT(s, "null", "{\"op\":\"json.get\",\"key\":\"d\"}");
}

static void test_json_history(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"a\":1}");
    SET(s, "d", "$.a", "2");
    OK(s, "{\"op\":\"json.delete\",\"key\":\"d\"}");
    SET(s, "other", "$", "0");
    EXPECT(s,
           "[{\"value\":null,\"deleted\":true,\"version\":3,\"ts\":3000},"
           "{\"value\":{\"a\":2},\"deleted\":false,\"version\":2,\"ts\":2000},"
           "{\"value\":{\"a\":1},\"deleted\":false,\"version\":1,\"ts\":1000}]",
           "{\"op\":\"json.history\",\"key\":\"d\"}");
    EXPECT(s, "[{\"value\":{\"a\":1},\"deleted\":false,\"version\":1,\"ts\":1000}]",
           "{\"op\":\"json.history\",\"key\":\"d\",\"at_version\":1}");
    EXPECT(s, "[]", "{\"op\":\"json.history\",\"key\":\"nodoc\"}");
}

static void test_json_list_prefix(void **state)
{
    struct storage *s = *state;
    SET(s, "user:1", "$", "{}");
    SET(s, "user:2", "$", "{}");
    SET(s, "user:3", "$", "{}");
    SET(s, "team:1", "$", "{}");
    OK(s, "{\"op\":\"json.delete\",\"key\":\"user:2\"}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"user:9\",\"value\":1}"); /* other primitive */
    EXPECT(s, "{\"keys\":[\"user:1\",\"user:3\"],\"cursor\":null}",
           "{\"op\":\"json.list\",\"prefix\":\"user:\"}");
    EXPECT(s, "{\"keys\":[\"team:1\"],\"cursor\":\"team:1\"}",
           "{\"op\":\"json.list\",\"limit\":1}");
    EXPECT(s, "{\"keys\":[\"user:1\",\"user:3\"],\"cursor\":null}",
           "{\"op\":\"json.list\",\"cursor\":\"team:1\"}");
    EXPECT(s, "{\"keys\":[],\"cursor\":null}", "{\"op\":\"json.list\",\"space\":\"other\"}");
    EXPECT(s, "{\"keys\":[\"team:1\",\"user:1\",\"user:2\",\"user:3\"],\"cursor\":null}",
           "{\"op\":\"json.list\",\"at_version\":4}");
}

static void test_json_in_batch(void **state)
{
    struct storage *s = *state;
    EXPECT(s,
           "[{\"version\":1,\"ts\":1000},{\"version\":1,\"ts\":1000},{\"version\":1,\"ts\":1000}]",
           "{\"op\":\"batch\",\"ops\":["
           "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$\",\"value\":{\"n\":1}},"
           "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.m\",\"value\":2},"
           "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.n\",\"value\":3}]}");
    GET(s, "{\"n\":3,\"m\":2}", "d", "$");
    assert_int_equal(storage_version(s), 1);
    EXPECT(s, "[{\"version\":2,\"ts\":3000,\"deleted\":true},{\"version\":2,\"ts\":3000}]",
           "{\"op\":\"batch\",\"ops\":["
           "{\"op\":\"json.delete\",\"key\":\"d\",\"path\":\"$.n\"},"
           "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.k\",\"value\":4}]}");
    GET(s, "{\"m\":2,\"k\":4}", "d", "$");
    /* A failing op rejects the whole batch. */
    const char *msg = FAILS(s, STRATA_WRONG_TYPE,
                            "{\"op\":\"batch\",\"ops\":["
                            "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.z\",\"value\":1},"
                            "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.m.x\",\"value\":1}]}");
    assert_non_null(strstr(msg, "op 1:"));
    GET(s, "{\"m\":2,\"k\":4}", "d", "$");
    assert_int_equal(storage_version(s), 2);
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"batch\",\"ops\":[{\"op\":\"json.get\",\"key\":\"d\"}]}");
}

static void test_json_spaces_and_forks(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"a\":1}");
    OK(s, "{\"op\":\"json.set\",\"key\":\"d\",\"space\":\"s2\",\"path\":\"$.b\",\"value\":2}");
    GET(s, "{\"a\":1}", "d", "$");
    EXPECT(s, "{\"b\":2}", "{\"op\":\"json.get\",\"key\":\"d\",\"space\":\"s2\"}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    OK(s, "{\"op\":\"json.set\",\"key\":\"d\",\"branch\":\"f\",\"path\":\"$.c\",\"value\":3}");
    EXPECT(s, "{\"a\":1,\"c\":3}", "{\"op\":\"json.get\",\"key\":\"d\",\"branch\":\"f\"}");
    GET(s, "{\"a\":1}", "d", "$");
}

static void test_json_limits(void **state)
{
    struct storage_config cfg;
    storage_config_default(&cfg);
    cfg.max_value_bytes = 100;
    cfg.max_depth = 3;
    struct storage *s;
    assert_int_equal(storage_new(&cfg, &s), 0);
    char str[61];
    memset(str, 'x', 60);
    str[60] = 0;
    OK(s, "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.a\",\"value\":\"%s\"}", str);
    /* Each value fits alone; the document with both does not. */
    const char *msg =
        FAILS(s, STRATA_INVALID_ARGUMENT,
              "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.b\",\"value\":\"%s\"}", str);
    assert_non_null(strstr(msg, "limit of 100 bytes"));
    OK(s, "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.b\",\"value\":{\"c\":1}}");
    /* Nesting counts the whole document. */
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.b.c\",\"value\":[1]}");
    assert_non_null(strstr(msg, "nesting"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.b.x.y\",\"value\":1}");
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"json.get\",\"key\":\"d\",\"path\":\"$.a.b.c.d\"}");
    assert_non_null(strstr(msg, "more than 3 segments"));
    assert_int_equal(storage_version(s), 2);
    assert_non_null(strstr(OK(s, "{\"op\":\"json.get\",\"key\":\"d\"}"), "\"b\":{\"c\":1}}"));
    storage_free(s);
}

/* Allocation failures anywhere in json.set fail the command cleanly (OUT_OF_MEMORY) and
 * leave the engine as it was. */
static void test_json_set_out_of_memory_changes_nothing(void **state)
{
    struct storage *s = *state;
    SET(s, "d", "$", "{\"a\":{\"b\":[1,2]}}");
    const char *cmd =
        "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$.a.c[\\\"x\\\"]\",\"value\":7}";
    struct buf c, res;
    struct err err;
    buf_init(&c);
    buf_init(&res);
    assert_int_equal(storage_json_to_value(cmd, strlen(cmd), &c, &err), 0);
    int failed = 0;
    for (long n = 1;; n++) {
        uint64_t v = storage_version(s);
        sm_fail_after(n);
        int rc = storage_exec(s, c.data, c.len, 1000000 + n, &res, &err);
        sm_fail_after(0);
        if (rc == 0)
            break; /* the n-th allocation was never reached */
        assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
        assert_int_equal(res.len, 0);
        assert_int_equal(storage_version(s), v);
        GET(s, "{\"a\":{\"b\":[1,2]}}", "d", "$");
        failed++;
    }
    assert_true(failed > 0);
    GET(s, "{\"b\":[1,2],\"c\":{\"x\":7}}", "d", "$.a");
    buf_close(&c);
    buf_close(&res);
}

/* ---- json_merge3 ------------------------------------------------------------------------ */

struct mres {
    int rc;
    char doc[1024];       /* merged document as JSON, or "absent" */
    char conflicts[1024]; /* JSON array of conflict paths */
    uint32_t n;
};

static void enc(const char *json, struct buf *out)
{
    struct err err;
    buf_init(out);
    if (json)
        assert_int_equal(storage_json_to_value(json, strlen(json), out, &err), 0);
}

static void run_merge(const char *b, const char *t, const char *s, bool source_wins, struct mres *r)
{
    struct storage_config cfg;
    storage_config_default(&cfg);
    struct buf bb, tb, sb, out, conf, arr;
    enc(b, &bb);
    enc(t, &tb);
    enc(s, &sb);
    buf_init(&out);
    buf_init(&conf);
    buf_init(&arr);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &conf, buf_pack_write);
    struct err err;
    err_clear(&err);
    r->n = 0;
    r->rc = json_merge3(&cfg, b ? bb.data : NULL, bb.len, t ? tb.data : NULL, tb.len,
                        s ? sb.data : NULL, sb.len, source_wins, &out, &pk, &r->n, &err);
    snprintf(r->doc, sizeof r->doc, "absent");
    if (r->rc == 0 && out.len) {
        struct buf j;
        buf_init(&j);
        assert_int_equal(storage_value_to_json(out.data, out.len, &j, false), 0);
        snprintf(r->doc, sizeof r->doc, "%.*s", (int)j.len, (const char *)j.data);
        buf_close(&j);
    }
    /* The conflict paths are a bare sequence of strings: wrap them in an array. */
    msgpack_packer apk;
    msgpack_packer_init(&apk, &arr, buf_pack_write);
    msgpack_pack_array(&apk, r->n);
    buf_append(&arr, conf.data, conf.len);
    struct buf j;
    buf_init(&j);
    assert_int_equal(storage_value_to_json(arr.data, arr.len, &j, false), 0);
    snprintf(r->conflicts, sizeof r->conflicts, "%.*s", (int)j.len, (const char *)j.data);
    buf_close(&j);
    buf_close(&bb);
    buf_close(&tb);
    buf_close(&sb);
    buf_close(&out);
    buf_close(&conf);
    buf_close(&arr);
}

#define MERGE(b, t, s, sw, want_doc, want_conflicts)                                               \
    do {                                                                                           \
        struct mres r_;                                                                            \
        run_merge(b, t, s, sw, &r_);                                                               \
        assert_int_equal(r_.rc, 0);                                                                \
        assert_string_equal(r_.doc, want_doc);                                                     \
        assert_string_equal(r_.conflicts, want_conflicts);                                         \
    } while (0)

static void test_json_merge3_disjoint_paths(void **state)
{
    (void)state;
    MERGE("{\"a\":1,\"b\":{\"x\":1,\"y\":1},\"c\":0}", "{\"a\":2,\"b\":{\"x\":2,\"y\":1},\"c\":0}",
          "{\"a\":1,\"b\":{\"x\":1,\"y\":3},\"d\":4}", false,
          "{\"a\":2,\"b\":{\"x\":2,\"y\":3},\"d\":4}", "[]");
    /* Only one side changed: that side wins wholesale. */
    MERGE("{\"a\":1}", "{\"a\":1}", "{\"a\":1,\"z\":[1]}", false, "{\"a\":1,\"z\":[1]}", "[]");
    MERGE("{\"a\":1}", "{\"a\":5}", "{\"a\":1}", false, "{\"a\":5}", "[]");
    /* Order: target's members in target order, then source-only members in source order. */
    MERGE("{\"m\":0}", "{\"t2\":1,\"m\":0,\"t1\":1}", "{\"s2\":1,\"m\":0,\"s1\":1}", false,
          "{\"t2\":1,\"m\":0,\"t1\":1,\"s2\":1,\"s1\":1}", "[]");
    /* Both sides created the document with disjoint members. */
    MERGE(NULL, "{\"a\":1}", "{\"b\":2}", false, "{\"a\":1,\"b\":2}", "[]");
}

static void test_json_merge3_conflict_paths(void **state)
{
    (void)state;
    MERGE("{\"a\":{\"b\":1}}", "{\"a\":{\"b\":2}}", "{\"a\":{\"b\":3}}", false, "{\"a\":{\"b\":2}}",
          "[\"$.a.b\"]");
    MERGE("{\"a\":{\"b\":1}}", "{\"a\":{\"b\":2}}", "{\"a\":{\"b\":3}}", true, "{\"a\":{\"b\":3}}",
          "[\"$.a.b\"]");
    /* Arrays are atomic: different edits conflict at the array's path. */
    MERGE("{\"l\":[1,2]}", "{\"l\":[0,2]}", "{\"l\":[1,3]}", false, "{\"l\":[0,2]}", "[\"$.l\"]");
    /* Scalar vs object at the same path. */
    MERGE("{\"a\":1}", "{\"a\":{\"x\":1}}", "{\"a\":2}", true, "{\"a\":2}", "[\"$.a\"]");
    /* Names that need quoting are rendered quoted; several conflicts in member order. */
    MERGE("{\"x y\":1,\"q\":1}", "{\"x y\":2,\"q\":2}", "{\"x y\":3,\"q\":3}", false,
          "{\"x y\":2,\"q\":2}", "[\"$[\\\"x y\\\"]\",\"$.q\"]");
    /* Both added the same new member with different values. */
    MERGE("{}", "{\"n\":1}", "{\"n\":2}", false, "{\"n\":1}", "[\"$.n\"]");
    /* Root scalars. */
    MERGE("1", "2", "3", false, "2", "[\"$\"]");
}

static void test_json_merge3_same_change_no_conflict(void **state)
{
    (void)state;
    MERGE("{\"a\":1,\"l\":[1]}", "{\"a\":2,\"l\":[1,2]}", "{\"a\":2,\"l\":[1,2]}", false,
          "{\"a\":2,\"l\":[1,2]}", "[]");
    /* Both deleted the same member, or the whole document. */
    MERGE("{\"a\":1,\"b\":1}", "{\"b\":1}", "{\"b\":1}", false, "{\"b\":1}", "[]");
    MERGE("{\"a\":1}", NULL, NULL, false, "absent", "[]");
    /* Int and float are different values: 1 vs 1.0 is a real conflict. */
    MERGE("{\"a\":0}", "{\"a\":1}", "{\"a\":1.0}", false, "{\"a\":1}", "[\"$.a\"]");
    /* Member order differs but the contents are the same: merged per member, no conflict. */
    MERGE(NULL, "{\"a\":1,\"b\":2}", "{\"b\":2,\"a\":1}", false, "{\"a\":1,\"b\":2}", "[]");
}

static void test_json_merge3_delete_vs_modify(void **state)
{
    (void)state;
    /* Delete on one side, unchanged on the other: deleted. */
    MERGE("{\"a\":1,\"b\":1}", "{\"b\":1}", "{\"a\":1,\"b\":1}", false, "{\"b\":1}", "[]");
    MERGE("{\"a\":1,\"b\":1}", "{\"a\":1,\"b\":1}", "{\"b\":1}", false, "{\"b\":1}", "[]");
    MERGE("{\"a\":1}", "{\"a\":1}", NULL, false, "absent", "[]");
    MERGE("{\"a\":1}", NULL, "{\"a\":1}", false, "absent", "[]");
    /* Delete on one side, modified on the other: conflict. */
    MERGE("{\"a\":1,\"b\":1}", "{\"b\":1}", "{\"a\":2,\"b\":1}", false, "{\"b\":1}", "[\"$.a\"]");
    MERGE("{\"a\":1,\"b\":1}", "{\"b\":1}", "{\"a\":2,\"b\":1}", true, "{\"b\":1,\"a\":2}",
          "[\"$.a\"]");
    MERGE("{\"a\":1,\"b\":1}", "{\"a\":2,\"b\":1}", "{\"b\":1}", true, "{\"b\":1}", "[\"$.a\"]");
    MERGE("{\"a\":1}", NULL, "{\"a\":2}", false, "absent", "[\"$\"]");
    MERGE("{\"a\":1}", NULL, "{\"a\":2}", true, "{\"a\":2}", "[\"$\"]");
    MERGE("{\"a\":1}", "{\"a\":2}", NULL, true, "absent", "[\"$\"]");
    /* Created on one side only. */
    MERGE(NULL, NULL, "{\"a\":1}", false, "{\"a\":1}", "[]");
}

static void test_json_merge3_output_is_canonical(void **state)
{
    (void)state;
    struct storage_config cfg;
    storage_config_default(&cfg);
    /* A float32 and a wide int in the inputs come out as float64 and the smallest int. */
    const uint8_t src[] = {0x82, 0xa1, 'f',  0xca, 0x3f, 0xc0, 0x00, 0x00, /* f: 1.5f */
                           0xa1, 'i',  0xd3, 0,    0,    0,    0,    0,
                           0,    0,    5}; /* i: int64 5 */
    const uint8_t want[] = {0x82, 0xa1, 'f', 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xa1, 'i', 0x05};
    struct buf out;
    buf_init(&out);
    struct err err;
    uint32_t n = 0;
    assert_int_equal(
        json_merge3(&cfg, NULL, 0, NULL, 0, src, sizeof src, false, &out, NULL, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(out.len, sizeof want);
    assert_memory_equal(out.data, want, sizeof want);
    /* The same merge twice gives the same bytes. */
    struct buf again;
    buf_init(&again);
    assert_int_equal(
        json_merge3(&cfg, NULL, 0, NULL, 0, src, sizeof src, false, &again, NULL, NULL, &err), 0);
    assert_int_equal(again.len, out.len);
    assert_memory_equal(again.data, out.data, out.len);
    buf_close(&again);
    buf_close(&out);
}

static void test_json_merge3_too_large(void **state)
{
    (void)state;
    struct storage_config cfg;
    storage_config_default(&cfg);
    cfg.max_value_bytes = 100;
    struct buf b, t, s, out;
    char doc[128];
    enc("{}", &b);
    snprintf(doc, sizeof doc, "{\"a\":\"%060d\"}", 0);
    enc(doc, &t);
    snprintf(doc, sizeof doc, "{\"b\":\"%060d\"}", 0);
    enc(doc, &s);
    buf_init(&out);
    struct err err;
    uint32_t n = 0;
    assert_int_equal(
        json_merge3(&cfg, b.data, b.len, t.data, t.len, s.data, s.len, false, &out, NULL, &n, &err),
        STRATA_INVALID_ARGUMENT);
    buf_close(&b);
    buf_close(&t);
    buf_close(&s);
    buf_close(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_set_get_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_set_nested_creates_objects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_array_index_get_set_append, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_get_missing_is_null, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_wrong_type_traversal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_malformed_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_delete_member_element_doc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_time_travel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_list_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_in_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_spaces_and_forks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_set_out_of_memory_changes_nothing, setup,
                                        teardown),
        cmocka_unit_test(test_json_limits),
        cmocka_unit_test(test_json_merge3_disjoint_paths),
        cmocka_unit_test(test_json_merge3_conflict_paths),
        cmocka_unit_test(test_json_merge3_same_change_no_conflict),
        cmocka_unit_test(test_json_merge3_delete_vs_modify),
        cmocka_unit_test(test_json_merge3_output_is_canonical),
        cmocka_unit_test(test_json_merge3_too_large),
    };
    return cmocka_run_group_tests_name("storage_json", tests, NULL, NULL);
}
