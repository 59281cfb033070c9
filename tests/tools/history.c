/* Parsing a JSON Lines operation history (format: tests/tools/README.md) into ops. */
#include "lincheck.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

enum ev_type { EV_INVOKE, EV_OK, EV_FAIL, EV_INFO };

/* One invoke or completion line, before pairing. */
struct event {
    unsigned long line;
    int64_t t;
    int64_t proc;
    enum ev_type type;
    enum hist_f f;
    uint32_t branch, key, value, expect, error;
    bool has_value, has_expect, has_version, has_seq;
    uint64_t version, seq;
};

struct events {
    struct event *v;
    size_t n, cap;
};

static const char *const f_names[] = {
    [HIST_READ] = "read",   [HIST_WRITE] = "write", [HIST_CAS] = "cas",
    [HIST_APPEND] = "append", [HIST_FORK] = "fork", [HIST_MERGE] = "merge",
};

const char *hist_f_name(enum hist_f f)
{
    return f_names[f];
}

/* Grow *v (elements of `size` bytes) so index `need - 1` fits. */
static int grow(void **v, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap *= 2;
    void *p = sm_realloc(*v, ncap * size);
    if (p == NULL)
        return STRATA_OUT_OF_MEMORY;
    *v = p;
    *cap = ncap;
    return 0;
}

/* Id of `text` in the table (names or values), adding it if new. */
static int intern(struct json_t *ids, char ***tab, size_t *n, size_t *cap, const char *text,
                  uint32_t *id)
{
    json_t *got = json_object_get(ids, text);
    if (got != NULL) {
        *id = (uint32_t)json_integer_value(got);
        return 0;
    }
    if (*n >= HIST_NONE - 1 || grow((void **)tab, cap, *n + 1, sizeof(char *)) != 0)
        return STRATA_OUT_OF_MEMORY;
    char *copy = sm_strdup(text);
    if (copy == NULL)
        return STRATA_OUT_OF_MEMORY;
    if (json_object_set_new(ids, text, json_integer((json_int_t)*n)) != 0) {
        sm_free(copy);
        return STRATA_OUT_OF_MEMORY;
    }
    (*tab)[*n] = copy;
    *id = (uint32_t)*n;
    (*n)++;
    return 0;
}

struct loader {
    struct hist *h;
    size_t names_cap, values_cap, finals_cap;
    const char *path;
    unsigned long line;
    struct err *e;
};

static int bad(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct loader *L, const char *fmt, ...)
{
    char what[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return err_set(L->e, STRATA_INVALID_ARGUMENT, "%s:%lu: %s", L->path, L->line, what);
}

static int intern_value(struct loader *L, json_t *v, uint32_t *id)
{
    /* Canonical text: compact, object keys sorted; any JSON value may be a value. */
    char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (text == NULL)
        return err_set(L->e, STRATA_OUT_OF_MEMORY, "out of memory");
    int rc = intern(L->h->value_ids, &L->h->values, &L->h->n_values, &L->values_cap, text, id);
    free(text);
    if (rc != 0)
        return err_set(L->e, rc, "out of memory");
    return 0;
}

/* A string field naming a branch, key or error code. */
static int get_name(struct loader *L, json_t *obj, const char *field, bool required,
                    uint32_t *id)
{
    json_t *v = json_object_get(obj, field);
    *id = HIST_NONE;
    if (v == NULL) {
        if (required)
            return bad(L, "missing field \"%s\"", field);
        return 0;
    }
    if (!json_is_string(v))
        return bad(L, "field \"%s\" must be a string", field);
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v))
        return bad(L, "field \"%s\" contains a NUL character", field);
    int rc = intern(L->h->name_ids, &L->h->names, &L->h->n_names, &L->names_cap, s, id);
    if (rc != 0)
        return err_set(L->e, rc, "out of memory");
    return 0;
}

static int get_int(struct loader *L, json_t *obj, const char *field, bool required,
                   int64_t min, int64_t max, bool *has, int64_t *out)
{
    json_t *v = json_object_get(obj, field);
    *has = v != NULL;
    if (v == NULL)
        return required ? bad(L, "missing field \"%s\"", field) : 0;
    if (!json_is_integer(v))
        return bad(L, "field \"%s\" must be an integer", field);
    json_int_t x = json_integer_value(v);
    if (x < min || x > max)
        return bad(L, "field \"%s\" is %" PRId64 ", outside [%" PRId64 ", %" PRId64 "]", field,
                   (int64_t)x, min, max);
    *out = x;
    return 0;
}

