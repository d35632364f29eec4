/* gpucheck.c — the public API's front: mpk_gpucheck: packed experts through the CPU reference, the
 * CPU backends and (when built with CUDA and a device answers) the GPU backends; timings,
 * crossover, SVG plot. Loads the layer (and a per-expert reference) from checkpoints, so that a GPU
 * check proves the packing: gate rows first, experts in order. */
#define _GNU_SOURCE
#include "lib_internal.h"
#include "mpk_gpu.h"
#include "mpk_ops.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads tensor t ([R, C] or packed [E, R, C]) into out as BF16: its bytes, or, for FP8 E4M3 with
 * 128x128 block scales (`NAME_scale_inv` [(E,) ceil(R/128), ceil(C/128)] F32, as DeepSeek-V3
 * publishes them and pack writes them), each matrix dequantized (f32(code) * scale, rounded
 * once to BF16). */
static mpk_status read_bf16(const mpk_ckpt *c, const mpk_ckpt_tensor *t, uint16_t *out, mpk_error *err)
{
    if (t->info->dtype == MPK_DTYPE_BF16)
        return mpk_ckpt_read(c, t, 0, t->nbytes, out, err);
    const char *name = t->info->name;
    char sn[300];
    snprintf(sn, sizeof sn, "%s_scale_inv", name);
    const mpk_ckpt_tensor *ts = mpk_ckpt_find(c, sn);
    int nd = t->info->ndim;
    int64_t E = nd == 3 ? t->info->shape[0] : 1, R = t->info->shape[nd - 2], C = t->info->shape[nd - 1], b = 128;
    if (!ts || !mpk_fp8_grid_matches(t->info, ts->info, (int)b))
        MPK_FAIL(err, MPK_E_QUANT, c->dir, "'%s' is FP8: it needs '%s' F32 [%s%lld, %lld] (128x128 blocks)", name, sn,
                 nd == 3 ? "E, " : "", (long long)((R + b - 1) / b), (long long)((C + b - 1) / b));
    uint8_t *w = mpk_alloc((size_t)(R * C));
    float *sc = mpk_alloc(ts->nbytes / (uint64_t)E + 1);
    mpk_status s = w && sc ? MPK_OK : mpk_error_set(err, MPK_E_NOMEM, 0, c->dir, "out of memory for '%s'", name);
    uint64_t grid = ts->nbytes / (uint64_t)E;
    for (int64_t e = 0; e < E && s == MPK_OK; e++) {
        if ((s = mpk_ckpt_read(c, t, (uint64_t)(e * R * C), (uint64_t)(R * C), w, err)) == MPK_OK &&
            (s = mpk_ckpt_read(c, ts, (uint64_t)e * grid, grid, sc, err)) == MPK_OK)
            mpk_dequant_fp8_rows(t->info->dtype, w, sc, C, (int)b, 0, R, MPK_DTYPE_BF16, out + e * R * C);
    }
    free(w);
    free(sc);
    return s;
}

/* Reads layer L's packed experts (gate_up_proj [E, 2I, H], down_proj [E, H, I]) as BF16: BF16 as
 * they are, FP8 block-scaled ones dequantized. */
