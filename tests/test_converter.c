/* test_converter.c — specs, presets, plan, streaming pack/unpack against plain-loop
 * expectations, and every conversion error through the CLI (exit 1, nothing at DST). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_exec.h"
#include "testutil.h"
#include "ckptutil.h"

#define read_tensor cu_read_tensor
#define exists cu_exists
#define assert_same_ckpt cu_assert_same_ckpt

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { L = 2, E = 4, H = 16, I = 8 };

static mpk_status convert(const char *src, const char *dst, const char *preset, bool reverse,
                          const mpk_exec_opts *eo_in, uint64_t max_shard, mpk_error *err)
{
    mpk_ckpt *c = NULL;
    mpk_model_config cfg = {0};
    mpk_spec *s = NULL, *r = NULL;
    mpk_plan *p = NULL;
    mpk_status st = mpk_ckpt_open(src, &c, err);
    if (st == MPK_OK)
        st = mpk_config_load(c->dir, &cfg, err);
    if (st == MPK_OK)
        st = mpk_preset_load(preset, &cfg, &s, err);
    if (st == MPK_OK && reverse) {
        st = mpk_spec_reverse(s, &r, err);
        if (st == MPK_OK)
            s = r;
    }
    if (st == MPK_OK) {
        mpk_plan_opts po = {.max_shard_size = max_shard, .cfg = &cfg};
        st = mpk_plan_build(c, s, &po, &p, err);
    }
    if (st == MPK_OK) {
        mpk_exec_opts eo = eo_in ? *eo_in : (mpk_exec_opts){.threads = 2, .mem = 64u << 20, .use_copy_range = true};
        mpk_exec_stats stats;
        st = mpk_exec(p, dst, &eo, &stats, err);
    }
    mpk_plan_free(p);
    mpk_spec_free(s);
    mpk_config_free(&cfg);
    mpk_ckpt_close(c);
    return st;
}

/* How each preset names its per-expert and packed tensors (%d: layer, then expert). */
static const struct {
    const char *preset, *gate, *up, *down, *packed_gu, *packed_down;
    bool transposed_source; /* qwen3_vl_moe: source is already fused, [E,H,2I] / [E,I,H] */
} layouts[] = {
    {"mixtral", "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
     "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
     "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", "model.layers.%d.mlp.experts.gate_up_proj",
     "model.layers.%d.mlp.experts.down_proj", false},
    {"minimax", "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
     "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
     "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", "model.layers.%d.mlp.experts.gate_up_proj",
     "model.layers.%d.mlp.experts.down_proj", false},
    {"phimoe", "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
     "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
     "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", "model.layers.%d.mlp.experts.gate_up_proj",
     "model.layers.%d.mlp.experts.down_proj", false},
#define QWEN(p, pre)                                                                              \
    {p, pre ".%d.mlp.experts.%d.gate_proj.weight", pre ".%d.mlp.experts.%d.up_proj.weight",         \
     pre ".%d.mlp.experts.%d.down_proj.weight", pre ".%d.mlp.experts.gate_up_proj",                 \
     pre ".%d.mlp.experts.down_proj", false}
    QWEN("qwen2_moe", "model.layers"),
    QWEN("qwen3_moe", "model.layers"),
    QWEN("deepseek_v2", "model.layers"),
    QWEN("deepseek_v3", "model.layers"),
    QWEN("glm4_moe", "model.layers"),
    QWEN("ernie4_5_moe", "model.layers"),
    QWEN("qwen3_5_moe", "model.language_model.layers"),
    {"jamba", "model.layers.%d.feed_forward.experts.%d.gate_proj.weight",
     "model.layers.%d.feed_forward.experts.%d.up_proj.weight",
     "model.layers.%d.feed_forward.experts.%d.down_proj.weight",
     "model.layers.%d.feed_forward.experts.gate_up_proj", "model.layers.%d.feed_forward.experts.down_proj",
     false},
    {"qwen3_vl_moe", NULL, NULL, NULL, "model.language_model.layers.%d.mlp.experts.gate_up_proj",
     "model.language_model.layers.%d.mlp.experts.down_proj", true},
};

static void check_packed_per_expert(const mpk_ckpt *src, const mpk_ckpt *dst, size_t k)
{
    char n[256];
    for (int l = 0; l < L; l++) {
        snprintf(n, sizeof n, layouts[k].packed_gu, l);
        const mpk_ckpt_tensor *t;
        uint16_t *gu = (uint16_t *)read_tensor(dst, n, &t);
        assert_int_equal(t->info->ndim, 3);
        assert_int_equal(t->info->shape[0], E);
        assert_int_equal(t->info->shape[1], 2 * I);
        assert_int_equal(t->info->shape[2], H);
        snprintf(n, sizeof n, layouts[k].packed_down, l);
        uint16_t *dn = (uint16_t *)read_tensor(dst, n, &t);
        assert_int_equal(t->info->shape[1], H);
        assert_int_equal(t->info->shape[2], I);
        for (int e = 0; e < E; e++) {
            snprintf(n, sizeof n, layouts[k].gate, l, e);
            uint16_t *g = (uint16_t *)read_tensor(src, n, NULL);
            snprintf(n, sizeof n, layouts[k].up, l, e);
            uint16_t *u = (uint16_t *)read_tensor(src, n, NULL);
            snprintf(n, sizeof n, layouts[k].down, l, e);
            uint16_t *d = (uint16_t *)read_tensor(src, n, NULL);
            /* rows [0, I) of expert e are gate, rows [I, 2I) are up */
            for (int r = 0; r < 2 * I; r++)
                for (int c = 0; c < H; c++) {
                    uint16_t want = r < I ? g[r * H + c] : u[(r - I) * H + c];
                    if (gu[(e * 2 * I + r) * H + c] != want)
                        fail_msg("%s layer %d expert %d gate_up[%d][%d] wrong", layouts[k].preset, l, e, r, c);
                }
            for (int r = 0; r < H * I; r++)
                assert_int_equal(dn[e * H * I + r], d[r]);
            free(g);
            free(u);
            free(d);
        }
        free(gu);
        free(dn);
    }
}

