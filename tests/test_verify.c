/* test_verify.c — verify catches every kind of tampering with a packed checkpoint (exit 3,
 * naming the tensor), re-sharding keeps the digest, manifests catch bit rot, diff figures
 * match hand-computed values. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mpk_verify.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *moepack(void)
{
    const char *m = getenv("MOEPACK");
    return m ? m : "build/moepack";
}

static char dir[] = "/tmp/mpk_vfy_XXXXXX";
static char src[128], packed[128];

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(packed, sizeof packed, "%s/packed", dir);
    if (tu_sh("%s synth --arch qwen3_moe --layers 2 --experts 4 --hidden 32 --intermediate 16 --shards 2 %s "
              ">/dev/null", moepack(), src))
        return -1;
    return tu_sh("%s pack -q %s %s", moepack(), src, packed);
}

static int teardown(void **state)
{
    (void)state;
    tu_rmrf(dir);
    return 0;
}

/* Runs a command; returns its exit status and leaves its stdout in out (malloc'd). */
static int run(char **out, const char *fmt, ...)
{
    char cmd[2048], log[] = "/tmp/mpk_vout_XXXXXX";
    int fd = mkstemp(log);
    close(fd);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = tu_sh("%s >%s 2>&1", cmd, log);
    size_t len;
    mpk_error err;
    *out = NULL;
    if (mpk_read_file(log, out, &len, &err) != MPK_OK)
        *out = strdup("");
    unlink(log);
    return rc;
}

static void fresh_copy(const char *to)
{
    tu_rmrf(to);
    assert_int_equal(tu_sh("cp -r %s %s", packed, to), 0);
}

/* Applies f to the bytes of one tensor in place. */
static void tamper(const char *ckpt, const char *name, void (*f)(char *buf, uint64_t n))
{
    mpk_ckpt *c;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(ckpt, &c, &err), MPK_OK);
    const mpk_ckpt_tensor *t = mpk_ckpt_find(c, name);
    assert_non_null(t);
    char *b = malloc(t->nbytes);
    int fd = c->shards[t->shard].fd;
    assert_int_equal(pread(fd, b, t->nbytes, (off_t)t->file_offset), (ssize_t)t->nbytes);
    f(b, t->nbytes);
    char *path = strdup(c->shards[t->shard].path);
    uint64_t off = t->file_offset, nb = t->nbytes;
    mpk_ckpt_close(c);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    fseek(fp, (long)off, SEEK_SET);
    assert_int_equal(fwrite(b, 1, nb, fp), nb);
    fclose(fp);
    free(path);
    free(b);
}

static void flip_bit(char *b, uint64_t n)
{
    b[n / 3] ^= 0x10;
}

static void swap_halves(char *b, uint64_t n, uint64_t half)
{
    char *t = malloc(half);
    memcpy(t, b, half);
    memcpy(b, b + half, half);
    memcpy(b + half, t, half);
    free(t);
    (void)n;
}

/* gate_up_proj [4, 32, 32] BF16: one expert is 2048 bytes, its gate half 1024 */
static void swap_experts_0_1(char *b, uint64_t n)
{
    swap_halves(b, n, 2048);
}

static void swap_gate_up_e2(char *b, uint64_t n)
{
    swap_halves(b + 2 * 2048, n, 1024);
}

static void expect_diff(const char *dst, const char *want_name, const char *want_kind)
{
    char *out;
    int rc = run(&out, "%s verify %s %s", moepack(), src, dst);
    char line[512];
    snprintf(line, sizeof line, "DIFF %-11s %s", want_kind, want_name);
    if (rc != 3 || !strstr(out, line))
        fail_msg("verify %s: rc %d, want 3 and '%s' in:\n%s", dst, rc, line, out);
    free(out);
}

