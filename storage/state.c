/* State cell primitive: named values with a write counter, for compare-and-swap
 * coordination. A cell is stored under TAG_STATE + name as the msgpack array
 * [counter, value]; the counter starts at 1 on the first write and grows by one on every
 * write, so a CAS on it detects any intervening write (including a write of an equal
 * value, which a compare-on-value would miss). */
#include "internal.h"

#include <string.h>

/* A cell as read: present or not, its counter (0 when absent) and value object. */
struct cell {
    bool present;
    uint64_t counter;
    msgpack_object value;
};

static int cell_decode(struct exec *x, const char *name, size_t nlen, const uint8_t *val,
                       size_t len, msgpack_zone *z, struct cell *c)
{
    c->present = val != NULL;
    c->counter = 0;
    c->value.type = MSGPACK_OBJECT_NIL;
    if (val == NULL)
        return 0;
    msgpack_object o;
    if (value_decode(val, len, z, &o) || o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size != 2 ||
        o.via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return err_set(x->err, STRATA_INTERNAL, "corrupt state cell '%.*s' in space '%s'",
                       (int)(nlen > 200 ? 200 : nlen), name, x->space);
    c->counter = o.via.array.ptr[0].via.u64;
    c->value = o.via.array.ptr[1];
    return 0;
}

/* Read the cell (this command's staged writes first, so batched ops chain). */
static int cell_read(struct exec *x, const char *name, size_t nlen, msgpack_zone *z, struct cell *c,
                     const struct version **v)
{
    const uint8_t *val;
    size_t len;
    int rc = exec_read(x, TAG_STATE, name, nlen, &val, &len, v);
    return rc ? rc : cell_decode(x, name, nlen, val, len, z, c);
}

/* Stage [counter, value] for the cell and pack the write result with the counter. */
static int cell_write(struct exec *x, const char *name, size_t nlen, uint64_t counter,
                      const msgpack_object *value)
{
    int rc = value_encode(&x->s->cfg, value, x->scratch, x->err);
    if (rc)
        return rc;
    struct buf rec;
    buf_init(&rec);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &rec, buf_pack_write);
    /* Array header (1) + counter (<= 9): reserving makes the packing infallible. */
    if (buf_reserve(&rec, x->scratch->len + 16)) {
        rc = err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory encoding a state cell");
        goto out;
    }
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, counter);
    buf_append(&rec, x->scratch->data, x->scratch->len);
    if ((rc = exec_stage(x, TAG_STATE, name, nlen, rec.data, rec.len)))
        goto out;
    pack_write_result(x, 1);
    mp_pack_cstr(x->pk, "counter");
    msgpack_pack_uint64(x->pk, counter);
out:
    buf_close(&rec);
    return rc;
}

enum set_mode { SET_ALWAYS, SET_IF_ABSENT, SET_IF_COUNTER };

/* set / init / cas share one path: read, check the precondition, write counter + 1. */
static int cell_set(struct exec *x, enum set_mode mode)
{
    const char *name;
    size_t nlen;
    const msgpack_object *value;
    uint64_t expected = 0;
    bool has_expected = false;
    int rc;
    if ((rc = arg_key(x, "cell", &name, &nlen)))
        return rc;
    if (mode == SET_IF_COUNTER) {
        if ((rc = arg_u64_opt(x, "expected_counter", &expected, &has_expected)))
            return rc;
        if (!has_expected)
            return err_set(x->err, STRATA_INVALID_ARGUMENT, "missing argument 'expected_counter'");
    }
    if ((rc = arg_value(x, "value", &value)))
        return rc;
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    struct cell c;
    if ((rc = cell_read(x, name, nlen, &z, &c, NULL)))
        goto out;
    if (mode == SET_IF_ABSENT && c.present) {
        rc = err_set(x->err, STRATA_ALREADY_EXISTS,
                     "state cell '%.*s' already exists (counter %llu)",
                     (int)(nlen > 200 ? 200 : nlen), name, (unsigned long long)c.counter);
        goto out;
    }
    if (mode == SET_IF_COUNTER && c.counter != expected) {
        rc = err_set(x->err, STRATA_CONFLICT,
                     "state cell '%.*s': expected counter %llu but the current counter is %llu",
                     (int)(nlen > 200 ? 200 : nlen), name, (unsigned long long)expected,
                     (unsigned long long)c.counter);
        goto out;
    }
    if (c.counter == UINT64_MAX) {
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT, "state cell counter would overflow");
        goto out;
    }
    rc = cell_write(x, name, nlen, c.counter + 1, value);
