/* Fault-test workload: concurrent reads, writes, CAS and event appends against a StrataDB
 * cluster, recorded as a JSON Lines history for the linearizability checker, plus the
 * after-the-fault steps (availability probe, final reads, replica comparison).
 *
 *   strata_workload run     --uri URI --history FILE [--threads N] [--keys K]
 *                           [--branches B] [--logs L] [--duration S] [--max-ops N]
 *                           [--rotate OPS] [--seed S] [--op-timeout-ms MS]
 *                           [--nodes HOST:PORT,...]   (odd threads pinned to one node)
 *                           [--merges on|off]         (fork/merge cycles, default on)
 *   strata_workload probe   --uri URI [--within-ms MS]
 *   strata_workload final   --uri URI --history FILE [--within-ms MS]
 *   strata_workload compare --nodes HOST:PORT,... --history FILE [--within-ms MS]
 *   strata_workload now     (the history's clock, CLOCK_MONOTONIC ns, for fault logs)
 *
 * History lines (one JSON object per line, in file order = time order):
 *   {"t": ns, "proc": P, "type": "invoke"|"ok"|"fail"|"info", "f": "read"|"write"|"cas"|
 *    "append", "branch": B, "key": K, "value": V, "expect": E (cas), "version": N,
 *    "seq": N (append ok), "error": "CODE"}
 *   {"type": "final", "branch": B, "key": K, "value": V}             (registers)
 *   {"type": "final", "f": "len", "branch": B, "key": K, "value": N}  (event logs)
 * Registers are KV keys ("k<epoch>-<i>", kv.get/kv.put) and state cells ("c<epoch>-<i>",
 * state.get/state.set/state.cas/state.init); a log is the event log of one space
 * ("e<epoch>-<i>"). Every written value is unique ("p<proc>-<n>"), so a cell's value names
 * its counter and a CAS on the counter is a CAS on the value.
 *
 * Forks and merges (run_merge): now and then a thread forks "default", writes 1-3 of the
 * current KV registers in the fork, merges the fork back (strict or source_wins) and
 * deletes it. The merge is recorded as one write per merged register on "default", each
 * by a process of its own with the merge's invoke and completion (a strict merge refused
 * with CONFLICT is a fail: it wrote nothing), the merge's version on the first only (one
 * merge is one version). The fork's own writes are not in the history: nobody else reads
 * the fork, and its values reach "default" only through the merge.
 *
 * Exit codes: 0 done (and every check passed), 1 a check failed (anomaly, or no service
 * within the bound), 2 bad usage or unreadable history, 3 could not set up. */
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

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t now_ms(void)
{
    return clock_mono_ns() / 1000000u;
}

/* ---- Commands (msgpack-c into a struct buf) ---------------------------------------- */

