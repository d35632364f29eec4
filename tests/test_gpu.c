/* test_gpu.c — the MoE semantics pinned on the CPU: the eager, batched and grouped CPU backends
 * agree with the fp64 reference (experts with zero tokens, all tokens on one expert, k = 1 and
 * k = 8, T = 1, odd sizes), and one case checked by hand. With --device: exits 77 when no CUDA
 * device answers, else checks the CUDA backends against the reference. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_gpu.h"
#include "mpk_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void check_case(int T, int H, int I, int E, int k, int seed, int force_expert)
{
    mpk_moe p;
    mpk_error err = {0};
    assert_int_equal(mpk_moe_random(T, H, I, E, k, (uint64_t)seed, true, &p, &err), MPK_OK);
    if (force_expert >= 0) /* every token's first slot on one expert */
        for (int t = 0; t < T; t++)
            ((int32_t *)p.idx)[t * k] = force_expert, ((float *)p.w)[t * k] = 1.0f;
    float *ref = malloc(sizeof(float) * (size_t)T * H), *got = malloc(sizeof(float) * (size_t)T * H);
    mpk_moe_reference(&p, ref);
    for (int b = 0; b < MPK_MOE_BACKEND_COUNT; b++) {
        memset(got, 0xFF, sizeof(float) * (size_t)T * H); /* poison */
        assert_int_equal(mpk_moe_cpu(&p, (mpk_moe_backend)b, got, &err), MPK_OK);
        mpk_moe_check c;
        mpk_moe_compare(ref, got, (size_t)T * H, 1e-5, 1e-3, &c);
        if (c.n_bad || c.rel_err > 1e-5)
            fail_msg("%s T=%d H=%d I=%d E=%d k=%d: rel_err %g, %llu bad (first %llu)", mpk_moe_backend_names[b], T, H,
                     I, E, k, c.rel_err, (unsigned long long)c.n_bad, (unsigned long long)c.first_bad);
    }
    /* the reference on a subset of rows, threaded, gives exactly those rows */
    int rows[3] = {T - 1, 0, T / 2};
    float sub[3 * 64];
    assert_true(H <= 64);
    mpk_moe_reference_rows(&p, rows, 3, 3, sub);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(sub + (size_t)i * H, ref + (size_t)rows[i] * H, sizeof(float) * (size_t)H);
    free(ref);
    free(got);
    mpk_moe_free(&p, true);
}

static void test_backends_agree(void **state)
{
    (void)state;
    check_case(1, 8, 4, 4, 1, 1, -1);     /* T = 1, k = 1 */
    check_case(5, 24, 12, 64, 2, 2, -1);  /* most experts get zero tokens */
    check_case(33, 17, 9, 8, 8, 3, -1);   /* k = 8 = E, odd sizes */
    check_case(16, 32, 16, 8, 1, 4, 5);   /* all tokens on expert 5 */
    check_case(40, 48, 20, 16, 4, 5, -1);
}

/* One token, one expert, H = 2, I = 1, weights chosen so the result is known:
 * W_gu = [[1, 0], [0, 2]] (gate row, up row), x = (1, 3): h = (1, 6), a = silu(1) * 6,
 * W_d = [[1], [-0.5]]: y = (a, -a/2), times routing weight 0.5. */
