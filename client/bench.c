/* strata-bench: a closed-loop load generator for StrataDB, driving any database libstrata
 * can open (strata.h) with kv.put / kv.get / transaction traffic and reporting throughput,
 * latency percentiles and outcome counts.
 *
 * Model. `--clients N` worker threads each run a closed loop: build a round of
 * `--pipeline D` commands, execute it (strata_exec_flags for D = 1, strata_exec_many
 * otherwise), record every op's outcome and latency, repeat. Workers are spread round-robin
 * over `--connections C` handles (default C = N). A handle is not thread-safe, so when
 * C < N the workers sharing one take turns under a mutex, and the latency they record
 * includes that wait: it is what the worker saw. To load one connection harder, use
 * `--pipeline D` rather than more clients on it.
 *
 * Measurement. The first `--warmup` seconds are not counted. A round is counted when it
 * completes after the warmup; no round starts after the measured window closes, so a
 * round in flight then (e.g. one waiting for a client timeout) finishes and is counted,
 * and the window is extended to the last counted completion. Throughput = ok ops / window.
 * Latencies are kept per thread in log-linear (HDR-style) histograms: 128 linear
 * sub-buckets per power of two, so a reported percentile is within 1/128 (0.8%) of the
 * true value; the histograms are merged at the end. Latency covers ops that got an answer
 * (ok and CONFLICT); errors and unknown outcomes are only counted, by code.
 *
 * Ops. put = kv.put {key, value: bin of --value-size bytes}; get = kv.get {key}; txn =
 * txn.begin, kv.get of the key at the snapshot, then txn.commit {snapshot, reads: [that
 * kv.get], ops: [kv.put of the same key]} — one op, timed from begin to commit. With D > 1
 * a worker runs D transactions in lock step (D begins, D gets, D commits). Keys are
 * "key%012llu", uniform over --keys from a per-thread xorshift64* generator.
 *
 * Branches. By default every op names --branch (or none: the server's "default"). With
 * `--branches N` the run first creates bench-0..bench-N-1 (pipelined; existing ones are
 * kept) and worker i names bench-(i mod N) in every command: on a sharded cluster the
 * branches spread over the shards, and a strata:// handle sends each command to the
 * leader of its branch's shard.
 *
 * mem: caveat. Each strata_open("mem:") is a separate in-process engine, so with several
 * connections a mem: run measures that many independent engines side by side (and
 * --preload fills each of them); only workers sharing one connection share data. */
#include "strata.h"

#include <errno.h>
#include <jansson.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_URI "strata://127.0.0.1:9876"
#define MAX_CLIENTS 4096
#define MAX_PIPELINE 4096
#define MAX_KEYS 1000000000000ULL /* "key%012llu" keeps every key the same length */
#define MAX_VALUE_SIZE (64u << 20)
#define MAX_SECONDS 86400.0
#define JOIN_GRACE_S 60                /* after the window: longer than any client timeout */
#define PRELOAD_CHUNK_BYTES (1u << 20) /* one kv.batch_put carries about this much */
#define PRELOAD_CHUNK_KEYS 1000
#define PRELOAD_PIPELINE 8
#define MAX_BRANCHES 100000
#define BRANCH_PREFIX "bench-" /* as spelled in usage() */
#define CREATE_PIPELINE 64     /* branch.create commands per strata_exec_many call */
#define NAME_CAP 24            /* BRANCH_PREFIX and up to 10 digits */

/* ---- Options --------------------------------------------------------------------------- */

enum mix { MIX_PUT, MIX_GET, MIX_MIXED, MIX_TXN };
static const char *const mix_names[] = {"put", "get", "mixed", "txn"};

struct opts {
    const char *uri;
    unsigned clients, connections, pipeline;
    enum mix mix;
    double get_ratio;
    uint64_t keys;
    size_t value_size;
    double duration, warmup;
    bool preload, stale, json;
    const char *branch; /* NULL: the argument is omitted (the server's "default") */
    unsigned branches;  /* --branches N: 0 = one branch (the one above) */
    uint64_t seed;
};

static void usage(FILE *f)
{
    fputs("usage: strata-bench [options]\n"
          "  --uri URI          database to load (default " DEFAULT_URI ")\n"
          "  --clients N        concurrent closed-loop workers (default 1)\n"
          "  --connections N    handles the workers are spread over (default = clients);\n"
          "                     workers sharing a handle take turns: to load one connection,\n"
          "                     prefer --pipeline\n"
          "  --pipeline D       commands per round per worker, via strata_exec_many (default 1)\n"
          "  --mix M            put | get | mixed | txn (default mixed)\n"
          "  --get-ratio R      share of gets in the mixed mix, 0..1 (default 0.5)\n"
          "  --keys N           key space 'key%012llu', 1..10^12 (default 100000)\n"
          "  --value-size B     bytes per value (default 100)\n"
          "  --duration S       measured seconds (default 10)\n"
          "  --warmup S         seconds run first and not counted (default 1)\n"
          "  --preload          put every key once before measuring, so gets hit\n"
          "  --stale            gets may be served by any replica (STRATA_EXEC_STALE)\n"
          "  --branch B         branch to use (created first if missing)\n"
          "  --branches N       create branches bench-0..bench-N-1 first (if missing);\n"
          "                     worker i uses bench-(i mod N); --preload fills each\n"
          "                     (default 0: one branch, --branch or the server's default)\n"
          "  --seed N           PRNG seed (default 1)\n"
          "  --json             print one JSON object instead of text\n"
          "mem: opens a separate in-process engine per connection: a multi-connection mem:\n"
          "run measures independent engines side by side.\n"
          "Exit status: 0 if any op succeeded, 1 if none did or setup failed, 2 on bad usage.\n",
          f);
}

static void die_usage(const char *flag, const char *val, const char *why)
{
    if (val)
        fprintf(stderr, "strata-bench: %s '%s': %s\n", flag, val, why);
    else
        fprintf(stderr, "strata-bench: %s: %s\n", flag, why);
    exit(2);
}

static uint64_t parse_u64(const char *flag, const char *v, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (*v == '\0' || *v == '-' || *end != '\0' || errno || n < lo || n > hi) {
        char why[96];
        snprintf(why, sizeof why, "expected an integer in %llu..%llu", (unsigned long long)lo,
                 (unsigned long long)hi);
        die_usage(flag, v, why);
    }
    return n;
}

