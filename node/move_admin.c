/* The cluster.move_* admin commands (cluster.move_branch, cluster.moves,
 * cluster.move_abort, cluster.move_exec) and move_branch_start; the driver that carries
 * the moves out is node/move.c. docs/sharding.md "Branch moves". Thread: the loop thread. */
#include "move_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Admin commands ---------------------------------------------------------------------- */

struct start_req {
    struct node *n;
    char name[PL_MAX_BRANCH_NAME + 1];
    uint32_t from, to, chunk;
    uint64_t id;
    bool standalone; /* refuse a fork too (the rebalancer's moves) */
    fwd_done_cb cb;
    void *arg;
};

void reply_move(fwd_done_cb cb, void *arg, const struct mig_move *m)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 6);
    node_pack_str(&pk, "id");
    msgpack_pack_uint64(&pk, m->id);
    node_pack_str(&pk, "branch");
    node_pack_str(&pk, m->name);
    node_pack_str(&pk, "from");
    msgpack_pack_uint32(&pk, m->from);
    node_pack_str(&pk, "to");
    msgpack_pack_uint32(&pk, m->to);
    node_pack_str(&pk, "phase");
    node_pack_str(&pk, migration_phase_name(m->phase));
    node_pack_str(&pk, "chunk_bytes");
    msgpack_pack_uint32(&pk, m->chunk);
    cb(arg, 0, b.data, b.len, NULL, NULL);
    buf_close(&b);
}

static int start_fn(struct migration *m, void *ctx, struct err *err)
{
    struct start_req *r = ctx;
    r->id = m->counter + 1; /* the counter this write gives the cell */
    int rc = migration_start(m, &r->n->pl, r->name, strlen(r->name), r->to, r->chunk, r->id, err);
    const struct mig_move *mv = rc ? NULL : migration_find(m, r->name, strlen(r->name));
    if (mv)
        r->from = mv->from;
    return rc;
}

static void started(void *arg, int code, const char *msg, const struct migration *m)
{
    struct start_req *r = arg;
    struct mover *mv = r->n->mover;
    const struct mig_move *move = code ? NULL : migration_find(m, r->name, strlen(r->name));
    if (code || move == NULL) {
        r->cb(r->arg, code ? code : STRATA_INTERNAL, NULL, 0,
              msg ? msg : "the move was not recorded", NULL);
    } else {
        log_info("move %llu of '%s': shard %u -> %u recorded", (unsigned long long)move->id,
                 move->name, move->from, move->to);
        if (mv && drive_find(mv, move->name) == NULL) {
            struct drive *d = drive_new(mv, move);
            if (d)
                drive_next(d);
        }
        reply_move(r->cb, r->arg, move);
    }
    sm_free(r);
}

/* The source's view of the branch: it must exist, have no forks and no fence. */
static void source_checked(void *arg, int code, const uint8_t *result, size_t len,
                           const char *message, const char *leader)
{
    (void)leader;
    struct start_req *r = arg;
    struct node *n = r->n;
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    char m[320] = "";
    if (code == 0 &&
        msgpack_unpack((const char *)result, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS)
        code = STRATA_INTERNAL, message = "undecodable answer from the source shard";
    uint64_t forks = 0;
    const msgpack_object *fence = code ? NULL : node_map_get(&o, "fence");
    if (code) {
        snprintf(m, sizeof m, "the source shard %u: %s", r->from, message ? message : "");
    } else if (!obj_bool(node_map_get(&o, "exists"))) {
        code = STRATA_BRANCH_NOT_FOUND;
        snprintf(m, sizeof m, "branch '%s' not found on shard %u", r->name, r->from);
    } else if (obj_u64(node_map_get(&o, "forks"), &forks) && forks > 0) {
        code = STRATA_INVALID_ARGUMENT;
        snprintf(m, sizeof m,
                 "branch '%s' has %llu fork%s on shard %u: a branch with forks cannot move "
                 "(move or delete the forks first)",
                 r->name, (unsigned long long)forks, forks == 1 ? "" : "s", r->from);
    } else if (r->standalone && !(node_map_get(&o, "parent") &&
                                  node_map_get(&o, "parent")->type == MSGPACK_OBJECT_NIL)) {
        /* Checked here, just before the move is recorded, and not only by the asker:
         * a branch deleted and re-made as a fork since the asker looked is refused. */
        code = STRATA_INVALID_ARGUMENT;
        snprintf(m, sizeof m,
                 "branch '%s' on shard %u is a fork (or its parent is not known): "
                 "only standalone branches move automatically",
                 r->name, r->from);
    } else if (fence && fence->type == MSGPACK_OBJECT_MAP &&
               !obj_str_is(node_map_get(fence, "state"), "unfenced")) {
        code = STRATA_CONFLICT;
        snprintf(m, sizeof m, "branch '%s' is fenced on shard %u by another move", r->name,
                 r->from);
    }
    msgpack_zone_destroy(&z);
    if (code || n->mover == NULL) {
        r->cb(r->arg, code ? code : STRATA_UNAVAILABLE, NULL, 0, code ? m : "shutting down", NULL);
        sm_free(r);
        return;
    }
    cell_change(n->mover, start_fn, r, started, r);
}

static void exec_send(struct node *n, uint32_t gid, const struct buf *inner, fwd_done_cb cb,
                      void *arg)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 3);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.move_exec");
    node_pack_str(&pk, "group");
    msgpack_pack_uint32(&pk, gid);
    node_pack_str(&pk, "cmd");
    pk_bin(&pk, inner->data, inner->len);
    route_local(n, exec_local, gid, b.data, b.len, 0, node_self_key(n), cb, arg);
    buf_close(&b);
}

