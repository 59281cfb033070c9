/* JSON document primitive: whole documents stored as one canonical msgpack value under
 * TAG_JSON, addressed by paths (grammar in json_path.h), and the per-path three-way merge
 * used by branch merge.
 *
 * Path semantics shared by json.get / json.set / json.delete:
 * - a missing member or an index at or past the end is "absent" (get: nil; delete: no-op);
 * - stepping into a value of the wrong kind ('.name' into a non-object, '[i]' into a
 *   non-array) is WRONG_TYPE, naming the path and the offending prefix;
 * - json.set creates missing members as empty objects on the way (like mkdir -p) when the
 *   next segment is '.name'; it never creates arrays; index == length appends only in the
 *   last segment, any other index past the end is INVALID_ARGUMENT.
 * Modified documents are rebuilt as msgpack_object trees in a zone and re-encoded with
 * value_encode, so the size and nesting limits hold for the whole document. */
#include "internal.h"
#include "json_path.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "null";
    case MSGPACK_OBJECT_BOOLEAN:
        return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "a number";
    case MSGPACK_OBJECT_STR:
        return "a string";
    case MSGPACK_OBJECT_BIN:
        return "bytes";
    case MSGPACK_OBJECT_ARRAY:
        return "an array";
    case MSGPACK_OBJECT_MAP:
        return "an object";
    default:
        return "an unsupported value";
    }
}

static bool key_eq(const msgpack_object *k, const char *name, size_t len)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
           (len == 0 || memcmp(k->via.str.ptr, name, len) == 0);
}

/* Position of the first member named `name`, or -1. The first one wins if a document
 * written as raw msgpack repeats a key. */
static int64_t member_pos(const msgpack_object *map, const char *name, size_t len)
{
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (key_eq(&map->via.map.ptr[i].key, name, len))
            return i;
    return -1;
}

/* ---- Path errors ------------------------------------------------------------------------ */

/* Fill err with `code` and "path '<full>': '<first n segments>' <what>". */
static int path_error(struct exec *x, int code, const struct json_path *p, size_t n,
                      const char *what)
{
    struct buf full, prefix;
    buf_init(&full);
    buf_init(&prefix);
    if (json_path_render(p, p->n, &full) || json_path_render(p, n, &prefix))
        err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory rendering a path");
    else
        err_set(x->err, code, "path '%.100s': '%.100s' %s", (const char *)full.data,
                (const char *)prefix.data, what);
    buf_close(&full);
    buf_close(&prefix);
    return x->err->code;
}

/* Check that segment i can be applied to cur: WRONG_TYPE otherwise. */
static int step_check(struct exec *x, const struct json_path *p, size_t i,
                      const msgpack_object *cur)
{
    bool idx = p->segs[i].is_index;
    if (cur->type == (idx ? MSGPACK_OBJECT_ARRAY : MSGPACK_OBJECT_MAP))
        return 0;
    char what[64];
    snprintf(what, sizeof what, "is %s, not %s", type_name(cur), idx ? "an array" : "an object");
    return path_error(x, STRATA_WRONG_TYPE, p, i, what);
}

/* The child addressed by segment sg in cur (already type-checked), or NULL if absent. */
static msgpack_object *child(msgpack_object *cur, const struct json_seg *sg)
{
    if (sg->is_index)
        return sg->index < cur->via.array.size ? &cur->via.array.ptr[sg->index] : NULL;
    int64_t pos = member_pos(cur, sg->name, sg->len);
    return pos < 0 ? NULL : &cur->via.map.ptr[pos].val;
}

/* Follow the first n segments from root. *out is the addressed value, or NULL if some
 * member or element on the way is absent. */
static int walk(struct exec *x, const struct json_path *p, size_t n, msgpack_object *root,
                msgpack_object **out)
{
    msgpack_object *cur = root;
    for (size_t i = 0; cur && i < n; i++) {
        int rc = step_check(x, p, i, cur);
        if (rc)
            return rc;
        cur = child(cur, &p->segs[i]);
    }
    *out = cur;
    return 0;
}

/* ---- Tree edits (all memory from the zone of the decoded document) ------------------- */

static msgpack_object *array_append(msgpack_zone *z, msgpack_object *arr)
{
    uint32_t n = arr->via.array.size;
    msgpack_object *ptr = msgpack_zone_malloc(z, ((size_t)n + 1) * sizeof *ptr);
    if (ptr == NULL)
        return NULL;
    if (n)
        memcpy(ptr, arr->via.array.ptr, n * sizeof *ptr);
    arr->via.array.ptr = ptr;
    arr->via.array.size = n + 1;
    return &ptr[n];
}

