/* Snapshots of a group's engine encoded by a forked child, so the loop thread only pays
 * for the fork and the hand-off (DESIGN §8 "Snapshot stalls", RAFT-NOTES trap 7).
 *
 * Why fork: raft 0.22 calls the FSM's snapshot callbacks on the loop thread and wants
 * the bytes in buffers; the engine has no copy-on-write view of its own, but the kernel
 * gives a child one of the whole address space for the cost of copying page tables. The
 * child encodes at leisure while the loop applies, serves and replicates; pages the
 * parent changes meanwhile are copied once (the child reports how many bytes that was).
 *
 * Why a memfd and a pipe: the child writes the bytes into a memfd, which the parent maps
 * read-only once it is complete — no copy on the loop, and raft_uv writes the file from
 * the mapping in its thread pool. The pipe carries one fixed-size result record; its EOF
 * says the child is gone, so the parent needs no SIGCHLD handler (libuv owns signals).
 *
 * What the child may do: the process has other threads (libuv's pool, libfiu's control
 * thread) whose locks may be held at the fork. The child reads the engine, allocates
 * (glibc's malloc is reset for the child by fork), writes to its two descriptors and
 * _exits. It never logs, never calls libuv, raft or libfiu (the failpoint is read by the
 * parent before the fork), and formats text only with snprintf into its own record.
 *
 * Thread: the loop thread (the count of running encoders is per process). */
#include "group.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SF_MAGIC UINT64_C(0x31636e65706e7373) /* "ssnpenc1" */
#define REAP_RETRY_MS 1
#define REAP_TRIES_BEFORE_KILL 5000
#define BACKOFF_MAX_S 30
/* An encoder whose output has not grown for struct snapfork.stuck_after_ms (default
 * 60 s) is taken for stuck (on a lock some other thread held at the fork, say) and
 * killed: its snapshot fails, the next is tried. Checked 4 times in that span, at most
 * every 5 s. */
#define STUCK_AFTER_MS_DEFAULT 60000u

/* The child's one message to the parent, written once after the last byte of output. */
struct sf_record {
    uint64_t magic;
    int32_t rc; /* 0 or the STRATA_* code of the failed encode */
    uint32_t reserved;
    uint64_t len;       /* bytes written to the memfd */
    uint64_t encode_ns; /* the encode, in the child */
    uint64_t cow_bytes; /* Private_Dirty of the child at the end: pages copied on write */
    char msg[ERR_MSG_MAX];
};
_Static_assert(sizeof(struct sf_record) <= PIPE_BUF, "the record is one atomic pipe write");

/* One encoder process, watched from the fork until it is reaped. It may outlive the
 * snapshot it was started for (it exits after its record), never the group: the group's
 * close kills and reaps it (snapfork_cancel). */
struct sf_child {
    uv_poll_t poll;   /* readable: the record, then EOF */
    uv_timer_t timer; /* progress checks while it encodes, reap retries after EOF */
    int handles;      /* of poll and timer, still open */
    struct repl_group *g;
    pid_t pid;
    int rfd, memfd;
    struct sf_record rec;
    size_t got;
    bool have_record, eof, reaped, failed, stuck;
    unsigned reap_tries;
    int64_t last_size; /* of the memfd at the last progress check */
    uint64_t last_progress_ns;
    unsigned stuck_after_ms;
};

static unsigned live_children; /* forked, not yet reaped (loop thread) */

unsigned snapfork_children(void)
{
    return live_children;
}

/* ---- The child ------------------------------------------------------------------------- */

