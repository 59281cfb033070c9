/* Cluster administration: adding and removing nodes (the placement table, the meta
 * group and every shard the node replicates), leadership transfer, and the per-group
 * membership step each of those runs on a group's leader. docs/sharding.md
 * "Membership". */
#include "metacell.h"
#include "node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A join token: 16 to 64 lowercase hex digits (a joining node sends 32). */
#define JOIN_TOKEN_MIN 16
#define JOIN_TOKEN_MAX 64

/* The arguments every cluster.* command may carry. */
struct admin_args {
    uint64_t id;
    char address[REPL_ADDRESS_MAX + 1];
    bool has_address, address_ok;
    char token[JOIN_TOKEN_MAX + 1]; /* add_member: the joining process's join_token */
    bool has_token, token_ok;
    uint32_t group;
    bool has_group;
    uint64_t timeout_ms; /* remove_member: how long to wait for the drain */
    bool add;            /* cluster.group_member: "add" (else "remove") */
};

static void admin_args(const msgpack_object *cmd, struct admin_args *a)
{
    memset(a, 0, sizeof *a);
    for (uint32_t i = 0; cmd->type == MSGPACK_OBJECT_MAP && i < cmd->via.map.size; i++) {
        const msgpack_object *k = &cmd->via.map.ptr[i].key, *v = &cmd->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        size_t kl = k->via.str.size;
        const char *kp = k->via.str.ptr;
        if (kl == 2 && memcmp(kp, "id", 2) == 0 && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            a->id = v->via.u64;
        if (kl == 5 && memcmp(kp, "group", 5) == 0 && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            v->via.u64 <= PL_MAX_SHARDS) {
            a->group = (uint32_t)v->via.u64;
            a->has_group = true;
        }
        if (kl == 10 && memcmp(kp, "timeout_ms", 10) == 0 &&
            v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            a->timeout_ms = v->via.u64;
        if (kl == 6 && memcmp(kp, "change", 6) == 0 && v->type == MSGPACK_OBJECT_STR)
            a->add = v->via.str.size == 3 && memcmp(v->via.str.ptr, "add", 3) == 0;
        if (kl == 10 && memcmp(kp, "join_token", 10) == 0) {
            a->has_token = true;
            size_t tl = v->type == MSGPACK_OBJECT_STR ? v->via.str.size : 0;
            a->token_ok = tl >= JOIN_TOKEN_MIN && tl <= JOIN_TOKEN_MAX;
            for (size_t j = 0; a->token_ok && j < tl; j++)
                a->token_ok = (v->via.str.ptr[j] >= '0' && v->via.str.ptr[j] <= '9') ||
                              (v->via.str.ptr[j] >= 'a' && v->via.str.ptr[j] <= 'f');
            if (a->token_ok) {
                memcpy(a->token, v->via.str.ptr, tl);
                a->token[tl] = '\0';
            }
        }
        if (kl == 7 && memcmp(kp, "address", 7) == 0 && v->type == MSGPACK_OBJECT_STR) {
            a->has_address = true;
            size_t al = v->via.str.size;
            bool printable = al > 0 && al <= REPL_ADDRESS_MAX;
            for (size_t j = 0; printable && j < al; j++)
                printable = v->via.str.ptr[j] > 0x20 && v->via.str.ptr[j] < 0x7f;
            if (printable) {
                memcpy(a->address, v->via.str.ptr, al);
                a->address[al] = '\0';
                char host[REPL_ADDRESS_MAX + 1];
                int port;
                a->address_ok = parse_hostport(a->address, host, sizeof host, &port) == 0;
            }
        }
    }
}

/* The same from a command's bytes (an undecodable one gives all-unset arguments). */
static void admin_args_bytes(const uint8_t *cmd, size_t len, struct admin_args *a)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    memset(a, 0, sizeof *a);
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS)
        admin_args(&o, a);
    msgpack_zone_destroy(&z);
}

static bool is_member(const struct repl_status *st, uint64_t id)
{
    for (size_t i = 0; i < st->nmembers; i++)
        if (st->members[i].id == id)
            return true;
    return false;
}

static bool is_voter(const struct repl_status *st, uint64_t id)
{
    for (size_t i = 0; i < st->nmembers; i++)
        if (st->members[i].id == id)
            return st->members[i].voter;
    return false;
}

/* ---- cluster.group_member {group, change: add|remove, id, address?}: on the group leader - */

