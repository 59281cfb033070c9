/* Forwarding: a follower relays requests to the leader over pooled client connections,
 * one per (leader address, API key) — the leader checks the same key again — and
 * relays each reply with the leader's address as a routing hint.
 *
 * Link lifecycle:  [RESOLVING --name resolved-->] CONNECTING --tcp up, HELLO sent-->
 *                  HELLO_WAIT --WELCOME--> READY
 *                  any --error / close--> DEAD (pending requests fail, link freed)
 * Addresses are host:port; a host that is not an IPv4 literal (a DNS name, as advertised
 * by nodes on Kubernetes) is resolved first. A link that dies while its lookup is
 * pending is freed only once both the lookup and the TCP handle are done.
 * A request sent on a link that dies has an unknown outcome; one never sent is simply
 * unavailable (safe to retry). */
#include "node.h"

#include <stdio.h>
#include <string.h>

enum link_state { LINK_RESOLVING, LINK_CONNECTING, LINK_HELLO_WAIT, LINK_READY, LINK_DEAD };

struct fwd_req {
    uint64_t id;
    bool sent;
    bool write; /* a sent read that is lost can simply be retried: UNAVAILABLE */
    struct buf frame; /* REQUEST frame, kept until sent */
    fwd_done_cb cb;
    void *arg;
    struct fwd_req *next;
};

struct fwd_link {
    struct node *node;
    char address[REPL_ADDRESS_MAX + 1];
    char *api_key; /* NULL in open mode */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_getaddrinfo_t gai;
    bool resolving;  /* gai pending: the callback still owns a reference */
    bool tcp_closed; /* tcp's close callback ran */
    enum link_state state;
    struct proto_reader rd;
    uint64_t next_id;
    struct fwd_req *reqs;
    struct fwd_link *next;
};

static void link_fail(struct fwd_link *l, const char *why);

static void link_write(struct fwd_link *l, struct buf *data)
{
    if (stream_write((uv_stream_t *)&l->tcp, data))
        link_fail(l, "write failed");
}

static void link_flush(struct fwd_link *l)
{
    for (struct fwd_req *r = l->reqs; r && l->state == LINK_READY; r = r->next) {
        if (r->sent)
            continue;
        r->sent = true;
        link_write(l, &r->frame);
        if (l->state == LINK_DEAD)
            return; /* link_fail freed every request, r included */
    }
}

static void link_free(struct fwd_link *l)
{
    proto_reader_close(&l->rd);
    sm_free(l->api_key);
    sm_free(l);
}

static void link_freed(uv_handle_t *h)
{
    struct fwd_link *l = h->data;
    l->tcp_closed = true;
    if (!l->resolving)
        link_free(l);
}

/* Fail every pending request and free the link. */
static void link_fail(struct fwd_link *l, const char *why)
{
    if (l->state == LINK_DEAD)
        return;
    l->state = LINK_DEAD;
    struct node *n = l->node;
    for (struct fwd_link **pp = &n->links; *pp; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    struct fwd_req *r = l->reqs;
    l->reqs = NULL;
    while (r) {
        struct fwd_req *next = r->next;
        char msg[ERR_MSG_MAX + REPL_ADDRESS_MAX + 64];
        snprintf(msg, sizeof msg, "connection to the leader %s failed: %s", l->address, why);
        r->cb(r->arg, r->sent && r->write ? STRATA_UNKNOWN_OUTCOME : STRATA_UNAVAILABLE, NULL, 0,
              msg, NULL);
        buf_close(&r->frame);
        sm_free(r);
        r = next;
    }
    log_info("forward link to %s closed: %s", l->address, why);
    if (l->resolving)
        uv_cancel((uv_req_t *)&l->gai); /* on_resolved still runs (UV_ECANCELED) */
    uv_close((uv_handle_t *)&l->tcp, link_freed);
}

static void on_response(struct fwd_link *l, const struct proto_frame *f)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    struct proto_response resp;
    struct err err;
    if (proto_response_decode(f, &z, &resp, &err)) {
        msgpack_zone_destroy(&z);
        link_fail(l, err.msg);
        return;
    }
    struct fwd_req **pp = &l->reqs;
    while (*pp && (*pp)->id != resp.id)
        pp = &(*pp)->next;
    struct fwd_req *r = *pp;
    if (r) {
        *pp = r->next;
        char msg[ERR_MSG_MAX], leader[REPL_ADDRESS_MAX + 1];
        snprintf(msg, sizeof msg, "%.*s", (int)resp.message_len, resp.message ? resp.message : "");
        /* The node that answered is the leader to remember, unless it answered that it
         * did not run the command; then only the leader it names is a hint. */
        bool not_run = resp.code == STRATA_NOT_LEADER || resp.code == STRATA_UNAVAILABLE;
        if (resp.leader)
            snprintf(leader, sizeof leader, "%.*s", (int)resp.leader_len, resp.leader);
        else
            snprintf(leader, sizeof leader, "%s", not_run ? "" : l->address);
        r->cb(r->arg, resp.code, resp.result, resp.result_len, msg, leader);
        buf_close(&r->frame);
        sm_free(r);
    }
    msgpack_zone_destroy(&z);
}


