/* The node: one listening port shared by clients and raft peers, routing of commands
 * (local on the leader, forwarded from followers), joining, signals and shutdown. */
#include "node.h"
#include "observe.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <raft.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>

int parse_hostport(const char *s, char *host, size_t hostcap, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s || (size_t)(colon - s) >= hostcap)
        return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p <= 0 || p > 65535)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return 0;
}

/* ---- Reading and writing ------------------------------------------------------------------ */

void node_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    b->base = sm_malloc(suggested);
    b->len = b->base ? suggested : 0;
}

struct wreq {
    uv_write_t req;
    char *base; /* freed when the write completes (libuv copies the uv_buf_t) */
};

static void write_done(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error: the reader closes */
    struct wreq *w = (struct wreq *)req;
    sm_free(w->base);
    sm_free(w);
}

int stream_write(uv_stream_t *s, struct buf *data)
{
    struct wreq *w = sm_malloc(sizeof *w);
    if (w == NULL) {
        buf_close(data);
        return UV_ENOMEM;
    }
    size_t len;
    w->base = (char *)buf_steal(data, &len);
    uv_buf_t b = uv_buf_init(w->base, (unsigned)len);
    int rc = uv_write(&w->req, s, &b, 1, write_done);
    if (rc) {
        sm_free(w->base);
        sm_free(w);
    }
    return rc;
}

/* ---- Status --------------------------------------------------------------------------- */

void node_status(struct node *n, struct repl_status *st)
{
    node_group_status(n, 0, st);
}

/* ---- Accepting: a connection's first byte decides client or raft peer ------------------ */

struct sniff {
    struct node *node;
    uv_tcp_t *tcp;
    uint8_t buf[PROTO_PEER_FIXED + PROTO_ADDRESS_MAX];
    size_t have, need;
    uint64_t since_ms; /* closed if silent past min(SNIFF_TIMEOUT_MS, --idle-timeout-ms) */
    struct sniff *next, *prev;
};

#define SNIFF_TIMEOUT_MS 10000

static void sniff_unlink(struct sniff *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        s->node->sniffs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    sm_free(s);
}

static void free_tcp(uv_handle_t *h)
{
    raft_free(h);
}

static void sniff_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct sniff *s = h->data;
    /* Never read past the preamble: raft must get its stream from the first byte on. */
    b->base = (char *)s->buf + s->have;
    b->len = s->need - s->have;
}

static void sniff_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    struct sniff *s = st->data;
    if (nread < 0) {
        uv_close((uv_handle_t *)s->tcp, free_tcp);
        sniff_unlink(s);
        return;
    }
    s->have += (size_t)nread;
    if (s->have == 0)
        return;
    if (s->buf[0] != PROTO_PEER_MAGIC[0]) {
        uv_read_stop(st);
        conn_start_client(s->node, s->tcp, (const char *)s->buf, s->have);
        sniff_unlink(s);
        return;
    }
    struct proto_peer peer;
    struct err err;
    size_t used;
    int rc = proto_peer_decode(s->buf, s->have, &peer, &used, &err);
    if (rc == 0) {
        s->need = used;
        return;
    }
    uv_read_stop(st);
    struct node_group *g = rc == 1 ? node_group(s->node, peer.group) : NULL;
    if (g == NULL || g->group == NULL) {
        /* Not (yet) hosted here: the peer retries, and a replica the placement gives us
         * is opened by the next reconcile. */
        log_debug("rejected a raft peer connection: %s",
                  rc != 1 ? err.msg : "group not hosted on this node");
        uv_close((uv_handle_t *)s->tcp, free_tcp);
    } else {
        s->tcp->data = NULL;
        repl_group_accept(g->group, peer.node_id, peer.address, (uv_stream_t *)s->tcp);
    }
    sniff_unlink(s);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct node *n = server->data;
    if (status < 0 || n->stopping)
        return;
    uv_tcp_t *tcp = raft_malloc(sizeof *tcp);
    struct sniff *s = sm_calloc(1, sizeof *s);
    if (tcp == NULL || s == NULL) {
        raft_free(tcp);
        sm_free(s);
        return;
    }
    uv_tcp_init(n->loop, tcp);
    if (uv_accept(server, (uv_stream_t *)tcp)) {
        uv_close((uv_handle_t *)tcp, free_tcp);
        sm_free(s);
        return;
    }
    uv_tcp_nodelay(tcp, 1);
    s->node = n;
    s->tcp = tcp;
    s->need = PROTO_PEER_FIXED;
    s->since_ms = uv_now(n->loop);
    tcp->data = s;
    s->next = n->sniffs;
    if (n->sniffs)
        n->sniffs->prev = s;
    n->sniffs = s;
    if (uv_read_start((uv_stream_t *)tcp, sniff_alloc, sniff_read)) {
        uv_close((uv_handle_t *)tcp, free_tcp);
        sniff_unlink(s);
    }
}

