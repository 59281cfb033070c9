/* Diff and merge between branches. Cost is proportional to the keys changed since the
 * branches diverged, not to branch size: candidates come from the change logs of the
 * branches on each side of the lowest common ancestor (docs/storage.md). */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#define DIFF_DEFAULT_LIMIT 10000
#define DIFF_MAX_LIMIT 1000000

/* A view: a branch read at a version. */
struct view {
    struct branch *b;
    uint64_t ver;
};

/* ---- Candidate keys ------------------------------------------------------------------- */

struct keyset {
    struct btree t; /* entries with empty chains used as set members */
};

static void keyset_free_entry(struct entry *e)
{
    sm_free(e);
}

static int keyset_add(struct keyset *ks, const uint8_t *k, size_t klen)
{
    if (btree_get(&ks->t, k, klen))
        return 0;
    struct entry *e = sm_malloc(ENTRY_SIZE(klen));
    if (e == NULL)
        return STRATA_OUT_OF_MEMORY;
    e->head = NULL;
    e->flags = 0;
    e->klen = (uint16_t)klen;
    memcpy(e->key, k, klen);
    if (btree_insert(&ks->t, e)) {
        sm_free(e);
        return STRATA_OUT_OF_MEMORY;
    }
    return 0;
}

/* Add the keys of b's change log with version in (lo, hi]. */
static int add_log_range(struct keyset *ks, struct branch *b, uint64_t lo, uint64_t hi)
{
    size_t a = 0, z = b->nlog;
    while (a < z) { /* first record with ver > lo */
        size_t m = (a + z) / 2;
        if (b->log[m].ver <= lo)
            a = m + 1;
        else
            z = m;
    }
    for (size_t i = a; i < b->nlog && b->log[i].ver <= hi; i++) {
        int rc = keyset_add(ks, b->log[i].e->key, b->log[i].e->klen);
        if (rc)
            return rc;
    }
    return 0;
}

struct lineage {
    int n;
    struct view v[VIEW_MAX_LEVELS * 4];
};

static void lineage_of(struct view x, struct lineage *l)
{
    l->n = 0;
    for (struct branch *b = x.b; b && l->n < (int)(sizeof l->v / sizeof l->v[0]); b = b->parent) {
        l->v[l->n++] = (struct view){b, x.ver};
        if (b->fork_ver < x.ver)
            x.ver = b->fork_ver;
    }
}

static int add_all_visible(struct keyset *ks, struct view x, struct err *err)
{
    struct read_at at = {x.ver, 0, false};
    struct view_iter vi;
    view_iter_init(&vi, x.b, &at, (const uint8_t *)"", 0, NULL, 0);
    struct entry *e;
    const struct version *v;
    int r;
    while ((r = view_iter_next(&vi, &e, &v, err)) == 1)
        if (keyset_add(ks, e->key, e->klen))
            return STRATA_OUT_OF_MEMORY;
    return r;
}

/* Every key whose visible value may differ between views x and y. */
static int add_candidates(struct keyset *ks, struct view x, struct view y, struct err *err)
{
    struct lineage *lx = sm_malloc(sizeof *lx), *ly = sm_malloc(sizeof *ly);
    int rc = 0;
    if (lx == NULL || ly == NULL) {
        rc = STRATA_OUT_OF_MEMORY;
        goto out;
    }
    lineage_of(x, lx);
    lineage_of(y, ly);
    int i, j = -1;
    for (i = 0; i < lx->n && j < 0; i++)
        for (int k = 0; k < ly->n; k++)
            if (ly->v[k].b == lx->v[i].b) {
                j = k;
                break;
            }
    if (j < 0) { /* unrelated: compare everything visible on both sides */
        if ((rc = add_all_visible(ks, x, err)) == 0)
            rc = add_all_visible(ks, y, err);
        goto out;
    }
    i--; /* lx->v[i] and ly->v[j] are the common ancestor */
    for (int k = 0; k < i && rc == 0; k++)
        rc = add_log_range(ks, lx->v[k].b, 0, lx->v[k].ver);
    for (int k = 0; k < j && rc == 0; k++)
        rc = add_log_range(ks, ly->v[k].b, 0, ly->v[k].ver);
    for (; rc == 0 && i < lx->n && j < ly->n; i++, j++) {
        uint64_t a = lx->v[i].ver, b = ly->v[j].ver;
        if (a == b)
            break;
        rc = add_log_range(ks, lx->v[i].b, a < b ? a : b, a < b ? b : a);
    }
out:
    sm_free(lx);
    sm_free(ly);
    return rc;
}

