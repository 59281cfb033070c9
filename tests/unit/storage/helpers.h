/* Test helpers for the storage engine: commands written as JSON text, results as JSON. */
#ifndef STRATA_TEST_STORAGE_HELPERS_H
#define STRATA_TEST_STORAGE_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "storage.h"

/* Execute a command given as JSON text (printf-style) at the next test timestamp
 * (1000, 2000, ... µs). Returns the code; the result (compact JSON) or the error message
 * is kept until the next call and available as t_out(). */
int t_exec(struct storage *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *t_out(void);
int64_t t_last_ts(void);
void t_set_ts(int64_t ts);

/* Assert success and return the result JSON. */
#define OK(s, ...) t_ok(s, __FILE__, __LINE__, __VA_ARGS__)
/* Assert failure with this code; returns the message. */
#define FAILS(s, code, ...) t_fails(s, code, __FILE__, __LINE__, __VA_ARGS__)
/* Assert the command succeeds and its result JSON equals `expect` exactly. */
#define EXPECT(s, expect, ...) t_expect(s, expect, __FILE__, __LINE__, __VA_ARGS__)

const char *t_ok(struct storage *s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const char *t_fails(struct storage *s, int code, const char *file, int line, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));
void t_expect(struct storage *s, const char *expect, const char *file, int line,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* cmocka fixtures: a fresh default engine in *state, test clock reset to 0. */
int t_setup(void **state);
int t_teardown(void **state);

/* Snapshot into a fresh buffer (caller frees with buf_close). */
void t_snapshot(struct storage *s, struct buf *out);

#endif
