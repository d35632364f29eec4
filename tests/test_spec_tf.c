/* test_spec_tf.c — "semantics": "transformers" specs (plan/spec_tf.c, plan/rename.c): the
 * regex translation, transformers' renaming order and rules (every rename once, in order; group
 * renames without chaining and with their guard; anchors; back-references; the first occurrence
 * replaced; prefix changes; renames before converters, the first converter wins), the names of a
 * plan and of its reverse, and the refusals (MPK_E_SPEC, MPK_E_NOT_INVERTIBLE). Expected names
 * are written out by hand from transformers' rules (docs/spec.md). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plan_internal.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A names-only checkpoint holding names (NULL-terminated), in a new temporary folder. */
static mpk_ckpt *names_ckpt(const char *const *names, char dir[64])
{
    strcpy(dir, "/tmp/mpk_tf_XXXXXX");
    assert_non_null(mkdtemp(dir));
    size_t cap = 4096, n = 0;
    for (int i = 0; names[i]; i++)
        cap += strlen(names[i]) + 64;
    char *idx = malloc(cap);
    n += (size_t)sprintf(idx, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; names[i]; i++)
        n += (size_t)sprintf(idx + n, "%s\"%s\": \"model-00001-of-00001.safetensors\"", i ? ", " : "", names[i]);
    sprintf(idx + n, "}}");
    char *p = tu_join(dir, "model.safetensors.index.json");
    tu_write(p, idx);
    free(p);
    free(idx);
    mpk_ckpt *c = NULL;
    mpk_error err = {0};
    if (mpk_ckpt_open_names(dir, &c, &err) != MPK_OK)
        fail_msg("open names: %s", err.msg);
    return c;
}

/* Plans names under spec (reversed when asked, config text optional); the status, and on success
 * the output names sorted into out (caller frees the array, not the strings: *keep holds them). */
static mpk_status plan_names(const char *spec, bool reverse, const char *config, const char *const *names,
                             const char *const *known, mpk_error *err, char ***out, size_t *n_out)
{
    mpk_strmap km = {0};
    assert_int_equal(mpk_strmap_init(&km, 64), MPK_OK);
    for (int i = 0; known && known[i]; i++)
        mpk_strmap_put(&km, known[i], strlen(known[i]), (size_t)i, NULL);
    char dir[64];
    mpk_ckpt *c = names_ckpt(names, dir);
    mpk_spec *s = NULL, *r = NULL;
    mpk_model_config cfg = {0};
    if (config)
        assert_int_equal(mpk_config_parse(config, strlen(config), "config.json", &cfg, err), MPK_OK);
    mpk_status st = mpk_spec_parse(spec, strlen(spec), "spec.json", &s, err);
    if (st == MPK_OK && reverse && (st = mpk_spec_reverse(s, &r, err)) == MPK_OK)
        s = r;
    mpk_plan *p = NULL;
    mpk_plan_opts po = {.cfg = &cfg, .known_names = known ? &km : NULL};
    if (st == MPK_OK)
        st = mpk_plan_build(c, s, &po, &p, err);
    if (st == MPK_OK && out) {
        *out = calloc(p->n_outs + 1, sizeof **out);
        for (size_t i = 0; i < p->n_outs; i++)
            (*out)[i] = strdup(p->outs[i].name);
        *n_out = p->n_outs;
    }
    mpk_plan_free(p);
    mpk_spec_free(s);
    mpk_config_free(&cfg);
    mpk_ckpt_close(c);
    mpk_strmap_free(&km);
    tu_rmrf(dir);
    return st;
}

