/* proto/: frame encoding and the frame reader (split feeds, limits, memory bounds). */
#include "test_proto.h"

/* ---- framing --------------------------------------------------------------------------- */

static void test_frame_append_header_layout(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(proto_frame_append(&b, PROTO_REQUEST, "\x81\xa1x\x01", 4), 0);
    const uint8_t want[] = {0, 0, 0, 6, PROTO_VERSION, PROTO_REQUEST, 0x81, 0xa1, 'x', 1};
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    /* A HELLO carries version byte 1 whatever PROTO_VERSION is. */
    assert_int_equal(proto_frame_append(&b, PROTO_HELLO, NULL, 0), 0);
    const uint8_t hello[] = {0, 0, 0, 2, 1, PROTO_HELLO};
    assert_memory_equal(b.data + sizeof want, hello, sizeof hello);
    buf_close(&b);
}

static void test_frame_append_too_large(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    /* Refused before touching the body pointer (NULL would crash if it were read). */
    assert_int_equal(proto_frame_append(&b, PROTO_RESPONSE, NULL, PROTO_MAX_FRAME_LIMIT - 1),
                     STRATA_TOO_LARGE);
    assert_int_equal(b.len, 0);
    buf_close(&b);
}

static void test_frame_append_out_of_memory(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    sm_fail_after(1);
    assert_int_equal(proto_frame_append(&b, PROTO_REQUEST, "\x80", 1), STRATA_OUT_OF_MEMORY);
    assert_int_equal(b.len, 0);
    sm_fail_after(0);
    buf_close(&b);
}

static void check_stream_frames(struct proto_frame *fs, int n)
{
    assert_int_equal(n, 3);
    assert_int_equal(fs[0].kind, PROTO_HELLO);
    assert_int_equal(fs[1].kind, PROTO_REQUEST);
    assert_int_equal(fs[2].kind, PROTO_RESPONSE);
}

static void test_reader_next_one_byte_at_a_time(void **state)
{
    (void)state;
    struct buf wire;
    buf_init(&wire);
    build_stream(&wire);
    struct proto_reader r;
    proto_reader_init(&r, 0);
    struct proto_frame f, got[3];
    struct buf bodies[3];
    int n = 0;
    struct err e;
    for (size_t i = 0; i < wire.len; i++) {
        assert_int_equal(proto_reader_feed(&r, wire.data + i, 1), 0);
        int rc;
        while ((rc = proto_reader_next(&r, &f, &e)) == 1) {
            assert_true(n < 3);
            /* The body is only valid until the next call: keep a copy. */
            got[n] = f;
            buf_init(&bodies[n]);
            buf_append(&bodies[n], f.body, f.len);
            got[n].body = bodies[n].data;
            n++;
        }
        assert_int_equal(rc, 0);
    }
    check_stream_frames(got, n);
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    struct proto_request req;
    assert_int_equal(proto_request_decode(&got[1], &req, &e), 0);
    assert_int_equal(req.id, 7);
    struct proto_response resp;
    assert_int_equal(proto_response_decode(&got[2], &z, &resp, &e), 0);
    assert_int_equal(resp.code, STRATA_NOT_LEADER);
    msgpack_zone_destroy(&z);
    for (int i = 0; i < n; i++)
        buf_close(&bodies[i]);
    proto_reader_close(&r);
    buf_close(&wire);
}

static void test_reader_next_many_frames_one_feed(void **state)
{
    (void)state;
    struct buf wire;
    buf_init(&wire);
    for (int i = 0; i < 100; i++)
        build_stream(&wire);
    struct proto_reader r;
    proto_reader_init(&r, 0);
    assert_int_equal(proto_reader_feed(&r, wire.data, wire.len), 0);
    struct proto_frame f;
    struct err e;
    int n = 0;
    const uint8_t kinds[] = {PROTO_HELLO, PROTO_REQUEST, PROTO_RESPONSE};
    while (proto_reader_next(&r, &f, &e) == 1) {
        assert_int_equal(f.kind, kinds[n % 3]);
        n++;
    }
    assert_int_equal(n, 300);
    assert_int_equal(proto_reader_next(&r, &f, &e), 0);
    proto_reader_close(&r);
    buf_close(&wire);
}

