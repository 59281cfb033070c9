/* libFuzzer target for proto/: the input is a byte stream as a socket would deliver it.
 * It goes through a proto_reader in chunks whose sizes come from the input, every frame
 * the reader yields goes through every message decoder, and whatever decodes is encoded
 * again and must decode to the same fields. Any crash, sanitizer report or broken
 * invariant (abort) is a finding. Built and run by tests/fuzz/CMakeLists.txt. */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

/* No allocator_may_return_null here (the other targets set it): the decoders must never
 * let msgpack-c allocate for a declared count the frame cannot hold, so such an
 * allocation is a finding (libFuzzer's -malloc_limit_mb, by default -rss_limit_mb). */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static uint64_t rng;

static uint64_t next_rand(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ull;
}

static bool within(const void *p, size_t n, const struct proto_frame *f)
{
    const uint8_t *q = p;
    return q >= f->body && q + n <= f->body + f->len;
}

static bool same(const char *a, size_t an, const char *b, size_t bn)
{
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* The body of the single frame at the start of w. */
static struct proto_frame reframe(const struct buf *w)
{
    CHECK(w->len >= PROTO_HEADER_SIZE && get_be32(w->data) == w->len - 4);
    struct proto_frame f = {w->data[4], w->data[5], w->data + PROTO_HEADER_SIZE,
                            w->len - PROTO_HEADER_SIZE};
    return f;
}

/* A NUL-terminated copy for the encoders that take C strings; NULL if s holds a NUL. */
static char *cstr(const char *s, size_t n)
{
    if (s == NULL || memchr(s, '\0', n) != NULL)
        return NULL;
    char *c = malloc(n + 1);
    CHECK(c != NULL);
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

static void check_failure(int rc, const struct err *e)
{
    CHECK(rc == STRATA_PROTOCOL_ERROR);
    CHECK(e->code == rc && e->msg[0] != '\0');
}

static void fuzz_hello(const struct proto_frame *f, msgpack_zone *z)
{
    struct proto_hello h, h2;
    struct err e;
    int rc = proto_hello_decode(f, z, &h, &e);
    if (rc) {
        check_failure(rc, &e);
        return;
    }
    CHECK(h.version_min >= 1 && h.version_min <= h.version_max);
    CHECK(within(h.client, h.client_len, f) || h.client_len == 0);
    CHECK(h.api_key == NULL || within(h.api_key, h.api_key_len, f));
    struct buf w;
    buf_init(&w);
    CHECK(proto_hello_append(&w, &h) == 0);
    struct proto_frame g = reframe(&w);
    CHECK(proto_hello_decode(&g, z, &h2, &e) == 0);
    CHECK(h2.version_min == h.version_min && h2.version_max == h.version_max);
    CHECK(same(h2.client, h2.client_len, h.client, h.client_len));
    CHECK((h2.api_key == NULL) == (h.api_key == NULL));
    CHECK(h.api_key == NULL || same(h2.api_key, h2.api_key_len, h.api_key, h.api_key_len));
    buf_close(&w);
}

static void fuzz_welcome(const struct proto_frame *f, msgpack_zone *z)
{
    struct proto_welcome w, w2;
    struct err e;
    int rc = proto_welcome_decode(f, z, &w, &e);
    if (rc) {
        check_failure(rc, &e);
        return;
    }
    CHECK(w.version >= 1 && w.node_id >= 1);
    CHECK(within(w.cluster_id, w.cluster_id_len, f) || w.cluster_id_len == 0);
    CHECK(w.leader == NULL || within(w.leader, w.leader_len, f));
    struct buf b;
    buf_init(&b);
    CHECK(proto_welcome_append(&b, &w) == 0);
    struct proto_frame g = reframe(&b);
    CHECK(proto_welcome_decode(&g, z, &w2, &e) == 0);
    CHECK(w2.version == w.version && w2.node_id == w.node_id && w2.epoch == w.epoch);
    CHECK(same(w2.cluster_id, w2.cluster_id_len, w.cluster_id, w.cluster_id_len));
    CHECK((w2.leader == NULL) == (w.leader == NULL));
    CHECK(w.leader == NULL || same(w2.leader, w2.leader_len, w.leader, w.leader_len));
    buf_close(&b);
}

static void fuzz_request(const struct proto_frame *f)
{
    struct proto_request q, q2;
    struct err e;
    int rc = proto_request_decode(f, &q, &e);
    if (rc) {
        check_failure(rc, &e);
        return;
    }
    CHECK(q.cmd_len > 0 && within(q.cmd, q.cmd_len, f));
    /* The command ends the body, unless the optional route [shard, epoch] follows it. */
    CHECK(q.route.set ? q.cmd + q.cmd_len < f->body + f->len
                      : q.cmd + q.cmd_len == f->body + f->len);
    struct buf b;
    buf_init(&b);
    CHECK(proto_request_append_routed(&b, q.id, q.flags, q.cmd, q.cmd_len,
                                      q.route.set ? &q.route : NULL) == 0);
    struct proto_frame g = reframe(&b);
    CHECK(proto_request_decode(&g, &q2, &e) == 0);
    CHECK(q2.id == q.id && q2.flags == q.flags);
    CHECK(q2.route.set == q.route.set &&
          (!q.route.set || (q2.route.shard == q.route.shard && q2.route.epoch == q.route.epoch)));
    CHECK(same((const char *)q2.cmd, q2.cmd_len, (const char *)q.cmd, q.cmd_len));
    buf_close(&b);
}

static void fuzz_response(const struct proto_frame *f, msgpack_zone *z)
{
    struct proto_response p, p2;
    struct err e;
    int rc = proto_response_decode(f, z, &p, &e);
    if (rc) {
        check_failure(rc, &e);
        return;
    }
    CHECK(p.code >= 0 && p.code < STRATA_CODE_COUNT);
    struct buf b;
    buf_init(&b);
    if (p.code == 0) {
        CHECK(p.result_len > 0 && within(p.result, p.result_len, f));
        CHECK(p.message == NULL && p.leader == NULL);
        CHECK(proto_response_ok_append(&b, p.id, p.result, p.result_len) == 0);
        struct proto_frame g = reframe(&b);
        CHECK(proto_response_decode(&g, z, &p2, &e) == 0);
        CHECK(p2.id == p.id && p2.code == 0);
        CHECK(same((const char *)p2.result, p2.result_len, (const char *)p.result, p.result_len));
    } else {
        CHECK(p.result == NULL && within(p.message, p.message_len, f));
        CHECK(p.leader == NULL || within(p.leader, p.leader_len, f));
        char *m = cstr(p.message, p.message_len), *l = cstr(p.leader, p.leader_len);
        /* Strings with a NUL inside cannot go through the C-string encoder. */
        if (m != NULL && (p.leader == NULL || l != NULL)) {
            CHECK(proto_response_err_append(&b, p.id, p.code, m, l) == 0);
            struct proto_frame g = reframe(&b);
            CHECK(proto_response_decode(&g, z, &p2, &e) == 0);
            CHECK(p2.id == p.id && p2.code == p.code);
            CHECK(same(p2.message, p2.message_len, p.message, p.message_len));
            CHECK((p2.leader == NULL) == (p.leader == NULL));
            CHECK(p.leader == NULL || same(p2.leader, p2.leader_len, p.leader, p.leader_len));
        }
        free(m);
        free(l);
    }
    buf_close(&b);
}

static void fuzz_error(const struct proto_frame *f, msgpack_zone *z)
{
    int code, code2;
    const char *m, *m2;
    size_t ml, ml2;
    struct err e;
    int rc = proto_error_decode(f, z, &code, &m, &ml, &e);
    if (rc) {
        check_failure(rc, &e);
        return;
    }
    CHECK(code > 0 && code < STRATA_CODE_COUNT && within(m, ml, f));
    char *c = cstr(m, ml);
    if (c != NULL) {
        struct buf b;
        buf_init(&b);
        CHECK(proto_error_append(&b, code, c) == 0);
        struct proto_frame g = reframe(&b);
        CHECK(proto_error_decode(&g, z, &code2, &m2, &ml2, &e) == 0);
        CHECK(code2 == code && same(m2, ml2, m, ml));
        buf_close(&b);
        free(c);
    }
}

/* Every decoder sees every frame as every kind: the body bytes are the attack surface,
 * so a REQUEST's body is also tried as a HELLO and so on, and each round also shows the
 * four other decoders refusing a frame of the wrong kind. */
static void fuzz_frame(const struct proto_frame *f0, msgpack_zone *z)
{
    for (uint8_t kind = PROTO_HELLO; kind <= PROTO_ERROR; kind++) {
        struct proto_frame f = *f0;
        f.kind = kind;
        fuzz_hello(&f, z);
        fuzz_welcome(&f, z);
        fuzz_request(&f);
        fuzz_response(&f, z);
        fuzz_error(&f, z);
        msgpack_zone_clear(z);
    }
}

static void fuzz_peer(const uint8_t *in, size_t size)
{
    struct proto_peer p;
    size_t used = 0;
    struct err e;
    int rc = proto_peer_decode(in, size, &p, &used, &e);
    if (rc == 1) {
        CHECK(used <= size && used > PROTO_PEER_FIXED);
        uint8_t out[PROTO_PEER_FIXED + PROTO_ADDRESS_MAX];
        size_t n = proto_peer_encode(out, &p);
        /* Byte 5 is reserved and not checked on decode, so compare around it. */
        CHECK(n == used && memcmp(out, in, 5) == 0 && memcmp(out + 6, in + 6, n - 6) == 0);
    } else if (rc == 0) {
        CHECK(used > size);
    } else {
        CHECK(rc == STRATA_PROTOCOL_ERROR && e.msg[0] != '\0');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy of exactly `size` bytes (ASan sees any read past the end). Declared
     * container counts are left as they are: every decoder walks a value's framing
     * before msgpack-c allocates for it (common/mpscan.c), which is what this target
     * checks; the other targets lower them (fuzz_input.h). */
    uint8_t *in = malloc(size ? size : 1);
    CHECK(in != NULL);
    memcpy(in, data, size);

    fuzz_peer(in, size);

    /* Chunk sizes come from a hash of the input: the same input always splits the same
     * way, and mutations explore other splits. */
    rng = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < size; i++)
        rng = (rng ^ in[i]) * 0x100000001b3ull;
    rng |= 1;

    struct proto_reader r;
    proto_reader_init(&r, 1u << 16);
    msgpack_zone z;
    CHECK(msgpack_zone_init(&z, 1024));
    size_t pos = 0;
    int rc = 0;
    while (pos < size && rc == 0) {
        uint64_t x = next_rand();
        /* Mostly small chunks (frames split in odd places), sometimes everything left. */
        size_t n = (x & 7) == 0 ? size - pos : 1 + (size_t)((x >> 3) % 16);
        if (n > size - pos)
            n = size - pos;
        CHECK(proto_reader_feed(&r, in + pos, n) == 0);
        pos += n;
        struct proto_frame f;
        struct err e;
        while ((rc = proto_reader_next(&r, &f, &e)) == 1) {
            CHECK(f.kind >= PROTO_HELLO && f.kind <= PROTO_ERROR);
            CHECK(f.len + 2 <= r.max_frame);
            fuzz_frame(&f, &z);
        }
        if (rc != 0)
            CHECK((rc == STRATA_PROTOCOL_ERROR || rc == STRATA_TOO_LARGE) && e.msg[0] != '\0');
    }
    msgpack_zone_destroy(&z);
    proto_reader_close(&r);
    free(in);
    return 0;
}
