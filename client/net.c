/* libstrata's network backend: a blocking client for strata://[KEY@]HOST:PORT,... .
 *
 * Against a sharded cluster it bootstraps from any seed, caches the placement
 * (cluster.placement, kept by route.c), holds one pipelined connection per node (opened
 * lazily) and sends each command straight to its shard's leader with the [shard, epoch]
 * it expects, so no server has to forward it. MOVED makes it re-read the table,
 * NOT_LEADER records the leader it names; both retry within the call's bounded attempts,
 * deadline and backoff. Against a server that has no placement (or with
 * ?routing=server) it keeps one connection to the node believed to lead and lets the
 * servers route. Either way: timeouts, reconnects with backoff, and a write whose
 * answer was lost (connection failed after it was sent, UNKNOWN_OUTCOME from a server) is
 * resent with the same idempotency key (keys.h), which the servers' state machine
 * answers at most once; with ?idempotency=off it ends UNKNOWN_OUTCOME, never resent.
 * Keys go only to servers that say they honor them: a write is keyed, and resent, only
 * while every open connection's WELCOME listed "idem" (docs/protocol.md §4). */
#include "net.h"

#include "keys.h"
#include "proto.h"
#include "route.h"
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

#define RETRIES                                                                                    \
    24 /* with the 200 ms cap: ~4.4 s, more than an election; the call deadline bounds it too */
#define REDIRECTS_AT_ONCE 3 /* per call; later redirects wait the backoff */
#define MOVED_AT_ONCE 8     /* per call: retries at once after MOVED taught a newer table */
#define BACKOFF_MIN_MS 25
#define BACKOFF_MAX_MS 200  /* a new leader is usually known within an election: poll it often */
#define DOWN_MS 1000        /* a node that refused a connect is tried after the others this long */
#define PROBE_RETRY_MS 1000 /* no table yet (cluster starting): ask again after this long */
#define UNKNOWN_REFRESH_MS 100 /* a branch the table lacks re-reads it at most this often */
#define MAX_CONNS (PL_MAX_NODES + NET_MAX_SEEDS)

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

/* ---- The URI ------------------------------------------------------------------------------ */

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

/* "routing=client|server", "idempotency=on|off", '&'-separated. */
static int parse_options(struct net *n, const char *uri, const char *q, struct err *err)
{
    while (*q) {
        size_t l = strcspn(q, "&");
        if (l == 14 && memcmp(q, "routing=client", 14) == 0)
            n->pinned = false;
        else if (l == 14 && memcmp(q, "routing=server", 14) == 0)
            n->pinned = true;
        else if (l == 14 && memcmp(q, "idempotency=on", 14) == 0)
            n->no_keys = false;
        else if (l == 15 && memcmp(q, "idempotency=off", 15) == 0)
            n->no_keys = true;
        else
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "URI '%.*s' has an unknown option '%.*s': expected routing=client, "
                           "routing=server, idempotency=on or idempotency=off",
                           URI_SHOW_MAX, uri, (int)(l > 64 ? 64 : l), q);
        q += l + (q[l] == '&');
    }
    return 0;
}

int net_parse(struct net *n, const char *uri, const char *rest, struct err *err)
{
    memset(n, 0, sizeof *n);
    n->home = -1;
    n->timeout_ms = 10000;
    n->connect_timeout_ms = 2000;
    const char *at = strchr(rest, '@');
    const char *hend = rest + strcspn(rest, "/?");
    if (at && at < hend) {
        if (at == rest || (size_t)(at - rest) >= sizeof n->api_key)
            return err_set(err, STRATA_INVALID_ARGUMENT, "bad API key in the URI");
        memcpy(n->api_key, rest, (size_t)(at - rest));
        n->has_key = true;
        rest = at + 1;
    }
    size_t len = strcspn(rest, "/?");
    const char *tail = rest + len;
    if (*tail == '/')
        tail++;
    if (*tail != '\0' && *tail != '?')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "URI '%.*s' has a path: expected "
                       "strata://HOST[:PORT][,HOST[:PORT]...][?routing=client|server]",
                       URI_SHOW_MAX, uri);
    if (*tail == '?') {
        int rc = parse_options(n, uri, tail + 1, err);
        if (rc)
            return rc;
    }
    const char *p = rest, *end = rest + len;
    do {
        size_t l = strcspn(p, ",/?");
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
    n->mode = n->pinned ? NET_MODE_SINGLE : NET_MODE_PROBE;
    return 0;
}

void net_set_timeouts(struct net *n, int op_ms, int connect_ms)
{
    if (op_ms > 0)
        n->timeout_ms = op_ms;
    if (connect_ms > 0)
        n->connect_timeout_ms = connect_ms;
}

/* ---- One connection --------------------------------------------------------------------- */

static void conn_close(struct net *n, int i)
{
    struct net_conn *c = &n->conns[i];
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    proto_reader_close(&c->rd);
    buf_reset(&c->out);
    c->waiting = 0;
    c->checked = false;
    c->features = 0;
    if (n->home == i)
        n->home = -1;
}

void net_close(struct net *n)
{
    for (size_t i = 0; i < n->nconns; i++) {
        conn_close(n, (int)i);
        buf_close(&n->conns[i].out);
    }
    sm_free(n->conns);
    n->conns = NULL;
    n->nconns = n->cap = 0;
    routing_free(n->rt);
    n->rt = NULL;
}

