/* The metrics registry and its rendering in the Prometheus text format 0.0.4. */
#include "metrics.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metric {
    const struct metric_family *family;
    char *values[METRIC_MAX_LABELS]; /* owned, one per label name */
    double value;                    /* counter / gauge; histogram: the sum */
    uint64_t count;                  /* histogram: observations */
    uint64_t *buckets;               /* histogram: per-bucket (not cumulative), owned */
};

struct metric_family {
    struct metric_def def;
    size_t nlabels;
    struct metric **series; /* owned, creation order */
    size_t nseries, cap;
    struct metric_family *next;
};

struct metrics {
    struct metric_family *head, *tail;
};

int metrics_new(struct metrics **out)
{
    *out = sm_calloc(1, sizeof **out);
    return *out ? 0 : STRATA_OUT_OF_MEMORY;
}

static void series_free(struct metric *s, size_t nlabels)
{
    for (size_t i = 0; i < nlabels; i++)
        sm_free(s->values[i]);
    sm_free(s->buckets);
    sm_free(s);
}

void metrics_free(struct metrics *m)
{
    if (m == NULL)
        return;
    for (struct metric_family *f = m->head, *next; f; f = next) {
        next = f->next;
        for (size_t i = 0; i < f->nseries; i++)
            series_free(f->series[i], f->nlabels);
        sm_free(f->series);
        sm_free(f);
    }
    sm_free(m);
}

static bool valid_name(const char *s, bool colon)
{
    if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || (colon && *s == ':')))
            return false;
    return true;
}

int metrics_family_add(struct metrics *m, const struct metric_def *def, struct metric_family **out)
{
    /* Definitions are code constants: a bad one is a programmer error. */
    assert(valid_name(def->name, true) && def->help != NULL);
    assert(def->type != METRIC_HISTOGRAM ||
           (def->nbuckets > 0 && def->nbuckets <= METRIC_MAX_BUCKETS && def->buckets));
    for (size_t i = 1; def->type == METRIC_HISTOGRAM && i < def->nbuckets; i++)
        assert(def->buckets[i - 1] < def->buckets[i]);
    struct metric_family *f = sm_calloc(1, sizeof *f);
    if (f == NULL)
        return STRATA_OUT_OF_MEMORY;
    f->def = *def;
    while (f->nlabels < METRIC_MAX_LABELS && def->labels[f->nlabels]) {
        assert(valid_name(def->labels[f->nlabels], false) &&
               strcmp(def->labels[f->nlabels], "le") != 0);
        f->nlabels++;
    }
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    *out = f;
    return 0;
}

int metric_series(struct metric_family *f, const char *const *values, struct metric **out)
{
    for (size_t i = 0; i < f->nseries; i++) {
        size_t k = 0;
        while (k < f->nlabels && strcmp(f->series[i]->values[k], values[k]) == 0)
            k++;
        if (k == f->nlabels) {
            *out = f->series[i];
            return 0;
        }
    }
    *out = NULL;
    if (f->nseries >= METRIC_MAX_SERIES)
        return STRATA_TOO_LARGE;
    if (f->nseries == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct metric **p = sm_realloc(f->series, cap * sizeof *p);
        if (p == NULL)
            return STRATA_OUT_OF_MEMORY;
        f->series = p;
        f->cap = cap;
    }
    struct metric *s = sm_calloc(1, sizeof *s);
    if (s == NULL)
        return STRATA_OUT_OF_MEMORY;
    s->family = f;
    for (size_t k = 0; k < f->nlabels; k++)
        if ((s->values[k] = sm_strdup(values[k])) == NULL)
            goto err_free;
    if (f->def.type == METRIC_HISTOGRAM &&
        (s->buckets = sm_calloc(f->def.nbuckets, sizeof *s->buckets)) == NULL)
        goto err_free;
    f->series[f->nseries++] = s;
    *out = s;
    return 0;
err_free:
    series_free(s, f->nlabels);
    return STRATA_OUT_OF_MEMORY;
}

void metric_add(struct metric *s, double v)
{
    if (s && s->family->def.type != METRIC_HISTOGRAM)
        s->value += v;
}

void metric_set(struct metric *s, double v)
{
    if (s && s->family->def.type != METRIC_HISTOGRAM)
        s->value = v;
}

