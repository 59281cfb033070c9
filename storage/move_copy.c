/* Branch moves, the data: move.export packs a chunk of a branch's retained history into
 * a self-contained, checksummed blob; move.import applies one on the target shard,
 * deterministically, all or nothing, and idempotently (by the chunk's position against
 * the target's import marker). docs/sharding.md "Branch moves". */
#include "idem.h"
#include "move.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CHUNK (1u << 20)

/* ---- Export ------------------------------------------------------------------------- */

static void pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}

/* One record: [key, ver, ts, value | nil, gap_ver?, gap_ts?]. */
static void pack_record(msgpack_packer *pk, const struct entry *e, const struct version *v)
{
    bool gap = (v->vflags & VF_GAP) != 0;
    msgpack_pack_array(pk, gap ? 6 : 4);
    pack_bin(pk, e->key, e->klen);
    msgpack_pack_uint64(pk, v->ver);
    msgpack_pack_int64(pk, v->ts);
    if (v->len == VLEN_TOMB)
        msgpack_pack_nil(pk);
    else
        pack_bin(pk, v->data, v->len);
    if (gap) {
        struct gap g = version_gap(v);
        msgpack_pack_uint64(pk, g.ver);
        msgpack_pack_int64(pk, g.ts);
    }
}

struct chunk {
    struct buf rec; /* packed records */
    msgpack_packer pk;
    uint32_t n;
    size_t max;
    bool oom;
};

/* Add a record unless the chunk is full (it always takes its first one). Returns 1
 * added, 0 full. */
static int chunk_add(struct chunk *c, const struct entry *e, const struct version *v)
{
    size_t before = c->rec.len;
    pack_record(&c->pk, e, v);
    if (c->rec.len == before) { /* the packer failed: out of memory */
        c->oom = true;
        return 0;
    }
    if (c->n > 0 && c->rec.len > c->max) {
        c->rec.len = before;
        return 0;
    }
    c->n++;
    return 1;
}

static int chunk_pack_write(void *data, const char *p, size_t len)
{
    struct chunk *c = data;
    if (buf_append(&c->rec, p, len)) {
        c->oom = true;
        return -1;
    }
    return 0;
}

struct lineage_level {
    struct branch *b;
    uint64_t bound; /* newest version of this level the branch reads */
    struct btree_iter it;
    struct entry *cur;
};

/* The copy: every key of the branch's lineage (its own tree and, for a fork, what it
 * reads through), each with its retained versions at or below `at` level by level —
 * exactly what materializing the fork would copy — oldest first, from the position
 * (after_key, after_ver) on. Sets *last when the lineage is exhausted and *to_key/ver
 * to the last record's key and version. */
static int export_copy(struct exec *x, struct branch *b, uint64_t at, const uint8_t *after_key,
                       size_t after_klen, uint64_t after_ver, struct chunk *c, bool *last,
                       struct buf *to_key, uint64_t *to_ver)
{
    struct lineage_level lv[VIEW_MAX_LEVELS];
    int nl = 0;
    uint64_t bound = at;
    for (struct branch *l = b; l && nl < VIEW_MAX_LEVELS; l = l->flat ? NULL : l->parent) {
        lv[nl].b = l;
        lv[nl].bound = bound;
        btree_seek(&l->idx, after_key ? after_key : (const uint8_t *)"", after_key ? after_klen : 0,
                   &lv[nl].it);
        lv[nl].cur = btree_next(&lv[nl].it);
        nl++;
        if (l->fork_ver < bound)
            bound = l->fork_ver;
    }
    const struct version **chain = NULL;
    size_t cap = 0;
    int rc = 0;
    *last = false;
    for (;;) {
        struct entry *min = NULL;
        for (int i = 0; i < nl; i++)
            if (lv[i].cur &&
                (min == NULL || bkey_cmp(lv[i].cur->key, lv[i].cur->klen, min->key, min->klen) < 0))
                min = lv[i].cur;
        if (min == NULL) {
            *last = true;
            break;
        }
        /* The key's lineage chain, newest first (levels are older and older). */
        size_t n = 0;
        struct entry *key_entry = min;
        bool resume =
            after_key && bkey_cmp(key_entry->key, key_entry->klen, after_key, after_klen) == 0;
        for (int i = 0; i < nl; i++) {
            struct entry *e = lv[i].cur;
            if (e == NULL || bkey_cmp(e->key, e->klen, key_entry->key, key_entry->klen) != 0)
                continue;
            for (const struct version *v = e->head; v; v = v->older) {
                /* Resuming inside a key: what is left of this level is older than the
                 * last version exported and would be skipped — do not walk it (a long
                 * history crossed by many chunks would be walked whole by each). */
                if (resume && v->ver <= after_ver)
                    break;
                if (v->ver > lv[i].bound || (n > 0 && v->ver >= chain[n - 1]->ver))
                    continue;
                if (n == cap) {
                    size_t ncap = cap ? cap * 2 : 64;
                    const struct version **nc = sm_realloc(chain, ncap * sizeof *nc);
                    if (nc == NULL) {
                        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory exporting");
                        goto out;
                    }
                    chain = nc;
                    cap = ncap;
                }
                chain[n++] = v;
            }
        }
        if (move_key_ok(key_entry->key, key_entry->klen)) {
            for (size_t i = n; i-- > 0;) {
                if (resume && chain[i]->ver <= after_ver)
                    continue;
                if (!chunk_add(c, key_entry, chain[i])) {
                    if (c->oom)
                        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory exporting");
                    goto out;
                }
                buf_reset(to_key);
                if (buf_append(to_key, key_entry->key, key_entry->klen)) {
                    rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory exporting");
                    goto out;
                }
                *to_ver = chain[i]->ver;
            }
        }
        /* Every level holding this key moves past it (key_entry may be one of them). */
        uint8_t k[IKEY_MAX];
        size_t klen = key_entry->klen;
        memcpy(k, key_entry->key, klen);
        for (int i = 0; i < nl; i++)
            if (lv[i].cur && bkey_cmp(lv[i].cur->key, lv[i].cur->klen, k, klen) == 0)
                lv[i].cur = btree_next(&lv[i].it);
    }
out:
    sm_free(chain);
    return rc;
}

