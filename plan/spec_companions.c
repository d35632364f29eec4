/* spec_companions.c — the rules a spec gets for the tensors beside a quantized weight: FP8
 * block grids (X.weight_scale_inv, or X.scale), and the companions of ModelOpt's NVFP4 and
 * compressed-tensors' linears, each moved the way its weight's rule moves the weight. */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <stdio.h>
#include <string.h>

/* Every rule that only moves bytes (merge/split/concat/chunk/transpose/reshape) gets a
 * companion for FP8 block scale grids: each pattern + "_scale_inv", the same ops. Packing an
 * FP8 checkpoint then moves `...gate_proj.weight_scale_inv` into `...gate_up_proj_scale_inv`
 * exactly like the weights (the names transformers v5's FP8 experts expect). A spec with
 * "scale_name": "scale" (DeepSeek-V4: `w1.weight` + `w1.scale`, E8M0) names the per-expert side
 * X.scale instead of X.weight_scale_inv; transformers renames `.scale` to `.weight_scale_inv`
 * before it merges, so the packed side is the same `_scale_inv`. */
mpk_status spec_add_scale_companions(mpk_spec *s, const char *where, mpk_error *err)
{
    int n = s->n_rules;
    for (int i = 0; i < n; i++) {
        const mpk_rule *f = &s->rules[i];
        bool movable = true;
        for (int k = 0; k < f->n_ops; k++) {
            mpk_op_kind o = f->ops[k].kind; /* not the row reorderings: a b x b grid cannot follow them */
            movable &= (mpk_op_descs[o].byte_permutation || o == MPK_OP_TRANSPOSE) && o != MPK_OP_INTERLEAVE &&
                       o != MPK_OP_PERMUTE_ROPE && o != MPK_OP_CONCAT_LIST && o != MPK_OP_CHUNK_LIST;
        }
        if (!movable)
            continue;
        mpk_rule *c = &s->rules[s->n_rules];
        *c = *f;
        c->scale_of = i;
        c->source_shape_ndim = 0;
        size_t pl = strnlen(f->path, sizeof c->path - 13);
        memmove(c->path, f->path, pl);
        memcpy(c->path + pl, " (scale_inv)", 13);
        for (int k = 0; k < f->n_sources + f->n_targets; k++) {
            const mpk_pattern *from = k < f->n_sources ? &f->sources[k] : &f->targets[k - f->n_sources];
            mpk_pattern *to = k < f->n_sources ? &c->sources[k] : &c->targets[k - f->n_sources];
            size_t tl = strlen(from->text);
            bool dot_scale = s->scale_dot && k < f->n_sources && tl > 7 && strcmp(from->text + tl - 7, ".weight") == 0;
            bool dollar = s->transformers && tl && from->text[tl - 1] == '$'; /* before a trailing $ */
            char *t = dot_scale ? mpk_arena_printf(s->arena, "%.*s.scale", (int)(tl - 7), from->text)
                                : mpk_arena_printf(s->arena, "%.*s_scale_inv%s", (int)(tl - dollar), from->text,
                                                   dollar ? "$" : "");
            MPK_TRY(spec_pattern(s, t, k < f->n_sources, to, where, c->path, err));
        }
        s->n_rules++;
    }
    return MPK_OK;
}

