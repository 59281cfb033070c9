/* Vector primitive: collections, upsert/get/delete, exact top-k queries (checked against
 * a brute-force computation), metadata filters, forks and time travel. */
#include "helpers.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

/* ---- Query results decoded from msgpack --------------------------------------------- */

struct hit {
    char key[64];
    double score;
};

/* Run a vector.query given as JSON text; decode [{key, score, metadata}...] into hits.
 * Returns the number of hits. */
static int query(struct storage *s, struct hit *hits, int max, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int query(struct storage *s, struct hit *hits, int max, const char *fmt, ...)
{
    char json[1 << 14];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    struct err err;
    assert_int_equal(storage_json_to_value(json, strlen(json), &cmd, &err), 0);
    int rc = storage_exec(s, cmd.data, cmd.len, 1, &res, &err);
    if (rc)
        fprintf(stderr, "query failed: %s\n", err.msg);
    assert_int_equal(rc, 0);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    assert_int_equal(msgpack_unpack((const char *)res.data, res.len, &off, &z, &o),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(o.type, MSGPACK_OBJECT_ARRAY);
    int n = (int)o.via.array.size;
    assert_true(n <= max);
    for (int i = 0; i < n; i++) {
        const msgpack_object *m = &o.via.array.ptr[i];
        assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
        assert_int_equal(m->via.map.size, 3);
        const msgpack_object *k = &m->via.map.ptr[0].val, *sc = &m->via.map.ptr[1].val;
        assert_int_equal(k->type, MSGPACK_OBJECT_STR);
        assert_int_equal(sc->type, MSGPACK_OBJECT_FLOAT64);
        snprintf(hits[i].key, sizeof hits[i].key, "%.*s", (int)k->via.str.size, k->via.str.ptr);
        hits[i].score = sc->via.f64;
    }
    msgpack_zone_destroy(&z);
    buf_close(&cmd);
    buf_close(&res);
    return n;
}

/* Keys of a query's result, comma-separated (static buffer). */
static const char *keys(struct storage *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const char *keys(struct storage *s, const char *fmt, ...)
{
    static char out[4096];
    char json[1 << 14];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    struct hit hits[100];
    int n = query(s, hits, 100, "%s", json);
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        if (i)
            strcat(out, ",");
        strcat(out, hits[i].key);
    }
    return out;
}

/* ---- Collections ---------------------------------------------------------------------- */

static void test_vector_create_list_delete_collection(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "[]", "{\"op\":\"vector.list_collections\"}");
    EXPECT(s, "{\"version\":1,\"ts\":2000}",
           "{\"op\":\"vector.create_collection\",\"collection\":\"docs\",\"dimension\":3,"
           "\"metric\":\"cosine\"}");
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"A.b-c_1\",\"dimension\":2,"
          "\"metric\":\"dot\"}");
    const char *msg = FAILS(s, STRATA_ALREADY_EXISTS,
                            "{\"op\":\"vector.create_collection\",\"collection\":\"docs\","
                            "\"dimension\":3,\"metric\":\"cosine\"}");
    assert_non_null(strstr(msg, "'docs' already exists"));
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"docs\",\"key\":\"a\",\"vector\":[1,0,0]}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"docs\",\"key\":\"b\",\"vector\":[0,1,0]}");
    EXPECT(s,
           "[{\"name\":\"A.b-c_1\",\"dimension\":2,\"metric\":\"dot\",\"count\":0},"
           "{\"name\":\"docs\",\"dimension\":3,\"metric\":\"cosine\",\"count\":2}]",
           "{\"op\":\"vector.list_collections\"}");
    /* Another space has its own collections. */
    EXPECT(s, "[]", "{\"op\":\"vector.list_collections\",\"space\":\"other\"}");

    EXPECT(s, "{\"version\":5,\"ts\":9000,\"vectors_deleted\":2}",
           "{\"op\":\"vector.delete_collection\",\"collection\":\"docs\"}");
    EXPECT(s, "[{\"name\":\"A.b-c_1\",\"dimension\":2,\"metric\":\"dot\",\"count\":0}]",
           "{\"op\":\"vector.list_collections\"}");
    FAILS(s, STRATA_NOT_FOUND, "{\"op\":\"vector.delete_collection\",\"collection\":\"docs\"}");
    FAILS(s, STRATA_NOT_FOUND, "{\"op\":\"vector.get\",\"collection\":\"docs\",\"key\":\"a\"}");
    /* Re-created with another dimension: the old vectors do not show through. */
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"docs\",\"dimension\":2,"
          "\"metric\":\"euclidean\"}");
    EXPECT(s, "null", "{\"op\":\"vector.get\",\"collection\":\"docs\",\"key\":\"a\"}");
    EXPECT(s, "[]", "{\"op\":\"vector.query\",\"collection\":\"docs\",\"vector\":[1,0],\"k\":5}");
    /* The collection's history is still readable. */
    EXPECT(s,
           "[{\"name\":\"A.b-c_1\",\"dimension\":2,\"metric\":\"dot\",\"count\":0},"
           "{\"name\":\"docs\",\"dimension\":3,\"metric\":\"cosine\",\"count\":2}]",
           "{\"op\":\"vector.list_collections\",\"at_version\":4}");
    assert_string_equal(keys(s, "{\"op\":\"vector.query\",\"collection\":\"docs\","
                                "\"vector\":[1,0,0],\"k\":5,\"at_version\":4}"),
                        "a,b");
}

