/* Command execution: decode a command, find its table entry, resolve the common
 * arguments (branch, space, at_version/as_of), run it, and install its staged writes. */
#include "idem.h"
#include "internal.h"
#include "move.h"

#include <stdio.h>
#include <string.h>

static const struct op_def *const tables[] = {kv_ops,     json_ops,   event_ops,
                                              state_ops,  vector_ops, branch_ops,
                                              space_ops,  txn_ops,    merge_ops,
                                              move_ops};

static int op_batch(struct exec *x);

static const struct op_def batch_def = {"batch", OP_WRITE | OP_BRANCH, op_batch};

const struct op_def *op_lookup(const char *name, size_t len)
{
    if (len == 5 && memcmp(name, "batch", 5) == 0)
        return &batch_def;
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++)
        for (const struct op_def *d = tables[t]; d->name; d++)
            if (d->name[0] == name[0] && strnlen(d->name, len + 1) == len &&
                memcmp(d->name, name, len) == 0)
                return d;
    return NULL;
}

/* ---- Arguments ------------------------------------------------------------------------ */

const msgpack_object *(arg_get)(struct exec *x, const char *name, size_t nlen)
{
    const msgpack_object *o = mp_map_getn(x->args, name, nlen);
    return (o && o->type == MSGPACK_OBJECT_NIL) ? NULL : o;
}

int (arg_str_opt)(struct exec *x, const char *name, size_t nlen, const char **p, size_t *len, bool *present)
{
    const msgpack_object *o = (arg_get)(x, name, nlen);
    if (present)
        *present = o != NULL;
    if (o == NULL)
        return 0;
    if (o->type != MSGPACK_OBJECT_STR)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument '%s' must be a string", name);
    *p = o->via.str.ptr;
    *len = o->via.str.size;
    return 0;
}

int (arg_str)(struct exec *x, const char *name, size_t nlen, const char **p, size_t *len)
{
    bool present;
    int rc = (arg_str_opt)(x, name, nlen, p, len, &present);
    if (rc == 0 && !present)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "missing argument '%s'", name);
    return rc;
}

int (arg_key)(struct exec *x, const char *name, size_t nlen, const char **p, size_t *len)
{
    int rc = (arg_str)(x, name, nlen, p, len);
    if (rc)
        return rc;
    char what[80];
    snprintf(what, sizeof what, "argument '%s'", name);
    return key_check(x, what, *p, *len);
}

int key_check(struct exec *x, const char *what, const char *k, size_t len)
{
    if (len == 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "%s must not be empty", what);
    if (len > x->s->cfg.max_key_bytes)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "%s is %zu bytes; the key limit is %zu bytes", what, len,
                       x->s->cfg.max_key_bytes);
    if (!utf8_valid((const uint8_t *)k, len))
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "%s is not valid UTF-8", what);
    return 0;
}

int (arg_u64_opt)(struct exec *x, const char *name, size_t nlen, uint64_t *out, bool *present)
{
    const msgpack_object *o = (arg_get)(x, name, nlen);
    if (present)
        *present = o != NULL;
    if (o == NULL)
        return 0;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument '%s' must be a non-negative integer", name);
    *out = o->via.u64;
    return 0;
}

int (arg_i64_opt)(struct exec *x, const char *name, size_t nlen, int64_t *out, bool *present)
{
    const msgpack_object *o = (arg_get)(x, name, nlen);
    if (present)
        *present = o != NULL;
    if (o == NULL)
        return 0;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *out = o->via.i64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX)
        *out = (int64_t)o->via.u64;
    else
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument '%s' must be an int64", name);
    return 0;
}

int (arg_bool_opt)(struct exec *x, const char *name, size_t nlen, bool *out)
{
    const msgpack_object *o = (arg_get)(x, name, nlen);
    if (o == NULL)
        return 0;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument '%s' must be a boolean", name);
    *out = o->via.boolean;
    return 0;
}

int (arg_value)(struct exec *x, const char *name, size_t nlen, const msgpack_object **out)
{
    const msgpack_object *o = mp_map_getn(x->args, name, nlen);
    if (o == NULL)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "missing argument '%s'", name);
    int rc = value_check(&x->s->cfg, o, x->err);
    if (rc)
        return rc;
    *out = o;
    return 0;
}

