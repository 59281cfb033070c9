/* API keys: the key file (--api-keys) and the access table the meta group replicates —
 * its MessagePack codec, lookups, rights checks and changes. Pure code (no I/O except
 * reading the key file), driven directly by tests/unit/node/test_auth.c. docs/auth.md. */
#include "node.h"

#include <fnmatch.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* Branch names are shorter (storage: 1-128 characters); longer ones get no rights. */
#define AUTHZ_BRANCH_MAX 512

/* ---- Names, permissions, patterns --------------------------------------------------------- */

static const char *const perm_names[] = {"none", "read", "write", "admin"};

const char *authz_perm_name(enum authz_perm p)
{
    return (unsigned)p <= AUTHZ_ADMIN ? perm_names[p] : "?";
}

/* A permission name (never "none"). */
static int perm_parse(const msgpack_object *o, enum authz_perm *out, struct err *err)
{
    if (o == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "missing argument 'perm' (read, write or admin)");
    if (o->type != MSGPACK_OBJECT_STR)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "argument 'perm' must be a string (read, write or admin)");
    for (int p = AUTHZ_READ; p <= AUTHZ_ADMIN; p++)
        if (o->via.str.size == strlen(perm_names[p]) &&
            memcmp(o->via.str.ptr, perm_names[p], o->via.str.size) == 0) {
            *out = (enum authz_perm)p;
            return 0;
        }
    return err_set(err, STRATA_INVALID_ARGUMENT, "unknown permission '%.*s' (read, write or admin)",
                   (int)(o->via.str.size > 32 ? 32 : o->via.str.size), o->via.str.ptr);
}

static int name_check(const char *s, size_t len, struct err *err)
{
    bool ok = len >= 1 && len <= AUTHZ_NAME_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
             (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' || s[i] == '.';
    if (!ok)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "invalid key name '%.*s': 1-%d characters of [A-Za-z0-9_.-]",
                       (int)(len > 80 ? 80 : len), s, AUTHZ_NAME_MAX);
    return 0;
}

/* A branch-name glob: printable ASCII without ',' (the key file's separator). */
static int pattern_check(const char *p, size_t len, struct err *err)
{
    if (len == 0)
        return err_set(err, STRATA_INVALID_ARGUMENT, "empty pattern");
    bool ok = len <= AUTHZ_PATTERN_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = p[i] > 0x20 && p[i] < 0x7f && p[i] != ',';
    if (!ok)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "invalid pattern '%.*s': 1-%d printable ASCII characters, no spaces or ','",
                       (int)(len > 80 ? 80 : len), p, AUTHZ_PATTERN_MAX);
    return 0;
}

/* ---- The key file ------------------------------------------------------------------------ */

void auth_free(struct auth *a)
{
    for (size_t i = 0; i < a->nkeys; i++) {
        sm_free(a->keys[i].key);
        sm_free(a->keys[i].name);
        for (size_t j = 0; j < a->keys[i].npatterns; j++)
            sm_free(a->keys[i].patterns[j]);
        sm_free(a->keys[i].patterns);
    }
    sm_free(a->keys);
    a->keys = NULL;
    a->nkeys = 0;
}

static int add_pattern(struct auth_key *k, const char *p, size_t len)
{
    char **ps = sm_realloc(k->patterns, (k->npatterns + 1) * sizeof *ps);
    if (ps == NULL)
        return STRATA_OUT_OF_MEMORY;
    k->patterns = ps;
    if ((ps[k->npatterns] = sm_strndup(p, len)) == NULL)
        return STRATA_OUT_OF_MEMORY;
    k->npatterns++;
    return 0;
}

