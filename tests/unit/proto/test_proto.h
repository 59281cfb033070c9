/* Helpers shared by the wire-protocol tests (test_proto_frame.c: framing and the frame
 * reader; test_proto.c: the messages and hostile input). */
#ifndef STRATA_TEST_PROTO_H
#define STRATA_TEST_PROTO_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "proto.h"

/* ---- helpers --------------------------------------------------------------------------- */

static inline int sink(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

/* Value kinds for building test bodies with msgpack-c. */
enum vk { V_UINT = 1, V_INT, V_STR, V_NIL, V_BOOL, V_FLOAT, V_ARRAY, V_MAP, V_BIN };
#define V_COUNT 9

struct kv {
    const char *key; /* NULL ends a list */
    enum vk t;
    uint64_t u;
    const char *s;
};

static inline void pack_val(msgpack_packer *pk, enum vk t, uint64_t u, const char *s)
{
    switch (t) {
    case V_UINT:
        msgpack_pack_uint64(pk, u);
        break;
    case V_INT:
        msgpack_pack_int64(pk, -1 - (int64_t)(u & 0xffff));
        break;
    case V_STR:
        msgpack_pack_str_with_body(pk, s ? s : "x", s ? strlen(s) : 1);
        break;
    case V_NIL:
        msgpack_pack_nil(pk);
        break;
    case V_BOOL:
        msgpack_pack_true(pk);
        break;
    case V_FLOAT:
        msgpack_pack_double(pk, 1.5);
        break;
    case V_ARRAY:
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint8(pk, 1);
        break;
    case V_MAP:
        msgpack_pack_map(pk, 1);
        msgpack_pack_str_with_body(pk, "k", 1);
        msgpack_pack_uint8(pk, 1);
        break;
    case V_BIN:
        msgpack_pack_bin_with_body(pk, "ab", 2);
        break;
    }
}

static inline size_t count_kv(const struct kv *kvs)
{
    size_t n = 0;
    while (kvs[n].key != NULL)
        n++;
    return n;
}

/* Append a map built from kvs to b. */
static inline void pack_map(struct buf *b, const struct kv *kvs)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, sink);
    size_t n = count_kv(kvs);
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_str_with_body(&pk, kvs[i].key, strlen(kvs[i].key));
        pack_val(&pk, kvs[i].t, kvs[i].u, kvs[i].s);
    }
}

/* {"op": op, "key": key}: the shape of an engine command. */
static inline void pack_cmd(struct buf *b, const char *op, const char *key)
{
    struct kv kvs[] = {{"op", V_STR, 0, op}, {"key", V_STR, 0, key}, {NULL, 0, 0, NULL}};
    pack_map(b, kvs);
}

static inline struct proto_frame frame_of(uint8_t kind, const struct buf *body)
{
    struct proto_frame f = {PROTO_VERSION, kind, body->data, body->len};
    return f;
}

/* Feed `wire` into a fresh reader in one go and take exactly one frame out. */
static inline struct proto_frame read_one(struct proto_reader *r, const struct buf *wire)
{
    struct proto_frame f;
    struct err e;
    proto_reader_init(r, 0);
    assert_int_equal(proto_reader_feed(r, wire->data, wire->len), 0);
    assert_int_equal(proto_reader_next(r, &f, &e), 1);
    struct proto_frame g;
    assert_int_equal(proto_reader_next(r, &g, &e), 0);
    return f;
}

static inline bool within(const void *p, size_t n, const struct proto_frame *f)
{
    const uint8_t *q = p;
    return q >= f->body && q + n <= f->body + f->len;
}

static uint64_t rng_state __attribute__((unused));

static inline uint64_t rnd(void)
{
    /* xorshift64*: deterministic garbage so any failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static inline void expect_error(int rc, const struct err *e, int code, const char *needle)
{
    assert_int_equal(rc, code);
    assert_int_equal(e->code, code);
    if (strstr(e->msg, needle) == NULL)
        fail_msg("message \"%s\" does not mention \"%s\"", e->msg, needle);
}


/* Three frames of different kinds and sizes, back to back. */
static inline void build_stream(struct buf *wire)
{
    struct buf cmd;
    buf_init(&cmd);
    pack_cmd(&cmd, "kv.get", "alpha");
    struct proto_hello h = {1, 1, "test", 4, "secret", 6};
    assert_int_equal(proto_hello_append(wire, &h), 0);
    assert_int_equal(proto_request_append(wire, 7, PROTO_REQ_STALE, cmd.data, cmd.len), 0);
    assert_int_equal(proto_response_err_append(wire, 9, STRATA_NOT_LEADER, "go away", "h:1"), 0);
    buf_close(&cmd);
}

#endif
