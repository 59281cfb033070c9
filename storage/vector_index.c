/* Vector primitive internals: stored layout, similarity kernels, top-k heap and metadata
 * filters. Nothing here reads or writes the engine; vector.c wires it to commands. */
#include "vector_index.h"

#include <math.h>
#include <string.h>

static const char *const metric_names[] = {
    [VEC_COSINE] = "cosine",
    [VEC_EUCLIDEAN] = "euclidean",
    [VEC_DOT] = "dot",
};

int vec_metric_parse(const char *s, size_t len, enum vec_metric *out)
{
    for (int m = VEC_COSINE; m <= VEC_DOT; m++) {
        if (strlen(metric_names[m]) == len && memcmp(metric_names[m], s, len) == 0) {
            *out = (enum vec_metric)m;
            return 0;
        }
    }
    return -1;
}

const char *vec_metric_name(enum vec_metric m)
{
    return metric_names[m];
}

/* ---- Stored layout ------------------------------------------------------------------- */

int vec_split(const uint8_t *data, size_t len, const uint8_t **f32, uint32_t *nbytes,
              const uint8_t **meta, size_t *mlen)
{
    /* vec_pack writes fixarray(2), then the smallest bin header msgpack-c chooses. */
    size_t hdr;
    uint32_t n;
    if (len < 3 || data[0] != 0x92)
        return -1;
    switch (data[1]) {
    case 0xc4:
        n = data[2];
        hdr = 3;
        break;
    case 0xc5:
        if (len < 4)
            return -1;
        n = ((uint32_t)data[2] << 8) | data[3];
        hdr = 4;
        break;
    case 0xc6:
        if (len < 6)
            return -1;
        n = get_be32(data + 2);
        hdr = 6;
        break;
    default:
        return -1;
    }
    /* At least one byte of metadata (nil) must follow the floats. */
    if (n % 4 != 0 || n >= len - hdr)
        return -1;
    *f32 = data + hdr;
    *nbytes = n;
    *meta = data + hdr + n;
    *mlen = len - hdr - n;
    return 0;
}

