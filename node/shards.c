/* The groups a node hosts and its cached placement table: opening/stopping groups, the
 * cache refresh, the meta leader's duties (initial table, serialized assignments) and
 * leader spreading. Plan and failure cases: docs/sharding.md. */
#include "metacell.h"
#include "node.h"
#include "observe.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 50
#define REMOTE_REFRESH_MS 500
#define SPREAD_EVERY_MS 2000
#define SPREAD_COOLDOWN_MS 10000
#define WAIT_TIMEOUT_MS 5000
#define ASSIGN_ATTEMPTS 8
#define META_KEEP_LAST 16

static const char placement_cell[] = "placement";

/* ---- Small msgpack helpers ------------------------------------------------------------ */

/* ---- Hosted groups --------------------------------------------------------------------- */

struct node_group *node_group(struct node *n, uint32_t id)
{
    return id <= PL_MAX_SHARDS ? n->groups[id] : NULL;
}

static void on_group_event(void *arg, enum repl_event ev, const char *detail)
{
    struct node_group *g = arg;
    observe_repl_event(g->node, g->id, ev, detail);
    static const char *const names[] = {"",           "elected leader", "lost leadership",
                                        "leader changed", "snapshot taken", "snapshot installed",
                                        "peer down",  "peer up",        "disk error"};
    const char *name = (int)ev >= 1 && (int)ev <= 8 ? names[ev] : "event";
    if (ev == REPL_EV_DISK_ERROR)
        log_error("group %u: %s: %s", g->id, name, detail ? detail : "");
    else if (ev != REPL_EV_PEER_DOWN && ev != REPL_EV_PEER_UP)
        log_info("group %u: %s%s%s", g->id, name, detail && *detail ? ": " : "",
                 detail ? detail : "");
    if (ev == REPL_EV_LEADER_CHANGED && detail)
        node_group_hint(g->node, g->id, detail, strlen(detail));
}

static void group_failed(void *arg)
{
    struct node_group *g = arg;
    repl_engine_free(g->engine); /* off the loop: seconds for a large engine */
    sm_free(g);
}

