/* Client requests of a group: writes batched into log entries (at most
 * REPL_MAX_INFLIGHT in flight), linearizable reads behind one batched barrier, stale
 * reads, membership changes and leadership transfer. Callbacks always run from the pump,
 * never inside the call that submitted the request. */
#include "entry.h"
#include "group.h"

#include <stdarg.h>
#include <string.h>

/* ---- Queues and completion ---------------------------------------------------------- */

void req_queue_push(struct req_queue *q, struct req *r)
{
    r->next = NULL;
    if (q->tail != NULL)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
}

struct req *req_queue_pop(struct req_queue *q)
{
    struct req *r = q->head;
    if (r == NULL)
        return NULL;
    q->head = r->next;
    if (q->head == NULL)
        q->tail = NULL;
    q->n--;
    r->next = NULL;
    return r;
}

static void req_free(struct req *r)
{
    sm_free(r->cmd);
    buf_close(&r->result);
    sm_free(r);
}

static void vcomplete(struct repl_group *g, struct req *r, int code, const char *fmt, va_list ap)
{
    r->code = code;
    if (code != 0) {
        if (fmt != NULL)
            vsnprintf(r->msg, sizeof r->msg, fmt, ap);
        else
            snprintf(r->msg, sizeof r->msg, "%s", err_message(code));
        if (code == STRATA_NOT_LEADER)
            group_leader_address(g, r->leader, sizeof r->leader);
    }
    req_queue_push(&g->done, r);
    group_kick(g);
}

void req_complete(struct repl_group *g, struct req *r, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vcomplete(g, r, code, fmt, ap);
    va_end(ap);
}

void req_succeed(struct repl_group *g, struct req *r)
{
    r->code = 0;
    req_queue_push(&g->done, r);
    group_kick(g);
}

void req_fail_all(struct repl_group *g, struct req_queue *q, int code, const char *msg)
{
    struct req *r;
    while ((r = req_queue_pop(q)) != NULL)
        req_complete(g, r, code, "%s", msg);
}

void req_deliver(struct repl_group *g)
{
    struct req *r;
    while ((r = req_queue_pop(&g->done)) != NULL) {
        const uint8_t *res = r->code == 0 && r->has_result ? r->result.data : NULL;
        size_t len = r->code == 0 && r->has_result ? r->result.len : 0;
        FAULT_POINT("strata/reply/before");
        r->cb(r->arg, r->code, res, len, r->code != 0 ? r->msg : NULL,
              r->code == STRATA_NOT_LEADER ? r->leader : NULL);
        req_free(r);
    }
}

int raft_code_to_strata(int rv)
{
    switch (rv) {
    case 0:
        return 0;
    case RAFT_NOTLEADER:
        return STRATA_NOT_LEADER;
    case RAFT_LEADERSHIPLOST:
        return STRATA_UNKNOWN_OUTCOME;
    case RAFT_NOMEM:
        return STRATA_OUT_OF_MEMORY;
    case RAFT_BADID:
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
    case RAFT_BADROLE:
    case RAFT_INVALID:
        return STRATA_INVALID_ARGUMENT;
    case RAFT_NOTFOUND:
        return STRATA_NOT_FOUND;
    case RAFT_SHUTDOWN:
    case RAFT_CANCELED:
    case RAFT_CANTCHANGE:
    case RAFT_NOCONNECTION:
    case RAFT_NOSPACE:
    case RAFT_IOERR:
    case RAFT_BUSY:
    case RAFT_TOOMANY:
        return STRATA_UNAVAILABLE;
    default:
        return STRATA_INTERNAL;
    }
}

/* A request whose callback must still run later even if allocation fails: the one
 * place a callback can run synchronously is out of memory before the request exists. */
