/* lincheck: check a recorded operation history for linearizability, lost writes, event
 * sequences and versions. Exit 0 = OK, 1 = violation, 2 = unknown, 3 = bad input. */
#include "lincheck.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_OK = 0, EXIT_VIOLATION = 1, EXIT_UNKNOWN = 2, EXIT_BAD_INPUT = 3 };

static void usage(void)
{
    fputs("usage: lincheck FILE [--budget-ms N] [--max-states N] [--max-mem-mb N]\n"
          "  FILE          JSON Lines history ('-' for standard input)\n"
          "  --budget-ms   stop searching after N ms overall (default: no limit)\n"
          "  --max-states  search states per register (default 5000000)\n"
          "  --max-mem-mb  search cache memory per register (default 1024)\n"
          "exit: 0 OK, 1 violation, 2 unknown (a limit was reached), 3 bad input\n",
          stderr);
}

/* A non-negative decimal number, whole string. */
static int parse_count(const char *s, uint64_t *out)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9')
        return STRATA_INVALID_ARGUMENT;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return STRATA_INVALID_ARGUMENT;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct check_limits lim = {.max_states = 5000000};
    const char *path = NULL;
    uint64_t mem_mb = 1024;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t *dst = NULL;
        if (strcmp(a, "--budget-ms") == 0)
            dst = &lim.budget_ms;
        else if (strcmp(a, "--max-states") == 0)
            dst = &lim.max_states;
        else if (strcmp(a, "--max-mem-mb") == 0)
            dst = &mem_mb;
        if (dst != NULL) {
            if (i + 1 == argc || parse_count(argv[i + 1], dst) != 0) {
                fprintf(stderr, "lincheck: %s needs a non-negative integer\n", a);
                usage();
                return EXIT_BAD_INPUT;
            }
            i++;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "lincheck: unknown option %s\n", a);
            usage();
            return EXIT_BAD_INPUT;
        } else if (path != NULL) {
            fprintf(stderr, "lincheck: one history file only\n");
            usage();
            return EXIT_BAD_INPUT;
        } else {
            path = a;
        }
    }
    if (path == NULL) {
        usage();
        return EXIT_BAD_INPUT;
    }
    if (mem_mb > (UINT64_MAX >> 20)) {
        fprintf(stderr, "lincheck: --max-mem-mb is too large\n");
        return EXIT_BAD_INPUT;
    }
    lim.max_bytes = mem_mb << 20;

    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (in == NULL) {
        fprintf(stderr, "lincheck: %s: %s\n", path, strerror(errno));
        return EXIT_BAD_INPUT;
    }
    uint64_t t0 = clock_mono_ns();
    struct hist h;
    struct err e;
    int rc = hist_load(&h, in, path, &e);
    if (in != stdin)
        fclose(in);
    if (rc != 0) {
        fprintf(stderr, "lincheck: %s\n", e.msg);
        /* Running out of memory says nothing about the history. */
        return rc == STRATA_OUT_OF_MEMORY ? EXIT_UNKNOWN : EXIT_BAD_INPUT;
    }

    struct check_summary sum;
    rc = check_history(&h, &lim, stdout, &sum);
    double secs = (double)(clock_mono_ns() - t0) / 1e9;
    size_t n_ops = h.n_ops;
    hist_close(&h);
    if (rc != 0) {
        fprintf(stderr, "lincheck: %s: out of memory while checking\n", path);
        puts("RESULT: UNKNOWN: out of memory");
        return EXIT_UNKNOWN;
    }
    printf("lincheck: %s: ops %zu, branches %zu, registers %zu, logs %zu, search states %" PRIu64
           ", %.3f s\n",
           path, n_ops, sum.branches, sum.registers, sum.logs, sum.states, secs);
    if (sum.violations > 0) {
        printf("RESULT: VIOLATION: %zu finding(s)%s\n", sum.violations,
               sum.unknown > 0 ? " (and some registers not decided)" : "");
        return EXIT_VIOLATION;
    }
    if (sum.unknown > 0) {
        printf("RESULT: UNKNOWN: %zu register(s) not decided within the limits; treat as a failure\n",
               sum.unknown);
        return EXIT_UNKNOWN;
    }
    puts("RESULT: OK");
    return EXIT_OK;
}