static void test_vector_create_collection_bad_input(void **state)
{
    struct storage *s = *state;
    const char *msg;
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":3,"
                "\"metric\":\"manhattan\"}");
    assert_non_null(strstr(msg, "metric"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":0,"
                "\"metric\":\"dot\"}");
    assert_non_null(strstr(msg, "between 1 and 4096"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":5000,"
                "\"metric\":\"dot\"}");
    assert_non_null(strstr(msg, "between 1 and 4096"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":-3,"
          "\"metric\":\"dot\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":3.0,"
          "\"metric\":\"dot\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"metric\":\"dot\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":3}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.create_collection\",\"dimension\":3,\"metric\":\"dot\"}");
    const char *bad_names[] = {"", "a b", "a/b", "caf\\u00e9",
                               "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                    "{\"op\":\"vector.create_collection\",\"collection\":\"%s\",\"dimension\":3,"
                    "\"metric\":\"dot\"}",
                    bad_names[i]);
        assert_non_null(strstr(msg, "collection name"));
    }
    /* 64 characters is the limit, 4096 the largest dimension. */
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":"
          "\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\",\"dimension\":4096,"
          "\"metric\":\"dot\"}");
    /* Creating and deleting collections cannot be batched. */
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"batch\",\"ops\":[{\"op\":\"vector.create_collection\",\"collection\":\"c\","
          "\"dimension\":3,\"metric\":\"dot\"}]}");
    assert_int_equal(storage_version(s), 1);
}

/* ---- Vectors ---------------------------------------------------------------------------- */

static void test_vector_upsert_get_delete(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,"
          "\"metric\":\"cosine\"}");
    EXPECT(s, "{\"version\":2,\"ts\":2000}",
           "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,-2.5],"
           "\"metadata\":{\"tag\":\"x\",\"n\":[1,2]}}");
    EXPECT(s,
           "{\"vector\":[1.0,-2.5],\"metadata\":{\"tag\":\"x\",\"n\":[1,2]},\"version\":2,"
           "\"ts\":2000}",
           "{\"op\":\"vector.get\",\"collection\":\"c\",\"key\":\"a\"}");
    EXPECT(s, "null", "{\"op\":\"vector.get\",\"collection\":\"c\",\"key\":\"zz\"}");
    /* Overwrite; metadata nil means none. Vector given as float32 bytes [1.0, 2.0]. */
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\","
          "\"vector\":{\"$bytes\":\"AACAPwAAAEA=\"},\"metadata\":null}");
    EXPECT(s, "{\"vector\":[1.0,2.0],\"metadata\":null,\"version\":3,\"ts\":5000}",
           "{\"op\":\"vector.get\",\"collection\":\"c\",\"key\":\"a\"}");
    /* Float values are stored as float32. */
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"f\",\"vector\":[0.1,3]}");
    assert_non_null(strstr(OK(s, "{\"op\":\"vector.get\",\"collection\":\"c\",\"key\":\"f\"}"),
                           "[0.10000000149011612,3.0]"));
    EXPECT(s, "{\"version\":5,\"ts\":9000,\"deleted\":true}",
           "{\"op\":\"vector.delete\",\"collection\":\"c\",\"key\":\"a\"}");
    EXPECT(s, "null", "{\"op\":\"vector.get\",\"collection\":\"c\",\"key\":\"a\"}");
    EXPECT(s, "{\"deleted\":false}",
           "{\"op\":\"vector.delete\",\"collection\":\"c\",\"key\":\"a\"}");
    assert_int_equal(storage_version(s), 5);
    /* The history stays readable. */
    assert_non_null(
        strstr(OK(s, "{\"op\":\"vector.get\",\"collection\":\"c\",\"key\":\"a\",\"at_version\":2}"),
               "\"vector\":[1.0,-2.5]"));
    /* Keys of one collection do not collide with a collection whose name extends it. */
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c2\",\"dimension\":2,"
          "\"metric\":\"cosine\"}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c2\",\"key\":\"f\",\"vector\":[1,1]}");
    assert_string_equal(
        keys(s, "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,1],\"k\":10}"), "f");
    EXPECT(s,
           "[{\"name\":\"c\",\"dimension\":2,\"metric\":\"cosine\",\"count\":1},"
           "{\"name\":\"c2\",\"dimension\":2,\"metric\":\"cosine\",\"count\":1}]",
           "{\"op\":\"vector.list_collections\"}");
}

