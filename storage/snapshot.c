/* Snapshot: the whole engine as a versioned, LZ4-framed (checksummed) msgpack stream, and
 * a restore that validates everything before it replaces the engine's state. */
#include "idem.h"
#include "internal.h"

#include <lz4frame.h>
#include <string.h>

#define SNAP_MAGIC "STRASNAP"
#define SNAP_FORMAT 1
#define SNAP_FORMAT_IDEM 2 /* format 1 + the idempotency table before "END" */
#define SNAP_CHUNK (64 * 1024)

/* ---- Writing ------------------------------------------------------------------------- */

struct snap_writer {
    storage_write_cb write;
    void *arg;
    LZ4F_cctx *cctx;
    LZ4F_preferences_t prefs;
    struct buf raw;  /* msgpack not yet compressed */
    struct buf comp; /* compression output */
    int rc;
};

static int sw_emit(struct snap_writer *w, bool final)
{
    if (w->rc)
        return w->rc;
    size_t bound = LZ4F_compressBound(w->raw.len, &w->prefs);
    buf_reset(&w->comp);
    if (buf_reserve(&w->comp, bound))
        return w->rc = STRATA_OUT_OF_MEMORY;
    size_t n = LZ4F_compressUpdate(w->cctx, w->comp.data, bound, w->raw.data, w->raw.len, NULL);
    if (LZ4F_isError(n))
        return w->rc = STRATA_INTERNAL;
    if (final) {
        size_t m = LZ4F_compressEnd(w->cctx, w->comp.data + n, bound - n, NULL);
        if (LZ4F_isError(m))
            return w->rc = STRATA_INTERNAL;
        n += m;
    }
    buf_reset(&w->raw);
    if (n && (w->rc = w->write(w->arg, w->comp.data, n)))
        return w->rc;
    return 0;
}

static int sw_pack(void *data, const char *p, size_t len)
{
    struct snap_writer *w = data;
    if (buf_append(&w->raw, p, len)) {
        w->rc = STRATA_OUT_OF_MEMORY;
        return -1;
    }
    if (w->raw.len >= SNAP_CHUNK && sw_emit(w, false))
        return -1;
    return 0;
}

static void pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}

static void write_branch(msgpack_packer *pk, struct branch *b)
{
    size_t nentries = 0;
    struct btree_iter it;
    struct entry *e;
    btree_seek(&b->idx, (const uint8_t *)"", 0, &it);
    while ((e = btree_next(&it)) != NULL)
        nentries += e->head != NULL;

    msgpack_pack_array(pk, 12);
    msgpack_pack_uint64(pk, b->id);
    mp_pack_cstr(pk, b->name);
    msgpack_pack_bool(pk, b->deleted);
    msgpack_pack_uint64(pk, b->parent ? b->parent->id : 0);
    msgpack_pack_uint64(pk, b->fork_ver);
    msgpack_pack_bool(pk, b->flat);
    msgpack_pack_uint64(pk, b->created_ver);
    msgpack_pack_int64(pk, b->created_ts);
    msgpack_pack_uint64(pk, b->keep_last);
    msgpack_pack_int64(pk, b->keep_for_us);
    msgpack_pack_uint64(pk, nentries);
    msgpack_pack_uint64(pk, b->nlog);

    btree_seek(&b->idx, (const uint8_t *)"", 0, &it);
    while ((e = btree_next(&it)) != NULL) {
        if (e->head == NULL)
            continue;
        size_t nv = 0;
        for (struct version *v = e->head; v; v = v->older)
            nv++;
        msgpack_pack_array(pk, 3);
        pack_bin(pk, e->key, e->klen);
        msgpack_pack_uint8(pk, e->flags);
        msgpack_pack_array(pk, (uint32_t)nv);
        for (struct version *v = e->head; v; v = v->older) {
            bool gap = v->vflags & VF_GAP;
            msgpack_pack_array(pk, gap ? 5 : 3);
            msgpack_pack_uint64(pk, v->ver);
            msgpack_pack_int64(pk, v->ts);
            if (v->len == VLEN_TOMB)
                msgpack_pack_nil(pk);
            else
                pack_bin(pk, v->data, v->len);
            if (gap) {
                struct gap g = version_gap(v);
                msgpack_pack_uint64(pk, g.ver);
                msgpack_pack_int64(pk, g.ts);
            }
        }
    }
    for (size_t i = 0; i < b->nlog; i++) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint64(pk, b->log[i].ver);
        pack_bin(pk, b->log[i].e->key, b->log[i].e->klen);
    }
}

