/* The checks over a whole history: per-register linearizability (through search.c),
 * lost writes, event-log sequences and branch versions, with a readable report. */
#include "lincheck.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define NONE SIZE_MAX
#define FROM_FINAL (SIZE_MAX - 1) /* a lin op that is the final read */
#define MAX_PER_GROUP 5           /* findings of one kind printed per log or branch */

/* What one register, log or branch is made of: a run of h->ops indexes. */
enum group_kind { G_REGISTER, G_LOG, G_BRANCH };

struct ctx {
    const struct hist *h;
    const struct check_limits *lim;
    FILE *out;
    struct check_summary *sum;
    uint64_t deadline_ns;
    size_t *order; /* h->ops indexes, grouped (see cmp_group) and by call within a group */
    struct hist_final *finals; /* copy, sorted by (kind, branch, key) */
    bool *final_used;
    bool show_key; /* ops in a report about a whole branch: name their key */
};

static enum group_kind group_of(const struct hist_op *op)
{
    if (op->f == HIST_FORK || op->f == HIST_MERGE)
        return G_BRANCH;
    return op->f == HIST_APPEND ? G_LOG : G_REGISTER;
}

static int cmp_group(const void *a, const void *b, void *arg)
{
    const struct hist_op *ops = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    const struct hist_op *x = &ops[i], *y = &ops[j];
    if (x->branch != y->branch)
        return x->branch < y->branch ? -1 : 1;
    enum group_kind gx = group_of(x), gy = group_of(y);
    if (gx != gy)
        return gx < gy ? -1 : 1;
    if (gx != G_BRANCH && x->key != y->key)
        return x->key < y->key ? -1 : 1;
    if (x->call != y->call)
        return x->call < y->call ? -1 : 1;
    return i < j ? -1 : i > j;
}

static bool same_group(const struct hist_op *x, const struct hist_op *y)
{
    return x->branch == y->branch && group_of(x) == group_of(y) &&
           (group_of(x) == G_BRANCH || x->key == y->key);
}

static int cmp_final(const void *a, const void *b)
{
    const struct hist_final *x = a, *y = b;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    if (x->branch != y->branch)
        return x->branch < y->branch ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key;
}

static size_t find_final(const struct ctx *c, enum hist_final_kind kind, uint32_t branch,
                         uint32_t key)
{
    struct hist_final k = {.kind = kind, .branch = branch, .key = key};
    const struct hist_final *f =
        bsearch(&k, c->finals, c->h->n_finals, sizeof k, cmp_final);
    return f == NULL ? NONE : (size_t)(f - c->finals);
}

/* ---- Report helpers ------------------------------------------------------------------ */

/* A name as a JSON string, so odd characters stay visible. */
static void put_name(FILE *out, const struct hist *h, uint32_t id)
{
    json_t *s = json_string(h->names[id]);
    char *text = s == NULL ? NULL : json_dumps(s, JSON_ENCODE_ANY);
    fputs(text != NULL ? text : "?", out);
    free(text);
    json_decref(s);
}

static void put_value(FILE *out, const struct hist *h, uint32_t id)
{
    if (id == LIN_ANY || id == LIN_DEAD) {
        fputs(id == LIN_ANY ? "(unknown)" : "(a value no op reads)", out);
        return;
    }
    const char *v = h->values[id];
    size_t len = strlen(v);
    if (len <= 60) {
        fputs(v, out);
        return;
    }
    /* Long values are cut, at a character boundary: the text is UTF-8. */
    len = 57;
    while (len > 0 && ((unsigned char)v[len] & 0xC0) == 0x80)
        len--;
    fprintf(out, "%.*s...", (int)len, v);
}

static const char *outcome_name(enum hist_outcome o)
{
    return o == HIST_OK ? "ok" : o == HIST_FAIL ? "fail" : "info";
}

