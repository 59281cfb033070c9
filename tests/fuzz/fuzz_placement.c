/* libFuzzer target for the placement table (sharding/placement.h): its encoding arrives
 * from the meta group's log and snapshots and from other nodes, so placement_decode
 * trusts nothing it reads.
 *
 * Checked: a refused input has PROTOCOL_ERROR, a message and leaves the table empty; an
 * accepted one is a valid table (sorted, unique, every reference resolves, "default" on
 * shard 1) whose encoding decodes to the same table and encodes to the same bytes. Then a
 * sequence of changes picked by a hash of the input (assign, unassign, move, add, drain,
 * remove, set_replicas, with good and bad arguments) runs on that table (or, when the
 * input was refused, on an initial layout): each returns a code it is allowed to, a
 * refused change leaves the table byte for byte as it was, and the table stays valid.
 * Any crash, sanitizer report or broken invariant (abort) is a finding.
 *
 * Built with -DFUZZ_GEN (by gcc, as fuzz_gen_placement) the same file writes the seed
 * corpus tests/fuzz/corpus/placement/. Usage: fuzz_gen_placement DIR */
#include "fuzz_input.h"
#include "placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "CHECK failed: %s (line %d)\n", #cond, __LINE__);                      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#ifndef FUZZ_GEN

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* msgpack-c answers a too-big declared container count by failing malloc; under ASan
 * that aborts unless allocations may return NULL. Overridable via ASAN_OPTIONS. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

static uint64_t rng;

static uint64_t next_rand(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ull;
}

static int name_order(const char *a, const char *b)
{
    size_t al = strlen(a), bl = strlen(b);
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al < bl ? -1 : al > bl);
}

static void check_valid(const struct placement *p)
{
    CHECK(p->rf >= 1 && p->rf <= PL_MAX_REPLICAS);
    CHECK(p->nnodes >= 1 && p->nnodes <= PL_MAX_NODES);
    CHECK(p->nshards >= 1 && p->nshards <= PL_MAX_SHARDS);
    for (size_t i = 0; i < p->nnodes; i++) {
        const struct pl_node *n = &p->nodes[i];
        CHECK(n->id > 0 && (i == 0 || p->nodes[i - 1].id < n->id));
        size_t al = strnlen(n->address, sizeof n->address);
        CHECK(al >= 1 && al <= PL_ADDRESS_MAX);
        CHECK(n->state == PL_NODE_ACTIVE || n->state == PL_NODE_DRAINING);
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(p->nodes[j].address, n->address) != 0);
        CHECK(placement_node(p, n->id) == n);
    }
    for (size_t i = 0; i < p->nshards; i++) {
        const struct pl_shard *s = &p->shards[i];
        CHECK(s->id >= 1 && s->id <= PL_MAX_SHARDS && s->epoch >= 1);
        CHECK(i == 0 || p->shards[i - 1].id < s->id);
        CHECK(s->nreplicas >= 1 && s->nreplicas <= PL_MAX_REPLICAS);
        for (uint32_t r = 0; r < s->nreplicas; r++) {
            CHECK(placement_node(p, s->replicas[r]) != NULL);
            for (uint32_t q = 0; q < r; q++)
                CHECK(s->replicas[q] != s->replicas[r]);
        }
        CHECK(placement_shard(p, s->id) == s);
    }
    CHECK(p->nbranches >= 1 && p->nbranches <= p->cap);
    for (size_t i = 0; i < p->nbranches; i++) {
        const struct pl_branch *b = &p->branches[i];
        size_t len = strlen(b->name);
        CHECK(len >= 1 && len <= PL_MAX_BRANCH_NAME && b->epoch >= 1);
        CHECK(placement_shard(p, b->shard) != NULL);
        CHECK(i == 0 || name_order(p->branches[i - 1].name, b->name) < 0);
        CHECK(placement_branch(p, b->name, len) == b);
    }
    const struct pl_branch *d = placement_branch(p, PL_DEFAULT_BRANCH, 7);
    CHECK(d != NULL && d->shard == 1);
    size_t counts[PL_MAX_SHARDS], total = 0;
    placement_branch_counts(p, counts);
    for (size_t i = 0; i < p->nshards; i++)
        total += counts[i];
    CHECK(total == p->nbranches);
    uint32_t least = placement_least_loaded(p);
    for (size_t i = 0; i < p->nshards; i++) {
        if (p->shards[i].id == least)
            for (size_t j = 0; j < p->nshards; j++)
                CHECK(counts[i] < counts[j] || (counts[i] == counts[j] && i <= j));
    }
}

