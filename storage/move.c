/* Branch moves, the shard side: the fence on the source (writes, then reads, refused
 * with MOVED), releasing the source's copy, dropping a partial copy on the target, the
 * markers' encoding, and the check every other command passes. Export and import are in
 * move_copy.c. docs/sharding.md "Branch moves". */
#include "move.h"

#include <string.h>

/* ---- Markers ------------------------------------------------------------------------ */

static struct entry *marker_entry(struct branch *b, int tag)
{
    const uint8_t k[2] = {0, (uint8_t)tag};
    struct entry *e = branch_get(b, k, 2);
    return e && e->head && e->head->len != VLEN_TOMB ? e : NULL;
}

static bool is_u64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

/* The marker as an array of min..max elements: 1, or 0 when absent or malformed. */
static int decode_marker(struct branch *b, int tag, msgpack_zone *z, msgpack_object *o,
                         uint32_t min, uint32_t max)
{
    struct entry *e = marker_entry(b, tag);
    if (e == NULL)
        return 0;
    size_t off = 0;
    if (msgpack_unpack((const char *)e->head->data, e->head->len, &off, z, o) !=
            MSGPACK_UNPACK_SUCCESS ||
        o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < min || o->via.array.size > max)
        return 0;
    return 1;
}

int move_fence_get(struct branch *b, struct fence_marker *out)
{
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 256))
        return 0;
    msgpack_object o;
    int found = decode_marker(b, MOVE_TAG_FENCE, &z, &o, 4, 4);
    if (found) {
        const msgpack_object *f = o.via.array.ptr;
        found = is_u64(&f[0]) && f[0].via.u64 >= FENCE_FENCED &&
                f[0].via.u64 <= FENCE_UNFENCED && is_u64(&f[1]) && f[1].via.u64 <= UINT32_MAX &&
                is_u64(&f[2]) && is_u64(&f[3]);
        if (found)
            *out = (struct fence_marker){(enum fence_state)f[0].via.u64, (uint32_t)f[1].via.u64,
                                         f[2].via.u64, f[3].via.u64};
    }
    msgpack_zone_destroy(&z);
    return found;
}

int move_import_get(struct branch *b, struct import_marker *out)
{
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 256))
        return 0;
    msgpack_object o;
    /* A 10th element, idem_lossy, is written only when true. */
    int found = decode_marker(b, MOVE_TAG_IMPORT, &z, &o, 9, 10);
    if (found) {
        const msgpack_object *f = o.via.array.ptr;
        const msgpack_object *pos = &f[5];
        found = is_u64(&f[0]) && f[0].via.u64 <= UINT32_MAX && is_u64(&f[1]) && is_u64(&f[2]) &&
                is_u64(&f[3]) && (f[3].via.u64 == IMPORT_IMPORTING || f[3].via.u64 == IMPORT_DONE) &&
                is_u64(&f[4]) && f[6].type == MSGPACK_OBJECT_BOOLEAN &&
                (f[7].type == MSGPACK_OBJECT_NIL || is_u64(&f[7])) && is_u64(&f[8]) &&
                (pos->type == MSGPACK_OBJECT_NIL ||
                 (pos->type == MSGPACK_OBJECT_ARRAY && pos->via.array.size == 2 &&
                  pos->via.array.ptr[0].type == MSGPACK_OBJECT_BIN &&
                  pos->via.array.ptr[0].via.bin.size <= IKEY_MAX && is_u64(&pos->via.array.ptr[1]))) &&
                (o.via.array.size == 9 || f[9].type == MSGPACK_OBJECT_BOOLEAN);
        if (found) {
            memset(out, 0, sizeof *out);
            out->source_shard = (uint32_t)f[0].via.u64;
            out->move_id = f[1].via.u64;
            out->source_branch_id = f[2].via.u64;
            out->state = (enum import_state)f[3].via.u64;
            out->copy_at = f[4].via.u64;
            if (pos->type == MSGPACK_OBJECT_ARRAY) {
                out->has_copy_pos = true;
                out->copy_klen = pos->via.array.ptr[0].via.bin.size;
                memcpy(out->copy_key, pos->via.array.ptr[0].via.bin.ptr, out->copy_klen);
                out->copy_ver = pos->via.array.ptr[1].via.u64;
            }
            out->copy_complete = f[6].via.boolean;
            out->has_log_pos = f[7].type != MSGPACK_OBJECT_NIL;
            out->log_pos = out->has_log_pos ? f[7].via.u64 : 0;
            out->imported_to = f[8].via.u64;
            out->idem_lossy = o.via.array.size == 10 && f[9].via.boolean;
        }
    }
    msgpack_zone_destroy(&z);
    return found;
}

