/* The rebalancer's plan: see balance.h. */
#include "balance.h"

#include <stdio.h>
#include <string.h>

void placement_node_loads(const struct placement *p, size_t *counts, size_t *leaders)
{
    for (size_t i = 0; i < p->nnodes; i++)
        counts[i] = leaders[i] = 0;
    for (size_t s = 0; s < p->nshards; s++) {
        const struct pl_shard *sh = &p->shards[s];
        for (uint32_t r = 0; r < sh->nreplicas; r++)
            for (size_t i = 0; i < p->nnodes; i++)
                if (p->nodes[i].id == sh->replicas[r]) {
                    counts[i]++;
                    if (r == 0)
                        leaders[i]++;
                }
    }
}

static size_t active_nodes(const struct placement *p)
{
    size_t k = 0;
    for (size_t i = 0; i < p->nnodes; i++)
        k += p->nodes[i].state == PL_NODE_ACTIVE;
    return k;
}

/* The active node with the fewest replicas that `sh` does not hold (ties: lowest id);
 * 0 when there is none. */
static uint64_t least_loaded_outside(const struct placement *p, const size_t *counts,
                                     const struct pl_shard *sh)
{
    uint64_t best = 0;
    size_t best_load = 0;
    for (size_t i = 0; i < p->nnodes; i++) {
        const struct pl_node *nd = &p->nodes[i];
        if (nd->state != PL_NODE_ACTIVE || placement_shard_has(sh, nd->id))
            continue;
        if (best == 0 || counts[i] < best_load) {
            best = nd->id;
            best_load = counts[i];
        }
    }
    return best;
}

/* Among active nodes, the most and least loaded by `load` (ties: lowest id). */
static void extremes(const struct placement *p, const size_t *load, int *hi, int *lo)
{
    *hi = *lo = -1;
    for (size_t i = 0; i < p->nnodes; i++) {
        if (p->nodes[i].state != PL_NODE_ACTIVE)
            continue;
        if (*hi < 0 || load[i] > load[*hi])
            *hi = (int)i;
        if (*lo < 0 || load[i] < load[*lo])
            *lo = (int)i;
    }
}

void placement_plan(const struct placement *p, struct pl_step *step)
{
    memset(step, 0, sizeof *step);
    size_t counts[PL_MAX_NODES], leaders[PL_MAX_NODES];
    placement_node_loads(p, counts, leaders);
    size_t nactive = active_nodes(p);
    size_t want = p->rf < nactive ? p->rf : nactive;

    /* 1. Drains: every replica on a DRAINING node goes to an active node, or is dropped
     * when no active node is left outside the shard (the shard shrinks, never to 0). */
    for (size_t s = 0; s < p->nshards; s++) {
        const struct pl_shard *sh = &p->shards[s];
        for (uint32_t r = 0; r < sh->nreplicas; r++) {
            const struct pl_node *nd = placement_node(p, sh->replicas[r]);
            if (nd == NULL || nd->state != PL_NODE_DRAINING)
                continue;
            uint64_t to = least_loaded_outside(p, counts, sh);
            if (to == 0 && sh->nreplicas == 1)
                continue; /* its last replica: stays until a node joins */
            *step = (struct pl_step){PL_PLAN_DRAIN, sh->id, nd->id, to, 0};
            return;
        }
    }
    /* 2. Shards below the replication factor (capped by the active nodes). */
    for (size_t s = 0; s < p->nshards; s++) {
        const struct pl_shard *sh = &p->shards[s];
        if (sh->nreplicas >= want || sh->nreplicas >= PL_MAX_REPLICAS)
            continue;
        uint64_t to = least_loaded_outside(p, counts, sh);
        if (to != 0) {
            *step = (struct pl_step){PL_PLAN_REPLICATE, sh->id, 0, to, 0};
            return;
        }
    }
    /* 3. Replica counts: move one from the most to the least loaded node while they
     * differ by two or more (a difference of one is as even as it gets). */
    int hi, lo;
    extremes(p, counts, &hi, &lo);
    if (hi >= 0 && lo >= 0 && counts[hi] >= counts[lo] + 2) {
        for (size_t s = 0; s < p->nshards; s++) {
            const struct pl_shard *sh = &p->shards[s];
            if (placement_shard_has(sh, p->nodes[hi].id) &&
                !placement_shard_has(sh, p->nodes[lo].id)) {
                *step = (struct pl_step){PL_PLAN_MOVE, sh->id, p->nodes[hi].id, p->nodes[lo].id,
                                         0};
                return;
            }
        }
    }
    /* 4. Preferred leaders (replicas[0]), the same rule: a shard whose preferred node is
     * the most preferred one and which has a replica on the least preferred one swaps
     * the two. Leadership follows (each leader hands over to replicas[0]). */
    extremes(p, leaders, &hi, &lo);
    if (hi >= 0 && lo >= 0 && leaders[hi] >= leaders[lo] + 2) {
        for (size_t s = 0; s < p->nshards; s++) {
            const struct pl_shard *sh = &p->shards[s];
            if (sh->nreplicas > 0 && sh->replicas[0] == p->nodes[hi].id &&
                placement_shard_has(sh, p->nodes[lo].id)) {
                *step = (struct pl_step){PL_PLAN_LEADER, sh->id, p->nodes[hi].id,
                                         p->nodes[lo].id, 0};
                return;
            }
        }
    }
    /* 5. Drained nodes. */
    for (size_t i = 0; i < p->nnodes; i++)
        if (p->nodes[i].state == PL_NODE_DRAINING && counts[i] == 0) {
            *step = (struct pl_step){PL_PLAN_REMOVE, 0, 0, 0, p->nodes[i].id};
            return;
        }
}

