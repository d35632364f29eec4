/* ops_internal.h — what the files of ops/ share (not part of its header): the inference and
 * inverse functions the op table points at, and small number helpers. */
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

/* Element i of out (F32, BF16 or F16) set to v, rounded to nearest even. */
static inline void ops_store(mpk_dtype dt, void *out, size_t i, float v)
{
    if (dt == MPK_DTYPE_F32)
        ((float *)out)[i] = v;
    else if (dt == MPK_DTYPE_BF16)
        ((uint16_t *)out)[i] = ops_f32_to_bf16(v);
    else
        ((uint16_t *)out)[i] = mpk_f32_to_f16(v);
}

#define OPS_INFER(name) \
    mpk_status ops_infer_##name(const mpk_op *op, const mpk_bundle *in, mpk_bundle *out, mpk_arena *arena, mpk_error *err)
OPS_INFER(merge);
OPS_INFER(split);
OPS_INFER(concat);
OPS_INFER(chunk);
OPS_INFER(transpose);
OPS_INFER(reshape);
OPS_INFER(cast);
OPS_INFER(dequant_fp8);
OPS_INFER(quant_fp8);
OPS_INFER(dequant_mxfp4);
OPS_INFER(quant_mxfp4);
OPS_INFER(interleave);
OPS_INFER(permute_rope);
OPS_INFER(concat_list);
OPS_INFER(chunk_list);
mpk_status ops_inverse_simple(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err);
mpk_status ops_inverse_quant(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err);

mpk_status ops_inverse_reorder(const mpk_op *op, const mpk_bundle *in, mpk_op *inv, mpk_error *err);

/* Spec parsing (optable.c): "key": integer in [lo, hi] into *out; MPK_E_SPEC naming path. */
mpk_status ops_get_int(const cJSON *o, const char *key, int lo, int hi, int *out, bool required, const char *where,
                       const char *path, mpk_error *err);
#define OPS_PARSE(name) \
    mpk_status ops_parse_##name(const cJSON *j, mpk_op *op, const char *where, const char *path, mpk_error *err)
OPS_PARSE(interleave);
OPS_PARSE(permute_rope);
OPS_PARSE(concat_list);
OPS_PARSE(chunk_list);
int ops_format_reorder(const mpk_op *op, char *buf, size_t cap);

/* Byte ranges (optable.c's and reorder.c's rows). */
mpk_status ops_inner_bytes(const mpk_tmeta *m, int from, uint64_t *out, const char *opname, mpk_error *err);
#define OPS_RANGES(name)                                                                                          \
    mpk_status ops_ranges_##name(const mpk_op *op, const mpk_bundle *in, const mpk_bundle *out, mpk_range_fn fn, \
                                 void *ctx, mpk_error *err)
OPS_RANGES(interleave);
OPS_RANGES(permute_rope);
OPS_RANGES(concat_list);
OPS_RANGES(chunk_list);

/* Whether the SIMD paths may run (quant.c): where the CPU has them and the tests did not turn
 * them off. */
bool ops_simd_allowed(void);

/* The BF16 values of the 16 E2M1 codes times s (each product rounded to F32, then to BF16),
 * their low and high bytes apart: the tables of the MXFP4 and NVFP4 byte shuffles (quant.c). */
void ops_e2m1_bf16_table(float s, uint8_t lo[16], uint8_t hi[16]);

/* The 16 code bytes of one MXFP4 block of 32 in_dt values under the power-of-two multiplier
 * inv (x * inv is x / 2^X, exact but where it is far below 0.25), the sign bit of x kept
 * (quant4_mx.c, portable). */
void ops_mx_codes(mpk_dtype in_dt, const void *block, float inv, uint8_t *out);
/* MXFP4 from BF16 with AVX2 under a scale rule: exponent(largest magnitude's BF16 bits) gives the
 * block's e (scale code e + 127; 128: a NaN block, zero codes). False (nothing written) where
 * AVX2 may not run. */
bool ops_mx_rule_bf16(const uint16_t *in, size_t n_blocks, uint8_t *blocks, uint8_t *scales,
                      int (*exponent)(uint32_t mag));

/* Test hook: off keeps quant4.c's kernels on their AVX2 paths on a CPU with AVX-512 (so the tests
 * compare both with the portable ones). Not thread-safe; the library never calls it. */
void ops_quant4_no_avx512(bool off);

/* Element i of src (F32, F16, BF16, F8_E4M3, F8_E5M2 or F8_E8M0) as an F32 (numfmt.c). */
float ops_load_f32(mpk_dtype d, const void *src, size_t i);

#endif