/* Encode, decode, compare, and require the same bytes from the decoded table. */
static void check_roundtrip(const struct placement *p, struct buf *enc)
{
    buf_reset(enc);
    CHECK(placement_encode(p, enc) == 0);
    struct placement q;
    struct err e;
    placement_init(&q);
    CHECK(placement_decode(&q, enc->data, enc->len, &e) == 0);
    CHECK(q.rf == p->rf && q.nnodes == p->nnodes && q.nshards == p->nshards &&
          q.nbranches == p->nbranches);
    CHECK(memcmp(q.nodes, p->nodes, p->nnodes * sizeof p->nodes[0]) == 0);
    for (size_t i = 0; i < p->nshards; i++) {
        CHECK(q.shards[i].id == p->shards[i].id && q.shards[i].epoch == p->shards[i].epoch);
        CHECK(q.shards[i].nreplicas == p->shards[i].nreplicas);
        CHECK(memcmp(q.shards[i].replicas, p->shards[i].replicas,
                     p->shards[i].nreplicas * sizeof(uint64_t)) == 0);
    }
    for (size_t i = 0; i < p->nbranches; i++) {
        CHECK(strcmp(q.branches[i].name, p->branches[i].name) == 0);
        CHECK(q.branches[i].shard == p->branches[i].shard);
        CHECK(q.branches[i].epoch == p->branches[i].epoch);
    }
    struct buf again;
    buf_init(&again);
    CHECK(placement_encode(&q, &again) == 0);
    CHECK(again.len == enc->len && memcmp(again.data, enc->data, enc->len) == 0);
    buf_close(&again);
    placement_free(&q);
}

/* A branch name: one from the table, a near miss of one, or a fixed (often bad) one. */
static size_t pick_name(const struct placement *p, char *out)
{
    static const char *const fixed[] = {"default", "a", "ab", "b", "\xff", "z9", "x\0y", ""};
    static const size_t fixed_len[] = {7, 1, 2, 1, 1, 2, 3, 0};
    uint64_t r = next_rand();
    switch (r % 4) {
    case 0:
    case 1: {
        const char *n = p->branches[(r >> 8) % p->nbranches].name;
        size_t len = strlen(n);
        memcpy(out, n, len);
        if (r % 4 == 1 && len < PL_MAX_BRANCH_NAME + 1)
            out[len++] = (char)('a' + (r >> 40) % 3);
        return len;
    }
    case 2: {
        size_t k = (r >> 8) % 8;
        memcpy(out, fixed[k], fixed_len[k]);
        return fixed_len[k];
    }
    default: {
        size_t len = 120 + (r >> 8) % 10; /* around the 128-byte limit */
        memset(out, 'q', len);
        return len;
    }
    }
}

static uint32_t pick_shard(const struct placement *p)
{
    uint64_t r = next_rand();
    if (r % 4 == 0)
        return (uint32_t)((r >> 8) % (PL_MAX_SHARDS + 2));
    return p->shards[(r >> 8) % p->nshards].id;
}

static uint64_t pick_node(const struct placement *p)
{
    uint64_t r = next_rand();
    if (r % 4 == 0)
        return (r >> 8) % 8;
    return p->nodes[(r >> 8) % p->nnodes].id;
}

