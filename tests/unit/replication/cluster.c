/* Test harness for replication groups (cluster.h). */
#define _XOPEN_SOURCE 700
#include "cluster.h"

#include "proto.h"

#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct acceptor {
    struct acceptor *prev, *next;
    struct cl_node *n;
    uv_tcp_t *tcp;
    uint8_t buf[PROTO_PEER_FIXED + PROTO_ADDRESS_MAX];
    size_t have, need;
};

static struct cluster *live; /* the cluster of the running test, until cl_teardown */

double cl_now_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

static bool verbose(void)
{
    return getenv("CL_VERBOSE") != NULL;
}

/* ---- Acceptor ------------------------------------------------------------------------ */

static void acc_unlink(struct acceptor *a)
{
    struct cluster *c = a->n->c;
    if (a->prev != NULL)
        a->prev->next = a->next;
    else
        c->acceptors = a->next;
    if (a->next != NULL)
        a->next->prev = a->prev;
}

static void acc_tcp_closed(uv_handle_t *h)
{
    free(h); /* malloc: the same heap raft_free uses */
}

static void acc_close(struct acceptor *a)
{
    acc_unlink(a);
    uv_close((uv_handle_t *)a->tcp, acc_tcp_closed);
    free(a);
}

static void acc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct acceptor *a = h->data;
    (void)suggested;
    /* Exactly what the preamble still needs: not one byte of raft's stream. */
    b->base = (char *)a->buf + a->have;
    b->len = a->need - a->have;
}

static void acc_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct acceptor *a = s->data;
    (void)b;
    if (nread < 0) {
        acc_close(a);
        return;
    }
    a->have += (size_t)nread;
    if (a->have < a->need)
        return;
    struct proto_peer peer;
    size_t used = 0;
    struct err err;
    int rc = proto_peer_decode(a->buf, a->have, &peer, &used, &err);
    if (rc == 0) {
        a->need = used;
        return;
    }
    if (rc != 1) {
        fprintf(stderr, "acceptor: bad preamble: %s\n", err.msg);
        acc_close(a);
        return;
    }
    uv_read_stop(s);
    struct cl_node *n = a->n;
    if (n->g == NULL || n->stopping || peer.group != n->c->opts.group_id) {
        acc_close(a);
        return;
    }
    uv_tcp_t *tcp = a->tcp;
    acc_unlink(a);
    free(a);
    tcp->data = NULL;
    repl_group_accept(n->g, peer.node_id, peer.address, (uv_stream_t *)tcp);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct cl_node *n = server->data;
    if (status != 0)
        return;
    struct acceptor *a = calloc(1, sizeof *a);
    uv_tcp_t *tcp = malloc(sizeof *tcp);
    assert_non_null(a);
    assert_non_null(tcp);
    uv_tcp_init(&n->c->loop, tcp);
    a->n = n;
    a->tcp = tcp;
    a->need = PROTO_PEER_FIXED;
    tcp->data = a;
    a->next = n->c->acceptors;
    if (a->next != NULL)
        a->next->prev = a;
    n->c->acceptors = a;
    if (uv_accept(server, (uv_stream_t *)tcp) != 0) {
        acc_close(a);
        return;
    }
    uv_tcp_nodelay(tcp, 1);
    uv_read_start((uv_stream_t *)tcp, acc_alloc, acc_read);
}

/* ---- Nodes ---------------------------------------------------------------------------- */

static void on_event(void *arg, enum repl_event ev, const char *detail)
{
    struct cl_node *n = arg;
    switch (ev) {
    case REPL_EV_ELECTED:
        n->elected++;
        break;
    case REPL_EV_LOST_LEADERSHIP:
        n->lost++;
        break;
    case REPL_EV_LEADER_CHANGED:
        n->leader_changed++;
        break;
    case REPL_EV_SNAPSHOT_TAKEN:
        n->snapshots_taken++;
        snprintf(n->snapshot_detail, sizeof n->snapshot_detail, "%s", detail);
        break;
    case REPL_EV_SNAPSHOT_INSTALLED:
        n->snapshots_installed++;
        break;
    case REPL_EV_PEER_UP:
        n->peer_up++;
        break;
    case REPL_EV_PEER_DOWN:
        n->peer_down++;
        break;
    default:
        break;
    }
    if (verbose())
        fprintf(stderr, "[%8.1f] node %llu event %d: %s\n", cl_now_ms(), (unsigned long long)n->id,
                (int)ev, detail);
}

