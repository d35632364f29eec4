/* quant4.c — quantizing BF16/F16/F32 to the 4-bit formats --quantize writes: NVFP4 with NVIDIA
 * ModelOpt's rules and MXFP4 with the OCP MX rule; the largest magnitude of a tensor (with its
 * first NaN or infinity); the E2M1 codes of MXFP4 blocks under a given scale (shared with
 * quant.c's reference-rule quantizer). Each has a portable path and, for BF16 input on a CPU
 * with AVX2 (NVFP4's codes: AVX-512BW where present), a vector path giving the same bytes
 * (runtime dispatch; mpk_tune's no_simd forces the portable one, which the tests compare against,
 * and ops_quant4_no_avx512 the AVX2 one).
 *
 * The E2M1 code of a quotient q is the count of the rounding boundaries below |q| with ties to
 * the even code: (|q| > 0.25) + (|q| >= 0.75) + (|q| > 1.25) + (|q| >= 1.75) + (|q| > 2.5) +
 * (|q| >= 3.5) + (|q| > 5), so 6 and above saturate to code 7 and a NaN quotient gives 0. This
 * is ModelOpt's NVFP4QTensor._cast_fp4 (searchsorted over e2m1_bounds [0.25, 0.75, 1.25, 1.75,
 * 2.5, 3.5, 5] plus one at the odd-indexed bounds) written as compares.
 */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* ---------------------------------------------------------------- the largest magnitude */

static size_t first_bad(mpk_dtype dt, const void *in, size_t n)
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

/* The largest BF16 magnitude bits (sign cleared) of n values. */
__attribute__((target("avx2"))) static uint32_t amax_bits_avx2(const uint16_t *p, size_t n)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    __m256i m = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        m = _mm256_max_epu16(m, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + i)), abs));
    uint32_t r = hmax_u16(m);
    for (; i < n; i++)
        r = (uint32_t)(p[i] & 0x7FFF) > r ? (uint32_t)(p[i] & 0x7FFF) : r;
    return r;
}
#endif

static bool no_avx512; /* ops_quant4_no_avx512: the tests' switch to the AVX2 paths */

void ops_quant4_no_avx512(bool off)
{
    no_avx512 = off;
}

static inline bool avx512_ok(void)
{
#if defined(__x86_64__)
    return !no_avx512 && ops_simd_allowed() && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return false;
#endif
}

static bool avx2_ok(void)
{
#if defined(__x86_64__)
    return ops_simd_allowed() && __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

float mpk_quant_amax(mpk_dtype in_dt, const void *in, size_t n, size_t *bad)
{
    *bad = n;
    if (in_dt == MPK_DTYPE_BF16) {
        const uint16_t *p = in;
        uint32_t m = 0;
#if defined(__x86_64__)
        if (avx2_ok())
            m = amax_bits_avx2(p, n);
        else
#endif
            for (size_t i = 0; i < n; i++)
                m = (uint32_t)(p[i] & 0x7FFF) > m ? (uint32_t)(p[i] & 0x7FFF) : m;
        if (m >= 0x7F80u)
            *bad = first_bad(in_dt, in, n);
        return ops_u2f(m << 16);
    }
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(ops_load_f32(in_dt, in, i));
        if (!(a <= 3.4028235e38f)) {
            *bad = i;
            return a;
        }
        m = a > m ? a : m;
    }
    return m;
}

/* ---------------------------------------------------------------- NVFP4 (ModelOpt) */

float mpk_nvfp4_global_scale(float amax)
{
    return amax / (6.0f * 448.0f); /* get_weights_scaling_factor_2: amax.float() / (6.0 * 448.0) */
}

/* A block's E4M3 scale from its largest magnitude, as ModelOpt's current
 * NVFP4QTensor.get_weights_scaling_factor (modelopt/torch/quantization/qtensor/nvfp4_tensor.py)
 * computes it: per_block_amax / (FP4_E2M1_MAX * weights_scaling_factor_2), the product and the
 * quotient each rounded to F32; an all-zero block 1.0 (0x38); then _cast_per_block_scale_to_fp8:
 * clamp to [2^-9, 448] and E4M3 rounding to nearest even (the clamp keeps a tiny block off scale
 * 0, and the encoder's saturation is the clamp's max). */
static inline uint8_t nv_scale_code(float amax, float g)
{
    if (amax == 0.0f)
        return 0x38;
    float s = amax / (6.0f * g); /* amax > 0: never NaN (+inf for g = 0, which saturates) */
    return mpk_f32_to_e4m3_fast(s < 0x1p-9f ? 0x1p-9f : s);
}

