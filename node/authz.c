/* The node's side of the access table: its cache (refreshed like the placement table),
 * the answer to "may this key do that" for conn.c, the seed from --api-keys, and the
 * auth.* commands, which run on the meta leader. Rules and figures: docs/auth.md.
 *
 * Where a decision comes from (source()):
 *
 *   the replicated table, known current  -> TABLE   (the table decides)
 *   no table known, no --api-keys file   -> OPEN    (every request allowed, as before)
 *   a linearizable read found no table   -> FILE    (the key file decides until it is
 *                                                    seeded, which the meta leader does)
 *   otherwise                            -> UNKNOWN / STALE: requests wait (500 ms at
 *                                           most) for a fresh read, then get UNAVAILABLE
 *
 * "Current" means confirmed within AUTHZ_CURRENT_MS: on a meta member, its replica knows
 * a leader and has applied everything it knows committed, and the cache was read at that
 * index; elsewhere, a linearizable read at the meta leader succeeded. A node cut off from
 * the meta group therefore stops authorizing instead of honouring a revoked key.
 *
 * A denial is never given from the cache alone: it is first confirmed by a linearizable
 * read started after the request arrived (authz_confirm), so a key added or granted
 * through any node works at once on every node. A revocation reaches the caches within
 * the refresh bound (members: the next heartbeat plus one 50 ms tick). */
#include "metacell.h"
#include "node.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#define REMOTE_REFRESH_MS 500 /* non-members: like the placement cache */
#define AUTHZ_CURRENT_MS 5000 /* a cache not confirmed for this long is not trusted */
#define CONFIRM_TIMEOUT_MS 2000
#define STALE_CONFIRM_MS 500 /* the wait when the copy is not current anyway */
#define SYNC_TIMEOUT_MS 1000 /* a fresh read not answered by then failed (a hung node) */
#define FAIL_FAST_MS 2000    /* after a failed fresh read, a stale copy refuses at once */
#define CHANGE_ATTEMPTS 8

static const char auth_cell[] = "auth";

/* A failing meta group costs a waiting request this many fresh reads, not the timeout. */
#define CONFIRM_TRIES 3

struct authz_waiter {
    uint64_t want;        /* the fresh read that must have succeeded */
    uint64_t failed;      /* fresh_failed when it started waiting */
    uint64_t version;     /* or, when set: the table version the cache must reach */
    uint64_t deadline_ms; /* answered from the cache as it is after this */
    void (*cb)(void *arg);
    void *arg;
    struct authz_waiter *next;
};

/* ---- Setup -------------------------------------------------------------------------------- */

static struct authz_state *state(struct node *n)
{
    struct authz_state *a = &n->authz;
    if (a->init)
        return a;
    a->init = true;
    authz_table_init(&a->file);
    authz_table_init(&a->table);
    if (n->open_mode || n->auth.nkeys == 0)
        return a;
    a->has_file = true;
    struct err err;
    err_clear(&err);
    if (authz_table_from_file(&a->file, &n->auth, &err)) {
        /* Fail closed: an unusable key file lets no key in. */
        log_error("the API key file cannot be used: %s", err.msg);
        return a;
    }
    /* Only the node's own key stays in memory in clear: the rest are digests now. */
    for (size_t i = 1; i < n->auth.nkeys; i++) {
        sm_free(n->auth.keys[i].key);
        n->auth.keys[i].key = NULL;
    }
    if (!authz_entry_cluster_admin(&a->file.keys[0]))
        log_warn("the first API key (this node's own) has no admin on '*': joining and "
                 "refreshing from the meta leader will be refused");
    for (size_t i = 0; i < a->file.nkeys && !a->seedable; i++)
        a->seedable = authz_entry_cluster_admin(&a->file.keys[i]);
    if (!a->seedable)
        /* A table nobody could change would outlive the file that made it: keep the
         * file in force instead. */
        log_warn("no API key has admin on '*': the access table is not created, the key "
                 "file stays in force and auth.* commands are refused");
    return a;
}


enum source { SRC_OPEN, SRC_TABLE, SRC_FILE, SRC_UNKNOWN, SRC_STALE };

static enum source source(struct node *n, const struct authz_table **t)
{
    struct authz_state *a = state(n);
    uint64_t now = uv_now(n->loop);
    bool current = a->current_ms && now - a->current_ms <= AUTHZ_CURRENT_MS;
    *t = NULL;
    if (a->have) {
        *t = &a->table;
        return current ? SRC_TABLE : SRC_STALE;
    }
    if (!a->has_file)
        return SRC_OPEN;
    *t = &a->file;
    if (a->absent)
        return current ? SRC_FILE : SRC_STALE;
    return SRC_UNKNOWN;
}

