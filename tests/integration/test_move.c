/* Branch moves with real processes (docs/sharding.md "Branch moves"): a branch moves to
 * another shard while 8 clients write and read it; afterwards its history holds exactly
 * the acknowledged writes, in order, with the versions they were acknowledged with
 * (writes whose outcome is unknown may be there or not, nothing else), versions strictly
 * increase, reads never went back, and the old shard no longer has it. Then moves survive
 * kill -9 of the meta leader and of the target shard's leader mid-copy. `move_bench`
 * repeats moves under load and prints the write pause clients saw. */
#include "harness.h"
#include "storage.h"
#include "tests.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WRITERS 8

/* ---- Cluster helpers --------------------------------------------------------------- */

/* The shard and epoch of `name` in a fresh cluster.placement (0 if absent). */
static uint32_t branch_shard(struct strata *db, const char *name, uint64_t *epoch)
{
    struct buf res;
    buf_init(&res);
    uint32_t shard = 0;
    if (h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.placement\",\"fresh\":true}") == 0) {
        struct h_obj x;
        if (h_obj_parse(&x, &res) == 0) {
            const msgpack_object *t = h_map_get(x.o, "table");
            const msgpack_object *b = t ? h_map_get(t, "branches") : NULL;
            for (uint32_t k = 0; b && b->type == MSGPACK_OBJECT_ARRAY && k < b->via.array.size;
                 k++) {
                const msgpack_object *e = &b->via.array.ptr[k];
                if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size == 3 &&
                    e->via.array.ptr[0].type == MSGPACK_OBJECT_STR &&
                    e->via.array.ptr[0].via.str.size == strlen(name) &&
                    memcmp(e->via.array.ptr[0].via.str.ptr, name, strlen(name)) == 0) {
                    shard = (uint32_t)e->via.array.ptr[1].via.u64;
                    if (epoch)
                        *epoch = e->via.array.ptr[2].via.u64;
                }
            }
            h_obj_free(&x);
        }
    }
    buf_close(&res);
    return shard;
}

/* cluster.move_branch; returns the move id (0 on failure, with e filled). */
static uint64_t move_start(struct strata *db, const char *branch, uint32_t to, uint32_t chunk,
                           struct err *e)
{
    struct buf res;
    buf_init(&res);
    uint64_t id = 0;
    int rc = chunk ? h_exec(db, 0, &res, e,
                            "{\"op\":\"cluster.move_branch\",\"branch\":\"%s\",\"to_shard\":%u,"
                            "\"chunk_bytes\":%u}",
                            branch, to, chunk)
                   : h_exec(db, 0, &res, e,
                            "{\"op\":\"cluster.move_branch\",\"branch\":\"%s\",\"to_shard\":%u}",
                            branch, to);
    struct h_obj x;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        id = h_map_u64(x.o, "id");
        h_obj_free(&x);
    }
    buf_close(&res);
    return id;
}

/* cluster.moves: the phase of move `id` ("" when not in flight) or, once finished, its
 * outcome and message. Returns false when the record could not be read. */
static bool move_state(struct strata *db, uint64_t id, char *phase, size_t pcap, char *outcome,
                       size_t ocap, char *msg, size_t mcap)
{
    struct buf res;
    buf_init(&res);
    phase[0] = outcome[0] = msg[0] = '\0';
    bool ok = false;
    if (h_exec(db, 0, &res, NULL, "{\"op\":\"cluster.moves\"}") == 0) {
        struct h_obj x;
        if (h_obj_parse(&x, &res) == 0) {
            ok = true;
            const msgpack_object *lists[2] = {h_map_get(x.o, "moves"), h_map_get(x.o, "recent")};
            for (int l = 0; l < 2; l++)
                for (uint32_t i = 0; lists[l] && lists[l]->type == MSGPACK_OBJECT_ARRAY &&
                                     i < lists[l]->via.array.size;
                     i++) {
                    const msgpack_object *m = &lists[l]->via.array.ptr[i];
                    if (h_map_u64(m, "id") != id)
                        continue;
                    if (l == 0)
                        h_map_str(m, "phase", phase, pcap);
                    else
                        h_map_str(m, "outcome", outcome, ocap);
                    h_map_str(m, "message", msg, mcap);
                }
            h_obj_free(&x);
        }
    }
    buf_close(&res);
    return ok;
}

/* Wait (bounded) for move `id` to finish; true when it finished "done". */
static bool move_wait(struct strata *db, uint64_t id, unsigned ms, char *outcome, size_t ocap)
{
    char phase[32], msg[256];
    for (uint64_t until = h_now_ms() + ms; h_now_ms() < until; h_sleep_ms(50))
        if (move_state(db, id, phase, sizeof phase, outcome, ocap, msg, sizeof msg) &&
            outcome[0]) {
            if (strcmp(outcome, "done") != 0)
                h_note("move %llu: %s: %s", (unsigned long long)id, outcome, msg);
            return strcmp(outcome, "done") == 0;
        }
    snprintf(outcome, ocap, "timeout (phase %s)", phase);
    return false;
}