/* The value of a non-negative, non-NaN E4M3 code (what nv_scale_code gives), by its fields. */
static inline float e4m3_pos(uint8_t c)
{
    uint32_t e = c >> 3, m = c & 7u;
    return e ? ops_u2f(((e + 120u) << 23) | (m << 20)) : (float)m * 0x1p-9f;
}

/* The codes of one block: x / (f32(e4m3) x g) in F32 (ModelOpt's quantize: input /
 * (weights_scaling_factor.float() * weights_scaling_factor_2)), the sign bit where the quotient
 * is < 0 (so -0 is code 0, as sign_bit = weight < 0 makes it). */
static void nv_block_scalar(const float *x, float g, uint8_t *codes, uint8_t *scale)
{
    float amax = 0;
    for (int k = 0; k < 16; k++)
        amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
    uint8_t sc = nv_scale_code(amax, g);
    float d = e4m3_pos(sc) * g;
    *scale = sc;
    for (int k = 0; codes && k < 8; k++) {
        float q0 = x[2 * k] / d, q1 = x[2 * k + 1] / d;
        uint32_t lo = e2m1_mag(fabsf(q0)) | (q0 < 0 ? 8u : 0u), hi = e2m1_mag(fabsf(q1)) | (q1 < 0 ? 8u : 0u);
        codes[k] = (uint8_t)(lo | hi << 4);
    }
}

/* The OCP MX scale code of a block from its largest magnitude (finite): X = floor(log2(amax)) -
 * 2 (E2M1's emax), clamped to E8M0's -127 (an all-zero block, tiny ones), code X + 127. For an
 * F32 amax with exponent field E (a normal: floor(log2) = E - 127) the code is E - 2; a
 * subnormal amax (E = 0) is below 2^-126, so the clamp. */
static inline uint32_t ocp_scale_code(float amax)
{
    uint32_t e = ops_f2u(amax) >> 23;
    return e > 2 ? e - 2 : 0;
}

/* The exponent e of a BF16 block by the OCP rule from its largest magnitude's bits; -128 for a
 * NaN or an infinity. */
static inline __attribute__((always_inline)) int ocp_exponent(uint32_t mag)
{
    return mag >= 0x7F80u ? -128 : (int)ocp_scale_code(ops_u2f(mag << 16)) - 127;
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
static int16_t bound(float t, bool ge, float k, bool div)
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

static __attribute__((noinline)) void thresholds_make(thr_cache *c, uint8_t sc, float k)
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

/* The scale code of a block from its largest magnitude's bits, cached per pattern; with codes
 * wanted, the code's thresholds are made with it (so the codes' loop below needs no check). */
static inline __attribute__((always_inline)) uint8_t nv_scale_cached(thr_cache *c, uint32_t m, float g, bool codes)
{
    uint8_t sc = c->sc_of[m];
    if (__builtin_expect(sc == 0xFF, 0)) {
        sc = c->sc_of[m] = nv_scale_code(ops_u2f(m << 16), g);
        if (codes && !c->have[sc])
            thresholds_make(c, sc, e4m3_pos(sc) * g);
    }
    return sc;
}

/* The codes of one NVFP4 block (v its BF16 values, a their magnitudes) under t, one per 16-bit
 * lane (0..15, not yet packed): the magnitude as the count of the seven bounds passed, the sign
 * (8) where the quotient is < 0, i.e. x < 0 and |x| above the sign's threshold. */
__attribute__((target("avx2"))) static inline __m256i nv_lanes(__m256i v, __m256i a, const thr8 *t)
{
    __m256i s01 = _mm256_add_epi16(_mm256_cmpgt_epi16(a, THR(t, 0)), _mm256_cmpgt_epi16(a, THR(t, 1)));
    __m256i s23 = _mm256_add_epi16(_mm256_cmpgt_epi16(a, THR(t, 2)), _mm256_cmpgt_epi16(a, THR(t, 3)));
    __m256i s45 = _mm256_add_epi16(_mm256_cmpgt_epi16(a, THR(t, 4)), _mm256_cmpgt_epi16(a, THR(t, 5)));
    __m256i s6 = _mm256_add_epi16(_mm256_cmpgt_epi16(a, THR(t, 6)), s45);
    __m256i m = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_add_epi16(_mm256_add_epi16(s01, s23), s6)); /* 0..7 */
    __m256i neg = _mm256_and_si256(_mm256_cmpgt_epi16(a, THR(t, 7)), _mm256_srli_epi16(v, 12)); /* bit 3: sign */
    return _mm256_or_si256(m, _mm256_and_si256(neg, _mm256_set1_epi16(8)));
}