/* ---- Decisions ------------------------------------------------------------------------------ */

static void start_fresh(struct node *n);

bool authz_on(struct node *n)
{
    const struct authz_table *t;
    return source(n, &t) != SRC_OPEN;
}

int authz_hello(struct node *n, const char *key, size_t len, bool confirmed, struct err *err)
{
    const struct authz_table *t;
    enum source src = source(n, &t);
    if (src == SRC_OPEN)
        return 0;
    if (key == NULL)
        return err_set(err, STRATA_UNAUTHENTICATED, "an API key is required");
    uint8_t d[AUTHZ_DIGEST_LEN];
    authz_digest(key, len, d);
    if (authz_table_find(t, d))
        return 0;
    if (!confirmed)
        return AUTHZ_AGAIN;
    if (src == SRC_UNKNOWN || src == SRC_STALE)
        return 0; /* cannot tell yet: every request is checked once the table is known */
    return err_set(err, STRATA_UNAUTHENTICATED, "unknown API key");
}

int authz_request(struct node *n, const uint8_t *digest, enum authz_perm need,
                  const char *const *names, const size_t *lens, size_t cnt, bool confirmed,
                  struct err *err)
{
    const struct authz_table *t;
    enum source src = source(n, &t);
    if (src == SRC_OPEN)
        return 0;
    if (digest == NULL)
        return err_set(err, STRATA_UNAUTHENTICATED, "an API key is required");
    const struct authz_entry *e = authz_table_find(t, digest);
    if (src == SRC_UNKNOWN || src == SRC_STALE) {
        if (need == AUTHZ_NONE && e)
            return 0; /* cluster.status: nothing is read or changed */
        struct authz_state *a = &n->authz;
        uint64_t now = uv_now(n->loop);
        bool cut_off = a->last_fail_ms > a->last_ok_ms && now - a->last_fail_ms < FAIL_FAST_MS;
        if (!confirmed && !cut_off)
            return AUTHZ_AGAIN;
        if (cut_off && !a->reading)
            start_fresh(n); /* keep finding out, without making this client wait */
        return err_set(err, STRATA_UNAVAILABLE,
                       "this node's copy of the access table is not current (no contact with "
                       "the meta group): try again or another node");
    }
    if (e == NULL)
        return confirmed ? err_set(err, STRATA_UNAUTHENTICATED,
                                   "this API key is not in the access table (removed?)")
                         : AUTHZ_AGAIN;
    int rc = authz_entry_check(e, need, names, lens, cnt, err);
    return rc && !confirmed ? AUTHZ_AGAIN : rc;
}

/* ---- Refreshing the cache -------------------------------------------------------------------- */

static void waiters_check(struct node *n, uint64_t seq);

/* Adopt a decoded table unless the cache already holds a newer one. */
static void adopt(struct node *n, struct authz_table *t)
{
    struct authz_state *a = &n->authz;
    if (a->have && t->version < a->table.version) {
        authz_table_free(t);
        return;
    }
    if (!a->have || t->version != a->table.version)
        log_info("access table version %llu: %zu keys", (unsigned long long)t->version, t->nkeys);
    authz_table_free(&a->table);
    a->table = *t; /* moves ownership */
    authz_table_init(t);
    a->have = true;
    a->absent = false;
    if (a->waiters)
        waiters_check(n, a->fresh_done);
}

/* Decode a table (its MessagePack encoding) with its version and adopt it. */
static int adopt_bytes(struct node *n, const uint8_t *p, size_t len, uint64_t version,
                       struct err *err)
{
    struct authz_table t;
    authz_table_init(&t);
    int rc = authz_table_decode(&t, p, len, err);
    if (rc == 0) {
        t.version = version;
        adopt(n, &t);
    }
    return rc;
}

/* The same for a table held as a msgpack object (inside an auth.sync answer). */
static int adopt_value(struct node *n, const msgpack_object *v, uint64_t version, struct err *err)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    int rc = msgpack_pack_object(&pk, *v) ? err_set(err, STRATA_OUT_OF_MEMORY, "out of memory")
                                          : adopt_bytes(n, b.data, b.len, version, err);
    buf_close(&b);
    return rc;
}

/* A state.get result of the cell. 0 (adopted), NOT_FOUND (no table) or an error. */
static int adopt_cell(struct node *n, const uint8_t *result, size_t len, struct err *err)
{
    struct metacell c;
    metacell_init(&c);
    int rc = metacell_decode_get(&c, auth_cell, result, len, err);
    if (rc == 0)
        rc = c.present ? adopt_bytes(n, c.value.data, c.value.len, c.counter, err)
                       : STRATA_NOT_FOUND;
    metacell_close(&c);
    return rc;
}

