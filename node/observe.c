/* The node's metrics (collected from the node, its groups and /proc), the loop-lag
 * probe, and the /metrics, /healthz and /readyz endpoints. */
#include "observe.h"

#include "http.h"
#include "metrics.h"
#include "node.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Loop lag: a timer due every LAG_TICK_MS measures how late it runs. The loop counts as
 * blocked when one tick came LAG_THRESHOLD_MS late, and /healthz answers 503 for
 * LAG_WINDOW_MS after that. */
#define LAG_TICK_MS 100
#define LAG_THRESHOLD_MS 1000
#define LAG_WINDOW_MS 10000
/* The data dir is walked at most this often (a walk costs a stat per file). */
#define DISK_CACHE_MS 5000
#define OBSERVE_MAX_OPS 128

static const double latency_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
static const double lag_buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const double snapshot_buckets[] = {0.001, 0.01, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Every family, in exposition order (docs/operations.md lists the same). */
enum {
    F_INFO,
    F_UPTIME,
    F_RSS,
    F_DISK,
    F_CONNS,
    F_FORWARDED,
    F_COMMANDS,
    F_COMMAND_ERRORS,
    F_COMMAND_DURATION,
    F_ROLE,
    F_HAS_LEADER,
    F_TERM,
    F_COMMIT,
    F_APPLIED,
    F_LAST,
    F_SNAPSHOT_INDEX,
    F_MEMBERS,
    F_DISK_FAULT,
    F_LEADER_CHANGES,
    F_SNAPSHOTS,
    F_SNAPSHOT_BYTES,
    F_SNAPSHOT_DURATION,
    F_SNAPSHOT_ENCODE,
    F_SNAPSHOT_COW,
    F_LOOP_LAG,
    F_LOOP_BLOCKED,
    F_HTTP_REQUESTS,
    F_COUNT
};

static const struct metric_def defs[F_COUNT] = {
    [F_INFO] = {METRIC_GAUGE,
                "strata_node_info",
                "This node's identity (value is always 1).",
                {"node_id", "cluster_id"},
                NULL,
                0},
    [F_UPTIME] = {METRIC_GAUGE,
                  "strata_uptime_seconds",
                  "Seconds since the server started.",
                  {NULL},
                  NULL,
                  0},
    [F_RSS] = {METRIC_GAUGE,
               "strata_process_resident_memory_bytes",
               "Resident memory of the server process (/proc/self/statm).",
               {NULL},
               NULL,
               0},
    [F_DISK] = {METRIC_GAUGE,
                "strata_data_dir_bytes",
                "Disk space used by the data directory (allocated blocks; refreshed every 5 s).",
                {NULL},
                NULL,
                0},
    [F_CONNS] =
        {METRIC_GAUGE, "strata_client_connections", "Open client connections.", {NULL}, NULL, 0},
    [F_FORWARDED] = {METRIC_COUNTER,
                     "strata_forwarded_requests_total",
                     "Client requests this node relayed to the leader.",
                     {NULL},
                     NULL,
                     0},
    [F_COMMANDS] = {METRIC_COUNTER,
                    "strata_commands_total",
                    "Client requests answered, by command (including errors).",
                    {"op"},
                    NULL,
                    0},
    [F_COMMAND_ERRORS] = {METRIC_COUNTER,
                          "strata_command_errors_total",
                          "Client requests answered with an error, by command and error code.",
                          {"op", "code"},
                          NULL,
                          0},
    [F_COMMAND_DURATION] = {METRIC_HISTOGRAM,
                            "strata_command_duration_seconds",
                            "Time from a request's arrival to its response, by command.",
                            {"op"},
                            latency_buckets,
                            N(latency_buckets)},
    [F_ROLE] = {METRIC_GAUGE,
                "strata_raft_role",
                "1 for this node's current role in the group, 0 for the others.",
                {"group", "role"},
                NULL,
                0},
    [F_HAS_LEADER] = {METRIC_GAUGE,
                      "strata_raft_has_leader",
                      "1 when this node knows a leader for the group.",
                      {"group"},
                      NULL,
                      0},
    [F_TERM] = {METRIC_GAUGE, "strata_raft_term", "Current Raft term.", {"group"}, NULL, 0},
    [F_COMMIT] = {METRIC_GAUGE,
                  "strata_raft_commit_index",
                  "Highest committed log index.",
                  {"group"},
                  NULL,
                  0},
    [F_APPLIED] = {METRIC_GAUGE,
                   "strata_raft_applied_index",
                   "Highest log index applied to the engine.",
                   {"group"},
                   NULL,
                   0},
    [F_LAST] = {METRIC_GAUGE,
                "strata_raft_last_index",
                "Last index in this node's log.",
                {"group"},
                NULL,
                0},
    [F_SNAPSHOT_INDEX] = {METRIC_GAUGE,
                          "strata_raft_snapshot_index",
                          "Log index of the last snapshot.",
                          {"group"},
                          NULL,
                          0},
    [F_MEMBERS] = {METRIC_GAUGE,
                   "strata_raft_members",
                   "Members of the group's configuration, as this node knows it.",
                   {"group"},
                   NULL,
                   0},
    [F_DISK_FAULT] = {METRIC_GAUGE,
                      "strata_disk_fault",
                      "1 while the group's disk watchdog refuses writes on this node (a log "
                      "write failed or stalled, or the data dir is below its free-space "
                      "reserve; cluster.status says why).",
                      {"group"},
                      NULL,
                      0},
    [F_LEADER_CHANGES] = {METRIC_COUNTER,
                          "strata_raft_leader_changes_total",
                          "Times this node learned of a new leader for the group.",
                          {"group"},
                          NULL,
                          0},
    [F_SNAPSHOTS] = {METRIC_COUNTER,
                     "strata_snapshots_total",
                     "Snapshots taken by this node or installed from the leader.",
                     {"group", "kind"},
                     NULL,
                     0},
    [F_SNAPSHOT_BYTES] = {METRIC_COUNTER,
                          "strata_snapshot_bytes_total",
                          "Bytes of the snapshots taken or installed.",
                          {"group", "kind"},
                          NULL,
                          0},
    [F_SNAPSHOT_DURATION] = {METRIC_HISTOGRAM,
                             "strata_snapshot_duration_seconds",
                             "How long taking a snapshot blocked the event loop (the fork of "
                             "the encoder, or the whole encode when it ran on the loop), or "
                             "the time to restore one.",
                             {"group", "kind"},
                             snapshot_buckets,
                             N(snapshot_buckets)},
    [F_SNAPSHOT_ENCODE] = {METRIC_HISTOGRAM,
                           "strata_snapshot_encode_seconds",
                           "Time the forked encoder took to write a snapshot (off the loop).",
                           {"group"},
                           snapshot_buckets,
                           N(snapshot_buckets)},
    [F_SNAPSHOT_COW] = {METRIC_COUNTER,
                        "strata_snapshot_cow_bytes_total",
                        "Memory copied on write while forked encoders ran (the encoder's "
                        "private dirty pages at its end).",
                        {"group"},
                        NULL,
                        0},
    [F_LOOP_LAG] = {METRIC_HISTOGRAM,
                    "strata_loop_lag_seconds",
                    "How late a 100 ms timer on the event loop ran.",
                    {NULL},
                    lag_buckets,
                    N(lag_buckets)},
    [F_LOOP_BLOCKED] = {METRIC_COUNTER,
                        "strata_loop_blocked_total",
                        "Times the event loop was blocked for more than 1 s (each makes "
                        "/healthz answer 503 for 10 s).",
                        {NULL},
                        NULL,
                        0},
    [F_HTTP_REQUESTS] = {METRIC_COUNTER,
                         "strata_http_requests_total",
                         "Responses of this HTTP endpoint, by status code.",
                         {"code"},
                         NULL,
                         0},
};

struct observe {
    struct node *node;
    struct metrics *reg;
    struct metric_family *fam[F_COUNT];
    struct {
        char name[64];
        struct metric *count, *duration;
    } ops[OBSERVE_MAX_OPS];
    size_t nops;
    uint64_t start_ns;
    /* Loop lag. */
    uv_timer_t lag_timer;
    uint64_t lag_last_ns;
    uint64_t blocked_at_ms; /* loop time of the last block, 0 = none yet */
    uint64_t blocked_for_ms;
    /* Data dir size cache. */
    uint64_t disk_bytes, disk_at_ms;
    bool disk_known;
    struct http_server http;
    unsigned open_handles;
};

/* A series by label values; NULL when it cannot be created (metrics are best effort). */
static struct metric *series(struct observe *o, int fam, const char *const *values)
{
    struct metric *s = NULL;
    if (metric_series(o->fam[fam], values, &s))
        log_debug("metrics: no series for %s", defs[fam].name);
    return s;
}

/* ---- Commands ------------------------------------------------------------------------- */

/* Is `op` a command this node answers? The engine's own table decides for its commands
 * (asked with the smallest command naming the op). */
static bool known_op(const char *op)
{
    static const char *const node_ops[] = {"cluster.status", "cluster.add_member",
                                           "cluster.remove_member", "cluster.transfer_leader",
                                           "session.use"};
    for (size_t i = 0; i < N(node_ops); i++)
        if (strcmp(op, node_ops[i]) == 0)
            return true;
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, node_buf_w);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str(&pk, 2);
    msgpack_pack_str_body(&pk, "op", 2);
    msgpack_pack_str(&pk, strlen(op));
    msgpack_pack_str_body(&pk, op, strlen(op));
    enum storage_cmd_kind kind;
    bool ok = b.len > 0 && storage_cmd_kind(b.data, b.len, &kind, NULL) == 0;
    buf_close(&b);
    return ok;
}