struct child_out {
    int fd;
    uint64_t len;
    int act; /* failpoint action read by the parent, 0 = none */
    uintptr_t info;
    bool paused;
    int err; /* errno of a failed write */
};

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int write_all(int fd, const void *p, size_t len, int *err)
{
    const uint8_t *b = p;
    while (len > 0) {
        ssize_t n = write(fd, b, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            return STRATA_INTERNAL;
        }
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

static int child_write(void *arg, const void *chunk, size_t len)
{
    struct child_out *o = arg;
    if (o->len > 0) {
        /* Failpoint strata/raft/snapshot/encode acts after the first chunk: mid-encode. */
        if (o->act == FIO_CRASH)
            raise(SIGKILL);
        if (o->act == FIO_DELAY && !o->paused) {
            o->paused = true;
            sleep_ms(o->info != 0 ? (uint64_t)o->info : 1000);
        }
        if (o->act == FIO_EIO || o->act == FIO_ENOSPC) {
            o->err = o->act == FIO_ENOSPC ? ENOSPC : EIO;
            return STRATA_INTERNAL;
        }
    }
    int rc = write_all(o->fd, chunk, len, &o->err);
    if (rc == 0)
        o->len += len;
    return rc;
}

/* Bytes of the child's memory that are no longer shared with the parent. */
static uint64_t private_dirty_bytes(void)
{
    int fd = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char text[4096];
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    const char *p = strstr(text, "Private_Dirty:");
    return p != NULL ? strtoull(p + strlen("Private_Dirty:"), NULL, 10) * 1024 : 0;
}

/* Handlers inherited from the parent would act for it: libuv's forward a signal to the
 * parent's loop through a pipe both share. Crash handlers (sanitizers) may stay. */
static void reset_signal_handlers(void)
{
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP || s == SIGSEGV || s == SIGBUS || s == SIGFPE ||
            s == SIGILL || s == SIGABRT || s == SIGTRAP)
            continue;
        struct sigaction sa;
        if (sigaction(s, NULL, &sa) != 0)
            continue;
        bool handled = (sa.sa_flags & SA_SIGINFO) != 0 ||
                       (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN);
        if (!handled)
            continue;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigemptyset(&sa.sa_mask);
        sigaction(s, &sa, NULL);
    }
}

/* Close every inherited descriptor from 3 up but `a` and `b`. Closing a duplicate in the
 * child leaves the parent's files, sockets, epoll set and flock locks as they are; kept,
 * they would hold a socket the parent closes open (its peer sees no EOF) and a listening
 * port taken after the parent exits. */
static void close_inherited(int a, int b)
{
    int keep[2] = {a < b ? a : b, a < b ? b : a};
    unsigned from = 3;
    for (int i = 0; i < 2; i++) {
        if (keep[i] < (int)from)
            continue;
        if ((unsigned)keep[i] > from)
            close_range(from, (unsigned)keep[i] - 1, 0);
        from = (unsigned)keep[i] + 1;
    }
    close_range(from, ~0U, 0);
}

static void child_run(struct storage *engine, int memfd, int wfd, pid_t parent, int act,
                      uintptr_t info, const sigset_t *mask) __attribute__((noreturn));

static void child_run(struct storage *engine, int memfd, int wfd, pid_t parent, int act,
                      uintptr_t info, const sigset_t *mask)
{
    reset_signal_handlers();
    /* A node killed with -9 takes its encoders along. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(3);
    close_inherited(memfd, wfd);
    /* The copies on write may run the machine short of memory: the OOM killer should
     * then take the encoder (its failure costs one snapshot), not the node. */
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        int ignored = 0;
        write_all(oom, "1000", 4, &ignored);
        close(oom);
    }
    pthread_sigmask(SIG_SETMASK, mask, NULL); /* signals were blocked around the fork */

    uint64_t t0 = clock_mono_ns();
    struct err err;
    err_clear(&err);
    struct child_out o = {.fd = memfd, .act = act, .info = info};
    int rc = storage_snapshot(engine, child_write, &o, &err);
    struct sf_record rec;
    memset(&rec, 0, sizeof rec);
    rec.magic = SF_MAGIC;
    rec.rc = rc;
    rec.len = o.len;
    rec.encode_ns = clock_mono_ns() - t0;
    rec.cow_bytes = private_dirty_bytes();
    if (rc != 0) {
        /* strerrordesc_np: no locale, no lock (strerror may take both). */
        const char *why = o.err != 0 ? strerrordesc_np(o.err) : NULL;
        snprintf(rec.msg, sizeof rec.msg, "%.190s%s%.50s", err.msg[0] ? err.msg : "encode failed",
                 why != NULL ? ": " : "", why != NULL ? why : "");
    }
    int werr = 0;
    write_all(wfd, &rec, sizeof rec, &werr);
    _exit(rc == 0 ? 0 : 1);
}

/* ---- Watching the child (parent) -------------------------------------------------------- */

static void child_handle_closed(uv_handle_t *h)
{
    struct sf_child *c = h->data;
    if (--c->handles > 0)
        return;
    if (c->rfd >= 0)
        close(c->rfd);
    if (c->memfd >= 0)
        close(c->memfd);
    sm_free(c);
}

static void describe_status(int status, char *out, size_t cap)
{
    if (WIFSIGNALED(status))
        snprintf(out, cap, "killed by signal %d", WTERMSIG(status));
    else if (WIFEXITED(status))
        snprintf(out, cap, "exit status %d", WEXITSTATUS(status));
    else
        snprintf(out, cap, "status 0x%x", (unsigned)status);
}

