/* The placement table (placement.h): sorted node, shard and branch arrays, their one
 * MessagePack form, and the changes the meta group applies to them. All MessagePack goes
 * through msgpack-c; this file only checks what msgpack-c hands back. */
#include "placement.h"
#include "shmp.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#define PL_FORMAT_VERSION 1

/* ---- Order and search ------------------------------------------------------------------
 * Branch names hold no NUL, so the stored C strings compare like (bytes, length) pairs:
 * memcmp order, the shorter name first when one is a prefix of the other. */


/* Index of the first branch not below (name, len); *found when it is that name. */
static size_t branch_search(const struct placement *p, const char *name, size_t len, bool *found)
{
    size_t lo = 0, hi = p->nbranches;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = p->branches[mid].name;
        if (shmp_name_cmp(m, strlen(m), name, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    if (lo < p->nbranches) {
        const char *m = p->branches[lo].name;
        *found = shmp_name_cmp(m, strlen(m), name, len) == 0;
    }
    return lo;
}

/* Index of the first node whose id is not below `id`. */
static size_t node_search(const struct placement *p, uint64_t id)
{
    size_t lo = 0, hi = p->nnodes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->nodes[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t shard_search(const struct placement *p, uint32_t id)
{
    size_t lo = 0, hi = p->nshards;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->shards[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct pl_shard *shard_find(struct placement *p, uint32_t id)
{
    size_t i = shard_search(p, id);
    return i < p->nshards && p->shards[i].id == id ? &p->shards[i] : NULL;
}

static bool is_default(const char *name, size_t len)
{
    return len == sizeof PL_DEFAULT_BRANCH - 1 && memcmp(name, PL_DEFAULT_BRANCH, len) == 0;
}

static int check_name(const char *name, size_t len, struct err *err)
{
    if (len == 0 || len > PL_MAX_BRANCH_NAME)
        return err_set(err, STRATA_INVALID_ARGUMENT, "branch name must be 1..%d bytes (got %zu)",
                       PL_MAX_BRANCH_NAME, len);
    if (name == NULL || memchr(name, '\0', len) != NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "branch name must not contain a NUL byte");
    return 0;
}

/* 0, or INVALID_ARGUMENT for an address that is empty or longer than PL_ADDRESS_MAX. */
static int check_address(const char *address, const char *what, struct err *err)
{
    size_t n = address == NULL ? 0 : strnlen(address, PL_ADDRESS_MAX + 1);
    if (n == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "%s: the address is empty", what);
    if (n > PL_ADDRESS_MAX)
        return err_set(err, STRATA_INVALID_ARGUMENT, "%s: the address is longer than %d bytes",
                       what, PL_ADDRESS_MAX);
    return 0;
}

/* ---- Lifecycle ------------------------------------------------------------------------- */

void placement_init(struct placement *p)
{
    memset(p, 0, sizeof *p);
}

void placement_free(struct placement *p)
{
    for (size_t i = 0; i < p->nbranches; i++)
        sm_free(p->branches[i].name);
    sm_free(p->branches);
    placement_init(p);
}

int placement_copy(struct placement *dst, const struct placement *src)
{
    if (dst == src)
        return 0;
    /* Everything is allocated before dst is touched, so a failure leaves dst as it was. */
    struct pl_branch *b = NULL;
    size_t i = 0;
    if (src->nbranches > 0) {
        b = sm_calloc(src->nbranches, sizeof *b);
        if (b == NULL)
            return STRATA_OUT_OF_MEMORY;
        for (; i < src->nbranches; i++) {
            b[i] = src->branches[i];
            b[i].name = sm_strdup(src->branches[i].name);
            if (b[i].name == NULL)
                goto err_free_names;
        }
    }
    placement_free(dst);
    *dst = *src;
    dst->branches = b;
    dst->cap = src->nbranches;
    return 0;

err_free_names:
    while (i-- > 0)
        sm_free(b[i].name);
    sm_free(b);
    return STRATA_OUT_OF_MEMORY;
}

static int cmp_node_id(const void *a, const void *b)
{
    uint64_t x = ((const struct pl_node *)a)->id, y = ((const struct pl_node *)b)->id;
    return x < y ? -1 : x > y;
}

int placement_initial(struct placement *p, const struct pl_node *members, size_t n,
                      uint32_t nshards, uint32_t rf, struct err *err)
{
    if (n == 0 || n > PL_MAX_NODES || members == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "a cluster starts with 1..%d members (got %zu)", PL_MAX_NODES, n);
    if (nshards == 0 || nshards > PL_MAX_SHARDS)
        return err_set(err, STRATA_INVALID_ARGUMENT, "shard count must be 1..%d (got %" PRIu32 ")",
                       PL_MAX_SHARDS, nshards);
    if (rf == 0 || rf > PL_MAX_REPLICAS)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "replication factor must be 1..%d (got %" PRIu32 ")", PL_MAX_REPLICAS, rf);
    for (size_t i = 0; i < n; i++) {
        char what[48];
        snprintf(what, sizeof what, "member %zu", i);
        if (members[i].id == 0)
            return err_set(err, STRATA_INVALID_ARGUMENT, "%s: node id 0 is reserved", what);
        int rc = check_address(members[i].address, what, err);
        if (rc)
            return rc;
        for (size_t j = 0; j < i; j++) {
            if (members[j].id == members[i].id)
                return err_set(err, STRATA_INVALID_ARGUMENT,
                               "members %zu and %zu have the same id %" PRIu64, j, i,
                               members[i].id);
            /* An address names one node; add_node keeps that true later on. */
            if (strcmp(members[j].address, members[i].address) == 0)
                return err_set(err, STRATA_INVALID_ARGUMENT,
                               "members %zu and %zu have the same address %s", j, i,
                               members[i].address);
        }
    }

    struct pl_branch *b = sm_calloc(1, sizeof *b);
    char *name = sm_strdup(PL_DEFAULT_BRANCH);
    if (b == NULL || name == NULL) {
        sm_free(b);
        sm_free(name);
        return err_set(err, STRATA_OUT_OF_MEMORY, "placement: out of memory");
    }

    placement_free(p);
    p->rf = rf;
    p->nnodes = n;
    for (size_t i = 0; i < n; i++) {
        p->nodes[i].id = members[i].id;
        strcpy(p->nodes[i].address, members[i].address); /* length checked above */
        p->nodes[i].state = PL_NODE_ACTIVE;
    }
    qsort(p->nodes, n, sizeof p->nodes[0], cmp_node_id);
    /* Replicas follow the members' given order, so preferred leaders rotate over them. */
    uint32_t nrep = rf < n ? rf : (uint32_t)n;
    p->nshards = nshards;
    for (uint32_t s = 1; s <= nshards; s++) {
        struct pl_shard *sh = &p->shards[s - 1];
        sh->id = s;
        sh->epoch = 1;
        sh->nreplicas = nrep;
        for (uint32_t i = 0; i < nrep; i++)
            sh->replicas[i] = members[(s - 1 + i) % n].id;
    }
    b[0].name = name;
    b[0].shard = 1;
    b[0].epoch = 1;
    p->branches = b;
    p->nbranches = p->cap = 1;
    return 0;
}

/* ---- Encoding -------------------------------------------------------------------------- */

int placement_encode(const struct placement *p, struct buf *out)
{
    size_t start = out->len;
    struct shmp_sink k = {out, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &k, shmp_sink_write);

    msgpack_pack_map(&pk, 5);
    shmp_pack_str(&pk, "v", 1);
    msgpack_pack_uint32(&pk, PL_FORMAT_VERSION);
    shmp_pack_str(&pk, "rf", 2);
    msgpack_pack_uint32(&pk, p->rf);
    shmp_pack_str(&pk, "nodes", 5);
    msgpack_pack_array(&pk, p->nnodes);
    for (size_t i = 0; i < p->nnodes; i++) {
        const struct pl_node *nd = &p->nodes[i];
        msgpack_pack_array(&pk, 3);
        msgpack_pack_uint64(&pk, nd->id);
        shmp_pack_str(&pk, nd->address, strnlen(nd->address, PL_ADDRESS_MAX));
        msgpack_pack_uint32(&pk, (uint32_t)nd->state);
    }
    shmp_pack_str(&pk, "shards", 6);
    msgpack_pack_array(&pk, p->nshards);
    for (size_t i = 0; i < p->nshards; i++) {
        const struct pl_shard *s = &p->shards[i];
        msgpack_pack_array(&pk, 3);
        msgpack_pack_uint32(&pk, s->id);
        msgpack_pack_uint64(&pk, s->epoch);
        msgpack_pack_array(&pk, s->nreplicas);
        for (uint32_t r = 0; r < s->nreplicas && r < PL_MAX_REPLICAS; r++)
            msgpack_pack_uint64(&pk, s->replicas[r]);
    }
    shmp_pack_str(&pk, "branches", 8);
    msgpack_pack_array(&pk, p->nbranches);
    for (size_t i = 0; i < p->nbranches; i++) {
        const struct pl_branch *b = &p->branches[i];
        msgpack_pack_array(&pk, 3);
        shmp_pack_str(&pk, b->name, strlen(b->name));
        msgpack_pack_uint32(&pk, b->shard);
        msgpack_pack_uint64(&pk, b->epoch);
    }
    if (k.oom) {
        out->len = start;
        return STRATA_OUT_OF_MEMORY;
    }
    return 0;
}

/* ---- Decoding --------------------------------------------------------------------------
 * The bytes come from the meta group's log or snapshot and from other nodes, so nothing
 * is trusted: msgpack-c parses, then every type, range, order and reference is checked
 * here, and each failure names the field. */

static const char *type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return "unsigned integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "negative integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_EXT:
        return "extension";
    }
    return "unknown type";
}

#define BAD(...) err_set(err, STRATA_PROTOCOL_ERROR, "placement: " __VA_ARGS__)

static int get_uint(const msgpack_object *o, uint64_t min, uint64_t max, const char *what,
                    uint64_t *out, struct err *err)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return BAD("%s must be an unsigned integer (got %s)", what, type_name(o));
    if (o->via.u64 < min || o->via.u64 > max)
        return BAD("%s %" PRIu64 " is out of range (%" PRIu64 "..%" PRIu64 ")", what, o->via.u64,
                   min, max);
    *out = o->via.u64;
    return 0;
}

static int get_str(const msgpack_object *o, size_t max, const char *what, const char **s, size_t *n,
                   struct err *err)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return BAD("%s must be a string (got %s)", what, type_name(o));
    if (o->via.str.size == 0 || o->via.str.size > max)
        return BAD("%s must be 1..%zu bytes (got %" PRIu32 ")", what, max, o->via.str.size);
    if (memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL)
        return BAD("%s must not contain a NUL byte", what);
    *s = o->via.str.ptr;
    *n = o->via.str.size;
    return 0;
}

/* An array of at most `max` elements; `exact` also requires that many. */
static int get_array(const msgpack_object *o, size_t max, bool exact, const char *what,
                     const msgpack_object_array **a, struct err *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return BAD("%s must be an array (got %s)", what, type_name(o));
    if (exact && o->via.array.size != max)
        return BAD("%s must have %zu elements (got %" PRIu32 ")", what, max, o->via.array.size);
    if (o->via.array.size > max)
        return BAD("%s has %" PRIu32 " elements (at most %zu)", what, o->via.array.size, max);
    *a = &o->via.array;
    return 0;
}

static int decode_nodes(struct placement *p, const msgpack_object *o, struct err *err)
{
    const msgpack_object_array *a;
    int rc = get_array(o, PL_MAX_NODES, false, "nodes", &a, err);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < a->size; i++) {
        char what[64];
        const msgpack_object_array *f;
        snprintf(what, sizeof what, "nodes[%" PRIu32 "]", i);
        if ((rc = get_array(&a->ptr[i], 3, true, what, &f, err)))
            return rc;
        struct pl_node *nd = &p->nodes[i];
        uint64_t state;
        const char *addr;
        size_t alen;
        snprintf(what, sizeof what, "nodes[%" PRIu32 "].id", i);
        if ((rc = get_uint(&f->ptr[0], 1, UINT64_MAX, what, &nd->id, err)))
            return rc;
        snprintf(what, sizeof what, "nodes[%" PRIu32 "].address", i);
        if ((rc = get_str(&f->ptr[1], PL_ADDRESS_MAX, what, &addr, &alen, err)))
            return rc;
        memcpy(nd->address, addr, alen);
        nd->address[alen] = '\0';
        snprintf(what, sizeof what, "nodes[%" PRIu32 "].state", i);
        if ((rc = get_uint(&f->ptr[2], PL_NODE_ACTIVE, PL_NODE_DRAINING, what, &state, err)))
            return rc;
        nd->state = (enum pl_node_state)state;
        if (i > 0 && nd->id <= p->nodes[i - 1].id)
            return BAD("nodes[%" PRIu32 "].id %" PRIu64 " %s", i, nd->id,
                       nd->id == p->nodes[i - 1].id ? "is a duplicate"
                                                    : "is out of order (ids must ascend)");
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(p->nodes[j].address, nd->address) == 0)
                return BAD("nodes[%" PRIu32 "].address %s is also nodes[%" PRIu32 "]'s", i,
                           nd->address, j);
        p->nnodes = i + 1;
    }
    return 0;
}

