/* numfmt.c — the scalar number formats: FP8 E4M3/E5M2/E8M0, FP4 E2M1, BF16 and F16, each
 * decoded to and encoded from F32, and which dtypes a cast converts between. kernels.c,
 * quant.c, optable.c and ops.c call down into this file; it calls none of them.
 *
 * Decoding is exact (every code of these formats is an F32 value). Encoding rounds to nearest
 * even in double precision, where every F32 input is exact, so there is one rounding only.
 * (The vectorizing fast paths of the quantizers, e4m3_fast/e4m3_from_f32, stay inline in
 * quant.c beside their loops.)
 */
#define _GNU_SOURCE
#include "mpk_ops.h"
#include "ops_internal.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- generic minifloat */

typedef struct {
    int mbits, bias;
    double max;       /* largest finite magnitude */
    bool has_inf;     /* E5M2: overflow -> inf */
    uint8_t nan;      /* code of +NaN (without sign) */
    int sign_shift;   /* 7 for 8-bit codes, 3 for E2M1 */
} minifloat;

static const minifloat F_E4M3 = {3, 7, 448.0, false, 0x7F, 7};
static const minifloat F_E5M2 = {2, 15, 57344.0, true, 0x7F, 7};
static const minifloat F_E2M1 = {1, 1, 6.0, false, 0, 3};

static uint8_t mf_encode(const minifloat *f, float x)
{
    uint8_t sign = signbit(x) ? (uint8_t)(1u << f->sign_shift) : 0;
    if (isnan(x))
        return (uint8_t)(sign | f->nan); /* E2M1 has no NaN: callers handle it */
    double a = fabs((double)x);
    if (isinf(x) && !f->has_inf)
        a = f->max;
    if (a == 0)
        return sign;
    int e;
    frexp(a, &e);
    e -= 1; /* a in [2^e, 2^(e+1)) */
    int emin = 1 - f->bias;
    if (e < emin)
        e = emin; /* subnormal: the quantum of the smallest binade */
    double q = ldexp(1.0, e - f->mbits);
    double v = rint(a / q) * q; /* round to nearest even (default rounding mode) */
    if (v > f->max) {
        if (f->has_inf)
            return (uint8_t)(sign | (0x1F << 2)); /* E5M2 inf */
        v = f->max;
    }
    if (v == 0)
        return sign;
    frexp(v, &e);
    e -= 1;
    unsigned code;
    if (e < emin) {
        code = (unsigned)(v / ldexp(1.0, emin - f->mbits)); /* exponent field 0 */
    } else {
        unsigned m = (unsigned)(v / ldexp(1.0, e - f->mbits)) - (1u << f->mbits);
        code = ((unsigned)(e + f->bias) << f->mbits) | m;
    }
    return (uint8_t)(sign | code);
}

static float mf_decode(const minifloat *f, uint8_t x)
{
    int ebits = f->sign_shift - f->mbits;
    unsigned mag = x & ((1u << f->sign_shift) - 1);
    bool neg = (x >> f->sign_shift) & 1;
    unsigned ef = mag >> f->mbits, m = mag & ((1u << f->mbits) - 1);
    float v;
    if (f->nan && mag == f->nan && !f->has_inf)
        v = NAN;
    else if (f->has_inf && ef == (1u << ebits) - 1)
        v = m ? NAN : INFINITY;
    else if (ef == 0)
        v = (float)ldexp((double)m, 1 - f->bias - f->mbits);
    else
        v = (float)ldexp(1.0 + (double)m / (double)(1u << f->mbits), (int)ef - f->bias);
    return neg ? -v : v;
}

float mpk_e4m3_to_f32(uint8_t x) { return mf_decode(&F_E4M3, x); }
uint8_t mpk_f32_to_e4m3(float f) { return mf_encode(&F_E4M3, f); }
float mpk_e5m2_to_f32(uint8_t x) { return mf_decode(&F_E5M2, x); }
uint8_t mpk_f32_to_e5m2(float f) { return mf_encode(&F_E5M2, f); }
float mpk_e2m1_to_f32(uint8_t n) { return mf_decode(&F_E2M1, n & 0xF); }

uint8_t mpk_f32_to_e2m1(float f)
{
    if (isnan(f))
        return signbit(f) ? 0x8 : 0; /* no NaN code: a zero of that sign */
    return mf_encode(&F_E2M1, f);
}

float mpk_e8m0_to_f32(uint8_t x)
{
    if (x == 0xFF)
        return NAN;
    return (float)ldexp(1.0, (int)x - 127);
}

/* ---------------------------------------------------------------- BF16, F16 */

float mpk_bf16_to_f32(uint16_t h)
{
    return ops_u2f((uint32_t)h << 16);
}

uint16_t mpk_f32_to_bf16(float f)
{
    return ops_f32_to_bf16(f);
}

float mpk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    if (exp == 0x1F)
        return ops_u2f(sign | 0x7F800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return ops_u2f(sign);
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    return ops_u2f(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t mpk_f32_to_f16(float f)
{
    uint32_t x = ops_f2u(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t exp = (x >> 23) & 0xFF, mant = x & 0x7FFFFF;
    if (exp == 0xFF)
        return (uint16_t)(sign | 0x7C00 | (mant ? 0x200 | (mant >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7C00);
    if (e <= 0) {
        if (e < -10)
            return sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
        r++;
    return (uint16_t)(sign | r);
}

/* ---------------------------------------------------------------- casts: which, and any float as F32 */

bool mpk_cast_supported(mpk_dtype from, mpk_dtype to)
{
    return (mpk_dtype_is_float(from) || mpk_dtype_is_fp8(from) || from == MPK_DTYPE_F8_E8M0) && (mpk_dtype_is_float(to) || mpk_dtype_is_fp8(to));
}

float ops_load_f32(mpk_dtype d, const void *src, size_t i)
{
    switch (d) {
    case MPK_DTYPE_F32: return ((const float *)src)[i];
    case MPK_DTYPE_BF16: return mpk_bf16_to_f32(((const uint16_t *)src)[i]);
    case MPK_DTYPE_F16: return mpk_f16_to_f32(((const uint16_t *)src)[i]);
    case MPK_DTYPE_F8_E4M3: return mpk_e4m3_to_f32(((const uint8_t *)src)[i]);
    case MPK_DTYPE_F8_E5M2: return mpk_e5m2_to_f32(((const uint8_t *)src)[i]);
    default: return mpk_e8m0_to_f32(((const uint8_t *)src)[i]);
    }
}