/* The connection slot for `addr` (created closed if new); -1 when there are too many. */
static int conn_index(struct net *n, const char *addr)
{
    for (size_t i = 0; i < n->nconns; i++)
        if (strcmp(n->conns[i].addr, addr) == 0)
            return (int)i;
    if (n->nconns == MAX_CONNS || strlen(addr) >= NET_ADDR_MAX)
        return -1;
    if (n->nconns == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 4;
        struct net_conn *c = sm_realloc(n->conns, cap * sizeof *c);
        if (c == NULL)
            return -1;
        n->conns = c;
        n->cap = cap;
    }
    struct net_conn *c = &n->conns[n->nconns];
    memset(c, 0, sizeof *c);
    c->fd = -1;
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    buf_init(&c->out);
    return (int)n->nconns++;
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
        if (poll(&pfd, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) ||
            soerr) {
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

static int send_all(struct net *n, struct net_conn *c, const uint8_t *p, size_t len,
                    struct err *err)
{
    uint64_t deadline = wait_deadline(n);
    while (len > 0) {
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            len -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return err_set(err, STRATA_UNAVAILABLE, "send to %s failed: %s", c->addr,
                           strerror(errno));
        struct pollfd pfd = {c->fd, POLLOUT, 0};
        uint64_t now = now_ms();
        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
            return err_set(err, STRATA_TIMEOUT, "send to %s timed out", c->addr);
    }
    return 0;
}

/* Receive what is there (after poll said so): 0, or the connection's failure. */
static int recv_some(struct net *n, struct net_conn *c, struct err *err)
{
    uint8_t tmp[65536];
    ssize_t got = recv(c->fd, tmp, sizeof tmp, 0);
    if (got == 0)
        return err_set(err, STRATA_UNAVAILABLE, "%s closed the connection", c->addr);
    if (got < 0)
        return errno == EAGAIN || errno == EINTR
                   ? 0
                   : err_set(err, STRATA_UNAVAILABLE, "receive from %s failed: %s", c->addr,
                             strerror(errno));
    (void)n;
    if (proto_reader_feed(&c->rd, tmp, (size_t)got))
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    return 0;
}

/* Read until a frame is available on one connection (or the deadline). */
static int next_frame(struct net *n, struct net_conn *c, struct proto_frame *f, uint64_t deadline,
                      struct err *err)
{
    for (;;) {
        int r = proto_reader_next(&c->rd, f, err);
        if (r == 1)
            return 0;
        if (r != 0)
            return r;
        uint64_t now = now_ms();
        struct pollfd pfd = {c->fd, POLLIN, 0};
        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
            return err_set(err, STRATA_TIMEOUT, "no answer from %s within %d ms", c->addr,
                           n->timeout_ms);
        if ((r = recv_some(n, c, err)))
            return r;
    }
}

/* An ERROR frame: the server closes after it. Its code, with `refused` set when trying
 * again cannot help. */
static int error_frame(struct net *n, struct net_conn *c, const struct proto_frame *f,
                       bool handshake, struct err *err)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 128);
    int code;
    const char *m;
    size_t ml;
    int rc = proto_error_decode(f, &z, &code, &m, &ml, err);
    if (rc == 0) {
        rc = err_set(err, code, handshake ? "%s refused the connection: %.*s" : "%s: %.*s", c->addr,
                     (int)ml, m);
        n->refused = handshake
                         ? code == STRATA_UNAUTHENTICATED || code == STRATA_PERMISSION_DENIED ||
                               code == STRATA_PROTOCOL_ERROR
                         : code == STRATA_TOO_LARGE || code == STRATA_PROTOCOL_ERROR ||
                               code == STRATA_UNAUTHENTICATED;
    }
    msgpack_zone_destroy(&z);
    return rc;
}

/* Send one request on connection i and wait for its answer (nothing else is in flight on
 * it). The result is appended to `result`. Returns the answer's code, or the connection's
 * failure with *broken set (the connection is then closed). */
static int call_one(struct net *n, int i, const uint8_t *cmd, size_t len, struct buf *result,
                    bool *broken, struct err *err)
{
    struct net_conn *c = &n->conns[i];
    *broken = true;
    struct buf b;
    buf_init(&b);
    uint64_t id = ++n->next_id;
    int rc = proto_request_append(&b, id, 0, cmd, len);
    if (rc == 0)
        rc = send_all(n, c, b.data, b.len, err);
    buf_close(&b);
    uint64_t deadline = wait_deadline(n);
    while (rc == 0) {
        struct proto_frame f;
        if ((rc = next_frame(n, c, &f, deadline, err)))
            break;
        if (f.kind == PROTO_ERROR) {
            rc = error_frame(n, c, &f, false, err);
            break;
        }
        if (f.kind != PROTO_RESPONSE) {
            rc = err_set(err, STRATA_PROTOCOL_ERROR, "%s: unexpected frame kind %u", c->addr,
                         f.kind);
            break;
        }
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        struct proto_response r;
        if ((rc = proto_response_decode(&f, &z, &r, err)) == 0 && r.id == id) {
            *broken = false;
            if (r.code)
                rc = err_set(err, r.code, "%s: %.*s", c->addr, (int)r.message_len,
                             r.message ? r.message : "");
            else if (buf_append(result, r.result, r.result_len))
                rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
            msgpack_zone_destroy(&z);
            return rc;
        }
        msgpack_zone_destroy(&z);
        /* A stray id (an answer to a request of an abandoned round): skip it. */
    }
    conn_close(n, i);
    return rc;
}

