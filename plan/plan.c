/* plan.c — match a checkpoint against a spec, group, check, infer, lay out shards. */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool parse_index(const char *v, size_t len, long *out)
{
    if (len == 0 || len > 9)
        return false;
    long x = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)v[i]))
            return false;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return true;
}

static int cmp_out(const void *a, const void *b)
{
    return mpk_natural_cmp(((const mpk_plan_out *)a)->name, ((const mpk_plan_out *)b)->name);
}

static char *apply_renames(mpk_arena *a, const mpk_spec *s, const char *name)
{
    char *cur = (char *)name;
    for (int i = 0; i < s->n_renames; i++) {
        const char *f = s->renames[i].from, *t = s->renames[i].to;
        const char *hit = strstr(cur, f);
        if (!hit)
            continue;
        if (!(cur = plan_splice(a, cur, (size_t)(hit - cur), strlen(f), t, strlen(t))))
            return NULL;
    }
    return cur;
}

/* What mpk_plan_build holds from step to step. */
typedef struct build {
    mpk_plan *p;
    const mpk_spec *spec;
    const mpk_plan_opts *opts;
    const char *where;
    mpk_error *err;
    group_acc *accs;                    /* the groups being gathered */
    size_t n_accs, cap_accs;
    mpk_strmap keys, names;             /* group keys; output names */
    const mpk_ckpt_tensor **pass;       /* the tensors no rule consumed */
    const mpk_ckpt_tensor **list;       /* the tensors to match (source_list) */
    size_t n_list;
    bool *used;                         /* per list entry: a rule consumed it */
    const char **mnames;                /* transformers: per list entry the name matched (renamed) */
    const char **pass_names;            /* transformers: per pass-through its name so far */
    size_t n_out;                       /* outputs (step 2 counts, step 3 makes) */
} build;

/* The group of rule ri with key full_key (made when new), and the tensor added to it. */
static mpk_status add_to_group(build *bd, int ri, int si, long item, const mpk_ckpt_tensor *t, char *prefix,
                               char *suffix, char *full_key, const mpk_capture *keep, int nk)
{
    mpk_plan *p = bd->p;
    size_t gi;
    if (!prefix || !suffix || !full_key)
        return mpk_error_set(bd->err, MPK_E_NOMEM, 0, bd->where, "out of memory");
    if (!mpk_strmap_get(&bd->keys, full_key, strlen(full_key), &gi)) {
        group_acc *na = mpk_grow(bd->accs, bd->n_accs, &bd->cap_accs, sizeof *na, 64);
        if (!na)
            return mpk_error_set(bd->err, MPK_E_NOMEM, 0, bd->where, "out of memory");
        bd->accs = na;
        gi = bd->n_accs++;
        memset(&bd->accs[gi], 0, sizeof bd->accs[gi]);
        bd->accs[gi].g.rule = &bd->spec->rules[ri];
        bd->accs[gi].g.key = full_key;
        bd->accs[gi].g.prefix = prefix;
        bd->accs[gi].g.suffix = suffix;
        for (int k = 0; k < nk; k++) {
            bd->accs[gi].g.caps[k] = keep[k];
            /* keep the capture value alive with the plan */
            bd->accs[gi].g.caps[k].val = mpk_arena_strndup(p->arena, keep[k].val, keep[k].len);
        }
        bd->accs[gi].g.n_caps = nk;
        mpk_strmap_put(&bd->keys, full_key, strlen(full_key), gi, NULL);
    }
    return plan_add_entry(&bd->accs[gi], (entry){si, item, t}, bd->where, bd->err);
}

