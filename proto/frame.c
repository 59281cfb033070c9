/* Framing: the incremental reader that cuts a byte stream into frames, and the frame
 * header writer (proto.h, docs/protocol.md). */
#include "proto.h"

#include <assert.h>
#include <inttypes.h>
#include <string.h>

/* A reader keeps up to this much buffer capacity while idle; a connection that once
 * carried a large frame gives the rest back, so long-lived connections stay small. */
#define READER_KEEP (1u << 20)

void proto_reader_init(struct proto_reader *r, size_t max_frame)
{
    buf_init(&r->in);
    r->off = 0;
    /* 0 asks for the default; the limit keeps a client's first byte below 0x40, which is
     * what tells it apart from a raft peer's "SRFT". */
    if (max_frame == 0)
        max_frame = PROTO_MAX_FRAME_DEFAULT;
    if (max_frame > PROTO_MAX_FRAME_LIMIT)
        max_frame = PROTO_MAX_FRAME_LIMIT;
    r->max_frame = max_frame;
}

void proto_reader_close(struct proto_reader *r)
{
    buf_close(&r->in);
    r->off = 0;
}

/* Drop consumed bytes. Called only at the start of feed/next, when the frame handed out
 * last is no longer valid (proto.h), so moving bytes under it is allowed. The remainder
 * is moved only once at least as many bytes were consumed as remain, so every byte is
 * moved at most about once on average however the stream is split. */
static void compact(struct proto_reader *r)
{
    size_t rest = r->in.len - r->off;
    if (r->off == 0)
        return;
    if (rest == 0) {
        if (r->in.cap > READER_KEEP)
            buf_close(&r->in);
        r->in.len = 0;
        r->off = 0;
        return;
    }
    if (r->off < rest)
        return;
    memmove(r->in.data, r->in.data + r->off, rest);
    r->in.len = rest;
    r->off = 0;
    /* Give back most of a big buffer once what remains is small; failure is harmless. */
    if (r->in.cap > READER_KEEP && rest < r->in.cap / 4) {
        size_t cap = rest > READER_KEEP ? rest : READER_KEEP;
        uint8_t *p = sm_realloc(r->in.data, cap);
        if (p != NULL) {
            r->in.data = p;
            r->in.cap = cap;
        }
    }
}

int proto_reader_feed(struct proto_reader *r, const void *data, size_t n)
{
    compact(r);
    return buf_append(&r->in, data, n);
}

static bool kind_known(uint8_t kind)
{
    return kind >= PROTO_HELLO && kind <= PROTO_ERROR;
}

/* The version byte a frame of this kind must carry. HELLO always says 1: the version a
 * client speaks is negotiated inside it (version_min..version_max), so a server of any
 * version can read the first frame of any client. */
static uint8_t version_for(uint8_t kind)
{
    return kind == PROTO_HELLO ? 1 : PROTO_VERSION;
}

int proto_reader_next(struct proto_reader *r, struct proto_frame *f, struct err *err)
{
    compact(r);
    size_t avail = r->in.len - r->off;
    if (avail < 4)
        return 0;
    const uint8_t *p = r->in.data + r->off;
    uint32_t len = get_be32(p);
    /* Checked before waiting for the body: a peer announcing 1 GiB is refused at once,
     * not after we buffered it. */
    if (len > r->max_frame)
        return err_set(err, STRATA_TOO_LARGE,
                       "frame of %" PRIu32 " bytes exceeds the maximum frame size of %zu bytes",
                       len, r->max_frame);
    if (len < 2)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "frame length %" PRIu32 " is shorter than the 2-byte version+kind header",
                       len);
    if (avail < PROTO_HEADER_SIZE)
        return 0;
    uint8_t version = p[4], kind = p[5];
    if (!kind_known(kind))
        return err_set(err, STRATA_PROTOCOL_ERROR, "unknown frame kind %u", kind);
    if (version != version_for(kind))
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "frame of kind %u has protocol version %u, expected %u", kind, version,
                       version_for(kind));
    if (avail - 4 < len)
        return 0;
    f->version = version;
    f->kind = kind;
    f->body = p + PROTO_HEADER_SIZE;
    f->len = len - 2;
    r->off += 4 + (size_t)len;
    return 1;
}

int proto_frame_append(struct buf *out, uint8_t kind, const void *body, size_t len)
{
    assert(kind_known(kind));
    if (len > PROTO_MAX_FRAME_LIMIT - 2)
        return STRATA_TOO_LARGE;
    int rc = buf_reserve(out, PROTO_HEADER_SIZE + len);
    if (rc)
        return rc;
    uint8_t h[PROTO_HEADER_SIZE];
    put_be32(h, (uint32_t)(len + 2));
    h[4] = version_for(kind);
    h[5] = kind;
    /* Room is reserved, so neither append can fail and out is never left half-written. */
    buf_append(out, h, sizeof h);
    buf_append(out, body, len);
    return 0;
}
