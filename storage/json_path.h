/* JSON document paths (private to storage/): parsing the path argument of json.* commands
 * and rendering paths back to text for error messages and merge conflicts.
 *
 * Grammar (no whitespace anywhere):
 *
 *   path    := '$' segment*
 *   segment := '.' name            object member, name = 1+ bytes of [A-Za-z0-9_-] or >= 0x80
 *            | '[' index ']'       array element, index = 0 | [1-9][0-9]* (at most UINT32_MAX)
 *            | '[' quoted ']'      object member with any name (may be empty)
 *   quoted  := '"' ( any byte except '"' and '\' | '\"' | '\\' )* '"'
 *
 * Negative indexes are not supported. json.set accepts index == length in its last segment
 * as "append". A path has at most max_depth segments (deeper paths cannot address anything
 * inside a document within the nesting limit). */
#ifndef STRATA_STORAGE_JSON_PATH_H
#define STRATA_STORAGE_JSON_PATH_H

#include "common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_seg {
    bool is_index;
    uint32_t index;   /* when is_index */
    const char *name; /* when !is_index: points into the path text or json_path.names */
    size_t len;
};

struct json_path {
    struct json_seg *segs; /* owned */
    size_t n;
    char *names; /* owned: unescaped quoted names */
};

/* Parse `text` (len bytes; not NUL-terminated). On success fills *out, which borrows
 * `text` (keep it alive) and must be released with json_path_free. Returns 0, or
 * INVALID_ARGUMENT "invalid path '...': reason" / OUT_OF_MEMORY with nothing to free. */
int json_path_parse(const char *text, size_t len, int max_segs, struct json_path *out,
                    struct err *err);
void json_path_free(struct json_path *p);

/* Append the canonical text of one member name to out: ".name" when the name fits the
 * unquoted form, else ["..."] with '"' and '\' escaped. Returns 0 or OUT_OF_MEMORY. */
int json_path_append_name(struct buf *out, const char *name, size_t len);
/* Append "[index]". */
int json_path_append_index(struct buf *out, uint32_t index);
/* Render "$" plus the first n segments of p into out (reset first), NUL-terminated
 * (the NUL is not counted in out->len). Returns 0 or OUT_OF_MEMORY. */
int json_path_render(const struct json_path *p, size_t n, struct buf *out);

#endif
