/* dist.c — one job across MPI ranks. When the program was started by mpirun or srun (and
 * moepack was built with MPI), mpk_dist_begin joins the job and the distributed operations
 * (the executor, checkpoint hashing) split their work by rank; everything else, and every
 * build without MPI, sees one rank and calls nothing here but no-ops. Only the calling thread
 * of an operation talks MPI (MPI_THREAD_FUNNELED); every collective below is entered by every
 * rank in the same order, which is why each phase of a distributed operation ends in
 * mpk_dist_agree: a rank that failed still takes part in it, and every rank then fails with the
 * first failing rank's error. */
#define _GNU_SOURCE
#include "mpk_core.h"
#include "mpk_config.h"

#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if MPK_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank, g_size = 1, g_local = 1;
static bool g_joined;
#if MPK_HAVE_MPI
static bool g_broken; /* left a collective unfinished (cancelled): MPI is not finalized */

/* The variables the launchers set in every process they start: Open MPI's mpirun, PMIx (srun
 * --mpi=pmix, prterun), PMI-1/2 (srun --mpi=pmi2, MPICH's hydra). */
static bool launched(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", NULL};
    for (int i = 0; vars[i]; i++)
        if (getenv(vars[i]))
            return true;
    return false;
}
#endif

int mpk_dist_begin(int *argc, char ***argv)
{
#if MPK_HAVE_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (g_joined || (!inited && !launched()))
        return g_size;
    int provided;
    if (!inited && MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return 1;
    g_joined = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &g_local);
        MPI_Comm_free(&node);
    }
#else
    (void)argc, (void)argv;
    /* launched, but built without MPI: each process learns its rank from the launcher (the
     * program lets rank 0 work alone) */
    const char *r = getenv("OMPI_COMM_WORLD_RANK");
    r = r ? r : getenv("PMIX_RANK");
    r = r ? r : getenv("PMI_RANK");
    g_rank = r ? atoi(r) : 0;
#endif
    return g_size;
}

void mpk_dist_end(void)
{
#if MPK_HAVE_MPI
    int fin = 0;
    if (g_joined && !g_broken && MPI_Finalized(&fin) == MPI_SUCCESS && !fin)
        MPI_Finalize();
#endif
    g_size = 1;
}

void mpk_dist_solo(void)
{
    g_size = 1;
}

int mpk_dist_rank(void)
{
    return g_rank;
}

int mpk_dist_size(void)
{
    return g_size;
}

int mpk_default_threads(void)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    long n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : online;
    if (online > 0 && n >= online) /* not bound: the ranks on this host share it */
        n = online / (g_size > 1 ? g_local : 1);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

mpk_status mpk_dist_agree(mpk_status s, mpk_error *err)
{
    return mpk_dist_agree_watch(s, err, NULL);
}

