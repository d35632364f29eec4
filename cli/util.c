/* util.c — what the commands share: messages (failures, usage errors, JSON error documents,
 * "did you mean"), progress, option parsing, sizes, reports. */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* The edit distance of a and b (insertions, deletions, substitutions and swaps of two
 * neighbours, each 1: "pakc" is 1 from "pack"); words longer than 63 bytes are far from all. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 64;
    size_t d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

/* What the user probably meant by word among names[0..n) (n of them, each at stride bytes from
 * the last: a table's name field): the one name word begins, else the one nearest by edit
 * distance within 1 (words of up to 4 characters) or 2; NULL when none, or two, fit. */
const char *mpk_cli_nearest(const char *word, const char *const *names, size_t n, size_t stride)
{
    const char *pick = NULL, *by_prefix = NULL;
    size_t best = strlen(word) <= 4 ? 2 : 3, n_best = 0, n_prefix = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = *(const char *const *)((const char *)names + i * stride);
        if (!name)
            break;
        if (*word && strncmp(name, word, strlen(word)) == 0)
            by_prefix = name, n_prefix++;
        size_t d = edit_distance(word, name);
        if (d < best)
            best = d, pick = name, n_best = 1;
        else if (d == best && pick)
            n_best++;
    }
    if (n_prefix == 1)
        return by_prefix;
    return n_best == 1 ? pick : NULL;
}

const char *mpk_cli_nearest_preset(const char *name)
{
    const char *names[256];
    size_t n = 0;
    while (n < sizeof names / sizeof *names && (names[n] = mpk_preset_name(n)))
        n++;
    return mpk_cli_nearest(name, names, n, sizeof *names);
}

/* The option the last unknown one was probably meant to be ("--force" for "--forse"): set by
 * mpk_cli_next_opt, said by mpk_cli_usage after "unknown option ..." */
static char opt_guess[80];

bool mpk_cli_json_errors;

/* Under --json, an error as a document on stdout too (schema moepack.error/1): status, message,
 * the file and tensor it is about (null when none), errno, the request field the way out is
 * about (the library's word for it, mpk_field_name) and the hint when there are. */
static void json_error(const char *cmd, mpk_status code, int sys_errno, const char *where, const char *msg,
                       mpk_field field, const char *hint)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "schema", "moepack.error/1");
    cJSON_AddStringToObject(o, "command", cmd);
    cJSON_AddStringToObject(o, "status", mpk_status_str(code));
    cJSON_AddStringToObject(o, "message", msg);
    if (where && *where)
        cJSON_AddStringToObject(o, "file", where);
    else
        cJSON_AddNullToObject(o, "file");
    /* the tensor as the library names it in messages: "tensor 'NAME'" */
    const char *t = strstr(msg, "tensor '"), *end = t ? strchr(t + 8, '\'') : NULL;
    char tensor[512];
    if (end && (size_t)(end - t - 8) < sizeof tensor) {
        snprintf(tensor, sizeof tensor, "%.*s", (int)(end - t - 8), t + 8);
        cJSON_AddStringToObject(o, "tensor", tensor);
    } else {
        cJSON_AddNullToObject(o, "tensor");
    }
    if (sys_errno)
        cJSON_AddNumberToObject(o, "errno", sys_errno);
    if (field != MPK_FIELD_NONE && mpk_field_name(field))
        cJSON_AddStringToObject(o, "field", mpk_field_name(field));
    if (hint)
        cJSON_AddStringToObject(o, "hint", hint);
    char *text = cJSON_Print(o);
    if (text)
        puts(text);
    else /* out of memory: the document still says what failed */
        printf("{\"schema\": \"moepack.error/1\", \"status\": \"%s\"}\n", mpk_status_str(code));
    fflush(stdout);
    free(text);
    cJSON_Delete(o);
}

int mpk_cli_fail(const char *cmd, const mpk_error *err, const char *hint)
{
    const char *msg = err->msg[0] ? err->msg : mpk_status_str(err->code);
    fprintf(stderr, "moepack: %s: %s\n", cmd, msg);
    /* a hint says what the message does not: none when the message already names the way out
     * (the same command, or the same option) */
    static const char *const ways[] = {"--force", "'moepack presets'", "moepack unpack", "moepack pack",
                                       "--dequantize", "--resume", NULL};
    for (const char *const *w = ways; hint && *w; w++)
        if (strstr(msg, *w) && strstr(hint, *w))
            hint = NULL;
    if (hint && !strstr(msg, hint))
        fprintf(stderr, "hint: %s\n", hint);
    else
        hint = NULL;
    if (mpk_cli_json_errors)
        json_error(cmd, err->code, err->sys_errno, err->where, msg, err->field, hint);
    return MPK_EXIT_FAIL;
}

int mpk_cli_source(const char *cmd, const char *rev, const char **src, char **owned)
{
    *owned = NULL;
    if (!rev || !*src)
        return -1;
    mpk_error err = {0};
    mpk_status s = mpk_resolve_source(*src, rev, owned, &err);
    if (s == MPK_E_USAGE)
        return mpk_cli_usage(cmd, "--revision: %s", err.msg);
    if (s != MPK_OK)
        return mpk_cli_fail(cmd, &err, NULL);
    *src = *owned;
    return -1;
}