/* A tensor against a {capture} spec's rules: true when one consumed it. */
static mpk_status match_captures(build *bd, const mpk_ckpt_tensor *t, bool *consumed)
{
    mpk_plan *p = bd->p;
    const mpk_spec *spec = bd->spec;
    const char *name = t->info->name;
    for (int ri = 0; ri < spec->n_rules; ri++) {
        const mpk_rule *r = &spec->rules[ri];
        for (int si = 0; si < r->n_sources; si++) {
            mpk_capture caps[8], keep[8];
            int nc, nk = 0;
            size_t start, end;
            long item = 0;
            if (!mpk_pattern_match(&r->sources[si], name, caps, &nc, &start, &end))
                continue;
            *consumed = true;
            for (int c = 0; c < nc; c++) {
                if (r->list_in_sources && strlen(r->list_capture) == caps[c].name_len &&
                    memcmp(r->list_capture, caps[c].name, caps[c].name_len) == 0) {
                    if (!parse_index(caps[c].val, caps[c].len, &item))
                        return mpk_error_set(bd->err, MPK_E_SPEC, 0, bd->where,
                                             "tensor '%s': {%s} matched '%.*s', not an index (%s)", name,
                                             r->list_capture, (int)caps[c].len, caps[c].val, r->path);
                } else {
                    keep[nk++] = caps[c];
                }
            }
            char *prefix = mpk_arena_strndup(p->arena, name, start);
            char *suffix = mpk_arena_strndup(p->arena, name + end, strlen(name + end));
            char *key = prefix && suffix ? plan_expand(p->arena, &r->sources[0], prefix, suffix, keep, nk,
                                                       r->list_capture, "*") : NULL;
            char *full_key = key ? mpk_arena_printf(p->arena, "%d|%s", ri, key) : NULL;
            return add_to_group(bd, ri, si, item, t, prefix, suffix, full_key, keep, nk);
        }
    }
    return MPK_OK;
}

/* A tensor (named mname after the renames) against a transformers spec's converters. */
static mpk_status match_tf(build *bd, const mpk_ckpt_tensor *t, const char *mname, bool *consumed)
{
    mpk_plan *p = bd->p;
    const mpk_spec *spec = bd->spec;
    int ri, si;
    regoff_t so, eo;
    const char *iv = NULL;
    size_t il = 0;
    if (!plan_tf_first_match(spec, false, mname, &ri, &si, &so, &eo, &iv, &il))
        return MPK_OK;
    const mpk_rule *r = &spec->rules[ri];
    const mpk_pattern *sp = &r->sources[si];
    long item = 0;
    *consumed = true;
    if (iv && !parse_index(iv, il, &item))
        return mpk_error_set(bd->err, MPK_E_SPEC, 0, bd->where, "tensor '%s' (as '%s'): the list index of "
                             "'%s' matched '%.*s', not an index (%s)", t->info->name, mname, sp->text, (int)il,
                             iv, r->path);
    /* transformers replaces the first occurrence of the matched text */
    size_t ml = (size_t)(eo - so), pre = (size_t)((const char *)memmem(mname, strlen(mname), mname + so, ml) - mname);
    char ibuf[24];
    snprintf(ibuf, sizeof ibuf, "%ld", item);
    char *back = sp->literal ? plan_expand(p->arena, sp, "", "", NULL, 0, r->list_capture, ibuf) : NULL;
    if (!back || strlen(back) != ml || memcmp(back, mname + so, ml) != 0)
        return mpk_error_set(bd->err, MPK_E_NOT_INVERTIBLE, 0, bd->where, "spec '%s'%s: tensor '%s': %s source "
                             "'%s' matched '%.*s', which undone would be written '%s': the conversion could "
                             "not be undone byte for byte", spec->name, spec->reversed ? " (reversed)" : "",
                             t->info->name, r->path, sp->text, (int)ml, mname + so,
                             back ? back : "(not literal text)");
    char *prefix = mpk_arena_strndup(p->arena, mname, pre);
    char *suffix = mpk_arena_strndup(p->arena, mname + pre + ml, strlen(mname + pre + ml));
    char *full_key = prefix && suffix ? mpk_arena_printf(p->arena, "%d|%s\x1f%s", ri, prefix, suffix) : NULL;
    return add_to_group(bd, ri, si, item, t, prefix, suffix, full_key, NULL, 0);
}

/* Step 1 of mpk_plan_build: every tensor of the list matched against the rules, gathered into groups by key;
 * the others pass through. A transformers spec matches the names its renames make (packing). */
