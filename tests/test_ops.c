/* test_ops.c — op inference, inverses, reference kernels, number conversions. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_ops.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_bf16_f16_rounding(void **state)
{
    (void)state;
    /* hand-computed bit patterns */
    assert_int_equal(mpk_f32_to_bf16(1.0f), 0x3F80);
    assert_int_equal(mpk_f32_to_bf16(-2.0f), 0xC000);
    /* 1 + 2^-8 is a tie between 0x3F80 and 0x3F81: even wins */
    assert_int_equal(mpk_f32_to_bf16(1.00390625f), 0x3F80);
    /* 1 + 3 * 2^-8 ties between 0x3F81 and 0x3F82: even (0x3F82) */
    assert_int_equal(mpk_f32_to_bf16(1.01171875f), 0x3F82);
    assert_int_equal(mpk_f32_to_bf16(INFINITY), 0x7F80);
    assert_int_equal(mpk_f32_to_bf16(3.4e38f), 0x7F80); /* rounds past the max: inf */
    assert_true((mpk_f32_to_bf16(-NAN) & 0xFF80) == 0xFF80 && (mpk_f32_to_bf16(-NAN) & 0x7F));
    assert_int_equal(mpk_f32_to_f16(1.0f), 0x3C00);
    assert_int_equal(mpk_f32_to_f16(65504.0f), 0x7BFF);
    assert_int_equal(mpk_f32_to_f16(65520.0f), 0x7C00); /* tie above max rounds to inf */
    assert_int_equal(mpk_f32_to_f16(ldexpf(1, -24)), 0x0001); /* smallest subnormal */
    assert_int_equal(mpk_f32_to_f16(ldexpf(1, -25)), 0x0000); /* tie to even: zero */
    assert_int_equal(mpk_f32_to_f16(ldexpf(3, -26)), 0x0001);
    assert_int_equal(mpk_f32_to_f16(-0.0f), 0x8000);
    assert_true(mpk_f16_to_f32(0x0001) == ldexpf(1, -24));
    assert_true(mpk_f16_to_f32(0xC000) == -2.0f);
    assert_true(mpk_bf16_to_f32(0x3F81) == 1.0078125f);
    /* every F16 code survives F16 -> F32 -> F16 (NaNs stay NaN) */
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t back = mpk_f32_to_f16(mpk_f16_to_f32((uint16_t)h));
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF))
            assert_true((back & 0x7C00) == 0x7C00 && (back & 0x3FF));
        else
            assert_int_equal(back, h);
    }
}