int auth_load(const char *path, struct auth *a, struct err *err)
{
    a->keys = NULL;
    a->nkeys = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "cannot open API key file %s", path);
    char line[4096];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *save = NULL, *key = strtok_r(line, " \t\r\n", &save);
        if (key == NULL)
            continue;
        char *mode = strtok_r(NULL, " \t\r\n", &save);
        char *pats = strtok_r(NULL, " \t\r\n", &save);
        char *name = pats ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        if (mode == NULL || pats == NULL || strtok_r(NULL, " \t\r\n", &save) ||
            (strcmp(mode, "r") != 0 && strcmp(mode, "rw") != 0 && strcmp(mode, "admin") != 0)) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT,
                         "%s:%d: expected 'KEY r|rw|admin PATTERN[,PATTERN...] [NAME]'", path,
                         lineno);
            break;
        }
        struct err nerr;
        if (name && name_check(name, strlen(name), &nerr)) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT, "%s:%d: %s", path, lineno, nerr.msg);
            break;
        }
        if (auth_find(a, key, strlen(key))) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT, "%s:%d: duplicate key", path, lineno);
            break;
        }
        struct auth_key *ks = sm_realloc(a->keys, (a->nkeys + 1) * sizeof *ks);
        if (ks == NULL) {
            rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
            break;
        }
        a->keys = ks;
        struct auth_key *k = &a->keys[a->nkeys++];
        memset(k, 0, sizeof *k);
        k->write = strcmp(mode, "r") != 0;
        k->admin = strcmp(mode, "admin") == 0;
        if ((k->key = sm_strdup(key)) == NULL || (name && (k->name = sm_strdup(name)) == NULL)) {
            rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
            break;
        }
        for (char *p = pats; rc == 0 && *p;) {
            size_t n = strcspn(p, ",");
            if (n == 0 || add_pattern(k, p, n))
                rc = err_set(err, n ? STRATA_OUT_OF_MEMORY : STRATA_INVALID_ARGUMENT,
                             "%s:%d: bad pattern list", path, lineno);
            p += n + (p[n] == ',');
        }
    }
    fclose(f);
    if (rc == 0 && a->nkeys == 0)
        rc = err_set(err, STRATA_INVALID_ARGUMENT, "API key file %s holds no keys", path);
    if (rc)
        auth_free(a);
    return rc;
}

const struct auth_key *auth_find(const struct auth *a, const char *key, size_t len)
{
    for (size_t i = 0; i < a->nkeys; i++)
        if (a->keys[i].key && strlen(a->keys[i].key) == len &&
            memcmp(a->keys[i].key, key, len) == 0)
            return &a->keys[i];
    return NULL;
}

/* ---- The table ---------------------------------------------------------------------------- */

void authz_table_init(struct authz_table *t)
{
    memset(t, 0, sizeof *t);
}

static void grant_free(struct authz_grant *g)
{
    for (size_t i = 0; i < g->npatterns; i++)
        sm_free(g->patterns[i]);
    sm_free(g->patterns);
    g->patterns = NULL;
    g->npatterns = 0;
}

static void entry_free(struct authz_entry *e)
{
    sm_free(e->name);
    for (size_t i = 0; i < e->ngrants; i++)
        grant_free(&e->grants[i]);
    sm_free(e->grants);
    memset(e, 0, sizeof *e);
}

void authz_table_free(struct authz_table *t)
{
    for (size_t i = 0; i < t->nkeys; i++)
        entry_free(&t->keys[i]);
    sm_free(t->keys);
    authz_table_init(t);
}

static bool grant_has(const struct authz_grant *g, const char *p, size_t len)
{
    for (size_t i = 0; i < g->npatterns; i++)
        if (strlen(g->patterns[i]) == len && memcmp(g->patterns[i], p, len) == 0)
            return true;
    return false;
}

/* Add a pattern unless present. 0 or OUT_OF_MEMORY (g unchanged). */
static int grant_add(struct authz_grant *g, const char *p, size_t len, bool *added)
{
    if (added)
        *added = false;
    if (grant_has(g, p, len))
        return 0;
    char **ps = sm_realloc(g->patterns, (g->npatterns + 1) * sizeof *ps);
    if (ps == NULL)
        return STRATA_OUT_OF_MEMORY;
    g->patterns = ps;
    if ((ps[g->npatterns] = sm_strndup(p, len)) == NULL)
        return STRATA_OUT_OF_MEMORY;
    g->npatterns++;
    if (added)
        *added = true;
    return 0;
}

/* The grant of permission p, created (kept ascending) when `create`. NULL when absent or
 * out of memory. */
static struct authz_grant *entry_grant(struct authz_entry *e, enum authz_perm p, bool create)
{
    size_t i = 0;
    while (i < e->ngrants && e->grants[i].perm < p)
        i++;
    if (i < e->ngrants && e->grants[i].perm == p)
        return &e->grants[i];
    if (!create)
        return NULL;
    struct authz_grant *gs = sm_realloc(e->grants, (e->ngrants + 1) * sizeof *gs);
    if (gs == NULL)
        return NULL;
    e->grants = gs;
    memmove(&gs[i + 1], &gs[i], (e->ngrants - i) * sizeof *gs);
    memset(&gs[i], 0, sizeof gs[i]);
    gs[i].perm = p;
    e->ngrants++;
    return &gs[i];
}

static void entry_drop_empty(struct authz_entry *e)
{
    size_t k = 0;
    for (size_t i = 0; i < e->ngrants; i++) {
        if (e->grants[i].npatterns == 0)
            grant_free(&e->grants[i]);
        else
            e->grants[k++] = e->grants[i];
    }
    e->ngrants = k;
}

