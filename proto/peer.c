/* The preamble a raft peer connection opens with (proto.h): magic, version, group,
 * sender id and address, read exactly so nothing of raft's stream is consumed. */
#include "proto.h"

#include <string.h>

size_t proto_peer_encode(uint8_t *out, const struct proto_peer *p)
{
    size_t alen = strnlen(p->address, PROTO_ADDRESS_MAX);
    memcpy(out, PROTO_PEER_MAGIC, 4);
    out[4] = 1;
    out[5] = 0;
    out[6] = (uint8_t)(alen >> 8);
    out[7] = (uint8_t)alen;
    put_be32(out + 8, p->group);
    put_be64(out + 12, p->node_id);
    memcpy(out + PROTO_PEER_FIXED, p->address, alen);
    return PROTO_PEER_FIXED + alen;
}

int proto_peer_decode(const uint8_t *p, size_t n, struct proto_peer *out, size_t *used,
                      struct err *err)
{
    size_t check = n < 4 ? n : 4;
    if (memcmp(p, PROTO_PEER_MAGIC, check) != 0)
        return err_set(err, STRATA_PROTOCOL_ERROR, "not a raft peer preamble (bad magic)");
    if (n < PROTO_PEER_FIXED) {
        *used = PROTO_PEER_FIXED;
        return 0;
    }
    if (p[4] != 1)
        return err_set(err, STRATA_PROTOCOL_ERROR, "raft peer preamble version %u unsupported",
                       p[4]);
    size_t alen = ((size_t)p[6] << 8) | p[7];
    if (alen == 0 || alen > PROTO_ADDRESS_MAX)
        return err_set(err, STRATA_PROTOCOL_ERROR, "raft peer address length %zu invalid", alen);
    *used = PROTO_PEER_FIXED + alen;
    if (n < *used)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (p[PROTO_PEER_FIXED + i] < 0x21 || p[PROTO_PEER_FIXED + i] > 0x7e)
            return err_set(err, STRATA_PROTOCOL_ERROR, "raft peer address is not printable");
    out->group = get_be32(p + 8);
    out->node_id = get_be64(p + 12);
    if (out->node_id == 0)
        return err_set(err, STRATA_PROTOCOL_ERROR, "raft peer node id 0 is invalid");
    memcpy(out->address, p + PROTO_PEER_FIXED, alen);
    out->address[alen] = '\0';
    return 1;
}
