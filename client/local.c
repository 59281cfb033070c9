/* libstrata's `file:DIR` backend: a durable in-process database that is a one-node
 * cluster — the same engine and Raft code as a server, on a private libuv loop that
 * runs only inside calls, so the API stays synchronous. */
#include "local.h"

#include "replication.h"
#include "storage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

struct local {
    int lock_fd; /* DIR/LOCK, flock()ed: one process per database */
    uv_loop_t loop;
    struct storage *engine;
    struct repl_group *group;
    char raft_dir[4096];
};

struct call {
    bool done;
    int code;
    struct buf *result;
    struct err *err;
};

static void call_done(void *arg, int code, const uint8_t *result, size_t len,
                      const char *message, const char *leader)
{
    (void)leader;
    struct call *c = arg;
    c->done = true;
    c->code = code;
    if (code == 0) {
        if (c->result && buf_append(c->result, result, len))
            c->code = err_set(c->err, STRATA_OUT_OF_MEMORY, "out of memory");
    } else {
        err_set(c->err, code, "%s", message ? message : err_message(code));
    }
}

/* Run the loop until `done` (or the deadline: the single node must elect itself). */
static int run_until(struct local *l, const bool *done, unsigned ms)
{
    uint64_t deadline = uv_now(&l->loop) + ms;
    while (!*done && uv_now(&l->loop) < deadline)
        uv_run(&l->loop, UV_RUN_ONCE);
    return *done ? 0 : STRATA_TIMEOUT;
}

static int wait_leader(struct local *l, struct err *err)
{
    for (int i = 0; i < 2000; i++) {
        struct repl_status st;
        repl_group_status(l->group, &st);
        if (st.role == REPL_LEADER)
            return 0;
        uv_run(&l->loop, UV_RUN_ONCE);
    }
    return err_set(err, STRATA_UNAVAILABLE, "the local database did not become ready");
}

int local_open(const char *dir, struct local **out, struct err *err)
{
    if (mkdir(dir, 0700) && errno != EEXIST)
        return err_set(err, STRATA_INVALID_ARGUMENT, "cannot create %s: %s", dir, strerror(errno));
    struct local *l = sm_calloc(1, sizeof *l);
    if (l == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    int rc;
    /* Two processes on one Raft log would corrupt it: the first one holds the lock. */
    char lock[4096];
    snprintf(lock, sizeof lock, "%s/LOCK", dir);
    l->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (l->lock_fd < 0 || flock(l->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = err_set(err, l->lock_fd < 0 ? STRATA_INVALID_ARGUMENT : STRATA_UNAVAILABLE,
                     l->lock_fd < 0 ? "cannot open %s: %s"
                                    : "%s is held by another process (%s): one process "
                                      "at a time may open a file: database",
                     lock, strerror(errno));
        if (l->lock_fd >= 0)
            close(l->lock_fd);
        sm_free(l);
        return rc;
    }
    if (uv_loop_init(&l->loop)) {
        close(l->lock_fd);
        sm_free(l);
        return err_set(err, STRATA_INTERNAL, "cannot create an event loop");
    }
    if ((rc = storage_new(NULL, &l->engine))) {
        err_set(err, rc, "cannot create the engine");
        goto err_loop;
    }
    snprintf(l->raft_dir, sizeof l->raft_dir, "%s/raft-0", dir);
    struct repl_options o;
    repl_options_default(&o);
    o.node_id = 1;
    o.address = "127.0.0.1:1"; /* a one-node cluster never dials anyone */
    o.data_dir = l->raft_dir;
    o.election_timeout_ms = 50;
    o.heartbeat_timeout_ms = 10;
    if ((rc = repl_group_open(&l->loop, &o, l->engine, NULL, NULL, &l->group, err)))
        goto err_engine;
    struct repl_member self = {.id = 1};
    snprintf(self.address, sizeof self.address, "%s", o.address);
    if ((rc = repl_group_bootstrap(l->group, &self, 1, err)) ||
        (rc = repl_group_start(l->group, err)) || (rc = wait_leader(l, err))) {
        local_close(l);
        return rc;
    }
    *out = l;
    return 0;
err_engine:
    storage_free(l->engine);
err_loop:
    uv_loop_close(&l->loop);
    close(l->lock_fd);
    sm_free(l);
    return rc;
}

static void stopped(void *arg)
{
    *(bool *)arg = true;
}

void local_close(struct local *l)
{
    if (l == NULL)
        return;
    bool done = false;
    repl_group_stop(l->group, stopped, &done);
    run_until(l, &done, 10000);
    uv_run(&l->loop, UV_RUN_DEFAULT); /* let every handle finish closing */
    uv_loop_close(&l->loop);
    storage_free(l->engine);
    close(l->lock_fd); /* releases the lock */
    sm_free(l);
}

int local_exec(struct local *l, const uint8_t *cmd, size_t len, struct buf *result,
               struct err *err)
{
    enum storage_cmd_kind kind;
    int rc = storage_cmd_kind(cmd, len, &kind, err);
    if (rc)
        return rc;
    struct call c = {false, 0, result, err};
    if (kind == STORAGE_CMD_WRITE)
        repl_write(l->group, cmd, len, call_done, &c);
    else
        repl_read(l->group, cmd, len, false, call_done, &c);
    /* Every submitted request is answered (raft keeps timers running), and `c` lives on
     * this stack: run until the answer, never return early. */
    while (!c.done)
        uv_run(&l->loop, UV_RUN_ONCE);
    return c.code;
}