static void test_vector_upsert_bad_input(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,"
          "\"metric\":\"dot\"}");
    const char *msg;
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,2,3]}");
    assert_non_null(strstr(msg, "dimension 3"));
    assert_non_null(strstr(msg, "dimension 2"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\","
                "\"vector\":{\"$bytes\":\"AAAAAAAAAAAAAAAA\"}}");
    assert_non_null(strstr(msg, "dimension 3"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\","
                "\"vector\":{\"$bytes\":\"AAAAAAAA\"}}");
    assert_non_null(strstr(msg, "multiple of 4"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\","
                "\"vector\":{\"$bytes\":\"AADAfwAAgD8=\"}}"); /* NaN */
    assert_non_null(strstr(msg, "not finite"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\","
          "\"vector\":{\"$bytes\":\"AACAfwAAgD8=\"}}"); /* +inf */
    msg =
        FAILS(s, STRATA_INVALID_ARGUMENT,
              "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1e39,1]}");
    assert_non_null(strstr(msg, "finite float32"));
    msg =
        FAILS(s, STRATA_INVALID_ARGUMENT,
              "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,\"2\"]}");
    assert_non_null(strstr(msg, "element 1 is not a number"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":\"12\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"\",\"vector\":[1,2]}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"vector\":[1,2]}");
    msg = FAILS(s, STRATA_NOT_FOUND,
                "{\"op\":\"vector.upsert\",\"collection\":\"x\",\"key\":\"a\",\"vector\":[1,2]}");
    assert_string_equal(msg, "NOT_FOUND: collection 'x' not found");
    const char *bad_meta[] = {"[1]", "\"m\"", "3", "true"};
    for (size_t i = 0; i < sizeof bad_meta / sizeof bad_meta[0]; i++) {
        msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                    "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,2],"
                    "\"metadata\":%s}",
                    bad_meta[i]);
        assert_non_null(strstr(msg, "'metadata' must be an object"));
    }
    /* One bad op fails the whole batch. */
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"batch\",\"ops\":[{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\","
          "\"vector\":[1,2]},{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"b\","
          "\"vector\":[1]}]}");
    FAILS(s, STRATA_NOT_FOUND, "{\"op\":\"vector.delete\",\"collection\":\"x\",\"key\":\"a\"}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,2],"
          "\"at_version\":1}");
    assert_int_equal(storage_version(s), 1);
    EXPECT(s, "[{\"name\":\"c\",\"dimension\":2,\"metric\":\"dot\",\"count\":0}]",
           "{\"op\":\"vector.list_collections\"}");
}

static void test_vector_batch_is_one_version(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,"
          "\"metric\":\"dot\"}");
    OK(s, "{\"op\":\"batch\",\"ops\":["
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,0]},"
          "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"b\",\"vector\":[2,0]},"
          "{\"op\":\"vector.delete\",\"collection\":\"c\",\"key\":\"a\"},"
          "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1}]}");
    assert_int_equal(storage_version(s), 2);
    assert_string_equal(
        keys(s, "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],\"k\":10}"), "b");
    assert_non_null(strstr(OK(s, "{\"op\":\"vector.get\",\"collection\":\"c\",\"key\":\"b\"}"),
                           "\"version\":2"));
}

