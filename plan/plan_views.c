/* plan_views.c — what --dequantize shows the planner: every quantized weight it decodes as one BF16
 * tensor (a view) with its scales folded in: FP8 with block grids (F32 _scale_inv, or DeepSeek-V4's
 * E8M0 .scale), MXFP4 codes with E8M0 per 32, NVFP4 (ModelOpt; compressed-tensors' packing), FP8
 * with per-row or per-tensor scales (compressed-tensors' float-quantized), packed NVFP4 experts
 * (--quantize nvfp4's, a global scale per matrix and part). The executor and
 * verify decode a view by its kind. */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool mpk_fp8_grid_matches(const mpk_tensor_info *w, const mpk_tensor_info *s, int b)
{
    if (s->dtype != MPK_DTYPE_F32 || w->ndim < 2 || s->ndim != w->ndim)
        return false;
    for (int d = 0; d < w->ndim; d++)
        if (s->shape[d] != (d < w->ndim - 2 ? w->shape[d] : (w->shape[d] + b - 1) / b))
            return false;
    return true;
}

bool mpk_block_scales_match(const mpk_tensor_info *w, const mpk_tensor_info *s, int b, bool *rows)
{
    *rows = false;
    if (mpk_fp8_grid_matches(w, s, b))
        return true;
    bool ok = s->dtype == MPK_DTYPE_F8_E8M0 && w->ndim >= 2 && s->ndim == w->ndim;
    if (ok && (w->dtype == MPK_DTYPE_U8 || w->dtype == MPK_DTYPE_I8)) { /* MXFP4: 32 values a scale */
        *rows = true;
        for (int d = 0; ok && d < w->ndim; d++)
            ok = s->shape[d] == (d < w->ndim - 1 ? w->shape[d] : w->shape[d] / 16) && w->shape[w->ndim - 1] % 16 == 0;
        return ok;
    }
    for (int d = 0; ok && d < w->ndim; d++) /* FP8 with E8M0 (power of two) b x b scales */
        ok = s->shape[d] == (d < w->ndim - 2 ? w->shape[d] : (w->shape[d] + b - 1) / b);
    return ok && (w->dtype == MPK_DTYPE_F8_E4M3 || w->dtype == MPK_DTYPE_F8_E5M2);
}

static bool is_fp8(mpk_dtype d)
{
    return d == MPK_DTYPE_F8_E4M3 || d == MPK_DTYPE_F8_E5M2;
}

const mpk_plan_view *mpk_plan_view_of(const mpk_plan *p, const mpk_ckpt_tensor *t)
{
    if (!p->n_views || (const void *)t < (const void *)p->views ||
        (const void *)t >= (const void *)(p->views + p->n_views))
        return NULL;
    return (const mpk_plan_view *)t;
}

/* A quantized weight with a dimension of 0 has nothing to decode, and its views divide by its
 * dims: refused, naming it. */
static mpk_status nonempty(const mpk_plan *p, const mpk_ckpt_tensor *t, mpk_error *err)
{
    for (int d = 0; d < t->info->ndim; d++)
        if (t->info->shape[d] == 0)
            MPK_FAIL(err, MPK_E_QUANT, p->src->dir, "tensor '%s': a quantized weight with a dimension of 0 (dim %d)",
                     t->info->name, d);
    return MPK_OK;
}

/* v: the BF16 view of weight t (its last dim last values long) with its scales. */
static void view_init(mpk_plan_view *v, const mpk_ckpt_tensor *t, int64_t last, const mpk_ckpt_tensor *scale,
                      const mpk_ckpt_tensor *scale2, mpk_view_kind kind)
{
    v->kind = kind;
    v->info = *t->info;
    v->info.dtype = MPK_DTYPE_BF16;
    v->info.shape[v->info.ndim - 1] = last;
    v->t = *t;
    v->t.info = &v->info;
    mpk_tensor_nbytes(MPK_DTYPE_BF16, v->info.shape, v->info.ndim, &v->t.nbytes);
    v->weight = t;
    v->scale = scale;
    v->scale2 = scale2;
}