/* The child is gone (waitpid returned it): let go of it. */
static void child_reaped(struct sf_child *c, int status)
{
    c->reaped = true;
    live_children--;
    struct repl_group *g = c->g;
    if (g != NULL) {
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!clean || c->failed) {
            char why[64];
            describe_status(status, why, sizeof why);
            log_warn("group %u: snapshot encoder pid %ld ended: %s", g->group_id, (long)c->pid,
                     why);
        }
        g->snap.child = NULL;
        c->g = NULL;
    }
    uv_close((uv_handle_t *)&c->poll, child_handle_closed);
    uv_close((uv_handle_t *)&c->timer, child_handle_closed);
}

static void try_reap(struct sf_child *c);

static void reap_timer_cb(uv_timer_t *t)
{
    try_reap(t->data);
}

/* While the child encodes: has its output grown lately? */
static void progress_cb(uv_timer_t *t)
{
    struct sf_child *c = t->data;
    if (c->have_record || c->stuck || c->memfd < 0)
        return; /* done: the EOF follows */
    struct stat st;
    uint64_t now = clock_mono_ns();
    if (fstat(c->memfd, &st) == 0 && st.st_size != c->last_size) {
        c->last_size = st.st_size;
        c->last_progress_ns = now;
        return;
    }
    if (now - c->last_progress_ns < c->stuck_after_ms * UINT64_C(1000000))
        return;
    c->stuck = true; /* its EOF fails the snapshot */
    log_error("snapshot encoder pid %ld wrote nothing for %u ms: killing it", (long)c->pid,
              c->stuck_after_ms);
    kill(c->pid, SIGKILL);
}

/* After the pipe's EOF the child has closed its files and is a moment from being a
 * zombie: poll for it without blocking the loop. */
static void try_reap(struct sf_child *c)
{
    int status = 0;
    pid_t r = waitpid(c->pid, &status, WNOHANG);
    if (r == c->pid) {
        child_reaped(c, status);
        return;
    }
    if (r < 0 && errno == ECHILD) { /* reaped elsewhere: nothing to wait for */
        child_reaped(c, 0);
        return;
    }
    if (++c->reap_tries == REAP_TRIES_BEFORE_KILL) {
        log_warn("snapshot encoder pid %ld still not reaped after %u ms: killing it", (long)c->pid,
                 REAP_TRIES_BEFORE_KILL * REAP_RETRY_MS);
        kill(c->pid, SIGKILL);
    }
    uv_timer_start(&c->timer, reap_timer_cb, REAP_RETRY_MS, 0);
}

static uint64_t backoff_s(unsigned failures)
{
    uint64_t s = 1;
    for (unsigned i = 1; i < failures && s < BACKOFF_MAX_S; i++)
        s *= 2;
    return s < BACKOFF_MAX_S ? s : BACKOFF_MAX_S;
}

/* The encode failed: raft hears of it as a failed put (never a partial snapshot). */
static void encode_failed(struct sf_child *c, const char *why)
{
    struct repl_group *g = c->g;
    struct snapfork *sf = &g->snap;
    c->failed = true;
    if (sf->state != SF_ENCODING)
        return;
    sf->state = SF_FAILED;
    sf->failed_total++;
    sf->failures_in_row++;
    uint64_t wait_s = backoff_s(sf->failures_in_row);
    sf->retry_after_ns = clock_mono_ns() + wait_s * 1000000000u;
    log_error("group %u: snapshot at index %llu failed: encoder pid %ld %s; raft keeps its "
              "log, next attempt in %llu s",
              g->group_id, (unsigned long long)sf->index, (long)c->pid, why,
              (unsigned long long)wait_s);
    faultio_snapshot_encoded(g, RAFT_IOERR);
}