static void put_op(const struct ctx *c, size_t i)
{
    const struct hist *h = c->h;
    FILE *out = c->out;
    const struct hist_op *op = &h->ops[i];
    fprintf(out, "    proc %" PRId64 " %s", op->proc, hist_f_name(op->f));
    switch (op->f) {
    case HIST_READ:
        if (op->outcome == HIST_OK) {
            fputs(" -> ", out);
            put_value(out, h, op->value);
        }
        break;
    case HIST_WRITE:
        fputc(' ', out);
        put_value(out, h, op->value);
        break;
    case HIST_CAS:
        fputc(' ', out);
        put_value(out, h, op->expect);
        fputs(" -> ", out);
        put_value(out, h, op->value);
        break;
    case HIST_APPEND:
        if (op->has_seq)
            fprintf(out, " -> seq %" PRIu64, op->seq);
        break;
    case HIST_FORK:
    case HIST_MERGE:
        fputs(" into ", out);
        put_name(out, h, op->branch);
        if (op->key != HIST_NONE) {
            fputs(" from ", out);
            put_name(out, h, op->key);
        }
        break;
    }
    if (c->show_key && op->key != HIST_NONE && op->f != HIST_FORK && op->f != HIST_MERGE) {
        fputs(" on ", out);
        put_name(out, h, op->key);
    }
    fprintf(out, "  [invoke t=%" PRId64 " line %lu, %s", op->call, op->line_call,
            outcome_name(op->outcome));
    if (op->error != HIST_NONE)
        fprintf(out, " %s", h->names[op->error]);
    fprintf(out, " t=%" PRId64 " line %lu", op->ret, op->line_ret);
    if (op->has_version)
        fprintf(out, ", version %" PRIu64, op->version);
    fputs("]\n", out);
}

static void put_final(const struct ctx *c, const struct hist_final *f)
{
    fputs("    final read -> ", c->out);
    put_value(c->out, c->h, f->value);
    fprintf(c->out, "  [line %lu, after every op]\n", f->line);
}

/* A lin op's source: a history op, or the final read. */
static void put_src(const struct ctx *c, size_t src, const struct hist_final *fin)
{
    if (src == FROM_FINAL)
        put_final(c, fin);
    else
        put_op(c, src);
}

static void header(const struct ctx *c, const char *what, const char *kind, uint32_t branch,
                   uint32_t key)
{
    c->sum->violations++;
    fprintf(c->out, "VIOLATION %s: branch ", what);
    put_name(c->out, c->h, branch);
    if (key != HIST_NONE) {
        fprintf(c->out, " %s ", kind);
        put_name(c->out, c->h, key);
    }
    fputc('\n', c->out);
}

/* ---- Real-time order of a per-op number (versions, event seqs) --------------------------
 *
 * If a completed before b was invoked, a's number must be smaller. Sweeping ops by call
 * while admitting ops by completion time keeps the largest number among ops completed
 * so far; an op invoked after them with a number no larger breaks the rule. */

struct numbered {
    int64_t call, ret;
    uint64_t num;
    size_t op;
};

static int cmp_num_call(const void *a, const void *b)
{
    const struct numbered *x = a, *y = b;
    if (x->call != y->call)
        return x->call < y->call ? -1 : 1;
    return x->op < y->op ? -1 : x->op > y->op;
}

static int cmp_num_ret(const void *a, const void *b)
{
    const struct numbered *x = a, *y = b;
    if (x->ret != y->ret)
        return x->ret < y->ret ? -1 : 1;
    return x->op < y->op ? -1 : x->op > y->op;
}

static int cmp_num_num(const void *a, const void *b)
{
    const struct numbered *x = a, *y = b;
    if (x->num != y->num)
        return x->num < y->num ? -1 : 1;
    return x->op < y->op ? -1 : x->op > y->op;
}

/* Report numbers used twice and numbers out of real-time order. `v` is reordered. */
static int check_numbers(const struct ctx *c, struct numbered *v, size_t n, const char *dup,
                         const char *order, const char *unit, uint32_t branch, uint32_t key,
                         const char *kind)
{
    size_t shown = 0;
    qsort(v, n, sizeof *v, cmp_num_num);
    for (size_t i = 1; i < n && shown < MAX_PER_GROUP; i++) {
        if (v[i].num != v[i - 1].num)
            continue;
        header(c, dup, kind, branch, key);
        fprintf(c->out, "  two acknowledged ops got %s %" PRIu64 ":\n", unit, v[i].num);
        put_op(c, v[i - 1].op);
        put_op(c, v[i].op);
        shown++;
    }
    struct numbered *by_ret = sm_malloc((n + 1) * sizeof *by_ret);
    if (by_ret == NULL)
        return STRATA_OUT_OF_MEMORY;
    memcpy(by_ret, v, n * sizeof *v);
    qsort(by_ret, n, sizeof *v, cmp_num_ret);
    qsort(v, n, sizeof *v, cmp_num_call);
    size_t j = 0, max = NONE;
    shown = 0;
    for (size_t i = 0; i < n && shown < MAX_PER_GROUP; i++) {
        for (; j < n && by_ret[j].ret < v[i].call; j++)
            if (max == NONE || by_ret[j].num > by_ret[max].num)
                max = j;
        if (max == NONE || by_ret[max].num < v[i].num)
            continue;
        header(c, order, kind, branch, key);
        fprintf(c->out, "  the first completed before the second was invoked, but its %s "
                        "(%" PRIu64 ") is not smaller (%" PRIu64 "):\n",
                unit, by_ret[max].num, v[i].num);
        put_op(c, by_ret[max].op);
        put_op(c, v[i].op);
        shown++;
    }
    sm_free(by_ret);
    return 0;
}

