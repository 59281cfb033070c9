/* Branch commands: create, fork (O(1) copy-on-write), fork_many, delete, list, info,
 * retention policy and pruning; and the space commands. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define BRANCH_NAME_MAX 128

int storage_branch_name_check(const char *n, size_t len, struct err *err)
{
    bool ok = len >= 1 && len <= BRANCH_NAME_MAX && n[0] != '.' && n[0] != '/' && n[0] != '-';
    for (size_t i = 0; ok && i < len; i++) {
        char c = n[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '-' || c == '.' || c == '/';
    }
    if (!ok)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "invalid branch name '%.*s': 1-%d characters of [A-Za-z0-9_./-], not "
                       "starting with '.', '/' or '-'",
                       (int)(len > 80 ? 80 : len), n, BRANCH_NAME_MAX);
    return 0;
}

static int name_check(struct exec *x, const char *n, size_t len)
{
    return storage_branch_name_check(n, len, x->err);
}

static int new_name(struct exec *x, const char *n, size_t len)
{
    int rc = name_check(x, n, len);
    if (rc == 0 && branch_find(x->s, n, len))
        rc = err_set(x->err, STRATA_BRANCH_EXISTS, "branch '%.*s' already exists", (int)len, n);
    return rc;
}

static void pack_branch_ref(msgpack_packer *pk, struct branch *b)
{
    msgpack_pack_map(pk, 3);
    mp_pack_cstr(pk, "name");
    mp_pack_cstr(pk, b->name);
    mp_pack_cstr(pk, "version");
    msgpack_pack_uint64(pk, b->created_ver);
    mp_pack_cstr(pk, "fork_version");
    if (b->parent)
        msgpack_pack_uint64(pk, b->fork_ver);
    else
        msgpack_pack_nil(pk);
}

static int branch_create(struct exec *x)
{
    const char *n;
    size_t len;
    struct branch *b;
    int rc;
    if ((rc = arg_str(x, "name", &n, &len)) || (rc = new_name(x, n, len)))
        return rc;
    if ((rc = branch_add(x->s, n, len, NULL, 0, &b)))
        return err_set(x->err, rc, "out of memory creating a branch");
    b->created_ver = x->s->version;
    b->created_ts = x->ts;
    pack_branch_ref(x->pk, b);
    return 0;
}

/* Materializing a fork (when its read-through chain would get too deep): copy src's
 * whole lineage as of `ver` into dst — for every key present at any level, every
 * version it had at or below that level's read-through limit (tombstones and gap
 * records included), newest first — so reads at any version <= ver and history are
 * unchanged while dst no longer reads through. The copies are not changes: they do not
 * enter dst's change log. */
static int flatten_key(struct branch *dst, struct branch *src, uint64_t ver, const struct entry *e0)
{
    struct entry *ne = sm_malloc(ENTRY_SIZE(e0->klen));
    if (ne == NULL)
        return STRATA_OUT_OF_MEMORY;
    ne->klen = e0->klen;
    ne->flags = 0;
    memcpy(ne->key, e0->key, e0->klen);
    ne->head = NULL;
    struct version **tail = &ne->head;
    uint64_t bound = ver;
    for (struct branch *b = src; b; b = b->flat ? NULL : b->parent) {
        struct entry *e = branch_get(b, e0->key, e0->klen);
        for (const struct version *v = e ? e->head : NULL; v; v = v->older) {
            if (v->ver > bound)
                continue;
            struct version *nv = sm_malloc(version_alloc_size(v));
            if (nv == NULL)
                goto err_free;
            memcpy(nv, v, version_alloc_size(v));
            nv->older = NULL;
            *tail = nv;
            tail = &nv->older;
        }
        if (e)
            ne->flags |= e->flags & ENTRY_PRUNED;
        if (b->fork_ver < bound)
            bound = b->fork_ver;
    }
    if (ne->head == NULL) {
        sm_free(ne);
        return 0;
    }
    if (branch_insert(dst, ne))
        goto err_free;
    return 0;
err_free:
    version_chain_free(ne->head);
    sm_free(ne);
    return STRATA_OUT_OF_MEMORY;
}

static int flatten_into(struct exec *x, struct branch *dst, struct branch *src, uint64_t ver)
{
    for (struct branch *b = src; b; b = b->flat ? NULL : b->parent) {
        struct btree_iter it;
        btree_seek(&b->idx, (const uint8_t *)"", 0, &it);
        struct entry *e;
        while ((e = btree_next(&it)) != NULL) {
            if (branch_get(dst, e->key, e->klen))
                continue;
            if (flatten_key(dst, src, ver, e))
                return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory materializing a fork");
        }
    }
    return 0;
}

