/* Branch moves, the driver: on the meta leader, every move recorded in the meta group's
 * `moves` cell (sharding/migration.h) runs its phases as a chain of idempotent steps —
 * shard-side move.* commands (storage/move.c) and the table cut-over — recording each
 * phase change in the cell first, so a new meta leader resumes every move where the
 * record and the shards' markers say it is. Also the admin commands cluster.move_branch,
 * cluster.moves, cluster.move_abort and the internal cluster.move_exec.
 * docs/sharding.md "Branch moves". */
#include "migration.h"
#include "move_internal.h"
#include "node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 100
#define RELOAD_MS 2000 /* re-read the record this often while leading */
#define BACKOFF_MIN_MS 20
#define BACKOFF_MAX_MS 1000
#define GRACE_MS 1000       /* sealed source kept after the cut-over (stale routers) */
#define SMALL_ROUND 256     /* a delta round this small: fence now */
#define MAX_ROUNDS 16       /* catch-up rounds before fencing anyway */
#define MAX_CONFLICTS 8     /* consecutive refused imports before aborting */
#define OP_TIMEOUT_MS 15000 /* a step with no answer is abandoned and retried */
#define FENCED_TIMEOUT_MS                                                                          \
    2000 /* ... sooner while the branch is fenced: its writers wait                                \
          * (the routers hold their commands 3 s at most) */
#define CELL_ATTEMPTS 8
#define KEY_MAX 2200 /* an internal key (storage: IKEY_MAX) */

/* ---- State ------------------------------------------------------------------------- */

typedef int (*cell_fn)(struct migration *m, void *ctx, struct err *err);
typedef void (*cell_cb)(void *arg, int code, const char *msg, const struct migration *m);

struct cell_op {
    cell_fn fn; /* NULL: just read */
    void *ctx;
    cell_cb cb;
    void *arg;
    int attempts;
    struct cell_op *next;
};

struct drive;

struct mover {
    struct node *n;
    uv_timer_t timer;
    bool on, closing, timer_closed;
    uint64_t term; /* meta term this node leads in (0: not leading) */
    bool loaded, loading;
    uint64_t loaded_ms;
    struct cell_op *q, *qtail;
    bool cell_busy;
    struct migration *m; /* scratch record for cell rounds */
    struct drive *drives;
};

/* One move driven here. Its steps run one at a time (`main`), except the seal, which
 * runs beside the last catch-up rounds. */
struct drive {
    struct mover *mv;
    struct drive *next;
    char name[PL_MAX_BRANCH_NAME + 1];
    uint32_t from, to, chunk;
    uint64_t id;
    enum mig_phase phase;
    char message[MIG_MESSAGE_MAX + 1];
    /* What the target holds (its import marker), when known. */
    bool pos_known, has_marker, copy_complete, has_copy_pos, has_log_pos, done;
    uint64_t copy_at, copy_ver, log_pos;
    uint8_t copy_key[KEY_MAX];
    size_t copy_klen;
    /* Source side, FENCED. */
    bool fenced, sealed, seal_inflight;
    uint64_t fenced_ms, seal_seq, seal_ms;
    /* Where the writers' pause goes (logged at the cut-over): loop ms when the fence was
     * sent, the last import answered and the table change was asked for. */
    uint64_t fence_sent_ms, imported_ms, cas_sent_ms;
    /* The chunks of the current phase, as the driver saw them (logged at its end):
     * count, bytes, and each step's round trip — summed and the longest. */
    struct chunk_stats {
        uint32_t chunks;
        uint64_t bytes, records, export_ms, export_max, import_ms, import_max;
    } cs;
    int rounds, conflicts;
    unsigned backoff;
    bool main;    /* a step is in flight */
    bool remote;  /* ... and it is a shard step (it can be abandoned) */
    uint64_t seq; /* step number: an abandoned step's answer is ignored */
    uint64_t step_ms;
    const char *op, *step_op, *seal_op; /* the command built last, the steps in flight */
    unsigned refs;                      /* callbacks that still hold the drive */
    bool stopped, abort_requested, graced, in_grace;
    uv_timer_t timer;
    bool waiting;
};

void drive_next(struct drive *d);
static void drive_release(struct drive *d);

/* ---- MessagePack helpers --------------------------------------------------------------- */

void pk_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}

static void pk_name(msgpack_packer *pk, const char *s)
{
    node_pack_str(pk, s);
}

bool obj_u64(const msgpack_object *o, uint64_t *v)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *v = o->via.u64;
    return true;
}

bool obj_bool(const msgpack_object *o)
{
    return o && o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean;
}

bool obj_str_is(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* ---- Shard steps: cluster.move_exec {group, cmd} ---------------------------------------- */

/* On the group's leader: run the engine command inside. Only move.* commands pass. */
void exec_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                       fwd_done_cb cb, void *arg)
{
    (void)key;
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    const msgpack_object *g = NULL, *inner = NULL;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS) {
        g = node_map_get(&o, "group");
        inner = node_map_get(&o, "cmd");
    }
    uint64_t gid = 0;
    struct node_group *grp =
        obj_u64(g, &gid) && gid <= PL_MAX_SHARDS ? node_group(n, (uint32_t)gid) : NULL;
    if (grp == NULL || grp->group == NULL || inner == NULL || inner->type != MSGPACK_OBJECT_BIN) {
        msgpack_zone_destroy(&z);
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0,
           "cluster.move_exec needs 'group' (hosted here) and 'cmd' (binary)", NULL);
        return;
    }
    const uint8_t *ic = (const uint8_t *)inner->via.bin.ptr;
    size_t il = inner->via.bin.size;
    msgpack_zone z2;
    msgpack_zone_init(&z2, 256);
    msgpack_object io;
    off = 0;
    bool is_move = false;
    if (msgpack_unpack((const char *)ic, il, &off, &z2, &io) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *op = node_map_get(&io, "op");
        is_move = op && op->type == MSGPACK_OBJECT_STR && op->via.str.size > 5 &&
                  memcmp(op->via.str.ptr, "move.", 5) == 0;
    }
    msgpack_zone_destroy(&z2);
    enum storage_cmd_kind kind;
    struct err err;
    if (!is_move || storage_cmd_kind(ic, il, &kind, &err) != 0) {
        msgpack_zone_destroy(&z);
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.move_exec runs move.* commands only",
           NULL);
        return;
    }
    if (kind == STORAGE_CMD_WRITE)
        repl_write(grp->group, ic, il, cb, arg);
    else
        repl_read(grp->group, ic, il, false, cb, arg);
    msgpack_zone_destroy(&z);
}

