/* Client connections: handshake, requests in and responses out (any order), the
 * session's default branch/space, authentication, and node-level commands. */
#include "node.h"
#include "observe.h"

#include <openssl/evp.h>
#include <raft.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Send bytes (ownership of `data` passes here). */
static void conn_send(struct conn *c, struct buf *data)
{
    if (c->state == CONN_CLOSING) {
        buf_close(data);
        return;
    }
    if (stream_write((uv_stream_t *)c->tcp, data))
        conn_close(c);
}

static void send_error_and_close(struct conn *c, int code, const char *msg)
{
    struct buf b;
    buf_init(&b);
    if (proto_error_append(&b, code, msg) == 0)
        conn_send(c, &b);
    buf_close(&b);
    log_info("client connection closed: %s: %s", err_name(code), msg);
    conn_close(c);
}

static void conn_unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    struct node *n = c->node;
    if (c->prev)
        c->prev->next = c->next;
    else
        n->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    proto_reader_close(&c->rd);
    sm_free(c->cred.key);
    buf_close(&c->held);
    sm_free(c);
}

static void closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    raft_free(h); /* accepted handles are allocated with raft_malloc (server.c) */
    conn_unref(c);
}

void conn_close(struct conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    uv_read_stop((uv_stream_t *)c->tcp);
    uv_close((uv_handle_t *)c->tcp, closed);
}

/* ---- Requests --------------------------------------------------------------------------- */

struct pending {
    struct conn *c;
    uint64_t id;
    int op;         /* metrics: the op label (observe_op) */
    uint64_t t0_ns; /* metrics: when the request was decoded */
};

static void respond(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                    const char *leader)
{
    struct pending *p = arg;
    struct conn *c = p->c;
    struct buf b;
    buf_init(&b);
    int rc = code == 0 ? proto_response_ok_append(&b, p->id, result, len)
                       : proto_response_err_append(&b, p->id, code, message ? message : "",
                                                   leader && *leader ? leader : NULL);
    if (rc == 0)
        conn_send(c, &b);
    else
        conn_close(c); /* never leave a request unanswered on an open connection */
    buf_close(&b);
    observe_command(c->node, p->op, code, uv_hrtime() - p->t0_ns);
    sm_free(p);
    conn_unref(c);
}

static void respond_now(struct conn *c, uint64_t id, int op, int code, const char *message)
{
    struct pending *p = sm_malloc(sizeof *p);
    if (p == NULL) {
        conn_close(c);
        return;
    }
    *p = (struct pending){c, id, op, uv_hrtime()};
    c->refs++;
    respond(p, code, NULL, 0, message, NULL);
}

static int digest_w(void *arg, const void *p, size_t n)
{
    return EVP_DigestUpdate(arg, p, n) == 1 ? 0 : STRATA_INTERNAL;
}

static void engine_digest(struct storage *e, char hex[65])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[32];
    unsigned int mdlen = 0;
    struct err err;
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
        storage_snapshot(e, digest_w, ctx, &err) == 0 && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1)
        for (unsigned k = 0; k < mdlen && k < 32; k++)
            snprintf(hex + 2 * k, 3, "%02x", md[k]);
    EVP_MD_CTX_free(ctx);
}

/* cluster.status {digest?}: this node's view of the meta group (top level, as before
 * sharding) and of every group it hosts. */