int node_group_start(struct node *n, uint32_t id, const struct repl_member *members, size_t nm,
                     struct err *err)
{
    if (id > PL_MAX_SHARDS)
        return err_set(err, STRATA_INVALID_ARGUMENT, "group id %u out of range", id);
    if (n->groups[id])
        return 0;
    struct node_group *g = sm_calloc(1, sizeof *g);
    if (g == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    g->id = id;
    g->node = n;
    int rc = storage_new(NULL, &g->engine);
    if (rc) {
        sm_free(g);
        return err_set(err, rc, "cannot create the storage engine of group %u", id);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/raft-%u", n->cfg.data_dir, id);
    struct repl_options o = n->cfg.repl;
    o.group_id = id;
    o.node_id = n->cfg.node_id;
    o.address = n->cfg.advertise;
    o.bind_host = n->cfg.listen_host;
    o.data_dir = dir;
    rc = repl_group_open(n->loop, &o, g->engine, on_group_event, g, &g->group, err);
    if (rc == 0 && nm > 0)
        rc = repl_group_bootstrap(g->group, members, nm, err);
    if (rc == 0)
        rc = repl_group_start(g->group, err);
    if (rc) {
        if (g->group) /* frees the engine and g once raft has closed */
            repl_group_stop(g->group, group_failed, g);
        else {
            storage_free(g->engine);
            sm_free(g);
        }
        return rc;
    }
    n->groups[id] = g;
    log_info("group %u: open (%zu bootstrap members)", id, nm);
    return 0;
}

size_t node_groups_on_disk(struct node *n, uint32_t *ids, size_t cap)
{
    size_t cnt = 0;
    DIR *d = opendir(n->cfg.data_dir);
    if (d == NULL)
        return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned id;
        char tail;
        if (sscanf(de->d_name, "raft-%u%c", &id, &tail) != 1 || id > PL_MAX_SHARDS)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", n->cfg.data_dir, de->d_name);
        DIR *g = opendir(path);
        bool empty = true;
        if (g) {
            struct dirent *e;
            while ((e = readdir(g)) != NULL)
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                    empty = false;
            closedir(g);
        }
        if (!empty && cnt < cap)
            ids[cnt++] = id;
    }
    closedir(d);
    for (size_t i = 1; i < cnt; i++) /* ascending: meta first */
        for (size_t j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            uint32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    return cnt;
}

void node_group_status(struct node *n, uint32_t gid, struct repl_status *st)
{
    struct node_group *g = node_group(n, gid);
    if (g && g->group) {
        repl_group_status(g->group, st);
        return;
    }
    memset(st, 0, sizeof *st);
    st->role = REPL_UNAVAILABLE;
}

const char *node_group_leader(struct node *n, uint32_t id)
{
    if (id > PL_MAX_SHARDS)
        return "";
    struct node_group *g = node_group(n, id);
    if (g && g->group) {
        struct repl_status st;
        repl_group_status(g->group, &st);
        bool member = false;
        for (size_t i = 0; i < st.nmembers; i++)
            member = member || st.members[i].id == n->cfg.node_id;
        if (st.leader_address[0])
            snprintf(n->hints[id], sizeof n->hints[id], "%s", st.leader_address);
        else if (member && st.role != REPL_UNAVAILABLE)
            return ""; /* we are a replica and know of no leader: nobody else is better */
        /* Not (yet) in the group's configuration (a node that joined, a replica being
         * added): our raft knows nothing, the hints learned from replies do. */
    }
    return n->hints[id];
}

void node_group_hint(struct node *n, uint32_t id, const char *leader, size_t len)
{
    if (id > PL_MAX_SHARDS || leader == NULL || len == 0 || len >= sizeof n->hints[id])
        return;
    memcpy(n->hints[id], leader, len);
    n->hints[id][len] = '\0';
}

static void group_stopped(void *arg)
{
    struct node_group *g = arg;
    struct node *n = g->node;
    repl_engine_free(g->engine); /* off the loop: seconds for a large engine */
    sm_free(g);
    if (--n->groups_stopping == 0 && n->groups_stopped_cb)
        n->groups_stopped_cb(n);
}

/* ---- Retiring a replica ------------------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void group_retired(void *arg)
{
    struct node_group *g = arg;
    struct node *n = g->node;
    char dir[4096], old[4200];
    snprintf(dir, sizeof dir, "%s/raft-%u", n->cfg.data_dir, g->id);
    snprintf(old, sizeof old, "%s.retired", dir);
    /* Kept (the last one only) for an operator who wants it; never opened again. */
    nftw(old, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (rename(dir, old) != 0)
        log_error("shard %u: cannot rename %s: %s", g->id, dir, strerror(errno));
    log_info("shard %u: retired (data kept in %s)", g->id, old);
    n->retiring[g->id] = false;
    repl_engine_free(g->engine); /* off the loop: seconds for a large engine */
    sm_free(g);
}

void node_group_retire(struct node *n, uint32_t id)
{
    struct node_group *g = node_group(n, id);
    if (g == NULL || id == 0)
        return;
    n->groups[id] = NULL;
    n->retiring[id] = true; /* not opened again before its directory is moved away */
    n->hints[id][0] = '\0';
    repl_group_stop(g->group, group_retired, g);
}

static void tick(uv_timer_t *t);

/* ---- The cached table -------------------------------------------------------------------- */

struct pl_waiter {
    uint64_t epoch;      /* wanted table epoch */
    uint64_t fresh_seq;  /* wanted successful fresh read (0 = none) */
    uint64_t deadline_ms;
    void (*cb)(void *arg, int code);
    void *arg;
    struct pl_waiter *next;
};

/* Fresh (linearizable) reads are numbered; a waiter that asks for one needs a read that
 * started after it asked. */

void pl_waiter_fail(struct node *n, struct pl_waiter *w, int code);
void pl_waiter_fail(struct node *n, struct pl_waiter *w, int code)
{
    for (struct pl_waiter **pp = &n->pl_waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    w->cb(w->arg, code);
    sm_free(w);
}

/* Complete every waiter that is satisfied or out of time. Callbacks may add waiters, so
 * the ready ones are unlinked first. */
static void waiters_check(struct node *n)
{
    uint64_t now = uv_now(n->loop);
    struct pl_waiter *ready = NULL, **tail = &ready;
    for (struct pl_waiter **pp = &n->pl_waiters; *pp;) {
        struct pl_waiter *w = *pp;
        bool ok = n->have_pl && n->pl.epoch >= w->epoch && n->pl_fresh_ok >= w->fresh_seq;
        if (ok || now >= w->deadline_ms || n->stopping) {
            *pp = w->next;
            w->next = NULL;
            w->epoch = ok ? 0 : 1; /* reuse as the outcome flag */
            *tail = w;
            tail = &w->next;
        } else {
            pp = &w->next;
        }
    }
    while (ready) {
        struct pl_waiter *w = ready;
        ready = w->next;
        w->cb(w->arg, w->epoch == 0 ? 0 : STRATA_UNAVAILABLE);
        sm_free(w);
    }
}

void placement_wait(struct node *n, uint64_t epoch, bool fresh, void (*cb)(void *arg, int code),
                    void *arg)
{
    if (n->stopping) {
        cb(arg, STRATA_UNAVAILABLE);
        return;
    }
    if (!fresh && n->have_pl && n->pl.epoch >= epoch) {
        cb(arg, 0);
        return;
    }
    struct pl_waiter *w = sm_calloc(1, sizeof *w);
    if (w == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY);
        return;
    }
    w->epoch = epoch;
    w->fresh_seq = fresh ? n->pl_fresh_started + 1 : 0;
    w->deadline_ms = uv_now(n->loop) + WAIT_TIMEOUT_MS;
    w->cb = cb;
    w->arg = arg;
    w->next = n->pl_waiters;
    n->pl_waiters = w;
    if (fresh)
        n->pl_fresh_wanted = true;
    if (n->shard_timer_on && !n->pl_reading)
        uv_timer_start(&n->shard_timer, tick, 0, TICK_MS);
}

/* Adopt a decoded table if it is not older than the cached one. */
static void adopt(struct node *n, struct placement *p)
{
    if (n->have_pl && p->epoch < n->pl.epoch) {
        placement_free(p);
        return;
    }
    if (!n->have_pl || p->epoch != n->pl.epoch)
        log_info("placement epoch %llu: %zu nodes, %zu shards, %zu branches",
                 (unsigned long long)p->epoch, p->nnodes, p->nshards, p->nbranches);
    placement_free(&n->pl);
    n->pl = *p; /* moves ownership */
    placement_init(p);
    n->have_pl = true;
}

/* A table held as a MessagePack object (inside a cluster.placement answer) into `p`, with
 * its epoch. placement_decode validates every field. */
static int decode_table(const msgpack_object *v, uint64_t epoch, struct placement *p,
                        struct err *err)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    int rc = msgpack_pack_object(&pk, *v) ? err_set(err, STRATA_OUT_OF_MEMORY, "out of memory")
                                          : placement_decode(p, b.data, b.len, err);
    buf_close(&b);
    if (rc == 0)
        p->epoch = epoch;
    return rc;
}

/* A state.get result of the cell into `p` (initialized), with its counter as the epoch.
 * 0, NOT_FOUND (no table yet) or an error. */
static int decode_cell(const uint8_t *result, size_t len, struct placement *p, struct err *err)
{
    struct metacell c;
    metacell_init(&c);
    int rc = metacell_decode_get(&c, placement_cell, result, len, err);
    if (rc == 0 && !c.present)
        rc = STRATA_NOT_FOUND;
    else if (rc == 0 && (rc = placement_decode(p, c.value.data, c.value.len, err)) == 0)
        p->epoch = c.counter;
    metacell_close(&c);
    return rc;
}


static void local_read_done(void *arg, int code, const uint8_t *result, size_t len,
                            const char *message, const char *leader)
{
    (void)leader;
    struct node *n = arg;
    n->pl_reading = false;
    if (n->stopping)
        return;
    if (code) {
        log_debug("placement read failed: %s: %s", err_name(code), message ? message : "");
        return;
    }
    struct err err;
    err_clear(&err);
    struct placement p;
    placement_init(&p);
    int rc = decode_cell(result, len, &p, &err);
    if (rc == 0)
        adopt(n, &p);
    n->pl_absent = rc == STRATA_NOT_FOUND;
    if (rc && rc != STRATA_NOT_FOUND)
        log_error("placement table rejected: %s", err.msg);
    placement_free(&p);
    waiters_check(n);
}

struct fresh_read {
    struct node *n;
    uint64_t seq;
};

static void fresh_done(struct node *n, uint64_t seq, bool ok)
{
    n->pl_reading = false;
    if (ok && seq > n->pl_fresh_ok)
        n->pl_fresh_ok = seq;
    /* A failed read (e.g. asked a node that does not lead the meta group) must not leave
     * the waiters for a fresh one until their timeout: try again at the next tick. */
    for (struct pl_waiter *w = n->pl_waiters; !ok && w; w = w->next)
        if (w->fresh_seq > n->pl_fresh_ok)
            n->pl_fresh_wanted = true;
    waiters_check(n);
    /* A waiter that asked for a read started after this one (it came while this one was
     * in flight) gets its read now, not at the next tick: a command stamped with a newer
     * epoch waits on it (the tail of a branch move's pause was this tick, docs). */
    for (struct pl_waiter *w = n->pl_waiters; w; w = w->next)
        if (w->fresh_seq > n->pl_fresh_ok) {
            n->pl_fresh_wanted = true;
            if (n->shard_timer_on && !n->pl_reading)
                uv_timer_start(&n->shard_timer, tick, 0, TICK_MS);
            break;
        }
}

static void local_fresh_done(void *arg, int code, const uint8_t *result, size_t len,
                             const char *message, const char *leader)
{
    struct fresh_read *fr = arg;
    struct node *n = fr->n;
    uint64_t seq = fr->seq;
    sm_free(fr);
    if (n->stopping)
        return;
    n->pl_reading = true; /* local_read_done clears it */
    local_read_done(n, code, result, len, message, leader);
    fresh_done(n, seq, code == 0);
}

/* A cluster.placement answer from another node: {epoch, table, leaders}. */
static void remote_fresh_done(void *arg, int code, const uint8_t *result, size_t len,
                              const char *message, const char *leader)
{
    struct fresh_read *fr = arg;
    struct node *n = fr->n;
    uint64_t seq = fr->seq;
    sm_free(fr);
    if (n->stopping)
        return;
    bool ok = false;
    if (code == STRATA_NOT_LEADER && leader && *leader)
        node_group_hint(n, 0, leader, strlen(leader));
    if (code == 0) {
        msgpack_zone z;
        msgpack_zone_init(&z, 4096);
        msgpack_object o;
        size_t off = 0;
        struct err err;
        err_clear(&err);
        if (msgpack_unpack((const char *)result, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *e = node_map_get(&o, "epoch"), *t = node_map_get(&o, "table"),
                                 *ld = node_map_get(&o, "leaders");
            if (t && t->type == MSGPACK_OBJECT_NIL) {
                n->pl_absent = true;
                ok = true;
            } else if (e && t && e->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                struct placement p;
                placement_init(&p);
                if (decode_table(t, e->via.u64, &p, &err) == 0) {
                    adopt(n, &p);
                    ok = true;
                } else {
                    log_warn("placement from a peer rejected: %s", err.msg);
                }
            }
            for (uint32_t i = 0; ld && ld->type == MSGPACK_OBJECT_ARRAY && i < ld->via.array.size;
                 i++) {
                const msgpack_object *x = &ld->via.array.ptr[i];
                if (x->type == MSGPACK_OBJECT_ARRAY && x->via.array.size == 2 &&
                    x->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                    x->via.array.ptr[1].type == MSGPACK_OBJECT_STR &&
                    x->via.array.ptr[0].via.u64 <= PL_MAX_SHARDS &&
                    node_group(n, (uint32_t)x->via.array.ptr[0].via.u64) == NULL)
                    node_group_hint(n, (uint32_t)x->via.array.ptr[0].via.u64,
                                    x->via.array.ptr[1].via.str.ptr,
                                    x->via.array.ptr[1].via.str.size);
            }
        }
        msgpack_zone_destroy(&z);
    } else {
        log_debug("placement refresh failed: %s: %s", err_name(code), message ? message : "");
    }
    fresh_done(n, seq, ok);
}

static bool meta_leader_here(struct node *n)
{
    struct repl_status st;
    node_group_status(n, 0, &st);
    return st.role == REPL_LEADER;
}

/* Where to ask for the table when this node cannot read it itself. */
static const char *remote_target(struct node *n, unsigned round)
{
    const char *l = node_group_leader(n, 0);
    if (l[0] && strcmp(l, n->cfg.advertise) != 0 && round % 4 != 3)
        return l;
    /* Rotate over the known nodes, then the bootstrap and join lists. */
    static char addr[REPL_ADDRESS_MAX + 1];
    size_t cands = 0;
    const char *list[PL_MAX_NODES + NODE_MAX_MEMBERS + 16];
    for (size_t i = 0; n->have_pl && i < n->pl.nnodes; i++)
        if (strcmp(n->pl.nodes[i].address, n->cfg.advertise) != 0)
            list[cands++] = n->pl.nodes[i].address;
    for (size_t i = 0; i < n->cfg.nmembers; i++)
        if (strcmp(n->cfg.members[i].address, n->cfg.advertise) != 0)
            list[cands++] = n->cfg.members[i].address;
    if (cands == 0 && n->cfg.join[0]) {
        const char *p = n->cfg.join;
        size_t count = 1, idx;
        for (const char *q = p; *q; q++)
            count += *q == ',';
        idx = round % count;
        for (size_t i = 0; i < idx && (p = strchr(p, ',')) != NULL; i++)
            p++;
        if (p == NULL)
            return NULL;
        snprintf(addr, sizeof addr, "%.*s", (int)strcspn(p, ","), p);
        return addr;
    }
    return cands ? list[round % cands] : NULL;
}

static void start_fresh_read(struct node *n)
{
    static unsigned round;
    struct fresh_read *fr = sm_malloc(sizeof *fr);
    if (fr == NULL)
        return;
    fr->n = n;
    fr->seq = ++n->pl_fresh_started;
    n->pl_fresh_wanted = false;
    n->pl_reading = true;
    n->pl_last_remote_ms = uv_now(n->loop);
    struct node_group *g0 = node_group(n, 0);
    if (g0 && meta_leader_here(n)) {
        metacell_read(g0->group, placement_cell, false, local_fresh_done, fr);
        return;
    }
    const char *to = remote_target(n, round++);
    if (to == NULL) {
        sm_free(fr);
        n->pl_reading = false;
        return;
    }
    static const uint8_t placement_cmd[] = {
        0x82, 0xa2, 'o', 'p', 0xb1, 'c', 'l', 'u', 's', 't', 'e', 'r', '.', 'p', 'l', 'a',
        'c', 'e', 'm', 'e', 'n', 't', 0xa5, 'f', 'r', 'e', 's', 'h', 0xc3};
    fwd_request(n, to, node_self_secret(n), placement_cmd,
                sizeof placement_cmd, PROTO_REQ_FORWARDED, remote_fresh_done, fr);
}

/* ---- Meta leader: the initial table ---------------------------------------------------- */

static void init_done(void *arg, int code, const uint8_t *result, size_t len,
                      const char *message, const char *leader)
{
    (void)leader;
    struct node *n = arg;
    n->pl_initing = false;
    struct err err;
    err_clear(&err);
    uint64_t counter = 0;
    int rc = metacell_decode_write(placement_cell, code, result, len, message, &counter, &err);
    if (rc && rc != STRATA_CONFLICT)
        log_warn("writing the initial placement failed: %s: %s", err_name(rc), err.msg);
    else {
        n->pl_absent = false; /* written (by us or, ALREADY_EXISTS, by another leader) */
        n->pl_fresh_wanted = true;
    }
}

static void retention_done(void *arg, int code, const uint8_t *result, size_t len,
                           const char *message, const char *leader)
{
    (void)arg, (void)result, (void)len, (void)leader;
    if (code)
        log_warn("setting the meta retention failed: %s: %s", err_name(code),
                 message ? message : "");
}

static void write_initial(struct node *n)
{
    struct pl_node members[NODE_MAX_MEMBERS];
    for (size_t i = 0; i < n->cfg.nmembers; i++) {
        members[i].id = n->cfg.members[i].id;
        snprintf(members[i].address, sizeof members[i].address, "%s", n->cfg.members[i].address);
        members[i].state = PL_NODE_ACTIVE;
    }
    struct placement p;
    placement_init(&p);
    struct err err;
    err_clear(&err);
    if (placement_initial(&p, members, n->cfg.nmembers, n->cfg.shards, n->cfg.rf, &err)) {
        log_error("cannot compute the initial placement: %s", err.msg);
        return;
    }
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    /* Retention first: the table's history stays bounded from its first version on. */
    msgpack_pack_map(&pk, 3);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "branch.set_retention");
    node_pack_str(&pk, "name");
    node_pack_str(&pk, "default");
    node_pack_str(&pk, "keep_last");
    msgpack_pack_uint64(&pk, META_KEEP_LAST);
    struct node_group *g0 = node_group(n, 0);
    repl_write(g0->group, b.data, b.len, retention_done, n);
    b.len = 0;
    int rc = placement_encode(&p, &b);
    placement_free(&p);
    if (rc == 0) {
        n->pl_initing = true; /* before the write: its callback may run at once */
        log_info("writing the initial placement: %u shards, replication factor %u",
                 n->cfg.shards, n->cfg.rf);
        if (metacell_write(g0->group, placement_cell, METACELL_INIT, 0, b.data, b.len, init_done,
                           n))
            n->pl_initing = false;
    }
    buf_close(&b);
}

/* ---- Meta leader: serialized assignments --------------------------------------------------
 * Requests queue here; one batch at a time reads the table linearizably, applies every
 * queued request to a copy and writes it with state.cas on the counter it read. A
 * CONFLICT (someone else wrote) repeats the round. */
struct assign_req {
    char **names;
    size_t *lens, cnt;
    uint32_t shard;
    bool unassign;
    /* A general change instead of names (membership): applied to the fresh table. */
    int (*mutate)(struct placement *p, void *ctx, struct err *err);
    void *ctx;
    uint32_t *out; /* the shard of each name after the round */
    int code;
    char msg[288];
    fwd_done_cb cb;
    void *arg;
    struct assign_req *next;
};

static void assign_kick(struct node *n);

struct assign_round {
    struct node *n;
    struct assign_req *batch;
    int attempts;
    uint64_t new_epoch;
};

static void assign_req_free(struct assign_req *r)
{
    for (size_t i = 0; i < r->cnt; i++)
        sm_free(r->names[i]);
    sm_free(r->names);
    sm_free(r->lens);
    sm_free(r->out);
    sm_free(r);
}

static void assign_finish(struct assign_round *ar, int code, const char *msg, uint64_t epoch)
{
    struct node *n = ar->n;
    struct assign_req *r = ar->batch;
    sm_free(ar);
    n->assign_busy = false;
    while (r) {
        struct assign_req *next = r->next;
        int c = code ? code : r->code;
        if (c) {
            r->cb(r->arg, c, NULL, 0, code ? msg : r->msg, NULL);
        } else {
            struct buf b;
            buf_init(&b);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &b, node_buf_w);
            msgpack_pack_map(&pk, 2);
            node_pack_str(&pk, "epoch");
            msgpack_pack_uint64(&pk, epoch);
            node_pack_str(&pk, "shards");
            msgpack_pack_array(&pk, (uint32_t)r->cnt);
            for (size_t i = 0; i < r->cnt; i++)
                msgpack_pack_uint32(&pk, r->out[i]);
            r->cb(r->arg, 0, b.data, b.len, NULL, NULL);
            buf_close(&b);
        }
        assign_req_free(r);
        r = next;
    }
    assign_kick(n);
}