/* The first change-log index of b with a version above `since`. */
static size_t log_after(const struct branch *b, uint64_t since)
{
    size_t lo = 0, hi = b->nlog;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->log[mid].ver <= since)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The delta: the versions b's change log records from index `from` on, in version order
 * (a version pruned since is skipped; its successor carries the gap). */
static void export_delta(struct branch *b, size_t from, struct chunk *c, size_t *to)
{
    size_t i = from;
    for (; i < b->nlog; i++) {
        const struct change *ch = &b->log[i];
        if (!move_key_ok(ch->e->key, ch->e->klen))
            continue;
        const struct version *v = ch->e->head;
        while (v && v->ver > ch->ver)
            v = v->older;
        if (v == NULL || v->ver != ch->ver)
            continue;
        if (!chunk_add(c, ch->e, v))
            break;
    }
    *to = i;
}

static void pack_pos(msgpack_packer *pk, bool has, const uint8_t *k, size_t klen, uint64_t ver)
{
    if (!has) {
        msgpack_pack_nil(pk);
        return;
    }
    msgpack_pack_array(pk, 2);
    pack_bin(pk, k, klen);
    msgpack_pack_uint64(pk, ver);
}

static int arg_bin_opt(struct exec *x, const char *name, const uint8_t **p, size_t *len)
{
    const msgpack_object *o = (arg_get)(x, name, strlen(name));
    if (o == NULL)
        return 0;
    if (o->type != MSGPACK_OBJECT_BIN)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument '%s' must be binary", name);
    *p = (const uint8_t *)o->via.bin.ptr;
    *len = o->via.bin.size;
    return 0;
}

/* What one export reads: a copy chunk (after the position) or a delta chunk (from a log
 * index or after a version), at most max bytes of records. */
struct export_req {
    bool copy;
    uint64_t at, max;
    const uint8_t *after_key; /* copy: NULL before the first key */
    size_t after_klen;
    uint64_t after_ver;
    bool has_since;           /* delta: from the first version above `since`... */
    uint64_t since, from_pos; /* ...or from change-log index from_pos */
    uint64_t fence;           /* the move id the blob says fenced the branch; 0: the marker's */
};

/* Pack {blob, last, at, records, fenced} for one export of b into pk. */
static int export_pack(struct exec *x, struct branch *b, const struct export_req *q,
                       msgpack_packer *out)
{
    int rc = 0;
    struct chunk c = {.max = q->max};
    buf_init(&c.rec);
    msgpack_packer_init(&c.pk, &c, chunk_pack_write);
    struct buf to_key, blob;
    buf_init(&to_key);
    buf_init(&blob);
    uint64_t to_ver = 0;
    size_t from = 0, to = 0;
    bool last = false;
    if (q->copy) {
        rc = export_copy(x, b, q->at, q->after_key, q->after_klen, q->after_ver, &c, &last,
                         &to_key, &to_ver);
    } else {
        from = q->has_since ? log_after(b, q->since) : (size_t)q->from_pos;
        export_delta(b, from, &c, &to);
        last = to == b->nlog;
        if (c.oom)
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory exporting");
    }
    if (rc)
        goto out;
    struct fence_marker f;
    bool fenced = q->fence || (move_fence_get(b, &f) && f.state != FENCE_UNFENCED);
    uint64_t fence_id = q->fence ? q->fence : fenced ? f.move_id : 0;
    /* The chunk that ends a fenced branch's history also carries what the idempotency
     * table knows for it, so a retry that reaches the target shard is answered there. */
    bool carry = fenced && !q->copy && last && !idem_empty(&x->s->idem);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &blob, buf_pack_write);
    if (buf_append(&blob, MOVE_MAGIC, 8) ||
        buf_append_be32(&blob, carry ? MOVE_FORMAT_IDEM : MOVE_FORMAT))
        goto oom;
    msgpack_pack_array(&pk, carry ? 3 : 2);
    msgpack_pack_map(&pk, 14);
    mp_pack_cstr(&pk, "branch");
    mp_pack_str(&pk, b->name, b->name_len);
    mp_pack_cstr(&pk, "branch_id");
    msgpack_pack_uint64(&pk, b->id);
    mp_pack_cstr(&pk, "mode");
    mp_pack_cstr(&pk, q->copy ? "copy" : "delta");
    mp_pack_cstr(&pk, "at");
    msgpack_pack_uint64(&pk, q->at);
    mp_pack_cstr(&pk, "from");
    if (q->copy)
        pack_pos(&pk, q->after_key != NULL, q->after_key, q->after_klen, q->after_ver);
    else
        msgpack_pack_uint64(&pk, from);
    mp_pack_cstr(&pk, "to");
    if (q->copy) /* an empty chunk ends where it started */
        pack_pos(&pk, c.n > 0 || q->after_key, c.n > 0 ? to_key.data : q->after_key,
                 c.n > 0 ? to_key.len : q->after_klen, c.n > 0 ? to_ver : q->after_ver);
    else
        msgpack_pack_uint64(&pk, to);
    mp_pack_cstr(&pk, "since");
    if (!q->copy && q->has_since)
        msgpack_pack_uint64(&pk, q->since);
    else
        msgpack_pack_nil(&pk);
    mp_pack_cstr(&pk, "last");
    msgpack_pack_bool(&pk, last);
    mp_pack_cstr(&pk, "fence");
    msgpack_pack_uint64(&pk, fence_id);
    mp_pack_cstr(&pk, "floor");
    msgpack_pack_uint64(&pk, b->parent ? b->fork_ver : 0);
    mp_pack_cstr(&pk, "created_ver");
    msgpack_pack_uint64(&pk, b->created_ver);
    mp_pack_cstr(&pk, "created_ts");
    msgpack_pack_int64(&pk, b->created_ts);
    mp_pack_cstr(&pk, "keep_last");
    msgpack_pack_uint64(&pk, b->keep_last);
    mp_pack_cstr(&pk, "keep_for_us");
    msgpack_pack_int64(&pk, b->keep_for_us);
    msgpack_pack_array(&pk, c.n);
    if (buf_append(&blob, c.rec.data, c.rec.len))
        goto oom;
    if (carry) {
        size_t before = blob.len;
        idem_pack_move(&x->s->idem, b->id, &pk);
        if (blob.len == before)
            goto oom;
    }
    if (buf_reserve(&blob, MOVE_DIGEST))
        goto oom;
    unsigned int dlen = 0;
    if (!EVP_Digest(blob.data, blob.len, blob.data + blob.len, &dlen, EVP_sha256(), NULL) ||
        dlen != MOVE_DIGEST) {
        rc = err_set(x->err, STRATA_INTERNAL, "SHA-256 failed");
        goto out;
    }
    blob.len += MOVE_DIGEST;
    msgpack_pack_map(out, 5);
    mp_pack_cstr(out, "blob");
    pack_bin(out, blob.data, blob.len);
    mp_pack_cstr(out, "last");
    msgpack_pack_bool(out, last);
    mp_pack_cstr(out, "at");
    msgpack_pack_uint64(out, q->at);
    mp_pack_cstr(out, "records");
    msgpack_pack_uint32(out, c.n);
    mp_pack_cstr(out, "fenced");
    msgpack_pack_bool(out, fenced);
    goto out;
