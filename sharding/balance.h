/* The rebalancer's decisions: given the placement table, the next change that brings it
 * closer to an even, fully replicated layout. Pure functions of the table (no I/O, no
 * clocks), so the plan is the same on whichever node computes it; the meta leader
 * applies one change at a time and waits until every shard's Raft membership matches
 * the table before it asks for the next one. docs/sharding.md "Rebalancing".
 * Thread: none. */
#ifndef STRATA_BALANCE_H
#define STRATA_BALANCE_H

#include "placement.h"

enum pl_plan {
    PL_PLAN_NONE = 0,   /* balanced: nothing to do */
    PL_PLAN_DRAIN,      /* a DRAINING node's replica moves to an active node (or is dropped) */
    PL_PLAN_REPLICATE,  /* an under-replicated shard gains a replica */
    PL_PLAN_MOVE,       /* a replica moves from the most to the least loaded node */
    PL_PLAN_LEADER,     /* a shard's preferred leader changes to even out leaderships */
    PL_PLAN_REMOVE,     /* a DRAINING node holds nothing any more: remove it */
};

struct pl_step {
    enum pl_plan kind;
    uint32_t shard;   /* DRAIN, REPLICATE, MOVE, LEADER */
    uint64_t from;    /* the node losing the replica / preference (0: none) */
    uint64_t to;      /* the node gaining it (0: none, a DRAIN that drops the replica) */
    uint64_t node;    /* REMOVE */
};

/* The next step for table `p` (kind NONE when balanced). Order: drains first, then
 * missing replicas, then replica counts (max - min >= 2 over active nodes), then
 * preferred leaders (the same rule over replicas[0]), then removal of drained nodes. */
void placement_plan(const struct placement *p, struct pl_step *step);

/* Apply `step` to `p` (re-validated against p: a step planned on an older table that no
 * longer fits gives INVALID_ARGUMENT and leaves p unchanged). */
int placement_plan_apply(struct placement *p, const struct pl_step *step, struct err *err);

/* A one-line description of a step, for logs. */
void placement_plan_describe(const struct pl_step *step, char *out, size_t cap);

/* Replicas per node: counts[i] for p->nodes[i]; leaders[i]: shards preferring it. */
void placement_node_loads(const struct placement *p, size_t *counts, size_t *leaders);

#endif