static void test_reader_next_split_anywhere(void **state)
{
    (void)state;
    struct buf wire;
    buf_init(&wire);
    build_stream(&wire);
    /* Every split point, into two feeds, yields the same three frames, byte for byte. */
    for (size_t cut = 0; cut <= wire.len; cut++) {
        struct proto_reader r;
        proto_reader_init(&r, 0);
        struct proto_frame f, got[3];
        struct buf copy;
        buf_init(&copy);
        int n = 0;
        struct err e;
        for (int feed = 0; feed < 2; feed++) {
            size_t from = feed == 0 ? 0 : cut, to = feed == 0 ? cut : wire.len;
            assert_int_equal(proto_reader_feed(&r, wire.data + from, to - from), 0);
            while (proto_reader_next(&r, &f, &e) == 1) {
                assert_true(n < 3);
                got[n++] = f;
                /* Re-frame each body into `copy` before the next call invalidates it. */
                assert_int_equal(proto_frame_append(&copy, f.kind, f.body, f.len), 0);
            }
        }
        check_stream_frames(got, n);
        assert_int_equal(copy.len, wire.len);
        assert_memory_equal(copy.data, wire.data, wire.len);
        buf_close(&copy);
        proto_reader_close(&r);
    }
    buf_close(&wire);
}

static void test_reader_next_too_large_before_body(void **state)
{
    (void)state;
    struct proto_reader r;
    proto_reader_init(&r, 1024);
    struct proto_frame f;
    struct err e;
    /* 1024 is allowed and waits for its body... */
    assert_int_equal(proto_reader_feed(&r, "\x00\x00\x04\x00", 4), 0);
    assert_int_equal(proto_reader_next(&r, &f, &e), 0);
    proto_reader_close(&r);
    /* ...1025 is refused as soon as the four length bytes are in. */
    proto_reader_init(&r, 1024);
    assert_int_equal(proto_reader_feed(&r, "\x00\x00\x04", 3), 0);
    assert_int_equal(proto_reader_next(&r, &f, &e), 0);
    assert_int_equal(proto_reader_feed(&r, "\x01", 1), 0);
    expect_error(proto_reader_next(&r, &f, &e), &e, STRATA_TOO_LARGE, "1025");
    assert_non_null(strstr(e.msg, "1024"));
    /* It stays refused: the caller sends ERROR and closes. */
    expect_error(proto_reader_next(&r, &f, &e), &e, STRATA_TOO_LARGE, "1025");
    proto_reader_close(&r);
    /* The largest length a 4-byte field holds. */
    proto_reader_init(&r, 0);
    assert_int_equal(proto_reader_feed(&r, "\xff\xff\xff\xff", 4), 0);
    expect_error(proto_reader_next(&r, &f, &e), &e, STRATA_TOO_LARGE, "4294967295");
    proto_reader_close(&r);
}

static void test_reader_init_clamps_max_frame(void **state)
{
    (void)state;
    struct proto_reader r;
    proto_reader_init(&r, 0);
    assert_int_equal(r.max_frame, PROTO_MAX_FRAME_DEFAULT);
    proto_reader_close(&r);
    proto_reader_init(&r, (size_t)PROTO_MAX_FRAME_LIMIT * 4);
    assert_int_equal(r.max_frame, PROTO_MAX_FRAME_LIMIT);
    proto_reader_close(&r);
}

static void test_reader_next_bad_length(void **state)
{
    (void)state;
    for (int len = 0; len < 2; len++) {
        struct proto_reader r;
        proto_reader_init(&r, 0);
        uint8_t h[4] = {0, 0, 0, (uint8_t)len};
        struct proto_frame f;
        struct err e;
        assert_int_equal(proto_reader_feed(&r, h, 4), 0);
        expect_error(proto_reader_next(&r, &f, &e), &e, STRATA_PROTOCOL_ERROR, "shorter");
        proto_reader_close(&r);
    }
}