int move_fence_encode(const struct fence_marker *m, struct buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_pack_write);
    int rc = msgpack_pack_array(&pk, 4) || msgpack_pack_uint32(&pk, (uint32_t)m->state) ||
             msgpack_pack_uint32(&pk, m->to_shard) || msgpack_pack_uint64(&pk, m->move_id) ||
             msgpack_pack_uint64(&pk, m->ver);
    return rc ? STRATA_OUT_OF_MEMORY : 0;
}

int move_import_encode(const struct import_marker *m, struct buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_pack_write);
    int rc = msgpack_pack_array(&pk, m->idem_lossy ? 10 : 9) ||
             msgpack_pack_uint32(&pk, m->source_shard) ||
             msgpack_pack_uint64(&pk, m->move_id) ||
             msgpack_pack_uint64(&pk, m->source_branch_id) ||
             msgpack_pack_uint32(&pk, (uint32_t)m->state) || msgpack_pack_uint64(&pk, m->copy_at);
    if (rc == 0 && m->has_copy_pos)
        rc = msgpack_pack_array(&pk, 2) || msgpack_pack_bin(&pk, m->copy_klen) ||
             msgpack_pack_bin_body(&pk, m->copy_key, m->copy_klen) ||
             msgpack_pack_uint64(&pk, m->copy_ver);
    else if (rc == 0)
        rc = msgpack_pack_nil(&pk);
    if (rc == 0)
        rc = msgpack_pack_bool(&pk, m->copy_complete) ||
             (m->has_log_pos ? msgpack_pack_uint64(&pk, m->log_pos) : msgpack_pack_nil(&pk)) ||
             msgpack_pack_uint64(&pk, m->imported_to);
    if (rc == 0 && m->idem_lossy)
        rc = msgpack_pack_true(&pk);
    return rc ? STRATA_OUT_OF_MEMORY : 0;
}

uint64_t move_marker_ver(struct storage *s)
{
    return s->version ? s->version : 1;
}

int move_marker_prepare(struct storage *s, struct branch *b, int tag, const struct buf *val,
                        struct marker_set *ms)
{
    const uint8_t k[2] = {0, (uint8_t)tag};
    ms->e = NULL;
    ms->v = sm_malloc(VERSION_SIZE(val->len));
    if (ms->v == NULL)
        return STRATA_OUT_OF_MEMORY;
    ms->v->older = NULL;
    ms->v->ver = move_marker_ver(s);
    ms->v->ts = s->last_ts;
    ms->v->len = (uint32_t)val->len;
    ms->v->vflags = 0;
    memcpy(ms->v->data, val->data, val->len);
    struct entry *e = branch_get(b, k, 2);
    if (e == NULL) {
        e = sm_malloc(ENTRY_SIZE(2));
        if (e == NULL)
            goto err_free_v;
        e->head = NULL;
        e->flags = 0;
        e->klen = 2;
        memcpy(e->key, k, 2);
        if (branch_insert(b, e)) {
            sm_free(e);
            goto err_free_v;
        }
    }
    ms->e = e;
    return 0;
err_free_v:
    sm_free(ms->v);
    ms->v = NULL;
    return STRATA_OUT_OF_MEMORY;
}

void move_marker_install(struct storage *s, struct marker_set *ms)
{
    if (s->version < ms->v->ver)
        s->version = ms->v->ver;
    version_chain_free(ms->e->head);
    ms->e->head = ms->v;
    ms->v = NULL;
}

void move_marker_discard(struct marker_set *ms)
{
    sm_free(ms->v);
    ms->v = NULL;
}

void move_marker_clear(struct branch *b, int tag)
{
    const uint8_t k[2] = {0, (uint8_t)tag};
    struct entry *e = branch_get(b, k, 2);
    if (e) {
        version_chain_free(e->head);
        e->head = NULL;
    }
}

/* Put a marker in one go (fence commands change nothing else). */
static int marker_put(struct exec *x, struct branch *b, int tag, const struct buf *val)
{
    struct marker_set ms;
    if (move_marker_prepare(x->s, b, tag, val, &ms))
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory writing a move marker");
    move_marker_install(x->s, &ms);
    return 0;
}