/* Two blocks' lanes (0..15 each) -> 8 bytes each, element 2k in the low nibble, as 16-bit lanes
 * [A 0-3, B 0-3 | A 4-7, B 4-7] with the byte in the low half. */
__attribute__((target("avx2"))) static inline __m256i nv_pair(__m256i ma, __m256i mb)
{
    __m256i p = _mm256_packus_epi16(ma, mb); /* bytes [A 0-7, B 0-7 | A 8-15, B 8-15] */
    return _mm256_and_si256(_mm256_or_si256(p, _mm256_srli_epi16(p, 4)), _mm256_set1_epi16(0xFF));
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

/* The scale codes of n (a multiple of 4) NVFP4 blocks, four at a time: the four largest
 * magnitudes by one vector reduction, then the cache. */
__attribute__((target("avx2"))) static inline void nv_scales4(const uint16_t *in, size_t n, float g, bool codes,
                                                              uint8_t *scales, thr_cache *c, const uint8_t *maxima)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    if (maxima) { /* the blocks' largest magnitudes already found (nv_maxima_avx2), 2 bytes a block */
        for (size_t b = 0; b < n; b += 4) {
            uint64_t ms;
            memcpy(&ms, maxima + 2 * b, 8);
            for (int j = 0; j < 4; j++)
                scales[b + (size_t)j] = nv_scale_cached(c, (uint32_t)(ms >> (16 * j)) & 0xFFFF, g, codes);
        }
        return;
    }
    for (size_t b = 0; b < n; b += 4) {
        const uint16_t *p = in + b * 16;
        __m256i a0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs);
        __m256i a1 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 16)), abs);
        __m256i a2 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 32)), abs);
        __m256i a3 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 48)), abs);
        uint64_t ms = max4_u16(a0, a1, a2, a3); /* blocks 0, 2, 1, 3 */
        scales[b] = nv_scale_cached(c, (uint32_t)ms & 0xFFFF, g, codes);
        scales[b + 2] = nv_scale_cached(c, (uint32_t)(ms >> 16) & 0xFFFF, g, codes);
        scales[b + 1] = nv_scale_cached(c, (uint32_t)(ms >> 32) & 0xFFFF, g, codes);
        scales[b + 3] = nv_scale_cached(c, (uint32_t)(ms >> 48), g, codes);
    }
}

/* The largest magnitude (bits) of each of n_blocks BF16 blocks of 16, n_blocks a multiple of 4,
 * into out (2 bytes a block, any alignment); returns the largest of all. The pass that finds the
 * global scale: it waits on memory, so the per-block reduction that the blocks' pass would do
 * costs little here. */
__attribute__((target("avx2"))) static uint32_t nv_maxima_avx2(const uint16_t *in, size_t n_blocks, uint8_t *out)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    __m128i all = _mm_setzero_si128();
    for (size_t b = 0; b < n_blocks; b += 4) {
        const uint16_t *p = in + b * 16;
        __m256i a0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs);
        __m256i a1 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 16)), abs);
        __m256i a2 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 32)), abs);
        __m256i a3 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 48)), abs);
        __m128i x = _mm_shufflelo_epi16(max4_u16v(a0, a1, a2, a3), 0xD8); /* blocks 0, 2, 1, 3 -> 0, 1, 2, 3 */
        _mm_storel_epi64((__m128i *)(void *)(out + 2 * b), x);
        all = _mm_max_epu16(all, x);
    }
    all = _mm_max_epu16(all, _mm_srli_epi64(all, 32));
    all = _mm_max_epu16(all, _mm_srli_epi64(all, 16));
    uint32_t m = (uint32_t)_mm_cvtsi128_si32(all) & 0xFFFF;
    return m;
}

/* NVFP4 blocks in chunks that stay in L1: first the chunk's scale codes (nv_scales4), then its
 * codes, four blocks to one 32-byte store, each block's thresholds addressed by its stored scale
 * code. Two loops, not one: the codes then wait on an L1 load of the scale, not on the whole
 * chain from the block's largest magnitude through the cache (which kept too few blocks in
 * flight). */
