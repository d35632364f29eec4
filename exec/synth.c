/* synth.c — small realistic checkpoints from a preset's "synth" section. */
#define _GNU_SOURCE
#include "exec_internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *name;
    mpk_tmeta meta;
    uint64_t nbytes;
    int shard;
} synth_tensor;

static long sym(const mpk_synth_opts *o, const char *e)
{
    long mul = 1, div = 1;
    if (isdigit((unsigned char)*e)) {
        char *end;
        mul = strtol(e, &end, 10);
        e = end;
        if (!*e)
            return mul;
    }
    long base = *e == 'E' ? o->experts : *e == 'H' ? o->hidden : *e == 'I' ? o->intermediate
              : *e == 'V' ? o->vocab : *e == 'L' ? o->layers : -1;
    if (base < 0)
        return -1;
    if (e[1] == '*') { /* "E*I": DBRX's experts flattened along dim 0 */
        long r = sym(o, e + 2);
        return r > 0 ? base * mul * r : -1;
    }
    if (e[1] == '+') /* "E+2": Inkling's router has a row per shared expert too */
        return base * mul + strtol(e + 2, NULL, 10);
    if (e[1] == '/')
        div = strtol(e + 2, NULL, 10);
    long v = div > 0 ? base * mul / div : -1;
    return v > 0 ? v : 1;
}

static char *subst(mpk_arena *a, const char *pat, const char *key, long v)
{
    const char *hit = strstr(pat, key);
    if (!hit)
        return mpk_arena_strndup(a, pat, strlen(pat));
    return mpk_arena_printf(a, "%.*s%ld%s", (int)(hit - pat), pat, v, hit + strlen(key));
}

/* Fills a tensor: floats in [-0.05, 0.05) (FP8 scale grids: positive, about 1e-4), MXFP4
 * scales E8M0 codes 118..125 (2^-9 .. 2^-2), FP8 codes without NaN, other bytes random. */
static void fill(void *buf, const char *name, const mpk_tmeta *m, uint64_t n_el, uint64_t nbytes,
                 uint64_t *seed)
{
    unsigned char *b = buf;
    if (m->dtype == MPK_DTYPE_F32 || m->dtype == MPK_DTYPE_F16 || m->dtype == MPK_DTYPE_BF16) {
        float tmp[1024];
        size_t el = mpk_dtype_size(m->dtype);
        bool scale = mpk_str_ends(name, "_scale_inv");
        for (uint64_t i = 0; i < n_el; i += 1024) {
            size_t k = n_el - i < 1024 ? (size_t)(n_el - i) : 1024;
            for (size_t j = 0; j < k; j++) {
                double u = (double)(mpk_rand(seed) >> 11) / 9007199254740992.0;
                tmp[j] = scale ? (float)(5e-5 + u * 1e-4) : (float)(u * 0.1 - 0.05);
            }
            mpk_cast(MPK_DTYPE_F32, tmp, m->dtype, (char *)buf + i * el, k);
        }
    } else if (m->dtype == MPK_DTYPE_U8 && mpk_str_ends(name, "_scales")) {
        for (uint64_t i = 0; i < nbytes; i++)
            b[i] = (unsigned char)(118 + (mpk_rand(seed) >> 61));
    } else {
        for (uint64_t i = 0; i < nbytes; i++) {
            b[i] = (unsigned char)(mpk_rand(seed) >> 56);
            if (m->dtype == MPK_DTYPE_F8_E4M3 && (b[i] & 0x7F) == 0x7F)
                b[i] ^= 1; /* no NaN codes */
        }
    }
}

/* DeepSeek-V3's FP8 checkpoints quantize every linear layer's weight except the router. */
static bool fp8_quantized(const char *pat, const mpk_tmeta *m)
{
    return m->ndim == 2 && mpk_str_ends(pat, ".weight") && !strstr(pat, "norm") && !strstr(pat, "embed") &&
           !strstr(pat, "lm_head") && !mpk_str_ends(pat, "mlp.gate.weight") && !strstr(pat, "router");
}

