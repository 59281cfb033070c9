/* The router: which shard owns a command's branch, and which node runs it. Local when
 * this node leads the shard, else forwarded (FORWARDED flag, at most ROUTE_HOPS hops as
 * NOT_LEADER answers name better targets). New branches are assigned by the meta leader
 * first; branch.list fans out to every shard. docs/sharding.md "The router". */
#include "node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROUTE_HOPS 3
#define MOVED_WAIT_MS 3000 /* a command refused by a moving branch waits this long at most */
#define MOVED_POLL_MS 5
#define NOT_FOUND_WAIT_MS 300 /* a branch its shard does not have: a newer table, briefly */

/* ---- One command on one group ------------------------------------------------------------ */

struct route {
    struct node *n;
    node_local_fn local; /* NULL: an engine command */
    uint32_t gid;
    uint8_t *cmd;
    size_t len;
    uint32_t flags;
    const struct auth_key *key;
    int hops;
    bool write;
    char target[REPL_ADDRESS_MAX + 1];
    fwd_done_cb cb;
    void *arg;
};

static void route_free(struct route *r)
{
    sm_free(r->cmd);
    sm_free(r);
}

static void route_run(struct route *r);

/* Run cluster.assign here (we lead the meta group): decode and queue it. */
static void assign_local(struct node *n, const uint8_t *cmd, size_t len,
                         const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    (void)key;
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS) {
        msgpack_zone_destroy(&z);
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.assign cannot be decoded", NULL);
        return;
    }
    const msgpack_object *names = node_map_get(&o, "names"), *sh = node_map_get(&o, "shard"),
                         *un = node_map_get(&o, "unassign");
    uint32_t cnt = names && names->type == MSGPACK_OBJECT_ARRAY ? names->via.array.size : 0;
    const char **nv = cnt ? sm_calloc(cnt, sizeof *nv) : NULL;
    size_t *lv = cnt ? sm_calloc(cnt, sizeof *lv) : NULL;
    bool ok = cnt > 0 && nv && lv && (sh == NULL || sh->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
    for (uint32_t i = 0; ok && i < cnt; i++) {
        const msgpack_object *e = &names->via.array.ptr[i];
        ok = e->type == MSGPACK_OBJECT_STR;
        if (ok) {
            nv[i] = e->via.str.ptr;
            lv[i] = e->via.str.size;
        }
    }
    if (!ok)
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0,
           "cluster.assign needs 'names' (non-empty array of strings) and an optional 'shard'",
           NULL);
    else
        meta_assign(n, nv, lv, cnt, sh ? (uint32_t)sh->via.u64 : 0,
                    un && un->type == MSGPACK_OBJECT_BOOLEAN && un->via.boolean, cb, arg);
    sm_free(nv);
    sm_free(lv);
    msgpack_zone_destroy(&z);
}

static void forwarded_reply(void *arg, int code, const uint8_t *result, size_t len,
                            const char *message, const char *leader)
{
    struct route *r = arg;
    struct node *n = r->n;
    bool not_run = code == STRATA_NOT_LEADER || code == STRATA_UNAVAILABLE;
    /* A node that did not run the command is no leader hint itself, whatever the reply
     * names: trusting it made a node ask a joining replica (which knows no leader) for
     * ever (the meta leader's shard checks stalled the rebalancer). */
    if (not_run && leader && *leader && strcmp(leader, r->target) != 0)
        node_group_hint(n, r->gid, leader, strlen(leader));
    else if (not_run && r->gid <= PL_MAX_SHARDS && strcmp(n->hints[r->gid], r->target) == 0)
        n->hints[r->gid][0] = '\0'; /* that node does not lead it: stop trying it first */
    if (not_run && ++r->hops < ROUTE_HOPS && !n->stopping) {
        route_run(r);
        return;
    }
    r->cb(r->arg, code, result, len, message, not_run ? leader : r->target);
    route_free(r);
}

/* A forward target for group gid other than this node: the leader hint, else the
 * group's replicas from the table in turn. */
static const char *pick_target(struct node *n, uint32_t gid, int hops)
{
    const char *l = node_group_leader(n, gid);
    if (l[0] && strcmp(l, n->cfg.advertise) != 0)
        return l;
    const struct pl_shard *s = n->have_pl && gid > 0 ? placement_shard(&n->pl, gid) : NULL;
    if (s) {
        for (uint32_t i = 0; i < s->nreplicas; i++) {
            const struct pl_node *nd = placement_node(&n->pl, s->replicas[(i + (unsigned)hops) %
                                                                          s->nreplicas]);
            if (nd && nd->id != n->cfg.node_id)
                return nd->address;
        }
    }
    if (gid == 0)
        for (size_t i = 0; i < n->cfg.nmembers; i++) {
            size_t k = (i + (size_t)hops) % n->cfg.nmembers;
            if (n->cfg.members[k].id != n->cfg.node_id)
                return n->cfg.members[k].address;
        }
    return NULL;
}

