/* CK(call): a CUDA runtime call checked inside a host function of the harness (.cu files only).
 * The function has `mpk_status st` and `mpk_error *err` in scope and a `fail:` label that frees
 * what it holds; a failing call sets st to MPK_E_IO naming the call and CUDA's message, and jumps
 * there. */
#ifndef MPK_CUDA_CHECK_H
#define MPK_CUDA_CHECK_H

#include <cuda_runtime.h>

#define CK(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            st = mpk_error_set(err, MPK_E_IO, 0, "gpu", "%s: %s", #call, cudaGetErrorString(e_)); \
            goto fail;                                                                            \
        }                                                                                         \
    } while (0)

#endif