/* Add member `name` (the key borrows name) at the end of map; returns its value slot. */
static msgpack_object *map_add(msgpack_zone *z, msgpack_object *map, const char *name, size_t len)
{
    uint32_t n = map->via.map.size;
    msgpack_object_kv *ptr = msgpack_zone_malloc(z, ((size_t)n + 1) * sizeof *ptr);
    if (ptr == NULL)
        return NULL;
    if (n)
        memcpy(ptr, map->via.map.ptr, n * sizeof *ptr);
    ptr[n].key.type = MSGPACK_OBJECT_STR;
    ptr[n].key.via.str.ptr = name;
    ptr[n].key.via.str.size = (uint32_t)len;
    map->via.map.ptr = ptr;
    map->via.map.size = n + 1;
    return &ptr[n].val;
}

static void empty_map(msgpack_object *o)
{
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = 0;
    o->via.map.ptr = NULL;
}

/* Set the value at path p to val in the document root (present = the document exists). */
static int set_path(struct exec *x, msgpack_zone *z, const struct json_path *p,
                    msgpack_object *root, bool present, const msgpack_object *val)
{
    if (p->n == 0) {
        *root = *val;
        return 0;
    }
    if (!present) {
        if (p->segs[0].is_index)
            return path_error(x, STRATA_INVALID_ARGUMENT, p, 0,
                              "does not exist; only objects are created along a path");
        empty_map(root);
    }
    msgpack_object *cur = root;
    for (size_t i = 0; i < p->n; i++) {
        const struct json_seg *sg = &p->segs[i];
        bool last = i + 1 == p->n;
        int rc = step_check(x, p, i, cur);
        if (rc)
            return rc;
        msgpack_object *next = child(cur, sg);
        if (next == NULL && sg->is_index) {
            if (!last || sg->index > cur->via.array.size) {
                char what[96];
                snprintf(what, sizeof what, "has length %u: index %u is past its end%s",
                         (unsigned)cur->via.array.size, (unsigned)sg->index,
                         last ? " (index == length appends)" : "");
                return path_error(x, STRATA_INVALID_ARGUMENT, p, i, what);
            }
            next = array_append(z, cur);
        } else if (next == NULL) {
            if (!last && p->segs[i + 1].is_index)
                return path_error(x, STRATA_INVALID_ARGUMENT, p, i + 1,
                                  "does not exist; only objects are created along a path");
            next = map_add(z, cur, sg->name, sg->len);
            if (next && !last)
                empty_map(next);
        }
        if (next == NULL)
            return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory editing a document");
        cur = next;
    }
    *cur = *val;
    return 0;
}

/* Remove the member or element at p (p->n >= 1). *deleted says whether it existed. */
static int delete_path(struct exec *x, const struct json_path *p, msgpack_object *root,
                       bool *deleted)
{
    msgpack_object *parent;
    size_t last = p->n - 1;
    int rc = walk(x, p, last, root, &parent);
    *deleted = false;
    if (rc || parent == NULL)
        return rc;
    if ((rc = step_check(x, p, last, parent)))
        return rc;
    const struct json_seg *sg = &p->segs[last];
    if (sg->is_index) {
        uint32_t n = parent->via.array.size;
        if (sg->index >= n)
            return 0;
        msgpack_object *a = parent->via.array.ptr;
        memmove(&a[sg->index], &a[sg->index + 1], (n - sg->index - 1) * sizeof *a);
        parent->via.array.size = n - 1;
    } else {
        int64_t pos = member_pos(parent, sg->name, sg->len);
        if (pos < 0)
            return 0;
        uint32_t n = parent->via.map.size;
        msgpack_object_kv *m = parent->via.map.ptr;
        memmove(&m[pos], &m[pos + 1], (n - (size_t)pos - 1) * sizeof *m);
        parent->via.map.size = n - 1;
    }
    *deleted = true;
    return 0;
}

/* ---- Loading documents ------------------------------------------------------------------ */

/* A decoded document. The objects borrow the stored bytes (versions are immutable and a
 * staged value lives until the command stages this key again, after re-encoding). */
struct doc {
    msgpack_zone z;
    msgpack_object root;
    bool present;
};

static int doc_load(struct exec *x, const char *id, size_t idlen, struct doc *d)
{
    const uint8_t *data;
    size_t len;
    d->present = false;
    int rc = exec_read(x, TAG_JSON, id, idlen, &data, &len, NULL);
    if (rc)
        return rc;
    if (!msgpack_zone_init(&d->z, 1024))
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory decoding a document");
    if (data == NULL)
        return 0;
    if ((rc = value_decode(data, len, &d->z, &d->root))) {
        msgpack_zone_destroy(&d->z);
        return err_set(x->err, rc, "cannot decode stored document '%.*s'",
                       (int)(idlen > 100 ? 100 : idlen), id);
    }
    d->present = true;
    return 0;
}

