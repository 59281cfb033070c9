/* node/metrics.c: the exact text of a small registry, histogram bucket bounds, value
 * formatting, label escaping, the series bound and allocation failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "metrics.h"

static const double small_buckets[] = {0.1, 0.5, 1};

static const struct metric_def counter_def = {
    METRIC_COUNTER, "t_requests_total", "Requests.", {NULL}, NULL, 0};
static const struct metric_def gauge_def = {METRIC_GAUGE,      "t_role", "Role (1 = current).",
                                            {"group", "role"}, NULL,     0};
static const struct metric_def hist_def = {METRIC_HISTOGRAM, "t_seconds",   "Latency.",
                                           {"op"},           small_buckets, 3};

static char *render(const struct metrics *m)
{
    struct buf b;
    buf_init(&b);
    assert_int_equal(metrics_render(m, &b), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    size_t len;
    return (char *)buf_steal(&b, &len);
}

static void test_metrics_render_small_registry(void **state)
{
    (void)state;
    struct metrics *m;
    struct metric_family *fc, *fg, *fh;
    struct metric *c, *leader, *follower, *h;
    assert_int_equal(metrics_new(&m), 0);
    assert_int_equal(metrics_family_add(m, &counter_def, &fc), 0);
    assert_int_equal(metrics_family_add(m, &gauge_def, &fg), 0);
    assert_int_equal(metrics_family_add(m, &hist_def, &fh), 0);
    assert_int_equal(metric_series(fc, NULL, &c), 0);
    metric_add(c, 3);
    metric_add(c, 2);
    const char *lv[] = {"0", "leader"}, *fv[] = {"0", "follower"};
    assert_int_equal(metric_series(fg, lv, &leader), 0);
    assert_int_equal(metric_series(fg, fv, &follower), 0);
    metric_set(leader, 1);
    metric_set(follower, 0);
    const char *hv[] = {"kv.put"};
    assert_int_equal(metric_series(fh, hv, &h), 0);
    metric_observe(h, 0.05);
    metric_observe(h, 0.5);
    metric_observe(h, 2);
    char *text = render(m);
    assert_string_equal(text, "# HELP t_requests_total Requests.\n"
                              "# TYPE t_requests_total counter\n"
                              "t_requests_total 5\n"
                              "# HELP t_role Role (1 = current).\n"
                              "# TYPE t_role gauge\n"
                              "t_role{group=\"0\",role=\"leader\"} 1\n"
                              "t_role{group=\"0\",role=\"follower\"} 0\n"
                              "# HELP t_seconds Latency.\n"
                              "# TYPE t_seconds histogram\n"
                              "t_seconds_bucket{op=\"kv.put\",le=\"0.1\"} 1\n"
                              "t_seconds_bucket{op=\"kv.put\",le=\"0.5\"} 2\n"
                              "t_seconds_bucket{op=\"kv.put\",le=\"1\"} 2\n"
                              "t_seconds_bucket{op=\"kv.put\",le=\"+Inf\"} 3\n"
                              "t_seconds_sum{op=\"kv.put\"} 2.55\n"
                              "t_seconds_count{op=\"kv.put\"} 3\n");
    sm_free(text);
    metrics_free(m);
}

/* A family with no series still has its HELP and TYPE lines; a histogram without
 * labels puts only le in braces. */
static void test_metrics_render_empty_family_and_unlabelled_histogram(void **state)
{
    (void)state;
    static const struct metric_def d = {METRIC_HISTOGRAM, "t_lag",       "Lag.",
                                        {NULL},           small_buckets, 3};
    struct metrics *m;
    struct metric_family *fc, *fh;
    struct metric *h;
    assert_int_equal(metrics_new(&m), 0);
    assert_int_equal(metrics_family_add(m, &counter_def, &fc), 0);
    assert_int_equal(metrics_family_add(m, &d, &fh), 0);
    assert_int_equal(metric_series(fh, NULL, &h), 0);
    char *text = render(m);
    assert_string_equal(text, "# HELP t_requests_total Requests.\n"
                              "# TYPE t_requests_total counter\n"
                              "# HELP t_lag Lag.\n"
                              "# TYPE t_lag histogram\n"
                              "t_lag_bucket{le=\"0.1\"} 0\n"
                              "t_lag_bucket{le=\"0.5\"} 0\n"
                              "t_lag_bucket{le=\"1\"} 0\n"
                              "t_lag_bucket{le=\"+Inf\"} 0\n"
                              "t_lag_sum 0\n"
                              "t_lag_count 0\n");
    sm_free(text);
    metrics_free(m);
}

