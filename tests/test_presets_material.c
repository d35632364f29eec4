/* test_presets_material.c — the real config.json + index pairs of ../shared: a checkpoint with
 * exactly those tensor names and shard files (shapes scaled down to [2, 4]) packs with
 * --preset auto into the names transformers v5 expects. Exit 77 without the material. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_exec.h"
#include "testutil.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const struct {
    const char *dir, *index, *preset;
} pairs[] = {
    {"wizardlm-2-8x22b-mixtral", "model.safetensors.index.json", "mixtral"},
    {"qwen3-30b-a3b-qwen3_moe", "model.safetensors.index.json.transgqa-modified", "qwen3_moe"},
    {"qwen3.5-18b-reap-a3b-qwen3_5_moe", "model.safetensors.index.json", "qwen3_5_moe"},
    /* deepseek_vl_v2 as deepseek_v2's, but DeepseekOCR2ForCausalLM: its vision tower, projector
     * and language model renamed as transformers' deepseek_ocr2 mapping says (issue 48) */
    {"deepseek-ocr-2-deepseek_v2_moe", "model.safetensors.index.json", "deepseek_ocr2"},
    {"kimi2-pcl-deepseek_v3-derivative", "model.safetensors.index.json", "deepseek_v3"},
    {"gpt-oss-20b", "model.safetensors.index.json", "gpt_oss"},
};

/* Shapes scaled down: [2, 4] BF16, except GPT-OSS's MXFP4 experts (E = 2, H = 64, I = 32):
 * the real dtypes (U8 blocks and E8M0 scales) with consistent shapes. */
static mpk_tensor_info scaled(const char *name)
{
    static const struct {
        const char *suffix;
        mpk_dtype dt;
        int ndim;
        int64_t shape[4];
    } mx[] = {
        {"gate_up_proj_blocks", MPK_DTYPE_U8, 4, {2, 64, 2, 16}},
        {"gate_up_proj_scales", MPK_DTYPE_U8, 3, {2, 64, 2}},
        {"down_proj_blocks", MPK_DTYPE_U8, 4, {2, 64, 1, 16}},
        {"down_proj_scales", MPK_DTYPE_U8, 3, {2, 64, 1}},
    };
    mpk_tensor_info t = {.name = name, .dtype = MPK_DTYPE_BF16, .ndim = 2, .shape = {2, 4}};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof mx / sizeof mx[0]; i++) {
        size_t k = strlen(mx[i].suffix);
        if (n > k && strcmp(name + n - k, mx[i].suffix) == 0 && name[n - k - 1] == '.') {
            t.dtype = mx[i].dt;
            t.ndim = mx[i].ndim;
            memcpy(t.shape, mx[i].shape, sizeof mx[i].shape);
        }
    }
    return t;
}

/* The packed name of a per-expert tensor, worked out by hand from the naming rules. */
static void expected_name(const char *n, char *out, size_t cap)
{
    size_t len = strlen(n);
    if (len > 7 && strstr(n, ".experts.") &&
        (strcmp(n + len - 7, "_blocks") == 0 || strcmp(n + len - 7, "_scales") == 0)) {
        snprintf(out, cap, "%.*s", (int)len - 7, n); /* MXFP4 pair -> one BF16 tensor */
        return;
    }
    for (const char *p = strstr(n, ".experts."); p; p = strstr(p + 1, ".experts.")) {
        const char *q = p + 9;
        if (!isdigit((unsigned char)*q))
            continue;
        while (isdigit((unsigned char)*q))
            q++;
        if (*q != '.')
            continue;
        q++;
        const char *role = NULL;
        if (!strcmp(q, "w1.weight") || !strcmp(q, "w3.weight") || !strcmp(q, "gate_proj.weight") ||
            !strcmp(q, "up_proj.weight"))
            role = "gate_up_proj";
        else if (!strcmp(q, "w2.weight") || !strcmp(q, "down_proj.weight"))
            role = "down_proj";
        if (!role)
            break;
        int base = (int)(p - n);
        const char *bsm = ".block_sparse_moe";
        size_t bl = strlen(bsm);
        if (base >= (int)bl && strncmp(n + base - bl, bsm, bl) == 0)
            snprintf(out, cap, "%.*s.mlp.experts.%s", base - (int)bl, n, role);
        else
            snprintf(out, cap, "%.*s.experts.%s", base, n, role);
        return;
    }
    const char *g = strstr(n, ".block_sparse_moe.gate.");
    if (g)
        snprintf(out, cap, "%.*s.mlp.gate.%s", (int)(g - n), n, g + strlen(".block_sparse_moe.gate."));
    else
        snprintf(out, cap, "%s", n);
}

