/* One Raft group over the storage engine: setup of raft with its libuv I/O and our
 * transport, role tracking through step_cb, the deferred pump that makes every raft
 * call outside raft's own callbacks, and the stop sequence (hand-off, close, free). */
#include "group.h"
#include "transport.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define group_of(r) ((struct repl_group *)((char *)(r)-offsetof(struct repl_group, raft)))

void repl_options_default(struct repl_options *o)
{
    memset(o, 0, sizeof *o);
    o->election_timeout_ms = 1000;
    o->heartbeat_timeout_ms = 100;
    o->snapshot_threshold = 16384;
    o->snapshot_trailing = 4096;
    o->max_entry_bytes = 4u << 20;
    o->disk_stall_ms = 3000;
    o->disk_reserve_bytes = 64u << 20;
}

static void pump_cb(uv_idle_t *h);

/* Run the pump on the next loop iteration (idempotent, safe inside raft callbacks). */
void group_kick(struct repl_group *g)
{
    if (g->handles_open == g->handles_total && !uv_is_closing((uv_handle_t *)&g->pump))
        uv_idle_start(&g->pump, pump_cb);
}

void group_leader_address(struct repl_group *g, char *out, size_t cap)
{
    raft_id id = 0;
    const char *addr = NULL;
    out[0] = '\0';
    if (g->state == G_OPEN)
        return;
    raft_leader(&g->raft, &id, &addr);
    /* Ourselves while transferring or stepping down is no useful hint. */
    if (id != 0 && id != g->node_id && addr != NULL)
        snprintf(out, cap, "%s", addr);
}

void group_emit(struct repl_group *g, enum repl_event ev, const char *fmt, ...)
{
    if (g->on_event == NULL)
        return;
    struct pending_event *e = sm_calloc(1, sizeof *e);
    if (e == NULL)
        return; /* events are for logs and metrics: best effort */
    e->ev = ev;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof e->detail, fmt, ap);
    va_end(ap);
    if (g->ev_tail != NULL)
        g->ev_tail->next = e;
    else
        g->ev_head = e;
    g->ev_tail = e;
    group_kick(g);
}

static void deliver_events(struct repl_group *g)
{
    struct pending_event *e;
    while ((e = g->ev_head) != NULL) {
        g->ev_head = e->next;
        if (g->ev_head == NULL)
            g->ev_tail = NULL;
        g->on_event(g->event_arg, e->ev, e->detail);
        sm_free(e);
    }
}

/* ---- Role tracking ------------------------------------------------------------------ */

/* Called by raft after every step. Only records what changed (trap 6). */
static void step_cb(struct raft *r)
{
    struct repl_group *g = group_of(r);
    bool leader = raft_state(r) == RAFT_LEADER;
    if (g->was_leader && !leader) {
        g->lost_pending = true;
        /* Entries of the lost term may be truncated and their indexes reused by the
         * next leader: stop matching them in apply. */
        for (unsigned i = 0; i < REPL_MAX_INFLIGHT; i++)
            g->batches[i].live = false;
        group_kick(g);
    } else if (!g->was_leader && leader) {
        g->elected_pending = true;
        g->lead_term = raft_current_term(r);
        group_kick(g);
    }
    g->was_leader = leader;
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(r, &id, &addr);
    if (id != g->last_leader_id) {
        g->last_leader_id = id;
        if (id != 0) {
            g->leader_changed_pending = true;
            group_kick(g);
        }
    }
    /* A snapshot install held while our own snapshot was written goes in now. */
    if (g->snap_held && !r->legacy.snapshot_taking)
        group_kick(g);
    /* Work held during a transfer resumes when it ends. */
    if (leader && (g->writes.head != NULL || g->reads.head != NULL || g->admin.head != NULL))
        group_kick(g);
}

static void on_peer(void *arg, bool up, uint64_t id, const char *address)
{
    group_emit(arg, up ? REPL_EV_PEER_UP : REPL_EV_PEER_DOWN, "%llu %s", (unsigned long long)id,
               address);
}

/* ---- Close sequence -------------------------------------------------------------------- */

static void free_group(struct repl_group *g)
{
    snapfork_cancel(g); /* done at raft's io close already: no encoder outlives its group */
    snapguard_free(g);
    restoreprep_discard(g, "the group is closed"); /* the decode ended before raft closed */
    struct pending_event *e;
    while ((e = g->ev_head) != NULL) {
        g->ev_head = e->next;
        sm_free(e);
    }
    sm_free(g->address);
    sm_free(g->data_dir);
    sm_free(g);
}