struct call {
    struct drive *d;
    uint64_t seq;
    bool seal; /* the side step */
    void (*done)(struct drive *d, int code, const msgpack_object *res, const char *msg);
};

static void call_done(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                      const char *leader)
{
    (void)leader;
    struct call *c = arg;
    struct drive *d = c->d;
    bool current = !d->stopped && c->seq == (c->seal ? d->seal_seq : d->seq);
    if (current && c->seal)
        d->seal_inflight = false;
    else if (current)
        d->main = d->remote = false;
    if (current) {
        msgpack_zone z;
        msgpack_zone_init(&z, 1024);
        msgpack_object o = {.type = MSGPACK_OBJECT_NIL};
        size_t off = 0;
        if (code == 0 && (len == 0 || msgpack_unpack((const char *)result, len, &off, &z, &o) !=
                                          MSGPACK_UNPACK_SUCCESS)) {
            code = STRATA_INTERNAL;
            message = "undecodable answer";
        }
        c->done(d, code, &o, message ? message : err_name(code));
        msgpack_zone_destroy(&z);
    }
    sm_free(c);
    drive_release(d);
}

/* Send an engine command `inner` to shard `gid`'s leader; `done` gets the decoded answer. */
static void shard_call(struct drive *d, uint32_t gid, const struct buf *inner, bool seal,
                       void (*done)(struct drive *d, int code, const msgpack_object *res,
                                    const char *msg))
{
    struct node *n = d->mv->n;
    struct call *c = sm_malloc(sizeof *c);
    struct buf b;
    buf_init(&b);
    if (c == NULL) {
        done(d, STRATA_OUT_OF_MEMORY, NULL, "out of memory");
        return;
    }
    if (!seal) {
        d->main = d->remote = true;
        d->step_ms = uv_now(n->loop);
        d->step_op = d->op;
    } else {
        d->seal_inflight = true;
        d->seal_ms = uv_now(n->loop);
        d->seal_op = d->op;
    }
    *c = (struct call){d, seal ? d->seal_seq : d->seq, seal, done};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 3);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.move_exec");
    node_pack_str(&pk, "group");
    msgpack_pack_uint32(&pk, gid);
    node_pack_str(&pk, "cmd");
    pk_bin(&pk, inner->data, inner->len);
    d->refs++;
    route_local(n, exec_local, gid, b.data, b.len, 0, node_self_key(n), call_done, c);
    buf_close(&b);
}

/* Start an inner command map {"op": op, "name": branch, ...nmore}. */
static void inner_begin(struct buf *b, msgpack_packer *pk, const char *op, struct drive *d,
                        uint32_t nmore)
{
    d->op = op;
    buf_init(b);
    msgpack_packer_init(pk, b, node_buf_w);
    msgpack_pack_map(pk, 2 + nmore);
    node_pack_str(pk, "op");
    node_pack_str(pk, op);
    node_pack_str(pk, "name");
    pk_name(pk, d->name);
}

/* ---- The moves cell: serialized read-modify-CAS rounds on the meta leader ---------------- */

int record_decode(struct migration *m, struct metacell *cell, const uint8_t *result, size_t len,
                  struct err *err)
{
    migration_init(m);
    int rc = metacell_decode_get(cell, MOVES_CELL, result, len, err);
    if (rc == 0 && cell->present &&
        (rc = migration_decode(m, cell->value.data, cell->value.len, err)) == 0)
        m->counter = cell->counter;
    return rc;
}

static void cell_kick(struct mover *mv);
static void cell_round(struct mover *mv);

static void mover_free_maybe(struct mover *mv);

static void cell_finish(struct mover *mv, int code, const char *msg)
{
    struct cell_op *op = mv->q;
    mv->q = op->next;
    if (mv->q == NULL)
        mv->qtail = NULL;
    mv->cell_busy = false;
    if (mv->closing && code == 0)
        code = STRATA_UNAVAILABLE, msg = "the node is shutting down";
    op->cb(op->arg, code, msg, code ? NULL : mv->m);
    sm_free(op);
    if (mv->closing) {
        /* Answer whatever is still queued, then the mover may go. */
        while (mv->q) {
            op = mv->q;
            mv->q = op->next;
            op->cb(op->arg, STRATA_UNAVAILABLE, "the node is shutting down", NULL);
            sm_free(op);
        }
        mv->qtail = NULL;
        mover_free_maybe(mv);
        return;
    }
    cell_kick(mv);
}