/* Put the fence marker f. */
static int fence_put(struct exec *x, struct branch *b, const struct fence_marker *f)
{
    struct buf val;
    buf_init(&val);
    int rc = move_fence_encode(f, &val) ? err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory")
                                        : marker_put(x, b, MOVE_TAG_FENCE, &val);
    buf_close(&val);
    return rc;
}

bool move_has_children(const struct storage *s, const struct branch *b)
{
    for (size_t i = 0; i < s->nbranches; i++)
        if (s->branches[i]->parent == b)
            return true;
    return false;
}

bool move_key_ok(const uint8_t *k, size_t klen)
{
    if (klen < 2 || klen > IKEY_MAX)
        return false;
    if (k[0] == 0) /* meta: only the space registry travels */
        return k[1] == TAG_SPACE && space_check((const char *)k + 2, klen - 2, NULL) == 0;
    const uint8_t *sp, *rest;
    size_t slen, rlen;
    int tag;
    if (ikey_split(k, klen, &sp, &slen, &tag, &rest, &rlen) != 0 ||
        space_check((const char *)sp, slen, NULL) != 0)
        return false;
    switch (tag) {
    case TAG_KV:
    case TAG_JSON:
    case TAG_STATE:
    case TAG_VCOLL:
    case TAG_VECTOR:
        return rlen > 0;
    case TAG_EVENT:
        return rlen == 8;
    case TAG_EVENT_HEAD:
        return rlen == 0;
    default:
        return false;
    }
}

/* ---- Arguments ---------------------------------------------------------------------- */

static int arg_move_id(struct exec *x, uint64_t *id)
{
    bool has = false;
    int rc = arg_u64_opt(x, "move_id", id, &has);
    if (rc == 0 && (!has || *id == 0))
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT, "argument 'move_id' must be a positive integer");
    return rc;
}

static int arg_shard(struct exec *x, const char *name, uint32_t *shard)
{
    uint64_t v = 0;
    bool has = false;
    int rc = (arg_u64_opt)(x, name, strlen(name), &v, &has);
    if (rc == 0 && (!has || v == 0 || v > UINT32_MAX))
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT, "argument '%s' must be a shard id (> 0)",
                     name);
    *shard = (uint32_t)v;
    return rc;
}

/* The named branch, or NULL (with *present false) when it does not exist: the release
 * and abort steps are no-ops then. */
static int arg_branch_opt(struct exec *x, struct branch **b)
{
    const char *n;
    size_t len;
    int rc = arg_str(x, "name", &n, &len);
    if (rc == 0)
        *b = branch_find(x->s, n, len);
    return rc;
}

/* Pack a fence; non-zero when the packer failed (out of memory). The commands pack
 * their answer before they change anything, so a failure there changes nothing. */
static int pack_fence_more(msgpack_packer *pk, const struct fence_marker *f, uint32_t more)
{
    static const char *const names[] = {"", "fenced", "sealed", "unfenced"};
    int rc = msgpack_pack_map(pk, 4 + more);
    mp_pack_cstr(pk, "state");
    mp_pack_cstr(pk, names[f->state]);
    mp_pack_cstr(pk, "to_shard");
    rc |= msgpack_pack_uint32(pk, f->to_shard);
    mp_pack_cstr(pk, "move_id");
    rc |= msgpack_pack_uint64(pk, f->move_id);
    mp_pack_cstr(pk, "fence_version");
    return rc | msgpack_pack_uint64(pk, f->ver);
}

static int pack_fence(msgpack_packer *pk, const struct fence_marker *f)
{
    return pack_fence_more(pk, f, 0);
}

static int answer_oom(struct exec *x)
{
    return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory building the result");
}

/* ---- Source: fence, seal, unfence, release --------------------------------------------- */

/* move.fence {name, to_shard, move_id, seal?, since | from_pos?, max_bytes?}: from now on
 * writes to the branch fail with MOVED (with `seal`, reads too). Answers the fence
 * {state, to_shard, move_id, fence_version} and, when a delta position is given, under
 * "export" the delta from there as move.export answers it, taken in the same command:
 * the driver's final copy costs no round of its own, and nothing can be written between
 * the fence and the export. A retry of the same move answers the fence that stands
 * (sealing it if asked) with the delta from the position given. */