/* ---------------------------------------------------------------- quantized linears' companions
 *
 * ModelOpt's NVFP4 linear X.weight (U8 codes) has X.weight_scale (F8_E4M3, one per 16 values),
 * X.weight_scale_2 and X.input_scale (F32 scalars, shape []). compressed-tensors' linear has
 * X.weight_packed (NVFP4 U8, INT4 I32) or X.weight (FP8), X.weight_scale (E4M3 per 16, BF16 per
 * group, F32 per row [out, 1] or per tensor [1]), X.weight_zero_point (asymmetric INT4, packed
 * along the rows), X.weight_global_scale and X.input_global_scale (F32 [1]), X.input_scale
 * (F32 [1]) and X.weight_shape (the codes' logical [out, in], 2 integers).
 *
 * Packed, each takes the weight's target name + "_" + its own ("gate_up_proj_weight_scale"):
 * vLLM's fused names (w13_weight_packed, w13_weight_scale, w13_weight_global_scale, ...) with
 * gate_up_proj/down_proj for w13/w2, and for ModelOpt the names transformers' NVFP4 quantizer
 * reads. Tensors with rows (weight_packed, weight_scale, weight_zero_point) move exactly like the
 * codes ([E, 2I, ...]); per-tensor scalars are stacked per expert with one column per fused
 * projection, gate first ([E, 2] for gate_up, [E] for down, as vLLM holds them); weight_shape
 * becomes [E, 2, 2] (gate's and up's [out, in]) and [E, 2]. Nothing is requantized: gate and
 * up keep their own global scales. Only rules that merge (and concat) get them. */
typedef enum { QC_MOVED, QC_SCALAR, QC_SHAPE } qc_mode;
typedef enum { QC_BOTH, QC_MODELOPT, QC_CT } qc_method; /* whose linears have it */

static const struct {
    const char *seg;
    qc_mode mode;
    bool rank1; /* a scalar stored as [1] (compressed-tensors) rather than [] (ModelOpt) */
    qc_method method;
} qc_kinds[SPEC_QUANT_COMPANIONS] = {
    {".weight_scale", QC_MOVED, false, QC_BOTH},
    {".weight_scale_2", QC_SCALAR, false, QC_MODELOPT},
    {".input_scale", QC_SCALAR, false, QC_BOTH},
    {".weight_packed", QC_MOVED, false, QC_CT},
    {".weight_zero_point", QC_MOVED, false, QC_CT},
    {".weight_global_scale", QC_SCALAR, true, QC_CT},
    {".input_global_scale", QC_SCALAR, true, QC_CT},
    {".weight_shape", QC_SHAPE, false, QC_CT},
};
enum { QC_INPUT_SCALE = 2 };

static char *qc_name(mpk_arena *a, const char *text, int k)
{
    size_t n = strlen(text);
    if (n > 7 && strcmp(text + n - 7, ".weight") == 0)
        return mpk_arena_printf(a, "%.*s%s", (int)(n - 7), text, qc_kinds[k].seg);
    return mpk_arena_printf(a, "%s_%s", text, qc_kinds[k].seg + 1);
}

static mpk_op reshape(int n, const int64_t *to, int inv_n, const int64_t *inv)
{
    mpk_op o = {.kind = MPK_OP_RESHAPE, .ndim = n, .inv_ndim = inv_n};
    memcpy(o.shape, to, sizeof(int64_t) * (size_t)n);
    memcpy(o.inv_shape, inv, sizeof(int64_t) * (size_t)inv_n);
    return o;
}

/* The ops that move rule f's per-expert scalars (or weight_shape vectors) as its ops move the
 * weights, into c (false: f is neither a merge of one source nor a merge and one concat of
 * several, so they stay unmoved and the planner refuses them as companions it does not
 * understand). Scalars: [] or [1] -> [E] alone, [E, sources] concatenated; shapes [2] -> [E, 2]
 * alone, [E, sources, 2] concatenated. */
static bool qc_ops(const mpk_rule *f, mpk_rule *c, qc_mode mode, bool rank1)
{
    const mpk_op *o = f->ops;
    static const int64_t m1[] = {-1}, col[] = {-1, 1}, row2[] = {-1, 2}, cell[] = {-1, 1, 2};
    if (!f->list_in_sources || f->n_ops < 1 || o[0].kind != MPK_OP_MERGE || o[0].dim != 0)
        return false;
    c->n_ops = 1;
    if (f->n_ops == 1 && f->n_sources == 1) {
        if (mode == QC_SCALAR && rank1) /* [E, 1] -> [E] */
            c->ops[c->n_ops++] = reshape(1, m1, 2, col);
        return true;
    }
    if (f->n_ops != 2 || o[1].kind != MPK_OP_CONCAT || f->n_sources < 2)
        return false;
    if (mode == QC_SHAPE)
        c->ops[c->n_ops++] = reshape(3, cell, 2, row2);
    else if (!rank1) /* [E] -> [E, 1] */
        c->ops[c->n_ops++] = reshape(2, col, 1, m1);
    c->ops[c->n_ops++] = (mpk_op){.kind = MPK_OP_CONCAT, .dim = 1};
    return true;
}

