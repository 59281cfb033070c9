/* Engine core: the branch table, MVCC reads through fork chains, and atomic installation
 * of a command's staged writes at one new version. */
#include "idem.h"
#include "internal.h"

#include <string.h>

void storage_config_default(struct storage_config *cfg)
{
    cfg->max_key_bytes = 1024;
    cfg->max_value_bytes = 16u << 20;
    /* msgpack-c decodes at most 32 nested containers (MSGPACK_EMBED_STACK_SIZE); a value
     * travels inside up to 8 levels of command envelope (command map, batch/txn ops,
     * Raft entry), so values may nest 24 deep. See docs/architecture.md. */
    cfg->max_depth = 24;
    cfg->max_fork_depth = 32;
    cfg->idem_clients = IDEM_DEFAULT_CLIENTS;
    cfg->idem_window = IDEM_DEFAULT_WINDOW;
    cfg->idem_bytes = IDEM_DEFAULT_BYTES;
}

size_t ikey_make(uint8_t *out, const char *space, size_t slen, int tag, const void *rest,
                 size_t rlen)
{
    out[0] = (uint8_t)slen;
    memcpy(out + 1, space, slen);
    out[1 + slen] = (uint8_t)tag;
    if (rlen)
        memcpy(out + 2 + slen, rest, rlen);
    return 2 + slen + rlen;
}

int ikey_split(const uint8_t *k, size_t klen, const uint8_t **space, size_t *slen, int *tag,
               const uint8_t **rest, size_t *rlen)
{
    if (klen < 2 || k[0] == 0 || (size_t)k[0] + 2 > klen)
        return -1;
    *slen = k[0];
    *space = k + 1;
    *tag = k[1 + k[0]];
    *rest = k + 2 + k[0];
    *rlen = klen - 2 - k[0];
    return 0;
}

/* ---- Branch table ---------------------------------------------------------------------- */

struct branch *branch_find(struct storage *s, const char *name, size_t len)
{
    for (size_t i = 0; i < s->nbranches; i++) {
        struct branch *b = s->branches[i];
        if (b->name_len == len && !b->deleted && memcmp(b->name, name, len) == 0)
            return b;
    }
    return NULL;
}

int branch_add(struct storage *s, const char *name, size_t len, struct branch *parent,
               uint64_t fork_ver, struct branch **out)
{
    struct branch **arr = sm_realloc(s->branches, (s->nbranches + 1) * sizeof *arr);
    if (arr == NULL)
        return STRATA_OUT_OF_MEMORY;
    s->branches = arr;
    struct branch *b = sm_calloc(1, sizeof *b);
    if (b == NULL)
        return STRATA_OUT_OF_MEMORY;
    b->name = sm_strndup(name, len);
    b->name_len = len;
    if (b->name == NULL) {
        sm_free(b);
        return STRATA_OUT_OF_MEMORY;
    }
    b->id = s->next_branch_id++;
    b->refs = 1;
    b->parent = parent;
    b->fork_ver = fork_ver;
    b->depth = parent ? parent->depth + 1 : 0;
    b->flat = false;
    if (parent)
        parent->refs++;
    btree_init(&b->idx);
    hindex_init(&b->hx);
    s->branches[s->nbranches++] = b;
    *out = b;
    return 0;
}

void version_chain_free(struct version *v)
{
    while (v) {
        struct version *o = v->older;
        sm_free(v);
        v = o;
    }
}

static void free_entry(struct entry *e)
{
    version_chain_free(e->head);
    sm_free(e);
}

int branch_insert(struct branch *b, struct entry *e)
{
    if (hindex_reserve(&b->hx, hindex_count(&b->hx) + 1) || btree_insert(&b->idx, e))
        return STRATA_OUT_OF_MEMORY;
    hindex_insert(&b->hx, e);
    return 0;
}

