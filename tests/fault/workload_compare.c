/* The after-fault step compare: every replica applied the same index, has equal group
 * digests, and answers the same stale reads. */
#include "workload.h"

/* ---- compare: every replica holds the same state ------------------------------------------ */

#define MAX_NODES 9

#define MAX_GROUPS 64

/* One Raft group as a node reports it (servers that host several groups list them in
 * cluster.status "groups", each with a digest of its engine when asked). */
struct group_status {
    uint64_t id, applied, commit;
    char digest[80]; /* "" when the server gives none */
};

struct status {
    uint64_t node_id, applied, commit, term;
    char role[16];
    size_t ngroups;
    struct group_status groups[MAX_GROUPS];
};

static int node_status(struct strata *db, bool digest, struct status *st)
{
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, buf_w);
    msgpack_pack_map(&pk, digest ? 2 : 1);
    pk_kv(&pk, "op", "cluster.status");
    if (digest) {
        /* Ignored by servers without digests (unknown arguments are ignored). */
        pk_str(&pk, "digest");
        msgpack_pack_true(&pk);
    }
    struct err e;
    int rc = strata_exec(db, cmd.data, cmd.len, &res, &e);
    struct res r;
    if (rc == 0 && res_parse(&r, &res) == 0) {
        memset(st, 0, sizeof *st);
        map_u64(r.o, "node_id", &st->node_id);
        map_u64(r.o, "applied_index", &st->applied);
        map_u64(r.o, "commit_index", &st->commit);
        map_u64(r.o, "term", &st->term);
        const msgpack_object *role = map_get(r.o, "role");
        if (role && role->type == MSGPACK_OBJECT_STR)
            snprintf(st->role, sizeof st->role, "%.*s", (int)role->via.str.size,
                     role->via.str.ptr);
        const msgpack_object *gs = map_get(r.o, "groups");
        for (uint32_t i = 0; gs && gs->type == MSGPACK_OBJECT_ARRAY && i < gs->via.array.size &&
                             st->ngroups < MAX_GROUPS;
             i++) {
            const msgpack_object *g = &gs->via.array.ptr[i];
            struct group_status *x = &st->groups[st->ngroups++];
            map_u64(g, "id", &x->id);
            map_u64(g, "applied_index", &x->applied);
            map_u64(g, "commit_index", &x->commit);
            const msgpack_object *d = map_get(g, "digest");
            if (d && d->type == MSGPACK_OBJECT_STR)
                snprintf(x->digest, sizeof x->digest, "%.*s", (int)d->via.str.size,
                         d->via.str.ptr);
        }
        res_free(&r);
    } else if (rc == 0) {
        rc = STRATA_PROTOCOL_ERROR;
    }
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

static const struct group_status *status_group(const struct status *st, uint64_t id)
{
    for (size_t i = 0; i < st->ngroups; i++)
        if (st->groups[i].id == id)
            return &st->groups[i];
    return NULL;
}

/* Every node applied everything it committed, at the same index, in every group. */
static bool statuses_converged(const struct status *st, int n)
{
    for (int i = 0; i < n; i++) {
        if (st[i].applied != st[0].applied || st[i].applied != st[i].commit ||
            st[i].ngroups != st[0].ngroups)
            return false;
        for (size_t k = 0; k < st[i].ngroups; k++) {
            const struct group_status *a = &st[i].groups[k], *b = status_group(&st[0], a->id);
            if (b == NULL || a->applied != b->applied || a->applied != a->commit)
                return false;
        }
    }
    return true;
}

