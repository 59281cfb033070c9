/* The error-code table: names and messages, and the struct err helpers. */
#include "common.h"

#include <stdio.h>
#include <string.h>

static const char *const names[] = {
#define X(name, num, msg) [num] = #name,
    STRATA_ERRORS(X)
#undef X
};

static const char *const messages[] = {
#define X(name, num, msg) [num] = msg,
    STRATA_ERRORS(X)
#undef X
};

const char *err_name(int code)
{
    if (code < 0 || code >= STRATA_CODE_COUNT || names[code] == NULL)
        return "UNKNOWN";
    return names[code];
}

const char *err_message(int code)
{
    if (code < 0 || code >= STRATA_CODE_COUNT || messages[code] == NULL)
        return "unknown error";
    return messages[code];
}

int err_from_name(const char *name)
{
    for (int i = 0; i < STRATA_CODE_COUNT; i++)
        if (names[i] != NULL && strcmp(names[i], name) == 0)
            return i;
    return -1;
}

int err_set(struct err *e, int code, const char *fmt, ...)
{
    if (e == NULL)
        return code;
    e->code = code;
    if (fmt == NULL) {
        snprintf(e->msg, sizeof e->msg, "%s", err_message(code));
        return code;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

void err_clear(struct err *e)
{
    if (e != NULL) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}
