/* Wraps raft's libuv I/O (struct raft_io) to watch every log write and snapshot put of a
 * group — how long it takes and whether it fails — for the disk watchdog, and, in test
 * builds (STRATA_FIU), to inject disk faults at named failpoints around them.
 *
 * Why a wrapper: raft_uv never reports a failed log write to raft; it retries it every
 * 5 s forever (RAFT-NOTES trap 11), so a broken disk shows up only as appends that never
 * complete. The wrapper sees each append from submission to completion without touching
 * libraft: raft calls the methods of g->io, which now point here, and we call raft_uv's
 * own methods (saved at init, as snapguard.c does for io.start) and pass the completion
 * back with raft's own request.
 *
 * Failpoints model what raft_uv does on a real failure, so raft sees nothing a failing
 * disk could not show it: a failed log write (EIO/ENOSPC) is held and retried on every
 * raft tick until the failpoint is disabled, each retry counting as a failed write; a
 * snapshot put fails with an error status (raft_uv reports those); metadata writes
 * (term, vote) and truncate fail synchronously. Completions of appends are delivered in
 * submission order, and while an operation is held every later log operation (append,
 * truncate, snapshot put) waits behind it, so the log on disk keeps raft's order.
 *
 * Thread: the loop thread. The tick wrapper runs from raft_uv's timer, before raft's own
 * tick, never inside a raft callback. */
#include "group.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef STRATA_FIU
#include <fiu-control.h>
#include <fiu.h>
#include <stdlib.h>
#endif

#define io_group(io) ((struct repl_group *)((char *)(io)-offsetof(struct repl_group, io)))

enum fio_kind { R_APPEND = 1, R_TRUNCATE, R_SNAPSHOT };
/* S_ENCODING: a snapshot put whose bytes a child is still encoding (snapfork.c); it holds
 * nothing else back, since raft_uv orders a snapshot put after the log writes itself. */
enum fio_stage { S_HELD = 1, S_ENCODING, S_SUBMITTED, S_DONE };

/* One operation raft asked for, from submission until raft has its completion. */
struct fio_req {
    struct fio_req *next, *prev;
    struct repl_group *g;
    enum fio_kind kind;
    enum fio_stage stage;
    uint64_t t0;         /* when raft submitted it */
    int status;          /* completion status (S_DONE) */
    bool hold;           /* a failpoint holds it (before submission or before delivery) */
    uint64_t hold_until; /* FIO_DELAY: CLOCK_MONOTONIC ns; 0 = held by an error */
    const char *point;   /* the failpoint holding it with an error, re-checked each tick */

    struct raft_io_append append; /* ours, handed to raft_uv */
    struct raft_io_append *outer_append;
    raft_io_append_cb append_cb;
    const struct raft_entry *entries;
    unsigned n;

    raft_index index; /* truncate */

    struct raft_io_snapshot_put put; /* ours, handed to raft_uv */
    struct raft_io_snapshot_put *outer_put;
    raft_io_snapshot_put_cb put_cb;
    unsigned trailing;
    const struct raft_snapshot *snapshot;
    bool prep; /* an install whose bytes a thread decodes: completion waits for it */
};

static void record_error(struct repl_group *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void record_error(struct repl_group *g, const char *fmt, ...)
{
    struct faultio *f = &g->fio;
    f->errors++;
    f->last_error_ns = clock_mono_ns();
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->last_error, sizeof f->last_error, fmt, ap);
    va_end(ap);
}

static void link_req(struct faultio *f, struct fio_req *r)
{
    r->next = NULL;
    r->prev = f->tail;
    if (f->tail != NULL)
        f->tail->next = r;
    else
        f->head = r;
    f->tail = r;
}

static void unlink_req(struct faultio *f, struct fio_req *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        f->head = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        f->tail = r->prev;
}

/* Until raft has the completion, the write is pending as far as raft can tell. */
uint64_t faultio_oldest_append_ns(struct repl_group *g, uint64_t now_ns)
{
    for (struct fio_req *r = g->fio.head; r != NULL; r = r->next)
        if (r->kind == R_APPEND)
            return now_ns > r->t0 ? now_ns - r->t0 : 1;
    return 0;
}