static void cluster_status(struct conn *c, uint64_t id, int op, bool digest)
{
    struct node *n = c->node;
    struct repl_status st;
    node_status(n, &st);
    static const char *const roles[] = {"", "follower", "candidate", "leader", "unavailable"};
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 14);
    node_pack_str(&pk, "node_id");
    msgpack_pack_uint64(&pk, n->cfg.node_id);
    node_pack_str(&pk, "address");
    node_pack_str(&pk, n->cfg.advertise);
    node_pack_str(&pk, "cluster_id");
    node_pack_str(&pk, n->cluster_id);
    node_pack_str(&pk, "role");
    node_pack_str(&pk, roles[st.role < 5 ? st.role : 4]);
    node_pack_str(&pk, "leader_id");
    msgpack_pack_uint64(&pk, st.leader_id);
    node_pack_str(&pk, "leader");
    node_pack_str(&pk, st.leader_address);
    node_pack_str(&pk, "term");
    msgpack_pack_uint64(&pk, st.term);
    node_pack_str(&pk, "commit_index");
    msgpack_pack_uint64(&pk, st.commit_index);
    node_pack_str(&pk, "applied_index");
    msgpack_pack_uint64(&pk, st.applied_index);
    node_pack_str(&pk, "last_index");
    msgpack_pack_uint64(&pk, st.last_index);
    node_pack_str(&pk, "forwarded");
    msgpack_pack_uint64(&pk, n->forwarded);
    node_pack_str(&pk, "members");
    msgpack_pack_array(&pk, (uint32_t)st.nmembers);
    for (size_t i = 0; i < st.nmembers; i++) {
        msgpack_pack_map(&pk, 4);
        node_pack_str(&pk, "id");
        msgpack_pack_uint64(&pk, st.members[i].id);
        node_pack_str(&pk, "address");
        node_pack_str(&pk, st.members[i].address);
        node_pack_str(&pk, "voter");
        if (st.members[i].voter)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
        node_pack_str(&pk, "leader");
        if (st.members[i].id == st.leader_id)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
    }
    /* Every group this node hosts (0 = meta), and the placement epoch it knows. */
    node_pack_str(&pk, "epoch");
    msgpack_pack_uint64(&pk, n->have_pl ? n->pl.epoch : 0);
    node_pack_str(&pk, "groups");
    uint32_t ng = 0;
    for (uint32_t gid = 0; gid <= PL_MAX_SHARDS; gid++)
        ng += node_group(n, gid) != NULL;
    msgpack_pack_array(&pk, ng);
    for (uint32_t gid = 0; gid <= PL_MAX_SHARDS; gid++) {
        if (node_group(n, gid) == NULL)
            continue;
        struct repl_status gs;
        node_group_status(n, gid, &gs);
        msgpack_pack_map(&pk, 11);
        node_pack_str(&pk, "id");
        msgpack_pack_uint32(&pk, gid);
        node_pack_str(&pk, "disk_error"); /* "" unless the disk watchdog refuses writes */
        node_pack_str(&pk, gs.disk_error);
        node_pack_str(&pk, "leader_id");
        msgpack_pack_uint64(&pk, gs.leader_id);
        node_pack_str(&pk, "role");
        node_pack_str(&pk, roles[gs.role < 5 ? gs.role : 4]);
        node_pack_str(&pk, "leader");
        node_pack_str(&pk, gs.leader_address);
        node_pack_str(&pk, "term");
        msgpack_pack_uint64(&pk, gs.term);
        node_pack_str(&pk, "commit_index");
        msgpack_pack_uint64(&pk, gs.commit_index);
        node_pack_str(&pk, "applied_index");
        msgpack_pack_uint64(&pk, gs.applied_index);
        node_pack_str(&pk, "last_index");
        msgpack_pack_uint64(&pk, gs.last_index);
        node_pack_str(&pk, "digest");
        {
            /* SHA-256 of the engine's snapshot (deterministic): equal on replicas that
             * applied the same entries. Costs a full encode, so only on request. */
            char hex[65] = "";
            if (digest)
                engine_digest(node_group(n, gid)->engine, hex);
            node_pack_str(&pk, hex);
        }
        node_pack_str(&pk, "members");
        msgpack_pack_array(&pk, (uint32_t)gs.nmembers);
        for (size_t k = 0; k < gs.nmembers; k++) {
            msgpack_pack_map(&pk, 2);
            node_pack_str(&pk, "id");
            msgpack_pack_uint64(&pk, gs.members[k].id);
            node_pack_str(&pk, "voter");
            if (gs.members[k].voter)
                msgpack_pack_true(&pk);
            else
                msgpack_pack_false(&pk);
        }
    }
    struct pending *p = sm_malloc(sizeof *p);
    if (p && b.len > 0) {
        *p = (struct pending){c, id, op, uv_hrtime()};
        c->refs++;
        respond(p, 0, b.data, b.len, NULL, NULL);
    } else {
        sm_free(p);
        conn_close(c);
    }
    buf_close(&b);
}

