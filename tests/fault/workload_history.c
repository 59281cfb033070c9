/* Reading a history back (for final and compare): every register and log it names, and
 * each append's outcome; and the read commands those steps send for them. */
#include "workload.h"

/* ---- Reading a history back ------------------------------------------------------------ */

static struct object *objects_get(struct objects *s, const char *branch, const char *key,
                                  bool log)
{
    for (size_t i = s->n; i-- > 0;)
        if (s->v[i].log == log && strcmp(s->v[i].branch, branch) == 0 &&
            strcmp(s->v[i].key, key) == 0)
            return &s->v[i];
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct object *v = realloc(s->v, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        s->v = v, s->cap = cap;
    }
    struct object *x = &s->v[s->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->branch, sizeof x->branch, "%s", branch);
    snprintf(x->key, sizeof x->key, "%s", key);
    x->log = log;
    return x;
}

void objects_free(struct objects *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].apps);
    free(s->v);
}

/* Add an append of `value` to x; returns its index or -1 (out of memory). */
static long object_add_append(struct object *x, const char *value)
{
    if (x->napps == x->capapps) {
        size_t cap = x->capapps ? x->capapps * 2 : 16;
        struct append_rec *a = realloc(x->apps, cap * sizeof *a);
        if (a == NULL)
            return -1;
        x->apps = a, x->capapps = cap;
    }
    struct append_rec *a = &x->apps[x->napps];
    memset(a, 0, sizeof *a);
    snprintf(a->value, sizeof a->value, "%s", value);
    a->oc = O_INFO; /* until its completion says otherwise */
    return (long)x->napps++;
}

/* An append invoked and not yet completed, by process. */
struct pending_append {
    long proc;
    size_t obj; /* index into objects (their array may move) */
    size_t app;
};

/* Read the operation lines of a history: every register and log, and each append's
 * outcome. Final lines already there are skipped (a second `final` adds its own). */
int history_load(const char *path, struct objects *s)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "workload: cannot read %s: %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    char *line = NULL;
    size_t cap = 0, npend = 0, cappend = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    struct pending_append *pend = NULL;
    while (rc == 0 && (len = getline(&line, &cap, f)) > 0) {
        lineno++;
        json_error_t je;
        json_t *l = json_loadb(line, (size_t)len, 0, &je);
        const char *type = json_string_value(json_object_get(l, "type"));
        const char *fn = json_string_value(json_object_get(l, "f"));
        const char *br = json_string_value(json_object_get(l, "branch"));
        const char *key = json_string_value(json_object_get(l, "key"));
        json_t *jproc = json_object_get(l, "proc");
        if (l == NULL || type == NULL) {
            fprintf(stderr, "workload: %s:%ld: not a history line\n", path, lineno);
            rc = EXIT_USAGE;
        } else if (strcmp(type, "final") == 0) {
            /* skipped */
        } else if (fn == NULL || br == NULL || key == NULL || !json_is_integer(jproc)) {
            fprintf(stderr, "workload: %s:%ld: operation line without f/branch/key/proc\n",
                    path, lineno);
            rc = EXIT_USAGE;
        } else {
            bool log = strcmp(fn, "append") == 0;
            long proc = (long)json_integer_value(jproc);
            struct object *obj = objects_get(s, br, key, log);
            if (obj == NULL) {
                rc = EXIT_SETUP;
            } else if (log && strcmp(type, "invoke") == 0) {
                const char *v = json_string_value(json_object_get(l, "value"));
                long app = object_add_append(obj, v ? v : "");
                if (app >= 0 && npend == cappend) {
                    size_t c2 = cappend ? cappend * 2 : 64;
                    struct pending_append *p2 = realloc(pend, c2 * sizeof *p2);
                    if (p2)
                        pend = p2, cappend = c2;
                }
                if (app < 0 || npend == cappend)
                    rc = EXIT_SETUP;
                else
                    pend[npend++] = (struct pending_append){proc, (size_t)(obj - s->v),
                                                            (size_t)app};
            } else if (log) {
                for (size_t i = npend; i-- > 0;) {
                    if (pend[i].proc != proc)
                        continue;
                    struct append_rec *a = &s->v[pend[i].obj].apps[pend[i].app];
                    a->oc = strcmp(type, "ok") == 0     ? O_OK
                            : strcmp(type, "fail") == 0 ? O_FAIL
                                                        : O_INFO;
                    json_t *sq = json_object_get(l, "seq");
                    if (a->oc == O_OK && json_is_integer(sq))
                        a->seq = (uint64_t)json_integer_value(sq);
                    pend[i] = pend[--npend];
                    break;
                }
            }
        }
        json_decref(l);
    }
    free(pend);
    free(line);
    fclose(f);
    return rc;
}

void pack_read(struct buf *cmd, const struct object *x, const char *op, uint64_t seq_start)
{
    buf_reset(cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, cmd, buf_w);
    bool cell = !x->log && x->key[0] == 'c';
    bool range = strcmp(op, "event.range") == 0;
    msgpack_pack_map(&pk, range ? 5 : 3);
    pk_kv(&pk, "op", op);
    pk_kv(&pk, "branch", x->branch);
    pk_kv(&pk, x->log ? "space" : cell ? "cell" : "key", x->key);
    if (range) {
        pk_str(&pk, "start");
        msgpack_pack_uint64(&pk, seq_start);
        pk_str(&pk, "limit");
        msgpack_pack_uint64(&pk, 10000);
    }
}
