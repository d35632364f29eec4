/* plan_unknown.c — what a plan would leave half-converted: per-expert tensors no rule
 * consumes and quantization companions left behind by the weight a rule moves. */
#define _GNU_SOURCE
#include "plan_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Quantization companions: a tensor beside a weight that the weight means nothing without.
 * As the last name segment (GPTQ/AWQ, ModelOpt, compressed-tensors, bitsandbytes, FP8)... */
static const char *const companion_segs[] = {
    "weight_scale", "weight_scale_2", "input_scale", "weight_scale_inv", "output_scale", "k_scale",
    "v_scale", "qweight", "qzeros", "scales", "g_idx", "weight_packed", "weight_shape",
    "weight_zero_point", "weight_global_scale", "input_global_scale", "weight_g_idx", "SCB",
    "weight_format", "absmax", "quant_map", "nested_absmax", "nested_quant_map", NULL};
/* ...or appended to the weight's own name (packed FP8 grids, MXFP4 pairs). */
static const char *const companion_tails[] = {"_scale_inv", "_scale", "_scale_2", "_blocks", "_scales",
                                              "_zero_point", "_qzeros", "_input_scale", "_weight_scale",
                                              NULL};

static bool is_companion_seg(const char *name)
{
    const char *last = strrchr(name, '.');
    last = last ? last + 1 : name;
    for (int i = 0; companion_segs[i]; i++)
        if (strcmp(last, companion_segs[i]) == 0)
            return true;
    return false;
}

enum { UNK_PER_EXPERT, UNK_COMPANION, UNK_COUNT };
static const char *const unk_why[UNK_COUNT] = {
    "a per-expert tensor that no rule consumes",
    "a quantization companion (scale, zero point, ...) of an expert linear, not moved with it",
};

/* The tensors a conversion would leave half-converted, among the pass-throughs: any
 * per-expert name (experts.N.) and any quantization companion of a tensor a rule consumes,
 * unless the spec declares it a pass-through ("pass"). Each goes into p->unknown; without
 * opts->pass_unknown, any at all is MPK_E_NOT_UNDERSTOOD naming the first few of each kind. */
mpk_status plan_check_unknown(mpk_plan *p, const mpk_ckpt_tensor *const *pass, size_t n_pass,
                                const mpk_ckpt_tensor *const *list, size_t n_list, const bool *used,
                                const mpk_plan_opts *opts, mpk_error *err)
{
    const mpk_spec *spec = p->spec;
    const char *where = p->src->dir;
    mpk_strmap consumed = {0}, modules = {0};
    int *kind = mpk_calloc(n_pass + 1, sizeof *kind);
    mpk_status st = MPK_OK;
    if (!kind || mpk_strmap_init(&consumed, n_list + 1) != MPK_OK ||
        mpk_strmap_init(&modules, n_list + 1) != MPK_OK) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_list; i++) {
        if (!used[i])
            continue;
        const char *n = list[i]->info->name, *dot = strrchr(n, '.');
        mpk_strmap_put(&consumed, n, strlen(n), i, NULL);
        if (dot)
            mpk_strmap_put(&modules, n, (size_t)(dot - n), i, NULL);
    }
    size_t count[UNK_COUNT] = {0};
    p->unknown = mpk_arena_alloc(p->arena, sizeof *p->unknown * (n_pass + 1));
    if (!p->unknown) {
        st = mpk_error_set(err, MPK_E_NOMEM, 0, where, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_pass; i++) {
        const char *n = pass[i]->info->name;
        size_t len = strlen(n), got;
        bool declared = false;
        for (int k = 0; k < spec->n_pass && !declared; k++) {
            mpk_capture caps[8];
            int nc;
            size_t a, b;
            declared = mpk_pattern_match(&spec->pass[k], n, caps, &nc, &a, &b);
        }
        if (declared)
            continue;
        int kd = -1;
        const char *dot = strrchr(n, '.');
        if (mpk_per_expert_name(n))
            kd = is_companion_seg(n) ? UNK_COMPANION : UNK_PER_EXPERT;
        else if (dot && is_companion_seg(n) && mpk_strmap_get(&modules, n, (size_t)(dot - n), &got))
            kd = UNK_COMPANION;
        for (int k = 0; kd < 0 && companion_tails[k]; k++) {
            size_t tl = strlen(companion_tails[k]);
            if (len > tl && strcmp(n + len - tl, companion_tails[k]) == 0 &&
                mpk_strmap_get(&consumed, n, len - tl, &got))
                kd = UNK_COMPANION;
        }
        if (kd < 0)
            continue;
        p->unknown[p->n_unknown++] = (mpk_plan_unknown){n, unk_why[kd]};
        kind[i] = kd + 1;
        count[kd]++;
    }
    if (!p->n_unknown || opts->pass_unknown)
        goto out;
    char msg[900];
    size_t o = (size_t)snprintf(msg, sizeof msg, "%zu tensor(s) that %s '%s'%s does not understand would be "
                                "left half-converted:", p->n_unknown, "spec",
                                spec->name, spec->reversed ? " (reversed)" : "");
    for (int kd = 0; kd < UNK_COUNT; kd++) {
        if (!count[kd])
            continue;
        o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, " %s%s:", count[kd] > 1 ? "each " : "",
                              unk_why[kd]);
        size_t shown = 0;
        for (size_t i = 0; i < n_pass && shown < 3; i++)
            if (kind[i] == kd + 1)
                o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, "%s '%s'", shown++ ? "," : "",
                                      pass[i]->info->name);
        if (count[kd] > shown)
            o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, " and %zu more", count[kd] - shown);
        o += (size_t)snprintf(msg + o, o < sizeof msg ? sizeof msg - o : 0, ";");
    }
    if (o < sizeof msg)
        msg[o - 1] = 0; /* the last ';' */
    st = mpk_error_about(err, MPK_FIELD_PASS_UNKNOWN, mpk_error_set(err, MPK_E_NOT_UNDERSTOOD, 0, where, "%s", msg));
out:
    free(kind);
    mpk_strmap_free(&consumed);
    mpk_strmap_free(&modules);
    return st;
}