int storage_snapshot(struct storage *s, storage_write_cb write, void *arg, struct err *err)
{
    struct snap_writer w = {.write = write, .arg = arg};
    buf_init(&w.raw);
    buf_init(&w.comp);
    int rc;
    if (LZ4F_isError(LZ4F_createCompressionContext(&w.cctx, LZ4F_VERSION))) {
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "cannot create an lz4 context");
        goto out;
    }
    uint8_t head[12];
    memcpy(head, SNAP_MAGIC, 8);
    /* An engine that never saw a keyed write writes format 1, byte for byte as before. */
    put_be32(head + 8, idem_empty(&s->idem) ? SNAP_FORMAT : SNAP_FORMAT_IDEM);
    if ((rc = write(arg, head, sizeof head))) {
        err_set(err, rc, "snapshot write failed");
        goto out;
    }
    LZ4F_preferences_t prefs;
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.blockChecksumFlag = LZ4F_blockChecksumEnabled;
    prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
    prefs.frameInfo.blockSizeID = LZ4F_max256KB;
    if (buf_reserve(&w.comp, LZ4F_HEADER_SIZE_MAX)) {
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        goto out;
    }
    w.prefs = prefs;
    size_t hn = LZ4F_compressBegin(w.cctx, w.comp.data, w.comp.cap, &prefs);
    if (LZ4F_isError(hn) || (rc = write(arg, w.comp.data, hn))) {
        rc = err_set(err, rc ? rc : STRATA_INTERNAL, "snapshot write failed");
        goto out;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, sw_pack);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint64(&pk, s->version);
    msgpack_pack_int64(&pk, s->last_ts);
    msgpack_pack_uint64(&pk, s->next_branch_id);
    msgpack_pack_uint64(&pk, s->nbranches);
    for (size_t i = 0; i < s->nbranches && w.rc == 0; i++)
        write_branch(&pk, s->branches[i]);
    if (!idem_empty(&s->idem))
        idem_pack(&s->idem, &pk);
    mp_pack_cstr(&pk, "END");
    if ((rc = w.rc) || (rc = sw_emit(&w, true)))
        err_set(err, rc, "snapshot write failed: %s", err_message(rc));
out:
    LZ4F_freeCompressionContext(w.cctx);
    buf_close(&w.raw);
    buf_close(&w.comp);
    return rc;
}

static int write_to_buf(void *arg, const void *chunk, size_t len)
{
    return buf_append(arg, chunk, len);
}

int storage_snapshot_buf(struct storage *s, struct buf *out, struct err *err)
{
    return storage_snapshot(s, write_to_buf, out, err);
}

/* ---- Restoring ------------------------------------------------------------------------ */

struct snap_reader {
    msgpack_unpacker up;
    msgpack_unpacked res;
    struct err *err;
    uint32_t format;
};

static int corrupt(struct snap_reader *r, const char *what)
{
    return err_set(r->err, STRATA_INVALID_ARGUMENT, "corrupt snapshot: %s", what);
}

static int next_obj(struct snap_reader *r, msgpack_object_type type, uint32_t size,
                    const msgpack_object **o, const char *what)
{
    if (msgpack_unpacker_next(&r->up, &r->res) != MSGPACK_UNPACK_SUCCESS)
        return corrupt(r, what);
    *o = &r->res.data;
    if ((*o)->type != type || (type == MSGPACK_OBJECT_ARRAY && (*o)->via.array.size != size))
        return corrupt(r, what);
    return 0;
}

static bool is_u64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

static bool is_i64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ?
               o->via.u64 <= (uint64_t)INT64_MAX :
               o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

