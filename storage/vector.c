/* Vector primitive: collections of fixed-dimension float32 vectors with metadata, and
 * exact top-k similarity queries over a branch view (see vector_index.h for the layout).
 *
 * Keys: `C` name -> {"dimension", "metric"}; `v` name 0x00 key -> [f32 bin, metadata].
 * A query is a scan of the collection's key range in the branch view at the read point,
 * so forks, time travel and tombstones come from view_iter for free. */
#include "vector_index.h"

#include <math.h>
#include <string.h>

#define COLL_NAME_MAX 64
#define K_MAX 1000

struct coll {
    const char *name;
    size_t nlen;
    uint32_t dim;
    enum vec_metric metric;
};

/* ---- Collections ----------------------------------------------------------------------- */

static int coll_name_check(struct exec *x, const char *n, size_t len)
{
    bool ok = len >= 1 && len <= COLL_NAME_MAX;
    for (size_t i = 0; ok && i < len; i++) {
        char c = n[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '-' || c == '.';
    }
    if (!ok)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "invalid collection name '%.*s': 1-%d characters of [A-Za-z0-9_.-]",
                       (int)(len > 80 ? 80 : len), n, COLL_NAME_MAX);
    return 0;
}

/* Decode stored collection metadata. Stored bytes are validated, not trusted. */
static int coll_decode(struct exec *x, const uint8_t *val, size_t len, struct coll *c)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    int rc = value_decode(val, len, &z, &o);
    const msgpack_object *d = rc ? NULL : mp_map_get(&o, "dimension");
    const msgpack_object *m = rc ? NULL : mp_map_get(&o, "metric");
    if (d && m && d->type == MSGPACK_OBJECT_POSITIVE_INTEGER && d->via.u64 >= 1 &&
        d->via.u64 <= VEC_DIM_MAX && m->type == MSGPACK_OBJECT_STR &&
        vec_metric_parse(m->via.str.ptr, m->via.str.size, &c->metric) == 0) {
        c->dim = (uint32_t)d->via.u64;
        rc = 0;
    } else {
        rc = err_set(x->err, STRATA_INTERNAL, "collection '%.*s' has corrupt metadata",
                     (int)c->nlen, c->name);
    }
    msgpack_zone_destroy(&z);
    return rc;
}

/* The "collection" argument, validated, and its metadata at the exec's read point. */
static int coll_arg(struct exec *x, struct coll *c, bool *exists)
{
    const uint8_t *val;
    size_t len;
    int rc;
    if ((rc = arg_str(x, "collection", &c->name, &c->nlen)) ||
        (rc = coll_name_check(x, c->name, c->nlen)) ||
        (rc = exec_read(x, TAG_VCOLL, c->name, c->nlen, &val, &len, NULL)))
        return rc;
    if (exists)
        *exists = val != NULL;
    if (val == NULL) {
        if (exists)
            return 0;
        return err_set(x->err, STRATA_NOT_FOUND, "collection '%.*s' not found", (int)c->nlen,
                       c->name);
    }
    return coll_decode(x, val, len, c);
}

/* Internal-key range [start, end) of one collection's vectors: `v` name 0x00 .. name 0x01. */
static void coll_range(struct exec *x, const struct coll *c, uint8_t *start, size_t *slen,
                       uint8_t *end, size_t *elen)
{
    uint8_t rest[COLL_NAME_MAX + 1];
    memcpy(rest, c->name, c->nlen);
    rest[c->nlen] = 0;
    *slen = exec_ikey(x, start, TAG_VECTOR, rest, c->nlen + 1);
    rest[c->nlen] = 1;
    *elen = exec_ikey(x, end, TAG_VECTOR, rest, c->nlen + 1);
}

/* Build `name 0x00 key` (the rest of a vector's internal key). */
static int vec_rest(struct exec *x, const struct coll *c, const char *key, size_t klen,
                    uint8_t *rest, size_t *rlen)
{
    if (c->nlen + 1 + klen > IKEY_MAX - 2 - x->slen)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'key' is too long");
    memcpy(rest, c->name, c->nlen);
    rest[c->nlen] = 0;
    memcpy(rest + c->nlen + 1, key, klen);
    *rlen = c->nlen + 1 + klen;
    return 0;
}

