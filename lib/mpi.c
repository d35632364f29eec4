/* mpi.c — the public API's front: the public face of core/dist.c: joining an mpirun/srun job. */
#include "lib_internal.h"

int mpk_mpi_begin(int *argc, char ***argv)
{
    return mpk_dist_begin(argc, argv);
}

int mpk_mpi_rank(void)
{
    return mpk_dist_rank();
}

int mpk_mpi_size(void)
{
    return mpk_dist_size();
}

void mpk_mpi_solo(void)
{
    mpk_dist_solo();
}

void mpk_mpi_end(void)
{
    mpk_dist_end();
}
