/* Key-value primitive, plus the generic list / count / history used by all primitives. */
#include "internal.h"

#include <string.h>

#define LIST_DEFAULT 100
#define LIST_MAX 10000

static int arg_limit(struct exec *x, uint64_t *limit)
{
    *limit = LIST_DEFAULT;
    int rc = arg_u64_opt(x, "limit", limit, NULL);
    if (rc == 0 && (*limit == 0 || *limit > LIST_MAX))
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT, "limit must be between 1 and %d",
                     LIST_MAX);
    return rc;
}

int prim_list(struct exec *x, int tag, bool with_values)
{
    const char *prefix = "", *cursor = NULL;
    size_t plen = 0, clen = 0;
    uint64_t limit;
    int rc;
    if ((rc = arg_str_opt(x, "prefix", &prefix, &plen, NULL)) ||
        (rc = arg_str_opt(x, "cursor", &cursor, &clen, NULL)) || (rc = arg_limit(x, &limit)))
        return rc;
    if (plen > x->s->cfg.max_key_bytes || clen > x->s->cfg.max_key_bytes)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "prefix/cursor longer than the key limit");
    uint8_t start[IKEY_MAX + 1], end[IKEY_MAX];
    size_t slen, elen, base;
    base = exec_ikey(x, start, tag, NULL, 0);
    if (cursor && (clen < plen || memcmp(cursor, prefix, plen) < 0)) {
        cursor = NULL; /* a cursor before the prefix means "from the start" */
    }
    if (cursor) {
        memcpy(start + base, cursor, clen);
        start[base + clen] = 0; /* smallest key after the cursor */
        slen = base + clen + 1;
    } else {
        memcpy(start + base, prefix, plen);
        slen = base + plen;
    }
    /* End: the first key after everything starting with the prefix. */
    memcpy(end, start, base);
    memcpy(end + base, prefix, plen);
    elen = key_prefix_end(end, end, base + plen); /* never 0: the tag byte is < 0xff */

    struct view_iter vi;
    view_iter_init(&vi, x->b, &x->at, start, slen, end, elen);
    /* Collect up to limit + 1 to know whether there is a next page. */
    struct entry **es = sm_malloc((limit + 1) * sizeof *es);
    const struct version **vs = sm_malloc((limit + 1) * sizeof *vs);
    uint64_t n = 0;
    if (es == NULL || vs == NULL) {
        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory listing");
        goto out;
    }
    while (n <= limit) {
        int r = view_iter_next(&vi, &es[n], &vs[n], x->err);
        if (r < 0 || r > 1) {
            rc = r;
            goto out;
        }
        if (r == 0)
            break;
        n++;
    }
    bool more = n > limit;
    if (more)
        n = limit;
    msgpack_pack_map(x->pk, 2);
    mp_pack_cstr(x->pk, with_values ? "items" : "keys");
    msgpack_pack_array(x->pk, (uint32_t)n);
    for (uint64_t i = 0; i < n; i++) {
        if (with_values)
            msgpack_pack_array(x->pk, 2);
        mp_pack_str(x->pk, (const char *)es[i]->key + base, es[i]->klen - base);
        if (with_values)
            mp_pack_raw(x->pk, vs[i]->data, vs[i]->len);
    }
    mp_pack_cstr(x->pk, "cursor");
    if (more)
        mp_pack_str(x->pk, (const char *)es[n - 1]->key + base, es[n - 1]->klen - base);
    else
        msgpack_pack_nil(x->pk);
out:
    sm_free(es);
    sm_free(vs);
    return rc;
}

int prim_count(struct exec *x, int tag, uint64_t *count)
{
    const char *prefix = "";
    size_t plen = 0;
    int rc = arg_str_opt(x, "prefix", &prefix, &plen, NULL);
    if (rc)
        return rc;
    if (plen > x->s->cfg.max_key_bytes)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "prefix longer than the key limit");
    uint8_t start[IKEY_MAX], end[IKEY_MAX];
    size_t slen = exec_ikey(x, start, tag, prefix, plen);
    size_t elen = key_prefix_end(end, start, slen); /* never 0: the tag byte is < 0xff */
    return view_count(x->b, &x->at, start, slen, end, elen, count, x->err);
}