static int buf_w(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pk_kv(msgpack_packer *pk, const char *k, const char *v)
{
    pk_str(pk, k);
    pk_str(pk, v);
}

/* ---- Results (msgpack-c) ------------------------------------------------------------- */

struct res {
    msgpack_unpacked u;
    const msgpack_object *o;
};

static int res_parse(struct res *r, const struct buf *b)
{
    msgpack_unpacked_init(&r->u);
    size_t off = 0;
    if (b->len == 0 ||
        msgpack_unpack_next(&r->u, (const char *)b->data, b->len, &off) != MSGPACK_UNPACK_SUCCESS) {
        msgpack_unpacked_destroy(&r->u);
        r->o = NULL;
        return STRATA_PROTOCOL_ERROR;
    }
    r->o = &r->u.data;
    return 0;
}

static void res_free(struct res *r)
{
    if (r->o)
        msgpack_unpacked_destroy(&r->u);
    r->o = NULL;
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    size_t n = strlen(key);
    if (m == NULL || m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static bool map_u64(const msgpack_object *m, const char *key, uint64_t *out)
{
    const msgpack_object *v = map_get(m, key);
    if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = v->via.u64;
    return true;
}

/* A msgpack value as a jansson value, through the engine's own renderer (bin becomes
 * {"$bytes": base64}, as everywhere else in the project). NULL on failure. */
static json_t *mp_to_json(const msgpack_object *o)
{
    struct buf mp, txt;
    buf_init(&mp);
    buf_init(&txt);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &mp, buf_w);
    json_t *j = NULL;
    if (msgpack_pack_object(&pk, *o) == 0 &&
        storage_value_to_json(mp.data, mp.len, &txt, false) == 0)
        j = json_loadb((const char *)txt.data, txt.len, JSON_DECODE_ANY, NULL);
    buf_close(&mp);
    buf_close(&txt);
    return j;
}

/* ---- The history file ---------------------------------------------------------------
 * One mutex serializes lines; the timestamp is taken under it, so the file is in time
 * order. An invoke is stamped before its command is sent and a completion after its
 * reply arrived: each operation's interval only ever grows, which keeps a check sound. */

struct hist {
    pthread_mutex_t mu;
    FILE *f;
    bool failed;
};

static void hist_emit(struct hist *h, json_t *line, bool stamp)
{
    pthread_mutex_lock(&h->mu);
    if (stamp)
        json_object_set_new(line, "t", json_integer((json_int_t)clock_mono_ns()));
    if (json_dumpf(line, h->f, JSON_COMPACT | JSON_ENCODE_ANY) != 0 || fputc('\n', h->f) == EOF ||
        fflush(h->f) != 0)
        h->failed = true;
    pthread_mutex_unlock(&h->mu);
    json_decref(line);
}

/* ---- Run: the concurrent workload ------------------------------------------------------ */

enum op_f { F_READ, F_WRITE, F_CAS, F_APPEND };
static const char *const f_names[] = {"read", "write", "cas", "append"};
enum prim { P_KV, P_CELL, P_LOG };
enum outcome { O_OK, O_FAIL, O_INFO, O_N };
static const char *const outcome_names[] = {"ok", "fail", "info"};

struct op {
    enum op_f f;
    enum prim prim;
    int branch;
    int slot; /* key or log index within the epoch */
    uint64_t epoch;
    char key[KEY_MAX];
    char value[VAL_MAX];
    bool init;             /* cas through state.init */
    bool expect_null;      /* cas: expects an absent cell */
    char expect[VAL_MAX];  /* cas: the value that had expected_counter */
    uint64_t expected_counter;
};

/* What a thread last saw of a cell: its value and the counter that value has. */
struct cell_mem {
    uint64_t epoch;
    bool known;
    bool null;
    char value[VAL_MAX];
    uint64_t counter;
};

struct shared {
    const struct opts *o;
    struct hist hist;
    char branch_names[MAX_BRANCHES][NAME_MAX_];
    atomic_long started;
    uint64_t deadline_ms;
    pthread_mutex_t stats_mu;
    long counts[4][O_N];
    long errors[32];
    long unexpected; /* errors that a correct run never produces (workload bugs) */
    long merges[O_N];
    atomic_long merge_proc; /* process ids of merged writes, one each */
};

struct worker {
    struct shared *sh;
    int index;
    int proc;
    uint64_t rng;
    long seq; /* per-thread value counter */
    struct strata *db;
    char pin_uri[160]; /* "" or strata://ONE-NODE: reopened now and then, see worker_main */
    struct cell_mem cells[MAX_BRANCHES][MAX_KEYS];
    long counts[4][O_N];
    long errors[32];
    long unexpected;
    long merges[O_N], nmerge;
    int noted; /* error messages printed (bounded) */
};

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: enough to spread choices; reproducibility is not a goal under faults. */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ull;
}

static unsigned rng_below(uint64_t *s, unsigned n)
{
    return (unsigned)(rng_next(s) % n);
}

static void key_name(char *out, size_t cap, enum prim p, uint64_t epoch, int slot)
{
    static const char pre[] = {'k', 'c', 'e'};
    snprintf(out, cap, "%c%" PRIu64 "-%d", pre[p], epoch, slot);
}

/* Choose the next operation. Weights: kv read 25, kv write 20, cell read 15, cell write
 * 5, cas 20, append 15. */
static void op_choose(struct worker *w, struct op *op)
{
    const struct opts *o = w->sh->o;
    memset(op, 0, sizeof *op);
    long n = atomic_fetch_add(&w->sh->started, 1);
    op->epoch = (uint64_t)(n / o->rotate);
    op->branch = (int)rng_below(&w->rng, (unsigned)o->branches);
    unsigned r = rng_below(&w->rng, 100);
    if (r < 25) {
        op->prim = P_KV, op->f = F_READ;
    } else if (r < 45) {
        op->prim = P_KV, op->f = F_WRITE;
    } else if (r < 60) {
        op->prim = P_CELL, op->f = F_READ;
    } else if (r < 65) {
        op->prim = P_CELL, op->f = F_WRITE;
    } else if (r < 85) {
        op->prim = P_CELL, op->f = F_CAS;
    } else {
        op->prim = P_LOG, op->f = F_APPEND;
    }
    op->slot = (int)rng_below(&w->rng, (unsigned)(op->prim == P_LOG ? o->logs : o->keys));
    key_name(op->key, sizeof op->key, op->prim, op->epoch, op->slot);
    if (op->f != F_READ)
        snprintf(op->value, sizeof op->value, "p%d-%ld", w->proc, ++w->seq);
    if (op->f == F_CAS) {
        struct cell_mem *m = &w->cells[op->branch][op->slot];
        if (m->known && m->epoch == op->epoch && !m->null) {
            op->expected_counter = m->counter;
            snprintf(op->expect, sizeof op->expect, "%s", m->value);
        } else if (rng_below(&w->rng, 4) == 0) {
            /* Nothing (current) known: try to create the cell, either way. */
            op->expect_null = true;
            op->init = rng_below(&w->rng, 2) == 0;
        } else {
            /* Or learn its value and counter first, so later CASes can succeed. */
            op->f = F_READ;
            op->value[0] = '\0';
        }
    }
}

static void op_encode(const struct shared *sh, const struct op *op, struct buf *cmd)
{
    buf_reset(cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, buf_w);
    const char *branch = sh->branch_names[op->branch];
    switch (op->prim) {
    case P_KV:
        msgpack_pack_map(&pk, op->f == F_READ ? 3 : 4);
        pk_kv(&pk, "op", op->f == F_READ ? "kv.get" : "kv.put");
        pk_kv(&pk, "branch", branch);
        pk_kv(&pk, "key", op->key);
        if (op->f != F_READ)
            pk_kv(&pk, "value", op->value);
        break;
    case P_CELL: {
        bool cas = op->f == F_CAS && !op->init;
        msgpack_pack_map(&pk, op->f == F_READ ? 3 : cas ? 5 : 4);
        pk_kv(&pk, "op", op->f == F_READ    ? "state.get"
                         : op->f == F_WRITE ? "state.set"
                         : op->init         ? "state.init"
                                            : "state.cas");
        pk_kv(&pk, "branch", branch);
        pk_kv(&pk, "cell", op->key);
        if (cas) {
            pk_str(&pk, "expected_counter");
            msgpack_pack_uint64(&pk, op->expect_null ? 0 : op->expected_counter);
        }
        if (op->f != F_READ)
            pk_kv(&pk, "value", op->value);
        break;
    }
    case P_LOG:
        msgpack_pack_map(&pk, 5);
        pk_kv(&pk, "op", "event.append");
        pk_kv(&pk, "branch", branch);
        pk_kv(&pk, "space", op->key);
        pk_kv(&pk, "type", "w");
        pk_str(&pk, "payload");
        msgpack_pack_map(&pk, 1);
        pk_kv(&pk, "v", op->value);
        break;
    }
}

static json_t *op_line(const struct shared *sh, const struct op *op, int proc, const char *type)
{
    json_t *l = json_object();
    json_object_set_new(l, "t", json_integer(0)); /* stamped under the history lock */
    json_object_set_new(l, "proc", json_integer(proc));
    json_object_set_new(l, "type", json_string(type));
    json_object_set_new(l, "f", json_string(f_names[op->f]));
    json_object_set_new(l, "branch", json_string(sh->branch_names[op->branch]));
    json_object_set_new(l, "key", json_string(op->key));
    json_object_set_new(l, "value", op->f == F_READ ? json_null() : json_string(op->value));
    if (op->f == F_CAS)
        json_object_set_new(l, "expect", op->expect_null ? json_null() : json_string(op->expect));
    return l;
}

/* How an error code settles an operation: fail only when it proves the operation did
 * not take effect. */
static enum outcome classify(const struct op *op, int code, bool *unexpected)
{
    *unexpected = false;
    switch (code) {
    case STRATA_CONFLICT:
        *unexpected = op->f != F_CAS;
        return O_FAIL;
    case STRATA_ALREADY_EXISTS:
        *unexpected = !(op->f == F_CAS && op->init);
        return O_FAIL;
    case STRATA_NOT_LEADER:
    case STRATA_UNAVAILABLE:
        /* libstrata returns these only for a command no server executed. */
        return O_FAIL;
    case STRATA_INVALID_ARGUMENT:
    case STRATA_WRONG_TYPE:
    case STRATA_BRANCH_NOT_FOUND:
    case STRATA_NOT_FOUND:
        /* The engine validates before it applies: nothing happened, but a correct
         * workload never sees these. */
        *unexpected = true;
        return O_FAIL;
    default: /* UNKNOWN_OUTCOME, TIMEOUT, and anything else: the fate is uncertain */
        return O_INFO;
    }
}

static void run_one(struct worker *w, struct buf *cmd, struct buf *res)
{
    struct shared *sh = w->sh;
    struct op op;
    op_choose(w, &op);
    op_encode(sh, &op, cmd);
    hist_emit(&sh->hist, op_line(sh, &op, w->proc, "invoke"), true);
    buf_reset(res);
    struct err e;
    err_clear(&e);
    int code = strata_exec(w->db, cmd->data, cmd->len, res, &e);
    struct res r = {0};
    if (code == 0 && res_parse(&r, res) != 0)
        code = STRATA_PROTOCOL_ERROR; /* an answer we cannot read: fate unknown */
    else if (code == 0 && r.o->type != MSGPACK_OBJECT_MAP &&
             !(op.f == F_READ && r.o->type == MSGPACK_OBJECT_NIL)) {
        res_free(&r);
        code = STRATA_PROTOCOL_ERROR; /* not the documented shape: fate unknown */
    }
    enum outcome oc = O_OK;
    bool unexpected = false;
    if (code != 0)
        oc = classify(&op, code, &unexpected);
    json_t *l = op_line(sh, &op, w->proc, outcome_names[oc]);
    struct cell_mem *m = op.prim == P_CELL ? &w->cells[op.branch][op.slot] : NULL;
    if (oc == O_OK) {
        uint64_t v = 0;
        const msgpack_object *val = NULL;
        if (op.f == F_READ && r.o->type == MSGPACK_OBJECT_MAP) {
            val = map_get(r.o, "value");
            json_t *jv = val ? mp_to_json(val) : NULL;
            if (jv == NULL) {
                unexpected = true;
                jv = json_null();
            }
            json_object_set_new(l, "value", jv);
        }
        if (map_u64(r.o, "version", &v))
            json_object_set_new(l, "version", json_integer((json_int_t)v));
        if (op.f == F_APPEND && map_u64(r.o, "seq", &v))
            json_object_set_new(l, "seq", json_integer((json_int_t)v));
        if (m) {
            uint64_t counter = 0;
            if (op.f == F_READ && r.o->type == MSGPACK_OBJECT_NIL) {
                *m = (struct cell_mem){op.epoch, true, true, "", 0};
            } else if (map_u64(r.o, "counter", &counter)) {
                const char *s = op.value;
                size_t sl = strlen(s);
                if (op.f == F_READ) {
                    s = val && val->type == MSGPACK_OBJECT_STR ? val->via.str.ptr : "";
                    sl = val && val->type == MSGPACK_OBJECT_STR ? val->via.str.size : 0;
                }
                *m = (struct cell_mem){op.epoch, true, false, "", counter};
                snprintf(m->value, sizeof m->value, "%.*s", (int)sl, s);
            }
        }
    } else {
        json_object_set_new(l, "error", json_string(err_name(code)));
        if (m)
            m->known = false; /* a failed CAS means our view was stale; info: unknown */
        bool routine = code == STRATA_CONFLICT || code == STRATA_ALREADY_EXISTS;
        if ((!routine && w->noted < 20) || unexpected) {
            w->noted++;
            fprintf(stderr, "workload: proc %d %s %s/%s: %s: %s\n", w->proc, f_names[op.f],
                    sh->branch_names[op.branch], op.key, err_name(code), e.msg);
        }
    }
    hist_emit(&sh->hist, l, true);
    res_free(&r);
    w->counts[op.f][oc]++;
    w->errors[code >= 0 && code < 32 ? code : 31]++;
    w->unexpected += unexpected;
    /* An operation of unknown fate stays open forever: its process is done, and the
     * thread goes on as a new process (the checker's convention). */
    if (oc == O_INFO)
        w->proc += sh->o->threads;
}

#define MERGE_PCT 2     /* of a thread's steps */
#define MERGE_KEYS_MAX 3

static int exec_retry(struct strata *db, const struct buf *cmd, int ok_code, unsigned within_ms,
                      struct buf *res, struct err *e);

static void pack_branch_op(struct buf *cmd, const char *op, const char *k1, const char *v1,
                           const char *k2, const char *v2)
{
    buf_reset(cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, buf_w);
    msgpack_pack_map(&pk, k2 ? 3 : 2);
    pk_kv(&pk, "op", op);
    pk_kv(&pk, k1, v1);
    if (k2)
        pk_kv(&pk, k2, v2);
}

/* One fork-write-merge-delete cycle on "default" (see the header). */
static void run_merge(struct worker *w, struct buf *cmd, struct buf *res)
{
    struct shared *sh = w->sh;
    const struct opts *o = sh->o;
    char fork[NAME_MAX_];
    snprintf(fork, sizeof fork, "mg%d-%ld", w->index, ++w->nmerge);
    struct err e;
    err_clear(&e);
    pack_branch_op(cmd, "branch.fork", "name", fork, "source", "default");
    int code = exec_retry(w->db, cmd, STRATA_BRANCH_EXISTS, 5000, NULL, &e);
    if (code) {
        if (w->noted++ < 20)
            fprintf(stderr, "workload: fork %s: %s: %s\n", fork, err_name(code), e.msg);
        return;
    }
    /* Distinct registers of the current epoch, written in the fork. */
    struct op ops[MERGE_KEYS_MAX];
    int nk = 1 + (int)rng_below(&w->rng, MERGE_KEYS_MAX);
    if (nk > o->keys)
        nk = o->keys;
    uint64_t epoch = (uint64_t)(atomic_load(&sh->started) / o->rotate);
    int first = (int)rng_below(&w->rng, (unsigned)o->keys);
    for (int i = 0; i < nk && code == 0; i++) {
        ops[i] = (struct op){.f = F_WRITE, .prim = P_KV, .branch = 0, .epoch = epoch,
                             .slot = (first + i) % o->keys};
        key_name(ops[i].key, sizeof ops[i].key, P_KV, epoch, ops[i].slot);
        snprintf(ops[i].value, sizeof ops[i].value, "m%d-%ld", w->index, ++w->seq);
        buf_reset(cmd);
        msgpack_packer pk;
        msgpack_packer_init(&pk, cmd, buf_w);
        msgpack_pack_map(&pk, 4);
        pk_kv(&pk, "op", "kv.put");
        pk_kv(&pk, "branch", fork);
        pk_kv(&pk, "key", ops[i].key);
        pk_kv(&pk, "value", ops[i].value);
        /* A retry rewrites the same value in a branch only this thread uses: harmless. */
        code = exec_retry(w->db, cmd, 0, 5000, NULL, &e);
    }
    if (code == 0) {
        bool strict = rng_below(&w->rng, 2) == 0;
        long procs[MERGE_KEYS_MAX];
        for (int i = 0; i < nk; i++) {
            procs[i] = atomic_fetch_add(&sh->merge_proc, 1);
            hist_emit(&sh->hist, op_line(sh, &ops[i], (int)procs[i], "invoke"), true);
        }
        buf_reset(cmd);
        msgpack_packer pk;
        msgpack_packer_init(&pk, cmd, buf_w);
        msgpack_pack_map(&pk, 4);
        pk_kv(&pk, "op", "branch.merge");
        pk_kv(&pk, "source", fork);
        pk_kv(&pk, "target", "default");
        pk_kv(&pk, "strategy", strict ? "strict" : "source_wins");
        buf_reset(res);
        err_clear(&e);
        code = strata_exec(w->db, cmd->data, cmd->len, res, &e);
        struct res r = {0};
        uint64_t version = 0, changes = 0;
        bool unexpected = false;
        if (code == 0 && (res_parse(&r, res) != 0 || r.o->type != MSGPACK_OBJECT_MAP ||
                          !map_u64(r.o, "version", &version)))
            code = STRATA_PROTOCOL_ERROR; /* an answer we cannot read: fate unknown */
        enum outcome oc = O_OK;
        if (code == 0) {
            /* The fork changed exactly these registers since it was made. */
            unexpected = !map_u64(r.o, "changes", &changes) || changes != (uint64_t)nk;
        } else if (code == STRATA_CONFLICT) {
            oc = O_FAIL;
            unexpected = !strict;
        } else {
            oc = classify(&ops[0], code, &unexpected);
        }
        for (int i = 0; i < nk; i++) {
            json_t *l = op_line(sh, &ops[i], (int)procs[i], outcome_names[oc]);
            if (oc == O_OK && i == 0)
                json_object_set_new(l, "version", json_integer((json_int_t)version));
            if (oc != O_OK)
                json_object_set_new(l, "error", json_string(err_name(code)));
            hist_emit(&sh->hist, l, true);
        }
        if ((unexpected || (code && code != STRATA_CONFLICT)) && w->noted++ < 20)
            fprintf(stderr, "workload: merge %s -> default: %s: %s%s\n", fork,
                    code ? err_name(code) : "ok", code ? e.msg : "",
                    unexpected && code == 0 ? " (changes differ from the keys written)" : "");
        res_free(&r);
        w->merges[oc]++;
        w->errors[code >= 0 && code < 32 ? code : 31]++;
        w->unexpected += unexpected;
    }
    pack_branch_op(cmd, "branch.delete", "name", fork, NULL, NULL);
    err_clear(&e);
    (void)exec_retry(w->db, cmd, STRATA_BRANCH_NOT_FOUND, 5000, NULL, &e);
}

static int open_db(const char *uri, int op_ms, struct strata **db)
{
    struct err e;
    err_clear(&e);
    if (strata_open(uri, db, &e)) {
        fprintf(stderr, "workload: cannot open %s: %s\n", uri, e.msg);
        return EXIT_USAGE;
    }
    strata_set_timeouts(*db, op_ms, op_ms < 1000 ? op_ms : 1000);
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    long limit = w->sh->o->max_ops, n = 0;
    while (!stop_requested && now_ms() < w->sh->deadline_ms &&
           (limit <= 0 || atomic_load(&w->sh->started) < limit)) {
        /* A pinned handle knows one node only; libstrata moves to the leader after a
         * redirect or a lost connection and stays there, so a fresh handle every few
         * hundred operations keeps requests coming through the follower (forwarded). */
        if (w->pin_uri[0] && ++n % PIN_REOPEN_OPS == 0) {
            struct strata *fresh = NULL;
            if (open_db(w->pin_uri, w->sh->o->op_timeout_ms, &fresh) == 0) {
                strata_close(w->db);
                w->db = fresh;
            }
        }
        if (w->sh->o->merges && rng_below(&w->rng, 100) < MERGE_PCT)
            run_merge(w, &cmd, &res);
        else
            run_one(w, &cmd, &res);
    }
    buf_close(&cmd);
    buf_close(&res);
    pthread_mutex_lock(&w->sh->stats_mu);
    for (int f = 0; f < 4; f++)
        for (int oc = 0; oc < O_N; oc++)
            w->sh->counts[f][oc] += w->counts[f][oc];
    for (int c = 0; c < 32; c++)
        w->sh->errors[c] += w->errors[c];
    for (int oc = 0; oc < O_N; oc++)
        w->sh->merges[oc] += w->merges[oc];
    w->sh->unexpected += w->unexpected;
    pthread_mutex_unlock(&w->sh->stats_mu);
    return NULL;
}

/* Run a command until it succeeds or `ok_code` comes back, within `within_ms`. */
static int exec_retry(struct strata *db, const struct buf *cmd, int ok_code, unsigned within_ms,
                      struct buf *res, struct err *e)
{
    uint64_t deadline = now_ms() + within_ms;
    int code;
    do {
        if (res)
            buf_reset(res);
        struct buf scratch;
        buf_init(&scratch);
        code = strata_exec(db, cmd->data, cmd->len, res ? res : &scratch, e);
        buf_close(&scratch);
        if (code == 0 || code == ok_code)
            return 0;
        if (code == STRATA_INVALID_ARGUMENT || code == STRATA_WRONG_TYPE)
            return code;
        sleep_ms(100);
    } while (now_ms() < deadline && !stop_requested);
    return code;
}

/* Branch 0 is "default"; the others alternate between a new empty branch and a fork of
 * default made before any data is written (so every register starts absent either way,
 * and the fork's reads fall through to its parent). */
static int setup_branches(struct shared *sh, struct strata *db)
{
    snprintf(sh->branch_names[0], NAME_MAX_, "default");
    struct buf cmd;
    buf_init(&cmd);
    int rc = 0;
    for (int b = 1; b < sh->o->branches && rc == 0; b++) {
        bool fork = b % 2 == 0;
        snprintf(sh->branch_names[b], NAME_MAX_, "%s%d", fork ? "f" : "b", b);
        buf_reset(&cmd);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &cmd, buf_w);
        msgpack_pack_map(&pk, fork ? 3 : 2);
        pk_kv(&pk, "op", fork ? "branch.fork" : "branch.create");
        pk_kv(&pk, "name", sh->branch_names[b]);
        if (fork)
            pk_kv(&pk, "source", "default");
        struct err e;
        err_clear(&e);
        /* A lost reply may hide a success: BRANCH_EXISTS on a retry is success. */
        if ((rc = exec_retry(db, &cmd, STRATA_BRANCH_EXISTS, 20000, NULL, &e)))
            fprintf(stderr, "workload: cannot create branch %s: %s: %s\n", sh->branch_names[b],
                    err_name(rc), e.msg);
    }
    buf_close(&cmd);
    return rc ? EXIT_SETUP : 0;
}