/* ---- Events, idle sessions, joining --------------------------------------------------- */

/* Has the peer sent bytes the loop has not read yet? Timers run before I/O in a loop
 * iteration, so an "idle" connection may hold a request that just arrived: closing it
 * then would turn that request into an unknown outcome for the client. */
static bool bytes_waiting(uv_tcp_t *tcp)
{
    uv_os_fd_t fd;
    uint8_t b;
    if (uv_fileno((uv_handle_t *)tcp, &fd) != 0)
        return false;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

static void on_idle_check(uv_timer_t *t)
{
    struct node *n = t->data;
    uint64_t now = uv_now(n->loop);
    for (struct sniff *s = n->sniffs, *next; s; s = next) {
        next = s->next;
        uint64_t limit = n->cfg.idle_timeout_ms < SNIFF_TIMEOUT_MS ? n->cfg.idle_timeout_ms
                                                                   : SNIFF_TIMEOUT_MS;
        if (now - s->since_ms > limit) {
            uv_close((uv_handle_t *)s->tcp, free_tcp);
            sniff_unlink(s);
        }
    }
    for (struct conn *c = n->conns, *next; c; c = next) {
        next = c->next;
        if (c->state != CONN_CLOSING && c->refs == 1 &&
            now - c->last_active_ms > n->cfg.idle_timeout_ms && !bytes_waiting(c->tcp)) {
            log_info("closing an idle client connection");
            conn_close(c);
        }
    }
}

struct join_state {
    struct node *node;
    uv_timer_t timer;
    int attempts;
    size_t next;
    char hint[REPL_ADDRESS_MAX + 1]; /* the meta leader, when a member named it */
    /* Random per process: the meta leader recognizes a retry of this join by it (an
     * earlier attempt applied but answered with an error) and tells it from a node that
     * lost its data and asks under its old id (node/admin.c). "" if none could be made. */
    char token[33];
};

static void join_try(uv_timer_t *t);

static void join_closed(uv_handle_t *h)
{
    sm_free(h->data); /* the join_state the timer is embedded in */
}

static void join_done(void *arg, int code, const uint8_t *result, size_t len,
                      const char *message, const char *leader)
{
    struct join_state *js = arg;
    if (code == STRATA_ALREADY_EXISTS && js->node->fresh) {
        /* Our data dir is empty but the cluster already counts this id: this node lost
         * its data. Voting under the old id could elect a stale leader (Raft assumes
         * stable storage), so stop. */
        log_error("node id %llu is already a member but this data dir is new: if the node "
                  "lost its data, remove it (strata cluster remove-node %llu) and join with "
                  "a new --node-id",
                  (unsigned long long)js->node->cfg.node_id,
                  (unsigned long long)js->node->cfg.node_id);
        uv_close((uv_handle_t *)&js->timer, join_closed);
        js->node->exit_code = 2;
        node_stop(js->node);
        return;
    }
    if (code == 0 || code == STRATA_ALREADY_EXISTS) {
        bool again = false;
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        msgpack_object o;
        size_t off = 0;
        if (code == 0 && result && len &&
            msgpack_unpack((const char *)result, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *v = node_map_get(&o, "already_member");
            again = v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
        }
        msgpack_zone_destroy(&z);
        log_info("joined the cluster as node %llu%s", (unsigned long long)js->node->cfg.node_id,
                 again ? " (already a member at this address: an earlier attempt of this join "
                         "was applied)"
                       : "");
        uv_close((uv_handle_t *)&js->timer, join_closed);
        return;
    }
    log_warn("join attempt %d failed: %s: %s", js->attempts, err_name(code),
             message ? message : "");
    /* Membership changes run on the meta leader: go there next. */
    snprintf(js->hint, sizeof js->hint, "%s",
             code == STRATA_NOT_LEADER && leader && *leader ? leader : "");
    if (js->node->stopping || js->attempts >= 60) {
        uv_close((uv_handle_t *)&js->timer, join_closed);
        return;
    }
    uv_timer_start(&js->timer, join_try, 1000, 0);
}

static void join_try(uv_timer_t *t)
{
    struct join_state *js = t->data;
    struct node *n = js->node;
    if (n->stopping) {
        uv_close((uv_handle_t *)&js->timer, join_closed);
        return;
    }
    js->attempts++;
    char addr[REPL_ADDRESS_MAX + 1];
    const char *list = n->cfg.join;
    size_t idx = js->next++, i = 0;
    const char *p = list;
    size_t count = 1;
    for (const char *q = list; *q; q++)
        count += *q == ',';
    idx %= count;
    while (i < idx && (p = strchr(p, ',')) != NULL) {
        p++;
        i++;
    }
    size_t l = strcspn(p, ",");
    snprintf(addr, sizeof addr, "%.*s", (int)l, p);
    if (js->hint[0])
        snprintf(addr, sizeof addr, "%s", js->hint);
    struct buf b;
    buf_init(&b);
    char cmd[REPL_ADDRESS_MAX + 192]; /* with a 20-digit id and a 32-digit token */
    snprintf(cmd, sizeof cmd,
             "{\"op\":\"cluster.add_member\",\"id\":%llu,\"address\":\"%s\"%s%s%s}",
             (unsigned long long)n->cfg.node_id, n->cfg.advertise,
             js->token[0] ? ",\"join_token\":\"" : "", js->token, js->token[0] ? "\"" : "");
    struct err err;
    if (storage_json_to_value(cmd, strlen(cmd), &b, &err) == 0)
        fwd_request(n, addr, node_self_secret(n), b.data, b.len, 0,
                    join_done, js);
    buf_close(&b);
}

/* ---- Start and stop ----------------------------------------------------------------------- */

/* A cluster id every bootstrap member derives alike: SHA-256 of the member list. */
static void cluster_id_of(const struct node_config *c, char *out, size_t cap)
{
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < c->nmembers; i++)
        buf_printf(&b, "%llu=%s;", (unsigned long long)c->members[i].id, c->members[i].address);
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(b.data ? b.data : (uint8_t *)"", b.len, md, &mdlen, EVP_sha256(), NULL);
    buf_close(&b);
    snprintf(out, cap, "%02x%02x%02x%02x%02x%02x%02x%02x", md[0], md[1], md[2], md[3], md[4],
             md[5], md[6], md[7]);
}

static int write_identity(struct node *n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/node", n->cfg.data_dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int bad = fprintf(f, "%llu %s\n", (unsigned long long)n->cfg.node_id, n->cluster_id) < 0;
    return fclose(f) != 0 || bad ? -1 : 0;
}

void node_set_cluster_id(struct node *n, const char *id, size_t len)
{
    snprintf(n->cluster_id, sizeof n->cluster_id, "%.*s", (int)len, id);
    if (write_identity(n))
        log_warn("cannot record the cluster id in the data dir: %s", strerror(errno));
    else
        log_info("cluster id is %s", n->cluster_id);
}

/* DIR/node: "node_id cluster_id", written once; a restart must use the same identity. */
static int load_identity(struct node *n, struct err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/node", n->cfg.data_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned long long id = 0;
        char cid[64] = "";
        int ok = fscanf(f, "%llu %63s", &id, cid) == 2;
        fclose(f);
        if (!ok)
            return err_set(err, STRATA_INTERNAL, "%s is corrupt", path);
        if (n->cfg.node_id && n->cfg.node_id != id)
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "--node-id %llu differs from the data dir's node id %llu",
                           (unsigned long long)n->cfg.node_id, id);
        n->cfg.node_id = id;
        snprintf(n->cluster_id, sizeof n->cluster_id, "%s", cid);
        return 0;
    }
    if (n->cfg.node_id == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "no node id: give --node-id, or --bootstrap with this node's address");
    if (n->cfg.nmembers)
        cluster_id_of(&n->cfg, n->cluster_id, sizeof n->cluster_id);
    else
        snprintf(n->cluster_id, sizeof n->cluster_id, "joining");
    if (write_identity(n))
        return err_set(err, STRATA_INTERNAL, "cannot write %s: %s", path, strerror(errno));
    return 0;
}