static void transfer_ignored(void *arg, int code, const uint8_t *result, size_t len,
                             const char *message, const char *leader)
{
    (void)arg, (void)result, (void)len, (void)leader;
    if (code)
        log_info("leadership hand-over before leaving a group: %s: %s", err_name(code),
                 message ? message : "");
}

static void group_member_local(struct node *n, const uint8_t *cmd, size_t len,
                               const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    (void)key;
    struct admin_args a;
    admin_args_bytes(cmd, len, &a);
    struct node_group *g = node_group(n, a.group);
    if (g == NULL || a.id == 0 || (a.add && !a.address_ok)) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0,
           "cluster.group_member needs 'group', 'change', 'id' and for add 'address'", NULL);
        return;
    }
    struct repl_status st;
    repl_group_status(g->group, &st);
    if (a.add ? is_voter(&st, a.id) : !is_member(&st, a.id)) { /* already done: idempotent */
        cb(arg, 0, NULL, 0, NULL, NULL);
        return;
    }
    if (!a.add && a.id == n->cfg.node_id && st.role == REPL_LEADER) {
        /* A leader removing itself left libraft 0.22.1's group refusing every later
         * membership change ("a configuration change is already in progress") under
         * each new leader (the fault suite's member fault; the asker had seen another
         * leader). So: hand the leadership away and let the asker retry there. */
        log_info("group %u: asked to remove this node, its leader: handing leadership away first",
                 a.group);
        repl_transfer(g->group, 0, transfer_ignored, NULL);
        cb(arg, STRATA_UNAVAILABLE, NULL, 0,
           "this node leads the group it is to leave: leadership is being handed away, retry",
           NULL);
        return;
    }
    log_info("group %u: %s member %llu%s%s", a.group, a.add ? "adding" : "removing",
             (unsigned long long)a.id, a.add ? " at " : "", a.add ? a.address : "");
    if (a.add) {
        struct repl_member m = {.id = a.id};
        snprintf(m.address, sizeof m.address, "%s", a.address);
        repl_member_add(g->group, &m, cb, arg);
    } else {
        repl_member_remove(g->group, a.id, cb, arg);
    }
}

void admin_group_member(struct node *n, uint32_t gid, bool add, uint64_t id, const char *address,
                        const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, add ? 5 : 4);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.group_member");
    node_pack_str(&pk, "group");
    msgpack_pack_uint32(&pk, gid);
    node_pack_str(&pk, "change");
    node_pack_str(&pk, add ? "add" : "remove");
    node_pack_str(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    if (add) {
        node_pack_str(&pk, "address");
        node_pack_str(&pk, address);
    }
    route_local(n, group_member_local, gid, b.data, b.len, 0, key, cb, arg);
    buf_close(&b);
}

/* ---- cluster.group_members {group}: a group's members, on its leader ------------------ */

static void group_members_local(struct node *n, const uint8_t *cmd, size_t len,
                                const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    (void)key;
    struct admin_args a;
    admin_args_bytes(cmd, len, &a);
    struct node_group *g = node_group(n, a.group);
    if (g == NULL) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "no such group here", NULL);
        return;
    }
    struct repl_status st;
    repl_group_status(g->group, &st);
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "leader");
    msgpack_pack_uint64(&pk, st.leader_id);
    node_pack_str(&pk, "members");
    msgpack_pack_array(&pk, (uint32_t)st.nmembers);
    for (size_t i = 0; i < st.nmembers; i++) {
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint64(&pk, st.members[i].id);
        if (st.members[i].voter)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
    }
    cb(arg, 0, b.data, b.len, NULL, NULL);
    buf_close(&b);
}

int admin_members_decode(const uint8_t *data, size_t len, struct admin_members *m)
{
    memset(m, 0, sizeof *m);
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    int rc = STRATA_PROTOCOL_ERROR;
    if (data == NULL ||
        msgpack_unpack((const char *)data, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS)
        goto out;
    const msgpack_object *l = node_map_get(&o, "leader"), *ms = node_map_get(&o, "members");
    if (l == NULL || l->type != MSGPACK_OBJECT_POSITIVE_INTEGER || ms == NULL ||
        ms->type != MSGPACK_OBJECT_ARRAY || ms->via.array.size > ADMIN_MAX_MEMBERS)
        goto out;
    m->leader = l->via.u64;
    for (uint32_t i = 0; i < ms->via.array.size; i++) {
        const msgpack_object *e = &ms->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
            e->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            e->via.array.ptr[1].type != MSGPACK_OBJECT_BOOLEAN)
            goto out;
        m->ids[m->n] = e->via.array.ptr[0].via.u64;
        m->voter[m->n++] = e->via.array.ptr[1].via.boolean;
    }
    rc = 0;
out:
    msgpack_zone_destroy(&z);
    return rc;
}

