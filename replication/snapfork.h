/* Snapshots encoded off the loop: raft's FSM snapshot callback forks a child that encodes
 * the engine from its copy-on-write view of memory into a memfd, while the loop goes on.
 * Private to replication/. Design, state diagram and failure cases: docs/replication.md,
 * "Snapshots".
 *
 * A group's snapshot (struct snapfork.state):
 *
 *   IDLE --start: fork ok--> ENCODING --record ok--> READY --finalize--> IDLE
 *     |                        |---child died/failed--> FAILED --finalize--> IDLE
 *     |                        \---cancel: kill + reap--> CANCELED --finalize--> IDLE
 *     \--start: fork/memfd/pipe failed--> SYNC (encoded on the loop) --finalize--> IDLE
 *
 * Thread: the loop thread only (one loop per process: the count of running encoders is
 * process-wide). The child runs only the encoder (see snapfork.c). */
#ifndef STRATA_REPLICATION_SNAPFORK_H
#define STRATA_REPLICATION_SNAPFORK_H

#include <raft.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct repl_group;
struct sf_child;

/* Encoders running at once in this process; a snapshot asked for beyond it waits
 * (raft asks again at a later step). */
#define SNAPFORK_MAX_CHILDREN 2

enum sf_state { SF_IDLE = 0, SF_ENCODING, SF_READY, SF_FAILED, SF_CANCELED, SF_SYNC };

struct snapfork {
    enum sf_state state;
    struct sf_child *child;   /* the encoder being watched, or NULL once reaped */
    struct raft_buffer *bufs; /* the array handed to raft (ours: FSM version 2) */
    bool mapped;              /* bufs[0] maps the child's memfd (else raft_malloc'ed) */
    raft_index index;         /* raft_last_applied when the snapshot was started */
    uint64_t fork_ns;         /* loop time spent starting it */
    uint64_t started_ns;      /* CLOCK_MONOTONIC when it was started */
    /* After a failed encode the next waits 1 s, doubling to 30 s. */
    unsigned failures_in_row;
    uint64_t retry_after_ns;
    /* An encoder whose output has not grown for this long is killed (0: 60 s). */
    unsigned stuck_after_ms;
    /* counters, for logs and tests */
    uint64_t encoded_total, failed_total, sync_total, busy_total;
    uint64_t last_encode_ns, last_cow_bytes, last_stall_ns;
    pid_t last_pid; /* the last encoder forked (tests find it by PID) */
};

/* From the FSM snapshot callback. 0: bufs and n_bufs hold a placeholder that the put
 * completes later (snapfork_encoding is true for it). RAFT_BUSY: not now (encoder limit,
 * back-off after failures). STRATA_UNAVAILABLE: no background encode possible (fork,
 * memfd or pipe failed, logged): encode synchronously with snapfork_sync. */
int snapfork_start(struct repl_group *g, struct raft_buffer *bufs[], unsigned *n_bufs);
/* The synchronous encode on the loop (fallback); 0 or a RAFT_ code. */
int snapfork_sync(struct repl_group *g, struct raft_buffer *bufs[], unsigned *n_bufs);
/* Is `s` the snapshot whose bytes the child is still encoding? (faultio: the put waits) */
bool snapfork_encoding(struct repl_group *g, const struct raft_snapshot *s);
/* FSM snapshot_finalize: frees the buffers (unmap or raft_free); an encoder still
 * running is killed and reaped first. */
void snapfork_finalize(struct repl_group *g, struct raft_buffer *bufs[], unsigned *n_bufs);
/* Group close: kill the encoder by PID and wait for it. Idempotent. */
void snapfork_cancel(struct repl_group *g);
/* Encoders of this process not yet reaped. */
unsigned snapfork_children(void);

/* faultio.c: the encode of the waiting put ended: status 0 (its buffers now hold the
 * bytes: the put goes on to raft_uv) or a RAFT_* code (the put fails with it). */
void faultio_snapshot_encoded(struct repl_group *g, int status);

#endif