/* Open and start this node's groups.
 * - bootstrap (a new cluster, fresh data dir): the initial layout (placement_initial over
 *   the --bootstrap list) says which groups this node hosts and with which members;
 *   group 0 (meta) goes on the first PL_META_MAX_VOTERS members; every node opens group
 *   0 (a node outside the meta group keeps an empty one, ready to be added).
 * - restart: every group found on disk.
 * - join: group 0 only; the placement table brings the rest (shards.c reconcile). */
static int start_groups(struct node *n, bool bootstrap, struct err *err)
{
    int rc;
    if (bootstrap) {
        struct pl_node members[NODE_MAX_MEMBERS];
        for (size_t i = 0; i < n->cfg.nmembers; i++) {
            members[i].id = n->cfg.members[i].id;
            snprintf(members[i].address, sizeof members[i].address, "%s",
                     n->cfg.members[i].address);
            members[i].state = PL_NODE_ACTIVE;
        }
        struct placement p;
        placement_init(&p);
        if ((rc = placement_initial(&p, members, n->cfg.nmembers, n->cfg.shards, n->cfg.rf, err)))
            return rc;
        size_t meta = n->cfg.nmembers < PL_META_MAX_VOTERS ? n->cfg.nmembers : PL_META_MAX_VOTERS;
        bool in_meta = false;
        for (size_t i = 0; i < meta; i++)
            in_meta = in_meta || n->cfg.members[i].id == n->cfg.node_id;
        rc = node_group_start(n, 0, n->cfg.members, in_meta ? meta : 0, err);
        for (size_t i = 0; rc == 0 && i < p.nshards; i++) {
            const struct pl_shard *s = &p.shards[i];
            if (!placement_shard_has(s, n->cfg.node_id))
                continue;
            struct repl_member ms[PL_MAX_REPLICAS];
            for (uint32_t k = 0; k < s->nreplicas; k++) {
                const struct pl_node *nd = placement_node(&p, s->replicas[k]);
                ms[k].id = nd->id;
                snprintf(ms[k].address, sizeof ms[k].address, "%s", nd->address);
            }
            rc = node_group_start(n, s->id, ms, s->nreplicas, err);
        }
        placement_free(&p);
    } else {
        uint32_t ids[PL_MAX_SHARDS + 1];
        size_t cnt = node_groups_on_disk(n, ids, PL_MAX_SHARDS + 1);
        if (cnt > 0 && n->cfg.nmembers > 0)
            log_info("the data dir already holds raft state; bootstrap skipped");
        rc = node_group(n, 0) || (cnt > 0 && ids[0] == 0) ? 0 : node_group_start(n, 0, NULL, 0, err);
        for (size_t i = 0; rc == 0 && i < cnt; i++)
            rc = node_group_start(n, ids[i], NULL, 0, err);
    }
    if (rc == 0)
        shards_start(n);
    return rc;
}