/* A stale read on one node, rendered as JSON text (value and version), into out. */
static int stale_fingerprint(struct strata *db, const struct object *x, struct buf *out)
{
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    bool cell = !x->log && x->key[0] == 'c';
    pack_read(&cmd, x, x->log ? "event.len" : cell ? "state.get" : "kv.get", 0);
    struct err e;
    int rc = strata_exec_flags(db, cmd.data, cmd.len, STRATA_EXEC_STALE, &res, &e);
    if (rc == 0)
        rc = storage_value_to_json(res.data, res.len, out, false);
    /* For a log, its length and the hash of its last event (which chains every event). */
    struct res r;
    if (rc == 0 && x->log && res_parse(&r, &res) == 0) {
        uint64_t len = r.o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? r.o->via.u64 : 0;
        res_free(&r);
        if (len > 0) {
            buf_reset(&cmd);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &cmd, buf_w);
            msgpack_pack_map(&pk, 4);
            pk_kv(&pk, "op", "event.get");
            pk_kv(&pk, "branch", x->branch);
            pk_kv(&pk, "space", x->key);
            pk_str(&pk, "seq");
            msgpack_pack_uint64(&pk, len);
            buf_reset(&res);
            rc = strata_exec_flags(db, cmd.data, cmd.len, STRATA_EXEC_STALE, &res, &e);
            if (rc == 0 && res_parse(&r, &res) == 0) {
                const msgpack_object *h = map_get(r.o, "hash");
                struct buf hb;
                buf_init(&hb);
                msgpack_packer_init(&pk, &hb, buf_w);
                if (h)
                    msgpack_pack_object(&pk, *h);
                else
                    msgpack_pack_nil(&pk);
                buf_printf(out, " last_hash=");
                rc = storage_value_to_json(hb.data, hb.len, out, false);
                buf_close(&hb);
                res_free(&r);
            }
        }
    }
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

