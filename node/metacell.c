/* The meta group's state cells as commands and answers (metacell.h): one packing of
 * state.get / state.init / state.cas and one decoding of their replies, for the
 * placement table, the moves record and the access table. */
#include "metacell.h"

#include "node.h"

#include <assert.h>
#include <string.h>

/* ---- Packing --------------------------------------------------------------------------- */

/* msgpack-c writer into a metacell_get's fixed array. */
static int get_w(void *d, const char *p, size_t n)
{
    struct metacell_get *g = d;
    if (n > sizeof g->bytes - g->len)
        return -1;
    memcpy(g->bytes + g->len, p, n);
    g->len += n;
    return 0;
}

void metacell_pack_get(struct metacell_get *g, const char *cell)
{
    size_t n = strlen(cell);
    assert(n > 0 && n <= METACELL_NAME_MAX);
    g->len = 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, g, get_w);
    msgpack_pack_map(&pk, 2);
    node_pack_str(&pk, "op");
    node_pack_str(&pk, "state.get");
    node_pack_str(&pk, "cell");
    node_pack_str(&pk, cell);
    /* The bound above is the size of exactly this command. */
    assert(g->len <= METACELL_GET_MAX);
}

/* node_pack_str, reporting a buffer that cannot grow (-1). */
static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n) ? -1 : 0;
}

static const char *const mode_op[] = {
    [METACELL_CAS] = "state.cas", [METACELL_INIT] = "state.init", [METACELL_SET] = "state.set"};

/* `expected` is used only by state.cas. */
static int pack_write(struct buf *b, const char *cell, enum metacell_mode mode, uint64_t expected,
                      const uint8_t *value, size_t len)
{
    bool cas = mode == METACELL_CAS;
    assert(strlen(cell) > 0 && strlen(cell) <= METACELL_NAME_MAX && value && len > 0);
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, node_buf_w);
    bool fail =
        msgpack_pack_map(&pk, cas ? 4 : 3) || pack_str(&pk, "op") || pack_str(&pk, mode_op[mode]) ||
        pack_str(&pk, "cell") || pack_str(&pk, cell) ||
        (cas && (pack_str(&pk, "expected_counter") || msgpack_pack_uint64(&pk, expected))) ||
        pack_str(&pk, "value") || buf_append(b, value, len);
    return fail ? STRATA_OUT_OF_MEMORY : 0;
}

int metacell_pack_cas(struct buf *b, const char *cell, uint64_t expected, const uint8_t *value,
                      size_t len)
{
    return pack_write(b, cell, METACELL_CAS, expected, value, len);
}

int metacell_pack_init(struct buf *b, const char *cell, const uint8_t *value, size_t len)
{
    return pack_write(b, cell, METACELL_INIT, 0, value, len);
}

int metacell_pack_set(struct buf *b, const char *cell, const uint8_t *value, size_t len)
{
    return pack_write(b, cell, METACELL_SET, 0, value, len);
}

void metacell_read(struct repl_group *g, const char *cell, bool stale, repl_done_cb cb, void *arg)
{
    struct metacell_get get;
    metacell_pack_get(&get, cell);
    repl_read(g, get.bytes, get.len, stale, cb, arg); /* copies the command */
}

int metacell_write(struct repl_group *g, const char *cell, enum metacell_mode mode,
                   uint64_t expected, const uint8_t *value, size_t len, repl_done_cb cb, void *arg)
{
    assert(mode == METACELL_CAS || mode == METACELL_INIT || mode == METACELL_SET);
    struct buf b;
    buf_init(&b);
    int rc = pack_write(&b, cell, mode, expected, value, len);
    if (rc == 0)
        repl_write(g, b.data, b.len, cb, arg); /* copies the command */
    buf_close(&b);
    return rc;
}

/* ---- Decoding ---------------------------------------------------------------------------- */

void metacell_init(struct metacell *c)
{
    c->present = false;
    c->counter = 0;
    buf_init(&c->value);
}

void metacell_close(struct metacell *c)
{
    buf_close(&c->value);
    metacell_init(c);
}

int metacell_decode_get(struct metacell *c, const char *cell, const uint8_t *reply, size_t len,
                        struct err *err)
{
    c->present = false;
    c->counter = 0;
    buf_reset(&c->value);
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_object o;
    size_t off = 0;
    int rc = 0;
    msgpack_unpack_return ur = reply && len ? msgpack_unpack((const char *)reply, len, &off, &z, &o)
                                            : MSGPACK_UNPACK_CONTINUE;
    if (ur != MSGPACK_UNPACK_SUCCESS && ur != MSGPACK_UNPACK_EXTRA_BYTES) {
        rc = err_set(err, STRATA_INTERNAL, "the %s cell: the state.get reply cannot be decoded",
                     cell);
    } else if (off != len) {
        rc = err_set(err, STRATA_INTERNAL, "the %s cell: %zu bytes after the state.get reply", cell,
                     len - off);
    } else if (o.type == MSGPACK_OBJECT_NIL) {
        /* never written */
    } else if (o.type != MSGPACK_OBJECT_MAP) {
        rc = err_set(err, STRATA_INTERNAL, "the %s cell: the state.get reply is not a map", cell);
    } else {
        const msgpack_object *v = node_map_get(&o, "value"), *n = node_map_get(&o, "counter");
        msgpack_packer pk;
        msgpack_packer_init(&pk, &c->value, node_buf_w);
        if (v == NULL || n == NULL || n->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            rc = err_set(err, STRATA_INTERNAL,
                         "the %s cell: the state.get reply has no value/counter", cell);
        else if (msgpack_pack_object(&pk, *v) != 0)
            rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        else {
            c->present = true;
            c->counter = n->via.u64;
        }
    }
    msgpack_zone_destroy(&z);
    if (rc)
        buf_reset(&c->value);
    return rc;
}

int metacell_decode_write(const char *cell, int code, const uint8_t *reply, size_t len,
                          const char *message, uint64_t *counter, struct err *err)
{
    if (code == STRATA_CONFLICT || code == STRATA_ALREADY_EXISTS)
        return err_set(err, STRATA_CONFLICT, "%s", message ? message : err_message(code));
    if (code)
        return err_set(err, code, "%s", message && *message ? message : err_message(code));
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    size_t off = 0;
    uint64_t c = 0;
    bool ok = reply && len &&
              msgpack_unpack((const char *)reply, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS &&
              node_map_u64(&o, "counter", &c) && c > 0;
    msgpack_zone_destroy(&z);
    if (!ok)
        return err_set(err, STRATA_INTERNAL,
                       "the %s cell was written but the reply names no counter", cell);
    *counter = c;
    return 0;
}