static void assign_round_start(struct assign_round *ar);

static void assign_written(void *arg, int code, const uint8_t *result, size_t len,
                           const char *message, const char *leader)
{
    (void)leader;
    struct assign_round *ar = arg;
    struct node *n = ar->n;
    struct err err;
    err_clear(&err);
    int rc =
        metacell_decode_write(placement_cell, code, result, len,
                              message ? message : "placement write failed", &ar->new_epoch, &err);
    if (rc == STRATA_CONFLICT && ++ar->attempts < ASSIGN_ATTEMPTS && !n->stopping) {
        assign_round_start(ar);
        return;
    }
    if (rc == 0)
        n->pl_fresh_wanted = true; /* the cache catches up at the next tick */
    assign_finish(ar, rc, err.msg, ar->new_epoch);
}

/* Apply the batch to `p` (a fresh copy of the table). Returns whether anything changed. */
static bool assign_apply(struct placement *p, struct assign_req *batch)
{
    bool changed = false;
    for (struct assign_req *r = batch; r; r = r->next) {
        r->code = 0;
        if (r->mutate) {
            struct err err;
            err_clear(&err);
            struct placement before;
            placement_init(&before);
            bool copied = placement_copy(&before, p) == 0;
            r->code = r->mutate(p, r->ctx, &err);
            if (r->code) {
                snprintf(r->msg, sizeof r->msg, "%s", err.msg);
                if (copied) { /* undo a partial change */
                    placement_free(p);
                    *p = before;
                    placement_init(&before);
                }
            } else {
                changed = true;
            }
            placement_free(&before);
            continue;
        }
        for (size_t i = 0; i < r->cnt && r->code == 0; i++) {
            struct err err;
            err_clear(&err);
            const struct pl_branch *b = placement_branch(p, r->names[i], r->lens[i]);
            if (r->unassign) {
                r->out[i] = b ? b->shard : 0;
                if (b && placement_unassign(p, r->names[i], r->lens[i], &err) == 0)
                    changed = true;
                continue;
            }
            if (b) {
                r->out[i] = b->shard;
                continue;
            }
            uint32_t s = r->shard ? r->shard : placement_least_loaded(p);
            int rc = placement_assign(p, r->names[i], r->lens[i], s, &err);
            if (rc) {
                r->code = rc;
                snprintf(r->msg, sizeof r->msg, "%s", err.msg);
            } else {
                r->out[i] = s;
                changed = true;
            }
        }
    }
    return changed;
}

