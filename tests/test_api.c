/* test_api.c — libmoepack through its public header only, linked against the shared library:
 * what a loader or a Python pipeline sees. Round trips through mpk_convert, the packed layout
 * read back through mpk_ckpt_read_tensor (gate rows first, experts in order), reports, every
 * error a request can meet, cancellation, progress, and that nothing but the API is exported. */
#define _GNU_SOURCE
#include "moepack/moepack.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char root[256];

static char *path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", root, name);
    return p;
}

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* A small Mixtral-style per-expert checkpoint at root/src (E=4, H=32, I=16, 2 layers). */
static int setup(void **state)
{
    snprintf(root, sizeof root, "/tmp/mpk-api-XXXXXX");
    assert_non_null(mkdtemp(root));
    mpk_synth_opts o;
    mpk_synth_opts_init(&o);
    o.experts = 4, o.hidden = 32, o.intermediate = 16, o.layers = 2, o.seed = 7;
    mpk_error err = {0};
    assert_int_equal(mpk_synth(&o, path("src"), &err), MPK_OK);
    mpk_convert_req r;
    mpk_convert_req_init(&r, path("src"), path("packed"));
    r.max_shard_size = 100000;
    assert_int_equal(mpk_convert(&r, NULL, &err), MPK_OK);
    return 0;
}

static int teardown(void **state)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_round_trip_and_hashes(void **state)
{
    mpk_error err = {0};
    mpk_convert_req r;
    mpk_convert_req_init(&r, path("packed"), path("unpacked"));
    r.direction = MPK_DIRECTION_UNPACK;
    mpk_report *rep;
    assert_int_equal(mpk_convert(&r, &rep, &err), MPK_OK);
    assert_non_null(strstr(mpk_report_json(rep), "\"direction\": \"unpack\""));
    assert_non_null(strstr(mpk_report_text(rep), "(preset mixtral, reversed)"));
    mpk_report_free(rep);
    /* every tensor of src comes back with the same XXH3-128 */
    mpk_report *a, *b;
    assert_int_equal(mpk_hash(path("src"), 0, &a, &err), MPK_OK);
    assert_int_equal(mpk_hash(path("unpacked"), 0, &b, &err), MPK_OK);
    /* 2 layers x (4 experts x 3 + attention 4 + 2 norms + router) + embed, norm, lm_head */
    assert_int_equal(mpk_report_count(a), 2 * (4 * 3 + 4 + 2 + 1) + 3);
    assert_int_equal(mpk_report_count(a), mpk_report_count(b));
    for (size_t i = 0; i < mpk_report_count(a); i++) {
        mpk_report_item x, y;
        assert_true(mpk_report_item_at(a, i, &x));
        assert_true(mpk_report_item_at(b, i, &y));
        assert_string_equal(x.name, y.name);
        assert_int_equal(strlen(x.hash), 32);
        assert_string_equal(x.hash, y.hash);
    }
    assert_false(mpk_report_item_at(a, mpk_report_count(a), &(mpk_report_item){0}));
    mpk_report_free(a);
    mpk_report_free(b);
    /* verify: both directions, from the layouts */
    mpk_compare_req q;
    mpk_compare_req_init(&q, path("src"), path("packed"));
    assert_int_equal(mpk_verify(&q, &rep, &err), MPK_OK);
    assert_int_equal(mpk_report_differences(rep), 0);
    mpk_report_free(rep);
    mpk_compare_req_init(&q, path("packed"), path("unpacked"));
    assert_int_equal(mpk_verify(&q, &rep, &err), MPK_OK);
    assert_int_equal(mpk_report_differences(rep), 0);
    mpk_report_free(rep);
    mpk_compare_req_init(&q, NULL, path("packed")); /* against its manifest */
    assert_int_equal(mpk_verify(&q, &rep, &err), MPK_OK);
    assert_int_equal(mpk_report_differences(rep), 0);
    mpk_report_free(rep);
}

