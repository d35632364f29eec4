/* mpk_verify.h — hashing, manifests, recompute-and-compare, tolerance diffs.
 *
 * Verification does not trust the converter: it re-derives every expected tensor from the
 * source with the reference CPU ops of mpk_ops.h (mpk_op_apply, one target at a time, or one
 * list item of it at a time when the list is stacked along dim 0) and compares it with the
 * destination's bytes. Only the planner's matching and grouping are shared with the
 * converter; the executor's range-copy graph is not used.
 *
 * The manifest a checkpoint is checked against is a file format: formats/mpk_formats.h.
 */
#ifndef MPK_VERIFY_H
#define MPK_VERIFY_H

#include "mpk_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- comparisons */

typedef enum mpk_diff_kind {
    MPK_DIFF_MISSING,      /* expected, absent from DST */
    MPK_DIFF_EXTRA,        /* in DST, not expected */
    MPK_DIFF_META,         /* dtype or shape differs */
    MPK_DIFF_CONTENT,      /* bytes (or values beyond tolerance) differ */
    MPK_DIFF_COUNT
} mpk_diff_kind;

typedef struct mpk_tensor_cmp {
    char *name;
    mpk_diff_kind kind;          /* meaningful when differs */
    bool differs;
    bool approx;                 /* compared within tolerance (quantization involved) */
    char detail[200];            /* e.g. "dtype BF16 != F16", "first difference at element 123" */
    mpk_dtype dtype;
    uint64_t n;                  /* elements compared (float dtypes) */
    double max_abs, max_rel, rmse, cosine;
    uint64_t n_out_of_tol;
    bool encoding_only;          /* bytes differ, the decoded values do not: one of a
                                    block-scaled pair (MXFP4 NAME_blocks and NAME_scales, FP8
                                    NAME and NAME_scale_inv) encoding the same values another way */
    mpk_hash128 want_hash, got_hash;
    uint64_t order;              /* (work item << 32) | sequence: the report's order under MPI */
} mpk_tensor_cmp;

typedef struct mpk_cmp_report {
    mpk_tensor_cmp *t;
    size_t n, cap;
    size_t n_differ;
    size_t n_compared;
    size_t n_inexact;            /* compared by value, within tolerance, bytes not equal */
    size_t n_encoding;           /* tensors whose bytes differ only in encoding (encoding_only) */
    uint64_t bytes;              /* bytes compared */
    double atol, rtol;
    uint64_t item, seq;          /* the work item being compared, entries added */
} mpk_cmp_report;

typedef struct mpk_cmp_opts {
    double atol, rtol;           /* element passes when |got - want| <= atol + rtol * |want| */
    bool values;                 /* compare every float tensor by value (diff); else bytes,
                                    and values only where quantization makes it approximate */
    mpk_meter *meter;            /* bytes compared (dst's), or NULL */
} mpk_cmp_opts;

/* Compares dst with what src becomes under spec (NULL: the identity, for round trips and
 * for comparing two checkpoints of the same layout). po carries --dequantize/--quantize.
 * Every difference is recorded in *out (owned, mpk_cmp_report_free); the status is MPK_OK when the
 * comparison ran, whatever it found.
 *
 * Block-scaled pairs are compared by decoded value where their bytes differ: an MXFP4 pair
 * (NAME_blocks U8 [.., G, 16] and NAME_scales U8 [.., G]) or an FP8 pair (NAME F8_E4M3/E5M2
 * [.., R, C] and NAME_scale_inv F32, the grid of the plan's block, 128 for the identity). When
 * both tensors of a pair were compared whole against source tensors (the identity, or tensors
 * a spec passes through) and every decoded value of one side equals the other's
 * (mpk_mxfp4_value_diff, mpk_fp8_block_value_diff), the pair is not a difference: the tensor(s)
 * whose bytes differ are marked encoding_only and counted in n_encoding. A pair computed by a
 * spec's ops is compared against the reference op's own bytes, as before. */
mpk_status mpk_verify_compare(const mpk_ckpt *src, const mpk_ckpt *dst, const mpk_spec *spec,
                              const mpk_plan_opts *po, const mpk_cmp_opts *co, mpk_cmp_report **out,
                              mpk_error *err);
/* Checks dir against its manifest: missing/extra tensors, dtype/shape, hash, digest. */
mpk_status mpk_verify_manifest(const mpk_ckpt *c, mpk_meter *meter, mpk_cmp_report **out, mpk_error *err);
void mpk_cmp_report_free(mpk_cmp_report *r);

#ifdef __cplusplus
}
#endif
#endif