/* Weights --dequantize decodes with one block-scale tensor: FP8, and MXFP4 codes (U8/I8). */
static bool blockable(mpk_dtype d)
{
    return is_fp8(d) || d == MPK_DTYPE_U8 || d == MPK_DTYPE_I8;
}

/* The block scales of the weight named name: name_scale_inv, or for X.weight X.scale
 * (DeepSeek-V4); NULL when it has none. */
static const mpk_ckpt_tensor *block_scale_of(mpk_plan *p, const char *name)
{
    char *sn = mpk_arena_printf(p->arena, "%s_scale_inv", name);
    const mpk_ckpt_tensor *st = sn ? mpk_ckpt_find(p->src, sn) : NULL;
    size_t l = strlen(name);
    if (!st && mpk_str_ends(name, ".weight") && (sn = mpk_arena_printf(p->arena, "%.*s.scale", (int)(l - 7), name)))
        st = mpk_ckpt_find(p->src, sn);
    return st;
}

/* t is the block scales of a weight that --dequantize decodes (so it is folded into the view). */
static bool scales_a_view(mpk_plan *p, const mpk_ckpt_tensor *t)
{
    const char *name = t->info->name;
    size_t l = strlen(name);
    char *w = mpk_str_ends(name, "_scale_inv") ? mpk_arena_strndup(p->arena, name, l - 10)
              : mpk_str_ends(name, ".scale")   ? mpk_arena_printf(p->arena, "%.*s.weight", (int)(l - 6), name)
                                               : NULL;
    const mpk_ckpt_tensor *wt = w ? mpk_ckpt_find(p->src, w) : NULL;
    return wt && blockable(wt->info->dtype) && block_scale_of(p, w) == t;
}

/* --dequantize: the BF16 view of weight t with its block scales st, checked: FP8 with a b x b
 * grid (F32, or F8_E8M0 powers of two), or MXFP4 codes with one F8_E8M0 per 32 values. */
static mpk_status block_view(mpk_plan *p, const mpk_ckpt_tensor *t, const mpk_ckpt_tensor *st, mpk_plan_view *v,
                             mpk_error *err)
{
    MPK_TRY(nonempty(p, t, err));
    const mpk_tensor_info *w = t->info;
    bool rows = false;
    char a[128], b[128];
    if (!mpk_block_scales_match(w, st->info, p->fp8_block, &rows) || rows == is_fp8(w->dtype))
        MPK_FAIL(err, MPK_E_QUANT, p->src->dir,
                 "tensor '%s' %s %s: its scales '%s' are %s %s, not F32 or F8_E8M0 with %dx%d blocks (FP8) nor "
                 "F8_E8M0 one per 32 values of a row (MXFP4 codes)", w->name, mpk_dtype_name(w->dtype),
                 mpk_shape_str(w->shape, w->ndim, a, sizeof a), st->info->name, mpk_dtype_name(st->info->dtype),
                 mpk_shape_str(st->info->shape, st->info->ndim, b, sizeof b), p->fp8_block, p->fp8_block);
    view_init(v, t, w->shape[w->ndim - 1] * (rows ? 2 : 1), st, NULL, MPK_VIEW_BLOCK);
    return MPK_OK;
}

/* The two NVFP4 layouts: ModelOpt's and compressed-tensors' nvfp4-pack-quantized (the same codes
 * and E4M3 block scales; the global scale a multiplier there, a reciprocal here). */
static const struct nv_names {
    mpk_view_kind kind;
    const char *codes, *global;
    const char *tails[5]; /* every tensor of one linear, longest first */
} nv_layouts[2] = {
    {MPK_VIEW_NVFP4, ".weight", ".weight_scale_2", {".weight_scale_2", ".weight_scale", ".input_scale", ".weight", NULL}},
    {MPK_VIEW_NVFP4_CT, ".weight_packed", ".weight_global_scale",
     {".weight_global_scale", ".input_global_scale", ".weight_packed", ".weight_scale", NULL}},
};

