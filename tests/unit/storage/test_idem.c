/* Idempotency keys: a keyed write resent with the same (client, seq) is answered with the
 * remembered result and changes nothing; the table's bounds; snapshots; bad keys. */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define setup t_setup
#define teardown t_teardown

/* Two client ids (16 bytes each, base64): bytes 0..15 and 16..31, and two more. */
#define CA "AAECAwQFBgcICQoLDA0ODw=="
#define CB "EBESExQVFhcYGRobHB0eHw=="
#define CC "ICEiIyQlJicoKSorLC0uLw=="
#define CD "MDEyMzQ1Njc4OTo7PD0+Pw=="
/* The "idem" argument: client, seq, ack, retry. */
#define IDEM(c, seq, ack, retry) "\"idem\":[{\"$bytes\":\"" c "\"}," #seq "," #ack "," #retry "]"

/* Snapshot bytes: equal states give equal bytes, so "nothing changed" is checked whole. */
static void snap(struct storage *s, struct buf *out)
{
    buf_init(out);
    t_snapshot(s, out);
}

static bool snap_equal(const struct buf *a, const struct buf *b)
{
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

/* Run cmd (JSON text) as is: the raw result bytes into out (reset first). */
static int raw_exec(struct storage *s, const char *json, struct buf *out, struct err *err)
{
    struct buf cmd;
    buf_init(&cmd);
    struct err e;
    assert_int_equal(storage_json_to_value(json, strlen(json), &cmd, &e), 0);
    buf_reset(out);
    t_set_ts(t_last_ts() + 1000);
    int rc = storage_exec(s, cmd.data, cmd.len, t_last_ts(), out, err);
    buf_close(&cmd);
    return rc;
}

/* Each write kind: first run, then the same command resent (retry true, and with a body
 * that would do something else if it ran): the answer is byte-identical and the whole
 * state (snapshot bytes) is unchanged. */
static void check_once(struct storage *s, const char *first, const char *again)
{
    struct buf r1, r2, before, after;
    buf_init(&r1);
    buf_init(&r2);
    struct err err;
    int rc = raw_exec(s, first, &r1, &err);
    if (rc) {
        fprintf(stderr, "%s: %s\n", first, err.msg);
        fail();
    }
    snap(s, &before);
    uint64_t ver = storage_version(s);
    rc = raw_exec(s, again, &r2, &err);
    if (rc) {
        fprintf(stderr, "%s: %s\n", again, err.msg);
        fail();
    }
    assert_int_equal(r1.len, r2.len);
    assert_memory_equal(r1.data, r2.data, r1.len);
    assert_int_equal(storage_version(s), ver);
    snap(s, &after);
    assert_true(snap_equal(&before, &after));
    buf_close(&r1);
    buf_close(&r2);
    buf_close(&before);
    buf_close(&after);
}

static void test_idem_every_write_kind_applies_once(void **state)
{
    struct storage *s = *state;
    /* Fixtures the keyed writes need. */
    OK(s, "{\"op\":\"vector.create_collection\",\"collection\":\"c\",\"dimension\":2,\"metric\":"
          "\"cosine\"}");
    OK(s, "{\"op\":\"branch.create\",\"name\":\"src\"}");
    OK(s, "{\"op\":\"kv.put\",\"branch\":\"src\",\"key\":\"m\",\"value\":1}");
    OK(s, "{\"op\":\"state.set\",\"cell\":\"cnt\",\"value\":0}");
    static const struct {
        const char *first, *again;
    } cases[] = {
        {"{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1," IDEM(CA, 1, 1, false) "}",
         "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":2," IDEM(CA, 1, 1, true) "}"},
        {"{\"op\":\"kv.delete\",\"key\":\"k\"," IDEM(CA, 2, 1, false) "}",
         "{\"op\":\"kv.delete\",\"key\":\"k\"," IDEM(CA, 2, 1, true) "}"},
        {"{\"op\":\"kv.batch_put\",\"items\":[[\"a\",1],[\"b\",2]]," IDEM(CA, 3, 1, false) "}",
         "{\"op\":\"kv.batch_put\",\"items\":[[\"a\",1],[\"b\",2]]," IDEM(CA, 3, 1, true) "}"},
        {"{\"op\":\"state.cas\",\"cell\":\"cnt\",\"expected_counter\":1,\"value\":1," IDEM(
             CA, 4, 1, false) "}",
         "{\"op\":\"state.cas\",\"cell\":\"cnt\",\"expected_counter\":1,\"value\":1," IDEM(
             CA, 4, 1, true) "}"},
        {"{\"op\":\"state.set\",\"cell\":\"x\",\"value\":1," IDEM(CA, 5, 1, false) "}",
         "{\"op\":\"state.set\",\"cell\":\"x\",\"value\":9," IDEM(CA, 5, 1, true) "}"},
        {"{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"n\":1}," IDEM(CA, 6, 1, false) "}",
         "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{\"n\":1}," IDEM(CA, 6, 1, true) "}"},
        {"{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$\",\"value\":{\"a\":1}," IDEM(CA, 7, 1,
                                                                                       false) "}",
         "{\"op\":\"json.set\",\"key\":\"d\",\"path\":\"$\",\"value\":{\"a\":1}," IDEM(CA, 7, 1,
                                                                                       true) "}"},
        {"{\"op\":\"json.delete\",\"key\":\"d\"," IDEM(CA, 8, 1, false) "}",
         "{\"op\":\"json.delete\",\"key\":\"d\"," IDEM(CA, 8, 1, true) "}"},
        {"{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"v\",\"vector\":[1,0]," IDEM(
             CA, 9, 1, false) "}",
         "{\"op\":\"vector.upsert\",\"collection\":\"c\",\"key\":\"v\",\"vector\":[0,1]," IDEM(
             CA, 9, 1, true) "}"},
        {"{\"op\":\"vector.delete\",\"collection\":\"c\",\"key\":\"v\"," IDEM(CA, 10, 1, false) "}",
         "{\"op\":\"vector.delete\",\"collection\":\"c\",\"key\":\"v\"," IDEM(CA, 10, 1, true) "}"},
        {"{\"op\":\"batch\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"p\",\"value\":1},"
         "{\"op\":\"event.append\",\"type\":\"b\",\"payload\":{}}]," IDEM(CA, 11, 1, false) "}",
         "{\"op\":\"batch\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"p\",\"value\":1},"
         "{\"op\":\"event.append\",\"type\":\"b\",\"payload\":{}}]," IDEM(CA, 11, 1, true) "}"},
        {"{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[],\"ops\":[{\"op\":\"kv.put\","
         "\"key\":\"t\",\"value\":1}]," IDEM(CA, 12, 1, false) "}",
         "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[],\"ops\":[{\"op\":\"kv.put\","
         "\"key\":\"t\",\"value\":1}]," IDEM(CA, 12, 1, true) "}"},
        {"{\"op\":\"branch.create\",\"name\":\"nb\"," IDEM(CA, 13, 1, false) "}",
         "{\"op\":\"branch.create\",\"name\":\"nb\"," IDEM(CA, 13, 1, true) "}"},
        {"{\"op\":\"branch.fork\",\"source\":\"src\",\"name\":\"fk\"," IDEM(CA, 14, 1, false) "}",
         "{\"op\":\"branch.fork\",\"source\":\"src\",\"name\":\"fk\"," IDEM(CA, 14, 1, true) "}"},
        {"{\"op\":\"kv.put\",\"branch\":\"fk\",\"key\":\"m\",\"value\":2," IDEM(CA, 15, 1,
                                                                                false) "}",
         "{\"op\":\"kv.put\",\"branch\":\"fk\",\"key\":\"m\",\"value\":2," IDEM(CA, 15, 1,
                                                                                true) "}"},
        {"{\"op\":\"branch.merge\",\"source\":\"fk\",\"target\":\"src\"," IDEM(CA, 16, 1,
                                                                               false) "}",
         "{\"op\":\"branch.merge\",\"source\":\"fk\",\"target\":\"src\"," IDEM(CA, 16, 1,
                                                                               true) "}"},
        {"{\"op\":\"space.create\",\"space\":\"sp\"," IDEM(CA, 17, 1, false) "}",
         "{\"op\":\"space.create\",\"space\":\"sp\"," IDEM(CA, 17, 1, true) "}"},
        {"{\"op\":\"branch.delete\",\"name\":\"nb\"," IDEM(CA, 18, 1, false) "}",
         "{\"op\":\"branch.delete\",\"name\":\"nb\"," IDEM(CA, 18, 1, true) "}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_once(s, cases[i].first, cases[i].again);
    /* The effects happened exactly once: one event from event.append, one from the batch. */
    EXPECT(s, "2", "{\"op\":\"event.len\"}");
    const char *cnt = OK(s, "{\"op\":\"state.get\",\"cell\":\"cnt\"}");
    assert_non_null(strstr(cnt, "\"value\":1,\"counter\":2"));
    const char *x = OK(s, "{\"op\":\"state.get\",\"cell\":\"x\"}");
    assert_non_null(strstr(x, "\"value\":1"));
    FAILS(s, STRATA_BRANCH_NOT_FOUND, "{\"op\":\"branch.info\",\"name\":\"nb\"}");
    x = OK(s, "{\"op\":\"kv.get\",\"branch\":\"src\",\"key\":\"m\"}");
    assert_non_null(strstr(x, "\"value\":2"));
}

/* Without a key (or with a new seq) the same command runs again: the test above would
 * catch nothing if resending never changed anything. */
static void test_idem_new_seq_runs_again(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 1, 1, false) "}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 1, 1, true) "}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 2, 1, false) "}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CB, 1, 1, false) "}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}}");
    EXPECT(s, "4", "{\"op\":\"event.len\"}");
}

