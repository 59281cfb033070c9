/* The rebalancer: on the meta leader, make every group's Raft membership match the
 * placement table, then change the table one step at a time towards an even layout
 * (sharding/balance.h decides the step), then even out the branches between shards by
 * moving standalone ones (one move at a time). On every node: retire the shard replicas
 * the table no longer gives it. docs/sharding.md "Rebalancing".
 *
 * One action at a time: a status query, one membership change, one leadership transfer
 * or one table write; each completes through its callback. Each action has a generation
 * (node/rebalance_action.h): an action given up on (no answer in RB_BUSY_MAX_MS, or
 * leadership lost) may still answer later, and that late callback must neither end the
 * turn of a newer action nor act on the rebalancer's behalf. Actions are taken
 * only while this node's cached table is as new as its own meta replica's applied state
 * (a table write always precedes the membership changes that follow from it, so an
 * up-to-date cache never mistakes a new member for a stale one).
 *
 *   per tick:  meta membership ≠ table?  → add / remove / hand leadership away (group 0)
 *              a shard not checked since its last change (or for RB_RECHECK_MS)?
 *                  → ask its leader for its members → add missing (before) remove extra
 *              all converged and RB_STEP_GAP_MS since the last step?
 *                  → placement_plan → one table change (meta_change)
 *              nothing to change (and --auto-move-branches on)?
 *                  → placement_plan_branch → read the moves record / ask a shard whether
 *                    a branch is standalone / start one branch move (node/move.c)
 * Thread: the loop thread. */
#include "balance.h"
#include "migration.h"
#include "node.h"
#include "rebalance_action.h"

#include <stdio.h>
#include <string.h>

#define RB_RECHECK_MS 10000 /* a converged shard is checked again this often */
#define RB_STEP_GAP_MS 500  /* between two table changes */
#define RB_BUSY_MAX_MS 30000 /* an action whose callback never came is given up */
#define RB_RETIRE_GRACE_MS 10000
#define RB_RETRY_MS 500 /* after a failed action (a leader just died, a node is down) */

struct rb_waiter {
    struct rb_waiter *next;
    uint64_t id, deadline_ms;
    fwd_done_cb cb;
    void *arg;
};

/* ---- Actions ---------------------------------------------------------------------------
 * The action state lives in the rebalancer's private state (n->rb_auto, allocated by the
 * first action, freed at stop: a callback that finds none is stale too). */

static struct rb_action *action_state(struct node *n);

/* Start an action: its generation, for its callback; 0 (out of memory): none started. */
static uint64_t begin(struct node *n)
{
    struct rb_action *a = action_state(n);
    return a ? rb_action_begin(a, uv_now(n->loop)) : 0;
}

/* Action `gen` answered: whether it is the current one (the rebalancer is free again and
 * may act on the answer). A stale answer is only logged or remembered as a fact. */
static bool end(struct node *n, uint64_t gen)
{
    struct rb_action *a = n->rb_auto ? action_state(n) : NULL;
    return a && rb_action_end(a, gen);
}

static bool busy(struct node *n)
{
    struct rb_action *a = n->rb_auto ? action_state(n) : NULL;
    return a && a->busy;
}

/* The callback context of an action that needs nothing else. */
struct rb_call {
    struct node *n;
    uint64_t gen;
};

/* Start an action with an rb_call for its callback; NULL (out of memory): none started. */
static struct rb_call *call_begin(struct node *n)
{
    struct rb_call *c = sm_malloc(sizeof *c);
    if (c && (c->gen = begin(n)) == 0) {
        sm_free(c);
        return NULL;
    }
    if (c)
        c->n = n;
    return c;
}

/* The answer to an rb_call: frees it; whether the action was the current one. */
static bool call_end(struct rb_call *c, struct node **n)
{
    *n = c->n;
    bool current = end(c->n, c->gen);
    sm_free(c);
    return current;
}

static void action_done(void *arg, int code, const uint8_t *result, size_t len,
                        const char *message, const char *leader)
{
    (void)result, (void)len, (void)leader;
    struct node *n;
    bool current = call_end(arg, &n);
    if (code && code != STRATA_ALREADY_EXISTS) {
        log_info("rebalance: %s: %s%s", err_name(code), message ? message : "",
                 current ? "" : " (an action given up on)");
        if (current)
            n->rb_retry_at = uv_now(n->loop) + RB_RETRY_MS;
    }
}