static mpk_status load_layer(const char *path, int layer, mpk_moe *p, uint16_t **gu, uint16_t **dn, mpk_error *err)
{
    mpk_ckpt *c;
    MPK_TRY(mpk_ckpt_open(path, &c, err));
    char ng[256], nd[256];
    const mpk_ckpt_tensor *tg = NULL, *td = NULL;
    const char *prefixes[] = {"model.layers", "model.language_model.layers"};
    for (int i = 0; i < 2 && !tg; i++) {
        snprintf(ng, sizeof ng, "%s.%d.mlp.experts.gate_up_proj", prefixes[i], layer);
        snprintf(nd, sizeof nd, "%s.%d.mlp.experts.down_proj", prefixes[i], layer);
        tg = mpk_ckpt_find(c, ng);
        td = mpk_ckpt_find(c, nd);
    }
    mpk_status s = MPK_OK;
    if (!tg || !td) {
        s = mpk_error_set(err, MPK_E_NOT_FOUND, 0, path, "no packed experts for layer %d (want '%s' and '%s'; "
                          "pack the checkpoint first)", layer, ng, nd);
    } else if (tg->info->dtype != td->info->dtype ||
               (tg->info->dtype != MPK_DTYPE_BF16 && tg->info->dtype != MPK_DTYPE_F8_E4M3) || tg->info->ndim != 3 ||
               td->info->ndim != 3 || td->info->shape[0] != tg->info->shape[0] ||
               td->info->shape[1] != tg->info->shape[2] || 2 * td->info->shape[2] != tg->info->shape[1]) {
        s = mpk_error_set(err, MPK_E_SHAPE, 0, path,
                          "'%s' and '%s' must be BF16 (or FP8 E4M3 with block scales) [E, 2I, H] and [E, H, I]", ng, nd);
    } else {
        p->E = (int)tg->info->shape[0];
        p->H = (int)tg->info->shape[2];
        p->I = (int)td->info->shape[2];
        uint64_t n_gu = (uint64_t)p->E * 2 * p->I * p->H, n_dn = (uint64_t)p->E * p->H * p->I; /* elements */
        *gu = mpk_alloc(n_gu * 2);
        *dn = mpk_alloc(n_dn * 2);
        if (!*gu || !*dn)
            s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory for layer %d's experts", layer);
        else if ((s = read_bf16(c, tg, *gu, err)) == MPK_OK)
            s = read_bf16(c, td, *dn, err);
    }
    mpk_ckpt_close(c);
    return s;
}

/* The per-expert tensor of layer L, expert e, projection proj (names of both families:
 * gate_proj/up_proj/down_proj and Mixtral's w1/w3/w2), found by name, not through a preset,
 * so that --reference checks the preset's order (gate first) and expert numbering. */
static const mpk_ckpt_tensor *find_expert(const mpk_ckpt *c, int layer, int e, int proj)
{
    static const char *const names[3][2] = {{"gate_proj", "w1"}, {"up_proj", "w3"}, {"down_proj", "w2"}};
    char want_l[64], want_e[64], want_p[2][64];
    snprintf(want_l, sizeof want_l, "layers.%d.", layer);
    snprintf(want_e, sizeof want_e, ".experts.%d.", e);
    for (int i = 0; i < 2; i++)
        snprintf(want_p[i], sizeof want_p[i], ".%s.weight", names[proj][i]);
    for (size_t i = 0; i < c->n_tensors; i++) {
        const char *n = c->tensors[i].info->name;
        size_t len = strlen(n);
        if (!strstr(n, want_l) || !strstr(n, want_e))
            continue;
        for (int j = 0; j < 2; j++) {
            size_t pl = strlen(want_p[j]);
            if (len > pl && strcmp(n + len - pl, want_p[j]) == 0)
                return &c->tensors[i];
        }
    }
    return NULL;
}

/* Builds [E, 2I, H] / [E, H, I] reference weights from a per-expert checkpoint. */
static mpk_status load_reference(const char *path, int layer, int E, int H, int I, uint16_t **gu, uint16_t **dn,
                                 mpk_error *err)
{
    mpk_ckpt *c;
    MPK_TRY(mpk_ckpt_open(path, &c, err));
    mpk_status s = MPK_OK;
    *gu = mpk_alloc(sizeof(uint16_t) * (size_t)E * 2 * I * H);
    *dn = mpk_alloc(sizeof(uint16_t) * (size_t)E * H * I);
    if (!*gu || !*dn)
        s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory for the reference weights");
    for (int e = 0; e < E && s == MPK_OK; e++)
        for (int proj = 0; proj < 3 && s == MPK_OK; proj++) {
            const mpk_ckpt_tensor *t = find_expert(c, layer, e, proj);
            int64_t rows = proj == 2 ? H : I, cols = proj == 2 ? I : H;
            if (!t) {
                s = mpk_error_set(err, MPK_E_NOT_FOUND, 0, path,
                                  "no per-expert %s weight for layer %d, expert %d (a reference checkpoint holds "
                                  "'...layers.%d...experts.%d.{gate_proj,up_proj,down_proj}.weight' or w1/w3/w2)",
                                  proj == 0 ? "gate" : proj == 1 ? "up" : "down", layer, e, layer, e);
            } else if ((t->info->dtype != MPK_DTYPE_BF16 && t->info->dtype != MPK_DTYPE_F8_E4M3) ||
                       t->info->ndim != 2 || t->info->shape[0] != rows || t->info->shape[1] != cols) {
                s = mpk_error_set(err, MPK_E_SHAPE, 0, path,
                                  "'%s' must be BF16 (or FP8 E4M3 with block scales) [%lld, %lld] to match the packed "
                                  "layer", t->info->name, (long long)rows, (long long)cols);
            } else {
                uint16_t *dst = proj == 2 ? *dn + (size_t)e * H * I
                                          : *gu + ((size_t)e * 2 * I + (proj == 1 ? (size_t)I : 0)) * H;
                s = read_bf16(c, t, dst, err);
            }
        }
    mpk_ckpt_close(c);
    return s;
}