static void check_packed_transposed(const mpk_ckpt *src, const mpk_ckpt *dst, size_t k)
{
    char n[256];
    for (int l = 0; l < L; l++) {
        for (int which = 0; which < 2; which++) {
            snprintf(n, sizeof n, which ? layouts[k].packed_down : layouts[k].packed_gu, l);
            const mpk_ckpt_tensor *ts, *td;
            uint16_t *s = (uint16_t *)read_tensor(src, n, &ts), *d = (uint16_t *)read_tensor(dst, n, &td);
            int64_t A = ts->info->shape[1], B = ts->info->shape[2];
            assert_int_equal(td->info->shape[1], B);
            assert_int_equal(td->info->shape[2], A);
            assert_int_equal(A, which ? I : H);
            for (int e = 0; e < E; e++)
                for (int64_t i = 0; i < A; i++)
                    for (int64_t j = 0; j < B; j++)
                        assert_int_equal(d[(e * B + j) * A + i], s[(e * A + i) * B + j]);
            free(s);
            free(d);
        }
    }
}

static void test_every_preset_roundtrip(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_conv_XXXXXX";
    assert_non_null(mkdtemp(dir));
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++) {
        char src[512], packed[512], back[512];
        snprintf(src, sizeof src, "%s/%s-src", dir, layouts[k].preset);
        snprintf(packed, sizeof packed, "%s/%s-packed", dir, layouts[k].preset);
        snprintf(back, sizeof back, "%s/%s-back", dir, layouts[k].preset);
        mpk_synth_opts so = {.arch = layouts[k].preset, .layers = L, .experts = E, .hidden = H,
                             .intermediate = I, .vocab = 32, .dtype = MPK_DTYPE_BF16, .shards = 3, .seed = 7};
        mpk_error err = {0};
        if (mpk_synth(&so, src, &err) != MPK_OK)
            fail_msg("synth %s: %s", layouts[k].preset, err.msg);
        /* auto-detect the preset from config.json */
        if (convert(src, packed, "auto", false, NULL, 4000, &err) != MPK_OK)
            fail_msg("pack %s: %s", layouts[k].preset, err.msg);
        mpk_ckpt *s, *d;
        assert_int_equal(mpk_ckpt_open(src, &s, &err), MPK_OK);
        assert_int_equal(mpk_ckpt_open(packed, &d, &err), MPK_OK);
        assert_true(d->n_shards > 1); /* 4 kB shards */
        assert_true(d->has_index);
        if (layouts[k].transposed_source) {
            check_packed_transposed(s, d, k);
            assert_int_equal(d->n_tensors, s->n_tensors);
        } else {
            check_packed_per_expert(s, d, k);
            assert_int_equal(d->n_tensors, s->n_tensors - (size_t)(3 * L * E) + (size_t)(2 * L));
            assert_int_equal(mpk_detect_layout(d), MPK_LAYOUT_PACKED);
            assert_int_equal(mpk_detect_layout(s), MPK_LAYOUT_PER_EXPERT);
        }
        mpk_ckpt_close(s);
        mpk_ckpt_close(d);
        if (convert(packed, back, layouts[k].preset, true, NULL, 0, &err) != MPK_OK)
            fail_msg("unpack %s: %s", layouts[k].preset, err.msg);
        assert_same_ckpt(src, back);
        /* config.json came along */
        char cfgp[600];
        snprintf(cfgp, sizeof cfgp, "%s/config.json", back);
        assert_true(exists(cfgp));
    }
    tu_rmrf(dir);
}

/* Adds the n bytes at src_off (source file) written at dst_off (destination file) to the
 * page-phase tallies of the destination shard: [0] bytes at the same offset within a page,
 * cls[k] the bytes a data start of k * 8 modulo 4096 would have aligned. */
static void tally(uint64_t src_off, uint64_t dst_off, uint64_t data_start, uint64_t n, uint64_t *same,
                  uint64_t *cls)
{
    if (src_off % 4096 == dst_off % 4096)
        *same += n;
    uint64_t k = (src_off + 4096 * 4096 - (dst_off - data_start)) % 4096;
    if (k % 8 == 0)
        cls[k / 8] += n;
}

/* Makes the temporary directory dir (a mkdtemp template) and names dir/src and dir/dst. */
static void src_dst_dirs(char *dir, char src[256], char dst[256])
{
    assert_non_null(mkdtemp(dir));
    snprintf(src, 256, "%s/src", dir);
    snprintf(dst, 256, "%s/dst", dir);
}

/* The executor pads each output header so that the data starts where the most copied bytes
 * keep their offset within a page (in-kernel copies between different offsets are slower):
 * checked against tallies made here from the two files' headers alone. */
static void test_output_page_alignment(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_conv_XXXXXX", src[256], dst[256];
    src_dst_dirs(dir, src, dst);
    /* expert matrices of 32 x 64 BF16 = 4 KiB; q/k norms of 32 bytes shift the phase */
    mpk_synth_opts so = {.arch = "qwen3_moe", .layers = 3, .experts = 8, .hidden = 64, .intermediate = 32,
                         .vocab = 64, .dtype = MPK_DTYPE_BF16, .shards = 3, .seed = 5};
    mpk_error err = {0};
    assert_int_equal(mpk_synth(&so, src, &err), MPK_OK);
    assert_int_equal(convert(src, dst, "qwen3_moe", false, NULL, 150000, &err), MPK_OK);
    mpk_ckpt *s, *d;
    assert_int_equal(mpk_ckpt_open(src, &s, &err), MPK_OK);
    assert_int_equal(mpk_ckpt_open(dst, &d, &err), MPK_OK);
    assert_true(d->n_shards >= 2);
    uint64_t(*cls)[512] = calloc(d->n_shards, sizeof *cls), *same = calloc(d->n_shards, sizeof *same);
    for (size_t i = 0; i < d->n_tensors; i++) {
        const mpk_ckpt_tensor *t = &d->tensors[i];
        uint64_t ds = d->shards[t->shard].header->data_start;
        const mpk_ckpt_tensor *st = mpk_ckpt_find(s, t->info->name);
        if (st) { /* passed through */
            tally(st->file_offset, t->file_offset, ds, t->nbytes, &same[t->shard], cls[t->shard]);
            continue;
        }
        int l;
        char what[32];
        assert_int_equal(sscanf(t->info->name, "model.layers.%d.mlp.experts.%31s", &l, what), 2);
        bool gu = strcmp(what, "gate_up_proj") == 0;
        const uint64_t slice = 32 * 64 * 2;
        for (int e = 0; e < 8; e++)
            for (int part = 0; part < (gu ? 2 : 1); part++) {
                char n[128];
                snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.%s.weight", l, e,
                         gu ? (part ? "up_proj" : "gate_proj") : "down_proj");
                const mpk_ckpt_tensor *x = mpk_ckpt_find(s, n);
                assert_non_null(x);
                tally(x->file_offset, t->file_offset + ((uint64_t)e * (gu ? 2 : 1) + (uint64_t)part) * slice, ds,
                      slice, &same[t->shard], cls[t->shard]);
            }
    }
    for (size_t sh = 0; sh < d->n_shards; sh++) {
        uint64_t best = 0;
        for (int k = 0; k < 512; k++)
            best = cls[sh][k] > best ? cls[sh][k] : best;
        assert_true(best > 0);
        assert_int_equal(same[sh], best); /* no other data start would align more bytes */
    }
    free(cls);
    free(same);
    mpk_ckpt_close(s);
    mpk_ckpt_close(d);
    tu_rmrf(dir);
}

