/* quant4_simd.h — what quant4.c (NVFP4, the largest magnitude) and quant4_mx.c (MXFP4) share:
 * the E2M1 rounding bounds, the per-call cache of a scale code's thresholds (the vector paths
 * never divide: see "BF16 by thresholds" below), the 16-value code maker and the lane maxima.
 * Internal to ops/, static inline: each file gets its own copies. */
#ifndef MPK_QUANT4_SIMD_H
#define MPK_QUANT4_SIMD_H

#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

static const float BOUNDS_F[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};

/* x / 2^e as x * 2^-e (e in [-127, 127]): exact where the product is >= 2^-126, and below that it
 * is far under 0.25 either way. */
static inline float mx_inv(int e)
{
    return e == 127 ? 0x1p-127f : ops_u2f((uint32_t)(127 - e) << 23);
}

static inline uint32_t e2m1_mag(float a)
{
    return (uint32_t)(a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) +
           (a > 5.0f);
}

static inline size_t first_bad(mpk_dtype dt, const void *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(ops_load_f32(dt, in, i)))
            return i;
    return n;
}

#if defined(__x86_64__)
#include <immintrin.h>

/* The largest of 16 unsigned 16-bit lanes. */
__attribute__((target("avx2"))) static inline uint32_t hmax_u16(__m256i v)
{
    __m128i m = _mm_max_epu16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_xor_si128(m, _mm_set1_epi16(-1)); /* the smallest complement is the largest value */
    return 0xFFFFu - ((uint32_t)_mm_cvtsi128_si32(_mm_minpos_epu16(m)) & 0xFFFFu);
}

#endif

static inline bool avx2_ok(void)
{
#if defined(__x86_64__)
    return ops_simd_allowed() && __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

/* ---------------------------------------------------------------- BF16 by thresholds
 *
 * The AVX2 paths never divide: a block's codes depend only on its scale code, and the quotient
 * (x / d in F32, or x x 2^-X) is a non-decreasing function of x's magnitude, so each E2M1 bound
 * is one BF16 magnitude T: |x| > T exactly where the quotient passes the bound (> 0.25, >= 0.75,
 * ...). T is found once per scale code met in a call by bisection over the 0x7F80 finite BF16
 * magnitudes with the very F32 expression the portable path evaluates, so the codes are its
 * codes, bit for bit; the eighth threshold is the sign's (NVFP4: the quotient is < 0 exactly
 * where x < 0 and |x| / d > 0; MXFP4: the sign bit, T = -1). Then 16 values cost 7 16-bit
 * compares and subtractions. */

typedef struct {
    int16_t t[8][16]; /* each threshold in all 16 lanes of a vector */
} thr8;

typedef struct {
    thr8 tab[256];
    uint8_t have[256];
    union {
        uint8_t sc_of[0x8000];  /* NVFP4: the block scale code of a largest magnitude (BF16 bits), 0xFF
                                   until computed (a scale code is never 0xFF) */
        uint16_t ex_of[0x8000]; /* MXFP4 by a rule through a function: its exponent + 127 + 0x100, 0
                                   until computed */
    };
    bool div;   /* quotient x / k (NVFP4), else x * k (MXFP4) */
    float g;    /* NVFP4's global scale */
    int16_t sign_all; /* MXFP4: -1, the sign bit always kept */
} thr_cache;

static inline float quot(uint32_t b, float k, bool div)
{
    float x = ops_u2f(b << 16);
    return div ? x / k : x * k;
}

/* The largest finite magnitude whose quotient does not pass t (> t, or >= t with ge). */
static inline int16_t bound(float t, bool ge, float k, bool div)
{
    uint32_t lo = 0, hi = 0x7F7F; /* the quotient of 0 (0, or NaN for k = 0) passes no bound */
    float qh = quot(hi, k, div);
    if (!(ge ? qh >= t : qh > t))
        return (int16_t)hi;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        float q = quot(mid, k, div);
        if (ge ? q >= t : q > t)
            hi = mid;
        else
            lo = mid;
    }
    return (int16_t)lo;
}