/* Inputs of one case for a peer (gpu/peer_torch.py): x BF16 [T, H], top_k_index I32 [T, k],
 * top_k_weights F32 [T, k]. */
static mpk_status save_inputs(const char *dir, const mpk_moe *p, mpk_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/inputs-T%d.safetensors", dir, p->T);
    uint16_t *xb = malloc(sizeof(uint16_t) * (size_t)p->T * p->H);
    if (!xb)
        MPK_FAIL(err, MPK_E_NOMEM, path, "out of memory");
    for (size_t i = 0; i < (size_t)p->T * p->H; i++)
        xb[i] = mpk_f32_to_bf16(p->x[i]);
    mpk_tensor_info ti[3] = {
        {.name = "x", .dtype = MPK_DTYPE_BF16, .ndim = 2, .shape = {p->T, p->H}},
        {.name = "top_k_index", .dtype = MPK_DTYPE_I32, .ndim = 2, .shape = {p->T, p->k}},
        {.name = "top_k_weights", .dtype = MPK_DTYPE_F32, .ndim = 2, .shape = {p->T, p->k}},
    };
    const void *data[3] = {xb, p->idx, p->w};
    unlink(path);
    mpk_status s = mpk_st_write_file(path, ti, data, 3, NULL, 0, err);
    free(xb);
    return s;
}

