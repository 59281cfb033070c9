/* libstrata: URI parsing and dispatch to the three backends — an in-process engine
 * (mem:), a durable one-node cluster in-process (file:DIR, local.c) and the network
 * client for servers and clusters (strata://, net.c). Every call is the same in all. */
#include "strata.h"

#include "local.h"
#include "net.h"
#include "storage.h"

#include <stdio.h>
#include <string.h>

/* Which kind of database a handle talks to. */
enum backend {
    BACKEND_MEM = 1,
    BACKEND_FILE,
    BACKEND_NET,
};

struct strata {
    enum backend kind;
    struct storage *engine; /* owned; BACKEND_MEM */
    struct local *local;    /* owned; BACKEND_FILE */
    struct net net;         /* BACKEND_NET */
};

#define URI_SHOW_MAX 200 /* bytes of a bad URI quoted back in an error message */

static int uri_file(const char *uri, const char *dir, struct strata **out, struct err *err)
{
    if (*dir == '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "URI '%s' names no directory: expected file:DIR", uri);
    struct strata *db = sm_calloc(1, sizeof *db);
    if (db == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory opening '%s'", uri);
    db->kind = BACKEND_FILE;
    int rc = local_open(dir, &db->local, err);
    if (rc) {
        sm_free(db);
        return rc;
    }
    *out = db;
    return 0;
}

/* strata://[KEY@]HOST[:PORT][,HOST[:PORT]...][/] — a server or the seed list of a cluster.
 * Parsed (and checked) by net_parse; no I/O until the first command. */
static int uri_server(const char *uri, const char *rest, struct strata **out, struct err *err)
{
    struct strata *db = sm_calloc(1, sizeof *db);
    if (db == NULL)
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory opening '%s'", uri);
    db->kind = BACKEND_NET;
    int rc = net_parse(&db->net, uri, rest, err);
    if (rc) {
        sm_free(db);
        return rc;
    }
    *out = db;
    return 0;
}

int strata_open(const char *uri, struct strata **out, struct err *err)
{
    if (uri == NULL || *uri == '\0')
        return err_set(err, STRATA_INVALID_ARGUMENT,
                       "empty URI: expected mem:, file:DIR or strata://HOST[:PORT]");
    if (strncmp(uri, "file:", 5) == 0)
        return uri_file(uri, uri + 5, out, err);
    if (strncmp(uri, "strata://", 9) == 0)
        return uri_server(uri, uri + 9, out, err);
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
    case BACKEND_FILE:
        local_close(db->local);
        break;
    case BACKEND_NET:
        net_close(&db->net);
        break;
    }
    sm_free(db);
}

/* A program's own idempotency key (the `idem` argument) whose outcome the engine no
 * longer remembers: to the program that is an unknown outcome, as over the network
 * (client/net.c, docs/client.md §5); OUTCOME_FORGOTTEN stays internal. */
static int in_process_outcome(int rc, struct err *err)
{
    if (rc != STRATA_OUTCOME_FORGOTTEN)
        return rc;
    if (err == NULL)
        return STRATA_UNKNOWN_OUTCOME;
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s", err->msg);
    return err_set(err, STRATA_UNKNOWN_OUTCOME, "%s", msg);
}

int strata_exec(struct strata *db, const uint8_t *cmd, size_t len, struct buf *result,
                struct err *err)
{
    return strata_exec_flags(db, cmd, len, 0, result, err);
}

void strata_set_timeouts(struct strata *db, int op_ms, int connect_ms)
{
    if (db->kind == BACKEND_NET)
        net_set_timeouts(&db->net, op_ms, connect_ms);
}

int strata_exec_many(struct strata *db, const uint8_t *const *cmds, const size_t *lens,
                     size_t n, unsigned flags, struct buf *results, int *codes,
                     struct err *errs)
{
    if (db->kind == BACKEND_NET)
        return net_exec_many(&db->net, cmds, lens, n, flags, results, codes, errs);
    for (size_t i = 0; i < n; i++)
        codes[i] = strata_exec_flags(db, cmds[i], lens[i], flags, &results[i], &errs[i]);
    return 0;
}

int strata_exec_flags(struct strata *db, const uint8_t *cmd, size_t len, unsigned flags,
                      struct buf *result, struct err *err)
{
    switch (db->kind) {
    case BACKEND_NET: {
        int code;
        struct err local;
        if (err == NULL)
            err = &local;
        int rc = net_exec_many(&db->net, &cmd, &len, 1, flags, result, &code, err);
        return rc ? err_set(err, rc, "out of memory") : code;
    }
    case BACKEND_FILE:
        return in_process_outcome(local_exec(db->local, cmd, len, result, err), err);
    case BACKEND_MEM:
        /* The client's clock stamps the write; the engine itself never reads a clock. */
        return in_process_outcome(
            storage_exec(db->engine, cmd, len, clock_now_us(), result, err), err);
    }
    return err_set(err, STRATA_INTERNAL, "handle has an unknown backend %d", (int)db->kind);
}
