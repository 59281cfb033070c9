/* Private to storage/: the pieces of the vector primitive that do not touch the engine —
 * the stored vector layout, similarity kernels, metadata filters and the top-k heap.
 *
 * Stored vector value (docs/storage.md): the canonical msgpack array
 * [bin(dimension x float32 little-endian), metadata map | nil]. */
#ifndef STRATA_STORAGE_VECTOR_INDEX_H
#define STRATA_STORAGE_VECTOR_INDEX_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VEC_DIM_MAX 4096

enum vec_metric { VEC_COSINE = 1, VEC_EUCLIDEAN, VEC_DOT };

/* Parse a metric name ("cosine", "euclidean", "dot"). Returns 0 or -1 if unknown. */
int vec_metric_parse(const char *s, size_t len, enum vec_metric *out);
const char *vec_metric_name(enum vec_metric m);

/* ---- Stored layout --------------------------------------------------------------------- */

/* Locate the parts of a stored vector value without decoding it: *f32 points at the
 * float32 bytes (unaligned, little-endian), *nbytes is their count, and meta/mlen is the
 * encoded metadata (a map or nil). Both point into `data`. Returns 0, or -1 if the bytes
 * are not of the stored form (never trusted: the caller skips or reports them). */
int vec_split(const uint8_t *data, size_t len, const uint8_t **f32, uint32_t *nbytes,
              const uint8_t **meta, size_t *mlen);

/* Append the stored form of (v[0..dim), meta) to pk. meta may be NULL (stored as nil) or
 * a validated map object. Returns 0 or -1 when the packer fails (out of memory). */
int vec_pack(msgpack_packer *pk, const float *v, uint32_t dim, const msgpack_object *meta);

/* Read element i of a little-endian float32 array at any alignment. */
float vec_load(const uint8_t *f32, uint32_t i);

/* ---- Scoring --------------------------------------------------------------------------- */

/* A query prepared once per command: the query vector widened to double and its
 * Euclidean norm, so the per-vector work is one pass over the stored floats. */
struct vec_query {
    enum vec_metric metric;
    uint32_t dim;
    double *qd; /* owned, dim values */
    double qnorm;
};

/* Copies q (dim floats). Returns 0 or OUT_OF_MEMORY. Release with vec_query_close. */
int vec_query_init(struct vec_query *vq, enum vec_metric metric, const float *q, uint32_t dim);
void vec_query_close(struct vec_query *vq);
/* Score of one stored vector (dim floats at f32): cosine similarity, dot product, or
 * Euclidean distance. Accumulates in double, in a fixed order, so a score is a pure
 * function of the two vectors (and never overflows for finite float32 input). Cosine
 * with a zero-norm side is defined as 0. */
double vec_score(const struct vec_query *vq, const uint8_t *f32);
/* Whether `a` ranks ahead of `b` under the metric: higher similarity, lower distance,
 * and equal scores ordered by key bytes ascending. */
struct vec_hit {
    double score;
    const uint8_t *key; /* borrowed from the tree entry for the command's duration */
    size_t klen;
    const uint8_t *meta; /* borrowed from the stored version */
    size_t mlen;
};
bool vec_hit_better(enum vec_metric m, const struct vec_hit *a, const struct vec_hit *b);

/* ---- Top-k ----------------------------------------------------------------------------- */

/* The k best hits seen so far, as a binary heap whose root is the worst of them, so a
 * candidate is rejected with one comparison. Allocated once per query. */
struct vec_topk {
    enum vec_metric metric;
    uint32_t k, n;
    struct vec_hit *h; /* owned, k slots */
};

int vec_topk_init(struct vec_topk *t, enum vec_metric metric, uint32_t k); /* 0 or OOM */
void vec_topk_close(struct vec_topk *t);
/* Whether a hit with this score and key would enter the heap (cheap pre-check before
 * evaluating a filter). */
bool vec_topk_admits(const struct vec_topk *t, double score, const uint8_t *key, size_t klen);
void vec_topk_push(struct vec_topk *t, const struct vec_hit *hit);
/* Sort the kept hits best first (in place); t->h[0..t->n) is the answer. */
void vec_topk_sort(struct vec_topk *t);

/* ---- Metadata filters ------------------------------------------------------------------ */

enum vec_cond_op { VF_EQ = 1, VF_NE, VF_GT, VF_GTE, VF_LT, VF_LTE, VF_IN };

struct vec_cond {
    const char *field; /* borrowed from the command */
    size_t flen;
    enum vec_cond_op op;
    const msgpack_object *operand; /* borrowed; an array for VF_IN */
};

/* A filter {field: condition, ...}: every condition must hold (AND). */
struct vec_filter {
    struct vec_cond *c; /* owned */
    uint32_t n;
};

/* Validate and compile a filter object. The filter borrows from `o`, which must outlive
 * it. Returns 0, INVALID_ARGUMENT (message naming the field or operator) or OUT_OF_MEMORY. */
int vec_filter_compile(const msgpack_object *o, struct vec_filter *f, struct err *err);
void vec_filter_close(struct vec_filter *f);
/* Whether a decoded metadata value (a map, or nil = no fields) satisfies the filter. */
bool vec_filter_match(const struct vec_filter *f, const msgpack_object *meta);

#endif
