/* hooks.c — the public API's front: the failure-injection test hooks, armed by an explicit call
 * (mpk_test_hooks_arm: the moepack program makes it with its MOEPACK_FAULT and
 * MOEPACK_FAULT_RANK variables, so the tests drive it through its failure paths); a program that
 * does not call it is never affected, whatever its environment.
 *
 * MOEPACK_FAULT=N:ERRNO (ENOSPC, EIO, EFBIG, EDQUOT, EOPNOTSUPP) or N:kill makes the Nth write-path call
 * fail, or the process die there (tests of crash safety); N:stop stops it there until SIGCONT;
 * N:ENOMEM makes the Nth allocation fail (cJSON's included); MOEPACK_FAULT=count prints how
 * many of each there were at exit (and how many of the write-path calls were fsyncs). Under
 * mpirun/srun, MOEPACK_FAULT_RANK=R arms it in rank R only (read from the launcher's
 * variables: this runs before MPI starts). */
#define _GNU_SOURCE
#include "lib_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void count_faults(void)
{
    fprintf(stderr, "moepack: fault points passed: %ld\nmoepack: allocations passed: %ld\nmoepack: fsyncs: %ld\n",
            (long)mpk_fault_passed, (long)mpk_alloc_passed, (long)mpk_fault_fsyncs);
}

static void *cjson_alloc(size_t n)
{
    return mpk_alloc(n);
}

static void route_cjson(void)
{
    cJSON_Hooks h = {cjson_alloc, free};
    cJSON_InitHooks(&h);
}

void mpk_test_hooks_arm(const char *f, const char *only)
{
    if (!f || !*f)
        return;
    if (only) {
        const char *r = getenv("OMPI_COMM_WORLD_RANK");
        r = r ? r : getenv("PMIX_RANK");
        r = r ? r : getenv("PMI_RANK");
        if (!r || strcmp(r, only) != 0)
            return;
    }
    if (strcmp(f, "count") == 0) {
        route_cjson();
        atexit(count_faults);
        return;
    }
    char *end;
    long n = strtol(f, &end, 10);
    if (n <= 0 || *end != ':')
        return;
    static const struct {
        const char *name;
        int e;
    } errs[] = {{"kill", 0}, {"stop", -1}, {"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EFBIG", EFBIG}, {"EDQUOT", EDQUOT},
                {"EOPNOTSUPP", EOPNOTSUPP}}; /* (a file system without fallocate) */
    if (strcmp(end + 1, "ENOMEM") == 0) {
        route_cjson();
        mpk_alloc_fail_countdown = n;
        return;
    }
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (strcmp(end + 1, errs[i].name) == 0) {
            mpk_fault_errno = errs[i].e;
            mpk_fault_countdown = n;
        }
}
