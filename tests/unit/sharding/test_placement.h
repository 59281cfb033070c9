/* Helpers shared by the placement-table tests (test_placement.c: the MessagePack form;
 * test_placement_ops.c: layout, lookups and changes). */
#ifndef STRATA_TEST_PLACEMENT_H
#define STRATA_TEST_PLACEMENT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement.h"

/* ---- helpers --------------------------------------------------------------------------- */

static uint64_t rng_state __attribute__((unused));

static inline uint64_t rnd(void)
{
    /* xorshift64*: deterministic, so any failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static inline void expect_error(int rc, const struct err *e, int code, const char *needle)
{
    if (rc != code)
        fail_msg("got %s (\"%s\"), want %s", err_name(rc), e->msg, err_name(code));
    assert_int_equal(e->code, code);
    if (strstr(e->msg, needle) == NULL)
        fail_msg("message \"%s\" does not mention \"%s\"", e->msg, needle);
}

static inline void set_member(struct pl_node *m, uint64_t id)
{
    memset(m, 0, sizeof *m);
    m->id = id;
    snprintf(m->address, sizeof m->address, "127.0.0.%" PRIu64 ":7000", id % 250 + 1);
}

/* A three-node, three-shard table (ids 1, 2, 3; rf 3). */
static inline void make_three(struct placement *p)
{
    struct pl_node m[3];
    for (int i = 0; i < 3; i++)
        set_member(&m[i], (uint64_t)i + 1);
    struct err e;
    placement_init(p);
    assert_int_equal(placement_initial(p, m, 3, 3, 3, &e), 0);
}

static inline int name_order(const char *a, const char *b)
{
    size_t al = strlen(a), bl = strlen(b);
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al < bl ? -1 : al > bl);
}

/* Every invariant placement.h promises, checked independently of the decoder. */
static inline void assert_valid(const struct placement *p)
{
    assert_true(p->rf >= 1 && p->rf <= PL_MAX_REPLICAS);
    assert_true(p->nnodes <= PL_MAX_NODES && p->nshards <= PL_MAX_SHARDS);
    for (size_t i = 0; i < p->nnodes; i++) {
        assert_true(p->nodes[i].id > 0);
        if (i > 0)
            assert_true(p->nodes[i - 1].id < p->nodes[i].id);
        size_t al = strnlen(p->nodes[i].address, sizeof p->nodes[i].address);
        assert_true(al >= 1 && al <= PL_ADDRESS_MAX);
        assert_true(p->nodes[i].state == PL_NODE_ACTIVE || p->nodes[i].state == PL_NODE_DRAINING);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(p->nodes[j].address, p->nodes[i].address);
    }
    for (size_t i = 0; i < p->nshards; i++) {
        const struct pl_shard *s = &p->shards[i];
        assert_true(s->id >= 1 && s->id <= PL_MAX_SHARDS && s->epoch >= 1);
        if (i > 0)
            assert_true(p->shards[i - 1].id < s->id);
        assert_true(s->nreplicas >= 1 && s->nreplicas <= PL_MAX_REPLICAS);
        for (uint32_t r = 0; r < s->nreplicas; r++) {
            assert_non_null(placement_node(p, s->replicas[r]));
            for (uint32_t q = 0; q < r; q++)
                assert_true(s->replicas[q] != s->replicas[r]);
        }
    }
    assert_true(p->nbranches <= p->cap);
    for (size_t i = 0; i < p->nbranches; i++) {
        const struct pl_branch *b = &p->branches[i];
        size_t len = strlen(b->name);
        assert_true(len >= 1 && len <= PL_MAX_BRANCH_NAME && b->epoch >= 1);
        assert_non_null(placement_shard(p, b->shard));
        if (i > 0)
            assert_true(name_order(p->branches[i - 1].name, b->name) < 0);
    }
    const struct pl_branch *d = placement_branch(p, PL_DEFAULT_BRANCH, 7);
    assert_non_null(d);
    assert_int_equal(d->shard, 1);
}

static inline void assert_tables_equal(const struct placement *a, const struct placement *b)
{
    assert_int_equal(a->rf, b->rf);
    assert_int_equal(a->nnodes, b->nnodes);
    for (size_t i = 0; i < a->nnodes; i++) {
        assert_int_equal(a->nodes[i].id, b->nodes[i].id);
        assert_string_equal(a->nodes[i].address, b->nodes[i].address);
        assert_int_equal(a->nodes[i].state, b->nodes[i].state);
    }
    assert_int_equal(a->nshards, b->nshards);
    for (size_t i = 0; i < a->nshards; i++) {
        assert_int_equal(a->shards[i].id, b->shards[i].id);
        assert_int_equal(a->shards[i].epoch, b->shards[i].epoch);
        assert_int_equal(a->shards[i].nreplicas, b->shards[i].nreplicas);
        assert_memory_equal(a->shards[i].replicas, b->shards[i].replicas,
                            a->shards[i].nreplicas * sizeof(uint64_t));
    }
    assert_int_equal(a->nbranches, b->nbranches);
    for (size_t i = 0; i < a->nbranches; i++) {
        assert_string_equal(a->branches[i].name, b->branches[i].name);
        assert_int_equal(a->branches[i].shard, b->branches[i].shard);
        assert_int_equal(a->branches[i].epoch, b->branches[i].epoch);
    }
}

/* Encode p, decode the bytes, and require the same table. */
static inline void assert_roundtrip(const struct placement *p)
{
    struct buf b;
    buf_init(&b);
    assert_int_equal(placement_encode(p, &b), 0);
    struct placement q;
    struct err e;
    placement_init(&q);
    int rc = placement_decode(&q, b.data, b.len, &e);
    if (rc)
        fail_msg("decode of an encoded table failed: %s", e.msg);
    assert_tables_equal(p, &q);
    placement_free(&q);
    buf_close(&b);
}

static inline bool is_empty(const struct placement *p)
{
    return p->nnodes == 0 && p->nshards == 0 && p->nbranches == 0 && p->branches == NULL &&
           p->epoch == 0 && p->rf == 0;
}


#endif