static void cell_written(void *arg, int code, const uint8_t *result, size_t len,
                         const char *message, const char *leader)
{
    (void)leader;
    struct mover *mv = arg;
    struct err err;
    err_clear(&err);
    int rc = metacell_decode_write(MOVES_CELL, code, result, len, message, &mv->m->counter, &err);
    if (rc == STRATA_CONFLICT && ++mv->q->attempts < CELL_ATTEMPTS) {
        cell_round(mv); /* someone else wrote (state.cas or state.init): read again, recompute */
        return;
    }
    cell_finish(mv, rc, rc ? err.msg : NULL);
}

static void cell_read(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                      const char *leader)
{
    (void)leader;
    struct mover *mv = arg;
    if (code) {
        cell_finish(mv, code, message ? message : "reading the moves record failed");
        return;
    }
    struct err err;
    err_clear(&err);
    struct metacell old; /* the value as read, to skip writing an unchanged record */
    metacell_init(&old);
    struct buf enc;
    buf_init(&enc);
    int rc = record_decode(mv->m, &old, result, len, &err);
    struct cell_op *op = mv->q;
    if (rc == 0 && op->fn)
        rc = op->fn(mv->m, op->ctx, &err);
    if (rc == 0 && op->fn && (rc = migration_encode(mv->m, &enc)) != 0)
        err_set(&err, rc, "out of memory");
    /* Written only when the change changed something (else answered as read). */
    bool write = rc == 0 && op->fn &&
                 !(enc.len == old.value.len && memcmp(enc.data, old.value.data, enc.len) == 0);
    metacell_close(&old);
    struct node_group *g0 = node_group(mv->n, 0);
    if (write && (g0 == NULL || g0->group == NULL)) {
        rc = err_set(&err, STRATA_UNAVAILABLE, "the meta group is not hosted here");
        write = false;
    }
    /* A never written cell (counter 0) is created with state.init, else a CAS. Its
     * callback may run before this returns: mv->q is not touched after. */
    if (write &&
        (rc = metacell_write(g0->group, MOVES_CELL, mv->m->counter ? METACELL_CAS : METACELL_INIT,
                             mv->m->counter, enc.data, enc.len, cell_written, mv))) {
        err_set(&err, rc, "out of memory");
        write = false;
    }
    buf_close(&enc);
    if (!write)
        cell_finish(mv, rc, rc ? err.msg : NULL);
}

static void cell_round(struct mover *mv)
{
    struct node_group *g0 = node_group(mv->n, 0);
    if (g0 == NULL || g0->group == NULL || mv->n->stopping) {
        cell_finish(mv, STRATA_UNAVAILABLE, "the meta group is not hosted here");
        return;
    }
    metacell_read(g0->group, MOVES_CELL, false, cell_read, mv);
}

static void cell_kick(struct mover *mv)
{
    if (mv->cell_busy || mv->q == NULL)
        return;
    mv->cell_busy = true;
    cell_round(mv);
}

/* Queue a change of the record: `fn` runs on a fresh copy (m->counter = the counter it
 * was read at; it may run again if another writer interferes); cb gets the record as
 * written (or read, when fn is NULL or changed nothing). */
void cell_change(struct mover *mv, cell_fn fn, void *ctx, cell_cb cb, void *arg)
{
    if (mv->closing) {
        cb(arg, STRATA_UNAVAILABLE, "the node is shutting down", NULL);
        return;
    }
    struct cell_op *op = sm_calloc(1, sizeof *op);
    if (op == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, "out of memory", NULL);
        return;
    }
    *op = (struct cell_op){fn, ctx, cb, arg, 0, NULL};
    if (mv->qtail)
        mv->qtail->next = op;
    else
        mv->q = op;
    mv->qtail = op;
    cell_kick(mv);
}

/* ---- Drives ------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h)
{
    sm_free(h->data);
}

/* Drop a hold; a stopped drive is freed with the last one (it touches nothing else
 * then: it left the mover's list when it stopped). */
static void drive_release(struct drive *d)
{
    if (--d->refs == 0)
        uv_close((uv_handle_t *)&d->timer, timer_closed);
}