static int arg_path(struct exec *x, bool required, struct json_path *p)
{
    const char *text = "$";
    size_t len = 1;
    int rc = required ? arg_str(x, "path", &text, &len) : arg_str_opt(x, "path", &text, &len, NULL);
    return rc ? rc : json_path_parse(text, len, x->s->cfg.max_depth, p, x->err);
}

/* ---- Commands ------------------------------------------------------------------------- */

static int json_set(struct exec *x)
{
    const char *id;
    size_t idlen;
    const msgpack_object *val;
    struct json_path p;
    struct doc d;
    int rc;
    if ((rc = arg_key(x, "key", &id, &idlen)) || (rc = arg_value(x, "value", &val)) ||
        (rc = arg_path(x, true, &p)))
        return rc;
    if ((rc = doc_load(x, id, idlen, &d)))
        goto out_path;
    if ((rc = set_path(x, &d.z, &p, &d.root, d.present, val)) ||
        (rc = value_encode(&x->s->cfg, &d.root, x->scratch, x->err)) ||
        (rc = exec_stage(x, TAG_JSON, id, idlen, x->scratch->data, x->scratch->len)))
        goto out_doc;
    pack_write_result(x, 0);
out_doc:
    msgpack_zone_destroy(&d.z);
out_path:
    json_path_free(&p);
    return rc;
}

static int json_get(struct exec *x)
{
    const char *id;
    size_t idlen;
    struct json_path p;
    struct doc d;
    msgpack_object *node = NULL;
    int rc;
    if ((rc = arg_key(x, "key", &id, &idlen)) || (rc = arg_path(x, false, &p)))
        return rc;
    if ((rc = doc_load(x, id, idlen, &d)))
        goto out_path;
    if (d.present && (rc = walk(x, &p, p.n, &d.root, &node)))
        goto out_doc;
    if (node == NULL)
        msgpack_pack_nil(x->pk);
    else if (value_pack(x->pk, node))
        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory packing the result");
out_doc:
    msgpack_zone_destroy(&d.z);
out_path:
    json_path_free(&p);
    return rc;
}

static int json_delete(struct exec *x)
{
    const char *id;
    size_t idlen;
    struct json_path p;
    struct doc d;
    bool deleted = false;
    int rc;
    if ((rc = arg_key(x, "key", &id, &idlen)) || (rc = arg_path(x, false, &p)))
        return rc;
    if ((rc = doc_load(x, id, idlen, &d)))
        goto out_path;
    if (d.present && p.n == 0) {
        deleted = true;
        rc = exec_stage(x, TAG_JSON, id, idlen, NULL, 0);
    } else if (d.present) {
        if ((rc = delete_path(x, &p, &d.root, &deleted)) == 0 && deleted &&
            (rc = value_encode(&x->s->cfg, &d.root, x->scratch, x->err)) == 0)
            rc = exec_stage(x, TAG_JSON, id, idlen, x->scratch->data, x->scratch->len);
    }
    if (rc)
        goto out_doc;
    /* Deleting something absent writes nothing, like kv.delete. */
    if (deleted)
        pack_write_result(x, 1);
    else
        msgpack_pack_map(x->pk, 1);
    mp_pack_cstr(x->pk, "deleted");
    msgpack_pack_bool(x->pk, deleted);
out_doc:
    msgpack_zone_destroy(&d.z);
out_path:
    json_path_free(&p);
    return rc;
}

static int json_list(struct exec *x)
{
    return prim_list(x, TAG_JSON, false);
}

static int json_history(struct exec *x)
{
    const char *id;
    size_t idlen;
    int rc = arg_key(x, "key", &id, &idlen);
    return rc ? rc : prim_history(x, TAG_JSON, id, idlen);
}

const struct op_def json_ops[] = {
    {"json.set", OP_WRITE | OP_BRANCH | OP_BATCHABLE, json_set},
    {"json.get", OP_BRANCH, json_get},
    {"json.delete", OP_WRITE | OP_BRANCH | OP_BATCHABLE, json_delete},
    {"json.list", OP_BRANCH, json_list},
    {"json.history", OP_BRANCH, json_history},
    {NULL, 0, NULL},
};

/* ---- Three-way merge ---------------------------------------------------------------- */

/* Structural equality of two values, equivalent to byte equality of their canonical
 * encodings (floats compare by bits, map members in order); NULL = absent. */
