/* Optimistic transactions with snapshot isolation, one branch per transaction.
 *
 * The client begins at the branch's current version (txn.begin), serves its reads at
 * that snapshot, buffers its writes, and commits everything as ONE command:
 *   {"op": "txn.commit", "branch": B, "snapshot": V, "reads": [read commands],
 *    "ops": [write commands]}
 * Apply validates the read set — every point read's key must have no version newer than
 * V in the branch — and then installs all ops at one version, or refuses with CONFLICT
 * and writes nothing. Keys written but not read (blind writes) never conflict. Range
 * reads (list, scan, count, range, query) are accepted but not validated: snapshot
 * isolation, no phantom protection (docs/storage.md). */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static int txn_begin(struct exec *x)
{
    msgpack_pack_map(x->pk, 1);
    mp_pack_cstr(x->pk, "snapshot");
    msgpack_pack_uint64(x->pk, x->s->version);
    return 0;
}

/* The internal keys a point-read command reads, by op. */
struct read_kind {
    const char *op;
    int tag;
    const char *arg;  /* key argument, or NULL */
    const char *arg2; /* vectors: key within the collection */
};

static const struct read_kind read_kinds[] = {
    {"kv.get", TAG_KV, "key", NULL},          {"kv.exists", TAG_KV, "key", NULL},
    {"kv.batch_get", TAG_KV, "keys", NULL},   {"json.get", TAG_JSON, "key", NULL},
    {"state.get", TAG_STATE, "cell", NULL},   {"vector.get", TAG_VECTOR, "collection", "key"},
    {"event.get", TAG_EVENT, "seq", NULL},    {"event.len", TAG_EVENT_HEAD, NULL, NULL},
};

static const char *const range_reads[] = {"kv.list",      "kv.scan",     "kv.count",
                                          "kv.history",   "json.list",   "json.history",
                                          "state.list",   "state.history", "event.range",
                                          "event.types",  "event.verify_chain",
                                          "vector.query", "vector.list_collections",
                                          "space.list",   NULL};

static int check_key(struct exec *x, uint64_t snap, const uint8_t *k, size_t klen)
{
    struct entry *e = branch_get(x->b, k, klen);
    if (e && e->head && e->head->ver > snap) {
        const uint8_t *sp, *rest;
        size_t slen, rlen;
        int tag;
        if (ikey_split(k, klen, &sp, &slen, &tag, &rest, &rlen) != 0)
            rlen = 0;
        if (tag == TAG_EVENT || tag == TAG_EVENT_HEAD) {
            char what[32] = "the event log";
            if (tag == TAG_EVENT && rlen == 8)
                snprintf(what, sizeof what, "event %llu", (unsigned long long)get_be64(rest));
            return err_set(x->err, STRATA_CONFLICT,
                           "%s in space '%.*s' changed at version %llu, after the "
                           "transaction's snapshot %llu",
                           what, (int)slen, (const char *)sp, (unsigned long long)e->head->ver,
                           (unsigned long long)snap);
        }
        return err_set(x->err, STRATA_CONFLICT,
                       "'%.*s' in space '%.*s' changed at version %llu, after the "
                       "transaction's snapshot %llu",
                       (int)(rlen > 100 ? 100 : rlen), (const char *)rest, (int)slen,
                       (const char *)sp, (unsigned long long)e->head->ver,
                       (unsigned long long)snap);
    }
    return 0;
}

static int str_of(const msgpack_object *o, const char **p, size_t *n)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0)
        return -1;
    *p = o->via.str.ptr;
    *n = o->via.str.size;
    return 0;
}