/* The SVG plot: tokens (log2 axis) vs median time (log10 axis), one line per GPU backend. */
static mpk_status write_plot(const char *path, const cJSON *runs, const char *title, mpk_error *err)
{
    static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
    double tmin = INFINITY, tmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    const cJSON *r;
    cJSON_ArrayForEach(r, runs)
    {
        const cJSON *ms = cJSON_GetObjectItem(r, "median_ms");
        if (!cJSON_IsNumber(ms) || ms->valuedouble <= 0)
            continue;
        double T = cJSON_GetObjectItem(r, "tokens")->valuedouble;
        tmin = fmin(tmin, T), tmax = fmax(tmax, T);
        ymin = fmin(ymin, ms->valuedouble), ymax = fmax(ymax, ms->valuedouble);
    }
    if (!isfinite(tmin))
        MPK_FAIL(err, MPK_E_USAGE, path, "nothing was timed on a GPU: no plot written");
    double lx0 = log2(tmin), lx1 = fmax(log2(tmax), lx0 + 1), ly0 = floor(log10(ymin)), ly1 = ceil(log10(ymax));
    if (ly1 <= ly0)
        ly1 = ly0 + 1;
    const double W = 720, Hh = 440, L = 70, R = 150, Tp = 40, B = 50;
#define PX(t) (L + (log2(t) - lx0) / (lx1 - lx0) * (W - L - R))
#define PY(ms) (Hh - B - (log10(ms) - ly0) / (ly1 - ly0) * (Hh - Tp - B))
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return mpk_error_set(err, MPK_E_IO, errno, tmp, "cannot create: %s", strerror(errno));
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, Hh);
    fprintf(f, "<text x=\"%g\" y=\"22\" font-size=\"14\">%s</text>\n", L, title);
    for (double d = ly0; d <= ly1 + 1e-9; d++) {
        fprintf(f, "<line x1=\"%g\" x2=\"%g\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>", L, W - R, PY(pow(10, d)),
                PY(pow(10, d)));
        fprintf(f, "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%g ms</text>\n", L - 6, PY(pow(10, d)) + 4, pow(10, d));
    }
    for (double e = ceil(lx0); e <= lx1 + 1e-9; e += 2)
        fprintf(f, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%g</text>\n", PX(pow(2, e)), Hh - B + 18,
                pow(2, e));
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">tokens (log scale)</text>\n", (L + W - R) / 2,
            Hh - 12);
    fprintf(f, "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"black\"/>\n", L, Tp,
            W - L - R, Hh - Tp - B);
    int series = 0;
    for (int b = 0; b < MPK_MOE_BACKEND_COUNT; b++) {
        const char *color = colors[series % 6];
        int pts = 0;
        cJSON_ArrayForEach(r, runs)
        {
            const cJSON *ms = cJSON_GetObjectItem(r, "median_ms");
            if (!cJSON_IsNumber(ms) || strcmp(cJSON_GetObjectItem(r, "backend")->valuestring, mpk_moe_backend_names[b]))
                continue;
            double T = cJSON_GetObjectItem(r, "tokens")->valuedouble;
            fprintf(f, "%s%.1f,%.1f", pts ? " " : "<polyline fill=\"none\" stroke-width=\"2\" points=\"", PX(T),
                    PY(ms->valuedouble));
            pts++;
        }
        if (!pts)
            continue;
        fprintf(f, "\" stroke=\"%s\"/>\n", color);
        cJSON_ArrayForEach(r, runs)
        {
            const cJSON *ms = cJSON_GetObjectItem(r, "median_ms");
            if (cJSON_IsNumber(ms) && !strcmp(cJSON_GetObjectItem(r, "backend")->valuestring, mpk_moe_backend_names[b]))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>", PX(cJSON_GetObjectItem(r, "tokens")->valuedouble),
                        PY(ms->valuedouble), color);
        }
        fprintf(f, "\n<line x1=\"%g\" x2=\"%g\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"/>", W - R + 12,
                W - R + 32, 60 + 18 * series, 60 + 18 * series, color);
        fprintf(f, "<text x=\"%g\" y=\"%d\">%s</text>\n", W - R + 38, 64 + 18 * series, mpk_moe_backend_names[b]);
        series++;
    }
#undef PX
#undef PY
    fputs("</svg>\n", f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return mpk_error_set(err, MPK_E_IO, e, path, "cannot write: %s", strerror(e));
    }
    return MPK_OK;
}

/* Peer times (gpu/peer_torch.py --json): {"cases": [{"tokens": T, "name": ..., "median_ms": ...}]} */
static cJSON *load_peer(const char *path)
{
    char *text;
    size_t len;
    mpk_error err = {0};
    if (mpk_read_file(path, &text, &len, &err) != MPK_OK)
        return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    return j;
}

/* Rows the reference is computed for: all when T <= n, else n evenly spaced (first and last). */
static int pick_rows(int T, int n, int *rows)
{
    if (T <= n) {
        for (int i = 0; i < T; i++)
            rows[i] = i;
        return T;
    }
    for (int i = 0; i < n; i++)
        rows[i] = (int)((int64_t)i * (T - 1) / (n - 1));
    return n;
}

static void check_rows(const float *ref, const float *got, const int *rows, int nr, int H, double atol, double rtol,
                       mpk_moe_check *c)
{
    float *sel = malloc(sizeof(float) * (size_t)nr * H);
    if (!sel) {
        memset(c, 0, sizeof *c);
        c->n_bad = 1;
        c->rel_err = INFINITY;
        return;
    }
    for (int i = 0; i < nr; i++)
        memcpy(sel + (size_t)i * H, got + (size_t)rows[i] * H, sizeof(float) * (size_t)H);
    mpk_moe_compare(ref, sel, (size_t)nr * H, atol, rtol, c);
    free(sel);
}