static void route_run(struct route *r)
{
    struct node *n = r->n;
    struct node_group *g = node_group(n, r->gid);
    if (g && g->group) {
        struct repl_status st;
        repl_group_status(g->group, &st);
        bool stale_read = r->local == NULL && (r->flags & PROTO_REQ_STALE) && !r->write;
        if (st.role == REPL_LEADER || stale_read) {
            if (r->local)
                r->local(n, r->cmd, r->len, r->key, r->cb, r->arg);
            else if (r->write)
                repl_write(g->group, r->cmd, r->len, r->cb, r->arg);
            else
                repl_read(g->group, r->cmd, r->len, stale_read, r->cb, r->arg);
            route_free(r);
            return;
        }
    }
    if (r->flags & PROTO_REQ_FORWARDED) {
        /* Sent by another node: say who leads, never forward again. */
        const char *l = node_group_leader(n, r->gid);
        bool self = strcmp(l, n->cfg.advertise) == 0;
        r->cb(r->arg, l[0] && !self ? STRATA_NOT_LEADER : STRATA_UNAVAILABLE, NULL, 0,
              l[0] && !self ? "this node does not lead the group" : "no leader is known yet",
              self ? "" : l);
        route_free(r);
        return;
    }
    const char *to = pick_target(n, r->gid, r->hops);
    if (to == NULL) {
        r->cb(r->arg, STRATA_UNAVAILABLE, NULL, 0, "no node of the group is known", NULL);
        route_free(r);
        return;
    }
    snprintf(r->target, sizeof r->target, "%s", to);
    /* The metric counts client commands relayed, not the nodes' own meta and
     * membership calls (r->local). */
    if (r->local == NULL)
        n->forwarded++;
    struct proto_route rt = {r->gid > 0 && r->local == NULL, r->gid,
                             n->have_pl ? n->pl.epoch : 0};
    fwd_request_routed(n, r->target, r->key ? r->key->key : NULL, r->cmd, r->len,
                       r->flags | PROTO_REQ_FORWARDED, &rt, forwarded_reply, r);
}

void route_local(struct node *n, node_local_fn local, uint32_t gid, const uint8_t *cmd,
                 size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    struct route *r = sm_calloc(1, sizeof *r);
    if (r == NULL || (r->cmd = sm_malloc(len ? len : 1)) == NULL) {
        sm_free(r);
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    memcpy(r->cmd, cmd, len);
    enum storage_cmd_kind ck = STORAGE_CMD_READ;
    struct err err;
    if (local == NULL && storage_cmd_kind(cmd, len, &ck, &err) == 0)
        r->write = ck == STORAGE_CMD_WRITE;
    r->n = n;
    r->local = local;
    r->gid = gid;
    r->len = len;
    r->flags = flags;
    r->key = key;
    r->cb = cb;
    r->arg = arg;
    route_run(r);
}

void route_to_group(struct node *n, uint32_t gid, const uint8_t *cmd, size_t len, uint32_t flags,
                    const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    route_local(n, NULL, gid, cmd, len, flags, key, cb, arg);
}

/* cluster.assign arriving from a connection (a router on another node, or ourselves). */
void node_assign(struct node *n, const uint8_t *cmd, size_t len, uint32_t flags,
                 const struct auth_key *key, fwd_done_cb cb, void *arg)
{
    route_local(n, assign_local, 0, cmd, len, flags, key, cb, arg);
}

/* ---- Commands: which branches, which shard ------------------------------------------------ */

size_t node_cmd_branches(const msgpack_object *cmd, const char *op, const char **names,
                         size_t *lens, size_t cap)
{
    /* Data commands name one branch ("branch", default "default"); branch.* commands
     * name theirs in these arguments. */
    static const char *const args[] = {"branch", "name", "source", "target", "a", "b"};
    size_t n = 0;
    bool branch_op = strncmp(op, "branch.", 7) == 0;
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        if (branch_op != (i > 0))
            continue;
        const msgpack_object *o = node_map_get(cmd, args[i]);
        if (o && o->type == MSGPACK_OBJECT_STR) {
            if (n < cap) {
                names[n] = o->via.str.ptr;
                lens[n] = o->via.str.size;
            }
            n++;
        }
    }
    const msgpack_object *many = node_map_get(cmd, "names");
    for (uint32_t i = 0; branch_op && many && many->type == MSGPACK_OBJECT_ARRAY &&
                         i < many->via.array.size;
         i++)
        if (many->via.array.ptr[i].type == MSGPACK_OBJECT_STR) {
            if (n < cap) {
                names[n] = many->via.array.ptr[i].via.str.ptr;
                lens[n] = many->via.array.ptr[i].via.str.size;
            }
            n++;
        }
    if (!branch_op && n == 0) {
        if (cap > 0) {
            names[0] = PL_DEFAULT_BRANCH;
            lens[0] = strlen(PL_DEFAULT_BRANCH);
        }
        n = 1;
    }
    return n;
}

