/* verify_internal.h — what verify.c, by_value.c and verify_manifest.c share. */
#ifndef MPK_VERIFY_INTERNAL_H
#define MPK_VERIFY_INTERNAL_H

#include "mpk_verify.h"

#include <errno.h>

/* Bytes read and compared at a time. */
#define CHUNK (16u << 20)

/* A comparison's state (verify.c). */
typedef struct {
    const mpk_ckpt *dst;
    const mpk_cmp_opts *co;
    mpk_cmp_report *r;
    mpk_strmap expected;
    char *gbuf;             /* dst bytes of the current slice */
    float *fw, *fg;         /* decoded values */
    mpk_error *err;
} vctx;

/* by_value.c: after the byte comparison, block-scaled pairs whose bytes differ compared by
 * decoded value (records marked identical in value / encoding only, or the difference said). */
mpk_status vfy_encoding_pass(vctx *v, const mpk_ckpt *src, const mpk_plan *p);
/* Bytes [off, +len) of a --dequantize view (views.c) other than FP8 with an F32 grid: NVFP4
 * codes with their two scales, MXFP4 codes with E8M0 scales per 32, FP8 with an E8M0 grid.
 * *out: malloc'd, len bytes. */
mpk_status vfy_read_view(const mpk_plan *p, const mpk_plan_view *vw, uint64_t off, uint64_t len, char **out,
                         mpk_error *err);

/* Appends a record (differs = kind < MPK_DIFF_COUNT); NULL on allocation failure. */
mpk_tensor_cmp *vfy_add(mpk_cmp_report *r, const char *name, mpk_diff_kind kind, const char *detail);

#endif