/* Needs the nodes decoded: every replica must name one. */
static int decode_shards(struct placement *p, const msgpack_object *o, struct err *err)
{
    const msgpack_object_array *a;
    int rc = get_array(o, PL_MAX_SHARDS, false, "shards", &a, err);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < a->size; i++) {
        char what[64];
        const msgpack_object_array *f, *r;
        snprintf(what, sizeof what, "shards[%" PRIu32 "]", i);
        if ((rc = get_array(&a->ptr[i], 3, true, what, &f, err)))
            return rc;
        struct pl_shard *s = &p->shards[i];
        uint64_t id;
        snprintf(what, sizeof what, "shards[%" PRIu32 "].id", i);
        if ((rc = get_uint(&f->ptr[0], 1, PL_MAX_SHARDS, what, &id, err)))
            return rc;
        s->id = (uint32_t)id;
        if (i > 0 && s->id <= p->shards[i - 1].id)
            return BAD("shards[%" PRIu32 "].id %" PRIu32 " %s", i, s->id,
                       s->id == p->shards[i - 1].id ? "is a duplicate"
                                                    : "is out of order (ids must ascend)");
        snprintf(what, sizeof what, "shards[%" PRIu32 "].epoch", i);
        if ((rc = get_uint(&f->ptr[1], 1, UINT64_MAX, what, &s->epoch, err)))
            return rc;
        snprintf(what, sizeof what, "shards[%" PRIu32 "].replicas", i);
        if ((rc = get_array(&f->ptr[2], PL_MAX_REPLICAS, false, what, &r, err)))
            return rc;
        if (r->size == 0)
            return BAD("shard %" PRIu32 " has no replicas", s->id);
        for (uint32_t k = 0; k < r->size; k++) {
            snprintf(what, sizeof what, "shards[%" PRIu32 "].replicas[%" PRIu32 "]", i, k);
            if ((rc = get_uint(&r->ptr[k], 1, UINT64_MAX, what, &s->replicas[k], err)))
                return rc;
            if (placement_node(p, s->replicas[k]) == NULL)
                return BAD("%s: node %" PRIu64 " is not in nodes", what, s->replicas[k]);
            for (uint32_t j = 0; j < k; j++)
                if (s->replicas[j] == s->replicas[k])
                    return BAD("%s: node %" PRIu64 " is listed twice", what, s->replicas[k]);
        }
        s->nreplicas = r->size;
        p->nshards = i + 1;
    }
    return 0;
}