static double parse_double(const char *flag, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || errno || !(d >= lo && d <= hi)) {
        char why[96];
        snprintf(why, sizeof why, "expected a number in %g..%g", lo, hi);
        die_usage(flag, v, why);
    }
    return d;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    static const char *const valued[] = {
        "--uri",       "--clients", "--connections", "--pipeline", "--mix",
        "--get-ratio", "--keys",    "--value-size",  "--duration", "--warmup",
        "--branch",    "--seed",    "--branches",    NULL};
    *o = (struct opts){.uri = DEFAULT_URI,
                       .clients = 1,
                       .pipeline = 1,
                       .mix = MIX_MIXED,
                       .get_ratio = 0.5,
                       .keys = 100000,
                       .value_size = 100,
                       .duration = 10,
                       .warmup = 1,
                       .seed = 1};
    bool mix_set = false, ratio_set = false;
    const char *ratio_arg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--preload") == 0) {
            o->preload = true;
            continue;
        }
        if (strcmp(a, "--stale") == 0) {
            o->stale = true;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        /* Every other flag takes a value: "--flag V" or "--flag=V". */
        char flag[32];
        const char *v;
        const char *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) != 0 || (eq ? (size_t)(eq - a) : strlen(a)) >= sizeof flag) {
            fprintf(stderr, "strata-bench: unknown argument '%s' (see --help)\n", a);
            exit(2);
        }
        if (eq)
            snprintf(flag, sizeof flag, "%.*s", (int)(eq - a), a);
        else
            snprintf(flag, sizeof flag, "%s", a);
        size_t f = 0;
        while (valued[f] && strcmp(flag, valued[f]) != 0)
            f++;
        if (valued[f] == NULL) {
            fprintf(stderr, "strata-bench: unknown option '%s' (see --help)\n", flag);
            exit(2);
        }
        if (eq) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc)
                die_usage(flag, NULL, "needs a value");
            v = argv[++i];
        }
        if (strcmp(flag, "--uri") == 0) {
            o->uri = v;
        } else if (strcmp(flag, "--clients") == 0) {
            o->clients = (unsigned)parse_u64(flag, v, 1, MAX_CLIENTS);
        } else if (strcmp(flag, "--connections") == 0) {
            o->connections = (unsigned)parse_u64(flag, v, 1, MAX_CLIENTS);
        } else if (strcmp(flag, "--pipeline") == 0) {
            o->pipeline = (unsigned)parse_u64(flag, v, 1, MAX_PIPELINE);
        } else if (strcmp(flag, "--mix") == 0) {
            size_t m = 0;
            while (m < 4 && strcmp(v, mix_names[m]) != 0)
                m++;
            if (m == 4)
                die_usage(flag, v, "expected put, get, mixed or txn");
            o->mix = (enum mix)m;
            mix_set = true;
        } else if (strcmp(flag, "--get-ratio") == 0) {
            o->get_ratio = parse_double(flag, v, 0, 1);
            ratio_set = true;
            ratio_arg = v;
        } else if (strcmp(flag, "--keys") == 0) {
            o->keys = parse_u64(flag, v, 1, MAX_KEYS);
        } else if (strcmp(flag, "--value-size") == 0) {
            o->value_size = (size_t)parse_u64(flag, v, 0, MAX_VALUE_SIZE);
        } else if (strcmp(flag, "--duration") == 0) {
            o->duration = parse_double(flag, v, 0.001, MAX_SECONDS);
        } else if (strcmp(flag, "--warmup") == 0) {
            o->warmup = parse_double(flag, v, 0, MAX_SECONDS);
        } else if (strcmp(flag, "--branch") == 0) {
            if (*v == '\0')
                die_usage(flag, v, "must not be empty");
            o->branch = v;
        } else if (strcmp(flag, "--branches") == 0) {
            o->branches = (unsigned)parse_u64(flag, v, 0, MAX_BRANCHES);
        } else {
            o->seed = parse_u64(flag, v, 0, UINT64_MAX);
        }
    }
    if (o->branch && o->branches)
        die_usage("--branches", NULL, "names its own branches: drop --branch");
    if (ratio_set && mix_set && o->mix != MIX_MIXED)
        die_usage("--get-ratio", ratio_arg, "applies to --mix mixed only");
    if (o->connections == 0)
        o->connections = o->clients;
    if (o->connections > o->clients) {
        char v[16];
        snprintf(v, sizeof v, "%u", o->connections);
        die_usage("--connections", v, "is more than --clients: a connection would sit idle");
    }
    if (o->stale && (o->mix == MIX_PUT || o->mix == MIX_TXN))
        die_usage("--stale", mix_names[o->mix],
                  "applies to plain gets (--mix get or mixed); transactions read at their "
                  "snapshot");
}

/* ---- Histogram ------------------------------------------------------------------------
 * Log-linear buckets over nanoseconds: values below SUB are exact; above, each power of
 * two [SUB*2^k, SUB*2^(k+1)) is split into SUB buckets of width 2^k. */

#define H_SUB_BITS 7
#define H_SUB (1u << H_SUB_BITS)
#define H_KMAX 40 /* the top bucket ends near 2^48 ns (78 hours); larger values clamp */
#define H_BUCKETS (H_SUB * (H_KMAX + 2))

struct hist {
    uint64_t total, sum, min, max;
    uint64_t counts[H_BUCKETS];
};

static size_t hist_index(uint64_t v)
{
    if (v < H_SUB)
        return (size_t)v;
    unsigned k = (unsigned)(63 - __builtin_clzll(v)) - H_SUB_BITS;
    if (k > H_KMAX)
        return H_BUCKETS - 1;
    return H_SUB + (size_t)k * H_SUB + (size_t)((v >> k) - H_SUB);
}

/* The largest value that lands in bucket i. */
static uint64_t hist_bucket_high(size_t i)
{
    if (i < H_SUB)
        return i;
    unsigned k = (unsigned)((i - H_SUB) / H_SUB);
    uint64_t low = (uint64_t)(H_SUB + (i - H_SUB) % H_SUB) << k;
    return low + ((uint64_t)1 << k) - 1;
}

