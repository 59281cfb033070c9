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

/* ---- Branch moves ------------------------------------------------------------------------
 * The rebalancer also evens out branches between shards, moving standalone branches (not
 * "default", no parent, no forks live or hidden on their shard: a fork family stays
 * together on its shard, merges across shards being refused). A shard's load is the
 * number of branches the table assigns to it (placement_branch_counts: what new-branch
 * placement evens out). docs/sharding.md "Rebalancing". */

/* Two shards are uneven enough for a move when their loads differ by at least
 * PL_BMOVE_MIN_SPREAD (a difference of one only mirrors itself) and by more than
 * PL_BMOVE_SPREAD_PCT percent of the mean load (many branches per shard: a few more on
 * one shard do not pay for copying a branch). */
#define PL_BMOVE_MIN_SPREAD 2
#define PL_BMOVE_SPREAD_PCT 10

/* What the caller knows about a branch beyond the table (its shard's move.status). */
enum pl_bkind {
    PL_BRANCH_UNKNOWN = 0, /* not checked (recently enough): ask its shard first */
    PL_BRANCH_STANDALONE,  /* just checked: no parent, no forks */
    PL_BRANCH_FAMILY,      /* has a parent or forks: never moved automatically */
    PL_BRANCH_SKIP,        /* refused, aborted or moved by an operator: left alone */
};

/* One fact; an array of them is sorted by name in strcmp order (the table's order). */
struct pl_bfact {
    const char *name; /* borrowed */
    enum pl_bkind kind;
};

enum pl_bplan {
    PL_BPLAN_NONE = 0, /* even enough, nothing movable, or a move is in flight */
    PL_BPLAN_CHECK,    /* ask `branch`'s shard whether it is standalone, then plan again */
    PL_BPLAN_MOVE,     /* move `branch` from shard `from` to shard `to` */
};

struct pl_bstep {
    enum pl_bplan kind;
    const char *branch;           /* borrowed from the table given to the planner */
    uint32_t from, to;            /* shards */
    size_t from_load, to_load;    /* their branch counts */
};

/* Is a spread of `spread` branches uneven enough, with `total` branches on `nshards`? */
bool placement_branches_uneven(size_t spread, size_t total, size_t nshards);

/* The next branch step for table `p`, given how many moves are in flight (any: nothing
 * is planned) and what is known about branches (`facts`, sorted, may be NULL when
 * nfacts is 0). The source is the most loaded shard (ties: lowest id) that is uneven
 * against the least loaded one (ties: lowest id) and holds a branch that is neither
 * "default", FAMILY nor SKIP; the next such shard when one holds none. The branch is
 * its first in name order: CHECK when UNKNOWN, MOVE when STANDALONE. Pure. */
void placement_plan_branch(const struct placement *p, size_t moves_in_flight,
                           const struct pl_bfact *facts, size_t nfacts, struct pl_bstep *step);

/* A one-line description of a branch step, for logs. */
void placement_plan_branch_describe(const struct pl_bstep *step, char *out, size_t cap);

#endif
