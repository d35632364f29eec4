/* quant4.c — quantizing BF16/F16/F32 to the 4-bit formats --quantize writes: NVFP4 with NVIDIA
 * ModelOpt's rules and MXFP4 with the OCP MX rule; the largest magnitude of a tensor (with its
 * first NaN or infinity); the E2M1 codes of MXFP4 blocks under a given scale (shared with
 * quant.c's reference-rule quantizer). Each has a portable path and, for BF16 input on a CPU
 * with AVX2, a vector path giving the same bytes (runtime dispatch; mpk_tune's no_simd forces
 * the portable one, which the tests compare against).
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

/* A block's E4M3 scale from its largest magnitude (get_weights_scaling_factor): amax / 6 in
 * F32, divided by the global scale in F32, to E4M3 rounding to nearest even; an all-zero block
 * gets 1.0 (0x38). */
static inline uint8_t nv_scale_code(float amax, float g)
{
    float pbs = amax / 6.0f;
    return pbs == 0.0f ? 0x38 : mpk_f32_to_e4m3_fast(pbs / g);
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
    for (int k = 0; k < 8; k++) {
        float q0 = x[2 * k] / d, q1 = x[2 * k + 1] / d;
        uint32_t lo = e2m1_mag(fabsf(q0)) | (q0 < 0 ? 8u : 0u), hi = e2m1_mag(fabsf(q1)) | (q1 < 0 ? 8u : 0u);
        codes[k] = (uint8_t)(lo | hi << 4);
    }
}

#if defined(__x86_64__)
/* E2M1 magnitude codes (0..7) of 8 non-negative F32 lanes. */
__attribute__((target("avx2"))) static inline __m256i e2m1_mag8(__m256 a)
{
    __m256i m = _mm256_setzero_si256();
#define STEP(t, pred) m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(t), pred)))
    STEP(0.25f, _CMP_GT_OQ);
    STEP(0.75f, _CMP_GE_OQ);
    STEP(1.25f, _CMP_GT_OQ);
    STEP(1.75f, _CMP_GE_OQ);
    STEP(2.5f, _CMP_GT_OQ);
    STEP(3.5f, _CMP_GE_OQ);
    STEP(5.0f, _CMP_GT_OQ);
#undef STEP
    return m;
}

/* 16 codes (int32 lanes: c0 values 0-7, c1 values 8-15) -> 8 bytes, the even element in the low
 * nibble. */
__attribute__((target("avx2"))) static inline void pack16(__m256i c0, __m256i c1, uint8_t *out)
{
    __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(c0, c1), 0xD8); /* 16 u16 in order */
    w = _mm256_or_si256(w, _mm256_srli_epi32(w, 12));                       /* odd one to bits 4-7 */
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12,
                                          -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    w = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(w, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
    _mm_storel_epi64((__m128i *)out, _mm256_castsi256_si128(w));
}

/* 8 BF16 (one 128-bit load) as F32 lanes. */
__attribute__((target("avx2"))) static inline __m256 bf16x8(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

__attribute__((target("avx2"))) static void nv_bf16_avx2(const uint16_t *in, size_t n_blocks, float g,
                                                         uint8_t *codes, uint8_t *scales)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), zero = _mm256_setzero_ps();
    const __m256i eight = _mm256_set1_epi32(8);
    for (size_t b = 0; b < n_blocks; b++) {
        const uint16_t *p = in + b * 16;
        uint32_t m = hmax_u16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi16(0x7FFF)));
        uint8_t sc = nv_scale_code(ops_u2f(m << 16), g);
        scales[b] = sc;
        __m256 d = _mm256_set1_ps(e4m3_pos(sc) * g);
        __m256 q0 = _mm256_div_ps(bf16x8(p), d), q1 = _mm256_div_ps(bf16x8(p + 8), d);
        __m256i s0 = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(q0, zero, _CMP_LT_OQ)), eight);
        __m256i s1 = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(q1, zero, _CMP_LT_OQ)), eight);
        pack16(_mm256_or_si256(e2m1_mag8(_mm256_and_ps(q0, absm)), s0),
               _mm256_or_si256(e2m1_mag8(_mm256_and_ps(q1, absm)), s1), codes + b * 8);
    }
}

/* MXFP4: the codes of one 32-value BF16 block under the power-of-two multiplier inv (exact
 * scaling: a product below 2^-126 rounds to code 0 or 8 either way), the sign bit kept. */
__attribute__((target("avx2"))) static void mx_codes_avx2(const uint16_t *p, float inv, uint8_t *out)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), f = _mm256_set1_ps(inv);
    const __m256i eight = _mm256_set1_epi32(8);
    __m256i c[4];
    for (int h = 0; h < 4; h++) {
        __m256 x = bf16x8(p + 8 * h);
        __m256i s = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(x), 28), eight);
        c[h] = _mm256_or_si256(e2m1_mag8(_mm256_and_ps(_mm256_mul_ps(x, f), absm)), s);
    }
    pack16(c[0], c[1], out);
    pack16(c[2], c[3], out + 8);
}
#endif

void mpk_quant_nvfp4(mpk_dtype in_dt, const void *in, size_t n_blocks, float scale2, uint8_t *codes,
                     uint8_t *scales)
{
#if defined(__x86_64__)
    if (in_dt == MPK_DTYPE_BF16 && avx2_ok()) {
        nv_bf16_avx2(in, n_blocks, scale2, codes, scales);
        return;
    }
#endif
    for (size_t b = 0; b < n_blocks; b++) {
        float x[16];
        for (int k = 0; k < 16; k++)
            x[k] = ops_load_f32(in_dt, in, b * 16 + (size_t)k);
        nv_block_scalar(x, scale2, codes + b * 8, scales + b);
    }
}