static void test_transpose_and_apply(void **state)
{
    (void)state;
    /* [2, 2, 3] transpose(1, 2) -> [2, 3, 2], checked element by element */
    uint16_t in[12], out[12];
    for (int i = 0; i < 12; i++)
        in[i] = (uint16_t)i;
    int64_t shape[3] = {2, 2, 3};
    mpk_transpose(in, out, 2, shape, 3, 1, 2);
    for (int e = 0; e < 2; e++)
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 3; c++)
                assert_int_equal(out[e * 6 + c * 2 + r], in[e * 6 + r * 3 + c]);
    /* merge(0) then concat(1) of gate [2,2] x2 experts and up [2,2] x2 */
    uint8_t g0[4] = {1, 2, 3, 4}, g1[4] = {5, 6, 7, 8}, u0[4] = {11, 12, 13, 14}, u1[4] = {15, 16, 17, 18};
    void *data[4] = {g0, g1, u0, u1};
    mpk_tmeta t[4];
    for (int i = 0; i < 4; i++)
        t[i] = (mpk_tmeta){MPK_DTYPE_U8, 2, {2, 2}};
    mpk_bundle b = {2, 2, t}, m, c;
    mpk_arena *a = mpk_arena_new();
    mpk_error err = {0};
    mpk_op merge = {.kind = MPK_OP_MERGE, .dim = 0}, concat = {.kind = MPK_OP_CONCAT, .dim = 1};
    void **md, **cd;
    assert_int_equal(mpk_op_apply(&merge, &b, data, &m, &md, a, &err), MPK_OK);
    assert_int_equal(m.n_groups, 2);
    assert_int_equal(m.n_items, 1);
    assert_int_equal(m.t[0].shape[0], 2);
    assert_int_equal(mpk_op_apply(&concat, &m, md, &c, &cd, a, &err), MPK_OK);
    assert_int_equal(c.t[0].shape[1], 4);
    static const uint8_t want[16] = {1, 2, 3, 4, 11, 12, 13, 14, 5, 6, 7, 8, 15, 16, 17, 18};
    assert_memory_equal(cd[0], want, 16);
    /* the inverse chain gives the inputs back */
    mpk_op ops[2] = {merge, concat}, inv[2];
    assert_int_equal(mpk_ops_invert_chain(ops, 2, &b, inv, &err), MPK_OK);
    assert_int_equal(inv[0].kind, MPK_OP_CHUNK);
    assert_int_equal(inv[0].chunks, 2);
    assert_int_equal(inv[1].kind, MPK_OP_SPLIT);
    void **kd, **sd;
    mpk_bundle k, s;
    assert_int_equal(mpk_op_apply(&inv[0], &c, cd, &k, &kd, a, &err), MPK_OK);
    assert_int_equal(mpk_op_apply(&inv[1], &k, kd, &s, &sd, a, &err), MPK_OK);
    assert_int_equal(s.n_groups, 2);
    assert_int_equal(s.n_items, 2);
    for (int i = 0; i < 4; i++)
        assert_memory_equal(sd[i], data[i], 4);
    void **lists[4] = {md, cd, kd, sd};
    int counts[4] = {2, 1, 2, 4};
    for (int l = 0; l < 4; l++) {
        for (int i = 0; i < counts[l]; i++)
            free(lists[l][i]);
        free(lists[l]);
    }
    /* errors: concat of unequal shapes, chunk that does not divide, unsupported cast */
    t[2].shape[0] = 3;
    mpk_bundle bad = {2, 2, t};
    assert_int_equal(mpk_ops_infer_chain(&concat, 1, &bad, &c, a, &err), MPK_E_SHAPE);
    mpk_op chunk3 = {.kind = MPK_OP_CHUNK, .dim = 0, .chunks = 3};
    mpk_bundle one = {1, 1, t};
    assert_int_equal(mpk_ops_infer_chain(&chunk3, 1, &one, &c, a, &err), MPK_E_SHAPE);
    mpk_op cast = {.kind = MPK_OP_CAST, .dtype = MPK_DTYPE_F16};
    assert_int_equal(mpk_ops_infer_chain(&cast, 1, &one, &c, a, &err), MPK_E_OP);
    mpk_op reshape = {.kind = MPK_OP_RESHAPE, .ndim = 1, .shape = {5}, .inv_ndim = -1};
    assert_int_equal(mpk_ops_infer_chain(&reshape, 1, &one, &c, a, &err), MPK_E_SHAPE);
    /* reshape and cast cannot be inverted blind */
    assert_int_equal(mpk_ops_invert_chain(&reshape, 1, NULL, inv, &err), MPK_E_OP);
    assert_int_equal(mpk_ops_invert_chain(&cast, 1, NULL, inv, &err), MPK_E_OP);
    assert_non_null(mpk_op_find("transpose"));
    assert_null(mpk_op_find("fold"));
    mpk_arena_free(a);
}

/* ---------------------------------------------------------------- reorderings (reorder.c) */

/* Applies op to one bundle of U8 tensors; returns the outputs (free with free_outs). */
static void **apply_u8(const mpk_op *op, mpk_bundle *in, void **data, mpk_bundle *out, mpk_arena *a)
{
    mpk_error err = {0};
    void **od = NULL;
    assert_int_equal(mpk_op_apply(op, in, data, out, &od, a, &err), MPK_OK);
    return od;
}

static void free_outs(void **od, int n)
{
    for (int i = 0; i < n; i++)
        free(od[i]);
    free(od);
}

