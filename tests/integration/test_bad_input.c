/* Integration test of bad input on a server's socket (raw TCP): every malformed or
 * out-of-order input gets an ERROR frame and/or a close, and a normal client on another
 * connection keeps being served throughout. */
#include "harness.h"
#include "storage.h"
#include "tests.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FRAME 4096
#define DRAIN_MS 3000

static struct h_cluster *cl;
static struct strata *normal; /* one long-lived connection, opened before any bad input */
static int served_round;

/* The normal client still gets answers: a write and the read of it. */
static void check_served(const char *after)
{
    char key[32], want[32], got[64] = "";
    snprintf(key, sizeof key, "alive-%d", ++served_round);
    snprintf(want, sizeof want, "round-%d", served_round);
    int rc = h_exec(normal, 0, NULL, NULL, "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":\"%s\"}",
                    key, want);
    if (rc == 0)
        rc = h_get_str(normal, 0, NULL, key, got, sizeof got, NULL);
    CHECK(rc == 0 && strcmp(got, want) == 0 && h_node_alive(cl, 0),
          "after %s: the normal client is still served (%s)", after, err_name(rc));
}

/* Send `bytes` on a fresh connection and expect ERROR `code` then a close. */
static void expect_error(const char *what, const void *bytes, size_t n, int code)
{
    int fd = h_raw_connect(cl->nodes[0].port);
    if (!CHECK(fd >= 0, "%s: connected", what))
        return;
    h_raw_send(fd, bytes, n);
    struct h_raw_outcome o;
    h_raw_drain(fd, DRAIN_MS, &o);
    close(fd);
    CHECK(o.error_code == code && o.closed && o.frames == 1,
          "%s: ERROR %s and close (got %s '%s', %d frames, closed %d)", what, err_name(code),
          o.error_code > 0 ? err_name(o.error_code) : "no ERROR", o.message, o.frames, o.closed);
    check_served(what);
}

/* Send `bytes` and expect a close with nothing sent back (raft peer preambles). */
static void expect_silent_close(const char *what, const void *bytes, size_t n)
{
    int fd = h_raw_connect(cl->nodes[0].port);
    if (!CHECK(fd >= 0, "%s: connected", what))
        return;
    h_raw_send(fd, bytes, n);
    struct h_raw_outcome o;
    h_raw_drain(fd, DRAIN_MS, &o);
    close(fd);
    CHECK(o.closed && o.frames == 0 && o.stray == 0,
          "%s: closed without a reply (closed %d, %d frames, %zu stray bytes)", what, o.closed,
          o.frames, o.stray);
    check_served(what);
}

static void hello_frame(struct buf *b, uint32_t vmin, uint32_t vmax)
{
    struct proto_hello h = {vmin, vmax, "integ-raw", 9, NULL, 0};
    proto_hello_append(b, &h);
}

static void request_frame(struct buf *b, uint64_t id, const char *json)
{
    struct buf cmd;
    buf_init(&cmd);
    struct err e;
    storage_json_to_value(json, strlen(json), &cmd, &e);
    proto_request_append(b, id, 0, cmd.data, cmd.len);
    buf_close(&cmd);
}

/* Connect and complete the handshake; returns the fd or -1. */
static int connect_ready(struct proto_reader *rd)
{
    int fd = h_raw_connect(cl->nodes[0].port);
    if (fd < 0)
        return -1;
    struct buf b;
    buf_init(&b);
    hello_frame(&b, 1, 1);
    h_raw_send(fd, b.data, b.len);
    buf_close(&b);
    struct proto_frame f;
    if (h_raw_next_frame(fd, rd, &f, DRAIN_MS) != 1 || f.kind != PROTO_WELCOME) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_dribbled(int fd, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h_raw_send(fd, p + i, 1);
        h_sleep_ms(1);
    }
}

