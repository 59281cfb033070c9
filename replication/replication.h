/* Replication: one Raft group (raft 0.22 with its libuv I/O) whose log is the storage
 * engine's write-ahead log. Every write command is a log entry; a write is answered
 * after its entry is committed and applied. Reads are linearizable through a batched
 * barrier, or stale on request. Peers reach the group through the node's single port:
 * the node reads a connection's peer preamble (proto.h) and hands the stream over.
 * Design and failure cases: docs/replication.md.
 *
 * Thread: everything runs on the loop thread given to repl_group_open; callbacks too. */
#ifndef STRATA_REPLICATION_H
#define STRATA_REPLICATION_H

#include "common.h"
#include "storage.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct repl_group;

#define REPL_ADDRESS_MAX 255

struct repl_member {
    uint64_t id;
    char address[REPL_ADDRESS_MAX + 1]; /* "host:port", advertised */
};

/* Node commands: operations the node replicates through a group's log next to the
 * engine's commands (a restore staged in chunks, node/backup.c). A node command is a
 * MessagePack ARRAY (engine commands are maps, so the two never meet); it is submitted
 * with repl_write_node and applied by the hook on every replica, in log order.
 * Callbacks run on the loop thread inside raft's apply/snapshot/restore callbacks: they
 * must not call raft or replication (RAFT-NOTES trap 6). */
struct repl_hook {
    /* Apply one committed node command. Deterministic, like storage_exec: 0 with a result
     * appended to `result`, or an error code with `err` filled (reported to the writer;
     * every replica computes the same). May replace the engine's state. */
    int (*apply)(void *arg, uint32_t group_id, struct storage *engine, const uint8_t *cmd,
                 size_t len, struct buf *result, struct err *err);
    /* May raft snapshot the engine now? false while state the hook keeps outside the engine
     * would be lost by a snapshot taken at this index (raft retries at its next step). */
    bool (*snapshot_ok)(void *arg, uint32_t group_id);
    /* The engine's state restarts from the last snapshot (group opened, or a raft snapshot
     * installed): whatever the hook derived from earlier entries is void. */
    void (*reset)(void *arg, uint32_t group_id);
    void *arg;
};

struct repl_options {
    uint32_t group_id;
    uint64_t node_id;
    const char *address;           /* this node's advertised "host:port" */
    const char *bind_host;         /* source address for outgoing peer connections, or NULL */
    const char *data_dir;          /* the group's own directory (created if missing) */
    unsigned election_timeout_ms;  /* default 1000 */
    unsigned heartbeat_timeout_ms; /* default 100 */
    unsigned snapshot_threshold;   /* entries between snapshots, default 16384 */
    unsigned snapshot_trailing;    /* entries kept after a snapshot, default 4096 */
    size_t max_entry_bytes;        /* batching bound per log entry, default 4 MiB */
    const struct repl_hook *hook;  /* node commands (not owned, outlives the group), or NULL */
    /* Disk watchdog (docs/reliability.md, "Disk faults"): a log write pending longer than
     * disk_stall_ms, a failed one, or less than disk_reserve_bytes free on the data dir's
     * filesystem makes the group refuse writes and hand leadership away until it clears.
     * 0 turns the check off. Defaults 3000 ms and 64 MiB. */
    unsigned disk_stall_ms;
    uint64_t disk_reserve_bytes;
};
void repl_options_default(struct repl_options *o);

/* Significant events, for logs and metrics. */
enum repl_event {
    REPL_EV_ELECTED = 1,     /* this node became leader (reads start after the barrier) */
    REPL_EV_LOST_LEADERSHIP, /* this node stopped being leader */
    REPL_EV_LEADER_CHANGED,  /* a new leader is known (detail: its address) */
    REPL_EV_SNAPSHOT_TAKEN,  /* detail: index and bytes */
    REPL_EV_SNAPSHOT_INSTALLED,
    REPL_EV_PEER_DOWN, /* detail: peer address */
    REPL_EV_PEER_UP,
    REPL_EV_DISK_ERROR,
};
typedef void (*repl_event_cb)(void *arg, enum repl_event ev, const char *detail);

/* Open a group on `loop` over `engine` (not owned; the group applies committed entries
 * to it and restores snapshots into it). Nothing runs until repl_group_start. */