__attribute__((target("avx2"))) static void nv_bf16_avx2(const uint16_t *in, size_t n_blocks, float g,
                                                         uint8_t *codes, uint8_t *scales, thr_cache *c, const uint8_t *maxima)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    enum { CHUNK = 64 };
    size_t b = 0, full = n_blocks / 4 * 4;
    for (size_t n; b < full; b += n) {
        n = full - b < CHUNK ? full - b : CHUNK;
        const uint16_t *p = in + b * 16;
        nv_scales4(p, n, g, codes != NULL, scales + b, c, maxima ? maxima + 2 * b : NULL);
        if (!codes)
            continue;
        for (size_t k = 0; k < n; k += 4) {
            const uint16_t *q = p + k * 16;
            const uint8_t *s = scales + b + k;
            __m256i v0 = _mm256_loadu_si256((const __m256i *)q), v1 = _mm256_loadu_si256((const __m256i *)(q + 16));
            __m256i v2 = _mm256_loadu_si256((const __m256i *)(q + 32)), v3 = _mm256_loadu_si256((const __m256i *)(q + 48));
            __m256i q01 = nv_pair(nv_lanes(v0, _mm256_and_si256(v0, abs), &c->tab[s[0]]),
                                  nv_lanes(v1, _mm256_and_si256(v1, abs), &c->tab[s[1]]));
            __m256i q23 = nv_pair(nv_lanes(v2, _mm256_and_si256(v2, abs), &c->tab[s[2]]),
                                  nv_lanes(v3, _mm256_and_si256(v3, abs), &c->tab[s[3]]));
            /* dwords [A 0-3, B 0-3, C 0-3, D 0-3 | A 4-7, B 4-7, C 4-7, D 4-7] -> A, B, C, D */
            __m256i r = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(q01, q23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(codes + (b + k) * 8), r);
        }
    }
    for (; b < n_blocks; b++) {
        const uint16_t *p = in + b * 16;
        uint8_t sc = nv_scale_cached(c, hmax_u16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs)), g,
                                     codes != NULL);
        scales[b] = sc;
        if (codes)
            codes16(p, &c->tab[sc], codes + b * 8);
    }
}

/* Two NVFP4 blocks' codes in one 512-bit vector (block A in the low half, B in the high): the
 * same compares as nv_lanes into mask registers, each passed bound adding 1 to its lanes (two
 * chains), the sign 8 where x < 0 (the lane's top bit) and |x| is above the sign's threshold; the
 * odd element of each pair moved to bits 4-7 and the dwords narrowed to bytes: 16 code bytes. */
__attribute__((target("avx512bw,avx512vl"))) static inline __m128i nv_codes2_avx512(const uint16_t *q, const thr8 *ta,
                                                                                      const thr8 *tb)
{
#define THR2(i)                                                                                              \
    _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)ta->t[i])),     \
                       _mm256_loadu_si256((const __m256i *)(const void *)tb->t[i]), 1)
    __m512i v = _mm512_loadu_si512((const void *)q), a = _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF));
    const __m512i one = _mm512_set1_epi16(1);
    __m512i m0 = _mm512_maskz_mov_epi16(_mm512_cmpgt_epi16_mask(a, THR2(0)), one);
    __m512i m1 = _mm512_maskz_mov_epi16(_mm512_cmpgt_epi16_mask(a, THR2(1)), one);
    m0 = _mm512_mask_add_epi16(m0, _mm512_cmpgt_epi16_mask(a, THR2(2)), m0, one);
    m1 = _mm512_mask_add_epi16(m1, _mm512_cmpgt_epi16_mask(a, THR2(3)), m1, one);
    m0 = _mm512_mask_add_epi16(m0, _mm512_cmpgt_epi16_mask(a, THR2(4)), m0, one);
    m1 = _mm512_mask_add_epi16(m1, _mm512_cmpgt_epi16_mask(a, THR2(5)), m1, one);
    m0 = _mm512_mask_add_epi16(m0, _mm512_cmpgt_epi16_mask(a, THR2(6)), m0, one);
    __mmask32 neg = _mm512_cmpgt_epi16_mask(a, THR2(7)) & _mm512_movepi16_mask(v);
    __m512i m = _mm512_mask_add_epi16(_mm512_add_epi16(m0, m1), neg, _mm512_add_epi16(m0, m1), _mm512_set1_epi16(8));
#undef THR2
    return _mm512_cvtepi32_epi8(_mm512_or_si512(m, _mm512_srli_epi32(m, 12)));
}

