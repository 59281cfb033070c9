/* The `strata` command-line shell: maps `GROUP VERB ARGS` to one engine command, prints
 * its result for people (or as JSON), and runs an interactive / piped REPL with
 * client-side transactions. Formats and examples: docs/cli.md. */
#include "cli.h"
#include "strata.h"

#include "storage.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <msgpack.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Exit codes of a one-shot command (docs/cli.md). */

/* ---- The command table --------------------------------------------------------------- */

enum arg_kind {
    K_STR,   /* string as given */
    K_VALUE, /* JSON if it parses, else the text as a string */
    K_JSON,  /* JSON, or a usage error */
    K_U64,   /* decimal non-negative integer */
    K_I64,   /* decimal integer */
    K_TRUE,  /* option without a value: sends true */
    K_FIXED, /* option without a value: sends a fixed string */
};

enum pos_flags {
    P_OPT = 1,  /* may be omitted (only trailing positionals) */
    P_REST = 2, /* takes all remaining positionals as an array of strings (at least one) */
};

struct pos_def {
    const char *field; /* argument name in the command map; NULL ends the list */
    const char *meta;  /* name in usage text */
    enum arg_kind kind;
    int flags;
};

enum opt_bit {
    O_AT_VERSION = 1 << 0,
    O_AS_OF = 1 << 1,
    O_PREFIX = 1 << 2,
    O_LIMIT = 1 << 3,
    O_CURSOR = 1 << 4,
    O_START = 1 << 5,
    O_END = 1 << 6,
    O_TYPE = 1 << 7,
    O_BACKWARD = 1 << 8,
    O_THREE_WAY = 1 << 9,
    O_STRATEGY = 1 << 10,
    O_KEEP_LAST = 1 << 11,
    O_KEEP_FOR = 1 << 12,
    O_TO_SHARD = 1 << 13,
    O_CHUNK = 1 << 14,
};
#define O_AT (O_AT_VERSION | O_AS_OF)
#define O_PAGE (O_PREFIX | O_LIMIT | O_CURSOR)

struct opt_def {
    unsigned bit;
    const char *flag;
    const char *meta; /* NULL for options without a value */
    const char *field;
    enum arg_kind kind;
    const char *fixed; /* K_FIXED value */
};

static const struct opt_def opt_defs[] = {
    {O_PREFIX, "--prefix", "P", "prefix", K_STR, NULL},
    {O_LIMIT, "--limit", "N", "limit", K_U64, NULL},
    {O_CURSOR, "--cursor", "C", "cursor", K_STR, NULL},
    {O_START, "--start", "N", "start", K_U64, NULL},
    {O_END, "--end", "N", "end", K_U64, NULL},
    {O_TYPE, "--type", "T", "type", K_STR, NULL},
    {O_BACKWARD, "--backward", NULL, "direction", K_FIXED, "backward"},
    {O_THREE_WAY, "--three-way", NULL, "three_way", K_TRUE, NULL},
    {O_STRATEGY, "--strategy", "strict|source_wins", "strategy", K_STR, NULL},
    {O_KEEP_LAST, "--keep-last", "N", "keep_last", K_U64, NULL},
    {O_KEEP_FOR, "--keep-for-us", "US", "keep_for_us", K_I64, NULL},
    {O_AT_VERSION, "--at-version", "V", "at_version", K_U64, NULL},
    {O_AS_OF, "--as-of", "TS", "as_of", K_I64, NULL},
    {O_TO_SHARD, "--to-shard", "S", "to_shard", K_U64, NULL},
    {O_CHUNK, "--chunk-bytes", "N", "chunk_bytes", K_U64, NULL},
};
#define NOPTS (sizeof opt_defs / sizeof opt_defs[0])

enum verb_flags {
    V_BRANCH = 1, /* carries the session's "branch" and "space" */
    V_WRITE = 2,  /* mutates (queued inside a transaction) */
    V_TXN = 4,    /* a data command: takes part in a REPL transaction */
    V_REPL = 8,   /* only meaningful in the REPL */
};
#define V_READ_DATA (V_BRANCH | V_TXN)
#define V_WRITE_DATA (V_BRANCH | V_TXN | V_WRITE)

/* How a successful result is printed in the human format (docs/cli.md). */
enum fmt {
    FMT_AUTO,    /* map: pretty JSON; array: one item per line; else one line of JSON */
    FMT_WRITE,   /* OK version=N field=JSON ... */
    FMT_GET,     /* the "value" as one line of JSON, (nil) when absent */
    FMT_RAW,     /* the result itself as one line of JSON, (nil) when absent */
    FMT_LIST,    /* one item per line */
    FMT_HISTORY, /* version=N ts=T VALUE | (deleted) */
    FMT_STATUS,  /* cluster status: one "name value" line per field, then the members */
};

enum special { SP_NONE, SP_BRANCH_USE, SP_SPACE_USE, SP_TXN_BEGIN, SP_TXN_COMMIT, SP_TXN_ABORT };

#define MAX_POS 4
struct verb_def {
    const char *group;
    const char *name;
    const char *op;
    int flags;
    struct pos_def pos[MAX_POS];
    unsigned opts;
    enum fmt fmt;
    enum special special;
    const char *help;
};

/* One table row per verb reads better than one field per line. */
/* clang-format off */
#define KEY {"key", "KEY", K_STR, 0}
#define STRV(field, meta) {field, meta, K_STR, 0}