/* Expert e's gate_up_proj rows are its gate_proj (w1) rows, then its up_proj (w3) rows. */
static void test_packed_layout_read_back(void **state)
{
    mpk_error err = {0};
    mpk_ckpt *src, *packed;
    assert_int_equal(mpk_ckpt_open(path("src"), &src, &err), MPK_OK);
    assert_int_equal(mpk_ckpt_open(path("packed"), &packed, &err), MPK_OK);
    mpk_tensor_desc gu;
    assert_true(mpk_ckpt_find_tensor(packed, "model.layers.1.mlp.experts.gate_up_proj", &gu));
    assert_int_equal(gu.dtype, MPK_DTYPE_BF16);
    assert_int_equal(gu.ndim, 3);
    assert_int_equal(gu.shape[0], 4);
    assert_int_equal(gu.shape[1], 32);
    assert_int_equal(gu.shape[2], 32);
    uint64_t half = 16 * 32 * 2; /* I rows of H BF16 values */
    char *want = malloc(half), *got = malloc(half);
    for (int e = 0; e < 4; e++)
        for (int w = 0; w < 2; w++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.1.block_sparse_moe.experts.%d.%s.weight", e, w ? "w3" : "w1");
            assert_int_equal(mpk_ckpt_read_tensor(src, name, 0, half, want, &err), MPK_OK);
            assert_int_equal(mpk_ckpt_read_tensor(packed, gu.name, ((uint64_t)e * 2 + (uint64_t)w) * half, half, got,
                                                  &err), MPK_OK);
            assert_memory_equal(want, got, half);
        }
    assert_int_equal(mpk_ckpt_read_tensor(packed, gu.name, gu.nbytes - 1, 2, got, &err), MPK_E_USAGE);
    assert_int_equal(mpk_ckpt_read_tensor(packed, "no.such.tensor", 0, 1, got, &err), MPK_E_NOT_FOUND);
    assert_non_null(strstr(err.msg, "no.such.tensor"));
    size_t n = mpk_ckpt_tensor_count(packed);
    mpk_tensor_desc d;
    assert_true(mpk_ckpt_tensor_at(packed, n - 1, &d));
    assert_false(mpk_ckpt_tensor_at(packed, n, &d));
    free(want);
    free(got);
    mpk_ckpt_close(src);
    mpk_ckpt_close(packed);
}

/* Each tensor of view v equals the one of checkpoint c (names, dtype, shape, bytes), read whole
 * and in two unaligned pieces. */
static void view_equals(const mpk_view *v, const mpk_ckpt *c)
{
    mpk_error err = {0};
    assert_int_equal(mpk_view_tensor_count(v), mpk_ckpt_tensor_count(c));
    for (size_t i = 0; i < mpk_view_tensor_count(v); i++) {
        mpk_tensor_desc d, w;
        assert_true(mpk_view_tensor_at(v, i, &d));
        assert_true(mpk_ckpt_find_tensor(c, d.name, &w));
        assert_int_equal(d.dtype, w.dtype);
        assert_int_equal(d.ndim, w.ndim);
        assert_memory_equal(d.shape, w.shape, sizeof d.shape);
        char *a = malloc(d.nbytes + 1), *b = malloc(d.nbytes + 1);
        assert_int_equal(mpk_ckpt_read_tensor(c, d.name, 0, w.nbytes, a, &err), MPK_OK);
        assert_int_equal(mpk_view_read(v, d.name, 0, d.nbytes, b, &err), MPK_OK);
        assert_memory_equal(a, b, d.nbytes);
        uint64_t cut = d.nbytes / 3 + 1; /* (odd: inside an element) */
        memset(b, 0, d.nbytes);
        assert_int_equal(mpk_view_read(v, d.name, cut, d.nbytes - cut, b + cut, &err), MPK_OK);
        assert_int_equal(mpk_view_read(v, d.name, 0, cut, b, &err), MPK_OK);
        assert_memory_equal(a, b, d.nbytes);
        free(a);
        free(b);
    }
}

/* mpk_view_open: the packed view of the per-expert source is what mpk_convert wrote, the
 * per-expert view of that is the source again, a view in the layout a checkpoint has is it. */