/* ---- Registers ------------------------------------------------------------------------ */

struct reg {
    uint32_t branch, key;
    const size_t *ops; /* h->ops indexes by call */
    size_t n;
    const size_t *havoc; /* fork/merge ops into the branch */
    size_t n_havoc;
    const struct hist_final *fin; /* or NULL */
};

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_op_value(const void *a, const void *b, void *arg)
{
    const struct hist_op *ops = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (ops[i].value != ops[j].value)
        return ops[i].value < ops[j].value ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* Written values must be unique per key (every write and cas invoked, whatever its
 * outcome): the pre-check and the lost-write reasoning rest on it. */
static int check_unique(const struct ctx *c, const struct reg *r, bool *unique)
{
    size_t *w = sm_malloc((r->n + 1) * sizeof *w), nw = 0;
    if (w == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < r->n; i++)
        if (c->h->ops[r->ops[i]].f != HIST_READ)
            w[nw++] = r->ops[i];
    qsort_r(w, nw, sizeof *w, cmp_op_value, (void *)c->h->ops);
    *unique = true;
    for (size_t i = 1; i < nw; i++) {
        if (c->h->ops[w[i]].value != c->h->ops[w[i - 1]].value)
            continue;
        header(c, "non-unique write value", "key", r->branch, r->key);
        fputs("  two ops write the same value (the checker needs unique values per key):\n",
              c->out);
        put_op(c, w[i - 1]);
        put_op(c, w[i]);
        *unique = false;
        break;
    }
    sm_free(w);
    return 0;
}

/* What is known about each value of a register: who wrote it (if anyone did and the
 * write may have happened) and by when it was surely written (LIN_T_INF: maybe never). */
struct values {
    uint32_t *val; /* sorted, unique */
    size_t n;
    size_t *writer;    /* per value: op index in h->ops, or NONE */
    int64_t *deadline; /* per value */
};

static size_t value_slot(const struct values *v, uint32_t value)
{
    const uint32_t *p = bsearch(&value, v->val, v->n, sizeof value, cmp_u32);
    return p == NULL ? NONE : (size_t)(p - v->val);
}

static void values_close(struct values *v)
{
    sm_free(v->val);
    sm_free(v->writer);
    sm_free(v->deadline);
}

/* A value some op saw (an ok read, an ok cas's expect, the final read) was surely
 * written — values are unique — before the first op that saw it completed. If its writer
 * is a cas of unknown outcome, that cas surely took effect by then too, so its expected
 * value was surely there before: the knowledge flows down chains of cas. */
static int values_build(const struct ctx *c, const struct reg *r, struct values *v)
{
    const struct hist *h = c->h;
    size_t cap = 2 * r->n + 2, *work = NULL, n_work = 0;
    memset(v, 0, sizeof *v);
    v->val = sm_malloc(cap * sizeof *v->val);
    v->writer = sm_malloc(cap * sizeof *v->writer);
    v->deadline = sm_malloc(cap * sizeof *v->deadline);
    work = sm_malloc(cap * sizeof *work);
    if (v->val == NULL || v->writer == NULL || v->deadline == NULL || work == NULL) {
        sm_free(work);
        return STRATA_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < r->n; i++) {
        const struct hist_op *op = &h->ops[r->ops[i]];
        v->val[v->n++] = op->value;
        if (op->f == HIST_CAS)
            v->val[v->n++] = op->expect;
    }
    if (r->fin != NULL)
        v->val[v->n++] = r->fin->value;
    qsort(v->val, v->n, sizeof *v->val, cmp_u32);
    size_t uniq = 0;
    for (size_t i = 0; i < v->n; i++)
        if (uniq == 0 || v->val[uniq - 1] != v->val[i])
            v->val[uniq++] = v->val[i];
    v->n = uniq;
    for (size_t i = 0; i < v->n; i++) {
        v->writer[i] = NONE;
        v->deadline[i] = LIN_T_INF;
    }

    /* Writers that may have happened (check_unique made them one per value). */
    for (size_t i = 0; i < r->n; i++) {
        const struct hist_op *op = &h->ops[r->ops[i]];
        if (op->f != HIST_READ && op->outcome != HIST_FAIL)
            v->writer[value_slot(v, op->value)] = r->ops[i];
    }
    /* Direct sightings. */
    for (size_t i = 0; i <= r->n; i++) {
        uint32_t seen;
        int64_t by;
        if (i == r->n) {
            if (r->fin == NULL)
                break;
            seen = r->fin->value, by = h->t_max + 2;
        } else {
            const struct hist_op *op = &h->ops[r->ops[i]];
            if (op->outcome != HIST_OK || (op->f != HIST_READ && op->f != HIST_CAS))
                continue;
            seen = op->f == HIST_READ ? op->value : op->expect, by = op->ret;
        }
        size_t k = value_slot(v, seen);
        if (by < v->deadline[k]) {
            v->deadline[k] = by;
            work[n_work++] = k;
        }
    }
    /* Down the chains: a value seen by d, written by a cas of unknown outcome, means
     * the cas's expected value was seen by d as well. Deadlines only drop, so this ends. */
    while (n_work > 0) {
        size_t k = work[--n_work], w = v->writer[k];
        if (w == NONE || h->ops[w].f != HIST_CAS || h->ops[w].outcome != HIST_INFO)
            continue;
        size_t e = value_slot(v, h->ops[w].expect);
        if (v->deadline[k] < v->deadline[e]) {
            v->deadline[e] = v->deadline[k];
            if (n_work < cap)
                work[n_work++] = e;
        }
    }
    sm_free(work);
    return 0;
}

/* Turn a register's ops into the search's input. Failed ops did not happen; a read of
 * unknown outcome tells nothing; a write or cas of unknown outcome whose value was never
 * surely written (see values_build) can always be left out. One whose value surely was
 * written surely took effect, by that deadline: it goes in as an op of known outcome
 * with the deadline as its completion, which keeps the search from trying it at every
 * later point. With forks or merges on the branch a value may come from elsewhere, so
 * there such ops stay optional. */
static int build_lin(const struct ctx *c, const struct reg *r, struct lin_op *lin, size_t *src,
                     size_t *n_lin)
{
    const struct hist *h = c->h;
    struct values v;
    size_t n = 0;
    int rc = values_build(c, r, &v);
    if (rc != 0) {
        values_close(&v);
        return rc;
    }

    /* Ops and havoc are both by call; merge them so the lin ops stay by call too. */
    size_t i = 0, k = 0;
    while (i < r->n || k < r->n_havoc) {
        bool take_havoc = k < r->n_havoc &&
                          (i == r->n || h->ops[r->havoc[k]].call < h->ops[r->ops[i]].call);
        size_t idx = take_havoc ? r->havoc[k++] : r->ops[i++];
        const struct hist_op *op = &h->ops[idx];
        if (op->outcome == HIST_FAIL || (op->outcome == HIST_INFO && op->f == HIST_READ))
            continue;
        struct lin_op *l = &lin[n];
        l->call = op->call;
        l->ret = op->outcome == HIST_OK ? op->ret : LIN_T_INF;
        if (op->outcome == HIST_INFO && !take_havoc) {
            int64_t by = v.deadline[value_slot(&v, op->value)];
            if (by == LIN_T_INF)
                continue;
            if (r->n_havoc == 0)
                l->ret = by > op->call ? by : op->call;
        }
        l->value = op->value;
        l->expect = op->expect;
        l->kind = take_havoc            ? LIN_HAVOC
                  : op->f == HIST_READ  ? LIN_READ
                  : op->f == HIST_WRITE ? LIN_WRITE
                                        : LIN_CAS;
        src[n++] = idx;
    }
    if (r->fin != NULL) {
        /* After everything: the workload read it once every client had stopped. */
        lin[n] = (struct lin_op){.call = h->t_max + 1, .ret = h->t_max + 2, .kind = LIN_READ,
                                 .value = r->fin->value};
        src[n++] = FROM_FINAL;
    }
    values_close(&v);
    *n_lin = n;
    return 0;
}

/* A failed write of `value` on this register, or NONE. */
static size_t failed_writer(const struct ctx *c, const struct reg *r, uint32_t value)
{
    for (size_t i = 0; i < r->n; i++) {
        const struct hist_op *op = &c->h->ops[r->ops[i]];
        if (op->f != HIST_READ && op->outcome == HIST_FAIL && op->value == value)
            return r->ops[i];
    }
    return NONE;
}

static void report_flaw(const struct ctx *c, const struct reg *r, const struct lin_finding *fd,
                        const size_t *src, const struct lin_op *lin)
{
    FILE *out = c->out;
    bool final = src[fd->op] == FROM_FINAL;
    const struct lin_op *op = &lin[fd->op];
    uint32_t seen = op->kind == LIN_CAS ? op->expect : op->value;
    switch (fd->flaw) {
    case LIN_FLAW_NONE:
        return;
    case LIN_FLAW_DUP_VALUE:
        header(c, "non-unique write value", "key", r->branch, r->key);
        put_src(c, src[fd->op], r->fin);
        put_src(c, src[fd->other], r->fin);
        return;
    case LIN_FLAW_CAS_TWICE:
        header(c, "cas applied twice", "key", r->branch, r->key);
        fputs("  both acknowledged, but the expected value can be replaced only once:\n", out);
        put_src(c, src[fd->op], r->fin);
        put_src(c, src[fd->other], r->fin);
        return;
    case LIN_FLAW_NEVER_WRITTEN: {
        size_t fw = failed_writer(c, r, seen);
        header(c, fw != NONE ? "read of a failed write" : "read of a never-written value",
               "key", r->branch, r->key);
        put_src(c, src[fd->op], r->fin);
        if (fw != NONE) {
            fputs("  saw the value of a write reported as failed (did not happen):\n", out);
            put_op(c, fw);
        } else {
            fputs("  no op wrote ", out);
            put_value(out, c->h, seen);
            fputs(" to this key\n", out);
        }
        return;
    }
    case LIN_FLAW_FUTURE_READ:
        header(c, "read of a value written later", "key", r->branch, r->key);
        put_src(c, src[fd->op], r->fin);
        fputs("  completed before the write of that value was invoked:\n", out);
        put_src(c, src[fd->writer], r->fin);
        return;
    case LIN_FLAW_STALE_NULL:
        header(c, final ? "lost write" : "stale read", "key", r->branch, r->key);
        put_src(c, src[fd->op], r->fin);
        fputs(final ? "  found the key absent, but this op had left a value in it:\n"
                    : "  found the key absent, but this op had already left a value in it "
                      "(completed before the read was invoked):\n",
              out);
        put_src(c, src[fd->other], r->fin);
        return;
    case LIN_FLAW_STALE_READ:
        header(c, final ? "lost write" : "stale read", "key", r->branch, r->key);
        put_src(c, src[fd->op], r->fin);
        fputs("  returned the value of\n", out);
        put_src(c, src[fd->writer], r->fin);
        fputs(final ? "  but this acknowledged op was invoked after that write completed, so "
                      "its effect came later and is gone:\n"
                    : "  but this op was invoked after that write completed and completed "
                      "before the read was invoked, leaving another value:\n",
              out);
        put_src(c, src[fd->other], r->fin);
        return;
    }
}

static void report_search(const struct ctx *c, const struct reg *r, const struct lin_result *res,
                          const size_t *src)
{
    FILE *out = c->out;
    header(c, "not linearizable", "key", r->branch, r->key);
    fprintf(out, "  no order of the ops fits their real-time intervals (%" PRIu64
                 " states searched).\n  Longest linearizable prefix: %zu ops",
            res->states, res->prefix_len);
    size_t from = res->prefix_len > 6 ? res->prefix_len - 6 : 0;
    fputs(from > 0 ? "; the last of them:\n" : ":\n", out);
    for (size_t i = from; i < res->prefix_len; i++)
        put_src(c, src[res->prefix[i]], r->fin);
    fputs("  leaving ", out);
    put_value(out, c->h, res->stuck_state);
    fputs(", from which no pending op can be placed before this one completes:\n", out);
    put_src(c, src[res->stuck], r->fin);
    if (res->blocked_by != NONE) {
        fputs("  (it would replace that value, which this op still has to read:)\n", out);
        put_src(c, src[res->blocked_by], r->fin);
    }
    if (src[res->stuck] == FROM_FINAL)
        fputs("  (the final value cannot be explained: an acknowledged write was lost or "
              "reordered)\n",
              out);
}

/* A read's version must be the version its value was written with. */
static int check_read_versions(const struct ctx *c, const struct reg *r)
{
    const struct hist *h = c->h;
    size_t *w = sm_malloc((r->n + 1) * sizeof *w), nw = 0, shown = 0;
    if (w == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < r->n; i++) {
        const struct hist_op *op = &h->ops[r->ops[i]];
        if (op->f != HIST_READ && op->outcome == HIST_OK && op->has_version)
            w[nw++] = r->ops[i];
    }
    qsort_r(w, nw, sizeof *w, cmp_op_value, (void *)h->ops);
    for (size_t i = 0; i < r->n && shown < MAX_PER_GROUP; i++) {
        const struct hist_op *op = &h->ops[r->ops[i]];
        if (op->f != HIST_READ || op->outcome != HIST_OK || !op->has_version ||
            op->value == HIST_NULL)
            continue;
        size_t lo = 0, hi = nw;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (h->ops[w[mid]].value < op->value)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == nw || h->ops[w[lo]].value != op->value ||
            h->ops[w[lo]].version == op->version)
            continue;
        header(c, "read version mismatch", "key", r->branch, r->key);
        fputs("  the read reports another version than the write of its value:\n", c->out);
        put_op(c, r->ops[i]);
        put_op(c, w[lo]);
        shown++;
    }
    sm_free(w);
    return 0;
}

