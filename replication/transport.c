/* A raft_uv_transport over the node's single port (transport.h): connect() writes the
 * peer preamble before raft sees the stream, listen() only records raft's accept
 * callback, and the node's acceptor feeds streams in through transport_accept(). */
#include "transport.h"

#include "proto.h"

#include <stdlib.h>
#include <string.h>

struct tp;

/* One outgoing connection attempt. The TCP handle is raft_malloc'ed because on success
 * it is handed to raft, which releases it with raft_free; the timer lives in here.
 *
 *   RESOLVING -> CONNECTING -> WRITING -> (success: stream to raft) -> DONE
 *        \____________\____________\_____ (error, timeout, close) -> FAILED -> DONE
 * The attempt is freed once its handles are closed and no getaddrinfo is pending. */
struct pconnect {
    struct tp *t;
    struct pconnect *prev, *next;
    struct raft_uv_connect *req;
    uint64_t id;
    char address[PROTO_ADDRESS_MAX + 1];
    uv_tcp_t *tcp; /* NULL once handed to raft or closed */
    uv_timer_t timer;
    uv_connect_t conn;
    uv_write_t write;
    uv_getaddrinfo_t gai;
    uint8_t preamble[PROTO_PEER_FIXED + PROTO_ADDRESS_MAX];
    size_t preamble_len;
    int handles;    /* our open handles (timer, tcp) */
    bool resolving; /* a getaddrinfo request is pending */
    bool finished;  /* outcome decided (raft's cb called or to be called with status) */
    int status;     /* RAFT_* for raft's connect callback on failure */
};

struct peer_state {
    uint64_t id;
    int up; /* -1 unknown, 0 down, 1 up */
};

struct tp {
    uv_loop_t *loop;
    struct raft_uv_transport *t;
    uint32_t group;
    uint64_t id;
    char address[PROTO_ADDRESS_MAX + 1];
    bool have_bind;
    struct sockaddr_storage bind_addr;
    unsigned connect_timeout_ms;
    raft_uv_accept_cb accept_cb;
    struct pconnect *connects; /* attempts not yet freed */
    bool closing;
    raft_uv_transport_close_cb close_cb;
    transport_peer_cb on_peer;
    void *peer_arg;
    struct peer_state *peers;
    size_t npeers;
};

int transport_split_address(const char *address, char *host, size_t host_cap, char *port,
                            size_t port_cap)
{
    const char *colon;
    const char *h = address;
    size_t hlen;
    if (address[0] == '[') {
        const char *close = strchr(address, ']');
        if (close == NULL || close[1] != ':')
            return STRATA_INVALID_ARGUMENT;
        h = address + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(address, ':');
        if (colon == NULL)
            return STRATA_INVALID_ARGUMENT;
        hlen = (size_t)(colon - address);
    }
    size_t plen = strlen(colon + 1);
    if (hlen == 0 || hlen >= host_cap || plen == 0 || plen >= port_cap)
        return STRATA_INVALID_ARGUMENT;
    for (size_t i = 0; i < plen; i++)
        if (colon[1 + i] < '0' || colon[1 + i] > '9')
            return STRATA_INVALID_ARGUMENT;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen + 1);
    return 0;
}

static void report_peer(struct tp *tp, uint64_t id, const char *address, bool up)
{
    struct peer_state *ps = NULL;
    for (size_t i = 0; i < tp->npeers; i++)
        if (tp->peers[i].id == id)
            ps = &tp->peers[i];
    if (ps == NULL) {
        struct peer_state *np = sm_realloc(tp->peers, (tp->npeers + 1) * sizeof *np);
        if (np == NULL)
            return; /* events are best effort */
        tp->peers = np;
        ps = &np[tp->npeers++];
        ps->id = id;
        ps->up = -1;
    }
    if (ps->up == (up ? 1 : 0))
        return;
    ps->up = up ? 1 : 0;
    if (tp->on_peer != NULL && !tp->closing)
        tp->on_peer(tp->peer_arg, up, id, address);
}

static void maybe_fire_close(struct tp *tp)
{
    if (tp->closing && tp->connects == NULL && tp->close_cb != NULL) {
        raft_uv_transport_close_cb cb = tp->close_cb;
        tp->close_cb = NULL;
        cb(tp->t);
    }
}

/* Free the attempt once nothing of it is pending; report failure to raft first. */
static void pc_maybe_free(struct pconnect *pc)
{
    if (pc->handles > 0 || pc->resolving)
        return;
    struct tp *tp = pc->t;
    if (pc->prev != NULL)
        pc->prev->next = pc->next;
    else
        tp->connects = pc->next;
    if (pc->next != NULL)
        pc->next->prev = pc->prev;
    if (pc->status != 0)
        pc->req->cb(pc->req, NULL, pc->status);
    sm_free(pc);
    maybe_fire_close(tp);
}

static void pc_timer_closed(uv_handle_t *h)
{
    struct pconnect *pc = h->data;
    pc->handles--;
    pc_maybe_free(pc);
}