static int read_entry(struct snap_reader *r, struct storage *s, struct branch *b,
                      const uint8_t **prev_key, size_t *prev_len)
{
    const msgpack_object *o;
    int rc = next_obj(r, MSGPACK_OBJECT_ARRAY, 3, &o, "entry");
    if (rc)
        return rc;
    const msgpack_object *k = &o->via.array.ptr[0], *fl = &o->via.array.ptr[1],
                         *vs = &o->via.array.ptr[2];
    if (k->type != MSGPACK_OBJECT_BIN || k->via.bin.size == 0 || k->via.bin.size > IKEY_MAX ||
        !is_u64(fl) || fl->via.u64 > 0xff || vs->type != MSGPACK_OBJECT_ARRAY ||
        vs->via.array.size == 0)
        return corrupt(r, "entry fields");
    if (*prev_key && bkey_cmp(*prev_key, *prev_len, (const uint8_t *)k->via.bin.ptr,
                              k->via.bin.size) >= 0)
        return corrupt(r, "keys out of order");
    struct entry *e = sm_malloc(ENTRY_SIZE(k->via.bin.size));
    if (e == NULL)
        return err_set(r->err, STRATA_OUT_OF_MEMORY, "out of memory");
    e->klen = (uint16_t)k->via.bin.size;
    e->flags = (uint8_t)fl->via.u64;
    memcpy(e->key, k->via.bin.ptr, e->klen);
    e->head = NULL;
    if (branch_insert(b, e)) {
        sm_free(e);
        return err_set(r->err, STRATA_OUT_OF_MEMORY, "out of memory");
    }
    struct version **tail = &e->head;
    uint64_t last = UINT64_MAX;
    for (uint32_t i = 0; i < vs->via.array.size; i++) {
        const msgpack_object *v = &vs->via.array.ptr[i];
        if (v->type != MSGPACK_OBJECT_ARRAY ||
            (v->via.array.size != 3 && v->via.array.size != 5) ||
            !is_u64(&v->via.array.ptr[0]) || !is_i64(&v->via.array.ptr[1]))
            return corrupt(r, "version fields");
        bool gap = v->via.array.size == 5;
        if (gap && (!is_u64(&v->via.array.ptr[3]) || !is_i64(&v->via.array.ptr[4]) ||
                    v->via.array.ptr[3].via.u64 == 0 ||
                    v->via.array.ptr[3].via.u64 >= v->via.array.ptr[0].via.u64))
            return corrupt(r, "version gap");
        const msgpack_object *d = &v->via.array.ptr[2];
        uint64_t ver = v->via.array.ptr[0].via.u64;
        if (ver >= last || ver > s->version || ver == 0)
            return corrupt(r, "version order");
        last = ver;
        if (d->type != MSGPACK_OBJECT_NIL &&
            (d->type != MSGPACK_OBJECT_BIN || d->via.bin.size >= VLEN_TOMB))
            return corrupt(r, "version value");
        size_t len = d->type == MSGPACK_OBJECT_BIN ? d->via.bin.size : 0;
        struct version *nv = sm_malloc(VERSION_SIZE(len) + (gap ? sizeof(struct gap) : 0));
        if (nv == NULL)
            return err_set(r->err, STRATA_OUT_OF_MEMORY, "out of memory");
        nv->older = NULL;
        nv->ver = ver;
        nv->ts = v->via.array.ptr[1].via.i64;
        nv->vflags = gap ? VF_GAP : 0;
        nv->len = d->type == MSGPACK_OBJECT_BIN ? (uint32_t)len : VLEN_TOMB;
        if (len)
            memcpy(nv->data, d->via.bin.ptr, len);
        if (gap) {
            struct gap g = {v->via.array.ptr[3].via.u64, v->via.array.ptr[4].via.i64};
            memcpy(nv->data + len, &g, sizeof g);
        }
        *tail = nv;
        tail = &nv->older;
    }
    *prev_key = e->key;
    *prev_len = e->klen;
    return 0;
}