/* A failed write changes nothing and is not remembered: its retry runs again. */
static void test_idem_failed_write_is_not_remembered(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":0}");
    struct buf before, after;
    snap(s, &before);
    FAILS(s, STRATA_CONFLICT,
          "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":2,"
          "\"value\":5," IDEM(CA, 1, 1, false) "}");
    snap(s, &after);
    assert_true(snap_equal(&before, &after));
    OK(s, "{\"op\":\"state.set\",\"cell\":\"c\",\"value\":1}");
    OK(s, "{\"op\":\"state.cas\",\"cell\":\"c\",\"expected_counter\":2,\"value\":5," IDEM(
              CA, 1, 1, true) "}");
    const char *c = OK(s, "{\"op\":\"state.get\",\"cell\":\"c\"}");
    assert_non_null(strstr(c, "\"value\":5,\"counter\":3"));
    buf_close(&before);
    buf_close(&after);
}

/* The answer is remembered even after the branch it wrote to is gone. */
static void test_idem_answer_outlives_its_branch(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"branch.create\",\"name\":\"b\"}");
    char first[256];
    snprintf(first, sizeof first, "%s",
             OK(s, "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1," IDEM(
                       CA, 1, 1, false) "}"));
    OK(s, "{\"op\":\"branch.delete\",\"name\":\"b\"}");
    EXPECT(
        s, first,
        "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1," IDEM(CA, 1, 1, true) "}");
    FAILS(
        s, STRATA_BRANCH_NOT_FOUND,
        "{\"op\":\"kv.put\",\"branch\":\"b\",\"key\":\"k\",\"value\":1," IDEM(CA, 2, 1, true) "}");
}