/* ---- Failpoints (test builds) ---------------------------------------------------------- */

#ifdef STRATA_FIU
/* The action `name` is enabled with (0: not enabled now); *info gets its failinfo. */
static int point_action(const char *name, uintptr_t *info)
{
    int act = fiu_fail(name);
    if (act != 0 && info != NULL)
        *info = (uintptr_t)fiu_failinfo();
    return act;
}

int faultio_point_action(const char *name, uintptr_t *info)
{
    return point_action(name, info);
}

/* Say once that a failpoint fires, not for every write it holds. */
static void note_point(struct repl_group *g, const char *name, const char *what)
{
    if (g->fio.noted == name)
        return;
    g->fio.noted = name;
    log_warn("group %u: failpoint %s: %s", g->group_id, name, what);
}

/* Once per process: libfiu ready, and fiu-ctrl's named pipes when STRATA_FIU_FIFO names
 * their base (fiu-ctrl -f BASE PID). fiu-run's preload does the same from its own
 * environment, but cannot be combined with a sanitizer runtime, which must load first. */
static void fiu_remote_control(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    fiu_init(0); /* safe more than once */
    /* STRATA_FIU_ENABLE: remote-control commands applied at start, ';'-separated
     * ("enable name=strata/raft/append/before,failnum=1"), like fiu-run -c. */
    const char *enable = getenv("STRATA_FIU_ENABLE");
    if (enable != NULL && enable[0] != '\0') {
        char *copy = sm_strdup(enable), *save = NULL;
        for (char *cmd = copy ? strtok_r(copy, ";", &save) : NULL; cmd != NULL;
             cmd = strtok_r(NULL, ";", &save)) {
            char *error = NULL;
            if (fiu_rc_string(cmd, &error) != 0)
                log_error("failpoints: '%s': %s", cmd, error ? error : "refused");
            else
                log_warn("failpoints: %s", cmd);
        }
        sm_free(copy);
    }
    const char *base = getenv("STRATA_FIU_FIFO");
    if (base == NULL || base[0] == '\0')
        return;
    if (fiu_rc_fifo(base) != 0)
        log_error("failpoints: cannot open the control pipes %s-%ld.{in,out}", base,
                  (long)getpid());
    else
        log_info("failpoints: control pipes %s-%ld.{in,out} (fiu-ctrl -f %s %ld)", base,
                 (long)getpid(), base, (long)getpid());
}

static uint64_t delay_ms(uintptr_t info)
{
    return info != 0 ? (uint64_t)info : 1000;
}

static void crash(const char *name)
{
    log_error("failpoint %s: crash (SIGKILL)", name);
    raise(SIGKILL);
}

void faultio_point(const char *name)
{
    uintptr_t info = 0;
    int act = point_action(name, &info);
    if (act == 0)
        return;
    if (act == FIO_DELAY) {
        /* These points run on the loop thread like the work they stand for: a slow disk
         * under apply or a reply stalls the whole loop. */
        log_warn("failpoint %s: delay %llu ms", name, (unsigned long long)delay_ms(info));
        usleep((useconds_t)(delay_ms(info) * 1000));
        return;
    }
    crash(name); /* nothing to fail here: every other action crashes */
}

/* The open segment raft_uv wrote last: the open-N with data and the highest N. */
static int last_open_segment(const char *dir, char *path, size_t cap)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    unsigned long long best = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned long long counter;
        int used = 0;
        if (sscanf(de->d_name, "open-%llu%n", &counter, &used) != 1 || de->d_name[used] != '\0' ||
            counter <= best)
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        int fd = open(p, O_RDONLY);
        uint64_t format = 0;
        if (fd >= 0 && pread(fd, &format, sizeof format, 0) == (ssize_t)sizeof format &&
            format != 0) {
            best = counter;
            snprintf(path, cap, "%s", p);
        }
        if (fd >= 0)
            close(fd);
    }
    closedir(d);
    return best > 0 ? 0 : -1;
}

/* Tear the write that just completed: zero the second half of the last batch in the open
 * segment (its data checksum then fails, as after a crash in the middle of the write),
 * then crash. */
