/* compare.c — the public API's front: verify and diff: which direction a comparison runs in (the
 * identity for a round trip, the preset for per-expert -> packed, reversed when the source
 * turns out to be packed), and their reports. */
#define _GNU_SOURCE
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {"missing", "extra", "dtype-shape", "content"};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == MPK_DIFF_COUNT, "diff kinds");

void mpk_compare_req_init(mpk_compare_req *r, const char *src, const char *dst)
{
    memset(r, 0, sizeof *r);
    r->src = src;
    r->dst = dst;
    r->rtol = -1; /* the call's default */
}

static cJSON *cmp_json(const mpk_cmp_report *r, bool stats)
{
    cJSON *o = cJSON_CreateObject(), *d = cJSON_CreateArray(), *all = stats ? cJSON_CreateArray() : NULL;
    /* identical: every byte; identical_in_value: every decoded value (block-scaled pairs that
     * differ only in encoding, listed in encoding_only); within_tolerance: what passes (values
     * compared within atol/rtol) */
    cJSON *enc = cJSON_CreateArray();
    cJSON_AddBoolToObject(o, "identical", r->n_differ == 0 && r->n_inexact == 0 && r->n_encoding == 0);
    cJSON_AddBoolToObject(o, "identical_in_value", r->n_differ == 0 && r->n_inexact == 0);
    cJSON_AddBoolToObject(o, "within_tolerance", r->n_differ == 0);
    cJSON_AddNumberToObject(o, "inexact", (double)r->n_inexact);
    for (size_t i = 0; i < r->n; i++)
        if (r->t[i].encoding_only)
            cJSON_AddItemToArray(enc, cJSON_CreateString(r->t[i].name));
    cJSON_AddItemToObject(o, "encoding_only", enc);
    cJSON_AddNumberToObject(o, "compared", (double)r->n_compared);
    cJSON_AddNumberToObject(o, "bytes", (double)r->bytes);
    cJSON_AddNumberToObject(o, "atol", r->atol);
    cJSON_AddNumberToObject(o, "rtol", r->rtol);
    for (size_t i = 0; i < r->n; i++) {
        const mpk_tensor_cmp *t = &r->t[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", t->name);
        if (t->differs) {
            cJSON_AddStringToObject(e, "kind", kind_names[t->kind]);
            cJSON_AddStringToObject(e, "detail", t->detail);
        }
        if (t->n && (stats || t->differs)) {
            cJSON_AddNumberToObject(e, "elements", (double)t->n);
            cJSON_AddNumberToObject(e, "max_abs", isfinite(t->max_abs) ? t->max_abs : -1);
            cJSON_AddNumberToObject(e, "max_rel", isfinite(t->max_rel) ? t->max_rel : -1);
            cJSON_AddNumberToObject(e, "rmse", t->rmse);
            cJSON_AddNumberToObject(e, "cosine", t->cosine);
            cJSON_AddNumberToObject(e, "out_of_tolerance", (double)t->n_out_of_tol);
        }
        if (stats && t->encoding_only)
            cJSON_AddBoolToObject(e, "encoding_only", true);
        if (t->differs)
            cJSON_AddItemToArray(d, e);
        else if (all && (t->n || t->encoding_only))
            cJSON_AddItemToArray(all, e);
        else
            cJSON_Delete(e);
    }
    cJSON_AddItemToObject(o, "differences", d);
    if (all)
        cJSON_AddItemToObject(o, "tensors", all);
    return o;
}

static void cmp_text(FILE *f, const mpk_cmp_report *r, bool stats)
{
    char hx[33], gx[33], hb[32];
    if (stats) {
        fprintf(f, "%-60s %10s %12s %12s %12s %10s %8s\n", "tensor", "elements", "max_abs", "max_rel", "rmse",
                "cosine", "beyond");
        for (size_t i = 0; i < r->n; i++) {
            const mpk_tensor_cmp *t = &r->t[i];
            if (t->n)
                fprintf(f, "%-60s %10llu %12.4g %12.4g %12.4g %10.6f %8llu\n", t->name, (unsigned long long)t->n,
                        t->max_abs, t->max_rel, t->rmse, t->cosine, (unsigned long long)t->n_out_of_tol);
        }
    }
    for (size_t i = 0; i < r->n; i++) {
        const mpk_tensor_cmp *t = &r->t[i];
        if (t->differs && t->kind == MPK_DIFF_CONTENT && !t->approx)
            fprintf(f, "DIFF %-11s %s: %s xxh3 expected %s, got %s\n", kind_names[t->kind], t->name, t->detail,
                    mpk_hash_hex(t->want_hash, hx), mpk_hash_hex(t->got_hash, gx));
        else if (t->differs)
            fprintf(f, "DIFF %-11s %s: %s\n", kind_names[t->kind], t->name, t->detail);
        else if (t->encoding_only)
            fprintf(f, "SAME %-11s %s: bytes differ, every decoded value is equal\n", "value", t->name);
    }
    fprintf(f, "%s: %zu tensors compared (%s), %zu difference(s)", stats ? "diff" : "verify", r->n_compared,
            mpk_human_bytes(r->bytes, hb, sizeof hb), r->n_differ);
    if (!r->n_differ && !r->n_inexact && !r->n_encoding)
        fputs(": identical\n", f);
    else if (!r->n_differ && !r->n_inexact)
        fprintf(f, ": identical in value (%zu tensor(s) differ only in encoding: block-scaled pairs whose decoded "
                "values are equal)\n", r->n_encoding);
    else if (!r->n_differ)
        fprintf(f, ": within tolerance (%zu tensor(s) differ in bytes, every value within atol %g + rtol %g)\n",
                r->n_inexact, r->atol, r->rtol);
    else
        fputc('\n', f);
}

/* The provenance a manifest records, as lines of text. */
static void prov_text(FILE *f, const cJSON *p)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(p, "options");
    fprintf(f, "made by: moepack %s, %s", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "moepack_version")),
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "command")));
    const char *preset = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "preset"));
    const char *spec = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "spec"));
    if (preset && *preset)
        fprintf(f, ", preset %s", preset);
    if (spec && *spec)
        fprintf(f, ", spec %s", spec);
    fprintf(f, " (spec xxh3-128 %s)\n", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "spec_xxh3_128")));
    if (o) {
        char *t = cJSON_PrintUnformatted(o);
        fprintf(f, "options: %s\n", t ? t : "?");
        free(t);
    }
    const char *src = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "source"));
    fprintf(f, "source: %s%sfiles xxh3-128 %s%s\n", src && *src ? src : "", src && *src ? " (" : "",
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "source_xxh3_128")), src && *src ? ")" : "");
}