static int fork_one(struct exec *x, struct branch *src, const char *n, size_t len, uint64_t ver,
                    struct branch **out)
{
    int rc = branch_add(x->s, n, len, src, ver, out);
    if (rc)
        return err_set(x->err, rc, "out of memory forking a branch");
    struct branch *b = *out;
    b->created_ver = x->s->version;
    b->created_ts = x->ts;
    if (b->depth > x->s->cfg.max_fork_depth || b->depth >= VIEW_MAX_LEVELS - 1) {
        if ((rc = flatten_into(x, b, src, ver))) {
            b->deleted = true;
            branch_unref(x->s, b);
            return rc;
        }
        b->flat = true;
        b->depth = 0;
    }
    return 0;
}

static int fork_version(struct exec *x, uint64_t *ver)
{
    bool has;
    *ver = x->s->version;
    int rc = arg_u64_opt(x, "at_version", ver, &has);
    if (rc == 0 && has && *ver > x->s->version)
        rc = err_set(x->err, STRATA_INVALID_ARGUMENT,
                     "at_version %llu is in the future (current version %llu)",
                     (unsigned long long)*ver, (unsigned long long)x->s->version);
    return rc;
}

static int branch_fork(struct exec *x)
{
    struct branch *src, *b;
    const char *n;
    size_t len;
    uint64_t ver;
    int rc;
    if ((rc = arg_branch(x, "source", &src)) || (rc = arg_str(x, "name", &n, &len)) ||
        (rc = new_name(x, n, len)) || (rc = fork_version(x, &ver)) ||
        (rc = fork_one(x, src, n, len, ver, &b)))
        return rc;
    pack_branch_ref(x->pk, b);
    return 0;
}

static int branch_fork_many(struct exec *x)
{
    struct branch *src;
    uint64_t ver;
    int rc;
    if ((rc = arg_branch(x, "source", &src)) || (rc = fork_version(x, &ver)))
        return rc;
    const msgpack_object *names = arg_get(x, "names");
    if (names == NULL || names->type != MSGPACK_OBJECT_ARRAY || names->via.array.size == 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT,
                       "argument 'names' must be a non-empty array of strings");
    uint32_t n = names->via.array.size;
    /* Validate all (including duplicates within the list) before creating any. */
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &names->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR)
            return err_set(x->err, STRATA_INVALID_ARGUMENT, "names must be strings");
        if ((rc = new_name(x, o->via.str.ptr, o->via.str.size)))
            return rc;
        for (uint32_t j = 0; j < i; j++)
            if (o->via.str.size == names->via.array.ptr[j].via.str.size &&
                memcmp(o->via.str.ptr, names->via.array.ptr[j].via.str.ptr, o->via.str.size) == 0)
                return err_set(x->err, STRATA_INVALID_ARGUMENT, "duplicate name '%.*s' in names",
                               (int)o->via.str.size, o->via.str.ptr);
    }
    struct branch **made = sm_calloc(n, sizeof *made);
    if (made == NULL)
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &names->via.array.ptr[i];
        if ((rc = fork_one(x, src, o->via.str.ptr, o->via.str.size, ver, &made[i]))) {
            for (uint32_t j = 0; j < i; j++) {
                made[j]->deleted = true;
                branch_unref(x->s, made[j]);
            }
            sm_free(made);
            return rc;
        }
    }
    msgpack_pack_array(x->pk, n);
    for (uint32_t i = 0; i < n; i++)
        pack_branch_ref(x->pk, made[i]);
    sm_free(made);
    return 0;
}

/* Delete: the name disappears at once. Children keep reading through the hidden
 * branch, which is freed with its last child (docs/storage.md). */
static int branch_delete(struct exec *x)
{
    struct branch *b;
    int rc = arg_branch(x, "name", &b);
    if (rc)
        return rc;
    if (strcmp(b->name, "default") == 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "the default branch cannot be deleted");
    b->deleted = true;
    branch_unref(x->s, b);
    msgpack_pack_true(x->pk);
    return 0;
}

static int cmp_branch_name(const void *a, const void *b)
{
    return strcmp((*(struct branch *const *)a)->name, (*(struct branch *const *)b)->name);
}