float vec_load(const uint8_t *p, uint32_t i)
{
    uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                 (uint32_t)p[4 * i + 3] << 24;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

int vec_pack(msgpack_packer *pk, const float *v, uint32_t dim, const msgpack_object *meta)
{
    uint8_t le[4 * 64];
    if (msgpack_pack_array(pk, 2) || msgpack_pack_bin(pk, 4 * (size_t)dim))
        return -1;
    /* Byte order is fixed (little-endian) so stored values and snapshots are portable. */
    for (uint32_t i = 0; i < dim; i += 64) {
        uint32_t m = dim - i < 64 ? dim - i : 64;
        for (uint32_t j = 0; j < m; j++) {
            uint32_t u;
            memcpy(&u, &v[i + j], sizeof u);
            le[4 * j] = (uint8_t)u;
            le[4 * j + 1] = (uint8_t)(u >> 8);
            le[4 * j + 2] = (uint8_t)(u >> 16);
            le[4 * j + 3] = (uint8_t)(u >> 24);
        }
        if (msgpack_pack_bin_body(pk, le, 4 * (size_t)m))
            return -1;
    }
    return meta ? value_pack(pk, meta) : msgpack_pack_nil(pk);
}

/* ---- Scoring ------------------------------------------------------------------------- */

/* The kernels keep LANES = 8 double accumulators per sum, lane l taking elements
 * l, l+8, l+16, ... (every index i goes to lane i mod 8, the tail included), and
 * add the lanes in one fixed order at the end. Products of two floats are exact in
 * double, sums cannot overflow, and the order of operations is fixed, so a score is a
 * pure function of the two vectors. The SSE2 path (every x86-64) and the portable path
 * perform the same operations lane by lane (mul then add, no fused multiply-add), so
 * they give the same bits. */
#define LANES 8

static double lanes_sum(const double *a)
{
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* Which sums a kernel pass computes. The kernels are inlined with a constant `what`,
 * so each metric gets its own branch-free loop. */
enum { K_DOT = 1, K_NORM = 2, K_L2 = 4 };

#if defined(__GNUC__)
#define KERNEL_INLINE static inline __attribute__((always_inline))
#else
#define KERNEL_INLINE static inline
#endif

#if defined(__SSE2__)
#include <emmintrin.h>

KERNEL_INLINE void kernel_blocks(const double *q, const uint8_t *p, size_t nblk, int what,
                                 double *dot, double *nrm)
{
    __m128d a0 = _mm_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    __m128d n0 = a0, n1 = a0, n2 = a0, n3 = a0;
    for (size_t b = 0; b < nblk; b++, q += LANES, p += 4 * LANES) {
        __m128 f0 = _mm_loadu_ps((const float *)(const void *)p);
        __m128 f1 = _mm_loadu_ps((const float *)(const void *)(p + 16));
        __m128d w0 = _mm_cvtps_pd(f0), w1 = _mm_cvtps_pd(_mm_movehl_ps(f0, f0));
        __m128d w2 = _mm_cvtps_pd(f1), w3 = _mm_cvtps_pd(_mm_movehl_ps(f1, f1));
        if (what & K_L2) {
            w0 = _mm_sub_pd(w0, _mm_loadu_pd(q));
            w1 = _mm_sub_pd(w1, _mm_loadu_pd(q + 2));
            w2 = _mm_sub_pd(w2, _mm_loadu_pd(q + 4));
            w3 = _mm_sub_pd(w3, _mm_loadu_pd(q + 6));
        }
        if (what & K_DOT) {
            a0 = _mm_add_pd(a0, _mm_mul_pd(_mm_loadu_pd(q), w0));
            a1 = _mm_add_pd(a1, _mm_mul_pd(_mm_loadu_pd(q + 2), w1));
            a2 = _mm_add_pd(a2, _mm_mul_pd(_mm_loadu_pd(q + 4), w2));
            a3 = _mm_add_pd(a3, _mm_mul_pd(_mm_loadu_pd(q + 6), w3));
        }
        if (what & (K_NORM | K_L2)) {
            n0 = _mm_add_pd(n0, _mm_mul_pd(w0, w0));
            n1 = _mm_add_pd(n1, _mm_mul_pd(w1, w1));
            n2 = _mm_add_pd(n2, _mm_mul_pd(w2, w2));
            n3 = _mm_add_pd(n3, _mm_mul_pd(w3, w3));
        }
    }
    _mm_storeu_pd(dot, a0);
    _mm_storeu_pd(dot + 2, a1);
    _mm_storeu_pd(dot + 4, a2);
    _mm_storeu_pd(dot + 6, a3);
    _mm_storeu_pd(nrm, n0);
    _mm_storeu_pd(nrm + 2, n1);
    _mm_storeu_pd(nrm + 4, n2);
    _mm_storeu_pd(nrm + 6, n3);
}
#else
KERNEL_INLINE void kernel_blocks(const double *q, const uint8_t *p, size_t nblk, int what,
                                 double *dot, double *nrm)
{
    for (int l = 0; l < LANES; l++)
        dot[l] = nrm[l] = 0;
    for (size_t b = 0; b < nblk; b++, q += LANES, p += 4 * LANES) {
        for (uint32_t l = 0; l < LANES; l++) {
            double w = vec_load(p, l);
            if (what & K_L2)
                w -= q[l];
            if (what & K_DOT)
                dot[l] += q[l] * w;
            if (what & (K_NORM | K_L2))
                nrm[l] += w * w;
        }
    }
}
#endif

/* One pass over a stored vector: the sums `what` asks for (K_L2 puts the squared
 * distance in *nrm). */
KERNEL_INLINE void kernel(const double *q, const uint8_t *p, uint32_t dim, int what, double *dot,
                          double *nrm)
{
    double a[LANES], n[LANES];
    size_t nblk = dim / LANES;
    kernel_blocks(q, p, nblk, what, a, n);
    for (uint32_t i = (uint32_t)nblk * LANES, l = 0; i < dim; i++, l++) {
        double w = vec_load(p, i);
        if (what & K_L2)
            w -= q[i];
        if (what & K_DOT)
            a[l] += q[i] * w;
        if (what & (K_NORM | K_L2))
            n[l] += w * w;
    }
    *dot = lanes_sum(a);
    *nrm = lanes_sum(n);
}

int vec_query_init(struct vec_query *vq, enum vec_metric metric, const float *q, uint32_t dim)
{
    vq->metric = metric;
    vq->dim = dim;
    /* The query is widened to double once, so the kernels convert only stored floats. */
    vq->qd = sm_malloc((size_t)dim * sizeof *vq->qd);
    if (vq->qd == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (uint32_t i = 0; i < dim; i++)
        vq->qd[i] = q[i];
    /* Lane l holds elements l, l+8, ... in the kernels too, so |q| is summed exactly as
     * the norm of a stored copy of q would be. */
    double n[LANES] = {0};
    for (uint32_t i = 0; i < dim; i++)
        n[i % LANES] += vq->qd[i] * vq->qd[i];
    double nrm = lanes_sum(n);
    vq->qnorm = sqrt(nrm);
    return 0;
}

void vec_query_close(struct vec_query *vq)
{
    sm_free(vq->qd);
    vq->qd = NULL;
}

static double score_dot(const struct vec_query *vq, const uint8_t *f32)
{
    double dot, nrm;
    kernel(vq->qd, f32, vq->dim, K_DOT, &dot, &nrm);
    return dot;
}

static double score_l2(const struct vec_query *vq, const uint8_t *f32)
{
    double dot, nrm;
    kernel(vq->qd, f32, vq->dim, K_L2, &dot, &nrm);
    return sqrt(nrm);
}

static double score_cosine(const struct vec_query *vq, const uint8_t *f32)
{
    double dot, nrm;
    kernel(vq->qd, f32, vq->dim, K_DOT | K_NORM, &dot, &nrm);
    double den = vq->qnorm * sqrt(nrm);
    return den > 0 ? dot / den : 0.0;
}

double vec_score(const struct vec_query *vq, const uint8_t *f32)
{
    switch (vq->metric) {
    case VEC_DOT:
        return score_dot(vq, f32);
    case VEC_EUCLIDEAN:
        return score_l2(vq, f32);
    default:
        return score_cosine(vq, f32);
    }
}

static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static bool better(enum vec_metric m, double sa, const uint8_t *ka, size_t la, double sb,
                   const uint8_t *kb, size_t lb)
{
    if (sa != sb)
        return m == VEC_EUCLIDEAN ? sa < sb : sa > sb;
    return key_cmp(ka, la, kb, lb) < 0;
}

bool vec_hit_better(enum vec_metric m, const struct vec_hit *a, const struct vec_hit *b)
{
    return better(m, a->score, a->key, a->klen, b->score, b->key, b->klen);
}

/* ---- Top-k --------------------------------------------------------------------------- */

int vec_topk_init(struct vec_topk *t, enum vec_metric metric, uint32_t k)
{
    t->metric = metric;
    t->k = k;
    t->n = 0;
    t->h = sm_malloc((size_t)k * sizeof *t->h);
    return t->h ? 0 : STRATA_OUT_OF_MEMORY;
}

void vec_topk_close(struct vec_topk *t)
{
    sm_free(t->h);
    t->h = NULL;
}

bool vec_topk_admits(const struct vec_topk *t, double score, const uint8_t *key, size_t klen)
{
    if (t->n < t->k)
        return true;
    const struct vec_hit *w = &t->h[0];
    return better(t->metric, score, key, klen, w->score, w->key, w->klen);
}

/* Heap order: a parent is never better than its children (root = worst kept). */
static void sift_down(struct vec_topk *t, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < t->n && vec_hit_better(t->metric, &t->h[w], &t->h[l]))
            w = l;
        if (r < t->n && vec_hit_better(t->metric, &t->h[w], &t->h[r]))
            w = r;
        if (w == i)
            return;
        struct vec_hit tmp = t->h[i];
        t->h[i] = t->h[w];
        t->h[w] = tmp;
        i = w;
    }
}

void vec_topk_push(struct vec_topk *t, const struct vec_hit *hit)
{
    if (t->n < t->k) {
        uint32_t i = t->n++;
        t->h[i] = *hit;
        while (i > 0) {
            uint32_t p = (i - 1) / 2;
            if (!vec_hit_better(t->metric, &t->h[p], &t->h[i]))
                break;
            struct vec_hit tmp = t->h[i];
            t->h[i] = t->h[p];
            t->h[p] = tmp;
            i = p;
        }
        return;
    }
    t->h[0] = *hit;
    sift_down(t, 0);
}

void vec_topk_sort(struct vec_topk *t)
{
    /* Heapsort: repeatedly move the worst to the end. Hits are distinct keys, so the
     * order is total and the result does not depend on the order of insertion. */
    uint32_t n = t->n;
    while (t->n > 1) {
        struct vec_hit tmp = t->h[0];
        t->h[0] = t->h[t->n - 1];
        t->h[t->n - 1] = tmp;
        t->n--;
        sift_down(t, 0);
    }
    t->n = n;
}

/* ---- Metadata filters ---------------------------------------------------------------- */

static const struct {
    const char *name;
    enum vec_cond_op op;
} ops[] = {
    {"$eq", VF_EQ}, {"$ne", VF_NE},   {"$gt", VF_GT}, {"$gte", VF_GTE},
    {"$lt", VF_LT}, {"$lte", VF_LTE}, {"$in", VF_IN},
};

static bool is_number(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
           o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER || o->type == MSGPACK_OBJECT_FLOAT32 ||
           o->type == MSGPACK_OBJECT_FLOAT64;
}

static bool is_float(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64;
}

/* Check an operand of eq/ne/in: a scalar the comparison rules cover. */
static int check_scalar(const msgpack_object *o, const char *field, size_t flen, bool ordered,
                        struct err *err)
{
    bool ok = o->type == MSGPACK_OBJECT_STR || is_number(o) ||
              (!ordered && (o->type == MSGPACK_OBJECT_NIL || o->type == MSGPACK_OBJECT_BOOLEAN));
    if (ok && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 > (uint64_t)INT64_MAX)
        ok = false;
    if (ok && is_float(o) && !isfinite(o->via.f64))
        ok = false;
    if (!ok)
        return err_set(err, STRATA_INVALID_ARGUMENT, "filter on '%.*s': operand must be %s",
                       (int)(flen > 64 ? 64 : flen), field,
                       ordered ? "a number or a string"
                               : "null, a boolean, a finite number or a string");
    return 0;
}

static int compile_cond(const msgpack_object *field, const msgpack_object *cond, struct vec_cond *c,
                        struct err *err)
{
    c->field = field->via.str.ptr;
    c->flen = field->via.str.size;
    int fl = (int)(c->flen > 64 ? 64 : c->flen);
    if (cond->type != MSGPACK_OBJECT_MAP) {
        c->op = VF_EQ;
        c->operand = cond;
        return check_scalar(cond, c->field, c->flen, false, err);
    }
    if (cond->via.map.size != 1 || cond->via.map.ptr[0].key.type != MSGPACK_OBJECT_STR)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "filter on '%.*s': a condition object must hold exactly one operator", fl,
                       c->field);
    const msgpack_object *name = &cond->via.map.ptr[0].key;
    c->op = 0;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (mp_str_eq(name, ops[i].name))
            c->op = ops[i].op;
    if (c->op == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "filter on '%.*s': unknown operator '%.*s' (use $eq, $ne, $gt, $gte, "
                       "$lt, $lte or $in)",
                       fl, c->field, (int)(name->via.str.size > 32 ? 32 : name->via.str.size),
                       name->via.str.ptr);
    c->operand = &cond->via.map.ptr[0].val;
    if (c->op != VF_IN)
        return check_scalar(c->operand, c->field, c->flen, c->op != VF_EQ && c->op != VF_NE, err);
    if (c->operand->type != MSGPACK_OBJECT_ARRAY)
        return err_set(err, STRATA_INVALID_ARGUMENT, "filter on '%.*s': $in takes an array", fl,
                       c->field);
    for (uint32_t i = 0; i < c->operand->via.array.size; i++) {
        int rc = check_scalar(&c->operand->via.array.ptr[i], c->field, c->flen, false, err);
        if (rc)
            return rc;
    }
    return 0;
}

