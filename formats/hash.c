/* hash.c — XXH3 over tensor bytes: libxxhash's shared library, or its header's AVX2 build
 * (xxh_avx2.c) where the CPU has AVX2. The code is chosen once per process, so a state is
 * always used by the code that made it; an mpk_xxh is that code's XXH3_state_t. */
#include "formats_internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

typedef struct {
    void *(*make)(void);
    void (*update)(void *s, const void *p, size_t n);
    mpk_hash128 (*digest)(const void *s);
    void (*drop)(void *s);
    uint64_t (*h64)(const void *p, size_t n);
    const char *name;
} xxh_code;

static void *lib_make(void)
{
    XXH3_state_t *s = XXH3_createState();
    if (s)
        XXH3_128bits_reset(s);
    return s;
}

static void lib_update(void *s, const void *p, size_t n)
{
    XXH3_128bits_update(s, p, n);
}

static mpk_hash128 lib_digest(const void *s)
{
    XXH128_hash_t d = XXH3_128bits_digest(s);
    return (mpk_hash128){d.high64, d.low64};
}

static void lib_drop(void *s)
{
    XXH3_freeState(s);
}

static const xxh_code library = {lib_make, lib_update, lib_digest, lib_drop, XXH3_64bits, "libxxhash"};
#ifdef MPK_HAVE_XXH_AVX2
static const xxh_code avx2 = {mpk_xxh_avx2_new, mpk_xxh_avx2_update, mpk_xxh_avx2_digest, mpk_xxh_avx2_free,
                              mpk_xxh_avx2_64, "avx2"};
#endif

static const xxh_code *code(void)
{
#ifdef MPK_HAVE_XXH_AVX2
    static atomic_int cpu = -1;
    int c = atomic_load_explicit(&cpu, memory_order_relaxed);
    if (c < 0) {
        c = __builtin_cpu_supports("avx2");
        atomic_store_explicit(&cpu, c, memory_order_relaxed);
    }
    if (c && !mpk_tuning_now()->xxh_generic) /* (xxh_generic: libxxhash's, to compare) */
        return &avx2;
#endif
    return &library;
}

const char *mpk_xxh_impl(void)
{
    return code()->name;
}

mpk_xxh *mpk_xxh_new(void)
{
    return code()->make();
}

void mpk_xxh_update(mpk_xxh *h, const void *p, size_t n)
{
    code()->update(h, p, n);
}

mpk_hash128 mpk_xxh_digest(const mpk_xxh *h)
{
    return code()->digest(h);
}

void mpk_xxh_free(mpk_xxh *h)
{
    if (h)
        code()->drop(h);
}

uint64_t mpk_xxh64(const void *p, size_t n)
{
    return code()->h64(p, n);
}