static int branch_list(struct exec *x)
{
    size_t n = 0;
    struct branch **live = sm_malloc((x->s->nbranches + 1) * sizeof *live);
    if (live == NULL)
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory");
    for (size_t i = 0; i < x->s->nbranches; i++)
        if (!x->s->branches[i]->deleted)
            live[n++] = x->s->branches[i];
    qsort(live, n, sizeof *live, cmp_branch_name);
    msgpack_pack_array(x->pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        mp_pack_cstr(x->pk, live[i]->name);
    sm_free(live);
    return 0;
}

static int branch_info(struct exec *x)
{
    struct branch *b;
    int rc = arg_branch(x, "name", &b);
    if (rc)
        return rc;
    msgpack_packer *pk = x->pk;
    msgpack_pack_map(pk, 11);
    mp_pack_cstr(pk, "name");
    mp_pack_cstr(pk, b->name);
    mp_pack_cstr(pk, "id");
    msgpack_pack_uint64(pk, b->id);
    mp_pack_cstr(pk, "parent");
    if (b->parent)
        mp_pack_cstr(pk, b->parent->name);
    else
        msgpack_pack_nil(pk);
    mp_pack_cstr(pk, "parent_deleted");
    msgpack_pack_bool(pk, b->parent && b->parent->deleted);
    mp_pack_cstr(pk, "fork_version");
    msgpack_pack_uint64(pk, b->fork_ver);
    mp_pack_cstr(pk, "created_version");
    msgpack_pack_uint64(pk, b->created_ver);
    mp_pack_cstr(pk, "created_ts");
    msgpack_pack_int64(pk, b->created_ts);
    mp_pack_cstr(pk, "depth");
    msgpack_pack_int(pk, b->depth);
    mp_pack_cstr(pk, "own_keys");
    msgpack_pack_uint64(pk, b->idx.count);
    mp_pack_cstr(pk, "writes");
    msgpack_pack_uint64(pk, b->nlog);
    mp_pack_cstr(pk, "retention");
    msgpack_pack_map(pk, 2);
    mp_pack_cstr(pk, "keep_last");
    msgpack_pack_uint64(pk, b->keep_last);
    mp_pack_cstr(pk, "keep_for_us");
    msgpack_pack_int64(pk, b->keep_for_us);
    return 0;
}

/* ---- Retention -------------------------------------------------------------------------- */

/* Is v the version some descendant reads through b at? A descendant reads b at the
 * smallest fork version on its read-through path down to b. */
static bool pinned(struct storage *s, struct branch *b, const struct version *v,
                   const struct version *newer)
{
    for (size_t i = 0; i < s->nbranches; i++) {
        uint64_t lim = UINT64_MAX;
        for (struct branch *c = s->branches[i]; c->parent && !c->flat; c = c->parent) {
            if (c->fork_ver < lim)
                lim = c->fork_ver;
            if (c->parent == b) {
                if (v->ver <= lim && (newer == NULL || newer->ver > lim))
                    return true;
                break;
            }
        }
    }
    return false;
}

/* Give `v` (linked from *link) a gap record for removed versions starting at (ver, ts):
 * the allocation grows by a struct gap. Returns the (possibly moved) version, or NULL if
 * out of memory — the caller then keeps the version it meant to remove. */
static struct version *set_gap(struct version **link, struct version *v, struct gap g)
{
    if (!(v->vflags & VF_GAP)) {
        struct version *nv = sm_realloc(v, version_alloc_size(v) + sizeof g);
        if (nv == NULL)
            return NULL;
        *link = nv;
        v = nv;
        v->vflags |= VF_GAP;
    }
    memcpy(v->data + version_vlen(v), &g, sizeof g);
    return v;
}

void retention_apply_entry(struct storage *s, struct branch *b, struct entry *e, int64_t now)
{
    if (b->keep_last == 0 && b->keep_for_us == 0)
        return;
    struct version **link = &e->head; /* points at `newer` */
    struct version *newer = e->head, *v = e->head ? e->head->older : NULL;
    uint64_t i = 1;
    while (v) {
        bool keep = pinned(s, b, v, newer);
        if (!keep && b->keep_last && i < b->keep_last)
            keep = true;
        /* keep-for: v was current until `newer` replaced it; keep it while that is
         * within the window. */
        if (!keep && b->keep_for_us && newer->ts > now - b->keep_for_us)
            keep = true;
        if (!keep) {
            /* The gap below `newer` now reaches down to v's own gap, if it had one. */
            struct gap g = (v->vflags & VF_GAP) ? version_gap(v) : (struct gap){v->ver, v->ts};
            struct version *n2 = set_gap(link, newer, g);
            if (n2 == NULL) {
                keep = true; /* out of memory: keep it rather than lose the gap */
            } else {
                newer = n2;
                newer->older = v->older;
                sm_free(v);
                e->flags |= ENTRY_PRUNED;
                v = newer->older;
            }
        }
        if (keep) {
            link = &newer->older;
            newer = v;
            v = v->older;
        }
        i++;
    }
}

static int branch_set_retention(struct exec *x)
{
    struct branch *b;
    uint64_t keep_last = 0;
    int64_t keep_for = 0;
    int rc;
    if ((rc = arg_branch(x, "name", &b)) || (rc = arg_u64_opt(x, "keep_last", &keep_last, NULL)) ||
        (rc = arg_i64_opt(x, "keep_for_us", &keep_for, NULL)))
        return rc;
    if (keep_for < 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "keep_for_us must not be negative");
    b->keep_last = keep_last;
    b->keep_for_us = keep_for;
    msgpack_pack_true(x->pk);
    return 0;
}

static int branch_prune(struct exec *x)
{
    struct branch *b;
    int rc = arg_branch(x, "name", &b);
    if (rc)
        return rc;
    struct btree_iter it;
    btree_seek(&b->idx, (const uint8_t *)"", 0, &it);
    struct entry *e;
    while ((e = btree_next(&it)) != NULL)
        retention_apply_entry(x->s, b, e, x->ts);
    msgpack_pack_true(x->pk);
    return 0;
}

const struct op_def branch_ops[] = {
    {"branch.create", OP_WRITE, branch_create},
    {"branch.fork", OP_WRITE, branch_fork},
    {"branch.fork_many", OP_WRITE, branch_fork_many},
    {"branch.delete", OP_WRITE, branch_delete},
    {"branch.list", 0, branch_list},
    {"branch.info", 0, branch_info},
    {"branch.set_retention", OP_WRITE, branch_set_retention},
    {"branch.prune", OP_WRITE, branch_prune},
    {NULL, 0, NULL},
};

/* ---- Spaces -------------------------------------------------------------------------- */

static int space_create(struct exec *x)
{
    size_t before = x->stage->n;
    int rc = exec_touch_space(x);
    if (rc)
        return rc;
    bool created = x->stage->n > before;
    if (created)
        pack_write_result(x, 1);
    else
        msgpack_pack_map(x->pk, 1);
    mp_pack_cstr(x->pk, "created");
    msgpack_pack_bool(x->pk, created);
    return 0;
}

static int space_list(struct exec *x)
{
    static const uint8_t start[2] = {0, TAG_SPACE}, end[2] = {0, TAG_SPACE + 1};
    struct view_iter vi;
    view_iter_init(&vi, x->b, &x->at, start, 2, end, 2);
    struct entry *e;
    const struct version *v;
    int r;
    /* "default" always exists; registered spaces follow in name order. */
    struct buf names;
    buf_init(&names);
    uint32_t n = 1;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &names, buf_pack_write);
    while ((r = view_iter_next(&vi, &e, &v, x->err)) == 1) {
        if (e->klen - 2 == 7 && memcmp(e->key + 2, "default", 7) == 0)
            continue;
        mp_pack_str(&pk, (const char *)e->key + 2, e->klen - 2u);
        n++;
    }
    if (r == 0) {
        msgpack_pack_array(x->pk, n);
        mp_pack_cstr(x->pk, "default");
        mp_pack_raw(x->pk, names.data, names.len);
    }
    buf_close(&names);
    return r;
}