int(arg_branch)(struct exec *x, const char *name, size_t nlen, struct branch **b)
{
    const char *n;
    size_t len;
    int rc = (arg_str)(x, name, nlen, &n, &len);
    if (rc)
        return rc;
    *b = branch_find(x->s, n, len);
    if (*b == NULL)
        return err_set(x->err, STRATA_BRANCH_NOT_FOUND, "branch '%.*s' not found",
                       (int)(len > 200 ? 200 : len), n);
    return 0;
}

int space_check(const char *s, size_t len, struct err *err)
{
    if (len == 7 && memcmp(s, "default", 7) == 0)
        return 0;
    bool ok = len >= 1 && len <= 64 && s[0] >= 'a' && s[0] <= 'z';
    for (size_t i = 1; ok && i < len; i++)
        ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
             s[i] == '-';
    if (!ok)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "invalid space name '%.*s': must match [a-z][a-z0-9_-]{0,63}",
                       (int)(len > 80 ? 80 : len), s);
    return 0;
}

/* ---- Helpers for primitives ---------------------------------------------------------- */

size_t exec_ikey(struct exec *x, uint8_t *out, int tag, const void *rest, size_t rlen)
{
    return ikey_make(out, x->space, x->slen, tag, rest, rlen);
}

int exec_touch_space(struct exec *x)
{
    uint8_t k[2 + 64];
    k[0] = 0;
    k[1] = TAG_SPACE;
    memcpy(k + 2, x->space, x->slen);
    const uint8_t *val;
    size_t len;
    int rc = stage_read(x->stage, x->b, k, 2 + x->slen, &val, &len, x->err);
    if (rc || val)
        return rc;
    static const uint8_t one = 0xc3; /* msgpack true */
    return stage_put(x->stage, x->b, k, 2 + x->slen, &one, 1);
}

int exec_stage(struct exec *x, int tag, const void *rest, size_t rlen, const uint8_t *data,
               size_t len)
{
    uint8_t k[IKEY_MAX];
    size_t klen = exec_ikey(x, k, tag, rest, rlen);
    int rc = data ? exec_touch_space(x) : 0;
    if (rc == 0)
        rc = stage_put(x->stage, x->b, k, klen, data, len);
    if (rc == STRATA_OUT_OF_MEMORY)
        err_set(x->err, rc, "out of memory staging a write");
    return rc;
}

int exec_read(struct exec *x, int tag, const void *rest, size_t rlen, const uint8_t **val,
              size_t *len, const struct version **ver)
{
    uint8_t k[IKEY_MAX];
    size_t klen = exec_ikey(x, k, tag, rest, rlen);
    if (ver)
        *ver = NULL;
    if (x->at_head && x->stage && stage_find(x->stage, x->b, k, klen))
        return stage_read(x->stage, x->b, k, klen, val, len, x->err); /* staged: no version */
    const struct version *v;
    int rc = view_get(x->b, k, klen, &x->at, &v, x->err);
    if (rc)
        return rc;
    *val = v ? v->data : NULL;
    *len = v ? v->len : 0;
    if (ver)
        *ver = v;
    return 0;
}

void mp_pack_raw(msgpack_packer *pk, const void *data, size_t len)
{
    pk->callback(pk->data, (const char *)data, len);
}

void pack_version_result(msgpack_packer *pk, const struct version *v, bool with_value)
{
    msgpack_pack_map(pk, with_value ? 3 : 2);
    if (with_value) {
        mp_pack_cstr(pk, "value");
        mp_pack_raw(pk, v->data, v->len);
    }
    mp_pack_cstr(pk, "version");
    msgpack_pack_uint64(pk, v->ver);
    mp_pack_cstr(pk, "ts");
    msgpack_pack_int64(pk, v->ts);
}

void pack_write_result(struct exec *x, int nextra)
{
    msgpack_pack_map(x->pk, 2 + (uint32_t)nextra);
    mp_pack_cstr(x->pk, "version");
    msgpack_pack_uint64(x->pk, x->wver);
    mp_pack_cstr(x->pk, "ts");
    msgpack_pack_int64(x->pk, x->wts);
}

/* ---- Dispatch -------------------------------------------------------------------------- */

