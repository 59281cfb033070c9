/* The record of branch moves (migration.h): the phase transition table, the changes the
 * meta leader makes, and the one MessagePack form with a validating decoder. All
 * MessagePack goes through msgpack-c; this file only checks what it hands back. */
#include "migration.h"
#include "shmp.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#define MIG_FORMAT_VERSION 1

#define BAD(...) err_set(err, STRATA_INVALID_ARGUMENT, "moves record: " __VA_ARGS__)

static const char *const phase_names[] = {"", "copying", "catching_up", "fenced", "cutover",
                                          "aborting"};

const char *migration_phase_name(enum mig_phase p)
{
    return p >= MIG_COPYING && p <= MIG_ABORTING ? phase_names[p] : "unknown";
}

const char *migration_outcome_name(enum mig_outcome o)
{
    return o == MIG_DONE ? "done" : o == MIG_ABORTED ? "aborted" : "unknown";
}

/* Allowed steps: allowed[from][to]. */
static const bool allowed[MIG_ABORTING + 1][MIG_ABORTING + 1] = {
    [MIG_COPYING] = {[MIG_CATCHING_UP] = true, [MIG_ABORTING] = true},
    [MIG_CATCHING_UP] = {[MIG_FENCED] = true, [MIG_ABORTING] = true},
    [MIG_FENCED] = {[MIG_CUTOVER] = true, [MIG_ABORTING] = true},
};

void migration_init(struct migration *m)
{
    memset(m, 0, sizeof *m);
}

