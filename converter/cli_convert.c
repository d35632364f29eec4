/* cli_convert.c — presets, plan, pack, unpack, convert, synth, demo. */
#define _GNU_SOURCE
#include "cli.h"
#include "mpk_converter.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef enum { MODE_PACK, MODE_UNPACK, MODE_CONVERT, MODE_PLAN } conv_mode;

typedef struct {
    const char *preset, *spec_file, *src, *dst, *io;
    bool reverse, force, json, quiet, verbose, no_copy_range, dequantize, quantize, no_manifest, no_fsync,
        resume, copy_links;
    uint64_t max_shard, mem;
    int threads;
} conv_args;

static int parse_conv_args(const char *cmd, conv_mode mode, int argc, char **argv, conv_args *a)
{
    enum { O_PRESET = 1000, O_SPEC, O_REVERSE, O_MAXSHARD, O_THREADS, O_MEM, O_FORCE, O_JSON,
           O_IO, O_NOCFR, O_VERBOSE, O_DEQUANT, O_QUANT, O_NOMAN, O_NOSYNC, O_RESUME, O_COPYLINKS };
    static const struct option opts[] = {
        {"preset", required_argument, NULL, O_PRESET}, {"spec", required_argument, NULL, O_SPEC},
        {"reverse", no_argument, NULL, O_REVERSE}, {"max-shard-size", required_argument, NULL, O_MAXSHARD},
        {"threads", required_argument, NULL, O_THREADS}, {"mem", required_argument, NULL, O_MEM},
        {"force", no_argument, NULL, O_FORCE}, {"json", no_argument, NULL, O_JSON},
        {"quiet", no_argument, NULL, 'q'}, {"io", required_argument, NULL, O_IO},
        {"no-copy-range", no_argument, NULL, O_NOCFR}, {"verbose", no_argument, NULL, O_VERBOSE},
        {"dequantize", no_argument, NULL, O_DEQUANT}, {"quantize", required_argument, NULL, O_QUANT},
        {"no-manifest", no_argument, NULL, O_NOMAN}, {"no-fsync", no_argument, NULL, O_NOSYNC},
        {"resume", no_argument, NULL, O_RESUME}, {"copy-links", no_argument, NULL, O_COPYLINKS},
        {0}};
    memset(a, 0, sizeof *a);
    a->preset = "auto";
    a->max_shard = 5000000000ull;
    a->mem = 1ull << 30;
    a->io = "auto";
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "q", opts, NULL)) != -1) {
        switch (ch) {
        case O_PRESET: a->preset = optarg; break;
        case O_SPEC: a->spec_file = optarg; break;
        case O_REVERSE: a->reverse = true; break;
        case O_MAXSHARD:
            if (!mpk_parse_size(optarg, &a->max_shard))
                return mpk_cli_usage(cmd, "bad size '%s' for --max-shard-size (e.g. 5GB, 500MiB)", optarg);
            break;
        case O_MEM:
            if (!mpk_parse_size(optarg, &a->mem) || a->mem < (1u << 20))
                return mpk_cli_usage(cmd, "bad size '%s' for --mem (at least 1MiB)", optarg);
            break;
        case O_THREADS: {
            char *end;
            long t = strtol(optarg, &end, 10);
            if (*end || t < 1 || t > 64)
                return mpk_cli_usage(cmd, "--threads takes 1..64, got '%s'", optarg);
            a->threads = (int)t;
            break;
        }
        case O_FORCE: a->force = true; break;
        case O_JSON: a->json = true; break;
        case 'q': a->quiet = true; break;
        case O_IO:
            if (strcmp(optarg, "auto") && strcmp(optarg, "io_uring") && strcmp(optarg, "pread"))
                return mpk_cli_usage(cmd, "--io takes auto, io_uring or pread");
            a->io = optarg;
            break;
        case O_NOCFR: a->no_copy_range = true; break;
        case O_VERBOSE: a->verbose = true; break;
        case O_DEQUANT: a->dequantize = true; break;
        case O_NOMAN: a->no_manifest = true; break;
        case O_NOSYNC: a->no_fsync = true; break;
        case O_RESUME: a->resume = true; break;
        case O_COPYLINKS: a->copy_links = true; break;
        case O_QUANT:
            if (strcmp(optarg, "fp8-block128") != 0)
                return mpk_cli_usage(cmd, "--quantize takes fp8-block128, got '%s'", optarg);
            a->quantize = true;
            break;
        default: return mpk_cli_usage(cmd, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (a->dequantize && a->quantize)
        return mpk_cli_usage(cmd, "--dequantize and --quantize cannot be combined");
    if (mode == MODE_CONVERT && !a->spec_file)
        return mpk_cli_usage(cmd, "convert needs --spec FILE");
    if (mode != MODE_CONVERT && mode != MODE_PLAN && a->spec_file)
        return mpk_cli_usage(cmd, "--spec is for 'convert' and 'plan'; %s uses --preset", cmd);
    if (mode == MODE_PLAN && (a->resume || a->force || a->copy_links))
        return mpk_cli_usage(cmd, "--resume, --force and --copy-links are for commands that write");
    int want = mode == MODE_PLAN ? 1 : 2;
    if (argc - optind != want)
        return mpk_cli_usage(cmd, "expected %s, got %d argument(s)", want == 1 ? "SRC" : "SRC DST",
                             argc - optind);
    a->src = argv[optind];
    a->dst = want == 2 ? argv[optind + 1] : NULL;
    return -1;
}

/* The layout marker moepack writes into every output shard's __metadata__. */
static const char *layout_marker(const mpk_ckpt *c)
{
    if (!c->n_shards || !c->shards[0].header->has_metadata)
        return NULL;
    const mpk_st_header *h = c->shards[0].header;
    for (size_t i = 0; i < h->n_metadata; i++)
        if (strcmp(h->metadata[i].key, "moepack_layout") == 0)
            return h->metadata[i].value;
    return NULL;
}

static mpk_status load_spec(const conv_args *a, conv_mode mode, const mpk_model_config *cfg,
                            mpk_spec **out, mpk_error *err)
{
    mpk_spec *s;
    if (a->spec_file) {
        char *text;
        size_t len;
        MPK_TRY(mpk_read_file(a->spec_file, &text, &len, err));
        mpk_status st = mpk_spec_parse(text, len, a->spec_file, &s, err);
        free(text);
        MPK_TRY(st);
    } else {
        MPK_TRY(mpk_preset_load(a->preset, cfg, &s, err));
    }
    if (mode == MODE_UNPACK || a->reverse) {
        mpk_spec *r;
        mpk_status st = mpk_spec_reverse(s, &r, err);
        if (st != MPK_OK) {
            mpk_spec_free(s);
            return st;
        }
        s = r;
    }
    *out = s;
    return MPK_OK;
}

static void print_summary(const char *cmd, const conv_args *a, const mpk_plan *p,
                          const mpk_exec_stats *st)
{
    double gbs = st->seconds > 0 ? (double)st->bytes_out / st->seconds / 1e9 : 0;
    if (a->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "command", cmd);
        cJSON_AddStringToObject(o, "source", a->src);
        cJSON_AddStringToObject(o, "destination", a->dst);
        cJSON_AddStringToObject(o, "preset", p->spec->name);
        cJSON_AddBoolToObject(o, "reversed", p->spec->reversed);
        cJSON_AddNumberToObject(o, "tensors_in", (double)st->tensors_in);
        cJSON_AddNumberToObject(o, "tensors_out", (double)st->tensors_out);
        cJSON_AddNumberToObject(o, "targets_built", (double)(p->n_outs - p->n_pass));
        cJSON_AddNumberToObject(o, "passed_through", (double)p->n_pass);
        cJSON_AddNumberToObject(o, "bytes", (double)st->bytes_out);
        cJSON_AddNumberToObject(o, "shards", (double)p->n_shards);
        cJSON_AddNumberToObject(o, "seconds", st->seconds);
        cJSON_AddNumberToObject(o, "gb_per_s", gbs);
        cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)st->peak_rss_kib * 1024);
        cJSON_AddNumberToObject(o, "threads", st->threads);
        cJSON_AddBoolToObject(o, "copy_file_range", st->used_copy_range);
        cJSON *side = cJSON_AddObjectToObject(o, "other_files");
        cJSON_AddNumberToObject(side, "files", (double)st->side.files);
        cJSON_AddNumberToObject(side, "directories", (double)st->side.dirs);
        cJSON_AddNumberToObject(side, "symlinks", (double)st->side.links);
        cJSON_AddNumberToObject(side, "bytes", (double)st->side.bytes);
        cJSON_AddNumberToObject(side, "skipped", (double)st->side.skipped);
        cJSON_AddBoolToObject(o, "resumed", st->resumed);
        cJSON_AddNumberToObject(o, "shards_kept", (double)st->shards_kept);
        cJSON_AddNumberToObject(o, "stale_removed", (double)st->stale_removed);
        char *s = cJSON_Print(o);
        puts(s);
        free(s);
        cJSON_Delete(o);
    } else if (!a->quiet) {
        char hb[32], hr[32];
        printf("%s: %s -> %s (preset %s%s): %zu tensors in, %zu out (%zu built, %zu passed "
               "through), %s in %zu shard(s), %.2f s, %.2f GB/s, peak RSS %s\n",
               cmd, a->src, a->dst, p->spec->name, p->spec->reversed ? ", reversed" : "",
               st->tensors_in, st->tensors_out, p->n_outs - p->n_pass, p->n_pass,
               mpk_human_bytes(st->bytes_out, hb, sizeof hb), p->n_shards, st->seconds, gbs,
               mpk_human_bytes((uint64_t)st->peak_rss_kib * 1024, hr, sizeof hr));
        printf("%s: other files of SRC: %zu file(s) (%s), %zu director%s, %zu symlink(s) copied, %zu skipped\n",
               cmd, st->side.files, mpk_human_bytes(st->side.bytes, hb, sizeof hb), st->side.dirs,
               st->side.dirs == 1 ? "y" : "ies", st->side.links, st->side.skipped);
        if (st->resumed)
            printf("%s: resumed an interrupted run: %zu of %zu shard(s) kept after their hashes checked out\n", cmd,
                   st->shards_kept, p->n_shards);
    }
}