/* ---- Meta group membership ----------------------------------------------------------- */

static bool meta_member(const struct repl_status *st, uint64_t id, bool *voter)
{
    for (size_t i = 0; i < st->nmembers; i++)
        if (st->members[i].id == id) {
            if (voter)
                *voter = st->members[i].voter;
            return true;
        }
    return false;
}

/* One change towards: the meta group's voters are active nodes, as many as there are up
 * to PL_META_MAX_VOTERS. Returns whether an action was started. */
static bool meta_converge(struct node *n, const struct repl_status *st)
{
    struct node_group *g0 = node_group(n, 0);
    if (g0 == NULL)
        return false;
    size_t voters = 0, active = 0;
    for (size_t i = 0; i < st->nmembers; i++)
        voters += st->members[i].voter;
    for (size_t i = 0; i < n->pl.nnodes; i++)
        active += n->pl.nodes[i].state == PL_NODE_ACTIVE;
    for (size_t i = 0; i < st->nmembers; i++) {
        const struct pl_node *nd = placement_node(&n->pl, st->members[i].id);
        if (nd != NULL && nd->state == PL_NODE_ACTIVE)
            continue;
        if (st->members[i].id == n->cfg.node_id) {
            if (voters < 2)
                return false; /* nobody to hand the meta group to */
            struct rb_call *c = call_begin(n);
            if (c == NULL)
                return false;
            log_info("rebalance: meta group: this node is draining, handing leadership away");
            repl_transfer(g0->group, 0, action_done, c);
            return true;
        }
        struct rb_call *c = call_begin(n);
        if (c == NULL)
            return false;
        log_info("rebalance: meta group: removing node %llu (%s)",
                 (unsigned long long)st->members[i].id, nd ? "draining" : "not in the table");
        repl_member_remove(g0->group, st->members[i].id, action_done, c);
        return true;
    }
    size_t want = active < PL_META_MAX_VOTERS ? active : PL_META_MAX_VOTERS;
    for (size_t i = 0; i < n->pl.nnodes && voters < want; i++) {
        const struct pl_node *nd = &n->pl.nodes[i];
        bool voter = false;
        if (nd->state != PL_NODE_ACTIVE || (meta_member(st, nd->id, &voter) && voter))
            continue;
        struct rb_call *c = call_begin(n);
        if (c == NULL)
            return false;
        log_info("rebalance: meta group: adding node %llu", (unsigned long long)nd->id);
        struct repl_member m = {.id = nd->id};
        snprintf(m.address, sizeof m.address, "%s", nd->address);
        repl_member_add(g0->group, &m, action_done, c);
        return true;
    }
    return false;
}

/* ---- Shard membership ------------------------------------------------------------------ */

struct shard_check {
    struct node *n;
    uint64_t gen; /* the action's */
    uint32_t shard;
    uint64_t epoch;
};

static void shard_status_done(void *arg, int code, const uint8_t *result, size_t len,
                              const char *message, const char *leader)
{
    (void)leader;
    struct shard_check *sc = arg;
    struct node *n = sc->n;
    uint32_t sid = sc->shard;
    uint64_t epoch = sc->epoch;
    bool current = end(n, sc->gen);
    sm_free(sc);
    if (!current) {
        /* Given up on: a newer action may run, which this answer must not join. */
        log_info("rebalance: shard %u: a members answer came after it was given up on", sid);
        return;
    }
    if (code) {
        log_info("rebalance: shard %u: members not known: %s: %s", sid, err_name(code),
                 message ? message : "");
        n->rb_retry_at = uv_now(n->loop) + RB_RETRY_MS;
        return;
    }
    const struct pl_shard *s = placement_shard(&n->pl, sid);
    if (s == NULL || s->epoch != epoch)
        return; /* changed meanwhile: checked again */
    struct admin_members m;
    if (admin_members_decode(result, len, &m) != 0) {
        log_error("rebalance: shard %u: undecodable member list", sid);
        return;
    }
    /* Missing (or not yet voting) replicas first: the group grows before it shrinks. */
    bool all_vote = true;
    for (uint32_t r = 0; r < s->nreplicas; r++) {
        bool found = false, voter = false;
        for (size_t i = 0; i < m.n; i++)
            if (m.ids[i] == s->replicas[r]) {
                found = true;
                voter = m.voter[i];
            }
        if (found && voter)
            continue;
        all_vote = false;
        const struct pl_node *nd = placement_node(&n->pl, s->replicas[r]);
        if (nd == NULL)
            continue;
        struct rb_call *c = call_begin(n);
        if (c == NULL)
            return;
        log_info("rebalance: shard %u: adding node %llu", sid, (unsigned long long)nd->id);
        admin_group_member(n, sid, true, nd->id, nd->address, node_self_key(n), action_done, c);
        return;
    }
    for (size_t i = 0; all_vote && i < m.n; i++) {
        if (placement_shard_has(s, m.ids[i]))
            continue;
        struct rb_call *c = call_begin(n);
        if (c == NULL)
            return;
        if (m.ids[i] == m.leader) {
            log_info("rebalance: shard %u: its leader, node %llu, leaves: handing over to %llu",
                     sid, (unsigned long long)m.leader, (unsigned long long)s->replicas[0]);
            admin_transfer(n, sid, s->replicas[0], node_self_key(n), action_done, c);
        } else {
            log_info("rebalance: shard %u: removing node %llu", sid,
                     (unsigned long long)m.ids[i]);
            admin_group_member(n, sid, false, m.ids[i], NULL, node_self_key(n), action_done, c);
        }
        return;
    }
    if (all_vote) {
        n->rb_ok_epoch[sid] = epoch;
        n->rb_checked_ms[sid] = uv_now(n->loop);
    }
}