/* Rule f's companion of kind k into c, its patterns named after f's; false when f's ops cannot
 * move it. */
static mpk_status qc_make(mpk_spec *s, int fi, int k, bool *made, const char *where, mpk_error *err)
{
    const mpk_rule *f = &s->rules[fi];
    mpk_rule *c = &s->rules[s->n_rules];
    *c = *f;
    c->companion_of = fi;
    c->companion_kind = k;
    c->source_shape_ndim = 0;
    *made = qc_kinds[k].mode == QC_MOVED || qc_ops(f, c, qc_kinds[k].mode, qc_kinds[k].rank1);
    if (!*made)
        return MPK_OK;
    size_t pl = strnlen(f->path, sizeof c->path - 24);
    snprintf(c->path + pl, sizeof c->path - pl, " (%s)", qc_kinds[k].seg + 1);
    for (int i = 0; i < f->n_sources + f->n_targets; i++) {
        const mpk_pattern *from = i < f->n_sources ? &f->sources[i] : &f->targets[i - f->n_sources];
        mpk_pattern *to = i < f->n_sources ? &c->sources[i] : &c->targets[i - f->n_sources];
        MPK_TRY(spec_pattern(s, qc_name(s->arena, from->text, k), i < f->n_sources, to, where, c->path, err));
    }
    s->n_rules++;
    return MPK_OK;
}

mpk_status spec_add_quant_companions(mpk_spec *s, const char *where, mpk_error *err)
{
    int n = s->n_rules;
    for (int i = 0; i < n; i++) {
        const mpk_rule *f = &s->rules[i];
        bool moves = f->scale_of < 0 && f->n_ops > 0;
        for (int k = 0; k < f->n_ops; k++)
            moves &= f->ops[k].kind == MPK_OP_MERGE || f->ops[k].kind == MPK_OP_CONCAT;
        for (int k = 0; moves && k < SPEC_QUANT_COMPANIONS; k++) {
            bool made;
            MPK_TRY(qc_make(s, i, k, &made, where, err));
        }
    }
    return MPK_OK;
}

const char *spec_companion_seg(const mpk_rule *r)
{
    return r->companion_of >= 0 ? qc_kinds[r->companion_kind].seg + 1 : NULL;
}

/* The companions of the method config.json declares: compressed-tensors' own (weight_packed,
 * weight_zero_point, the global scales, weight_shape) only under compressed-tensors, ModelOpt's
 * weight_scale_2 only outside it (a tensor of the other's is then a companion no rule moves,
 * refused by name). X.input_scale is [] in ModelOpt's checkpoints and [1] in compressed-tensors'
 * (float-quantized with static activations): the chain that stacks it is chosen here too.
 * Companions come after every rule they refer to, so dropping some renumbers none of those. */
void spec_bind_companions(mpk_spec *s, const mpk_model_config *cfg)
{
    bool ct = cfg && strcmp(cfg->quant_method, "compressed-tensors") == 0;
    int n = 0;
    for (int i = 0; i < s->n_rules; i++) {
        mpk_rule *c = &s->rules[i];
        if (c->companion_of >= 0 && qc_kinds[c->companion_kind].method == (ct ? QC_MODELOPT : QC_CT))
            continue;
        if (ct && c->companion_of >= 0 && c->companion_kind == QC_INPUT_SCALE)
            qc_ops(&s->rules[c->companion_of], c, QC_SCALAR, true);
        s->rules[n++] = *c;
    }
    s->n_rules = n;
}
