/* test_material.c — real files from ../shared/safetensors-material (exit 77 without it). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_formats.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tensor counts as MANIFEST.md section B states them. */
static const struct {
    const char *file;
    size_t tensors;
    uint64_t header_len;
} real_files[] = {
    {"syoyo-safetensors-cpp/gen_model.safetensors", 2, 136},
    {"mlverse-safetensors/hello.safetensors", 2, 128},
    {"jkrukowski-swift-safetensors/data.safetensors", 1, 60},
    {"huggingface-candle/csm_voices.safetensors", 2, 144},
    {"huggingface-candle/encodec_jfk-codes.safetensors", 1, 72},
    {"anirudh-ak-peft-gpt2/adapter_model.safetensors", 25, 3120},
    {"Tashu014-lora-imdb-distilbert/adapter_model.safetensors", 28, 3840},
    {"dayanidhi04-emotion-distilbert-lora/adapter_model.safetensors", 28, 3848},
    {"abrhaleyarefaine1997-gpt2-tigrinya-lora/adapter_model.safetensors", 72, 9064},
    {"ollama-convert-testdata-minicpm3-4b/model.safetensors", 15, 1536},
    {"CoffeeVampir3-Model-Saving-Test-Repo/model.safetensors", 4, 320},
    {"AliBayatMokhtari-mnist-tinygrad/model.safetensors", 2, 152},
    {"Elyasb14-models/cnn.safetensors", 20, 1624},
    {"Elyasb14-models/mlp.safetensors", 2, 168},
};

static void test_real_files(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof real_files / sizeof real_files[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/safetensors-files/%s", tu_material(), real_files[i].file);
        mpk_st_header *h;
        mpk_error err = {0};
        if (mpk_st_read_header(path, &h, &err) != MPK_OK)
            fail_msg("%s rejected: %s", real_files[i].file, err.msg);
        assert_int_equal(h->n_tensors, real_files[i].tensors);
        assert_int_equal(h->header_len, real_files[i].header_len);
        mpk_st_header_free(h);
        /* the whole-file (buffer) parser agrees with the header reader */
        char *buf;
        size_t len;
        assert_int_equal(mpk_read_file(path, &buf, &len, &err), MPK_OK);
        assert_int_equal(mpk_st_parse(buf, len, path, &h, &err), MPK_OK);
        assert_int_equal(h->n_tensors, real_files[i].tensors);
        mpk_st_header_free(h);
        free(buf);
    }
    /* PEFT adapters carry {"format":"pt"} */
    char path[1024];
    snprintf(path, sizeof path, "%s/safetensors-files/%s", tu_material(), real_files[5].file);
    mpk_st_header *h;
    mpk_error err = {0};
    assert_int_equal(mpk_st_read_header(path, &h, &err), MPK_OK);
    assert_int_equal(h->n_metadata, 1);
    assert_string_equal(h->metadata[0].key, "format");
    assert_string_equal(h->metadata[0].value, "pt");
    mpk_st_header_free(h);
}

static void test_abuse_file_rejected(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path,
             "%s/safetensors-files/syoyo-safetensors-cpp/safetensors_abuse_attempt_1.safetensors",
             tu_material());
    mpk_st_header *h;
    mpk_error err = {0};
    assert_int_equal(mpk_st_read_header(path, &h, &err), MPK_E_HEADER_LENGTH);
    assert_non_null(strstr(err.msg, "1000"));
    assert_non_null(strstr(err.msg, "88-byte"));
}

/* Tensor count and total_size as MANIFEST.md section A states them (0: not stated). */
static const struct {
    const char *file;
    size_t tensors;
    uint64_t total_size;
} indexes[] = {
    {"wizardlm-2-8x22b-mixtral/model.safetensors.index.json", 1739, 281241268224ull},
    {"granite-3.1-1b-a400m-granitemoe/model.safetensors.index.json", 218, 5338513408ull},
    {"gpt-oss-20b/model.safetensors.index.json", 459, 0},
    {"qwen3.5-18b-reap-a3b-qwen3_5_moe/model.safetensors.index.json", 15973, 37087995136ull},
    {"deepseek-ocr-2-deepseek_v2_moe/model.safetensors.index.json", 2707, 0},
    {"qwen3-30b-a3b-qwen3_moe/model.safetensors.index.json.transgqa-modified", 19107,
     61066358784ull},
    {"kimi2-pcl-deepseek_v3-derivative/model.safetensors.index.json", 11967, 2059318195952ull},
};

static void test_real_indexes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof indexes / sizeof indexes[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", tu_material(), indexes[i].file);
        char *text;
        size_t len;
        mpk_error err = {0};
        assert_int_equal(mpk_read_file(path, &text, &len, &err), MPK_OK);
        mpk_arena *a;
        const char **names, **files;
        size_t n;
        uint64_t total;
        if (mpk_index_parse(text, len, path, &a, &names, &files, &n, &total, &err) != MPK_OK)
            fail_msg("%s: %s", indexes[i].file, err.msg);
        assert_int_equal(n, indexes[i].tensors);
        if (indexes[i].total_size)
            assert_int_equal(total, indexes[i].total_size);
        mpk_arena_free(a);
        free(text);
    }
}

int main(void)
{
    if (!tu_material()) {
        fprintf(stderr, "MPK_MATERIAL not set or missing: skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_files),
        cmocka_unit_test(test_abuse_file_rejected),
        cmocka_unit_test(test_real_indexes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
