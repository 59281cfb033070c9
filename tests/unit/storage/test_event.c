/* Event log: append / get / len / range / types / verify_chain, the hash-chain definition,
 * batches, time travel, tampering detection, bad input, and event_merge_space. */
#include "helpers.h"

#include "internal.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

/* ---- Helpers ------------------------------------------------------------------------ */

static void b64(const uint8_t *p, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, p, (int)n);
}

static void sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    assert_true(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL));
    assert_int_equal(len, 32);
}

/* The documented hash: SHA-256 of msgpack [seq, type, ts, payload, prev_hash]. */
static void ref_hash(uint64_t seq, const char *type, int64_t ts, const uint8_t *payload,
                     size_t plen, const uint8_t prev[32], uint8_t out[32])
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_str(&pk, strlen(type));
    msgpack_pack_str_body(&pk, type, strlen(type));
    msgpack_pack_int64(&pk, ts);
    msgpack_sbuffer_write(&sb, (const char *)payload, plen);
    msgpack_pack_bin(&pk, 32);
    msgpack_pack_bin_body(&pk, prev, 32);
    sha256((const uint8_t *)sb.data, sb.size, out);
    msgpack_sbuffer_destroy(&sb);
}

/* The newest stored version of an internal key, for tampering with it in place. */
static struct version *stored(struct storage *s, const char *branch, const char *space, int tag,
                              uint64_t seq)
{
    struct branch *b = branch_find(s, branch, strlen(branch));
    assert_non_null(b);
    uint8_t k[IKEY_MAX], be[8];
    put_be64(be, seq);
    size_t klen = ikey_make(k, space, strlen(space), tag, be, tag == TAG_EVENT ? 8 : 0);
    struct entry *e = btree_get(&b->idx, k, klen);
    assert_non_null(e);
    assert_non_null(e->head);
    return e->head;
}

/* Offset of a byte pattern inside a stored value (it must occur). */
static size_t find_bytes(const struct version *v, const void *pat, size_t n)
{
    for (size_t i = 0; i + n <= v->len; i++)
        if (memcmp(v->data + i, pat, n) == 0)
            return i;
    fail_msg("pattern not found in stored value");
    return 0;
}

/* "1,2,3": the "seq" fields of a JSON result, in order. */
static const char *seqs(const char *json)
{
    static char out[4096];
    size_t n = 0;
    out[0] = 0;
    for (const char *p = strstr(json, "\"seq\":"); p; p = strstr(p + 1, "\"seq\":")) {
        long v = strtol(p + 6, NULL, 10);
        n += (size_t)snprintf(out + n, sizeof out - n, "%s%ld", n ? "," : "", v);
    }
    return out;
}

static void append_n(struct storage *s, const char *branch, const char *space, const char *type,
                     int from, int to)
{
    for (int i = from; i <= to; i++)
        OK(s,
           "{\"op\":\"event.append\",\"branch\":\"%s\",\"space\":\"%s\",\"type\":\"%s\","
           "\"payload\":{\"i\":%d}}",
           branch, space, type, i);
}

#define VERIFY_OK(s, n)                                                                            \
    do {                                                                                           \
        char want_[96];                                                                            \
        snprintf(want_, sizeof want_, "{\"ok\":true,\"len\":%d,\"first_bad_seq\":null}", n);       \
        EXPECT(s, want_, "{\"op\":\"event.verify_chain\"}");                                       \
    } while (0)

/* ---- Commands ------------------------------------------------------------------------- */

static void test_event_append_hash_matches_definition(void **state)
{
    struct storage *s = *state;
    /* Event 1 = {seq 1, type "t", ts 1000, payload {"n":1}}: the hashed bytes written out
     * by hand: array of 5, seq 1, "t", ts as uint16 1000, {"n":1}, bin8 of 32 zero bytes. */
    const uint8_t enc[45] = {0x95, 0x01, 0xa1, 't',  0xcd, 0x03, 0xe8,
                             0x81, 0xa1, 'n',  0x01, 0xc4, 0x20};
    uint8_t h1[32], zero[32] = {0};
    sha256(enc, sizeof enc, h1);
    char h1b[64], zb[64], want[512];
    b64(h1, 32, h1b);
    b64(zero, 32, zb);
    snprintf(want, sizeof want,
             "{\"version\":1,\"ts\":1000,\"seq\":1,\"hash\":{\"$bytes\":\"%s\"}}", h1b);
    EXPECT(s, want, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"n\":1}}");
    snprintf(want, sizeof want,
             "{\"seq\":1,\"type\":\"t\",\"ts\":1000,\"payload\":{\"n\":1},"
             "\"prev_hash\":{\"$bytes\":\"%s\"},\"hash\":{\"$bytes\":\"%s\"}}",
             zb, h1b);
    EXPECT(s, want, "{\"op\":\"event.get\",\"seq\":1}");

    /* Event 2 chains on event 1's hash. */
    const uint8_t p2[] = {0x81, 0xa1, 'n', 0x02};
    uint8_t h2[32];
    ref_hash(2, "u", 3000, p2, sizeof p2, h1, h2);
    char h2b[64];
    b64(h2, 32, h2b);
    snprintf(want, sizeof want,
             "{\"version\":2,\"ts\":3000,\"seq\":2,\"hash\":{\"$bytes\":\"%s\"}}", h2b);
    EXPECT(s, want, "{\"op\":\"event.append\",\"type\":\"u\",\"payload\":{\"n\":2}}");
    snprintf(want, sizeof want, "\"prev_hash\":{\"$bytes\":\"%s\"},\"hash\":{\"$bytes\":\"%s\"}}",
             h1b, h2b);
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":2}"), want));
    /* The head records the length and the last hash. */
    const struct version *head = stored(s, "default", "default", TAG_EVENT_HEAD, 0);
    assert_memory_equal(head->data + head->len - 32, h2, 32);
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
}