/* move.status of `branch` on shard `gid`, through the internal cluster.move_exec. */
static int shard_status(struct strata *db, uint32_t gid, const char *branch, bool *exists)
{
    char b64[400];
    uint8_t cmd[256];
    /* {"op":"move.status","name":branch} in MessagePack, by hand: fixmap 2, fixstr keys. */
    size_t n = 0, bl = strlen(branch);
    cmd[n++] = 0x82;
    cmd[n++] = 0xa2;
    memcpy(cmd + n, "op", 2);
    n += 2;
    cmd[n++] = 0xab;
    memcpy(cmd + n, "move.status", 11);
    n += 11;
    cmd[n++] = 0xa4;
    memcpy(cmd + n, "name", 4);
    n += 4;
    cmd[n++] = (uint8_t)(0xa0 | bl);
    memcpy(cmd + n, branch, bl);
    n += bl;
    EVP_EncodeBlock((unsigned char *)b64, cmd, (int)n);
    struct buf res;
    buf_init(&res);
    struct err e;
    int rc = h_exec(db, 0, &res, &e,
                    "{\"op\":\"cluster.move_exec\",\"group\":%u,\"cmd\":{\"$bytes\":\"%s\"}}", gid,
                    b64);
    struct h_obj x;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        const msgpack_object *ex = h_map_get(x.o, "exists");
        *exists = ex && ex->type == MSGPACK_OBJECT_BOOLEAN && ex->via.boolean;
        h_obj_free(&x);
    } else if (rc) {
        h_note("move.status on shard %u: %s %s", gid, err_name(rc), e.msg);
    }
    buf_close(&res);
    return rc;
}

/* ---- Writers and readers ---------------------------------------------------------------- */

struct op_rec {
    int code;
    uint64_t version;
    uint64_t t0_us, t1_us;
};

struct writer {
    int idx;
    const struct h_cluster *c;
    const char *branch;
    const char *key;
    volatile int *stop;
    struct op_rec *ops;
    size_t nops, cap;
    uint64_t reads, read_errors, went_back;
    char first_problem[400];
    pthread_t th;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* A put answer {version, ts}; a get answer {value, version, ts} or nil. */
static uint64_t answer_version(const struct buf *res, char *value, size_t cap)
{
    struct h_obj x;
    uint64_t v = 0;
    if (h_obj_parse(&x, res) == 0) {
        v = h_map_u64(x.o, "version");
        if (value)
            h_map_str(x.o, "value", value, cap);
        h_obj_free(&x);
    }
    return v;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct strata *db = h_open_cluster(w->c, NULL);
    if (db == NULL)
        return NULL;
    strata_set_timeouts(db, 20000, 2000);
    uint64_t last_acked = 0, last_read = 0;
    for (size_t n = 0; !*w->stop; n++) {
        if (w->nops == w->cap) {
            size_t cap = w->cap ? w->cap * 2 : 1024;
            struct op_rec *ops = realloc(w->ops, cap * sizeof *ops);
            if (ops == NULL)
                break;
            w->ops = ops;
            w->cap = cap;
        }
        struct op_rec *op = &w->ops[w->nops++];
        struct buf res;
        buf_init(&res);
        struct err e;
        op->t0_us = now_us();
        op->code = h_exec(db, 0, &res, &e,
                          "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"%s\",\"value\":\"w%d-%zu\"}",
                          w->branch, w->key, w->idx, n);
        op->t1_us = now_us();
        if (op->t1_us - op->t0_us > (getenv("STRATA_MOVE_SLOW") ? (uint64_t)atoi(getenv("STRATA_MOVE_SLOW")) * 1000u : UINT64_MAX))
            fprintf(stderr, "slow write w%d-%zu: %.0f ms, ended at second %.3f of the minute: %s\n",
                    w->idx, n, (op->t1_us - op->t0_us) / 1000.0,
                    (double)(clock_now_us() % 60000000) / 1e6, err_name(op->code));
        op->version = op->code == 0 ? answer_version(&res, NULL, 0) : 0;
        if (op->code && op->code != STRATA_UNKNOWN_OUTCOME && !w->first_problem[0])
            snprintf(w->first_problem, sizeof w->first_problem, "put w%d-%zu: %s %s", w->idx, n,
                     err_name(op->code), e.msg);
        if (op->code == 0) {
            if (op->version <= last_acked && !w->first_problem[0])
                snprintf(w->first_problem, sizeof w->first_problem,
                         "put w%d-%zu acked version %llu after %llu", w->idx, n,
                         (unsigned long long)op->version, (unsigned long long)last_acked);
            last_acked = op->version;
        }
        buf_reset(&res);
        int rc = h_exec(db, 0, &res, &e, "{\"op\":\"kv.get\",\"branch\":\"%s\",\"key\":\"%s\"}",
                        w->branch, w->key);
        w->reads++;
        if (rc) {
            w->read_errors++;
            if (!w->first_problem[0])
                snprintf(w->first_problem, sizeof w->first_problem, "get: %s %s", err_name(rc),
                         e.msg);
        } else {
            uint64_t v = answer_version(&res, NULL, 0);
            /* A read after an acknowledged write sees it or a later one, and never goes
             * back behind an earlier read. */
            if (v < last_acked || v < last_read) {
                w->went_back++;
                if (!w->first_problem[0])
                    snprintf(w->first_problem, sizeof w->first_problem,
                             "get saw version %llu after write %llu / read %llu",
                             (unsigned long long)v, (unsigned long long)last_acked,
                             (unsigned long long)last_read);
            }
            last_read = v > last_read ? v : last_read;
        }
        buf_close(&res);
    }
    strata_close(db);
    return NULL;
}

static void writers_start(struct writer *w, int n, const struct h_cluster *c, const char *branch,
                          const char *key, volatile int *stop)
{
    for (int i = 0; i < n; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].idx = i;
        w[i].c = c;
        w[i].branch = branch;
        w[i].key = key;
        w[i].stop = stop;
        pthread_create(&w[i].th, NULL, writer_main, &w[i]);
    }
}

