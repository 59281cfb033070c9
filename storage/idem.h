/* Idempotency keys, private to storage/: the per-client table of remembered answers that
 * makes a resent write apply at most once (docs/architecture.md "Idempotent retries",
 * docs/commands.md §17).
 *
 * A write's command may carry "idem": [client (bin 16), seq (uint >= 1), ack (uint <=
 * seq), retry (bool)]. The table remembers, per client, the exact result bytes of its
 * recent keyed writes that succeeded. Every bound is enforced at apply time from the
 * command and its log timestamp only, so replicas evict identically; the table is part
 * of the snapshot. */
#ifndef STRATA_STORAGE_IDEM_H
#define STRATA_STORAGE_IDEM_H

#include "internal.h"

#define IDEM_ARG "idem"
#define IDEM_CLIENT_LEN 16

/* Defaults of the bounds (struct storage_config; 0 there means the default). */
#define IDEM_DEFAULT_CLIENTS 4096
#define IDEM_DEFAULT_WINDOW 256
#define IDEM_DEFAULT_BYTES (16u << 20)

struct idem_key {
    bool present;
    uint8_t client[IDEM_CLIENT_LEN];
    uint64_t seq;
    uint64_t ack;
    bool retry;
};

/* One remembered answer. */
struct idem_answer {
    uint64_t seq;
    uint64_t branch; /* id of the branch the write named in this engine, 0 if none */
    uint32_t len;
    uint8_t data[]; /* the result bytes */
};

struct idem_client {
    uint8_t id[IDEM_CLIENT_LEN];
    uint64_t floor;           /* every seq <= floor is forgotten */
    int64_t last_ts;          /* log timestamp of its newest recorded write (eviction order) */
    struct idem_answer **ans; /* by seq, ascending */
    uint32_t n, cap;
};

/* Release everything; the table becomes empty (dropped = 0). */
void idem_clear(struct idem_table *t);

/* The "idem" argument of a command map: 0 with k->present false when absent (or nil),
 * 0 with k filled, or INVALID_ARGUMENT naming the field that is wrong. */
int idem_key_parse(const msgpack_object *cmd, struct idem_key *k, struct err *err);

/* Before running a keyed write: 0 with *ans NULL (run it), 0 with *ans set (its answer
 * is remembered: return those bytes, change nothing), or HISTORY_UNAVAILABLE (the seq is
 * forgotten, or the client is unknown, the request a retry, and the table has dropped
 * clients: running it could apply it twice). */
int idem_lookup(const struct storage *s, const struct idem_key *k, const struct idem_answer **ans,
                struct err *err);

/* Recording in two steps, so the allocations happen before the write is installed:
 * prepare copies the answer and makes room (OUT_OF_MEMORY leaves the table unchanged);
 * install links it at log timestamp ts and applies the bounds (cannot fail). */
struct idem_pending {
    struct idem_answer *a;     /* owned until installed */
    struct idem_client *fresh; /* a new client record, owned until installed */
    size_t pos;                /* the client's slot (existing or to insert at) */
};
int idem_prepare(struct storage *s, const struct idem_key *k, uint64_t branch,
                 const uint8_t *result, size_t len, struct idem_pending *p);
void idem_install(struct storage *s, const struct idem_key *k, struct idem_pending *p, int64_t ts);
void idem_discard(struct idem_pending *p);

/* Snapshot section: pack writes ["IDEM", dropped, nclients] then one object per client
 * [id, floor, last_ts, [[seq, branch, answer]...]]; it is written only when the table is
 * not empty (idem_empty). restore reads what pack wrote, validating every field
 * (INVALID_ARGUMENT "corrupt snapshot: ..."), into an empty table. */
bool idem_empty(const struct idem_table *t);
void idem_pack(const struct idem_table *t, msgpack_packer *pk);
typedef int (*idem_next_fn)(void *arg, const msgpack_object **o);
int idem_restore(struct idem_table *t, const msgpack_object *head, idem_next_fn next, void *arg,
                 struct err *err);

/* Branch moves (move_copy.c): the last chunk of a fenced branch carries the table's
 * knowledge a retry reaching the target shard needs — every client's floor and last
 * timestamp with its answers for writes to that branch, and the dropped count — packed
 * by idem_pack_move as [dropped, [[client, floor, last_ts, [[seq, answer]...]]...]].
 * Importing it takes two steps like recording: idem_merge_prepare validates it
 * (INVALID_ARGUMENT naming the field) and makes every allocation (OUT_OF_MEMORY: nothing
 * changed); idem_merge_install adds it to this table — floors and last timestamps take
 * the maximum, answers not known yet are added as answers of branch `branch` — then
 * applies the bounds (cannot fail). */
void idem_pack_move(const struct idem_table *t, uint64_t branch, msgpack_packer *pk);
struct idem_merge {
    struct merge_item *items; /* owned */
    uint32_t n;
    uint64_t dropped;
};
int idem_merge_prepare(struct storage *s, const msgpack_object *o, struct idem_merge *m,
                       struct err *err);
void idem_merge_install(struct storage *s, struct idem_merge *m, uint64_t branch);
void idem_merge_discard(struct idem_merge *m);

#endif
