/* Branch moves between shards: the record of the moves in flight (and of the last few
 * finished ones) that the meta group keeps in its state cell `moves`, and the rules for
 * changing it. The meta leader's driver (node/move.c) runs each move's steps and
 * records every phase change here first, so a new meta leader resumes each move from
 * its recorded phase. Design: docs/sharding.md "Branch moves".
 *
 * A move's phases:
 *
 *   start --> COPYING --> CATCHING_UP --> FENCED --> CUTOVER --finish(done)--> (recent)
 *                |             |             |
 *                +-------------+-------------+--> ABORTING --finish(aborted)--> (recent)
 *
 * Pure data: no I/O, no clocks — every function is a deterministic function of its
 * arguments. Thread: none; a record is a plain value owned by its caller. */
#ifndef STRATA_MIGRATION_H
#define STRATA_MIGRATION_H

#include "common.h"
#include "placement.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_MAX_MOVES 64 /* in flight at once */
#define MIG_RECENT 16    /* finished moves remembered */
#define MIG_MESSAGE_MAX 200
/* 256 KiB: every chunk is exported on the source leader's loop and applied on every
 * target replica's loop in one go, and writes to the moving branch wait behind each;
 * against 1 MiB it halved the tail of those writes for a copy about twice as long
 * (docs/benchmarks.md, move section). */
#define MIG_CHUNK_DEFAULT (256u << 10)
#define MIG_CHUNK_MIN 4096u
#define MIG_CHUNK_MAX (3u << 20)

enum mig_phase {
    MIG_COPYING = 1, /* chunks of the branch's history go to the target */
    MIG_CATCHING_UP, /* the versions written since go to the target */
    MIG_FENCED,      /* the source refuses writes; last versions, then the table cut-over */
    MIG_CUTOVER,     /* the table says target; the source's copy is released */
    MIG_ABORTING,    /* the target's partial copy is dropped, the source unfenced */
};

enum mig_outcome { MIG_DONE = 1, MIG_ABORTED };

struct mig_move {
    char name[PL_MAX_BRANCH_NAME + 1];
    uint32_t from, to; /* shards */
    uint64_t id;       /* unique, increasing: the cell counter that recorded the start */
    enum mig_phase phase;
    uint32_t chunk;    /* bytes per chunk */
    char message[MIG_MESSAGE_MAX + 1]; /* why it is aborting ("" otherwise) */
};

struct mig_recent {
    char name[PL_MAX_BRANCH_NAME + 1];
    uint32_t from, to;
    uint64_t id;
    enum mig_outcome outcome;
    char message[MIG_MESSAGE_MAX + 1];
};

struct migration {
    uint64_t counter; /* the cell's counter (0: never written); not part of the encoding */
    size_t n;
    struct mig_move moves[MIG_MAX_MOVES]; /* sorted by name, one per branch */
    size_t nrecent;
    struct mig_recent recent[MIG_RECENT]; /* newest first */
};

void migration_init(struct migration *m);

/* MessagePack form: {"v": 1, "moves": [[name, from, to, id, phase, chunk, message], ...],
 * "recent": [[name, from, to, id, outcome, message], ...]}. */
int migration_encode(const struct migration *m, struct buf *out);
/* Decode and validate (types, ranges, sorted unique names, known phases and outcomes,
 * bounded counts and messages). On error `m` is left empty and err names the field;
 * m->counter is left 0 (the caller sets it). */
int migration_decode(struct migration *m, const uint8_t *data, size_t len, struct err *err);

/* The in-flight move of a branch, or NULL. */
const struct mig_move *migration_find(const struct migration *m, const char *name, size_t len);

/* Record a new move of `name` to shard `to` with id `id` in phase COPYING. Checks against
 * the table `p`: the branch is placed and not "default"; `to` is a shard and not the
 * branch's; no move of it is in flight (ALREADY_EXISTS); fewer than MIG_MAX_MOVES in
 * flight (UNAVAILABLE); chunk (0 = default) within MIG_CHUNK_MIN..MAX. Errors:
 * BRANCH_NOT_FOUND, INVALID_ARGUMENT, ALREADY_EXISTS, UNAVAILABLE; m unchanged. */
int migration_start(struct migration *m, const struct placement *p, const char *name,
                    size_t len, uint32_t to, uint32_t chunk, uint64_t id, struct err *err);

/* Move (name, id) to phase `next` if the diagram allows it from its current phase; the
 * same phase again is a no-op (0). `message` (may be NULL) is kept with ABORTING.
 * NOT_FOUND when no such move is in flight, CONFLICT when the step is not allowed. */
int migration_advance(struct migration *m, const char *name, size_t len, uint64_t id,
                      enum mig_phase next, const char *message, struct err *err);

/* Finish (name, id): DONE from CUTOVER, ABORTED from ABORTING. It leaves the in-flight
 * list and becomes the newest of `recent` (the oldest beyond MIG_RECENT is dropped).
 * NOT_FOUND / CONFLICT as for advance. */
int migration_finish(struct migration *m, const char *name, size_t len, uint64_t id,
                     enum mig_outcome outcome, const char *message, struct err *err);

/* The finished move with this id, or NULL. */
const struct mig_recent *migration_recent(const struct migration *m, uint64_t id);

const char *migration_phase_name(enum mig_phase p);
const char *migration_outcome_name(enum mig_outcome o);

#endif