static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct fwd_link *l = s->data;
    if (nread < 0) {
        sm_free(b->base);
        link_fail(l, uv_strerror((int)nread));
        return;
    }
    if (nread > 0 && proto_reader_feed(&l->rd, b->base, (size_t)nread)) {
        sm_free(b->base);
        link_fail(l, "out of memory");
        return;
    }
    sm_free(b->base);
    struct proto_frame f;
    struct err err;
    int r;
    while (l->state != LINK_DEAD && (r = proto_reader_next(&l->rd, &f, &err)) == 1) {
        if (l->state == LINK_HELLO_WAIT && f.kind == PROTO_WELCOME) {
            /* A node that joined learns its cluster's id from the first member it meets. */
            msgpack_zone z;
            msgpack_zone_init(&z, 256);
            struct proto_welcome w;
            const char *bad = NULL;
            bool joining = strcmp(l->node->cluster_id, "joining") == 0;
            if (proto_welcome_decode(&f, &z, &w, &err) != 0)
                bad = "malformed WELCOME";
            else if (joining && w.cluster_id_len > 0 &&
                     w.cluster_id_len < sizeof l->node->cluster_id &&
                     !(w.cluster_id_len == 7 && memcmp(w.cluster_id, "joining", 7) == 0))
                node_set_cluster_id(l->node, w.cluster_id, w.cluster_id_len);
            else if (!joining &&
                     !(w.cluster_id_len == 7 && memcmp(w.cluster_id, "joining", 7) == 0) &&
                     (w.cluster_id_len != strlen(l->node->cluster_id) ||
                      memcmp(w.cluster_id, l->node->cluster_id, w.cluster_id_len) != 0))
                bad = "the peer belongs to another cluster";
            msgpack_zone_destroy(&z);
            if (bad) {
                link_fail(l, bad);
                return;
            }
            l->state = LINK_READY;
            link_flush(l);
        } else if (l->state == LINK_READY && f.kind == PROTO_RESPONSE) {
            on_response(l, &f);
        } else if (f.kind == PROTO_ERROR) {
            msgpack_zone z;
            msgpack_zone_init(&z, 128);
            int code;
            const char *m = "";
            size_t ml = 0;
            char why[ERR_MSG_MAX];
            if (proto_error_decode(&f, &z, &code, &m, &ml, &err) == 0)
                snprintf(why, sizeof why, "%s: %.*s", err_name(code), (int)ml, m);
            else
                snprintf(why, sizeof why, "bad ERROR frame");
            msgpack_zone_destroy(&z);
            link_fail(l, why);
            return;
        } else {
            link_fail(l, "unexpected frame from the leader");
            return;
        }
    }
    if (l->state != LINK_DEAD && r != 0)
        link_fail(l, err.msg);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct fwd_link *l = req->data;
    if (l->state == LINK_DEAD)
        return;
    if (status) {
        link_fail(l, uv_strerror(status));
        return;
    }
    struct buf b;
    buf_init(&b);
    struct proto_hello h = {PROTO_VERSION, PROTO_VERSION, "strata-node", 11, l->api_key,
                            l->api_key ? strlen(l->api_key) : 0};
    if (proto_hello_append(&b, &h)) {
        buf_close(&b);
        link_fail(l, "out of memory");
        return;
    }
    l->state = LINK_HELLO_WAIT;
    link_write(l, &b);
    if (l->state != LINK_DEAD && uv_read_start((uv_stream_t *)&l->tcp, node_alloc, on_read))
        link_fail(l, "cannot read");
}

/* Bind to the node's own address (outgoing node-to-node connections come from it) and
 * connect. */
