// Compiled once at configure time (meson.build): if nvcc cannot build this, the CUDA harness is
// not built (cuda=auto) rather than failing the build.
#include <cuda_runtime.h>
__global__ void mpk_probe_kernel(int *x) { *x = 1; }