static int move_fence(struct exec *x)
{
    struct branch *b;
    uint64_t id;
    uint32_t to;
    bool seal = false;
    int rc;
    if ((rc = arg_branch(x, "name", &b)) || (rc = arg_shard(x, "to_shard", &to)) ||
        (rc = arg_move_id(x, &id)) || (rc = arg_bool_opt(x, "seal", &seal)))
        return rc;
    struct fence_marker f;
    bool had = move_fence_get(b, &f);
    bool retry = had && f.state != FENCE_UNFENCED;
    if (retry && f.move_id != id)
        return err_set(x->err, STRATA_CONFLICT, "branch '%s' is fenced by move %llu", b->name,
                       (unsigned long long)f.move_id);
    if (!retry) {
        if (had && f.move_id >= id)
            return err_set(x->err, STRATA_CONFLICT,
                           "move %llu of branch '%s' was aborted (unfenced by move %llu)",
                           (unsigned long long)id, b->name, (unsigned long long)f.move_id);
        if (strcmp(b->name, "default") == 0)
            return err_set(x->err, STRATA_INVALID_ARGUMENT, "the default branch cannot move");
        if (move_has_children(x->s, b))
            return err_set(x->err, STRATA_INVALID_ARGUMENT,
                           "branch '%s' has forks on this shard: a branch with forks cannot move",
                           b->name);
        f = (struct fence_marker){FENCE_FENCED, to, id, move_marker_ver(x->s)};
    }
    bool change = !retry || (seal && f.state == FENCE_FENCED);
    if (seal)
        f.state = FENCE_SEALED;
    /* The export first, into a buffer of its own: it is the part that can fail. */
    struct buf ex;
    buf_init(&ex);
    msgpack_packer epk;
    msgpack_packer_init(&epk, &ex, buf_pack_write);
    bool wanted = false;
    if ((rc = move_export_fenced(x, b, id, &wanted, &epk)))
        goto out;
    if (pack_fence_more(x->pk, &f, wanted)) {
        rc = answer_oom(x);
        goto out;
    }
    if (wanted) {
        mp_pack_cstr(x->pk, "export");
        if (x->pk->callback(x->pk->data, (const char *)ex.data, ex.len)) {
            rc = answer_oom(x);
            goto out;
        }
    }
    if (change)
        rc = fence_put(x, b, &f);
out:
    buf_close(&ex);
    return rc;
}

/* A fence of this move, or CONFLICT. */
static int own_fence(struct exec *x, struct branch *b, uint64_t id, struct fence_marker *f)
{
    if (!move_fence_get(b, f) || f->state == FENCE_UNFENCED || f->move_id != id)
        return err_set(x->err, STRATA_CONFLICT, "branch '%s' is not fenced by move %llu",
                       b->name, (unsigned long long)id);
    return 0;
}

/* move.seal {name, move_id}: reads fail with MOVED too (just before the cut-over). */
static int move_seal(struct exec *x)
{
    struct branch *b;
    uint64_t id;
    struct fence_marker f;
    int rc;
    if ((rc = arg_branch(x, "name", &b)) || (rc = arg_move_id(x, &id)) ||
        (rc = own_fence(x, b, id, &f)))
        return rc;
    bool change = f.state != FENCE_SEALED;
    f.state = FENCE_SEALED;
    if (pack_fence(x->pk, &f))
        return answer_oom(x);
    if (change)
        rc = fence_put(x, b, &f);
    return rc;
}

/* move.unfence {name, move_id}: an aborted move gives the branch back. The marker keeps
 * the id, so a late fence of this (or an older) move is refused. */
static int move_unfence(struct exec *x)
{
    struct branch *b;
    uint64_t id;
    int rc;
    if ((rc = arg_branch_opt(x, &b)) || (rc = arg_move_id(x, &id)))
        return rc;
    if (b == NULL) {
        msgpack_pack_false(x->pk);
        return 0;
    }
    struct fence_marker f;
    bool had = move_fence_get(b, &f);
    if (had && f.state != FENCE_UNFENCED && f.move_id != id)
        return err_set(x->err, STRATA_CONFLICT, "branch '%s' is fenced by move %llu",
                       b->name, (unsigned long long)f.move_id);
    if (had && f.state == FENCE_UNFENCED && f.move_id >= id) {
        msgpack_pack_false(x->pk);
        return 0;
    }
    f = (struct fence_marker){FENCE_UNFENCED, had ? f.to_shard : 0, id, move_marker_ver(x->s)};
    if (msgpack_pack_true(x->pk))
        return answer_oom(x);
    return fence_put(x, b, &f);
}

