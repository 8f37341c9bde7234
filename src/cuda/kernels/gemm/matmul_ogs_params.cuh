// The arguments every matmul_ogs kernel takes (one struct, passed by value).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moekit::cuda {

enum class WeightKind { kFloat32, kBFloat16, kMxfp4 };

struct MatmulOgsParams {
  const void* x;  // [M, K]
  int64_t M, K;
  const void* w;              // [E, N, K] float, or [E, N, K/2] bytes
  const uint8_t* w_scales;    // [E, N, K/32] for MXFP4
  const void* bias;           // [E, N] or null
  bool bias_bf16;
  const int32_t* expert_offsets;  // [E+1] or null (one expert)
  int E;
  int64_t N;
  const int32_t* gather_idx;  // [P] or null
  int64_t P;
  bool swiglu;
  float alpha, limit;
  void* out;  // [P, out_cols]
  bool out_bf16;
  int64_t out_cols;
  // With expert_offsets: the (expert, first row) of each row tile, and their number, written by
  // plan_tiles_kernel into the workspace (see tile_locate.cuh).
  int2* tile_items;
  int* tile_count;
  // The swap-AB kernels (matmul_ogs_swapab.cuh): the weights as repack_mxfp4 left them
  // ([E][slabs][steps][2048 and 128]) and x's rows staged for their copies.
  const uint8_t* slab_codes;
  const uint8_t* slab_scales;
  uint8_t* x_staged;
  // The GEMV: weight rows of a block held in shared memory (matmul_ogs_gemv.cuh).
  int64_t gemv_shared_rows;
  // matmul_ogs_backward's recompute of h (with swiglu; tile_io.cuh): given grad_a [P, out_cols],
  // the gradient at the SwiGLU output, the epilogue writes the gradient at h into out [P, N]
  // (out_bf16) and, where act is given, the SwiGLU output as float32 into act [P, out_cols].
  const void* grad_a;
  bool grad_a_bf16;
  float* act;
};

}  // namespace moekit::cuda