static void test_permute_for_rope(void **state)
{
    (void)state;
    mpk_arena *a = mpk_arena_new();
    mpk_error err = {0};
    /* an 8x2 matrix, 2 heads of 4 rows: view [2, 2, 2, 2] (head, j, p, col) transposed to
     * (head, p, j): out row h*4 + p*2 + j = in row h*4 + 2j + p, i.e. rows 0 2 1 3 4 6 5 7 */
    uint8_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint8_t)(10 * (i / 2) + i % 2); /* row r, column c: 10r + c */
    mpk_tmeta t = {MPK_DTYPE_U8, 2, {8, 2}};
    mpk_bundle b = {1, 1, &t}, o;
    void *d[1] = {m};
    mpk_op rope = {.kind = MPK_OP_PERMUTE_ROPE, .heads = 2};
    void **od = apply_u8(&rope, &b, d, &o, a);
    static const int rows8[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 2; c++)
            assert_int_equal(((uint8_t *)od[0])[r * 2 + c], 10 * rows8[r] + c);
    free_outs(od, 1);
    /* a 1-D bias of 12 in 2 heads of 6: forward rows 0 2 4 1 3 5 | 6 8 10 7 9 11, inverse
     * 0 3 1 4 2 5 | 6 9 7 10 8 11 (F16 elements: ranges of 2 bytes) */
    uint16_t bias[12];
    for (int i = 0; i < 12; i++)
        bias[i] = (uint16_t)(0x100 + i);
    mpk_tmeta bt = {MPK_DTYPE_F16, 1, {12}};
    mpk_bundle bb = {1, 1, &bt};
    void *bd[1] = {bias};
    static const int fwd[12] = {0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11}, back[12] = {0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11};
    mpk_op inv;
    assert_int_equal(mpk_ops_invert_chain(&rope, 1, &bb, &inv, &err), MPK_OK);
    assert_true(inv.kind == MPK_OP_PERMUTE_ROPE && inv.inverse && inv.heads == 2);
    void **f = apply_u8(&rope, &bb, bd, &o, a), **g = apply_u8(&inv, &bb, bd, &o, a);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(((uint16_t *)f[0])[i], 0x100 + fwd[i]);
        assert_int_equal(((uint16_t *)g[0])[i], 0x100 + back[i]);
    }
    void **h = apply_u8(&inv, &bb, f, &o, a); /* inverse(op(x)) == x */
    assert_memory_equal(h[0], bias, sizeof bias);
    free_outs(f, 1);
    free_outs(g, 1);
    free_outs(h, 1);
    /* errors: rows not in heads of an even size, heads unknown (named by config keys), a group
     * beyond the bundle's */
    mpk_tmeta odd = {MPK_DTYPE_U8, 2, {10, 2}};
    mpk_bundle ob = {1, 1, &odd};
    assert_int_equal(mpk_ops_infer_chain(&rope, 1, &ob, &o, a, &err), MPK_E_SHAPE);
    mpk_op blind = {.kind = MPK_OP_PERMUTE_ROPE, .cfg_key = "vision_config.num_attention_heads"};
    assert_int_equal(mpk_ops_infer_chain(&blind, 1, &b, &o, a, &err), MPK_E_OP);
    assert_non_null(strstr(err.msg, "vision_config.num_attention_heads"));
    mpk_op far = {.kind = MPK_OP_PERMUTE_ROPE, .heads = 2, .groups = 1u << 3};
    assert_int_equal(mpk_ops_infer_chain(&far, 1, &b, &o, a, &err), MPK_E_OP);
    mpk_arena_free(a);
}

/* Kimi K2.5's vision wqkv: chunk(0) into q, k, v, then permute_for_rope on q and k only; the
 * inverse chain gives the fused tensor back byte for byte. */