/* The child's bytes are complete: map them as raft's buffer and let the put go on. */
static void hand_off(struct sf_child *c)
{
    struct repl_group *g = c->g;
    struct snapfork *sf = &g->snap;
    uint64_t t0 = clock_mono_ns();
    struct stat st;
    memset(&st, 0, sizeof st);
    if (fstat(c->memfd, &st) != 0 || (uint64_t)st.st_size != c->rec.len || c->rec.len == 0) {
        char why[128];
        snprintf(why, sizeof why, "left %lld bytes, its record says %llu", (long long)st.st_size,
                 (unsigned long long)c->rec.len);
        encode_failed(c, why);
        return;
    }
    void *base = mmap(NULL, (size_t)c->rec.len, PROT_READ, MAP_SHARED, c->memfd, 0);
    if (base == MAP_FAILED) {
        char why[128];
        snprintf(why, sizeof why, "output cannot be mapped: %s", strerror(errno));
        encode_failed(c, why);
        return;
    }
    close(c->memfd); /* the mapping keeps the bytes */
    c->memfd = -1;
    sf->bufs[0].base = base;
    sf->bufs[0].len = (size_t)c->rec.len;
    sf->mapped = true;
    sf->state = SF_READY;
    sf->failures_in_row = 0;
    sf->encoded_total++;
    sf->last_encode_ns = c->rec.encode_ns;
    sf->last_cow_bytes = c->rec.cow_bytes;
    raft_index index = sf->index;
    size_t len = (size_t)c->rec.len;
    uint64_t fork_ns = sf->fork_ns, total_ns = t0 - sf->started_ns;
    faultio_snapshot_encoded(g, 0); /* may complete the put and finalize at once */
    uint64_t stall_ns = fork_ns + (clock_mono_ns() - t0);
    sf->last_stall_ns = stall_ns;
    g->snapshots_taken++;
    /* The loop's share is the fork plus this hand-off; the encode ran in the child. */
    log_info("group %u: snapshot at index %llu, %zu bytes, loop stalled %.3f ms (fork %.3f ms), "
             "encoded in %.1f ms by pid %ld (%.1f ms after the fork), %.1f MiB copied on write",
             g->group_id, (unsigned long long)index, len, (double)stall_ns / 1e6,
             (double)fork_ns / 1e6, (double)c->rec.encode_ns / 1e6, (long)c->pid,
             (double)total_ns / 1e6, (double)c->rec.cow_bytes / (1024.0 * 1024.0));
    group_emit(g, REPL_EV_SNAPSHOT_TAKEN,
               "index=%llu bytes=%zu stall_us=%llu encode_us=%llu cow_bytes=%llu",
               (unsigned long long)index, len, (unsigned long long)(stall_ns / 1000),
               (unsigned long long)(c->rec.encode_ns / 1000), (unsigned long long)c->rec.cow_bytes);
}