/* ---- Shared helpers --------------------------------------------------------------------- */

static int read_view(struct view v, const uint8_t *k, size_t klen, const struct version **out,
                     struct err *err)
{
    struct read_at at = {v.ver, 0, false};
    return view_get(v.b, k, klen, &at, out, err);
}

static bool same(const struct version *a, const struct version *b)
{
    return value_equal(a ? a->data : NULL, a ? a->len : 0, b ? b->data : NULL, b ? b->len : 0);
}

static const char *kind_name(int tag)
{
    switch (tag) {
    case TAG_KV:
        return "kv";
    case TAG_JSON:
        return "json";
    case TAG_EVENT:
        return "event";
    case TAG_STATE:
        return "state";
    case TAG_VCOLL:
        return "collection";
    case TAG_VECTOR:
        return "vector";
    default:
        return NULL; /* internal bookkeeping keys are not shown */
    }
}

/* Pack the user-visible key of an internal key: string, event seq, or [collection, key]. */
static void pack_user_key(msgpack_packer *pk, int tag, const uint8_t *rest, size_t rlen)
{
    if (tag == TAG_EVENT && rlen == 8) {
        msgpack_pack_uint64(pk, get_be64(rest));
    } else if (tag == TAG_VECTOR) {
        const uint8_t *z = memchr(rest, 0, rlen);
        size_t cl = z ? (size_t)(z - rest) : rlen;
        msgpack_pack_array(pk, 2);
        mp_pack_str(pk, (const char *)rest, cl);
        mp_pack_str(pk, z ? (const char *)z + 1 : "", z ? rlen - cl - 1 : 0);
    } else {
        mp_pack_str(pk, (const char *)rest, rlen);
    }
}

/* Conflict label "kind:space/key" for error messages and conflict lists. */
static void conflict_label(msgpack_packer *pk, int tag, const uint8_t *sp, size_t slen,
                           const uint8_t *rest, size_t rlen, const char *suffix)
{
    char buf[IKEY_MAX + 160];
    int n;
    if (tag == TAG_VECTOR) {
        const uint8_t *z = memchr(rest, 0, rlen);
        size_t cl = z ? (size_t)(z - rest) : rlen;
        n = snprintf(buf, sizeof buf, "%s:%.*s/%.*s/%.*s", kind_name(tag), (int)slen,
                     (const char *)sp, (int)cl, (const char *)rest, z ? (int)(rlen - cl - 1) : 0,
                     z ? (const char *)z + 1 : "");
    } else if (tag == TAG_EVENT && rlen == 8) {
        n = snprintf(buf, sizeof buf, "event:%.*s/%llu", (int)slen, (const char *)sp,
                     (unsigned long long)get_be64(rest));
    } else {
        n = snprintf(buf, sizeof buf, "%s:%.*s/%.*s%s", kind_name(tag), (int)slen, (const char *)sp,
                     (int)rlen, (const char *)rest, suffix ? suffix : "");
    }
    mp_pack_str(pk, buf, n < 0 ? 0 : (size_t)n >= sizeof buf ? sizeof buf - 1 : (size_t)n);
}

static void pack_opt_value(msgpack_packer *pk, const struct version *v)
{
    if (v)
        mp_pack_raw(pk, v->data, v->len);
    else
        msgpack_pack_nil(pk);
}

/* ---- Merge base ------------------------------------------------------------------------- */