static void test_views(void **state)
{
    mpk_error err = {0};
    mpk_ckpt *src, *packed;
    mpk_view *v;
    assert_int_equal(mpk_ckpt_open(path("src"), &src, &err), MPK_OK);
    assert_int_equal(mpk_ckpt_open(path("packed"), &packed, &err), MPK_OK);
    assert_int_equal(mpk_view_open(path("src"), "packed", NULL, &v, &err), MPK_OK);
    assert_string_equal(mpk_view_layout(v), "packed");
    view_equals(v, packed);
    mpk_tensor_desc d;
    assert_true(mpk_view_find_tensor(v, "model.layers.1.mlp.experts.gate_up_proj", &d));
    assert_null(d.file); /* computed, in no file */
    assert_false(mpk_view_find_tensor(v, "model.layers.1.block_sparse_moe.experts.0.w1.weight", &d));
    char b[4];
    assert_int_equal(mpk_view_read(v, "no.such.tensor", 0, 1, b, &err), MPK_E_NOT_FOUND);
    assert_int_equal(mpk_view_read(v, "model.layers.1.mlp.experts.gate_up_proj", 4 * 32 * 32 * 2 - 1, 2, b, &err),
                     MPK_E_USAGE);
    const char *k, *val;
    assert_int_equal(mpk_view_metadata_count(v), 2);
    assert_true(mpk_view_metadata_at(v, 1, &k, &val));
    assert_string_equal(k, "moepack_layout");
    assert_string_equal(val, "packed");
    assert_false(mpk_view_metadata_at(v, 2, &k, &val));
    mpk_view_close(v);
    assert_int_equal(mpk_view_open(path("packed"), "per-expert", NULL, &v, &err), MPK_OK);
    view_equals(v, src);
    mpk_view_close(v);
    assert_int_equal(mpk_view_open(path("packed"), "packed", NULL, &v, &err), MPK_OK); /* as stored */
    view_equals(v, packed);
    assert_true(mpk_view_find_tensor(v, "model.layers.1.mlp.experts.gate_up_proj", &d));
    assert_non_null(d.file);
    mpk_view_close(v);
    assert_int_equal(mpk_view_open(path("src"), "stacked", NULL, &v, &err), MPK_E_USAGE);
    assert_null(v);
    assert_int_equal(mpk_view_open(path("absent"), "packed", NULL, &v, &err), MPK_E_NOT_FOUND);
    assert_int_equal(mpk_view_open(path("src"), "packed", "no-such-preset", &v, &err), MPK_E_PRESET);
    mpk_view_close(NULL);
    mpk_ckpt_close(src);
    mpk_ckpt_close(packed);
}

static void test_inspect_and_plan(void **state)
{
    mpk_error err = {0};
    mpk_report *r;
    assert_int_equal(mpk_inspect(path("packed"), &r, &err), MPK_OK);
    assert_non_null(strstr(mpk_report_json(r), "\"expert_layout\": \"packed\""));
    assert_non_null(strstr(mpk_report_text(r), "model_type: mixtral"));
    mpk_report_free(r);
    mpk_convert_req q;
    mpk_convert_req_init(&q, path("src"), NULL);
    mpk_plan *p;
    assert_int_equal(mpk_plan_create(&q, &p, &err), MPK_OK);
    char *text = mpk_plan_describe(p, false);
    assert_non_null(strstr(text, "model.layers.0.mlp.experts.gate_up_proj"));
    free(text);
    mpk_plan_free(p);
    mpk_plan_free(NULL);
    mpk_report_free(NULL);
}

typedef struct {
    int calls;
    uint64_t last_done, last_total;
} prog;

static void on_progress(void *ctx, uint64_t done, uint64_t total, double s)
{
    prog *p = ctx;
    assert_true(done <= total);
    p->calls++;
    p->last_done = done;
    p->last_total = total;
}