static struct req *req_new(enum req_kind kind, repl_done_cb cb, void *arg)
{
    struct req *r = sm_calloc(1, sizeof *r);
    if (r == NULL) {
        cb(arg, STRATA_OUT_OF_MEMORY, NULL, 0, "out of memory (request)", NULL);
        return NULL;
    }
    r->kind = kind;
    r->cb = cb;
    r->arg = arg;
    buf_init(&r->result);
    return r;
}

static int req_copy_cmd(struct req *r, const uint8_t *cmd, size_t len)
{
    r->cmd = sm_malloc(len);
    if (r->cmd == NULL)
        return STRATA_OUT_OF_MEMORY;
    memcpy(r->cmd, cmd, len);
    r->len = len;
    return 0;
}

static bool is_leader(struct repl_group *g)
{
    return raft_state(&g->raft) == RAFT_LEADER;
}

/* ---- Writes ---------------------------------------------------------------------------- */

/* A MessagePack array's first byte: fixarray, array 16, array 32 (node commands). */
static bool is_mp_array(const uint8_t *cmd, size_t len)
{
    return len > 0 && ((cmd[0] & 0xf0) == 0x90 || cmd[0] == 0xdc || cmd[0] == 0xdd);
}

static void submit_write(struct repl_group *g, const uint8_t *cmd, size_t len, bool node,
                         repl_done_cb cb, void *arg)
{
    struct req *r = req_new(REQ_WRITE, cb, arg);
    if (r == NULL)
        return;
    if (g->state != G_RUNNING) {
        req_complete(g, r, STRATA_UNAVAILABLE, "group %u is %s", g->group_id,
                     g->state == G_OPEN ? "not started" : "stopping");
        return;
    }
    if (cmd == NULL || len == 0) {
        req_complete(g, r, STRATA_INVALID_ARGUMENT, "write command is empty");
        return;
    }
    if (len > UINT32_MAX || entry_size(ENTRY_CMD_PREFIX + len) > g->max_entry_bytes) {
        req_complete(g, r, STRATA_TOO_LARGE,
                     "command of %zu bytes exceeds the log entry limit of %zu bytes", len,
                     g->max_entry_bytes);
        return;
    }
    if (node && (g->hook == NULL || !is_mp_array(cmd, len))) {
        req_complete(g, r, STRATA_INVALID_ARGUMENT,
                     "group %u takes no node commands (no hook, or not an array)", g->group_id);
        return;
    }
    enum storage_cmd_kind kind;
    struct err err;
    err_clear(&err);
    int rc = node ? 0 : storage_cmd_kind(cmd, len, &kind, &err);
    if (rc != 0) {
        req_complete(g, r, rc, "%s", err.msg);
        return;
    }
    if (!is_leader(g)) {
        req_complete(g, r, STRATA_NOT_LEADER, "node %llu is not the leader of group %u",
                     (unsigned long long)g->node_id, g->group_id);
        return;
    }
    /* The disk cannot take it now: say so at once instead of letting it hang. */
    char why[ERR_MSG_MAX];
    if (watchdog_refuses(g, why, sizeof why)) {
        req_complete(g, r, STRATA_UNAVAILABLE, "%s", why);
        return;
    }
    if (req_copy_cmd(r, cmd, len) != 0) {
        req_complete(g, r, STRATA_OUT_OF_MEMORY, "out of memory (command copy)");
        return;
    }
    req_queue_push(&g->writes, r);
    group_kick(g);
}

void repl_write(struct repl_group *g, const uint8_t *cmd, size_t len, repl_done_cb cb, void *arg)
{
    submit_write(g, cmd, len, false, cb, arg);
}