static const struct verb_def verbs[] = {
    {"kv", "put", "kv.put", V_WRITE_DATA, {KEY, {"value", "VALUE", K_VALUE, 0}}, 0, FMT_WRITE,
     SP_NONE, "store VALUE under KEY"},
    {"kv", "get", "kv.get", V_READ_DATA, {KEY}, O_AT, FMT_GET, SP_NONE, "value of KEY"},
    {"kv", "delete", "kv.delete", V_WRITE_DATA, {KEY}, 0, FMT_WRITE, SP_NONE, "delete KEY"},
    {"kv", "exists", "kv.exists", V_READ_DATA, {KEY}, O_AT, FMT_AUTO, SP_NONE,
     "true if KEY exists"},
    {"kv", "list", "kv.list", V_READ_DATA, {{0}}, O_PAGE | O_AT, FMT_LIST, SP_NONE,
     "keys, one per line"},
    {"kv", "scan", "kv.scan", V_READ_DATA, {{0}}, O_PAGE | O_AT, FMT_LIST, SP_NONE,
     "keys and values, KEY<TAB>VALUE per line"},
    {"kv", "count", "kv.count", V_READ_DATA, {{0}}, O_PREFIX | O_AT, FMT_AUTO, SP_NONE,
     "number of keys"},
    {"kv", "history", "kv.history", V_READ_DATA, {KEY}, O_LIMIT | O_AT, FMT_HISTORY, SP_NONE,
     "versions of KEY, newest first"},

    {"json", "set", "json.set", V_WRITE_DATA,
     {KEY, STRV("path", "PATH"), {"value", "VALUE", K_VALUE, 0}}, 0, FMT_WRITE, SP_NONE,
     "set PATH ($ = whole document) of document KEY"},
    {"json", "get", "json.get", V_READ_DATA, {KEY, {"path", "PATH", K_STR, P_OPT}}, O_AT,
     FMT_RAW, SP_NONE, "document KEY, or the value at PATH"},
    {"json", "delete", "json.delete", V_WRITE_DATA, {KEY, {"path", "PATH", K_STR, P_OPT}}, 0,
     FMT_WRITE, SP_NONE, "delete document KEY, or the value at PATH"},
    {"json", "list", "json.list", V_READ_DATA, {{0}}, O_PAGE | O_AT, FMT_LIST, SP_NONE,
     "document keys, one per line"},
    {"json", "history", "json.history", V_READ_DATA, {KEY}, O_LIMIT | O_AT, FMT_HISTORY,
     SP_NONE, "versions of document KEY, newest first"},

    {"event", "append", "event.append", V_WRITE_DATA,
     {STRV("type", "TYPE"), {"payload", "PAYLOAD", K_JSON, 0}}, 0, FMT_WRITE, SP_NONE,
     "append an event to the space's log"},
    {"event", "get", "event.get", V_READ_DATA, {{"seq", "SEQ", K_U64, 0}}, O_AT, FMT_GET,
     SP_NONE, "event number SEQ"},
    {"event", "range", "event.range", V_READ_DATA, {{0}},
     O_START | O_END | O_LIMIT | O_TYPE | O_BACKWARD | O_AT, FMT_LIST, SP_NONE,
     "events, one JSON object per line"},
    {"event", "len", "event.len", V_READ_DATA, {{0}}, O_AT, FMT_AUTO, SP_NONE,
     "number of events"},
    {"event", "types", "event.types", V_READ_DATA, {{0}}, O_AT, FMT_LIST, SP_NONE,
     "event types in use"},
    {"event", "verify", "event.verify_chain", V_READ_DATA, {{0}}, O_AT, FMT_AUTO, SP_NONE,
     "check the log's hash chain"},

    {"state", "set", "state.set", V_WRITE_DATA, {STRV("cell", "CELL"), {"value", "VALUE", K_VALUE, 0}},
     0, FMT_WRITE, SP_NONE, "set CELL to VALUE"},
    {"state", "get", "state.get", V_READ_DATA, {STRV("cell", "CELL")}, O_AT, FMT_GET, SP_NONE,
     "value (and counter) of CELL"},
    {"state", "init", "state.init", V_WRITE_DATA,
     {STRV("cell", "CELL"), {"value", "VALUE", K_VALUE, 0}}, 0, FMT_WRITE, SP_NONE,
     "create CELL with VALUE if it does not exist"},
    {"state", "cas", "state.cas", V_WRITE_DATA,
     {STRV("cell", "CELL"), {"expected_counter", "EXPECTED_COUNTER", K_U64, 0},
      {"value", "VALUE", K_VALUE, 0}},
     0, FMT_WRITE, SP_NONE, "set CELL if its counter is EXPECTED_COUNTER"},
    {"state", "delete", "state.delete", V_WRITE_DATA, {STRV("cell", "CELL")}, 0, FMT_WRITE,
     SP_NONE, "delete CELL"},
    {"state", "list", "state.list", V_READ_DATA, {{0}}, O_PAGE | O_AT, FMT_LIST, SP_NONE,
     "cell names, one per line"},
    {"state", "history", "state.history", V_READ_DATA, {STRV("cell", "CELL")}, O_LIMIT | O_AT,
     FMT_HISTORY, SP_NONE, "versions of CELL, newest first"},

    {"vector", "create", "vector.create_collection", V_WRITE_DATA,
     {STRV("collection", "COLL"), {"dimension", "DIM", K_U64, 0}, STRV("metric", "METRIC")}, 0,
     FMT_WRITE, SP_NONE, "create a collection (METRIC: cosine, euclidean or dot)"},
    {"vector", "drop", "vector.delete_collection", V_WRITE_DATA, {STRV("collection", "COLL")},
     0, FMT_WRITE, SP_NONE, "delete a collection and its vectors"},
    {"vector", "collections", "vector.list_collections", V_READ_DATA, {{0}}, O_AT, FMT_LIST,
     SP_NONE, "collections, one per line"},
    {"vector", "upsert", "vector.upsert", V_WRITE_DATA,
     {STRV("collection", "COLL"), KEY, {"vector", "VECTOR", K_JSON, 0},
      {"metadata", "METADATA", K_JSON, P_OPT}},
     0, FMT_WRITE, SP_NONE, "insert or replace vector KEY"},
    {"vector", "get", "vector.get", V_READ_DATA, {STRV("collection", "COLL"), KEY}, O_AT, FMT_GET,
     SP_NONE, "vector KEY and its metadata"},
    {"vector", "delete", "vector.delete", V_WRITE_DATA, {STRV("collection", "COLL"), KEY}, 0,
     FMT_WRITE, SP_NONE, "delete vector KEY"},
    {"vector", "query", "vector.query", V_READ_DATA,
     {STRV("collection", "COLL"), {"vector", "VECTOR", K_JSON, 0}, {"k", "K", K_U64, 0},
      {"filter", "FILTER", K_JSON, P_OPT}},
     O_AT, FMT_LIST, SP_NONE, "the K nearest vectors, one per line"},

    {"branch", "create", "branch.create", V_WRITE, {STRV("name", "NAME")}, 0, FMT_WRITE, SP_NONE,
     "create an empty branch"},
    {"branch", "fork", "branch.fork", V_WRITE, {STRV("source", "SOURCE"), STRV("name", "DEST")},
     O_AT_VERSION, FMT_WRITE, SP_NONE, "fork SOURCE (now or at version V) as DEST"},
    {"branch", "fork-many", "branch.fork_many", V_WRITE,
     {STRV("source", "SOURCE"), {"names", "NAME", K_STR, P_REST}}, O_AT_VERSION, FMT_LIST,
     SP_NONE, "fork SOURCE into several branches at one version"},
    {"branch", "delete", "branch.delete", V_WRITE, {STRV("name", "NAME")}, 0, FMT_WRITE, SP_NONE,
     "delete a branch"},
    {"branch", "list", "branch.list", 0, {{0}}, 0, FMT_LIST, SP_NONE, "branches, one per line"},
    {"branch", "info", "branch.info", 0, {STRV("name", "NAME")}, 0, FMT_AUTO, SP_NONE,
     "lineage, versions and retention of a branch"},
    {"branch", "diff", "branch.diff", 0, {STRV("a", "A"), STRV("b", "B")}, O_THREE_WAY, FMT_AUTO,
     SP_NONE, "differences between two branches"},
    {"branch", "merge", "branch.merge", V_WRITE, {STRV("source", "SOURCE"), STRV("target", "TARGET")},
     O_STRATEGY, FMT_WRITE, SP_NONE, "merge SOURCE into TARGET"},
    {"branch", "retention", "branch.set_retention", V_WRITE, {STRV("name", "NAME")},
     O_KEEP_LAST | O_KEEP_FOR, FMT_WRITE, SP_NONE, "set the retention policy (0 = keep all)"},
    {"branch", "prune", "branch.prune", V_WRITE, {STRV("name", "NAME")}, 0, FMT_WRITE, SP_NONE,
     "apply the retention policy now"},
    {"branch", "move", "cluster.move_branch", V_WRITE, {STRV("branch", "NAME")},
     O_TO_SHARD | O_CHUNK, FMT_AUTO, SP_NONE,
     "move branch NAME to shard S (servers; follow it with cluster moves)"},
    {"branch", "use", NULL, 0, {STRV("name", "NAME")}, 0, FMT_AUTO, SP_BRANCH_USE,
     "make NAME the session's branch"},

    {"space", "create", "space.create", V_BRANCH | V_WRITE, {STRV("space", "S")}, 0, FMT_WRITE,
     SP_NONE, "create a space in the branch"},
    {"space", "list", "space.list", V_BRANCH, {{0}}, O_AT, FMT_LIST, SP_NONE,
     "spaces of the branch, one per line"},
    {"space", "delete", "space.delete", V_BRANCH | V_WRITE, {STRV("space", "S")}, 0, FMT_WRITE,
     SP_NONE, "delete a space and everything in it"},
    {"space", "use", NULL, V_BRANCH, {STRV("space", "S")}, 0, FMT_AUTO, SP_SPACE_USE,
     "make S the session's space"},

    {"auth", "list", "auth.list", 0, {{0}}, 0, FMT_LIST, SP_NONE,
     "API keys and their grants, one key per line (no secrets; needs admin)"},
    {"auth", "add", "auth.add", V_WRITE,
     {STRV("name", "NAME"), STRV("perm", "PERM"), {"patterns", "PATTERN", K_STR, P_REST}}, 0,
     FMT_AUTO, SP_NONE, "new key NAME with PERM (read|write|admin) on branch patterns; "
     "the server generates the key and prints it once"},
    {"auth", "grant", "auth.grant", V_WRITE,
     {STRV("name", "NAME"), STRV("perm", "PERM"), {"patterns", "PATTERN", K_STR, P_REST}}, 0,
     FMT_AUTO, SP_NONE, "give key NAME PERM on more patterns"},
    {"auth", "revoke", "auth.revoke", V_WRITE,
     {STRV("name", "NAME"), STRV("perm", "PERM"), {"patterns", "PATTERN", K_STR, P_REST}}, 0,
     FMT_AUTO, SP_NONE, "take PERM on these patterns from key NAME"},
    {"auth", "remove", "auth.remove", V_WRITE, {STRV("name", "NAME")}, 0, FMT_AUTO, SP_NONE,
     "delete key NAME"},

    {"cluster", "status", "cluster.status", 0, {{0}}, 0, FMT_STATUS, SP_NONE,
     "members, roles, leader, term, commit and applied index (servers)"},
    {"cluster", "add-node", "cluster.add_member", V_WRITE,
     {{"id", "ID", K_U64, 0}, STRV("address", "HOST:PORT")}, 0, FMT_AUTO, SP_NONE,
     "add node ID at HOST:PORT (it joins as a non-voter, then votes)"},
    {"cluster", "remove-node", "cluster.remove_member", V_WRITE,
     {{"id", "ID", K_U64, 0}, {"timeout_ms", "WAIT_MS", K_U64, P_OPT}}, 0, FMT_AUTO, SP_NONE,
     "drain node ID (its replicas move first), then remove it; waits up to WAIT_MS "
     "(default 60000; TIMEOUT: the drain goes on)"},
    {"cluster", "moves", "cluster.moves", 0, {{0}}, 0, FMT_AUTO, SP_NONE,
     "branch moves in flight and the last ones finished (servers)"},
    {"cluster", "move-abort", "cluster.move_abort", V_WRITE, {STRV("branch", "NAME")}, 0,
     FMT_AUTO, SP_NONE, "abort the move of branch NAME (before its cut-over)"},
    {"cluster", "transfer-leader", "cluster.transfer_leader", V_WRITE,
     {{"id", "ID", K_U64, P_OPT}, {"group", "GROUP", K_U64, P_OPT}}, 0, FMT_AUTO, SP_NONE,
     "hand leadership of GROUP (default 0, the meta group) to node ID (default: the most "
     "up-to-date voter)"},

    {"txn", "begin", "txn.begin", V_REPL, {{0}}, 0, FMT_WRITE, SP_TXN_BEGIN,
     "start a transaction (REPL)"},
    {"txn", "commit", "txn.commit", V_REPL, {{0}}, 0, FMT_WRITE, SP_TXN_COMMIT,
     "commit the queued writes if nothing read changed"},
    {"txn", "abort", NULL, V_REPL, {{0}}, 0, FMT_AUTO, SP_TXN_ABORT,
     "drop the queued writes"},
};
/* clang-format on */
#define NVERBS (sizeof verbs / sizeof verbs[0])