static void test_progress_and_cancel(void **state)
{
    mpk_error err = {0};
    prog pr = {0};
    mpk_convert_req r;
    mpk_convert_req_init(&r, path("src"), path("p2"));
    r.progress = on_progress;
    r.ctx = &pr;
    mpk_report *rep;
    assert_int_equal(mpk_convert(&r, &rep, &err), MPK_OK);
    assert_true(pr.calls >= 1);
    assert_true(pr.last_total > 0);
    assert_int_equal(pr.last_done, pr.last_total);
    mpk_report_free(rep);
    int cancel = 1;
    r.dst = path("p3");
    r.cancel = &cancel;
    assert_int_equal(mpk_convert(&r, NULL, &err), MPK_E_CANCELLED);
    assert_string_equal(mpk_status_str(err.code), "cancelled");
    assert_false(exists(path("p3")));
    /* verify (against src, and against its manifest) and diff stop on the flag too */
    mpk_compare_req q;
    mpk_compare_req_init(&q, path("src"), path("packed"));
    assert_int_equal(mpk_verify(&q, &rep, &err), MPK_OK);
    mpk_report_free(rep);
    q.cancel = &cancel;
    rep = NULL;
    assert_int_equal(mpk_verify(&q, &rep, &err), MPK_E_CANCELLED);
    assert_null(rep);
    q.src = NULL;
    assert_int_equal(mpk_verify(&q, &rep, &err), MPK_E_CANCELLED);
    q.src = path("src");
    q.dst = path("src");
    assert_int_equal(mpk_diff(&q, &rep, &err), MPK_E_CANCELLED);
    mpk_compress_req z;
    mpk_compress_req_init(&z, path("packed"), path("pz"));
    z.cancel = &cancel;
    assert_int_equal(mpk_compress(&z, NULL, &err), MPK_E_CANCELLED);
    assert_false(exists(path("pz")));
    /* hash: stopped, and no manifest written; the same request with the flag down hashes */
    mpk_hash_req h;
    mpk_hash_req_init(&h, path("src"));
    h.flags = MPK_HASH_WRITE;
    h.cancel = &cancel;
    assert_int_equal(mpk_hash_run(&h, &rep, &err), MPK_E_CANCELLED);
    assert_false(exists(path("src/moepack.manifest.json")));
    cancel = 0;
    h.flags = 0;
    h.progress = on_progress;
    h.ctx = &pr;
    pr = (prog){0};
    assert_int_equal(mpk_hash_run(&h, &rep, &err), MPK_OK);
    assert_true(pr.calls >= 1);
    assert_int_equal(pr.last_done, pr.last_total);
    mpk_report_free(rep);
    assert_int_equal(mpk_diff(&q, &rep, &err), MPK_OK);
    mpk_report_free(rep);
}

/* Each error a request can meet: the status, a message naming what it is about, and the
 * request field its way out is about (a checkpoint at dst: MPK_CONVERT_FORCE). */
