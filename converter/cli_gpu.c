/* cli_gpu.c — moepack gpucheck: packed experts through the CPU reference, the CPU backends and
 * (when built with CUDA and a device answers) the GPU backends; timings, crossover, SVG plot. */
#define _GNU_SOURCE
#include "cli.h"
#include "mpk_gpu.h"
#include "mpk_ops.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads layer L's packed experts (BF16 gate_up_proj [E, 2I, H], down_proj [E, H, I]). */
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
    } else if (tg->info->dtype != MPK_DTYPE_BF16 || td->info->dtype != MPK_DTYPE_BF16 || tg->info->ndim != 3 ||
               td->info->ndim != 3 || td->info->shape[0] != tg->info->shape[0] ||
               td->info->shape[1] != tg->info->shape[2] || 2 * td->info->shape[2] != tg->info->shape[1]) {
        s = mpk_error_set(err, MPK_E_SHAPE, 0, path, "'%s' and '%s' must be BF16 [E, 2I, H] and [E, H, I]", ng, nd);
    } else {
        p->E = (int)tg->info->shape[0];
        p->H = (int)tg->info->shape[2];
        p->I = (int)td->info->shape[2];
        *gu = mpk_alloc(tg->nbytes);
        *dn = mpk_alloc(td->nbytes);
        if (!*gu || !*dn)
            s = mpk_error_set(err, MPK_E_NOMEM, 0, path, "out of memory for layer %d's experts", layer);
        else if ((s = mpk_ckpt_read(c, tg, 0, tg->nbytes, *gu, err)) == MPK_OK)
            s = mpk_ckpt_read(c, td, 0, td->nbytes, *dn, err);
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
                                  "no per-expert %s weight for layer %d, expert %d (a --reference checkpoint holds "
                                  "'...layers.%d...experts.%d.{gate_proj,up_proj,down_proj}.weight' or w1/w3/w2)",
                                  proj == 0 ? "gate" : proj == 1 ? "up" : "down", layer, e, layer, e);
            } else if (t->info->dtype != MPK_DTYPE_BF16 || t->info->ndim != 2 || t->info->shape[0] != rows ||
                       t->info->shape[1] != cols) {
                s = mpk_error_set(err, MPK_E_SHAPE, 0, path, "'%s' must be BF16 [%lld, %lld] to match the packed layer",
                                  t->info->name, (long long)rows, (long long)cols);
            } else {
                uint16_t *dst = proj == 2 ? *dn + (size_t)e * H * I
                                          : *gu + ((size_t)e * 2 * I + (proj == 1 ? (size_t)I : 0)) * H;
                s = mpk_ckpt_read(c, t, 0, t->nbytes, dst, err);
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
static int write_plot(const char *path, const cJSON *runs, const char *title)
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
    if (!isfinite(tmin)) {
        fprintf(stderr, "moepack: gpucheck: nothing timed, no plot written\n");
        return MPK_EXIT_FAIL;
    }
    double lx0 = log2(tmin), lx1 = fmax(log2(tmax), lx0 + 1), ly0 = floor(log10(ymin)), ly1 = ceil(log10(ymax));
    if (ly1 <= ly0)
        ly1 = ly0 + 1;
    const double W = 720, Hh = 440, L = 70, R = 150, Tp = 40, B = 50;
#define PX(t) (L + (log2(t) - lx0) / (lx1 - lx0) * (W - L - R))
#define PY(ms) (Hh - B - (log10(ms) - ly0) / (ly1 - ly0) * (Hh - Tp - B))
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "moepack: gpucheck: %s: %s\n", tmp, strerror(errno));
        return MPK_EXIT_FAIL;
    }
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
        fprintf(stderr, "moepack: gpucheck: cannot write %s: %s\n", path, strerror(errno));
        unlink(tmp);
        return MPK_EXIT_FAIL;
    }
    return MPK_EXIT_OK;
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

typedef struct gc_opts {
    int E, H, I, layer, k, seed, runs, check_rows;
    const char *tokens, *backends, *plot, *reference, *peer, *save_inputs;
    bool json, cpu;
} gc_opts;

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