/* strata://NODE?routing=server for the k-th (mod n) address of the comma-separated list:
 * the node gets every command and routes it itself (forwarding to the leaders). */
static int pin_uri(const char *nodes, int k, char *out, size_t cap)
{
    int n = 1;
    for (const char *p = nodes; *p; p++)
        n += *p == ',';
    const char *p = nodes;
    for (int i = 0; i < k % n; i++)
        p = strchr(p, ',') + 1;
    size_t l = strcspn(p, ",");
    if (l == 0 || (size_t)snprintf(out, cap, "strata://%.*s?routing=server", (int)l, p) >= cap) {
        fprintf(stderr, "workload: bad --nodes list '%s'\n", nodes);
        return EXIT_USAGE;
    }
    return 0;
}

static int cmd_run(const struct opts *o)
{
    static struct shared sh; /* large; lives for the whole run */
    memset(&sh, 0, sizeof sh);
    sh.o = o;
    atomic_store(&sh.merge_proc, 1L << 24); /* above any worker's process numbers */
    pthread_mutex_init(&sh.hist.mu, NULL);
    pthread_mutex_init(&sh.stats_mu, NULL);
    sh.hist.f = fopen(o->history, "w");
    if (sh.hist.f == NULL) {
        fprintf(stderr, "workload: cannot write %s: %s\n", o->history, strerror(errno));
        return EXIT_USAGE;
    }
    struct worker *ws = calloc((size_t)o->threads, sizeof *ws);
    pthread_t *tids = calloc((size_t)o->threads, sizeof *tids);
    int rc = ws && tids ? 0 : EXIT_SETUP;
    struct strata *admin = NULL;
    if (rc == 0)
        rc = open_db(o->uri, o->op_timeout_ms, &admin);
    if (rc == 0)
        rc = setup_branches(&sh, admin);
    strata_close(admin);
    int started = 0;
    uint64_t t0 = now_ms();
    sh.deadline_ms = t0 + (uint64_t)(o->duration_s * 1000.0);
    for (int i = 0; rc == 0 && i < o->threads; i++) {
        ws[i].sh = &sh;
        ws[i].index = i;
        ws[i].proc = i;
        ws[i].rng = (o->seed + 1) * 0x9E3779B97F4A7C15ull + (uint64_t)i * 0xBF58476D1CE4E5B9ull;
        if (ws[i].rng == 0)
            ws[i].rng = 1;
        /* With --nodes, every odd thread talks to one node only (its requests are
         * forwarded when that node follows); the others know every node. */
        if (o->nodes && i % 2 == 1 && pin_uri(o->nodes, i / 2, ws[i].pin_uri, sizeof ws[i].pin_uri))
            rc = EXIT_USAGE;
        else if ((rc = open_db(ws[i].pin_uri[0] ? ws[i].pin_uri : o->uri, o->op_timeout_ms,
                               &ws[i].db)))
            break;
        if (pthread_create(&tids[i], NULL, worker_main, &ws[i])) {
            strata_close(ws[i].db);
            rc = EXIT_SETUP;
            break;
        }
        started++;
    }
    if (rc)
        stop_requested = 1;
    for (int i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
        strata_close(ws[i].db);
    }
    double secs = (double)(now_ms() - t0) / 1000.0;
    if (fclose(sh.hist.f) != 0)
        sh.hist.failed = true;
    if (sh.hist.failed) {
        fprintf(stderr, "workload: writing %s failed\n", o->history);
        rc = rc ? rc : EXIT_SETUP;
    }
    /* Summary, one JSON line on stdout, for the harness and the soak. */
    json_t *sum = json_object();
    long total = 0;
    json_t *byf = json_object();
    long tot_oc[O_N] = {0};
    for (int f = 0; f < 4; f++) {
        json_t *x = json_object();
        for (int oc = 0; oc < O_N; oc++) {
            json_object_set_new(x, outcome_names[oc], json_integer(sh.counts[f][oc]));
            total += sh.counts[f][oc];
            tot_oc[oc] += sh.counts[f][oc];
        }
        json_object_set_new(byf, f_names[f], x);
    }
    json_t *errs = json_object();
    for (int c = 1; c < 32; c++)
        if (sh.errors[c])
            json_object_set_new(errs, c < 31 ? err_name(c) : "OTHER", json_integer(sh.errors[c]));
    json_object_set_new(sum, "ops", json_integer(total));
    for (int oc = 0; oc < O_N; oc++)
        json_object_set_new(sum, outcome_names[oc], json_integer(tot_oc[oc]));
    json_object_set_new(sum, "seconds", json_real(secs));
    json_object_set_new(sum, "by_f", byf);
    json_t *mg = json_object();
    for (int oc = 0; oc < O_N; oc++)
        json_object_set_new(mg, outcome_names[oc], json_integer(sh.merges[oc]));
    json_object_set_new(sum, "merges", mg);
    json_object_set_new(sum, "errors", errs);
    json_object_set_new(sum, "unexpected", json_integer(sh.unexpected));
    char *txt = json_dumps(sum, JSON_COMPACT);
    if (txt)
        printf("%s\n", txt);
    free(txt);
    json_decref(sum);
    free(ws);
    free(tids);
    if (rc == 0 && sh.unexpected) {
        fprintf(stderr, "workload: %ld operations got an error a correct run never returns\n",
                sh.unexpected);
        rc = EXIT_ANOMALY;
    }
    if (rc == 0 && total == 0) {
        fprintf(stderr, "workload: no operation ran\n");
        rc = EXIT_SETUP;
    }
    return rc;
}

