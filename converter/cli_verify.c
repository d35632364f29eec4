/* cli_verify.c — hash, verify, diff. */
#define _GNU_SOURCE
#include "cli.h"
#include "mpk_verify.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {"missing", "extra", "dtype-shape", "content"};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == MPK_DIFF_COUNT, "diff kinds");

mpk_status mpk_cli_write_manifest(const char *dir, mpk_tensor_hash *hashes, size_t n, mpk_error *err)
{
    return hashes ? mpk_manifest_write_hashes(dir, hashes, n, err) : mpk_manifest_write(dir, err);
}

int mpk_cmd_hash(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {"write", no_argument, NULL, 'w'}, {0}};
    bool json = false, write = false;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'j')
            json = true;
        else if (ch == 'w')
            write = true;
        else
            return mpk_cli_usage("hash", "unknown option '%s'", argv[optind - 1]);
    }
    if (argc - optind != 1)
        return mpk_cli_usage("hash", "expected one PATH");
    mpk_error err = {0};
    mpk_ckpt *c;
    if (mpk_ckpt_open(argv[optind], &c, &err) != MPK_OK)
        return mpk_cli_fail("hash", &err, NULL);
    if (write && !c->is_dir) {
        mpk_ckpt_close(c);
        return mpk_cli_usage("hash", "--write stores DIR/moepack.manifest.json beside a checkpoint directory's "
                             "shards; '%s' is a lone file", argv[optind]);
    }
    mpk_tensor_hash *t;
    mpk_hash128 d;
    if (mpk_hash_ckpt(c, &t, &d, &err) != MPK_OK) {
        mpk_ckpt_close(c);
        return mpk_cli_fail("hash", &err, NULL);
    }
    char hx[33], sh[128];
    if (json) {
        char *text = mpk_manifest_format(t, c->n_tensors, d);
        fputs(text ? text : "", stdout);
        free(text);
    } else {
        for (size_t i = 0; i < c->n_tensors; i++)
            printf("%s  %-8s %-22s %s\n", mpk_hash_hex(t[i].hash, hx), mpk_dtype_name(t[i].dtype),
                   mpk_shape_str(t[i].shape, t[i].ndim, sh, sizeof sh), t[i].name);
        printf("%s  checkpoint digest (%zu tensors)\n", mpk_hash_hex(d, hx), c->n_tensors);
    }
    int rc = MPK_EXIT_OK; /* the manifest replaces the old one atomically (mpk_write_file) */
    if (write && mpk_manifest_write_hashes(c->dir, t, c->n_tensors, &err) != MPK_OK)
        rc = mpk_cli_fail("hash", &err, NULL);
    free(t);
    mpk_ckpt_close(c);
    return rc;
}

typedef struct {
    const char *preset, *spec_file;
    bool json, dequantize, quantize;
    double atol, rtol;
    const char *a, *b;
    int n_paths;
} vargs;

static int parse_vargs(const char *cmd, int argc, char **argv, vargs *v)
{
    enum { O_PRESET = 1000, O_SPEC, O_JSON, O_DEQ, O_Q, O_ATOL, O_RTOL };
    static const struct option opts[] = {
        {"preset", required_argument, NULL, O_PRESET}, {"spec", required_argument, NULL, O_SPEC},
        {"json", no_argument, NULL, O_JSON}, {"dequantize", no_argument, NULL, O_DEQ},
        {"quantize", required_argument, NULL, O_Q}, {"atol", required_argument, NULL, O_ATOL},
        {"rtol", required_argument, NULL, O_RTOL}, {0}};
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case O_PRESET: v->preset = optarg; break;
        case O_SPEC: v->spec_file = optarg; break;
        case O_JSON: v->json = true; break;
        case O_DEQ: v->dequantize = true; break;
        case O_Q:
            if (strcmp(optarg, "fp8-block128"))
                return mpk_cli_usage(cmd, "--quantize takes fp8-block128");
            v->quantize = true;
            break;
        case O_ATOL:
        case O_RTOL: {
            double x = strtod(optarg, &end);
            if (*end || !(x >= 0) || isinf(x))
                return mpk_cli_usage(cmd, "bad tolerance '%s' (a number >= 0)", optarg);
            *(ch == O_ATOL ? &v->atol : &v->rtol) = x;
            break;
        }
        default: return mpk_cli_usage(cmd, "unknown option '%s'", argv[optind - 1]);
        }
    }
    v->n_paths = argc - optind;
    if (v->n_paths < 1 || v->n_paths > 2)
        return mpk_cli_usage(cmd, "expected %s", strcmp(cmd, "diff") ? "SRC DST or DST" : "A B");
    v->a = argv[optind];
    v->b = v->n_paths == 2 ? argv[optind + 1] : NULL;
    return -1;
}

