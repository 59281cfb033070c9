/* Linearizability of one register: a polynomial pre-check for the common flaws, and the
 * complete search (Wing & Gong, Lowe's just-in-time linearization, a state cache). */
#include "lincheck.h"

#include <assert.h>
#include <openssl/lhash.h>
#include <stdlib.h>
#include <string.h>

#define NONE SIZE_MAX

/* ---- The search ----------------------------------------------------------------------
 *
 * The ops' calls and returns are one list sorted by time (a call before a return at
 * the same t: such ops count as concurrent, which can only accept more histories). An op
 * may be linearized next iff its call comes before the first return still in the list:
 * every op invoked before the earliest pending completion. Linearizing an op takes its
 * call and return out of the list ("lift"); backtracking puts them back ("unlift"), the
 * two always in stack order, so the list needs no copy. Ops of unknown outcome have no
 * return entry: nothing forces them in, and the search succeeds once every op with a
 * known outcome is placed, leaving the rest out.
 *
 * The cache holds each (set of linearized ops, register state) reached; reaching one
 * again cannot lead anywhere new, which makes the search polynomial in the number of
 * such configurations rather than in orderings. Sets are bitsets; a Zobrist fingerprint
 * (one random word per op, xor-ed in and out as ops are placed and removed) is the key of
 * the cache, a hash table (libcrypto's LHASH), before the full bitset compare. */

struct event_entry {
    int64_t t;
    size_t op;
    bool is_call;
    size_t match; /* call: its return entry, or NONE for an op of unknown outcome */
    size_t prev, next;
};

struct state_node {
    uint64_t fp;
    uint32_t state;
    uint32_t nwords;
    uint64_t bits[];
};

struct frame {
    size_t entry;   /* the call entry lifted */
    uint32_t state; /* register state before it */
};

struct search {
    const struct lin_op *ops;
    size_t n;
    struct event_entry *ent; /* ent[0] is the list head */
    struct frame *stack;
    size_t depth;
    uint64_t *bits;
    uint32_t nwords;
    uint64_t *zob;
    uint64_t fp;
    OPENSSL_LHASH *cache; /* of struct state_node */
    struct state_node *spare;
    uint64_t states, bytes, node_bytes;
};

static int cmp_node(const void *a, const void *b)
{
    const struct state_node *x = a, *y = b;
    if (x->fp != y->fp || x->state != y->state)
        return 1;
    return memcmp(x->bits, y->bits, (size_t)x->nwords * sizeof x->bits[0]);
}

static unsigned long node_key(const void *a)
{
    const struct state_node *x = a;
    return (unsigned long)(x->fp + x->state);
}

/* Add the current (bitset, state) to the cache. *added = false if it was there. */
static int cache_add(struct search *s, uint32_t state, bool *added)
{
    if (s->spare == NULL) {
        s->spare = sm_malloc(s->node_bytes);
        if (s->spare == NULL)
            return STRATA_OUT_OF_MEMORY;
    }
    struct state_node *k = s->spare;
    k->fp = s->fp;
    k->state = state;
    k->nwords = s->nwords;
    memcpy(k->bits, s->bits, (size_t)s->nwords * sizeof s->bits[0]);
    *added = OPENSSL_LH_retrieve(s->cache, k) == NULL;
    if (*added) {
        int errors = OPENSSL_LH_error(s->cache);
        OPENSSL_LH_insert(s->cache, k);
        if (OPENSSL_LH_error(s->cache) != errors)
            return STRATA_OUT_OF_MEMORY;
        s->spare = NULL;
        s->states++;
        /* The node, and about the table's own node plus allocator headers. */
        s->bytes += s->node_bytes + 48;
    }
    return 0;
}

/* The register's transition: may `op` take effect in `state`, and what is left? */
static bool step(const struct lin_op *op, uint32_t state, uint32_t *next)
{
    switch (op->kind) {
    case LIN_READ:
        *next = op->value; /* from LIN_ANY, the read tells us what the value was */
        return state == LIN_ANY || state == op->value;
    case LIN_WRITE:
        *next = op->value;
        return true;
    case LIN_CAS:
        *next = op->value;
        return state == LIN_ANY || state == op->expect;
    case LIN_HAVOC:
        *next = LIN_ANY;
        return true;
    }
    return false;
}

static void unlink_entry(struct event_entry *ent, size_t i)
{
    ent[ent[i].prev].next = ent[i].next;
    if (ent[i].next != NONE)
        ent[ent[i].next].prev = ent[i].prev;
}

static void relink_entry(struct event_entry *ent, size_t i)
{
    ent[ent[i].prev].next = i;
    if (ent[i].next != NONE)
        ent[ent[i].next].prev = i;
}

static void lift(struct event_entry *ent, size_t call)
{
    unlink_entry(ent, call);
    if (ent[call].match != NONE)
        unlink_entry(ent, ent[call].match);
}

