/* The rebalancer: on the meta leader, make every group's Raft membership match the
 * placement table, then change the table one step at a time towards an even layout
 * (sharding/balance.h decides the step). On every node: retire the shard replicas the
 * table no longer gives it. docs/sharding.md "Rebalancing".
 *
 * One action at a time (rb_busy): a status query, one membership change, one leadership
 * transfer or one table write; each completes through its callback. Actions are taken
 * only while this node's cached table is as new as its own meta replica's applied state
 * (a table write always precedes the membership changes that follow from it, so an
 * up-to-date cache never mistakes a new member for a stale one).
 *
 *   per tick:  meta membership ≠ table?  → add / remove / hand leadership away (group 0)
 *              a shard not checked since its last change (or for RB_RECHECK_MS)?
 *                  → ask its leader for its members → add missing (before) remove extra
 *              all converged and RB_STEP_GAP_MS since the last step?
 *                  → placement_plan → one table change (meta_change)
 * Thread: the loop thread. */
#include "balance.h"
#include "node.h"

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


static void action_done(void *arg, int code, const uint8_t *result, size_t len,
                        const char *message, const char *leader)
{
    (void)result, (void)len, (void)leader;
    struct node *n = arg;
    n->rb_busy = false;
    if (code && code != STRATA_ALREADY_EXISTS) {
        log_info("rebalance: %s: %s", err_name(code), message ? message : "");
        n->rb_retry_at = uv_now(n->loop) + RB_RETRY_MS;
    }
}

static void begin(struct node *n)
{
    n->rb_busy = true;
    n->rb_busy_since = uv_now(n->loop);
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
            log_info("rebalance: meta group: this node is draining, handing leadership away");
            begin(n);
            repl_transfer(g0->group, 0, action_done, n);
            return true;
        }
        log_info("rebalance: meta group: removing node %llu (%s)",
                 (unsigned long long)st->members[i].id, nd ? "draining" : "not in the table");
        begin(n);
        repl_member_remove(g0->group, st->members[i].id, action_done, n);
        return true;
    }
    size_t want = active < PL_META_MAX_VOTERS ? active : PL_META_MAX_VOTERS;
    for (size_t i = 0; i < n->pl.nnodes && voters < want; i++) {
        const struct pl_node *nd = &n->pl.nodes[i];
        bool voter = false;
        if (nd->state != PL_NODE_ACTIVE || (meta_member(st, nd->id, &voter) && voter))
            continue;
        log_info("rebalance: meta group: adding node %llu", (unsigned long long)nd->id);
        struct repl_member m = {.id = nd->id};
        snprintf(m.address, sizeof m.address, "%s", nd->address);
        begin(n);
        repl_member_add(g0->group, &m, action_done, n);
        return true;
    }
    return false;
}

/* ---- Shard membership ------------------------------------------------------------------ */

struct shard_check {
    struct node *n;
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
    sm_free(sc);
    n->rb_busy = false;
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
        log_info("rebalance: shard %u: adding node %llu", sid, (unsigned long long)nd->id);
        begin(n);
        admin_group_member(n, sid, true, nd->id, nd->address, node_self_key(n), action_done, n);
        return;
    }
    for (size_t i = 0; all_vote && i < m.n; i++) {
        if (placement_shard_has(s, m.ids[i]))
            continue;
        begin(n);
        if (m.ids[i] == m.leader) {
            log_info("rebalance: shard %u: its leader, node %llu, leaves: handing over to %llu",
                     sid, (unsigned long long)m.leader, (unsigned long long)s->replicas[0]);
            admin_transfer(n, sid, s->replicas[0], node_self_key(n), action_done, n);
        } else {
            log_info("rebalance: shard %u: removing node %llu", sid,
                     (unsigned long long)m.ids[i]);
            admin_group_member(n, sid, false, m.ids[i], NULL, node_self_key(n), action_done, n);
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
        if (sc == NULL)
            return false;
        *sc = (struct shard_check){n, s->id, s->epoch};
        begin(n);
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
    struct node *n = arg;
    n->rb_busy = false;
    n->rb_last_step_ms = uv_now(n->loop);
    if (code)
        log_info("rebalance: table change failed: %s: %s", err_name(code),
                 message ? message : "");
    else
        n->rb_steps++;
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
        n->rb_busy = false;
        memset(n->rb_ok_epoch, 0, sizeof n->rb_ok_epoch);
        return;
    }
    if (n->rb_busy && now - n->rb_busy_since > RB_BUSY_MAX_MS) {
        log_info("rebalance: an action got no answer in %d ms: going on", RB_BUSY_MAX_MS);
        n->rb_busy = false;
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
    if (n->rb_busy || !current || now < n->rb_retry_at)
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
    if (step.kind == PL_PLAN_NONE)
        return;
    if (step.kind == PL_PLAN_REMOVE && meta_member(&st, step.node, NULL))
        return; /* meta_converge takes it out of the meta group first */
    char why[200];
    placement_plan_describe(&step, why, sizeof why);
    log_info("rebalance: %s", why);
    begin(n);
    meta_change(n, mutate_plan, NULL, step_done, n);
}

void rebalance_stop(struct node *n)
{
    waiters_check(n, 0, false, STRATA_UNAVAILABLE);
}
