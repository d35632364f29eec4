/* xxh_avx2.c — libxxhash's XXH3, from its own header in its documented inline mode
 * (XXH_INLINE_ALL), built with AVX2 kernels (this file alone is compiled with -mavx2). The
 * shared library is built for baseline x86-64 (SSE2); hash.c calls these only on a CPU that
 * has AVX2. Same algorithm and results, the library's code. */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include "formats_internal.h"

void *mpk_xxh_avx2_new(void)
{
    XXH3_state_t *s = XXH3_createState();
    if (s)
        XXH3_128bits_reset(s);
    return s;
}

void mpk_xxh_avx2_update(void *s, const void *p, size_t n)
{
    XXH3_128bits_update(s, p, n);
}

mpk_hash128 mpk_xxh_avx2_digest(const void *s)
{
    XXH128_hash_t h = XXH3_128bits_digest(s);
    return (mpk_hash128){h.high64, h.low64};
}

void mpk_xxh_avx2_free(void *s)
{
    XXH3_freeState(s);
}

uint64_t mpk_xxh_avx2_64(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}