static void handle_closed(uv_handle_t *h)
{
    struct repl_group *g = h->data;
    if (--g->handles_open > 0)
        return;
    /* Callbacks may submit more (they fail at once): drain until quiet. */
    while (g->done.head != NULL || g->ev_head != NULL) {
        if (g->on_event != NULL)
            deliver_events(g);
        req_deliver(g);
    }
    void (*cb)(void *) = g->stop_cb;
    void *arg = g->stop_arg;
    log_info("group %u: stopped (node %llu): %llu entries, %llu commands applied, %llu "
             "snapshots",
             g->group_id, (unsigned long long)g->node_id, (unsigned long long)g->entries_applied,
             (unsigned long long)g->commands_applied, (unsigned long long)g->snapshots_taken);
    free_group(g);
    if (cb != NULL)
        cb(arg);
}

static void raft_closed(struct raft *r)
{
    struct repl_group *g = group_of(r);
    raft_uv_close(&g->io);
    transport_free(&g->transport);
    requests_fail_on_close(g);
    uv_close((uv_handle_t *)&g->pump, handle_closed);
    uv_close((uv_handle_t *)&g->timer, handle_closed);
    restoreprep_close_handle(g, handle_closed);
}

static void begin_close(struct repl_group *g)
{
    g->state = G_CLOSING;
    uv_timer_stop(&g->timer);
    raft_close(&g->raft, raft_closed);
}

/* ---- The pump: every raft call outside raft callbacks ------------------------------- */

static bool has_other_voter(struct repl_group *g)
{
    for (unsigned i = 0; i < g->raft.configuration.n; i++) {
        const struct raft_server *s = &g->raft.configuration.servers[i];
        if (s->id != g->node_id && s->role == RAFT_VOTER)
            return true;
    }
    return false;
}

static void stop_xfer_cb(struct raft_transfer *req)
{
    struct repl_group *g = req->data;
    /* raft calls this when the target's election made us step down (the new leader may
     * not be known yet) or when an election timeout passed without that: say which in
     * the log, where operators look for it. */
    if (raft_state(&g->raft) != RAFT_LEADER)
        log_info("group %u: leadership handed to node %llu", g->group_id,
                 (unsigned long long)req->id);
    else
        log_warn("group %u: leadership hand-off to node %llu did not complete", g->group_id,
                 (unsigned long long)req->id);
    g->handoff_done = true;
    group_kick(g);
}

static void handoff_timeout(uv_timer_t *t)
{
    struct repl_group *g = t->data;
    log_warn("group %u: leadership hand-off did not finish in time; closing anyway", g->group_id);
    g->handoff_done = true;
    group_kick(g);
}

/* Returns true when the group should close now. */
static bool handoff_step(struct repl_group *g)
{
    if (g->handoff_done || g->state == G_OPEN || raft_state(&g->raft) != RAFT_LEADER)
        return true;
    /* Let writes and reads in flight finish first so their clients get real answers. */
    if (g->stop_xfer_issued || g->inflight > 0 || g->barrier_inflight || g->admin_cur != NULL ||
        raft_transferee(&g->raft) != 0)
        return false;
    g->stop_xfer.data = g;
    int rv = raft_transfer(&g->raft, &g->stop_xfer, 0, stop_xfer_cb);
    if (rv != 0) {
        log_info("group %u: no leadership hand-off (%s)", g->group_id, raft_strerror(rv));
        return true;
    }
    g->stop_xfer_issued = true;
    return false;
}

static void pump_cb(uv_idle_t *h)
{
    struct repl_group *g = h->data;
    uv_idle_stop(h);
    if (g->state == G_CLOSING) {
        /* Completions raised while raft closes. */
        if (g->on_event != NULL)
            deliver_events(g);
        req_deliver(g);
        return;
    }
    snapguard_flush(g);
    if (g->lost_pending) {
        g->lost_pending = false;
        requests_lost_leadership(g);
        log_info("group %u: node %llu lost leadership", g->group_id,
                 (unsigned long long)g->node_id);
        group_emit(g, REPL_EV_LOST_LEADERSHIP, "term=%llu",
                   (unsigned long long)raft_current_term(&g->raft));
    }
    if (g->elected_pending) {
        g->elected_pending = false;
        if (raft_state(&g->raft) == RAFT_LEADER) {
            /* No reads until a barrier of this term commits (RAFT-NOTES): every read
             * waits for a barrier issued after it arrived; the first goes out now. */
            g->barrier_needed = true;
            log_info("group %u: node %llu elected leader in term %llu", g->group_id,
                     (unsigned long long)g->node_id, (unsigned long long)g->lead_term);
            group_emit(g, REPL_EV_ELECTED, "term=%llu", (unsigned long long)g->lead_term);
        }
    }
    if (g->leader_changed_pending) {
        g->leader_changed_pending = false;
        raft_id id = 0;
        const char *addr = NULL;
        raft_leader(&g->raft, &id, &addr);
        if (id != 0)
            group_emit(g, REPL_EV_LEADER_CHANGED, "%s", addr != NULL ? addr : "");
    }
    watchdog_pump(g);
    if (g->state == G_RUNNING || g->state == G_HANDOFF)
        requests_flush(g);
    bool close_now = g->state == G_HANDOFF && handoff_step(g);
    if (g->on_event != NULL)
        deliver_events(g);
    req_deliver(g);
    /* A callback above may have started the stop: check again. */
    if (!close_now && g->state == G_HANDOFF)
        close_now = handoff_step(g);
    if (close_now)
        begin_close(g);
}