static void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    if (h->total == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->total++;
    h->sum += v;
}

static void hist_merge(struct hist *dst, const struct hist *src)
{
    if (src->total == 0)
        return;
    if (dst->total == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->total += src->total;
    dst->sum += src->sum;
    for (size_t i = 0; i < H_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
}

/* The value at quantile q (0..1): the smallest bucket holding the ceil(q*total)-th value,
 * reported as that bucket's highest value, clamped to the recorded min/max. */
static uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->total == 0)
        return 0;
    double want = q * (double)h->total;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(i);
            return v > h->max ? h->max : v < h->min ? h->min : v;
        }
    }
    return h->max;
}

/* ---- Outcomes ------------------------------------------------------------------------- */

enum kind { K_GET, K_PUT, K_TXN, K_COUNT };
static const char *const kind_names[] = {"get", "put", "txn"};

#define CODE_SLOTS (STRATA_CODE_COUNT + 1) /* the last slot holds codes outside the table */

struct tally {
    struct hist h[K_COUNT];
    uint64_t ok[K_COUNT];
    uint64_t conflicts, unknown, misses;
    uint64_t by_code[CODE_SLOTS]; /* errors other than CONFLICT and UNKNOWN_OUTCOME */
    char first_msg[CODE_SLOTS][ERR_MSG_MAX];
};

static size_t code_slot(int code)
{
    return code > 0 && code < STRATA_CODE_COUNT ? (size_t)code : STRATA_CODE_COUNT;
}

static void tally_op(struct tally *t, enum kind k, int code, const struct err *e, uint64_t lat_ns)
{
    size_t s = code_slot(code);
    if (code != 0 && t->first_msg[s][0] == '\0')
        snprintf(t->first_msg[s], ERR_MSG_MAX, "%s", e->msg[0] ? e->msg : err_message(code));
    if (code == 0) {
        t->ok[k]++;
        hist_record(&t->h[k], lat_ns);
    } else if (code == STRATA_CONFLICT) {
        t->conflicts++;
        hist_record(&t->h[k], lat_ns);
    } else if (code == STRATA_UNKNOWN_OUTCOME) {
        t->unknown++;
    } else {
        t->by_code[s]++;
    }
}

static void tally_merge(struct tally *dst, const struct tally *src)
{
    for (int k = 0; k < K_COUNT; k++) {
        hist_merge(&dst->h[k], &src->h[k]);
        dst->ok[k] += src->ok[k];
    }
    dst->conflicts += src->conflicts;
    dst->unknown += src->unknown;
    dst->misses += src->misses;
    for (size_t s = 0; s < CODE_SLOTS; s++) {
        dst->by_code[s] += src->by_code[s];
        if (dst->first_msg[s][0] == '\0')
            memcpy(dst->first_msg[s], src->first_msg[s], ERR_MSG_MAX);
    }
}

/* ---- Commands -------------------------------------------------------------------------
 * Built with msgpack-c straight into a reusable buffer. A failed append (out of memory) is
 * remembered and checked once the command is complete. */

struct packer {
    msgpack_packer pk;
    struct buf *b;
    bool oom;
};

static int packer_write(void *data, const char *p, size_t n)
{
    struct packer *P = data;
    if (buf_append(P->b, p, n)) {
        P->oom = true;
        return -1;
    }
    return 0;
}

static void packer_start(struct packer *P, struct buf *b)
{
    buf_reset(b);
    P->b = b;
    P->oom = false;
    msgpack_packer_init(&P->pk, P, packer_write);
}

static void packer_check(const struct packer *P)
{
    if (P->oom) {
        fputs("strata-bench: out of memory building a command\n", stderr);
        exit(1);
    }
}

static void pk_str(struct packer *P, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(&P->pk, n);
    msgpack_pack_str_body(&P->pk, s, n);
}

/* Map header and "op"; `nargs` more pairs follow, plus "branch" when one was chosen. */
static void pk_cmd(struct packer *P, const struct opts *o, const char *op, uint32_t nargs)
{
    msgpack_pack_map(&P->pk, 1 + nargs + (o->branch ? 1 : 0));
    pk_str(P, "op");
    pk_str(P, op);
    if (o->branch) {
        pk_str(P, "branch");
        pk_str(P, o->branch);
    }
}

static void pk_key(struct packer *P, uint64_t k)
{
    char key[32];
    snprintf(key, sizeof key, "key%012llu", (unsigned long long)k);
    pk_str(P, "key");
    pk_str(P, key);
}

static void pk_value(struct packer *P, const uint8_t *value, size_t vlen)
{
    pk_str(P, "value");
    msgpack_pack_bin(&P->pk, vlen);
    msgpack_pack_bin_body(&P->pk, value, vlen);
}

/* A sub-command of txn.commit: no branch (it inherits the commit's). */
static void pk_sub(struct packer *P, const char *op, uint32_t nargs)
{
    msgpack_pack_map(&P->pk, 1 + nargs);
    pk_str(P, "op");
    pk_str(P, op);
}

static void cmd_put(struct buf *b, const struct opts *o, uint64_t k, const uint8_t *v)
{
    struct packer P;
    packer_start(&P, b);
    pk_cmd(&P, o, "kv.put", 2);
    pk_key(&P, k);
    pk_value(&P, v, o->value_size);
    packer_check(&P);
}

/* kv.get, at version `at` when `at_set` (a snapshot may be 0: an empty database). */
static void cmd_get(struct buf *b, const struct opts *o, uint64_t k, bool at_set, uint64_t at)
{
    struct packer P;
    packer_start(&P, b);
    pk_cmd(&P, o, "kv.get", at_set ? 2 : 1);
    pk_key(&P, k);
    if (at_set) {
        pk_str(&P, "at_version");
        msgpack_pack_uint64(&P.pk, at);
    }
    packer_check(&P);
}

static void cmd_txn_begin(struct buf *b, const struct opts *o)
{
    struct packer P;
    packer_start(&P, b);
    pk_cmd(&P, o, "txn.begin", 0);
    packer_check(&P);
}