static void tear_and_crash(struct repl_group *g, const struct fio_req *r, const char *name)
{
    char path[4096];
    size_t batch = 16 + 16 * (size_t)r->n;
    for (unsigned i = 0; i < r->n; i++)
        batch += r->entries[i].buf.len;
    int fd = -1;
    if (last_open_segment(g->data_dir, path, sizeof path) == 0)
        fd = open(path, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        log_error("failpoint %s: no open segment to tear in %s", name, g->data_dir);
        crash(name);
    }
    /* The data ends at the last non-zero byte: the rest was preallocated as zeros. */
    uint8_t chunk[65536];
    off_t end = 0;
    for (off_t pos = st.st_size; pos > 0 && end == 0;) {
        size_t want = pos >= (off_t)sizeof chunk ? sizeof chunk : (size_t)pos;
        pos -= (off_t)want;
        if (pread(fd, chunk, want, pos) != (ssize_t)want)
            break;
        for (size_t i = want; i > 0; i--)
            if (chunk[i - 1] != 0) {
                end = pos + (off_t)i;
                break;
            }
    }
    off_t cut = (off_t)(batch / 2 > 8 ? batch / 2 : 8);
    off_t from = end - cut > 8 ? end - cut : 8;
    memset(chunk, 0, sizeof chunk);
    for (off_t pos = from; pos < end;) {
        size_t n = end - pos > (off_t)sizeof chunk ? sizeof chunk : (size_t)(end - pos);
        if (pwrite(fd, chunk, n, pos) != (ssize_t)n)
            break;
        pos += (off_t)n;
    }
    fsync(fd);
    close(fd);
    log_error("failpoint %s: tore the last write: zeroed bytes %lld..%lld of %s", name,
              (long long)from, (long long)end, path);
    crash(name);
}

/* Apply the failpoint `name` to request r at a stage where it can be held. Returns true
 * when r is now held. */
static bool hold_on_point(struct repl_group *g, struct fio_req *r, const char *name)
{
    uintptr_t info = 0;
    int act = point_action(name, &info);
    switch (act) {
    case 0:
        return false;
    case FIO_CRASH:
        crash(name);
        return false;
    case FIO_TORN:
        if (r->kind == R_APPEND && r->stage == S_DONE)
            tear_and_crash(g, r, name);
        crash(name);
        return false;
    case FIO_DELAY:
        note_point(g, name, "delay");
        r->hold = true;
        r->hold_until = clock_mono_ns() + delay_ms(info) * 1000000u;
        r->point = NULL;
        return true;
    default:
        note_point(g, name, act == FIO_ENOSPC ? "no space left on device" : "input/output error");
        record_error(g, "%s failed: %s (failpoint %s)",
                     r->kind == R_SNAPSHOT ? "snapshot write" : "log write",
                     act == FIO_ENOSPC ? "no space left on device" : "input/output error", name);
        if (r->kind == R_SNAPSHOT) {
            /* raft_uv reports a failed snapshot put: fail it, do not retry. */
            r->status = act == FIO_ENOSPC ? RAFT_NOSPACE : RAFT_IOERR;
            r->stage = S_DONE;
            return false;
        }
        r->hold = true;
        r->hold_until = 0;
        r->point = name;
        return true;
    }
}

/* Synchronous operations (metadata, truncate): the code to return, or 0 to go on. */
static int sync_point(struct repl_group *g, const char *name, const char *what)
{
    uintptr_t info = 0;
    int act = point_action(name, &info);
    switch (act) {
    case 0:
        return 0;
    case FIO_DELAY:
        note_point(g, name, "delay");
        usleep((useconds_t)(delay_ms(info) * 1000)); /* raft_uv does these on the loop */
        return 0;
    case FIO_EIO:
    case FIO_ENOSPC:
        note_point(g, name, what);
        record_error(g, "%s failed: %s (failpoint %s)", what,
                     act == FIO_ENOSPC ? "no space left on device" : "input/output error", name);
        return act == FIO_ENOSPC ? RAFT_NOSPACE : RAFT_IOERR;
    default:
        crash(name);
        return 0;
    }
}