enum submit_kind { SK_PLAIN, SK_CREATE, SK_FORK, SK_DELETE, SK_LIST };

struct submit {
    struct node *n;
    enum submit_kind kind;
    uint8_t *cmd;
    size_t len;
    uint32_t flags;
    struct route_expect expect;
    const struct auth_key *key;
    fwd_done_cb cb;
    void *arg;
    char **names; /* copies; for forks names[0] is the source */
    size_t *lens, nnames;
    bool refreshed, waited;
    uint32_t shard;
    /* branch.list */
    size_t pending;
    int code;
    char msg[256];
    struct buf *parts;
    uint32_t *part_shard;
    size_t nparts;
    /* Refused by a moving branch (MOVED) or one released by its old shard
     * (BRANCH_NOT_FOUND): wait for a newer table, then run again. docs/sharding.md. */
    uint64_t moved_until, moved_epoch, routed_epoch;
    unsigned moved_polls;
    int moved_code;
    bool nf_retried;
    uv_timer_t *moved_timer;
};

static void free_handle(uv_handle_t *h)
{
    sm_free(h);
}

static void submit_free(struct submit *s)
{
    if (s->moved_timer)
        uv_close((uv_handle_t *)s->moved_timer, free_handle);
    for (size_t i = 0; i < s->nnames; i++)
        sm_free(s->names[i]);
    sm_free(s->names);
    sm_free(s->lens);
    for (size_t i = 0; i < s->nparts; i++)
        buf_close(&s->parts[i]);
    sm_free(s->parts);
    sm_free(s->part_shard);
    sm_free(s->cmd);
    sm_free(s);
}

static void submit_fail(struct submit *s, int code, const char *msg)
{
    s->cb(s->arg, code, NULL, 0, msg, NULL);
    submit_free(s);
}

static void submit_step(struct submit *s);

static void submit_resume(void *arg, int code)
{
    struct submit *s = arg;
    if (code && !s->n->have_pl) {
        submit_fail(s, STRATA_UNAVAILABLE, "the placement table is not known yet (no meta leader)");
        return;
    }
    submit_step(s);
}

/* The shard of names[i], or 0 when the table does not know it. */
static uint32_t shard_of(struct node *n, const char *name, size_t len)
{
    if (len == strlen(PL_DEFAULT_BRANCH) && memcmp(name, PL_DEFAULT_BRANCH, len) == 0)
        return 1;
    const struct pl_branch *b = n->have_pl ? placement_branch(&n->pl, name, len) : NULL;
    return b ? b->shard : 0;
}

/* Run the command on s->shard; the reply goes straight to the caller, except for
 * branch.delete, which unassigns the name after a successful delete. */
static void deleted(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                    const char *leader);

static bool moved_retry(struct submit *s, int code, const char *message);

static void shard_reply(void *arg, int code, const uint8_t *result, size_t len,
                        const char *message, const char *leader)
{
    struct submit *s = arg;
    if (moved_retry(s, code, message))
        return;
    s->cb(s->arg, code, result, len, message, leader);
    submit_free(s);
}

static void run_on_shard(struct submit *s)
{
    /* A client that names the shard it expects routes by itself: if this node does not
     * lead that shard it wants NOT_LEADER with the leader, not a silent forward. */
    uint32_t flags = s->flags | (s->expect.set ? PROTO_REQ_FORWARDED : 0);
    s->routed_epoch = s->n->have_pl ? s->n->pl.epoch : 0; /* the table it was sent by */
    route_to_group(s->n, s->shard, s->cmd, s->len, flags, s->key,
                   s->kind == SK_DELETE ? deleted : shard_reply, s);
}

struct delete_reply {
    int code;
    struct buf result;
    char msg[256];
};

static void unassigned(void *arg, int code, const uint8_t *result, size_t len,
                       const char *message, const char *leader)
{
    (void)result, (void)len, (void)leader;
    struct submit *s = arg;
    if (code)
        log_warn("branch '%s' deleted but its placement entry stays: %s: %s", s->names[0],
                 err_name(code), message ? message : "");
    /* The delete's own result was parked in parts[0]. */
    s->cb(s->arg, 0, s->parts[0].data, s->parts[0].len, NULL, NULL);
    submit_free(s);
}

static void send_assign(struct submit *s, const char *const *names, const size_t *lens,
                        size_t cnt, uint32_t shard, bool unassign, fwd_done_cb cb);