oom:
    rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory exporting");
out:
    buf_close(&c.rec);
    buf_close(&to_key);
    buf_close(&blob);
    return rc;
}

static int arg_max_bytes(struct exec *x, uint64_t *max)
{
    *max = DEFAULT_CHUNK;
    int rc = arg_u64_opt(x, "max_bytes", max, NULL);
    if (rc == 0 && (*max < MOVE_CHUNK_MIN || *max > MOVE_CHUNK_MAX))
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'max_bytes' must be %u..%u",
                     MOVE_CHUNK_MIN, MOVE_CHUNK_MAX);
    return rc;
}

/* The delta position arguments: exactly one of 'since' and 'from_pos' (`need`), or
 * neither (*has false) when not needed. */
static int arg_delta(struct exec *x, struct branch *b, bool need, struct export_req *q,
                     bool *has)
{
    bool has_from = false;
    int rc;
    if ((rc = arg_u64_opt(x, "since", &q->since, &q->has_since)) ||
        (rc = arg_u64_opt(x, "from_pos", &q->from_pos, &has_from)))
        return rc;
    *has = q->has_since || has_from;
    if (q->has_since == has_from && (need || *has))
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "a delta export needs 'since' or 'from_pos' (one of them)");
    if (has_from && q->from_pos > b->nlog)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'from_pos' (%llu) is beyond the change log (%zu)",
                       (unsigned long long)q->from_pos, b->nlog);
    return 0;
}

int move_export_fenced(struct exec *x, struct branch *b, uint64_t move_id, bool *wanted,
                       msgpack_packer *pk)
{
    struct export_req q = {.at = x->s->version, .fence = move_id};
    int rc = arg_delta(x, b, false, &q, wanted);
    if (rc == 0 && *wanted)
        rc = arg_max_bytes(x, &q.max);
    if (rc == 0 && *wanted)
        rc = export_pack(x, b, &q, pk);
    return rc;
}

/* move.export {name, mode: "copy", at?, after_key?, after_ver?, max_bytes?} or
 * {name, mode: "delta", since | from_pos, max_bytes?}: {blob, last, at, records, fenced}. */
int move_export(struct exec *x)
{
    struct branch *b;
    const char *mode;
    size_t mlen;
    struct export_req q = {.at = x->s->version};
    int rc;
    if ((rc = arg_branch(x, "name", &b)) || (rc = arg_str(x, "mode", &mode, &mlen)) ||
        (rc = arg_max_bytes(x, &q.max)))
        return rc;
    q.copy = mlen == 4 && memcmp(mode, "copy", 4) == 0;
    if (!q.copy && !(mlen == 5 && memcmp(mode, "delta", 5) == 0))
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'mode' must be 'copy' or 'delta'");
    if (q.copy) {
        if ((rc = arg_u64_opt(x, "at", &q.at, NULL)) ||
            (rc = arg_bin_opt(x, "after_key", &q.after_key, &q.after_klen)) ||
            (rc = arg_u64_opt(x, "after_ver", &q.after_ver, NULL)))
            return rc;
        if (q.at > x->s->version)
            return err_set(x->err, STRATA_INVALID_ARGUMENT,
                           "argument 'at' (%llu) is above the current version %llu",
                           (unsigned long long)q.at, (unsigned long long)x->s->version);
        if (q.after_key && (q.after_klen == 0 || q.after_klen > IKEY_MAX))
            return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'after_key' is not a key");
    } else {
        bool has;
        if ((rc = arg_delta(x, b, true, &q, &has)))
            return rc;
    }
    return export_pack(x, b, &q, x->pk);
}

/* ---- Import ------------------------------------------------------------------------- */

struct blob_pos {
    bool has;
    const uint8_t *key;
    size_t klen;
    uint64_t ver;
};

struct blob_header {
    const char *branch;
    size_t blen;
    uint64_t branch_id, at, fence, floor, created_ver, keep_last;
    int64_t created_ts, keep_for_us;
    bool copy, last;
    struct blob_pos from, to; /* copy */
    uint64_t dfrom, dto;      /* delta */
    bool has_since;
    uint64_t since;
};

struct rec {
    const uint8_t *key;
    size_t klen;
    uint64_t ver;
    int64_t ts;
    const uint8_t *val; /* NULL: tombstone */
    size_t vlen;
    bool has_gap;
    struct gap gap;
    uint32_t pend;
};

/* The versions one key receives from the blob, linked newest first. */
struct pend {
    const uint8_t *key;
    size_t klen;
    struct entry *e; /* the branch's entry, or a fresh one */
    bool fresh, inserted;
    struct version *top, *bottom;
    uint64_t prev; /* newest version so far: the branch's head, then each record's */
    uint64_t cut;  /* splice freed the branch's versions from this one up (0: none) */
};

static bool is_u64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

static bool is_i64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 <= INT64_MAX
                                                      : o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

static int64_t as_i64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64 : o->via.i64;
}

static int bad_blob(struct exec *x, const char *what)
{
    return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'blob' is not a valid move chunk: %s",
                   what);
}

