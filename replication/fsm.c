/* The state machine raft drives: apply committed entries to the engine, take snapshots
 * of it, restore it from one. Runs inside raft callbacks, so it never calls raft's
 * mutating API (RAFT-NOTES trap 6); what the rest of the group must learn it records and
 * leaves to the pump. */
#include "fsm.h"

#include "entry.h"
#include "group.h"

#include <string.h>

int fsm_apply_entry(struct storage *s, const uint8_t *p, size_t len, fsm_result_cb cb, void *arg,
                    uint32_t *ncmds, struct err *err)
{
    return fsm_apply_entry_hooked(s, NULL, 0, p, len, cb, arg, ncmds, err);
}

int fsm_apply_entry_hooked(struct storage *s, const struct repl_hook *hook, uint32_t group_id,
                           const uint8_t *p, size_t len, fsm_result_cb cb, void *arg,
                           uint32_t *ncmds, struct err *err)
{
    struct entry_view v;
    int rc = entry_decode(p, len, &v, err);
    if (ncmds != NULL)
        *ncmds = 0;
    if (rc != 0)
        return rc;
    struct buf result;
    buf_init(&result);
    const uint8_t *cmd;
    size_t clen;
    uint32_t i = 0;
    while (entry_next(&v, &cmd, &clen)) {
        struct err cerr;
        err_clear(&cerr);
        buf_reset(&result);
        /* One byte tells a node command (array) from an engine command (map). */
        bool node = hook != NULL && hook->apply != NULL &&
                    ((cmd[0] & 0xf0) == 0x90 || cmd[0] == 0xdc || cmd[0] == 0xdd);
        int code = node ? hook->apply(hook->arg, group_id, s, cmd, clen, &result, &cerr)
                        : storage_exec(s, cmd, clen, v.ts, &result, &cerr);
        if (cb != NULL)
            cb(arg, i, code, &result, &cerr);
        i++;
    }
    buf_close(&result);
    if (ncmds != NULL)
        *ncmds = i;
    return 0;
}

/* Results of an entry this node proposed go to the writes waiting in its batch. */
struct apply_ctx {
    struct batch *b;
    struct req *cursor;
};

static void record_result(void *arg, uint32_t i, int code, struct buf *result,
                          const struct err *err)
{
    struct apply_ctx *ctx = arg;
    struct req *r = ctx->cursor;
    (void)i;
    if (r == NULL)
        return; /* more commands than writes: cannot happen for our own entries */
    ctx->cursor = r->next;
    r->code = code;
    if (code == 0) {
        /* Hand the engine's bytes over without copying. */
        r->result = *result;
        buf_init(result);
        r->has_result = true;
    } else {
        snprintf(r->msg, sizeof r->msg, "%s", err->msg[0] ? err->msg : err_message(code));
    }
}

/* The batch this entry came from, if this node proposed it in its current leadership.
 * raft copies submitted entries into its log (and frees our buffer), so the match is by
 * index: during apply, the entry being applied is last_applied + 1 (raft advances
 * last_applied after each apply). Leadership loss marks batches stale in step_cb, so an
 * index reused by another leader's entry cannot match. */
static struct batch *own_batch(struct repl_group *g)
{
    if (raft_state(&g->raft) != RAFT_LEADER)
        return NULL;
    raft_index index = raft_last_applied(&g->raft) + 1;
    for (unsigned i = 0; i < REPL_MAX_INFLIGHT; i++)
        if (g->batches[i].busy && g->batches[i].live && g->batches[i].index == index)
            return &g->batches[i];
    return NULL;
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct repl_group *g = fsm->data;
    FAULT_POINT("strata/fsm/apply/before");
    struct batch *b = own_batch(g);
    struct apply_ctx ctx = {b, b != NULL ? b->reqs.head : NULL};
    struct err err;
    err_clear(&err);
    uint32_t n = 0;
    int rc = fsm_apply_entry_hooked(g->engine, g->hook, g->group_id, buf->base, buf->len,
                                    b != NULL ? record_result : NULL, &ctx, &n, &err);
    if (rc != 0) {
        /* Every replica holds the same bytes and skips them the same way: log loudly,
         * keep the state machine running. */
        log_error("group %u: log entry rejected (%zu bytes): %s", g->group_id, buf->len, err.msg);
        if (b != NULL)
            for (struct req *r = b->reqs.head; r != NULL; r = r->next) {
                r->code = STRATA_INTERNAL;
                snprintf(r->msg, sizeof r->msg, "log entry rejected: %.200s", err.msg);
            }
    }
    g->entries_applied++;
    g->commands_applied += n;
    if (b != NULL)
        b->applied = true;
    *result = b;
    FAULT_POINT("strata/fsm/apply/after");
    return 0;
}