static int add_op(struct observe *o, const char *name)
{
    size_t i = o->nops;
    snprintf(o->ops[i].name, sizeof o->ops[i].name, "%s", name);
    const char *v[] = {o->ops[i].name};
    o->ops[i].count = series(o, F_COMMANDS, v);
    o->ops[i].duration = series(o, F_COMMAND_DURATION, v);
    o->nops++;
    return (int)i;
}

int observe_op(struct node *n, const char *op)
{
    struct observe *o = n->obs;
    if (o == NULL || op == NULL || *op == '\0' || strlen(op) >= sizeof o->ops[0].name)
        return OBSERVE_OP_UNKNOWN;
    for (size_t i = 1; i < o->nops; i++)
        if (strcmp(o->ops[i].name, op) == 0)
            return (int)i;
    if (o->nops == OBSERVE_MAX_OPS || !known_op(op))
        return OBSERVE_OP_UNKNOWN;
    return add_op(o, op);
}

void observe_command(struct node *n, int op, int code, uint64_t elapsed_ns)
{
    struct observe *o = n->obs;
    if (o == NULL)
        return;
    if (op < 0 || (size_t)op >= o->nops)
        op = OBSERVE_OP_UNKNOWN;
    metric_add(o->ops[op].count, 1);
    metric_observe(o->ops[op].duration, (double)elapsed_ns / 1e9);
    if (code != 0) {
        const char *v[] = {o->ops[op].name, err_name(code)};
        metric_add(series(o, F_COMMAND_ERRORS, v), 1);
    }
}