static bool pos_decode(const msgpack_object *o, struct blob_pos *p)
{
    memset(p, 0, sizeof *p);
    if (o->type == MSGPACK_OBJECT_NIL)
        return true;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 2 ||
        o->via.array.ptr[0].type != MSGPACK_OBJECT_BIN || o->via.array.ptr[0].via.bin.size == 0 ||
        o->via.array.ptr[0].via.bin.size > IKEY_MAX || !is_u64(&o->via.array.ptr[1]))
        return false;
    p->has = true;
    p->key = (const uint8_t *)o->via.array.ptr[0].via.bin.ptr;
    p->klen = o->via.array.ptr[0].via.bin.size;
    p->ver = o->via.array.ptr[1].via.u64;
    return true;
}

/* Order of copy positions: none < (key, ver), then key bytes, then version. */
static int pos_cmp(const struct blob_pos *a, const struct blob_pos *b)
{
    if (!a->has || !b->has)
        return (int)a->has - (int)b->has;
    int c = bkey_cmp(a->key, a->klen, b->key, b->klen);
    return c ? c : (a->ver > b->ver) - (a->ver < b->ver);
}

static int header_decode(struct exec *x, const msgpack_object *h, struct blob_header *hd)
{
    if (h->type != MSGPACK_OBJECT_MAP)
        return bad_blob(x, "header is not a map");
    memset(hd, 0, sizeof *hd);
    const msgpack_object *br = mp_map_get(h, "branch"), *id = mp_map_get(h, "branch_id"),
                         *mode = mp_map_get(h, "mode"), *at = mp_map_get(h, "at"),
                         *from = mp_map_get(h, "from"), *to = mp_map_get(h, "to"),
                         *since = mp_map_get(h, "since"), *last = mp_map_get(h, "last"),
                         *fence = mp_map_get(h, "fence"), *floor = mp_map_get(h, "floor"),
                         *cv = mp_map_get(h, "created_ver"), *cts = mp_map_get(h, "created_ts"),
                         *kl = mp_map_get(h, "keep_last"), *kf = mp_map_get(h, "keep_for_us");
    if (!br || br->type != MSGPACK_OBJECT_STR || !id || !is_u64(id) || !mode ||
        mode->type != MSGPACK_OBJECT_STR || !at || !is_u64(at) || !from || !to || !since ||
        !last || last->type != MSGPACK_OBJECT_BOOLEAN || !fence || !is_u64(fence) || !floor ||
        !is_u64(floor) || !cv || !is_u64(cv) || !cts || !is_i64(cts) || !kl || !is_u64(kl) ||
        !kf || !is_i64(kf) || as_i64(kf) < 0)
        return bad_blob(x, "header fields missing or of the wrong type");
    hd->branch = br->via.str.ptr;
    hd->blen = br->via.str.size;
    hd->branch_id = id->via.u64;
    hd->copy = mp_str_eq(mode, "copy");
    if (!hd->copy && !mp_str_eq(mode, "delta"))
        return bad_blob(x, "unknown mode");
    hd->at = at->via.u64;
    hd->last = last->via.boolean;
    hd->fence = fence->via.u64;
    hd->floor = floor->via.u64;
    hd->created_ver = cv->via.u64;
    hd->created_ts = as_i64(cts);
    hd->keep_last = kl->via.u64;
    hd->keep_for_us = as_i64(kf);
    if (hd->copy) {
        if (!pos_decode(from, &hd->from) || !pos_decode(to, &hd->to) ||
            pos_cmp(&hd->to, &hd->from) < 0 || since->type != MSGPACK_OBJECT_NIL)
            return bad_blob(x, "copy positions");
    } else {
        if (!is_u64(from) || !is_u64(to) || to->via.u64 < from->via.u64 ||
            (since->type != MSGPACK_OBJECT_NIL && !is_u64(since)))
            return bad_blob(x, "delta positions");
        hd->dfrom = from->via.u64;
        hd->dto = to->via.u64;
        hd->has_since = since->type != MSGPACK_OBJECT_NIL;
        hd->since = hd->has_since ? since->via.u64 : 0;
    }
    return 0;
}

static int rec_decode(struct exec *x, const msgpack_object *o, struct rec *r, msgpack_zone *z)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || (o->via.array.size != 4 && o->via.array.size != 6))
        return bad_blob(x, "a record is not [key, ver, ts, value(, gap_ver, gap_ts)]");
    const msgpack_object *f = o->via.array.ptr;
    if (f[0].type != MSGPACK_OBJECT_BIN || !is_u64(&f[1]) || f[1].via.u64 == 0 || !is_i64(&f[2]) ||
        (f[3].type != MSGPACK_OBJECT_NIL && f[3].type != MSGPACK_OBJECT_BIN))
        return bad_blob(x, "record fields of the wrong type (or version 0)");
    memset(r, 0, sizeof *r);
    r->key = (const uint8_t *)f[0].via.bin.ptr;
    r->klen = f[0].via.bin.size;
    if (!move_key_ok(r->key, r->klen))
        return bad_blob(x, "a record's key is not a data or space key");
    r->ver = f[1].via.u64;
    r->ts = as_i64(&f[2]);
    if (f[3].type == MSGPACK_OBJECT_BIN) {
        r->val = (const uint8_t *)f[3].via.bin.ptr;
        r->vlen = f[3].via.bin.size;
        if (r->vlen >= VLEN_TOMB || r->vlen > x->s->cfg.max_value_bytes + 64)
            return bad_blob(x, "a value is too large");
        /* A stored value is exactly one MessagePack object. */
        msgpack_object v;
        size_t off = 0;
        msgpack_zone_clear(z);
        msgpack_unpack_return ur = msgpack_unpack((const char *)r->val, r->vlen, &off, z, &v);
        if (ur == MSGPACK_UNPACK_NOMEM_ERROR) /* or nested deeper than msgpack-c decodes */
            return err_set(x->err, STRATA_OUT_OF_MEMORY,
                           "out of memory checking a value (or nested deeper than 32 levels)");
        if (ur != MSGPACK_UNPACK_SUCCESS || off != r->vlen)
            return bad_blob(x, "a value is not one MessagePack object");
    }
    if (o->via.array.size == 6) {
        if (!is_u64(&f[4]) || !is_i64(&f[5]) || f[4].via.u64 == 0 || f[4].via.u64 >= r->ver)
            return bad_blob(x, "a gap record is not below its version");
        r->has_gap = true;
        r->gap = (struct gap){f[4].via.u64, as_i64(&f[5])};
    }
    return 0;
}