/* ---- Reading a history back ------------------------------------------------------------ */

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

static struct object *objects_get(struct objects *s, const char *branch, const char *key,
                                  bool log)
{
    for (size_t i = s->n; i-- > 0;)
        if (s->v[i].log == log && strcmp(s->v[i].branch, branch) == 0 &&
            strcmp(s->v[i].key, key) == 0)
            return &s->v[i];
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct object *v = realloc(s->v, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        s->v = v, s->cap = cap;
    }
    struct object *x = &s->v[s->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->branch, sizeof x->branch, "%s", branch);
    snprintf(x->key, sizeof x->key, "%s", key);
    x->log = log;
    return x;
}

static void objects_free(struct objects *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].apps);
    free(s->v);
}

/* Add an append of `value` to x; returns its index or -1 (out of memory). */
static long object_add_append(struct object *x, const char *value)
{
    if (x->napps == x->capapps) {
        size_t cap = x->capapps ? x->capapps * 2 : 16;
        struct append_rec *a = realloc(x->apps, cap * sizeof *a);
        if (a == NULL)
            return -1;
        x->apps = a, x->capapps = cap;
    }
    struct append_rec *a = &x->apps[x->napps];
    memset(a, 0, sizeof *a);
    snprintf(a->value, sizeof a->value, "%s", value);
    a->oc = O_INFO; /* until its completion says otherwise */
    return (long)x->napps++;
}

