/* Idempotency keys: the table of remembered answers per client, its bounds and its
 * snapshot section. Everything here is a function of the commands and their log
 * timestamps, never of the applying replica's clock, so every replica holds the same
 * table (it is part of the snapshot, hence of the state digest). */
#include "idem.h"

#include <stdio.h>
#include <string.h>

/* ---- The key ------------------------------------------------------------------------- */

static void hex(const uint8_t *p, char out[2 * IDEM_CLIENT_LEN + 1])
{
    for (size_t i = 0; i < IDEM_CLIENT_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

int idem_key_parse(const msgpack_object *cmd, struct idem_key *k, struct err *err)
{
    k->present = false;
    const msgpack_object *o = mp_map_get(cmd, IDEM_ARG);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "argument 'idem' must be an array [client, seq, ack, retry]");
    const msgpack_object *f = o->via.array.ptr;
    if (f[0].type != MSGPACK_OBJECT_BIN || f[0].via.bin.size != IDEM_CLIENT_LEN)
        return err_set(err, STRATA_INVALID_ARGUMENT, "idem client must be %d bytes of binary",
                       IDEM_CLIENT_LEN);
    if (f[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[1].via.u64 == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "idem seq must be an integer >= 1");
    if (f[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[2].via.u64 > f[1].via.u64)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "idem ack must be a non-negative integer no greater than seq");
    if (f[3].type != MSGPACK_OBJECT_BOOLEAN)
        return err_set(err, STRATA_INVALID_ARGUMENT, "idem retry must be a boolean");
    memcpy(k->client, f[0].via.bin.ptr, IDEM_CLIENT_LEN);
    k->seq = f[1].via.u64;
    k->ack = f[2].via.u64;
    k->retry = f[3].via.boolean;
    k->present = true;
    return 0;
}

/* ---- Searching ----------------------------------------------------------------------- */

/* The slot of client id: 1 found at *pos, 0 absent (*pos = where it would go). */
static int find_client(const struct idem_table *t, const uint8_t *id, size_t *pos)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(t->c[mid]->id, id, IDEM_CLIENT_LEN);
        if (c == 0) {
            *pos = mid;
            return 1;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return 0;
}

static int find_seq(const struct idem_client *c, uint64_t seq, uint32_t *pos)
{
    uint32_t lo = 0, hi = c->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->ans[mid]->seq == seq) {
            *pos = mid;
            return 1;
        }
        if (c->ans[mid]->seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return 0;
}

int idem_lookup(const struct storage *s, const struct idem_key *k, const struct idem_answer **ans,
                struct err *err)
{
    const struct idem_table *t = &s->idem;
    *ans = NULL;
    size_t pos;
    char id[2 * IDEM_CLIENT_LEN + 1];
    if (!find_client(t, k->client, &pos)) {
        if (k->retry && t->dropped > 0) {
            hex(k->client, id);
            return err_set(err, STRATA_OUTCOME_FORGOTTEN,
                           "the outcome of request seq %llu of client %s is not known: this "
                           "shard does not remember the client and has dropped %llu client "
                           "records (the write may have been applied)",
                           (unsigned long long)k->seq, id, (unsigned long long)t->dropped);
        }
        return 0;
    }
    const struct idem_client *c = t->c[pos];
    uint32_t i;
    if (find_seq(c, k->seq, &i)) {
        *ans = c->ans[i];
        return 0;
    }
    if (k->seq <= c->floor) {
        hex(k->client, id);
        return err_set(err, STRATA_OUTCOME_FORGOTTEN,
                       "the outcome of request seq %llu of client %s is no longer remembered "
                       "(seqs up to %llu are forgotten; the write may have been applied)",
                       (unsigned long long)k->seq, id, (unsigned long long)c->floor);
    }
    return 0;
}

/* ---- Recording and bounds ------------------------------------------------------------ */

static void client_free(struct idem_table *t, struct idem_client *c)
{
    for (uint32_t i = 0; i < c->n; i++) {
        t->bytes -= c->ans[i]->len;
        sm_free(c->ans[i]);
    }
    sm_free(c->ans);
    sm_free(c);
}

void idem_clear(struct idem_table *t)
{
    for (size_t i = 0; i < t->n; i++)
        client_free(t, t->c[i]);
    sm_free(t->c);
    *t = (struct idem_table){0};
}

/* Forget the client's answers with seq < below, raising its floor. */
static void drop_below(struct idem_table *t, struct idem_client *c, uint64_t below)
{
    uint32_t k = 0;
    while (k < c->n && c->ans[k]->seq < below) {
        t->bytes -= c->ans[k]->len;
        sm_free(c->ans[k]);
        k++;
    }
    if (k) {
        memmove(c->ans, c->ans + k, (c->n - k) * sizeof *c->ans);
        c->n -= k;
    }
    if (below > 0 && below - 1 > c->floor)
        c->floor = below - 1;
}

/* Evict whole clients, least recently written first (ties by id), except `keep`, while
 * the table is over its count or byte bound. */
static void evict_clients(struct storage *s, const struct idem_client *keep)
{
    struct idem_table *t = &s->idem;
    while ((t->n > s->cfg.idem_clients || t->bytes > s->cfg.idem_bytes) && t->n > 1) {
        size_t victim = SIZE_MAX;
        for (size_t i = 0; i < t->n; i++) {
            if (t->c[i] == keep)
                continue;
            /* The array is in id order, so the first of equal timestamps has the least id. */
            if (victim == SIZE_MAX || t->c[i]->last_ts < t->c[victim]->last_ts)
                victim = i;
        }
        if (victim == SIZE_MAX)
            break;
        client_free(t, t->c[victim]);
        memmove(t->c + victim, t->c + victim + 1, (t->n - victim - 1) * sizeof *t->c);
        t->n--;
        t->dropped++;
    }
}

/* The client's own answers beyond the window go, oldest first. */
static void trim_client(struct storage *s, struct idem_client *c)
{
    while (c->n > s->cfg.idem_window)
        drop_below(&s->idem, c, c->ans[0]->seq + 1);
}

/* Still over the byte bound with every other client gone: the client's older answers
 * go too (its newest stays, whatever its size). */
static void trim_bytes(struct storage *s, struct idem_client *c)
{
    while (c->n > 1 && s->idem.bytes > s->cfg.idem_bytes)
        drop_below(&s->idem, c, c->ans[0]->seq + 1);
}

/* Room for `more` more pointers, so that installing never allocates. Grows at least
 * twofold: records are added one at a time. Grown capacity is not state. */
static int reserve_clients(struct idem_table *t, size_t more)
{
    if (t->n + more <= t->cap)
        return 0;
    size_t cap = t->cap ? 2 * t->cap : 16;
    if (cap < t->n + more)
        cap = t->n + more;
    struct idem_client **nc = sm_realloc(t->c, cap * sizeof *nc);
    if (nc == NULL)
        return STRATA_OUT_OF_MEMORY;
    t->c = nc;
    t->cap = cap;
    return 0;
}

static int reserve_answers(struct idem_client *c, uint32_t more)
{
    if (c->n + more <= c->cap)
        return 0;
    uint32_t cap = c->cap ? 2 * c->cap : 4;
    if (cap < c->n + more)
        cap = c->n + more;
    struct idem_answer **na = sm_realloc(c->ans, cap * sizeof *na);
    if (na == NULL)
        return STRATA_OUT_OF_MEMORY;
    c->ans = na;
    c->cap = cap;
    return 0;
}

int idem_prepare(struct storage *s, const struct idem_key *k, uint64_t branch,
                 const uint8_t *result, size_t len, struct idem_pending *p)
{
    struct idem_table *t = &s->idem;
    *p = (struct idem_pending){0};
    if (len > UINT32_MAX)
        return STRATA_OUT_OF_MEMORY;
    p->a = sm_malloc(sizeof *p->a + len);
    if (p->a == NULL)
        return STRATA_OUT_OF_MEMORY;
    p->a->seq = k->seq;
    p->a->branch = branch;
    p->a->len = (uint32_t)len;
    memcpy(p->a->data, result, len);
    struct idem_client *c;
    if (find_client(t, k->client, &p->pos)) {
        c = t->c[p->pos];
    } else {
        c = p->fresh = sm_calloc(1, sizeof *c);
        if (c == NULL || reserve_clients(t, 1))
            goto oom;
        memcpy(c->id, k->client, IDEM_CLIENT_LEN);
    }
    if (reserve_answers(c, 1))
        goto oom;
    return 0;
oom:
    /* Grown arrays stay (they are capacity, not state). */
    idem_discard(p);
    return STRATA_OUT_OF_MEMORY;
}

void idem_discard(struct idem_pending *p)
{
    sm_free(p->a);
    if (p->fresh)
        sm_free(p->fresh->ans);
    sm_free(p->fresh);
    *p = (struct idem_pending){0};
}

void idem_install(struct storage *s, const struct idem_key *k, struct idem_pending *p, int64_t ts)
{
    struct idem_table *t = &s->idem;
    struct idem_client *c;
    if (p->fresh) {
        c = p->fresh;
        memmove(t->c + p->pos + 1, t->c + p->pos, (t->n - p->pos) * sizeof *t->c);
        t->c[p->pos] = c;
        t->n++;
    } else {
        c = t->c[p->pos];
    }
    uint32_t i;
    int found = find_seq(c, k->seq, &i);
    (void)found; /* idem_lookup ran first: the seq is neither remembered nor forgotten */
    memmove(c->ans + i + 1, c->ans + i, (c->n - i) * sizeof *c->ans);
    c->ans[i] = p->a;
    c->n++;
    t->bytes += p->a->len;
    if (ts > c->last_ts)
        c->last_ts = ts;
    *p = (struct idem_pending){0};
    drop_below(t, c, k->ack);
    trim_client(s, c);
    evict_clients(s, c);
    trim_bytes(s, c);
}

/* ---- Snapshot ------------------------------------------------------------------------ */

static void pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}

bool idem_empty(const struct idem_table *t)
{
    return t->n == 0 && t->dropped == 0;
}

void idem_pack(const struct idem_table *t, msgpack_packer *pk)
{
    msgpack_pack_array(pk, 3);
    mp_pack_cstr(pk, "IDEM");
    msgpack_pack_uint64(pk, t->dropped);
    msgpack_pack_uint64(pk, t->n);
    for (size_t i = 0; i < t->n; i++) {
        const struct idem_client *c = t->c[i];
        msgpack_pack_array(pk, 4);
        pack_bin(pk, c->id, IDEM_CLIENT_LEN);
        msgpack_pack_uint64(pk, c->floor);
        msgpack_pack_int64(pk, c->last_ts);
        msgpack_pack_array(pk, c->n);
        for (uint32_t j = 0; j < c->n; j++) {
            msgpack_pack_array(pk, 3);
            msgpack_pack_uint64(pk, c->ans[j]->seq);
            msgpack_pack_uint64(pk, c->ans[j]->branch);
            pack_bin(pk, c->ans[j]->data, c->ans[j]->len);
        }
    }
}

static int corrupt(struct err *err, const char *what)
{
    return err_set(err, STRATA_INVALID_ARGUMENT,
                   "corrupt snapshot (format 2): idempotency table %s", what);
}

static bool is_int64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 <= (uint64_t)INT64_MAX
                                                      : o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

/* Append a client record read from o (validated) at the end of t (ids ascending). */
static int restore_client(struct idem_table *t, const msgpack_object *o, struct err *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4)
        return corrupt(err, "client record");
    const msgpack_object *f = o->via.array.ptr;
    if (f[0].type != MSGPACK_OBJECT_BIN || f[0].via.bin.size != IDEM_CLIENT_LEN ||
        f[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || !is_int64(&f[2]) ||
        f[3].type != MSGPACK_OBJECT_ARRAY)
        return corrupt(err, "client fields");
    if (t->n && memcmp(t->c[t->n - 1]->id, f[0].via.bin.ptr, IDEM_CLIENT_LEN) >= 0)
        return corrupt(err, "clients out of order");
    const msgpack_object *as = &f[3];
    if (reserve_clients(t, 1))
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    struct idem_client *c = sm_calloc(1, sizeof *c);
    if (c == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    memcpy(c->id, f[0].via.bin.ptr, IDEM_CLIENT_LEN);
    c->floor = f[1].via.u64;
    c->last_ts = f[2].via.i64;
    t->c[t->n++] = c; /* owned by the table from here: freed with it on error */
    uint32_t n = as->via.array.size;
    if (n) {
        c->ans = sm_calloc(n, sizeof *c->ans);
        if (c->ans == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        c->cap = n;
    }
    uint64_t last = c->floor;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *a = &as->via.array.ptr[i];
        if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 3 ||
            a->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            a->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            a->via.array.ptr[2].type != MSGPACK_OBJECT_BIN)
            return corrupt(err, "answer fields");
        uint64_t seq = a->via.array.ptr[0].via.u64;
        if (seq <= last)
            return corrupt(err, "answer seqs out of order");
        last = seq;
        uint32_t len = a->via.array.ptr[2].via.bin.size;
        struct idem_answer *x = sm_malloc(sizeof *x + len);
        if (x == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        x->seq = seq;
        x->branch = a->via.array.ptr[1].via.u64;
        x->len = len;
        memcpy(x->data, a->via.array.ptr[2].via.bin.ptr, len);
        c->ans[c->n++] = x;
        t->bytes += len;
    }
    return 0;
}

int idem_restore(struct idem_table *t, const msgpack_object *head, idem_next_fn next, void *arg,
                 struct err *err)
{
    if (head->type != MSGPACK_OBJECT_ARRAY || head->via.array.size != 3 ||
        !mp_str_eq(&head->via.array.ptr[0], "IDEM") ||
        head->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        head->via.array.ptr[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return corrupt(err, "header");
    t->dropped = head->via.array.ptr[1].via.u64;
    uint64_t n = head->via.array.ptr[2].via.u64;
    if (n == 0 && t->dropped == 0)
        return corrupt(err, "section for an empty table"); /* never written */
    for (uint64_t i = 0; i < n; i++) {
        const msgpack_object *o;
        int rc = next(arg, &o);
        if (rc)
            return rc;
        if ((rc = restore_client(t, o, err)))
            return rc;
    }
    return 0;
}

/* ---- Branch moves ---------------------------------------------------------------------- */

void idem_pack_move(const struct idem_table *t, uint64_t branch, msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint64(pk, t->dropped);
    msgpack_pack_array(pk, (uint32_t)t->n);
    for (size_t i = 0; i < t->n; i++) {
        const struct idem_client *c = t->c[i];
        uint32_t n = 0;
        for (uint32_t j = 0; j < c->n; j++)
            n += c->ans[j]->branch == branch;
        msgpack_pack_array(pk, 4);
        pack_bin(pk, c->id, IDEM_CLIENT_LEN);
        msgpack_pack_uint64(pk, c->floor);
        msgpack_pack_int64(pk, c->last_ts);
        msgpack_pack_array(pk, n);
        for (uint32_t j = 0; j < c->n; j++) {
            if (c->ans[j]->branch != branch)
                continue;
            msgpack_pack_array(pk, 2);
            msgpack_pack_uint64(pk, c->ans[j]->seq);
            pack_bin(pk, c->ans[j]->data, c->ans[j]->len);
        }
    }
}

/* One client of a carried section, ready to install. */
struct merge_item {
    uint8_t id[IDEM_CLIENT_LEN];
    uint64_t floor;
    int64_t last_ts;
    struct idem_client *fresh; /* not in the table at prepare time: its new record */
    struct idem_answer **ans;  /* owned until installed */
    uint32_t n;
};

static int bad_move(struct err *err, const char *what)
{
    return err_set(err, STRATA_INVALID_ARGUMENT, "argument 'blob': idempotency section %s", what);
}

void idem_merge_discard(struct idem_merge *m)
{
    for (uint32_t i = 0; i < m->n; i++) {
        struct merge_item *it = &m->items[i];
        for (uint32_t j = 0; j < it->n; j++)
            sm_free(it->ans[j]);
        sm_free(it->ans);
        if (it->fresh)
            sm_free(it->fresh->ans);
        sm_free(it->fresh);
    }
    sm_free(m->items);
    *m = (struct idem_merge){0};
}

int idem_merge_prepare(struct storage *s, const msgpack_object *o, struct idem_merge *m,
                       struct err *err)
{
    struct idem_table *t = &s->idem;
    *m = (struct idem_merge){0};
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 2 ||
        o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        o->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY)
        return bad_move(err, "is not [dropped, clients]");
    const msgpack_object *cl = &o->via.array.ptr[1];
    m->dropped = o->via.array.ptr[0].via.u64;
    uint32_t n = cl->via.array.size;
    if (n && (m->items = sm_calloc(n, sizeof *m->items)) == NULL)
        goto oom;
    size_t fresh = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *c = &cl->via.array.ptr[i];
        const msgpack_object *f = c->via.array.ptr;
        if (c->type != MSGPACK_OBJECT_ARRAY || c->via.array.size != 4 ||
            f[0].type != MSGPACK_OBJECT_BIN || f[0].via.bin.size != IDEM_CLIENT_LEN ||
            f[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[1].via.u64 == UINT64_MAX ||
            !is_int64(&f[2]) || f[3].type != MSGPACK_OBJECT_ARRAY) {
            /* (a floor of UINT64_MAX would wrap to 0 where it is applied: floor + 1) */
            idem_merge_discard(m);
            return bad_move(err, "client fields");
        }
        if (i && memcmp(m->items[i - 1].id, f[0].via.bin.ptr, IDEM_CLIENT_LEN) >= 0) {
            idem_merge_discard(m);
            return bad_move(err, "clients out of order");
        }
        struct merge_item *it = &m->items[m->n++];
        memcpy(it->id, f[0].via.bin.ptr, IDEM_CLIENT_LEN);
        it->floor = f[1].via.u64;
        it->last_ts = f[2].via.i64;
        uint32_t na = f[3].via.array.size;
        if (na && (it->ans = sm_calloc(na, sizeof *it->ans)) == NULL)
            goto oom;
        uint64_t last = it->floor;
        for (uint32_t j = 0; j < na; j++) {
            const msgpack_object *a = &f[3].via.array.ptr[j];
            if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 2 ||
                a->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                a->via.array.ptr[1].type != MSGPACK_OBJECT_BIN ||
                a->via.array.ptr[0].via.u64 <= last) {
                idem_merge_discard(m);
                return bad_move(err, "answer fields or order");
            }
            last = a->via.array.ptr[0].via.u64;
            uint32_t len = a->via.array.ptr[1].via.bin.size;
            struct idem_answer *x = sm_malloc(sizeof *x + len);
            if (x == NULL)
                goto oom;
            x->seq = last;
            x->branch = 0;
            x->len = len;
            memcpy(x->data, a->via.array.ptr[1].via.bin.ptr, len);
            it->ans[it->n++] = x;
        }
        size_t pos;
        if (find_client(t, it->id, &pos)) {
            if (reserve_answers(t->c[pos], it->n))
                goto oom;
        } else {
            if ((it->fresh = sm_calloc(1, sizeof *it->fresh)) == NULL)
                goto oom;
            if (it->n && (it->fresh->ans = sm_calloc(it->n, sizeof *it->fresh->ans)) == NULL)
                goto oom;
            it->fresh->cap = it->n;
            memcpy(it->fresh->id, it->id, IDEM_CLIENT_LEN);
            fresh++;
        }
    }
    if (reserve_clients(t, fresh))
        goto oom;
    return 0;
oom:
    idem_merge_discard(m);
    return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory importing the idempotency table");
}

void idem_merge_install(struct storage *s, struct idem_merge *m, uint64_t branch)
{
    struct idem_table *t = &s->idem;
    for (uint32_t i = 0; i < m->n; i++) {
        struct merge_item *it = &m->items[i];
        size_t pos;
        struct idem_client *c;
        if (it->fresh) {
            find_client(t, it->id, &pos);
            memmove(t->c + pos + 1, t->c + pos, (t->n - pos) * sizeof *t->c);
            c = t->c[pos] = it->fresh;
            t->n++;
            it->fresh = NULL;
        } else {
            find_client(t, it->id, &pos);
            c = t->c[pos];
        }
        if (it->last_ts > c->last_ts)
            c->last_ts = it->last_ts;
        drop_below(t, c, it->floor + 1);
        for (uint32_t j = 0; j < it->n; j++) {
            struct idem_answer *a = it->ans[j];
            it->ans[j] = NULL;
            uint32_t k;
            if (a->seq <= c->floor || find_seq(c, a->seq, &k)) {
                sm_free(a); /* known here already, or forgotten here */
                continue;
            }
            a->branch = branch;
            memmove(c->ans + k + 1, c->ans + k, (c->n - k) * sizeof *c->ans);
            c->ans[k] = a;
            c->n++;
            t->bytes += a->len;
        }
        it->n = 0;
        trim_client(s, c);
    }
    t->dropped += m->dropped;
    evict_clients(s, NULL);
    idem_merge_discard(m);
}
