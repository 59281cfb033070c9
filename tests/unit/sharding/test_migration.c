/* sharding/migration: starting moves against a table, the phase transition table (every
 * pair), finishing into the bounded recent list, the MessagePack form and its validating
 * decoder (wrong types in every field, bad order, every prefix, random bit flips). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration.h"

const char *__asan_default_options(void) __attribute__((used));
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

static void expect_error(int rc, const struct err *e, int code, const char *needle)
{
    if (rc != code)
        fail_msg("got %s (\"%s\"), want %s", err_name(rc), e->msg, err_name(code));
    if (strstr(e->msg, needle) == NULL)
        fail_msg("message \"%s\" does not mention \"%s\"", e->msg, needle);
}

/* Three nodes, three shards; branches a (shard 2), b (shard 3), default (shard 1). */
static void table(struct placement *p)
{
    struct pl_node nodes[3];
    memset(nodes, 0, sizeof nodes);
    for (int i = 0; i < 3; i++) {
        nodes[i].id = (uint64_t)i + 1;
        snprintf(nodes[i].address, sizeof nodes[i].address, "127.0.0.1:%d", 7000 + i);
    }
    placement_init(p);
    struct err e;
    assert_int_equal(placement_initial(p, nodes, 3, 3, 3, &e), 0);
    assert_int_equal(placement_assign(p, "a", 1, 2, &e), 0);
    assert_int_equal(placement_assign(p, "b", 1, 3, &e), 0);
}

static struct migration *new_mig(void)
{
    struct migration *m = malloc(sizeof *m);
    assert_non_null(m);
    migration_init(m);
    return m;
}

static void test_start_checks_the_table(void **state)
{
    (void)state;
    struct placement p;
    table(&p);
    struct migration *m = new_mig();
    struct err e;
    expect_error(migration_start(m, &p, "default", 7, 2, 0, 1, &e), &e, STRATA_INVALID_ARGUMENT,
                 "default");
    expect_error(migration_start(m, &p, "zz", 2, 2, 0, 1, &e), &e, STRATA_BRANCH_NOT_FOUND, "zz");
    expect_error(migration_start(m, &p, "a", 1, 9, 0, 1, &e), &e, STRATA_INVALID_ARGUMENT,
                 "shard 9");
    expect_error(migration_start(m, &p, "a", 1, 2, 0, 1, &e), &e, STRATA_INVALID_ARGUMENT,
                 "already");
    expect_error(migration_start(m, &p, "a", 1, 3, 100, 1, &e), &e, STRATA_INVALID_ARGUMENT,
                 "chunk_bytes");
    expect_error(migration_start(m, &p, "a", 1, 3, MIG_CHUNK_MAX + 1, 1, &e), &e,
                 STRATA_INVALID_ARGUMENT, "chunk_bytes");
    expect_error(migration_start(m, &p, "a", 1, 3, 0, 0, &e), &e, STRATA_INVALID_ARGUMENT, "id");
    expect_error(migration_start(m, &p, "", 0, 3, 0, 1, &e), &e, STRATA_INVALID_ARGUMENT, "name");
    assert_int_equal(m->n, 0);
    assert_int_equal(migration_start(m, &p, "b", 1, 1, 0, 7, &e), 0);
    assert_int_equal(migration_start(m, &p, "a", 1, 3, 8192, 9, &e), 0);
    expect_error(migration_start(m, &p, "a", 1, 1, 0, 10, &e), &e, STRATA_ALREADY_EXISTS,
                 "move 9");
    assert_int_equal(m->n, 2);
    /* Sorted by name; from is the table's shard; the default chunk. */
    assert_string_equal(m->moves[0].name, "a");
    assert_int_equal(m->moves[0].from, 2);
    assert_int_equal(m->moves[0].to, 3);
    assert_int_equal(m->moves[0].chunk, 8192);
    assert_int_equal(m->moves[0].phase, MIG_COPYING);
    assert_int_equal(m->moves[1].chunk, MIG_CHUNK_DEFAULT);
    assert_non_null(migration_find(m, "b", 1));
    assert_null(migration_find(m, "c", 1));
    placement_free(&p);
    free(m);
}