static struct storage *small_engine(size_t clients, size_t window, size_t bytes)
{
    struct storage_config cfg;
    storage_config_default(&cfg);
    cfg.idem_clients = clients;
    cfg.idem_window = window;
    cfg.idem_bytes = bytes;
    struct storage *s;
    assert_int_equal(storage_new(&cfg, &s), 0);
    return s;
}

static void test_idem_window_forgets_oldest_and_refuses_them(void **state)
{
    (void)state;
    struct storage *s = small_engine(8, 2, 1 << 20);
    t_set_ts(0);
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 1, 1, false) "}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 2, 1, false) "}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 3, 1, false) "}");
    /* seq 1 left the window of 2: refused, never applied twice. */
    const char *m =
        FAILS(s, STRATA_OUTCOME_FORGOTTEN,
              "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 1, 1, true) "}");
    assert_non_null(strstr(m, "seq 1"));
    assert_non_null(strstr(m, "no longer remembered"));
    m = OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 2, 1, true) "}");
    assert_non_null(strstr(m, "\"version\":2,\"ts\":2000,\"seq\":2"));
    EXPECT(s, "3", "{\"op\":\"event.len\"}");
    /* ack: everything below 3 is answered, so forgotten (even if still in the window). */
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 4, 3, false) "}");
    FAILS(s, STRATA_OUTCOME_FORGOTTEN,
          "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 2, 1, true) "}");
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 3, 1, true) "}");
    EXPECT(s, "4", "{\"op\":\"event.len\"}");
    storage_free(s);
}