void repl_write_node(struct repl_group *g, const uint8_t *cmd, size_t len, repl_done_cb cb,
                     void *arg)
{
    submit_write(g, cmd, len, true, cb, arg);
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct batch *b = req->data;
    struct repl_group *g = b->g;
    struct req *r;
    (void)result; /* == b when this node's FSM recorded the results */
    b->busy = false;
    b->live = false;
    g->inflight--;
    if (status == 0 && b->applied) {
        while ((r = req_queue_pop(&b->reqs)) != NULL) {
            req_queue_push(&g->done, r); /* code and result recorded by the FSM */
            group_kick(g);
        }
    } else if (status == 0) {
        log_warn("group %u: entry applied without recorded results", g->group_id);
        req_fail_all(g, &b->reqs, STRATA_UNKNOWN_OUTCOME,
                     "the entry was applied but its results were lost");
    } else if (status == RAFT_NOTLEADER) {
        req_fail_all(g, &b->reqs, STRATA_NOT_LEADER, "leadership moved before the append");
    } else {
        /* Appended, then leadership was lost (or the group stopped): a new leader may
         * still commit it. Never report success or failure it did not have. */
        char msg[ERR_MSG_MAX];
        snprintf(msg, sizeof msg,
                 "leadership lost after the write was appended (raft: %s); it may or may not "
                 "be applied",
                 raft_strerror(status));
        req_fail_all(g, &b->reqs, STRATA_UNKNOWN_OUTCOME, msg);
    }
    group_kick(g);
}

static struct batch *free_batch(struct repl_group *g)
{
    for (unsigned i = 0; i < REPL_MAX_INFLIGHT; i++)
        if (!g->batches[i].busy)
            return &g->batches[i];
    return NULL;
}

/* Move as many queued writes as fit into one entry and propose it. Returns false when
 * nothing more should be tried now. */
static bool flush_one_entry(struct repl_group *g)
{
    struct batch *b = free_batch(g);
    if (b == NULL || g->writes.head == NULL)
        return false;
    size_t payload = 0;
    uint32_t count = 0;
    for (struct req *r = g->writes.head; r != NULL; r = r->next) {
        size_t p = payload + ENTRY_CMD_PREFIX + r->len;
        /* The first always fits: repl_write refused larger commands. */
        if (count > 0 && entry_size(p) > g->max_entry_bytes)
            break;
        payload = p;
        count++;
    }
    size_t size = entry_size(payload);
    uint8_t *buf = raft_malloc(size);
    if (buf == NULL) {
        for (uint32_t i = 0; i < count; i++)
            req_complete(g, req_queue_pop(&g->writes), STRATA_OUT_OF_MEMORY,
                         "out of memory (log entry)");
        return false;
    }
    /* The leader stamps time: monotonic per group even if the clock steps back. */
    int64_t prev = g->last_ts;
    if (storage_last_ts(g->engine) > prev)
        prev = storage_last_ts(g->engine);
    int64_t ts = clock_now_us();
    if (ts <= prev)
        ts = prev + 1;
    g->last_ts = ts;

    struct entry_writer w;
    entry_writer_init(&w, buf, ts, count, (uint32_t)payload);
    b->reqs.head = b->reqs.tail = NULL;
    b->reqs.n = 0;
    for (uint32_t i = 0; i < count; i++) {
        struct req *r = req_queue_pop(&g->writes);
        entry_writer_add(&w, r->cmd, (uint32_t)r->len);
        req_queue_push(&b->reqs, r);
    }
    struct raft_buffer rb = {buf, entry_writer_finish(&w)};
    b->g = g;
    b->live = true;
    b->busy = true;
    b->applied = false;
    b->apply.data = b;
    int rv = raft_apply(&g->raft, &b->apply, &rb, 1, apply_cb);
    if (rv != 0) {
        /* Not appended: the buffer is still ours (except RAFT_INVALID, trap 2, which
         * cannot happen with padded entries; leak rather than double free). */
        if (rv != RAFT_INVALID)
            raft_free(buf);
        b->busy = false;
        b->live = false;
        int code = raft_code_to_strata(rv);
        if (rv == RAFT_NOSPACE || rv == RAFT_IOERR)
            group_emit(g, REPL_EV_DISK_ERROR, "append: %s", raft_strerror(rv));
        req_fail_all(g, &b->reqs, code,
                     rv == RAFT_NOTLEADER ? "not the leader" : raft_strerror(rv));
        if (rv == RAFT_NOTLEADER)
            req_fail_all(g, &g->writes, STRATA_NOT_LEADER, "not the leader");
        return false;
    }
    /* raft has copied the entry into its log (our buffer is gone); its index is the
     * key the FSM matches results by. */
    b->index = b->apply.index;
    g->inflight++;
    return true;
}

