/* fuzz_huff.c — the .mpkz Huffman coder (formats/huff.c). The first byte picks the mode:
 * even, the rest is a stream decoded for n bytes (n from the next two bytes, 1..65536): refused,
 * or decoded and then coded again to a stream that decodes to the same bytes; odd, the rest is
 * a plane coded and decoded back (it must give the same bytes). The decoder may read nothing
 * outside its input and write nothing outside its n bytes (ASan and the copies below see it). */
#include "fuzz.h"
#include "formats_internal.h"

#include <string.h>

static void round_trip(const uint8_t *p, size_t n)
{
    mpk_huff *h = malloc(sizeof *h);
    FUZZ_CHECK(h);
    size_t zl = mpk_huff_plan(p, n, SIZE_MAX, h), cap = zl + 8; /* the room the encoder asks for */
    uint8_t *z = malloc(cap), *back = malloc(n);
    FUZZ_CHECK(z && back && zl >= MPK_HUFF_HEAD && zl <= MPK_HUFF_HEAD + (11 * n + 31) / 8);
    memset(z + zl, 0xA5, 8);
    FUZZ_CHECK(mpk_huff_encode(h, p, n, z, cap) == zl);
    for (size_t i = zl; i < cap; i++) /* nothing written past the stream */
        FUZZ_CHECK(z[i] == 0xA5);
    uint8_t *exact = malloc(zl); /* exactly the stream: a read past it is out of bounds */
    FUZZ_CHECK(exact);
    memcpy(exact, z, zl);
    FUZZ_CHECK(mpk_huff_decode(exact, zl, back, n) && memcmp(back, p, n) == 0);
    free(exact), free(h), free(z), free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1) {
        if (size > 1)
            round_trip(data + 1, size - 1);
        return 0;
    }
    if (size < 3)
        return 0;
    size_t n = 1 + ((size_t)data[1] | (size_t)data[2] << 8), zn = size - 3;
    uint8_t *src = malloc(zn + 1), *dst = malloc(n);
    FUZZ_CHECK(src && dst);
    memcpy(src, data + 3, zn);
    if (mpk_huff_decode(src, zn, dst, n))
        round_trip(dst, n);
    free(src), free(dst);
    return 0;
}