static void on_record(struct sf_child *c)
{
    if (c->g == NULL)
        return; /* cancelled meanwhile */
    if (c->rec.magic != SF_MAGIC) {
        encode_failed(c, "sent a malformed result");
        return;
    }
    if (c->rec.rc != 0) {
        char why[ERR_MSG_MAX + 32];
        c->rec.msg[sizeof c->rec.msg - 1] = '\0';
        snprintf(why, sizeof why, "failed: %s", c->rec.msg);
        encode_failed(c, why);
        return;
    }
    hand_off(c);
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    struct sf_child *c = h->data;
    (void)events;
    bool eof = status < 0;
    while (!eof) {
        char scratch[64];
        bool want_rec = c->got < sizeof c->rec;
        void *dst = want_rec ? (char *)&c->rec + c->got : scratch;
        size_t cap = want_rec ? sizeof c->rec - c->got : sizeof scratch;
        ssize_t n = read(c->rfd, dst, cap);
        if (n > 0) {
            if (want_rec)
                c->got += (size_t)n;
            continue; /* bytes past the record are ignored */
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        eof = true; /* 0, or an error: the pipe is done either way */
    }
    if (!c->have_record && c->got == sizeof c->rec) {
        c->have_record = true;
        on_record(c);
    }
    if (!eof)
        return;
    c->eof = true;
    uv_poll_stop(h);
    if (!c->have_record && c->g != NULL)
        encode_failed(c, c->stuck ? "made no progress and was killed"
                                  : "ended without a result (killed or crashed)");
    if (!c->reaped)
        try_reap(c);
}

/* ---- The group's side ------------------------------------------------------------------- */

static void close_fds(int a, int b, int c)
{
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    if (c >= 0)
        close(c);
}

int snapfork_start(struct repl_group *g, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct snapfork *sf = &g->snap;
    uint64_t t0 = clock_mono_ns();
#if defined(__SANITIZE_ADDRESS__)
    /* Sanitizer builds encode on the loop: GCC 12's libasan does not make its allocator
     * fork-safe, so a child forked while any other thread (a libuv pool thread doing
     * raft_uv's I/O) held an allocator lock deadlocked in its first malloc — caught by
     * test_replication_snapfork under ASan, the child's stack in SizeClassAllocator64.
     * glibc's malloc resets its locks in the child, so normal builds fork. */
    sf->sync_total++;
    return STRATA_UNAVAILABLE;
#endif
    /* One encoder per group (the last one may not be reaped yet), a few per process, none
     * while backing off after failures. */
    if (sf->state != SF_IDLE || sf->child != NULL || live_children >= SNAPFORK_MAX_CHILDREN ||
        t0 < sf->retry_after_ns) {
        sf->busy_total++;
        return RAFT_BUSY;
    }
    uintptr_t info = 0;
    int act = faultio_point_action("strata/raft/snapshot/encode", &info);
    struct raft_buffer *b = raft_malloc(sizeof *b);
    struct sf_child *c = sm_calloc(1, sizeof *c);
    if (b == NULL || c == NULL) {
        raft_free(b);
        sm_free(c);
        return RAFT_NOMEM;
    }
    int p[2] = {-1, -1};
    const char *what = "memfd_create";
    int memfd = memfd_create("strata-snapshot", MFD_CLOEXEC);
    if (memfd < 0)
        goto err_fallback;
    what = "pipe2";
    if (pipe2(p, O_CLOEXEC) != 0)
        goto err_fallback;
    what = "fcntl";
    if (fcntl(p[0], F_SETFL, O_NONBLOCK) != 0)
        goto err_fallback;
    c->g = g;
    c->rfd = p[0];
    c->memfd = memfd;
    c->poll.data = c;
    c->timer.data = c;
    what = "uv_poll_init";
    if (uv_poll_init(g->loop, &c->poll, c->rfd) != 0)
        goto err_fallback;
    uv_timer_init(g->loop, &c->timer);
    c->handles = 2;

    /* Signals stay blocked until the child has reset the handlers it inherits. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    pid_t pid;
    if (faultio_point_action("strata/raft/snapshot/fork", NULL) != 0) {
        pid = -1; /* test builds: the fork fails as when the process limit is reached */
        errno = EAGAIN;
    } else {
        pid = fork();
    }
    if (pid == 0)
        child_run(g->engine, memfd, p[1], parent, act, info, &old);
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(p[1]);
    if (pid < 0) {
        log_warn("group %u: cannot fork a snapshot encoder (%s): encoding on the loop", g->group_id,
                 strerror(fork_errno));
        c->g = NULL;
        c->reaped = true;
        uv_close((uv_handle_t *)&c->poll, child_handle_closed);
        uv_close((uv_handle_t *)&c->timer, child_handle_closed);
        raft_free(b);
        sf->sync_total++;
        return STRATA_UNAVAILABLE;
    }
    live_children++;
    c->pid = pid;
    uv_poll_start(&c->poll, UV_READABLE | UV_DISCONNECT, on_readable);
    c->last_progress_ns = t0;
    c->stuck_after_ms = sf->stuck_after_ms != 0 ? sf->stuck_after_ms : STUCK_AFTER_MS_DEFAULT;
    unsigned check_ms = c->stuck_after_ms / 4 < 5000 ? c->stuck_after_ms / 4 : 5000;
    check_ms = check_ms > 10 ? check_ms : 10;
    uv_timer_start(&c->timer, progress_cb, check_ms, check_ms);
    b[0].base = NULL; /* placeholder: the put waits for the bytes (faultio.c) */
    b[0].len = 0;
    *bufs = b;
    *n_bufs = 1;
    sf->state = SF_ENCODING;
    sf->bufs = b;
    sf->mapped = false;
    sf->child = c;
    sf->index = raft_last_applied(&g->raft);
    sf->started_ns = t0;
    sf->last_pid = pid;
    sf->fork_ns = clock_mono_ns() - t0;
    log_debug("group %u: snapshot at index %llu: encoder pid %ld forked in %.3f ms", g->group_id,
              (unsigned long long)sf->index, (long)pid, (double)sf->fork_ns / 1e6);
    return 0;

err_fallback:
    log_warn("group %u: no background snapshot (%s: %s): encoding on the loop", g->group_id, what,
             strerror(errno));
    close_fds(memfd, p[0], p[1]);
    raft_free(b);
    sm_free(c);
    sf->sync_total++;
    return STRATA_UNAVAILABLE;
}

bool snapfork_encoding(struct repl_group *g, const struct raft_snapshot *s)
{
    return g->snap.state == SF_ENCODING && s->bufs == g->snap.bufs && s->n_bufs == 1;
}