/* ---- Public API ------------------------------------------------------------------------- */

static int mkdir_p(const char *path, struct err *err)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp)
        return err_set(err, STRATA_INVALID_ARGUMENT, "data_dir must be 1..%zu bytes",
                       sizeof tmp - 1);
    memcpy(tmp, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] != '/' && tmp[i] != '\0')
            continue;
        char c = tmp[i];
        tmp[i] = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return err_set(err, STRATA_INVALID_ARGUMENT, "cannot create data_dir %s: %s", tmp,
                           strerror(errno));
        tmp[i] = c;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set(err, STRATA_INVALID_ARGUMENT, "data_dir %s is not a directory", path);
    return 0;
}

static int check_options(const struct repl_options *o, struct err *err)
{
    if (o->node_id == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "node_id must be > 0");
    size_t alen = o->address != NULL ? strlen(o->address) : 0;
    if (alen == 0 || alen > REPL_ADDRESS_MAX)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "address must be \"host:port\" of 1..%d "
                       "bytes",
                       REPL_ADDRESS_MAX);
    char host[REPL_ADDRESS_MAX + 1], port[16];
    if (transport_split_address(o->address, host, sizeof host, port, sizeof port) != 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "address \"%s\" is not \"host:port\"",
                       o->address);
    for (size_t i = 0; i < alen; i++)
        if (o->address[i] < 0x21 || o->address[i] > 0x7e)
            return err_set(err, STRATA_INVALID_ARGUMENT, "address must be printable ASCII");
    if (o->data_dir == NULL || o->data_dir[0] == '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT, "data_dir is required");
    if (o->heartbeat_timeout_ms == 0 || o->election_timeout_ms <= o->heartbeat_timeout_ms)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "timeouts must satisfy 0 < "
                       "heartbeat_timeout_ms (%u) < election_timeout_ms (%u)",
                       o->heartbeat_timeout_ms, o->election_timeout_ms);
    if (o->snapshot_threshold == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "snapshot_threshold must be > 0");
    /* raft 0.22 hands the I/O layer an install as a snapshot put with trailing 0, and
     * faultio tells its own snapshots from installs that way. */
    if (o->snapshot_trailing == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "snapshot_trailing must be > 0 (entries kept after a snapshot)");
    if (o->max_entry_bytes < 64 || o->max_entry_bytes > (64u << 20))
        return err_set(err, STRATA_INVALID_ARGUMENT, "max_entry_bytes must be 64..%u", 64u << 20);
    return 0;
}

static int raft_err(struct repl_group *g, struct err *err, int rv, const char *what)
{
    int code = raft_code_to_strata(rv);
    if (rv == RAFT_IOERR || rv == RAFT_CORRUPT || rv == RAFT_NOSPACE || rv == RAFT_MALFORMED)
        code = STRATA_INTERNAL;
    if (rv == RAFT_NOTFOUND || rv == RAFT_NAMETOOLONG || rv == RAFT_INVALID)
        code = STRATA_INVALID_ARGUMENT;
    if (rv == -1 || rv < 0)
        code = STRATA_INTERNAL;
    const char *detail = g->raft_inited ? raft_errmsg(&g->raft) : g->io.errmsg;
    return err_set(err, code, "group %u: %s: %s%s%.150s%s", g->group_id, what,
                   rv > 0 ? raft_strerror(rv) : "failed", detail[0] ? " (" : "", detail,
                   detail[0]            ? ")"
                   : rv == RAFT_CORRUPT ? " (see the log; data_dir needs repair "
                                          "or replacement)"
                                        : "");
}

