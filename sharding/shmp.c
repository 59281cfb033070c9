/* The MessagePack plumbing the placement table and the moves record share (shmp.h). */
#include "shmp.h"

#include <string.h>

int shmp_name_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

int shmp_sink_write(void *data, const char *p, size_t len)
{
    struct shmp_sink *s = data;
    if (buf_append(s->b, p, len)) {
        s->oom = true;
        return -1;
    }
    return 0;
}

void shmp_pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

int shmp_unpack_one(const uint8_t *data, size_t len, msgpack_zone *z, msgpack_object *root,
                    int code, const char *what, struct err *err)
{
    if (data == NULL || len == 0)
        return err_set(err, code, "%s: empty input", what);
    struct mp_scan sc;
    int sr = mp_scan(data, len, 0, &sc);
    if (sr == MP_SCAN_TOO_MANY)
        return err_set(err, code,
                       "%s: truncated (%zu bytes; a container at byte %zu declares %llu "
                       "elements, %llu bytes follow)",
                       what, len, sc.at, (unsigned long long)sc.count,
                       (unsigned long long)sc.room);
    if (sr == MP_SCAN_TRUNCATED)
        return err_set(err, code, "%s: truncated (%zu bytes)", what, len);
    if (sr == MP_SCAN_TOO_DEEP)
        return err_set(err, code, "%s: cannot be decoded (%s)", what, mp_scan_reason(sr));
    if (sr != MP_SCAN_OK)
        return err_set(err, code, "%s: not valid MessagePack (%s at byte %zu)", what,
                       mp_scan_reason(sr), sc.at);
    if (sc.end != len)
        return err_set(err, code, "%s: %zu trailing bytes", what, len - sc.end);
    size_t off = 0;
    switch (msgpack_unpack((const char *)data, len, &off, z, root)) {
    case MSGPACK_UNPACK_SUCCESS:
        return 0;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        return err_set(err, STRATA_OUT_OF_MEMORY, "%s: out of memory decoding", what);
    default: /* the walk above already refused what msgpack-c would */
        return err_set(err, code, "%s: not valid MessagePack", what);
    }
}
