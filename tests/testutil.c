#define _GNU_SOURCE
#include "testutil.h"
#include "mpk_formats.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

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