/* NVFP4 codes (U8) with an F8_E4M3 X.weight_scale, when name is one of their linear's tensors
 * in either layout: the codes' tensor (NULL if none), *base X, *lay the layout. */
static const mpk_ckpt_tensor *nvfp4_codes(mpk_plan *p, const char *name, const char **base,
                                          const struct nv_names **lay)
{
    for (int l = 0; l < 2; l++)
        for (int k = 0; nv_layouts[l].tails[k]; k++) {
            const char *tail = nv_layouts[l].tails[k];
            if (!mpk_str_ends(name, tail))
                continue;
            char *b = mpk_arena_strndup(p->arena, name, strlen(name) - strlen(tail));
            char *w = b ? mpk_arena_printf(p->arena, "%s%s", b, nv_layouts[l].codes) : NULL;
            char *sc = b ? mpk_arena_printf(p->arena, "%s.weight_scale", b) : NULL;
            const mpk_ckpt_tensor *wt = w ? mpk_ckpt_find(p->src, w) : NULL, *st = sc ? mpk_ckpt_find(p->src, sc) : NULL;
            if (wt && st && wt->info->dtype == MPK_DTYPE_U8 && st->info->dtype == MPK_DTYPE_F8_E4M3) {
                *base = b;
                *lay = &nv_layouts[l];
                return wt;
            }
            break; /* the next layout */
        }
    return NULL;
}

/* --dequantize: the BF16 view X.weight of NVFP4 codes t (base X, layout lay), with its scales
 * checked: codes U8 [.., R, C/2], X.weight_scale F8_E4M3 [.., R, C/16], the global scale one F32. */
static mpk_status nvfp4_view(mpk_plan *p, const mpk_ckpt_tensor *t, const char *base, const struct nv_names *lay,
                             mpk_plan_view *v, mpk_error *err)
{
    MPK_TRY(nonempty(p, t, err));
    const mpk_ckpt *src = p->src;
    const mpk_tensor_info *w = t->info;
    char *sn = mpk_arena_printf(p->arena, "%s.weight_scale", base), *s2n = mpk_arena_printf(p->arena, "%s%s", base, lay->global);
    char *vn = mpk_arena_printf(p->arena, "%s.weight", base);
    if (!sn || !s2n || !vn)
        MPK_FAIL(err, MPK_E_NOMEM, src->dir, "out of memory");
    const mpk_ckpt_tensor *st = mpk_ckpt_find(src, sn), *s2 = mpk_ckpt_find(src, s2n); /* st: found before */
    const mpk_tensor_info *si = st->info;
    bool ok = w->ndim >= 1 && si->ndim == w->ndim && (w->shape[w->ndim - 1] * 2) % 16 == 0 &&
              si->shape[w->ndim - 1] == w->shape[w->ndim - 1] / 8;
    for (int d = 0; ok && d < w->ndim - 1; d++)
        ok = si->shape[d] == w->shape[d];
    char a[128], b[128];
    if (!ok)
        MPK_FAIL(err, MPK_E_QUANT, src->dir, "NVFP4 tensor '%s' U8 %s: its block scales '%s' are %s, not F8_E4M3 "
                 "with one scale per 16 values of each row", w->name, mpk_shape_str(w->shape, w->ndim, a, sizeof a),
                 sn, mpk_shape_str(si->shape, si->ndim, b, sizeof b));
    if (!s2 || s2->info->dtype != MPK_DTYPE_F32 || s2->nbytes != 4)
        MPK_FAIL(err, MPK_E_QUANT, src->dir, "NVFP4 tensor '%s': its global scale '%s' is %s, not one F32 value",
                 w->name, s2n, s2 ? mpk_shape_str(s2->info->shape, s2->info->ndim, b, sizeof b) : "missing");
    view_init(v, t, w->shape[w->ndim - 1] * 2, st, s2, lay->kind);
    v->info.name = vn; /* compressed-tensors' X.weight_packed is X.weight once decoded */
    return MPK_OK;
}

