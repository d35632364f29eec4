/* quant.c — the block quantizers (FP8 block-scaled, MXFP4), their fast paths, and value
 * comparison of two encodings. The scalar formats they build on (FP8 E4M3/E5M2/E8M0, FP4
 * E2M1, BF16, F16) are in numfmt.c.
 */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- fast paths */

/* E4M3 -> F32 with bit operations (vectorizes): the magnitude bits placed in an F32's
 * exponent/mantissa field read 2^-120 too small, normals and subnormals alike. */
static inline float e4m3_fast(uint8_t x)
{
    float mag = ops_u2f((uint32_t)(x & 0x7F) << 20) * 0x1p120f;
    uint32_t u = ops_f2u(mag) | ((uint32_t)(x & 0x80) << 24);
    if ((x & 0x7F) == 0x7F)
        u |= 0x7FC00000u;
    return ops_u2f(u);
}

/* F32 -> E4M3 with bit operations, the same code mf_encode (numfmt.c) gives for every F32 (round to nearest
 * even, saturating at 448, NaN to 0x7F): normals by rounding the F32 mantissa to 3 bits in
 * place (a carry moves into the exponent, as it should) and rebasing the exponent by 120;
 * below 2^-6 by counting quanta of 2^-9 (exact: the product is a power-of-two scaling). */
static inline uint8_t e4m3_from_f32(float x)
{
    uint32_t u = ops_f2u(x), a = u & 0x7FFFFFFFu;
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    if (a > 0x7F800000u)
        return (uint8_t)(sign | 0x7F);
    if (a >= 0x43E00000u) /* 448 and above, infinity included: the largest finite code */
        return (uint8_t)(sign | 0x7E);
    if (a < 0x3C800000u) /* below 2^-6: exponent field 0 */
        return (uint8_t)(sign | (uint8_t)rintf(ops_u2f(a) * 512.0f));
    uint32_t r = a + 0x7FFFFu + ((a >> 20) & 1u); /* round the 20 dropped bits to nearest even */
    return (uint8_t)(sign | (uint8_t)((r >> 20) - (120u << 3)));
}

uint8_t mpk_f32_to_e4m3_fast(float f)
{
    return e4m3_from_f32(f);
}



/* ---------------------------------------------------------------- FP8 block */

/* SIMD paths are taken where the CPU has them, unless mpk_tune's no_simd is set (tests use it to
 * run the portable paths too). */
static bool simd_allowed(void)
{
    return !mpk_tuning_now()->no_simd;
}

bool ops_simd_allowed(void)
{
    return simd_allowed();
}

/* E4M3 codes times a scale, rounded once to BF16, written branch-free so the compiler turns
 * it into SIMD (an AVX2 clone is picked at load time where the CPU has it). The result is
 * exactly ops_f32_to_bf16(mpk_e4m3_to_f32(code) * s): normals by placing the fields, subnormals by
 * an int-to-float conversion, NaN by a select. */
static inline uint16_t e4m3_bf16_one(uint32_t x, float s)
{
    uint32_t e = (x >> 3) & 0xF, m = x & 7;
    uint32_t is_norm = -(uint32_t)(e != 0), is_nan = -(uint32_t)((x & 0x7F) == 0x7F);
    uint32_t bits = ((((e + 120) << 23) | (m << 20)) & is_norm) | (ops_f2u((float)m * 0x1p-9f) & ~is_norm);
    uint32_t u = ops_f2u(ops_u2f(bits) * s) ^ ((x & 0x80) << 24);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((r & ~is_nan) | ((((x & 0x80) << 8) | 0x7FC0u) & is_nan));
}