/* Ask the next shard that needs it for its members. Returns whether one was asked;
 * *all_ok tells whether every shard matched the table at its current epoch. */
static bool shard_converge(struct node *n, uint64_t now, bool *all_ok)
{
    *all_ok = true;
    size_t ns = n->pl.nshards;
    for (size_t k = 0; k < ns; k++) {
        const struct pl_shard *s = &n->pl.shards[(n->rb_next + k) % ns];
        bool ok = n->rb_ok_epoch[s->id] == s->epoch;
        *all_ok = *all_ok && ok;
        if (ok && now - n->rb_checked_ms[s->id] < RB_RECHECK_MS)
            continue;
        n->rb_next = (uint32_t)((n->rb_next + k + 1) % ns);
        struct shard_check *sc = sm_malloc(sizeof *sc);
        uint64_t gen = sc ? begin(n) : 0;
        if (gen == 0) {
            sm_free(sc);
            return false;
        }
        *sc = (struct shard_check){n, gen, s->id, s->epoch};
        admin_group_members(n, s->id, node_self_key(n), shard_status_done, sc);
        if (!ok)
            *all_ok = false;
        return true;
    }
    return false;
}

/* ---- Table steps ------------------------------------------------------------------------- */

static int mutate_plan(struct placement *p, void *ctx, struct err *err)
{
    (void)ctx;
    /* Planned again on the table being written: a step must fit the newest table. */
    struct pl_step step;
    placement_plan(p, &step);
    return placement_plan_apply(p, &step, err);
}

static void step_done(void *arg, int code, const uint8_t *result, size_t len,
                      const char *message, const char *leader)
{
    (void)result, (void)len, (void)leader;
    struct node *n;
    call_end(arg, &n); /* even a late answer is a table write done: counted and spaced */
    n->rb_last_step_ms = uv_now(n->loop);
    if (code)
        log_info("rebalance: table change failed: %s: %s", err_name(code),
                 message ? message : "");
    else
        n->rb_steps++;
}

/* ---- Automatic branch moves ---------------------------------------------------------------
 * Once the replica plan is settled: sharding/balance.h picks a standalone branch on the
 * shard with the most branches, asked about first (move.status on its shard: no parent,
 * no forks), and node/move.c moves it like cluster.move_branch. One move cluster-wide:
 * nothing starts while the `moves` record lists one in flight, nor within
 * RB_BM_COOLDOWN_MS of the last one seen. What was learnt about branches is kept as
 * facts with an expiry, so a refused branch or a fork family is not asked about on every
 * tick. Each step is one rebalancer action. */