static void writers_join(struct writer *w, int n)
{
    for (int i = 0; i < n; i++)
        pthread_join(w[i].th, NULL);
}

static void writers_free(struct writer *w, int n)
{
    for (int i = 0; i < n; i++)
        free(w[i].ops);
}

/* The key's whole history against what the writers were told. */
static void check_history(struct strata *db, const char *branch, const char *key,
                          struct writer *w, int nw, const char *preload_prefix)
{
    struct buf res;
    buf_init(&res);
    struct err e;
    int rc = h_exec(db, 0, &res, &e, "{\"op\":\"kv.history\",\"branch\":\"%s\",\"key\":\"%s\"}",
                    branch, key);
    CHECK(rc == 0, "kv.history of the moved branch (%s %s)", err_name(rc), e.msg);
    struct h_obj x;
    if (rc || h_obj_parse(&x, &res) != 0 || x.o->type != MSGPACK_OBJECT_ARRAY) {
        buf_close(&res);
        return;
    }
    /* seen[i][n]: how often writer i's write n is in the history. */
    unsigned char *seen[WRITERS];
    for (int i = 0; i < nw; i++)
        seen[i] = calloc(w[i].nops ? w[i].nops : 1, 1);
    size_t foreign = 0, wrong_version = 0, order = 0, dup = 0, bad_code = 0, entries = 0;
    uint64_t prev = UINT64_MAX;
    char problem[256] = "";
    for (uint32_t k = 0; k < x.o->via.array.size; k++) {
        const msgpack_object *h = &x.o->via.array.ptr[k];
        uint64_t v = h_map_u64(h, "version");
        char val[64];
        h_map_str(h, "value", val, sizeof val);
        entries++;
        if (v >= prev) {
            order++;
            if (!problem[0])
                snprintf(problem, sizeof problem, "version %llu after %llu",
                         (unsigned long long)v, (unsigned long long)prev);
        }
        prev = v;
        int wi;
        size_t n;
        if (sscanf(val, "w%d-%zu", &wi, &n) == 2 && wi >= 0 && wi < nw && n < w[wi].nops) {
            const struct op_rec *op = &w[wi].ops[n];
            if (seen[wi][n]++)
                dup++;
            if (op->code == 0 && op->version != v) {
                wrong_version++;
                if (!problem[0])
                    snprintf(problem, sizeof problem, "%s at version %llu, acked as %llu", val,
                             (unsigned long long)v, (unsigned long long)op->version);
            }
            if (op->code != 0 && op->code != STRATA_UNKNOWN_OUTCOME) {
                bad_code++;
                if (!problem[0])
                    snprintf(problem, sizeof problem, "%s is there but failed with %s", val,
                             err_name(op->code));
            }
        } else if (strncmp(val, preload_prefix, strlen(preload_prefix)) != 0) {
            foreign++;
            if (!problem[0])
                snprintf(problem, sizeof problem, "unknown value '%s'", val);
        }
    }
    size_t acked = 0, missing = 0, unknown = 0, unknown_there = 0;
    for (int i = 0; i < nw; i++)
        for (size_t n = 0; n < w[i].nops; n++) {
            if (w[i].ops[n].code == 0) {
                acked++;
                if (!seen[i][n]) {
                    missing++;
                    if (!problem[0])
                        snprintf(problem, sizeof problem, "acked w%d-%zu (version %llu) missing",
                                 i, n, (unsigned long long)w[i].ops[n].version);
                }
            } else if (w[i].ops[n].code == STRATA_UNKNOWN_OUTCOME) {
                unknown++;
                unknown_there += seen[i][n] != 0;
            }
        }
    CHECK(missing == 0 && foreign == 0 && wrong_version == 0 && order == 0 && dup == 0 &&
              bad_code == 0,
          "history of %zu versions: every one of %zu acked writes exactly once at its acked "
          "version, in version order; %zu of %zu unknown-outcome writes present; nothing else "
          "(missing %zu, foreign %zu, wrong version %zu, out of order %zu, duplicates %zu, "
          "failed-but-present %zu) %s",
          entries, acked, unknown_there, unknown, missing, foreign, wrong_version, order, dup,
          bad_code, problem);
    for (int i = 0; i < nw; i++)
        free(seen[i]);
    h_obj_free(&x);
    buf_close(&res);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Latencies (µs) of the writes that started in [from, to): p50, p99, max. */
static void latencies(struct writer *w, int nw, uint64_t from, uint64_t to, uint64_t *p50,
                      uint64_t *p99, uint64_t *max, size_t *count)
{
    size_t n = 0;
    for (int i = 0; i < nw; i++)
        for (size_t k = 0; k < w[i].nops; k++)
            n += w[i].ops[k].t0_us >= from && w[i].ops[k].t0_us < to;
    *count = n;
    *p50 = *p99 = *max = 0;
    if (n == 0)
        return;
    uint64_t *l = malloc(n * sizeof *l);
    size_t j = 0;
    for (int i = 0; i < nw; i++)
        for (size_t k = 0; k < w[i].nops; k++)
            if (w[i].ops[k].t0_us >= from && w[i].ops[k].t0_us < to)
                l[j++] = w[i].ops[k].t1_us - w[i].ops[k].t0_us;
    qsort(l, n, sizeof *l, cmp_u64);
    *p50 = l[n / 2];
    *p99 = l[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
    *max = l[n - 1];
    free(l);
}

/* The longest write in flight at some time in [from, to]. */
static uint64_t longest_overlapping(struct writer *w, int nw, uint64_t from, uint64_t to)
{
    uint64_t max = 0;
    for (int i = 0; i < nw; i++)
        for (size_t k = 0; k < w[i].nops; k++) {
            const struct op_rec *op = &w[i].ops[k];
            if (op->t0_us <= to && op->t1_us >= from && op->t1_us - op->t0_us > max)
                max = op->t1_us - op->t0_us;
        }
    return max;
}

/* Preload `n` keys (history for the copy) and some versions of "hot". */
static void preload(struct strata *db, const char *branch, size_t n, const char *prefix)
{
    struct h_kv *kv = calloc(n, sizeof *kv);
    h_kv_fill(kv, n, prefix);
    size_t acked = h_put_all(db, branch, kv, n, 64);
    CHECK(acked == n, "preloaded %zu of %zu keys into %s", acked, n, branch);
    for (int i = 0; i < 20; i++)
        h_exec(db, 0, NULL, NULL,
               "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"hot\",\"value\":\"%s-%d\"}", branch,
               prefix, i);
    free(kv);
}

static void check_preload(struct strata *db, const char *branch, size_t n, const char *prefix)
{
    struct h_kv *kv = calloc(n, sizeof *kv);
    h_kv_fill(kv, n, prefix);
    size_t absent = 0, wrong = 0;
    int rc = h_batch_check(db, 0, branch, kv, n, &absent, &wrong);
    CHECK(rc == 0 && absent == 0 && wrong == 0,
          "all %zu preloaded keys read back from the moved branch (absent %zu, wrong %zu, %s)", n,
          absent, wrong, err_name(rc));
    free(kv);
}

static uint32_t other_shard(uint32_t s, int step)
{
    return (uint32_t)((s - 1 + (uint32_t)step) % 3 + 1);
}

/* kv.scan of a branch as JSON text. */
static void scan_json(struct strata *db, const char *branch, char *out, size_t cap)
{
    struct buf res, j;
    buf_init(&res);
    buf_init(&j);
    out[0] = '\0';
    if (h_exec(db, 0, &res, NULL, "{\"op\":\"kv.scan\",\"branch\":\"%s\"}", branch) == 0 &&
        storage_value_to_json(res.data, res.len, &j, false) == 0)
        snprintf(out, cap, "%.*s", (int)j.len, (const char *)j.data);
    buf_close(&res);
    buf_close(&j);
}

/* ---- The tests -------------------------------------------------------------------------- */

static void start_cluster(struct h_cluster *c, const char *name, int n)
{
    static const char *const extra[] = {"--shards", "3", "--replication-factor", "3", NULL};
    h_cluster_init(c, name, n, extra);
}

static bool cluster_ready(struct h_cluster *c)
{
    h_status_group = 0;
    int ml = h_wait_leader(c, 20000, -1);
    h_status_group = 1;
    bool all = false;
    for (uint64_t until = h_now_ms() + 20000; ml >= 0 && !all && h_now_ms() < until;
         h_sleep_ms(100)) {
        all = true;
        for (uint32_t g = 1; g <= 3 && all; g++) {
            struct h_status st;
            h_status_group = g;
            all = h_status(c, 0, &st) == 0 && st.leader_id != 0;
        }
        h_status_group = 1;
    }
    return ml >= 0 && all;
}

/* One move of `branch` under WRITERS clients; checks and (optionally) figures. */
static void move_under_load(struct h_cluster *c, struct strata *db, const char *branch,
                            int rounds, uint32_t chunk, const char *preload_prefix,
                            size_t npreload)
{
    volatile int stop = 0;
    struct writer w[WRITERS];
    writers_start(w, WRITERS, c, branch, "hot", &stop);
    uint64_t base_from = now_us() + 200000;
    h_sleep_ms(1500);
    uint64_t base_to = now_us();
    uint64_t *pauses = calloc((size_t)rounds, sizeof *pauses);
    uint64_t(*win)[2] = calloc((size_t)rounds, sizeof *win);
    uint64_t(*cut)[2] = calloc((size_t)rounds, sizeof *cut);
    uint64_t *cutp = calloc((size_t)rounds, sizeof *cutp);
    uint64_t all_from = 0, all_to = 0;
    int done = 0;
    for (int r = 0; r < rounds; r++) {
        uint64_t epoch0 = 0;
        uint32_t from = branch_shard(db, branch, &epoch0);
        uint32_t to = other_shard(from, 1 + r % 2);
        struct err e;
        err_clear(&e);
        uint64_t t0 = now_us();
        uint64_t id = move_start(db, branch, to, chunk, &e);
        CHECK(id > 0, "move %d of %s: shard %u -> %u started (%s)", r + 1, branch, from, to,
              e.msg);
        if (id == 0)
            break;
        /* Follow the phases closely: the fence-to-cut-over interval, as seen from here,
         * lies within [last seen before the fence, first seen after the cut-over]. */
        char outcome[64] = "", phase[32] = "", msg[256];
        uint64_t before_fence = t0, after_cut = 0;
        for (uint64_t until = h_now_ms() + 60000; h_now_ms() < until && !outcome[0];
             h_sleep_ms(5)) {
            uint64_t t = now_us();
            if (!move_state(db, id, phase, sizeof phase, outcome, sizeof outcome, msg, sizeof msg))
                continue;
            if (strcmp(phase, "copying") == 0 || strcmp(phase, "catching_up") == 0)
                before_fence = t;
            else if (after_cut == 0 && (strcmp(phase, "cutover") == 0 || outcome[0]))
                after_cut = now_us();
        }
        bool ok = strcmp(outcome, "done") == 0;
        if (!ok)
            h_note("move %llu: %s %s", (unsigned long long)id, outcome[0] ? outcome : "timeout", msg);
        uint64_t t1 = now_us();
        CHECK(ok, "move %llu finished: %s (%.0f ms)", (unsigned long long)id, outcome,
              (double)(t1 - t0) / 1000.0);
        uint64_t epoch1 = 0;
        uint32_t now_on = branch_shard(db, branch, &epoch1);
        CHECK(now_on == to && epoch1 > epoch0,
              "the table puts %s on shard %u (want %u), branch epoch %llu -> %llu", branch,
              now_on, to, (unsigned long long)epoch0, (unsigned long long)epoch1);
        bool exists = true;
        int rc = shard_status(db, from, branch, &exists);
        CHECK(rc == 0 && !exists, "the old shard %u no longer holds %s (%s)", from, branch,
              err_name(rc));
        win[r][0] = t0;
        win[r][1] = t1;
        cut[r][0] = before_fence;
        cut[r][1] = after_cut ? after_cut : t1;
        if (r == 0)
            all_from = t0;
        all_to = t1;
        done++;
        if (!ok)
            break;
        h_sleep_ms(300);
    }
    h_sleep_ms(500);
    stop = 1;
    writers_join(w, WRITERS);
    size_t ops = 0, failed = 0, read_errors = 0, went_back = 0;
    const char *problem = "";
    for (int i = 0; i < WRITERS; i++) {
        ops += w[i].nops;
        for (size_t k = 0; k < w[i].nops; k++)
            failed += w[i].ops[k].code != 0 && w[i].ops[k].code != STRATA_UNKNOWN_OUTCOME;
        read_errors += w[i].read_errors;
        went_back += w[i].went_back;
        if (w[i].first_problem[0] && !problem[0])
            problem = w[i].first_problem;
    }
    /* A move holds a writer for its cut-over, never for a step's or a call's timeout
     * (the driver's 15 s, a client's 20 s): a write that long means a lost answer. */
    uint64_t slowest = 0;
    for (int i = 0; i < WRITERS; i++)
        for (size_t k = 0; k < w[i].nops; k++)
            if (w[i].ops[k].t1_us - w[i].ops[k].t0_us > slowest)
                slowest = w[i].ops[k].t1_us - w[i].ops[k].t0_us;
    CHECK(slowest < 10000000u, "no write took 10 s or more: the slowest took %.1f ms",
          slowest / 1000.0);
    CHECK(ops > 100 && failed == 0 && read_errors == 0 && went_back == 0,
          "%d clients: %zu writes, none failed (%zu), reads: none failed (%zu) or went back "
          "(%zu) %s",
          WRITERS, ops, failed, read_errors, went_back, problem);
    /* Latencies once the writers are done (their records are complete). */
    for (int r = 0; r < done; r++) {
        uint64_t p50, p99, max;
        size_t cnt;
        latencies(w, WRITERS, win[r][0], win[r][1], &p50, &p99, &max, &cnt);
        pauses[r] = max;
        cutp[r] = longest_overlapping(w, WRITERS, cut[r][0], cut[r][1]);
        h_note("move %d: %zu writes during it, latency p50 %.1f ms, p99 %.1f ms, max %.1f ms; "
               "longest write across the fence and cut-over (seen within %.0f ms): %.1f ms",
               r + 1, cnt, p50 / 1000.0, p99 / 1000.0, max / 1000.0,
               (cut[r][1] - cut[r][0]) / 1000.0, cutp[r] / 1000.0);
    }
    free(win);
    free(cut);
    check_history(db, branch, "hot", w, WRITERS, preload_prefix);
    if (npreload)
        check_preload(db, branch, npreload, preload_prefix);
    if (done > 0) {
        uint64_t p50, p99, max;
        size_t cnt;
        latencies(w, WRITERS, base_from, base_to, &p50, &p99, &max, &cnt);
        h_note("FIGURES: before any move (%zu writes): write latency p50 %.1f ms, p99 %.1f ms, "
               "max %.1f ms",
               cnt, p50 / 1000.0, p99 / 1000.0, max / 1000.0);
        latencies(w, WRITERS, all_from, all_to, &p50, &p99, &max, &cnt);
        qsort(pauses, (size_t)done, sizeof *pauses, cmp_u64);
        qsort(cutp, (size_t)done, sizeof *cutp, cmp_u64);
        size_t i99 = (size_t)(done * 99) / 100 < (size_t)done ? (size_t)(done * 99) / 100
                                                               : (size_t)done - 1;
        h_note("FIGURES: %d moves: the write pause (longest write in flight across the fence "
               "and the cut-over): p50 %.1f ms, p99 %.1f ms, max %.1f ms",
               done, cutp[done / 2] / 1000.0, cutp[i99] / 1000.0, cutp[done - 1] / 1000.0);
        h_note("FIGURES: %d moves under %d writers: write latency during moves p50 %.1f ms, "
               "p99 %.1f ms (%zu writes); longest write per move window (copy, cut-over and "
               "grace): p50 %.1f ms, p99 %.1f ms, max %.1f ms",
               done, WRITERS, p50 / 1000.0, p99 / 1000.0, cnt, pauses[done / 2] / 1000.0,
               pauses[(done * 99) / 100 < done ? (done * 99) / 100 : done - 1] / 1000.0,
               pauses[done - 1] / 1000.0);
    }
    free(pauses);
    free(cutp);
    writers_free(w, WRITERS);
}

void test_move(void)
{
    static struct h_cluster c;
    start_cluster(&c, "move", 5);
    REQUIRE(h_cluster_start(&c) == 0, "5 servers started (3 shards, RF 3)");
    REQUIRE(cluster_ready(&c), "the meta group and every shard have leaders");
    struct strata *db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "cluster client");
    strata_set_timeouts(db, 20000, 2000);
    int rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"mv\"}");
    REQUIRE(rc == 0, "branch mv created (%s)", err_name(rc));
    preload(db, "mv", 1500, "pre");

