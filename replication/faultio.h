/* Private to replication/: the wrapper around raft's libuv I/O (faultio.c) that watches
 * every log and snapshot write, the disk watchdog (watchdog.c) that acts on what it sees,
 * and the named failpoints of test builds (STRATA_FIU). docs/reliability.md, "Disk
 * faults", lists the failpoints and what the watchdog does.
 *
 * Thread: the loop thread only. */
#ifndef STRATA_REPLICATION_FAULTIO_H
#define STRATA_REPLICATION_FAULTIO_H

#include "common.h"

#include <raft.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct repl_group;
struct repl_options;
struct repl_status;
struct fio_req;

/* Failpoint actions: the failnum a failpoint is enabled with (fiu-ctrl/fiu-run
 * "enable name=N,failnum=A,failinfo=I"). */
enum fio_action {
    FIO_EIO = 1,    /* the I/O fails (EIO); log writes are retried, as raft_uv does */
    FIO_ENOSPC = 2, /* the same, reported as "no space" */
    FIO_CRASH = 3,  /* the process kills itself (SIGKILL) at the point */
    FIO_DELAY = 4,  /* the operation waits failinfo ms (default 1000) */
    FIO_TORN = 5,   /* raft/append/after only: tear the write just made, then crash */
};

/* What the wrapper knows about one group's disk writes. */
struct faultio {
    /* raft_uv's own methods, called through */
    int (*start)(struct raft_io *, unsigned, raft_io_tick_cb, raft_io_recv_cb);
    void (*close)(struct raft_io *, raft_io_close_cb);
    int (*set_term)(struct raft_io *, raft_term);
    int (*set_vote)(struct raft_io *, raft_id);
    int (*append)(struct raft_io *, struct raft_io_append *, const struct raft_entry[], unsigned,
                  raft_io_append_cb);
    int (*truncate)(struct raft_io *, raft_index);
    int (*snapshot_put)(struct raft_io *, unsigned, struct raft_io_snapshot_put *,
                        const struct raft_snapshot *, raft_io_snapshot_put_cb);
    raft_io_tick_cb raft_tick;
    raft_io_close_cb raft_closed;

    struct fio_req *head, *tail; /* log writes and snapshot puts in flight, oldest first */
    unsigned held;               /* of those, not yet passed to raft_uv (failpoints) */
    uint64_t errors;             /* failed writes seen (each failed retry counts) */
    uint64_t last_error_ns;      /* CLOCK_MONOTONIC of the last failure */
    char last_error[160];
    uint64_t last_ok_ns; /* last write that completed without error */
    bool install_failed; /* a snapshot install failed: raft cannot take another */
    const char *noted;   /* the failpoint last logged as firing (logged once) */
    bool closing;
    /* raft_uv has closed while a put waits for its decode off the loop (restoreprep.c):
     * raft hears of the close once that put's completion is delivered */
    bool closed_deferred;
};

/* The disk watchdog's state. */
enum wd_reason { WD_OK = 0, WD_STALL, WD_ERROR, WD_SPACE, WD_RAFT_DOWN };

struct watchdog {
    uint64_t stall_ns, reserve_bytes; /* bounds (0 = check off) */
    uint64_t checked_ns;              /* last free-space check */
    uint64_t free_bytes;
    bool free_known;
    uint64_t errors_seen;  /* faultio errors already accounted for */
    enum wd_reason reason; /* WD_OK: healthy */
    uint64_t since_ns;     /* when the current fault began */
    char msg[256];         /* the clear error of the current fault */
    bool started_pending;  /* the pump logs the fault and fails queued writes */
    bool cleared_pending;  /* the pump logs the recovery */
    enum wd_reason cleared_reason;
    uint64_t cleared_after_ms;
    struct raft_transfer xfer; /* leadership hand-off while faulty */
    bool xfer_busy;
    uint64_t next_xfer_ns;
    unsigned xfer_attempts; /* in this fault: each waits twice as long as the last */
    uint64_t faults_total;
};

/* faultio.c. init wraps the vtable of g->io (after raft_init and snapguard_init, before
 * raft_start). repair zero-extends the open segments in `dir` that are shorter than
 * `segment_size` (raft_uv preallocates them whole, so a short one was cut by a torn
 * write), so raft_uv's loader drops the torn batch instead of refusing to start; call
 * it before raft_uv loads the directory. Returns 0 or STRATA_INTERNAL with a message. */
void faultio_init(struct repl_group *g);
int faultio_repair(const char *dir, uint64_t segment_size, uint32_t group_id, struct err *err);
/* Age in ns of the oldest log write still in flight (0: none). */
uint64_t faultio_oldest_append_ns(struct repl_group *g, uint64_t now_ns);

/* watchdog.c */
void watchdog_init(struct repl_group *g, const struct repl_options *o);
/* Checks (from the raft tick, through faultio): records a fault or a recovery and kicks
 * the pump. Never calls raft. */
void watchdog_check(struct repl_group *g);
/* From the pump: logs transitions once, fails queued writes, hands leadership away. */
void watchdog_pump(struct repl_group *g);
/* True (message in msg) when writes must be refused: the group is faulty and leads. */
bool watchdog_refuses(struct repl_group *g, char *msg, size_t cap);
void watchdog_status(struct repl_group *g, struct repl_status *st);

/* Named failpoints of test builds (compiled out otherwise): crash or delay at `name`
 * (points with no I/O to fail: apply, reply, membership). */
#ifdef STRATA_FIU
void faultio_point(const char *name);
#define FAULT_POINT(name) faultio_point(name)
/* The action failpoint `name` is enabled with now (an enum fio_action), 0 if none;
 * *info (may be NULL) gets its failinfo. For points whose action happens elsewhere (the
 * snapshot encoder's, in the child). */
int faultio_point_action(const char *name, uintptr_t *info);
#else
#define FAULT_POINT(name) ((void)0)
static inline int faultio_point_action(const char *name, uintptr_t *info)
{
    (void)name;
    (void)info;
    return 0;
}
#endif

#endif
