/* Event log primitive: an append-only, hash-chained log of typed events per branch and
 * space, its commands, and the per-space log merge used by branch merge.
 *
 * Layout (docs/storage.md):
 *   TAG_EVENT 'e' + be64(seq)  -> {"seq": u64, "type": str, "ts": i64, "payload": map,
 *                                  "prev_hash": bin(32), "hash": bin(32)}
 *   TAG_EVENT_HEAD 'E'         -> {"len": u64, "hash": bin(32)}  (the last event's hash)
 * Sequences start at 1 and are dense; an absent head means an empty log (len 0, hash of
 * 32 zero bytes).
 *
 * Hash chain definition (stable: it is part of the stored format):
 *   hash(seq) = SHA-256( msgpack [seq, type, ts, payload, prev_hash] )
 * where the msgpack is canonical: a 5-element array; seq as an unsigned integer and ts
 * as a signed integer, each in its smallest msgpack encoding; type as a str; payload as
 * the canonical StrataDB value encoding (value.c: smallest ints, float64 floats, map
 * entries in stored order); prev_hash as a bin of 32 bytes. prev_hash of event 1 is 32
 * zero bytes; prev_hash of event n > 1 is hash(n - 1). ts is the timestamp of the write
 * that appended the event, so the chain is a deterministic function of the command log. */
#include "internal.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_LEN 32
#define EVENT_TYPE_MAX 256
#define RANGE_DEFAULT 100
#define RANGE_MAX 10000
/* Upper bound of an event record's bytes besides its type and payload (field names,
 * headers, two hashes): lets encoders reserve once so packing cannot fail midway. */
#define RECORD_OVERHEAD 192

static const uint8_t zero_hash[HASH_LEN];

/* The log's head: its length and the hash of its last event. */
struct head {
    uint64_t len;
    uint8_t hash[HASH_LEN];
};

/* A decoded event; pointers reference a msgpack zone or the stored bytes. */
struct event {
    uint64_t seq;
    const char *type;
    size_t tlen;
    int64_t ts;
    const msgpack_object *payload;
    const uint8_t *prev_hash;
    const uint8_t *hash;
};

/* ---- Encoding ------------------------------------------------------------------------ */

static int corrupt(struct exec *x, const char *what)
{
    return err_set(x->err, STRATA_INTERNAL, "corrupt %s in space '%s' of branch '%s'", what,
                   x->space, x->b->name);
}

static int oom(struct exec *x)
{
    return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory in the event log");
}

static const uint8_t *bin32(const msgpack_object *o)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != HASH_LEN)
        return NULL;
    return (const uint8_t *)o->via.bin.ptr;
}

/* Hash of one event as defined at the top of this file. payload is its canonical
 * encoding. */
static int event_hash(struct exec *x, uint64_t seq, const char *type, size_t tlen, int64_t ts,
                      const uint8_t *payload, size_t plen, const uint8_t *prev,
                      uint8_t out[HASH_LEN])
{
    struct buf b;
    buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_pack_write);
    int rc = 0;
    /* Reserve everything up front so no packer call below can fail half-way. */
    if (buf_reserve(&b, plen + tlen + RECORD_OVERHEAD)) {
        rc = oom(x);
        goto out;
    }
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint64(&pk, seq);
    mp_pack_str(&pk, type, tlen);
    msgpack_pack_int64(&pk, ts);
    buf_append(&b, payload, plen);
    msgpack_pack_bin(&pk, HASH_LEN);
    msgpack_pack_bin_body(&pk, prev, HASH_LEN);
    unsigned int n = 0;
    if (!EVP_Digest(b.data, b.len, out, &n, EVP_sha256(), NULL) || n != HASH_LEN)
        rc = err_set(x->err, STRATA_INTERNAL, "SHA-256 failed hashing event %llu",
                     (unsigned long long)seq);
out:
    buf_close(&b);
    return rc;
}

static int head_decode(struct exec *x, const uint8_t *val, size_t len, struct head *h)
{
    h->len = 0;
    memcpy(h->hash, zero_hash, HASH_LEN);
    if (val == NULL)
        return 0;
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    int rc = value_decode(val, len, &z, &o);
    if (rc == 0) {
        const msgpack_object *n = mp_map_get(&o, "len");
        const uint8_t *hash = bin32(mp_map_get(&o, "hash"));
        if (n == NULL || n->type != MSGPACK_OBJECT_POSITIVE_INTEGER || hash == NULL) {
            rc = corrupt(x, "event log head");
        } else {
            h->len = n->via.u64;
            memcpy(h->hash, hash, HASH_LEN);
        }
    } else {
        rc = corrupt(x, "event log head");
    }
    msgpack_zone_destroy(&z);
    return rc;
}

