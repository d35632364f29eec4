#define _GNU_SOURCE
#include "testutil.h"
#include "mpk_formats.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

void tu_fill(void *buf, size_t n, uint64_t *s)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(mpk_rand(s) >> 56);
}

char *tu_join(const char *a, const char *b)
{
    char *p = malloc(strlen(a) + strlen(b) + 2);
    sprintf(p, "%s/%s", a, b);
    return p;
}

void tu_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        abort();
    }
    fputs(text, f);
    fclose(f);
}

int tu_sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

void tu_rmrf(const char *path)
{
    if (strncmp(path, "/tmp/", 5) == 0)
        tu_sh("rm -rf '%s'", path);
}

const char *tu_material(void)
{
    const char *p = getenv("MPK_MATERIAL");
    struct stat st;
    if (p && stat(p, &st) == 0 && S_ISDIR(st.st_mode))
        return p;
    return NULL;
}

static char moepack_opts[256];

const char *tu_moepack(void)
{
    static char cmd[1024];
    const char *m = getenv("MOEPACK");
    snprintf(cmd, sizeof cmd, "%s%s%s", m ? m : "build/moepack", moepack_opts[0] ? " " : "", moepack_opts);
    return cmd;
}

void tu_moepack_opts(const char *opts)
{
    snprintf(moepack_opts, sizeof moepack_opts, "%s", opts ? opts : "");
}

bool tu_moepack_has(const char *opt)
{
    return strstr(moepack_opts, opt) != NULL;
}

void tu_tuning_args(int argc, char **argv)
{
    mpk_tuning t;
    mpk_tuning_init(&t);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-simd") == 0)
            t.no_simd = true;
        else if (strcmp(argv[i], "--xxh=generic") == 0)
            t.xxh_generic = true;
        else if (strcmp(argv[i], "--io-engine=pread") == 0)
            t.io = MPK_IO_PREAD;
        else if (strncmp(argv[i], "--moepack=", 10) == 0)
            tu_moepack_opts(argv[i] + 10);
        else {
            fprintf(stderr, "%s: unknown argument '%s' (--no-simd, --xxh=generic, --io-engine=pread, "
                            "--moepack=OPTIONS)\n", argv[0], argv[i]);
            exit(2);
        }
    }
    mpk_tune(&t);
    /* the moepack runs of this test use the same process-wide switches */
    const char *same[] = {t.no_simd ? "--no-simd" : NULL, t.xxh_generic ? "--xxh generic" : NULL,
                          t.io == MPK_IO_PREAD ? "--io-engine pread" : NULL};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        size_t n = strlen(moepack_opts), w = same[i] ? strlen(same[i]) : 0;
        if (!same[i] || n + 1 + w >= sizeof moepack_opts)
            continue;
        if (n)
            moepack_opts[n++] = ' ';
        memcpy(moepack_opts + n, same[i], w + 1);
    }
}

/* tu_fmt's strings, freed at exit (before LeakSanitizer looks) */
static char **fmt_kept;
static size_t fmt_n, fmt_cap;

static void fmt_free_all(void)
{
    for (size_t i = 0; i < fmt_n; i++)
        free(fmt_kept[i]);
    free(fmt_kept);
}

char *tu_fmt(const char *fmt, ...)
{
    char *b = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&b, fmt, ap) < 0)
        abort();
    va_end(ap);
    if (fmt_n == fmt_cap) {
        if (!fmt_cap)
            atexit(fmt_free_all);
        fmt_cap = fmt_cap ? 2 * fmt_cap : 64;
        fmt_kept = realloc(fmt_kept, fmt_cap * sizeof *fmt_kept);
        if (!fmt_kept)
            abort();
    }
    fmt_kept[fmt_n++] = b;
    return b;
}

int tu_run(const char *dir, const char *env, const char *args)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s %s >%s/out 2>%s/err", env, tu_moepack(), args, dir, dir);
    int r = system(cmd);
    if (WIFSIGNALED(r))
        return 128 + WTERMSIG(r);
    return WEXITSTATUS(r);
}

char *tu_slurp(const char *p)
{
    char *t = NULL;
    size_t n;
    mpk_error e;
    if (mpk_read_file(p, &t, &n, &e) != MPK_OK)
        return NULL;
    return t;
}

bool tu_err_has(const char *dir, const char *s)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/err", dir);
    char *t = tu_slurp(p);
    bool ok = t && strstr(t, s);
    if (!ok)
        print_message("stderr was: %s\n(looking for '%s')\n", t ? t : "(none)", s);
    free(t);
    return ok;
}

int tu_run_changing(const char *dir, int k, const char *args, const char *change)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("MOEPACK_FAULT", tu_fmt("%d:stop", k), 1);
        execl("/bin/sh", "sh", "-c", tu_fmt("exec %s %s >%s/out 2>%s/err", tu_moepack(), args, dir, dir),
              (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
    assert_true(WIFSTOPPED(st));
    assert_int_equal(tu_sh("%s", change), 0);
    kill(pid, SIGCONT);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