/* An append invoked and not yet completed, by process. */
struct pending_append {
    long proc;
    size_t obj; /* index into objects (their array may move) */
    size_t app;
};

/* Read the operation lines of a history: every register and log, and each append's
 * outcome. Final lines already there are skipped (a second `final` adds its own). */
static int history_load(const char *path, struct objects *s)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "workload: cannot read %s: %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    char *line = NULL;
    size_t cap = 0, npend = 0, cappend = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    struct pending_append *pend = NULL;
    while (rc == 0 && (len = getline(&line, &cap, f)) > 0) {
        lineno++;
        json_error_t je;
        json_t *l = json_loadb(line, (size_t)len, 0, &je);
        const char *type = json_string_value(json_object_get(l, "type"));
        const char *fn = json_string_value(json_object_get(l, "f"));
        const char *br = json_string_value(json_object_get(l, "branch"));
        const char *key = json_string_value(json_object_get(l, "key"));
        json_t *jproc = json_object_get(l, "proc");
        if (l == NULL || type == NULL) {
            fprintf(stderr, "workload: %s:%ld: not a history line\n", path, lineno);
            rc = EXIT_USAGE;
        } else if (strcmp(type, "final") == 0) {
            /* skipped */
        } else if (fn == NULL || br == NULL || key == NULL || !json_is_integer(jproc)) {
            fprintf(stderr, "workload: %s:%ld: operation line without f/branch/key/proc\n",
                    path, lineno);
            rc = EXIT_USAGE;
        } else {
            bool log = strcmp(fn, "append") == 0;
            long proc = (long)json_integer_value(jproc);
            struct object *obj = objects_get(s, br, key, log);
            if (obj == NULL) {
                rc = EXIT_SETUP;
            } else if (log && strcmp(type, "invoke") == 0) {
                const char *v = json_string_value(json_object_get(l, "value"));
                long app = object_add_append(obj, v ? v : "");
                if (app >= 0 && npend == cappend) {
                    size_t c2 = cappend ? cappend * 2 : 64;
                    struct pending_append *p2 = realloc(pend, c2 * sizeof *p2);
                    if (p2)
                        pend = p2, cappend = c2;
                }
                if (app < 0 || npend == cappend)
                    rc = EXIT_SETUP;
                else
                    pend[npend++] = (struct pending_append){proc, (size_t)(obj - s->v),
                                                            (size_t)app};
            } else if (log) {
                for (size_t i = npend; i-- > 0;) {
                    if (pend[i].proc != proc)
                        continue;
                    struct append_rec *a = &s->v[pend[i].obj].apps[pend[i].app];
                    a->oc = strcmp(type, "ok") == 0     ? O_OK
                            : strcmp(type, "fail") == 0 ? O_FAIL
                                                        : O_INFO;
                    json_t *sq = json_object_get(l, "seq");
                    if (a->oc == O_OK && json_is_integer(sq))
                        a->seq = (uint64_t)json_integer_value(sq);
                    pend[i] = pend[--npend];
                    break;
                }
            }
        }
        json_decref(l);
    }
    free(pend);
    free(line);
    fclose(f);
    return rc;
}

/* ---- probe: service is back ------------------------------------------------------------- */

static int cmd_probe(const struct opts *o)
{
    struct strata *db = NULL;
    int rc = open_db(o->uri, 1000, &db);
    if (rc)
        return rc;
    uint64_t t0 = now_ms(), deadline = t0 + (uint64_t)o->within_ms;
    char value[64];
    snprintf(value, sizeof value, "probe-%" PRIu64, clock_mono_ns());
    struct buf put, get, res;
    buf_init(&put);
    buf_init(&get);
    buf_init(&res);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &put, buf_w);
    msgpack_pack_map(&pk, 3);
    pk_kv(&pk, "op", "kv.put");
    pk_kv(&pk, "key", "probe");
    pk_kv(&pk, "value", value);
    msgpack_packer_init(&pk, &get, buf_w);
    msgpack_pack_map(&pk, 2);
    pk_kv(&pk, "op", "kv.get");
    pk_kv(&pk, "key", "probe");
    struct err e;
    err_clear(&e);
    bool written = false, done = false;
    int attempts = 0;
    while (!done && now_ms() < deadline && attempts++ < 1000) {
        buf_reset(&res);
        int code = strata_exec(db, written ? get.data : put.data, written ? get.len : put.len,
                               &res, &e);
        if (code == 0 && !written) {
            written = true;
            continue;
        }
        if (code == 0) {
            struct res r;
            if (res_parse(&r, &res) == 0) {
                const msgpack_object *v = map_get(r.o, "value");
                done = v && v->type == MSGPACK_OBJECT_STR && v->via.str.size == strlen(value) &&
                       memcmp(v->via.str.ptr, value, v->via.str.size) == 0;
                if (!done)
                    err_set(&e, STRATA_INTERNAL, "read back another value than written");
                res_free(&r);
            }
            if (!done) /* an acknowledged write not read back: that is an anomaly */
                break;
        }
        sleep_ms(50);
    }
    if (done) {
        printf("{\"probe_ms\":%" PRIu64 "}\n", now_ms() - t0);
    } else {
        fprintf(stderr, "workload: no successful write + read within %d ms: %s: %s\n",
                o->within_ms, err_name(e.code), e.msg);
        rc = EXIT_ANOMALY;
    }
    buf_close(&put);
    buf_close(&get);
    buf_close(&res);
    strata_close(db);
    return rc;
}

/* ---- final: linearizable reads after healing ---------------------------------------------- */

static void pack_read(struct buf *cmd, const struct object *x, const char *op, uint64_t seq_start)
{
    buf_reset(cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, buf_w);
    bool cell = !x->log && x->key[0] == 'c';
    bool range = strcmp(op, "event.range") == 0;
    msgpack_pack_map(&pk, range ? 5 : 3);
    pk_kv(&pk, "op", op);
    pk_kv(&pk, "branch", x->branch);
    pk_kv(&pk, x->log ? "space" : cell ? "cell" : "key", x->key);
    if (range) {
        pk_str(&pk, "start");
        msgpack_pack_uint64(&pk, seq_start);
        pk_str(&pk, "limit");
        msgpack_pack_uint64(&pk, 10000);
    }
}