/* DeepSeek-OCR-2's names under transformers' deepseek_ocr2 mapping, written out by hand: each
 * published prefix and the one transformers' model has (the language model's experts packed
 * after, by expected_name). */
static void ocr2_renamed(const char *n, char *out, size_t cap)
{
    static const char *const table[][2] = {
        {"model.sam_model.patch_embed.proj.", "model.vision_tower.sam_encoder.patch_embed.projection."},
        {"model.sam_model.pos_embed", "model.vision_tower.sam_encoder.pos_embed"},
        {"model.sam_model.neck.0.", "model.vision_tower.sam_encoder.neck.conv1."},
        {"model.sam_model.neck.1.", "model.vision_tower.sam_encoder.neck.layer_norm1."},
        {"model.sam_model.neck.2.", "model.vision_tower.sam_encoder.neck.conv2."},
        {"model.sam_model.neck.3.", "model.vision_tower.sam_encoder.neck.layer_norm2."},
        {"model.sam_model.net_2.", "model.vision_tower.sam_encoder.proj.conv1."},
        {"model.sam_model.net_3.", "model.vision_tower.sam_encoder.proj.conv2."},
        {"model.qwen2_model.model.model.layers.", "model.vision_tower.vision_encoder.layers."},
        {"model.qwen2_model.model.model.norm.", "model.vision_tower.vision_encoder.norm."},
        {"model.qwen2_model.query_768.", "model.vision_tower.query_768_resolution."},
        {"model.qwen2_model.query_1024.", "model.vision_tower.query_1024_resolution."},
        {"model.projector.layers.", "model.multi_modal_projector."},
        {"model.view_seperator", "model.view_separator"},
        {"model.embed_tokens.", "model.language_model.embed_tokens."},
        {"model.layers.", "model.language_model.layers."},
        {"model.norm.", "model.language_model.norm."},
    };
    int blk, used = 0;
    char part[64];
    if (sscanf(n, "model.sam_model.blocks.%d.%63[a-z_0-9]%n", &blk, part, &used) == 2 && n[used] == '.') {
        const char *to = !strcmp(part, "norm1") ? "layer_norm1" : !strcmp(part, "norm2") ? "layer_norm2" : part;
        snprintf(out, cap, "model.vision_tower.sam_encoder.layers.%d.%s%s", blk, to, n + used);
        return;
    }
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strncmp(n, table[i][0], strlen(table[i][0]))) {
            snprintf(out, cap, "%s%s", table[i][1], n + strlen(table[i][0]));
            return;
        }
    snprintf(out, cap, "%s", n); /* lm_head.weight */
}

