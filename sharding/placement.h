/* The placement table: which nodes exist, which Raft group (shard) has its replicas on
 * which nodes, and which shard owns each branch. It is stored in the meta group (group
 * 0) as one MessagePack value (placement_encode) in a state cell whose counter is the
 * table epoch, and cached on every node and in cluster-aware clients.
 * Design and failure cases: docs/sharding.md.
 *
 * Pure data: no I/O, no clocks, no randomness — every decision here is a deterministic
 * function of the table (and its arguments), so every node computes the same answer.
 * Thread: none; a table is a plain value owned by its caller. */
#ifndef STRATA_PLACEMENT_H
#define STRATA_PLACEMENT_H

#include "common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PL_ADDRESS_MAX 255
#define PL_MAX_NODES 64
#define PL_MAX_SHARDS 256
#define PL_MAX_REPLICAS 7
#define PL_MAX_BRANCH_NAME 128
#define PL_META_MAX_VOTERS 5
#define PL_DEFAULT_BRANCH "default" /* always on shard 1 */

enum pl_node_state {
    PL_NODE_ACTIVE = 1, /* serving; may hold replicas */
    PL_NODE_DRAINING,   /* being removed: replicas and leaderships move away */
};

struct pl_node {
    uint64_t id;                           /* > 0, unique */
    char address[PL_ADDRESS_MAX + 1];      /* advertised "host:port" */
    enum pl_node_state state;
};

struct pl_shard {
    uint32_t id;     /* 1..PL_MAX_SHARDS; group id of its Raft group */
    uint64_t epoch;  /* bumped whenever its replica set changes */
    uint32_t nreplicas;
    uint64_t replicas[PL_MAX_REPLICAS]; /* node ids; replicas[0] is the preferred leader */
};

struct pl_branch {
    char *name;     /* owned, NUL-terminated, 1..PL_MAX_BRANCH_NAME bytes */
    uint32_t shard; /* owning shard */
    uint64_t epoch; /* bumped when the branch moves to another shard */
};

struct placement {
    uint64_t epoch; /* the meta cell's counter; not part of the encoded value */
    uint32_t rf;    /* target replicas per shard (capped by the number of nodes) */
    size_t nnodes;
    struct pl_node nodes[PL_MAX_NODES]; /* sorted by id */
    size_t nshards;
    struct pl_shard shards[PL_MAX_SHARDS]; /* sorted by id */
    size_t nbranches, cap;
    struct pl_branch *branches; /* sorted by name (memcmp order, shorter first on ties) */
};

/* An empty table (no allocation). */
void placement_init(struct placement *p);
void placement_free(struct placement *p);
/* Deep copy into `dst` (freed first). 0 or OUT_OF_MEMORY. */
int placement_copy(struct placement *dst, const struct placement *src);

/* The layout a new cluster starts with, computed identically on every initial member:
 * nodes = members (ids as given, all ACTIVE); shards 1..nshards, epoch 1; shard s has
 * min(rf, n) replicas members[(s - 1 + i) % n] for i = 0.. (so preferred leaders
 * rotate over the nodes); the branch "default" on shard 1, epoch 1. Errors:
 * INVALID_ARGUMENT (n == 0 or > PL_MAX_NODES, duplicate or zero ids, nshards == 0 or >
 * PL_MAX_SHARDS, rf == 0 or > PL_MAX_REPLICAS, an address empty or too long). */
int placement_initial(struct placement *p, const struct pl_node *members, size_t n,
                      uint32_t nshards, uint32_t rf, struct err *err);

/* MessagePack form (docs/sharding.md): a map {"v": 1, "rf": u32,
 * "nodes": [[id, address, state], ...], "shards": [[id, epoch, [replica ids...]], ...],
 * "branches": [[name, shard, epoch], ...]}, lists in the sorted orders above. */
int placement_encode(const struct placement *p, struct buf *out);
/* Decode and validate (types, ranges, sort order, no duplicates, every shard's replicas
 * and every branch's shard exist, "default" present). On error `p` is left empty and
 * err names the offending field. `p->epoch` is left 0 (the caller sets it). */
int placement_decode(struct placement *p, const uint8_t *data, size_t len, struct err *err);

/* Lookups (NULL when absent). */
const struct pl_node *placement_node(const struct placement *p, uint64_t id);
const struct pl_shard *placement_shard(const struct placement *p, uint32_t id);
const struct pl_branch *placement_branch(const struct placement *p, const char *name,
                                         size_t len);
bool placement_shard_has(const struct pl_shard *s, uint64_t node_id);

/* The shard a new (unforked) branch goes to: the one owning the fewest branches; ties
 * go to the lowest id. 0 when there is no shard. */
uint32_t placement_least_loaded(const struct placement *p);
/* Number of branches each shard owns, into counts[i] for shards[i]. */
void placement_branch_counts(const struct placement *p, size_t *counts);

/* Changes (each leaves the table sorted and valid). */
/* Add `name` on `shard` with epoch 1. ALREADY_EXISTS if present (p unchanged),
 * INVALID_ARGUMENT for a bad name length or unknown shard, OUT_OF_MEMORY. */
int placement_assign(struct placement *p, const char *name, size_t len, uint32_t shard,
                     struct err *err);
/* Remove `name`. NOT_FOUND if absent; INVALID_ARGUMENT for "default". */
int placement_unassign(struct placement *p, const char *name, size_t len, struct err *err);
/* Point `name` at another shard and bump its epoch (a branch move's cut-over). */
int placement_move(struct placement *p, const char *name, size_t len, uint32_t shard,
                   struct err *err);
/* Add a node (ACTIVE). ALREADY_EXISTS for a known id or address. */
int placement_add_node(struct placement *p, uint64_t id, const char *address, struct err *err);
/* Mark a node DRAINING / remove it (INVALID_ARGUMENT while it still holds replicas). */
int placement_drain_node(struct placement *p, uint64_t id, struct err *err);
int placement_remove_node(struct placement *p, uint64_t id, struct err *err);
/* Replace a shard's replica set (ids must be known nodes, no duplicates, 1..PL_MAX_REPLICAS)
 * and bump its epoch. */
int placement_set_replicas(struct placement *p, uint32_t shard, const uint64_t *ids, size_t n,
                           struct err *err);

#endif