/* ---- Session state --------------------------------------------------------------------- */

struct session {
    struct strata *db;
    char *branch; /* owned */
    char *space;  /* owned */
    bool json;    /* --json given at start */
    bool repl;
    /* An open REPL transaction: reads run at `snapshot` and are remembered; writes are
     * queued. Both lists are concatenated encoded commands (msgpack array bodies). */
    bool in_txn;
    uint64_t snapshot;
    struct buf reads, ops;
    uint32_t nreads, nops;
};

/* Per-line overrides given as global flags before the group. */
struct line_opts {
    const char *branch, *space;
    bool json, no_txn;
};

/* ---- Output ------------------------------------------------------------------------------ */

int report(const char *code_name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s: ", code_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_ERROR;
}

int oom(void)
{
    return report(err_name(STRATA_OUT_OF_MEMORY), "out of memory");
}

static int report_err(const struct err *e)
{
    return report(err_name(e->code), "%s", e->msg[0] ? e->msg : err_message(e->code));
}

static void print_usage_line(FILE *f, const struct verb_def *v)
{
    fprintf(f, "strata %s %s", v->group, v->name);
    for (int i = 0; i < MAX_POS && v->pos[i].field; i++) {
        const struct pos_def *p = &v->pos[i];
        if (p->flags & P_REST)
            fprintf(f, " %s...", p->meta);
        else
            fprintf(f, (p->flags & P_OPT) ? " [%s]" : " %s", p->meta);
    }
    for (size_t i = 0; i < NOPTS; i++) {
        if (!(v->opts & opt_defs[i].bit))
            continue;
        if (opt_defs[i].meta)
            fprintf(f, " [%s %s]", opt_defs[i].flag, opt_defs[i].meta);
        else
            fprintf(f, " [%s]", opt_defs[i].flag);
    }
}

static int usage_error(const struct verb_def *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A command line the CLI cannot turn into a command: error line plus the verb's usage. */
static int usage_error(const struct verb_def *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s: ", err_name(STRATA_INVALID_ARGUMENT));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (v) {
        fputs("usage: ", stderr);
        print_usage_line(stderr, v);
        fputc('\n', stderr);
    }
    return EXIT_USAGE;
}

static void print_help(FILE *f, const char *group)
{
    if (group == NULL) {
        fputs("usage: strata [--uri mem:] [--branch B] [--space S] [--json] GROUP VERB [ARGS]\n"
              "       strata [GLOBAL FLAGS]            (no command: interactive REPL)\n\n",
              f);
    }
    for (size_t i = 0; i < NVERBS; i++) {
        if (group && strcmp(verbs[i].group, group) != 0)
            continue;
        fputs("  ", f);
        print_usage_line(f, &verbs[i]);
        fprintf(f, "\n      %s\n", verbs[i].help);
    }
    if (group == NULL)
        fputs("\nVALUE: JSON if it parses, else the text as a string. PAYLOAD, METADATA,\n"
              "FILTER, VECTOR: JSON. REPL: help [GROUP], quit, exit; --no-txn before a\n"
              "command runs it outside the open transaction. See docs/cli.md.\n",
              f);
}

