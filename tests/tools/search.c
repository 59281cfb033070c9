/* Linearizability of one register: a polynomial pre-check for the common flaws, and the
 * complete search (Wing & Gong, Lowe's just-in-time linearization, a state cache). */
#include "lincheck.h"

#include <assert.h>
#include <openssl/lhash.h>
#include <stdlib.h>
#include <string.h>

#define NONE SIZE_MAX
#define NO_SLOT UINT32_MAX

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
 * such configurations rather than in orderings. A Zobrist fingerprint (one random word
 * per op, xor-ed in and out as ops are placed and removed) is the key of the cache, a
 * hash table (libcrypto's LHASH); equal keys are then told apart by the set itself.
 *
 * The set is stored compactly, so long histories do not cost a full bitset per state.
 * Ops of known outcome are ranked by call: with `first` the lowest unplaced rank, every
 * rank below it is placed, and a placed op above it was invoked before that op's
 * completion, so the placed ranks past `first` fit in a window as wide as the history's
 * concurrency. (first, window words) is canonical for the set. Ops of unknown outcome
 * have their own small bitset. */

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
    uint32_t first; /* every known-outcome op ranked below it is placed */
    uint32_t nwin;  /* window words: the known-outcome bitset from word first / 64 */
    uint32_t nopt;  /* then the unknown-outcome bitset */
    uint64_t bits[];
};

struct frame {
    size_t entry;   /* the call entry lifted */
    uint32_t state; /* register state before it */
    uint32_t first; /* and the set's shape before it */
    int64_t hi;
    bool forced; /* placed without trying alternatives (see forced_op) */
};

struct search {
    const struct lin_op *ops;
    size_t n;
    struct event_entry *ent; /* ent[0] is the list head */
    struct frame *stack;
    size_t depth;
    uint32_t *rank;  /* per op: rank among known-outcome ops by call, or among the others */
    uint64_t *dbits; /* placed known-outcome ops, by rank */
    uint64_t *obits; /* placed unknown-outcome ops, by rank */
    uint32_t n_def, owords;
    uint32_t first; /* lowest unplaced known-outcome rank */
    int64_t hi;     /* highest placed known-outcome rank, or -1 */
    uint32_t *post;  /* per op: the state it leaves (LIN_DEAD for a value no op reads) */
    uint32_t *seen;  /* values some op reads (a read's value, a cas's expect), sorted */
    size_t n_seen;
    uint32_t *read_slot; /* per op: index in seen of the value it reads, or NO_SLOT */
    uint32_t *waiting;   /* per seen value: unplaced known-outcome ops that read it */
    bool prune;          /* values are unique and never come back: see step() */
    uint64_t *zob;
    uint64_t fp;
    OPENSSL_LHASH *cache;    /* of struct state_node */
    struct state_node *key;  /* scratch key, as large as a key can be */
    uint64_t states, bytes;
};

static int cmp_node(const void *a, const void *b)
{
    const struct state_node *x = a, *y = b;
    if (x->fp != y->fp || x->state != y->state || x->first != y->first || x->nwin != y->nwin)
        return 1;
    return memcmp(x->bits, y->bits, (size_t)(x->nwin + x->nopt) * sizeof x->bits[0]);
}

static unsigned long node_key(const void *a)
{
    const struct state_node *x = a;
    return (unsigned long)(x->fp + x->state);
}

static size_t node_size(const struct state_node *k)
{
    return sizeof *k + (size_t)(k->nwin + k->nopt) * sizeof k->bits[0];
}

/* Add the current (set, state) to the cache. *added = false if it was there. */
static int cache_add(struct search *s, uint32_t state, bool *added)
{
    struct state_node *k = s->key;
    k->fp = s->fp;
    k->state = state;
    k->first = s->first;
    k->nwin = s->hi >= (int64_t)s->first ? (uint32_t)(s->hi / 64 - s->first / 64 + 1) : 0;
    k->nopt = s->owords;
    memcpy(k->bits, s->dbits + s->first / 64, (size_t)k->nwin * sizeof k->bits[0]);
    memcpy(k->bits + k->nwin, s->obits, (size_t)k->nopt * sizeof k->bits[0]);
    *added = OPENSSL_LH_retrieve(s->cache, k) == NULL;
    if (!*added)
        return 0;
    size_t size = node_size(k);
    struct state_node *copy = sm_malloc(size);
    if (copy == NULL)
        return STRATA_OUT_OF_MEMORY;
    memcpy(copy, k, size);
    int errors = OPENSSL_LH_error(s->cache);
    OPENSSL_LH_insert(s->cache, copy);
    if (OPENSSL_LH_error(s->cache) != errors) {
        sm_free(copy);
        return STRATA_OUT_OF_MEMORY;
    }
    s->states++;
    /* The node, and about the table's own node plus allocator headers. */
    s->bytes += size + 48;
    return 0;
}

