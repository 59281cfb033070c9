/* Snapshot installs decoded off the loop: see restoreprep.h and docs/replication.md,
 * "Restore and engine frees off the loop".
 *
 * raft 0.22's legacy layer turns an InstallSnapshot into one io->snapshot_put(trailing 0)
 * of the received chunk and, once that put completes, calls fsm->restore with the same
 * buffer. faultio.c starts the decode here when it sees the put, passes the put on to
 * raft_uv at once (write and decode run side by side) and holds its completion until the
 * decode has ended: raft cannot free or reuse the buffer while the thread reads it, and
 * its restore, which follows the completion, finds the engine ready. */
#include "restoreprep.h"

#include "group.h"
#include "offloop.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What the thread gets and gives back. Freed by the loop once `done` is seen. */
struct rp_job {
    const uint8_t *data; /* raft's buffer: alive while the put's completion is held */
    size_t len;
    struct storage_config cfg;
    uint64_t delay_ms; /* failpoint: sleep before decoding */
    uv_async_t *async;
    /* results, published by the release store of `done` */
    struct storage *engine;
    int code;
    struct err err;
    uint64_t decode_ns;
    atomic_bool done;
};

/* On the job's thread: touches only the job, a fresh engine and the read-only buffer. */
static void decode_job(void *arg)
{
    struct rp_job *j = arg;
    if (j->delay_ms > 0)
        usleep((useconds_t)(j->delay_ms * 1000));
    uint64_t t0 = clock_mono_ns();
    err_clear(&j->err);
    struct storage *e = NULL;
    int rc = storage_new(&j->cfg, &e);
    if (rc != 0)
        rc = err_set(&j->err, rc, "cannot create an engine to decode the snapshot into");
    else if ((rc = storage_restore(e, j->data, j->len, &j->err)) != 0) {
        storage_free(e); /* still empty: cheap */
        e = NULL;
    }
    j->engine = e;
    j->code = rc;
    j->decode_ns = clock_mono_ns() - t0;
    uv_async_t *async = j->async; /* j may be freed as soon as `done` is seen */
    atomic_store_explicit(&j->done, true, memory_order_release);
    uv_async_send(async);
}

static void on_decoded(uv_async_t *a)
{
    struct repl_group *g = a->data;
    struct restoreprep *rp = &g->prep;
    struct rp_job *j = rp->job;
    if (j == NULL || !atomic_load_explicit(&j->done, memory_order_acquire))
        return;
    rp->job = NULL;
    rp->decode_ns = j->decode_ns;
    if (j->engine != NULL) {
        rp->state = RP_READY;
        rp->engine = j->engine;
        log_info("group %u: snapshot of %zu bytes decoded off the loop in %.1f ms", g->group_id,
                 rp->len, (double)j->decode_ns / 1e6);
    } else {
        rp->state = RP_FAILED;
        rp->code = j->code;
        snprintf(rp->msg, sizeof rp->msg, "%s", j->err.msg[0] ? j->err.msg : err_message(j->code));
    }
    sm_free(j);
    faultio_restore_prepared(g);
}

int restoreprep_init(struct repl_group *g)
{
    struct restoreprep *rp = &g->prep;
    memset(rp, 0, sizeof *rp);
    int rv = uv_async_init(g->loop, &rp->async, on_decoded);
    if (rv != 0) {
        /* No decode off the loop for this group: restores run on the loop, as before. */
        log_warn("group %u: no async handle (%s): snapshot restores decode on the loop",
                 g->group_id, uv_strerror(rv));
        return 0;
    }
    rp->async.data = g;
    rp->async_open = true;
    return 1;
}

void restoreprep_close_handle(struct repl_group *g, uv_close_cb cb)
{
    if (g->prep.async_open)
        uv_close((uv_handle_t *)&g->prep.async, cb);
}

bool restoreprep_decoding(struct repl_group *g)
{
    return g->prep.state == RP_DECODING;
}