/* nv_bf16_avx2 with the codes two blocks to a 512-bit vector (the scale codes as there). */
__attribute__((target("avx512bw,avx512vl"))) static void nv_bf16_avx512(const uint16_t *in, size_t n_blocks, float g,
                                                                        uint8_t *codes, uint8_t *scales,
                                                                        thr_cache *c, const uint8_t *maxima)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    enum { CHUNK = 64 };
    size_t b = 0, full = n_blocks / 4 * 4;
    for (size_t n; b < full; b += n) {
        n = full - b < CHUNK ? full - b : CHUNK;
        const uint16_t *p = in + b * 16;
        nv_scales4(p, n, g, codes != NULL, scales + b, c, maxima ? maxima + 2 * b : NULL);
        if (!codes)
            continue;
        for (size_t k = 0; k < n; k += 2) {
            const uint8_t *s = scales + b + k;
            _mm_storeu_si128((__m128i *)(codes + (b + k) * 8), nv_codes2_avx512(p + k * 16, &c->tab[s[0]], &c->tab[s[1]]));
        }
    }
    for (; b < n_blocks; b++) {
        const uint16_t *p = in + b * 16;
        uint8_t sc = nv_scale_cached(c, hmax_u16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs)), g,
                                     codes != NULL);
        scales[b] = sc;
        if (codes)
            codes16(p, &c->tab[sc], codes + b * 8);
    }
}

/* The codes of a 32-value MXFP4 block under 2^e, -124 <= e <= 125, in 8-bit lanes. Dividing by
 * 2^e subtracts e << 7 from a normal BF16 magnitude's bits, so every E2M1 bound is a fixed bit
 * pattern q: 0.25 0x3E80, 1.25 0x3FA0, 2.5 0x4020, 5 0x40A0 (passed above them: >) and 0.75
 * 0x3F40, 1.75 0x3FE0, 3.5 0x4060 (passed at them: >=), all multiples of 32. With z1 = (a - (e
 * << 7) - 0x3E61) >> 5 and z2 = (a - (e << 7) - 0x3E80) >> 5 (saturating at 0) a > q is z1 >
 * (q - 0x3E61) >> 5 for the first four and a >= q is z2 > (q - 1 - 0x3E80) >> 5 for the others,
 * exactly (each bound sits on a multiple of 32 from its base). A subnormal magnitude (a < 0x80)
 * gives z1 = z2 = 0 since e >= -124, as its quotient (< 2^-126 x 2^124) is below 0.25. */
typedef struct {
    __m256i k[7]; /* the bounds in z1/z2 units: 0, 5, 9, 10, 13, 14, 17 */
    __m256i eight, low, idx;
} pow2_consts;

__attribute__((target("avx2"))) static inline pow2_consts pow2_make(void)
{
    static const char k[7] = {0, 5, 9, 10, 13, 14, 17};
    pow2_consts c;
    for (int i = 0; i < 7; i++)
        c.k[i] = _mm256_set1_epi8(k[i]);
    c.eight = _mm256_set1_epi8(8);
    c.low = _mm256_set1_epi16(0xFF);
    c.idx = _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5);
    return c;
}

__attribute__((target("avx2"))) static inline void mx_codes32_pow2(const uint16_t *p, int e, const pow2_consts *k,
                                                                   uint8_t *out)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    __m256i v0 = _mm256_loadu_si256((const __m256i *)p), v1 = _mm256_loadu_si256((const __m256i *)(p + 16));
    __m256i a0 = _mm256_and_si256(v0, abs), a1 = _mm256_and_si256(v1, abs);
    __m256i b1 = _mm256_set1_epi16((short)(0x3E61 + e * 128)), b2 = _mm256_set1_epi16((short)(0x3E80 + e * 128));
    /* bytes in the order [v0 0-7, v1 0-7 | v0 8-15, v1 8-15]; values above 127 saturate */
    __m256i z1 = _mm256_packs_epi16(_mm256_srli_epi16(_mm256_subs_epu16(a0, b1), 5),
                                    _mm256_srli_epi16(_mm256_subs_epu16(a1, b1), 5));
    __m256i z2 = _mm256_packs_epi16(_mm256_srli_epi16(_mm256_subs_epu16(a0, b2), 5),
                                    _mm256_srli_epi16(_mm256_subs_epu16(a1, b2), 5));
    /* > 0.25, >= 0.75, > 1.25, >= 1.75, > 2.5, >= 3.5, > 5 */
    __m256i m = _mm256_add_epi8(_mm256_cmpgt_epi8(z1, k->k[0]), _mm256_cmpgt_epi8(z2, k->k[1]));
    m = _mm256_add_epi8(m, _mm256_add_epi8(_mm256_cmpgt_epi8(z1, k->k[2]), _mm256_cmpgt_epi8(z2, k->k[3])));
    m = _mm256_add_epi8(m, _mm256_add_epi8(_mm256_cmpgt_epi8(z1, k->k[4]), _mm256_cmpgt_epi8(z2, k->k[5])));
    m = _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(m, _mm256_cmpgt_epi8(z1, k->k[6])));
    __m256i s = _mm256_packs_epi16(_mm256_srai_epi16(v0, 15), _mm256_srai_epi16(v1, 15));
    m = _mm256_or_si256(m, _mm256_and_si256(s, k->eight));
    m = _mm256_and_si256(_mm256_or_si256(m, _mm256_srli_epi16(m, 4)), k->low);
    m = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(m, m), k->idx);
    _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(m));
}