int mpk_cmd_gpucheck(int argc, char **argv)
{
    enum { O_SYN = 1000, O_LAYER, O_TOKENS, O_TOPK, O_BACKENDS, O_JSON, O_SEED, O_PLOT, O_REF, O_RUNS, O_CHECK,
           O_PEER, O_SAVE, O_CPU };
    static const struct option opts[] = {
        {"synthetic", required_argument, NULL, O_SYN}, {"layer", required_argument, NULL, O_LAYER},
        {"tokens", required_argument, NULL, O_TOKENS}, {"topk", required_argument, NULL, O_TOPK},
        {"backends", required_argument, NULL, O_BACKENDS}, {"json", no_argument, NULL, O_JSON},
        {"seed", required_argument, NULL, O_SEED}, {"plot", required_argument, NULL, O_PLOT},
        {"reference", required_argument, NULL, O_REF}, {"runs", required_argument, NULL, O_RUNS},
        {"check-rows", required_argument, NULL, O_CHECK}, {"peer", required_argument, NULL, O_PEER},
        {"save-inputs", required_argument, NULL, O_SAVE}, {"cpu", no_argument, NULL, O_CPU}, {0}};
    gc_opts o = {.k = 2, .seed = 1, .runs = 20, .check_rows = 32, .tokens = "1,4,16,64,256,1024,4096",
                 .backends = "eager,batched,grouped,grouped_cublas"};
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case O_SYN:
            if (sscanf(optarg, "%d,%d,%d", &o.E, &o.H, &o.I) != 3 || o.E < 1 || o.H < 1 || o.I < 1)
                return mpk_cli_usage("gpucheck", "--synthetic takes E,H,I (e.g. 8,256,128)");
            break;
        case O_LAYER: o.layer = atoi(optarg); break;
        case O_TOKENS: o.tokens = optarg; break;
        case O_TOPK: o.k = atoi(optarg); break;
        case O_BACKENDS: o.backends = optarg; break;
        case O_JSON: o.json = true; break;
        case O_SEED: o.seed = atoi(optarg); break;
        case O_PLOT: o.plot = optarg; break;
        case O_REF: o.reference = optarg; break;
        case O_RUNS: o.runs = atoi(optarg); break;
        case O_CHECK: o.check_rows = atoi(optarg); break;
        case O_PEER: o.peer = optarg; break;
        case O_SAVE: o.save_inputs = optarg; break;
        case O_CPU: o.cpu = true; break;
        default: return mpk_cli_usage("gpucheck", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if ((argc - optind == 1) == (o.E > 0))
        return mpk_cli_usage("gpucheck", "give a packed checkpoint PATH or --synthetic E,H,I");
    if (o.reference && o.E > 0)
        return mpk_cli_usage("gpucheck", "--reference needs a packed checkpoint PATH (not --synthetic)");
    if (o.runs < 1 || o.check_rows < 2)
        return mpk_cli_usage("gpucheck", "--runs must be >= 1 and --check-rows >= 2");
    bool want[MPK_MOE_BACKEND_COUNT] = {0};
    char bl[256];
    snprintf(bl, sizeof bl, "%s", o.backends);
    for (char *tok = strtok(bl, ","); tok; tok = strtok(NULL, ",")) {
        int b = 0;
        while (b < MPK_MOE_BACKEND_COUNT && strcmp(mpk_moe_backend_names[b], tok))
            b++;
        if (b == MPK_MOE_BACKEND_COUNT)
            return mpk_cli_usage("gpucheck", "unknown backend '%s' (eager, batched, grouped, grouped_cublas)", tok);
        want[b] = true;
    }
    int Ts[64], nT = 0;
    char tl[512];
    snprintf(tl, sizeof tl, "%s", o.tokens);
    for (char *tok = strtok(tl, ","); tok; tok = strtok(NULL, ",")) {
        if (nT == 64 || (Ts[nT] = atoi(tok)) < 1)
            return mpk_cli_usage("gpucheck", "--tokens takes up to 64 positive counts (e.g. 1,16,256)");
        nT++;
    }
    mpk_error err = {0};
    mpk_moe w = {0}; /* the layer's weights */
    uint16_t *ref_gu = NULL, *ref_dn = NULL;
    const char *what;
    if (o.E == 0) {
        uint16_t *gu = NULL, *dn = NULL;
        what = argv[optind];
        if (load_layer(what, o.layer, &w, &gu, &dn, &err) != MPK_OK)
            return mpk_cli_fail("gpucheck", &err, NULL);
        w.w_gu = gu, w.w_d = dn;
        if (o.reference &&
            load_reference(o.reference, o.layer, w.E, w.H, w.I, &ref_gu, &ref_dn, &err) != MPK_OK) {
            free(gu), free(dn), free(ref_gu), free(ref_dn);
            return mpk_cli_fail("gpucheck", &err, "--reference takes the per-expert checkpoint the packed one came from");
        }
    } else {
        what = "synthetic";
        if (mpk_moe_random(1, o.H, o.I, o.E, 1, (uint64_t)o.seed + 7777, true, &w, &err) != MPK_OK)
            return mpk_cli_fail("gpucheck", &err, NULL);
    }
    int E = w.E, H = w.H, I = w.I, k = o.k;
    if (k < 1 || k > E) {
        mpk_moe_free(&w, true);
        free(ref_gu), free(ref_dn);
        return mpk_cli_usage("gpucheck", "--topk must be in 1..%d", E);
    }
    cJSON *peer = o.peer ? load_peer(o.peer) : NULL;
    if (o.peer && !peer)
        fprintf(stderr, "moepack: gpucheck: %s: not readable as peer JSON; no peer ratios\n", o.peer);
    char why[256];
    int gpu = mpk_gpu_available(why, sizeof why);
    mpk_gpu *dev = NULL;
    if (gpu && mpk_gpu_open(&w, &dev, &err) != MPK_OK) {
        snprintf(why, sizeof why, "%.200s", err.msg);
        gpu = 0;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int rc = MPK_EXIT_OK;
    cJSON *arr = cJSON_CreateArray();
    double t_batched[64], t_grouped[64];
    int *rows = malloc(sizeof(int) * (size_t)(o.check_rows > 0 ? o.check_rows : 1));
    if (!o.json)
        printf("%s: E=%d H=%d I=%d topk=%d%s\n", what, E, H, I, k, o.reference ? " (reference from --reference)" : "");
    for (int ti = 0; ti < nT && rc != MPK_EXIT_FAIL; ti++) {
        int T = Ts[ti];
        t_batched[ti] = t_grouped[ti] = NAN;
        mpk_moe p;
        if (mpk_moe_random(T, H, I, E, k, (uint64_t)o.seed, false, &p, &err) != MPK_OK) {
            rc = mpk_cli_fail("gpucheck", &err, NULL);
            break;
        }
        if (o.save_inputs && save_inputs(o.save_inputs, &p, &err) != MPK_OK) {
            rc = mpk_cli_fail("gpucheck", &err, NULL);
            mpk_moe_free(&p, false);
            break;
        }
        int nr = pick_rows(T, o.check_rows, rows);
        float *ref = malloc(sizeof(float) * (size_t)nr * H), *got = malloc(sizeof(float) * (size_t)T * H);
        if (!ref || !got) {
            fprintf(stderr, "moepack: gpucheck: out of memory for T=%d\n", T);
            free(ref), free(got), mpk_moe_free(&p, false);
            rc = MPK_EXIT_FAIL;
            break;
        }
        mpk_moe rp = p; /* the reference reads the --reference weights when given */
        rp.w_gu = ref_gu ? ref_gu : w.w_gu;
        rp.w_d = ref_dn ? ref_dn : w.w_d;
        mpk_moe_reference_rows(&rp, rows, nr, (int)ncpu, ref);
        double ref_rms = 0;
        for (size_t i = 0; i < (size_t)nr * H; i++)
            ref_rms += (double)ref[i] * ref[i];
        ref_rms = sqrt(ref_rms / ((double)nr * H));
        p.w_gu = w.w_gu, p.w_d = w.w_d;
        double flops = 2.0 * T * k * 3.0 * H * I;
        bool run_cpu = o.cpu || flops <= 4e9;
        for (int b = 0; b < MPK_MOE_BACKEND_COUNT && rc != MPK_EXIT_FAIL; b++) {
            if (!want[b])
                continue;
            for (int on_gpu = 0; on_gpu < 1 + gpu; on_gpu++) {
                if (!on_gpu && (!run_cpu || b == MPK_MOE_GROUPED_CUBLAS))
                    continue;
                if (on_gpu && b == MPK_MOE_BATCHED && T * k > 4096) {
                    if (!o.json)
                        printf("cuda %-14s T=%-6d skipped: one GEMV per (token, slot) pair is a decode backend "
                               "(over 4096 pairs)\n", mpk_moe_backend_names[b], T);
                    continue;
                }
                mpk_gpu_timing tm = {0};
                mpk_status s = on_gpu ? mpk_gpu_run(dev, &p, (mpk_moe_backend)b, o.runs, got, &tm, &err)
                                      : mpk_moe_cpu(&p, (mpk_moe_backend)b, got, &err);
                if (s == MPK_E_OP && on_gpu && !strstr(err.msg, "never written")) {
                    if (!o.json && ti == 0)
                        printf("cuda %-14s skipped: %s\n", mpk_moe_backend_names[b], err.msg);
                    continue;
                }
                mpk_moe_check c = {0};
                bool ok = s == MPK_OK;
                if (ok) {
                    /* CPU: fp32 everywhere; GPU: BF16 inputs and silu*up (as a model runs), fp32
                     * accumulation: a few BF16 ulps of relative error are expected, not more */
                    if (on_gpu)
                        check_rows(ref, got, rows, nr, H, 0.05 * ref_rms, 5e-2, &c);
                    else
                        check_rows(ref, got, rows, nr, H, 1e-4, 1e-2, &c);
                    ok = c.n_bad == 0 && c.rel_err < (on_gpu ? 1e-2 : 1e-3);
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
                    int n = snprintf(extra, sizeof extra, "  %9.4f ms %7.1f TFLOP/s %7.0f GB/s", tm.median_ms,
                                     tm.tflops, tm.weight_gbs);
                    if (b == MPK_MOE_BATCHED)
                        t_batched[ti] = tm.median_ms;
                    if (b == MPK_MOE_GROUPED)
                        t_grouped[ti] = tm.median_ms;
                    const cJSON *pc;
                    cJSON_ArrayForEach(pc, cJSON_GetObjectItem(peer, "cases"))
                    {
                        const cJSON *pt = cJSON_GetObjectItem(pc, "tokens"), *pm = cJSON_GetObjectItem(pc, "median_ms"),
                                    *pn = cJSON_GetObjectItem(pc, "name");
                        if (!cJSON_IsNumber(pt) || pt->valueint != T || !cJSON_IsNumber(pm) || !cJSON_IsString(pn))
                            continue;
                        char key[96];
                        snprintf(key, sizeof key, "vs_%s", pn->valuestring);
                        cJSON_AddNumberToObject(jr, key, tm.median_ms / pm->valuedouble);
                        if (n > 0 && (size_t)n < sizeof extra)
                            n += snprintf(extra + n, sizeof extra - (size_t)n, "  %.2fx %s", tm.median_ms / pm->valuedouble,
                                          pn->valuestring);
                    }
                }
                cJSON_AddItemToArray(arr, jr);
                if (!o.json)
                    printf("%-4s %-14s T=%-6d %s rel_err %.3g max_abs %.3g%s\n", on_gpu ? "cuda" : "cpu",
                           mpk_moe_backend_names[b], T, ok ? "ok  " : "FAIL", c.rel_err, c.max_abs,
                           s == MPK_OK ? extra : "");
                if (!ok && s != MPK_OK && !o.json)
                    fprintf(stderr, "moepack: gpucheck: %s\n", err.msg);
                if (!ok)
                    rc = MPK_EXIT_DIFF;
            }
        }
        free(ref);
        free(got);
        mpk_moe_free(&p, false);
    }
    /* crossover: the first token count from which grouped stays faster than batched */
    int cross = -1;
    for (int ti = nT - 1; ti >= 0; ti--) {
        if (isnan(t_grouped[ti]) || isnan(t_batched[ti]))
            continue;
        if (t_grouped[ti] < t_batched[ti])
            cross = Ts[ti];
        else
            break;
    }
    if (!o.json && gpu && cross > 0)
        printf("grouped beats batched from T=%d\n", cross);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "source", what);
    cJSON_AddNumberToObject(root, "E", E);
    cJSON_AddNumberToObject(root, "H", H);
    cJSON_AddNumberToObject(root, "I", I);
    cJSON_AddNumberToObject(root, "topk", k);
    cJSON_AddBoolToObject(root, "gpu", gpu);
    if (!gpu)
        cJSON_AddStringToObject(root, "gpu_missing", why);
    if (cross > 0)
        cJSON_AddNumberToObject(root, "crossover_tokens", cross);
    cJSON_AddItemToObject(root, "runs", arr);
    if (o.plot && gpu) {
        char title[256];
        snprintf(title, sizeof title, "moepack gpucheck: E=%d H=%d I=%d top-%d", E, H, I, k);
        if (write_plot(o.plot, arr, title) != MPK_EXIT_OK && rc == MPK_EXIT_OK)
            rc = MPK_EXIT_FAIL;
    }
    if (o.json) {
        char *s = cJSON_Print(root);
        puts(s);
        free(s);
    }
    cJSON_Delete(root);
    cJSON_Delete(peer);
    free(rows);
    mpk_gpu_close(dev);
    mpk_moe_free(&w, true);
    free(ref_gu);
    free(ref_dn);
    if (rc == MPK_EXIT_OK && !gpu) {
        fprintf(stderr, "moepack: gpucheck: CPU backends agree with the reference; GPU part skipped: %s\n", why);
        return MPK_EXIT_SKIP;
    }
    return rc;
}