static void test_event_get_len_empty_and_missing(void **state)
{
    struct storage *s = *state;
    EXPECT(s, "0", "{\"op\":\"event.len\"}");
    EXPECT(s, "null", "{\"op\":\"event.get\",\"seq\":1}");
    EXPECT(s, "{\"ok\":true,\"len\":0,\"first_bad_seq\":null}", "{\"op\":\"event.verify_chain\"}");
    EXPECT(s, "{\"events\":[],\"cursor\":null}", "{\"op\":\"event.range\"}");
    EXPECT(s, "[]", "{\"op\":\"event.types\"}");
    append_n(s, "default", "default", "t", 1, 2);
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
    EXPECT(s, "null", "{\"op\":\"event.get\",\"seq\":3}");
    EXPECT(s, "null", "{\"op\":\"event.get\",\"seq\":9223372036854775807}");
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":2}"), "\"payload\":{\"i\":2}"));
}

static void test_event_payload_value_types_roundtrip(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"a\":[1,-2,1.5,null,true],"
          "\"b\":{\"$bytes\":\"AAEC\"},\"c\":{\"d\":\"\\u00e9\"}}}");
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":1}"), "\"payload\":{},"));
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":2}"),
                           "\"payload\":{\"a\":[1,-2,1.5,null,true],\"b\":{\"$bytes\":\"AAEC\"},"
                           "\"c\":{\"d\":\"\xc3\xa9\"}},"));
    VERIFY_OK(s, 2);
}

static void test_event_bad_input(void **state)
{
    struct storage *s = *state;
    const char *msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.append\",\"payload\":{}}");
    assert_non_null(strstr(msg, "'type'"));
    msg =
        FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.append\",\"type\":\"\",\"payload\":{}}");
    assert_non_null(strstr(msg, "must not be empty"));
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.append\",\"type\":7,\"payload\":{}}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.append\",\"type\":null,\"payload\":{}}");
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.append\",\"type\":\"t\"}");
    assert_non_null(strstr(msg, "'payload'"));
    const char *bad_payloads[] = {"[1]", "1", "\"x\"", "null", "true", "{\"$bytes\":\"AA==\"}"};
    for (size_t i = 0; i < sizeof bad_payloads / sizeof bad_payloads[0]; i++) {
        msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                    "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":%s}", bad_payloads[i]);
        assert_non_null(strstr(msg, "must be an object"));
    }
    char type[300];
    memset(type, 'x', 257);
    type[257] = 0;
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"event.append\",\"type\":\"%s\",\"payload\":{}}", type);
    assert_non_null(strstr(msg, "limit is 256 bytes"));
    FAILS(s, STRATA_BRANCH_NOT_FOUND,
          "{\"op\":\"event.append\",\"branch\":\"nope\",\"type\":\"t\",\"payload\":{}}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"event.append\",\"space\":\"Bad!\",\"type\":\"t\",\"payload\":{}}");
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{},\"at_version\":0}");
    assert_int_equal(storage_version(s), 0);

    /* 256 bytes is allowed. */
    type[256] = 0;
    OK(s, "{\"op\":\"event.append\",\"type\":\"%s\",\"payload\":{}}", type);

    /* Reads. */
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.get\"}");
    assert_non_null(strstr(msg, "'seq'"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.get\",\"seq\":0}");
    assert_non_null(strstr(msg, "at least 1"));
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.get\",\"seq\":-1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.get\",\"seq\":\"1\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"event.get\",\"seq\":1,\"branch\":\"nope\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"event.len\",\"branch\":\"nope\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"event.range\",\"branch\":\"nope\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"event.types\",\"branch\":\"nope\"}");
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"event.verify_chain\",\"branch\":\"nope\"}");
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"limit\":0}");
    assert_non_null(strstr(msg, "between 1 and 10000"));
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"limit\":10001}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"limit\":\"5\"}");
    msg = FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"direction\":\"up\"}");
    assert_non_null(strstr(msg, "'direction'"));
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"direction\":1}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"start\":0}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"start\":-3}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"end\":0}");
    FAILS(s, STRATA_INVALID_ARGUMENT, "{\"op\":\"event.range\",\"type\":5}");
    assert_int_equal(storage_version(s), 1);
}