static void test_clean_and_tampered(void **state)
{
    (void)state;
    char *out, cp[256];
    assert_int_equal(run(&out, "%s verify %s %s", moepack(), src, packed), 0);
    assert_non_null(strstr(out, "0 difference(s)"));
    free(out);
    snprintf(cp, sizeof cp, "%s/t", dir);
    const char *gu = "model.layers.1.mlp.experts.gate_up_proj";
    fresh_copy(cp);
    tamper(cp, "model.layers.0.mlp.experts.down_proj", flip_bit);
    expect_diff(cp, "model.layers.0.mlp.experts.down_proj", "content");
    fresh_copy(cp);
    tamper(cp, gu, swap_experts_0_1);
    expect_diff(cp, gu, "content");
    fresh_copy(cp);
    tamper(cp, gu, swap_gate_up_e2);
    expect_diff(cp, gu, "content");
    /* a pass-through tensor too */
    fresh_copy(cp);
    tamper(cp, "model.layers.1.self_attn.o_proj.weight", flip_bit);
    expect_diff(cp, "model.layers.1.self_attn.o_proj.weight", "content");
}

/* Rewrites the (single-shard) packed checkpoint at to with one tensor dropped, one added, or
 * one dtype changed in the header. */
static void rewrite(const char *to, const char *drop, const char *add, const char *retype)
{
    mpk_ckpt *c;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(packed, &c, &err), MPK_OK);
    assert_int_equal(c->n_shards, 1);
    mpk_tensor_info *ts = calloc(c->n_tensors + 1, sizeof *ts);
    const void **data = calloc(c->n_tensors + 1, sizeof *data);
    char **owned = calloc(c->n_tensors + 1, sizeof *owned);
    size_t n = 0, n_owned = 0;
    static const uint16_t extra[4] = {1, 2, 3, 4};
    for (size_t i = 0; i < c->n_tensors; i++) {
        const mpk_ckpt_tensor *t = &c->tensors[i];
        if (drop && strcmp(t->info->name, drop) == 0)
            continue;
        ts[n] = *t->info;
        if (retype && strcmp(t->info->name, retype) == 0)
            ts[n].dtype = MPK_DTYPE_F16;
        char *b = malloc(t->nbytes + 1);
        assert_int_equal(pread(c->shards[0].fd, b, t->nbytes, (off_t)t->file_offset), (ssize_t)t->nbytes);
        data[n++] = b;
        owned[n_owned++] = b;
    }
    if (add) {
        ts[n] = (mpk_tensor_info){.name = add, .dtype = MPK_DTYPE_BF16, .ndim = 1, .shape = {4}};
        data[n++] = extra;
    }
    tu_rmrf(to);
    mkdir(to, 0755);
    char *p = tu_join(to, "model.safetensors");
    assert_int_equal(mpk_st_write_file(p, ts, data, n, NULL, 0, &err), MPK_OK);
    free(p);
    for (size_t i = 0; i < n_owned; i++) /* the writer may reorder ts and data */
        free(owned[i]);
    free(owned);
    free(ts);
    free(data);
    mpk_ckpt_close(c);
}

static void test_dropped_added_retyped(void **state)
{
    (void)state;
    char cp[256];
    snprintf(cp, sizeof cp, "%s/r", dir);
    rewrite(cp, "model.layers.0.mlp.experts.gate_up_proj", NULL, NULL);
    expect_diff(cp, "model.layers.0.mlp.experts.gate_up_proj", "missing");
    rewrite(cp, NULL, "model.layers.0.mlp.experts.extra_bias", NULL);
    expect_diff(cp, "model.layers.0.mlp.experts.extra_bias", "extra");
    rewrite(cp, NULL, NULL, "model.layers.1.mlp.experts.down_proj");
    expect_diff(cp, "model.layers.1.mlp.experts.down_proj", "dtype-shape");
}

/* Re-sharded (and written with --no-fsync, which changes durability only): the same tensors,
 * the same digest, the same manifest. */