/* ---- Safe bootstrap ------------------------------------------------------------------------
 * Raft assumes stable storage. A member that lost its disk and restarts with the same
 * --bootstrap line would come back under its old id with an empty log and vote — and a
 * stale member plus this one can elect a leader that lacks acknowledged writes. So a
 * fresh data dir does not bootstrap blindly: it asks the other initial members for their
 * status every 500 ms and
 *   - refuses to start (exit 2) if any of them reports this cluster already formed
 *     (log index >= 2: more than the bootstrap entry) — the operator removes the node
 *     and lets it join under a new id;
 *   - bootstraps once a majority (with itself) answered and none reported a formed
 *     cluster: a cluster being created, all its members new.
 * Until then the node answers clients UNAVAILABLE and refuses peer connections. */
static void probe_done(void *arg, int code, const uint8_t *result, size_t len,
                       const char *message, const char *leader)
{
    (void)message;
    (void)leader;
    struct node *n = arg;
    if (code != 0 || !n->probing)
        return;
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)result, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS &&
        o.type == MSGPACK_OBJECT_MAP) {
        uint64_t last = 0;
        char cid[64] = "", addr[REPL_ADDRESS_MAX + 1] = "";
        for (uint32_t i = 0; i < o.via.map.size; i++) {
            const msgpack_object *k = &o.via.map.ptr[i].key, *v = &o.via.map.ptr[i].val;
            if (k->type != MSGPACK_OBJECT_STR)
                continue;
            if (k->via.str.size == 10 && memcmp(k->via.str.ptr, "last_index", 10) == 0 &&
                v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                last = v->via.u64;
            if (k->via.str.size == 10 && memcmp(k->via.str.ptr, "cluster_id", 10) == 0 &&
                v->type == MSGPACK_OBJECT_STR && v->via.str.size < sizeof cid)
                snprintf(cid, sizeof cid, "%.*s", (int)v->via.str.size, v->via.str.ptr);
            if (k->via.str.size == 7 && memcmp(k->via.str.ptr, "address", 7) == 0 &&
                v->type == MSGPACK_OBJECT_STR && v->via.str.size < sizeof addr)
                snprintf(addr, sizeof addr, "%.*s", (int)v->via.str.size, v->via.str.ptr);
        }
        if (strcmp(cid, n->cluster_id) == 0) {
            n->probe_answered++;
            if (last >= 2 && !n->probe_formed) {
                n->probe_formed = 1;
                n->probe_formed_index = last;
                snprintf(n->probe_formed_by, sizeof n->probe_formed_by, "%s", addr);
            }
        } else {
            log_warn("initial member %s belongs to another cluster (%s)", addr, cid);
        }
    }
    msgpack_zone_destroy(&z);
}

