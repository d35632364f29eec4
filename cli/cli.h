/* cli.h — the moepack command table and helpers shared by the command files. The CLI parses
 * arguments, calls libmoepack's public API (moepack/moepack.h, nothing else of ours) and
 * prints what it returns. */
#ifndef MPK_CLI_H
#define MPK_CLI_H

#include "moepack/moepack.h"

#include <stdbool.h>
#include <stdio.h>

/* Exit codes (README and `moepack help` list the same table). */
enum {
    MPK_EXIT_OK = 0,
    MPK_EXIT_FAIL = 1,   /* runtime failure: bad input, I/O error */
    MPK_EXIT_USAGE = 2,  /* bad command line */
    MPK_EXIT_DIFF = 3,   /* verify found differences */
    MPK_EXIT_SKIP = 77,  /* precondition missing (no GPU) */
};

typedef struct mpk_command {
    const char *name;
    const char *summary;
    const char *usage;   /* full --help text */
    int (*run)(int argc, char **argv);
} mpk_command;

extern const mpk_command mpk_commands[];
extern const size_t mpk_n_commands;

/* Set when the command takes --json and was given it: mpk_cli_fail and mpk_cli_usage then also
 * print the error as a JSON document on stdout (schema moepack.error/1). */
extern bool mpk_cli_json_errors;
/* "moepack: CMD: msg" (+ "hint: ..." when hint is non-NULL) on stderr, and under --json the
 * error document on stdout; returns 1. */
int mpk_cli_fail(const char *cmd, const mpk_error *err, const char *hint);
/* --revision REV: *src (a repo id or a cache folder models--ORG--NAME) replaced by the local
 * snapshot of REV (malloc'd into *owned, which the caller frees). -1 to go on (also when rev is
 * NULL: the library looks ids up itself, at main), else the exit status after the message. */
int mpk_cli_source(const char *cmd, const char *rev, const char **src, char **owned);
/* The embedded preset name is probably meant to be ("mixtral" for "mixtrl"), NULL if none stands out. */
const char *mpk_cli_nearest_preset(const char *name);
/* The word of names (n entries, each a const char * at stride bytes from the last) word is
 * probably meant to be: a single prefix match, else the one nearest by edit distance, NULL if
 * none stands out. */
const char *mpk_cli_nearest(const char *word, const char *const *names, size_t n, size_t stride);

/* signals.c: the cancel flag the conversion requests carry; mpk_cli_guard_begin(dst, clean, synth)
 * before a command writes dst (clean: the handler itself removes this process's staging
 * directories beside dst, for requests without a cancel flag; synth: synth's NAME.synth-src-*
 * too) and mpk_cli_guard_end() after it, which ends the process by a signal caught meanwhile. */
extern volatile int mpk_cli_cancelled;
void mpk_cli_guard_begin(const char *dst, bool clean, bool synth);
void mpk_cli_guard_end(void);
/* --quantize's word (fp8-block128, nvfp4, mxfp4) as *q; false for another. */
bool mpk_cli_quant_word(const char *s, mpk_quant *q);
#define MPK_CLI_QUANT_WORDS "fp8-block128, nvfp4 or mxfp4"
/* One usage line on stderr plus a pointer to --help; returns 2. */
int mpk_cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True when argv has --help/-h; prints usage. */
bool mpk_cli_wants_help(const mpk_command *c, int argc, char **argv);
struct option;
/* getopt_long over argv (errors left to the caller: '?'), starting over at argv[1] for a new
 * argv. Not thread-safe (getopt is not). */
int mpk_cli_next_opt(int argc, char **argv, const char *shorts, const struct option *opts, int *longindex);
/* A progress line on stderr (ctx: the command's name): bar, bytes done/total, rate, and an ETA
 * once a rate is known; a newline at the end. For a terminal only (callers check isatty). */
void mpk_cli_progress(void *ctx, uint64_t done, uint64_t total, double seconds);
/* Parses a command's only option, --json, into *json; -1 to go on (operands from optind), else
 * the exit status of a usage error. */
int mpk_cli_json_opt(const char *cmd, int argc, char **argv, bool *json);
/* Parses "5GB", "256MiB", "1000" into bytes; false on error. */
bool mpk_parse_size(const char *s, uint64_t *out);

/* tuning.c: the measurement and tuning options given before the command. mpk_cli_tuning_parse
 * reads them from argv[1] on, sets *used to how many argv entries they took and calls mpk_tune();
 * -1 to go on, else the exit status of a usage error. mpk_cli_tuning_apply puts a conversion's
 * (direct, bounce, no splice/prefetch/writeback) into its request. */
extern const char mpk_cli_tuning_help[];
int mpk_cli_tuning_parse(int argc, char **argv, int *used);
void mpk_cli_tuning_apply(mpk_convert_req *r);
/* Their names ("--io-engine --xxh ..."), for the completion script. */
void mpk_cli_tuning_names(FILE *f);

/* The commands (argv[0] is the command's name; one function may serve several). */
int mpk_cmd_inspect(int argc, char **argv), mpk_cmd_convert(int argc, char **argv),
    mpk_cmd_presets(int argc, char **argv), mpk_cmd_synth(int argc, char **argv), mpk_cmd_demo(int argc, char **argv),
    mpk_cmd_verify(int argc, char **argv), mpk_cmd_gpucheck(int argc, char **argv), mpk_cmd_compress(int argc, char **argv);
/* Prints a report's text, each line prefixed "CMD: " when prefix (or its JSON when json). */
void mpk_cli_print_report(const char *cmd, const mpk_report *r, bool json, bool prefix);

#endif