static void unlift(struct event_entry *ent, size_t call)
{
    if (ent[call].match != NONE)
        relink_entry(ent, ent[call].match);
    relink_entry(ent, call);
}

static int cmp_entry(const void *a, const void *b)
{
    const struct event_entry *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    if (x->is_call != y->is_call)
        return x->is_call ? -1 : 1;
    return x->op < y->op ? -1 : x->op > y->op;
}

/* Build the sorted, linked list of calls and returns. ent[0] is the head. */
static int build_list(struct search *s, size_t *n_definite)
{
    size_t m = 0;
    struct event_entry *e = sm_calloc(2 * s->n + 1, sizeof *e);
    size_t *call_of = sm_malloc((s->n + 1) * sizeof *call_of);
    if (e == NULL || call_of == NULL) {
        sm_free(e);
        sm_free(call_of);
        return STRATA_OUT_OF_MEMORY;
    }
    *n_definite = 0;
    for (size_t i = 0; i < s->n; i++) {
        e[1 + m++] = (struct event_entry){.t = s->ops[i].call, .op = i, .is_call = true};
        if (s->ops[i].ret != LIN_T_INF) {
            e[1 + m++] = (struct event_entry){.t = s->ops[i].ret, .op = i, .is_call = false};
            (*n_definite)++;
        }
    }
    qsort(e + 1, m, sizeof *e, cmp_entry);
    for (size_t i = 1; i <= m; i++) {
        e[i].match = NONE;
        if (e[i].is_call)
            call_of[e[i].op] = i;
        else
            e[call_of[e[i].op]].match = i;
        e[i].prev = i - 1;
        e[i].next = i < m ? i + 1 : NONE;
    }
    e[0].next = m > 0 ? 1 : NONE;
    e[0].prev = NONE;
    sm_free(call_of);
    s->ent = e;
    return 0;
}

static void set_bit(uint64_t *bits, size_t i)
{
    bits[i / 64] |= UINT64_C(1) << (i % 64);
}

static void clear_bit(uint64_t *bits, size_t i)
{
    bits[i / 64] &= ~(UINT64_C(1) << (i % 64));
}

/* Keep the deepest partial linearization seen at a dead end, for the report. */
static int note_dead_end(struct search *s, struct lin_result *res, size_t stuck, uint32_t state)
{
    if (res->prefix != NULL && s->depth <= res->prefix_len)
        return 0;
    size_t *p = sm_realloc(res->prefix, (s->depth + 1) * sizeof *p);
    if (p == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < s->depth; i++)
        p[i] = s->ent[s->stack[i].entry].op;
    res->prefix = p;
    res->prefix_len = s->depth;
    res->stuck = stuck;
    res->stuck_state = state;
    return 0;
}

static void search_free(struct search *s)
{
    if (s->cache != NULL) {
        OPENSSL_LH_doall(s->cache, sm_free);
        OPENSSL_LH_free(s->cache);
    }
    sm_free(s->spare);
    sm_free(s->ent);
    sm_free(s->stack);
    sm_free(s->bits);
    sm_free(s->zob);
}

void lin_result_close(struct lin_result *res)
{
    sm_free(res->prefix);
    res->prefix = NULL;
    res->prefix_len = 0;
}