static int check_register(struct ctx *c, const struct reg *r)
{
    size_t cap = r->n + r->n_havoc + 1;
    struct lin_op *lin = sm_malloc(cap * sizeof *lin);
    size_t *src = sm_malloc(cap * sizeof *src), n_lin = 0;
    struct lin_result res = {0};
    bool unique;
    int rc = STRATA_OUT_OF_MEMORY;

    c->sum->registers++;
    if (lin == NULL || src == NULL)
        goto out;
    if ((rc = check_unique(c, r, &unique)) != 0 || !unique)
        goto out;
    if ((rc = build_lin(c, r, lin, src, &n_lin)) != 0)
        goto out;
    if (r->n_havoc == 0) {
        struct lin_finding fd;
        if ((rc = lin_precheck(lin, n_lin, &fd)) != 0)
            goto out;
        if ((rc = check_read_versions(c, r)) != 0)
            goto out;
        if (fd.flaw != LIN_FLAW_NONE) {
            report_flaw(c, r, &fd, src, lin);
            goto out;
        }
    }
    struct lin_limits lim = {
        .max_states = c->lim->max_states,
        .max_bytes = c->lim->max_bytes,
        .deadline_ns = c->deadline_ns,
    };
    /* A fork or merge may have set any value, and may predate the history. */
    uint32_t initial = r->n_havoc == 0 ? HIST_NULL : LIN_ANY;
    if ((rc = lin_check(lin, n_lin, initial, &lim, &res)) != 0)
        goto out;
    c->sum->states += res.states;
    if (res.verdict == LIN_VIOLATION) {
        report_search(c, r, &res, src);
    } else if (res.verdict == LIN_UNKNOWN) {
        c->sum->unknown++;
        fputs("UNKNOWN: branch ", c->out);
        put_name(c->out, c->h, r->branch);
        fputs(" key ", c->out);
        put_name(c->out, c->h, r->key);
        fprintf(c->out, ": %s after %" PRIu64 " states (%zu ops); not decided\n",
                res.unknown_why, res.states, n_lin);
    }
    rc = 0;
out:
    lin_result_close(&res);
    sm_free(lin);
    sm_free(src);
    return rc;
}