/* Write `t` into the cell if its counter is still `expected` (its version as read). */
static int write_cell(struct repl_group *g, const struct authz_table *t, uint64_t expected,
                      repl_done_cb cb, void *arg)
{
    struct buf v;
    buf_init(&v);
    int rc = authz_table_encode(t, &v);
    if (rc == 0)
        rc = metacell_write(g, auth_cell, METACELL_CAS, expected, v.data, v.len, cb, arg);
    buf_close(&v);
    return rc;
}

static void start_fresh(struct node *n);

/* Wake every waiter the fresh read `seq` satisfies (or that ran out of time). Callbacks
 * may add waiters, so the ready ones are unlinked first. */
static void waiters_check(struct node *n, uint64_t seq)
{
    struct authz_state *a = &n->authz;
    uint64_t now = uv_now(n->loop);
    struct authz_waiter *ready = NULL, **tail = &ready;
    for (struct authz_waiter **pp = &a->waiters; *pp;) {
        struct authz_waiter *w = *pp;
        bool ok = w->version ? a->have && a->table.version >= w->version
                             : w->want <= seq || a->fresh_failed - w->failed >= CONFIRM_TRIES;
        if (ok || now >= w->deadline_ms || n->stopping) {
            *pp = w->next;
            w->next = NULL;
            *tail = w;
            tail = &w->next;
        } else {
            pp = &w->next;
        }
    }
    while (ready) {
        struct authz_waiter *w = ready;
        ready = w->next;
        w->cb(w->arg);
        sm_free(w);
    }
}

struct read_ctx {
    struct node *n;
    uint64_t seq;        /* fresh reads */
    uint64_t started_ms; /* fresh reads: the cache is current as of then */
    uint64_t applied;    /* local reads: the meta applied index read at */
};

/* `retry_now`: a failure that named the meta leader (the next try will likely work). */
static void fresh_failed(struct node *n)
{
    struct authz_state *a = &n->authz;
    a->fresh_failed++;
    a->last_fail_ms = uv_now(n->loop);
}

/* A fresh read ended. One that SYNC_TIMEOUT_MS already gave up on (not `inflight` any
 * more) still counts if it succeeded, but was already counted as failed. */
static void fresh_finished(struct node *n, uint64_t seq, bool ok, uint64_t started_ms,
                           bool retry_now)
{
    struct authz_state *a = &n->authz;
    bool mine = seq == a->inflight;
    if (mine) {
        a->reading = false;
        a->inflight = 0;
    }
    if (ok) {
        if (started_ms > a->current_ms)
            a->current_ms = started_ms;
        if (seq > a->fresh_done)
            a->fresh_done = seq;
        a->last_ok_ms = uv_now(n->loop);
    } else if (mine) {
        fresh_failed(n);
    }
    waiters_check(n, a->fresh_done);
    if (!mine)
        return;
    if (!ok && a->waiters)
        a->fresh_wanted = true; /* again, at the next tick unless retry_now */
    if (a->fresh_wanted && !n->stopping && (ok || (retry_now && a->waiters)))
        start_fresh(n);
}

static void local_fresh_done(void *arg, int code, const uint8_t *result, size_t len,
                             const char *message, const char *leader)
{
    (void)leader;
    struct read_ctx *rc = arg;
    struct node *n = rc->n;
    uint64_t seq = rc->seq, started = rc->started_ms;
    sm_free(rc);
    if (n->stopping)
        return;
    bool ok = false;
    if (code == 0) {
        struct err err;
        err_clear(&err);
        int r = adopt_cell(n, result, len, &err);
        if (r == STRATA_NOT_FOUND && !n->authz.have)
            n->authz.absent = true;
        ok = r == 0 || r == STRATA_NOT_FOUND;
        if (!ok)
            log_error("access table rejected: %s", err.msg);
    } else {
        log_debug("access table read failed: %s: %s", err_name(code), message ? message : "");
    }
    fresh_finished(n, seq, ok, started, false);
}