static int entry_copy(struct authz_entry *d, const struct authz_entry *s)
{
    memset(d, 0, sizeof *d);
    memcpy(d->digest, s->digest, sizeof d->digest);
    d->node = s->node;
    if ((d->name = sm_strdup(s->name)) == NULL)
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < s->ngrants; i++) {
        struct authz_grant *g = entry_grant(d, s->grants[i].perm, true);
        if (g == NULL)
            return STRATA_OUT_OF_MEMORY;
        for (size_t j = 0; j < s->grants[i].npatterns; j++)
            if (grant_add(g, s->grants[i].patterns[j], strlen(s->grants[i].patterns[j]), NULL))
                return STRATA_OUT_OF_MEMORY;
    }
    return 0;
}

int authz_table_copy(struct authz_table *dst, const struct authz_table *src)
{
    authz_table_free(dst);
    if (src->nkeys && (dst->keys = sm_calloc(src->nkeys, sizeof *dst->keys)) == NULL)
        return STRATA_OUT_OF_MEMORY;
    dst->version = src->version;
    for (size_t i = 0; i < src->nkeys; i++) {
        dst->nkeys++;
        if (entry_copy(&dst->keys[i], &src->keys[i])) {
            authz_table_free(dst);
            return STRATA_OUT_OF_MEMORY;
        }
    }
    return 0;
}

void authz_digest(const char *key, size_t len, uint8_t out[AUTHZ_DIGEST_LEN])
{
    unsigned int n = 0;
    if (EVP_Digest(key, len, out, &n, EVP_sha256(), NULL) != 1 || n != AUTHZ_DIGEST_LEN)
        memset(out, 0, AUTHZ_DIGEST_LEN); /* matches no stored digest (they are never zero) */
}

const struct authz_entry *authz_table_find(const struct authz_table *t,
                                           const uint8_t digest[AUTHZ_DIGEST_LEN])
{
    /* Constant-time per entry: how much of a digest matched says nothing. */
    for (size_t i = 0; i < t->nkeys; i++)
        if (CRYPTO_memcmp(t->keys[i].digest, digest, AUTHZ_DIGEST_LEN) == 0)
            return &t->keys[i];
    return NULL;
}

const struct authz_entry *authz_table_named(const struct authz_table *t, const char *name,
                                            size_t len)
{
    for (size_t i = 0; i < t->nkeys; i++)
        if (strlen(t->keys[i].name) == len && memcmp(t->keys[i].name, name, len) == 0)
            return &t->keys[i];
    return NULL;
}

enum authz_perm authz_entry_right(const struct authz_entry *e, const char *branch, size_t len)
{
    /* Longer than any branch name, or with a NUL inside: no valid branch, no rights (a
     * cut copy could match a pattern the whole name does not). */
    char name[AUTHZ_BRANCH_MAX + 1];
    if (len > AUTHZ_BRANCH_MAX || memchr(branch, '\0', len))
        return AUTHZ_NONE;
    memcpy(name, branch, len);
    name[len] = '\0';
    /* Grants are ascending: the strongest match is the last one found. */
    for (size_t i = e->ngrants; i-- > 0;)
        for (size_t j = 0; j < e->grants[i].npatterns; j++)
            if (fnmatch(e->grants[i].patterns[j], name, 0) == 0)
                return e->grants[i].perm;
    return AUTHZ_NONE;
}

bool authz_entry_cluster_admin(const struct authz_entry *e)
{
    for (size_t i = 0; i < e->ngrants; i++)
        if (e->grants[i].perm == AUTHZ_ADMIN)
            return grant_has(&e->grants[i], "*", 1);
    return false;
}

int authz_entry_check(const struct authz_entry *e, enum authz_perm need, const char *const *names,
                      const size_t *lens, size_t n, struct err *err)
{
    if (need == AUTHZ_NONE)
        return 0;
    if (need == AUTHZ_ADMIN) {
        if (authz_entry_cluster_admin(e))
            return 0;
        return err_set(err, STRATA_PERMISSION_DENIED,
                       "API key '%s' has no admin grant on '*' (cluster and auth commands "
                       "need one)",
                       e->name);
    }
    for (size_t i = 0; i < n; i++) {
        enum authz_perm have = authz_entry_right(e, names[i], lens[i]);
        if (have >= need)
            continue;
        int shown = (int)(lens[i] > 128 ? 128 : lens[i]);
        if (have == AUTHZ_READ)
            return err_set(err, STRATA_PERMISSION_DENIED,
                           "API key '%s' may only read branch '%.*s'", e->name, shown, names[i]);
        return err_set(err, STRATA_PERMISSION_DENIED,
                       "API key '%s' has no %s access to branch '%.*s'", e->name,
                       authz_perm_name(need), shown, names[i]);
    }
    return 0;
}

