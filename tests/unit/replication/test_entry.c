/* The log-entry codec and entry apply, fed valid, truncated, corrupted and random bytes. */
#include "cluster.h"

#include "entry.h"
#include "fsm.h"

#include <stdlib.h>
#include <string.h>

/* Build an entry of the given JSON commands; returns malloc'ed bytes. */
static uint8_t *make_entry(int64_t ts, const char **json, uint32_t n, size_t *len)
{
    struct buf cmds[8];
    size_t payload = 0;
    for (uint32_t i = 0; i < n; i++) {
        cl_cmd(&cmds[i], "%s", json[i]);
        payload += ENTRY_CMD_PREFIX + cmds[i].len;
    }
    uint8_t *p = malloc(entry_size(payload));
    assert_non_null(p);
    struct entry_writer w;
    entry_writer_init(&w, p, ts, n, (uint32_t)payload);
    for (uint32_t i = 0; i < n; i++) {
        entry_writer_add(&w, cmds[i].data, (uint32_t)cmds[i].len);
        buf_close(&cmds[i]);
    }
    *len = entry_writer_finish(&w);
    return p;
}

static const char *three[] = {
    "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}",
    "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":\"two\"}",
    "{\"op\":\"kv.delete\",\"key\":\"a\"}",
};

static void test_entry_decode_roundtrip(void **state)
{
    (void)state;
    size_t len;
    uint8_t *p = make_entry(123456789, three, 3, &len);
    assert_int_equal(len % 8, 0);
    assert_memory_equal(p, "SENT", 4);
    struct entry_view v;
    struct err err;
    assert_int_equal(entry_decode(p, len, &v, &err), 0);
    assert_int_equal(v.ts, 123456789);
    assert_int_equal(v.count, 3);
    const uint8_t *cmd;
    size_t clen;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(entry_next(&v, &cmd, &clen), 1);
        struct buf want;
        cl_cmd(&want, "%s", three[i]);
        assert_int_equal(clen, want.len);
        assert_memory_equal(cmd, want.data, clen);
        buf_close(&want);
    }
    assert_int_equal(entry_next(&v, &cmd, &clen), 0);
    free(p);
}

static void test_entry_size_pads_to_eight(void **state)
{
    (void)state;
    for (size_t payload = 0; payload < 64; payload++) {
        size_t s = entry_size(payload);
        assert_int_equal(s % 8, 0);
        assert_true(s >= ENTRY_HEADER + payload);
        assert_true(s < ENTRY_HEADER + payload + 8);
    }
}

static void test_entry_decode_truncated_every_length(void **state)
{
    (void)state;
    size_t len;
    uint8_t *p = make_entry(1, three, 3, &len);
    struct entry_view v;
    struct err err;
    for (size_t n = 0; n < len; n++) {
        /* A private copy so ASan sees any read past n. */
        uint8_t *q = malloc(n ? n : 1);
        memcpy(q, p, n);
        err_clear(&err);
        assert_int_equal(entry_decode(q, n, &v, &err), STRATA_PROTOCOL_ERROR);
        assert_true(err.msg[0] != '\0');
        free(q);
    }
    free(p);
}

/* Change one field and expect a named rejection. */
static void expect_reject(const uint8_t *orig, size_t len, size_t off, const uint8_t *bytes,
                          size_t n, const char *needle)
{
    uint8_t *q = malloc(len);
    memcpy(q, orig, len);
    memcpy(q + off, bytes, n);
    struct entry_view v;
    struct err err;
    err_clear(&err);
    assert_int_equal(entry_decode(q, len, &v, &err), STRATA_PROTOCOL_ERROR);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("message \"%s\" does not mention \"%s\"", err.msg, needle);
    free(q);
}

static void test_entry_decode_bad_fields(void **state)
{
    (void)state;
    size_t len;
    uint8_t *p = make_entry(1, three, 3, &len);
    uint8_t be[8];
    expect_reject(p, len, 0, (const uint8_t *)"SENX", 4, "magic");
    expect_reject(p, len, 4, (const uint8_t *)"\x02", 1, "version");
    expect_reject(p, len, 5, (const uint8_t *)"\x09", 1, "kind");
    expect_reject(p, len, 6, (const uint8_t *)"\x01", 1, "reserved");
    expect_reject(p, len, 8, (const uint8_t *)"\x80", 1, "timestamp");
    put_be32(be, 0);
    expect_reject(p, len, 16, be, 4, "no command");
    put_be32(be, 2);
    expect_reject(p, len, 16, be, 4, "after its");
    put_be32(be, 4);
    expect_reject(p, len, 16, be, 4, "truncated");
    put_be32(be, 0xffffffffu);
    expect_reject(p, len, 20, be, 4, "exceeds");
    put_be32(be, get_be32(p + 20) - 8);
    expect_reject(p, len, 20, be, 4, "does not match");
    put_be32(be, 0);
    expect_reject(p, len, ENTRY_HEADER, be, 4, "empty");
    put_be32(be, 100000);
    expect_reject(p, len, ENTRY_HEADER, be, 4, "overruns");
    /* Padding: the entry here has padding only if the payload is not aligned. */
    size_t payload = get_be32(p + 20);
    if (ENTRY_HEADER + payload < len)
        expect_reject(p, len, len - 1, (const uint8_t *)"\x01", 1, "padding");
    free(p);
    /* Odd total length. */
    uint8_t small[ENTRY_HEADER + 9];
    memset(small, 0, sizeof small);
    memcpy(small, "SENT\x01\x01", 6);
    put_be32(small + 16, 1);
    put_be32(small + 20, 5);
    struct entry_view v;
    struct err err;
    assert_int_equal(entry_decode(small, sizeof small, &v, &err), STRATA_PROTOCOL_ERROR);
    assert_non_null(strstr(err.msg, "multiple of 8"));
}