int cmd_compare(const struct opts *o)
{
    struct objects s = {0};
    int rc = history_load(o->history, &s);
    char addrs[MAX_NODES][128];
    int n = 0;
    for (const char *p = o->nodes; rc == 0 && *p && n < MAX_NODES;) {
        size_t l = strcspn(p, ",");
        snprintf(addrs[n++], sizeof addrs[0], "%.*s", (int)l, p);
        p += l + (p[l] == ',');
    }
    struct strata *dbs[MAX_NODES] = {0};
    struct status st[MAX_NODES];
    for (int i = 0; rc == 0 && i < n; i++) {
        char uri[160];
        /* Pinned (routing=server): every read, stale ones included, must be answered by
         * this node's own replica, not routed to the shard's leader. */
        snprintf(uri, sizeof uri, "strata://%.127s?routing=server", addrs[i]);
        rc = open_db(uri, 2000, &dbs[i]);
    }
    /* Every replica applies the same index (nothing writes any more), bounded. A server
     * may still write by itself (a leader's first entry, housekeeping): when an index
     * moves during the comparison, it starts again (bounded), and only the last
     * attempt's findings are reported. */
    uint64_t deadline = now_ms() + (uint64_t)o->within_ms;
    int attempt = 0;
    struct buf report;
    buf_init(&report);
again:
    attempt++;
    buf_reset(&report);
    bool converged = false;
    while (rc == 0 && !converged && now_ms() < deadline) {
        converged = true;
        for (int i = 0; i < n && converged; i++)
            converged = node_status(dbs[i], false, &st[i]) == 0;
        converged = converged && statuses_converged(st, n);
        if (!converged)
            sleep_ms(100);
    }
    /* Where the server offers them, the digests of every group's engine must be equal. */
    size_t digests = 0;
    for (int i = 0; rc == 0 && converged && i < n; i++)
        if (node_status(dbs[i], true, &st[i]) != 0)
            rc = EXIT_ANOMALY;
    long anomalies = 0;
    for (size_t k = 0; rc == 0 && converged && k < st[0].ngroups; k++) {
        const struct group_status *g0 = &st[0].groups[k];
        if (g0->digest[0] == '\0')
            continue;
        digests++;
        for (int i = 1; i < n; i++) {
            const struct group_status *gi = status_group(&st[i], g0->id);
            if (gi == NULL || strcmp(gi->digest, g0->digest) != 0) {
                buf_printf(&report, "ANOMALY group %" PRIu64 " differs at applied index %" PRIu64
                                ": %s has digest %s, %s has %s\n",
                        g0->id, g0->applied, addrs[0], g0->digest, addrs[i],
                        gi ? gi->digest : "(no such group)");
                anomalies++;
            }
        }
    }
    if (rc == 0 && !converged) {
        buf_printf(&report, "ANOMALY replicas did not reach one applied index within %d ms:",
                   o->within_ms);
        for (int i = 0; i < n; i++)
            if (node_status(dbs[i], false, &st[i]) == 0) {
                buf_printf(&report, " node %" PRIu64 " %s term %" PRIu64 " commit %" PRIu64
                                    " applied %" PRIu64,
                        st[i].node_id, st[i].role, st[i].term, st[i].commit, st[i].applied);
                for (size_t k = 0; k < st[i].ngroups; k++)
                    buf_printf(&report, " [group %" PRIu64 " commit %" PRIu64 " applied %" PRIu64 "]",
                            st[i].groups[k].id, st[i].groups[k].commit, st[i].groups[k].applied);
                buf_printf(&report, ";");
            } else
                buf_printf(&report, " %s unreachable;", addrs[i]);
        buf_printf(&report, "\n");
        anomalies++;
    }
    size_t compared = 0;
    for (size_t k = 0; rc == 0 && converged && k < s.n; k++) {
        struct buf fp[MAX_NODES];
        bool ok = true;
        for (int i = 0; i < n; i++)
            buf_init(&fp[i]);
        for (int i = 0; i < n && ok; i++)
            ok = stale_fingerprint(dbs[i], &s.v[k], &fp[i]) == 0;
        if (!ok) {
            fprintf(stderr, "workload: stale read of %s/%s failed\n", s.v[k].branch, s.v[k].key);
            rc = EXIT_ANOMALY;
        }
        for (int i = 1; i < n && ok; i++)
            if (fp[i].len != fp[0].len || memcmp(fp[i].data, fp[0].data, fp[0].len) != 0) {
                buf_printf(&report, "ANOMALY replicas differ on %s %s/%s: %s has %.*s, %s has %.*s\n",
                        s.v[k].log ? "log" : "register", s.v[k].branch, s.v[k].key, addrs[0],
                        (int)fp[0].len, (const char *)fp[0].data, addrs[i], (int)fp[i].len,
                        (const char *)fp[i].data);
                anomalies++;
                break;
            }
        compared += ok;
        for (int i = 0; i < n; i++)
            buf_close(&fp[i]);
    }
    /* The answers must have come from the node each handle was opened on (a handle
     * follows its connection's node until it breaks: ask on the same handle after). */
    struct status after[MAX_NODES];
    for (int i = 0; rc == 0 && converged && i < n; i++)
        if (node_status(dbs[i], false, &after[i]) || after[i].node_id != st[i].node_id ||
            !statuses_converged((const struct status[]){st[i], after[i]}, 2)) {
            if (attempt < 5 && now_ms() < deadline) {
                fprintf(stderr, "workload: node %s moved during comparison %d; again\n",
                        addrs[i], attempt);
                /* Fresh handles: one may have followed a redirect to another node. */
                for (int j = 0; j < n && rc == 0; j++) {
                    char uri[160];
                    snprintf(uri, sizeof uri, "strata://%.127s?routing=server", addrs[j]);
                    strata_close(dbs[j]);
                    dbs[j] = NULL;
                    rc = open_db(uri, 2000, &dbs[j]);
                }
                if (rc == 0)
                    goto again;
            }
            fprintf(stderr, "workload: node %s changed under the comparison; not conclusive\n",
                    addrs[i]);
            rc = EXIT_ANOMALY;
            break;
        }
    if (report.len)
        fprintf(stderr, "%.*s", (int)report.len, (const char *)report.data);
    buf_close(&report);
    for (int i = 0; i < n; i++)
        strata_close(dbs[i]);
    if (rc == 0)
        printf("{\"replicas\":%d,\"compared\":%zu,\"groups\":%zu,\"digests\":%zu,"
               "\"applied_index\":%" PRIu64 ",\"replica_anomalies\":%ld}\n",
               n, compared, n ? st[0].ngroups : 0, digests, n ? st[0].applied : 0, anomalies);
    if (rc == 0 && anomalies)
        rc = EXIT_ANOMALY;
    objects_free(&s);
    return rc;
}
