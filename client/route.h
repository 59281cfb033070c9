/* libstrata's routing table (private): the cached placement of a sharded cluster and the
 * decisions made from it — which shard a command's branch is on, and which node to send
 * it to. No I/O: net.c fetches `cluster.placement` and hands the answer here.
 * docs/sharding.md "The cluster-aware client", docs/client.md §6. */
#ifndef STRATA_CLIENT_ROUTE_H
#define STRATA_CLIENT_ROUTE_H

#include "common.h"
#include "placement.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The cached view of the cluster. Owned by one struct net; not thread-safe. */
struct routing {
    struct placement pl;                /* the table; pl.epoch is the table epoch */
    uint64_t leader[PL_MAX_SHARDS + 1]; /* node id leading each group, 0 = not known */
};

/* Where a command goes. */
enum route_kind {
    ROUTE_HOME = 1, /* no branch to route by (cluster.*, session.*, branch.create/list, or
                     * an unknown/malformed command): any node, the server routes it */
    ROUTE_SHARD,    /* every named branch is on `shard` */
};

struct route_pick {
    enum route_kind kind;
    uint32_t shard;    /* ROUTE_SHARD */
    bool unknown;      /* ROUTE_HOME because a named branch is not in the cached table */
    bool session_use;  /* the command is session.use (net.c replays it on new connections) */
    bool names_change; /* branch.create / fork / fork_many / delete: the table will change */
};

/* A new, empty routing table (no allocation beyond the struct). NULL on OUT_OF_MEMORY. */
struct routing *routing_new(void);
void routing_free(struct routing *r);

/* Adopt a `cluster.placement` answer ({epoch, table, leaders}, `len` bytes of
 * MessagePack, borrowed). The table is decoded by placement_decode; an answer whose
 * epoch is older than the cached one is ignored (returns 0). Leader hints are replaced
 * by the answer's. Errors: PROTOCOL_ERROR (not such a map, or the table does not decode:
 * err says which field), UNAVAILABLE (the answering node has no table yet: "table" nil),
 * OUT_OF_MEMORY. On error the cached table is unchanged. */
int routing_update(struct routing *r, const uint8_t *answer, size_t len, struct err *err);

/* Decide where `cmd` (one MessagePack map, `len` bytes, borrowed) goes, by the same rule
 * as the server's router: data commands name `branch` (else the session's branch
 * `session_branch`, else "default"); branch.* commands name theirs in name / source /
 * target / a / b / names; forks go by their source. Never fails: anything it cannot
 * route goes ROUTE_HOME. `r` may be NULL (no table: only the op's kind is told). */
void routing_decide(const struct routing *r, const uint8_t *cmd, size_t len,
                    const char *session_branch, struct route_pick *out);

/* The "branch" and "space" arguments of a session.use command that succeeded: each one
 * present (a non-empty string shorter than its buffer) is copied, NUL-terminated, over
 * the previous value; an absent one leaves its buffer as it was. */
void routing_session_args(const uint8_t *cmd, size_t len, char *branch, size_t bcap, char *space,
                          size_t scap);

/* Record that `address` (host:port, `len` bytes) leads `shard`. Returns false when the
 * address is not a node of the cached table (the caller should re-read the table). */
bool routing_set_leader(struct routing *r, uint32_t shard, const char *address, size_t len);

/* Node ids and addresses. routing_node_id: the id of the node at `address`, 0 if not in
 * the table. routing_address: the address of node `id`, NULL if not in the table. */
uint64_t routing_node_id(const struct routing *r, const char *address, size_t len);
const char *routing_address(const struct routing *r, uint64_t id);

/* Candidate nodes for a command on `shard`, best first, into ids[0..cap): the known
 * leader, then the shard's replicas in the table's order (preferred leader first). For
 * a stale read, `near` (a node id, 0 for none) comes first when it is a replica. Returns
 * the count (0 for an unknown shard). */
size_t routing_candidates(const struct routing *r, uint32_t shard, bool stale, uint64_t near,
                          uint64_t *ids, size_t cap);

#endif