static int vector_create_collection(struct exec *x)
{
    struct coll c;
    bool exists;
    const char *metric;
    size_t mlen;
    uint64_t dim = 0;
    bool has_dim;
    int rc;
    if ((rc = coll_arg(x, &c, &exists)) || (rc = arg_u64_opt(x, "dimension", &dim, &has_dim)) ||
        (rc = arg_str(x, "metric", &metric, &mlen)))
        return rc;
    if (!has_dim || dim < 1 || dim > VEC_DIM_MAX)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'dimension' must be an integer between 1 and %d", VEC_DIM_MAX);
    if (vec_metric_parse(metric, mlen, &c.metric))
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'metric' must be \"cosine\", \"euclidean\" or \"dot\"");
    if (exists)
        return err_set(x->err, STRATA_ALREADY_EXISTS, "collection '%.*s' already exists",
                       (int)c.nlen, c.name);
    buf_reset(x->scratch);
    msgpack_packer pk;
    msgpack_packer_init(&pk, x->scratch, buf_pack_write);
    msgpack_pack_map(&pk, 2);
    mp_pack_cstr(&pk, "dimension");
    msgpack_pack_uint32(&pk, (uint32_t)dim);
    mp_pack_cstr(&pk, "metric");
    if (msgpack_pack_str_with_body(&pk, vec_metric_name(c.metric),
                                   strlen(vec_metric_name(c.metric))))
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory");
    if ((rc = exec_stage(x, TAG_VCOLL, c.name, c.nlen, x->scratch->data, x->scratch->len)))
        return rc;
    pack_write_result(x, 0);
    return 0;
}

/* Tombstone the metadata and every vector visible at the head. The collection name can
 * then be created again (with another dimension) without stale vectors showing through. */
static int vector_delete_collection(struct exec *x)
{
    struct coll c;
    int rc = coll_arg(x, &c, NULL);
    if (rc)
        return rc;
    uint8_t start[IKEY_MAX], end[IKEY_MAX];
    size_t slen, elen;
    coll_range(x, &c, start, &slen, end, &elen);
    struct read_at head = {UINT64_MAX, 0, false};
    struct view_iter vi;
    view_iter_init(&vi, x->b, &head, start, slen, end, elen);
    struct entry *e;
    const struct version *v;
    uint64_t n = 0;
    int r;
    while ((r = view_iter_next(&vi, &e, &v, x->err)) == 1) {
        if (stage_put(x->stage, x->b, e->key, e->klen, NULL, 0))
            return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory staging a delete");
        n++;
    }
    if (r)
        return r;
    if ((rc = exec_stage(x, TAG_VCOLL, c.name, c.nlen, NULL, 0)))
        return rc;
    pack_write_result(x, 1);
    mp_pack_cstr(x->pk, "vectors_deleted");
    msgpack_pack_uint64(x->pk, n);
    return 0;
}

/* Count the vectors of a collection visible at x->at. */
static int coll_count(struct exec *x, const struct coll *c, uint64_t *n)
{
    uint8_t start[IKEY_MAX], end[IKEY_MAX];
    size_t slen, elen;
    coll_range(x, c, start, &slen, end, &elen);
    return view_count(x->b, &x->at, start, slen, end, elen, n, x->err);
}

static int vector_list_collections(struct exec *x)
{
    uint8_t start[IKEY_MAX], end[IKEY_MAX];
    size_t slen = exec_ikey(x, start, TAG_VCOLL, NULL, 0);
    size_t elen = exec_ikey(x, end, TAG_VCOLL + 1, NULL, 0);
    /* Two passes (msgpack arrays need their size first): count, then pack. */
    uint32_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        struct view_iter vi;
        view_iter_init(&vi, x->b, &x->at, start, slen, end, elen);
        struct entry *e;
        const struct version *v;
        int r;
        if (pass == 1)
            msgpack_pack_array(x->pk, total);
        while ((r = view_iter_next(&vi, &e, &v, x->err)) == 1) {
            if (pass == 0) {
                total++;
                continue;
            }
            struct coll c = {(const char *)e->key + slen, e->klen - slen, 0, 0};
            uint64_t count;
            int rc;
            if ((rc = coll_decode(x, v->data, v->len, &c)) || (rc = coll_count(x, &c, &count)))
                return rc;
            msgpack_pack_map(x->pk, 4);
            mp_pack_cstr(x->pk, "name");
            mp_pack_str(x->pk, c.name, c.nlen);
            mp_pack_cstr(x->pk, "dimension");
            msgpack_pack_uint32(x->pk, c.dim);
            mp_pack_cstr(x->pk, "metric");
            mp_pack_cstr(x->pk, vec_metric_name(c.metric));
            mp_pack_cstr(x->pk, "count");
            msgpack_pack_uint64(x->pk, count);
        }
        if (r)
            return r;
    }
    return 0;
}