static mpk_status build_match(build *bd)
{
    mpk_plan *p = bd->p;
    const mpk_spec *spec = bd->spec;
    if (spec->transformers) {
        const char **names = mpk_arena_alloc(p->arena, sizeof *names * (bd->n_list + 1));
        bd->mnames = mpk_arena_alloc(p->arena, sizeof *bd->mnames * (bd->n_list + 1));
        if (!names || !bd->mnames)
            return mpk_error_set(bd->err, MPK_E_NOMEM, 0, bd->where, "out of memory");
        for (size_t i = 0; i < bd->n_list; i++)
            names[i] = bd->mnames[i] = bd->list[i]->info->name;
        if (!spec->reversed && spec->n_renames)
            MPK_TRY(plan_renames_checked(p->arena, spec, false, names, bd->n_list, NULL, bd->mnames, bd->err));
    }
    for (size_t ti = 0; ti < bd->n_list; ti++) {
        const mpk_ckpt_tensor *t = bd->list[ti];
        bool consumed = false;
        MPK_TRY(spec->transformers ? match_tf(bd, t, bd->mnames[ti], &consumed) : match_captures(bd, t, &consumed));
        if (consumed) {
            p->n_consumed++, bd->used[ti] = true;
        } else {
            bd->pass_names[p->n_pass] = spec->transformers ? bd->mnames[ti] : NULL;
            bd->pass[p->n_pass++] = t;
        }
    }
    return MPK_OK;
}

/* After step 1: the parts of partitioned rules split; a checkpoint nothing matched is refused
 * when it is already converted or the preset is the wrong one. */
static mpk_status build_refuse_unmatched(build *bd)
{
    mpk_plan *p = bd->p;
    const mpk_spec *spec = bd->spec;
    const mpk_plan_opts *opts = bd->opts;
    const mpk_ckpt *src = bd->p->src;
    const char *where = bd->where;
    mpk_error *err = bd->err;
    mpk_status st = MPK_OK;
    if ((st = plan_split_parts(p, &bd->accs, &bd->n_accs, &bd->cap_accs, opts, err)) != MPK_OK)
        return st;
    /* already converted? nothing matched a source, but something looks like a target */
    if (bd->n_accs == 0 && spec->n_rules > 0) {
        for (size_t ti = 0; ti < src->n_tensors; ti++)
            if (mpk_str_ends(src->tensors[ti].info->name, "_blocks") && !spec->dequantizes) {
                st = mpk_error_set(err, MPK_E_ALREADY_CONVERTED, 0, where,
                                   "tensor '%s' is MXFP4 experts, already packed (preset '%s' has "
                                   "nothing to do); the gpt_oss preset dequantizes them",
                                   src->tensors[ti].info->name, spec->name);
                return mpk_error_about(err, MPK_FIELD_SPEC, st);
            }
        for (size_t ti = 0; ti < src->n_tensors; ti++)
            for (int ri = 0; ri < spec->n_rules; ri++)
                for (int k = 0; k < spec->rules[ri].n_targets; k++) {
                    mpk_capture caps[8];
                    int nc;
                    size_t a, b;
                    regoff_t so, eo;
                    const mpk_pattern *tp = &spec->rules[ri].targets[k];
                    const char *nm = src->tensors[ti].info->name;
                    if (tp->rx ? plan_regex_search(tp->rx, nm, &so, &eo, NULL, NULL, 0)
                               : mpk_pattern_match(tp, nm, caps, &nc, &a, &b)) {
                        st = mpk_error_set(err, MPK_E_ALREADY_CONVERTED, 0, where,
                                           "already in the %s layout of preset '%s' (tensor '%s' "
                                           "is a target and no tensor is a source)",
                                           spec->reversed ? "per-expert" : "packed", spec->name,
                                           src->tensors[ti].info->name);
                        return st;
                    }
                }
    }
    /* a preset that matches none of the per-expert tensors is the wrong preset: it would copy
     * the checkpoint and call that a conversion */
    if (bd->n_accs == 0 && spec->n_rules > 0) {
        for (size_t ti = 0; ti < src->n_tensors; ti++) {
            const char *n = src->tensors[ti].info->name;
            if (mpk_per_expert_name(n)) {
                st = mpk_error_set(err, MPK_E_PRESET, 0, where,
                                   "preset '%s'%s matches none of the expert tensors (e.g. '%s'): the "
                                   "wrong preset for this model? (the preset 'auto' picks it from "
                                   "config.json's model_type; 'moepack presets' lists them)",
                                   spec->name, spec->reversed ? " (reversed)" : "", n);
                return mpk_error_about(err, MPK_FIELD_SPEC, st);
            }
        }
    }
    return MPK_OK;
}

