/* MPK_HD: a function of the index maths shared by the CUDA kernels and their CPU versions and
 * tests (mpk_decode.h, mpk_fp8.h, mpk_sched.h): host and device, inlined, under nvcc; a static
 * inline C function elsewhere. Here also the binary search they share (mpk_hd_group). */
#ifndef MPK_HD_H
#define MPK_HD_H

#ifdef __CUDACC__
#define MPK_HD __host__ __device__ __forceinline__
#else
#define MPK_HD static inline
#endif

/* The group index x falls in, given the groups' ascending starts a[0..E) (a[0] <= x): the
 * largest e with a[e] <= x, so that empty groups (equal starts) get nothing. */
MPK_HD int mpk_hd_group(const int *a, int E, int x)
{
    int lo = 0, hi = E; /* a[lo] <= x < a[hi] (a[E] taken as past x) */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (a[mid] <= x)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

#endif