/* move.release {name, move_id}: after the cut-over the source deletes its sealed copy.
 * Answers whether it deleted anything (false: already gone). */
static int move_release(struct exec *x)
{
    struct branch *b;
    uint64_t id;
    struct fence_marker f;
    int rc;
    if ((rc = arg_branch_opt(x, &b)) || (rc = arg_move_id(x, &id)))
        return rc;
    if (b == NULL) {
        msgpack_pack_false(x->pk);
        return 0;
    }
    if ((rc = own_fence(x, b, id, &f)))
        return rc;
    if (f.state != FENCE_SEALED)
        return err_set(x->err, STRATA_CONFLICT, "branch '%s' is fenced but not sealed", b->name);
    if (move_has_children(x->s, b))
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "branch '%s' has forks", b->name);
    if (msgpack_pack_true(x->pk))
        return answer_oom(x);
    b->deleted = true;
    branch_unref(x->s, b);
    return 0;
}

/* ---- Target: drop a partial copy --------------------------------------------------------- */

/* move.abort {name, move_id, force?}: delete the branch if it is this move's copy and
 * unfinished — or finished, with `force` (the driver's abort, which runs only while the
 * table still names the source). Never touches a branch that is not this move's copy. */
static int move_abort(struct exec *x)
{
    struct branch *b;
    uint64_t id;
    bool force = false;
    int rc;
    if ((rc = arg_branch_opt(x, &b)) || (rc = arg_move_id(x, &id)) ||
        (rc = arg_bool_opt(x, "force", &force)))
        return rc;
    struct import_marker m;
    if (b == NULL || !move_import_get(b, &m) || m.move_id != id) {
        msgpack_pack_false(x->pk);
        return 0;
    }
    if (m.state == IMPORT_DONE && !force)
        return err_set(x->err, STRATA_CONFLICT,
                       "branch '%s' was imported completely: it is live here", b->name);
    if (msgpack_pack_true(x->pk))
        return answer_oom(x);
    b->deleted = true;
    branch_unref(x->s, b);
    return 0;
}

/* ---- Both: status ---------------------------------------------------------------------- */

/* move.status {name}: {exists, version, branch_id?, log_len?, forks?, parent?, fence?,
 * import?}. parent: the name of the branch it was forked from (live or deleted), nil for
 * a root branch — the rebalancer moves only branches without parent and forks. */
static int move_status(struct exec *x)
{
    const char *n;
    size_t len;
    int rc = arg_str(x, "name", &n, &len);
    if (rc)
        return rc;
    struct branch *b = branch_find(x->s, n, len);
    msgpack_packer *pk = x->pk;
    msgpack_pack_map(pk, b ? 8 : 2);
    mp_pack_cstr(pk, "exists");
    msgpack_pack_bool(pk, b != NULL);
    mp_pack_cstr(pk, "version");
    msgpack_pack_uint64(pk, x->s->version);
    if (b == NULL)
        return 0;
    mp_pack_cstr(pk, "branch_id");
    msgpack_pack_uint64(pk, b->id);
    mp_pack_cstr(pk, "log_len");
    msgpack_pack_uint64(pk, b->nlog);
    uint32_t forks = 0;
    for (size_t i = 0; i < x->s->nbranches; i++)
        forks += x->s->branches[i]->parent == b;
    mp_pack_cstr(pk, "forks");
    msgpack_pack_uint32(pk, forks);
    mp_pack_cstr(pk, "parent");
    if (b->parent) {
        msgpack_pack_str(pk, b->parent->name_len);
        msgpack_pack_str_body(pk, b->parent->name, b->parent->name_len);
    } else {
        msgpack_pack_nil(pk);
    }
    mp_pack_cstr(pk, "fence");
    struct fence_marker f;
    if (move_fence_get(b, &f))
        pack_fence(pk, &f);
    else
        msgpack_pack_nil(pk);
    mp_pack_cstr(pk, "import");
    struct import_marker m;
    if (!move_import_get(b, &m)) {
        msgpack_pack_nil(pk);
        return 0;
    }
    msgpack_pack_map(pk, 9);
    mp_pack_cstr(pk, "source_shard");
    msgpack_pack_uint32(pk, m.source_shard);
    mp_pack_cstr(pk, "move_id");
    msgpack_pack_uint64(pk, m.move_id);
    mp_pack_cstr(pk, "source_branch_id");
    msgpack_pack_uint64(pk, m.source_branch_id);
    mp_pack_cstr(pk, "state");
    mp_pack_cstr(pk, m.state == IMPORT_DONE ? "done" : "importing");
    mp_pack_cstr(pk, "copy_at");
    msgpack_pack_uint64(pk, m.copy_at);
    mp_pack_cstr(pk, "copy_pos");
    if (m.has_copy_pos) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_bin(pk, m.copy_klen);
        msgpack_pack_bin_body(pk, m.copy_key, m.copy_klen);
        msgpack_pack_uint64(pk, m.copy_ver);
    } else {
        msgpack_pack_nil(pk);
    }
    mp_pack_cstr(pk, "copy_complete");
    msgpack_pack_bool(pk, m.copy_complete);
    mp_pack_cstr(pk, "log_pos");
    if (m.has_log_pos)
        msgpack_pack_uint64(pk, m.log_pos);
    else
        msgpack_pack_nil(pk);
    mp_pack_cstr(pk, "imported_to");
    msgpack_pack_uint64(pk, m.imported_to);
    return 0;
}