/* session.use {branch?, space?}: the defaults for this connection's later commands. */
static int session_use(struct conn *c, const msgpack_object *cmd, struct err *err)
{
    const msgpack_object *br = node_map_get(cmd, "branch"), *sp = node_map_get(cmd, "space");
    if (br && (br->type != MSGPACK_OBJECT_STR || br->via.str.size == 0 ||
               br->via.str.size >= sizeof c->sess.branch ||
               memchr(br->via.str.ptr, 0, br->via.str.size)))
        return err_set(err, STRATA_INVALID_ARGUMENT, "argument 'branch' must be a branch name");
    if (sp && (sp->type != MSGPACK_OBJECT_STR || sp->via.str.size == 0 ||
               sp->via.str.size >= sizeof c->sess.space ||
               memchr(sp->via.str.ptr, 0, sp->via.str.size)))
        return err_set(err, STRATA_INVALID_ARGUMENT, "argument 'space' must be a space name");
    if (br)
        snprintf(c->sess.branch, sizeof c->sess.branch, "%.*s", (int)br->via.str.size,
                 br->via.str.ptr);
    if (sp)
        snprintf(c->sess.space, sizeof c->sess.space, "%.*s", (int)sp->via.str.size,
                 sp->via.str.ptr);
    return 0;
}

/* Add the session's branch/space to a command that names none (data commands only). */
static int apply_session(struct conn *c, const msgpack_object *cmd, const char *op,
                         struct buf *out)
{
    bool add_branch = strcmp(c->sess.branch, "default") != 0 && !node_map_get(cmd, "branch");
    bool add_space = strcmp(c->sess.space, "default") != 0 && !node_map_get(cmd, "space");
    if (strncmp(op, "branch.", 7) == 0 || (!add_branch && !add_space))
        return 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, node_buf_w);
    msgpack_pack_map(&pk, cmd->via.map.size + add_branch + add_space);
    for (uint32_t i = 0; i < cmd->via.map.size; i++) {
        msgpack_pack_object(&pk, cmd->via.map.ptr[i].key);
        msgpack_pack_object(&pk, cmd->via.map.ptr[i].val);
    }
    if (add_branch) {
        node_pack_str(&pk, "branch");
        node_pack_str(&pk, c->sess.branch);
    }
    if (add_space) {
        node_pack_str(&pk, "space");
        node_pack_str(&pk, c->sess.space);
    }
    return 1;
}

/* ---- Authorization ----------------------------------------------------------------------
 * authz.c decides; a denial from the cache is confirmed against a fresh read first: the
 * frame is held (later frames wait, so a session's order holds) and handled again. */

static void handle_hello(struct conn *c, const struct proto_frame *f);
static void handle_request(struct conn *c, const struct proto_frame *f);
static void on_frames(struct conn *c);

static void auth_confirmed(void *arg)
{
    struct conn *c = arg;
    c->auth_waiting = false;
    if (c->state != CONN_CLOSING) {
        struct proto_frame f = {PROTO_VERSION, c->held_kind, c->held.data, c->held.len};
        c->auth_confirmed = true;
        if (f.kind == PROTO_HELLO)
            handle_hello(c, &f);
        else
            handle_request(c, &f);
        c->auth_confirmed = false;
        buf_close(&c->held);
        if (c->state != CONN_CLOSING && !c->auth_waiting)
            on_frames(c); /* the frames that arrived meanwhile */
    }
    conn_unref(c);
}

static void hold(struct conn *c, const struct proto_frame *f)
{
    buf_reset(&c->held);
    if (buf_append(&c->held, f->body, f->len)) {
        send_error_and_close(c, STRATA_OUT_OF_MEMORY, "out of memory");
        return;
    }
    c->held_kind = f->kind;
    c->auth_waiting = true;
    c->refs++;
    authz_confirm(c->node, auth_confirmed, c);
}

/* 0: go on. Else the request was answered (denied) or held. */
static int authorize(struct conn *c, const struct proto_frame *f, uint64_t id, int opi,
                     enum authz_perm need, const char *const *names, const size_t *lens,
                     size_t n)
{
    struct err err;
    err_clear(&err);
    int rc = authz_request(c->node, c->key ? c->digest : NULL, need, names, lens, n,
                           c->auth_confirmed, &err);
    if (rc == AUTHZ_AGAIN)
        hold(c, f);
    else if (rc)
        respond_now(c, id, opi, rc, err.msg);
    return rc;
}

