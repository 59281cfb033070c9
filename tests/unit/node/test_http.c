/* node/http.c request parsing: good requests (paths, keep-alive, pipelining, any split
 * of the bytes), and every kind of bad input with its status: 400, 405, 431, 505. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static struct http_req *new_req(void)
{
    struct http_req *r = malloc(sizeof *r);
    assert_non_null(r);
    http_req_init(r);
    return r;
}

/* Feed the whole string at once; returns the status and the bytes used. */
static int feed_all(struct http_req *r, const char *s, size_t *used)
{
    return http_req_feed(r, s, strlen(s), used);
}

static int parse_one(const char *s)
{
    struct http_req *r = new_req();
    size_t used;
    int rc = feed_all(r, s, &used);
    free(r);
    return rc;
}

static void test_http_req_feed_good_get(void **state)
{
    (void)state;
    struct http_req *r = new_req();
    const char *s = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
    size_t used;
    assert_int_equal(feed_all(r, s, &used), HTTP_REQ_DONE);
    assert_int_equal(used, strlen(s));
    assert_string_equal(r->path, "/metrics");
    assert_true(r->keep_alive);
    free(r);
}

static void test_http_req_feed_path_forms(void **state)
{
    (void)state;
    static const struct {
        const char *req, *path;
    } cases[] = {
        {"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n", "/healthz"},
        {"GET /readyz#frag HTTP/1.1\r\nHost: x\r\n\r\n", "/readyz"},
        {"GET http://node1:9100/metrics HTTP/1.1\r\nHost: x\r\n\r\n", "/metrics"},
        {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "/"},
        {"GET /a%20b HTTP/1.1\r\nhOsT: x\r\n\r\n", "/a%20b"}, /* no decoding; Host any case */
        {"GET / HTTP/1.1\r\nHost:\r\n\r\n", "/"},             /* empty Host is allowed */
        {"GET / HTTP/1.1\nHost: x\n\n", "/"},                 /* bare LF line ends */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req *r = new_req();
        size_t used;
        int rc = feed_all(r, cases[i].req, &used);
        if (rc != HTTP_REQ_DONE)
            fail_msg("case %zu: status %d (%s)", i, rc, r->reason ? r->reason : "");
        assert_string_equal(r->path, cases[i].path);
        free(r);
    }
}

static void test_http_req_feed_keep_alive_rules(void **state)
{
    (void)state;
    static const struct {
        const char *req;
        bool keep;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req *r = new_req();
        size_t used;
        assert_int_equal(feed_all(r, cases[i].req, &used), HTTP_REQ_DONE);
        assert_int_equal(r->keep_alive, cases[i].keep);
        free(r);
    }
}

/* Two requests in one read: the first is reported with the bytes it used, the second
 * after http_req_next. */
static void test_http_req_feed_pipelined(void **state)
{
    (void)state;
    const char *a = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *b = "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    char both[256];
    snprintf(both, sizeof both, "%s%s", a, b);
    struct http_req *r = new_req();
    size_t used;
    assert_int_equal(http_req_feed(r, both, strlen(both), &used), HTTP_REQ_DONE);
    assert_int_equal(used, strlen(a));
    assert_string_equal(r->path, "/a");
    assert_true(r->keep_alive);
    http_req_next(r);
    size_t used2;
    assert_int_equal(http_req_feed(r, both + used, strlen(both) - used, &used2), HTTP_REQ_DONE);
    assert_int_equal(used2, strlen(b));
    assert_string_equal(r->path, "/b");
    assert_false(r->keep_alive);
    free(r);
}

/* Any split of the bytes gives the same request: one byte at a time here. */
static void test_http_req_feed_byte_by_byte(void **state)
{
    (void)state;
    const char *s = "GET /metrics?x=1 HTTP/1.1\r\nUser-Agent: t\r\nHost: h\r\n\r\n";
    struct http_req *r = new_req();
    size_t n = strlen(s), used;
    for (size_t i = 0; i + 1 < n; i++) {
        assert_int_equal(http_req_feed(r, s + i, 1, &used), HTTP_REQ_MORE);
        assert_int_equal(used, 1);
    }
    assert_int_equal(http_req_feed(r, s + n - 1, 1, &used), HTTP_REQ_DONE);
    assert_string_equal(r->path, "/metrics");
    /* A header name split across reads is still recognised ("Ho" + "st"). */
    http_req_next(r);
    const char *p1 = "GET / HTTP/1.1\r\nHo", *p2 = "st: h\r\n\r\n";
    assert_int_equal(http_req_feed(r, p1, strlen(p1), &used), HTTP_REQ_MORE);
    assert_int_equal(http_req_feed(r, p2, strlen(p2), &used), HTTP_REQ_DONE);
    free(r);
}

static void test_http_req_feed_methods_405(void **state)
{
    (void)state;
    static const char *const methods[] = {"POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        char req[128];
        snprintf(req, sizeof req, "%s /metrics HTTP/1.1\r\nHost: x\r\n\r\n", methods[i]);
        assert_int_equal(parse_one(req), 405);
    }
    /* With a body too: the method is what is wrong. */
    assert_int_equal(parse_one("POST /m HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"), 405);
}