/* A block's exponent by the rule: inlined (the OCP rule), or through the cache of the rule's
 * answer per largest-magnitude pattern (c->ex_of: e + 127 + 0x100, 0 until asked). */
__attribute__((always_inline)) static inline int mx_exponent(uint32_t mag, int (*exponent)(uint32_t mag), bool cached,
                                                             thr_cache *c)
{
    if (!cached)
        return exponent(mag);
    uint16_t x = c->ex_of[mag];
    if (__builtin_expect(!x, 0))
        x = c->ex_of[mag] = (uint16_t)(exponent(mag) + 127 + 0x100);
    return (int)(x & 0xFF) - 127;
}

/* MXFP4 blocks of 32 BF16 under a scale rule: exponent(largest magnitude's bits) -> e (scale
 * code e + 127; 128: NaN, zero codes; -128: a NaN or infinity to stop at, returned as its index).
 * In chunks that stay in L1, as NVFP4's: the chunk's scale codes first (four blocks' maxima by one
 * reduction), then its codes from the stored scale codes, so the codes do not wait on the chain
 * from the largest magnitude through the rule. */
__attribute__((target("avx2"), always_inline)) static inline size_t mx_bf16_avx2(const uint16_t *in, size_t n_blocks,
                                                                  uint8_t *blocks, uint8_t *scales,
                                                                  int (*exponent)(uint32_t mag), bool cached,
                                                                  thr_cache *c)
{
    enum { CHUNK = 32 };
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    const pow2_consts k = pow2_make();
    for (size_t b0 = 0, n; b0 < n_blocks; b0 += n) {
        n = n_blocks - b0 < CHUNK ? n_blocks - b0 : CHUNK;
        size_t stop = n; /* the block with a NaN or an infinity to stop at, else n */
        size_t b = 0;
        for (; b + 4 <= n && stop == n; b += 4) {
            const uint16_t *p = in + (b0 + b) * 32;
            __m256i a[4];
            for (int j = 0; j < 4; j++)
                a[j] = _mm256_max_epu16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 32 * j)), abs),
                                        _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 32 * j + 16)), abs));
            uint64_t ms = max4_u16(a[0], a[1], a[2], a[3]); /* blocks 0, 2, 1, 3 */
            static const int at[4] = {0, 2, 1, 3};
            for (int j = 0; j < 4; j++) {
                int e = mx_exponent((uint32_t)(ms >> (16 * j)) & 0xFFFF, exponent, cached, c);
                if (e == -128 && b + (size_t)at[j] < stop)
                    stop = b + (size_t)at[j];
                scales[b0 + b + (size_t)at[j]] = (uint8_t)(e + 127);
            }
        }
        for (; b < n && stop == n; b++) {
            const uint16_t *p = in + (b0 + b) * 32;
            __m256i m = _mm256_max_epu16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs),
                                         _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 16)), abs));
            int e = mx_exponent(hmax_u16(m), exponent, cached, c);
            if (e == -128)
                stop = b;
            scales[b0 + b] = (uint8_t)(e + 127);
        }
        for (b = 0; blocks && b < stop; b++) {
            const uint16_t *p = in + (b0 + b) * 32;
            uint8_t *out = blocks + (b0 + b) * 16;
            int e = (int)scales[b0 + b] - 127;
            if (e >= -124 && e <= 125) {
                mx_codes32_pow2(p, e, &k, out);
            } else if (e == 128) {
                memset(out, 0, 16);
            } else {
                const thr8 *t = thresholds(c, (uint8_t)(e + 127), mx_inv(e));
                codes16(p, t, out);
                codes16(p + 16, t, out + 8);
            }
        }
        if (stop < n) {
            const uint16_t *p = in + (b0 + stop) * 32;
            return (b0 + stop) * 32 + first_bad(MPK_DTYPE_BF16, p, 32);
        }
    }
    return n_blocks * 32;
}