static mpk_status make_report(const mpk_cmp_report *c, bool stats, const cJSON *prov, const mpk_rank_stats *ranks,
                               int n_ranks, mpk_report **out, mpk_error *err)
{
    mpk_report *r = mpk_report_new();
    if (!r)
        MPK_FAIL(err, MPK_E_NOMEM, "report", "out of memory");
    r->n_differ = c->n_differ;
    char *buf, hx[33];
    size_t len;
    FILE *f = mpk_report_begin_text(r, &buf, &len);
    if (f && prov) /* verify DST: how DST was made, as its manifest says */
        prov_text(f, prov);
    if (f)
        cmp_text(f, c, stats);
    mpk_status s = mpk_report_end_text(r, f, &buf, err);
    cJSON *o = s == MPK_OK ? cmp_json(c, stats) : NULL;
    if (o && prov)
        cJSON_AddItemToObject(o, "provenance", cJSON_Duplicate(prov, 1));
    if (o && !mpk_lib_ranks_json(o, ranks, n_ranks)) {
        cJSON_Delete(o);
        o = NULL;
    }
    if (s == MPK_OK)
        s = mpk_report_set_json(r, stats ? "moepack.diff/1" : "moepack.verify/1", o, err);
    for (size_t i = 0; i < c->n && s == MPK_OK; i++) {
        const mpk_tensor_cmp *t = &c->t[i];
        if (t->differs)
            s = mpk_report_add(r, t->name, kind_names[t->kind], t->detail, t->dtype, 0, NULL, 0,
                               t->kind == MPK_DIFF_CONTENT && !t->approx ? mpk_hash_hex(t->got_hash, hx) : NULL,
                               err);
    }
    if (s != MPK_OK) {
        mpk_report_free(r);
        return s;
    }
    return mpk_report_give(r, out);
}

/* Same tensor names on both sides: a round trip (identity). */
static bool same_names(const mpk_ckpt *a, const mpk_ckpt *b)
{
    if (a->n_tensors != b->n_tensors)
        return false;
    for (size_t i = 0; i < a->n_tensors; i++)
        if (!mpk_ckpt_find(b, a->tensors[i].info->name))
            return false;
    return true;
}

/* FP8 tensors (weights or E4M3/E8M0 scales), or compressed-tensors' packed codes
 * (X.weight_packed, packed T_weight_packed: its INT4 has no FP8 beside it). */
static bool has_fp8(const mpk_ckpt *c)
{
    for (size_t i = 0; i < c->n_tensors; i++)
        if (mpk_dtype_is_fp8(c->tensors[i].info->dtype) || mpk_str_ends(c->tensors[i].info->name, "weight_packed"))
            return true;
    return false;
}

/* c holds what --quantize writes (fmt 1: NVFP4's X_weight_scale_2 F32; 2: MXFP4's X_scale_inv
 * F8_E8M0 beside U8 codes; 0: either). */
