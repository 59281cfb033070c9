/* MessagePack helpers shared by the node's modules (msgpack-c does the encoding). */
#include "node.h"

#include <string.h>

int node_buf_w(void *d, const char *p, size_t n)
{
    return buf_append(d, p, n) ? -1 : 0;
}

void node_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

const msgpack_object *node_map_get(const msgpack_object *m, const char *key)
{
    size_t n = strlen(key);
    for (uint32_t i = 0; m && m->type == MSGPACK_OBJECT_MAP && i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

bool node_map_u64(const msgpack_object *m, const char *key, uint64_t *v)
{
    const msgpack_object *x = node_map_get(m, key);
    if (x == NULL || x->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *v = x->via.u64;
    return true;
}