/* "le" means less than or equal: a value on a bound counts in that bucket; one past
 * the last bound only in +Inf; buckets render cumulatively; NaN is not counted. */
static void test_metric_observe_bucket_bounds(void **state)
{
    (void)state;
    struct metrics *m;
    struct metric_family *f;
    struct metric *h;
    assert_int_equal(metrics_new(&m), 0);
    assert_int_equal(metrics_family_add(m, &hist_def, &f), 0);
    const char *v[] = {"x"};
    assert_int_equal(metric_series(f, v, &h), 0);
    const double obs[] = {0, 0.1, 0.1000001, 0.5, 1, 1.0000001, 1e9, -1, NAN};
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
        metric_observe(h, obs[i]);
    assert_int_equal(metric_count(h), 8); /* NaN ignored */
    char *text = render(m);
    /* le=0.1: 0, 0.1, -1; le=0.5: + 0.1000001, 0.5; le=1: + 1; +Inf: + 1.0000001, 1e9 */
    assert_non_null(strstr(text, "t_seconds_bucket{op=\"x\",le=\"0.1\"} 3\n"
                                 "t_seconds_bucket{op=\"x\",le=\"0.5\"} 5\n"
                                 "t_seconds_bucket{op=\"x\",le=\"1\"} 6\n"
                                 "t_seconds_bucket{op=\"x\",le=\"+Inf\"} 8\n"));
    assert_non_null(strstr(text, "t_seconds_count{op=\"x\"} 8\n"));
    double sum = 0 + 0.1 + 0.1000001 + 0.5 + 1 + 1.0000001 + 1e9 - 1;
    assert_true(fabs(metric_value(h) - sum) < 1e-6);
    sm_free(text);
    metrics_free(m);
}

/* Counters and gauges ignore observe; histograms ignore add and set; NULL is a no-op. */
static void test_metric_updates_by_type(void **state)
{
    (void)state;
    struct metrics *m;
    struct metric_family *fc, *fh;
    struct metric *c, *h;
    assert_int_equal(metrics_new(&m), 0);
    assert_int_equal(metrics_family_add(m, &counter_def, &fc), 0);
    assert_int_equal(metrics_family_add(m, &hist_def, &fh), 0);
    const char *v[] = {"a"};
    assert_int_equal(metric_series(fc, NULL, &c), 0);
    assert_int_equal(metric_series(fh, v, &h), 0);
    metric_observe(c, 7);
    assert_true(metric_value(c) == 0);
    metric_add(h, 7);
    metric_set(h, 7);
    assert_true(metric_value(h) == 0);
    assert_int_equal(metric_count(h), 0);
    metric_add(NULL, 1);
    metric_set(NULL, 1);
    metric_observe(NULL, 1);
    assert_true(metric_value(NULL) == 0);
    /* The same label values give the same series. */
    struct metric *again;
    assert_int_equal(metric_series(fh, v, &again), 0);
    assert_ptr_equal(again, h);
    metrics_free(m);
}

static void test_metrics_format_value(void **state)
{
    (void)state;
    static const struct {
        double v;
        const char *text;
    } cases[] = {
        {0, "0"},
        {-0.0, "0"},
        {1, "1"},
        {-3, "-3"},
        {0.1, "0.1"},
        {2.55, "2.55"},
        {0.00025, "0.00025"},
        {123456789012345, "123456789012345"},
        {9007199254740993.0, "9007199254740992"}, /* 2^53 + 1 is not a double */
        {1e20, "1e+20"},
        {1.0 / 3.0, "0.33333333333333331"},
    };
    char out[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        metrics_format_value(cases[i].v, out, sizeof out);
        assert_string_equal(out, cases[i].text);
    }
    metrics_format_value(NAN, out, sizeof out);
    assert_string_equal(out, "NaN");
    metrics_format_value(INFINITY, out, sizeof out);
    assert_string_equal(out, "+Inf");
    metrics_format_value(-INFINITY, out, sizeof out);
    assert_string_equal(out, "-Inf");
}

