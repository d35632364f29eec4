/* cmd_convert.c — presets, plan, pack, unpack, convert, synth, demo: arguments to a request,
 * progress on stderr, the report on stdout. */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef enum { MODE_PACK, MODE_UNPACK, MODE_CONVERT, MODE_PLAN } conv_mode;

typedef struct {
    const char *preset, *spec_file, *src, *dst, *io, *layout_like, *revision;
    bool reverse, force, json, quiet, verbose, no_copy_range, dequantize, quantize, no_manifest, no_fsync,
        resume, copy_links, compress, pass_unknown;
    uint64_t max_shard, mem;
    int threads, level;
    mpk_quant quant;       /* --quantize's format (with quantize) */
} conv_args;

static bool parse_int_opt(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

/* Whether the conversion command of mode takes the option name. */
static bool takes(conv_mode mode, const char *name)
{
    static const char *const plan_opts[] = {"preset", "spec", "reverse", "json", "verbose", "dequantize", "quantize",
                                            "revision", "pass-unknown", NULL};
    const char *const *p = plan_opts;
    if (mode == MODE_PLAN) {
        while (*p && strcmp(*p, name))
            p++;
        return *p != NULL;
    }
    if (strcmp(name, "verbose") == 0)
        return false;
    if (strcmp(name, "spec") == 0 || strcmp(name, "reverse") == 0)
        return mode == MODE_CONVERT;
    if (strcmp(name, "preset") == 0)
        return mode != MODE_CONVERT;
    if (strcmp(name, "layout-like") == 0)
        return mode != MODE_PACK;
    return true;
}

static int check_conv_args(const char *cmd, conv_mode mode, int argc, char **argv, conv_args *a);

static int parse_conv_args(const char *cmd, conv_mode mode, int argc, char **argv, conv_args *a)
{
    enum { O_PRESET = 1000, O_SPEC, O_REVERSE, O_MAXSHARD, O_THREADS, O_MEM, O_FORCE, O_JSON,
           O_IO, O_NOCFR, O_VERBOSE, O_DEQUANT, O_QUANT, O_NOMAN, O_NOSYNC, O_RESUME, O_COPYLINKS, O_LIKE,
           O_COMPRESS, O_LEVEL, O_REVISION, O_PASSUNK };
    static const struct option all[] = {
        {"preset", required_argument, NULL, O_PRESET}, {"spec", required_argument, NULL, O_SPEC},
        {"reverse", no_argument, NULL, O_REVERSE}, {"max-shard-size", required_argument, NULL, O_MAXSHARD},
        {"threads", required_argument, NULL, O_THREADS}, {"mem", required_argument, NULL, O_MEM},
        {"force", no_argument, NULL, O_FORCE}, {"json", no_argument, NULL, O_JSON},
        {"quiet", no_argument, NULL, 'q'}, {"io", required_argument, NULL, O_IO},
        {"no-copy-range", no_argument, NULL, O_NOCFR}, {"verbose", no_argument, NULL, O_VERBOSE},
        {"dequantize", no_argument, NULL, O_DEQUANT}, {"quantize", required_argument, NULL, O_QUANT},
        {"no-manifest", no_argument, NULL, O_NOMAN}, {"no-fsync", no_argument, NULL, O_NOSYNC},
        {"resume", no_argument, NULL, O_RESUME}, {"copy-links", no_argument, NULL, O_COPYLINKS},
        {"layout-like", required_argument, NULL, O_LIKE}, {"compress", no_argument, NULL, O_COMPRESS},
        {"level", required_argument, NULL, O_LEVEL}, {"revision", required_argument, NULL, O_REVISION},
        {"pass-unknown", no_argument, NULL, O_PASSUNK}, {0}};
    /* each command's own options: what it does not take is an unknown option (exit 2) */
    static struct option opts[sizeof all / sizeof all[0]];
    size_t k = 0;
    for (const struct option *o = all; o->name; o++)
        if (takes(mode, o->name))
            opts[k++] = *o;
    opts[k] = (struct option){0};
    memset(a, 0, sizeof *a);
    a->preset = "auto";
    a->max_shard = 50000000000ull;
    a->mem = 1ull << 30;
    a->io = "auto";
    int ch;
    while ((ch = mpk_cli_next_opt(argc, argv, mode == MODE_PLAN ? "" : "q", opts, NULL)) != -1) {
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
        case O_THREADS:
            if (!parse_int_opt(optarg, 1, 64, &a->threads))
                return mpk_cli_usage(cmd, "--threads takes 1..64, got '%s'", optarg);
            break;
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
        case O_LIKE: a->layout_like = optarg; break;
        case O_REVISION: a->revision = optarg; break;
        case O_COMPRESS: a->compress = true; break;
        case O_PASSUNK: a->pass_unknown = true; break;
        case O_LEVEL:
            if (!parse_int_opt(optarg, 1, 19, &a->level))
                return mpk_cli_usage(cmd, "--level takes 1..19, got '%s'", optarg);
            break;
        case O_QUANT:
            if (!mpk_cli_quant_word(optarg, &a->quant))
                return mpk_cli_usage(cmd, "--quantize takes " MPK_CLI_QUANT_WORDS ", got '%s'", optarg);
            a->quantize = true;
            break;
        default: {
            const char *bad = argv[optind - 1];
            for (const struct option *o = all; bad[0] == '-' && bad[1] == '-' && o->name; o++)
                if (strncmp(bad + 2, o->name, strlen(o->name)) == 0 &&
                    (bad[2 + strlen(o->name)] == 0 || bad[2 + strlen(o->name)] == '='))
                    return mpk_cli_usage(cmd, "'%s' is not an option of %s", bad, cmd);
            return mpk_cli_usage(cmd, "unknown option '%s'", bad);
        }
        }
    }
    return check_conv_args(cmd, mode, argc, argv, a);
}

