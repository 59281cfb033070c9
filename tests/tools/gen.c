/* lincheck_gen: write a history of correct concurrent registers and event logs (a seeded
 * simulation), optionally followed by a violation only the search can find. For tests. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROCS 64
#define MAX_KEYS 4096
#define SPAN 1000 /* ns: the typical time from invoke to effect, and effect to reply */

enum kind { K_READ, K_WRITE, K_CAS, K_APPEND };
enum fate { F_OK, F_FAIL, F_INFO_APPLIED, F_INFO_LOST };

/* One op in flight. An op of unknown outcome may take effect after its client gave up. */
struct flight {
    bool used;
    int proc;
    enum kind kind;
    enum fate fate;
    int branch, key; /* key == -1: the branch's event log */
    int64_t value, expect;
    int64_t t_lin, t_ret; /* -1 once done */
    const char *error; /* on fail and info completions */
    int64_t result; /* read: value seen (0 = null) */
    uint64_t version, seq;
};

struct sim {
    unsigned short rng[3];
    int procs, keys, branches;
    long ops_left;
    int info_pct, fail_pct;
    int64_t now;
    int64_t next_invoke[MAX_PROCS]; /* -1: busy */
    struct flight fl[4 * MAX_PROCS];
    int64_t state[MAX_KEYS];        /* per (branch, key): value, 0 = absent */
    uint64_t state_ver[MAX_KEYS];
    uint64_t log_len[MAX_KEYS];     /* per branch */
    uint64_t branch_ver[MAX_KEYS];
    int64_t next_value;
    long lines;
};

static long rnd(struct sim *s, long n)
{
    return nrand48(s->rng) % n;
}

static const char *const branch_names[] = {"main", "side"};

static void emit(struct sim *s, json_t *o)
{
    if (o == NULL || json_dumpf(o, stdout, JSON_COMPACT) != 0) {
        fprintf(stderr, "lincheck_gen: cannot write a line\n");
        exit(1);
    }
    fputc('\n', stdout);
    json_decref(o);
    s->lines++;
}

static json_t *base(int64_t t, int proc, const char *type, const struct flight *f)
{
    static const char *const fn[] = {"read", "write", "cas", "append"};
    char key[32];
    if (f->key < 0)
        snprintf(key, sizeof key, "log");
    else
        snprintf(key, sizeof key, "k%d", f->key);
    return json_pack("{s:I,s:i,s:s,s:s,s:s,s:s}", "t", (json_int_t)t, "proc", proc, "type",
                     type, "f", fn[f->kind], "branch", branch_names[f->branch], "key", key);
}

static void emit_invoke(struct sim *s, const struct flight *f)
{
    json_t *o = base(s->now, f->proc, "invoke", f);
    if (f->kind == K_WRITE || f->kind == K_CAS)
        json_object_set_new(o, "value", json_integer(f->value));
    if (f->kind == K_CAS)
        json_object_set_new(o, "expect", f->expect ? json_integer(f->expect) : json_null());
    emit(s, o);
}

static void emit_completion(struct sim *s, const struct flight *f)
{
    const char *type = f->fate == F_OK ? "ok" : f->fate == F_FAIL ? "fail" : "info";
    json_t *o = base(s->now, f->proc, type, f);
    if (f->fate != F_OK)
        json_object_set_new(o, "error", json_string(f->error));
    if (f->fate == F_OK) {
        if (f->kind == K_READ) {
            json_object_set_new(o, "value", f->result ? json_integer(f->result) : json_null());
            if (f->result)
                json_object_set_new(o, "version", json_integer((json_int_t)f->version));
        } else {
            json_object_set_new(o, "version", json_integer((json_int_t)f->version));
        }
        if (f->kind == K_APPEND)
            json_object_set_new(o, "seq", json_integer((json_int_t)f->seq));
    }
    emit(s, o);
}

static int slot(struct sim *s, int branch, int key)
{
    return branch * s->keys + key;
}