int prim_history(struct exec *x, int tag, const void *rest, size_t rlen)
{
    uint64_t limit = UINT64_MAX;
    int rc = arg_u64_opt(x, "limit", &limit, NULL);
    if (rc)
        return rc;
    uint8_t k[IKEY_MAX];
    size_t klen = exec_ikey(x, k, tag, rest, rlen);
    /* Two passes: count, then pack (msgpack arrays need their size first). */
    uint64_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            msgpack_pack_array(x->pk, (uint32_t)n);
        uint64_t seen = 0, bound = x->at.ver;
        for (struct branch *b = x->b; b && seen < limit; b = b->flat ? NULL : b->parent) {
            struct entry *e = branch_get(b, k, klen);
            for (const struct version *v = e ? e->head : NULL; v && seen < limit; v = v->older) {
                if (v->ver > bound || (x->at.by_ts && v->ts > x->at.ts))
                    continue;
                seen++;
                if (pass == 0)
                    continue;
                /* State cells store [counter, value]: show them apart. */
                const msgpack_object *cell = NULL;
                msgpack_object o;
                if (tag == TAG_STATE && v->len != VLEN_TOMB &&
                    value_decode(v->data, v->len, &x->s->zone, &o) == 0 &&
                    o.type == MSGPACK_OBJECT_ARRAY && o.via.array.size == 2)
                    cell = o.via.array.ptr;
                msgpack_pack_map(x->pk, cell ? 5 : 4);
                mp_pack_cstr(x->pk, "value");
                if (cell)
                    value_pack(x->pk, &cell[1]);
                else if (v->len == VLEN_TOMB)
                    msgpack_pack_nil(x->pk);
                else
                    mp_pack_raw(x->pk, v->data, v->len);
                if (cell) {
                    mp_pack_cstr(x->pk, "counter");
                    value_pack(x->pk, &cell[0]);
                }
                mp_pack_cstr(x->pk, "deleted");
                if (v->len == VLEN_TOMB)
                    msgpack_pack_true(x->pk);
                else
                    msgpack_pack_false(x->pk);
                mp_pack_cstr(x->pk, "version");
                msgpack_pack_uint64(x->pk, v->ver);
                mp_pack_cstr(x->pk, "ts");
                msgpack_pack_int64(x->pk, v->ts);
            }
            /* The parent's history is part of this key's lineage only up to the fork. */
            if (b->fork_ver < bound)
                bound = b->fork_ver;
            /* A version visible in this branch at the fork point shadows older lineage:
             * stop when this branch has any version at all at or below the bound. */
            if (e && e->head) {
                const struct version *oldest = e->head;
                while (oldest->older)
                    oldest = oldest->older;
                if (oldest->ver <= bound || (e->flags & ENTRY_PRUNED))
                    break;
            }
        }
        n = seen;
    }
    return 0;
}

/* ---- Commands ------------------------------------------------------------------------- */

static int kv_put(struct exec *x)
{
    const char *key;
    size_t klen;
    const msgpack_object *val;
    int rc;
    if ((rc = arg_key(x, "key", &key, &klen)) || (rc = arg_value(x, "value", &val)) ||
        (rc = value_encode(&x->s->cfg, val, x->scratch, x->err)) ||
        (rc = exec_stage(x, TAG_KV, key, klen, x->scratch->data, x->scratch->len)))
        return rc;
    pack_write_result(x, 0);
    return 0;
}

static int kv_get(struct exec *x)
{
    const char *key;
    size_t klen;
    const uint8_t *val;
    size_t len;
    const struct version *v;
    int rc;
    if ((rc = arg_key(x, "key", &key, &klen)) ||
        (rc = exec_read(x, TAG_KV, key, klen, &val, &len, &v)))
        return rc;
    if (val == NULL)
        msgpack_pack_nil(x->pk);
    else if (v)
        pack_version_result(x->pk, v, true);
    else
        mp_pack_raw(x->pk, val, len); /* staged (inside a batch): value only */
    return 0;
}

static int kv_exists(struct exec *x)
{
    const char *key;
    size_t klen;
    const uint8_t *val;
    size_t len;
    int rc;
    if ((rc = arg_key(x, "key", &key, &klen)) ||
        (rc = exec_read(x, TAG_KV, key, klen, &val, &len, NULL)))
        return rc;
    if (val)
        msgpack_pack_true(x->pk);
    else
        msgpack_pack_false(x->pk);
    return 0;
}

/* Delete: a tombstone only when the key is visible; deleting an absent key writes
 * nothing and takes no version. */
static int delete_one(struct exec *x, const char *key, size_t klen, bool *deleted)
{
    const uint8_t *val;
    size_t len;
    int rc = exec_read(x, TAG_KV, key, klen, &val, &len, NULL);
    *deleted = rc == 0 && val != NULL;
    if (rc || !*deleted)
        return rc;
    return exec_stage(x, TAG_KV, key, klen, NULL, 0);
}

static int kv_delete(struct exec *x)
{
    const char *key;
    size_t klen;
    bool deleted;
    int rc;
    if ((rc = arg_key(x, "key", &key, &klen)) || (rc = delete_one(x, key, klen, &deleted)))
        return rc;
    if (deleted) {
        pack_write_result(x, 1);
    } else {
        msgpack_pack_map(x->pk, 1);
    }
    mp_pack_cstr(x->pk, "deleted");
    msgpack_pack_bool(x->pk, deleted);
    return 0;
}

static int kv_list(struct exec *x)
{
    return prim_list(x, TAG_KV, false);
}

static int kv_scan(struct exec *x)
{
    return prim_list(x, TAG_KV, true);
}