static bool obj_equal(const msgpack_object *a, const msgpack_object *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    bool af = a->type == MSGPACK_OBJECT_FLOAT32 || a->type == MSGPACK_OBJECT_FLOAT64;
    bool bf = b->type == MSGPACK_OBJECT_FLOAT32 || b->type == MSGPACK_OBJECT_FLOAT64;
    if (af || bf)
        return af && bf && memcmp(&a->via.f64, &b->via.f64, sizeof a->via.f64) == 0;
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case MSGPACK_OBJECT_NIL:
        return true;
    case MSGPACK_OBJECT_BOOLEAN:
        return a->via.boolean == b->via.boolean;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return a->via.u64 == b->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return a->via.i64 == b->via.i64;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
        return a->via.str.size == b->via.str.size &&
               (a->via.str.size == 0 ||
                memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0);
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size)
            return false;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (!obj_equal(&a->via.array.ptr[i], &b->via.array.ptr[i]))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        if (a->via.map.size != b->via.map.size)
            return false;
        for (uint32_t i = 0; i < a->via.map.size; i++)
            if (!obj_equal(&a->via.map.ptr[i].key, &b->via.map.ptr[i].key) ||
                !obj_equal(&a->via.map.ptr[i].val, &b->via.map.ptr[i].val))
                return false;
        return true;
    default:
        return false; /* not a StrataDB value */
    }
}

/* Sorted index of a map's members for O(log n) lookup: large documents must not make
 * merge quadratic. Sorted by (key bytes, position) so lookups find the first occurrence. */
struct keyidx {
    const msgpack_object_kv *kv;
    uint32_t pos;
};

static int keyidx_cmp_str(const char *a, size_t alen, const char *b, size_t blen)
{
    return bkey_cmp((const uint8_t *)a, alen, (const uint8_t *)b, blen);
}

static int keyidx_cmp(const void *pa, const void *pb)
{
    const struct keyidx *a = pa, *b = pb;
    int c = keyidx_cmp_str(a->kv->key.via.str.ptr, a->kv->key.via.str.size, b->kv->key.via.str.ptr,
                           b->kv->key.via.str.size);
    return c ? c : (a->pos > b->pos) - (a->pos < b->pos);
}

struct members {
    struct keyidx *ix;
    uint32_t n;
};

/* Index the string-keyed members of map (NULL or a non-map gives an empty index). */
static int members_index(msgpack_zone *z, const msgpack_object *map, struct members *m)
{
    m->ix = NULL;
    m->n = 0;
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP || map->via.map.size == 0)
        return 0;
    m->ix = msgpack_zone_malloc(z, map->via.map.size * sizeof *m->ix);
    if (m->ix == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (map->via.map.ptr[i].key.type == MSGPACK_OBJECT_STR)
            m->ix[m->n++] = (struct keyidx){&map->via.map.ptr[i], i};
    qsort(m->ix, m->n, sizeof *m->ix, keyidx_cmp);
    return 0;
}