static void deleted(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                    const char *leader)
{
    struct submit *s = arg;
    if (code && moved_retry(s, code, message))
        return;
    if (code) {
        s->cb(s->arg, code, result, len, message, leader);
        submit_free(s);
        return;
    }
    s->parts = sm_calloc(1, sizeof *s->parts);
    if (s->parts == NULL) {
        s->cb(s->arg, code, result, len, message, leader);
        submit_free(s);
        return;
    }
    s->nparts = 1;
    buf_init(&s->parts[0]);
    if (buf_append(&s->parts[0], result, len)) {
        submit_fail(s, STRATA_OUT_OF_MEMORY, "out of memory");
        return;
    }
    send_assign(s, (const char *const *)s->names, s->lens, 1, 0, true, unassigned);
}

static void send_assign(struct submit *s, const char *const *names, const size_t *lens,
                        size_t cnt, uint32_t shard, bool unassign, fwd_done_cb cb)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 4);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.assign");
    node_pack_str(&pk, "names");
    msgpack_pack_array(&pk, (uint32_t)cnt);
    for (size_t i = 0; i < cnt; i++) {
        msgpack_pack_str(&pk, lens[i]);
        msgpack_pack_str_body(&pk, names[i], lens[i]);
    }
    node_pack_str(&pk, "shard");
    msgpack_pack_uint32(&pk, shard);
    node_pack_str(&pk, "unassign");
    if (unassign)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    node_assign(s->n, b.data, b.len, 0, s->key, cb, s);
    buf_close(&b);
}

/* cluster.assign answered {epoch, shards}: every new name must be on s->shard (forks) or
 * gives the shard to run on (create). */