static mpk_status write_config(const cJSON *synth, const mpk_synth_opts *o, const char *dir,
                               mpk_error *err)
{
    cJSON *cfg = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(synth, "config"), 1);
    if (!cfg)
        cfg = cJSON_CreateObject();
    const cJSON *sizes = cJSON_GetObjectItemCaseSensitive(synth, "config_sizes");
    cJSON *target = cfg;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sizes, "__text__"))) {
        target = cJSON_GetObjectItemCaseSensitive(cfg, "text_config");
        if (!target)
            target = cJSON_AddObjectToObject(cfg, "text_config");
    }
    for (const cJSON *e = sizes ? sizes->child : NULL; e; e = e->next) {
        const cJSON *rep;
        if (e->string[0] == '_')
            continue;
        cJSON_DeleteItemFromObjectCaseSensitive(target, e->string);
        if (cJSON_IsString(e)) {
            cJSON_AddNumberToObject(target, e->string, (double)sym(o, e->valuestring));
        } else if ((rep = cJSON_GetObjectItemCaseSensitive(e, "__repeat__"))) {
            /* {"__repeat__": "sparse", "times": "L"}: a per-layer list (mlp_layer_types) */
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "times");
            long n = cJSON_IsString(t) ? sym(o, t->valuestring) : 0;
            cJSON *l = cJSON_AddArrayToObject(target, e->string);
            for (long k = 0; k < n; k++)
                cJSON_AddItemToArray(l, cJSON_Duplicate(rep, 1));
        } else if (cJSON_IsArray(e)) { /* a size per part, e.g. ERNIE-4.5-VL's ["I", "I/2"] */
            cJSON *l = cJSON_AddArrayToObject(target, e->string);
            for (const cJSON *x = e->child; x; x = x->next)
                cJSON_AddItemToArray(l, cJSON_IsString(x) ? cJSON_CreateNumber((double)sym(o, x->valuestring))
                                                          : cJSON_Duplicate(x, 1));
        } else
            cJSON_AddItemToObject(target, e->string, cJSON_Duplicate(e, 1));
    }
    if (o->fp8) {
        cJSON *qc = cJSON_Parse("{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", "
                                "\"fmt\": \"e4m3\", \"weight_block_size\": [128, 128]}");
        cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
        cJSON_AddItemToObject(cfg, "quantization_config", qc);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "torch_dtype");
    cJSON_AddStringToObject(cfg, "torch_dtype", o->dtype == MPK_DTYPE_F32 ? "float32"
                                                : o->dtype == MPK_DTYPE_F16 ? "float16" : "bfloat16");
    char *text = mpk_json_print(cfg, true);
    cJSON_Delete(cfg);
    char *path = mpk_path_join(dir, "config.json");
    mpk_status s = text && path ? mpk_write_file(path, text, strlen(text), true, err)
                                : mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
    free(text);
    free(path);
    return s;
}

typedef struct {
    synth_tensor *ts;
    size_t n, cap;
} synth_list;

static mpk_status list_add(synth_list *L, synth_tensor t, const char *dir, mpk_error *err)
{
    if (L->n == L->cap) {
        size_t cap = L->cap ? 2 * L->cap : 1024;
        synth_tensor *nt = mpk_realloc(L->ts, cap * sizeof *nt);
        if (!nt)
            MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
        L->ts = nt;
        L->cap = cap;
    }
    L->ts[L->n++] = t;
    return MPK_OK;
}

/* The tensors the preset's synth list names, for every layer and expert (and, FP8, their
 * _scale_inv grids), in list order. */
static mpk_status synth_tensors(const mpk_synth_opts *o, const cJSON *list, mpk_arena *a, synth_list *L,
                                const char *dir, mpk_error *err)
{
    for (const cJSON *e = list->child; e; e = e->next) {
        const char *pat = cJSON_GetArrayItem(e, 0)->valuestring;
        mpk_tmeta m = {o->dtype, 0, {0}};
        for (const cJSON *d = cJSON_GetArrayItem(e, 1); d; d = d->next) {
            if (cJSON_IsNumber(d))
                m.shape[m.ndim++] = (int64_t)d->valuedouble;
            else if (mpk_dtype_parse(d->valuestring, strlen(d->valuestring), &m.dtype))
                continue;
            else
                m.shape[m.ndim++] = sym(o, d->valuestring);
        }
        bool per_layer = strstr(pat, "{layer}") != NULL, per_expert = strstr(pat, "{expert") != NULL;
        bool q = o->fp8 && fp8_quantized(pat, &m);
        mpk_tmeta sm = m;
        if (q) {
            m.dtype = MPK_DTYPE_F8_E4M3;
            sm.dtype = MPK_DTYPE_F32;
            sm.shape[0] = (m.shape[0] + 127) / 128;
            sm.shape[1] = (m.shape[1] + 127) / 128;
        }
        for (int pass = 0; pass < (q ? 2 : 1); pass++)
            for (long l = 0; l < (per_layer ? o->layers : 1); l++)
                for (long x = 0; x < (per_expert ? o->experts : 1); x++) {
                    /* "{expert+E}": the second run of a partitioned list (ERNIE-4.5-VL's vision
                     * experts follow its text experts) */
                    char *name = subst(a, subst(a, subst(a, pat, "{layer}", l), "{expert}", x), "{expert+E}",
                                       x + o->experts);
                    if (pass)
                        name = mpk_arena_printf(a, "%s_scale_inv", name);
                    synth_tensor t = {name, pass ? sm : m, 0, 0};
                    mpk_tensor_nbytes(t.meta.dtype, t.meta.shape, t.meta.ndim, &t.nbytes);
                    MPK_TRY(list_add(L, t, dir, err));
                }
    }
    return MPK_OK;
}