static void test_event_value_limits(void **state)
{
    (void)state;
    struct storage_config cfg;
    storage_config_default(&cfg);
    cfg.max_value_bytes = 200;
    cfg.max_depth = 3;
    struct storage *s;
    assert_int_equal(storage_new(&cfg, &s), 0);
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    /* The payload alone is over the limit. */
    const char *msg =
        FAILS(s, STRATA_INVALID_ARGUMENT,
              "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"b\":\"%s\"}}", big);
    assert_non_null(strstr(msg, "limit of 200 bytes"));
    /* The payload fits but the whole event record (hashes, fields) does not. */
    big[150] = 0;
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"b\":\"%s\"}}", big);
    assert_non_null(strstr(msg, "event of"));
    msg = FAILS(s, STRATA_INVALID_ARGUMENT,
                "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"a\":{\"b\":[1]}}}");
    assert_non_null(strstr(msg, "nesting"));
    assert_int_equal(storage_version(s), 0);
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"a\":[1]}}");
    storage_free(s);
}

static void test_event_batch_appends_get_consecutive_seqs(void **state)
{
    struct storage *s = *state;
    const char *out = OK(s, "{\"op\":\"batch\",\"ops\":["
                            "{\"op\":\"event.append\",\"type\":\"a\",\"payload\":{\"i\":1}},"
                            "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1},"
                            "{\"op\":\"event.append\",\"type\":\"b\",\"payload\":{\"i\":2}}]}");
    assert_string_equal(seqs(out), "1,2");
    assert_int_equal(storage_version(s), 1);
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
    /* Both events carry the batch's one timestamp. */
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":2}"), "\"ts\":1000,"));
    VERIFY_OK(s, 2);
    /* One bad append rejects the whole batch: nothing is appended. */
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"batch\",\"ops\":[{\"op\":\"event.append\",\"type\":\"a\",\"payload\":{}},"
          "{\"op\":\"event.append\",\"type\":\"a\",\"payload\":[]}]}");
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
    assert_int_equal(storage_version(s), 1);
    /* Appends to two spaces in one batch keep separate logs. */
    out = OK(s, "{\"op\":\"batch\",\"ops\":["
                "{\"op\":\"event.append\",\"type\":\"a\",\"payload\":{}},"
                "{\"op\":\"event.append\",\"type\":\"a\",\"payload\":{},\"space\":\"s2\"},"
                "{\"op\":\"event.append\",\"type\":\"a\",\"payload\":{}}]}");
    assert_string_equal(seqs(out), "3,1,4");
    VERIFY_OK(s, 4);
    EXPECT(s, "{\"ok\":true,\"len\":1,\"first_bad_seq\":null}",
           "{\"op\":\"event.verify_chain\",\"space\":\"s2\"}");
}

