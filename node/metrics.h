/* A metrics registry: counters, gauges and fixed-bucket histograms with labels,
 * rendered in the Prometheus text exposition format 0.0.4.
 *
 * Shape: a registry holds families (one metric name, its help, type and label names);
 * a family holds series (one set of label values each), created on first use. Values
 * are doubles, as in the format; counts up to 2^53 are exact.
 *
 * Thread: the node's loop thread only (no locking). Errors: functions that allocate
 * return 0 or STRATA_OUT_OF_MEMORY / STRATA_TOO_LARGE; the update functions take a NULL
 * series and do nothing, so a series that could not be created costs a lost sample,
 * never a crash (metrics are best effort). */
#ifndef STRATA_NODE_METRICS_H
#define STRATA_NODE_METRICS_H

#include "common.h"

#include <stddef.h>

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

#define METRIC_MAX_LABELS 3
#define METRIC_MAX_BUCKETS 32
/* Series per family: a bound on label cardinality (label values may come from clients). */
#define METRIC_MAX_SERIES 2048

/* What a family is. Strings are borrowed: they must outlive the registry (use string
 * literals). `buckets` (histograms only) are the finite upper bounds, strictly
 * increasing; the +Inf bucket is implicit. Names must match [a-zA-Z_:][a-zA-Z0-9_:]*,
 * label names [a-zA-Z_][a-zA-Z0-9_]* and not "le" — checked by assert (programmer error). */
struct metric_def {
    enum metric_type type;
    const char *name;
    const char *help;
    const char *labels[METRIC_MAX_LABELS]; /* NULL-terminated when fewer */
    const double *buckets;
    size_t nbuckets;
};

struct metrics;
struct metric_family;
struct metric;

int metrics_new(struct metrics **out);
void metrics_free(struct metrics *m);

/* Register a family; rendered in registration order. *out is owned by the registry. */
int metrics_family_add(struct metrics *m, const struct metric_def *def, struct metric_family **out);

/* The series of `f` with these label values (one per label name, in order; copied),
 * created at zero on first use. NULL `values` for a family without labels. Returns 0,
 * STRATA_OUT_OF_MEMORY, or STRATA_TOO_LARGE when the family already has
 * METRIC_MAX_SERIES series. *out is owned by the registry. */
int metric_series(struct metric_family *f, const char *const *values, struct metric **out);

/* Counter: add v (>= 0). Gauge: add v (any sign). Ignored for histograms / NULL. */
void metric_add(struct metric *s, double v);
/* Gauge or counter: set the value (a counter mirrored from a count kept elsewhere). */
void metric_set(struct metric *s, double v);
/* Histogram: count one observation in the first bucket whose bound is >= v and add v to
 * the sum. NaN is ignored (it would poison the sum). */
void metric_observe(struct metric *s, double v);

/* Read back (tests, and callers deriving one metric from another). */
double metric_value(const struct metric *s);
uint64_t metric_count(const struct metric *s);

/* Append the whole registry in the text format: for each family `# HELP`, `# TYPE`,
 * then one line per series (histograms: cumulative `_bucket{le=...}` lines ending with
 * le="+Inf", then `_sum` and `_count`). Returns 0 or STRATA_OUT_OF_MEMORY. */
int metrics_render(const struct metrics *m, struct buf *out);

/* Format a sample value as the format wants it: "NaN", "+Inf", "-Inf", an integer
 * without exponent when the value is integral and below 1e15, else the shortest of
 * %.15g / %.17g that reads back exactly. `cap` >= 32. */
void metrics_format_value(double v, char *out, size_t cap);

#endif