/* session.use {branch?, space?} as this handle last set them: replayed on every new
 * connection, so commands keep their defaults whichever node they go to. */
static int buf_w(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

static int session_cmd(const struct net *n, struct buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_w);
    size_t cnt = 1 + (n->sess_branch[0] != '\0') + (n->sess_space[0] != '\0');
    int rc = msgpack_pack_map(&pk, cnt) || msgpack_pack_str_with_body(&pk, "op", 2) ||
             msgpack_pack_str_with_body(&pk, "session.use", 11);
    if (rc == 0 && n->sess_branch[0])
        rc = msgpack_pack_str_with_body(&pk, "branch", 6) ||
             msgpack_pack_str_with_body(&pk, n->sess_branch, strlen(n->sess_branch));
    if (rc == 0 && n->sess_space[0])
        rc = msgpack_pack_str_with_body(&pk, "space", 5) ||
             msgpack_pack_str_with_body(&pk, n->sess_space, strlen(n->sess_space));
    return rc ? STRATA_OUT_OF_MEMORY : 0;
}

/* Connect to conns[i] and complete the handshake (and replay the session). */
static int conn_open(struct net *n, int i, struct err *err)
{
    conn_close(n, i);
    struct net_conn *c = &n->conns[i];
    int fd = dial(c->addr, n->connect_timeout_ms, err);
    if (fd < 0) {
        c->down_until = now_ms() + DOWN_MS;
        return -fd;
    }
    c->fd = fd;
    proto_reader_init(&c->rd, PROTO_MAX_FRAME_DEFAULT);
    struct buf b;
    buf_init(&b);
    struct proto_hello h = {PROTO_VERSION,
                            PROTO_VERSION,
                            "libstrata",
                            9,
                            n->has_key ? n->api_key : NULL,
                            n->has_key ? strlen(n->api_key) : 0};
    int rc = proto_hello_append(&b, &h);
    if (rc == 0)
        rc = send_all(n, c, b.data, b.len, err);
    buf_close(&b);
    struct proto_frame f;
    if (rc == 0)
        rc = next_frame(n, c, &f, wait_deadline(n), err);
    if (rc == 0) {
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        struct proto_welcome w;
        if (f.kind == PROTO_ERROR)
            rc = error_frame(n, c, &f, true, err);
        else if (f.kind != PROTO_WELCOME)
            rc = err_set(err, STRATA_PROTOCOL_ERROR, "%s did not answer HELLO with WELCOME",
                         c->addr);
        else if ((rc = proto_welcome_decode_features(&f, &z, &w, &c->features, err)) == 0) {
            c->node_id = w.node_id;
            /* Every node the handle talks to must belong to one cluster. */
            if (n->cluster_id[0] == '\0' && w.cluster_id_len < sizeof n->cluster_id)
                snprintf(n->cluster_id, sizeof n->cluster_id, "%.*s", (int)w.cluster_id_len,
                         w.cluster_id);
            else if (n->cluster_id[0] != '\0' &&
                     (strlen(n->cluster_id) != w.cluster_id_len ||
                      memcmp(n->cluster_id, w.cluster_id, w.cluster_id_len) != 0))
                rc = err_set(err, STRATA_UNAVAILABLE,
                             "%s belongs to cluster '%.*s', not '%s' like the nodes before it",
                             c->addr, (int)(w.cluster_id_len > 64 ? 64 : w.cluster_id_len),
                             w.cluster_id, n->cluster_id);
            if (rc == 0 && n->mode != NET_MODE_ROUTED && w.leader &&
                w.leader_len < sizeof n->leader && n->leader[0] == '\0') {
                memcpy(n->leader, w.leader, w.leader_len);
                n->leader[w.leader_len] = '\0';
            }
        }
        msgpack_zone_destroy(&z);
    }
    if (rc == 0 && (n->sess_branch[0] || n->sess_space[0])) {
        struct buf cmd, res;
        buf_init(&cmd);
        buf_init(&res);
        bool broken;
        rc = session_cmd(n, &cmd);
        if (rc == 0)
            rc = call_one(n, i, cmd.data, cmd.len, &res, &broken, err);
        buf_close(&cmd);
        buf_close(&res);
    }
    if (rc) {
        conn_close(n, i);
        c->down_until = now_ms() + DOWN_MS;
    } else {
        c->down_until = 0;
        c->checked = true;
    }
    return rc;
}

/* Is connection i open and not closed by its server? An idle connection the server
 * closed is found out before anything is sent on it, so no write is lost to it. */
static bool conn_alive(struct net *n, int i)
{
    struct net_conn *c = &n->conns[i];
    if (c->fd < 0)
        return false;
    if (c->checked)
        return true; /* once per round: requests may already be queued on it */
    uint8_t b;
    ssize_t r = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        conn_close(n, i);
        return false;
    }
    c->checked = true;
    return true;
}

/* Connection i open, opening it if needed. */
static int conn_ready(struct net *n, int i, struct err *err)
{
    return conn_alive(n, i) ? 0 : conn_open(n, i, err);
}

/* Try to make `addr` the home connection. */
static int home_try(struct net *n, const char *addr, struct err *err)
{
    int i = conn_index(n, addr);
    if (i < 0)
        return err_set(err, STRATA_UNAVAILABLE, "too many connections to open %s", addr);
    int rc = conn_ready(n, i, err);
    if (rc == 0)
        n->home = i;
    return rc;
}

