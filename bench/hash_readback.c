/* hash_readback.c — CPU time of hashing a file that is in the page cache with
 * mpk_hash_file_range, the way pack hashes its outputs for the manifest: read back with pread
 * into a 1 MiB buffer (a copy per byte) against mapped windows (no copy). Interleaved rounds,
 * both digests compared.
 * usage: hash_readback FILE [rounds] */
#define _GNU_SOURCE
#include "mpk_formats.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench_util.h"

int main(int argc, char **argv)
{
    if (argc < 2)
        return fprintf(stderr, "usage: hash_readback FILE [rounds]\n"), 2;
    int fd = open(argv[1], O_RDONLY), rounds = argc > 2 ? atoi(argv[2]) : 10;
    off_t len = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;
    char *buf = malloc(1 << 20);
    if (len <= 0 || !buf || rounds < 1 || rounds > 1000)
        return fprintf(stderr, "hash_readback: cannot read %s\n", argv[1]), 1;
    double ratio[1000], t[2] = {0, 0};
    for (int r = 0; r < rounds; r++) {
        mpk_hash128 h[2];
        double c[2];
        for (int mapped = 0; mapped < 2; mapped++) {
            mpk_error err = {0};
            double a = cpu_s();
            if (mpk_hash_file_range(fd, 0, (uint64_t)len, buf, 1 << 20, mapped, argv[1], NULL, &h[mapped], &err) !=
                MPK_OK)
                return fprintf(stderr, "hash_readback: %s\n", err.msg), 1;
            t[mapped] += c[mapped] = cpu_s() - a;
        }
        if (h[0].hi != h[1].hi || h[0].lo != h[1].lo)
            return fprintf(stderr, "hash_readback: the two digests differ\n"), 1;
        ratio[r] = c[0] / c[1];
    }
    qsort(ratio, (size_t)rounds, sizeof ratio[0], cmp_d);
    printf("hash read-back of %.2f GiB, %d rounds: pread %.3f s, mapped %.3f s CPU per round (mean); "
           "pread / mapped median %.2fx (%.2f-%.2fx)\n", (double)len / (1 << 30), rounds, t[0] / rounds, t[1] / rounds,
           ratio[rounds / 2], ratio[0], ratio[rounds - 1]);
    return 0;
}
