// Lets the few numeric helpers shared by the CPU and CUDA backends compile for both.
#pragma once

#if defined(__CUDACC__)
#define MOEKIT_HD __host__ __device__ __forceinline__
#else
#define MOEKIT_HD inline
#endif