static void assigned(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                     const char *leader)
{
    (void)leader;
    struct submit *s = arg;
    if (code) {
        submit_fail(s, code, message ? message : "branch assignment failed");
        return;
    }
    msgpack_zone z;
    msgpack_zone_init(&z, 512);
    msgpack_object o;
    size_t off = 0;
    const msgpack_object *sh = NULL;
    if (msgpack_unpack((const char *)result, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS)
        sh = node_map_get(&o, "shards");
    size_t first = s->kind == SK_FORK ? 1 : 0, want = s->nnames - first;
    if (sh == NULL || sh->type != MSGPACK_OBJECT_ARRAY || sh->via.array.size != want) {
        msgpack_zone_destroy(&z);
        submit_fail(s, STRATA_INTERNAL, "malformed cluster.assign answer");
        return;
    }
    for (size_t i = 0; i < want; i++) {
        const msgpack_object *e = &sh->via.array.ptr[i];
        uint32_t got = e->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (uint32_t)e->via.u64 : 0;
        if (s->kind == SK_CREATE) {
            s->shard = got;
        } else if (got != s->shard) {
            char m[256];
            snprintf(m, sizeof m, "branch '%.*s' already exists (on shard %u)",
                     (int)(s->lens[first + i] > 128 ? 128 : s->lens[first + i]),
                     s->names[first + i], got);
            msgpack_zone_destroy(&z);
            submit_fail(s, STRATA_BRANCH_EXISTS, m);
            return;
        }
    }
    msgpack_zone_destroy(&z);
    if (s->shard == 0) {
        submit_fail(s, STRATA_INTERNAL, "cluster.assign gave no shard");
        return;
    }
    run_on_shard(s);
}

/* Resolve every named branch; on a miss refresh the table once (it may have been made
 * through another node a moment ago). Returns 0 with s->shard set, 1 when waiting for
 * the table (submit_step runs again), or an error code after failing s. */
static int resolve(struct submit *s, size_t from, size_t to)
{
    struct node *n = s->n;
    uint32_t shard = 0;
    for (size_t i = from; i < to; i++) {
        uint32_t sh = shard_of(n, s->names[i], s->lens[i]);
        if (sh == 0) {
            if (!s->refreshed) {
                s->refreshed = true;
                placement_wait(n, 0, true, submit_resume, s);
                return 1;
            }
            char m[256];
            snprintf(m, sizeof m, "branch '%.*s' not found",
                     (int)(s->lens[i] > 128 ? 128 : s->lens[i]), s->names[i]);
            submit_fail(s, STRATA_BRANCH_NOT_FOUND, m);
            return STRATA_BRANCH_NOT_FOUND;
        }
        if (shard && sh != shard) {
            char m[320];
            snprintf(m, sizeof m,
                     "branches '%s' and '%.*s' are on different shards (%u and %u): a command "
                     "may name branches of one shard only",
                     s->names[from], (int)(s->lens[i] > 128 ? 128 : s->lens[i]), s->names[i],
                     shard, sh);
            submit_fail(s, STRATA_INVALID_ARGUMENT, m);
            return STRATA_INVALID_ARGUMENT;
        }
        shard = sh;
    }
    s->shard = shard;
    if (s->expect.set && s->expect.epoch > (n->have_pl ? n->pl.epoch : 0) && !s->refreshed) {
        /* The client knows a newer table than we do: catch up before judging it. */
        s->refreshed = true;
        placement_wait(n, s->expect.epoch, true, submit_resume, s);
        return 1;
    }
    if (s->expect.set && s->expect.shard != shard) {
        char m[320];
        snprintf(m, sizeof m, "branch '%s' is on shard %u, not %u (placement epoch %llu)",
                 s->names[from], shard, s->expect.shard,
                 (unsigned long long)(n->have_pl ? n->pl.epoch : 0));
        submit_fail(s, STRATA_MOVED, m);
        return STRATA_MOVED;
    }
    return 0;
}

/* ---- branch.list: every shard's names, each from the shard the table places it on ------- */

struct list_part {
    struct submit *s;
    size_t i;
};

struct name_ref {
    const char *p;
    size_t len;
};

static int cmp_ref(const void *a, const void *b)
{
    const struct name_ref *x = a, *y = b;
    int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static void list_finish(struct submit *s)
{
    struct node *n = s->n;
    if (s->code) {
        submit_fail(s, s->code, s->msg);
        return;
    }
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    size_t total = 0, cnt = 0;
    msgpack_object *objs = sm_calloc(s->nparts, sizeof *objs);
    for (size_t i = 0; objs && i < s->nparts; i++) {
        size_t off = 0;
        if (msgpack_unpack((const char *)s->parts[i].data, s->parts[i].len, &off, &z, &objs[i]) ==
                MSGPACK_UNPACK_SUCCESS &&
            objs[i].type == MSGPACK_OBJECT_ARRAY)
            total += objs[i].via.array.size;
        else
            objs[i].type = MSGPACK_OBJECT_NIL;
    }
    struct name_ref *refs = total ? sm_calloc(total, sizeof *refs) : NULL;
    if (objs == NULL || (total && refs == NULL)) {
        sm_free(objs);
        msgpack_zone_destroy(&z);
        submit_fail(s, STRATA_OUT_OF_MEMORY, "out of memory");
        return;
    }
    for (size_t i = 0; i < s->nparts; i++) {
        if (objs[i].type != MSGPACK_OBJECT_ARRAY)
            continue;
        for (uint32_t k = 0; k < objs[i].via.array.size; k++) {
            const msgpack_object *e = &objs[i].via.array.ptr[k];
            if (e->type != MSGPACK_OBJECT_STR ||
                shard_of(n, e->via.str.ptr, e->via.str.size) != s->part_shard[i])
                continue; /* a shard's own "default", or a branch placed elsewhere */
            refs[cnt].p = e->via.str.ptr;
            refs[cnt++].len = e->via.str.size;
        }
    }
    qsort(refs, cnt, sizeof *refs, cmp_ref);
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_array(&pk, (uint32_t)cnt);
    for (size_t i = 0; i < cnt; i++) {
        msgpack_pack_str(&pk, refs[i].len);
        msgpack_pack_str_body(&pk, refs[i].p, refs[i].len);
    }
    s->cb(s->arg, 0, b.data, b.len, NULL, NULL);
    buf_close(&b);
    sm_free(refs);
    sm_free(objs);
    msgpack_zone_destroy(&z);
    submit_free(s);
}

static void list_part_done(void *arg, int code, const uint8_t *result, size_t len,
                           const char *message, const char *leader)
{
    (void)leader;
    struct list_part *lp = arg;
    struct submit *s = lp->s;
    if (code && s->code == 0) {
        s->code = code;
        snprintf(s->msg, sizeof s->msg, "shard %u: %s", s->part_shard[lp->i],
                 message ? message : "");
    } else if (code == 0 && buf_append(&s->parts[lp->i], result, len) && s->code == 0) {
        s->code = STRATA_OUT_OF_MEMORY;
        snprintf(s->msg, sizeof s->msg, "out of memory");
    }
    sm_free(lp);
    if (--s->pending == 0)
        list_finish(s);
}

static void list_fanout(struct submit *s)
{
    struct node *n = s->n;
    size_t cnt = n->pl.nshards;
    s->parts = sm_calloc(cnt, sizeof *s->parts);
    s->part_shard = sm_calloc(cnt, sizeof *s->part_shard);
    if (s->parts == NULL || s->part_shard == NULL) {
        submit_fail(s, STRATA_OUT_OF_MEMORY, "out of memory");
        return;
    }
    s->nparts = cnt;
    s->pending = cnt + 1; /* held until every part is sent */
    for (size_t i = 0; i < cnt; i++) {
        buf_init(&s->parts[i]);
        s->part_shard[i] = n->pl.shards[i].id;
    }
    for (size_t i = 0; i < cnt; i++) {
        struct list_part *lp = sm_malloc(sizeof *lp);
        if (lp == NULL) {
            list_part_done(&(struct list_part){s, i}, STRATA_OUT_OF_MEMORY, NULL, 0,
                           "out of memory", NULL);
            continue;
        }
        *lp = (struct list_part){s, i};
        route_to_group(n, s->part_shard[i], s->cmd, s->len, s->flags, s->key, list_part_done, lp);
    }
    if (--s->pending == 0)
        list_finish(s);
}

/* ---- The entry point ---------------------------------------------------------------------- */

static void created(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                    const char *leader);

static void submit_step(struct submit *s)
{
    struct node *n = s->n;
    if (n->stopping) {
        submit_fail(s, STRATA_UNAVAILABLE, "the node is shutting down");
        return;
    }
    bool needs_table = s->kind == SK_CREATE || s->kind == SK_FORK || s->kind == SK_LIST;
    for (size_t i = 0; i < s->nnames && !needs_table; i++)
        needs_table = shard_of(n, s->names[i], s->lens[i]) != 1;
    if (needs_table && !n->have_pl) {
        if (!s->waited) {
            s->waited = true;
            placement_wait(n, 0, false, submit_resume, s);
            return;
        }
        submit_fail(s, STRATA_UNAVAILABLE, "the placement table is not known yet (no meta leader)");
        return;
    }
    struct err err;
    err_clear(&err);
    switch (s->kind) {
    case SK_LIST:
        if ((s->flags & PROTO_REQ_FORWARDED) && s->expect.set) {
            /* One part of another node's fan-out: this shard only. */
            route_to_group(n, s->expect.shard, s->cmd, s->len, s->flags, s->key, s->cb, s->arg);
            submit_free(s);
            return;
        }
        if (!s->refreshed) {
            /* Read-your-writes for a listing: a branch made through another node a moment
             * ago must not be filtered out by a cache that has not seen it yet. */
            s->refreshed = true;
            placement_wait(n, 0, true, submit_resume, s);
            return;
        }
        list_fanout(s);
        return;
    case SK_CREATE:
        if (storage_branch_name_check(s->names[0], s->lens[0], &err)) {
            submit_fail(s, err.code, err.msg);
            return;
        }
        if ((s->shard = shard_of(n, s->names[0], s->lens[0])) != 0 && !s->refreshed) {
            /* Placed in our cache: it may have been deleted (and unassigned) through
             * another node a moment ago. Ask the meta leader before trusting it. */
            s->refreshed = true;
            placement_wait(n, 0, true, submit_resume, s);
            return;
        }
        if (s->shard != 0) {
            /* Already placed (it exists, or a create is being retried): the shard answers. */
            route_to_group(n, s->shard, s->cmd, s->len, s->flags, s->key, created, s);
            return;
        }
        send_assign(s, (const char *const *)s->names, s->lens, 1, 0, false, assigned);
        return;
    case SK_FORK:
        if (resolve(s, 0, 1) == 0) { /* the source only: the new names are not placed yet */
            for (size_t i = 1; i < s->nnames; i++)
                if (storage_branch_name_check(s->names[i], s->lens[i], &err)) {
                    submit_fail(s, err.code, err.msg);
                    return;
                }
            send_assign(s, (const char *const *)s->names + 1, s->lens + 1, s->nnames - 1,
                        s->shard, false, assigned);
        }
        return;
    default:
        if (resolve(s, 0, s->nnames) == 0)
            run_on_shard(s);
        return;
    }
}

/* ---- Commands refused by a moving branch ---------------------------------------------- */

static void moved_poll(uv_timer_t *t);

static void moved_wait(struct submit *s)
{
    struct node *n = s->n;
    if (s->moved_timer == NULL) {
        s->moved_timer = sm_malloc(sizeof *s->moved_timer);
        if (s->moved_timer == NULL) {
            submit_fail(s, s->moved_code, s->msg);
            return;
        }
        uv_timer_init(n->loop, s->moved_timer);
        s->moved_timer->data = s;
    }
    uv_timer_start(s->moved_timer, moved_poll, MOVED_POLL_MS, 0);
}

static void nudged(void *arg, int code)
{
    (void)arg, (void)code;
}

/* Every few ms: once the cached table is newer than the one the command was sent by, run
 * it again where the table now says. The cache follows the meta group by itself; a
 * fresh read is asked for now and then so it does so at once (its answer is not waited
 * for: nothing here depends on one particular read succeeding). */
static void moved_poll(uv_timer_t *t)
{
    struct submit *s = t->data;
    struct node *n = s->n;
    if (n->stopping) {
        submit_fail(s, STRATA_UNAVAILABLE, "the node is shutting down");
        return;
    }
    if (n->have_pl && n->pl.epoch > s->moved_epoch) {
        s->refreshed = false;
        s->waited = false;
        submit_step(s);
        return;
    }
    if (uv_now(n->loop) >= s->moved_until) {
        submit_fail(s, s->moved_code, s->msg);
        return;
    }
    if (s->moved_polls++ % 2 == 0)
        placement_wait(n, 0, true, nudged, NULL);
    uv_timer_start(t, moved_poll, MOVED_POLL_MS, 0);
}

static void fork_unassigned(void *arg, int code, const uint8_t *result, size_t len,
                            const char *message, const char *leader)
{
    (void)code, (void)result, (void)len, (void)message, (void)leader;
    moved_wait(arg);
}

/* A shard refused the command because the branch is moving away (MOVED: fenced or sealed
 * source) or has moved (BRANCH_NOT_FOUND: the old shard released it). Nothing ran. The
 * router that took the command from a client waits for the table to move on (at most
 * MOVED_WAIT_MS) and runs it again; a forwarding hop just relays the answer. Returns
 * whether it took the command over. */
static bool moved_retry(struct submit *s, int code, const char *message)
{
    struct node *n = s->n;
    if ((code != STRATA_MOVED && code != STRATA_BRANCH_NOT_FOUND) ||
        (s->flags & PROTO_REQ_FORWARDED) || s->kind == SK_CREATE || s->kind == SK_LIST ||
        n->stopping || (code == STRATA_BRANCH_NOT_FOUND && s->nf_retried))
        return false;
    uint64_t now = uv_now(n->loop);
    if (s->moved_until == 0)
        s->moved_until = now + (code == STRATA_MOVED ? MOVED_WAIT_MS : NOT_FOUND_WAIT_MS);
    else if (now >= s->moved_until)
        return false;
    s->nf_retried = s->nf_retried || code == STRATA_BRANCH_NOT_FOUND;
    s->moved_code = code;
    s->moved_epoch = s->routed_epoch; /* a table newer than that may already be here */
    snprintf(s->msg, sizeof s->msg, "%s", message ? message : err_name(code));
    if (s->kind == SK_FORK && s->nnames > 1) {
        /* The new names were assigned to the old shard: give them back first. */
        send_assign(s, (const char *const *)s->names + 1, s->lens + 1, s->nnames - 1, 0, true,
                    fork_unassigned);
        return true;
    }
    if (n->have_pl && n->pl.epoch > s->moved_epoch) { /* the table moved on already */
        s->refreshed = false;
        s->waited = false;
        submit_step(s);
        return true;
    }
    moved_wait(s);
    return true;
}

/* A create on an already-placed name: relay the shard's answer. */
static void created(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                    const char *leader)
{
    struct submit *s = arg;
    s->cb(s->arg, code, result, len, message, leader);
    submit_free(s);
}

static int copy_name(struct submit *s, const char *p, size_t len)
{
    char *c = sm_malloc(len + 1);
    if (c == NULL)
        return STRATA_OUT_OF_MEMORY;
    memcpy(c, p, len);
    c[len] = '\0';
    s->names[s->nnames] = c;
    s->lens[s->nnames++] = len;
    return 0;
}

void node_submit(struct node *n, const uint8_t *cmd, size_t len, uint32_t flags,
                 const struct route_expect *expect, const struct auth_key *key, fwd_done_cb cb,
                 void *arg)
{
    struct err err;
    err_clear(&err);
    enum storage_cmd_kind ck;
    int rc = storage_cmd_kind(cmd, len, &ck, &err);
    if (rc) {
        cb(arg, rc, NULL, 0, err.msg, NULL);
        return;
    }
    if (n->stopping) {
        cb(arg, STRATA_UNAVAILABLE, NULL, 0, "the node is shutting down", NULL);
        return;
    }
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    struct submit *s = sm_calloc(1, sizeof *s);
    if (s == NULL || (s->cmd = sm_malloc(len)) == NULL ||
        msgpack_unpack((const char *)cmd, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS) {
        if (s)
            sm_free(s->cmd);
        sm_free(s);
        msgpack_zone_destroy(&z);
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    memcpy(s->cmd, cmd, len);
    s->n = n;
    s->len = len;
    s->flags = flags;
    if (expect)
        s->expect = *expect;
    s->key = key;
    s->cb = cb;
    s->arg = arg;
    const msgpack_object *opo = node_map_get(&o, "op");
    char op[64] = "";
    if (opo && opo->type == MSGPACK_OBJECT_STR && opo->via.str.size < sizeof op)
        snprintf(op, sizeof op, "%.*s", (int)opo->via.str.size, opo->via.str.ptr);
    if (strncmp(op, "move.", 5) == 0) {
        /* Branch moves' shard steps: only the meta leader's driver sends them. */
        sm_free(s->cmd);
        sm_free(s);
        msgpack_zone_destroy(&z);
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0,
           "move.* commands are internal to the cluster (use cluster.move_branch)", NULL);
        return;
    }
    s->kind = strcmp(op, "branch.create") == 0                                       ? SK_CREATE
              : strcmp(op, "branch.fork") == 0 || strcmp(op, "branch.fork_many") == 0 ? SK_FORK
              : strcmp(op, "branch.delete") == 0                                      ? SK_DELETE
              : strcmp(op, "branch.list") == 0                                        ? SK_LIST
                                                                                      : SK_PLAIN;
    size_t cnt = node_cmd_branches(&o, op, NULL, NULL, 0);
    s->names = sm_calloc(cnt + 1, sizeof *s->names);
    s->lens = sm_calloc(cnt + 1, sizeof *s->lens);
    const char **nv = sm_calloc(cnt + 1, sizeof *nv);
    size_t *lv = sm_calloc(cnt + 1, sizeof *lv);
    rc = s->names && s->lens && nv && lv ? 0 : STRATA_OUT_OF_MEMORY;
    if (rc == 0 && s->kind == SK_FORK) {
        /* The source first, then the new names. */
        const msgpack_object *src = node_map_get(&o, "source"), *nm = node_map_get(&o, "name"),
                             *many = node_map_get(&o, "names");
        if (src && src->type == MSGPACK_OBJECT_STR)
            rc = copy_name(s, src->via.str.ptr, src->via.str.size);
        else
            rc = err_set(&err, STRATA_INVALID_ARGUMENT, "missing argument 'source'");
        if (rc == 0 && nm && nm->type == MSGPACK_OBJECT_STR)
            rc = copy_name(s, nm->via.str.ptr, nm->via.str.size);
        for (uint32_t i = 0; rc == 0 && many && many->type == MSGPACK_OBJECT_ARRAY &&
                             i < many->via.array.size && s->nnames <= cnt;
             i++)
            if (many->via.array.ptr[i].type == MSGPACK_OBJECT_STR)
                rc = copy_name(s, many->via.array.ptr[i].via.str.ptr,
                               many->via.array.ptr[i].via.str.size);
        if (rc == 0 && s->nnames < 2)
            rc = err_set(&err, STRATA_INVALID_ARGUMENT, "missing argument 'name' or 'names'");
    } else if (rc == 0) {
        node_cmd_branches(&o, op, nv, lv, cnt);
        for (size_t i = 0; rc == 0 && i < cnt; i++)
            rc = copy_name(s, nv[i], lv[i]);
        if (rc == 0 && s->nnames == 0 && s->kind != SK_LIST)
            rc = err_set(&err, STRATA_INVALID_ARGUMENT, "missing argument 'name'");
    }
    sm_free(nv);
    sm_free(lv);
    msgpack_zone_destroy(&z);
    if (rc) {
        submit_fail(s, rc, err.msg[0] ? err.msg : "out of memory");
        return;
    }
    submit_step(s);
}

/* ---- cluster.placement ---------------------------------------------------------------------- */

struct placement_req {
    struct node *n;
    fwd_done_cb cb;
    void *arg;
};

static void placement_answer(void *arg, int code)
{
    struct placement_req *pr = arg;
    struct node *n = pr->n;
    if (code && !n->have_pl) {
        pr->cb(pr->arg, STRATA_UNAVAILABLE, NULL, 0, "the placement table is not known yet",
               NULL);
        sm_free(pr);
        return;
    }
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 3);
    node_pack_str(&pk, "epoch");
    msgpack_pack_uint64(&pk, n->have_pl ? n->pl.epoch : 0);
    node_pack_str(&pk, "table");
    if (!n->have_pl)
        msgpack_pack_nil(&pk);
    else if (placement_encode(&n->pl, &b)) {
        buf_close(&b);
        pr->cb(pr->arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        sm_free(pr);
        return;
    }
    node_pack_str(&pk, "leaders");
    uint32_t cnt = 0;
    for (uint32_t id = 0; id <= PL_MAX_SHARDS; id++)
        cnt += node_group_leader(n, id)[0] != '\0';
    msgpack_pack_array(&pk, cnt);
    for (uint32_t id = 0; id <= PL_MAX_SHARDS; id++) {
        const char *l = node_group_leader(n, id);
        if (!l[0])
            continue;
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint32(&pk, id);
        node_pack_str(&pk, l);
    }
    pr->cb(pr->arg, 0, b.data, b.len, NULL, NULL);
    buf_close(&b);
    sm_free(pr);
}

void node_placement(struct node *n, bool fresh, fwd_done_cb cb, void *arg)
{
    struct placement_req *pr = sm_malloc(sizeof *pr);
    if (pr == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    *pr = (struct placement_req){n, cb, arg};
    struct repl_status st;
    node_group_status(n, 0, &st);
    if (!n->have_pl && st.role == REPL_LEADER && st.disk_error[0]) {
        /* The first table cannot be written here: say why instead of waiting for it. */
        sm_free(pr);
        cb(arg, STRATA_UNAVAILABLE, NULL, 0, st.disk_error, NULL);
        return;
    }
    placement_wait(n, 0, fresh, placement_answer, pr);
}
