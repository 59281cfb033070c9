/* The fault-test workload's shared parts: options, exit codes, the msgpack and client
 * helpers, and the objects a history names (read back by final and compare). Private to
 * strata_workload (workload.c: main and helpers; workload_run.c: the recorded workload;
 * workload_history.c: reading a history back; workload_checks.c: probe and final;
 * workload_compare.c: the replica comparison). */
#ifndef STRATA_FAULT_WORKLOAD_H
#define STRATA_FAULT_WORKLOAD_H

#include "common.h"
#include "storage.h"
#include "strata.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64
#define MAX_KEYS 64
#define MAX_BRANCHES 8
#define MAX_LOGS 8
#define VAL_MAX 48
#define KEY_MAX 48
#define NAME_MAX_ 64
#define PIN_REOPEN_OPS 300

enum { EXIT_OK = 0, EXIT_ANOMALY = 1, EXIT_USAGE = 2, EXIT_SETUP = 3 };

struct opts {
    const char *uri, *history, *nodes;
    int threads, keys, branches, logs;
    double duration_s;
    long max_ops;
    long rotate;
    unsigned long seed;
    int op_timeout_ms, within_ms;
    bool merges; /* fork-write-merge cycles on "default" (run) */
};

/* How an operation ended (history "type"). */
enum outcome { O_OK, O_FAIL, O_INFO, O_N };

/* Set by SIGINT/SIGTERM: the run stops starting operations. */
extern volatile sig_atomic_t stop_requested;

void sleep_ms(unsigned ms);
uint64_t now_ms(void);

/* msgpack-c writing into a struct buf (buf_w is the packer's write callback). */
int buf_w(void *d, const char *p, size_t n);
void pk_str(msgpack_packer *pk, const char *s);
void pk_kv(msgpack_packer *pk, const char *k, const char *v);

/* A command's result, unpacked (res_free releases it). */
struct res {
    msgpack_unpacked u;
    const msgpack_object *o;
};
int res_parse(struct res *r, const struct buf *b);
void res_free(struct res *r);
const msgpack_object *map_get(const msgpack_object *m, const char *key);
bool map_u64(const msgpack_object *m, const char *key, uint64_t *out);
/* A msgpack value as a new jansson value (NULL on failure); the caller owns it. */
json_t *mp_to_json(const msgpack_object *o);

/* A libstrata handle on uri with op_ms per operation; 0 or EXIT_USAGE (message printed). */
int open_db(const char *uri, int op_ms, struct strata **db);
/* Run cmd until it succeeds or ok_code comes back, within within_ms (res may be NULL). */
int exec_retry(struct strata *db, const struct buf *cmd, int ok_code, unsigned within_ms,
               struct buf *res, struct err *e);

/* One register or log named in the history, with what the history says of its appends. */
struct append_rec {
    char value[VAL_MAX];
    enum outcome oc; /* O_INFO while pending */
    uint64_t seq;
    bool seen; /* found in the final log */
};

struct object {
    char branch[NAME_MAX_];
    char key[KEY_MAX];
    bool log;
    struct append_rec *apps;
    size_t napps, capapps;
};

struct objects {
    struct object *v;
    size_t n, cap;
};

/* The registers and logs of the history at path, with each append's outcome (final
 * lines skipped); 0, EXIT_USAGE (unreadable) or EXIT_SETUP. objects_free releases s. */
int history_load(const char *path, struct objects *s);
void objects_free(struct objects *s);
/* Into cmd: a read of x with op (kv.get, state.get, event.len, event.range from seq_start). */
void pack_read(struct buf *cmd, const struct object *x, const char *op, uint64_t seq_start);

/* The subcommands; each returns the program's exit code. */
int cmd_run(const struct opts *o);
int cmd_probe(const struct opts *o);
int cmd_final(const struct opts *o);
int cmd_compare(const struct opts *o);

#endif