int repl_group_open(uv_loop_t *loop, const struct repl_options *o, struct storage *engine,
                    repl_event_cb on_event, void *event_arg, struct repl_group **out,
                    struct err *err)
{
    int rc = check_options(o, err);
    if (rc != 0)
        return rc;
    rc = mkdir_p(o->data_dir, err);
    if (rc != 0)
        return rc;
    struct repl_group *g = sm_calloc(1, sizeof *g);
    if (g == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory (group)");
    g->loop = loop;
    g->engine = engine;
    g->hook = o->hook;
    g->group_id = o->group_id;
    g->node_id = o->node_id;
    g->address = sm_strdup(o->address);
    g->data_dir = sm_strdup(o->data_dir);
    g->election_timeout_ms = o->election_timeout_ms;
    g->heartbeat_timeout_ms = o->heartbeat_timeout_ms;
    g->max_entry_bytes = o->max_entry_bytes;
    g->on_event = on_event;
    g->event_arg = event_arg;
    if (g->address == NULL || g->data_dir == NULL) {
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory (group)");
        goto err_free_group;
    }
    /* Segments hold whole entries: at least twice the largest entry. */
    size_t seg = 8u << 20;
    while (seg < 2 * o->max_entry_bytes)
        seg *= 2;
    rc = faultio_repair(o->data_dir, seg, o->group_id, err); /* a torn last write */
    if (rc != 0)
        goto err_free_group;
    unsigned connect_timeout = o->election_timeout_ms < 1000 ? 1000 : o->election_timeout_ms;
    rc = transport_init(&g->transport, loop, o->group_id, o->bind_host, connect_timeout, on_peer, g,
                        err);
    if (rc != 0)
        goto err_free_group;
    int rv = raft_uv_init(&g->io, loop, o->data_dir, &g->transport);
    if (rv != 0) {
        rc = raft_err(g, err, rv, "raft_uv_init");
        goto err_free_transport;
    }
    fsm_setup(g);
    rv = raft_init(&g->raft, &g->io, &g->fsm, o->node_id, o->address);
    if (rv != 0) {
        rc = raft_err(g, err, rv, "raft_init");
        raft_uv_close(&g->io);
        goto err_free_transport;
    }
    g->raft_inited = true;
    /* All raft_set_* after raft_init, which resets them (trap 5). */
    raft_set_election_timeout(&g->raft, o->election_timeout_ms);
    raft_set_heartbeat_timeout(&g->raft, o->heartbeat_timeout_ms);
    raft_set_pre_vote(&g->raft, true);                            /* trap 13 */
    raft_set_capacity_threshold(&g->raft, 0);                     /* trap 4 */
    raft_set_max_inflight_entries(&g->raft, 1024);                /* trap 9 */
    raft_set_snapshot_threshold(&g->raft, o->snapshot_threshold); /* trap 8 */
    raft_set_snapshot_trailing(&g->raft, o->snapshot_trailing);
    g->raft.legacy.step_cb = step_cb;
    snapguard_init(g);
    faultio_init(g); /* wraps io.start too: after snapguard_init */
    watchdog_init(g, o);
    if (getenv("LIBRAFT_TRACE") == NULL) {
        /* The default tracer formats every message even when off (trap 10). */
        g->raft.tracer = NULL;
        raft_uv_set_tracer(&g->io, NULL);
    }
    raft_uv_set_segment_size(&g->io, seg);
    unsigned retry = o->election_timeout_ms / 4;
    raft_uv_set_connect_retry_delay(&g->io, retry < 50 ? 50 : retry > 1000 ? 1000 : retry);

    uv_idle_init(loop, &g->pump);
    g->pump.data = g;
    uv_timer_init(loop, &g->timer);
    g->timer.data = g;
    g->handles_open = 2 + restoreprep_init(g);
    g->handles_total = g->handles_open;
    g->state = G_OPEN;
    if (g->hook != NULL && g->hook->reset != NULL)
        g->hook->reset(g->hook->arg, g->group_id); /* the engine starts empty: so does the hook */
    *out = g;
    return 0;

err_free_transport:
    transport_free(&g->transport);
err_free_group:
    sm_free(g->address);
    sm_free(g->data_dir);
    sm_free(g);
    return rc;
}

int repl_group_bootstrap(struct repl_group *g, const struct repl_member *members, size_t n,
                         struct err *err)
{
    if (g->state != G_OPEN)
        return err_set(err, STRATA_INVALID_ARGUMENT, "bootstrap must come before start");
    if (members == NULL || n == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "bootstrap needs at least one member");
    bool self = false;
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        size_t alen = strnlen(members[i].address, sizeof members[i].address);
        if (members[i].id == 0 || alen == 0 || alen > REPL_ADDRESS_MAX) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT,
                         "member %zu: id must be > 0 and the "
                         "address 1..%d bytes",
                         i, REPL_ADDRESS_MAX);
            goto out;
        }
        if (members[i].id == g->node_id)
            self = true;
        int rv = raft_configuration_add(&conf, members[i].id, members[i].address, RAFT_VOTER);
        if (rv != 0) {
            rc = err_set(err, rv == RAFT_NOMEM ? STRATA_OUT_OF_MEMORY : STRATA_INVALID_ARGUMENT,
                         "member %zu (id %llu, %s): %s", i, (unsigned long long)members[i].id,
                         members[i].address, raft_strerror(rv));
            goto out;
        }
    }
    if (!self) {
        rc = err_set(err, STRATA_INVALID_ARGUMENT, "node %llu is not among the members",
                     (unsigned long long)g->node_id);
        goto out;
    }
    int rv = raft_bootstrap(&g->raft, &conf);
    if (rv == RAFT_CANTBOOTSTRAP) {
        log_info("group %u: data dir %s already holds raft state; bootstrap skipped", g->group_id,
                 g->data_dir);
    } else if (rv != 0) {
        rc = raft_err(g, err, rv, "bootstrap");
    }