static void test_reader_next_bad_version(void **state)
{
    (void)state;
    const uint8_t kinds[] = {PROTO_HELLO, PROTO_WELCOME, PROTO_REQUEST, PROTO_RESPONSE,
                             PROTO_ERROR};
    const uint8_t versions[] = {0, 2, 0xff};
    for (size_t k = 0; k < sizeof kinds; k++)
        for (size_t v = 0; v < sizeof versions; v++) {
            struct proto_reader r;
            proto_reader_init(&r, 0);
            /* Only the header: the version is judged before the body arrives. */
            uint8_t h[6] = {0, 0, 0, 10, versions[v], kinds[k]};
            struct proto_frame f;
            struct err e;
            assert_int_equal(proto_reader_feed(&r, h, 6), 0);
            expect_error(proto_reader_next(&r, &f, &e), &e, STRATA_PROTOCOL_ERROR, "version");
            proto_reader_close(&r);
        }
}

static void test_reader_next_unknown_kind(void **state)
{
    (void)state;
    const uint8_t kinds[] = {0, 6, 7, 0x53, 0xff};
    for (size_t k = 0; k < sizeof kinds; k++) {
        struct proto_reader r;
        proto_reader_init(&r, 0);
        uint8_t h[7] = {0, 0, 0, 3, PROTO_VERSION, kinds[k], 0xc0};
        struct proto_frame f;
        struct err e;
        assert_int_equal(proto_reader_feed(&r, h, 7), 0);
        expect_error(proto_reader_next(&r, &f, &e), &e, STRATA_PROTOCOL_ERROR, "kind");
        proto_reader_close(&r);
    }
}

static void test_reader_next_empty_body(void **state)
{
    (void)state;
    /* Length 2 is a header with no body: a valid frame for the reader, which the
     * message decoders then refuse. */
    struct proto_reader r;
    proto_reader_init(&r, 0);
    struct proto_frame f;
    struct err e;
    assert_int_equal(proto_reader_feed(&r, "\x00\x00\x00\x02\x01\x03", 6), 0);
    assert_int_equal(proto_reader_next(&r, &f, &e), 1);
    assert_int_equal(f.len, 0);
    struct proto_request req;
    expect_error(proto_request_decode(&f, &req, &e), &e, STRATA_PROTOCOL_ERROR, "id is missing");
    proto_reader_close(&r);
}

static void test_reader_feed_out_of_memory(void **state)
{
    (void)state;
    struct proto_reader r;
    proto_reader_init(&r, 0);
    sm_fail_after(1);
    assert_int_equal(proto_reader_feed(&r, "\x00\x00", 2), STRATA_OUT_OF_MEMORY);
    sm_fail_after(0);
    struct proto_frame f;
    struct err e;
    assert_int_equal(proto_reader_next(&r, &f, &e), 0);
    assert_int_equal(proto_reader_feed(&r, "\x00\x00\x00\x03\x01\x03\x80", 7), 0);
    assert_int_equal(proto_reader_next(&r, &f, &e), 1);
    proto_reader_close(&r);
}

static void test_reader_memory_bounded_after_10000_frames(void **state)
{
    (void)state;
    struct buf cmd, wire;
    buf_init(&cmd);
    buf_init(&wire);
    pack_cmd(&cmd, "kv.put", "some-key-of-moderate-length");
    assert_int_equal(proto_request_append(&wire, 1, 0, cmd.data, cmd.len), 0);
    size_t flen = wire.len;
    for (int i = 1; i < 10000; i++)
        assert_int_equal(proto_request_append(&wire, (uint64_t)i + 1, 0, cmd.data, cmd.len), 0);
    struct proto_reader r;
    proto_reader_init(&r, 0);
    struct proto_frame f;
    struct err e;
    size_t pos = 0, max_cap = 0;
    uint64_t want = 1;
    rng_state = 42;
    /* Feeds of 1..3 frames' worth, cut anywhere, so a partial frame is nearly always
     * left behind: the case where a naive reader never gets to reset its buffer. */
    while (pos < wire.len) {
        size_t n = 1 + rnd() % (3 * flen);
        if (n > wire.len - pos)
            n = wire.len - pos;
        assert_int_equal(proto_reader_feed(&r, wire.data + pos, n), 0);
        pos += n;
        while (proto_reader_next(&r, &f, &e) == 1) {
            struct proto_request req;
            assert_int_equal(proto_request_decode(&f, &req, &e), 0);
            assert_int_equal(req.id, want++);
        }
        if (r.in.cap > max_cap)
            max_cap = r.in.cap;
    }
    assert_int_equal(want, 10001);
    /* Frames are ~50 bytes: a few KiB at most, not the 500 KiB streamed through. */
    assert_true(max_cap <= 1024);
    assert_true(r.in.len - r.off == 0);
    proto_reader_close(&r);
    buf_close(&cmd);
    buf_close(&wire);
}