static void test_reshard_and_manifest(void **state)
{
    (void)state;
    char rs[256], *out, *a, *b;
    snprintf(rs, sizeof rs, "%s/resharded", dir);
    assert_int_equal(tu_sh("%s pack -q --no-fsync --max-shard-size 20KB %s %s", moepack(), src, rs), 0);
    mpk_ckpt *c;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(rs, &c, &err), MPK_OK);
    assert_true(c->n_shards > 2);
    mpk_ckpt_close(c);
    assert_int_equal(run(&out, "%s verify %s %s", moepack(), src, rs), 0);
    free(out);
    /* the same digest however the tensors are sharded */
    assert_int_equal(run(&a, "%s hash %s | tail -1", moepack(), packed), 0);
    assert_int_equal(run(&b, "%s hash %s | tail -1", moepack(), rs), 0);
    assert_string_equal(a, b);
    char *m1 = tu_join(packed, MPK_MANIFEST_NAME), *m2 = tu_join(rs, MPK_MANIFEST_NAME), *t1, *t2;
    size_t l1, l2;
    assert_int_equal(mpk_read_file(m1, &t1, &l1, &err), MPK_OK);
    assert_int_equal(mpk_read_file(m2, &t2, &l2, &err), MPK_OK);
    /* pack wrote both manifests; they agree from the digest on (the provenance records the
     * different --max-shard-size) */
    assert_non_null(strstr(t1, "\"digest\""));
    assert_non_null(strstr(t2, "\"digest\""));
    assert_string_equal(strstr(t1, "\"digest\""), strstr(t2, "\"digest\""));
    assert_non_null(strstr(t2, "\"max_shard_size\": 20000"));
    a[32] = 0;
    assert_non_null(strstr(t1, a)); /* and hold the digest hash prints */
    free(t1);
    free(t2);
    free(m1);
    free(m2);
    free(a);
    free(b);
    /* the manifest catches a byte corrupted later */
    assert_int_equal(run(&out, "%s verify %s", moepack(), rs), 0);
    free(out);
    tamper(rs, "model.layers.1.mlp.experts.gate_up_proj", flip_bit);
    assert_int_equal(run(&out, "%s verify %s", moepack(), rs), 3);
    assert_non_null(strstr(out, "model.layers.1.mlp.experts.gate_up_proj"));
    free(out);
    /* no manifest: exit 1 with a hint */
    assert_int_equal(run(&out, "%s verify %s", moepack(), src), 1);
    assert_non_null(strstr(out, "manifest"));
    free(out);
}

/* The manifest is read as strictly as a header: its format is checked, a tensor listed twice
 * or a malformed hash is named, a BOM refused; a digest mismatch shows both digests. */