static void test_event_range_directions_and_cursor(void **state)
{
    struct storage *s = *state;
    for (int i = 1; i <= 5; i++)
        OK(s, "{\"op\":\"event.append\",\"type\":\"%s\",\"payload\":{\"i\":%d}}", i % 2 ? "a" : "b",
           i);
    const char *out = OK(s, "{\"op\":\"event.range\"}");
    assert_string_equal(seqs(out), "1,2,3,4,5");
    assert_non_null(strstr(out, "\"cursor\":null}"));
    assert_non_null(strstr(out, "{\"seq\":1,\"type\":\"a\",\"ts\":1000,\"payload\":{\"i\":1},"));

    /* Forward paging: the cursor is the next seq; pass it as start. */
    out = OK(s, "{\"op\":\"event.range\",\"limit\":2}");
    assert_string_equal(seqs(out), "1,2");
    assert_non_null(strstr(out, "\"cursor\":3}"));
    out = OK(s, "{\"op\":\"event.range\",\"limit\":2,\"start\":3}");
    assert_string_equal(seqs(out), "3,4");
    assert_non_null(strstr(out, "\"cursor\":5}"));
    out = OK(s, "{\"op\":\"event.range\",\"limit\":2,\"start\":5}");
    assert_string_equal(seqs(out), "5");
    assert_non_null(strstr(out, "\"cursor\":null}"));

    /* Backward paging: from end down; pass the cursor as end. */
    out = OK(s, "{\"op\":\"event.range\",\"direction\":\"backward\",\"limit\":2}");
    assert_string_equal(seqs(out), "5,4");
    assert_non_null(strstr(out, "\"cursor\":3}"));
    out = OK(s, "{\"op\":\"event.range\",\"direction\":\"backward\",\"limit\":2,\"end\":3}");
    assert_string_equal(seqs(out), "3,2");
    assert_non_null(strstr(out, "\"cursor\":1}"));
    out = OK(s, "{\"op\":\"event.range\",\"direction\":\"backward\",\"limit\":2,\"end\":1}");
    assert_string_equal(seqs(out), "1");
    assert_non_null(strstr(out, "\"cursor\":null}"));

    /* Bounds. */
    assert_string_equal(seqs(OK(s, "{\"op\":\"event.range\",\"start\":2,\"end\":4}")), "2,3,4");
    assert_string_equal(
        seqs(OK(s, "{\"op\":\"event.range\",\"start\":2,\"end\":4,\"direction\":\"backward\"}")),
        "4,3,2");
    EXPECT(s, "{\"events\":[],\"cursor\":null}", "{\"op\":\"event.range\",\"start\":4,\"end\":2}");
    EXPECT(s, "{\"events\":[],\"cursor\":null}", "{\"op\":\"event.range\",\"start\":6}");
    assert_string_equal(seqs(OK(s, "{\"op\":\"event.range\",\"start\":4,\"end\":100}")), "4,5");

    /* Type filter: limit counts matches; the cursor is the next match. */
    assert_string_equal(seqs(OK(s, "{\"op\":\"event.range\",\"type\":\"a\"}")), "1,3,5");
    out = OK(s, "{\"op\":\"event.range\",\"type\":\"a\",\"limit\":2}");
    assert_string_equal(seqs(out), "1,3");
    assert_non_null(strstr(out, "\"cursor\":5}"));
    out = OK(s, "{\"op\":\"event.range\",\"type\":\"b\",\"limit\":2}");
    assert_string_equal(seqs(out), "2,4");
    assert_non_null(strstr(out, "\"cursor\":null}"));
    assert_string_equal(
        seqs(OK(s, "{\"op\":\"event.range\",\"type\":\"b\",\"direction\":\"backward\"}")), "4,2");
    EXPECT(s, "{\"events\":[],\"cursor\":null}", "{\"op\":\"event.range\",\"type\":\"zzz\"}");

    /* Time travel: the log as of version 3. */
    assert_string_equal(seqs(OK(s, "{\"op\":\"event.range\",\"at_version\":3}")), "1,2,3");
    assert_string_equal(
        seqs(OK(s, "{\"op\":\"event.range\",\"at_version\":3,\"direction\":\"backward\"}")),
        "3,2,1");
    assert_string_equal(seqs(OK(s, "{\"op\":\"event.range\",\"as_of\":2500}")), "1,2");
}

static void test_event_types_sorted_distinct(void **state)
{
    struct storage *s = *state;
    const char *types[] = {"zeta", "alpha", "mid", "alpha", "zeta", "al"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        OK(s, "{\"op\":\"event.append\",\"type\":\"%s\",\"payload\":{}}", types[i]);
    OK(s, "{\"op\":\"event.append\",\"type\":\"other\",\"payload\":{},\"space\":\"s2\"}");
    EXPECT(s, "[\"al\",\"alpha\",\"mid\",\"zeta\"]", "{\"op\":\"event.types\"}");
    EXPECT(s, "[\"alpha\",\"zeta\"]", "{\"op\":\"event.types\",\"at_version\":2}");
    EXPECT(s, "[\"other\"]", "{\"op\":\"event.types\",\"space\":\"s2\"}");
    EXPECT(s, "[]", "{\"op\":\"event.types\",\"space\":\"s3\"}");
}

static void test_event_time_travel(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1}"); /* v1 ts 1000 */
    append_n(s, "default", "default", "t", 1, 3);           /* v2..v4, ts 2000..4000 */
    EXPECT(s, "0", "{\"op\":\"event.len\",\"at_version\":1}");
    EXPECT(s, "2", "{\"op\":\"event.len\",\"at_version\":3}");
    EXPECT(s, "1", "{\"op\":\"event.len\",\"as_of\":2999}");
    EXPECT(s, "3", "{\"op\":\"event.len\"}");
    EXPECT(s, "null", "{\"op\":\"event.get\",\"seq\":3,\"at_version\":3}");
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":2,\"at_version\":3}"),
                           "\"payload\":{\"i\":2}"));
    EXPECT(s, "{\"ok\":true,\"len\":2,\"first_bad_seq\":null}",
           "{\"op\":\"event.verify_chain\",\"at_version\":3}");
}