static void test_reader_memory_released_after_big_frame(void **state)
{
    (void)state;
    struct buf big, wire;
    buf_init(&big);
    buf_init(&wire);
    /* A 4 MiB string value inside a command. */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &big, sink);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_str(&pk, 4u << 20);
    assert_int_equal(buf_reserve(&big, 4u << 20), 0);
    memset(big.data + big.len, 'x', 4u << 20);
    big.len += 4u << 20;
    assert_int_equal(proto_request_append(&wire, 1, 0, big.data, big.len), 0);
    size_t big_len = wire.len;
    /* ...followed by the first bytes of the next frame, in the same feed. */
    assert_int_equal(proto_response_ok_append(&wire, 2, NULL, 0), 0);
    size_t tail = wire.len - big_len;
    struct proto_reader r;
    proto_reader_init(&r, 0);
    struct proto_frame f;
    struct err e;
    assert_int_equal(proto_reader_feed(&r, wire.data, big_len + 3), 0);
    assert_int_equal(proto_reader_next(&r, &f, &e), 1);
    assert_int_equal(f.len, big_len - PROTO_HEADER_SIZE);
    assert_true(r.in.cap >= (4u << 20));
    /* The next call moves the 3 pending bytes down and gives the big buffer back. */
    assert_int_equal(proto_reader_next(&r, &f, &e), 0);
    assert_true(r.in.cap <= (1u << 20));
    assert_int_equal(proto_reader_feed(&r, wire.data + big_len + 3, tail - 3), 0);
    assert_int_equal(proto_reader_next(&r, &f, &e), 1);
    assert_int_equal(f.kind, PROTO_RESPONSE);
    assert_int_equal(proto_reader_next(&r, &f, &e), 0);
    /* Fully drained after a big frame: the buffer is freed on the next call. */
    proto_reader_close(&r);
    proto_reader_init(&r, 0);
    assert_int_equal(proto_reader_feed(&r, wire.data, big_len), 0);
    assert_int_equal(proto_reader_next(&r, &f, &e), 1);
    assert_int_equal(proto_reader_next(&r, &f, &e), 0);
    assert_true(r.in.cap == 0);
    proto_reader_close(&r);
    buf_close(&big);
    buf_close(&wire);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_append_header_layout),
        cmocka_unit_test(test_frame_append_too_large),
        cmocka_unit_test(test_frame_append_out_of_memory),
        cmocka_unit_test(test_reader_next_one_byte_at_a_time),
        cmocka_unit_test(test_reader_next_many_frames_one_feed),
        cmocka_unit_test(test_reader_next_split_anywhere),
        cmocka_unit_test(test_reader_next_too_large_before_body),
        cmocka_unit_test(test_reader_init_clamps_max_frame),
        cmocka_unit_test(test_reader_next_bad_length),
        cmocka_unit_test(test_reader_next_bad_version),
        cmocka_unit_test(test_reader_next_unknown_kind),
        cmocka_unit_test(test_reader_next_empty_body),
        cmocka_unit_test(test_reader_feed_out_of_memory),
        cmocka_unit_test(test_reader_memory_bounded_after_10000_frames),
        cmocka_unit_test(test_reader_memory_released_after_big_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