/* ---- Codec ----------------------------------------------------------------------------------
 * {"v": 1, "keys": [{"name": str, "digest": bin(32), "node": bool,
 *                    "grants": [{"perm": "read"|"write"|"admin", "patterns": [str]}]}]} */

static int pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    return msgpack_pack_str(pk, n) | msgpack_pack_str_body(pk, s, n);
}

int authz_table_encode(const struct authz_table *t, struct buf *out)
{
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, node_buf_w);
    int bad = msgpack_pack_map(&pk, 2) | pack_str(&pk, "v", 1) |
              msgpack_pack_uint32(&pk, AUTHZ_FORMAT_VERSION) | pack_str(&pk, "keys", 4) |
              msgpack_pack_array(&pk, t->nkeys);
    for (size_t i = 0; i < t->nkeys && !bad; i++) {
        const struct authz_entry *e = &t->keys[i];
        bad |= msgpack_pack_map(&pk, 4) | pack_str(&pk, "name", 4) |
               pack_str(&pk, e->name, strlen(e->name)) | pack_str(&pk, "digest", 6) |
               msgpack_pack_bin(&pk, AUTHZ_DIGEST_LEN) |
               msgpack_pack_bin_body(&pk, e->digest, AUTHZ_DIGEST_LEN) | pack_str(&pk, "node", 4) |
               (e->node ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk)) |
               pack_str(&pk, "grants", 6) | msgpack_pack_array(&pk, e->ngrants);
        for (size_t g = 0; g < e->ngrants; g++) {
            const char *pn = authz_perm_name(e->grants[g].perm);
            bad |= msgpack_pack_map(&pk, 2) | pack_str(&pk, "perm", 4) |
                   pack_str(&pk, pn, strlen(pn)) | pack_str(&pk, "patterns", 8) |
                   msgpack_pack_array(&pk, e->grants[g].npatterns);
            for (size_t j = 0; j < e->grants[g].npatterns; j++)
                bad |= pack_str(&pk, e->grants[g].patterns[j], strlen(e->grants[g].patterns[j]));
        }
    }
    if (bad) {
        out->len = start; /* nothing half-written */
        return STRATA_OUT_OF_MEMORY;
    }
    return 0;
}

#define BAD(...) err_set(err, STRATA_PROTOCOL_ERROR, "auth table: " __VA_ARGS__)

static int decode_grant(struct authz_entry *e, const msgpack_object *o, size_t ki, struct err *err)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return BAD("key %zu: a grant is not a map", ki);
    const msgpack_object *perm = node_map_get(o, "perm"), *pats = node_map_get(o, "patterns");
    enum authz_perm p = AUTHZ_NONE;
    struct err perr;
    if (perm_parse(perm, &p, &perr))
        return BAD("key %zu: %s", ki, perr.msg);
    if (pats == NULL || pats->type != MSGPACK_OBJECT_ARRAY || pats->via.array.size == 0 ||
        pats->via.array.size > AUTHZ_MAX_PATTERNS)
        return BAD("key %zu: 'patterns' must be an array of 1-%d strings", ki, AUTHZ_MAX_PATTERNS);
    if (entry_grant(e, p, false))
        return BAD("key %zu: two grants of '%s'", ki, authz_perm_name(p));
    struct authz_grant *g = entry_grant(e, p, true);
    if (g == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "auth table: out of memory");
    for (uint32_t j = 0; j < pats->via.array.size; j++) {
        const msgpack_object *s = &pats->via.array.ptr[j];
        if (s->type != MSGPACK_OBJECT_STR || pattern_check(s->via.str.ptr, s->via.str.size, &perr))
            return BAD("key %zu: pattern %u is not a valid pattern", ki, j);
        bool added;
        if (grant_add(g, s->via.str.ptr, s->via.str.size, &added))
            return err_set(err, STRATA_OUT_OF_MEMORY, "auth table: out of memory");
        if (!added)
            return BAD("key %zu: pattern %u is repeated", ki, j);
    }
    return 0;
}