static bool has_quant4(const mpk_ckpt *c, int fmt)
{
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_tensor_info *t = c->tensors[i].info;
        if ((fmt != 2 && t->dtype == MPK_DTYPE_F32 && mpk_str_ends(t->name, "_weight_scale_2")) ||
            (fmt != 1 && t->dtype == MPK_DTYPE_F8_E8M0 && mpk_str_ends(t->name, "_scale_inv")))
            return true;
    }
    return false;
}

/* What a conversion from a to b did to the quantization, read from their headers when the
 * request leaves it open: FP8 weights in b only were quantized (--quantize fp8-block128),
 * FP8 weights (or packed codes) in a only were dequantized (--dequantize). */
static mpk_quant detect_quant(const mpk_ckpt *a, const mpk_ckpt *b)
{
    bool fa = has_fp8(a), fb = has_fp8(b);
    if (!fa && !has_quant4(a, 0)) /* b holds 4-bit experts a does not: --quantize nvfp4 / mxfp4 */
        for (int f = 1; f <= 2; f++)
            if (has_quant4(b, f))
                return f == 1 ? MPK_QUANT_NVFP4 : MPK_QUANT_MXFP4;
    return fa == fb ? MPK_QUANT_KEEP : fb ? MPK_QUANT_FP8_BLOCK128 : MPK_QUANT_DEQUANTIZE;
}

/* The identity over spec's packed targets (packed) or per-expert sources: a rule per pattern,
 * no ops, so that a quantization change applies to the expert tensors of two checkpoints in the
 * same layout (a packed BF16 checkpoint against its --quantize twin). */
static mpk_status identity_spec(const mpk_spec *s, bool packed, mpk_spec **out, mpk_error *err)
{
    cJSON *root = cJSON_CreateObject(), *convs = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "name", s->name);
    cJSON_AddStringToObject(root, "description", "identity over the expert tensors");
    cJSON_AddItemToObject(root, "model_types", cJSON_CreateArray());
    cJSON_AddItemToObject(root, "renames", cJSON_CreateArray());
    for (int i = 0; i < s->n_rules; i++) {
        const mpk_rule *r = &s->rules[i];
        if (r->scale_of >= 0 || r->companion_of >= 0) /* a companion: the parser makes those again */
            continue;
        const mpk_pattern *ps = packed ? r->targets : r->sources;
        for (int k = 0; k < (packed ? r->n_targets : r->n_sources); k++) {
            cJSON *c = cJSON_CreateObject(), *src = cJSON_CreateArray();
            cJSON_AddItemToArray(src, cJSON_CreateString(ps[k].text));
            cJSON_AddItemToObject(c, "sources", src);
            cJSON_AddStringToObject(c, "target", ps[k].text);
            cJSON_AddItemToObject(c, "ops", cJSON_CreateArray());
            cJSON_AddItemToArray(convs, c);
        }
    }
    cJSON_AddItemToObject(root, "converters", convs);
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        MPK_FAIL(err, MPK_E_NOMEM, "verify", "out of memory");
    mpk_status st = mpk_spec_parse(text, strlen(text), s->name, out, err);
    free(text);
    return st;
}

/* Compares a (the source) with b through the identity, or the spec in the direction the
 * layouts say: a packed source (the forward spec finds it already converted) is compared
 * through the spec reversed. */
static mpk_status compare_two(const mpk_compare_req *q, mpk_quant quant, const mpk_ckpt *a, const mpk_ckpt *b,
                              const mpk_cmp_opts *co, mpk_cmp_report **out, mpk_error *err)
{
    mpk_model_config cfg = {0};
    mpk_spec *spec = NULL;
    MPK_TRY(mpk_config_load(a->dir, &cfg, err));
    /* (pass_unknown: verify compares what a conversion with --pass-unknown passed through as it
     * compares any pass-through; an unknown quantization method is still refused) */
    mpk_plan_opts po = {.cfg = &cfg, .pass_unknown = true};
    mpk_lib_plan_quant(quant, &po);
    mpk_status s;
    /* the same names are a round trip, unless one side is marked packed and the other is not
     * (a preset whose targets keep their sources' names, e.g. qwen3_vl_moe's transposes) */
    const char *ma = mpk_lib_layout_marker(a), *mb = mpk_lib_layout_marker(b);
    bool a_packed = ma && strcmp(ma, "packed") == 0, b_packed = mb && strcmp(mb, "packed") == 0;
    if (same_names(a, b) && a_packed == b_packed && quant == MPK_QUANT_KEEP && !q->spec) {
        s = mpk_verify_compare(a, b, NULL, &po, co, out, err);
    } else if (quant != MPK_QUANT_KEEP && a_packed == b_packed && (ma || mb) && !q->spec &&
               (s = mpk_lib_spec_load(NULL, &cfg, false, &spec, err)) == MPK_OK) {
        /* the same layout, the quantization changed: the expert tensors through the identity */
        mpk_spec *id;
        if ((s = identity_spec(spec, a_packed, &id, err)) == MPK_OK) {
            s = mpk_verify_compare(a, b, id, &po, co, out, err);
            mpk_spec_free(id);
        }
    } else if ((s = mpk_lib_spec_load(q->spec, &cfg, a_packed && !b_packed, &spec, err)) == MPK_OK) {
        s = mpk_verify_compare(a, b, spec, &po, co, out, err);
        if (s == MPK_E_ALREADY_CONVERTED && b_packed && same_names(a, b)) {
            /* a is packed though unmarked (a family published fused, e.g. GraniteMoE), b too */
            s = mpk_verify_compare(a, b, NULL, &po, co, out, err);
        } else if (s == MPK_E_ALREADY_CONVERTED) { /* a is packed: b should be its unpacking */
            mpk_spec *rev;
            if ((s = mpk_spec_reverse(spec, &rev, err)) == MPK_OK) { /* rev owns spec now */
                spec = rev;
                s = mpk_verify_compare(a, b, rev, &po, co, out, err);
            }
        }
    }
    mpk_spec_free(spec);
    mpk_config_free(&cfg);
    return s;
}