static void free_names(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* The plan's output names are exactly want (any order). */
static void expect_names(const char *spec, bool reverse, const char *config, const char *const *names,
                         const char *const *want)
{
    mpk_error err = {0};
    char **got = NULL;
    size_t n = 0, nw = 0;
    if (plan_names(spec, reverse, config, names, reverse ? want : NULL, &err, &got, &n) != MPK_OK)
        fail_msg("plan: %s", err.msg);
    while (want[nw])
        nw++;
    for (size_t i = 0; i < nw; i++) {
        bool found = false;
        for (size_t k = 0; k < n && !found; k++)
            found = strcmp(got[k], want[i]) == 0;
        if (!found) {
            for (size_t k = 0; k < n; k++)
                print_message("  got %s\n", got[k]);
            fail_msg("no output named '%s'", want[i]);
        }
    }
    assert_int_equal(n, nw);
    free_names(got);
}

static void expect_fail(const char *spec, const char *const *names, mpk_status code, const char *const *msg_has)
{
    mpk_error err = {0};
    assert_int_equal(plan_names(spec, false, NULL, names, NULL, &err, NULL, NULL), code);
    for (int i = 0; msg_has[i]; i++)
        if (!strstr(err.msg, msg_has[i]))
            fail_msg("message '%s' lacks '%s'", err.msg, msg_has[i]);
}

#define SPEC(renames, converters) \
    "{\"name\": \"t\", \"semantics\": \"transformers\", \"renames\": [" renames "], \"converters\": [" converters "]}"
#define MERGE_GU(src_g, src_u, tgt)                                                          \
    "{\"sources\": [\"" src_g "\", \"" src_u "\"], \"target\": \"" tgt "\", \"ops\": [{\"op\": \"merge\", " \
    "\"dim\": 0}, {\"op\": \"concat\", \"dim\": 1}]}"

static void test_regex_translation(void **state)
{
    (void)state;
    mpk_spec s = {.name = "t"};
    mpk_error err = {0};
    const struct mpk_regex *rx;
    regoff_t so, eo;
    const char *g[2];
    size_t gl[2];
    assert_int_equal(plan_regex_compile(&s, "(^|model\\.)layers\\.", "$.x", &rx, &err), MPK_OK);
    /* Python: at 0 the '^' branch fails on "model.", the second takes "model." */
    assert_true(plan_regex_search(rx, "model.layers.0.mlp", &so, &eo, g, gl, 1));
    assert_int_equal(so, 0);
    assert_int_equal(eo, 13);
    assert_int_equal(gl[1], 6);
    assert_memory_equal(g[1], "model.", 6);
    assert_true(plan_regex_search(rx, "layers.2.x", &so, &eo, g, gl, 1)); /* '^': empty group */
    assert_int_equal(so, 0);
    assert_int_equal(eo, 7);
    assert_int_equal(gl[1], 0);
    assert_non_null(g[1]);
    assert_false(plan_regex_search(rx, "vision.encoder.layers.1", &so, &eo, g, gl, 1));
    assert_true(plan_regex_search(rx, "qwen2_model.layers.1", &so, &eo, g, gl, 1)); /* unanchored */
    assert_int_equal(so, 6);
    assert_int_equal(plan_regex_compile(&s, "blocks\\.(\\d+)\\.w", "$.x", &rx, &err), MPK_OK);
    assert_true(plan_regex_search(rx, "a.blocks.12.w", &so, &eo, g, gl, 1));
    assert_int_equal(gl[1], 2);
    assert_false(plan_regex_search(rx, "a.blocks.x.w", &so, &eo, g, gl, 1));
    /* (?:...) is a POSIX group but not a Python one: \1 stays the second parenthesis */
    assert_int_equal(plan_regex_compile(&s, "(?:a|b)\\.(\\d+)", "$.x", &rx, &err), MPK_OK);
    assert_int_equal(plan_regex_groups(rx), 1);
    assert_true(plan_regex_search(rx, "x.b.7", &so, &eo, g, gl, 1));
    assert_memory_equal(g[1], "7", 1);
    char many[200] = "";
    for (int i = 0; i < 33; i++)
        strcat(many, "(?:a)");
    const char *refused[] = {"(?<!model\\.)layers", "^model(?!\\.visual)", "a.*?b", "\\bnorm", many, NULL};
    for (int i = 0; refused[i]; i++) {
        assert_int_equal(plan_regex_compile(&s, refused[i], "$.renames[4]", &rx, &err), MPK_E_SPEC);
        assert_non_null(strstr(err.msg, "$.renames[4]"));
        assert_non_null(strstr(err.msg, refused[i]));
    }
    plan_regex_free(s.regexes);
}

static void test_inverse_derivation(void **state)
{
    (void)state;
    mpk_arena *a = mpk_arena_new();
    const char *f, *t;
    assert_null(plan_rename_inverse(a, "sam_model\\.blocks\\.(\\d+)\\.norm1\\.",
                                    "vision_tower.sam_encoder.layers.\\1.layer_norm1.", &f, &t));
    assert_string_equal(f, "vision_tower\\.sam_encoder\\.layers\\.(\\d+)\\.layer_norm1\\.");
    assert_string_equal(t, "sam_model.blocks.\\1.norm1.");
    assert_null(plan_rename_inverse(a, "(^|model\\.)layers\\.", "\\1language_model.layers.", &f, &t));
    assert_string_equal(f, "(^|model\\.)language_model\\.layers\\.");
    assert_string_equal(t, "\\1layers.");
    assert_null(plan_rename_inverse(a, "^head\\.weight$", "lm_head.weight", &f, &t));
    assert_string_equal(f, "^lm_head\\.weight$");
    assert_string_equal(t, "head.weight");
    /* two groups, swapped by the replacement */
    assert_null(plan_rename_inverse(a, "x\\.(\\d+)\\.y\\.(\\d+)", "y.\\2.x.\\1", &f, &t));
    assert_string_equal(f, "y\\.(\\d+)\\.x\\.(\\d+)");
    assert_string_equal(t, "x.\\2.y.\\1");
    assert_non_null(plan_rename_inverse(a, "model\\.(foo|bar)\\.", "model.x.", &f, &t)); /* drops a group */
    assert_non_null(plan_rename_inverse(a, "layers\\.\\d+\\.", "l.", &f, &t));          /* \d outside */
    assert_non_null(plan_rename_inverse(a, "a+b", "c", &f, &t));
    mpk_arena_free(a);
}

static const char *const kimi_names[] = {
    "vision_tower.encoder.blocks.0.norm0.weight", "vision_tower.encoder.blocks.0.norm1.weight",
    "vision_tower.encoder.blocks.0.mlp.fc0.weight", "vision_tower.encoder.blocks.0.mlp.fc1.weight",
    "vision_tower.encoder.blocks.0.wo.weight", "language_model.model.layers.0.mlp.gate.weight",
    "language_model.lm_head.weight", NULL};
#define KIMI_RENAMES                                                                                       \
    "{\"regex\": \"language_model.model\", \"to\": \"model.language_model\"},"                             \
    "{\"regex\": \"language_model.lm_head\", \"to\": \"lm_head\"},"                                        \
    "{\"group\": [{\"regex\": \"vision_tower.encoder.blocks.(\\\\d+).norm0\", "                             \
    "\"to\": \"vision_tower.encoder.blocks.\\\\1.norm1\"}, {\"regex\": \"vision_tower.encoder.blocks.(\\\\d+).norm1\", " \
    "\"to\": \"vision_tower.encoder.blocks.\\\\1.norm2\"}]},"                                              \
    "{\"group\": [{\"regex\": \"vision_tower.encoder.blocks.(\\\\d+).mlp.fc0\", "                           \
    "\"to\": \"vision_tower.encoder.blocks.\\\\1.mlp.fc1\"}, {\"regex\": \"vision_tower.encoder.blocks.(\\\\d+).mlp.fc1\", " \
    "\"to\": \"vision_tower.encoder.blocks.\\\\1.mlp.fc2\"}]},"                                            \
    "{\"regex\": \"vision_tower.encoder.blocks.(\\\\d+).wo\", \"to\": \"vision_tower.encoder.blocks.\\\\1.attn.proj\"}," \
    "{\"regex\": \"vision_tower.encoder\", \"to\": \"model.vision_tower\"},"                               \
    "{\"from\": \"blocks\", \"to\": \"layers\"}"

/* Kimi K2.5's renames: group renames do not chain (norm0 -> norm1, norm1 -> norm2), every
 * rename applies in order (blocks -> layers after vision_tower.encoder -> model.vision_tower). */
static void test_group_renames_do_not_chain(void **state)
{
    (void)state;
    const char *want[] = {
        "model.vision_tower.layers.0.norm1.weight", "model.vision_tower.layers.0.norm2.weight",
        "model.vision_tower.layers.0.mlp.fc1.weight", "model.vision_tower.layers.0.mlp.fc2.weight",
        "model.vision_tower.layers.0.attn.proj.weight", "model.language_model.layers.0.mlp.gate.weight",
        "lm_head.weight", NULL};
    expect_names(SPEC(KIMI_RENAMES, ""), false, NULL, kimi_names, want);
    /* reversed, the same renames give the names back, told apart by the source record's names */
    expect_names(SPEC(KIMI_RENAMES, ""), true, NULL, want, kimi_names);
    /* without them, 'lm_head.weight' could have been itself or language_model.lm_head.weight */
    mpk_error err = {0};
    assert_int_equal(plan_names(SPEC(KIMI_RENAMES, ""), true, NULL, want, NULL, &err, NULL, NULL),
                     MPK_E_NOT_INVERTIBLE);
    assert_non_null(strstr(err.msg, "'language_model.lm_head.weight'"));
    assert_non_null(strstr(err.msg, "moepack.source.zst"));
    /* the same two renames as separate entries chain: norm0 -> norm1 -> norm2, two names in one */
    const char *chained = SPEC("{\"regex\": \"blocks.(\\\\d+).norm0\", \"to\": \"blocks.\\\\1.norm1\"},"
                               "{\"regex\": \"blocks.(\\\\d+).norm1\", \"to\": \"blocks.\\\\1.norm2\"}", "");
    const char *names[] = {"v.blocks.0.norm0.weight", "v.blocks.0.norm1.weight", NULL};
    const char *has[] = {"both become 'v.blocks.0.norm2.weight'", "$.renames[0]", "$.renames[1]", "spec 't'", NULL};
    expect_fail(chained, names, MPK_E_NOT_INVERTIBLE, has);
    /* the guard: without a norm0 anywhere the group does not apply (a checkpoint already renamed) */
    const char *group = SPEC("{\"group\": [{\"regex\": \"blocks.(\\\\d+).norm0\", \"to\": \"blocks.\\\\1.norm1\"},"
                             "{\"regex\": \"blocks.(\\\\d+).norm1\", \"to\": \"blocks.\\\\1.norm2\"}]}", "");
    const char *renamed[] = {"v.blocks.0.norm1.weight", "v.blocks.0.norm2.weight", NULL};
    expect_names(group, false, NULL, renamed, renamed);
}

/* DeepSeek-OCR-2 and DeepSeek-V4 style renames: back-references, anchors, an empty group, the
 * first occurrence replaced once, a rename before the converter that consumes the tensor. */
static void test_regex_renames(void **state)
{
    (void)state;
    const char *spec = SPEC(
        "{\"regex\": \"sam_model\\\\.blocks\\\\.(\\\\d+)\\\\.norm1\\\\.\", "
        "\"to\": \"vision_tower.sam_encoder.layers.\\\\1.layer_norm1.\"},"
        "{\"regex\": \"qwen2_model\\\\.model\\\\.model\\\\.layers\\\\.\", \"to\": \"vision_tower.vision_encoder.layers.\"},"
        "{\"regex\": \"(^|model\\\\.)layers\\\\.\", \"to\": \"\\\\1language_model.layers.\"},"
        "{\"regex\": \"^head\\\\.weight$\", \"to\": \"lm_head.weight\"},"
        "{\"regex\": \"\\\\.norm\\\\.\", \"to\": \".kv_norm.\"},"
        "{\"regex\": \"\\\\.ffn\\\\.\", \"to\": \".mlp.\"}",
        MERGE_GU("\\\\.experts.*.w1.weight", "\\\\.experts.*.w3.weight", ".experts.gate_up_proj"));
    const char *names[] = {
        "sam_model.blocks.3.norm1.weight", "qwen2_model.model.model.layers.1.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight", "layers.2.attn.norm.weight", "head.weight",
        "model.head.weight", "x.norm.y.norm.weight", "layers.1.ffn.experts.0.w1.weight",
        "layers.1.ffn.experts.1.w1.weight", "layers.1.ffn.experts.0.w3.weight", "layers.1.ffn.experts.1.w3.weight",
        NULL};
    const char *want[] = {
        "vision_tower.sam_encoder.layers.3.layer_norm1.weight", "vision_tower.vision_encoder.layers.1.mlp.up_proj.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight", "language_model.layers.2.attn.kv_norm.weight",
        "lm_head.weight", "model.head.weight", "x.kv_norm.y.norm.weight",
        "language_model.layers.1.mlp.experts.gate_up_proj", NULL};
    expect_names(spec, false, NULL, names, want);
    /* and back: the experts split again (E from config.json), every rename undone */
    const char *cfg = "{\"model_type\": \"t\", \"num_experts\": 2}";
    expect_names(spec, true, cfg, want, names);
}

/* The first converter (spec order) whose pattern matches wins; MiniMax-M3-VL's catch-all
 * `\.gate_proj.weight` comes after its experts. A converter's pattern is a regex searched in
 * the renamed name (`.` any character); its suffix stays (`_scale_inv` grids follow). */
static void test_first_converter_wins(void **state)
{
    (void)state;
    const char *spec = SPEC(
        "{\"regex\": \"\\\\.block_sparse_moe\\\\.\", \"to\": \".mlp.\"}",
        MERGE_GU("\\\\.experts.*.w1.weight", "\\\\.experts.*.w3.weight", ".experts.gate_up_proj") ","
        "{\"sources\": [\"\\\\.gate_proj.weight\", \"\\\\.up_proj.weight\"], \"target\": \".gate_up_proj.weight\","
        " \"ops\": [{\"op\": \"concat\", \"dim\": 0}]}");
    const char *names[] = {"m.layers.0.block_sparse_moe.experts.0.w1.weight", "m.layers.0.block_sparse_moe.experts.0.w3.weight",
                           "m.layers.0.block_sparse_moe.experts.1.w1.weight", "m.layers.0.block_sparse_moe.experts.1.w3.weight",
                           "m.layers.0.block_sparse_moe.shared.gate_proj.weight",
                           "m.layers.0.block_sparse_moe.shared.up_proj.weight", "v.mlp.gate_proj.weight",
                           "v.mlp.up_proj.weight", NULL};
    const char *want[] = {"m.layers.0.mlp.experts.gate_up_proj", "m.layers.0.mlp.shared.gate_up_proj.weight",
                          "v.mlp.gate_up_proj.weight", NULL};
    expect_names(spec, false, NULL, names, want);
}

/* PrefixChange: removed where present. A name without the prefix is ambiguous undone
 * (model.visual... could have been model.language_model.visual...): the record decides. */
static void test_prefix_change(void **state)
{
    (void)state;
    const char *spec = SPEC("{\"prefix_remove\": \"language_model\", \"model_prefix\": \"model\"}", "");
    const char *names[] = {"model.language_model.layers.0.x.weight", "lm_head.weight",
                           "model.visual.blocks.0.weight", NULL};
    const char *want[] = {"model.layers.0.x.weight", "lm_head.weight", "model.visual.blocks.0.weight", NULL};
    expect_names(spec, false, NULL, names, want);
    expect_names(spec, true, NULL, want, names);
    mpk_error err = {0};
    assert_int_equal(plan_names(spec, true, NULL, want, NULL, &err, NULL, NULL), MPK_E_NOT_INVERTIBLE);
    assert_non_null(strstr(err.msg, "could have been named any of 'model."));
    /* two names that become one are refused packing */
    const char *two[] = {"model.language_model.a.weight", "model.a.weight", NULL};
    const char *has[] = {"'model.a.weight' and 'model.language_model.a.weight' both become 'model.a.weight'",
                         "$.renames[0]", NULL};
    expect_fail(spec, two, MPK_E_NOT_INVERTIBLE, has);
    const char *add = SPEC("{\"prefix_add\": \"language_model\", \"model_prefix\": \"model\"}", "");
    expect_names(add, false, NULL, (const char *const[]){"model.layers.0.w", "model.language_model.n", "x", NULL},
                 (const char *const[]){"model.language_model.layers.0.w", "model.language_model.n", "x", NULL});
}

/* Refusals: a rename that drops what it matched, a converter pattern whose match cannot be
 * written back, malformed renames (MPK_E_SPEC with the JSON path). */
static void test_refusals(void **state)
{
    (void)state;
    const char *drop = SPEC("{\"regex\": \"model\\\\.(foo|bar)\\\\.\", \"to\": \"model.x.\"}", "");
    const char *one[] = {"model.foo.w", NULL};
    const char *has[] = {"$.renames[0]", "model\\.(foo|bar)\\.", "drops one of its groups", NULL};
    expect_fail(drop, one, MPK_E_NOT_INVERTIBLE, has);
    /* not matched: nothing to undo, no refusal */
    expect_names(drop, false, NULL, (const char *const[]){"model.baz.w", NULL},
                 (const char *const[]){"model.baz.w", NULL});
    /* `.` matches any character: "mlpXexperts" would be written back as "mlp.experts" */
    const char *conv = SPEC("", "{\"sources\": [\"mlp.experts.*.down.weight\"], \"target\": \"mlp.experts.down\","
                                " \"ops\": [{\"op\": \"merge\", \"dim\": 0}]}");
    const char *odd[] = {"l.mlpXexperts.0.down.weight", NULL};
    const char *has2[] = {"$.converters[0]", "mlpXexperts.0.down.weight", "mlp.experts.0.down.weight", NULL};
    expect_fail(conv, odd, MPK_E_NOT_INVERTIBLE, has2);
    /* converters unpack would undo by another rule: q -> b first claims a -> ab's "ab.weight" */
#define ONE(src, tgt) "{\"sources\": [\"" src "\"], \"target\": \"" tgt "\", \"ops\": []}"
    const char *qa[] = {"m.a.weight", "m.q.weight", NULL};
    const char *has3[] = {"'m.ab.weight' would not be converted back", "$.converters[1] made it",
                          "$.converters[0] target 'b.weight'", NULL};
    expect_fail(SPEC("", ONE("q.weight", "b.weight") "," ONE("a.weight", "ab.weight")), qa, MPK_E_NOT_INVERTIBLE, has3);
    expect_names(SPEC("", ONE("a.weight", "ab.weight") "," ONE("q.weight", "b.weight")), false, NULL, qa,
                 (const char *const[]){"m.ab.weight", "m.b.weight", NULL});
    /* a pass-through that unpack would take for a packed tensor */
    const char *pt[] = {"m.a.weight", "n.ab.weight", NULL};
    const char *has4[] = {"'n.ab.weight' would not be converted back", "it passes through", NULL};
    expect_fail(SPEC("", ONE("a.weight", "ab.weight")), pt, MPK_E_NOT_INVERTIBLE, has4);
    /* unpacked, 'm.c.weight' becomes 'm.aq.weight', which q -> b would pack first */
    mpk_error e2 = {0};
    assert_int_equal(plan_names(SPEC("", ONE("q.weight", "b.weight") "," ONE("aq.weight", "c.weight")), true, NULL,
                                (const char *const[]){"m.c.weight", NULL}, NULL, &e2, NULL, NULL),
                     MPK_E_NOT_INVERTIBLE);
    assert_non_null(strstr(e2.msg, "'m.aq.weight' would not be converted back"));
    assert_non_null(strstr(e2.msg, "packing it again, the first converter matching it is $.converters[0] source"));
    mpk_spec *s = NULL;
    mpk_error err = {0};
    const char *bad[][2] = {
        {SPEC("{\"regex\": \"(?<!model\\\\.)layers\", \"to\": \"l\"}", ""), "$.renames[0]"},
        {SPEC("{\"group\": []}", ""), "$.renames[0].group"},
        {SPEC("{\"regex\": \"a\"}", ""), "$.renames[0]"},
        {SPEC("{\"prefix_add\": \"a\", \"prefix_remove\": \"b\"}", ""), "$.renames[0]"},
        {SPEC("", "{\"sources\": [\"a.*.b.*.c\"], \"target\": \"x\", \"ops\": []}"), "$.converters[0].sources[0]"},
        {"{\"name\": \"t\", \"semantics\": \"python\", \"converters\": []}", "$.semantics"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(mpk_spec_parse(bad[i][0], strlen(bad[i][0]), "spec.json", &s, &err), MPK_E_SPEC);
        if (!strstr(err.msg, bad[i][1]))
            fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, bad[i][1]);
    }
    assert_string_equal(mpk_status_str(MPK_E_NOT_INVERTIBLE), "not-invertible");
}

/* Step 3.7's fused FP8 experts: the weights and their _scale_inv grids both reach transformers'
 * names (the grids of gate/up through the companion rule, tried before the rule it follows, whose
 * pattern also matches them; down's through the mapping's own rename). */
static void test_step3p7_fp8_names(void **state)
{
    (void)state;
    const char *names[] = {"model.layers.0.moe.gate_proj.weight", "model.layers.0.moe.up_proj.weight",
                           "model.layers.0.moe.down_proj.weight", "model.layers.0.moe.gate_proj.weight_scale_inv",
                           "model.layers.0.moe.up_proj.weight_scale_inv", "model.layers.0.moe.down_proj.weight_scale_inv",
                           "model.layers.0.moe.router_bias", "vit_large_projector.weight", NULL};
    const char *want[] = {"model.language_model.layers.0.mlp.experts.gate_up_proj",
                          "model.language_model.layers.0.mlp.experts.down_proj",
                          "model.language_model.layers.0.mlp.experts.gate_up_proj_scale_inv",
                          "model.language_model.layers.0.mlp.experts.down_proj_scale_inv",
                          "model.language_model.layers.0.mlp.gate.e_score_correction_bias",
                          "model.multi_modal_projector.weight", NULL};
    size_t i = 0;
    while (strcmp(mpk_presets[i].name, "step3p7") != 0)
        i++;
    expect_names(mpk_presets[i].json, false, NULL, names, want);
    expect_names(mpk_presets[i].json, true, NULL, want, names);
}

/* Every embedded transformers preset's renames can be undone (unpack could not work otherwise). */
static void test_presets_invertible(void **state)
{
    (void)state;
    int n_tf = 0;
    for (size_t i = 0; i < mpk_n_presets; i++) {
        mpk_spec *s = NULL;
        mpk_error err = {0};
        assert_int_equal(mpk_spec_parse(mpk_presets[i].json, strlen(mpk_presets[i].json), mpk_presets[i].name, &s,
                                        &err), MPK_OK);
        n_tf += s->transformers;
        for (int k = 0; k < s->n_renames; k++)
            if (s->transformers && s->renames[k].kind == MPK_RENAME_REGEX && s->renames[k].inv_why)
                fail_msg("%s %s ('%s'): %s", s->name, s->renames[k].path, s->renames[k].from, s->renames[k].inv_why);
        mpk_spec_free(s);
    }
    assert_true(n_tf >= 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regex_translation),  cmocka_unit_test(test_inverse_derivation),
        cmocka_unit_test(test_group_renames_do_not_chain), cmocka_unit_test(test_regex_renames),
        cmocka_unit_test(test_first_converter_wins), cmocka_unit_test(test_prefix_change),
        cmocka_unit_test(test_refusals), cmocka_unit_test(test_step3p7_fp8_names),
        cmocka_unit_test(test_presets_invertible),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
