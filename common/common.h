/* Shared kernel: error codes, allocator façade, growable byte buffer, logging, clock. */
#ifndef STRATA_COMMON_H
#define STRATA_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Error codes ------------------------------------------------------------------
 * One table: enum value, stable wire name, default message. Codes are stable on the
 * wire and in the Raft log; append new ones at the end, never renumber. */
#define STRATA_ERRORS(X)                                                                   \
    X(OK, 0, "ok")                                                                         \
    X(NOT_FOUND, 1, "not found")                                                           \
    X(INVALID_ARGUMENT, 2, "invalid argument")                                             \
    X(WRONG_TYPE, 3, "wrong type")                                                         \
    X(CONFLICT, 4, "conflict")                                                             \
    X(HISTORY_UNAVAILABLE, 5, "history unavailable (pruned by retention)")                 \
    X(BRANCH_EXISTS, 6, "branch already exists")                                           \
    X(BRANCH_NOT_FOUND, 7, "branch not found")                                             \
    X(NOT_LEADER, 8, "not the leader")                                                     \
    X(MOVED, 9, "branch moved to another shard")                                           \
    X(UNAVAILABLE, 10, "unavailable (no quorum)")                                          \
    X(TIMEOUT, 11, "timed out")                                                            \
    X(UNKNOWN_OUTCOME, 12, "outcome unknown")                                              \
    X(UNAUTHENTICATED, 13, "unauthenticated")                                              \
    X(PERMISSION_DENIED, 14, "permission denied")                                          \
    X(TOO_LARGE, 15, "too large")                                                          \
    X(PROTOCOL_ERROR, 16, "protocol error")                                                \
    X(INTERNAL, 17, "internal error")                                                      \
    X(ALREADY_EXISTS, 18, "already exists")                                                \
    X(OUT_OF_MEMORY, 19, "out of memory")                                                  \
    X(OUTCOME_FORGOTTEN, 20,                                                               \
      "outcome of a resent write no longer remembered (it may have been applied)")

enum strata_code {
#define X(name, num, msg) STRATA_##name = num,
    STRATA_ERRORS(X)
#undef X
        STRATA_CODE_COUNT
};

/* Stable name ("NOT_FOUND") and default message of a code; "UNKNOWN" for a bad code. */
const char *err_name(int code);
const char *err_message(int code);
/* Code for a name, or -1 if none matches. */
int err_from_name(const char *name);

/* A code plus a human-readable message. Owned by the caller (usually on its stack or
 * inside a long-lived object); functions that fail fill it and return the code. */
#define ERR_MSG_MAX 256
struct err {
    int code;
    char msg[ERR_MSG_MAX];
};

/* Set *e (if non-NULL) to `code` with a formatted message; returns `code`. */
int err_set(struct err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void err_clear(struct err *e);

/* ---- Allocation ----------------------------------------------------------------------
 * Every allocation goes through these so tests can inject failures. They return NULL on
 * failure (never abort); callers translate that to STRATA_OUT_OF_MEMORY. */
void *sm_malloc(size_t n);
void *sm_calloc(size_t n, size_t size);
void *sm_realloc(void *p, size_t n);
void sm_free(void *p);
char *sm_strndup(const char *s, size_t n);
char *sm_strdup(const char *s);

/* Test hook: fail the `nth` next allocation (1 = the very next one); 0 disables. */
void sm_fail_after(long nth);

/* ---- Growable byte buffer --------------------------------------------------------- */
struct buf {
    uint8_t *data; /* owned */
    size_t len;
    size_t cap;
};

void buf_init(struct buf *b);
void buf_close(struct buf *b);
/* Make room for `extra` more bytes. Returns 0 or STRATA_OUT_OF_MEMORY. */
int buf_reserve(struct buf *b, size_t extra);
int buf_append_slow(struct buf *b, const void *p, size_t n);
/* Append n bytes. Returns 0 or STRATA_OUT_OF_MEMORY (the buffer is then unchanged). */
static inline int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (n <= b->cap - b->len && b->data != NULL) {
        __builtin_memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
    }
    return buf_append_slow(b, p, n);
}
int buf_append_u8(struct buf *b, uint8_t v);
int buf_append_be32(struct buf *b, uint32_t v);
int buf_append_be64(struct buf *b, uint64_t v);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Transfer ownership of the bytes to the caller; the buffer becomes empty. */
uint8_t *buf_steal(struct buf *b, size_t *len);
void buf_reset(struct buf *b);

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}
static inline uint64_t get_be64(const uint8_t *p)
{
    return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

/* ---- MessagePack framing check (mpscan.c) ------------------------------------------
 * Walks the one MessagePack value starting at p[off] (len: bytes in p) reading only type
 * bytes and lengths, and refuses it before msgpack-c would allocate for counts the input
 * cannot hold. Returns MP_SCAN_OK with out->end = the offset just past the value, or a
 * failure with out->at = the offset of the offending header (and, for MP_SCAN_TOO_MANY,
 * out->count = the declared elements and out->room = the bytes left after the header). */
#define MP_SCAN_MAX_DEPTH 32 /* msgpack-c's container stack (MSGPACK_EMBED_STACK_SIZE) */
enum { MP_SCAN_OK, MP_SCAN_TRUNCATED, MP_SCAN_BAD_BYTE, MP_SCAN_TOO_DEEP, MP_SCAN_TOO_MANY };
struct mp_scan {
    size_t end, at;
    uint64_t count, room;
};
int mp_scan(const uint8_t *p, size_t len, size_t off, struct mp_scan *out);
const char *mp_scan_reason(int rc); /* "truncated", "nested deeper than 32 levels", ... */

/* ---- Logging ---------------------------------------------------------------------- */
enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
void log_set_level(enum log_level lvl);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* ---- Clock (never used inside storage apply) --------------------------------------- */
int64_t clock_now_us(void);      /* wall clock, µs since the epoch */
uint64_t clock_mono_ns(void);    /* monotonic, ns */

#endif