int pk_write(void *data, const char *p, size_t len)
{
    return buf_append(data, p, len) ? -1 : 0;
}

/* Print one decoded value as JSON (one line unless pretty), followed by `end`. */
static int print_json(const msgpack_object *o, bool pretty, const char *end)
{
    struct buf mp, js;
    buf_init(&mp);
    buf_init(&js);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &mp, pk_write);
    int rc = msgpack_pack_object(&pk, *o) ? STRATA_OUT_OF_MEMORY : 0;
    if (rc == 0)
        rc = storage_value_to_json(mp.data, mp.len, &js, pretty);
    if (rc == 0) {
        fwrite(js.data, 1, js.len, stdout);
        fputs(end, stdout);
    }
    buf_close(&mp);
    buf_close(&js);
    return rc;
}

/* A list item: strings bare (keys, names), anything else as one line of JSON. */
static int print_item(const msgpack_object *o, const char *end)
{
    if (o->type == MSGPACK_OBJECT_STR) {
        fwrite(o->via.str.ptr, 1, o->via.str.size, stdout);
        fputs(end, stdout);
        return 0;
    }
    return print_json(o, false, end);
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static bool key_is(const msgpack_object *k, const char *s)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) &&
           memcmp(k->via.str.ptr, s, k->via.str.size) == 0;
}

/* " name=JSON" for every map field except those in `skip` (NULL-terminated). */
static int print_fields(const msgpack_object *m, const char *const *skip)
{
    int rc = 0;
    for (uint32_t i = 0; rc == 0 && i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        bool skipped = k->type != MSGPACK_OBJECT_STR;
        for (const char *const *s = skip; !skipped && *s; s++)
            skipped = key_is(k, *s);
        if (skipped)
            continue;
        printf(" %.*s=", (int)k->via.str.size, k->via.str.ptr);
        rc = print_json(&m->via.map.ptr[i].val, false, "");
    }
    return rc;
}

static int render_write(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean) {
        puts("OK");
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_MAP)
        return print_json(o, false, "\n");
    /* A merge reports "merged"; strict conflicts come back as a CONFLICT error instead,
     * and source_wins lists the conflicts it resolved. */
    const msgpack_object *m = map_get(o, "merged");
    bool refused = m && m->type == MSGPACK_OBJECT_BOOLEAN && !m->via.boolean;
    fputs(refused ? "CONFLICT" : "OK", stdout);
    const msgpack_object *ver = map_get(o, "version");
    int rc = 0;
    if (ver) {
        fputs(" version=", stdout);
        rc = print_json(ver, false, "");
    }
    static const char *const skip[] = {"version", "ts", NULL};
    if (rc == 0)
        rc = print_fields(o, skip);
    putchar('\n');
    return rc;
}

static int render_get(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        puts("(nil)");
        return 0;
    }
    const msgpack_object *val = map_get(o, "value");
    if (val == NULL) /* a record without a single value (an event, a vector): all of it */
        return print_json(o, false, "\n");
    const msgpack_object *counter = map_get(o, "counter");
    int rc = print_json(val, false, counter ? "" : "\n");
    if (rc == 0 && counter) {
        fputs(" (counter ", stdout);
        rc = print_json(counter, false, ")\n");
    }
    return rc;
}

static int render_list(const msgpack_object *o)
{
    int rc = 0;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; rc == 0 && i < o->via.array.size; i++)
            rc = print_item(&o->via.array.ptr[i], "\n");
        return rc;
    }
    if (o->type != MSGPACK_OBJECT_MAP)
        return print_json(o, false, "\n");
    /* A page ({"keys"|"items": [...], "cursor": ...}) or a record holding one list. */
    for (uint32_t i = 0; rc == 0 && i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (v->type != MSGPACK_OBJECT_ARRAY)
            continue;
        for (uint32_t j = 0; rc == 0 && j < v->via.array.size; j++) {
            const msgpack_object *it = &v->via.array.ptr[j];
            if (key_is(k, "items") && it->type == MSGPACK_OBJECT_ARRAY && it->via.array.size == 2) {
                rc = print_item(&it->via.array.ptr[0], "\t");
                if (rc == 0)
                    rc = print_json(&it->via.array.ptr[1], false, "\n");
            } else {
                rc = print_item(it, "\n");
            }
        }
    }
    for (uint32_t i = 0; rc == 0 && i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (v->type == MSGPACK_OBJECT_ARRAY || v->type == MSGPACK_OBJECT_NIL ||
            k->type != MSGPACK_OBJECT_STR)
            continue;
        if (key_is(k, "cursor")) {
            fputs("(more: --cursor ", stdout);
            rc = print_item(v, ")\n");
        } else {
            printf("(%.*s: ", (int)k->via.str.size, k->via.str.ptr);
            rc = print_json(v, false, ")\n");
        }
    }
    return rc;
}

static int render_history(const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return render_list(o);
    static const char *const skip[] = {"version", "ts", "value", "deleted", NULL};
    int rc = 0;
    for (uint32_t i = 0; rc == 0 && i < o->via.array.size; i++) {
        const msgpack_object *it = &o->via.array.ptr[i];
        const msgpack_object *ver = map_get(it, "version"), *ts = map_get(it, "ts");
        const msgpack_object *val = map_get(it, "value"), *del = map_get(it, "deleted");
        if (ver == NULL || ts == NULL) {
            rc = print_json(it, false, "\n");
            continue;
        }
        fputs("version=", stdout);
        rc = print_json(ver, false, " ts=");
        if (rc == 0)
            rc = print_json(ts, false, "");
        if (rc == 0 && del && del->type == MSGPACK_OBJECT_BOOLEAN && del->via.boolean)
            fputs(" (deleted)", stdout);
        else if (rc == 0 && val) {
            putchar(' ');
            rc = print_json(val, false, "");
        }
        if (rc == 0)
            rc = print_fields(it, skip);
        putchar('\n');
    }
    return rc;
}