/* Packed NVFP4 experts (moepack's --quantize nvfp4 output, ModelOpt's packed names): when name is
 * T, T_weight_scale, T_weight_scale_2 or T_input_scale with T U8 codes and T_weight_scale
 * F8_E4M3, the codes' tensor T; NULL otherwise. */
static const mpk_ckpt_tensor *packed_nvfp4_codes(mpk_plan *p, const char *name)
{
    static const char *const tails[] = {"_weight_scale_2", "_weight_scale", "_input_scale", ""};
    for (int k = 0; k < 4; k++) {
        if (!mpk_str_ends(name, tails[k]))
            continue;
        char *b = mpk_arena_strndup(p->arena, name, strlen(name) - strlen(tails[k]));
        char *sc = b ? mpk_arena_printf(p->arena, "%s_weight_scale", b) : NULL;
        const mpk_ckpt_tensor *wt = b ? mpk_ckpt_find(p->src, b) : NULL, *st = sc ? mpk_ckpt_find(p->src, sc) : NULL;
        if (wt && st && wt->info->dtype == MPK_DTYPE_U8 && st->info->dtype == MPK_DTYPE_F8_E4M3)
            return wt;
        if (*tails[k])
            return NULL; /* a scale's name: its codes, or none */
    }
    return NULL;
}

/* --dequantize: the BF16 view T of packed NVFP4 codes t, with its scales checked: codes U8
 * [lead.., R, C/2], T_weight_scale F8_E4M3 [lead.., R, C/16], T_weight_scale_2 F32 [lead..] (one
 * global scale a matrix) or [lead.., parts] (fused projections along the rows, R % parts == 0). */
static mpk_status packed_nvfp4_view(mpk_plan *p, const mpk_ckpt_tensor *t, mpk_plan_view *v, mpk_error *err)
{
    MPK_TRY(nonempty(p, t, err));
    const mpk_ckpt *src = p->src;
    const mpk_tensor_info *w = t->info;
    char *sn = mpk_arena_printf(p->arena, "%s_weight_scale", w->name), *s2n = mpk_arena_printf(p->arena, "%s_weight_scale_2", w->name);
    if (!sn || !s2n)
        MPK_FAIL(err, MPK_E_NOMEM, src->dir, "out of memory");
    const mpk_ckpt_tensor *st = mpk_ckpt_find(src, sn), *s2 = mpk_ckpt_find(src, s2n); /* st: found before */
    const mpk_tensor_info *si = st->info, *gi = s2 ? s2->info : NULL;
    char a[128], b[128];
    bool ok = w->ndim >= 2 && si->ndim == w->ndim && (w->shape[w->ndim - 1] * 2) % 16 == 0 &&
              si->shape[w->ndim - 1] == w->shape[w->ndim - 1] / 8;
    for (int d = 0; ok && d < w->ndim - 1; d++)
        ok = si->shape[d] == w->shape[d];
    if (!ok)
        MPK_FAIL(err, MPK_E_QUANT, src->dir, "packed NVFP4 tensor '%s' U8 %s: its block scales '%s' are %s, not "
                 "F8_E4M3 with one scale per 16 values of each row", w->name,
                 mpk_shape_str(w->shape, w->ndim, a, sizeof a), sn, mpk_shape_str(si->shape, si->ndim, b, sizeof b));
    int lead = w->ndim - 2;
    int64_t R = w->shape[w->ndim - 2];
    bool g_ok = gi && gi->dtype == MPK_DTYPE_F32 && (gi->ndim == lead || gi->ndim == lead + 1);
    for (int d = 0; g_ok && d < lead; d++)
        g_ok = gi->shape[d] == w->shape[d];
    if (g_ok && gi->ndim == lead + 1)
        g_ok = gi->shape[lead] >= 1 && R % gi->shape[lead] == 0;
    if (!g_ok)
        MPK_FAIL(err, MPK_E_QUANT, src->dir, "packed NVFP4 tensor '%s' U8 %s: its global scales '%s' are %s%s%s, not "
                 "F32 [experts..] nor [experts.., parts] with parts dividing the %lld rows", w->name,
                 mpk_shape_str(w->shape, w->ndim, a, sizeof a), s2n, gi ? mpk_dtype_name(gi->dtype) : "missing",
                 gi ? " " : "", gi ? mpk_shape_str(gi->shape, gi->ndim, b, sizeof b) : "", (long long)R);
    view_init(v, t, w->shape[w->ndim - 1] * 2, st, s2, MPK_VIEW_NVFP4_PACKED);
    return MPK_OK;
}