static void assign_read_done(void *arg, int code, const uint8_t *result, size_t len,
                             const char *message, const char *leader)
{
    (void)leader;
    struct assign_round *ar = arg;
    struct node *n = ar->n;
    if (code) {
        assign_finish(ar, code, message ? message : "placement read failed", 0);
        return;
    }
    struct err err;
    err_clear(&err);
    struct placement p;
    placement_init(&p);
    int rc = decode_cell(result, len, &p, &err);
    if (rc == STRATA_NOT_FOUND)
        rc = err_set(&err, STRATA_UNAVAILABLE, "the placement table is not written yet");
    if (rc) {
        placement_free(&p);
        assign_finish(ar, rc, err.msg[0] ? err.msg : "cannot read the placement table", 0);
        return;
    }
    uint64_t counter = p.epoch;
    if (!assign_apply(&p, ar->batch)) {
        adopt(n, &p);
        assign_finish(ar, 0, NULL, counter);
        return;
    }
    struct buf b;
    buf_init(&b);
    rc = placement_encode(&p, &b);
    placement_free(&p);
    struct node_group *g0 = node_group(n, 0);
    if (rc == 0 && g0 == NULL)
        rc = STRATA_UNAVAILABLE;
    if (rc == 0)
        rc = metacell_write(g0->group, placement_cell, METACELL_CAS, counter, b.data, b.len,
                            assign_written, ar);
    buf_close(&b);
    if (rc)
        assign_finish(ar, rc, "cannot write the placement table", 0);
}