/* Needs the shards decoded: every branch must name one. */
static int decode_branches(struct placement *p, const msgpack_object *o, struct err *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return BAD("branches must be an array (got %s)", type_name(o));
    const msgpack_object_array *a = &o->via.array;
    if (a->size > 0) {
        /* msgpack-c has already built a->size objects, so the count is real. */
        p->branches = sm_calloc(a->size, sizeof *p->branches);
        if (p->branches == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY,
                           "placement: out of memory for %" PRIu32 " branches", a->size);
        p->cap = a->size;
    }
    const char *prev = NULL;
    size_t prevlen = 0;
    for (uint32_t i = 0; i < a->size; i++) {
        char what[64];
        const msgpack_object_array *f;
        const char *name;
        size_t len;
        uint64_t shard, epoch;
        int rc;
        snprintf(what, sizeof what, "branches[%" PRIu32 "]", i);
        if ((rc = get_array(&a->ptr[i], 3, true, what, &f, err)))
            return rc;
        snprintf(what, sizeof what, "branches[%" PRIu32 "].name", i);
        if ((rc = get_str(&f->ptr[0], PL_MAX_BRANCH_NAME, what, &name, &len, err)))
            return rc;
        if (prev != NULL && shmp_name_cmp(prev, prevlen, name, len) >= 0)
            return BAD("branches[%" PRIu32 "].name '%.*s' %s", i, (int)len, name,
                       shmp_name_cmp(prev, prevlen, name, len) == 0
                           ? "is a duplicate"
                           : "is out of order (names must ascend)");
        snprintf(what, sizeof what, "branches[%" PRIu32 "].shard", i);
        if ((rc = get_uint(&f->ptr[1], 1, UINT32_MAX, what, &shard, err)))
            return rc;
        if (placement_shard(p, (uint32_t)shard) == NULL)
            return BAD("branches[%" PRIu32 "] ('%.*s'): shard %" PRIu64 " is not in shards", i,
                       (int)len, name, shard);
        if (is_default(name, len) && shard != 1)
            return BAD("branch '" PL_DEFAULT_BRANCH "' is on shard %" PRIu64
                       " (it is always on shard 1)",
                       shard);
        snprintf(what, sizeof what, "branches[%" PRIu32 "].epoch", i);
        if ((rc = get_uint(&f->ptr[2], 1, UINT64_MAX, what, &epoch, err)))
            return rc;
        p->branches[i].name = sm_strndup(name, len);
        if (p->branches[i].name == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "placement: out of memory");
        p->branches[i].shard = (uint32_t)shard;
        p->branches[i].epoch = epoch;
        p->nbranches = i + 1;
        prev = name;
        prevlen = len;
    }
    if (placement_branch(p, PL_DEFAULT_BRANCH, sizeof PL_DEFAULT_BRANCH - 1) == NULL)
        return BAD("branch '" PL_DEFAULT_BRANCH "' is missing");
    return 0;
}

