/* The observability HTTP server: request limits around http-parser, connections with
 * deadlines, responses written in request order. See http.h for the policy. */
#include "http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* How long a connection that is being closed keeps reading (and discarding) so that a
 * client still sending does not get a reset before it has read our error response. */
#define HTTP_LINGER_MS 2000
/* Connections past HTTP_MAX_CONNS still get a 503; past this many more they are closed
 * without a word (nothing may grow without bound). */
#define HTTP_OVERFLOW_CONNS 64

/* ---- Request parsing -------------------------------------------------------------- */

static struct http_req *req_of(http_parser *p)
{
    return p->data;
}

static int fail(struct http_req *r, int status, const char *reason)
{
    r->status = status;
    r->reason = reason;
    return -1; /* any non-zero return stops the parser with HPE_CB_* */
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_req *r = req_of(p);
    /* Cannot overflow while the head is capped at HTTP_HEAD_MAX; checked anyway. */
    if (len > sizeof r->url - 1 - r->url_len)
        return fail(r, 431, "request head too large");
    memcpy(r->url + r->url_len, at, len);
    r->url_len += len;
    r->url[r->url_len] = '\0';
    return 0;
}

/* A header name is complete (its value starts): is it Host? The parser reports a name
 * in one or more pieces, then its value (also for an empty value). */
static void end_field(struct http_req *r)
{
    if (r->field_len == 4 && strncasecmp(r->field, "host", 4) == 0)
        r->has_host = true;
    r->in_field = false;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_req *r = req_of(p);
    if (!r->in_field) {
        r->in_field = true;
        r->field_len = 0;
    }
    /* Only the first sizeof field bytes are kept; field_len keeps counting (saturated)
     * so a longer name never looks like "host". */
    for (size_t i = 0; i < len && r->field_len <= sizeof r->field; i++, r->field_len++)
        if (r->field_len < sizeof r->field)
            r->field[r->field_len] = at[i];
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    (void)at;
    (void)len;
    struct http_req *r = req_of(p);
    if (r->in_field)
        end_field(r);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct http_req *r = req_of(p);
    if (r->in_field)
        end_field(r);
    r->head_done = true;
    if (p->http_major == 0)
        return fail(r, 400, "bad request line: no HTTP version");
    if (p->http_major != 1)
        return fail(r, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
    if (p->http_minor >= 1 && !r->has_host)
        return fail(r, 400, "an HTTP/1.1 request needs a Host header");
    if (p->method != HTTP_GET)
        return fail(r, 405, "only GET is allowed");
    if ((p->flags & F_CHUNKED) || (p->content_length > 0 && p->content_length != UINT64_MAX))
        return fail(r, 400, "a GET request has no body");
    return 0;
}

static int on_message_complete(http_parser *p)
{
    /* Stop here so http_req_feed can tell the caller how many bytes this request took;
     * pipelined bytes after it wait for the next call. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

void http_req_init(struct http_req *r)
{
    memset(r, 0, sizeof *r);
    http_parser_init(&r->p, HTTP_REQUEST);
    r->p.data = r;
}

void http_req_next(struct http_req *r)
{
    http_req_init(r);
}

/* The complete request's path: the URL's path component, NUL-terminated in place. */
static int finish(struct http_req *r)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (r->url_len == 0 || http_parser_parse_url(r->url, r->url_len, 0, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH)) || r->url[u.field_data[UF_PATH].off] != '/') {
        r->status = 400;
        r->reason = "bad request target";
        return 400;
    }
    memmove(r->url, r->url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    r->url[u.field_data[UF_PATH].len] = '\0';
    r->path = r->url;
    r->keep_alive = http_should_keep_alive(&r->p) != 0;
    return HTTP_REQ_DONE;
}

int http_req_feed(struct http_req *r, const char *data, size_t len, size_t *used)
{
    size_t off = 0;
    *used = 0;
    while (off < len) {
        size_t chunk = len - off;
        /* Feed at most what is left of the head allowance: a head that has not ended
         * when the allowance is spent is too large, and we never buffer beyond it. */
        if (!r->head_done && chunk > HTTP_HEAD_MAX - r->head_bytes)
            chunk = HTTP_HEAD_MAX - r->head_bytes;
        size_t n = http_parser_execute(&r->p, &settings, data + off, chunk);
        off += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&r->p);
        if (e == HPE_PAUSED) {
            *used = off;
            return finish(r);
        }
        if (e != HPE_OK) {
            *used = off;
            if (r->status == 0) {
                r->status = 400;
                r->reason = http_errno_description(e);
            }
            return r->status;
        }
        if (!r->head_done) {
            r->head_bytes += n;
            if (r->head_bytes >= HTTP_HEAD_MAX) {
                *used = off;
                r->status = 431;
                r->reason = "request head too large";
                return 431;
            }
        }
    }
    *used = off;
    return HTTP_REQ_MORE;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ---- Connections ----------------------------------------------------------------------
 * Lifecycle:
 *
 *   READING --request answered, keep-alive--> READING
 *      |  \--error answered / "Connection: close" answered / 503 at accept--> DRAINING
 *      |                                                                         |
 *      \--peer closed, read error, deadline (idle)---> CLOSED <--EOF, deadline----/
 *
 * DRAINING has the write side shut down after the queued responses and reads only to
 * discard, for at most HTTP_LINGER_MS. CLOSED waits for uv_close's callback, which
 * frees the connection. */
enum http_conn_state { HC_READING, HC_DRAINING, HC_CLOSED };

struct http_conn {
    struct http_server *srv;
    uv_tcp_t tcp;
    uv_shutdown_t shut;
    enum http_conn_state state;
    uint64_t deadline_ms; /* loop time */
    struct http_req req;
    struct http_conn *next, *prev;
};

struct http_write {
    uv_write_t req;
    char *base;
};

static void handle_closed(struct http_server *s)
{
    if (--s->open_handles == 0 && s->closing && s->closed_cb)
        s->closed_cb(s);
}

static void conn_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    struct http_server *s = c->srv;
    sm_free(c);
    handle_closed(s);
}

