/* Allocator façade: one place to count and inject allocation failures. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

static long fail_countdown; /* 0 = injection off */

void sm_fail_after(long nth)
{
    fail_countdown = nth;
}

static int should_fail(void)
{
    if (fail_countdown <= 0)
        return 0;
    return --fail_countdown == 0;
}

void *sm_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n ? n : 1);
}

void *sm_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : calloc(n ? n : 1, size ? size : 1);
}

void *sm_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n ? n : 1);
}

void sm_free(void *p)
{
    free(p);
}

char *sm_strndup(const char *s, size_t n)
{
    char *d = sm_malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

char *sm_strdup(const char *s)
{
    return sm_strndup(s, strlen(s));
}