/* ---- Vectors ------------------------------------------------------------------------------ */

/* Parse argument `name` as a vector of c->dim finite float32 values into out (c->dim
 * floats): an array of numbers, or a bin of dim*4 little-endian bytes. */
static int arg_vector(struct exec *x, const char *name, const struct coll *c, float *out)
{
    const msgpack_object *o = arg_get(x, name);
    if (o && o->type == MSGPACK_OBJECT_BIN) {
        uint32_t n = o->via.bin.size;
        if (n % 4 != 0)
            return err_set(x->err, STRATA_INVALID_ARGUMENT,
                           "argument '%s' as bytes must be a multiple of 4 bytes (float32), "
                           "got %u",
                           name, n);
        if (n / 4 != c->dim)
            return err_set(x->err, STRATA_INVALID_ARGUMENT,
                           "argument '%s' has dimension %u; collection '%.*s' has dimension %u",
                           name, n / 4, (int)c->nlen, c->name, c->dim);
        for (uint32_t i = 0; i < c->dim; i++) {
            out[i] = vec_load((const uint8_t *)o->via.bin.ptr, i);
            if (!isfinite(out[i]))
                return err_set(x->err, STRATA_INVALID_ARGUMENT,
                               "argument '%s': element %u is not finite", name, i);
        }
        return 0;
    }
    if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument '%s' must be an array of numbers or float32 bytes", name);
    if (o->via.array.size != c->dim)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument '%s' has dimension %u; collection '%.*s' has dimension %u", name,
                       o->via.array.size, (int)c->nlen, c->name, c->dim);
    for (uint32_t i = 0; i < c->dim; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        double d;
        if (e->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            d = (double)e->via.u64;
        else if (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            d = (double)e->via.i64;
        else if (e->type == MSGPACK_OBJECT_FLOAT32 || e->type == MSGPACK_OBJECT_FLOAT64)
            d = e->via.f64;
        else
            return err_set(x->err, STRATA_INVALID_ARGUMENT,
                           "argument '%s': element %u is not a number", name, i);
        out[i] = (float)d;
        if (!isfinite(d) || !isfinite(out[i]))
            return err_set(x->err, STRATA_INVALID_ARGUMENT,
                           "argument '%s': element %u is not a finite float32", name, i);
    }
    return 0;
}

static int vector_upsert(struct exec *x)
{
    struct coll c;
    const char *key;
    size_t klen, rlen;
    uint8_t rest[IKEY_MAX];
    int rc;
    if ((rc = coll_arg(x, &c, NULL)) || (rc = arg_key(x, "key", &key, &klen)) ||
        (rc = vec_rest(x, &c, key, klen, rest, &rlen)))
        return rc;
    const msgpack_object *meta = arg_get(x, "metadata");
    if (meta && meta->type != MSGPACK_OBJECT_MAP)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'metadata' must be an object");
    if (meta && (rc = value_check(&x->s->cfg, meta, x->err)))
        return rc;
    float *v = sm_malloc(c.dim * sizeof *v);
    if (v == NULL)
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory");
    if ((rc = arg_vector(x, "vector", &c, v)))
        goto out;
    buf_reset(x->scratch);
    msgpack_packer pk;
    msgpack_packer_init(&pk, x->scratch, buf_pack_write);
    if (vec_pack(&pk, v, c.dim, meta)) {
        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory encoding a vector");
        goto out;
    }
    if (x->scratch->len > x->s->cfg.max_value_bytes) {
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                     "vector value of %zu bytes exceeds the limit of %zu bytes", x->scratch->len,
                     x->s->cfg.max_value_bytes);
        goto out;
    }
    if ((rc = exec_stage(x, TAG_VECTOR, rest, rlen, x->scratch->data, x->scratch->len)))
        goto out;
    pack_write_result(x, 0);
out:
    sm_free(v);
    return rc;
}

