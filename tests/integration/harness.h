/* Integration-test harness: real stratadb-server processes on 127.0.0.1, driven through
 * libstrata and raw sockets.
 *
 * Processes: every node is fork/exec'd from the server binary named on the command
 * line, listens on a port found free by binding port 0, keeps its data dir and log under
 * one mkdtemp directory, and is tracked by PID. All tracked processes are killed
 * (SIGKILL) and reaped, and the temporary directory removed, at exit — normal return,
 * a failed REQUIRE, the global deadline (SIGALRM) or a fatal signal. Children also get
 * PR_SET_PDEATHSIG so they die with the test process even if it is SIGKILLed.
 *
 * Checks: CHECK records a pass or a failure (with file:line and a message) and goes on;
 * REQUIRE returns from the calling test function on failure. main() prints
 * "N passed, N failed" and exits non-zero on any failure, after printing the tail of
 * every node's log. Every wait in the harness is bounded in time.
 *
 * Thread: the harness itself is used from the main thread; client helpers (h_exec and
 * friends) may be used from other threads on distinct handles. */
#ifndef STRATA_INTEG_HARNESS_H
#define STRATA_INTEG_HARNESS_H

#include "common.h"
#include "proto.h"
#include "strata.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define H_MAX_NODES 7
#define H_PATH_MAX 1024

/* Election/heartbeat timeouts every test cluster uses (fast failover on loopback). */
#define H_ELECTION_MS 300
#define H_HEARTBEAT_MS 50

/* ---- Checks ------------------------------------------------------------------------ */

extern int h_passed, h_failed;
bool h_check(bool ok, const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
#define CHECK(cond, ...) h_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!CHECK(cond, __VA_ARGS__))                                                             \
            return;                                                                                \
    } while (0)
/* Progress line (not a check). */
void h_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic milliseconds and a sleep. */
uint64_t h_now_ms(void);
void h_sleep_ms(unsigned ms);

/* ---- Setup ----------------------------------------------------------------------------- */

/* Record the server binary, create the temporary directory, install the exit/signal
 * cleanup and arm a global deadline of `deadline_s` seconds. Exits on failure. */
void h_init(const char *server_path, unsigned deadline_s);
/* Kill and reap every tracked process, print log tails when a check failed, remove the
 * temporary directory (kept when STRATA_INTEG_KEEP is set). Idempotent; also atexit. */
void h_cleanup(void);
/* End of a test: SIGTERM every running server, wait (bounded) and check each exited 0,
 * then check that no log holds a sanitizer report (ASan/UBSan/LSan builds). */
void h_finish(void);
/* The temporary directory (absolute). */
const char *h_tmpdir(void);
/* Write `text` to a new file `name` in the temporary directory; the path goes to out. */
void h_write_file(const char *name, const char *text, char *out, size_t cap);
/* rm -rf `path` (must lie inside the temporary directory). 0 on success. */
int h_remove_tree(const char *path);

/* ---- Nodes and clusters ------------------------------------------------------------- */

struct h_node {
    uint64_t id; /* 1-based position in the bootstrap list = node id */
    int port;
    char addr[32]; /* "127.0.0.1:PORT" */
    char dir[H_PATH_MAX];
    char log[H_PATH_MAX];
    pid_t pid;  /* 0 when not running */
    int status; /* wait status of the last exit (valid when pid == 0 after a run) */
    /* When set, the node starts with `--join join --node-id join_id` instead of
     * --bootstrap (a replacement member under a new id). */
    const char *join;
    uint64_t join_id;
};

struct h_cluster {
    int n;
    struct h_node nodes[H_MAX_NODES];
    char members[H_MAX_NODES * 32]; /* the --bootstrap list */
    const char *extra[24];          /* extra server flags, NULL-terminated */
};

/* Prepare an n-node cluster (ports, dirs, the bootstrap list); `name` prefixes its
 * directories. `extra` is a NULL-terminated list of extra flags for every node (may be
 * NULL; the strings must outlive the cluster). Starts nothing. */
void h_cluster_init(struct h_cluster *c, const char *name, int n, const char *const *extra);
/* Start node i with its fixed command line and wait until its port accepts connections
 * (bounded). Returns 0, or -1 if it exited or never listened (details printed). */
int h_node_start(struct h_cluster *c, int i);
/* Start every node; 0 or -1. */
int h_cluster_start(struct h_cluster *c);
/* Send `sig` to node i (if running). */
void h_node_signal(struct h_cluster *c, int i, int sig);
/* Wait up to `ms` for node i to exit; returns its wait status, or -1 on timeout (the
 * process is then still running and tracked). */
int h_node_wait_exit(struct h_cluster *c, int i, unsigned ms);
/* kill -9 and reap node i. */
void h_node_kill9(struct h_cluster *c, int i);
/* Is node i's process alive (reaps it if it died)? */
bool h_node_alive(struct h_cluster *c, int i);
/* Count lines of node i's log containing `needle`. */
int h_log_count(const struct h_cluster *c, int i, const char *needle);
/* Print to stderr the last `max` (at most 64) lines of node i's log that hold `needle`:
 * the story behind a failed wait, printed when it fails (a global deadline later kills
 * the servers without the usual log tails). */