static void snapshot_of(struct storage *s, struct buf *out)
{
    struct err err;
    buf_init(out);
    assert_int_equal(storage_snapshot_buf(s, out, &err), 0);
}

struct collected {
    int n;
    int codes[8];
    char json[8][256];
};

static void collect(void *arg, uint32_t i, int code, struct buf *result, const struct err *err)
{
    struct collected *c = arg;
    assert_int_equal(i, (uint32_t)c->n);
    c->codes[c->n] = code;
    if (code == 0) {
        struct buf j;
        buf_init(&j);
        storage_value_to_json(result->data, result->len, &j, false);
        snprintf(c->json[c->n], sizeof c->json[0], "%.*s", (int)j.len, (const char *)j.data);
        buf_close(&j);
    } else {
        snprintf(c->json[c->n], sizeof c->json[0], "%s", err->msg);
    }
    c->n++;
}

static void test_fsm_apply_entry_runs_commands_at_entry_ts(void **state)
{
    (void)state;
    struct storage *s;
    assert_int_equal(storage_new(NULL, &s), 0);
    const char *cmds[] = {
        "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1}",
        "{\"op\":\"kv.put\",\"value\":2}", /* no key: fails in the engine, changes nothing */
        "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":2}",
    };
    size_t len;
    uint8_t *p = make_entry(5000, cmds, 3, &len);
    struct collected col = {0};
    uint32_t n = 0;
    struct err err;
    assert_int_equal(fsm_apply_entry(s, p, len, collect, &col, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(col.n, 3);
    assert_int_equal(col.codes[0], 0);
    assert_string_equal(col.json[0], "{\"version\":1,\"ts\":5000}");
    assert_int_equal(col.codes[1], STRATA_INVALID_ARGUMENT);
    assert_int_equal(col.codes[2], 0);
    assert_string_equal(col.json[2], "{\"version\":2,\"ts\":5001}");
    assert_int_equal(storage_version(s), 2);
    free(p);
    storage_free(s);
}

static void test_fsm_apply_entry_corrupt_changes_nothing(void **state)
{
    (void)state;
    struct storage *s;
    assert_int_equal(storage_new(NULL, &s), 0);
    size_t len;
    uint8_t *p = make_entry(1000, three, 3, &len);
    struct buf before;
    snapshot_of(s, &before);
    struct err err;
    /* Truncated at every length: rejected, engine untouched. */
    for (size_t k = 0; k < len; k++) {
        uint8_t *q = malloc(k ? k : 1);
        memcpy(q, p, k);
        uint32_t n = 99;
        assert_int_equal(fsm_apply_entry(s, q, k, NULL, NULL, &n, &err), STRATA_PROTOCOL_ERROR);
        assert_int_equal(n, 0);
        free(q);
    }
    assert_int_equal(storage_version(s), 0);
    struct buf after;
    snapshot_of(s, &after);
    assert_int_equal(before.len, after.len);
    assert_memory_equal(before.data, after.data, before.len);
    buf_close(&after);
    /* Every single-byte corruption: either rejected, or a well-formed entry whose
     * commands the engine judges; never a crash. */
    for (size_t k = 0; k < len; k++) {
        for (int bit = 0; bit < 8; bit += 3) {
            uint8_t *q = malloc(len);
            memcpy(q, p, len);
            q[k] ^= (uint8_t)(1u << bit);
            struct storage *t;
            assert_int_equal(storage_new(NULL, &t), 0);
            int rc = fsm_apply_entry(t, q, len, NULL, NULL, NULL, &err);
            if (rc != 0) {
                assert_int_equal(rc, STRATA_PROTOCOL_ERROR);
                assert_int_equal(storage_version(t), 0);
            }
            storage_free(t);
            free(q);
        }
    }
    buf_close(&before);
    free(p);
    storage_free(s);
}

static void test_fsm_apply_entry_random_bytes(void **state)
{
    (void)state;
    struct storage *s;
    assert_int_equal(storage_new(NULL, &s), 0);
    srand(42);
    struct err err;
    int rejected = 0;
    for (int i = 0; i < 20000; i++) {
        size_t len = (size_t)(rand() % 96);
        uint8_t *q = malloc(len ? len : 1);
        for (size_t k = 0; k < len; k++)
            q[k] = (uint8_t)rand();
        /* Half of them with a valid header prefix to reach the command walk. */
        if ((i & 1) && len >= ENTRY_HEADER) {
            memcpy(q, "SENT\x01\x01\x00\x00", 8);
            q[8] = 0;
            put_be32(q + 16, 1 + (uint32_t)(rand() % 3));
            put_be32(q + 20, (uint32_t)(rand() % (int)(len - ENTRY_HEADER + 1)));
        }
        if (fsm_apply_entry(s, q, len, NULL, NULL, NULL, &err) != 0)
            rejected++;
        free(q);
    }
    assert_true(rejected > 19000);
    storage_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_decode_roundtrip),
        cmocka_unit_test(test_entry_size_pads_to_eight),
        cmocka_unit_test(test_entry_decode_truncated_every_length),
        cmocka_unit_test(test_entry_decode_bad_fields),
        cmocka_unit_test(test_fsm_apply_entry_runs_commands_at_entry_ts),
        cmocka_unit_test(test_fsm_apply_entry_corrupt_changes_nothing),
        cmocka_unit_test(test_fsm_apply_entry_random_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
