/* etcd_load: a closed-loop load generator for etcd's v3 HTTP/JSON gateway, shaped like
 * strata-bench so tests/bench/compare.sh can put the two side by side.
 *
 * Model. `--clients N` threads each hold one keep-alive HTTP/1.1 connection (plain
 * socket, TCP_NODELAY) to an endpoint (round-robin over `--endpoints`) and run a closed
 * loop: one request, wait for its response, record the latency, repeat. put = `POST
 * /v3/kv/put {key, value}`; get = `POST /v3/kv/range {key}`, linearizable unless
 * `--serializable`. Keys are "key%012llu", uniform over `--keys` (per-thread xorshift64*),
 * exactly strata-bench's key space; the value is `--value-size` random bytes per thread.
 * Keys and values travel base64-encoded, as the gateway requires (OpenSSL's encoder).
 *
 * Measurement (as strata-bench). The first `--warmup` seconds are not counted; an op is
 * counted when it completes after the warmup; no op starts after the window closes and the
 * window is extended to the last counted completion. Throughput = ok ops / window.
 * Latency percentiles are exact (every ok latency is kept and sorted at the end).
 *
 * `--preload` first writes every key once with `POST /v3/kv/txn` (PRELOAD_BATCH puts per
 * transaction, under etcd's default --max-txn-ops of 128) so that gets hit.
 *
 * Build: cc -O2 -pthread etcd_load.c -lcrypto -ljansson (compare.sh does this). */
#define _GNU_SOURCE
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 1024
#define MAX_ENDPOINTS 16
#define MAX_VALUE_SIZE (1u << 20)
#define PRELOAD_BATCH 100
#define PRELOAD_THREADS 8
#define IO_TIMEOUT_S 10
#define KEY_LEN 15 /* "key%012llu" */

enum mix { MIX_PUT, MIX_GET };

struct opts {
    char endpoints[MAX_ENDPOINTS][128];
    unsigned nendpoints, clients;
    enum mix mix;
    uint64_t keys, seed;
    size_t value_size;
    double duration, warmup;
    bool preload, serializable, json;
};

static void usage(FILE *f)
{
    fputs("usage: etcd_load --endpoints HOST:PORT[,HOST:PORT...] [options]\n"
          "  --mix M            put | get (default put)\n"
          "  --clients N        concurrent closed-loop connections (default 1)\n"
          "  --keys N           key space 'key%012llu' (default 100000)\n"
          "  --value-size B     bytes per value (default 100)\n"
          "  --duration S       measured seconds (default 10)\n"
          "  --warmup S         seconds run first and not counted (default 1)\n"
          "  --preload          put every key once before measuring (txn batches)\n"
          "  --serializable     gets may be served from the local member (default: "
          "linearizable)\n"
          "  --seed N           PRNG seed (default 1)\n"
          "  --json             print one JSON object (strata-bench's field names)\n"
          "Exit status: 0 if any op succeeded, 1 if none did or setup failed, 2 on bad usage.\n",
          f);
}

static void die_usage(const char *flag, const char *val, const char *why)
{
    fprintf(stderr, "etcd_load: %s '%s': %s\n", flag, val ? val : "", why);
    exit(2);
}

static double parse_num(const char *flag, const char *v, double lo, double hi)
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

