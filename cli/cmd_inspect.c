/* cmd_inspect.c — inspect, hash, verify, diff: arguments to a call, its report on stdout. */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    const char *preset, *spec_file, *revision, *junit;
    bool json, quiet;
    int n_paths;
    char *resolved;              /* SRC at --revision */
} vargs;

static int parse_vargs(const char *cmd, int argc, char **argv, vargs *v)
{
    enum { O_PRESET = 1000, O_SPEC, O_JSON, O_DEQ, O_Q, O_ATOL, O_RTOL, O_REVISION, O_JUNIT };
    static const struct option opts[] = {
        {"preset", required_argument, NULL, O_PRESET}, {"spec", required_argument, NULL, O_SPEC},
        {"json", no_argument, NULL, O_JSON}, {"dequantize", no_argument, NULL, O_DEQ},
        {"quantize", required_argument, NULL, O_Q}, {"atol", required_argument, NULL, O_ATOL},
        {"rtol", required_argument, NULL, O_RTOL}, {"quiet", no_argument, NULL, 'q'},
        {"revision", required_argument, NULL, O_REVISION}, {"junit", required_argument, NULL, O_JUNIT}, {0}};
    mpk_compare_req_init(&v->q, NULL, NULL);
    int ch;
    while ((ch = mpk_cli_next_opt(argc, argv, "q", opts, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case 'q': v->quiet = true; break;
        case O_PRESET: v->preset = optarg; break;
        case O_SPEC: v->spec_file = optarg; break;
        case O_REVISION: v->revision = optarg; break;
        case O_JUNIT: v->junit = optarg; break;
        case O_JSON: v->json = true; break;
        case O_DEQ: v->q.quant = MPK_QUANT_DEQUANTIZE; break;
        case O_Q:
            if (!mpk_cli_quant_word(optarg, &v->q.quant))
                return mpk_cli_usage(cmd, "--quantize takes " MPK_CLI_QUANT_WORDS ", got '%s'", optarg);
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

/* s XML-escaped into f (attribute or text): the five entities, and '?' for the control
 * characters XML 1.0 does not allow even as references. */
static void xml_put(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
        switch (*p) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        case '\n': fputs("&#10;", f); break;
        case '\t': fputs("&#9;", f); break;
        case '\r': fputs("&#13;", f); break;
        default: fputc(*p < 0x20 ? '?' : *p, f);
        }
    }
}

/* The comparison as JUnit XML (what GitHub Actions, GitLab and Jenkins show): one testcase per
 * tensor that differs, its <failure> carrying the kind and detail, and one for the tensors that
 * matched, all of classname CMD. Written to a temporary name beside path, flushed and renamed
 * into place. false (errno set) when it could not be written. */
static bool write_junit(const char *path, const char *cmd, const vargs *v, const mpk_report *r)
{
    size_t n = mpk_report_count(r), compared = 0;
    cJSON *doc = cJSON_Parse(mpk_report_json(r));
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(doc, "compared");
    if (cJSON_IsNumber(c) && c->valuedouble > 0)
        compared = (size_t)c->valuedouble;
    cJSON_Delete(doc);
    size_t differ = mpk_report_differences(r), same = compared > differ ? compared - differ : 0;
    size_t tests = n + (same || !n), failures = 0;
    mpk_report_item it;
    for (size_t i = 0; i < n; i++)
        failures += mpk_report_item_at(r, i, &it) && it.kind;
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    if (!tmp)
        return false;
    snprintf(tmp, pl + 16, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        free(tmp);
        errno = e;
        return false;
    }
    fchmod(fd, 0644); /* a report, not a secret: mkstemp's 0600 would hide it from CI's uploader */
    char suite[64];
    snprintf(suite, sizeof suite, "moepack %s", cmd);
    fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"", f);
    xml_put(f, suite);
    fprintf(f, "\" tests=\"%zu\" failures=\"%zu\" errors=\"0\">\n  <testsuite name=\"", tests, failures);
    xml_put(f, suite);
    fputs(" ", f);
    if (v->q.src) {
        xml_put(f, v->q.src);
        fputs(" ", f);
    }
    xml_put(f, v->q.dst);
    fprintf(f, "\" tests=\"%zu\" failures=\"%zu\" errors=\"0\" skipped=\"0\">\n", tests, failures);
    for (size_t i = 0; i < n; i++) {
        if (!mpk_report_item_at(r, i, &it))
            continue;
        fputs("    <testcase classname=\"", f);
        xml_put(f, cmd);
        fputs("\" name=\"", f);
        xml_put(f, it.name);
        if (!it.kind) {
            fputs("\"/>\n", f);
            continue;
        }
        fputs("\">\n      <failure type=\"", f);
        xml_put(f, it.kind);
        fputs("\" message=\"", f);
        xml_put(f, it.kind);
        fputs(": ", f);
        xml_put(f, it.detail);
        fputs("\">", f);
        xml_put(f, it.name);
        fputs(": ", f);
        xml_put(f, it.detail);
        if (it.hash && *it.hash) {
            fputs(" (xxh3-128 of DST's tensor: ", f);
            xml_put(f, it.hash);
            fputs(")", f);
        }
        fputs("</failure>\n    </testcase>\n", f);
    }
    if (same || !n)
        fprintf(f, "    <testcase classname=\"%s\" name=\"%zu tensor(s) %s\"/>\n", cmd, same,
                n ? "that matched" : "compared, no difference");
    fputs("  </testsuite>\n</testsuites>\n", f);
    bool ok = fflush(f) == 0 && !ferror(f) && fsync(fd) == 0;
    int e = errno;
    ok &= fclose(f) == 0;
    if (ok && rename(tmp, path) != 0) {
        e = errno;
        ok = false;
    }
    if (!ok)
        unlink(tmp);
    free(tmp);
    errno = e;
    return ok;
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
    mpk_cli_print_report(cmd, r, v.json, false);
    rc = mpk_report_differences(r) ? MPK_EXIT_DIFF : MPK_EXIT_OK;
    if (v.junit && !write_junit(v.junit, cmd, &v, r)) {
        mpk_error e = {.code = MPK_E_IO, .sys_errno = errno};
        snprintf(e.where, sizeof e.where, "%s", v.junit);
        snprintf(e.msg, sizeof e.msg, "--junit %s: cannot write: %s", v.junit, strerror(errno));
        rc = mpk_cli_fail(cmd, &e, NULL);
    }
    free(v.resolved); /* (v.q.src, named in the JUnit report) */
    mpk_report_free(r);
    return rc;
}