static void branch_destroy(struct branch *b)
{
    hindex_close(&b->hx);
    btree_close(&b->idx, free_entry);
    sm_free(b->log);
    sm_free(b->name);
    sm_free(b);
}

/* Drop one reference; a branch with none left is freed and releases its parent. */
void branch_unref(struct storage *s, struct branch *b)
{
    while (b && --b->refs == 0) {
        struct branch *parent = b->parent;
        size_t i = 0;
        while (i < s->nbranches && s->branches[i] != b)
            i++;
        if (i < s->nbranches) {
            memmove(&s->branches[i], &s->branches[i + 1],
                    (s->nbranches - i - 1) * sizeof s->branches[0]);
            s->nbranches--;
        }
        branch_destroy(b);
        b = parent;
    }
}

void storage_clear(struct storage *s)
{
    for (size_t i = 0; i < s->nbranches; i++)
        branch_destroy(s->branches[i]);
    sm_free(s->branches);
    s->branches = NULL;
    s->nbranches = 0;
    idem_clear(&s->idem);
    s->version = 0;
    s->last_ts = 0;
    s->next_branch_id = 1;
}

int storage_new(const struct storage_config *cfg, struct storage **out)
{
    struct storage *s = sm_calloc(1, sizeof *s);
    if (s == NULL)
        return STRATA_OUT_OF_MEMORY;
    if (cfg)
        s->cfg = *cfg;
    else
        storage_config_default(&s->cfg);
    /* Internal keys live in fixed IKEY_MAX buffers (and entry key lengths in 16 bits). */
    if (s->cfg.max_key_bytes == 0 || s->cfg.max_key_bytes > STORAGE_MAX_KEY_BYTES ||
        s->cfg.max_depth < 1 || s->cfg.max_depth > 24) {
        sm_free(s);
        return STRATA_INVALID_ARGUMENT;
    }
    /* Configurations built by hand before these fields existed leave them 0. */
    if (s->cfg.idem_clients == 0)
        s->cfg.idem_clients = IDEM_DEFAULT_CLIENTS;
    if (s->cfg.idem_window == 0)
        s->cfg.idem_window = IDEM_DEFAULT_WINDOW;
    if (s->cfg.idem_bytes == 0)
        s->cfg.idem_bytes = IDEM_DEFAULT_BYTES;
    s->next_branch_id = 1;
    buf_init(&s->scratch);
    if (!msgpack_zone_init(&s->zone, 2048)) {
        sm_free(s);
        return STRATA_OUT_OF_MEMORY;
    }
    struct branch *b;
    int rc = branch_add(s, "default", 7, NULL, 0, &b);
    if (rc) {
        storage_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void storage_free(struct storage *s)
{
    if (s == NULL)
        return;
    storage_clear(s);
    msgpack_zone_destroy(&s->zone);
    buf_close(&s->scratch);
    sm_free(s);
}

void storage_get_config(const struct storage *s, struct storage_config *cfg)
{
    *cfg = s->cfg;
}

void storage_swap(struct storage *a, struct storage *b)
{
    struct storage t = *a;
    a->version = b->version;
    a->last_ts = b->last_ts;
    a->next_branch_id = b->next_branch_id;
    a->branches = b->branches;
    a->nbranches = b->nbranches;
    a->idem = b->idem;
    b->version = t.version;
    b->last_ts = t.last_ts;
    b->next_branch_id = t.next_branch_id;
    b->branches = t.branches;
    b->nbranches = t.nbranches;
    b->idem = t.idem;
}

uint64_t storage_version(const struct storage *s)
{
    return s->version;
}

int64_t storage_last_ts(const struct storage *s)
{
    return s->last_ts;
}

/* ---- Reads ----------------------------------------------------------------------------- */

int chain_visible(const struct entry *e, uint64_t limit, const struct read_at *at,
                  const struct version **out)
{
    const struct version *v = e->head;
    for (; v; v = v->older) {
        if (v->ver <= limit && (!at->by_ts || v->ts <= at->ts)) {
            *out = v;
            return 1;
        }
        if (v->vflags & VF_GAP) {
            struct gap g = version_gap(v);
            if (g.ver <= limit && (!at->by_ts || g.ts <= at->ts))
                return -1; /* the visible version was among the removed ones */
        }
    }
    return 0;
}

static int history_err(struct err *err, const struct branch *b)
{
    return err_set(err, STRATA_HISTORY_UNAVAILABLE,
                   "requested version of this key in branch '%s' was pruned by retention",
                   b->name);
}

int view_get(struct branch *b, const uint8_t *k, size_t klen, const struct read_at *at,
             const struct version **out, struct err *err)
{
    uint64_t limit = at->ver;
    *out = NULL;
    for (; b; limit = limit < b->fork_ver ? limit : b->fork_ver, b = b->flat ? NULL : b->parent) {
        struct entry *e = branch_get(b, k, klen);
        if (e == NULL)
            continue;
        const struct version *v;
        int r = chain_visible(e, limit, at, &v);
        if (r < 0)
            return history_err(err, b);
        if (r > 0) {
            *out = v->len == VLEN_TOMB ? NULL : v;
            return 0;
        }
    }
    return 0;
}

void view_iter_init(struct view_iter *vi, struct branch *b, const struct read_at *at,
                    const uint8_t *start, size_t slen, const uint8_t *end, size_t elen)
{
    vi->n = 0;
    vi->at = *at;
    vi->end = end;
    vi->endlen = elen;
    uint64_t limit = at->ver;
    for (; b && vi->n < VIEW_MAX_LEVELS; b = b->flat ? NULL : b->parent) {
        vi->lv[vi->n].b = b;
        vi->lv[vi->n].limit = limit;
        btree_seek(&b->idx, start, slen, &vi->lv[vi->n].it);
        vi->lv[vi->n].cur = btree_next(&vi->lv[vi->n].it);
        vi->n++;
        if (b->fork_ver < limit)
            limit = b->fork_ver;
    }
}

int view_iter_next(struct view_iter *vi, struct entry **eout, const struct version **vout,
                   struct err *err)
{
    for (;;) {
        struct entry *min = NULL;
        for (int i = 0; i < vi->n; i++) {
            struct entry *c = vi->lv[i].cur;
            if (c && (min == NULL || bkey_cmp(c->key, c->klen, min->key, min->klen) < 0))
                min = c;
        }
        if (min == NULL)
            return 0;
        if (vi->end && bkey_cmp(min->key, min->klen, vi->end, vi->endlen) >= 0)
            return 0;
        /* Nearest level with a visible version of this key decides. */
        const struct version *found = NULL;
        int decided = 0, rc = 0;
        struct entry *owner = NULL;
        for (int i = 0; i < vi->n; i++) {
            struct entry *c = vi->lv[i].cur;
            if (c == NULL || bkey_cmp(c->key, c->klen, min->key, min->klen) != 0)
                continue;
            if (!decided) {
                const struct version *v;
                int r = chain_visible(c, vi->lv[i].limit, &vi->at, &v);
                if (r < 0) {
                    rc = history_err(err, vi->lv[i].b);
                    decided = 1;
                } else if (r > 0) {
                    found = v;
                    owner = c;
                    decided = 1;
                }
            }
            vi->lv[i].cur = btree_next(&vi->lv[i].it);
        }
        if (rc)
            return rc;
        if (found && found->len != VLEN_TOMB) {
            *eout = owner;
            *vout = found;
            return 1;
        }
    }
}

int view_count(struct branch *b, const struct read_at *at, const uint8_t *start, size_t slen,
               const uint8_t *end, size_t elen, uint64_t *n, struct err *err)
{
    struct view_iter vi;
    view_iter_init(&vi, b, at, start, slen, end, elen);
    struct entry *e;
    const struct version *v;
    int r;
    *n = 0;
    while ((r = view_iter_next(&vi, &e, &v, err)) == 1)
        (*n)++;
    return r;
}

size_t key_prefix_end(uint8_t *out, const uint8_t *key, size_t klen)
{
    memmove(out, key, klen); /* out may be key */
    while (klen > 0 && out[klen - 1] == 0xff)
        klen--;
    if (klen > 0)
        out[klen - 1]++;
    return klen;
}

/* ---- Staging and commit ------------------------------------------------------------- */

void stage_init(struct stage *st)
{
    st->ops = NULL;
    st->n = st->cap = 0;
    st->slots = NULL;
    st->nslots = 0;
}

void stage_close(struct stage *st)
{
    for (size_t i = 0; i < st->n; i++) {
        sm_free(st->ops[i].v);
        if (st->ops[i].fresh)
            sm_free(st->ops[i].e);
    }
    sm_free(st->ops);
    sm_free(st->slots);
    stage_init(st);
}

/* Big commands (batches, merges, space deletes) stage many writes: past STAGE_LINEAR
 * ops, lookups go through a hash table instead of a scan, so staging stays O(n). The
 * branch pointer only spreads the hash; results never depend on it. */
static size_t stage_hash(const struct branch *b, const uint8_t *k, size_t klen)
{
    return (size_t)(hindex_hash(k, klen) ^ ((uint64_t)(uintptr_t)b * 0x9E3779B97F4A7C15ull));
}

static int stage_rehash(struct stage *st, size_t want)
{
    size_t n = 64;
    while (n < want * 2)
        n *= 2;
    uint32_t *slots = sm_calloc(n, sizeof *slots);
    if (slots == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < st->n; i++) {
        size_t j = stage_hash(st->ops[i].b, st->ops[i].key, st->ops[i].klen) & (n - 1);
        while (slots[j])
            j = (j + 1) & (n - 1);
        slots[j] = (uint32_t)i + 1;
    }
    sm_free(st->slots);
    st->slots = slots;
    st->nslots = n;
    return 0;
}

const struct stage_op *stage_find(const struct stage *st, const struct branch *b,
                                  const uint8_t *k, size_t klen)
{
    if (st->slots) {
        size_t j = stage_hash(b, k, klen) & (st->nslots - 1);
        for (; st->slots[j]; j = (j + 1) & (st->nslots - 1)) {
            const struct stage_op *op = &st->ops[st->slots[j] - 1];
            if (op->b == b && op->klen == klen && memcmp(op->key, k, klen) == 0)
                return op;
        }
        return NULL;
    }
    for (size_t i = st->n; i-- > 0;) {
        const struct stage_op *op = &st->ops[i];
        if (op->b == b && op->klen == klen && memcmp(op->key, k, klen) == 0)
            return op;
    }
    return NULL;
}

int stage_put(struct stage *st, struct branch *b, const uint8_t *k, size_t klen,
              const uint8_t *val, size_t len)
{
    size_t vlen = val ? len : 0;
    struct version *v = sm_malloc(VERSION_SIZE(vlen));
    if (v == NULL)
        return STRATA_OUT_OF_MEMORY;
    v->older = NULL;
    v->vflags = 0;
    v->len = val ? (uint32_t)len : VLEN_TOMB;
    if (vlen)
        memcpy(v->data, val, vlen);
    struct stage_op *op = (struct stage_op *)stage_find(st, b, k, klen);
    if (op) {
        sm_free(op->v);
        op->v = v;
        op->val = val ? v->data : NULL;
        op->len = v->len;
        return 0;
    }
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 8;
        struct stage_op *ops = sm_realloc(st->ops, cap * sizeof *ops);
        if (ops == NULL)
            goto err_free_v;
        st->ops = ops;
        st->cap = cap;
    }
    if (st->n + 1 > STAGE_LINEAR && (st->n + 1) * 2 > st->nslots && stage_rehash(st, st->n + 1))
        goto err_free_v;
    struct entry *e = branch_get(b, k, klen);
    bool fresh = e == NULL;
    if (fresh) {
        e = sm_malloc(ENTRY_SIZE(klen));
        if (e == NULL)
            goto err_free_v;
        e->head = NULL;
        e->flags = 0;
        e->klen = (uint16_t)klen;
        memcpy(e->key, k, klen);
    }
    st->ops[st->n++] = (struct stage_op){b, e->key, klen, val ? v->data : NULL, v->len, v, e, fresh};
    if (st->slots) {
        size_t j = stage_hash(b, k, klen) & (st->nslots - 1);
        while (st->slots[j])
            j = (j + 1) & (st->nslots - 1);
        st->slots[j] = (uint32_t)st->n;
    }
    return 0;
err_free_v:
    sm_free(v);
    return STRATA_OUT_OF_MEMORY;
}

int stage_read(const struct stage *st, struct branch *b, const uint8_t *k, size_t klen,
               const uint8_t **val, size_t *len, struct err *err)
{
    const struct stage_op *op = st ? stage_find(st, b, k, klen) : NULL;
    if (op) {
        *val = op->val;
        *len = op->val ? op->len : 0;
        return 0;
    }
    struct read_at head = {UINT64_MAX, 0, false};
    const struct version *v;
    int rc = view_get(b, k, klen, &head, &v, err);
    if (rc)
        return rc;
    *val = v ? v->data : NULL;
    *len = v ? v->len : 0;
    return 0;
}

int stage_commit(struct storage *s, struct stage *st, int64_t ts, uint64_t *ver_out,
                 int64_t *ts_out)
{
    if (st->n == 0) {
        if (ver_out)
            *ver_out = s->version;
        if (ts_out)
            *ts_out = s->last_ts;
        return 0;
    }
    uint64_t ver = s->version + 1;
    ts = storage_next_ts(s, ts);
    /* Phase 1: everything that can fail, before anything is visible. */
    for (size_t i = 0; i < st->n; i++) {
        struct branch *b = st->ops[i].b;
        if (hindex_reserve(&b->hx, hindex_count(&b->hx) + st->n))
            return STRATA_OUT_OF_MEMORY;
        if (b->caplog < b->nlog + st->n) {
            size_t cap = b->caplog ? b->caplog * 2 : 16;
            if (cap < b->nlog + st->n)
                cap = b->nlog + st->n;
            struct change *log = sm_realloc(b->log, cap * sizeof *log);
            if (log == NULL)
                return STRATA_OUT_OF_MEMORY;
            b->log = log;
            b->caplog = cap;
        }
    }
    /* Inserting new entries can fail (tree nodes). An entry with an empty chain is
     * invisible to every read and skipped by snapshots, so on failure the ones already
     * inserted simply stay, empty, in both indexes: the state is unchanged. */
    for (size_t i = 0; i < st->n; i++) {
        struct stage_op *op = &st->ops[i];
        if (!op->fresh)
            continue;
        if (btree_insert(&op->b->idx, op->e))
            return STRATA_OUT_OF_MEMORY;
        hindex_insert(&op->b->hx, op->e); /* capacity reserved above */
        op->fresh = false;                /* owned by the branch now */
    }
    /* Phase 2: link. Nothing below fails. */
    for (size_t i = 0; i < st->n; i++) {
        struct stage_op *op = &st->ops[i];
        struct branch *b = op->b;
        struct version *v = op->v;
        v->ver = ver;
        v->ts = ts;
        v->older = op->e->head;
        op->e->head = v;
        op->v = NULL;
        b->log[b->nlog++] = (struct change){ver, op->e};
        retention_apply_entry(s, b, op->e, ts);
    }
    s->version = ver;
    s->last_ts = ts;
    if (ver_out)
        *ver_out = ver;
    if (ts_out)
        *ts_out = ts;
    return 0;
}
