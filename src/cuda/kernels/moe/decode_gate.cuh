// The decode layer's first kernel: block e computes expert e's gate logit for every token
// (float32 sums of exact bf16 products, its warps splitting H and adding in a fixed order, then
// the bias), and all blocks together write the tokens in paired order for mlp1's fragments and
// zero the expert kernels' counters. After its wait a thread asks for all its x words at once
// and loads nothing else: the logits are one round trip to L2 behind the kernel before.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../element.cuh"
#include "../quant/e2m1_bf16.cuh"
#include "moe_decode_params.cuh"

namespace moekit::cuda {

// 8 consecutive weights of a gate row, as floats.
__device__ __forceinline__ void load_gate8(const void* w, bool w_bf16, int64_t at, float (&v)[8]) {
  if (w_bf16) {
    bf16x8_to_floats(__ldg(reinterpret_cast<const uint4*>(static_cast<const bf16*>(w) + at)), v);
  } else {
    const float4 a = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(w) + at));
    const float4 b = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(w) + at + 4));
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

__global__ void __launch_bounds__(32 * moe_decode::kGateWarps) moe_decode_gate_kernel(const MoeDecodeGateParams p) {
  using namespace moe_decode;
  let_next_grid_start();  // the expert kernels' blocks wait in their prologue
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, e = blockIdx.x;
  const int64_t words = p.H / 8;
  const uint4* x = reinterpret_cast<const uint4*>(p.x);

  // The gate row and bias depend on no earlier kernel: a thread's first words (all of them at
  // H = 2880) and the bias load while the kernel before this one ends.
  float early[kGateEarlyWords][8];
#pragma unroll
  for (int j = 0; j < kGateEarlyWords; ++j) {
    const int64_t c = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    if (c < words) load_gate8(p.w, p.w_bf16, e * p.H + 8 * c, early[j]);
  }
  const float bias = p.bias && threadIdx.x < p.T ? load_float(p.bias, p.bias_bf16, e) : 0.0f;
  wait_for_previous_grid();

  // Word c of every token's x, all asked for at once; each word is also written in paired order
  // for mlp1's fragments, by one block (c % grid), from the same registers.
  auto load_x = [&](int64_t c, uint4 (&xs)[kMaxTokens]) {
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) xs[t] = t < p.T ? __ldg(x + t * words + c) : make_uint4(0, 0, 0, 0);
  };
  float acc[kMaxTokens] = {};
  auto accumulate = [&](int64_t c, const float (&w)[8], const uint4 (&xs)[kMaxTokens]) {
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) {
      if (t >= p.T) break;
      const uint32_t v[4] = {xs[t].x, xs[t].y, xs[t].z, xs[t].w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[t] = fmaf(w[2 * i], __uint_as_float(v[i] << 16), acc[t]);
        acc[t] = fmaf(w[2 * i + 1], __uint_as_float(v[i] & 0xffff0000u), acc[t]);
      }
      if (static_cast<int>(c) % gridDim.x == blockIdx.x) {
        uint32_t r[4];
        pair_bf16x8(xs[t], r);
        p.x_paired[t * words + c] = make_uint4(r[0], r[1], r[2], r[3]);
      }
    }
  };
  uint4 early_x[kGateEarlyWords][kMaxTokens];
#pragma unroll
  for (int j = 0; j < kGateEarlyWords; ++j) {
    const int64_t c = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    if (c < words) load_x(c, early_x[j]);
  }
#pragma unroll
  for (int j = 0; j < kGateEarlyWords; ++j) {
    const int64_t c = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    if (c < words) accumulate(c, early[j], early_x[j]);
  }
  for (int64_t c = threadIdx.x + kGateEarlyWords * static_cast<int64_t>(blockDim.x); c < words; c += blockDim.x) {
    float w[8];
    uint4 xs[kMaxTokens];
    load_gate8(p.w, p.w_bf16, e * p.H + 8 * c, w);
    load_x(c, xs);
    accumulate(c, w, xs);
  }
  __shared__ float partial[kGateWarps][kMaxTokens];
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) {
    float v = acc[t];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[warp][t] = v;
  }
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < p.n_counters; i += static_cast<int64_t>(gridDim.x) * blockDim.x) p.counters[i] = 0;
  __syncthreads();
  if (threadIdx.x < p.T) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kGateWarps; ++w) v += partial[w][threadIdx.x];
    if (p.bias) v += bias;
    p.logits[threadIdx.x * p.E + e] = v;
  }
}

}  // namespace moekit::cuda