/* ---------------------------------------------------------------- the check */

static const int default_tokens[] = {1, 4, 16, 64, 256, 1024, 4096};

void mpk_gpucheck_req_init(mpk_gpucheck_req *r)
{
    memset(r, 0, sizeof *r);
    r->topk = 2;
    r->seed = 1;
    r->runs = 20;
    r->check_rows = 32;
    r->tokens = default_tokens;
    r->n_tokens = sizeof default_tokens / sizeof default_tokens[0];
    r->backends = ((1u << MPK_MOE_BACKEND_COUNT) - 1) & ~(1u << MPK_MOE_FP8); /* fp8: asked for by name */
}

const char *mpk_gpu_backend_name(size_t i)
{
    return i < MPK_MOE_BACKEND_COUNT ? mpk_moe_backend_names[i] : NULL;
}

/* One run of mpk_gpucheck: the weights, the report being written, the timings. */
typedef struct gc_run {
    const mpk_gpucheck_req *o;
    mpk_moe w;                   /* the layer's weights */
    uint16_t *ref_gu, *ref_dn;   /* --reference weights, or NULL */
    mpk_gpu *dev;
    int gpu;
    char why[256];
    cJSON *peer, *runs;
    FILE *text;
    size_t n_bad;                /* backends that disagree with the reference */
    double t_batched[64], t_grouped[64];
    int *rows;
} gc_run;

/* A line of the report's text, also told to the caller's line callback as it happens. */
__attribute__((format(printf, 2, 3))) static void say(gc_run *g, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (g->text)
        fputs(line, g->text);
    if (g->o->line)
        g->o->line(g->o->ctx, line);
}

static mpk_status load_weights(gc_run *g, mpk_error *err)
{
    const mpk_gpucheck_req *o = g->o;
    if (!o->path)
        return mpk_moe_random(1, o->H, o->I, o->E, 1, (uint64_t)o->seed + 7777, true, &g->w, err);
    uint16_t *gu = NULL, *dn = NULL;
    mpk_status s = load_layer(o->path, o->layer, &g->w, &gu, &dn, err);
    g->w.w_gu = gu, g->w.w_d = dn;
    if (s == MPK_OK && o->reference)
        s = load_reference(o->reference, o->layer, g->w.E, g->w.H, g->w.I, &g->ref_gu, &g->ref_dn, err);
    return s;
}

/* Peer ratios of a GPU timing: JSON keys vs_NAME and " 1.23x NAME" appended to extra. */
static void peer_ratios(gc_run *g, int T, double ms, cJSON *jr, char *extra, size_t cap)
{
    const cJSON *pc;
    size_t n = strlen(extra);
    cJSON_ArrayForEach(pc, cJSON_GetObjectItem(g->peer, "cases"))
    {
        const cJSON *pt = cJSON_GetObjectItem(pc, "tokens"), *pm = cJSON_GetObjectItem(pc, "median_ms"),
                    *pn = cJSON_GetObjectItem(pc, "name");
        if (!cJSON_IsNumber(pt) || pt->valueint != T || !cJSON_IsNumber(pm) || !cJSON_IsString(pn))
            continue;
        char key[96];
        snprintf(key, sizeof key, "vs_%s", pn->valuestring);
        cJSON_AddNumberToObject(jr, key, ms / pm->valuedouble);
        if (n < cap)
            n += (size_t)snprintf(extra + n, cap - n, "  %.2fx %s", ms / pm->valuedouble, pn->valuestring);
    }
}