/* Delete a space: tombstones every visible key of it (all primitives) in one write. */
static int space_delete(struct exec *x)
{
    if (x->slen == 7 && memcmp(x->space, "default", 7) == 0)
        return err_set(x->err, STRATA_INVALID_ARGUMENT, "the default space cannot be deleted");
    uint8_t start[66], end[66];
    start[0] = (uint8_t)x->slen;
    memcpy(start + 1, x->space, x->slen);
    memcpy(end, start, 1 + x->slen);
    end[1 + x->slen] = 0xff;
    struct view_iter vi;
    view_iter_init(&vi, x->b, &x->at, start, 1 + x->slen, end, 2 + x->slen);
    struct entry *e;
    const struct version *v;
    int r;
    uint64_t n = 0;
    while ((r = view_iter_next(&vi, &e, &v, x->err)) == 1) {
        if (stage_put(x->stage, x->b, e->key, e->klen, NULL, 0))
            return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory");
        n++;
    }
    if (r)
        return r;
    uint8_t k[66] = {0, TAG_SPACE};
    memcpy(k + 2, x->space, x->slen);
    const uint8_t *val;
    size_t len;
    if ((r = stage_read(x->stage, x->b, k, 2 + x->slen, &val, &len, x->err)))
        return r;
    if (val == NULL && n == 0)
        return err_set(x->err, STRATA_NOT_FOUND, "space '%s' not found", x->space);
    if (val && stage_put(x->stage, x->b, k, 2 + x->slen, NULL, 0))
        return err_set(x->err, STRATA_OUT_OF_MEMORY, "out of memory");
    pack_write_result(x, 1);
    mp_pack_cstr(x->pk, "deleted_keys");
    msgpack_pack_uint64(x->pk, n);
    return 0;
}

const struct op_def space_ops[] = {
    {"space.create", OP_WRITE | OP_BRANCH, space_create},
    {"space.list", OP_BRANCH, space_list},
    {"space.delete", OP_WRITE | OP_BRANCH, space_delete},
    {NULL, 0, NULL},
};