/* ---- Replication events ---------------------------------------------------------------- */

/* A number following `key` in an event detail ("index=5 bytes=1234 stall_us=80", as
 * replication/fsm.c and snapfork.c write them); 0 when absent. */
static uint64_t detail_num(const char *detail, const char *key)
{
    const char *p = detail ? strstr(detail, key) : NULL;
    return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

void observe_repl_event(struct node *n, uint32_t group, enum repl_event ev, const char *detail)
{
    struct observe *o = n->obs;
    if (o == NULL)
        return;
    char g[16];
    snprintf(g, sizeof g, "%u", group);
    if (ev == REPL_EV_LEADER_CHANGED) {
        const char *v[] = {g};
        metric_add(series(o, F_LEADER_CHANGES, v), 1);
    } else if (ev == REPL_EV_SNAPSHOT_TAKEN || ev == REPL_EV_SNAPSHOT_INSTALLED) {
        bool taken = ev == REPL_EV_SNAPSHOT_TAKEN;
        const char *v[] = {g, taken ? "taken" : "installed"};
        metric_add(series(o, F_SNAPSHOTS, v), 1);
        metric_add(series(o, F_SNAPSHOT_BYTES, v), (double)detail_num(detail, "bytes="));
        uint64_t us = detail_num(detail, taken ? "stall_us=" : "restore_us=");
        metric_observe(series(o, F_SNAPSHOT_DURATION, v), (double)us / 1e6);
        /* A forked encoder reports its own time and copy-on-write cost (snapfork.c). */
        if (taken && detail != NULL && strstr(detail, "encode_us=") != NULL) {
            const char *gv[] = {g};
            metric_observe(series(o, F_SNAPSHOT_ENCODE, gv),
                           (double)detail_num(detail, "encode_us=") / 1e6);
            metric_add(series(o, F_SNAPSHOT_COW, gv), (double)detail_num(detail, "cow_bytes="));
        }
    }
}

/* ---- Collection at scrape time ------------------------------------------------------- */

static void group_metrics(struct observe *o, uint32_t group, const struct repl_status *st)
{
    static const char *const roles[] = {"follower", "candidate", "leader", "unavailable"};
    static const enum repl_role role_of[] = {REPL_FOLLOWER, REPL_CANDIDATE, REPL_LEADER,
                                             REPL_UNAVAILABLE};
    char g[16];
    snprintf(g, sizeof g, "%u", group);
    for (size_t i = 0; i < N(roles); i++) {
        const char *v[] = {g, roles[i]};
        metric_set(series(o, F_ROLE, v), st->role == role_of[i]);
    }
    const char *v[] = {g};
    metric_set(series(o, F_HAS_LEADER, v), st->leader_id != 0);
    metric_set(series(o, F_TERM, v), (double)st->term);
    metric_set(series(o, F_COMMIT, v), (double)st->commit_index);
    metric_set(series(o, F_APPLIED, v), (double)st->applied_index);
    metric_set(series(o, F_LAST, v), (double)st->last_index);
    metric_set(series(o, F_SNAPSHOT_INDEX, v), (double)st->snapshot_index);
    metric_set(series(o, F_MEMBERS, v), (double)st->nmembers);
    metric_set(series(o, F_DISK_FAULT, v), st->disk_fault);
    /* Counters exist from the first scrape on, at 0, so rate() works from the start. */
    metric_add(series(o, F_LEADER_CHANGES, v), 0);
}

/* Every Raft group this node hosts (0 = meta), with its status. */
static void collect_groups(struct observe *o)
{
    struct node *n = o->node;
    for (uint32_t gid = 0; gid <= PL_MAX_SHARDS; gid++) {
        if (node_group(n, gid) == NULL)
            continue;
        struct repl_status st;
        node_group_status(n, gid, &st);
        group_metrics(o, gid, &st);
    }
}

static uint64_t rss_bytes(void)
{
    unsigned long long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* nftw has no user argument; the walk runs on the loop thread only. */
static uint64_t walk_total;

static int walk_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)path;
    (void)flag;
    (void)ftw;
    walk_total += (uint64_t)sb->st_blocks * 512;
    return 0;
}