static void test_exec_modes_agree(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_conv_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[256], a[256], b[256], c[256];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(c, sizeof c, "%s/c", dir);
    mpk_synth_opts so = {.arch = "qwen3_moe", .layers = 3, .experts = 6, .hidden = 64, .intermediate = 32,
                         .vocab = 64, .dtype = MPK_DTYPE_F32, .shards = 2, .seed = 3};
    mpk_error err = {0};
    assert_int_equal(mpk_synth(&so, src, &err), MPK_OK);
    mpk_exec_opts cfr = {.threads = 2, .mem = 64u << 20, .use_copy_range = true};
    mpk_exec_opts rd = {.threads = 1, .mem = 1u << 20, .use_copy_range = false, .io = MPK_IO_PREAD};
    mpk_exec_opts ur = {.threads = 2, .mem = 1u << 20, .use_copy_range = false, .io = MPK_IO_AUTO};
    assert_int_equal(convert(src, a, "qwen3_moe", false, &cfr, 0, &err), MPK_OK);
    assert_int_equal(convert(src, b, "qwen3_moe", false, &rd, 0, &err), MPK_OK);
    assert_int_equal(convert(src, c, "qwen3_moe", false, &ur, 0, &err), MPK_OK);
    /* the same bytes whichever way they were moved */
    assert_int_equal(tu_sh("cmp -s %s/model.safetensors %s/model.safetensors", a, b), 0);
    assert_int_equal(tu_sh("cmp -s %s/model.safetensors %s/model.safetensors", a, c), 0);
    /* DST exists: refused, then replaced with force */
    assert_int_equal(convert(src, a, "qwen3_moe", false, &cfr, 0, &err), MPK_E_DST_EXISTS);
    cfr.force = true;
    assert_int_equal(convert(src, a, "qwen3_moe", false, &cfr, 100000, &err), MPK_OK);
    char ix[300];
    snprintf(ix, sizeof ix, "%s/model.safetensors.index.json", a);
    assert_true(exists(ix));
    tu_rmrf(dir);
}

/* ---------------------------------------------------------------- specs */

static const char *good_spec =
    "{\"name\":\"t\",\"converters\":[{\"sources\":[\"x.{e}.g\",\"x.{e}.u\"],\"target\":\"x.gu\","
    "\"ops\":[{\"op\":\"merge\",\"dim\":0},{\"op\":\"concat\",\"dim\":1}]}]}";

static void test_spec_reverse(void **state)
{
    (void)state;
    mpk_spec *s, *r;
    mpk_error err = {0};
    assert_int_equal(mpk_spec_parse(good_spec, strlen(good_spec), "t.json", &s, &err), MPK_OK);
    assert_string_equal(s->rules[0].list_capture, "e");
    assert_true(s->rules[0].list_in_sources);
    assert_int_equal(mpk_spec_reverse(s, &r, &err), MPK_OK);
    /* [merge(0), concat(1)] reverses to [chunk(1, 2), split(0)] */
    assert_int_equal(r->rules[0].n_ops, 2);
    assert_int_equal(r->rules[0].ops[0].kind, MPK_OP_CHUNK);
    assert_int_equal(r->rules[0].ops[0].dim, 1);
    assert_int_equal(r->rules[0].ops[0].chunks, 2);
    assert_int_equal(r->rules[0].ops[1].kind, MPK_OP_SPLIT);
    assert_int_equal(r->rules[0].ops[1].dim, 0);
    assert_int_equal(r->rules[0].n_sources, 1);
    assert_int_equal(r->rules[0].n_targets, 2);
    assert_false(r->rules[0].list_in_sources);
    mpk_spec_free(r); /* owns s */
}

