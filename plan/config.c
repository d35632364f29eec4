/* config.c — the few config.json facts moepack needs, and expert-layout detection. */
#define _GNU_SOURCE
#include "mpk_plan.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Largest expert count, layer count or dimension we take from a config (far above any model;
 * the checkpoint's own tensors decide what is allocated). */
#define CONFIG_INT_MAX 2147483647.0

/* The first of keys holding a number in o: an integer in [0, CONFIG_INT_MAX] (*out; left -1 when
 * no key holds a number), any other number is MPK_E_CONFIG naming the key and the value. */
static mpk_status get_int(const cJSON *o, const char *const *keys, const char *path, long *out,
                          mpk_error *err)
{
    for (; *keys; keys++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, *keys);
        if (!cJSON_IsNumber(v))
            continue; /* absent, null, or a per-layer list: not known from here */
        long long x;
        if (!mpk_json_num_in(v, 0, CONFIG_INT_MAX, &x)) {
            char *t = cJSON_PrintUnformatted(v);
            mpk_status s = mpk_error_set(err, MPK_E_CONFIG, 0, path, "\"%s\" is %.40s: it must be "
                                         "an integer from 0 to %.0f", *keys, t ? t : "?",
                                         CONFIG_INT_MAX);
            free(t);
            return s;
        }
        *out = (long)x;
        return MPK_OK;
    }
    return MPK_OK;
}

/* Nothing found yet: every fact unknown (-1). */
static void config_init(mpk_model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->num_experts = cfg->hidden_size = cfg->intermediate_size = cfg->num_layers = -1;
}

/* A quantization declared at key of o: its quant_method (ModelOpt's "modelopt" with its
 * quant_algo), "?" when it names none. */
static void quant_of(mpk_model_config *cfg, const char *key, const cJSON *o)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "quant_method");
    const cJSON *algo = cJSON_GetObjectItemCaseSensitive(o, "quant_algo");
    if (!cJSON_IsString(algo)) /* hf_quant_config.json: {"quantization": {"quant_algo": ...}} */
        algo = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "quantization"),
                                                "quant_algo");
    snprintf(cfg->quant_key, sizeof cfg->quant_key, "%s", key);
    snprintf(cfg->quant_method, sizeof cfg->quant_method, "%s%s%s",
             cJSON_IsString(m) ? m->valuestring : cJSON_IsString(algo) ? "modelopt" : "?",
             cJSON_IsString(algo) ? " " : "", cJSON_IsString(algo) ? algo->valuestring : "");
    /* the values per block scale: ModelOpt's group_size (hf_quant_config.json's quantization, or
     * the first config group's weights in config.json) */
    const cJSON *qd = cJSON_GetObjectItemCaseSensitive(o, "quantization");
    const cJSON *cg = cJSON_GetObjectItemCaseSensitive(o, "config_groups");
    const cJSON *gs = cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(qd) ? qd : o, "group_size");
    if (!gs && cJSON_IsObject(cg) && cg->child)
        gs = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cg->child, "weights"), "group_size");
    cfg->quant_group = cJSON_IsNumber(gs) ? (long)gs->valuedouble : gs ? -2 : -1;
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(o, "format");
    snprintf(cfg->quant_format, sizeof cfg->quant_format, "%s", cJSON_IsString(fm) ? fm->valuestring : "");
    for (const cJSON *g = cJSON_IsObject(cg) ? cg->child : NULL; g && !cfg->quant_bits_key[0]; g = g->next) {
        const cJSON *nb = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(g, "weights"), "num_bits");
        if (cJSON_IsNumber(nb) && nb->valuedouble != 4) {
            snprintf(cfg->quant_bits_key, sizeof cfg->quant_bits_key, "%s.config_groups.%.40s.weights.num_bits", key,
                     g->string ? g->string : "?");
            cfg->quant_bits = (long)nb->valuedouble;
        }
    }
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "weight_block_size");
    char *t = b ? cJSON_PrintUnformatted(b) : NULL;
    snprintf(cfg->quant_block, sizeof cfg->quant_block, "%s", t ? t : "");
    free(t);
}

/* NVIDIA ModelOpt's hf_quant_config.json beside config.json declares its quantization. */
static mpk_status hf_quant_config(const char *dir, mpk_model_config *cfg, mpk_error *err)
{
    char *path = mpk_path_join(dir, "hf_quant_config.json");
    if (!path)
        MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
    char *text = NULL;
    size_t len = 0;
    if (access(path, F_OK) != 0) {
        free(path);
        return MPK_OK;
    }
    mpk_error ig; /* one that cannot be read or parsed declares a quantization all the same */
    cJSON *o = mpk_read_file(path, &text, &len, &ig) == MPK_OK ? cJSON_ParseWithLength(text, len) : NULL;
    quant_of(cfg, "hf_quant_config.json", o);
    cJSON_Delete(o);
    free(text);
    free(path);
    return MPK_OK;
}

