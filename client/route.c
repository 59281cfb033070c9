/* libstrata's routing table: the client's cached placement of a sharded cluster, and the
 * decision, per command, of which shard it targets and which nodes can run it. The rule
 * for "which branches" is the server router's (node/router.c), so a command the client
 * routes is one the server would place on the same shard; when the client cannot tell
 * (an unknown branch, a new one, a listing) it lets any node route it. */
#include "route.h"

#include <msgpack.h>
#include <string.h>

struct routing *routing_new(void)
{
    struct routing *r = sm_calloc(1, sizeof *r);
    if (r)
        placement_init(&r->pl);
    return r;
}

void routing_free(struct routing *r)
{
    if (r == NULL)
        return;
    placement_free(&r->pl);
    sm_free(r);
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    size_t n = strlen(key);
    if (m == NULL || m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static int buf_w(void *data, const char *p, size_t n)
{
    return buf_append(data, p, n) ? -1 : 0;
}

uint64_t routing_node_id(const struct routing *r, const char *address, size_t len)
{
    for (size_t i = 0; i < r->pl.nnodes; i++)
        if (strlen(r->pl.nodes[i].address) == len &&
            memcmp(r->pl.nodes[i].address, address, len) == 0)
            return r->pl.nodes[i].id;
    return 0;
}

const char *routing_address(const struct routing *r, uint64_t id)
{
    const struct pl_node *nd = id ? placement_node(&r->pl, id) : NULL;
    return nd ? nd->address : NULL;
}

bool routing_set_leader(struct routing *r, uint32_t shard, const char *address, size_t len)
{
    if (shard > PL_MAX_SHARDS)
        return false;
    uint64_t id = routing_node_id(r, address, len);
    r->leader[shard] = id;
    return id != 0;
}

int routing_update(struct routing *r, const uint8_t *answer, size_t len, struct err *err)
{
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 4096))
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    msgpack_object o;
    size_t off = 0;
    struct buf tb;
    buf_init(&tb);
    struct placement p;
    placement_init(&p);
    int rc = 0;
    if (msgpack_unpack((const char *)answer, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS ||
        o.type != MSGPACK_OBJECT_MAP) {
        rc = err_set(err, STRATA_PROTOCOL_ERROR, "cluster.placement: the answer is not a map");
        goto out;
    }
    const msgpack_object *ep = map_get(&o, "epoch"), *t = map_get(&o, "table"),
                         *ld = map_get(&o, "leaders");
    if (ep == NULL || ep->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        rc = err_set(err, STRATA_PROTOCOL_ERROR, "cluster.placement: 'epoch' missing");
        goto out;
    }
    if (t == NULL || t->type == MSGPACK_OBJECT_NIL) {
        rc = err_set(err, STRATA_UNAVAILABLE, "cluster.placement: the node has no table yet");
        goto out;
    }
    if (ld && ld->type != MSGPACK_OBJECT_ARRAY) {
        rc = err_set(err, STRATA_PROTOCOL_ERROR, "cluster.placement: 'leaders' is not an array");
        goto out;
    }
    if (r->pl.nnodes > 0 && ep->via.u64 < r->pl.epoch)
        goto out; /* an answer from a node that is behind: keep what we know */
    /* The table is decoded by the one decoder the servers use: re-encode the value the
     * answer carries and hand it over. */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &tb, buf_w);
    if (msgpack_pack_object(&pk, *t)) {
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        goto out;
    }
    if ((rc = placement_decode(&p, tb.data, tb.len, err))) {
        if (rc != STRATA_OUT_OF_MEMORY)
            rc = STRATA_PROTOCOL_ERROR;
        goto out;
    }
    p.epoch = ep->via.u64;
    placement_free(&r->pl);
    r->pl = p; /* moves the branch array */
    placement_init(&p);
    memset(r->leader, 0, sizeof r->leader);
    for (uint32_t i = 0; ld && i < ld->via.array.size; i++) {
        const msgpack_object *e = &ld->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
            e->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            e->via.array.ptr[1].type != MSGPACK_OBJECT_STR)
            continue; /* a hint we cannot read is no hint */
        uint64_t g = e->via.array.ptr[0].via.u64;
        if (g <= PL_MAX_SHARDS)
            routing_set_leader(r, (uint32_t)g, e->via.array.ptr[1].via.str.ptr,
                               e->via.array.ptr[1].via.str.size);
    }
out:
    placement_free(&p);
    buf_close(&tb);
    msgpack_zone_destroy(&z);
    return rc;
}

/* Which shard a name is on; 0 when the table does not know it. */
static uint32_t shard_of(const struct routing *r, const char *name, size_t len)
{
    if (len == strlen(PL_DEFAULT_BRANCH) && memcmp(name, PL_DEFAULT_BRANCH, len) == 0)
        return 1; /* by rule, even before the table names it */
    const struct pl_branch *b = r ? placement_branch(&r->pl, name, len) : NULL;
    return b ? b->shard : 0;
}

static bool op_is(const msgpack_object *op, const char *name)
{
    return op->via.str.size == strlen(name) && memcmp(op->via.str.ptr, name, op->via.str.size) == 0;
}

static bool op_prefix(const msgpack_object *op, const char *prefix)
{
    size_t n = strlen(prefix);
    return op->via.str.size > n && memcmp(op->via.str.ptr, prefix, n) == 0;
}

/* Fold one branch name into the pick: the first fixes the shard, a later one on another
 * shard (which the server refuses) or an unknown one sends the command home. */