static void test_chunk_then_rope_round_trip(void **state)
{
    (void)state;
    mpk_arena *a = mpk_arena_new();
    mpk_error err = {0};
    enum { R = 3 * 8, C = 3 };
    uint16_t w[R * C];
    for (int i = 0; i < R * C; i++)
        w[i] = (uint16_t)(i * 7919u);
    mpk_tmeta t = {MPK_DTYPE_BF16, 2, {R, C}};
    mpk_bundle b = {1, 1, &t}, c, p;
    void *d[1] = {w};
    mpk_op ops[2] = {{.kind = MPK_OP_CHUNK, .dim = 0, .chunks = 3}, {.kind = MPK_OP_PERMUTE_ROPE, .heads = 2, .groups = 3}};
    void **cd = apply_u8(&ops[0], &b, d, &c, a), **pd = apply_u8(&ops[1], &c, cd, &p, a);
    assert_int_equal(p.n_groups, 3);
    /* q (group 0): 2 heads of 4 rows -> rows 0 2 1 3 4 6 5 7 of the first 8; v (group 2) untouched */
    static const int rows8[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int r = 0; r < 8; r++) {
        assert_memory_equal((uint16_t *)pd[0] + r * C, w + rows8[r] * C, C * 2);
        assert_memory_equal((uint16_t *)pd[1] + r * C, w + (8 + rows8[r]) * C, C * 2);
    }
    assert_memory_equal(pd[2], w + 16 * C, 8 * C * 2);
    mpk_op inv[2];
    assert_int_equal(mpk_ops_invert_chain(ops, 2, &b, inv, &err), MPK_OK);
    assert_int_equal(inv[0].kind, MPK_OP_PERMUTE_ROPE);
    assert_int_equal(inv[1].kind, MPK_OP_CONCAT);
    mpk_bundle u, v;
    void **ud = apply_u8(&inv[0], &p, pd, &u, a), **vd = apply_u8(&inv[1], &u, ud, &v, a);
    assert_memory_equal(vd[0], w, sizeof w);
    char buf[128];
    assert_string_equal(mpk_op_str(&ops[1], buf, sizeof buf), "permute_for_rope(heads=2, groups=0,1)");
    assert_string_equal(mpk_op_str(&inv[0], buf, sizeof buf), "permute_for_rope(heads=2, inverse, groups=0,1)");
    free_outs(cd, 3);
    free_outs(pd, 3);
    free_outs(ud, 3);
    free_outs(vd, 1);
    mpk_arena_free(a);
}

static void test_interleave(void **state)
{
    (void)state;
    mpk_arena *a = mpk_arena_new();
    mpk_error err = {0};
    /* [2, 6, 2] along dim 1: forward slices 0 2 4 1 3 5 (gate rows then up rows), inverse
     * 0 3 1 4 2 5; element (e, s, c) = 100e + 10s + c */
    uint8_t x[24];
    for (int i = 0; i < 24; i++)
        x[i] = (uint8_t)(100 * (i / 12) + 10 * (i / 2 % 6) + i % 2);
    mpk_tmeta t = {MPK_DTYPE_U8, 3, {2, 6, 2}};
    mpk_bundle b = {1, 1, &t}, o;
    void *d[1] = {x};
    mpk_op il = {.kind = MPK_OP_INTERLEAVE, .dim = 1}, inv;
    assert_int_equal(mpk_ops_invert_chain(&il, 1, NULL, &inv, &err), MPK_OK);
    assert_true(inv.kind == MPK_OP_INTERLEAVE && inv.inverse && inv.dim == 1);
    static const int fwd[6] = {0, 2, 4, 1, 3, 5}, back[6] = {0, 3, 1, 4, 2, 5};
    void **f = apply_u8(&il, &b, d, &o, a), **g = apply_u8(&inv, &b, d, &o, a), **h = apply_u8(&inv, &b, f, &o, a);
    for (int e = 0; e < 2; e++)
        for (int s = 0; s < 6; s++)
            for (int c = 0; c < 2; c++) {
                assert_int_equal(((uint8_t *)f[0])[e * 12 + s * 2 + c], 100 * e + 10 * fwd[s] + c);
                assert_int_equal(((uint8_t *)g[0])[e * 12 + s * 2 + c], 100 * e + 10 * back[s] + c);
            }
    assert_memory_equal(h[0], x, sizeof x);
    free_outs(f, 1);
    free_outs(g, 1);
    free_outs(h, 1);
    t.shape[1] = 5; /* an odd dim does not pair */
    assert_int_equal(mpk_ops_infer_chain(&il, 1, &b, &o, a, &err), MPK_E_SHAPE);
    il.dim = 3;
    assert_int_equal(mpk_ops_infer_chain(&il, 1, &b, &o, a, &err), MPK_E_OP);
    mpk_arena_free(a);
}