enum { K_V, K_RF, K_NODES, K_SHARDS, K_BRANCHES, K_COUNT };
static const char *const keys[K_COUNT] = {"v", "rf", "nodes", "shards", "branches"};

static int decode_root(struct placement *p, const msgpack_object *root, struct err *err)
{
    if (root->type != MSGPACK_OBJECT_MAP)
        return BAD("the table must be a map (got %s)", type_name(root));
    const msgpack_object *val[K_COUNT] = {0};
    const msgpack_object_map *m = &root->via.map;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            return BAD("map key %" PRIu32 " must be a string (got %s)", i, type_name(k));
        int which = -1;
        for (int j = 0; j < K_COUNT; j++)
            if (k->via.str.size == strlen(keys[j]) &&
                memcmp(k->via.str.ptr, keys[j], k->via.str.size) == 0)
                which = j;
        /* An unknown key is refused rather than skipped: a re-encode would drop it, and a
         * new field comes with a new "v". */
        if (which < 0)
            return BAD("unknown key '%.*s'", (int)(k->via.str.size > 64 ? 64 : k->via.str.size),
                       k->via.str.ptr);
        if (val[which] != NULL)
            return BAD("key '%s' appears twice", keys[which]);
        val[which] = &m->ptr[i].val;
    }
    for (int j = 0; j < K_COUNT; j++)
        if (val[j] == NULL)
            return BAD("key '%s' is missing", keys[j]);

    uint64_t v, rf;
    int rc;
    if ((rc = get_uint(val[K_V], PL_FORMAT_VERSION, PL_FORMAT_VERSION, "v", &v, err)))
        return rc;
    if ((rc = get_uint(val[K_RF], 1, PL_MAX_REPLICAS, "rf", &rf, err)))
        return rc;
    p->rf = (uint32_t)rf;
    if ((rc = decode_nodes(p, val[K_NODES], err)))
        return rc;
    if ((rc = decode_shards(p, val[K_SHARDS], err)))
        return rc;
    return decode_branches(p, val[K_BRANCHES], err);
}