/* Decode a stored event into ev (objects in z). Returns 0, or -1 when the record does not
 * have the documented shape (the caller decides whether that is an error or a finding). */
static int event_decode(const uint8_t *val, size_t len, msgpack_zone *z, struct event *ev)
{
    msgpack_object o;
    if (value_decode(val, len, z, &o) || o.type != MSGPACK_OBJECT_MAP)
        return -1;
    /* The map's entries live in z, so pointers to them outlive the local o. */
    const msgpack_object *seq = mp_map_get(&o, "seq"), *type = mp_map_get(&o, "type"),
                         *ts = mp_map_get(&o, "ts");
    ev->payload = mp_map_get(&o, "payload");
    ev->prev_hash = bin32(mp_map_get(&o, "prev_hash"));
    ev->hash = bin32(mp_map_get(&o, "hash"));
    if (seq == NULL || seq->type != MSGPACK_OBJECT_POSITIVE_INTEGER || type == NULL ||
        type->type != MSGPACK_OBJECT_STR || ts == NULL ||
        (ts->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
         ts->type != MSGPACK_OBJECT_NEGATIVE_INTEGER) ||
        ev->payload == NULL || ev->payload->type != MSGPACK_OBJECT_MAP || ev->prev_hash == NULL ||
        ev->hash == NULL)
        return -1;
    if (ts->type == MSGPACK_OBJECT_POSITIVE_INTEGER && ts->via.u64 > (uint64_t)INT64_MAX)
        return -1;
    ev->seq = seq->via.u64;
    ev->type = type->via.str.ptr;
    ev->tlen = type->via.str.size;
    ev->ts = ts->via.i64;
    return 0;
}

/* ---- Appending (shared by event.append and the merge) ------------------------------- */

/* Head as this command sees it: its own staged appends first, then the branch head.
 * Writes always act at the head, and a merge's exec need not mark itself at_head, so
 * this reads the stage directly instead of relying on exec_read's at_head check. */
static int head_read_for_write(struct exec *x, struct head *h)
{
    uint8_t k[IKEY_MAX];
    size_t klen = exec_ikey(x, k, TAG_EVENT_HEAD, NULL, 0);
    const uint8_t *val;
    size_t len;
    int rc = stage_read(x->stage, x->b, k, klen, &val, &len, x->err);
    return rc ? rc : head_decode(x, val, len, h);
}

/* Append one event (type, canonical payload bytes) at the end of x's log: stages the
 * event and the new head. ts is the pending write's timestamp. */
static int event_append_one(struct exec *x, const char *type, size_t tlen, const uint8_t *payload,
                            size_t plen, uint64_t *seq_out, uint8_t hash_out[HASH_LEN])
{
    struct head h;
    int rc = head_read_for_write(x, &h);
    if (rc)
        return rc;
    if (h.len == UINT64_MAX)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "event log is full");
    uint64_t seq = h.len + 1;
    uint8_t hash[HASH_LEN];
    if ((rc = event_hash(x, seq, type, tlen, x->wts, payload, plen, h.hash, hash)))
        return rc;

    struct buf rec;
    buf_init(&rec);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &rec, buf_pack_write);
    uint8_t be[8];
    put_be64(be, seq);
    /* Reserved up front, so none of the packer calls below can fail. */
    if (buf_reserve(&rec, plen + tlen + RECORD_OVERHEAD)) {
        rc = oom(x);
        goto out;
    }
    msgpack_pack_map(&pk, 6);
    mp_pack_cstr(&pk, "seq");
    msgpack_pack_uint64(&pk, seq);
    mp_pack_cstr(&pk, "type");
    mp_pack_str(&pk, type, tlen);
    mp_pack_cstr(&pk, "ts");
    msgpack_pack_int64(&pk, x->wts);
    mp_pack_cstr(&pk, "payload");
    buf_append(&rec, payload, plen);
    mp_pack_cstr(&pk, "prev_hash");
    msgpack_pack_bin(&pk, HASH_LEN);
    msgpack_pack_bin_body(&pk, h.hash, HASH_LEN);
    mp_pack_cstr(&pk, "hash");
    msgpack_pack_bin(&pk, HASH_LEN);
    msgpack_pack_bin_body(&pk, hash, HASH_LEN);
    if (rec.len > x->s->cfg.max_value_bytes) {
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                     "event of %zu bytes exceeds the value limit of %zu bytes", rec.len,
                     x->s->cfg.max_value_bytes);
        goto out;
    }
    if ((rc = exec_stage(x, TAG_EVENT, be, sizeof be, rec.data, rec.len)))
        goto out;

    buf_reset(&rec); /* keeps its capacity: the head below fits */
    msgpack_pack_map(&pk, 2);
    mp_pack_cstr(&pk, "len");
    msgpack_pack_uint64(&pk, seq);
    mp_pack_cstr(&pk, "hash");
    msgpack_pack_bin(&pk, HASH_LEN);
    msgpack_pack_bin_body(&pk, hash, HASH_LEN);
    if ((rc = exec_stage(x, TAG_EVENT_HEAD, NULL, 0, rec.data, rec.len)))
        goto out;
    if (seq_out)
        *seq_out = seq;
    if (hash_out)
        memcpy(hash_out, hash, HASH_LEN);