out:
    raft_configuration_close(&conf);
    return rc;
}

int repl_group_start(struct repl_group *g, struct err *err)
{
    if (g->state != G_OPEN)
        return err_set(err, STRATA_INVALID_ARGUMENT, "group %u already started", g->group_id);
    int rv = raft_start(&g->raft);
    if (rv != 0)
        return raft_err(g, err, rv, "start");
    g->state = G_RUNNING;
    log_info("group %u: node %llu started at %s (dir %s)", g->group_id,
             (unsigned long long)g->node_id, g->address, g->data_dir);
    group_kick(g);
    return 0;
}

void repl_group_stop(struct repl_group *g, void (*cb)(void *arg), void *arg)
{
    if (g->state == G_HANDOFF || g->state == G_CLOSING) {
        log_warn("group %u: stop called twice; ignored", g->group_id);
        return;
    }
    g->stop_cb = cb;
    g->stop_arg = arg;
    bool handoff =
        g->state == G_RUNNING && raft_state(&g->raft) == RAFT_LEADER && has_other_voter(g);
    g->state = G_HANDOFF;
    req_fail_all(g, &g->writes, STRATA_UNAVAILABLE, "group stopping");
    req_fail_all(g, &g->reads, STRATA_UNAVAILABLE, "group stopping");
    req_fail_all(g, &g->admin, STRATA_UNAVAILABLE, "group stopping");
    if (handoff) {
        /* Bounded: two election timeouts, then close regardless. */
        uv_timer_start(&g->timer, handoff_timeout, 2 * (uint64_t)g->election_timeout_ms, 0);
    } else {
        g->handoff_done = true;
    }
    group_kick(g);
}

void repl_group_accept(struct repl_group *g, uint64_t peer_id, const char *peer_address,
                       uv_stream_t *stream)
{
    transport_accept(&g->transport, peer_id, peer_address, stream);
}

void repl_group_status(struct repl_group *g, struct repl_status *st)
{
    memset(st, 0, sizeof *st);
    if (g->state == G_CLOSING) {
        st->role = REPL_UNAVAILABLE;
        return;
    }
    switch (raft_state(&g->raft)) {
    case RAFT_FOLLOWER:
        st->role = REPL_FOLLOWER;
        break;
    case RAFT_CANDIDATE:
        st->role = REPL_CANDIDATE;
        break;
    case RAFT_LEADER:
        st->role = REPL_LEADER;
        break;
    default:
        st->role = REPL_UNAVAILABLE;
        break;
    }
    if (g->state != G_OPEN) {
        raft_id id = 0;
        const char *addr = NULL;
        raft_leader(&g->raft, &id, &addr);
        st->leader_id = id;
        if (addr != NULL)
            snprintf(st->leader_address, sizeof st->leader_address, "%s", addr);
    }
    st->term = raft_current_term(&g->raft);
    st->commit_index = raft_commit_index(&g->raft);
    st->applied_index = raft_last_applied(&g->raft);
    st->last_index = raft_last_index(&g->raft);
    st->snapshot_index = g->raft.trail.snapshot.index;
    watchdog_status(g, st);
    const struct raft_configuration *c = &g->raft.configuration;
    for (unsigned i = 0; i < c->n && st->nmembers < 16; i++) {
        st->members[st->nmembers].id = c->servers[i].id;
        snprintf(st->members[st->nmembers].address, sizeof st->members[0].address, "%s",
                 c->servers[i].address);
        st->members[st->nmembers].voter = c->servers[i].role == RAFT_VOTER;
        st->nmembers++;
    }
}