int lin_check(const struct lin_op *ops, size_t n, uint32_t initial,
              const struct lin_limits *lim, struct lin_result *res)
{
    struct search s = {.ops = ops, .n = n};
    size_t n_definite, done = 0;
    uint32_t state = initial;
    int rc;

    memset(res, 0, sizeof *res);
    res->stuck = NONE;
    s.nwords = (uint32_t)((n + 63) / 64);
    s.node_bytes = sizeof(struct state_node) + (size_t)s.nwords * sizeof(uint64_t);
    s.stack = sm_malloc((n + 1) * sizeof *s.stack);
    s.bits = sm_calloc(s.nwords + 1, sizeof *s.bits);
    s.zob = sm_malloc((n + 1) * sizeof *s.zob);
    s.cache = OPENSSL_LH_new(node_key, cmp_node);
    if (s.stack == NULL || s.bits == NULL || s.zob == NULL || s.cache == NULL) {
        rc = STRATA_OUT_OF_MEMORY;
        goto out;
    }
    /* A fixed seed: the same history always takes the same path through the search. */
    unsigned short xsubi[3] = {0x5eed, 0x11c4, 0x2024};
    for (size_t i = 0; i < n; i++)
        s.zob[i] = ((uint64_t)(uint32_t)jrand48(xsubi) << 32) | (uint32_t)jrand48(xsubi);
    if ((rc = build_list(&s, &n_definite)) != 0)
        goto out;

    size_t e = s.ent[0].next;
    uint64_t iter = 0;
    while (done < n_definite) {
        if ((++iter & 1023) == 0 && lim->deadline_ns != 0 && clock_mono_ns() > lim->deadline_ns) {
            res->verdict = LIN_UNKNOWN;
            res->unknown_why = "time budget exceeded";
            goto done;
        }
        /* Some op of known outcome is unplaced, so its return is in the list ahead. */
        assert(e != NONE);
        struct event_entry *en = &s.ent[e];
        if (en->is_call) {
            uint32_t next;
            bool added = false;
            if (step(&ops[en->op], state, &next)) {
                set_bit(s.bits, en->op);
                s.fp ^= s.zob[en->op];
                if ((rc = cache_add(&s, next, &added)) != 0)
                    goto out;
                if (!added) {
                    clear_bit(s.bits, en->op);
                    s.fp ^= s.zob[en->op];
                }
            }
            if (added) {
                if ((lim->max_states != 0 && s.states > lim->max_states) ||
                    (lim->max_bytes != 0 && s.bytes > lim->max_bytes)) {
                    res->verdict = LIN_UNKNOWN;
                    res->unknown_why = s.states > lim->max_states && lim->max_states != 0
                                           ? "state limit exceeded"
                                           : "memory limit exceeded";
                    goto done;
                }
                s.stack[s.depth++] = (struct frame){.entry = e, .state = state};
                state = next;
                lift(s.ent, e);
                if (en->match != NONE)
                    done++;
                e = s.ent[0].next;
            } else {
                e = en->next;
            }
            continue;
        }
        /* A return: every op that could come before it has been tried here. Back up. */
        if ((rc = note_dead_end(&s, res, en->op, state)) != 0)
            goto out;
        if (s.depth == 0) {
            res->verdict = LIN_VIOLATION;
            goto done;
        }
        struct frame f = s.stack[--s.depth];
        struct event_entry *c = &s.ent[f.entry];
        state = f.state;
        unlift(s.ent, f.entry);
        clear_bit(s.bits, c->op);
        s.fp ^= s.zob[c->op];
        if (c->match != NONE)
            done--;
        e = c->next;
    }
    res->verdict = LIN_OK;
done:
    if (res->verdict != LIN_VIOLATION)
        lin_result_close(res);
    res->states = s.states;
    rc = 0;
out:
    if (rc != 0)
        lin_result_close(res);
    search_free(&s);
    return rc;
}

/* ---- The pre-check --------------------------------------------------------------------
 *
 * With unique written values and no way back to null, a value once overwritten never
 * returns. So a read of v is impossible if some op that surely took effect after v's
 * write (invoked after the write completed) and surely before the read (completed before
 * the read was invoked) left the register holding something else: a write, or a read of
 * another value. Suffix minima over ops sorted by call answer "the earliest completion
 * among ops invoked after t, leaving a value other than v" in O(log n). */

struct best {
    int64_t ret;
    uint32_t post;
    size_t op;
};

struct best2 {
    struct best a; /* earliest completion */
    struct best b; /* earliest completion whose value differs from a's */
};

static const struct best no_best = {.ret = LIN_T_INF, .post = LIN_ANY, .op = NONE};

static void best_add(struct best2 *b, struct best x)
{
    if (x.ret < b->a.ret) {
        if (x.post != b->a.post)
            b->b = b->a;
        b->a = x;
    } else if (x.post != b->a.post && x.ret < b->b.ret) {
        b->b = x;
    }
}

struct pc {
    const struct lin_op *ops;
    size_t *by_call; /* definite ops by call */
    size_t n_def;
    struct best2 *suffix;
    size_t *writers; /* write/cas ops by value */
    size_t n_writers;
};

static int cmp_by_call(const void *a, const void *b, void *arg)
{
    const struct lin_op *ops = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (ops[i].call != ops[j].call)
        return ops[i].call < ops[j].call ? -1 : 1;
    return i < j ? -1 : i > j;
}

static int cmp_by_value(const void *a, const void *b, void *arg)
{
    const struct lin_op *ops = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (ops[i].value != ops[j].value)
        return ops[i].value < ops[j].value ? -1 : 1;
    return i < j ? -1 : i > j;
}

static int cmp_by_expect(const void *a, const void *b, void *arg)
{
    const struct lin_op *ops = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (ops[i].expect != ops[j].expect)
        return ops[i].expect < ops[j].expect ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* The writer of `value`, or NONE. */
static size_t find_writer(const struct pc *p, uint32_t value)
{
    size_t lo = 0, hi = p->n_writers;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->ops[p->writers[mid]].value < value)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < p->n_writers && p->ops[p->writers[lo]].value == value ? p->writers[lo] : NONE;
}

