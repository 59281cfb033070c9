/* engine_bench: single-threaded figures for the storage engine through its real entry
 * point, storage_exec() (commands pre-encoded as the wire/log would carry them).
 * Not a test: prints one line per figure (and JSON with --json). See docs/benchmarks.md. */
#include "storage.h"

#include <malloc.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct storage *S;
static int64_t ts;
static struct buf res;
static bool json_out;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int buf_w(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

static void pstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void run(const struct buf *cmd)
{
    struct err err;
    buf_reset(&res);
    if (storage_exec(S, cmd->data, cmd->len, ++ts, &res, &err)) {
        fprintf(stderr, "engine_bench: command failed: %s: %s\n", err_name(err.code), err.msg);
        exit(1);
    }
}

static void report(const char *name, double value, const char *unit, const char *target)
{
    if (json_out)
        printf("{\"name\":\"%s\",\"value\":%.3f,\"unit\":\"%s\",\"target\":\"%s\"}\n", name, value,
               unit, target);
    else
        printf("%-44s %14.1f %-8s (target %s)\n", name, value, unit, target);
    fflush(stdout);
}

/* A put/get command template with a 16-byte key at a known offset. */
struct tmpl {
    struct buf b;
    size_t key_off;
};

/* `extra` more map entries are left for the caller to pack after the template's. */
static void make_kv_n(struct tmpl *t, const char *op, const char *branch, size_t vlen,
                      uint32_t extra)
{
    buf_init(&t->b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &t->b, buf_w);
    msgpack_pack_map(&pk, (vlen ? 4 : 3) + extra);
    pstr(&pk, "op");
    pstr(&pk, op);
    pstr(&pk, "branch");
    pstr(&pk, branch);
    pstr(&pk, "key");
    msgpack_pack_str(&pk, 16);
    t->key_off = t->b.len;
    msgpack_pack_str_body(&pk, "0000000000000000", 16);
    if (vlen) {
        char *v = malloc(vlen);
        memset(v, 'v', vlen);
        pstr(&pk, "value");
        msgpack_pack_str(&pk, vlen);
        msgpack_pack_str_body(&pk, v, vlen);
        free(v);
    }
}

static void make_kv(struct tmpl *t, const char *op, const char *branch, size_t vlen)
{
    make_kv_n(t, op, branch, vlen, 0);
}

/* Key i as "k%015llu", written directly (snprintf would dominate the loop). */
static void set_key(struct tmpl *t, uint64_t i)
{
    uint8_t *k = t->b.data + t->key_off;
    k[0] = 'k';
    for (int d = 15; d >= 1; d--) {
        k[d] = (uint8_t)('0' + i % 10);
        i /= 10;
    }
}

static uint64_t rng = 88172645463325252ull;
static uint64_t xr(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void simple(struct buf *b, const char *json)
{
    buf_reset(b);
    struct err err;
    if (storage_json_to_value(json, strlen(json), b, &err)) {
        fprintf(stderr, "bad bench command %s\n", json);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    uint64_t n = 1000000, nvec = 100000;
    int dim = 384;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json_out = true;
        else if (strcmp(argv[i], "--keys") == 0 && i + 1 < argc)
            n = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--vectors") == 0 && i + 1 < argc)
            nvec = strtoull(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: engine_bench [--json] [--keys N] [--vectors N]\n");
            return 2;
        }
    }
    buf_init(&res);
    if (storage_new(NULL, &S))
        return 1;
    struct tmpl put, get;
    make_kv(&put, "kv.put", "default", 100);
    make_kv(&get, "kv.get", "default", 0);

    /* put: n sequentialy numbered keys, 16 B key, 100 B value. */
    struct mallinfo2 m0 = mallinfo2();
    double t0 = now_s();
    for (uint64_t i = 0; i < n; i++) {
        set_key(&put, i);
        run(&put.b);
    }
    double t1 = now_s();
    struct mallinfo2 m1 = mallinfo2();
    report("put (16 B key, 100 B value)", (double)n / (t1 - t0), "ops/s", ">= 1M/s");
    /* uordblks misses mmapped blocks (large arrays): add hblkhd. */
    double per_key = (double)((m1.uordblks + m1.hblkhd) - (m0.uordblks + m0.hblkhd)) / (double)n;
    report("memory per key beyond key+value bytes", per_key - 116.0, "B", "<= 120 B");

    /* get: random existing keys. */
    t0 = now_s();
    for (uint64_t i = 0; i < n; i++) {
        set_key(&get, xr() % n);
        run(&get.b);
    }
    t1 = now_s();
    report("get (random, existing)", (double)n / (t1 - t0), "ops/s", ">= 2M/s");

    /* list: prefix covering exactly 100 keys. */
    struct buf cmd;
    buf_init(&cmd);
    uint64_t nl = 20000;
    t0 = now_s();
    for (uint64_t i = 0; i < nl; i++) {
        char j[160];
        snprintf(j, sizeof j, "{\"op\":\"kv.list\",\"prefix\":\"k%013llu\",\"limit\":100}",
                 (unsigned long long)(xr() % (n / 100)));
        simple(&cmd, j);
        run(&cmd);
    }
    t1 = now_s();
    report("list (prefix, 100 keys)", (double)nl / (t1 - t0), "ops/s", "-");

    /* fork of the n-key branch. */
    simple(&cmd, "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"f1\"}");
    t0 = now_s();
    run(&cmd);
    t1 = now_s();
    report("fork of the whole branch", (t1 - t0) * 1e6, "us", "<= 1 ms");

    /* get through a fork chain 10 levels deep (each level has its own write). */
    char prev[16] = "default";
    for (int d = 1; d <= 10; d++) {
        char j[200];
        snprintf(j, sizeof j, "{\"op\":\"branch.fork\",\"source\":\"%s\",\"name\":\"d%d\"}", prev,
                 d);
        simple(&cmd, j);
        run(&cmd);
        snprintf(prev, sizeof prev, "d%d", d);
        snprintf(j, sizeof j, "{\"op\":\"kv.put\",\"branch\":\"%s\",\"key\":\"own\",\"value\":1}",
                 prev);
        simple(&cmd, j);
        run(&cmd);
    }
    struct tmpl dget;
    make_kv(&dget, "kv.get", "d10", 0);
    uint64_t nd = n < 1000000 ? n : 1000000;
    t0 = now_s();
    for (uint64_t i = 0; i < nd; i++) {
        set_key(&dget, xr() % n);
        run(&dget.b);
    }
    t1 = now_s();
    report("get on a fork 10 levels deep", (double)nd / (t1 - t0), "ops/s", "-");

    /* merge of a fork with 1k (then 10k) changed keys into the n-key parent: the cost
     * should follow the number of changes, not the branch size. */
    for (int round = 0; round < 2; round++) {
        uint64_t changes = round ? 10000 : 1000;
        simple(&cmd, round ? "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"m2\"}"
                           : "{\"op\":\"branch.fork\",\"source\":\"default\",\"name\":\"m\"}");
        run(&cmd);
        struct tmpl mp2;
        make_kv(&mp2, "kv.put", round ? "m2" : "m", 100);
        for (uint64_t i = 0; i < changes; i++) {
            set_key(&mp2, xr() % n);
            run(&mp2.b);
        }
        buf_close(&mp2.b);
        simple(&cmd, round ? "{\"op\":\"branch.merge\",\"source\":\"m2\",\"target\":\"default\"}"
                           : "{\"op\":\"branch.merge\",\"source\":\"m\",\"target\":\"default\"}");
        t0 = now_s();
        run(&cmd);
        t1 = now_s();
        report(round ? "merge of a fork with 10k changed keys" : "merge of a fork with 1k changed keys",
               (t1 - t0) * 1e3, "ms", "prop. to changes");
    }

    /* vector top-10 over nvec x dim cosine. */
    simple(&cmd, "{\"op\":\"vector.create_collection\",\"collection\":\"emb\",\"dimension\":384,"
                 "\"metric\":\"cosine\"}");
    run(&cmd);
    float *v = malloc(sizeof(float) * (size_t)dim);
    msgpack_packer pk;
    for (uint64_t i = 0; i < nvec; i++) {
        for (int d = 0; d < dim; d++)
            v[d] = (float)((double)(xr() % 20000) / 10000.0 - 1.0);
        buf_reset(&cmd);
        msgpack_packer_init(&pk, &cmd, buf_w);
        msgpack_pack_map(&pk, 5);
        pstr(&pk, "op");
        pstr(&pk, "vector.upsert");
        pstr(&pk, "collection");
        pstr(&pk, "emb");
        pstr(&pk, "key");
        char k[24];
        snprintf(k, sizeof k, "v%llu", (unsigned long long)i);
        pstr(&pk, k);
        pstr(&pk, "vector");
        msgpack_pack_bin(&pk, sizeof(float) * (size_t)dim);
        msgpack_pack_bin_body(&pk, v, sizeof(float) * (size_t)dim);
        pstr(&pk, "metadata");
        msgpack_pack_map(&pk, 1);
        pstr(&pk, "group");
        msgpack_pack_int(&pk, (int)(i % 10));
        run(&cmd);
    }
    buf_reset(&cmd);
    msgpack_packer_init(&pk, &cmd, buf_w);
    msgpack_pack_map(&pk, 4);
    pstr(&pk, "op");
    pstr(&pk, "vector.query");
    pstr(&pk, "collection");
    pstr(&pk, "emb");
    pstr(&pk, "k");
    msgpack_pack_int(&pk, 10);
    pstr(&pk, "vector");
    msgpack_pack_bin(&pk, sizeof(float) * (size_t)dim);
    msgpack_pack_bin_body(&pk, v, sizeof(float) * (size_t)dim);
    run(&cmd); /* warm-up (builds any derived index) */
    int nq = 20;
    t0 = now_s();
    for (int i = 0; i < nq; i++)
        run(&cmd);
    t1 = now_s();
    report("vector top-10, cosine", (t1 - t0) * 1e3 / nq, "ms/query", "<= 30 ms");
    free(v);

    /* put with an idempotency key (docs/commands.md §17): the same puts, each carrying
     * [client, seq, ack = seq, false] — one client writing one command at a time, so
     * the table holds one answer — against the same puts without it, each into a fresh
     * engine after the runs above (so both find the allocator warm). seq and ack are
     * packed as uint64 above 2^32 (msgpack's 9-byte form), so they can be rewritten in
     * place. */
    struct tmpl kput;
    make_kv_n(&kput, "kv.put", "default", 100, 1);
    msgpack_packer_init(&pk, &kput.b, buf_w);
    pstr(&pk, "idem");
    msgpack_pack_array(&pk, 4);
    static const uint8_t client[16] = "bench-client-id";
    msgpack_pack_bin(&pk, sizeof client);
    msgpack_pack_bin_body(&pk, client, sizeof client);
    size_t seq_off = kput.b.len + 1;
    msgpack_pack_uint64(&pk, 1ull << 40);
    size_t ack_off = kput.b.len + 1;
    msgpack_pack_uint64(&pk, 1ull << 40);
    msgpack_pack_false(&pk);
    for (int keyed = 0; keyed < 2; keyed++) {
        storage_free(S);
        if (storage_new(NULL, &S))
            return 1;
        t0 = now_s();
        for (uint64_t i = 0; i < n; i++) {
            if (keyed) {
                set_key(&kput, i);
                put_be64(kput.b.data + seq_off, (1ull << 40) + i);
                put_be64(kput.b.data + ack_off, (1ull << 40) + i);
                run(&kput.b);
            } else {
                set_key(&put, i);
                run(&put.b);
            }
        }
        t1 = now_s();
        report(keyed ? "put with an idempotency key (fresh engine)" : "put again (fresh engine)",
               (double)n / (t1 - t0), "ops/s", "-");
    }
    buf_close(&kput.b);
    buf_close(&put.b);
    buf_close(&get.b);
    buf_close(&cmd);
    buf_close(&res);
    storage_free(S);
    return 0;
}