typedef struct {
    const char *cmd;
} warn_ctx;

static void warn_cb(void *ctx, const char *msg)
{
    const warn_ctx *w = ctx; /* said even with -q: it is about the user's data */
    fprintf(stderr, "moepack: %s: warning: %s\n", w->cmd, msg);
}

static int run_conversion(const char *cmd, conv_mode mode, int argc, char **argv)
{
    conv_args a;
    int r = parse_conv_args(cmd, mode, argc, argv, &a);
    if (r >= 0)
        return r;
    mpk_error err = {0};
    mpk_ckpt *c = NULL;
    mpk_model_config cfg = {0};
    mpk_spec *spec = NULL;
    mpk_plan *plan = NULL;
    int rc = MPK_EXIT_FAIL;
    const char *hint = NULL;
    char *cfg_text = NULL;
    if (mpk_ckpt_open(a.src, &c, &err) != MPK_OK || mpk_config_load(c->dir, &cfg, &err) != MPK_OK)
        goto out;
    if (load_spec(&a, mode, &cfg, &spec, &err) != MPK_OK) {
        if (err.code == MPK_E_PRESET)
            hint = "list presets with 'moepack presets'; name one with --preset NAME";
        goto out;
    }
    const char *marker = layout_marker(c);
    const char *would = spec->reversed ? "per-expert" : "packed";
    if (marker && strcmp(marker, would) == 0) {
        mpk_error_set(&err, MPK_E_ALREADY_CONVERTED, 0, a.src,
                      "already in the %s layout (written by moepack); nothing to do", would);
        hint = spec->reversed ? "to pack it, use 'moepack pack'" : "to split it back, use 'moepack unpack'";
        goto out;
    }
    mpk_plan_opts po = {.max_shard_size = a.max_shard, .cfg = &cfg, .dequantize = a.dequantize,
                        .quantize_block = a.quantize ? 128 : 0};
    if (mpk_plan_build(c, spec, &po, &plan, &err) != MPK_OK) {
        if (err.code == MPK_E_ALREADY_CONVERTED && !hint)
            hint = spec->reversed ? "use 'moepack pack'" : "use 'moepack unpack' to go the other way";
        if (err.code == MPK_E_QUANT)
            hint = "--dequantize writes BF16 experts, which pack at any size";
        goto out;
    }
    if (mode == MODE_PLAN) {
        mpk_plan_print(plan, stdout, a.verbose);
        rc = MPK_EXIT_OK;
        goto out;
    }
    /* a quantization change rewrites config.json's quantization_config */
    cJSON *qc = NULL;
    if (a.quantize)
        qc = cJSON_Parse("{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", "
                         "\"fmt\": \"e4m3\", \"weight_block_size\": [128, 128]}");
    else if (spec->dequantizes && spec->reversed)
        qc = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(spec->json, "quantization_config"), 1);
    if (a.dequantize || (spec->dequantizes && !spec->reversed))
        cfg_text = mpk_config_requant(&cfg, true, NULL);
    else if (qc)
        cfg_text = mpk_config_requant(&cfg, false, qc);
    cJSON_Delete(qc);
    mpk_kv meta[2] = {{"format", "pt"}, {"moepack_layout", would}};
    warn_ctx wc = {cmd};
    mpk_exec_opts eo = {
        .threads = a.threads,
        .mem = a.mem,
        .force = a.force,
        .progress = !a.quiet && !a.json && isatty(2),
        .use_copy_range = !a.no_copy_range,
        .no_fsync = a.no_fsync,
        .io = strcmp(a.io, "pread") == 0 ? MPK_IO_PREAD : strcmp(a.io, "io_uring") == 0 ? MPK_IO_URING : MPK_IO_AUTO,
        .metadata = meta,
        .n_metadata = 2,
        .config_json = cfg_text,
        .hash_outputs = !a.no_manifest,
        .finish = a.no_manifest ? NULL : mpk_cli_write_manifest,
        .resume = a.resume,
        .copy_links = a.copy_links,
        .warn = warn_cb,
        .warn_ctx = &wc,
    };
    mpk_exec_stats st;
    if (mpk_exec(plan, a.dst, &eo, &st, &err) != MPK_OK) {
        if (err.code == MPK_E_DST_EXISTS && !err.sys_errno)
            hint = "pass --force to replace it";
        if (err.code == MPK_E_OVERLAP)
            rc = MPK_EXIT_USAGE;
        if (err.code == MPK_E_IO && a.resume)
            hint = "the partial output was kept: run the same command with --resume again to continue it";
        goto out;
    }
    print_summary(cmd, &a, plan, &st);
    rc = MPK_EXIT_OK;