static void test_start_bounded(void **state)
{
    (void)state;
    struct placement p;
    table(&p);
    struct migration *m = new_mig();
    struct err e;
    char name[16];
    for (int i = 0; i < MIG_MAX_MOVES + 1; i++) {
        snprintf(name, sizeof name, "n%03d", i);
        assert_int_equal(placement_assign(&p, name, strlen(name), 2, &e), 0);
    }
    for (int i = 0; i < MIG_MAX_MOVES; i++) {
        snprintf(name, sizeof name, "n%03d", i);
        assert_int_equal(migration_start(m, &p, name, strlen(name), 3, 0, (uint64_t)i + 1, &e), 0);
    }
    snprintf(name, sizeof name, "n%03d", MIG_MAX_MOVES);
    expect_error(migration_start(m, &p, name, strlen(name), 3, 0, 999, &e), &e,
                 STRATA_UNAVAILABLE, "in flight");
    placement_free(&p);
    free(m);
}

/* Every (from, to) pair: exactly the diagram's steps are allowed. */
static void test_advance_transition_table(void **state)
{
    (void)state;
    struct placement p;
    table(&p);
    static const bool ok[6][6] = {
        [MIG_COPYING] = {[MIG_COPYING] = true, [MIG_CATCHING_UP] = true, [MIG_ABORTING] = true},
        [MIG_CATCHING_UP] = {[MIG_CATCHING_UP] = true, [MIG_FENCED] = true, [MIG_ABORTING] = true},
        [MIG_FENCED] = {[MIG_FENCED] = true, [MIG_CUTOVER] = true, [MIG_ABORTING] = true},
        [MIG_CUTOVER] = {[MIG_CUTOVER] = true},
        [MIG_ABORTING] = {[MIG_ABORTING] = true},
    };
    static const enum mig_phase path[] = {MIG_COPYING, MIG_CATCHING_UP, MIG_FENCED, MIG_CUTOVER};
    for (int from = MIG_COPYING; from <= MIG_ABORTING; from++)
        for (int to = 0; to <= MIG_ABORTING + 1; to++) {
            struct migration *m = new_mig();
            struct err e;
            assert_int_equal(migration_start(m, &p, "a", 1, 3, 0, 4, &e), 0);
            if (from == MIG_ABORTING) {
                assert_int_equal(migration_advance(m, "a", 1, 4, MIG_ABORTING, "why", &e), 0);
            } else {
                for (int k = 1; k < 4 && path[k - 1] != (enum mig_phase)from; k++)
                    assert_int_equal(migration_advance(m, "a", 1, 4, path[k], NULL, &e), 0);
            }
            assert_int_equal(m->moves[0].phase, from);
            int rc = migration_advance(m, "a", 1, 4, (enum mig_phase)to, "stop", &e);
            bool want = to >= 1 && to <= MIG_ABORTING && ok[from][to];
            if (want) {
                assert_int_equal(rc, 0);
                assert_int_equal(m->moves[0].phase, to);
            } else {
                expect_error(rc, &e, STRATA_CONFLICT, "cannot go");
                assert_int_equal(m->moves[0].phase, from);
            }
            free(m);
        }
    placement_free(&p);
}