/* Resolve branch, space and read point into x from x->args. */
static int resolve_common(struct exec *x, const struct op_def *d, struct exec *parent)
{
    const char *p;
    size_t len;
    bool present;
    int rc;
    x->b = NULL;
    if (!(d->flags & OP_BRANCH))
        return 0;
    if ((rc = arg_str_opt(x, "branch", &p, &len, &present)))
        return rc;
    if (!present && parent) {
        x->b = parent->b;
    } else {
        if (!present) {
            p = "default";
            len = 7;
        }
        x->b = branch_find(x->s, p, len);
        if (x->b == NULL)
            return err_set(x->err, STRATA_BRANCH_NOT_FOUND, "branch '%.*s' not found",
                           (int)(len > 200 ? 200 : len), p);
        if (parent && x->b != parent->b)
            return err_set(x->err, STRATA_INVALID_ARGUMENT,
                           "all operations of a batch or transaction must use one branch");
    }
    if ((rc = arg_str_opt(x, "space", &p, &len, &present)))
        return rc;
    if (!present && parent) {
        p = parent->space;
        len = parent->slen;
    } else if (!present) {
        p = "default";
        len = 7;
    }
    if ((rc = space_check(p, len, x->err)))
        return rc;
    memcpy(x->space, p, len);
    x->space[len] = '\0';
    x->slen = len;

    uint64_t at_version;
    int64_t as_of;
    bool has_ver, has_ts;
    if ((rc = arg_u64_opt(x, "at_version", &at_version, &has_ver)) ||
        (rc = arg_i64_opt(x, "as_of", &as_of, &has_ts)))
        return rc;
    if ((has_ver || has_ts) && (d->flags & OP_WRITE))
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "at_version/as_of apply to reads only");
    if (has_ver && has_ts)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "give at_version or as_of, not both");
    x->at = (struct read_at){has_ver ? at_version : UINT64_MAX, has_ts ? as_of : 0, has_ts};
    x->at_head = !has_ver && !has_ts;
    return 0;
}

static int decode_op(struct exec *x, const struct op_def **out)
{
    if (x->args->type != MSGPACK_OBJECT_MAP)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "a command must be a map");
    const msgpack_object *op = mp_map_get(x->args, "op");
    if (op == NULL || op->type != MSGPACK_OBJECT_STR)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "a command needs a string 'op'");
    *out = op_lookup(op->via.str.ptr, op->via.str.size);
    if (*out == NULL)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "unknown command '%.*s'",
                       (int)(op->via.str.size > 64 ? 64 : op->via.str.size), op->via.str.ptr);
    return 0;
}

/* batch: {"ops": [cmd, ...]} — write ops of one branch applied atomically at one version.
 * Result: array of the sub-results. */
static int op_batch(struct exec *x)
{
    const msgpack_object *ops = arg_get(x, "ops");
    if (ops == NULL || ops->type != MSGPACK_OBJECT_ARRAY)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'ops' must be an array");
    msgpack_pack_array(x->pk, ops->via.array.size);
    for (uint32_t i = 0; i < ops->via.array.size; i++) {
        struct exec sub = *x;
        sub.args = &ops->via.array.ptr[i];
        const struct op_def *d;
        int rc = decode_op(&sub, &d);
        if (rc == 0 && !(d->flags & OP_BATCHABLE))
            rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                         "'%s' cannot be used inside a batch or transaction", d->name);
        if (rc == 0 && arg_get(&sub, IDEM_ARG))
            rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                         "argument 'idem' belongs to the whole command, not to an operation "
                         "inside it");
        if (rc == 0)
            rc = resolve_common(&sub, d, x);
        if (rc == 0)
            rc = d->fn(&sub);
        if (rc) {
            char msg[ERR_MSG_MAX];
            memcpy(msg, x->err->msg, sizeof msg);
            return err_set(x->err, rc, "op %u: %s", i, msg);
        }
    }
    return 0;
}

/* Run a decoded sub-command inside an existing exec (txn.commit uses this). */

int exec_sub_ops(struct exec *x, const msgpack_object *ops)
{
    struct exec sub = *x;
    const msgpack_object *save = x->args;
    msgpack_object m;
    msgpack_object_kv kv[1];
    kv[0].key.type = MSGPACK_OBJECT_STR;
    kv[0].key.via.str.ptr = "ops";
    kv[0].key.via.str.size = 3;
    kv[0].val = *ops;
    m.type = MSGPACK_OBJECT_MAP;
    m.via.map.size = 1;
    m.via.map.ptr = kv;
    sub.args = &m;
    int rc = op_batch(&sub);
    x->args = save;
    return rc;
}

int storage_cmd_kind(const uint8_t *cmd, size_t len, enum storage_cmd_kind *kind,
                     struct err *err)
{
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 256))
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    msgpack_object o;
    size_t off = 0;
    int rc;
    msgpack_unpack_return r = msgpack_unpack((const char *)cmd, len, &off, &z, &o);
    if (r != MSGPACK_UNPACK_SUCCESS) {
        rc = err_set(err, STRATA_PROTOCOL_ERROR, "command is not one complete msgpack value");
    } else {
        struct exec x = {.err = err, .args = &o};
        const struct op_def *d;
        rc = decode_op(&x, &d);
        if (rc == 0)
            *kind = (d->flags & OP_WRITE) ? STORAGE_CMD_WRITE : STORAGE_CMD_READ;
    }
    msgpack_zone_destroy(&z);
    return rc;
}

