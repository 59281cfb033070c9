/* The recorded workload (strata_workload run): worker threads issuing reads, writes,
 * CAS and event appends, each invoke and completion written to the history. */
#include "workload.h"

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

int cmd_run(const struct opts *o)
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
