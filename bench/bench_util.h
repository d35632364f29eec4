/* bench_util.h — what the C benchmarks share: this process's CPU time, and a qsort order for
 * doubles (medians). */
#ifndef MPK_BENCH_UTIL_H
#define MPK_BENCH_UTIL_H

#include <sys/resource.h>

/* User + system CPU seconds of this process so far. */
static inline double cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static inline int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#endif