static void conn_close(struct http_conn *c)
{
    if (c->state == HC_CLOSED)
        return;
    c->state = HC_CLOSED;
    struct http_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void write_done(uv_write_t *req, int status)
{
    (void)status; /* a failed write ends in a read error or the deadline: both close */
    struct http_write *w = (struct http_write *)req;
    sm_free(w->base);
    sm_free(w);
}

static void shutdown_done(uv_shutdown_t *req, int status)
{
    struct http_conn *c = req->data;
    if (status < 0) /* includes UV_ECANCELED when the handle is already closing */
        conn_close(c);
}

/* Queue one response; `close` ends the connection after it. */
static void send_reply(struct http_conn *c, struct http_reply *rep, bool close)
{
    struct http_server *s = c->srv;
    if (s->count)
        s->count(s->arg, rep->status);
    struct buf b;
    buf_init(&b);
    int rc =
        buf_printf(&b,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\n%sConnection: %s\r\n\r\n",
                   rep->status, http_status_text(rep->status), rep->content_type, rep->body.len,
                   rep->status == 405 ? "Allow: GET\r\n" : "", close ? "close" : "keep-alive");
    if (rc == 0 && rep->body.len)
        rc = buf_append(&b, rep->body.data, rep->body.len);
    struct http_write *w = rc == 0 ? sm_malloc(sizeof *w) : NULL;
    if (w == NULL) {
        buf_close(&b);
        conn_close(c);
        return;
    }
    size_t len;
    w->base = (char *)buf_steal(&b, &len);
    uv_buf_t ub = uv_buf_init(w->base, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, write_done)) {
        sm_free(w->base);
        sm_free(w);
        conn_close(c);
        return;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > HTTP_MAX_QUEUED_BYTES) {
        log_warn("http: closing a connection that does not read its responses");
        conn_close(c);
        return;
    }
    if (close) {
        c->state = HC_DRAINING;
        c->deadline_ms = uv_now(s->loop) + HTTP_LINGER_MS;
        c->shut.data = c;
        if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, shutdown_done))
            conn_close(c);
    }
}