out:
    if (rc != MPK_EXIT_OK)
        mpk_cli_fail(cmd, &err, hint); /* rc: 1, or 2 for an overlap (a usage error) */
    free(cfg_text);
    mpk_plan_free(plan);
    mpk_spec_free(spec);
    mpk_config_free(&cfg);
    mpk_ckpt_close(c);
    return rc;
}

int mpk_cmd_pack(int argc, char **argv)
{
    return run_conversion("pack", MODE_PACK, argc, argv);
}

int mpk_cmd_unpack(int argc, char **argv)
{
    return run_conversion("unpack", MODE_UNPACK, argc, argv);
}

int mpk_cmd_convert(int argc, char **argv)
{
    return run_conversion("convert", MODE_CONVERT, argc, argv);
}

int mpk_cmd_plan(int argc, char **argv)
{
    return run_conversion("plan", MODE_PLAN, argc, argv);
}

int mpk_cmd_presets(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    for (size_t i = 0; i < mpk_n_presets; i++) {
        mpk_spec *s;
        mpk_error err = {0};
        if (mpk_spec_parse(mpk_presets[i].json, strlen(mpk_presets[i].json), mpk_presets[i].name, &s,
                           &err) != MPK_OK)
            return mpk_cli_fail("presets", &err, NULL);
        printf("%-14s model_types:", s->name);
        for (int k = 0; k < s->n_model_types; k++)
            printf("%s%s", k ? "," : " ", s->model_types[k]);
        printf("\n               %s\n", s->description);
        mpk_spec_free(s);
    }
    return MPK_EXIT_OK;
}