static void invoke(struct sim *s, int proc)
{
    struct flight *f = NULL;
    for (size_t i = 0; i < sizeof s->fl / sizeof s->fl[0] && f == NULL; i++)
        if (!s->fl[i].used)
            f = &s->fl[i];
    if (f == NULL) {
        s->next_invoke[proc] = s->now + SPAN; /* too many late ops in flight; wait */
        return;
    }
    memset(f, 0, sizeof *f);
    f->used = true;
    f->proc = proc;
    f->branch = (int)rnd(s, s->branches);
    long r = rnd(s, 100);
    f->kind = r < 45 ? K_READ : r < 75 ? K_WRITE : r < 90 ? K_CAS : K_APPEND;
    f->key = f->kind == K_APPEND ? -1 : (int)rnd(s, s->keys);
    if (f->kind == K_WRITE || f->kind == K_CAS)
        f->value = s->next_value++;
    if (f->kind == K_CAS) {
        /* Mostly the value now there (it may change before the cas takes effect). */
        int64_t cur = s->state[slot(s, f->branch, f->key)];
        f->expect = rnd(s, 10) < 7 || cur == 0 ? cur : cur - 1 - rnd(s, 3);
        if (f->expect < 0)
            f->expect = 0;
    }
    r = rnd(s, 100);
    f->fate = r < s->fail_pct               ? F_FAIL
              : r < s->fail_pct + s->info_pct ? (rnd(s, 2) ? F_INFO_APPLIED : F_INFO_LOST)
                                              : F_OK;
    f->error = f->fate == F_FAIL ? "NOT_LEADER" : "TIMEOUT";
    f->t_lin = s->now + 1 + rnd(s, SPAN);
    f->t_ret = f->t_lin + 1 + rnd(s, SPAN);
    if (f->fate == F_INFO_APPLIED)
        f->t_lin += rnd(s, 30 * SPAN); /* late: perhaps after the client gave up */
    if (f->fate == F_FAIL || f->fate == F_INFO_LOST)
        f->t_lin = -1; /* never takes effect */
    s->next_invoke[proc] = -1;
    emit_invoke(s, f);
}

static void apply(struct sim *s, struct flight *f)
{
    int b = f->branch;
    f->t_lin = -1;
    if (f->kind == K_APPEND) {
        f->seq = ++s->log_len[b];
        f->version = ++s->branch_ver[b];
        return;
    }
    int k = slot(s, b, f->key);
    if (f->kind == K_READ) {
        f->result = s->state[k];
        f->version = s->state_ver[k];
        return;
    }
    if (f->kind == K_CAS && s->state[k] != f->expect) {
        if (f->fate == F_OK) {
            f->fate = F_FAIL; /* checked and not applied */
            f->error = "CONFLICT";
        }
        return;
    }
    s->state[k] = f->value;
    s->state_ver[k] = f->version = ++s->branch_ver[b];
}

/* Run the simulation until every op is issued and every effect has happened. */
static void simulate(struct sim *s)
{
    for (int p = 0; p < s->procs; p++)
        s->next_invoke[p] = s->now + rnd(s, SPAN);
    for (;;) {
        int64_t best = INT64_MAX;
        int what = -1; /* 0 invoke, 1 effect, 2 reply */
        size_t who = 0;
        for (int p = 0; p < s->procs; p++)
            if (s->ops_left > 0 && s->next_invoke[p] >= 0 && s->next_invoke[p] < best)
                best = s->next_invoke[p], what = 0, who = (size_t)p;
        for (size_t i = 0; i < sizeof s->fl / sizeof s->fl[0]; i++) {
            struct flight *f = &s->fl[i];
            if (!f->used)
                continue;
            if (f->t_lin >= 0 && f->t_lin < best)
                best = f->t_lin, what = 1, who = i;
            if (f->t_ret >= 0 && f->t_ret < best)
                best = f->t_ret, what = 2, who = i;
        }
        if (what < 0)
            break;
        s->now = best;
        if (what == 0) {
            s->ops_left--;
            invoke(s, (int)who);
            continue;
        }
        struct flight *f = &s->fl[who];
        if (what == 1) {
            apply(s, f);
        } else {
            emit_completion(s, f);
            f->t_ret = -1;
            s->next_invoke[f->proc] = s->now + 1 + rnd(s, SPAN / 2);
        }
        if (f->t_lin < 0 && f->t_ret < 0)
            f->used = false;
    }
}

/* Writers all concurrent; two readers each see two of the values, in opposite orders,
 * and every other value is read once later. Each pair of reads alone is fine; together
 * they need both orders of the two writes. With `fork`, a fork into the branch comes
 * first: the key's value is then unknown and values may come back, so the search cannot
 * prune and must try the orders of all the writes. */
