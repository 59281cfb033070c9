/* Integration test of --http on a 3-node cluster of real servers: /metrics is valid
 * text exposition and its counters move with commands, /healthz and /readyz answer as
 * the cluster changes (a stopped loop, a lost quorum), bad HTTP input gets 4xx and the
 * node lives on, and many connections at once are served. Responses are read with
 * http-parser (the same library the server uses for requests). */
#include "harness.h"
#include "tests.h"

#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- A minimal HTTP client over raw sockets ------------------------------------------ */

struct resp {
    int status;
    char ctype[128];
    struct buf body;
    bool complete; /* a whole response was read */
    bool closed;   /* the server closed the connection */
    /* parser scratch */
    bool in_ctype;
    char field[32];
    size_t field_len;
    bool field_done;
};

static int r_field(http_parser *p, const char *at, size_t n)
{
    struct resp *r = p->data;
    if (r->field_done) {
        r->field_len = 0;
        r->field_done = false;
    }
    size_t room = sizeof r->field - 1 - r->field_len;
    n = n < room ? n : room;
    memcpy(r->field + r->field_len, at, n);
    r->field_len += n;
    r->field[r->field_len] = '\0';
    return 0;
}

static int r_value(http_parser *p, const char *at, size_t n)
{
    struct resp *r = p->data;
    r->field_done = true;
    if (strcasecmp(r->field, "Content-Type") == 0) {
        size_t have = strlen(r->ctype), room = sizeof r->ctype - 1 - have;
        n = n < room ? n : room;
        memcpy(r->ctype + have, at, n);
        r->ctype[have + n] = '\0';
    }
    return 0;
}

static int r_body(http_parser *p, const char *at, size_t n)
{
    struct resp *r = p->data;
    return buf_append(&r->body, at, n) ? -1 : 0;
}

static int r_done(http_parser *p)
{
    struct resp *r = p->data;
    r->status = (int)p->status_code;
    r->complete = true;
    http_parser_pause(p, 1); /* one response per call */
    return 0;
}

static const http_parser_settings resp_settings = {
    .on_header_field = r_field,
    .on_header_value = r_value,
    .on_body = r_body,
    .on_message_complete = r_done,
};

static void resp_free(struct resp *r)
{
    buf_close(&r->body);
    memset(r, 0, sizeof *r);
}

/* Read one response from fd within `ms` (r must be zeroed). 0 when a complete response
 * came; -1 otherwise (r->closed tells whether the server closed first). */
static int read_response(int fd, struct resp *r, unsigned ms)
{
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = r;
    buf_init(&r->body);
    uint64_t deadline = h_now_ms() + ms;
    char in[16384];
    while (!r->complete) {
        uint64_t now = h_now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return -1;
        /* One byte at a time would be slow; a whole read may hold the start of a next
         * (pipelined) response, which the callers here never send. */
        ssize_t n = recv(fd, in, sizeof in, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r->closed = true;
            http_parser_execute(&p, &resp_settings, NULL, 0); /* EOF ends a body */
            return r->complete ? 0 : -1;
        }
        http_parser_execute(&p, &resp_settings, in, (size_t)n);
        if (HTTP_PARSER_ERRNO(&p) != HPE_OK && HTTP_PARSER_ERRNO(&p) != HPE_PAUSED)
            return -1;
    }
    return 0;
}

/* Send raw bytes on a new connection and read one response: its status, or -1. */
static int raw_request(int port, const void *req, size_t len, struct resp *r)
{
    memset(r, 0, sizeof *r);
    int fd = h_raw_connect(port);
    if (fd < 0)
        return -1;
    int rc = h_raw_send(fd, req, len) == 0 ? read_response(fd, r, 5000) : -1;
    close(fd);
    return rc == 0 ? r->status : -1;
}

static int get(int port, const char *path, struct resp *r)
{
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
             path);
    return raw_request(port, req, strlen(req), r);
}

