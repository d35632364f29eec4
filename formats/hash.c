/* hash.c — XXH3 over tensor bytes: libxxhash's shared library, or its header's AVX2 build
 * (xxh_avx2.c) where the CPU has AVX2. */
#include "formats_internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

struct mpk_xxh {
    void *st; /* an XXH3_state_t of the code chosen when it was made */
    bool avx2;
};

static bool use_avx2(void)
{
#ifdef MPK_HAVE_XXH_AVX2
    static atomic_int chosen = -1;
    int c = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (c < 0) {
        const char *e = getenv("MOEPACK_XXH");
        c = __builtin_cpu_supports("avx2") && !(e && strcmp(e, "generic") == 0);
        atomic_store_explicit(&chosen, c, memory_order_relaxed);
    }
    return c;
#else
    return false;
#endif
}

const char *mpk_xxh_impl(void)
{
    return use_avx2() ? "avx2" : "libxxhash";
}

mpk_xxh *mpk_xxh_new(void)
{
    mpk_xxh *h = malloc(sizeof *h);
    if (!h)
        return NULL;
    h->avx2 = use_avx2();
#ifdef MPK_HAVE_XXH_AVX2
    if (h->avx2) {
        if (!(h->st = mpk_xxh_avx2_new()))
            goto fail;
        return h;
    }
#endif
    if (!(h->st = XXH3_createState()))
        goto fail;
    XXH3_128bits_reset(h->st);
    return h;
fail:
    free(h);
    return NULL;
}

void mpk_xxh_update(mpk_xxh *h, const void *p, size_t n)
{
#ifdef MPK_HAVE_XXH_AVX2
    if (h->avx2) {
        mpk_xxh_avx2_update(h->st, p, n);
        return;
    }
#endif
    XXH3_128bits_update(h->st, p, n);
}

mpk_hash128 mpk_xxh_digest(const mpk_xxh *h)
{
#ifdef MPK_HAVE_XXH_AVX2
    if (h->avx2)
        return mpk_xxh_avx2_digest(h->st);
#endif
    XXH128_hash_t d = XXH3_128bits_digest(h->st);
    return (mpk_hash128){d.high64, d.low64};
}

void mpk_xxh_free(mpk_xxh *h)
{
    if (!h)
        return;
#ifdef MPK_HAVE_XXH_AVX2
    if (h->avx2)
        mpk_xxh_avx2_free(h->st);
    else
#endif
        XXH3_freeState(h->st);
    free(h);
}

uint64_t mpk_xxh64(const void *p, size_t n)
{
#ifdef MPK_HAVE_XXH_AVX2
    if (use_avx2())
        return mpk_xxh_avx2_64(p, n);
#endif
    return XXH3_64bits(p, n);
}