static void send_group_cmd(struct node *n, node_local_fn local, const char *op, uint32_t gid,
                           uint64_t id, const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, id ? 3 : 2);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, op);
    node_pack_str(&pk, "group");
    msgpack_pack_uint32(&pk, gid);
    if (id) {
        node_pack_str(&pk, "id");
        msgpack_pack_uint64(&pk, id);
    }
    route_local(n, local, gid, b.data, b.len, 0, key, cb, arg);
    buf_close(&b);
}

void admin_group_members(struct node *n, uint32_t gid, const struct auth_key *key, fwd_done_cb cb,
                         void *arg)
{
    send_group_cmd(n, group_members_local, "cluster.group_members", gid, 0, key, cb, arg);
}

static void transfer_local(struct node *n, const uint8_t *cmd, size_t len,
                           const struct auth_key *key, fwd_done_cb cb, void *arg);

void admin_transfer(struct node *n, uint32_t gid, uint64_t to, const struct auth_key *key,
                    fwd_done_cb cb, void *arg)
{
    send_group_cmd(n, transfer_local, "cluster.transfer_leader", gid, to, key, cb, arg);
}

/* ---- cluster.add_member / remove_member: on the meta leader ------------------------------
 * A node that joins (--join) sends a join token, random per process, and the meta leader
 * keeps the token of the process that joined each id in the meta cell `join.<id>`. That
 * tells a retry of the same join (whose earlier attempt was applied but answered with an
 * error: the same token) from a node that lost its data and asks again under its old id
 * (another token), which must be refused — Raft assumes a voter's log survives:
 *
 *   read join.<id> (linearizable)
 *     same token                → the table lists the node at this address: no table
 *                                 write; every group step again (each is idempotent, in
 *                                 case the earlier attempt failed in one): success,
 *                                 {already_member: true}; else the table step as below
 *     none or another token     → refused if the node is known to the meta group and
 *                                 the table (as without a token); else the table step,
 *                                 refused there if the table lists the node and the cell
 *                                 another token; then join.<id> := token, then the groups
 *
 * The cell is written before the node becomes a meta member, so a joined member always
 * has its token recorded. Without a token (the CLI's add-node, an older node) the rules
 * are those of before. */

struct member_op {
    struct node *n;
    bool add;
    uint64_t id;
    char address[REPL_ADDRESS_MAX + 1];
    char token[JOIN_TOKEN_MAX + 1]; /* add: the joiner's token ("" = none) */
    bool token_same;                /* join.<id> holds this token: a retry of this join */
    bool token_other;               /* join.<id> holds another process's token */
    bool was_member;                /* the table listed the node (at this address) already */
    const struct auth_key *key;
    uint32_t shards[PL_MAX_SHARDS]; /* the shards the node is (was) a replica of */
    size_t nshards, pending;
    int code;
    char msg[256];
    uint64_t wait_ms;
    fwd_done_cb cb;
    void *arg;
};

static int mutate_add(struct placement *p, void *ctx, struct err *err)
{
    struct member_op *m = ctx;
    m->nshards = 0;
    const struct pl_node *nd = placement_node(p, m->id);
    m->was_member = nd != NULL;
    if (nd && strcmp(nd->address, m->address) != 0)
        return err_set(err, STRATA_ALREADY_EXISTS, "node %llu is already a member at %s",
                       (unsigned long long)m->id, nd->address);
    if (nd && m->token_other)
        return err_set(err, STRATA_ALREADY_EXISTS,
                       "node id is already a member, joined by another process");
    int rc;
    if (nd == NULL && (rc = placement_add_node(p, m->id, m->address, err)))
        return rc;
    uint32_t rf = p->rf;
    for (size_t i = 0; i < p->nshards; i++) {
        struct pl_shard *s = &p->shards[i];
        if (!placement_shard_has(s, m->id)) {
            if (s->nreplicas >= rf || s->nreplicas >= PL_MAX_REPLICAS)
                continue;
            uint64_t ids[PL_MAX_REPLICAS];
            memcpy(ids, s->replicas, s->nreplicas * sizeof *ids);
            ids[s->nreplicas] = m->id;
            if ((rc = placement_set_replicas(p, s->id, ids, s->nreplicas + 1, err)))
                return rc;
        }
        m->shards[m->nshards++] = s->id;
    }
    return 0;
}