/* ---- Query ---------------------------------------------------------------------------------- */

static void test_vector_query_bad_input(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,"
          "\"metric\":\"dot\"}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,2]}");
    const char *bad_k[] = {"0", "1001", "-1", "2.0", "\"5\"", "null"};
    for (size_t i = 0; i < sizeof bad_k / sizeof bad_k[0]; i++)
        FAILS(s, STRATA_INVALID_ARGUMENT,
              "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,2],\"k\":%s}", bad_k[i]);
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                            "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,2]}");
    assert_non_null(strstr(msg, "'k'"));
    OK(s, "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,2],\"k\":1000}");
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1],\"k\":1}");
    assert_non_null(strstr(msg, "dimension 1"));
    FAILS(s, STRATA_NOT_FOUND,
          "{\"op\":\"vector.query\",\"collection\":\"nope\",\"vector\":[1,2],\"k\":1}");
    const char *bad_filters[] = {
        "[1]",                           /* not an object */
        "\"x\"",                         /* not an object */
        "{\"f\":{\"$regex\":\"a\"}}",    /* unknown operator */
        "{\"f\":{\"$gt\":1,\"$lt\":5}}", /* two operators */
        "{\"f\":{}}",                    /* no operator */
        "{\"f\":{\"g\":1}}",             /* nested object is not an operator */
        "{\"f\":{\"$in\":5}}",           /* $in needs an array */
        "{\"f\":{\"$in\":[1,[2]]}}",     /* $in of a non-scalar */
        "{\"f\":{\"$gt\":true}}",        /* ordering needs a number or string */
        "{\"f\":{\"$lte\":null}}",       /* ordering needs a number or string */
        "{\"f\":[1,2]}",                 /* plain arrays are not scalars */
        "{\"f\":{\"$eq\":{\"a\":1}}}",   /* $eq of an object */
        "{\"f\":{\"$ne\":[1]}}",         /* $ne of an array */
        "{\"f\":{\"$bytes\":\"AA==\"}}", /* bin is not a filter value */
    };
    for (size_t i = 0; i < sizeof bad_filters / sizeof bad_filters[0]; i++) {
        msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                    "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,2],\"k\":1,"
                    "\"filter\":%s}",
                    bad_filters[i]);
        assert_non_null(strstr(msg, "filter"));
    }
    /* Query is a read: it cannot be batched. */
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"batch\",\"ops\":[{\"op\":\"vector.query\",\"collection\":\"c\","
          "\"vector\":[1,2],\"k\":1}]}");
}

/* Deterministic pseudo-random floats in [-1, 1), exactly representable in float32. */
static uint64_t rng_state;

static float rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 23)) - 1.0f;
}

enum { BF_N = 70, BF_MAXDIM = 20, BF_K = 12 };

struct ref {
    int idx;
    double score;
};

static const char *bf_metric;

static bool ref_better(const struct ref *a, const struct ref *b)
{
    if (a->score != b->score)
        return strcmp(bf_metric, "euclidean") == 0 ? a->score < b->score : a->score > b->score;
    return a->idx < b->idx; /* keys k00..k69 sort like their indices */
}

static int ref_cmp(const void *pa, const void *pb)
{
    const struct ref *a = pa, *b = pb;
    return ref_better(a, b) ? -1 : ref_better(b, a) ? 1 : 0;
}

static double ref_score(const char *metric, const float *q, const float *v, int dim)
{
    double dot = 0, nq = 0, nv = 0, l2 = 0;
    for (int i = 0; i < dim; i++) {
        dot += (double)q[i] * v[i];
        nq += (double)q[i] * q[i];
        nv += (double)v[i] * v[i];
        l2 += ((double)q[i] - v[i]) * ((double)q[i] - v[i]);
    }
    if (strcmp(metric, "dot") == 0)
        return dot;
    if (strcmp(metric, "euclidean") == 0)
        return sqrt(l2);
    return dot / (sqrt(nq) * sqrt(nv));
}

/* Append a JSON array of floats (printed exactly: %.9g round-trips float32). */
static void json_vec(char *out, size_t cap, const float *v, int dim)
{
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < dim; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%.9g", i ? "," : "", (double)v[i]);
    snprintf(out + n, cap - n, "]");
}