static void handle_request(struct conn *c, const struct proto_frame *f)
{
    struct err err;
    err_clear(&err);
    struct proto_request req;
    int rc = proto_request_decode(f, &req, &err);
    if (rc) {
        send_error_and_close(c, rc, err.msg);
        return;
    }
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object cmd;
    size_t off = 0;
    struct buf rewritten;
    buf_init(&rewritten);
    const uint8_t *bytes = req.cmd;
    size_t blen = req.cmd_len;
    int opi = OBSERVE_OP_UNKNOWN;
    if (msgpack_unpack((const char *)req.cmd, req.cmd_len, &off, &z, &cmd) !=
        MSGPACK_UNPACK_SUCCESS) {
        respond_now(c, req.id, opi, STRATA_INVALID_ARGUMENT, "command cannot be decoded");
        goto out;
    }
    const msgpack_object *opo = node_map_get(&cmd, "op");
    char op[64] = "";
    if (opo && opo->type == MSGPACK_OBJECT_STR && opo->via.str.size >= sizeof op) {
        respond_now(c, req.id, opi, STRATA_INVALID_ARGUMENT,
                    "'op' is longer than any command name");
        goto out;
    }
    if (opo && opo->type == MSGPACK_OBJECT_STR)
        snprintf(op, sizeof op, "%.*s", (int)opo->via.str.size, opo->via.str.ptr);
    opi = observe_op(c->node, op);
    if (strcmp(op, "cluster.status") == 0) {
        if (authorize(c, f, req.id, opi, AUTHZ_NONE, NULL, NULL, 0))
            goto out;
        const msgpack_object *dg = node_map_get(&cmd, "digest");
        cluster_status(c, req.id, opi, dg && dg->type == MSGPACK_OBJECT_BOOLEAN && dg->via.boolean);
        goto out;
    }
    if (strcmp(op, "cluster.placement") == 0 || strcmp(op, "cluster.assign") == 0) {
        bool assign = op[8] == 'a';
        if (!assign && authorize(c, f, req.id, opi, AUTHZ_NONE, NULL, NULL, 0))
            goto out;
        if (assign && authz_on(c->node)) {
            /* Assigning names is part of creating them: a write on those branches. */
            const msgpack_object *nm = node_map_get(&cmd, "names");
            uint32_t cnt = nm && nm->type == MSGPACK_OBJECT_ARRAY ? nm->via.array.size : 0;
            const char **names = sm_calloc(cnt + 1, sizeof *names);
            size_t *lens = sm_calloc(cnt + 1, sizeof *lens), k = 0;
            for (uint32_t i = 0; names && lens && i < cnt; i++)
                if (nm->via.array.ptr[i].type == MSGPACK_OBJECT_STR) {
                    names[k] = nm->via.array.ptr[i].via.str.ptr;
                    lens[k++] = nm->via.array.ptr[i].via.str.size;
                }
            rc = names && lens ? authorize(c, f, req.id, opi, AUTHZ_WRITE, names, lens, k)
                               : STRATA_OUT_OF_MEMORY;
            if (names == NULL || lens == NULL)
                respond_now(c, req.id, opi, rc, "out of memory");
            sm_free(names);
            sm_free(lens);
            if (rc)
                goto out;
        }
        struct pending *p = sm_malloc(sizeof *p);
        if (p == NULL) {
            respond_now(c, req.id, opi, STRATA_OUT_OF_MEMORY, "out of memory");
            goto out;
        }
        *p = (struct pending){c, req.id, opi, uv_hrtime()};
        c->refs++;
        if (assign) {
            node_assign(c->node, req.cmd, req.cmd_len, req.flags, c->key, respond, p);
        } else {
            const msgpack_object *fr = node_map_get(&cmd, "fresh");
            bool fresh = fr && fr->type == MSGPACK_OBJECT_BOOLEAN && fr->via.boolean;
            struct repl_status st;
            node_status(c->node, &st);
            if (fresh && (req.flags & PROTO_REQ_FORWARDED) && st.role != REPL_LEADER)
                /* A node asked us for the truth: only the meta leader has it. */
                respond(p, st.leader_address[0] ? STRATA_NOT_LEADER : STRATA_UNAVAILABLE, NULL,
                        0, "this node does not lead the meta group", st.leader_address);
            else
                node_placement(c->node, fresh, respond, p);
        }
        goto out;
    }
    if (strcmp(op, "auth.sync") == 0 && (req.flags & PROTO_REQ_FORWARDED)) {
        /* Another node refreshing its cache: only the meta leader has the truth, and only
         * it judges the request, from its own table — two nodes that both wait for a
         * current table must not wait on each other. */
        struct repl_status st;
        node_status(c->node, &st);
        if (st.role != REPL_LEADER) {
            struct pending *p = sm_malloc(sizeof *p);
            if (p == NULL) {
                respond_now(c, req.id, opi, STRATA_OUT_OF_MEMORY, "out of memory");
                goto out;
            }
            *p = (struct pending){c, req.id, opi, uv_hrtime()};
            c->refs++;
            respond(p, st.leader_address[0] ? STRATA_NOT_LEADER : STRATA_UNAVAILABLE, NULL, 0,
                    "this node does not lead the meta group", st.leader_address);
            goto out;
        }
    }
    if (strncmp(op, "cluster.", 8) == 0 || strncmp(op, "auth.", 5) == 0) {
        /* Cluster administration and the access table: admin on '*'. */
        if (authorize(c, f, req.id, opi, AUTHZ_ADMIN, NULL, NULL, 0))
            goto out;
        struct pending *p = sm_malloc(sizeof *p);
        if (p == NULL) {
            respond_now(c, req.id, opi, STRATA_OUT_OF_MEMORY, "out of memory");
            goto out;
        }
        *p = (struct pending){c, req.id, opi, uv_hrtime()};
        c->refs++;
        if (op[0] == 'a')
            authz_command(c->node, op, &cmd, req.cmd, req.cmd_len, req.flags, c->key, respond, p);
        else
            (backup_owns(op) ? backup_command : node_admin)(c->node, op, &cmd, req.cmd,
                                                            req.cmd_len, req.flags, c->key,
                                                            respond, p);
        goto out;
    }
    if (strcmp(op, "session.use") == 0) {
        rc = session_use(c, &cmd, &err);
        respond_now(c, req.id, opi, rc, rc ? err.msg : NULL);
        goto out;
    }
    if (apply_session(c, &cmd, op, &rewritten) == 1) {
        bytes = rewritten.data;
        blen = rewritten.len;
        msgpack_zone_clear(&z);
        off = 0;
        msgpack_unpack((const char *)bytes, blen, &off, &z, &cmd);
    }
    if (authz_on(c->node)) {
        enum storage_cmd_kind kind;
        const char *small_names[64];
        size_t small_lens[64];
        const char **names = small_names;
        size_t *lens = small_lens;
        rc = storage_cmd_kind(bytes, blen, &kind, &err);
        size_t nb = rc ? 0 : node_cmd_branches(&cmd, op, names, lens, 64);
        if (nb > 64) { /* e.g. branch.fork_many with many names: check every one */
            names = sm_malloc(nb * sizeof *names);
            lens = sm_malloc(nb * sizeof *lens);
            if (names == NULL || lens == NULL)
                rc = err_set(&err, STRATA_OUT_OF_MEMORY, "out of memory");
            else
                node_cmd_branches(&cmd, op, names, lens, nb);
        }
        if (rc)
            respond_now(c, req.id, opi, rc, err.msg);
        else
            rc = authorize(c, f, req.id, opi, kind == STORAGE_CMD_WRITE ? AUTHZ_WRITE : AUTHZ_READ,
                           names, lens, nb);
        if (names != small_names) {
            sm_free(names);
            sm_free(lens);
        }
        if (rc)
            goto out;
    }
    struct pending *p = sm_malloc(sizeof *p);
    if (p == NULL) {
        respond_now(c, req.id, opi, STRATA_OUT_OF_MEMORY, "out of memory");
        goto out;
    }
    *p = (struct pending){c, req.id, opi, uv_hrtime()};
    c->refs++;
    node_submit(c->node, bytes, blen, req.flags, &req.route, c->key, respond, p);
out:
    buf_close(&rewritten);
    msgpack_zone_destroy(&z);
}