static void test_event_spaces_forks_and_space_delete(void **state)
{
    struct storage *s = *state;
    append_n(s, "default", "default", "t", 1, 2);
    append_n(s, "default", "s1", "t", 1, 1);
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
    EXPECT(s, "1", "{\"op\":\"event.len\",\"space\":\"s1\"}");

    /* A fork reads the parent's log and continues its chain independently. */
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    EXPECT(s, "2", "{\"op\":\"event.len\",\"branch\":\"f\"}");
    assert_string_equal(seqs(OK(s, "{\"op\":\"event.append\",\"branch\":\"f\",\"type\":\"t\","
                                   "\"payload\":{\"i\":3}}")),
                        "3");
    EXPECT(s, "3", "{\"op\":\"event.len\",\"branch\":\"f\"}");
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
    EXPECT(s, "{\"ok\":true,\"len\":3,\"first_bad_seq\":null}",
           "{\"op\":\"event.verify_chain\",\"branch\":\"f\"}");
    VERIFY_OK(s, 2);

    /* Deleting a space deletes its log; a new log starts again at 1. */
    OK(s, "{\"op\":\"space.delete\",\"space\":\"s1\"}");
    EXPECT(s, "0", "{\"op\":\"event.len\",\"space\":\"s1\"}");
    EXPECT(s, "null", "{\"op\":\"event.get\",\"seq\":1,\"space\":\"s1\"}");
    assert_non_null(strstr(OK(s, "{\"op\":\"event.append\",\"space\":\"s1\",\"type\":\"t\","
                                 "\"payload\":{}}"),
                           "\"seq\":1,"));
    EXPECT(s, "{\"ok\":true,\"len\":1,\"first_bad_seq\":null}",
           "{\"op\":\"event.verify_chain\",\"space\":\"s1\"}");
}

static void test_event_verify_chain_detects_tampering(void **state)
{
    struct storage *s = *state;
    append_n(s, "default", "default", "t", 1, 3); /* ts 1000, 2000, 3000 */
    VERIFY_OK(s, 3);

    /* Change event 2's payload in place: its own hash no longer matches. */
    struct version *e2 = stored(s, "default", "default", TAG_EVENT, 2);
    const uint8_t pat[] = {0xa1, 'i', 0x02};
    size_t off = find_bytes(e2, pat, sizeof pat) + 2;
    e2->data[off] = 0x05;
    assert_non_null(strstr(OK(s, "{\"op\":\"event.get\",\"seq\":2}"), "\"payload\":{\"i\":5}"));
    EXPECT(s, "{\"ok\":false,\"len\":3,\"first_bad_seq\":2}", "{\"op\":\"event.verify_chain\"}");
    /* The read at an older version still sees the same (tampered) bytes. */
    EXPECT(s, "{\"ok\":false,\"len\":2,\"first_bad_seq\":2}",
           "{\"op\":\"event.verify_chain\",\"at_version\":2}");

    /* Forge: also rewrite event 2's hash consistently. Event 2 now verifies on its own,
     * but event 3's prev_hash link breaks. */
    const struct version *e1 = stored(s, "default", "default", TAG_EVENT, 1);
    const uint8_t p2[] = {0x81, 0xa1, 'i', 0x05};
    uint8_t forged[32];
    ref_hash(2, "t", 2000, p2, sizeof p2, e1->data + e1->len - 32, forged);
    uint8_t saved[32];
    memcpy(saved, e2->data + e2->len - 32, 32);
    memcpy(e2->data + e2->len - 32, forged, 32);
    EXPECT(s, "{\"ok\":false,\"len\":3,\"first_bad_seq\":3}", "{\"op\":\"event.verify_chain\"}");

    /* Restore: the chain verifies again. */
    memcpy(e2->data + e2->len - 32, saved, 32);
    e2->data[off] = 0x02;
    VERIFY_OK(s, 3);

    /* Break event 1's prev_hash (must be zeros): layout ends with
     * "prev_hash" c4 20 <32> a4 "hash" c4 20 <32>. */
    struct version *ev1 = stored(s, "default", "default", TAG_EVENT, 1);
    size_t prev_off = ev1->len - 32 - 2 - 5 - 32;
    assert_memory_equal(ev1->data + prev_off - 2, "\xc4\x20", 2);
    ev1->data[prev_off] ^= 1;
    EXPECT(s, "{\"ok\":false,\"len\":3,\"first_bad_seq\":1}", "{\"op\":\"event.verify_chain\"}");
    ev1->data[prev_off] ^= 1;
    VERIFY_OK(s, 3);

    /* A head whose hash is not the last event's is reported at the last seq. */
    struct version *head = stored(s, "default", "default", TAG_EVENT_HEAD, 0);
    head->data[head->len - 1] ^= 0xff;
    EXPECT(s, "{\"ok\":false,\"len\":3,\"first_bad_seq\":3}", "{\"op\":\"event.verify_chain\"}");
    head->data[head->len - 1] ^= 0xff;

    /* An event record that is not an event map at all. */
    struct version *e3 = stored(s, "default", "default", TAG_EVENT, 3);
    uint8_t first = e3->data[0];
    e3->data[0] = 0x90; /* empty array, followed by trailing bytes */
    EXPECT(s, "{\"ok\":false,\"len\":3,\"first_bad_seq\":3}", "{\"op\":\"event.verify_chain\"}");
    e3->data[0] = first;
    VERIFY_OK(s, 3);
}