static void test_request_errors(void **state)
{
    mpk_error err;
    mpk_convert_req r;
    static const struct {
        const char *src, *dst, *spec;
        mpk_direction dir;
        uint64_t mem;
        mpk_status want;
        const char *names;
        mpk_field field;
    } cases[] = {
        {"src", "packed", "auto", MPK_DIRECTION_PACK, 1u << 30, MPK_E_DST_EXISTS, "packed", MPK_FIELD_FORCE},
        {"packed", "x1", "auto", MPK_DIRECTION_PACK, 1u << 30, MPK_E_ALREADY_CONVERTED, "packed", MPK_FIELD_NONE},
        {"src", "x2", "no-such-preset", MPK_DIRECTION_PACK, 1u << 30, MPK_E_PRESET, "no-such-preset", MPK_FIELD_SPEC},
        {"nothing-here", "x3", "auto", MPK_DIRECTION_PACK, 1u << 30, MPK_E_NOT_FOUND, "nothing-here", MPK_FIELD_NONE},
        {"src", "x4", "auto", MPK_DIRECTION_PACK, 1000, MPK_E_USAGE, "1 MiB", MPK_FIELD_MEM},
        {"src", "src/inner", "auto", MPK_DIRECTION_PACK, 1u << 30, MPK_E_OVERLAP, "inner", MPK_FIELD_DST},
        {"src", "x5", "auto", MPK_DIRECTION_COUNT, 1u << 30, MPK_E_USAGE, "direction", MPK_FIELD_NONE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char src[512], dst[512];
        snprintf(src, sizeof src, "%s", path(cases[i].src));
        snprintf(dst, sizeof dst, "%s", path(cases[i].dst));
        mpk_convert_req_init(&r, src, dst);
        r.spec = cases[i].spec;
        r.direction = cases[i].dir;
        r.mem = cases[i].mem;
        memset(&err, 0xff, sizeof err); /* a stale field is not left behind */
        mpk_status s = mpk_convert(&r, NULL, &err);
        if (s != cases[i].want || !strstr(err.msg, cases[i].names) || err.field != cases[i].field)
            fail_msg("case %zu: %s (%s) about '%s', want %s naming '%s' about '%s'", i, mpk_status_str(s), err.msg,
                     mpk_field_name(err.field), mpk_status_str(cases[i].want), cases[i].names,
                     mpk_field_name(cases[i].field));
        /* the library words the fact, not a command line's option */
        assert_null(strstr(err.msg, "--"));
        if (cases[i].want != MPK_E_DST_EXISTS)
            assert_false(exists(dst));
    }
    /* a measurement switch out of range */
    mpk_convert_req_init(&r, path("src"), path("x8"));
    r.bounce = MPK_SWITCH_COUNT;
    assert_int_equal(mpk_convert(&r, NULL, &err), MPK_E_USAGE);
    assert_non_null(strstr(err.msg, "bounce"));
    assert_false(exists(path("x8")));
    /* an empty path, and a destination that names no directory to create */
    mpk_convert_req_init(&r, path("src"), "");
    assert_int_equal(mpk_convert(&r, NULL, &err), MPK_E_USAGE);
    assert_non_null(strstr(err.msg, "empty path"));
    mpk_convert_req_init(&r, "", path("x6"));
    assert_int_equal(mpk_convert(&r, NULL, &err), MPK_E_USAGE);
    assert_false(exists(path("x6")));
    mpk_compress_req cr;
    mpk_compress_req_init(&cr, path("src"), "");
    assert_int_equal(mpk_compress(&cr, NULL, &err), MPK_E_USAGE);
    assert_non_null(strstr(err.msg, "not empty"));
    mpk_convert_req_init(&r, path("src"), path("x7/.."));
    assert_int_equal(mpk_convert(&r, NULL, &err), MPK_E_USAGE);
    assert_non_null(strstr(err.msg, "name of the directory to create"));
    /* a malformed spec file: the JSON path of the problem */
    FILE *f = fopen(path("bad.json"), "w");
    fputs("{\"name\": \"bad\", \"converters\": [{\"sources\": 3}]}", f);
    fclose(f);
    mpk_spec *sp;
    assert_int_equal(mpk_spec_load(path("bad.json"), NULL, false, &sp, &err), MPK_E_SPEC);
    assert_null(sp);
    assert_non_null(strstr(err.msg, "bad.json"));
    /* hash --write on a lone file; verify without a manifest; diff with one path */
    mpk_report *rep;
    assert_int_equal(mpk_hash(path("src/model-00001-of-00002.safetensors"), MPK_HASH_WRITE, &rep, &err), MPK_E_USAGE);
    mpk_compare_req q;
    mpk_compare_req_init(&q, NULL, path("src"));
    assert_int_equal(mpk_verify(&q, &rep, &err), MPK_E_MANIFEST);
    assert_int_equal(mpk_diff(&q, &rep, &err), MPK_E_USAGE);
    assert_null(rep);
}

static void test_diff_finds_a_change(void **state)
{
    mpk_error err = {0};
    /* copy src, flip one byte of one tensor's data */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", path("src"), path("changed"));
    assert_int_equal(system(cmd), 0);
    mpk_ckpt *c;
    assert_int_equal(mpk_ckpt_open(path("changed"), &c, &err), MPK_OK);
    mpk_tensor_desc d;
    assert_true(mpk_ckpt_find_tensor(c, "model.norm.weight", &d));
    char shard[600];
    snprintf(shard, sizeof shard, "%s/%s", path("changed"), d.file);
    mpk_ckpt_close(c);
    mpk_report *r;
    mpk_compare_req q;
    mpk_compare_req_init(&q, path("src"), path("changed"));
    assert_int_equal(mpk_diff(&q, &r, &err), MPK_OK);
    assert_int_equal(mpk_report_differences(r), 0);
    mpk_report_free(r);
    /* overwrite the last two bytes of the shard: one element of its last tensor */
    FILE *f = fopen(shard, "r+b");
    assert_non_null(f);
    fseek(f, -2, SEEK_END);
    fputc(0x7f, f), fputc(0x7f, f);
    fclose(f);
    assert_int_equal(mpk_verify(&q, &r, &err), MPK_OK);
    assert_int_equal(mpk_report_differences(r), 1);
    mpk_report_item it;
    assert_true(mpk_report_item_at(r, 0, &it));
    assert_string_equal(it.kind, "content");
    mpk_report_free(r);
}

static void test_presets_and_status(void **state)
{
    bool mixtral = false;
    const char *n;
    size_t count = 0;
    for (size_t i = 0; (n = mpk_preset_name(i)); i++, count++)
        mixtral |= strcmp(n, "mixtral") == 0;
    assert_true(mixtral);
    assert_true(count >= 13);
    mpk_spec *s;
    mpk_error err = {0};
    assert_int_equal(mpk_spec_load("mixtral", NULL, true, &s, &err), MPK_OK);
    assert_string_equal(mpk_spec_model_type(s, 0), "mixtral");
    assert_null(mpk_spec_model_type(s, mpk_spec_model_type_count(s)));
    assert_non_null(mpk_spec_description(s));
    mpk_spec_free(s);
    assert_int_equal(mpk_spec_load("auto", NULL, false, &s, &err), MPK_E_PRESET);
    assert_string_equal(mpk_status_str(MPK_OK), "ok");
    assert_string_equal(mpk_status_str(MPK_STATUS_COUNT), "unknown-status");
    /* the field names are the request's own words, stable (python/moepack maps them to keywords) */
    static const char *const fields[] = {"", "force", "resume", "copy_links", "pass_unknown", "mem", "threads",
                                         "spec", "quant", "revision", "dst", "compress_level"};
    assert_int_equal(sizeof fields / sizeof fields[0], MPK_FIELD_COUNT);
    for (int i = 0; i < MPK_FIELD_COUNT; i++)
        assert_string_equal(mpk_field_name((mpk_field)i), fields[i]);
    assert_null(mpk_field_name(MPK_FIELD_COUNT));
    assert_string_equal(mpk_dtype_name(MPK_DTYPE_BF16), "BF16");
    assert_non_null(strstr(mpk_features(), "io_uring="));
    assert_int_equal(mpk_version()[0], '0');
}

/* The shared library exports the API and nothing else of ours. */
static void test_only_the_api_is_exported(void **state)
{
    void *h = dlopen(getenv("MOEPACK_LIB") ? getenv("MOEPACK_LIB") : "libmoepack.so", RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        h = dlopen(NULL, RTLD_NOW);
    assert_non_null(h);
    assert_non_null(dlsym(h, "mpk_convert"));
    static const char *const internal[] = {"mpk_plan_build", "mpk_exec", "mpk_arena_new", "mpk_st_parse",
                                           "mpk_op_apply", "mpk_verify_compare", "mpk_alloc"};
    for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++)
        if (dlsym(h, internal[i]))
            fail_msg("%s is exported", internal[i]);
    dlclose(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_hashes), cmocka_unit_test(test_packed_layout_read_back),
        cmocka_unit_test(test_inspect_and_plan),      cmocka_unit_test(test_progress_and_cancel),
        cmocka_unit_test(test_request_errors),        cmocka_unit_test(test_diff_finds_a_change),
        cmocka_unit_test(test_presets_and_status),    cmocka_unit_test(test_only_the_api_is_exported),
        cmocka_unit_test(test_views),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