/* compressed-tensors pack-quantized INT4 (Kimi K2.5's experts): X.weight_packed I32, X.weight_scale
 * BF16, X.weight_shape, when name is one of them: the codes' tensor, *base X. */
static const mpk_ckpt_tensor *int4_codes(mpk_plan *p, const char *name, const char **base)
{
    static const char *const tails[] = {".weight_packed", ".weight_scale", ".weight_shape", NULL};
    for (int k = 0; tails[k]; k++) {
        if (!mpk_str_ends(name, tails[k]))
            continue;
        char *b = mpk_arena_strndup(p->arena, name, strlen(name) - strlen(tails[k]));
        char *w = b ? mpk_arena_printf(p->arena, "%s.weight_packed", b) : NULL;
        char *sc = b ? mpk_arena_printf(p->arena, "%s.weight_scale", b) : NULL;
        const mpk_ckpt_tensor *wt = w ? mpk_ckpt_find(p->src, w) : NULL, *st = sc ? mpk_ckpt_find(p->src, sc) : NULL;
        *base = b;
        return wt && st && wt->info->dtype == MPK_DTYPE_I32 && st->info->dtype == MPK_DTYPE_BF16 ? wt : NULL;
    }
    return NULL;
}

/* --dequantize: the BF16 view X.weight of INT4 codes t: I32 [R, C/8], X.weight_scale BF16
 * [R, C/g] (g values a group), X.weight_shape two integers (checked against [R, C] when read);
 * an X.weight_zero_point (asymmetric) is not read: refused. */
static mpk_status int4_view(mpk_plan *p, const mpk_ckpt_tensor *t, const char *base, mpk_plan_view *v,
                            mpk_error *err)
{
    MPK_TRY(nonempty(p, t, err));
    const mpk_tensor_info *w = t->info;
    char *sn = mpk_arena_printf(p->arena, "%s.weight_scale", base), *shn = mpk_arena_printf(p->arena, "%s.weight_shape", base);
    char *zn = mpk_arena_printf(p->arena, "%s.weight_zero_point", base), *vn = mpk_arena_printf(p->arena, "%s.weight", base);
    if (!sn || !shn || !zn || !vn)
        MPK_FAIL(err, MPK_E_NOMEM, p->src->dir, "out of memory");
    const mpk_ckpt_tensor *st = mpk_ckpt_find(p->src, sn), *sh = mpk_ckpt_find(p->src, shn);
    const mpk_tensor_info *si = st->info;
    char a[128], b[128];
    if (mpk_ckpt_find(p->src, zn))
        MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, p->src->dir, "INT4 tensor '%s' has a zero point '%s' (asymmetric "
                 "pack-quantized): moepack dequantizes the symmetric kind only", w->name, zn);
    int64_t C = w->ndim == 2 ? w->shape[1] * 8 : 0;
    if (w->ndim != 2 || si->ndim != 2 || si->shape[0] != w->shape[0] || si->shape[1] < 1 || C % si->shape[1] ||
        (C / si->shape[1]) % 2)
        MPK_FAIL(err, MPK_E_QUANT, p->src->dir, "INT4 tensor '%s' I32 %s: its scales '%s' are %s, not BF16 [rows, "
                 "groups] with an even number of values a group", w->name, mpk_shape_str(w->shape, w->ndim, a, sizeof a),
                 sn, mpk_shape_str(si->shape, si->ndim, b, sizeof b));
    if (!sh || (sh->info->dtype != MPK_DTYPE_I32 && sh->info->dtype != MPK_DTYPE_I64) || sh->nbytes != 2 * mpk_dtype_size(sh->info->dtype))
        MPK_FAIL(err, MPK_E_QUANT, p->src->dir, "INT4 tensor '%s': its '%s' is %s, not two integers (the unpacked "
                 "shape)", w->name, shn, sh ? mpk_shape_str(sh->info->shape, sh->info->ndim, b, sizeof b) : "missing");
    view_init(v, t, C, st, sh, MPK_VIEW_INT4);
    v->info.name = vn;
    return MPK_OK;
}

