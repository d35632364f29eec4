/* quant_config.c — what --quantize writes beside the tensors: config.json's quantization_config
 * (fp8-block128, nvfp4, mxfp4) and, for NVFP4, hf_quant_config.json, in the shapes their readers
 * take (moepack's own, plan/config.c; transformers' and vLLM's FP8 and ModelOpt loaders; GPT-OSS's
 * mxfp4 declaration), each naming the modules left in BF16; and the words for the reports. */
#define _GNU_SOURCE
#include "lib_internal.h"

#include <cjson/cJSON.h>

#include <stdlib.h>
#include <string.h>

/* Every 2-D float weight of the output left unquantized, by its module (name less ".weight"):
 * attention, routers, shared experts, embeddings, lm_head. NULL when out of memory. */
static cJSON *kept_modules(const mpk_plan *p)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < p->n_outs; i++) {
        const mpk_plan_out *o = &p->outs[i];
        size_t n = strlen(o->name);
        if (o->quant || o->meta.ndim != 2 || mpk_dtype_is_fp8(o->meta.dtype) || n <= 7 ||
            strcmp(o->name + n - 7, ".weight") != 0)
            continue;
        cJSON *m = cJSON_CreateString(o->name);
        if (m)
            m->valuestring[n - 7] = 0;
        if (!m || !cJSON_AddItemToArray(a, m)) {
            cJSON_Delete(m);
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

/* o (may be NULL) with key: the kept modules; false when out of memory. */
static bool with_list(cJSON *o, const char *key, const mpk_plan *p)
{
    cJSON *a = o ? kept_modules(p) : NULL;
    if (a && cJSON_AddItemToObject(o, key, a))
        return true;
    cJSON_Delete(a);
    return false;
}

/* --quantize fp8-block128's quantization_config: what transformers' FineGrainedFP8Config and
 * vLLM's Fp8Config read. Every 2-D weight left in a float type is named by its module in
 * modules_to_not_convert (transformers) and ignored_layers (vLLM reads it first), so that
 * neither loader takes an unlisted BF16 linear for FP8. */
static cJSON *fp8_block_config(const mpk_plan *p)
{
    cJSON *qc = cJSON_Parse("{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", "
                            "\"fmt\": \"e4m3\", \"weight_block_size\": [128, 128]}");
    return with_list(qc, "modules_to_not_convert", p) && with_list(qc, "ignored_layers", p) ? qc
                                                                                           : (cJSON_Delete(qc), NULL);
}

/* ModelOpt's NVFP4 declaration as its unified HF export writes it into config.json: quant_method
 * modelopt, quant_algo NVFP4, one config group of 4-bit float weights in groups of 16, ignore
 * naming the modules left in BF16. No input_activations: moepack quantizes weights only and
 * writes no input_scale (it has no activations to calibrate). */
static cJSON *nvfp4_config(const mpk_plan *p)
{
    cJSON *qc = cJSON_Parse("{\"config_groups\": {\"group_0\": {\"weights\": {\"dynamic\": false, \"num_bits\": 4, "
                            "\"type\": \"float\", \"group_size\": 16}, \"targets\": [\"Linear\"]}}, "
                            "\"quant_algo\": \"NVFP4\", \"producer\": {\"name\": \"moepack\"}, "
                            "\"quant_method\": \"modelopt\"}");
    return with_list(qc, "ignore", p) &&
                   cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(qc, "producer"), "version", mpk_version())
               ? qc : (cJSON_Delete(qc), NULL);
}

/* GPT-OSS's declaration (transformers' Mxfp4Config): quant_method mxfp4, modules_to_not_convert. */
static cJSON *mxfp4_config(const mpk_plan *p)
{
    cJSON *qc = cJSON_CreateObject();
    return with_list(qc, "modules_to_not_convert", p) && cJSON_AddStringToObject(qc, "quant_method", "mxfp4")
               ? qc : (cJSON_Delete(qc), NULL);
}

cJSON *mpk_lib_quant_config(const mpk_plan *p, mpk_quant q)
{
    return q == MPK_QUANT_FP8_BLOCK128 ? fp8_block_config(p)
           : q == MPK_QUANT_NVFP4      ? nvfp4_config(p)
           : q == MPK_QUANT_MXFP4      ? mxfp4_config(p)
                                       : NULL;
}

bool mpk_lib_quantizes(mpk_quant q)
{
    return q == MPK_QUANT_FP8_BLOCK128 || q == MPK_QUANT_NVFP4 || q == MPK_QUANT_MXFP4;
}

void mpk_lib_plan_quant(mpk_quant q, mpk_plan_opts *po)
{
    po->dequantize = q == MPK_QUANT_DEQUANTIZE;
    po->quantize_block = q == MPK_QUANT_FP8_BLOCK128 ? 128 : 0;
    po->quantize4 = q == MPK_QUANT_NVFP4 ? 1 : q == MPK_QUANT_MXFP4 ? 2 : 0;
}

const char *mpk_lib_quant_name(mpk_quant q)
{
    static const char *const names[MPK_QUANT_COUNT] = {"keep", "dequantize", "fp8-block128", "nvfp4", "mxfp4"};
    _Static_assert(sizeof names / sizeof *names == MPK_QUANT_COUNT, "a name per mpk_quant");
    return (unsigned)q < MPK_QUANT_COUNT ? names[q] : "keep";
}

const char *mpk_lib_quant_role(int fmt, int role)
{
    static const char *const roles[3][3] = {{"F8_E4M3 weight", "F32 scale grid", ""},
                                            {"U8 NVFP4 codes", "F8_E4M3 block scales", "F32 global scales"},
                                            {"U8 MXFP4 codes", "F8_E8M0 block scales", ""}};
    return fmt >= 0 && fmt < 3 && role >= 1 && role <= 3 ? roles[fmt][role - 1] : "";
}

char *mpk_lib_hf_quant_config(const mpk_plan *p)
{
    cJSON *o = cJSON_Parse("{\"producer\": {\"name\": \"moepack\"}, \"quantization\": {\"quant_algo\": \"NVFP4\", "
                           "\"kv_cache_quant_algo\": null, \"group_size\": 16}}");
    char *text = NULL;
    if (o && with_list(cJSON_GetObjectItemCaseSensitive(o, "quantization"), "exclude_modules", p) &&
        cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(o, "producer"), "version", mpk_version()))
        text = mpk_json_print(o, true);
    cJSON_Delete(o);
    return text;
}