/* cluster.move_branch {branch, to_shard, chunk_bytes?} on the meta leader. */
static void move_branch_local(struct node *n, const uint8_t *cmd, size_t len,
                              const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    (void)key;
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    const msgpack_object *br = NULL, *to = NULL, *ch = NULL, *sa = NULL;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
        br = node_map_get(&o, "branch");
        to = node_map_get(&o, "to_shard");
        ch = node_map_get(&o, "chunk_bytes");
        sa = node_map_get(&o, "standalone");
    }
    uint64_t shard = 0, chunk = 0;
    bool ok = br && br->type == MSGPACK_OBJECT_STR && br->via.str.size > 0 &&
              br->via.str.size <= PL_MAX_BRANCH_NAME &&
              !memchr(br->via.str.ptr, 0, br->via.str.size) && obj_u64(to, &shard) && shard > 0 &&
              shard <= PL_MAX_SHARDS &&
              (ch == NULL || (obj_u64(ch, &chunk) && chunk <= UINT32_MAX)) &&
              (sa == NULL || sa->type == MSGPACK_OBJECT_BOOLEAN);
    struct start_req *r = ok ? sm_calloc(1, sizeof *r) : NULL;
    if (!ok || r == NULL) {
        msgpack_zone_destroy(&z);
        cb(arg, ok ? STRATA_OUT_OF_MEMORY : STRATA_INVALID_ARGUMENT, NULL, 0,
           ok ? "out of memory"
              : "cluster.move_branch needs 'branch' (a name), 'to_shard' (a shard id), an "
                "optional 'chunk_bytes' and an optional 'standalone' (boolean)",
           NULL);
        return;
    }
    *r = (struct start_req){.n = n,
                            .to = (uint32_t)shard,
                            .chunk = (uint32_t)chunk,
                            .standalone = sa && sa->via.boolean,
                            .cb = cb,
                            .arg = arg};
    memcpy(r->name, br->via.str.ptr, br->via.str.size);
    msgpack_zone_destroy(&z);
    struct err err;
    err_clear(&err);
    int rc = n->mover == NULL || !n->have_pl
                 ? err_set(&err, STRATA_UNAVAILABLE, "the placement table is not known yet")
                 : 0;
    /* The table's rules first (on an empty record), for a quick clear answer. */
    struct migration *probe = rc ? NULL : sm_malloc(sizeof *probe);
    if (rc == 0 && probe == NULL)
        rc = err_set(&err, STRATA_OUT_OF_MEMORY, "out of memory");
    if (rc == 0) {
        migration_init(probe);
        rc = migration_start(probe, &n->pl, r->name, strlen(r->name), r->to, r->chunk, 1, &err);
        if (rc == 0)
            r->from = probe->moves[0].from;
    }
    sm_free(probe);
    if (rc) {
        cb(arg, rc, NULL, 0, err.msg, NULL);
        sm_free(r);
        return;
    }
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "move.status");
    node_pack_str(&pk, "name");
    node_pack_str(&pk, r->name);
    exec_send(n, r->from, &b, source_checked, r);
    buf_close(&b);
}

/* A map of `size` entries opening with a move's id, branch, from and to shards. */
static void pack_move_head(msgpack_packer *pk, uint32_t size, uint64_t id, const char *name,
                           uint32_t from, uint32_t to)
{
    msgpack_pack_map(pk, size);
    node_pack_str(pk, "id");
    msgpack_pack_uint64(pk, id);
    node_pack_str(pk, "branch");
    node_pack_str(pk, name);
    node_pack_str(pk, "from");
    msgpack_pack_uint32(pk, from);
    node_pack_str(pk, "to");
    msgpack_pack_uint32(pk, to);
}

struct list_req {
    fwd_done_cb cb;
    void *arg;
};