/* Reject fields the format does not have, so a misspelt one is not silently ignored. */
static int check_fields(struct loader *L, json_t *obj, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        size_t i = 0;
        while (allowed[i] != NULL && strcmp(allowed[i], k) != 0)
            i++;
        if (allowed[i] == NULL)
            return bad(L, "unknown field \"%s\"", k);
    }
    return 0;
}

static int parse_f(struct loader *L, json_t *obj, bool required, enum hist_f *f)
{
    json_t *v = json_object_get(obj, "f");
    if (v == NULL)
        return required ? bad(L, "missing field \"f\"") : 0;
    const char *s = json_string_value(v);
    for (size_t i = 0; s != NULL && i < sizeof f_names / sizeof f_names[0]; i++) {
        if (strcmp(s, f_names[i]) == 0) {
            *f = (enum hist_f)i;
            return 0;
        }
    }
    return bad(L, "field \"f\" must be one of read, write, cas, append, fork, merge");
}

static int parse_final(struct loader *L, json_t *obj)
{
    static const char *const allowed[] = {"type", "f", "branch", "key", "value", "t", NULL};
    struct hist *h = L->h;
    struct hist_final fin = {.kind = HIST_FINAL_READ, .line = L->line};
    int rc = check_fields(L, obj, allowed);
    if (rc != 0)
        return rc;
    json_t *f = json_object_get(obj, "f");
    if (f != NULL) {
        const char *s = json_string_value(f);
        if (s != NULL && strcmp(s, "len") == 0)
            fin.kind = HIST_FINAL_LEN;
        else if (s == NULL || strcmp(s, "read") != 0)
            return bad(L, "a final line's \"f\" must be \"read\" or \"len\"");
    }
    if ((rc = get_name(L, obj, "branch", true, &fin.branch)) != 0 ||
        (rc = get_name(L, obj, "key", true, &fin.key)) != 0)
        return rc;
    json_t *v = json_object_get(obj, "value");
    if (v == NULL)
        return bad(L, "missing field \"value\"");
    if (fin.kind == HIST_FINAL_LEN) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return bad(L, "a final len's \"value\" must be a non-negative integer");
        fin.len = (uint64_t)json_integer_value(v);
    } else if ((rc = intern_value(L, v, &fin.value)) != 0) {
        return rc;
    }
    int64_t t;
    bool has;
    if ((rc = get_int(L, obj, "t", false, 0, HIST_T_MAX - 1, &has, &t)) != 0)
        return rc;
    for (size_t i = 0; i < h->n_finals; i++) {
        struct hist_final *o = &h->finals[i];
        if (o->kind == fin.kind && o->branch == fin.branch && o->key == fin.key)
            return bad(L, "second final %s of the same key (first at line %lu)",
                       fin.kind == HIST_FINAL_LEN ? "len" : "read", o->line);
    }
    if (grow((void **)&h->finals, &L->finals_cap, h->n_finals + 1, sizeof fin) != 0)
        return err_set(L->e, STRATA_OUT_OF_MEMORY, "out of memory");
    h->finals[h->n_finals++] = fin;
    return 0;
}