bool restoreprep_start(struct repl_group *g, const struct raft_snapshot *s)
{
    struct restoreprep *rp = &g->prep;
    if (!rp->async_open || rp->state == RP_DECODING || s->n_bufs != 1 || g->engine == NULL)
        return false;
    if (rp->state != RP_IDLE)
        restoreprep_discard(g, "a newer snapshot is being installed");
    uintptr_t info = 0;
    int act = faultio_point_action("strata/raft/snapshot/prepare", &info);
    if (act != 0 && act != FIO_DELAY)
        return false; /* test builds: the restore decodes on the loop, as before */
    struct rp_job *j = sm_calloc(1, sizeof *j);
    if (j == NULL)
        return false;
    j->data = s->bufs[0].base;
    j->len = s->bufs[0].len;
    storage_get_config(g->engine, &j->cfg);
    j->delay_ms = act == FIO_DELAY ? (info != 0 ? (uint64_t)info : 1000) : 0;
    j->async = &rp->async;
    atomic_init(&j->done, false);
    rp->base = j->data;
    rp->len = j->len;
    rp->index = s->index;
    size_t edge = rp->len < RP_EDGE ? rp->len : RP_EDGE;
    memset(rp->head, 0, sizeof rp->head);
    memset(rp->tail, 0, sizeof rp->tail);
    if (edge > 0) {
        memcpy(rp->head, rp->base, edge);
        memcpy(rp->tail, rp->base + rp->len - edge, edge);
    }
    rp->job = j;
    rp->state = RP_DECODING;
    if (offloop_run(decode_job, j) != 0) {
        rp->job = NULL;
        rp->state = RP_IDLE;
        sm_free(j);
        return false;
    }
    rp->started_total++;
    return true;
}

/* Is `buf` the snapshot that was decoded? Same bytes at the same address with the same
 * length, for the index raft restores (its commit index, which it set to the snapshot's);
 * the last bytes carry the LZ4 frame's checksum of the whole content. */
static bool same_snapshot(struct repl_group *g, const struct raft_buffer *buf)
{
    struct restoreprep *rp = &g->prep;
    if (rp->test_mismatch) {
        rp->test_mismatch = false;
        return false;
    }
    if (buf->base != rp->base || buf->len != rp->len || raft_commit_index(&g->raft) != rp->index)
        return false;
    size_t edge = rp->len < RP_EDGE ? rp->len : RP_EDGE;
    const uint8_t *p = buf->base;
    return edge == 0 ||
           (memcmp(p, rp->head, edge) == 0 && memcmp(p + rp->len - edge, rp->tail, edge) == 0);
}

int restoreprep_take(struct repl_group *g, const struct raft_buffer *buf, struct storage **engine,
                     uint64_t *decode_ns, struct err *err)
{
    struct restoreprep *rp = &g->prep;
    *engine = NULL;
    *decode_ns = 0;
    if (rp->state != RP_READY && rp->state != RP_FAILED)
        return 0;
    if (!same_snapshot(g, buf)) {
        rp->fallback_total++;
        restoreprep_discard(g, "it is not the snapshot being restored");
        return 0;
    }
    *decode_ns = rp->decode_ns;
    if (rp->state == RP_READY) {
        *engine = rp->engine;
        rp->engine = NULL;
        rp->state = RP_IDLE;
        rp->swapped_total++;
        return 1;
    }
    if (rp->code == STRATA_OUT_OF_MEMORY) {
        /* Not a verdict on the bytes: decode them on the loop instead of rejecting an
         * install raft would then drop. */
        rp->state = RP_IDLE;
        rp->fallback_total++;
        log_warn("group %u: the off-loop decode ran out of memory: decoding on the loop",
                 g->group_id);
        return 0;
    }
    rp->state = RP_IDLE;
    rp->rejected_total++;
    err_set(err, rp->code, "%s", rp->msg);
    return -1;
}

void restoreprep_discard(struct repl_group *g, const char *why)
{
    struct restoreprep *rp = &g->prep;
    if (rp->state != RP_READY && rp->state != RP_FAILED)
        return;
    log_info("group %u: snapshot decoded off the loop (%zu bytes) dropped: %s", g->group_id,
             rp->len, why);
    repl_engine_free(rp->engine);
    rp->engine = NULL;
    rp->state = RP_IDLE;
    rp->discarded_total++;
}