static size_t search(const struct migration *m, const char *name, size_t len, bool *found)
{
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (shmp_name_cmp(m->moves[mid].name, strlen(m->moves[mid].name), name, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < m->n && shmp_name_cmp(m->moves[lo].name, strlen(m->moves[lo].name), name, len) == 0;
    return lo;
}

const struct mig_move *migration_find(const struct migration *m, const char *name, size_t len)
{
    bool found;
    size_t i = search(m, name, len, &found);
    return found ? &m->moves[i] : NULL;
}

const struct mig_recent *migration_recent(const struct migration *m, uint64_t id)
{
    for (size_t i = 0; i < m->nrecent; i++)
        if (m->recent[i].id == id)
            return &m->recent[i];
    return NULL;
}

static void copy_message(char *dst, const char *msg)
{
    snprintf(dst, MIG_MESSAGE_MAX + 1, "%s", msg ? msg : "");
}

int migration_start(struct migration *m, const struct placement *p, const char *name,
                    size_t len, uint32_t to, uint32_t chunk, uint64_t id, struct err *err)
{
    if (len == 0 || len > PL_MAX_BRANCH_NAME || memchr(name, '\0', len))
        return err_set(err, STRATA_INVALID_ARGUMENT, "branch name must be 1..%d bytes",
                       PL_MAX_BRANCH_NAME);
    if (len == sizeof PL_DEFAULT_BRANCH - 1 && memcmp(name, PL_DEFAULT_BRANCH, len) == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "the default branch cannot move (it is on shard 1 by rule)");
    const struct pl_branch *b = placement_branch(p, name, len);
    if (b == NULL)
        return err_set(err, STRATA_BRANCH_NOT_FOUND, "branch '%.*s' not found", (int)len, name);
    if (placement_shard(p, to) == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "shard %u does not exist", to);
    if (b->shard == to)
        return err_set(err, STRATA_INVALID_ARGUMENT, "branch '%.*s' is on shard %u already",
                       (int)len, name, to);
    if (chunk == 0)
        chunk = MIG_CHUNK_DEFAULT;
    if (chunk < MIG_CHUNK_MIN || chunk > MIG_CHUNK_MAX)
        return err_set(err, STRATA_INVALID_ARGUMENT, "chunk_bytes must be %u..%u", MIG_CHUNK_MIN,
                       MIG_CHUNK_MAX);
    bool found;
    size_t i = search(m, name, len, &found);
    if (found)
        return err_set(err, STRATA_ALREADY_EXISTS,
                       "branch '%.*s' is moving already (move %llu, %s)", (int)len, name,
                       (unsigned long long)m->moves[i].id,
                       migration_phase_name(m->moves[i].phase));
    if (m->n == MIG_MAX_MOVES)
        return err_set(err, STRATA_UNAVAILABLE, "%d moves are in flight: try again later",
                       MIG_MAX_MOVES);
    if (id == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "a move id must be positive");
    memmove(&m->moves[i + 1], &m->moves[i], (m->n - i) * sizeof m->moves[0]);
    struct mig_move *mv = &m->moves[i];
    memset(mv, 0, sizeof *mv);
    memcpy(mv->name, name, len);
    mv->from = b->shard;
    mv->to = to;
    mv->id = id;
    mv->phase = MIG_COPYING;
    mv->chunk = chunk;
    m->n++;
    return 0;
}

static int find_move(struct migration *m, const char *name, size_t len, uint64_t id, size_t *i,
                     struct err *err)
{
    bool found;
    *i = search(m, name, len, &found);
    if (!found || m->moves[*i].id != id)
        return err_set(err, STRATA_NOT_FOUND, "move %llu of branch '%.*s' is not in flight",
                       (unsigned long long)id, (int)len, name);
    return 0;
}

int migration_advance(struct migration *m, const char *name, size_t len, uint64_t id,
                      enum mig_phase next, const char *message, struct err *err)
{
    size_t i;
    int rc = find_move(m, name, len, id, &i, err);
    if (rc)
        return rc;
    struct mig_move *mv = &m->moves[i];
    if (mv->phase == next)
        return 0;
    if (next < MIG_COPYING || next > MIG_ABORTING || !allowed[mv->phase][next])
        return err_set(err, STRATA_CONFLICT, "move %llu cannot go from %s to %s",
                       (unsigned long long)id, migration_phase_name(mv->phase),
                       migration_phase_name(next));
    mv->phase = next;
    if (next == MIG_ABORTING)
        copy_message(mv->message, message);
    return 0;
}

int migration_finish(struct migration *m, const char *name, size_t len, uint64_t id,
                     enum mig_outcome outcome, const char *message, struct err *err)
{
    size_t i;
    int rc = find_move(m, name, len, id, &i, err);
    if (rc)
        return rc;
    struct mig_move mv = m->moves[i];
    if ((outcome == MIG_DONE && mv.phase != MIG_CUTOVER) ||
        (outcome == MIG_ABORTED && mv.phase != MIG_ABORTING) ||
        (outcome != MIG_DONE && outcome != MIG_ABORTED))
        return err_set(err, STRATA_CONFLICT, "move %llu cannot finish %s from %s",
                       (unsigned long long)id, migration_outcome_name(outcome),
                       migration_phase_name(mv.phase));
    memmove(&m->moves[i], &m->moves[i + 1], (m->n - i - 1) * sizeof m->moves[0]);
    m->n--;
    size_t keep = m->nrecent < MIG_RECENT ? m->nrecent : MIG_RECENT - 1;
    memmove(&m->recent[1], &m->recent[0], keep * sizeof m->recent[0]);
    m->nrecent = keep + 1;
    struct mig_recent *r = &m->recent[0];
    memset(r, 0, sizeof *r);
    memcpy(r->name, mv.name, sizeof r->name);
    r->from = mv.from;
    r->to = mv.to;
    r->id = mv.id;
    r->outcome = outcome;
    copy_message(r->message, message ? message : mv.message);
    return 0;
}

/* ---- MessagePack ---------------------------------------------------------------------- */

static void pack_str(msgpack_packer *pk, const char *s)
{
    shmp_pack_str(pk, s, strlen(s));
}

int migration_encode(const struct migration *m, struct buf *out)
{
    struct shmp_sink s = {out, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &s, shmp_sink_write);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "v");
    msgpack_pack_uint32(&pk, MIG_FORMAT_VERSION);
    pack_str(&pk, "moves");
    msgpack_pack_array(&pk, (uint32_t)m->n);
    for (size_t i = 0; i < m->n; i++) {
        const struct mig_move *mv = &m->moves[i];
        msgpack_pack_array(&pk, 7);
        pack_str(&pk, mv->name);
        msgpack_pack_uint32(&pk, mv->from);
        msgpack_pack_uint32(&pk, mv->to);
        msgpack_pack_uint64(&pk, mv->id);
        msgpack_pack_uint32(&pk, (uint32_t)mv->phase);
        msgpack_pack_uint32(&pk, mv->chunk);
        pack_str(&pk, mv->message);
    }
    pack_str(&pk, "recent");
    msgpack_pack_array(&pk, (uint32_t)m->nrecent);
    for (size_t i = 0; i < m->nrecent; i++) {
        const struct mig_recent *r = &m->recent[i];
        msgpack_pack_array(&pk, 6);
        pack_str(&pk, r->name);
        msgpack_pack_uint32(&pk, r->from);
        msgpack_pack_uint32(&pk, r->to);
        msgpack_pack_uint64(&pk, r->id);
        msgpack_pack_uint32(&pk, (uint32_t)r->outcome);
        pack_str(&pk, r->message);
    }
    return s.oom ? STRATA_OUT_OF_MEMORY : 0;
}

static bool is_u32(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= UINT32_MAX;
}

static int get_name(const msgpack_object *o, char *out, const char *what, size_t i,
                    struct err *err)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
        o->via.str.size > PL_MAX_BRANCH_NAME || memchr(o->via.str.ptr, '\0', o->via.str.size))
        return BAD("%s[%zu]: the branch name must be a string of 1..%d bytes without NUL", what,
                   i, PL_MAX_BRANCH_NAME);
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = '\0';
    return 0;
}