/* Step 2 of mpk_plan_build. */
static mpk_status build_groups(build *bd)
{
    mpk_plan *p = bd->p;
    const mpk_plan_opts *opts = bd->opts;
    const char *where = bd->where;
    mpk_error *err = bd->err;
    const mpk_ckpt_tensor **pass = bd->pass;
    const mpk_ckpt_tensor **list = bd->list;
    size_t n_list = bd->n_list;
    bool *used = bd->used;
    mpk_status st = MPK_OK;
    /* 2. check and infer each group */
    p->groups = mpk_arena_alloc(p->arena, sizeof *p->groups * (bd->n_accs + 1));
    bd->n_out = p->n_pass;
    for (size_t i = 0; i < bd->n_accs; i++) {
        if ((st = plan_finish_group(p, &bd->accs[i], opts, err)) != MPK_OK)
            return st;
        p->groups[i] = bd->accs[i].g;
        bd->n_out += (size_t)(bd->accs[i].g.out_meta.n_groups * bd->accs[i].g.out_meta.n_items);
    }
    /* reversed parts number their outputs on from the parts before them (all the same size) */
    for (size_t i = 0; i < bd->n_accs; i++) {
        mpk_plan_group *g = &p->groups[i], *g0 = &p->groups[bd->accs[i].first];
        if (!bd->accs[i].part || g->rule->list_in_sources)
            continue;
        if (g->out_meta.n_items != g0->out_meta.n_items) {
            st = mpk_error_set(err, MPK_E_SHAPE, 0, where,
                               "'%s%s%s' makes %d %s tensors but '%s%s%s' makes %d: the parts of %s "
                               "must be the same size", g->prefix, g->rule->sources[0].text, g->suffix,
                               g->out_meta.n_items, g->rule->list_capture, g0->prefix,
                               g0->rule->sources[0].text, g0->suffix, g0->out_meta.n_items,
                               g->rule->path);
            return st;
        }
        g->item_base = (long)bd->accs[i].part * g->out_meta.n_items;
    }
    p->n_groups = bd->n_accs;
    /* nothing half-converted: every per-expert tensor and every companion of a converted one
     * is understood, or declared a pass-through (or the caller said to pass it); after the
     * groups, so that what is wrong with the conversion itself is said first */
    return plan_check_unknown(p, pass, p->n_pass, list, n_list, used, opts, err);
}

/* A reversed transformers spec: every output name with the renames undone (checked: redone,
 * each gives its name back). */
static mpk_status undo_renames(mpk_plan *p, const mpk_spec *spec, const mpk_plan_opts *opts, mpk_error *err)
{
    const char **names = mpk_arena_alloc(p->arena, sizeof *names * (p->n_outs + 1));
    const char **out = mpk_arena_alloc(p->arena, sizeof *out * (p->n_outs + 1));
    if (!names || !out)
        return mpk_error_set(err, MPK_E_NOMEM, 0, p->src->dir, "out of memory");
    for (size_t i = 0; i < p->n_outs; i++)
        names[i] = p->outs[i].name;
    MPK_TRY(plan_tf_check_round(p, spec, names, err));
    MPK_TRY(plan_renames_checked(p->arena, spec, true, names, p->n_outs, opts->known_names, out, err));
    for (size_t i = 0; i < p->n_outs; i++)
        p->outs[i].name = out[i];
    return MPK_OK;
}

/* --quantize nvfp4/mxfp4: rule output o (a float [.., R, C]) becomes U8 codes [.., R, C/2] and
 * gets its scales after it: NVFP4 o_weight_scale F8_E4M3 [.., R, C/16] and o_weight_scale_2 F32
 * [.., parts] (one global scale per fused projection: the rule's sources, stacked along R, as
 * ModelOpt's gate and up each have one; [..] for one), MXFP4 o_scale_inv F8_E8M0 [.., R, C/32].
 * A row that is not whole blocks, or rows that do not split into the parts, is MPK_E_QUANT. */