int vec_filter_compile(const msgpack_object *o, struct vec_filter *f, struct err *err)
{
    f->c = NULL;
    f->n = 0;
    if (o->type != MSGPACK_OBJECT_MAP)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "argument 'filter' must be an object {field: condition}");
    if (o->via.map.size == 0)
        return 0;
    f->c = sm_calloc(o->via.map.size, sizeof *f->c);
    if (f->c == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory compiling a filter");
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        int rc;
        if (kv->key.type != MSGPACK_OBJECT_STR)
            rc = err_set(err, STRATA_INVALID_ARGUMENT, "filter field names must be strings");
        else
            rc = compile_cond(&kv->key, &kv->val, &f->c[i], err);
        if (rc) {
            vec_filter_close(f);
            return rc;
        }
        f->n++;
    }
    return 0;
}

void vec_filter_close(struct vec_filter *f)
{
    sm_free(f->c);
    f->c = NULL;
    f->n = 0;
}

/* Exact comparison of an int64 with a finite or infinite double (no NaN). */
static int cmp_int_double(int64_t i, double d)
{
    if (d >= 9223372036854775808.0)
        return -1;
    if (d < -9223372036854775808.0)
        return 1;
    int64_t t = (int64_t)d; /* truncation is exact: |d| < 2^63 */
    if (i != t)
        return i < t ? -1 : 1;
    double frac = d - (double)t;
    return frac > 0 ? -1 : frac < 0 ? 1 : 0;
}