/* The home connection: where commands without a branch go, and the one connection of
 * PROBE/SINGLE mode. It is kept while it lives; otherwise (ROUTED) another open
 * connection, else the leader named last (PROBE/SINGLE), else each seed in turn, else
 * (ROUTED) each node of the table. Returns its index, or -1 with err set. */
static int home_conn(struct net *n, struct err *err)
{
    if (n->home >= 0 && conn_alive(n, n->home))
        return n->home;
    n->home = -1;
    int rc = STRATA_UNAVAILABLE;
    err_set(err, rc, "no server answered");
    if (n->mode == NET_MODE_ROUTED)
        for (size_t i = 0; i < n->nconns; i++)
            if (conn_alive(n, (int)i))
                return n->home = (int)i;
    if (n->mode != NET_MODE_ROUTED && n->leader[0]) {
        if ((rc = home_try(n, n->leader, err)) == 0)
            return n->home;
        if (n->refused)
            return -1;
        n->leader[0] = '\0';
    }
    for (size_t i = 0; i < n->nseeds; i++) {
        size_t k = (n->next_seed + i) % n->nseeds;
        if ((rc = home_try(n, n->seeds[k], err)) == 0) {
            n->next_seed = k + 1;
            return n->home;
        }
        if (n->refused)
            return -1;
    }
    for (size_t i = 0; n->mode == NET_MODE_ROUTED && i < n->rt->pl.nnodes; i++) {
        if ((rc = home_try(n, n->rt->pl.nodes[i].address, err)) == 0)
            return n->home;
        if (n->refused)
            return -1;
    }
    return -1;
}

/* ---- The placement --------------------------------------------------------------------- */

/* {"op":"cluster.placement","fresh":true|false} */
static const uint8_t placement_cmd[2][29] = {
    {0x82, 0xa2, 'o', 'p', 0xb1, 'c', 'l', 'u',  's', 't', 'e', 'r', '.', 'p', 'l',
     'a',  'c',  'e', 'm', 'e',  'n', 't', 0xa5, 'f', 'r', 'e', 's', 'h', 0xc2},
    {0x82, 0xa2, 'o', 'p', 0xb1, 'c', 'l', 'u',  's', 't', 'e', 'r', '.', 'p', 'l',
     'a',  'c',  'e', 'm', 'e',  'n', 't', 0xa5, 'f', 'r', 'e', 's', 'h', 0xc3},
};

/* Read the placement through the home connection; `fresh` asks the node for a
 * linearizable read from the meta leader. 0 when a table was adopted. *no_conn is set
 * when no server could be reached at all. */
static int fetch_placement_on(struct net *n, int conn, bool fresh, bool *no_conn,
                              struct err *err)
{
    *no_conn = false;
    for (size_t i = 0; i < n->nconns; i++)
        n->conns[i].checked = false;
    n->refreshed_ms = now_ms();
    int h = conn >= 0 && conn_alive(n, conn) ? conn : home_conn(n, err);
    if (h < 0) {
        *no_conn = true;
        return err->code ? err->code : STRATA_UNAVAILABLE;
    }
    struct buf res;
    buf_init(&res);
    bool broken;
    int rc = call_one(n, h, placement_cmd[fresh], sizeof placement_cmd[fresh], &res, &broken, err);
    if (rc == 0 && n->rt == NULL && (n->rt = routing_new()) == NULL)
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    if (rc == 0)
        rc = routing_update(n->rt, res.data, res.len, err);
    buf_close(&res);
    if (rc == 0)
        n->dirty = false;
    return rc;
}

static int fetch_placement(struct net *n, bool fresh, bool *no_conn, struct err *err)
{
    return fetch_placement_on(n, -1, fresh, no_conn, err);
}

/* After MOVED: re-read the table, first (without a linearizable read) from the node that
 * answered MOVED — a router answers it only once its own table places the branch
 * elsewhere, so that copy is new enough and costs no round in the meta group — then,
 * if that taught nothing newer, freshly through the home connection (a MOVED from a
 * fenced shard whose router gave up waiting). Returns whether the epoch advanced. */
static bool moved_refresh(struct net *n)
{
    uint64_t before = n->rt->pl.epoch;
    bool no_conn;
    struct err e;
    n->stale = false;
    if (n->moved_conn >= 0 && (size_t)n->moved_conn < n->nconns)
        fetch_placement_on(n, n->moved_conn, false, &no_conn, &e);
    n->moved_conn = -1;
    if (n->rt->pl.epoch == before && !n->refused &&
        fetch_placement(n, true, &no_conn, &e) != 0 && !n->refused)
        n->stale = true; /* no table read at all: the next attempt tries again */
    return n->rt->pl.epoch > before;
}

/* Before each attempt: find out whether the servers are sharded (PROBE), or re-read a
 * table that may be behind (ROUTED). Returns 0, or a code when no server could be
 * reached or the handshake was refused (the attempt then fails as a whole). */