/* An auth.sync answer from the meta leader: {version, table} | {version, unchanged}. */
static void remote_fresh_done(void *arg, int code, const uint8_t *result, size_t len,
                              const char *message, const char *leader)
{
    struct read_ctx *rc = arg;
    struct node *n = rc->n;
    uint64_t seq = rc->seq, started = rc->started_ms;
    sm_free(rc);
    if (n->stopping)
        return;
    bool ok = false, hinted = false;
    if (code == STRATA_NOT_LEADER && leader && *leader && strcmp(leader, n->cfg.advertise) != 0) {
        node_group_hint(n, 0, leader, strlen(leader));
        hinted = true;
    }
    if (code == 0) {
        msgpack_zone z;
        msgpack_zone_init(&z, 4096);
        msgpack_object o;
        size_t off = 0;
        struct err err;
        err_clear(&err);
        if (msgpack_unpack((const char *)result, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *v = node_map_get(&o, "version"), *t = node_map_get(&o, "table"),
                                 *same = node_map_get(&o, "unchanged");
            bool unchanged = same && same->type == MSGPACK_OBJECT_BOOLEAN && same->via.boolean;
            if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                if (unchanged && n->authz.have && n->authz.table.version == v->via.u64) {
                    ok = true;
                } else if (t && t->type == MSGPACK_OBJECT_NIL) {
                    if (!n->authz.have)
                        n->authz.absent = true;
                    ok = true;
                } else if (t) {
                    ok = adopt_value(n, t, v->via.u64, &err) == 0;
                    if (!ok)
                        log_warn("access table from the meta leader rejected: %s", err.msg);
                }
            }
        }
        msgpack_zone_destroy(&z);
    } else {
        log_debug("access table refresh failed: %s: %s", err_name(code), message ? message : "");
    }
    fresh_finished(n, seq, ok, started, hinted);
}

/* Where to send auth.sync: the meta leader as far as we know, else the nodes in turn. */
static const char *sync_target(struct node *n, unsigned round)
{
    const char *l = node_group_leader(n, 0);
    if (l[0] && strcmp(l, n->cfg.advertise) != 0 && round % 4 != 3)
        return l;
    const char *list[PL_MAX_NODES + NODE_MAX_MEMBERS];
    size_t cnt = 0;
    for (size_t i = 0; n->have_pl && i < n->pl.nnodes && cnt < PL_MAX_NODES; i++)
        if (strcmp(n->pl.nodes[i].address, n->cfg.advertise) != 0)
            list[cnt++] = n->pl.nodes[i].address;
    for (size_t i = 0; i < n->cfg.nmembers; i++)
        if (strcmp(n->cfg.members[i].address, n->cfg.advertise) != 0)
            list[cnt++] = n->cfg.members[i].address;
    if (cnt)
        return list[round % cnt];
    /* A joining node knows only its --join list. */
    static char addr[REPL_ADDRESS_MAX + 1];
    const char *p = n->cfg.join;
    size_t count = 1;
    if (*p == '\0')
        return NULL;
    for (const char *q = p; *q; q++)
        count += *q == ',';
    for (size_t i = 0; i < round % count && (p = strchr(p, ',')) != NULL; i++)
        p++;
    if (p == NULL)
        return NULL;
    snprintf(addr, sizeof addr, "%.*s", (int)strcspn(p, ","), p);
    return addr;
}

static void start_fresh(struct node *n)
{
    struct authz_state *a = &n->authz;
    struct read_ctx *rc = sm_calloc(1, sizeof *rc);
    if (rc == NULL)
        return;
    a->reading = true;
    a->fresh_wanted = false;
    rc->n = n;
    rc->seq = ++a->fresh_started;
    rc->started_ms = uv_now(n->loop);
    a->inflight = rc->seq;
    a->inflight_ms = rc->started_ms;
    a->last_remote_ms = rc->started_ms;
    struct node_group *g0 = node_group(n, 0);
    struct repl_status st;
    node_group_status(n, 0, &st);
    if (g0 && g0->group && st.role == REPL_LEADER) {
        metacell_read(g0->group, auth_cell, false, local_fresh_done, rc);
        return;
    }
    const char *to = sync_target(n, a->round++);
    if (to == NULL) {
        uint64_t seq = rc->seq;
        sm_free(rc);
        fresh_finished(n, seq, false, 0, false);
        return;
    }
    /* {"op":"auth.sync","known":V}: the leader leaves the table out if V is current. */
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "auth.sync");
    node_pack_str(&pk, "known");
    msgpack_pack_uint64(&pk, a->have ? a->table.version : 0);
    fwd_request(n, to, node_self_secret(n), b.data, b.len, PROTO_REQ_FORWARDED, remote_fresh_done, rc);
    buf_close(&b);
}

void authz_confirm(struct node *n, void (*cb)(void *arg), void *arg)
{
    struct authz_state *a = state(n);
    struct authz_waiter *w = sm_calloc(1, sizeof *w);
    if (w == NULL || n->stopping) {
        sm_free(w);
        cb(arg);
        return;
    }
    const struct authz_table *t;
    enum source src = source(n, &t);
    w->want = a->fresh_started + 1;
    w->failed = a->fresh_failed;
    w->deadline_ms = uv_now(n->loop) + (src == SRC_STALE || src == SRC_UNKNOWN
                                            ? STALE_CONFIRM_MS
                                            : CONFIRM_TIMEOUT_MS);
    w->cb = cb;
    w->arg = arg;
    w->next = a->waiters;
    a->waiters = w;
    if (a->reading)
        a->fresh_wanted = true;
    else
        start_fresh(n);
}