out:
    buf_close(&rec);
    return rc;
}

/* ---- Commands ------------------------------------------------------------------------- */

static int event_append(struct exec *x)
{
    const msgpack_object *type = arg_get(x, "type"), *payload;
    int rc;
    if (type == NULL)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "missing argument 'type'");
    if (type->type != MSGPACK_OBJECT_STR)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'type' must be a string");
    if (type->via.str.size == 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'type' must not be empty");
    if (type->via.str.size > EVENT_TYPE_MAX)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'type' is %u bytes; the limit is %d bytes", type->via.str.size,
                       EVENT_TYPE_MAX);
    if ((rc = value_check(&x->s->cfg, type, x->err)))
        return rc; /* UTF-8 */
    if ((rc = arg_value(x, "payload", &payload)))
        return rc;
    if (payload->type != MSGPACK_OBJECT_MAP)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'payload' must be an object (map)");
    if ((rc = value_encode(&x->s->cfg, payload, x->scratch, x->err)))
        return rc;
    uint64_t seq;
    uint8_t hash[HASH_LEN];
    if ((rc = event_append_one(x, type->via.str.ptr, type->via.str.size, x->scratch->data,
                               x->scratch->len, &seq, hash)))
        return rc;
    pack_write_result(x, 2);
    mp_pack_cstr(x->pk, "seq");
    msgpack_pack_uint64(x->pk, seq);
    mp_pack_cstr(x->pk, "hash");
    msgpack_pack_bin(x->pk, HASH_LEN);
    msgpack_pack_bin_body(x->pk, hash, HASH_LEN);
    return 0;
}

/* Head at the command's read point (x->at). */
static int head_read_at(struct exec *x, struct head *h)
{
    const uint8_t *val;
    size_t len;
    int rc = exec_read(x, TAG_EVENT_HEAD, NULL, 0, &val, &len, NULL);
    return rc ? rc : head_decode(x, val, len, h);
}

static int event_read(struct exec *x, uint64_t seq, const uint8_t **val, size_t *len)
{
    uint8_t be[8];
    put_be64(be, seq);
    return exec_read(x, TAG_EVENT, be, sizeof be, val, len, NULL);
}

static int arg_seq(struct exec *x, const char *name, uint64_t *seq, bool required)
{
    bool present;
    int rc = arg_u64_opt(x, name, seq, &present);
    if (rc)
        return rc;
    if (!present && required)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "missing argument '%s'", name);
    if (present && *seq == 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument '%s' must be at least 1 (sequences start at 1)", name);
    return 0;
}

static int event_get(struct exec *x)
{
    uint64_t seq;
    const uint8_t *val;
    size_t len;
    int rc;
    if ((rc = arg_seq(x, "seq", &seq, true)) || (rc = event_read(x, seq, &val, &len)))
        return rc;
    if (val)
        mp_pack_raw(x->pk, val, len);
    else
        msgpack_pack_nil(x->pk);
    return 0;
}