static void test_event_deterministic_and_ts_bound(void **state)
{
    struct storage *a = *state, *b;
    assert_int_equal(storage_new(NULL, &b), 0);
    struct storage *both[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        t_set_ts(0);
        append_n(both[i], "default", "default", "t", 1, 3);
        append_n(both[i], "default", "s1", "u", 1, 2);
    }
    struct buf sa, sb;
    t_snapshot(a, &sa);
    t_snapshot(b, &sb);
    assert_int_equal(sa.len, sb.len);
    assert_memory_equal(sa.data, sb.data, sa.len);
    buf_close(&sa);
    buf_close(&sb);
    char h1[256];
    snprintf(h1, sizeof h1, "%s", strstr(OK(a, "{\"op\":\"event.get\",\"seq\":1}"), "\"hash\""));
    /* The same event appended at another time has another hash. */
    struct storage *c;
    assert_int_equal(storage_new(NULL, &c), 0);
    t_set_ts(50);
    append_n(c, "default", "default", "t", 1, 1);
    assert_string_not_equal(h1, strstr(OK(c, "{\"op\":\"event.get\",\"seq\":1}"), "\"hash\""));
    storage_free(b);
    storage_free(c);
}

/* Every allocation failure inside an append is OUT_OF_MEMORY and changes nothing; once
 * enough allocations succeed the append applies normally. (A plain append rather than a
 * batch: a batch's first allocation is its result array, whose failure exec.c does not
 * report yet.) */
static void test_event_append_out_of_memory_changes_nothing(void **state)
{
    struct storage *s = *state;
    append_n(s, "default", "default", "t", 1, 1);
    append_n(s, "default", "s2", "t", 1, 1);
    const char *json = "{\"op\":\"event.append\",\"type\":\"a\",\"payload\":{\"i\":2},"
                       "\"space\":\"s2\"}";
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    struct err err;
    assert_int_equal(storage_json_to_value(json, strlen(json), &cmd, &err), 0);
    uint64_t before = storage_version(s);
    int rc = STRATA_OUT_OF_MEMORY;
    long n;
    for (n = 1; n < 500 && rc; n++) {
        sm_fail_after(n);
        rc = storage_exec(s, cmd.data, cmd.len, 10000 + n, &res, &err);
        sm_fail_after(0);
        if (rc) {
            assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
            assert_int_equal(storage_version(s), before);
            assert_int_equal(res.len, 0);
        }
    }
    assert_int_equal(rc, 0);
    assert_true(n > 2); /* at least one injected failure was exercised */
    buf_close(&cmd);
    buf_close(&res);
    assert_int_equal(storage_version(s), before + 1);
    EXPECT(s, "{\"ok\":true,\"len\":2,\"first_bad_seq\":null}",
           "{\"op\":\"event.verify_chain\",\"space\":\"s2\"}");
    VERIFY_OK(s, 1);
}

/* ---- event_merge_space ---------------------------------------------------------------- */

/* An exec for a merge into `target`, filled as storage_exec fills one. at_head is left
 * false on purpose: the merge must chain its appends through the stage regardless. */
struct mctx {
    struct storage *s;
    struct exec x;
    struct err err;
    struct stage st;
    struct buf out, scratch, conf;
    msgpack_packer pk, cpk;
    uint32_t nconf;
};

static void mctx_init(struct mctx *m, struct storage *s, const char *target, const char *space)
{
    memset(m, 0, sizeof *m);
    m->s = s;
    stage_init(&m->st);
    buf_init(&m->out);
    buf_init(&m->scratch);
    buf_init(&m->conf);
    msgpack_packer_init(&m->pk, &m->out, buf_pack_write);
    msgpack_packer_init(&m->cpk, &m->conf, buf_pack_write);
    err_clear(&m->err);
    m->x.s = s;
    m->x.err = &m->err;
    m->x.stage = &m->st;
    m->x.pk = &m->pk;
    m->x.scratch = &m->scratch;
    m->x.wver = storage_version(s) + 1;
    m->x.wts = t_last_ts() + 1000;
    m->x.ts = m->x.wts;
    m->x.b = branch_find(s, target, strlen(target));
    assert_non_null(m->x.b);
    m->x.slen = strlen(space);
    memcpy(m->x.space, space, m->x.slen + 1);
    m->x.at = (struct read_at){UINT64_MAX, 0, false};
}

static void mctx_merge(struct mctx *m, const char *source, uint64_t base_ver, bool source_wins)
{
    struct branch *src = branch_find(m->s, source, strlen(source));
    assert_non_null(src);
    struct read_at src_at = {UINT64_MAX, 0, false}, base_at = {base_ver, 0, false};
    int rc = event_merge_space(&m->x, src, &src_at, &base_at, source_wins, &m->cpk, &m->nconf);
    if (rc)
        fail_msg("event_merge_space: %s", m->err.msg);
}