static void cmd_txn_commit(struct buf *b, const struct opts *o, uint64_t snap, uint64_t k,
                           const uint8_t *v)
{
    struct packer P;
    packer_start(&P, b);
    pk_cmd(&P, o, "txn.commit", 3);
    pk_str(&P, "snapshot");
    msgpack_pack_uint64(&P.pk, snap);
    pk_str(&P, "reads");
    msgpack_pack_array(&P.pk, 1);
    pk_sub(&P, "kv.get", 1);
    pk_key(&P, k);
    pk_str(&P, "ops");
    msgpack_pack_array(&P.pk, 1);
    pk_sub(&P, "kv.put", 2);
    pk_key(&P, k);
    pk_value(&P, v, o->value_size);
    packer_check(&P);
}

static void cmd_batch_put(struct buf *b, const struct opts *o, uint64_t first, uint64_t n,
                          const uint8_t *v)
{
    struct packer P;
    packer_start(&P, b);
    pk_cmd(&P, o, "kv.batch_put", 1);
    pk_str(&P, "items");
    msgpack_pack_array(&P.pk, (uint32_t)n);
    for (uint64_t k = first; k < first + n; k++) {
        char key[32];
        snprintf(key, sizeof key, "key%012llu", (unsigned long long)k);
        msgpack_pack_array(&P.pk, 2);
        pk_str(&P, key);
        msgpack_pack_bin(&P.pk, o->value_size);
        msgpack_pack_bin_body(&P.pk, v, o->value_size);
    }
    packer_check(&P);
}

/* The "snapshot" of a txn.begin result; false when the result has none. */
static bool result_snapshot(const struct buf *r, uint64_t *snap)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object obj;
    size_t off = 0;
    bool found = false;
    if (msgpack_unpack((const char *)r->data, r->len, &off, &z, &obj) == MSGPACK_UNPACK_SUCCESS &&
        obj.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < obj.via.map.size; i++) {
            const msgpack_object_kv *kv = &obj.via.map.ptr[i];
            if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 8 &&
                memcmp(kv->key.via.str.ptr, "snapshot", 8) == 0 &&
                kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                *snap = kv->val.via.u64;
                found = true;
            }
        }
    }
    msgpack_zone_destroy(&z);
    return found;
}

/* Branch i of the run: BRANCH_PREFIX i (formatted into buf) with --branches, else
 * --branch. */
static const char *branch_name(const struct opts *o, unsigned i, char buf[NAME_CAP])
{
    if (o->branches == 0)
        return o->branch;
    snprintf(buf, NAME_CAP, BRANCH_PREFIX "%u", i);
    return buf;
}

/* ---- Connections, workers ------------------------------------------------------------- */

struct conn {
    struct strata *db;
    pthread_mutex_t mu; /* taken around every call when workers share the handle */
    bool shared;
};

struct bench {
    struct opts o;
    struct conn *conns;
    bool mem; /* every handle is its own in-process engine */
    pthread_barrier_t ready, go;
    uint64_t t_measure, t_end; /* monotonic ns, set before `go` */
};