/* Starts the snapshot: a forked child encodes the engine (snapfork.c) and the put that
 * raft issues next waits for its bytes; only when no child can be forked is the engine
 * encoded here, stalling the loop as long as that takes (trap 7). */
static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct repl_group *g = fsm->data;
    if (g->hook != NULL && g->hook->snapshot_ok != NULL &&
        !g->hook->snapshot_ok(g->hook->arg, g->group_id))
        return RAFT_BUSY; /* raft skips this one and asks again at a later step */
    int rc = snapfork_start(g, bufs, n_bufs);
    if (rc == STRATA_UNAVAILABLE)
        return snapfork_sync(g, bufs, n_bufs);
    return rc;
}

/* raft is done with the snapshot's buffers (written or not): FSM version 2 makes them
 * ours to free. */
static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    snapfork_finalize(fsm->data, bufs, n_bufs);
    return 0;
}

/* Decode on the loop (nothing was prepared off it): into a fresh engine, so that only the
 * swap touches the group's and the old state is freed off the loop; in place, as before,
 * when not even an empty engine can be made. */
static int restore_here(struct repl_group *g, const struct raft_buffer *buf, struct storage **fresh,
                        struct err *err)
{
    struct storage_config cfg;
    storage_get_config(g->engine, &cfg);
    if (storage_new(&cfg, fresh) != 0) {
        *fresh = NULL;
        return storage_restore(g->engine, buf->base, buf->len, err);
    }
    int rc = storage_restore(*fresh, buf->base, buf->len, err);
    if (rc != 0) {
        storage_free(*fresh); /* empty */
        *fresh = NULL;
    }
    return rc;
}

/* Restore the engine from a snapshot raft installed (or loaded at start). An install was
 * usually decoded off the loop while raft_uv wrote it (restoreprep.c): then only the swap
 * runs here. The engine object stays the same (storage_swap), so every pointer to it the
 * node or the hook holds stays valid. */
static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct repl_group *g = fsm->data;
    uint64_t t0 = clock_mono_ns();
    struct err err;
    err_clear(&err);
    struct storage *fresh = NULL;
    uint64_t decode_ns = 0;
    int got = restoreprep_take(g, buf, &fresh, &decode_ns, &err);
    int rc = got < 0 ? err.code : 0;
    if (got == 0) {
        rc = restore_here(g, buf, &fresh, &err);
        decode_ns = clock_mono_ns() - t0;
    }
    if (rc != 0) {
        /* The engine is unchanged; raft keeps the buffer and reports the error. */
        log_error("group %u: snapshot restore rejected (%zu bytes): %s", g->group_id, buf->len,
                  err.msg);
        return RAFT_CORRUPT;
    }
    if (fresh != NULL) {
        storage_swap(g->engine, fresh);
        repl_engine_free(fresh); /* the old state: seconds to free for a large engine */
    }
    if (g->hook != NULL && g->hook->reset != NULL)
        g->hook->reset(g->hook->arg, g->group_id);
    size_t len = buf->len;
    raft_free(buf->base); /* on success the FSM owns the snapshot data */
    buf->base = NULL;
    uint64_t us = (clock_mono_ns() - t0) / 1000;
    log_info("group %u: snapshot restored, %zu bytes, version %llu, loop stalled %.3f ms "
             "(decoded %s in %.1f ms)",
             g->group_id, len, (unsigned long long)storage_version(g->engine), (double)us / 1000.0,
             got > 0 ? "off the loop" : "on the loop", (double)decode_ns / 1e6);
    group_emit(g, REPL_EV_SNAPSHOT_INSTALLED,
               "bytes=%zu version=%llu restore_us=%llu decode_us=%llu", len,
               (unsigned long long)storage_version(g->engine), (unsigned long long)us,
               (unsigned long long)(decode_ns / 1000));
    return 0;
}

void fsm_setup(struct repl_group *g)
{
    memset(&g->fsm, 0, sizeof g->fsm);
    /* Version 2 (trap 1: a version is required): snapshot_finalize frees the buffers,
     * which may be a mapping of the encoder's output rather than raft_malloc'ed. */
    g->fsm.version = 2;
    g->fsm.data = g;
    g->fsm.apply = fsm_apply;
    g->fsm.snapshot = fsm_snapshot;
    g->fsm.snapshot_finalize = fsm_snapshot_finalize;
    g->fsm.restore = fsm_restore;
}