/* Install the stage like the dispatcher does; the helpers' clock continues after it. */
static void mctx_commit(struct mctx *m)
{
    uint64_t ver;
    int64_t ts;
    assert_int_equal(stage_commit(m->s, &m->st, m->x.wts, &ver, &ts), 0);
    if (m->st.n) {
        assert_int_equal(ver, m->x.wver);
        assert_int_equal(ts, m->x.wts);
        t_set_ts(ts);
    }
}

static void mctx_close(struct mctx *m)
{
    stage_close(&m->st);
    buf_close(&m->out);
    buf_close(&m->scratch);
    buf_close(&m->conf);
}

static uint64_t fork_ver(struct storage *s, const char *name)
{
    struct branch *b = branch_find(s, name, strlen(name));
    assert_non_null(b);
    return b->fork_ver;
}

static void test_event_merge_space_source_only_appends(void **state)
{
    struct storage *s = *state;
    append_n(s, "default", "default", "a", 1, 1);
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    append_n(s, "f", "default", "b", 2, 3);
    struct mctx m;
    mctx_init(&m, s, "default", "default");
    mctx_merge(&m, "f", fork_ver(s, "f"), false);
    assert_int_equal(m.nconf, 0);
    assert_int_equal(m.conf.len, 0);
    int64_t wts = m.x.wts;
    mctx_commit(&m);
    mctx_close(&m);

    EXPECT(s, "3", "{\"op\":\"event.len\"}");
    const char *out = OK(s, "{\"op\":\"event.range\"}");
    assert_string_equal(seqs(out), "1,2,3");
    char want[128];
    snprintf(want, sizeof want, "{\"seq\":2,\"type\":\"b\",\"ts\":%lld,\"payload\":{\"i\":2},",
             (long long)wts);
    assert_non_null(strstr(out, want));
    snprintf(want, sizeof want, "{\"seq\":3,\"type\":\"b\",\"ts\":%lld,\"payload\":{\"i\":3},",
             (long long)wts);
    assert_non_null(strstr(out, want));
    VERIFY_OK(s, 3);
    /* The source is untouched. */
    EXPECT(s, "{\"ok\":true,\"len\":3,\"first_bad_seq\":null}",
           "{\"op\":\"event.verify_chain\",\"branch\":\"f\"}");
    assert_non_null(
        strstr(OK(s, "{\"op\":\"event.get\",\"seq\":2,\"branch\":\"f\"}"), "\"ts\":3000,"));
}

static void test_event_merge_space_nothing_to_append(void **state)
{
    struct storage *s = *state;
    append_n(s, "default", "default", "a", 1, 1);
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    append_n(s, "default", "default", "a", 2, 2); /* target-only */
    uint64_t before = storage_version(s);
    struct mctx m;
    mctx_init(&m, s, "default", "default");
    mctx_merge(&m, "f", fork_ver(s, "f"), false);
    assert_int_equal(m.nconf, 0);
    assert_int_equal(m.st.n, 0);
    mctx_commit(&m);
    mctx_close(&m);
    assert_int_equal(storage_version(s), before);
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
    /* A space neither side has: nothing either. */
    mctx_init(&m, s, "default", "empty");
    mctx_merge(&m, "f", fork_ver(s, "f"), true);
    assert_int_equal(m.st.n, 0);
    mctx_close(&m);
}

static void test_event_merge_space_both_appended_strict_conflicts(void **state)
{
    struct storage *s = *state;
    append_n(s, "default", "s1", "a", 1, 1);
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    append_n(s, "default", "s1", "t", 2, 2);
    append_n(s, "f", "s1", "src", 3, 3);
    uint64_t before = storage_version(s);
    struct mctx m;
    mctx_init(&m, s, "default", "s1");
    mctx_merge(&m, "f", fork_ver(s, "f"), false);
    assert_int_equal(m.nconf, 1);
    assert_int_equal(m.st.n, 0);
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    assert_int_equal(value_decode(m.conf.data, m.conf.len, &z, &o), 0);
    assert_true(mp_str_eq(&o, "events:s1"));
    msgpack_zone_destroy(&z);
    mctx_commit(&m);
    mctx_close(&m);
    assert_int_equal(storage_version(s), before);
    EXPECT(s, "2", "{\"op\":\"event.len\",\"space\":\"s1\"}");
}

/* Install the merge record branch.merge writes (meta key 0x00 'M' be64(source id) ->
 * [source version merged, merge version]) for merges driven through the hook directly. */