static void brute_force_check(struct storage *s, const char *metric, int dim)
{
    static float vecs[BF_N][BF_MAXDIM];
    char coll[32], vj[1024];
    snprintf(coll, sizeof coll, "%s%d", metric, dim);
    rng_state = 0x1234567u + (uint64_t)dim * 7919u + strlen(metric);
    OK(s,
       "{\"op\":\"vector.create_collection\",\"collection\":\"%s\",\"dimension\":%d,"
       "\"metric\":\"%s\"}",
       coll, dim, metric);
    for (int i = 0; i < BF_N; i++) {
        for (int j = 0; j < dim; j++)
            vecs[i][j] = rnd() * (float)(1 + i % 3);
        json_vec(vj, sizeof vj, vecs[i], dim);
        OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"%s\",\"key\":\"k%02d\",\"vector\":%s}",
           coll, i, vj);
    }
    bf_metric = metric;
    for (int t = 0; t < 4; t++) {
        float q[BF_MAXDIM];
        for (int j = 0; j < dim; j++)
            q[j] = rnd();
        struct ref refs[BF_N];
        for (int i = 0; i < BF_N; i++)
            refs[i] = (struct ref){i, ref_score(metric, q, vecs[i], dim)};
        qsort(refs, BF_N, sizeof refs[0], ref_cmp);
        json_vec(vj, sizeof vj, q, dim);
        struct hit hits[BF_K];
        int n = query(s, hits, BF_K,
                      "{\"op\":\"vector.query\",\"collection\":\"%s\",\"vector\":%s,\"k\":%d}",
                      coll, vj, BF_K);
        assert_int_equal(n, BF_K);
        for (int i = 0; i < BF_K; i++) {
            char want[8];
            snprintf(want, sizeof want, "k%02d", refs[i].idx);
            if (strcmp(hits[i].key, want) != 0)
                fprintf(stderr, "%s dim %d query %d rank %d: got %s want %s\n", metric, dim, t, i,
                        hits[i].key, want);
            assert_string_equal(hits[i].key, want);
            assert_true(fabs(hits[i].score - refs[i].score) <= 1e-12 * (1 + fabs(refs[i].score)));
        }
    }
    /* k above the collection's size returns everything, best first. */
    float q[BF_MAXDIM] = {1};
    json_vec(vj, sizeof vj, q, dim);
    struct hit all[BF_N];
    assert_int_equal(
        query(s, all, BF_N,
              "{\"op\":\"vector.query\",\"collection\":\"%s\",\"vector\":%s,\"k\":500}", coll, vj),
        BF_N);
    for (int i = 1; i < BF_N; i++) {
        if (strcmp(metric, "euclidean") == 0)
            assert_true(all[i - 1].score <= all[i].score);
        else
            assert_true(all[i - 1].score >= all[i].score);
    }
}

static void test_vector_query_cosine_matches_brute_force(void **state)
{
    brute_force_check(*state, "cosine", 13);
    brute_force_check(*state, "cosine", 16);
    brute_force_check(*state, "cosine", 1);
}

static void test_vector_query_dot_matches_brute_force(void **state)
{
    brute_force_check(*state, "dot", 13);
    brute_force_check(*state, "dot", 16);
    brute_force_check(*state, "dot", 20);
}

static void test_vector_query_euclidean_matches_brute_force(void **state)
{
    brute_force_check(*state, "euclidean", 13);
    brute_force_check(*state, "euclidean", 8);
    brute_force_check(*state, "euclidean", 3);
}