static int prepare(struct net *n, struct err *err)
{
    bool no_conn = false;
    int rc = 0;
    if (n->mode == NET_MODE_PROBE && now_ms() >= n->probe_after) {
        rc = fetch_placement(n, false, &no_conn, err);
        if (rc == 0) {
            n->mode = NET_MODE_ROUTED;
            n->leader[0] = '\0';
        } else if (no_conn || n->refused || rc == STRATA_UNAVAILABLE || rc == STRATA_NOT_LEADER ||
                   rc == STRATA_TIMEOUT || rc == STRATA_OUT_OF_MEMORY) {
            /* Not known yet (a starting cluster, a lost connection): the servers route
             * meanwhile, and the next call after PROBE_RETRY_MS asks again. */
            n->probe_after = now_ms() + PROBE_RETRY_MS;
        } else {
            /* A server without placement (unknown command) or with a table this client
             * cannot read: let the servers route, for good. */
            n->mode = NET_MODE_SINGLE;
        }
    } else if (n->mode == NET_MODE_ROUTED && n->stale) {
        n->stale = false;
        rc = fetch_placement(n, true, &no_conn, err); /* on failure the old table stays */
    }
    return no_conn || n->refused ? rc : 0;
}

/* ---- A round: every unfinished command sent, every answer read ---------------------------- */

struct slot {
    const uint8_t *cmd;
    size_t len;
    bool write;
    bool done;
    bool sent;       /* on a connection in this round, not answered yet */
    bool routed;     /* sent with [shard, epoch] to a node chosen by the table */
    bool nf_retried; /* BRANCH_NOT_FOUND from a routed send was retried once already */
    bool keyable;    /* a write that may carry a key (numbered): keyed if the nodes allow */
    bool keyed;      /* sent with an idempotency key: resent when its answer is lost */
    bool sent_once;  /* sent at least once: later sends are retries */
    bool lost;       /* an answer to it was lost: it may have been applied */
    uint64_t seq;    /* its key's seq */
    struct keys_cmd kc;
    struct buf kbuf; /* the keyed bytes of the current send */
    struct route_pick pick;
    int conn;
    int code;
    struct buf *result;
    struct err *err;
};

/* The connection for slot s in this round (opening it if needed), or -1 with err set. */
static int slot_target(struct net *n, struct slot *s, unsigned flags, struct err *err)
{
    s->routed = false;
    if (n->mode != NET_MODE_ROUTED || s->pick.kind != ROUTE_SHARD)
        return home_conn(n, err);
    uint64_t ids[PL_MAX_REPLICAS + 2];
    uint64_t near = n->home >= 0 ? n->conns[n->home].node_id : 0;
    bool stale = !s->write && (flags & PROTO_REQ_STALE);
    size_t k =
        routing_candidates(n->rt, s->pick.shard, stale, near, ids, sizeof ids / sizeof ids[0]);
    uint64_t now = now_ms();
    /* Nodes that failed a connect a moment ago go last: in a second pass, so a shard
     * whose every replica looks down still gets its best try. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t j = 0; j < k; j++) {
            const char *addr = routing_address(n->rt, ids[j]);
            int i = addr ? conn_index(n, addr) : -1;
            if (i < 0 || (pass == 0) != (n->conns[i].fd >= 0 || n->conns[i].down_until <= now))
                continue;
            if (conn_ready(n, i, err) == 0) {
                s->routed = true;
                return i;
            }
            if (n->refused)
                return -1;
            n->stale = true; /* a replica is unreachable: leaderships may have moved */
        }
    }
    return home_conn(n, err);
}

/* Connection i broke during the round: its unanswered writes have an unknown fate; its
 * reads will be sent again. */
static void conn_fail(struct net *n, int i, struct slot *s, size_t cnt, const struct err *why)
{
    for (size_t k = 0; k < cnt; k++) {
        if (!s[k].sent || s[k].conn != i)
            continue;
        s[k].sent = false;
        if (s[k].write) {
            /* A keyed write goes again with the same key (the code stays if the call ends
             * first); one without a key could be applied twice, so it ends here. */
            s[k].done = !s[k].keyed;
            s[k].lost = true;
            s[k].code = err_set(s[k].err, STRATA_UNKNOWN_OUTCOME,
                                "connection lost after sending a write: %s", why->msg);
        } else {
            s[k].code = err_set(s[k].err, why->code, "%s", why->msg);
        }
    }
    conn_close(n, i);
    n->conns[i].down_until = now_ms() + DOWN_MS;
    if (n->mode == NET_MODE_ROUTED)
        n->stale = true;
}

/* May a write on connection ci carry a key, or be resent? Only while every open
 * connection — ci's included — listed "idem" in its WELCOME: a node that does not would
 * execute a resend as a second write, and one such node in sight means a cluster of mixed
 * versions (a rolling upgrade), where the shard's leader may be one (docs/protocol.md §4,
 * what "idem" guarantees). */
static bool keys_usable(struct net *n, int ci)
{
    const struct net_conn *old = (n->conns[ci].features & PROTO_FEAT_IDEM) ? NULL : &n->conns[ci];
    for (size_t i = 0; i < n->nconns && old == NULL; i++)
        if (n->conns[i].fd >= 0 && !(n->conns[i].features & PROTO_FEAT_IDEM))
            old = &n->conns[i];
    if (old != NULL && !n->warned_unkeyed) {
        n->warned_unkeyed = true;
        log_warn("libstrata: %s does not list idempotency keys in its handshake (an older "
                 "server): writes go without keys and are not resent while it is connected",
                 old->addr);
    }
    return old == NULL;
}

