/* driver.c — main() for the fuzz targets without libFuzzer: runs every file given on the
 * command line (a file, or a directory's files) and every prefix of it (up to 4 KiB, then
 * sparser): a parser must never read past the end of what it is given. */
#define _GNU_SOURCE
#include "fuzz.h"
#include "mpk_formats.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int run_file(const char *path)
{
    char *buf;
    size_t n;
    mpk_error err = {0};
    if (mpk_read_file(path, &buf, &n, &err) != MPK_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    /* each run gets its own exact-size copy, so ASan sees a read past the end */
    for (size_t k = 0;; k += k < 4096 ? 1 : 1 + k / 16) {
        if (k > n)
            k = n;
        unsigned char *c = malloc(k ? k : 1);
        if (!c)
            abort();
        memcpy(c, buf, k);
        LLVMFuzzerTestOneInput(c, k);
        free(c);
        if (k == n)
            break;
    }
    free(buf);
    return 1;
}

int main(int argc, char **argv)
{
    int ran = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[i]) < 0)
                return 1;
            ran++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], e->d_name);
            if (run_file(p) < 0) {
                closedir(d);
                return 1;
            }
            ran++;
        }
        if (d)
            closedir(d);
    }
    printf("%s: %d inputs (and their prefixes) ran clean\n", argv[0], ran);
    return ran > 0 ? 0 : 1;
}
