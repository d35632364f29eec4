/* cmd_gpucheck.c — moepack gpucheck: arguments to an mpk_gpucheck request, its lines as they come. */
#define _GNU_SOURCE
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void line_cb(void *ctx, const char *text)
{
    fputs(text, stdout);
    fflush(stdout);
}

/* "a,b,c" of positive ints into out (up to cap); the count, or -1. */
static int int_list(const char *s, int *out, int cap)
{
    char buf[512];
    int n = 0;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        char *end;
        long v = strtol(tok, &end, 10);
        if (n == cap || *end || v < 1 || v > 1 << 24)
            return -1;
        out[n++] = (int)v;
    }
    return n ? n : -1;
}

static int backend_set(const char *s, unsigned *out)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    *out = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        size_t b = 0;
        while (mpk_gpu_backend_name(b) && strcmp(mpk_gpu_backend_name(b), tok))
            b++;
        if (!mpk_gpu_backend_name(b)) {
            char names[256] = "";
            for (size_t i = 0; mpk_gpu_backend_name(i); i++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                         mpk_gpu_backend_name(i));
            return mpk_cli_usage("gpucheck", "unknown backend '%s' (%s)", tok, names);
        }
        *out |= 1u << b;
    }
    return -1;
}

int mpk_cmd_gpucheck(int argc, char **argv)
{
    enum { O_SYN = 1000, O_LAYER, O_TOKENS, O_TOPK, O_BACKENDS, O_JSON, O_SEED, O_PLOT, O_REF, O_RUNS, O_CHECK,
           O_PEER, O_SAVE, O_CPU };
    static const struct option opts[] = {
        {"synthetic", required_argument, NULL, O_SYN}, {"layer", required_argument, NULL, O_LAYER},
        {"tokens", required_argument, NULL, O_TOKENS}, {"topk", required_argument, NULL, O_TOPK},
        {"backends", required_argument, NULL, O_BACKENDS}, {"json", no_argument, NULL, O_JSON},
        {"seed", required_argument, NULL, O_SEED}, {"plot", required_argument, NULL, O_PLOT},
        {"reference", required_argument, NULL, O_REF}, {"runs", required_argument, NULL, O_RUNS},
        {"check-rows", required_argument, NULL, O_CHECK}, {"peer", required_argument, NULL, O_PEER},
        {"save-inputs", required_argument, NULL, O_SAVE}, {"cpu", no_argument, NULL, O_CPU}, {0}};
    mpk_gpucheck_req o;
    mpk_gpucheck_req_init(&o);
    int tokens[64], esz[3], rc;
    bool json = false;
    int ch;
    while ((ch = mpk_cli_next_opt(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case O_SYN:
            if (int_list(optarg, esz, 3) != 3)
                return mpk_cli_usage("gpucheck", "--synthetic takes E,H,I (e.g. 8,256,128)");
            o.E = esz[0], o.H = esz[1], o.I = esz[2];
            break;
        case O_LAYER: o.layer = atoi(optarg); break;
        case O_TOKENS:
            if ((rc = int_list(optarg, tokens, 64)) < 0)
                return mpk_cli_usage("gpucheck", "--tokens takes up to 64 positive counts (e.g. 1,16,256)");
            o.tokens = tokens, o.n_tokens = (size_t)rc;
            break;
        case O_TOPK: o.topk = atoi(optarg); break;
        case O_BACKENDS:
            if ((rc = backend_set(optarg, &o.backends)) >= 0)
                return rc;
            break;
        case O_JSON: json = true; break;
        case O_SEED: o.seed = atoi(optarg); break;
        case O_PLOT: o.plot = optarg; break;
        case O_REF: o.reference = optarg; break;
        case O_RUNS: o.runs = atoi(optarg); break;
        case O_CHECK: o.check_rows = atoi(optarg); break;
        case O_PEER: o.peer = optarg; break;
        case O_SAVE: o.save_inputs = optarg; break;
        case O_CPU: o.cpu = true; break;
        default: return mpk_cli_usage("gpucheck", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if ((argc - optind == 1) == (o.E > 0))
        return mpk_cli_usage("gpucheck", "give a packed checkpoint PATH or --synthetic E,H,I");
    o.path = o.E > 0 ? NULL : argv[optind];
    if (!json)
        o.line = line_cb;
    mpk_error err = {0};
    mpk_report *r;
    if (mpk_gpucheck(&o, &r, &err) != MPK_OK) {
        if (err.code == MPK_E_USAGE)
            return mpk_cli_usage("gpucheck", "%s", mpk_error_what(&err));
        return mpk_cli_fail("gpucheck", &err, NULL);
    }
    if (json)
        puts(mpk_report_json(r));
    rc = mpk_report_differences(r) ? MPK_EXIT_DIFF : MPK_EXIT_OK;
    if (o.plot && mpk_report_skipped(r))
        fprintf(stderr, "moepack: gpucheck: --plot %s not written: nothing was timed on a GPU (%s)\n", o.plot,
                mpk_report_skipped(r));
    if (rc == MPK_EXIT_OK && mpk_report_skipped(r) && o.cpu) {
        /* --cpu asked for the CPU checks: they passed */
        fprintf(stderr, "moepack: gpucheck: CPU backends agree with the reference (GPU part not run: %s)\n",
                mpk_report_skipped(r));
    } else if (rc == MPK_EXIT_OK && mpk_report_skipped(r)) {
        fprintf(stderr, "moepack: gpucheck: CPU backends agree with the reference; GPU part skipped: %s\n",
                mpk_report_skipped(r));
        rc = MPK_EXIT_SKIP;
    }
    mpk_report_free(r);
    return rc;
}