int placement_decode(struct placement *p, const uint8_t *data, size_t len, struct err *err)
{
    placement_free(p);
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 4096))
        return err_set(err, STRATA_OUT_OF_MEMORY, "placement: out of memory");
    msgpack_object root;
    int rc = shmp_unpack_one(data, len, &z, &root, STRATA_PROTOCOL_ERROR, "placement", err);
    if (rc == 0)
        rc = decode_root(p, &root, err);
    msgpack_zone_destroy(&z);
    if (rc)
        placement_free(p);
    return rc;
}

/* ---- Lookups --------------------------------------------------------------------------- */

const struct pl_node *placement_node(const struct placement *p, uint64_t id)
{
    size_t i = node_search(p, id);
    return i < p->nnodes && p->nodes[i].id == id ? &p->nodes[i] : NULL;
}

const struct pl_shard *placement_shard(const struct placement *p, uint32_t id)
{
    size_t i = shard_search(p, id);
    return i < p->nshards && p->shards[i].id == id ? &p->shards[i] : NULL;
}

const struct pl_branch *placement_branch(const struct placement *p, const char *name, size_t len)
{
    if (name == NULL || len == 0 || len > PL_MAX_BRANCH_NAME)
        return NULL;
    bool found;
    size_t i = branch_search(p, name, len, &found);
    return found ? &p->branches[i] : NULL;
}