/* Shards: contiguous runs of about equal bytes, in list order. The shard count; *total the bytes. */
static int assign_shards(synth_tensor *ts, size_t n, int want, uint64_t *total)
{
    *total = 0;
    for (size_t i = 0; i < n; i++)
        *total += ts[i].nbytes;
    int shards = want > 0 ? want : 1;
    if ((size_t)shards > n)
        shards = (int)n;
    uint64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        ts[i].shard = (int)(acc * (uint64_t)shards / (*total ? *total : 1));
        if (ts[i].shard >= shards)
            ts[i].shard = shards - 1;
        acc += ts[i].nbytes;
    }
    return shards;
}

/* Shard sh of shards, random values from *seed; inames/ifiles get its tensors' names and file. */
static mpk_status write_synth_shard(const synth_tensor *ts, size_t n, int sh, int shards, const char *dir,
                                    mpk_arena *a, const char **inames, const char **ifiles, uint64_t *seed,
                                    mpk_error *err)
{
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++)
        cnt += ts[i].shard == sh;
    mpk_tensor_info *infos = mpk_calloc(cnt + 1, sizeof *infos);
    char fname[64];
    mpk_shard_name((size_t)sh + 1, (size_t)shards, fname, sizeof fname);
    char *path = mpk_path_join(dir, fname);
    mpk_st_out *out = NULL;
    mpk_status s = MPK_OK;
    if (!infos || !path) {
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
    } else {
        cnt = 0;
        for (size_t i = 0; i < n; i++)
            if (ts[i].shard == sh) {
                infos[cnt] = (mpk_tensor_info){.name = ts[i].name, .dtype = ts[i].meta.dtype,
                                               .ndim = ts[i].meta.ndim};
                memcpy(infos[cnt].shape, ts[i].meta.shape, sizeof infos[cnt].shape);
                inames[i] = ts[i].name;
                ifiles[i] = mpk_arena_strndup(a, fname, strlen(fname));
                cnt++;
            }
        mpk_kv meta = {"format", "pt"};
        s = mpk_st_out_create(path, infos, cnt, &meta, 1, -1, &out, err);
    }
    for (size_t k = 0; s == MPK_OK && k < cnt; k++) {
        const mpk_tensor_info *t = &out->tensors[k];
        uint64_t nb = t->end - t->begin;
        void *buf = mpk_alloc(nb ? nb : 1);
        if (!buf) {
            s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory (%llu bytes)", (unsigned long long)nb);
            break;
        }
        mpk_tmeta m = {t->dtype, t->ndim, {0}};
        fill(buf, t->name, &m, mpk_numel(t->shape, t->ndim), nb, seed);
        s = mpk_st_out_write(out, k, 0, buf, nb, err);
        free(buf);
    }
    mpk_status c = mpk_st_out_close(out, false, s == MPK_OK ? err : NULL);
    if (s == MPK_OK)
        s = c;
    free(infos);
    free(path);
    return s;
}

