/* quant4_mx.c — MXFP4 from BF16/F16/F32: the OCP MX rule (--quantize mxfp4) and the codes of
 * a block under a given scale, which quant.c's reference-rule quantizer (GPT-OSS) uses with its own
 * exponent rule; a portable path and, for BF16 on AVX2, a vector one giving the same bytes (see
 * quant4.c's comment for the E2M1 rounding, quant4_simd.h for the thresholds). */
#define _GNU_SOURCE
#include "quant4_simd.h"

#include <stdlib.h>
#include <string.h>

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

#if defined(__x86_64__)
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