#define RB_BM_COOLDOWN_MS 2000   /* after the last move seen in flight, before the next */
#define RB_BM_RECORD_MS 1000     /* a moves record read this recently is current enough */
#define RB_BM_FRESH_MS 3000      /* "standalone" is trusted this long (a fork may come) */
#define RB_BM_FAMILY_MS 60000    /* a fork family member is asked about again after this */
#define RB_BM_REFUSED_MS 300000  /* a branch whose move was refused or aborted */
#define RB_BM_UNREACHABLE_MS 30000 /* a branch whose shard did not answer its status */
#define RB_BM_OPERATOR_MS 600000 /* a branch an operator moved: left where it was put */
#define RB_BM_MAX_FACTS 4096
#define RB_BM_OWN 32             /* ids of the moves this leader started */

struct rb_fact {
    char name[PL_MAX_BRANCH_NAME + 1];
    enum pl_bkind kind;
    uint64_t until_ms;
};

/* The rebalancer's private state (n->rb_auto): the action under way, and what the
 * automatic branch moves learnt. */
struct rb_auto {
    struct rb_action act;  /* one action at a time (every rebalancer action) */
    struct rb_fact *facts; /* sorted by name (strcmp) */
    size_t nfacts, cap;
    uint64_t record_ms;    /* when the moves record was last read (0: not since leading) */
    size_t in_flight;      /* moves in flight in it (or started by us since) */
    uint64_t busy_ms;      /* last time a move was seen in flight or started here */
    uint64_t seen_id;      /* finished moves up to this id were looked at */
    uint64_t own[RB_BM_OWN];
    size_t nown;
};

struct bm_req {
    struct node *n;
    uint64_t gen; /* the action's */
    struct pl_bstep step;
    char name[PL_MAX_BRANCH_NAME + 1]; /* step.branch points here */
};

static struct rb_auto *auto_state(struct node *n)
{
    if (n->rb_auto == NULL)
        n->rb_auto = sm_calloc(1, sizeof *n->rb_auto);
    return n->rb_auto;
}

static struct rb_action *action_state(struct node *n)
{
    struct rb_auto *a = auto_state(n);
    return a ? &a->act : NULL;
}

static void auto_free(struct node *n)
{
    if (n->rb_auto)
        sm_free(n->rb_auto->facts);
    sm_free(n->rb_auto);
    n->rb_auto = NULL;
}