static void send_error(struct http_conn *c, int status, const char *reason)
{
    struct http_reply rep = {status, "text/plain; charset=utf-8", {0}};
    buf_init(&rep.body);
    if (buf_printf(&rep.body, "%s\n", reason ? reason : http_status_text(status)))
        buf_reset(&rep.body);
    send_reply(c, &rep, true);
    buf_close(&rep.body);
}

static void answer(struct http_conn *c)
{
    struct http_server *s = c->srv;
    struct http_reply rep = {404, "text/plain; charset=utf-8", {0}};
    buf_init(&rep.body);
    if (buf_printf(&rep.body, "not found\n")) {
        buf_close(&rep.body);
        send_error(c, 500, "out of memory");
        return;
    }
    s->handler(s->arg, c->req.path, &rep);
    bool keep = c->req.keep_alive && !s->closing;
    send_reply(c, &rep, !keep);
    buf_close(&rep.body);
}

/* Reads are handled to completion inside the callback, so one buffer serves every
 * connection of every server on this thread. */
static char read_buf[64 * 1024];

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = read_buf;
    b->len = sizeof read_buf;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct http_conn *c = st->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    size_t off = 0, len = (size_t)nread;
    while (c->state == HC_READING && off < len) {
        size_t used;
        int rc = http_req_feed(&c->req, b->base + off, len - off, &used);
        off += used;
        if (rc == HTTP_REQ_MORE)
            break;
        if (rc != HTTP_REQ_DONE) {
            send_error(c, rc, c->req.reason);
            break;
        }
        answer(c);
        http_req_next(&c->req);
        c->deadline_ms = uv_now(c->srv->loop) + HTTP_IDLE_MS;
    }
    /* DRAINING: the rest is discarded. */
}

static void on_connection(uv_stream_t *server, int status)
{
    struct http_server *s = server->data;
    if (status < 0 || s->closing)
        return;
    struct http_conn *c = sm_calloc(1, sizeof *c);
    if (c == NULL)
        return; /* the pending connection stays in the backlog; retried on the next one */
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    s->open_handles++;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    c->state = HC_READING;
    c->deadline_ms = uv_now(s->loop) + HTTP_IDLE_MS;
    http_req_init(&c->req);
    if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
        conn_close(c);
        return;
    }
    if (s->nconns > HTTP_MAX_CONNS + HTTP_OVERFLOW_CONNS) {
        conn_close(c);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read)) {
        conn_close(c);
        return;
    }
    if (s->nconns > HTTP_MAX_CONNS)
        send_error(c, 503, "too many connections");
}

static void on_sweep(uv_timer_t *t)
{
    struct http_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    for (struct http_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (now >= c->deadline_ms)
            conn_close(c);
    }
}

/* ---- Server ------------------------------------------------------------------------------- */

static void server_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

int http_server_start(struct http_server *s, uv_loop_t *loop, const char *host, int port,
                      http_handler_cb handler, http_count_cb count, void *arg, struct err *err)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->handler = handler;
    s->count = count;
    s->arg = arg;
    snprintf(s->host, sizeof s->host, "%s", host);
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss))
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "bad --http address '%s': an IPv4 or IPv6 literal is needed", host);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->open_handles++;
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    s->open_handles++;
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
    if (rc)
        return err_set(err, STRATA_UNAVAILABLE, "cannot listen on %s:%d for HTTP: %s", host, port,
                       uv_strerror(rc));
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    s->port = port;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen) == 0)
        s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    uv_timer_start(&s->sweep, on_sweep, 500, 500);
    return 0;
}

void http_server_close(struct http_server *s, void (*closed_cb)(struct http_server *s))
{
    if (s->closing || s->loop == NULL)
        return;
    s->closing = true;
    s->closed_cb = closed_cb;
    if (s->open_handles == 0) { /* the start failed before any handle existed */
        if (closed_cb)
            closed_cb(s);
        return;
    }
    while (s->conns)
        conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listener, server_handle_closed);
    uv_close((uv_handle_t *)&s->sweep, server_handle_closed);
}