/* ---- Event logs ------------------------------------------------------------------------ */

static int check_log(struct ctx *c, uint32_t branch, uint32_t key, const size_t *ops, size_t n,
                     const struct hist_final *fin, bool changed_by_branch_ops)
{
    const struct hist *h = c->h;
    struct numbered *v = sm_malloc((n + 1) * sizeof *v);
    size_t n_ok = 0, n_info = 0, shown = 0;
    uint64_t max_seq = 0;
    int rc;

    c->sum->logs++;
    if (v == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++) {
        const struct hist_op *op = &h->ops[ops[i]];
        if (op->outcome == HIST_INFO)
            n_info++;
        if (op->outcome != HIST_OK)
            continue;
        v[n_ok++] = (struct numbered){op->call, op->ret, op->seq, ops[i]};
        if (op->seq > max_seq)
            max_seq = op->seq;
        if (op->seq == 0 && shown++ < MAX_PER_GROUP) {
            header(c, "event seq 0", "log", branch, key);
            fputs("  sequences start at 1:\n", c->out);
            put_op(c, ops[i]);
        }
    }
    if ((rc = check_numbers(c, v, n_ok, "duplicate event seq", "event seq order", "seq",
                            branch, key, "log")) != 0)
        goto out;
    if (changed_by_branch_ops)
        goto out; /* a fork or merge adds events no append here accounts for */
    /* check_numbers left v by call; count distinct acknowledged seqs in 1..len. */
    uint64_t len = fin != NULL ? fin->len : max_seq;
    if (fin != NULL && max_seq > len) {
        header(c, "lost append", "log", branch, key);
        fprintf(c->out, "  the final length is %" PRIu64 " but seq %" PRIu64
                        " was acknowledged:\n",
                len, max_seq);
        for (size_t i = 0, k = 0; i < n_ok && k < MAX_PER_GROUP; i++)
            if (v[i].num > len && ++k)
                put_op(c, v[i].op);
    }
    qsort(v, n_ok, sizeof *v, cmp_num_num);
    uint64_t distinct = 0;
    for (size_t i = 0; i < n_ok; i++)
        if (v[i].num >= 1 && v[i].num <= len && (i == 0 || v[i].num != v[i - 1].num))
            distinct++;
    /* Seqs are dense: each of 1..len was taken by an acknowledged append or by one of
     * unknown outcome; a failed append took none. */
    if (len - distinct > n_info) {
        header(c, "gap in event seq", "log", branch, key);
        fprintf(c->out, "  %" PRIu64 " of seqs 1..%" PRIu64 " (%s) were not acknowledged, but "
                        "only %zu append(s) had an unknown outcome; missing:",
                len - distinct, len, fin != NULL ? "final length" : "largest acknowledged",
                n_info);
        uint64_t want = 1;
        size_t listed = 0;
        for (size_t i = 0; i <= n_ok && listed < 10; i++) {
            uint64_t upto = i < n_ok && v[i].num <= len ? v[i].num : len + 1;
            for (; want < upto && listed < 10; want++, listed++)
                fprintf(c->out, " %" PRIu64, want);
            if (upto == len + 1)
                break;
            if (upto >= want)
                want = upto + 1;
        }
        fputs(listed == 10 ? " ...\n" : "\n", c->out);
    }
out:
    sm_free(v);
    return rc;
}

