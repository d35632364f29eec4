/* inspect.c — inspect, hash, verify, diff: arguments to a call, its report on stdout. */
#define _GNU_SOURCE
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Parses [--json] [--write] PATH for inspect and hash; -1 to go on, else the exit status. */
static int path_args(const char *cmd, bool allow_write, int argc, char **argv, bool *json, bool *write,
                     bool *quiet, const char **rev)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {"write", no_argument, NULL, 'w'},
                                         {"quiet", no_argument, NULL, 'q'}, {"revision", required_argument, NULL, 'r'},
                                         {0}};
    static const struct option inspect_opts[] = {{"json", no_argument, NULL, 'j'},
                                                 {"revision", required_argument, NULL, 'r'}, {0}};
    int ch;
    while ((ch = mpk_cli_next_opt(argc, argv, allow_write ? "q" : "", allow_write ? opts : inspect_opts, NULL)) != -1) {
        if (ch == 'r')
            *rev = optarg;
        else if (ch == 'j')
            *json = true;
        else if (ch == 'q' && allow_write)
            *quiet = true;
        else if (ch == 'w' && allow_write)
            *write = true;
        else
            return mpk_cli_usage(cmd, "unknown option '%s'", argv[optind - 1]);
    }
    if (argc - optind != 1)
        return mpk_cli_usage(cmd, "expected one PATH, got %d", argc - optind);
    return -1;
}

/* inspect and hash: the command name (argv[0]) says which. */
int mpk_cmd_inspect(int argc, char **argv)
{
    const char *cmd = argv[0];
    bool json = false, write = false, quiet = false, hash = strcmp(cmd, "hash") == 0;
    const char *rev = NULL, *path;
    char *resolved = NULL;
    int rc = path_args(cmd, hash, argc, argv, &json, &write, &quiet, &rev);
    if (rc >= 0 || (path = argv[optind], rc = mpk_cli_source(cmd, rev, &path, &resolved)) >= 0)
        return rc;
    mpk_error err = {0};
    mpk_report *r;
    bool bar = hash && !quiet && !json && isatty(2);
    mpk_status s = hash ? mpk_hash_ex(path, write ? MPK_HASH_WRITE : 0, bar ? mpk_cli_progress : NULL,
                                      (void *)cmd, &r, &err)
                        : mpk_inspect(path, &r, &err);
    free(resolved);
    if (s == MPK_E_USAGE)
        return mpk_cli_usage(cmd, "--write: %s", err.msg);
    if (s != MPK_OK)
        return mpk_cli_fail(cmd, &err, NULL);
    mpk_cli_print_report(cmd, r, json, false);
    mpk_report_free(r);
    return MPK_EXIT_OK;
}

typedef struct {
    mpk_compare_req q;
    const char *preset, *spec_file, *revision;
    bool json, quiet;
    int n_paths;
    char *resolved;              /* SRC at --revision */
} vargs;

static int parse_vargs(const char *cmd, int argc, char **argv, vargs *v)
{
    enum { O_PRESET = 1000, O_SPEC, O_JSON, O_DEQ, O_Q, O_ATOL, O_RTOL, O_REVISION };
    static const struct option opts[] = {
        {"preset", required_argument, NULL, O_PRESET}, {"spec", required_argument, NULL, O_SPEC},
        {"json", no_argument, NULL, O_JSON}, {"dequantize", no_argument, NULL, O_DEQ},
        {"quantize", required_argument, NULL, O_Q}, {"atol", required_argument, NULL, O_ATOL},
        {"rtol", required_argument, NULL, O_RTOL}, {"quiet", no_argument, NULL, 'q'},
        {"revision", required_argument, NULL, O_REVISION}, {0}};
    mpk_compare_req_init(&v->q, NULL, NULL);
    int ch;
    while ((ch = mpk_cli_next_opt(argc, argv, "q", opts, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case 'q': v->quiet = true; break;
        case O_PRESET: v->preset = optarg; break;
        case O_SPEC: v->spec_file = optarg; break;
        case O_REVISION: v->revision = optarg; break;
        case O_JSON: v->json = true; break;
        case O_DEQ: v->q.quant = MPK_QUANT_DEQUANTIZE; break;
        case O_Q:
            if (strcmp(optarg, "fp8-block128"))
                return mpk_cli_usage(cmd, "--quantize takes fp8-block128");
            v->q.quant = MPK_QUANT_FP8_BLOCK128;
            break;
        case O_ATOL:
        case O_RTOL: {
            double x = strtod(optarg, &end);
            if (*end || !(x >= 0) || isinf(x))
                return mpk_cli_usage(cmd, "bad tolerance '%s' (a number >= 0)", optarg);
            *(ch == O_ATOL ? &v->q.atol : &v->q.rtol) = x;
            break;
        }
        default: return mpk_cli_usage(cmd, "unknown option '%s'", argv[optind - 1]);
        }
    }
    v->n_paths = argc - optind;
    bool diff = strcmp(cmd, "diff") == 0;
    if (v->n_paths < 1 || v->n_paths > 2 || (diff && v->n_paths != 2))
        return mpk_cli_usage(cmd, "expected %s", diff ? "A B" : "SRC DST or DST");
    v->q.src = v->n_paths == 2 ? argv[optind] : NULL;
    v->q.dst = argv[optind + v->n_paths - 1];
    v->q.spec = v->spec_file ? v->spec_file : v->preset;
    if (v->revision && v->n_paths != 2)
        return mpk_cli_usage(cmd, "--revision applies to SRC (a repo id or a cache folder): give SRC DST");
    return mpk_cli_source(cmd, v->revision, &v->q.src, &v->resolved);
}

/* verify and diff: the command name (argv[0]) says which. */
int mpk_cmd_verify(int argc, char **argv)
{
    const char *cmd = argv[0];
    bool diff = strcmp(cmd, "diff") == 0;
    vargs v = {0};
    int rc = parse_vargs(cmd, argc, argv, &v);
    if (rc >= 0)
        return rc;
    mpk_error err = {0};
    mpk_report *r;
    if (!v.quiet && !v.json && isatty(2)) {
        v.q.progress = mpk_cli_progress;
        v.q.ctx = (void *)cmd;
    }
    if ((diff ? mpk_diff : mpk_verify)(&v.q, &r, &err) != MPK_OK)
        return mpk_cli_fail(cmd, &err, err.code == MPK_E_MANIFEST ? "run 'moepack hash --write DST' to create one" : NULL);
    free(v.resolved);
    mpk_cli_print_report(cmd, r, v.json, false);
    rc = mpk_report_differences(r) ? MPK_EXIT_DIFF : MPK_EXIT_OK;
    mpk_report_free(r);
    return rc;
}
