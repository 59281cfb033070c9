/* Job threads: see offloop.h. A finished thread stays listed until joined: by the next
 * offloop_run (joining threads that have finished costs nothing) or offloop_wait_all. */
#include "offloop.h"

#include "replication.h"
#include "storage.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "faultio.h"

struct job {
    struct job *next;
    pthread_t tid;
    offloop_fn fn;
    void *arg;
    bool finished; /* under lock */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct job *jobs; /* started, not joined */
static unsigned running;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void *job_main(void *p)
{
    struct job *j = p;
    j->fn(j->arg);
    pthread_mutex_lock(&lock);
    j->finished = true;
    running--;
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Unlink and join the jobs (all of them, or only the finished ones). */
static void join_jobs(bool all)
{
    for (;;) {
        pthread_mutex_lock(&lock);
        struct job **pp = &jobs, *j = NULL;
        while (*pp != NULL && !(all || (*pp)->finished))
            pp = &(*pp)->next;
        if (*pp != NULL) {
            j = *pp;
            *pp = j->next;
        }
        pthread_mutex_unlock(&lock);
        if (j == NULL)
            return;
        pthread_join(j->tid, NULL);
        free(j); /* plain malloc: a job must start even while sm_* injects failures */
    }
}

void offloop_wait_all(void)
{
    join_jobs(true);
}

static void register_exit(void)
{
    atexit(offloop_wait_all);
}

unsigned offloop_running(void)
{
    pthread_mutex_lock(&lock);
    unsigned n = running;
    pthread_mutex_unlock(&lock);
    return n;
}

int offloop_run(offloop_fn fn, void *arg)
{
    pthread_once(&once, register_exit);
    join_jobs(false);
    struct job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return STRATA_UNAVAILABLE;
    j->fn = fn;
    j->arg = arg;
    /* The thread takes no signals: the loop thread's handlers (libuv) keep them all. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_mutex_lock(&lock);
    int rc = pthread_create(&j->tid, NULL, job_main, j);
    if (rc == 0) {
        j->next = jobs;
        jobs = j;
        running++;
    }
    pthread_mutex_unlock(&lock);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        log_warn("cannot start a thread (%s): the work runs on the loop", strerror(rc));
        free(j);
        return STRATA_UNAVAILABLE;
    }
    return 0;
}

/* ---- Engines freed off the loop ---------------------------------------------------------- */

/* Frees of 10 ms or more are logged: what the loop would have stalled for. */
static void free_timed(struct storage *engine, const char *where)
{
    uint64_t t0 = clock_mono_ns();
    uint64_t version = storage_version(engine);
    storage_free(engine);
    double ms = (double)(clock_mono_ns() - t0) / 1e6;
    if (ms >= 10.0)
        log_info("engine (version %llu) freed %s in %.1f ms", (unsigned long long)version, where,
                 ms);
}

static void free_job(void *arg)
{
    free_timed(arg, "off the loop");
}

void repl_engine_free(struct storage *engine)
{
    if (engine == NULL)
        return;
    if (faultio_point_action("strata/engine/free", NULL) != 0) {
        free_timed(engine, "on the loop"); /* test builds: as before (measurements) */
        return;
    }
    if (offloop_run(free_job, engine) != 0)
        free_timed(engine, "on the loop");
}