/* The result packer's sink: remembers an allocation failure, which msgpack-c's packing
 * functions report but every caller would otherwise have to check. */
struct sink {
    struct buf *b;
    bool oom;
};

static int sink_write(void *data, const char *p, size_t len)
{
    struct sink *k = data;
    int rc = buf_pack_write(k->b, p, len);
    k->oom = k->oom || rc != 0;
    return rc;
}

int storage_exec(struct storage *s, const uint8_t *cmd, size_t len, int64_t ts_us,
                 struct buf *result, struct err *err)
{
    struct err local;
    if (err == NULL)
        err = &local;
    err_clear(err);
    msgpack_object o;
    size_t off = 0;
    struct stage st;
    stage_init(&st);
    /* The result is packed straight into the caller's buffer and cut back on error. */
    size_t start = result->len;
    struct sink sink = {result, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sink, sink_write);
    int rc;

    msgpack_unpack_return r = msgpack_unpack((const char *)cmd, len, &off, &s->zone, &o);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR) {
        /* msgpack-c reports nesting beyond its 32-level stack this way too. */
        rc = err_set(err, STRATA_INVALID_ARGUMENT,
                     "command cannot be decoded: nested deeper than 32 levels (or out of "
                     "memory)");
        goto done;
    }
    if (r != MSGPACK_UNPACK_SUCCESS) {
        rc = err_set(err, STRATA_PROTOCOL_ERROR, "command is not one complete msgpack value");
        goto done;
    }
    struct exec x = {.s = s, .err = err, .args = &o, .ts = ts_us, .stage = &st, .pk = &pk,
                     .scratch = &s->scratch, .wver = s->version + 1,
                     .wts = storage_next_ts(s, ts_us)};
    const struct op_def *d;
    struct idem_key key;
    struct idem_pending pend = {0};
    if ((rc = decode_op(&x, &d)) || (rc = idem_key_parse(&o, &key, err)))
        goto done;
    if (key.present) {
        if (!(d->flags & OP_WRITE)) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT, "argument 'idem' applies to writes only");
            goto done;
        }
        /* Before anything else — the branch may have been deleted or moved since — a
         * remembered answer is returned as it was given, and nothing changes. */
        const struct idem_answer *a;
        if ((rc = idem_lookup(s, &key, &a, err)))
            goto done;
        if (a) {
            mp_pack_raw(&pk, a->data, a->len);
            if (sink.oom)
                rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory returning the result");
            goto done;
        }
    }
    if ((rc = resolve_common(&x, d, NULL)) || (rc = move_check(&x, d)))
        goto done;
    if (key.present && key.retry && move_idem_lossy(&x, d)) {
        rc = err_set(err, STRATA_OUTCOME_FORGOTTEN,
                     "the outcome of this resent write (seq %llu) is not known: its branch "
                     "moved here from a shard that had dropped client records, and this "
                     "shard does not remember the request (the write may have been applied)",
                     (unsigned long long)key.seq);
        goto done;
    }
    if ((rc = d->fn(&x)))
        goto done;
    if (result->len == start)
        msgpack_pack_nil(&pk);
    if (sink.oom) {
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory building the result");
        goto done;
    }
    /* The answer is copied for the table before the write is installed, so running out
     * of memory on either leaves the engine unchanged. */
    bool keyed = (d->flags & OP_WRITE) && key.present;
    if (keyed && (rc = idem_prepare(s, &key, x.b ? x.b->id : 0, result->data + start,
                                    result->len - start, &pend))) {
        err_set(err, rc, "out of memory remembering the answer");
        goto done;
    }
    if ((d->flags & OP_WRITE) && (rc = stage_commit(s, &st, ts_us, NULL, NULL))) {
        idem_discard(&pend);
        err_set(err, rc, "out of memory installing the write");
        goto done;
    }
    if (keyed)
        idem_install(s, &key, &pend, x.wts);
done:
    if (rc)
        result->len = start;
    stage_close(&st);
    msgpack_zone_clear(&s->zone);
    if (s->scratch.cap > 1u << 20)
        buf_close(&s->scratch); /* do not keep a huge buffer around */
    return rc;
}