/* Removal drains: the node is marked DRAINING and the rebalancer moves its replicas and
 * meta membership away, then takes it out of the table (rebalance.c). */
static int mutate_remove(struct placement *p, void *ctx, struct err *err)
{
    struct member_op *m = ctx;
    m->nshards = 0;
    if (placement_node(p, m->id) == NULL)
        return 0; /* already gone: a retry */
    size_t others = 0;
    for (size_t i = 0; i < p->nnodes; i++)
        others += p->nodes[i].id != m->id && p->nodes[i].state == PL_NODE_ACTIVE;
    if (others == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "node %llu is the last active node: nothing could take its replicas",
                       (unsigned long long)m->id);
    return placement_drain_node(p, m->id, err);
}

static void member_finish(struct member_op *m)
{
    if (m->code) {
        m->cb(m->arg, m->code, NULL, 0, m->msg, NULL);
    } else if (m->add && m->was_member && m->token[0]) {
        /* A retry of a join that was applied: success, saying so. (Without a token the
         * answer stays what it was.) */
        struct buf b;
        buf_init(&b);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, node_buf_w);
        msgpack_pack_map(&pk, 2);
        node_pack_str(&pk, "already_member");
        msgpack_pack_true(&pk);
        node_pack_str(&pk, "address");
        node_pack_str(&pk, m->address);
        if (b.len)
            m->cb(m->arg, 0, b.data, b.len, NULL, NULL);
        else
            m->cb(m->arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        buf_close(&b);
    } else {
        m->cb(m->arg, 0, NULL, 0, NULL, NULL);
    }
    sm_free(m);
}

/* The meta cell holding the token of the process that joined node `id`. */
static void token_cell(uint64_t id, char out[METACELL_NAME_MAX + 1])
{
    snprintf(out, METACELL_NAME_MAX + 1, "join.%llu", (unsigned long long)id);
}

/* The token as the cell's value (a MessagePack string). */
static int token_value(const char *token, struct buf *b)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, node_buf_w);
    size_t n = strlen(token);
    return msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, token, n) ? STRATA_OUT_OF_MEMORY
                                                                            : 0;
}

static void member_step_done(void *arg, int code, const uint8_t *result, size_t len,
                             const char *message, const char *leader)
{
    (void)result, (void)len, (void)leader;
    struct member_op *m = arg;
    if (code && code != STRATA_ALREADY_EXISTS && m->code == 0) {
        m->code = code;
        snprintf(m->msg, sizeof m->msg, "%s", message ? message : err_name(code));
    }
    if (--m->pending == 0)
        member_finish(m);
}

static void member_fail(struct member_op *m, int code, const char *message)
{
    m->code = code;
    snprintf(m->msg, sizeof m->msg, "%s", message ? message : err_name(code));
    member_finish(m);
}

static void member_add_groups(struct member_op *m);

static void token_written(void *arg, int code, const uint8_t *result, size_t len,
                          const char *message, const char *leader)
{
    (void)leader;
    struct member_op *m = arg;
    char cell[METACELL_NAME_MAX + 1];
    token_cell(m->id, cell);
    struct err err;
    err_clear(&err);
    uint64_t counter = 0;
    int rc = metacell_decode_write(cell, code, result, len, message, &counter, &err);
    if (rc)
        member_fail(m, rc, err.msg);
    else
        member_add_groups(m);
}

/* The table is written: record the joiner's token if it is new, then the groups. */
static void member_table_done(void *arg, int code, const uint8_t *result, size_t len,
                              const char *message, const char *leader)
{
    (void)result, (void)len, (void)leader;
    struct member_op *m = arg;
    struct node *n = m->n;
    if (code) {
        member_fail(m, code, message);
        return;
    }
    if (!m->add) {
        /* Drained and removed by the rebalancer: answer when the node leaves the table. */
        log_info("node %llu is draining", (unsigned long long)m->id);
        rebalance_wait_removed(n, m->id, m->wait_ms, m->cb, m->arg);
        sm_free(m);
        return;
    }
    if (m->token[0] && !m->token_same) {
        struct node_group *g0 = node_group(n, 0);
        char cell[METACELL_NAME_MAX + 1];
        token_cell(m->id, cell);
        struct buf v;
        buf_init(&v);
        int rc = g0 == NULL || g0->group == NULL ? STRATA_UNAVAILABLE : token_value(m->token, &v);
        if (rc == 0)
            rc = metacell_write(g0->group, cell, METACELL_SET, 0, v.data, v.len, token_written, m);
        buf_close(&v);
        if (rc)
            member_fail(m, rc, "cannot record the join token");
        return;
    }
    member_add_groups(m);
}