mpk_status mpk_config_load(const char *dir, mpk_model_config *cfg, mpk_error *err)
{
    config_init(cfg);
    char *path = mpk_path_join(dir, "config.json");
    if (!path)
        MPK_FAIL(err, MPK_E_NOMEM, dir, "out of memory");
    if (access(path, F_OK) != 0) {
        free(path);
        return hf_quant_config(dir, cfg, err); /* no config: found stays false */
    }
    char *text;
    size_t len;
    mpk_status s = mpk_read_file(path, &text, &len, err);
    if (s == MPK_OK) {
        s = mpk_config_parse(text, len, path, cfg, err);
        free(text);
    }
    free(path);
    if (s == MPK_OK)
        s = hf_quant_config(dir, cfg, err);
    return s;
}

mpk_status mpk_config_parse(const char *text, size_t len, const char *path, mpk_model_config *cfg,
                            mpk_error *err)
{
    config_init(cfg);
    mpk_json *j;
    mpk_status s = mpk_json_parse(text, len, MPK_E_CONFIG, path, "config.json", &j, err);
    if (s == MPK_OK && !cJSON_IsObject(j->root))
        s = mpk_error_set(err, MPK_E_CONFIG, 0, path, "not a JSON object");
    if (s != MPK_OK) {
        mpk_json_free(j);
        return s;
    }
    cJSON *root = mpk_json_take(j);
    cfg->found = true;
    cfg->json = root;
    /* multimodal configs keep the language model's numbers in text_config */
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    /* DBRX keeps its expert numbers in ffn_config (moe_num_experts, ffn_hidden_size) */
    const cJSON *fc = cJSON_GetObjectItemCaseSensitive(root, "ffn_config");
    const cJSON *src[3] = {cJSON_IsObject(tc) ? tc : NULL, root, cJSON_IsObject(fc) ? fc : NULL};
    static const char *const k_type[] = {"model_type", NULL};
    static const char *const k_experts[] = {"num_local_experts", "num_experts", "n_routed_experts",
                                            "moe_num_experts", NULL};
    static const char *const k_hidden[] = {"hidden_size", "d_model", NULL};
    static const char *const k_inter[] = {"moe_intermediate_size", "intermediate_size", "ffn_hidden_size", "d_ff",
                                          "encoder_ffn_dim", NULL};
    static const char *const k_layers[] = {"num_hidden_layers", "n_layers", "num_layers", "encoder_layers", NULL};
    static const char *const k_quant[] = {"quantization_config", "compression_config", NULL};
    for (int i = 0; k_quant[i] && !cfg->quant_key[0]; i++) {
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, k_quant[i]);
        if (q && !cJSON_IsNull(q))
            quant_of(cfg, k_quant[i], q);
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, k_type[0]);
    if (cJSON_IsString(mt))
        snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt->valuestring);
    if (src[0]) {
        const cJSON *tmt = cJSON_GetObjectItemCaseSensitive(src[0], "model_type");
        if (cJSON_IsString(tmt))
            snprintf(cfg->text_model_type, sizeof cfg->text_model_type, "%s", tmt->valuestring);
    }
    for (int i = 0; i < 3 && s == MPK_OK; i++) {
        if (!src[i])
            continue;
        if (cfg->num_experts < 0)
            s = get_int(src[i], k_experts, path, &cfg->num_experts, err);
        if (s == MPK_OK && cfg->hidden_size < 0)
            s = get_int(src[i], k_hidden, path, &cfg->hidden_size, err);
        if (s == MPK_OK && cfg->intermediate_size < 0)
            s = get_int(src[i], k_inter, path, &cfg->intermediate_size, err);
        if (s == MPK_OK && cfg->num_layers < 0)
            s = get_int(src[i], k_layers, path, &cfg->num_layers, err);
    }
    if (s != MPK_OK)
        mpk_config_free(cfg);
    return s;
}

const char *mpk_config_quant_unsupported(const mpk_model_config *cfg, char *buf, size_t cap)
{
    if (!cfg || !cfg->quant_key[0])
        return NULL;
    bool file = strcmp(cfg->quant_key, "hf_quant_config.json") == 0;
    if (!file && strcmp(cfg->quant_key, "quantization_config") == 0) {
        if (strcmp(cfg->quant_method, "mxfp4") == 0)
            return NULL;
        if (strcmp(cfg->quant_method, "fp8") == 0) {
            char b[64];
            size_t o = 0;
            for (const char *p = cfg->quant_block; *p && o + 1 < sizeof b; p++)
                if (*p != ' ')
                    b[o++] = *p;
            b[o] = 0;
            if (!b[0] || strcmp(b, "[128,128]") == 0)
                return NULL;
            snprintf(buf, cap, "config.json's quantization_config is fp8 with weight_block_size %s: moepack "
                     "moves and decodes 128x128 blocks only", cfg->quant_block);
            return buf;
        }
    }
    if (strcmp(cfg->quant_method, "modelopt NVFP4") == 0) {
        if (cfg->quant_group == -1 || cfg->quant_group == 16)
            return NULL;
        snprintf(buf, cap, "%s%s declares NVFP4 with group_size %ld: moepack moves and decodes ModelOpt's "
                 "16 values per block scale only", file ? "" : "config.json's ", cfg->quant_key, cfg->quant_group);
        return buf;
    }
    snprintf(buf, cap, "%s%s declares quantization '%s', which moepack does not implement (it "
             "implements fp8 with 128x128 blocks, DeepSeek style, mxfp4, gpt-oss, and modelopt NVFP4): its weights and "
             "scales would be moved as if they were plain tensors", file ? "" : "config.json's ",
             cfg->quant_key, cfg->quant_method);
    return buf;
}