/* Whole clients are evicted least recently written first; a retry from an unknown client
 * is then refused (it may be a dropped one), a first attempt runs. The same commands give
 * the same table on another engine: the eviction uses only the log's data. */
static void test_idem_client_eviction_is_deterministic(void **state)
{
    (void)state;
    struct buf snaps[2];
    for (int e = 0; e < 2; e++) {
        struct storage *s = small_engine(2, 8, 1 << 20);
        t_set_ts(0);
        OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1," IDEM(CA, 1, 1, false) "}");
        OK(s, "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":1," IDEM(CB, 1, 1, false) "}");
        /* Retry of an unknown client before any eviction: it runs. */
        OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":2," IDEM(CA, 2, 1, true) "}");
        /* CC makes three: CB is the least recently written and goes. */
        OK(s, "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1," IDEM(CC, 1, 1, false) "}");
        const char *m =
            FAILS(s, STRATA_OUTCOME_FORGOTTEN,
                  "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":9," IDEM(CB, 1, 1, true) "}");
        assert_non_null(strstr(m, "dropped 1 client"));
        /* CA is still known: its retry gets the answer. */
        OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":9," IDEM(CA, 1, 1, true) "}");
        EXPECT(s, "{\"value\":2,\"version\":3,\"ts\":3000}", "{\"op\":\"kv.get\",\"key\":\"a\"}");
        /* A first attempt of a new client runs (and evicts CA now). */
        OK(s, "{\"op\":\"kv.put\",\"key\":\"d\",\"value\":1," IDEM(CD, 1, 1, false) "}");
        FAILS(s, STRATA_OUTCOME_FORGOTTEN,
              "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":9," IDEM(CA, 1, 1, true) "}");
        EXPECT(s, "{\"value\":1,\"version\":1,\"ts\":1000}",
               "{\"op\":\"kv.get\",\"key\":\"a\",\"at_version\":1}");
        snap(s, &snaps[e]);
        storage_free(s);
    }
    assert_true(snap_equal(&snaps[0], &snaps[1]));
    buf_close(&snaps[0]);
    buf_close(&snaps[1]);
}

static void test_idem_byte_bound_evicts(void **state)
{
    (void)state;
    /* Each kv.put answer here is {"version", "ts"}: 16 bytes; 40 bytes hold two. */
    struct storage *s = small_engine(100, 100, 40);
    t_set_ts(0);
    OK(s, "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1," IDEM(CA, 1, 1, false) "}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"b\",\"value\":1," IDEM(CB, 1, 1, false) "}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1," IDEM(CC, 1, 1, false) "}");
    FAILS(s, STRATA_OUTCOME_FORGOTTEN,
          "{\"op\":\"kv.put\",\"key\":\"a\",\"value\":1," IDEM(CA, 1, 1, true) "}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1," IDEM(CC, 1, 1, true) "}");
    /* One client alone over the bound keeps only its newest answer. */
    OK(s, "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1," IDEM(CC, 2, 1, false) "}");
    OK(s, "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1," IDEM(CC, 3, 1, false) "}");
    FAILS(s, STRATA_OUTCOME_FORGOTTEN,
          "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1," IDEM(CC, 1, 1, true) "}");
    const char *m = OK(s, "{\"op\":\"kv.put\",\"key\":\"c\",\"value\":1," IDEM(CC, 3, 1, true) "}");
    assert_non_null(strstr(m, "\"version\":5,"));
    storage_free(s);
}

