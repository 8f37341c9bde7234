// The MoE layer for a few tokens (decode) in three kernels: the gate (logits, and the tokens'
// x in the paired order the tensor-core fragments take), then mlp1 + SwiGLU and mlp2 + the
// weighted combine. Every block of mlp1 routes the tokens in its own prologue (a few hundred
// instructions per block: cheaper than a launch) and block 0 leaves the routing in the
// workspace, where mlp2's blocks read it; both stream the routed experts' MXFP4 weights.
// The kernels chain by programmatic dependent launch on sm_90: each lets the next one's blocks
// start, and the next waits for it before reading what it wrote.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../../../core/problem.h"
#include "../grid_dependency.cuh"

namespace moekit::cuda {

namespace moe_decode {
constexpr int kMaxTokens = kMoeDecodeMaxTokens;  // tokens per call: an expert's tokens fit one n8 MMA tile
constexpr int kMaxPairs = kMoeDecodeMaxPairs;    // token-slots T * k: one warp groups them
constexpr int kSlabRows = kMoeDecodeSlabRows;    // weight rows per work unit: the MMA's M
constexpr int kMaxSplits = kMoeDecodeMaxSplits;  // k ranges per (expert, slab)
constexpr int kGateWarps = 8;                     // per block of the gate kernel (one expert)
constexpr int kGateEarlyWords = 2;  // 8 weights each, loaded before the wait: a row of 4096 a block
constexpr int kUnitFloats = kSlabRows * kMaxTokens;  // a unit's sums: [16 rows][8 tokens]
}  // namespace moe_decode

// A compiled shape of the expert kernels: warps a block (one block an SM; the register budget
// follows) and k steps of weights loaded ahead into registers a warp.
template <int kWarps_, int kAhead_>
struct MoeDecodeExpertsConfig {
  static constexpr int kWarps = kWarps_, kAhead = kAhead_;
};

// Shared memory of an expert kernel holding `rows` x rows of K (besides its static route).
constexpr size_t moe_decode_x_bytes(int64_t rows, int64_t K, int halves) {
  return static_cast<size_t>(rows * moe_decode_x_stride(K, halves)) * sizeof(uint4);
}
// mlp1's dynamic shared memory: its x rows, then its warps' group sums (two buffers a warp).
constexpr size_t moe_decode_mlp1_bytes(int64_t T, int64_t H, int warps, int halves) {
  return moe_decode_x_bytes(T, H, halves) + static_cast<size_t>(2 * warps * moe_decode::kUnitFloats) * sizeof(float);
}

struct MoeDecodeGateParams {
  const __nv_bfloat16* x;  // [T, H]
  int T;
  int64_t H;
  const void* w;  // [E, H] float32 or bf16
  bool w_bf16;
  const void* bias;  // [E] or null
  bool bias_bf16;
  int E;
  float* logits;   // [T, E]
  uint4* x_paired;  // [T, H / 8] words of 8 bf16 in paired order (pair_bf16x8)
  int* counters;    // zeroed for the expert kernels
  int64_t n_counters;
};

// One expert matmul of the layer: mlp1 (x = the tokens, SwiGLU into act) or mlp2 (x = act,
// combine into y).
struct MoeDecodeExpertsParams {
  const float* logits;  // [T, E]: mlp1 routes them in each block
  void* route;          // the routing (a DecodeRoute): mlp1's block 0 writes it, mlp2 reads it
  int T, E, k;
  const uint8_t* w;         // [E, N, K / 32, 16] MXFP4 codes
  const uint8_t* w_scales;  // [E, N, K / 32]
  int64_t N, K;
  const void* bias;  // [E, N] or null
  bool bias_bf16;
  const uint4* x;  // paired rows of K: the tokens (mlp1) or the token-slots (mlp2)
  int64_t x_stride;  // uint4 a row of x in shared memory (moe_decode_x_stride)
  int splits;      // k ranges per (expert, slab): work units are (expert, slab, k range)
  float* partials;  // [unit][16 rows][8 tokens] when a unit's sum needs others'
  int* counters;    // per epilogue group, zero at launch
  float alpha, limit;        // mlp1's SwiGLU
  __nv_bfloat16* act;        // mlp1's output: paired rows [T * k, N / 2], token-slot order
  __nv_bfloat16* y;          // mlp2's output [T, N]
};

// Where element c of a row lands in its paired copy (pair_bf16x8: elements (0,4), (1,5), ...
// of each 8 side by side).
__device__ __forceinline__ int64_t paired_index(int64_t c) { return (c & ~int64_t{7}) + 2 * (c & 3) + ((c >> 2) & 1); }

}  // namespace moekit::cuda