/* The two rules, each with its exponent inlined. */
__attribute__((target("avx2"))) static size_t mx_ocp_avx2(const uint16_t *in, size_t n_blocks, uint8_t *blocks,
                                                          uint8_t *scales, thr_cache *c)
{
    return mx_bf16_avx2(in, n_blocks, blocks, scales, ocp_exponent, false, c);
}

__attribute__((target("avx2"))) static void mx_rule_avx2(const uint16_t *in, size_t n_blocks, uint8_t *blocks,
                                                         uint8_t *scales, int (*exponent)(uint32_t mag), thr_cache *c)
{
    mx_bf16_avx2(in, n_blocks, blocks, scales, exponent, true, c);
}
#endif

#if defined(__x86_64__)
/* The NVFP4 cache of a call: scale codes unknown (0xFF), no thresholds yet. NULL: out of memory. */
static thr_cache *nv_cache(void)
{
    thr_cache *c = calloc(1, sizeof *c);
    if (c) {
        c->div = true;
        memset(c->sc_of, 0xFF, sizeof c->sc_of);
    }
    return c;
}

/* The vector paths' blocks (maxima: the largest magnitudes of the first n_blocks / 4 x 4 blocks,
 * or NULL to find them). */
static void nv_blocks(const uint16_t *in, size_t n_blocks, float g, uint8_t *codes, uint8_t *scales, thr_cache *c,
                      const uint8_t *maxima)
{
    if (avx512_ok())
        nv_bf16_avx512(in, n_blocks, g, codes, scales, c, maxima);
    else
        nv_bf16_avx2(in, n_blocks, g, codes, scales, c, maxima);
}
#endif

void mpk_quant_nvfp4(mpk_dtype in_dt, const void *in, size_t n_blocks, float scale2, uint8_t *codes,
                     uint8_t *scales)
{
#if defined(__x86_64__)
    if (in_dt == MPK_DTYPE_BF16 && avx2_ok()) {
        thr_cache *c = nv_cache();
        if (c) {
            nv_blocks(in, n_blocks, scale2, codes, scales, c, NULL);
            free(c);
            return;
        }
    }
#endif
    for (size_t b = 0; b < n_blocks; b++) {
        float x[16];
        for (int k = 0; k < 16; k++)
            x[k] = ops_load_f32(in_dt, in, b * 16 + (size_t)k);
        nv_block_scalar(x, scale2, codes ? codes + b * 8 : NULL, scales + b);
    }
}

size_t mpk_quant_nvfp4_tensor(mpk_dtype in_dt, const void *in, size_t n_blocks, uint8_t *codes, uint8_t *scales,
                              float *scale2)
{
    size_t n = n_blocks * 16;
#if defined(__x86_64__)
    /* BF16 with codes: the amax pass also keeps each block's largest magnitude (nv_maxima_avx2),
     * in the last quarter of the codes' buffer, so the blocks' pass skips that reduction (on a
     * pass that waits on memory it costs little). No code overwrites a maximum still to be read:
     * a chunk's maxima are read before its codes are written, and the codes of the blocks before
     * b (bytes < 8b) stay below the maxima of the blocks from b on (bytes >= 6 n_blocks + 2b, as
     * b <= n_blocks). */
    thr_cache *c = in_dt == MPK_DTYPE_BF16 && codes && avx2_ok() ? nv_cache() : NULL;
    if (c) {
        size_t full = n_blocks / 4 * 4;
        uint8_t *maxima = codes + 6 * n_blocks;
        uint32_t m = nv_maxima_avx2(in, full, maxima), t = amax_bits_avx2((const uint16_t *)in + full * 16, n - full * 16);
        m = t > m ? t : m;
        if (m >= 0x7F80u) {
            free(c);
            return first_bad(in_dt, in, n);
        }
        *scale2 = mpk_nvfp4_global_scale(ops_u2f(m << 16));
        nv_blocks(in, n_blocks, *scale2, codes, scales, c, maxima);
        free(c);
        return n;
    }
#endif
    size_t bad;
    float g = mpk_nvfp4_global_scale(mpk_quant_amax(in_dt, in, n, &bad));
    if (bad < n)
        return bad;
    *scale2 = g;
    mpk_quant_nvfp4(in_dt, in, n_blocks, g, codes, scales);
    return n;
}