static int decode_entry(struct authz_table *t, const msgpack_object *o, size_t ki, struct err *err)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return BAD("key %zu is not a map", ki);
    const msgpack_object *name = node_map_get(o, "name"), *dg = node_map_get(o, "digest"),
                         *node = node_map_get(o, "node"), *grants = node_map_get(o, "grants");
    struct err nerr;
    if (name == NULL || name->type != MSGPACK_OBJECT_STR ||
        name_check(name->via.str.ptr, name->via.str.size, &nerr))
        return BAD("key %zu: 'name' is missing or invalid", ki);
    if (dg == NULL || dg->type != MSGPACK_OBJECT_BIN || dg->via.bin.size != AUTHZ_DIGEST_LEN)
        return BAD("key %zu: 'digest' must be %d bytes", ki, AUTHZ_DIGEST_LEN);
    if (node && node->type != MSGPACK_OBJECT_BOOLEAN)
        return BAD("key %zu: 'node' must be a boolean", ki);
    if (grants == NULL || grants->type != MSGPACK_OBJECT_ARRAY ||
        grants->via.array.size > AUTHZ_ADMIN)
        return BAD("key %zu: 'grants' must be an array of at most %d grants", ki, AUTHZ_ADMIN);
    if (authz_table_named(t, name->via.str.ptr, name->via.str.size))
        return BAD("key %zu: the name is repeated", ki);
    if (authz_table_find(t, (const uint8_t *)dg->via.bin.ptr))
        return BAD("key %zu: the digest is repeated", ki);
    struct authz_entry *e = &t->keys[t->nkeys++];
    memset(e, 0, sizeof *e);
    memcpy(e->digest, dg->via.bin.ptr, AUTHZ_DIGEST_LEN);
    e->node = node && node->via.boolean;
    if ((e->name = sm_strndup(name->via.str.ptr, name->via.str.size)) == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "auth table: out of memory");
    for (uint32_t g = 0; g < grants->via.array.size; g++) {
        int rc = decode_grant(e, &grants->via.array.ptr[g], ki, err);
        if (rc)
            return rc;
    }
    if (e->node && !authz_entry_cluster_admin(e))
        return BAD("key %zu: the nodes' key must have admin on '*'", ki);
    return 0;
}

int authz_table_decode(struct authz_table *t, const uint8_t *p, size_t len, struct err *err)
{
    uint64_t version = t->version;
    authz_table_free(t);
    t->version = version;
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_object o;
    size_t off = 0;
    int rc = 0;
    msgpack_unpack_return ur = msgpack_unpack((const char *)p, len, &off, &z, &o);
    /* NOMEM here is a declared container size the input cannot back: bad input. */
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
        rc = BAD("not exactly one MessagePack value");
    else if (o.type != MSGPACK_OBJECT_MAP)
        rc = BAD("not a map");
    const msgpack_object *v = rc ? NULL : node_map_get(&o, "v");
    const msgpack_object *keys = rc ? NULL : node_map_get(&o, "keys");
    if (rc == 0 && (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                    v->via.u64 != AUTHZ_FORMAT_VERSION))
        rc = BAD("'v' must be %d", AUTHZ_FORMAT_VERSION);
    if (rc == 0 && (keys == NULL || keys->type != MSGPACK_OBJECT_ARRAY ||
                    keys->via.array.size > AUTHZ_MAX_KEYS))
        rc = BAD("'keys' must be an array of at most %d keys", AUTHZ_MAX_KEYS);
    if (rc == 0 && keys->via.array.size &&
        (t->keys = sm_calloc(keys->via.array.size, sizeof *t->keys)) == NULL)
        rc = err_set(err, STRATA_OUT_OF_MEMORY, "auth table: out of memory");
    for (uint32_t i = 0; rc == 0 && i < keys->via.array.size; i++)
        rc = decode_entry(t, &keys->via.array.ptr[i], i, err);
    msgpack_zone_destroy(&z);
    if (rc) {
        authz_table_free(t);
        t->version = version;
    }
    return rc;
}

/* ---- The seed from the key file ------------------------------------------------------------ */

int authz_table_from_file(struct authz_table *t, const struct auth *file, struct err *err)
{
    authz_table_free(t);
    if (file->nkeys > AUTHZ_MAX_KEYS)
        return err_set(err, STRATA_INVALID_ARGUMENT, "more than %d API keys", AUTHZ_MAX_KEYS);
    if (file->nkeys && (t->keys = sm_calloc(file->nkeys, sizeof *t->keys)) == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < file->nkeys; i++) {
        const struct auth_key *k = &file->keys[i];
        char gen[32];
        snprintf(gen, sizeof gen, "key-%zu", i + 1);
        const char *name = k->name ? k->name : gen;
        if (authz_table_named(t, name, strlen(name))) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT, "API key name '%s' is used twice", name);
            break;
        }
        struct authz_entry *e = &t->keys[t->nkeys++];
        authz_digest(k->key, strlen(k->key), e->digest);
        if ((e->name = sm_strdup(name)) == NULL) {
            rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
            break;
        }
        enum authz_perm p =
            k->admin || (k->write && k->npatterns && strcmp(k->patterns[0], "*") == 0) ? AUTHZ_ADMIN
            : k->write                                                                 ? AUTHZ_WRITE
                                                                                       : AUTHZ_READ;
        struct authz_grant *g = entry_grant(e, p, true);
        if (g == NULL)
            rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        for (size_t j = 0; rc == 0 && j < k->npatterns; j++) {
            struct err perr;
            if (pattern_check(k->patterns[j], strlen(k->patterns[j]), &perr))
                rc = err_set(err, STRATA_INVALID_ARGUMENT, "API key '%s': %s", name, perr.msg);
            else if (grant_add(g, k->patterns[j], strlen(k->patterns[j]), NULL))
                rc = err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        }
        /* The nodes' own key, protected in the table — if it can do a node's work. */
        e->node = rc == 0 && i == 0 && authz_entry_cluster_admin(e);
    }
    if (rc)
        authz_table_free(t);
    return rc;
}