static void local_read_done(void *arg, int code, const uint8_t *result, size_t len,
                            const char *message, const char *leader)
{
    (void)leader;
    struct read_ctx *rc = arg;
    struct node *n = rc->n;
    uint64_t applied = rc->applied;
    sm_free(rc);
    if (n->stopping)
        return;
    struct authz_state *a = &n->authz;
    a->reading = false;
    if (code) {
        log_debug("access table local read failed: %s: %s", err_name(code), message ? message : "");
        return;
    }
    struct err err;
    err_clear(&err);
    int r = adopt_cell(n, result, len, &err);
    if (r == 0 || r == STRATA_NOT_FOUND)
        a->read_applied = applied;
    if (r == STRATA_NOT_FOUND && !a->have && !a->absent)
        a->fresh_wanted = true; /* only the leader can say "there is none" */
    else if (r && r != STRATA_NOT_FOUND)
        log_error("access table rejected: %s", err.msg);
    if (a->fresh_wanted)
        start_fresh(n);
}

/* ---- Seeding from --api-keys ------------------------------------------------------------------
 */

static void seed_done(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                      const char *leader)
{
    (void)leader;
    struct node *n = arg;
    struct authz_state *a = &n->authz;
    a->seeding = false;
    if (n->stopping)
        return;
    struct err err;
    err_clear(&err);
    uint64_t version = 0;
    int rc = metacell_decode_write(auth_cell, code, result, len, message, &version, &err);
    if (rc == 0) {
        struct authz_table t;
        authz_table_init(&t);
        if (authz_table_copy(&t, &a->file) == 0) {
            t.version = version; /* state.cas on an absent cell: counter 1 */
            adopt(n, &t);
        }
        log_info("access table seeded from the API key file: %zu keys", a->file.nkeys);
    } else if (rc != STRATA_CONFLICT) {
        log_warn("seeding the access table failed: %s: %s", err_name(rc), err.msg);
    }
    a->fresh_wanted = true; /* CONFLICT: another leader wrote it first; read it */
}

static void seed(struct node *n)
{
    struct authz_state *a = &n->authz;
    struct node_group *g0 = node_group(n, 0);
    if (g0 == NULL || g0->group == NULL || a->file.nkeys == 0)
        return;
    log_info("seeding the access table from the API key file (%zu keys)", a->file.nkeys);
    a->seeding = true; /* before the write: its callback may run at once */
    /* Counter 0: only if absent, so it is written once per cluster. */
    if (write_cell(g0->group, &a->file, 0, seed_done, n))
        a->seeding = false;
}

/* ---- The tick (called by shards.c with the meta group's status) --------------------------------
 */

void authz_tick(struct node *n, bool member, const struct repl_status *st)
{
    struct authz_state *a = state(n);
    if (n->stopping)
        return;
    uint64_t now = uv_now(n->loop);
    if (a->inflight && now - a->inflight_ms > SYNC_TIMEOUT_MS) {
        /* Sent to a node that does not answer (stopped, partitioned): give up on it. */
        a->inflight = 0;
        a->reading = false;
        fresh_failed(n);
        if (a->waiters)
            a->fresh_wanted = true;
    }
    waiters_check(n, a->fresh_done);
    /* A member that follows a leader and has applied all it knows committed, with the
     * cache read at that index, is current. */
    if (member && st->leader_id && st->applied_index >= st->commit_index &&
        a->read_applied == st->applied_index && a->read_applied)
        a->current_ms = now;
    bool current = a->current_ms && now - a->current_ms <= AUTHZ_CURRENT_MS;
    if ((a->have || a->has_file) && current != a->was_current && a->current_ms) {
        if (current)
            log_info("the access table copy is current again");
        else
            log_warn("the access table copy was not confirmed for %d ms (no contact with the "
                     "meta group): requests get UNAVAILABLE until it is",
                     AUTHZ_CURRENT_MS);
        a->was_current = current;
    }
    if (!a->reading) {
        struct node_group *g0 = node_group(n, 0);
        if (a->fresh_wanted || (!member && now - a->last_remote_ms >= REMOTE_REFRESH_MS)) {
            start_fresh(n);
        } else if (member && g0 && g0->group && st->applied_index != a->read_applied) {
            struct read_ctx *rc = sm_calloc(1, sizeof *rc);
            if (rc) {
                rc->n = n;
                rc->applied = st->applied_index;
                a->reading = true;
                metacell_read(g0->group, auth_cell, true, local_read_done, rc);
            }
        }
    }
    if (st->role == REPL_LEADER && a->absent && !a->have && a->seedable && !a->seeding)
        seed(n);
}

