/* planes.c — byte planes of a chunk (.mpkz, formats/MPKZ.md): split and join, rotating each
 * element left by one bit first for IEEE floats (the sign to the bottom, so the top byte holds
 * exponent bits only). The scalar code is the reference; AVX2 code for 2- and 4-byte elements
 * (BF16, F16, F32: nearly all weights) runs where the CPU has it, chosen once per process
 * (mpk_tune's no_simd keeps the scalar code, as ops/quant.c does). */
#include "formats_internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Element x of width w (little-endian) rotated left (dir 1) or right (dir -1) by one bit. */
static uint64_t rot(uint64_t x, int w, int dir)
{
    int bits = 8 * w;
    uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
    x &= mask;
    return (dir > 0 ? (x << 1 | x >> (bits - 1)) : (x >> 1 | x << (bits - 1))) & mask;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

/* 2-byte elements, 32 a step: rotate, keep low and high bytes, pack them in order. */
AVX2 static size_t split2(const unsigned char *o, unsigned char *p, size_t n, bool xform)
{
    const __m256i ff = _mm256_set1_epi16(0xFF);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(o + 2 * i)),
                b = _mm256_loadu_si256((const __m256i *)(o + 2 * i + 32));
        if (xform) {
            a = _mm256_or_si256(_mm256_slli_epi16(a, 1), _mm256_srli_epi16(a, 15));
            b = _mm256_or_si256(_mm256_slli_epi16(b, 1), _mm256_srli_epi16(b, 15));
        }
        __m256i lo = _mm256_packus_epi16(_mm256_and_si256(a, ff), _mm256_and_si256(b, ff)),
                hi = _mm256_packus_epi16(_mm256_srli_epi16(a, 8), _mm256_srli_epi16(b, 8));
        _mm256_storeu_si256((__m256i *)(p + i), _mm256_permute4x64_epi64(lo, 0xD8));
        _mm256_storeu_si256((__m256i *)(p + n + i), _mm256_permute4x64_epi64(hi, 0xD8));
    }
    return i;
}

AVX2 static size_t join2(const unsigned char *const *p, unsigned char *o, size_t n, bool xform)
{
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i lo = _mm256_loadu_si256((const __m256i *)(p[0] + i)), hi = _mm256_loadu_si256((const __m256i *)(p[1] + i));
        __m256i u = _mm256_unpacklo_epi8(lo, hi), v = _mm256_unpackhi_epi8(lo, hi);
        __m256i a = _mm256_permute2x128_si256(u, v, 0x20), b = _mm256_permute2x128_si256(u, v, 0x31);
        if (xform) {
            a = _mm256_or_si256(_mm256_srli_epi16(a, 1), _mm256_slli_epi16(a, 15));
            b = _mm256_or_si256(_mm256_srli_epi16(b, 1), _mm256_slli_epi16(b, 15));
        }
        _mm256_storeu_si256((__m256i *)(o + 2 * i), a);
        _mm256_storeu_si256((__m256i *)(o + 2 * i + 32), b);
    }
    return i;
}

/* 4-byte elements, 8 a step: byte k of 4 elements together in each lane (a 4 x 4 transpose,
 * its own inverse), then the lanes' groups paired: 8 bytes of each plane. */
AVX2 static size_t split4(const unsigned char *o, unsigned char *p, size_t n, bool xform)
{
    const __m256i t = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13,
                                       2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i pair = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(o + 4 * i));
        if (xform)
            a = _mm256_or_si256(_mm256_slli_epi32(a, 1), _mm256_srli_epi32(a, 31));
        a = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(a, t), pair);
        uint64_t q[4];
        _mm256_storeu_si256((__m256i *)q, a);
        for (int k = 0; k < 4; k++)
            memcpy(p + (size_t)k * n + i, &q[k], 8);
    }
    return i;
}

AVX2 static size_t join4(const unsigned char *const *p, unsigned char *o, size_t n, bool xform)
{
    const __m256i t = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13,
                                       2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i unpair = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t q[4];
        for (int k = 0; k < 4; k++)
            memcpy(&q[k], p[k] + i, 8);
        __m256i a = _mm256_loadu_si256((const __m256i *)q);
        a = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(a, unpair), t);
        if (xform)
            a = _mm256_or_si256(_mm256_srli_epi32(a, 1), _mm256_slli_epi32(a, 31));
        _mm256_storeu_si256((__m256i *)(o + 4 * i), a);
    }
    return i;
}

static bool use_avx2(void)
{
    static atomic_int cpu = -1;
    int c = atomic_load_explicit(&cpu, memory_order_relaxed);
    if (c < 0) {
        c = __builtin_cpu_supports("avx2");
        atomic_store_explicit(&cpu, c, memory_order_relaxed);
    }
    return c && !mpk_tuning_now()->no_simd;
}
#else
static bool use_avx2(void)
{
    return false;
}
#endif

/* The elements from `done` on through the scalar code: planes of the rest, offset by done. */
static void split_rest(const unsigned char *o, unsigned char *p, size_t n, int w, bool xform, size_t done)
{
    for (size_t i = done; i < n; i++) {
        uint64_t v = 0;
        memcpy(&v, o + i * (size_t)w, (size_t)w);
        if (xform)
            v = rot(v, w, 1);
        for (int k = 0; k < w; k++)
            p[(size_t)k * n + i] = (unsigned char)(v >> (8 * k));
    }
}

static void join_rest(const unsigned char *const *p, unsigned char *o, size_t n, int w, bool xform, size_t done)
{
    for (size_t i = done; i < n; i++) {
        uint64_t v = 0;
        for (int k = 0; k < w; k++)
            v |= (uint64_t)p[k][i] << (8 * k);
        if (xform)
            v = rot(v, w, -1);
        memcpy(o + i * (size_t)w, &v, (size_t)w);
    }
}

void mpk_planes_split(const void *orig, void *planes, size_t n, int w, bool xform)
{
    size_t done = 0;
#if defined(__x86_64__)
    if (use_avx2() && w == 2)
        done = split2(orig, planes, n, xform);
    else if (use_avx2() && w == 4)
        done = split4(orig, planes, n, xform);
#endif
    split_rest(orig, planes, n, w, xform, done);
}

void mpk_planes_join_at(const void *const *planes, void *orig, size_t n, int w, bool xform)
{
    const unsigned char *const *p = (const unsigned char *const *)planes;
    size_t done = 0;
#if defined(__x86_64__)
    if (use_avx2() && w == 2)
        done = join2(p, orig, n, xform);
    else if (use_avx2() && w == 4)
        done = join4(p, orig, n, xform);
#endif
    join_rest(p, orig, n, w, xform, done);
}

/* The w planes of planes, one after another. */
static void plane_ptrs(const void *planes, size_t n, int w, const void **p)
{
    for (int k = 0; k < w; k++)
        p[k] = (const unsigned char *)planes + (size_t)k * n;
}

void mpk_planes_join(const void *planes, void *orig, size_t n, int w, bool xform)
{
    const void *p[8];
    plane_ptrs(planes, n, w, p);
    mpk_planes_join_at(p, orig, n, w, xform);
}

void mpk_planes_split_scalar(const void *orig, void *planes, size_t n, int w, bool xform)
{
    split_rest(orig, planes, n, w, xform, 0);
}

void mpk_planes_join_scalar(const void *planes, void *orig, size_t n, int w, bool xform)
{
    const void *p[8];
    plane_ptrs(planes, n, w, p);
    join_rest((const unsigned char *const *)p, orig, n, w, xform, 0);
}

const char *mpk_planes_impl(void)
{
    return use_avx2() ? "avx2" : "scalar";
}