void mpk_cli_progress(void *ctx, uint64_t done, uint64_t total, double seconds)
{
    double rate = seconds > 0 ? (double)done / seconds : 0;
    double frac = total ? (double)done / (double)total : 1;
    char bar[31], hd[32], ht[32], eta[32] = "ETA --";
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    /* an ETA once there is a rate to go by: some bytes done, a second gone */
    if (done > 0 && done < total && seconds >= 1 && rate > 0) {
        double left = (double)(total - done) / rate;
        if (left < 3600)
            snprintf(eta, sizeof eta, "ETA %.0fs", left);
        else
            snprintf(eta, sizeof eta, "ETA %.0fh%02.0fm", left / 3600, fmod(left, 3600) / 60);
    } else if (done == total) {
        snprintf(eta, sizeof eta, "%.1fs", seconds);
    }
    fprintf(stderr, "\r%s: [%s] %5.1f%%  %s / %s  %.2f GB/s  %-12s%s", (const char *)ctx, bar, frac * 100,
            mpk_human_bytes(done, hd, sizeof hd), mpk_human_bytes(total, ht, sizeof ht), rate / 1e9, eta,
            done == total ? "\n" : "");
    fflush(stderr);
}

int mpk_cli_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    char msg[1024];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t l = strlen(msg);
    if (opt_guess[0] && strncmp(fmt, "unknown option", 14) == 0)
        snprintf(msg + l, sizeof msg - l, " (did you mean '%s'?)", opt_guess);
    opt_guess[0] = 0;
    fprintf(stderr, "moepack: %s: %s", cmd, msg);
    if (mpk_cli_json_errors)
        json_error(cmd, MPK_E_USAGE, 0, NULL, msg, MPK_FIELD_NONE, NULL);
    fprintf(stderr, "\nTry 'moepack %s --help'.\n", cmd);
    return MPK_EXIT_USAGE;
}

bool mpk_cli_wants_help(const mpk_command *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(c->usage, stdout);
            return true;
        }
    }
    return false;
}

bool mpk_parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !isdigit((unsigned char)*s))
        return false;
    double v = strtod(s, &end);
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {
        {"", 1},          {"B", 1},           {"KB", 1e3},           {"MB", 1e6},
        {"GB", 1e9},      {"TB", 1e12},       {"KiB", 1024.0},       {"MiB", 1048576.0},
        {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) == 0 &&
            (strchr(units[i].suffix, 'i') ? strcmp(end, units[i].suffix) == 0 : 1)) {
            double b = v * units[i].mult;
            if (b < 0 || b > 1.8e19)
                return false;
            *out = (uint64_t)(b + 0.5);
            return true;
        }
    }
    return false;
}

void mpk_cli_print_report(const char *cmd, const mpk_report *r, bool json, bool prefix)
{
    if (json) {
        puts(mpk_report_json(r));
        return;
    }
    const char *t = mpk_report_text(r);
    while (*t) {
        const char *nl = strchr(t, '\n');
        size_t n = nl ? (size_t)(nl - t) + 1 : strlen(t);
        printf("%s%s%.*s", prefix ? cmd : "", prefix ? ": " : "", (int)n, t);
        t += n;
    }
}

int mpk_cli_next_opt(int argc, char **argv, const char *shorts, const struct option *opts, int *longindex)
{
    static char **parsing; /* the argv being parsed: another one (or a finished one) starts over */
    if (getenv("MOEPACK_LIST_OPTIONS")) {
        /* the options this parser takes, one per line, then exit: what tests/cli.sh checks each
         * --help text against and what the bash completion offers */
        for (const struct option *o = opts; o && o->name; o++)
            printf("--%s\n", o->name);
        for (const char *s = shorts; s && *s; s++)
            if (*s != ':')
                printf("-%c\n", *s);
        exit(MPK_EXIT_OK);
    }
    if (argv != parsing) {
        parsing = argv;
        optind = 1;
        opterr = 0;
    }
    int ch = getopt_long(argc, argv, shorts, opts, longindex);
    opt_guess[0] = 0;
    const char *bad = ch == '?' && optopt == 0 && optind > 0 && optind <= argc ? argv[optind - 1] : NULL;
    if (bad && strncmp(bad, "--", 2) == 0 && bad[2] && opts) {
        char word[64];
        snprintf(word, sizeof word, "%.*s", (int)strcspn(bad + 2, "="), bad + 2);
        size_t n = 0;
        while (opts[n].name)
            n++;
        const char *g = mpk_cli_nearest(word, &opts[0].name, n, sizeof *opts);
        if (g)
            snprintf(opt_guess, sizeof opt_guess, "--%s", g);
    }
    if (ch == -1)
        parsing = NULL; /* done: optind is where the operands start */
    return ch;
}


bool mpk_cli_quant_word(const char *s, mpk_quant *q)
{
    static const struct {
        const char *word;
        mpk_quant q;
    } words[] = {{"fp8-block128", MPK_QUANT_FP8_BLOCK128}, {"nvfp4", MPK_QUANT_NVFP4}, {"mxfp4", MPK_QUANT_MXFP4}};
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        if (strcmp(s, words[i].word) == 0) {
            *q = words[i].q;
            return true;
        }
    return false;
}