static void test_hand_case(void **state)
{
    (void)state;
    float x[2] = {1, 3}, w[1] = {0.5f};
    int32_t idx[1] = {0};
    uint16_t gu[4], dn[2];
    float guf[4] = {1, 0, 0, 2}, dnf[2] = {1, -0.5f};
    for (int i = 0; i < 4; i++)
        gu[i] = mpk_f32_to_bf16(guf[i]);
    for (int i = 0; i < 2; i++)
        dn[i] = mpk_f32_to_bf16(dnf[i]);
    mpk_moe p = {1, 2, 1, 1, 1, x, idx, w, gu, dn};
    double a = 1.0 / (1.0 + exp(-1.0)) * 6.0;
    float ref[2], got[2];
    mpk_moe_reference(&p, ref);
    assert_true(fabs(ref[0] - 0.5 * a) < 1e-6 && fabs(ref[1] + 0.25 * a) < 1e-6);
    for (int b = 0; b < MPK_MOE_BACKEND_COUNT; b++) {
        mpk_error err = {0};
        assert_int_equal(mpk_moe_cpu(&p, (mpk_moe_backend)b, got, &err), MPK_OK);
        assert_true(fabs(got[0] - 0.5 * a) < 1e-5 && fabs(got[1] + 0.25 * a) < 1e-5);
    }
    /* routing: distinct experts, weights sum to 1 */
    mpk_moe r;
    mpk_error err = {0};
    assert_int_equal(mpk_moe_random(7, 4, 4, 6, 3, 9, false, &r, &err), MPK_OK);
    for (int t = 0; t < 7; t++) {
        double s = 0;
        for (int j = 0; j < 3; j++) {
            s += r.w[t * 3 + j];
            for (int q = 0; q < j; q++)
                assert_int_not_equal(r.idx[t * 3 + j], r.idx[t * 3 + q]);
        }
        assert_true(fabs(s - 1) < 1e-6);
    }
    mpk_moe_free(&r, false);
    assert_int_equal(mpk_moe_random(1, 4, 4, 2, 3, 1, false, &r, &err), MPK_E_USAGE); /* k > E */
}

/* gpucheck's exit codes: usage 2, a checkpoint without packed experts 1, CPU checks passing
 * and then 77 without a GPU (0 with one). */