static __attribute__((noinline, unused)) void thresholds_make(thr_cache *c, uint8_t sc, float k)
{
    thr8 *t = &c->tab[sc];
    for (int i = 0; i < 8; i++) {
        int16_t v = i < 7 ? bound(BOUNDS_F[i], i % 2 == 1, k, c->div) : c->div ? bound(0.0f, false, k, true) : c->sign_all;
        for (int l = 0; l < 16; l++)
            t->t[i][l] = v;
    }
    c->have[sc] = 1;
}

/* Scale code sc's thresholds (k: its divisor or multiplier), made the first time it is met. */
static inline __attribute__((always_inline)) const thr8 *thresholds(thr_cache *c, uint8_t sc, float k)
{
    if (!c->have[sc])
        thresholds_make(c, sc, k);
    return &c->tab[sc];
}

#if defined(__x86_64__)
#define THR(t, i) _mm256_loadu_si256((const __m256i *)(const void *)(t)->t[i])

/* The codes of 16 BF16 values under thresholds t -> 8 bytes (element 2k in the low nibble). */
__attribute__((target("avx2"))) static inline void codes16(const uint16_t *p, const thr8 *t, uint8_t *out)
{
    __m256i v = _mm256_loadu_si256((const __m256i *)p), a = _mm256_and_si256(v, _mm256_set1_epi16(0x7FFF));
    __m256i m = _mm256_setzero_si256();
    for (int i = 0; i < 7; i++)
        m = _mm256_sub_epi16(m, _mm256_cmpgt_epi16(a, THR(t, i)));
    __m256i s = _mm256_and_si256(_mm256_cmpgt_epi16(a, THR(t, 7)), _mm256_srai_epi16(v, 15));
    m = _mm256_or_si256(m, _mm256_and_si256(s, _mm256_set1_epi16(8)));
    m = _mm256_or_si256(m, _mm256_srli_epi32(m, 12)); /* the odd element to bits 4-7 of its pair */
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12,
                                          -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    m = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(m, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
    _mm_storel_epi64((__m128i *)out, _mm256_castsi256_si128(m));
}

/* The largest of each of four vectors of 16 unsigned 16-bit lanes, as 16-bit fields of the
 * result in the order a0, a2, a1, a3 (one reduction for the four, not four horizontal ones). */
__attribute__((target("avx2"))) static inline __m128i max4_u16v(__m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    const __m256i pick = _mm256_setr_epi8(0, 1, 8, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 8, 9, -1,
                                          -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i m01 = _mm256_max_epu16(_mm256_permute2x128_si256(a0, a1, 0x20), _mm256_permute2x128_si256(a0, a1, 0x31));
    __m256i m23 = _mm256_max_epu16(_mm256_permute2x128_si256(a2, a3, 0x20), _mm256_permute2x128_si256(a2, a3, 0x31));
    __m256i u = _mm256_max_epu16(_mm256_unpacklo_epi64(m01, m23), _mm256_unpackhi_epi64(m01, m23));
    u = _mm256_max_epu16(u, _mm256_shuffle_epi32(u, 0xB1));
    u = _mm256_max_epu16(u, _mm256_srli_epi32(u, 16)); /* 16-bit lanes 0, 4 | 0, 4: a0, a2 | a1, a3 */
    u = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(u, pick), _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
    return _mm256_castsi256_si128(u); /* the four in 16-bit lanes 0-3, lanes 4-7 copies of them */
}

/* max4_u16v's four as 16-bit fields of an integer (a0, a2, a1, a3). */
__attribute__((target("avx2"))) static inline uint64_t max4_u16(__m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    return (uint64_t)_mm_cvtsi128_si64(max4_u16v(a0, a1, a2, a3));
}

#endif

#endif