static int parse_event(struct loader *L, json_t *obj, struct event *ev)
{
    static const char *const allowed[] = {"t",     "proc",   "type",    "f",   "branch",
                                          "key",   "value",  "expect",  "version",
                                          "seq",   "error",  NULL};
    int rc = check_fields(L, obj, allowed);
    bool has;
    int64_t x;
    if (rc != 0)
        return rc;
    ev->line = L->line;
    if ((rc = get_int(L, obj, "t", true, 0, HIST_T_MAX - 1, &has, &ev->t)) != 0 ||
        (rc = get_int(L, obj, "proc", true, INT64_MIN, INT64_MAX, &has, &ev->proc)) != 0 ||
        (rc = parse_f(L, obj, true, &ev->f)) != 0)
        return rc;
    /* A fork or merge names the branch it changes; "key" is the other branch, if given. */
    bool branch_op = ev->f == HIST_FORK || ev->f == HIST_MERGE;
    if ((rc = get_name(L, obj, "branch", true, &ev->branch)) != 0 ||
        (rc = get_name(L, obj, "key", !branch_op, &ev->key)) != 0 ||
        (rc = get_name(L, obj, "error", false, &ev->error)) != 0)
        return rc;
    json_t *v = json_object_get(obj, "value");
    ev->has_value = v != NULL;
    ev->value = HIST_NULL;
    if (v != NULL && (rc = intern_value(L, v, &ev->value)) != 0)
        return rc;
    v = json_object_get(obj, "expect");
    ev->has_expect = v != NULL;
    ev->expect = HIST_NULL;
    if (v != NULL) {
        if (ev->f != HIST_CAS)
            return bad(L, "field \"expect\" is for cas only");
        if ((rc = intern_value(L, v, &ev->expect)) != 0)
            return rc;
    }
    if ((rc = get_int(L, obj, "version", false, 0, INT64_MAX, &ev->has_version, &x)) != 0)
        return rc;
    ev->version = (uint64_t)x;
    if ((rc = get_int(L, obj, "seq", false, 0, INT64_MAX, &ev->has_seq, &x)) != 0)
        return rc;
    ev->seq = (uint64_t)x;

    const char *type = json_string_value(json_object_get(obj, "type"));
    if (type == NULL)
        return bad(L, "missing or non-string field \"type\"");
    if (strcmp(type, "invoke") == 0)
        ev->type = EV_INVOKE;
    else if (strcmp(type, "ok") == 0)
        ev->type = EV_OK;
    else if (strcmp(type, "fail") == 0)
        ev->type = EV_FAIL;
    else if (strcmp(type, "info") == 0)
        ev->type = EV_INFO;
    else
        return bad(L, "field \"type\" must be invoke, ok, fail, info or final");

    if (ev->type != EV_OK && (ev->has_version || ev->has_seq))
        return bad(L, "\"version\" and \"seq\" belong on ok completions only");
    if (ev->has_seq && ev->f != HIST_APPEND)
        return bad(L, "field \"seq\" is for append only");
    if (ev->type == EV_OK && ev->f == HIST_APPEND && !ev->has_seq)
        return bad(L, "an ok append needs \"seq\"");
    if ((ev->type == EV_INVOKE || ev->type == EV_OK) && ev->error != HIST_NONE)
        return bad(L, "field \"error\" belongs on fail and info completions only");
    if (ev->type == EV_FAIL && ev->error != HIST_NONE) {
        /* A fail is a promise the op did not happen; these codes promise nothing. */
        const char *code = L->h->names[ev->error];
        if (strcmp(code, "UNKNOWN_OUTCOME") == 0 || strcmp(code, "TIMEOUT") == 0)
            return bad(L, "a %s outcome is unknown: record it as \"info\", not \"fail\"",
                       code);
    }
    if (ev->type == EV_INVOKE && (ev->f == HIST_WRITE || ev->f == HIST_CAS)) {
        if (!ev->has_value)
            return bad(L, "a %s invoke needs \"value\"", f_names[ev->f]);
        if (ev->value == HIST_NULL)
            return bad(L, "a %s of null: null is what a read of an absent key returns",
                       f_names[ev->f]);
        if (ev->f == HIST_CAS && !ev->has_expect)
            return bad(L, "a cas invoke needs \"expect\"");
    }
    if (ev->f == HIST_READ && ev->type != EV_OK && ev->value != HIST_NULL)
        return bad(L, "a read's value belongs on its ok completion");
    if (ev->f == HIST_READ && ev->type == EV_OK && !ev->has_value)
        return bad(L, "an ok read needs \"value\" (null for an absent key)");
    return 0;
}

static int cmp_proc_line(const void *a, const void *b)
{
    const struct event *x = a, *y = b;
    if (x->proc != y->proc)
        return x->proc < y->proc ? -1 : 1;
    return x->line < y->line ? -1 : x->line > y->line;
}

static const char *type_name(enum ev_type t)
{
    static const char *const n[] = {"invoke", "ok", "fail", "info"};
    return n[t];
}