/* ---- Changes ------------------------------------------------------------------------------- */

void authz_change_free(struct authz_change *c)
{
    for (size_t i = 0; i < c->ngrants; i++)
        grant_free(&c->grants[i]);
    sm_free(c->grants);
    memset(c, 0, sizeof *c);
}

/* {perm, patterns} into c->grants (merged with an earlier grant of the same perm).
 * `optional`: either may be absent (auth.revoke: perm NONE = any, no patterns = all). */
static int parse_grant(struct authz_change *c, const msgpack_object *perm,
                       const msgpack_object *pats, bool optional, struct err *err)
{
    enum authz_perm p = AUTHZ_NONE;
    int rc;
    if ((perm || !optional) && (rc = perm_parse(perm, &p, err)))
        return rc;
    bool pats_ok = pats ? pats->type == MSGPACK_OBJECT_ARRAY && pats->via.array.size > 0 &&
                              pats->via.array.size <= AUTHZ_MAX_PATTERNS
                        : optional;
    if (!pats_ok)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "argument 'patterns' must be an array of 1-%d branch-name patterns",
                       AUTHZ_MAX_PATTERNS);
    struct authz_grant *g = NULL;
    for (size_t i = 0; i < c->ngrants && g == NULL; i++)
        if (c->grants[i].perm == p)
            g = &c->grants[i];
    if (g == NULL) {
        struct authz_grant *gs = sm_realloc(c->grants, (c->ngrants + 1) * sizeof *gs);
        if (gs == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        c->grants = gs;
        g = &gs[c->ngrants++];
        memset(g, 0, sizeof *g);
        g->perm = p;
    }
    for (uint32_t j = 0; pats && j < pats->via.array.size; j++) {
        const msgpack_object *s = &pats->via.array.ptr[j];
        if (s->type != MSGPACK_OBJECT_STR)
            return err_set(err, STRATA_INVALID_ARGUMENT, "pattern %u is not a string", j);
        if ((rc = pattern_check(s->via.str.ptr, s->via.str.size, err)))
            return rc;
        if (grant_add(g, s->via.str.ptr, s->via.str.size, NULL))
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    }
    return 0;
}

/* A key given to auth.add: it travels in URIs (strata://KEY@host), so URI-unreserved
 * characters only, and long enough not to be guessed. */
#define KEY_MIN 16
#define KEY_MAX 256

static int parse_add(struct authz_change *c, const msgpack_object *cmd, struct err *err)
{
    const msgpack_object *key = node_map_get(cmd, "key"), *gen = node_map_get(cmd, "generate"),
                         *grants = node_map_get(cmd, "grants"), *perm = node_map_get(cmd, "perm"),
                         *pats = node_map_get(cmd, "patterns");
    if (gen && gen->type != MSGPACK_OBJECT_BOOLEAN)
        return err_set(err, STRATA_INVALID_ARGUMENT, "argument 'generate' must be a boolean");
    if (key && gen && gen->via.boolean)
        return err_set(err, STRATA_INVALID_ARGUMENT, "give 'key' or 'generate', not both");
    if (key) {
        bool ok = key->type == MSGPACK_OBJECT_STR && key->via.str.size >= KEY_MIN &&
                  key->via.str.size <= KEY_MAX;
        for (uint32_t i = 0; ok && i < key->via.str.size; i++) {
            char ch = key->via.str.ptr[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '-' || ch == '_' || ch == '.' || ch == '~';
        }
        if (!ok)
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "argument 'key' must be %d-%d characters of [A-Za-z0-9._~-]", KEY_MIN,
                           KEY_MAX);
        authz_digest(key->via.str.ptr, key->via.str.size, c->digest);
    } else if (gen && !gen->via.boolean) {
        return err_set(err, STRATA_INVALID_ARGUMENT, "give 'key', or 'generate': true");
    } else {
        c->generate = true;
    }
    if (grants && (perm || pats))
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "give 'grants' or 'perm' with 'patterns', not both");
    int rc;
    if (grants == NULL)
        return parse_grant(c, perm, pats, false, err);
    if (grants->type != MSGPACK_OBJECT_ARRAY || grants->via.array.size == 0 ||
        grants->via.array.size > 8)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "argument 'grants' must be an array of 1-8 {perm, patterns} maps");
    for (uint32_t i = 0; i < grants->via.array.size; i++) {
        const msgpack_object *g = &grants->via.array.ptr[i];
        if (g->type != MSGPACK_OBJECT_MAP)
            return err_set(err, STRATA_INVALID_ARGUMENT, "grant %u is not a {perm, patterns} map",
                           i);
        if ((rc = parse_grant(c, node_map_get(g, "perm"), node_map_get(g, "patterns"), false, err)))
            return rc;
    }
    return 0;
}