static void test_spec_errors_name_json_path(void **state)
{
    (void)state;
    static const struct {
        const char *json, *path;
    } bad[] = {
        {"[1]", "$:"},
        {"{\"converters\":[]}", "$.name"},
        {"{\"name\":\"t\"}", "$.converters"},
        {"{\"name\":\"t\",\"converters\":[{\"target\":\"a\",\"ops\":[]}]}", "$.converters[0].sources"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a.{e}\"],\"target\":\"a\",\"ops\":[{\"op\":\"merge\"}]}]}",
         "$.converters[0].ops[0]: missing \"dim\""},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a.{e}\"],\"target\":\"a\",\"ops\":[{\"op\":\"fold\",\"dim\":0}]}]}",
         "$.converters[0].ops[0]: unknown op 'fold'"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a\"],\"target\":\"b\",\"ops\":[]},"
         "{\"sources\":[\"a.{e}.{f}\"],\"target\":\"b\",\"ops\":[]}]}",
         "$.converters[1]: at most one"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a.{e\"],\"target\":\"b\",\"ops\":[]}]}",
         "$.converters[0].sources[0]"},
        {"{\"name\":\"t\",\"renames\":[{\"from\":\"\"}],\"converters\":[]}", "$.renames[0]"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a\"],\"target\":\"b\",\"ops\":[{\"op\":\"transpose\",\"dim\":1,\"dim2\":1}]}]}",
         "$.converters[0].ops[0]: transpose needs two different dims"},
        /* numbers are range-checked before any conversion (1e300 cast to int64 is undefined) */
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a\"],\"target\":\"b\",\"ops\":[{\"op\":\"reshape\",\"shape\":[1e300,1]}]}]}",
         "$.converters[0].ops[0].shape: must hold integers from -1 to 2^53"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a\"],\"target\":\"b\",\"ops\":[{\"op\":\"transpose\",\"dim\":1e300,\"dim2\":1}]}]}",
         "$.converters[0].ops[0]: \"dim\" must be an integer"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a\"],\"target\":\"b\",\"ops\":[{\"op\":\"transpose\",\"dim\":-1e300,\"dim2\":1}]}]}",
         "$.converters[0].ops[0]: \"dim\" must be an integer"},
        /* the reference's grammar: a BOM, an escaped NUL, a leading zero */
        {"\xEF\xBB\xBF{}", "$: the spec starts with a byte-order mark"},
        {"{\"name\":\"t\\u0000x\",\"converters\":[]}", "$: the spec has an escaped NUL"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a\"],\"target\":\"b\",\"ops\":[{\"op\":\"chunk\",\"dim\":01}]}]}",
         "$: the spec has a malformed number"},
        /* a partition needs a list on one side and a pattern per part on the other */
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a.{e}\"],\"target\":\"b\",\"partition\":true,\"ops\":[]}]}",
         "$.converters[0].partition: needs a list {capture}"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a\"],\"targets\":[\"b\",\"c\"],\"partition\":true,\"ops\":[]}]}",
         "$.converters[0].partition: needs a list {capture}"},
        {"{\"name\":\"t\",\"converters\":[{\"sources\":[\"a.{e}\"],\"targets\":[\"b\",\"c\"],\"partition\":1,\"ops\":[]}]}",
         "$.converters[0].partition: must be true or false"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mpk_spec *s = NULL;
        mpk_error err = {0};
        assert_int_equal(mpk_spec_parse(bad[i].json, strlen(bad[i].json), "bad.json", &s, &err), MPK_E_SPEC);
        if (!strstr(err.msg, bad[i].path) || !strstr(err.msg, "bad.json"))
            fail_msg("case %zu: message '%s' lacks '%s'", i, err.msg, bad[i].path);
        assert_null(s);
    }
}

static void test_pattern_match(void **state)
{
    (void)state;
    mpk_spec *s;
    mpk_error err = {0};
    assert_int_equal(mpk_spec_parse(good_spec, strlen(good_spec), "t", &s, &err), MPK_OK);
    mpk_capture caps[8];
    int n;
    size_t a, b;
    /* inside a longer name, at segment boundaries only */
    assert_true(mpk_pattern_match(&s->rules[0].sources[0], "m.layers.3.x.17.g.weight", caps, &n, &a, &b));
    assert_int_equal(a, 11);
    assert_int_equal(b, 17);
    assert_int_equal(n, 1);
    assert_int_equal(caps[0].len, 2);
    assert_memory_equal(caps[0].val, "17", 2);
    assert_false(mpk_pattern_match(&s->rules[0].sources[0], "m.yx.1.g", caps, &n, &a, &b));
    assert_false(mpk_pattern_match(&s->rules[0].sources[0], "x.1.gg", caps, &n, &a, &b));
    assert_false(mpk_pattern_match(&s->rules[0].sources[0], "x..g", caps, &n, &a, &b));
    mpk_spec_free(s);
    assert_int_equal(mpk_preset_load("nope", NULL, &s, &err), MPK_E_PRESET);
    mpk_model_config cfg = {.found = true, .model_type = "llama"};
    assert_int_equal(mpk_preset_load("auto", &cfg, &s, &err), MPK_E_PRESET);
    assert_non_null(strstr(err.msg, "llama"));
    mpk_model_config k2 = {.found = true, .model_type = "kimi_k2"};
    assert_int_equal(mpk_preset_load("auto", &k2, &s, &err), MPK_OK);
    assert_string_equal(s->name, "deepseek_v3");
    mpk_spec_free(s);
}

/* ---------------------------------------------------------------- CLI errors */

static const char *moepack(void)
{
    const char *m = getenv("MOEPACK");
    return m ? m : "build/moepack";
}

/* Runs moepack with args; asserts the exit code, that DST (if any) does not exist afterwards
 * and that stderr names what it should. */
static void cli_fails(const char *args, const char *dst, int want_rc, const char *want_msg)
{
    char log[] = "/tmp/mpk_err_XXXXXX";
    int fd = mkstemp(log);
    close(fd);
    int rc = tu_sh("%s %s >/dev/null 2>%s", moepack(), args, log);
    char *msg = NULL;
    size_t len;
    mpk_error err;
    mpk_read_file(log, &msg, &len, &err);
    unlink(log);
    if (rc != want_rc || (want_msg && (!msg || !strstr(msg, want_msg))))
        fail_msg("moepack %s: rc %d (want %d), stderr: %s (want '%s')", args, rc, want_rc,
                 msg ? msg : "", want_msg ? want_msg : "");
    if (dst && exists(dst))
        fail_msg("moepack %s left %s behind", args, dst);
    free(msg);
}

static void write_small(const char *dir, int experts, const char *skip, mpk_dtype dtype_of_e1_up,
                        int64_t up_rows_e1)
{
    mkdir(dir, 0755);
    char names[64][96];
    mpk_tensor_info ts[64];
    const void *data[64];
    static uint16_t buf[4096];
    int n = 0;
    for (int e = 0; e < experts; e++) {
        const char *kinds[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3; k++) {
            snprintf(names[n], sizeof names[n], "model.layers.7.mlp.experts.%d.%s.weight", e, kinds[k]);
            if (skip && strcmp(skip, names[n]) == 0)
                continue;
            ts[n] = (mpk_tensor_info){.name = names[n], .dtype = MPK_DTYPE_BF16, .ndim = 2, .shape = {4, 8}};
            if (e == 1 && k == 1) {
                ts[n].dtype = dtype_of_e1_up;
                ts[n].shape[0] = up_rows_e1;
            }
            data[n] = buf;
            n++;
        }
    }
    char *p = tu_join(dir, "model.safetensors");
    mpk_error err = {0};
    assert_int_equal(mpk_st_write_file(p, ts, data, (size_t)n, NULL, 0, &err), MPK_OK);
    free(p);
    p = tu_join(dir, "config.json");
    tu_write(p, "{\"model_type\": \"qwen3_moe\"}");
    free(p);
}

