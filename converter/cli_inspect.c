/* cli_inspect.c — `moepack inspect PATH [--json]`. */
#define _GNU_SOURCE
#include "cli.h"
#include "mpk_converter.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t count, bytes;
} dtype_stat;

static cJSON *inspect_json(const char *path, const mpk_ckpt *c, const dtype_stat *ds,
                           const mpk_model_config *cfg, mpk_expert_layout layout)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddStringToObject(o, "format", c->has_index ? "sharded" : "single");
    cJSON *shards = cJSON_AddArrayToObject(o, "shards");
    for (size_t i = 0; i < c->n_shards; i++) {
        const mpk_shard *s = &c->shards[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "file", s->name);
        cJSON_AddNumberToObject(j, "tensors", (double)s->header->n_tensors);
        cJSON_AddNumberToObject(j, "bytes", (double)s->header->data_size);
        cJSON_AddNumberToObject(j, "file_size", (double)s->file_size);
        cJSON_AddNumberToObject(j, "header_length", (double)s->header->header_len);
        cJSON_AddItemToArray(shards, j);
    }
    cJSON_AddNumberToObject(o, "tensor_count", (double)c->n_tensors);
    cJSON_AddNumberToObject(o, "total_bytes", (double)c->total_bytes);
    if (c->has_index)
        cJSON_AddNumberToObject(o, "index_total_size", (double)c->index_total_size);
    cJSON *dt = cJSON_AddObjectToObject(o, "dtypes");
    for (int d = 0; d < MPK_DTYPE_COUNT; d++) {
        if (!ds[d].count)
            continue;
        cJSON *j = cJSON_AddObjectToObject(dt, mpk_dtype_name((mpk_dtype)d));
        cJSON_AddNumberToObject(j, "count", (double)ds[d].count);
        cJSON_AddNumberToObject(j, "bytes", (double)ds[d].bytes);
    }
    if (cfg->found && cfg->model_type[0])
        cJSON_AddStringToObject(o, "model_type", cfg->model_type);
    else
        cJSON_AddNullToObject(o, "model_type");
    if (cfg->num_experts >= 0)
        cJSON_AddNumberToObject(o, "num_experts", (double)cfg->num_experts);
    else
        cJSON_AddNullToObject(o, "num_experts");
    cJSON_AddStringToObject(o, "expert_layout", mpk_layout_name(layout));
    cJSON *ts = cJSON_AddArrayToObject(o, "tensors");
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_ckpt_tensor *t = &c->tensors[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", t->info->name);
        cJSON_AddStringToObject(j, "dtype", mpk_dtype_name(t->info->dtype));
        cJSON *sh = cJSON_AddArrayToObject(j, "shape");
        for (int d = 0; d < t->info->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->info->shape[d]));
        cJSON_AddNumberToObject(j, "bytes", (double)t->nbytes);
        cJSON_AddStringToObject(j, "file", c->shards[t->shard].name);
        cJSON_AddItemToArray(ts, j);
    }
    return o;
}

int mpk_cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {0}};
    bool json = false;
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'j')
            json = true;
        else
            return mpk_cli_usage("inspect", "unknown option '%s'", argv[optind - 1]);
    }
    if (argc - optind != 1)
        return mpk_cli_usage("inspect", "expected one PATH, got %d", argc - optind);
    const char *path = argv[optind];
    mpk_error err = {0};
    mpk_ckpt *c;
    if (mpk_ckpt_open(path, &c, &err) != MPK_OK)
        return mpk_cli_fail("inspect", &err, NULL);
    mpk_model_config cfg;
    if (mpk_config_load(c->dir, &cfg, &err) != MPK_OK) {
        mpk_ckpt_close(c);
        return mpk_cli_fail("inspect", &err, NULL);
    }
    dtype_stat ds[MPK_DTYPE_COUNT] = {{0}};
    for (size_t i = 0; i < c->n_tensors; i++) {
        ds[c->tensors[i].info->dtype].count++;
        ds[c->tensors[i].info->dtype].bytes += c->tensors[i].nbytes;
    }
    mpk_expert_layout layout = mpk_detect_layout(c);
    if (json) {
        cJSON *o = inspect_json(path, c, ds, &cfg, layout);
        char *s = cJSON_Print(o);
        if (s)
            puts(s);
        free(s);
        cJSON_Delete(o);
    } else {
        char hb[32];
        printf("checkpoint: %s (%s, %zu shard%s)\n", path,
               c->has_index ? "sharded, model.safetensors.index.json" : "single file",
               c->n_shards, c->n_shards == 1 ? "" : "s");
        for (size_t i = 0; i < c->n_shards; i++)
            printf("  %-40s %6zu tensors  %s\n", c->shards[i].name, c->shards[i].header->n_tensors,
                   mpk_human_bytes(c->shards[i].header->data_size, hb, sizeof hb));
        printf("tensors: %zu\ntotal bytes: %llu (%s)\ndtypes:", c->n_tensors,
               (unsigned long long)c->total_bytes, mpk_human_bytes(c->total_bytes, hb, sizeof hb));
        for (int d = 0; d < MPK_DTYPE_COUNT; d++)
            if (ds[d].count)
                printf(" %s=%llu", mpk_dtype_name((mpk_dtype)d), (unsigned long long)ds[d].count);
        printf("\nmodel_type: %s\nexperts: ", cfg.model_type[0] ? cfg.model_type : "(no config.json)");
        if (cfg.num_experts >= 0)
            printf("%ld", cfg.num_experts);
        else
            printf("?");
        printf("\nexpert layout: %s\n\n", mpk_layout_name(layout));
        for (size_t i = 0; i < c->n_tensors; i++) {
            const mpk_ckpt_tensor *t = &c->tensors[i];
            char sh[256];
            printf("%-64s %-8s %-22s %12llu\n", t->info->name, mpk_dtype_name(t->info->dtype),
                   mpk_shape_str(t->info->shape, t->info->ndim, sh, sizeof sh),
                   (unsigned long long)t->nbytes);
        }
    }
    mpk_config_free(&cfg);
    mpk_ckpt_close(c);
    return MPK_EXIT_OK;
}