static uint64_t disk_bytes(struct observe *o)
{
    uint64_t now = uv_now(o->node->loop);
    if (o->disk_known && now - o->disk_at_ms < DISK_CACHE_MS)
        return o->disk_bytes;
    walk_total = 0;
    if (nftw(o->node->cfg.data_dir, walk_one, 16, FTW_PHYS) == 0 || walk_total > 0) {
        o->disk_bytes = walk_total;
        o->disk_known = true;
    }
    o->disk_at_ms = now;
    return o->disk_bytes;
}

static void collect(struct observe *o)
{
    struct node *n = o->node;
    char id[24];
    snprintf(id, sizeof id, "%llu", (unsigned long long)n->cfg.node_id);
    const char *info[] = {id, n->cluster_id};
    metric_set(series(o, F_INFO, info), 1);
    metric_set(series(o, F_UPTIME, NULL), (double)(uv_hrtime() - o->start_ns) / 1e9);
    metric_set(series(o, F_RSS, NULL), (double)rss_bytes());
    metric_set(series(o, F_DISK, NULL), (double)disk_bytes(o));
    size_t conns = 0;
    for (struct conn *c = n->conns; c; c = c->next)
        conns += c->state != CONN_CLOSING;
    metric_set(series(o, F_CONNS, NULL), (double)conns);
    metric_set(series(o, F_FORWARDED, NULL), (double)n->forwarded);
    collect_groups(o);
}

