/* Standalone benchmark of vector.query: exact top-k over N random D-dimensional vectors.
 * Not built by CMake; build against a configured build tree:
 *   cc -std=c11 -O2 -D_GNU_SOURCE -Istorage -Icommon tests/bench/vector_bench.c \
 *      build/storage/libstrata_storage.a build/common/libstrata_common.a \
 *      $(pkg-config --libs msgpack liblz4 libcrypto jansson) -lm -o build/vector_bench
 *   build/vector_bench [n=100000] [dim=384] [k=10] [queries=20]
 * Prints per-query CPU time (min / median / max) of the whole storage_exec call. */
#include "storage.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static int pack_write(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

static void pstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void run(struct storage *s, struct buf *cmd, struct buf *res)
{
    struct err err;
    buf_reset(res);
    int rc = storage_exec(s, cmd->data, cmd->len, 1, res, &err);
    if (rc) {
        fprintf(stderr, "command failed: %s\n", err.msg);
        exit(1);
    }
}

/* Thread CPU time: the machine may be shared, and the query is single-threaded. */
static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 100000;
    unsigned dim = argc > 2 ? (unsigned)atoi(argv[2]) : 384;
    unsigned k = argc > 3 ? (unsigned)atoi(argv[3]) : 10;
    unsigned nq = argc > 4 ? (unsigned)atoi(argv[4]) : 20;
    struct storage *s;
    if (storage_new(NULL, &s))
        return 1;
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, pack_write);

    msgpack_pack_map(&pk, 4);
    pstr(&pk, "op");
    pstr(&pk, "vector.create_collection");
    pstr(&pk, "collection");
    pstr(&pk, "bench");
    pstr(&pk, "dimension");
    msgpack_pack_uint32(&pk, dim);
    pstr(&pk, "metric");
    pstr(&pk, "cosine");
    run(s, &cmd, &res);

    float *v = malloc(dim * sizeof *v);
    double t0 = now_ms();
    for (unsigned i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof key, "doc-%07u", i);
        for (unsigned j = 0; j < dim; j++)
            v[j] = frand();
        buf_reset(&cmd);
        msgpack_pack_map(&pk, 5);
        pstr(&pk, "op");
        pstr(&pk, "vector.upsert");
        pstr(&pk, "collection");
        pstr(&pk, "bench");
        pstr(&pk, "key");
        pstr(&pk, key);
        pstr(&pk, "vector");
        msgpack_pack_bin_with_body(&pk, v, dim * sizeof *v); /* little-endian host */
        pstr(&pk, "metadata");
        msgpack_pack_map(&pk, 1);
        pstr(&pk, "group");
        msgpack_pack_uint32(&pk, i % 10);
        run(s, &cmd, &res);
    }
    fprintf(stderr, "loaded %u x %u-d vectors in %.0f ms\n", n, dim, now_ms() - t0);

    for (int filtered = 0; filtered < 2; filtered++) {
        double *ms = malloc(nq * sizeof *ms);
        for (unsigned qi = 0; qi < nq; qi++) {
            for (unsigned j = 0; j < dim; j++)
                v[j] = frand();
            buf_reset(&cmd);
            msgpack_pack_map(&pk, filtered ? 5 : 4);
            pstr(&pk, "op");
            pstr(&pk, "vector.query");
            pstr(&pk, "collection");
            pstr(&pk, "bench");
            pstr(&pk, "k");
            msgpack_pack_uint32(&pk, k);
            pstr(&pk, "vector");
            msgpack_pack_bin_with_body(&pk, v, dim * sizeof *v);
            if (filtered) {
                pstr(&pk, "filter");
                msgpack_pack_map(&pk, 1);
                pstr(&pk, "group");
                msgpack_pack_map(&pk, 1);
                pstr(&pk, "$lt");
                msgpack_pack_uint32(&pk, 3);
            }
            double t = now_ms();
            run(s, &cmd, &res);
            ms[qi] = now_ms() - t;
        }
        qsort(ms, nq, sizeof *ms, cmp_double);
        printf("query%s n=%u dim=%u k=%u: min %.2f ms, median %.2f ms, max %.2f ms\n",
               filtered ? " (filter group<3)" : "", n, dim, k, ms[0], ms[nq / 2], ms[nq - 1]);
        free(ms);
    }
    free(v);
    buf_close(&cmd);
    buf_close(&res);
    storage_free(s);
    return 0;
}