/* Still held? Re-checks an error hold's failpoint (each failed retry counts). */
static bool still_held(struct repl_group *g, struct fio_req *r, uint64_t now)
{
    if (!r->hold)
        return false;
    if (r->point == NULL) {
        if (now < r->hold_until)
            return true;
    } else {
        int act = point_action(r->point, NULL);
        if (act == FIO_EIO || act == FIO_ENOSPC) {
            record_error(g, "log write failed: %s (failpoint %s, retrying)",
                         act == FIO_ENOSPC ? "no space left on device" : "input/output error",
                         r->point);
            return true;
        }
        if (g->fio.noted != NULL)
            log_info("group %u: failpoint %s off: held writes go on", g->group_id, r->point);
    }
    g->fio.noted = NULL;
    r->hold = false;
    r->point = NULL;
    return false;
}
#define POINT_HOLDS(g, r, name) hold_on_point((g), (r), (name))
#define SYNC_POINT(g, name, what) sync_point((g), (name), (what))
#else
#define POINT_HOLDS(g, r, name) false
#define SYNC_POINT(g, name, what) 0
static bool still_held(struct repl_group *g, struct fio_req *r, uint64_t now)
{
    (void)g;
    (void)now;
    return r->hold; /* never set without failpoints */
}
#endif

/* ---- Completions ----------------------------------------------------------------------- */

/* Hand raft the completions it may have now: appends strictly in submission order,
 * snapshot puts as they finish. Raft may submit more from inside its callback, so the
 * scan starts over after each one. */
static void deliver(struct repl_group *g)
{
    struct faultio *f = &g->fio;
    for (;;) {
        struct fio_req *r = f->head, *ready = NULL;
        bool append_waiting = false;
        for (; r != NULL; r = r->next) {
            bool done = r->stage == S_DONE && !r->hold;
            if (r->kind == R_TRUNCATE)
                continue;
            if (r->kind == R_APPEND) {
                if (!append_waiting && done) {
                    ready = r;
                    break;
                }
                append_waiting = true;
            } else if (done && !(r->prep && restoreprep_decoding(g))) {
                ready = r;
                break;
            }
        }
        if (ready == NULL)
            return;
        unlink_req(f, ready);
        /* raft 0.22's legacy layer drops a failed install without telling its core,
         * which then waits for it forever (measured): only a restart brings this
         * replica back, and the watchdog says so. */
        if (ready->kind == R_SNAPSHOT && ready->trailing == 0 && ready->status != 0 &&
            ready->status != RAFT_CANCELED && !f->closing)
            f->install_failed = true;
        if (ready->prep) {
            /* Held for its decode past the start of the close: raft, closing, frees the
             * chunk and restores nothing. A failed put will never be restored. */
            if (f->closing)
                ready->status = RAFT_CANCELED;
            if (ready->status != 0)
                restoreprep_discard(g, "the snapshot put did not complete");
        }
        if (ready->kind == R_APPEND)
            ready->append_cb(ready->outer_append, ready->status);
        else
            ready->put_cb(ready->outer_put, ready->status);
        sm_free(ready);
    }
}

static void append_done(struct raft_io_append *req, int status)
{
    struct fio_req *r = (struct fio_req *)((char *)req - offsetof(struct fio_req, append));
    struct repl_group *g = r->g;
    r->stage = S_DONE;
    r->status = status;
    if (status == 0) {
        if (g->fio.closing || !POINT_HOLDS(g, r, "strata/raft/append/after"))
            g->fio.last_ok_ns = clock_mono_ns();
    } else if (status != RAFT_CANCELED) {
        record_error(g, "log write failed: %s", raft_strerror(status));
    }
    deliver(g);
}

static void snapshot_done(struct raft_io_snapshot_put *req, int status)
{
    struct fio_req *r = (struct fio_req *)((char *)req - offsetof(struct fio_req, put));
    struct repl_group *g = r->g;
    r->stage = S_DONE;
    r->status = status;
    if (g->fio.closing || status == RAFT_CANCELED) {
        deliver(g);
        return;
    }
    if (status != 0)
        record_error(g, "snapshot write failed: %s", raft_strerror(status));
    else if (!POINT_HOLDS(g, r,
                          r->trailing == 0 ? "strata/raft/snapshot/install/after"
                                           : "strata/raft/snapshot/save/after") &&
             r->status == 0)
        g->fio.last_ok_ns = clock_mono_ns();
    deliver(g);
}