static void crossed(struct sim *s, int writers, bool fork)
{
    int64_t t = s->now + SPAN, a = s->next_value, b = s->next_value + 1;
    int p0 = s->procs, reader = p0 + writers;
    s->next_value += writers;
    if (fork) {
        for (int i = 0; i < 2; i++)
            emit(s, json_pack("{s:I,s:i,s:s,s:s,s:s,s:s}", "t", (json_int_t)(t - 2 + i), "proc",
                              reader, "type", i ? "ok" : "invoke", "f", "fork", "branch",
                              "main", "key", "origin"));
    }
    for (int w = 0; w < writers; w++)
        emit(s, json_pack("{s:I,s:i,s:s,s:s,s:s,s:s,s:I}", "t", (json_int_t)(t + w), "proc",
                          p0 + w, "type", "invoke", "f", "write", "branch", "main", "key", "k0",
                          "value", (json_int_t)(a + w)));
    int64_t reads[2][2] = {{a, b}, {b, a}};
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < 2; i++) {
            int64_t c = t + 100 * SPAN + i * 10 * SPAN;
            emit(s, json_pack("{s:I,s:i,s:s,s:s,s:s,s:s}", "t", (json_int_t)c, "proc",
                              reader + r, "type", "invoke", "f", "read", "branch", "main",
                              "key", "k0"));
            emit(s, json_pack("{s:I,s:i,s:s,s:s,s:s,s:s,s:I}", "t", (json_int_t)(c + SPAN),
                              "proc", reader + r, "type", "ok", "f", "read", "branch", "main",
                              "key", "k0", "value", (json_int_t)reads[r][i]));
        }
    }
    for (int w = 2; w < writers; w++) {
        int64_t c = t + 500 * SPAN;
        int p = reader + w;
        emit(s, json_pack("{s:I,s:i,s:s,s:s,s:s,s:s}", "t", (json_int_t)c, "proc", p, "type",
                          "invoke", "f", "read", "branch", "main", "key", "k0"));
        emit(s, json_pack("{s:I,s:i,s:s,s:s,s:s,s:s,s:I}", "t", (json_int_t)(c + SPAN), "proc",
                          p, "type", "ok", "f", "read", "branch", "main", "key", "k0", "value",
                          (json_int_t)(a + w)));
    }
    for (int w = 0; w < writers; w++)
        emit(s, json_pack("{s:I,s:i,s:s,s:s,s:s,s:s}", "t", (json_int_t)(t + 1000 * SPAN + w),
                          "proc", p0 + w, "type", "ok", "f", "write", "branch", "main", "key",
                          "k0"));
}

static void finals(struct sim *s)
{
    for (int b = 0; b < s->branches; b++) {
        for (int k = 0; k < s->keys; k++) {
            char key[32];
            snprintf(key, sizeof key, "k%d", k);
            int64_t v = s->state[slot(s, b, k)];
            emit(s, json_pack("{s:s,s:s,s:s,s:o}", "type", "final", "branch", branch_names[b],
                              "key", key, "value", v ? json_integer(v) : json_null()));
        }
        emit(s, json_pack("{s:s,s:s,s:s,s:s,s:I}", "type", "final", "f", "len", "branch",
                          branch_names[b], "key", "log", "value", (json_int_t)s->log_len[b]));
    }
}

static int number(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct sim *s = calloc(1, sizeof *s);
    long ops = 1000, procs = 8, keys = 16, seed = 1, info = 2, fail = 2, branches = 2,
         cross = 0, fork = 0;
    if (s == NULL)
        return 1;
    for (int i = 1; i < argc; i++) {
        long *dst = NULL, min = 0, max = 0;
        if (strcmp(argv[i], "--ops") == 0)
            dst = &ops, max = 100000000;
        else if (strcmp(argv[i], "--procs") == 0)
            dst = &procs, min = 1, max = MAX_PROCS;
        else if (strcmp(argv[i], "--keys") == 0)
            dst = &keys, min = 1, max = MAX_KEYS / 2;
        else if (strcmp(argv[i], "--branches") == 0)
            dst = &branches, min = 1, max = 2;
        else if (strcmp(argv[i], "--seed") == 0)
            dst = &seed, max = 0xffffffffL;
        else if (strcmp(argv[i], "--info-pct") == 0)
            dst = &info, max = 50;
        else if (strcmp(argv[i], "--fail-pct") == 0)
            dst = &fail, max = 50;
        else if (strcmp(argv[i], "--crossed") == 0)
            dst = &cross, min = 2, max = 64;
        else if (strcmp(argv[i], "--fork") == 0)
            dst = &fork, max = 1;
        if (dst == NULL || i + 1 == argc || number(argv[i + 1], min, max, dst) != 0) {
            fprintf(stderr, "usage: lincheck_gen [--ops N] [--procs N] [--keys N] "
                            "[--branches 1|2] [--seed N] [--info-pct N] [--fail-pct N] "
                            "[--crossed WRITERS [--fork 1]] > FILE\n");
            free(s);
            return 2;
        }
        i++;
    }
    s->rng[0] = 0x330e;
    s->rng[1] = (unsigned short)seed;
    s->rng[2] = (unsigned short)(seed >> 16);
    s->procs = (int)procs;
    s->keys = (int)keys;
    s->branches = (int)branches;
    s->ops_left = ops;
    s->info_pct = (int)info;
    s->fail_pct = (int)fail;
    s->now = 1000000;
    s->next_value = 1;
    if (ops > 0)
        simulate(s);
    if (cross > 0)
        crossed(s, (int)cross, fork != 0);
    else
        finals(s);
    fflush(stdout);
    fprintf(stderr, "lincheck_gen: %ld lines\n", s->lines);
    int bad = ferror(stdout);
    free(s);
    return bad ? 1 : 0;
}