/* The options together, and the operands (SRC, and DST but for plan). */
static int check_conv_args(const char *cmd, conv_mode mode, int argc, char **argv, conv_args *a)
{
    if (a->dequantize && a->quantize)
        return mpk_cli_usage(cmd, "--dequantize and --quantize cannot be combined");
    if (mode == MODE_CONVERT && !a->spec_file)
        return mpk_cli_usage(cmd, "convert needs --spec FILE");
    if (a->level && !a->compress)
        return mpk_cli_usage(cmd, "--level is the zstd level of --compress");
    if (a->compress && a->resume)
        return mpk_cli_usage(cmd, "a compressed output cannot be resumed: leave out --compress or --resume");
    if (a->resume && mpk_mpi_size() > 1)
        return mpk_cli_usage(cmd, "--resume is for one process; under MPI (%d ranks) run the command again",
                             mpk_mpi_size());
    int want = mode == MODE_PLAN ? 1 : 2;
    if (argc - optind != want)
        return mpk_cli_usage(cmd, "expected %s, got %d argument(s)", want == 1 ? "SRC" : "SRC DST",
                             argc - optind);
    a->src = argv[optind];
    a->dst = want == 2 ? argv[optind + 1] : NULL;
    return -1;
}


/* The library words what a request field does; the command line names its option. */
static const char *const cli_words[][2] = {
    {"copying links' targets copies", "--copy-links copies"},
    {"a resumed run would have continued it", "--resume would have continued it"},
};

static void warn_cb(void *ctx, const char *msg)
{
    /* said even with -q: it is about the user's data */
    fprintf(stderr, "moepack: %s: warning: ", (const char *)ctx);
    for (const char *m = msg; *m;) {
        size_t best = strlen(m), k = 0, w = 0;
        for (size_t i = 0; i < sizeof cli_words / sizeof *cli_words; i++) {
            const char *f = strstr(m, cli_words[i][0]);
            if (f && (size_t)(f - m) < best)
                best = (size_t)(f - m), k = i, w = 1;
        }
        fwrite(m, 1, best, stderr);
        m += best;
        if (w) {
            fputs(cli_words[k][1], stderr);
            m += strlen(cli_words[k][0]);
        }
    }
    fputc('\n', stderr);
}

