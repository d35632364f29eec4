/* driver.c — main() for the fuzz targets without libFuzzer: runs every file given on the
 * command line (a file, or a directory's files) and every prefix of it (up to 4 KiB, then
 * sparser): a parser must never read past the end of what it is given. */
#define _GNU_SOURCE
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int run_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        perror(path);
        return -1;
    }
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        fclose(fp);
        free(buf);
        return -1;
    }
    fclose(fp);
    /* each run gets its own exact-size copy, so ASan sees a read past the end */
    for (long k = 0;; k += k < 4096 ? 1 : 1 + k / 16) {
        if (k > n)
            k = n;
        unsigned char *c = malloc(k ? (size_t)k : 1);
        if (!c)
            abort();
        memcpy(c, buf, (size_t)k);
        LLVMFuzzerTestOneInput(c, (size_t)k);
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