static void test_manifest_strict(void **state)
{
    (void)state;
    char m[256], *out, *digest;
    snprintf(m, sizeof m, "%s/strict", dir);
    struct {
        const char *py; /* a Python expression of the manifest's text t (python3 runs meson) */
        int rc;
        const char *want;
    } cases[] = {
        {"t.replace('moepack.manifest/1', 'moepack.manifest/9')", 1, "format 'moepack.manifest/9'"},
        {"t.replace(Q + 'format' + Q, Q + 'formats' + Q)", 1, "no \"format\""},
        {"chr(0xfeff) + t", 1, "byte-order mark"},
        {"t.replace(Q + 'xxh3_128' + Q + ':' + T + Q, Q + 'xxh3_128' + Q + ':' + T + Q + 'zz', 1)", 3,
         "not 32 hex digits"},
        /* the first tensor's entry again, as the last one: listed twice */
        {"t[:t.rindex('}', 0, t.rindex('}'))] + ',' + t[t.index('{', t.index('tensors')) + 1:"
         "t.index('}', t.index(Q + 'xxh3_128' + Q)) + 1] + '}}'", 1, "listed twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fresh_copy(m);
        assert_int_equal(tu_sh("python3 -c \"import sys; p = sys.argv[1]; t = open(p).read(); Q, T = chr(34), chr(32); "
                               "open(p, 'w').write(%s)\" %s/" MPK_MANIFEST_NAME, cases[i].py, m), 0);
        int rc = run(&out, "%s verify %s", moepack(), m);
        if (rc != cases[i].rc || !strstr(out, cases[i].want))
            fail_msg("case %zu: rc %d, want %d and '%s' in:\n%s", i, rc, cases[i].rc, cases[i].want, out);
        free(out);
    }
    /* a wrong checkpoint digest: both digests are printed, not zeros */
    fresh_copy(m);
    assert_int_equal(run(&digest, "%s hash %s | tail -1", moepack(), m), 0);
    digest[32] = 0;
    assert_int_equal(tu_sh("sed -i 's/\"digest\": \"[0-9a-f]*\"/\"digest\": \"%032d\"/' %s/" MPK_MANIFEST_NAME,
                           7, m), 0);
    assert_int_equal(run(&out, "%s verify %s", moepack(), m), 3);
    if (!strstr(out, digest) || !strstr(out, "00000000000000000000000000000007"))
        fail_msg("want both digests %s and ...07 in:\n%s", digest, out);
    free(out);
    free(digest);
}

static void test_unpack_round_trip_verifies(void **state)
{
    (void)state;
    char back[256], *out;
    snprintf(back, sizeof back, "%s/back", dir);
    assert_int_equal(tu_sh("%s unpack -q %s %s", moepack(), packed, back), 0);
    assert_int_equal(run(&out, "%s verify %s %s", moepack(), src, back), 0); /* round trip */
    free(out);
    assert_int_equal(run(&out, "%s verify %s %s", moepack(), packed, back), 0); /* reverse direction */
    free(out);
    tamper(back, "model.layers.0.mlp.experts.3.up_proj.weight", flip_bit);
    assert_int_equal(run(&out, "%s verify %s %s", moepack(), packed, back), 3);
    assert_non_null(strstr(out, "model.layers.0.mlp.experts.3.up_proj.weight"));
    free(out);
}

/* Before: a spec casting to FP8 ({"op": "cast", "dtype": "F8_E4M3"}, no scales) converted,
 * exit 0, and verify refused what it made (FP8 in DST read as a block-scaled quantization). A
 * cast to FP8 without scales is lossy (saturated, 3 mantissa bits) and no loader reads it as the
 * weights: the spec is refused when parsed, by convert, plan and verify alike, the message
 * naming the op and what cast supports; a cast to F16 converts and verifies. */
static void test_cast_spec_convert_and_verify_agree(void **state)
{
    (void)state;
    char spec[256], out_dir[256], *out;
    snprintf(spec, sizeof spec, "%s/cast.json", dir);
    snprintf(out_dir, sizeof out_dir, "%s/cast_out", dir);
    const char *fmt = "{\"name\": \"c\", \"converters\": [{\"sources\": "
                      "[\"model.layers.{layer}.mlp.experts.{expert}.down_proj.weight\"], "
                      "\"target\": \"model.layers.{layer}.mlp.experts.down_proj\", \"ops\": "
                      "[{\"op\": \"merge\", \"dim\": 0}, {\"op\": \"cast\", \"dtype\": \"%s\"%s}]}]}";
    const char *bad[][2] = {{"F8_E4M3", ""}, {"F8_E5M2", ""}, {"F8_E4M3", ", \"from\": \"BF16\""}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_write(spec, tu_fmt(fmt, bad[i][0], bad[i][1]));
        const char *cmds[] = {"convert -q %s %s --spec %s", "verify %s %s --spec %s", "plan %s --spec %s%s"};
        for (int k = 0; k < 3; k++) {
            tu_rmrf(out_dir);
            assert_int_equal(run(&out, "%s %s", moepack(),
                                 k < 2 ? tu_fmt(cmds[k], src, k ? packed : out_dir, spec) : tu_fmt(cmds[k], src, spec, "")), 1);
            assert_non_null(strstr(out, tu_fmt("$.converters[0].ops[1]: cast to %s%s is not supported: cast converts "
                                               "to F32, F16 or BF16", bad[i][0], *bad[i][1] ? " from BF16" : "")));
            assert_non_null(strstr(out, "use the quant_fp8_block op (or a conversion's fp8-block128 quantization)"));
            free(out);
            struct stat st;
            assert_int_not_equal(stat(out_dir, &st), 0);
        }
    }
    /* a cast to F16: converts, and verify accepts what convert made */
    tu_write(spec, tu_fmt(fmt, "F16", ""));
    tu_rmrf(out_dir);
    /* (the spec merges down_proj only: the other experts' tensors pass through as asked) */
    assert_int_equal(run(&out, "%s convert -q --pass-unknown %s %s --spec %s", moepack(), src, out_dir, spec), 0);
    free(out);
    assert_int_equal(run(&out, "%s verify %s %s --spec %s", moepack(), src, out_dir, spec), 0);
    assert_non_null(strstr(out, "identical"));
    free(out);
    tu_rmrf(out_dir);
}

static void test_quantized_verify(void **state)
{
    (void)state;
    char fp8[256], deq[256], *out;
    snprintf(fp8, sizeof fp8, "%s/fp8", dir);
    snprintf(deq, sizeof deq, "%s/deq", dir);
    assert_int_equal(tu_sh("%s synth --arch deepseek_v3 --quant fp8 --layers 1 --experts 2 --hidden 256 "
                           "--intermediate 128 %s >/dev/null", moepack(), fp8), 0);
    assert_int_equal(tu_sh("%s pack -q --dequantize %s %s", moepack(), fp8, deq), 0);
    assert_int_equal(run(&out, "%s verify --dequantize %s %s", moepack(), fp8, deq), 0);
    free(out);
    /* a value moved past the tolerance is caught */
    tamper(deq, "model.layers.0.mlp.experts.gate_up_proj", flip_bit);
    assert_int_equal(run(&out, "%s verify --dequantize %s %s", moepack(), fp8, deq), 3);
    assert_non_null(strstr(out, "beyond atol"));
    free(out);
}

/* The manifest pack writes holds the hashes it took while writing (each tensor read back as
 * soon as it was complete, on whichever thread was free): the same document `moepack hash
 * --write` makes from the finished files, for computed tensors (dequantize, transpose), many
 * shards and threads. */
static void expect_manifest_matches_rehash(const char *out)
{
    char *m = tu_join(out, MPK_MANIFEST_NAME), *by_pack, *by_hash;
    size_t l1, l2;
    mpk_error err = {0};
    assert_int_equal(mpk_read_file(m, &by_pack, &l1, &err), MPK_OK);
    /* hash --write hashes every tensor again (keeping only the provenance pack recorded) */
    assert_int_equal(tu_sh("%s hash --write %s >/dev/null", moepack(), out), 0);
    assert_int_equal(mpk_read_file(m, &by_hash, &l2, &err), MPK_OK);
    assert_string_equal(by_pack, by_hash);
    free(by_pack);
    free(by_hash);
    free(m);
}

static void test_manifest_hashed_while_writing(void **state)
{
    (void)state;
    static const char *names[] = {"m-fp8", "m-deq", "m-vl", "m-vlp", "m-a", "m-b"};
    char d[6][256];
    for (int i = 0; i < 6; i++)
        snprintf(d[i], sizeof d[i], "%s/%s", dir, names[i]);
    const char *fp8 = d[0], *deq = d[1], *vl = d[2], *vlp = d[3], *a = d[4], *b = d[5];
    assert_int_equal(tu_sh("%s synth --arch deepseek_v3 --quant fp8 --layers 2 --experts 3 --hidden 256 "
                           "--intermediate 128 %s >/dev/null", moepack(), fp8), 0);
    assert_int_equal(tu_sh("%s pack -q --dequantize --threads 3 --max-shard-size 300KB --mem 1MiB %s %s",
                           moepack(), fp8, deq), 0);
    expect_manifest_matches_rehash(deq);
    assert_int_equal(tu_sh("%s synth --arch qwen3_vl_moe --layers 2 --experts 4 --hidden 64 --intermediate 32 "
                           "%s >/dev/null", moepack(), vl), 0);
    assert_int_equal(tu_sh("%s pack -q --threads 4 --max-shard-size 20KB %s %s", moepack(), vl, vlp), 0);
    expect_manifest_matches_rehash(vlp);
    /* and the plain copy path, one thread, then the buffered path */
    assert_int_equal(tu_sh("%s pack -q --threads 1 %s %s", moepack(), src, a), 0);
    expect_manifest_matches_rehash(a);
    assert_int_equal(tu_sh("%s pack -q --no-copy-range --threads 2 --max-shard-size 30KB %s %s", moepack(), src, b), 0);
    expect_manifest_matches_rehash(b);
}

static void write_f32(const char *path, const float *v, int n)
{
    mpk_tensor_info t = {.name = "w", .dtype = MPK_DTYPE_F32, .ndim = 1, .shape = {n}};
    const void *d[1] = {v};
    mpk_error err = {0};
    assert_int_equal(mpk_st_write_file(path, &t, d, 1, NULL, 0, &err), MPK_OK);
}

static void test_diff_figures(void **state)
{
    (void)state;
    char pa[256], pb[256], *out;
    snprintf(pa, sizeof pa, "%s/a.safetensors", dir);
    snprintf(pb, sizeof pb, "%s/b.safetensors", dir);
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 4.5f};
    write_f32(pa, a, 4);
    write_f32(pb, b, 4);
    mpk_ckpt *ca, *cb;
    mpk_error err = {0};
    assert_int_equal(mpk_ckpt_open(pa, &ca, &err), MPK_OK);
    assert_int_equal(mpk_ckpt_open(pb, &cb, &err), MPK_OK);
    mpk_cmp_report *r;
    mpk_cmp_opts co = {.atol = 0.1, .rtol = 0, .values = true};
    mpk_plan_opts po = {0};
    assert_int_equal(mpk_verify_compare(ca, cb, NULL, &po, &co, &r, &err), MPK_OK);
    assert_int_equal(r->n, 1);
    const mpk_tensor_cmp *t = &r->t[0];
    assert_int_equal(t->n, 4);
    assert_true(fabs(t->max_abs - 0.5) < 1e-12);
    assert_true(fabs(t->max_rel - 0.125) < 1e-12);           /* 0.5 / 4 */
    assert_true(fabs(t->rmse - 0.25) < 1e-12);               /* sqrt(0.25 / 4) */
    assert_true(fabs(t->cosine - 32 / sqrt(30 * 34.25)) < 1e-12);
    assert_int_equal(t->n_out_of_tol, 1);
    assert_true(t->differs);
    mpk_cmp_report_free(r);
    mpk_ckpt_close(ca);
    mpk_ckpt_close(cb);
    assert_int_equal(run(&out, "%s diff %s %s --atol 0.1", moepack(), pa, pb), 3);
    free(out);
    assert_int_equal(run(&out, "%s diff %s %s --atol 0.5", moepack(), pa, pb), 0);
    free(out);
    assert_int_equal(run(&out, "%s diff %s %s --rtol 0.125", moepack(), pa, pb), 0);
    free(out);
    /* across layouts: per-expert vs packed through the preset, exactly equal */
    assert_int_equal(run(&out, "%s diff %s %s --json", moepack(), src, packed), 0);
    assert_non_null(strstr(out, "\"identical\": true"));
    free(out);
    /* usage errors */
    assert_int_equal(run(&out, "%s diff %s", moepack(), pa), 2);
    free(out);
    assert_int_equal(run(&out, "%s verify %s %s --rtol -1", moepack(), pa, pb), 2);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean_and_tampered),
        cmocka_unit_test(test_dropped_added_retyped),
        cmocka_unit_test(test_reshard_and_manifest),
        cmocka_unit_test(test_manifest_strict),
        cmocka_unit_test(test_unpack_round_trip_verifies),
        cmocka_unit_test(test_quantized_verify),
        cmocka_unit_test(test_cast_spec_convert_and_verify_agree),
        cmocka_unit_test(test_manifest_hashed_while_writing),
        cmocka_unit_test(test_diff_figures),
    };
    if (getenv("MPK_TEST_FILTER")) /* one test by name */
        cmocka_set_test_filter(getenv("MPK_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