static void test_advance_and_finish_need_the_move(void **state)
{
    (void)state;
    struct placement p;
    table(&p);
    struct migration *m = new_mig();
    struct err e;
    assert_int_equal(migration_start(m, &p, "a", 1, 3, 0, 4, &e), 0);
    expect_error(migration_advance(m, "a", 1, 5, MIG_CATCHING_UP, NULL, &e), &e, STRATA_NOT_FOUND,
                 "move 5");
    expect_error(migration_advance(m, "b", 1, 4, MIG_CATCHING_UP, NULL, &e), &e, STRATA_NOT_FOUND,
                 "not in flight");
    expect_error(migration_finish(m, "a", 1, 4, MIG_DONE, NULL, &e), &e, STRATA_CONFLICT,
                 "cannot finish done from copying");
    expect_error(migration_finish(m, "a", 1, 4, MIG_ABORTED, NULL, &e), &e, STRATA_CONFLICT,
                 "aborted");
    expect_error(migration_finish(m, "a", 1, 4, (enum mig_outcome)7, NULL, &e), &e,
                 STRATA_CONFLICT, "cannot finish");
    assert_int_equal(migration_advance(m, "a", 1, 4, MIG_ABORTING, "target refused", &e), 0);
    assert_string_equal(m->moves[0].message, "target refused");
    assert_int_equal(migration_finish(m, "a", 1, 4, MIG_ABORTED, NULL, &e), 0);
    assert_int_equal(m->n, 0);
    assert_int_equal(m->nrecent, 1);
    const struct mig_recent *r = migration_recent(m, 4);
    assert_non_null(r);
    assert_int_equal(r->outcome, MIG_ABORTED);
    assert_string_equal(r->message, "target refused");
    assert_null(migration_recent(m, 5));
    /* A move of it may start again. */
    assert_int_equal(migration_start(m, &p, "a", 1, 3, 0, 6, &e), 0);
    placement_free(&p);
    free(m);
}

static void finish_one(struct migration *m, const struct placement *p, uint64_t id)
{
    struct err e;
    assert_int_equal(migration_start(m, p, "a", 1, 3, 0, id, &e), 0);
    assert_int_equal(migration_advance(m, "a", 1, id, MIG_CATCHING_UP, NULL, &e), 0);
    assert_int_equal(migration_advance(m, "a", 1, id, MIG_FENCED, NULL, &e), 0);
    assert_int_equal(migration_advance(m, "a", 1, id, MIG_CUTOVER, NULL, &e), 0);
    assert_int_equal(migration_finish(m, "a", 1, id, MIG_DONE, "", &e), 0);
}

static void test_recent_is_bounded_newest_first(void **state)
{
    (void)state;
    struct placement p;
    table(&p);
    struct migration *m = new_mig();
    for (uint64_t id = 1; id <= MIG_RECENT + 5; id++)
        finish_one(m, &p, id);
    assert_int_equal(m->nrecent, MIG_RECENT);
    assert_int_equal(m->recent[0].id, MIG_RECENT + 5);
    assert_int_equal(m->recent[MIG_RECENT - 1].id, 6);
    assert_int_equal(m->recent[0].outcome, MIG_DONE);
    assert_null(migration_recent(m, 5));
    placement_free(&p);
    free(m);
}

static void encode(const struct migration *m, struct buf *b)
{
    buf_init(b);
    assert_int_equal(migration_encode(m, b), 0);
}

/* A record with two moves in flight (one aborting) and two finished. */
static struct migration *sample(void)
{
    struct placement p;
    table(&p);
    struct migration *m = new_mig();
    struct err e;
    finish_one(m, &p, 1);
    assert_int_equal(migration_start(m, &p, "a", 1, 3, 0, 2, &e), 0);
    assert_int_equal(migration_advance(m, "a", 1, 2, MIG_ABORTING, "forks", &e), 0);
    assert_int_equal(migration_finish(m, "a", 1, 2, MIG_ABORTED, NULL, &e), 0);
    assert_int_equal(migration_start(m, &p, "b", 1, 2, 65536, 3, &e), 0);
    assert_int_equal(migration_start(m, &p, "a", 1, 1, 0, 4, &e), 0);
    assert_int_equal(migration_advance(m, "a", 1, 4, MIG_ABORTING, "by request", &e), 0);
    placement_free(&p);
    return m;
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct migration *m = sample(), *d = new_mig();
    struct buf b, b2;
    encode(m, &b);
    struct err e;
    assert_int_equal(migration_decode(d, b.data, b.len, &e), 0);
    encode(d, &b2);
    assert_int_equal(b.len, b2.len);
    assert_memory_equal(b.data, b2.data, b.len);
    assert_int_equal(d->n, 2);
    assert_int_equal(d->nrecent, 2);
    assert_string_equal(d->moves[0].message, "by request");
    assert_int_equal(d->moves[1].chunk, 65536);
    assert_int_equal(d->recent[0].outcome, MIG_ABORTED);
    assert_string_equal(d->recent[0].message, "forks");
    /* The empty record too. */
    migration_init(m);
    buf_close(&b);
    encode(m, &b);
    assert_int_equal(migration_decode(d, b.data, b.len, &e), 0);
    assert_int_equal(d->n + d->nrecent, 0);
    buf_close(&b);
    buf_close(&b2);
    free(m);
    free(d);
}

