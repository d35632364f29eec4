/* normal_weights.c — DIR/model.safetensors of N tensors [R, C] drawn from N(0, sigma) (real
 * weights are close to it), as BF16 (--bf16) or as FP8 E4M3 scaled so that each tensor's largest
 * magnitude maps to 448 (--fp8), for the compression benchmark (bench/compress_bench.py).
 * With ROWSCALE r > 0 each row is multiplied by its own scale 2^u, u uniform in [-r, r] (real
 * weights' rows differ in scale: "near-normal weights with per-row scales", issue 51).
 *   normal_weights --bf16|--fp8 DIR [N R C sigma seed ROWSCALE] */
#define _GNU_SOURCE
#include "mpk_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static double gauss(uint64_t *s)
{
    double u1 = ((double)(mpk_rand(s) >> 11) + 1) / 9007199254740993.0, u2 = (double)(mpk_rand(s) >> 11) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "--bf16") && strcmp(argv[1], "--fp8"))) {
        fprintf(stderr, "usage: normal_weights --bf16|--fp8 DIR [N R C sigma seed ROWSCALE]\n");
        return 2;
    }
    bool fp8 = strcmp(argv[1], "--fp8") == 0;
    int n = argc > 3 ? atoi(argv[3]) : 8;
    int64_t R = argc > 4 ? atoll(argv[4]) : 2048, C = argc > 5 ? atoll(argv[5]) : 2048;
    double sigma = argc > 6 ? atof(argv[6]) : 0.02;
    uint64_t seed = argc > 7 ? strtoull(argv[7], NULL, 10) : 1;
    double rowscale = argc > 8 ? atof(argv[8]) : 0, row = 1;
    mkdir(argv[2], 0755);
    mpk_tensor_info *t = calloc((size_t)n, sizeof *t);
    void **data = calloc((size_t)n, sizeof *data);
    char (*names)[64] = calloc((size_t)n, 64);
    size_t numel = (size_t)(R * C);
    float *f = malloc(numel * sizeof *f);
    for (int i = 0; i < n; i++) {
        double amax = 0;
        for (size_t k = 0; k < numel; k++) {
            if (rowscale > 0 && k % (size_t)C == 0)
                row = exp2(rowscale * (2.0 * (double)(mpk_rand(&seed) >> 11) / 9007199254740992.0 - 1));
            f[k] = (float)(gauss(&seed) * sigma * row);
            amax = fmax(amax, fabs(f[k]));
        }
        snprintf(names[i], 64, "model.layers.%d.mlp.experts.gate_up_proj", i);
        t[i] = (mpk_tensor_info){.name = names[i], .dtype = fp8 ? MPK_DTYPE_F8_E4M3 : MPK_DTYPE_BF16, .ndim = 2,
                                 .shape = {R, C}};
        if (fp8) {
            uint8_t *q = malloc(numel);
            for (size_t k = 0; k < numel; k++)
                q[k] = mpk_f32_to_e4m3((float)(f[k] / amax * 448.0));
            data[i] = q;
        } else {
            uint16_t *b = malloc(numel * 2);
            for (size_t k = 0; k < numel; k++)
                b[k] = mpk_f32_to_bf16(f[k]);
            data[i] = b;
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", argv[2]);
    mpk_error err = {0};
    if (mpk_st_write_file(path, t, (const void **)data, (size_t)n, NULL, 0, &err) != MPK_OK) {
        fprintf(stderr, "normal_weights: %s\n", err.msg);
        return 1;
    }
    return 0;
}
