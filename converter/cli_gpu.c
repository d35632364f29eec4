/* cli_gpu.c — moepack gpucheck: packed experts through the CPU reference, the CPU backends and
 * (when built with CUDA and a device answers) the GPU backends. */
#define _GNU_SOURCE
#include "cli.h"
#include "mpk_gpu.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <unistd.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        if (!*gu || !*dn ||
            pread(c->shards[tg->shard].fd, *gu, tg->nbytes, (off_t)tg->file_offset) != (ssize_t)tg->nbytes ||
            pread(c->shards[td->shard].fd, *dn, td->nbytes, (off_t)td->file_offset) != (ssize_t)td->nbytes)
            s = mpk_error_set(err, MPK_E_IO, errno, path, "cannot read the layer's experts");
    }
    mpk_ckpt_close(c);
    return s;
}

int mpk_cmd_gpucheck(int argc, char **argv)
{
    enum { O_SYN = 1000, O_LAYER, O_TOKENS, O_TOPK, O_BACKENDS, O_JSON, O_SEED };
    static const struct option opts[] = {
        {"synthetic", required_argument, NULL, O_SYN}, {"layer", required_argument, NULL, O_LAYER},
        {"tokens", required_argument, NULL, O_TOKENS}, {"topk", required_argument, NULL, O_TOPK},
        {"backends", required_argument, NULL, O_BACKENDS}, {"json", no_argument, NULL, O_JSON},
        {"seed", required_argument, NULL, O_SEED}, {0}};
    int E = 0, H = 0, I = 0, layer = 0, k = 2, seed = 1;
    const char *tokens = "1,4,16,64", *backends = "eager,batched,grouped";
    bool json = false;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case O_SYN:
            if (sscanf(optarg, "%d,%d,%d", &E, &H, &I) != 3 || E < 1 || H < 1 || I < 1)
                return mpk_cli_usage("gpucheck", "--synthetic takes E,H,I (e.g. 8,256,128)");
            break;
        case O_LAYER: layer = atoi(optarg); break;
        case O_TOKENS: tokens = optarg; break;
        case O_TOPK: k = atoi(optarg); break;
        case O_BACKENDS: backends = optarg; break;
        case O_JSON: json = true; break;
        case O_SEED: seed = atoi(optarg); break;
        default: return mpk_cli_usage("gpucheck", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if ((argc - optind == 1) == (E > 0))
        return mpk_cli_usage("gpucheck", "give a packed checkpoint PATH or --synthetic E,H,I");
    bool want[MPK_MOE_BACKEND_COUNT] = {0};
    char bl[256];
    snprintf(bl, sizeof bl, "%s", backends);
    for (char *tok = strtok(bl, ","); tok; tok = strtok(NULL, ",")) {
        int b = 0;
        while (b < MPK_MOE_BACKEND_COUNT && strcmp(mpk_moe_backend_names[b], tok))
            b++;
        if (b == MPK_MOE_BACKEND_COUNT)
            return mpk_cli_usage("gpucheck", "unknown backend '%s' (eager, batched, grouped)", tok);
        want[b] = true;
    }
    mpk_error err = {0};
    uint16_t *gu = NULL, *dn = NULL;
    mpk_moe shape = {0};
    if (E == 0) {
        if (load_layer(argv[optind], layer, &shape, &gu, &dn, &err) != MPK_OK)
            return mpk_cli_fail("gpucheck", &err, NULL);
        E = shape.E, H = shape.H, I = shape.I;
    }
    if (k < 1 || k > E) {
        free(gu), free(dn);
        return mpk_cli_usage("gpucheck", "--topk must be in 1..%d", E);
    }
    char why[256];
    int gpu = mpk_gpu_available(why, sizeof why);
    int rc = MPK_EXIT_OK;
    cJSON *arr = cJSON_CreateArray();
    char tl[256];
    snprintf(tl, sizeof tl, "%s", tokens);
    for (char *tok = strtok(tl, ","); tok && rc == MPK_EXIT_OK; tok = strtok(NULL, ",")) {
        int T = atoi(tok);
        mpk_moe p;
        if (mpk_moe_random(T, H, I, E, k, (uint64_t)seed, gu == NULL, &p, &err) != MPK_OK) {
            rc = mpk_cli_fail("gpucheck", &err, NULL);
            break;
        }
        if (gu) {
            p.w_gu = gu;
            p.w_d = dn;
        }
        float *ref = malloc(sizeof(float) * (size_t)T * H), *got = malloc(sizeof(float) * (size_t)T * H);
        mpk_moe_reference(&p, ref);
        for (int b = 0; b < MPK_MOE_BACKEND_COUNT && rc == MPK_EXIT_OK; b++) {
            if (!want[b])
                continue;
            for (int dev = 0; dev < 1 + gpu; dev++) {
                mpk_gpu_timing tm = {0};
                mpk_status s = dev ? mpk_gpu_run(&p, (mpk_moe_backend)b, 20, got, &tm, &err)
                                   : mpk_moe_cpu(&p, (mpk_moe_backend)b, got, &err);
                if (s == MPK_E_OP && dev)
                    continue; /* no CUDA implementation of this backend */
                if (s != MPK_OK) {
                    rc = mpk_cli_fail("gpucheck", &err, NULL);
                    break;
                }
                mpk_moe_check c;
                /* fp32 accumulation vs the fp64 reference over BF16 weights */
                mpk_moe_compare(ref, got, (size_t)T * H, 1e-4, 1e-2, &c);
                bool ok = c.n_bad == 0 && c.rel_err < 1e-3;
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "device", dev ? "cuda" : "cpu");
                cJSON_AddStringToObject(o, "backend", mpk_moe_backend_names[b]);
                cJSON_AddNumberToObject(o, "tokens", T);
                cJSON_AddNumberToObject(o, "rel_err", c.rel_err);
                cJSON_AddNumberToObject(o, "max_abs", c.max_abs);
                cJSON_AddNumberToObject(o, "bad", (double)c.n_bad);
                cJSON_AddBoolToObject(o, "ok", ok);
                if (dev) {
                    cJSON_AddNumberToObject(o, "median_ms", tm.median_ms);
                    cJSON_AddNumberToObject(o, "tflops", tm.tflops);
                    cJSON_AddNumberToObject(o, "weight_gbs", tm.weight_gbs);
                }
                cJSON_AddItemToArray(arr, o);
                if (!json)
                    printf("%-4s %-8s T=%-6d rel_err %.3g max_abs %.3g %s%s\n", dev ? "cuda" : "cpu",
                           mpk_moe_backend_names[b], T, c.rel_err, c.max_abs, ok ? "ok" : "FAIL", "");
                if (!ok)
                    rc = MPK_EXIT_DIFF;
            }
        }
        free(ref);
        free(got);
        mpk_moe_free(&p, gu == NULL);
    }
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddNumberToObject(root, "E", E);
        cJSON_AddNumberToObject(root, "H", H);
        cJSON_AddNumberToObject(root, "I", I);
        cJSON_AddNumberToObject(root, "topk", k);
        cJSON_AddBoolToObject(root, "gpu", gpu);
        cJSON_AddItemToObject(root, "runs", arr);
        char *s = cJSON_Print(root);
        puts(s);
        free(s);
        cJSON_Delete(root);
    } else {
        cJSON_Delete(arr);
    }
    free(gu);
    free(dn);
    if (rc == MPK_EXIT_OK && !gpu) {
        fprintf(stderr, "moepack: gpucheck: CPU backends agree with the reference; GPU part skipped: %s\n", why);
        return MPK_EXIT_SKIP;
    }
    return rc;
}