/* Position of `name` in the facts (or where it goes). */
static size_t fact_find(const struct rb_auto *a, const char *name, bool *found)
{
    size_t lo = 0, hi = a->nfacts;
    *found = false;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(a->facts[mid].name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void fact_drop(struct rb_auto *a, size_t i)
{
    memmove(&a->facts[i], &a->facts[i + 1], (a->nfacts - i - 1) * sizeof *a->facts);
    a->nfacts--;
}

/* Remember `kind` for `name` until `until_ms` (replacing what was known). Out of memory
 * or room only forgets: the branch is asked about again. */
static void fact_put(struct rb_auto *a, const char *name, enum pl_bkind kind, uint64_t until_ms)
{
    bool found;
    size_t at = fact_find(a, name, &found);
    if (found) {
        a->facts[at].kind = kind;
        a->facts[at].until_ms = until_ms;
        return;
    }
    if (a->nfacts == RB_BM_MAX_FACTS) {
        size_t oldest = 0; /* the one that would expire first makes room */
        for (size_t i = 1; i < a->nfacts; i++)
            if (a->facts[i].until_ms < a->facts[oldest].until_ms)
                oldest = i;
        fact_drop(a, oldest);
        at = fact_find(a, name, &found);
    }
    if (a->nfacts == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        struct rb_fact *f = sm_realloc(a->facts, cap * sizeof *f);
        if (f == NULL)
            return;
        a->facts = f;
        a->cap = cap;
    }
    memmove(&a->facts[at + 1], &a->facts[at], (a->nfacts - at) * sizeof *a->facts);
    struct rb_fact *f = &a->facts[at];
    snprintf(f->name, sizeof f->name, "%s", name);
    f->kind = kind;
    f->until_ms = until_ms;
    a->nfacts++;
}

static void facts_expire(struct rb_auto *a, uint64_t now)
{
    for (size_t i = a->nfacts; i-- > 0;)
        if (a->facts[i].until_ms <= now)
            fact_drop(a, i);
}

/* The branch step for the cached table, as if `in_flight` moves were in flight. */
static int plan_branch(struct node *n, struct rb_auto *a, size_t in_flight, struct pl_bstep *st)
{
    struct pl_bfact *view = a->nfacts ? sm_malloc(a->nfacts * sizeof *view) : NULL;
    if (a->nfacts && view == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < a->nfacts; i++)
        view[i] = (struct pl_bfact){a->facts[i].name, a->facts[i].kind};
    placement_plan_branch(&n->pl, in_flight, view, a->nfacts, st);
    sm_free(view);
    return 0;
}

/* Whether move `id` is one this leader started and whose outcome it has not seen yet;
 * if so, it is taken off the list (its outcome is handled once). */
static bool own_move_take(struct rb_auto *a, uint64_t id)
{
    for (size_t i = 0; id && i < a->nown && i < RB_BM_OWN; i++)
        if (a->own[i] == id) {
            a->own[i] = 0;
            return true;
        }
    return false;
}

/* Run a cluster.move* command of node/move.c (through its admin entry point, as a client
 * command would be; forwarded to the group's leader when it is not here). */
static void move_call(struct node *n, const char *op, const struct buf *cmd, fwd_done_cb cb,
                      void *arg)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    if (msgpack_unpack((const char *)cmd->data, cmd->len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS ||
        !node_move_admin(n, op, &o, cmd->data, cmd->len, 0, node_self_key(n), cb, arg))
        cb(arg, STRATA_INTERNAL, NULL, 0, "the move driver did not take the command", NULL);
    msgpack_zone_destroy(&z);
}

static const msgpack_object *answer_map(const uint8_t *result, size_t len, msgpack_zone *z,
                                        msgpack_object *o)
{
    size_t off = 0;
    if (result == NULL ||
        msgpack_unpack((const char *)result, len, &off, z, o) != MSGPACK_UNPACK_SUCCESS ||
        o->type != MSGPACK_OBJECT_MAP)
        return NULL;
    return o;
}

static bool get_str(const msgpack_object *m, const char *key, char *out, size_t cap)
{
    const msgpack_object *x = node_map_get(m, key);
    if (x == NULL || x->type != MSGPACK_OBJECT_STR || x->via.str.size >= cap)
        return false;
    memcpy(out, x->via.str.ptr, x->via.str.size);
    out[x->via.str.size] = '\0';
    return true;
}

/* cluster.moves answered: how many are in flight; finished ones not looked at yet. */
static void record_read(void *arg, int code, const uint8_t *result, size_t len,
                        const char *message, const char *leader)
{
    (void)leader;
    struct node *n;
    /* A read given up on is older than what may have happened since (a move started
     * here): dropped; the next read sees the same finished moves. */
    if (!call_end(arg, &n))
        return;
    struct rb_auto *a = n->rb_auto;
    uint64_t now = uv_now(n->loop);
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_object o;
    const msgpack_object *m = code ? NULL : answer_map(result, len, &z, &o);
    const msgpack_object *moves = m ? node_map_get(m, "moves") : NULL;
    const msgpack_object *recent = m ? node_map_get(m, "recent") : NULL;
    if (moves == NULL || moves->type != MSGPACK_OBJECT_ARRAY || recent == NULL ||
        recent->type != MSGPACK_OBJECT_ARRAY) {
        log_info("rebalance: the moves record cannot be read: %s: %s",
                 err_name(code ? code : STRATA_INTERNAL), code && message ? message : "");
        n->rb_retry_at = now + RB_RETRY_MS;
        msgpack_zone_destroy(&z);
        return;
    }
    a->record_ms = now;
    a->in_flight = moves->via.array.size;
    if (a->in_flight)
        a->busy_ms = now;
    uint64_t newest = a->seen_id;
    for (uint32_t i = 0; i < recent->via.array.size; i++) {
        const msgpack_object *r = &recent->via.array.ptr[i];
        uint64_t id = 0;
        char name[PL_MAX_BRANCH_NAME + 1], outcome[16] = "", msg[MIG_MESSAGE_MAX + 1] = "";
        if (!node_map_u64(r, "id", &id) || !get_str(r, "branch", name, sizeof name))
            continue;
        /* Our own moves by id, whatever finished after them (an operator's later move may
         * end first); others once, by the high-water mark. */
        bool own = own_move_take(a, id);
        if (!own && id <= a->seen_id)
            continue;
        get_str(r, "outcome", outcome, sizeof outcome);
        get_str(r, "message", msg, sizeof msg);
        newest = id > newest ? id : newest;
        if (!own) {
            /* An operator put it there: the rebalancer does not undo that for a while. */
            fact_put(a, name, PL_BRANCH_SKIP, now + RB_BM_OPERATOR_MS);
        } else if (strcmp(outcome, "done") == 0) {
            log_info("rebalance: move %llu of branch '%s' done", (unsigned long long)id, name);
        } else {
            log_info("rebalance: move %llu of branch '%s' %s (%s): leaving it alone for %d s",
                     (unsigned long long)id, name, outcome, msg, RB_BM_REFUSED_MS / 1000);
            fact_put(a, name, PL_BRANCH_SKIP, now + RB_BM_REFUSED_MS);
        }
    }
    a->seen_id = newest;
    msgpack_zone_destroy(&z);
}

static void record_read_start(struct node *n)
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 1);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.moves");
    struct rb_call *c = call_begin(n);
    if (c)
        move_call(n, "cluster.moves", &b, record_read, c);
    buf_close(&b);
}