static int report(const char *cmd, const vargs *v, const mpk_report *r, bool stats)
{
    char hx[33];
    if (v->json) {
        cJSON *o = cJSON_CreateObject(), *d = cJSON_CreateArray(), *all = stats ? cJSON_CreateArray() : NULL;
        cJSON_AddBoolToObject(o, "identical", r->n_differ == 0);
        cJSON_AddNumberToObject(o, "compared", (double)r->n_compared);
        cJSON_AddNumberToObject(o, "bytes", (double)r->bytes);
        cJSON_AddNumberToObject(o, "atol", r->atol);
        cJSON_AddNumberToObject(o, "rtol", r->rtol);
        for (size_t i = 0; i < r->n; i++) {
            const mpk_tensor_cmp *t = &r->t[i];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "name", t->name);
            if (t->differs) {
                cJSON_AddStringToObject(e, "kind", kind_names[t->kind]);
                cJSON_AddStringToObject(e, "detail", t->detail);
            }
            if (t->n && (stats || t->differs)) {
                cJSON_AddNumberToObject(e, "elements", (double)t->n);
                cJSON_AddNumberToObject(e, "max_abs", isfinite(t->max_abs) ? t->max_abs : -1);
                cJSON_AddNumberToObject(e, "max_rel", isfinite(t->max_rel) ? t->max_rel : -1);
                cJSON_AddNumberToObject(e, "rmse", t->rmse);
                cJSON_AddNumberToObject(e, "cosine", t->cosine);
                cJSON_AddNumberToObject(e, "out_of_tolerance", (double)t->n_out_of_tol);
            }
            if (t->differs)
                cJSON_AddItemToArray(d, e);
            else if (all && t->n)
                cJSON_AddItemToArray(all, e);
            else
                cJSON_Delete(e);
        }
        cJSON_AddItemToObject(o, "differences", d);
        if (all)
            cJSON_AddItemToObject(o, "tensors", all);
        char *s = cJSON_Print(o);
        puts(s);
        free(s);
        cJSON_Delete(o);
    } else {
        if (stats) {
            printf("%-60s %10s %12s %12s %12s %10s %8s\n", "tensor", "elements", "max_abs", "max_rel", "rmse",
                   "cosine", "beyond");
            for (size_t i = 0; i < r->n; i++) {
                const mpk_tensor_cmp *t = &r->t[i];
                if (t->n)
                    printf("%-60s %10llu %12.4g %12.4g %12.4g %10.6f %8llu\n", t->name, (unsigned long long)t->n,
                           t->max_abs, t->max_rel, t->rmse, t->cosine, (unsigned long long)t->n_out_of_tol);
            }
        }
        for (size_t i = 0; i < r->n; i++) {
            const mpk_tensor_cmp *t = &r->t[i];
            bool hashes = t->differs && t->kind == MPK_DIFF_CONTENT && !t->approx;
            if (hashes) {
                char gx[33];
                printf("DIFF %-11s %s: %s xxh3 expected %s, got %s\n", kind_names[t->kind], t->name,
                       t->detail, mpk_hash_hex(t->want_hash, hx), mpk_hash_hex(t->got_hash, gx));
            } else if (t->differs) {
                printf("DIFF %-11s %s: %s\n", kind_names[t->kind], t->name, t->detail);
            }
        }
        char hb[32];
        printf("%s: %zu tensors compared (%s), %zu difference(s)%s\n", cmd, r->n_compared,
               mpk_human_bytes(r->bytes, hb, sizeof hb), r->n_differ, r->n_differ ? "" : ": identical");
    }
    return r->n_differ ? MPK_EXIT_DIFF : MPK_EXIT_OK;
}

