/* hash_readback.c — CPU time of hashing a file that is in the page cache: read back with pread
 * into a 1 MiB buffer (a copy per byte) against mapped 2 MiB windows (no copy), the two ways
 * pack can hash its outputs for the manifest. Interleaved rounds, both digests compared.
 * usage: hash_readback FILE [rounds] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#include <xxhash.h>

#define WIN (2 << 20) /* the window pack maps (converter/run.c) */

static double cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return fprintf(stderr, "usage: hash_readback FILE [rounds]\n"), 2;
    int fd = open(argv[1], O_RDONLY), rounds = argc > 2 ? atoi(argv[2]) : 10;
    off_t len = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;
    char *buf = malloc(1 << 20);
    XXH3_state_t *st = XXH3_createState();
    if (len <= 0 || !buf || !st || rounds < 1 || rounds > 1000)
        return fprintf(stderr, "hash_readback: cannot read %s\n", argv[1]), 1;
    double ratio[1000], tp = 0, tm = 0;
    for (int r = 0; r < rounds; r++) {
        double a = cpu_s();
        XXH3_128bits_reset(st);
        for (off_t o = 0; o < len; o += 1 << 20) {
            size_t n = len - o < (1 << 20) ? (size_t)(len - o) : 1u << 20;
            if (pread(fd, buf, n, o) != (ssize_t)n)
                return fprintf(stderr, "hash_readback: short read\n"), 1;
            XXH3_128bits_update(st, buf, n);
        }
        XXH128_hash_t h1 = XXH3_128bits_digest(st);
        double b = cpu_s();
        XXH3_128bits_reset(st);
        for (off_t o = 0; o < len; o += WIN) {
            size_t n = len - o < WIN ? (size_t)(len - o) : (size_t)WIN;
            void *m = mmap(NULL, n, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, o);
            if (m == MAP_FAILED)
                return fprintf(stderr, "hash_readback: mmap failed\n"), 1;
            XXH3_128bits_update(st, m, n);
            munmap(m, n);
        }
        XXH128_hash_t h2 = XXH3_128bits_digest(st);
        double c = cpu_s();
        if (!XXH128_isEqual(h1, h2))
            return fprintf(stderr, "hash_readback: the two digests differ\n"), 1;
        tp += b - a;
        tm += c - b;
        ratio[r] = (b - a) / (c - b);
    }
    qsort(ratio, (size_t)rounds, sizeof ratio[0], cmp_d);
    printf("hash read-back of %.2f GiB, %d rounds: pread %.3f s, mapped %.3f s CPU per round (mean); "
           "pread / mapped median %.2fx (%.2f-%.2fx)\n", (double)len / (1 << 30), rounds, tp / rounds, tm / rounds,
           ratio[rounds / 2], ratio[0], ratio[rounds - 1]);
    return 0;
}