static void test_cli_errors(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_cli_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[300], dst[300], args[2048];
    snprintf(dst, sizeof dst, "%s/out", dir);
    /* a hole in the experts: layer 7 has experts 0-6 and 8-9 */
    snprintf(src, sizeof src, "%s/hole", dir);
    write_small(src, 10, "model.layers.7.mlp.experts.7.up_proj.weight", MPK_DTYPE_BF16, 4);
    snprintf(args, sizeof args, "pack %s %s", src, dst);
    cli_fails(args, dst, 1, "expert 7 is missing");
    cli_fails(args, dst, 1, "have expert 0-6, 8-9 of 10");
    /* a bad option value names the option, whether given as --opt=V or --opt V */
    snprintf(args, sizeof args, "synth --quant mxfp4 %s", dst);
    cli_fails(args, dst, 2, "bad value 'mxfp4' for --quant");
    snprintf(args, sizeof args, "synth --layers=0 %s", dst);
    cli_fails(args, dst, 2, "bad value '0' for --layers");
    /* shape mismatch between experts */
    snprintf(src, sizeof src, "%s/shape", dir);
    write_small(src, 3, NULL, MPK_DTYPE_BF16, 5);
    snprintf(args, sizeof args, "pack %s %s", src, dst);
    cli_fails(args, dst, 1, "merge: item 1 has shape [5, 8]");
    /* dtype mismatch */
    snprintf(src, sizeof src, "%s/dtype", dir);
    write_small(src, 3, NULL, MPK_DTYPE_F16, 4);
    snprintf(args, sizeof args, "pack %s %s", src, dst);
    cli_fails(args, dst, 1, "item 1 is F16");
    /* unknown preset */
    snprintf(src, sizeof src, "%s/ok", dir);
    write_small(src, 3, NULL, MPK_DTYPE_BF16, 4);
    snprintf(args, sizeof args, "pack %s %s --preset nosuch", src, dst);
    cli_fails(args, dst, 2, "unknown preset 'nosuch'"); /* a usage error (issue 46) */
    /* malformed spec names the JSON path */
    char spec[300];
    snprintf(spec, sizeof spec, "%s/spec.json", dir);
    tu_write(spec, "{\"name\":\"x\",\"converters\":[{\"sources\":\"a.{e}\",\"target\":\"b\",\"ops\":[{\"op\":\"merge\",\"dim\":-1}]}]}");
    snprintf(args, sizeof args, "convert %s %s --spec %s", src, dst, spec);
    cli_fails(args, dst, 1, "$.converters[0].ops[0]: \"dim\" must be an integer");
    /* DST exists (and is left alone) */
    mkdir(dst, 0755);
    snprintf(args, sizeof args, "pack %s %s", src, dst);
    cli_fails(args, NULL, 1, "destination exists");
    assert_true(exists(dst));
    rmdir(dst);
    /* DST unwritable: its parent is a regular file (outside SRC) */
    char bad_dst[400], plain[300];
    snprintf(plain, sizeof plain, "%s/plain", dir);
    tu_write(plain, "x");
    snprintf(bad_dst, sizeof bad_dst, "%s/out", plain);
    snprintf(args, sizeof args, "pack %s %s", src, bad_dst);
    cli_fails(args, bad_dst, 1, "temporary directory");
    /* DST inside SRC: refused as a usage error before anything is written */
    snprintf(bad_dst, sizeof bad_dst, "%s/config.json/out", src);
    snprintf(args, sizeof args, "pack %s %s", src, bad_dst);
    cli_fails(args, bad_dst, 2, "lies inside the source");
    /* a source shard truncated mid-way */
    char trunc[300];
    snprintf(trunc, sizeof trunc, "%s/trunc", dir);
    write_small(trunc, 3, NULL, MPK_DTYPE_BF16, 4);
    assert_int_equal(tu_sh("truncate -s -10 %s/model.safetensors", trunc), 0);
    snprintf(args, sizeof args, "pack %s %s", trunc, dst);
    cli_fails(args, dst, 1, "missing bytes");
    /* already packed: pack of a pack */
    char packed[300];
    snprintf(packed, sizeof packed, "%s/packed", dir);
    snprintf(args, sizeof args, "pack -q %s %s", src, packed);
    assert_int_equal(tu_sh("%s %s", moepack(), args), 0);
    snprintf(args, sizeof args, "pack %s %s", packed, dst);
    cli_fails(args, dst, 1, "already in the packed layout");
    /* usage errors exit 2 */
    cli_fails("pack onlyone", NULL, 2, "expected SRC DST");
    cli_fails("pack a b --max-shard-size 5XB", NULL, 2, "bad size");
    cli_fails("frobnicate", NULL, 2, "unknown command");
    assert_int_equal(tu_sh("%s pack --help >/dev/null", moepack()), 0);
    tu_rmrf(dir);
}

static void test_memory_budget(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_conv_XXXXXX", src[256], dst[256];
    src_dst_dirs(dir, src, dst);
    mpk_synth_opts so = {.arch = "qwen3_vl_moe", .layers = 1, .experts = 4, .hidden = 512,
                         .intermediate = 256, .vocab = 32, .dtype = MPK_DTYPE_F32, .shards = 1, .seed = 1};
    mpk_error err = {0};
    assert_int_equal(mpk_synth(&so, src, &err), MPK_OK);
    /* one transposed expert slab is 512 x 512 x 4 = 1 MiB: 2 MiB per thread is not enough */
    mpk_exec_opts eo = {.threads = 1, .mem = 2u << 20, .use_copy_range = true};
    assert_int_equal(convert(src, dst, "qwen3_vl_moe", false, &eo, 0, &err), MPK_E_MEMORY_BUDGET);
    assert_int_equal(err.field, MPK_FIELD_MEM); /* the CLI says --mem, Python mem= */
    assert_false(exists(dst));
    eo.mem = 4u << 20;
    assert_int_equal(convert(src, dst, "qwen3_vl_moe", false, &eo, 0, &err), MPK_OK);
    tu_rmrf(dir);
}