static int event_len(struct exec *x)
{
    struct head h;
    int rc = head_read_at(x, &h);
    if (rc == 0)
        msgpack_pack_uint64(x->pk, h.len);
    return rc;
}

/* range: events with start <= seq <= end (end defaults to the log's length), walked
 * forward from start or backward from end, optionally only those of one type. The
 * cursor is the seq of the next matching event: pass it as "start" (forward) or "end"
 * (backward) to read the next page. */
static int event_range(struct exec *x)
{
    uint64_t start = 1, end = UINT64_MAX, limit = RANGE_DEFAULT;
    const char *dir = "forward", *type = NULL;
    size_t dlen = 7, tlen = 0;
    bool has_type;
    int rc;
    if ((rc = arg_seq(x, "start", &start, false)) || (rc = arg_seq(x, "end", &end, false)) ||
        (rc = arg_u64_opt(x, "limit", &limit, NULL)) ||
        (rc = arg_str_opt(x, "direction", &dir, &dlen, NULL)) ||
        (rc = arg_str_opt(x, "type", &type, &tlen, &has_type)))
        return rc;
    if (limit == 0 || limit > RANGE_MAX)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "limit must be between 1 and %d",
                       RANGE_MAX);
    bool backward;
    if (dlen == 7 && memcmp(dir, "forward", 7) == 0)
        backward = false;
    else if (dlen == 8 && memcmp(dir, "backward", 8) == 0)
        backward = true;
    else
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'direction' must be \"forward\" or \"backward\"");
    struct head h;
    if ((rc = head_read_at(x, &h)))
        return rc;
    if (end > h.len)
        end = h.len;

    struct {
        const uint8_t *val;
        size_t len;
    } *found = sm_malloc(limit * sizeof *found);
    if (found == NULL)
        return oom(x);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    uint64_t n = 0, cursor = 0;
    /* Sequences are dense, so the walk is a run of point reads in either direction. */
    for (uint64_t i = 0; start <= end && i <= end - start; i++) {
        uint64_t seq = backward ? end - i : start + i;
        const uint8_t *val;
        size_t len;
        if ((rc = event_read(x, seq, &val, &len)))
            goto out;
        if (val == NULL) {
            rc = corrupt(x, "event log (missing event below the head)");
            goto out;
        }
        if (has_type) {
            struct event ev;
            msgpack_zone_clear(&z);
            if (event_decode(val, len, &z, &ev)) {
                rc = corrupt(x, "event record");
                goto out;
            }
            if (ev.tlen != tlen || memcmp(ev.type, type, tlen) != 0)
                continue;
        }
        if (n == limit) {
            cursor = seq;
            break;
        }
        found[n].val = val;
        found[n].len = len;
        n++;
    }
    msgpack_pack_map(x->pk, 2);
    mp_pack_cstr(x->pk, "events");
    msgpack_pack_array(x->pk, (uint32_t)n);
    for (uint64_t i = 0; i < n; i++)
        mp_pack_raw(x->pk, found[i].val, found[i].len);
    mp_pack_cstr(x->pk, "cursor");
    if (cursor)
        msgpack_pack_uint64(x->pk, cursor);
    else
        msgpack_pack_nil(x->pk);
out:
    msgpack_zone_destroy(&z);
    sm_free(found);
    return rc;
}

/* One collected type name: offset into the names buffer (which may move while it
 * grows), then a pointer once collection is done. */
struct type_ref {
    size_t off, len;
    const uint8_t *p;
};

static int cmp_type(const void *a, const void *b)
{
    const struct type_ref *p = a, *q = b;
    return bkey_cmp(p->p, p->len, q->p, q->len);
}