static void test_vector_query_scores_and_metadata(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"e\",\"dimension\":2,"
          "\"metric\":\"euclidean\"}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"e\",\"key\":\"p\",\"vector\":[3,4],"
          "\"metadata\":{\"name\":\"far\"}}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"e\",\"key\":\"o\",\"vector\":[0,0]}");
    EXPECT(s,
           "[{\"key\":\"o\",\"score\":0.0,\"metadata\":null},"
           "{\"key\":\"p\",\"score\":5.0,\"metadata\":{\"name\":\"far\"}}]",
           "{\"op\":\"vector.query\",\"collection\":\"e\",\"vector\":[0,0],\"k\":2}");
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,"
          "\"metric\":\"cosine\"}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"same\",\"vector\":[2,0]}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"opp\",\"vector\":[-1,0]}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"orth\",\"vector\":[0,5]}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"zero\",\"vector\":[0,0]}");
    /* Zero-norm vectors have cosine 0: tied with "orth", ordered by key. */
    EXPECT(s,
           "[{\"key\":\"same\",\"score\":1.0,\"metadata\":null},"
           "{\"key\":\"orth\",\"score\":0.0,\"metadata\":null},"
           "{\"key\":\"zero\",\"score\":0.0,\"metadata\":null},"
           "{\"key\":\"opp\",\"score\":-1.0,\"metadata\":null}]",
           "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],\"k\":10}");
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"d\",\"dimension\":2,"
          "\"metric\":\"dot\"}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"d\",\"key\":\"a\",\"vector\":[2,3]}");
    EXPECT(s, "[{\"key\":\"a\",\"score\":-4.0,\"metadata\":null}]",
           "{\"op\":\"vector.query\",\"collection\":\"d\",\"vector\":[1,-2],\"k\":1}");
}

static void test_vector_query_ties_break_by_key(void **state)
{
    struct storage *s = *state;
    const char *metrics[] = {"cosine", "dot", "euclidean"};
    for (int m = 0; m < 3; m++) {
        OK(s,
           "{\"op\":\"vector.create_collection\",\"collection\":\"%s\",\"dimension\":2,"
           "\"metric\":\"%s\"}",
           metrics[m], metrics[m]);
        /* Inserted out of order; all score the same. */
        const char *ks[] = {"b", "c", "a", "aa", "B", "ab"};
        for (int i = 0; i < 6; i++)
            OK(s,
               "{\"op\":\"vector.upsert\",\"collection\":\"%s\",\"key\":\"%s\","
               "\"vector\":[0.5,0.25]}",
               metrics[m], ks[i]);
        OK(s,
           "{\"op\":\"vector.upsert\",\"collection\":\"%s\",\"key\":\"worst\","
           "\"vector\":[-0.5,-0.25]}",
           metrics[m]);
        for (int rep = 0; rep < 2; rep++) {
            assert_string_equal(keys(s,
                                     "{\"op\":\"vector.query\",\"collection\":\"%s\","
                                     "\"vector\":[0.5,0.25],\"k\":10}",
                                     metrics[m]),
                                "B,a,aa,ab,b,c,worst");
            assert_string_equal(keys(s,
                                     "{\"op\":\"vector.query\",\"collection\":\"%s\","
                                     "\"vector\":[0.5,0.25],\"k\":3}",
                                     metrics[m]),
                                "B,a,aa");
        }
    }
}

static void test_vector_query_filter_operators(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"f\",\"dimension\":1,"
          "\"metric\":\"dot\"}");
    const char *metas[] = {
        "{\"n\":1,\"s\":\"apple\",\"b\":true}",     /* m1 */
        "{\"n\":2.0,\"s\":\"banana\",\"b\":false}", /* m2 */
        "{\"n\":2,\"s\":\"Banana\",\"z\":null}",    /* m3 */
        "{\"n\":2.5,\"s\":\"cherry\"}",             /* m4 */
        "{\"n\":\"2\",\"s\":3}",                    /* m5: types swapped */
        "{}",                                       /* m6 */
        "null",                                     /* m7: no metadata */
        "{\"n\":-9007199254740993,\"s\":\"\"}",     /* m8: beyond double precision */
    };
    for (int i = 0; i < 8; i++)
        OK(s,
           "{\"op\":\"vector.upsert\",\"collection\":\"f\",\"key\":\"m%d\",\"vector\":[1],"
           "\"metadata\":%s}",
           i + 1, metas[i]);