void authz_stop(struct node *n)
{
    struct authz_state *a = state(n);
    waiters_check(n, UINT64_MAX);
    authz_table_free(&a->table);
    authz_table_free(&a->file);
    a->have = false;
}

/* ---- auth.* commands on the meta leader --------------------------------------------------------
 */

/* auth.list / auth.sync: a linearizable read of the cell, answered from it. */
struct table_read {
    struct node *n;
    bool sync;
    uint64_t known;
    fwd_done_cb cb;
    void *arg;
};

static void pack_grants(msgpack_packer *pk, const struct authz_entry *e)
{
    msgpack_pack_array(pk, (uint32_t)e->ngrants);
    for (size_t g = 0; g < e->ngrants; g++) {
        msgpack_pack_map(pk, 2);
        node_pack_str(pk, "perm");
        node_pack_str(pk, authz_perm_name(e->grants[g].perm));
        node_pack_str(pk, "patterns");
        msgpack_pack_array(pk, (uint32_t)e->grants[g].npatterns);
        for (size_t j = 0; j < e->grants[g].npatterns; j++)
            node_pack_str(pk, e->grants[g].patterns[j]);
    }
}

static void table_read_done(void *arg, int code, const uint8_t *result, size_t len,
                            const char *message, const char *leader)
{
    struct table_read *tr = arg;
    struct node *n = tr->n;
    if (code) {
        tr->cb(tr->arg, code, NULL, 0, message, leader);
        sm_free(tr);
        return;
    }
    struct err err;
    err_clear(&err);
    int rc = n->stopping ? err_set(&err, STRATA_UNAVAILABLE, "the node is shutting down")
                         : adopt_cell(n, result, len, &err);
    bool none = rc == STRATA_NOT_FOUND;
    if (rc && !none) {
        tr->cb(tr->arg, rc, NULL, 0, err.msg, NULL);
        sm_free(tr);
        return;
    }
    if (none && !n->authz.have)
        n->authz.absent = true;
    rc = 0; /* no table is an answer too ("table": nil), not an error */
    const struct authz_table *t = none ? NULL : &n->authz.table;
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    if (tr->sync) {
        bool same = t && tr->known == t->version;
        msgpack_pack_map(&pk, 2);
        node_pack_str(&pk, "version");
        msgpack_pack_uint64(&pk, t ? t->version : 0);
        node_pack_str(&pk, same ? "unchanged" : "table");
        if (same)
            msgpack_pack_true(&pk);
        else if (t == NULL)
            msgpack_pack_nil(&pk);
        else
            rc = authz_table_encode(t, &b);
    } else {
        /* No secrets: names, grants and the nodes' flag only. */
        msgpack_pack_map(&pk, 3);
        node_pack_str(&pk, "enabled");
        if (t)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
        node_pack_str(&pk, "version");
        msgpack_pack_uint64(&pk, t ? t->version : 0);
        node_pack_str(&pk, "keys");
        msgpack_pack_array(&pk, t ? (uint32_t)t->nkeys : 0);
        for (size_t i = 0; t && i < t->nkeys; i++) {
            msgpack_pack_map(&pk, 3);
            node_pack_str(&pk, "name");
            node_pack_str(&pk, t->keys[i].name);
            node_pack_str(&pk, "node");
            if (t->keys[i].node)
                msgpack_pack_true(&pk);
            else
                msgpack_pack_false(&pk);
            node_pack_str(&pk, "grants");
            pack_grants(&pk, &t->keys[i]);
        }
    }
    if (rc == 0 && b.len > 0)
        tr->cb(tr->arg, 0, b.data, b.len, NULL, NULL);
    else
        tr->cb(tr->arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
    buf_close(&b);
    sm_free(tr);
}

static void read_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                       fwd_done_cb cb, void *arg)
{
    (void)key;
    struct table_read *tr = sm_calloc(1, sizeof *tr);
    struct node_group *g0 = node_group(n, 0);
    if (tr == NULL || g0 == NULL || g0->group == NULL) {
        sm_free(tr);
        cb(arg, tr ? STRATA_UNAVAILABLE : STRATA_OUT_OF_MEMORY, NULL, 0,
           tr ? "the meta group is not hosted here" : "out of memory", NULL);
        return;
    }
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *op = node_map_get(&o, "op"), *k = node_map_get(&o, "known");
        tr->sync = op && op->type == MSGPACK_OBJECT_STR && op->via.str.size == 9 &&
                   memcmp(op->via.str.ptr, "auth.sync", 9) == 0;
        tr->known = k && k->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? k->via.u64 : 0;
    }
    msgpack_zone_destroy(&z);
    tr->n = n;
    tr->cb = cb;
    tr->arg = arg;
    metacell_read(g0->group, auth_cell, false, table_read_done, tr);
}