/* FP8 X.weight with an F32 X.weight_scale per row ([R, 1]) or per tensor (one value): compressed-
 * tensors' float-quantized channel and tensor strategies (ModelOpt's FP8 spells it the same).
 * The scale tensor, or NULL. */
static const mpk_ckpt_tensor *fp8_scale_of(mpk_plan *p, const mpk_ckpt_tensor *t)
{
    const char *name = t->info->name;
    size_t l = strlen(name);
    if (!is_fp8(t->info->dtype) || !mpk_str_ends(name, ".weight"))
        return NULL;
    char *sn = mpk_arena_printf(p->arena, "%.*s.weight_scale", (int)(l - 7), name);
    const mpk_ckpt_tensor *st = sn ? mpk_ckpt_find(p->src, sn) : NULL;
    return st && st->info->dtype == MPK_DTYPE_F32 ? st : NULL;
}

/* t is X.weight_scale or X.input_scale of such an FP8 weight (folded into its view). */
static bool fp8_scale_folded(mpk_plan *p, const mpk_ckpt_tensor *t)
{
    const char *name = t->info->name;
    size_t l = strlen(name);
    int cut = mpk_str_ends(name, ".weight_scale") ? 13 : mpk_str_ends(name, ".input_scale") ? 12 : 0;
    char *w = cut ? mpk_arena_printf(p->arena, "%.*s.weight", (int)(l - (size_t)cut), name) : NULL;
    const mpk_ckpt_tensor *wt = w ? mpk_ckpt_find(p->src, w) : NULL;
    return wt && fp8_scale_of(p, wt);
}

static mpk_status fp8_scaled_view(mpk_plan *p, const mpk_ckpt_tensor *t, const mpk_ckpt_tensor *st, mpk_plan_view *v,
                                  mpk_error *err)
{
    MPK_TRY(nonempty(p, t, err));
    const mpk_tensor_info *w = t->info, *si = st->info;
    uint64_t n = st->nbytes / 4;
    char a[128], b[128];
    bool grid = mpk_fp8_grid_matches(w, si, p->fp8_block);
    bool row = w->ndim == 2 && si->ndim == 2 && si->shape[0] == w->shape[0] && si->shape[1] == 1;
    if (!grid && !row && n != 1)
        MPK_FAIL(err, MPK_E_QUANT, p->src->dir, "FP8 tensor '%s' %s: its scale '%s' is %s, not one F32 per row "
                 "[R, 1], one per tensor, nor a %dx%d block grid", w->name,
                 mpk_shape_str(w->shape, w->ndim, a, sizeof a), si->name, mpk_shape_str(si->shape, si->ndim, b, sizeof b),
                 p->fp8_block, p->fp8_block);
    view_init(v, t, w->shape[w->ndim - 1], st, NULL,
              grid ? MPK_VIEW_BLOCK : row && w->shape[0] != 1 ? MPK_VIEW_FP8_ROW : MPK_VIEW_FP8_TENSOR);
    return MPK_OK;
}