#define Q(filter)                                                                                  \
    keys(s,                                                                                        \
         "{\"op\":\"vector.query\",\"collection\":\"f\",\"vector\":[1],\"k\":50,"                  \
         "\"filter\":%s}",                                                                         \
         filter)
    assert_string_equal(Q("{}"), "m1,m2,m3,m4,m5,m6,m7,m8");
    /* eq: plain value or $eq; int and float compare numerically. */
    assert_string_equal(Q("{\"n\":2}"), "m2,m3");
    assert_string_equal(Q("{\"n\":{\"$eq\":2.0}}"), "m2,m3");
    assert_string_equal(Q("{\"n\":\"2\"}"), "m5");
    assert_string_equal(Q("{\"s\":\"apple\"}"), "m1");
    assert_string_equal(Q("{\"b\":true}"), "m1");
    assert_string_equal(Q("{\"b\":false}"), "m2");
    assert_string_equal(Q("{\"z\":null}"), "m3");
    assert_string_equal(Q("{\"n\":-9007199254740992}"), "");
    assert_string_equal(Q("{\"n\":-9007199254740993}"), "m8");
    /* ne: missing fields and other types match. */
    assert_string_equal(Q("{\"n\":{\"$ne\":2}}"), "m1,m4,m5,m6,m7,m8");
    assert_string_equal(Q("{\"b\":{\"$ne\":true}}"), "m2,m3,m4,m5,m6,m7,m8");
    /* Ordering: numbers across int/float, strings bytewise, other types never match. */
    assert_string_equal(Q("{\"n\":{\"$gt\":2}}"), "m4");
    assert_string_equal(Q("{\"n\":{\"$gte\":2}}"), "m2,m3,m4");
    assert_string_equal(Q("{\"n\":{\"$lt\":2.0}}"), "m1,m8");
    assert_string_equal(Q("{\"n\":{\"$lte\":1.5}}"), "m1,m8");
    assert_string_equal(Q("{\"n\":{\"$gt\":-9007199254740994.0}}"), "m1,m2,m3,m4,m8");
    assert_string_equal(Q("{\"n\":{\"$lt\":-9007199254740992.0}}"), "m8");
    assert_string_equal(Q("{\"s\":{\"$gt\":\"apple\"}}"), "m2,m4");
    assert_string_equal(Q("{\"s\":{\"$lt\":\"banana\"}}"), "m1,m3,m8");
    assert_string_equal(Q("{\"s\":{\"$gte\":\"banana\"}}"), "m2,m4");
    assert_string_equal(Q("{\"s\":{\"$lte\":\"Banana\"}}"), "m3,m8");
    assert_string_equal(Q("{\"n\":{\"$gt\":\"1\"}}"), "m5");
    /* $in: any element equal. */
    assert_string_equal(Q("{\"n\":{\"$in\":[1,2.5,\"2\"]}}"), "m1,m4,m5");
    assert_string_equal(Q("{\"s\":{\"$in\":[\"banana\",3,\"nope\"]}}"), "m2,m5");
    assert_string_equal(Q("{\"n\":{\"$in\":[]}}"), "");
    /* Several fields: all must match. */
    assert_string_equal(Q("{\"n\":{\"$gte\":1},\"s\":{\"$lt\":\"b\"}}"), "m1,m3");
    assert_string_equal(Q("{\"n\":2,\"s\":\"banana\"}"), "m2");
    assert_string_equal(Q("{\"missing\":1}"), "");
    assert_string_equal(Q("{\"missing\":{\"$ne\":1}}"), "m1,m2,m3,m4,m5,m6,m7,m8");
#undef Q
    /* The filter keeps the best k among matching vectors, not k then filter. */
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"f\",\"key\":\"big\",\"vector\":[9],"
          "\"metadata\":{\"n\":0}}");
    assert_string_equal(keys(s, "{\"op\":\"vector.query\",\"collection\":\"f\",\"vector\":[1],"
                                "\"k\":2,\"filter\":{\"n\":{\"$gte\":2}}}"),
                        "m2,m3");
    assert_string_equal(keys(s, "{\"op\":\"vector.query\",\"collection\":\"f\",\"vector\":[1],"
                                "\"k\":2}"),
                        "big,m1");
}