static void test_idem_snapshot_restore_keeps_the_table(void **state)
{
    struct storage *s = *state;
    struct buf plain;
    snap(s, &plain);
    assert_int_equal(plain.data[11], 1); /* no keyed write yet: format 1, as before */
    char first[256];
    snprintf(
        first, sizeof first, "%s",
        OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 7, 1, false) "}"));
    OK(s, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1," IDEM(CB, 3, 2, false) "}");
    struct buf full;
    snap(s, &full);
    assert_int_equal(full.data[11], 2);
    struct storage *r;
    assert_int_equal(storage_new(NULL, &r), 0);
    struct err err;
    assert_int_equal(storage_restore(r, full.data, full.len, &err), 0);
    struct buf again;
    snap(r, &again);
    assert_true(snap_equal(&full, &again));
    EXPECT(r, first,
           "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 7, 1, true) "}");
    EXPECT(r, "1", "{\"op\":\"event.len\"}");
    /* CB's floor (ack 2) came along too. */
    FAILS(r, STRATA_OUTCOME_FORGOTTEN,
          "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1," IDEM(CB, 1, 1, true) "}");
    /* Restoring the old snapshot drops the table again. */
    assert_int_equal(storage_restore(r, plain.data, plain.len, &err), 0);
    OK(r, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 7, 1, true) "}");
    EXPECT(r, "1", "{\"op\":\"event.len\"}");
    storage_free(r);
    buf_close(&plain);
    buf_close(&full);
    buf_close(&again);
}

/* A truncated snapshot with a table is refused and leaves the engine as it was. */
static void test_idem_restore_rejects_truncated_table(void **state)
{
    struct storage *s = *state;
    for (int i = 1; i <= 20; i++) {
        char cmd[200];
        snprintf(cmd, sizeof cmd,
                 "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":%d,\"idem\":[{\"$bytes\":\"" CA
                 "\"},%d,1,false]}",
                 i, i);
        OK(s, "%s", cmd);
    }
    struct buf full;
    snap(s, &full);
    struct storage *r;
    assert_int_equal(storage_new(NULL, &r), 0);
    struct buf before;
    snap(r, &before);
    struct err err;
    for (size_t cut = 12; cut < full.len; cut += 7) {
        assert_int_not_equal(storage_restore(r, full.data, cut, &err), 0);
        struct buf now;
        snap(r, &now);
        assert_true(snap_equal(&before, &now));
        buf_close(&now);
    }
    storage_free(r);
    buf_close(&full);
    buf_close(&before);
}