/* cluster status, human format: "name value" lines, then one line per member. */
static int render_status(const msgpack_object *o)
{
    static const char *const fields[] = {"cluster_id", "node_id", "address", "role", "term",
                                         "commit_index", "applied_index", "last_index",
                                         "forwarded", NULL};
    if (o->type != MSGPACK_OBJECT_MAP)
        return print_json(o, true, "\n");
    int rc = 0;
    for (const char *const *f = fields; *f && rc == 0; f++) {
        const msgpack_object *v = map_get(o, *f);
        if (v == NULL)
            continue;
        printf("%-14s", *f);
        rc = print_json(v, false, "\n");
    }
    const msgpack_object *leader = map_get(o, "leader"), *lid = map_get(o, "leader_id");
    if (rc == 0 && leader && leader->type == MSGPACK_OBJECT_STR && leader->via.str.size) {
        printf("%-14s%.*s", "leader", (int)leader->via.str.size, leader->via.str.ptr);
        if (lid && lid->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            printf(" (node %llu)", (unsigned long long)lid->via.u64);
        putchar('\n');
    }
    const msgpack_object *ms = map_get(o, "members");
    if (rc == 0 && ms && ms->type == MSGPACK_OBJECT_ARRAY) {
        puts("members");
        for (uint32_t i = 0; i < ms->via.array.size; i++) {
            const msgpack_object *m = &ms->via.array.ptr[i];
            const msgpack_object *id = map_get(m, "id"), *ad = map_get(m, "address"),
                                 *vo = map_get(m, "voter"), *le = map_get(m, "leader");
            printf("  %llu %.*s%s%s\n",
                   id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                       ? (unsigned long long)id->via.u64
                       : 0ull,
                   ad && ad->type == MSGPACK_OBJECT_STR ? (int)ad->via.str.size : 0,
                   ad && ad->type == MSGPACK_OBJECT_STR ? ad->via.str.ptr : "",
                   vo && vo->type == MSGPACK_OBJECT_BOOLEAN && vo->via.boolean ? " voter"
                                                                                : " non-voter",
                   le && le->type == MSGPACK_OBJECT_BOOLEAN && le->via.boolean ? " leader" : "");
        }
    }
    return rc;
}

/* Print an encoded result in the session's format. */
static int render(const uint8_t *mp, size_t len, enum fmt fmt, bool json)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    int rc;
    if (msgpack_unpack((const char *)mp, len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS) {
        rc = report(err_name(STRATA_PROTOCOL_ERROR), "result is not one msgpack value");
        goto out;
    }
    if (json) {
        rc = print_json(&o, false, "\n");
        goto out;
    }
    switch (fmt) {
    case FMT_WRITE:
        rc = render_write(&o);
        break;
    case FMT_GET:
        rc = render_get(&o);
        break;
    case FMT_STATUS:
        rc = render_status(&o);
        break;
    case FMT_RAW:
        rc = o.type == MSGPACK_OBJECT_NIL ? (puts("(nil)"), 0) : print_json(&o, false, "\n");
        break;
    case FMT_LIST:
        rc = render_list(&o);
        break;
    case FMT_HISTORY:
        rc = render_history(&o);
        break;
    default:
        if (o.type == MSGPACK_OBJECT_NIL)
            rc = (puts("(nil)"), 0);
        else if (o.type == MSGPACK_OBJECT_ARRAY)
            rc = render_list(&o);
        else
            rc = print_json(&o, o.type == MSGPACK_OBJECT_MAP, "\n");
        break;
    }
    if (rc)
        rc = report(err_name(rc), "cannot print the result");
out:
    fflush(stdout);
    msgpack_zone_destroy(&z);
    return rc ? EXIT_ERROR : EXIT_OK;
}

/* ---- Building a command ------------------------------------------------------------------ */

#define MAX_FIELDS 16

/* A command map under construction: fields in insertion order, each value already
 * encoded. Setting a field twice replaces it (a positional space overrides the session's). */
struct cmd {
    struct {
        const char *name; /* static */
        struct buf val;
    } f[MAX_FIELDS];
    int n;
};

static void cmd_init(struct cmd *c)
{
    c->n = 0;
}

static void cmd_close(struct cmd *c)
{
    for (int i = 0; i < c->n; i++)
        buf_close(&c->f[i].val);
    c->n = 0;
}

/* The (emptied) value buffer of field `name`, added if new. */
static struct buf *cmd_field(struct cmd *c, const char *name)
{
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->f[i].name, name) == 0) {
            buf_reset(&c->f[i].val);
            return &c->f[i].val;
        }
    }
    assert(c->n < MAX_FIELDS); /* the verb table never has this many arguments */
    c->f[c->n].name = name;
    buf_init(&c->f[c->n].val);
    return &c->f[c->n++].val;
}

static int cmd_str(struct cmd *c, const char *name, const char *s)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd_field(c, name), pk_write);
    size_t n = strlen(s);
    return (msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, s, n)) ? STRATA_OUT_OF_MEMORY
                                                                          : 0;
}

static int cmd_u64(struct cmd *c, const char *name, uint64_t v)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd_field(c, name), pk_write);
    return msgpack_pack_uint64(&pk, v) ? STRATA_OUT_OF_MEMORY : 0;
}

static int cmd_i64(struct cmd *c, const char *name, int64_t v)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd_field(c, name), pk_write);
    return msgpack_pack_int64(&pk, v) ? STRATA_OUT_OF_MEMORY : 0;
}

static int cmd_true(struct cmd *c, const char *name)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd_field(c, name), pk_write);
    return msgpack_pack_true(&pk) ? STRATA_OUT_OF_MEMORY : 0;
}

static bool cmd_has(const struct cmd *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->f[i].name, name) == 0)
            return true;
    return false;
}

/* Field `name` as an unsigned integer (0 when absent or not one). */
static uint64_t cmd_get_u64(const struct cmd *c, const char *name)
{
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->f[i].name, name) != 0)
            continue;
        msgpack_zone z;
        msgpack_zone_init(&z, 64);
        msgpack_object o;
        size_t off = 0;
        uint64_t v = 0;
        if (msgpack_unpack((const char *)c->f[i].val.data, c->f[i].val.len, &off, &z, &o) ==
                MSGPACK_UNPACK_SUCCESS &&
            o.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            v = o.via.u64;
        msgpack_zone_destroy(&z);
        return v;
    }
    return 0;
}

