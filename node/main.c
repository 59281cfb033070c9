/* stratadb-server: command-line flags (DESIGN §6) and the main loop. */
#include "node.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: stratadb-server --data-dir DIR [--listen HOST:PORT] [--advertise HOST:PORT]\n"
            "                       [--node-id N] (--bootstrap HOST:PORT,... | --join HOST:PORT,...)\n"
            "                       [--api-keys FILE] [--election-timeout-ms MS]\n"
            "                       [--heartbeat-timeout-ms MS] [--snapshot-threshold N]\n"
            "                       [--snapshot-trailing N] [--max-frame-bytes N]\n"
            "                       [--idle-timeout-ms MS] [--shards N] [--replication-factor N]\n"
            "                       [--log-level debug|info|warn|error] [--http HOST:PORT]\n"
            "                       [--disk-reserve-mb N] [--disk-stall-ms MS]\n"
            "                       [--auto-move-branches on|off]\n"
            "Defaults: --listen 127.0.0.1:9876, --advertise = --listen, no --http.\n"
            "--http serves /metrics (Prometheus), /healthz and /readyz over HTTP/1.1\n"
            "(docs/operations.md). A group refuses writes and hands leadership away while\n"
            "its disk has less than --disk-reserve-mb free (default 64) or a log write\n"
            "fails or takes longer than --disk-stall-ms (default 3000); 0 turns either\n"
            "check off (docs/reliability.md). --auto-move-branches off stops the\n"
            "rebalancer from moving standalone branches between shards (default on,\n"
            "docs/sharding.md \"Rebalancing\"). See docs/server.md.\n");
}

static int parse_members(const char *list, struct node_config *c)
{
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == 0 || n > REPL_ADDRESS_MAX || c->nmembers == NODE_MAX_MEMBERS)
            return -1;
        struct repl_member *m = &c->members[c->nmembers];
        m->id = c->nmembers + 1; /* ids 1..n in list order */
        memcpy(m->address, p, n);
        m->address[n] = '\0';
        char host[REPL_ADDRESS_MAX + 1];
        int port;
        if (parse_hostport(m->address, host, sizeof host, &port))
            return -1;
        c->nmembers++;
        p += n + (p[n] == ',');
    }
    return c->nmembers ? 0 : -1;
}

static unsigned long long num(const char *flag, const char *v)
{
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v == '\0' || *end || *v == '-') {
        fprintf(stderr, "stratadb-server: %s needs a non-negative integer, got '%s'\n", flag, v);
        exit(2);
    }
    return x;
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct node *n = s->data;
    log_info("received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    node_stop(n);
}