/* Pair each proc's invokes with their completions, in file order. */
static int pair_events(struct loader *L, struct events *evs)
{
    struct hist *h = L->h;
    size_t cap = 0;
    qsort(evs->v, evs->n, sizeof evs->v[0], cmp_proc_line);
    for (size_t i = 0; i < evs->n; i++) {
        struct event *inv = &evs->v[i];
        L->line = inv->line;
        if (inv->type != EV_INVOKE)
            return bad(L, "proc %" PRId64 ": %s without an invoke before it", inv->proc,
                       type_name(inv->type));
        if (i > 0 && evs->v[i - 1].proc == inv->proc && evs->v[i - 1].t > inv->t)
            return bad(L, "proc %" PRId64 ": invoke at t=%" PRId64
                          " is earlier than its previous completion (line %lu)",
                       inv->proc, inv->t, evs->v[i - 1].line);
        if (i + 1 == evs->n || evs->v[i + 1].proc != inv->proc)
            return bad(L, "proc %" PRId64 ": invoke has no completion", inv->proc);
        struct event *done = &evs->v[++i];
        L->line = done->line;
        if (done->type == EV_INVOKE)
            return bad(L, "proc %" PRId64 ": second invoke while the op at line %lu is "
                          "pending (one op at a time per proc)",
                       inv->proc, inv->line);
        if (done->f != inv->f || done->branch != inv->branch || done->key != inv->key)
            return bad(L, "proc %" PRId64 ": completion does not match the invoke at line "
                          "%lu (f, branch and key must be the same)",
                       inv->proc, inv->line);
        if (done->t < inv->t)
            return bad(L, "proc %" PRId64 ": completion is earlier than its invoke (line %lu)",
                       inv->proc, inv->line);
        if ((inv->f == HIST_WRITE || inv->f == HIST_CAS) &&
            ((done->has_value && done->value != inv->value) ||
             (done->has_expect && done->expect != inv->expect)))
            return bad(L, "proc %" PRId64 ": completion repeats the invoke's value or "
                          "expect (line %lu) with a different one",
                       inv->proc, inv->line);
        if (grow((void **)&h->ops, &cap, h->n_ops + 1, sizeof h->ops[0]) != 0)
            return err_set(L->e, STRATA_OUT_OF_MEMORY, "out of memory");
        struct hist_op *op = &h->ops[h->n_ops++];
        *op = (struct hist_op){
            .call = inv->t,
            .ret = done->t,
            .proc = inv->proc,
            .f = inv->f,
            .outcome = done->type == EV_OK     ? HIST_OK
                       : done->type == EV_FAIL ? HIST_FAIL
                                               : HIST_INFO,
            .branch = inv->branch,
            .key = inv->key,
            .value = inv->f == HIST_READ ? done->value : inv->value,
            .expect = inv->expect,
            .has_version = done->has_version,
            .has_seq = done->has_seq,
            .version = done->version,
            .seq = done->seq,
            .error = done->error,
            .line_call = inv->line,
            .line_ret = done->line,
        };
    }
    return 0;
}

void hist_close(struct hist *h)
{
    for (size_t i = 0; i < h->n_names; i++)
        sm_free(h->names[i]);
    for (size_t i = 0; i < h->n_values; i++)
        sm_free(h->values[i]);
    sm_free(h->names);
    sm_free(h->values);
    sm_free(h->ops);
    sm_free(h->finals);
    json_decref(h->name_ids);
    json_decref(h->value_ids);
    memset(h, 0, sizeof *h);
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

int hist_load(struct hist *h, FILE *in, const char *path, struct err *e)
{
    struct loader L = {.h = h, .path = path, .e = e};
    struct events evs = {0};
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    uint32_t null_id;
    int rc = STRATA_OUT_OF_MEMORY;

    memset(h, 0, sizeof *h);
    h->name_ids = json_object();
    h->value_ids = json_object();
    if (h->name_ids == NULL || h->value_ids == NULL)
        goto err_oom;
    if (intern_value(&L, json_null(), &null_id) != 0)
        goto err_close;

    while ((len = getline(&line, &line_cap, in)) >= 0) {
        L.line++;
        if (blank(line, (size_t)len))
            continue;
        json_error_t jerr;
        json_t *obj = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &jerr);
        if (obj == NULL) {
            rc = bad(&L, "not JSON: %s (column %d)", jerr.text, jerr.column);
            goto err_close;
        }
        if (!json_is_object(obj)) {
            json_decref(obj);
            rc = bad(&L, "a line must be a JSON object");
            goto err_close;
        }
        const char *type = json_string_value(json_object_get(obj, "type"));
        if (type != NULL && strcmp(type, "final") == 0) {
            rc = parse_final(&L, obj);
        } else if ((rc = grow((void **)&evs.v, &evs.cap, evs.n + 1, sizeof evs.v[0])) != 0) {
            err_set(e, rc, "out of memory");
        } else {
            memset(&evs.v[evs.n], 0, sizeof evs.v[0]);
            rc = parse_event(&L, obj, &evs.v[evs.n]);
            if (rc == 0) {
                if (evs.v[evs.n].t > h->t_max)
                    h->t_max = evs.v[evs.n].t;
                evs.n++;
            }
        }
        json_decref(obj);
        if (rc != 0)
            goto err_close;
    }
    if (ferror(in)) {
        rc = err_set(e, STRATA_INVALID_ARGUMENT, "%s: read error", path);
        goto err_close;
    }
    if ((rc = pair_events(&L, &evs)) != 0)
        goto err_close;
    free(line);
    sm_free(evs.v);
    return 0;

err_oom:
    err_set(e, STRATA_OUT_OF_MEMORY, "out of memory");
err_close:
    free(line);
    sm_free(evs.v);
    hist_close(h);
    return rc;
}