static void merge_key(uint8_t k[10], uint64_t src_id)
{
    k[0] = 0;
    k[1] = TAG_MERGE;
    put_be64(k + 2, src_id);
}

/* Base of merging src into dst: the last merge src -> dst if any (src at the version it
 * was merged), else the common ancestor at the lower of the two lineage versions. */
static int merge_base(struct storage *s, struct branch *src, struct branch *dst, struct view *base,
                      bool *related, struct err *err)
{
    uint8_t mk[10];
    merge_key(mk, src->id);
    struct read_at head = {UINT64_MAX, 0, false};
    const struct version *rec;
    int rc = view_get(dst, mk, sizeof mk, &head, &rec, err);
    if (rc)
        return rc;
    *related = true;
    if (rec) {
        msgpack_zone z;
        msgpack_zone_init(&z, 128);
        msgpack_object o;
        if (value_decode(rec->data, rec->len, &z, &o) == 0 && o.type == MSGPACK_OBJECT_ARRAY &&
            o.via.array.size == 2 && o.via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            *base = (struct view){src, o.via.array.ptr[0].via.u64};
            msgpack_zone_destroy(&z);
            return 0;
        }
        msgpack_zone_destroy(&z);
        return err_set(err, STRATA_INTERNAL, "unreadable merge record");
    }
    struct lineage *ls = sm_malloc(sizeof *ls), *ld = sm_malloc(sizeof *ld);
    if (ls == NULL || ld == NULL) {
        sm_free(ls);
        sm_free(ld);
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    }
    lineage_of((struct view){src, s->version}, ls);
    lineage_of((struct view){dst, s->version}, ld);
    *related = false;
    for (int i = 0; i < ls->n && !*related; i++)
        for (int j = 0; j < ld->n; j++)
            if (ls->v[i].b == ld->v[j].b) {
                uint64_t a = ls->v[i].ver, b = ld->v[j].ver;
                *base = (struct view){ls->v[i].b, a < b ? a : b};
                *related = true;
                break;
            }
    sm_free(ls);
    sm_free(ld);
    return 0;
}

/* ---- Diff ------------------------------------------------------------------------------- */

