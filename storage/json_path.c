/* JSON document paths: parser and renderer for the grammar documented in json_path.h. */
#include "json_path.h"

#include <stdio.h>
#include <string.h>

static bool name_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c >= 0x80;
}

/* Report a malformed path; the path is quoted (truncated) so the caller sees what failed. */
static int bad_path(struct err *err, const char *text, size_t len, size_t at, const char *why)
{
    return err_set(err, STRATA_INVALID_ARGUMENT, "invalid path '%.*s': %s at offset %zu",
                   (int)(len > 100 ? 100 : len), text, why, at);
}

int json_path_parse(const char *text, size_t len, int max_segs, struct json_path *out,
                    struct err *err)
{
    memset(out, 0, sizeof *out);
    if (len == 0 || text[0] != '$')
        return bad_path(err, text, len, 0, "a path must start with '$'");
    /* Every segment takes at least two bytes, so (len - 1) / 2 bounds the count; names
     * unescape to at most the path's length. */
    size_t cap = (len - 1) / 2 + 1;
    out->segs = sm_calloc(cap, sizeof *out->segs);
    out->names = sm_malloc(len);
    if (out->segs == NULL || out->names == NULL) {
        json_path_free(out);
        return err_set(err, STRATA_OUT_OF_MEMORY, "out of memory parsing a path");
    }
    size_t i = 1, nlen = 0;
    int rc = 0;
    while (i < len) {
        struct json_seg *sg = &out->segs[out->n];
        if (text[i] == '.') {
            size_t start = ++i;
            while (i < len && name_byte((unsigned char)text[i]))
                i++;
            if (i == start) {
                rc = bad_path(err, text, len, start, "expected a member name after '.'");
                goto fail;
            }
            sg->name = text + start;
            sg->len = i - start;
        } else if (text[i] == '[' && i + 1 < len && text[i + 1] == '"') {
            i += 2;
            sg->name = out->names + nlen;
            for (;;) {
                if (i >= len) {
                    rc = bad_path(err, text, len, i, "unterminated quoted name");
                    goto fail;
                }
                char c = text[i++];
                if (c == '"')
                    break;
                if (c == '\\') {
                    if (i >= len || (text[i] != '"' && text[i] != '\\')) {
                        rc = bad_path(err, text, len, i, "only \\\" and \\\\ escapes are allowed");
                        goto fail;
                    }
                    c = text[i++];
                }
                out->names[nlen++] = c;
            }
            sg->len = (size_t)(out->names + nlen - sg->name);
            if (i >= len || text[i] != ']') {
                rc = bad_path(err, text, len, i, "expected ']' after a quoted name");
                goto fail;
            }
            i++;
        } else if (text[i] == '[') {
            size_t start = ++i;
            uint64_t v = 0;
            while (i < len && text[i] >= '0' && text[i] <= '9') {
                v = v * 10 + (uint64_t)(text[i] - '0');
                if (v > UINT32_MAX) {
                    rc = bad_path(err, text, len, start, "array index too large");
                    goto fail;
                }
                i++;
            }
            if (i == start || (text[start] == '0' && i - start > 1)) {
                rc = bad_path(err, text, len, start,
                              "expected a non-negative index without leading zeros or a "
                              "quoted name after '['");
                goto fail;
            }
            if (i >= len || text[i] != ']') {
                rc = bad_path(err, text, len, i, "expected ']' after an index");
                goto fail;
            }
            i++;
            sg->is_index = true;
            sg->index = (uint32_t)v;
        } else {
            rc = bad_path(err, text, len, i, "expected '.' or '['");
            goto fail;
        }
        if (++out->n > (size_t)max_segs) {
            rc = err_set(err, STRATA_INVALID_ARGUMENT,
                         "invalid path '%.*s': more than %d segments (the nesting limit)",
                         (int)(len > 100 ? 100 : len), text, max_segs);
            goto fail;
        }
    }
    return 0;
fail:
    json_path_free(out);
    return rc;
}

void json_path_free(struct json_path *p)
{
    sm_free(p->segs);
    sm_free(p->names);
    memset(p, 0, sizeof *p);
}

int json_path_append_name(struct buf *out, const char *name, size_t len)
{
    bool plain = len > 0;
    for (size_t i = 0; plain && i < len; i++)
        plain = name_byte((unsigned char)name[i]);
    if (plain)
        return buf_append_u8(out, '.') || buf_append(out, name, len) ? STRATA_OUT_OF_MEMORY : 0;
    if (buf_append(out, "[\"", 2))
        return STRATA_OUT_OF_MEMORY;
    for (size_t i = 0; i < len; i++) {
        if ((name[i] == '"' || name[i] == '\\') && buf_append_u8(out, '\\'))
            return STRATA_OUT_OF_MEMORY;
        if (buf_append_u8(out, (uint8_t)name[i]))
            return STRATA_OUT_OF_MEMORY;
    }
    return buf_append(out, "\"]", 2) ? STRATA_OUT_OF_MEMORY : 0;
}

int json_path_append_index(struct buf *out, uint32_t index)
{
    char tmp[16];
    int n = snprintf(tmp, sizeof tmp, "[%u]", (unsigned)index);
    return buf_append(out, tmp, (size_t)n) ? STRATA_OUT_OF_MEMORY : 0;
}

int json_path_render(const struct json_path *p, size_t n, struct buf *out)
{
    buf_reset(out);
    int rc = buf_append_u8(out, '$') ? STRATA_OUT_OF_MEMORY : 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = p->segs[i].is_index ? json_path_append_index(out, p->segs[i].index)
                                 : json_path_append_name(out, p->segs[i].name, p->segs[i].len);
    if (rc == 0 && buf_append_u8(out, 0))
        rc = STRATA_OUT_OF_MEMORY;
    if (rc == 0)
        out->len--; /* keep the NUL out of the length */
    return rc;
}