/* The whole log of x, in order, into apps found/seen; anomalies counted. */
static int check_log(struct strata *db, struct object *x, uint64_t len, unsigned within_ms,
                     long *anomalies)
{
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    uint64_t next = 1;
    int rc = 0;
    /* value -> first seq seen; the logs are small (hundreds), a linear scan will do */
    size_t nseen = 0;
    char(*seen)[VAL_MAX] = calloc(len ? len : 1, VAL_MAX);
    if (seen == NULL)
        rc = EXIT_SETUP;
    for (int pages = 0; rc == 0 && next <= len && pages < 1000; pages++) {
        pack_read(&cmd, x, "event.range", next);
        struct err e;
        err_clear(&e);
        if ((rc = exec_retry(db, &cmd, -1, within_ms, &res, &e))) {
            fprintf(stderr, "workload: final event.range %s/%s: %s: %s\n", x->branch, x->key,
                    err_name(rc), e.msg);
            rc = EXIT_ANOMALY;
            break;
        }
        struct res r = {0};
        const msgpack_object *evs = NULL;
        if (res_parse(&r, &res) == 0)
            evs = map_get(r.o, "events");
        if (evs == NULL || evs->type != MSGPACK_OBJECT_ARRAY || evs->via.array.size == 0) {
            fprintf(stderr, "ANOMALY log %s/%s: event.len says %" PRIu64
                            " but the range from %" PRIu64 " is empty or malformed\n",
                    x->branch, x->key, len, next);
            (*anomalies)++;
            res_free(&r);
            break;
        }
        for (uint32_t i = 0; i < evs->via.array.size; i++) {
            const msgpack_object *ev = &evs->via.array.ptr[i];
            uint64_t seq = 0;
            map_u64(ev, "seq", &seq);
            const msgpack_object *v = map_get(map_get(ev, "payload"), "v");
            char val[VAL_MAX] = "";
            if (v && v->type == MSGPACK_OBJECT_STR)
                snprintf(val, sizeof val, "%.*s", (int)v->via.str.size, v->via.str.ptr);
            if (seq != next) {
                fprintf(stderr, "ANOMALY log %s/%s: expected seq %" PRIu64 ", got %" PRIu64 "\n",
                        x->branch, x->key, next, seq);
                (*anomalies)++;
            }
            next = seq + 1;
            for (size_t k = 0; k < nseen; k++)
                if (strcmp(seen[k], val) == 0) {
                    fprintf(stderr, "ANOMALY log %s/%s: value %s appended twice (again at seq %" PRIu64 ")\n",
                            x->branch, x->key, val, seq);
                    (*anomalies)++;
                }
            if (nseen < len)
                snprintf(seen[nseen++], VAL_MAX, "%s", val);
            struct append_rec *a = NULL;
            for (size_t k = 0; k < x->napps && a == NULL; k++)
                if (strcmp(x->apps[k].value, val) == 0)
                    a = &x->apps[k];
            if (a == NULL) {
                fprintf(stderr, "ANOMALY log %s/%s: seq %" PRIu64 " holds %s, never appended\n",
                        x->branch, x->key, seq, val);
                (*anomalies)++;
            } else {
                a->seen = true;
                if (a->oc == O_FAIL) {
                    fprintf(stderr, "ANOMALY log %s/%s: append %s failed definitely but is at seq %" PRIu64 "\n",
                            x->branch, x->key, val, seq);
                    (*anomalies)++;
                } else if (a->oc == O_OK && a->seq != seq) {
                    fprintf(stderr, "ANOMALY log %s/%s: append %s was acknowledged at seq %" PRIu64
                                    " but is at seq %" PRIu64 "\n",
                            x->branch, x->key, val, a->seq, seq);
                    (*anomalies)++;
                }
            }
        }
        res_free(&r);
    }
    for (size_t k = 0; rc == 0 && k < x->napps; k++)
        if (x->apps[k].oc == O_OK && !x->apps[k].seen) {
            fprintf(stderr, "ANOMALY log %s/%s: acknowledged append %s (seq %" PRIu64 ") is lost\n",
                    x->branch, x->key, x->apps[k].value, x->apps[k].seq);
            (*anomalies)++;
        }
    /* The hash chain itself. */
    if (rc == 0) {
        pack_read(&cmd, x, "event.verify_chain", 0);
        struct err e;
        err_clear(&e);
        struct res r;
        if (exec_retry(db, &cmd, -1, within_ms, &res, &e) == 0 && res_parse(&r, &res) == 0) {
            const msgpack_object *ok = map_get(r.o, "ok");
            if (ok == NULL || ok->type != MSGPACK_OBJECT_BOOLEAN || !ok->via.boolean) {
                fprintf(stderr, "ANOMALY log %s/%s: event.verify_chain is not ok\n", x->branch,
                        x->key);
                (*anomalies)++;
            }
            res_free(&r);
        } else {
            fprintf(stderr, "workload: verify_chain %s/%s: %s\n", x->branch, x->key, e.msg);
            rc = EXIT_ANOMALY;
        }
    }
    free(seen);
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

/* Final reads of every object of the history, appended to it; each log is checked
 * whole against the history's appends. */
static int final_reads(const struct opts *o, struct objects *s, FILE *f, long *anomalies)
{
    struct strata *db = NULL;
    int rc = open_db(o->uri, 2000, &db);
    if (rc)
        return rc;
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        struct object *x = &s->v[i];
        bool cell = !x->log && x->key[0] == 'c';
        pack_read(&cmd, x, x->log ? "event.len" : cell ? "state.get" : "kv.get", 0);
        struct err e;
        err_clear(&e);
        struct res r;
        if ((rc = exec_retry(db, &cmd, -1, (unsigned)o->within_ms, &res, &e))) {
            fprintf(stderr, "workload: final read of %s/%s failed: %s: %s\n", x->branch, x->key,
                    err_name(rc), e.msg);
            rc = EXIT_ANOMALY;
            break;
        }
        if (res_parse(&r, &res)) {
            fprintf(stderr, "workload: final read of %s/%s: unreadable result\n", x->branch,
                    x->key);
            rc = EXIT_ANOMALY;
            break;
        }
        json_t *l = json_object();
        json_object_set_new(l, "type", json_string("final"));
        if (x->log)
            json_object_set_new(l, "f", json_string("len"));
        json_object_set_new(l, "branch", json_string(x->branch));
        json_object_set_new(l, "key", json_string(x->key));
        uint64_t len = 0;
        if (x->log) {
            if (r.o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                fprintf(stderr, "ANOMALY log %s/%s: event.len is not a count\n", x->branch,
                        x->key);
                (*anomalies)++;
            } else {
                len = r.o->via.u64;
            }
            json_object_set_new(l, "value", json_integer((json_int_t)len));
        } else {
            const msgpack_object *v = map_get(r.o, "value");
            json_t *jv = r.o->type == MSGPACK_OBJECT_NIL ? json_null() : v ? mp_to_json(v) : NULL;
            if (jv == NULL) {
                fprintf(stderr, "ANOMALY %s/%s: malformed read result\n", x->branch, x->key);
                (*anomalies)++;
                jv = json_null();
            }
            json_object_set_new(l, "value", jv);
        }
        res_free(&r);
        if (json_dumpf(l, f, JSON_COMPACT) != 0 || fputc('\n', f) == EOF)
            rc = EXIT_SETUP;
        json_decref(l);
        if (rc == 0 && x->log)
            rc = check_log(db, x, len, (unsigned)o->within_ms, anomalies);
    }
    buf_close(&cmd);
    buf_close(&res);
    strata_close(db);
    return rc;
}

static int cmd_final(const struct opts *o)
{
    struct objects s = {0};
    long anomalies = 0;
    int rc = history_load(o->history, &s);
    if (rc == 0) {
        FILE *f = fopen(o->history, "a");
        if (f == NULL) {
            fprintf(stderr, "workload: cannot append to %s: %s\n", o->history, strerror(errno));
            rc = EXIT_USAGE;
        } else {
            rc = final_reads(o, &s, f, &anomalies);
            if (fclose(f) != 0 && rc == 0)
                rc = EXIT_SETUP;
        }
    }
    size_t nlogs = 0;
    for (size_t i = 0; i < s.n; i++)
        nlogs += s.v[i].log;
    printf("{\"registers\":%zu,\"logs\":%zu,\"log_anomalies\":%ld}\n", s.n - nlogs, nlogs,
           anomalies);
    if (rc == 0 && anomalies)
        rc = EXIT_ANOMALY;
    objects_free(&s);
    return rc;
}

/* ---- compare: every replica holds the same state ------------------------------------------ */

#define MAX_NODES 9

#define MAX_GROUPS 64

/* One Raft group as a node reports it (servers that host several groups list them in
 * cluster.status "groups", each with a digest of its engine when asked). */
struct group_status {
    uint64_t id, applied, commit;
    char digest[80]; /* "" when the server gives none */
};

struct status {
    uint64_t node_id, applied, commit, term;
    char role[16];
    size_t ngroups;
    struct group_status groups[MAX_GROUPS];
};