static void test_vector_query_on_fork_sees_parent_and_own_changes(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,"
          "\"metric\":\"dot\"}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"a\",\"vector\":[1,0]}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"b\",\"vector\":[2,0]}");
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"c\",\"vector\":[3,0]}");
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    /* Changes in the fork: new d, b updated, c deleted. */
    OK(s, "{\"op\":\"vector.upsert\",\"branch\":\"f\",\"collection\":\"c\",\"key\":\"d\","
          "\"vector\":[4,0]}");
    OK(s, "{\"op\":\"vector.upsert\",\"branch\":\"f\",\"collection\":\"c\",\"key\":\"b\","
          "\"vector\":[10,0]}");
    OK(s, "{\"op\":\"vector.delete\",\"branch\":\"f\",\"collection\":\"c\",\"key\":\"c\"}");
    /* A change in the parent after the fork. */
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"e\",\"vector\":[5,0]}");
    assert_string_equal(keys(s, "{\"op\":\"vector.query\",\"branch\":\"f\",\"collection\":\"c\","
                                "\"vector\":[1,0],\"k\":10}"),
                        "b,d,a");
    assert_string_equal(keys(s, "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],"
                                "\"k\":10}"),
                        "e,c,b,a");
    assert_non_null(strstr(OK(s, "{\"op\":\"vector.get\",\"branch\":\"f\",\"collection\":\"c\","
                                 "\"key\":\"a\"}"),
                           "\"vector\":[1.0,0.0]"));
    EXPECT(s, "[{\"name\":\"c\",\"dimension\":2,\"metric\":\"dot\",\"count\":3}]",
           "{\"op\":\"vector.list_collections\",\"branch\":\"f\"}");
    /* Deleting the collection in the fork leaves the parent's intact. */
    EXPECT(s, "{\"version\":9,\"ts\":12000,\"vectors_deleted\":3}",
           "{\"op\":\"vector.delete_collection\",\"branch\":\"f\",\"collection\":\"c\"}");
    FAILS(s, STRATA_NOT_FOUND,
          "{\"op\":\"vector.query\",\"branch\":\"f\",\"collection\":\"c\","
          "\"vector\":[1,0],\"k\":10}");
    assert_string_equal(keys(s, "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],"
                                "\"k\":10}"),
                        "e,c,b,a");
    /* A fork of the fork reads through two levels. */
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"f\",\"name\":\"g\",\"at_version\":8}");
    assert_string_equal(keys(s, "{\"op\":\"vector.query\",\"branch\":\"g\",\"collection\":\"c\","
                                "\"vector\":[1,0],\"k\":10}"),
                        "b,d,a");
}

static void test_vector_query_at_version(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,"
          "\"metric\":\"cosine\"}"); /* v1 ts 1000 */
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"x\",\"vector\":[1,0],"
          "\"metadata\":{\"v\":1}}"); /* v2 ts 2000 */
    OK(s,
       "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"y\",\"vector\":[0,1]}"); /* v3 */
    OK(s, "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"x\",\"vector\":[-1,0],"
          "\"metadata\":{\"v\":2}}");                                       /* v4 */
    OK(s, "{\"op\":\"vector.delete\",\"collection\":\"c\",\"key\":\"y\"}"); /* v5 */
#define Q(at)                                                                                      \
    keys(s, "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],\"k\":10%s}", at)
    assert_string_equal(Q(""), "x");
    assert_string_equal(Q(",\"at_version\":2"), "x");
    assert_string_equal(Q(",\"at_version\":3"), "x,y");
    assert_string_equal(Q(",\"at_version\":4"), "y,x");
    assert_string_equal(Q(",\"as_of\":3500"), "x,y");
#undef Q
    EXPECT(s, "[{\"key\":\"x\",\"score\":1.0,\"metadata\":{\"v\":1}}]",
           "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],\"k\":1,"
           "\"at_version\":3}");
    EXPECT(s, "[{\"key\":\"x\",\"score\":-1.0,\"metadata\":{\"v\":2}}]",
           "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],\"k\":1,"
           "\"filter\":{\"v\":2}}");
    EXPECT(s, "[]",
           "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],\"k\":1,"
           "\"at_version\":4,\"filter\":{\"v\":{\"$gt\":2}}}");
    /* Before the collection existed. */
    FAILS(s, STRATA_NOT_FOUND,
          "{\"op\":\"vector.query\",\"collection\":\"c\",\"vector\":[1,0],\"k\":1,"
          "\"at_version\":0}");
    EXPECT(s, "[{\"name\":\"c\",\"dimension\":2,\"metric\":\"cosine\",\"count\":2}]",
           "{\"op\":\"vector.list_collections\",\"at_version\":3}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_vector_create_list_delete_collection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_create_collection_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_upsert_get_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_upsert_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_batch_is_one_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_cosine_matches_brute_force, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_dot_matches_brute_force, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_euclidean_matches_brute_force, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_scores_and_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_ties_break_by_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_filter_operators, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_on_fork_sees_parent_and_own_changes,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_query_at_version, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
