/* libstrata, first version: URI parsing and command execution against an in-process engine.
 *
 * Only `mem:` is served in this build. `file:` and `strata://` URIs are parsed fully, so a
 * malformed one gets a precise message, and then refused as not supported yet: a later
 * version adds a durable local engine and the network client behind the same calls. */
#include "strata.h"

#include "storage.h"

#include <string.h>

/* Which kind of database a handle talks to. Each later backend adds a value here and a
 * case in strata_exec() / strata_close(). */
enum backend {
    BACKEND_MEM = 1,
};

struct strata {
    enum backend kind;
    struct storage *engine; /* owned; BACKEND_MEM */
};

#define URI_SHOW_MAX 200 /* bytes of a bad URI quoted back in an error message */

static int uri_file(const char *uri, const char *dir, struct err *err)
{
    if (*dir == '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "URI '%s' names no directory: expected file:DIR", uri);
    return err_set(err, STRATA_INVALID_ARGUMENT,
                   "file: URIs (durable local databases) are not supported yet in this build");
}

/* strata://HOST[:PORT][,HOST[:PORT]...][/] — a server or the seed list of a cluster. */
static int uri_server(const char *uri, const char *rest, struct err *err)
{
    size_t n = strcspn(rest, "/");
    if (rest[n] == '/' && rest[n + 1] != '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "URI '%.*s' has a path: expected strata://HOST[:PORT][,HOST[:PORT]...]",
                       URI_SHOW_MAX, uri);
    const char *p = rest, *end = rest + n;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *hend = comma ? comma : end;
        const char *colon = memchr(p, ':', (size_t)(hend - p));
        const char *host_end = colon ? colon : hend;
        bool port_ok = colon == NULL || (hend - colon > 1 && hend - colon <= 6);
        for (const char *c = colon ? colon + 1 : hend; port_ok && c < hend; c++)
            port_ok = *c >= '0' && *c <= '9';
        if (host_end == p || !port_ok)
            return err_set(err, STRATA_INVALID_ARGUMENT,
                           "URI '%.*s' has a bad host '%.*s': expected HOST or HOST:PORT",
                           URI_SHOW_MAX, uri, (int)(hend - p), p);
        p = hend + 1;
    }
    return err_set(err, STRATA_INVALID_ARGUMENT,
                   "strata:// URIs (servers and clusters) are not supported yet in this build");
}

int strata_open(const char *uri, struct strata **out, struct err *err)
{
    if (uri == NULL || *uri == '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "empty URI: expected mem:, file:DIR or strata://HOST[:PORT]");
    if (strncmp(uri, "file:", 5) == 0)
        return uri_file(uri, uri + 5, err);
    if (strncmp(uri, "strata://", 9) == 0)
        return uri_server(uri, uri + 9, err);
    if (strncmp(uri, "mem:", 4) != 0)
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "unknown URI '%.*s': expected mem:, file:DIR or strata://HOST[:PORT]",
                       URI_SHOW_MAX, uri);
    if (uri[4] != '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "URI '%.*s': mem: takes nothing after the colon", URI_SHOW_MAX, uri);

    struct strata *db = sm_calloc(1, sizeof *db);
    if (db == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory opening '%s'", uri);
    db->kind = BACKEND_MEM;
    int rc = storage_new(NULL, &db->engine);
    if (rc) {
        sm_free(db);
        return err_set(err, rc, "cannot create the in-memory engine: %s", err_message(rc));
    }
    *out = db;
    return 0;
}

void strata_close(struct strata *db)
{
    if (db == NULL)
        return;
    switch (db->kind) {
    case BACKEND_MEM:
        storage_free(db->engine);
        break;
    }
    sm_free(db);
}

int strata_exec(struct strata *db, const uint8_t *cmd, size_t len, struct buf *result,
                struct err *err)
{
    return strata_exec_flags(db, cmd, len, 0, result, err);
}

int strata_exec_many(struct strata *db, const uint8_t *const *cmds, const size_t *lens,
                     size_t n, unsigned flags, struct buf *results, int *codes,
                     struct err *errs)
{
    for (size_t i = 0; i < n; i++)
        codes[i] = strata_exec_flags(db, cmds[i], lens[i], flags, &results[i], &errs[i]);
    return 0;
}

int strata_exec_flags(struct strata *db, const uint8_t *cmd, size_t len, unsigned flags,
                      struct buf *result, struct err *err)
{
    (void)flags; /* in-process engines are always linearizable */
    switch (db->kind) {
    case BACKEND_MEM:
        /* The client's clock stamps the write; the engine itself never reads a clock. */
        return storage_exec(db->engine, cmd, len, clock_now_us(), result, err);
    }
    return err_set(err, STRATA_INTERNAL, "handle has an unknown backend %d", (int)db->kind);
}