/* The meta group and every shard group the table gives the node. */
static void member_add_groups(struct member_op *m)
{
    struct node *n = m->n;
    m->pending = 1; /* held while issuing */
    struct node_group *g0 = node_group(n, 0);
    struct repl_status st;
    node_group_status(n, 0, &st);
    size_t voters = 0;
    for (size_t i = 0; i < st.nmembers; i++)
        voters += st.members[i].voter;
    if (g0 && m->add && !is_member(&st, m->id) && voters < PL_META_MAX_VOTERS) {
        struct repl_member rm = {.id = m->id};
        snprintf(rm.address, sizeof rm.address, "%s", m->address);
        m->pending++;
        repl_member_add(g0->group, &rm, member_step_done, m);
    }
    for (size_t i = 0; i < m->nshards; i++) {
        m->pending++;
        admin_group_member(n, m->shards[i], m->add, m->id, m->address, m->key, member_step_done, m);
    }
    if (--m->pending == 0)
        member_finish(m);
}

/* The table step, unless the node is known to the meta group and the table already
 * without this join's token: a node that lost its data and would join again under its
 * old id (the caller decides; see join_done in server.c). */
static void member_start(struct member_op *m)
{
    struct node *n = m->n;
    struct repl_status st;
    node_group_status(n, 0, &st);
    const struct pl_node *nd = m->add && n->have_pl ? placement_node(&n->pl, m->id) : NULL;
    if (nd && !m->token_same && is_member(&st, m->id)) {
        member_fail(m, STRATA_ALREADY_EXISTS, "node id is already a member");
        return;
    }
    if (nd && m->token_same && strcmp(nd->address, m->address) == 0) {
        /* A retry of a join whose table step was applied: the table stays as it is (a
         * write would only bump its epoch); the group steps run again, each idempotent,
         * in case the earlier attempt failed in one of them. */
        log_info("adding node %llu at %s: a retry of its join", (unsigned long long)m->id,
                 m->address);
        m->was_member = true;
        m->nshards = 0;
        for (size_t i = 0; i < n->pl.nshards; i++)
            if (placement_shard_has(&n->pl.shards[i], m->id))
                m->shards[m->nshards++] = n->pl.shards[i].id;
        member_add_groups(m);
        return;
    }
    log_info("%s node %llu%s%s", m->add ? "adding" : "removing", (unsigned long long)m->id,
             m->add ? " at " : "", m->add ? m->address : "");
    meta_change(n, m->add ? mutate_add : mutate_remove, m, member_table_done, m);
}

static void token_read(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                       const char *leader)
{
    (void)leader;
    struct member_op *m = arg;
    if (code) {
        member_fail(m, code, message);
        return;
    }
    char cell[METACELL_NAME_MAX + 1];
    token_cell(m->id, cell);
    struct err err;
    err_clear(&err);
    struct metacell c;
    metacell_init(&c);
    struct buf mine;
    buf_init(&mine);
    int rc = metacell_decode_get(&c, cell, result, len, &err);
    if (rc == 0 && c.present && (rc = token_value(m->token, &mine)) != 0)
        err_set(&err, rc, "out of memory");
    if (rc == 0 && c.present) {
        m->token_same = c.value.len == mine.len && memcmp(c.value.data, mine.data, mine.len) == 0;
        m->token_other = !m->token_same;
    }
    metacell_close(&c);
    buf_close(&mine);
    if (rc)
        member_fail(m, rc, err.msg);
    else
        member_start(m);
}