static void parse_endpoints(struct opts *o, const char *v)
{
    const char *p = v;
    while (*p) {
        size_t l = strcspn(p, ",");
        if (l == 0 || l >= sizeof o->endpoints[0] || o->nendpoints == MAX_ENDPOINTS ||
            memchr(p, ':', l) == NULL)
            die_usage("--endpoints", v, "expected HOST:PORT[,HOST:PORT...] (at most 16)");
        memcpy(o->endpoints[o->nendpoints], p, l);
        o->endpoints[o->nendpoints++][l] = '\0';
        p += l + (p[l] == ',');
    }
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.clients = 1, .keys = 100000, .seed = 1, .value_size = 100,
                       .duration = 10, .warmup = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--preload") == 0) {
            o->preload = true;
            continue;
        } else if (strcmp(a, "--serializable") == 0) {
            o->serializable = true;
            continue;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "etcd_load: unknown or incomplete argument '%s' (see --help)\n", a);
            exit(2);
        }
        const char *v = argv[++i];
        if (strcmp(a, "--endpoints") == 0)
            parse_endpoints(o, v);
        else if (strcmp(a, "--mix") == 0) {
            if (strcmp(v, "put") == 0)
                o->mix = MIX_PUT;
            else if (strcmp(v, "get") == 0)
                o->mix = MIX_GET;
            else
                die_usage(a, v, "expected put or get");
        } else if (strcmp(a, "--clients") == 0)
            o->clients = (unsigned)parse_num(a, v, 1, MAX_CLIENTS);
        else if (strcmp(a, "--keys") == 0)
            o->keys = (uint64_t)parse_num(a, v, 1, 1e12);
        else if (strcmp(a, "--value-size") == 0)
            o->value_size = (size_t)parse_num(a, v, 0, MAX_VALUE_SIZE);
        else if (strcmp(a, "--duration") == 0)
            o->duration = parse_num(a, v, 0.001, 86400);
        else if (strcmp(a, "--warmup") == 0)
            o->warmup = parse_num(a, v, 0, 86400);
        else if (strcmp(a, "--seed") == 0)
            o->seed = (uint64_t)parse_num(a, v, 0, 1e18);
        else {
            fprintf(stderr, "etcd_load: unknown option '%s' (see --help)\n", a);
            exit(2);
        }
    }
    if (o->nendpoints == 0)
        die_usage("--endpoints", NULL, "is required");
}

/* ---- Small helpers -------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fputs("etcd_load: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Base64 of n bytes into a fresh NUL-terminated string. */
static char *b64(const void *data, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)n);
    return out;
}

static char *b64_key(uint64_t k)
{
    char key[32];
    int n = snprintf(key, sizeof key, "key%012llu", (unsigned long long)k);
    return b64(key, (size_t)n);
}

/* ---- HTTP over one keep-alive connection ---------------------------------------------- */

struct conn {
    const char *endpoint;
    int fd;
    char *in; /* received bytes not consumed yet */
    size_t in_len, in_cap;
    char *req;
    size_t req_cap;
};

static int conn_open(struct conn *c, char *err, size_t errlen)
{
    char host[128];
    snprintf(host, sizeof host, "%s", c->endpoint);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, colon + 1, &hints, &ai);
    if (rc) {
        snprintf(err, errlen, "%s: %s", c->endpoint, gai_strerror(rc));
        return 1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        snprintf(err, errlen, "connect %s: %s", c->endpoint, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return 1;
    }
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A hung server must not hang the run: every blocking call gives up after this. */
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    c->fd = fd;
    c->in_len = 0;
    return 0;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->in_len = 0;
}

/* Read more bytes into c->in; 0 or 1 (EOF, error, timeout: message in err). */
static int fill(struct conn *c, char *err, size_t errlen)
{
    if (c->in_cap - c->in_len < 4096) {
        c->in_cap = c->in_cap ? c->in_cap * 2 : 16384;
        c->in = realloc(c->in, c->in_cap + 1);
        if (c->in == NULL) {
            fputs("etcd_load: out of memory\n", stderr);
            exit(1);
        }
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n <= 0) {
        snprintf(err, errlen, "recv from %s: %s", c->endpoint,
                 n == 0 ? "connection closed" : strerror(errno));
        return 1;
    }
    c->in_len += (size_t)n;
    c->in[c->in_len] = '\0';
    return 0;
}

/* Find a header's value in the header block [h, end); NULL when absent. */
static const char *header(const char *h, const char *end, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = h; p < end;) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            return v;
        }
        p = eol + 2;
    }
    return NULL;
}

/* POST `body` to `path` and read the whole response: *status and the body (a copy into
 * *out, NUL-terminated, *out_len bytes). Content-Length and chunked bodies are both read.
 * Returns 0, or 1 on a transport or framing failure (message in err, connection closed). */
