// matmul_ogs for many rows per expert (prefill), MXFP4 weights and bf16 x: BM x 128 output tiles
// (tokens x weight rows) of one expert per block, 8 warps of mma.sync m16n8k16.
//
// Per 32-wide k step: the gathered x rows and the raw MXFP4 codes arrive by cp.async in a
// 3-stage ring, so loads run two steps ahead of the math; scale bytes come with ordinary loads
// issued before the math and stored after it. Each step decodes its codes once into a bf16 tile
// (one block of 32 per row, one scale) that all warps then read with ldmatrix. The epilogue
// applies bias and SwiGLU straight from the accumulators: a lane holds columns 2t and 2t+1,
// which are a (glu, linear) pair.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../activation/swiglu.cuh"
#include "../element.cuh"
#include "../quant/e2m1_bf16.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace tiled {
constexpr int kBN = 128, kBK = 32, kStages = 3, kThreads = 256;
constexpr int kLd = kBK + 8;  // bf16 row pitch of the x and decoded tiles: 80 bytes, so the 8
                              // rows of an ldmatrix hit distinct banks
}  // namespace tiled

template <int BM>
__global__ void __launch_bounds__(tiled::kThreads) matmul_ogs_tiled_kernel(const MatmulOgsParams p) {
  using namespace tiled;
  constexpr int kFragsM = BM / 32;  // 2 warps along M, each BM/2 rows = kFragsM x 16
  constexpr int kFragsN = 4;        // 4 warps along N, each 32 columns = 4 x 8
  static_assert(BM == 64 || BM == 128, "tile height");

  int e;
  int64_t row_begin, row_end;
  if (!locate_tile<BM>(p, e, row_begin, row_end)) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;

  __shared__ __align__(128) bf16 xs[kStages][BM][kLd];
  __shared__ __align__(128) uint8_t codes_s[kStages][kBN][16];
  __shared__ uint8_t scales_s[kStages][kBN];
  __shared__ __align__(128) bf16 ws[kBN][kLd];
  __shared__ int64_t src_row[BM];  // x row of each tile row; -1: none; -2: bad gather index

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 4, wn = warp % 4;
  for (int r = tid; r < BM; r += kThreads) {
    const int64_t prow = row_begin + r;
    int64_t src = -1;
    if (prow < row_end) {
      src = p.gather_idx ? p.gather_idx[prow] : prow;
      if (src < 0 || src >= p.M) src = -2;
    }
    src_row[r] = src;
  }
  __syncthreads();

  const bf16* x = static_cast<const bf16*>(p.x);
  const uint8_t* codes = static_cast<const uint8_t*>(p.w);
  const int64_t k_steps = p.K / kBK;  // K % 32 == 0 for MXFP4
  // This thread's share of each stage: x chunks (BM rows x 4 chunks of 16 bytes) and, for the
  // first 128 threads, one weight row's 16 code bytes and its scale.
  const int64_t w_row = static_cast<int64_t>(e) * p.N + n0 + tid;
  const bool w_valid = tid < kBN && n0 + tid < p.N;

  auto issue = [&](int64_t step, int stage) {
    const int64_t k0 = step * kBK;
#pragma unroll
    for (int v = tid; v < BM * 4; v += kThreads) {
      const int r = v / 4, c = v % 4;
      const int64_t src = src_row[r];
      const bf16* from = src >= 0 ? x + src * p.K + k0 + c * 8 : x;
      cp_async_16(&xs[stage][r][c * 8], from, src >= 0 ? 16 : 0);
    }
    if (tid < kBN) cp_async_16(&codes_s[stage][tid][0], w_valid ? codes + (w_row * k_steps + step) * 16 : codes, w_valid ? 16 : 0);
  };
  auto load_scale = [&](int64_t step) -> uint8_t { return w_valid ? p.w_scales[w_row * k_steps + step] : 127; };

  // Prologue: the first kStages - 1 steps in flight (always commit, so group counts line up).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) {
      issue(s, s);
      if (tid < kBN) scales_s[s][tid] = load_scale(s);
    }
    cp_async_commit();
  }

  float acc[kFragsM][kFragsN][4] = {};
  for (int64_t step = 0; step < k_steps; ++step) {
    const int stage = static_cast<int>(step % kStages);
    cp_async_wait<kStages - 2>();
    __syncthreads();  // this step's stage has landed; every warp is done with the last step's tiles

    const int64_t ahead = step + kStages - 1;
    const int ahead_stage = static_cast<int>(ahead % kStages);
    uint8_t ahead_scale = 127;
    if (ahead < k_steps) {
      issue(ahead, ahead_stage);
      if (tid < kBN) ahead_scale = load_scale(ahead);
    }
    cp_async_commit();

    {  // decode: thread -> (weight row tid / 2, codes 16 * (tid % 2) .. + 16)
      const int r = tid / 2, half = tid % 2;
      const uint2 c = *reinterpret_cast<const uint2*>(&codes_s[stage][r][half * 8]);
      const Mxfp4Multiplier m = mxfp4_multiplier(scales_s[stage][r]);
      uint32_t lo[4], hi[4];
      decode_e2m1x8(c.x, m, lo);
      decode_e2m1x8(c.y, m, hi);
      *reinterpret_cast<uint4*>(&ws[r][half * 16]) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
      *reinterpret_cast<uint4*>(&ws[r][half * 16 + 8]) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    }
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t a[kFragsM][4], b[kFragsN][2];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        ldmatrix_x4(a[i], &xs[stage][wm * (BM / 2) + i * 16 + lane % 16][kk + (lane / 16) * 8]);
      }
#pragma unroll
      for (int j = 0; j < kFragsN; j += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, &ws[wn * 32 + j * 8 + (lane / 16) * 8 + lane % 8][kk + ((lane / 8) % 2) * 8]);
        b[j][0] = r[0];
        b[j][1] = r[1];
        b[j + 1][0] = r[2];
        b[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) mma_bf16_m16n8k16(acc[i][j], a[i], b[j][0], b[j][1]);
    }
    if (tid < kBN && ahead < k_steps) scales_s[ahead_stage][tid] = ahead_scale;
  }
  cp_async_wait<0>();

  // Epilogue: acc[i][j] holds rows (g, g + 8) x columns (2t, 2t + 1) of its 16 x 8 fragment.
  const int g = lane / 4, t = lane % 4;
  const float nan = __int_as_float(0x7fc00000);
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = wm * (BM / 2) + i * 16 + g + half * 8;
      const int64_t row = row_begin + r;
      if (row >= row_end) continue;
      const bool bad = src_row[r] == -2;
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        const int64_t n = n0 + wn * 32 + j * 8 + 2 * t;
        if (n >= p.N) continue;
        float h0 = acc[i][j][2 * half], h1 = acc[i][j][2 * half + 1];
        if (p.bias) {
          h0 += load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n);
          if (n + 1 < p.N) h1 += load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n + 1);
        }
        if (bad) h0 = h1 = nan;
        if (p.swiglu) {
          store_float(p.out, p.out_bf16, row * p.out_cols + n / 2, swiglu(h0, h1, p.alpha, p.limit));
        } else {
          store_float(p.out, p.out_bf16, row * p.out_cols + n, h0);
          if (n + 1 < p.N) store_float(p.out, p.out_bf16, row * p.out_cols + n + 1, h1);
        }
      }
    }
  }
}

}  // namespace moekit::cuda
