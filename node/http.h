/* A small HTTP/1.1 server on a libuv loop, for the node's observability endpoints:
 * GET only, bounded request heads, bounded idle time, keep-alive.
 *
 * Parsing is done by the http-parser library (nodejs/http-parser 2.9, Debian package
 * libhttp-parser-dev); this file adds the limits and the policy around it:
 *   - a request head (request line + headers) longer than HTTP_HEAD_MAX bytes: 431;
 *   - a request line or header the parser rejects, a request target that is not a
 *     path ("/..." or an absolute URL with one), an HTTP/1.1 request without Host, or a
 *     request with a body (GET has none here): 400;
 *   - an HTTP major version other than 1: 505 (0.9 has no version: 400);
 *   - any method but GET: 405 with "Allow: GET";
 *   - a path the handler does not know: whatever the handler answers (404 by default).
 * Every error response carries "Connection: close" and ends the connection. A good
 * request keeps the connection open when HTTP/1.1 (or HTTP/1.0 with "Connection:
 * keep-alive") unless the client sent "Connection: close"; pipelined requests are
 * answered in order. A connection is closed when no complete request head arrives
 * within HTTP_IDLE_MS of its accept or of its previous request (this bounds both idle
 * keep-alive connections and slow senders). At most HTTP_MAX_CONNS connections are
 * served; past that a new one gets 503 and is closed (and past 64 more, closed at once).
 *
 * Thread: everything runs on the loop thread given to http_server_start. */
#ifndef STRATA_NODE_HTTP_H
#define STRATA_NODE_HTTP_H

#include "common.h"

#include <http_parser.h>
#include <stdbool.h>
#include <uv.h>

#define HTTP_HEAD_MAX 8192
#define HTTP_IDLE_MS 10000
#define HTTP_MAX_CONNS 256
/* A connection whose unread responses exceed this is closed (a client that pipelines
 * requests and never reads must not grow our memory without bound). */
#define HTTP_MAX_QUEUED_BYTES (4u << 20)

/* ---- Request parsing (no I/O; unit-tested on its own) ------------------------------ */

/* One connection's parser. After http_req_feed returns HTTP_REQ_DONE, `path` holds the
 * request's path (the URL's path component, without query or fragment, NUL-terminated)
 * and `keep_alive` whether the connection may stay open; call http_req_next before
 * feeding the bytes that follow. After an error the parser is spent. */
struct http_req {
    http_parser p;
    size_t head_bytes; /* of the current request, counted until its head is complete */
    bool head_done;
    int status;         /* error status decided in a parser callback, 0 = none */
    const char *reason; /* one-line reason for an error status (static string) */
    char url[HTTP_HEAD_MAX + 1];
    size_t url_len;
    char field[8]; /* the header name being read, kept only to spot Host */
    size_t field_len;
    bool in_field; /* between a name's first byte and its value */
    bool has_host;
    /* Results of a complete request. */
    const char *path; /* points into url */
    bool keep_alive;
};

enum { HTTP_REQ_MORE = 0, HTTP_REQ_DONE = 1 };

void http_req_init(struct http_req *r);
/* Feed bytes. Returns HTTP_REQ_MORE when all `len` bytes were consumed and the request
 * is not complete yet (*used = len), HTTP_REQ_DONE when a request is complete (*used =
 * the bytes it took; the rest belongs to the next request), or an HTTP error status
 * (400, 405, 431, 505) with r->reason set. */
int http_req_feed(struct http_req *r, const char *data, size_t len, size_t *used);
/* Get ready for the next request on the same connection. */
void http_req_next(struct http_req *r);

/* ---- Server ---------------------------------------------------------------------------- */

/* What the handler answers. `body` starts empty and is owned by the server; the
 * handler appends to it. `content_type` must be a static string. */
struct http_reply {
    int status;
    const char *content_type;
    struct buf body;
};

/* Called for every good GET request, with the request path. The reply starts as
 * 404 "not found" text/plain; the handler overwrites what it serves. */
typedef void (*http_handler_cb)(void *arg, const char *path, struct http_reply *reply);
/* Called for every response sent (good or not), for metrics. May be NULL. */
typedef void (*http_count_cb)(void *arg, int status);

struct http_conn;

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t sweep; /* closes connections past their deadline */
    http_handler_cb handler;
    http_count_cb count;
    void *arg;
    struct http_conn *conns;
    size_t nconns;
    unsigned open_handles; /* listener + sweep + connections, until their close callbacks */
    bool closing;
    void (*closed_cb)(struct http_server *s);
    char host[64];
    int port; /* the bound port (the real one when 0 was asked) */
};

/* Listen on host:port (IPv4 or IPv6 literal; port 0 = any free port, then read back
 * s->port). Returns 0, or STRATA_INVALID_ARGUMENT (bad address) / STRATA_UNAVAILABLE
 * (cannot bind or listen) with a message in err; on failure nothing is left open except
 * handles that http_server_close still needs to close. */
int http_server_start(struct http_server *s, uv_loop_t *loop, const char *host, int port,
                      http_handler_cb handler, http_count_cb count, void *arg, struct err *err);
/* Close the listener, the sweep timer and every connection (responses being written
 * are cut off). `closed_cb` (may be NULL) runs once every handle is closed; `s` must
 * stay valid until then. Safe to call once, also after a failed start. */
void http_server_close(struct http_server *s, void (*closed_cb)(struct http_server *s));

/* Reason phrase of a status code ("Not Found"). */
const char *http_status_text(int status);

#endif