static int http_post(struct conn *c, const char *path, const char *body, size_t body_len,
                     int *status, char **out, size_t *out_len, char *err, size_t errlen)
{
    size_t need = body_len + 256;
    if (c->req_cap < need) {
        free(c->req);
        c->req_cap = need;
        c->req = xmalloc(need);
    }
    int hl = snprintf(c->req, c->req_cap,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      path, c->endpoint, body_len);
    memcpy(c->req + hl, body, body_len);
    size_t total = (size_t)hl + body_len, sent = 0;
    while (sent < total) {
        ssize_t n = send(c->fd, c->req + sent, total - sent, MSG_NOSIGNAL);
        if (n <= 0) {
            snprintf(err, errlen, "send to %s: %s", c->endpoint, strerror(errno));
            goto fail;
        }
        sent += (size_t)n;
    }
    char *eoh;
    while ((eoh = c->in_len ? memmem(c->in, c->in_len, "\r\n\r\n", 4) : NULL) == NULL)
        if (fill(c, err, errlen))
            goto fail;
    if (sscanf(c->in, "HTTP/1.%*d %d", status) != 1) {
        snprintf(err, errlen, "%s: malformed status line", c->endpoint);
        goto fail;
    }
    size_t hdr_end = (size_t)(eoh - c->in) + 4;
    const char *te = header(c->in, eoh, "Transfer-Encoding");
    const char *cl = header(c->in, eoh, "Content-Length");
    size_t pos = hdr_end, blen = 0;
    char *b = NULL;
    if (te && strncasecmp(te, "chunked", 7) == 0) {
        /* Chunks are copied out as they arrive; the pos keeps pointing into c->in, which
         * fill() may move, so work with offsets only. */
        size_t bcap = 256;
        b = xmalloc(bcap);
        for (;;) {
            char *eol;
            while ((eol = memmem(c->in + pos, c->in_len - pos, "\r\n", 2)) == NULL)
                if (fill(c, err, errlen))
                    goto fail_body;
            size_t size = strtoul(c->in + pos, NULL, 16);
            size_t data = (size_t)(eol - c->in) + 2;
            while (c->in_len < data + size + 2)
                if (fill(c, err, errlen))
                    goto fail_body;
            if (blen + size + 1 > bcap) {
                bcap = (blen + size + 1) * 2;
                b = realloc(b, bcap);
                if (b == NULL) {
                    fputs("etcd_load: out of memory\n", stderr);
                    exit(1);
                }
            }
            memcpy(b + blen, c->in + data, size);
            blen += size;
            pos = data + size + 2;
            if (size == 0)
                break; /* no trailers are sent by the gateway */
        }
    } else if (cl) {
        size_t len = strtoul(cl, NULL, 10);
        while (c->in_len < hdr_end + len)
            if (fill(c, err, errlen))
                goto fail;
        b = xmalloc(len + 1);
        memcpy(b, c->in + hdr_end, len);
        blen = len;
        pos = hdr_end + len;
    } else {
        snprintf(err, errlen, "%s: response without a length (no keep-alive)", c->endpoint);
        goto fail;
    }
    b[blen] = '\0';
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    *out = b;
    *out_len = blen;
    return 0;

fail_body:
    free(b);
fail:
    conn_close(c);
    return 1;
}

/* ---- Workers -------------------------------------------------------------------------- */

struct run {
    struct opts o;
    pthread_barrier_t go;
    uint64_t t_measure, t_end;
};

struct worker {
    struct run *r;
    struct conn c;
    uint64_t rng;
    char *value_b64;
    char *body; /* the request body, sized for the key and the value */
    size_t body_cap;
    uint64_t *lat; /* ok latencies, ns */
    size_t nlat, cap;
    uint64_t ok, errors, misses, last_end;
    char first_err[256];
    pthread_t thread;
};

static void note_err(struct worker *w, const char *msg)
{
    w->errors++;
    if (w->first_err[0] == '\0')
        snprintf(w->first_err, sizeof w->first_err, "%s", msg);
}