/* Is the body one line starting with `prefix`? */
static bool body_is(const struct resp *r, const char *prefix)
{
    size_t n = strlen(prefix);
    return r->body.len >= n && memcmp(r->body.data, prefix, n) == 0;
}

/* ---- Metrics text ------------------------------------------------------------------------ */

/* Every line is a comment (# HELP / # TYPE) or `name{labels} value`; returns the number
 * of bad lines (the first printed). */
static int check_exposition(const struct buf *b, int *samples)
{
    static const char *const sample_re = "^[a-zA-Z_:][a-zA-Z0-9_:]*"
                                         "(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\""
                                         "(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\")*\\})?"
                                         " ([-+]?[0-9.]+([eE][-+]?[0-9]+)?|[+-]Inf|NaN)$";
    static const char *const comment_re =
        "^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* "
        "(counter|gauge|histogram))$";
    regex_t rs, rc;
    if (regcomp(&rs, sample_re, REG_EXTENDED | REG_NOSUB) ||
        regcomp(&rc, comment_re, REG_EXTENDED | REG_NOSUB)) {
        h_note("regcomp failed");
        return 1;
    }
    int bad = 0;
    *samples = 0;
    size_t off = 0;
    while (off < b->len) {
        const char *line = (const char *)b->data + off;
        const char *nl = memchr(line, '\n', b->len - off);
        size_t n = nl ? (size_t)(nl - line) : b->len - off;
        char tmp[1024];
        bool fits = n < sizeof tmp;
        if (fits) {
            memcpy(tmp, line, n);
            tmp[n] = '\0';
        }
        bool ok = fits && (tmp[0] == '#' ? regexec(&rc, tmp, 0, NULL, 0) == 0
                                         : regexec(&rs, tmp, 0, NULL, 0) == 0);
        if (ok && tmp[0] != '#')
            (*samples)++;
        if (!ok && bad++ == 0)
            h_note("bad exposition line: '%.*s'", (int)(n < 200 ? n : 200), line);
        if (nl == NULL) {
            bad++; /* the text must end with a newline */
            break;
        }
        off += n + 1;
    }
    regfree(&rs);
    regfree(&rc);
    return bad;
}

/* The value of the sample whose text before the value is exactly `series` (e.g.
 * `strata_commands_total{op="kv.put"}`); -1 when absent. */
static double sample(const struct buf *b, const char *series)
{
    size_t n = strlen(series);
    size_t off = 0;
    while (off < b->len) {
        const char *line = (const char *)b->data + off;
        const char *nl = memchr(line, '\n', b->len - off);
        size_t len = nl ? (size_t)(nl - line) : b->len - off;
        if (len > n && memcmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        off += len + 1;
    }
    return -1;
}

static bool scrape(int port, struct buf *out)
{
    struct resp r;
    if (get(port, "/metrics", &r) != 200) {
        resp_free(&r);
        return false;
    }
    buf_reset(out);
    buf_append(out, r.body.data, r.body.len);
    resp_free(&r);
    return true;
}

static double metric_now(int port, const char *series)
{
    struct buf b;
    buf_init(&b);
    double v = scrape(port, &b) ? sample(&b, series) : -2;
    buf_close(&b);
    return v;
}

/* ---- The test ------------------------------------------------------------------------------ */

static int http_port[3];
static char http_addr[3][32];

/* Free ports for the HTTP endpoints (held together so no two are equal). */
static void pick_ports(void)
{
    int fds[3];
    for (int i = 0; i < 3; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof sa;
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&sa, sizeof sa) ||
            getsockname(fds[i], (struct sockaddr *)&sa, &sl)) {
            fprintf(stderr, "test_http: no free port: %s\n", strerror(errno));
            exit(2);
        }
        http_port[i] = ntohs(sa.sin_port);
        snprintf(http_addr[i], sizeof http_addr[i], "127.0.0.1:%d", http_port[i]);
    }
    for (int i = 0; i < 3; i++)
        close(fds[i]);
}