static void test_concat_list(void **state)
{
    (void)state;
    mpk_arena *a = mpk_arena_new();
    mpk_error err = {0};
    /* 3 shards [2, 2] -> [6, 2] (dim 0: one after the other) and [2, 6] (dim 1: row by row) */
    uint8_t s0[4] = {1, 2, 3, 4}, s1[4] = {5, 6, 7, 8}, s2[4] = {9, 10, 11, 12};
    void *d[3] = {s0, s1, s2};
    mpk_tmeta t[3];
    for (int i = 0; i < 3; i++)
        t[i] = (mpk_tmeta){MPK_DTYPE_U8, 2, {2, 2}};
    mpk_bundle b = {1, 3, t}, o, back;
    mpk_op cat0 = {.kind = MPK_OP_CONCAT_LIST, .dim = 0}, cat1 = {.kind = MPK_OP_CONCAT_LIST, .dim = 1}, inv;
    void **r0 = apply_u8(&cat0, &b, d, &o, a);
    assert_true(o.n_groups == 1 && o.n_items == 1 && o.t[0].shape[0] == 6 && o.t[0].shape[1] == 2);
    static const uint8_t want0[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    static const uint8_t want1[12] = {1, 2, 5, 6, 9, 10, 3, 4, 7, 8, 11, 12};
    assert_memory_equal(r0[0], want0, 12);
    void **r1 = apply_u8(&cat1, &b, d, &o, a);
    assert_true(o.t[0].shape[0] == 2 && o.t[0].shape[1] == 6);
    assert_memory_equal(r1[0], want1, 12);
    assert_int_equal(mpk_ops_invert_chain(&cat1, 1, &b, &inv, &err), MPK_OK);
    assert_true(inv.kind == MPK_OP_CHUNK_LIST && inv.chunks == 3 && inv.dim == 1);
    void **k = apply_u8(&inv, &o, r1, &back, a);
    assert_true(back.n_items == 3 && back.t[2].shape[1] == 2);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(k[i], d[i], 4);
    free_outs(r0, 1);
    free_outs(r1, 1);
    free_outs(k, 3);
    /* the count config.json gives must match; unknown, chunk_list cannot run; unequal shards */
    mpk_op four = {.kind = MPK_OP_CONCAT_LIST, .dim = 0, .chunks = 4, .cfg_key = "split_ngram_parts"};
    assert_int_equal(mpk_ops_infer_chain(&four, 1, &b, &o, a, &err), MPK_E_SHAPE);
    assert_non_null(strstr(err.msg, "split_ngram_parts"));
    mpk_op blind = {.kind = MPK_OP_CHUNK_LIST, .dim = 0, .cfg_key = "split_ngram_parts"};
    mpk_tmeta whole = {MPK_DTYPE_U8, 2, {6, 2}};
    mpk_bundle wb = {1, 1, &whole};
    assert_int_equal(mpk_ops_infer_chain(&blind, 1, &wb, &o, a, &err), MPK_E_OP);
    blind.chunks = 4; /* 6 rows do not cut into 4 */
    assert_int_equal(mpk_ops_infer_chain(&blind, 1, &wb, &o, a, &err), MPK_E_SHAPE);
    assert_int_equal(mpk_ops_infer_chain(&blind, 1, &b, &o, a, &err), MPK_E_OP); /* 3 items, not 1 */
    t[1].shape[0] = 3;
    assert_int_equal(mpk_ops_infer_chain(&cat0, 1, &b, &o, a, &err), MPK_E_SHAPE);
    mpk_arena_free(a);
}

static mpk_status parse_op(const char *json, mpk_op *op)
{
    mpk_error err = {0};
    cJSON *j = cJSON_Parse(json);
    assert_non_null(j);
    mpk_status s = mpk_op_parse(j, op, "spec.json", "$.converters[0].ops[1]", &err);
    cJSON_Delete(j);
    return s;
}

static void test_reorder_parse_and_bind(void **state)
{
    (void)state;
    mpk_op op;
    assert_int_equal(parse_op("{\"op\": \"permute_for_rope\", \"heads\": [\"vision_config.num_attention_heads\", "
                              "\"vision_config.vt_num_attention_heads\"], \"groups\": [0, 1]}", &op), MPK_OK);
    assert_int_equal(op.kind, MPK_OP_PERMUTE_ROPE);
    assert_int_equal(op.groups, 3);
    assert_int_equal(op.heads, 0);
    assert_string_equal(op.cfg_key, "vision_config.num_attention_heads,vision_config.vt_num_attention_heads");
    /* the second key is the one the published config.json has */
    cJSON *cfg = cJSON_Parse("{\"vision_config\": {\"vt_num_attention_heads\": 16}, \"text_config\": "
                             "{\"split_ngram_parts\": 4}}");
    assert_int_equal(mpk_op_config_value(&op, cfg), 16);
    mpk_op_bind_config(&op, cfg);
    assert_int_equal(op.heads, 16);
    assert_int_equal(parse_op("{\"op\": \"concat_list\", \"dim\": 0, \"items\": \"split_ngram_parts\"}", &op), MPK_OK);
    mpk_op_bind_config(&op, cfg); /* found under text_config */
    assert_int_equal(op.chunks, 4);
    cJSON *none = cJSON_Parse("{\"split_ngram_parts\": \"4\"}"); /* not a number: not given */
    mpk_op_bind_config(&op, none);
    assert_int_equal(op.chunks, 0);
    cJSON_Delete(none);
    cJSON_Delete(cfg);
    assert_int_equal(parse_op("{\"op\": \"interleave\", \"dim\": 1, \"inverse\": true}", &op), MPK_OK);
    assert_true(op.inverse && op.dim == 1);
    assert_int_equal(parse_op("{\"op\": \"chunk_list\", \"dim\": 0, \"items\": 128}", &op), MPK_OK);
    assert_int_equal(op.chunks, 128);
    /* malformed: each MPK_E_SPEC */
    static const char *bad[] = {
        "{\"op\": \"permute_for_rope\"}",                                  /* heads missing */
        "{\"op\": \"permute_for_rope\", \"heads\": \"a..b\"}",             /* not a key path */
        "{\"op\": \"permute_for_rope\", \"heads\": 0}",                    /* not positive */
        "{\"op\": \"permute_for_rope\", \"heads\": 2, \"groups\": [40]}",  /* beyond 31 */
        "{\"op\": \"permute_for_rope\", \"heads\": 2, \"groups\": []}",
        "{\"op\": \"permute_for_rope\", \"heads\": []}",
        "{\"op\": \"interleave\", \"dim\": 1, \"inverse\": 1}",            /* not a bool */
        "{\"op\": \"interleave\"}",                                        /* dim missing */
        "{\"op\": \"chunk_list\", \"dim\": 0}",                            /* items missing */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(parse_op(bad[i], &op), MPK_E_SPEC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_f16_rounding),
        cmocka_unit_test(test_transpose_and_apply),
        cmocka_unit_test(test_permute_for_rope),
        cmocka_unit_test(test_chunk_then_rope_round_trip),
        cmocka_unit_test(test_interleave),
        cmocka_unit_test(test_concat_list),
        cmocka_unit_test(test_reorder_parse_and_bind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