/* auth.add / grant / revoke / remove: read the table linearizably, apply the change to
 * it, write it back with state.cas on the counter read; a CONFLICT (another change came
 * first) repeats the round. */
struct change {
    struct node *n;
    struct authz_change c;
    char key[2 * 32 + 1];     /* a generated key, returned once */
    struct authz_table table; /* as written: the leader's cache takes it on success */
    int attempts;
    uint64_t version;
    fwd_done_cb cb;
    void *arg;
};

static void change_finish(struct change *ch, int code, const char *msg, bool changed)
{
    if (code) {
        ch->cb(ch->arg, code, NULL, 0, msg, NULL);
    } else {
        struct buf b;
        buf_init(&b);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, node_buf_w);
        msgpack_pack_map(&pk, ch->key[0] ? 4 : 3);
        node_pack_str(&pk, "version");
        msgpack_pack_uint64(&pk, ch->version);
        node_pack_str(&pk, "name");
        node_pack_str(&pk, ch->c.name);
        node_pack_str(&pk, "changed");
        if (changed)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
        if (ch->key[0]) {
            node_pack_str(&pk, "key");
            node_pack_str(&pk, ch->key);
        }
        if (b.len)
            ch->cb(ch->arg, 0, b.data, b.len, NULL, NULL);
        else
            ch->cb(ch->arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        buf_close(&b);
    }
    authz_change_free(&ch->c);
    authz_table_free(&ch->table);
    memset(ch->key, 0, sizeof ch->key);
    sm_free(ch);
}

static void change_round(struct change *ch);

static void change_written(void *arg, int code, const uint8_t *result, size_t len,
                           const char *message, const char *leader)
{
    (void)leader;
    struct change *ch = arg;
    struct err err;
    err_clear(&err);
    int rc = metacell_decode_write(auth_cell, code, result, len,
                                   message ? message : "the access table write failed",
                                   &ch->version, &err);
    if (rc == STRATA_CONFLICT && ++ch->attempts < CHANGE_ATTEMPTS && !ch->n->stopping) {
        change_round(ch);
        return;
    }
    if (rc == 0 && !ch->n->stopping) {
        ch->table.version = ch->version;
        adopt(ch->n, &ch->table); /* this node at once; the others within the bound */
    }
    change_finish(ch, rc, err.msg, rc == 0);
}

static void change_read(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                        const char *leader)
{
    (void)leader;
    struct change *ch = arg;
    struct node *n = ch->n;
    if (code) {
        change_finish(ch, code, message ? message : "the access table read failed", false);
        return;
    }
    struct err err;
    err_clear(&err);
    struct authz_table t;
    authz_table_init(&t);
    struct metacell cell;
    metacell_init(&cell);
    int rc = metacell_decode_get(&cell, auth_cell, result, len, &err);
    if (rc == 0 && !cell.present)
        rc = err_set(&err, STRATA_INVALID_ARGUMENT,
                     "authentication is off in this cluster (no --api-keys when it was created): "
                     "there is no access table to change");
    else if (rc == 0 && (rc = authz_table_decode(&t, cell.value.data, cell.value.len, &err)) == 0)
        t.version = cell.counter;
    metacell_close(&cell);
    bool changed = false;
    if (rc == 0)
        rc = authz_table_apply(&t, &ch->c, &changed, &err);
    if (rc || !changed) {
        ch->version = t.version;
        authz_table_free(&t);
        change_finish(ch, rc, err.msg, false);
        return;
    }
    authz_table_free(&ch->table);
    ch->table = t; /* moves ownership; set before the write, whose callback may run at once */
    struct node_group *g0 = node_group(n, 0);
    rc = g0 == NULL || g0->group == NULL
             ? STRATA_UNAVAILABLE
             : write_cell(g0->group, &ch->table, ch->table.version, change_written, ch);
    if (rc)
        change_finish(ch, rc, "cannot write the access table", false);
}

static void change_round(struct change *ch)
{
    struct node_group *g0 = node_group(ch->n, 0);
    if (g0 == NULL || g0->group == NULL || ch->n->stopping) {
        change_finish(ch, STRATA_UNAVAILABLE, "the meta group is not hosted here", false);
        return;
    }
    metacell_read(g0->group, auth_cell, false, change_read, ch);
}