static void record_merge(struct storage *s, struct branch *t, struct branch *f, uint64_t src_ver,
                         uint64_t merge_ver)
{
    uint8_t mk[10] = {0, TAG_MERGE};
    put_be64(mk + 2, f->id);
    uint8_t val[32];
    struct buf b = {val, 0, sizeof val};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_pack_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, src_ver);
    msgpack_pack_uint64(&pk, merge_ver);
    struct stage st;
    stage_init(&st);
    assert_int_equal(stage_put(&st, t, mk, sizeof mk, val, b.len), 0);
    assert_int_equal(stage_commit(s, &st, 0, NULL, NULL), 0);
    stage_close(&st);
}

static void test_event_merge_space_source_wins_appends_after_target(void **state)
{
    struct storage *s = *state;
    append_n(s, "default", "default", "base", 1, 1);
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    append_n(s, "default", "default", "tgt", 2, 2);
    append_n(s, "f", "default", "src", 3, 4);
    struct mctx m;
    mctx_init(&m, s, "default", "default");
    mctx_merge(&m, "f", fork_ver(s, "f"), true);
    assert_int_equal(m.nconf, 0);
    uint64_t src_ver = storage_version(s); /* the source's version the merge read */
    uint64_t merge_ver = m.x.wver;
    mctx_commit(&m);
    mctx_close(&m);
    EXPECT(s, "[\"base\",\"src\",\"tgt\"]", "{\"op\":\"event.types\"}");
    const char *out = OK(s, "{\"op\":\"event.range\"}");
    assert_string_equal(seqs(out), "1,2,3,4");
    const char *p1 = strstr(out, "\"type\":\"tgt\",");
    const char *p3 = strstr(out, "\"payload\":{\"i\":3}");
    const char *p4 = strstr(out, "\"payload\":{\"i\":4}");
    assert_true(p1 && p3 && p4 && p1 < p3 && p3 < p4);
    VERIFY_OK(s, 4);

    /* Record the merge as merge.c does; a later merge from the same source uses it as
     * its base: the target's own state right after that merge. The source appends one
     * more, the target nothing: strict must not see a conflict. */
    struct branch *t = branch_find(s, "default", 7), *f = branch_find(s, "f", 1);
    record_merge(s, t, f, src_ver, merge_ver);
    append_n(s, "f", "default", "src", 5, 5);
    mctx_init(&m, s, "default", "default");
    mctx_merge(&m, "f", src_ver, false);
    assert_int_equal(m.nconf, 0);
    mctx_commit(&m);
    mctx_close(&m);
    out = OK(s, "{\"op\":\"event.range\"}");
    assert_string_equal(seqs(out), "1,2,3,4,5");
    assert_non_null(strstr(out, "\"seq\":5,\"type\":\"src\""));
    assert_non_null(strstr(out, "\"payload\":{\"i\":5}"));
    VERIFY_OK(s, 5);

    /* Now the target appends too: strict conflicts again. */
    uint64_t src_ver2 = storage_version(s);
    record_merge(s, t, f, src_ver2 - 1, src_ver2);
    append_n(s, "default", "default", "tgt", 6, 6);
    append_n(s, "f", "default", "src", 7, 7);
    mctx_init(&m, s, "default", "default");
    mctx_merge(&m, "f", src_ver2 - 1, false);
    assert_int_equal(m.nconf, 1);
    assert_int_equal(m.st.n, 0);
    mctx_close(&m);
}

static void test_event_merge_space_into_new_space_registers_it(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f\"}");
    append_n(s, "f", "logs", "x", 1, 2);
    struct mctx m;
    mctx_init(&m, s, "default", "logs");
    mctx_merge(&m, "f", fork_ver(s, "f"), false);
    mctx_commit(&m);
    mctx_close(&m);
    EXPECT(s, "[\"default\",\"logs\"]", "{\"op\":\"space.list\"}");
    EXPECT(s, "{\"ok\":true,\"len\":2,\"first_bad_seq\":null}",
           "{\"op\":\"event.verify_chain\",\"space\":\"logs\"}");
    EXPECT(s, "0", "{\"op\":\"event.len\"}");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_event_append_hash_matches_definition),
        T(test_event_get_len_empty_and_missing),
        T(test_event_payload_value_types_roundtrip),
        T(test_event_bad_input),
        T(test_event_value_limits),
        T(test_event_batch_appends_get_consecutive_seqs),
        T(test_event_range_directions_and_cursor),
        T(test_event_types_sorted_distinct),
        T(test_event_time_travel),
        T(test_event_spaces_forks_and_space_delete),
        T(test_event_verify_chain_detects_tampering),
        T(test_event_deterministic_and_ts_bound),
        T(test_event_append_out_of_memory_changes_nothing),
        T(test_event_merge_space_source_only_appends),
        T(test_event_merge_space_nothing_to_append),
        T(test_event_merge_space_both_appended_strict_conflicts),
        T(test_event_merge_space_source_wins_appends_after_target),
        T(test_event_merge_space_into_new_space_registers_it),
    };
#undef T
    return cmocka_run_group_tests_name("storage_event", tests, NULL, NULL);
}