static void test_gpucheck_cli(void **state)
{
    (void)state;
    const char *m = getenv("MOEPACK");
    if (!m)
        skip();
    char cmd[1024], dir[] = "/tmp/mpk_gc_XXXXXX";
    assert_non_null(mkdtemp(dir));
#define RC(...) (snprintf(cmd, sizeof cmd, __VA_ARGS__), WEXITSTATUS(system(cmd)))
    assert_int_equal(RC("%s gpucheck 2>/dev/null", m), 2);
    assert_int_equal(RC("%s gpucheck --synthetic 4,32,16 --backends fast 2>/dev/null", m), 2);
    assert_int_equal(RC("%s gpucheck --synthetic 4,32,16 --topk 5 2>/dev/null", m), 2);
    assert_int_equal(RC("%s synth --arch qwen3_moe --layers 1 --experts 4 --hidden 32 --intermediate 16 %s/pe "
                        ">/dev/null", m, dir), 0);
    assert_int_equal(RC("%s gpucheck %s/pe 2>%s/err", m, dir, dir), 1);
    assert_int_equal(RC("grep -q 'no packed experts for layer 0' %s/err", dir), 0);
    assert_int_equal(RC("%s pack -q %s/pe %s/pk", m, dir, dir), 0);
    int rc = RC("%s gpucheck %s/pk --tokens 1,7 --topk 2 >/dev/null 2>&1", m, dir);
    assert_true(rc == 77 || rc == 0);
    rc = RC("%s gpucheck --synthetic 4,32,16 --tokens 3 --json > %s/out.json 2>/dev/null", m, dir);
    assert_true(rc == 77 || rc == 0);
    assert_int_equal(RC("grep -q '\"ok\": true' %s/out.json", dir), 0);
    assert_int_equal(RC("grep -q '\"ok\": false' %s/out.json", dir), 1);
    /* --reference: the source's per-expert weights give the same answer as the packed ones */
    rc = RC("%s gpucheck %s/pk --reference %s/pe --tokens 5 --topk 2 >/dev/null 2>&1", m, dir, dir);
    assert_true(rc == 77 || rc == 0);
    assert_int_equal(RC("%s gpucheck --synthetic 4,32,16 --reference %s/pe 2>/dev/null", m, dir), 2);
    assert_int_equal(RC("%s gpucheck %s/pk --reference %s/pk 2>%s/err", m, dir, dir, dir), 1);
    assert_int_equal(RC("grep -q 'no per-expert gate weight for layer 0, expert 0' %s/err", dir), 0);
    /* a --reference of another shape is refused, naming the tensor and the rule */
    assert_int_equal(RC("%s synth --arch qwen3_moe --layers 1 --experts 4 --hidden 48 --intermediate 16 %s/other "
                        ">/dev/null", m, dir), 0);
    assert_int_equal(RC("%s gpucheck %s/pk --reference %s/other 2>%s/err", m, dir, dir, dir), 1);
    assert_int_equal(RC("grep -q 'experts.0.gate_proj.weight. must be BF16 (or FP8 E4M3 with block scales) "
                        "\\[16, 32\\] to match the packed layer' %s/err", dir), 0);
    /* usage errors: token list, run count, checked rows */
    assert_int_equal(RC("%s gpucheck --synthetic 4,32,16 --tokens 3,0 2>/dev/null", m), 2);
    assert_int_equal(RC("%s gpucheck --synthetic 4,32,16 --runs 0 2>/dev/null", m), 2);
    assert_int_equal(RC("%s gpucheck --synthetic 4,32,16 --check-rows 1 2>/dev/null", m), 2);
    /* inputs that cannot be saved: exit 1 */
    assert_int_equal(RC("%s gpucheck --synthetic 4,32,16 --tokens 2 --save-inputs %s/no/such/dir 2>/dev/null", m,
                        dir), 1);
    /* a packing with up rows first (a wrong spec) is caught against the source */
    FILE *f = fopen(strcat(strcpy(cmd, dir), "/swap.json"), "w");
    assert_non_null(f);
    fputs("{\"name\": \"swapped\", \"converters\": [\n"
          " {\"sources\": [\"mlp.experts.{expert}.up_proj.weight\", \"mlp.experts.{expert}.gate_proj.weight\"],\n"
          "  \"target\": \"mlp.experts.gate_up_proj\", \"ops\": [{\"op\": \"merge\", \"dim\": 0}, "
          "{\"op\": \"concat\", \"dim\": 1}]},\n"
          " {\"sources\": [\"mlp.experts.{expert}.down_proj.weight\"], \"target\": \"mlp.experts.down_proj\",\n"
          "  \"ops\": [{\"op\": \"merge\", \"dim\": 0}]}]}\n", f);
    fclose(f);
    assert_int_equal(RC("%s convert -q --spec %s/swap.json %s/pe %s/bad", m, dir, dir, dir), 0);
    assert_int_equal(RC("%s gpucheck %s/bad --reference %s/pe --tokens 4 --topk 2 > %s/out 2>&1", m, dir, dir, dir), 3);
    assert_int_equal(RC("grep -q 'cpu  eager .*FAIL' %s/out", dir), 0);
    /* --save-inputs writes each case's inputs as safetensors for the peer script */
    rc = RC("%s gpucheck --synthetic 4,32,16 --tokens 2,9 --topk 3 --save-inputs %s >/dev/null 2>&1", m, dir);
    assert_true(rc == 77 || rc == 0);
    assert_int_equal(RC("%s inspect %s/inputs-T9.safetensors > %s/insp", m, dir, dir), 0);
    assert_int_equal(RC("grep -q 'top_k_index.*I32.*\\[9, 3\\]' %s/insp", dir), 0);
    assert_int_equal(RC("grep -q 'x .*BF16.*\\[9, 32\\]' %s/insp", dir), 0);
    /* ... holding the case's values: x as BF16 and the routing, as mpk_moe_random made them */
    mpk_moe want;
    mpk_error err = {0};
    assert_int_equal(mpk_moe_random(9, 32, 16, 4, 3, 1, false, &want, &err), MPK_OK);
    mpk_ckpt *ck;
    snprintf(cmd, sizeof cmd, "%s/inputs-T9.safetensors", dir);
    assert_int_equal(mpk_ckpt_open(cmd, &ck, &err), MPK_OK);
    const mpk_ckpt_tensor *tx = mpk_ckpt_find(ck, "x"), *ti = mpk_ckpt_find(ck, "top_k_index");
    assert_non_null(tx);
    assert_non_null(ti);
    uint16_t xb[9 * 32];
    int32_t ib[9 * 3];
    assert_int_equal(pread(ck->shards[0].fd, xb, sizeof xb, (off_t)tx->file_offset), (ssize_t)sizeof xb);
    assert_int_equal(pread(ck->shards[0].fd, ib, sizeof ib, (off_t)ti->file_offset), (ssize_t)sizeof ib);
    for (int i = 0; i < 9 * 32; i++)
        assert_true(mpk_bf16_to_f32(xb[i]) == want.x[i]);
    assert_memory_equal(ib, want.idx, sizeof ib);
    mpk_ckpt_close(ck);
    mpk_moe_free(&want, false);
#undef RC
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* One GPU case against the reference: every backend that is available. */
static int device_case(int T, int H, int I, int E, int k, int force_expert)
{
    mpk_moe p;
    mpk_error err = {0};
    if (mpk_moe_random(T, H, I, E, k, 11, true, &p, &err) != MPK_OK)
        return 1;
    if (force_expert >= 0)
        for (int t = 0; t < T; t++)
            ((int32_t *)p.idx)[t * k] = force_expert;
    float *ref = malloc(sizeof(float) * (size_t)T * H), *got = malloc(sizeof(float) * (size_t)T * H);
    mpk_moe_reference_rows(&p, NULL, T, 8, ref);
    mpk_gpu *g = NULL;
    int bad = mpk_gpu_open(&p, &g, &err) != MPK_OK;
    for (int b = 0; !bad && b < MPK_MOE_BACKEND_COUNT; b++) {
        mpk_gpu_timing t;
        mpk_status s = mpk_gpu_run(g, &p, (mpk_moe_backend)b, 2, got, &t, &err);
        if (s == MPK_E_OP && strstr(err.msg, "cuBLAS")) {
            printf("  %-14s skipped: %s\n", mpk_moe_backend_names[b], err.msg);
            continue;
        }
        mpk_moe_check c = {0};
        if (s == MPK_OK)
            mpk_moe_compare(ref, got, (size_t)T * H, 1e-3, 5e-2, &c);
        int ok = s == MPK_OK && c.n_bad == 0 && c.rel_err < 1e-2;
        printf("  T=%-5d H=%-4d I=%-4d E=%-3d k=%d %-14s %s rel_err %.3g%s%s\n", T, H, I, E, k,
               mpk_moe_backend_names[b], ok ? "ok  " : "FAIL", c.rel_err, s == MPK_OK ? "" : " ", s == MPK_OK ? "" : err.msg);
        bad += !ok;
    }
    mpk_gpu_close(g);
    free(ref);
    free(got);
    mpk_moe_free(&p, true);
    return bad;
}

static int device_main(void)
{
    char why[256];
    if (!mpk_gpu_available(why, sizeof why)) {
        fprintf(stderr, "skipping: %s\n", why);
        return 77;
    }
    int bad = 0;
    bad += device_case(1, 64, 32, 4, 1, -1);       /* T = 1, k = 1 */
    bad += device_case(64, 256, 128, 8, 2, -1);
    bad += device_case(5, 96, 40, 64, 2, -1);      /* most experts without tokens */
    bad += device_case(33, 17, 9, 8, 8, -1);       /* k = 8 = E, odd sizes (no 16-byte loads) */
    bad += device_case(300, 128, 200, 16, 4, 3);   /* one expert gets every token: several tiles */
    bad += device_case(700, 64, 72, 32, 8, -1);    /* 5600 pairs: several routing chunks */
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--device") == 0)
        return device_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backends_agree),
        cmocka_unit_test(test_hand_case),
        cmocka_unit_test(test_gpucheck_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