static mpk_status synth_per_expert(const mpk_synth_opts *o, const mpk_spec *spec, const char *dir,
                                   mpk_error *err)
{
    const cJSON *synth = cJSON_GetObjectItemCaseSensitive(spec->json, "synth");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(synth, "tensors");
    if (!cJSON_IsArray(list))
        MPK_FAIL(err, MPK_E_PRESET, spec->name, "preset has no synth section");
    mpk_arena *a = mpk_arena_new();
    synth_list L = {0};
    const char **inames = NULL, **ifiles = NULL;
    mpk_status s = a ? synth_tensors(o, list, a, &L, dir, err) : mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
    uint64_t total = 0;
    int shards = s == MPK_OK ? assign_shards(L.ts, L.n, o->shards, &total) : 0;
    if (s == MPK_OK && (!(inames = mpk_calloc(L.n + 1, sizeof *inames)) || !(ifiles = mpk_calloc(L.n + 1, sizeof *ifiles))))
        s = mpk_error_set(err, MPK_E_NOMEM, 0, dir, "out of memory");
    uint64_t seed = o->seed ? o->seed : 1;
    for (int sh = 0; sh < shards && s == MPK_OK; sh++)
        s = write_synth_shard(L.ts, L.n, sh, shards, dir, a, inames, ifiles, &seed, err);
    if (s == MPK_OK && shards > 1)
        s = mpk_index_write(dir, inames, ifiles, L.n, total, true, err);
    if (s == MPK_OK)
        s = write_config(synth, o, dir, err);
    free(inames);
    free(ifiles);
    free(L.ts);
    mpk_arena_free(a);
    return s;
}

mpk_status mpk_synth(const mpk_synth_opts *o, const char *out_dir, mpk_error *err)
{
    if (o->layers < 1 || o->experts < 1 || o->hidden < 1 || o->intermediate < 1 || o->vocab < 1)
        MPK_FAIL(err, MPK_E_USAGE, "synth", "layers, experts, hidden, intermediate and vocab must be >= 1");
    if (!mpk_cast_supported(o->dtype, o->dtype))
        MPK_FAIL(err, MPK_E_USAGE, "synth", "cannot write random %s tensors (BF16, F16 or F32)",
                 mpk_dtype_name(o->dtype) ? mpk_dtype_name(o->dtype) : "?");
    mpk_spec *spec;
    MPK_TRY(mpk_preset_load(o->arch, NULL, &spec, err));
    struct stat st;
    if (lstat(out_dir, &st) == 0) {
        mpk_spec_free(spec);
        MPK_FAIL(err, MPK_E_DST_EXISTS, out_dir, "destination exists");
    }
    mpk_status s;
    if (!o->packed) { /* staged like every output: a temporary directory renamed into place */
        mpk_stage stage;
        mpk_exec_opts eo = {0};
        s = mpk_stage_open(&stage, out_dir, 0, &eo, err);
        if (s == MPK_OK)
            s = synth_per_expert(o, spec, stage.tmp, err);
        if (s == MPK_OK)
            s = mpk_stage_commit(&stage, NULL, false, err);
        mpk_stage_close(&stage, false);
    } else {
        /* per-expert into a temporary directory beside out_dir, then pack it */
        char *tmp = mpk_alloc(strlen(out_dir) + 32);
        if (!tmp) {
            mpk_spec_free(spec);
            MPK_FAIL(err, MPK_E_NOMEM, out_dir, "out of memory");
        }
        sprintf(tmp, "%s.synth-src-XXXXXX", out_dir);
        s = mkdtemp(tmp) ? MPK_OK : mpk_error_set(err, MPK_E_IO, errno, out_dir, "cannot create %s: %s", tmp, strerror(errno));
        if (s == MPK_OK)
            s = synth_per_expert(o, spec, tmp, err);
        mpk_ckpt *c = NULL;
        mpk_plan *p = NULL;
        mpk_model_config cfg = {0};
        if (s == MPK_OK)
            s = mpk_ckpt_open(tmp, &c, err);
        if (s == MPK_OK)
            s = mpk_config_load(tmp, &cfg, err);
        if (s == MPK_OK) {
            mpk_plan_opts po = {.max_shard_size = 0, .cfg = &cfg};
            s = mpk_plan_build(c, spec, &po, &p, err);
        }
        if (s == MPK_OK) {
            mpk_kv meta[2] = {{"format", "pt"}, {"moepack_layout", "packed"}};
            mpk_exec_opts eo = {.threads = 1, .mem = 256u << 20, .use_copy_range = true, .metadata = meta,
                                .n_metadata = 2};
            mpk_exec_stats stats;
            s = mpk_exec(p, out_dir, &eo, &stats, err);
        }
        mpk_plan_free(p);
        mpk_config_free(&cfg);
        mpk_ckpt_close(c);
        mpk_rmrf(tmp);
        free(tmp);
    }
    mpk_spec_free(spec);
    return s;
}

void mpk_synth_opts_init(mpk_synth_opts *o)
{
    *o = (mpk_synth_opts){.arch = "mixtral", .layers = 2, .experts = 8, .hidden = 64, .intermediate = 32,
                          .vocab = 128, .dtype = MPK_DTYPE_BF16, .shards = 2, .seed = 1};
}