/* ---- Submission ------------------------------------------------------------------------ */

/* Pass r to raft_uv. Returns raft_uv's synchronous result. */
static int submit(struct repl_group *g, struct fio_req *r)
{
    struct faultio *f = &g->fio;
    int rv;
    switch (r->kind) {
    case R_APPEND:
        r->stage = S_SUBMITTED;
        rv = f->append(&g->io, &r->append, r->entries, r->n, append_done);
        break;
    case R_SNAPSHOT:
        r->stage = S_SUBMITTED;
        rv = f->snapshot_put(&g->io, r->trailing, &r->put, r->snapshot, snapshot_done);
        break;
    default:
        r->stage = S_DONE;
        rv = f->truncate(&g->io, r->index);
        break;
    }
    if (rv != 0)
        record_error(g, "%s: %s",
                     r->kind == R_APPEND     ? "log write refused"
                     : r->kind == R_SNAPSHOT ? "snapshot write refused"
                                             : "log truncation refused",
                     raft_strerror(rv));
    return rv;
}

/* From the tick: submit held operations whose hold ended, in order, and deliver held
 * completions whose hold ended. */
static void release_held(struct repl_group *g)
{
    struct faultio *f = &g->fio;
    uint64_t now = clock_mono_ns();
    for (struct fio_req *r = f->head, *next; r != NULL; r = next) {
        next = r->next;
        if (r->stage == S_DONE) {
            if (r->hold)
                still_held(g, r, now);
            continue;
        }
        if (r->stage != S_HELD)
            continue;
        if (still_held(g, r, now))
            break; /* everything after it waits: the log keeps raft's order */
        f->held--;
        int rv = submit(g, r);
        if (r->kind == R_TRUNCATE) {
            unlink_req(f, r);
            sm_free(r);
        } else if (rv != 0) {
            /* raft learns of it as a completion: it returned from the call long ago. */
            r->stage = S_DONE;
            r->status = rv;
        }
    }
    deliver(g); /* also completions failed at submission by a failpoint */
}

static struct fio_req *new_req(struct repl_group *g, enum fio_kind kind)
{
    struct fio_req *r = sm_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->g = g;
    r->kind = kind;
    r->t0 = clock_mono_ns();
    return r;
}

static int io_append(struct raft_io *io, struct raft_io_append *req,
                     const struct raft_entry entries[], unsigned n, raft_io_append_cb cb)
{
    struct repl_group *g = io_group(io);
    struct faultio *f = &g->fio;
    struct fio_req *r = new_req(g, R_APPEND);
    if (r == NULL) /* unwatched, but written */
        return f->held > 0 ? RAFT_NOMEM : f->append(io, req, entries, n, cb);
    r->outer_append = req;
    r->append_cb = cb;
    r->entries = entries;
    r->n = n;
    link_req(f, r);
    if (f->held > 0 || POINT_HOLDS(g, r, "strata/raft/append/before")) {
        r->stage = S_HELD;
        f->held++;
        return 0;
    }
    int rv = submit(g, r);
    if (rv != 0) {
        unlink_req(f, r);
        sm_free(r);
    }
    return rv;
}