static void drive_stop(struct drive *d)
{
    if (d->stopped)
        return;
    d->stopped = true;
    for (struct drive **pp = &d->mv->drives; *pp; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    if (d->waiting || d->in_grace) {
        uv_timer_stop(&d->timer);
        d->waiting = d->in_grace = false;
        d->refs--; /* the timer's hold: it will not fire */
    }
    drive_release(d); /* the list's hold */
}

struct drive *drive_find(struct mover *mv, const char *name)
{
    for (struct drive *d = mv->drives; d; d = d->next)
        if (!d->stopped && strcmp(d->name, name) == 0)
            return d;
    return NULL;
}

static void drive_wake(uv_timer_t *t)
{
    struct drive *d = t->data;
    d->waiting = false;
    drive_next(d);
    drive_release(d);
}

/* Run drive_next after `ms`. */
static void drive_later(struct drive *d, unsigned ms)
{
    if (d->stopped || d->waiting)
        return;
    d->waiting = true;
    d->refs++;
    uv_timer_start(&d->timer, drive_wake, ms, 0);
}

/* A transient failure: forget what we knew of the target and try again later. */
static void drive_retry(struct drive *d, const char *what, int code, const char *msg)
{
    d->pos_known = false;
    unsigned b = d->backoff ? d->backoff : BACKOFF_MIN_MS;
    d->backoff = b * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b * 2;
    log_info("move %llu of '%s': %s: %s: %s (retrying in %u ms)", (unsigned long long)d->id,
             d->name, what, err_name(code), msg ? msg : "", b);
    drive_later(d, b);
}

static bool transient(int code)
{
    return code == STRATA_NOT_LEADER || code == STRATA_UNAVAILABLE || code == STRATA_TIMEOUT ||
           code == STRATA_UNKNOWN_OUTCOME || code == STRATA_OUT_OF_MEMORY ||
           code == STRATA_INTERNAL;
}

struct drive *drive_new(struct mover *mv, const struct mig_move *m)
{
    struct drive *d = sm_calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->mv = mv;
    snprintf(d->name, sizeof d->name, "%s", m->name);
    d->from = m->from;
    d->to = m->to;
    d->chunk = m->chunk;
    d->id = m->id;
    d->phase = m->phase;
    snprintf(d->message, sizeof d->message, "%s", m->message);
    uv_timer_init(mv->n->loop, &d->timer);
    d->timer.data = d;
    d->refs = 1; /* the drive list's hold, dropped by drive_stop */
    d->next = mv->drives;
    mv->drives = d;
    log_info("move %llu of '%s' (shard %u -> %u): driving from phase %s", (unsigned long long)d->id,
             d->name, d->from, d->to, migration_phase_name(d->phase));
    return d;
}

/* ---- Recording phases ------------------------------------------------------------------- */

struct advance {
    struct drive *d;
    enum mig_phase next;
    bool finish;
    enum mig_outcome outcome;
    char message[MIG_MESSAGE_MAX + 1];
};

static int advance_fn(struct migration *m, void *ctx, struct err *err)
{
    struct advance *a = ctx;
    size_t len = strlen(a->d->name);
    if (a->finish)
        return migration_finish(m, a->d->name, len, a->d->id, a->outcome,
                                a->message[0] ? a->message : NULL, err);
    return migration_advance(m, a->d->name, len, a->d->id, a->next, a->message, err);
}

/* What the chunks of the phase that ends cost (tests/bench/move_pause.sh sums these up):
 * an export's round trip is the source leader's read, an import's the target's log
 * round and apply. */
static void log_chunks(struct drive *d)
{
    struct chunk_stats *c = &d->cs;
    if (c->chunks)
        log_info("move %llu of '%s': %s chunks: %u, %llu bytes, %llu records; export %llu ms "
                 "(longest %llu), import %llu ms (longest %llu)",
                 (unsigned long long)d->id, d->name, migration_phase_name(d->phase), c->chunks,
                 (unsigned long long)c->bytes, (unsigned long long)c->records,
                 (unsigned long long)c->export_ms, (unsigned long long)c->export_max,
                 (unsigned long long)c->import_ms, (unsigned long long)c->import_max);
    memset(c, 0, sizeof *c);
}

static void advanced(void *arg, int code, const char *msg, const struct migration *m)
{
    (void)m;
    struct advance *a = arg;
    struct drive *d = a->d;
    d->main = false;
    if (!d->stopped) {
        if (code == 0) {
            d->backoff = 0;
            if (a->finish) {
                log_info("move %llu of '%s' (shard %u -> %u): %s%s%s", (unsigned long long)d->id,
                         d->name, d->from, d->to, migration_outcome_name(a->outcome),
                         a->message[0] ? ": " : "", a->message);
                drive_stop(d);
            } else {
                log_info("move %llu of '%s': %s -> %s", (unsigned long long)d->id, d->name,
                         migration_phase_name(d->phase), migration_phase_name(a->next));
                log_chunks(d);
                d->phase = a->next;
                if (a->next == MIG_ABORTING)
                    snprintf(d->message, sizeof d->message, "%s", a->message);
                drive_next(d);
            }
        } else if (code == STRATA_NOT_FOUND || code == STRATA_CONFLICT) {
            /* The record says otherwise (another leader moved it on): reload from it. */
            log_info("move %llu of '%s': record changed: %s", (unsigned long long)d->id, d->name,
                     msg ? msg : "");
            d->mv->loaded = false;
            drive_stop(d);
        } else {
            drive_retry(d, "recording the phase", code, msg);
        }
    }
    sm_free(a);
    drive_release(d);
}

static void record(struct drive *d, enum mig_phase next, bool finish, enum mig_outcome outcome,
                   const char *message)
{
    struct advance *a = sm_calloc(1, sizeof *a);
    if (a == NULL) {
        drive_retry(d, "recording the phase", STRATA_OUT_OF_MEMORY, "out of memory");
        return;
    }
    *a = (struct advance){d, next, finish, outcome, ""};
    snprintf(a->message, sizeof a->message, "%s", message ? message : "");
    d->main = true;
    d->step_ms = uv_now(d->mv->n->loop);
    d->refs++;
    cell_change(d->mv, advance_fn, a, advanced, a);
}

static void drive_abort(struct drive *d, const char *why, const char *msg)
{
    char m[MIG_MESSAGE_MAX + 1];
    snprintf(m, sizeof m, "%s: %s", why, msg ? msg : "");
    log_warn("move %llu of '%s': aborting: %s", (unsigned long long)d->id, d->name, m);
    record(d, MIG_ABORTING, false, 0, m);
}

/* ---- Steps -------------------------------------------------------------------------- */

/* Take the target's marker from a move.status "import" map or a move.import answer. */
static void take_marker(struct drive *d, const msgpack_object *im)
{
    d->pos_known = true;
    d->has_marker = im && im->type == MSGPACK_OBJECT_MAP;
    if (!d->has_marker)
        return;
    const msgpack_object *cp = node_map_get(im, "copy_pos"), *lp = node_map_get(im, "log_pos");
    obj_u64(node_map_get(im, "copy_at"), &d->copy_at);
    d->copy_complete = obj_bool(node_map_get(im, "copy_complete"));
    d->done = obj_str_is(node_map_get(im, "state"), "done");
    d->has_copy_pos = cp && cp->type == MSGPACK_OBJECT_ARRAY && cp->via.array.size == 2 &&
                      cp->via.array.ptr[0].type == MSGPACK_OBJECT_BIN &&
                      cp->via.array.ptr[0].via.bin.size <= KEY_MAX &&
                      obj_u64(&cp->via.array.ptr[1], &d->copy_ver);
    if (d->has_copy_pos) {
        d->copy_klen = cp->via.array.ptr[0].via.bin.size;
        memcpy(d->copy_key, cp->via.array.ptr[0].via.bin.ptr, d->copy_klen);
    }
    d->has_log_pos = obj_u64(lp, &d->log_pos);
}

static void status_done(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    if (code) {
        drive_retry(d, "reading the target's copy", code, msg);
        return;
    }
    const msgpack_object *im = node_map_get(res, "import");
    uint64_t id = 0;
    if (im && im->type == MSGPACK_OBJECT_MAP &&
        (!obj_u64(node_map_get(im, "move_id"), &id) || id != d->id))
        im = NULL; /* another move's leftover: our first chunk replaces it */
    take_marker(d, im);
    drive_next(d);
}

static void import_done(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    if (code == STRATA_CONFLICT && ++d->conflicts < MAX_CONFLICTS) {
        drive_retry(d, "import refused", code, msg); /* re-read the target's position */
        return;
    }
    if (code && transient(code)) {
        drive_retry(d, "importing", code, msg);
        return;
    }
    if (code) {
        drive_abort(d, "the target refused the copy", msg);
        return;
    }
    uint64_t took = uv_now(d->mv->n->loop) - d->step_ms;
    d->cs.import_ms += took;
    if (took > d->cs.import_max)
        d->cs.import_max = took;
    d->conflicts = 0;
    d->backoff = 0;
    take_marker(d, res);
    if (d->fenced)
        d->imported_ms = uv_now(d->mv->n->loop);
    drive_next(d);
}

static void exported(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    if (code == STRATA_BRANCH_NOT_FOUND) {
        drive_abort(d, "the branch is gone from the source", msg);
        return;
    }
    if (code && transient(code)) {
        drive_retry(d, "exporting", code, msg);
        return;
    }
    const msgpack_object *blob = node_map_get(res, "blob");
    if (code || blob == NULL || blob->type != MSGPACK_OBJECT_BIN) {
        drive_abort(d, "the source refused the export", code ? msg : "no blob in the answer");
        return;
    }
    uint64_t records = 0;
    obj_u64(node_map_get(res, "records"), &records);
    bool last = obj_bool(node_map_get(res, "last"));
    uint64_t took = uv_now(d->mv->n->loop) - d->step_ms;
    d->cs.chunks++;
    d->cs.bytes += blob->via.bin.size;
    d->cs.records += records;
    d->cs.export_ms += took;
    if (took > d->cs.export_max)
        d->cs.export_max = took;
    if (d->phase == MIG_CATCHING_UP) {
        d->rounds++;
        if (last && records < SMALL_ROUND)
            d->rounds = MAX_ROUNDS; /* small enough: fence after this import */
    }
    struct buf b;
    msgpack_packer pk;
    inner_begin(&b, &pk, "move.import", d, 3);
    node_pack_str(&pk, "source_shard");
    msgpack_pack_uint32(&pk, d->from);
    node_pack_str(&pk, "move_id");
    msgpack_pack_uint64(&pk, d->id);
    node_pack_str(&pk, "blob");
    pk_bin(&pk, blob->via.bin.ptr, blob->via.bin.size);
    shard_call(d, d->to, &b, false, import_done);
    buf_close(&b);
}

static void send_export(struct drive *d)
{
    bool copy = !d->has_marker || !d->copy_complete;
    struct buf b;
    msgpack_packer pk;
    uint32_t more = 2;
    if (copy)
        more += (d->has_marker ? 1 : 0) + (d->has_marker && d->has_copy_pos ? 2 : 0);
    else
        more += 1;
    inner_begin(&b, &pk, "move.export", d, more);
    node_pack_str(&pk, "mode");
    node_pack_str(&pk, copy ? "copy" : "delta");
    node_pack_str(&pk, "max_bytes");
    msgpack_pack_uint32(&pk, d->chunk);
    if (copy && d->has_marker) {
        node_pack_str(&pk, "at");
        msgpack_pack_uint64(&pk, d->copy_at);
        if (d->has_copy_pos) {
            node_pack_str(&pk, "after_key");
            pk_bin(&pk, d->copy_key, d->copy_klen);
            node_pack_str(&pk, "after_ver");
            msgpack_pack_uint64(&pk, d->copy_ver);
        }
    } else if (!copy && d->has_log_pos) {
        node_pack_str(&pk, "from_pos");
        msgpack_pack_uint64(&pk, d->log_pos);
    } else if (!copy) {
        node_pack_str(&pk, "since");
        msgpack_pack_uint64(&pk, d->copy_at);
    }
    shard_call(d, d->from, &b, false, exported);
    buf_close(&b);
}

static void fence_done(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    if (code && transient(code)) {
        drive_retry(d, "fencing the source", code, msg);
        return;
    }
    if (code) {
        drive_abort(d, "the source refused the fence", msg);
        return;
    }
    if (!d->fenced)
        d->fenced_ms = uv_now(d->mv->n->loop);
    d->fenced = true;
    d->sealed = d->sealed || obj_str_is(node_map_get(res, "state"), "sealed");
    d->backoff = 0;
    const msgpack_object *ex = node_map_get(res, "export");
    if (ex && ex->type == MSGPACK_OBJECT_MAP && !d->done) {
        exported(d, 0, ex, NULL); /* the final delta came with the fence: import it */
        return;
    }
    drive_next(d);
}

/* move.fence, sealing at once (reads of the branch pause with its writes, which the
 * cut-over waits for anyway) and asking for the delta from the target's log position,
 * so the fence, the seal and the final export are one command of the source's log. */
static void send_fence(struct drive *d)
{
    bool delta = d->has_marker && d->copy_complete && !d->done;
    struct buf b;
    msgpack_packer pk;
    inner_begin(&b, &pk, "move.fence", d, 3 + (delta ? 2 : 0));
    node_pack_str(&pk, "move_id");
    msgpack_pack_uint64(&pk, d->id);
    node_pack_str(&pk, "to_shard");
    msgpack_pack_uint32(&pk, d->to);
    node_pack_str(&pk, "seal");
    msgpack_pack_true(&pk);
    if (delta) {
        node_pack_str(&pk, d->has_log_pos ? "from_pos" : "since");
        msgpack_pack_uint64(&pk, d->has_log_pos ? d->log_pos : d->copy_at);
        node_pack_str(&pk, "max_bytes");
        msgpack_pack_uint32(&pk, d->chunk);
    }
    shard_call(d, d->from, &b, false, fence_done);
    buf_close(&b);
}

static void seal_done(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    (void)res;
    if (code == 0) {
        d->sealed = true;
    } else {
        log_info("move %llu of '%s': sealing: %s: %s", (unsigned long long)d->id, d->name,
                 err_name(code), msg ? msg : "");
        if (code == STRATA_CONFLICT)
            d->fenced = false; /* not fenced by us after all: fence again */
    }
    if (!d->main)
        drive_later(d, code ? BACKOFF_MIN_MS : 0);
}

static void send_simple(struct drive *d, uint32_t gid, const char *op, bool seal,
                        void (*done)(struct drive *, int, const msgpack_object *, const char *),
                        bool with_to, bool force)
{
    struct buf b;
    msgpack_packer pk;
    inner_begin(&b, &pk, op, d, 1 + with_to + force);
    node_pack_str(&pk, "move_id");
    msgpack_pack_uint64(&pk, d->id);
    if (with_to) {
        node_pack_str(&pk, "to_shard");
        msgpack_pack_uint32(&pk, d->to);
    }
    if (force) {
        node_pack_str(&pk, "force");
        msgpack_pack_true(&pk);
    }
    shard_call(d, gid, &b, seal, done);
    buf_close(&b);
}

/* The cut-over: the table says target, epoch + 1 (placement_move). */
static int mutate_cutover(struct placement *p, void *ctx, struct err *err)
{
    struct drive *d = ctx;
    size_t len = strlen(d->name);
    const struct pl_branch *b = placement_branch(p, d->name, len);
    if (b == NULL)
        return err_set(err, STRATA_BRANCH_NOT_FOUND, "branch '%s' is not in the table", d->name);
    if (b->shard == d->to)
        return 0; /* done before (a retry, or another leader) */
    if (b->shard != d->from)
        return err_set(err, STRATA_CONFLICT, "branch '%s' is on shard %u, not %u", d->name,
                       b->shard, d->from);
    return placement_move(p, d->name, len, d->to, err);
}

static void nudged(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                   const char *leader)
{
    (void)arg, (void)code, (void)result, (void)len, (void)message, (void)leader;
}

/* After the cut-over: every other node holding a replica of the source or the target
 * asks the meta leader for the table now. The source's router is holding the branch's
 * commands until its table moves on, and clients that learn the new table go to the
 * target's leader with its epoch, which that node waits for if it has not seen it: both
 * would otherwise catch up only at their next periodic refresh. One fresh read per
 * node, answered to nobody; a node that misses it catches up as before. */
static void nudge_replicas(struct node *n, uint32_t from, uint32_t to)
{
    if (!n->have_pl)
        return;
    struct buf cmd;
    buf_init(&cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, node_buf_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.placement");
    node_pack_str(&pk, "fresh");
    msgpack_pack_true(&pk);
    const struct pl_shard *a = placement_shard(&n->pl, from), *b = placement_shard(&n->pl, to);
    for (size_t i = 0; i < n->pl.nnodes; i++) {
        const struct pl_node *nd = &n->pl.nodes[i];
        if (nd->id == n->cfg.node_id ||
            !((a && placement_shard_has(a, nd->id)) || (b && placement_shard_has(b, nd->id))))
            continue;
        fwd_request(n, nd->address, node_self_secret(n), cmd.data, cmd.len, PROTO_REQ_FORWARDED,
                    nudged, NULL);
    }
    buf_close(&cmd);
}

static void cut_over(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                     const char *leader)
{
    (void)result, (void)len, (void)leader;
    struct drive *d = arg;
    d->main = false;
    if (!d->stopped) {
        if (code) {
            drive_retry(d, "cutting over", code, message);
        } else {
            uint64_t now = uv_now(d->mv->n->loop);
            log_info("move %llu of '%s': cut over to shard %u, %llu ms after the fence",
                     (unsigned long long)d->id, d->name, d->to,
                     (unsigned long long)(now - d->fenced_ms));
            /* The pause, step by step (tests/bench/move_pause.sh sums these up); a step
             * that ran before this leader took the move over counts as 0. */
            uint64_t fs = d->fence_sent_ms ? d->fence_sent_ms : d->fenced_ms;
            uint64_t im = d->imported_ms > d->fenced_ms ? d->imported_ms : d->fenced_ms;
            uint64_t cs = d->cas_sent_ms > im ? d->cas_sent_ms : im;
            log_info("move %llu of '%s': pause steps: fence %llu ms, final copy %llu ms, "
                     "waiting %llu ms, table %llu ms (fence sent at %llu)",
                     (unsigned long long)d->id, d->name, (unsigned long long)(d->fenced_ms - fs),
                     (unsigned long long)(im - d->fenced_ms), (unsigned long long)(cs - im),
                     (unsigned long long)(now - cs), (unsigned long long)fs);
            d->mv->n->pl_fresh_wanted = true; /* our own cache catches up at once */
            nudge_replicas(d->mv->n, d->from, d->to);
            record(d, MIG_CUTOVER, false, 0, NULL);
        }
    }
    drive_release(d);
}

static void released(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    (void)res;
    if (code && code != STRATA_BRANCH_NOT_FOUND) {
        drive_retry(d, "releasing the source's copy", code, msg);
        return;
    }
    record(d, 0, true, MIG_DONE, NULL);
}

static void unfenced(struct drive *d, int code, const msgpack_object *res, const char *msg);

static void dropped(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    (void)res;
    if (code) {
        drive_retry(d, "dropping the target's copy", code, msg);
        return;
    }
    d->done = false;
    d->has_marker = false;
    d->pos_known = true; /* nothing there now */
    send_simple(d, d->from, "move.unfence", false, unfenced, false, false);
}

static void unfenced(struct drive *d, int code, const msgpack_object *res, const char *msg)
{
    (void)res;
    if (code) {
        drive_retry(d, "unfencing the source", code, msg);
        return;
    }
    record(d, 0, true, MIG_ABORTED, d->message);
}

static void grace_over(uv_timer_t *t);

/* Decide and issue the next step of a drive (nothing when one is in flight). */
void drive_next(struct drive *d)
{
    if (d->stopped || d->main || d->waiting)
        return;
    struct node *n = d->mv->n;
    if (n->stopping)
        return;
    /* An abort is honoured only while the target is known not to hold the whole branch:
     * the cut-over is issued only after it does, so the table still says source. */
    if (d->abort_requested && d->pos_known && !d->done && d->phase < MIG_CUTOVER) {
        d->abort_requested = false;
        drive_abort(d, "aborted", "by cluster.move_abort");
        return;
    }
    switch (d->phase) {
    case MIG_COPYING:
    case MIG_CATCHING_UP:
    case MIG_FENCED:
        if (!d->pos_known) {
            struct buf b;
            msgpack_packer pk;
            inner_begin(&b, &pk, "move.status", d, 0);
            shard_call(d, d->to, &b, false, status_done);
            buf_close(&b);
            return;
        }
        break;
    default:
        break;
    }
    switch (d->phase) {
    case MIG_COPYING:
        if (d->has_marker && d->copy_complete) {
            record(d, MIG_CATCHING_UP, false, 0, NULL);
            return;
        }
        send_export(d);
        return;
    case MIG_CATCHING_UP:
        if (d->rounds >= MAX_ROUNDS) {
            record(d, MIG_FENCED, false, 0, NULL);
            return;
        }
        send_export(d);
        return;
    case MIG_FENCED:
        if (!d->fenced) {
            if (d->fence_sent_ms == 0)
                d->fence_sent_ms = uv_now(n->loop);
            send_fence(d);
            return;
        }
        if (!d->sealed && !d->seal_inflight)
            send_simple(d, d->from, "move.seal", true, seal_done, false, false);
        if (!d->done) {
            send_export(d);
            return;
        }
        if (!d->sealed)
            return; /* seal_done continues */
        d->main = true;
        d->step_ms = d->cas_sent_ms = uv_now(n->loop);
        d->refs++;
        meta_change(n, mutate_cutover, d, cut_over, d);
        return;
    case MIG_CUTOVER:
        if (!d->graced) {
            /* Routers with an older table still send the branch's commands to the sealed
             * source for a moment: they get MOVED (retried) rather than BRANCH_NOT_FOUND. */
            d->graced = true;
            d->main = d->in_grace = true;
            d->refs++;
            uv_timer_start(&d->timer, grace_over, GRACE_MS, 0);
            return;
        }
        send_simple(d, d->from, "move.release", false, released, false, false);
        return;
    case MIG_ABORTING: {
        const struct pl_branch *b =
            n->have_pl ? placement_branch(&n->pl, d->name, strlen(d->name)) : NULL;
        if (b && b->shard == d->to) {
            /* Never drop the copy the table points at (cannot happen by the protocol). */
            log_error("move %llu of '%s': aborting, but the table says shard %u: not dropping "
                      "the target's copy",
                      (unsigned long long)d->id, d->name, d->to);
            drive_later(d, BACKOFF_MAX_MS);
            return;
        }
        send_simple(d, d->to, "move.abort", false, dropped, false, true);
        return;
    }
    }
}

static void grace_over(uv_timer_t *t)
{
    struct drive *d = t->data;
    d->main = d->in_grace = false;
    drive_next(d);
    drive_release(d);
}

/* ---- Leadership, loading, the tick ----------------------------------------------------- */

static void stop_all(struct mover *mv)
{
    struct drive *d = mv->drives;
    while (d) {
        struct drive *next = d->next;
        drive_stop(d);
        d = next;
    }
}

static void loaded(void *arg, int code, const char *msg, const struct migration *m)
{
    struct mover *mv = arg;
    mv->loading = false;
    if (code) {
        log_debug("moves record: %s: %s", err_name(code), msg ? msg : "");
        return;
    }
    mv->loaded = true;
    mv->loaded_ms = uv_now(mv->n->loop);
    for (size_t i = 0; i < m->n; i++)
        if (drive_find(mv, m->moves[i].name) == NULL) {
            struct drive *d = drive_new(mv, &m->moves[i]);
            if (d)
                drive_next(d);
        }
}

static void tick(uv_timer_t *t)
{
    struct mover *mv = t->data;
    struct node *n = mv->n;
    if (n->stopping)
        return;
    struct repl_status st;
    node_group_status(n, 0, &st);
    bool leader = st.role == REPL_LEADER;
    if (!leader || st.term != mv->term) {
        if (mv->drives)
            stop_all(mv);
        mv->loaded = false;
        mv->term = leader ? st.term : 0;
    }
    if (!leader)
        return;
    uint64_t now = uv_now(n->loop);
    if (!mv->loading && (!mv->loaded || now - mv->loaded_ms >= RELOAD_MS)) {
        mv->loading = true;
        cell_change(mv, NULL, NULL, loaded, mv);
    }
    /* A step with no answer for too long (a peer that stopped answering, an answer lost
     * on the way) is abandoned: every step is idempotent, so it is simply issued again.
     * Once the source is fenced the branch's writers are waiting on it, so soon. */
    for (struct drive *d = mv->drives; d; d = d->next) {
        uint64_t limit = d->phase == MIG_FENCED && d->fenced ? FENCED_TIMEOUT_MS : OP_TIMEOUT_MS;
        if (!d->stopped && d->main && d->remote && now - d->step_ms > limit) {
            d->seq++;
            d->main = d->remote = false;
            log_warn("move %llu of '%s': %s got no answer in %llu ms: sending it again",
                     (unsigned long long)d->id, d->name, d->step_op ? d->step_op : "a step",
                     (unsigned long long)(now - d->step_ms));
            drive_retry(d, d->step_op ? d->step_op : "a step", STRATA_TIMEOUT, "no answer");
        } else if (!d->stopped && d->seal_inflight && now - d->seal_ms > limit) {
            d->seal_seq++;
            d->seal_inflight = false;
            log_warn("move %llu of '%s': %s got no answer in %llu ms: sending it again",
                     (unsigned long long)d->id, d->name, d->seal_op ? d->seal_op : "the seal",
                     (unsigned long long)(now - d->seal_ms));
            drive_retry(d, "sealing the source", STRATA_TIMEOUT, "no answer");
        }
    }
}

void move_service_start(struct node *n)
{
    struct mover *mv = sm_calloc(1, sizeof *mv);
    if (mv == NULL || (mv->m = sm_malloc(sizeof *mv->m)) == NULL) {
        sm_free(mv);
        log_error("branch moves: out of memory: moves will not be driven by this node");
        return;
    }
    mv->n = n;
    uv_timer_init(n->loop, &mv->timer);
    mv->timer.data = mv;
    mv->on = true;
    n->mover = mv;
    uv_timer_start(&mv->timer, tick, TICK_MS, TICK_MS);
}

static void mover_free_maybe(struct mover *mv)
{
    if (mv->timer_closed && !mv->cell_busy && mv->q == NULL) {
        sm_free(mv->m);
        sm_free(mv);
    }
}

static void mover_closed(uv_handle_t *h)
{
    struct mover *mv = h->data;
    mv->timer_closed = true;
    mover_free_maybe(mv);
}

void move_service_stop(struct node *n)
{
    struct mover *mv = n->mover;
    if (mv == NULL)
        return;
    n->mover = NULL;
    mv->closing = true;
    stop_all(mv);
    /* Queued record changes are answered now; a round in flight finishes on its own (its
     * raft request fails as the meta group stops) and answers the rest. */
    if (!mv->cell_busy)
        while (mv->q) {
            struct cell_op *op = mv->q;
            mv->q = op->next;
            op->cb(op->arg, STRATA_UNAVAILABLE, "the node is shutting down", NULL);
            sm_free(op);
        }
    uv_close((uv_handle_t *)&mv->timer, mover_closed);
}

/* cluster.move_abort {branch}: ask the branch's drive to abort before its cut-over. */
void move_abort_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                      fwd_done_cb cb, void *arg)
{
    (void)key;
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    const msgpack_object *br = NULL;
    if (msgpack_unpack((const char *)cmd, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS)
        br = node_map_get(&o, "branch");
    char name[PL_MAX_BRANCH_NAME + 1] = "";
    if (br && br->type == MSGPACK_OBJECT_STR && br->via.str.size <= PL_MAX_BRANCH_NAME)
        memcpy(name, br->via.str.ptr, br->via.str.size);
    msgpack_zone_destroy(&z);
    struct drive *d = n->mover && name[0] ? drive_find(n->mover, name) : NULL;
    if (name[0] == '\0') {
        cb(arg, STRATA_INVALID_ARGUMENT, NULL, 0, "cluster.move_abort needs 'branch'", NULL);
    } else if (d == NULL) {
        cb(arg, STRATA_NOT_FOUND, NULL, 0, "no move of this branch is in flight", NULL);
    } else if (d->phase != MIG_ABORTING && (d->phase == MIG_CUTOVER || d->done)) {
        cb(arg, STRATA_CONFLICT, NULL, 0,
           "the move is past its cut-over: the branch lives on the target now", NULL);
    } else {
        d->abort_requested = true;
        drive_next(d);
        struct mig_move m = {
            .from = d->from, .to = d->to, .id = d->id, .phase = d->phase, .chunk = d->chunk};
        snprintf(m.name, sizeof m.name, "%s", d->name);
        reply_move(cb, arg, &m);
    }
}