static void assign_round_start(struct assign_round *ar)
{
    struct node_group *g0 = node_group(ar->n, 0);
    if (g0 == NULL || ar->n->stopping) {
        assign_finish(ar, STRATA_UNAVAILABLE, "the meta group is not hosted here", 0);
        return;
    }
    metacell_read(g0->group, placement_cell, false, assign_read_done, ar);
}

static void assign_kick(struct node *n)
{
    if (n->assign_busy || n->assign_q == NULL)
        return;
    struct assign_round *ar = sm_calloc(1, sizeof *ar);
    if (ar == NULL)
        return;
    ar->n = n;
    /* Take the whole queue, oldest first. */
    struct assign_req *rev = NULL;
    while (n->assign_q) {
        struct assign_req *r = n->assign_q;
        n->assign_q = r->next;
        r->next = rev;
        rev = r;
    }
    ar->batch = rev;
    n->assign_busy = true;
    assign_round_start(ar);
}

void meta_assign(struct node *n, const char *const *names, const size_t *lens, size_t cnt,
                 uint32_t shard, bool unassign, fwd_done_cb cb, void *arg)
{
    struct assign_req *r = sm_calloc(1, sizeof *r);
    if (r == NULL || cnt == 0 || (r->names = sm_calloc(cnt, sizeof *r->names)) == NULL ||
        (r->lens = sm_calloc(cnt, sizeof *r->lens)) == NULL ||
        (r->out = sm_calloc(cnt, sizeof *r->out)) == NULL) {
        if (r)
            assign_req_free(r);
        cb(arg, cnt ? STRATA_OUT_OF_MEMORY : STRATA_INVALID_ARGUMENT, NULL, 0,
           cnt ? "out of memory" : "no branch names", NULL);
        return;
    }
    r->cnt = cnt;
    for (size_t i = 0; i < cnt; i++) {
        if ((r->names[i] = sm_malloc(lens[i] + 1)) == NULL) {
            assign_req_free(r);
            cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
            return;
        }
        memcpy(r->names[i], names[i], lens[i]);
        r->names[i][lens[i]] = '\0';
        r->lens[i] = lens[i];
    }
    r->shard = shard;
    r->unassign = unassign;
    r->cb = cb;
    r->arg = arg;
    r->next = n->assign_q;
    n->assign_q = r;
    assign_kick(n);
}