/* The harness gives every node the same extra flags; --http differs per node, so the
 * list is set before each start. */
static int start_node(struct h_cluster *c, int i)
{
    c->extra[4] = "--http";
    c->extra[5] = http_addr[i];
    c->extra[6] = NULL;
    return h_node_start(c, i);
}

/* Poll `path` on node i until it answers `status` (bounded); the last response stays
 * in *r. */
static bool wait_status(int i, const char *path, int status, unsigned ms, struct resp *r)
{
    uint64_t deadline = h_now_ms() + ms;
    for (;;) {
        memset(r, 0, sizeof *r);
        if (get(http_port[i], path, r) == status)
            return true;
        if (h_now_ms() >= deadline)
            return false;
        resp_free(r);
        h_sleep_ms(100);
    }
}

static void check_bad_requests(struct h_cluster *c, int i)
{
    int port = http_port[i], st;
    struct resp r;
    const char *post = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    st = raw_request(port, post, strlen(post), &r);
    CHECK(st == 405, "POST /metrics is 405 (got %d)", st);
    resp_free(&r);
    const char *garbage = "\x16\x03\x01garbage that is not http\r\n\r\n";
    st = raw_request(port, garbage, strlen(garbage), &r);
    CHECK(st == 400, "garbage is 400 (got %d)", st);
    resp_free(&r);
    /* A 64 KiB head, sent whole: the server answers 431 after 8 KiB and the client still
     * reads the answer (the server drains instead of resetting). */
    struct buf big;
    buf_init(&big);
    buf_printf(&big, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    for (int k = 0; k < 64 * 1024; k++)
        buf_append(&big, "a", 1);
    buf_printf(&big, "\r\n\r\n");
    st = raw_request(port, big.data, big.len, &r);
    CHECK(st == 431, "a 64 KiB request head is 431 (got %d)", st);
    resp_free(&r);
    buf_close(&big);
    static const char nul[] = "GET /metr\0ics HTTP/1.1\r\nHost: x\r\n\r\n";
    st = raw_request(port, nul, sizeof nul - 1, &r);
    CHECK(st == 400, "a NUL byte is 400 (got %d)", st);
    resp_free(&r);
    st = get(port, "/nope", &r);
    CHECK(st == 404, "an unknown path is 404 (got %d)", st);
    resp_free(&r);
    /* A connection that sends half a head and goes quiet does not stop others. */
    int slow = h_raw_connect(port);
    CHECK(slow >= 0 && h_raw_send(slow, "GET /hea", 8) == 0, "a slow client connected");
    st = get(port, "/healthz", &r);
    CHECK(st == 200, "/healthz answers while a slow client holds a connection (got %d)", st);
    resp_free(&r);
    if (slow >= 0)
        close(slow);
    CHECK(h_node_alive(c, i), "node %d survived the bad requests", i + 1);
}

/* 100 connections open at once, each with a request in flight, then all answers read;
 * one of them keeps its connection for a second request (keep-alive). */
static void check_many_connections(int i)
{
    enum { NCONN = 100 };
    int fds[NCONN];
    int opened = 0, answered = 0;
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int k = 0; k < NCONN; k++) {
        fds[k] = h_raw_connect(http_port[i]);
        if (fds[k] >= 0 && h_raw_send(fds[k], req, strlen(req)) == 0)
            opened++;
    }
    for (int k = 0; k < NCONN; k++) {
        struct resp r;
        memset(&r, 0, sizeof r);
        if (fds[k] >= 0 && read_response(fds[k], &r, 5000) == 0 && r.status == 200)
            answered++;
        resp_free(&r);
    }
    CHECK(opened == NCONN && answered == NCONN, "%d connections at once: %d sent, %d answered",
          NCONN, opened, answered);
    struct resp r;
    memset(&r, 0, sizeof r);
    CHECK(fds[0] >= 0 && h_raw_send(fds[0], req, strlen(req)) == 0 &&
              read_response(fds[0], &r, 5000) == 0 && r.status == 200,
          "a second request on a kept-alive connection is answered");
    resp_free(&r);
    for (int k = 0; k < NCONN; k++)
        if (fds[k] >= 0)
            close(fds[k]);

    /* Past the cap (256): the extra connections get 503 and are closed; the ones within
     * it are served; afterwards the node serves new connections again. */
    enum { NOVER = 300 };
    static int over[NOVER];
    int ok200 = 0, got503 = 0, other = 0;
    for (int k = 0; k < NOVER; k++)
        over[k] = h_raw_connect(http_port[i]);
    h_sleep_ms(300); /* let the server accept them all before any request */
    for (int k = 0; k < NOVER; k++)
        if (over[k] >= 0)
            h_raw_send(over[k], req, strlen(req)); /* may fail on a closed one */
    for (int k = 0; k < NOVER; k++) {
        struct resp o;
        memset(&o, 0, sizeof o);
        int rc = over[k] >= 0 ? read_response(over[k], &o, 5000) : -1;
        if (rc == 0 && o.status == 200)
            ok200++;
        else if (rc == 0 && o.status == 503)
            got503++;
        else
            other++;
        resp_free(&o);
        if (over[k] >= 0)
            close(over[k]);
    }
    CHECK(got503 > 0 && ok200 > 0 && ok200 <= 256 && other == 0,
          "%d connections at once: %d served, %d refused with 503, %d other", NOVER, ok200, got503,
          other);
    struct resp after;
    int st = -1;
    for (int tries = 0; tries < 50 && st != 200; tries++) {
        memset(&after, 0, sizeof after);
        st = get(http_port[i], "/healthz", &after);
        resp_free(&after);
        if (st != 200)
            h_sleep_ms(100);
    }
    CHECK(st == 200, "served again once they closed (got %d)", st);
}