int main(int argc, char **argv)
{
    static struct node node;
    struct node_config *c = &node.cfg;
    const char *listen = "127.0.0.1:9876", *advertise = NULL, *bootstrap = NULL;
    repl_options_default(&c->repl);
    c->max_frame = PROTO_MAX_FRAME_DEFAULT;
    c->idle_timeout_ms = 600000;
    c->shards = 3;
    c->rf = 3;
    c->auto_move_branches = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (v == NULL) {
            fprintf(stderr, "stratadb-server: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (strcmp(a, "--data-dir") == 0)
            c->data_dir = v;
        else if (strcmp(a, "--listen") == 0)
            listen = v;
        else if (strcmp(a, "--advertise") == 0)
            advertise = v;
        else if (strcmp(a, "--node-id") == 0)
            c->node_id = num(a, v);
        else if (strcmp(a, "--bootstrap") == 0)
            bootstrap = v;
        else if (strcmp(a, "--join") == 0)
            snprintf(c->join, sizeof c->join, "%s", v);
        else if (strcmp(a, "--api-keys") == 0)
            c->api_keys_file = v;
        else if (strcmp(a, "--election-timeout-ms") == 0)
            c->repl.election_timeout_ms = (unsigned)num(a, v);
        else if (strcmp(a, "--heartbeat-timeout-ms") == 0)
            c->repl.heartbeat_timeout_ms = (unsigned)num(a, v);
        else if (strcmp(a, "--snapshot-threshold") == 0)
            c->repl.snapshot_threshold = (unsigned)num(a, v);
        else if (strcmp(a, "--snapshot-trailing") == 0)
            c->repl.snapshot_trailing = (unsigned)num(a, v);
        else if (strcmp(a, "--disk-reserve-mb") == 0 || strcmp(a, "--disk-stall-ms") == 0) {
            unsigned long long x = num(a, v);
            bool reserve = strcmp(a, "--disk-reserve-mb") == 0;
            if (x > (reserve ? 1ull << 30 : 3600000ull)) {
                fprintf(stderr, "stratadb-server: %s must be at most %s, got '%s'\n", a,
                        reserve ? "1073741824 (1 PiB)" : "3600000 (an hour)", v);
                return 2;
            }
            if (reserve)
                c->repl.disk_reserve_bytes = (uint64_t)x << 20;
            else
                c->repl.disk_stall_ms = (unsigned)x;
        }
        else if (strcmp(a, "--max-frame-bytes") == 0)
            c->max_frame = num(a, v);
        else if (strcmp(a, "--idle-timeout-ms") == 0)
            c->idle_timeout_ms = (unsigned)num(a, v);
        else if (strcmp(a, "--shards") == 0)
            c->shards = (uint32_t)num(a, v);
        else if (strcmp(a, "--replication-factor") == 0)
            c->rf = (uint32_t)num(a, v);
        else if (strcmp(a, "--auto-move-branches") == 0) {
            if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
                fprintf(stderr, "stratadb-server: --auto-move-branches must be on or off, got '%s'\n",
                        v);
                return 2;
            }
            c->auto_move_branches = strcmp(v, "on") == 0;
        } else if (strcmp(a, "--http") == 0) {
            char host[sizeof c->http];
            int port;
            if (strlen(v) >= sizeof c->http || parse_hostport(v, host, sizeof host, &port)) {
                fprintf(stderr, "stratadb-server: --http must be HOST:PORT, got '%s'\n", v);
                return 2;
            }
            snprintf(c->http, sizeof c->http, "%s", v);
        } else if (strcmp(a, "--log-level") == 0) {
            static const char *const lv[] = {"debug", "info", "warn", "error"};
            int found = -1;
            for (int j = 0; j < 4; j++)
                if (strcmp(v, lv[j]) == 0)
                    found = j;
            if (found < 0) {
                fprintf(stderr, "stratadb-server: unknown log level '%s'\n", v);
                return 2;
            }
            log_set_level((enum log_level)found);
        } else {
            fprintf(stderr, "stratadb-server: unknown flag %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (c->shards < 1 || c->shards > PL_MAX_SHARDS || c->rf < 1 || c->rf > PL_MAX_REPLICAS) {
        fprintf(stderr, "stratadb-server: --shards must be 1-%d and --replication-factor 1-%d\n",
                PL_MAX_SHARDS, PL_MAX_REPLICAS);
        return 2;
    }
    if (c->data_dir == NULL) {
        fprintf(stderr, "stratadb-server: --data-dir is required\n");
        usage(stderr);
        return 2;
    }
    if (parse_hostport(listen, c->listen_host, sizeof c->listen_host, &c->listen_port)) {
        fprintf(stderr, "stratadb-server: --listen must be HOST:PORT, got '%s'\n", listen);
        return 2;
    }
    snprintf(c->advertise, sizeof c->advertise, "%s", advertise ? advertise : listen);
    if (bootstrap && parse_members(bootstrap, c)) {
        fprintf(stderr, "stratadb-server: --bootstrap must list 1-%d HOST:PORT addresses\n",
                NODE_MAX_MEMBERS);
        return 2;
    }
    if (bootstrap && c->join[0]) {
        fprintf(stderr, "stratadb-server: give --bootstrap or --join, not both\n");
        return 2;
    }
    if (c->max_frame < 1024 || c->max_frame > PROTO_MAX_FRAME_LIMIT) {
        fprintf(stderr, "stratadb-server: --max-frame-bytes must be 1024..%u\n",
                PROTO_MAX_FRAME_LIMIT);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    node.loop = uv_default_loop();
    uv_signal_init(node.loop, &node.sigterm);
    uv_signal_init(node.loop, &node.sigint);
    node.sigterm.data = node.sigint.data = &node;
    uv_signal_start(&node.sigterm, on_signal, SIGTERM);
    uv_signal_start(&node.sigint, on_signal, SIGINT);
    struct err err;
    err_clear(&err);
    if (node_start(&node, &err)) {
        log_error("cannot start: %s: %s", err_name(err.code), err.msg);
        return 1;
    }
    uv_run(node.loop, UV_RUN_DEFAULT);
    auth_free(&node.auth);
    placement_free(&node.pl);
    log_info("stopped");
    return node.exit_code;
}
