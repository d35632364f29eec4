/* quant4.c — quantizing BF16/F16/F32 to the 4-bit formats --quantize writes: NVFP4 with NVIDIA
 * ModelOpt's rules; the largest magnitude of a tensor (with its first NaN or infinity); one
 * expert matrix in either format (MXFP4 with the OCP MX rule, and the E2M1 codes of MXFP4
 * blocks under a given scale: quant4_mx.c; what both share: quant4_simd.h). Each has a portable
 * path and, for BF16 input on a CPU with AVX2 (NVFP4's codes: AVX-512BW where present), a
 * vector path giving the same bytes (runtime dispatch; mpk_tune's no_simd forces the portable one, which the tests compare against,
 * and ops_quant4_no_avx512 the AVX2 one).
 *
 * The E2M1 code of a quotient q is the count of the rounding boundaries below |q| with ties to
 * the even code: (|q| > 0.25) + (|q| >= 0.75) + (|q| > 1.25) + (|q| >= 1.75) + (|q| > 2.5) +
 * (|q| >= 3.5) + (|q| > 5), so 6 and above saturate to code 7 and a NaN quotient gives 0. This
 * is ModelOpt's NVFP4QTensor._cast_fp4 (searchsorted over e2m1_bounds [0.25, 0.75, 1.25, 1.75,
 * 2.5, 3.5, 5] plus one at the odd-indexed bounds) written as compares.
 */
#define _GNU_SOURCE
#include "quant4_simd.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- the largest magnitude */

#if defined(__x86_64__)
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

#if defined(__x86_64__)
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

/* Blocks [b, n_blocks) one at a time: the last 0-3 of a matrix, after the 4-block steps of
 * nv_bf16_avx2 and nv_bf16_avx512. */
__attribute__((target("avx2"))) static void nv_bf16_rest(const uint16_t *in, size_t b, size_t n_blocks, float g,
                                                         uint8_t *codes, uint8_t *scales, thr_cache *c)
{
    const __m256i abs = _mm256_set1_epi16(0x7FFF);
    for (; b < n_blocks; b++) {
        const uint16_t *p = in + b * 16;
        uint8_t sc = nv_scale_cached(c, hmax_u16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), abs)), g,
                                     codes != NULL);
        scales[b] = sc;
        if (codes)
            codes16(p, &c->tab[sc], codes + b * 8);
    }
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
    nv_bf16_rest(in, b, n_blocks, g, codes, scales, c);
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
    nv_bf16_rest(in, b, n_blocks, g, codes, scales, c);
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

/* ---------------------------------------------------------------- one matrix */

size_t mpk_quant4_matrix(int fmt, mpk_dtype in_dt, const void *in, int64_t R, int64_t C, int parts,
                         uint8_t *codes, uint8_t *scales, float *scale2, bool given)
{
    size_t n = (size_t)R * (size_t)C, el = mpk_dtype_size(in_dt), blk = fmt == 1 ? 16 : 32;
    /* scales not asked for but needed on the way: to the codes (and MXFP4 makes both at once);
     * the NVFP4 global scales alone need none */
    bool scratch = !scales && (codes || fmt == 2);
    uint8_t *ts = scratch ? malloc(n / blk + 1) : NULL, *s = scratch ? ts : scales, *c = codes;
    size_t bad = n;
    if (scratch && !ts) {
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