void snapfork_cancel(struct repl_group *g)
{
    struct snapfork *sf = &g->snap;
    struct sf_child *c = sf->child;
    if (c != NULL && !c->reaped) {
        uint64_t t0 = clock_mono_ns();
        kill(c->pid, SIGKILL);
        int status = 0;
        pid_t r;
        do
            r = waitpid(c->pid, &status, 0); /* a killed child exits at once */
        while (r < 0 && errno == EINTR);
        log_info("group %u: snapshot encoder pid %ld stopped and reaped in %.3f ms", g->group_id,
                 (long)c->pid, (double)(clock_mono_ns() - t0) / 1e6);
        c->failed = false; /* killed on purpose: child_reaped need not say so */
        c->g = NULL;       /* its record, if any arrives, is not wanted */
        sf->child = NULL;
        c->reaped = true;
        live_children--;
        uv_close((uv_handle_t *)&c->poll, child_handle_closed);
        uv_close((uv_handle_t *)&c->timer, child_handle_closed);
    }
    if (sf->state == SF_ENCODING)
        sf->state = SF_CANCELED;
}

void snapfork_finalize(struct repl_group *g, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct snapfork *sf = &g->snap;
    if (sf->state == SF_ENCODING)
        snapfork_cancel(g); /* raft gave up on the put before the bytes came */
    struct raft_buffer *b = *bufs;
    if (b != NULL && *n_bufs > 0 && b[0].base != NULL) {
        if (sf->mapped && b == sf->bufs)
            munmap(b[0].base, b[0].len);
        else
            raft_free(b[0].base);
    }
    raft_free(b);
    *bufs = NULL;
    *n_bufs = 0;
    if (b == sf->bufs) {
        sf->bufs = NULL;
        sf->mapped = false;
        sf->state = SF_IDLE;
    }
}

/* ---- The synchronous encode (fallback) ------------------------------------------------- */

/* Snapshot bytes accumulate in one raft_malloc'ed buffer (freed by snapfork_finalize). */
struct snap_out {
    uint8_t *base;
    size_t len, cap;
};

static int snap_write(void *arg, const void *chunk, size_t len)
{
    struct snap_out *o = arg;
    if (len > o->cap - o->len) {
        size_t cap = o->cap ? o->cap : 64 * 1024;
        while (cap - o->len < len)
            cap *= 2;
        uint8_t *p = raft_realloc(o->base, cap);
        if (p == NULL)
            return STRATA_OUT_OF_MEMORY;
        o->base = p;
        o->cap = cap;
    }
    memcpy(o->base + o->len, chunk, len);
    o->len += len;
    return 0;
}

int snapfork_sync(struct repl_group *g, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct snapfork *sf = &g->snap;
    uint64_t t0 = clock_mono_ns();
    struct snap_out o = {NULL, 0, 0};
    struct err err;
    err_clear(&err);
    int rc = storage_snapshot(g->engine, snap_write, &o, &err);
    if (rc != 0) {
        raft_free(o.base);
        log_error("group %u: snapshot failed: %s", g->group_id, err.msg);
        return rc == STRATA_OUT_OF_MEMORY ? RAFT_NOMEM : RAFT_IOERR;
    }
    struct raft_buffer *b = raft_malloc(sizeof *b);
    if (b == NULL) {
        raft_free(o.base);
        return RAFT_NOMEM;
    }
    b[0].base = o.base;
    b[0].len = o.len;
    *bufs = b;
    *n_bufs = 1;
    sf->state = SF_SYNC;
    sf->bufs = b;
    sf->mapped = false;
    /* The stall: the loop (every group on it) is blocked for this long (trap 7). */
    uint64_t stall_us = (clock_mono_ns() - t0) / 1000;
    sf->last_stall_ns = stall_us * 1000;
    g->snapshots_taken++;
    log_info("group %u: snapshot at index %llu, %zu bytes, loop stalled %.3f ms (encoded on "
             "the loop)",
             g->group_id, (unsigned long long)raft_last_applied(&g->raft), o.len,
             (double)stall_us / 1000.0);
    group_emit(g, REPL_EV_SNAPSHOT_TAKEN, "index=%llu bytes=%zu stall_us=%llu encode_us=%llu",
               (unsigned long long)raft_last_applied(&g->raft), o.len, (unsigned long long)stall_us,
               (unsigned long long)stall_us);
    return 0;
}