static int get_message(const msgpack_object *o, char *out, const char *what, size_t i,
                       struct err *err)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > MIG_MESSAGE_MAX ||
        memchr(o->via.str.ptr, '\0', o->via.str.size))
        return BAD("%s[%zu]: the message must be a string of at most %d bytes", what, i,
                   MIG_MESSAGE_MAX);
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = '\0';
    return 0;
}

static int get_common(const msgpack_object *f, char *name, uint32_t *from, uint32_t *to,
                      uint64_t *id, const char *what, size_t i, struct err *err)
{
    int rc = get_name(&f[0], name, what, i, err);
    if (rc)
        return rc;
    if (!is_u32(&f[1]) || f[1].via.u64 == 0 || !is_u32(&f[2]) || f[2].via.u64 == 0 ||
        f[1].via.u64 > PL_MAX_SHARDS || f[2].via.u64 > PL_MAX_SHARDS || f[1].via.u64 == f[2].via.u64)
        return BAD("%s[%zu]: 'from' and 'to' must be two different shard ids", what, i);
    if (f[3].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[3].via.u64 == 0)
        return BAD("%s[%zu]: the id must be a positive integer", what, i);
    *from = (uint32_t)f[1].via.u64;
    *to = (uint32_t)f[2].via.u64;
    *id = f[3].via.u64;
    return 0;
}