/* Everything an import allocates before it changes anything. */
struct import_work {
    struct rec *recs;
    uint32_t nrec;
    struct pend *pends;
    uint32_t npend;
    uint32_t *slots; /* key -> pend index + 1 */
    size_t nslots;
    struct branch *created;  /* a branch this import made (deleted on failure) */
    uint64_t next_id;        /* the engine's next branch id before it was made */
    struct change *newlog;   /* the rebuilt change log (rebuild_log) */
    size_t newlog_cap;
    /* This chunk's versions for the change log, sorted (log_merge_*). */
    struct change *add;
    size_t nadd;
};

static void work_free(struct storage *s, struct import_work *w)
{
    for (uint32_t i = 0; i < w->npend; i++) {
        struct pend *p = &w->pends[i];
        version_chain_free(p->top);
        if (p->fresh && !p->inserted)
            sm_free(p->e);
    }
    if (w->created) {
        w->created->deleted = true;
        branch_unref(s, w->created);
        s->next_branch_id = w->next_id; /* a failed command changes nothing */
    }
    sm_free(w->recs);
    sm_free(w->pends);
    sm_free(w->slots);
    sm_free(w->newlog);
    sm_free(w->add);
}

/* The pend of a record's key (created on first sight). -1: out of memory. */
static int pend_of(struct import_work *w, struct branch *b, struct rec *r)
{
    size_t j = hindex_hash(r->key, r->klen) & (w->nslots - 1);
    for (; w->slots[j]; j = (j + 1) & (w->nslots - 1)) {
        struct pend *p = &w->pends[w->slots[j] - 1];
        if (p->klen == r->klen && memcmp(p->key, r->key, r->klen) == 0)
            return (int)(w->slots[j] - 1);
    }
    struct pend *p = &w->pends[w->npend];
    memset(p, 0, sizeof *p);
    p->key = r->key;
    p->klen = r->klen;
    p->e = b ? branch_get(b, r->key, r->klen) : NULL;
    if (p->e == NULL) {
        p->e = sm_malloc(ENTRY_SIZE(r->klen));
        if (p->e == NULL)
            return -1;
        p->e->head = NULL;
        p->e->flags = 0;
        p->e->klen = (uint16_t)r->klen;
        memcpy(p->e->key, r->key, r->klen);
        p->fresh = true;
    }
    p->prev = p->e->head ? p->e->head->ver : 0;
    w->slots[j] = ++w->npend;
    return (int)(w->npend - 1);
}

/* Parse every record and build its version, checking the order of each key's versions
 * against what the branch holds and what came before in the blob. */
static int build_versions(struct exec *x, const msgpack_object *recs, struct branch *b,
                          const struct blob_header *hd, struct import_work *w)
{
    uint32_t n = recs->via.array.size;
    w->nrec = n;
    w->nslots = 16;
    while (w->nslots < 2 * (size_t)n)
        w->nslots *= 2;
    w->recs = sm_calloc(n ? n : 1, sizeof *w->recs);
    w->pends = sm_calloc(n ? n : 1, sizeof *w->pends);
    w->slots = sm_calloc(w->nslots, sizeof *w->slots);
    if (w->recs == NULL || w->pends == NULL || w->slots == NULL)
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 1024))
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
    int rc = 0;
    uint64_t log_min = b && b->nlog ? b->log[b->nlog - 1].ver : 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        struct rec *r = &w->recs[i];
        if ((rc = rec_decode(x, &recs->via.array.ptr[i], r, &z)))
            break;
        if (r->ver > hd->at) {
            rc = bad_blob(x, "a version is above the chunk's version");
            break;
        }
        int pi = pend_of(w, b, r);
        if (pi < 0) {
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
            break;
        }
        struct pend *p = &w->pends[pi];
        r->pend = (uint32_t)pi;
        /* A delta extends the change log, which stays in version order. */
        if (!hd->copy && r->ver < log_min) {
            rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                         "argument 'blob': delta versions out of order (version %llu after %llu)",
                         (unsigned long long)r->ver, (unsigned long long)log_min);
            break;
        }
        log_min = r->ver;
        /* Versions of a key only grow; a gap lies between a version and the one the blob
         * gave before it (only the first one may reach into what the branch holds). */
        if (r->ver <= p->prev || (r->has_gap && p->top && r->gap.ver <= p->prev)) {
            rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                         "argument 'blob': versions of a key out of order (version %llu after "
                         "%llu)",
                         (unsigned long long)r->ver, (unsigned long long)p->prev);
            break;
        }
        struct version *v = sm_malloc(VERSION_SIZE(r->vlen) + (r->has_gap ? sizeof(struct gap) : 0));
        if (v == NULL) {
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
            break;
        }
        v->ver = r->ver;
        v->ts = r->ts;
        v->len = r->val ? (uint32_t)r->vlen : VLEN_TOMB;
        v->vflags = r->has_gap ? VF_GAP : 0;
        if (r->vlen)
            memcpy(v->data, r->val, r->vlen);
        if (r->has_gap)
            memcpy(v->data + r->vlen, &r->gap, sizeof r->gap);
        v->older = p->top;
        p->top = v;
        if (p->bottom == NULL)
            p->bottom = v;
        p->prev = r->ver;
    }
    msgpack_zone_destroy(&z);
    return rc;
}

/* Link a key's received versions on top of its chain. Versions the source pruned (at or
 * above the gap of the oldest received one) go, so the chain matches the source's;
 * p->cut says from which version on (the change log must drop them too). */