/* What to tell the user to do after a failure. */
static const char *hint_for(const mpk_error *err, const conv_args *a, bool unpack)
{
    switch (err->code) {
    case MPK_E_PRESET: return "list presets with 'moepack presets'; name one with --preset NAME";
    case MPK_E_NOT_UNDERSTOOD: /* the library says which request field is the way out */
        if (err->field == MPK_FIELD_SPEC)
            return "write a spec for this model ('moepack presets NAME' prints one to start from) and run "
                   "'moepack convert --spec FILE'";
        if (err->field == MPK_FIELD_PASS_UNKNOWN)
            return "--pass-unknown copies these tensors as they are (the summary lists them), if you know they "
                   "need no conversion; or cover them with a spec (--spec)";
        if (err->field == MPK_FIELD_QUANT)
            return "leave out --dequantize: the quantized weights then move as they are, with their scales";
        return "moepack does not convert this quantization (--pass-unknown does not cover it): convert a "
               "dequantized copy, or one in a quantization it implements";
    case MPK_E_ALREADY_CONVERTED:
        return unpack ? "to pack it, use 'moepack pack'" : "to split it back, use 'moepack unpack'";
    case MPK_E_MEMORY_BUDGET: return err->field == MPK_FIELD_MEM ? "raise --mem or lower --threads" : NULL;
    case MPK_E_DTYPE_MISMATCH: /* --quantize of a quantized source */
        return a->quantize && err->field == MPK_FIELD_QUANT
                   ? "pack it without --quantize, or write a BF16 copy with --dequantize first and quantize that"
                   : NULL;
    case MPK_E_QUANT:
        if (a->quantize && a->quant != MPK_QUANT_FP8_BLOCK128)
            return "--quantize nvfp4/mxfp4 needs packed rows that are whole rows of their source linears, in whole "
                   "16-value (mxfp4: 32) blocks, and finite weights (the message names what broke it): pack without "
                   "--quantize (BF16 experts)";
        return a->quantize ? "--quantize fp8-block128 needs whole 128x128 blocks in each gate and up half (the "
                             "sizes named a multiple of 128): pack this checkpoint without --quantize (BF16 experts)"
                           : "--dequantize writes BF16 experts, which pack at any size";
    case MPK_E_DST_EXISTS: return err->field == MPK_FIELD_FORCE ? "pass --force to replace it" : NULL;
    case MPK_E_IO:
        return a->resume ? "the partial output was kept: run the same command with --resume again to continue it"
                         : NULL;
    default: return NULL;
    }
}

static void fill_req(const conv_args *a, conv_mode mode, const char *cmd, mpk_convert_req *r)
{
    mpk_convert_req_init(r, a->src, a->dst);
    r->spec = a->spec_file ? a->spec_file : a->preset;
    r->direction = mode == MODE_UNPACK || a->reverse ? MPK_DIRECTION_UNPACK : MPK_DIRECTION_PACK;
    r->quant = a->dequantize ? MPK_QUANT_DEQUANTIZE : a->quantize ? a->quant : MPK_QUANT_KEEP;
    r->flags = (a->force ? MPK_CONVERT_FORCE : 0) | (a->resume ? MPK_CONVERT_RESUME : 0) |
               (a->copy_links ? MPK_CONVERT_COPY_LINKS : 0) | (a->no_fsync ? MPK_CONVERT_NO_FSYNC : 0) |
               (a->no_copy_range ? MPK_CONVERT_NO_COPY_RANGE : 0) | (a->no_manifest ? MPK_CONVERT_NO_MANIFEST : 0) |
               (a->compress ? MPK_CONVERT_COMPRESS : 0) | (a->pass_unknown ? MPK_CONVERT_PASS_UNKNOWN : 0);
    r->compress_level = a->level;
    r->max_shard_size = a->max_shard;
    r->mem = a->mem;
    r->threads = a->threads;
    r->layout_like = a->layout_like;
    r->io = strcmp(a->io, "pread") == 0 ? MPK_IO_PREAD : strcmp(a->io, "io_uring") == 0 ? MPK_IO_URING : MPK_IO_AUTO;
    r->progress = !a->quiet && !a->json && isatty(2) ? mpk_cli_progress : NULL;
    r->warn = warn_cb;
    r->ctx = (void *)cmd;
    r->cancel = &mpk_cli_cancelled;
    mpk_cli_tuning_apply(r);
}

static int run_resolved(const char *cmd, conv_mode mode, conv_args *ap);