static mpk_status quant4_outputs(mpk_plan *p, int fmt, const mpk_rule *r, mpk_plan_out *o, const char *where,
                                 mpk_error *err)
{
    int nd = o->meta.ndim, blk = fmt == 1 ? 16 : 32, parts = r->n_sources;
    char ob[96];
    /* only experts stacked (merge along dim 0) and projections joined along the rows (concat
     * along dim nd - 2): each packed row is then a whole row of one source linear, so blocks
     * along it are that linear's (ModelOpt's and the per-expert MXFP4 layout: [out, in], blocks
     * along in) and unpack moves them back with the codes */
    const mpk_plan_group *gr = &p->groups[o->group];
    const mpk_tensor_info *s0 = gr->src[0] ? gr->src[0]->info : NULL;
    int cur = s0 ? s0->ndim : nd; /* the ndim each op meets: a concat must join rows there */
    for (int k = 0; k < r->n_ops; k++) {
        bool merge = r->ops[k].kind == MPK_OP_MERGE && r->ops[k].dim == 0;
        if (!merge && !(r->ops[k].kind == MPK_OP_CONCAT && r->ops[k].dim == cur - 2))
            MPK_FAIL_ABOUT(err, MPK_FIELD_QUANT, MPK_E_QUANT, where,
                           "tensor '%s' (%s): --quantize %s needs each packed row to be a row of one source linear "
                           "(blocks along it), but the rule applies %s", o->name, r->path,
                           fmt == 1 ? "nvfp4" : "mxfp4", mpk_op_str(&r->ops[k], ob, sizeof ob));
        cur += merge;
    }
    /* (the joined linears have the same rows, as [E, parts] global scales need: concat takes only
     * equal shapes, so that chunk can undo it) */
    int64_t R = o->meta.shape[nd - 2], C = o->meta.shape[nd - 1];
    if (C % blk || (fmt == 1 && (R % parts || parts > MPK_MAX_PARTS)))
        MPK_FAIL_ABOUT(err, MPK_FIELD_QUANT, MPK_E_QUANT, where,
                       "tensor '%s' [.., %lld, %lld]: --quantize %s needs rows of whole %d-value blocks%s", o->name,
                       (long long)R, (long long)C, fmt == 1 ? "nvfp4" : "mxfp4", blk,
                       fmt == 1 ? " and rows that split evenly into at most 64 fused projections" : "");
    mpk_plan_out *s = &p->outs[p->n_outs++];
    *s = *o;
    s->name = mpk_arena_printf(p->arena, fmt == 1 ? "%s_weight_scale" : "%s_scale_inv", o->name);
    s->quant = 2;
    s->meta.dtype = fmt == 1 ? MPK_DTYPE_F8_E4M3 : MPK_DTYPE_F8_E8M0;
    s->meta.shape[nd - 1] = C / blk;
    if (fmt == 1) {
        mpk_plan_out *g = &p->outs[p->n_outs++];
        *g = *o;
        g->name = mpk_arena_printf(p->arena, "%s_weight_scale_2", o->name);
        g->quant = 3;
        g->meta.dtype = MPK_DTYPE_F32;
        g->meta.ndim = parts > 1 ? nd - 1 : nd - 2;
        g->meta.shape[nd - 2] = parts;
        o->parts = s->parts = g->parts = parts;
    }
    o->quant = 1;
    o->meta.dtype = MPK_DTYPE_U8;
    o->meta.shape[nd - 1] = C / 2;
    return MPK_OK;
}

