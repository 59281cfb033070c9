/* stratadb-server internals: the node (one libuv loop owning all state), its listener,
 * client connections, sessions, authentication and forwarding to the leader. */
#ifndef STRATA_NODE_H
#define STRATA_NODE_H

#include "common.h"
#include "proto.h"
#include "replication.h"
#include "storage.h"

#include <stdbool.h>
#include <uv.h>

#define NODE_MAX_MEMBERS 16

struct node_config {
    const char *data_dir;
    char listen_host[64];
    int listen_port;
    char advertise[REPL_ADDRESS_MAX + 1]; /* host:port peers and clients reach us at */
    uint64_t node_id;                     /* 0 = derive from the bootstrap list */
    struct repl_member members[NODE_MAX_MEMBERS]; /* --bootstrap list */
    size_t nmembers;
    char join[512]; /* --join list, comma-separated */
    const char *api_keys_file;
    size_t max_frame;
    unsigned idle_timeout_ms; /* session idle timeout (closes the connection) */
    char http[REPL_ADDRESS_MAX + 1]; /* --http HOST:PORT for /metrics etc., "" = none */
    struct repl_options repl;
};

/* ---- Authentication (auth.c) ------------------------------------------------------
 * A file of API keys, one per line: `KEY MODE PATTERN[,PATTERN...]`, MODE `r` or `rw`,
 * patterns are branch-name globs (fnmatch). '#' starts a comment. No file = open mode. */
struct auth_key {
    char *key;
    bool write;
    char **patterns;
    size_t npatterns;
};
struct auth {
    struct auth_key *keys;
    size_t nkeys;
};
int auth_load(const char *path, struct auth *a, struct err *err);
void auth_free(struct auth *a);
/* The key for an API key string, or NULL (UNAUTHENTICATED). */
const struct auth_key *auth_find(const struct auth *a, const char *key, size_t len);
/* May `k` run a command of this kind on these branches? 0 or PERMISSION_DENIED. */
int auth_check(const struct auth_key *k, bool write, const char *const *branches,
               const size_t *lens, size_t n, struct err *err);

/* ---- Connections (conn.c) --------------------------------------------------------------
 * Lifecycle of a client connection:
 *
 *   HELLO_WAIT --HELLO ok--> READY --ERROR sent / peer closed / idle--> CLOSING --> freed
 *        \--bad first frame------------------------------------------->/
 *
 * A connection is freed only when it is closed AND no request of it is still pending
 * in replication or forwarding (refs == 0). */
enum conn_state { CONN_HELLO_WAIT, CONN_READY, CONN_CLOSING };

struct node;

struct session {
    char branch[129];
    char space[65];
};

struct conn {
    struct node *node;
    uv_tcp_t *tcp;
    struct proto_reader rd;
    enum conn_state state;
    const struct auth_key *key; /* NULL in open mode */
    struct session sess;
    unsigned refs; /* 1 for the open socket + 1 per pending request */
    uint64_t last_active_ms;
    struct conn *next, *prev;
};

void conn_start_client(struct node *n, uv_tcp_t *tcp, const char *first, size_t len);
void conn_close(struct conn *c);

/* ---- Forwarding (forward.c) --------------------------------------------------------
 * A follower relays requests to the leader over one pooled client connection per
 * leader address, with the FORWARDED flag, and relays the reply. */
typedef void (*fwd_done_cb)(void *arg, int code, const uint8_t *result, size_t len,
                            const char *message, const char *leader);
void fwd_request(struct node *n, const char *leader, const char *api_key, const uint8_t *cmd,
                 size_t len, uint32_t flags, fwd_done_cb cb, void *arg);
void fwd_close_all(struct node *n);
struct fwd_link;
struct sniff;
struct observe; /* metrics and the HTTP endpoints (observe.h) */

/* ---- The node (server.c) ---------------------------------------------------------- */
struct node {
    uv_loop_t *loop;
    struct node_config cfg;
    struct storage *engine;
    struct repl_group *group;
    struct auth auth;
    bool open_mode;
    char cluster_id[64];
    uv_tcp_t listener;
    uv_signal_t sigterm, sigint;
    uv_timer_t idle_timer;
    struct conn *conns;
    struct sniff *sniffs; /* accepted, kind not known yet */
    struct fwd_link *links;
    uint64_t forwarded; /* requests relayed to the leader (metric) */
    struct observe *obs; /* NULL without --http */
    bool stopping;
    int exit_code;
    /* A fresh data dir given --bootstrap waits for the other initial members before it
     * bootstraps (server.c, "Safe bootstrap"); until then group is NULL. */
    bool fresh;
    uv_timer_t probe_timer;
    bool probing;
    unsigned probe_round, probe_answered, probe_formed;
    char probe_formed_by[REPL_ADDRESS_MAX + 1];
    uint64_t probe_formed_index;
};

int node_start(struct node *n, struct err *err);
/* The group's status, or an "unavailable" one while the node has no group yet. */
void node_status(struct node *n, struct repl_status *st);
void node_stop(struct node *n);
/* Run a command for a connection or a forwarded request: decides local vs forward. */
void node_submit(struct node *n, const uint8_t *cmd, size_t len, uint32_t flags,
                 const struct auth_key *key, fwd_done_cb cb, void *arg);
/* cluster.add_member / remove_member / transfer_leader. */
int node_admin(struct node *n, const char *op, const msgpack_object *cmd, const uint8_t *bytes,
               size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb,
               void *arg);
/* Adopt (and persist in DIR/node) the cluster id learned when joining. */
void node_set_cluster_id(struct node *n, const char *id, size_t len);
/* libuv read buffer allocator (the read callback frees b->base). */
void node_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
/* Queue `data` on a stream (ownership of its bytes passes here; data is left empty).
 * Returns 0, or a libuv error after which the caller closes the stream. */
int stream_write(uv_stream_t *s, struct buf *data);
/* Parse "host:port". */
int parse_hostport(const char *s, char *host, size_t hostcap, int *port);

#endif
