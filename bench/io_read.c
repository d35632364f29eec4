/* io_read.c — read a whole file through the I/O engine; prints GB/s.
 * usage: io_read FILE auto|io_uring|pread [repeats] */
#define _GNU_SOURCE
#include "mpk_formats.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return fprintf(stderr, "usage: io_read FILE auto|io_uring|pread [repeats]\n"), 2;
    mpk_io_backend be = strcmp(argv[2], "pread") == 0 ? MPK_IO_PREAD
                        : strcmp(argv[2], "io_uring") == 0 ? MPK_IO_URING : MPK_IO_AUTO;
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return perror(argv[1]), 1;
    const size_t req = 4u << 20, batch = 32;
    char *buf = malloc(req * batch);
    mpk_io *io;
    mpk_error err;
    if (mpk_io_create(be, 32, 1u << 20, &io, &err) != MPK_OK)
        return fprintf(stderr, "%s\n", err.msg), 1;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (uint64_t off = 0; off < (uint64_t)st.st_size; off += req * batch) {
            mpk_io_req rq[32];
            size_t n = 0;
            for (size_t k = 0; k < batch && off + k * req < (uint64_t)st.st_size; k++) {
                uint64_t o = off + k * req, left = (uint64_t)st.st_size - o;
                rq[n++] = (mpk_io_req){.fd = fd, .offset = o, .buf = buf + k * req, .len = left < req ? left : req};
            }
            if (mpk_io_submit(io, rq, n, &err) != MPK_OK)
                return fprintf(stderr, "%s\n", err.msg), 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
        if (s < best)
            best = s;
    }
    printf("%s %.2f GB/s (best of %d, %.3f s for %lld bytes)\n", mpk_io_backend_name(mpk_io_backend_of(io)),
           (double)st.st_size / best / 1e9, reps, best, (long long)st.st_size);
    mpk_io_free(io);
    free(buf);
    return 0;
}
