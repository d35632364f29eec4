/* testutil.h — small helpers shared by the test programs. */
#ifndef MPK_TESTUTIL_H
#define MPK_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Fills buf with pseudo-random bytes (mpk_rand). */
void tu_fill(void *buf, size_t n, uint64_t *state);
/* malloc'd "a/b". */
char *tu_join(const char *a, const char *b);
/* Writes a NUL-terminated string to a file (aborts the test on failure). */
void tu_write(const char *path, const char *text);
/* rm -rf path. */
void tu_rmrf(const char *path);
/* Directory of the shared material, or NULL when it is absent. */
const char *tu_material(void);
/* Runs a shell command, returns its exit status. */
int tu_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The moepack binary under test ($MOEPACK, else build/moepack), followed by the measurement
 * options set with tu_moepack_opts (they go before the command). */
const char *tu_moepack(void);
/* The measurement options every moepack run gets ("--direct all"; NULL or "": none). */
void tu_moepack_opts(const char *opts);
/* Whether they hold opt. */
bool tu_moepack_has(const char *opt);
/* A test program's arguments (meson's args:): --no-simd, --xxh=generic, --io-engine=pread go to
 * mpk_tune() for this process and to its moepack runs; --moepack=OPTIONS to its moepack runs
 * only. Anything else: a message and exit 2. Call it first in main. */
void tu_tuning_args(int argc, char **argv);
/* A formatted string, freed at exit (a test's paths and commands). */
char *tu_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Runs "ENV moepack ARGS" with stdout in dir/out and stderr in dir/err; the exit status, or
 * 128 + the signal that killed it. */
int tu_run(const char *dir, const char *env, const char *args);
/* Runs "moepack ARGS" (stdout in dir/out, stderr in dir/err) stopped at its kth write-path
 * call (MOEPACK_FAULT=k:stop), runs change (a shell command) while it is stopped, continues it;
 * its exit status, or 128 + the signal that ended it. */
int tu_run_changing(const char *dir, int k, const char *args, const char *change);
/* A file's text (malloc'd), NULL when it cannot be read. */
char *tu_slurp(const char *path);
/* dir/err holds s (else prints what it holds and returns false). */
bool tu_err_has(const char *dir, const char *s);

#endif
