// matmul_ogs for many rows per expert (prefill), MXFP4 weights and bf16 x: BM x 128 output tiles
// (tokens x weight rows) of one expert per block; 4 warps of mma.sync m16n8k16, each owning a
// (BM/2) x 64 sub-tile. Tiles that wide keep shared-memory reads per MMA low enough for the MMA
// rate: with 64 x 32 warp tiles, ldmatrix traffic alone matched shared memory's bandwidth.
//
// Per 32-wide k step: the gathered x rows and the raw MXFP4 codes arrive by cp.async in a
// 3-stage ring, so loads run two steps ahead of the math. After its MMAs of step s, each thread
// decodes the codes it copied itself for step s + 1 (one weight row: 32 codes, one scale) into
// the other half of a double-buffered bf16 tile, so one barrier per step publishes both the x
// tile and the decoded weights that all warps then read with ldmatrix. The epilogue applies bias
// and SwiGLU straight from the accumulators: a lane holds columns 2t and 2t+1, a (glu, linear)
// pair.
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
constexpr int kBN = 128, kBK = 32, kStages = 3, kThreads = 128;
constexpr int kLd = kBK + 8;  // bf16 row pitch of the x and decoded tiles: 80 bytes, so the 8
                              // rows of an ldmatrix hit distinct banks

// Dynamic shared memory: x ring, code ring, two decoded weight tiles.
template <int BM>
constexpr int smem_bytes() {
  return (kStages * BM * kLd + 2 * kBN * kLd) * 2 + kStages * kBN * 16;
}
}  // namespace tiled

template <int BM>
__global__ void __launch_bounds__(tiled::kThreads, 2) matmul_ogs_tiled_kernel(const MatmulOgsParams p) {
  using namespace tiled;
  constexpr int kFragsM = BM / 32;  // 2 warps along M, each BM/2 rows = kFragsM x 16
  constexpr int kFragsN = 8;        // 2 warps along N, each 64 columns = 8 x 8
  static_assert(BM == 64 || BM == 128, "tile height");

  // Block x -> (row tile, column tile), column tiles fastest: the blocks of one row tile run
  // together and read its gathered x rows from L2, not DRAM (one x tile per column tile, with
  // row tiles fastest, made mlp1 at T = 8192 read 3.8 GB from DRAM).
  const int64_t n_tiles = (p.N + kBN - 1) / kBN, tile = blockIdx.x / n_tiles;
  if (tile >= tile_count<BM>(p)) return;
  int e;
  int64_t row_begin, row_end;
  tile_at<BM>(p, tile, e, row_begin, row_end);
  const int64_t n0 = static_cast<int64_t>(blockIdx.x % n_tiles) * kBN;

  extern __shared__ __align__(128) unsigned char smem[];
  auto xs = reinterpret_cast<bf16(*)[BM][kLd]>(smem);                                   // [kStages]
  auto ws = reinterpret_cast<bf16(*)[kBN][kLd]>(smem + kStages * BM * kLd * 2);          // [2]
  auto codes_s = reinterpret_cast<uint8_t(*)[kBN][16]>(smem + (kStages * BM + 2 * kBN) * kLd * 2);  // [kStages]
  __shared__ int64_t src_row[BM];  // x row of each tile row; -1: none; -2: bad gather index

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
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
  // This thread's weight share: row w_r (16 code bytes); it copies, waits for and decodes exactly
  // those bytes, so no barrier sits between the copy and the decode.
  const int w_r = tid;
  const int64_t w_row = static_cast<int64_t>(e) * p.N + n0 + w_r;
  const bool w_valid = n0 + w_r < p.N;

  auto issue = [&](int64_t step) {
    const int stage = static_cast<int>(step % kStages);
    const int64_t k0 = step * kBK;
#pragma unroll
    for (int v = tid; v < BM * 4; v += kThreads) {
      const int r = v / 4, c = v % 4;
      const int64_t src = src_row[r];
      cp_async_16(&xs[stage][r][c * 8], src >= 0 ? x + src * p.K + k0 + c * 8 : x, src >= 0 ? 16 : 0);
    }
    cp_async_16(&codes_s[stage][w_r][0], w_valid ? codes + (w_row * k_steps + step) * 16 : codes, w_valid ? 16 : 0);
  };
  auto load_scale = [&](int64_t step) -> uint32_t { return w_valid ? p.w_scales[w_row * k_steps + step] : 127; };
  auto decode = [&](int64_t step, uint32_t scale) {
    const uint4 c = *reinterpret_cast<const uint4*>(&codes_s[step % kStages][w_r][0]);
    const uint32_t words[4] = {c.x, c.y, c.z, c.w};
    const Mxfp4Multiplier m = mxfp4_multiplier(scale);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t v[4];
      decode_e2m1x8(words[i], m, v);
      *reinterpret_cast<uint4*>(&ws[step % 2][w_r][8 * i]) = make_uint4(v[0], v[1], v[2], v[3]);
    }
  };

  // Prologue: steps 0 .. kStages-2 in flight (always commit, so group counts line up); decode step 0.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) issue(s);
    cp_async_commit();
  }
  cp_async_wait<kStages - 2>();
  decode(0, load_scale(0));

  float acc[kFragsM][kFragsN][4] = {};
  for (int64_t step = 0; step < k_steps; ++step) {
    __syncthreads();  // x and decoded weights of this step are in; last step's tiles are free
    const bool next = step + 1 < k_steps;
    const uint32_t next_scale = next ? load_scale(step + 1) : 127;  // in flight during the MMAs
    if (step + kStages - 1 < k_steps) issue(step + kStages - 1);
    cp_async_commit();

    const int stage = static_cast<int>(step % kStages), buf = static_cast<int>(step % 2);
    // Both 16-wide halves' fragments first, then all the MMAs: the second half's loads are in
    // flight while the first half's MMAs issue.
    uint32_t a[2][kFragsM][4], b[2][kFragsN][2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int kk = 16 * h;
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        ldmatrix_x4(a[h][i], &xs[stage][wm * (BM / 2) + i * 16 + lane % 16][kk + (lane / 16) * 8]);
      }
#pragma unroll
      for (int j = 0; j < kFragsN; j += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, &ws[buf][wn * 64 + j * 8 + (lane / 16) * 8 + lane % 8][kk + ((lane / 8) % 2) * 8]);
        b[h][j][0] = r[0];
        b[h][j][1] = r[1];
        b[h][j + 1][0] = r[2];
        b[h][j + 1][1] = r[3];
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) mma_bf16_m16n8k16(acc[i][j], a[h][i], b[h][j][0], b[h][j][1]);
    if (next) {
      cp_async_wait<kStages - 2>();  // this thread's copies for step + 1
      decode(step + 1, next_scale);
    }
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
        const int64_t n = n0 + wn * 64 + j * 8 + 2 * t;
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
