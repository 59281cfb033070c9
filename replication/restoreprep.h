/* A snapshot installed from the leader, decoded into a fresh engine on a thread while
 * raft_uv writes it, so that raft's restore (on the loop) only swaps it in. Private to
 * replication/. Design, state diagram and failure cases: docs/replication.md, "Restore
 * and engine frees off the loop".
 *
 *   IDLE --start (the install's put)--> DECODING --thread done--> READY | FAILED
 *   READY | FAILED --take (restore of that snapshot)--> IDLE
 *   READY | FAILED --discard (put failed, other snapshot, group freed)--> IDLE
 *
 * Thread: the loop thread, but for the decode job, which only reads the put's buffer and
 * writes its own job record (handed over with a release store and uv_async_send). */
#ifndef STRATA_REPLICATION_RESTOREPREP_H
#define STRATA_REPLICATION_RESTOREPREP_H

#include "common.h"

#include <raft.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct repl_group;
struct storage;
struct rp_job;

enum rp_state { RP_IDLE = 0, RP_DECODING, RP_READY, RP_FAILED };

#define RP_EDGE 32 /* bytes of each end of the snapshot kept to recognize it */

struct restoreprep {
    enum rp_state state;
    struct rp_job *job; /* DECODING: shared with the thread */
    uv_async_t async;   /* the thread's "done" */
    bool async_open;
    /* The snapshot being (or that was) decoded. */
    const uint8_t *base;
    size_t len;
    raft_index index;
    uint8_t head[RP_EDGE], tail[RP_EDGE];
    /* READY: the decoded engine; FAILED: why the engine rejected it */
    struct storage *engine;
    int code;
    char msg[ERR_MSG_MAX];
    uint64_t decode_ns;
    /* Tests: make the next take see a different snapshot (the fallback path). */
    bool test_mismatch;
    /* counters, for logs and tests */
    uint64_t started_total, swapped_total, rejected_total, fallback_total, discarded_total;
};

/* Group open (loop thread): the async handle. close_handle from the group's close
 * sequence (counts as one of its handles: cb is its handle-closed callback). */
int restoreprep_init(struct repl_group *g);
void restoreprep_close_handle(struct repl_group *g, uv_close_cb cb);
/* From faultio's snapshot put with trailing 0: start decoding `s` on a thread. true when
 * started (the put's completion must then wait until restoreprep_decoding is false). */
bool restoreprep_start(struct repl_group *g, const struct raft_snapshot *s);
bool restoreprep_decoding(struct repl_group *g);
/* From fsm_restore. 1: the prepared engine for `buf` is ready, *engine gets it (the
 * caller swaps it in and frees it); -1: the engine rejected this snapshot (code and msg
 * in err); 0: nothing prepared for this buffer (restore on the loop). Leaves IDLE unless
 * DECODING (an unrelated buffer: the decode goes on). */
int restoreprep_take(struct repl_group *g, const struct raft_buffer *buf, struct storage **engine,
                     uint64_t *decode_ns, struct err *err);
/* Drop a READY or FAILED result (freed off the loop). */
void restoreprep_discard(struct repl_group *g, const char *why);

/* faultio.c: the decode of the held put ended (its completion may go to raft now). */
void faultio_restore_prepared(struct repl_group *g);

#endif