static void splice(struct pend *p)
{
    struct entry *e = p->e;
    struct version *h = e->head, *bottom = p->bottom;
    if (bottom->vflags & VF_GAP) {
        struct gap g = version_gap(bottom);
        while (h && h->ver >= g.ver) {
            if (h->vflags & VF_GAP) {
                struct gap g2 = version_gap(h);
                if (g2.ver < g.ver) {
                    g = g2;
                    memcpy(bottom->data + version_vlen(bottom), &g, sizeof g);
                }
            }
            struct version *older = h->older;
            p->cut = h->ver;
            sm_free(h);
            h = older;
        }
    }
    bottom->older = h;
    e->head = p->top;
    for (struct version *v = p->top; v != h; v = v->older)
        if (v->vflags & VF_GAP)
            e->flags |= ENTRY_PRUNED;
    p->top = p->bottom = NULL;
}

static int cmp_change(const void *a, const void *b)
{
    const struct change *x = a, *y = b;
    if (x->ver != y->ver)
        return x->ver < y->ver ? -1 : 1;
    return bkey_cmp(x->e->key, x->e->klen, y->e->key, y->e->klen);
}

/* Versions above `floor` in b's chains plus the pending ones: the rebuilt log's size. */
static size_t count_own(struct branch *b, const struct import_work *w, uint64_t floor)
{
    size_t n = 0;
    struct btree_iter it;
    btree_seek(&b->idx, (const uint8_t *)"", 0, &it);
    struct entry *e;
    while ((e = btree_next(&it)) != NULL)
        if (move_key_ok(e->key, e->klen))
            for (const struct version *v = e->head; v; v = v->older)
                n += v->ver > floor;
    for (uint32_t i = 0; i < w->nrec; i++)
        n += w->recs[i].ver > floor;
    return n;
}

static size_t rebuild_log(struct branch *b, struct change *log, uint64_t floor)
{
    size_t n = 0;
    struct btree_iter it;
    btree_seek(&b->idx, (const uint8_t *)"", 0, &it);
    struct entry *e;
    while ((e = btree_next(&it)) != NULL)
        if (move_key_ok(e->key, e->klen))
            for (const struct version *v = e->head; v; v = v->older)
                if (v->ver > floor)
                    log[n++] = (struct change){v->ver, e};
    qsort(log, n, sizeof *log, cmp_change);
    return n;
}

/* The change log of a branch being copied is kept whole after every copy chunk — its
 * versions above `floor`, in (version, key) order, exactly what rebuild_log gives — by
 * merging each chunk's versions into it. So no chunk walks the whole branch: the last
 * one used to rebuild it from every chain in one apply, a stall of every target
 * replica's loop that grew with the branch's history. Prepare (may fail): count the
 * chunk's versions and allocate. */
static int log_merge_prepare(struct branch *b, struct import_work *w, uint64_t floor)
{
    size_t k = 0;
    for (uint32_t i = 0; i < w->nrec; i++)
        k += w->recs[i].ver > floor;
    if ((w->add = sm_malloc((k ? k : 1) * sizeof *w->add)) == NULL)
        return STRATA_OUT_OF_MEMORY;
    if (b->caplog < b->nlog + k) {
        /* Grown geometrically: a fresh array per chunk costs a page fault per 4 KiB. A
         * larger capacity left behind by a failed import is harmless. */
        size_t cap = b->caplog * 2 > b->nlog + k ? b->caplog * 2 : b->nlog + k;
        struct change *log = sm_realloc(b->log, cap * sizeof *log);
        if (log == NULL)
            return STRATA_OUT_OF_MEMORY;
        b->log = log;
        b->caplog = cap;
    }
    return 0;
}

/* The pend of a key, or NULL when the chunk has none. */
static const struct pend *pend_find(const struct import_work *w, const uint8_t *k, size_t klen)
{
    size_t j = hindex_hash(k, klen) & (w->nslots - 1);
    for (; w->slots[j]; j = (j + 1) & (w->nslots - 1)) {
        const struct pend *p = &w->pends[w->slots[j] - 1];
        if (p->klen == klen && memcmp(p->key, k, klen) == 0)
            return p;
    }
    return NULL;
}

/* Install (after splice; cannot fail): drop the versions splice freed, merge in the
 * chunk's, sorted, from the back, in place: what sorts before all of them stays put. */
static void log_merge_install(struct branch *b, struct import_work *w, uint64_t floor)
{
    bool cut = false;
    for (uint32_t i = 0; i < w->npend && !cut; i++)
        cut = w->pends[i].cut != 0;
    if (cut) { /* rare: the source pruned a key between two chunks */
        size_t n = 0;
        for (size_t i = 0; i < b->nlog; i++) {
            const struct change *c = &b->log[i];
            const struct pend *p = pend_find(w, c->e->key, c->e->klen);
            if (p == NULL || p->cut == 0 || c->ver < p->cut)
                b->log[n++] = *c;
        }
        b->nlog = n;
    }
    w->nadd = 0;
    for (uint32_t i = 0; i < w->nrec; i++)
        if (w->recs[i].ver > floor)
            w->add[w->nadd++] = (struct change){w->recs[i].ver, w->pends[w->recs[i].pend].e};
    qsort(w->add, w->nadd, sizeof *w->add, cmp_change);
    size_t i = b->nlog, j = w->nadd, n = b->nlog + w->nadd;
    while (j > 0)
        b->log[--n] =
            i > 0 && cmp_change(&b->log[i - 1], &w->add[j - 1]) > 0 ? b->log[--i] : w->add[--j];
    b->nlog += w->nadd;
}

/* Decide what the blob is for the branch: *apply true, or false for an old chunk
 * (nothing to do); or an error code. *replace is set when it replaces an older move's
 * partial copy. */