static uint32_t slot_of(const struct search *s, uint32_t value);

/* The register's transition: may op i take effect in `state`, and what is left?
 *
 * With unique values and no havoc a value, once replaced, never returns. So replacing a
 * value some unplaced op of known outcome still has to read is a dead end at once; saying
 * so here, rather than when that reader's completion is reached, keeps a wrong choice of
 * write from being explored through every op concurrent with it. */
static bool step(const struct search *s, size_t i, uint32_t state, uint32_t *next)
{
    const struct lin_op *op = &s->ops[i];
    *next = s->post[i];
    switch (op->kind) {
    case LIN_READ:
        return state == LIN_ANY || state == op->value;
    case LIN_HAVOC:
        return true;
    case LIN_CAS:
        if (state != LIN_ANY && state != op->expect)
            return false;
        break;
    case LIN_WRITE:
        break;
    }
    if (s->prune && state != *next) {
        uint32_t slot = slot_of(s, state);
        if (slot != NO_SLOT) {
            uint32_t self = s->read_slot[i] == slot && op->ret != LIN_T_INF;
            if (s->waiting[slot] > self)
                return false;
        }
    }
    return true;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t slot_of(const struct search *s, uint32_t value)
{
    const uint32_t *p = bsearch(&value, s->seen, s->n_seen, sizeof value, cmp_u32);
    return p == NULL ? NO_SLOT : (uint32_t)(p - s->seen);
}

/* The state each op leaves, and who reads what. Values no read returns and no cas
 * expects all become one state, LIN_DEAD: which of them is there cannot matter to any
 * later op, and merging them shrinks the cache. */
static int build_post(struct search *s, uint32_t initial)
{
    size_t n = s->n, m = 0;
    s->seen = sm_malloc((n + 1) * sizeof *s->seen);
    s->post = sm_malloc((n + 1) * sizeof *s->post);
    s->read_slot = sm_malloc((n + 1) * sizeof *s->read_slot);
    s->waiting = sm_calloc(n + 1, sizeof *s->waiting);
    uint32_t *written = sm_malloc((n + 1) * sizeof *written);
    if (s->seen == NULL || s->post == NULL || s->read_slot == NULL || s->waiting == NULL ||
        written == NULL) {
        sm_free(written);
        return STRATA_OUT_OF_MEMORY;
    }
    s->prune = initial != LIN_ANY;
    for (size_t i = 0; i < n; i++) {
        const struct lin_op *op = &s->ops[i];
        if (op->kind == LIN_READ)
            s->seen[s->n_seen++] = op->value;
        else if (op->kind == LIN_CAS)
            s->seen[s->n_seen++] = op->expect;
        if (op->kind == LIN_WRITE || op->kind == LIN_CAS)
            written[m++] = op->value;
        if (op->kind == LIN_HAVOC)
            s->prune = false;
    }
    /* The pruning needs unique values, none of them the initial one. */
    qsort(written, m, sizeof *written, cmp_u32);
    for (size_t i = 0; i < m && s->prune; i++)
        s->prune = written[i] != initial && (i == 0 || written[i] != written[i - 1]);
    sm_free(written);
    qsort(s->seen, s->n_seen, sizeof *s->seen, cmp_u32);
    size_t uniq = 0;
    for (size_t i = 0; i < s->n_seen; i++)
        if (uniq == 0 || s->seen[uniq - 1] != s->seen[i])
            s->seen[uniq++] = s->seen[i];
    s->n_seen = uniq;
    for (size_t i = 0; i < n; i++) {
        const struct lin_op *op = &s->ops[i];
        s->read_slot[i] = op->kind == LIN_READ  ? slot_of(s, op->value)
                          : op->kind == LIN_CAS ? slot_of(s, op->expect)
                                                : NO_SLOT;
        if (s->read_slot[i] != NO_SLOT && op->ret != LIN_T_INF)
            s->waiting[s->read_slot[i]]++;
        if (op->kind == LIN_HAVOC)
            s->post[i] = LIN_ANY;
        else if (op->kind == LIN_READ)
            s->post[i] = op->value; /* from LIN_ANY the read tells what the value was */
        else
            s->post[i] = slot_of(s, op->value) != NO_SLOT ? op->value : LIN_DEAD;
    }
    return 0;
}

/* An op that may be placed now and changes nothing that matters: a read of the current
 * value, or a write of a value no op reads while the register already holds such a
 * value (LIN_DEAD). Placing it first loses nothing: in any linearization from here it
 * can move to the front — it leaves the state as it is, and no unplaced op must precede
 * it. (The write, moved from a later point, no longer replaces the value there; but no op
 * read that value after it, or the linearization would have failed on LIN_DEAD.) So the
 * search places it without trying alternatives: such ops never multiply the
 * configurations. Not from LIN_ANY, where a read chooses the value. Returns the op's
 * call entry, or NONE. */
static size_t forced_op(const struct search *s, uint32_t state)
{
    if (state == LIN_ANY)
        return NONE;
    for (size_t e = s->ent[0].next; e != NONE && s->ent[e].is_call; e = s->ent[e].next) {
        size_t i = s->ent[e].op;
        const struct lin_op *op = &s->ops[i];
        if (op->kind == LIN_READ && op->value == state)
            return e;
        if (op->kind == LIN_WRITE && state == LIN_DEAD && s->post[i] == LIN_DEAD)
            return e;
    }
    return NONE;
}

/* The first completion still in the list: the op a dead end could not get past. */
static size_t first_return(const struct search *s)
{
    size_t e = s->ent[0].next;
    while (e != NONE && s->ent[e].is_call)
        e = s->ent[e].next;
    return e;
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

/* The lowest rank >= from not in bits, or limit. */
static uint32_t next_zero(const uint64_t *bits, uint32_t from, uint32_t limit)
{
    size_t w = from / 64;
    uint64_t x = ~bits[w] & (~UINT64_C(0) << (from % 64));
    while (x == 0) {
        if (++w * 64 >= limit)
            return limit;
        x = ~bits[w];
    }
    size_t r = w * 64 + (size_t)__builtin_ctzll(x);
    return r < limit ? (uint32_t)r : limit;
}

/* Put op i into the set (the caller saved first and hi to undo it). */
static void place(struct search *s, size_t i)
{
    uint32_t r = s->rank[i];
    s->fp ^= s->zob[i];
    if (s->read_slot[i] != NO_SLOT && s->ops[i].ret != LIN_T_INF)
        s->waiting[s->read_slot[i]]--;
    if (s->ops[i].ret == LIN_T_INF) {
        set_bit(s->obits, r);
        return;
    }
    set_bit(s->dbits, r);
    if ((int64_t)r > s->hi)
        s->hi = r;
    if (r == s->first)
        s->first = next_zero(s->dbits, r, s->n_def);
}

static void unplace(struct search *s, size_t i, uint32_t first, int64_t hi)
{
    s->fp ^= s->zob[i];
    if (s->read_slot[i] != NO_SLOT && s->ops[i].ret != LIN_T_INF)
        s->waiting[s->read_slot[i]]++;
    clear_bit(s->ops[i].ret == LIN_T_INF ? s->obits : s->dbits, s->rank[i]);
    s->first = first;
    s->hi = hi;
}

static int cmp_rank(const void *a, const void *b, void *arg)
{
    const struct lin_op *ops = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (ops[i].call != ops[j].call)
        return ops[i].call < ops[j].call ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* Rank the ops and size the sets. */
static int build_sets(struct search *s)
{
    size_t *by_call = sm_malloc((s->n + 1) * sizeof *by_call);
    uint32_t n_opt = 0;
    s->rank = sm_malloc((s->n + 1) * sizeof *s->rank);
    if (by_call == NULL || s->rank == NULL) {
        sm_free(by_call);
        return STRATA_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < s->n; i++)
        by_call[i] = i;
    qsort_r(by_call, s->n, sizeof *by_call, cmp_rank, (void *)s->ops);
    s->n_def = 0;
    for (size_t i = 0; i < s->n; i++) {
        size_t op = by_call[i];
        s->rank[op] = s->ops[op].ret == LIN_T_INF ? n_opt++ : s->n_def++;
    }
    sm_free(by_call);
    size_t dwords = s->n_def / 64 + 1;
    s->owords = (n_opt + 63) / 64;
    s->hi = -1;
    s->dbits = sm_calloc(dwords + 1, sizeof *s->dbits);
    s->obits = sm_calloc(s->owords + 1, sizeof *s->obits);
    s->key = sm_malloc(sizeof *s->key + (dwords + s->owords) * sizeof s->key->bits[0]);
    if (s->dbits == NULL || s->obits == NULL || s->key == NULL)
        return STRATA_OUT_OF_MEMORY;
    return 0;
}

/* An unplaced op of known outcome that reads `state`, or NONE. */
static size_t waiting_reader(const struct search *s, uint32_t state)
{
    uint32_t slot = slot_of(s, state);
    if (slot == NO_SLOT || s->waiting[slot] == 0)
        return NONE;
    for (size_t i = 0; i < s->n; i++) {
        bool placed = s->ops[i].ret == LIN_T_INF
                          ? s->obits[s->rank[i] / 64] >> (s->rank[i] % 64) & 1
                          : s->dbits[s->rank[i] / 64] >> (s->rank[i] % 64) & 1;
        if (!placed && s->read_slot[i] == slot && s->ops[i].ret != LIN_T_INF)
            return i;
    }
    return NONE;
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
    /* A write held back only because it would strand a reader of the current value. */
    res->blocked_by = NONE;
    const struct lin_op *op = &s->ops[stuck];
    if (s->prune && (op->kind == LIN_WRITE || (op->kind == LIN_CAS && op->expect == state)))
        res->blocked_by = waiting_reader(s, state);
    return 0;
}

static void search_free(struct search *s)
{
    if (s->cache != NULL) {
        OPENSSL_LH_doall(s->cache, sm_free);
        OPENSSL_LH_free(s->cache);
    }
    sm_free(s->key);
    sm_free(s->ent);
    sm_free(s->stack);
    sm_free(s->rank);
    sm_free(s->post);
    sm_free(s->seen);
    sm_free(s->read_slot);
    sm_free(s->waiting);
    sm_free(s->dbits);
    sm_free(s->obits);
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
    res->blocked_by = NONE;
    if (n >= UINT32_MAX) {
        rc = STRATA_OUT_OF_MEMORY; /* ranks are 32-bit */
        goto out;
    }
    s.stack = sm_malloc((n + 1) * sizeof *s.stack);
    s.zob = sm_malloc((n + 1) * sizeof *s.zob);
    s.cache = OPENSSL_LH_new(node_key, cmp_node);
    if (s.stack == NULL || s.zob == NULL || s.cache == NULL) {
        rc = STRATA_OUT_OF_MEMORY;
        goto out;
    }
    /* A fixed seed: the same history always takes the same path through the search. */
    unsigned short xsubi[3] = {0x5eed, 0x11c4, 0x2024};
    for (size_t i = 0; i < n; i++)
        s.zob[i] = ((uint64_t)(uint32_t)jrand48(xsubi) << 32) | (uint32_t)jrand48(xsubi);
    if ((rc = build_list(&s, &n_definite)) != 0 || (rc = build_sets(&s)) != 0 ||
        (rc = build_post(&s, initial)) != 0)
        goto out;

    size_t e = s.ent[0].next;
    uint64_t iter = 0;
    bool fresh = true; /* a configuration not yet looked at: try a forced op first */
    while (done < n_definite) {
        if ((iter++ & 1023) == 0 && lim->deadline_ns != 0 && clock_mono_ns() > lim->deadline_ns) {
            res->verdict = LIN_UNKNOWN;
            res->unknown_why = "time budget exceeded";
            goto done;
        }
        bool forced = false;
        if (fresh) {
            fresh = false;
            size_t r = forced_op(&s, state);
            if (r != NONE) {
                e = r;
                forced = true;
            }
        }
        /* Some op of known outcome is unplaced, so its return is in the list ahead. */
        assert(e != NONE);
        struct event_entry *en = &s.ent[e];
        if (en->is_call) {
            uint32_t next;
            bool added = false;
            uint32_t first = s.first;
            int64_t hi = s.hi;
            if (step(&s, en->op, state, &next)) {
                place(&s, en->op);
                if ((rc = cache_add(&s, next, &added)) != 0)
                    goto out;
                if (!added)
                    unplace(&s, en->op, first, hi);
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
                s.stack[s.depth++] = (struct frame){
                    .entry = e, .state = state, .first = first, .hi = hi, .forced = forced};
                state = next;
                lift(s.ent, e);
                if (en->match != NONE)
                    done++;
                e = s.ent[0].next;
                fresh = true;
                continue;
            }
            if (!forced) {
                e = en->next;
                continue;
            }
            /* The forced op leads where the search has been: nothing here succeeds. */
            e = first_return(&s);
        }
        /* A dead end: every op that could come before the completion at e has been tried
         * here. Back up to the last choice that has alternatives left. */
        if ((rc = note_dead_end(&s, res, s.ent[e].op, state)) != 0)
            goto out;
        for (;;) {
            if (s.depth == 0) {
                res->verdict = LIN_VIOLATION;
                goto done;
            }
            struct frame f = s.stack[--s.depth];
            struct event_entry *c = &s.ent[f.entry];
            state = f.state;
            unlift(s.ent, f.entry);
            unplace(&s, c->op, f.first, f.hi);
            if (c->match != NONE)
                done--;
            if (!f.forced) {
                e = c->next;
                break;
            }
        }
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