static int run_conversion(const char *cmd, conv_mode mode, int argc, char **argv)
{
    conv_args a;
    int r = parse_conv_args(cmd, mode, argc, argv, &a);
    if (r >= 0)
        return r;
    char *resolved;
    if ((r = mpk_cli_source(cmd, a.revision, &a.src, &resolved)) >= 0)
        return r;
    int rc = run_resolved(cmd, mode, &a);
    free(resolved);
    return rc;
}

/* An unknown preset is a usage error (exit 2), with the name it was probably meant to be. */
static int conv_fail(const char *cmd, const mpk_error *err, const conv_args *a, bool unpack)
{
    if (err->code == MPK_E_PRESET && strstr(err->msg, "unknown preset")) {
        const char *g = mpk_cli_nearest_preset(a->preset);
        return mpk_cli_usage(cmd, "unknown preset '%s'%s%s%s (list them with 'moepack presets')", a->preset,
                             g ? " (did you mean '" : "", g ? g : "", g ? "'?)" : "");
    }
    return mpk_cli_fail(cmd, err, hint_for(err, a, unpack));
}

static int run_resolved(const char *cmd, conv_mode mode, conv_args *ap)
{
    conv_args a = *ap;
    mpk_convert_req req;
    fill_req(&a, mode, cmd, &req);
    mpk_error err = {0};
    if (mode == MODE_PLAN) {
        mpk_plan *plan;
        if (mpk_plan_create(&req, &plan, &err) != MPK_OK)
            return conv_fail(cmd, &err, &a, req.direction == MPK_DIRECTION_UNPACK);
        char *text = a.json ? mpk_plan_describe_json(plan) : mpk_plan_describe(plan, a.verbose);
        mpk_plan_free(plan);
        if (!text)
            return mpk_cli_fail(cmd, &(mpk_error){.code = MPK_E_NOMEM, .msg = "out of memory"}, NULL);
        fputs(text, stdout);
        free(text);
        return MPK_EXIT_OK;
    }
    mpk_cli_guard_begin(a.dst, false, false);
    mpk_report *rep;
    if (mpk_convert(&req, &rep, &err) != MPK_OK) {
        int rc = conv_fail(cmd, &err, &a, req.direction == MPK_DIRECTION_UNPACK);
        mpk_cli_guard_end(); /* (a signal caught: the process ends by it here) */
        /* an overlap, or a destination that names no directory, is a usage error */
        return err.code == MPK_E_OVERLAP || err.code == MPK_E_USAGE ? MPK_EXIT_USAGE : rc;
    }
    mpk_cli_guard_end();
    if (rep && (a.json || !a.quiet))
        mpk_cli_print_report(cmd, rep, a.json, true);
    mpk_report_free(rep);
    return MPK_EXIT_OK;
}

/* pack, unpack, convert and plan: the command name (argv[0]) says which. */
int mpk_cmd_convert(int argc, char **argv)
{
    static const struct {
        const char *name;
        conv_mode mode;
    } modes[] = {{"pack", MODE_PACK}, {"unpack", MODE_UNPACK}, {"convert", MODE_CONVERT}, {"plan", MODE_PLAN}};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(argv[0], modes[i].name) == 0)
            return run_conversion(modes[i].name, modes[i].mode, argc, argv);
    return mpk_cli_usage(argv[0], "not a conversion command");
}

