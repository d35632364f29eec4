/* copy_phase.c — CPU time of an in-kernel copy of a cached file (up to 1 GiB of it) into a new file,
 * when the source bytes sit at the same offset within a page as where they land and when they
 * do not (1000 bytes apart, as most expert slices of a pack): copy_file_range in 3 MiB calls
 * (one slice each, as pack made them), against splice through a pipe of 512 KiB in rounds that
 * end on 256 KiB multiples of the output offset (what pack does now for the second kind).
 * Interleaved rounds in a rotating order; before each copy a file of the same size is written
 * and deleted (the page-cache pages the copy then takes are warm, as in bench/pack_vs_cp.py).
 * usage: copy_phase FILE [rounds]   (FILE: 64 MiB or more; FILE.out, FILE.pf are made beside it
 * and removed) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"

static long copy_bytes; /* the bytes copied: the file's size less 8 KiB (the offsets), at most 1 GiB */
#define ROUND (256L << 10)

static void prefault(const char *path)
{
    static char zero[1 << 20];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    for (long i = 0; fd >= 0 && i < copy_bytes / (long)sizeof zero; i++)
        if (write(fd, zero, sizeof zero) != (ssize_t)sizeof zero)
            break;
    if (fd >= 0)
        close(fd);
    unlink(path);
}

/* Copies copy_bytes bytes from src at soff to a new file at doff; CPU seconds, or -1. */
static double copy(int src, const char *out, long soff, long doff, int spliced, const int *p)
{
    int d = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (d < 0)
        return -1;
    double c0 = cpu_s();
    for (long done = 0; done < copy_bytes;) {
        loff_t a = soff + done, b = doff + done;
        long n = spliced ? ROUND - (doff + done) % ROUND : 3L << 20;
        n = n < copy_bytes - done ? n : copy_bytes - done;
        if (!spliced) {
            ssize_t k = copy_file_range(src, &a, d, &b, (size_t)n, 0);
            if (k <= 0)
                return -1;
            done += k;
            continue;
        }
        for (long got = 0; got < n;) {
            ssize_t k = splice(src, &a, p[1], NULL, (size_t)(n - got), SPLICE_F_MOVE);
            if (k <= 0)
                return -1;
            got += k;
        }
        for (long put = 0; put < n;) {
            ssize_t k = splice(p[0], NULL, d, &b, (size_t)(n - put), SPLICE_F_MOVE);
            if (k <= 0)
                return -1;
            put += k;
        }
        done += n;
    }
    double c = cpu_s() - c0;
    close(d);
    unlink(out);
    return c;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: copy_phase FILE [rounds]\n");
        return 2;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 7, p[2];
    int src = open(argv[1], O_RDONLY);
    long fsize = src < 0 ? -1 : (long)lseek(src, 0, SEEK_END);
    copy_bytes = fsize - 8192 < 1L << 30 ? (fsize - 8192) & ~4095L : 1L << 30;
    if (src < 0 || copy_bytes < 64L << 20 || pipe(p) != 0 || fcntl(p[1], F_SETPIPE_SZ, 512 << 10) < (512 << 10)) {
        fprintf(stderr, "copy_phase: %s: need a file of 64 MiB or more (and a 512 KiB pipe)\n", argv[1]);
        return 2;
    }
    static const struct {
        const char *name;
        long soff, doff;
        int spliced;
    } cases[] = {
        {"copy_file_range, same offset in page ", 0, 0, 0},
        {"copy_file_range, 1000 bytes apart   ", 5096, 0, 0},
        {"splice rounds,   1000 bytes apart   ", 5096, 0, 1},
        {"splice rounds,   same offset in page", 4096, 0, 1},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    char out[4096], pf[4096];
    snprintf(out, sizeof out, "%s.out", argv[1]);
    snprintf(pf, sizeof pf, "%s.pf", argv[1]);
    double *t = calloc((size_t)rounds * NC, sizeof *t);
    char *buf = malloc(1 << 20);
    lseek(src, 0, SEEK_SET); /* warm the source */
    while (buf && read(src, buf, 1 << 20) > 0)
        ;
    for (int r = 0; t && r < rounds; r++)
        for (int i = 0; i < NC; i++) {
            int c = (i + r) % NC;
            prefault(pf);
            double cs = copy(src, out, cases[c].soff, cases[c].doff, cases[c].spliced, p);
            if (cs < 0) {
                perror("copy_phase: copy");
                return 1;
            }
            t[c * rounds + r] = cs * (double)(1L << 30) / (double)copy_bytes;
        }
    printf("CPU seconds per GiB copied, %d interleaved rounds (median, min-max; ratio to the first row's median)\n",
           rounds);
    double base = 0;
    for (int c = 0; c < NC; c++) {
        double *x = t + c * rounds;
        qsort(x, (size_t)rounds, sizeof *x, cmp_d);
        double med = x[rounds / 2];
        base = c ? base : med;
        printf("%s  %.3f s (%.3f-%.3f)  %.2fx\n", cases[c].name, med, x[0], x[rounds - 1], med / base);
    }
    free(t);
    free(buf);
    return 0;
}