/* A REQUEST frame whose length field L is exactly `want` (a kv.put padded by its value). */
static void sized_request(struct buf *out, uint32_t want)
{
    char json[MAX_FRAME * 2];
    size_t pad = 1000;
    for (int pass = 0; pass < 2; pass++) {
        int l = snprintf(json, sizeof json, "{\"op\":\"kv.put\",\"key\":\"big\",\"value\":\"");
        memset(json + l, 'x', pad);
        snprintf(json + l + pad, sizeof json - (size_t)l - pad, "\"}");
        buf_reset(out);
        request_frame(out, 99, json);
        uint32_t L = get_be32(out->data);
        pad = pad + want - L; /* the value's header has the same size in this range */
    }
}

void test_bad_input(void)
{
    static const char *const extra[] = {"--max-frame-bytes", "4096", "--idle-timeout-ms", "1000",
                                        NULL};
    static struct h_cluster c;
    cl = &c;
    h_cluster_init(&c, "badinput", 1, extra);
    REQUIRE(h_cluster_start(&c) == 0,
            "1 server started (--max-frame-bytes 4096, --idle-timeout-ms 1000)");
    REQUIRE(h_wait_leader(&c, 10000, -1) == 0, "it leads its one-node cluster");
    normal = h_open_node(&c, 0, NULL);
    REQUIRE(normal != NULL, "normal client opened");
    check_served("start");

    /* Garbage. */
    const char http[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    expect_error("an HTTP request (first byte 'G' reads as a huge length)", http, sizeof http - 1,
                 STRATA_TOO_LARGE);
    const uint8_t bad_kind[] = {0, 0, 0, 5, 1, 9, 0xde, 0xad, 0xbe};
    expect_error("a frame of unknown kind 9", bad_kind, sizeof bad_kind, STRATA_PROTOCOL_ERROR);
    const uint8_t short_len[] = {0, 0, 0, 1, 1};
    expect_error("a frame with length 1 (< 2)", short_len, sizeof short_len, STRATA_PROTOCOL_ERROR);
    const uint8_t not_msgpack[] = {0, 0, 0, 3, 1, 1, 0xc1};
    expect_error("a HELLO whose body is not MessagePack", not_msgpack, sizeof not_msgpack,
                 STRATA_PROTOCOL_ERROR);
    const uint8_t not_map[] = {0, 0, 0, 3, 1, 1, 0x01};
    expect_error("a HELLO whose body is not a map", not_map, sizeof not_map, STRATA_PROTOCOL_ERROR);

    /* Truncated frames: the server waits for the rest (serving others meanwhile) and
     * closes when the peer gives up. */
    struct buf b;
    buf_init(&b);
    hello_frame(&b, 1, 1);
    int fd = h_raw_connect(c.nodes[0].port);
    REQUIRE(fd >= 0, "connected for a truncated HELLO");
    h_raw_send(fd, b.data, b.len / 2);
    check_served("half a HELLO left pending on another connection");
    shutdown(fd, SHUT_WR);
    struct h_raw_outcome o;
    h_raw_drain(fd, DRAIN_MS, &o);
    close(fd);
    CHECK(o.closed && o.frames == 0, "truncated HELLO then EOF: the server closes (closed %d)",
          o.closed);
    check_served("a truncated HELLO");
    const uint8_t header_only[] = {0, 0, 0, 100, 1};
    fd = h_raw_connect(c.nodes[0].port);
    REQUIRE(fd >= 0, "connected for a truncated header");
    h_raw_send(fd, header_only, sizeof header_only);
    shutdown(fd, SHUT_WR);
    h_raw_drain(fd, DRAIN_MS, &o);
    close(fd);
    CHECK(o.closed && o.frames == 0, "a 5-byte header of a 100-byte frame then EOF: closed");
    check_served("a truncated header");

    /* Oversized: decided from the four length bytes, before any body. */
    const uint8_t big[] = {0, 0, 0x10, 0x01}; /* L = 4097 */
    expect_error("a length of 4097 (> --max-frame-bytes 4096), no body", big, sizeof big,
                 STRATA_TOO_LARGE);
    const uint8_t huge[] = {0x40, 0, 0, 0}; /* L = 2^30 */
    expect_error("a length of 2^30, no body", huge, sizeof huge, STRATA_TOO_LARGE);
    struct proto_reader rd;
    proto_reader_init(&rd, PROTO_MAX_FRAME_DEFAULT);
    fd = connect_ready(&rd);
    REQUIRE(fd >= 0, "handshake done for the frame-size boundary");
    sized_request(&b, MAX_FRAME);
    CHECK(get_be32(b.data) == MAX_FRAME, "built a REQUEST of exactly L = 4096");
    h_raw_send(fd, b.data, b.len);
    struct proto_frame f;
    CHECK(h_raw_next_frame(fd, &rd, &f, DRAIN_MS) == 1 && f.kind == PROTO_RESPONSE,
          "a REQUEST of exactly the maximum (L = 4096) is answered");
    sized_request(&b, MAX_FRAME + 1);
    h_raw_send(fd, b.data, 4); /* only the length: the verdict must not wait for the body */
    h_raw_drain(fd, DRAIN_MS, &o);
    close(fd);
    proto_reader_close(&rd);
    CHECK(o.error_code == STRATA_TOO_LARGE && o.closed,
          "after the handshake, a REQUEST length of 4097: ERROR TOO_LARGE and close (got %s)",
          o.error_code > 0 ? err_name(o.error_code) : "no ERROR");
    check_served("an oversized REQUEST");

    /* Dribbled one byte at a time: a valid conversation still works. */
    proto_reader_init(&rd, PROTO_MAX_FRAME_DEFAULT);
    fd = h_raw_connect(c.nodes[0].port);
    REQUIRE(fd >= 0, "connected for the dribbled frames");
    buf_reset(&b);
    hello_frame(&b, 1, 1);
    send_dribbled(fd, b.data, b.len);
    CHECK(h_raw_next_frame(fd, &rd, &f, DRAIN_MS) == 1 && f.kind == PROTO_WELCOME,
          "a HELLO sent one byte at a time gets WELCOME");
    buf_reset(&b);
    request_frame(&b, 7, "{\"op\":\"kv.put\",\"key\":\"dribbled\",\"value\":\"slow\"}");
    send_dribbled(fd, b.data, b.len);
    int got = h_raw_next_frame(fd, &rd, &f, DRAIN_MS);
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    struct proto_response resp;
    struct err e;
    CHECK(got == 1 && f.kind == PROTO_RESPONSE && proto_response_decode(&f, &z, &resp, &e) == 0 &&
              resp.id == 7 && resp.code == 0,
          "a REQUEST sent one byte at a time is executed");
    msgpack_zone_destroy(&z);
    close(fd);
    proto_reader_close(&rd);
    char v[64] = "";
    CHECK(h_get_str(normal, 0, NULL, "dribbled", v, sizeof v, NULL) == 0 && strcmp(v, "slow") == 0,
          "the dribbled write is readable");
    fd = h_raw_connect(c.nodes[0].port);
    REQUIRE(fd >= 0, "connected for a dribbled oversized length");
    send_dribbled(fd, big, sizeof big);
    h_raw_drain(fd, DRAIN_MS, &o);
    close(fd);
    CHECK(o.error_code == STRATA_TOO_LARGE && o.closed,
          "an oversized length dribbled one byte at a time: TOO_LARGE and close");
    check_served("dribbled frames");

    /* Handshake and order. */
    buf_reset(&b);
    hello_frame(&b, 1, 1);
    b.data[4] = 2; /* the frame's version byte */
    expect_error("a HELLO frame with version byte 2", b.data, b.len, STRATA_PROTOCOL_ERROR);
    buf_reset(&b);
    hello_frame(&b, 2, 9);
    expect_error("a HELLO speaking only versions 2-9", b.data, b.len, STRATA_PROTOCOL_ERROR);
    buf_reset(&b);
    request_frame(&b, 1, "{\"op\":\"kv.get\",\"key\":\"a\"}");
    expect_error("a REQUEST before HELLO", b.data, b.len, STRATA_PROTOCOL_ERROR);
    buf_reset(&b);
    hello_frame(&b, 1, 1);
    hello_frame(&b, 1, 1);
    {
        /* Both HELLOs in one write: WELCOME, then ERROR for the second, then close. */
        fd = h_raw_connect(c.nodes[0].port);
        REQUIRE(fd >= 0, "connected for a second HELLO");
        h_raw_send(fd, b.data, b.len);
        h_raw_drain(fd, DRAIN_MS, &o);
        close(fd);
        CHECK(o.frames == 2 && o.error_code == STRATA_PROTOCOL_ERROR && o.closed,
              "a second HELLO: WELCOME, then ERROR PROTOCOL_ERROR and close (%d frames, %s)",
              o.frames, o.error_code > 0 ? err_name(o.error_code) : "no ERROR");
        check_served("a second HELLO");
    }
    const uint8_t cmd_array[] = {0x91, 0x01};
    const uint8_t bad_req_bodies[][3] = {{0x01, 0x00, 0xc1}, {0x01, 0xa1, 0x61}};
    const char *const bad_req_names[] = {"a REQUEST whose command is byte c1",
                                         "a REQUEST whose flags are a string"};
    for (int k = 0; k < 3; k++) {
        buf_reset(&b);
        hello_frame(&b, 1, 1);
        if (k < 2) {
            proto_frame_append(&b, PROTO_REQUEST, bad_req_bodies[k], 3);
        } else {
            uint8_t body[2 + sizeof cmd_array] = {0x05, 0x00};
            memcpy(body + 2, cmd_array, sizeof cmd_array);
            proto_frame_append(&b, PROTO_REQUEST, body, sizeof body);
        }
        fd = h_raw_connect(c.nodes[0].port);
        REQUIRE(fd >= 0, "connected");
        h_raw_send(fd, b.data, b.len);
        h_raw_drain(fd, DRAIN_MS, &o);
        close(fd);
        const char *name = k < 2 ? bad_req_names[k] : "a REQUEST whose command is an array";
        CHECK(o.frames == 2 && o.error_code == STRATA_PROTOCOL_ERROR && o.closed,
              "%s: WELCOME, then ERROR PROTOCOL_ERROR and close (%d frames, %s '%s')", name,
              o.frames, o.error_code > 0 ? err_name(o.error_code) : "no ERROR", o.message);
        check_served(name);
    }
    const uint8_t server_kinds[] = {PROTO_WELCOME, PROTO_RESPONSE};
    for (int k = 0; k < 2; k++) {
        buf_reset(&b);
        hello_frame(&b, 1, 1);
        const uint8_t body[] = {0x80};
        proto_frame_append(&b, server_kinds[k], body, sizeof body);
        fd = h_raw_connect(c.nodes[0].port);
        REQUIRE(fd >= 0, "connected");
        h_raw_send(fd, b.data, b.len);
        h_raw_drain(fd, DRAIN_MS, &o);
        close(fd);
        CHECK(o.frames == 2 && o.error_code == STRATA_PROTOCOL_ERROR && o.closed,
              "a client sending a %s frame: ERROR PROTOCOL_ERROR and close",
              k ? "RESPONSE" : "WELCOME");
        check_served(k ? "a client RESPONSE frame" : "a client WELCOME frame");
    }

    /* Raft peer preambles: closed without a word (the peer is not a client). */
    struct proto_peer peer = {.group = 0, .node_id = 2};
    snprintf(peer.address, sizeof peer.address, "127.0.0.1:1");
    uint8_t pre[PROTO_PEER_FIXED + PROTO_ADDRESS_MAX];
    size_t plen = proto_peer_encode(pre, &peer);
    pre[1] = 'X';
    expect_silent_close("a raft preamble with bad magic 'SXFT'", pre, plen);
    peer.group = 7;
    plen = proto_peer_encode(pre, &peer);
    expect_silent_close("a raft preamble for unknown group 7", pre, plen);
    peer.group = 0;
    plen = proto_peer_encode(pre, &peer);
    pre[4] = 9;
    expect_silent_close("a raft preamble of version 9", pre, plen);
    plen = proto_peer_encode(pre, &peer);
    memset(pre + 12, 0, 8);
    expect_silent_close("a raft preamble from node id 0", pre, plen);
    plen = proto_peer_encode(pre, &peer);
    pre[6] = pre[7] = 0;
    expect_silent_close("a raft preamble with address length 0", pre, plen);
    plen = proto_peer_encode(pre, &peer);
    pre[20] = ' ';
    expect_silent_close("a raft preamble with a non-printable address", pre, plen);
    fd = h_raw_connect(c.nodes[0].port);
    REQUIRE(fd >= 0, "connected for a short preamble");
    h_raw_send(fd, "SR", 2);
    check_served("2 bytes of a raft preamble left pending");
    shutdown(fd, SHUT_WR);
    h_raw_drain(fd, DRAIN_MS, &o);
    close(fd);
    CHECK(o.closed && o.frames == 0, "a 2-byte preamble then EOF: closed without a reply");

    /* Many stuck connections at once do not starve the normal client. */
    int stuck[50];
    int nstuck = 0;
    buf_reset(&b);
    hello_frame(&b, 1, 1);
    for (int k = 0; k < 50; k++)
        if ((stuck[nstuck] = h_raw_connect(c.nodes[0].port)) >= 0) {
            h_raw_send(stuck[nstuck], b.data, k % 2 ? 3 : b.len - 1);
            nstuck++;
        }
    CHECK(nstuck == 50, "50 connections each holding a partial frame");
    check_served("50 stuck connections");
    for (int k = 0; k < nstuck; k++)
        close(stuck[k]);

    /* Connections that never complete a first frame must not be held forever (each
     * costs the server a descriptor): --idle-timeout-ms closes them. The server checks
     * once a second, so 1 s of idleness is noticed within about 2 s. */
    const char *const idle_names[] = {"a connection that never sends a byte",
                                      "a connection that sent only 'S' (a raft preamble's start)",
                                      "a connection that sent half a HELLO"};
    int idle[3];
    buf_reset(&b);
    hello_frame(&b, 1, 1);
    idle[0] = h_raw_connect(c.nodes[0].port);
    idle[1] = h_raw_connect(c.nodes[0].port);
    idle[2] = h_raw_connect(c.nodes[0].port);
    REQUIRE(idle[0] >= 0 && idle[1] >= 0 && idle[2] >= 0, "3 idle connections opened");
    h_raw_send(idle[1], "S", 1);
    h_raw_send(idle[2], b.data, b.len / 2);
    uint64_t t0 = h_now_ms();
    for (int k = 0; k < 3; k++) {
        h_raw_drain(idle[k], 4000, &o);
        close(idle[k]);
        CHECK(o.closed,
              "%s is closed by the server after the idle timeout (closed %d after %llu "
              "ms)",
              idle_names[k], o.closed, (unsigned long long)(h_now_ms() - t0));
    }
    buf_close(&b);
    check_served("idle connections");

    strata_close(normal);
    CHECK(h_node_alive(&c, 0), "the server is still running");
    CHECK(h_log_count(&c, 0, "Z ERROR ") == 0, "its log has no ERROR-level lines");

    /* SIGTERM while connections sit silent: they must not keep the server alive. */
    int quiet = h_raw_connect(c.nodes[0].port), peerish = h_raw_connect(c.nodes[0].port);
    REQUIRE(quiet >= 0 && peerish >= 0, "2 silent connections opened");
    h_raw_send(peerish, "SRFT", 4);
    h_sleep_ms(50);
    h_node_signal(&c, 0, SIGTERM);
    int st = h_node_wait_exit(&c, 0, 5000);
    CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "SIGTERM with silent connections open: the server exits 0 within 5 s (wait status "
          "0x%x)",
          st);
    close(quiet);
    close(peerish);
}