/* Backend b on one device for problem p: checked against ref (rows), timed on the GPU. */
static void run_backend(gc_run *g, int ti, mpk_moe *p, int b, int on_gpu, const float *ref, double ref_rms, int nr,
                        float *got)
{
    const mpk_gpucheck_req *o = g->o;
    int T = p->T, H = p->H;
    mpk_error err = {0};
    mpk_gpu_timing tm = {0};
    mpk_status s = on_gpu ? mpk_gpu_run(g->dev, p, (mpk_moe_backend)b, o->runs, got, &tm, &err)
                          : mpk_moe_cpu(p, (mpk_moe_backend)b, got, &err);
    if (s == MPK_E_OP && on_gpu && !strstr(err.msg, "never written")) {
        if (ti == 0)
            say(g, "cuda %-14s skipped: %s\n", mpk_moe_backend_names[b], err.msg);
        return;
    }
    mpk_moe_check c = {0};
    bool ok = s == MPK_OK;
    if (ok) {
        /* CPU: fp32 everywhere; GPU: BF16 inputs and silu*up (as a model runs), fp32
         * accumulation: a few BF16 ulps of relative error are expected, not more */
        if (b == MPK_MOE_FP8) /* weights and inputs quantized to E4M3: ~0.06 from the BF16 answer
                                 (test_gpu pins the algorithm itself tightly) */
            check_rows(ref, got, g->rows, nr, H, 0.5 * ref_rms, 0.5, &c);
        else if (on_gpu)
            check_rows(ref, got, g->rows, nr, H, 0.05 * ref_rms, 5e-2, &c);
        else
            check_rows(ref, got, g->rows, nr, H, 1e-4, 1e-2, &c);
        ok = c.n_bad == 0 && c.rel_err < (b == MPK_MOE_FP8 ? 0.1 : on_gpu ? 1e-2 : 1e-3);
    }
    cJSON *jr = cJSON_CreateObject();
    cJSON_AddStringToObject(jr, "device", on_gpu ? "cuda" : "cpu");
    cJSON_AddStringToObject(jr, "backend", mpk_moe_backend_names[b]);
    cJSON_AddNumberToObject(jr, "tokens", T);
    cJSON_AddNumberToObject(jr, "rows_checked", nr);
    if (s != MPK_OK) {
        cJSON_AddStringToObject(jr, "error", err.msg);
    } else {
        cJSON_AddNumberToObject(jr, "rel_err", c.rel_err);
        cJSON_AddNumberToObject(jr, "max_abs", c.max_abs);
        cJSON_AddNumberToObject(jr, "bad", (double)c.n_bad);
    }
    cJSON_AddBoolToObject(jr, "ok", ok);
    char extra[256] = "";
    if (on_gpu && s == MPK_OK) {
        cJSON_AddNumberToObject(jr, "median_ms", tm.median_ms);
        cJSON_AddNumberToObject(jr, "tflops", tm.tflops);
        cJSON_AddNumberToObject(jr, "weight_gbs", tm.weight_gbs);
        snprintf(extra, sizeof extra, "  %9.4f ms %7.1f TFLOP/s %7.0f GB/s", tm.median_ms, tm.tflops, tm.weight_gbs);
        if (b == MPK_MOE_BATCHED)
            g->t_batched[ti] = tm.median_ms;
        if (b == MPK_MOE_GROUPED)
            g->t_grouped[ti] = tm.median_ms;
        peer_ratios(g, T, tm.median_ms, jr, extra, sizeof extra);
    }
    cJSON_AddItemToArray(g->runs, jr);
    say(g, "%-4s %-14s T=%-6d %s rel_err %.3g max_abs %.3g%s\n", on_gpu ? "cuda" : "cpu", mpk_moe_backend_names[b],
        T, ok ? "ok  " : "FAIL", c.rel_err, c.max_abs, s == MPK_OK ? extra : "");
    if (!ok && s != MPK_OK)
        say(g, "  %s\n", err.msg);
    if (!ok)
        g->n_bad++;
}