int authz_change_parse(struct authz_change *c, const char *op, const msgpack_object *cmd,
                       struct err *err)
{
    memset(c, 0, sizeof *c);
    if (strcmp(op, "auth.add") == 0)
        c->op = AUTHZ_OP_ADD;
    else if (strcmp(op, "auth.grant") == 0)
        c->op = AUTHZ_OP_GRANT;
    else if (strcmp(op, "auth.revoke") == 0)
        c->op = AUTHZ_OP_REVOKE;
    else if (strcmp(op, "auth.remove") == 0)
        c->op = AUTHZ_OP_REMOVE;
    else
        return err_set(err, STRATA_INVALID_ARGUMENT, "'%s' changes nothing in the auth table", op);
    const msgpack_object *name = node_map_get(cmd, "name");
    int rc;
    if (name == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "missing argument 'name' (the key's name)");
    if (name->type != MSGPACK_OBJECT_STR)
        return err_set(err, STRATA_INVALID_ARGUMENT, "argument 'name' must be a string");
    if ((rc = name_check(name->via.str.ptr, name->via.str.size, err)))
        return rc;
    memcpy(c->name, name->via.str.ptr, name->via.str.size);
    c->name[name->via.str.size] = '\0';
    switch (c->op) {
    case AUTHZ_OP_ADD:
        rc = parse_add(c, cmd, err);
        break;
    case AUTHZ_OP_GRANT:
        rc = parse_grant(c, node_map_get(cmd, "perm"), node_map_get(cmd, "patterns"), false, err);
        break;
    case AUTHZ_OP_REVOKE:
        rc = parse_grant(c, node_map_get(cmd, "perm"), node_map_get(cmd, "patterns"), true, err);
        if (rc == 0 && c->grants[0].perm == AUTHZ_NONE && c->grants[0].npatterns == 0)
            rc = err_set(err, STRATA_INVALID_ARGUMENT,
                         "auth.revoke needs 'perm', 'patterns' or both (auth.remove drops a key)");
        break;
    default:
        break;
    }
    if (rc)
        authz_change_free(c);
    return rc;
}

static bool table_has_admin(const struct authz_table *t)
{
    for (size_t i = 0; i < t->nkeys; i++)
        if (authz_entry_cluster_admin(&t->keys[i]))
            return true;
    return false;
}

/* Revoke: remove c's patterns (all when none given) from the grant of c's permission (or
 * from any grant when none given). Returns how many patterns went. */
static size_t entry_revoke(struct authz_entry *e, const struct authz_grant *r)
{
    size_t gone = 0;
    for (size_t i = 0; i < e->ngrants; i++) {
        struct authz_grant *g = &e->grants[i];
        if (r->perm != AUTHZ_NONE && g->perm != r->perm)
            continue;
        size_t k = 0;
        for (size_t j = 0; j < g->npatterns; j++) {
            bool drop = r->npatterns == 0 || grant_has(r, g->patterns[j], strlen(g->patterns[j]));
            if (drop) {
                sm_free(g->patterns[j]);
                gone++;
            } else {
                g->patterns[k++] = g->patterns[j];
            }
        }
        g->npatterns = k;
    }
    entry_drop_empty(e);
    return gone;
}