/* Decode JSON-ish text built with msgpack-c from a format string of our own: we build
 * the hostile records directly with the packer instead. */
static int bw(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

static void pstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* A record {"v":1,"moves":[move],"recent":[]} whose move has field `bad` replaced by
 * `with` (0: nil, 1: a string, 2: a huge integer, 3: zero, 4: an array). */
static void bad_move(struct buf *b, int bad, int with)
{
    buf_init(b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, bw);
    msgpack_pack_map(&pk, 3);
    pstr(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    pstr(&pk, "moves");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 7);
    for (int f = 0; f < 7; f++) {
        if (f == bad) {
            switch (with) {
            case 0: msgpack_pack_nil(&pk); break;
            case 1: pstr(&pk, f == 0 || f == 6 ? "\x01" : "x"); break;
            case 2: msgpack_pack_uint64(&pk, UINT64_MAX); break;
            case 3: msgpack_pack_uint32(&pk, 0); break;
            default: msgpack_pack_array(&pk, 0); break;
            }
            continue;
        }
        static const uint64_t good[] = {0, 2, 3, 9, MIG_FENCED, 4096, 0};
        if (f == 0)
            pstr(&pk, "a");
        else if (f == 6)
            pstr(&pk, "");
        else
            msgpack_pack_uint64(&pk, good[f]);
    }
    pstr(&pk, "recent");
    msgpack_pack_array(&pk, 0);
}

static void test_decode_wrong_types_every_field(void **state)
{
    (void)state;
    struct migration *d = new_mig();
    struct err e;
    struct buf b;
    bad_move(&b, -1, 0);
    assert_int_equal(migration_decode(d, b.data, b.len, &e), 0);
    assert_int_equal(d->moves[0].phase, MIG_FENCED);
    buf_close(&b);
    for (int f = 0; f < 7; f++)
        for (int with = 0; with < 5; with++) {
            bad_move(&b, f, with);
            int rc = migration_decode(d, b.data, b.len, &e);
            /* Still valid: a name or message of a control byte, the largest id. */
            bool valid = (f == 6 && with == 1) || (f == 0 && with == 1) || (f == 3 && with == 2);
            if (valid) {
                assert_int_equal(rc, 0);
            } else {
                if (rc != STRATA_INVALID_ARGUMENT)
                    fail_msg("field %d with %d: %s", f, with, err_name(rc));
                assert_int_equal(d->n, 0);
                assert_non_null(strstr(e.msg, "moves"));
            }
            buf_close(&b);
        }
    free(d);
}

static void decode_fails(const uint8_t *p, size_t n, const char *needle)
{
    struct migration *d = new_mig();
    struct err e;
    err_clear(&e);
    int rc = migration_decode(d, p, n, &e);
    if (rc != STRATA_INVALID_ARGUMENT || (needle && strstr(e.msg, needle) == NULL))
        fail_msg("want INVALID_ARGUMENT '%s', got %s '%s'", needle ? needle : "", err_name(rc),
                 e.msg);
    assert_int_equal(d->n + d->nrecent, 0);
    free(d);
}

static void test_decode_bad_records(void **state)
{
    (void)state;
    decode_fails(NULL, 0, "empty");
    decode_fails((const uint8_t *)"\xc0", 1, "map");
    decode_fails((const uint8_t *)"\xc1", 1, "MessagePack");
    decode_fails((const uint8_t *)"\x80\x80", 2, "trailing");
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, bw);
    /* Wrong version, unknown key, repeated key. */
    msgpack_pack_map(&pk, 3);
    pstr(&pk, "v");
    msgpack_pack_uint32(&pk, 2);
    pstr(&pk, "moves");
    msgpack_pack_array(&pk, 0);
    pstr(&pk, "recent");
    msgpack_pack_array(&pk, 0);
    decode_fails(b.data, b.len, "format version");
    b.len = 0;
    msgpack_pack_map(&pk, 3);
    pstr(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    pstr(&pk, "moves");
    msgpack_pack_array(&pk, 0);
    pstr(&pk, "moves");
    msgpack_pack_array(&pk, 0);
    decode_fails(b.data, b.len, "repeated");
    /* Unsorted / duplicate names, same from and to, bad outcome, oversize lists. */
    struct migration *m = sample();
    struct migration *copy = new_mig();
    memcpy(copy, m, sizeof *m);
    struct mig_move t = copy->moves[0];
    copy->moves[0] = copy->moves[1];
    copy->moves[1] = t;
    b.len = 0;
    assert_int_equal(migration_encode(copy, &b), 0);
    decode_fails(b.data, b.len, "sorted");
    memcpy(copy, m, sizeof *m);
    memcpy(copy->moves[1].name, "a", 2);
    b.len = 0;
    assert_int_equal(migration_encode(copy, &b), 0);
    decode_fails(b.data, b.len, "sorted");
    memcpy(copy, m, sizeof *m);
    copy->moves[0].to = copy->moves[0].from;
    b.len = 0;
    assert_int_equal(migration_encode(copy, &b), 0);
    decode_fails(b.data, b.len, "different shard");
    memcpy(copy, m, sizeof *m);
    copy->recent[0].outcome = (enum mig_outcome)3;
    b.len = 0;
    assert_int_equal(migration_encode(copy, &b), 0);
    decode_fails(b.data, b.len, "outcome");
    memcpy(copy, m, sizeof *m);
    memset(copy->moves[0].message, 'x', MIG_MESSAGE_MAX);
    b.len = 0;
    assert_int_equal(migration_encode(copy, &b), 0);
    struct migration *ok = new_mig();
    struct err e;
    assert_int_equal(migration_decode(ok, b.data, b.len, &e), 0); /* at the limit: fine */
    free(ok);
    b.len = 0;
    msgpack_pack_map(&pk, 3);
    pstr(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    pstr(&pk, "moves");
    msgpack_pack_array(&pk, MIG_MAX_MOVES + 1);
    for (int i = 0; i <= MIG_MAX_MOVES; i++)
        msgpack_pack_nil(&pk);
    pstr(&pk, "recent");
    msgpack_pack_array(&pk, 0);
    decode_fails(b.data, b.len, "at most");
    buf_close(&b);
    free(m);
    free(copy);
}

static void test_decode_every_prefix_and_bit_flips(void **state)
{
    (void)state;
    struct migration *m = sample(), *d = new_mig();
    struct buf b;
    encode(m, &b);
    struct err e;
    for (size_t n = 0; n < b.len; n++)
        decode_fails(b.data, n, NULL);
    uint64_t x = 88172645463325252ull;
    for (int round = 0; round < 20000; round++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t i = (size_t)(x % b.len);
        uint8_t bit = (uint8_t)(1u << ((x >> 32) % 8));
        b.data[i] ^= bit;
        int rc = migration_decode(d, b.data, b.len, &e);
        /* Either rejected cleanly, or a valid record that encodes back to these bytes. */
        if (rc == 0) {
            struct buf again;
            encode(d, &again);
            assert_true(again.len == b.len && memcmp(again.data, b.data, b.len) == 0);
            buf_close(&again);
        } else {
            assert_int_equal(rc, STRATA_INVALID_ARGUMENT);
            assert_int_equal(d->n + d->nrecent, 0);
        }
        b.data[i] ^= bit;
    }
    buf_close(&b);
    free(m);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_checks_the_table),
        cmocka_unit_test(test_start_bounded),
        cmocka_unit_test(test_advance_transition_table),
        cmocka_unit_test(test_advance_and_finish_need_the_move),
        cmocka_unit_test(test_recent_is_bounded_newest_first),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_decode_wrong_types_every_field),
        cmocka_unit_test(test_decode_bad_records),
        cmocka_unit_test(test_decode_every_prefix_and_bit_flips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