/* Token count Ts[ti]: a random problem, the reference on the checked rows, every backend. */
static mpk_status run_case(gc_run *g, int ti, mpk_error *err)
{
    const mpk_gpucheck_req *o = g->o;
    int T = o->tokens[ti], H = g->w.H, I = g->w.I, k = o->topk;
    g->t_batched[ti] = g->t_grouped[ti] = NAN;
    mpk_moe p;
    MPK_TRY(mpk_moe_random(T, H, I, g->w.E, k, (uint64_t)o->seed, false, &p, err));
    mpk_status s = o->save_inputs ? save_inputs(o->save_inputs, &p, err) : MPK_OK;
    int nr = pick_rows(T, o->check_rows, g->rows);
    float *ref = malloc(sizeof(float) * (size_t)nr * H), *got = malloc(sizeof(float) * (size_t)T * H);
    if (s == MPK_OK && (!ref || !got))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, "gpucheck", "out of memory for T=%d", T);
    if (s == MPK_OK) {
        mpk_moe rp = p; /* the reference reads the --reference weights when given */
        rp.w_gu = g->ref_gu ? g->ref_gu : g->w.w_gu;
        rp.w_d = g->ref_dn ? g->ref_dn : g->w.w_d;
        mpk_moe_reference_rows(&rp, g->rows, nr, (int)sysconf(_SC_NPROCESSORS_ONLN), ref);
        double ref_rms = 0;
        for (size_t i = 0; i < (size_t)nr * H; i++)
            ref_rms += (double)ref[i] * ref[i];
        ref_rms = sqrt(ref_rms / ((double)nr * H));
        p.w_gu = g->w.w_gu, p.w_d = g->w.w_d;
        bool run_cpu = o->cpu || 2.0 * T * k * 3.0 * H * I <= 4e9;
        for (int b = 0; b < MPK_MOE_BACKEND_COUNT; b++) {
            if (!(o->backends & (1u << b)))
                continue;
            for (int on_gpu = 0; on_gpu < 1 + g->gpu; on_gpu++) {
                if (!on_gpu && (!run_cpu || b == MPK_MOE_GROUPED_CUBLAS || b == MPK_MOE_GROUPED_WGMMA ||
                                  b == MPK_MOE_GROUPED_TMA))
                    continue;
                if (on_gpu && b == MPK_MOE_BATCHED && T * k > 4096) {
                    say(g, "cuda %-14s T=%-6d skipped: one GEMV per (token, slot) pair is a decode backend "
                           "(over 4096 pairs)\n", mpk_moe_backend_names[b], T);
                    continue;
                }
                run_backend(g, ti, &p, b, on_gpu, ref, ref_rms, nr, got);
            }
        }
    }
    free(ref);
    free(got);
    mpk_moe_free(&p, false);
    return s;
}

static mpk_status check_req(const mpk_gpucheck_req *o, mpk_error *err)
{
    if (!o->path == !(o->E > 0 && o->H > 0 && o->I > 0))
        MPK_FAIL(err, MPK_E_USAGE, "gpucheck", "give a packed checkpoint path or a synthetic E, H, I (all >= 1)");
    if (o->reference && !o->path)
        MPK_FAIL(err, MPK_E_USAGE, "gpucheck", "a reference needs a packed checkpoint path (not a synthetic layer)");
    if (o->runs < 1 || o->check_rows < 2)
        MPK_FAIL(err, MPK_E_USAGE, "gpucheck", "runs must be >= 1 and check rows >= 2");
    if (!o->n_tokens || o->n_tokens > 64)
        MPK_FAIL(err, MPK_E_USAGE, "gpucheck", "1 to 64 token counts");
    for (size_t i = 0; i < o->n_tokens; i++)
        if (o->tokens[i] < 1)
            MPK_FAIL(err, MPK_E_USAGE, "gpucheck", "token counts must be >= 1");
    if (!o->backends || o->backends >= (1u << MPK_MOE_BACKEND_COUNT))
        MPK_FAIL(err, MPK_E_USAGE, "gpucheck", "backends: a non-empty set of the %d backends", MPK_MOE_BACKEND_COUNT);
    return MPK_OK;
}