static mpk_status run_compare(const mpk_compare_req *q, bool stats, mpk_report **out, mpk_error *err)
{
    mpk_ckpt *a = NULL, *b = NULL;
    mpk_cmp_report *r = NULL;
    *out = NULL;
    if (!q || !q->dst)
        MPK_FAIL(err, MPK_E_USAGE, "request", "no checkpoint to compare");
    if (!(q->atol >= 0) || isnan(q->rtol) || isinf(q->atol) || isinf(q->rtol))
        MPK_FAIL(err, MPK_E_USAGE, "request", "tolerances must be finite numbers >= 0");
    mpk_status s;
    mpk_meter meter;
    cJSON *root = NULL;
    const cJSON *prov = NULL;
    if (!q->src) {
        if (stats)
            MPK_FAIL(err, MPK_E_USAGE, "request", "diff compares two checkpoints");
        if ((s = mpk_ckpt_open(q->dst, &a, err)) == MPK_OK) {
            mpk_meter_start(&meter, q->progress, q->ctx, a->total_bytes);
            meter.cancel = q->cancel;
            if ((s = mpk_verify_manifest(a, &meter, &r, err)) == MPK_OK)
                mpk_meter_end(&meter);
        }
        const cJSON *ts;
        mpk_hash128 dg;
        mpk_error ig;
        if (s == MPK_OK && mpk_manifest_load(a->dir, &root, &ts, &dg, &ig) == MPK_OK)
            prov = cJSON_GetObjectItemCaseSensitive(root, "provenance");
    } else if ((s = mpk_ckpt_open(q->src, &a, err)) == MPK_OK && (s = mpk_ckpt_open(q->dst, &b, err)) == MPK_OK) {
        double rtol = q->rtol >= 0 ? q->rtol : stats ? 0 : 1.0 / 256;
        mpk_meter_start(&meter, q->progress, q->ctx, b->total_bytes);
        meter.cancel = q->cancel;
        mpk_cmp_opts co = {.atol = q->atol, .rtol = rtol, .values = stats, .meter = &meter};
        mpk_quant quant = q->quant == MPK_QUANT_KEEP ? detect_quant(a, b) : q->quant;
        /* diff of A against its quantization B (FP8, MXFP4, NVFP4): B's values dequantized on the
         * fly against A's, so the figures are the quantization's error (relative to B's values) */
        if (stats && mpk_lib_quantizes(quant))
            s = compare_two(q, MPK_QUANT_DEQUANTIZE, b, a, &co, &r, err);
        else
            s = compare_two(q, quant, a, b, &co, &r, err);
        if (s == MPK_OK)
            mpk_meter_end(&meter);
    }
    mpk_rank_stats *ranks = NULL; /* under MPI (the status agreed): what each rank read */
    int n_ranks = 0;
    if (s == MPK_OK) {
        ranks = mpk_dist_stats_meter(&meter, &n_ranks);
        s = make_report(r, stats, cJSON_IsObject(prov) ? prov : NULL, ranks, n_ranks, out, err);
    }
    free(ranks);
    cJSON_Delete(root);
    mpk_cmp_report_free(r);
    mpk_ckpt_close(a);
    mpk_ckpt_close(b);
    return s;
}

mpk_status mpk_verify(const mpk_compare_req *q, mpk_report **out, mpk_error *err)
{
    return run_compare(q, false, out, err);
}

mpk_status mpk_diff(const mpk_compare_req *q, mpk_report **out, mpk_error *err)
{
    return run_compare(q, true, out, err);
}