static void change_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                         fwd_done_cb cb, void *arg)
{
    (void)key;
    struct change *ch = sm_calloc(1, sizeof *ch);
    if (ch == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    ch->n = n;
    ch->cb = cb;
    ch->arg = arg;
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    struct err err;
    err_clear(&err);
    int rc = msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS
                 ? 0
                 : err_set(&err, STRATA_INVALID_ARGUMENT, "the command cannot be decoded");
    const msgpack_object *op = rc ? NULL : node_map_get(&o, "op");
    char opname[32] = "";
    if (op && op->type == MSGPACK_OBJECT_STR && op->via.str.size < sizeof opname)
        memcpy(opname, op->via.str.ptr, op->via.str.size);
    if (rc == 0)
        rc = authz_change_parse(&ch->c, opname, &o, &err);
    msgpack_zone_destroy(&z);
    if (rc == 0 && ch->c.generate) {
        /* 32 random bytes from the OS-seeded CSPRNG; only the digest is stored. */
        unsigned char raw[32];
        if (RAND_bytes(raw, sizeof raw) != 1) {
            rc = err_set(&err, STRATA_INTERNAL, "no random bytes for a new key");
        } else {
            for (size_t i = 0; i < sizeof raw; i++)
                snprintf(ch->key + 2 * i, 3, "%02x", raw[i]);
            authz_digest(ch->key, strlen(ch->key), ch->c.digest);
        }
    }
    if (rc) {
        change_finish(ch, rc, err.msg, false);
        return;
    }
    change_round(ch);
}

/* A change relayed through this node is answered once this node's cache holds it, so
 * the node a client used sees its change at once (the others within the bound). */
struct relay {
    struct node *n;
    fwd_done_cb cb;
    void *arg;
    struct buf result;
};

static void relay_release(void *arg)
{
    struct relay *r = arg;
    r->cb(r->arg, 0, r->result.data, r->result.len, NULL, NULL);
    buf_close(&r->result);
    sm_free(r);
}

static void relay_done(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                       const char *leader)
{
    struct relay *r = arg;
    struct node *n = r->n;
    uint64_t version = 0;
    if (code == 0) {
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        msgpack_object o;
        size_t off = 0;
        if (msgpack_unpack((const char *)result, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *v = node_map_get(&o, "version");
            version = v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : 0;
        }
        msgpack_zone_destroy(&z);
    }
    struct authz_state *a = state(n);
    struct authz_waiter *w = NULL;
    if (code || version == 0 || n->stopping || (a->have && a->table.version >= version) ||
        buf_append(&r->result, result, len) || (w = sm_calloc(1, sizeof *w)) == NULL) {
        r->cb(r->arg, code, result, len, message, leader);
        buf_close(&r->result);
        sm_free(r);
        return;
    }
    w->version = version;
    w->deadline_ms = uv_now(n->loop) + CONFIRM_TIMEOUT_MS;
    w->cb = relay_release;
    w->arg = r;
    w->next = a->waiters;
    a->waiters = w;
    if (a->reading)
        a->fresh_wanted = true;
    else
        start_fresh(n);
}

void authz_command(struct node *n, const char *op, const msgpack_object *cmd, const uint8_t *bytes,
                   size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb,
                   void *arg)
{
    if (n->stopping) {
        cb(arg, STRATA_UNAVAILABLE, NULL, 0, "the node is shutting down", NULL);
        return;
    }
    if (strcmp(op, "auth.list") == 0 || strcmp(op, "auth.sync") == 0) {
        const msgpack_object *k = node_map_get(cmd, "known");
        if (k && k->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "argument 'known' must be a version", NULL);
            return;
        }
        route_local(n, read_local, 0, bytes, len, flags, key, cb, arg);
        return;
    }
    if (strcmp(op, "auth.add") != 0 && strcmp(op, "auth.grant") != 0 &&
        strcmp(op, "auth.revoke") != 0 && strcmp(op, "auth.remove") != 0) {
        char m[128];
        snprintf(m, sizeof m, "unknown command '%.40s' (auth.list, add, grant, revoke, remove)",
                 op);
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, m, NULL);
        return;
    }
    /* Bad arguments are refused here, before anything travels to the meta leader. */
    struct authz_change c;
    struct err err;
    err_clear(&err);
    int rc = authz_change_parse(&c, op, cmd, &err);
    if (rc) {
        cb(arg, rc, NULL, 0, err.msg, NULL);
        return;
    }
    authz_change_free(&c);
    struct relay *r = sm_calloc(1, sizeof *r);
    if (r == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    r->n = n;
    r->cb = cb;
    r->arg = arg;
    buf_init(&r->result);
    route_local(n, change_local, 0, bytes, len, flags, key, relay_done, r);
}
