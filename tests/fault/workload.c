/* Fault-test workload: concurrent reads, writes, CAS and event appends against a StrataDB
 * cluster, recorded as a JSON Lines history for the linearizability checker, plus the
 * after-the-fault steps (availability probe, final reads, replica comparison).
 * This file: main, option parsing and the helpers the subcommands share; the subcommands
 * are in workload_run.c, workload_checks.c and workload_compare.c (see workload.h).
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
 * Forks and merges (workload_run.c, run_merge): now and then a thread forks "default",
 * writes 1-3 of the current KV registers in the fork, merges the fork back (strict or
 * source_wins) and deletes it. The merge is recorded as one write per merged register on
 * "default", each by a process of its own with the merge's invoke and completion (a
 * strict merge refused with CONFLICT is a fail: it wrote nothing), the merge's version on
 * the first only (one merge is one version). The fork's own writes are not in the
 * history: nobody else reads the fork, and its values reach "default" only through the
 * merge.
 *
 * Exit codes: 0 done (and every check passed), 1 a check failed (anomaly, or no service
 * within the bound), 2 bad usage or unreadable history, 3 could not set up. */
#include "workload.h"

volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

uint64_t now_ms(void)
{
    return clock_mono_ns() / 1000000u;
}

/* ---- Commands (msgpack-c into a struct buf) ---------------------------------------- */

int buf_w(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

void pk_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void pk_kv(msgpack_packer *pk, const char *k, const char *v)
{
    pk_str(pk, k);
    pk_str(pk, v);
}

/* ---- Results (msgpack-c) ------------------------------------------------------------- */

int res_parse(struct res *r, const struct buf *b)
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

void res_free(struct res *r)
{
    if (r->o)
        msgpack_unpacked_destroy(&r->u);
    r->o = NULL;
}

const msgpack_object *map_get(const msgpack_object *m, const char *key)
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

bool map_u64(const msgpack_object *m, const char *key, uint64_t *out)
{
    const msgpack_object *v = map_get(m, key);
    if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = v->via.u64;
    return true;
}

/* A msgpack value as a jansson value, through the engine's own renderer (bin becomes
 * {"$bytes": base64}, as everywhere else in the project). NULL on failure. */
json_t *mp_to_json(const msgpack_object *o)
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

int open_db(const char *uri, int op_ms, struct strata **db)
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

/* Run a command until it succeeds or `ok_code` comes back, within `within_ms`. */
int exec_retry(struct strata *db, const struct buf *cmd, int ok_code, unsigned within_ms,
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