out:
    msgpack_zone_destroy(&z);
    return rc;
}

static int state_set(struct exec *x)
{
    return cell_set(x, SET_ALWAYS);
}

static int state_init(struct exec *x)
{
    return cell_set(x, SET_IF_ABSENT);
}

static int state_cas(struct exec *x)
{
    return cell_set(x, SET_IF_COUNTER);
}

static int state_get(struct exec *x)
{
    const char *name;
    size_t nlen;
    int rc = arg_key(x, "cell", &name, &nlen);
    if (rc)
        return rc;
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    struct cell c;
    const struct version *v;
    if ((rc = cell_read(x, name, nlen, &z, &c, &v)))
        goto out;
    if (!c.present) {
        msgpack_pack_nil(x->pk);
        goto out;
    }
    msgpack_pack_map(x->pk, 4);
    mp_pack_cstr(x->pk, "value");
    value_pack(x->pk, &c.value);
    mp_pack_cstr(x->pk, "counter");
    msgpack_pack_uint64(x->pk, c.counter);
    /* v is NULL only for a value staged by this very command (not for plain reads). */
    mp_pack_cstr(x->pk, "version");
    if (v)
        msgpack_pack_uint64(x->pk, v->ver);
    else
        msgpack_pack_nil(x->pk);
    mp_pack_cstr(x->pk, "ts");
    if (v)
        msgpack_pack_int64(x->pk, v->ts);
    else
        msgpack_pack_nil(x->pk);
out:
    msgpack_zone_destroy(&z);
    return rc;
}

/* Delete: a tombstone only when the cell exists; deleting an absent cell writes nothing
 * and takes no version. A later init/set starts the counter again at 1. */
static int state_delete(struct exec *x)
{
    const char *name;
    size_t nlen;
    const uint8_t *val;
    size_t len;
    int rc;
    if ((rc = arg_key(x, "cell", &name, &nlen)) ||
        (rc = exec_read(x, TAG_STATE, name, nlen, &val, &len, NULL)))
        return rc;
    if (val == NULL) {
        msgpack_pack_map(x->pk, 1);
    } else {
        if ((rc = exec_stage(x, TAG_STATE, name, nlen, NULL, 0)))
            return rc;
        pack_write_result(x, 1);
    }
    mp_pack_cstr(x->pk, "deleted");
    msgpack_pack_bool(x->pk, val != NULL);
    return 0;
}

static int state_list(struct exec *x)
{
    return prim_list(x, TAG_STATE, false);
}

static int state_history(struct exec *x)
{
    const char *name;
    size_t nlen;
    int rc = arg_key(x, "cell", &name, &nlen);
    return rc ? rc : prim_history(x, TAG_STATE, name, nlen);
}

const struct op_def state_ops[] = {
    {"state.set", OP_WRITE | OP_BRANCH | OP_BATCHABLE, state_set},
    {"state.get", OP_BRANCH, state_get},
    {"state.init", OP_WRITE | OP_BRANCH | OP_BATCHABLE, state_init},
    {"state.cas", OP_WRITE | OP_BRANCH | OP_BATCHABLE, state_cas},
    {"state.delete", OP_WRITE | OP_BRANCH | OP_BATCHABLE, state_delete},
    {"state.list", OP_BRANCH, state_list},
    {"state.history", OP_BRANCH, state_history},
    {NULL, 0, NULL},
};