static void probe_tick(uv_timer_t *t)
{
    struct node *n = t->data;
    if (!n->probing || n->stopping)
        return;
    size_t others = n->cfg.nmembers - 1, need = n->cfg.nmembers / 2;
    if (n->probe_formed) {
        n->probing = false;
        uv_timer_stop(t);
        log_error("this data dir is new, but the cluster it would bootstrap already exists "
                  "(%s reports log index %llu): this node lost its data and must not vote "
                  "under its old id. Remove it (strata cluster remove-node %llu), then start "
                  "it with --join and a new --node-id",
                  n->probe_formed_by, (unsigned long long)n->probe_formed_index,
                  (unsigned long long)n->cfg.node_id);
        n->exit_code = 2;
        node_stop(n);
        return;
    }
    if (n->probe_round > 0 && n->probe_answered >= need) {
        n->probing = false;
        uv_timer_stop(t);
        struct err err;
        err_clear(&err);
        log_info("%u of %zu other initial members answered, none has data: bootstrapping",
                 n->probe_answered, others);
        if (start_groups(n, true, &err)) {
            log_error("cannot start: %s: %s", err_name(err.code), err.msg);
            n->exit_code = 1;
            node_stop(n);
        }
        return;
    }
    if (n->probe_round > 0 && n->probe_round % 20 == 0)
        log_info("still waiting for the initial members (%u of the %zu needed answered)",
                 n->probe_answered, need);
    n->probe_round++;
    n->probe_answered = 0;
    static const uint8_t status_cmd[] = {0x81, 0xa2, 'o', 'p', 0xae, 'c', 'l', 'u', 's', 't',
                                         'e', 'r', '.', 's', 't', 'a', 't', 'u', 's'};
    for (size_t i = 0; i < n->cfg.nmembers; i++)
        if (n->cfg.members[i].id != n->cfg.node_id)
            fwd_request(n, n->cfg.members[i].address, node_self_secret(n),
                        status_cmd, sizeof status_cmd, 0, probe_done, n);
}