/* types: the distinct event types of the log, sorted bytewise. */
static int event_types(struct exec *x)
{
    uint8_t start[IKEY_MAX], end[IKEY_MAX];
    size_t slen = exec_ikey(x, start, TAG_EVENT, NULL, 0);
    size_t elen = exec_ikey(x, end, TAG_EVENT + 1, NULL, 0);
    struct view_iter vi;
    view_iter_init(&vi, x->b, &x->at, start, slen, end, elen);
    struct buf names, refs;
    buf_init(&names);
    buf_init(&refs);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    struct entry *e;
    const struct version *v;
    int r;
    while ((r = view_iter_next(&vi, &e, &v, x->err)) == 1) {
        struct event ev;
        msgpack_zone_clear(&z);
        if (event_decode(v->data, v->len, &z, &ev)) {
            r = corrupt(x, "event record");
            goto out;
        }
        struct type_ref t = {names.len, ev.tlen, NULL};
        if (buf_append(&names, ev.type, ev.tlen) || buf_append(&refs, &t, sizeof t)) {
            r = oom(x);
            goto out;
        }
    }
    if (r)
        goto out;
    struct type_ref *ts = (struct type_ref *)refs.data;
    size_t n = refs.len / sizeof *ts, m = 0;
    for (size_t i = 0; i < n; i++)
        ts[i].p = names.data + ts[i].off;
    if (n)
        qsort(ts, n, sizeof *ts, cmp_type);
    for (size_t i = 0; i < n; i++)
        if (m == 0 || cmp_type(&ts[m - 1], &ts[i]) != 0)
            ts[m++] = ts[i];
    msgpack_pack_array(x->pk, (uint32_t)m);
    for (size_t i = 0; i < m; i++)
        mp_pack_str(x->pk, (const char *)names.data + ts[i].off, ts[i].len);
out:
    msgpack_zone_destroy(&z);
    buf_close(&names);
    buf_close(&refs);
    return r;
}

/* Check one stored event against its position in the chain. Returns 0 with *ok set, or
 * an error that is not about the event's content (out of memory). */
static int event_check(struct exec *x, uint64_t seq, const uint8_t *val, size_t len,
                       const uint8_t *prev, msgpack_zone *z, struct buf *pbuf, bool *ok,
                       uint8_t hash_out[HASH_LEN])
{
    struct event ev;
    *ok = false;
    if (val == NULL || event_decode(val, len, z, &ev) || ev.seq != seq ||
        memcmp(ev.prev_hash, prev, HASH_LEN) != 0)
        return 0;
    buf_reset(pbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, pbuf, buf_pack_write);
    if (value_pack(&pk, ev.payload))
        return oom(x);
    uint8_t hash[HASH_LEN];
    int rc = event_hash(x, seq, ev.type, ev.tlen, ev.ts, pbuf->data, pbuf->len, prev, hash);
    if (rc)
        return rc;
    *ok = memcmp(hash, ev.hash, HASH_LEN) == 0;
    memcpy(hash_out, hash, HASH_LEN);
    return 0;
}

/* verify_chain: recompute every hash in order; the first event whose hash, prev_hash
 * link or seq does not match is reported. A head whose hash is not the last event's
 * reports the last seq. */
static int event_verify_chain(struct exec *x)
{
    struct head h;
    int rc = head_read_at(x, &h);
    if (rc)
        return rc;
    uint8_t prev[HASH_LEN];
    memcpy(prev, zero_hash, HASH_LEN);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    struct buf pbuf;
    buf_init(&pbuf);
    uint64_t bad = 0;
    for (uint64_t seq = 1; seq <= h.len && bad == 0; seq++) {
        const uint8_t *val;
        size_t len;
        bool ok;
        msgpack_zone_clear(&z);
        if ((rc = event_read(x, seq, &val, &len)) ||
            (rc = event_check(x, seq, val, len, prev, &z, &pbuf, &ok, prev)))
            goto out;
        if (!ok)
            bad = seq;
    }
    if (bad == 0 && h.len > 0 && memcmp(prev, h.hash, HASH_LEN) != 0)
        bad = h.len;
    msgpack_pack_map(x->pk, 3);
    mp_pack_cstr(x->pk, "ok");
    msgpack_pack_bool(x->pk, bad == 0);
    mp_pack_cstr(x->pk, "len");
    msgpack_pack_uint64(x->pk, h.len);
    mp_pack_cstr(x->pk, "first_bad_seq");
    if (bad)
        msgpack_pack_uint64(x->pk, bad);
    else
        msgpack_pack_nil(x->pk);
out:
    buf_close(&pbuf);
    msgpack_zone_destroy(&z);
    return rc;
}

/* ---- Merge ---------------------------------------------------------------------------- */

static int head_view(struct exec *x, struct branch *b, const struct read_at *at, struct head *h)
{
    uint8_t k[IKEY_MAX];
    size_t klen = exec_ikey(x, k, TAG_EVENT_HEAD, NULL, 0);
    const struct version *v;
    int rc = view_get(b, k, klen, at, &v, x->err);
    return rc ? rc : head_decode(x, v ? v->data : NULL, v ? v->len : 0, h);
}