/* Packed quantized experts moepack does not decode: compressed-tensors' T_weight_packed, or a
 * packed weight T beside its T_weight_scale that is not NVFP4 (compressed-tensors FP8). Dequantizing
 * past them would drop quantization_config with the experts still quantized: refused instead. */
static mpk_status packed_undecoded(mpk_plan *p, const mpk_ckpt_tensor *t, mpk_error *err)
{
    const char *name = t->info->name;
    char *sn = mpk_arena_printf(p->arena, "%s_weight_scale", name);
    if (!sn)
        MPK_FAIL(err, MPK_E_NOMEM, p->src->dir, "out of memory");
    if (mpk_str_ends(name, "_weight_packed") || mpk_ckpt_find(p->src, sn))
        MPK_FAIL(err, MPK_E_NOT_UNDERSTOOD, p->src->dir, "'%s' holds packed quantized experts, which --dequantize does "
                 "not decode (it decodes per-expert linears): unpack without --dequantize, then dequantize that", name);
    return MPK_OK;
}

mpk_status plan_source_list(mpk_plan *p, const mpk_plan_opts *opts, const mpk_ckpt_tensor ***out, size_t *n_out,
                            mpk_error *err)
{
    const mpk_ckpt *src = p->src;
    const mpk_ckpt_tensor **list = mpk_arena_alloc(p->arena, sizeof *list * (src->n_tensors + 1));
    if (!list)
        MPK_FAIL(err, MPK_E_NOMEM, src->dir, "out of memory");
    size_t n = 0, nv = 0;
    if (opts->dequantize) {
        p->views = mpk_arena_alloc(p->arena, sizeof *p->views * (src->n_tensors + 1));
        if (!p->views)
            MPK_FAIL(err, MPK_E_NOMEM, src->dir, "out of memory");
    }
    for (size_t i = 0; i < src->n_tensors; i++) {
        const mpk_ckpt_tensor *t = &src->tensors[i];
        const char *name = t->info->name;
        const char *nb = NULL;
        const struct nv_names *lay = NULL;
        const mpk_ckpt_tensor *codes = opts->dequantize ? nvfp4_codes(p, name, &nb, &lay) : NULL, *st = NULL;
        const char *ib = NULL;
        const mpk_ckpt_tensor *i4 = opts->dequantize && !codes ? int4_codes(p, name, &ib) : NULL;
        const mpk_ckpt_tensor *pk = opts->dequantize && !codes && !i4 ? packed_nvfp4_codes(p, name) : NULL;
        if ((codes && codes != t) || (i4 && i4 != t) || (pk && pk != t) ||
            (opts->dequantize && (scales_a_view(p, t) || fp8_scale_folded(p, t))))
            continue; /* a scale: folded into its weight's view */
        mpk_plan_view *v = opts->dequantize ? &p->views[nv] : NULL;
        if (codes)
            MPK_TRY(nvfp4_view(p, t, nb, lay, v, err));
        else if (i4)
            MPK_TRY(int4_view(p, t, ib, v, err));
        else if (pk)
            MPK_TRY(packed_nvfp4_view(p, t, v, err));
        else if (opts->dequantize && blockable(t->info->dtype) && (st = block_scale_of(p, name)))
            MPK_TRY(block_view(p, t, st, v, err));
        else if (opts->dequantize && (st = fp8_scale_of(p, t)))
            MPK_TRY(fp8_scaled_view(p, t, st, v, err));
        else if (opts->dequantize)
            MPK_TRY(packed_undecoded(p, t, err));
        if (!codes && !i4 && !pk && !st)
            v = NULL;
        list[n++] = v ? &v->t : t;
        nv += v != NULL;
    }
    p->n_views = nv;
    *out = list;
    *n_out = n;
    return MPK_OK;
}