static int read_branch(struct snap_reader *r, struct storage *s)
{
    const msgpack_object *o;
    int rc = next_obj(r, MSGPACK_OBJECT_ARRAY, 12, &o, "branch header");
    if (rc)
        return rc;
    const msgpack_object *f = o->via.array.ptr;
    if (!is_u64(&f[0]) || f[1].type != MSGPACK_OBJECT_STR || f[1].via.str.size == 0 ||
        f[1].via.str.size > 128 || f[2].type != MSGPACK_OBJECT_BOOLEAN || !is_u64(&f[3]) ||
        !is_u64(&f[4]) || f[5].type != MSGPACK_OBJECT_BOOLEAN || !is_u64(&f[6]) ||
        !is_i64(&f[7]) || !is_u64(&f[8]) || !is_i64(&f[9]) || !is_u64(&f[10]) ||
        !is_u64(&f[11]))
        return corrupt(r, "branch fields");
    uint64_t id = f[0].via.u64, pid = f[3].via.u64;
    if (id >= s->next_branch_id || (s->nbranches && id <= s->branches[s->nbranches - 1]->id))
        return corrupt(r, "branch id");
    struct branch *parent = NULL;
    if (pid) {
        for (size_t i = 0; i < s->nbranches; i++)
            if (s->branches[i]->id == pid)
                parent = s->branches[i];
        if (parent == NULL)
            return corrupt(r, "branch parent");
    }
    bool deleted = f[2].via.boolean;
    if (!deleted && branch_find(s, f[1].via.str.ptr, f[1].via.str.size))
        return corrupt(r, "duplicate branch name");
    uint64_t saved = s->next_branch_id;
    s->next_branch_id = id;
    struct branch *b;
    rc = branch_add(s, f[1].via.str.ptr, f[1].via.str.size, parent, f[4].via.u64, &b);
    s->next_branch_id = saved;
    if (rc)
        return err_set(r->err, rc, "out of memory");
    b->deleted = deleted;
    if (deleted)
        b->refs--; /* hidden: only children hold it */
    b->flat = f[5].via.boolean;
    if (b->flat)
        b->depth = 0;
    if (b->depth >= VIEW_MAX_LEVELS)
        return corrupt(r, "branch depth");
    b->created_ver = f[6].via.u64;
    b->created_ts = f[7].via.i64;
    b->keep_last = f[8].via.u64;
    b->keep_for_us = f[9].via.i64;
    uint64_t nentries = f[10].via.u64, nlog = f[11].via.u64;
    const uint8_t *prev = NULL;
    size_t prev_len = 0;
    for (uint64_t i = 0; i < nentries; i++)
        if ((rc = read_entry(r, s, b, &prev, &prev_len)))
            return rc;
    uint64_t last = 0;
    for (uint64_t i = 0; i < nlog; i++) {
        if ((rc = next_obj(r, MSGPACK_OBJECT_ARRAY, 2, &o, "change log")))
            return rc;
        /* Grow with the records actually present: the count is untrusted input. */
        if (b->nlog == b->caplog) {
            size_t cap = b->caplog ? 2 * b->caplog : 16;
            struct change *log = sm_realloc(b->log, cap * sizeof *log);
            if (log == NULL)
                return err_set(r->err, STRATA_OUT_OF_MEMORY, "out of memory");
            b->log = log;
            b->caplog = cap;
        }
        const msgpack_object *v = &o->via.array.ptr[0], *k = &o->via.array.ptr[1];
        if (!is_u64(v) || v->via.u64 < last || v->via.u64 > s->version ||
            k->type != MSGPACK_OBJECT_BIN)
            return corrupt(r, "change log record");
        struct entry *e = branch_get(b, (const uint8_t *)k->via.bin.ptr, k->via.bin.size);
        if (e == NULL)
            return corrupt(r, "change log key");
        last = v->via.u64;
        b->log[b->nlog++] = (struct change){last, e};
    }
    return 0;
}

static int next_any(void *arg, const msgpack_object **o)
{
    struct snap_reader *r = arg;
    if (msgpack_unpacker_next(&r->up, &r->res) != MSGPACK_UNPACK_SUCCESS)
        return corrupt(r, "format 2 idempotency table truncated");
    *o = &r->res.data;
    return 0;
}