/* The answer to a branch request: the rebalancer's action is over (if it is still the
 * current one: what it learnt counts even if not); the map when it succeeded and the
 * rebalancer still runs (z is initialized either way). */
static const msgpack_object *bm_answer(struct bm_req *r, int code, const uint8_t *result,
                                       size_t len, msgpack_zone *z, msgpack_object *o)
{
    end(r->n, r->gen);
    msgpack_zone_init(z, 512);
    return code || r->n->rb_auto == NULL ? NULL : answer_map(result, len, z, o);
}

/* move.status of the branch on its shard answered: standalone or not. */
static void branch_checked(void *arg, int code, const uint8_t *result, size_t len,
                           const char *message, const char *leader)
{
    (void)leader;
    struct bm_req *r = arg;
    struct node *n = r->n;
    struct rb_auto *a = n->rb_auto;
    uint64_t now = uv_now(n->loop);
    msgpack_zone z;
    msgpack_object o;
    const msgpack_object *m = bm_answer(r, code, result, len, &z, &o);
    if (a == NULL) {
        /* stopped meanwhile */
    } else if (m == NULL) {
        log_info("rebalance: branch '%s' on shard %u: no status: %s: %s", r->name, r->step.from,
                 err_name(code ? code : STRATA_INTERNAL), code && message ? message : "");
        /* Left alone for a while, so a shard that stays unreachable does not keep the
         * planner on this one branch while other shards could be balanced. */
        fact_put(a, r->name, PL_BRANCH_SKIP, now + RB_BM_UNREACHABLE_MS);
        n->rb_retry_at = now + RB_RETRY_MS;
    } else {
        const msgpack_object *ex = node_map_get(m, "exists"), *parent = node_map_get(m, "parent");
        uint64_t forks = 0;
        bool exists = ex && ex->type == MSGPACK_OBJECT_BOOLEAN && ex->via.boolean;
        /* No "parent" field (a server from before it was reported): cannot tell. */
        bool standalone = exists && node_map_u64(m, "forks", &forks) && forks == 0 && parent &&
                          parent->type == MSGPACK_OBJECT_NIL;
        if (standalone)
            fact_put(a, r->name, PL_BRANCH_STANDALONE, now + RB_BM_FRESH_MS);
        else
            fact_put(a, r->name, exists ? PL_BRANCH_FAMILY : PL_BRANCH_SKIP,
                     now + RB_BM_FAMILY_MS);
        if (!standalone)
            log_debug("rebalance: branch '%s' on shard %u %s: not moved", r->name, r->step.from,
                      exists ? "has a parent or forks" : "is not there");
    }
    msgpack_zone_destroy(&z);
    sm_free(r);
}

static void branch_check_start(struct node *n, struct bm_req *r)
{
    struct buf inner, b;
    buf_init(&inner);
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &inner, node_buf_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "move.status");
    node_pack_str(&pk, "name");
    node_pack_str(&pk, r->name);
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 3);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "cluster.move_exec");
    node_pack_str(&pk, "group");
    msgpack_pack_uint32(&pk, r->step.from);
    node_pack_str(&pk, "cmd");
    msgpack_pack_bin(&pk, inner.len);
    msgpack_pack_bin_body(&pk, inner.data, inner.len);
    move_call(n, "cluster.move_exec", &b, branch_checked, r);
    buf_close(&inner);
    buf_close(&b);
}