/* The summary: crossover, JSON, plot. */
static mpk_status finish(gc_run *g, mpk_report *rep, mpk_error *err)
{
    const mpk_gpucheck_req *o = g->o;
    /* crossover: the first token count from which grouped stays faster than batched */
    int cross = -1;
    for (int ti = (int)o->n_tokens - 1; ti >= 0; ti--) {
        if (isnan(g->t_grouped[ti]) || isnan(g->t_batched[ti]))
            continue;
        if (g->t_grouped[ti] < g->t_batched[ti])
            cross = o->tokens[ti];
        else
            break;
    }
    if (g->gpu && cross > 0)
        say(g, "grouped beats batched from T=%d\n", cross);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "source", o->path ? o->path : "synthetic");
    cJSON_AddNumberToObject(root, "E", g->w.E);
    cJSON_AddNumberToObject(root, "H", g->w.H);
    cJSON_AddNumberToObject(root, "I", g->w.I);
    cJSON_AddNumberToObject(root, "topk", o->topk);
    cJSON_AddBoolToObject(root, "gpu", g->gpu);
    if (!g->gpu)
        cJSON_AddStringToObject(root, "gpu_missing", g->why);
    if (cross > 0)
        cJSON_AddNumberToObject(root, "crossover_tokens", cross);
    cJSON_AddItemToObject(root, "runs", g->runs);
    mpk_status s = MPK_OK;
    if (o->plot && g->gpu) {
        char title[256];
        snprintf(title, sizeof title, "moepack gpucheck: E=%d H=%d I=%d top-%d", g->w.E, g->w.H, g->w.I, o->topk);
        s = write_plot(o->plot, g->runs, title, err);
    }
    g->runs = NULL; /* root owns it */
    if (s == MPK_OK)
        return mpk_report_set_json(rep, "moepack.gpucheck/1", root, err);
    cJSON_Delete(root);
    return s;
}

mpk_status mpk_gpucheck(const mpk_gpucheck_req *o, mpk_report **out, mpk_error *err)
{
    *out = NULL;
    MPK_TRY(check_req(o, err));
    gc_run g = {.o = o};
    char *buf = NULL;
    size_t len;
    mpk_report *rep = mpk_report_new();
    mpk_status s = rep ? load_weights(&g, err) : mpk_error_set(err, MPK_E_NOMEM, 0, "gpucheck", "out of memory");
    if (s == MPK_OK && (o->topk < 1 || o->topk > g.w.E))
        s = mpk_error_set(err, MPK_E_USAGE, 0, "gpucheck", "top-k must be in 1..%d", g.w.E);
    if (s == MPK_OK) {
        g.peer = o->peer ? load_peer(o->peer) : NULL;
        g.gpu = mpk_gpu_available(g.why, sizeof g.why);
        mpk_error ge = {0};
        if (g.gpu && mpk_gpu_open(&g.w, &g.dev, &ge) != MPK_OK) {
            snprintf(g.why, sizeof g.why, "%.200s", ge.msg);
            g.gpu = 0;
        }
        g.runs = cJSON_CreateArray();
        g.rows = malloc(sizeof(int) * (size_t)o->check_rows);
        g.text = mpk_report_begin_text(rep, &buf, &len);
        if (!g.runs || !g.rows || !g.text)
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "gpucheck", "out of memory");
    }
    if (s == MPK_OK) {
        if (o->peer && !g.peer)
            say(&g, "%s: not readable as peer JSON; no peer ratios\n", o->peer);
        say(&g, "%s: E=%d H=%d I=%d topk=%d%s\n", o->path ? o->path : "synthetic", g.w.E, g.w.H, g.w.I, o->topk,
            o->reference ? " (reference from the reference checkpoint)" : "");
        for (size_t ti = 0; ti < o->n_tokens && s == MPK_OK; ti++)
            s = run_case(&g, (int)ti, err);
        if (s == MPK_OK)
            s = finish(&g, rep, err);
    }
    if (g.text) {
        mpk_status ts = mpk_report_end_text(rep, g.text, &buf, err);
        s = s == MPK_OK ? ts : s;
    }
    if (rep) {
        rep->n_differ = g.n_bad;
        if (!g.gpu)
            snprintf(rep->skipped, sizeof rep->skipped, "%s", g.why);
    }
    cJSON_Delete(g.runs);
    cJSON_Delete(g.peer);
    free(g.rows);
    mpk_gpu_close(g.dev);
    mpk_moe_free(&g.w, true);
    free(g.ref_gu);
    free(g.ref_dn);
    if (s != MPK_OK) {
        mpk_report_free(rep);
        return s;
    }
    return mpk_report_give(rep, out);
}