static void listed(void *arg, int code, const char *msg, const struct migration *m)
{
    struct list_req *r = arg;
    if (code) {
        r->cb(r->arg, code, NULL, 0, msg, NULL);
        sm_free(r);
        return;
    }
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "moves");
    msgpack_pack_array(&pk, (uint32_t)m->n);
    for (size_t i = 0; i < m->n; i++) {
        const struct mig_move *mv = &m->moves[i];
        pack_move_head(&pk, 7, mv->id, mv->name, mv->from, mv->to);
        node_pack_str(&pk, "phase");
        node_pack_str(&pk, migration_phase_name(mv->phase));
        node_pack_str(&pk, "chunk_bytes");
        msgpack_pack_uint32(&pk, mv->chunk);
        node_pack_str(&pk, "message");
        node_pack_str(&pk, mv->message);
    }
    node_pack_str(&pk, "recent");
    msgpack_pack_array(&pk, (uint32_t)m->nrecent);
    for (size_t i = 0; i < m->nrecent; i++) {
        const struct mig_recent *rc = &m->recent[i];
        pack_move_head(&pk, 6, rc->id, rc->name, rc->from, rc->to);
        node_pack_str(&pk, "outcome");
        node_pack_str(&pk, migration_outcome_name(rc->outcome));
        node_pack_str(&pk, "message");
        node_pack_str(&pk, rc->message);
    }
    r->cb(r->arg, 0, b.data, b.len, NULL, NULL);
    buf_close(&b);
    sm_free(r);
}

static void listed_raw(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                       const char *leader)
{
    (void)leader;
    struct list_req *r = arg;
    struct migration *m = code ? NULL : sm_malloc(sizeof *m);
    struct err err;
    err_clear(&err);
    if (code == 0 && m == NULL)
        code = err_set(&err, STRATA_OUT_OF_MEMORY, "out of memory");
    if (code == 0) {
        /* nil (never written) is the empty record */
        struct metacell cell;
        metacell_init(&cell);
        code = record_decode(m, &cell, result, len, &err);
        metacell_close(&cell);
    }
    listed(r, code, code ? (err.msg[0] ? err.msg : message) : NULL, m);
    sm_free(m);
}

/* cluster.moves: the record, read linearizably on the meta leader (beside the queue of
 * changes: a reader never waits for a writer). */
static void moves_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                        fwd_done_cb cb, void *arg)
{
    (void)cmd, (void)len, (void)key;
    struct node_group *g0 = node_group(n, 0);
    struct list_req *r = sm_malloc(sizeof *r);
    if (r == NULL || g0 == NULL || g0->group == NULL) {
        sm_free(r);
        cb(arg, r ? STRATA_UNAVAILABLE : STRATA_OUT_OF_MEMORY, NULL, 0,
           r ? "the meta group is not hosted here" : "out of memory", NULL);
        return;
    }
    *r = (struct list_req){cb, arg};
    metacell_read(g0->group, MOVES_CELL, false, listed_raw, r);
}

int node_move_admin(struct node *n, const char *op, const msgpack_object *cmd, const uint8_t *bytes,
                    size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb,
                    void *arg)
{
    if (strcmp(op, "cluster.move_branch") == 0) {
        route_local(n, move_branch_local, 0, bytes, len, flags, key, cb, arg);
    } else if (strcmp(op, "cluster.moves") == 0) {
        route_local(n, moves_local, 0, bytes, len, flags, key, cb, arg);
    } else if (strcmp(op, "cluster.move_abort") == 0) {
        route_local(n, move_abort_local, 0, bytes, len, flags, key, cb, arg);
    } else if (strcmp(op, "cluster.move_exec") == 0) {
        uint64_t gid = 0;
        if (!obj_u64(node_map_get(cmd, "group"), &gid) || gid == 0 || gid > PL_MAX_SHARDS) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.move_exec needs 'group' (a shard)",
               NULL);
            return 1; /* answered: the caller must not answer again */
        }
        route_local(n, exec_local, (uint32_t)gid, bytes, len, flags, key, cb, arg);
    } else {
        return 0;
    }
    return 1;
}

void move_branch_start(struct node *n, const char *branch, uint32_t to_shard, uint32_t chunk,
                       bool standalone, fwd_done_cb cb, void *arg)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 3 + (chunk != 0) + standalone);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.move_branch");
    node_pack_str(&pk, "branch");
    node_pack_str(&pk, branch);
    node_pack_str(&pk, "to_shard");
    msgpack_pack_uint32(&pk, to_shard);
    if (chunk) {
        node_pack_str(&pk, "chunk_bytes");
        msgpack_pack_uint32(&pk, chunk);
    }
    if (standalone) {
        node_pack_str(&pk, "standalone");
        msgpack_pack_true(&pk);
    }
    route_local(n, move_branch_local, 0, b.data, b.len, 0, node_self_key(n), cb, arg);
    buf_close(&b);
}
