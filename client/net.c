/* libstrata's network backend: a blocking client for strata://[KEY@]HOST:PORT,... that
 * finds the leader, follows NOT_LEADER hints, reconnects with backoff, applies timeouts
 * and pipelines. One connection at a time, to the node believed to lead. */
#include "net.h"

#include "proto.h"
#include "storage.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RETRIES 24 /* with the 200 ms cap: ~4.4 s, more than an election; the call deadline bounds it too */
#define BACKOFF_MIN_MS 25
#define BACKOFF_MAX_MS 200 /* a new leader is usually known within an election: poll it often */

static uint64_t now_ms(void)
{
    return clock_mono_ns() / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define URI_SHOW_MAX 200

/* HOST or HOST:PORT with PORT 1..65535. */
static bool seed_ok(const char *p, size_t l)
{
    const char *colon = memchr(p, ':', l);
    if (colon == p)
        return false;
    if (colon == NULL)
        return l > 0;
    size_t pl = l - (size_t)(colon - p) - 1;
    if (pl == 0 || pl > 5)
        return false;
    unsigned port = 0;
    for (size_t i = 0; i < pl; i++) {
        if (colon[1 + i] < '0' || colon[1 + i] > '9')
            return false;
        port = port * 10 + (unsigned)(colon[1 + i] - '0');
    }
    return port >= 1 && port <= 65535;
}

int net_parse(struct net *n, const char *uri, const char *rest, struct err *err)
{
    memset(n, 0, sizeof *n);
    n->fd = -1;
    n->timeout_ms = 10000;
    n->connect_timeout_ms = 2000;
    const char *at = strchr(rest, '@');
    const char *slash = strchr(rest, '/');
    if (at && (slash == NULL || at < slash)) {
        if (at == rest || (size_t)(at - rest) >= sizeof n->api_key)
            return err_set(err, STRATA_INVALID_ARGUMENT, "bad API key in the URI");
        memcpy(n->api_key, rest, (size_t)(at - rest));
        n->has_key = true;
        rest = at + 1;
    }
    size_t len = strcspn(rest, "/");
    if (rest[len] == '/' && rest[len + 1] != '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "URI '%.*s' has a path: expected strata://HOST[:PORT][,HOST[:PORT]...]",
                       URI_SHOW_MAX, uri);
    const char *p = rest, *end = rest + len;
    do {
        size_t l = strcspn(p, ",/");
        if (!seed_ok(p, l))
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "URI '%.*s' has a bad host '%.*s': expected HOST or HOST:PORT",
                           URI_SHOW_MAX, uri, (int)l, p);
        if (l >= sizeof n->seeds[0] || n->nseeds == NET_MAX_SEEDS)
            return err_set(err, STRATA_INVALID_ARGUMENT, "bad seed list in the URI");
        char *s = n->seeds[n->nseeds++];
        memcpy(s, p, l);
        s[l] = '\0';
        if (strchr(s, ':') == NULL) /* default port */
            snprintf(s + l, sizeof n->seeds[0] - l, ":9876");
        p += l + (p[l] == ',');
    } while (p <= end && p[-1] == ',');
    return 0;
}

void net_close(struct net *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
    proto_reader_close(&n->rd);
    n->connected[0] = '\0';
}