static void test_conflict_and_config_shape(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_conv_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[256];
    snprintf(src, sizeof src, "%s/src", dir);
    write_small(src, 2, NULL, MPK_DTYPE_BF16, 4);
    mpk_ckpt *c;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(src, &c, &err), MPK_OK);
    /* a rename onto the name a converter produces */
    const char *spec = "{\"name\":\"c\",\"renames\":[{\"from\":\"experts.0.down_proj.weight\",\"to\":\"experts.gu\"}],"
                       "\"converters\":[{\"sources\":[\"experts.{e}.gate_proj.weight\"],\"target\":\"experts.gu\","
                       "\"ops\":[{\"op\":\"merge\",\"dim\":0}]}]}";
    mpk_spec *s;
    assert_int_equal(mpk_spec_parse(spec, strlen(spec), "c", &s, &err), MPK_OK);
    mpk_plan *p;
    /* these specs merge gate_proj alone: the up/down leftovers are passed on purpose */
    mpk_plan_opts po = {.pass_unknown = true};
    assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), MPK_E_CONFLICT);
    mpk_spec_free(s);
    /* a source shape that config.json contradicts */
    const char *vl = "{\"name\":\"v\",\"converters\":[{\"sources\":[\"experts.{expert}.gate_proj.weight\"],"
                     "\"target\":\"experts.g\",\"ops\":[{\"op\":\"merge\",\"dim\":0}],\"source_shape\":[\"I\",\"H\"]}]}";
    assert_int_equal(mpk_spec_parse(vl, strlen(vl), "v", &s, &err), MPK_OK);
    mpk_model_config cfg = {.found = true, .num_experts = 2, .hidden_size = 8, .intermediate_size = 3};
    po.cfg = &cfg;
    assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), MPK_E_SHAPE);
    assert_non_null(strstr(err.msg, "I=3"));
    cfg.intermediate_size = 4;
    assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), MPK_OK);
    mpk_plan_free(p);
    /* config says 3 experts: the missing last one is reported */
    cfg.num_experts = 3;
    assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), MPK_E_EXPERT_MISSING);
    assert_non_null(strstr(err.msg, "expert 2 is missing"));
    mpk_spec_free(s);
    mpk_ckpt_close(c);
    tu_rmrf(dir);
}

/* ---------------------------------------------------------------- nothing half-converted */

/* Issue 46, item 2: a spec that leaves per-expert tensors or their quantization companions
 * behind, or a quantization moepack does not implement, is MPK_E_NOT_UNDERSTOOD naming them
 * (was: a plan with them as plain pass-throughs). pass_unknown plans them, listed in the plan. */
static void test_not_understood(void **state)
{
    (void)state;
    assert_string_equal(mpk_status_str(MPK_E_NOT_UNDERSTOOD), "not-understood");
    char dir[] = "/tmp/mpk_unk_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[256];
    snprintf(src, sizeof src, "%s/src", dir);
    write_small(src, 2, NULL, MPK_DTYPE_BF16, 4);
    mpk_ckpt *c;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(src, &c, &err), MPK_OK);
    /* gate and up merged, down_proj consumed by no rule */
    const char *gu = "{\"name\":\"gu\",\"converters\":[{\"sources\":[\"experts.{expert}.gate_proj.weight\","
                     "\"experts.{expert}.up_proj.weight\"],\"target\":\"experts.gate_up_proj\","
                     "\"ops\":[{\"op\":\"merge\",\"dim\":0},{\"op\":\"concat\",\"dim\":1}]}]}";
    mpk_spec *s;
    assert_int_equal(mpk_spec_parse(gu, strlen(gu), "gu", &s, &err), MPK_OK);
    mpk_plan *p;
    mpk_plan_opts po = {0};
    assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), MPK_E_NOT_UNDERSTOOD);
    assert_null(p);
    assert_non_null(strstr(err.msg, "2 tensor(s)"));
    assert_non_null(strstr(err.msg, "'model.layers.7.mlp.experts.0.down_proj.weight'"));
    assert_non_null(strstr(err.msg, "'model.layers.7.mlp.experts.1.down_proj.weight'"));
    assert_non_null(strstr(err.msg, "no rule consumes"));
    po.pass_unknown = true;
    assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), MPK_OK);
    assert_int_equal(p->n_unknown, 2);
    assert_string_equal(p->unknown[0].name, "model.layers.7.mlp.experts.0.down_proj.weight");
    assert_int_equal(p->n_pass, 2);
    mpk_plan_free(p);
    mpk_spec_free(s);
    /* the same declared a pass-through by the spec: planned, nothing unknown */
    const char *decl = "{\"name\":\"gu\",\"pass\":[\"experts.{expert}.down_proj.weight\"],\"converters\":[{"
                       "\"sources\":[\"experts.{expert}.gate_proj.weight\",\"experts.{expert}.up_proj.weight\"],"
                       "\"target\":\"experts.gate_up_proj\",\"ops\":[{\"op\":\"merge\",\"dim\":0},"
                       "{\"op\":\"concat\",\"dim\":1}]}]}";
    assert_int_equal(mpk_spec_parse(decl, strlen(decl), "decl", &s, &err), MPK_OK);
    po.pass_unknown = false;
    assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), MPK_OK);
    assert_int_equal(p->n_unknown, 0);
    mpk_plan_free(p);
    mpk_spec_free(s);
    /* a quantization moepack does not implement: refused whatever pass_unknown says */
    assert_int_equal(mpk_preset_load("qwen3_moe", NULL, &s, &err), MPK_OK);
    static const struct {
        const char *cfg, *says;
        mpk_status want;
    } q[] = {
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"modelopt\",\"quant_algo\":\"W4A8_AWQ\"}}",
         "'modelopt W4A8_AWQ'", MPK_E_NOT_UNDERSTOOD},
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"modelopt\",\"quant_algo\":\"NVFP4\","
         "\"config_groups\":{\"group_0\":{\"weights\":{\"group_size\":32}}}}}",
         "group_size 32", MPK_E_NOT_UNDERSTOOD},
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"modelopt\",\"quant_algo\":\"NVFP4\","
         "\"config_groups\":{\"group_0\":{\"weights\":{\"group_size\":16}}}}}",
         NULL, MPK_OK},
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"awq\"}}", "'awq'",
         MPK_E_NOT_UNDERSTOOD},
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[1,128]}}",
         "[1,128]", MPK_E_NOT_UNDERSTOOD},
        {"{\"model_type\":\"qwen3_moe\",\"compression_config\":{\"format\":\"pack-quantized\"}}", "compression_config",
         MPK_E_NOT_UNDERSTOOD},
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128, 128]}}",
         NULL, MPK_OK},
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"fp8\"}}", NULL, MPK_OK},
        {"{\"model_type\":\"qwen3_moe\",\"quantization_config\":{\"quant_method\":\"mxfp4\"}}", NULL, MPK_OK},
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        mpk_model_config cfg;
        assert_int_equal(mpk_config_parse(q[i].cfg, strlen(q[i].cfg), "config.json", &cfg, &err), MPK_OK);
        po = (mpk_plan_opts){.cfg = &cfg, .pass_unknown = true};
        assert_int_equal(mpk_plan_build(c, s, &po, &p, &err), q[i].want);
        if (q[i].says)
            assert_non_null(strstr(err.msg, q[i].says));
        mpk_plan_free(p);
        mpk_config_free(&cfg);
    }
    mpk_spec_free(s);
    /* a model type served by presets whose architectures do not list the model's (DeepSeek-OCR-2,
     * deepseek_vl_v2 too, has its own preset since issue 48: an architecture no preset lists) */
    const char *ocr = "{\"model_type\":\"deepseek_vl_v2\",\"architectures\":[\"DeepseekVL9ForCausalLM\"]}";
    mpk_model_config cfg;
    assert_int_equal(mpk_config_parse(ocr, strlen(ocr), "config.json", &cfg, &err), MPK_OK);
    assert_int_equal(mpk_preset_load("auto", &cfg, &s, &err), MPK_E_NOT_UNDERSTOOD);
    assert_non_null(strstr(err.msg, "DeepseekVL9ForCausalLM"));
    assert_non_null(strstr(err.msg, "'deepseek_ocr2'")); /* both presets that have the type */
    assert_non_null(strstr(err.msg, "mixtral"));         /* the presets are listed */
    mpk_config_free(&cfg);
    static const char *const fits[][2] = { /* architecture, the preset auto picks */
        {"DeepseekOCR2ForCausalLM", "deepseek_ocr2"}, {"DeepseekVLV2ForCausalLM", "deepseek_v2"}};
    for (size_t i = 0; i < 2; i++) {
        const char *js = tu_fmt("{\"model_type\":\"deepseek_vl_v2\",\"architectures\":[\"%s\"]}", fits[i][0]);
        assert_int_equal(mpk_config_parse(js, strlen(js), "config.json", &cfg, &err), MPK_OK);
        assert_int_equal(mpk_preset_load("auto", &cfg, &s, &err), MPK_OK);
        assert_string_equal(s->name, fits[i][1]);
        mpk_spec_free(s);
        mpk_config_free(&cfg);
    }
    mpk_ckpt_close(c);
    tu_rmrf(dir);
}