static bool transient(int code)
{
    return code == STRATA_UNAVAILABLE || code == STRATA_NOT_LEADER || code == STRATA_TIMEOUT ||
           code == STRATA_UNKNOWN_OUTCOME || code == STRATA_OUT_OF_MEMORY;
}

static void branch_move_started(void *arg, int code, const uint8_t *result, size_t len,
                                const char *message, const char *leader)
{
    (void)leader;
    struct bm_req *r = arg;
    struct node *n = r->n;
    struct rb_auto *a = n->rb_auto;
    uint64_t now = uv_now(n->loop);
    msgpack_zone z;
    msgpack_object o;
    const msgpack_object *m = bm_answer(r, code, result, len, &z, &o);
    uint64_t id = 0;
    if (a == NULL) {
        /* stopped meanwhile */
    } else if (code == 0) {
        if (m)
            node_map_u64(m, "id", &id);
        log_info("rebalance: move %llu of branch '%s' recorded", (unsigned long long)id, r->name);
        a->own[a->nown++ % RB_BM_OWN] = id;
        a->in_flight++;
        a->busy_ms = now;
    } else if (transient(code) || code == STRATA_ALREADY_EXISTS) {
        /* Not a refusal of the branch: the record is read again before anything else. */
        log_info("rebalance: moving branch '%s': %s: %s; trying again later", r->name,
                 err_name(code), message ? message : "");
        a->record_ms = 0;
        n->rb_retry_at = now + RB_RETRY_MS;
    } else {
        log_info("rebalance: the move of branch '%s' was refused: %s: %s; leaving it alone "
                 "for %d s",
                 r->name, err_name(code), message ? message : "", RB_BM_REFUSED_MS / 1000);
        fact_put(a, r->name, PL_BRANCH_SKIP, now + RB_BM_REFUSED_MS);
    }
    msgpack_zone_destroy(&z);
    sm_free(r);
}

/* One branch action, if one is due (the caller found the replica plan settled). */
static void branch_tick(struct node *n, uint64_t now)
{
    if (!n->cfg.auto_move_branches)
        return;
    struct rb_auto *a = auto_state(n);
    if (a == NULL)
        return;
    facts_expire(a, now);
    if (a->busy_ms && now - a->busy_ms < RB_BM_COOLDOWN_MS)
        return;
    struct pl_bstep st;
    /* Anything to do at all? (Only then is the record read.) */
    if (plan_branch(n, a, 0, &st) || st.kind == PL_BPLAN_NONE)
        return;
    if (a->record_ms == 0 || now - a->record_ms >= RB_BM_RECORD_MS) {
        record_read_start(n);
        return;
    }
    if (a->in_flight)
        return;
    struct bm_req *r = sm_calloc(1, sizeof *r);
    if (r == NULL)
        return;
    r->n = n;
    r->step = st;
    snprintf(r->name, sizeof r->name, "%s", st.branch);
    r->step.branch = r->name; /* the table may be replaced before the answer */
    char why[PL_MAX_BRANCH_NAME + 160];
    placement_plan_branch_describe(&r->step, why, sizeof why);
    if ((r->gen = begin(n)) == 0) {
        sm_free(r);
        return;
    }
    if (st.kind == PL_BPLAN_CHECK) {
        log_debug("rebalance: %s", why);
        branch_check_start(n, r);
        return;
    }
    log_info("rebalance: %s", why);
    /* Counted as in flight at once: nothing else starts before the record shows it. */
    a->record_ms = now;
    move_branch_start(n, r->name, st.to, 0, true, branch_move_started, r);
}

/* ---- Waiting for a removal ------------------------------------------------------------- */

void rebalance_wait_removed(struct node *n, uint64_t id, uint64_t timeout_ms, fwd_done_cb cb,
                            void *arg)
{
    struct rb_waiter *w = sm_calloc(1, sizeof *w);
    if (w == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory", NULL);
        return;
    }
    *w = (struct rb_waiter){n->rb_waiters, id, uv_now(n->loop) + timeout_ms, cb, arg};
    n->rb_waiters = w;
}