static void test_real_pairs_pack(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_mat_XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const uint8_t zeros[4096] = {0};
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        char path[1024], src[600], dst[600];
        snprintf(path, sizeof path, "%s/%s/%s", tu_material(), pairs[k].dir, pairs[k].index);
        char *text;
        size_t len;
        mpk_error err = {0};
        assert_int_equal(mpk_read_file(path, &text, &len, &err), MPK_OK);
        mpk_arena *a;
        const char **names, **files;
        size_t n;
        uint64_t total;
        assert_int_equal(mpk_index_parse(text, len, path, &a, &names, &files, &n, &total, &err), MPK_OK);
        snprintf(src, sizeof src, "%s/%zu-src", dir, k);
        snprintf(dst, sizeof dst, "%s/%zu-dst", dir, k);
        mkdir(src, 0755);
        /* one file per distinct shard name, with exactly the tensors the index gives it */
        mpk_tensor_info *ts = calloc(n, sizeof *ts);
        const void **data = calloc(n, sizeof *data);
        bool *done = calloc(n, 1);
        for (size_t i = 0; i < n; i++) {
            if (done[i])
                continue;
            size_t m = 0;
            for (size_t j = i; j < n; j++)
                if (!done[j] && strcmp(files[j], files[i]) == 0) {
                    ts[m] = scaled(names[j]);
                    data[m++] = zeros;
                    done[j] = true;
                }
            char *sp = tu_join(src, files[i]);
            assert_int_equal(mpk_st_write_file(sp, ts, data, m, NULL, 0, &err), MPK_OK);
            free(sp);
        }
        char *ip = tu_join(src, "model.safetensors.index.json");
        assert_int_equal(mpk_write_file(ip, text, len, false, &err), MPK_OK);
        free(ip);
        snprintf(path, sizeof path, "%s/%s/config.json", tu_material(), pairs[k].dir);
        char *cfg_text, *cp = tu_join(src, "config.json");
        size_t cfg_len;
        assert_int_equal(mpk_read_file(path, &cfg_text, &cfg_len, &err), MPK_OK);
        assert_int_equal(mpk_write_file(cp, cfg_text, cfg_len, false, &err), MPK_OK);
        free(cp);
        free(cfg_text);
        /* pack with --preset auto */
        mpk_ckpt *c;
        mpk_model_config cfg;
        mpk_spec *s;
        mpk_plan *p;
        assert_int_equal(mpk_ckpt_open(src, &c, &err), MPK_OK);
        assert_int_equal(mpk_config_load(src, &cfg, &err), MPK_OK);
        if (!pairs[k].preset) { /* refused, naming the architecture and the way out */
            assert_int_equal(mpk_preset_load("auto", &cfg, &s, &err), MPK_E_NOT_UNDERSTOOD);
            assert_non_null(strstr(err.msg, "DeepseekOCR2ForCausalLM"));
            assert_non_null(strstr(err.msg, "Write a spec for it")); /* (the CLI adds --spec, Python spec=) */
            mpk_config_free(&cfg);
            mpk_ckpt_close(c);
            free(ts);
            free(data);
            free(done);
            mpk_arena_free(a);
            free(text);
            tu_rmrf(src);
            continue;
        }
        if (mpk_preset_load("auto", &cfg, &s, &err) != MPK_OK)
            fail_msg("%s: %s", pairs[k].dir, err.msg);
        assert_string_equal(s->name, pairs[k].preset);
        mpk_plan_opts po = {.max_shard_size = 5000000000ull, .cfg = &cfg};
        if (mpk_plan_build(c, s, &po, &p, &err) != MPK_OK)
            fail_msg("%s: %s", pairs[k].dir, err.msg);
        mpk_exec_opts eo = {.threads = 2, .mem = 64u << 20, .use_copy_range = true};
        mpk_exec_stats st;
        if (mpk_exec(p, dst, &eo, &st, &err) != MPK_OK)
            fail_msg("%s: %s", pairs[k].dir, err.msg);
        /* the output holds exactly the expected names */
        mpk_ckpt *d;
        assert_int_equal(mpk_ckpt_open(dst, &d, &err), MPK_OK);
        mpk_strmap want;
        assert_int_equal(mpk_strmap_init(&want, n), MPK_OK);
        char (*exp)[256] = calloc(n, 256);
        size_t n_want = 0;
        for (size_t i = 0; i < n; i++) {
            char renamed[256];
            if (!strcmp(pairs[k].preset, "deepseek_ocr2"))
                ocr2_renamed(names[i], renamed, sizeof renamed);
            else
                snprintf(renamed, sizeof renamed, "%s", names[i]);
            expected_name(renamed, exp[n_want], 256);
            if (!mpk_strmap_put(&want, exp[n_want], strlen(exp[n_want]), i, NULL))
                n_want++;
        }
        assert_int_equal(d->n_tensors, n_want);
        for (size_t i = 0; i < n_want; i++)
            if (!mpk_ckpt_find(d, exp[i]))
                fail_msg("%s: expected '%s' in the packed output", pairs[k].dir, exp[i]);
        assert_true(n_want < n); /* experts were packed */
        if (strcmp(pairs[k].preset, "gpt_oss") == 0) { /* transformers v5's runtime shapes */
            const mpk_ckpt_tensor *gu = mpk_ckpt_find(d, "model.layers.23.mlp.experts.gate_up_proj");
            const mpk_ckpt_tensor *dn = mpk_ckpt_find(d, "model.layers.23.mlp.experts.down_proj");
            int64_t wg[3] = {2, 64, 64}, wd[3] = {2, 32, 64};
            assert_non_null(gu);
            assert_non_null(dn);
            assert_int_equal(gu->info->dtype, MPK_DTYPE_BF16);
            assert_memory_equal(gu->info->shape, wg, sizeof wg);
            assert_memory_equal(dn->info->shape, wd, sizeof wd);
        }
        mpk_strmap_free(&want);
        free(exp);
        mpk_ckpt_close(d);
        mpk_plan_free(p);
        mpk_spec_free(s);
        mpk_config_free(&cfg);
        mpk_ckpt_close(c);
        free(ts);
        free(data);
        free(done);
        mpk_arena_free(a);
        free(text);
        tu_rmrf(src);
        tu_rmrf(dst);
    }
    tu_rmrf(dir);
}

int main(void)
{
    if (!tu_material()) {
        fprintf(stderr, "MPK_MATERIAL not set or missing: skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_real_pairs_pack)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