static void handle_hello(struct conn *c, const struct proto_frame *f)
{
    struct err err;
    err_clear(&err);
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    struct proto_hello h;
    int rc = proto_hello_decode(f, &z, &h, &err);
    if (rc == 0 && (h.version_min > PROTO_VERSION || h.version_max < PROTO_VERSION))
        rc = err_set(&err, STRATA_PROTOCOL_ERROR,
                     "no common protocol version: client speaks %u-%u, server %u",
                     h.version_min, h.version_max, PROTO_VERSION);
    if (rc == 0) {
        rc = authz_hello(c->node, h.api_key, h.api_key_len, c->auth_confirmed, &err);
        if (rc == AUTHZ_AGAIN) {
            msgpack_zone_destroy(&z);
            hold(c, f);
            return;
        }
    }
    if (rc == 0 && h.api_key) {
        /* Kept in clear only to forward this connection's commands (the receiving node
         * checks it again); decisions use the digest. */
        static char star[] = "*";
        static char *all[] = {star};
        if ((c->cred.key = sm_strndup(h.api_key, h.api_key_len)) == NULL) {
            rc = err_set(&err, STRATA_OUT_OF_MEMORY, "out of memory");
        } else {
            authz_digest(h.api_key, h.api_key_len, c->digest);
            c->cred.write = true; /* what admin.c looks at: see node.h */
            c->cred.patterns = all;
            c->cred.npatterns = 1;
            c->key = &c->cred;
        }
    }
    msgpack_zone_destroy(&z);
    if (rc) {
        send_error_and_close(c, rc, err.msg);
        return;
    }
    struct repl_status st;
    node_status(c->node, &st);
    struct proto_welcome w = {PROTO_VERSION, c->node->cfg.node_id, c->node->cluster_id,
                              strlen(c->node->cluster_id), 0,
                              st.leader_address[0] ? st.leader_address : NULL,
                              strlen(st.leader_address)};
    struct buf b;
    buf_init(&b);
    /* This node's engine honors idempotency keys (storage/idem.c): clients may key and
     * resend writes sent on this connection (docs/protocol.md §4, Features). */
    if (proto_welcome_append_features(&b, &w, PROTO_FEAT_IDEM) == 0)
        conn_send(c, &b);
    buf_close(&b);
    c->state = CONN_READY;
}