/* The earliest-completing definite op invoked after t that leaves a value other than v. */
static struct best evidence_after(const struct pc *p, int64_t t, uint32_t v)
{
    size_t lo = 0, hi = p->n_def;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->ops[p->by_call[mid]].call <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    const struct best2 *b = &p->suffix[lo];
    return b->a.post != v ? b->a : b->b;
}

/* Check one read of `v` by op r (a read, or an acknowledged cas expecting v). */
static bool check_read(const struct pc *p, size_t r, uint32_t v, struct lin_finding *out)
{
    const struct lin_op *op = &p->ops[r];
    if (v == HIST_NULL) {
        /* Nothing writes null: after any op that left a value, null is gone for good. */
        struct best ev = evidence_after(p, INT64_MIN, HIST_NULL);
        if (ev.op != NONE && ev.ret < op->call) {
            *out = (struct lin_finding){LIN_FLAW_STALE_NULL, r, ev.op, NONE};
            return true;
        }
        return false;
    }
    size_t w = find_writer(p, v);
    if (w == NONE) {
        *out = (struct lin_finding){LIN_FLAW_NEVER_WRITTEN, r, NONE, NONE};
        return true;
    }
    if (p->ops[w].call > op->ret) {
        *out = (struct lin_finding){LIN_FLAW_FUTURE_READ, r, w, w};
        return true;
    }
    if (p->ops[w].ret == LIN_T_INF)
        return false;
    struct best ev = evidence_after(p, p->ops[w].ret, v);
    if (ev.op != NONE && ev.ret < op->call) {
        *out = (struct lin_finding){LIN_FLAW_STALE_READ, r, ev.op, w};
        return true;
    }
    return false;
}

int lin_precheck(const struct lin_op *ops, size_t n, struct lin_finding *out)
{
    struct pc p = {.ops = ops};
    size_t *cas = NULL, n_cas = 0;
    int rc = STRATA_OUT_OF_MEMORY;

    *out = (struct lin_finding){LIN_FLAW_NONE, NONE, NONE, NONE};
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind == LIN_HAVOC)
            return 0; /* values may come back: none of the rules below hold */
    p.by_call = sm_malloc((n + 1) * sizeof *p.by_call);
    p.writers = sm_malloc((n + 1) * sizeof *p.writers);
    cas = sm_malloc((n + 1) * sizeof *cas);
    p.suffix = sm_malloc((n + 1) * sizeof *p.suffix);
    if (p.by_call == NULL || p.writers == NULL || cas == NULL || p.suffix == NULL)
        goto out;

    for (size_t i = 0; i < n; i++) {
        if (ops[i].kind == LIN_WRITE || ops[i].kind == LIN_CAS)
            p.writers[p.n_writers++] = i;
        if (ops[i].kind == LIN_CAS && ops[i].ret != LIN_T_INF)
            cas[n_cas++] = i;
        if (ops[i].ret != LIN_T_INF)
            p.by_call[p.n_def++] = i;
    }
    qsort_r(p.writers, p.n_writers, sizeof *p.writers, cmp_by_value, (void *)ops);
    qsort_r(cas, n_cas, sizeof *cas, cmp_by_expect, (void *)ops);
    qsort_r(p.by_call, p.n_def, sizeof *p.by_call, cmp_by_call, (void *)ops);

    rc = 0;
    for (size_t i = 1; i < p.n_writers; i++) {
        if (ops[p.writers[i]].value == ops[p.writers[i - 1]].value) {
            *out = (struct lin_finding){LIN_FLAW_DUP_VALUE, p.writers[i - 1], p.writers[i],
                                        NONE};
            goto out;
        }
    }
    /* A value is replaced at most once, so two cas from it cannot both have applied. */
    for (size_t i = 1; i < n_cas; i++) {
        if (ops[cas[i]].expect == ops[cas[i - 1]].expect) {
            *out = (struct lin_finding){LIN_FLAW_CAS_TWICE, cas[i - 1], cas[i], NONE};
            goto out;
        }
    }
    p.suffix[p.n_def] = (struct best2){no_best, no_best};
    for (size_t i = p.n_def; i-- > 0;) {
        const struct lin_op *op = &ops[p.by_call[i]];
        p.suffix[i] = p.suffix[i + 1];
        /* Every op leaves `value`: a read the one it saw, a write or cas its own. */
        best_add(&p.suffix[i], (struct best){op->ret, op->value, p.by_call[i]});
    }
    for (size_t i = 0; i < n; i++) {
        if (ops[i].ret == LIN_T_INF)
            continue; /* may not have happened: proves nothing */
        if (ops[i].kind == LIN_READ && check_read(&p, i, ops[i].value, out))
            goto out;
        if (ops[i].kind == LIN_CAS && check_read(&p, i, ops[i].expect, out))
            goto out;
    }
out:
    sm_free(p.by_call);
    sm_free(p.writers);
    sm_free(cas);
    sm_free(p.suffix);
    return rc;
}
