/* The history checker: a parsed history (history.c), the per-register linearizability
 * search (search.c) and the checks over a whole history (checks.c). Format and
 * algorithm: tests/tools/README.md. */
#ifndef STRATA_LINCHECK_H
#define STRATA_LINCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"

/* ---- History (history.c) ------------------------------------------------------------ */

enum hist_f { HIST_READ, HIST_WRITE, HIST_CAS, HIST_APPEND, HIST_FORK, HIST_MERGE };
enum hist_outcome { HIST_OK, HIST_FAIL, HIST_INFO };

#define HIST_NONE UINT32_MAX /* no name: a fork/merge without "key", no "error" */
#define HIST_NULL 0u         /* value id of JSON null: an absent key */
#define HIST_T_MAX (INT64_C(1) << 62) /* every "t" is in [0, HIST_T_MAX) */

/* One operation: an invoke line paired with its completion line. */
struct hist_op {
    int64_t call;  /* invoke t */
    int64_t ret;   /* completion t (for "info" the time the client gave up, not a bound) */
    int64_t proc;
    enum hist_f f;
    enum hist_outcome outcome;
    uint32_t branch; /* name id */
    uint32_t key;    /* name id; for fork/merge the other branch, or HIST_NONE */
    uint32_t value;  /* value id: written (write, cas), returned (read ok), else HIST_NULL */
    uint32_t expect; /* value id: cas only */
    bool has_version;
    bool has_seq;
    uint64_t version;
    uint64_t seq;
    uint32_t error; /* name id of the completion's "error", or HIST_NONE */
    unsigned long line_call, line_ret;
};

enum hist_final_kind { HIST_FINAL_READ, HIST_FINAL_LEN };

/* A "final" line: a read of a register (or the length of an event log) after healing. */
struct hist_final {
    enum hist_final_kind kind;
    uint32_t branch, key; /* name ids */
    uint32_t value;       /* READ: value id */
    uint64_t len;         /* LEN */
    unsigned long line;
};

struct json_t;

/* A whole history. Names (branches, keys, error codes) and values are interned: equal
 * ids mean equal text. Values are compared by their canonical JSON text (compact, sorted
 * object keys), so 1 and 1.0 differ as they do in the engine. */
struct hist {
    struct hist_op *ops; /* owned; in no particular order */
    size_t n_ops;
    struct hist_final *finals; /* owned */
    size_t n_finals;
    char **names; /* owned */
    size_t n_names;
    char **values; /* owned: canonical JSON text; values[HIST_NULL] is "null" */
    size_t n_values;
    int64_t t_max; /* the largest "t" seen (0 if none) */
    struct json_t *name_ids;  /* private: text -> id */
    struct json_t *value_ids; /* private: text -> id */
};

/* Parse a JSON Lines history from `in`. `path` only names the input in messages.
 * Returns 0, STRATA_INVALID_ARGUMENT (bad input: e->msg names the line and the problem)
 * or STRATA_OUT_OF_MEMORY. On error *h is left empty (hist_close is still safe). */
int hist_load(struct hist *h, FILE *in, const char *path, struct err *e);
void hist_close(struct hist *h);

const char *hist_f_name(enum hist_f f);

/* ---- Register search core (search.c) ------------------------------------------------- */

/* A register operation as the search sees it. Ops whose outcome is unknown have
 * ret == LIN_T_INF: they may take effect at any point after `call`, or never. */
enum lin_kind {
    LIN_READ,  /* returns `value` */
    LIN_WRITE, /* sets `value` */
    LIN_CAS,   /* sets `value` iff the register holds `expect` */
    LIN_HAVOC, /* sets an unknown value (a fork or merge into the register's branch) */
};

#define LIN_T_INF INT64_MAX
#define LIN_ANY UINT32_MAX        /* register state: some value we do not know */
#define LIN_DEAD (UINT32_MAX - 1) /* register state: a value no op reads */