bool placement_shard_has(const struct pl_shard *s, uint64_t node_id)
{
    for (uint32_t i = 0; i < s->nreplicas && i < PL_MAX_REPLICAS; i++)
        if (s->replicas[i] == node_id)
            return true;
    return false;
}

void placement_branch_counts(const struct placement *p, size_t *counts)
{
    /* Shard ids are 1..PL_MAX_SHARDS: a direct index beats a search per branch. */
    int at[PL_MAX_SHARDS + 1];
    for (size_t i = 0; i <= PL_MAX_SHARDS; i++)
        at[i] = -1;
    for (size_t i = 0; i < p->nshards; i++) {
        counts[i] = 0;
        if (p->shards[i].id <= PL_MAX_SHARDS)
            at[p->shards[i].id] = (int)i;
    }
    for (size_t i = 0; i < p->nbranches; i++) {
        uint32_t s = p->branches[i].shard;
        if (s <= PL_MAX_SHARDS && at[s] >= 0)
            counts[at[s]]++;
    }
}

uint32_t placement_least_loaded(const struct placement *p)
{
    if (p->nshards == 0)
        return 0;
    size_t counts[PL_MAX_SHARDS];
    placement_branch_counts(p, counts);
    /* Shards are sorted by id, so keeping the first minimum sends ties to the lowest id. */
    size_t best = 0;
    for (size_t i = 1; i < p->nshards; i++)
        if (counts[i] < counts[best])
            best = i;
    return p->shards[best].id;
}