mpk_status mpk_dist_agree_watch(mpk_status s, mpk_error *err, const volatile int *cancel)
{
#if MPK_HAVE_MPI
    if (g_size < 2)
        return s;
    int mine = s != MPK_OK ? g_rank : INT_MAX, first = INT_MAX;
    if (!cancel) {
        MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    } else {
        MPI_Request rq;
        MPI_Iallreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &rq);
        for (int done = 0; MPI_Test(&rq, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done;) {
            if (*cancel) { /* (mpirun's SIGTERM after a rank died: the others never come) */
                g_broken = true;
                return mpk_error_set(err, MPK_E_CANCELLED, 0, "", "cancelled while waiting for the other MPI ranks");
            }
            struct timespec ts = {0, 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (first == INT_MAX)
        return MPK_OK;
    mpk_error e = {0};
    if (g_rank == first)
        e = *err;
    MPI_Bcast(&e, (int)sizeof e, MPI_BYTE, first, MPI_COMM_WORLD);
    char host[64] = "";
    if (g_rank == first)
        gethostname(host, sizeof host - 1);
    MPI_Bcast(host, (int)sizeof host, MPI_BYTE, first, MPI_COMM_WORLD);
    char what[sizeof e.msg];
    snprintf(what, sizeof what, "%s", mpk_error_what(&e));
    mpk_error_set(err, e.code, e.sys_errno, e.where, "%s (MPI rank %d of %d, on %s)", what, first, g_size, host);
    return mpk_error_about(err, e.field, err->code);
#else
    (void)err;
    return s;
#endif
}

void mpk_dist_bcast(void *buf, size_t len, int root)
{
#if MPK_HAVE_MPI
    for (size_t off = 0; g_size > 1 && off < len; off += 1u << 30) {
        size_t n = len - off < (1u << 30) ? len - off : (1u << 30);
        MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
    }
#else
    (void)buf, (void)len, (void)root;
#endif
}

void mpk_dist_reduce(uint64_t *v, size_t n, mpk_dist_op op)
{
#if MPK_HAVE_MPI
    MPI_Op mop = op == MPK_DIST_XOR ? MPI_BXOR : op == MPK_DIST_SUM ? MPI_SUM : MPI_MIN;
    for (size_t off = 0; g_size > 1 && off < n; off += 1u << 27) {
        size_t k = n - off < (1u << 27) ? n - off : (1u << 27);
        MPI_Allreduce(MPI_IN_PLACE, v + off, (int)k, MPI_UINT64_T, mop, MPI_COMM_WORLD);
    }
#else
    (void)v, (void)n, (void)op;
#endif
}

/* Collective: rank 0 receives every rank's len bytes into all (size x len bytes). */
static void gather(const void *mine, size_t len, void *all)
{
#if MPK_HAVE_MPI
    if (g_size > 1) {
        MPI_Gather(mine, (int)len, MPI_BYTE, all, (int)len, MPI_BYTE, 0, MPI_COMM_WORLD);
        return;
    }
#endif
    memcpy(all, mine, len);
}

mpk_status mpk_dist_allgatherv(const void *mine, size_t len, char **all, size_t *all_len, mpk_error *err)
{
    *all = NULL;
    *all_len = 0;
    int R = g_size > 1 ? g_size : 1;
    uint64_t *lens = mpk_calloc((size_t)R, sizeof *lens), total = 0;
    int *counts = mpk_calloc((size_t)R, sizeof *counts), *displs = mpk_calloc((size_t)R, sizeof *displs);
    mpk_status s = lens && counts && displs ? MPK_OK : mpk_error_set(err, MPK_E_NOMEM, 0, "mpi", "out of memory");
    s = mpk_dist_agree(s, err);
    if (s == MPK_OK) {
        lens[g_rank] = len;
#if MPK_HAVE_MPI
        if (g_size > 1)
            MPI_Allreduce(MPI_IN_PLACE, lens, R, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD); /* (others' are 0) */
#endif
        for (int r = 0; r < R; r++) {
            displs[r] = (int)total;
            counts[r] = (int)lens[r];
            total += lens[r];
        }
        if (total > INT_MAX)
            s = mpk_error_set(err, MPK_E_USAGE, 0, "mpi", "%llu bytes to share between the ranks: over 2 GiB",
                              (unsigned long long)total);
        else if (!(*all = mpk_alloc(total + 1)))
            s = mpk_error_set(err, MPK_E_NOMEM, 0, "mpi", "out of memory");
        s = mpk_dist_agree(s, err);
    }
    if (s == MPK_OK) {
#if MPK_HAVE_MPI
        if (g_size > 1)
            MPI_Allgatherv(mine, (int)len, MPI_BYTE, *all, counts, displs, MPI_BYTE, MPI_COMM_WORLD);
        else
#endif
            memcpy(*all, mine, len);
        *all_len = total;
    } else {
        free(*all);
        *all = NULL;
    }
    free(lens);
    free(counts);
    free(displs);
    return s;
}

bool mpk_dist_mine(uint64_t *load, uint64_t bytes)
{
    if (!load)
        return true;
    int best = 0;
    for (int r = 1; r < g_size; r++)
        if (load[r] < load[best])
            best = r;
    load[best] += bytes;
    return best == g_rank;
}

mpk_rank_stats *mpk_dist_stats(uint64_t bytes_read, uint64_t bytes_written, double seconds, int *n)
{
    *n = 0;
    if (!g_joined)
        return NULL;
    mpk_rank_stats mine = {.rank = g_rank, .bytes_read = bytes_read, .bytes_written = bytes_written,
                           .seconds = seconds};
    gethostname(mine.host, sizeof mine.host - 1);
    mpk_rank_stats *all = g_rank == 0 ? mpk_calloc((size_t)g_size, sizeof *all) : NULL, dummy[1];
    gather(&mine, sizeof mine, all ? (void *)all : (void *)dummy);
    if (all)
        *n = g_size;
    return all;
}

mpk_rank_stats *mpk_dist_stats_meter(const mpk_meter *m, int *n)
{
    return mpk_dist_stats(atomic_load(&m->done), 0, (double)(mpk_now_ns() - m->t0_ns) * 1e-9, n);
}