    /* Refusals first: clear errors, nothing recorded. */
    struct err e;
    uint32_t s0 = branch_shard(db, "mv", NULL);
    CHECK(move_start(db, "mv", s0, 0, &e) == 0 && e.code == STRATA_INVALID_ARGUMENT,
          "a move to the branch's own shard is refused: %s", e.msg);
    CHECK(move_start(db, "default", 2, 0, &e) == 0 && e.code == STRATA_INVALID_ARGUMENT,
          "default cannot move: %s", e.msg);
    CHECK(move_start(db, "nope", 2, 0, &e) == 0 && e.code == STRATA_BRANCH_NOT_FOUND,
          "an unknown branch: %s", e.msg);
    CHECK(move_start(db, "mv", 9, 0, &e) == 0 && e.code == STRATA_INVALID_ARGUMENT,
          "an unknown shard: %s", e.msg);
    CHECK(move_start(db, "mv", other_shard(s0, 1), 100, &e) == 0 &&
              e.code == STRATA_INVALID_ARGUMENT,
          "a chunk size out of range: %s", e.msg);
    rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"par\"}");
    rc = rc ? rc : h_exec(db, 0, NULL, NULL,
                          "{\"op\":\"branch.fork\",\"source\":\"par\",\"name\":\"par-child\"}");
    CHECK(rc == 0, "par and its fork par-child (%s)", err_name(rc));
    uint32_t sp = branch_shard(db, "par", NULL);
    CHECK(move_start(db, "par", other_shard(sp, 1), 0, &e) == 0 &&
              e.code == STRATA_INVALID_ARGUMENT && strstr(e.msg, "fork") != NULL,
          "a branch with forks is refused: %s", e.msg);
    rc = h_exec(db, 0, NULL, &e, "{\"op\":\"move.fence\",\"name\":\"mv\",\"to_shard\":2,\"move_id\":1}");
    CHECK(rc == STRATA_INVALID_ARGUMENT && strstr(e.msg, "internal"),
          "clients cannot send move.* commands (%s %s)", err_name(rc), e.msg);

    /* The move under load: 8 clients writing and reading the branch. */
    move_under_load(&c, db, "mv", 1, 16384, "pre", 1500);

    /* A fork moves too (materialized): it reads the same afterwards. */
    char before[4096] = "", after[4096] = "";
    rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"kv.put\",\"branch\":\"par\",\"key\":\"x\",\"value\":1}");
    rc = rc ? rc : h_exec(db, 0, NULL, NULL,
                          "{\"op\":\"kv.put\",\"branch\":\"par-child\",\"key\":\"y\",\"value\":2}");
    scan_json(db, "par-child", before, sizeof before);
    uint64_t id = move_start(db, "par-child", other_shard(sp, 2), 0, &e);
    char outcome[64];
    CHECK(id && move_wait(db, id, 30000, outcome, sizeof outcome), "the fork par-child moved (%s)",
          id ? outcome : e.msg);
    scan_json(db, "par-child", after, sizeof after);
    CHECK(strstr(before, "\"y\"") && strcmp(before, after) == 0,
          "the moved fork reads as before: %s", after);
    id = move_start(db, "par", other_shard(sp, 1), 0, &e);
    CHECK(id && move_wait(db, id, 30000, outcome, sizeof outcome),
          "with its fork gone, par moves (%s)", id ? outcome : e.msg);

    /* branch.list still names every branch once. */
    struct buf res;
    buf_init(&res);
    rc = h_exec(db, 0, &res, NULL, "{\"op\":\"branch.list\"}");
    struct h_obj x;
    size_t listed = 0;
    if (rc == 0 && h_obj_parse(&x, &res) == 0) {
        listed = x.o->type == MSGPACK_OBJECT_ARRAY ? x.o->via.array.size : 0;
        h_obj_free(&x);
    }
    CHECK(listed == 4, "branch.list: %zu names (default, mv, par, par-child)", listed);
    buf_close(&res);
    strata_close(db);
    h_finish();
}