static int64_t as_int(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? o->via.i64 : (int64_t)o->via.u64;
}

/* Three-way numeric comparison; returns 2 when unordered (a NaN is involved). */
static int cmp_num(const msgpack_object *a, const msgpack_object *b)
{
    bool fa = is_float(a), fb = is_float(b);
    if ((fa && isnan(a->via.f64)) || (fb && isnan(b->via.f64)))
        return 2;
    if (fa && fb)
        return a->via.f64 < b->via.f64 ? -1 : a->via.f64 > b->via.f64;
    if (fa)
        return -cmp_int_double(as_int(b), a->via.f64);
    if (fb)
        return cmp_int_double(as_int(a), b->via.f64);
    int64_t x = as_int(a), y = as_int(b);
    return x < y ? -1 : x > y;
}

/* Ordered comparison of a metadata value with an operand; 2 when not comparable. */
static int cmp_values(const msgpack_object *v, const msgpack_object *o)
{
    if (is_number(v) && is_number(o)) {
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 > (uint64_t)INT64_MAX)
            return 2; /* not a StrataDB value; never matches */
        return cmp_num(v, o);
    }
    if (v->type == MSGPACK_OBJECT_STR && o->type == MSGPACK_OBJECT_STR) {
        int c = key_cmp((const uint8_t *)v->via.str.ptr, v->via.str.size,
                        (const uint8_t *)o->via.str.ptr, o->via.str.size);
        return c < 0 ? -1 : c > 0;
    }
    return 2;
}