static int validate_read(struct exec *x, uint64_t snap, const msgpack_object *rd, uint32_t i)
{
    if (rd->type != MSGPACK_OBJECT_MAP)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "reads[%u] must be a command map", i);
    const msgpack_object *op = mp_map_get(rd, "op");
    const msgpack_object *br = mp_map_get(rd, "branch");
    if (br && br->type != MSGPACK_OBJECT_NIL &&
        !(br->type == MSGPACK_OBJECT_STR && br->via.str.size == strlen(x->b->name) &&
          memcmp(br->via.str.ptr, x->b->name, br->via.str.size) == 0))
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "reads[%u] is on another branch: a transaction uses one branch", i);
    struct exec sub = *x;
    sub.args = rd;
    const char *sp = x->space;
    size_t slen = x->slen;
    const msgpack_object *so = mp_map_get(rd, "space");
    if (so && so->type != MSGPACK_OBJECT_NIL) {
        int rc = str_of(so, &sp, &slen) ? err_set(x->err, STRATA_INVALID_ARGUMENT,
                                                  "reads[%u]: 'space' must be a string", i)
                                        : space_check(sp, slen, x->err);
        if (rc)
            return rc;
    }
    memcpy(sub.space, sp, slen);
    sub.space[slen] = '\0';
    sub.slen = slen;
    for (const char *const *r = range_reads; *r; r++)
        if (mp_str_eq(op, *r))
            return 0;
    for (size_t j = 0; j < sizeof read_kinds / sizeof read_kinds[0]; j++) {
        const struct read_kind *rk = &read_kinds[j];
        if (!mp_str_eq(op, rk->op))
            continue;
        uint8_t k[IKEY_MAX];
        const msgpack_object *a = rk->arg ? mp_map_get(rd, rk->arg) : NULL;
        const char *p;
        size_t n;
        if (rk->tag == TAG_EVENT_HEAD)
            return check_key(x, snap, k, exec_ikey(&sub, k, rk->tag, NULL, 0));
        if (rk->tag == TAG_EVENT) {
            if (a == NULL || a->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                break;
            uint8_t seq[8];
            put_be64(seq, a->via.u64);
            return check_key(x, snap, k, exec_ikey(&sub, k, rk->tag, seq, 8));
        }
        if (a && a->type == MSGPACK_OBJECT_ARRAY) { /* kv.batch_get */
            for (uint32_t m = 0; m < a->via.array.size; m++) {
                if (str_of(&a->via.array.ptr[m], &p, &n) || n > x->s->cfg.max_key_bytes)
                    goto bad;
                int rc = check_key(x, snap, k, exec_ikey(&sub, k, rk->tag, p, n));
                if (rc)
                    return rc;
            }
            return 0;
        }
        if (str_of(a, &p, &n) || n > x->s->cfg.max_key_bytes)
            break;
        if (rk->arg2) { /* vectors: collection 0x00 key */
            const char *p2;
            size_t n2;
            uint8_t rest[64 + 1 + 1024];
            if (n > 64 || str_of(mp_map_get(rd, rk->arg2), &p2, &n2) ||
                n2 > x->s->cfg.max_key_bytes)
                break;
            memcpy(rest, p, n);
            rest[n] = 0;
            memcpy(rest + n + 1, p2, n2);
            return check_key(x, snap, k, exec_ikey(&sub, k, rk->tag, rest, n + 1 + n2));
        }
        return check_key(x, snap, k, exec_ikey(&sub, k, rk->tag, p, n));
    }
bad:
    return err_set(x->err, STRATA_INVALID_ARGUMENT,
                   "reads[%u] is not a read command with valid arguments", i);
}

static int txn_commit(struct exec *x)
{
    uint64_t snap;
    bool has;
    int rc = arg_u64_opt(x, "snapshot", &snap, &has);
    if (rc)
        return rc;
    if (!has)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "missing argument 'snapshot'");
    if (snap > x->s->version)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "snapshot %llu is in the future",
                       (unsigned long long)snap);
    if (x->b->created_ver > snap)
        return err_set(x->err, STRATA_CONFLICT,
                       "branch '%s' was created after the transaction's snapshot", x->b->name);
    const msgpack_object *reads = arg_get(x, "reads"), *ops = arg_get(x, "ops");
    if (reads && reads->type != MSGPACK_OBJECT_ARRAY)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'reads' must be an array");
    if (ops == NULL || ops->type != MSGPACK_OBJECT_ARRAY)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'ops' must be an array");
    for (uint32_t i = 0; reads && i < reads->via.array.size; i++)
        if ((rc = validate_read(x, snap, &reads->via.array.ptr[i], i)))
            return rc;
    /* Run the ops into a side buffer: only if they staged something does the commit take
     * a version and say so. */
    struct buf out;
    buf_init(&out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &out, buf_pack_write);
    struct exec sub = *x;
    sub.pk = &pk;
    rc = exec_sub_ops(&sub, ops);
    if (rc == 0) {
        if (x->stage->n)
            pack_write_result(x, 1);
        else
            msgpack_pack_map(x->pk, 1);
        mp_pack_cstr(x->pk, "results");
        mp_pack_raw(x->pk, out.data, out.len);
    }
    buf_close(&out);
    return rc;
}

const struct op_def txn_ops[] = {
    {"txn.begin", OP_BRANCH, txn_begin},
    {"txn.commit", OP_WRITE | OP_BRANCH, txn_commit},
    {NULL, 0, NULL},
};
