/* Private to the move driver: what node/move.c (the driver) shares with
 * node/move_admin.c (the cluster.move_* admin commands). */
#ifndef STRATA_NODE_MOVE_INTERNAL_H
#define STRATA_NODE_MOVE_INTERNAL_H

#include "metacell.h"
#include "migration.h"
#include "node.h"

struct mover;
struct drive;

/* A change of the `moves` cell on the meta leader, serialized with the others. */
typedef int (*cell_fn)(struct migration *m, void *ctx, struct err *err);
typedef void (*cell_cb)(void *arg, int code, const char *msg, const struct migration *m);
void cell_change(struct mover *mv, cell_fn fn, void *ctx, cell_cb cb, void *arg);
/* The meta group's state cell holding the record (sharding/migration.h). */
#define MOVES_CELL "moves"
/* A state.get reply of that cell (metacell_read) into `m`; an absent cell is the empty
 * record (counter 0). `cell` (initialized; the caller closes it) keeps the value's
 * encoding. 0, or an error in err (m is then empty). */
int record_decode(struct migration *m, struct metacell *cell, const uint8_t *result, size_t len,
                  struct err *err);

/* The moves driven on this node: find one by branch, start driving a recorded one. */
struct drive *drive_find(struct mover *mv, const char *name);
struct drive *drive_new(struct mover *mv, const struct mig_move *m);
void drive_next(struct drive *d);
/* cluster.move_abort {branch} (move.c: it asks the branch's drive to abort). */
void move_abort_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                      fwd_done_cb cb, void *arg);
/* Answer a move's record {id, branch, from, to, phase, chunk_bytes} (move_admin.c). */
void reply_move(fwd_done_cb cb, void *arg, const struct mig_move *m);

/* Run a move.* command on the group's leader (the local half of cluster.move_exec). */
void exec_local(struct node *n, const uint8_t *cmd, size_t len, const struct auth_key *key,
                fwd_done_cb cb, void *arg);

/* msgpack helpers: a bin value; an unsigned integer, a boolean true, a given string. */
void pk_bin(msgpack_packer *pk, const void *p, size_t n);
bool obj_u64(const msgpack_object *o, uint64_t *v);
bool obj_bool(const msgpack_object *o);
bool obj_str_is(const msgpack_object *o, const char *s);

#endif
