/* pack.c — a complete program over libmoepack: pack SRC DST.
 *
 *   cc pack.c $(pkg-config --cflags --libs moepack) -o pack
 *   cc pack.c $(pkg-config --static --cflags --libs moepack | sed "s/-lmoepack/-l:libmoepack.a/") -o pack
 *   ./pack model-per-expert/ model-packed/
 *
 * Packs a per-expert checkpoint (preset from its config.json), with a progress line, Ctrl-C
 * cancelling cleanly (nothing is left at DST), then proves the result: every packed tensor is
 * recomputed from SRC and compared byte for byte. */
#include <moepack/moepack.h>

#include <signal.h>
#include <stdio.h>

static volatile int stop;

static void on_sigint(int sig)
{
    (void)sig;
    stop = 1;
}

static void on_progress(void *ctx, uint64_t done, uint64_t total, double seconds)
{
    char d[32], t[32];
    (void)ctx;
    fprintf(stderr, "\r%s / %s  %.1f s", mpk_human_bytes(done, d, sizeof d), mpk_human_bytes(total, t, sizeof t),
            seconds);
    if (done == total)
        fputc('\n', stderr);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SRC DST\n", argv[0]);
        return 2;
    }
    signal(SIGINT, on_sigint);

    mpk_convert_req req;
    mpk_convert_req_init(&req, argv[1], argv[2]); /* preset auto, 50 GB shards, 1 GiB budget */
    req.progress = on_progress;
    req.cancel = &stop;

    mpk_error err;
    mpk_report *report;
    if (mpk_convert(&req, &report, &err) != MPK_OK) {
        fprintf(stderr, "pack: %s (%s)\n", err.msg, mpk_status_str(err.code));
        return 1;
    }
    fputs(mpk_report_text(report), stdout);
    mpk_report_free(report);

    mpk_compare_req cmp;
    mpk_compare_req_init(&cmp, argv[1], argv[2]);
    if (mpk_verify(&cmp, &report, &err) != MPK_OK) {
        fprintf(stderr, "pack: verify: %s\n", err.msg);
        return 1;
    }
    size_t differ = mpk_report_differences(report);
    fputs(mpk_report_text(report), stdout);
    mpk_report_free(report);
    return differ ? 3 : 0;
}