/* ---- Branches -------------------------------------------------------------------------- */

/* Every acknowledged write on a branch takes its own version, in real-time order. */
static int check_versions(struct ctx *c, uint32_t branch, size_t from, size_t to)
{
    const struct hist *h = c->h;
    struct numbered *v = sm_malloc((to - from + 1) * sizeof *v);
    size_t n = 0;
    if (v == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = from; i < to; i++) {
        const struct hist_op *op = &h->ops[c->order[i]];
        if (op->outcome == HIST_OK && op->has_version && op->f != HIST_READ &&
            op->f != HIST_FORK)
            v[n++] = (struct numbered){op->call, op->ret, op->version, c->order[i]};
    }
    c->show_key = true;
    int rc = check_numbers(c, v, n, "duplicate version", "version order", "version", branch,
                           HIST_NONE, "");
    c->show_key = false;
    sm_free(v);
    return rc;
}

/* The registers, logs and branch ops of one branch: order[from..to). */
static int check_branch(struct ctx *c, size_t from, size_t to)
{
    const struct hist *h = c->h;
    uint32_t branch = h->ops[c->order[from]].branch;
    size_t i = from, havoc_from = to, n_havoc = 0;
    int rc;

    c->sum->branches++;
    /* Branch ops sort last within the branch; failed ones changed nothing. */
    for (size_t k = from; k < to; k++) {
        if (group_of(&h->ops[c->order[k]]) == G_BRANCH) {
            havoc_from = k;
            break;
        }
    }
    size_t *havoc = sm_malloc((to - havoc_from + 1) * sizeof *havoc);
    if (havoc == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t k = havoc_from; k < to; k++)
        if (h->ops[c->order[k]].outcome != HIST_FAIL)
            havoc[n_havoc++] = c->order[k];

    while (i < havoc_from) {
        size_t j = i + 1;
        while (j < havoc_from && same_group(&h->ops[c->order[i]], &h->ops[c->order[j]]))
            j++;
        const struct hist_op *first = &h->ops[c->order[i]];
        if (group_of(first) == G_REGISTER) {
            size_t fi = find_final(c, HIST_FINAL_READ, branch, first->key);
            struct reg r = {branch, first->key, c->order + i, j - i, havoc, n_havoc,
                            fi == NONE ? NULL : &c->finals[fi]};
            if (fi != NONE)
                c->final_used[fi] = true;
            rc = check_register(c, &r);
        } else {
            size_t fi = find_final(c, HIST_FINAL_LEN, branch, first->key);
            if (fi != NONE)
                c->final_used[fi] = true;
            rc = check_log(c, branch, first->key, c->order + i, j - i,
                           fi == NONE ? NULL : &c->finals[fi], n_havoc > 0);
        }
        if (rc != 0)
            goto out;
        i = j;
    }
    rc = check_versions(c, branch, from, to);
out:
    sm_free(havoc);
    return rc;
}