/* Does `hint` (len bytes) name connection i's own address? */
static bool is_addr(const struct net_conn *c, const char *hint, size_t len)
{
    return strlen(c->addr) == len && memcmp(c->addr, hint, len) == 0;
}

/* One answer on connection i. *redirect: retry at once (a leader was named, the table
 * will be re-read). */
static void on_response(struct net *n, int i, const struct proto_response *r, struct slot *s,
                        size_t cnt, uint64_t base, bool *redirect, bool *session_changed)
{
    if (r->id < base || r->id - base >= cnt)
        return; /* not this round's */
    struct slot *sl = &s[r->id - base];
    if (!sl->sent || sl->conn != i)
        return;
    sl->sent = false;
    n->conns[i].waiting--;
    const char *msg = r->message ? r->message : "";
    /* UNKNOWN_OUTCOME (leadership lost after the append, a forwarding link broken): a
     * keyed write is simply sent again; its key makes that safe. */
    bool not_run = r->code == STRATA_NOT_LEADER || r->code == STRATA_UNAVAILABLE ||
                   (r->code == STRATA_MOVED && sl->routed) ||
                   (r->code == STRATA_UNKNOWN_OUTCOME && sl->keyed);
    if (r->code == STRATA_BRANCH_NOT_FOUND && sl->routed && !sl->nf_retried) {
        /* The table said the branch exists: it may have been deleted and made again on
         * another shard. Re-read and try once more; a second answer is final. */
        sl->nf_retried = true;
        not_run = true;
    }
    if (not_run) {
        if (r->code == STRATA_UNKNOWN_OUTCOME)
            sl->lost = true;
        if (n->moved_ms || r->code == STRATA_MOVED)
            log_debug("net: %s from %s: %.*s (%llu ms since the first MOVED)", err_name(r->code),
                      n->conns[i].addr, (int)r->message_len, msg,
                      (unsigned long long)(n->moved_ms ? now_ms() - n->moved_ms : 0));
        sl->code = err_set(sl->err, r->code, "%.*s", (int)r->message_len, msg);
        bool named = r->leader && r->leader_len && r->leader_len < NET_ADDR_MAX &&
                     !is_addr(&n->conns[i], r->leader, r->leader_len);
        if (r->code == STRATA_MOVED || r->code == STRATA_BRANCH_NOT_FOUND) {
            /* The table moved on (or is about to): moved_refresh re-reads it, first from
             * the node that answered — it judged by a table at least as new as ours —
             * and the call goes again at once when that taught a newer one. */
            n->stale = true;
            n->moved_conn = i;
            if (!n->moved)
                n->moved_ms = now_ms();
            n->moved = true;
        } else if (sl->routed) {
            if (named && routing_set_leader(n->rt, sl->pick.shard, r->leader, r->leader_len)) {
                *redirect = true;
            } else {
                /* No leader named, or one the table does not know: ask again later. */
                if (sl->pick.shard <= PL_MAX_SHARDS)
                    n->rt->leader[sl->pick.shard] = 0;
                n->stale = true;
            }
        } else if (n->mode != NET_MODE_ROUTED && named) {
            memcpy(n->leader, r->leader, r->leader_len);
            n->leader[r->leader_len] = '\0';
            *redirect = true; /* elsewhere: go now; to ourselves: back off */
        }
        return;
    }
    sl->done = true;
    sl->code = r->code;
    err_clear(sl->err); /* a resent write's earlier loss is no longer the story */
    if (r->code == STRATA_OUTCOME_FORGOTTEN) {
        /* A resend the server has no record of: the first attempt may have been applied.
         * To the program that is an unknown outcome (docs/client.md §5). */
        sl->code = err_set(sl->err, STRATA_UNKNOWN_OUTCOME,
                           "the server no longer remembers the outcome of this resent write "
                           "(it may have been applied): %.*s",
                           (int)r->message_len, msg);
        return;
    }
    if (r->code) {
        err_set(sl->err, r->code, "%.*s", (int)r->message_len, msg);
        return;
    }
    if (buf_append(sl->result, r->result, r->result_len)) {
        sl->code = err_set(sl->err, STRATA_OUT_OF_MEMORY, "out of memory");
        return;
    }
    if (sl->pick.names_change)
        n->dirty = true;
    if (sl->pick.session_use) {
        routing_session_args(sl->cmd, sl->len, n->sess_branch, sizeof n->sess_branch, n->sess_space,
                             sizeof n->sess_space);
        *session_changed = true;
    }
}

/* Every frame buffered on connection i. 0, or the connection's failure. */
static int drain(struct net *n, int i, struct slot *s, size_t cnt, uint64_t base, bool *redirect,
                 bool *session_changed, struct err *err)
{
    for (;;) {
        struct net_conn *c = &n->conns[i];
        struct proto_frame f;
        int r = proto_reader_next(&c->rd, &f, err);
        if (r == 0)
            return 0;
        if (r != 1)
            return r;
        if (f.kind == PROTO_ERROR)
            return error_frame(n, c, &f, false, err);
        if (f.kind != PROTO_RESPONSE)
            return err_set(err, STRATA_PROTOCOL_ERROR, "%s: unexpected frame kind %u", c->addr,
                           f.kind);
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        struct proto_response resp;
        int rc = proto_response_decode(&f, &z, &resp, err);
        if (rc == 0)
            on_response(n, i, &resp, s, cnt, base, redirect, session_changed);
        msgpack_zone_destroy(&z);
        if (rc)
            return rc;
    }
}