/* Loads the spec for a two-path verify/diff: a spec file, or the preset (auto from SRC's
 * config.json). */
static mpk_status load_vspec(const vargs *v, const mpk_model_config *cfg, mpk_spec **out, mpk_error *err)
{
    if (!v->spec_file)
        return mpk_preset_load(v->preset ? v->preset : "auto", cfg, out, err);
    char *text;
    size_t len;
    MPK_TRY(mpk_read_file(v->spec_file, &text, &len, err));
    mpk_status s = mpk_spec_parse(text, len, v->spec_file, out, err);
    free(text);
    return s;
}

/* Same tensor names on both sides and no quantization change: a round trip (identity). */
static bool same_names(const mpk_ckpt *a, const mpk_ckpt *b)
{
    if (a->n_tensors != b->n_tensors)
        return false;
    for (size_t i = 0; i < a->n_tensors; i++)
        if (!mpk_ckpt_find(b, a->tensors[i].info->name))
            return false;
    return true;
}

static int run_compare(const char *cmd, int argc, char **argv, bool stats)
{
    vargs v = {.rtol = stats ? 0 : 1.0 / 256};
    int rc = parse_vargs(cmd, argc, argv, &v);
    if (rc >= 0)
        return rc;
    mpk_error err = {0};
    mpk_ckpt *a = NULL, *b = NULL;
    mpk_report *r = NULL;
    mpk_spec *spec = NULL, *rev = NULL;
    mpk_model_config cfg = {0};
    rc = MPK_EXIT_FAIL;
    if (v.n_paths == 1) {
        if (stats)
            return mpk_cli_usage(cmd, "expected A B");
        if (mpk_ckpt_open(v.a, &a, &err) != MPK_OK || mpk_verify_manifest(a, &r, &err) != MPK_OK)
            goto out;
        rc = report(cmd, &v, r, false);
        goto out;
    }
    if (mpk_ckpt_open(v.a, &a, &err) != MPK_OK || mpk_ckpt_open(v.b, &b, &err) != MPK_OK ||
        mpk_config_load(a->dir, &cfg, &err) != MPK_OK)
        goto out;
    mpk_cmp_opts co = {.atol = v.atol, .rtol = v.rtol, .values = stats};
    mpk_plan_opts po = {.cfg = &cfg, .dequantize = v.dequantize, .quantize_block = v.quantize ? 128 : 0};
    mpk_status s;
    if (same_names(a, b) && !v.dequantize && !v.quantize && !v.spec_file && !v.preset) {
        s = mpk_verify_compare(a, b, NULL, &po, &co, &r, &err);
    } else {
        if (load_vspec(&v, &cfg, &spec, &err) != MPK_OK)
            goto out;
        s = mpk_verify_compare(a, b, spec, &po, &co, &r, &err);
        if (s == MPK_E_ALREADY_CONVERTED) { /* SRC is packed: DST should be its unpacking */
            mpk_spec *keep = spec;
            spec = NULL;
            if (mpk_spec_reverse(keep, &rev, &err) != MPK_OK) {
                mpk_spec_free(keep);
                goto out;
            }
            s = mpk_verify_compare(a, b, rev, &po, &co, &r, &err);
        }
    }
    if (s != MPK_OK)
        goto out;
    rc = report(cmd, &v, r, stats);
out:
    if (rc == MPK_EXIT_FAIL)
        mpk_cli_fail(cmd, &err, err.code == MPK_E_MANIFEST ? "run 'moepack hash --write DST' to create one" : NULL);
    mpk_report_free(r);
    mpk_spec_free(spec);
    mpk_spec_free(rev);
    mpk_config_free(&cfg);
    mpk_ckpt_close(a);
    mpk_ckpt_close(b);
    return rc;
}

int mpk_cmd_verify(int argc, char **argv)
{
    return run_compare("verify", argc, argv, false);
}

int mpk_cmd_diff(int argc, char **argv)
{
    return run_compare("diff", argc, argv, true);
}