void test_http(void)
{
    pick_ports();
    static const char *const extra[] = {"--snapshot-threshold", "64", "--snapshot-trailing", "32",
                                        NULL};
    struct h_cluster c;
    h_cluster_init(&c, "http", 3, extra);
    for (int i = 0; i < 3; i++)
        REQUIRE(start_node(&c, i) == 0, "node %d started with --http %s", i + 1, http_addr[i]);
    int L = h_wait_leader(&c, 10000, -1);
    REQUIRE(L >= 0, "a leader is elected and known to every node");
    int F = (L + 1) % 3, G = (L + 2) % 3;
    h_note("leader is node %d", L + 1);

    /* Health and readiness everywhere. */
    struct resp r;
    int st;
    for (int i = 0; i < 3; i++) {
        st = get(http_port[i], "/healthz", &r);
        CHECK(st == 200 && body_is(&r, "ok"), "node %d /healthz is 200 ok (got %d)", i + 1, st);
        resp_free(&r);
        bool ready = wait_status(i, "/readyz", 200, 10000, &r);
        CHECK(ready, "node %d /readyz is 200 (got %d)", i + 1, r.status);
        resp_free(&r);
    }

    /* /metrics: the content type and the shape of every line. */
    st = get(http_port[L], "/metrics", &r);
    CHECK(st == 200, "/metrics is 200 (got %d)", st);
    CHECK(strncmp(r.ctype, "text/plain; version=0.0.4", 25) == 0,
          "/metrics content type is text/plain; version=0.0.4 ('%s')", r.ctype);
    int samples = 0;
    CHECK(check_exposition(&r.body, &samples) == 0 && samples > 20,
          "every /metrics line is a comment or name{labels} value (%d samples)", samples);
    CHECK(sample(&r.body, "strata_raft_role{group=\"1\",role=\"leader\"}") == 1,
          "the leader's strata_raft_role says leader");
    CHECK(sample(&r.body, "strata_raft_has_leader{group=\"1\"}") == 1, "has_leader is 1");
    CHECK(sample(&r.body, "strata_raft_members{group=\"1\"}") == 3, "3 members");
    CHECK(sample(&r.body, "strata_uptime_seconds") > 0, "uptime is positive");
    CHECK(sample(&r.body, "strata_process_resident_memory_bytes") > 1e6, "RSS is reported");
    CHECK(sample(&r.body, "strata_data_dir_bytes") > 0, "data dir size is reported");
    resp_free(&r);

    /* Counters move with commands. */
    const char *puts_s = "strata_commands_total{op=\"kv.put\"}";
    const char *putlat = "strata_command_duration_seconds_count{op=\"kv.put\"}";
    double puts0 = metric_now(http_port[L], puts_s), lat0 = metric_now(http_port[L], putlat);
    double fwd0 = metric_now(http_port[F], "strata_forwarded_requests_total");
    double commit0 = metric_now(http_port[L], "strata_raft_commit_index{group=\"1\"}");
    static struct h_kv kv[100];
    h_kv_fill(kv, 100, "http");
    struct strata *dl = h_open_node(&c, L, NULL);
    REQUIRE(dl != NULL, "client on the leader");
    /* One at a time: each is its own log entry, so 100 of them pass the snapshot
     * threshold (64) and a snapshot is taken. */
    CHECK(h_put_all(dl, NULL, kv, 100, 1) == 100, "100 puts through the leader");
    struct err e;
    CHECK(h_exec(dl, 0, NULL, &e, "{\"op\":\"no.such.op\"}") != 0, "an unknown op fails");
    CHECK(h_exec(dl, 0, NULL, &e, "{\"op\":\"kv.get\",\"branch\":\"nobranch\",\"key\":\"k\"}") != 0,
          "a kv.get on a missing branch fails");
    strata_close(dl);
    struct strata *df = h_open_node(&c, F, NULL);
    REQUIRE(df != NULL, "client on a follower");
    CHECK(h_put_all(df, NULL, kv, 10, 10) == 10, "10 puts through the follower");
    strata_close(df);

    struct buf m;
    buf_init(&m);
    REQUIRE(scrape(http_port[L], &m), "leader /metrics scraped again");
    double puts1 = sample(&m, puts_s);
    CHECK(puts1 - (puts0 < 0 ? 0 : puts0) >= 110,
          "kv.put count on the leader rose by >= 110 (100 direct + 10 forwarded): %.0f -> %.0f",
          puts0, puts1);
    CHECK(sample(&m, putlat) - (lat0 < 0 ? 0 : lat0) >= 110, "kv.put latency count rose too");
    CHECK(sample(&m, "strata_raft_commit_index{group=\"1\"}") >= commit0 + 64,
          "commit index rose by >= 64 (100 puts one at a time, batched or not)");
    CHECK(sample(&m, "strata_command_errors_total{op=\"unknown\",code=\"INVALID_ARGUMENT\"}") >= 1,
          "the unknown op is counted as op=\"unknown\" INVALID_ARGUMENT");
    CHECK(strstr((const char *)m.data, "no.such.op") == NULL,
          "a client's op string never becomes a label");
    CHECK(sample(&m, "strata_command_errors_total{op=\"kv.get\",code=\"BRANCH_NOT_FOUND\"}") >= 1,
          "the failed kv.get is counted with its code");
    double snaps = -1, encoded = -1, cow = -1;
    for (int i = 0; i < 3; i++) {
        double s = metric_now(http_port[i], "strata_snapshots_total{group=\"1\",kind=\"taken\"}");
        double en = metric_now(http_port[i], "strata_snapshot_encode_seconds_count{group=\"1\"}");
        double w = metric_now(http_port[i], "strata_snapshot_cow_bytes_total{group=\"1\"}");
        snaps = s > snaps ? s : snaps;
        encoded = en > encoded ? en : encoded;
        cow = w > cow ? w : cow;
    }
    CHECK(snaps >= 1, "snapshots were taken and counted (threshold 64): %.0f", snaps);
    /* Taken by forked encoders (replication/snapfork.c), which report their own time and
     * the memory copied on write meanwhile; sanitizer builds encode on the loop. */
#if !defined(__SANITIZE_ADDRESS__)
    CHECK(encoded >= 1, "the forked encodes are timed: %.0f", encoded);
    CHECK(cow > 0, "their copy-on-write bytes are counted: %.0f", cow);
#else
    (void)encoded, (void)cow;
#endif
    double fwd1 = metric_now(http_port[F], "strata_forwarded_requests_total");
    CHECK(fwd1 - (fwd0 < 0 ? 0 : fwd0) >= 10, "the follower's forwarded count rose by >= 10");
    CHECK(check_exposition(&m, &samples) == 0, "the text is still well formed after traffic");
    buf_close(&m);

    /* Bad HTTP input and many connections. */
    check_bad_requests(&c, F);
    check_many_connections(F);
    double bad = metric_now(http_port[F], "strata_http_requests_total{code=\"431\"}");
    CHECK(bad >= 1, "the 431 is counted in strata_http_requests_total (%.0f)", bad);

    /* A stopped loop: SIGSTOP 1.5 s. /healthz says 503 right after, then 200 again. */
    h_node_signal(&c, G, SIGSTOP);
    h_sleep_ms(1500);
    h_node_signal(&c, G, SIGCONT);
    h_sleep_ms(300);
    st = get(http_port[G], "/healthz", &r);
    CHECK(st == 503 && body_is(&r, "event loop blocked"),
          "/healthz is 503 after the loop was stopped 1.5 s (got %d)", st);
    resp_free(&r);
    CHECK(metric_now(http_port[G], "strata_loop_blocked_total") >= 1,
          "the block is counted in strata_loop_blocked_total");
    CHECK(wait_status(G, "/healthz", 200, 15000, &r), "/healthz is 200 again within 15 s");
    resp_free(&r);

    /* Lost quorum: kill the other two; F knows no leader, so it is not ready, but alive. */
    CHECK(wait_status(F, "/readyz", 200, 10000, &r), "node %d ready before the kill", F + 1);
    resp_free(&r);
    h_node_kill9(&c, L);
    h_node_kill9(&c, G);
    CHECK(wait_status(F, "/readyz", 503, 10000, &r) && body_is(&r, "not ready:"),
          "/readyz on node %d is 503 with a reason once its peers are gone", F + 1);
    h_note("readyz: %.*s", (int)(r.body.len ? r.body.len - 1 : 0), (const char *)r.body.data);
    resp_free(&r);
    st = get(http_port[F], "/healthz", &r);
    CHECK(st == 200, "/healthz stays 200 without a quorum (got %d)", st);
    resp_free(&r);
    /* Each group notices on its own election timeout: poll (bounded) for shard 1. */
    double hl = -1;
    for (uint64_t until = h_now_ms() + 10000; h_now_ms() < until; h_sleep_ms(100))
        if ((hl = metric_now(http_port[F], "strata_raft_has_leader{group=\"1\"}")) == 0)
            break;
    CHECK(hl == 0, "strata_raft_has_leader is 0 without a quorum (%g)", hl);

    /* Shutdown with HTTP connections open: one kept alive after an answer, one with half
     * a request. h_finish then sends SIGTERM and checks the node exits 0 (every handle
     * closed) and, in sanitizer builds, leaks nothing. The fds close at exit. */
    static int idle_fd, partial_fd;
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    idle_fd = h_raw_connect(http_port[F]);
    memset(&r, 0, sizeof r);
    CHECK(idle_fd >= 0 && h_raw_send(idle_fd, req, strlen(req)) == 0 &&
              read_response(idle_fd, &r, 5000) == 0,
          "a kept-alive connection stays open into shutdown");
    resp_free(&r);
    partial_fd = h_raw_connect(http_port[F]);
    CHECK(partial_fd >= 0 && h_raw_send(partial_fd, "GET /metr", 9) == 0,
          "a half-sent request is open into shutdown");
}