static int apply_on(struct authz_table *t, const struct authz_change *c, bool *changed,
                    struct err *err)
{
    struct authz_entry *e = (struct authz_entry *)authz_table_named(t, c->name, strlen(c->name));
    if (c->op != AUTHZ_OP_ADD && e == NULL)
        return err_set(err, STRATA_NOT_FOUND, "no API key is named '%s'", c->name);
    switch (c->op) {
    case AUTHZ_OP_ADD: {
        if (e)
            return err_set(err, STRATA_ALREADY_EXISTS, "an API key named '%s' exists", c->name);
        const struct authz_entry *same = authz_table_find(t, c->digest);
        if (same)
            return err_set(err, STRATA_ALREADY_EXISTS, "this key is already in the table (as '%s')",
                           same->name);
        if (t->nkeys >= AUTHZ_MAX_KEYS)
            return err_set(err, STRATA_INVALID_ARGUMENT, "the table holds %d keys already",
                           AUTHZ_MAX_KEYS);
        struct authz_entry *ks = sm_realloc(t->keys, (t->nkeys + 1) * sizeof *ks);
        if (ks == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        t->keys = ks;
        e = &ks[t->nkeys++];
        memset(e, 0, sizeof *e);
        memcpy(e->digest, c->digest, AUTHZ_DIGEST_LEN);
        if ((e->name = sm_strdup(c->name)) == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        for (size_t i = 0; i < c->ngrants; i++) {
            struct authz_grant *g = entry_grant(e, c->grants[i].perm, true);
            for (size_t j = 0; g && j < c->grants[i].npatterns; j++)
                if (grant_add(g, c->grants[i].patterns[j], strlen(c->grants[i].patterns[j]), NULL))
                    g = NULL;
            if (g == NULL)
                return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        }
        *changed = true;
        return 0;
    }
    case AUTHZ_OP_GRANT: {
        struct authz_grant *g = entry_grant(e, c->grants[0].perm, true);
        if (g == NULL)
            return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
        for (size_t j = 0; j < c->grants[0].npatterns; j++) {
            bool added;
            if (grant_add(g, c->grants[0].patterns[j], strlen(c->grants[0].patterns[j]), &added))
                return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
            *changed = *changed || added;
        }
        return 0;
    }
    case AUTHZ_OP_REVOKE: {
        const struct authz_grant *r = &c->grants[0];
        /* Every named pattern must be held, or nothing is revoked: a typo is an error,
         * not a silent no-op that leaves the access in place. */
        for (size_t j = 0; j < r->npatterns; j++) {
            bool held = false;
            for (size_t i = 0; i < e->ngrants && !held; i++)
                held = (r->perm == AUTHZ_NONE || e->grants[i].perm == r->perm) &&
                       grant_has(&e->grants[i], r->patterns[j], strlen(r->patterns[j]));
            if (!held)
                return err_set(err, STRATA_NOT_FOUND, "API key '%s' has no %s grant on '%s'",
                               c->name, r->perm == AUTHZ_NONE ? "such" : authz_perm_name(r->perm),
                               r->patterns[j]);
        }
        if (entry_revoke(e, r) == 0)
            return err_set(err, STRATA_NOT_FOUND, "API key '%s' has no %s grant", c->name,
                           authz_perm_name(r->perm));
        if (e->node && !authz_entry_cluster_admin(e))
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "API key '%s' is the nodes' own key (the first key of --api-keys): "
                           "it keeps admin on '*'",
                           c->name);
        *changed = true;
        break;
    }
    case AUTHZ_OP_REMOVE: {
        bool node = e->node;
        size_t i = (size_t)(e - t->keys);
        if (node)
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "API key '%s' is the nodes' own key (the first key of --api-keys): "
                           "it cannot be removed",
                           c->name);
        entry_free(e);
        memmove(&t->keys[i], &t->keys[i + 1], (t->nkeys - i - 1) * sizeof *t->keys);
        t->nkeys--;
        *changed = true;
        break;
    }
    }
    if (!table_has_admin(t))
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "this would leave no API key with admin on '*' (add another one first)");
    return 0;
}

int authz_table_apply(struct authz_table *t, const struct authz_change *c, bool *changed,
                      struct err *err)
{
    *changed = false;
    struct authz_table work;
    authz_table_init(&work);
    if (authz_table_copy(&work, t))
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    int rc = apply_on(&work, c, changed, err);
    if (rc) {
        *changed = false;
        authz_table_free(&work);
        return rc;
    }
    authz_table_free(t);
    *t = work;
    return 0;
}

const struct auth_key *node_self_key(const struct node *n)
{
    /* Node-to-node calls present the first configured key (every node has the same
     * file); none in open mode. */
    return n->open_mode || n->auth.nkeys == 0 ? NULL : &n->auth.keys[0];
}

const char *node_self_secret(const struct node *n)
{
    const struct auth_key *k = node_self_key(n);
    return k ? k->key : NULL;
}