/* ---- Changes --------------------------------------------------------------------------- */

int placement_assign(struct placement *p, const char *name, size_t len, uint32_t shard,
                     struct err *err)
{
    int rc = check_name(name, len, err);
    if (rc)
        return rc;
    if (placement_shard(p, shard) == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "shard %" PRIu32 " does not exist", shard);
    bool found;
    size_t at = branch_search(p, name, len, &found);
    if (found)
        return err_set(err, STRATA_ALREADY_EXISTS, "branch '%.*s' is already on shard %" PRIu32,
                       (int)len, name, p->branches[at].shard);
    if (p->nbranches == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct pl_branch *b =
            cap > SIZE_MAX / sizeof *b ? NULL : sm_realloc(p->branches, cap * sizeof *b);
        if (b == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "placement: out of memory");
        p->branches = b;
        p->cap = cap;
    }
    char *copy = sm_strndup(name, len);
    if (copy == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "placement: out of memory");
    memmove(&p->branches[at + 1], &p->branches[at], (p->nbranches - at) * sizeof *p->branches);
    p->branches[at].name = copy;
    p->branches[at].shard = shard;
    p->branches[at].epoch = 1;
    p->nbranches++;
    return 0;
}

int placement_unassign(struct placement *p, const char *name, size_t len, struct err *err)
{
    int rc = check_name(name, len, err);
    if (rc)
        return rc;
    if (is_default(name, len))
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "branch '" PL_DEFAULT_BRANCH "' cannot be removed from the table");
    bool found;
    size_t at = branch_search(p, name, len, &found);
    if (!found)
        return err_set(err, STRATA_NOT_FOUND, "branch '%.*s' is not in the table", (int)len, name);
    sm_free(p->branches[at].name);
    memmove(&p->branches[at], &p->branches[at + 1], (p->nbranches - at - 1) * sizeof *p->branches);
    p->nbranches--;
    return 0;
}

int placement_move(struct placement *p, const char *name, size_t len, uint32_t shard,
                   struct err *err)
{
    int rc = check_name(name, len, err);
    if (rc)
        return rc;
    if (is_default(name, len))
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "branch '" PL_DEFAULT_BRANCH "' always stays on shard 1");
    if (placement_shard(p, shard) == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "shard %" PRIu32 " does not exist", shard);
    bool found;
    size_t at = branch_search(p, name, len, &found);
    if (!found)
        return err_set(err, STRATA_NOT_FOUND, "branch '%.*s' is not in the table", (int)len, name);
    struct pl_branch *b = &p->branches[at];
    if (b->shard == shard)
        return err_set(err, STRATA_INVALID_ARGUMENT, "branch '%.*s' is already on shard %" PRIu32,
                       (int)len, name, shard);
    /* A wrapped epoch would look older than every cached one. */
    if (b->epoch == UINT64_MAX)
        return err_set(err, STRATA_INVALID_ARGUMENT, "branch '%.*s': epoch exhausted", (int)len,
                       name);
    b->shard = shard;
    b->epoch++;
    return 0;
}

