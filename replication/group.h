/* Private state of a replication group, shared by group.c (lifecycle, role changes,
 * the deferred pump), request.c (writes, reads, membership) and fsm.c (the state
 * machine raft drives). Private to replication/.
 *
 * Group lifecycle (struct repl_group.state):
 *
 *   OPEN --start--> RUNNING --stop(leader)--> HANDOFF --transfer done/timer--> CLOSING
 *     \                \--stop(not leader)------------------------------------/   |
 *      \--stop------------------------------------------------------------------/    |
 *                                                   raft closed, handles closed -> freed
 *
 * Thread: the loop thread only. Nothing here calls raft from inside a raft callback
 * (step_cb, FSM): those record facts and kick the pump (an idle handle), which runs on
 * the next loop iteration and makes the raft calls (RAFT-NOTES trap 6). */
#ifndef STRATA_REPLICATION_GROUP_H
#define STRATA_REPLICATION_GROUP_H

#include "faultio.h"
#include "replication.h"
#include "restoreprep.h"
#include "snapfork.h"

#include <raft.h>
#include <raft/uv.h>

#define REPL_MAX_INFLIGHT 2 /* K: entries in flight before writes accumulate */

enum group_state { G_OPEN = 1, G_RUNNING, G_HANDOFF, G_CLOSING };

enum req_kind { REQ_WRITE = 1, REQ_READ, REQ_ADD, REQ_REMOVE, REQ_TRANSFER };

/* One client request from submission to its callback. */
struct req {
    struct req *next;
    enum req_kind kind;
    repl_done_cb cb;
    void *arg;
    uint8_t *cmd; /* owned copy (write, read) */
    size_t len;
    uint64_t id;                        /* membership / transfer target */
    char address[REPL_ADDRESS_MAX + 1]; /* membership */
    bool promoting;                     /* add: spare joined, promotion next */
    int code;                           /* completion */
    bool has_result;
    struct buf result;
    char msg[ERR_MSG_MAX];
    char leader[REPL_ADDRESS_MAX + 1];
};

struct req_queue {
    struct req *head, *tail;
    size_t n;
};

/* A log entry in flight: raft_apply request plus the writes it carries. */
struct batch {
    struct raft_apply apply;
    struct repl_group *g;
    struct req_queue reqs;
    raft_index index; /* log index raft gave the entry */
    bool live;        /* proposed in the current leadership: apply may match it */
    bool busy;
    bool applied; /* results were recorded by the FSM */
};

struct pending_event {
    struct pending_event *next;
    enum repl_event ev;
    char detail[REPL_ADDRESS_MAX + 64];
};

struct repl_group {
    uv_loop_t *loop;
    enum group_state state;
    struct raft raft;
    struct raft_io io;
    struct raft_fsm fsm;
    struct raft_uv_transport transport;
    bool raft_inited;
    struct storage *engine;
    const struct repl_hook *hook; /* node commands, or NULL */

    /* options (strings owned) */
    uint32_t group_id;
    uint64_t node_id;
    char *address;
    char *data_dir;
    unsigned election_timeout_ms, heartbeat_timeout_ms;
    size_t max_entry_bytes;

    repl_event_cb on_event;
    void *event_arg;
    struct pending_event *ev_head, *ev_tail;

    uv_idle_t pump;    /* deferred work */
    uv_timer_t timer;  /* bounded leadership hand-off on stop */
    int handles_open;  /* of pump, timer and prep.async, for the close sequence */
    int handles_total; /* opened at group open */
    bool pumping;      /* inside pump: no recursive pump */

    /* role tracking (set in step_cb, handled in the pump) */
    bool was_leader;
    raft_id last_leader_id;
    bool lost_pending, elected_pending, leader_changed_pending;
    raft_term lead_term;

    /* writes */
    struct req_queue writes; /* queued, not yet in an entry */
    struct batch batches[REPL_MAX_INFLIGHT];
    unsigned inflight;
    int64_t last_ts;

    /* reads */
    struct req_queue reads;         /* waiting for the next barrier */
    struct req_queue barrier_reads; /* served when the barrier in flight completes */
    struct raft_barrier barrier;
    bool barrier_inflight;
    bool barrier_needed; /* initial barrier after election */
    raft_term barrier_term;

    /* membership and transfer: one at a time */
    struct req_queue admin;
    struct req *admin_cur;
    struct raft_change change;
    struct raft_transfer xfer;
    bool assign_pending; /* add committed: promote to voter next */
    uint64_t stuck_handover_ns; /* request.c cantchange: when it last handed over (mono) */

    /* stop */
    struct raft_transfer stop_xfer;
    bool stop_xfer_issued, handoff_done;
    void (*stop_cb)(void *arg);
    void *stop_arg;

    struct req_queue done; /* completed, callbacks to run from the pump */

    /* counters for status and logs */
    uint64_t entries_applied, commands_applied, snapshots_taken;

    /* snapguard.c: an InstallSnapshot held while the own snapshot is written */
    int (*io_start)(struct raft_io *, unsigned, raft_io_tick_cb, raft_io_recv_cb);
    raft_io_recv_cb raft_recv;
    struct raft_message snap_msg;
    char snap_from[REPL_ADDRESS_MAX + 1];
    bool snap_held;
    uint64_t snap_held_total;
    uint64_t snap_stripped_total; /* installs ignored by raft whose payload we freed */

    /* faultio.c, watchdog.c: disk writes watched, writes refused while the disk fails */
    struct faultio fio;
    struct watchdog wd;

    /* snapfork.c: the snapshot being encoded by a forked child */
    struct snapfork snap;

    /* restoreprep.c: an installed snapshot decoded off the loop */
    struct restoreprep prep;
};

/* group.c */
void group_kick(struct repl_group *g);
void group_emit(struct repl_group *g, enum repl_event ev, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void group_leader_address(struct repl_group *g, char *out, size_t cap);

/* request.c */
void req_queue_push(struct req_queue *q, struct req *r);
struct req *req_queue_pop(struct req_queue *q);
void req_complete(struct repl_group *g, struct req *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void req_succeed(struct repl_group *g, struct req *r);
void req_fail_all(struct repl_group *g, struct req_queue *q, int code, const char *msg);
void req_deliver(struct repl_group *g);
void requests_flush(struct repl_group *g);
void requests_lost_leadership(struct repl_group *g);
void requests_fail_on_close(struct repl_group *g);
int raft_code_to_strata(int rv);

/* fsm.c */
void fsm_setup(struct repl_group *g);

/* snapguard.c: works around a libraft 0.22.1 crash (an InstallSnapshot arriving while the
 * node writes its own snapshot) and a leak (one arriving while it installs another). init wraps io.start (after raft_init, before raft_start);
 * flush hands a held install to raft once the own snapshot is written (from the pump);
 * free drops one still held at close. */
void snapguard_init(struct repl_group *g);
void snapguard_flush(struct repl_group *g);
void snapguard_free(struct repl_group *g);

#endif