static void on_frames(struct conn *c)
{
    struct proto_frame f;
    struct err err;
    int r = 0;
    while (c->state != CONN_CLOSING && !c->auth_waiting &&
           (r = proto_reader_next(&c->rd, &f, &err)) == 1) {
        if (c->state == CONN_HELLO_WAIT) {
            if (f.kind != PROTO_HELLO) {
                send_error_and_close(c, STRATA_PROTOCOL_ERROR, "the first frame must be HELLO");
                return;
            }
            handle_hello(c, &f);
        } else if (f.kind == PROTO_REQUEST) {
            handle_request(c, &f);
        } else {
            send_error_and_close(c, STRATA_PROTOCOL_ERROR, "unexpected frame kind");
            return;
        }
    }
    if (c->state != CONN_CLOSING && !c->auth_waiting && r != 0)
        send_error_and_close(c, r, err.msg);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = s->data;
    if (nread > 0) {
        c->last_active_ms = uv_now(c->node->loop);
        if (proto_reader_feed(&c->rd, b->base, (size_t)nread))
            send_error_and_close(c, STRATA_OUT_OF_MEMORY, "out of memory");
        else
            on_frames(c);
    } else if (nread < 0) {
        conn_close(c);
    }
    sm_free(b->base);
}

void conn_start_client(struct node *n, uv_tcp_t *tcp, const char *first, size_t len)
{
    struct conn *c = sm_calloc(1, sizeof *c);
    if (c == NULL) {
        uv_close((uv_handle_t *)tcp, (uv_close_cb)raft_free);
        return;
    }
    c->node = n;
    c->tcp = tcp;
    c->refs = 1;
    c->state = CONN_HELLO_WAIT;
    c->last_active_ms = uv_now(n->loop);
    strcpy(c->sess.branch, "default");
    strcpy(c->sess.space, "default");
    proto_reader_init(&c->rd, n->cfg.max_frame);
    tcp->data = c;
    c->next = n->conns;
    if (n->conns)
        n->conns->prev = c;
    n->conns = c;
    if (proto_reader_feed(&c->rd, first, len)) {
        send_error_and_close(c, STRATA_OUT_OF_MEMORY, "out of memory");
        return;
    }
    on_frames(c);
    if (c->state != CONN_CLOSING && uv_read_start((uv_stream_t *)tcp, node_alloc, on_read))
        conn_close(c);
}