/* One request; returns true when it succeeded. A range that found nothing is a miss. */
static bool one_op(struct worker *w, uint64_t key, bool *miss, char *err, size_t errlen)
{
    const struct opts *o = &w->r->o;
    char *kb = b64_key(key);
    int n;
    const char *path;
    if (o->mix == MIX_PUT) {
        path = "/v3/kv/put";
        n = snprintf(w->body, w->body_cap, "{\"key\":\"%s\",\"value\":\"%s\"}", kb,
                     w->value_b64);
    } else {
        path = "/v3/kv/range";
        n = snprintf(w->body, w->body_cap, "{\"key\":\"%s\",\"serializable\":%s}", kb,
                     o->serializable ? "true" : "false");
    }
    free(kb);
    int status = 0;
    char *resp = NULL;
    size_t resp_len = 0;
    bool ok = false;
    if (w->c.fd < 0 && conn_open(&w->c, err, errlen))
        goto out;
    if (http_post(&w->c, path, w->body, (size_t)n, &status, &resp, &resp_len, err, errlen))
        goto out;
    json_error_t je;
    json_t *j = json_loadb(resp, resp_len, 0, &je);
    if (status != 200 || j == NULL || json_object_get(j, "error") != NULL) {
        snprintf(err, errlen, "HTTP %d: %.200s", status, resp);
    } else {
        ok = true;
        /* An empty range has no "kvs" (the gateway omits empty fields). */
        json_t *kvs = json_object_get(j, "kvs");
        *miss = o->mix == MIX_GET && (kvs == NULL || json_array_size(kvs) == 0);
    }
    json_decref(j);
out:
    free(resp);
    return ok;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct run *r = w->r;
    pthread_barrier_wait(&r->go);
    char err[512];
    while (now_ns() < r->t_end) {
        uint64_t key = rng_next(&w->rng) % r->o.keys;
        bool miss = false;
        err[0] = '\0';
        uint64_t t0 = now_ns();
        bool ok = one_op(w, key, &miss, err, sizeof err);
        uint64_t t1 = now_ns();
        if (!ok && w->c.fd < 0) {
            struct timespec ts = {0, 10 * 1000000L}; /* do not spin on a dead endpoint */
            nanosleep(&ts, NULL);
        }
        if (t1 < r->t_measure)
            continue; /* warmup */
        w->last_end = t1;
        if (!ok) {
            note_err(w, err);
            continue;
        }
        w->ok++;
        w->misses += miss;
        if (w->nlat == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 65536;
            w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
            if (w->lat == NULL) {
                fputs("etcd_load: out of memory\n", stderr);
                exit(1);
            }
        }
        w->lat[w->nlat++] = t1 - t0;
    }
    return NULL;
}

/* ---- Preload -------------------------------------------------------------------------- */

struct preload {
    const struct opts *o;
    struct conn c;
    uint64_t first, count;
    const char *value_b64;
    int rc;
    char err[512];
    pthread_t thread;
};

static void *preload_main(void *arg)
{
    struct preload *p = arg;
    size_t cap = PRELOAD_BATCH * (strlen(p->value_b64) + 96) + 64;
    char *body = xmalloc(cap);
    if (conn_open(&p->c, p->err, sizeof p->err)) {
        p->rc = 1;
        goto out;
    }
    for (uint64_t next = p->first; next < p->first + p->count;) {
        uint64_t end = next + PRELOAD_BATCH;
        if (end > p->first + p->count)
            end = p->first + p->count;
        size_t len = (size_t)snprintf(body, cap, "{\"success\":[");
        for (uint64_t k = next; k < end; k++) {
            char *kb = b64_key(k);
            len += (size_t)snprintf(body + len, cap - len,
                                    "%s{\"requestPut\":{\"key\":\"%s\",\"value\":\"%s\"}}",
                                    k == next ? "" : ",", kb, p->value_b64);
            free(kb);
        }
        len += (size_t)snprintf(body + len, cap - len, "]}");
        int status;
        char *resp;
        size_t rlen;
        if (http_post(&p->c, "/v3/kv/txn", body, len, &status, &resp, &rlen, p->err,
                      sizeof p->err)) {
            p->rc = 1;
            goto out;
        }
        if (status != 200) {
            snprintf(p->err, sizeof p->err, "txn: HTTP %d: %.200s", status, resp);
            free(resp);
            p->rc = 1;
            goto out;
        }
        free(resp);
        next = end;
    }
out:
    conn_close(&p->c);
    free(p->c.in);
    free(p->c.req);
    free(body);
    return NULL;
}