static int node_status(struct strata *db, bool digest, struct status *st)
{
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, buf_w);
    msgpack_pack_map(&pk, digest ? 2 : 1);
    pk_kv(&pk, "op", "cluster.status");
    if (digest) {
        /* Ignored by servers without digests (unknown arguments are ignored). */
        pk_str(&pk, "digest");
        msgpack_pack_true(&pk);
    }
    struct err e;
    int rc = strata_exec(db, cmd.data, cmd.len, &res, &e);
    struct res r;
    if (rc == 0 && res_parse(&r, &res) == 0) {
        memset(st, 0, sizeof *st);
        map_u64(r.o, "node_id", &st->node_id);
        map_u64(r.o, "applied_index", &st->applied);
        map_u64(r.o, "commit_index", &st->commit);
        map_u64(r.o, "term", &st->term);
        const msgpack_object *role = map_get(r.o, "role");
        if (role && role->type == MSGPACK_OBJECT_STR)
            snprintf(st->role, sizeof st->role, "%.*s", (int)role->via.str.size,
                     role->via.str.ptr);
        const msgpack_object *gs = map_get(r.o, "groups");
        for (uint32_t i = 0; gs && gs->type == MSGPACK_OBJECT_ARRAY && i < gs->via.array.size &&
                             st->ngroups < MAX_GROUPS;
             i++) {
            const msgpack_object *g = &gs->via.array.ptr[i];
            struct group_status *x = &st->groups[st->ngroups++];
            map_u64(g, "id", &x->id);
            map_u64(g, "applied_index", &x->applied);
            map_u64(g, "commit_index", &x->commit);
            const msgpack_object *d = map_get(g, "digest");
            if (d && d->type == MSGPACK_OBJECT_STR)
                snprintf(x->digest, sizeof x->digest, "%.*s", (int)d->via.str.size,
                         d->via.str.ptr);
        }
        res_free(&r);
    } else if (rc == 0) {
        rc = STRATA_PROTOCOL_ERROR;
    }
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

static const struct group_status *status_group(const struct status *st, uint64_t id)
{
    for (size_t i = 0; i < st->ngroups; i++)
        if (st->groups[i].id == id)
            return &st->groups[i];
    return NULL;
}

/* Every node applied everything it committed, at the same index, in every group. */
static bool statuses_converged(const struct status *st, int n)
{
    for (int i = 0; i < n; i++) {
        if (st[i].applied != st[0].applied || st[i].applied != st[i].commit ||
            st[i].ngroups != st[0].ngroups)
            return false;
        for (size_t k = 0; k < st[i].ngroups; k++) {
            const struct group_status *a = &st[i].groups[k], *b = status_group(&st[0], a->id);
            if (b == NULL || a->applied != b->applied || a->applied != a->commit)
                return false;
        }
    }
    return true;
}

/* A stale read on one node, rendered as JSON text (value and version), into out. */
static int stale_fingerprint(struct strata *db, const struct object *x, struct buf *out)
{
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    bool cell = !x->log && x->key[0] == 'c';
    pack_read(&cmd, x, x->log ? "event.len" : cell ? "state.get" : "kv.get", 0);
    struct err e;
    int rc = strata_exec_flags(db, cmd.data, cmd.len, STRATA_EXEC_STALE, &res, &e);
    if (rc == 0)
        rc = storage_value_to_json(res.data, res.len, out, false);
    /* For a log, its length and the hash of its last event (which chains every event). */
    struct res r;
    if (rc == 0 && x->log && res_parse(&r, &res) == 0) {
        uint64_t len = r.o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? r.o->via.u64 : 0;
        res_free(&r);
        if (len > 0) {
            buf_reset(&cmd);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &cmd, buf_w);
            msgpack_pack_map(&pk, 4);
            pk_kv(&pk, "op", "event.get");
            pk_kv(&pk, "branch", x->branch);
            pk_kv(&pk, "space", x->key);
            pk_str(&pk, "seq");
            msgpack_pack_uint64(&pk, len);
            buf_reset(&res);
            rc = strata_exec_flags(db, cmd.data, cmd.len, STRATA_EXEC_STALE, &res, &e);
            if (rc == 0 && res_parse(&r, &res) == 0) {
                const msgpack_object *h = map_get(r.o, "hash");
                struct buf hb;
                buf_init(&hb);
                msgpack_packer_init(&pk, &hb, buf_w);
                if (h)
                    msgpack_pack_object(&pk, *h);
                else
                    msgpack_pack_nil(&pk);
                buf_printf(out, " last_hash=");
                rc = storage_value_to_json(hb.data, hb.len, out, false);
                buf_close(&hb);
                res_free(&r);
            }
        }
    }
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