/* The first member with this key, or NULL. */
static const struct keyidx *members_find(const struct members *m, const msgpack_object *key)
{
    uint32_t lo = 0, hi = m->n;
    while (lo < hi) { /* lower bound */
        uint32_t mid = lo + (hi - lo) / 2;
        const msgpack_object *k = &m->ix[mid].kv->key;
        if (keyidx_cmp_str(k->via.str.ptr, k->via.str.size, key->via.str.ptr, key->via.str.size) <
            0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < m->n && key_eq(&m->ix[lo].kv->key, key->via.str.ptr, key->via.str.size))
        return &m->ix[lo];
    return NULL;
}

struct merge {
    msgpack_zone z;
    struct buf path; /* path of the value being merged */
    bool source_wins;
    msgpack_packer *conflicts;
    uint32_t *nconflicts;
    struct err *err;
};

static int merge_value(struct merge *m, const msgpack_object *b, const msgpack_object *t,
                       const msgpack_object *s, const msgpack_object **out);

/* Merge two objects member by member (b is the base object or NULL). Result order:
 * target's members in target order, then members only in source in source order. */
static int merge_maps(struct merge *m, const msgpack_object *b, const msgpack_object *t,
                      const msgpack_object *s, const msgpack_object **out)
{
    struct members bi, ti, si;
    int rc;
    if ((rc = members_index(&m->z, b, &bi)) || (rc = members_index(&m->z, t, &ti)) ||
        (rc = members_index(&m->z, s, &si)))
        return err_set(m->err, rc, "out of memory merging a document");
    size_t cap = (size_t)t->via.map.size + s->via.map.size;
    msgpack_object_kv *kv = cap ? msgpack_zone_malloc(&m->z, cap * sizeof *kv) : NULL;
    msgpack_object *res = msgpack_zone_malloc(&m->z, sizeof *res);
    if ((cap && kv == NULL) || res == NULL)
        return err_set(m->err, STRATA_OUT_OF_MEMORY, "out of memory merging a document");
    uint32_t n = 0;
    size_t plen = m->path.len;
    for (int side = 0; side < 2; side++) {
        const msgpack_object *map = side == 0 ? t : s;
        const struct members *own = side == 0 ? &ti : &si;
        for (uint32_t i = 0; i < map->via.map.size; i++) {
            const msgpack_object *key = &map->via.map.ptr[i].key;
            if (key->type != MSGPACK_OBJECT_STR || members_find(own, key)->pos != i)
                continue; /* repeated key: the first occurrence is the member */
            if (side == 1 && members_find(&ti, key))
                continue; /* already merged with the target's member */
            const struct keyidx *bk = members_find(&bi, key), *tk = members_find(&ti, key),
                                *sk = members_find(&si, key);
            const msgpack_object *r;
            if (json_path_append_name(&m->path, key->via.str.ptr, key->via.str.size))
                return err_set(m->err, STRATA_OUT_OF_MEMORY, "out of memory merging a document");
            rc = merge_value(m, bk ? &bk->kv->val : NULL, tk ? &tk->kv->val : NULL,
                             sk ? &sk->kv->val : NULL, &r);
            m->path.len = plen;
            if (rc)
                return rc;
            if (r) {
                kv[n].key = *key;
                kv[n++].val = *r;
            }
        }
    }
    res->type = MSGPACK_OBJECT_MAP;
    res->via.map.size = n;
    res->via.map.ptr = kv;
    *out = res;
    return 0;
}

/* Merge one value at m->path; NULL = absent. *out is the merged value or NULL (absent). */
static int merge_value(struct merge *m, const msgpack_object *b, const msgpack_object *t,
                       const msgpack_object *s, const msgpack_object **out)
{
    if (obj_equal(t, s) || obj_equal(b, s)) { /* same change, or only the target changed */
        *out = t;
        return 0;
    }
    if (obj_equal(b, t)) { /* only the source changed */
        *out = s;
        return 0;
    }
    /* Both changed differently: objects merge per member (a non-object base counts as
     * "no members"); anything else — scalars, arrays, absence — is one conflict here. */
    if (t && s && t->type == MSGPACK_OBJECT_MAP && s->type == MSGPACK_OBJECT_MAP)
        return merge_maps(m, b && b->type == MSGPACK_OBJECT_MAP ? b : NULL, t, s, out);
    if (m->conflicts)
        mp_pack_str(m->conflicts, (const char *)m->path.data, m->path.len);
    if (m->nconflicts)
        (*m->nconflicts)++;
    *out = m->source_wins ? s : t;
    return 0;
}

static int decode_opt(struct merge *m, const uint8_t *data, size_t len, msgpack_object *o,
                      const msgpack_object **out, const char *what)
{
    *out = NULL;
    if (data == NULL || len == 0)
        return 0;
    int rc = value_decode(data, len, &m->z, o);
    if (rc)
        return err_set(m->err, rc, "cannot decode the %s document of a merge", what);
    *out = o;
    return 0;
}

int json_merge3(const struct storage_config *cfg, const uint8_t *base, size_t blen,
                const uint8_t *target, size_t tlen, const uint8_t *source, size_t slen,
                bool source_wins, struct buf *out, msgpack_packer *conflicts, uint32_t *nconflicts,
                struct err *err)
{
    struct merge m = {
        .source_wins = source_wins, .conflicts = conflicts, .nconflicts = nconflicts, .err = err};
    msgpack_object ob, ot, os;
    const msgpack_object *b, *t, *s, *r;
    int rc;
    buf_reset(out);
    if (!msgpack_zone_init(&m.z, 4096))
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory merging a document");
    buf_init(&m.path);
    if (buf_append_u8(&m.path, '$')) {
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory merging a document");
        goto out;
    }
    if ((rc = decode_opt(&m, base, blen, &ob, &b, "base")) ||
        (rc = decode_opt(&m, target, tlen, &ot, &t, "target")) ||
        (rc = decode_opt(&m, source, slen, &os, &s, "source")) ||
        (rc = merge_value(&m, b, t, s, &r)))
        goto out;
    if (r)
        rc = value_encode(cfg, r, out, err);
out:
    buf_close(&m.path);
    msgpack_zone_destroy(&m.z);
    return rc;
}