struct worker {
    struct bench *b;
    struct opts o;         /* the run's options, with this worker's branch */
    char branch[NAME_CAP]; /* --branches: BRANCH_PREFIX (id mod N) */
    struct conn *conn;
    uint64_t rng;
    uint8_t *value;
    struct buf *cmds, *results;
    const uint8_t **cmd_ptrs;
    size_t *lens;
    int *codes;
    struct err *errs;
    enum kind *kinds;
    uint64_t *keys, *snaps;
    int *final;             /* txn: outcome code per slot */
    struct err *final_errs; /* txn: its error */
    size_t *live;           /* txn: slots still running, in command order */
    struct tally *t;
    uint64_t last_end; /* monotonic ns of the last counted completion */
    pthread_t thread;
};

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* xorshift64*: fast, per thread, good enough to pick uniform keys. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = sm_calloc(n ? n : 1, size);
    if (p == NULL) {
        fputs("strata-bench: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

/* Execute the first n commands of w->cmds on the worker's handle. */
static void exec_round(struct worker *w, size_t n, unsigned flags)
{
    struct conn *c = w->conn;
    for (size_t i = 0; i < n; i++) {
        buf_reset(&w->results[i]);
        err_clear(&w->errs[i]);
        w->cmd_ptrs[i] = w->cmds[i].data;
        w->lens[i] = w->cmds[i].len;
    }
    if (c->shared)
        pthread_mutex_lock(&c->mu);
    if (n == 1) {
        w->codes[0] = strata_exec_flags(c->db, w->cmd_ptrs[0], w->lens[0], flags, &w->results[0],
                                        &w->errs[0]);
    } else {
        int rc =
            strata_exec_many(c->db, w->cmd_ptrs, w->lens, n, flags, w->results, w->codes, w->errs);
        for (size_t i = 0; rc && i < n; i++)
            w->codes[i] = err_set(&w->errs[i], rc, "strata_exec_many attempted nothing");
    }
    if (c->shared)
        pthread_mutex_unlock(&c->mu);
}

/* One round of plain puts and gets. */
static void round_kv(struct worker *w)
{
    const struct opts *o = &w->o;
    size_t d = o->pipeline;
    /* Compare against a 53-bit draw so --get-ratio 1 means every op is a get. */
    uint64_t cut = (uint64_t)(o->get_ratio * (double)(1ULL << 53));
    for (size_t i = 0; i < d; i++) {
        bool get = o->mix == MIX_GET || (o->mix == MIX_MIXED && (rng_next(&w->rng) >> 11) < cut);
        w->kinds[i] = get ? K_GET : K_PUT;
        w->keys[i] = rng_next(&w->rng) % o->keys;
        if (get)
            cmd_get(&w->cmds[i], o, w->keys[i], false, 0);
        else
            cmd_put(&w->cmds[i], o, w->keys[i], w->value);
    }
    uint64_t t0 = clock_mono_ns();
    exec_round(w, d, o->stale ? STRATA_EXEC_STALE : 0);
    uint64_t t1 = clock_mono_ns();
    if (t1 < w->b->t_measure)
        return; /* warmup */
    w->last_end = t1;
    for (size_t i = 0; i < d; i++) {
        tally_op(w->t, w->kinds[i], w->codes[i], &w->errs[i], t1 - t0);
        /* A kv.get of an absent key answers nil (0xc0). */
        if (w->kinds[i] == K_GET && w->codes[i] == 0 && w->results[i].len == 1 &&
            w->results[i].data[0] == 0xc0)
            w->t->misses++;
    }
}

/* Run the live txn slots' commands (w->cmds[j] belongs to slot w->live[j]) and retire
 * the slots that failed, keeping their error; returns how many are still live. */
static size_t txn_step(struct worker *w, size_t n)
{
    if (n == 0)
        return 0;
    exec_round(w, n, 0);
    size_t kept = 0;
    for (size_t j = 0; j < n; j++) {
        size_t s = w->live[j];
        if (w->codes[j]) {
            w->final[s] = w->codes[j];
            w->final_errs[s] = w->errs[j];
        } else {
            w->live[kept++] = s;
        }
    }
    return kept;
}

/* One round of --pipeline transactions in lock step: begins, reads, commits. Each
 * transaction's result position follows its slot's place in w->live. */
static void round_txn(struct worker *w)
{
    const struct opts *o = &w->o;
    size_t d = o->pipeline, n = d;
    for (size_t i = 0; i < d; i++) {
        w->live[i] = i;
        w->final[i] = 0;
        w->keys[i] = rng_next(&w->rng) % o->keys;
        cmd_txn_begin(&w->cmds[i], o);
    }
    uint64_t t0 = clock_mono_ns();
    n = txn_step(w, n);
    /* A begin without a snapshot is the server's fault: fail that slot, keep the rest. */
    size_t kept = 0;
    for (size_t j = 0; j < n; j++) {
        size_t s = w->live[j];
        if (!result_snapshot(&w->results[j], &w->snaps[s]))
            w->final[s] = err_set(&w->final_errs[s], STRATA_PROTOCOL_ERROR,
                                  "txn.begin returned no \"snapshot\" version");
        else
            w->live[kept++] = s;
    }
    for (size_t j = 0; j < kept; j++)
        cmd_get(&w->cmds[j], o, w->keys[w->live[j]], true, w->snaps[w->live[j]]);
    n = txn_step(w, kept);
    for (size_t j = 0; j < n; j++) {
        size_t s = w->live[j];
        cmd_txn_commit(&w->cmds[j], o, w->snaps[s], w->keys[s], w->value);
    }
    txn_step(w, n);
    uint64_t t1 = clock_mono_ns();
    if (t1 < w->b->t_measure)
        return;
    w->last_end = t1;
    for (size_t i = 0; i < d; i++)
        tally_op(w->t, K_TXN, w->final[i], &w->final_errs[i], t1 - t0);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct bench *b = w->b;
    pthread_barrier_wait(&b->ready);
    pthread_barrier_wait(&b->go);
    for (;;) {
        if (clock_mono_ns() >= b->t_end)
            break;
        if (b->o.mix == MIX_TXN)
            round_txn(w);
        else
            round_kv(w);
    }
    return NULL;
}

static void worker_init(struct worker *w, struct bench *b, unsigned id)
{
    size_t d = b->o.pipeline;
    w->b = b;
    w->o = b->o;
    if (b->o.branches)
        w->o.branch = branch_name(&b->o, id % b->o.branches, w->branch);
    w->conn = &b->conns[id % b->o.connections];
    uint64_t s = b->o.seed + id;
    w->rng = splitmix64(&s);
    if (w->rng == 0)
        w->rng = 1; /* xorshift's one fixed point */
    w->value = xcalloc(b->o.value_size, 1);
    for (size_t i = 0; i < b->o.value_size; i++)
        w->value[i] = (uint8_t)rng_next(&w->rng);
    w->cmds = xcalloc(d, sizeof *w->cmds);
    w->results = xcalloc(d, sizeof *w->results);
    for (size_t i = 0; i < d; i++) {
        buf_init(&w->cmds[i]);
        buf_init(&w->results[i]);
    }
    w->cmd_ptrs = xcalloc(d, sizeof *w->cmd_ptrs);
    w->lens = xcalloc(d, sizeof *w->lens);
    w->codes = xcalloc(d, sizeof *w->codes);
    w->errs = xcalloc(d, sizeof *w->errs);
    w->kinds = xcalloc(d, sizeof *w->kinds);
    w->keys = xcalloc(d, sizeof *w->keys);
    w->snaps = xcalloc(d, sizeof *w->snaps);
    w->final = xcalloc(d, sizeof *w->final);
    w->final_errs = xcalloc(d, sizeof *w->final_errs);
    w->live = xcalloc(d, sizeof *w->live);
    w->t = xcalloc(1, sizeof *w->t);
}

static void worker_free(struct worker *w)
{
    for (size_t i = 0; w->cmds && i < w->b->o.pipeline; i++) {
        buf_close(&w->cmds[i]);
        buf_close(&w->results[i]);
    }
    sm_free(w->value);
    sm_free(w->cmds);
    sm_free(w->results);
    sm_free(w->cmd_ptrs);
    sm_free(w->lens);
    sm_free(w->codes);
    sm_free(w->errs);
    sm_free(w->kinds);
    sm_free(w->keys);
    sm_free(w->snaps);
    sm_free(w->final);
    sm_free(w->final_errs);
    sm_free(w->live);
    sm_free(w->t);
}

/* ---- Setup: branch and preload -------------------------------------------------------- */

/* Create the run's branches on one handle unless they exist, CREATE_PIPELINE per
 * strata_exec_many call: on a cluster the creates queued together share one placement
 * write. On failure *failed names the first branch that failed (it may point into
 * `name`). */
static int ensure_branches(const struct opts *o, struct strata *db, char name[NAME_CAP],
                           const char **failed, struct err *err)
{
    unsigned total = o->branches ? o->branches : 1;
    struct buf cmds[CREATE_PIPELINE], res[CREATE_PIPELINE];
    const uint8_t *ptrs[CREATE_PIPELINE];
    size_t lens[CREATE_PIPELINE];
    int codes[CREATE_PIPELINE];
    struct err errs[CREATE_PIPELINE];
    for (size_t i = 0; i < CREATE_PIPELINE; i++) {
        buf_init(&cmds[i]);
        buf_init(&res[i]);
    }
    int rc = 0;
    for (unsigned first = 0; first < total && rc == 0; first += CREATE_PIPELINE) {
        size_t n = total - first < CREATE_PIPELINE ? total - first : CREATE_PIPELINE;
        for (size_t i = 0; i < n; i++) {
            char nm[NAME_CAP];
            struct packer P;
            packer_start(&P, &cmds[i]);
            msgpack_pack_map(&P.pk, 2);
            pk_str(&P, "op");
            pk_str(&P, "branch.create");
            pk_str(&P, "name");
            pk_str(&P, branch_name(o, first + (unsigned)i, nm));
            packer_check(&P);
            ptrs[i] = cmds[i].data;
            lens[i] = cmds[i].len;
            buf_reset(&res[i]);
            err_clear(&errs[i]);
        }
        rc = strata_exec_many(db, ptrs, lens, n, 0, res, codes, errs);
        if (rc) {
            err_set(err, rc, "strata_exec_many attempted nothing");
            *failed = branch_name(o, first, name);
        }
        for (size_t i = 0; i < n && rc == 0; i++)
            if (codes[i] && codes[i] != STRATA_BRANCH_EXISTS) {
                rc = codes[i];
                *err = errs[i];
                *failed = branch_name(o, first + (unsigned)i, name);
            }
    }
    for (size_t i = 0; i < CREATE_PIPELINE; i++) {
        buf_close(&cmds[i]);
        buf_close(&res[i]);
    }
    return rc;
}

struct preload {
    const struct opts *o;
    struct strata *db;
    uint64_t first, count;
    int rc;
    struct err err;
    pthread_t thread;
};

/* Put keys [first, first+count) with kv.batch_put, PRELOAD_PIPELINE commands per call. */
static void *preload_main(void *arg)
{
    struct preload *p = arg;
    const struct opts *o = p->o;
    uint64_t chunk = PRELOAD_CHUNK_BYTES / (o->value_size + 32);
    chunk = chunk < 1 ? 1 : chunk > PRELOAD_CHUNK_KEYS ? PRELOAD_CHUNK_KEYS : chunk;
    uint8_t *value = xcalloc(o->value_size, 1);
    memset(value, 'v', o->value_size);
    struct buf cmds[PRELOAD_PIPELINE], results[PRELOAD_PIPELINE];
    const uint8_t *ptrs[PRELOAD_PIPELINE];
    size_t lens[PRELOAD_PIPELINE];
    int codes[PRELOAD_PIPELINE];
    struct err errs[PRELOAD_PIPELINE];
    for (size_t i = 0; i < PRELOAD_PIPELINE; i++) {
        buf_init(&cmds[i]);
        buf_init(&results[i]);
    }
    uint64_t next = p->first, end = p->first + p->count;
    while (next < end && p->rc == 0) {
        size_t n = 0;
        for (; n < PRELOAD_PIPELINE && next < end; n++) {
            uint64_t c = end - next < chunk ? end - next : chunk;
            cmd_batch_put(&cmds[n], o, next, c, value);
            ptrs[n] = cmds[n].data;
            lens[n] = cmds[n].len;
            buf_reset(&results[n]);
            err_clear(&errs[n]);
            next += c;
        }
        int rc = strata_exec_many(p->db, ptrs, lens, n, 0, results, codes, errs);
        if (rc)
            p->rc = err_set(&p->err, rc, "strata_exec_many attempted nothing");
        for (size_t i = 0; i < n && p->rc == 0; i++)
            if (codes[i]) {
                p->rc = codes[i];
                p->err = errs[i];
            }
    }
    for (size_t i = 0; i < PRELOAD_PIPELINE; i++) {
        buf_close(&cmds[i]);
        buf_close(&results[i]);
    }
    sm_free(value);
    return NULL;
}

/* Fill one branch: a mem: handle is its own engine, so each is filled with every key; a
 * server's key space is shared, so the connections split it. `o` names the branch; `p`
 * has one slot per connection. */
static int preload_branch(struct bench *b, const struct opts *o, struct preload *p)
{
    unsigned nc = o->connections;
    int rc = 0;
    for (unsigned c = 0; c < nc; c++) {
        p[c] = (struct preload){.o = o, .db = b->conns[c].db};
        p[c].first = b->mem ? 0 : o->keys * c / nc;
        p[c].count = b->mem ? o->keys : o->keys * (c + 1) / nc - p[c].first;
        if (pthread_create(&p[c].thread, NULL, preload_main, &p[c])) {
            fputs("strata-bench: cannot start a preload thread\n", stderr);
            exit(1);
        }
    }
    for (unsigned c = 0; c < nc; c++) {
        pthread_join(p[c].thread, NULL);
        if (p[c].rc && rc == 0) {
            rc = p[c].rc;
            fprintf(stderr, "strata-bench: preload of branch '%s' failed: %s: %s\n",
                    o->branch ? o->branch : "default", err_name(p[c].err.code), p[c].err.msg);
        }
    }
    return rc;
}

/* Preload the run's branch, or with --branches each of them in turn. */
static int preload_all(struct bench *b, double *secs)
{
    struct preload *p = xcalloc(b->o.connections, sizeof *p);
    uint64_t t0 = clock_mono_ns();
    int rc = 0;
    struct opts bo = b->o;
    char name[NAME_CAP];
    for (unsigned br = 0; br < (b->o.branches ? b->o.branches : 1) && rc == 0; br++) {
        bo.branch = branch_name(&b->o, br, name);
        rc = preload_branch(b, &bo, p);
    }
    *secs = (double)(clock_mono_ns() - t0) / 1e9;
    sm_free(p);
    return rc;
}

/* ---- Report --------------------------------------------------------------------------- */

struct summary {
    struct tally all; /* every worker merged */
    struct hist lat;  /* every kind merged */
    double window_s, preload_s;
    uint64_t ok, errors, attempted;
};

static void summarize(struct summary *s)
{
    memset(&s->lat, 0, sizeof s->lat);
    s->ok = s->errors = 0;
    for (int k = 0; k < K_COUNT; k++) {
        hist_merge(&s->lat, &s->all.h[k]);
        s->ok += s->all.ok[k];
    }
    for (size_t c = 0; c < CODE_SLOTS; c++)
        s->errors += s->all.by_code[c];
    s->attempted = s->ok + s->all.conflicts + s->all.unknown + s->errors;
}

static const double quantiles[] = {0.50, 0.90, 0.99, 0.999};
static const char *const quantile_names[] = {"p50", "p90", "p99", "p99.9"};
static const char *const quantile_keys[] = {"p50", "p90", "p99", "p99_9"};

static double us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

static void print_us(double v)
{
    printf(v < 10 ? "%.2f" : v < 1000 ? "%.1f" : "%.0f", v);
}

static void print_latency(const char *label, const struct hist *h)
{
    /* Pad by characters, not bytes: the label may hold "µ". */
    int extra = 0;
    for (const char *c = label; *c; c++)
        extra += ((unsigned char)*c & 0xc0) == 0x80;
    printf("%-*s", 12 + extra, label);
    if (h->total == 0) {
        printf("-\n");
        return;
    }
    for (size_t q = 0; q < 4; q++) {
        printf("%s ", quantile_names[q]);
        print_us(us(hist_quantile(h, quantiles[q])));
        printf("  ");
    }
    printf("max ");
    print_us(us(h->max));
    printf("  mean ");
    print_us(us(h->sum / h->total));
    printf("\n");
}

static void report_human(const struct bench *b, const struct summary *s)
{
    const struct opts *o = &b->o;
    const struct tally *t = &s->all;
    printf("strata-bench %s  mix %s", o->uri, mix_names[o->mix]);
    if (o->mix == MIX_MIXED)
        printf(" (%g%% gets)", o->get_ratio * 100);
    printf("  clients %u  connections %u  pipeline %u\n", o->clients, o->connections, o->pipeline);
    printf("%-12skeys %llu  value %zu B  seed %llu%s%s%s%s\n", "", (unsigned long long)o->keys,
           o->value_size, (unsigned long long)o->seed, o->preload ? "  preload" : "",
           o->stale ? "  stale" : "", o->branch ? "  branch " : "", o->branch ? o->branch : "");
    if (o->branches)
        printf("%-12s%u: " BRANCH_PREFIX "0.." BRANCH_PREFIX "%u, worker i on " BRANCH_PREFIX
               "(i mod %u)\n",
               "branches", o->branches, o->branches - 1, o->branches);
    if (b->mem && o->connections > 1)
        printf("%-12smem: %u connections = %u independent in-process engines\n", "", o->connections,
               o->connections);
    if (o->preload)
        printf("%-12s%llu keys%s in %.2f s\n", "preload", (unsigned long long)o->keys,
               o->branches ? " in each branch" : "", s->preload_s);
    printf("%-12s%.2f s (after %.2f s warmup)\n", "window", s->window_s, o->warmup);
    printf("%-12s%.0f ops/s  (%llu ok of %llu ops)\n", "throughput", (double)s->ok / s->window_s,
           (unsigned long long)s->ok, (unsigned long long)s->attempted);
    print_latency("latency µs", &s->lat);
    if (o->mix == MIX_MIXED)
        for (int k = K_GET; k <= K_PUT; k++) {
            char label[16];
            snprintf(label, sizeof label, "  %s", kind_names[k]);
            print_latency(label, &t->h[k]);
        }
    printf("%-12sok %llu  conflicts %llu  unknown %llu  errors %llu\n", "outcomes",
           (unsigned long long)s->ok, (unsigned long long)t->conflicts,
           (unsigned long long)t->unknown, (unsigned long long)s->errors);
    if (o->mix == MIX_GET || o->mix == MIX_MIXED)
        printf("%-12s%llu of %llu gets found no value\n", "misses", (unsigned long long)t->misses,
               (unsigned long long)t->ok[K_GET]);
    for (size_t c = 0; c < CODE_SLOTS; c++) {
        uint64_t n = c == STRATA_UNKNOWN_OUTCOME ? t->unknown : t->by_code[c];
        if (n)
            printf("%-12s%s %llu  (first: %s)\n", "  error", err_name((int)c),
                   (unsigned long long)n, t->first_msg[c]);
    }
}

static json_t *json_latency(const struct hist *h)
{
    json_t *j = json_object();
    for (size_t q = 0; q < 4; q++)
        json_object_set_new(j, quantile_keys[q], json_real(us(hist_quantile(h, quantiles[q]))));
    json_object_set_new(j, "max", json_real(us(h->max)));
    json_object_set_new(j, "mean", json_real(h->total ? us(h->sum / h->total) : 0));
    json_object_set_new(j, "count", json_integer((json_int_t)h->total));
    return j;
}

static void report_json(const struct bench *b, const struct summary *s)
{
    const struct opts *o = &b->o;
    const struct tally *t = &s->all;
    json_t *j = json_object();
    json_object_set_new(j, "uri", json_string(o->uri));
    json_object_set_new(j, "mix", json_string(mix_names[o->mix]));
    if (o->mix == MIX_MIXED)
        json_object_set_new(j, "get_ratio", json_real(o->get_ratio));
    json_object_set_new(j, "clients", json_integer(o->clients));
    json_object_set_new(j, "connections", json_integer(o->connections));
    json_object_set_new(j, "independent_engines", json_boolean(b->mem && o->connections > 1));
    json_object_set_new(j, "pipeline", json_integer(o->pipeline));
    json_object_set_new(j, "keys", json_integer((json_int_t)o->keys));
    json_object_set_new(j, "value_size", json_integer((json_int_t)o->value_size));
    json_object_set_new(j, "preload", json_boolean(o->preload));
    if (o->preload)
        json_object_set_new(j, "preload_s", json_real(s->preload_s));
    json_object_set_new(j, "stale", json_boolean(o->stale));
    json_object_set_new(j, "branch", o->branch ? json_string(o->branch) : json_null());
    /* How many branches the workers spread over (1 without --branches). */
    json_object_set_new(j, "branches", json_integer(o->branches ? o->branches : 1));
    if (o->branches)
        json_object_set_new(j, "branch_prefix", json_string(BRANCH_PREFIX));
    json_object_set_new(j, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(j, "warmup_s", json_real(o->warmup));
    json_object_set_new(j, "window_s", json_real(s->window_s));
    json_object_set_new(j, "ops", json_integer((json_int_t)s->attempted));
    json_object_set_new(j, "ok", json_integer((json_int_t)s->ok));
    json_object_set_new(j, "throughput_ops_s", json_real((double)s->ok / s->window_s));
    json_object_set_new(j, "conflicts", json_integer((json_int_t)t->conflicts));
    json_object_set_new(j, "unknown_outcomes", json_integer((json_int_t)t->unknown));
    json_t *errs = json_object(), *msgs = json_object();
    for (size_t c = 0; c < CODE_SLOTS; c++) {
        uint64_t n = c == STRATA_UNKNOWN_OUTCOME ? t->unknown : t->by_code[c];
        if (n == 0)
            continue;
        if (c != STRATA_UNKNOWN_OUTCOME)
            json_object_set_new(errs, err_name((int)c), json_integer((json_int_t)n));
        json_object_set_new(msgs, err_name((int)c), json_string(t->first_msg[c]));
    }
    json_object_set_new(j, "errors", errs);
    json_object_set_new(j, "error_messages", msgs);
    if (o->mix == MIX_GET || o->mix == MIX_MIXED)
        json_object_set_new(j, "get_misses", json_integer((json_int_t)t->misses));
    json_object_set_new(j, "latency_us", json_latency(&s->lat));
    json_t *by = json_object();
    for (int k = 0; k < K_COUNT; k++) {
        if (t->ok[k] == 0 && t->h[k].total == 0)
            continue;
        json_t *e = json_latency(&t->h[k]);
        json_object_set_new(e, "ok", json_integer((json_int_t)t->ok[k]));
        json_object_set_new(by, kind_names[k], e);
    }
    json_object_set_new(j, "by_kind", by);
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (text == NULL) {
        fputs("strata-bench: out of memory writing JSON\n", stderr);
        exit(1);
    }
    puts(text);
    free(text);
    json_decref(j);
}

/* ---- Main ----------------------------------------------------------------------------- */

/* Join every worker, but give up JOIN_GRACE_S after the window: a worker still blocked
 * then means the client library failed to time out, and that must not hang the run. */
static void join_workers(struct worker *ws, unsigned n, uint64_t t_end)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    uint64_t now = clock_mono_ns();
    uint64_t wait_ns = (t_end > now ? t_end - now : 0) + (uint64_t)JOIN_GRACE_S * 1000000000ULL;
    dl.tv_sec += (time_t)(wait_ns / 1000000000ULL);
    dl.tv_nsec += (long)(wait_ns % 1000000000ULL);
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    for (unsigned i = 0; i < n; i++) {
        int rc = pthread_timedjoin_np(ws[i].thread, NULL, &dl);
        if (rc) {
            fprintf(stderr,
                    "strata-bench: worker %u still blocked %d s after the window closed "
                    "(%s); giving up\n",
                    i, JOIN_GRACE_S, strerror(rc));
            fflush(stdout);
            _exit(1);
        }
    }
}

int main(int argc, char **argv)
{
    struct bench b = {0};
    parse_opts(argc, argv, &b.o);
    const struct opts *o = &b.o;
    b.mem = strncmp(o->uri, "mem:", 4) == 0;
    int status = 1;

    b.conns = xcalloc(o->connections, sizeof *b.conns);
    unsigned opened = 0;
    for (; opened < o->connections; opened++) {
        struct conn *c = &b.conns[opened];
        struct err err;
        err_clear(&err);
        int rc = strata_open(o->uri, &c->db, &err);
        if (rc) {
            fprintf(stderr, "strata-bench: cannot open '%s': %s: %s\n", o->uri, err_name(rc),
                    err.msg);
            goto out_close;
        }
        pthread_mutex_init(&c->mu, NULL);
        c->shared = o->clients > o->connections;
    }
    if (o->branch || o->branches) {
        /* Every mem: handle needs its own branches; a server needs them once. */
        for (unsigned c = 0; c < (b.mem ? o->connections : 1); c++) {
            struct err err;
            err_clear(&err);
            char name[NAME_CAP];
            const char *failed = "";
            int rc = ensure_branches(o, b.conns[c].db, name, &failed, &err);
            if (rc) {
                fprintf(stderr, "strata-bench: cannot create branch '%s': %s: %s\n", failed,
                        err_name(rc), err.msg);
                goto out_close;
            }
        }
    }
    struct summary *s = xcalloc(1, sizeof *s);
    if (o->preload && preload_all(&b, &s->preload_s))
        goto out_summary;

    struct worker *ws = xcalloc(o->clients, sizeof *ws);
    pthread_barrier_init(&b.ready, NULL, o->clients + 1);
    pthread_barrier_init(&b.go, NULL, o->clients + 1);
    for (unsigned i = 0; i < o->clients; i++) {
        worker_init(&ws[i], &b, i);
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i])) {
            fprintf(stderr, "strata-bench: cannot start worker thread %u\n", i);
            exit(1);
        }
    }
    /* Everyone is allocated and waiting: fix the clock marks, then release them. */
    pthread_barrier_wait(&b.ready);
    b.t_measure = clock_mono_ns() + (uint64_t)(o->warmup * 1e9);
    b.t_end = b.t_measure + (uint64_t)(o->duration * 1e9);
    pthread_barrier_wait(&b.go);
    join_workers(ws, o->clients, b.t_end);

    uint64_t last = b.t_end;
    for (unsigned i = 0; i < o->clients; i++) {
        tally_merge(&s->all, ws[i].t);
        if (ws[i].last_end > last)
            last = ws[i].last_end;
        worker_free(&ws[i]);
    }
    sm_free(ws);
    pthread_barrier_destroy(&b.ready);
    pthread_barrier_destroy(&b.go);
    s->window_s = (double)(last - b.t_measure) / 1e9;
    summarize(s);
    if (o->json)
        report_json(&b, s);
    else
        report_human(&b, s);
    if (s->ok > 0)
        status = 0;
    else
        fprintf(stderr, "strata-bench: no operation succeeded (%llu attempted)\n",
                (unsigned long long)s->attempted);

out_summary:
    sm_free(s);
out_close:
    for (unsigned c = 0; c < opened; c++) {
        strata_close(b.conns[c].db);
        pthread_mutex_destroy(&b.conns[c].mu);
    }
    sm_free(b.conns);
    return status;
}