/* Append the command as one msgpack map to out. */
static int cmd_encode(const struct cmd *c, struct buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pk_write);
    if (msgpack_pack_map(&pk, (size_t)c->n))
        return STRATA_OUT_OF_MEMORY;
    for (int i = 0; i < c->n; i++) {
        size_t n = strlen(c->f[i].name);
        if (msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, c->f[i].name, n) ||
            buf_append(out, c->f[i].val.data, c->f[i].val.len))
            return STRATA_OUT_OF_MEMORY;
    }
    return 0;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static bool parse_i64(const char *s, int64_t *out)
{
    const char *d = *s == '-' ? s + 1 : s;
    if (*d < '0' || *d > '9')
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* Encode one textual argument as field `field` of kind `kind`. Returns 0, or EXIT_USAGE
 * after printing why. */
static int put_arg(const struct verb_def *v, struct cmd *c, const char *field, const char *meta,
                   enum arg_kind kind, const char *text)
{
    uint64_t u;
    int64_t i;
    struct err e;
    int rc = 0;
    switch (kind) {
    case K_STR:
        rc = cmd_str(c, field, text);
        break;
    case K_U64:
        if (!parse_u64(text, &u))
            return usage_error(v, "%s must be a non-negative integer, got '%s'", meta, text);
        rc = cmd_u64(c, field, u);
        break;
    case K_I64:
        if (!parse_i64(text, &i))
            return usage_error(v, "%s must be an integer, got '%s'", meta, text);
        rc = cmd_i64(c, field, i);
        break;
    case K_VALUE:
    case K_JSON: {
        struct buf *b = cmd_field(c, field);
        err_clear(&e);
        rc = storage_json_to_value(text, strlen(text), b, &e);
        if (rc == 0)
            break;
        buf_reset(b);
        if (kind == K_JSON || rc != STRATA_INVALID_ARGUMENT || strncmp(e.msg, "invalid JSON", 12))
            return usage_error(v, "%s is not valid JSON (%s)", meta, e.msg);
        rc = cmd_str(c, field, text); /* VALUE: not JSON, so the text itself */
        break;
    }
    case K_TRUE:
    case K_FIXED:
        break;
    }
    return rc ? oom() : 0;
}

/* Fill c from the words after GROUP VERB: positionals in table order, options anywhere,
 * `--` ends options. *pos0 is the first positional word (borrowed from argv) or NULL.
 * Returns 0, or an exit code after printing why. */
static int parse_args(const struct verb_def *v, struct cmd *c, int argc, char **argv,
                      const char **pos0)
{
    int npos = 0, rc;
    bool opts_done = false;
    const char **rest = NULL;
    int nrest = 0;
    while (npos < MAX_POS && v->pos[npos].field)
        npos++;
    const char *posv[MAX_POS];
    int got = 0;
    rest = sm_malloc(((size_t)argc + 1) * sizeof *rest);
    if (rest == NULL)
        return oom();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!opts_done && strcmp(a, "--") == 0) {
            opts_done = true;
            continue;
        }
        if (!opts_done && strncmp(a, "--", 2) == 0) {
            const struct opt_def *o = NULL;
            size_t flen = strcspn(a, "=");
            for (size_t j = 0; j < NOPTS && o == NULL; j++)
                if ((v->opts & opt_defs[j].bit) && strlen(opt_defs[j].flag) == flen &&
                    strncmp(opt_defs[j].flag, a, flen) == 0)
                    o = &opt_defs[j];
            if (o == NULL) {
                rc = usage_error(v, "unknown option '%.*s' for '%s %s'", (int)flen, a, v->group,
                                 v->name);
                goto out;
            }
            const char *val = a[flen] == '=' ? a + flen + 1 : NULL;
            if (o->meta == NULL) {
                if (val) {
                    rc = usage_error(v, "option %s takes no value", o->flag);
                    goto out;
                }
                rc = o->kind == K_TRUE ? cmd_true(c, o->field) : cmd_str(c, o->field, o->fixed);
                if (rc) {
                    rc = oom();
                    goto out;
                }
                continue;
            }
            if (val == NULL) {
                if (i + 1 >= argc) {
                    rc = usage_error(v, "option %s needs a value (%s)", o->flag, o->meta);
                    goto out;
                }
                val = argv[++i];
            }
            if ((rc = put_arg(v, c, o->field, o->flag, o->kind, val)))
                goto out;
            continue;
        }
        if (got < npos && !(v->pos[got].flags & P_REST))
            posv[got++] = a;
        else if (got < npos)
            rest[nrest++] = a;
        else {
            rc = usage_error(v, "unexpected argument '%s'", a);
            goto out;
        }
    }
    for (int p = 0; p < npos; p++) {
        const struct pos_def *d = &v->pos[p];
        if (d->flags & P_REST) {
            if (nrest == 0) {
                rc = usage_error(v, "missing %s", d->meta);
                goto out;
            }
            struct buf *b = cmd_field(c, d->field);
            msgpack_packer pk;
            msgpack_packer_init(&pk, b, pk_write);
            rc = msgpack_pack_array(&pk, (size_t)nrest);
            for (int r = 0; rc == 0 && r < nrest; r++) {
                size_t n = strlen(rest[r]);
                rc = msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, rest[r], n);
            }
            if (rc) {
                rc = oom();
                goto out;
            }
            continue;
        }
        if (p >= got) {
            if (d->flags & P_OPT)
                continue;
            rc = usage_error(v, "missing %s", d->meta);
            goto out;
        }
        if ((rc = put_arg(v, c, d->field, d->meta, d->kind, posv[p])))
            goto out;
    }
    *pos0 = got > 0 ? posv[0] : (nrest > 0 ? rest[0] : NULL);
    rc = 0;
out:
    sm_free(rest);
    return rc;
}

/* cluster remove-node waits this long for the drain unless WAIT_MS is given. */
#define REMOVE_WAIT_MS 60000

/* ---- Executing -------------------------------------------------------------------------- */

/* Send an encoded command; print its result or the error. Keeps the raw result in
 * `keep` when given (txn begin needs the snapshot). */
static int send_cmd(struct session *s, const struct buf *enc, enum fmt fmt, bool json, bool quiet,
                    struct buf *keep)
{
    struct buf res;
    struct err e;
    buf_init(&res);
    err_clear(&e);
    int rc = strata_exec(s->db, enc->data, enc->len, &res, &e);
    if (rc)
        rc = report_err(&e);
    else if (!quiet)
        rc = render(res.data, res.len, fmt, json);
    if (rc == 0 && keep)
        rc = buf_append(keep, res.data, res.len) ? oom() : 0;
    buf_close(&res);
    return rc;
}

static void txn_reset(struct session *s)
{
    s->in_txn = false;
    buf_reset(&s->reads);
    buf_reset(&s->ops);
    s->nreads = s->nops = 0;
}

static int replace_str(char **slot, const char *v)
{
    char *n = sm_strdup(v);
    if (n == NULL)
        return oom();
    sm_free(*slot);
    *slot = n;
    return 0;
}

static int txn_begin(struct session *s, const struct verb_def *v, bool json)
{
    if (s->in_txn)
        return report("INVALID_ARGUMENT",
                      "a transaction is already open (txn commit or txn abort first)");
    struct cmd c;
    struct buf enc, res;
    cmd_init(&c);
    buf_init(&enc);
    buf_init(&res);
    int rc = cmd_str(&c, "op", v->op) || cmd_encode(&c, &enc)
                 ? oom()
                 : send_cmd(s, &enc, v->fmt, json, false, &res);
    if (rc == 0) {
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        msgpack_object o;
        size_t off = 0;
        const msgpack_object *snap = NULL;
        if (msgpack_unpack((const char *)res.data, res.len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS)
            snap = map_get(&o, "snapshot");
        if (snap && snap->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            txn_reset(s);
            s->in_txn = true;
            s->snapshot = snap->via.u64;
        } else {
            rc = report("PROTOCOL_ERROR", "txn.begin returned no \"snapshot\" version");
        }
        msgpack_zone_destroy(&z);
    }
    cmd_close(&c);
    buf_close(&enc);
    buf_close(&res);
    return rc;
}

static int pack_list(struct buf *enc, const char *name, const struct buf *items, uint32_t n)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, enc, pk_write);
    size_t len = strlen(name);
    return (msgpack_pack_str(&pk, len) || msgpack_pack_str_body(&pk, name, len) ||
            msgpack_pack_array(&pk, n) || buf_append(enc, items->data, items->len))
               ? STRATA_OUT_OF_MEMORY
               : 0;
}

/* txn.commit {branch, snapshot, reads, ops}. The transaction ends whatever the outcome:
 * after a CONFLICT the application re-reads and tries again in a new one. */