__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
static void e4m3_bf16_row(const uint8_t *row, uint16_t *o, int64_t C, const float *srow, int block)
{
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        float s = srow[c0 / block];
        size_t n = (size_t)(c0 + block < C ? block : C - c0);
        for (size_t i = 0; i < n; i++)
            o[c0 + i] = e4m3_bf16_one(row[c0 + i], s);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
/* The same results by table: one scale covers a block x block tile, so a band of rows builds,
 * per column block, the 128 BF16 results of the codes 0x00-0x7F (tabs[k * 128 + code]) once, and
 * each row looks them up 32 at a time (two 64-entry 16-bit permutes and a blend on bit 6); a
 * negative code's result is its positive twin's with the sign bit flipped (the product's sign
 * flips exactly, and rounding a magnitude never carries into the sign), NaN codes included. */
static void e4m3_bf16_tables(const float *srow, int64_t sc, uint16_t *tabs)
{
    for (int64_t k = 0; k < sc; k++)
        for (uint32_t x = 0; x < 128; x++)
            tabs[k * 128 + x] = e4m3_bf16_one(x, srow[k]);
}

__attribute__((target("avx512f,avx512bw"))) static void e4m3_bf16_lut(const uint8_t *row, uint16_t *o, int64_t C,
                                                                     const uint16_t *tabs, int block)
{
    const __m512i sign = _mm512_set1_epi16(0x80), bit6 = _mm512_set1_epi16(0x40);
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        const uint16_t *t = tabs + (c0 / block) * 128;
        __m512i t0 = _mm512_loadu_si512(t), t1 = _mm512_loadu_si512(t + 32);
        __m512i t2 = _mm512_loadu_si512(t + 64), t3 = _mm512_loadu_si512(t + 96);
        int64_t n = c0 + block < C ? block : C - c0, i = 0;
        for (; i + 32 <= n; i += 32) {
            __m512i x = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(row + c0 + i)));
            __m512i v = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(x, bit6), _mm512_permutex2var_epi16(t0, x, t1),
                                                _mm512_permutex2var_epi16(t2, x, t3));
            __m512i sg = _mm512_slli_epi16(_mm512_and_si512(x, sign), 8);
            _mm512_storeu_si512(o + c0 + i, _mm512_xor_si512(v, sg));
        }
        for (; i < n; i++) {
            uint32_t x = row[c0 + i];
            o[c0 + i] = (uint16_t)(t[x & 0x7F] ^ ((x & 0x80) << 8));
        }
    }
}
#endif

void mpk_dequant_fp8_rows(mpk_dtype w_dt, const uint8_t *w, const float *scale, int64_t C,
                          int block, int64_t r0, int64_t r1, mpk_dtype out_dt, void *out)
{
    int64_t sc = (C + block - 1) / block;
#if defined(__x86_64__)
    bool lut = w_dt == MPK_DTYPE_F8_E4M3 && out_dt == MPK_DTYPE_BF16 && simd_allowed() &&
               __builtin_cpu_supports("avx512bw");
    uint16_t *tabs = NULL;
    int64_t tab_band = -1;
#endif
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)(r - r0) * (size_t)C;
        const float *srow = scale + (size_t)(r / block - r0 / block) * (size_t)sc;
        size_t base = (size_t)(r - r0) * (size_t)C;
        bool fast = w_dt == MPK_DTYPE_F8_E4M3 && out_dt == MPK_DTYPE_BF16;
        for (int64_t k = 0; fast && k < sc; k++)
            fast = !isnan(srow[k]) && !isinf(srow[k]);
#if defined(__x86_64__)
        if (fast && lut && tab_band != r / block && (tabs || (tabs = malloc(sizeof *tabs * 128 * (size_t)sc)))) {
            e4m3_bf16_tables(srow, sc, tabs);
            tab_band = r / block;
        }
        if (fast && lut && tab_band == r / block) {
            e4m3_bf16_lut(row, (uint16_t *)out + base, C, tabs, block);
            continue;
        }
#endif
        if (fast) {
            e4m3_bf16_row(row, (uint16_t *)out + base, C, srow, block);
            continue;
        }
        for (int64_t c0 = 0; c0 < C; c0 += block) {
            int64_t c1 = c0 + block < C ? c0 + block : C;
            float s = srow[c0 / block];
            {
                for (int64_t c = c0; c < c1; c++) {
                    float v = w_dt == MPK_DTYPE_F8_E4M3 ? e4m3_fast(row[c]) : mpk_e5m2_to_f32(row[c]);
                    ops_store(out_dt, out, base + (size_t)c, v * s);
                }
            }
        }
    }