/* ---- Reads ----------------------------------------------------------------------------- */

static void serve_read(struct repl_group *g, struct req *r)
{
    struct err err;
    err_clear(&err);
    /* Reads take "now" for relative time; they change nothing. */
    int rc = storage_exec(g->engine, r->cmd, r->len, clock_now_us(), &r->result, &err);
    if (rc == 0) {
        r->has_result = true;
        req_succeed(g, r);
    } else {
        req_complete(g, r, rc, "%s", err.msg);
    }
}

void repl_read(struct repl_group *g, const uint8_t *cmd, size_t len, bool stale, repl_done_cb cb,
               void *arg)
{
    struct req *r = req_new(REQ_READ, cb, arg);
    if (r == NULL)
        return;
    bool serving = g->state == G_RUNNING || (stale && g->state != G_CLOSING);
    if (!serving) {
        req_complete(g, r, STRATA_UNAVAILABLE, "group %u is %s", g->group_id,
                     g->state == G_OPEN ? "not started" : "stopping");
        return;
    }
    if (cmd == NULL || len == 0) {
        req_complete(g, r, STRATA_INVALID_ARGUMENT, "read command is empty");
        return;
    }
    enum storage_cmd_kind kind;
    struct err err;
    err_clear(&err);
    int rc = storage_cmd_kind(cmd, len, &kind, &err);
    if (rc != 0) {
        req_complete(g, r, rc, "%s", err.msg);
        return;
    }
    if (kind != STORAGE_CMD_READ) {
        /* A write run outside the log would make this replica diverge. */
        req_complete(g, r, STRATA_INVALID_ARGUMENT,
                     "repl_read takes read commands only; this command writes (use repl_write)");
        return;
    }
    if (!stale && !is_leader(g)) {
        req_complete(g, r, STRATA_NOT_LEADER, "node %llu is not the leader of group %u",
                     (unsigned long long)g->node_id, g->group_id);
        return;
    }
    if (req_copy_cmd(r, cmd, len) != 0) {
        req_complete(g, r, STRATA_OUT_OF_MEMORY, "out of memory (command copy)");
        return;
    }
    if (stale) {
        serve_read(g, r); /* at once, from this replica's applied state */
        return;
    }
    req_queue_push(&g->reads, r);
    group_kick(g);
}

static void barrier_cb(struct raft_barrier *req, int status)
{
    struct repl_group *g = req->data;
    struct req *r;
    g->barrier_inflight = false;
    /* Still the leader of the same term: the barrier proves the applied state holds
     * every write acknowledged before these reads arrived. */
    bool ok = status == 0 && g->state != G_CLOSING && is_leader(g) &&
              raft_current_term(&g->raft) == g->barrier_term;
    if (ok) {
        while ((r = req_queue_pop(&g->barrier_reads)) != NULL)
            serve_read(g, r);
    } else if (g->state == G_CLOSING) {
        req_fail_all(g, &g->barrier_reads, STRATA_UNAVAILABLE, "group stopping");
    } else {
        req_fail_all(g, &g->barrier_reads, STRATA_NOT_LEADER,
                     "leadership lost before the read barrier committed");
    }
    group_kick(g);
}