static int txn_commit(struct session *s, const struct verb_def *v, bool json)
{
    if (!s->in_txn)
        return report("INVALID_ARGUMENT", "no transaction is open (txn begin first)");
    struct buf enc;
    buf_init(&enc);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &enc, pk_write);
    size_t blen = strlen(s->branch);
    int rc = msgpack_pack_map(&pk, 5) || msgpack_pack_str(&pk, 2) ||
             msgpack_pack_str_body(&pk, "op", 2) || msgpack_pack_str(&pk, strlen(v->op)) ||
             msgpack_pack_str_body(&pk, v->op, strlen(v->op)) || msgpack_pack_str(&pk, 6) ||
             msgpack_pack_str_body(&pk, "branch", 6) || msgpack_pack_str(&pk, blen) ||
             msgpack_pack_str_body(&pk, s->branch, blen) || msgpack_pack_str(&pk, 8) ||
             msgpack_pack_str_body(&pk, "snapshot", 8) || msgpack_pack_uint64(&pk, s->snapshot) ||
             pack_list(&enc, "reads", &s->reads, s->nreads) ||
             pack_list(&enc, "ops", &s->ops, s->nops);
    rc = rc ? oom() : send_cmd(s, &enc, v->fmt, json, false, NULL);
    txn_reset(s);
    buf_close(&enc);
    return rc;
}

/* branch use / space use: check the target with a harmless read, then switch. */
static int use(struct session *s, const struct verb_def *v, struct cmd *c, const char *name,
               bool json)
{
    if (v->special == SP_BRANCH_USE && s->in_txn)
        return report("INVALID_ARGUMENT",
                      "cannot switch branches inside a transaction (txn commit or txn abort "
                      "first)");
    struct buf enc;
    buf_init(&enc);
    /* branch.info fails with BRANCH_NOT_FOUND; space.list validates the space name. */
    int rc = cmd_str(c, "op", v->special == SP_BRANCH_USE ? "branch.info" : "space.list") ||
                     cmd_encode(c, &enc)
                 ? oom()
                 : send_cmd(s, &enc, FMT_AUTO, false, true, NULL);
    if (rc == 0)
        rc = replace_str(v->special == SP_BRANCH_USE ? &s->branch : &s->space, name);
    if (rc == 0)
        puts(json ? "true" : "OK");
    buf_close(&enc);
    return rc;
}

/* Arguments after the group and verb, plus the per-line flags, to one executed command. */
static int run_verb(struct session *s, const struct verb_def *v, const struct line_opts *lo,
                    int argc, char **argv)
{
    bool json = s->json || lo->json;
    if ((v->flags & V_REPL) && !s->repl)
        return usage_error(v, "'%s %s' is only available in the REPL", v->group, v->name);
    if (v->special == SP_TXN_BEGIN || v->special == SP_TXN_COMMIT || v->special == SP_TXN_ABORT) {
        if (argc > 0)
            return usage_error(v, "unexpected argument '%s'", argv[0]);
        if (v->special == SP_TXN_BEGIN)
            return txn_begin(s, v, json);
        if (v->special == SP_TXN_COMMIT)
            return txn_commit(s, v, json);
        if (!s->in_txn)
            return report("INVALID_ARGUMENT", "no transaction is open");
        txn_reset(s);
        puts(json ? "true" : "OK");
        return 0;
    }

    const char *branch = lo->branch ? lo->branch : s->branch;
    const char *space = lo->space ? lo->space : s->space;
    bool txn = s->in_txn && !lo->no_txn;
    struct cmd c;
    struct buf enc;
    cmd_init(&c);
    buf_init(&enc);
    int rc = 0;
    if (v->op && cmd_str(&c, "op", v->op))
        rc = oom();
    if (rc == 0 && (v->flags & V_BRANCH) &&
        (cmd_str(&c, "branch", branch) || cmd_str(&c, "space", space)))
        rc = oom();
    const char *pos0 = NULL;
    if (rc == 0)
        rc = parse_args(v, &c, argc, argv, &pos0);
    if (rc)
        goto out;

    if (v->special == SP_BRANCH_USE || v->special == SP_SPACE_USE) {
        rc = use(s, v, &c, pos0, json);
        goto out;
    }
    if (txn && !(v->flags & V_TXN) && (v->flags & V_WRITE)) {
        rc = report("INVALID_ARGUMENT",
                    "'%s %s' cannot run inside a transaction (txn commit or txn abort first, "
                    "or prefix it with --no-txn)",
                    v->group, v->name);
        goto out;
    }
    if (txn && (v->flags & V_TXN)) {
        if (strcmp(branch, s->branch) != 0) {
            rc = report("INVALID_ARGUMENT", "a transaction uses one branch ('%s')", s->branch);
            goto out;
        }
        if (v->flags & V_WRITE) {
            size_t mark = s->ops.len;
            if (cmd_encode(&c, &s->ops)) {
                s->ops.len = mark; /* drop a partly appended command */
                rc = oom();
                goto out;
            }
            s->nops++;
            if (json)
                printf("{\"queued\":%u}\n", s->nops);
            else
                puts("queued");
            goto out;
        }
        /* Reads see the snapshot and are remembered for the commit's conflict check. */
        if (cmd_has(&c, "at_version") || cmd_has(&c, "as_of")) {
            rc = report("INVALID_ARGUMENT",
                        "--at-version/--as-of cannot be used inside a transaction (reads are "
                        "at its snapshot %llu)",
                        (unsigned long long)s->snapshot);
            goto out;
        }
        if (cmd_u64(&c, "at_version", s->snapshot) || cmd_encode(&c, &enc)) {
            rc = oom();
            goto out;
        }
        rc = send_cmd(s, &enc, v->fmt, json, false, NULL);
        if (rc == 0) {
            if (buf_append(&s->reads, enc.data, enc.len)) {
                rc = oom();
                goto out;
            }
            s->nreads++;
        }
        goto out;
    }
    bool drain = v->op && strcmp(v->op, "cluster.remove_member") == 0;
    if (drain && !cmd_has(&c, "timeout_ms") && cmd_u64(&c, "timeout_ms", REMOVE_WAIT_MS)) {
        rc = oom();
        goto out;
    }
    if (cmd_encode(&c, &enc)) {
        rc = oom();
        goto out;
    }
    if (drain) /* the server answers when the drain is over: wait a little longer */
        strata_set_timeouts(s->db, (int)(cmd_get_u64(&c, "timeout_ms") > 600000
                                             ? 610000
                                             : cmd_get_u64(&c, "timeout_ms") + 10000),
                            0);
    rc = send_cmd(s, &enc, v->fmt, json, false, NULL);
out:
    cmd_close(&c);
    buf_close(&enc);
    return rc;
}

/* Leading global flags of a command line. Returns the index of the first other word, or
 * -1 after a usage error. `uri` is NULL where --uri is not allowed (REPL lines). */