void h_log_grep_tail(const struct h_cluster *c, int i, const char *needle, int max);

/* ---- Client helpers --------------------------------------------------------------------- */

/* Open a libstrata handle on "strata://[KEY@]ADDRS" (key may be NULL). NULL on failure. */
struct strata *h_open_nodes(const char *key, const char *addrs);
/* A handle on one node only ("?routing=server": node i receives every command and
 * routes it itself, as a client that is not cluster-aware would). */
struct strata *h_open_node(const struct h_cluster *c, int i, const char *key);
/* A handle on the whole cluster (every node a seed). */
struct strata *h_open_cluster(const struct h_cluster *c, const char *key);

/* Run a command given as printf-formatted JSON text. Returns the code; the result (when
 * 0) is appended to `res` (may be NULL), the error goes to `e` (may be NULL). */
int h_exec(struct strata *db, unsigned flags, struct buf *res, struct err *e, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* kv.get of `key` on `branch` (NULL = session default). Returns 0 with the string value
 * copied to out, STRATA_NOT_FOUND when the key is absent (nil result), or the error
 * code; a value that is not a string is STRATA_WRONG_TYPE. */
int h_get_str(struct strata *db, unsigned flags, const char *branch, const char *key, char *out,
              size_t cap, struct err *e);

/* A decoded MessagePack result (owns its zone). */
struct h_obj {
    msgpack_unpacked u;
    const msgpack_object *o;
};
int h_obj_parse(struct h_obj *x, const struct buf *b);
void h_obj_free(struct h_obj *x);
const msgpack_object *h_map_get(const msgpack_object *m, const char *key);
uint64_t h_map_u64(const msgpack_object *m, const char *key);
/* Copy a string field to out ("" when absent or not a string). */
void h_map_str(const msgpack_object *m, const char *key, char *out, size_t cap);

/* cluster.status of one node. */
struct h_status {
    uint64_t node_id, leader_id, term, commit_index, applied_index, last_index, forwarded;
    char role[16];
    char leader[64];
    size_t nmembers;
};
/* The API key h_status (and so h_wait_leader) presents; NULL (default) for open mode. */
void h_set_status_key(const char *key);
/* The group whose role/leader/indexes h_status reports (default 1: the shard that owns
 * the default branch; 0 = the meta group). Node-level fields are the node's. */
extern uint32_t h_status_group;
/* Ask node i (one connection, answered locally). 0 or an error code. */
int h_status(const struct h_cluster *c, int i, struct h_status *st);
/* Wait up to `ms` for a leader every running node agrees on (excluding node `exclude`,
 * -1 for none); returns its index or -1. */
int h_wait_leader(struct h_cluster *c, unsigned ms, int exclude);

/* ---- Data checks ------------------------------------------------------------------------ */

struct h_kv {
    char key[48];
    char value[64];
};
/* kv.batch_get of every key through `db` (in chunks), on `branch` (NULL = default):
 * counts keys that are absent and keys holding another value. Returns 0, or the error
 * code of a read that failed (counts then partial). */
int h_batch_check(struct strata *db, unsigned flags, const char *branch, const struct h_kv *kv,
                  size_t n, size_t *absent, size_t *wrong);
/* Stale reads on node i alone (a connection to that node only): poll, at most `ms`,
 * until every pair is there with its value. Returns the number of pairs still absent
 * or wrong (0 = all there), or -1 if the answers could not be read from node i. */
long h_expect_on_node(const struct h_cluster *c, int i, const struct h_kv *kv, size_t n,
                      unsigned ms);
/* Pipelined kv.put of every pair through `db` (strata_exec_many, `per` at a time).
 * Returns the number of puts acknowledged (0 code); a failure is printed. */
size_t h_put_all(struct strata *db, const char *branch, const struct h_kv *kv, size_t n,
                 size_t per);
/* Fill kv[0..n) with key PREFIX-<i> and value PREFIX-value-<i>. */
void h_kv_fill(struct h_kv *kv, size_t n, const char *prefix);

/* ---- Raw sockets (bad-input tests) ----------------------------------------------------- */

/* Connect to 127.0.0.1:port; returns the fd or -1. */
int h_raw_connect(int port);
/* Send all bytes (MSG_NOSIGNAL). 0 or -1. */
int h_raw_send(int fd, const void *p, size_t n);
/* What the server did with a connection after a bad input. */
struct h_raw_outcome {
    bool closed;    /* the server closed the connection (EOF or reset) */
    int error_code; /* code of the first ERROR frame, 0 if none */
    char message[ERR_MSG_MAX];
    int frames;   /* complete frames received */
    size_t stray; /* bytes that did not form a frame */
};
/* Read everything until the server closes or `ms` pass; decode what came. */
void h_raw_drain(int fd, unsigned ms, struct h_raw_outcome *out);
/* Read the next frame with a reader (bounded by ms). 1 = frame, 0 = timeout/closed,
 * <0 = malformed. The frame points into the reader. */
int h_raw_next_frame(int fd, struct proto_reader *rd, struct proto_frame *f, unsigned ms);

#endif
