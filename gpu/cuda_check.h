/* The harness's .cu files' shared checks.
 * CK(call): a CUDA runtime call checked inside a host function of the harness (.cu files only).
 * The function has `mpk_status st` and `mpk_error *err` in scope and a `fail:` label that frees
 * what it holds; a failing call sets st to MPK_E_IO naming the call and CUDA's message, and jumps
 * there. BLAS_CK (below) does the same for cuBLAS and cuBLASLt calls. */
#ifndef MPK_CUDA_CHECK_H
#define MPK_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#define CK(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            st = mpk_error_set(err, MPK_E_IO, 0, "gpu", "%s: %s", #call, cudaGetErrorString(e_)); \
            goto fail;                                                                            \
        }                                                                                         \
    } while (0)

/* BLAS_CK(code, prefix, lib, call): a cuBLAS or cuBLASLt call (a cublasStatus_t, success 0)
 * checked the same way: st set to code, the message "<prefix><call>: <lib> status N". */
#define BLAS_CK(code, prefix, lib, call)                                                           \
    do {                                                                                           \
        int s_ = (int)(call);                                                                      \
        if (s_ != 0) {                                                                             \
            st = mpk_error_set(err, code, 0, "gpu", "%s%s: %s status %d", prefix, #call, lib, s_); \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

/* A CUDA library the harness loads when it is used (no link-time dependency): the file $env_var
 * names, else soname (libcublas.so.13), else the unversioned name; NULL with why filled (saying
 * what to set) when none loads. */
static inline void *mpk_cuda_dlopen(const char *env_var, const char *soname, const char *unversioned,
                                    const char *what, char *why, size_t cap)
{
    const char *names[] = {getenv(env_var), soname, unversioned};
    void *lib = nullptr;
    for (const char *n : names)
        if (n && !lib)
            lib = dlopen(n, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        snprintf(why, cap, "%s not loadable (%s; set LD_LIBRARY_PATH or %s)", what, dlerror(), env_var);
    return lib;
}

#endif
