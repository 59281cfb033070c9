/* Work taken off the loop thread: each job runs on a thread of its own (a joinable
 * thread, listed until joined). Used for decoding an installed snapshot into a fresh
 * engine (restoreprep.c) and for freeing detached engines (repl_engine_free). Private to
 * replication/; docs/replication.md, "Restore and engine frees off the loop".
 *
 * Why threads of our own and not libuv's pool: the pool (4 threads) does raft_uv's disk
 * I/O for every group (RAFT-NOTES trap 7); a decode or free of seconds would hold one.
 *
 * Exit: an atexit handler, registered before the first thread starts, joins every job
 * thread, so no job is cut short and LeakSanitizer (whose check runs after it) sees the
 * memory freed. Thread: offloop_run and offloop_wait_all from the loop thread (or exit);
 * the job function on its own thread. */
#ifndef STRATA_REPLICATION_OFFLOOP_H
#define STRATA_REPLICATION_OFFLOOP_H

#include "common.h"

typedef void (*offloop_fn)(void *arg);

/* Run fn(arg) on a new thread. 0, or STRATA_UNAVAILABLE when no thread could be started
 * (logged; fn has not run: the caller does the work itself). */
int offloop_run(offloop_fn fn, void *arg);
/* Join every job thread (waits for running jobs to end). */
void offloop_wait_all(void);
/* Job threads started and not yet finished. */
unsigned offloop_running(void);

#endif