static bool parse_int_opt(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

static int synth_args(const char *cmd, int argc, char **argv, mpk_synth_opts *o, const char **out)
{
    enum { O_ARCH = 1000, O_LAYERS, O_EXPERTS, O_HIDDEN, O_INTER, O_VOCAB, O_DTYPE, O_SHARDS, O_SEED, O_LAYOUT,
           O_QUANT };
    static const struct option opts[] = {
        {"arch", required_argument, NULL, O_ARCH}, {"layers", required_argument, NULL, O_LAYERS},
        {"experts", required_argument, NULL, O_EXPERTS}, {"hidden", required_argument, NULL, O_HIDDEN},
        {"intermediate", required_argument, NULL, O_INTER}, {"vocab", required_argument, NULL, O_VOCAB},
        {"dtype", required_argument, NULL, O_DTYPE}, {"shards", required_argument, NULL, O_SHARDS},
        {"seed", required_argument, NULL, O_SEED}, {"layout", required_argument, NULL, O_LAYOUT},
        {"quant", required_argument, NULL, O_QUANT}, {0}};
    *o = (mpk_synth_opts){.arch = "mixtral", .layers = 2, .experts = 8, .hidden = 64, .intermediate = 32,
                          .vocab = 128, .dtype = MPK_DTYPE_BF16, .shards = 2, .seed = 1};
    optind = 1;
    opterr = 0;
    int ch, v = 0, li = 0;
    while ((ch = getopt_long(argc, argv, "", opts, &li)) != -1) {
        bool ok = true;
        switch (ch) {
        case O_ARCH: o->arch = optarg; break;
        case O_LAYERS: ok = parse_int_opt(optarg, 1, 1000, &o->layers); break;
        case O_EXPERTS: ok = parse_int_opt(optarg, 1, 4096, &o->experts); break;
        case O_HIDDEN: ok = parse_int_opt(optarg, 1, 1 << 20, &o->hidden); break;
        case O_INTER: ok = parse_int_opt(optarg, 1, 1 << 20, &o->intermediate); break;
        case O_VOCAB: ok = parse_int_opt(optarg, 1, 1 << 24, &o->vocab); break;
        case O_SHARDS: ok = parse_int_opt(optarg, 1, 10000, &o->shards); break;
        case O_SEED: ok = parse_int_opt(optarg, 0, 1 << 30, &v); o->seed = (uint64_t)v + 1; break;
        case O_DTYPE:
            ok = mpk_dtype_parse(optarg, strlen(optarg), &o->dtype) && mpk_cast_supported(o->dtype, o->dtype);
            if (!ok) {
                char up[16] = "";
                for (size_t i = 0; i < 15 && optarg[i]; i++)
                    up[i] = (char)(optarg[i] >= 'a' && optarg[i] <= 'z' ? optarg[i] - 32 : optarg[i]);
                ok = mpk_dtype_parse(up, strlen(up), &o->dtype) && mpk_cast_supported(o->dtype, o->dtype);
            }
            break;
        case O_QUANT:
            ok = strcmp(optarg, "fp8") == 0 || strcmp(optarg, "none") == 0; /* FP8 block 128 */
            o->fp8 = strcmp(optarg, "fp8") == 0;
            break;
        case O_LAYOUT:
            ok = strcmp(optarg, "per-expert") == 0 || strcmp(optarg, "packed") == 0;
            o->packed = strcmp(optarg, "packed") == 0;
            break;
        default: return mpk_cli_usage(cmd, "unknown option '%s'", argv[optind - 1]);
        }
        if (!ok)
            return mpk_cli_usage(cmd, "bad value '%s' for --%s", optarg, opts[li].name);
    }
    if (argc - optind != 1)
        return mpk_cli_usage(cmd, "expected one OUT directory");
    *out = argv[optind];
    return -1;
}

int mpk_cmd_synth(int argc, char **argv)
{
    mpk_synth_opts o;
    const char *out = NULL;
    int r = synth_args("synth", argc, argv, &o, &out);
    if (r >= 0)
        return r;
    mpk_error err = {0};
    if (mpk_synth(&o, out, &err) != MPK_OK)
        return mpk_cli_fail("synth", &err, err.code == MPK_E_PRESET ? "see 'moepack presets'" : NULL);
    printf("synth: wrote %s (%s, %d layers, %d experts, H=%d, I=%d, %s%s, %s layout)\n", out, o.arch,
           o.layers, o.experts, o.hidden, o.intermediate, mpk_dtype_name(o.dtype), o.fp8 ? " + FP8 linears" : "",
           o.packed ? "packed" : "per-expert");
    return MPK_EXIT_OK;
}

int mpk_cmd_demo(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : NULL;
    char dir[4096];
    if (base) {
        if (mkdir(base, 0755) != 0 && errno != EEXIST)
            return mpk_cli_usage("demo", "cannot create '%s': %s", base, strerror(errno));
        snprintf(dir, sizeof dir, "%s", base);
    } else {
        snprintf(dir, sizeof dir, "/tmp/moepack-demo-XXXXXX");
        if (!mkdtemp(dir))
            return mpk_cli_usage("demo", "cannot create a temporary directory");
    }
    char src[4200], packed[4200], unpacked[4200];
    snprintf(src, sizeof src, "%s/per-expert", dir);
    snprintf(packed, sizeof packed, "%s/packed", dir);
    snprintf(unpacked, sizeof unpacked, "%s/unpacked", dir);
    printf("demo: working in %s\n", dir);
    char *synth_argv[] = {"synth", "--arch", "mixtral", "--layers", "4", "--experts", "8", "--hidden",
                          "256", "--intermediate", "128", "--shards", "3", src, NULL};
    int rc = mpk_cmd_synth(14, synth_argv);
    if (rc)
        return rc;
    char *pack_argv[] = {"pack", src, packed, "--max-shard-size", "2MB", NULL};
    if ((rc = mpk_cmd_pack(5, pack_argv)))
        return rc;
    char *unpack_argv[] = {"unpack", packed, unpacked, NULL};
    if ((rc = mpk_cmd_unpack(3, unpack_argv)))
        return rc;
    /* verify recomputes the packed form from the source with the reference ops, then checks
     * the round trip byte for byte */
    char *verify_packed[] = {"verify", src, packed, NULL};
    if ((rc = mpk_cmd_verify(3, verify_packed)))
        return rc;
    char *verify_back[] = {"verify", src, unpacked, NULL};
    if ((rc = mpk_cmd_verify(3, verify_back)))
        return rc;
    printf("demo: ok (%s is the packing of %s; %s holds every tensor of it, byte for byte)\n", packed, src,
           unpacked);
    return MPK_EXIT_OK;
}
