/* API-key authentication: keys with read or read-write rights on branch-name patterns. */
#include "node.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

void auth_free(struct auth *a)
{
    for (size_t i = 0; i < a->nkeys; i++) {
        sm_free(a->keys[i].key);
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
        if (mode == NULL || pats == NULL || strtok_r(NULL, " \t\r\n", &save) ||
            (strcmp(mode, "r") != 0 && strcmp(mode, "rw") != 0)) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT,
                         "%s:%d: expected 'KEY r|rw PATTERN[,PATTERN...]'", path, lineno);
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
        k->write = strcmp(mode, "rw") == 0;
        if ((k->key = sm_strdup(key)) == NULL) {
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
        if (strlen(a->keys[i].key) == len && memcmp(a->keys[i].key, key, len) == 0)
            return &a->keys[i];
    return NULL;
}

int auth_check(const struct auth_key *k, bool write, const char *const *branches,
               const size_t *lens, size_t n, struct err *err)
{
    if (write && !k->write)
        return err_set(err, STRATA_PERMISSION_DENIED, "this API key may only read");
    for (size_t i = 0; i < n; i++) {
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(lens[i] < 255 ? lens[i] : 255), branches[i]);
        bool ok = false;
        for (size_t j = 0; j < k->npatterns && !ok; j++)
            ok = fnmatch(k->patterns[j], name, 0) == 0;
        if (!ok)
            return err_set(err, STRATA_PERMISSION_DENIED,
                           "this API key has no %s access to branch '%s'",
                           write ? "write" : "read", name);
    }
    return 0;
}
