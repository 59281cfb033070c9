/* Test harness: a cluster of replication groups in one process and one uv loop. Each
 * node has its own engine, data dir (under one mkdtemp root, removed at the end), and
 * listening socket on 127.0.0.1 (port chosen by the kernel) with a tiny acceptor that
 * reads exactly the raft peer preamble and hands the stream to the node's group. Every
 * wait is bounded by a uv timer; running out of time fails the test. */
#ifndef STRATA_TEST_REPL_CLUSTER_H
#define STRATA_TEST_REPL_CLUSTER_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <uv.h>

#include "replication.h"
#include "storage.h"

#define CL_MAX 5

struct cluster;
struct acceptor;

struct cl_node {
    struct cluster *c;
    int idx;
    uint64_t id;
    char address[64];
    char dir[512];
    struct storage *engine;
    struct repl_group *g;
    bool stopping;
    uv_tcp_t listener;
    bool listening;
    int elected, lost, leader_changed, snapshots_taken, snapshots_installed, peer_up, peer_down;
    char snapshot_detail[256];
};

struct cluster {
    uv_loop_t loop;
    char root[256];
    int n; /* nodes created (listening); groups run on some of them */
    struct cl_node nodes[CL_MAX];
    struct repl_options opts; /* template: group, timeouts, thresholds */
    uv_timer_t deadline;
    bool expired;
    struct acceptor *acceptors;
};

/* Create n nodes (listening, no group yet) with test options (election 500 ms,
 * heartbeat 50 ms). Adjust c->opts before starting groups. */
void cl_init(struct cluster *c, int n);
/* Advertise "localhost:port" instead of "127.0.0.1:port" (exercises the resolver). */
void cl_use_names(struct cluster *c);
/* Bootstrap nodes [0, nboot) as the initial members and start their groups. */
void cl_start(struct cluster *c, int nboot);
/* Open and start node i's group with a fresh engine (old engine freed); bootstrap with
 * the first nboot nodes as members when nboot > 0. */
void cl_open(struct cluster *c, int i, int nboot);
/* Stop node i's group and wait until it is freed. */
void cl_stop(struct cluster *c, int i);
/* Close node i's listening socket: peers' connections are refused, as for a dead
 * process. */
void cl_unlisten(struct cluster *c, int i);
/* Delete node i's data dir (the group must be stopped). */
void cl_wipe(struct cluster *c, int i);
/* Stop everything, close the loop (asserting no handle leaked), free, remove the dir. */
void cl_teardown(struct cluster *c);
/* cmocka teardown for every cluster test: if the test failed before cl_teardown, remove
 * the data dirs it left (the loop is abandoned). */
int cl_fixture_teardown(void **state);

/* Run the loop until pred(arg) holds; fail the test after timeout_ms. */
void cl_run_until(struct cluster *c, bool (*pred)(void *), void *arg, unsigned timeout_ms,
                  const char *what);
/* Run the loop for ms milliseconds. */
void cl_run_for(struct cluster *c, unsigned ms);
/* Wait until one running node leads and every running node knows it; returns its index. */
int cl_wait_leader(struct cluster *c, unsigned timeout_ms);
/* Wait until every running node applied the leader's last index. */
void cl_wait_caught_up(struct cluster *c, unsigned timeout_ms);
/* Snapshots of all running engines are byte-identical (returns the node count). */
int cl_assert_same_state(struct cluster *c);

/* A request's outcome. */
struct cl_result {
    bool done;
    bool returned;  /* the submit call has returned */
    bool reentrant; /* the callback ran before the submit call returned (a bug) */
    int calls;
    int code;
    char json[4096]; /* result as JSON, or the error message */
    char leader[REPL_ADDRESS_MAX + 1];
};
/* Command bytes from JSON text (caller frees with buf_close). */
void cl_cmd(struct buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cl_write(struct cluster *c, int i, struct cl_result *r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void cl_read(struct cluster *c, int i, bool stale, struct cl_result *r, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void cl_wait(struct cluster *c, struct cl_result *r, unsigned timeout_ms);
/* kv.put key=v on node i and wait (10 s) for its success; anything else fails the test. */
void cl_put_ok(struct cluster *c, int i, const char *key, int v);
repl_done_cb cl_done_cb(void);

int cl_leader_of(struct cluster *c); /* index of a running leader, or -1 */
double cl_now_ms(void);

#endif
