/* The input preparation the MessagePack targets share (fuzz_frame, fuzz_command,
 * fuzz_snapshot, fuzz_placement): a private copy of exactly `size` bytes (so ASan sees any
 * read past the end) in which declared container counts are kept to what the input could
 * hold.
 *
 * Why: msgpack-c allocates a container's declared element count before reading any
 * element. A 32-bit count (0xdd array32, 0xdf map32) in a 5-byte body asks for gigabytes,
 * which ASan spends seconds poisoning (or libFuzzer's malloc limit reports); those paths
 * end in PROTOCOL_ERROR and have their unit tests (test_request_decode_huge_declared_count,
 * test_decode_huge_declared_count) and tests/fuzz/crashes/snapshot-map32-1gib.stream.
 * A 16-bit count up to 65535 still asks for 1.5 MB (array) or 3 MB (map): past ASan's
 * size-class allocator, so every such input costs a fresh mmap, page faults and shadow
 * poisoning, which measured made the targets 5-10 times slower. Each element takes at
 * least one byte (a map entry two), so a count larger than the bytes left after its header
 * can only end in "truncated" either way; the rewrite lowers it to the most the rest of the
 * input could hold, which keeps every container allocation under about 100 KB at the
 * -max_len the targets run with.
 *
 * The rewrite does not parse: a 0xdc..0xdf byte inside a string is rewritten too. It is a
 * fixed function of the input, so a crash reproduces from the saved input alone. */
#ifndef STRATA_FUZZ_INPUT_H
#define STRATA_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Returns the prepared copy (free() it), or NULL when out of memory. */
static inline uint8_t *fuzz_input_copy(const uint8_t *data, size_t size)
{
    uint8_t *in = malloc(size ? size : 1);
    if (in == NULL)
        return NULL;
    memcpy(in, data, size);
    for (size_t i = 0; i < size; i++) {
        if (in[i] == 0xdd || in[i] == 0xdf)
            in[i] -= 1; /* array32 -> array16, map32 -> map16 */
        if ((in[i] == 0xdc || in[i] == 0xde) && size - i >= 3) {
            size_t left = size - i - 3, per = in[i] == 0xde ? 2 : 1;
            size_t count = (size_t)in[i + 1] << 8 | in[i + 2];
            if (count > left / per) {
                count = left / per;
                in[i + 1] = (uint8_t)(count >> 8);
                in[i + 2] = (uint8_t)count;
            }
        }
    }
    return in;
}

#endif