int placement_add_node(struct placement *p, uint64_t id, const char *address, struct err *err)
{
    if (id == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "node id 0 is reserved");
    int rc = check_address(address, "new node", err);
    if (rc)
        return rc;
    size_t at = node_search(p, id);
    if (at < p->nnodes && p->nodes[at].id == id)
        return err_set(err, STRATA_ALREADY_EXISTS, "node %" PRIu64 " already exists (%s)", id,
                       p->nodes[at].address);
    for (size_t i = 0; i < p->nnodes; i++)
        if (strcmp(p->nodes[i].address, address) == 0)
            return err_set(err, STRATA_ALREADY_EXISTS,
                           "address %s already belongs to node %" PRIu64, address, p->nodes[i].id);
    if (p->nnodes == PL_MAX_NODES)
        return err_set(err, STRATA_INVALID_ARGUMENT, "the table already holds %d nodes",
                       PL_MAX_NODES);
    memmove(&p->nodes[at + 1], &p->nodes[at], (p->nnodes - at) * sizeof p->nodes[0]);
    struct pl_node *nd = &p->nodes[at];
    memset(nd, 0, sizeof *nd);
    nd->id = id;
    strcpy(nd->address, address); /* length checked above */
    nd->state = PL_NODE_ACTIVE;
    p->nnodes++;
    return 0;
}

int placement_drain_node(struct placement *p, uint64_t id, struct err *err)
{
    size_t at = node_search(p, id);
    if (at >= p->nnodes || p->nodes[at].id != id)
        return err_set(err, STRATA_NOT_FOUND, "node %" PRIu64 " is not in the table", id);
    /* Draining twice is not an error: the command may be retried. */
    p->nodes[at].state = PL_NODE_DRAINING;
    return 0;
}

int placement_remove_node(struct placement *p, uint64_t id, struct err *err)
{
    size_t at = node_search(p, id);
    if (at >= p->nnodes || p->nodes[at].id != id)
        return err_set(err, STRATA_NOT_FOUND, "node %" PRIu64 " is not in the table", id);
    for (size_t i = 0; i < p->nshards; i++)
        if (placement_shard_has(&p->shards[i], id))
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "node %" PRIu64 " still holds a replica of shard %" PRIu32, id,
                           p->shards[i].id);
    memmove(&p->nodes[at], &p->nodes[at + 1], (p->nnodes - at - 1) * sizeof p->nodes[0]);
    p->nnodes--;
    memset(&p->nodes[p->nnodes], 0, sizeof p->nodes[0]);
    return 0;
}

int placement_set_replicas(struct placement *p, uint32_t shard, const uint64_t *ids, size_t n,
                           struct err *err)
{
    struct pl_shard *s = shard_find(p, shard);
    if (s == NULL)
        return err_set(err, STRATA_NOT_FOUND, "shard %" PRIu32 " does not exist", shard);
    if (n == 0 || n > PL_MAX_REPLICAS || ids == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "shard %" PRIu32 ": a replica set has 1..%d nodes (got %zu)", shard,
                       PL_MAX_REPLICAS, n);
    for (size_t i = 0; i < n; i++) {
        const struct pl_node *nd = placement_node(p, ids[i]);
        if (nd == NULL)
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "shard %" PRIu32 ": node %" PRIu64 " is not in the table", shard,
                           ids[i]);
        for (size_t j = 0; j < i; j++)
            if (ids[j] == ids[i])
                return err_set(err, STRATA_INVALID_ARGUMENT,
                               "shard %" PRIu32 ": node %" PRIu64 " is listed twice", shard,
                               ids[i]);
        /* A draining node may stay while its replica is being replaced, but never gains
         * a new one. */
        if (nd->state == PL_NODE_DRAINING && !placement_shard_has(s, ids[i]))
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "shard %" PRIu32 ": node %" PRIu64 " is draining", shard, ids[i]);
    }
    if (s->epoch == UINT64_MAX)
        return err_set(err, STRATA_INVALID_ARGUMENT, "shard %" PRIu32 ": epoch exhausted", shard);
    memcpy(s->replicas, ids, n * sizeof *ids);
    for (size_t i = n; i < PL_MAX_REPLICAS; i++)
        s->replicas[i] = 0;
    s->nreplicas = (uint32_t)n;
    s->epoch++;
    return 0;
}