static void deadline_cb(uv_timer_t *t)
{
    struct cluster *c = t->data;
    c->expired = true;
    uv_stop(&c->loop);
}

void cl_init(struct cluster *c, int n)
{
    memset(c, 0, sizeof *c);
    signal(SIGPIPE, SIG_IGN); /* a peer closing mid-write is an error code, not a kill */
    log_set_level(verbose() ? LOG_DEBUG : LOG_WARN);
    assert_true(n <= CL_MAX);
    assert_int_equal(uv_loop_init(&c->loop), 0);
    snprintf(c->root, sizeof c->root, "%s/strata-repl-XXXXXX",
             getenv("CL_TMPDIR") != NULL ? getenv("CL_TMPDIR") : "/tmp");
    assert_non_null(mkdtemp(c->root));
    uv_timer_init(&c->loop, &c->deadline);
    c->deadline.data = c;
    repl_options_default(&c->opts);
    c->opts.group_id = 7;
    c->opts.election_timeout_ms = 500;
    c->opts.heartbeat_timeout_ms = 50;
    c->n = n;
    live = c;
    for (int i = 0; i < n; i++) {
        struct cl_node *nd = &c->nodes[i];
        nd->c = c;
        nd->idx = i;
        nd->id = (uint64_t)i + 1;
        snprintf(nd->dir, sizeof nd->dir, "%s/node%d", c->root, i + 1);
        uv_tcp_init(&c->loop, &nd->listener);
        nd->listener.data = nd;
        struct sockaddr_in sa;
        uv_ip4_addr("127.0.0.1", 0, &sa);
        assert_int_equal(uv_tcp_bind(&nd->listener, (const struct sockaddr *)&sa, 0), 0);
        assert_int_equal(uv_listen((uv_stream_t *)&nd->listener, 64, on_connection), 0);
        nd->listening = true;
        struct sockaddr_storage ss;
        int len = sizeof ss;
        assert_int_equal(uv_tcp_getsockname(&nd->listener, (struct sockaddr *)&ss, &len), 0);
        snprintf(nd->address, sizeof nd->address, "127.0.0.1:%d",
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
}

void cl_use_names(struct cluster *c)
{
    for (int i = 0; i < c->n; i++) {
        const char *port = strrchr(c->nodes[i].address, ':') + 1;
        char a[64];
        snprintf(a, sizeof a, "localhost:%s", port);
        snprintf(c->nodes[i].address, sizeof c->nodes[i].address, "%s", a);
    }
}

void cl_open(struct cluster *c, int i, int nboot)
{
    struct cl_node *nd = &c->nodes[i];
    assert_null(nd->g);
    if (nd->engine != NULL)
        storage_free(nd->engine);
    assert_int_equal(storage_new(NULL, &nd->engine), 0);
    struct repl_options o = c->opts;
    o.node_id = nd->id;
    o.address = nd->address;
    o.bind_host = "127.0.0.1";
    o.data_dir = nd->dir;
    struct err err;
    err_clear(&err);
    int rc = repl_group_open(&c->loop, &o, nd->engine, on_event, nd, &nd->g, &err);
    if (rc != 0)
        fail_msg("open node %d: %s", i, err.msg);
    if (nboot > 0) {
        struct repl_member m[CL_MAX];
        memset(m, 0, sizeof m);
        for (int k = 0; k < nboot; k++) {
            m[k].id = c->nodes[k].id;
            snprintf(m[k].address, sizeof m[k].address, "%s", c->nodes[k].address);
        }
        rc = repl_group_bootstrap(nd->g, m, (size_t)nboot, &err);
        if (rc != 0)
            fail_msg("bootstrap node %d: %s", i, err.msg);
    }
    rc = repl_group_start(nd->g, &err);
    if (rc != 0)
        fail_msg("start node %d: %s", i, err.msg);
    nd->stopping = false;
}

void cl_start(struct cluster *c, int nboot)
{
    for (int i = 0; i < nboot; i++)
        cl_open(c, i, nboot);
}

static void stopped_cb(void *arg)
{
    struct cl_node *nd = arg;
    nd->g = NULL;
    nd->stopping = false;
}

static bool node_gone(void *arg)
{
    return ((struct cl_node *)arg)->g == NULL;
}

void cl_stop(struct cluster *c, int i)
{
    struct cl_node *nd = &c->nodes[i];
    assert_non_null(nd->g);
    nd->stopping = true;
    repl_group_stop(nd->g, stopped_cb, nd);
    cl_run_until(c, node_gone, nd, 10000, "group stop");
}

void cl_unlisten(struct cluster *c, int i)
{
    assert_true(c->nodes[i].listening);
    c->nodes[i].listening = false;
    uv_close((uv_handle_t *)&c->nodes[i].listener, NULL);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void cl_wipe(struct cluster *c, int i)
{
    assert_null(c->nodes[i].g);
    nftw(c->nodes[i].dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static bool all_stopped(void *arg)
{
    struct cluster *c = arg;
    for (int i = 0; i < c->n; i++)
        if (c->nodes[i].g != NULL)
            return false;
    return true;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        fprintf(stderr, "leaked uv handle of type %s\n", uv_handle_type_name(h->type));
}

void cl_teardown(struct cluster *c)
{
    for (int i = 0; i < c->n; i++)
        if (c->nodes[i].g != NULL && !c->nodes[i].stopping) {
            c->nodes[i].stopping = true;
            repl_group_stop(c->nodes[i].g, stopped_cb, &c->nodes[i]);
        }
    cl_run_until(c, all_stopped, c, 15000, "stop all groups");
    while (c->acceptors != NULL)
        acc_close(c->acceptors);
    for (int i = 0; i < c->n; i++)
        if (c->nodes[i].listening)
            uv_close((uv_handle_t *)&c->nodes[i].listener, NULL);
    uv_close((uv_handle_t *)&c->deadline, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_walk(&c->loop, walk_close, NULL);
    assert_int_equal(uv_loop_close(&c->loop), 0); /* no handle leaked */
    for (int i = 0; i < c->n; i++)
        if (c->nodes[i].engine != NULL)
            storage_free(c->nodes[i].engine);
    nftw(c->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    live = NULL;
    assert_int_not_equal(access(c->root, F_OK), 0);
}

int cl_fixture_teardown(void **state)
{
    (void)state;
    if (live != NULL) {
        nftw(live->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        live = NULL;
    }
    return 0;
}

/* ---- Waiting --------------------------------------------------------------------------- */

void cl_run_until(struct cluster *c, bool (*pred)(void *), void *arg, unsigned timeout_ms,
                  const char *what)
{
    if (pred(arg))
        return;
    c->expired = false;
    uv_timer_start(&c->deadline, deadline_cb, timeout_ms, 0);
    while (!pred(arg) && !c->expired)
        uv_run(&c->loop, UV_RUN_ONCE);
    uv_timer_stop(&c->deadline);
    if (!pred(arg)) {
        for (int i = 0; i < c->n; i++) {
            if (c->nodes[i].g == NULL)
                continue;
            struct repl_status st;
            repl_group_status(c->nodes[i].g, &st);
            fprintf(stderr,
                    "node %d: role %d leader %llu term %llu commit %llu applied %llu last "
                    "%llu snapshot %llu version %llu\n",
                    i + 1, (int)st.role, (unsigned long long)st.leader_id,
                    (unsigned long long)st.term, (unsigned long long)st.commit_index,
                    (unsigned long long)st.applied_index, (unsigned long long)st.last_index,
                    (unsigned long long)st.snapshot_index,
                    (unsigned long long)storage_version(c->nodes[i].engine));
        }
        fail_msg("timed out after %u ms waiting for: %s", timeout_ms, what);
    }
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

void cl_run_for(struct cluster *c, unsigned ms)
{
    c->expired = false;
    uv_timer_start(&c->deadline, deadline_cb, ms, 0);
    while (!never(NULL) && !c->expired)
        uv_run(&c->loop, UV_RUN_ONCE);
    uv_timer_stop(&c->deadline);
}

int cl_leader_of(struct cluster *c)
{
    for (int i = 0; i < c->n; i++) {
        struct cl_node *nd = &c->nodes[i];
        if (nd->g == NULL || nd->stopping)
            continue;
        struct repl_status st;
        repl_group_status(nd->g, &st);
        if (st.role == REPL_LEADER)
            return i;
    }
    return -1;
}

static bool leader_agreed(void *arg)
{
    struct cluster *c = arg;
    int l = cl_leader_of(c);
    if (l < 0)
        return false;
    for (int i = 0; i < c->n; i++) {
        struct cl_node *nd = &c->nodes[i];
        if (nd->g == NULL || nd->stopping)
            continue;
        struct repl_status st;
        repl_group_status(nd->g, &st);
        if (st.leader_id != c->nodes[l].id)
            return false;
    }
    return true;
}

int cl_wait_leader(struct cluster *c, unsigned timeout_ms)
{
    cl_run_until(c, leader_agreed, c, timeout_ms, "an agreed leader");
    return cl_leader_of(c);
}

static bool caught_up(void *arg)
{
    struct cluster *c = arg;
    int l = cl_leader_of(c);
    if (l < 0)
        return false;
    struct repl_status ls;
    repl_group_status(c->nodes[l].g, &ls);
    if (ls.applied_index < ls.last_index)
        return false;
    for (int i = 0; i < c->n; i++) {
        struct cl_node *nd = &c->nodes[i];
        if (nd->g == NULL || nd->stopping)
            continue;
        struct repl_status st;
        repl_group_status(nd->g, &st);
        if (st.applied_index < ls.last_index)
            return false;
    }
    return true;
}

void cl_wait_caught_up(struct cluster *c, unsigned timeout_ms)
{
    cl_run_until(c, caught_up, c, timeout_ms, "all replicas applied the leader's log");
}

int cl_assert_same_state(struct cluster *c)
{
    struct buf first;
    buf_init(&first);
    int count = 0;
    for (int i = 0; i < c->n; i++) {
        struct cl_node *nd = &c->nodes[i];
        if (nd->g == NULL || nd->stopping)
            continue;
        struct buf b;
        buf_init(&b);
        struct err err;
        assert_int_equal(storage_snapshot_buf(nd->engine, &b, &err), 0);
        if (count == 0) {
            first = b;
        } else {
            if (b.len != first.len || memcmp(b.data, first.data, b.len) != 0)
                fail_msg("node %d's engine differs from the first running node's (%zu vs %zu "
                         "bytes)",
                         i, b.len, first.len);
            buf_close(&b);
        }
        count++;
    }
    buf_close(&first);
    return count;
}

/* ---- Requests -------------------------------------------------------------------------- */

void cl_cmd(struct buf *out, const char *fmt, ...)
{
    char json[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    buf_init(out);
    struct err err;
    if (storage_json_to_value(json, strlen(json), out, &err) != 0)
        fail_msg("bad test JSON %s: %s", json, err.msg);
}

static void done_cb(void *arg, int code, const uint8_t *result, size_t len, const char *message,
                    const char *leader)
{
    struct cl_result *r = arg;
    r->calls++;
    r->done = true;
    r->reentrant = !r->returned;
    r->code = code;
    r->json[0] = '\0';
    r->leader[0] = '\0';
    if (code == 0) {
        if (result != NULL) {
            struct buf j;
            buf_init(&j);
            storage_value_to_json(result, len, &j, false);
            snprintf(r->json, sizeof r->json, "%.*s", (int)j.len, (const char *)j.data);
            buf_close(&j);
        }
    } else {
        snprintf(r->json, sizeof r->json, "%s", message != NULL ? message : "");
        if (leader != NULL)
            snprintf(r->leader, sizeof r->leader, "%s", leader);
    }
}

repl_done_cb cl_done_cb(void)
{
    return done_cb;
}

static void prep(struct cl_result *r)
{
    memset(r, 0, sizeof *r);
}

void cl_write(struct cluster *c, int i, struct cl_result *r, const char *fmt, ...)
{
    char json[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    struct buf cmd;
    cl_cmd(&cmd, "%s", json);
    prep(r);
    repl_write(c->nodes[i].g, cmd.data, cmd.len, done_cb, r);
    r->returned = true;
    buf_close(&cmd);
}

void cl_read(struct cluster *c, int i, bool stale, struct cl_result *r, const char *fmt, ...)
{
    char json[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    struct buf cmd;
    cl_cmd(&cmd, "%s", json);
    prep(r);
    repl_read(c->nodes[i].g, cmd.data, cmd.len, stale, done_cb, r);
    r->returned = true;
    buf_close(&cmd);
}

static bool result_done(void *arg)
{
    return ((struct cl_result *)arg)->done;
}

void cl_wait(struct cluster *c, struct cl_result *r, unsigned timeout_ms)
{
    cl_run_until(c, result_done, r, timeout_ms, "a request's callback");
    assert_false(r->reentrant);
    assert_int_equal(r->calls, 1);
}

void cl_put_ok(struct cluster *c, int i, const char *key, int v)
{
    struct cl_result r;
    cl_write(c, i, &r, "{\"op\":\"kv.put\",\"key\":\"%s\",\"value\":%d}", key, v);
    cl_wait(c, &r, 10000);
    if (r.code != 0)
        fail_msg("write %s on node %d: %s: %s", key, i + 1, err_name(r.code), r.json);
}
