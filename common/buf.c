/* Growable byte buffer used for encoding frames, snapshots and keys. */
#include "common.h"

#include <stdio.h>
#include <string.h>

void buf_init(struct buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void buf_close(struct buf *b)
{
    sm_free(b->data);
    buf_init(b);
}

void buf_reset(struct buf *b)
{
    b->len = 0;
}

int buf_reserve(struct buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len)
        return STRATA_OUT_OF_MEMORY;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    uint8_t *p = sm_realloc(b->data, cap);
    if (p == NULL)
        return STRATA_OUT_OF_MEMORY;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append_slow(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int rc = buf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int buf_append_u8(struct buf *b, uint8_t v)
{
    return buf_append(b, &v, 1);
}

int buf_append_be32(struct buf *b, uint32_t v)
{
    uint8_t t[4];
    put_be32(t, v);
    return buf_append(b, t, 4);
}

int buf_append_be64(struct buf *b, uint64_t v)
{
    uint8_t t[8];
    put_be64(t, v);
    return buf_append(b, t, 8);
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return STRATA_INTERNAL;
    int rc = buf_reserve(b, (size_t)n + 1);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

uint8_t *buf_steal(struct buf *b, size_t *len)
{
    uint8_t *p = b->data;
    if (len)
        *len = b->len;
    buf_init(b);
    return p;
}
