// matmul_ogs for many rows per expert (prefill), MXFP4 weights and bf16 x: 64 x 128 output tiles
// (tokens x weight rows) of one expert per block; 4 warps of mma.sync m16n8k16, each owning a
// 32 x 64 sub-tile. Tiles that wide keep shared-memory reads per MMA low enough for the MMA
// rate: with 64 x 32 warp tiles, ldmatrix traffic alone matched shared memory's bandwidth.
//
// Per 32-wide k step: the gathered x rows and the raw MXFP4 codes arrive by cp.async in a
// 4-stage ring, so loads run three steps ahead of the math. Alongside its MMAs of step s, each thread
// decodes the codes it copied itself for step s + 1 (one weight row: 32 codes, one scale) into
// the other half of a double-buffered bf16 tile, so one barrier per step publishes both the x
// tile and the decoded weights that all warps then read with ldmatrix. The epilogue applies bias
// and SwiGLU straight from the accumulators: a lane holds columns 2t and 2t+1, a (glu, linear)
// pair.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../element.cuh"
#include "../quant/e2m1_bf16.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "tile_io.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace tiled {
constexpr int kBM = 64, kBN = 128, kBK = 32, kStages = 4, kThreads = 128;
constexpr int kLd = kBK + 8;  // bf16 row pitch of the x and decoded tiles: 80 bytes, so the 8
                              // rows of an ldmatrix hit distinct banks

// Dynamic shared memory: x ring, code ring, two decoded weight tiles.
constexpr int kSmemBytes = (kStages * kBM * kLd + 2 * kBN * kLd) * 2 + kStages * kBN * 16;
}  // namespace tiled

__global__ void __launch_bounds__(tiled::kThreads, 2) matmul_ogs_tiled_kernel(const MatmulOgsParams p) {
  using namespace tiled;
  constexpr int BM = kBM;
  constexpr int kFragsM = BM / 32;  // 2 warps along M, each BM/2 rows = kFragsM x 16
  constexpr int kFragsN = 8;        // 2 warps along N, each 64 columns = 8 x 8

  int e;
  int64_t row_begin, row_end, n0;
  if (!locate_column_tile<BM, kBN>(p, p.N, e, row_begin, row_end, n0)) return;

  extern __shared__ __align__(128) unsigned char smem[];
  auto xs = reinterpret_cast<bf16(*)[BM][kLd]>(smem);                                   // [kStages]
  auto ws = reinterpret_cast<bf16(*)[kBN][kLd]>(smem + kStages * BM * kLd * 2);          // [2]
  auto codes_s = reinterpret_cast<uint8_t(*)[kBN][16]>(smem + (kStages * BM + 2 * kBN) * kLd * 2);  // [kStages]
  __shared__ int64_t src_row[BM];  // x row of each tile row, or kNoRow / kBadRow

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  gather_rows<BM>(p, row_begin, row_end, src_row);
  __syncthreads();

  // This thread's copies, fixed for the block, so a step only advances pointers: kXChunks 16-byte
  // pieces of x rows, and weight row w_r (16 code bytes, one scale), which it also waits for and
  // decodes itself, so no barrier sits between the copy and the decode.
  constexpr int kXChunks = BM * 4 / kThreads;
  const bf16* x_from[kXChunks];
  bf16* x_to[kXChunks];  // in stage 0
  int x_bytes[kXChunks];
#pragma unroll
  for (int c = 0; c < kXChunks; ++c) {
    // Consecutive threads take consecutive rows: with the 80-byte pitch, 8 of them hit 8
    // distinct bank groups (row-major pieces collided 2-way).
    const int v = tid + c * kThreads, r = v % BM, piece = v / BM;
    const int64_t src = src_row[r];
    x_from[c] = static_cast<const bf16*>(p.x) + (src >= 0 ? src * p.K + piece * 8 : 0);
    x_bytes[c] = src >= 0 ? 16 : 0;
    x_to[c] = &xs[0][r][piece * 8];
  }
  const int w_r = tid;
  const bool w_valid = n0 + w_r < p.N;
  const int k_steps = static_cast<int>(p.K / kBK);  // K % 32 == 0 for MXFP4
  const int64_t w_row = static_cast<int64_t>(e) * p.N + n0 + w_r;
  const uint8_t* code_from = static_cast<const uint8_t*>(p.w) + (w_valid ? w_row * k_steps * 16 : 0);
  const uint8_t* scale_from = p.w_scales + (w_valid ? w_row * k_steps : 0);

  auto issue = [&](int stage) {  // the next step's copies into `stage`; then advance
#pragma unroll
    for (int c = 0; c < kXChunks; ++c) {
      cp_async_16(x_to[c] + stage * BM * kLd, x_from[c], x_bytes[c]);
      if (x_bytes[c]) x_from[c] += kBK;  // pieces with no source stay put
    }
    cp_async_16(&codes_s[stage][w_r][0], code_from, w_valid ? 16 : 0);
    if (w_valid) code_from += 16;
  };
  auto next_scale = [&]() -> uint32_t {
    const uint32_t s = w_valid ? *scale_from : 127;
    if (w_valid) ++scale_from;
    return s;
  };
  auto decode = [&](int stage, int buf, uint32_t scale) {
    const uint4 codes = *reinterpret_cast<const uint4*>(&codes_s[stage][w_r][0]);
    decode_e2m1_block(codes, scale, [&](int i, uint4 v) { *reinterpret_cast<uint4*>(&ws[buf][w_r][8 * i]) = v; });
  };
  auto wrap = [](int stage) { return stage + 1 == kStages ? 0 : stage + 1; };

  // Prologue: steps 0 .. kStages-2 in flight (always commit, so group counts line up); decode step 0.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) issue(s);
    cp_async_commit();
  }
  cp_async_wait<kStages - 2>();
  decode(0, 0, next_scale());
  uint32_t scale_ahead = k_steps > 1 ? next_scale() : 127;  // step + 1's scale, loaded a step early

  float acc[kFragsM][kFragsN][4] = {};
  int stage = 0, ahead_stage = kStages - 1;  // stages of this step and of step + kStages - 1
  for (int step = 0; step < k_steps; ++step) {
    __syncthreads();  // x and decoded weights of this step are in; last step's tiles are free
    const uint32_t scale = scale_ahead;
    scale_ahead = step + 2 < k_steps ? next_scale() : 127;
    if (step + kStages - 1 < k_steps) issue(ahead_stage);
    cp_async_commit();
    const int buf = step & 1;

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
    // Decode step + 1 (into the other buffer) before this step's MMAs in program order and with no
    // branch, so the compiler interleaves its integer work with the MMAs instead of running it
    // after them. The last step decodes a stale stage that nothing reads.
    cp_async_wait<kStages - 2>();  // this thread's copies for step + 1
    decode(wrap(stage), buf ^ 1, scale);
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) mma_bf16_m16n8k16(acc[i][j], a[h][i], b[h][j][0], b[h][j][1]);
    stage = wrap(stage);
    ahead_stage = wrap(ahead_stage);
  }
  cp_async_wait<0>();

  // Epilogue: acc[i][j] holds rows (g, g + 8) x columns (2t, 2t + 1) of its 16 x 8 fragment.
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = wm * (BM / 2) + i * 16 + g + half * 8;
      if (row_begin + r >= row_end) continue;
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        const int64_t n = n0 + wn * 64 + j * 8 + 2 * t;
        if (n < p.N) {
          store_output_pair(p, e, row_begin + r, n, src_row[r] == kBadRow, acc[i][j][2 * half], acc[i][j][2 * half + 1]);
        }
      }
    }
  }
}

}  // namespace moekit::cuda