static void test_idem_malformed_keys_are_rejected(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":1}");
    struct buf before, after;
    snap(s, &before);
    static const struct {
        const char *idem, *msg;
    } bad[] = {
        {"1", "must be an array"},
        {"[]", "must be an array"},
        {"[{\"$bytes\":\"" CA "\"},1,1]", "must be an array"},
        {"[{\"$bytes\":\"" CA "\"},1,1,false,1]", "must be an array"},
        {"[\"0123456789abcdef\",1,1,false]", "16 bytes of binary"},
        {"[{\"$bytes\":\"AAECAwQFBgcICQoLDA0O\"},1,1,false]", "16 bytes of binary"},
        {"[{\"$bytes\":\"" CA "\"},0,0,false]", "seq must be an integer >= 1"},
        {"[{\"$bytes\":\"" CA "\"},-1,0,false]", "seq must be an integer >= 1"},
        {"[{\"$bytes\":\"" CA "\"},1.5,0,false]", "seq must be an integer >= 1"},
        {"[{\"$bytes\":\"" CA "\"},\"1\",0,false]", "seq must be an integer >= 1"},
        {"[{\"$bytes\":\"" CA "\"},3,4,false]", "no greater than seq"},
        {"[{\"$bytes\":\"" CA "\"},3,-1,false]", "no greater than seq"},
        {"[{\"$bytes\":\"" CA "\"},3,1,1]", "retry must be a boolean"},
        {"[{\"$bytes\":\"" CA "\"},3,1,null]", "retry must be a boolean"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *m =
            FAILS(s, STRATA_INVALID_ARGUMENT,
                  "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":2,\"idem\":%s}", bad[i].idem);
        if (strstr(m, bad[i].msg) == NULL) {
            fprintf(stderr, "idem %s: got '%s', want '%s'\n", bad[i].idem, m, bad[i].msg);
            fail();
        }
    }
    /* Reads take no key; operations inside a batch or transaction take none either. */
    const char *m = FAILS(s, STRATA_INVALID_ARGUMENT,
                          "{\"op\":\"kv.get\",\"key\":\"k\"," IDEM(CA, 1, 1, false) "}");
    assert_non_null(strstr(m, "writes only"));
    m = FAILS(s, STRATA_INVALID_ARGUMENT,
              "{\"op\":\"batch\",\"ops\":[{\"op\":\"kv.put\",\"key\":\"k\",\"value\":3," IDEM(
                  CA, 1, 1, false) "}]}");
    assert_non_null(strstr(m, "belongs to the whole command"));
    FAILS(s, STRATA_INVALID_ARGUMENT,
          "{\"op\":\"txn.commit\",\"snapshot\":1,\"reads\":[],\"ops\":[{\"op\":\"kv.put\","
          "\"key\":\"k\",\"value\":3," IDEM(CA, 1, 1, false) "}]}");
    snap(s, &after);
    assert_true(snap_equal(&before, &after));
    /* nil counts as absent, like every argument. */
    OK(s, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":4,\"idem\":null}");
    buf_close(&before);
    buf_close(&after);
}

/* Out of memory anywhere in a keyed write (the answer's copy included) changes nothing:
 * no write and no remembered answer. */
static void test_idem_out_of_memory_changes_nothing(void **state)
{
    struct storage *s = *state;
    OK(s, "{\"op\":\"kv.put\",\"key\":\"k\",\"value\":0," IDEM(CB, 1, 1, false) "}");
    const char *cmd =
        "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 1, 1, false) "}";
    struct buf res;
    buf_init(&res);
    int rc = STRATA_OUT_OF_MEMORY;
    for (long n = 1; n < 200 && rc == STRATA_OUT_OF_MEMORY; n++) {
        struct buf before, after;
        snap(s, &before);
        struct err err;
        struct buf c;
        buf_init(&c);
        assert_int_equal(storage_json_to_value(cmd, strlen(cmd), &c, &err), 0);
        sm_fail_after(n);
        rc = storage_exec(s, c.data, c.len, 1000000 + n, &res, &err);
        sm_fail_after(0);
        buf_close(&c);
        if (rc == STRATA_OUT_OF_MEMORY) {
            snap(s, &after);
            assert_true(snap_equal(&before, &after));
            buf_close(&after);
        }
        buf_close(&before);
    }
    assert_int_equal(rc, 0);
    OK(s, "{\"op\":\"event.append\",\"type\":\"t\",\"payload\":{}," IDEM(CA, 1, 1, true) "}");
    EXPECT(s, "1", "{\"op\":\"event.len\"}");
    buf_close(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_idem_every_write_kind_applies_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_new_seq_runs_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_failed_write_is_not_remembered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_answer_outlives_its_branch, setup, teardown),
        cmocka_unit_test(test_idem_window_forgets_oldest_and_refuses_them),
        cmocka_unit_test(test_idem_client_eviction_is_deterministic),
        cmocka_unit_test(test_idem_byte_bound_evicts),
        cmocka_unit_test_setup_teardown(test_idem_snapshot_restore_keeps_the_table, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idem_restore_rejects_truncated_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_malformed_keys_are_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_out_of_memory_changes_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