/* ---------------------------------------------------------------- MXFP4 */

void ops_mx_codes(mpk_dtype in_dt, const void *block, float inv, uint8_t *out, bool simd)
{
#if defined(__x86_64__)
    if (simd) {
        mx_codes_avx2(block, inv, out);
        return;
    }
#endif
    (void)simd;
    for (int k = 0; k < 16; k++) {
        float x0 = ops_load_f32(in_dt, block, 2 * (size_t)k), x1 = ops_load_f32(in_dt, block, 2 * (size_t)k + 1);
        uint32_t lo = e2m1_mag(fabsf(x0 * inv)) | (signbit(x0) ? 8u : 0u);
        uint32_t hi = e2m1_mag(fabsf(x1 * inv)) | (signbit(x1) ? 8u : 0u);
        out[k] = (uint8_t)(lo | hi << 4);
    }
}

bool ops_mx_simd(mpk_dtype in_dt)
{
    return in_dt == MPK_DTYPE_BF16 && avx2_ok();
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

/* x / 2^X as x * 2^(127 - sc): sc <= 252 (a finite amax is below 2^128), so the multiplier is a
 * normal F32. */
static inline float ocp_inv(uint32_t sc)
{
    return ops_u2f((254u - sc) << 23);
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static size_t mx_ocp_bf16_avx2(const uint16_t *in, size_t n_blocks, uint8_t *blocks,
                                                               uint8_t *scales)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    for (size_t b = 0; b < n_blocks; b++) {
        const uint16_t *p = in + b * 32;
        __m256i m = _mm256_max_epu16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs),
                                     _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 16)), abs));
        uint32_t mag = hmax_u16(m);
        if (mag >= 0x7F80u)
            return b * 32 + first_bad(MPK_DTYPE_BF16, p, 32);
        uint32_t sc = ocp_scale_code(ops_u2f(mag << 16));
        scales[b] = (uint8_t)sc;
        mx_codes_avx2(p, ocp_inv(sc), blocks + b * 16);
    }
    return n_blocks * 32;
}
#endif

#if defined(__x86_64__)
__attribute__((target("avx2"))) static void mx_rule_bf16_avx2(const uint16_t *in, size_t n_blocks, uint8_t *blocks,
                                                              uint8_t *scales, int (*exponent)(uint32_t mag))
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    for (size_t b = 0; b < n_blocks; b++) {
        const uint16_t *p = in + b * 32;
        __m256i m = _mm256_max_epu16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs),
                                     _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 16)), abs));
        int e = exponent(hmax_u16(m));
        scales[b] = (uint8_t)(e + 127);
        if (e == 128) {
            memset(blocks + b * 16, 0, 16);
            continue;
        }
        float inv = e == 127 ? 0x1p-127f : e == -127 ? 0x1p127f : ops_u2f((uint32_t)(127 - e) << 23);
        mx_codes_avx2(p, inv, blocks + b * 16);
    }
}
#endif

bool ops_mx_rule_bf16(const uint16_t *in, size_t n_blocks, uint8_t *blocks, uint8_t *scales,
                      int (*exponent)(uint32_t mag))
{
#if defined(__x86_64__)
    if (ops_mx_simd(MPK_DTYPE_BF16)) {
        mx_rule_bf16_avx2(in, n_blocks, blocks, scales, exponent);
        return true;
    }
#endif
    (void)in, (void)n_blocks, (void)blocks, (void)scales, (void)exponent;
    return false;
}

size_t mpk_quant_mxfp4_ocp(mpk_dtype in_dt, const void *in, size_t n_blocks, uint8_t *blocks, uint8_t *scales)
{
#if defined(__x86_64__)
    if (ops_mx_simd(in_dt))
        return mx_ocp_bf16_avx2(in, n_blocks, blocks, scales);
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
        ops_mx_codes(in_dt, p, ocp_inv(sc), blocks + b * 16, false);
    }
    return n_blocks * 32;
}

/* ---------------------------------------------------------------- one matrix */

size_t mpk_quant4_matrix(int fmt, mpk_dtype in_dt, const void *in, int64_t R, int64_t C, int parts,
                         uint8_t *codes, uint8_t *scales, float *scale2)
{
    size_t n = (size_t)R * (size_t)C, el = mpk_dtype_size(in_dt), blk = fmt == 1 ? 16 : 32;
    uint8_t *tc = codes ? NULL : malloc(n / 2 + 1), *ts = scales ? NULL : malloc(n / blk + 1);
    uint8_t *c = codes ? codes : tc, *s = scales ? scales : ts;
    size_t bad = n;
    if (!c || !s) {
        bad = SIZE_MAX; /* out of memory */
    } else if (fmt == 2) {
        bad = mpk_quant_mxfp4_ocp(in_dt, in, n / 32, c, s);
    } else {
        size_t pn = n / (size_t)(parts > 0 ? parts : 1); /* values per part: whole rows */
        for (int k = 0; k < (parts > 0 ? parts : 1) && bad == n; k++) {
            const char *p = (const char *)in + (size_t)k * pn * el;
            size_t b;
            float g = mpk_nvfp4_global_scale(mpk_quant_amax(in_dt, p, pn, &b));
            if (b < pn)
                bad = (size_t)k * pn + b;
            else if (scale2)
                scale2[k] = g;
            if (bad == n && (codes || scales))
                mpk_quant_nvfp4(in_dt, p, pn / 16, g, c + (size_t)k * pn / 2, s + (size_t)k * pn / 16);
        }
    }
    free(tc);
    free(ts);
    return bad;
}