/* Label values come from clients (op names, addresses): \, " and newline are escaped,
 * and help text escapes \ and newline. */
static void test_metrics_render_escapes(void **state)
{
    (void)state;
    static const struct metric_def d = {METRIC_GAUGE, "t_g", "Line one\nback\\slash \"q\"",
                                        {"v"},        NULL,  0};
    struct metrics *m;
    struct metric_family *f;
    struct metric *s;
    assert_int_equal(metrics_new(&m), 0);
    assert_int_equal(metrics_family_add(m, &d, &f), 0);
    const char *v[] = {"a\"b\\c\nd"};
    assert_int_equal(metric_series(f, v, &s), 0);
    metric_set(s, -1.5);
    char *text = render(m);
    assert_string_equal(text, "# HELP t_g Line one\\nback\\\\slash \"q\"\n"
                              "# TYPE t_g gauge\n"
                              "t_g{v=\"a\\\"b\\\\c\\nd\"} -1.5\n");
    sm_free(text);
    metrics_free(m);
}

static void test_metric_series_bounded(void **state)
{
    (void)state;
    struct metrics *m;
    struct metric_family *f;
    struct metric *s;
    assert_int_equal(metrics_new(&m), 0);
    assert_int_equal(metrics_family_add(m, &hist_def, &f), 0);
    char name[32];
    const char *v[] = {name};
    for (int i = 0; i < METRIC_MAX_SERIES; i++) {
        snprintf(name, sizeof name, "op%d", i);
        assert_int_equal(metric_series(f, v, &s), 0);
        assert_non_null(s);
    }
    snprintf(name, sizeof name, "one-too-many");
    assert_int_equal(metric_series(f, v, &s), STRATA_TOO_LARGE);
    assert_null(s);
    metric_observe(s, 1); /* a lost sample, not a crash */
    snprintf(name, sizeof name, "op7");
    assert_int_equal(metric_series(f, v, &s), 0); /* existing ones still found */
    metrics_free(m);
}

/* Every allocation of series creation and rendering may fail: the call reports
 * OUT_OF_MEMORY and the registry stays usable. */
static void test_metrics_out_of_memory(void **state)
{
    (void)state;
    struct metrics *m;
    struct metric_family *f;
    assert_int_equal(metrics_new(&m), 0);
    assert_int_equal(metrics_family_add(m, &hist_def, &f), 0);
    const char *v[] = {"kv.get"};
    int failures = 0;
    struct metric *s = NULL;
    for (long nth = 1; nth < 20; nth++) {
        sm_fail_after(nth);
        int rc = metric_series(f, v, &s);
        sm_fail_after(0);
        if (rc == 0)
            break;
        assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
        assert_null(s);
        failures++;
    }
    assert_true(failures > 0);
    assert_non_null(s);
    metric_observe(s, 0.2);
    int render_failures = 0;
    for (long nth = 1; nth < 50; nth++) {
        struct buf b;
        buf_init(&b);
        sm_fail_after(nth);
        int rc = metrics_render(m, &b);
        sm_fail_after(0);
        buf_close(&b);
        if (rc == 0)
            break;
        assert_int_equal(rc, STRATA_OUT_OF_MEMORY);
        render_failures++;
    }
    assert_true(render_failures > 0);
    char *text = render(m);
    assert_non_null(strstr(text, "t_seconds_count{op=\"kv.get\"} 1\n"));
    sm_free(text);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_render_small_registry),
        cmocka_unit_test(test_metrics_render_empty_family_and_unlabelled_histogram),
        cmocka_unit_test(test_metric_observe_bucket_bounds),
        cmocka_unit_test(test_metric_updates_by_type),
        cmocka_unit_test(test_metrics_format_value),
        cmocka_unit_test(test_metrics_render_escapes),
        cmocka_unit_test(test_metric_series_bounded),
        cmocka_unit_test(test_metrics_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