static void flush_reads(struct repl_group *g)
{
    if (g->barrier_inflight || (g->reads.head == NULL && !g->barrier_needed))
        return;
    /* Every read queued now is answered by this barrier; later ones wait for the next. */
    while (g->reads.head != NULL)
        req_queue_push(&g->barrier_reads, req_queue_pop(&g->reads));
    g->barrier_term = raft_current_term(&g->raft);
    g->barrier.data = g;
    int rv = raft_barrier(&g->raft, &g->barrier, barrier_cb);
    if (rv != 0) {
        req_fail_all(g, &g->barrier_reads, raft_code_to_strata(rv),
                     rv == RAFT_NOTLEADER ? "not the leader" : raft_strerror(rv));
        return;
    }
    g->barrier_inflight = true;
    g->barrier_needed = false;
}

/* ---- Membership and transfer ---------------------------------------------------------- */

static void admin_submit(struct repl_group *g, struct req *r)
{
    if (g->state != G_RUNNING) {
        req_complete(g, r, STRATA_UNAVAILABLE, "group %u is %s", g->group_id,
                     g->state == G_OPEN ? "not started" : "stopping");
        return;
    }
    if (!is_leader(g)) {
        req_complete(g, r, STRATA_NOT_LEADER, "node %llu is not the leader of group %u",
                     (unsigned long long)g->node_id, g->group_id);
        return;
    }
    req_queue_push(&g->admin, r);
    group_kick(g);
}

void repl_member_add(struct repl_group *g, const struct repl_member *m, repl_done_cb cb, void *arg)
{
    struct req *r = req_new(REQ_ADD, cb, arg);
    if (r == NULL)
        return;
    size_t alen = m != NULL ? strnlen(m->address, sizeof m->address) : 0;
    if (m == NULL || m->id == 0 || alen == 0 || alen > REPL_ADDRESS_MAX) {
        req_complete(g, r, STRATA_INVALID_ARGUMENT,
                     "member needs an id > 0 and an address of 1..%d bytes", REPL_ADDRESS_MAX);
        return;
    }
    r->id = m->id;
    memcpy(r->address, m->address, alen);
    r->address[alen] = '\0';
    admin_submit(g, r);
}

void repl_member_remove(struct repl_group *g, uint64_t id, repl_done_cb cb, void *arg)
{
    struct req *r = req_new(REQ_REMOVE, cb, arg);
    if (r == NULL)
        return;
    if (id == 0) {
        req_complete(g, r, STRATA_INVALID_ARGUMENT, "member id must be > 0");
        return;
    }
    r->id = id;
    admin_submit(g, r);
}

void repl_transfer(struct repl_group *g, uint64_t to, repl_done_cb cb, void *arg)
{
    struct req *r = req_new(REQ_TRANSFER, cb, arg);
    if (r == NULL)
        return;
    r->id = to;
    admin_submit(g, r);
}

static void admin_finish(struct repl_group *g, int rv, const char *what)
{
    struct req *r = g->admin_cur;
    g->admin_cur = NULL;
    if (rv == 0)
        req_succeed(g, r);
    else
        req_complete(g, r, raft_code_to_strata(rv), "%s: %s", what, raft_strerror(rv));
}

static void change_cb(struct raft_change *req, int status)
{
    struct repl_group *g = req->data;
    struct req *r = g->admin_cur;
    if (r == NULL)
        return;
    if (status == 0)
        FAULT_POINT("strata/membership/apply"); /* committed, not yet answered */
    if (status == 0 && r->kind == REQ_ADD && !r->promoting) {
        /* Added as a spare: promote next. raft_assign to voter lets the new member
         * catch up (rounds bounded by raft's catch-up limits) before the change. */
        r->promoting = true;
        g->assign_pending = true;
        group_kick(g);
        return;
    }
    admin_finish(g, status, r->kind == REQ_REMOVE ? "remove member" : "add member");
}

static void xfer_cb(struct raft_transfer *req)
{
    struct repl_group *g = req->data;
    struct req *r = g->admin_cur;
    if (r == NULL)
        return;
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(&g->raft, &id, &addr);
    g->admin_cur = NULL;
    /* The callback carries no status (trap 13): the leader now known decides. */
    if (id != 0 && id != g->node_id && (r->id == 0 || id == r->id))
        req_succeed(g, r);
    else
        req_complete(g, r, STRATA_TIMEOUT, "leadership transfer to %llu did not complete",
                     (unsigned long long)r->id);
}