/* The target's log length at the merge base. After an earlier merge of src into this
 * target the base is that merge's source version; the target's own state at the base is
 * then the state right after that merge (which already holds src's events up to the
 * base), not the source's length. Otherwise the base is the fork point, where both logs
 * are the same. */
static int target_base_len(struct exec *x, struct branch *src, const struct read_at *base_at,
                           uint64_t src_base_len, uint64_t *out)
{
    *out = src_base_len;
    if (base_at->by_ts)
        return 0;
    /* The merge record of src into this target: 0x00 'M' be64(src id) -> [src_ver, ver]. */
    uint8_t mk[10] = {0, TAG_MERGE};
    put_be64(mk + 2, src->id);
    struct read_at head = {UINT64_MAX, 0, false};
    const struct version *rv;
    int rc = view_get(x->b, mk, sizeof mk, &head, &rv, x->err);
    if (rc || rv == NULL)
        return rc;
    msgpack_zone z;
    msgpack_zone_init(&z, 128);
    msgpack_object o;
    uint64_t merge_ver = 0;
    if (value_decode(rv->data, rv->len, &z, &o) == 0 && o.type == MSGPACK_OBJECT_ARRAY &&
        o.via.array.size == 2 && o.via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
        o.via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
        o.via.array.ptr[0].via.u64 == base_at->ver)
        merge_ver = o.via.array.ptr[1].via.u64;
    msgpack_zone_destroy(&z);
    if (merge_ver == 0)
        return 0;
    struct read_at at = {merge_ver, 0, false};
    struct head h;
    rc = head_view(x, x->b, &at, &h);
    if (rc == 0)
        *out = h.len;
    return rc;
}

int event_merge_space(struct exec *x, struct branch *src, const struct read_at *src_at,
                      const struct read_at *base_at, bool source_wins, msgpack_packer *conflicts,
                      uint32_t *nconflicts)
{
    struct head base, source, target;
    uint64_t tbase;
    int rc;
    if ((rc = head_view(x, src, base_at, &base)) || (rc = head_view(x, src, src_at, &source)) ||
        (rc = head_read_for_write(x, &target)) ||
        (rc = target_base_len(x, src, base_at, base.len, &tbase)))
        return rc;
    if (source.len <= base.len)
        return 0; /* the source appended nothing */
    if (target.len > tbase && !source_wins) {
        char path[8 + sizeof x->space];
        int n = snprintf(path, sizeof path, "events:%s", x->space);
        mp_pack_str(conflicts, path, (size_t)n);
        (*nconflicts)++;
        return 0;
    }
    uint8_t k[IKEY_MAX];
    uint8_t be[8];
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    struct buf pbuf;
    buf_init(&pbuf);
    for (uint64_t seq = base.len + 1; seq <= source.len; seq++) {
        put_be64(be, seq);
        size_t klen = exec_ikey(x, k, TAG_EVENT, be, sizeof be);
        const struct version *v;
        struct event ev;
        msgpack_zone_clear(&z);
        if ((rc = view_get(src, k, klen, src_at, &v, x->err)))
            goto out;
        if (v == NULL || event_decode(v->data, v->len, &z, &ev)) {
            rc = err_set(x->err, STRATA_INTERNAL, "corrupt event %llu in space '%s' of branch '%s'",
                         (unsigned long long)seq, x->space, src->name);
            goto out;
        }
        /* Re-encode the payload canonically: the same bytes that were hashed. */
        buf_reset(&pbuf);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &pbuf, buf_pack_write);
        if (value_pack(&pk, ev.payload)) {
            rc = oom(x);
            goto out;
        }
        if ((rc = event_append_one(x, ev.type, ev.tlen, pbuf.data, pbuf.len, NULL, NULL)))
            goto out;
    }
out:
    buf_close(&pbuf);
    msgpack_zone_destroy(&z);
    return rc;
}

const struct op_def event_ops[] = {
    {"event.append", OP_WRITE | OP_BRANCH | OP_BATCHABLE, event_append},
    {"event.get", OP_BRANCH, event_get},
    {"event.len", OP_BRANCH, event_len},
    {"event.range", OP_BRANCH, event_range},
    {"event.types", OP_BRANCH, event_types},
    {"event.verify_chain", OP_BRANCH, event_verify_chain},
    {NULL, 0, NULL},
};