static int import_decide(struct exec *x, struct branch *b, const struct blob_header *hd,
                         uint32_t shard, uint64_t id, struct import_marker *m, bool *replace,
                         bool *apply)
{
    *replace = false;
    *apply = true;
    bool has = b && move_import_get(b, m);
    if (b && !has)
        return err_set(x->err, STRATA_BRANCH_EXISTS, "branch '%s' already exists here", b->name);
    if (has && (m->source_shard != shard || m->move_id != id)) {
        if (m->state == IMPORT_DONE)
            return err_set(x->err, STRATA_BRANCH_EXISTS, "branch '%s' already exists here",
                           b->name);
        if (id < m->move_id || !hd->copy || hd->from.has)
            return err_set(x->err, STRATA_CONFLICT,
                           "branch '%s' holds a copy of move %llu, not of move %llu", b->name,
                           (unsigned long long)m->move_id, (unsigned long long)id);
        *replace = true; /* an older move's leftover: start afresh */
        return 0;
    }
    if (!has) {
        if (!hd->copy || hd->from.has)
            return err_set(x->err, STRATA_CONFLICT,
                           "no copy of move %llu here: the first chunk must come first",
                           (unsigned long long)id);
        return 0;
    }
    if (hd->branch_id != m->source_branch_id)
        return err_set(x->err, STRATA_CONFLICT,
                       "the source branch changed during move %llu (branch id %llu, was %llu)",
                       (unsigned long long)id, (unsigned long long)hd->branch_id,
                       (unsigned long long)m->source_branch_id);
    if (hd->copy) {
        if (m->copy_complete)
            return *apply = false, 0;
        if (hd->at != m->copy_at)
            return err_set(x->err, STRATA_CONFLICT, "copy chunk at version %llu, the copy reads %llu",
                           (unsigned long long)hd->at, (unsigned long long)m->copy_at);
        struct blob_pos mp = {m->has_copy_pos, m->copy_key, m->copy_klen, m->copy_ver};
        if (pos_cmp(&hd->from, &mp) == 0)
            return 0;
        if (pos_cmp(&hd->to, &mp) <= 0)
            return *apply = false, 0;
        return err_set(x->err, STRATA_CONFLICT, "copy chunk out of order for move %llu",
                       (unsigned long long)id);
    }
    if (!m->copy_complete)
        return err_set(x->err, STRATA_CONFLICT, "a delta chunk before the copy completed");
    if (!m->has_log_pos) {
        if (hd->has_since && hd->since == m->copy_at)
            return 0;
        return err_set(x->err, STRATA_CONFLICT,
                       "the first delta chunk must start after the copy's version %llu",
                       (unsigned long long)m->copy_at);
    }
    if (hd->dfrom == m->log_pos && !hd->has_since)
        return 0;
    if (hd->dto <= m->log_pos)
        return *apply = false, 0;
    return err_set(x->err, STRATA_CONFLICT, "delta chunk out of order for move %llu",
                   (unsigned long long)id);
}

/* Non-zero when the packer failed (out of memory). */
static int pack_import_result(struct exec *x, bool applied, uint32_t n,
                              const struct import_marker *m)
{
    int rc = msgpack_pack_map(x->pk, 7);
    mp_pack_cstr(x->pk, "applied");
    msgpack_pack_bool(x->pk, applied);
    mp_pack_cstr(x->pk, "records");
    msgpack_pack_uint32(x->pk, applied ? n : 0);
    mp_pack_cstr(x->pk, "state");
    mp_pack_cstr(x->pk, m->state == IMPORT_DONE ? "done" : "importing");
    mp_pack_cstr(x->pk, "copy_complete");
    msgpack_pack_bool(x->pk, m->copy_complete);
    mp_pack_cstr(x->pk, "copy_at");
    msgpack_pack_uint64(x->pk, m->copy_at);
    mp_pack_cstr(x->pk, "copy_pos");
    pack_pos(x->pk, m->has_copy_pos, m->copy_key, m->copy_klen, m->copy_ver);
    mp_pack_cstr(x->pk, "log_pos");
    if (m->has_log_pos)
        rc |= msgpack_pack_uint64(x->pk, m->log_pos);
    else
        rc |= msgpack_pack_nil(x->pk);
    return rc;
}