int placement_plan_apply(struct placement *p, const struct pl_step *step, struct err *err)
{
    if (step->kind == PL_PLAN_NONE)
        return 0;
    if (step->kind == PL_PLAN_REMOVE)
        return placement_remove_node(p, step->node, err);
    const struct pl_shard *sh = placement_shard(p, step->shard);
    if (sh == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "plan: no shard %u", step->shard);
    uint64_t ids[PL_MAX_REPLICAS];
    uint32_t n = sh->nreplicas;
    memcpy(ids, sh->replicas, n * sizeof *ids);
    bool has_from = step->from == 0 || placement_shard_has(sh, step->from);
    bool has_to = step->to != 0 && placement_shard_has(sh, step->to);
    const struct pl_node *to = step->to ? placement_node(p, step->to) : NULL;
    if (!has_from || (step->to != 0 && (to == NULL || to->state != PL_NODE_ACTIVE)) ||
        (step->kind != PL_PLAN_LEADER && has_to) || (step->kind == PL_PLAN_LEADER && !has_to))
        return err_set(err, STRATA_INVALID_ARGUMENT, "plan for shard %u no longer fits the table",
                       step->shard);
    switch (step->kind) {
    case PL_PLAN_REPLICATE:
        if (n >= PL_MAX_REPLICAS)
            return err_set(err, STRATA_INVALID_ARGUMENT, "shard %u is full", step->shard);
        ids[n++] = step->to;
        break;
    case PL_PLAN_DRAIN:
    case PL_PLAN_MOVE:
        /* The new replica takes the old one's place, so a preferred leader's place goes
         * to the new node (leadership moves there once it votes). Without a target the
         * replica is dropped. */
        for (uint32_t i = 0; i < n; i++)
            if (ids[i] == step->from) {
                if (step->to != 0) {
                    ids[i] = step->to;
                } else {
                    memmove(&ids[i], &ids[i + 1], (n - i - 1) * sizeof *ids);
                    n--;
                }
                break;
            }
        break;
    case PL_PLAN_LEADER:
        for (uint32_t i = 0; i < n; i++)
            if (ids[i] == step->to) {
                ids[i] = ids[0];
                ids[0] = step->to;
                break;
            }
        break;
    default:
        return err_set(err, STRATA_INVALID_ARGUMENT, "unknown plan step %d", (int)step->kind);
    }
    if (n == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "shard %u would lose its last replica",
                       step->shard);
    return placement_set_replicas(p, step->shard, ids, n, err);
}

