/* ops_internal.h — helpers shared by ops.c and quant.c (not part of the public header). */
#ifndef MPK_OPS_INTERNAL_H
#define MPK_OPS_INTERNAL_H

#include "mpk_ops.h"

#include <string.h>

static inline float ops_u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t ops_f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* F32 -> BF16, round to nearest even, NaN quieted with its sign kept (inlined in hot loops). */
static inline uint16_t ops_f32_to_bf16(float f)
{
    uint32_t x = ops_f2u(f);
    if ((x & 0x7F800000u) == 0x7F800000u && (x & 0x7FFFFFu))
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/* Element i of src (F32, F16, BF16, F8_E4M3, F8_E5M2 or F8_E8M0) as an F32. */
float ops_load_f32(mpk_dtype d, const void *src, size_t i);

#endif
