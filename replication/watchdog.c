/* The disk watchdog of a group: turns what faultio.c sees (log writes that fail or stall)
 * and the free space on the data dir's filesystem into one clear fault, and acts on it —
 * writes are refused at once with UNAVAILABLE and the reason instead of hanging, a
 * leader hands its leadership to another voter — until the disk works again.
 *
 * Why: raft_uv retries a failed write every 5 s forever (RAFT-NOTES trap 11), so without
 * this a leader on a full or failing disk keeps leading and its clients wait for writes
 * it cannot make durable. Committed entries stay safe: a write is acknowledged only once
 * a majority has it on disk, and the other replicas keep the group writable.
 *
 * States (struct watchdog.reason):
 *
 *   OK --write fails / stalls / free < reserve / raft gave up--> FAULT (reason, message)
 *   FAULT --writes complete again, free >= reserve + 1/4--> OK
 *   FAULT(RAFT_DOWN) stays until the process restarts: raft stopped itself.
 *
 * Checks run from raft's tick (faultio.c) and never call raft; the pump does the
 * logging and the raft calls (RAFT-NOTES trap 6). Thread: the loop thread. */
#include "group.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#define SPACE_CHECK_NS (200u * 1000000u) /* statvfs at most this often */

void watchdog_init(struct repl_group *g, const struct repl_options *o)
{
    struct watchdog *w = &g->wd;
    memset(w, 0, sizeof *w);
    w->stall_ns = (uint64_t)o->disk_stall_ms * 1000000u;
    w->reserve_bytes = o->disk_reserve_bytes;
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static void refresh_free(struct repl_group *g, uint64_t now)
{
    struct watchdog *w = &g->wd;
    if (w->free_known && now - w->checked_ns < SPACE_CHECK_NS)
        return;
    w->checked_ns = now;
    struct statvfs sv;
    if (statvfs(g->data_dir, &sv) != 0) {
        w->free_known = false; /* unknown is not "full": the write checks still run */
        return;
    }
    w->free_bytes = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    w->free_known = true;
}

/* The fault the group has now (WD_OK: none), its message in msg. Most severe first. */
static enum wd_reason diagnose(struct repl_group *g, uint64_t now, char *msg, size_t cap)
{
    struct watchdog *w = &g->wd;
    struct faultio *f = &g->fio;
    unsigned long long node = (unsigned long long)g->node_id;
    if (raft_state(&g->raft) == RAFT_UNAVAILABLE) {
        snprintf(msg, cap,
                 "raft stopped on node %llu (group %u) after a disk error (%.100s); "
                 "restart the node",
                 node, g->group_id, raft_errmsg(&g->raft));
        return WD_RAFT_DOWN;
    }
    if (f->install_failed) {
        snprintf(msg, cap,
                 "snapshot install failed on node %llu (group %u): %.100s; restart "
                 "the node",
                 node, g->group_id, f->last_error);
        return WD_RAFT_DOWN;
    }
    /* A little above the reserve before it counts as free again, so the preallocation
     * of the next segment does not flip it back at once. */
    uint64_t need =
        w->reason == WD_SPACE ? w->reserve_bytes + w->reserve_bytes / 4 : w->reserve_bytes;
    if (w->reserve_bytes > 0 && w->free_known && w->free_bytes < need) {
        snprintf(msg, cap,
                 "disk full on node %llu (group %u): %.1f MiB free on %.100s, below "
                 "the %.1f MiB reserve",
                 node, g->group_id, mib(w->free_bytes), g->data_dir, mib(w->reserve_bytes));
        return WD_SPACE;
    }
    /* A failed write is a fault until a later one succeeds and nothing failed since. */
    bool new_errors = f->errors != w->errors_seen;
    if (new_errors || (w->reason == WD_ERROR && f->last_ok_ns <= f->last_error_ns)) {
        snprintf(msg, cap, "disk error on node %llu (group %u): %.150s", node, g->group_id,
                 f->last_error);
        return WD_ERROR;
    }
    uint64_t age = faultio_oldest_append_ns(g, now);
    if (w->stall_ns > 0 && age >= w->stall_ns) {
        snprintf(msg, cap,
                 "disk stalled on node %llu (group %u): a log write has waited %llu ms "
                 "(bound %llu ms)",
                 node, g->group_id, (unsigned long long)(age / 1000000u),
                 (unsigned long long)(w->stall_ns / 1000000u));
        return WD_STALL;
    }
    return WD_OK;
}

void watchdog_check(struct repl_group *g)
{
    struct watchdog *w = &g->wd;
    if (g->state != G_RUNNING)
        return;
    uint64_t now = clock_mono_ns();
    if (w->reserve_bytes > 0)
        refresh_free(g, now);
    char msg[sizeof w->msg];
    enum wd_reason reason = diagnose(g, now, msg, sizeof msg);
    w->errors_seen = g->fio.errors;
    if (reason != WD_OK) {
        if (w->reason == WD_OK) {
            w->since_ns = now;
            w->started_pending = true;
            w->next_xfer_ns = 0;
            w->xfer_attempts = 0;
            w->faults_total++;
        }
        w->reason = reason;
        memcpy(w->msg, msg, sizeof w->msg);
        group_kick(g); /* hand-off attempts repeat while the fault lasts */
    } else if (w->reason != WD_OK) {
        w->cleared_pending = true;
        w->cleared_reason = w->reason;
        w->cleared_after_ms = (now - w->since_ns) / 1000000u;
        w->reason = WD_OK;
        w->msg[0] = '\0';
        group_kick(g);
    }
}

static bool has_other_voter(struct repl_group *g)
{
    for (unsigned i = 0; i < g->raft.configuration.n; i++) {
        const struct raft_server *s = &g->raft.configuration.servers[i];
        if (s->id != g->node_id && s->role == RAFT_VOTER)
            return true;
    }
    return false;
}

static void xfer_cb(struct raft_transfer *req)
{
    struct repl_group *g =
        (struct repl_group *)((char *)req - offsetof(struct repl_group, wd.xfer));
    g->wd.xfer_busy = false;
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(&g->raft, &id, &addr);
    /* No status in raft's callback (trap 13): the leader now known tells. */
    if (id != 0 && id != g->node_id)
        log_warn("group %u: disk fault: leadership handed to node %llu", g->group_id,
                 (unsigned long long)id);
    else
        log_warn("group %u: disk fault: leadership hand-off did not complete; trying again",
                 g->group_id);
    group_kick(g);
}

static const char *reason_name(enum wd_reason r)
{
    switch (r) {
    case WD_STALL:
        return "stalled writes";
    case WD_ERROR:
        return "write errors";
    case WD_SPACE:
        return "low space";
    case WD_RAFT_DOWN:
        return "raft stopped";
    default:
        return "none";
    }
}

void watchdog_pump(struct repl_group *g)
{
    struct watchdog *w = &g->wd;
    bool leader = g->state != G_OPEN && raft_state(&g->raft) == RAFT_LEADER;
    if (w->started_pending) {
        w->started_pending = false;
        log_error("group %u: %s; %s", g->group_id, w->msg,
                  leader ? "refusing writes, handing leadership away"
                         : "this replica may fall behind; it refuses writes if elected");
        char why[ERR_MSG_MAX];
        if (watchdog_refuses(g, why, sizeof why))
            req_fail_all(g, &g->writes, STRATA_UNAVAILABLE, why);
    }
    if (w->cleared_pending) {
        w->cleared_pending = false;
        log_warn("group %u: disk fault on node %llu (%s) cleared after %llu ms; writes accepted "
                 "again",
                 g->group_id, (unsigned long long)g->node_id, reason_name(w->cleared_reason),
                 (unsigned long long)w->cleared_after_ms);
    }
    if (w->reason == WD_OK || g->state != G_RUNNING || !leader || w->xfer_busy ||
        raft_transferee(&g->raft) != 0 || !has_other_voter(g))
        return;
    uint64_t now = clock_mono_ns();
    if (now < w->next_xfer_ns)
        return;
    /* At once when the fault begins; each later attempt of the same fault (it failed, or
     * the leadership came back) waits twice as long, from half an election timeout up to 16.
     * A healthy voter keeps what it is given; when every node's disk is faulty (one full
     * volume under all) they would otherwise pass the leadership around and the group
     * would do nothing but elect. */
    unsigned shift = w->xfer_attempts < 5 ? w->xfer_attempts : 5;
    w->next_xfer_ns = now + ((uint64_t)g->election_timeout_ms * 1000000u << shift) / 2;
    w->xfer_attempts++;
    int rv = raft_transfer(&g->raft, &w->xfer, 0, xfer_cb);
    if (rv == 0)
        w->xfer_busy = true;
    else
        log_warn("group %u: disk fault: cannot hand leadership away yet (%s)", g->group_id,
                 raft_strerror(rv));
}

bool watchdog_refuses(struct repl_group *g, char *msg, size_t cap)
{
    if (g->wd.reason == WD_OK || g->state == G_OPEN || raft_state(&g->raft) != RAFT_LEADER)
        return false;
    snprintf(msg, cap, "%.200s; writes are refused here until it clears", g->wd.msg);
    return true;
}

void watchdog_status(struct repl_group *g, struct repl_status *st)
{
    st->disk_fault = g->wd.reason != WD_OK;
    snprintf(st->disk_error, sizeof st->disk_error, "%s", g->wd.msg);
    st->disk_free_bytes = g->wd.free_known ? g->wd.free_bytes : 0;
}