void placement_plan_describe(const struct pl_step *s, char *out, size_t cap)
{
    switch (s->kind) {
    case PL_PLAN_NONE:
        snprintf(out, cap, "balanced");
        break;
    case PL_PLAN_DRAIN:
        if (s->to)
            snprintf(out, cap, "drain: shard %u replica moves from node %llu to node %llu",
                     s->shard, (unsigned long long)s->from, (unsigned long long)s->to);
        else
            snprintf(out, cap, "drain: shard %u drops its replica on node %llu", s->shard,
                     (unsigned long long)s->from);
        break;
    case PL_PLAN_REPLICATE:
        snprintf(out, cap, "replicate: shard %u gains a replica on node %llu", s->shard,
                 (unsigned long long)s->to);
        break;
    case PL_PLAN_MOVE:
        snprintf(out, cap, "balance: shard %u replica moves from node %llu to node %llu",
                 s->shard, (unsigned long long)s->from, (unsigned long long)s->to);
        break;
    case PL_PLAN_LEADER:
        snprintf(out, cap, "leaders: shard %u prefers node %llu instead of node %llu", s->shard,
                 (unsigned long long)s->to, (unsigned long long)s->from);
        break;
    case PL_PLAN_REMOVE:
        snprintf(out, cap, "remove: node %llu is drained", (unsigned long long)s->node);
        break;
    }
}

/* ---- Branch moves ------------------------------------------------------------------------ */

bool placement_branches_uneven(size_t spread, size_t total, size_t nshards)
{
    /* spread > PCT% of total / nshards, in integers. */
    return nshards > 0 && spread >= PL_BMOVE_MIN_SPREAD &&
           spread * 100 * nshards > (size_t)PL_BMOVE_SPREAD_PCT * total;
}

static enum pl_bkind fact_of(const struct pl_bfact *facts, size_t nfacts, const char *name)
{
    size_t lo = 0, hi = nfacts;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(facts[mid].name, name);
        if (c == 0)
            return facts[mid].kind;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return PL_BRANCH_UNKNOWN;
}

void placement_plan_branch(const struct placement *p, size_t moves_in_flight,
                           const struct pl_bfact *facts, size_t nfacts, struct pl_bstep *step)
{
    memset(step, 0, sizeof *step);
    if (moves_in_flight > 0 || p->nshards < 2)
        return;
    size_t counts[PL_MAX_SHARDS], order[PL_MAX_SHARDS], total = 0, lo = 0;
    placement_branch_counts(p, counts);
    for (size_t i = 0; i < p->nshards; i++) {
        total += counts[i];
        if (counts[i] < counts[lo])
            lo = i; /* shards are sorted by id: the first minimum is the lowest id */
    }
    /* Shards by load, heaviest first, ties by id (insertion sort: stable, at most 256). */
    for (size_t i = 0; i < p->nshards; i++) {
        size_t j = i;
        for (; j > 0 && counts[order[j - 1]] < counts[i]; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    for (size_t k = 0; k < p->nshards; k++) {
        size_t s = order[k];
        if (s == lo)
            continue;
        if (!placement_branches_uneven(counts[s] - counts[lo], total, p->nshards))
            return; /* the rest are lighter still */
        uint32_t sid = p->shards[s].id;
        for (size_t b = 0; b < p->nbranches; b++) {
            const struct pl_branch *br = &p->branches[b];
            if (br->shard != sid || strcmp(br->name, PL_DEFAULT_BRANCH) == 0)
                continue;
            enum pl_bkind kind = fact_of(facts, nfacts, br->name);
            if (kind == PL_BRANCH_FAMILY || kind == PL_BRANCH_SKIP)
                continue;
            *step = (struct pl_bstep){kind == PL_BRANCH_STANDALONE ? PL_BPLAN_MOVE : PL_BPLAN_CHECK,
                                      br->name, sid, p->shards[lo].id, counts[s], counts[lo]};
            return;
        }
    }
}

void placement_plan_branch_describe(const struct pl_bstep *s, char *out, size_t cap)
{
    switch (s->kind) {
    case PL_BPLAN_NONE:
        snprintf(out, cap, "branches even");
        break;
    case PL_BPLAN_CHECK:
        snprintf(out, cap, "checking whether branch '%s' on shard %u (%zu branches) is standalone",
                 s->branch, s->from, s->from_load);
        break;
    case PL_BPLAN_MOVE:
        snprintf(out, cap, "moving branch '%s' from shard %u (%zu branches) to shard %u (%zu branches)",
                 s->branch, s->from, s->from_load, s->to, s->to_load);
        break;
    }
}