/* Finals of keys no op touched: a register must still be null, a log empty, unless a
 * fork or merge into the branch could explain anything. */
static int check_lonely_finals(struct ctx *c)
{
    const struct hist *h = c->h;
    uint32_t *changed = sm_malloc((h->n_ops + 1) * sizeof *changed);
    size_t n_changed = 0;
    if (changed == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t k = 0; k < h->n_ops; k++)
        if (group_of(&h->ops[k]) == G_BRANCH && h->ops[k].outcome != HIST_FAIL)
            changed[n_changed++] = h->ops[k].branch;
    qsort(changed, n_changed, sizeof *changed, cmp_u32);
    for (size_t i = 0; i < h->n_finals; i++) {
        const struct hist_final *f = &c->finals[i];
        if (c->final_used[i])
            continue;
        bool explained = bsearch(&f->branch, changed, n_changed, sizeof *changed, cmp_u32);
        if (f->kind == HIST_FINAL_READ) {
            c->sum->registers++;
            if (f->value == HIST_NULL || explained)
                continue;
            header(c, "read of a never-written value", "key", f->branch, f->key);
            put_final(c, f);
            fputs("  no op wrote to this key\n", c->out);
        } else {
            c->sum->logs++;
            if (f->len == 0 || explained)
                continue;
            header(c, "gap in event seq", "log", f->branch, f->key);
            fprintf(c->out, "  the final length is %" PRIu64 " but no append was made\n",
                    f->len);
        }
    }
    sm_free(changed);
    return 0;
}