struct lin_op {
    int64_t call;
    int64_t ret;
    enum lin_kind kind;
    uint32_t value;
    uint32_t expect;
};

/* Limits of one search. Exceeding any of them ends it with LIN_UNKNOWN. */
struct lin_limits {
    uint64_t max_states;  /* cache entries; 0 = no limit */
    uint64_t max_bytes;   /* cache memory; 0 = no limit */
    uint64_t deadline_ns; /* clock_mono_ns() deadline; 0 = none */
};

enum lin_verdict { LIN_OK, LIN_VIOLATION, LIN_UNKNOWN };

struct lin_result {
    enum lin_verdict verdict;
    uint64_t states; /* distinct (linearized set, state) pairs visited */
    const char *unknown_why; /* LIN_UNKNOWN: which limit (static string) */
    /* LIN_VIOLATION: the longest partial linearization found (op indexes in order, owned,
     * free with lin_result_close), the register state after it and the op whose
     * completion could not be reached from there. If that op is a write (or cas) that
     * could be placed but would replace a value an unplaced op still reads, blocked_by is
     * that reader, else SIZE_MAX. */
    size_t *prefix;
    size_t prefix_len;
    uint32_t stuck_state;
    size_t stuck;
    size_t blocked_by;
};

/* Is there a linearization of ops[0..n) of a register starting in state `initial`
 * (HIST_NULL, or LIN_ANY for an unknown value)? Every op with a finite ret must be
 * placed between its call and ret; ops with ret == LIN_T_INF may be placed after their
 * call or left out. Wing & Gong's search with Lowe's just-in-time linearization and a
 * cache of visited (linearized set, state) pairs. Returns 0 (verdict in *res) or
 * STRATA_OUT_OF_MEMORY. */
int lin_check(const struct lin_op *ops, size_t n, uint32_t initial,
              const struct lin_limits *lim, struct lin_result *res);
void lin_result_close(struct lin_result *res);

/* Flaws the polynomial pre-check finds. Each is a proof that no linearization exists,
 * valid when written values are unique, the initial state is null and no op is LIN_HAVOC. */
enum lin_flaw {
    LIN_FLAW_NONE,
    LIN_FLAW_DUP_VALUE,    /* op and other write the same value */
    LIN_FLAW_NEVER_WRITTEN, /* op read a non-null value no op wrote */
    LIN_FLAW_FUTURE_READ,  /* op read the value of other, invoked after op completed */
    LIN_FLAW_STALE_NULL,   /* op read null although other (a write, or a read of a
                              value) completed before op was invoked */
    LIN_FLAW_STALE_READ,   /* op read the value of writer, but other was invoked after
                              writer completed, completed before op was invoked and left
                              another value */
    LIN_FLAW_CAS_TWICE,    /* op and other are both acknowledged cas from the same value */
};

struct lin_finding {
    enum lin_flaw flaw;
    size_t op;
    size_t other;
    size_t writer;
};

/* The fast sound pre-check; O(n log n). "Reads" are LIN_READ ops and the expected value
 * of acknowledged LIN_CAS ops. Returns 0 (finding in *out, flaw NONE if none) or
 * STRATA_OUT_OF_MEMORY. */
int lin_precheck(const struct lin_op *ops, size_t n, struct lin_finding *out);

/* ---- Checks over a history (checks.c) ------------------------------------------------- */

struct check_limits {
    uint64_t budget_ms;  /* whole run; 0 = none */
    uint64_t max_states; /* per register; 0 = none */
    uint64_t max_bytes;  /* per register; 0 = none */
};

struct check_summary {
    size_t registers, logs, branches;
    size_t violations; /* findings reported */
    size_t unknown;    /* registers whose search hit a limit */
    uint64_t states;   /* search states over all registers */
};

/* Run every check over h and write a readable report to `out`. Returns 0 (results in
 * *sum) or STRATA_OUT_OF_MEMORY. */
int check_history(const struct hist *h, const struct check_limits *lim, FILE *out,
                  struct check_summary *sum);

#endif