/* One change with arguments from the hash; returns its code. */
static int one_change(struct placement *p, struct err *e)
{
    char name[PL_MAX_BRANCH_NAME + 2];
    size_t len;
    uint64_t r = next_rand();
    switch (r % 7) {
    case 0:
        len = pick_name(p, name);
        return placement_assign(p, name, len,
                                (r >> 8) % 2 ? placement_least_loaded(p) : pick_shard(p), e);
    case 1:
        len = pick_name(p, name);
        return placement_unassign(p, name, len, e);
    case 2:
        len = pick_name(p, name);
        return placement_move(p, name, len, pick_shard(p), e);
    case 3: {
        char addr[32];
        snprintf(addr, sizeof addr, "127.0.0.%u:%u", (unsigned)((r >> 8) % 4),
                 (unsigned)((r >> 16) % 3));
        return placement_add_node(p, (r >> 24) % 12, (r >> 32) % 16 ? addr : "", e);
    }
    case 4:
        return placement_drain_node(p, pick_node(p), e);
    case 5:
        return placement_remove_node(p, pick_node(p), e);
    default: {
        uint64_t ids[PL_MAX_REPLICAS + 1];
        size_t n = (r >> 8) % (PL_MAX_REPLICAS + 2);
        for (size_t i = 0; i < n; i++)
            ids[i] = pick_node(p);
        return placement_set_replicas(p, pick_shard(p), ids, n, e);
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Declared container counts kept to what the input can hold (fuzz_input.h; the
     * 32-bit case has its unit test, test_decode_huge_declared_count). */
    uint8_t *in = fuzz_input_copy(data, size);
    CHECK(in != NULL);

    struct placement p;
    struct err e;
    struct buf enc, before;
    buf_init(&enc);
    buf_init(&before);
    placement_init(&p);
    memset(&e, 0, sizeof e);
    int rc = placement_decode(&p, in, size, &e);
    if (rc != 0) {
        CHECK(rc == STRATA_PROTOCOL_ERROR && e.code == rc && e.msg[0] != '\0');
        CHECK(p.nnodes == 0 && p.nshards == 0 && p.nbranches == 0 && p.branches == NULL);
        /* Exercise the changes anyway, on an initial layout shaped by the input. */
        struct pl_node m[5];
        size_t n = 1 + (size ? in[0] % 5 : 0);
        for (size_t i = 0; i < n; i++) {
            memset(&m[i], 0, sizeof m[i]);
            m[i].id = 5 - i;
            snprintf(m[i].address, sizeof m[i].address, "10.0.0.%zu:7000", i);
        }
        uint32_t nshards = 1 + (size > 1 ? in[1] % 9 : 0), rf = 1 + (size > 2 ? in[2] % 5 : 2);
        CHECK(placement_initial(&p, m, n, nshards, rf, &e) == 0);
    }
    p.epoch = 0;
    check_valid(&p);
    check_roundtrip(&p, &enc);

    rng = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < size; i++)
        rng = (rng ^ in[i]) * 0x100000001b3ull;
    rng |= 1;
    /* `before` holds the table's encoding before each change. Each step encodes once:
     * a refused change must leave exactly those bytes, and an accepted change's encoding
     * is `before` for the next step (encoding is most of the cost of an input). */
    buf_reset(&before);
    CHECK(placement_encode(&p, &before) == 0);
    for (int step = 0; step < 24; step++) {
        memset(&e, 0, sizeof e);
        rc = one_change(&p, &e);
        buf_reset(&enc);
        CHECK(placement_encode(&p, &enc) == 0);
        if (rc != 0) {
            CHECK(rc == STRATA_INVALID_ARGUMENT || rc == STRATA_NOT_FOUND ||
                  rc == STRATA_ALREADY_EXISTS);
            CHECK(e.code == rc && e.msg[0] != '\0');
            CHECK(enc.len == before.len && memcmp(enc.data, before.data, enc.len) == 0);
        } else {
            struct buf t = before;
            before = enc;
            enc = t;
        }
        check_valid(&p);
    }
    check_roundtrip(&p, &enc);

    /* A deep copy is equal and independent. */
    struct placement c;
    placement_init(&c);
    CHECK(placement_copy(&c, &p) == 0);
    placement_free(&p);
    check_valid(&c);
    placement_free(&c);
    buf_close(&enc);
    buf_close(&before);
    free(in);
    return 0;
}

#else /* FUZZ_GEN: write the seed corpus */

static int save(const char *dir, const char *name, const struct placement *p)
{
    struct buf b;
    buf_init(&b);
    CHECK(placement_encode(p, &b) == 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int bad = 0;
    if (f == NULL || fwrite(b.data, 1, b.len, f) != b.len || fclose(f) != 0) {
        perror(path);
        bad = 1;
    }
    buf_close(&b);
    return bad;
}

/* `host` + id + ":" + port: distinct addresses in a few shapes. */
static void member(struct pl_node *m, uint64_t id, const char *host, const char *port)
{
    memset(m, 0, sizeof *m);
    m->id = id;
    snprintf(m->address, sizeof m->address, "%s%u%s", host, (unsigned)id, port);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    struct placement p;
    struct err e;
    struct pl_node m[PL_MAX_NODES];
    placement_init(&p);
    int bad = 0;

    /* The smallest table: one node, one shard, "default". */
    member(&m[0], 1, "127.0.0.", ":9876");
    CHECK(placement_initial(&p, m, 1, 1, 3, &e) == 0);
    bad |= save(argv[1], "one_node.bin", &p);

    /* Three nodes, three shards, a few branches, one of them moved. */
    for (unsigned i = 0; i < 3; i++)
        member(&m[i], i + 1, "127.0.0.", ":9876");
    CHECK(placement_initial(&p, m, 3, 3, 3, &e) == 0);
    CHECK(placement_assign(&p, "agent-1", 7, 2, &e) == 0);
    CHECK(placement_assign(&p, "agent-1/try", 11, 2, &e) == 0);
    CHECK(placement_assign(&p, "agent-2", 7, 3, &e) == 0);
    CHECK(placement_move(&p, "agent-2", 7, 1, &e) == 0);
    bad |= save(argv[1], "three_nodes.bin", &p);

    /* Five nodes and nine shards mid-drain: node 3 draining and replaced on one shard, a
     * sixth node added. */
    for (unsigned i = 0; i < 5; i++)
        member(&m[i], 10 * (i + 1), "node-", ":7000");
    CHECK(placement_initial(&p, m, 5, 9, 3, &e) == 0);
    CHECK(placement_add_node(&p, 60, "node-60:7000", &e) == 0);
    CHECK(placement_drain_node(&p, 30, &e) == 0);
    const uint64_t reps[] = {60, 10, 20};
    CHECK(placement_set_replicas(&p, 1, reps, 3, &e) == 0);
    char name[16];
    for (int i = 0; i < 12; i++) {
        int n = snprintf(name, sizeof name, "b%02d", i);
        CHECK(placement_assign(&p, name, (size_t)n, placement_least_loaded(&p), &e) == 0);
    }
    bad |= save(argv[1], "draining.bin", &p);

    /* The limits: 64 nodes, 256 shards, 7 replicas, a 128-byte name. */
    for (unsigned i = 0; i < PL_MAX_NODES; i++)
        member(&m[i], i + 1, "10.0.1.", ":7000");
    CHECK(placement_initial(&p, m, PL_MAX_NODES, PL_MAX_SHARDS, PL_MAX_REPLICAS, &e) == 0);
    char longname[PL_MAX_BRANCH_NAME];
    memset(longname, 'x', sizeof longname);
    CHECK(placement_assign(&p, longname, sizeof longname, PL_MAX_SHARDS, &e) == 0);
    bad |= save(argv[1], "limits.bin", &p);

    placement_free(&p);
    return bad;
}
#endif