void meta_change(struct node *n, int (*mutate)(struct placement *p, void *ctx, struct err *err),
                 void *ctx, fwd_done_cb cb, void *arg)
{
    struct assign_req *r = sm_calloc(1, sizeof *r);
    if (r == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    r->mutate = mutate;
    r->ctx = ctx;
    r->cb = cb;
    r->arg = arg;
    r->next = n->assign_q;
    n->assign_q = r;
    assign_kick(n);
}

/* ---- Reconcile, leader spreading, the tick ------------------------------------------------- */

/* Open every shard group the table gives this node that it does not host yet (a node
 * that joined, or a replica added by the rebalancer): empty, without bootstrapping; the
 * shard's leader adds it and raft fills it by snapshot. */
static void reconcile(struct node *n)
{
    for (size_t i = 0; i < n->pl.nshards; i++) {
        const struct pl_shard *s = &n->pl.shards[i];
        if (n->groups[s->id] || n->retiring[s->id] || !placement_shard_has(s, n->cfg.node_id))
            continue;
        struct err err;
        err_clear(&err);
        log_info("placement gives this node a replica of shard %u: opening it", s->id);
        if (node_group_start(n, s->id, NULL, 0, &err))
            log_error("cannot open shard %u: %s", s->id, err.msg);
    }
}

static void transfer_done(void *arg, int code, const uint8_t *result, size_t len,
                          const char *message, const char *leader)
{
    (void)arg, (void)result, (void)len, (void)leader;
    if (code)
        log_debug("leader spreading: %s: %s", err_name(code), message ? message : "");
}

/* Hand each shard this node leads to its preferred replica when that one is a voter. */
static void spread_leaders(struct node *n, uint64_t now)
{
    for (size_t i = 0; i < n->pl.nshards; i++) {
        const struct pl_shard *s = &n->pl.shards[i];
        struct node_group *g = n->groups[s->id];
        if (g == NULL || s->nreplicas == 0 || s->replicas[0] == n->cfg.node_id ||
            now - n->transfer_at[s->id] < SPREAD_COOLDOWN_MS)
            continue;
        struct repl_status st;
        repl_group_status(g->group, &st);
        if (st.role != REPL_LEADER)
            continue;
        bool voter = false;
        for (size_t k = 0; k < st.nmembers; k++)
            voter = voter || (st.members[k].id == s->replicas[0] && st.members[k].voter);
        if (!voter)
            continue;
        n->transfer_at[s->id] = now;
        log_info("shard %u: handing leadership to its preferred replica, node %llu", s->id,
                 (unsigned long long)s->replicas[0]);
        repl_transfer(g->group, s->replicas[0], transfer_done, NULL);
    }
}

static void tick(uv_timer_t *t)
{
    struct node *n = t->data;
    if (n->stopping)
        return;
    uint64_t now = uv_now(n->loop);
    struct repl_status st;
    node_group_status(n, 0, &st);
    bool member = false;
    for (size_t i = 0; i < st.nmembers; i++)
        member = member || st.members[i].id == n->cfg.node_id;
    if (!n->pl_reading) {
        struct node_group *g0 = node_group(n, 0);
        /* A replica that knows no leader may have been removed from the meta group
         * without hearing of it (the leader stops sending to removed members): its own
         * copy would stay old, so it asks the others too. */
        bool remote = !member || st.leader_id == 0;
        if (n->pl_fresh_wanted || (remote && now - n->pl_last_remote_ms >= REMOTE_REFRESH_MS)) {
            start_fresh_read(n);
        } else if (member && g0 && st.applied_index != n->pl_applied) {
            /* Our own replica moved on: read the table from it (no network). */
            n->pl_reading = true;
            n->pl_applied = st.applied_index;
            metacell_read(g0->group, placement_cell, true, local_read_done, n);
        }
    }
    authz_tick(n, member, &st); /* the access table: the same refresh scheme */
    if (st.role == REPL_LEADER && !n->have_pl && n->pl_absent && !n->pl_initing &&
        n->cfg.nmembers > 0)
        write_initial(n);
    if (n->have_pl) {
        reconcile(n);
        rebalance_tick(n, now);
        if (now - n->last_spread_ms >= SPREAD_EVERY_MS) {
            n->last_spread_ms = now;
            spread_leaders(n, now);
        }
    }
    waiters_check(n);
    assign_kick(n);
}

void shards_start(struct node *n)
{
    uv_timer_init(n->loop, &n->shard_timer);
    n->shard_timer.data = n;
    n->shard_timer_on = true;
    n->last_spread_ms = uv_now(n->loop);
    uv_timer_start(&n->shard_timer, tick, 0, TICK_MS);
    move_service_start(n);
}

static void shard_timer_closed(uv_handle_t *h)
{
    (void)h;
}

void shards_stop(struct node *n, void (*cb)(struct node *n))
{
    move_service_stop(n);
    if (n->shard_timer_on) {
        n->shard_timer_on = false;
        uv_close((uv_handle_t *)&n->shard_timer, shard_timer_closed);
    }
    authz_stop(n);
    rebalance_stop(n);
    /* Fail everyone still waiting for the table or an assignment. */
    while (n->pl_waiters) {
        struct pl_waiter *w = n->pl_waiters;
        pl_waiter_fail(n, w, STRATA_UNAVAILABLE);
    }
    n->groups_stopped_cb = cb;
    n->groups_stopping = 1; /* held until every stop is issued */
    for (uint32_t id = 0; id <= PL_MAX_SHARDS; id++) {
        struct node_group *g = n->groups[id];
        if (g == NULL)
            continue;
        n->groups[id] = NULL;
        n->groups_stopping++;
        repl_group_stop(g->group, group_stopped, g);
    }
    if (--n->groups_stopping == 0 && cb)
        cb(n);
}
