// Error checking for every CUDA runtime call and every launch.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "moekit/error.h"
#include "moekit/tensor.h"

namespace moekit::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw Error(Error::Kind::kRuntime, std::string("moekit: CUDA error ") + cudaGetErrorName(err) + " (" +
                                         cudaGetErrorString(err) + ") in " + what + " at " + file + ":" +
                                         std::to_string(line));
}

// After a launch: the launch error, and with ctx.sync_after_launch the kernel's own.
inline void check_launch(const ExecContext& ctx, cudaStream_t stream, const char* kernel, const char* file,
                         int line) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && ctx.sync_after_launch) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) throw_cuda_error(err, kernel, file, line);
}

}  // namespace moekit::cuda

#define MOEKIT_CUDA_CHECK(expr)                                                         \
  do {                                                                                  \
    const cudaError_t moekit_err_ = (expr);                                             \
    if (moekit_err_ != cudaSuccess) ::moekit::cuda::throw_cuda_error(moekit_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define MOEKIT_CHECK_LAUNCH(ctx, stream, kernel) ::moekit::cuda::check_launch(ctx, stream, kernel, __FILE__, __LINE__)