static void member_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                         fwd_done_cb cb, void *arg)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    struct admin_args a;
    memset(&a, 0, sizeof a);
    char op[32] = "";
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
        admin_args(&o, &a);
        for (uint32_t i = 0; o.type == MSGPACK_OBJECT_MAP && i < o.via.map.size; i++)
            if (o.via.map.ptr[i].key.type == MSGPACK_OBJECT_STR &&
                o.via.map.ptr[i].key.via.str.size == 2 &&
                memcmp(o.via.map.ptr[i].key.via.str.ptr, "op", 2) == 0 &&
                o.via.map.ptr[i].val.type == MSGPACK_OBJECT_STR &&
                o.via.map.ptr[i].val.via.str.size < sizeof op)
                memcpy(op, o.via.map.ptr[i].val.via.str.ptr, o.via.map.ptr[i].val.via.str.size);
    }
    msgpack_zone_destroy(&z);
    bool add = strcmp(op, "cluster.add_member") == 0;
    struct member_op *m = sm_calloc(1, sizeof *m);
    if (m == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    *m = (struct member_op){.n = n, .add = add, .id = a.id, .key = key, .cb = cb, .arg = arg};
    /* The drain waits up to timeout_ms (default 8 s, under a client's default 10 s
     * timeout); a TIMEOUT answer means it goes on in the background. */
    m->wait_ms = a.timeout_ms ? (a.timeout_ms > 600000 ? 600000 : a.timeout_ms) : 8000;
    snprintf(m->address, sizeof m->address, "%s", a.address);
    if (add && a.token_ok)
        snprintf(m->token, sizeof m->token, "%s", a.token);
    if (m->token[0]) {
        /* Whose join is this? (token_read goes on.) */
        struct node_group *g0 = node_group(n, 0);
        char cell[METACELL_NAME_MAX + 1];
        token_cell(m->id, cell);
        if (g0 == NULL || g0->group == NULL)
            member_fail(m, STRATA_UNAVAILABLE, "the meta group is not hosted here");
        else
            metacell_read(g0->group, cell, false, token_read, m);
        return;
    }
    member_start(m);
}

/* ---- cluster.transfer_leader {id?, group?} on the group's leader ------------------------ */

static void transfer_local(struct node *n, const uint8_t *cmd, size_t len,
                           const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    (void)key;
    struct admin_args a;
    admin_args_bytes(cmd, len, &a);
    struct node_group *g = node_group(n, a.group);
    if (g == NULL) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "no such group here", NULL);
        return;
    }
    repl_transfer(g->group, a.id, cb, arg);
}

/* ---- Entry ------------------------------------------------------------------------------- */

int node_admin(struct node *n, const char *op, const msgpack_object *cmd, const uint8_t *bytes,
               size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    if (key && (!key->write || key->npatterns == 0 || strcmp(key->patterns[0], "*") != 0)) {
        cb(arg, STRATA_PERMISSION_DENIED, NULL, 0,
           "cluster commands need a read-write key for all branches ('*')", NULL);
        return 0;
    }
    if (n->stopping) {
        cb(arg, STRATA_UNAVAILABLE, NULL, 0, "the node is shutting down", NULL);
        return 0;
    }
    struct admin_args a;
    admin_args(cmd, &a);
    if (strcmp(op, "cluster.add_member") == 0) {
        if (a.id == 0 || !a.address_ok) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0,
               "cluster.add_member needs 'id' (> 0) and 'address' (host:port)", NULL);
            return 0;
        }
        if (a.has_token && !a.token_ok) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0,
               "cluster.add_member: 'join_token' must be 16 to 64 lowercase hex digits", NULL);
            return 0;
        }
        route_local(n, member_local, 0, bytes, len, flags, key, cb, arg);
    } else if (strcmp(op, "cluster.remove_member") == 0) {
        if (a.id == 0) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.remove_member needs 'id'", NULL);
            return 0;
        }
        route_local(n, member_local, 0, bytes, len, flags, key, cb, arg);
    } else if (strcmp(op, "cluster.transfer_leader") == 0) {
        /* Without 'group': the meta group. */
        route_local(n, transfer_local, a.has_group ? a.group : 0, bytes, len, flags, key, cb, arg);
    } else if (strcmp(op, "cluster.group_members") == 0) {
        if (!a.has_group) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.group_members needs 'group'", NULL);
            return 0;
        }
        route_local(n, group_members_local, a.group, bytes, len, flags, key, cb, arg);
    } else if (strcmp(op, "cluster.group_member") == 0) {
        if (!a.has_group) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.group_member needs 'group'", NULL);
            return 0;
        }
        route_local(n, group_member_local, a.group, bytes, len, flags, key, cb, arg);
    } else if (!node_move_admin(n, op, cmd, bytes, len, flags, key, cb, arg)) {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "unknown cluster command", NULL);
    }
    return 0;
}