const char *mpk_config_quant_refused(const mpk_model_config *cfg, bool dequantize, char *buf, size_t cap)
{
    if (cfg && strcmp(cfg->quant_key, "quantization_config") == 0 && strcmp(cfg->quant_method, "compressed-tensors") == 0) {
        bool int_packed = strcmp(cfg->quant_format, "pack-quantized") == 0;
        if (int_packed && dequantize && cfg->quant_bits_key[0]) { /* (packed as they are, they move whole) */
            snprintf(buf, cap, "config.json's %s is %ld with format 'pack-quantized': moepack dequantizes INT4 "
                     "(num_bits 4) pack-quantized weights only; without --dequantize they are packed as they are",
                     cfg->quant_bits_key, cfg->quant_bits);
            return buf;
        }
        bool known = strcmp(cfg->quant_format, "nvfp4-pack-quantized") == 0 || strcmp(cfg->quant_format, "float-quantized") == 0 ||
                     int_packed;
        if (known)
            return NULL;
        snprintf(buf, cap, "config.json's quantization_config is compressed-tensors with format '%s': moepack reads, "
                 "packs and dequantizes nvfp4-pack-quantized, float-quantized and pack-quantized (INT4) only",
                 cfg->quant_format);
        return buf;
    }
    return mpk_config_quant_unsupported(cfg, buf, cap);
}

const char *mpk_config_architecture(const mpk_model_config *cfg, int i)
{
    const cJSON *a = cfg && cfg->json ? cJSON_GetObjectItemCaseSensitive(cfg->json, "architectures") : NULL;
    const cJSON *e = cJSON_IsArray(a) && i >= 0 ? cJSON_GetArrayItem(a, i) : NULL;
    return cJSON_IsString(e) ? e->valuestring : NULL;
}

void mpk_config_free(mpk_model_config *cfg)
{
    if (cfg && cfg->json) {
        cJSON_Delete(cfg->json);
        cfg->json = NULL;
    }
}

/* ".experts.<digits>." (or ".experts.expert_<digits>.", Switch Transformers and NLLB-MoE)
 * somewhere in the name */
bool mpk_per_expert_name(const char *n)
{
    for (const char *p = strstr(n, ".experts."); p; p = strstr(p + 1, ".experts.")) {
        const char *q = p + 9;
        if (strncmp(q, "expert_", 7) == 0)
            q += 7;
        if (isdigit((unsigned char)*q)) {
            while (isdigit((unsigned char)*q))
                q++;
            if (*q == '.')
                return true;
        }
    }
    return false;
}

mpk_expert_layout mpk_detect_layout(const mpk_ckpt *c)
{
    bool per = false, packed = false;
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_tensor_info *t = c->tensors[i].info;
        if (mpk_per_expert_name(t->name))
            per = true;
        else if ((t->ndim >= 2 && strstr(t->name, ".experts.")) || /* stacked, or flattened (DBRX) */
                 (t->ndim >= 3 && (strstr(t->name, "input_linear") || strstr(t->name, "output_linear"))))
            packed = true;
    }
    if (per && packed)
        return MPK_LAYOUT_MIXED;
    return per ? MPK_LAYOUT_PER_EXPERT : packed ? MPK_LAYOUT_PACKED : MPK_LAYOUT_NONE;
}

const char *mpk_layout_name(mpk_expert_layout l)
{
    static const char *const names[] = {"none", "per-expert", "packed", "mixed"};
    _Static_assert(sizeof names / sizeof names[0] == MPK_LAYOUT_COUNT, "layout names");
    return (unsigned)l < MPK_LAYOUT_COUNT ? names[l] : "?";
}

char *mpk_config_requant(const mpk_model_config *cfg, bool remove, const void *qc)
{
    if (!cfg->found || !cfg->json)
        return NULL;
    cJSON *c = cJSON_Duplicate(cfg->json, 1);
    if (!c)
        return NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(c, "quantization_config");
    if (!remove && qc)
        cJSON_AddItemToObject(c, "quantization_config", cJSON_Duplicate((const cJSON *)qc, 1));
    char *text = mpk_json_print(c, true);
    cJSON_Delete(c);
    return text;
}