static void test_http_req_feed_bad_request_400(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "garbage\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/x.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        "GET /\r\n\r\n",                                               /* HTTP/0.9: no version */
        "GET / HTTP/1.1\r\n\r\n",                                      /* no Host */
        "GET / HTTP/1.1\r\nHostname: x\r\n\r\n",                       /* not Host */
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", /* a body */
        "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n: novalue\r\n\r\n",
        "get / HTTP/1.1\r\nHost: x\r\n\r\n",            /* methods are case-sensitive */
        "GET * HTTP/1.1\r\nHost: x\r\n\r\n",            /* no path */
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct http_req *r = new_req();
        size_t used;
        int rc = feed_all(r, bad[i], &used);
        if (rc != 400)
            fail_msg("case %zu: status %d, want 400", i, rc);
        assert_non_null(r->reason);
        assert_true(used <= strlen(bad[i]));
        free(r);
    }
    /* NUL bytes inside the request line. */
    static const char nul[] = "GET /me\0trics HTTP/1.1\r\nHost: x\r\n\r\n";
    struct http_req *r = new_req();
    size_t used;
    assert_int_equal(http_req_feed(r, nul, sizeof nul - 1, &used), 400);
    free(r);
}

static void test_http_req_feed_version_505(void **state)
{
    (void)state;
    assert_int_equal(parse_one("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
    assert_int_equal(parse_one("GET / HTTP/3.0\r\nHost: x\r\n\r\n"), 505);
}

/* A head of exactly HTTP_HEAD_MAX bytes is fine; one byte more is 431, decided within
 * the first HTTP_HEAD_MAX bytes (nothing past the cap is read). */
static void make_head(char *out, size_t total)
{
    const char *pre = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", *post = "\r\n\r\n";
    size_t pad = total - strlen(pre) - strlen(post);
    strcpy(out, pre);
    memset(out + strlen(pre), 'a', pad);
    strcpy(out + strlen(pre) + pad, post);
    assert_int_equal(strlen(out), total);
}

static void test_http_req_feed_head_cap_431(void **state)
{
    (void)state;
    static char head[HTTP_HEAD_MAX + 64];
    struct http_req *r = new_req();
    size_t used;
    make_head(head, HTTP_HEAD_MAX);
    assert_int_equal(feed_all(r, head, &used), HTTP_REQ_DONE);
    assert_int_equal(used, HTTP_HEAD_MAX);

    http_req_init(r);
    make_head(head, HTTP_HEAD_MAX + 1);
    assert_int_equal(feed_all(r, head, &used), 431);
    assert_true(used <= HTTP_HEAD_MAX);

    /* The same in small pieces, and with a huge request line instead of a header. */
    http_req_init(r);
    int rc = HTTP_REQ_MORE;
    size_t off = 0;
    while (rc == HTTP_REQ_MORE && off < strlen(head)) {
        size_t n = strlen(head) - off < 100 ? strlen(head) - off : 100;
        rc = http_req_feed(r, head + off, n, &used);
        off += used;
    }
    assert_int_equal(rc, 431);
    assert_true(off <= HTTP_HEAD_MAX);

    http_req_init(r);
    static char line[HTTP_HEAD_MAX + 64];
    strcpy(line, "GET /");
    memset(line + 5, 'p', HTTP_HEAD_MAX);
    strcpy(line + 5 + HTTP_HEAD_MAX, " HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(feed_all(r, line, &used), 431);

    /* Endless header lines without an end of head. */
    http_req_init(r);
    assert_int_equal(http_req_feed(r, "GET / HTTP/1.1\r\n", 16, &used), HTTP_REQ_MORE);
    rc = HTTP_REQ_MORE;
    for (int i = 0; i < 10000 && rc == HTTP_REQ_MORE; i++)
        rc = http_req_feed(r, "X-A: b\r\n", 8, &used);
    assert_int_equal(rc, 431);
    free(r);
}

/* The cap is per request: a keep-alive connection may send many requests whose sum is
 * far above it. */
static void test_http_req_feed_cap_is_per_request(void **state)
{
    (void)state;
    static char head[HTTP_HEAD_MAX + 64];
    make_head(head, HTTP_HEAD_MAX - 10);
    struct http_req *r = new_req();
    for (int i = 0; i < 5; i++) {
        size_t used;
        assert_int_equal(feed_all(r, head, &used), HTTP_REQ_DONE);
        http_req_next(r);
    }
    free(r);
}

/* Seeded random bytes never crash the parser and never yield a request. */
static void test_http_req_feed_garbage(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    char buf[512];
    for (int round = 0; round < 2000; round++) {
        size_t n = 1 + (size_t)(x % sizeof buf);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = (char)x;
        }
        buf[0] = (char)('A' + (x % 26)); /* start like a method more often than not */
        struct http_req *r = new_req();
        size_t used;
        int rc = http_req_feed(r, buf, n, &used);
        assert_true(rc == HTTP_REQ_MORE || rc == 400 || rc == 405 || rc == 431 || rc == 505);
        assert_true(used <= n);
        free(r);
    }
}

static void test_http_status_text(void **state)
{
    (void)state;
    assert_string_equal(http_status_text(200), "OK");
    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(405), "Method Not Allowed");
    assert_string_equal(http_status_text(999), "Unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_req_feed_good_get),
        cmocka_unit_test(test_http_req_feed_path_forms),
        cmocka_unit_test(test_http_req_feed_keep_alive_rules),
        cmocka_unit_test(test_http_req_feed_pipelined),
        cmocka_unit_test(test_http_req_feed_byte_by_byte),
        cmocka_unit_test(test_http_req_feed_methods_405),
        cmocka_unit_test(test_http_req_feed_bad_request_400),
        cmocka_unit_test(test_http_req_feed_version_505),
        cmocka_unit_test(test_http_req_feed_head_cap_431),
        cmocka_unit_test(test_http_req_feed_cap_is_per_request),
        cmocka_unit_test(test_http_req_feed_garbage),
        cmocka_unit_test(test_http_status_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