static void pc_tcp_closed(uv_handle_t *h)
{
    struct pconnect *pc = h->data;
    raft_free(h);
    pc->handles--;
    pc_maybe_free(pc);
}

static void pc_fail(struct pconnect *pc, int status, const char *why, int uverr)
{
    if (pc->finished)
        return;
    pc->finished = true;
    pc->status = status;
    if (status == RAFT_NOCONNECTION) {
        log_debug("raft peer %llu (%s): connection failed: %s%s%s", (unsigned long long)pc->id,
                  pc->address, why, uverr ? ": " : "", uverr ? uv_strerror(uverr) : "");
        report_peer(pc->t, pc->id, pc->address, false);
    }
    if (pc->resolving)
        uv_cancel((uv_req_t *)&pc->gai);
    if (pc->tcp != NULL) {
        uv_close((uv_handle_t *)pc->tcp, pc_tcp_closed);
        pc->tcp = NULL;
    }
    uv_close((uv_handle_t *)&pc->timer, pc_timer_closed);
}

static void pc_write_cb(uv_write_t *w, int status)
{
    struct pconnect *pc = w->data;
    if (pc->finished)
        return; /* closed under us: the handle close finishes the attempt */
    if (status != 0) {
        pc_fail(pc, RAFT_NOCONNECTION, "write preamble", status);
        return;
    }
    /* Success: the stream now belongs to raft, which frees it with raft_free. */
    pc->finished = true;
    uv_stream_t *stream = (uv_stream_t *)pc->tcp;
    pc->tcp = NULL;
    pc->handles--;
    report_peer(pc->t, pc->id, pc->address, true);
    uv_close((uv_handle_t *)&pc->timer, pc_timer_closed);
    pc->req->cb(pc->req, stream, 0);
}

static void pc_connect_cb(uv_connect_t *c, int status)
{
    struct pconnect *pc = c->data;
    if (pc->finished)
        return;
    if (status != 0) {
        pc_fail(pc, RAFT_NOCONNECTION, "connect", status);
        return;
    }
    uv_tcp_nodelay(pc->tcp, 1);
    uv_buf_t b = uv_buf_init((char *)pc->preamble, (unsigned)pc->preamble_len);
    pc->write.data = pc;
    int rv = uv_write(&pc->write, (uv_stream_t *)pc->tcp, &b, 1, pc_write_cb);
    if (rv != 0)
        pc_fail(pc, RAFT_NOCONNECTION, "write preamble", rv);
}

static void pc_start_tcp(struct pconnect *pc, const struct sockaddr *sa)
{
    struct tp *tp = pc->t;
    int rv;
    pc->tcp = raft_malloc(sizeof *pc->tcp);
    if (pc->tcp == NULL) {
        pc_fail(pc, RAFT_NOCONNECTION, "out of memory", 0);
        return;
    }
    rv = uv_tcp_init(tp->loop, pc->tcp);
    if (rv != 0) {
        raft_free(pc->tcp);
        pc->tcp = NULL;
        pc_fail(pc, RAFT_NOCONNECTION, "tcp init", rv);
        return;
    }
    pc->tcp->data = pc;
    pc->handles++;
    /* Bind the source address so peers see (and tests can partition) the node's own
     * address; only when the families agree. */
    if (tp->have_bind && tp->bind_addr.ss_family == sa->sa_family) {
        rv = uv_tcp_bind(pc->tcp, (const struct sockaddr *)&tp->bind_addr, 0);
        if (rv != 0) {
            pc_fail(pc, RAFT_NOCONNECTION, "bind source address", rv);
            return;
        }
    }
    pc->conn.data = pc;
    rv = uv_tcp_connect(&pc->conn, pc->tcp, sa, pc_connect_cb);
    if (rv != 0)
        pc_fail(pc, RAFT_NOCONNECTION, "connect", rv);
}

static void pc_gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct pconnect *pc = req->data;
    pc->resolving = false;
    if (pc->finished) {
        uv_freeaddrinfo(res);
        pc_maybe_free(pc);
        return;
    }
    if (status != 0 || res == NULL) {
        uv_freeaddrinfo(res);
        pc_fail(pc, RAFT_NOCONNECTION, "resolve host", status);
        return;
    }
    /* The first address of the family we bind to (a name may resolve to ::1 first). */
    const struct addrinfo *ai = res;
    if (pc->t->have_bind)
        for (const struct addrinfo *a = res; a != NULL; a = a->ai_next)
            if (a->ai_family == pc->t->bind_addr.ss_family) {
                ai = a;
                break;
            }
    pc_start_tcp(pc, ai->ai_addr);
    uv_freeaddrinfo(res);
}

static void pc_timeout_cb(uv_timer_t *timer)
{
    pc_fail(timer->data, RAFT_NOCONNECTION, "timed out", 0);
}