/* The member's entry in the current configuration, or NULL. */
static const struct raft_server *config_find(struct repl_group *g, uint64_t id)
{
    for (unsigned i = 0; i < g->raft.configuration.n; i++)
        if (g->raft.configuration.servers[i].id == id)
            return &g->raft.configuration.servers[i];
    return NULL;
}

static void stuck_transfer_done(void *arg, int code, const uint8_t *result, size_t len,
                                const char *message, const char *leader)
{
    (void)arg, (void)result, (void)len, (void)leader;
    if (code != 0)
        log_info("handing leadership away from a stuck configuration: %s: %s", err_name(code),
                 message ? message : "");
}

/* A membership change refused with RAFT_CANTCHANGE ("a configuration change is already in
 * progress"). Legitimately so while the last configuration entry is not yet committed, or
 * while a promotion of ours catches up. But libraft 0.22.1 can also keep
 * configuration_uncommitted_index set on a leader for an entry it has long committed and
 * applied: seen on a node that became leader by a transfer while a configuration entry
 * of the previous term was in flight (integ_rebalance's drain, about 1 run in 8: every
 * later change was refused for as long as it led — 90 s and more — although writes went
 * on). Nothing of ours can clear it; a new leader rebuilds that state from its own log.
 * So: log the state, and when the entry is committed and applied, hand the leadership
 * away (the caller is answered UNAVAILABLE and retries at the new leader). */
static void cantchange(struct repl_group *g, const char *what)
{
    raft_index unc = g->raft.configuration_uncommitted_index;
    bool stuck = unc != 0 && unc <= g->raft.commit_index && unc <= g->raft.last_applied;
    log_info("group %u: %s refused: configuration change in progress (uncommitted index %llu, "
             "committed %llu, commit %llu, applied %llu)%s",
             g->group_id, what, (unsigned long long)unc,
             (unsigned long long)g->raft.configuration_committed_index,
             (unsigned long long)g->raft.commit_index, (unsigned long long)g->raft.last_applied,
             stuck ? ": that entry is committed and applied, so this leader's state is stuck; "
                     "handing leadership away"
                   : "");
    /* At most once per 30 s per group, and not while a transfer runs: every refused
     * request would queue another hand-over, and leaders that all met the state would
     * bounce the leadership between them on each retry. */
    uint64_t now = clock_mono_ns();
    bool recent = g->stuck_handover_ns != 0 && now - g->stuck_handover_ns < 30 * UINT64_C(1000000000);
    if (stuck && !recent && raft_transferee(&g->raft) == 0) {
        g->stuck_handover_ns = now;
        struct req *t = req_new(REQ_TRANSFER, stuck_transfer_done, NULL);
        if (t != NULL) {
            t->id = 0;
            admin_submit(g, t);
        }
    } else if (stuck && recent) {
        log_error("group %u: configuration state stuck again within 30 s of handing "
                  "leadership away (term %llu): not handing it over again yet",
                  g->group_id, (unsigned long long)raft_current_term(&g->raft));
    }
}

