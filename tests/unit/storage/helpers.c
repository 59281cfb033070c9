/* Test helpers for the storage engine (see helpers.h). */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char out[1 << 20];
static int64_t ts;

const char *t_out(void)
{
    return out;
}

int64_t t_last_ts(void)
{
    return ts;
}

void t_set_ts(int64_t v)
{
    ts = v;
}

static int vexec(struct storage *s, const char *fmt, va_list ap)
{
    char json[1 << 16];
    vsnprintf(json, sizeof json, fmt, ap);
    struct buf cmd, res;
    buf_init(&cmd);
    buf_init(&res);
    struct err err;
    err_clear(&err);
    int rc = storage_json_to_value(json, strlen(json), &cmd, &err);
    if (rc) {
        fprintf(stderr, "bad test command JSON: %s: %s\n", json, err.msg);
        abort();
    }
    ts += 1000;
    rc = storage_exec(s, cmd.data, cmd.len, ts, &res, &err);
    if (rc == 0) {
        struct buf j;
        buf_init(&j);
        storage_value_to_json(res.data, res.len, &j, false);
        snprintf(out, sizeof out, "%.*s", (int)j.len, (const char *)j.data);
        buf_close(&j);
    } else {
        snprintf(out, sizeof out, "%s: %s", err_name(rc), err.msg);
    }
    buf_close(&cmd);
    buf_close(&res);
    return rc;
}

int t_exec(struct storage *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vexec(s, fmt, ap);
    va_end(ap);
    return rc;
}

const char *t_ok(struct storage *s, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vexec(s, fmt, ap);
    va_end(ap);
    if (rc != 0) {
        fprintf(stderr, "%s:%d: expected success, got %s\n", file, line, out);
        fail();
    }
    return out;
}

const char *t_fails(struct storage *s, int code, const char *file, int line, const char *fmt,
                    ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vexec(s, fmt, ap);
    va_end(ap);
    if (rc != code) {
        fprintf(stderr, "%s:%d: expected %s, got %s (%s)\n", file, line, err_name(code),
                err_name(rc), out);
        fail();
    }
    return out;
}

void t_expect(struct storage *s, const char *expect, const char *file, int line,
              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vexec(s, fmt, ap);
    va_end(ap);
    if (rc != 0 || strcmp(out, expect) != 0) {
        fprintf(stderr, "%s:%d:\n  expected: %s\n  got:      %s\n", file, line, expect, out);
        fail();
    }
}

void t_snapshot(struct storage *s, struct buf *b)
{
    struct err err;
    buf_init(b);
    if (storage_snapshot_buf(s, b, &err) != 0) {
        fprintf(stderr, "snapshot failed: %s\n", err.msg);
        fail();
    }
}

int t_setup(void **state)
{
    struct storage *s;
    assert_int_equal(storage_new(NULL, &s), 0);
    t_set_ts(0);
    *state = s;
    return 0;
}

int t_teardown(void **state)
{
    storage_free(*state);
    return 0;
}