/* ---- The check every other command passes ----------------------------------------------- */

static int check_branch(struct exec *x, struct branch *b, bool write)
{
    struct fence_marker f;
    if (move_fence_get(b, &f) && f.state != FENCE_UNFENCED && (write || f.state == FENCE_SEALED))
        return err_set(x->err, STRATA_MOVED,
                       f.state == FENCE_SEALED ? "branch '%s' moved to shard %u"
                                               : "branch '%s' is moving to shard %u (writes are "
                                                 "fenced)",
                       b->name, f.to_shard);
    struct import_marker m;
    if (move_import_get(b, &m) && m.state == IMPORT_IMPORTING)
        return err_set(x->err, STRATA_UNAVAILABLE,
                       "branch '%s' is being moved to this shard (move %llu)", b->name,
                       (unsigned long long)m.move_id);
    return 0;
}

int move_check(struct exec *x, const struct op_def *d)
{
    if (strncmp(d->name, "move.", 5) == 0)
        return 0;
    bool write = (d->flags & OP_WRITE) != 0;
    int rc;
    if (x->b && (rc = check_branch(x, x->b, write)))
        return rc;
    if (d->flags & OP_BRANCH)
        return 0;
    /* branch.* commands name their branches in these arguments. */
    static const char *const args[] = {"name", "source", "target", "a", "b"};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        const msgpack_object *o = mp_map_getn(x->args, args[i], strlen(args[i]));
        if (o == NULL || o->type != MSGPACK_OBJECT_STR)
            continue;
        struct branch *b = branch_find(x->s, o->via.str.ptr, o->via.str.size);
        if (b && (rc = check_branch(x, b, write)))
            return rc;
    }
    return 0;
}

static bool imported_lossy(struct branch *b)
{
    struct import_marker m;
    return move_import_get(b, &m) && m.idem_lossy;
}

bool move_idem_lossy(struct exec *x, const struct op_def *d)
{
    if (x->b)
        return imported_lossy(x->b);
    if (d->flags & OP_BRANCH)
        return false;
    static const char *const args[] = {"name", "source", "target", "a", "b"};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        const msgpack_object *o = mp_map_getn(x->args, args[i], strlen(args[i]));
        struct branch *b = o && o->type == MSGPACK_OBJECT_STR
                               ? branch_find(x->s, o->via.str.ptr, o->via.str.size)
                               : NULL;
        if (b && imported_lossy(b))
            return true;
    }
    return false;
}

const struct op_def move_ops[] = {
    {"move.export", 0, move_export},
    {"move.import", OP_WRITE, move_import},
    {"move.fence", OP_WRITE, move_fence},
    {"move.seal", OP_WRITE, move_seal},
    {"move.unfence", OP_WRITE, move_unfence},
    {"move.release", OP_WRITE, move_release},
    {"move.abort", OP_WRITE, move_abort},
    {"move.status", 0, move_status},
    {NULL, 0, NULL},
};