/* ---- Health --------------------------------------------------------------------------- */

static void on_lag_tick(uv_timer_t *t)
{
    struct observe *o = t->data;
    uint64_t now = uv_hrtime();
    uint64_t gap_ms = (now - o->lag_last_ns) / 1000000;
    o->lag_last_ns = now;
    uint64_t lag_ms = gap_ms > LAG_TICK_MS ? gap_ms - LAG_TICK_MS : 0;
    metric_observe(series(o, F_LOOP_LAG, NULL), (double)lag_ms / 1000.0);
    if (lag_ms > LAG_THRESHOLD_MS) {
        o->blocked_at_ms = uv_now(o->node->loop);
        o->blocked_for_ms = lag_ms;
        metric_add(series(o, F_LOOP_BLOCKED, NULL), 1);
        log_warn("the event loop was blocked for %llu ms", (unsigned long long)lag_ms);
    }
}

/* Answered on the loop itself: getting an answer at all means the loop runs. */
static void healthz(struct observe *o, struct http_reply *r)
{
    uint64_t now = uv_now(o->node->loop);
    if (o->blocked_at_ms && now - o->blocked_at_ms < LAG_WINDOW_MS) {
        r->status = 503;
        buf_printf(&r->body, "event loop blocked for %llu ms, %.1f s ago\n",
                   (unsigned long long)o->blocked_for_ms,
                   (double)(now - o->blocked_at_ms) / 1000.0);
        return;
    }
    r->status = 200;
    buf_printf(&r->body, "ok\n");
}

static bool is_member(const struct repl_status *st, uint64_t id)
{
    for (size_t i = 0; i < st->nmembers; i++)
        if (st->members[i].id == id)
            return true;
    return false;
}

/* Ready = not stopping, and for every group: started, a member, a leader known. The
 * reason names the first thing missing. */
static void readyz(struct observe *o, struct http_reply *r)
{
    struct node *n = o->node;
    struct repl_status st;
    r->status = 503;
    if (n->stopping) {
        buf_printf(&r->body, "not ready: the node is stopping\n");
        return;
    }
    /* The meta group reachable (its leader known, the placement table read), and every
     * group this node is a member of has a leader. */
    if (node_group(n, 0) == NULL) {
        buf_printf(&r->body, "not ready: groups not started (waiting for the initial "
                             "members)\n");
        return;
    }
    if (!n->have_pl || node_group_leader(n, 0)[0] == '\0') {
        buf_printf(&r->body, "not ready: the meta group (placement table) is not reachable\n");
        return;
    }
    bool member = false;
    for (uint32_t gid = 0; gid <= PL_MAX_SHARDS; gid++) {
        if (node_group(n, gid) == NULL)
            continue;
        node_group_status(n, gid, &st);
        if (!is_member(&st, n->cfg.node_id))
            continue;
        member = true;
        if (st.leader_id == 0) {
            buf_printf(&r->body, "not ready: group %u has no known leader\n", gid);
            return;
        }
    }
    if (!member) {
        buf_printf(&r->body, "not ready: node %llu is not a member of any group yet\n",
                   (unsigned long long)n->cfg.node_id);
        return;
    }
    r->status = 200;
    buf_printf(&r->body, "ready\n");
}