static void admin_next(struct repl_group *g)
{
    int rv;
    g->change.data = g;
    g->xfer.data = g;
    if (g->assign_pending && g->admin_cur != NULL) {
        g->assign_pending = false;
        rv = raft_assign(&g->raft, &g->change, g->admin_cur->id, RAFT_VOTER, change_cb);
        if (rv != 0)
            admin_finish(g, rv, "promote member to voter");
        return;
    }
    if (g->admin_cur != NULL || g->admin.head == NULL)
        return;
    struct req *r = req_queue_pop(&g->admin);
    g->admin_cur = r;
    switch (r->kind) {
    case REQ_ADD: {
        /* Retrying an add that was interrupted after the spare joined resumes it. */
        const struct raft_server *s = config_find(g, r->id);
        if (s != NULL && strcmp(s->address, r->address) == 0) {
            if (s->role == RAFT_VOTER) {
                admin_finish(g, 0, NULL);
                return;
            }
            r->promoting = true;
            rv = raft_assign(&g->raft, &g->change, r->id, RAFT_VOTER, change_cb);
            if (rv != 0) {
                admin_finish(g, rv, "promote member to voter");
                if (rv == RAFT_CANTCHANGE)
                    cantchange(g, "promote member to voter");
            }
            return;
        }
        rv = raft_add(&g->raft, &g->change, r->id, r->address, change_cb);
        if (rv != 0) {
            admin_finish(g, rv, "add member");
            if (rv == RAFT_CANTCHANGE)
                cantchange(g, "add member");
        }
        return;
    }
    case REQ_REMOVE:
        rv = raft_remove(&g->raft, &g->change, r->id, change_cb);
        if (rv != 0) {
            admin_finish(g, rv, "remove member");
            if (rv == RAFT_CANTCHANGE)
                cantchange(g, "remove member");
        }
        return;
    case REQ_TRANSFER:
        rv = raft_transfer(&g->raft, &g->xfer, r->id, xfer_cb);
        if (rv != 0)
            admin_finish(g, rv, "transfer leadership");
        return;
    default:
        admin_finish(g, RAFT_INVALID, "unknown request");
        return;
    }
}

/* ---- Driven by the pump --------------------------------------------------------------- */

void requests_flush(struct repl_group *g)
{
    /* During a transfer raft refuses new entries: hold them until it ends. */
    if (!is_leader(g) || raft_transferee(&g->raft) != 0)
        return;
    while (g->inflight < REPL_MAX_INFLIGHT && flush_one_entry(g))
        ;
    flush_reads(g);
    if (g->state == G_RUNNING)
        admin_next(g);
}

void requests_lost_leadership(struct repl_group *g)
{
    /* Queued work was never appended: NOT_LEADER is exact, the client may retry. */
    req_fail_all(g, &g->writes, STRATA_NOT_LEADER, "leadership lost");
    req_fail_all(g, &g->reads, STRATA_NOT_LEADER, "leadership lost");
    req_fail_all(g, &g->admin, STRATA_NOT_LEADER, "leadership lost");
    if (g->assign_pending && g->admin_cur != NULL) {
        g->assign_pending = false;
        struct req *r = g->admin_cur;
        g->admin_cur = NULL;
        req_complete(g, r, STRATA_NOT_LEADER,
                     "member %llu joined as a non-voter; leadership changed before its "
                     "promotion (retry the add on the new leader)",
                     (unsigned long long)r->id);
    }
    g->barrier_needed = false;
}

void requests_fail_on_close(struct repl_group *g)
{
    req_fail_all(g, &g->writes, STRATA_UNAVAILABLE, "group stopped");
    req_fail_all(g, &g->reads, STRATA_UNAVAILABLE, "group stopped");
    req_fail_all(g, &g->barrier_reads, STRATA_UNAVAILABLE, "group stopped");
    req_fail_all(g, &g->admin, STRATA_UNAVAILABLE, "group stopped");
    for (unsigned i = 0; i < REPL_MAX_INFLIGHT; i++) {
        struct batch *b = &g->batches[i];
        if (!b->busy)
            continue;
        b->busy = false;
        g->inflight--;
        req_fail_all(g, &b->reqs, STRATA_UNKNOWN_OUTCOME,
                     "group stopped after the write was appended; it may or may not be applied");
    }
    if (g->admin_cur != NULL) {
        struct req *r = g->admin_cur;
        g->admin_cur = NULL;
        req_complete(g, r, STRATA_UNAVAILABLE, "group stopped during the change");
    }
}