static int dial(const char *addr, int timeout_ms, struct err *err)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof host)
        return -err_set(err, STRATA_INVALID_ARGUMENT, "bad address '%s'", addr);
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int g = getaddrinfo(host, colon + 1, &hints, &res);
    if (g)
        return -err_set(err, STRATA_UNAVAILABLE, "cannot resolve %s: %s", addr, gai_strerror(g));
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) {
            close(fd);
            fd = -1;
            continue;
        }
        struct pollfd pfd = {fd, POLLOUT, 0};
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (poll(&pfd, 1, timeout_ms) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return -err_set(err, STRATA_UNAVAILABLE, "cannot connect to %s", addr);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* The deadline of one wait: op_ms from now, but never past the current call's. */
static uint64_t wait_deadline(const struct net *n)
{
    uint64_t d = now_ms() + (uint64_t)n->timeout_ms;
    return n->call_deadline && n->call_deadline < d ? n->call_deadline : d;
}

static int send_all(struct net *n, const uint8_t *p, size_t len, struct err *err)
{
    uint64_t deadline = wait_deadline(n);
    while (len > 0) {
        ssize_t w = send(n->fd, p, len, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            len -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return err_set(err, STRATA_UNAVAILABLE, "send to %s failed: %s", n->connected,
                           strerror(errno));
        struct pollfd pfd = {n->fd, POLLOUT, 0};
        uint64_t now = now_ms();
        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
            return err_set(err, STRATA_TIMEOUT, "send to %s timed out", n->connected);
    }
    return 0;
}

/* Read until a frame is available (or the deadline). */
static int next_frame(struct net *n, struct proto_frame *f, uint64_t deadline, struct err *err)
{
    for (;;) {
        int r = proto_reader_next(&n->rd, f, err);
        if (r == 1)
            return 0;
        if (r != 0)
            return r;
        uint64_t now = now_ms();
        struct pollfd pfd = {n->fd, POLLIN, 0};
        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
            return err_set(err, STRATA_TIMEOUT, "no answer from %s within %d ms", n->connected,
                           n->timeout_ms);
        uint8_t tmp[65536];
        ssize_t got = recv(n->fd, tmp, sizeof tmp, 0);
        if (got == 0)
            return err_set(err, STRATA_UNAVAILABLE, "%s closed the connection", n->connected);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return err_set(err, STRATA_UNAVAILABLE, "receive from %s failed: %s", n->connected,
                           strerror(errno));
        }
        if (proto_reader_feed(&n->rd, tmp, (size_t)got))
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    }
}

/* Connect to `addr` and complete the handshake. */
static int connect_to(struct net *n, const char *addr, struct err *err)
{
    net_close(n);
    int fd = dial(addr, n->connect_timeout_ms, err);
    if (fd < 0)
        return -fd;
    n->fd = fd;
    snprintf(n->connected, sizeof n->connected, "%s", addr);
    proto_reader_init(&n->rd, PROTO_MAX_FRAME_DEFAULT);
    struct buf b;
    buf_init(&b);
    struct proto_hello h = {PROTO_VERSION, PROTO_VERSION, "libstrata", 9,
                            n->has_key ? n->api_key : NULL, n->has_key ? strlen(n->api_key) : 0};
    int rc = proto_hello_append(&b, &h);
    if (rc == 0)
        rc = send_all(n, b.data, b.len, err);
    buf_close(&b);
    struct proto_frame f;
    if (rc == 0)
        rc = next_frame(n, &f, wait_deadline(n), err);
    if (rc == 0) {
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        if (f.kind == PROTO_ERROR) {
            int code;
            const char *m;
            size_t ml;
            rc = proto_error_decode(&f, &z, &code, &m, &ml, err);
            if (rc == 0) {
                rc = err_set(err, code, "%s refused the connection: %.*s", addr, (int)ml, m);
                /* A refused key or protocol version will not get better by retrying. */
                n->refused = code == STRATA_UNAUTHENTICATED ||
                             code == STRATA_PERMISSION_DENIED || code == STRATA_PROTOCOL_ERROR;
            }
        } else if (f.kind != PROTO_WELCOME) {
            rc = err_set(err, STRATA_PROTOCOL_ERROR, "%s did not answer HELLO with WELCOME", addr);
        } else {
            struct proto_welcome w;
            rc = proto_welcome_decode(&f, &z, &w, err);
            if (rc == 0 && w.leader && w.leader_len < sizeof n->leader && n->leader[0] == '\0') {
                memcpy(n->leader, w.leader, w.leader_len);
                n->leader[w.leader_len] = '\0';
            }
        }
        msgpack_zone_destroy(&z);
    }
    if (rc)
        net_close(n);
    return rc;
}

/* Make sure we hold a connection, preferring the known leader, then each seed. */
static int ensure_connected(struct net *n, struct err *err)
{
    if (n->fd >= 0) {
        /* The server may have closed an idle connection: find out before sending, so a
         * write is not lost to a connection that was already gone. */
        uint8_t c;
        ssize_t r = recv(n->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            net_close(n);
        else
            return 0;
    }
    int rc = STRATA_UNAVAILABLE;
    if (n->leader[0] && (rc = connect_to(n, n->leader, err)) == 0)
        return 0;
    if (n->refused)
        return rc;
    n->leader[0] = '\0';
    for (size_t i = 0; i < n->nseeds; i++) {
        size_t k = (n->next_seed + i) % n->nseeds;
        if ((rc = connect_to(n, n->seeds[k], err)) == 0) {
            n->next_seed = k + 1;
            return 0;
        }
        if (n->refused)
            return rc;
    }
    return rc;
}

struct slot {
    const uint8_t *cmd;
    size_t len;
    bool write;
    bool done;
    uint64_t id;
    int code;
    struct buf *result;
    struct err *err;
};

/* One round: send every unfinished command, read their responses. Returns 0 when every
 * slot has a final answer, EAGAIN-like 1 when some must be retried (redirect, transient
 * error), or a connection-level error code. */
static int round_trip(struct net *n, struct slot *s, size_t cnt, unsigned flags, bool *redirect,
                      struct err *err)
{
    struct buf out;
    buf_init(&out);
    size_t waiting = 0;
    int rc = 0;
    for (size_t i = 0; i < cnt; i++) {
        if (s[i].done)
            continue;
        s[i].id = ++n->next_id;
        if ((rc = proto_request_append(&out, s[i].id, flags, s[i].cmd, s[i].len)))
            break;
        waiting++;
    }
    if (rc == 0)
        rc = send_all(n, out.data, out.len, err);
    buf_close(&out);
    if (rc)
        return rc;
    uint64_t deadline = wait_deadline(n);
    while (waiting > 0) {
        struct proto_frame f;
        if ((rc = next_frame(n, &f, deadline, err)))
            return rc;
        if (f.kind == PROTO_ERROR) {
            /* The server closes the connection after this: report its reason. */
            msgpack_zone z;
            msgpack_zone_init(&z, 128);
            int code;
            const char *m;
            size_t ml;
            rc = proto_error_decode(&f, &z, &code, &m, &ml, err);
            if (rc == 0) {
                rc = err_set(err, code, "%s: %.*s", n->connected, (int)ml, m);
                n->refused = code == STRATA_TOO_LARGE || code == STRATA_PROTOCOL_ERROR ||
                             code == STRATA_UNAUTHENTICATED;
            }
            msgpack_zone_destroy(&z);
            return rc;
        }
        if (f.kind != PROTO_RESPONSE)
            return err_set(err, STRATA_PROTOCOL_ERROR, "unexpected frame kind %u", f.kind);
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        struct proto_response r;
        if ((rc = proto_response_decode(&f, &z, &r, err))) {
            msgpack_zone_destroy(&z);
            return rc;
        }
        for (size_t i = 0; i < cnt; i++) {
            if (s[i].done || s[i].id != r.id)
                continue;
            waiting--;
            if (r.code == STRATA_NOT_LEADER || r.code == STRATA_UNAVAILABLE) {
                /* Not executed: safe to send again, to the leader if it is named. */
                if (r.leader && r.leader_len && r.leader_len < sizeof n->leader &&
                    !(strlen(n->connected) == r.leader_len &&
                      memcmp(n->connected, r.leader, r.leader_len) == 0)) {
                    memcpy(n->leader, r.leader, r.leader_len);
                    n->leader[r.leader_len] = '\0';
                    *redirect = true; /* elsewhere: go now; to ourselves: back off */
                }
                err_set(s[i].err, r.code, "%.*s", (int)r.message_len,
                        r.message ? r.message : "");
                s[i].code = r.code;
                break;
            }
            s[i].done = true;
            s[i].code = r.code;
            if (r.code == 0) {
                if (buf_append(s[i].result, r.result, r.result_len))
                    s[i].code = err_set(s[i].err, STRATA_OUT_OF_MEMORY, "out of memory");
            } else {
                err_set(s[i].err, r.code, "%.*s", (int)r.message_len,
                        r.message ? r.message : "");
            }
            break;
        }
        msgpack_zone_destroy(&z);
    }
    return 0;
}

int net_exec_many(struct net *n, const uint8_t *const *cmds, const size_t *lens, size_t cnt,
                  unsigned flags, struct buf *results, int *codes, struct err *errs)
{
    struct slot st[64];
    struct slot *s = cnt <= 64 ? st : sm_calloc(cnt, sizeof *s);
    if (s == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < cnt; i++) {
        enum storage_cmd_kind kind = STORAGE_CMD_READ;
        struct err tmp;
        s[i] = (struct slot){cmds[i], lens[i], false, false, 0, 0, &results[i], &errs[i]};
        if (storage_cmd_kind(cmds[i], lens[i], &kind, &tmp) == 0)
            s[i].write = kind == STORAGE_CMD_WRITE;
        err_clear(&errs[i]);
    }
    unsigned backoff = BACKOFF_MIN_MS;
    struct err cerr;
    err_clear(&cerr);
    int rc = 0;
    n->refused = false;
    /* One deadline for the whole call, retries included. */
    uint64_t deadline = now_ms() + (uint64_t)n->timeout_ms;
    for (int attempt = 0; attempt < RETRIES && now_ms() < deadline && !n->refused; attempt++) {
        bool redirect = false;
        n->call_deadline = deadline;
        rc = ensure_connected(n, &cerr);
        if (rc == 0) {
            rc = round_trip(n, s, cnt, flags, &redirect, &cerr);
            if (rc) {
                /* The connection failed mid-way: sent writes have an unknown fate. */
                for (size_t i = 0; i < cnt; i++)
                    if (!s[i].done && s[i].write && s[i].id) {
                        s[i].done = true;
                        s[i].code = err_set(s[i].err, STRATA_UNKNOWN_OUTCOME,
                                            "connection lost after sending a write: %s",
                                            cerr.msg);
                    }
                net_close(n);
            }
        }
        bool all = true;
        for (size_t i = 0; i < cnt; i++)
            all = all && s[i].done;
        if (all) {
            rc = 0;
            break;
        }
        if (redirect) {
            net_close(n); /* reconnect to the named leader now */
            continue;
        }
        net_close(n);
        if (n->refused)
            break;
        uint64_t now = now_ms();
        if (now + backoff >= deadline)
            break;
        sleep_ms(backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    for (size_t i = 0; i < cnt; i++) {
        if (!s[i].done)
            s[i].code = n->refused || !s[i].code
                            ? err_set(s[i].err, rc ? rc : STRATA_UNAVAILABLE, "%s",
                                      cerr.msg[0] ? cerr.msg : "no server answered")
                            : s[i].code;
        codes[i] = s[i].code;
    }
    if (s != st)
        sm_free(s);
    return 0;
}

void net_set_timeouts(struct net *n, int op_ms, int connect_ms)
{
    if (op_ms > 0)
        n->timeout_ms = op_ms;
    if (connect_ms > 0)
        n->connect_timeout_ms = connect_ms;
}