static int vector_get(struct exec *x)
{
    struct coll c;
    const char *key;
    size_t klen, rlen, len, mlen;
    uint8_t rest[IKEY_MAX];
    const uint8_t *val, *f32, *meta;
    uint32_t nbytes;
    const struct version *ver;
    int rc;
    if ((rc = coll_arg(x, &c, NULL)) || (rc = arg_key(x, "key", &key, &klen)) ||
        (rc = vec_rest(x, &c, key, klen, rest, &rlen)) ||
        (rc = exec_read(x, TAG_VECTOR, rest, rlen, &val, &len, &ver)))
        return rc;
    if (val == NULL) {
        msgpack_pack_nil(x->pk);
        return 0;
    }
    if (vec_split(val, len, &f32, &nbytes, &meta, &mlen))
        return err_set(x->err, STRATA_INTERNAL, "vector '%.*s' has a corrupt stored value",
                       (int)(klen > 80 ? 80 : klen), key);
    msgpack_pack_map(x->pk, 4);
    mp_pack_cstr(x->pk, "vector");
    msgpack_pack_array(x->pk, nbytes / 4);
    for (uint32_t i = 0; i < nbytes / 4; i++)
        msgpack_pack_double(x->pk, vec_load(f32, i));
    mp_pack_cstr(x->pk, "metadata");
    mp_pack_raw(x->pk, meta, mlen);
    /* A value staged earlier in this command has no stored version yet: it will get the
     * pending write's. */
    mp_pack_cstr(x->pk, "version");
    msgpack_pack_uint64(x->pk, ver ? ver->ver : x->wver);
    mp_pack_cstr(x->pk, "ts");
    msgpack_pack_int64(x->pk, ver ? ver->ts : x->wts);
    return 0;
}

static int vector_delete(struct exec *x)
{
    struct coll c;
    const char *key;
    size_t klen, rlen, len;
    uint8_t rest[IKEY_MAX];
    const uint8_t *val;
    int rc;
    if ((rc = coll_arg(x, &c, NULL)) || (rc = arg_key(x, "key", &key, &klen)) ||
        (rc = vec_rest(x, &c, key, klen, rest, &rlen)) ||
        (rc = exec_read(x, TAG_VECTOR, rest, rlen, &val, &len, NULL)))
        return rc;
    /* Deleting an absent vector writes nothing and takes no version. */
    if (val == NULL) {
        msgpack_pack_map(x->pk, 1);
    } else {
        if ((rc = exec_stage(x, TAG_VECTOR, rest, rlen, NULL, 0)))
            return rc;
        pack_write_result(x, 1);
    }
    mp_pack_cstr(x->pk, "deleted");
    msgpack_pack_bool(x->pk, val != NULL);
    return 0;
}

/* ---- Query ------------------------------------------------------------------------------- */

static void prefetch(const uint8_t *p, size_t len)
{
#if defined(__GNUC__)
    for (size_t i = 0; i < len; i += 64)
        __builtin_prefetch(p + i);
#else
    (void)p;
    (void)len;
#endif
}

/* Scan the collection's range in the view, score every vector, keep the k best that pass
 * the filter. The scan allocates nothing per vector: scores come straight from the stored
 * bytes, and metadata is decoded (into one reused zone) only for candidates good enough
 * to enter the heap, and only when there is a filter. */