static int io_snapshot_put(struct raft_io *io, unsigned trailing, struct raft_io_snapshot_put *req,
                           const struct raft_snapshot *snapshot, raft_io_snapshot_put_cb cb)
{
    struct repl_group *g = io_group(io);
    struct faultio *f = &g->fio;
    /* Our own snapshot, still being encoded: its buffers are a placeholder that must
     * never reach raft_uv (told by the buffer, whatever the trailing). */
    bool encoding = snapfork_encoding(g, snapshot);
    struct fio_req *r = new_req(g, R_SNAPSHOT);
    if (r == NULL)
        return f->held > 0 || encoding ? RAFT_NOMEM
                                       : f->snapshot_put(io, trailing, req, snapshot, cb);
    r->outer_put = req;
    r->put_cb = cb;
    r->trailing = trailing;
    r->snapshot = snapshot;
    link_req(f, r);
    /* An install: its bytes are decoded into a fresh engine while raft_uv writes them. */
    if (trailing == 0 && !encoding && !f->closing)
        r->prep = restoreprep_start(g, snapshot);
    if (encoding) {
        r->stage = S_ENCODING; /* faultio_snapshot_encoded goes on */
        return 0;
    }
    if (f->held > 0 || POINT_HOLDS(g, r,
                                   trailing == 0 ? "strata/raft/snapshot/install/before"
                                                 : "strata/raft/snapshot/save/before")) {
        r->stage = S_HELD;
        f->held++;
        return 0;
    }
    if (r->stage == S_DONE) /* failed by the failpoint: raft hears of it from the tick */
        return 0;
    int rv = submit(g, r);
    if (rv != 0 && r->prep) {
        /* A thread reads the buffer: raft must not get it back before the decode ends,
         * so it learns of the failure as a completion. */
        r->stage = S_DONE;
        r->status = rv;
        return 0;
    }
    if (rv != 0) {
        unlink_req(f, r);
        sm_free(r);
    }
    return rv;
}

static void io_closed(struct raft_io *io);

void faultio_restore_prepared(struct repl_group *g)
{
    deliver(g);
    if (g->fio.closed_deferred && !restoreprep_decoding(g)) {
        g->fio.closed_deferred = false;
        io_closed(&g->io);
    }
}

void faultio_snapshot_encoded(struct repl_group *g, int status)
{
    struct faultio *f = &g->fio;
    struct fio_req *r = f->head;
    while (r != NULL && !(r->kind == R_SNAPSHOT && r->stage == S_ENCODING))
        r = r->next;
    if (r == NULL)
        return; /* cancelled by the close already */
    /* Not inside a raft call here (a libuv callback): completions may go to raft now. */
    if (status != 0 || f->closing) {
        r->stage = S_DONE;
        r->status = f->closing ? RAFT_CANCELED : status;
        deliver(g);
        return;
    }
    r->stage = S_SUBMITTED; /* as if raft had asked just now: the failpoints see it */
    if (f->held > 0 || POINT_HOLDS(g, r, "strata/raft/snapshot/save/before")) {
        r->stage = S_HELD;
        f->held++;
        return;
    }
    if (r->stage == S_DONE) { /* failed by the failpoint */
        deliver(g);
        return;
    }
    int rv = submit(g, r);
    if (rv != 0) {
        r->stage = S_DONE;
        r->status = rv;
        deliver(g);
    }
}

static int io_truncate(struct raft_io *io, raft_index index)
{
    struct repl_group *g = io_group(io);
    struct faultio *f = &g->fio;
    if (f->held > 0) {
        /* Appends are held: truncating now would cut the log before they land. */
        struct fio_req *r = new_req(g, R_TRUNCATE);
        if (r == NULL)
            return RAFT_NOMEM;
        r->index = index;
        r->stage = S_HELD;
        link_req(f, r);
        f->held++;
        return 0;
    }
    int rv = SYNC_POINT(g, "strata/raft/truncate", "log truncation");
    if (rv != 0)
        return rv;
    rv = f->truncate(io, index);
    if (rv != 0)
        record_error(g, "log truncation refused: %s", raft_strerror(rv));
    return rv;
}

static int io_set_term(struct raft_io *io, raft_term term)
{
    struct repl_group *g = io_group(io);
    int rv = SYNC_POINT(g, "strata/raft/set_term", "metadata write (term)");
    if (rv == 0 && (rv = g->fio.set_term(io, term)) != 0)
        record_error(g, "metadata write (term) failed: %s", raft_strerror(rv));
    return rv;
}

static int io_set_vote(struct raft_io *io, raft_id id)
{
    struct repl_group *g = io_group(io);
    int rv = SYNC_POINT(g, "strata/raft/set_vote", "metadata write (vote)");
    if (rv == 0 && (rv = g->fio.set_vote(io, id)) != 0)
        record_error(g, "metadata write (vote) failed: %s", raft_strerror(rv));
    return rv;
}

static void io_tick(struct raft_io *io)
{
    struct repl_group *g = io_group(io);
    if (g->fio.head != NULL)
        release_held(g);
    watchdog_check(g);
    g->fio.raft_tick(io);
}