int mpk_cmd_presets(int argc, char **argv)
{
    bool json;
    int rc = mpk_cli_json_opt("presets", argc, argv, &json);
    if (rc >= 0)
        return rc;
    if (argc - optind > 1)
        return mpk_cli_usage("presets", "expected at most one NAME, got %d arguments", argc - optind);
    if (argc - optind == 1) { /* one preset's spec, as JSON, whatever --json says */
        const char *text = mpk_preset_json(argv[optind]);
        if (!text) {
            mpk_error err = {.code = MPK_E_PRESET};
            snprintf(err.where, sizeof err.where, "preset");
            snprintf(err.msg, sizeof err.msg, "unknown preset '%s'", argv[optind]);
            return mpk_cli_fail("presets", &err, "'moepack presets' lists them");
        }
        fputs(text, stdout);
        return MPK_EXIT_OK;
    }
    cJSON *arr = json ? cJSON_CreateArray() : NULL;
    const char *name;
    for (size_t i = 0; (name = mpk_preset_name(i)); i++) {
        mpk_spec *s;
        mpk_error err = {0};
        if (mpk_spec_load(name, NULL, false, &s, &err) != MPK_OK) {
            cJSON_Delete(arr);
            return mpk_cli_fail("presets", &err, NULL);
        }
        if (arr) {
            cJSON *o = cJSON_CreateObject(), *types = cJSON_CreateArray();
            cJSON_AddStringToObject(o, "name", mpk_spec_name(s));
            cJSON_AddStringToObject(o, "description", mpk_spec_description(s));
            for (size_t k = 0; k < mpk_spec_model_type_count(s); k++)
                cJSON_AddItemToArray(types, cJSON_CreateString(mpk_spec_model_type(s, k)));
            cJSON_AddItemToObject(o, "model_types", types);
            cJSON_AddItemToArray(arr, o);
        } else {
            printf("%-14s model_types:", mpk_spec_name(s));
            for (size_t k = 0; k < mpk_spec_model_type_count(s); k++)
                printf("%s%s", k ? "," : " ", mpk_spec_model_type(s, k));
            printf("\n               %s\n", mpk_spec_description(s));
        }
        mpk_spec_free(s);
    }
    if (arr) { /* an array, one preset per line */
        fputs("[", stdout);
        for (const cJSON *o = arr->child; o; o = o->next) {
            char *text = cJSON_PrintUnformatted(o);
            if (!text) {
                cJSON_Delete(arr);
                return mpk_cli_fail("presets", &(mpk_error){.code = MPK_E_NOMEM, .msg = "out of memory"}, NULL);
            }
            printf("\n  %s%s", text, o->next ? "," : "\n");
            free(text);
        }
        puts("]");
        cJSON_Delete(arr);
    }
    return MPK_EXIT_OK;
}


static int synth_args(const char *cmd, int argc, char **argv, mpk_synth_opts *o, const char **out, bool *json)
{
    enum { O_ARCH = 1000, O_LAYERS, O_EXPERTS, O_HIDDEN, O_INTER, O_VOCAB, O_DTYPE, O_SHARDS, O_SEED, O_LAYOUT,
           O_QUANT, O_JSON };
    static const struct option opts[] = {
        {"arch", required_argument, NULL, O_ARCH}, {"layers", required_argument, NULL, O_LAYERS},
        {"experts", required_argument, NULL, O_EXPERTS}, {"hidden", required_argument, NULL, O_HIDDEN},
        {"intermediate", required_argument, NULL, O_INTER}, {"vocab", required_argument, NULL, O_VOCAB},
        {"dtype", required_argument, NULL, O_DTYPE}, {"shards", required_argument, NULL, O_SHARDS},
        {"seed", required_argument, NULL, O_SEED}, {"layout", required_argument, NULL, O_LAYOUT},
        {"quant", required_argument, NULL, O_QUANT}, {"json", no_argument, NULL, O_JSON}, {0}};
    mpk_synth_opts_init(o);
    int ch, v = 0, li = 0;
    while ((ch = mpk_cli_next_opt(argc, argv, "", opts, &li)) != -1) {
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
        case O_DTYPE: /* which dtypes synth writes is the library's to check */
            ok = false;
            for (int d = 0; d < MPK_DTYPE_COUNT && !ok; d++)
                if (strcasecmp(optarg, mpk_dtype_name((mpk_dtype)d)) == 0) {
                    o->dtype = (mpk_dtype)d;
                    ok = true;
                }
            break;
        case O_QUANT:
            ok = strcmp(optarg, "fp8") == 0 || strcmp(optarg, "none") == 0; /* FP8 block 128 */
            o->fp8 = strcmp(optarg, "fp8") == 0;
            break;
        case O_JSON: *json = true; break;
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
    bool json = false;
    int r = synth_args("synth", argc, argv, &o, &out, &json);
    if (r >= 0)
        return r;
    mpk_error err = {0};
    /* OUT's missing parents are made (mkdir -p), as for any scratch output */
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", out);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        for (char *p = parent + 1; ; p++) {
            bool end = *p == 0;
            if (*p == '/' || end) {
                *p = 0;
                if (mkdir(parent, 0777) != 0 && errno != EEXIST)
                    return mpk_cli_usage("synth", "cannot create '%s' (a parent of OUT): %s", parent, strerror(errno));
                if (!end)
                    *p = '/';
            }
            if (end)
                break;
        }
    }
    mpk_cli_guard_begin(out, true, true);
    mpk_status st = mpk_synth(&o, out, &err);
    mpk_cli_guard_end();
    if (st != MPK_OK)
        return mpk_cli_fail("synth", &err, err.code == MPK_E_PRESET ? "see 'moepack presets'" : NULL);
    /* what was written, as inspect reads it (a preset may store its experts packed, or MXFP4) */
    mpk_report *rep = NULL;
    cJSON *j = mpk_inspect(out, &rep, &err) == MPK_OK ? cJSON_Parse(mpk_report_json(rep)) : NULL;
    const cJSON *dts = cJSON_GetObjectItemCaseSensitive(j, "dtypes");
    const cJSON *lay = cJSON_GetObjectItemCaseSensitive(j, "expert_layout");
    if (json) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "schema", "moepack.synth/1");
        cJSON_AddStringToObject(s, "path", out);
        cJSON_AddStringToObject(s, "arch", o.arch);
        cJSON_AddNumberToObject(s, "layers", o.layers);
        cJSON_AddNumberToObject(s, "experts", o.experts);
        cJSON_AddNumberToObject(s, "hidden", o.hidden);
        cJSON_AddNumberToObject(s, "intermediate", o.intermediate);
        cJSON_AddItemToObject(s, "dtypes", dts ? cJSON_Duplicate(dts, 1) : cJSON_CreateObject());
        cJSON_AddStringToObject(s, "expert_layout", cJSON_IsString(lay) ? lay->valuestring : "?");
        char *text = cJSON_PrintUnformatted(s);
        if (text)
            puts(text);
        free(text);
        cJSON_Delete(s);
    } else {
        printf("synth: wrote %s (%s, %d layers, %d experts, H=%d, I=%d; dtypes", out, o.arch, o.layers, o.experts,
               o.hidden, o.intermediate);
        for (const cJSON *d = dts ? dts->child : NULL; d; d = d->next) {
            const cJSON *count = cJSON_GetObjectItemCaseSensitive(d, "count");
            printf("%s %s x%d", d == dts->child ? "" : ",", d->string, cJSON_IsNumber(count) ? count->valueint : 0);
        }
        printf("; experts %s)\n", cJSON_IsString(lay) ? lay->valuestring : "?");
    }
    cJSON_Delete(j);
    mpk_report_free(rep);
    return MPK_EXIT_OK;
}