static int scan(struct exec *x, const struct coll *c, const struct vec_query *vq,
                const struct vec_filter *f, struct vec_topk *top)
{
    uint8_t start[IKEY_MAX], end[IKEY_MAX];
    size_t slen, elen;
    coll_range(x, c, start, &slen, end, &elen);
    struct view_iter vi;
    view_iter_init(&vi, x->b, &x->at, start, slen, end, elen);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    struct entry *e, *ne;
    const struct version *v, *nv;
    int rc = 0, r = view_iter_next(&vi, &e, &v, x->err);
    for (; r == 1; e = ne, v = nv) {
        /* Fetch the next vector before scoring this one: versions are separate
         * allocations, and prefetching hides the miss on each one's first bytes. */
        r = view_iter_next(&vi, &ne, &nv, x->err);
        if (r == 1)
            prefetch(nv->data, nv->len);
        struct vec_hit hit;
        const uint8_t *f32;
        uint32_t nbytes;
        /* A vector of another dimension can only come from a merge across a re-created
         * collection; it is not comparable, so it is not a candidate. */
        if (vec_split(v->data, v->len, &f32, &nbytes, &hit.meta, &hit.mlen) || nbytes != 4 * c->dim)
            continue;
        hit.key = e->key + slen;
        hit.klen = e->klen - slen;
        hit.score = vec_score(vq, f32);
        if (!vec_topk_admits(top, hit.score, hit.key, hit.klen))
            continue;
        if (f && f->n) {
            msgpack_object meta;
            msgpack_zone_clear(&z);
            if ((rc = value_decode(hit.meta, hit.mlen, &z, &meta))) {
                err_set(x->err, rc, "cannot decode the metadata of a vector");
                break;
            }
            if (!vec_filter_match(f, &meta))
                continue;
        }
        vec_topk_push(top, &hit);
    }
    msgpack_zone_destroy(&z);
    return rc ? rc : r;
}

static int vector_query(struct exec *x)
{
    struct coll c;
    uint64_t k = 0;
    bool has_k;
    struct vec_filter f = {NULL, 0};
    struct vec_topk top = {0, 0, 0, NULL};
    struct vec_query vq = {0, 0, NULL, 0};
    float *q = NULL;
    int rc;
    if ((rc = coll_arg(x, &c, NULL)) || (rc = arg_u64_opt(x, "k", &k, &has_k)))
        return rc;
    if (!has_k || k < 1 || k > K_MAX)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'k' must be an integer between 1 and %d", K_MAX);
    q = sm_malloc(c.dim * sizeof *q);
    if (q == NULL)
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory");
    if ((rc = arg_vector(x, "vector", &c, q)))
        goto out;
    const msgpack_object *fo = arg_get(x, "filter");
    if (fo && (rc = vec_filter_compile(fo, &f, x->err)))
        goto out;
    if ((rc = vec_topk_init(&top, c.metric, (uint32_t)k))) {
        err_set(x->err, rc, "out of memory");
        goto out;
    }
    if ((rc = vec_query_init(&vq, c.metric, q, c.dim))) {
        err_set(x->err, rc, "out of memory");
        goto out;
    }
    if ((rc = scan(x, &c, &vq, fo ? &f : NULL, &top)))
        goto out;
    vec_topk_sort(&top);
    msgpack_pack_array(x->pk, top.n);
    for (uint32_t i = 0; i < top.n; i++) {
        const struct vec_hit *h = &top.h[i];
        msgpack_pack_map(x->pk, 3);
        mp_pack_cstr(x->pk, "key");
        mp_pack_str(x->pk, (const char *)h->key, h->klen);
        mp_pack_cstr(x->pk, "score");
        msgpack_pack_double(x->pk, h->score);
        mp_pack_cstr(x->pk, "metadata");
        mp_pack_raw(x->pk, h->meta, h->mlen);
    }
out:
    vec_query_close(&vq);
    vec_topk_close(&top);
    vec_filter_close(&f);
    sm_free(q);
    return rc;
}

const struct op_def vector_ops[] = {
    {"vector.create_collection", OP_WRITE | OP_BRANCH, vector_create_collection},
    {"vector.delete_collection", OP_WRITE | OP_BRANCH, vector_delete_collection},
    {"vector.list_collections", OP_BRANCH, vector_list_collections},
    {"vector.upsert", OP_WRITE | OP_BRANCH | OP_BATCHABLE, vector_upsert},
    {"vector.get", OP_BRANCH, vector_get},
    {"vector.delete", OP_WRITE | OP_BRANCH | OP_BATCHABLE, vector_delete},
    {"vector.query", OP_BRANCH, vector_query},
    {NULL, 0, NULL},
};