/* ---------------------------------------------------------------- resume after an in-place edit */

/* Reproducer (issue 45, item 6): a pack killed midway, a source shard then rewritten in place
 * with other bytes of the same size and its mtime put back (what `rsync --inplace -t` leaves),
 * and `--resume` said "4 of 4 shard(s) kept": the plan digest covered device, inode, size and
 * mtime, not the ctime no call can set back. The resumed run must not adopt the dead run's
 * shards (its staging directory is removed as a different plan, and it says so) and its output
 * is byte for byte a fresh pack of the edited source. */
static long fault_points_of(const char *dir, const char *args)
{
    assert_int_equal(tu_run(dir, "MOEPACK_FAULT=count", args), 0);
    char *t = tu_slurp(tu_fmt("%s/err", dir));
    assert_non_null(t);
    char *at = strstr(t, "fault points passed: ");
    assert_non_null(at);
    long n = strtol(at + strlen("fault points passed: "), NULL, 10);
    free(t);
    return n;
}

/* Every byte of the data section of the safetensors file at path inverted, in place (the same
 * inode and size), its atime and mtime put back to the nanosecond. */
static void edit_in_place_keep_mtime(const char *path)
{
    struct stat before, after;
    assert_int_equal(stat(path, &before), 0);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char pre[8];
    assert_int_equal(pread(fd, pre, 8, 0), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | pre[i];
    size_t len = (size_t)before.st_size - 8 - (size_t)n;
    unsigned char *b = malloc(len + 1);
    assert_non_null(b);
    assert_int_equal(pread(fd, b, len, (off_t)(8 + n)), (ssize_t)len);
    for (size_t i = 0; i < len; i++)
        b[i] ^= 0xA5;
    assert_int_equal(pwrite(fd, b, len, (off_t)(8 + n)), (ssize_t)len);
    free(b);
    assert_int_equal(fsync(fd), 0);
    close(fd);
    struct timespec ts[2] = {before.st_atim, before.st_mtim};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
    assert_int_equal(stat(path, &after), 0);
    assert_true(after.st_ino == before.st_ino && after.st_size == before.st_size);
    assert_true(after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
}

static void test_resume_after_inplace_edit(void **state)
{
    (void)state;
    char dir[] = "/tmp/mpk_inplace_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *src = tu_fmt("%s/src", dir), *d = tu_fmt("%s/packed", dir), *fresh = tu_fmt("%s/fresh", dir);
    assert_int_equal(tu_sh("%s synth --layers 3 --hidden 128 --intermediate 64 --shards 3 %s >/dev/null", moepack(),
                           src), 0);
    const char *opts = "-q --threads 1 --max-shard-size 200KB";
    char *args = tu_fmt("pack %s %s %s", src, d, opts);
    long n = fault_points_of(dir, args);
    tu_rmrf(d);
    /* killed late: most output shards are journaled complete */
    assert_int_equal(tu_run(dir, tu_fmt("MOEPACK_FAULT=%ld:kill", n - 5), args), 137);
    assert_false(exists(d));
    assert_int_equal(tu_sh("ls -d %s/.packed.moepack-tmp.* >/dev/null 2>&1", dir), 0);
    for (int k = 1; k <= 3; k++)
        edit_in_place_keep_mtime(tu_fmt("%s/model-0000%d-of-00003.safetensors", src, k));
    assert_int_equal(tu_run(dir, "", tu_fmt("%s --resume --json", args)), 0);
    assert_true(tu_err_has(dir, "a different plan: not resumable"));
    char *o = tu_slurp(tu_fmt("%s/out", dir));
    assert_non_null(o);
    assert_non_null(strstr(o, "\"resumed\": false"));
    assert_non_null(strstr(o, "\"shards_kept\": 0"));
    free(o);
    /* the output is a fresh pack of the edited source, byte for byte */
    assert_int_equal(tu_run(dir, "", tu_fmt("pack %s %s %s", src, fresh, opts)), 0);
    assert_int_equal(tu_sh("cd %s && ls *.safetensors > %s/l1 && cd %s && ls *.safetensors > %s/l2 && cmp -s %s/l1 %s/l2 "
                           "&& for f in $(cat %s/l1); do cmp -s %s/$f %s/$f || exit 1; done",
                           d, dir, fresh, dir, dir, dir, dir, d, fresh),
                     0);
    assert_same_ckpt(d, fresh);
    tu_rmrf(dir);
}

/* ---------------------------------------------------------------- header lookups */

/* Issue 45, item 10: unpack of one file of 60,004 tensors took 21 s (pack 0.75 s), at 600k
 * over 10 minutes: mpk_plan_use_layout and the exact-layout shard opening looked each output up
 * with a linear scan of the recorded header, and each claimed unit walked every unit after it
 * for read-ahead. A parsed header now keeps a name map (mpk_st_header.by_name); here it finds
 * what the scan finds, for every tensor, in the header's (offset) order, and nothing for names
 * it does not hold; a header built by hand (no map) still scans. The timings are in
 * bench/RESULTS.md. */
static long scan_find(const mpk_st_header *h, const char *name)
{
    for (size_t i = 0; i < h->n_tensors; i++)
        if (strcmp(h->tensors[i].name, name) == 0)
            return (long)i;
    return -1;
}

static void test_header_name_map(void **state)
{
    (void)state;
    enum { N = 6000 };
    mpk_tensor_info *t = calloc(N, sizeof *t);
    char(*names)[64] = calloc(N, 64);
    assert_non_null(t);
    assert_non_null(names);
    for (int i = 0; i < N; i++) { /* mixed dtypes and sizes: the layout order is not the name order */
        snprintf(names[i], 64, "model.layers.%d.mlp.experts.%d.%s.weight", i / 300, i % 300 / 3,
                 i % 3 == 0 ? "gate_proj" : i % 3 == 1 ? "up_proj" : "down_proj");
        t[i].name = names[i];
        t[i].dtype = i % 2 ? MPK_DTYPE_BF16 : MPK_DTYPE_F32;
        t[i].ndim = 1;
        t[i].shape[0] = 1 + i % 5;
    }
    char *hdr;
    size_t hlen;
    uint64_t dsize;
    mpk_error err = {0};
    assert_int_equal(mpk_st_layout(t, N, NULL, 0, &hdr, &hlen, &dsize, &err), MPK_OK);
    char *file = calloc(1, hlen + dsize);
    assert_non_null(file);
    memcpy(file, hdr, hlen);
    mpk_st_header *h;
    assert_int_equal(mpk_st_parse(file, hlen + dsize, "map", &h, &err), MPK_OK);
    assert_int_equal(h->n_tensors, N);
    assert_int_equal(h->by_name.count, N); /* every name once */
    for (int i = 0; i < N; i++) {
        long k = mpk_st_header_find(h, names[i]);
        assert_true(k >= 0);
        assert_int_equal(k, scan_find(h, names[i]));
        assert_string_equal(h->tensors[k].name, names[i]);
    }
    for (size_t k = 0; k < h->n_tensors; k++) /* each entry maps to itself (offset order) */
        assert_int_equal(mpk_st_header_find(h, h->tensors[k].name), (long)k);
    const char *absent[] = {"", "model", "model.layers.0.mlp.experts.0.gate_proj", "model.layers.0.mlp.experts.0.gate_proj.weightx",
                            "__metadata__"};
    for (size_t a = 0; a < sizeof absent / sizeof *absent; a++) {
        assert_int_equal(mpk_st_header_find(h, absent[a]), -1);
        assert_int_equal(scan_find(h, absent[a]), -1);
    }
    /* a header built by hand (no map): the same answers by scanning */
    mpk_st_header hand = *h;
    memset(&hand.by_name, 0, sizeof hand.by_name);
    for (int i = 0; i < N; i += 97)
        assert_int_equal(mpk_st_header_find(&hand, names[i]), mpk_st_header_find(h, names[i]));
    assert_int_equal(mpk_st_header_find(&hand, "nope"), -1);
    mpk_st_header_free(h);
    /* a duplicate name is refused by the parser, map or not */
    const char *dup = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}";
    size_t dl = strlen(dup);
    char *buf = calloc(1, 8 + dl + 2);
    assert_non_null(buf);
    for (int b = 0; b < 8; b++)
        buf[b] = (char)((uint64_t)dl >> (8 * b));
    memcpy(buf + 8, dup, dl);
    assert_int_equal(mpk_st_parse(buf, 8 + dl + 2, "dup", &h, &err), MPK_E_DUPLICATE_NAME);
    free(buf);
    free(file);
    free(hdr);
    free(names);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_preset_roundtrip),
        cmocka_unit_test(test_exec_modes_agree),
        cmocka_unit_test(test_output_page_alignment),
        cmocka_unit_test(test_spec_reverse),
        cmocka_unit_test(test_spec_errors_name_json_path),
        cmocka_unit_test(test_pattern_match),
        cmocka_unit_test(test_cli_errors),
        cmocka_unit_test(test_memory_budget),
        cmocka_unit_test(test_conflict_and_config_shape),
        cmocka_unit_test(test_not_understood),
        cmocka_unit_test(test_resume_after_inplace_edit),
        cmocka_unit_test(test_header_name_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