static void fold(const struct routing *r, const char *name, size_t len, struct route_pick *out)
{
    if (out->kind == ROUTE_HOME)
        return;
    uint32_t s = shard_of(r, name, len);
    if (s == 0) {
        out->kind = ROUTE_HOME;
        out->unknown = true;
    } else if (out->shard && out->shard != s) {
        out->kind = ROUTE_HOME; /* the server answers INVALID_ARGUMENT "different shards" */
    } else {
        out->shard = s;
    }
}

void routing_decide(const struct routing *r, const uint8_t *cmd, size_t len,
                    const char *session_branch, struct route_pick *out)
{
    *out = (struct route_pick){ROUTE_HOME, 0, false, false, false};
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 512))
        return;
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS ||
        o.type != MSGPACK_OBJECT_MAP)
        goto out; /* the server gives the error */
    const msgpack_object *op = map_get(&o, "op");
    if (op == NULL || op->type != MSGPACK_OBJECT_STR)
        goto out;
    out->names_change = op_is(op, "branch.create") || op_is(op, "branch.fork") ||
                        op_is(op, "branch.fork_many") || op_is(op, "branch.delete");
    if (op_is(op, "session.use")) {
        out->session_use = true;
        goto out;
    }
    /* No branch to route by: node commands, and the branch commands whose shard only the
     * server can pick (a create is assigned by the meta leader, a listing fans out). */
    if (op_prefix(op, "cluster.") || op_prefix(op, "auth.") || op_prefix(op, "session.") ||
        op_is(op, "branch.create") || op_is(op, "branch.list"))
        goto out;
    out->kind = ROUTE_SHARD;
    if (!op_prefix(op, "branch.")) {
        const msgpack_object *b = map_get(&o, "branch");
        if (b && b->type == MSGPACK_OBJECT_STR)
            fold(r, b->via.str.ptr, b->via.str.size, out);
        else if (b == NULL && session_branch && session_branch[0])
            fold(r, session_branch, strlen(session_branch), out);
        else if (b == NULL)
            fold(r, PL_DEFAULT_BRANCH, strlen(PL_DEFAULT_BRANCH), out);
        else
            out->kind = ROUTE_HOME; /* a bad 'branch': the server says so */
    } else if (op_is(op, "branch.fork") || op_is(op, "branch.fork_many")) {
        /* The new names are not placed yet: they will be on their source's shard. */
        const msgpack_object *src = map_get(&o, "source");
        if (src && src->type == MSGPACK_OBJECT_STR)
            fold(r, src->via.str.ptr, src->via.str.size, out);
        else
            out->kind = ROUTE_HOME;
    } else {
        static const char *const args[] = {"name", "source", "target", "a", "b"};
        for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
            const msgpack_object *a = map_get(&o, args[i]);
            if (a && a->type == MSGPACK_OBJECT_STR)
                fold(r, a->via.str.ptr, a->via.str.size, out);
        }
        const msgpack_object *many = map_get(&o, "names");
        for (uint32_t i = 0; many && many->type == MSGPACK_OBJECT_ARRAY && i < many->via.array.size;
             i++)
            if (many->via.array.ptr[i].type == MSGPACK_OBJECT_STR)
                fold(r, many->via.array.ptr[i].via.str.ptr, many->via.array.ptr[i].via.str.size,
                     out);
        if (out->shard == 0)
            out->kind = ROUTE_HOME; /* names no branch: the server says what is missing */
    }
out:
    if (out->kind == ROUTE_HOME)
        out->shard = 0;
    msgpack_zone_destroy(&z);
}

/* Copy the string argument `key` to out when present and short enough. */
static void copy_arg(const msgpack_object *o, const char *key, char *out, size_t cap)
{
    const msgpack_object *v = map_get(o, key);
    if (v && v->type == MSGPACK_OBJECT_STR && v->via.str.size > 0 && v->via.str.size < cap) {
        memcpy(out, v->via.str.ptr, v->via.str.size);
        out[v->via.str.size] = '\0';
    }
}

void routing_session_args(const uint8_t *cmd, size_t len, char *branch, size_t bcap, char *space,
                          size_t scap)
{
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 256))
        return;
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
        copy_arg(&o, "branch", branch, bcap);
        copy_arg(&o, "space", space, scap);
    }
    msgpack_zone_destroy(&z);
}

size_t routing_candidates(const struct routing *r, uint32_t shard, bool stale, uint64_t near,
                          uint64_t *ids, size_t cap)
{
    const struct pl_shard *s = placement_shard(&r->pl, shard);
    if (s == NULL)
        return 0;
    size_t n = 0;
    uint64_t order[PL_MAX_REPLICAS + 2];
    /* A stale read may be served by any replica from its applied state: keep it on the
     * node the caller is attached to (its seed) when that node has a copy. */
    if (stale && near && placement_shard_has(s, near))
        order[n++] = near;
    if (shard <= PL_MAX_SHARDS && r->leader[shard])
        order[n++] = r->leader[shard];
    for (uint32_t i = 0; i < s->nreplicas && i < PL_MAX_REPLICAS; i++)
        order[n++] = s->replicas[i];
    size_t out = 0;
    for (size_t i = 0; i < n && out < cap; i++) {
        bool dup = false;
        for (size_t k = 0; k < out && !dup; k++)
            dup = ids[k] == order[i];
        if (!dup)
            ids[out++] = order[i];
    }
    return out;
}
