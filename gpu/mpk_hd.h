/* MPK_HD: a function of the index maths shared by the CUDA kernels and their CPU versions and
 * tests (mpk_decode.h, mpk_fp8.h, mpk_sched.h): host and device, inlined, under nvcc; a static
 * inline C function elsewhere. */
#ifndef MPK_HD_H
#define MPK_HD_H

#ifdef __CUDACC__
#define MPK_HD __host__ __device__ __forceinline__
#else
#define MPK_HD static inline
#endif

#endif