/* Kill -9 the meta leader, then the target shard's leader, in the middle of a copy. */
void test_move_resume(void)
{
    static struct h_cluster c;
    start_cluster(&c, "resume", 3);
    REQUIRE(h_cluster_start(&c) == 0, "3 servers started (3 shards, RF 3)");
    REQUIRE(cluster_ready(&c), "the meta group and every shard have leaders");
    struct strata *db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "cluster client");
    strata_set_timeouts(db, 20000, 2000);
    int rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"rs\"}");
    REQUIRE(rc == 0, "branch rs created (%s)", err_name(rc));
    preload(db, "rs", 4000, "pre");
    /* Big values, one per 4 KiB chunk: the copy takes a while, long enough to kill. */
    static char big[6000];
    memset(big, 'b', sizeof big - 1);
    int bigs = 0;
    for (int i = 0; i < 300; i++)
        bigs += h_exec(db, 0, NULL, NULL,
                       "{\"op\":\"kv.put\",\"branch\":\"rs\",\"key\":\"big%d\",\"value\":\"%s\"}", i,
                       big) == 0;
    CHECK(bigs == 300, "300 values of 6 KB written (%d)", bigs);

    /* An abort before the cut-over gives the branch back untouched, the target keeps
     * nothing. */
    {
        struct err e;
        uint32_t from = branch_shard(db, "rs", NULL), to = other_shard(from, 2);
        rc = h_exec(db, 0, NULL, &e, "{\"op\":\"cluster.move_abort\",\"branch\":\"rs\"}");
        CHECK(rc == STRATA_NOT_FOUND, "aborting a move that is not there: %s %s", err_name(rc),
              e.msg);
        uint64_t id = move_start(db, "rs", to, 4096, &e);
        REQUIRE(id > 0, "move of rs %u -> %u started (%s)", from, to, e.msg);
        rc = h_exec(db, 0, NULL, &e, "{\"op\":\"cluster.move_abort\",\"branch\":\"rs\"}");
        CHECK(rc == 0, "cluster.move_abort during the copy (%s %s)", err_name(rc), e.msg);
        char outcome[64];
        move_wait(db, id, 30000, outcome, sizeof outcome);
        CHECK(strcmp(outcome, "aborted") == 0, "the move ended %s", outcome);
        CHECK(branch_shard(db, "rs", NULL) == from, "rs is still on shard %u", from);
        bool exists = true;
        rc = shard_status(db, to, "rs", &exists);
        CHECK(rc == 0 && !exists, "the target shard %u holds no copy (%s)", to, err_name(rc));
        rc = h_exec(db, 0, NULL, &e,
                    "{\"op\":\"kv.put\",\"branch\":\"rs\",\"key\":\"after-abort\",\"value\":1}");
        CHECK(rc == 0, "rs takes writes after the abort (%s %s)", err_name(rc), e.msg);
        check_preload(db, "rs", 4000, "pre");
    }
    /* Part 0: kill -9 the meta leader; 1: kill -9 the target's leader; 2: SIGTERM the
     * meta leader (a clean stop with the move's steps in flight). */
    for (int part = 0; part < 3; part++) {
        volatile int stop = 0;
        struct writer w[2];
        const char *key = part == 0 ? "hot0" : part == 1 ? "hot1" : "hot2";
        writers_start(w, 2, &c, "rs", key, &stop);
        uint32_t from = branch_shard(db, "rs", NULL), to = other_shard(from, 1);
        struct err e;
        uint64_t id = move_start(db, "rs", to, 4096, &e);
        REQUIRE(id > 0, "move of rs %u -> %u started (%s)", from, to, e.msg);
        char phase[32] = "", outcome[64], msg[256];
        for (uint64_t until = h_now_ms() + 10000; h_now_ms() < until && strcmp(phase, "copying");
             h_sleep_ms(10))
            move_state(db, id, phase, sizeof phase, outcome, sizeof outcome, msg, sizeof msg);
        h_status_group = part == 1 ? to : 0;
        int victim = h_wait_leader(&c, 10000, -1);
        h_status_group = 1;
        CHECK(victim >= 0 && strcmp(phase, "copying") == 0,
              "mid-copy (phase %s): %s the %s leader, node %d", phase,
              part == 2 ? "SIGTERM" : "kill -9", part == 1 ? "target shard's" : "meta",
              victim + 1);
        if (victim < 0)
            break;
        if (part == 2) {
            h_node_signal(&c, victim, SIGTERM);
            int status = h_node_wait_exit(&c, victim, 15000);
            CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "node %d stopped cleanly with the move in flight (status %d)", victim + 1,
                  status);
            if (status < 0)
                h_node_kill9(&c, victim);
        } else {
            h_node_kill9(&c, victim);
        }
        h_sleep_ms(1000);
        CHECK(h_node_start(&c, victim) == 0, "node %d restarted", victim + 1);
        bool ok = move_wait(db, id, 90000, outcome, sizeof outcome);
        CHECK(ok, "the move resumed and finished: %s", outcome);
        CHECK(branch_shard(db, "rs", NULL) == to, "rs is on shard %u", to);
        bool exists = true;
        rc = shard_status(db, from, "rs", &exists);
        CHECK(rc == 0 && !exists, "the old shard %u no longer holds rs (%s)", from, err_name(rc));
        h_sleep_ms(300);
        stop = 1;
        writers_join(w, 2);
        size_t ops = 0;
        for (int i = 0; i < 2; i++)
            ops += w[i].nops;
        CHECK(ops > 10, "%zu writes went on during the move and the kill", ops);
        check_history(db, "rs", key, w, 2, "pre");
        check_preload(db, "rs", 4000, "pre");
        writers_free(w, 2);
    }
    strata_close(db);
    h_finish();
}