static bool equal(const msgpack_object *v, const msgpack_object *o)
{
    if (v->type == MSGPACK_OBJECT_NIL || o->type == MSGPACK_OBJECT_NIL)
        return v->type == o->type;
    if (v->type == MSGPACK_OBJECT_BOOLEAN || o->type == MSGPACK_OBJECT_BOOLEAN)
        return v->type == o->type && v->via.boolean == o->via.boolean;
    return cmp_values(v, o) == 0;
}

static bool cond_match(const struct vec_cond *c, const msgpack_object *v)
{
    if (v == NULL)
        return c->op == VF_NE;
    int r;
    switch (c->op) {
    case VF_EQ:
        return equal(v, c->operand);
    case VF_NE:
        return !equal(v, c->operand);
    case VF_IN:
        for (uint32_t i = 0; i < c->operand->via.array.size; i++)
            if (equal(v, &c->operand->via.array.ptr[i]))
                return true;
        return false;
    default:
        break;
    }
    r = cmp_values(v, c->operand);
    if (r == 2)
        return false;
    switch (c->op) {
    case VF_GT:
        return r > 0;
    case VF_GTE:
        return r >= 0;
    case VF_LT:
        return r < 0;
    default:
        return r <= 0;
    }
}

bool vec_filter_match(const struct vec_filter *f, const msgpack_object *meta)
{
    for (uint32_t i = 0; i < f->n; i++) {
        const struct vec_cond *c = &f->c[i];
        const msgpack_object *v = NULL;
        if (meta->type == MSGPACK_OBJECT_MAP) {
            for (uint32_t j = 0; j < meta->via.map.size && v == NULL; j++) {
                const msgpack_object *k = &meta->via.map.ptr[j].key;
                if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == c->flen &&
                    memcmp(k->via.str.ptr, c->field, c->flen) == 0)
                    v = &meta->via.map.ptr[j].val;
            }
        }
        if (!cond_match(c, v))
            return false;
    }
    return true;
}