/* ---------------------------------------------------------------- MXFP4 */

void ops_mx_codes(mpk_dtype in_dt, const void *block, float inv, uint8_t *out)
{
    for (int k = 0; k < 16; k++) {
        float x0 = ops_load_f32(in_dt, block, 2 * (size_t)k), x1 = ops_load_f32(in_dt, block, 2 * (size_t)k + 1);
        uint32_t lo = e2m1_mag(fabsf(x0 * inv)) | (signbit(x0) ? 8u : 0u);
        uint32_t hi = e2m1_mag(fabsf(x1 * inv)) | (signbit(x1) ? 8u : 0u);
        out[k] = (uint8_t)(lo | hi << 4);
    }
}

size_t mpk_quant_mxfp4_ocp(mpk_dtype in_dt, const void *in, size_t n_blocks, uint8_t *blocks, uint8_t *scales)
{
#if defined(__x86_64__)
    if (in_dt == MPK_DTYPE_BF16 && avx2_ok()) {
        thr_cache *c = calloc(1, sizeof *c);
        if (c) {
            c->sign_all = -1;
            size_t r = mx_ocp_avx2(in, n_blocks, blocks, scales, c);
            free(c);
            return r;
        }
    }
#endif
    size_t el = mpk_dtype_size(in_dt);
    for (size_t b = 0; b < n_blocks; b++) {
        const char *p = (const char *)in + b * 32 * el;
        float amax = 0;
        for (size_t k = 0; k < 32; k++) {
            float a = fabsf(ops_load_f32(in_dt, p, k));
            if (!(a <= 3.4028235e38f))
                return b * 32 + k;
            amax = a > amax ? a : amax;
        }
        uint32_t sc = ocp_scale_code(amax);
        scales[b] = (uint8_t)sc;
        if (blocks)
            ops_mx_codes(in_dt, p, mx_inv((int)sc - 127), blocks + b * 16);
    }
    return n_blocks * 32;
}

bool ops_mx_rule_bf16(const uint16_t *in, size_t n_blocks, uint8_t *blocks, uint8_t *scales,
                      int (*exponent)(uint32_t mag))
{
#if defined(__x86_64__)
    if (avx2_ok()) {
        thr_cache *c = calloc(1, sizeof *c);
        if (c) {
            c->sign_all = -1;
            mx_rule_avx2(in, n_blocks, blocks, scales, exponent, c);
            free(c);
            return true;
        }
    }
#endif
    (void)in, (void)n_blocks, (void)blocks, (void)scales, (void)exponent;
    return false;
}

/* ---------------------------------------------------------------- one matrix */

size_t mpk_quant4_matrix(int fmt, mpk_dtype in_dt, const void *in, int64_t R, int64_t C, int parts,
                         uint8_t *codes, uint8_t *scales, float *scale2, bool given)
{
    size_t n = (size_t)R * (size_t)C, el = mpk_dtype_size(in_dt), blk = fmt == 1 ? 16 : 32;
    uint8_t *ts = scales ? NULL : malloc(n / blk + 1), *s = scales ? scales : ts, *c = codes;
    size_t bad = n;
    if (!s) {
        bad = SIZE_MAX; /* out of memory */
    } else if (fmt == 2) {
        bad = mpk_quant_mxfp4_ocp(in_dt, in, n / 32, c, s);
    } else {
        size_t pn = n / (size_t)(parts > 0 ? parts : 1); /* values per part: whole rows */
        for (int k = 0; k < (parts > 0 ? parts : 1) && bad == n; k++) {
            const char *p = (const char *)in + (size_t)k * pn * el;
            size_t b = pn;
            if (!given && c) { /* the amax pass and the blocks together */
                float g = 0;
                b = mpk_quant_nvfp4_tensor(in_dt, p, pn / 16, c + (size_t)k * pn / 2, s + (size_t)k * pn / 16, &g);
                if (b < pn)
                    bad = (size_t)k * pn + b;
                else if (scale2)
                    scale2[k] = g;
                continue;
            }
            float g = given ? scale2[k] : mpk_nvfp4_global_scale(mpk_quant_amax(in_dt, p, pn, &b));
            if (b < pn)
                bad = (size_t)k * pn + b;
            else if (scale2 && !given)
                scale2[k] = g;
            if (bad == n && (codes || scales))
                mpk_quant_nvfp4(in_dt, p, pn / 16, g, c ? c + (size_t)k * pn / 2 : NULL, s + (size_t)k * pn / 16);
        }
    }
    free(ts);
    return bad;
}