/* Step 3 of mpk_plan_build. */
static mpk_status build_outputs(build *bd)
{
    mpk_plan *p = bd->p;
    const mpk_spec *spec = bd->spec;
    const mpk_plan_opts *opts = bd->opts;
    const char *where = bd->where;
    mpk_error *err = bd->err;
    const mpk_ckpt_tensor **pass = bd->pass;
    mpk_status st = MPK_OK;
    /* 3. outputs (--quantize adds a scale grid per rule output) */
    if (opts->quantize_block > 0 || opts->quantize4)
        bd->n_out = 3 * bd->n_out;
    p->outs = mpk_arena_alloc(p->arena, sizeof *p->outs * (bd->n_out + 1));
    if (!p->outs || mpk_strmap_init(&bd->names, bd->n_out) != MPK_OK) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        return st;
    }
    for (size_t i = 0; i < p->n_pass; i++) {
        mpk_plan_out *o = &p->outs[p->n_outs++];
        o->name = spec->transformers ? bd->pass_names[i] : apply_renames(p->arena, spec, pass[i]->info->name);
        o->meta.dtype = pass[i]->info->dtype;
        o->meta.ndim = pass[i]->info->ndim;
        memcpy(o->meta.shape, pass[i]->info->shape, sizeof o->meta.shape);
        o->group = -1;
        o->pass = pass[i];
    }
    for (size_t gi = 0; gi < p->n_groups; gi++) {
        mpk_plan_group *g = &p->groups[gi];
        const mpk_rule *r = g->rule;
        for (int tg = 0; tg < g->out_meta.n_groups; tg++)
            for (int it = 0; it < g->out_meta.n_items; it++) {
                char ibuf[24];
                snprintf(ibuf, sizeof ibuf, "%ld", it + (r->list_in_sources ? 0 : g->item_base));
                mpk_plan_out *o = &p->outs[p->n_outs++];
                o->name = plan_expand(p->arena, &r->targets[tg], g->prefix, g->suffix, g->caps, g->n_caps,
                                 r->list_capture, ibuf);
                if (o->name && !spec->transformers) /* renames reach the targets' prefixes too */
                    o->name = apply_renames(p->arena, spec, o->name);
                o->slot = tg * g->out_meta.n_items + it;
                o->meta = g->out_meta.t[o->slot];
                o->group = (int)gi;
                mpk_dtype dt = o->meta.dtype;
                bool quantized = (opts->quantize4 || opts->quantize_block > 0) && plan_quantizes(r, &g->out_meta) &&
                                 o->meta.ndim >= 2;
                if (quantized && dt != MPK_DTYPE_F32 && dt != MPK_DTYPE_F16 && dt != MPK_DTYPE_BF16)
                    MPK_FAIL_ABOUT(err, MPK_FIELD_QUANT, MPK_E_DTYPE_MISMATCH, where,
                                   "tensor '%s' is %s: quantizing takes F32, F16 or BF16 weights (this one is "
                                   "already quantized); convert it as it is, or dequantize it first",
                                   o->name ? o->name : "?", mpk_dtype_name(dt));
                if (quantized && opts->quantize4)
                    MPK_TRY(quant4_outputs(p, opts->quantize4, r, o, where, err));
                else if (quantized) {
                    int b = opts->quantize_block, nd = o->meta.ndim;
                    mpk_plan_out *q = &p->outs[p->n_outs++];
                    *q = *o;
                    q->name = mpk_arena_printf(p->arena, "%s_scale_inv", o->name);
                    q->quant = 2;
                    q->meta.dtype = MPK_DTYPE_F32;
                    q->meta.shape[nd - 2] = (q->meta.shape[nd - 2] + b - 1) / b;
                    q->meta.shape[nd - 1] = (q->meta.shape[nd - 1] + b - 1) / b;
                    o->quant = 1;
                    o->meta.dtype = MPK_DTYPE_F8_E4M3;
                }
            }
    }
    for (size_t i = 0; i < p->n_outs; i++)
        if (!p->outs[i].name)
            return mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
    if (spec->transformers && spec->reversed) /* unpacking: checked, then the renames undone last */
        MPK_TRY(undo_renames(p, spec, opts, err));
    else if (spec->transformers) { /* packing: what unpack will do with every name, checked */
        const char **names = mpk_arena_alloc(p->arena, sizeof *names * (p->n_outs + 1));
        for (size_t i = 0; names && i < p->n_outs; i++)
            names[i] = p->outs[i].name;
        MPK_TRY(names ? plan_tf_check_round(p, spec, names, err) : mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory"));
    }
    for (size_t i = 0; i < p->n_outs; i++) {
        mpk_plan_out *o = &p->outs[i];
        if (mpk_tensor_nbytes(o->meta.dtype, o->meta.shape, o->meta.ndim, &o->nbytes) != MPK_OK ||
            __builtin_add_overflow(p->total_bytes, o->nbytes, &p->total_bytes)) {
            st = mpk_error_set(err, MPK_E_SIZE_OVERFLOW, 0, where, "tensor '%s': its size, or the "
                               "output's total, overflows 64 bits", o->name);
            return st;
        }
        if (mpk_strmap_put(&bd->names, o->name, strlen(o->name), i, NULL)) {
            st = mpk_error_set(err, MPK_E_CONFLICT, 0, where,
                               "two tensors would both be written as '%s'", o->name);
            return st;
        }
    }
    /* outputs in natural name order; each keeps (group, slot) to find its node */
    qsort(p->outs, p->n_outs, sizeof *p->outs, cmp_out);
    return MPK_OK;
}

/* Step 4 of mpk_plan_build. */
static mpk_status build_shards(build *bd)
{
    mpk_plan *p = bd->p;
    const mpk_plan_opts *opts = bd->opts;
    /* 4. shards: fill in name order, a new shard when the next tensor would overflow */
    uint64_t cur = 0;
    int shard = 0;
    for (size_t i = 0; i < p->n_outs; i++) {
        uint64_t sz = p->outs[i].nbytes;
        if (opts->max_shard_size && cur > 0 && cur + sz > opts->max_shard_size) {
            shard++;
            cur = 0;
        }
        p->outs[i].shard = shard;
        cur += sz;
    }
    p->n_shards = p->n_outs ? (size_t)shard + 1 : 1;
    return MPK_OK;
}