static int tp_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    struct tp *tp = t->impl;
    size_t alen = strlen(address);
    if (id == 0 || alen == 0 || alen > PROTO_ADDRESS_MAX) {
        snprintf(t->errmsg, sizeof t->errmsg, "invalid id or address for the peer preamble");
        return RAFT_INVALID;
    }
    tp->id = id;
    memcpy(tp->address, address, alen + 1);
    return 0;
}

static int tp_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    struct tp *tp = t->impl;
    tp->accept_cb = cb;
    return 0;
}

static int tp_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    struct tp *tp = t->impl;
    char host[PROTO_ADDRESS_MAX + 1], port[16];
    int rv;
    if (tp->closing)
        return RAFT_CANCELED;
    if (transport_split_address(address, host, sizeof host, port, sizeof port) != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "peer address \"%s\" is not host:port", address);
        return RAFT_NOCONNECTION;
    }
    struct pconnect *pc = sm_calloc(1, sizeof *pc);
    if (pc == NULL)
        return RAFT_NOMEM;
    pc->t = tp;
    pc->req = req;
    pc->id = id;
    snprintf(pc->address, sizeof pc->address, "%s", address);
    req->cb = cb;

    struct proto_peer pp;
    pp.group = tp->group;
    pp.node_id = tp->id;
    memcpy(pp.address, tp->address, sizeof pp.address);
    pc->preamble_len = proto_peer_encode(pc->preamble, &pp);

    rv = uv_timer_init(tp->loop, &pc->timer);
    if (rv != 0) {
        sm_free(pc);
        return RAFT_NOCONNECTION;
    }
    pc->timer.data = pc;
    pc->handles = 1;
    pc->next = tp->connects;
    if (tp->connects != NULL)
        tp->connects->prev = pc;
    tp->connects = pc;
    uv_timer_start(&pc->timer, pc_timeout_cb, tp->connect_timeout_ms, 0);

    /* Numeric addresses connect at once; names go through the resolver (libuv pool). */
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, atoi(port), (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, atoi(port), (struct sockaddr_in6 *)&ss) == 0) {
        pc_start_tcp(pc, (const struct sockaddr *)&ss);
        return 0;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    pc->gai.data = pc;
    rv = uv_getaddrinfo(tp->loop, &pc->gai, pc_gai_cb, host, port, &hints);
    if (rv != 0) {
        pc_fail(pc, RAFT_NOCONNECTION, "resolve host", rv);
        return 0; /* raft's callback fires once the timer is closed */
    }
    pc->resolving = true;
    return 0;
}

static void tp_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    struct tp *tp = t->impl;
    tp->closing = true;
    tp->accept_cb = NULL;
    tp->close_cb = cb;
    /* Cancel every attempt still running: raft waits for their callbacks. */
    for (struct pconnect *pc = tp->connects; pc != NULL; pc = pc->next)
        pc_fail(pc, RAFT_CANCELED, "transport closing", 0);
    maybe_fire_close(tp);
}

int transport_init(struct raft_uv_transport *t, uv_loop_t *loop, uint32_t group,
                   const char *bind_host, unsigned connect_timeout_ms, transport_peer_cb on_peer,
                   void *peer_arg, struct err *err)
{
    struct tp *tp = sm_calloc(1, sizeof *tp);
    if (tp == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory (transport)");
    tp->loop = loop;
    tp->t = t;
    tp->group = group;
    tp->connect_timeout_ms = connect_timeout_ms;
    tp->on_peer = on_peer;
    tp->peer_arg = peer_arg;
    if (bind_host != NULL && bind_host[0] != '\0') {
        if (uv_ip4_addr(bind_host, 0, (struct sockaddr_in *)&tp->bind_addr) != 0 &&
            uv_ip6_addr(bind_host, 0, (struct sockaddr_in6 *)&tp->bind_addr) != 0) {
            sm_free(tp);
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "bind_host \"%s\" is not a numeric IP "
                           "address",
                           bind_host);
        }
        tp->have_bind = true;
    }
    memset(t, 0, sizeof *t);
    t->version = 1; /* RAFT-NOTES trap 1 */
    t->impl = tp;
    t->init = tp_init;
    t->listen = tp_listen;
    t->connect = tp_connect;
    t->close = tp_close;
    return 0;
}

void transport_free(struct raft_uv_transport *t)
{
    struct tp *tp = t->impl;
    if (tp == NULL)
        return;
    sm_free(tp->peers);
    sm_free(tp);
    t->impl = NULL;
}

static void stream_closed(uv_handle_t *h)
{
    raft_free(h);
}

void transport_accept(struct raft_uv_transport *t, uint64_t id, const char *address,
                      uv_stream_t *stream)
{
    struct tp *tp = t->impl;
    if (tp == NULL || tp->closing || tp->accept_cb == NULL) {
        uv_close((uv_handle_t *)stream, stream_closed);
        return;
    }
    tp->accept_cb(t, id, address, stream);
}