#if defined(__x86_64__)
    free(tabs);
#endif
}

/* One input element as F32: BF16 and F32 inline (what checkpoints hold), the rest through
 * ops_load_f32. */
static inline float load_in(mpk_dtype dt, const void *in, size_t i)
{
    if (dt == MPK_DTYPE_BF16)
        return ops_u2f((uint32_t)((const uint16_t *)in)[i] << 16);
    if (dt == MPK_DTYPE_F32)
        return ((const float *)in)[i];
    return ops_load_f32(dt, in, i);
}

void mpk_quant_fp8_band(mpk_dtype in_dt, const void *in, int64_t C, int block, int64_t rows,
                        uint8_t *w, float *scale)
{
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        int64_t c1 = c0 + block < C ? c0 + block : C;
        float amax = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = c0; c < c1; c++) {
                float v = fabsf(load_in(in_dt, in, (size_t)(r * C + c)));
                if (v > amax) /* NaN never raises amax */
                    amax = v;
            }
        float s = amax > 0 ? amax / MPK_FP8_E4M3_MAX : 1.0f;
        if (isinf(s))
            s = 1.0f;
        if (scale)
            scale[c0 / block] = s;
        if (w)
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = c0; c < c1; c++)
                    w[r * C + c] = e4m3_from_f32(load_in(in_dt, in, (size_t)(r * C + c)) / s);
    }
}

/* ---------------------------------------------------------------- MXFP4 */