static int demo_steps(const char *dir);
static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw);

int mpk_cmd_demo(int argc, char **argv)
{
    static const struct option none[] = {{0}};
    if (mpk_cli_next_opt(argc, argv, "", none, NULL) != -1)
        return mpk_cli_usage("demo", "unknown option '%s'", argv[optind - 1]);
    if (argc - optind > 1)
        return mpk_cli_usage("demo", "expected at most one DIR, got %d arguments", argc - optind);
    const char *base = argc > optind ? argv[optind] : NULL;
    char dir[4096];
    if (base) {
        /* a DIR that exists (a previous demo's, or anything else) is left as it is: this run
         * works in a new directory inside it */
        if (mkdir(base, 0755) == 0) {
            snprintf(dir, sizeof dir, "%s", base);
        } else if (errno == EEXIST) {
            snprintf(dir, sizeof dir, "%s/demo-XXXXXX", base);
            if (!mkdtemp(dir))
                return mpk_cli_usage("demo", "cannot create a directory in '%s': %s", base, strerror(errno));
        } else {
            return mpk_cli_usage("demo", "cannot create '%s': %s", base, strerror(errno));
        }
    } else {
        const char *td = getenv("TMPDIR"); /* as mktemp(1) */
        snprintf(dir, sizeof dir, "%s/moepack-demo-XXXXXX", td && *td ? td : "/tmp");
        if (!mkdtemp(dir))
            return mpk_cli_usage("demo", "cannot create a temporary directory in %s: %s", td && *td ? td : "/tmp",
                                 strerror(errno));
    }
    int rc = demo_steps(dir);
    if (rc && !base)
        fprintf(stderr, "demo: its files are kept in %s for a look (rm -rf %s when done)\n", dir, dir);
    else if (!base && nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0)
        printf("demo: removed its temporary directory %s ('moepack demo DIR' keeps the files)\n", dir);
    else if (!base)
        fprintf(stderr, "demo: could not remove all of its temporary directory %s: %s\n", dir, strerror(errno));
    return rc;
}