int node_start(struct node *n, struct err *err)
{
    int rc;
    if (mkdir(n->cfg.data_dir, 0700) && errno != EEXIST)
        return err_set(err, STRATA_INVALID_ARGUMENT, "cannot create %s: %s", n->cfg.data_dir,
                       strerror(errno));
    for (size_t i = 0; i < n->cfg.nmembers && n->cfg.node_id == 0; i++)
        if (strcmp(n->cfg.members[i].address, n->cfg.advertise) == 0)
            n->cfg.node_id = n->cfg.members[i].id;
    if ((rc = load_identity(n, err)))
        return rc;
    if ((rc = backup_init(n, err)))
        return rc;
    /* Fresh = no Raft state yet (not "no identity file": a node that refused to start
     * still has one, and must keep refusing). */
    uint32_t on_disk[1];
    n->fresh = node_groups_on_disk(n, on_disk, 1) == 0;
    if (n->cfg.api_keys_file) {
        if ((rc = auth_load(n->cfg.api_keys_file, &n->auth, err)))
            return rc;
    } else {
        n->open_mode = true;
    }
    bool probe = n->fresh && n->cfg.nmembers > 1;
    /* The group starts before the port opens (a node that accepts connections has its
     * state loaded), except when it must first ask the other members (safe bootstrap). */
    if (!probe && (rc = start_groups(n, n->fresh && n->cfg.nmembers > 0, err)))
        return rc;
    struct sockaddr_in sa;
    if (uv_ip4_addr(n->cfg.listen_host, n->cfg.listen_port, &sa))
        return err_set(err, STRATA_INVALID_ARGUMENT, "bad listen address %s", n->cfg.listen_host);
    uv_tcp_init(n->loop, &n->listener);
    n->listener.data = n;
    if ((rc = uv_tcp_bind(&n->listener, (const struct sockaddr *)&sa, 0)) ||
        (rc = uv_listen((uv_stream_t *)&n->listener, 511, on_connection)))
        return err_set(err, STRATA_UNAVAILABLE, "cannot listen on %s:%d: %s", n->cfg.listen_host,
                       n->cfg.listen_port, uv_strerror(rc));
    if (probe) {
        /* Safe bootstrap: see probe_tick. */
        uv_timer_init(n->loop, &n->probe_timer);
        n->probe_timer.data = n;
        n->probing = true;
        uv_timer_start(&n->probe_timer, probe_tick, 0, 500);
        log_info("new data dir: waiting for a majority of the initial members before "
                 "bootstrapping");
    }
    if ((rc = observe_start(n, err)))
        return rc;
    uv_timer_init(n->loop, &n->idle_timer);
    n->idle_timer.data = n;
    uv_timer_start(&n->idle_timer, on_idle_check, 1000, 1000);
    if (n->cfg.join[0] && n->cfg.nmembers == 0) {
        struct join_state *js = sm_calloc(1, sizeof *js);
        if (js) {
            js->node = n;
            unsigned char raw[16];
            if (RAND_bytes(raw, sizeof raw) == 1)
                for (size_t i = 0; i < sizeof raw; i++)
                    snprintf(js->token + 2 * i, 3, "%02x", raw[i]);
            else
                log_warn("no random bytes for a join token: a retry of a join that was "
                         "applied will be refused");
            log_info("joining as node %llu at %s (join token %s)",
                     (unsigned long long)n->cfg.node_id, n->cfg.advertise,
                     js->token[0] ? js->token : "none");
            uv_timer_init(n->loop, &js->timer);
            js->timer.data = js;
            uv_timer_start(&js->timer, join_try, 100, 0);
        }
    }
    log_info("node %llu listening on %s:%d (advertised %s), cluster %s%s",
             (unsigned long long)n->cfg.node_id, n->cfg.listen_host, n->cfg.listen_port,
             n->cfg.advertise, n->cluster_id, n->open_mode ? ", open mode (no API keys)" : "");
    return 0;
}

static void groups_stopped(struct node *n)
{
    log_info("replication stopped");
    backup_free(n);
    /* Close every remaining handle; uv_run returns when none is left. */
    uv_close((uv_handle_t *)&n->idle_timer, NULL);
    uv_close((uv_handle_t *)&n->sigterm, NULL);
    uv_close((uv_handle_t *)&n->sigint, NULL);
    observe_stop(n); /* kept open until here: /readyz says "stopping" meanwhile */
    if (n->fresh && n->cfg.nmembers > 1)
        uv_close((uv_handle_t *)&n->probe_timer, NULL);
}

void node_stop(struct node *n)
{
    if (n->stopping)
        return;
    n->stopping = true;
    log_info("shutting down: transferring leadership if held, closing connections");
    uv_close((uv_handle_t *)&n->listener, NULL);
    while (n->sniffs) {
        uv_close((uv_handle_t *)n->sniffs->tcp, free_tcp);
        sniff_unlink(n->sniffs);
    }
    for (struct conn *c = n->conns; c; c = c->next)
        conn_close(c);
    fwd_close_all(n);
    n->probing = false;
    shards_stop(n, groups_stopped);
}