/* Send every unfinished command to its node, then read until each is answered, its
 * connection failed, or the wait's deadline passed. `cerr` keeps the last
 * connection-level failure. */
static void round_trip(struct net *n, struct slot *s, size_t cnt, unsigned flags, bool *redirect,
                       struct err *cerr)
{
    uint64_t base = n->next_id + 1;
    n->next_id += cnt;
    bool session_changed = false;
    for (size_t i = 0; i < cnt; i++)
        s[i].sent = false;
    for (size_t i = 0; i < n->nconns; i++) {
        n->conns[i].checked = false;
        n->conns[i].waiting = 0;
        buf_reset(&n->conns[i].out);
    }
    if (n->mode == NET_MODE_ROUTED) {
        bool unknown = false;
        for (size_t i = 0; i < cnt; i++) {
            if (s[i].done)
                continue;
            routing_decide(n->rt, s[i].cmd, s[i].len, n->sess_branch, &s[i].pick);
            unknown = unknown || s[i].pick.unknown;
        }
        /* A branch the table does not know was probably made a moment ago: re-read once
         * (rate-limited, unless this handle made or removed one since), then route. */
        bool no_conn;
        struct err e;
        if (unknown && (n->dirty || now_ms() >= n->refreshed_ms + UNKNOWN_REFRESH_MS) &&
            fetch_placement(n, true, &no_conn, &e) == 0)
            for (size_t i = 0; i < cnt; i++)
                if (!s[i].done)
                    routing_decide(n->rt, s[i].cmd, s[i].len, n->sess_branch, &s[i].pick);
        if (n->refused)
            return;
    } else {
        for (size_t i = 0; i < cnt; i++)
            if (!s[i].done)
                routing_decide(NULL, s[i].cmd, s[i].len, n->sess_branch, &s[i].pick);
    }
    for (size_t i = 0; i < cnt; i++) {
        if (s[i].done)
            continue;
        int ci = slot_target(n, &s[i], flags, cerr);
        if (ci < 0) {
            if (n->refused)
                return;
            err_set(s[i].err, cerr->code, "%s", cerr->msg);
            s[i].code = cerr->code;
            continue;
        }
        struct proto_route rt = {s[i].routed, s[i].pick.shard, s[i].routed ? n->rt->pl.epoch : 0};
        /* A node that does not lead the shard named in the route answers NOT_LEADER with
         * the leader instead of relaying it: that is how the client learns where
         * leadership went (docs/protocol.md §5). */
        uint32_t f = (uint32_t)flags;
        const uint8_t *cmd = s[i].cmd;
        size_t len = s[i].len;
        /* Keyed or not is decided at the first send, by the nodes connected then; a
         * resend needs them to honor keys still (keys_usable). */
        bool usable = s[i].keyable && keys_usable(n, ci);
        if (!s[i].sent_once) {
            s[i].keyed = usable;
        } else if (s[i].keyed && !usable) {
            if (s[i].lost) {
                char m[ERR_MSG_MAX];
                snprintf(m, sizeof m, "%s", s[i].err->msg);
                s[i].done = true;
                s[i].code = err_set(s[i].err, STRATA_UNKNOWN_OUTCOME,
                                    "a write's answer was lost and it is not resent (a "
                                    "connected node does not honor idempotency keys): %s",
                                    m);
                continue;
            }
            s[i].keyed = false; /* never executed (NOT_LEADER, ...): bare from now on */
        }
        if (s[i].keyed) {
            if (keys_wrap(s[i].cmd, s[i].len, &s[i].kc, n->client_id, s[i].seq, n->call_ack,
                          s[i].sent_once, &s[i].kbuf)) {
                s[i].code = err_set(s[i].err, STRATA_OUT_OF_MEMORY, "out of memory");
                continue;
            }
            cmd = s[i].kbuf.data;
            len = s[i].kbuf.len;
        }
        if (proto_request_append_routed(&n->conns[ci].out, base + i, f, cmd, len, &rt)) {
            s[i].code = err_set(s[i].err, STRATA_OUT_OF_MEMORY, "out of memory");
            continue;
        }
        s[i].sent_once = true;
        s[i].conn = ci;
        s[i].sent = true;
        n->conns[ci].waiting++;
    }
    for (size_t i = 0; i < n->nconns; i++) {
        struct net_conn *c = &n->conns[i];
        if (c->out.len == 0 || c->fd < 0)
            continue;
        struct err e;
        if (send_all(n, c, c->out.data, c->out.len, &e)) {
            *cerr = e;
            conn_fail(n, (int)i, s, cnt, &e);
        }
        buf_reset(&c->out);
    }
    uint64_t deadline = wait_deadline(n);
    struct pollfd pfd[MAX_CONNS];
    int idx[MAX_CONNS];
    for (;;) {
        nfds_t k = 0;
        for (size_t i = 0; i < n->nconns; i++)
            if (n->conns[i].waiting > 0 && n->conns[i].fd >= 0) {
                pfd[k] = (struct pollfd){n->conns[i].fd, POLLIN, 0};
                idx[k++] = (int)i;
            }
        if (k == 0)
            break;
        uint64_t now = now_ms();
        int pr = now >= deadline ? 0 : poll(pfd, k, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            for (nfds_t j = 0; j < k; j++) {
                struct err e;
                err_set(&e, STRATA_TIMEOUT, "no answer from %s within %d ms", n->conns[idx[j]].addr,
                        n->timeout_ms);
                *cerr = e;
                conn_fail(n, idx[j], s, cnt, &e);
            }
            break;
        }
        for (nfds_t j = 0; j < k; j++) {
            if (pfd[j].revents == 0)
                continue;
            struct err e;
            int rc = recv_some(n, &n->conns[idx[j]], &e);
            if (rc == 0)
                rc = drain(n, idx[j], s, cnt, base, redirect, &session_changed, &e);
            if (rc) {
                *cerr = e;
                conn_fail(n, idx[j], s, cnt, &e);
            }
        }
    }
    if (session_changed)
        /* The other connections still have the old defaults: reopened, they get the
         * new ones. */
        for (size_t i = 0; i < n->nconns; i++)
            if ((int)i != n->home)
                conn_close(n, (int)i);
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
        s[i] = (struct slot){
            .cmd = cmds[i], .len = lens[i], .conn = -1, .result = &results[i], .err = &errs[i]};
        if (storage_cmd_kind(cmds[i], lens[i], &kind, &tmp) == 0)
            s[i].write = kind == STORAGE_CMD_WRITE;
        err_clear(&errs[i]);
        if (s[i].write && !n->no_keys && !n->have_id) {
            /* Without a client id the writes go without keys, as with idempotency=off. */
            n->have_id = keys_client_id(n->client_id, &tmp) == 0;
            if (!n->have_id)
                log_warn("libstrata: %s; writes are sent without idempotency keys", tmp.msg);
        }
        if (s[i].write && !n->no_keys && n->have_id) {
            keys_inspect(cmds[i], lens[i], &s[i].kc);
            s[i].keyable = s[i].kc.ok;
        }
    }
    /* Number this call's keyed writes. Every lower seq belongs to an earlier call, which
     * has returned: those are acknowledged, and the servers may forget their answers. */
    n->call_ack = n->last_seq + 1;
    for (size_t i = 0; i < cnt; i++)
        if (s[i].keyable)
            s[i].seq = ++n->last_seq;
    unsigned backoff = BACKOFF_MIN_MS, redirects = 0, moved_now = 0, reads_after_moved = 0;
    struct err cerr;
    err_clear(&cerr);
    n->refused = false;
    n->moved = false;
    n->moved_ms = 0;
    n->moved_conn = -1;
    /* One deadline for the whole call, retries included. */
    uint64_t deadline = now_ms() + (uint64_t)n->timeout_ms;
    n->call_deadline = deadline;
    for (int attempt = 0; attempt < RETRIES && now_ms() < deadline && !n->refused; attempt++) {
        bool redirect = false;
        if (prepare(n, &cerr) == 0)
            round_trip(n, s, cnt, flags, &redirect, &cerr);
        bool all = true;
        for (size_t i = 0; i < cnt; i++)
            all = all && s[i].done;
        if (all || n->refused)
            break;
        if (n->mode != NET_MODE_ROUTED && n->home >= 0)
            /* One connection: reconnect, to the named leader if there is one, else to
             * the next seed (the one we had may be cut off from the cluster). */
            conn_close(n, n->home);
        /* The branch moved and the table says where to: go there now, not after a
         * backoff (a moved branch is usually writable on its new shard already). The
         * epoch only grows, and the tries are counted, so this cannot spin. */
        if (n->mode == NET_MODE_ROUTED && n->moved_conn >= 0 && n->rt) {
            reads_after_moved++;
            if (moved_refresh(n) && ++moved_now <= MOVED_AT_ONCE)
                continue;
        }
        /* A named leader is tried at once, but only a few times per call: during an
         * election nodes may name each other with stale hints, and an unpaced ping-pong
         * would spend every attempt in milliseconds. */
        if (redirect && ++redirects <= REDIRECTS_AT_ONCE)
            continue;
        uint64_t now = now_ms();
        if (now + backoff >= deadline)
            break;
        sleep_ms(backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    n->call_deadline = 0;
    bool all_ok = true;
    for (size_t i = 0; i < cnt; i++) {
        if (!s[i].done && s[i].lost && s[i].code != STRATA_UNKNOWN_OUTCOME) {
            /* A keyed write whose answer was lost and whose resends got no real answer
             * (NOT_LEADER, no connection, ...) may still have been applied. */
            char m[ERR_MSG_MAX];
            snprintf(m, sizeof m, "%s", s[i].err->msg);
            s[i].code = err_set(s[i].err, STRATA_UNKNOWN_OUTCOME,
                                "a write's answer was lost and resending it got none: %s", m);
        } else if (!s[i].done && !s[i].lost && (n->refused || !s[i].code)) {
            s[i].code = err_set(s[i].err, cerr.code ? cerr.code : STRATA_UNAVAILABLE, "%s",
                                cerr.msg[0] ? cerr.msg : "no server answered");
        }
        codes[i] = s[i].code;
        all_ok = all_ok && s[i].code == 0;
    }
    if (n->moved_ms)
        log_debug("net: %s %llu ms after the first MOVED (%u table reads, at %llu ms)",
                  all_ok ? "answered" : "failed", (unsigned long long)(now_ms() - n->moved_ms),
                  reads_after_moved, (unsigned long long)now_ms());
    for (size_t i = 0; i < cnt; i++)
        buf_close(&s[i].kbuf);
    if (s != st)
        sm_free(s);
    return 0;
}