/* nftw's callback removing a demo's own temporary directory, deepest first. */
static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* synth -> pack -> unpack -> verify twice, in dir; the exit status. */
static int demo_steps(const char *dir)
{
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
    if ((rc = mpk_cmd_convert(5, pack_argv)))
        return rc;
    char *unpack_argv[] = {"unpack", packed, unpacked, NULL};
    if ((rc = mpk_cmd_convert(3, unpack_argv)))
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

/* compress and decompress: the command name (argv[0]) says which. */
int mpk_cmd_compress(int argc, char **argv)
{
    const char *cmd = argv[0];
    enum { O_LEVEL = 1000, O_THREADS, O_FORCE, O_JSON, O_CHUNK, O_REVISION };
    static const struct option opts[] = {{"level", required_argument, NULL, O_LEVEL},
                                         {"revision", required_argument, NULL, O_REVISION},
                                         {"threads", required_argument, NULL, O_THREADS},
                                         {"force", no_argument, NULL, O_FORCE}, {"json", no_argument, NULL, O_JSON},
                                         {"chunk-size", required_argument, NULL, O_CHUNK},
                                         {"quiet", no_argument, NULL, 'q'}, {0}};
    static const struct option dopts[] = {{"threads", required_argument, NULL, O_THREADS},
                                          {"force", no_argument, NULL, O_FORCE}, {"json", no_argument, NULL, O_JSON},
                                          {"quiet", no_argument, NULL, 'q'}, {0}};
    mpk_compress_req req;
    mpk_compress_req_init(&req, NULL, NULL);
    bool json = false, quiet = false;
    const char *rev = NULL;
    int ch;
    while ((ch = mpk_cli_next_opt(argc, argv, "q", strcmp(cmd, "compress") == 0 ? opts : dopts, NULL)) != -1) {
        switch (ch) {
        case 'q': quiet = true; break;
        case O_REVISION: rev = optarg; break;
        case O_LEVEL:
            if (!parse_int_opt(optarg, 1, 19, &req.level))
                return mpk_cli_usage(cmd, "--level takes 1..19");
            break;
        case O_THREADS:
            if (!parse_int_opt(optarg, 1, 64, &req.threads))
                return mpk_cli_usage(cmd, "--threads takes 1..64");
            break;
        case O_CHUNK:
            if (!mpk_parse_size(optarg, &req.chunk_size))
                return mpk_cli_usage(cmd, "bad size '%s' for --chunk-size", optarg);
            break;
        case O_FORCE: req.flags |= MPK_CONVERT_FORCE; break;
        case O_JSON: json = true; break;
        default: return mpk_cli_usage(cmd, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind != 2)
        return mpk_cli_usage(cmd, "expected SRC DST, got %d argument(s)", argc - optind);
    req.src = argv[optind];
    req.dst = argv[optind + 1];
    char *resolved;
    int rc = mpk_cli_source(cmd, rev, &req.src, &resolved);
    if (rc >= 0)
        return rc;
    req.warn = warn_cb;
    req.ctx = (void *)cmd;
    req.progress = !quiet && !json && isatty(2) ? mpk_cli_progress : NULL;
    mpk_error err = {0};
    mpk_report *rep = NULL;
    bool c = strcmp(cmd, "compress") == 0;
    mpk_cli_guard_begin(req.dst, true, false);
    mpk_status st = (c ? mpk_compress : mpk_decompress)(&req, &rep, &err);
    mpk_cli_guard_end();
    free(resolved);
    if (st != MPK_OK) {
        if (err.code == MPK_E_USAGE)
            return mpk_cli_usage(cmd, "%s", mpk_error_what(&err));
        mpk_cli_fail(cmd, &err, err.field == MPK_FIELD_FORCE ? "pass --force to replace it" : NULL);
        return err.code == MPK_E_OVERLAP ? MPK_EXIT_USAGE : MPK_EXIT_FAIL;
    }
    if (rep && (json || !quiet))
        mpk_cli_print_report(cmd, rep, json, true);
    mpk_report_free(rep);
    return MPK_EXIT_OK;
}
