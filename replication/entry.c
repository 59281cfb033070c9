/* The Raft log-entry codec (entry.h): commands batched into one padded buffer, and a
 * decoder that trusts nothing it reads. */
#include "entry.h"

#include <assert.h>
#include <string.h>

void entry_writer_init(struct entry_writer *w, uint8_t *out, int64_t ts, uint32_t count,
                       uint32_t payload)
{
    w->out = out;
    w->cap = entry_size(payload);
    w->off = ENTRY_HEADER;
    w->n = 0;
    w->count = count;
    w->payload = payload;
    memcpy(out, ENTRY_MAGIC, 4);
    out[4] = ENTRY_VERSION;
    out[5] = ENTRY_KIND_COMMANDS;
    out[6] = 0;
    out[7] = 0;
    put_be64(out + 8, (uint64_t)ts);
    put_be32(out + 16, count);
    put_be32(out + 20, payload);
}

void entry_writer_add(struct entry_writer *w, const uint8_t *cmd, uint32_t len)
{
    /* The caller sized the buffer from the same commands: overrunning is a bug. */
    assert(w->off + ENTRY_CMD_PREFIX + len <= ENTRY_HEADER + (size_t)w->payload);
    put_be32(w->out + w->off, len);
    memcpy(w->out + w->off + ENTRY_CMD_PREFIX, cmd, len);
    w->off += ENTRY_CMD_PREFIX + (size_t)len;
    w->n++;
}

size_t entry_writer_finish(struct entry_writer *w)
{
    assert(w->n == w->count);
    assert(w->off == ENTRY_HEADER + (size_t)w->payload);
    memset(w->out + w->off, 0, w->cap - w->off);
    return w->cap;
}

int entry_decode(const uint8_t *p, size_t len, struct entry_view *v, struct err *err)
{
    if (len < ENTRY_HEADER)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "log entry of %zu bytes is shorter than its "
                       "%d-byte header",
                       len, ENTRY_HEADER);
    if (memcmp(p, ENTRY_MAGIC, 4) != 0)
        return err_set(err, STRATA_PROTOCOL_ERROR, "log entry magic is not \"SENT\"");
    if (p[4] != ENTRY_VERSION)
        return err_set(err, STRATA_PROTOCOL_ERROR, "log entry format version %u unsupported", p[4]);
    if (p[5] != ENTRY_KIND_COMMANDS)
        return err_set(err, STRATA_PROTOCOL_ERROR, "log entry kind %u unknown", p[5]);
    if (p[6] != 0 || p[7] != 0)
        return err_set(err, STRATA_PROTOCOL_ERROR, "log entry reserved bytes are not zero");
    uint64_t ts = get_be64(p + 8);
    if (ts > (uint64_t)INT64_MAX)
        return err_set(err, STRATA_PROTOCOL_ERROR, "log entry timestamp out of range");
    uint32_t count = get_be32(p + 16);
    size_t payload = get_be32(p + 20);
    if (count == 0)
        return err_set(err, STRATA_PROTOCOL_ERROR, "log entry holds no command");
    if (len % 8 != 0)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "log entry length %zu is not a multiple "
                       "of 8",
                       len);
    if (payload > len - ENTRY_HEADER)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "log entry payload length %zu exceeds the "
                       "%zu bytes present",
                       payload, len - ENTRY_HEADER);
    if (entry_size(payload) != len)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "log entry of %zu bytes does not match its "
                       "payload length %zu",
                       len, payload);
    for (size_t i = ENTRY_HEADER + payload; i < len; i++)
        if (p[i] != 0)
            return err_set(err, STRATA_PROTOCOL_ERROR, "log entry padding is not zero");
    /* Walk the commands once now so apply never meets a bad length half-way through. */
    const uint8_t *q = p + ENTRY_HEADER;
    size_t off = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (payload - off < ENTRY_CMD_PREFIX)
            return err_set(err, STRATA_PROTOCOL_ERROR,
                           "log entry command %u of %u is "
                           "truncated (no length)",
                           i + 1, count);
        size_t clen = get_be32(q + off);
        off += ENTRY_CMD_PREFIX;
        if (clen == 0)
            return err_set(err, STRATA_PROTOCOL_ERROR, "log entry command %u is empty", i + 1);
        if (clen > payload - off)
            return err_set(err, STRATA_PROTOCOL_ERROR,
                           "log entry command %u of %zu bytes "
                           "overruns the payload",
                           i + 1, clen);
        off += clen;
    }
    if (off != payload)
        return err_set(err, STRATA_PROTOCOL_ERROR,
                       "log entry payload has %zu bytes after its "
                       "%u commands",
                       payload - off, count);
    v->ts = (int64_t)ts;
    v->count = count;
    v->payload = q;
    v->payload_len = payload;
    v->off = 0;
    return 0;
}

int entry_next(struct entry_view *v, const uint8_t **cmd, size_t *len)
{
    if (v->off >= v->payload_len)
        return 0;
    size_t clen = get_be32(v->payload + v->off);
    *cmd = v->payload + v->off + ENTRY_CMD_PREFIX;
    *len = clen;
    v->off += ENTRY_CMD_PREFIX + clen;
    return 1;
}