static int restore_stream(struct snap_reader *r, struct storage *s)
{
    const msgpack_object *o;
    int rc = next_obj(r, MSGPACK_OBJECT_ARRAY, 4, &o, "header");
    if (rc)
        return rc;
    const msgpack_object *f = o->via.array.ptr;
    if (!is_u64(&f[0]) || !is_i64(&f[1]) || !is_u64(&f[2]) || !is_u64(&f[3]) || f[3].via.u64 == 0)
        return corrupt(r, "header fields");
    s->version = f[0].via.u64;
    s->last_ts = f[1].via.i64;
    s->next_branch_id = f[2].via.u64;
    uint64_t nb = f[3].via.u64;
    for (uint64_t i = 0; i < nb; i++)
        if ((rc = read_branch(r, s)))
            return rc;
    if (r->format == SNAP_FORMAT_IDEM) {
        const msgpack_object *head;
        if ((rc = next_any(r, &head)) ||
            (rc = idem_restore(&s->idem, head, next_any, r, r->err)))
            return rc;
    }
    if (msgpack_unpacker_next(&r->up, &r->res) != MSGPACK_UNPACK_SUCCESS ||
        !mp_str_eq(&r->res.data, "END"))
        return corrupt(r, "missing end marker");
    if (msgpack_unpacker_next(&r->up, &r->res) != MSGPACK_UNPACK_CONTINUE)
        return corrupt(r, "trailing data");
    if (branch_find(s, "default", 7) == NULL)
        return corrupt(r, "no default branch");
    return 0;
}

int storage_restore(struct storage *s, const uint8_t *data, size_t len, struct err *err)
{
    if (len < 12 || memcmp(data, SNAP_MAGIC, 8) != 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "not a StrataDB snapshot (bad magic)");
    uint32_t format = get_be32(data + 8);
    if (format != SNAP_FORMAT && format != SNAP_FORMAT_IDEM)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "snapshot format %u is not supported (this build reads %u and %u)",
                       format, SNAP_FORMAT, SNAP_FORMAT_IDEM);
    struct snap_reader r = {.err = err, .format = format};
    LZ4F_dctx *dctx;
    if (LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION)))
        return err_set(err, STRATA_OUT_OF_MEMORY, "cannot create an lz4 context");
    if (!msgpack_unpacker_init(&r.up, SNAP_CHUNK)) {
        LZ4F_freeDecompressionContext(dctx);
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    }
    msgpack_unpacked_init(&r.res);
    struct storage tmp = {.cfg = s->cfg};
    int rc = 0;
    /* Decompress everything into the unpacker first: the frame's checksums are verified
     * only at its end, and nothing must be trusted before that. */
    const uint8_t *in = data + 12;
    size_t left = len - 12;
    size_t hint = 1;
    while (left > 0 && hint != 0) {
        if (!msgpack_unpacker_reserve_buffer(&r.up, SNAP_CHUNK)) {
            rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
            goto out;
        }
        size_t outsz = msgpack_unpacker_buffer_capacity(&r.up);
        size_t insz = left;
        hint = LZ4F_decompress(dctx, msgpack_unpacker_buffer(&r.up), &outsz, in, &insz, NULL);
        if (LZ4F_isError(hint)) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT, "corrupt snapshot: %s",
                         LZ4F_getErrorName(hint));
            goto out;
        }
        msgpack_unpacker_buffer_consumed(&r.up, outsz);
        in += insz;
        left -= insz;
    }
    if (hint != 0) {
        rc = err_set(err, STRATA_INVALID_ARGUMENT, "corrupt snapshot: truncated");
        goto out;
    }
    if (left != 0) {
        rc = err_set(err, STRATA_INVALID_ARGUMENT, "corrupt snapshot: trailing bytes");
        goto out;
    }
    if ((rc = restore_stream(&r, &tmp)))
        goto out;
    /* Swap in. */
    storage_clear(s);
    s->version = tmp.version;
    s->last_ts = tmp.last_ts;
    s->next_branch_id = tmp.next_branch_id;
    s->branches = tmp.branches;
    s->nbranches = tmp.nbranches;
    s->idem = tmp.idem;
    tmp.branches = NULL;
    tmp.nbranches = 0;
    tmp.idem = (struct idem_table){0};
out:
    storage_clear(&tmp);
    msgpack_unpacked_destroy(&r.res);
    msgpack_unpacker_destroy(&r.up);
    LZ4F_freeDecompressionContext(dctx);
    return rc;
}