int check_history(const struct hist *h, const struct check_limits *lim, FILE *out,
                  struct check_summary *sum)
{
    struct ctx c = {.h = h, .lim = lim, .out = out, .sum = sum};
    int rc = STRATA_OUT_OF_MEMORY;

    memset(sum, 0, sizeof *sum);
    if (lim->budget_ms != 0)
        c.deadline_ns = clock_mono_ns() + lim->budget_ms * UINT64_C(1000000);
    c.order = sm_malloc((h->n_ops + 1) * sizeof *c.order);
    c.finals = sm_malloc((h->n_finals + 1) * sizeof *c.finals);
    c.final_used = sm_calloc(h->n_finals + 1, sizeof *c.final_used);
    if (c.order == NULL || c.finals == NULL || c.final_used == NULL)
        goto out;
    for (size_t i = 0; i < h->n_ops; i++)
        c.order[i] = i;
    qsort_r(c.order, h->n_ops, sizeof *c.order, cmp_group, (void *)h->ops);
    if (h->n_finals > 0)
        memcpy(c.finals, h->finals, h->n_finals * sizeof *c.finals);
    qsort(c.finals, h->n_finals, sizeof *c.finals, cmp_final);

    for (size_t i = 0; i < h->n_ops;) {
        size_t j = i + 1;
        while (j < h->n_ops && h->ops[c.order[j]].branch == h->ops[c.order[i]].branch)
            j++;
        if ((rc = check_branch(&c, i, j)) != 0)
            goto out;
        i = j;
    }
    rc = check_lonely_finals(&c);
out:
    sm_free(c.order);
    sm_free(c.finals);
    sm_free(c.final_used);
    return rc;
}