static int preload_all(const struct opts *o, double *secs)
{
    unsigned n = o->clients < PRELOAD_THREADS ? o->clients : PRELOAD_THREADS;
    struct preload p[PRELOAD_THREADS];
    uint8_t *value = xmalloc(o->value_size);
    memset(value, 'v', o->value_size);
    char *vb = b64(value, o->value_size);
    free(value);
    uint64_t t0 = now_ns();
    for (unsigned i = 0; i < n; i++) {
        p[i] = (struct preload){.o = o, .value_b64 = vb};
        p[i].c = (struct conn){.endpoint = o->endpoints[i % o->nendpoints], .fd = -1};
        p[i].first = o->keys * i / n;
        p[i].count = o->keys * (i + 1) / n - p[i].first;
        if (pthread_create(&p[i].thread, NULL, preload_main, &p[i])) {
            fputs("etcd_load: cannot start a preload thread\n", stderr);
            exit(1);
        }
    }
    int rc = 0;
    for (unsigned i = 0; i < n; i++) {
        pthread_join(p[i].thread, NULL);
        if (p[i].rc && rc == 0) {
            rc = 1;
            fprintf(stderr, "etcd_load: preload failed: %s\n", p[i].err);
        }
    }
    *secs = (double)(now_ns() - t0) / 1e9;
    free(vb);
    return rc;
}

/* ---- Report --------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The q quantile of sorted values: the ceil(q*n)-th smallest. */
static double quantile_us(const uint64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(q * (double)n);
    if ((double)rank < q * (double)n)
        rank++;
    if (rank < 1)
        rank = 1;
    return (double)v[rank - 1] / 1000.0;
}

static const double quantiles[] = {0.50, 0.90, 0.99, 0.999};
static const char *const quantile_keys[] = {"p50", "p90", "p99", "p99_9"};

