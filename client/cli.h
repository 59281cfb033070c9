/* The `strata` CLI's shared pieces: exit codes, error reporting, and the backup
 * commands (cli_backup.c). */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include "strata.h"

#include <stdbool.h>

enum { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_USAGE = 2 };

/* Print "error: CODE: message" on stderr; returns EXIT_ERROR. */
int report(const char *code_name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* report() of OUT_OF_MEMORY. */
int oom(void);
/* msgpack-c write callback appending to a struct buf. */
int pk_write(void *data, const char *p, size_t len);

/* `strata backup create|restore|verify DIR` on an open handle (verify needs none). */
int backup_main(struct strata *db, bool json, int argc, char **argv);

#endif