void metric_observe(struct metric *s, double v)
{
    if (s == NULL || s->family->def.type != METRIC_HISTOGRAM || isnan(v))
        return;
    const struct metric_def *d = &s->family->def;
    /* Buckets are few (<= METRIC_MAX_BUCKETS): a linear scan from the smallest is as
     * fast as a binary search here and obviously right at the bounds (v == bound counts
     * in that bucket: "le" is "less than or equal"). Past the last bound a value counts
     * only in +Inf, which is `count`. */
    for (size_t i = 0; i < d->nbuckets; i++)
        if (v <= d->buckets[i]) {
            s->buckets[i]++;
            break;
        }
    s->count++;
    s->value += v;
}

double metric_value(const struct metric *s)
{
    return s ? s->value : 0;
}

uint64_t metric_count(const struct metric *s)
{
    return s ? s->count : 0;
}

void metrics_format_value(double v, char *out, size_t cap)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
    } else if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        snprintf(out, cap, "0"); /* also for -0 */
    } else if (fabs(v) < 1e15 && v == floor(v)) {
        snprintf(out, cap, "%.0f", v);
    } else {
        snprintf(out, cap, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, cap, "%.17g", v);
    }
}

/* Label values and help text are escaped as the format says: \\ and \n, plus \" in
 * label values. */
static int append_escaped(struct buf *b, const char *s, bool quote)
{
    int rc = 0;
    for (; *s && rc == 0; s++) {
        if (*s == '\\')
            rc = buf_append(b, "\\\\", 2);
        else if (*s == '\n')
            rc = buf_append(b, "\\n", 2);
        else if (quote && *s == '"')
            rc = buf_append(b, "\\\"", 2);
        else
            rc = buf_append(b, s, 1);
    }
    return rc;
}

/* `name{l1="v1",...,le="x"} value\n`; le may be NULL. */
static int append_sample(struct buf *b, const struct metric_family *f, const struct metric *s,
                         const char *suffix, const char *le, double v)
{
    char num[64];
    int rc = buf_printf(b, "%s%s", f->def.name, suffix);
    bool any = f->nlabels > 0 || le != NULL;
    if (rc == 0 && any)
        rc = buf_append(b, "{", 1);
    for (size_t k = 0; rc == 0 && k < f->nlabels; k++) {
        rc = buf_printf(b, "%s%s=\"", k ? "," : "", f->def.labels[k]);
        if (rc == 0)
            rc = append_escaped(b, s->values[k], true);
        if (rc == 0)
            rc = buf_append(b, "\"", 1);
    }
    if (rc == 0 && le)
        rc = buf_printf(b, "%sle=\"%s\"", f->nlabels ? "," : "", le);
    if (rc == 0 && any)
        rc = buf_append(b, "}", 1);
    metrics_format_value(v, num, sizeof num);
    if (rc == 0)
        rc = buf_printf(b, " %s\n", num);
    return rc;
}

static int render_series(struct buf *b, const struct metric_family *f, const struct metric *s)
{
    if (f->def.type != METRIC_HISTOGRAM)
        return append_sample(b, f, s, "", NULL, s->value);
    char le[64];
    uint64_t cum = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < f->def.nbuckets; i++) {
        cum += s->buckets[i];
        metrics_format_value(f->def.buckets[i], le, sizeof le);
        rc = append_sample(b, f, s, "_bucket", le, (double)cum);
    }
    if (rc == 0)
        rc = append_sample(b, f, s, "_bucket", "+Inf", (double)s->count);
    if (rc == 0)
        rc = append_sample(b, f, s, "_sum", NULL, s->value);
    if (rc == 0)
        rc = append_sample(b, f, s, "_count", NULL, (double)s->count);
    return rc;
}

int metrics_render(const struct metrics *m, struct buf *out)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    int rc = 0;
    for (const struct metric_family *f = m->head; rc == 0 && f; f = f->next) {
        rc = buf_printf(out, "# HELP %s ", f->def.name);
        if (rc == 0)
            rc = append_escaped(out, f->def.help, false);
        if (rc == 0)
            rc = buf_printf(out, "\n# TYPE %s %s\n", f->def.name, types[f->def.type]);
        for (size_t i = 0; rc == 0 && i < f->nseries; i++)
            rc = render_series(out, f, f->series[i]);
    }
    return rc ? STRATA_OUT_OF_MEMORY : 0;
}