static int cmd_compare(const struct opts *o)
{
    struct objects s = {0};
    int rc = history_load(o->history, &s);
    char addrs[MAX_NODES][128];
    int n = 0;
    for (const char *p = o->nodes; rc == 0 && *p && n < MAX_NODES;) {
        size_t l = strcspn(p, ",");
        snprintf(addrs[n++], sizeof addrs[0], "%.*s", (int)l, p);
        p += l + (p[l] == ',');
    }
    struct strata *dbs[MAX_NODES] = {0};
    struct status st[MAX_NODES];
    for (int i = 0; rc == 0 && i < n; i++) {
        char uri[160];
        /* Pinned (routing=server): every read, stale ones included, must be answered by
         * this node's own replica, not routed to the shard's leader. */
        snprintf(uri, sizeof uri, "strata://%.127s?routing=server", addrs[i]);
        rc = open_db(uri, 2000, &dbs[i]);
    }
    /* Every replica applies the same index (nothing writes any more), bounded. A server
     * may still write by itself (a leader's first entry, housekeeping): when an index
     * moves during the comparison, it starts again (bounded), and only the last
     * attempt's findings are reported. */
    uint64_t deadline = now_ms() + (uint64_t)o->within_ms;
    int attempt = 0;
    struct buf report;
    buf_init(&report);
again:
    attempt++;
    buf_reset(&report);
    bool converged = false;
    while (rc == 0 && !converged && now_ms() < deadline) {
        converged = true;
        for (int i = 0; i < n && converged; i++)
            converged = node_status(dbs[i], false, &st[i]) == 0;
        converged = converged && statuses_converged(st, n);
        if (!converged)
            sleep_ms(100);
    }
    /* Where the server offers them, the digests of every group's engine must be equal. */
    size_t digests = 0;
    for (int i = 0; rc == 0 && converged && i < n; i++)
        if (node_status(dbs[i], true, &st[i]) != 0)
            rc = EXIT_ANOMALY;
    long anomalies = 0;
    for (size_t k = 0; rc == 0 && converged && k < st[0].ngroups; k++) {
        const struct group_status *g0 = &st[0].groups[k];
        if (g0->digest[0] == '\0')
            continue;
        digests++;
        for (int i = 1; i < n; i++) {
            const struct group_status *gi = status_group(&st[i], g0->id);
            if (gi == NULL || strcmp(gi->digest, g0->digest) != 0) {
                buf_printf(&report, "ANOMALY group %" PRIu64 " differs at applied index %" PRIu64
                                ": %s has digest %s, %s has %s\n",
                        g0->id, g0->applied, addrs[0], g0->digest, addrs[i],
                        gi ? gi->digest : "(no such group)");
                anomalies++;
            }
        }
    }
    if (rc == 0 && !converged) {
        buf_printf(&report, "ANOMALY replicas did not reach one applied index within %d ms:",
                   o->within_ms);
        for (int i = 0; i < n; i++)
            if (node_status(dbs[i], false, &st[i]) == 0) {
                buf_printf(&report, " node %" PRIu64 " %s term %" PRIu64 " commit %" PRIu64
                                    " applied %" PRIu64,
                        st[i].node_id, st[i].role, st[i].term, st[i].commit, st[i].applied);
                for (size_t k = 0; k < st[i].ngroups; k++)
                    buf_printf(&report, " [group %" PRIu64 " commit %" PRIu64 " applied %" PRIu64 "]",
                            st[i].groups[k].id, st[i].groups[k].commit, st[i].groups[k].applied);
                buf_printf(&report, ";");
            } else
                buf_printf(&report, " %s unreachable;", addrs[i]);
        buf_printf(&report, "\n");
        anomalies++;
    }
    size_t compared = 0;
    for (size_t k = 0; rc == 0 && converged && k < s.n; k++) {
        struct buf fp[MAX_NODES];
        bool ok = true;
        for (int i = 0; i < n; i++)
            buf_init(&fp[i]);
        for (int i = 0; i < n && ok; i++)
            ok = stale_fingerprint(dbs[i], &s.v[k], &fp[i]) == 0;
        if (!ok) {
            fprintf(stderr, "workload: stale read of %s/%s failed\n", s.v[k].branch, s.v[k].key);
            rc = EXIT_ANOMALY;
        }
        for (int i = 1; i < n && ok; i++)
            if (fp[i].len != fp[0].len || memcmp(fp[i].data, fp[0].data, fp[0].len) != 0) {
                buf_printf(&report, "ANOMALY replicas differ on %s %s/%s: %s has %.*s, %s has %.*s\n",
                        s.v[k].log ? "log" : "register", s.v[k].branch, s.v[k].key, addrs[0],
                        (int)fp[0].len, (const char *)fp[0].data, addrs[i], (int)fp[i].len,
                        (const char *)fp[i].data);
                anomalies++;
                break;
            }
        compared += ok;
        for (int i = 0; i < n; i++)
            buf_close(&fp[i]);
    }
    /* The answers must have come from the node each handle was opened on (a handle
     * follows its connection's node until it breaks: ask on the same handle after). */
    struct status after[MAX_NODES];
    for (int i = 0; rc == 0 && converged && i < n; i++)
        if (node_status(dbs[i], false, &after[i]) || after[i].node_id != st[i].node_id ||
            !statuses_converged((const struct status[]){st[i], after[i]}, 2)) {
            if (attempt < 5 && now_ms() < deadline) {
                fprintf(stderr, "workload: node %s moved during comparison %d; again\n",
                        addrs[i], attempt);
                /* Fresh handles: one may have followed a redirect to another node. */
                for (int j = 0; j < n && rc == 0; j++) {
                    char uri[160];
                    snprintf(uri, sizeof uri, "strata://%.127s?routing=server", addrs[j]);
                    strata_close(dbs[j]);
                    dbs[j] = NULL;
                    rc = open_db(uri, 2000, &dbs[j]);
                }
                if (rc == 0)
                    goto again;
            }
            fprintf(stderr, "workload: node %s changed under the comparison; not conclusive\n",
                    addrs[i]);
            rc = EXIT_ANOMALY;
            break;
        }
    if (report.len)
        fprintf(stderr, "%.*s", (int)report.len, (const char *)report.data);
    buf_close(&report);
    for (int i = 0; i < n; i++)
        strata_close(dbs[i]);
    if (rc == 0)
        printf("{\"replicas\":%d,\"compared\":%zu,\"groups\":%zu,\"digests\":%zu,"
               "\"applied_index\":%" PRIu64 ",\"replica_anomalies\":%ld}\n",
               n, compared, n ? st[0].ngroups : 0, digests, n ? st[0].applied : 0, anomalies);
    if (rc == 0 && anomalies)
        rc = EXIT_ANOMALY;
    objects_free(&s);
    return rc;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fputs("usage:\n"
          "  strata_workload run     --uri URI --history FILE [--threads N] [--keys K]\n"
          "                          [--branches B] [--logs L] [--duration S] [--max-ops N]\n"
          "                          [--rotate OPS] [--seed S] [--op-timeout-ms MS]\n"
          "                          [--nodes HOST:PORT,...]  (odd threads use one node each)\n"
          "                          [--merges on|off]  (fork/merge cycles on default, on)\n"
          "  strata_workload probe   --uri URI [--within-ms MS]\n"
          "  strata_workload final   --uri URI --history FILE [--within-ms MS]\n"
          "  strata_workload compare --nodes HOST:PORT,... --history FILE [--within-ms MS]\n"
          "  strata_workload now     (prints CLOCK_MONOTONIC in ns, the history's clock)\n",
          out);
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "now") == 0 && argc == 2) {
        /* The history's clock, for the nemesis log (so faults line up with operations). */
        printf("%" PRIu64 "\n", clock_mono_ns());
        return EXIT_OK;
    }
    if (strcmp(sub, "run") != 0 && strcmp(sub, "probe") != 0 && strcmp(sub, "final") != 0 &&
        strcmp(sub, "compare") != 0) {
        fprintf(stderr, "workload: unknown subcommand '%s'\n", sub);
        usage(stderr);
        return EXIT_USAGE;
    }
    struct opts o = {.threads = 5, .keys = 5, .branches = 3, .logs = 2, .duration_s = 10,
                     .rotate = 1000, .seed = 1, .op_timeout_ms = 2000, .within_ms = 15000,
                     .merges = true};
    static const struct option longopts[] = {
        {"uri", required_argument, NULL, 'u'},      {"history", required_argument, NULL, 'H'},
        {"nodes", required_argument, NULL, 'n'},    {"threads", required_argument, NULL, 't'},
        {"keys", required_argument, NULL, 'k'},     {"branches", required_argument, NULL, 'b'},
        {"logs", required_argument, NULL, 'l'},     {"duration", required_argument, NULL, 'd'},
        {"max-ops", required_argument, NULL, 'm'},  {"rotate", required_argument, NULL, 'r'},
        {"seed", required_argument, NULL, 's'},     {"op-timeout-ms", required_argument, NULL, 'o'},
        {"within-ms", required_argument, NULL, 'w'}, {"merges", required_argument, NULL, 'g'},
        {NULL, 0, NULL, 0}};
    optind = 2;
    int c, idx = 0;
    long v;
    while ((c = getopt_long(argc, argv, "", longopts, &idx)) != -1) {
        bool ok = true;
        switch (c) {
        case 'u': o.uri = optarg; break;
        case 'H': o.history = optarg; break;
        case 'n': o.nodes = optarg; break;
        case 't': ok = parse_long(optarg, 1, MAX_THREADS, &v), o.threads = (int)v; break;
        case 'k': ok = parse_long(optarg, 1, MAX_KEYS, &v), o.keys = (int)v; break;
        case 'b': ok = parse_long(optarg, 1, MAX_BRANCHES, &v), o.branches = (int)v; break;
        case 'l': ok = parse_long(optarg, 1, MAX_LOGS, &v), o.logs = (int)v; break;
        case 'd': ok = parse_long(optarg, 1, 86400, &v), o.duration_s = (double)v; break;
        case 'm': ok = parse_long(optarg, 0, 1000000000L, &v), o.max_ops = v; break;
        case 'r': ok = parse_long(optarg, 10, 1000000000L, &v), o.rotate = v; break;
        case 's': ok = parse_long(optarg, 0, 2147483647L, &v), o.seed = (unsigned long)v; break;
        case 'o': ok = parse_long(optarg, 100, 600000, &v), o.op_timeout_ms = (int)v; break;
        case 'w': ok = parse_long(optarg, 100, 600000, &v), o.within_ms = (int)v; break;
        case 'g':
            ok = strcmp(optarg, "on") == 0 || strcmp(optarg, "off") == 0;
            o.merges = strcmp(optarg, "on") == 0;
            break;
        default: usage(stderr); return EXIT_USAGE;
        }
        if (!ok) {
            fprintf(stderr, "workload: bad value '%s' for --%s\n", optarg, longopts[idx].name);
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "workload: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    bool need_uri = strcmp(sub, "compare") != 0;
    bool need_hist = strcmp(sub, "probe") != 0;
    if ((need_uri && o.uri == NULL) || (need_hist && o.history == NULL) ||
        (!need_uri && o.nodes == NULL)) {
        fprintf(stderr, "workload: %s needs %s\n", sub,
                !need_uri ? "--nodes and --history" : need_hist ? "--uri and --history" : "--uri");
        return EXIT_USAGE;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(sub, "run") == 0)
        return cmd_run(&o);
    if (strcmp(sub, "probe") == 0)
        return cmd_probe(&o);
    if (strcmp(sub, "final") == 0)
        return cmd_final(&o);
    return cmd_compare(&o);
}