mpk_status mpk_plan_build(const mpk_ckpt *src, const mpk_spec *spec, const mpk_plan_opts *opts,
                          mpk_plan **out, mpk_error *err)
{
    *out = NULL;
    const char *where = src->dir;
    mpk_plan *p = mpk_calloc(1, sizeof *p);
    if (!p || !(p->arena = mpk_arena_new())) {
        free(p);
        MPK_FAIL(err, MPK_E_NOMEM, where, "out of memory");
    }
    p->src = src;
    p->spec = spec;
    mpk_status st = MPK_OK;
    build bs = {.p = p, .spec = spec, .opts = opts, .where = where, .err = err}, *bd = &bs;
    bd->pass = mpk_calloc(src->n_tensors + 1, sizeof *bd->pass);
    bd->used = mpk_calloc(src->n_tensors + 1, sizeof *bd->used);
    bd->pass_names = mpk_calloc(src->n_tensors + 1, sizeof *bd->pass_names);
    if (!bd->pass || !bd->used || !bd->pass_names || mpk_strmap_init(&bd->keys, 256) != MPK_OK) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto done;
    }
    /* a quantization moepack does not implement: its weights would be moved as plain tensors,
     * its scales left behind, config.json's declaration kept or dropped wrongly */
    char qbuf[512];
    const char *qwhy = opts->cfg ? mpk_config_quant_refused(opts->cfg, opts->dequantize, qbuf, sizeof qbuf) : NULL;
    if (qwhy) {
        char *qp = mpk_path_join(where, strcmp(opts->cfg->quant_key, "hf_quant_config.json") == 0
                                            ? "hf_quant_config.json" : "config.json");
        st = mpk_error_set(err, MPK_E_NOT_UNDERSTOOD, 0, qp ? qp : where, "%s", qwhy);
        free(qp);
        char nbuf[8];
        if (opts->dequantize && !mpk_config_quant_refused(opts->cfg, false, nbuf, sizeof nbuf))
            err->field = MPK_FIELD_QUANT; /* refused for dequantizing only: moved as they are, it converts */
        goto done;
    }
    /* quantizing takes float weights: a quantized source's experts would pass through as they
     * are under a quantization_config rewritten to declare the new format */
    if ((opts->quantize_block > 0 || opts->quantize4) && opts->cfg && opts->cfg->quant_key[0]) {
        bool file = strcmp(opts->cfg->quant_key, "hf_quant_config.json") == 0;
        char *qp = mpk_path_join(where, file ? "hf_quant_config.json" : "config.json");
        st = mpk_error_set(err, MPK_E_DTYPE_MISMATCH, 0, qp ? qp : where,
                           "already quantized (%s%s: %s): quantizing takes a checkpoint of F32, F16 or BF16 "
                           "weights; convert this one as it is, or dequantize it first",
                           file ? "" : "config.json's ", opts->cfg->quant_key, opts->cfg->quant_method);
        err->field = MPK_FIELD_QUANT;
        free(qp);
        goto done;
    }
    p->fp8_block = opts->quantize_block > 0 ? opts->quantize_block : 128;
    p->quant4 = opts->quantize4;
    if ((st = plan_source_list(p, opts, &bd->list, &bd->n_list, err)) != MPK_OK ||
        (st = build_match(bd)) != MPK_OK || (st = build_refuse_unmatched(bd)) != MPK_OK ||
        (st = build_groups(bd)) != MPK_OK || (st = build_outputs(bd)) != MPK_OK || (st = build_shards(bd)) != MPK_OK)
        goto done;
done:
    for (size_t i = 0; i < bd->n_accs; i++)
        free(bd->accs[i].e);
    free(bd->accs);
    free(bd->pass);
    free(bd->used);
    free(bd->pass_names);
    mpk_strmap_free(&bd->keys);
    mpk_strmap_free(&bd->names);
    if (st != MPK_OK) {
        mpk_plan_free(p);
        return st;
    }
    *out = p;
    return MPK_OK;
}

void mpk_plan_free(mpk_plan *p)
{
    if (!p)
        return;
    mpk_arena_free(p->arena);
    if (p->owner_free)
        p->owner_free(p->owner);
    free(p);
}