int main(int argc, char **argv)
{
    struct run *r = calloc(1, sizeof *r);
    if (r == NULL)
        return 1;
    parse_opts(argc, argv, &r->o);
    const struct opts *o = &r->o;
    double preload_s = 0;
    if (o->preload && preload_all(o, &preload_s))
        return 1;

    struct worker *ws = calloc(o->clients, sizeof *ws);
    uint8_t *value = xmalloc(o->value_size);
    if (ws == NULL)
        return 1;
    pthread_barrier_init(&r->go, NULL, o->clients + 1);
    for (unsigned i = 0; i < o->clients; i++) {
        struct worker *w = &ws[i];
        w->r = r;
        w->c = (struct conn){.endpoint = o->endpoints[i % o->nendpoints], .fd = -1};
        w->rng = (o->seed + i + 1) * 0x9e3779b97f4a7c15ULL;
        if (w->rng == 0)
            w->rng = 1;
        for (size_t b = 0; b < o->value_size; b++)
            value[b] = (uint8_t)rng_next(&w->rng);
        w->value_b64 = b64(value, o->value_size);
        w->body_cap = strlen(w->value_b64) + 128;
        w->body = xmalloc(w->body_cap);
        char err[512];
        if (conn_open(&w->c, err, sizeof err)) {
            fprintf(stderr, "etcd_load: %s\n", err);
            return 1;
        }
        if (pthread_create(&w->thread, NULL, worker_main, w)) {
            fprintf(stderr, "etcd_load: cannot start worker thread %u\n", i);
            return 1;
        }
    }
    free(value);
    r->t_measure = now_ns() + (uint64_t)(o->warmup * 1e9);
    r->t_end = r->t_measure + (uint64_t)(o->duration * 1e9);
    pthread_barrier_wait(&r->go);

    uint64_t ok = 0, errors = 0, misses = 0, last = r->t_end, sum = 0;
    size_t nlat = 0;
    const char *first_err = NULL;
    for (unsigned i = 0; i < o->clients; i++) {
        pthread_join(ws[i].thread, NULL);
        ok += ws[i].ok;
        errors += ws[i].errors;
        misses += ws[i].misses;
        nlat += ws[i].nlat;
        if (ws[i].last_end > last)
            last = ws[i].last_end;
        if (first_err == NULL && ws[i].first_err[0])
            first_err = ws[i].first_err;
    }
    uint64_t *lat = xmalloc(nlat * sizeof *lat);
    size_t at = 0;
    for (unsigned i = 0; i < o->clients; i++) {
        memcpy(lat + at, ws[i].lat, ws[i].nlat * sizeof *lat);
        at += ws[i].nlat;
    }
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    for (size_t i = 0; i < nlat; i++)
        sum += lat[i];
    double window = (double)(last - r->t_measure) / 1e9;
    double tput = (double)ok / window;
    double mean = nlat ? (double)sum / (double)nlat / 1000.0 : 0;
    double max = nlat ? (double)lat[nlat - 1] / 1000.0 : 0;
    const char *mix = o->mix == MIX_PUT ? "put" : "get";

    if (o->json) {
        json_t *j = json_object(), *l = json_object();
        json_object_set_new(j, "system", json_string("etcd"));
        json_object_set_new(j, "endpoint", json_string(o->endpoints[0]));
        json_object_set_new(j, "mix", json_string(mix));
        json_object_set_new(j, "clients", json_integer(o->clients));
        json_object_set_new(j, "keys", json_integer((json_int_t)o->keys));
        json_object_set_new(j, "value_size", json_integer((json_int_t)o->value_size));
        json_object_set_new(j, "serializable", json_boolean(o->serializable));
        json_object_set_new(j, "preload", json_boolean(o->preload));
        if (o->preload)
            json_object_set_new(j, "preload_s", json_real(preload_s));
        json_object_set_new(j, "warmup_s", json_real(o->warmup));
        json_object_set_new(j, "window_s", json_real(window));
        json_object_set_new(j, "ok", json_integer((json_int_t)ok));
        json_object_set_new(j, "errors", json_integer((json_int_t)errors));
        json_object_set_new(j, "first_error", first_err ? json_string(first_err) : json_null());
        if (o->mix == MIX_GET)
            json_object_set_new(j, "get_misses", json_integer((json_int_t)misses));
        json_object_set_new(j, "throughput_ops_s", json_real(tput));
        for (size_t q = 0; q < 4; q++)
            json_object_set_new(l, quantile_keys[q],
                                json_real(quantile_us(lat, nlat, quantiles[q])));
        json_object_set_new(l, "max", json_real(max));
        json_object_set_new(l, "mean", json_real(mean));
        json_object_set_new(j, "latency_us", l);
        char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9));
        puts(text ? text : "{}");
        free(text);
        json_decref(j);
    } else {
        printf("etcd_load %s  mix %s%s  clients %u  keys %llu  value %zu B\n", o->endpoints[0],
               mix, o->mix == MIX_GET && o->serializable ? " (serializable)" : "", o->clients,
               (unsigned long long)o->keys, o->value_size);
        if (o->preload)
            printf("preload     %llu keys in %.2f s\n", (unsigned long long)o->keys, preload_s);
        printf("window      %.2f s (after %.2f s warmup)\n", window, o->warmup);
        printf("throughput  %.0f ops/s  (%llu ok, %llu errors)\n", tput,
               (unsigned long long)ok, (unsigned long long)errors);
        printf("latency µs  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
               quantile_us(lat, nlat, 0.5), quantile_us(lat, nlat, 0.9),
               quantile_us(lat, nlat, 0.99), quantile_us(lat, nlat, 0.999), max, mean);
        if (o->mix == MIX_GET)
            printf("misses      %llu of %llu gets found no value\n", (unsigned long long)misses,
                   (unsigned long long)ok);
        if (first_err)
            printf("first error %s\n", first_err);
    }
    for (unsigned i = 0; i < o->clients; i++) {
        conn_close(&ws[i].c);
        free(ws[i].c.in);
        free(ws[i].c.req);
        free(ws[i].lat);
        free(ws[i].value_b64);
        free(ws[i].body);
    }
    free(ws);
    free(lat);
    pthread_barrier_destroy(&r->go);
    free(r);
    if (ok == 0)
        fprintf(stderr, "etcd_load: no operation succeeded (%llu errors)\n",
                (unsigned long long)errors);
    return ok > 0 ? 0 : 1;
}