static void waiters_check(struct node *n, uint64_t now, bool current, int fail_code)
{
    for (struct rb_waiter **pp = &n->rb_waiters; *pp;) {
        struct rb_waiter *w = *pp;
        int code = -1;
        char msg[160] = "";
        if (fail_code) {
            code = fail_code;
            snprintf(msg, sizeof msg, "the node is shutting down");
        } else if (current && placement_node(&n->pl, w->id) == NULL) {
            code = 0;
        } else if (now >= w->deadline_ms) {
            code = STRATA_TIMEOUT;
            snprintf(msg, sizeof msg,
                     "node %llu is still draining; the rebalancer goes on (watch cluster status)",
                     (unsigned long long)w->id);
        }
        if (code < 0) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->cb(w->arg, code, NULL, 0, code ? msg : NULL, NULL);
        sm_free(w);
    }
}

/* ---- Retiring replicas this node no longer holds --------------------------------------- */

static void retire_check(struct node *n, uint64_t now)
{
    for (uint32_t id = 1; id <= PL_MAX_SHARDS; id++) {
        struct node_group *g = n->groups[id];
        if (g == NULL)
            continue;
        const struct pl_shard *s = placement_shard(&n->pl, id);
        if (s != NULL && placement_shard_has(s, n->cfg.node_id)) {
            n->rb_unassigned_ms[id] = 0;
            continue;
        }
        if (n->rb_unassigned_ms[id] == 0) {
            n->rb_unassigned_ms[id] = now;
            continue;
        }
        struct repl_status st;
        repl_group_status(g->group, &st);
        if (now - n->rb_unassigned_ms[id] < RB_RETIRE_GRACE_MS || st.role == REPL_LEADER)
            continue;
        n->rb_unassigned_ms[id] = 0;
        log_info("shard %u: the table no longer places a replica here: retiring it", id);
        node_group_retire(n, id);
    }
}

/* ---- Tick -------------------------------------------------------------------------------- */

void rebalance_tick(struct node *n, uint64_t now)
{
    if (!n->have_pl || n->stopping)
        return;
    retire_check(n, now);
    struct repl_status st;
    node_group_status(n, 0, &st);
    bool leader = st.role == REPL_LEADER;
    /* Up to date: the cache was read at our replica's applied index, none in flight. */
    bool current = leader && !n->pl_reading && n->pl_applied == st.applied_index;
    /* A removal is final once any table we adopted lacks the node (epochs only grow): no
     * need to be the leader or current to answer its waiter. */
    waiters_check(n, now, n->have_pl, 0);
    if (!leader) {
        if (n->rb_auto) {
            rb_action_abandon(&n->rb_auto->act); /* its answer, if any, is stale */
            n->rb_auto->record_ms = 0;           /* read again once leading */
        }
        memset(n->rb_ok_epoch, 0, sizeof n->rb_ok_epoch);
        return;
    }
    if (n->rb_auto && rb_action_overdue(&n->rb_auto->act, now, RB_BUSY_MAX_MS)) {
        log_info("rebalance: an action got no answer in %d ms: going on", RB_BUSY_MAX_MS);
        rb_action_abandon(&n->rb_auto->act);
    }
    if (!current && n->rb_stale_since == 0)
        n->rb_stale_since = now;
    if (current)
        n->rb_stale_since = 0;
    if (n->rb_stale_since && now - n->rb_stale_since > 5000) {
        log_info("rebalance: waiting for the table cache (read at %llu, meta applied %llu%s)",
                 (unsigned long long)n->pl_applied, (unsigned long long)st.applied_index,
                 n->pl_reading ? ", a read in flight" : "");
        n->rb_stale_since = now;
    }
    if (busy(n) || !current || now < n->rb_retry_at)
        return;
    if (meta_converge(n, &st))
        return;
    bool all_ok;
    if (shard_converge(n, now, &all_ok) || !all_ok)
        return;
    if (now - n->rb_last_step_ms < RB_STEP_GAP_MS)
        return;
    struct pl_step step;
    placement_plan(&n->pl, &step);
    if (step.kind == PL_PLAN_NONE) {
        branch_tick(n, now); /* replicas and leaderships settled: branches may move */
        return;
    }
    if (step.kind == PL_PLAN_REMOVE && meta_member(&st, step.node, NULL))
        return; /* meta_converge takes it out of the meta group first */
    char why[200];
    placement_plan_describe(&step, why, sizeof why);
    struct rb_call *c = call_begin(n);
    if (c == NULL)
        return;
    log_info("rebalance: %s", why);
    meta_change(n, mutate_plan, NULL, step_done, c);
}

void rebalance_stop(struct node *n)
{
    waiters_check(n, 0, false, STRATA_UNAVAILABLE);
    auto_free(n);
}