static int parse_globals(int argc, char **argv, struct line_opts *lo, const char **uri, bool *help)
{
    int i = 0;
    for (; i < argc && strncmp(argv[i], "-", 1) == 0; i++) {
        const char *a = argv[i];
        size_t flen = strcspn(a, "=");
        const char *val = a[flen] == '=' ? a + flen + 1 : NULL;
        const char **slot = NULL;
        if (strcmp(a, "--json") == 0)
            lo->json = true;
        else if (strcmp(a, "--no-txn") == 0)
            lo->no_txn = true;
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            *help = true;
        else if (flen == 8 && strncmp(a, "--branch", 8) == 0)
            slot = &lo->branch;
        else if (flen == 7 && strncmp(a, "--space", 7) == 0)
            slot = &lo->space;
        else if (flen == 5 && strncmp(a, "--uri", 5) == 0 && uri)
            slot = uri;
        else if (flen == 5 && strncmp(a, "--uri", 5) == 0)
            return usage_error(NULL, "--uri can only be given when starting strata"), -1;
        else
            return usage_error(NULL, "unknown global flag '%s' (try 'help')", a), -1;
        if (slot == NULL)
            continue;
        if (val == NULL && i + 1 >= argc)
            return usage_error(NULL, "flag %.*s needs a value", (int)flen, a), -1;
        *slot = val ? val : argv[++i];
    }
    return i;
}

static const struct verb_def *find_verb(const char *group, const char *name, bool *group_found)
{
    *group_found = false;
    for (size_t i = 0; i < NVERBS; i++) {
        if (strcmp(verbs[i].group, group) != 0)
            continue;
        *group_found = true;
        if (name && strcmp(verbs[i].name, name) == 0)
            return &verbs[i];
    }
    return NULL;
}

/* One command line (global flags, GROUP, VERB, ARGS). Returns an exit code. */
static int run_line(struct session *s, int argc, char **argv)
{
    struct line_opts lo = {0};
    bool help = false;
    int i = parse_globals(argc, argv, &lo, NULL, &help);
    if (i < 0)
        return EXIT_USAGE;
    if (help || (i < argc && strcmp(argv[i], "help") == 0)) {
        const char *g = (!help && i + 1 < argc) ? argv[i + 1] : NULL;
        bool known;
        if (g && (find_verb(g, NULL, &known), !known))
            return usage_error(NULL, "unknown group '%s'", g);
        print_help(stdout, g);
        return EXIT_OK;
    }
    if (i >= argc)
        return usage_error(NULL, "missing command (try 'help')");
    bool found;
    const struct verb_def *v = find_verb(argv[i], i + 1 < argc ? argv[i + 1] : NULL, &found);
    if (!found)
        return usage_error(NULL,
                           "unknown group '%s' (kv, json, event, state, vector, branch, space, "
                           "txn; try 'help')",
                           argv[i]);
    if (v == NULL) {
        if (i + 1 < argc)
            usage_error(NULL, "unknown command '%s %s'", argv[i], argv[i + 1]);
        else
            usage_error(NULL, "missing verb for '%s'", argv[i]);
        print_help(stderr, argv[i]);
        return EXIT_USAGE;
    }
    return run_verb(s, v, &lo, argc - i - 2, argv + i + 2);
}

/* ---- REPL --------------------------------------------------------------------------------- */

struct words {
    char **v; /* pointers into text */
    int n;
    char *text; /* owned: the unquoted words, NUL-separated */
};

static void words_free(struct words *w)
{
    sm_free(w->v);
    sm_free(w->text);
    w->v = NULL;
    w->text = NULL;
    w->n = 0;
}

/* Split a line into words, shell-like: whitespace separates; '...' keeps everything
 * literally except \' ; "..." keeps everything except \" and \\ ; outside quotes a
 * backslash escapes the next character. Returns 0 or INVALID_ARGUMENT (unterminated). */
static int split_line(const char *line, struct words *w, struct err *err)
{
    size_t len = strlen(line);
    w->n = 0;
    w->text = sm_malloc(len + 1);
    w->v = sm_malloc((len / 2 + 2) * sizeof *w->v);
    if (w->text == NULL || w->v == NULL) {
        words_free(w);
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory");
    }
    /* Unquoted words never grow and need a separator, so len + 1 bytes suffice. */
    char *o = w->text;
    const char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (*p == '\0')
            break;
        w->v[w->n++] = o;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            char q = *p;
            if (q == '\'' || q == '"') {
                p++;
                while (*p && *p != q) {
                    if (*p == '\\' && (p[1] == q || (q == '"' && p[1] == '\\')))
                        p++;
                    *o++ = *p++;
                }
                if (*p != q) {
                    words_free(w);
                    return err_set(err, STRATA_INVALID_ARGUMENT, "unterminated %c quote", q);
                }
                p++;
            } else if (q == '\\' && p[1]) {
                *o++ = p[1];
                p += 2;
            } else {
                *o++ = *p++;
            }
        }
        *o++ = '\0';
    }
    return 0;
}

static int repl(struct session *s)
{
    bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t cap = 0;
    s->repl = true;
    for (;;) {
        if (tty) {
            printf("strata[%s/%s]> ", s->branch, s->space);
            fflush(stdout);
        }
        if (getline(&line, &cap, stdin) < 0)
            break;
        struct words w = {0};
        struct err e;
        err_clear(&e);
        if (split_line(line, &w, &e)) {
            report_err(&e);
            continue;
        }
        if (w.n == 0 || w.v[0][0] == '#') { /* blank line or comment */
            words_free(&w);
            continue;
        }
        bool quit = w.n == 1 && (strcmp(w.v[0], "quit") == 0 || strcmp(w.v[0], "exit") == 0);
        if (!quit)
            run_line(s, w.n, w.v);
        fflush(stdout);
        words_free(&w);
        if (quit)
            break;
    }
    if (tty)
        putchar('\n');
    if (s->in_txn)
        fprintf(stderr,
                "warning: the open transaction was not committed (%u queued writes "
                "dropped)\n",
                s->nops);
    free(line);
    return EXIT_OK;
}


int main(int argc, char **argv)
{
    /* The library logs (for file: databases, the Raft group) at INFO; a CLI user wants
     * only warnings and errors on stderr. */
    log_set_level(LOG_WARN);
    struct session s = {0};
    struct line_opts lo = {0};
    const char *uri = "mem:";
    bool help = false;
    int rc;
    buf_init(&s.reads);
    buf_init(&s.ops);
    int i = parse_globals(argc - 1, argv + 1, &lo, &uri, &help);
    if (i < 0)
        return EXIT_USAGE;
    if (help) {
        print_help(stdout, NULL);
        return EXIT_OK;
    }
    if (lo.no_txn)
        return usage_error(NULL, "--no-txn is a REPL line flag");
    s.json = lo.json;
    s.branch = sm_strdup(lo.branch ? lo.branch : "default");
    s.space = sm_strdup(lo.space ? lo.space : "default");
    if (s.branch == NULL || s.space == NULL) {
        rc = oom();
        goto out;
    }
    struct err e;
    err_clear(&e);
    if (strata_open(uri, &s.db, &e)) {
        rc = report_err(&e);
        goto out;
    }
    if (i + 1 < argc && strcmp(argv[1 + i], "backup") == 0)
        rc = backup_main(s.db, s.json, argc - 1 - i, argv + 1 + i);
    else if (i + 1 >= argc)
        rc = repl(&s);
    else
        rc = run_line(&s, argc - 1 - i, argv + 1 + i);
    strata_close(s.db);
out:
    if (fflush(stdout) != 0 && rc == 0)
        rc = EXIT_ERROR;
    sm_free(s.branch);
    sm_free(s.space);
    buf_close(&s.reads);
    buf_close(&s.ops);
    return rc;
}