static int io_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv)
{
    struct repl_group *g = io_group(io);
    g->fio.raft_tick = tick;
    return g->fio.start(io, msecs, io_tick, recv);
}

/* raft_uv has closed: every request has had its completion, so none may be left. */
static void io_closed(struct raft_io *io)
{
    struct repl_group *g = io_group(io);
    if (restoreprep_decoding(g)) {
        /* A put's completion waits for the thread that reads its buffer: raft (which
         * frees the buffer) hears of the close after it. */
        g->fio.closed_deferred = true;
        log_info("group %u: close waits for the snapshot decode off the loop", g->group_id);
        return;
    }
    unsigned left = 0;
    for (struct fio_req *r = g->fio.head; r != NULL; r = r->next)
        left++;
    if (left > 0) /* a bug here: say it loudly rather than leak quietly */
        log_error("group %u: %u disk requests still pending when raft_uv closed", g->group_id,
                  left);
    g->fio.raft_closed(io);
}

/* raft closes its I/O: whatever is held never reached raft_uv, so it is cancelled here,
 * as raft_uv cancels its own pending requests on close. */
static void io_close(struct raft_io *io, raft_io_close_cb cb)
{
    struct repl_group *g = io_group(io);
    struct faultio *f = &g->fio;
    f->closing = true;
    f->raft_closed = cb;
    snapfork_cancel(g); /* an encoder still running is killed and reaped first */
    for (struct fio_req *r = f->head, *next; r != NULL; r = next) {
        next = r->next;
        if (r->kind == R_TRUNCATE) {
            unlink_req(f, r);
            sm_free(r);
            continue;
        }
        if (r->stage == S_HELD || r->stage == S_ENCODING || r->hold) {
            r->stage = S_DONE;
            r->status = RAFT_CANCELED;
            r->hold = false;
        }
    }
    f->held = 0;
    deliver(g);
    f->close(io, cb != NULL ? io_closed : NULL);
}

void faultio_init(struct repl_group *g)
{
    struct faultio *f = &g->fio;
    struct raft_io *io = &g->io;
    memset(f, 0, sizeof *f);
#ifdef STRATA_FIU
    fiu_remote_control();
#endif
    f->start = io->start;
    f->close = io->close;
    f->set_term = io->set_term;
    f->set_vote = io->set_vote;
    f->append = io->append;
    f->truncate = io->truncate;
    f->snapshot_put = io->snapshot_put;
    io->start = io_start;
    io->close = io_close;
    io->set_term = io_set_term;
    io->set_vote = io_set_vote;
    io->append = io_append;
    io->truncate = io_truncate;
    io->snapshot_put = io_snapshot_put;
}

/* ---- Repair before load ---------------------------------------------------------------- */

int faultio_repair(const char *dir, uint64_t segment_size, uint32_t group_id, struct err *err)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0
                               : err_set(err, STRATA_INTERNAL, "group %u: cannot list %s: %s",
                                         group_id, dir, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        unsigned long long counter;
        int used = 0;
        if (sscanf(de->d_name, "open-%llu%n", &counter, &used) != 1 || de->d_name[used] != '\0')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0 ||
            (uint64_t)st.st_size >= segment_size)
            continue;
        /* raft_uv allocates open segments whole and fills them with zeros: a shorter one
         * lost its tail (a torn write cut the file). raft_uv's loader refuses a batch
         * that runs past the end of the file ("short read") but drops one whose checksum
         * fails when only zeros follow, which is what the zeros restore. */
        int fd = open(path, O_WRONLY);
        if (fd < 0 || ftruncate(fd, (off_t)segment_size) != 0 || fsync(fd) != 0)
            rc = err_set(err, STRATA_INTERNAL,
                         "group %u: open segment %s was cut to %lld bytes and cannot be "
                         "repaired: %s",
                         group_id, path, (long long)st.st_size, strerror(errno));
        else
            log_warn("group %u: open segment %s was cut to %lld bytes (torn write): "
                     "zero-extended to %llu bytes so raft drops the torn entries",
                     group_id, path, (long long)st.st_size, (unsigned long long)segment_size);
        if (fd >= 0)
            close(fd);
    }
    closedir(d);
    return rc;
}