static const float E2M1_LUT[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

static inline float e8m0_fast(uint8_t s)
{
    if (s == 0xFF)
        return NAN;
    return s ? ops_u2f((uint32_t)s << 23) : ops_u2f(0x00400000u); /* 2^-127 is an F32 subnormal */
}

/* BF16 values of the 16 codes times the scale 2^(code - 127), split into low and high bytes
 * (the shape a byte shuffle wants); the same rounding as the scalar path (ops_f32_to_bf16). */
typedef struct mxfp4_tab {
    uint8_t lo[16], hi[16];
} mxfp4_tab;

void ops_e2m1_bf16_table(float s, uint8_t lo[16], uint8_t hi[16])
{
    for (int k = 0; k < 16; k++) {
        uint16_t v = ops_f32_to_bf16(E2M1_LUT[k] * s);
        lo[k] = (uint8_t)v;
        hi[k] = (uint8_t)(v >> 8);
    }
}

/* The table of scale code sc, built the first time it is asked for (have[sc]). */
static const mxfp4_tab *mxfp4_table(uint8_t sc, mxfp4_tab *tabs, uint8_t *have)
{
    mxfp4_tab *t = &tabs[sc];
    if (!have[sc]) {
        ops_e2m1_bf16_table(e8m0_fast(sc), t->lo, t->hi);
        have[sc] = 1;
    }
    return t;
}

#if defined(__x86_64__)
/* 32 nibbles -> 32 BF16 with two byte shuffles per 16 outputs: the low nibble of byte k is
 * element 2k, the high nibble element 2k+1 (the GPT-OSS / OCP packing). */
__attribute__((target("ssse3"))) static void mxfp4_bf16_ssse3(const uint8_t *blocks, const uint8_t *scales,
                                                              size_t n_blocks, uint16_t *out, mxfp4_tab *tabs,
                                                              uint8_t *have)
{
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (size_t b = 0; b < n_blocks; b++) {
        const mxfp4_tab *t = mxfp4_table(scales[b], tabs, have);
        __m128i tl = _mm_loadu_si128((const __m128i *)t->lo);
        __m128i th = _mm_loadu_si128((const __m128i *)t->hi);
        __m128i p = _mm_loadu_si128((const __m128i *)(blocks + b * 16));
        __m128i even = _mm_and_si128(p, m4), odd = _mm_and_si128(_mm_srli_epi16(p, 4), m4);
        __m128i i0 = _mm_unpacklo_epi8(even, odd), i1 = _mm_unpackhi_epi8(even, odd); /* output order */
        __m128i l0 = _mm_shuffle_epi8(tl, i0), h0 = _mm_shuffle_epi8(th, i0);
        __m128i l1 = _mm_shuffle_epi8(tl, i1), h1 = _mm_shuffle_epi8(th, i1);
        __m128i *o = (__m128i *)(out + b * 32);
        _mm_storeu_si128(o, _mm_unpacklo_epi8(l0, h0));
        _mm_storeu_si128(o + 1, _mm_unpackhi_epi8(l0, h0));
        _mm_storeu_si128(o + 2, _mm_unpacklo_epi8(l1, h1));
        _mm_storeu_si128(o + 3, _mm_unpackhi_epi8(l1, h1));
    }
}

#endif

void mpk_dequant_mxfp4(const uint8_t *blocks, const uint8_t *scales, size_t n_blocks,
                       mpk_dtype out_dt, void *out)
{
    if (out_dt == MPK_DTYPE_BF16) {
        /* one table per scale code met in this call */
        mxfp4_tab *tabs = malloc(sizeof(mxfp4_tab) * 256);
        uint8_t have[256] = {0};
        if (tabs) {
#if defined(__x86_64__)
            if (simd_allowed() && __builtin_cpu_supports("ssse3")) {
                mxfp4_bf16_ssse3(blocks, scales, n_blocks, (uint16_t *)out, tabs, have);
                free(tabs);
                return;
            }
#endif
            for (size_t b = 0; b < n_blocks; b++) {
                const mxfp4_tab *t = mxfp4_table(scales[b], tabs, have);
                const uint8_t *p = blocks + b * 16;
                uint16_t *o = (uint16_t *)out + b * 32;
                for (int k = 0; k < 16; k++) {
                    int lo = p[k] & 0xF, hi = p[k] >> 4;
                    o[2 * k] = (uint16_t)(t->lo[lo] | t->hi[lo] << 8);
                    o[2 * k + 1] = (uint16_t)(t->lo[hi] | t->hi[hi] << 8);
                }
            }
            free(tabs);
            return;
        }
    }
    for (size_t b = 0; b < n_blocks; b++) {
        float s = e8m0_fast(scales[b]);
        for (int k = 0; k < 16; k++) {
            uint8_t v = blocks[b * 16 + (size_t)k];
            ops_store(out_dt, out, b * 32 + 2 * (size_t)k, E2M1_LUT[v & 0xF] * s);
            ops_store(out_dt, out, b * 32 + 2 * (size_t)k + 1, E2M1_LUT[v >> 4] * s);
        }
    }
}

/* The shared exponent of a block whose largest magnitude is amax (finite, > 0): the one the
 * reference quantizer picks (triton_kernels' downcast_to_mxfp with its default
 * DequantScaleRoundingMode.ROUND_UP, which transformers' and gpt-oss's quantize_to_mxfp4 call):
 * d = amax / 6 in F32, rounded up to a power of two by its bits (an exact power stays), so
 * 2^e is the smallest power of two with amax <= 6 * 2^e and nothing saturates. The one place
 * moepack parts from it: where d is an F32 subnormal (amax < 6 * 2^-126) the reference's bit
 * trick gives 2^-126 always; moepack gives 2^-127 (code 0) when amax <= 6 * 2^-127 fits there,
 * so that a block stored with scale code 0 comes back exactly. */
static int mxfp4_exponent(float amax)
{
    float d = amax / 6.0f;
    uint32_t u = ops_f2u(d);
    if (u < 0x00800000u)
        return amax <= 0x1.8p-125f ? -127 : -126;
    int e = (int)(((u + 0x007FFFFFu) & 0x7F800000u) >> 23) - 127;
    return e > 127 ? 127 : e;
}

/* The E2M1 code of x (already divided by the block's scale), what mpk_f32_to_e2m1 gives for
 * every non-NaN x, without libm: the magnitude is the count of the rounding boundaries below it,
 * a tie going to the even code (0.25 -> 0, 0.75 -> 1.0, 1.25 -> 1.0, 1.75 -> 2, 2.5 -> 2,
 * 3.5 -> 4, 5 -> 4), 6 and above saturating; the sign bit kept (-0 and a negative that rounds to
 * zero are code 8). */
static inline uint8_t e2m1_code(float x)
{
    float a = fabsf(x);
    unsigned m = (unsigned)(a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) +
                 (a > 5.0f);
    return (uint8_t)(m | (signbit(x) ? 8u : 0u));
}

/* The scale exponent of a block from its magnitudes (nan: one is NaN): what the generic loop
 * below decides. */
static inline int mxfp4_block_exponent(float amax, bool nan)
{
    if (nan)
        return 128; /* scale code 0xFF: the whole block is NaN */
    if (isinf(amax))
        return 127; /* moepack saturates (the reference would write a NaN scale) */
    return amax > 0 ? mxfp4_exponent(amax) : -127; /* all zeros: scale code 0, as the reference */
}

/* The exponent of a BF16 block from its largest magnitude's bits (AVX2 path: ops_mx_rule_bf16). */
static int mxfp4_exponent_bits(uint32_t mag)
{
    return mxfp4_block_exponent(ops_u2f(mag << 16), mag > 0x7F80);
}

/* BF16 blocks, the same codes as the loop below, written so that the compiler vectorizes the 32
 * values of a block (the largest magnitude by integer max of the bits, the codes by compares). */
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
static void mxfp4_bf16(const uint16_t *in, size_t n_blocks, uint8_t *blocks, uint8_t *scales)
{
    for (size_t b = 0; b < n_blocks; b++) {
        const uint16_t *p = in + b * 32;
        uint32_t mag = 0;
        for (int k = 0; k < 32; k++)
            mag = (uint32_t)(p[k] & 0x7FFF) > mag ? (uint32_t)(p[k] & 0x7FFF) : mag;
        bool nan = mag > 0x7F80;
        int e = mxfp4_block_exponent(ops_u2f(mag << 16), nan);
        scales[b] = (uint8_t)(e + 127);
        float inv = e == 127 ? 0x1p-127f : e == -127 ? 0x1p127f : ops_u2f((uint32_t)(127 - e) << 23);
        uint8_t keep = nan ? 0 : 0xFF;
        for (int k = 0; k < 16; k++) {
            uint32_t x = p[2 * k], y = p[2 * k + 1];
            float a = fabsf(ops_u2f(x << 16) * inv), c = fabsf(ops_u2f(y << 16) * inv);
            uint32_t lo = (uint32_t)(a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) +
                          (a > 5.0f) + ((x >> 15) << 3);
            uint32_t hi = (uint32_t)(c > 0.25f) + (c >= 0.75f) + (c > 1.25f) + (c >= 1.75f) + (c > 2.5f) + (c >= 3.5f) +
                          (c > 5.0f) + ((y >> 15) << 3);
            blocks[b * 16 + (size_t)k] = (uint8_t)((lo | (hi << 4)) & keep);
        }
    }
}

void mpk_quant_mxfp4(mpk_dtype in_dt, const void *in, size_t n_blocks, uint8_t *blocks,
                     uint8_t *scales)
{
    if (in_dt == MPK_DTYPE_BF16 && blocks && scales) {
        if (!ops_mx_rule_bf16(in, n_blocks, blocks, scales, mxfp4_exponent_bits))
            mxfp4_bf16(in, n_blocks, blocks, scales);
        return;
    }
    for (size_t b = 0; b < n_blocks; b++) {
        float v[32], amax = 0;
        bool nan = false;
        for (int k = 0; k < 32; k++) {
            v[k] = load_in(in_dt, in, b * 32 + (size_t)k);
            nan |= isnan(v[k]);
            amax = fabsf(v[k]) > amax ? fabsf(v[k]) : amax;
        }
        int e = mxfp4_block_exponent(amax, nan);
        if (scales)
            scales[b] = (uint8_t)(e + 127);
        if (!blocks)
            continue;
        /* x / 2^e as x * 2^-e in F32: exact wherever the result is >= 2^-126, and below that it
         * rounds to zero either way (code 0 or 8) */
        float inv = nan ? 0.0f : ldexpf(1.0f, -e);
        for (int k = 0; k < 16; k++) {
            uint8_t lo = e2m1_code(v[2 * k] * inv), hi = e2m1_code(v[2 * k + 1] * inv);
            blocks[b * 16 + (size_t)k] = nan ? 0 : (uint8_t)(lo | (hi << 4));
        }
    }
}

/* ---------------------------------------------------------------- values of two encodings */

/* Two decoded values are the same value: equal as numbers (+0 == -0) or both NaN. */
static inline bool same_value(double a, double b)
{
    return a == b || (isnan(a) && isnan(b));
}

/* E2M1 code x 2^(scale - 127), exact in double; a NaN scale makes the value NaN. */
static inline double mxfp4_value(uint8_t nib, uint8_t sc)
{
    if (sc == 0xFF)
        return NAN;
    return ldexp((double)E2M1_LUT[nib & 0xF], (int)sc - 127);
}

uint64_t mpk_mxfp4_value_diff(const uint8_t *blocks_a, const uint8_t *scales_a, const uint8_t *blocks_b,
                              const uint8_t *scales_b, size_t n_blocks)
{
    for (size_t b = 0; b < n_blocks; b++) {
        if (scales_a[b] == scales_b[b] && memcmp(blocks_a + b * 16, blocks_b + b * 16, 16) == 0)
            continue; /* the same bytes */
        for (int k = 0; k < 32; k++) {
            uint8_t xa = blocks_a[b * 16 + (size_t)k / 2], xb = blocks_b[b * 16 + (size_t)k / 2];
            uint8_t na = k % 2 ? xa >> 4 : xa & 0xF, nb = k % 2 ? xb >> 4 : xb & 0xF;
            if (!same_value(mxfp4_value(na, scales_a[b]), mxfp4_value(nb, scales_b[b])))
                return b * 32 + (uint64_t)k;
        }
    }
    return (uint64_t)n_blocks * 32;
}

/* An FP8 code's value (NaN codes NaN, E5M2 infinities infinite) times its F32 scale, exact in
 * double (4 significant bits times 24). */
static inline double fp8_value(mpk_dtype dt, uint8_t x, float s)
{
    double w = dt == MPK_DTYPE_F8_E4M3 ? (double)mpk_e4m3_to_f32(x) : (double)mpk_e5m2_to_f32(x);
    return w * (double)s;
}

uint64_t mpk_fp8_block_value_diff(mpk_dtype w_dt, const uint8_t *w_a, const float *scale_a, const uint8_t *w_b,
                                  const float *scale_b, int64_t C, int block, int64_t rows)
{
    int64_t sc = (C + block - 1) / block;
    for (int64_t r = 0; r < rows; r++) {
        const float *sa = scale_a + (size_t)(r / block) * (size_t)sc, *sb = scale_b + (size_t)(r / block) * (size_t)sc;
        const uint8_t *ra = w_a + (size_t)r * (size_t)C, *rb = w_b + (size_t)r * (size_t)C;
        for (int64_t c = 0; c < C; c++) {
            float a = sa[c / block], b = sb[c / block];
            if (ra[c] == rb[c] && memcmp(&a, &b, sizeof a) == 0)
                continue;
            if (!same_value(fp8_value(w_dt, ra[c], a), fp8_value(w_dt, rb[c], b)))
                return (uint64_t)(r * C + c);
        }
    }
    return (uint64_t)(rows * C);
}