static void handle(void *arg, const char *path, struct http_reply *r)
{
    struct observe *o = arg;
    buf_reset(&r->body);
    if (strcmp(path, "/metrics") == 0) {
        collect(o);
        if (metrics_render(o->reg, &r->body) == 0) {
            r->status = 200;
            r->content_type = "text/plain; version=0.0.4; charset=utf-8";
            return;
        }
        buf_reset(&r->body);
        r->status = 500;
        buf_printf(&r->body, "out of memory\n");
    } else if (strcmp(path, "/healthz") == 0) {
        healthz(o, r);
    } else if (strcmp(path, "/readyz") == 0) {
        readyz(o, r);
    } else {
        r->status = 404;
        buf_printf(&r->body, "not found: the paths are /metrics, /healthz and /readyz\n");
    }
}

static void count_response(void *arg, int status)
{
    struct observe *o = arg;
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    const char *v[] = {code};
    metric_add(series(o, F_HTTP_REQUESTS, v), 1);
}

/* ---- Start and stop ------------------------------------------------------------------- */

static void obs_free(struct observe *o)
{
    o->node->obs = NULL;
    metrics_free(o->reg);
    sm_free(o);
}

static void handle_closed(struct observe *o)
{
    if (--o->open_handles == 0)
        obs_free(o);
}

static void timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void http_closed(struct http_server *s)
{
    handle_closed(s->arg);
}

int observe_start(struct node *n, struct err *err)
{
    if (n->cfg.http[0] == '\0')
        return 0;
    char host[REPL_ADDRESS_MAX + 1];
    int port;
    if (parse_hostport(n->cfg.http, host, sizeof host, &port))
        return err_set(err, STRATA_INVALID_ARGUMENT, "--http must be HOST:PORT, got '%s'",
                       n->cfg.http);
    /* "[::1]:9100": the brackets are not part of the address. */
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    struct observe *o = sm_calloc(1, sizeof *o);
    if (o == NULL || metrics_new(&o->reg)) {
        sm_free(o);
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    }
    o->node = n;
    n->obs = o;
    o->start_ns = uv_hrtime();
    for (int i = 0; i < F_COUNT; i++)
        if (metrics_family_add(o->reg, &defs[i], &o->fam[i])) {
            obs_free(o);
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        }
    add_op(o, "unknown"); /* OBSERVE_OP_UNKNOWN */
    uv_timer_init(n->loop, &o->lag_timer);
    o->lag_timer.data = o;
    o->open_handles++;
    o->lag_last_ns = uv_hrtime();
    uv_timer_start(&o->lag_timer, on_lag_tick, LAG_TICK_MS, LAG_TICK_MS);
    o->open_handles++; /* the HTTP server, until its closed callback */
    int rc = http_server_start(&o->http, n->loop, host, port, handle, count_response, o, err);
    if (rc)
        return rc; /* node_start fails; the process exits without running the loop */
    log_info("metrics and health on http://%s/ (/metrics, /healthz, /readyz)", n->cfg.http);
    return 0;
}

void observe_stop(struct node *n)
{
    struct observe *o = n->obs;
    if (o == NULL || uv_is_closing((uv_handle_t *)&o->lag_timer))
        return;
    uv_close((uv_handle_t *)&o->lag_timer, timer_closed);
    http_server_close(&o->http, http_closed);
}
