/* A bound check of one MessagePack value's framing before msgpack-c unpacks it.
 *
 * msgpack-c allocates a container's declared element count before it reads any element,
 * so a 5-byte array32/map32 header can ask for up to 96 GiB (24 bytes per msgpack_object)
 * and a frame of many such headers for that much again per header, whether or not the
 * bytes behind them exist. This walk reads only the type bytes and lengths the
 * MessagePack format defines (it decodes no value) and refuses a value whose containers
 * declare more elements than bytes follow (every element takes at least one byte, a map
 * entry two), that nests deeper than msgpack-c's stack, that is cut short or that uses
 * the reserved byte 0xc1. A value that passes can make msgpack-c allocate at most about
 * 24 bytes per byte of input. */
#include "common.h"

#include <string.h>

/* Bytes after the type byte that hold a length or a fixed payload, by type byte
 * 0xc4..0xdf; `lenb`: how many of them are a big-endian length of what follows;
 * `extra`: fixed payload bytes (the ext type byte counts here). */
struct hdr {
    uint8_t lenb, extra;
};

static const struct hdr hdrs[0xe0 - 0xc4] = {
    [0xc4 - 0xc4] = {1, 0}, [0xc5 - 0xc4] = {2, 0},  [0xc6 - 0xc4] = {4, 0}, /* bin */
    [0xc7 - 0xc4] = {1, 1}, [0xc8 - 0xc4] = {2, 1},  [0xc9 - 0xc4] = {4, 1}, /* ext */
    [0xca - 0xc4] = {0, 4}, [0xcb - 0xc4] = {0, 8},                          /* float */
    [0xcc - 0xc4] = {0, 1}, [0xcd - 0xc4] = {0, 2},  [0xce - 0xc4] = {0, 4},
    [0xcf - 0xc4] = {0, 8}, [0xd0 - 0xc4] = {0, 1},  [0xd1 - 0xc4] = {0, 2},
    [0xd2 - 0xc4] = {0, 4}, [0xd3 - 0xc4] = {0, 8},                          /* ints */
    [0xd4 - 0xc4] = {0, 2}, [0xd5 - 0xc4] = {0, 3},  [0xd6 - 0xc4] = {0, 5},
    [0xd7 - 0xc4] = {0, 9}, [0xd8 - 0xc4] = {0, 17},                         /* fixext */
    [0xd9 - 0xc4] = {1, 0}, [0xda - 0xc4] = {2, 0},  [0xdb - 0xc4] = {4, 0}, /* str */
    [0xdc - 0xc4] = {2, 0}, [0xdd - 0xc4] = {4, 0},  [0xde - 0xc4] = {2, 0},
    [0xdf - 0xc4] = {4, 0}, /* array16/32, map16/32: the length is the element count */
};

static uint64_t be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

int mp_scan(const uint8_t *p, size_t len, size_t off, struct mp_scan *out)
{
    /* left[d]: objects still to read in the d-th open container (left[0]: the value). */
    uint64_t left[MP_SCAN_MAX_DEPTH + 1];
    unsigned depth = 0;
    memset(out, 0, sizeof *out);
    left[0] = 1;
    for (;;) {
        while (left[depth] == 0) {
            if (depth == 0) {
                out->end = off;
                return MP_SCAN_OK;
            }
            depth--;
        }
        left[depth]--;
        out->at = off;
        if (off >= len)
            return MP_SCAN_TRUNCATED;
        uint8_t b = p[off++];
        uint64_t n = 0;    /* elements (containers) or payload bytes (the rest) */
        uint64_t per = 0;  /* objects per element: 1 array, 2 map, 0 not a container */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            continue;
        if (b == 0xc1)
            return MP_SCAN_BAD_BYTE;
        if (b >= 0x80 && b <= 0x8f) {
            n = b & 0x0f;
            per = 2;
        } else if (b >= 0x90 && b <= 0x9f) {
            n = b & 0x0f;
            per = 1;
        } else if (b >= 0xa0 && b <= 0xbf) {
            n = b & 0x1f;
        } else {
            struct hdr h = hdrs[b - 0xc4];
            if (len - off < (size_t)h.lenb + h.extra)
                return MP_SCAN_TRUNCATED;
            n = be(p + off, h.lenb);
            off += (size_t)h.lenb + h.extra;
            if (b >= 0xdc)
                per = b >= 0xde ? 2 : 1;
        }
        if (per == 0) { /* a string, binary or ext payload of n bytes */
            if (n > len - off)
                return MP_SCAN_TRUNCATED;
            off += (size_t)n;
            continue;
        }
        /* A container, empty or not, counts against msgpack-c's stack like it does. */
        if (depth == MP_SCAN_MAX_DEPTH)
            return MP_SCAN_TOO_DEEP;
        if (n * per > len - off) {
            out->count = n;
            out->room = len - off;
            return MP_SCAN_TOO_MANY;
        }
        if (n > 0)
            left[++depth] = n * per;
    }
}

const char *mp_scan_reason(int rc)
{
    switch (rc) {
    case MP_SCAN_OK:
        return "ok";
    case MP_SCAN_TRUNCATED:
        return "truncated";
    case MP_SCAN_BAD_BYTE:
        return "uses the reserved byte 0xc1";
    case MP_SCAN_TOO_DEEP:
        return "nested deeper than 32 levels";
    case MP_SCAN_TOO_MANY:
        return "declares more elements than bytes follow";
    }
    return "not valid MessagePack";
}