static int kv_count(struct exec *x)
{
    uint64_t n;
    int rc = prim_count(x, TAG_KV, &n);
    if (rc == 0)
        msgpack_pack_uint64(x->pk, n);
    return rc;
}

static int kv_history(struct exec *x)
{
    const char *key;
    size_t klen;
    int rc = arg_key(x, "key", &key, &klen);
    return rc ? rc : prim_history(x, TAG_KV, key, klen);
}

static int str_item(struct exec *x, const msgpack_object *o, const char *what, const char **p,
                    size_t *len)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "%s must be strings", what);
    *p = o->via.str.ptr;
    *len = o->via.str.size;
    return key_check(x, what, *p, *len);
}

static int arg_array(struct exec *x, const char *name, const msgpack_object **out)
{
    *out = arg_get(x, name);
    if (*out == NULL || (*out)->type != MSGPACK_OBJECT_ARRAY)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument '%s' must be an array", name);
    return 0;
}

static int kv_batch_put(struct exec *x)
{
    const msgpack_object *items;
    int rc = arg_array(x, "items", &items);
    for (uint32_t i = 0; rc == 0 && i < items->via.array.size; i++) {
        const msgpack_object *it = &items->via.array.ptr[i];
        const char *key = NULL;
        size_t klen = 0;
        if (it->type != MSGPACK_OBJECT_ARRAY || it->via.array.size != 2)
            return err_set(x->err, STRATA_INVALID_ARGUMENT, "items must be [key, value] pairs");
        if ((rc = str_item(x, &it->via.array.ptr[0], "keys", &key, &klen)) ||
            (rc = value_encode(&x->s->cfg, &it->via.array.ptr[1], x->scratch, x->err)))
            return rc;
        rc = exec_stage(x, TAG_KV, key, klen, x->scratch->data, x->scratch->len);
    }
    if (rc == 0) {
        if (items->via.array.size) /* an empty batch writes nothing and takes no version */
            pack_write_result(x, 1);
        else
            msgpack_pack_map(x->pk, 1);
        mp_pack_cstr(x->pk, "count");
        msgpack_pack_uint32(x->pk, items->via.array.size);
    }
    return rc;
}

static int kv_batch_get(struct exec *x)
{
    const msgpack_object *keys;
    int rc = arg_array(x, "keys", &keys);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < keys->via.array.size; i++) {
        const char *key;
        size_t klen;
        if ((rc = str_item(x, &keys->via.array.ptr[i], "keys", &key, &klen)))
            return rc;
    }
    msgpack_pack_array(x->pk, keys->via.array.size);
    for (uint32_t i = 0; i < keys->via.array.size; i++) {
        const msgpack_object *k = &keys->via.array.ptr[i];
        const uint8_t *val;
        size_t len;
        const struct version *v;
        if ((rc = exec_read(x, TAG_KV, k->via.str.ptr, k->via.str.size, &val, &len, &v)))
            return rc;
        if (val == NULL)
            msgpack_pack_nil(x->pk);
        else if (v)
            pack_version_result(x->pk, v, true);
        else
            mp_pack_raw(x->pk, val, len);
    }
    return 0;
}

static int kv_batch_delete(struct exec *x)
{
    const msgpack_object *keys;
    int rc = arg_array(x, "keys", &keys);
    uint32_t n = 0;
    for (uint32_t i = 0; rc == 0 && i < keys->via.array.size; i++) {
        const char *key = NULL;
        size_t klen = 0;
        bool deleted;
        if ((rc = str_item(x, &keys->via.array.ptr[i], "keys", &key, &klen)) ||
            (rc = delete_one(x, key, klen, &deleted)))
            return rc;
        n += deleted;
    }
    if (rc)
        return rc;
    if (n)
        pack_write_result(x, 1);
    else
        msgpack_pack_map(x->pk, 1);
    mp_pack_cstr(x->pk, "deleted");
    msgpack_pack_uint32(x->pk, n);
    return 0;
}

const struct op_def kv_ops[] = {
    {"kv.put", OP_WRITE | OP_BRANCH | OP_BATCHABLE, kv_put},
    {"kv.get", OP_BRANCH, kv_get},
    {"kv.delete", OP_WRITE | OP_BRANCH | OP_BATCHABLE, kv_delete},
    {"kv.exists", OP_BRANCH, kv_exists},
    {"kv.list", OP_BRANCH, kv_list},
    {"kv.scan", OP_BRANCH, kv_scan},
    {"kv.count", OP_BRANCH, kv_count},
    {"kv.history", OP_BRANCH, kv_history},
    {"kv.batch_put", OP_WRITE | OP_BRANCH | OP_BATCHABLE, kv_batch_put},
    {"kv.batch_get", OP_BRANCH, kv_batch_get},
    {"kv.batch_delete", OP_WRITE | OP_BRANCH | OP_BATCHABLE, kv_batch_delete},
    {NULL, 0, NULL},
};