int repl_group_open(uv_loop_t *loop, const struct repl_options *o, struct storage *engine,
                    repl_event_cb on_event, void *event_arg, struct repl_group **out,
                    struct err *err);
/* Write the initial configuration of a new cluster, unless the data dir already holds
 * raft state (then it does nothing: a restart uses the same command line). */
int repl_group_bootstrap(struct repl_group *g, const struct repl_member *members, size_t n,
                         struct err *err);
int repl_group_start(struct repl_group *g, struct err *err);
/* Stop: if leader, hand leadership to another voter first (bounded wait), fail queued
 * requests with UNAVAILABLE, close raft, then call cb. The group is freed after cb. */
void repl_group_stop(struct repl_group *g, void (*cb)(void *arg), void *arg);

/* Free an engine no group uses any more (after its group's stop callback, say) on a
 * thread of its own: freeing a large engine takes seconds that the loop would stall for.
 * The engine must be fully detached: nothing may touch it after the call. The process's
 * exit waits for such frees to end. Any thread; falls back to storage_free when no
 * thread can be started. */
void repl_engine_free(struct storage *engine);

/* A raft peer connection for this group, accepted by the node (preamble consumed).
 * Ownership of the heap-allocated uv_tcp_t passes to the group (freed with raft_free
 * semantics as raft requires). */
void repl_group_accept(struct repl_group *g, uint64_t peer_id, const char *peer_address,
                       uv_stream_t *stream);

/* Completion of a write or read: code 0 with the engine's result bytes, or an error
 * code with a message. NOT_LEADER carries the leader's address (or "" if unknown) in
 * `leader`. Called exactly once, on the loop thread, never from inside the submit call. */
typedef void (*repl_done_cb)(void *arg, int code, const uint8_t *result, size_t len,
                             const char *message, const char *leader);

/* Submit a write command (msgpack bytes, copied). Concurrent writes are batched into as
 * few log entries as possible. Errors: NOT_LEADER, UNAVAILABLE (stopping, or the disk
 * watchdog refuses writes: repl_status.disk_error says why), TOO_LARGE,
 * UNKNOWN_OUTCOME (leadership lost after the entry was appended), and whatever the
 * engine returns when applying it. */
void repl_write(struct repl_group *g, const uint8_t *cmd, size_t len, repl_done_cb cb, void *arg);
/* Submit a node command (a MessagePack array, see struct repl_hook): batched and
 * replicated like a write, applied by the group's hook. INVALID_ARGUMENT when the group
 * has no hook or the bytes are not an array; otherwise as repl_write. */
void repl_write_node(struct repl_group *g, const uint8_t *cmd, size_t len, repl_done_cb cb,
                     void *arg);
/* Submit a read command: linearizable on the leader (batched barrier), or served from
 * this replica's applied state when `stale`. */
void repl_read(struct repl_group *g, const uint8_t *cmd, size_t len, bool stale, repl_done_cb cb,
               void *arg);

enum repl_role { REPL_FOLLOWER = 1, REPL_CANDIDATE, REPL_LEADER, REPL_UNAVAILABLE };

struct repl_status {
    enum repl_role role;
    uint64_t leader_id;
    char leader_address[REPL_ADDRESS_MAX + 1];
    uint64_t term, commit_index, applied_index, last_index, snapshot_index;
    /* Disk watchdog: set while the group refuses writes; disk_error says why. */
    bool disk_fault;
    char disk_error[ERR_MSG_MAX];
    uint64_t disk_free_bytes; /* on the data dir's filesystem, at the last check */
    size_t nmembers;
    struct {
        uint64_t id;
        char address[REPL_ADDRESS_MAX + 1];
        bool voter;
    } members[16];
};
void repl_group_status(struct repl_group *g, struct repl_status *st);

/* Membership (leader only; cb as for writes, with a nil result). add: joins as a
 * non-voter, then is promoted to voter once caught up. */
void repl_member_add(struct repl_group *g, const struct repl_member *m, repl_done_cb cb, void *arg);
void repl_member_remove(struct repl_group *g, uint64_t id, repl_done_cb cb, void *arg);
/* Hand leadership to `to` (0 = the most up-to-date voter). */
void repl_transfer(struct repl_group *g, uint64_t to, repl_done_cb cb, void *arg);

#endif