static void link_connect(struct fwd_link *l, const struct sockaddr_in *sa)
{
    struct sockaddr_in src;
    l->state = LINK_CONNECTING;
    if (uv_ip4_addr(l->node->cfg.listen_host, 0, &src) == 0)
        uv_tcp_bind(&l->tcp, (const struct sockaddr *)&src, 0);
    int rc = uv_tcp_connect(&l->connect, &l->tcp, (const struct sockaddr *)sa, on_connect);
    if (rc)
        link_fail(l, uv_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct fwd_link *l = req->data;
    l->resolving = false;
    if (l->state == LINK_DEAD) {
        if (res)
            uv_freeaddrinfo(res);
        if (l->tcp_closed)
            link_free(l);
        return;
    }
    if (status || res == NULL || res->ai_family != AF_INET) {
        if (res)
            uv_freeaddrinfo(res);
        link_fail(l, status ? uv_strerror(status) : "no IPv4 address");
        return;
    }
    struct sockaddr_in sa;
    memcpy(&sa, res->ai_addr, sizeof sa);
    uv_freeaddrinfo(res);
    link_connect(l, &sa);
}

static struct fwd_link *link_get(struct node *n, const char *address, const char *key,
                                 size_t keylen, struct err *err)
{
    for (struct fwd_link *l = n->links; l; l = l->next)
        if (strcmp(l->address, address) == 0 &&
            ((key == NULL && l->api_key == NULL) ||
             (key && l->api_key && strlen(l->api_key) == keylen &&
              memcmp(l->api_key, key, keylen) == 0)))
            return l;
    char host[REPL_ADDRESS_MAX + 1], port_text[8];
    int port;
    struct sockaddr_in sa;
    if (parse_hostport(address, host, sizeof host, &port)) {
        err_set(err, STRATA_UNAVAILABLE, "leader address '%s' is not host:port", address);
        return NULL;
    }
    bool literal = uv_ip4_addr(host, port, &sa) == 0;
    struct fwd_link *l = sm_calloc(1, sizeof *l);
    if (l == NULL) {
        err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        return NULL;
    }
    l->node = n;
    snprintf(l->address, sizeof l->address, "%s", address);
    if (key && (l->api_key = sm_strndup(key, keylen)) == NULL) {
        sm_free(l);
        err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        return NULL;
    }
    proto_reader_init(&l->rd, n->cfg.max_frame);
    uv_tcp_init(n->loop, &l->tcp);
    l->tcp.data = l;
    l->connect.data = l;
    l->gai.data = l;
    l->next = n->links;
    n->links = l;
    if (literal) {
        link_connect(l, &sa);
    } else {
        /* A DNS name (a StatefulSet pod's stable name, say): resolve on the loop's thread
         * pool, IPv4 only like --listen. */
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(port_text, sizeof port_text, "%d", port);
        l->state = LINK_RESOLVING;
        int rc = uv_getaddrinfo(n->loop, &l->gai, on_resolved, host, port_text, &hints);
        if (rc == 0)
            l->resolving = true;
        else
            link_fail(l, uv_strerror(rc));
    }
    if (l->state == LINK_DEAD) {
        err_set(err, STRATA_UNAVAILABLE, "cannot connect to %s", address);
        return NULL;
    }
    return l;
}

void fwd_request(struct node *n, const char *leader, const char *api_key, const uint8_t *cmd,
                 size_t len, uint32_t flags, fwd_done_cb cb, void *arg)
{
    fwd_request_routed(n, leader, api_key, cmd, len, flags, NULL, cb, arg);
}

void fwd_request_routed(struct node *n, const char *leader, const char *api_key,
                        const uint8_t *cmd, size_t len, uint32_t flags,
                        const struct proto_route *route, fwd_done_cb cb, void *arg)
{
    struct err err;
    err_clear(&err);
    if (n->stopping) {
        cb(arg, STRATA_UNAVAILABLE, NULL, 0, "the node is shutting down", NULL);
        return;
    }
    struct fwd_link *l = link_get(n, leader, api_key, api_key ? strlen(api_key) : 0, &err);
    if (l == NULL) {
        cb(arg, err.code ? err.code : STRATA_UNAVAILABLE, NULL, 0, err.msg, leader);
        return;
    }
    struct fwd_req *r = sm_calloc(1, sizeof *r);
    if (r == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    r->id = ++l->next_id;
    enum storage_cmd_kind kind = STORAGE_CMD_WRITE;
    struct err kerr;
    storage_cmd_kind(cmd, len, &kind, &kerr); /* unknown (admin) commands count as writes */
    r->write = kind == STORAGE_CMD_WRITE;
    r->cb = cb;
    r->arg = arg;
    buf_init(&r->frame);
    if (proto_request_append_routed(&r->frame, r->id, flags | PROTO_REQ_FORWARDED, cmd, len,
                                    route)) {
        buf_close(&r->frame);
        sm_free(r);
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    /* Keep request order: append at the tail. */
    struct fwd_req **pp = &l->reqs;
    while (*pp)
        pp = &(*pp)->next;
    *pp = r;
    if (l->state == LINK_READY)
        link_flush(l);
}

void fwd_close_all(struct node *n)
{
    while (n->links)
        link_fail(n->links, "node stopping");
}