/* Not a CTest test: repeated moves under load, printing the pause figures. Rounds from
 * STRATA_MOVE_ROUNDS (default 20). */
void test_move_bench(void)
{
    static struct h_cluster c;
    start_cluster(&c, "movebench", 5);
    REQUIRE(h_cluster_start(&c) == 0, "5 servers started (3 shards, RF 3)");
    REQUIRE(cluster_ready(&c), "the meta group and every shard have leaders");
    h_sleep_ms(3000); /* past the first leader spreading (docs/sharding.md) */
    struct strata *db = h_open_cluster(&c, NULL);
    REQUIRE(db != NULL, "cluster client");
    strata_set_timeouts(db, 20000, 2000);
    int rc = h_exec(db, 0, NULL, NULL, "{\"op\":\"branch.create\",\"name\":\"bench\"}");
    REQUIRE(rc == 0, "branch created (%s)", err_name(rc));
    preload(db, "bench", 2000, "pre");
    const char *env = getenv("STRATA_MOVE_ROUNDS");
    int rounds = env ? atoi(env) : 20;
    if (getenv("STRATA_MOVE_TRACE"))
        log_set_level(LOG_DEBUG); /* the client library's "after the first MOVED" lines */
    if (rounds < 1 || rounds > 1000)
        rounds = 20;
    move_under_load(&c, db, "bench", rounds, 0, "pre", 2000);
    strata_close(db);
    h_finish();
}