/* move.import {name, source_shard, move_id, blob}. */
int move_import(struct exec *x)
{
    const char *name;
    size_t nlen;
    uint64_t id, shard64 = 0;
    bool has_shard = false, has_id = false;
    const msgpack_object *bo = arg_get(x, "blob");
    int rc;
    if ((rc = arg_str(x, "name", &name, &nlen)) ||
        (rc = storage_branch_name_check(name, nlen, x->err)) ||
        (rc = arg_u64_opt(x, "source_shard", &shard64, &has_shard)) ||
        (rc = arg_u64_opt(x, "move_id", &id, &has_id)))
        return rc;
    if (!has_shard || shard64 == 0 || shard64 > UINT32_MAX)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'source_shard' must be a shard id");
    if (!has_id || id == 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'move_id' must be a positive integer");
    if (bo == NULL || bo->type != MSGPACK_OBJECT_BIN)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'blob' must be binary");
    const uint8_t *p = (const uint8_t *)bo->via.bin.ptr;
    size_t len = bo->via.bin.size;
    if (len < 12 + MOVE_DIGEST || memcmp(p, MOVE_MAGIC, 8) != 0)
        return bad_blob(x, "bad magic");
    uint32_t format = get_be32(p + 8);
    if (format != MOVE_FORMAT && format != MOVE_FORMAT_IDEM)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'blob': move chunk format %u is not supported (this build "
                       "reads %u and %u)",
                       format, MOVE_FORMAT, MOVE_FORMAT_IDEM);
    uint8_t md[MOVE_DIGEST];
    unsigned int dlen = 0;
    if (!EVP_Digest(p, len - MOVE_DIGEST, md, &dlen, EVP_sha256(), NULL) || dlen != MOVE_DIGEST)
        return err_set(x->err, STRATA_INTERNAL, "SHA-256 failed");
    if (memcmp(md, p + len - MOVE_DIGEST, MOVE_DIGEST) != 0)
        return bad_blob(x, "checksum mismatch");
    msgpack_object body;
    size_t off = 0;
    msgpack_unpack_return ur =
        msgpack_unpack((const char *)p + 12, len - 12 - MOVE_DIGEST, &off, &x->s->zone, &body);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        return err_set(x->err, STRATA_OUT_OF_MEMORY,
                       "out of memory decoding the blob (or nested deeper than 32 levels)");
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len - 12 - MOVE_DIGEST ||
        body.type != MSGPACK_OBJECT_ARRAY ||
        body.via.array.size != (format == MOVE_FORMAT_IDEM ? 3 : 2) ||
        body.via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY)
        return bad_blob(x, format == MOVE_FORMAT_IDEM ? "body is not [header, records, idem]"
                                                      : "body is not [header, records]");
    struct blob_header hd;
    if ((rc = header_decode(x, &body.via.array.ptr[0], &hd)))
        return rc;
    if (hd.blen != nlen || memcmp(hd.branch, name, nlen) != 0)
        return bad_blob(x, "it is a chunk of another branch");
    const msgpack_object *recs = &body.via.array.ptr[1];

    struct branch *b = branch_find(x->s, name, nlen);
    struct import_marker m;
    bool replace, apply;
    if ((rc = import_decide(x, b, &hd, (uint32_t)shard64, id, &m, &replace, &apply)))
        return rc;
    if (!apply)
        return pack_import_result(x, false, 0, &m)
                   ? err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory building the result")
                   : 0;
    struct branch *old = replace ? b : NULL;
    if (b == NULL || replace) {
        b = NULL;
        m = (struct import_marker){.source_shard = (uint32_t)shard64,
                                   .move_id = id,
                                   .source_branch_id = hd.branch_id,
                                   .state = IMPORT_IMPORTING,
                                   .copy_at = hd.at};
    }
    struct import_work w = {0};
    struct buf val;
    buf_init(&val);
    struct marker_set ms = {0};
    struct idem_merge im = {0};
    bool merge = format == MOVE_FORMAT_IDEM;
    if (merge && (rc = idem_merge_prepare(x->s, &body.via.array.ptr[2], &im, x->err)))
        goto err;
    if ((rc = build_versions(x, recs, b, &hd, &w)))
        goto err;
    if (b == NULL) {
        w.next_id = x->s->next_branch_id;
        if (branch_add(x->s, name, nlen, NULL, 0, &b)) {
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory creating the branch");
            goto err;
        }
        w.created = b;
        b->created_ver = hd.created_ver;
        b->created_ts = hd.created_ts;
    }
    for (uint32_t i = 0; i < w.npend; i++) {
        struct pend *pd = &w.pends[i];
        if (pd->fresh && branch_insert(b, pd->e)) {
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
            goto err;
        }
        pd->inserted = pd->fresh;
    }
    /* The new marker: the chunk's end is the next start. */
    struct import_marker nm = m;
    if (hd.copy) {
        nm.has_copy_pos = hd.to.has;
        nm.copy_klen = hd.to.klen;
        if (hd.to.has)
            memcpy(nm.copy_key, hd.to.key, hd.to.klen);
        nm.copy_ver = hd.to.ver;
        nm.copy_complete = hd.last;
    } else {
        nm.has_log_pos = true;
        nm.log_pos = hd.dto;
        if (hd.last && hd.fence == id)
            nm.state = IMPORT_DONE; /* everything up to the fence: the branch is live here */
    }
    if (hd.at > nm.imported_to)
        nm.imported_to = hd.at;
    if (merge && im.dropped > 0)
        nm.idem_lossy = true;
    /* A copy chunk merges its versions into the log (log_merge_prepare). Only a branch
     * that holds copied versions but no log yet — its earlier chunks were applied by a
     * build that rebuilt the log at the last chunk only — is rebuilt here once. */
    bool rebuild = hd.copy && w.created == NULL && !replace && b->nlog == 0;
    if (hd.copy && !rebuild) {
        if (log_merge_prepare(b, &w, hd.floor)) {
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
            goto err;
        }
    } else if (rebuild) {
        w.newlog_cap = count_own(b, &w, hd.floor);
        if ((w.newlog = sm_malloc((w.newlog_cap ? w.newlog_cap : 1) * sizeof *w.newlog)) == NULL) {
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
            goto err;
        }
    } else if (!hd.copy && b->caplog < b->nlog + w.nrec) {
        size_t cap = b->nlog + w.nrec;
        struct change *log = sm_realloc(b->log, cap * sizeof *log);
        if (log == NULL) {
            rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
            goto err;
        }
        b->log = log;
        b->caplog = cap;
    }
    if (move_import_encode(&nm, &val) || move_marker_prepare(x->s, b, MOVE_TAG_IMPORT, &val, &ms)) {
        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory importing");
        goto err;
    }
    /* The answer before the change: packing is the last thing that can fail. */
    if (pack_import_result(x, true, w.nrec, &nm)) {
        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory building the result");
        goto err;
    }

    /* Nothing below fails. */
    int64_t max_ts = x->s->last_ts;
    for (uint32_t i = 0; i < w.nrec; i++)
        if (w.recs[i].ts > max_ts)
            max_ts = w.recs[i].ts;
    for (uint32_t i = 0; i < w.npend; i++)
        splice(&w.pends[i]);
    if (!hd.copy)
        for (uint32_t i = 0; i < w.nrec; i++)
            b->log[b->nlog++] = (struct change){w.recs[i].ver, w.pends[w.recs[i].pend].e};
    if (hd.copy && !rebuild) {
        log_merge_install(b, &w, hd.floor);
    } else if (rebuild) {
        sm_free(b->log);
        b->nlog = rebuild_log(b, w.newlog, hd.floor);
        b->log = w.newlog;
        b->caplog = w.newlog_cap ? w.newlog_cap : 1;
        w.newlog = NULL;
    }
    b->keep_last = hd.keep_last;
    b->keep_for_us = hd.keep_for_us;
    /* The target's counter and clock: at least the source's, so the branch's next write
     * gets a higher version and timestamp than any it had (docs/sharding.md). */
    if (hd.at > x->s->version)
        x->s->version = hd.at;
    x->s->last_ts = max_ts;
    ms.v->ver = move_marker_ver(x->s);
    ms.v->ts = x->s->last_ts;
    move_marker_install(x->s, &ms);
    if (merge)
        idem_merge_install(x->s, &im, b->id);
    if (old) {
        old->deleted = true;
        branch_unref(x->s, old);
    }
    w.created = NULL;
    work_free(x->s, &w);
    buf_close(&val);
    return 0;
err:
    idem_merge_discard(&im);
    move_marker_discard(&ms);
    work_free(x->s, &w);
    buf_close(&val);
    return rc;
}