static int branch_diff(struct exec *x)
{
    struct branch *a, *b;
    bool three = false;
    uint64_t limit = DIFF_DEFAULT_LIMIT;
    int rc;
    if ((rc = arg_branch(x, "a", &a)) || (rc = arg_branch(x, "b", &b)) ||
        (rc = arg_bool_opt(x, "three_way", &three)) || (rc = arg_u64_opt(x, "limit", &limit, NULL)))
        return rc;
    if (limit == 0 || limit > DIFF_MAX_LIMIT)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "limit must be between 1 and %d",
                       DIFF_MAX_LIMIT);
    struct view va = {a, x->s->version}, vb = {b, x->s->version}, base = {NULL, 0};
    bool related = true;
    if (three && (rc = merge_base(x->s, a, b, &base, &related, x->err)))
        return rc;
    struct keyset ks;
    btree_init(&ks.t);
    if ((rc = add_candidates(&ks, va, vb, x->err)))
        goto out;
    if (three && related &&
        ((rc = add_candidates(&ks, va, base, x->err)) ||
         (rc = add_candidates(&ks, vb, base, x->err))))
        goto out;
    if (rc == STRATA_OUT_OF_MEMORY) {
        err_set(x->err, rc, "out of memory computing a diff");
        goto out;
    }
    struct buf items;
    buf_init(&items);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &items, buf_pack_write);
    uint64_t n = 0;
    bool truncated = false;
    struct btree_iter it;
    btree_seek(&ks.t, (const uint8_t *)"", 0, &it);
    struct entry *e;
    while (rc == 0 && (e = btree_next(&it)) != NULL) {
        const uint8_t *sp, *rest;
        size_t slen, rlen;
        int tag;
        if (ikey_split(e->key, e->klen, &sp, &slen, &tag, &rest, &rlen) || !kind_name(tag))
            continue;
        const struct version *av, *bv, *basev = NULL;
        if ((rc = read_view(va, e->key, e->klen, &av, x->err)) ||
            (rc = read_view(vb, e->key, e->klen, &bv, x->err)) ||
            (three && related && (rc = read_view(base, e->key, e->klen, &basev, x->err))))
            break;
        if (same(av, bv) && (!three || !related || same(av, basev)))
            continue;
        if (n == limit) {
            truncated = true;
            break;
        }
        n++;
        msgpack_pack_map(&pk, three ? 7 : 5);
        mp_pack_cstr(&pk, "kind");
        mp_pack_cstr(&pk, kind_name(tag));
        mp_pack_cstr(&pk, "space");
        mp_pack_str(&pk, (const char *)sp, slen);
        mp_pack_cstr(&pk, "key");
        pack_user_key(&pk, tag, rest, rlen);
        mp_pack_cstr(&pk, "a");
        pack_opt_value(&pk, av);
        mp_pack_cstr(&pk, "b");
        pack_opt_value(&pk, bv);
        if (three) {
            mp_pack_cstr(&pk, "base");
            pack_opt_value(&pk, related ? basev : NULL);
            const char *status = !related          ? "conflict"
                                 : same(av, bv)    ? "both_same"
                                 : same(bv, basev) ? "a_only"
                                 : same(av, basev) ? "b_only"
                                                   : "conflict";
            mp_pack_cstr(&pk, "status");
            mp_pack_cstr(&pk, status);
        }
    }
    if (rc == 0) {
        msgpack_pack_map(x->pk, three ? 4 : 3);
        mp_pack_cstr(x->pk, "changes");
        msgpack_pack_array(x->pk, (uint32_t)n);
        mp_pack_raw(x->pk, items.data, items.len);
        mp_pack_cstr(x->pk, "count");
        msgpack_pack_uint64(x->pk, n);
        mp_pack_cstr(x->pk, "truncated");
        msgpack_pack_bool(x->pk, truncated);
        if (three) {
            mp_pack_cstr(x->pk, "base");
            if (related) {
                msgpack_pack_map(x->pk, 2);
                mp_pack_cstr(x->pk, "branch");
                mp_pack_cstr(x->pk, base.b->name);
                mp_pack_cstr(x->pk, "version");
                msgpack_pack_uint64(x->pk, base.ver);
            } else {
                msgpack_pack_nil(x->pk);
            }
        }
    }
    buf_close(&items);
out:
    btree_close(&ks.t, keyset_free_entry);
    return rc;
}

/* ---- Merge ------------------------------------------------------------------------------ */

#define MAX_EVENT_SPACES 256

