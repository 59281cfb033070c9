/* Conversion between JSON text (jansson) and MessagePack values, for the CLI and tests. */
#include "internal.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static json_t *to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR: /* msgpack-c gives a NULL pointer for an empty string */
        return json_stringn(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        size_t n = o->via.bin.size;
        char *b64 = sm_malloc(4 * ((n + 2) / 3) + 1);
        if (b64 == NULL)
            return NULL;
        EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)o->via.bin.ptr, (int)n);
        json_t *j = json_pack("{s:s}", "$bytes", b64);
        sm_free(b64);
        return j;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++) {
            if (json_array_append_new(a, to_json(&o->via.array.ptr[i]))) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR)
                continue;
            /* msgpack-c gives a NULL pointer for an empty string key. */
            if (json_object_setn_new(m, k->via.str.size ? k->via.str.ptr : "", k->via.str.size,
                                     to_json(&o->via.map.ptr[i].val))) {
                json_decref(m);
                return NULL;
            }
        }
        return m;
    }
    default:
        return json_null();
    }
}

int storage_value_to_json(const uint8_t *mp, size_t len, struct buf *out, bool pretty)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    int rc = value_decode(mp, len, &z, &o);
    if (rc == 0) {
        json_t *j = to_json(&o);
        char *s = j ? json_dumps(j, JSON_ENCODE_ANY | (pretty ? JSON_INDENT(2) : JSON_COMPACT) |
                                        JSON_REAL_PRECISION(17))
                    : NULL;
        rc = s ? buf_append(out, s, strlen(s)) : STRATA_OUT_OF_MEMORY;
        free(s);
        json_decref(j);
    }
    msgpack_zone_destroy(&z);
    return rc;
}

static int from_json(msgpack_packer *pk, json_t *j, struct err *err)
{
    switch (json_typeof(j)) {
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, json_integer_value(j));
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(j));
    case JSON_STRING:
        mp_pack_str(pk, json_string_value(j), json_string_length(j));
        return 0;
    case JSON_ARRAY: {
        msgpack_pack_array(pk, (uint32_t)json_array_size(j));
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v)
        {
            int rc = from_json(pk, v, err);
            if (rc)
                return rc;
        }
        return 0;
    }
    case JSON_OBJECT: {
        json_t *bytes = json_object_get(j, "$bytes");
        if (json_object_size(j) == 1 && json_is_string(bytes)) {
            size_t n = json_string_length(bytes);
            uint8_t *raw = sm_malloc(n / 4 * 3 + 3);
            if (raw == NULL)
                return STRATA_OUT_OF_MEMORY;
            int m = n ? EVP_DecodeBlock(raw, (const unsigned char *)json_string_value(bytes),
                                        (int)n)
                      : 0;
            if (m < 0 || n % 4) {
                sm_free(raw);
                return err_set(err, STRATA_INVALID_ARGUMENT, "$bytes is not valid base64");
            }
            const char *s = json_string_value(bytes);
            if (n >= 1 && s[n - 1] == '=')
                m--;
            if (n >= 2 && s[n - 2] == '=')
                m--;
            msgpack_pack_bin(pk, (size_t)m);
            msgpack_pack_bin_body(pk, raw, (size_t)m);
            sm_free(raw);
            return 0;
        }
        msgpack_pack_map(pk, (uint32_t)json_object_size(j));
        const char *k;
        json_t *v;
        void *tmp;
        json_object_foreach_safe(j, tmp, k, v)
        {
            mp_pack_cstr(pk, k);
            int rc = from_json(pk, v, err);
            if (rc)
                return rc;
        }
        return 0;
    }
    }
    return err_set(err, STRATA_INVALID_ARGUMENT, "unsupported JSON value");
}

int storage_json_to_value(const char *json, size_t len, struct buf *out, struct err *err)
{
    json_error_t je;
    json_t *j = json_loadb(json, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (j == NULL)
        return err_set(err, STRATA_INVALID_ARGUMENT, "invalid JSON at line %d column %d: %s",
                       je.line, je.column, je.text);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_pack_write);
    int rc = from_json(&pk, j, err);
    json_decref(j);
    return rc;
}
