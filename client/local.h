/* libstrata `file:DIR` backend (private): see local.c. */
#ifndef STRATA_CLIENT_LOCAL_H
#define STRATA_CLIENT_LOCAL_H

#include "common.h"

#include <stdbool.h>

struct local;

int local_open(const char *dir, struct local **out, struct err *err);
void local_close(struct local *l);
int local_exec(struct local *l, const uint8_t *cmd, size_t len, struct buf *result,
               struct err *err);

#endif