static int branch_merge(struct exec *x)
{
    struct branch *src, *dst;
    const char *strategy = "strict";
    size_t stlen = 6;
    int rc;
    if ((rc = arg_branch(x, "source", &src)) || (rc = arg_branch(x, "target", &dst)) ||
        (rc = arg_str_opt(x, "strategy", &strategy, &stlen, NULL)))
        return rc;
    bool source_wins;
    if (stlen == 6 && memcmp(strategy, "strict", 6) == 0)
        source_wins = false;
    else if (stlen == 11 && memcmp(strategy, "source_wins", 11) == 0)
        source_wins = true;
    else
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "strategy must be 'strict' or 'source_wins'");
    if (src == dst)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "cannot merge a branch into itself");

    struct view base, vs = {src, x->s->version}, vt = {dst, x->s->version};
    bool related;
    if ((rc = merge_base(x->s, src, dst, &base, &related, x->err)))
        return rc;
    if (!related)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "branches '%s' and '%s' share no history: nothing to merge against",
                       src->name, dst->name);
    struct keyset ks;
    btree_init(&ks.t);
    struct buf conf, tmp;
    buf_init(&conf);
    buf_init(&tmp);
    msgpack_packer cpk, tpk;
    msgpack_packer_init(&cpk, &conf, buf_pack_write);
    msgpack_packer_init(&tpk, &tmp, buf_pack_write);
    uint32_t nconf = 0;
    uint64_t changes = 0;
    char evspaces[MAX_EVENT_SPACES][65];
    int nev = 0;
    struct exec tx = *x; /* exec on the target, for primitives' merge hooks */
    tx.b = dst;
    tx.at = (struct read_at){UINT64_MAX, 0, false};
    tx.at_head = true;

    if ((rc = add_candidates(&ks, vs, base, x->err)) ||
        (rc = add_candidates(&ks, vt, base, x->err))) {
        if (rc == STRATA_OUT_OF_MEMORY)
            err_set(x->err, rc, "out of memory computing a merge");
        goto out;
    }
    struct btree_iter it;
    btree_seek(&ks.t, (const uint8_t *)"", 0, &it);
    struct entry *e;
    while ((e = btree_next(&it)) != NULL) {
        const uint8_t *sp, *rest;
        size_t slen, rlen;
        int tag;
        bool meta = ikey_split(e->key, e->klen, &sp, &slen, &tag, &rest, &rlen) != 0;
        if (meta && e->klen >= 2 && e->key[1] == TAG_MERGE)
            continue; /* merge records are per-branch bookkeeping */
        if (!meta && (tag == TAG_EVENT || tag == TAG_EVENT_HEAD)) {
            bool seen = false;
            for (int i = 0; i < nev && !seen; i++)
                seen = strlen(evspaces[i]) == slen && memcmp(evspaces[i], sp, slen) == 0;
            if (!seen) {
                if (nev == MAX_EVENT_SPACES) {
                    rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                                 "merge touches event logs in more than %d spaces",
                                 MAX_EVENT_SPACES);
                    goto out;
                }
                memcpy(evspaces[nev], sp, slen);
                evspaces[nev++][slen] = '\0';
            }
            continue;
        }
        const struct version *bv, *sv, *tv;
        if ((rc = read_view(base, e->key, e->klen, &bv, x->err)) ||
            (rc = read_view(vs, e->key, e->klen, &sv, x->err)) ||
            (rc = read_view(vt, e->key, e->klen, &tv, x->err)))
            goto out;
        if (same(sv, bv) || same(sv, tv))
            continue; /* source did not change it, or both made the same change */
        if (same(tv, bv)) {
            rc = stage_put(x->stage, dst, e->key, e->klen, sv ? sv->data : NULL, sv ? sv->len : 0);
            changes += !meta; /* a space registered on the source alone is no key change */
            if (rc) {
                err_set(x->err, rc, "out of memory");
                goto out;
            }
            continue;
        }
        if (!meta && tag == TAG_JSON) {
            uint32_t before = 0;
            buf_reset(&tmp);
            rc = json_merge3(&x->s->cfg, bv ? bv->data : NULL, bv ? bv->len : 0,
                             tv ? tv->data : NULL, tv ? tv->len : 0, sv ? sv->data : NULL,
                             sv ? sv->len : 0, source_wins, x->scratch, &tpk, &before, x->err);
            if (rc)
                goto out;
            /* Re-label each conflicting path with its document. */
            msgpack_zone z;
            msgpack_zone_init(&z, 256);
            size_t off = 0;
            msgpack_object po;
            for (uint32_t c = 0; c < before; c++) {
                msgpack_unpack_return ur =
                    msgpack_unpack((const char *)tmp.data, tmp.len, &off, &z, &po);
                if ((ur != MSGPACK_UNPACK_SUCCESS && ur != MSGPACK_UNPACK_EXTRA_BYTES) ||
                    po.type != MSGPACK_OBJECT_STR)
                    break;
                char suffix[512];
                snprintf(suffix, sizeof suffix, " %.*s", (int)po.via.str.size, po.via.str.ptr);
                conflict_label(&cpk, tag, sp, slen, rest, rlen, suffix);
                nconf++;
            }
            msgpack_zone_destroy(&z);
            if (before == 0 || source_wins) {
                bool del = x->scratch->len == 0;
                rc = stage_put(x->stage, dst, e->key, e->klen, del ? NULL : x->scratch->data,
                               x->scratch->len);
                changes++;
                if (rc) {
                    err_set(x->err, rc, "out of memory");
                    goto out;
                }
            }
            continue;
        }
        if (meta) { /* space registry: union */
            if (sv && !tv && (rc = stage_put(x->stage, dst, e->key, e->klen, sv->data, sv->len))) {
                err_set(x->err, rc, "out of memory");
                goto out;
            }
            continue;
        }
        conflict_label(&cpk, tag, sp, slen, rest, rlen, NULL);
        nconf++;
        if (source_wins) {
            rc = stage_put(x->stage, dst, e->key, e->klen, sv ? sv->data : NULL, sv ? sv->len : 0);
            changes++;
            if (rc) {
                err_set(x->err, rc, "out of memory");
                goto out;
            }
        }
    }
    struct read_at src_at = {vs.ver, 0, false}, base_at = {base.ver, 0, false};
    for (int i = 0; i < nev; i++) {
        tx.slen = strlen(evspaces[i]);
        memcpy(tx.space, evspaces[i], tx.slen + 1);
        size_t before = x->stage->n;
        /* The base is read in the source; a fork base is the source's own lineage at a
         * version before its first write, so that read is the ancestor's state. */
        if ((rc = event_merge_space(&tx, src, &src_at, &base_at, source_wins, &cpk, &nconf)))
            goto out;
        changes += x->stage->n > before;
    }
    if (nconf && !source_wins) {
        /* strict: refuse and write nothing; the message lists the conflicts. */
        char list[ERR_MSG_MAX - 60];
        size_t used = 0, off = 0;
        uint32_t shown = 0;
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        msgpack_object po;
        msgpack_unpack_return ur;
        list[0] = '\0';
        while (off < conf.len &&
               ((ur = msgpack_unpack((const char *)conf.data, conf.len, &off, &z, &po)) ==
                    MSGPACK_UNPACK_SUCCESS ||
                ur == MSGPACK_UNPACK_EXTRA_BYTES) &&
               po.type == MSGPACK_OBJECT_STR && used + po.via.str.size + 3 < sizeof list) {
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%.*s", used ? ", " : "",
                                     (int)po.via.str.size, po.via.str.ptr);
            shown++;
        }
        msgpack_zone_destroy(&z);
        stage_close(x->stage);
        stage_init(x->stage);
        rc =
            err_set(x->err, STRATA_CONFLICT, "merge '%s' into '%s': %u conflict%s: %s%s", src->name,
                    dst->name, nconf, nconf == 1 ? "" : "s", list, shown < nconf ? ", ..." : "");
        goto out;
    }
    /* Record the merge so the next one starts here (same version as the merge). */
    uint8_t mk[10];
    merge_key(mk, src->id);
    struct buf recbuf;
    buf_init(&recbuf);
    msgpack_packer rpk;
    msgpack_packer_init(&rpk, &recbuf, buf_pack_write);
    msgpack_pack_array(&rpk, 2);
    msgpack_pack_uint64(&rpk, vs.ver);
    msgpack_pack_uint64(&rpk, x->wver);
    rc = stage_put(x->stage, dst, mk, sizeof mk, recbuf.data, recbuf.len);
    buf_close(&recbuf);
    if (rc) {
        err_set(x->err, rc, "out of memory");
        goto out;
    }
    pack_write_result(x, 3);
    mp_pack_cstr(x->pk, "merged");
    msgpack_pack_true(x->pk);
    mp_pack_cstr(x->pk, "changes");
    msgpack_pack_uint64(x->pk, changes);
    mp_pack_cstr(x->pk, "conflicts");
    msgpack_pack_array(x->pk, nconf);
    mp_pack_raw(x->pk, conf.data, conf.len);
out:
    buf_close(&conf);
    buf_close(&tmp);
    btree_close(&ks.t, keyset_free_entry);
    return rc;
}

const struct op_def merge_ops[] = {
    {"branch.diff", 0, branch_diff},
    {"branch.merge", OP_WRITE, branch_merge},
    {NULL, 0, NULL},
};
