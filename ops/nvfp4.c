/* nvfp4.c — the 4-bit weight formats that are not MXFP4: NVFP4 as NVIDIA ModelOpt writes it: E2M1 codes two a byte (the even element in the
 * low nibble), one F8_E4M3 scale per 16 values, one F32 global scale (weight_scale_2) per
 * tensor. Decoding to F32/F16/BF16 and comparing two encodings by value.
 *
 * The arithmetic is the reference's (ModelOpt's NVFP4QTensor.dequantize): the block's scale
 * s = f32(e4m3) x weight_scale_2 rounded to F32, the value e2m1 x s rounded to F32, then to the
 * output dtype (round to nearest even). Two F32 roundings, then one more: the same bits torch
 * gives, which one exact product rounded once to BF16 would not always.
 */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float E2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                               -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* A block's F32 scale: the global scale a multiplier (ModelOpt's weight_scale_2) or, div, a
 * divisor (compressed-tensors' weight_global_scale, stored as the reciprocal). */
static inline float block_scale(uint8_t e4m3, float g, bool div)
{
    return div ? mpk_e4m3_to_f32(e4m3) / g : mpk_e4m3_to_f32(e4m3) * g;
}

float mpk_nvfp4_block_scale(uint8_t e4m3, float scale2)
{
    return block_scale(e4m3, scale2, false);
}

/* The 16 BF16 results of one block scale code (low and high bytes apart, the shape a byte
 * shuffle wants), built the first time the code is met in a call. */
typedef struct nv_tab {
    uint8_t lo[16], hi[16];
} nv_tab;

static const nv_tab *nv_table(uint8_t sc, float g, bool div, nv_tab *tabs, uint8_t *have)
{
    nv_tab *t = &tabs[sc];
    if (!have[sc]) {
        ops_e2m1_bf16_table(block_scale(sc, g, div), t->lo, t->hi);
        have[sc] = 1;
    }
    return t;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 8 bytes of codes -> 16 BF16 by two byte shuffles (low nibble first, as the codes lie). */
__attribute__((target("ssse3"))) static void nv_bf16_ssse3(const uint8_t *codes, const uint8_t *scales,
                                                           size_t n_blocks, float g, bool div, uint16_t *out,
                                                           nv_tab *tabs, uint8_t *have)
{
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (size_t b = 0; b < n_blocks; b++) {
        const nv_tab *t = nv_table(scales[b], g, div, tabs, have);
        __m128i tl = _mm_loadu_si128((const __m128i *)t->lo), th = _mm_loadu_si128((const __m128i *)t->hi);
        __m128i p = _mm_loadl_epi64((const __m128i *)(codes + b * 8));
        __m128i idx = _mm_unpacklo_epi8(_mm_and_si128(p, m4), _mm_and_si128(_mm_srli_epi16(p, 4), m4));
        __m128i l = _mm_shuffle_epi8(tl, idx), h = _mm_shuffle_epi8(th, idx);
        __m128i *o = (__m128i *)(out + b * 16);
        _mm_storeu_si128(o, _mm_unpacklo_epi8(l, h));
        _mm_storeu_si128(o + 1, _mm_unpackhi_epi8(l, h));
    }
}
#endif

/* Any output dtype, one value at a time. */
static void nv_scalar(const uint8_t *codes, const uint8_t *scales, size_t n_blocks, float g, bool div,
                      mpk_dtype out_dt, void *out)
{
    for (size_t b = 0; b < n_blocks; b++) {
        float s = block_scale(scales[b], g, div);
        for (size_t k = 0; k < 16; k++) {
            uint8_t x = codes[b * 8 + k / 2];
            ops_store(out_dt, out, b * 16 + k, E2M1[k % 2 ? x >> 4 : x & 0xF] * s);
        }
    }
}

static void dequant(const uint8_t *codes, const uint8_t *scales, size_t n_blocks, float g, bool div, mpk_dtype out_dt,
                    void *out)
{
    nv_tab *tabs = out_dt == MPK_DTYPE_BF16 ? malloc(sizeof(nv_tab) * 256) : NULL;
    if (!tabs) {
        nv_scalar(codes, scales, n_blocks, g, div, out_dt, out);
        return;
    }
    uint8_t have[256] = {0};
#if defined(__x86_64__)
    if (ops_simd_allowed() && __builtin_cpu_supports("ssse3")) {
        nv_bf16_ssse3(codes, scales, n_blocks, g, div, (uint16_t *)out, tabs, have);
        free(tabs);
        return;
    }
#endif
    for (size_t b = 0; b < n_blocks; b++) {
        const nv_tab *t = nv_table(scales[b], g, div, tabs, have);
        uint16_t *o = (uint16_t *)out + b * 16;
        for (int k = 0; k < 8; k++) {
            int lo = codes[b * 8 + (size_t)k] & 0xF, hi = codes[b * 8 + (size_t)k] >> 4;
            o[2 * k] = (uint16_t)(t->lo[lo] | t->hi[lo] << 8);
            o[2 * k + 1] = (uint16_t)(t->lo[hi] | t->hi[hi] << 8);
        }
    }
    free(tabs);
}

void mpk_dequant_nvfp4(const uint8_t *codes, const uint8_t *scales, size_t n_blocks, float scale2, mpk_dtype out_dt,
                       void *out)
{
    dequant(codes, scales, n_blocks, scale2, false, out_dt, out);
}

void mpk_dequant_nvfp4_ct(const uint8_t *codes, const uint8_t *scales, size_t n_blocks, float global_scale,
                          mpk_dtype out_dt, void *out)
{
    dequant(codes, scales, n_blocks, global_scale, true, out_dt, out);
}

void mpk_dequant_nvfp4_packed(const uint8_t *codes, const uint8_t *scales, uint64_t first_block, size_t n_blocks,
                              const float *scale2, int64_t blocks_per_row, int64_t rows, int64_t parts,
                              mpk_dtype out_dt, void *out)
{
    size_t osz = mpk_dtype_size(out_dt);
    uint64_t per_part = (uint64_t)(rows / parts);
    for (size_t b = 0; b < n_blocks;) {
        /* a run of blocks under one global scale: to the end of its part's rows at most */
        uint64_t k = first_block + b, row = k / (uint64_t)blocks_per_row, l = row / (uint64_t)rows;
        uint64_t part = (row % (uint64_t)rows) / per_part;
        uint64_t end = (l * (uint64_t)rows + (part + 1) * per_part) * (uint64_t)blocks_per_row;
        size_t run = end - k < n_blocks - b ? (size_t)(end - k) : n_blocks - b;
        dequant(codes + b * 8, scales + b, run, scale2[l * (uint64_t)parts + part], false, out_dt,
                (char *)out + b * 16 * osz);
        b += run;
    }
}

/* Two decoded values are the same value: equal numbers (+0 == -0) or both NaN. */
static inline bool same(float a, float b)
{
    return a == b || (isnan(a) && isnan(b));
}

uint64_t mpk_nvfp4_value_diff(const uint8_t *codes_a, const uint8_t *scales_a, float scale2_a,
                              const uint8_t *codes_b, const uint8_t *scales_b, float scale2_b, size_t n_blocks)
{
    bool same_global = memcmp(&scale2_a, &scale2_b, sizeof scale2_a) == 0;
    for (size_t b = 0; b < n_blocks; b++) {
        if (same_global && scales_a[b] == scales_b[b] && memcmp(codes_a + b * 8, codes_b + b * 8, 8) == 0)
            continue; /* the same bytes */
        float sa = mpk_nvfp4_block_scale(scales_a[b], scale2_a), sb = mpk_nvfp4_block_scale(scales_b[b], scale2_b);
        for (size_t k = 0; k < 16; k++) {
            uint8_t xa = codes_a[b * 8 + k / 2], xb = codes_b[b * 8 + k / 2];
            float va = E2M1[k % 2 ? xa >> 4 : xa & 0xF] * sa, vb = E2M1[k % 2 ? xb >> 4 : xb & 0xF] * sb;
            if (!same(va, vb))
                return b * 16 + k;
        }
    }
    return (uint64_t)n_blocks * 16;
}

void mpk_dequant_fp8_scaled(mpk_dtype w_dt, const uint8_t *w, const float *scale, bool per_row, int64_t rows,
                            int64_t C, mpk_dtype out_dt, void *out)
{
    for (int64_t r = 0; r < rows; r++) {
        float s = scale[per_row ? r : 0];
        for (int64_t c = 0; c < C; c++) {
            uint8_t x = w[r * C + c];
            float v = w_dt == MPK_DTYPE_F8_E4M3 ? mpk_e4m3_to_f32(x) : mpk_e5m2_to_f32(x);
            ops_store(out_dt, out, (size_t)(r * C + c), v * s);
        }
    }
}

void mpk_dequant_int4_groups(const uint8_t *packed, const uint16_t *scales, int64_t rows, int64_t C, int64_t group,
                             mpk_dtype out_dt, void *out)
{
    int64_t ng = C / group;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < C; c++) {
            uint8_t byte = packed[(r * C + c) / 2];
            int q = (int)(c % 2 ? byte >> 4 : byte & 0xF) - 8;
            ops_store(out_dt, out, (size_t)(r * C + c), (float)q * mpk_bf16_to_f32(scales[r * ng + c / group]));
        }
}