static int decode_root(struct migration *m, const msgpack_object *root, struct err *err)
{
    if (root->type != MSGPACK_OBJECT_MAP || root->via.map.size != 3)
        return BAD("not a map of {v, moves, recent}");
    const msgpack_object *v = NULL, *moves = NULL, *recent = NULL;
    for (uint32_t i = 0; i < 3; i++) {
        const msgpack_object *k = &root->via.map.ptr[i].key, *val = &root->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            return BAD("a key is not a string");
        if (k->via.str.size == 1 && memcmp(k->via.str.ptr, "v", 1) == 0 && !v)
            v = val;
        else if (k->via.str.size == 5 && memcmp(k->via.str.ptr, "moves", 5) == 0 && !moves)
            moves = val;
        else if (k->via.str.size == 6 && memcmp(k->via.str.ptr, "recent", 6) == 0 && !recent)
            recent = val;
        else
            return BAD("unknown or repeated key '%.*s'", (int)(k->via.str.size > 32 ? 32 : k->via.str.size),
                       k->via.str.ptr);
    }
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 != MIG_FORMAT_VERSION)
        return BAD("format version must be %d", MIG_FORMAT_VERSION);
    if (moves->type != MSGPACK_OBJECT_ARRAY || moves->via.array.size > MIG_MAX_MOVES)
        return BAD("'moves' must be an array of at most %d moves", MIG_MAX_MOVES);
    if (recent->type != MSGPACK_OBJECT_ARRAY || recent->via.array.size > MIG_RECENT)
        return BAD("'recent' must be an array of at most %d moves", MIG_RECENT);
    int rc;
    for (uint32_t i = 0; i < moves->via.array.size; i++) {
        const msgpack_object *e = &moves->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 7)
            return BAD("moves[%u] is not [name, from, to, id, phase, chunk, message]", i);
        const msgpack_object *f = e->via.array.ptr;
        struct mig_move *mv = &m->moves[i];
        if ((rc = get_common(f, mv->name, &mv->from, &mv->to, &mv->id, "moves", i, err)))
            return rc;
        if (!is_u32(&f[4]) || f[4].via.u64 < MIG_COPYING || f[4].via.u64 > MIG_ABORTING)
            return BAD("moves[%u]: unknown phase", i);
        mv->phase = (enum mig_phase)f[4].via.u64;
        if (!is_u32(&f[5]) || f[5].via.u64 < MIG_CHUNK_MIN || f[5].via.u64 > MIG_CHUNK_MAX)
            return BAD("moves[%u]: chunk must be %u..%u", i, MIG_CHUNK_MIN, MIG_CHUNK_MAX);
        mv->chunk = (uint32_t)f[5].via.u64;
        if ((rc = get_message(&f[6], mv->message, "moves", i, err)))
            return rc;
        if (i > 0 && shmp_name_cmp(m->moves[i - 1].name, strlen(m->moves[i - 1].name), mv->name,
                              strlen(mv->name)) >= 0)
            return BAD("moves[%u]: names must be sorted and unique", i);
        m->n = i + 1;
    }
    for (uint32_t i = 0; i < recent->via.array.size; i++) {
        const msgpack_object *e = &recent->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 6)
            return BAD("recent[%u] is not [name, from, to, id, outcome, message]", i);
        const msgpack_object *f = e->via.array.ptr;
        struct mig_recent *r = &m->recent[i];
        if ((rc = get_common(f, r->name, &r->from, &r->to, &r->id, "recent", i, err)))
            return rc;
        if (!is_u32(&f[4]) || (f[4].via.u64 != MIG_DONE && f[4].via.u64 != MIG_ABORTED))
            return BAD("recent[%u]: unknown outcome", i);
        r->outcome = (enum mig_outcome)f[4].via.u64;
        if ((rc = get_message(&f[5], r->message, "recent", i, err)))
            return rc;
        m->nrecent = i + 1;
    }
    return 0;
}

int migration_decode(struct migration *m, const uint8_t *data, size_t len, struct err *err)
{
    migration_init(m);
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 2048))
        return err_set(err, STRATA_OUT_OF_MEMORY, "moves record: out of memory");
    msgpack_object root;
    int rc = shmp_unpack_one(data, len, &z, &root, STRATA_INVALID_ARGUMENT, "moves record", err);
    if (rc == 0)
        rc = decode_root(m, &root, err);
    msgpack_zone_destroy(&z);
    if (rc)
        migration_init(m);
    return rc;
}
